#!/usr/bin/env python3
"""The disk's own latency floor for a durable write: N synced 4 KiB appends
(os.write + os.fdatasync) to a file in DIR, the same shape as one group commit
of the embedded store (SQLite WAL, synchronous=FULL), timed one by one.

Usage: bench/disk_floor.py DIR [N]   (N default 300)
Prints one line: `fdatasync p50 X ms p99 Y ms max Z ms (N writes, DIR)`,
and with --json a JSON object {p50_ms, p99_ms, max_ms, n}. Every latency a
benchmark reports for a persisted message stands next to this floor: a send
is acknowledged only after such a sync (issue 14).
"""
import json, os, sys, tempfile, time

args = [a for a in sys.argv[1:] if a != "--json"]
if not args:
    sys.exit(__doc__)
d = args[0]
n = int(args[1]) if len(args) > 1 else 300
os.makedirs(d, exist_ok=True)
fd, path = tempfile.mkstemp(prefix="disk-floor-", dir=d)
try:
    block = os.urandom(4096)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        os.write(fd, block)
        os.fdatasync(fd)
        lat.append((time.perf_counter() - t) * 1000)
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
r = {"p50_ms": round(q(0.50), 3), "p99_ms": round(q(0.99), 3), "max_ms": round(lat[-1], 3), "n": n}
if "--json" in sys.argv:
    print(json.dumps(r))
else:
    print(f"fdatasync p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms max {r['max_ms']} ms ({n} writes, {d})")

#!/usr/bin/env python3
"""The summary table of a benchmark results directory (bench/run.sh,
bench/issue14.sh): one row per loadgen report (`<name>/report.json`), each
next to the disk's fdatasync floor measured at the start of the same run
(`disk_floor.json`). Per row: server CPU µs per message, deliveries/s, RSS
per connection, lost/dup/ooo and, for a resume storm, resumes/s and p99.

Usage: bench/summary.py RESULTS_DIR > RESULTS_DIR/summary.md
"""
import json
import os
import sys

out = sys.argv[1]
floor = json.load(open(os.path.join(out, "disk_floor.json")))
print(f"disk fdatasync (4 KiB): p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms\n")
print("| scenario | conns | rate/s | deliveries/s | ack p50/p99 ms | e2e p50/p99 ms | p99 - fsync p99 ms | "
      "server cpu % | cpu µs/msg | RSS B/conn | lost/dup/ooo | resumes/s, resume p99 ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in sorted(os.listdir(out)):
    f = os.path.join(out, name, "report.json")
    if not os.path.isfile(f):
        continue
    d = json.load(open(f))
    rate = d.get("rate_per_s") or 0
    dur = d.get("duration_s") or 0
    deliv = d.get("delivered") or 0
    cpu = d.get("server_cpu_percent")
    per = f"{cpu / 100 * 1e6 / rate:.0f}" if cpu and rate else "-"
    ack, e2e = d.get("ack_ms") or {}, d.get("e2e_ms") or {}
    gap = f"{e2e['p99'] - floor['p99_ms']:.2f}" if e2e.get("p99") is not None and rate else "-"
    rss = d.get("server_rss_per_conn_bytes")
    storm = "-"
    if d.get("resume_rate_per_s"):
        storm = f"{d['resume_rate_per_s']:.0f}, {(d.get('login_ms') or {}).get('p99', '-')}"
    print(f"| {name} | {d.get('connections')} | {rate:.0f} | {deliv / dur if dur else 0:.0f} | "
          f"{ack.get('p50', '-')}/{ack.get('p99', '-')} | {e2e.get('p50', '-')}/{e2e.get('p99', '-')} | {gap} | "
          f"{f'{cpu:.0f}' if cpu is not None else '-'} | {per} | {f'{rss:.0f}' if rss else '-'} | "
          f"{d.get('lost')}/{d.get('duplicated')}/{d.get('out_of_order')} | {storm} |")

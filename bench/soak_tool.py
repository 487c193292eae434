#!/usr/bin/env python3
"""Helper for bench/soak.sh (python3 stdlib only).

  soak_tool.py sample  --pid P --state DIR --csv FILE --log SERVER_LOG [--interval 10] -- PROBE...
      Every --interval s, one row of samples.csv: server RSS (VmRSS), open fds,
      CPU (utime+stime over the interval, % of one core), the worst p99 of the
      loadgen windows (--window-report lines in DIR/windows/*.jsonl) completed
      since the previous row, and - while DIR/phase says `idle` - the result of
      PROBE (a real login + send + delivery through the server). Also scans the
      server log for panics. Every failure appends one line to DIR/fail; the
      soak script watches that file. Stops when DIR/stop exists.
  soak_tool.py run-row NAME START END RC REPORT_DIR WINDOWS_IN WINDOWS_OUT >> runs.csv
      One row per loadgen run from its report.json (summary line on stderr);
      appends the run's window lines, tagged with the run name, to WINDOWS_OUT.
  soak_tool.py analyze --out DIR
      Reads DIR/samples.csv, DIR/runs.csv, DIR/phases.csv; applies the RSS
      growth and fd leak rules; writes DIR/analysis.txt and prints shell
      assignments (KEY='value') for soak.sh.
  soak_tool.py plot --out DIR [--title T] [--tmax SECS] [--fail-at SECS]
      DIR/soak.svg: RSS, p99, CPU and fds over time (x axis in m:ss from
      server start), idle gaps and storms shaded, the failure time marked.
  soak_tool.py results-row FILE ROW
      Appends ROW to the soak table of bench/RESULTS.md (creating it).
"""

import csv
import glob
import json
import os
import re
import subprocess
import sys
import time

COLS = [
    "unix_s", "t_s", "phase", "alive", "rss_kib", "fds", "cpu_pct",
    "p99_ack_ms", "p99_e2e_ms", "p99_login_ms", "win_acked", "win_delivered",
    "conns", "probe", "probe_ms", "rss_anon_kib",
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
REGISTRY = re.compile(r"/\S*/registry/src/[^/\s]+/")


def proc_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(")") + 2:].split()[0] not in ("Z", "X")


def rss_kib(pid, field="VmRSS:"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return None
    rest = st[st.rfind(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def read_text(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def fail(state, reason):
    with open(os.path.join(state, "fail"), "a") as f:
        f.write(reason + "\n")
    print(f"soak: sampler: {reason}", file=sys.stderr, flush=True)


class Tail:
    """New complete lines of a growing file."""

    def __init__(self, path):
        self.path, self.off = path, 0

    def lines(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.off += end
        return data[:end].decode("utf-8", "replace").splitlines()


def cmd_sample(argv):
    a = {"--interval": "10"}
    i = 0
    while i < len(argv) and argv[i] != "--":
        a[argv[i]] = argv[i + 1]
        i += 2
    probe = argv[i + 1:]
    pid, state, interval = int(a["--pid"]), a["--state"], float(a["--interval"])
    t0 = float(a.get("--t0", time.time()))
    logtail = Tail(a["--log"])
    wins = {}
    new = not os.path.exists(a["--csv"])
    out = open(a["--csv"], "a", newline="")
    w = csv.writer(out)
    if new:
        w.writerow(COLS)
        out.flush()
    last_cpu, last_t = cpu_s(pid), time.time()
    dead_reported = panic_reported = False
    k = 1
    while True:
        due = t0 + k * interval
        k += 1
        while time.time() < due:
            if os.path.exists(os.path.join(state, "stop")):
                return 0
            time.sleep(min(0.5, max(0.0, due - time.time())))
        if os.path.exists(os.path.join(state, "stop")):
            return 0
        now = time.time()
        phase = read_text(os.path.join(state, "phase"), "setup")
        alive = proc_alive(pid)
        c = cpu_s(pid) if alive else None
        cpu = ""
        if c is not None and last_cpu is not None and now > last_t:
            cpu = f"{(c - last_cpu) / (now - last_t) * 100:.1f}"
        last_cpu, last_t = c, now
        # Loadgen windows completed since the previous sample.
        p99 = {"ack_ms": None, "e2e_ms": None, "login_ms": None}
        acked = delivered = 0
        conns = 0
        for path in glob.glob(os.path.join(state, "windows", "*.jsonl")):
            for line in wins.setdefault(path, Tail(path)).lines():
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                for key in p99:
                    h = j.get(key) or {}
                    if h.get("count", 0) > 0:
                        p99[key] = max(p99[key] or 0.0, float(h.get("p99", 0.0)))
                acked += (j.get("ack_ms") or {}).get("count", 0)
                delivered += (j.get("e2e_ms") or {}).get("count", 0)
                conns = max(conns, j.get("conns", 0))
        # Panics in the server log (the glommio shards print `panicked at`;
        # the reactor logs `Panic while calling waker`).
        loglines = [ANSI.sub("", ln).strip() for ln in logtail.lines()]
        for i, plain in enumerate(loglines):
            if not panic_reported and ("panicked" in plain or "Panic while" in plain):
                panic_reported = True
                # `thread 'x' panicked at FILE:LINE:` + the message line,
                # without the cargo registry prefix of FILE.
                msg = REGISTRY.sub("", " ".join(loglines[i:i + 2]))
                fail(state, f"server panicked (log, seen at t={now - t0:.0f}s in {phase}): {msg[:200]}")
        if not alive and not dead_reported:
            dead_reported = True
            fail(state, f"server process {pid} died (t={now - t0:.0f}s, {phase})")
        # Liveness while idle: a deaf server (process up, shards dead) only
        # shows when someone talks to it.
        probe_res, probe_ms = "", ""
        if phase == "idle" and alive and probe:
            tp = time.time()
            # Own process group, so a timeout also ends loadgen's worker.
            pr = subprocess.Popen(probe, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True)
            try:
                outb, _ = pr.communicate(timeout=30)
                ok, outp = pr.returncode == 0, outb.decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                os.killpg(pr.pid, 9)
                pr.communicate()
                ok, outp = False, "probe timed out after 30 s"
            probe_ms = f"{(time.time() - tp) * 1000:.0f}"
            probe_res = "ok" if ok else "FAIL"
            with open(os.path.join(state, "probe.log"), "a") as f:
                f.write(f"== t={now - t0:.0f}s {probe_res} {probe_ms} ms\n")
                if not ok:
                    f.write(outp + "\n")
            if not ok:
                why = [ln.strip().replace("loadgen: FAIL: ", "") for ln in outp.splitlines()
                       if "FAIL" in ln or ln.startswith("errors:") or "timed out" in ln]
                fail(state, f"liveness probe (login + 4 messages) failed while idle at "
                     f"t={now - t0:.0f}s: " + ("; ".join(why[-4:]) or outp.strip()[-200:]))
        fmt = lambda v: "" if v is None else f"{v:.2f}"
        w.writerow([
            f"{now:.1f}", f"{now - t0:.1f}", phase, int(alive),
            rss_kib(pid) if alive else "", fds(pid) if alive else "", cpu,
            fmt(p99["ack_ms"]), fmt(p99["e2e_ms"]), fmt(p99["login_ms"]),
            acked, delivered, conns, probe_res, probe_ms,
            rss_kib(pid, "RssAnon:") if alive else "",
        ])
        out.flush()


def cmd_run_row(argv):
    """run-row NAME START END RC REPORT_DIR WINDOWS_IN WINDOWS_OUT: prints the
    runs.csv row, a one-line summary on stderr, and appends the run's window
    lines (tagged with "run": NAME) to WINDOWS_OUT."""
    name, start, end, rc, rdir, win_in, win_out = argv
    try:
        with open(os.path.join(rdir, "report.json")) as f:
            j = json.load(f)
    except (OSError, ValueError):
        j = {}
    g = lambda k: j.get(k, "")
    p = lambda k: (j.get(k) or {}).get("p99", "")
    print(",".join(str(x) for x in [
        name, j.get("scenario", ""), start, end, rc, g("connections"), g("acked"), g("delivered"),
        g("lost"), g("duplicated"), g("out_of_order"), g("unacked"), g("send_errors"),
        p("ack_ms"), p("e2e_ms"), p("login_ms"),
    ]))
    try:
        with open(win_in) as f, open(win_out, "a") as o:
            for line in f:
                try:
                    w = json.loads(line)
                except ValueError:
                    continue
                o.write(json.dumps({"run": name, **w}, sort_keys=True) + "\n")
    except OSError:
        pass
    if not j:
        msg = f"no report (exit {rc})"
    elif j.get("scenario") == "login-storm":
        msg = (f"{g('connections')} connections resumed in {g('resume_storm_s'):.2f} s, "
               f"resume p99 {p('login_ms')} ms")
    else:
        msg = (f"{g('connections')} conns, acked {g('acked')}, delivered {g('delivered')}, "
               f"lost/dup/ooo {g('lost')}/{g('duplicated')}/{g('out_of_order')}, "
               f"p99 ack {p('ack_ms')} ms e2e {p('e2e_ms')} ms")
    print(f"  {name}: {msg}" + ("" if rc == "0" else f" (loadgen exit {rc})"), file=sys.stderr)


RUN_COLS = ["name", "scenario", "start", "end", "rc", "connections", "acked", "delivered",
            "lost", "duplicated", "out_of_order", "unacked", "send_errors",
            "ack_p99", "e2e_p99", "login_p99"]


def load(out):
    def rows(name, cols=None):
        try:
            with open(os.path.join(out, name), newline="") as f:
                return list(csv.DictReader(f, fieldnames=cols))
        except OSError:
            return []
    return rows("samples.csv"), rows("runs.csv", RUN_COLS), rows("phases.csv", ["start", "end", "phase"])


def load_windows(out):
    ws = []
    try:
        with open(os.path.join(out, "windows.jsonl")) as f:
            for line in f:
                try:
                    ws.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return ws


def soak_t0(samples):
    """Server start (unix s), from the first sample's unix_s - t_s."""
    for s in samples:
        a, b = num(s["unix_s"]), num(s["t_s"])
        if a is not None and b is not None:
            return a - b
    return None


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def cmd_analyze(argv):
    out = argv[argv.index("--out") + 1]
    samples, runs, _ = load(out)
    windows = load_windows(out)
    t0 = soak_t0(samples)
    lines, fails = [], []
    rss = [(num(s["t_s"]), num(s["rss_kib"])) for s in samples if num(s["rss_kib"]) is not None]
    idle = [s for s in samples if s["phase"] == "idle" and num(s["rss_kib"]) is not None]
    mib = lambda k: f"{k / 1024:.1f} MiB"
    max_rss = max((r for _, r in rss), default=None)
    end_rss = rss[-1][1] if rss else None
    # RSS growth rule. Only idle gaps count: with no connections the server
    # should be back to a steady footprint, while under load RSS follows the
    # (varying) amount of buffered work. Each gap is judged by its *settled*
    # value, its last sample: the server after being left alone for the whole
    # gap (owner state is dropped after 60 s unused, and the heap is trimmed
    # once those evictions stop: src/server/heap.rs). The value judged is the
    # anonymous RSS (RssAnon: heap, stacks, io buffers), where a leak lives;
    # VmRSS also counts the binary's and libraries' file pages, which come
    # and go with the page cache (older sample files without RssAnon fall
    # back to VmRSS). The first third of the gaps is warm-up; a leak shows
    # as the settled values of the last third above those of the middle
    # third. Fail when median(last third) > median(middle third) * 1.10 AND
    # by more than 4 MiB: a leak moves every later gap up, so the medians see
    # it (1 MiB a cycle is ~4 MiB between the thirds of a 60-minute run),
    # while one gap that settled a few MiB higher (allocator fragmentation,
    # the 60-minute runs of 2026-12-01/02: 41 MiB once among 29-36, back to
    # 30 at the end) does not. With fewer than 3 gaps it only reports.
    anon = any(num(s_.get("rss_anon_kib")) is not None for s_ in samples)
    col = "rss_anon_kib" if anon else "rss_kib"
    what = "anonymous RSS" if anon else "RSS"
    gaps, prev = [], None
    for s_ in samples:
        if s_["phase"] == "idle" and num(s_.get(col)) is not None:
            if prev != "idle":
                gaps.append([])
            gaps[-1].append(num(s_[col]))
        prev = s_["phase"]
    settled = [g[-1] for g in gaps if g]
    peaks = [max(g) for g in gaps if g]
    n = len(settled)
    med = lambda v: sorted(v)[len(v) // 2] if len(v) % 2 else (sorted(v)[len(v) // 2 - 1] + sorted(v)[len(v) // 2]) / 2
    if n >= 3:
        mid = settled[n // 3: 2 * n // 3] or settled[n // 3: n // 3 + 1]
        last = settled[2 * n // 3:]
        m, l = med(mid), med(last)
        verdict = "ok"
        if l > m * 1.10 and l - m > 4096:
            verdict = "FAIL"
            fails.append(f"{what} keeps growing while idle: settled {what} of the last third of idle gaps "
                         f"(median {mib(l)}) > middle third (median {mib(m)}) + 10 % and + 4 MiB")
        lines.append(f"rss growth check    {verdict}: {n} idle gaps, settled {what} median of middle third "
                     f"{mib(m)}, of last third {mib(l)} ({(l / m - 1) * 100:+.1f} %; limit +10 % and +4 MiB)")
        lines.append(f"idle gaps settled   " + " ".join(f"{v / 1024:.1f}" for v in settled) + f" MiB ({what})")
        lines.append("idle gaps peak      " + " ".join(f"{v / 1024:.0f}" for v in peaks)
                     + f" MiB ({what}; first samples: the last load phase's peak; not judged)")
        if anon:
            vgaps, prev = [], None
            for s_ in samples:
                if s_["phase"] == "idle" and num(s_["rss_kib"]) is not None:
                    if prev != "idle":
                        vgaps.append([])
                    vgaps[-1].append(num(s_["rss_kib"]))
                prev = s_["phase"]
            lines.append("idle gaps VmRSS     " + " ".join(f"{g[-1] / 1024:.1f}" for g in vgaps if g)
                         + " MiB (settled; reported, not judged)")
    else:
        lines.append(f"rss growth check    skipped: only {n} idle gaps (need 3)")
    # Fd leak rule: with nothing connected the fd count should return to the
    # same floor; the min of the last third of idle samples may exceed the
    # min over all idle samples by at most 64 (a few sockets in teardown).
    fdi = [num(s["fds"]) for s in idle if num(s["fds"]) is not None]
    if len(fdi) >= 6:
        floor, tail = min(fdi), min(fdi[2 * len(fdi) // 3:])
        verdict = "ok"
        if tail > floor + 64:
            verdict = "FAIL"
            fails.append(f"fds leak: idle fd count {int(tail)} at the end vs {int(floor)} earlier")
        lines.append(f"fd leak check       {verdict}: idle fds min {int(floor)}, min of last third {int(tail)}")
    worst = (None, "", None)
    for w in windows:
        for k in ("ack_ms", "e2e_ms"):
            h = w.get(k) or {}
            if h.get("count", 0) > 0 and (worst[0] is None or h["p99"] > worst[0]):
                at = w.get("unix_s", 0.0) - t0 if t0 is not None else None
                worst = (h["p99"], w.get("run", ""), at)
    storm_p99 = [num(r["login_p99"]) for r in runs if r["scenario"] == "login-storm" and num(r["login_p99"])]
    worst_login = max(storm_p99) if storm_p99 else None
    loads = [num(s["cpu_pct"]) for s in samples if s["phase"].startswith("load") and num(s["cpu_pct"]) is not None]
    idles = [num(s["cpu_pct"]) for s in idle if num(s["cpu_pct"]) is not None]
    tot = lambda k: int(sum(num(r[k]) or 0 for r in runs))
    # Acked/delivered from the loadgen windows: they also cover a run that
    # was stopped early (no report.json). ack_ms.count = acked messages.
    acked = sum((w.get("ack_ms") or {}).get("count", 0) for w in windows)
    delivered = sum((w.get("e2e_ms") or {}).get("count", 0) for w in windows)
    ldo = (tot("lost"), tot("duplicated"), tot("out_of_order"))
    probes = [s["probe"] for s in samples if s["probe"]]
    lines += [
        f"samples             {len(samples)} (idle {n})",
        f"rss                 start {mib(rss[0][1]) if rss else '-'}, max {mib(max_rss) if max_rss else '-'}, end {mib(end_rss) if end_rss else '-'}",
        f"fds                 max {int(max((num(s['fds']) or 0) for s in samples)) if samples else '-'}",
        f"cpu % of one core   load avg {sum(loads) / len(loads):.0f} max {max(loads):.0f}" if loads else "cpu % of one core   load -",
        f"cpu % idle          avg {sum(idles) / len(idles):.1f}" if idles else "cpu % idle          -",
        (f"worst window p99    {worst[0]:.1f} ms ({worst[1]}"
         + (f", window ending at t={worst[2]:.0f}s)" if worst[2] is not None else ")")) if worst[0] is not None else "worst window p99    -",
        f"worst storm resume p99 {worst_login:.1f} ms" if worst_login is not None else "worst storm resume p99 -",
        f"loadgen runs        {len(runs)}, failed {sum(1 for r in runs if r['rc'] != '0')}",
        f"messages            acked {acked}, delivered {delivered}, lost/dup/ooo {ldo[0]}/{ldo[1]}/{ldo[2]}",
        f"liveness probes     {len(probes)}, failed {probes.count('FAIL')}",
    ]
    with open(os.path.join(out, "analysis.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    q = lambda s: "'" + str(s).replace("'", "'\\''") + "'"
    print(f"A_FAILS={q('; '.join(fails))}")
    print(f"A_MAX_RSS={q(mib(max_rss) if max_rss else '-')}")
    print(f"A_END_RSS={q(mib(end_rss) if end_rss else '-')}")
    print(f"A_WORST_P99={q(f'{worst[0]:.1f} ms' if worst[0] is not None else '-')}")
    print(f"A_ACKED={acked}")
    print(f"A_DELIVERED={delivered}")


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cmd_plot(argv):
    out = argv[argv.index("--out") + 1]
    opt = lambda k, d=None: argv[argv.index(k) + 1] if k in argv else d
    title = opt("--title", "ringchat soak")
    fail_t = num(opt("--fail-at"))
    samples, runs, phases = load(out)
    t = [num(s["t_s"]) for s in samples]
    # The x axis spans the planned run (--tmax), so an early failure shows as such.
    tmax = max([x for x in t if x is not None] + [num(p["end"]) or 0 for p in phases]
               + [num(opt("--tmax")) or 60.0])
    W, L, R, PH, GAP, TOP = 900, 70, 20, 150, 45, 70
    windows, t0 = load_windows(out), soak_t0(samples)

    def wpts(key):
        # One point per loadgen window at its midpoint; None breaks the line
        # between runs (and windows with nothing completed).
        pts, last = [], None
        for w in windows:
            h = w.get(key) or {}
            if t0 is None or w.get("run") != last:
                pts.append((None, None))
            last = w.get("run")
            if t0 is not None and h.get("count", 0) > 0:
                pts.append((w["unix_s"] - t0 - w.get("window_s", 0) / 2, h["p99"]))
            else:
                pts.append((None, None))
        return pts

    panels = [
        ("server RSS (MiB)", [
            ("RSS", "#1f77b4", [(num(s["t_s"]), (num(s["rss_kib"]) or 0) / 1024 if num(s["rss_kib"]) is not None else None) for s in samples]),
            ("anonymous RSS", "#9467bd", [(num(s["t_s"]), num(s.get("rss_anon_kib")) / 1024 if num(s.get("rss_anon_kib")) is not None else None) for s in samples]),
        ]),
        ("p99 latency per 10 s loadgen window (ms)", [
            ("send -> SendOk", "#ff7f0e", wpts("ack_ms")),
            ("send -> delivered", "#d62728", wpts("e2e_ms")),
            ("resume, per login storm", "#2ca02c",
             [pt for r in runs if r["scenario"] == "login-storm" and num(r["login_p99"]) is not None
              for pt in ((None, None), (((num(r["start"]) or 0) + (num(r["end"]) or 0)) / 2,
                                        num(r["login_p99"])))]),
        ]),
        ("server CPU (% of one core)", [("CPU", "#9467bd", [(num(s["t_s"]), num(s["cpu_pct"])) for s in samples])]),
        ("server open fds", [("fds", "#8c564b", [(num(s["t_s"]), num(s["fds"])) for s in samples])]),
    ]
    H = TOP + len(panels) * (PH + GAP) + 10
    px = lambda x: L + x / tmax * (W - L - R)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="18" font-size="14" font-weight="bold">{esc(title)}</text>',
         f'<rect x="{L}" y="28" width="12" height="10" fill="#cfe3f7"/><text x="{L + 16}" y="37">idle gap (nothing connected; liveness probe every sample)</text>',
         f'<rect x="{L + 330}" y="28" width="12" height="10" fill="#fde0c5"/><text x="{L + 346}" y="37">login storm</text>',
         f'<line x1="{L + 430}" x2="{L + 442}" y1="33" y2="33" stroke="#d62728" stroke-width="2" stroke-dasharray="3,2"/><text x="{L + 446}" y="37">failure detected</text>']
    for i, (name, series) in enumerate(panels):
        y0 = TOP + i * (PH + GAP)
        ys = [y for _, _, pts in series for _, y in pts if y is not None]
        ymax = max(ys + [1e-9]) * 1.1 or 1.0
        py = lambda y: y0 + PH - y / ymax * PH
        o.append(f'<text x="{L}" y="{y0 - 6}" font-weight="bold">{esc(name)}</text>')
        for p in phases:
            a, b = num(p["start"]), num(p["end"])
            if a is None or b is None:
                continue
            color = "#cfe3f7" if p["phase"] == "idle" else "#fde0c5" if p["phase"].startswith("storm") else None
            if color:
                o.append(f'<rect x="{px(a):.1f}" y="{y0}" width="{max(px(b) - px(a), 1):.1f}" height="{PH}" fill="{color}"/>')
        o.append(f'<rect x="{L}" y="{y0}" width="{W - L - R}" height="{PH}" fill="none" stroke="#999"/>')
        for k in range(5):
            v = ymax * k / 4
            o.append(f'<line x1="{L}" x2="{W - R}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{L - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{f"{v:.0f}" if v >= 100 else f"{v:.3g}"}</text>')
        step = next(st for st in (10, 15, 30, 60, 120, 300, 600, 1200, 3600) if tmax / st <= 12)
        x = 0.0
        while x <= tmax + 0.01:
            o.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{y0 + PH}" y2="{y0 + PH + 4}" stroke="#999"/>'
                     f'<text x="{px(x):.1f}" y="{y0 + PH + 15}" text-anchor="middle">{int(x) // 60}:{int(x) % 60:02d}</text>')
            x += step
        if fail_t is not None:
            o.append(f'<line x1="{px(fail_t):.1f}" x2="{px(fail_t):.1f}" y1="{y0}" y2="{y0 + PH}" stroke="#d62728" stroke-width="2" stroke-dasharray="3,2"/>')
        for j, (label, color, pts) in enumerate(series):
            seg = []
            segs = [seg]
            for x, y in pts:
                if x is None or y is None:
                    if seg:
                        seg = []
                        segs.append(seg)
                    continue
                seg.append(f"{px(x):.1f},{py(y):.1f}")
            for sg in segs:
                if len(sg) > 1:
                    o.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(sg)}"/>')
                for pt in sg:
                    cx, cy = pt.split(",")
                    o.append(f'<circle cx="{cx}" cy="{cy}" r="1.8" fill="{color}"/>')
            if len(series) > 1:
                o.append(f'<text x="{W - R - 150}" y="{y0 + 14 + 13 * j}" fill="{color}">{esc(label)}</text>')
    o.append("</svg>")
    with open(os.path.join(out, "soak.svg"), "w") as f:
        f.write("\n".join(o) + "\n")


HEADER = """
## Soak runs (bench/soak.sh)

One server, cycling mixed load (direct + group), idle gaps (nothing connected, a liveness probe
every 10 s) and login storms; fails on any lost/duplicated/out-of-order message, a panic, a dead
or deaf server, or idle RSS that keeps growing. RSS is the server's VmRSS; p99 is the worst
10 s window (send → SendOk / delivered); "checkout" is `git describe --dirty` of the tree the
script ran in, the binary is identified by its sha256. Details in
`bench/results/soak-*/summary.txt`.

| date | minutes | result | max RSS | RSS at end | worst window p99 | messages acked | checkout / server sha256 | command |
|---|---|---|---|---|---|---|---|---|
"""


def cmd_results_row(argv):
    path, row = argv
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    lines = text.rstrip("\n").split("\n")
    try:
        h = next(i for i, ln in enumerate(lines) if ln.startswith("## Soak runs"))
    except StopIteration:
        text = text.rstrip("\n") + "\n" + HEADER + row + "\n"
    else:
        # After the last table row of the soak section.
        i = h + 1
        while i < len(lines) and not lines[i].startswith("|"):
            i += 1
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        lines.insert(i, row)
        text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    cmds = {"sample": cmd_sample, "run-row": cmd_run_row, "analyze": cmd_analyze,
            "plot": cmd_plot, "results-row": cmd_results_row}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[sys.argv[1]](sys.argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Per-fault analysis of a bench/chaos.sh run.

Reads DIR/loadgen/report.json (loadgen: timeline, latency_timeline,
ack_slow_timeline, resumes, events, go_unix_s), DIR/faults.jsonl (what the
script did, wall clock) and the node logs (when the survivors changed their
cluster view, when Redis was lost), and writes:

  - the per-fault table, totals and a PASS/FAIL line on stdout;
  - DIR/chaos.json (the same numbers);
  - DIR/chaos.html, self-contained (inline SVG, no scripts or fetches).

Definitions (also printed in the HTML):
  t          seconds after loadgen's GO when the fault was injected.
  detect     kill -9 / SIGTERM: until the first surviving node logged a
             cluster view without the victim; Redis: until the first node
             logged its subscription lost; MySQL: until the first send was
             answered Internal (a client's first sight of it).
  hit        reconnects whose connection loss falls in the fault's window
             (from 0.5 s before it to the next fault, at most 20 s).
  resume     loss -> SyncDone of the new session, p50/p99 of those.
  delayed    sends scheduled in the window (1-s buckets from 1.5 s before
             the fault to 1.5 s before the next one)
             whose SendOk came more than slow_ack_ms after the send.
  longest    the longest send -> SendOk wait among them.
"""
import argparse
import datetime
import html
import json
import math
import os
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z?\s")


def stamp(line):
    m = STAMP.match(line)
    if not m:
        return None
    s = m.group(1)
    if "." in s:
        head, frac = s.split(".")
        s = head + "." + frac[:6]
    return datetime.datetime.fromisoformat(s).replace(tzinfo=datetime.timezone.utc).timestamp()


def node_logs(d):
    """{node: [(unix, line)]} from DIR/n*.log."""
    out = {}
    if not os.path.isdir(d):
        return out
    for f in sorted(os.listdir(d)):
        m = re.fullmatch(r"(n\d+)\.log", f)
        if not m:
            continue
        rows = []
        with open(os.path.join(d, f), errors="replace") as fh:
            for line in fh:
                line = ANSI.sub("", line)
                t = stamp(line)
                if t is not None:
                    rows.append((t, line.rstrip()))
        out[m.group(1)] = rows
    return out


def pct(vals, q):
    if not vals:
        return None
    v = sorted(vals)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


LABEL = {"kill9": "kill -9", "sigterm": "SIGTERM (drain)", "redis": "Redis restart", "mysql": "MySQL outage"}


def analyse(rep, faults, logs):
    go = rep.get("go_unix_s")
    if go is None:
        raise SystemExit("report.json has no go_unix_s (loadgen too old?)")
    faults = sorted(faults, key=lambda f: f["t_unix"])
    slow = rep.get("ack_slow_timeline", [])
    resumes = rep.get("resumes", [])
    events = rep.get("events", [])
    rows = []
    for i, f in enumerate(faults):
        t = f["t_unix"] - go
        end = (f["end_unix"] - go) if f.get("end_unix") else None
        nxt = (faults[i + 1]["t_unix"] - go) if i + 1 < len(faults) else t + 20
        w_end = min(nxt, t + 20)
        detect = None
        if f["kind"] in ("kill9", "sigterm"):
            victim = f["node"]
            for n, lines in logs.items():
                if n == victim:
                    continue
                for ts, line in lines:
                    if ts >= f["t_unix"] and "cluster view changed" in line and f'"{victim}"' not in line:
                        d = (ts - f["t_unix"]) * 1000
                        detect = d if detect is None else min(detect, d)
                        break
        elif f["kind"] == "redis":
            for lines in logs.values():
                for ts, line in lines:
                    if ts >= f["t_unix"] - 0.05 and ("subscription lost" in line or "redis" in line.lower() and "WARN" in line):
                        d = max(0.0, (ts - f["t_unix"]) * 1000)
                        detect = d if detect is None else min(detect, d)
                        break
        elif f["kind"] == "mysql":
            for e in events:
                if e["event"] in ("internal_retry", "login_failed") and e["t_s"] >= t - 0.05:
                    detect = max(0.0, (e["t_s"] - t) * 1000)
                    break
        hit = [r[1] for r in resumes if t - 0.5 <= r[0] < w_end]
        # One-second buckets by scheduled send time: from the one a send in
        # flight at the fault was scheduled in, to before the next fault's.
        secs = [s for s in slow if t - 1.5 <= s["t_s"] < w_end - 1.5]
        retries = sum(e["count"] for e in events if e["event"] == "internal_retry" and t - 0.5 <= e["t_s"] < w_end)
        rows.append({
            "kind": f["kind"],
            "fault": LABEL.get(f["kind"], f["kind"]) + (f" {f['node']}" if f["kind"] in ("kill9", "sigterm") else ""),
            "t_s": round(t, 2),
            "end_s": round(end, 2) if end is not None else None,
            "note": f.get("note", ""),
            "detect_ms": round(detect, 1) if detect is not None else None,
            "hit": len(hit),
            "resume_p50_ms": pct(hit, 0.5),
            "resume_p99_ms": pct(hit, 0.99),
            "resume_max_ms": max(hit) if hit else None,
            "delayed": sum(s["slow"] for s in secs),
            "sends_in_window": sum(s["acked"] for s in secs),
            "longest_wait_ms": max((s["max_ms"] for s in secs), default=None),
            "internal_retries": retries,
            "window_s": [round(t - 1.5, 1), round(w_end, 1)],
        })
    return rows


def verdict(rep, rows):
    bad = []
    for k in ("lost", "duplicated", "out_of_order", "unacked", "send_errors", "held_back"):
        if rep.get(k, 0) != 0:
            bad.append(f"{k} = {rep.get(k)}")
    if rep.get("delivered") != rep.get("expected_deliveries"):
        bad.append(f"delivered {rep.get('delivered')} != expected {rep.get('expected_deliveries')}")
    if rep.get("sent", 0) == 0 or rep.get("acked") != rep.get("sent"):
        bad.append(f"acked {rep.get('acked')} of {rep.get('sent')} sent")
    rp99 = rep.get("resume_ms", {}).get("p99", 0)
    if rp99 >= 1000:
        bad.append(f"resume p99 {rp99} ms >= 1000 ms")
    # SendOk waits outside the MySQL outage (2 s before it to 3 s after).
    excl = [(r["t_s"] - 2, (r["end_s"] or r["t_s"]) + 3) for r in rows if r["kind"] == "mysql"]
    worst = None
    for s in rep.get("ack_slow_timeline", []):
        if any(a <= s["t_s"] < b for a, b in excl):
            continue
        if worst is None or s["max_ms"] > worst[1]:
            worst = (s["t_s"], s["max_ms"])
    if worst and worst[1] > 1500:
        bad.append(f"SendOk wait {worst[1]:.0f} ms > 1500 ms outside the MySQL outage (send scheduled at t={worst[0]} s)")
    if rep.get("missing_workers", 0):
        bad.append(f"{rep['missing_workers']} loadgen workers died")
    return bad, worst


def table(rows):
    head = ["fault", "t (s)", "detect ms", "hit", "resume p50", "resume p99", "delayed", "longest SendOk ms", "Internal retries"]
    out = [head]
    for r in rows:
        out.append([r["fault"], f"{r['t_s']:.1f}", fmt_ms(r["detect_ms"]), str(r["hit"]),
                    fmt_ms(r["resume_p50_ms"]), fmt_ms(r["resume_p99_ms"]), str(r["delayed"]),
                    fmt_ms(r["longest_wait_ms"]), str(r["internal_retries"])])
    return out


def text_table(t):
    w = [max(len(r[i]) for r in t) for i in range(len(t[0]))]
    lines = []
    for j, r in enumerate(t):
        lines.append("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def svg_chart(title, series, faults, duration, log=False, unit=""):
    """series: [(name, color, [(t, v)])]; faults: [(t, end, label)]."""
    W, H, L, R, T, B = 960, 260, 60, 20, 24, 30
    pts = [v for _, _, s in series for _, v in s if v is not None and (v > 0 or not log)]
    if not pts:
        return f"<p>{html.escape(title)}: no data</p>"
    hi = max(pts) * 1.1
    lo = 0.0
    if log:
        lo = max(min(pts), 0.5)
        hi = max(hi, lo * 10)
        y = lambda v: T + (H - T - B) * (1 - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))
    else:
        y = lambda v: T + (H - T - B) * (1 - v / hi)
    x = lambda t: L + (W - L - R) * t / max(duration, 1)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<text x="{L}" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>',
         f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#999"/>']
    # y grid
    if log:
        e = math.floor(math.log10(lo))
        while 10 ** e <= hi:
            for m in (1, 2, 5):
                v = m * 10 ** e
                if lo <= v <= hi:
                    o.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                             f'<text x="{L - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}{unit}</text>')
            e += 1
    else:
        for k in range(6):
            v = hi * k / 5
            o.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                     f'<text x="{L - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}{unit}</text>')
    for k in range(0, int(duration) + 1, 30):
        o.append(f'<text x="{x(k):.1f}" y="{H - B + 14}" text-anchor="middle">{k}s</text>')
    for t, end, label in faults:
        if end is not None and end > t:
            o.append(f'<rect x="{x(t):.1f}" y="{T}" width="{max(1, x(end) - x(t)):.1f}" height="{H - T - B}" fill="#f55" opacity="0.08"/>')
        o.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{T}" y2="{H - B}" stroke="#d22" stroke-dasharray="3,2"/>'
                 f'<text x="{x(t) + 2:.1f}" y="{T + 10}" fill="#d22" font-size="9">{html.escape(label)}</text>')
    for k, (name, color, s) in enumerate(series):
        path, pen = [], False
        for t, v in s:
            if v is None or (log and v <= 0):
                pen = False  # no sample that second: break the line
                continue
            path.append(f"{'L' if pen else 'M'}{x(t):.1f},{y(v):.1f}")
            pen = True
        o.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="1.3"/>')
        lx = L + 330 + 200 * k
        o.append(f'<rect x="{lx}" y="9" width="10" height="3" fill="{color}"/>'
                 f'<text x="{lx + 14}" y="14">{html.escape(name)}</text>')
    o.append("</svg>")
    return "\n".join(o)


def write_html(path, title, rep, rows, bad, worst, totals):
    dur = rep.get("duration_s", 0) + 10
    tl = rep.get("timeline", [])
    fl = [(r["t_s"], r["end_s"], r["fault"]) for r in rows]
    thr = svg_chart("throughput (per second since GO)", [
        ("sent/s", "#888", [(i + 0.5, v[0]) for i, v in enumerate(tl)]),
        ("acked/s", "#1a7", [(i + 0.5, v[1]) for i, v in enumerate(tl)]),
        ("delivered/s", "#27c", [(i + 0.5, v[2]) for i, v in enumerate(tl)]),
    ], fl, dur)
    lat = svg_chart("send -> SendOk latency (ms, log scale)", [
        ("p99 of acks in that second", "#c60", [(p["t_s"], p.get("ack_p99")) for p in rep.get("latency_timeline", [])]),
        ("longest wait, by send second", "#a0a", [(s["t_s"] + 0.5, s["max_ms"]) for s in rep.get("ack_slow_timeline", [])]),
        ("e2e p99", "#27c", [(p["t_s"], p.get("e2e_p99")) for p in rep.get("latency_timeline", [])]),
    ], fl, dur, log=True)
    t = table(rows)
    th = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in t[0]) + "</tr>"
    tr = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in t[1:])
    tot = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in totals.items())
    ok = not bad
    doc = __doc__.split("Definitions (also printed in the HTML):")[1]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ringchat chaos run</title>
<style>body{{font-family:sans-serif;margin:20px;max-width:1000px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}td:first-child{{text-align:left}}
.pass{{color:#080;font-weight:bold}}.fail{{color:#c00;font-weight:bold}}pre{{background:#f6f6f6;padding:8px}}</style>
</head><body><h1>ringchat chaos run</h1>
<p>{html.escape(title)}<br>date {html.escape(str(rep.get('date_utc')))}; {rep.get('connections')} connections through nginx ({html.escape(str(rep.get('server')))}), target {rep.get('target_rate_per_s')} msgs/s, {rep.get('duration_s')} s.</p>
<p class="{'pass' if ok else 'fail'}">{'PASS' if ok else 'FAIL: ' + html.escape('; '.join(bad))}</p>
<h2>Faults</h2><table>{th}{tr}</table>
<h2>Over time</h2>{thr}<br>{lat}
<h2>Totals</h2><table>{tot}</table>
<h2>Definitions</h2><pre>{html.escape(doc)}</pre>
</body></html>"""
    with open(path, "w") as f:
        f.write(page)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--logs")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    rep = json.load(open(os.path.join(a.dir, "loadgen", "report.json")))
    faults = [json.loads(l) for l in open(os.path.join(a.dir, "faults.jsonl")) if l.strip()]
    logs = node_logs(a.logs or os.path.join(a.dir, "logs"))
    rows = analyse(rep, faults, logs)
    bad, worst = verdict(rep, rows)
    before = [s for s in rep.get("ack_slow_timeline", []) if rows and s["t_s"] < rows[0]["t_s"] - 2]
    totals = {
        "connections": rep.get("connections"),
        "sent": rep.get("sent"),
        "acked": rep.get("acked"),
        "rate_per_s (acked)": round(rep.get("rate_per_s", 0), 1),
        "delivered / expected": f"{rep.get('delivered')} / {rep.get('expected_deliveries')}",
        "lost": rep.get("lost"),
        "duplicated": rep.get("duplicated"),
        "out_of_order": rep.get("out_of_order"),
        "unacked": rep.get("unacked"),
        "send_errors": rep.get("send_errors"),
        "internal_retries": rep.get("internal_retries"),
        "reconnects": rep.get("reconnects"),
        "reconnect_failures": rep.get("reconnect_failures"),
        "resent (after reconnect / timeout)": f"{rep.get('resent')} / {rep.get('resent_timeout')}",
        "resend_deduped": rep.get("resend_deduped"),
        "resume_ms p50 / p99 / max": f"{rep['resume_ms']['p50']} / {rep['resume_ms']['p99']} / {rep['resume_ms']['max']}",
        "unavailable_ms (longest)": rep.get("unavailable_ms"),
        "ack_ms p50 / p99 / p99.9 / max": f"{rep['ack_ms']['p50']} / {rep['ack_ms']['p99']} / {rep['ack_ms']['p999']} / {rep['ack_ms']['max']}",
        "ack longest before the first fault (ms)": max((s["max_ms"] for s in before), default=None),
        "longest SendOk wait outside the MySQL outage (ms)": f"{worst[1]:.0f} (send at t={worst[0]} s)" if worst else None,
        "login_failures": json.dumps(rep.get("login_failures")),
    }
    print("\n== chaos: per fault ==")
    print(text_table(table(rows)))
    for r in rows:
        if r["note"]:
            print(f"  note: {r['fault']} at t={r['t_s']}: {r['note']}")
    print("\n== chaos: totals ==")
    for k, v in totals.items():
        print(f"  {k:<50} {v}")
    json.dump({"faults": rows, "totals": totals, "fail": bad, "title": a.title},
              open(os.path.join(a.dir, "chaos.json"), "w"), indent=1)
    write_html(os.path.join(a.dir, "chaos.html"), a.title, rep, rows, bad, worst, totals)
    print(f"\nchaos: report {os.path.join(a.dir, 'chaos.html')}")
    if bad:
        print("chaos: FAIL " + "; ".join(bad))
    else:
        print(f"chaos: PASS (0 lost, 0 duplicated, 0 out of order; resume p99 {rep['resume_ms']['p99']} ms; "
              f"longest SendOk wait outside the MySQL outage {worst[1] if worst else 0:.0f} ms)")


if __name__ == "__main__":
    main()

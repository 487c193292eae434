//! Merged results: the stdout summary, report.json, and a self-contained
//! report.html (inline SVG, no scripts or network fetches, so it can be
//! archived next to the numbers and opened anywhere).

use crate::ipc::WorkerResult;
use crate::{Args, Protocol, Scenario, merge};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::Path;

pub struct ServerSample {
    pub rss_idle_kib: Option<u64>,
    pub rss_connected_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    pub cpu_percent: Option<f64>,
}

/// Latency percentiles of one second of the run (ms; None: no sample).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LatPoint {
    pub t_s: f64,
    pub ack_p50: Option<f64>,
    pub ack_p99: Option<f64>,
    pub e2e_p50: Option<f64>,
    pub e2e_p99: Option<f64>,
}

impl LatPoint {
    pub fn new(t_s: f64, ack: &Histogram<u64>, e2e: &Histogram<u64>) -> LatPoint {
        let q = |h: &Histogram<u64>, q: f64| {
            (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
        };
        LatPoint {
            t_s: (t_s * 10.0).round() / 10.0,
            ack_p50: q(ack, 0.5),
            ack_p99: q(ack, 0.99),
            e2e_p50: q(e2e, 0.5),
            e2e_p99: q(e2e, 0.99),
        }
    }
}

/// One `--server-pid` sample (once a second).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SrvPoint {
    pub t_s: f64,
    pub cpu_pct: Option<f64>,
    pub rss_mib: Option<f64>,
}

/// What the parent recorded over time.
pub struct Series {
    pub latency: Vec<LatPoint>,
    pub server: Vec<SrvPoint>,
    pub login_failures: Vec<(String, u64)>,
}

pub struct Report {
    pub json: Value,
    pub ack: Histogram<u64>,
    pub e2e: Histogram<u64>,
    pub login: Histogram<u64>,
    pub resume: Histogram<u64>,
    pub timeline: Vec<[u64; 3]>,
    pub series: Series,
    /// Reasons the run failed (filled by `failures`), for the header.
    pub verdict: Vec<String>,
}

pub fn pct(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": ms(h.mean() as u64),
    })
}

pub fn build(
    args: &Args,
    rs: &[WorkerResult],
    missing_workers: usize,
    srv: ServerSample,
    series: Series,
) -> Report {
    let sum = |f: fn(&WorkerResult) -> u64| rs.iter().map(f).sum::<u64>();
    let ack = merge(rs.iter().map(|r| r.ack.clone()));
    let e2e = merge(rs.iter().map(|r| r.e2e.clone()));
    let login = merge(rs.iter().map(|r| r.login.clone()));
    let resume = merge(rs.iter().map(|r| r.resume.clone()));
    let mut events: Vec<(i64, String, u64)> =
        rs.iter().flat_map(|r| r.events.iter().cloned()).collect();
    events.sort();
    // Coalesce the workers' events per 100 ms and kind.
    let mut ev: Vec<Value> = Vec::new();
    let mut last: std::collections::HashMap<String, (i64, usize)> = Default::default();
    for (t, k, n) in events {
        if let Some((t0, i)) = last.get(&k)
            && t - t0 < 100_000
        {
            let c = ev[*i]["count"].as_u64().unwrap_or(0);
            ev[*i]["count"] = json!(c + n);
            continue;
        }
        last.insert(k.clone(), (t, ev.len()));
        ev.push(json!({"t_s": (t as f64 / 1e5).round() / 10.0, "event": k, "count": n}));
    }
    let mut lf = serde_json::Map::new();
    for (k, n) in &series.login_failures {
        lf.insert(k.clone(), json!(n));
    }
    // The workers' final counts are exact; the parent's progress copy may lag.
    let mut lf_final: std::collections::BTreeMap<String, u64> = Default::default();
    for r in rs {
        for (k, n) in &r.login_failures {
            *lf_final.entry(k.clone()).or_default() += n;
        }
    }
    if !rs.is_empty() {
        lf = lf_final.into_iter().map(|(k, n)| (k, json!(n))).collect();
    }
    let mut timeline: Vec<[u64; 3]> = Vec::new();
    for r in rs {
        if timeline.len() < r.timeline.len() {
            timeline.resize(r.timeline.len(), [0; 3]);
        }
        for (d, s) in timeline.iter_mut().zip(&r.timeline) {
            for i in 0..3 {
                d[i] += s[i];
            }
        }
    }
    let connections = sum(|r| r.connections);
    let ramp_s = rs.iter().map(|r| r.ramp_us).max().unwrap_or(0) as f64 / 1e6;
    let storm_s = rs.iter().map(|r| r.storm_us).max().unwrap_or(0) as f64 / 1e6;
    let legacy = args.protocol == Protocol::Legacy;
    // Legacy sends get no ack: the achieved rate is what was written.
    let acked = sum(|r| r.acked);
    let done = if legacy { sum(|r| r.sent) } else { acked };
    let dur = args.duration.max(1) as f64;
    let mut errors = serde_json::Map::new();
    for r in rs {
        for (k, v) in &r.errors {
            let e = errors.entry(k.clone()).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + v);
        }
    }
    let rss_per_conn = match (srv.rss_idle_kib, srv.rss_connected_kib) {
        (Some(a), Some(b)) if connections > 0 => {
            Some((b as f64 - a as f64) * 1024.0 / connections as f64)
        }
        _ => None,
    };
    let json = json!({
        "scenario": args.scenario,
        "protocol": args.protocol,
        "server": args.server.to_string(),
        "procs": args.procs,
        "target_connections": args.connections,
        "connections": connections,
        "conn_failures": sum(|r| r.conn_failures),
        "connect_rate_per_s": if ramp_s > 0.0 { connections as f64 / ramp_s } else { 0.0 },
        "ramp_s": ramp_s,
        "resume_storm_s": storm_s,
        "resume_rate_per_s": if storm_s > 0.0 { connections as f64 / storm_s } else { 0.0 },
        "target_rate_per_s": args.rate,
        "duration_s": args.duration,
        "sent": sum(|r| r.sent),
        "acked": acked,
        "delivered": sum(|r| r.delivered),
        "expected_deliveries": sum(|r| r.expected),
        "lost": sum(|r| r.lost),
        "duplicated": sum(|r| r.duplicated),
        "duplicated_shown": sum(|r| r.duplicated_shown),
        "duplicate_arrivals": sum(|r| r.duplicate_arrivals),
        "out_of_order": sum(|r| r.out_of_order),
        "held_back": sum(|r| r.held_back),
        "gaps": sum(|r| r.gaps),
        "history_fills": sum(|r| r.history_fills),
        "redelivered": sum(|r| r.redelivered),
        "reconnect": args.reconnect_on(),
        "losses": sum(|r| r.losses),
        "reconnects": sum(|r| r.reconnects),
        "reconnect_failures": sum(|r| r.reconnect_failures),
        "resent": sum(|r| r.resent),
        "resend_deduped": sum(|r| r.resend_deduped),
        "resume_ms": pct(&resume),
        "unavailable_ms": rs.iter().map(|r| r.unavailable_max_us).max().unwrap_or(0) as f64 / 1000.0,
        "login_failures": lf,
        "events": ev,
        "unacked": sum(|r| r.unacked),
        "unacked_delivered": sum(|r| r.unacked_delivered),
        "send_errors": sum(|r| r.send_errors),
        "stale_ignored": sum(|r| r.stale),
        "missing_workers": missing_workers,
        "rate_per_s": done as f64 / dur,
        "ack_ms": pct(&ack),
        "e2e_ms": pct(&e2e),
        "login_ms": pct(&login),
        "server_rss_idle_kib": srv.rss_idle_kib,
        "server_rss_connected_kib": srv.rss_connected_kib,
        "server_rss_end_kib": srv.rss_end_kib,
        "server_rss_per_conn_bytes": rss_per_conn,
        "server_cpu_percent": srv.cpu_percent,
        "errors": errors,
        "timeline": timeline,
        "latency_timeline": series.latency,
        "server_timeline": series.server,
        "goals": {"rate_per_s": args.goal_rate, "p99_ms": args.goal_p99_ms},
    });
    Report {
        json,
        ack,
        e2e,
        login,
        resume,
        timeline,
        series,
        verdict: Vec::new(),
    }
}

pub fn print_summary(r: &Report) {
    let j = &r.json;
    let g = |k: &str| j[k].to_string();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== loadgen {} ({}) ==",
        j["scenario"].as_str().unwrap_or(""),
        j["protocol"].as_str().unwrap_or("")
    );
    for k in [
        "connections",
        "conn_failures",
        "connect_rate_per_s",
        "resume_rate_per_s",
        "sent",
        "acked",
        "delivered",
        "expected_deliveries",
        "lost",
        "duplicated",
        "out_of_order",
        "unacked",
        "send_errors",
        "rate_per_s",
        "server_rss_per_conn_bytes",
        "server_cpu_percent",
    ] {
        let _ = writeln!(s, "{k:<28} {}", g(k));
    }
    let _ = writeln!(
        s,
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for k in ["ack_ms", "e2e_ms", "login_ms"] {
        let h = &j[k];
        let _ = writeln!(
            s,
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            k,
            h["count"].to_string(),
            h["p50"].to_string(),
            h["p90"].to_string(),
            h["p99"].to_string(),
            h["p999"].to_string(),
            h["max"].to_string()
        );
    }
    if j["protocol"] == "legacy" {
        let _ = writeln!(
            s,
            "note: legacy protocol has no send acknowledgement: ack_ms is empty, \
             rate_per_s counts messages written, lost = written but never delivered"
        );
    }
    if let Some(e) = j["errors"].as_object()
        && !e.is_empty()
    {
        let _ = writeln!(s, "errors: {}", j["errors"]);
    }
    print!("{s}");
}

/// Reasons the run failed (empty: pass).
pub fn failures(a: &Args, r: &Report) -> Vec<String> {
    let j = &r.json;
    let n = |k: &str| j[k].as_f64().unwrap_or(0.0);
    let mut f = Vec::new();
    if a.check_delivery {
        for k in ["lost", "duplicated", "out_of_order"] {
            if n(k) > 0.0 {
                f.push(format!("{k} = {}", j[k]));
            }
        }
    }
    if n("missing_workers") > 0.0 {
        f.push("a worker process died".into());
    }
    let messaging = matches!(
        a.scenario,
        Scenario::Direct | Scenario::Group | Scenario::Mixed
    );
    if a.protocol == Protocol::Legacy {
        if messaging && n("delivered") == 0.0 && a.rate > 0.0 {
            f.push("no message was delivered".into());
        }
    } else if messaging && n("acked") == 0.0 && a.rate > 0.0 {
        f.push("no message was acknowledged".into());
    }
    if let Some(p) = a.expect_p99_ms {
        let got = j["ack_ms"]["p99"]
            .as_f64()
            .unwrap_or(0.0)
            .max(j["e2e_ms"]["p99"].as_f64().unwrap_or(0.0));
        if got > p {
            f.push(format!("p99 {got} ms > expected {p} ms"));
        }
    }
    if let Some(rt) = a.expect_rate
        && n("rate_per_s") < rt
    {
        f.push(format!("rate {} /s < expected {rt} /s", j["rate_per_s"]));
    }
    if let Some(c) = a.expect_connections
        && (n("connections") as u64) < c
    {
        f.push(format!("connections {} < expected {c}", j["connections"]));
    }
    f
}

/// Percentile curve points: x = -log10(1 - q) (0 = p0, 1 = p90, 2 = p99 ...).
fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut v = Vec::new();
    if h.is_empty() {
        return v;
    }
    let mut x = 0.0;
    while x <= 5.0 {
        let q = 1.0 - 10f64.powf(-x);
        v.push((x, h.value_at_quantile(q) as f64 / 1000.0));
        x += 0.05;
    }
    v
}

/// One plotted line: (legend, colour, points).
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn svg_lines(title: &str, xlabels: &[(f64, String)], series: &[Line<'_>], ylabel: &str) -> String {
    let (w, h, l, b) = (760.0, 320.0, 60.0, 40.0);
    let xmax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1e-9, f64::max)
        * 1.1;
    let px = |x: f64| l + x / xmax * (w - l - 20.0);
    let py = |y: f64| h - b - y / ymax * (h - b - 30.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><text x="{l}" y="16" font-size="13" font-weight="bold">{title}</text>"#
    );
    for i in 0..=4 {
        let y = ymax * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{l}" x2="{}" y1="{py}" y2="{py}" stroke="#ddd"/><text x="4" y="{ty}">{y:.2}</text>"##,
            w - 20.0,
            py = py(y),
            ty = py(y) + 4.0
        );
    }
    for (x, lab) in xlabels {
        let _ = write!(
            s,
            r##"<line x1="{px}" x2="{px}" y1="30" y2="{yb}" stroke="#eee"/><text x="{px}" y="{ty}" text-anchor="middle">{lab}</text>"##,
            px = px(*x),
            yb = h - b,
            ty = h - b + 14.0
        );
    }
    let _ = write!(s, r#"<text x="4" y="28">{ylabel}</text>"#);
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let d: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{}" y="{}" fill="{color}">{name}</text>"#,
            d.join(" "),
            w - 160.0,
            40.0 + 14.0 * i as f64
        );
    }
    s.push_str("</svg>");
    s
}

pub fn write(dir: &Path, r: &Report, _rs: &[WorkerResult]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&r.json)?,
    )?;
    let xl: Vec<(f64, String)> = [
        (0.0, "p0"),
        (0.301, "p50"),
        (1.0, "p90"),
        (2.0, "p99"),
        (3.0, "p99.9"),
        (4.0, "p99.99"),
        (5.0, "p99.999"),
    ]
    .iter()
    .map(|(x, s)| (*x, s.to_string()))
    .collect();
    let lat = svg_lines(
        "Latency by percentile (ms, from scheduled send time)",
        &xl,
        &[
            ("send → SendOk", "#1f77b4", curve(&r.ack)),
            ("send → delivered", "#d62728", curve(&r.e2e)),
            ("connect → synced", "#2ca02c", curve(&r.login)),
        ],
        "ms",
    );
    let col = |i: usize| -> Vec<(f64, f64)> {
        r.timeline
            .iter()
            .enumerate()
            .map(|(t, v)| (t as f64, v[i] as f64))
            .collect()
    };
    let n = r.timeline.len().max(1);
    let step = (n / 10).max(1);
    let tl: Vec<(f64, String)> = (0..n)
        .step_by(step)
        .map(|t| (t as f64, format!("{t}s")))
        .collect();
    let thr = svg_lines(
        "Throughput per second",
        &tl,
        &[
            ("sent", "#1f77b4", col(0)),
            ("acked", "#ff7f0e", col(1)),
            ("delivered", "#2ca02c", col(2)),
        ],
        "msgs/s",
    );
    let mut rows = String::new();
    if let Some(o) = r.json.as_object() {
        for (k, v) in o {
            if k == "timeline" {
                continue;
            }
            let _ = write!(rows, "<tr><td>{k}</td><td>{v}</td></tr>");
        }
    }
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ringchat loadgen report</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td{{padding:2px 10px;border-bottom:1px solid #eee;font-family:monospace}}</style>\
         </head><body><h1>ringchat loadgen: {}</h1>{lat}<br>{thr}<h2>Numbers</h2><table>{rows}</table></body></html>",
        r.json["scenario"].as_str().unwrap_or("")
    );
    std::fs::write(dir.join("report.html"), html)
}

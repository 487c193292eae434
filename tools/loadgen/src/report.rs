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
    /// Wall clock (Unix s) of GO, the `t_s = 0` of every series.
    pub go_unix_s: Option<f64>,
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
    // SendOk waits by the second the send was scheduled in (all workers).
    let mut slow: Vec<[u64; 3]> = Vec::new();
    for r in rs {
        if slow.len() < r.ack_slow.len() {
            slow.resize(r.ack_slow.len(), [0; 3]);
        }
        for (d, s) in slow.iter_mut().zip(&r.ack_slow) {
            d[0] += s[0];
            d[1] += s[1];
            d[2] = d[2].max(s[2]);
        }
    }
    let ack_slow_timeline: Vec<Value> = slow
        .iter()
        .enumerate()
        .map(
            |(t, s)| json!({"t_s": t, "acked": s[0], "slow": s[1], "max_ms": s[2] as f64 / 1000.0}),
        )
        .collect();
    let mut resumes: Vec<(i64, u64)> = rs.iter().flat_map(|r| r.resumes.iter().copied()).collect();
    resumes.sort();
    let resumes: Vec<Value> = resumes
        .iter()
        .map(|(t, d)| {
            json!([
                (*t as f64 / 1e3).round() / 1e3,
                (*d as f64 / 1e2).round() / 10.0
            ])
        })
        .collect();
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
        "resent_timeout": sum(|r| r.resent_timeout),
        "resume_ms": pct(&resume),
        "unavailable_ms": rs.iter().map(|r| r.unavailable_max_us).max().unwrap_or(0) as f64 / 1000.0,
        "login_failures": lf,
        "events": ev,
        "unacked": sum(|r| r.unacked),
        "unacked_delivered": sum(|r| r.unacked_delivered),
        "send_errors": sum(|r| r.send_errors),
        "internal_retries": sum(|r| r.internal_retries),
        "go_unix_s": series.go_unix_s,
        "slow_ack_ms": crate::worker::SLOW_ACK_US as f64 / 1000.0,
        "ack_slow_timeline": ack_slow_timeline,
        "resumes": resumes,
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
        "date_utc": utc_now(),
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
    if j["losses"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            s,
            "reconnect: {} lost, {} reconnected ({} failed attempts), {} resent after a reconnect + {} after a timeout ({} deduped by the server), resume p99 {} ms, longest unavailable {} ms",
            j["losses"],
            j["reconnects"],
            j["reconnect_failures"],
            j["resent"],
            j["resent_timeout"],
            j["resend_deduped"],
            j["resume_ms"]["p99"],
            j["unavailable_ms"]
        );
    }
    if j["internal_retries"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            s,
            "internal_retries             {} (sends answered Internal, retried with the same client_msg_id)",
            j["internal_retries"]
        );
    }
    if let Some(e) = j["login_failures"].as_object()
        && !e.is_empty()
    {
        let _ = writeln!(s, "login failures by code: {}", j["login_failures"]);
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
    // With --reconnect a lost connection resends what was not acked, so
    // every send must end acked (without it, a dead connection's sends
    // are simply never answered).
    if a.check_delivery && a.reconnect_on() && n("unacked") > 0.0 {
        f.push(format!("unacked = {} (with --reconnect)", j["unacked"]));
    }
    if n("connections") == 0.0 && a.connections > 0 {
        let lf = j["login_failures"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        f.push(if lf.is_empty() {
            "no connection logged in (see errors)".to_string()
        } else {
            format!("no connection logged in: login failures {lf}")
        });
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

/// Now as `YYYY-MM-DD HH:MM:SS UTC` (no date crate: civil-from-days).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Percentile curve points: x = -log10(1 - q) (0 = min, 1 = p90, 2 = p99
/// ...), up to the last percentile the sample count supports.
fn curve(h: &Histogram<u64>) -> Vec<(f64, Option<f64>)> {
    let mut v = Vec::new();
    if h.is_empty() {
        return v;
    }
    let top = pct_top(h.len());
    let mut x = 0.0;
    while x <= top + 1e-9 {
        let q = 1.0 - 10f64.powf(-x);
        v.push((x, Some(h.value_at_quantile(q) as f64 / 1000.0)));
        x += 0.025;
    }
    v
}

/// Highest percentile axis position worth drawing for `n` samples.
fn pct_top(n: u64) -> f64 {
    ((n.max(2) as f64).log10()).clamp(1.0, 5.0)
}

/// One plotted line: legend, colour, dashed, points (None breaks the line).
struct Line {
    name: String,
    color: &'static str,
    dashed: bool,
    pts: Vec<(f64, Option<f64>)>,
}

fn line(name: &str, color: &'static str, dashed: bool, pts: Vec<(f64, Option<f64>)>) -> Line {
    Line {
        name: name.to_string(),
        color,
        dashed,
        pts,
    }
}

struct Chart {
    title: String,
    ylabel: String,
    xlabel: String,
    xmax: f64,
    xticks: Vec<(f64, String)>,
    lines: Vec<Line>,
    /// Vertical markers (x, label), e.g. connections lost.
    marks: Vec<(f64, String)>,
    /// Dashed horizontal goal line (y, label).
    goal: Option<(f64, String)>,
}

/// A round step near `span / n` (1, 2, 2.5, 5 × 10^k).
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if raw <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}").trim_end_matches(".0").to_string()
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Time ticks 0..tmax with a round step, at most ~8 labels.
fn time_ticks(tmax: f64) -> Vec<(f64, String)> {
    let step = nice_step(tmax.max(1.0), 7.0).max(1.0);
    let mut v = Vec::new();
    let mut t = 0.0;
    while t <= tmax + 1e-9 {
        v.push((t, format!("{}s", fmt_num(t))));
        t += step;
    }
    v
}

impl Chart {
    fn svg(&self) -> String {
        let (w, h) = (600.0, 290.0);
        let (l, r, t, b) = (62.0, 18.0, 58.0, 42.0);
        let (pw, ph) = (w - l - r, h - t - b);
        let mut s = format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="Helvetica,Arial,sans-serif" font-size="11"><rect width="{w}" height="{h}" fill="#fff"/><text x="{l}" y="20" font-size="14" font-weight="bold" fill="#222">{}</text>"##,
            esc(&self.title)
        );
        // Legend: one row under the title.
        let mut lx = l;
        for ln in &self.lines {
            let dash = if ln.dashed {
                r#" stroke-dasharray="5,3""#
            } else {
                ""
            };
            let _ = write!(
                s,
                r##"<line x1="{lx}" x2="{}" y1="38" y2="38" stroke="{}" stroke-width="2.5"{dash}/><text x="{}" y="42" fill="#333">{}</text>"##,
                lx + 18.0,
                ln.color,
                lx + 23.0,
                esc(&ln.name)
            );
            lx += 23.0 + 6.4 * ln.name.chars().count() as f64 + 16.0;
        }
        let ys: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|ln| ln.pts.iter().filter_map(|p| p.1))
            .chain(self.goal.iter().map(|g| g.0))
            .collect();
        if ys.is_empty() {
            let _ = write!(
                s,
                r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ddd"/><text x="{}" y="{}" text-anchor="middle" fill="#888" font-size="13">no data</text></svg>"##,
                l + pw / 2.0,
                t + ph / 2.0
            );
            return s;
        }
        let ymax_data = ys.iter().cloned().fold(0.0, f64::max);
        let step = nice_step(ymax_data.max(1e-6) * 1.05, 5.0);
        let ymax = (ymax_data * 1.05 / step).ceil().max(1.0) * step;
        let xmax = self.xmax.max(1e-9);
        let px = |x: f64| l + x / xmax * pw;
        let py = |y: f64| t + ph - y / ymax * ph;
        let _ = write!(
            s,
            r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="#fcfcfc" stroke="#ccc"/>"##
        );
        let mut y = 0.0;
        while y <= ymax + step * 1e-6 {
            let _ = write!(
                s,
                r##"<line x1="{l}" x2="{}" y1="{py}" y2="{py}" stroke="#e6e6e6"/><text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>"##,
                l + pw,
                l - 6.0,
                py(y) + 4.0,
                fmt_num(y),
                py = py(y)
            );
            y += step;
        }
        for (x, lab) in &self.xticks {
            if *x > xmax + 1e-9 {
                continue;
            }
            let _ = write!(
                s,
                r##"<line x1="{px}" x2="{px}" y1="{t}" y2="{}" stroke="#eee"/><text x="{px}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
                t + ph,
                t + ph + 15.0,
                esc(lab),
                px = px(*x)
            );
        }
        let _ = write!(
            s,
            r##"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle" fill="#444">{}</text><text x="{}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
            t + ph / 2.0,
            t + ph / 2.0,
            esc(&self.ylabel),
            l + pw / 2.0,
            h - 6.0,
            esc(&self.xlabel)
        );
        for (x, lab) in &self.marks {
            let _ = write!(
                s,
                r##"<line x1="{px}" x2="{px}" y1="{t}" y2="{}" stroke="#b00" stroke-dasharray="3,3"/><text x="{}" y="{}" fill="#b00" font-size="10">{}</text>"##,
                t + ph,
                px(*x) + 3.0,
                t + 11.0,
                esc(lab),
                px = px(*x)
            );
        }
        if let Some((g, lab)) = &self.goal {
            let _ = write!(
                s,
                r##"<line x1="{l}" x2="{}" y1="{gy}" y2="{gy}" stroke="#999" stroke-dasharray="8,4"/><text x="{}" y="{}" text-anchor="end" fill="#777" font-size="10">{}</text>"##,
                l + pw,
                l + pw - 4.0,
                py(*g) - 4.0,
                esc(lab),
                gy = py(*g)
            );
        }
        for ln in &self.lines {
            let dash = if ln.dashed {
                r#" stroke-dasharray="5,3""#
            } else {
                ""
            };
            let mut seg: Vec<String> = Vec::new();
            let flush = |seg: &mut Vec<String>, s: &mut String| {
                if seg.len() == 1 {
                    let _ = write!(
                        s,
                        r#"<circle cx="{}" cy="{}" r="2" fill="{}"/>"#,
                        seg[0].split(',').next().unwrap_or("0"),
                        seg[0].split(',').nth(1).unwrap_or("0"),
                        ln.color
                    );
                } else if seg.len() > 1 {
                    let _ = write!(
                        s,
                        r#"<polyline fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round"{dash} points="{}"/>"#,
                        ln.color,
                        seg.join(" ")
                    );
                }
                seg.clear();
            };
            for (x, y) in &ln.pts {
                match y {
                    Some(y) if *x <= xmax + 1e-9 => {
                        seg.push(format!("{:.1},{:.1}", px(*x), py(*y)))
                    }
                    _ => flush(&mut seg, &mut s),
                }
            }
            flush(&mut seg, &mut s);
        }
        s.push_str("</svg>");
        s
    }
}

fn percentile_chart(title: &str, lines: Vec<Line>, hists: &[&Histogram<u64>]) -> Chart {
    let n = hists.iter().map(|h| h.len()).max().unwrap_or(0);
    let top = pct_top(n);
    let xticks = [
        (0.0, "min"),
        (0.301, "p50"),
        (1.0, "p90"),
        (2.0, "p99"),
        (3.0, "p99.9"),
        (4.0, "p99.99"),
        (5.0, "p99.999"),
    ]
    .iter()
    .filter(|(x, _)| *x <= top + 1e-9)
    .map(|(x, s)| (*x, s.to_string()))
    .collect();
    Chart {
        title: title.into(),
        ylabel: "ms".into(),
        xlabel: "percentile".into(),
        xmax: top,
        xticks,
        lines,
        marks: Vec::new(),
        goal: None,
    }
}

/// The goals a run is checked against in the header.
struct Goals {
    applicable: bool,
    rate_ok: bool,
    p99_ok: bool,
    rate: f64,
    p99: f64,
}

fn goals(j: &Value) -> Goals {
    let rate = j["rate_per_s"].as_f64().unwrap_or(0.0);
    let p99 = j["ack_ms"]["p99"]
        .as_f64()
        .unwrap_or(0.0)
        .max(j["e2e_ms"]["p99"].as_f64().unwrap_or(0.0));
    let g_rate = j["goals"]["rate_per_s"].as_f64().unwrap_or(0.0);
    let g_p99 = j["goals"]["p99_ms"].as_f64().unwrap_or(f64::MAX);
    let applicable = matches!(
        j["scenario"].as_str(),
        Some("direct") | Some("group") | Some("mixed")
    );
    Goals {
        applicable,
        rate_ok: rate >= g_rate,
        p99_ok: p99 < g_p99,
        rate,
        p99,
    }
}

pub fn write(dir: &Path, r: &Report, rs: &[WorkerResult]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&r.json)?,
    )?;
    std::fs::write(dir.join("report.html"), html(r, rs))
}

const ACK: &str = "#1f77b4";
const E2E: &str = "#d62728";
const LOGIN: &str = "#2ca02c";
const RESUME: &str = "#9467bd";

fn html(r: &Report, rs: &[WorkerResult]) -> String {
    let j = &r.json;
    let g = goals(j);
    let num = |k: &str| j[k].as_f64().unwrap_or(0.0);
    // --- charts
    let lat = percentile_chart(
        "Message latency by percentile",
        vec![
            line("send → SendOk (ack)", ACK, false, curve(&r.ack)),
            line("send → shown to recipient (e2e)", E2E, false, curve(&r.e2e)),
        ],
        &[&r.ack, &r.e2e],
    );
    let mut login_lines = vec![line(
        "connect → synced (login)",
        LOGIN,
        false,
        curve(&r.login),
    )];
    if !r.resume.is_empty() {
        login_lines.push(line(
            "loss → synced again (resume)",
            RESUME,
            false,
            curve(&r.resume),
        ));
    }
    let login = percentile_chart(
        "Connect / login latency by percentile",
        login_lines,
        &[&r.login, &r.resume],
    );
    // Throughput: whole seconds only (the last one is partial), trailing
    // empty seconds dropped.
    let elapsed = rs.iter().map(|x| x.elapsed_us).max().unwrap_or(0) as f64 / 1e6;
    let mut n = r.timeline.len().min(elapsed.floor() as usize);
    while n > 0 && r.timeline[n - 1].iter().all(|v| *v == 0) {
        n -= 1;
    }
    let col = |i: usize| -> Vec<(f64, Option<f64>)> {
        r.timeline[..n]
            .iter()
            .enumerate()
            .map(|(t, v)| (t as f64 + 0.5, Some(v[i] as f64)))
            .collect()
    };
    let tmax = (n as f64)
        .max(r.series.latency.last().map(|p| p.t_s).unwrap_or(0.0))
        .max(1.0);
    let marks: Vec<(f64, String)> = j["events"]
        .as_array()
        .map(|a| {
            let mut v: Vec<(f64, String)> = Vec::new();
            for e in a {
                if e["event"] == "lost" && e["count"].as_u64().unwrap_or(0) > 0 {
                    let t = e["t_s"].as_f64().unwrap_or(0.0);
                    if v.last().is_none_or(|l| t - l.0 > tmax / 20.0) {
                        v.push((t, format!("{} lost", e["count"])));
                    }
                }
            }
            v
        })
        .unwrap_or_default();
    let thr = Chart {
        title: "Throughput per second".into(),
        ylabel: "messages / s".into(),
        xlabel: "time since start of sending".into(),
        xmax: tmax,
        xticks: time_ticks(tmax),
        lines: vec![
            line("sent", "#7f7f7f", true, col(0)),
            line("acked", ACK, false, col(1)),
            line("delivered (shown)", LOGIN, false, col(2)),
        ],
        marks: marks.clone(),
        goal: g
            .applicable
            .then(|| (num("target_rate_per_s"), "target rate".to_string()))
            .filter(|x| x.0 > 0.0),
    };
    let lp = &r.series.latency;
    let sel = |f: fn(&LatPoint) -> Option<f64>| -> Vec<(f64, Option<f64>)> {
        lp.iter().map(|p| (p.t_s, f(p))).collect()
    };
    let goal_p99 = j["goals"]["p99_ms"].as_f64().unwrap_or(0.0);
    let lot = Chart {
        title: "Message latency over time (per second)".into(),
        ylabel: "ms".into(),
        xlabel: "time since start of sending".into(),
        xmax: tmax,
        xticks: time_ticks(tmax),
        lines: vec![
            line("ack p99", ACK, false, sel(|p| p.ack_p99)),
            line("ack p50", ACK, true, sel(|p| p.ack_p50)),
            line("e2e p99", E2E, false, sel(|p| p.e2e_p99)),
            line("e2e p50", E2E, true, sel(|p| p.e2e_p50)),
        ],
        marks: marks.clone(),
        goal: (g.applicable && goal_p99 > 0.0)
            .then(|| (goal_p99, format!("goal p99 < {} ms", fmt_num(goal_p99)))),
    };
    let sp = &r.series.server;
    let stmax = sp.iter().map(|p| p.t_s).fold(tmax, f64::max);
    let cpu = Chart {
        title: "Server CPU".into(),
        ylabel: "% of one core".into(),
        xlabel: "time since start of sending".into(),
        xmax: stmax,
        xticks: time_ticks(stmax),
        lines: vec![line(
            "CPU (utime + stime)",
            "#ff7f0e",
            false,
            sp.iter()
                .filter(|p| p.t_s >= 0.0)
                .map(|p| (p.t_s, p.cpu_pct))
                .collect(),
        )],
        marks: marks.clone(),
        goal: None,
    };
    let rss = Chart {
        title: "Server memory".into(),
        ylabel: "MiB".into(),
        xlabel: "time since start of sending".into(),
        xmax: stmax,
        xticks: time_ticks(stmax),
        lines: vec![line(
            "RSS",
            "#8c564b",
            false,
            sp.iter()
                .filter(|p| p.t_s >= 0.0)
                .map(|p| (p.t_s, p.rss_mib))
                .collect(),
        )],
        marks,
        goal: None,
    };
    // --- header
    let pass = r.verdict.is_empty();
    let goals_met = !g.applicable || (g.rate_ok && g.p99_ok);
    let mut missed = Vec::new();
    if g.applicable && !g.rate_ok {
        missed.push(format!(
            "throughput {} &lt; {} msgs/s",
            fmt_num(g.rate),
            fmt_num(j["goals"]["rate_per_s"].as_f64().unwrap_or(0.0))
        ));
    }
    if g.applicable && !g.p99_ok {
        missed.push(format!(
            "p99 {} ms ≥ {} ms",
            fmt_num(g.p99),
            fmt_num(j["goals"]["p99_ms"].as_f64().unwrap_or(0.0))
        ));
    }
    let mut head = String::new();
    let (class, word, why) = if !pass {
        ("fail", "FAIL", esc(&r.verdict.join("; ")))
    } else if !goals_met {
        (
            "warn",
            "PASS",
            format!(
                "delivery and run checks passed · goals missed: {}",
                missed.join(", ")
            ),
        )
    } else if g.applicable {
        (
            "pass",
            "PASS",
            "delivery and run checks passed · goals met".to_string(),
        )
    } else {
        ("pass", "PASS", "run checks passed".to_string())
    };
    let _ = write!(
        head,
        r#"<div class="verdict {class}"><span class="big">{word}</span> <span>{why}</span></div>"#
    );
    let badge = |ok: bool| {
        if ok {
            r#"<span class="ok">met</span>"#
        } else {
            r#"<span class="miss">missed</span>"#
        }
    };
    let goal_html = if g.applicable {
        format!(
            "<li>throughput ≥ {} msgs/s: <b>{}</b> msgs/s acked {}</li><li>p99 latency (ack and e2e) &lt; {} ms: <b>{}</b> ms {}</li>",
            fmt_num(j["goals"]["rate_per_s"].as_f64().unwrap_or(0.0)),
            fmt_num(g.rate),
            badge(g.rate_ok),
            fmt_num(goal_p99),
            fmt_num(g.p99),
            badge(g.p99_ok)
        )
    } else {
        "<li>n/a: this scenario sends no messages</li>".to_string()
    };
    let delivery_ok = num("lost") == 0.0 && num("duplicated") == 0.0 && num("out_of_order") == 0.0;
    let load = if g.applicable {
        format!(
            "target {} msgs/s for {} s",
            fmt_num(num("target_rate_per_s")),
            j["duration_s"]
        )
    } else {
        format!("held {} s", j["duration_s"])
    };
    let params = format!(
        "{} · {} scenario, {} protocol · {} of {} connections · {load} · server {} · {} worker process{}{}",
        esc(j["date_utc"].as_str().unwrap_or("")),
        j["scenario"].as_str().unwrap_or(""),
        j["protocol"].as_str().unwrap_or(""),
        j["connections"],
        j["target_connections"],
        esc(j["server"].as_str().unwrap_or("")),
        j["procs"],
        if j["procs"] == 1 { "" } else { "es" },
        if j["reconnect"].as_bool().unwrap_or(false) {
            " · reconnect on"
        } else {
            ""
        }
    );
    let _ = write!(
        head,
        r#"<p class="params">{params}</p><div class="boxes"><div class="box"><h3>Goals (project floor)</h3><ul>{goal_html}</ul></div><div class="box"><h3>Delivery</h3><ul><li>exactly once, in order: {} — <b>{}</b> lost, <b>{}</b> duplicated, <b>{}</b> out of order</li><li>{} sent, {} acked, {} unacked, {} delivered of {} expected</li></ul></div><div class="box"><h3>Connections</h3><ul><li>{} logged in, {} failed{}</li><li>{} reconnects, longest unavailable {} ms</li></ul></div></div>"#,
        badge(delivery_ok)
            .replace("met", "yes")
            .replace("missed", "no"),
        j["lost"],
        j["duplicated"],
        j["out_of_order"],
        j["sent"],
        j["acked"],
        j["unacked"],
        j["delivered"],
        j["expected_deliveries"],
        j["connections"],
        j["conn_failures"],
        j["login_failures"]
            .as_object()
            .filter(|o| !o.is_empty())
            .map(|o| format!(
                " (login refused: {})",
                o.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .unwrap_or_default(),
        j["reconnects"],
        fmt_num(num("unavailable_ms")),
    );
    // --- numbers
    let mut t = String::new();
    let lat_row = |t: &mut String, name: &str, k: &str| {
        let h = &j[k];
        let c = h["count"].as_u64().unwrap_or(0);
        let cell = |f: &str| {
            if c == 0 {
                "–".to_string()
            } else {
                fmt_num(h[f].as_f64().unwrap_or(0.0))
            }
        };
        let _ = write!(
            t,
            "<tr><td>{name}</td><td>{c}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell("p50"),
            cell("p90"),
            cell("p99"),
            cell("p999"),
            cell("max"),
            cell("mean")
        );
    };
    t.push_str("<h2>Latency (ms)</h2><table class=\"num\"><tr><th></th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>");
    lat_row(&mut t, "ack: send → SendOk", "ack_ms");
    lat_row(&mut t, "e2e: send → shown", "e2e_ms");
    lat_row(&mut t, "login: connect → synced", "login_ms");
    lat_row(&mut t, "resume: loss → synced", "resume_ms");
    t.push_str("</table>");
    let groups: [(&str, &[(&str, &str)]); 3] = [
        (
            "Messages",
            &[
                ("sent", "sent"),
                ("acked", "acked"),
                ("rate_per_s", "acked per second"),
                ("delivered", "delivered (shown)"),
                ("expected_deliveries", "expected deliveries"),
                ("lost", "lost"),
                ("duplicated", "duplicated (shown twice)"),
                ("out_of_order", "out of order (shown)"),
                ("unacked", "never acked"),
                ("unacked_delivered", "shown, never acked"),
                ("send_errors", "send errors"),
                ("held_back", "held back above a gap at the end"),
                ("gaps", "gaps on live connections"),
                ("history_fills", "History requests to fill gaps"),
                ("redelivered", "expected re-arrivals (dropped)"),
                ("duplicate_arrivals", "repeated arrivals (dropped)"),
                ("stale_ignored", "messages of earlier runs"),
            ],
        ),
        (
            "Connections",
            &[
                ("connections", "logged in at the end"),
                ("conn_failures", "failed to connect / log in"),
                ("connect_rate_per_s", "logins per second (ramp)"),
                ("ramp_s", "ramp (s)"),
                ("resume_rate_per_s", "resumes per second (storm)"),
                ("losses", "connections lost"),
                ("reconnects", "reconnected"),
                ("reconnect_failures", "failed reconnect attempts"),
                ("resent", "messages resent after a reconnect"),
                ("resent_timeout", "messages resent after --send-timeout-ms"),
                ("resend_deduped", "resends deduplicated by the server"),
                ("unavailable_ms", "longest unavailability (ms)"),
                ("missing_workers", "worker processes lost"),
            ],
        ),
        (
            "Server",
            &[
                ("server_cpu_percent", "CPU while sending (% of one core)"),
                ("server_rss_idle_kib", "RSS before (KiB)"),
                ("server_rss_connected_kib", "RSS connected (KiB)"),
                ("server_rss_end_kib", "RSS at the end of sending (KiB)"),
                ("server_rss_per_conn_bytes", "RSS per connection (bytes)"),
            ],
        ),
    ];
    t.push_str("<div class=\"cols\">");
    for (title, rows) in groups {
        let _ = write!(t, "<div><h2>{title}</h2><table class=\"kv\">");
        for (k, label) in rows {
            let v = &j[*k];
            let s = match v {
                Value::Null => "–".to_string(),
                Value::Number(n) => {
                    let f = n.as_f64().unwrap_or(0.0);
                    if n.is_f64() {
                        fmt_num(f)
                    } else {
                        n.to_string()
                    }
                }
                other => esc(&other.to_string()),
            };
            let bad = matches!(*k, "lost" | "duplicated" | "out_of_order" | "unacked")
                && v.as_f64().unwrap_or(0.0) > 0.0;
            let _ = write!(
                t,
                "<tr{}><td>{}</td><td>{s}</td></tr>",
                if bad { " class=\"bad\"" } else { "" },
                esc(label)
            );
        }
        t.push_str("</table></div>");
    }
    t.push_str("</div>");
    let errs = j["errors"].as_object().filter(|o| !o.is_empty());
    let lf = j["login_failures"].as_object().filter(|o| !o.is_empty());
    if errs.is_some() || lf.is_some() {
        t.push_str("<h2>Errors</h2><table class=\"kv\">");
        for (k, v) in lf.into_iter().flatten() {
            let _ = write!(t, "<tr><td>login refused: {}</td><td>{v}</td></tr>", esc(k));
        }
        for (k, v) in errs.into_iter().flatten() {
            let _ = write!(t, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
        }
        t.push_str("</table>");
    }
    if let Some(ev) = j["events"].as_array().filter(|a| !a.is_empty()) {
        // Runs of one kind with less than a second between them: one line.
        let mut runs: Vec<(f64, f64, String, u64)> = Vec::new();
        for e in ev {
            let (tt, k, c) = (
                e["t_s"].as_f64().unwrap_or(0.0),
                e["event"].as_str().unwrap_or("").to_string(),
                e["count"].as_u64().unwrap_or(0),
            );
            match runs.iter_mut().rev().find(|r| r.2 == k) {
                Some(r) if tt - r.1 < 1.0 => {
                    r.1 = tt;
                    r.3 += c;
                }
                _ => runs.push((tt, tt, k, c)),
            }
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        t.push_str("<h2>Events (seconds since the start of sending)</h2><table class=\"kv\">");
        for (a, b, k, c) in runs.iter().take(40) {
            let when = if b - a < 0.05 {
                fmt_num(*a)
            } else {
                format!("{} – {}", fmt_num(*a), fmt_num(*b))
            };
            let _ = write!(t, "<tr><td>{when}</td><td>{} × {c}</td></tr>", esc(k));
        }
        if runs.len() > 40 {
            let _ = write!(
                t,
                "<tr><td>…</td><td>{} more in report.json</td></tr>",
                runs.len() - 40
            );
        }
        t.push_str("</table>");
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ringchat loadgen: {scen}</title><style>\
body{{font-family:Helvetica,Arial,sans-serif;margin:20px 28px;color:#222;max-width:1240px}}\
h1{{font-size:22px;margin:0 0 10px}}h2{{font-size:16px;margin:22px 0 6px}}h3{{font-size:13px;margin:0 0 4px;color:#555;text-transform:uppercase;letter-spacing:.04em}}\
.verdict{{padding:10px 16px;border-radius:6px;font-size:15px;color:#fff}}.verdict .big{{font-size:24px;font-weight:bold;margin-right:10px}}\
.pass{{background:#2e7d32}}.fail{{background:#c62828}}.warn{{background:#b26a00}}.params{{color:#444;margin:8px 0}}\
.boxes{{display:flex;gap:12px;flex-wrap:wrap}}.box{{flex:1;min-width:300px;border:1px solid #ddd;border-radius:6px;padding:8px 12px}}\
.box ul{{margin:0;padding-left:18px;line-height:1.6}}.ok{{color:#2e7d32;font-weight:bold}}.miss{{color:#c62828;font-weight:bold}}\
.grid{{display:grid;grid-template-columns:repeat(2,600px);gap:14px 20px;margin-top:14px}}\
table{{border-collapse:collapse;font-size:13px}}td,th{{padding:3px 12px;border-bottom:1px solid #eee;text-align:right}}\
td:first-child,th:first-child{{text-align:left}}th{{color:#555;font-weight:normal}}.kv td:last-child{{font-variant-numeric:tabular-nums}}\
.num td{{font-variant-numeric:tabular-nums}}.bad td{{color:#c62828;font-weight:bold}}.cols{{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}}\
.ev{{font-size:12px;color:#444;line-height:1.6}}\
</style></head><body><h1>ringchat loadgen report</h1>{head}\
<div class=\"grid\">{charts}</div>{t}</body></html>",
        scen = j["scenario"].as_str().unwrap_or(""),
        charts = if g.applicable {
            [
                lat.svg(),
                login.svg(),
                lot.svg(),
                thr.svg(),
                cpu.svg(),
                rss.svg(),
            ]
            .concat()
        } else {
            // No messages: no message charts.
            [login.svg(), cpu.svg(), rss.svg()].concat()
        },
    )
}

//! loadgen: drives a ringchat server with many logged-in connections and an
//! open-loop message rate, measures latency and checks delivery.
//!
//! The parent process only orchestrates: it splits the users over `--procs`
//! worker processes (itself re-executed with `--worker-index`; each process
//! is limited to 20k fds), starts them together once all are connected,
//! prints a progress line every second, merges their histograms and counts,
//! and writes the report. Users must exist beforehand (`ringchat provision`).

#![recursion_limit = "256"]

mod ipc;
mod report;
mod track;
mod worker;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use ipc::{Msg, WorkerResult};
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Hold N idle logged-in connections; measure connect rate and server RSS.
    Connect,
    /// One-to-one messages between friends (users 2i and 2i+1).
    Direct,
    /// Messages to groups of --group-size members.
    Group,
    /// 80 % direct, 20 % group.
    Mixed,
    /// Everyone disconnects at once and reconnects with its resume token.
    LoginStorm,
}

/// Wire protocol spoken to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// ringchat's FlatBuffers protocol (SendOk acks, seqs, resume).
    Native,
    /// The cc_ChatServer JSON protocol (`ringchat serve --legacy-listen`, or
    /// the old server itself): no send acks, so only e2e latency; users are
    /// logged in by numeric id (--id-base / --id-map). Scenarios: connect,
    /// direct, group, mixed.
    Legacy,
    /// The native protocol over WebSocket (`ringchat serve --ws-listen`,
    /// `GET /ws`): one frame per binary message; every native scenario.
    Ws,
}

#[derive(Parser, Clone, Debug)]
#[command(
    about = "ringchat load generator (users must be provisioned first: `ringchat provision`)"
)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub server: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Total messages per second over all connections (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of sending (or holding, for `connect`).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    #[arg(long, value_enum, default_value = "direct")]
    pub scenario: Scenario,
    #[arg(long, value_enum, default_value = "native")]
    pub protocol: Protocol,
    /// Legacy protocol: user `<prefix><i>` has id `id_base + i` (ringchat
    /// provision on a fresh store assigns 1, 2, ... in order).
    #[arg(long, default_value_t = 1)]
    pub id_base: u64,
    /// Legacy protocol: file of `name id` lines, overriding --id-base.
    #[arg(long)]
    pub id_map: Option<PathBuf>,
    /// Write report.json and report.html here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Append one JSON line per `--window-secs` to this file: count and
    /// percentiles of the ack, e2e and login latencies completed in that
    /// window (`ack_ms.count` = messages acked then), and live connections.
    /// For soak tests; the last line covers the partial window at exit.
    #[arg(long)]
    pub window_report: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub window_secs: u64,
    /// Server pid, to sample its RSS and CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// File holding the server pid, re-read at every sample (for runs that
    /// restart the server: bench/failover_smoke.sh); overrides --server-pid
    /// for the per-second CPU/RSS series.
    #[arg(long)]
    pub server_pid_file: Option<PathBuf>,
    /// Worker processes (each binds its sockets to 127.0.0.(2+k)).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    #[arg(long, default_value_t = 10)]
    pub group_size: usize,
    /// Username prefix used by `ringchat provision`.
    #[arg(long, default_value = "lg")]
    pub prefix: String,
    #[arg(long, default_value = "loadgen-pass")]
    pub password: String,
    /// Message body bytes.
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
    /// Seconds to wait after sending stops for acks and deliveries.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Connects + logins in flight per worker (ramp).
    #[arg(long, default_value_t = 128)]
    pub max_inflight: usize,
    /// Give up on the connect phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub connect_timeout_s: u64,
    /// Bind to 127.0.0.2 even with one worker.
    #[arg(long)]
    pub spread_source: bool,
    #[arg(long, default_value_t = 1024)]
    pub ring_depth: usize,
    /// Locked io_uring buffer memory per worker (KiB); kept small.
    #[arg(long, default_value_t = 128)]
    pub io_memory_kib: usize,
    /// Ping every live connection this often (server idle timeout is 60 s).
    #[arg(long, default_value_t = 15)]
    pub ping_secs: u64,
    #[arg(long)]
    pub expect_p99_ms: Option<f64>,
    #[arg(long)]
    pub expect_rate: Option<f64>,
    #[arg(long)]
    pub expect_connections: Option<u64>,
    /// Fail (exit non-zero) on lost/duplicated/out-of-order (default on).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub check_delivery: bool,
    /// Reconnect a connection the server closed or reset (through --server,
    /// e.g. nginx), with back-off and jitter: resume with the token and
    /// `since` cursors, resend unacknowledged messages with the same
    /// client_msg_id. `--reconnect` = `--reconnect true`. Default: on for
    /// direct, group and mixed over the native protocol, off otherwise.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub reconnect: Option<bool>,
    /// Longest reconnect back-off (ms); attempts wait 25-50 ms, 50-100 ms,
    /// ... doubling up to this.
    #[arg(long, default_value_t = 2000)]
    pub reconnect_max_ms: u64,
    /// With --reconnect: a send without a SendOk after this long is written
    /// again on the same connection with the same client_msg_id (0: never;
    /// only a reconnect resends).
    #[arg(long, default_value_t = 5000)]
    pub send_timeout_ms: u64,
    /// Closed loop instead of open loop (direct scenario, legacy protocol):
    /// every connection keeps N messages in flight to its partner and sends
    /// the next one when its partner receives one, so the rate is whatever
    /// the server sustains (`--rate` is ignored). Latency is measured from
    /// the actual write.
    #[arg(long)]
    pub closed_loop: Option<usize>,
    /// Goal shown in the report header: acked messages per second (the
    /// project floor). Informational: it does not change the exit status
    /// (use --expect-rate for that).
    #[arg(long, default_value_t = 5000.0)]
    pub goal_rate: f64,
    /// Goal shown in the report header: p99 of ack and e2e latency (ms).
    /// Informational (use --expect-p99-ms to fail on it).
    #[arg(long, default_value_t = 50.0)]
    pub goal_p99_ms: f64,
    /// Deliberately wrong client behaviour, to check that the accounting
    /// catches it (bench/failover_smoke.sh FAULT=...): `resend-new-id`
    /// resends unacked messages (after a reconnect or a send timeout) with a
    /// new client_msg_id (one whose first try was stored is stored twice:
    /// duplicated); `no-resend` forgets them after a reconnect (unacked);
    /// `double-send` sends every 100th message twice under two ids
    /// (duplicated, deterministically).
    #[arg(long, hide = true)]
    pub test_fault: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    pub run_id: u64,
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_base: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_count: usize,
}

/// CLOCK_MONOTONIC in µs: one clock for every process on the machine, so
/// scheduled-send stamps written by one worker mean the same to another.
pub fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

impl Args {
    pub fn reconnect_on(&self) -> bool {
        self.reconnect.unwrap_or(
            self.protocol != Protocol::Legacy
                && matches!(
                    self.scenario,
                    Scenario::Direct | Scenario::Group | Scenario::Mixed
                ),
        )
    }
}

/// Users per indivisible block: a friend pair, a group, or both.
fn unit(a: &Args) -> usize {
    let g = a.group_size.max(2);
    match a.scenario {
        Scenario::Group => g,
        Scenario::Mixed => {
            if g.is_multiple_of(2) {
                g
            } else {
                2 * g
            }
        }
        _ => 2,
    }
}

pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, seconds.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn main() {
    let mut args = Args::parse();
    if let Some(w) = args.worker_index {
        let (b, n) = (args.worker_base, args.worker_count);
        worker::run(args, w, b, n);
    }
    args.procs = args.procs.clamp(1, 250);
    if args.protocol == Protocol::Legacy && args.scenario == Scenario::LoginStorm {
        eprintln!("loadgen: the legacy protocol has no resume; login-storm is native only");
        std::process::exit(2);
    }
    if args.protocol == Protocol::Legacy && args.reconnect == Some(true) {
        eprintln!("loadgen: the legacy protocol has no resume; --reconnect is native only");
        std::process::exit(2);
    }
    if args.closed_loop.is_some()
        && (args.protocol != Protocol::Legacy || args.scenario != Scenario::Direct)
    {
        eprintln!("loadgen: --closed-loop is for --protocol legacy --scenario direct");
        std::process::exit(2);
    }
    let u = unit(&args);
    let units = args.connections / u;
    if units == 0 {
        eprintln!("loadgen: --connections must be at least {u} for this scenario");
        std::process::exit(2);
    }
    if units * u != args.connections {
        eprintln!(
            "loadgen: rounding --connections down to {} (multiple of {u})",
            units * u
        );
        args.connections = units * u;
    }
    if args.run_id == 0 {
        args.run_id = (mono_us() ^ std::process::id() as u64) & 0xff_ffff_ffff;
    }
    std::process::exit(parent(args));
}

struct WorkerProc {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
}

fn parent(args: Args) -> i32 {
    let u = unit(&args);
    let units = args.connections / u;
    let k = args.procs.min(units);
    let exe = std::env::current_exe().expect("own path");
    // The pid file (a restarting server) names the first server too; the
    // run's CPU and end RSS are then only reported if it is still the same
    // process at the end (a dead pid reads as nothing).
    let pid = args.server_pid.or_else(|| {
        args.server_pid_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse::<u32>().ok())
    });
    let rss_idle = pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    let (tx, rx) = mpsc::channel::<(usize, Option<Msg>)>();
    let mut procs = Vec::new();
    for w in 0..k {
        let (ub, ue) = (w * units / k, (w + 1) * units / k);
        let mut cmd = Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .arg("--run-id")
            .arg(args.run_id.to_string())
            .arg("--worker-index")
            .arg(w.to_string())
            .arg("--worker-base")
            .arg((ub * u).to_string())
            .arg("--worker-count")
            .arg(((ue - ub) * u).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("loadgen: spawning worker: {e}");
                return 2;
            }
        };
        let out = child.stdout.take().expect("piped");
        let stdin = child.stdin.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            loop {
                let m = ipc::read_msg(&mut r);
                let end = m.is_none() || matches!(m, Some(Msg::Result(_)));
                let _ = tx.send((w, m));
                if end {
                    break;
                }
            }
        });
        procs.push(WorkerProc { child, stdin });
    }
    drop(tx);

    let t_start = Instant::now();
    let mut progress = vec![[0u64; ipc::PROGRESS_FIELDS]; k];
    let mut login_fail: Vec<Vec<(String, u64)>> = vec![Vec::new(); k];
    // Per-second series for the report: merged latency deltas of the last
    // second, server CPU/RSS, and loadgen-side events.
    let mut sec_hist = [worker::new_hist(), worker::new_hist()];
    let mut lat_series: Vec<report::LatPoint> = Vec::new();
    let mut srv_series: Vec<report::SrvPoint> = Vec::new();
    let mut cpu_prev: Option<(Instant, f64)> = None;
    let mut cpu_pid: Option<u32> = None;
    let mut go_mono: Option<u64> = None;
    let mut go_unix: Option<f64> = None;
    let mut sec_seen = vec![false; k];
    let mut ready = vec![None::<u64>; k];
    let mut results: Vec<Option<WorkerResult>> = (0..k).map(|_| None).collect();
    let mut dead = vec![false; k];
    let mut go_at: Option<Instant> = None;
    let mut rss_connected = None;
    let mut cpu_go = None;
    let mut cpu_end = None;
    let mut rss_end = None;
    let mut last_line = Instant::now();
    let mut last_sent = 0u64;
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut win = args.window_report.as_ref().map(|p| Window::open(p, &args));
    while results.iter().zip(&dead).any(|(r, d)| r.is_none() && !d) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((w, Some(Msg::Progress(p)))) => progress[w] = p,
            Ok((w, Some(Msg::Ready(n)))) => {
                ready[w] = Some(n);
                progress[w][0] = n;
            }
            Ok((w, Some(Msg::LoginFailures(v)))) => login_fail[w] = v,
            Ok((w, Some(Msg::Window(h)))) => {
                if let Some(win) = &mut win {
                    win.add(&h);
                }
                let _ = sec_hist[0].add(&h[0]);
                let _ = sec_hist[1].add(&h[1]);
                // One point per second once every running worker sent its
                // window for it (workers tick on their own clocks).
                sec_seen[w] = true;
                let all = (0..k).all(|i| sec_seen[i] || dead[i] || results[i].is_some());
                if all {
                    let rel = go_mono.map(|g| (mono_us() as f64 - g as f64) / 1e6 - 0.5);
                    if let Some(rel) = rel
                        && rel > -0.5
                    {
                        lat_series.push(report::LatPoint::new(
                            rel.max(0.0),
                            &sec_hist[0],
                            &sec_hist[1],
                        ));
                    }
                    sec_hist = [worker::new_hist(), worker::new_hist()];
                    sec_seen = vec![false; k];
                }
            }
            Ok((w, Some(Msg::Result(r)))) => results[w] = Some(*r),
            Ok((w, None)) => {
                if results[w].is_none() {
                    eprintln!("loadgen: worker {w} exited without a result");
                    dead[w] = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if go_at.is_none() && ready.iter().zip(&dead).all(|(r, d)| r.is_some() || *d) {
            let live: u64 = ready.iter().flatten().sum();
            let secs = t_start.elapsed().as_secs_f64();
            eprintln!(
                "loadgen: {live} connections logged in in {secs:.1}s ({:.0}/s); starting {:?}{}",
                live as f64 / secs,
                args.scenario,
                if args.reconnect_on() {
                    " (reconnecting lost connections)"
                } else {
                    ""
                }
            );
            let lf = merge_counts(&login_fail);
            if !lf.is_empty() {
                eprintln!("loadgen: login failures: {}", fmt_counts(&lf));
            }
            if live == 0 {
                eprintln!(
                    "loadgen: no connection logged in{}",
                    if lf.is_empty() {
                        " (see the errors in the summary)".to_string()
                    } else {
                        format!(": {}", fmt_counts(&lf))
                    }
                );
            }
            // Let the server settle (friends' presence, catch-up acks) first.
            std::thread::sleep(Duration::from_millis(500));
            rss_connected = pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
            cpu_go = pid.and_then(proc_cpu_s);
            let t0 = mono_us() + 200_000;
            go_mono = Some(t0);
            go_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| (d.as_secs_f64() * 1000.0 + 200.0).round() / 1000.0);
            for p in &mut procs {
                let _ = writeln!(p.stdin, "GO {t0}");
                let _ = p.stdin.flush();
            }
            go_at = Some(Instant::now() + Duration::from_millis(200));
        }
        if let Some(g) = go_at
            && cpu_end.is_none()
            && Instant::now() >= g + Duration::from_secs(args.duration)
        {
            cpu_end = pid.and_then(proc_cpu_s);
            rss_end = pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
        }
        if let Some(win) = &mut win
            && win.start.elapsed() >= Duration::from_secs(args.window_secs.max(1))
        {
            win.flush(&progress);
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            let dt = last_line.elapsed().as_secs_f64();
            last_line = Instant::now();
            let s: Vec<u64> = (0..4)
                .map(|i| progress.iter().map(|p| p[i]).sum())
                .collect();
            let ack99 = progress.iter().map(|p| p[4]).max().unwrap_or(0);
            let e2e99 = progress.iter().map(|p| p[5]).max().unwrap_or(0);
            let rate = (s[1] - last_sent.min(s[1])) as f64 / dt;
            last_sent = s[1];
            let t = t_start.elapsed().as_secs_f64();
            samples.push((t, s[0]));
            let mut extra = String::new();
            let reconn: u64 = progress.iter().map(|p| p[6]).sum();
            let losses: u64 = progress.iter().map(|p| p[7]).sum();
            if args.reconnect_on() && losses > 0 {
                extra.push_str(&format!(" | lost {losses} reconnected {reconn}"));
            }
            let lf = merge_counts(&login_fail);
            if !lf.is_empty() {
                extra.push_str(&format!(" | login failures: {}", fmt_counts(&lf)));
            }
            let cf: u64 = progress.iter().map(|p| p[8]).sum();
            if cf > 0 {
                extra.push_str(&format!(" | failed connections {cf}"));
            }
            eprintln!(
                "[{t:6.1}s] conns {:>6} | sent {:>8} ({:>7.0}/s) | acked {:>8} | delivered {:>8} | p99 ack {:.2} ms e2e {:.2} ms{extra}",
                s[0],
                s[1],
                rate,
                s[2],
                s[3],
                ack99 as f64 / 1000.0,
                e2e99 as f64 / 1000.0
            );
            let rel = go_mono.map(|g| (mono_us() as f64 - g as f64) / 1e6);
            let spid = args
                .server_pid_file
                .as_ref()
                .and_then(|f| std::fs::read_to_string(f).ok())
                .and_then(|s| s.trim().parse::<u32>().ok())
                .or(pid);
            if let Some(p) = spid {
                let now = Instant::now();
                let cpu = proc_cpu_s(p);
                if cpu_pid != Some(p) {
                    // A new server process: its CPU time starts again.
                    cpu_prev = None;
                    cpu_pid = Some(p);
                }
                let pct = match (cpu, cpu_prev) {
                    (Some(c), Some((t1, c1))) => {
                        Some((c - c1) / now.duration_since(t1).as_secs_f64().max(1e-3) * 100.0)
                    }
                    _ => None,
                };
                cpu_prev = cpu.map(|c| (now, c));
                let rss = proc_status_kib(p, "VmRSS:");
                if pct.is_some() || rss.is_some() {
                    srv_series.push(report::SrvPoint {
                        t_s: (rel.unwrap_or(-t_start.elapsed().as_secs_f64()) * 10.0).round()
                            / 10.0,
                        cpu_pct: pct,
                        rss_mib: rss.map(|k| k as f64 / 1024.0),
                    });
                }
            }
        }
    }
    for mut p in procs {
        let _ = p.child.wait();
    }
    if let Some(win) = &mut win {
        win.flush(&progress);
    }
    let results: Vec<WorkerResult> = results.into_iter().flatten().collect();
    let missing = k - results.len();
    let cpu = match (cpu_go, cpu_end.or_else(|| pid.and_then(proc_cpu_s))) {
        (Some(a), Some(b)) => Some((b - a) / args.duration.max(1) as f64 * 100.0),
        _ => None,
    };
    let server = report::ServerSample {
        rss_idle_kib: rss_idle,
        rss_connected_kib: rss_connected,
        rss_end_kib: rss_end,
        cpu_percent: cpu,
    };
    let series = report::Series {
        latency: lat_series,
        server: srv_series,
        login_failures: merge_counts(&login_fail),
        go_unix_s: go_unix,
    };
    let mut rep = report::build(&args, &results, missing, server, series);
    report::print_summary(&rep);
    let fails = report::failures(&args, &rep);
    rep.verdict = fails.clone();
    if let Some(dir) = &args.report
        && let Err(e) = report::write(dir, &rep, &results)
    {
        eprintln!("loadgen: writing report: {e}");
    }
    for f in &fails {
        eprintln!("loadgen: FAIL: {f}");
    }
    if fails.is_empty() { 0 } else { 1 }
}

/// `--window-report`: latencies merged from the workers' `WINDOW` deltas,
/// written as one JSON line per window.
struct Window {
    file: Option<std::fs::File>,
    scenario: Scenario,
    start: Instant,
    t0: Instant,
    hist: [Histogram<u64>; 3],
}

impl Window {
    fn open(path: &std::path::Path, args: &Args) -> Window {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| eprintln!("loadgen: --window-report {}: {e}", path.display()))
            .ok();
        let now = Instant::now();
        Window {
            file,
            scenario: args.scenario,
            start: now,
            t0: now,
            hist: [worker::new_hist(), worker::new_hist(), worker::new_hist()],
        }
    }

    fn add(&mut self, h: &[Histogram<u64>; 3]) {
        for (m, d) in self.hist.iter_mut().zip(h) {
            let _ = m.add(d);
        }
    }

    fn flush(&mut self, progress: &[[u64; ipc::PROGRESS_FIELDS]]) {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let line = serde_json::json!({
            "unix_s": (unix * 1000.0).round() / 1000.0,
            "t_s": (self.t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "window_s": (self.start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "scenario": self.scenario,
            "conns": progress.iter().map(|p| p[0]).sum::<u64>(),
            "ack_ms": report::pct(&self.hist[0]),
            "e2e_ms": report::pct(&self.hist[1]),
            "login_ms": report::pct(&self.hist[2]),
        });
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{line}");
        }
        self.start = Instant::now();
        for h in &mut self.hist {
            *h = worker::new_hist();
        }
    }
}

/// Sums per-worker `(name, count)` lists, by name.
fn merge_counts(v: &[Vec<(String, u64)>]) -> Vec<(String, u64)> {
    let mut m: std::collections::BTreeMap<String, u64> = Default::default();
    for (k, n) in v.iter().flatten() {
        *m.entry(k.clone()).or_default() += n;
    }
    m.into_iter().collect()
}

fn fmt_counts(v: &[(String, u64)]) -> String {
    v.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Merges worker histograms (all share the same bounds).
pub fn merge(hs: impl Iterator<Item = Histogram<u64>>) -> Histogram<u64> {
    let mut m = worker::new_hist();
    for h in hs {
        let _ = m.add(&h);
    }
    m
}

//! Per-shard counters, exported in Prometheus text format.
//!
//! Hot-path counters are plain `Cell`s owned by their shard (no shared
//! atomics, no cache-line ping-pong). Once a second each shard publishes a
//! snapshot into its own slot of [`Published`], which the exporter thread
//! reads; only that copy is atomic.
//!
//! Latencies an operator pages on are histograms ([`Histogram`]): a bucket
//! counter per shard bumped in place (no lock, no allocation), published
//! with the counters and rendered cumulatively (`_bucket{le=..}`, `_sum`,
//! `_count`) at scrape time.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct Metrics {
    pub shard: usize,
    pub connections: Cell<u64>,
    pub accepted: Cell<u64>,
    pub sessions: Cell<u64>,
    pub msgs_in: Cell<u64>,
    pub msgs_out: Cell<u64>,
    pub outbox_depth: Cell<u64>,
    pub batches: Cell<u64>,
    pub batch_ops: Cell<u64>,
    pub batch_us_total: Cell<u64>,
    pub batch_us_max: Cell<u64>,
    pub store_errors: Cell<u64>,
    pub protocol_errors: Cell<u64>,
    pub slow_consumers: Cell<u64>,
    pub task_panics: Cell<u64>,
    /// Cluster bus payloads dropped: unsigned, forged or stale (--cluster-key-file).
    pub bus_rejected: Cell<u64>,
    /// Forwarded requests whose owner node left, sent to the new owner.
    pub forwards_rerouted: Cell<u64>,
    /// Forwarded requests whose owner node left, answered `Internal`.
    pub forwards_failed: Cell<u64>,
    /// Forwarded requests unanswered past their deadline, answered `Internal`.
    pub forwards_expired: Cell<u64>,
    /// Answers to forwarded requests that were answered already (dropped).
    pub forwards_late: Cell<u64>,
    /// Nodes taken out of the view because their bus subscription vanished.
    pub nodes_down: Cell<u64>,
    /// Conversations whose owner state was loaded from the store (first
    /// use, after an eviction, or taken over from a node that left).
    pub conv_loads: Cell<u64>,
    /// Owner shard: message sequenced → its SendOk issued (durable).
    pub send_ack: Histogram,
    /// One group-commit batch: handed to the committer → committed.
    pub store_batch: Histogram,
    /// Cluster bus: oldest message of a batch queued → published to Redis.
    pub bus_lag: Histogram,
}

/// Upper bounds of the latency buckets, microseconds (Prometheus `le`, in
/// seconds, when rendered). A last `+Inf` bucket catches the rest.
pub const BUCKETS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];
/// Published slots of one histogram: a count per bucket (`+Inf` last), then
/// the sum in microseconds.
const HIST_SLOTS: usize = BUCKETS_US.len() + 2;

/// A latency histogram owned by one shard (see the module docs).
pub struct Histogram {
    counts: [Cell<u64>; BUCKETS_US.len() + 1],
    sum_us: Cell<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| Cell::new(0)),
            sum_us: Cell::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let us = took.as_micros() as u64;
        let i = BUCKETS_US.partition_point(|&b| b < us);
        let c = &self.counts[i];
        c.set(c.get() + 1);
        self.sum_us.set(self.sum_us.get() + us);
    }

    fn values(&self) -> [u64; HIST_SLOTS] {
        let mut v = [0u64; HIST_SLOTS];
        for (slot, c) in v.iter_mut().zip(&self.counts) {
            *slot = c.get();
        }
        v[HIST_SLOTS - 1] = self.sum_us.get();
        v
    }
}

/// Name and help of each histogram, in `Published::hists` order.
const HISTOGRAMS: [(&str, &str); 3] = [
    (
        "ringchat_send_ack_seconds",
        "owner shard: chat message sequenced until its SendOk is issued (group-commit wait + durable write)",
    ),
    (
        "ringchat_store_batch_duration_seconds",
        "one group-commit batch: handed to the committer until committed (fsync included)",
    ),
    (
        "ringchat_cluster_bus_lag_seconds",
        "cluster bus: oldest message of a batch queued until published to Redis (presence lookups included); stays empty on a single node",
    ),
];

/// Names, help and kind of each published value, in slot order.
const FIELDS: &[(&str, &str, &str)] = &[
    ("ringchat_connections", "open TCP connections", "gauge"),
    (
        "ringchat_accepted_total",
        "accepted TCP connections",
        "counter",
    ),
    (
        "ringchat_sessions",
        "logged-in sessions homed on the shard",
        "gauge",
    ),
    (
        "ringchat_messages_in_total",
        "chat messages sequenced",
        "counter",
    ),
    (
        "ringchat_messages_out_total",
        "chat message deliveries queued to sessions",
        "counter",
    ),
    (
        "ringchat_cross_shard_queue_depth",
        "messages waiting for cross-shard channel capacity",
        "gauge",
    ),
    (
        "ringchat_store_batches_total",
        "group-commit batches written",
        "counter",
    ),
    (
        "ringchat_store_batch_ops_total",
        "operations written in batches",
        "counter",
    ),
    (
        "ringchat_store_batch_seconds_total",
        "time spent writing batches",
        "counter",
    ),
    (
        "ringchat_store_batch_seconds_max",
        "slowest batch since start",
        "gauge",
    ),
    (
        "ringchat_errors_total{kind=\"store\"}",
        "errors by kind",
        "counter",
    ),
    ("ringchat_errors_total{kind=\"protocol\"}", "", "counter"),
    (
        "ringchat_errors_total{kind=\"slow_consumer\"}",
        "",
        "counter",
    ),
    ("ringchat_errors_total{kind=\"task_panic\"}", "", "counter"),
    (
        "ringchat_errors_total{kind=\"bus_rejected\"}",
        "",
        "counter",
    ),
    (
        "ringchat_cluster_forwards_total{outcome=\"rerouted\"}",
        "requests forwarded to an owner on another node that did not answer normally: re-routed to the new owner, answered Internal because the owner left (failed) or timed out (expired), or answered twice (late, dropped)",
        "counter",
    ),
    (
        "ringchat_cluster_forwards_total{outcome=\"failed\"}",
        "",
        "counter",
    ),
    (
        "ringchat_cluster_forwards_total{outcome=\"expired\"}",
        "",
        "counter",
    ),
    (
        "ringchat_cluster_forwards_total{outcome=\"late\"}",
        "",
        "counter",
    ),
    (
        "ringchat_cluster_nodes_down_total",
        "nodes taken out of the view because their bus subscription vanished (before their liveness key expired)",
        "counter",
    ),
    (
        "ringchat_conv_loads_total",
        "conversations whose owner state was loaded from the store: first use, after an idle eviction, or taken over from a node that left the view",
        "counter",
    ),
];

impl Metrics {
    pub fn new(shard: usize) -> Metrics {
        Metrics {
            shard,
            connections: Cell::new(0),
            accepted: Cell::new(0),
            sessions: Cell::new(0),
            msgs_in: Cell::new(0),
            msgs_out: Cell::new(0),
            outbox_depth: Cell::new(0),
            batches: Cell::new(0),
            batch_ops: Cell::new(0),
            batch_us_total: Cell::new(0),
            batch_us_max: Cell::new(0),
            store_errors: Cell::new(0),
            protocol_errors: Cell::new(0),
            slow_consumers: Cell::new(0),
            task_panics: Cell::new(0),
            bus_rejected: Cell::new(0),
            forwards_rerouted: Cell::new(0),
            forwards_failed: Cell::new(0),
            forwards_expired: Cell::new(0),
            forwards_late: Cell::new(0),
            nodes_down: Cell::new(0),
            conv_loads: Cell::new(0),
            send_ack: Histogram::default(),
            store_batch: Histogram::default(),
            bus_lag: Histogram::default(),
        }
    }

    pub fn inc(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }

    pub fn record_batch(&self, ops: usize, took: Duration) {
        let us = took.as_micros() as u64;
        self.batches.set(self.batches.get() + 1);
        self.batch_ops.set(self.batch_ops.get() + ops as u64);
        self.batch_us_total.set(self.batch_us_total.get() + us);
        self.batch_us_max.set(self.batch_us_max.get().max(us));
        self.store_batch.observe(took);
    }

    fn values(&self) -> [u64; FIELDS.len()] {
        [
            self.connections.get(),
            self.accepted.get(),
            self.sessions.get(),
            self.msgs_in.get(),
            self.msgs_out.get(),
            self.outbox_depth.get(),
            self.batches.get(),
            self.batch_ops.get(),
            self.batch_us_total.get(),
            self.batch_us_max.get(),
            self.store_errors.get(),
            self.protocol_errors.get(),
            self.slow_consumers.get(),
            self.task_panics.get(),
            self.bus_rejected.get(),
            self.forwards_rerouted.get(),
            self.forwards_failed.get(),
            self.forwards_expired.get(),
            self.forwards_late.get(),
            self.nodes_down.get(),
            self.conv_loads.get(),
        ]
    }

    pub fn publish(&self, to: &Published) {
        for (slot, v) in to.slots[self.shard].iter().zip(self.values()) {
            slot.store(v, Ordering::Relaxed);
        }
        let hists = [&self.send_ack, &self.store_batch, &self.bus_lag];
        for (row, h) in to.hists[self.shard].iter().zip(hists) {
            for (slot, v) in row.iter().zip(h.values()) {
                slot.store(v, Ordering::Relaxed);
            }
        }
    }
}

/// The exporter's view: one row of atomics per shard.
pub struct Published {
    slots: Vec<[AtomicU64; FIELDS.len()]>,
    hists: Vec<[[AtomicU64; HIST_SLOTS]; HISTOGRAMS.len()]>,
}

impl Published {
    pub fn new(shards: usize) -> Arc<Published> {
        Arc::new(Published {
            slots: (0..shards)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            hists: (0..shards)
                .map(|_| std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, (name, help, kind)) in FIELDS.iter().enumerate() {
            let base = name.split('{').next().unwrap_or(name);
            if !help.is_empty() {
                out.push_str(&format!("# HELP {base} {help}\n# TYPE {base} {kind}\n"));
            }
            for (shard, row) in self.slots.iter().enumerate() {
                let v = row[i].load(Ordering::Relaxed);
                let labels = match name.find('{') {
                    Some(p) => format!("{{shard=\"{shard}\",{}", &name[p + 1..]),
                    None => format!("{{shard=\"{shard}\"}}"),
                };
                if base.ends_with("seconds_total") || base.ends_with("seconds_max") {
                    out.push_str(&format!("{base}{labels} {}\n", v as f64 / 1e6));
                } else {
                    out.push_str(&format!("{base}{labels} {v}\n"));
                }
            }
        }
        for (h, (name, help)) in HISTOGRAMS.iter().enumerate() {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
            for (shard, rows) in self.hists.iter().enumerate() {
                let row: Vec<u64> = rows[h].iter().map(|a| a.load(Ordering::Relaxed)).collect();
                render_histogram(&mut out, name, shard, &row);
            }
        }
        out
    }
}

/// One shard's histogram from its published slots (per-bucket counts, then
/// the sum in microseconds): cumulative buckets, `_sum` and `_count`.
fn render_histogram(out: &mut String, name: &str, shard: usize, row: &[u64]) {
    let mut cum = 0u64;
    for (i, n) in row[..=BUCKETS_US.len()].iter().enumerate() {
        cum += n;
        let le = match BUCKETS_US.get(i) {
            Some(us) => format!("{}", *us as f64 / 1e6),
            None => "+Inf".to_string(),
        };
        out.push_str(&format!(
            "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {cum}\n"
        ));
    }
    let sum = row[HIST_SLOTS - 1] as f64 / 1e6;
    out.push_str(&format!("{name}_sum{{shard=\"{shard}\"}} {sum}\n"));
    out.push_str(&format!("{name}_count{{shard=\"{shard}\"}} {cum}\n"));
}

/// Appends the watchdog's view: seconds since each shard last made progress
/// (computed at scrape time, so a stalled shard shows a growing value even
/// though it no longer publishes anything itself).
pub fn render_progress(out: &mut String, ages: &[f64]) {
    out.push_str(
        "# HELP ringchat_shard_last_progress_seconds seconds since the shard's executor last ran its ticker\n\
         # TYPE ringchat_shard_last_progress_seconds gauge\n",
    );
    for (shard, age) in ages.iter().enumerate() {
        out.push_str(&format!(
            "ringchat_shard_last_progress_seconds{{shard=\"{shard}\"}} {age:.3}\n"
        ));
    }
}

/// Largest request head (request line and headers) the exporter reads.
const MAX_HEAD: usize = 16 << 10;
/// Largest request body (an admin broadcast's text).
const MAX_BODY: usize = 1 << 20;

/// One HTTP request as the exporter needs it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

/// Reads one request: the request line, headers (only `Authorization` and
/// `Content-Length` matter), and a body of `Content-Length` bytes. `Err` is
/// the status and text to answer with.
pub fn read_request(r: &mut impl BufRead) -> Result<Request, (&'static str, String)> {
    let bad = |t: &str| ("400 Bad Request", t.to_string());
    let mut head = 0;
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<(), (&'static str, String)> {
        line.clear();
        let left = (MAX_HEAD - head.min(MAX_HEAD)) as u64 + 1;
        let n = std::io::Read::take(&mut *r, left)
            .read_line(line)
            .map_err(|_| bad("unreadable request"))?;
        head += n;
        if head > MAX_HEAD {
            return Err((
                "431 Request Header Fields Too Large",
                format!("request head over {MAX_HEAD} bytes"),
            ));
        }
        Ok(())
    };
    read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        return Err(bad("bad request line"));
    };
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        ..Request::default()
    };
    let mut length = 0usize;
    loop {
        read_line(&mut line)?;
        let h = line.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            req.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| bad("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err((
                "411 Length Required",
                "send the body with a Content-Length".into(),
            ));
        }
    }
    if length > MAX_BODY {
        return Err((
            "413 Content Too Large",
            format!("request body over {MAX_BODY} bytes"),
        ));
    }
    req.body = vec![0; length];
    std::io::Read::read_exact(r, &mut req.body).map_err(|_| bad("request body cut short"))?;
    Ok(req)
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/admin/...` on a plain
/// thread (never on an executor), one request per connection.
pub fn spawn_exporter(
    addr: SocketAddr,
    published: Arc<Published>,
    health: Arc<super::health::Health>,
    admin: Arc<super::admin::Admin>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
            let mut reader = BufReader::new(&stream);
            let (status, ctype, extra, body) = match read_request(&mut reader) {
                Err((status, text)) => (status, "text/plain", "", format!("{text}\n")),
                Ok(req) if req.path == "/admin" || req.path.starts_with("/admin/") => {
                    let a = admin.http(
                        &req.method,
                        &req.path,
                        req.authorization.as_deref(),
                        &req.body,
                    );
                    (a.status, "application/json", a.headers, a.body)
                }
                Ok(req) => match (req.method.as_str(), req.path.as_str()) {
                    ("GET", "/metrics") => {
                        let mut body = published.render();
                        render_progress(&mut body, &health.progress.ages());
                        health.limits.render(&mut body);
                        admin.render(&mut body);
                        ("200 OK", "text/plain; version=0.0.4", "", body)
                    }
                    ("GET", "/healthz") => {
                        let a = health.healthz();
                        (a.status, "application/json", "", a.body)
                    }
                    ("GET", "/readyz") => {
                        let a = health.readyz();
                        (a.status, "application/json", "", a.body)
                    }
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "",
                        "try /metrics, /healthz, /readyz or /admin/...\n".to_string(),
                    ),
                },
            };
            let mut s = &stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_with_their_token_and_body_and_bounded() {
        let raw = b"POST /admin/groups/3/broadcast HTTP/1.1\r\nHost: x\r\nauthorization: Bearer abc\r\nContent-Length: 5\r\n\r\nhello";
        let r = read_request(&mut &raw[..]).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/admin/groups/3/broadcast");
        assert_eq!(r.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(r.body, b"hello");
        let short = b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nhi";
        assert_eq!(
            read_request(&mut &short[..]).unwrap_err().0,
            "400 Bad Request"
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            read_request(&mut huge.as_bytes()).unwrap_err().0,
            "431 Request Header Fields Too Large"
        );
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(
            read_request(&mut big.as_bytes()).unwrap_err().0,
            "413 Content Too Large"
        );
        assert_eq!(
            read_request(&mut &b"\r\n"[..]).unwrap_err().0,
            "400 Bad Request"
        );
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let m = Metrics::new(1);
        m.send_ack.observe(Duration::from_micros(100)); // le 0.0001 (bound inclusive)
        m.send_ack.observe(Duration::from_micros(101)); // le 0.00025
        m.send_ack.observe(Duration::from_millis(3)); // le 0.005
        m.send_ack.observe(Duration::from_secs(60)); // +Inf
        m.record_batch(10, Duration::from_millis(2));
        let p = Published::new(2);
        m.publish(&p);
        let out = p.render();
        let line = |s: &str| {
            out.lines()
                .find(|l| l.starts_with(s))
                .unwrap_or_else(|| panic!("{s} missing:\n{out}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let b = "ringchat_send_ack_seconds_bucket{shard=\"1\",le=";
        assert_eq!(line(&format!("{b}\"0.0001\"}}")), "1");
        assert_eq!(line(&format!("{b}\"0.00025\"}}")), "2");
        assert_eq!(line(&format!("{b}\"0.0025\"}}")), "2");
        assert_eq!(line(&format!("{b}\"0.005\"}}")), "3");
        assert_eq!(line(&format!("{b}\"10\"}}")), "3");
        assert_eq!(line(&format!("{b}\"+Inf\"}}")), "4");
        assert_eq!(line("ringchat_send_ack_seconds_count{shard=\"1\"}"), "4");
        assert_eq!(
            line("ringchat_send_ack_seconds_sum{shard=\"1\"}"),
            "60.003201"
        );
        assert_eq!(
            line("ringchat_store_batch_duration_seconds_count{shard=\"1\"}"),
            "1"
        );
        assert_eq!(
            line("ringchat_store_batch_duration_seconds_count{shard=\"0\"}"),
            "0"
        );
        assert!(out.contains("# TYPE ringchat_cluster_bus_lag_seconds histogram"));
    }
}

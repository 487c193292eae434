//! Per-shard counters, exported in Prometheus text format.
//!
//! Hot-path counters are plain `Cell`s owned by their shard (no shared
//! atomics, no cache-line ping-pong). Once a second each shard publishes a
//! snapshot into its own slot of [`Published`], which the exporter thread
//! reads; only that copy is atomic.

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
}

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
    }

    fn values(&self) -> [u64; 14] {
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
        ]
    }

    pub fn publish(&self, to: &Published) {
        for (slot, v) in to.slots[self.shard].iter().zip(self.values()) {
            slot.store(v, Ordering::Relaxed);
        }
    }
}

/// The exporter's view: one row of atomics per shard.
pub struct Published {
    slots: Vec<[AtomicU64; 14]>,
}

impl Published {
    pub fn new(shards: usize) -> Arc<Published> {
        Arc::new(Published {
            slots: (0..shards)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
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
        out
    }
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

/// Serves `GET /metrics` on a plain thread (never on an executor).
pub fn spawn_exporter(
    addr: SocketAddr,
    published: Arc<Published>,
    health: Arc<super::health::Health>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Drain headers.
            let mut h = String::new();
            while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                h.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match (line.starts_with("GET "), path) {
                (true, "/metrics") => {
                    let mut body = published.render();
                    render_progress(&mut body, &health.progress.ages());
                    health.limits.render(&mut body);
                    ("200 OK", "text/plain; version=0.0.4", body)
                }
                (true, "/healthz") => {
                    let a = health.healthz();
                    (a.status, "application/json", a.body)
                }
                (true, "/readyz") => {
                    let a = health.readyz();
                    (a.status, "application/json", a.body)
                }
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics, /healthz or /readyz\n".to_string(),
                ),
            };
            let mut s = &stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(local)
}

//! `/healthz` and `/readyz` on the metrics address, for nginx, systemd
//! and Kubernetes probes.
//!
//! - `/healthz` (liveness): every shard's executor ran its ticker within
//!   [`STALE`]. A failing liveness probe means "restart me" (the watchdog
//!   does that itself after `--watchdog-secs`; the probe sees it earlier).
//! - `/readyz` (readiness): every shard is accepting (all reported ready,
//!   and in a cluster that includes having joined the view), the node is
//!   not draining for shutdown, the store answers a trivial query, and the
//!   shards are live. A failing readiness probe means "send no new clients".
//!
//! Both answer JSON saying what is wrong. They run on the exporter's plain
//! thread: the store query there is a blocking call, never on an executor.

use super::watchdog::Progress;
use crate::store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A shard silent this long is reported unhealthy (it beats every 250 ms).
pub const STALE: Duration = Duration::from_secs(2);

pub struct Health {
    pub progress: Arc<Progress>,
    pub store: Arc<dyn Store>,
    /// Set once every shard reported ready.
    pub started: AtomicBool,
    /// The node's stop signal (set: draining for shutdown).
    pub stop: Arc<AtomicBool>,
    /// The node's limits, for their refusal counters on `/metrics`.
    pub limits: Arc<super::limits::NodeLimits>,
}

/// A probe's answer: HTTP status line and JSON body.
pub struct Answer {
    pub status: &'static str,
    pub body: String,
}

fn shards_json(ages: &[f64]) -> String {
    let items: Vec<String> = ages
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{\"shard\":{i},\"last_progress_seconds\":{a:.3}}}"))
        .collect();
    format!("[{}]", items.join(","))
}

fn stalled(ages: &[f64]) -> Vec<usize> {
    ages.iter()
        .enumerate()
        .filter(|(_, a)| **a > STALE.as_secs_f64())
        .map(|(i, _)| i)
        .collect()
}

fn answer(ok: bool, problems: &[String], ages: &[f64]) -> Answer {
    let problems: Vec<String> = problems
        .iter()
        .map(|p| serde_json::to_string(p).unwrap_or_default())
        .collect();
    Answer {
        status: if ok {
            "200 OK"
        } else {
            "503 Service Unavailable"
        },
        body: format!(
            "{{\"status\":\"{}\",\"problems\":[{}],\"shards\":{}}}\n",
            if ok { "ok" } else { "fail" },
            problems.join(","),
            shards_json(ages)
        ),
    }
}

impl Health {
    pub fn healthz(&self) -> Answer {
        let ages = self.progress.ages();
        let problems: Vec<String> = stalled(&ages)
            .into_iter()
            .map(|i| format!("shard {i} made no progress for {:.1} s", ages[i]))
            .collect();
        answer(problems.is_empty(), &problems, &ages)
    }

    pub fn readyz(&self) -> Answer {
        let ages = self.progress.ages();
        let mut problems = Vec::new();
        if !self.started.load(Ordering::SeqCst) {
            problems.push("starting: not every shard is accepting yet".to_string());
        }
        if self.stop.load(Ordering::SeqCst) {
            problems.push("draining for shutdown".to_string());
        }
        for i in stalled(&ages) {
            problems.push(format!("shard {i} made no progress for {:.1} s", ages[i]));
        }
        if let Err(e) = self.store.user_by_id(0) {
            problems.push(format!("store unreachable: {e}"));
        }
        answer(problems.is_empty(), &problems, &ages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_what_is_wrong() {
        let a = answer(false, &["shard 1 \"stuck\"".into()], &[0.1, 3.0]);
        assert_eq!(a.status, "503 Service Unavailable");
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["status"], "fail");
        assert_eq!(v["problems"][0], "shard 1 \"stuck\"");
        assert_eq!(v["shards"][1]["last_progress_seconds"], 3.0);
        assert_eq!(stalled(&[0.1, 3.0, 2.5]), vec![1, 2]);
    }
}

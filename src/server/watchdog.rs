//! Fail fast instead of going deaf.
//!
//! A shard whose executor stops (a panic that escapes a task kills the
//! executor thread; a blocking call or a reactor bug stalls it) would
//! otherwise leave the process listening with nobody serving: the kernel
//! keeps completing TCP handshakes into a backlog no one drains, and
//! clients time out instead of reconnecting elsewhere. So each shard bumps
//! its progress stamp from its ticker task (every 250 ms) (which only runs if the reactor
//! runs), and the process's main thread, which has nothing else to do,
//! checks the stamps and the shard threads. On a stall it logs which shard
//! and exits with [`EXIT_STALLED`], so systemd / Kubernetes restart it and
//! clients resume on another node (nothing acknowledged is lost: acks
//! follow durability).
//!
//! The decision (`Progress::stalled`) is a pure function of the stamps and
//! a clock value, unit-tested below; the loop around it is in `server::serve`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Exit status of a process stopped by the watchdog (EX_SOFTWARE).
pub const EXIT_STALLED: i32 = 70;

/// Per-shard progress stamps: milliseconds since `epoch` of the last beat.
pub struct Progress {
    epoch: Instant,
    stamps: Vec<AtomicU64>,
    /// A shard freed a lot of memory (dropped idle conversations): the
    /// main thread returns free heap pages to the system (`supervise`).
    pub trim: std::sync::atomic::AtomicBool,
}

impl Progress {
    pub fn new(shards: usize) -> Progress {
        Progress {
            epoch: Instant::now(),
            stamps: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            trim: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Called by shard `shard` on its own executor.
    pub fn beat(&self, shard: usize) {
        self.stamps[shard].store(self.now_ms(), Ordering::Relaxed);
    }

    /// Starts every shard's clock now (when all shards reported ready:
    /// start-up, e.g. joining a cluster, is not held against them).
    pub fn restart_clocks(&self) {
        for i in 0..self.stamps.len() {
            self.beat(i);
        }
    }

    /// Seconds since each shard last made progress.
    pub fn ages(&self) -> Vec<f64> {
        let now = self.now_ms();
        self.stamps
            .iter()
            .map(|s| now.saturating_sub(s.load(Ordering::Relaxed)) as f64 / 1000.0)
            .collect()
    }

    /// The first shard silent for longer than `limit`, with its silence.
    pub fn stalled(&self, limit: Duration) -> Option<(usize, Duration)> {
        stalled_at(&self.stamps_ms(), self.now_ms(), limit)
    }

    fn stamps_ms(&self) -> Vec<u64> {
        self.stamps
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect()
    }
}

fn stalled_at(stamps: &[u64], now_ms: u64, limit: Duration) -> Option<(usize, Duration)> {
    let limit = limit.as_millis() as u64;
    stamps.iter().enumerate().find_map(|(i, &t)| {
        let age = now_ms.saturating_sub(t);
        (age > limit).then(|| (i, Duration::from_millis(age)))
    })
}

/// A deliberate fault for tests of the watchdog (`serve --test-fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub shard: usize,
    pub after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Block the executor thread (what a blocking call on it would do).
    Stall,
    /// Panic outside any guarded task (kills the executor thread).
    Panic,
}

impl std::str::FromStr for Fault {
    type Err = String;
    /// `stall:SHARD:AFTER_MS` or `panic:SHARD:AFTER_MS`.
    fn from_str(s: &str) -> Result<Fault, String> {
        let bad = || format!("bad fault {s:?}: expected stall|panic:SHARD:AFTER_MS");
        let mut it = s.split(':');
        let kind = match it.next() {
            Some("stall") => FaultKind::Stall,
            Some("panic") => FaultKind::Panic,
            _ => return Err(bad()),
        };
        let shard = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let ms: u64 = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(Fault {
            kind,
            shard,
            after: Duration::from_millis(ms),
        })
    }
}

/// Runs `fault` on the current shard's executor (if it names this shard).
pub fn inject(fault: Option<Fault>, shard: usize) {
    let Some(f) = fault.filter(|f| f.shard == shard) else {
        return;
    };
    glommio::spawn_local(async move {
        glommio::timer::sleep(f.after).await;
        match f.kind {
            FaultKind::Stall => {
                tracing::warn!(shard, "test fault: stalling this shard's executor");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            FaultKind::Panic => panic!("test fault: panic on shard {shard}"),
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_stalled_only_past_the_limit() {
        let limit = Duration::from_secs(5);
        assert_eq!(stalled_at(&[1000, 1000], 6000, limit), None);
        assert_eq!(
            stalled_at(&[1000, 900], 6000, limit),
            Some((1, Duration::from_millis(5100)))
        );
        // Stamps newer than "now" (read in another order) are not stalls.
        assert_eq!(stalled_at(&[7000], 6000, limit), None);
    }

    #[test]
    fn faults_parse_and_reject_garbage() {
        assert_eq!(
            "stall:1:500".parse::<Fault>(),
            Ok(Fault {
                kind: FaultKind::Stall,
                shard: 1,
                after: Duration::from_millis(500)
            })
        );
        assert!("panic:0:0".parse::<Fault>().is_ok());
        for bad in ["", "stall", "stall:x:1", "hang:0:1", "stall:0:1:2"] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }

    #[test]
    fn beats_reset_the_age() {
        let p = Progress::new(2);
        std::thread::sleep(Duration::from_millis(30));
        p.beat(0);
        let ages = p.ages();
        assert!(ages[0] < ages[1], "{ages:?}");
    }
}

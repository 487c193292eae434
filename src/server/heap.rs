//! Giving memory back after a load peak: when the heap is trimmed.
//!
//! glibc returns free pages to the kernel only from the top of an arena; a
//! shard's arena is long-lived and a load peak leaves its middle free but
//! resident (the 60-minute soak of 2026-12-01: 114 MB resident, 76 MB in
//! use, while idle). The shards drop owner state unused for a minute
//! (`Shard::evict_idle_convs`), and the main thread then calls
//! `malloc_trim(0)`, which returns the free pages of every arena.
//!
//! *When* it trims decides what an idle server settles at. It used to trim
//! only after 256 conversations were dropped in one second on one shard (or
//! every 5 minutes): the conversations a login storm touched are dropped a
//! minute later in a small batch, so whether an idle gap ended trimmed was a
//! matter of timing (the 60-minute soaks of 2026-12-01/02 settled anywhere
//! between 24 and 42 MiB). Now a shard asks for a trim once its evictions
//! *stop* (a second with none after some) or reach 256, and the main thread
//! honours a request at most every [`MIN_INTERVAL`], so the last eviction of
//! a quiet period is always followed by a trim within about
//! `MIN_INTERVAL + 1 s`, and a busy server trims at most that often (a trim
//! holds each arena's lock for a few milliseconds while it walks it).
//!
//! Both halves are plain state machines fed with numbers and instants, so
//! they are tested without a heap or a clock.

use std::time::{Duration, Instant};

/// Evictions that ask for a trim at once, even while evictions go on.
pub const TRIM_AFTER_EVICTED: usize = 256;
/// The main thread trims at most this often when asked.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// And at least this often, asked or not.
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// A shard's half: fed how many conversations each eviction pass dropped
/// (once a second), says when to ask the main thread for a trim.
#[derive(Debug, Default)]
pub struct EvictionTrim {
    /// Dropped since the last request.
    pending: usize,
}

impl EvictionTrim {
    /// One eviction pass dropped `evicted`; true = ask for a trim now.
    pub fn after_pass(&mut self, evicted: usize) -> bool {
        if evicted == 0 {
            // The evictions stopped: give back what they freed.
            return std::mem::take(&mut self.pending) > 0;
        }
        self.pending += evicted;
        if self.pending >= TRIM_AFTER_EVICTED {
            self.pending = 0;
            return true;
        }
        false
    }
}

/// The main thread's half: whether to trim now.
#[derive(Debug)]
pub struct TrimClock {
    last: Instant,
    /// A request not yet honoured (it waits out `MIN_INTERVAL`).
    asked: bool,
}

impl TrimClock {
    pub fn new(now: Instant) -> TrimClock {
        TrimClock {
            last: now,
            asked: false,
        }
    }

    /// Called every ~200 ms with whether a shard asked since the last call.
    /// True = trim now (and the clock restarts).
    pub fn due(&mut self, now: Instant, asked: bool) -> bool {
        self.asked |= asked;
        let since = now.saturating_duration_since(self.last);
        if (self.asked && since >= MIN_INTERVAL) || since >= MAX_INTERVAL {
            self.asked = false;
            self.last = now;
            return true;
        }
        false
    }
}

/// Returns free heap pages to the system, in every malloc arena. Runs on
/// the main thread, never on an executor.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    {
        let t = Instant::now();
        // SAFETY: malloc_trim only releases free memory back to the kernel.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released,
            took_us = t.elapsed().as_micros() as u64,
            "heap trimmed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_batch_is_trimmed_once_evictions_stop() {
        let mut e = EvictionTrim::default();
        // The storm's conversations: 40 dropped over two passes, then none.
        assert!(!e.after_pass(30));
        assert!(!e.after_pass(10));
        assert!(e.after_pass(0));
        // Nothing more to give back: no further requests.
        assert!(!e.after_pass(0));
        assert!(!e.after_pass(0));
    }

    #[test]
    fn a_large_batch_asks_at_once_and_the_rest_when_it_stops() {
        let mut e = EvictionTrim::default();
        assert!(!e.after_pass(200));
        assert!(e.after_pass(100));
        assert!(!e.after_pass(5));
        assert!(e.after_pass(0));
    }

    #[test]
    fn requests_wait_out_the_minimum_interval_but_are_not_lost() {
        let t0 = Instant::now();
        let mut c = TrimClock::new(t0);
        let at = |s: u64| t0 + Duration::from_millis(s * 100);
        // Asked 2 s after the last trim: held, then honoured at 10 s even
        // though nobody asks again.
        assert!(!c.due(at(20), true));
        assert!(!c.due(at(50), false));
        assert!(c.due(at(100), false));
        // Not asked: nothing until the maximum interval.
        assert!(!c.due(at(200), false));
        assert!(!c.due(at(3000), false));
        assert!(c.due(at(3100), false));
    }

    #[test]
    fn a_busy_server_trims_at_most_every_minimum_interval() {
        let t0 = Instant::now();
        let mut c = TrimClock::new(t0);
        let mut trims = 0;
        // Asked on every call (every 200 ms) for 60 s.
        for i in 1..=300u64 {
            if c.due(t0 + Duration::from_millis(i * 200), true) {
                trims += 1;
            }
        }
        assert_eq!(trims, 6);
    }
}

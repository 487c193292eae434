//! Failed-login throttling, per key (a username, a source address).
//!
//! Every login costs an argon2 hash (19 MiB, tens of milliseconds of CPU),
//! so a wrong-password flood is also a CPU flood. A key is free for its
//! first `free` failures; after that each further attempt must wait a
//! back-off that doubles per failure (capped), and attempts inside the
//! back-off are refused *before* hashing. A success clears the key. Keys
//! forget their failures after `forget` without any.
//!
//! Sans-IO: the caller passes the time in milliseconds; the table is
//! bounded (`max_keys`), dropping the oldest-touched keys first.

use ahash::AHashMap;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures allowed before any back-off.
    pub free: u32,
    /// Back-off after the first failure past `free`; doubles each time.
    pub base_ms: u64,
    pub max_ms: u64,
    /// A key without failures for this long starts over.
    pub forget_ms: u64,
    pub max_keys: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    failures: u32,
    last_ms: u64,
}

/// The verdict for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused; retry after this many milliseconds.
    Wait(u64),
}

#[derive(Debug)]
pub struct Throttle<K: std::hash::Hash + Eq + Clone> {
    policy: Policy,
    keys: AHashMap<K, Entry>,
}

impl<K: std::hash::Hash + Eq + Clone> Throttle<K> {
    pub fn new(policy: Policy) -> Self {
        Throttle {
            policy,
            keys: AHashMap::new(),
        }
    }

    fn backoff(&self, failures: u32) -> u64 {
        if failures < self.policy.free {
            return 0;
        }
        let doublings = (failures - self.policy.free).min(32);
        self.policy
            .base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.policy.max_ms)
    }

    /// May `key` try now?
    pub fn check(&self, key: &K, now_ms: u64) -> Verdict {
        let Some(e) = self.keys.get(key) else {
            return Verdict::Allow;
        };
        if now_ms.saturating_sub(e.last_ms) >= self.policy.forget_ms {
            return Verdict::Allow;
        }
        let until = e.last_ms + self.backoff(e.failures);
        if now_ms >= until {
            Verdict::Allow
        } else {
            Verdict::Wait(until - now_ms)
        }
    }

    pub fn failed(&mut self, key: &K, now_ms: u64) {
        let forget = self.policy.forget_ms;
        if !self.keys.contains_key(key) && self.keys.len() >= self.policy.max_keys {
            self.evict(now_ms);
        }
        let e = self.keys.entry(key.clone()).or_default();
        if now_ms.saturating_sub(e.last_ms) >= forget {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_ms = now_ms;
    }

    pub fn succeeded(&mut self, key: &K) {
        self.keys.remove(key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Drops forgotten keys; if still full, the least recently failed half.
    fn evict(&mut self, now_ms: u64) {
        let forget = self.policy.forget_ms;
        self.keys
            .retain(|_, e| now_ms.saturating_sub(e.last_ms) < forget);
        if self.keys.len() >= self.policy.max_keys {
            let mut ages: Vec<u64> = self.keys.values().map(|e| e.last_ms).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.keys.retain(|_, e| e.last_ms > cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            free: 3,
            base_ms: 1000,
            max_ms: 8000,
            forget_ms: 60_000,
            max_keys: 4,
        }
    }

    #[test]
    fn free_failures_then_doubling_backoff_with_a_cap() {
        let mut t = Throttle::new(policy());
        for i in 0..3 {
            assert_eq!(t.check(&"bob", i), Verdict::Allow);
            t.failed(&"bob", i);
        }
        // 3 failures: the 4th attempt waits 1 s after the last failure.
        assert_eq!(t.check(&"bob", 2), Verdict::Wait(1000));
        assert_eq!(t.check(&"bob", 1002), Verdict::Allow);
        t.failed(&"bob", 1002);
        assert_eq!(t.check(&"bob", 1002), Verdict::Wait(2000));
        for now in [3002, 7002, 15002, 23002] {
            assert_eq!(t.check(&"bob", now), Verdict::Allow);
            t.failed(&"bob", now);
        }
        // Capped at max_ms.
        assert_eq!(t.check(&"bob", 23002), Verdict::Wait(8000));
        // Other keys are unaffected.
        assert_eq!(t.check(&"alice", 23002), Verdict::Allow);
    }

    #[test]
    fn success_clears_and_silence_forgets() {
        let mut t = Throttle::new(policy());
        for i in 0..5 {
            t.failed(&"bob", i);
        }
        assert!(matches!(t.check(&"bob", 5), Verdict::Wait(_)));
        t.succeeded(&"bob");
        assert_eq!(t.check(&"bob", 5), Verdict::Allow);
        for i in 0..5 {
            t.failed(&"eve", i);
        }
        assert_eq!(t.check(&"eve", 4 + 60_000), Verdict::Allow);
        // After forgetting, failures count from zero again.
        t.failed(&"eve", 4 + 60_000);
        assert_eq!(t.check(&"eve", 4 + 60_000), Verdict::Allow);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = Throttle::new(policy());
        for k in 0..100u32 {
            t.failed(&k, u64::from(k));
            assert!(t.len() <= 4, "{}", t.len());
        }
        // The most recent key survived eviction.
        t.failed(&99, 100);
        t.failed(&99, 101);
        assert!(matches!(t.check(&99, 101), Verdict::Wait(_)));
    }
}

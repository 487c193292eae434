//! Limits that protect everyone else from one user: rates and quotas.
//!
//! Sans-IO: token buckets take the time in milliseconds from the caller;
//! [`RateTable`] keeps one bucket per key (a user), bounded, so the shell
//! keeps a table per shard (a user's requests all run on their home shard:
//! no lock, no cross-shard traffic). Buckets live past a user's sessions
//! (logging out and in again does not refill them) and are dropped once
//! full again, where they carry no information.

use ahash::AHashMap;

/// The configured limits, each `0` = unlimited. Defaults suit people, not
/// scripts: a person sends well under one message a second, creates a few
/// groups and asks a few friends an hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Chat messages per second per user (sustained), and the burst above it.
    pub send_per_s: f64,
    pub send_burst: u32,
    /// Friend requests per hour per user.
    pub friend_requests_per_hour: u32,
    /// Live sessions (connections) per user on a node.
    pub sessions_per_user: usize,
    /// Live groups a user owns.
    pub groups_per_user: usize,
    /// Members of a group.
    pub members_per_group: usize,
    /// Connections per source address (IPv4 address, IPv6 /64), node-wide.
    /// Off by default: behind nginx every client shares nginx's address.
    pub conns_per_addr: usize,
    /// Connections in total, node-wide (`0`: the open-file limit less a
    /// reserve, see `server::limits`).
    pub conns_total: usize,
    /// Typing notifications per second per user (sustained), and the burst
    /// above it. Never stored, but each one fans out to a conversation.
    pub typing_per_s: f64,
    pub typing_burst: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            send_per_s: 20.0,
            send_burst: 100,
            friend_requests_per_hour: 100,
            sessions_per_user: 16,
            groups_per_user: 100,
            members_per_group: 5000,
            conns_per_addr: 0,
            conns_total: 0,
            typing_per_s: 1.0,
            typing_burst: 5,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `per_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    pub fn full(burst: u32, now_ms: u64) -> Bucket {
        Bucket {
            tokens: burst as f64,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, per_s: f64, burst: u32, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * per_s).min(burst as f64);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Takes one token, or says in how many milliseconds one will be there.
    pub fn take(&mut self, per_s: f64, burst: u32, now_ms: u64) -> Result<(), u64> {
        self.refill(per_s, burst, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / per_s) * 1000.0).ceil() as u64)
        }
    }

    /// Full again (carries no information; may be forgotten).
    pub fn is_full(&self, per_s: f64, burst: u32, now_ms: u64) -> bool {
        let mut b = *self;
        b.refill(per_s, burst, now_ms);
        b.tokens >= burst as f64
    }
}

/// One bucket per key, bounded to `max_keys` (full buckets are forgotten
/// first; if every bucket is in use, the table stops tracking new keys
/// rather than growing: they are let through).
#[derive(Debug)]
pub struct RateTable<K: std::hash::Hash + Eq + Copy> {
    pub per_s: f64,
    pub burst: u32,
    max_keys: usize,
    buckets: AHashMap<K, Bucket>,
}

impl<K: std::hash::Hash + Eq + Copy> RateTable<K> {
    pub fn new(per_s: f64, burst: u32, max_keys: usize) -> Self {
        RateTable {
            per_s,
            burst,
            max_keys,
            buckets: AHashMap::new(),
        }
    }

    /// `per_s <= 0` or `burst == 0`: no limit.
    pub fn unlimited(&self) -> bool {
        self.per_s <= 0.0 || self.burst == 0
    }

    /// One event for `key` at `now_ms`: `Err(ms)` = refused, retry after.
    pub fn take(&mut self, key: K, now_ms: u64) -> Result<(), u64> {
        if self.unlimited() {
            return Ok(());
        }
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            self.prune(now_ms);
            if self.buckets.len() >= self.max_keys {
                return Ok(());
            }
        }
        let (per_s, burst) = (self.per_s, self.burst);
        self.buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now_ms))
            .take(per_s, burst, now_ms)
    }

    /// Forgets the buckets that are full again.
    pub fn prune(&mut self, now_ms: u64) {
        let (per_s, burst) = (self.per_s, self.burst);
        self.buckets.retain(|_, b| !b.is_full(per_s, burst, now_ms));
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Whether one more would go over `limit` (`0` = unlimited).
pub fn over(count: usize, limit: usize) -> bool {
    limit != 0 && count >= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = Bucket::full(3, 0);
        for _ in 0..3 {
            assert_eq!(b.take(2.0, 3, 0), Ok(()));
        }
        // Empty: one token every 500 ms at 2/s.
        assert_eq!(b.take(2.0, 3, 0), Err(500));
        assert_eq!(b.take(2.0, 3, 499), Err(2));
        assert_eq!(b.take(2.0, 3, 500), Ok(()));
        // A long pause refills to the burst, not beyond.
        assert!(b.is_full(2.0, 3, 10_000));
        for _ in 0..3 {
            assert_eq!(b.take(2.0, 3, 10_000), Ok(()));
        }
        assert!(b.take(2.0, 3, 10_000).is_err());
    }

    #[test]
    fn time_going_backwards_never_refills() {
        let mut b = Bucket::full(1, 1000);
        assert_eq!(b.take(1.0, 1, 1000), Ok(()));
        assert!(b.take(1.0, 1, 10).is_err());
        assert!(b.take(1.0, 1, 1500).is_err());
        assert_eq!(b.take(1.0, 1, 2000), Ok(()));
    }

    #[test]
    fn the_table_limits_each_key_alone_and_stays_bounded() {
        let mut t: RateTable<u64> = RateTable::new(1.0, 2, 3);
        assert!(t.take(1, 0).is_ok() && t.take(1, 0).is_ok());
        assert!(t.take(1, 0).is_err(), "key 1 spent its burst");
        assert!(t.take(2, 0).is_ok(), "key 2 has its own bucket");
        assert!(t.take(3, 0).is_ok());
        assert_eq!(t.len(), 3);
        // Full: a fourth key is let through untracked while all are in use...
        assert!(t.take(4, 0).is_ok());
        assert_eq!(t.len(), 3);
        // ...and tracked once the others have refilled (forgotten).
        assert!(t.take(4, 10_000).is_ok());
        assert_eq!(t.len(), 1);
        t.prune(20_000);
        assert!(t.is_empty());
    }

    #[test]
    fn zero_means_unlimited() {
        let mut t: RateTable<u64> = RateTable::new(0.0, 0, 10);
        for _ in 0..1000 {
            assert!(t.take(1, 0).is_ok());
        }
        assert!(t.is_empty());
        assert!(!over(1_000_000, 0));
        assert!(over(5, 5) && !over(4, 5));
    }
}

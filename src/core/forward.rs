//! Requests a shard forwarded to a conversation owner on another node,
//! kept until they are answered (sans I/O: no sockets, no clocks).
//!
//! Why: a forwarded request used to be fire-and-forget. When the owner node
//! died before answering, the request vanished: not stored, not failed, and
//! the sender waited for its own timeout (issue 10: ~5 s stalls across a
//! kill -9). Now the forwarding shard remembers each request until one of
//! three things happens:
//!
//! - **the reply arrives** ([`Forwards::answered`]): the entry goes; a
//!   second reply for the same request (the old owner was only presumed
//!   dead, and both answered) finds no entry and is dropped, so a client
//!   gets exactly one answer per request;
//! - **the owner leaves the view** ([`Forwards::owner_gone`]): the entry is
//!   handed back to the caller, who re-routes it to the new owner when the
//!   operation is safe to repeat (a send: the owner's `client_msg_id` dedup,
//!   rebuilt from the store, answers a repeat with the original seq) or
//!   answers `Internal` (retryable) at once otherwise;
//! - **its deadline passes** ([`Forwards::expired`]): the owner is alive but
//!   did not answer (a bus message lost while a subscription reconnected, a
//!   store call hung); the caller answers `Internal`.
//!
//! Deadlines are a FIFO: every entry gets the same timeout, so insertion
//! order is deadline order and expiry is a pop from the front. Entries
//! answered or re-routed leave a stale queue slot behind that is skipped by
//! its generation number; the queue is bounded by the number of requests
//! sent within one timeout.

use ahash::AHashMap;
use std::collections::VecDeque;
use std::sync::Arc;

/// A request: (connection id, request id), as unique as a client makes its
/// request ids on one connection.
pub type Key = (u64, u64);

struct Entry<T> {
    node: Arc<str>,
    stamp: u64,
    item: T,
}

/// The forwarded requests of one shard. `T` is what the caller needs to
/// re-route or answer the request (its origin and, when repeatable, the
/// operation).
pub struct Forwards<T> {
    map: AHashMap<Key, Entry<T>>,
    /// (deadline ms, key, stamp) in insertion order.
    deadlines: VecDeque<(u64, Key, u64)>,
    next_gen: u64,
    timeout_ms: u64,
}

impl<T> Forwards<T> {
    pub fn new(timeout_ms: u64) -> Forwards<T> {
        Forwards {
            map: AHashMap::new(),
            deadlines: VecDeque::new(),
            next_gen: 0,
            timeout_ms,
        }
    }

    /// Number of requests waiting for an answer.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `key` was sent to `node` at `now_ms`. A request with the same key
    /// still waiting is replaced (a client reusing a request id on one
    /// connection gets the answer to the later one only).
    pub fn sent(&mut self, key: Key, node: Arc<str>, item: T, now_ms: u64) {
        let stamp = self.next_gen;
        self.next_gen += 1;
        self.map.insert(key, Entry { node, stamp, item });
        self.deadlines
            .push_back((now_ms.saturating_add(self.timeout_ms), key, stamp));
    }

    /// The answer to `key` arrived. Returns whether it was waiting: `false`
    /// means it was answered already (or given up on) and this answer must
    /// be dropped.
    pub fn answered(&mut self, key: Key) -> bool {
        self.map.remove(&key).is_some()
    }

    /// Removes and returns every request waiting on a node for which
    /// `alive` is false, in the order they were sent.
    pub fn owner_gone(&mut self, alive: impl Fn(&str) -> bool) -> Vec<(Key, T)> {
        let mut gone: Vec<(u64, Key)> = self
            .map
            .iter()
            .filter(|(_, e)| !alive(&e.node))
            .map(|(k, e)| (e.stamp, *k))
            .collect();
        gone.sort_unstable();
        gone.into_iter()
            .filter_map(|(_, k)| self.map.remove(&k).map(|e| (k, e.item)))
            .collect()
    }

    /// Removes and returns the requests whose deadline is at or before
    /// `now_ms`, oldest first.
    pub fn expired(&mut self, now_ms: u64) -> Vec<(Key, T)> {
        let mut out = Vec::new();
        while let Some(&(deadline, key, stamp)) = self.deadlines.front() {
            let live = self.map.get(&key).is_some_and(|e| e.stamp == stamp);
            if live && deadline > now_ms {
                break;
            }
            self.deadlines.pop_front();
            if live && let Some(e) = self.map.remove(&key) {
                out.push((key, e.item));
            }
        }
        // Stale slots behind a live head are dropped once the queue holds
        // far more of them than live entries (bounded memory under a
        // steady stream of answered requests).
        if self.deadlines.len() > 64 && self.deadlines.len() > 4 * self.map.len() {
            let map = &self.map;
            self.deadlines
                .retain(|(_, k, g)| map.get(k).is_some_and(|e| e.stamp == *g));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn an_answer_removes_the_request_and_a_second_answer_is_dropped() {
        let mut f = Forwards::new(1000);
        f.sent((1, 7), node("b"), "send", 0);
        assert_eq!(f.len(), 1);
        assert!(f.answered((1, 7)));
        assert!(!f.answered((1, 7)), "a second answer must be dropped");
        assert!(f.is_empty());
        assert!(f.expired(10_000).is_empty(), "answered: nothing expires");
    }

    #[test]
    fn requests_on_a_dead_node_come_back_in_send_order_and_others_stay() {
        let mut f = Forwards::new(1000);
        f.sent((1, 1), node("b"), 'x', 0);
        f.sent((2, 1), node("c"), 'y', 1);
        f.sent((1, 2), node("b"), 'z', 2);
        let gone = f.owner_gone(|n| n != "b");
        assert_eq!(gone, vec![((1, 1), 'x'), ((1, 2), 'z')]);
        assert_eq!(f.len(), 1);
        assert!(f.answered((2, 1)));
        assert!(
            !f.answered((1, 1)),
            "re-routed: its old owner's late answer is dropped"
        );
    }

    #[test]
    fn a_rerouted_request_is_tracked_again_under_its_new_owner() {
        let mut f = Forwards::new(1000);
        f.sent((1, 1), node("b"), 'x', 0);
        let gone = f.owner_gone(|n| n != "b");
        for (k, item) in gone {
            f.sent(k, node("c"), item, 500);
        }
        // The first deadline (1000) belonged to the old send: not expired.
        assert!(f.expired(1200).is_empty());
        assert_eq!(f.expired(1500), vec![((1, 1), 'x')]);
    }

    #[test]
    fn deadlines_expire_oldest_first_and_skip_answered_ones() {
        let mut f = Forwards::new(100);
        for i in 0..5u64 {
            f.sent((1, i), node("b"), i, i * 10);
        }
        assert!(f.answered((1, 1)));
        assert!(f.expired(99).is_empty());
        assert_eq!(f.expired(125), vec![((1, 0), 0), ((1, 2), 2)]);
        assert_eq!(f.expired(1000), vec![((1, 3), 3), ((1, 4), 4)]);
        assert!(f.is_empty());
    }

    #[test]
    fn a_reused_key_is_answered_once_and_its_old_deadline_does_not_expire_it() {
        let mut f = Forwards::new(100);
        f.sent((1, 1), node("b"), 'a', 0);
        f.sent((1, 1), node("b"), 'b', 50);
        assert_eq!(f.len(), 1);
        assert!(f.expired(120).is_empty(), "the old slot is stale");
        assert_eq!(f.expired(150), vec![((1, 1), 'b')]);
    }

    #[test]
    fn stale_slots_do_not_pile_up_under_steady_answered_traffic() {
        let mut f = Forwards::new(10_000);
        for i in 0..100_000u64 {
            f.sent((1, i), node("b"), (), i);
            assert!(f.answered((1, i)));
            if i % 100 == 0 {
                f.expired(i);
            }
        }
        f.expired(100_000);
        assert!(f.deadlines.len() <= 64, "{} stale slots", f.deadlines.len());
    }
}

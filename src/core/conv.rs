//! Sequencing one conversation: seq assignment and resend dedup.
//!
//! The owner shard keeps one [`Sequencer`] per active conversation. Seqs are
//! dense (1, 2, 3, ...) because they are assigned in one place, one at a
//! time, and a failed batch write makes the owner reload the sequencer from
//! the store (so a seq that never became durable is reused, not skipped).

use crate::model::ConvTail;
use crate::model::{Seq, UserId};
use ahash::AHashMap;
use std::collections::VecDeque;

/// How many recent `(sender, client_msg_id)` pairs per conversation are
/// remembered for resend dedup. A client only resends what it has not seen
/// acknowledged, which is bounded by its in-flight window, far below this.
pub const DEDUP_WINDOW: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assign {
    /// A new message: store it with this seq and timestamp.
    New { seq: Seq, ts: u64 },
    /// A resend of a known message: answer with the original seq/timestamp.
    /// If `durable` is false the original is still being written and the
    /// answer must wait for it.
    Duplicate { seq: Seq, ts: u64, durable: bool },
}

#[derive(Debug)]
pub struct Sequencer {
    last_seq: Seq,
    last_ts: u64,
    window: usize,
    seen: AHashMap<(UserId, u64), (Seq, u64, bool)>,
    order: VecDeque<(UserId, u64)>,
}

impl Sequencer {
    pub fn new(window: usize) -> Sequencer {
        Sequencer {
            last_seq: 0,
            last_ts: 0,
            window,
            seen: AHashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Rebuilds the state from what the store has (after a restart or a failed write).
    pub fn from_tail(tail: &ConvTail, window: usize) -> Sequencer {
        let mut s = Sequencer::new(window);
        s.last_seq = tail.last_seq;
        // `recent` is newest first; insert oldest first so eviction order holds.
        for &(sender, cmid, seq, ts) in tail.recent.iter().take(window).rev() {
            s.remember(sender, cmid, seq, ts, true);
            s.last_ts = s.last_ts.max(ts);
        }
        s
    }

    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    fn remember(&mut self, sender: UserId, cmid: u64, seq: Seq, ts: u64, durable: bool) {
        if self
            .seen
            .insert((sender, cmid), (seq, ts, durable))
            .is_none()
        {
            self.order.push_back((sender, cmid));
            while self.order.len() > self.window {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }

    /// Assigns the next seq, or recognises a resend. Timestamps never go
    /// backwards within a conversation even if the wall clock does.
    pub fn assign(&mut self, sender: UserId, client_msg_id: u64, now_ms: u64) -> Assign {
        if let Some(&(seq, ts, durable)) = self.seen.get(&(sender, client_msg_id)) {
            return Assign::Duplicate { seq, ts, durable };
        }
        self.last_seq += 1;
        self.last_ts = self.last_ts.max(now_ms);
        let (seq, ts) = (self.last_seq, self.last_ts);
        self.remember(sender, client_msg_id, seq, ts, false);
        Assign::New { seq, ts }
    }

    /// The store confirmed message `seq`: later resends are answered at once.
    ///
    /// Matches on the seq too: if the original fell out of the dedup window
    /// while in flight and a resend got a new seq, the original's commit
    /// must not mark the resend durable (found by `tests/prop_core.rs`).
    pub fn mark_durable(&mut self, sender: UserId, client_msg_id: u64, seq: Seq) {
        if let Some(e) = self.seen.get_mut(&(sender, client_msg_id))
            && e.0 == seq
        {
            e.2 = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_dense_and_resends_dedup() {
        let mut s = Sequencer::new(4);
        assert_eq!(s.assign(1, 10, 100), Assign::New { seq: 1, ts: 100 });
        assert_eq!(s.assign(2, 10, 90), Assign::New { seq: 2, ts: 100 });
        assert_eq!(
            s.assign(1, 10, 500),
            Assign::Duplicate {
                seq: 1,
                ts: 100,
                durable: false
            }
        );
        s.mark_durable(1, 10, 1);
        assert_eq!(
            s.assign(1, 10, 500),
            Assign::Duplicate {
                seq: 1,
                ts: 100,
                durable: true
            }
        );
        assert_eq!(s.assign(1, 11, 200), Assign::New { seq: 3, ts: 200 });
    }

    #[test]
    fn window_evicts_oldest() {
        let mut s = Sequencer::new(2);
        s.assign(1, 1, 0);
        s.assign(1, 2, 0);
        s.assign(1, 3, 0);
        assert_eq!(s.assign(1, 1, 0), Assign::New { seq: 4, ts: 0 });
        assert!(matches!(
            s.assign(1, 3, 0),
            Assign::Duplicate { seq: 3, .. }
        ));
    }

    #[test]
    fn rebuilds_from_store_tail() {
        let tail = ConvTail {
            last_seq: 7,
            recent: vec![(1, 70, 7, 700), (2, 60, 6, 600)],
        };
        let mut s = Sequencer::from_tail(&tail, 16);
        assert_eq!(
            s.assign(2, 60, 0),
            Assign::Duplicate {
                seq: 6,
                ts: 600,
                durable: true
            }
        );
        assert_eq!(s.assign(3, 1, 10), Assign::New { seq: 8, ts: 700 });
    }
}

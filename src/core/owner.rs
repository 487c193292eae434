//! A conversation's owner state, sans IO.
//!
//! The owner shard (`server::owner`) keeps one [`ConvCore`] per loaded
//! conversation and runs its operations one at a time, in arrival order. The
//! decisions live here, apart from queues, tasks and the store: who may send
//! and who receives (friendship / membership as of this point in the
//! conversation's order), which seq a message gets, which resend is a
//! duplicate and whether its original is durable yet, who is answered when a
//! batch becomes durable, and what a failed batch leaves behind (nothing:
//! the state is dropped and reloaded from the store, so a seq that never
//! became durable is handed out again, never skipped).
//!
//! `O` is whatever identifies a waiting request to the shell (its origin).

use super::conv::{Assign, Sequencer};
use super::group::GroupState;
use super::{Decision, ErrorCode, Reject, pair};
use crate::model::{ConvTail, PairRecord, Seq, UserId};

/// What a conversation is, as its owner knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvData {
    Direct {
        lo: UserId,
        hi: UserId,
        pair: PairRecord,
        /// Usernames of (lo, hi); `None` if that user does not exist.
        names: (Option<String>, Option<String>),
    },
    /// `None`: no such group (or dissolved).
    Group(Option<GroupState>),
}

/// The owner's decision on a chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendDecision {
    /// A new message: store it with this seq and timestamp, then deliver it
    /// to `recipients` (everyone in the conversation at this point of its
    /// order, the sender included: their other devices).
    New {
        seq: Seq,
        ts: u64,
        recipients: Vec<UserId>,
    },
    /// A resend of a durable message: answer with the original.
    Duplicate { seq: Seq, ts: u64 },
    /// A resend of a message still being written: answered when it is
    /// durable ([`ConvCore::durable`]) or failed ([`ConvCore::failed`]).
    Wait,
}

#[derive(Debug)]
pub struct ConvCore<O> {
    pub seq: Sequencer,
    pub data: ConvData,
    /// Messages sequenced but not yet durable: the state must not be
    /// dropped meanwhile (a reload would hand their seqs out again).
    pub inflight: u32,
    /// Resends that arrived while their original was being written.
    pub dup_waiters: Vec<(UserId, u64, O)>,
}

impl<O> ConvCore<O> {
    /// The state as the store has it (after a restart, an eviction or a
    /// failed batch).
    pub fn from_store(tail: &ConvTail, data: ConvData, window: usize) -> ConvCore<O> {
        ConvCore {
            seq: Sequencer::from_tail(tail, window),
            data,
            inflight: 0,
            dup_waiters: Vec::new(),
        }
    }

    /// Nothing in flight or waiting: safe to drop (reloaded on next use).
    pub fn idle(&self) -> bool {
        self.inflight == 0 && self.dup_waiters.is_empty()
    }

    /// Who receives a message from `sender` now, or why `sender` may not send.
    pub fn recipients(&self, sender: UserId) -> Decision<Vec<UserId>> {
        match &self.data {
            ConvData::Direct {
                lo, hi, pair: p, ..
            } => {
                pair::may_message(p)?;
                Ok(vec![*lo, *hi])
            }
            ConvData::Group(None) => Err(Reject(ErrorCode::NoSuchGroup, "no such group")),
            ConvData::Group(Some(g)) => {
                g.require_member(sender)?;
                Ok(g.members.keys().copied().collect())
            }
        }
    }

    /// Decides on a chat message `(sender, client_msg_id)` arriving at `now`.
    /// `origin` is called (and kept) only if it has to wait for its original.
    pub fn send(
        &mut self,
        sender: UserId,
        cmid: u64,
        now: u64,
        origin: impl FnOnce() -> O,
    ) -> Decision<SendDecision> {
        let recipients = self.recipients(sender)?;
        Ok(match self.seq.assign(sender, cmid, now) {
            Assign::New { seq, ts } => {
                self.inflight += 1;
                SendDecision::New {
                    seq,
                    ts,
                    recipients,
                }
            }
            Assign::Duplicate {
                seq,
                ts,
                durable: true,
            } => SendDecision::Duplicate { seq, ts },
            Assign::Duplicate { durable: false, .. } => {
                self.dup_waiters.push((sender, cmid, origin()));
                SendDecision::Wait
            }
        })
    }

    /// A system message (an operator's broadcast, sender
    /// [`SYSTEM_USER`](crate::model::SYSTEM_USER)) to a group: sequenced like
    /// any message, delivered to every member at this point of the order.
    /// Only groups take one; `cmid` should be unique (a repeat is answered
    /// as a duplicate like any resend).
    pub fn system_send(&mut self, cmid: u64, now: u64) -> Decision<SendDecision> {
        let recipients = match &self.data {
            ConvData::Group(Some(g)) => g.members.keys().copied().collect(),
            ConvData::Group(None) => return Err(Reject(ErrorCode::NoSuchGroup, "no such group")),
            ConvData::Direct { .. } => {
                return Err(Reject(
                    ErrorCode::BadRequest,
                    "system messages go to groups only",
                ));
            }
        };
        let sender = crate::model::SYSTEM_USER;
        Ok(match self.seq.assign(sender, cmid, now) {
            Assign::New { seq, ts } => {
                self.inflight += 1;
                SendDecision::New {
                    seq,
                    ts,
                    recipients,
                }
            }
            Assign::Duplicate { seq, ts, .. } => SendDecision::Duplicate { seq, ts },
        })
    }

    /// Message `(sender, cmid)` with `seq` is durable: returns the resends
    /// that waited for it (each answered as a duplicate of it).
    pub fn durable(&mut self, sender: UserId, cmid: u64, seq: Seq) -> Vec<O> {
        self.seq.mark_durable(sender, cmid, seq);
        self.inflight = self.inflight.saturating_sub(1);
        let mut woken = Vec::new();
        let mut i = 0;
        while i < self.dup_waiters.len() {
            if self.dup_waiters[i].0 == sender && self.dup_waiters[i].1 == cmid {
                woken.push(self.dup_waiters.swap_remove(i).2);
            } else {
                i += 1;
            }
        }
        woken
    }

    /// A batch with messages of this conversation failed: the state is
    /// dropped (the owner reloads it from the store, where the failed seqs
    /// are not, so they are assigned again); returns the waiting resends,
    /// to be told to retry.
    pub fn failed(self) -> Vec<O> {
        self.dup_waiters.into_iter().map(|(_, _, o)| o).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::group::{GroupAction, GroupChange};
    use crate::model::{PairState, Role};

    const W: usize = 256;

    fn friends(lo: UserId, hi: UserId) -> ConvData {
        ConvData::Direct {
            lo,
            hi,
            pair: PairRecord {
                state: PairState {
                    friends: true,
                    ..PairState::default()
                },
                note: String::new(),
            },
            names: (Some("lo".into()), Some("hi".into())),
        }
    }

    fn group(owner: UserId, members: &[UserId]) -> ConvData {
        let mut m = std::collections::BTreeMap::new();
        m.insert(owner, Role::Owner);
        for &u in members {
            m.insert(u, Role::Member);
        }
        ConvData::Group(Some(GroupState {
            id: 7,
            name: "g".into(),
            owner,
            members: m.into_iter().collect(),
            ..Default::default()
        }))
    }

    fn new_seq(d: Decision<SendDecision>) -> Seq {
        match d {
            Ok(SendDecision::New { seq, .. }) => seq,
            other => panic!("expected a new message, got {other:?}"),
        }
    }

    #[test]
    fn system_messages_take_the_next_seq_of_a_group_and_reach_every_member() {
        let mut c: ConvCore<&str> = ConvCore::from_store(
            &ConvTail {
                last_seq: 4,
                ..ConvTail::default()
            },
            group(1, &[2, 3]),
            W,
        );
        assert_eq!(new_seq(c.send(2, 10, 100, || "a")), 5);
        match c.system_send(77, 101) {
            Ok(SendDecision::New {
                seq,
                mut recipients,
                ..
            }) => {
                assert_eq!(seq, 6);
                recipients.sort_unstable();
                assert_eq!(recipients, vec![1, 2, 3]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(new_seq(c.send(3, 10, 102, || "b")), 7);
        assert_eq!(c.inflight, 3);
        // A direct conversation or a missing group takes none.
        let mut d: ConvCore<&str> = ConvCore::from_store(&ConvTail::default(), friends(1, 2), W);
        assert_eq!(d.system_send(1, 1).unwrap_err().0, ErrorCode::BadRequest);
        let mut g: ConvCore<&str> =
            ConvCore::from_store(&ConvTail::default(), ConvData::Group(None), W);
        assert_eq!(g.system_send(1, 1).unwrap_err().0, ErrorCode::NoSuchGroup);
    }

    #[test]
    fn strangers_are_refused_friends_get_dense_seqs() {
        let mut c: ConvCore<&str> = ConvCore::from_store(
            &ConvTail::default(),
            ConvData::Direct {
                lo: 1,
                hi: 2,
                pair: PairRecord::default(),
                names: (None, None),
            },
            W,
        );
        assert!(matches!(
            c.send(1, 10, 5, || "a"),
            Err(Reject(ErrorCode::NotFriends, _))
        ));
        assert!(c.idle(), "a refusal leaves nothing in flight");
        let mut c: ConvCore<&str> = ConvCore::from_store(&ConvTail::default(), friends(1, 2), W);
        assert_eq!(new_seq(c.send(1, 10, 5, || "a")), 1);
        assert_eq!(new_seq(c.send(2, 10, 6, || "b")), 2);
        assert_eq!(new_seq(c.send(1, 11, 7, || "a")), 3);
        assert_eq!(c.inflight, 3);
    }

    #[test]
    fn a_resend_waits_for_its_original_then_is_a_duplicate() {
        let mut c: ConvCore<&str> = ConvCore::from_store(&ConvTail::default(), friends(1, 2), W);
        let (seq, ts) = match c.send(1, 42, 100, || "first").unwrap() {
            SendDecision::New {
                seq,
                ts,
                recipients,
            } => {
                assert_eq!(
                    recipients,
                    vec![1, 2],
                    "both users, the sender's other devices too"
                );
                (seq, ts)
            }
            d => panic!("{d:?}"),
        };
        assert_eq!(c.send(1, 42, 200, || "resend").unwrap(), SendDecision::Wait);
        assert!(!c.idle());
        // Another sender's same client id is another message.
        assert_eq!(new_seq(c.send(2, 42, 201, || "other")), 2);
        assert_eq!(c.durable(1, 42, seq), vec!["resend"]);
        assert_eq!(
            c.send(1, 42, 300, || "late resend").unwrap(),
            SendDecision::Duplicate { seq, ts }
        );
        assert_eq!(c.durable(2, 42, 2), Vec::<&str>::new());
        assert!(c.idle());
    }

    #[test]
    fn dedup_survives_a_reload_from_the_store() {
        let mut c: ConvCore<&str> = ConvCore::from_store(&ConvTail::default(), friends(1, 2), W);
        let mut stored = Vec::new();
        for cmid in 1..=5 {
            if let SendDecision::New { seq, ts, .. } = c.send(1, cmid, 1000 + cmid, || "o").unwrap()
            {
                c.durable(1, cmid, seq);
                stored.push((1, cmid, seq, ts));
            }
        }
        // Evicted and reloaded: the store's tail is newest first.
        stored.reverse();
        let tail = ConvTail {
            last_seq: 5,
            recent: stored,
        };
        let mut c: ConvCore<&str> = ConvCore::from_store(&tail, friends(1, 2), W);
        assert_eq!(
            c.send(1, 3, 9999, || "resend after reload").unwrap(),
            SendDecision::Duplicate { seq: 3, ts: 1003 }
        );
        assert_eq!(new_seq(c.send(1, 6, 9999, || "new")), 6, "no gap, no reuse");
    }

    #[test]
    fn a_failed_batch_hands_its_seqs_out_again() {
        let tail = ConvTail {
            last_seq: 4,
            recent: vec![],
        };
        let mut c: ConvCore<&str> = ConvCore::from_store(&tail, friends(1, 2), W);
        assert_eq!(new_seq(c.send(1, 50, 1, || "m5")), 5);
        assert_eq!(new_seq(c.send(2, 51, 2, || "m6")), 6);
        assert_eq!(
            c.send(1, 50, 3, || "resend of m5").unwrap(),
            SendDecision::Wait
        );
        // The batch holding 5 and 6 failed: the waiting resend is told to
        // retry, and the reloaded state (the store still ends at 4) gives
        // the retried messages 5 and 6 again: no seq is skipped.
        assert_eq!(c.failed(), vec!["resend of m5"]);
        let mut c: ConvCore<&str> = ConvCore::from_store(&tail, friends(1, 2), W);
        assert_eq!(new_seq(c.send(1, 50, 4, || "retry m5")), 5);
        assert_eq!(new_seq(c.send(2, 51, 5, || "retry m6")), 6);
    }

    #[test]
    fn membership_changes_are_ordered_with_the_messages_around_them() {
        let mut c: ConvCore<&str> =
            ConvCore::from_store(&ConvTail::default(), group(1, &[2, 3]), W);
        let recipients = |d: Decision<SendDecision>| match d {
            Ok(SendDecision::New { recipients, .. }) => {
                let mut r = recipients;
                r.sort_unstable();
                r
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(recipients(c.send(3, 1, 1, || "before")), vec![1, 2, 3]);
        // The owner removes 3: from here on in this conversation's order, 3
        // neither sends nor receives; 4 joins and receives what follows.
        let ConvData::Group(Some(g)) = &mut c.data else {
            unreachable!()
        };
        let removed = g.decide(1, GroupAction::Remove(3)).unwrap();
        assert_eq!(removed, GroupChange::Removed(3));
        assert!(g.apply(removed));
        let joined = g.decide(4, GroupAction::Join).unwrap();
        assert!(g.apply(joined));
        assert!(matches!(
            c.send(3, 2, 2, || "after removal"),
            Err(Reject(ErrorCode::NotMember, _))
        ));
        assert_eq!(recipients(c.send(2, 1, 3, || "after")), vec![1, 2, 4]);
        // Dissolved: nobody sends.
        let ConvData::Group(g) = &mut c.data else {
            unreachable!()
        };
        let d = g
            .as_ref()
            .unwrap()
            .decide(1, GroupAction::Dissolve)
            .unwrap();
        if !g.as_mut().unwrap().apply(d) {
            *g = None;
        }
        assert!(matches!(
            c.send(1, 9, 4, || "after dissolve"),
            Err(Reject(ErrorCode::NoSuchGroup, _))
        ));
        assert_eq!(c.seq.last_seq(), 2, "refused messages take no seq");
    }
}

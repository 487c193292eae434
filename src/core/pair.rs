//! Friendship between two users as a state machine.
//!
//! The pair `(lo, hi)` is owned by the shard of `direct_conv(lo, hi)`, which
//! applies these transitions one at a time, so concurrent requests from both
//! sides (a mutual request, accept racing remove) resolve deterministically.

use super::{Decision, ErrorCode, Reject};
use crate::model::UserId;
use crate::model::{PairRecord, PairState};

/// What `actor` asks to do to `other`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PairAction {
    Request {
        note: String,
    },
    Respond {
        accept: bool,
    },
    Remove,
    Block,
    Unblock,
    /// Instant friendship (the legacy protocol's "add friend", which has no
    /// accept step): friends at once unless a block stands; already friends
    /// is a silent success so an old client's repeat is harmless. Pending
    /// requests either way are consumed.
    Befriend {
        note: String,
    },
}

/// Who must hear about a transition, besides the actor's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairEffect {
    /// `other` gets `FriendEvent{Requested}` from actor.
    Requested,
    /// Both become friends: `other` gets `Accepted` (and for a mutual
    /// request the actor gets `Accepted` too).
    BecameFriends { mutual: bool },
    /// `other` gets `Rejected`.
    Rejected,
    /// Friendship ended: `other` gets `Removed`.
    Unfriended,
    /// Nothing to tell anyone (idempotent repeat, unblock, reject-by-block).
    Silent,
}

/// Bits seen from one side: (i_requested, they_requested, i_block, they_block).
fn view(s: &PairState, actor_is_lo: bool) -> (bool, bool, bool, bool) {
    if actor_is_lo {
        (
            s.request_lo_to_hi,
            s.request_hi_to_lo,
            s.lo_blocks_hi,
            s.hi_blocks_lo,
        )
    } else {
        (
            s.request_hi_to_lo,
            s.request_lo_to_hi,
            s.hi_blocks_lo,
            s.lo_blocks_hi,
        )
    }
}

fn set_view(s: &mut PairState, actor_is_lo: bool, i_req: bool, they_req: bool, i_block: bool) {
    if actor_is_lo {
        s.request_lo_to_hi = i_req;
        s.request_hi_to_lo = they_req;
        s.lo_blocks_hi = i_block;
    } else {
        s.request_hi_to_lo = i_req;
        s.request_lo_to_hi = they_req;
        s.hi_blocks_lo = i_block;
    }
}

/// Applies `action` by `actor` on the pair record (of `actor` and `other`).
/// Returns the new record (to store) and the effect to announce.
pub fn apply(
    rec: &PairRecord,
    actor: UserId,
    other: UserId,
    action: &PairAction,
) -> Decision<(PairRecord, PairEffect)> {
    if actor == other {
        return Err(Reject(ErrorCode::SelfTarget, "that is you"));
    }
    let lo_actor = actor < other;
    let mut next = rec.clone();
    let s = &mut next.state;
    let (i_req, they_req, i_block, they_block) = view(s, lo_actor);
    let effect = match action {
        PairAction::Request { note } => {
            if i_block || they_block {
                return Err(Reject(ErrorCode::Blocked, "you cannot befriend this user"));
            }
            if s.friends {
                return Err(Reject(ErrorCode::AlreadyFriends, "already friends"));
            }
            if they_req {
                s.friends = true;
                set_view(s, lo_actor, false, false, false);
                next.note.clear();
                PairEffect::BecameFriends { mutual: true }
            } else if i_req {
                PairEffect::Silent
            } else {
                set_view(s, lo_actor, true, false, false);
                next.note = note.clone();
                PairEffect::Requested
            }
        }
        PairAction::Respond { accept } => {
            if !they_req {
                return Err(Reject(
                    ErrorCode::NoSuchRequest,
                    "no friend request from this user",
                ));
            }
            set_view(s, lo_actor, i_req, false, i_block);
            next.note.clear();
            if *accept {
                s.friends = true;
                set_view(s, lo_actor, false, false, i_block);
                PairEffect::BecameFriends { mutual: false }
            } else {
                PairEffect::Rejected
            }
        }
        PairAction::Remove => {
            if !s.friends {
                return Err(Reject(ErrorCode::NotFriends, "not friends"));
            }
            s.friends = false;
            PairEffect::Unfriended
        }
        PairAction::Block => {
            let was_friends = s.friends;
            s.friends = false;
            set_view(s, lo_actor, false, false, true);
            next.note.clear();
            if was_friends {
                PairEffect::Unfriended
            } else {
                PairEffect::Silent
            }
        }
        PairAction::Unblock => {
            set_view(s, lo_actor, i_req, they_req, false);
            PairEffect::Silent
        }
        PairAction::Befriend { .. } => {
            if i_block || they_block {
                return Err(Reject(ErrorCode::Blocked, "you cannot befriend this user"));
            }
            if s.friends {
                PairEffect::Silent
            } else {
                s.friends = true;
                set_view(s, lo_actor, false, false, false);
                next.note.clear();
                PairEffect::BecameFriends { mutual: false }
            }
        }
    };
    Ok((next, effect))
}

/// May `sender` message the other user of this pair?
pub fn may_message(rec: &PairRecord) -> Decision<()> {
    let s = &rec.state;
    if s.lo_blocks_hi || s.hi_blocks_lo {
        return Err(Reject(
            ErrorCode::Blocked,
            "messages between you are blocked",
        ));
    }
    if !s.friends {
        return Err(Reject(
            ErrorCode::NotFriends,
            "you can only message friends",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> PairAction {
        PairAction::Request { note: "hi".into() }
    }

    #[test]
    fn request_accept_makes_friends() {
        let r0 = PairRecord::default();
        let (r1, e) = apply(&r0, 1, 2, &req()).unwrap();
        assert_eq!(e, PairEffect::Requested);
        assert!(r1.state.request_lo_to_hi && r1.note == "hi");
        assert_eq!(apply(&r1, 1, 2, &req()).unwrap().1, PairEffect::Silent);
        assert_eq!(
            apply(&r1, 1, 2, &PairAction::Respond { accept: true })
                .unwrap_err()
                .0,
            ErrorCode::NoSuchRequest
        );
        let (r2, e) = apply(&r1, 2, 1, &PairAction::Respond { accept: true }).unwrap();
        assert_eq!(e, PairEffect::BecameFriends { mutual: false });
        assert!(r2.state.friends && !r2.state.request_lo_to_hi && r2.note.is_empty());
        assert!(may_message(&r2).is_ok());
        assert_eq!(
            apply(&r2, 2, 1, &req()).unwrap_err().0,
            ErrorCode::AlreadyFriends
        );
    }

    #[test]
    fn mutual_request_and_reject() {
        let (r1, _) = apply(&PairRecord::default(), 5, 3, &req()).unwrap();
        assert!(r1.state.request_hi_to_lo);
        let (r2, e) = apply(&r1, 3, 5, &req()).unwrap();
        assert_eq!(e, PairEffect::BecameFriends { mutual: true });
        assert!(r2.state.friends);
        let (r3, e) = apply(&r1, 3, 5, &PairAction::Respond { accept: false }).unwrap();
        assert_eq!(e, PairEffect::Rejected);
        assert_eq!(r3.state, PairState::default());
    }

    #[test]
    fn block_ends_friendship_and_stops_everything() {
        let (r1, _) = apply(&PairRecord::default(), 1, 2, &req()).unwrap();
        let (r2, _) = apply(&r1, 2, 1, &PairAction::Respond { accept: true }).unwrap();
        let (r3, e) = apply(&r2, 2, 1, &PairAction::Block).unwrap();
        assert_eq!(e, PairEffect::Unfriended);
        assert_eq!(may_message(&r3).unwrap_err().0, ErrorCode::Blocked);
        assert_eq!(apply(&r3, 1, 2, &req()).unwrap_err().0, ErrorCode::Blocked);
        assert_eq!(apply(&r3, 2, 1, &req()).unwrap_err().0, ErrorCode::Blocked);
        let (r4, _) = apply(&r3, 2, 1, &PairAction::Unblock).unwrap();
        assert_eq!(r4.state, PairState::default());
        assert_eq!(apply(&r4, 1, 2, &req()).unwrap().1, PairEffect::Requested);
    }

    #[test]
    fn befriend_is_instant_unless_blocked() {
        let bf = || PairAction::Befriend { note: "yo".into() };
        let (r1, e) = apply(&PairRecord::default(), 2, 1, &bf()).unwrap();
        assert_eq!(e, PairEffect::BecameFriends { mutual: false });
        assert!(r1.state.friends && may_message(&r1).is_ok());
        // Repeat (either side) is a silent success.
        assert_eq!(
            apply(&r1, 1, 2, &bf()).unwrap(),
            (r1.clone(), PairEffect::Silent)
        );
        // A pending native request either way is consumed.
        let (p, _) = apply(&PairRecord::default(), 1, 2, &req()).unwrap();
        let (r2, e) = apply(&p, 2, 1, &bf()).unwrap();
        assert_eq!(e, PairEffect::BecameFriends { mutual: false });
        assert!(r2.state.friends && !r2.state.request_lo_to_hi && r2.note.is_empty());
        // Blocks win, from either side.
        let (b, _) = apply(&PairRecord::default(), 1, 2, &PairAction::Block).unwrap();
        assert_eq!(apply(&b, 2, 1, &bf()).unwrap_err().0, ErrorCode::Blocked);
        assert_eq!(apply(&b, 1, 2, &bf()).unwrap_err().0, ErrorCode::Blocked);
        assert_eq!(apply(&b, 1, 1, &bf()).unwrap_err().0, ErrorCode::SelfTarget);
    }

    #[test]
    fn remove_and_self_target() {
        assert_eq!(
            apply(&PairRecord::default(), 1, 2, &PairAction::Remove)
                .unwrap_err()
                .0,
            ErrorCode::NotFriends
        );
        assert_eq!(
            apply(&PairRecord::default(), 4, 4, &req()).unwrap_err().0,
            ErrorCode::SelfTarget
        );
        assert_eq!(
            may_message(&PairRecord::default()).unwrap_err().0,
            ErrorCode::NotFriends
        );
    }
}

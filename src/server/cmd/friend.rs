//! Friendship: requests, answers, removal, blocks, the list.
//!
//! Every transition is decided by the owner of the pair's direct
//! conversation (`core::pair`), one at a time; this only validates the
//! target and routes.

use super::{STORAGE, to_owner};
use crate::core::pair::PairAction;
use crate::core::{ErrorCode, Reject};
use crate::model::{MAX_USER_ID, UserId, direct_conv, now_ms};
use crate::server::limits::Kind;
use crate::server::session::Session;
use crate::server::shard::{OwnerOp, Shard};
use std::rc::Rc;

/// Longest note kept with a friend request, in characters.
pub const MAX_NOTE_CHARS: usize = 256;

/// Routes `action` on the pair (me, other) to its owner.
pub fn pair(shard: &Shard, sess: &Session, req_id: u64, other: UserId, action: PairAction) {
    if other == 0 || other > MAX_USER_ID {
        return sess.error(req_id, Reject(ErrorCode::NoSuchUser, "no such user"));
    }
    if other == sess.user() {
        return sess.error(req_id, Reject(ErrorCode::SelfTarget, "that is you"));
    }
    to_owner(
        shard,
        sess,
        req_id,
        direct_conv(sess.user(), other),
        OwnerOp::Pair { other, action },
    );
}

pub fn request(shard: &Shard, sess: &Session, req_id: u64, other: UserId, note: &str) {
    if let Err(ms) = shard
        .rates
        .borrow_mut()
        .friend_requests
        .take(sess.user(), now_ms())
    {
        shard.limits.refused(Kind::FriendRequest);
        let text = format!("too many friend requests; retry in {} s", ms.div_ceil(1000));
        return sess.reply.error(req_id, ErrorCode::RateLimited, &text);
    }
    let note = note.chars().take(MAX_NOTE_CHARS).collect();
    pair(shard, sess, req_id, other, PairAction::Request { note })
}

pub fn respond(shard: &Shard, sess: &Session, req_id: u64, other: UserId, accept: bool) {
    pair(shard, sess, req_id, other, PairAction::Respond { accept })
}

pub fn remove(shard: &Shard, sess: &Session, req_id: u64, other: UserId) {
    pair(shard, sess, req_id, other, PairAction::Remove)
}

pub fn block(shard: &Shard, sess: &Session, req_id: u64, other: UserId, block: bool) {
    let action = if block {
        PairAction::Block
    } else {
        PairAction::Unblock
    };
    pair(shard, sess, req_id, other, action)
}

/// A page of the user's relationships (user ids above `after`), within one
/// frame; the reply's `next_after_id` asks for the next.
pub async fn list(shard: &Rc<Shard>, sess: &Session, req_id: u64, after: UserId, limit: u32) {
    let me = sess.user();
    match shard.blocking(move |s| s.friends_of(me)).await {
        Ok(rows) => {
            let (page, next) = crate::core::validate::page(
                &rows,
                |r| r.user_id,
                |r| r.username.len() + r.note.len(),
                after,
                limit,
                shard.cfg.max_frame,
            );
            sess.reply
                .friend_list(req_id, page, &|u| shard.is_online(u), next)
        }
        Err(_) => sess.error(req_id, STORAGE),
    }
}

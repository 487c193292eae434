//! Conversation state for UIs: ListConversations, ReadCursors, Typing.
//! (Read receipts ride on Ack: `message::ack`.)
//!
//! Only the native protocol has these requests; the answers are frames
//! queued on the connection like an owner's reply.

use super::{STORAGE, to_owner};
use crate::core::{ErrorCode, Reject, validate};
use crate::model::{ConvId, ConvKind, UserId, conv_kind, direct_peer, group_conv, now_ms};
use crate::server::limits::Kind;
use crate::server::session::Session;
use crate::server::shard::{OwnerOp, Shard};
use crate::wire::enc::ConvEntry;
use std::rc::Rc;

/// A `ConversationInfo`'s bytes besides its strings and its message's,
/// on top of `validate`'s per-entry overhead (a nested `ChatMessage`).
const INFO_OVERHEAD: usize = 160;

/// Whether `conv` can be a conversation of `me` at all (a direct id
/// naming them, a group id); the store says whether it is.
fn check_conv(conv: ConvId, me: UserId) -> Result<(), Reject> {
    match conv_kind(conv) {
        ConvKind::Direct { .. } if direct_peer(conv, me).is_none() => {
            Err(Reject(ErrorCode::NotMember, "not your conversation"))
        }
        ConvKind::Group(g) if g == 0 || group_conv(g) != g => {
            Err(Reject(ErrorCode::NoSuchGroup, "no such group"))
        }
        _ => Ok(()),
    }
}

/// A page of the caller's conversations, by conversation id, within one
/// frame: each with its newest visible message (a preview), the caller's
/// read cursor and unread count, and for direct ones the peer's cursor and
/// presence (friends only).
pub async fn list(shard: &Rc<Shard>, sess: &Session, req_id: u64, after: ConvId, limit: u32) {
    let me = sess.user();
    // This session's acks so far count.
    shard.sync_point().await;
    let mut rows = match shard.blocking(move |s| s.conversation_list(me)).await {
        Ok(r) => r,
        Err(_) => return sess.error(req_id, STORAGE),
    };
    for r in &mut rows {
        // Nothing at or below a member's join point is theirs to see.
        if r.last.as_ref().is_some_and(|m| m.seq <= r.cursor.floor) {
            r.last = None;
            r.truncated = false;
        }
    }
    let (page, next) = validate::page(
        &rows,
        |r| r.cursor.conv,
        |r| {
            INFO_OVERHEAD
                + r.name.len()
                + r.last
                    .as_ref()
                    .map(|m| m.body.len() + m.sender_name.len())
                    .unwrap_or(0)
        },
        after,
        limit,
        shard.cfg.max_frame,
    );
    let friends = shard.friends_of_local(me);
    let entries: Vec<ConvEntry<'_>> = page
        .iter()
        .map(|r| {
            let c = &r.cursor;
            let peer = direct_peer(c.conv, me).unwrap_or(0);
            ConvEntry {
                summary: r,
                peer,
                unread: c.last_seq.saturating_sub(c.delivered.max(c.floor)),
                online: peer != 0 && friends.contains(&peer) && shard.is_online(peer),
            }
        })
        .collect();
    let f = shard
        .enc
        .borrow_mut()
        .conversation_list(req_id, &entries, next)
        .to_vec();
    shard.reply(&sess.origin(shard, req_id), &f);
}

/// A page of every participant's read cursor, by user id; the caller must
/// be one of them (a cursor row: a member of the group, or a friend, now or
/// once, of the peer).
pub async fn read_cursors(
    shard: &Rc<Shard>,
    sess: &Session,
    req_id: u64,
    conv: ConvId,
    after: UserId,
    limit: u32,
) {
    let me = sess.user();
    if let Err(r) = check_conv(conv, me) {
        return sess.error(req_id, r);
    }
    shard.sync_point().await;
    let rows = match shard.blocking(move |s| s.read_cursors(conv)).await {
        Ok(r) => r,
        Err(_) => return sess.error(req_id, STORAGE),
    };
    if rows.binary_search_by_key(&me, |r| r.0).is_err() {
        return sess.error(
            req_id,
            Reject(ErrorCode::NotMember, "not your conversation"),
        );
    }
    let (page, next) = validate::page(&rows, |r| r.0, |_| 0, after, limit, shard.cfg.max_frame);
    let f = shard
        .enc
        .borrow_mut()
        .read_cursor_list(req_id, conv, page, next)
        .to_vec();
    shard.reply(&sess.origin(shard, req_id), &f);
}

/// Relays a typing notification through the conversation's owner (who
/// knows the friendship or the members); rate-limited per user.
pub fn typing(shard: &Shard, sess: &Session, req_id: u64, conv: ConvId, stopped: bool) {
    let me = sess.user();
    if let Err(ms) = shard.rates.borrow_mut().typing.take(me, now_ms()) {
        shard.limits.refused(Kind::Typing);
        let text = format!("typing notifications too fast; retry in {ms} ms");
        return sess.reply.error(req_id, ErrorCode::RateLimited, &text);
    }
    if let Err(r) = check_conv(conv, me) {
        return sess.error(req_id, r);
    }
    to_owner(shard, sess, req_id, conv, OwnerOp::Typing { conv, stopped });
}

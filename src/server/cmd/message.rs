//! Send, Ack, History.

use super::{STORAGE, to_owner};
use crate::core::request::{Pairs, Target};
use crate::core::{ErrorCode, Reject, validate};
use crate::model::{
    ConvId, ConvKind, MAX_USER_ID, Seq, direct_conv, direct_peer, group_conv, now_ms,
};
use crate::server::limits::Kind;
use crate::server::session::Session;
use crate::server::shard::{OwnerOp, Shard};
use std::rc::Rc;
use std::sync::Arc;

/// Validates a chat message and hands it to its conversation's owner, which
/// sequences it, makes it durable and answers `SendOk` (or an error).
pub fn send(shard: &Shard, sess: &Session, req_id: u64, to: Target, cmid: u64, body: &str) {
    if let Err(r) = validate::body(body, shard.cfg.max_frame) {
        return sess.error(req_id, r);
    }
    let me = sess.user();
    if let Err(ms) = shard.rates.borrow_mut().send.take(me, now_ms()) {
        shard.limits.refused(Kind::Send);
        let text = format!("sending too fast; retry in {ms} ms");
        return sess.reply.error(req_id, ErrorCode::RateLimited, &text);
    }
    let conv = match to {
        Target::User(u) if u == me => {
            return sess.error(
                req_id,
                Reject(ErrorCode::SelfTarget, "you cannot message yourself"),
            );
        }
        Target::User(u) if u == 0 || u > MAX_USER_ID => {
            return sess.error(
                req_id,
                Reject(ErrorCode::NotFriends, "you can only message friends"),
            );
        }
        Target::User(u) => direct_conv(me, u),
        Target::Group(g) if g == 0 || group_conv(g) != g => {
            return sess.error(req_id, Reject(ErrorCode::NoSuchGroup, "no such group"));
        }
        Target::Group(g) => g,
    };
    to_owner(
        shard,
        sess,
        req_id,
        conv,
        OwnerOp::Send {
            conv,
            client_msg_id: cmid,
            body: body.to_string(),
        },
    );
}

/// Moves the user's delivered cursors forward (written in batches by the
/// shard's cursor flush). Only conversations this session may see count:
/// anything else would only fill the buffer and the store.
///
/// The ack is the read cursor: each conversation whose read mark advanced
/// in this batch gets one `ReadUpTo` push (`core::receipts`), to the peer of
/// a direct conversation and to the user's other sessions.
pub fn ack(shard: &Shard, sess: &Session, items: &dyn Pairs) {
    let me = sess.user();
    let mut accepted: Vec<(ConvId, Seq)> = Vec::new();
    {
        let mut cursors = shard.cursors.borrow_mut();
        let known = sess.conn.convs.borrow();
        items.each(&mut |conv, seq| {
            if let Some(&last) = known.get(&conv) {
                let seq = seq.min(last);
                let e = cursors.entry((me, conv)).or_insert(0);
                *e = (*e).max(seq);
                accepted.push((conv, seq));
            }
        });
    }
    if accepted.is_empty() {
        return;
    }
    let advanced = match shard.users.borrow_mut().get_mut(&me) {
        Some(st) => st.read.batch(accepted),
        None => return,
    };
    for (conv, seq) in advanced {
        let f: Arc<[u8]> = shard.enc.borrow_mut().read_up_to(conv, me, seq).into();
        match direct_peer(conv, me) {
            Some(peer) => shard.push_users(&[peer, me], f, sess.conn.id, None),
            None => shard.push_users(&[me], f, sess.conn.id, None),
        }
    }
}

/// A page of history before `before` (0: the newest). A direct
/// conversation is read here (membership is in its id); a group's by its
/// owner, which knows the members.
pub async fn history(
    shard: &Rc<Shard>,
    sess: &Session,
    req_id: u64,
    conv: ConvId,
    before: Seq,
    limit: u32,
) {
    let limit = match limit {
        0 => 50,
        n => n.min(200),
    };
    match crate::model::conv_kind(conv) {
        ConvKind::Direct { .. } => {
            if direct_peer(conv, sess.user()).is_none() {
                return sess.error(
                    req_id,
                    Reject(ErrorCode::NotMember, "not your conversation"),
                );
            }
            match read_history(shard, conv, before, limit, 0).await {
                Ok(f) => sess.reply.messages(req_id, &f),
                Err(r) => sess.error(req_id, r),
            }
        }
        ConvKind::Group(g) => {
            if g == 0 || group_conv(g) != g {
                return sess.error(req_id, Reject(ErrorCode::NoSuchGroup, "no such group"));
            }
            to_owner(
                shard,
                sess,
                req_id,
                g,
                OwnerOp::History {
                    group: g,
                    before,
                    limit,
                },
            );
        }
    }
}

/// Reads a page of history: the newest messages before `before` that fit
/// one frame, oldest first (the client pages on with `before_seq` = the
/// first seq it got). Nothing at or below `floor` (the reader's join point
/// in a group that does not show new members its past).
pub async fn read_history(
    shard: &Rc<Shard>,
    conv: ConvId,
    before: Seq,
    limit: u32,
    floor: Seq,
) -> Result<Vec<crate::store::StoredMessage>, Reject> {
    let mut msgs = shard
        .blocking(move |s| s.history(conv, before, limit))
        .await
        .map_err(|_| STORAGE)?;
    msgs.retain(|m| m.seq > floor);
    let n = validate::fit_in_frame(
        msgs.iter()
            .rev()
            .map(|m| m.body.len() + m.sender_name.len()),
        shard.cfg.max_frame,
    );
    msgs.drain(..msgs.len() - n);
    Ok(msgs)
}

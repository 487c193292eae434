//! The conversation owner: sequencing, friendship and group state.
//!
//! Every operation on a conversation runs on its owner shard, one at a time
//! and in arrival order (per-conversation queue). Sends are decided
//! synchronously (seq assigned, write queued for the next group commit);
//! friendship and group changes await their store write before the next
//! operation of that conversation runs, so a message and a membership change
//! are always ordered the same way for everybody.

use super::shard::{Completion, ConvEntry, ConvState, Origin, OwnerOp, Shard};
use crate::core::Reject;
use crate::core::conv::DEDUP_WINDOW;
use crate::core::group::{GroupAction, GroupChange, GroupState};
use crate::core::owner::{ConvCore, ConvData, SendDecision};
use crate::core::pair::{self, PairAction, PairEffect};
use crate::core::validate;
use crate::model::{ConvId, ConvKind, GroupId, UserId, conv_kind, direct_conv, group_conv, now_ms};
use crate::store::{Role, StoreError, StoredMessage, WriteOp};
use crate::wire::enc::role_fb;
use crate::wire::fb;
use std::rc::Rc;
use std::sync::Arc;

fn conv_of(origin: &Origin, op: &OwnerOp) -> ConvId {
    match op {
        OwnerOp::Send { conv, .. } => *conv,
        OwnerOp::Pair { other, .. } => direct_conv(origin.user, *other),
        OwnerOp::Group { group, .. }
        | OwnerOp::Members { group, .. }
        | OwnerOp::History { group, .. }
        | OwnerOp::System { group, .. } => group_conv(*group),
        OwnerOp::Typing { conv, .. } => *conv,
    }
}

/// Entry point on the owner shard.
pub fn submit(shard: &Rc<Shard>, origin: Origin, op: OwnerOp) {
    let conv = conv_of(&origin, &op);
    let mut convs = shard.convs.borrow_mut();
    let view_gen = shard.view_gen();
    if let Some(ConvEntry::Ready(st)) = convs.get_mut(&conv) {
        if st.view_gen != view_gen && !st.busy {
            // Ownership may have moved away and back since this was loaded.
            convs.remove(&conv);
        } else {
            st.last_used = shard.clock_s.get();
        }
    }
    match convs.get_mut(&conv) {
        None => {
            convs.insert(conv, ConvEntry::Loading(vec![(origin, op)]));
            drop(convs);
            spawn_load(shard.clone(), conv);
        }
        Some(ConvEntry::Loading(waiting)) => waiting.push((origin, op)),
        Some(ConvEntry::Ready(st))
            if !st.busy && matches!(op, OwnerOp::Send { .. } | OwnerOp::Typing { .. }) =>
        {
            // The hot path: nothing queued ahead, decide inline (no task spawn).
            drop(convs);
            match op {
                OwnerOp::Send {
                    conv,
                    client_msg_id,
                    body,
                } => send(shard, &origin, conv, client_msg_id, body),
                OwnerOp::Typing { conv, stopped } => typing(shard, &origin, conv, stopped),
                _ => {}
            }
        }
        Some(ConvEntry::Ready(st)) => {
            st.queue.push_back((origin, op));
            if !st.busy {
                st.busy = true;
                drop(convs);
                spawn_process(shard.clone(), conv);
            }
        }
    }
}

fn spawn_load(shard: Rc<Shard>, conv: ConvId) {
    super::metrics::Metrics::inc(&shard.metrics.conv_loads);
    glommio::spawn_local(async move {
        let view_gen = shard.view_gen();
        let loaded = shard
            .blocking(move |s| {
                let tail = s.conv_tail(conv, DEDUP_WINDOW)?;
                let data = match conv_kind(conv) {
                    ConvKind::Direct { lo, hi } => {
                        let pair = s.get_pair(lo, hi)?;
                        let n1 = s.user_by_id(lo)?.map(|u| u.username);
                        let n2 = s.user_by_id(hi)?.map(|u| u.username);
                        ConvData::Direct {
                            lo,
                            hi,
                            pair,
                            names: (n1, n2),
                        }
                    }
                    ConvKind::Group(g) => match s.get_group(g)? {
                        Some(rec) if !rec.dissolved => {
                            let members = s
                                .group_members(g)?
                                .into_iter()
                                .map(|m| (m.user_id, m.role))
                                .collect();
                            let pending = s
                                .group_pending(g)?
                                .into_iter()
                                .map(|p| (p.user_id, p.invited))
                                .collect();
                            ConvData::Group(Some(GroupState {
                                id: g,
                                name: rec.name,
                                owner: rec.owner,
                                members,
                                private: rec.private,
                                pending,
                            }))
                        }
                        _ => ConvData::Group(None),
                    },
                };
                Ok((tail, data))
            })
            .await;
        let waiting = match shard.convs.borrow_mut().remove(&conv) {
            Some(ConvEntry::Loading(w)) => w,
            _ => Vec::new(),
        };
        match loaded {
            Ok((tail, data)) => {
                let st = ConvState {
                    view_gen,
                    conv: ConvCore::from_store(&tail, data, DEDUP_WINDOW),
                    queue: waiting.into(),
                    busy: true,
                    last_used: shard.clock_s.get(),
                };
                shard
                    .convs
                    .borrow_mut()
                    .insert(conv, ConvEntry::Ready(Box::new(st)));
                process(shard, conv).await;
            }
            Err(e) => {
                tracing::error!(conv, error = %e, "loading conversation failed");
                for (origin, _) in waiting {
                    shard.reply_error(
                        &origin,
                        fb::ErrorCode::Internal,
                        "storage unavailable, retry",
                    );
                }
            }
        }
    })
    .detach();
}

/// Runs `process` so that a bug in one conversation's handling (a panic)
/// fails that conversation's queued requests and drops its cached state
/// (reloaded on next use) instead of killing the executor or wedging it.
fn spawn_process(shard: Rc<Shard>, conv: ConvId) {
    use futures_lite::FutureExt;
    glommio::spawn_local(async move {
        let res = std::panic::AssertUnwindSafe(process(shard.clone(), conv))
            .catch_unwind()
            .await;
        if res.is_err() {
            tracing::error!(conv, "conversation handler panicked; state dropped");
            if let Some(ConvEntry::Ready(st)) = shard.convs.borrow_mut().remove(&conv) {
                for (o, _) in st.queue {
                    shard.reply_error(&o, fb::ErrorCode::Internal, "internal error, retry");
                }
            }
        }
    })
    .detach();
}

/// Drains the conversation's queue in order.
async fn process(shard: Rc<Shard>, conv: ConvId) {
    loop {
        let next = {
            let mut convs = shard.convs.borrow_mut();
            let Some(ConvEntry::Ready(st)) = convs.get_mut(&conv) else {
                return;
            };
            match st.queue.pop_front() {
                Some(x) => x,
                None => {
                    st.busy = false;
                    return;
                }
            }
        };
        let (origin, op) = next;
        match op {
            OwnerOp::Send {
                conv,
                client_msg_id,
                body,
            } => send(&shard, &origin, conv, client_msg_id, body),
            OwnerOp::Pair { other, action } => pair_op(&shard, &origin, conv, other, action).await,
            OwnerOp::Group { group, action } => {
                group_op(&shard, &origin, conv, group, action).await
            }
            OwnerOp::Members {
                group,
                after,
                limit,
            } => members(&shard, &origin, conv, group, after, limit).await,
            OwnerOp::History {
                group,
                before,
                limit,
            } => history(&shard, &origin, conv, group, before, limit).await,
            OwnerOp::System {
                client_msg_id,
                body,
                ..
            } => system(&shard, &origin, conv, client_msg_id, body),
            OwnerOp::Typing { conv, stopped } => typing(&shard, &origin, conv, stopped),
        }
        // Long queues must not monopolise the executor.
        glommio::yield_if_needed().await;
    }
}

fn with_conv<R>(shard: &Shard, conv: ConvId, f: impl FnOnce(&mut ConvState) -> R) -> Option<R> {
    match shard.convs.borrow_mut().get_mut(&conv) {
        Some(ConvEntry::Ready(st)) => Some(f(st)),
        _ => None,
    }
}

fn send(shard: &Shard, origin: &Origin, conv: ConvId, client_msg_id: u64, body: String) {
    let decided = with_conv(shard, conv, |st| {
        st.conv
            .send(origin.user, client_msg_id, now_ms(), || origin.clone())
    });
    sequenced(shard, origin, conv, client_msg_id, body, decided);
}

/// Relays a typing notification to the conversation's participants online
/// now, the typist excepted, if the typist may write there (friends in a
/// direct conversation, a member of a group). Nothing is stored.
fn typing(shard: &Shard, origin: &Origin, conv: ConvId, stopped: bool) {
    match with_conv(shard, conv, |st| st.conv.recipients(origin.user)) {
        None => shard.reply_error(
            origin,
            fb::ErrorCode::Internal,
            "conversation unavailable, retry",
        ),
        Some(Err(Reject(code, text))) => shard.reply_error(origin, code, text),
        Some(Ok(mut users)) => {
            users.retain(|&u| u != origin.user && shard.is_online(u));
            let ok = shard.enc.borrow_mut().ok(origin.req_id).to_vec();
            shard.reply(origin, &ok);
            if !users.is_empty() {
                let f: Arc<[u8]> = shard
                    .enc
                    .borrow_mut()
                    .typing_event(conv, origin.user, &origin.name, stopped)
                    .into();
                shard.push_users(&users, f, 0, None);
            }
        }
    }
}

/// An operator's system message (`server::admin`): the same path as a
/// chat message from here on, sender `SYSTEM_USER` (the origin's user).
fn system(shard: &Shard, origin: &Origin, conv: ConvId, client_msg_id: u64, body: String) {
    let decided = with_conv(shard, conv, |st| {
        st.conv.system_send(client_msg_id, now_ms())
    });
    sequenced(shard, origin, conv, client_msg_id, body, decided);
}

/// Acts on the owner's decision on a message: answer a refusal or a
/// duplicate, or queue a new message for the group commit.
fn sequenced(
    shard: &Shard,
    origin: &Origin,
    conv: ConvId,
    client_msg_id: u64,
    body: String,
    decided: Option<crate::core::Decision<SendDecision>>,
) {
    match decided {
        None => shard.reply_error(
            origin,
            fb::ErrorCode::Internal,
            "conversation unavailable, retry",
        ),
        Some(Err(Reject(code, text))) => shard.reply_error(origin, code, text),
        Some(Ok(SendDecision::Wait)) => {}
        Some(Ok(SendDecision::Duplicate { seq, ts })) => {
            let f = shard
                .enc
                .borrow_mut()
                .send_ok(origin.req_id, conv, seq, ts, true)
                .to_vec();
            shard.reply(origin, &f);
        }
        Some(Ok(SendDecision::New {
            seq,
            ts,
            recipients,
        })) => {
            let msg = StoredMessage {
                conv,
                seq,
                sender: origin.user,
                timestamp_ms: ts,
                client_msg_id,
                body,
                sender_name: origin.name.to_string(),
            };
            let frame = super::shard::message_frame(&mut shard.enc.borrow_mut(), &msg);
            shard.metrics.msgs_in.set(shard.metrics.msgs_in.get() + 1);
            let sender = msg.sender;
            shard.write(
                WriteOp::Message(msg),
                Some(Completion::Sent {
                    origin: origin.clone(),
                    conv,
                    client_msg_id,
                    seq,
                    ts,
                    frame,
                    recipients,
                    sequenced: std::time::Instant::now(),
                }),
            );
            // The sender has read their own message: their read cursor
            // moves with it, in the same group commit (a system message's
            // sender has no cursor row; the store ignores it).
            if sender != crate::model::SYSTEM_USER {
                shard.write(
                    WriteOp::Cursor {
                        user: sender,
                        conv,
                        seq,
                    },
                    None,
                );
            }
        }
    }
}

/// A batch is durable: ack senders (and resends that waited), then deliver.
pub fn complete(shard: &Shard, c: Completion) {
    let Completion::Sent {
        origin,
        conv,
        client_msg_id,
        seq,
        ts,
        frame,
        recipients,
        sequenced,
    } = c;
    let waiters = with_conv(shard, conv, |st| {
        st.conv.durable(origin.user, client_msg_id, seq)
    })
    .unwrap_or_default();
    let ok = shard
        .enc
        .borrow_mut()
        .send_ok(origin.req_id, conv, seq, ts, false)
        .to_vec();
    shard.reply(&origin, &ok);
    shard.metrics.send_ack.observe(sequenced.elapsed());
    for o in waiters {
        let f = shard
            .enc
            .borrow_mut()
            .send_ok(o.req_id, conv, seq, ts, true)
            .to_vec();
        shard.reply(&o, &f);
    }
    shard.push_message(&recipients, frame, &origin, (conv, seq));
}

/// A batch failed: tell the senders (they retry with the same client_msg_id)
/// and reload the affected conversations so no seq is skipped.
pub fn fail(shard: &Rc<Shard>, failed: Vec<Completion>) {
    let mut convs = Vec::new();
    for Completion::Sent { origin, conv, .. } in failed {
        shard.reply_error(
            &origin,
            fb::ErrorCode::Internal,
            "storage write failed, retry",
        );
        convs.push(conv);
    }
    convs.sort_unstable();
    convs.dedup();
    for conv in convs {
        let entry = shard.convs.borrow_mut().remove(&conv);
        if let Some(ConvEntry::Ready(st)) = entry {
            for o in st.conv.failed() {
                shard.reply_error(&o, fb::ErrorCode::Internal, "storage write failed, retry");
            }
            // Queued operations go through a fresh load.
            let queued: Vec<_> = st.queue.into_iter().collect();
            shard
                .convs
                .borrow_mut()
                .insert(conv, ConvEntry::Loading(queued));
            spawn_load(shard.clone(), conv);
        }
    }
}

fn friend_frame(
    shard: &Shard,
    kind: fb::FriendEventKind,
    user: UserId,
    name: &str,
    note: &str,
) -> Arc<[u8]> {
    shard
        .enc
        .borrow_mut()
        .friend_event(kind, user, name, note)
        .into()
}

async fn pair_op(
    shard: &Rc<Shard>,
    origin: &Origin,
    conv: ConvId,
    other: UserId,
    action: PairAction,
) {
    let Some((rec, other_name)) = with_conv(shard, conv, |st| match &st.conv.data {
        ConvData::Direct {
            lo, pair, names, ..
        } => {
            let other_name = if *lo == other {
                names.0.clone()
            } else {
                names.1.clone()
            };
            Some((pair.clone(), other_name))
        }
        ConvData::Group(_) => None,
    })
    .flatten() else {
        shard.reply_error(
            origin,
            fb::ErrorCode::Internal,
            "conversation unavailable, retry",
        );
        return;
    };
    let Some(other_name) = other_name else {
        shard.reply_error(origin, fb::ErrorCode::NoSuchUser, "no such user");
        return;
    };
    let (next, effect) = match pair::apply(&rec, origin.user, other, &action) {
        Ok(x) => x,
        Err(Reject(code, text)) => return shard.reply_error(origin, code, text),
    };
    if next != rec {
        let (lo, hi) = (origin.user.min(other), origin.user.max(other));
        let to_store = next.clone();
        if let Err(e) = shard.blocking(move |s| s.set_pair(lo, hi, &to_store)).await {
            tracing::error!(error = %e, "set_pair failed");
            return shard.reply_error(
                origin,
                fb::ErrorCode::Internal,
                "storage write failed, retry",
            );
        }
        with_conv(shard, conv, |st| {
            if let ConvData::Direct { pair, .. } = &mut st.conv.data {
                *pair = next.clone();
            }
        });
    }
    let ok = shard.enc.borrow_mut().ok(origin.req_id).to_vec();
    shard.reply(origin, &ok);
    let me = origin.user;
    match effect {
        PairEffect::Requested => {
            let note = if let PairAction::Request { note } = &action {
                note.as_str()
            } else {
                ""
            };
            let f = friend_frame(
                shard,
                fb::FriendEventKind::Requested,
                me,
                &origin.name,
                note,
            );
            shard.push_users(&[other], f, 0, None);
        }
        PairEffect::BecameFriends { mutual } => {
            // A legacy "add friend" (Befriend) carries its message along.
            let note = match &action {
                PairAction::Befriend { note } => note.as_str(),
                _ => "",
            };
            let f = friend_frame(shard, fb::FriendEventKind::Accepted, me, &origin.name, note);
            shard.push_users(&[other], f, 0, None);
            if mutual {
                let f = friend_frame(shard, fb::FriendEventKind::Accepted, other, &other_name, "");
                shard.push_users(&[me], f, 0, None);
            }
            friend_set(shard, me, other, true);
        }
        PairEffect::Rejected => {
            let f = friend_frame(shard, fb::FriendEventKind::Rejected, me, &origin.name, "");
            shard.push_users(&[other], f, 0, None);
        }
        PairEffect::Unfriended => {
            let f = friend_frame(shard, fb::FriendEventKind::Removed, me, &origin.name, "");
            shard.push_users(&[other], f, 0, None);
            friend_set(shard, me, other, false);
        }
        PairEffect::Silent => {}
    }
}

fn friend_set(shard: &Shard, a: UserId, b: UserId, friends: bool) {
    use super::shard::ShardMsg;
    if let Some(c) = &shard.cluster {
        c.friend_set_remote(a, b, friends);
        c.friend_set_remote(b, a, friends);
    }
    shard.send(
        shard.home(a),
        ShardMsg::FriendSet {
            user: a,
            friend: b,
            friends,
        },
    );
    shard.send(
        shard.home(b),
        ShardMsg::FriendSet {
            user: b,
            friend: a,
            friends,
        },
    );
}

async fn group_op(
    shard: &Rc<Shard>,
    origin: &Origin,
    conv: ConvId,
    group: GroupId,
    action: GroupAction,
) {
    let cap = shard.limits.cfg.members_per_group;
    let decided = with_conv(shard, conv, |st| match &st.conv.data {
        ConvData::Group(Some(g)) => g.decide(origin.user, action).and_then(|c| {
            // Whoever lets a member in (a join, an invitation that admits
            // one who asked, an approval) meets the cap.
            if matches!(c, GroupChange::Joined(_))
                && crate::core::limits::over(g.members.len(), cap)
            {
                shard.limits.refused(super::limits::Kind::Members);
                return Err(Reject(
                    fb::ErrorCode::LimitReached,
                    "this group is full (members per group limit)",
                ));
            }
            Ok((c, g.audience(c), st.conv.seq.last_seq(), g.name.clone()))
        }),
        _ => Err(Reject(fb::ErrorCode::NoSuchGroup, "no such group")),
    });
    let (change, before_audience, last_seq, group_name) = match decided {
        None => {
            return shard.reply_error(
                origin,
                fb::ErrorCode::Internal,
                "conversation unavailable, retry",
            );
        }
        Some(Err(Reject(code, text))) => return shard.reply_error(origin, code, text),
        Some(Ok(x)) => x,
    };
    let res = shard
        .blocking(move |s| {
            match change {
                // A joiner's cursor starts at the current end: they receive
                // what is sent after they joined; unless the group shows new
                // members its full history, that is also their floor (History
                // and catch-up show nothing before it).
                GroupChange::Joined(u) => s.add_member(group, u, Role::Member, last_seq)?,
                GroupChange::Left(u) | GroupChange::Removed(u) => s.remove_member(group, u)?,
                GroupChange::RoleSet(u, r) => s.set_role(group, u, r)?,
                GroupChange::Dissolved => s.dissolve_group(group)?,
                GroupChange::Invited(u) => {
                    if s.user_by_id(u)?.is_none() {
                        return Ok(false);
                    }
                    s.set_pending(group, u, Some(true))?
                }
                GroupChange::Requested(u) => s.set_pending(group, u, Some(false))?,
                GroupChange::Rejected(u) => s.set_pending(group, u, None)?,
            }
            Ok(true)
        })
        .await;
    match res {
        Ok(true) => {}
        Ok(false) => return shard.reply_error(origin, fb::ErrorCode::NoSuchUser, "no such user"),
        Err(e) => {
            tracing::error!(error = %e, "group write failed");
            return shard.reply_error(
                origin,
                fb::ErrorCode::Internal,
                "storage write failed, retry",
            );
        }
    }
    let audience = with_conv(shard, conv, |st| {
        if let ConvData::Group(g) = &mut st.conv.data
            && let Some(gs) = g.as_mut()
        {
            if gs.apply(change) {
                return gs.audience(change);
            }
            *g = None;
        }
        before_audience.clone()
    })
    .unwrap_or(before_audience);
    if let GroupChange::Requested(_) = change {
        // Recorded; the requester is told it waits for a decision.
        let Reject(code, text) = crate::core::group::PENDING;
        shard.reply_error(origin, code, text);
    } else {
        let ok = shard.enc.borrow_mut().ok(origin.req_id).to_vec();
        shard.reply(origin, &ok);
    }
    let (kind, user) = match change {
        GroupChange::Joined(u) => (fb::GroupEventKind::Joined, u),
        GroupChange::Left(u) => (fb::GroupEventKind::Left, u),
        GroupChange::Removed(u) => (fb::GroupEventKind::Removed, u),
        GroupChange::RoleSet(u, _) => (fb::GroupEventKind::RoleChanged, u),
        GroupChange::Dissolved => (fb::GroupEventKind::Dissolved, 0),
        GroupChange::Invited(u) => (fb::GroupEventKind::Invited, u),
        GroupChange::Requested(u) => (fb::GroupEventKind::JoinRequested, u),
        GroupChange::Rejected(u) => (fb::GroupEventKind::JoinRejected, u),
    };
    // Only an invitee learns the name this way (members know it already).
    let name = if kind == fb::GroupEventKind::Invited {
        group_name.as_str()
    } else {
        ""
    };
    let f: Arc<[u8]> = shard
        .enc
        .borrow_mut()
        .group_event(kind, group, user, origin.user, name)
        .into();
    // Every session hears it, the acting connection included: its client
    // updates its view from events, not from the OkReply.
    shard.push_users(&audience, f, 0, None);
}

fn require_member(shard: &Shard, origin: &Origin, conv: ConvId) -> Result<Role, Reject> {
    match with_conv(shard, conv, |st| match &st.conv.data {
        ConvData::Group(Some(g)) => g.require_member(origin.user),
        _ => Err(Reject(fb::ErrorCode::NoSuchGroup, "no such group")),
    }) {
        Some(r) => r,
        None => Err(Reject(
            fb::ErrorCode::Internal,
            "conversation unavailable, retry",
        )),
    }
}

/// A page of members (user ids above `after`); owners and admins also see
/// the invited (role `Invited`) and those asking to join (`Pending`).
async fn members(
    shard: &Rc<Shard>,
    origin: &Origin,
    conv: ConvId,
    group: GroupId,
    after: UserId,
    limit: u32,
) {
    let role = match require_member(shard, origin, conv) {
        Ok(r) => r,
        Err(Reject(code, text)) => return shard.reply_error(origin, code, text),
    };
    let admin = role >= Role::Admin;
    let rows = shard
        .blocking(move |s| {
            let members = s.group_members(group)?;
            let pending = if admin {
                s.group_pending(group)?
            } else {
                Vec::new()
            };
            Ok((members, pending))
        })
        .await;
    match rows {
        Ok((members, pending)) => {
            let mut all: Vec<(UserId, &str, fb::Role)> = members
                .iter()
                .map(|m| (m.user_id, m.username.as_str(), role_fb(m.role)))
                .chain(pending.iter().map(|p| {
                    let r = if p.invited {
                        fb::Role::Invited
                    } else {
                        fb::Role::Pending
                    };
                    (p.user_id, p.username.as_str(), r)
                }))
                .collect();
            all.sort_by_key(|e| e.0);
            let (page, next) = validate::page(
                &all,
                |e| e.0,
                |e| e.1.len(),
                after,
                limit,
                shard.cfg.max_frame,
            );
            let f = shard
                .enc
                .borrow_mut()
                .member_list(origin.req_id, group, page, |u| shard.is_online(u), next)
                .to_vec();
            shard.reply(origin, &f);
        }
        Err(_) => shard.reply_error(
            origin,
            fb::ErrorCode::Internal,
            "storage unavailable, retry",
        ),
    }
}

async fn history(
    shard: &Rc<Shard>,
    origin: &Origin,
    conv: ConvId,
    _group: GroupId,
    before: u64,
    limit: u32,
) {
    if let Err(Reject(code, text)) = require_member(shard, origin, conv) {
        return shard.reply_error(origin, code, text);
    }
    let user = origin.user;
    let floor = match shard.blocking(move |s| s.join_floor(conv, user)).await {
        Ok(f) => f,
        Err(_) => {
            return shard.reply_error(
                origin,
                fb::ErrorCode::Internal,
                "storage unavailable, retry",
            );
        }
    };
    match super::cmd::message::read_history(shard, conv, before, limit, floor).await {
        Ok(msgs) => {
            let f = shard
                .enc
                .borrow_mut()
                .messages(origin.req_id, msgs.iter())
                .to_vec();
            shard.reply(origin, &f);
        }
        Err(Reject(code, text)) => shard.reply_error(origin, code, text),
    }
}

/// Maps store conflicts for callers outside the owner (group creation).
pub fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict)
}

//! The one session: a logged-in connection, whatever protocol it speaks.
//!
//! A connection is transport + codec + this session. The codec turns bytes
//! into [`Request`](crate::core::request::Request)s and handles them with
//! `cmd::dispatch`; answers computed on the spot go back through the
//! connection's [`Responder`] (the native codec encodes FlatBuffers, the
//! legacy codec JSON). Answers and pushes produced elsewhere (conversation
//! owners on other shards or nodes) arrive in the connection's queue as
//! FlatBuffers frames, the node's internal form: encoded once, shared by
//! every recipient, and turned into the old protocol's JSON by the legacy
//! writer only for the connections that need it.
//!
//! Catch-up is shared too: both protocols read what the user has not seen
//! with [`catch_up`] and switch to live delivery with [`go_live`].

use super::io::Frame;
use super::shard::{Conn, Origin, Shard};
use crate::core::validate;
use crate::core::{ErrorCode, sync};
use crate::model::{ConvId, GroupId, Seq, UserId};
use crate::store::{FriendKind, FriendRow, GroupRecord, MemberRow, Role, StoredMessage};
use ahash::AHashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Live pushes held per session while it catches up (past this, it reads
/// the store again instead).
pub const HOLD_CAP: usize = 4096;
/// Messages per catch-up store read.
pub const PAGE: u32 = 256;
/// Catch-up pauses while this many bytes wait for the socket.
pub const REPLAY_HIGH_WATER: usize = 1 << 20;

/// A group's public description, as the old protocol's "group info" shows it.
pub struct GroupInfo<'a> {
    pub group: GroupId,
    pub name: &'a str,
    pub desc: &'a str,
    pub members: &'a [MemberRow],
}

/// Answers computed by the session itself, in the connection's protocol.
/// (Owners answer with frames through the shard; see the module doc.)
pub trait Responder {
    fn ok(&self, req_id: u64);
    fn error(&self, req_id: u64, code: ErrorCode, text: &str);
    fn pong(&self, req_id: u64, nonce: u64);
    fn register_ok(&self, req_id: u64, user: UserId);
    /// Search results: (id, name, online as seen by the searcher), next page.
    fn user_list(&self, req_id: u64, items: &[(UserId, &str, bool)], next: UserId);
    /// A page of relationships; `next`: the cursor of the next page (0: last).
    fn friend_list(
        &self,
        req_id: u64,
        rows: &[FriendRow],
        online: &dyn Fn(UserId) -> bool,
        next: UserId,
    );
    fn group_created(&self, req_id: u64, group: GroupId, name: &str);
    /// A page of the user's groups; `next` as for `friend_list`.
    fn group_list(&self, req_id: u64, groups: &[(GroupRecord, Role)], next: GroupId);
    /// A page of history (oldest first).
    fn messages(&self, req_id: u64, msgs: &[StoredMessage]);
    fn group_info(&self, req_id: u64, info: &GroupInfo<'_>, online: &dyn Fn(UserId) -> bool);
}

/// A logged-in session on its user's home shard.
pub struct Session {
    /// The connection; its `user` is who the session acts as.
    pub conn: Rc<Conn>,
    pub name: Arc<str>,
    /// The resume token (native sessions; the old protocol has none).
    pub token: Option<String>,
    pub reply: Rc<dyn Responder>,
}

impl Session {
    /// Who this session acts as (from its login, never from a payload).
    pub fn user(&self) -> UserId {
        self.conn.user
    }

    /// Where owners send the answer to request `req_id`.
    pub fn origin(&self, shard: &Shard, req_id: u64) -> Origin {
        Origin {
            node: None,
            shard: shard.id,
            conn: self.conn.id,
            req_id,
            user: self.conn.user,
            name: self.name.clone(),
        }
    }

    pub fn error(&self, req_id: u64, r: crate::core::Reject) {
        self.reply.error(req_id, r.0, r.1)
    }
}

/// The native protocol's answers: FlatBuffers frames on the session queue.
pub struct NativeReplies {
    pub shard: Rc<Shard>,
    pub out: Rc<super::io::Outbound>,
}

impl NativeReplies {
    fn push(&self, f: &[u8]) {
        self.out.push_own(f);
    }
}

impl Responder for NativeReplies {
    fn ok(&self, req_id: u64) {
        self.push(self.shard.enc.borrow_mut().ok(req_id));
    }
    fn error(&self, req_id: u64, code: ErrorCode, text: &str) {
        self.push(self.shard.enc.borrow_mut().error(req_id, code, text));
    }
    fn pong(&self, req_id: u64, nonce: u64) {
        self.push(self.shard.enc.borrow_mut().pong(req_id, nonce));
    }
    fn register_ok(&self, req_id: u64, user: UserId) {
        self.push(self.shard.enc.borrow_mut().register_ok(req_id, user));
    }
    fn user_list(&self, req_id: u64, items: &[(UserId, &str, bool)], next: UserId) {
        self.push(self.shard.enc.borrow_mut().user_list(req_id, items, next));
    }
    fn friend_list(
        &self,
        req_id: u64,
        rows: &[FriendRow],
        online: &dyn Fn(UserId) -> bool,
        next: UserId,
    ) {
        self.push(
            self.shard
                .enc
                .borrow_mut()
                .friend_list(req_id, rows, online, next),
        );
    }
    fn group_created(&self, req_id: u64, group: GroupId, _name: &str) {
        let conv = crate::model::group_conv(group);
        self.push(
            self.shard
                .enc
                .borrow_mut()
                .group_created(req_id, group, conv),
        );
    }
    fn group_list(&self, req_id: u64, groups: &[(GroupRecord, Role)], next: GroupId) {
        self.push(self.shard.enc.borrow_mut().group_list(req_id, groups, next));
    }
    fn messages(&self, req_id: u64, msgs: &[StoredMessage]) {
        self.push(self.shard.enc.borrow_mut().messages(req_id, msgs.iter()));
    }
    fn group_info(&self, req_id: u64, info: &GroupInfo<'_>, online: &dyn Fn(UserId) -> bool) {
        let entries: Vec<(UserId, &str, crate::wire::fb::Role)> = info
            .members
            .iter()
            .map(|m| {
                (
                    m.user_id,
                    m.username.as_str(),
                    crate::wire::enc::role_fb(m.role),
                )
            })
            .collect();
        let f = self
            .shard
            .enc
            .borrow_mut()
            .member_list(req_id, info.group, &entries, online, 0)
            .to_vec();
        self.push(&f);
    }
}

/// Why a session ended, for its `session ended` log line.
pub fn end_reason(shard: &Shard, conn: &Conn) -> &'static str {
    if let Some(why) = conn.ended_by.get() {
        why
    } else if conn.out.overflowed.get() {
        "slow_consumer"
    } else if shard.stopping.get() {
        "shutdown"
    } else {
        "closed"
    }
}

/// Refuses one more session of `user` past the node's sessions-per-user
/// limit (counted, with the words to say).
pub fn too_many_sessions(shard: &Shard, user: UserId) -> Option<String> {
    let cap = shard.limits.cfg.sessions_per_user;
    let n = shard.users.borrow().get(&user).map_or(0, |s| s.conns.len());
    if !crate::core::limits::over(n, cap) {
        return None;
    }
    shard.limits.refused(super::limits::Kind::Sessions);
    Some(format!(
        "{n} sessions of this user are connected, the most allowed; log out elsewhere first"
    ))
}

/// Registers a logged-in connection on its home shard. For the user's first
/// session it also records them in the cluster registry (awaited: it must
/// precede the catch-up query, see `ClusterShard::register_user`) and, in
/// the background, loads their friends and announces them online.
pub async fn register(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    if !shard.register(conn.clone()) {
        return;
    }
    let user = conn.user;
    if let Some(c) = &shard.cluster {
        c.register_user(user).await;
    }
    let s2 = shard.clone();
    glommio::spawn_local(async move {
        if let Ok(rows) = s2.blocking(move |s| s.friends_of(user)).await {
            let set = rows
                .into_iter()
                .filter(|r| r.kind == FriendKind::Friend)
                .map(|r| r.user_id)
                .collect();
            s2.announce_online(user, set);
        }
    })
    .detach();
}

/// Reads, a page at a time, every stored message the user has not seen:
/// per conversation, after `replayed[conv]` if it has an entry, else after
/// `since[conv]`, else after the stored delivered cursor. Each page goes to
/// `page`; `replayed` is updated as it goes, and the user's conversations
/// are recorded as the ones this session may acknowledge. Returns the
/// number of messages read.
pub async fn catch_up(
    shard: &Rc<Shard>,
    conn: &Conn,
    since: &[(ConvId, Seq)],
    replayed: &mut AHashMap<ConvId, Seq>,
    mut page: impl AsyncFnMut(&[StoredMessage]),
) -> crate::store::Result<u64> {
    let user = conn.user;
    let convs = shard.blocking(move |s| s.conversations_of(user)).await?;
    {
        let mut known = conn.convs.borrow_mut();
        for c in &convs {
            let k = known.entry(c.conv).or_insert(0);
            *k = (*k).max(c.last_seq);
        }
    }
    let mut overrides: AHashMap<ConvId, Seq> = since.iter().copied().collect();
    overrides.extend(replayed.iter().map(|(c, s)| (*c, *s)));
    let overrides: Vec<(ConvId, Seq)> = overrides.into_iter().collect();
    let mut count = 0;
    for r in sync::plan(&convs, &overrides) {
        let (conv, mut after) = (r.conv, r.after);
        loop {
            let msgs = shard
                .blocking(move |s| s.messages_after(conv, after, PAGE))
                .await?;
            let Some(last) = msgs.last() else { break };
            after = last.seq;
            count += msgs.len() as u64;
            replayed.insert(conv, after);
            page(&msgs).await;
            if conn.out.is_closing() || msgs.len() < PAGE as usize {
                break;
            }
        }
    }
    Ok(count)
}

/// Queues a page of caught-up messages as `Messages` frames (several when
/// the page is too big for one), pausing while the socket is behind.
pub async fn queue_page(shard: &Shard, conn: &Conn, msgs: &[StoredMessage]) {
    let mut rest = msgs;
    while !rest.is_empty() {
        let n = validate::fit_in_frame(
            rest.iter().map(|m| m.body.len() + m.sender_name.len()),
            shard.cfg.max_frame,
        );
        let f = shard
            .enc
            .borrow_mut()
            .messages(0, rest[..n].iter())
            .to_vec();
        conn.out.push(Frame::Own(f));
        rest = &rest[n..];
        conn.out
            .wait_below(REPLAY_HIGH_WATER.min(shard.cfg.out_limit / 2))
            .await;
    }
}

/// The native replay: every stored message after the session's cursors as
/// `Messages` pages (see [`catch_up`]), then live delivery (see
/// [`go_live`]). Used after a login or resume and after a bus resync.
/// Returns the messages read.
pub async fn replay_native(
    shard: &Rc<Shard>,
    conn: &Conn,
    since: &[(ConvId, Seq)],
    replayed: &mut AHashMap<ConvId, Seq>,
) -> crate::store::Result<u64> {
    let n = catch_up_native(shard, conn, since, replayed).await?;
    Ok(n + go_live(shard, conn, since, replayed).await?)
}

/// [`catch_up`] queuing each page on the connection as a `Messages` frame.
async fn catch_up_native(
    shard: &Rc<Shard>,
    conn: &Conn,
    since: &[(ConvId, Seq)],
    replayed: &mut AHashMap<ConvId, Seq>,
) -> crate::store::Result<u64> {
    catch_up(
        shard,
        conn,
        since,
        replayed,
        async |m: &[StoredMessage]| queue_page(shard, conn, m).await,
    )
    .await
}

/// Switches a session that has caught up to `replayed` to live delivery:
/// pushes held meanwhile that the catch-up did not cover are queued; if the
/// hold overflowed, the gap is read from the store (and queued) first,
/// until a release succeeds. Returns the messages read for the gap.
pub async fn go_live(
    shard: &Rc<Shard>,
    conn: &Conn,
    since: &[(ConvId, Seq)],
    replayed: &mut AHashMap<ConvId, Seq>,
) -> crate::store::Result<u64> {
    let mut count = 0;
    loop {
        let released = match conn.hold.borrow_mut().as_mut() {
            Some(h) => h.release(replayed),
            None => Ok(Vec::new()),
        };
        if let Ok(frames) = released {
            *conn.hold.borrow_mut() = None;
            for f in frames {
                conn.out.push(Frame::Shared(f));
            }
            return Ok(count);
        }
        count += catch_up_native(shard, conn, since, replayed).await?;
        if conn.out.is_closing() {
            return Ok(count);
        }
    }
}

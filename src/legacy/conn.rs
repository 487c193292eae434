//! A legacy-protocol connection: the anonymous phase on the accepting
//! shard, then a session on the user's home shard.
//!
//! The session is an ordinary [`Conn`] registered with the home shard, so
//! owners, delivery, presence and the catch-up hold treat it exactly like a
//! native one; only its writer differs: it decodes each queued FlatBuffers
//! frame and writes the legacy JSON equivalent (or nothing: pushes the old
//! protocol has no words for, such as presence, are dropped). Requests the
//! shared machinery answers (sends, friend and group operations) carry a
//! connection-local `req_id`; the reply is matched to the legacy request it
//! answers through [`Ctx::pending`].
//!
//! Identity comes only from the login of the connection: `id` and `from`
//! fields in later requests are ignored.

use super::codec::{self, Request, Split, Splitter};
use crate::core::request::{Account, Request as CoreRequest, Target};
use crate::model::{ConvId, ConvKind, GroupId, MAX_USER_ID, Seq, UserId, group_conv, now_ms};
use crate::server::cmd::account::{self, LoginError};
use crate::server::cmd::friend::MAX_NOTE_CHARS;
use crate::server::cmd::{self};
use crate::server::hasher::Denied;
use crate::server::io::{self, Frame, Outbound, ReadHalf, SharedStream, WriteHalf, shutdown_now};
use crate::server::limits::{ConnSlot, source_key};
use crate::server::protocol::Protocol;
use crate::server::router::LocalFut;
use crate::server::session::{
    GroupInfo, HOLD_CAP, NativeReplies, Responder, Session, catch_up, go_live,
};
use crate::server::shard::{Conn, HandOff, Shard, ShardMsg};
use crate::store::{FriendKind, FriendRow, GroupRecord, Role, StoredMessage};
use crate::wire::{self, fb};
use ahash::AHashMap;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Legacy connections not (yet, or no longer) logged in, per source address
/// (an IPv4 address or an IPv6 /64), node-wide. One more is answered with an
/// error and closed. See docs/SECURITY.md.
pub const MAX_UNAUTH_PER_ADDR: usize = 64;
/// Largest object before login: a login or registration is well under 1 KiB
/// (names of at most 32 characters, passwords of at most 128 bytes, even
/// with every character escaped), so nothing larger is buffered for a
/// connection nobody has vouched for.
pub const MAX_PRELOGIN_OBJECT: usize = 4096;
/// An unauthenticated connection must log in within this many idle
/// timeouts (`--idle-timeout-secs`) of connecting (or of logging out).
pub const LOGIN_WINDOW_IDLES: u32 = 2;

/// Largest single coalesced write.
const MAX_WRITE: usize = 256 << 10;
/// Up to this many queued objects are written one `write` each.
const SEPARATE_WRITES: usize = 16;

/// Largest JSON object accepted. Escapes (`\"`, `\uXXXX`) make the JSON of
/// a message longer than its text, so the limit is a multiple of the frame
/// limit; the text itself is still held to the native body limit.
fn max_object(shard: &Shard) -> usize {
    shard.cfg.max_frame * 4 + 4096
}

/// The old cc_ChatServer JSON protocol, for `crate::serve` to register
/// on `--legacy-listen`.
#[derive(Debug, Default)]
pub struct Legacy {
    /// Unauthenticated connections per source (see [`source_key`]), for
    /// this node's listener.
    unauth: Unauth,
}

impl Legacy {
    pub fn new() -> Legacy {
        Legacy::default()
    }
}

impl Protocol for Legacy {
    fn name(&self) -> &'static str {
        "legacy JSON"
    }

    fn serve(
        self: Arc<Self>,
        shard: Rc<Shard>,
        stream: TcpStream,
        slot: ConnSlot,
    ) -> LocalFut<'static, ()> {
        Box::pin(handle_new(shard, stream, self, slot))
    }

    fn refusal(&self, why: &str) -> Vec<u8> {
        codec::error(0, 1, why, &[])
    }

    fn adopt(self: Arc<Self>, shard: Rc<Shard>, h: HandOff) {
        accept_handoff(shard, h, self)
    }
}

/// Old clients never ping and may sit idle for hours, so logged-in legacy
/// connections get no idle timeout between objects; TCP keepalive reaps
/// peers that vanished instead. (Before login, and in the middle of an
/// object, the idle timeout applies: see `pre_login` and `read_loop`.)
fn keepalive(stream: &TcpStream) {
    let fd = stream.as_raw_fd();
    let set = |level, opt, v: libc::c_int| {
        // SAFETY: setsockopt on a socket we own, with an int option value.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 6);
}

async fn handle_new(shard: Rc<Shard>, stream: TcpStream, me: Arc<Legacy>, slot: ConnSlot) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    keepalive(&stream);
    anonymous(shard, stream, Vec::new(), me, slot).await;
}

/// A legacy connection arriving from another shard after login.
fn accept_handoff(shard: Rc<Shard>, h: HandOff, me: Arc<Legacy>) {
    use std::os::fd::IntoRawFd;
    // SAFETY: the OwnedFd is a valid socket descriptor we own.
    let stream = unsafe { TcpStream::from_raw_fd(h.fd.into_raw_fd()) };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let slot = h.slot;
    crate::server::spawn_guarded(async move {
        if let Some((stream, pending)) =
            session(shard.clone(), stream, h.pending, h.user, h.name).await
        {
            anonymous(shard, stream, pending, me, slot).await;
        }
    });
}

/// Register and login, until a login moves the connection into a session.
/// After a logout (msgid 13) the old client shows its menu again on the same
/// connection, so the connection comes back here.
async fn anonymous(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    mut pending: Vec<u8>,
    me: Arc<Legacy>,
    slot: ConnSlot,
) {
    loop {
        let Some((s, user, name, rest)) = pre_login(&shard, stream, pending, &me.unauth).await
        else {
            return;
        };
        stream = s;
        let home = shard.home(user);
        if home == shard.id {
            match session(shard.clone(), stream, rest, user, name).await {
                Some((s, p)) => {
                    (stream, pending) = (s, p);
                    continue;
                }
                None => return,
            }
        }
        let Some(fd) = crate::server::conn::detach_fd(stream) else {
            return;
        };
        shard.send(
            home,
            ShardMsg::HandOff(Box::new(HandOff {
                proto: me,
                slot,
                fd,
                pending: rest,
                req_id: 0,
                user,
                name,
                token: String::new(),
                since: Vec::new(),
            })),
        );
        return;
    }
}

/// Unauthenticated legacy connections per source key (see [`source_key`]).
#[derive(Debug, Default, Clone)]
struct Unauth(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One unauthenticated connection counted against its source; released on
/// drop (login, close).
struct UnauthSlot(Unauth, IpAddr);

impl UnauthSlot {
    /// `None` when the source already has [`MAX_UNAUTH_PER_ADDR`].
    fn take(table: &Unauth, ip: IpAddr) -> Option<UnauthSlot> {
        let key = source_key(ip);
        let mut m = table.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= MAX_UNAUTH_PER_ADDR {
            return None;
        }
        *n += 1;
        Some(UnauthSlot(table.clone(), key))
    }
}

impl Drop for UnauthSlot {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// The anonymous phase: register and login requests until a login succeeds
/// (returns the stream, the user and the bytes after the login object), or
/// the connection ends. Bounded like the native anonymous phase, and more
/// (docs/SECURITY.md): a slot per source address, objects of at most
/// [`MAX_PRELOGIN_OBJECT`] bytes, closed after `--idle-timeout-secs` without
/// a byte and after [`LOGIN_WINDOW_IDLES`] of those without a login.
async fn pre_login(
    shard: &Rc<Shard>,
    mut stream: TcpStream,
    pending: Vec<u8>,
    unauth: &Unauth,
) -> Option<(TcpStream, UserId, Arc<str>, Vec<u8>)> {
    let close_with = |why: &str| codec::error(0, 1, why, &[]);
    let ip = stream.peer_addr().ok()?.ip();
    let Some(_slot) = UnauthSlot::take(unauth, ip) else {
        tracing::debug!(shard = shard.id, %ip, "legacy: too many unauthenticated connections");
        let why = format!(
            "too many connections from your address are waiting to log in \
             (at most {MAX_UNAUTH_PER_ADDR}); try again later"
        );
        let _ = stream.write_all(&close_with(&why)).await;
        return None;
    };
    let idle = shard.cfg.idle_timeout;
    let window = idle * LOGIN_WINDOW_IDLES;
    let deadline = Instant::now() + window;
    let mut sp = Splitter::new(MAX_PRELOGIN_OBJECT);
    sp.push(&pending);
    loop {
        loop {
            let o = match sp.next_object() {
                Split::NeedMore => break,
                Split::Garbage(why) => {
                    let why = if sp.over_limit() {
                        format!(
                            "object larger than {} bytes before login (log in first)",
                            sp.max()
                        )
                    } else {
                        why
                    };
                    let _ = stream.write_all(&close_with(&why)).await;
                    return None;
                }
                Split::Object(o) => o,
            };
            let (reply, login) = match codec::parse_request(&o) {
                Err(b) => (Some(codec::bad_request(&b)), None),
                Ok(Request::Register { name, password }) => {
                    (Some(register(shard, &name, &password).await), None)
                }
                Ok(Request::Login { id, password }) => {
                    match login(shard, id, password, Some(ip)).await {
                        Ok(who) => (None, Some(who)),
                        Err(reply) => (Some(reply), None),
                    }
                }
                // Logging out while logged out: nothing to do, as before.
                Ok(Request::Logout) => (None, None),
                Ok(r) => (
                    Some(codec::error(
                        codec::reply_msgid(r.msgid()),
                        1,
                        "not logged in",
                        &[],
                    )),
                    None,
                ),
            };
            if let Some(r) = reply
                && stream.write_all(&r).await.is_err()
            {
                return None;
            }
            if let Some((user, name)) = login {
                // Logged-in sessions set their own read timeouts.
                let _ = stream.set_read_timeout(None);
                return Some((stream, user, name, sp.pending().to_vec()));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let why = format!("not logged in within {} s", window.as_secs());
            let _ = stream.write_all(&close_with(&why)).await;
            return None;
        }
        let _ = stream.set_read_timeout(Some(left.min(idle)));
        sp.shrink_if_idle();
        match io::read_pooled(&mut stream, |b| sp.push(b)).await {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                let why = if Instant::now() >= deadline {
                    format!("not logged in within {} s", window.as_secs())
                } else {
                    format!("idle timeout: nothing received for {} s", idle.as_secs())
                };
                let _ = stream.write_all(&close_with(&why)).await;
                return None;
            }
            Err(_) => return None,
        }
    }
}

fn storage_error(msgid: i64) -> Vec<u8> {
    codec::error(msgid, 3, "storage unavailable, retry", &[])
}

/// Login by numeric id: the one password check (`cmd::account`), with the
/// old protocol's replies. A wrong id and a wrong password look the same.
async fn login(
    shard: &Rc<Shard>,
    id: u64,
    password: String,
    peer: Option<IpAddr>,
) -> Result<(UserId, Arc<str>), Vec<u8>> {
    match account::check_password(shard, Account::Id(id), &password, peer).await {
        Ok(r) => Ok((r.id, r.username.into())),
        Err(LoginError::BadCredentials) => Err(codec::error(
            codec::LOGIN_ACK,
            1,
            codec::text::BAD_CREDENTIALS,
            &[],
        )),
        Err(LoginError::Denied(d)) => Err(refused(codec::LOGIN_ACK, d)),
        Err(LoginError::Storage) => Err(storage_error(codec::LOGIN_ACK)),
        Err(LoginError::Disabled) => Err(codec::error(
            codec::LOGIN_ACK,
            1,
            codec::text::ACCOUNT_DISABLED,
            &[],
        )),
    }
}

/// A login or registration refused before hashing: throttled (`errno` 1,
/// with when to retry) or the hashing queue is full (`errno` 3, retry).
fn refused(msgid: i64, d: Denied) -> Vec<u8> {
    let errno = match d {
        Denied::Throttled(_) => 1,
        Denied::Busy => 3,
    };
    codec::error(msgid, errno, &d.text(), &[])
}

/// Registration: the native rules for names and passwords (`cmd::account`),
/// so every account can also log in on the native protocol.
async fn register(shard: &Rc<Shard>, name: &str, password: &str) -> Vec<u8> {
    match account::register(shard, name, password).await {
        Ok(id) => codec::register_ok(id),
        Err(r) => register_error(r.code, &r.text),
    }
}

fn register_error(code: fb::ErrorCode, text: &str) -> Vec<u8> {
    match code {
        fb::ErrorCode::RateLimited => codec::error(codec::REGISTER_ACK, 3, text, &[]),
        fb::ErrorCode::Internal => storage_error(codec::REGISTER_ACK),
        fb::ErrorCode::InvalidPassword => codec::error(
            codec::REGISTER_ACK,
            1,
            &codec::text::short_password(text),
            &[],
        ),
        _ => codec::error(
            codec::REGISTER_ACK,
            1,
            &codec::text::translate(code, text),
            &[],
        ),
    }
}

/// A legacy request waiting for its answer (a FlatBuffers frame on the
/// session queue, from the session or from an owner), keyed by the
/// connection-local `req_id` it was handled under.
enum Pending {
    /// Chat (5 or 9): success is silent, an error is reported.
    Chat { msgid: i64, group: GroupId },
    /// Add friend (6), a friend request with the old reply: first an
    /// accept of the target's request to us (mutual consent), and when there
    /// is none, a request of our own (see [`add_friend_reply`]).
    AddFriend {
        friend: UserId,
        name: String,
        note: String,
        step: AddStep,
    },
    /// Register (3) while logged in.
    Register,
    /// Create group (7); the name labels later group chat pushes.
    CreateGroup,
    /// Join (8), leave (10), dissolve (11). `name` to remember on join.
    GroupOp {
        msgid: i64,
        group: GroupId,
        name: String,
    },
    /// Group info (12); name and description are filled in by the session's
    /// answer (see [`LegacyReplies::group_info`]).
    GroupInfo {
        group: GroupId,
        name: String,
        desc: String,
    },
}

/// Where an add-friend (msgid 6) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddStep {
    /// `PairAction::Respond{accept}`: succeeds only if the target asked us.
    Accept,
    /// `PairAction::Request`: a request the target may accept or reject.
    Ask,
}

/// The old protocol's codec state for one session, shared by its reader
/// (requests in) and writer (frames out, as JSON).
struct Ctx {
    user: UserId,
    pending: RefCell<AHashMap<u64, Pending>>,
    /// Group names for the `groupname` of group chat pushes (a stored
    /// message does not carry it): groups at login, created or joined since.
    group_names: RefCell<AHashMap<GroupId, String>>,
    next_req: Cell<u64>,
    /// `client_msg_id`s: a random base per session plus a counter, so ids
    /// are unique per sender across sessions (the owner dedups on them).
    msg_base: u64,
    msg_ctr: Cell<u64>,
    /// Logout: the writer leaves the socket open for the anonymous phase.
    keep_open: Cell<bool>,
    /// A write failed: the socket is dead.
    broken: Cell<bool>,
}

impl Ctx {
    /// A fresh `req_id` for a request whose answer `p` will translate.
    fn expect(&self, p: Pending) -> u64 {
        let req_id = self.next_req.get();
        self.next_req.set(req_id + 1);
        self.pending.borrow_mut().insert(req_id, p);
        req_id
    }

    fn next_cmid(&self) -> u64 {
        let n = self.msg_ctr.get() + 1;
        self.msg_ctr.set(n);
        self.msg_base.wrapping_add(n)
    }
}

/// The session's own answers for a legacy connection: the native frames
/// (translated by the writer like every other frame), plus what the old
/// replies need that the frames do not carry.
struct LegacyReplies {
    native: NativeReplies,
    ctx: Rc<Ctx>,
}

impl Responder for LegacyReplies {
    fn ok(&self, req_id: u64) {
        self.native.ok(req_id)
    }
    fn error(&self, req_id: u64, code: fb::ErrorCode, text: &str) {
        self.native.error(req_id, code, text)
    }
    fn pong(&self, req_id: u64, nonce: u64) {
        self.native.pong(req_id, nonce)
    }
    fn register_ok(&self, req_id: u64, user: UserId) {
        self.native.register_ok(req_id, user)
    }
    fn user_list(&self, req_id: u64, items: &[(UserId, &str, bool)], next: UserId) {
        self.native.user_list(req_id, items, next)
    }
    fn friend_list(
        &self,
        req_id: u64,
        rows: &[FriendRow],
        online: &dyn Fn(UserId) -> bool,
        next: UserId,
    ) {
        self.native.friend_list(req_id, rows, online, next)
    }
    fn group_created(&self, req_id: u64, group: GroupId, name: &str) {
        self.ctx
            .group_names
            .borrow_mut()
            .insert(group, name.to_string());
        self.native.group_created(req_id, group, name)
    }
    fn group_list(&self, req_id: u64, groups: &[(GroupRecord, Role)], next: GroupId) {
        self.native.group_list(req_id, groups, next)
    }
    fn messages(&self, req_id: u64, msgs: &[StoredMessage]) {
        self.native.messages(req_id, msgs)
    }
    fn group_info(&self, req_id: u64, info: &GroupInfo<'_>, online: &dyn Fn(UserId) -> bool) {
        if let Some(Pending::GroupInfo { name, desc, .. }) =
            self.ctx.pending.borrow_mut().get_mut(&req_id)
        {
            *name = info.name.to_string();
            *desc = info.desc.to_string();
        }
        self.native.group_info(req_id, info, online)
    }
}

/// The logged-in life of a legacy connection on its user's home shard.
/// Returns the stream (and unread bytes) after a logout, `None` once the
/// connection is gone.
async fn session(
    shard: Rc<Shard>,
    stream: TcpStream,
    pending: Vec<u8>,
    user: UserId,
    name: Arc<str>,
) -> Option<(TcpStream, Vec<u8>)> {
    if let Some(why) = crate::server::session::too_many_sessions(&shard, user) {
        // Refused like a failed login: the connection stays at the menu.
        let mut stream = stream;
        let reply = codec::error(codec::LOGIN_ACK, 1, &why, &[]);
        return stream
            .write_all(&reply)
            .await
            .ok()
            .map(|_| (stream, pending));
    }
    let remote = stream.peer_addr().ok().map(tracing::field::display);
    tracing::info!(user, name = %name, shard = shard.id, remote, protocol = "legacy", "session started");
    let stream: SharedStream = Rc::new(RefCell::new(stream));
    let out = Rc::new(Outbound::new(shard.cfg.out_limit));
    let conn = Rc::new(Conn::new(
        shard.new_conn_id(),
        user,
        out.clone(),
        HOLD_CAP,
        None,
    ));
    let ctx = Rc::new(Ctx {
        user,
        pending: RefCell::new(AHashMap::new()),
        group_names: RefCell::new(AHashMap::new()),
        next_req: Cell::new(1),
        msg_base: (rand::random::<u64>() << 24) | 1 << 23,
        msg_ctr: Cell::new(0),
        keep_open: Cell::new(false),
        broken: Cell::new(false),
    });
    let sess = Rc::new(Session {
        conn: conn.clone(),
        name,
        token: None,
        reply: Rc::new(LegacyReplies {
            native: NativeReplies {
                shard: shard.clone(),
                out,
            },
            ctx: ctx.clone(),
        }),
    });
    crate::server::session::register(&shard, &conn).await;
    // The login reply goes out first, before anything queued meanwhile (the
    // old client takes the first read after login as the reply), so it is
    // written here and the writer starts only afterwards.
    let started = match login_reply(&shard, &sess, &ctx).await {
        Ok((reply, mut replayed)) => {
            let ok = WriteHalf(stream.clone()).write_all(&reply).await.is_ok();
            if ok {
                // The legacy client cannot ack: on the socket counts as delivered.
                advance(&shard, user, replayed.iter().map(|(c, s)| (*c, *s)));
                if go_live(&shard, &conn, &[], &mut replayed).await.is_err() {
                    conn.out.close();
                }
            }
            ok
        }
        Err(reply) => {
            let _ = WriteHalf(stream.clone()).write_all(&reply).await;
            false
        }
    };
    let writer = glommio::spawn_local(writer_loop(
        shard.clone(),
        sess.clone(),
        ctx.clone(),
        stream.clone(),
    ));
    let mut sp = Splitter::new(max_object(&shard));
    sp.push(&pending);
    let logout = started && read_loop(&shard, &sess, &ctx, &stream, &mut sp).await;
    ctx.keep_open.set(logout);
    conn.out.close();
    writer.await;
    shard.unregister(&conn);
    tracing::info!(
        user,
        shard = shard.id,
        remote,
        protocol = "legacy",
        reason = if logout {
            "logout"
        } else {
            crate::server::session::end_reason(&shard, &conn)
        },
        "session ended"
    );
    if !logout || ctx.broken.get() {
        shutdown_now(&stream);
        return None;
    }
    match Rc::try_unwrap(stream) {
        Ok(s) => Some((s.into_inner(), sp.pending().to_vec())),
        Err(s) => {
            shutdown_now(&s);
            None
        }
    }
}

/// Moves `user`'s delivered cursors forward (batched to the store by the
/// shard's cursor flush, as native acks are).
fn advance(shard: &Shard, user: UserId, items: impl IntoIterator<Item = (ConvId, Seq)>) {
    let mut cursors = shard.cursors.borrow_mut();
    for (conv, seq) in items {
        let e = cursors.entry((user, conv)).or_insert(0);
        *e = (*e).max(seq);
    }
}

/// Builds the login reply: catch-up as `offlinemsg`, friends, groups.
async fn login_reply(
    shard: &Rc<Shard>,
    sess: &Session,
    ctx: &Ctx,
) -> Result<(Vec<u8>, AHashMap<ConvId, Seq>), Vec<u8>> {
    let user = ctx.user;
    shard.sync_point().await;
    let lists = shard
        .blocking(move |s| {
            let friends = s.friends_of(user)?;
            let mut groups = Vec::new();
            for (g, _) in s.groups_of(user)? {
                let members = s.group_members(g.id)?;
                let desc = s.group_desc(g.id)?;
                groups.push((g, desc, members));
            }
            Ok((friends, groups))
        })
        .await;
    let mut replayed = AHashMap::new();
    let mut msgs: Vec<StoredMessage> = Vec::new();
    let caught_up = catch_up(
        shard,
        &sess.conn,
        &[],
        &mut replayed,
        async |m: &[StoredMessage]| msgs.extend_from_slice(m),
    )
    .await;
    let (Ok((friends, groups)), Ok(_)) = (lists, caught_up) else {
        return Err(storage_error(codec::LOGIN_ACK));
    };
    let friends: Vec<String> = friends
        .iter()
        .filter(|f| f.kind == FriendKind::Friend)
        .map(|f| codec::friend_entry(f.user_id, &f.username, shard.is_online(f.user_id)))
        .collect();
    let mut names = ctx.group_names.borrow_mut();
    let groups: Vec<String> = groups
        .into_iter()
        .map(|(g, desc, members)| {
            names.insert(g.id, g.name.clone());
            let users = members
                .iter()
                .map(|m| member_entry(shard, m.user_id, &m.username, m.role))
                .collect();
            codec::group_entry(g.id, &g.name, &desc, users)
        })
        .collect();
    drop(names);
    let offline: Vec<String> = msgs
        .iter()
        .filter_map(|m| {
            chat_json(
                ctx,
                m.conv,
                m.sender,
                &m.sender_name,
                m.timestamp_ms,
                &m.body,
            )
        })
        .map(|v| v.to_string())
        .collect();
    Ok((
        codec::login_ok(user, &sess.name, offline, friends, groups),
        replayed,
    ))
}

fn member_entry(shard: &Shard, id: UserId, name: &str, role: crate::store::Role) -> String {
    codec::member_entry(
        id,
        name,
        role == crate::store::Role::Owner,
        shard.is_online(id),
    )
}

/// The legacy object for a chat message, or `None` for the user's own
/// messages (the old server never echoed them back).
fn chat_json(
    ctx: &Ctx,
    conv: ConvId,
    sender: UserId,
    sender_name: &str,
    ts: u64,
    body: &str,
) -> Option<Value> {
    if sender == ctx.user {
        return None;
    }
    Some(match crate::model::conv_kind(conv) {
        ConvKind::Group(g) => {
            let names = ctx.group_names.borrow();
            let gname = names.get(&g).map(String::as_str).unwrap_or("");
            codec::group_chat(sender, g, gname, sender_name, ts, body)
        }
        ConvKind::Direct { .. } => codec::one_chat(sender, ctx.user, sender_name, ts, body),
    })
}

/// Reads and handles requests; true when the client logged out (the
/// connection then returns to the anonymous phase).
async fn read_loop(
    shard: &Rc<Shard>,
    sess: &Session,
    ctx: &Ctx,
    stream: &SharedStream,
    sp: &mut Splitter,
) -> bool {
    let conn = &sess.conn;
    let mut rd = ReadHalf(stream.clone());
    let idle = shard.cfg.idle_timeout;
    // When the object now buffered in part began (after the last complete one).
    let mut partial_since: Option<Instant> = None;
    loop {
        loop {
            match sp.next_object() {
                Split::NeedMore => break,
                Split::Garbage(why) => {
                    conn.out.push(Frame::Raw(codec::error(0, 1, &why, &[])));
                    return false;
                }
                Split::Object(o) => match codec::parse_request(&o) {
                    Err(b) => {
                        conn.out.push(Frame::Raw(codec::bad_request(&b)));
                    }
                    Ok(Request::Logout) => return true,
                    Ok(r) => request(shard, sess, ctx, r).await,
                },
            }
            partial_since = None;
            if conn.out.is_closing() {
                return false;
            }
        }
        // Backpressure: stop reading while this shard's outbox is saturated.
        while shard.outbox_full() {
            shard.outbox_room.wait().await;
        }
        // No idle timeout between objects (old clients never ping), but an
        // object once begun must be complete within the idle timeout, so a
        // half-sent object cannot pin its buffer forever.
        let timeout = if sp.in_object() {
            let since = *partial_since.get_or_insert_with(Instant::now);
            let left = (since + idle).saturating_duration_since(Instant::now());
            if left.is_zero() {
                conn.out.push(Frame::Raw(incomplete_object(idle)));
                return false;
            }
            Some(left)
        } else {
            sp.shrink_if_idle();
            None
        };
        let _ = stream.borrow().set_read_timeout(timeout);
        match io::read_pooled(&mut rd, |b| sp.push(b)).await {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                conn.out.push(Frame::Raw(incomplete_object(idle)));
                return false;
            }
            Err(_) => return false,
        }
    }
}

fn incomplete_object(idle: Duration) -> Vec<u8> {
    let why = format!("object not completed within {} s", idle.as_secs());
    codec::error(0, 1, &why, &[])
}

/// One request of a logged-in legacy client: translated into the one
/// request model and handled by the shared session (`cmd::dispatch`); the
/// answer comes back as a frame that [`translate`] turns into the old reply.
async fn request(shard: &Rc<Shard>, sess: &Session, ctx: &Ctx, r: Request) {
    let me = ctx.user;
    let raw = |b: Vec<u8>| {
        sess.conn.out.push(Frame::Raw(b));
    };
    let gid = |g: GroupId| [("groupid", Value::from(g))];
    match r {
        Request::Login { .. } => raw(codec::error(
            codec::LOGIN_ACK,
            2,
            "this connection is already logged in",
            &[],
        )),
        Request::Logout => {} // handled by the read loop
        Request::Register { name, password } => {
            let req_id = ctx.expect(Pending::Register);
            let req = CoreRequest::Register {
                username: &name,
                password: &password,
            };
            cmd::dispatch(shard, sess, req_id, req).await;
        }
        Request::OneChat { to, msg } => {
            let req_id = ctx.expect(Pending::Chat {
                msgid: codec::ONE_CHAT,
                group: 0,
            });
            let req = CoreRequest::Send {
                to: Target::User(to),
                client_msg_id: ctx.next_cmid(),
                body: &msg,
            };
            cmd::dispatch(shard, sess, req_id, req).await;
        }
        Request::GroupChat { group, msg } => {
            let req_id = ctx.expect(Pending::Chat {
                msgid: codec::GROUP_CHAT,
                group,
            });
            let req = CoreRequest::Send {
                to: Target::Group(group),
                client_msg_id: ctx.next_cmid(),
                body: &msg,
            };
            cmd::dispatch(shard, sess, req_id, req).await;
        }
        Request::AddFriend { to, note } => {
            let m = codec::ADD_FRIEND;
            // The old reply names the friend: look them up first (the
            // session validates the id the same way for every protocol).
            let name = if to == 0 || to > MAX_USER_ID || to == me {
                String::new()
            } else {
                match shard.blocking(move |s| s.user_by_id(to)).await {
                    Ok(Some(u)) => u.username,
                    Ok(None) => {
                        return raw(codec::error(m, 1, codec::text::NO_SUCH_USER, &[]));
                    }
                    Err(_) => return raw(storage_error(m)),
                }
            };
            let note: String = note.chars().take(MAX_NOTE_CHARS).collect();
            let req_id = ctx.expect(Pending::AddFriend {
                friend: to,
                name,
                note: note.clone(),
                step: AddStep::Accept,
            });
            let req = CoreRequest::FriendAdd {
                user: to,
                note: &note,
            };
            cmd::dispatch(shard, sess, req_id, req).await;
        }
        Request::CreateGroup { name, desc } => {
            let req_id = ctx.expect(Pending::CreateGroup);
            // Old clients create public groups (their join has no invitations).
            let req = CoreRequest::CreateGroup {
                name: &name,
                desc: &desc,
                private: false,
                full_history: false,
            };
            cmd::dispatch(shard, sess, req_id, req).await;
        }
        Request::JoinGroup { group }
        | Request::LeaveGroup { group }
        | Request::DissolveGroup { group } => {
            let (msgid, req) = match r {
                Request::JoinGroup { .. } => (codec::JOIN_GROUP, CoreRequest::JoinGroup { group }),
                Request::LeaveGroup { .. } => {
                    (codec::LEAVE_GROUP, CoreRequest::LeaveGroup { group })
                }
                _ => (codec::DISSOLVE_GROUP, CoreRequest::DissolveGroup { group }),
            };
            // The name is only needed to label later group chat pushes.
            let name = if msgid == codec::JOIN_GROUP && group != 0 && group_conv(group) == group {
                match shard.blocking(move |s| s.get_group(group)).await {
                    Ok(Some(g)) => g.name,
                    Ok(None) => return raw(codec::error(msgid, 1, "no such group", &gid(group))),
                    Err(_) => return raw(storage_error(msgid)),
                }
            } else {
                String::new()
            };
            let req_id = ctx.expect(Pending::GroupOp { msgid, group, name });
            cmd::dispatch(shard, sess, req_id, req).await;
        }
        Request::GroupInfo { group } => {
            let req_id = ctx.expect(Pending::GroupInfo {
                group,
                name: String::new(),
                desc: String::new(),
            });
            cmd::dispatch(shard, sess, req_id, CoreRequest::GroupInfo { group }).await;
        }
    }
}

/// Drains the session's queue into the socket, translating FlatBuffers
/// frames into legacy JSON. Chat messages written are the legacy client's
/// delivery: their cursors advance once the write succeeded.
async fn writer_loop(shard: Rc<Shard>, sess: Rc<Session>, ctx: Rc<Ctx>, stream: SharedStream) {
    let conn = sess.conn.clone();
    let mut w = WriteHalf(stream.clone());
    // Allocated while there is something to write: an idle connection
    // holds no write buffer.
    let mut buf = Vec::new();
    let mut delivered: Vec<(ConvId, Seq)> = Vec::new();
    // Object boundaries in `buf`.
    let mut cuts: Vec<usize> = Vec::new();
    loop {
        buf.clear();
        delivered.clear();
        cuts.clear();
        while buf.len() < MAX_WRITE {
            let Some(f) = conn.out.pop() else { break };
            match f {
                Frame::Raw(b) => {
                    buf.extend_from_slice(&b);
                    cuts.push(buf.len());
                }
                f => translate(
                    &shard,
                    &sess,
                    &ctx,
                    f.bytes(),
                    &mut buf,
                    &mut cuts,
                    &mut delivered,
                ),
            }
        }
        if buf.is_empty() {
            // Nothing to write (the queue is empty, or held only frames
            // without a legacy form, such as the user's own messages).
            advance(&shard, ctx.user, delivered.drain(..));
            conn.out.drained.notify();
            if conn.out.is_closing() {
                break;
            }
            buf = Vec::new();
            conn.out.release_if_empty();
            conn.out.ready.wait().await;
            continue;
        }
        // The old console client takes one read for one object, so a few
        // objects go out in separate writes (one segment each, nodelay);
        // a burst is coalesced, where that client would misread anyway.
        let ok = if cuts.len() <= SEPARATE_WRITES {
            let mut start = 0;
            let mut ok = true;
            for &end in &cuts {
                if w.write_all(&buf[start..end]).await.is_err() {
                    ok = false;
                    break;
                }
                start = end;
            }
            ok
        } else {
            w.write_all(&buf).await.is_ok()
        };
        if !ok {
            ctx.broken.set(true);
            conn.out.close();
            break;
        }
        advance(&shard, ctx.user, delivered.drain(..));
        conn.out.drained.notify();
        if buf.capacity() > 1 << 20 {
            buf = Vec::new();
        }
    }
    conn.out.discard();
    if ctx.broken.get() || !ctx.keep_open.get() {
        // Wakes the reader out of its read.
        shutdown_now(&stream);
    }
}

/// What an owner's answer to a step of an add-friend (msgid 6) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddOutcome {
    /// Friends (just now by consent, or already): reply with their state.
    Friends,
    /// A request is pending on their side: reply without their state.
    Pending,
    /// They had not asked us: send our own request.
    AskNext,
    /// Refused (blocked, no such user, storage): `errno` 1.
    Failed,
}

/// Decides the reply to an add-friend step from the owner's answer (`None`:
/// success, else the error code). The target's online state is only ever
/// shown to a friend.
fn add_friend_reply(step: AddStep, err: Option<fb::ErrorCode>) -> AddOutcome {
    match (step, err) {
        (AddStep::Accept, None) => AddOutcome::Friends,
        (AddStep::Accept, Some(fb::ErrorCode::NoSuchRequest)) => AddOutcome::AskNext,
        (AddStep::Ask, None) => AddOutcome::Pending,
        // Adding a friend again is harmless, as in the old server.
        (AddStep::Ask, Some(fb::ErrorCode::AlreadyFriends)) => AddOutcome::Friends,
        (_, Some(_)) => AddOutcome::Failed,
    }
}

/// Appends the legacy JSON for one queued FlatBuffers frame (possibly
/// nothing) and records the chat messages it carries.
fn translate(
    shard: &Shard,
    sess: &Session,
    ctx: &Ctx,
    frame: &[u8],
    out: &mut Vec<u8>,
    cuts: &mut Vec<usize>,
    delivered: &mut Vec<(ConvId, Seq)>,
) {
    let Ok(env) = wire::decode(frame) else { return };
    let req_id = env.req_id();
    if req_id != 0 {
        let Some(p) = ctx.pending.borrow_mut().remove(&req_id) else {
            return;
        };
        let error = env.body_as_error_reply();
        let code = error.map(|e| e.code());
        // The old protocol's words for an error: its own texts where it had
        // them, `errno` 3 for a retryable storage failure.
        let err = error.map(|e| codec::text::translate(e.code(), e.message().unwrap_or("error")));
        let fail = |msgid: i64, extra: &[(&str, Value)]| -> Vec<u8> {
            let errno = if code == Some(fb::ErrorCode::Internal) {
                3
            } else {
                1
            };
            codec::error(msgid, errno, err.as_deref().unwrap_or("error"), extra)
        };
        let gid = |g: GroupId| [("groupid", Value::from(g))];
        let bytes = match p {
            Pending::Chat { msgid, group } => match err {
                None => return,
                Some(_) if group != 0 => fail(msgid, &gid(group)),
                Some(_) => fail(msgid, &[]),
            },
            Pending::AddFriend {
                friend,
                name,
                note,
                step,
            } => match add_friend_reply(step, code) {
                AddOutcome::Friends => codec::add_friend_ok(&name, shard.is_online(friend)),
                AddOutcome::Pending => codec::add_friend_pending(&name),
                AddOutcome::AskNext => {
                    let req_id = ctx.expect(Pending::AddFriend {
                        friend,
                        name,
                        note: note.clone(),
                        step: AddStep::Ask,
                    });
                    cmd::friend::request(shard, sess, req_id, friend, &note);
                    return;
                }
                AddOutcome::Failed => fail(codec::ADD_FRIEND, &[]),
            },
            Pending::Register => match env.body_as_register_ok() {
                Some(r) => codec::register_ok(r.user_id()),
                None => register_error(
                    code.unwrap_or(fb::ErrorCode::Internal),
                    error.and_then(|e| e.message()).unwrap_or("error"),
                ),
            },
            Pending::CreateGroup => match env.body_as_group_created() {
                Some(g) => codec::create_group_ok(g.group_id()),
                None => fail(codec::CREATE_GROUP, &[]),
            },
            Pending::GroupOp { msgid, group, name } => match err {
                None => {
                    let text = match msgid {
                        codec::JOIN_GROUP => {
                            ctx.group_names.borrow_mut().insert(group, name);
                            "join group success"
                        }
                        codec::LEAVE_GROUP => "leave group success",
                        _ => "dissolve group success",
                    };
                    codec::group_op_ok(msgid, group, text)
                }
                Some(_) => fail(msgid, &gid(group)),
            },
            Pending::GroupInfo { group, name, desc } => match env.body_as_member_list() {
                Some(ml) => {
                    let users = ml
                        .members()
                        .map(|ms| {
                            ms.iter()
                                .map(|m| {
                                    codec::member_entry(
                                        m.user_id(),
                                        m.username().unwrap_or(""),
                                        m.role() == fb::Role::Owner,
                                        m.online(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    codec::group_info(group, &name, &desc, users)
                }
                None => fail(codec::GROUP_INFO, &gid(group)),
            },
        };
        out.extend_from_slice(&bytes);
        cuts.push(out.len());
        return;
    }
    if let Some(ms) = env.body_as_messages().and_then(|m| m.messages()) {
        for m in ms.iter() {
            delivered.push((m.conversation(), m.seq()));
            if let Some(v) = chat_json(
                ctx,
                m.conversation(),
                m.sender(),
                m.sender_name().unwrap_or(""),
                m.timestamp_ms(),
                m.body().unwrap_or(""),
            ) {
                out.extend_from_slice(&codec::to_bytes(&v));
                cuts.push(out.len());
            }
        }
        return;
    }
    // A request to the user, or the acceptance of the user's own: both are
    // the old msgid 6 object (the old client has one word for both; adding
    // the sender back accepts a request and is harmless after an accept).
    if let Some(ev) = env.body_as_friend_event() {
        let note = ev.note().unwrap_or("");
        let msg = match ev.kind() {
            fb::FriendEventKind::Requested => note,
            fb::FriendEventKind::Accepted if note.is_empty() => "accepted your friend request",
            fb::FriendEventKind::Accepted => note,
            _ => return,
        };
        out.extend_from_slice(&codec::friend_request(
            ev.user_id(),
            ctx.user,
            ev.username().unwrap_or(""),
            now_ms(),
            msg,
        ));
        cuts.push(out.len());
    }
    // The server ends the session (an operator's kick or disable, shutdown,
    // idle): the old protocol's closing object, `{msgid:0, errno:1, errmsg}`,
    // as for its own pre-login limits.
    if let Some(g) = env.body_as_goodbye() {
        let text = match g.code() {
            fb::ErrorCode::BadToken => codec::text::KICKED.to_string(),
            code => codec::text::translate(code, g.message().unwrap_or("")),
        };
        out.extend_from_slice(&codec::error(0, 1, &text, &[]));
        cuts.push(out.len());
    }
    // Presence, group events, SyncDone...: no legacy equivalent.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_friend_outcomes_never_show_presence_to_a_stranger() {
        use fb::ErrorCode as E;
        use {AddOutcome as O, AddStep as S};
        // Only these two outcomes show the target's state, and both mean
        // the two are friends.
        assert_eq!(add_friend_reply(S::Accept, None), O::Friends);
        assert_eq!(
            add_friend_reply(S::Ask, Some(E::AlreadyFriends)),
            O::Friends
        );
        assert_eq!(
            add_friend_reply(S::Accept, Some(E::NoSuchRequest)),
            O::AskNext
        );
        assert_eq!(add_friend_reply(S::Ask, None), O::Pending);
        for e in [E::Blocked, E::NoSuchUser, E::Internal, E::SelfTarget] {
            assert_eq!(add_friend_reply(S::Accept, Some(e)), O::Failed);
            assert_eq!(add_friend_reply(S::Ask, Some(e)), O::Failed);
        }
        // A missing request on the second step is an error, not a loop.
        assert_eq!(add_friend_reply(S::Ask, Some(E::NoSuchRequest)), O::Failed);
    }

    #[test]
    fn unauth_slots_are_capped_and_released() {
        let table = Unauth::default();
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        let slots: Vec<_> = (0..MAX_UNAUTH_PER_ADDR)
            .map(|_| UnauthSlot::take(&table, ip).expect("under the cap"))
            .collect();
        assert!(UnauthSlot::take(&table, ip).is_none());
        assert!(UnauthSlot::take(&table, "192.0.2.78".parse().unwrap()).is_some());
        // Another node's table is another count.
        assert!(UnauthSlot::take(&Unauth::default(), ip).is_some());
        drop(slots);
        assert!(UnauthSlot::take(&table, ip).is_some());
        let m = table.0.lock().unwrap();
        assert!(!m.contains_key(&ip), "released entries are removed");
    }
}

//! Connections: the anonymous phase on the accepting shard, then the
//! logged-in session on the user's home shard.
//!
//! After authentication the socket moves to the user's home shard (the fd
//! is duplicated, the remainder of the read buffer travels with it), so all
//! of a user's connections, presence and cursors live on one shard and
//! delivering to a user is one hop from the conversation owner.

use super::auth;
use super::io::{self, Frame, Outbound, ReadHalf, SharedStream};
use super::shard::{Conn, HandOff, Origin, OwnerOp, Shard, ShardMsg};
use crate::core::group::GroupAction;
use crate::core::pair::PairAction;
use crate::core::session::{Gate, Phase, gate};
use crate::core::sync;
use crate::core::{Reject, validate};
use crate::model::{ConvId, ConvKind, MAX_USER_ID, Seq, UserId, direct_peer, owner_shard};
use crate::store::{FriendKind, StoreError};
use crate::wire::{self, FrameBuf, FrameError, PROTOCOL_VERSION, fb};
use ahash::AHashMap;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Live pushes held per session while it replays (then it replays again).
const HOLD_CAP: usize = 4096;
/// Messages per catch-up page.
const PAGE: u32 = 256;
/// Catch-up pauses while this many bytes wait for the socket.
const REPLAY_HIGH_WATER: usize = 1 << 20;

/// Who a connection authenticated as.
struct Login {
    user: UserId,
    name: Arc<str>,
    token: String,
    req_id: u64,
    since: Vec<(ConvId, Seq)>,
}

enum Next {
    Continue,
    Close,
}

fn frame_error_reply(shard: &Shard, e: FrameError) -> Vec<u8> {
    let mut enc = shard.enc.borrow_mut();
    match e {
        FrameError::TooLarge { .. } => enc
            .error(0, fb::ErrorCode::FrameTooLarge, &e.to_string())
            .to_vec(),
        FrameError::Empty => enc
            .error(0, fb::ErrorCode::Malformed, "empty frame")
            .to_vec(),
    }
}

/// Registers a logged-in connection on its home shard. For the user's first
/// session it also records them in the cluster registry (awaited: it must
/// precede the catch-up query, see `ClusterShard::register_user`) and, in
/// the background, loads their friends and announces them online.
pub(crate) async fn register_session(shard: &Rc<Shard>, conn: &Rc<Conn>) {
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

/// What one read from a socket brought.
pub(crate) enum Filled {
    Data,
    /// EOF or an error: the peer is gone.
    Closed,
    /// Nothing arrived within the idle timeout (the stream's read timeout).
    IdleTimeout,
}

/// Reads more bytes into `fbuf` (which keeps its buffer small when idle).
pub(crate) async fn fill(
    r: &mut (impl futures_lite::AsyncRead + Unpin),
    fbuf: &mut FrameBuf,
) -> Filled {
    fbuf.shrink_if_idle();
    match r.read(fbuf.spare(1024)).await {
        Ok(0) => Filled::Closed,
        Ok(n) => {
            fbuf.filled(n);
            Filled::Data
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Filled::IdleTimeout,
        Err(_) => Filled::Closed,
    }
}

pub(crate) fn idle_goodbye(shard: &Shard) -> Vec<u8> {
    shard
        .enc
        .borrow_mut()
        .goodbye(fb::ErrorCode::IdleTimeout, "idle timeout")
        .to_vec()
}

/// Takes the socket away from this executor for another shard: glommio's
/// `TcpStream` has `FromRawFd` but no `IntoRawFd`, so the descriptor is
/// duplicated and the stream (closing only its own descriptor) dropped.
pub(crate) fn detach_fd(stream: TcpStream) -> Option<OwnedFd> {
    // SAFETY: dup returns a new descriptor that we own from here on.
    let dup = unsafe { libc::dup(stream.as_raw_fd()) };
    drop(stream);
    (dup >= 0).then(|| unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Serves a freshly accepted connection until it logs in (then hands it to
/// the session) or goes away.
pub async fn handle_new(shard: Rc<Shard>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(shard.cfg.idle_timeout));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let mut fbuf = FrameBuf::new(shard.cfg.max_frame);
    let mut phase = Phase::AwaitHello;
    loop {
        // Every complete frame already buffered, in order.
        loop {
            let range = match fbuf.next_frame() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    let f = frame_error_reply(&shard, e);
                    let _ = stream.write_all(&f).await;
                    return;
                }
            };
            let (reply, login, close) = {
                let payload = fbuf.get(range);
                match wire::decode(payload) {
                    Err(_) => {
                        let f = shard
                            .enc
                            .borrow_mut()
                            .error(0, fb::ErrorCode::Malformed, "frame failed verification")
                            .to_vec();
                        (Some(f), None, true)
                    }
                    Ok(env) => anonymous_request(&shard, &mut phase, env, peer).await,
                }
            };
            if let Some(f) = reply
                && stream.write_all(&f).await.is_err()
            {
                return;
            }
            if close {
                return;
            }
            if let Some(login) = login {
                let pending = fbuf.pending().to_vec();
                let home = shard.home(login.user);
                if home == shard.id {
                    let mut fb2 = FrameBuf::new(shard.cfg.max_frame);
                    fb2.push(&pending);
                    run_session(shard, stream, fb2, login).await;
                } else {
                    let Some(fd) = detach_fd(stream) else { return };
                    shard.send(
                        home,
                        ShardMsg::HandOff(Box::new(HandOff {
                            fd,
                            pending,
                            req_id: login.req_id,
                            user: login.user,
                            name: login.name,
                            token: login.token,
                            since: login.since,
                        })),
                    );
                }
                return;
            }
        }
        match fill(&mut stream, &mut fbuf).await {
            Filled::Data => {}
            Filled::Closed => return,
            Filled::IdleTimeout => {
                let _ = stream.write_all(&idle_goodbye(&shard)).await;
                return;
            }
        }
    }
}

/// One request before login: (reply, authenticated-as, close-after-reply).
async fn anonymous_request(
    shard: &Rc<Shard>,
    phase: &mut Phase,
    env: fb::Envelope<'_>,
    peer: Option<std::net::IpAddr>,
) -> (Option<Vec<u8>>, Option<Login>, bool) {
    let req_id = env.req_id();
    let body = env.body_type();
    let err = |code, text: &str| Some(shard.enc.borrow_mut().error(req_id, code, text).to_vec());
    match gate(*phase, body, req_id) {
        Gate::Close(Reject(code, text)) => return (err(code, text), None, true),
        Gate::Reject(Reject(code, text)) => return (err(code, text), None, false),
        Gate::Handle => {}
    }
    if let Some(h) = env.body_as_hello() {
        if h.protocol_version() != PROTOCOL_VERSION {
            return (
                err(
                    fb::ErrorCode::UnsupportedVersion,
                    &format!("this server speaks protocol version {PROTOCOL_VERSION}"),
                ),
                None,
                true,
            );
        }
        *phase = Phase::Anonymous;
        let f = shard
            .enc
            .borrow_mut()
            .hello_ok(
                req_id,
                shard.cfg.max_frame as u32,
                shard.cfg.idle_timeout.as_millis() as u32,
            )
            .to_vec();
        return (Some(f), None, false);
    }
    if let Some(p) = env.body_as_ping() {
        return (
            Some(shard.enc.borrow_mut().pong(req_id, p.nonce()).to_vec()),
            None,
            false,
        );
    }
    if let Some(r) = env.body_as_register() {
        return (
            Some(
                register(
                    shard,
                    req_id,
                    r.username().unwrap_or(""),
                    r.password().unwrap_or(""),
                )
                .await,
            ),
            None,
            false,
        );
    }
    if let Some(l) = env.body_as_login() {
        let (user, pass) = (
            l.username().unwrap_or("").to_string(),
            l.password().unwrap_or("").to_string(),
        );
        return login(shard, req_id, user, pass, peer).await;
    }
    if let Some(r) = env.body_as_resume() {
        let token = r.token().unwrap_or("").to_string();
        let since: Vec<(ConvId, Seq)> = r
            .since()
            .map(|v| v.iter().map(|c| (c.conversation(), c.seq())).collect())
            .unwrap_or_default();
        let res = shard
            .blocking(move |s| match s.session_user(&auth::token_hash(&token))? {
                Some(uid) => Ok(s.user_by_id(uid)?.map(|u| (u.id, u.username, token))),
                None => Ok(None),
            })
            .await;
        return authenticated(
            shard,
            req_id,
            res,
            since,
            (fb::ErrorCode::BadToken, "unknown or expired session token"),
        );
    }
    // Ack before login: nothing to do (gate allowed it; it carries no reply).
    (None, None, false)
}

/// Login: throttle check, user lookup (store pool), password check
/// (hashing pool), session creation (store pool). Refusals that cost no
/// hashing come first: an over-long password (argon2 cost grows with it),
/// a throttled username or address, a full hashing queue.
async fn login(
    shard: &Rc<Shard>,
    req_id: u64,
    user: String,
    pass: String,
    peer: Option<std::net::IpAddr>,
) -> (Option<Vec<u8>>, Option<Login>, bool) {
    let err = |code, text: &str| Some(shard.enc.borrow_mut().error(req_id, code, text).to_vec());
    let denied = (fb::ErrorCode::BadCredentials, "wrong username or password");
    if pass.len() > validate::MAX_PASSWORD || user.len() > validate::MAX_USERNAME {
        return (err(denied.0, denied.1), None, false);
    }
    if let Err(d) = shard.hasher.admit(&user, peer) {
        return (err(fb::ErrorCode::RateLimited, &d.text()), None, false);
    }
    let name = user.clone();
    let rec = match shard.blocking(move |s| s.user_by_name(&name)).await {
        Ok(r) => r,
        Err(e) => return authenticated(shard, req_id, Err(e), Vec::new(), denied),
    };
    let phc = rec.as_ref().map(|r| r.password_hash.clone());
    let checked = shard.hasher.verify(phc, pass).await;
    let ok = match checked {
        Ok(ok) => ok,
        Err(d) => return (err(fb::ErrorCode::RateLimited, &d.text()), None, false),
    };
    shard.hasher.outcome(&user, peer, ok);
    let res = match rec {
        Some(r) if ok => {
            shard
                .blocking(move |s| {
                    let token = auth::new_token();
                    s.create_session(&auth::token_hash(&token), r.id, crate::model::now_ms())?;
                    Ok(Some((r.id, r.username, token)))
                })
                .await
        }
        _ => Ok(None),
    };
    authenticated(shard, req_id, res, Vec::new(), denied)
}

/// The outcome of a Login or Resume check: (user id, name, token) on
/// success, `None` when refused with `denied`.
fn authenticated(
    shard: &Shard,
    req_id: u64,
    res: crate::store::Result<Option<(UserId, String, String)>>,
    since: Vec<(ConvId, Seq)>,
    denied: (fb::ErrorCode, &str),
) -> (Option<Vec<u8>>, Option<Login>, bool) {
    let err = |code, text: &str| Some(shard.enc.borrow_mut().error(req_id, code, text).to_vec());
    match res {
        Ok(Some((user, name, token))) => (
            None,
            Some(Login {
                user,
                name: name.into(),
                token,
                req_id,
                since,
            }),
            false,
        ),
        Ok(None) => (err(denied.0, denied.1), None, false),
        Err(_) => (
            err(fb::ErrorCode::Internal, "storage unavailable, retry"),
            None,
            false,
        ),
    }
}

async fn register(shard: &Rc<Shard>, req_id: u64, user: &str, pass: &str) -> Vec<u8> {
    if let Err(Reject(code, text)) = validate::username(user).and_then(|_| validate::password(pass))
    {
        return shard.enc.borrow_mut().error(req_id, code, text).to_vec();
    }
    let (user, pass) = (user.to_string(), pass.to_string());
    let hash = match shard.hasher.run(move || auth::hash_password(&pass)).await {
        Ok(Ok(h)) => h,
        Ok(Err(_)) => {
            return shard
                .enc
                .borrow_mut()
                .error(req_id, fb::ErrorCode::Internal, "password hashing failed")
                .to_vec();
        }
        Err(d) => {
            return shard
                .enc
                .borrow_mut()
                .error(req_id, fb::ErrorCode::RateLimited, &d.text())
                .to_vec();
        }
    };
    let res = shard.blocking(move |s| s.create_user(&user, &hash)).await;
    let mut enc = shard.enc.borrow_mut();
    match res {
        Ok(id) => enc.register_ok(req_id, id).to_vec(),
        Err(StoreError::Conflict) => enc
            .error(req_id, fb::ErrorCode::UsernameTaken, "username is taken")
            .to_vec(),
        Err(_) => enc
            .error(
                req_id,
                fb::ErrorCode::Internal,
                "storage unavailable, retry",
            )
            .to_vec(),
    }
}

/// A connection arriving from another shard after login.
pub fn accept_handoff(shard: Rc<Shard>, h: HandOff) {
    use std::os::fd::IntoRawFd;
    // SAFETY: the OwnedFd is a valid socket descriptor we own.
    let stream = unsafe { TcpStream::from_raw_fd(h.fd.into_raw_fd()) };
    let _ = stream.set_read_timeout(Some(shard.cfg.idle_timeout));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let mut fbuf = FrameBuf::new(shard.cfg.max_frame);
    fbuf.push(&h.pending);
    let login = Login {
        user: h.user,
        name: h.name,
        token: h.token,
        req_id: h.req_id,
        since: h.since,
    };
    super::spawn_guarded(async move {
        let m = &shard.metrics;
        m.connections.set(m.connections.get() + 1);
        run_session(shard.clone(), stream, fbuf, login).await;
        let m = &shard.metrics;
        m.connections.set(m.connections.get() - 1);
    });
}

/// The logged-in life of a connection on its user's home shard.
async fn run_session(shard: Rc<Shard>, stream: TcpStream, fbuf: FrameBuf, login: Login) {
    let remote = stream.peer_addr().ok().map(tracing::field::display);
    tracing::info!(user = login.user, name = %login.name, shard = shard.id, remote, "session started");
    let stream: SharedStream = Rc::new(RefCell::new(stream));
    let conn = Rc::new(Conn::new(
        shard.new_conn_id(),
        login.user,
        Rc::new(Outbound::new(shard.cfg.out_limit)),
        HOLD_CAP,
    ));
    let ok = shard
        .enc
        .borrow_mut()
        .login_ok(login.req_id, login.user, &login.name, &login.token)
        .to_vec();
    conn.out.push(Frame::Own(ok));
    let writer = glommio::spawn_local(io::writer_loop(conn.out.clone(), stream.clone()));
    register_session(&shard, &conn).await;
    {
        // A failed replay must not leave the session half-synced: close it
        // (the client resumes and replays again).
        let (s2, c2, since) = (shard.clone(), conn.clone(), login.since.clone());
        super::spawn_guarded(async move {
            let mut guard = CloseOnDrop(Some(c2.clone()));
            replay(s2, c2, since).await;
            guard.0 = None;
        });
    }
    read_loop(&shard, &conn, &stream, fbuf, &login).await;
    if conn.out.overflowed.get() {
        super::metrics::Metrics::inc(&shard.metrics.slow_consumers);
        tracing::info!(user = conn.user, "slow consumer cut off");
    }
    conn.out.close();
    writer.await;
    shard.unregister(&conn);
    tracing::info!(
        user = conn.user,
        shard = shard.id,
        remote,
        reason = if conn.out.overflowed.get() {
            "slow_consumer"
        } else if shard.stopping.get() {
            "shutdown"
        } else {
            "closed"
        },
        "session ended"
    );
}

/// Closes a connection's output if dropped (i.e. when a task unwinds).
struct CloseOnDrop(Option<Rc<Conn>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.out.close();
        }
    }
}

/// Sends every stored message after the session's cursors, then switches
/// the session to live delivery (see `core::sync`).
async fn replay(shard: Rc<Shard>, conn: Rc<Conn>, since: Vec<(ConvId, Seq)>) {
    let user = conn.user;
    let mut replayed: AHashMap<ConvId, Seq> = AHashMap::new();
    let mut count = 0u64;
    shard.sync_point().await;
    loop {
        let convs = match shard.blocking(move |s| s.conversations_of(user)).await {
            Ok(c) => c,
            Err(_) => {
                let f = shard
                    .enc
                    .borrow_mut()
                    .goodbye(fb::ErrorCode::Internal, "storage unavailable, reconnect")
                    .to_vec();
                conn.out.push(Frame::Own(f));
                conn.out.close();
                return;
            }
        };
        conn.convs.borrow_mut().extend(convs.iter().map(|c| c.conv));
        let mut overrides: AHashMap<ConvId, Seq> = since.iter().copied().collect();
        overrides.extend(replayed.iter().map(|(c, s)| (*c, *s)));
        let overrides: Vec<(ConvId, Seq)> = overrides.into_iter().collect();
        for r in sync::plan(&convs, &overrides) {
            let mut after = r.after;
            loop {
                let conv = r.conv;
                let page = match shard
                    .blocking(move |s| s.messages_after(conv, after, PAGE))
                    .await
                {
                    Ok(p) => p,
                    Err(_) => {
                        conn.out.close();
                        return;
                    }
                };
                let Some(last) = page.last() else { break };
                after = last.seq;
                count += page.len() as u64;
                replayed.insert(conv, after);
                // Several frames when the page is too big for one.
                let mut rest = &page[..];
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
                if conn.out.is_closing() {
                    return;
                }
                if page.len() < PAGE as usize {
                    break;
                }
            }
        }
        let mut hold = conn.hold.borrow_mut();
        let released = match hold.as_mut() {
            Some(h) => h.release(&replayed),
            None => Ok(Vec::new()),
        };
        if let Ok(frames) = released {
            *hold = None;
            drop(hold);
            for f in frames {
                conn.out.push(Frame::Shared(f));
            }
            break;
        }
    }
    let f = shard.enc.borrow_mut().sync_done(count).to_vec();
    conn.out.push(Frame::Own(f));
}

async fn read_loop(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    stream: &SharedStream,
    mut fbuf: FrameBuf,
    login: &Login,
) {
    let mut rd = ReadHalf(stream.clone());
    loop {
        loop {
            let range = match fbuf.next_frame() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    conn.out.push(Frame::Own(frame_error_reply(shard, e)));
                    return;
                }
            };
            let next = match wire::decode(fbuf.get(range)) {
                Err(_) => {
                    let f = shard
                        .enc
                        .borrow_mut()
                        .error(0, fb::ErrorCode::Malformed, "frame failed verification")
                        .to_vec();
                    conn.out.push(Frame::Own(f));
                    Next::Close
                }
                Ok(env) => session_request(shard, conn, login, env).await,
            };
            if let Next::Close = next {
                return;
            }
            if conn.out.is_closing() {
                return;
            }
        }
        // Backpressure: stop reading while this shard's outbox is saturated.
        while shard.outbox_full() {
            shard.outbox_room.wait().await;
        }
        match fill(&mut rd, &mut fbuf).await {
            Filled::Data => {}
            Filled::Closed => return,
            Filled::IdleTimeout => {
                conn.out.push(Frame::Own(idle_goodbye(shard)));
                return;
            }
        }
    }
}

async fn session_request(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    login: &Login,
    env: fb::Envelope<'_>,
) -> Next {
    let req_id = env.req_id();
    let reply = |f: &[u8]| {
        conn.out.push_own(f);
    };
    let error = |code, text: &str| {
        let f = shard.enc.borrow_mut().error(req_id, code, text).to_vec();
        conn.out.push(Frame::Own(f));
    };
    match gate(Phase::LoggedIn, env.body_type(), req_id) {
        Gate::Close(Reject(code, text)) => {
            error(code, text);
            return Next::Close;
        }
        Gate::Reject(Reject(code, text)) => {
            error(code, text);
            return Next::Continue;
        }
        Gate::Handle => {}
    }
    let me = login.user;
    let origin = || Origin {
        node: None,
        shard: shard.id,
        conn: conn.id,
        req_id,
        user: me,
        name: login.name.clone(),
    };
    let to_owner = |conv: ConvId, op: OwnerOp| {
        if let Some((o, op)) = crate::cluster::node::route_owner(shard, conv, origin(), op) {
            shard.send(owner_shard(conv, shard.n), ShardMsg::Owner(o, op));
        }
    };
    let pair = |other: UserId, action: PairAction| {
        if other == 0 || other > MAX_USER_ID {
            return error(fb::ErrorCode::NoSuchUser, "no such user");
        }
        if other == me {
            return error(fb::ErrorCode::SelfTarget, "that is you");
        }
        to_owner(
            crate::model::direct_conv(me, other),
            OwnerOp::Pair { other, action },
        );
    };
    let group = |g: u64, op: OwnerOp| {
        if g == 0 || crate::model::group_conv(g) != g {
            return error(fb::ErrorCode::NoSuchGroup, "no such group");
        }
        to_owner(g, op);
    };
    use fb::Body;
    match env.body_type() {
        Body::SendMessage => {
            let m = env.body_as_send_message().expect("type checked");
            let body = m.body().unwrap_or("");
            if let Err(Reject(code, text)) = validate::body(body, shard.cfg.max_frame) {
                return {
                    error(code, text);
                    Next::Continue
                };
            }
            if m.client_msg_id() == 0 {
                error(fb::ErrorCode::BadRequest, "client_msg_id must be non-zero");
                return Next::Continue;
            }
            let conv = match (m.to_user(), m.group_id()) {
                (0, 0) | (1.., 1..) => {
                    error(
                        fb::ErrorCode::BadRequest,
                        "set exactly one of to_user and group_id",
                    );
                    return Next::Continue;
                }
                (to, 0) if to == me => {
                    error(fb::ErrorCode::SelfTarget, "you cannot message yourself");
                    return Next::Continue;
                }
                (to, 0) if to > MAX_USER_ID => {
                    error(fb::ErrorCode::NotFriends, "you can only message friends");
                    return Next::Continue;
                }
                (to, 0) => crate::model::direct_conv(me, to),
                (_, g) if crate::model::group_conv(g) != g => {
                    error(fb::ErrorCode::NoSuchGroup, "no such group");
                    return Next::Continue;
                }
                (_, g) => g,
            };
            to_owner(
                conv,
                OwnerOp::Send {
                    conv,
                    client_msg_id: m.client_msg_id(),
                    body: body.to_string(),
                },
            );
        }
        Body::Ack => {
            if let Some(items) = env.body_as_ack().and_then(|a| a.items()) {
                let mut cursors = shard.cursors.borrow_mut();
                let known = conn.convs.borrow();
                for it in items.iter().filter(|it| known.contains(&it.conversation())) {
                    let e = cursors.entry((me, it.conversation())).or_insert(0);
                    *e = (*e).max(it.seq());
                }
            }
        }
        Body::Ping => {
            let n = env.body_as_ping().map(|p| p.nonce()).unwrap_or(0);
            let f = shard.enc.borrow_mut().pong(req_id, n).to_vec();
            reply(&f);
        }
        Body::Logout => {
            let th = auth::token_hash(&login.token);
            match shard.blocking(move |s| s.delete_session(&th)).await {
                Ok(()) => {
                    let f = shard.enc.borrow_mut().ok(req_id).to_vec();
                    reply(&f);
                    return Next::Close;
                }
                Err(_) => error(fb::ErrorCode::Internal, "storage unavailable, retry"),
            }
        }
        Body::SearchUsers => {
            let q = env.body_as_search_users().expect("type checked");
            let prefix = q.prefix().unwrap_or("").to_string();
            let after = q.after_id();
            let limit = match q.limit() {
                0 => 20,
                n => n.min(100),
            };
            match shard
                .blocking(move |s| s.search_users(&prefix, after, limit + 1))
                .await
            {
                Ok(mut rows) => {
                    let more = rows.len() > limit as usize;
                    rows.truncate(limit as usize);
                    let next = if more {
                        rows.last().map(|r| r.0).unwrap_or(0)
                    } else {
                        0
                    };
                    let friends = shard.friends_of_local(me);
                    let items: Vec<(UserId, &str, bool)> = rows
                        .iter()
                        .map(|(id, n)| {
                            (
                                *id,
                                n.as_str(),
                                friends.contains(id) && shard.is_online(*id),
                            )
                        })
                        .collect();
                    let f = shard
                        .enc
                        .borrow_mut()
                        .user_list(req_id, &items, next)
                        .to_vec();
                    reply(&f);
                }
                Err(_) => error(fb::ErrorCode::Internal, "storage unavailable, retry"),
            }
        }
        Body::FriendRequest => {
            let r = env.body_as_friend_request().expect("type checked");
            let note: String = r.note().unwrap_or("").chars().take(256).collect();
            pair(r.user_id(), PairAction::Request { note });
        }
        Body::FriendRespond => {
            let r = env.body_as_friend_respond().expect("type checked");
            pair(r.user_id(), PairAction::Respond { accept: r.accept() });
        }
        Body::FriendRemove => {
            let r = env.body_as_friend_remove().expect("type checked");
            pair(r.user_id(), PairAction::Remove);
        }
        Body::FriendBlock => {
            let r = env.body_as_friend_block().expect("type checked");
            let action = if r.block() {
                PairAction::Block
            } else {
                PairAction::Unblock
            };
            pair(r.user_id(), action);
        }
        Body::ListFriends => match shard.blocking(move |s| s.friends_of(me)).await {
            Ok(rows) => {
                let f = shard
                    .enc
                    .borrow_mut()
                    .friend_list(req_id, &rows, |u| shard.is_online(u))
                    .to_vec();
                reply(&f);
            }
            Err(_) => error(fb::ErrorCode::Internal, "storage unavailable, retry"),
        },
        Body::CreateGroup => {
            let name = env
                .body_as_create_group()
                .and_then(|g| g.name())
                .unwrap_or("")
                .to_string();
            if let Err(Reject(code, text)) = validate::group_name(&name) {
                error(code, text);
                return Next::Continue;
            }
            match shard.blocking(move |s| s.create_group(&name, me)).await {
                Ok(g) => {
                    let f = shard
                        .enc
                        .borrow_mut()
                        .group_created(req_id, g, crate::model::group_conv(g))
                        .to_vec();
                    reply(&f);
                }
                Err(StoreError::Conflict) => {
                    error(fb::ErrorCode::NameTaken, "a group with that name exists")
                }
                Err(_) => error(fb::ErrorCode::Internal, "storage unavailable, retry"),
            }
        }
        Body::JoinGroup => {
            let g = env.body_as_join_group().map(|x| x.group_id()).unwrap_or(0);
            group(
                g,
                OwnerOp::Group {
                    group: g,
                    action: GroupAction::Join,
                },
            );
        }
        Body::LeaveGroup => {
            let g = env.body_as_leave_group().map(|x| x.group_id()).unwrap_or(0);
            group(
                g,
                OwnerOp::Group {
                    group: g,
                    action: GroupAction::Leave,
                },
            );
        }
        Body::RemoveMember => {
            let r = env.body_as_remove_member().expect("type checked");
            let g = r.group_id();
            group(
                g,
                OwnerOp::Group {
                    group: g,
                    action: GroupAction::Remove(r.user_id()),
                },
            );
        }
        Body::SetAdmin => {
            let r = env.body_as_set_admin().expect("type checked");
            let g = r.group_id();
            group(
                g,
                OwnerOp::Group {
                    group: g,
                    action: GroupAction::SetAdmin(r.user_id(), r.admin()),
                },
            );
        }
        Body::DissolveGroup => {
            let g = env
                .body_as_dissolve_group()
                .map(|x| x.group_id())
                .unwrap_or(0);
            group(
                g,
                OwnerOp::Group {
                    group: g,
                    action: GroupAction::Dissolve,
                },
            );
        }
        Body::GroupMembers => {
            let g = env
                .body_as_group_members()
                .map(|x| x.group_id())
                .unwrap_or(0);
            group(g, OwnerOp::Members { group: g });
        }
        Body::ListGroups => match shard.blocking(move |s| s.groups_of(me)).await {
            Ok(gs) => {
                let f = shard.enc.borrow_mut().group_list(req_id, &gs).to_vec();
                reply(&f);
            }
            Err(_) => error(fb::ErrorCode::Internal, "storage unavailable, retry"),
        },
        Body::History => {
            let h = env.body_as_history().expect("type checked");
            let limit = match h.limit() {
                0 => 50,
                n => n.min(200),
            };
            let conv = h.conversation();
            match crate::model::conv_kind(conv) {
                ConvKind::Direct { .. } => {
                    if direct_peer(conv, me).is_none() {
                        error(fb::ErrorCode::NotMember, "not your conversation");
                    } else {
                        reply_history(shard, &origin(), conv, h.before_seq(), limit).await;
                    }
                }
                ConvKind::Group(g) => group(
                    g,
                    OwnerOp::History {
                        group: g,
                        before: h.before_seq(),
                        limit,
                    },
                ),
            }
        }
        Body::Register => {
            let r = env.body_as_register().expect("type checked");
            let f = register(
                shard,
                req_id,
                r.username().unwrap_or(""),
                r.password().unwrap_or(""),
            )
            .await;
            reply(&f);
        }
        _ => {
            // Hello/Login/Resume are gated above; nothing else reaches here.
            error(fb::ErrorCode::BadRequest, "unexpected request");
        }
    }
    Next::Continue
}

/// Reads a page of history and replies with it.
pub async fn reply_history(
    shard: &Rc<Shard>,
    origin: &Origin,
    conv: ConvId,
    before: Seq,
    limit: u32,
) {
    match shard
        .blocking(move |s| s.history(conv, before, limit))
        .await
    {
        Ok(msgs) => {
            // Keep the newest messages that fit one frame; the client pages
            // on with `before_seq` = the first seq it got.
            let n = validate::fit_in_frame(
                msgs.iter()
                    .rev()
                    .map(|m| m.body.len() + m.sender_name.len()),
                shard.cfg.max_frame,
            );
            let f = shard
                .enc
                .borrow_mut()
                .messages(origin.req_id, msgs[msgs.len() - n..].iter())
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

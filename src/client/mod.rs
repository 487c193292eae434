//! A blocking ringchat client over `std::net`.
//!
//! Used by the integration tests, the interactive `ringchat chat` and load
//! generation, so it favours plain threads and channels over an async
//! runtime: callers block on one request at a time per thread, and any
//! number of threads may share one [`Client`].
//!
//! Structure:
//! - Requests are written on the caller's thread through a cloned
//!   `TcpStream` behind a mutex (one [`Enc`] reused for every frame), then the
//!   caller waits on a per-request channel registered *before* writing, so a
//!   fast reply can never race past its waiter.
//! - One reader thread splits and decodes frames. Replies (req_id != 0)
//!   complete the matching pending request; pushes (req_id 0) become
//!   [`Event`]s on a channel.
//! - The reader surfaces each conversation in seq order, once
//!   ([`crate::client::inbox`]): catch-up and live delivery may overlap, a
//!   resumed device may be sent what it already holds, and across nodes a
//!   later seq can arrive before an earlier one. A message above a gap is
//!   held back while the reader asks for the gap (`History`); the cursor
//!   this device acknowledges (auto-ack) and resumes from is the highest
//!   *contiguous* seq it holds, so a reordering can never turn into a
//!   message skipped for good. Its own messages count as held once their
//!   `SendOk` arrives.

mod decode;
pub mod inbox;
mod types;
pub mod typing;

pub use types::*;

use crate::model::{ConvId, GroupId, Seq, UserId};
use crate::wire::{Enc, FrameBuf, ws};
use decode::Incoming;
use inbox::{Effect, Fill, Inbox};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest frame the client accepts from a server. Generous on purpose: the
/// server's own limit (`HelloOk.max_frame`) governs what *we* may send, and a
/// catch-up page may be larger than a single request.
const CLIENT_MAX_FRAME: usize = 16 << 20;

/// Tunables of one connection.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long a request waits for its reply.
    pub timeout: Duration,
    /// Acknowledge surfaced messages automatically (one `Ack` per received
    /// `Messages` frame). Off lets tests and tools control the user's
    /// delivered cursor themselves.
    pub auto_ack: bool,
    /// Ping at a third of the server's idle timeout so a quiet but healthy
    /// connection is not closed. Off lets tests observe the idle timeout.
    pub keepalive: bool,
    /// Drop messages already surfaced (by `(conversation, seq)`). Off shows
    /// exactly what the server delivers, which is how tests prove the server
    /// itself sends each message once.
    pub dedup: bool,
    /// Sent in `Hello` for the server's logs.
    pub client_name: String,
    /// Speak WebSocket (`GET /ws` on a `--ws-listen` address) instead of
    /// plain TCP: the same frames, one per binary message.
    pub websocket: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            auto_ack: true,
            keepalive: true,
            dedup: true,
            client_name: concat!("ringchat-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            websocket: false,
        }
    }
}

struct Writer {
    stream: TcpStream,
    enc: Enc,
    /// WebSocket framing scratch; `None` on plain TCP.
    ws: Option<Vec<u8>>,
}

/// State shared by the caller side and the reader thread.
struct Shared {
    writer: Mutex<Writer>,
    pending: Mutex<HashMap<u64, Sender<Reply>>>,
    next_req: AtomicU64,
    /// What this device holds per conversation (dedup, ordering, and the
    /// contiguous resume cursor).
    inbox: Mutex<Inbox<ChatMsg>>,
    /// Gap fills in flight: request id → conversation.
    fills: Mutex<HashMap<u64, ConvId>>,
    auto_ack: AtomicBool,
    dedup: bool,
    closed: AtomicBool,
}

/// Follows a paged list to its end (`page(after)` returns a page and the
/// cursor of the next one, 0 at the end).
fn all_pages<T>(mut page: impl FnMut(u64) -> Result<(Vec<T>, u64)>) -> Result<Vec<T>> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (items, next) = page(after)?;
        all.extend(items);
        if next == 0 || next <= after {
            return Ok(all);
        }
        after = next;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind
    // (maps, a socket); carrying on is safer than poisoning every caller.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn write_frame(&self, build: impl FnOnce(&mut Enc) -> &[u8]) -> std::io::Result<()> {
        let mut w = lock(&self.writer);
        let Writer { stream, enc, ws } = &mut *w;
        let frame = build(enc);
        match ws {
            None => stream.write_all(frame),
            Some(buf) => {
                buf.clear();
                ws::encode_binary(ws::Role::Client, frame, buf);
                stream.write_all(buf)
            }
        }
    }

    /// Fails every waiting request: their replies can no longer arrive.
    fn close_pending(&self) {
        self.closed.store(true, Ordering::SeqCst);
        lock(&self.pending).clear();
    }
}

/// Hands what an [`Inbox`] step surfaced to the caller and collects what
/// it asks of the server (acks and gap fills), so the reader thread can
/// write them after releasing the inbox lock.
#[derive(Default)]
struct Step {
    acks: Vec<(ConvId, Seq)>,
    fills: Vec<Fill>,
}

impl Step {
    fn take(
        &mut self,
        ib: &Inbox<ChatMsg>,
        conv: ConvId,
        e: Effect<ChatMsg>,
        events: &Sender<Event>,
    ) {
        for m in e.shown {
            let _ = events.send(Event::Message(m));
        }
        if e.advanced
            && let Some(held) = ib.held(conv)
        {
            match self.acks.iter_mut().find(|(c, _)| *c == conv) {
                Some(a) => a.1 = a.1.max(held),
                None => self.acks.push((conv, held)),
            }
        }
        self.fills.extend(e.fill);
    }
}

/// Events not yet taken by the caller: the channel from the reader plus
/// those [`Client::wait_for`] skipped over.
struct EventQueue {
    rx: Receiver<Event>,
    skipped: VecDeque<Event>,
    /// The reader is gone and `Closed` was handed out.
    done: bool,
}

/// A connection to a ringchat server. See the module docs.
pub struct Client {
    shared: Arc<Shared>,
    events: Mutex<EventQueue>,
    hello: HelloInfo,
    session: Mutex<Option<Session>>,
    options: ClientOptions,
    msg_id_base: u64,
    msg_id_next: AtomicU64,
    reader: Option<JoinHandle<()>>,
    keepalive: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Client {
    /// Connects with default options and completes the `Hello` handshake.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_with(addr, ClientOptions::default())
    }

    pub fn connect_with(addr: impl ToSocketAddrs, options: ClientOptions) -> Result<Client> {
        let mut stream = TcpStream::connect(addr)?;
        // Chat frames are small and latency-bound; Nagle would hold them back.
        stream.set_nodelay(true)?;
        let ws_in = if options.websocket {
            stream.set_read_timeout(Some(options.timeout))?;
            let rest = ws_handshake(&mut stream)?;
            stream.set_read_timeout(None)?;
            let mut w = ws::WsIn::new(ws::Role::Client, CLIENT_MAX_FRAME);
            w.push(&rest);
            Some(w)
        } else {
            None
        };
        let read_half = stream.try_clone()?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(Writer {
                stream,
                enc: Enc::new(),
                ws: options.websocket.then(Vec::new),
            }),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            inbox: Mutex::new(Inbox::default()),
            fills: Mutex::new(HashMap::new()),
            auto_ack: AtomicBool::new(options.auto_ack),
            dedup: options.dedup,
            closed: AtomicBool::new(false),
        });
        let (ev_tx, ev_rx) = mpsc::channel();
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("ringchat-client-reader".into())
                .spawn(move || reader_loop(read_half, ws_in, shared, ev_tx))?
        };
        let mut client = Client {
            shared,
            events: Mutex::new(EventQueue {
                rx: ev_rx,
                skipped: VecDeque::new(),
                done: false,
            }),
            hello: HelloInfo {
                protocol_version: 0,
                server: String::new(),
                max_frame: 0,
                idle_timeout_ms: 0,
            },
            session: Mutex::new(None),
            msg_id_base: rand::random::<u64>(),
            msg_id_next: AtomicU64::new(0),
            options,
            reader: Some(reader),
            keepalive: None,
        };
        let name = client.options.client_name.clone();
        client.hello = client.request(
            |e, id| e.hello(id, &name),
            |r| match r {
                Reply::HelloOk(h) => Ok(h),
                r => Err(r),
            },
        )?;
        if client.options.keepalive && client.hello.idle_timeout_ms > 0 {
            client.start_keepalive();
        }
        Ok(client)
    }

    fn start_keepalive(&mut self) {
        let interval = Duration::from_millis(u64::from(self.hello.idle_timeout_ms) / 3)
            .max(Duration::from_millis(50));
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ringchat-client-keepalive".into())
            .spawn(move || {
                // The stop channel doubles as the sleep: dropping the sender
                // (on Client drop) wakes and ends this thread at once.
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                    if shared.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    // Nobody waits for this Pong: its req_id is not pending,
                    // so the reader drops it.
                    let id = shared.next_req.fetch_add(1, Ordering::SeqCst);
                    if shared.write_frame(|e| e.ping(id, id)).is_err() {
                        return;
                    }
                }
            });
        if let Ok(h) = spawned {
            self.keepalive = Some((stop_tx, h));
        }
    }

    /// What the server said in `HelloOk`.
    pub fn hello(&self) -> &HelloInfo {
        &self.hello
    }

    /// The session from the last successful login/resume on this connection.
    pub fn session(&self) -> Option<Session> {
        lock(&self.session).clone()
    }

    /// The user id of the current session (0 if not logged in).
    pub fn user_id(&self) -> UserId {
        lock(&self.session).as_ref().map_or(0, |s| s.user_id)
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.options.timeout = timeout;
    }

    pub fn set_auto_ack(&self, on: bool) {
        self.shared.auto_ack.store(on, Ordering::SeqCst);
    }

    /// The highest *contiguous* seq this device holds per conversation:
    /// what it has acknowledged and what a resume starts after.
    pub fn seen(&self) -> HashMap<ConvId, Seq> {
        lock(&self.shared.inbox).cursors()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// A fresh client message id: random base plus a counter, so ids are
    /// unique per client and (with overwhelming probability) across
    /// reconnects, which the server's resend dedup relies on. Never 0.
    pub fn next_msg_id(&self) -> u64 {
        loop {
            let n = self.msg_id_next.fetch_add(1, Ordering::SeqCst);
            let id = self.msg_id_base.wrapping_add(n);
            if id != 0 {
                return id;
            }
        }
    }

    /// Sends one request and waits for its reply. `pick` maps the expected
    /// reply type to a value and hands any other reply back for the error.
    fn request<T>(
        &self,
        build: impl FnOnce(&mut Enc, u64) -> &[u8],
        pick: impl FnOnce(Reply) -> std::result::Result<T, Reply>,
    ) -> Result<T> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let id = self.shared.next_req.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.pending).insert(id, tx);
        if let Err(e) = self.shared.write_frame(|enc| build(enc, id)) {
            lock(&self.shared.pending).remove(&id);
            return Err(if self.is_closed() {
                ClientError::Closed
            } else {
                ClientError::Io(e)
            });
        }
        let reply = match rx.recv_timeout(self.options.timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.shared.pending).remove(&id);
                return Err(ClientError::Timeout);
            }
            Err(RecvTimeoutError::Disconnected) => return Err(ClientError::Closed),
        };
        pick(reply).map_err(|r| match r {
            Reply::Error(code, message) => ClientError::Server { code, message },
            other => ClientError::Protocol(format!("unexpected {} reply", other.name())),
        })
    }

    fn ok_request(&self, build: impl FnOnce(&mut Enc, u64) -> &[u8]) -> Result<()> {
        self.request(build, |r| match r {
            Reply::Ok => Ok(()),
            r => Err(r),
        })
    }

    fn send_request(&self, build: impl FnOnce(&mut Enc, u64) -> &[u8]) -> Result<Sent> {
        self.request(build, |r| match r {
            Reply::SendOk(s) => Ok(s),
            r => Err(r),
        })
    }

    // ------------------------------------------------------------ account

    /// Creates an account; does not log in.
    pub fn register(&self, username: &str, password: &str) -> Result<UserId> {
        self.request(
            |e, id| e.register(id, username, password),
            |r| match r {
                Reply::RegisterOk(u) => Ok(u),
                r => Err(r),
            },
        )
    }

    /// Logs in; the server then pushes the catch-up and `SyncDone`.
    pub fn login(&self, username: &str, password: &str) -> Result<Session> {
        // A fresh login is replayed from the user's acked cursor, which this
        // device may be ahead of or behind: start from what arrives.
        lock(&self.shared.inbox).clear();
        let s = self.request(
            |e, id| e.login(id, username, password),
            |r| match r {
                Reply::LoginOk(s) => Ok(s),
                r => Err(r),
            },
        )?;
        *lock(&self.session) = Some(s.clone());
        Ok(s)
    }

    /// Resumes a session by token, asking the server to replay only what
    /// this client has not seen (its [`seen`](Self::seen) map as `since`).
    pub fn resume(&self, token: &str) -> Result<Session> {
        let since: Vec<(ConvId, Seq)> = self.seen().into_iter().collect();
        self.resume_since(token, &since)
    }

    /// Resumes with an explicit `since` list, e.g. cursors a previous
    /// connection of this device held ([`seen`](Self::seen) of the old client).
    /// The list also seeds this client's dedup map.
    pub fn resume_since(&self, token: &str, since: &[(ConvId, Seq)]) -> Result<Session> {
        {
            let mut inbox = lock(&self.shared.inbox);
            for &(c, s) in since {
                inbox.seed(c, s);
            }
        }
        let s = self.request(
            |e, id| e.resume(id, token, since),
            |r| match r {
                Reply::LoginOk(s) => Ok(s),
                r => Err(r),
            },
        )?;
        *lock(&self.session) = Some(s.clone());
        Ok(s)
    }

    /// Revokes the session token; the server closes the connection after.
    pub fn logout(&self) -> Result<()> {
        self.ok_request(|e, id| e.logout(id))?;
        *lock(&self.session) = None;
        Ok(())
    }

    /// Logs out everywhere: every session token of the user stops working
    /// and every live connection of the user closes (this one after the
    /// reply).
    pub fn logout_all(&self) -> Result<()> {
        self.ok_request(|e, id| e.logout_all(id))?;
        *lock(&self.session) = None;
        Ok(())
    }

    /// Changes the password (`old` must be right; `new` follows the
    /// registration rules). Every other session of the user ends; this one
    /// and its token stay.
    pub fn change_password(&self, old: &str, new: &str) -> Result<()> {
        self.ok_request(|e, id| e.change_password(id, old, new))
    }

    /// Round-trips a `Ping`; returns the nonce the server echoed.
    pub fn ping(&self) -> Result<u64> {
        let nonce = rand::random::<u64>();
        let got = self.request(
            |e, id| e.ping(id, nonce),
            |r| match r {
                Reply::Pong(n) => Ok(n),
                r => Err(r),
            },
        )?;
        if got != nonce {
            return Err(ClientError::Protocol(format!(
                "Pong nonce {got} != {nonce}"
            )));
        }
        Ok(got)
    }

    // ------------------------------------------------------------ friends

    /// Users whose name starts with `prefix`; returns the page and the
    /// `after_id` for the next page (0 when there is none).
    pub fn search_users(
        &self,
        prefix: &str,
        after_id: UserId,
        limit: u32,
    ) -> Result<(Vec<UserInfo>, UserId)> {
        self.request(
            |e, id| e.search_users(id, prefix, after_id, limit),
            |r| match r {
                Reply::UserList(u, next) => Ok((u, next)),
                r => Err(r),
            },
        )
    }

    pub fn friend_request(&self, user_id: UserId, note: &str) -> Result<()> {
        self.ok_request(|e, id| e.friend_request(id, user_id, note))
    }

    pub fn friend_respond(&self, user_id: UserId, accept: bool) -> Result<()> {
        self.ok_request(|e, id| e.friend_respond(id, user_id, accept))
    }

    pub fn friend_remove(&self, user_id: UserId) -> Result<()> {
        self.ok_request(|e, id| e.friend_remove(id, user_id))
    }

    pub fn friend_block(&self, user_id: UserId, block: bool) -> Result<()> {
        self.ok_request(|e, id| e.friend_block(id, user_id, block))
    }

    /// Every relationship, page after page.
    pub fn list_friends(&self) -> Result<Vec<Friend>> {
        all_pages(|after| self.list_friends_page(after, 0))
    }

    /// One page: user ids above `after_id`, at most `limit` (0: the
    /// server's page size); the second value asks for the next page (0: last).
    pub fn list_friends_page(&self, after_id: UserId, limit: u32) -> Result<(Vec<Friend>, UserId)> {
        self.request(
            |e, id| e.list_friends_page(id, after_id, limit),
            |r| match r {
                Reply::FriendList(f, next) => Ok((f, next)),
                r => Err(r),
            },
        )
    }

    // ------------------------------------------------------------ groups

    pub fn create_group(&self, name: &str) -> Result<GroupId> {
        self.create_group_conv(name).map(|(g, _)| g)
    }

    /// Like [`create_group`](Self::create_group), also returning the conversation id.
    pub fn create_group_conv(&self, name: &str) -> Result<(GroupId, ConvId)> {
        self.create_group_opts(name, false, false)
    }

    /// Creates a group: `private` (join by invitation or approved request),
    /// `full_history` (new members may read what was said before they joined).
    pub fn create_group_opts(
        &self,
        name: &str,
        private: bool,
        full_history: bool,
    ) -> Result<(GroupId, ConvId)> {
        self.request(
            |e, id| e.create_group_opts(id, name, private, full_history),
            |r| match r {
                Reply::GroupCreated(g, c) => Ok((g, c)),
                r => Err(r),
            },
        )
    }

    /// Joins a group; on a private group without an invitation this records
    /// a join request and fails with `ErrorCode::PendingApproval`.
    pub fn join_group(&self, group_id: GroupId) -> Result<()> {
        self.ok_request(|e, id| e.join_group(id, group_id))
    }

    pub fn leave_group(&self, group_id: GroupId) -> Result<()> {
        self.ok_request(|e, id| e.leave_group(id, group_id))
    }

    /// Owner/admin: invites a user to the group (they may then join it).
    pub fn invite_to_group(&self, group_id: GroupId, user_id: UserId) -> Result<()> {
        self.ok_request(|e, id| e.invite_to_group(id, group_id, user_id))
    }

    /// Owner/admin: accepts or rejects a user's request to join.
    pub fn respond_join_request(
        &self,
        group_id: GroupId,
        user_id: UserId,
        accept: bool,
    ) -> Result<()> {
        self.ok_request(|e, id| e.respond_join_request(id, group_id, user_id, accept))
    }

    /// Every member, page after page (for owners and admins, also the
    /// invited and those asking to join: `Member::pending`).
    pub fn group_members(&self, group_id: GroupId) -> Result<Vec<Member>> {
        all_pages(|after| self.group_members_page(group_id, after, 0))
    }

    /// One page of members, as [`list_friends_page`](Self::list_friends_page).
    pub fn group_members_page(
        &self,
        group_id: GroupId,
        after_id: UserId,
        limit: u32,
    ) -> Result<(Vec<Member>, UserId)> {
        self.request(
            |e, id| e.group_members_page(id, group_id, after_id, limit),
            |r| match r {
                Reply::MemberList(m, next) => Ok((m, next)),
                r => Err(r),
            },
        )
    }

    pub fn remove_member(&self, group_id: GroupId, user_id: UserId) -> Result<()> {
        self.ok_request(|e, id| e.remove_member(id, group_id, user_id))
    }

    pub fn set_admin(&self, group_id: GroupId, user_id: UserId, admin: bool) -> Result<()> {
        self.ok_request(|e, id| e.set_admin(id, group_id, user_id, admin))
    }

    pub fn dissolve_group(&self, group_id: GroupId) -> Result<()> {
        self.ok_request(|e, id| e.dissolve_group(id, group_id))
    }

    /// Every group of the user, page after page.
    pub fn list_groups(&self) -> Result<Vec<GroupInfo>> {
        all_pages(|after| self.list_groups_page(after, 0))
    }

    /// One page of groups, as [`list_friends_page`](Self::list_friends_page).
    pub fn list_groups_page(
        &self,
        after_id: GroupId,
        limit: u32,
    ) -> Result<(Vec<GroupInfo>, GroupId)> {
        self.request(
            |e, id| e.list_groups_page(id, after_id, limit),
            |r| match r {
                Reply::GroupList(g, next) => Ok((g, next)),
                r => Err(r),
            },
        )
    }

    // ------------------------------------------------------------ messages

    /// Sends to a friend; returns once the server has stored the message.
    pub fn send_direct(&self, to: UserId, body: &str) -> Result<Sent> {
        let mid = self.next_msg_id();
        self.send_raw(to, 0, mid, body)
    }

    pub fn send_group(&self, group_id: GroupId, body: &str) -> Result<Sent> {
        let mid = self.next_msg_id();
        self.send_raw(0, group_id, mid, body)
    }

    /// Sends with every field explicit: resend tests reuse a
    /// `client_msg_id`, protocol tests set both or neither target.
    pub fn send_raw(
        &self,
        to_user: UserId,
        group_id: GroupId,
        client_msg_id: u64,
        body: &str,
    ) -> Result<Sent> {
        self.send_request(|e, id| e.send_message(id, to_user, group_id, client_msg_id, body))
    }

    /// Messages before `before_seq` (0 = latest), ascending.
    pub fn history(
        &self,
        conversation: ConvId,
        before_seq: Seq,
        limit: u32,
    ) -> Result<Vec<ChatMsg>> {
        self.request(
            |e, id| e.history(id, conversation, before_seq, limit),
            |r| match r {
                Reply::Messages(m) => Ok(m),
                r => Err(r),
            },
        )
    }

    // ------------------------------------------------------------ conversation state

    /// Every conversation of the user (direct and group) with its read
    /// state and newest message, page after page.
    pub fn list_conversations(&self) -> Result<Vec<ConversationInfo>> {
        all_pages(|after| self.list_conversations_page(after, 0))
    }

    /// One page of conversations by conversation id (`after` 0: the first);
    /// the second value is the cursor of the next page (0: none).
    pub fn list_conversations_page(
        &self,
        after: ConvId,
        limit: u32,
    ) -> Result<(Vec<ConversationInfo>, ConvId)> {
        self.request(
            |e, id| e.list_conversations(id, after, limit),
            |r| match r {
                Reply::ConversationList(c, next) => Ok((c, next)),
                r => Err(r),
            },
        )
    }

    /// Every participant's read cursor in `conversation`, by user id.
    pub fn read_cursors(&self, conversation: ConvId) -> Result<Vec<(UserId, Seq)>> {
        all_pages(|after| self.read_cursors_page(conversation, after, 0))
    }

    pub fn read_cursors_page(
        &self,
        conversation: ConvId,
        after_id: UserId,
        limit: u32,
    ) -> Result<(Vec<(UserId, Seq)>, UserId)> {
        self.request(
            |e, id| e.read_cursors(id, conversation, after_id, limit),
            |r| match r {
                Reply::ReadCursorList(c, next) => Ok((c, next)),
                r => Err(r),
            },
        )
    }

    /// Tells the conversation's online participants the user is typing
    /// (`stopped`: no longer). The server rate-limits these per user.
    pub fn typing(&self, conversation: ConvId, stopped: bool) -> Result<()> {
        self.request(
            |e, id| e.typing(id, conversation, stopped),
            |r| match r {
                Reply::Ok => Ok(()),
                r => Err(r),
            },
        )
    }

    /// Moves the user's delivered cursors (fire-and-forget, no reply).
    pub fn ack(&self, items: &[(ConvId, Seq)]) -> Result<()> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        self.shared.write_frame(|e| e.ack(items))?;
        Ok(())
    }

    /// Writes bytes as they are, bypassing the encoder. Only for tests that
    /// must break the protocol (e.g. a connection dying mid-frame).
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<()> {
        lock(&self.shared.writer).stream.write_all(bytes)?;
        Ok(())
    }

    /// Closes the socket; the reader then emits [`Event::Closed`].
    pub fn close(&self) {
        let _ = lock(&self.shared.writer).stream.shutdown(Shutdown::Both);
    }

    // ------------------------------------------------------------ events

    /// The next event, waiting up to `timeout`. `None` on timeout or after
    /// [`Event::Closed`] has been returned.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        let mut q = lock(&self.events);
        if let Some(e) = q.skipped.pop_front() {
            return Some(e);
        }
        q.recv(Instant::now() + timeout)
    }

    /// The first event (queued or arriving within `timeout`) that matches
    /// `pred`; events skipped over stay queued in order for later calls.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.events);
        if let Some(i) = q.skipped.iter().position(&mut pred) {
            return q.skipped.remove(i);
        }
        // New arrivals that don't match are parked behind the already
        // skipped ones, preserving arrival order.
        while let Some(e) = q.recv(deadline) {
            if pred(&e) {
                return Some(e);
            }
            let closed = e == Event::Closed;
            q.skipped.push_back(e);
            if closed {
                return None;
            }
        }
        None
    }

    /// Waits for `n` messages (matching `pred`), keeping other events queued.
    /// Returns what arrived if the timeout passes first.
    pub fn wait_messages(
        &self,
        n: usize,
        timeout: Duration,
        mut pred: impl FnMut(&ChatMsg) -> bool,
    ) -> Vec<ChatMsg> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_for(left, |e| matches!(e, Event::Message(m) if pred(m))) {
                Some(Event::Message(m)) => out.push(m),
                _ => break,
            }
        }
        out
    }

    /// Every event already received, without waiting.
    pub fn drain_events(&self) -> Vec<Event> {
        let mut q = lock(&self.events);
        let mut out: Vec<Event> = q.skipped.drain(..).collect();
        while let Ok(e) = q.rx.try_recv() {
            out.push(e);
        }
        out
    }
}

impl EventQueue {
    fn recv(&mut self, deadline: Instant) -> Option<Event> {
        if self.done {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(e) => {
                if e == Event::Closed {
                    self.done = true;
                }
                Some(e)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.done = true;
                None
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
        if let Some((stop, h)) = self.keepalive.take() {
            drop(stop);
            let _ = h.join();
        }
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

/// The client half of the WebSocket upgrade (`GET /ws`); returns the bytes
/// read past the response (already WebSocket frames).
fn ws_handshake(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let key = ws::new_key();
    let host = stream.peer_addr()?.to_string();
    stream.write_all(ws::upgrade_request(&host, &key).as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "connection closed during the WebSocket upgrade".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match ws::upgrade_response(&buf, &key) {
            Ok(Some(used)) => return Ok(buf[used..].to_vec()),
            Ok(None) => {}
            Err(why) => return Err(ClientError::Protocol(why)),
        }
    }
}

/// Reads native frames into `buf`: straight from the socket, or out of
/// WebSocket messages (answering pings; `false` once the peer closes).
fn read_frames(
    stream: &mut TcpStream,
    ws_in: &mut Option<ws::WsIn>,
    buf: &mut FrameBuf,
    shared: &Shared,
) -> bool {
    let Some(w) = ws_in else {
        return match stream.read(buf.spare(64 * 1024)) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.filled(n);
                true
            }
        };
    };
    let mut control = Vec::new();
    loop {
        match w.step(buf, &mut control) {
            ws::Step::Frame => break,
            ws::Step::Close(c) => {
                let close = ws::close_frame(ws::Role::Client, c.code, "");
                let _ = lock(&shared.writer).stream.write_all(&close);
                return false;
            }
            ws::Step::More => {
                if !control.is_empty() {
                    let _ = lock(&shared.writer).stream.write_all(&control);
                    control.clear();
                }
                match stream.read(w.spare(64 * 1024)) {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => w.filled(n),
                }
            }
        }
    }
    if !control.is_empty() {
        let _ = lock(&shared.writer).stream.write_all(&control);
    }
    true
}

fn reader_loop(
    mut stream: TcpStream,
    mut ws_in: Option<ws::WsIn>,
    shared: Arc<Shared>,
    events: Sender<Event>,
) {
    let mut buf = FrameBuf::new(CLIENT_MAX_FRAME);
    'read: loop {
        if !read_frames(&mut stream, &mut ws_in, &mut buf, &shared) {
            break;
        }
        loop {
            let range = match buf.next_frame() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            let incoming = match decode::decode(buf.get(range)) {
                Ok(i) => i,
                Err(_) => break 'read,
            };
            let mut step = Step::default();
            match incoming {
                Incoming::Reply(id, reply) => {
                    let fill = lock(&shared.fills).remove(&id);
                    if let Some(conv) = fill {
                        // The answer to a gap fill this reader asked for.
                        let mut ib = lock(&shared.inbox);
                        let mut progressed = false;
                        if let Reply::Messages(msgs) = reply {
                            for m in msgs.into_iter().filter(|m| m.conversation == conv) {
                                let e = ib.arrive(conv, m.seq, Some(m));
                                progressed |= e.new;
                                step.take(&ib, conv, e, &events);
                            }
                        }
                        let e = ib.fill_done(conv, progressed);
                        step.take(&ib, conv, e, &events);
                    } else {
                        if let Reply::SendOk(s) = &reply {
                            // This device's own message: held from now on.
                            // No ack for it: storing it moved the sender's
                            // read cursor already. Messages it releases are
                            // acked with the next push.
                            let mut ib = lock(&shared.inbox);
                            let mut e = ib.arrive(s.conversation, s.seq, None);
                            let released = !e.shown.is_empty();
                            e.advanced &= released;
                            step.take(&ib, s.conversation, e, &events);
                        }
                        // A missing entry means the caller timed out and left.
                        if let Some(tx) = lock(&shared.pending).remove(&id) {
                            let _ = tx.send(reply);
                        }
                    }
                }
                Incoming::Messages(msgs) => {
                    let mut ib = lock(&shared.inbox);
                    for m in msgs {
                        let conv = m.conversation;
                        if shared.dedup {
                            let e = ib.arrive(conv, m.seq, Some(m));
                            step.take(&ib, conv, e, &events);
                        } else {
                            // Raw: show exactly what the server sent; the
                            // cursor still follows (no gap fills).
                            let mut e = ib.arrive(conv, m.seq, None);
                            e.fill = None;
                            let _ = events.send(Event::Message(m));
                            step.take(&ib, conv, e, &events);
                        }
                    }
                }
                Incoming::Event(e) => {
                    let _ = events.send(e);
                }
                Incoming::Ignored => {}
            }
            // Best effort: a failed write shows up as a read error next.
            if !step.acks.is_empty() && shared.auto_ack.load(Ordering::SeqCst) {
                let _ = shared.write_frame(|e| e.ack(&step.acks));
            }
            for f in step.fills {
                let id = shared.next_req.fetch_add(1, Ordering::SeqCst);
                lock(&shared.fills).insert(id, f.conv);
                let _ = shared.write_frame(|e| e.history(id, f.conv, f.before, f.limit));
            }
        }
    }
    shared.close_pending();
    let _ = stream.shutdown(Shutdown::Both);
    let _ = events.send(Event::Closed);
}

/// Re-exported so callers can match on error codes without naming `wire`.
pub use crate::wire::fb::{ErrorCode, FriendEventKind, FriendState, GroupEventKind};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_shareable_across_threads() {
        fn is<T: Send + Sync>() {}
        is::<Client>();
    }

    #[test]
    fn display_uses_plain_words() {
        let e = ClientError::Server {
            code: ErrorCode::NotFriends,
            message: "you are not friends".into(),
        };
        assert_eq!(
            e.to_string(),
            "server refused (NotFriends): you are not friends"
        );
        assert_eq!(e.code(), Some(ErrorCode::NotFriends));
        assert_eq!(ClientError::Timeout.code(), None);
    }
}

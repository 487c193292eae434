//! One shard: the state an executor owns and the messages shards exchange.
//!
//! Ownership (shared-nothing, see docs/ARCHITECTURE.md):
//! - a user's *home shard* holds all of their connections (moved there at
//!   login), their presence, friend set and delivery cursors;
//! - a conversation's *owner shard* sequences its messages and owns its
//!   membership or friendship state;
//! - every shard keeps a replica of who is online on this node.
//!
//! Handlers never await another shard: they push into a per-destination
//! outbox and a forwarding task per destination awaits channel capacity.
//! A shard whose peer is full therefore keeps draining its own inbox, which
//! rules out the send-while-inbox-full deadlock of bounded meshes.

use super::Config;
use super::io::{Frame, Outbound, Signal};
use super::metrics::Metrics;
use crate::core::group::GroupAction;
use crate::core::owner::ConvCore;
use crate::core::pair::PairAction;
use crate::model::{ConvId, GroupId, Seq, UserId, home_shard};
use crate::store::{Store, StoredMessage, WriteOp};
use crate::wire::{Enc, fb};
use ahash::{AHashMap, AHashSet};
use glommio::channels::channel_mesh::{Receivers, Senders};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;

pub type ConnId = u64;

/// Where a request came from, so its reply finds its way back.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `None`: this node. Otherwise the node to reply to over the bus.
    pub node: Option<Arc<str>>,
    pub shard: usize,
    pub conn: ConnId,
    pub req_id: u64,
    pub user: UserId,
    pub name: Arc<str>,
}

/// Work for a conversation's owner shard (also sent between nodes).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum OwnerOp {
    Send {
        conv: ConvId,
        client_msg_id: u64,
        body: String,
    },
    Pair {
        other: UserId,
        action: PairAction,
    },
    Group {
        group: GroupId,
        action: GroupAction,
    },
    Members {
        group: GroupId,
        after: UserId,
        limit: u32,
    },
    History {
        group: GroupId,
        before: Seq,
        limit: u32,
    },
    /// An operator's system message to a group (`server::admin`): sender
    /// `SYSTEM_USER`, sequenced like any message.
    System {
        group: GroupId,
        client_msg_id: u64,
        body: String,
    },
    /// The origin's user is typing in `conv` (relayed, never stored).
    Typing {
        conv: ConvId,
        stopped: bool,
    },
}

impl OwnerOp {
    /// Whether running this twice has the effect of running it once, so a
    /// forwarded copy may be sent to a new owner when the first one died
    /// before answering (`core::forward`). Sends are: the owner's
    /// `client_msg_id` dedup, rebuilt from the store, answers a repeat with
    /// the original seq. Reads are. Friendship and group changes are not
    /// (a repeated accept or join answers an error the user did not cause).
    pub fn repeatable(&self) -> bool {
        matches!(
            self,
            OwnerOp::Send { .. }
                | OwnerOp::System { .. }
                | OwnerOp::Members { .. }
                | OwnerOp::History { .. }
        )
    }
}

/// A connection moving to its user's home shard after authentication.
#[derive(Debug)]
pub struct HandOff {
    /// The connection's place under the node's connection caps.
    pub slot: super::limits::ConnSlot,
    /// The protocol the connection speaks (it takes the connection over).
    pub proto: Arc<dyn super::protocol::Protocol>,
    pub fd: OwnedFd,
    /// Bytes already read past the login frame (pipelined requests).
    pub pending: Vec<u8>,
    pub req_id: u64,
    pub user: UserId,
    pub name: Arc<str>,
    pub token: String,
    pub since: Vec<(ConvId, Seq)>,
}

#[derive(Debug)]
pub enum ShardMsg {
    HandOff(Box<HandOff>),
    Owner(Origin, OwnerOp),
    /// A reply frame for a connection homed on the receiving shard.
    Reply {
        conn: ConnId,
        frame: Vec<u8>,
    },
    /// Push a shared frame to every session of `users` (homed on the
    /// receiving shard) except connection `skip`. `msg` marks chat messages,
    /// which are held while a session replays.
    Push {
        users: Vec<UserId>,
        frame: Arc<[u8]>,
        skip: ConnId,
        msg: Option<(ConvId, Seq)>,
    },
    /// `user` came online / went offline on this node (first session started /
    /// last one ended). Sent to every shard of the node.
    Presence {
        user: UserId,
        online: bool,
    },
    /// The friendship of `user` (homed on the receiving shard) with `friend` changed.
    FriendSet {
        user: UserId,
        friend: UserId,
        friends: bool,
    },
}

/// A logged-in connection, on its user's home shard.
pub struct Conn {
    pub id: ConnId,
    pub user: UserId,
    pub out: Rc<Outbound>,
    /// Live chat pushes held while the session replays stored messages.
    pub hold: RefCell<Option<crate::core::sync::Hold<Arc<[u8]>>>>,
    /// What this session may acknowledge: per conversation (the user's at
    /// login, plus every one a message was delivered from since), the
    /// highest seq it has been sent or has sent itself. Acks for anything
    /// else are dropped at the session (they would only fill the cursor
    /// buffer and the store: a flood of them slowed everyone's sends), and
    /// acks past that seq are capped (an ack of u64::MAX would otherwise
    /// hide every later message from the user's next catch-up).
    pub convs: RefCell<AHashMap<ConvId, Seq>>,
    /// Set when an operator closed the session (`server::admin`): the
    /// `session ended` log line's reason.
    pub ended_by: Cell<Option<&'static str>>,
    /// SHA-256 of the resume token this connection logged in or resumed
    /// with (native sessions; the old protocol has none): a logout closes
    /// every live connection using it.
    pub token_hash: Option<Vec<u8>>,
}

impl Conn {
    pub fn new(
        id: ConnId,
        user: UserId,
        out: Rc<Outbound>,
        hold_cap: usize,
        token_hash: Option<Vec<u8>>,
    ) -> Conn {
        Conn {
            id,
            user,
            out,
            hold: RefCell::new(Some(crate::core::sync::Hold::new(hold_cap))),
            convs: RefCell::new(AHashMap::new()),
            ended_by: Cell::new(None),
            token_hash,
        }
    }
}

/// Why a user's sessions end before their connections do (logout, logout
/// everywhere, password change). Crosses nodes on the cluster bus.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Revoked {
    /// One token was logged out: every connection using it closes.
    Logout(Vec<u8>),
    /// Every session of the user ends.
    LogoutAll,
    /// The password changed: every session of the user ends but the one
    /// that changed it.
    PasswordChanged,
}

impl Revoked {
    /// The Goodbye's words.
    pub fn text(&self) -> &'static str {
        match self {
            Revoked::Logout(_) => "session ended: this session token was logged out",
            Revoked::LogoutAll => "session ended: logged out everywhere",
            Revoked::PasswordChanged => "session ended: the password was changed; log in again",
        }
    }
}

/// Per-user state on the home shard while the user has sessions.
#[derive(Default)]
pub struct UserState {
    pub conns: Vec<ConnId>,
    /// Friend ids, loaded at the first session; `None` until loaded.
    pub friends: Option<AHashSet<UserId>>,
    /// Whether friends were told this user is online.
    pub announced: bool,
    /// Friendship changes that arrived while `friends` was loading: the
    /// loaded list may predate them, so they are applied on top of it (and
    /// a new friend already online is shown to the user then).
    pub early_friend_sets: Vec<(UserId, bool)>,
    /// Read receipts announced (`ReadUpTo`), per conversation.
    pub read: crate::core::receipts::ReadMarks,
}

/// State of one conversation on its owner shard.
pub enum ConvEntry {
    Loading(Vec<(Origin, OwnerOp)>),
    Ready(Box<ConvState>),
}

pub struct ConvState {
    /// Latest cluster view generation under which this state is known
    /// valid: the one it was loaded under, advanced by
    /// `Shard::carry_owned_convs` while this node keeps owning it. An older
    /// one means ownership may have moved away and back: reload then.
    pub view_gen: u64,
    /// The decisions: seqs, dedup, who may send, who receives (sans IO).
    pub conv: ConvCore<Origin>,
    pub queue: VecDeque<(Origin, OwnerOp)>,
    pub busy: bool,
    /// `Shard::clock_s` when last used: unused state is dropped after a
    /// while (see `evict_idle_convs`).
    pub last_used: u64,
}

impl ConvState {
    /// Nothing queued, running or in flight: safe to forget (reloaded from
    /// the store on next use).
    pub fn idle(&self) -> bool {
        !self.busy && self.queue.is_empty() && self.conv.idle()
    }
}

/// What to do once a batch is durable.
pub enum Completion {
    Sent {
        origin: Origin,
        conv: ConvId,
        client_msg_id: u64,
        seq: Seq,
        ts: u64,
        frame: Arc<[u8]>,
        recipients: Vec<UserId>,
        /// When the owner sequenced it (the send→ack histogram).
        sequenced: std::time::Instant,
    },
}

/// Group commit: ops accumulate while the previous batch is being written.
#[derive(Default)]
pub struct Writer {
    pub ops: RefCell<Vec<WriteOp>>,
    pub done: RefCell<Vec<Completion>>,
    pub wake: Signal,
    pub idle: Signal,
    pub busy: Cell<bool>,
    /// Batches taken for writing / finished (ok or failed).
    pub started: Cell<u64>,
    pub finished: Cell<u64>,
    /// Tasks waiting for a batch number to finish.
    pub waiters: RefCell<Vec<(u64, Rc<Signal>)>>,
}

pub struct Shard {
    pub id: usize,
    pub n: usize,
    pub cfg: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// Node-wide group commit of hot writes (see `store::commit`).
    pub committer: crate::store::commit::GroupCommitter,
    /// Password hashing and login throttling (node-wide, see `hasher`).
    pub hasher: Arc<super::hasher::Hasher>,
    /// Connection caps and refusal counters (node-wide, see `limits`).
    pub limits: Arc<super::limits::NodeLimits>,
    /// Per-user rate buckets of the users homed here.
    pub rates: RefCell<super::limits::Rates>,
    pub metrics: Metrics,
    senders: Senders<ShardMsg>,
    outbox: RefCell<Vec<VecDeque<ShardMsg>>>,
    outbox_len: Cell<usize>,
    outbox_signal: Vec<Signal>,
    pub outbox_room: Signal,
    local: RefCell<VecDeque<ShardMsg>>,
    local_signal: Signal,
    pub conns: RefCell<AHashMap<ConnId, Rc<Conn>>>,
    pub users: RefCell<AHashMap<UserId, UserState>>,
    /// Who is online anywhere on this node (replica kept by Presence broadcasts).
    pub online: RefCell<AHashSet<UserId>>,
    /// user -> local users who have them as a friend (presence fan-out).
    pub watchers: RefCell<AHashMap<UserId, Vec<UserId>>>,
    pub convs: RefCell<AHashMap<ConvId, ConvEntry>>,
    /// Cluster mode: Redis bus and presence registry.
    pub cluster: Option<Rc<dyn super::router::Router>>,
    pub writer: Writer,
    /// Acked cursors not yet written: (user, conv) -> seq.
    pub cursors: RefCell<AHashMap<(UserId, ConvId), Seq>>,
    pub enc: RefCell<Enc>,
    next_conn: Cell<u64>,
    pub stopping: Cell<bool>,
    /// Seconds since the shard started, advanced by its ticker: a clock
    /// for coarse bookkeeping that costs nothing per message.
    pub clock_s: Cell<u64>,
    /// Operators' broadcasts waiting for their owner's answer, by ticket
    /// (`server::admin`).
    pub admin_waiting: RefCell<AHashMap<u64, flume::Sender<super::admin::Broadcasted>>>,
    next_ticket: Cell<u64>,
}

/// Outbox depth at which connection readers pause (backpressure).
pub const OUTBOX_HIGH: usize = 64 * 1024;

impl Shard {
    pub fn new(
        id: usize,
        n: usize,
        cfg: Arc<Config>,
        (store, committer, hasher, limits): (
            Arc<dyn Store>,
            crate::store::commit::GroupCommitter,
            Arc<super::hasher::Hasher>,
            Arc<super::limits::NodeLimits>,
        ),
        senders: Senders<ShardMsg>,
    ) -> Shard {
        let cluster = cfg.cluster.clone();
        let rates = RefCell::new(super::limits::Rates::new(&limits.cfg));
        Shard {
            limits,
            rates,
            id,
            n,
            cfg,
            store,
            committer,
            hasher,
            metrics: Metrics::new(id),
            senders,
            outbox: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            outbox_len: Cell::new(0),
            outbox_signal: (0..n).map(|_| Signal::default()).collect(),
            outbox_room: Signal::default(),
            local: RefCell::new(VecDeque::new()),
            local_signal: Signal::default(),
            conns: RefCell::new(AHashMap::new()),
            users: RefCell::new(AHashMap::new()),
            online: RefCell::new(AHashSet::new()),
            watchers: RefCell::new(AHashMap::new()),
            convs: RefCell::new(AHashMap::new()),
            cluster: cluster.map(|c| c.for_shard(id)),
            writer: Writer::default(),
            cursors: RefCell::new(AHashMap::new()),
            enc: RefCell::new(Enc::new()),
            next_conn: Cell::new(1),
            stopping: Cell::new(false),
            clock_s: Cell::new(0),
            admin_waiting: RefCell::new(AHashMap::new()),
            next_ticket: Cell::new(1),
        }
    }

    /// A fresh ticket for an operator's request (its `req_id`).
    pub fn admin_ticket(&self) -> u64 {
        let t = self.next_ticket.get();
        self.next_ticket.set(t + 1);
        t
    }

    /// A reply frame for connection `conn` homed here (or for an operator's
    /// request: `admin::ADMIN_CONN`).
    pub fn reply_to_conn(&self, conn: ConnId, frame: Frame) {
        if conn == super::admin::ADMIN_CONN {
            super::admin::answered(self, frame.bytes());
        } else if let Some(c) = self.conns.borrow().get(&conn) {
            c.out.push(frame);
        }
    }

    pub fn new_conn_id(&self) -> ConnId {
        let c = self.next_conn.get();
        self.next_conn.set(c + 1);
        ((self.id as u64) << 48) | c
    }

    /// Generation of the cluster view (0 on a single node).
    pub fn view_gen(&self) -> u64 {
        self.cluster.as_ref().map(|c| c.view_gen()).unwrap_or(0)
    }

    pub fn home(&self, user: UserId) -> usize {
        home_shard(user, self.n)
    }

    // ------------------------------------------------------------ mesh

    /// Queues `msg` for shard `to`; never blocks.
    pub fn send(&self, to: usize, msg: ShardMsg) {
        if to == self.id {
            self.local.borrow_mut().push_back(msg);
            self.local_signal.notify();
        } else {
            self.outbox.borrow_mut()[to].push_back(msg);
            self.outbox_len.set(self.outbox_len.get() + 1);
            self.metrics.outbox_depth.set(self.outbox_len.get() as u64);
            self.outbox_signal[to].notify();
        }
    }

    pub fn outbox_full(&self) -> bool {
        self.outbox_len.get() >= OUTBOX_HIGH
    }

    /// Forwards the outbox for `to` over the mesh channel, awaiting capacity.
    pub async fn forward_loop(self: Rc<Self>, to: usize) {
        loop {
            let msg = self.outbox.borrow_mut()[to].pop_front();
            match msg {
                Some(m) => {
                    self.outbox_len.set(self.outbox_len.get() - 1);
                    if self.outbox_len.get() == OUTBOX_HIGH / 2 {
                        self.outbox_room.notify();
                    }
                    if self.senders.send_to(to, m).await.is_err() {
                        // Peer is gone (shutting down): nothing to deliver to.
                        if self.stopping.get() {
                            return;
                        }
                    }
                }
                None => self.outbox_signal[to].wait().await,
            }
        }
    }

    /// Handles messages this shard sent itself.
    pub async fn local_loop(self: Rc<Self>) {
        loop {
            let msg = self.local.borrow_mut().pop_front();
            match msg {
                Some(m) => self.handle(m),
                None => self.local_signal.wait().await,
            }
        }
    }

    /// Spawns one receiving task per peer.
    pub fn spawn_receivers(self: &Rc<Self>, mut receivers: Receivers<ShardMsg>) {
        for (_peer, rx) in receivers.streams() {
            let me = self.clone();
            glommio::spawn_local(async move {
                use futures_lite::StreamExt;
                let mut rx = rx;
                // One await per message: `next()` on a non-empty channel is
                // Ready without parking, and a Pending poll registers exactly
                // one waker, which the next send drains (docs/WAKEUPS.md).
                // Never poll this receiver from anywhere else.
                while let Some(m) = rx.next().await {
                    me.handle(m);
                }
            })
            .detach();
        }
    }

    fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::HandOff(h) => h.proto.clone().adopt(self.clone(), *h),
            ShardMsg::Owner(origin, op) => super::owner::submit(self, origin, op),
            ShardMsg::Reply { conn, frame } => self.reply_to_conn(conn, Frame::Own(frame)),
            ShardMsg::Push {
                users,
                frame,
                skip,
                msg,
            } => self.deliver_local(&users, &frame, skip, msg),
            ShardMsg::Presence { user, online } => {
                let before = self.is_online(user);
                if online {
                    self.online.borrow_mut().insert(user);
                } else {
                    self.online.borrow_mut().remove(&user);
                }
                self.presence_transition(user, before);
            }
            ShardMsg::FriendSet {
                user,
                friend,
                friends,
            } => self.friend_set(user, friend, friends),
        }
    }

    /// Tells local watchers (users who have `user` as a friend) when the
    /// user's online state, as seen from here, changed.
    pub fn presence_transition(&self, user: UserId, before: bool) {
        let after = self.is_online(user);
        if before == after {
            return;
        }
        let watchers = self
            .watchers
            .borrow()
            .get(&user)
            .cloned()
            .unwrap_or_default();
        if !watchers.is_empty() {
            let f: Arc<[u8]> = self.enc.borrow_mut().presence(user, after).into();
            self.deliver_local(&watchers, &f, 0, None);
        }
    }

    /// The friendship of local user `user` with `friend` changed.
    pub fn friend_set(&self, user: UserId, friend: UserId, friends: bool) {
        let mut users = self.users.borrow_mut();
        let Some(st) = users.get_mut(&user) else {
            return; // not online here: nothing to keep
        };
        let Some(set) = st.friends.as_mut() else {
            // The friend list is still loading: apply this once it is.
            st.early_friend_sets.push((friend, friends));
            return;
        };
        let changed = if friends {
            set.insert(friend)
        } else {
            set.remove(&friend)
        };
        drop(users);
        if !changed {
            return;
        }
        let mut w = self.watchers.borrow_mut();
        if friends {
            w.entry(friend).or_default().push(user);
        } else if let Some(v) = w.get_mut(&friend) {
            v.retain(|u| *u != user);
            if v.is_empty() {
                w.remove(&friend);
            }
        }
        drop(w);
        if friends {
            self.show_online(user, friend);
        }
    }

    /// Tells local user `user` that `friend` is online, if they are (for a
    /// friendship that just began: no presence transition will say it).
    fn show_online(&self, user: UserId, friend: UserId) {
        if self.is_online(friend) {
            let f: Arc<[u8]> = self.enc.borrow_mut().presence(friend, true).into();
            self.deliver_local(&[user], &f, 0, None);
        }
    }

    // ------------------------------------------------------------ delivery

    /// Sends a reply frame to the connection that made the request.
    pub fn reply(&self, origin: &Origin, frame: &[u8]) {
        if let (Some(node), Some(c)) = (&origin.node, &self.cluster) {
            c.reply_remote(node.clone(), origin.shard, origin.conn, frame);
            return;
        }
        if origin.shard == self.id {
            self.reply_to_conn(origin.conn, Frame::Own(frame.to_vec()));
        } else {
            self.send(
                origin.shard,
                ShardMsg::Reply {
                    conn: origin.conn,
                    frame: frame.to_vec(),
                },
            );
        }
    }

    pub fn reply_error(&self, origin: &Origin, code: fb::ErrorCode, text: &str) {
        let f = self
            .enc
            .borrow_mut()
            .error(origin.req_id, code, text)
            .to_vec();
        self.reply(origin, &f);
    }

    /// Pushes `frame` to every session of `users`, one mesh message per
    /// destination shard carrying the shared frame.
    pub fn push_users(
        &self,
        users: &[UserId],
        frame: Arc<[u8]>,
        skip: ConnId,
        msg: Option<(ConvId, Seq)>,
    ) {
        if let Some(c) = &self.cluster {
            c.push_remote(users, &frame, msg, None);
        }
        self.push_local(users, frame, skip, msg);
    }

    /// Delivers a chat message to every session of `users`, except the
    /// connection that sent it (wherever in the cluster it is).
    pub fn push_message(
        &self,
        users: &[UserId],
        frame: Arc<[u8]>,
        origin: &Origin,
        msg: (ConvId, Seq),
    ) {
        let local_skip = if origin.node.is_none() {
            origin.conn
        } else {
            0
        };
        if let Some(c) = &self.cluster {
            let node = origin.node.clone().unwrap_or_else(|| c.me());
            c.push_remote(users, &frame, Some(msg), Some((node, origin.conn)));
        }
        self.push_local(users, frame, local_skip, Some(msg));
    }

    /// The node-local part of a push: one mesh message per home shard.
    fn push_local(
        &self,
        users: &[UserId],
        frame: Arc<[u8]>,
        skip: ConnId,
        msg: Option<(ConvId, Seq)>,
    ) {
        if self.n == 1 {
            self.deliver_local(users, &frame, skip, msg);
            return;
        }
        let mut by_shard: Vec<Vec<UserId>> = vec![Vec::new(); self.n];
        for &u in users {
            by_shard[self.home(u)].push(u);
        }
        for (s, us) in by_shard.into_iter().enumerate() {
            if us.is_empty() {
                continue;
            }
            if s == self.id {
                self.deliver_local(&us, &frame, skip, msg);
            } else {
                self.send(
                    s,
                    ShardMsg::Push {
                        users: us,
                        frame: frame.clone(),
                        skip,
                        msg,
                    },
                );
            }
        }
    }

    pub fn deliver_local(
        &self,
        users: &[UserId],
        frame: &Arc<[u8]>,
        skip: ConnId,
        msg: Option<(ConvId, Seq)>,
    ) {
        let states = self.users.borrow();
        let conns = self.conns.borrow();
        for u in users {
            let Some(st) = states.get(u) else { continue };
            for cid in &st.conns {
                let Some(c) = conns.get(cid) else { continue };
                if let Some((conv, seq)) = msg {
                    // The sender's own connection is not sent its message,
                    // but it may acknowledge it.
                    let mut known = c.convs.borrow_mut();
                    let k = known.entry(conv).or_insert(0);
                    *k = (*k).max(seq);
                }
                if *cid == skip {
                    continue;
                }
                if let Some((conv, seq)) = msg {
                    if let Some(h) = c.hold.borrow_mut().as_mut() {
                        h.push(conv, seq, frame.clone());
                        continue;
                    }
                    self.metrics.msgs_out.set(self.metrics.msgs_out.get() + 1);
                }
                c.out.push(Frame::Shared(frame.clone()));
            }
        }
    }

    // ------------------------------------------------------------ sessions and presence

    /// Registers a logged-in connection. Returns true for the user's first session.
    pub fn register(&self, conn: Rc<Conn>) -> bool {
        let user = conn.user;
        self.conns.borrow_mut().insert(conn.id, conn.clone());
        let mut users = self.users.borrow_mut();
        let st = users.entry(user).or_default();
        st.conns.push(conn.id);
        self.metrics.sessions.set(self.conns.borrow().len() as u64);
        st.conns.len() == 1
    }

    /// Called once the user's friend set is loaded after the first session:
    /// indexes it for presence and tells every shard the user is online.
    pub fn announce_online(&self, user: UserId, mut friends: AHashSet<UserId>) {
        let mut users = self.users.borrow_mut();
        let Some(st) = users.get_mut(&user) else {
            return; // already gone again
        };
        // Changes that came while the list loaded win over it (the list may
        // or may not include them, depending on which the store saw first).
        let early = std::mem::take(&mut st.early_friend_sets);
        let mut new_friends = Vec::new();
        for &(f, on) in &early {
            if on {
                friends.insert(f);
                new_friends.push(f);
            } else {
                friends.remove(&f);
                new_friends.retain(|x| *x != f);
            }
        }
        {
            let mut w = self.watchers.borrow_mut();
            for f in &friends {
                w.entry(*f).or_default().push(user);
            }
        }
        st.friends = Some(friends);
        st.announced = true;
        drop(users);
        for s in 0..self.n {
            self.send(s, ShardMsg::Presence { user, online: true });
        }
        // A friendship that began meanwhile: show the new friend's presence,
        // as `friend_set` would have had the list been loaded.
        for f in new_friends {
            self.show_online(user, f);
        }
    }

    /// Closes the live connections of `user` (homed here) that `why` ends,
    /// except connection `keep`: each gets a Goodbye `BadToken` naming why,
    /// after what is already queued for it. Returns how many were closed.
    pub fn end_sessions(&self, user: UserId, why: &Revoked, keep: Option<ConnId>) -> usize {
        let ids = match self.users.borrow().get(&user) {
            Some(st) => st.conns.clone(),
            None => return 0,
        };
        let conns = self.conns.borrow();
        let mut n = 0;
        for id in ids {
            let Some(c) = conns.get(&id) else { continue };
            let ends = match why {
                Revoked::Logout(th) => c.token_hash.as_deref() == Some(th.as_slice()),
                Revoked::LogoutAll | Revoked::PasswordChanged => true,
            };
            if Some(id) == keep || !ends || c.out.is_closing() {
                continue;
            }
            self.goodbye(c, crate::wire::fb::ErrorCode::BadToken, why.text());
            n += 1;
        }
        n
    }

    /// Tells `conn` why its session ends (`Goodbye`) and closes it once that
    /// is written.
    pub fn goodbye(&self, conn: &Conn, code: crate::wire::fb::ErrorCode, text: &str) {
        let f = self.enc.borrow_mut().goodbye(code, text).to_vec();
        conn.out.push(Frame::Own(f));
        conn.out.close();
    }

    /// Removes a connection; the last one of a user announces them offline.
    pub fn unregister(&self, conn: &Conn) {
        self.conns.borrow_mut().remove(&conn.id);
        self.metrics.sessions.set(self.conns.borrow().len() as u64);
        let mut users = self.users.borrow_mut();
        let Some(st) = users.get_mut(&conn.user) else {
            return;
        };
        st.conns.retain(|c| *c != conn.id);
        if !st.conns.is_empty() {
            return;
        }
        let st = users.remove(&conn.user).unwrap_or_default();
        drop(users);
        if let Some(friends) = &st.friends {
            let mut w = self.watchers.borrow_mut();
            for f in friends {
                if let Some(v) = w.get_mut(f) {
                    v.retain(|u| *u != conn.user);
                    if v.is_empty() {
                        w.remove(f);
                    }
                }
            }
        }
        if let Some(c) = &self.cluster {
            c.user_offline(conn.user);
        }
        if st.announced {
            for s in 0..self.n {
                self.send(
                    s,
                    ShardMsg::Presence {
                        user: conn.user,
                        online: false,
                    },
                );
            }
        }
    }

    /// Online anywhere: on this node, or on another node of the cluster.
    pub fn is_online(&self, user: UserId) -> bool {
        self.online.borrow().contains(&user)
            || self.cluster.as_ref().is_some_and(|c| c.remote_online(user))
    }

    /// Friends of a user with a session on this shard (empty if unknown).
    pub fn friends_of_local(&self, user: UserId) -> AHashSet<UserId> {
        self.users
            .borrow()
            .get(&user)
            .and_then(|s| s.friends.clone())
            .unwrap_or_default()
    }

    // ------------------------------------------------------------ storage

    /// Runs a blocking store call on the blocking pool. A panic inside is
    /// turned into an error instead of leaving the caller waiting forever.
    pub async fn blocking<R, F>(&self, f: F) -> crate::store::Result<R>
    where
        F: FnOnce(&dyn Store) -> crate::store::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let store = self.store.clone();
        let job = glommio::executor().spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&*store))).unwrap_or_else(
                |_| {
                    Err(crate::store::StoreError::Backend(
                        "store call panicked".into(),
                    ))
                },
            )
        });
        self.bounded(job).await
    }

    /// Fails a store call still unanswered after `cfg.store_timeout`: the
    /// mysql driver bounds each socket operation, but a partitioned store
    /// (packets vanish) makes a call wait again on every reconnect and
    /// rollback, for minutes. The blocking thread keeps the call and it
    /// finishes or fails on its own; its caller has been answered
    /// `Internal` (retryable) by then, which is safe: a resent message is
    /// deduped by its `client_msg_id` against whatever did get stored, and a
    /// failed batch reloads its conversations from the store.
    pub async fn bounded<R>(
        &self,
        call: impl std::future::Future<Output = crate::store::Result<R>>,
    ) -> crate::store::Result<R> {
        let limit = self.cfg.store_timeout;
        futures_lite::future::or(call, async move {
            glommio::timer::sleep(limit).await;
            Err(crate::store::StoreError::Backend(format!(
                "store call unanswered after {limit:?}"
            )))
        })
        .await
    }

    /// Queues a hot-path write for the next group commit.
    pub fn write(&self, op: WriteOp, done: Option<Completion>) {
        self.writer.ops.borrow_mut().push(op);
        if let Some(d) = done {
            self.writer.done.borrow_mut().push(d);
        }
        self.writer.wake.notify();
    }

    /// The group-commit loop: one transaction per batch, then acks and delivery.
    pub async fn writer_loop(self: Rc<Self>) {
        loop {
            let ops = std::mem::take(&mut *self.writer.ops.borrow_mut());
            if ops.is_empty() {
                self.writer.busy.set(false);
                self.writer.idle.notify();
                self.writer.wake.wait().await;
                continue;
            }
            self.writer.busy.set(true);
            self.writer.started.set(self.writer.started.get() + 1);
            let done = std::mem::take(&mut *self.writer.done.borrow_mut());
            let n = ops.len();
            let started = std::time::Instant::now();
            let res = self.bounded(self.committer.write_async(ops)).await;
            self.metrics.record_batch(n, started.elapsed());
            match res {
                Ok(()) => {
                    for c in done {
                        super::owner::complete(&self, c);
                    }
                }
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "batch write failed");
                    self.metrics
                        .store_errors
                        .set(self.metrics.store_errors.get() + 1);
                    // Everything assigned but not durable is failed, including
                    // what queued meanwhile, and the conversations reload
                    // from the store so seqs stay dense.
                    let mut failed = done;
                    failed.append(&mut self.writer.done.borrow_mut());
                    // Acked cursors stay; a sender's own cursor goes with
                    // its message (the seq is handed out again).
                    let mut ops = self.writer.ops.borrow_mut();
                    let dropped: AHashSet<(UserId, ConvId, Seq)> = ops
                        .iter()
                        .filter_map(|op| match op {
                            WriteOp::Message(m) => Some((m.sender, m.conv, m.seq)),
                            WriteOp::Cursor { .. } => None,
                        })
                        .collect();
                    ops.retain(|op| match op {
                        WriteOp::Cursor { user, conv, seq } => {
                            !dropped.contains(&(*user, *conv, *seq))
                        }
                        WriteOp::Message(_) => false,
                    });
                    drop(ops);
                    super::owner::fail(&self, failed);
                }
            }
            let finished = self.writer.started.get();
            self.writer.finished.set(finished);
            self.writer.waiters.borrow_mut().retain(|(target, s)| {
                if *target <= finished {
                    s.notify();
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Makes everything this shard has accepted so far durable before
    /// returning: pending acked cursors are queued and the batch holding
    /// them is awaited. Used before a catch-up query, so a client that acked
    /// and reconnected is not replayed what it acknowledged. Waits for one
    /// batch, not for the writer to go idle (it may never, under load).
    pub async fn sync_point(&self) {
        self.flush_cursors();
        let target = if !self.writer.ops.borrow().is_empty() {
            self.writer.started.get() + 1
        } else if self.writer.busy.get() {
            self.writer.started.get()
        } else {
            return;
        };
        let sig = Rc::new(Signal::default());
        self.writer.waiters.borrow_mut().push((target, sig.clone()));
        while self.writer.finished.get() < target {
            sig.wait().await;
        }
    }

    /// After the cluster view changed from generation `from` to `to`:
    /// owner state valid under `from` whose conversation this node still
    /// owns (`still_mine`) is valid under `to` as well, so it is kept.
    /// Rendezvous ownership moves only the conversations of the nodes that
    /// left or joined; without this, every view change (a node killed,
    /// restarted, drained) made every node reload every conversation it
    /// owns, a store query storm (~4 queries and a 256-row tail each) at the
    /// moment the survivors also take over the dead node's conversations
    /// and resume its clients. The rest keeps its old generation and is
    /// reloaded on next use (it may have moved away and back). Called for
    /// every change, in order, so "valid under the current generation"
    /// means "owned here continuously since loaded". Returns how many
    /// states were kept.
    pub fn carry_owned_convs(
        &self,
        from: u64,
        to: u64,
        still_mine: impl Fn(ConvId) -> bool,
    ) -> usize {
        let mut kept = 0;
        for (conv, e) in self.convs.borrow_mut().iter_mut() {
            if let ConvEntry::Ready(st) = e
                && st.view_gen == from
                && still_mine(*conv)
            {
                st.view_gen = to;
                kept += 1;
            }
        }
        kept
    }

    /// Bounds the owner cache: conversations unused for `idle_s` seconds
    /// are dropped, and past `max` conversations any idle ones (they reload
    /// from the store in one query when used again). Each costs ~25 KiB
    /// (mostly its dedup window), so a node that served many conversations
    /// once must not keep them all for weeks. Returns how many were dropped.
    pub fn evict_idle_convs(&self, max: usize, idle_s: u64) -> usize {
        let now = self.clock_s.get();
        let mut convs = self.convs.borrow_mut();
        let before = convs.len();
        convs.retain(|_, e| match e {
            ConvEntry::Ready(st) => !(st.idle() && now.saturating_sub(st.last_used) >= idle_s),
            ConvEntry::Loading(_) => true,
        });
        if convs.len() <= max {
            return before - convs.len();
        }
        let target = max - max / 10;
        let mut excess = convs.len() - target;
        convs.retain(|_, e| {
            if excess == 0 {
                return true;
            }
            match e {
                ConvEntry::Ready(st) if st.idle() => {
                    excess -= 1;
                    false
                }
                _ => true,
            }
        });
        before - convs.len()
    }

    /// Moves acked cursors into the writer (batched, every `interval`).
    pub fn flush_cursors(&self) {
        let cursors = std::mem::take(&mut *self.cursors.borrow_mut());
        if cursors.is_empty() {
            return;
        }
        let mut ops = self.writer.ops.borrow_mut();
        for ((user, conv), seq) in cursors {
            ops.push(WriteOp::Cursor { user, conv, seq });
        }
        drop(ops);
        self.writer.wake.notify();
    }

    /// Waits until every queued write is durable.
    pub async fn flush_writes(&self) {
        loop {
            if self.writer.ops.borrow().is_empty() && !self.writer.busy.get() {
                return;
            }
            self.writer.wake.notify();
            self.writer.idle.wait().await;
        }
    }
}

/// Builds the live push for one message (encoded once for all recipients).
pub fn message_frame(enc: &mut Enc, m: &StoredMessage) -> Arc<[u8]> {
    enc.messages(0, std::iter::once(m)).into()
}

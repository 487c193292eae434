//! One shard's part of the cluster: its Redis connections, its view of the
//! live nodes and of remote presence, and the ordered outgoing bus queue.

use super::redis::{self as r, RedisConn};
use super::{
    ALIVE_TTL_MS, ClusterConfig, NodeMsg, NodeView, PRESENCE_TTL_S, PresenceMsg, WireOrigin,
};
use crate::core::forward::Forwards;
use crate::model::{ConvId, Seq, UserId, home_shard};
use crate::server::io::{Frame, Signal};
use crate::server::router::{LocalFut, Router, RouterFactory};
use crate::server::shard::{Conn, Origin, OwnerOp, Revoked, Shard, ShardMsg};
use ahash::{AHashMap, AHashSet};
use redis::Value;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// How often each shard probes the other nodes' bus subscriptions
/// (`PUBSUB NUMSUB`): a killed process's sockets are closed by its kernel at
/// once, so Redis drops its subscriptions at once, and the probe sees the
/// death within this interval, long before its liveness key expires.
const PROBE_MS: u64 = 200;
/// The full view refresh (heartbeat, node set, liveness keys) runs every
/// this many probes (1 s).
const REFRESH_EVERY: u64 = 5;
/// A forwarded request unanswered this long is answered `Internal`
/// (retryable) by the forwarding node (core::forward).
const FORWARD_TIMEOUT_MS: u64 = 10_000;

/// What a forwarding shard keeps of a request until it is answered: its
/// conversation, where the answer goes, and the operation itself when it is
/// safe to send to a new owner (`OwnerOp::repeatable`).
type Forwarded = (ConvId, Origin, Option<OwnerOp>);

/// A destination on the bus: (node, shard).
type Dest = (Arc<str>, usize);

enum Outgoing {
    To {
        node: Arc<str>,
        shard: usize,
        msg: NodeMsg,
    },
    Push {
        users: Vec<UserId>,
        frame: Arc<[u8]>,
        msg: Option<(ConvId, Seq)>,
        /// The sending connection (node, conn), which must not get its own message.
        skip: Option<(Arc<str>, u64)>,
    },
    FriendSet {
        user: UserId,
        friend: UserId,
        friends: bool,
    },
    Close {
        user: UserId,
        code: u16,
        text: String,
    },
    Offline(UserId),
    EndSessions {
        user: UserId,
        why: Revoked,
    },
}

pub struct ClusterShard {
    pub cfg: Arc<ClusterConfig>,
    shard: usize,
    me: Arc<str>,
    conn: RefCell<Option<Rc<RedisConn>>>,
    view: RefCell<NodeView>,
    /// user -> other nodes holding their sessions.
    remote: RefCell<AHashMap<UserId, Vec<Arc<str>>>>,
    queue: RefCell<Vec<Outgoing>>,
    /// When the oldest message now in `queue` was queued (bus lag metric).
    queued_since: Cell<Option<std::time::Instant>>,
    wake: Signal,
    /// Bumped when the live node set changes: owner caches older than this reload.
    pub view_gen: Cell<u64>,
    /// Set when the node leaves: no more heartbeats or re-registration.
    leaving: Cell<bool>,
    /// Until then the view does not shrink: our command connection was
    /// re-made, maybe to a restarted Redis that holds no registrations
    /// yet, so a node missing from it is one that has not re-registered,
    /// not one that died. Shrinking meant two owners for its conversations
    /// for ~1 s (bench/chaos.sh: `batch write failed ... already exists`,
    /// thousands of `Internal` answers, sends waiting up to 5.7 s).
    fresh_redis_until: Cell<Option<std::time::Instant>>,
    /// Requests forwarded to owners on other nodes, until answered.
    forwards: RefCell<Forwards<Forwarded>>,
    /// Nodes seen with a bus subscriber since our Redis connection was made:
    /// only for those does a vanished subscription mean death (a node that
    /// is starting has not subscribed yet).
    subscribed: RefCell<AHashSet<Arc<str>>>,
    /// Nodes whose subscription vanished: out of the view even while their
    /// liveness key has not expired yet.
    down: RefCell<AHashSet<Arc<str>>>,
    epoch: std::time::Instant,
}

fn as_strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items
            .into_iter()
            .filter_map(|x| match x {
                Value::BulkString(b) => String::from_utf8(b).ok(),
                Value::SimpleString(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl ClusterShard {
    pub fn new(cfg: Arc<ClusterConfig>, shard: usize) -> ClusterShard {
        let me: Arc<str> = cfg.node.as_str().into();
        ClusterShard {
            cfg,
            shard,
            me,
            conn: RefCell::new(None),
            view: RefCell::new(NodeView::default()),
            remote: RefCell::new(AHashMap::new()),
            queue: RefCell::new(Vec::new()),
            queued_since: Cell::new(None),
            wake: Signal::default(),
            view_gen: Cell::new(0),
            leaving: Cell::new(false),
            fresh_redis_until: Cell::new(None),
            forwards: RefCell::new(Forwards::new(FORWARD_TIMEOUT_MS)),
            subscribed: RefCell::new(AHashSet::new()),
            down: RefCell::new(AHashSet::new()),
            epoch: std::time::Instant::now(),
        }
    }

    pub fn me(&self) -> &Arc<str> {
        &self.me
    }

    fn conn(&self) -> Option<Rc<RedisConn>> {
        self.conn.borrow().clone().filter(|c| !c.is_broken())
    }

    fn push(&self, o: Outgoing) {
        if self.queued_since.get().is_none() {
            self.queued_since.set(Some(std::time::Instant::now()));
        }
        self.queue.borrow_mut().push(o);
        self.wake.notify();
    }

    pub fn send_to(&self, node: Arc<str>, shard: usize, msg: NodeMsg) {
        self.push(Outgoing::To { node, shard, msg });
    }

    /// Live delivery to users' sessions on other nodes (looked up in Redis
    /// after the message is durable; see the module docs of `cluster`).
    pub fn push_remote(
        &self,
        users: &[UserId],
        frame: &Arc<[u8]>,
        msg: Option<(ConvId, Seq)>,
        skip: Option<(Arc<str>, u64)>,
    ) {
        self.push(Outgoing::Push {
            users: users.to_vec(),
            frame: frame.clone(),
            msg,
            skip,
        });
    }

    pub fn friend_set_remote(&self, user: UserId, friend: UserId, friends: bool) {
        self.push(Outgoing::FriendSet {
            user,
            friend,
            friends,
        });
    }

    pub fn user_offline(&self, user: UserId) {
        self.push(Outgoing::Offline(user));
    }

    pub fn close_remote(&self, user: UserId, code: crate::wire::fb::ErrorCode, text: &str) {
        self.push(Outgoing::Close {
            user,
            code: code.0,
            text: text.to_string(),
        });
    }

    pub fn end_sessions_remote(&self, user: UserId, why: &Revoked) {
        self.push(Outgoing::EndSessions {
            user,
            why: why.clone(),
        });
    }

    pub fn remote_online(&self, user: UserId) -> bool {
        self.remote
            .borrow()
            .get(&user)
            .is_some_and(|v| !v.is_empty())
    }

    /// The node (and its shard count) owning `conv`, if it is another node.
    pub fn remote_owner(&self, conv: ConvId) -> Option<(Arc<str>, usize)> {
        let v = self.view.borrow();
        match v.owner(conv) {
            Some((n, s)) if *n != self.me => Some((n.clone(), *s)),
            _ => None,
        }
    }

    pub fn wire_origin(&self, o: &Origin) -> WireOrigin {
        WireOrigin {
            node: self.me.to_string(),
            shard: o.shard,
            conn: o.conn,
            req_id: o.req_id,
            user: o.user,
            name: o.name.to_string(),
        }
    }

    /// Records that `user` has a session on this node. Awaited *before* the
    /// session's catch-up query: a sender's node that reads the registry
    /// after its message became durable either sees this node (and pushes
    /// live) or the message was durable before, so the catch-up has it.
    pub async fn register_user(&self, user: UserId) {
        let Some(c) = self.conn() else { return };
        let loc = self.cfg.loc_key(user);
        let a = c.start(redis::cmd("SADD").arg(&loc).arg(self.me.as_ref()));
        c.fire(redis::cmd("EXPIRE").arg(&loc).arg(PRESENCE_TTL_S));
        c.fire(
            redis::cmd("SADD")
                .arg(self.cfg.users_key(&self.me))
                .arg(user),
        );
        let p = PresenceMsg {
            node: self.me.to_string(),
            user,
            online: true,
        };
        c.fire(&publish_presence(&self.cfg, &p));
        let _ = a.wait().await;
    }

    /// Connects, registers, loads the live view and presence, subscribes and
    /// starts this shard's cluster tasks. Returns once subscribed.
    async fn start_shard(self: Rc<Self>, shard: Rc<Shard>) -> Result<(), String> {
        let c = &self;
        tracing::debug!(shard = c.shard, "connecting to redis");
        let conn = RedisConn::connect(&c.cfg.redis).await?;
        tracing::debug!(shard = c.shard, "redis connected");
        *c.conn.borrow_mut() = Some(conn);
        c.forget_previous_sessions().await?;
        c.heartbeat(shard.n).await?;
        tracing::debug!(shard = c.shard, "registered");
        c.refresh_view(&shard).await;
        let (tx, rx) = glommio::channels::local_channel::new_bounded::<()>(1);
        glommio::spawn_local(subscriber_loop(shard.clone(), self.clone(), tx)).detach();
        let _ = rx.recv().await;
        tracing::debug!(shard = c.shard, "subscribed");
        glommio::spawn_local(outgoing_loop(shard.clone(), self.clone())).detach();
        glommio::spawn_local(refresh_loop(shard.clone(), self.clone())).detach();
        // Warm-up: the other nodes refresh their view every second; taking
        // traffic only after they have seen us keeps every node agreeing on
        // conversation owners from our first request on.
        glommio::timer::sleep(Duration::from_millis(1500)).await;
        c.refresh_view(&shard).await;
        Ok(())
    }

    /// Shard 0, before announcing this node: sessions that a previous
    /// process of the same name held are gone. A node restarted before its
    /// liveness key expired never looked dead to the others, so nothing else
    /// would turn those users offline for their friends (they would stay
    /// online forever). This process holds no session yet: announce each of
    /// them offline and clear their registry entries.
    async fn forget_previous_sessions(&self) -> Result<(), String> {
        if self.shard != 0 {
            return Ok(());
        }
        let Some(c) = self.conn() else {
            return Err("redis connection lost".into());
        };
        let users_key = self.cfg.users_key(&self.me);
        let v = c
            .query(redis::cmd("SMEMBERS").arg(&users_key))
            .await
            .map_err(|e| format!("redis: {e}"))?;
        let users: Vec<UserId> = as_strings(v)
            .into_iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        tracing::info!(
            users = users.len(),
            "sessions of a previous process of this node: announcing them offline"
        );
        for &user in &users {
            c.fire(
                redis::cmd("SREM")
                    .arg(self.cfg.loc_key(user))
                    .arg(self.me.as_ref()),
            );
            let p = PresenceMsg {
                node: self.me.to_string(),
                user,
                online: false,
            };
            c.fire(&publish_presence(&self.cfg, &p));
        }
        c.query(redis::cmd("DEL").arg(&users_key))
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(())
    }

    /// Graceful exit: sends what is queued for other nodes, then removes
    /// this node (shard 0) and this shard's users from the registry.
    pub async fn leave(&self, shard: &Shard) {
        self.leaving.set(true);
        for _ in 0..100 {
            if self.queue.borrow().is_empty() {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let Some(c) = self.conn() else { return };
        let mut last = Vec::new();
        if self.shard == 0 {
            last.push(c.start(redis::cmd("DEL").arg(self.cfg.alive_key(&self.me))));
            last.push(
                c.start(
                    redis::cmd("SREM")
                        .arg(self.cfg.nodes_key())
                        .arg(self.me.as_ref()),
                ),
            );
            last.push(c.start(redis::cmd("DEL").arg(self.cfg.users_key(&self.me))));
        }
        let users: Vec<UserId> = shard.users.borrow().keys().copied().collect();
        for u in users {
            last.push(
                c.start(
                    redis::cmd("SREM")
                        .arg(self.cfg.loc_key(u))
                        .arg(self.me.as_ref()),
                ),
            );
        }
        for p in last {
            let _ = p.wait().await;
        }
    }

    /// Shard 0 keeps the node's liveness key and membership alive.
    async fn heartbeat(&self, shards: usize) -> Result<(), String> {
        if self.shard != 0 || self.leaving.get() {
            return Ok(());
        }
        let Some(c) = self.conn() else {
            return Err("redis connection lost".into());
        };
        let a = c.start(
            redis::cmd("SADD")
                .arg(self.cfg.nodes_key())
                .arg(self.me.as_ref()),
        );
        let b = c.start(
            redis::cmd("SET")
                .arg(self.cfg.alive_key(&self.me))
                .arg(shards)
                .arg("PX")
                .arg(ALIVE_TTL_MS),
        );
        c.fire(
            redis::cmd("EXPIRE")
                .arg(self.cfg.users_key(&self.me))
                .arg(PRESENCE_TTL_S),
        );
        a.wait().await.map_err(|e| format!("redis: {e}"))?;
        b.wait().await.map_err(|e| format!("redis: {e}"))?;
        Ok(())
    }

    /// Reads the live node set; on change, drops owner caches and adjusts
    /// remote presence (a dead node's users go offline here).
    async fn refresh_view(&self, shard: &Rc<Shard>) {
        let Some(c) = self.conn() else { return };
        let Ok(names) = c
            .query(redis::cmd("SMEMBERS").arg(self.cfg.nodes_key()))
            .await
        else {
            return;
        };
        let mut names = as_strings(names);
        names.sort();
        let pending: Vec<_> = names
            .iter()
            .map(|n| c.start(redis::cmd("GET").arg(self.cfg.alive_key(n))))
            .collect();
        let mut nodes = Vec::new();
        let mut dead = Vec::new();
        for (n, p) in names.into_iter().zip(pending) {
            match p.wait().await {
                Ok(Value::BulkString(b)) => {
                    let shards = std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(1);
                    nodes.push((Arc::<str>::from(n.as_str()), shards));
                }
                Ok(Value::Nil) => dead.push(n),
                _ => return,
            }
        }
        {
            // A node whose liveness key is gone needs no probe any more;
            // one whose subscription vanished is out of the view already.
            let mut down = self.down.borrow_mut();
            let mut subscribed = self.subscribed.borrow_mut();
            for d in &dead {
                down.remove(d.as_str());
                subscribed.remove(d.as_str());
            }
            nodes.retain(|(n, _)| !down.contains(n));
            if self
                .fresh_redis_until
                .get()
                .is_some_and(|t| std::time::Instant::now() < t)
            {
                // Keep the nodes we knew (a death meanwhile is seen when
                // the grace ends: the TTL, or the probe once subscribed).
                for o in &self.view.borrow().nodes {
                    if !nodes.iter().any(|(n, _)| n == &o.0) && !down.contains(&o.0) {
                        nodes.push(o.clone());
                    }
                }
                nodes.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
        if self.shard == 0 {
            for d in &dead {
                c.fire(redis::cmd("SREM").arg(self.cfg.nodes_key()).arg(d));
            }
        }
        let new = NodeView { nodes };
        let old = self.view.borrow().clone();
        if new == old {
            return;
        }
        tracing::info!(shard = self.shard, nodes = ?new.nodes, "cluster view changed");
        *self.view.borrow_mut() = new.clone();
        let from = self.view_gen.get();
        self.view_gen.set(from + 1);
        let kept = shard.carry_owned_convs(from, from + 1, |conv| {
            new.owner(conv).is_some_and(|(n, _)| *n == self.me)
        });
        tracing::debug!(
            shard = self.shard,
            kept,
            "owner state kept across the view change"
        );
        self.reroute(shard);
        // Nodes that left: their users are offline unless seen elsewhere.
        let gone: AHashSet<&str> = old
            .nodes
            .iter()
            .filter(|(n, _)| !new.contains(n))
            .map(|(n, _)| n.as_ref())
            .collect();
        if !gone.is_empty() {
            let users: Vec<UserId> = self
                .remote
                .borrow()
                .iter()
                .filter(|(_, ns)| ns.iter().any(|n| gone.contains(n.as_ref())))
                .map(|(u, _)| *u)
                .collect();
            for u in users {
                let before = shard.is_online(u);
                if let Some(ns) = self.remote.borrow_mut().get_mut(&u) {
                    ns.retain(|n| !gone.contains(n.as_ref()));
                }
                self.remote.borrow_mut().retain(|_, ns| !ns.is_empty());
                shard.presence_transition(u, before);
            }
        }
        // Nodes that joined: load who is online there.
        for (n, _) in new
            .nodes
            .iter()
            .filter(|(n, _)| !old.contains(n) && *n != self.me)
        {
            let Ok(v) = c
                .query(redis::cmd("SMEMBERS").arg(self.cfg.users_key(n)))
                .await
            else {
                continue;
            };
            for u in as_strings(v)
                .into_iter()
                .filter_map(|s| s.parse::<UserId>().ok())
            {
                self.set_remote(shard, u, n.clone(), true);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// After a view change: every request waiting on a node that left goes
    /// to the conversation's new owner if it is safe to repeat, or is
    /// answered `Internal` (retryable) now. Never silence.
    fn reroute(&self, shard: &Rc<Shard>) {
        let gone = {
            // Only owners known dead (bus subscription gone): a node that
            // left gracefully still drains and answers what it holds, and a
            // second owner storing it too would collide on (conv, seq).
            // The rest is answered by its owner or expires (10 s).
            let view = self.view.borrow();
            let down = self.down.borrow();
            self.forwards
                .borrow_mut()
                .owner_gone(|n| view.contains(n) || !down.contains(n))
        };
        self.resend_forwards(shard, gone);
    }

    /// After the bus came back (our subscription was re-made after a Redis
    /// restart): any request forwarded before, or its reply, may have been
    /// published while a subscriber was missing (PUBLISH to nobody is
    /// dropped) or not published at all (`redis down: bus messages
    /// dropped`). Without this the sender waited for the 10 s deadline, or
    /// its own ~5 s resend (bench/chaos.sh measured 5.3 s). Every request
    /// still waiting is sent again to its owner now, exactly as after an
    /// owner's death (a send is repeatable: the owner's `client_msg_id`
    /// dedup answers a stored one with its seq; a second answer is dropped
    /// by `Forwards::answered`), other operations are answered `Internal`.
    fn reroute_all(&self, shard: &Rc<Shard>) {
        let all = self.forwards.borrow_mut().owner_gone(|_| false);
        if !all.is_empty() {
            tracing::info!(
                shard = self.shard,
                requests = all.len(),
                "bus back: forwarded requests sent again"
            );
        }
        self.resend_forwards(shard, all);
    }

    /// [`Self::reroute_all`] after each of `delays_ms` (from now, one
    /// after another), in the background.
    fn reroute_later(self: &Rc<Self>, shard: &Rc<Shard>, delays_ms: &'static [u64]) {
        let (shard, c) = (shard.clone(), self.clone());
        glommio::spawn_local(async move {
            for &ms in delays_ms {
                glommio::timer::sleep(Duration::from_millis(ms)).await;
                c.reroute_all(&shard);
            }
        })
        .detach();
    }

    fn resend_forwards(
        &self,
        shard: &Rc<Shard>,
        gone: Vec<(crate::core::forward::Key, Forwarded)>,
    ) {
        for (_, (conv, origin, op)) in gone {
            match op {
                Some(op) => {
                    crate::server::metrics::Metrics::inc(&shard.metrics.forwards_rerouted);
                    if let Some((o, op)) = self.route_owner(conv, origin, op) {
                        let to = crate::model::owner_shard(conv, shard.n);
                        shard.send(to, ShardMsg::Owner(o, op));
                    }
                }
                None => {
                    crate::server::metrics::Metrics::inc(&shard.metrics.forwards_failed);
                    shard.reply_error(
                        &origin,
                        crate::wire::fb::ErrorCode::Internal,
                        "the conversation's server went away; retry",
                    );
                }
            }
        }
    }

    /// Answers `Internal` to forwarded requests past their deadline.
    fn expire_forwards(&self, shard: &Shard) {
        let late = self.forwards.borrow_mut().expired(self.now_ms());
        for (_, (_, origin, _)) in late {
            crate::server::metrics::Metrics::inc(&shard.metrics.forwards_expired);
            shard.reply_error(
                &origin,
                crate::wire::fb::ErrorCode::Internal,
                "no answer from the conversation's server; retry",
            );
        }
    }

    /// One `PUBSUB NUMSUB` over this shard's own channel and shard 0's
    /// channel of every other known node. Returns whether the set of nodes
    /// known down changed (then the caller refreshes the view).
    ///
    /// Why no false positives under load: the count is the state of a
    /// node's socket to Redis, which a busy or stalled executor keeps open;
    /// only the process's death (its kernel closes the socket), its loss of
    /// Redis, or its shard 0 resubscribing clears it. The probe means
    /// nothing while this shard is not subscribed itself (Redis restarting),
    /// and a node counts as down only after it was seen subscribed on the
    /// current Redis connection.
    async fn probe(&self, shard: &Shard) -> bool {
        let Some(c) = self.conn() else { return false };
        let nodes: Vec<Arc<str>> = {
            let view = self.view.borrow();
            let down = self.down.borrow();
            let mut v: Vec<Arc<str>> = view
                .nodes
                .iter()
                .map(|(n, _)| n.clone())
                .chain(down.iter().cloned())
                .filter(|n| *n != self.me)
                .collect();
            v.sort();
            v.dedup();
            v
        };
        if nodes.is_empty() {
            return false;
        }
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB")
            .arg(self.cfg.channel(&self.me, self.shard));
        for n in &nodes {
            cmd.arg(self.cfg.channel(n, 0));
        }
        let Ok(v) = c.query(&cmd).await else {
            return false;
        };
        let counts = numsub_counts(v);
        if counts.len() != nodes.len() + 1 || counts[0] == 0 {
            return false;
        }
        let mut changed = false;
        let mut subscribed = self.subscribed.borrow_mut();
        let mut down = self.down.borrow_mut();
        for (n, &count) in nodes.iter().zip(&counts[1..]) {
            if count > 0 {
                subscribed.insert(n.clone());
                changed |= down.remove(n);
            } else if count == 0 && subscribed.contains(n) && down.insert(n.clone()) {
                changed = true;
                crate::server::metrics::Metrics::inc(&shard.metrics.nodes_down);
                tracing::warn!(
                    shard = self.shard,
                    node = %n,
                    "node's bus subscription is gone: taking it out of the view"
                );
            }
        }
        changed
    }

    fn set_remote(&self, shard: &Shard, user: UserId, node: Arc<str>, online: bool) {
        let before = shard.is_online(user);
        {
            let mut r = self.remote.borrow_mut();
            let e = r.entry(user).or_default();
            if online {
                if !e.contains(&node) {
                    e.push(node);
                }
            } else {
                e.retain(|n| *n != node);
                if e.is_empty() {
                    r.remove(&user);
                }
            }
        }
        shard.presence_transition(user, before);
    }

    /// After a reconnect to Redis: put this shard's users back in the registry.
    fn reregister(&self, shard: &Shard) {
        let Some(c) = self.conn() else { return };
        let users: Vec<UserId> = shard.users.borrow().keys().copied().collect();
        for u in users {
            let loc = self.cfg.loc_key(u);
            c.fire(redis::cmd("SADD").arg(&loc).arg(self.me.as_ref()));
            c.fire(redis::cmd("EXPIRE").arg(&loc).arg(PRESENCE_TTL_S));
            c.fire(redis::cmd("SADD").arg(self.cfg.users_key(&self.me)).arg(u));
        }
    }

    fn on_message(&self, shard: &Rc<Shard>, channel: &[u8], payload: Vec<u8>) {
        let payload = match self.cfg.open(channel, &payload) {
            Ok(body) => body,
            Err(why) => {
                let m = &shard.metrics.bus_rejected;
                crate::server::metrics::Metrics::inc(m);
                // Logged at the first and then every 1000th: an intruder
                // publishing in a loop must not flood the log.
                if m.get() % 1000 == 1 {
                    tracing::warn!(
                        shard = self.shard,
                        reason = ?why,
                        rejected = m.get(),
                        "bus message dropped: not signed with the cluster key"
                    );
                }
                return;
            }
        };
        if channel == self.cfg.presence_channel().as_bytes() {
            if let Some(p) = super::decode::<PresenceMsg>(payload)
                && p.node != *self.me
            {
                self.set_remote(shard, p.user, p.node.as_str().into(), p.online);
            }
            return;
        }
        let Some(msgs) = super::decode::<Vec<NodeMsg>>(payload) else {
            tracing::warn!("undecodable bus message dropped");
            return;
        };
        for m in msgs {
            match m {
                NodeMsg::Owner(o, op) => {
                    let node = (o.node != *self.me).then(|| Arc::<str>::from(o.node.as_str()));
                    let origin = Origin {
                        node,
                        shard: o.shard,
                        conn: o.conn,
                        req_id: o.req_id,
                        user: o.user,
                        name: o.name.into(),
                    };
                    crate::server::owner::submit(shard, origin, op);
                }
                NodeMsg::Reply { conn, frame } => {
                    // Exactly one answer per forwarded request: one that was
                    // re-routed, failed or timed out already is dropped.
                    let req_id = crate::wire::decode(&frame).map(|e| e.req_id()).unwrap_or(0);
                    if req_id != 0 && !self.forwards.borrow_mut().answered((conn, req_id)) {
                        crate::server::metrics::Metrics::inc(&shard.metrics.forwards_late);
                        continue;
                    }
                    shard.reply_to_conn(conn, Frame::Own(frame))
                }
                NodeMsg::Push {
                    users,
                    frame,
                    msg,
                    skip_node,
                    skip_conn,
                } => {
                    let f: Arc<[u8]> = frame.into();
                    let skip = if skip_node == *self.me { skip_conn } else { 0 };
                    shard.deliver_local(&users, &f, skip, msg);
                }
                NodeMsg::FriendSet {
                    user,
                    friend,
                    friends,
                } => shard.friend_set(user, friend, friends),
                NodeMsg::Close { user, code, text } => {
                    let code = crate::wire::fb::ErrorCode(code);
                    let reason = crate::server::admin::close_reason(code);
                    crate::server::admin::close_user(shard, user, code, &text, reason);
                }
                NodeMsg::EndSessions { user, why } => {
                    shard.end_sessions(user, &why, None);
                }
            }
        }
    }
}

impl Router for ClusterShard {
    fn view_gen(&self) -> u64 {
        self.view_gen.get()
    }

    fn route_owner(&self, conv: ConvId, origin: Origin, op: OwnerOp) -> Option<(Origin, OwnerOp)> {
        match self.remote_owner(conv) {
            Some((node, shards)) => {
                let o = self.wire_origin(&origin);
                // req_id 0 asks for no tracking (it cannot be told apart
                // from another request on the same connection).
                if origin.req_id != 0 {
                    let key = (origin.conn, origin.req_id);
                    let copy = op.repeatable().then(|| op.clone());
                    let now = self.now_ms();
                    self.forwards
                        .borrow_mut()
                        .sent(key, node.clone(), (conv, origin, copy), now);
                }
                self.send_to(
                    node,
                    crate::model::owner_shard(conv, shards),
                    NodeMsg::Owner(o, op),
                );
                None
            }
            None => Some((origin, op)),
        }
    }

    fn reply_remote(&self, node: Arc<str>, shard: usize, conn: u64, frame: &[u8]) {
        let msg = NodeMsg::Reply {
            conn,
            frame: frame.to_vec(),
        };
        self.send_to(node, shard, msg);
    }

    fn me(&self) -> Arc<str> {
        self.me.clone()
    }

    fn push_remote(
        &self,
        users: &[UserId],
        frame: &Arc<[u8]>,
        msg: Option<(ConvId, Seq)>,
        skip: Option<(Arc<str>, u64)>,
    ) {
        ClusterShard::push_remote(self, users, frame, msg, skip)
    }

    fn friend_set_remote(&self, user: UserId, friend: UserId, friends: bool) {
        ClusterShard::friend_set_remote(self, user, friend, friends)
    }

    fn user_offline(&self, user: UserId) {
        ClusterShard::user_offline(self, user)
    }

    fn close_remote(&self, user: UserId, code: crate::wire::fb::ErrorCode, text: &str) {
        ClusterShard::close_remote(self, user, code, text)
    }

    fn end_sessions_remote(&self, user: UserId, why: &Revoked) {
        ClusterShard::end_sessions_remote(self, user, why)
    }

    fn remote_online(&self, user: UserId) -> bool {
        ClusterShard::remote_online(self, user)
    }

    fn register_user(&self, user: UserId) -> LocalFut<'_, ()> {
        Box::pin(ClusterShard::register_user(self, user))
    }

    fn start(self: Rc<Self>, shard: Rc<Shard>) -> LocalFut<'static, Result<(), String>> {
        Box::pin(self.start_shard(shard))
    }

    fn leave<'a>(&'a self, shard: &'a Shard) -> LocalFut<'a, ()> {
        Box::pin(ClusterShard::leave(self, shard))
    }
}

impl RouterFactory for ClusterConfig {
    fn for_shard(&self, shard: usize) -> Rc<dyn Router> {
        Rc::new(ClusterShard::new(Arc::new(self.clone()), shard))
    }
}

async fn subscriber_loop(
    shard: Rc<Shard>,
    c: Rc<ClusterShard>,
    ready: glommio::channels::local_channel::LocalSender<()>,
) {
    let channels = vec![c.cfg.channel(&c.me, c.shard), c.cfg.presence_channel()];
    let mut first = true;
    loop {
        let sh = shard.clone();
        let sh2 = shard.clone();
        let c2 = c.clone();
        let was_first = first;
        let ready2 = &ready;
        let res = r::subscribe(
            &c.cfg.redis,
            &channels,
            |ch, payload| c2.on_message(&sh, ch, payload),
            || {
                let _ = ready2.try_send(());
                if !was_first {
                    // Messages published while we were not subscribed are
                    // lost to us: make this shard's sessions resume, which
                    // replays everything after their cursors from the store.
                    resync_sessions(&sh2);
                    // Forwarded requests (or their replies) may be lost
                    // too: send them again once now and once more after
                    // the other nodes had time to resubscribe and their
                    // command connections to reconnect (each within ~1 s).
                    c2.reroute_later(&sh2, &[300, 1500]);
                }
            },
        )
        .await;
        first = false;
        if let Err(e) = res {
            tracing::warn!(shard = c.shard, error = %e, "redis subscription lost; reconnecting");
        }
        glommio::timer::sleep(Duration::from_millis(500)).await;
    }
}

/// After the bus subscription came back: every live native session is
/// caught up from the store in place, from what it was sent (`Conn::convs`,
/// the highest seq pushed to it per conversation), instead of being closed.
/// Pushes that arrive meanwhile are held and released without the ones the
/// catch-up covered (`session::go_live`), exactly as after a login; the
/// client dedups by (conv, seq) anyway. A session still in its first replay
/// (its reads may predate the gap) and an old-protocol session (its frames
/// are not native) are closed to resume as before, as is any session whose
/// catch-up fails (store unreachable).
fn resync_sessions(shard: &Rc<Shard>) {
    let conns: Vec<_> = shard.conns.borrow().values().cloned().collect();
    for conn in conns {
        let live = conn.hold.borrow().is_none() && conn.token_hash.is_some();
        if !live {
            bus_goodbye(shard, &conn);
            continue;
        }
        let mut replayed: AHashMap<ConvId, Seq> = conn.convs.borrow().clone();
        *conn.hold.borrow_mut() = Some(crate::core::sync::Hold::new(
            crate::server::session::HOLD_CAP,
        ));
        let shard = shard.clone();
        glommio::spawn_local(async move {
            match crate::server::session::replay_native(&shard, &conn, &[], &mut replayed).await {
                Ok(n) => {
                    tracing::debug!(conn = ?conn.id, replayed = n, "session caught up after bus reconnect");
                }
                Err(_) => bus_goodbye(&shard, &conn),
            }
        })
        .detach();
    }
}

fn bus_goodbye(shard: &Shard, conn: &Conn) {
    shard.goodbye(
        conn,
        crate::wire::fb::ErrorCode::Internal,
        "cluster bus reconnected: resume to catch up",
    );
}

/// Every `PROBE_MS`: the subscription probe and forwarded-request
/// deadlines, and a reconnect while the command connection is down (a
/// restarted Redis is back within a tick, not a second: bus messages are
/// dropped meanwhile); every second: heartbeat and the full view refresh.
async fn refresh_loop(shard: Rc<Shard>, c: Rc<ClusterShard>) {
    let mut tick = 0u64;
    loop {
        glommio::timer::sleep(Duration::from_millis(PROBE_MS)).await;
        tick += 1;
        c.expire_forwards(&shard);
        if !tick.is_multiple_of(REFRESH_EVERY) && c.conn().is_some() {
            if c.probe(&shard).await {
                c.refresh_view(&shard).await;
            }
            continue;
        }
        let secs = tick / REFRESH_EVERY;
        if c.conn().is_none() {
            match RedisConn::connect(&c.cfg.redis).await {
                Ok(conn) => {
                    tracing::info!(shard = c.shard, "redis reconnected");
                    *c.conn.borrow_mut() = Some(conn);
                    // Every node re-registers within ~1 s of Redis being
                    // back (200 ms retries, then its heartbeat).
                    c.fresh_redis_until.set(Some(
                        std::time::Instant::now() + Duration::from_millis(2500),
                    ));
                    // A new Redis (or a restarted one) holds no subscription
                    // yet: a node counts as down by the probe only after it
                    // is seen subscribed again.
                    c.subscribed.borrow_mut().clear();
                    c.reregister(&shard);
                    // What we published while it was down was dropped,
                    // forwarded requests and their replies among them.
                    c.reroute_later(&shard, &[300]);
                }
                Err(_) => continue,
            }
        }
        let _ = c.heartbeat(shard.n).await;
        c.refresh_view(&shard).await;
        if secs.is_multiple_of(PRESENCE_TTL_S / 3) && !c.leaving.get() {
            c.reregister(&shard);
        }
    }
}

/// The counts of a `PUBSUB NUMSUB` reply (channel, count, channel, count…).
fn numsub_counts(v: Value) -> Vec<i64> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .skip(1)
            .step_by(2)
            .map(|x| match x {
                Value::Int(n) => n,
                _ => -1,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Sends queued bus traffic in order: one registry lookup round trip for
/// all recipients of the batch, then one PUBLISH per destination shard.
async fn outgoing_loop(shard: Rc<Shard>, c: Rc<ClusterShard>) {
    loop {
        let items = std::mem::take(&mut *c.queue.borrow_mut());
        let queued_since = c.queued_since.take();
        if items.is_empty() {
            c.wake.wait().await;
            continue;
        }
        let Some(conn) = c.conn() else {
            tracing::warn!(
                shard = c.shard,
                dropped = items.len(),
                "redis down: bus messages dropped"
            );
            continue;
        };
        let mut lookup: Vec<UserId> = Vec::new();
        for it in &items {
            match it {
                Outgoing::Push { users, .. } => lookup.extend_from_slice(users),
                Outgoing::FriendSet { user, .. }
                | Outgoing::Close { user, .. }
                | Outgoing::EndSessions { user, .. } => lookup.push(*user),
                _ => {}
            }
        }
        lookup.sort_unstable();
        lookup.dedup();
        let pending: Vec<_> = lookup
            .iter()
            .map(|u| conn.start(redis::cmd("SMEMBERS").arg(c.cfg.loc_key(*u))))
            .collect();
        let mut found: Vec<(UserId, Vec<String>)> = Vec::with_capacity(lookup.len());
        for (u, p) in lookup.iter().zip(pending) {
            let names = p.wait().await.map(as_strings).unwrap_or_default();
            found.push((*u, names));
        }
        // A node we have not seen yet (it just joined): learn it now rather
        // than skip its users.
        let unknown = found
            .iter()
            .flat_map(|(_, ns)| ns.iter())
            .any(|n| *n != *c.me && !c.view.borrow().contains(n));
        if unknown {
            c.refresh_view(&shard).await;
        }
        let mut nodes_of: AHashMap<UserId, Vec<(Arc<str>, usize)>> = AHashMap::new();
        {
            for (u, names) in found {
                let view = c.view.borrow();
                let v: Vec<(Arc<str>, usize)> = names
                    .into_iter()
                    .filter(|n| *n != *c.me)
                    .filter_map(|n| {
                        view.shards_of(&n)
                            .map(|s| (Arc::<str>::from(n.as_str()), s))
                    })
                    .collect();
                if !v.is_empty() {
                    nodes_of.insert(u, v);
                }
            }
        }
        let mut buckets: Vec<(Dest, Vec<NodeMsg>)> = Vec::new();
        // Published one per message, never in a batch with others: a node
        // of an older version cannot decode it and drops what it arrives in
        // (during a rolling upgrade that must not be anyone's chat message).
        let mut solo: Vec<(Dest, NodeMsg)> = Vec::new();
        let mut bucket = |node: &Arc<str>, s: usize, m: NodeMsg| match buckets
            .iter_mut()
            .find(|((n, sh), _)| n == node && *sh == s)
        {
            Some((_, v)) => v.push(m),
            None => buckets.push(((node.clone(), s), vec![m])),
        };
        for it in items {
            match it {
                Outgoing::To { node, shard, msg } => bucket(&node, shard, msg),
                Outgoing::Push {
                    users,
                    frame,
                    msg,
                    skip,
                } => {
                    let (skip_node, skip_conn) =
                        skip.map(|(n, c)| (n.to_string(), c)).unwrap_or_default();
                    let mut per: Vec<(Dest, Vec<UserId>)> = Vec::new();
                    for u in users {
                        for (n, shards) in nodes_of.get(&u).into_iter().flatten() {
                            let key = (n.clone(), home_shard(u, *shards));
                            match per.iter_mut().find(|(k, _)| *k == key) {
                                Some((_, v)) => v.push(u),
                                None => per.push((key, vec![u])),
                            }
                        }
                    }
                    for ((n, s), us) in per {
                        bucket(
                            &n,
                            s,
                            NodeMsg::Push {
                                users: us,
                                frame: frame.to_vec(),
                                msg,
                                skip_node: skip_node.clone(),
                                skip_conn,
                            },
                        );
                    }
                }
                Outgoing::FriendSet {
                    user,
                    friend,
                    friends,
                } => {
                    for (n, shards) in nodes_of.get(&user).into_iter().flatten() {
                        bucket(
                            n,
                            home_shard(user, *shards),
                            NodeMsg::FriendSet {
                                user,
                                friend,
                                friends,
                            },
                        );
                    }
                }
                Outgoing::Close { user, code, text } => {
                    for (n, shards) in nodes_of.get(&user).into_iter().flatten() {
                        bucket(
                            n,
                            home_shard(user, *shards),
                            NodeMsg::Close {
                                user,
                                code,
                                text: text.clone(),
                            },
                        );
                    }
                }
                Outgoing::EndSessions { user, why } => {
                    for (n, shards) in nodes_of.get(&user).into_iter().flatten() {
                        solo.push((
                            (n.clone(), home_shard(user, *shards)),
                            NodeMsg::EndSessions {
                                user,
                                why: why.clone(),
                            },
                        ));
                    }
                }
                Outgoing::Offline(user) => {
                    let loc = c.cfg.loc_key(user);
                    conn.fire(redis::cmd("SREM").arg(&loc).arg(c.me.as_ref()));
                    conn.fire(redis::cmd("SREM").arg(c.cfg.users_key(&c.me)).arg(user));
                    let p = PresenceMsg {
                        node: c.me.to_string(),
                        user,
                        online: false,
                    };
                    conn.fire(&publish_presence(&c.cfg, &p));
                }
            }
        }
        for ((node, s), msgs) in buckets {
            let ch = c.cfg.channel(&node, s);
            let payload = c.cfg.seal(&ch, super::encode(&msgs));
            conn.fire(redis::cmd("PUBLISH").arg(ch).arg(payload));
        }
        for ((node, s), m) in solo {
            conn.fire(
                redis::cmd("PUBLISH")
                    .arg(c.cfg.channel(&node, s))
                    .arg(super::encode(&vec![m])),
            );
        }
        if let Some(t) = queued_since {
            shard.metrics.bus_lag.observe(t.elapsed());
        }
    }
}

/// PUBLISH of a presence change (signed when the cluster has a key).
fn publish_presence(cfg: &ClusterConfig, p: &PresenceMsg) -> redis::Cmd {
    let ch = cfg.presence_channel();
    let payload = cfg.seal(&ch, super::encode(p));
    let mut c = redis::cmd("PUBLISH");
    c.arg(ch).arg(payload);
    c
}

//! The cluster behind an interface.
//!
//! The shard (the shell) asks a [`Router`] the questions that have a
//! different answer on a cluster: who owns this conversation, which other
//! nodes hold this user's sessions, and it hands it what must reach other
//! nodes (replies, pushes, presence). On a single node there is no router
//! (`Shard::cluster` is `None`): every owner is local and nothing leaves the
//! process. The Redis implementation is `cluster::node::ClusterShard`; the
//! server never names it, so the dependency runs one way (cluster → server).
//!
//! A router is per shard (`RouterFactory::for_shard`): shard-per-core, no
//! locks; calls are plain dynamic dispatch, made once per request or per
//! durable message, never per byte.

use super::shard::{ConnId, Origin, OwnerOp, Shard};
use crate::model::{ConvId, Seq, UserId};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

/// A boxed future on the shard's executor.
pub type LocalFut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

pub trait Router {
    /// Generation of the view of who owns what: owner state loaded under an
    /// older generation is reloaded (ownership may have moved away and back).
    fn view_gen(&self) -> u64;

    /// Sends `op` to the owner of `conv` when that is another node (the
    /// owner answers the origin itself); gives it back for local handling.
    fn route_owner(&self, conv: ConvId, origin: Origin, op: OwnerOp) -> Option<(Origin, OwnerOp)>;

    /// A reply for connection `conn` on `shard` of another node.
    fn reply_remote(&self, node: Arc<str>, shard: usize, conn: ConnId, frame: &[u8]);

    /// This node's name (origins of requests forwarded elsewhere).
    fn me(&self) -> Arc<str>;

    /// Delivers `frame` to the sessions of `users` on other nodes, except
    /// connection `skip` (the sender's).
    fn push_remote(
        &self,
        users: &[UserId],
        frame: &Arc<[u8]>,
        msg: Option<(ConvId, Seq)>,
        skip: Option<(Arc<str>, ConnId)>,
    );

    /// Tells `user`'s home on other nodes that a friendship changed.
    fn friend_set_remote(&self, user: UserId, friend: UserId, friends: bool);

    /// An operator closes `user`'s sessions (`server::admin`): the same on
    /// the other nodes holding some, each after a `Goodbye` (`code`, `text`).
    fn close_remote(&self, user: UserId, code: crate::wire::fb::ErrorCode, text: &str);

    /// The user's last session on this node ended.
    fn user_offline(&self, user: UserId);

    /// Closes the user's live sessions on other nodes that `why` ends.
    fn end_sessions_remote(&self, user: UserId, why: &super::shard::Revoked);

    /// The user has a session on another node.
    fn remote_online(&self, user: UserId) -> bool;

    /// Records that `user` has a session here; awaited before the session's
    /// catch-up query (see the implementation for why).
    fn register_user(&self, user: UserId) -> LocalFut<'_, ()>;

    /// Joins: returns once this shard can route (or why it cannot).
    fn start(self: Rc<Self>, shard: Rc<Shard>) -> LocalFut<'static, Result<(), String>>;

    /// Leaves gracefully (the others take over our conversations at once).
    fn leave<'a>(&'a self, shard: &'a Shard) -> LocalFut<'a, ()>;
}

/// Makes each shard's router; held by the node's `Config`.
pub trait RouterFactory: Send + Sync + std::fmt::Debug {
    fn for_shard(&self, shard: usize) -> Rc<dyn Router>;
}

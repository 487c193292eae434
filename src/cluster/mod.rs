//! Several nodes as one service: Redis as the bus and presence registry,
//! MySQL (the store) as the truth.
//!
//! - **Membership**: every node announces itself (`{p}nodes` set) and keeps a
//!   liveness key `{p}node:<name>` (value = its shard count) alive with a
//!   short TTL. Each shard reads the live set every second.
//! - **Ownership**: a conversation's owner node is chosen by rendezvous
//!   hashing over the live nodes, then its owner shard inside that node as
//!   on a single node. When the live set changes, conversation caches are
//!   dropped and reloaded from the store on the new owner (the store's
//!   `(conv, seq)` key rejects a stale owner's write, which then reloads).
//! - **Presence**: `{p}loc:<user>` is the set of nodes holding the user's
//!   sessions, written *before* the session's catch-up query and read by the
//!   sender's node *after* the message is durable. Redis orders the two, so
//!   every durable message is either in the catch-up or pushed live.
//!   Presence changes are also published on `{p}presence` so friends on
//!   other nodes see them live; a crashed node's users go offline when its
//!   liveness key expires (never "online forever").
//! - **Bus**: each shard subscribes to `{p}ch:<node>:<shard>`; messages for
//!   another node are batched per destination and published on the
//!   shard's pipelined command connection.

pub mod node;
pub mod redis;

use crate::model::{ConvId, Seq, UserId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub redis: redis::RedisAddr,
    pub node: String,
    pub prefix: String,
}

impl ClusterConfig {
    pub fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    pub fn alive_key(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }
    pub fn users_key(&self, node: &str) -> String {
        format!("{}users:{node}", self.prefix)
    }
    pub fn loc_key(&self, user: UserId) -> String {
        format!("{}loc:{user}", self.prefix)
    }
    pub fn channel(&self, node: &str, shard: usize) -> String {
        format!("{}ch:{node}:{shard}", self.prefix)
    }
    pub fn presence_channel(&self) -> String {
        format!("{}presence", self.prefix)
    }
}

/// Liveness TTL of a node's key; refreshed every second.
pub const ALIVE_TTL_MS: u64 = 5000;
/// TTL of presence keys; refreshed every third of it.
pub const PRESENCE_TTL_S: u64 = 60;

/// The live nodes and their shard counts, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub nodes: Vec<(Arc<str>, usize)>,
}

impl NodeView {
    /// Rendezvous (highest random weight) owner of `conv`: stable for
    /// conversations whose owner stays alive when others join or leave.
    pub fn owner(&self, conv: ConvId) -> Option<&(Arc<str>, usize)> {
        let h = ahash::RandomState::with_seeds(1, 2, 3, 4);
        self.nodes
            .iter()
            .max_by_key(|(name, _)| h.hash_one((conv, name.as_ref())))
    }

    pub fn shards_of(&self, node: &str) -> Option<usize> {
        self.nodes
            .iter()
            .find(|(n, _)| n.as_ref() == node)
            .map(|(_, s)| *s)
    }

    pub fn contains(&self, node: &str) -> bool {
        self.shards_of(node).is_some()
    }
}

/// Where a request came from, across nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireOrigin {
    pub node: String,
    pub shard: usize,
    pub conn: u64,
    pub req_id: u64,
    pub user: UserId,
    pub name: String,
}

/// What nodes tell each other (postcard-encoded on the Redis channels).
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeMsg {
    Owner(WireOrigin, crate::server::shard::OwnerOp),
    Reply {
        conn: u64,
        frame: Vec<u8>,
    },
    Push {
        users: Vec<UserId>,
        frame: Vec<u8>,
        msg: Option<(ConvId, Seq)>,
        /// The sending connection, which must not get its own message
        /// (empty node: none).
        skip_node: String,
        skip_conn: u64,
    },
    FriendSet {
        user: UserId,
        friend: UserId,
        friends: bool,
    },
    /// Close the user's live sessions that `why` ends (homed on the
    /// receiving shard). Appended last, and always published alone (see
    /// `outgoing_loop`), so older nodes skip it without losing other traffic.
    EndSessions {
        user: UserId,
        why: crate::server::shard::Revoked,
    },
}

/// A presence change on one node, published to every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceMsg {
    pub node: String,
    pub user: UserId,
    pub online: bool,
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Option<T> {
    postcard::from_bytes(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_dead_nodes_conversations() {
        let v3 = NodeView {
            nodes: vec![("a".into(), 2), ("b".into(), 2), ("c".into(), 2)],
        };
        let v2 = NodeView {
            nodes: vec![("a".into(), 2), ("c".into(), 2)],
        };
        let mut moved = 0;
        let mut per = std::collections::HashMap::new();
        for conv in 0..3000u64 {
            let o3 = v3.owner(conv).unwrap().0.clone();
            let o2 = v2.owner(conv).unwrap().0.clone();
            *per.entry(o3.clone()).or_insert(0) += 1;
            if o3.as_ref() != "b" {
                assert_eq!(o3, o2, "conv {conv} moved although its owner lives");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 700 && moved < 1300, "uneven: {per:?}");
    }

    #[test]
    fn node_messages_roundtrip() {
        let m = NodeMsg::Push {
            users: vec![1, 2],
            frame: vec![9, 8, 7],
            msg: Some((5, 6)),
            skip_node: "n1".into(),
            skip_conn: 3,
        };
        let b = encode(&m);
        match decode::<NodeMsg>(&b).unwrap() {
            NodeMsg::Push {
                users,
                frame,
                msg,
                skip_node,
                skip_conn,
            } => {
                assert_eq!(
                    (users, frame, msg),
                    (vec![1, 2], vec![9, 8, 7], Some((5, 6)))
                );
                assert_eq!((skip_node.as_str(), skip_conn), ("n1", 3));
            }
            _ => panic!("wrong variant"),
        }
        assert!(decode::<NodeMsg>(&[0xff, 0xff]).is_none());
    }
}

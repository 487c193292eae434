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
//! - **Trust**: with `--cluster-key-file`, every payload published on the
//!   bus (node messages and presence) is signed with HMAC-SHA256 over its
//!   channel, a timestamp and the body ([`BusKey`]); a shard drops what is
//!   unsigned, forged, meant for another channel or older than
//!   [`BUS_MAX_AGE_MS`]. `rediss://` puts the connections under TLS
//!   (`tls.rs`). What this does and does not stop: docs/SECURITY.md.

pub mod node;
pub mod redis;
pub mod tls;

use crate::model::{ConvId, Seq, UserId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub redis: redis::RedisAddr,
    pub node: String,
    pub prefix: String,
    /// Signs and checks bus payloads when set (`--cluster-key-file`).
    pub key: Option<BusKey>,
}

/// How old (or how far in the future, for clock skew) a signed bus payload
/// may be: bounds the window in which a captured payload can be replayed.
pub const BUS_MAX_AGE_MS: u64 = 30_000;
const BUS_MAGIC: &[u8; 4] = b"RCB1";
const TAG_LEN: usize = 32;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The cluster's shared secret for signing bus payloads.
///
/// Sealed payload: `"RCB1" | timestamp_ms (u64 LE) | body | tag`, where
/// `tag = HMAC-SHA256(key, len(channel) | channel | "RCB1" | timestamp |
/// body)`. The channel is covered so a payload captured on one shard's
/// channel cannot be replayed onto another's; the timestamp bounds replays
/// in time. The body is the same postcard encoding as without a key.
#[derive(Clone)]
pub struct BusKey(HmacSha256);

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(..)")
    }
}

/// Why a bus payload was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusReject {
    /// No signature (a node without the key, or an injected message).
    Unsigned,
    /// The tag does not match: forged, corrupted, another key or channel.
    BadTag,
    /// Signed too long ago (or too far ahead): a replay, or clocks apart.
    Stale,
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
    /// An operator closes the user's sessions on the receiving node (their
    /// home shard there): `Goodbye { code, text }`, then close.
    Close {
        user: UserId,
        code: u16,
        text: String,
    },
    /// Close the user's live sessions that `why` ends (homed on the
    /// receiving shard). Appended last, and always published alone (see
    /// `outgoing_loop`), so older nodes skip it without losing other traffic.
    EndSessions {
        user: UserId,
        why: crate::server::shard::Revoked,
    },
}

impl BusKey {
    /// At least 16 bytes of secret; a key file's trailing newline is not
    /// part of the key.
    pub fn new(secret: &[u8]) -> Result<BusKey, String> {
        if secret.len() < 16 {
            return Err("the cluster key must be at least 16 bytes".into());
        }
        use hmac::KeyInit;
        HmacSha256::new_from_slice(secret)
            .map(BusKey)
            .map_err(|e| e.to_string())
    }

    pub fn from_file(path: &std::path::Path) -> Result<BusKey, String> {
        let raw = std::fs::read(path)
            .map_err(|e| format!("--cluster-key-file {}: {e}", path.display()))?;
        let secret = raw.trim_ascii_end();
        BusKey::new(secret).map_err(|e| format!("--cluster-key-file {}: {e}", path.display()))
    }

    fn tag(&self, channel: &str, head: &[u8], body: &[u8]) -> HmacSha256 {
        use hmac::Mac;
        let mut m = self.0.clone();
        m.update(&(channel.len() as u32).to_le_bytes());
        m.update(channel.as_bytes());
        m.update(head);
        m.update(body);
        m
    }

    /// `body` signed for `channel` at `now_ms`.
    pub fn seal(&self, channel: &str, now_ms: u64, body: &[u8]) -> Vec<u8> {
        use hmac::Mac;
        let mut out = Vec::with_capacity(12 + body.len() + TAG_LEN);
        out.extend_from_slice(BUS_MAGIC);
        out.extend_from_slice(&now_ms.to_le_bytes());
        let tag = self.tag(channel, &out, body).finalize().into_bytes();
        out.extend_from_slice(body);
        out.extend_from_slice(&tag);
        out
    }

    /// The body of a payload received on `channel`, if it was signed with
    /// this key for that channel within [`BUS_MAX_AGE_MS`] of `now_ms`. The
    /// tag is compared in constant time.
    pub fn open<'a>(
        &self,
        channel: &str,
        now_ms: u64,
        payload: &'a [u8],
    ) -> Result<&'a [u8], BusReject> {
        use hmac::Mac;
        if payload.len() < 12 + TAG_LEN || &payload[..4] != BUS_MAGIC {
            return Err(BusReject::Unsigned);
        }
        let (head, rest) = payload.split_at(12);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        self.tag(channel, head, body)
            .verify_slice(tag)
            .map_err(|_| BusReject::BadTag)?;
        let ts = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        if ts.abs_diff(now_ms) > BUS_MAX_AGE_MS {
            return Err(BusReject::Stale);
        }
        Ok(body)
    }
}

impl ClusterConfig {
    /// A payload as published on `channel`: signed when the cluster has a key.
    pub fn seal(&self, channel: &str, body: Vec<u8>) -> Vec<u8> {
        match &self.key {
            Some(k) => k.seal(channel, now_ms(), &body),
            None => body,
        }
    }

    /// The body of a payload received on `channel` (see [`BusKey::open`]);
    /// without a key, the payload itself.
    pub fn open<'a>(&self, channel: &[u8], payload: &'a [u8]) -> Result<&'a [u8], BusReject> {
        match &self.key {
            Some(k) => k.open(&String::from_utf8_lossy(channel), now_ms(), payload),
            None => Ok(payload),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    fn bus_key_accepts_its_own_payloads_only() {
        let k = BusKey::new(b"0123456789abcdef-secret").unwrap();
        let other = BusKey::new(b"another key, 16+ bytes").unwrap();
        let now = 1_800_000_000_000;
        let sealed = k.seal("p:ch:n1:0", now, b"hello");
        assert_eq!(k.open("p:ch:n1:0", now + 5, &sealed), Ok(&b"hello"[..]));
        // Another key, another channel, a flipped bit: forged.
        assert_eq!(
            other.open("p:ch:n1:0", now, &sealed),
            Err(BusReject::BadTag)
        );
        assert_eq!(k.open("p:ch:n1:1", now, &sealed), Err(BusReject::BadTag));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(
                k.open("p:ch:n1:0", now, &bad).is_err(),
                "bit flip at {i} accepted"
            );
        }
        // Unsigned (what a node without the key, or an intruder, publishes).
        assert_eq!(k.open("p:ch:n1:0", now, b"hello"), Err(BusReject::Unsigned));
        // Replayed later than the window, or from a clock far ahead.
        let late = now + BUS_MAX_AGE_MS + 1;
        assert_eq!(k.open("p:ch:n1:0", late, &sealed), Err(BusReject::Stale));
        let early = now - BUS_MAX_AGE_MS - 1;
        assert_eq!(k.open("p:ch:n1:0", early, &sealed), Err(BusReject::Stale));
        assert!(BusKey::new(b"short").is_err());
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

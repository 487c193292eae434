//! Plain identifiers and the rules that derive one from another.
//!
//! These are shared by the sans-IO core, the store and the I/O shell. They are
//! deliberately tiny `u64` newtype-free aliases so they cross thread and shard
//! boundaries for free and map 1:1 onto the wire schema's `ulong` fields.

/// A user's id, assigned by the store on registration (1, 2, 3, ...).
pub type UserId = u64;
/// A group's id, assigned by the store on creation (1, 2, 3, ...).
pub type GroupId = u64;
/// A conversation: either a group or an unordered pair of users.
pub type ConvId = u64;
/// Position of a message inside its conversation: 1, 2, 3, ... without gaps.
pub type Seq = u64;

/// Top bit marks one-to-one conversations; group conversations use the group id.
const DIRECT_TAG: u64 = 1 << 63;
/// User ids must fit in 31 bits so a pair fits in one `ConvId`.
pub const MAX_USER_ID: UserId = (1 << 31) - 1;
/// The sender of system messages (an operator's broadcast to a group,
/// `ringchat admin broadcast`): no user has this id.
pub const SYSTEM_USER: UserId = 0;
/// The sender name of system messages.
pub const SYSTEM_NAME: &str = "system";

/// The conversation between two users, independent of argument order.
///
/// Deterministic, so no lookup is needed to route a one-to-one message and both
/// users compute the same id.
pub fn direct_conv(a: UserId, b: UserId) -> ConvId {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    DIRECT_TAG | (lo << 31) | hi
}

/// The conversation of a group.
pub fn group_conv(g: GroupId) -> ConvId {
    g & !DIRECT_TAG
}

/// What a conversation id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// One-to-one between `lo < hi`.
    Direct {
        lo: UserId,
        hi: UserId,
    },
    Group(GroupId),
}

pub fn conv_kind(c: ConvId) -> ConvKind {
    if c & DIRECT_TAG != 0 {
        let v = c & !DIRECT_TAG;
        ConvKind::Direct {
            lo: v >> 31,
            hi: v & MAX_USER_ID,
        }
    } else {
        ConvKind::Group(c)
    }
}

/// The other participant of a direct conversation, if `me` is in it.
/// `None` also for direct ids no pair of users has (`direct_conv` never
/// makes them, but a client may send any `u64`): user id 0 on either side,
/// or `lo >= hi` (a user with themself, or bits above the 31-bit user ids).
pub fn direct_peer(c: ConvId, me: UserId) -> Option<UserId> {
    match conv_kind(c) {
        ConvKind::Direct { lo, hi } if lo == 0 || lo >= hi => None,
        ConvKind::Direct { lo, hi } if lo == me => Some(hi),
        ConvKind::Direct { lo, hi } if hi == me => Some(lo),
        _ => None,
    }
}

/// Fixed-seed hashing: every shard (and every node) must agree on owners, so
/// `ahash::RandomState::new()` (random per instance) must never be used here.
fn stable_hash(x: u64) -> u64 {
    const SEEDS: (u64, u64, u64, u64) = (
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    );
    ahash::RandomState::with_seeds(SEEDS.0, SEEDS.1, SEEDS.2, SEEDS.3).hash_one(x)
}

/// The shard that owns a user's sessions, presence and cursors.
pub fn home_shard(user: UserId, shards: usize) -> usize {
    (stable_hash(user) % shards as u64) as usize
}

/// The shard that sequences a conversation (and owns its membership/friendship state).
pub fn owner_shard(conv: ConvId, shards: usize) -> usize {
    (stable_hash(conv ^ 0x5bd1_e995) % shards as u64) as usize
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_conv_is_symmetric_and_decodes() {
        let c = direct_conv(42, 7);
        assert_eq!(c, direct_conv(7, 42));
        assert_eq!(conv_kind(c), ConvKind::Direct { lo: 7, hi: 42 });
        assert_eq!(direct_peer(c, 7), Some(42));
        assert_eq!(direct_peer(c, 42), Some(7));
        assert_eq!(direct_peer(c, 8), None);
        // Ids no pair has: user 0, a user with themself, stray high bits.
        assert_eq!(direct_peer(1 << 63 | 1, 1), None);
        assert_eq!(direct_peer(1 << 63 | 1, 0), None);
        assert_eq!(direct_peer(1 << 63 | 3 << 31 | 3, 3), None);
        assert_eq!(direct_peer(u64::MAX, MAX_USER_ID), None);
        assert_eq!(direct_peer(1 << 63 | 5 << 31 | 4, 4), None);
        let big = direct_conv(MAX_USER_ID, MAX_USER_ID - 1);
        assert_eq!(
            conv_kind(big),
            ConvKind::Direct {
                lo: MAX_USER_ID - 1,
                hi: MAX_USER_ID
            }
        );
    }

    #[test]
    fn group_conv_never_collides_with_direct() {
        assert_eq!(conv_kind(group_conv(5)), ConvKind::Group(5));
        assert_ne!(group_conv(5), direct_conv(0, 5));
    }

    #[test]
    fn shard_hashing_is_stable_and_spreads() {
        assert_eq!(home_shard(12345, 8), home_shard(12345, 8));
        let mut counts = [0usize; 4];
        for u in 1..=4000u64 {
            counts[home_shard(u, 4)] += 1;
        }
        for c in counts {
            assert!(c > 800, "uneven spread {counts:?}");
        }
    }
}

// ---------------------------------------------------------------- domain records
//
// What users, friendships, groups and messages are, independent of how they
// are stored or sent: the core decides on them, the store persists them,
// the codecs encode them.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    /// Disabled by an operator (`ringchat admin disable`): login and resume
    /// are refused with `AccountDisabled`.
    pub disabled: bool,
}

/// Relationship between two users `lo < hi`, as stored. The transitions are
/// decided by the sans-IO core (`core::pair`); the store only keeps the bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairState {
    pub friends: bool,
    pub request_lo_to_hi: bool,
    pub request_hi_to_lo: bool,
    pub lo_blocks_hi: bool,
    pub hi_blocks_lo: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairRecord {
    pub state: PairState,
    /// Note of the pending friend request, if any (empty otherwise).
    pub note: String,
}

/// How `friends_of(user)` sees another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendKind {
    Friend,
    /// They asked `user` to be friends.
    Incoming,
    /// `user` asked them.
    Outgoing,
    /// `user` blocks them.
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendRow {
    pub user_id: UserId,
    pub username: String,
    pub kind: FriendKind,
    pub note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Role {
    Member = 0,
    Admin = 1,
    Owner = 2,
}

impl Role {
    pub fn from_u8(v: u8) -> Role {
        match v {
            2 => Role::Owner,
            1 => Role::Admin,
            _ => Role::Member,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub id: GroupId,
    pub name: String,
    pub owner: UserId,
    pub dissolved: bool,
    /// Joining needs an invitation or an approved request.
    pub private: bool,
    /// New members may read history from before they joined.
    pub full_history: bool,
}

/// Someone waiting at a group's door: invited by an owner/admin, or asking
/// to join (a private group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub user_id: UserId,
    pub username: String,
    /// true: invited; false: asked to join.
    pub invited: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub user_id: UserId,
    pub username: String,
    pub role: Role,
}

/// One message. `sender_name` is filled on reads (joined from users) and
/// ignored on writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub conv: ConvId,
    pub seq: Seq,
    pub sender: UserId,
    pub timestamp_ms: u64,
    pub client_msg_id: u64,
    pub body: String,
    pub sender_name: String,
}

/// State needed to resume sequencing a conversation after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvTail {
    /// Highest stored seq, 0 when empty.
    pub last_seq: Seq,
    /// Up to `window` most recent messages as `(sender, client_msg_id, seq, timestamp_ms)`,
    /// newest first, to rebuild the resend-dedup window.
    pub recent: Vec<(UserId, u64, Seq, u64)>,
}

/// A conversation the user belongs to, with their delivered cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvCursor {
    pub conv: ConvId,
    pub delivered: Seq,
    /// Highest stored seq in the conversation (0 when empty).
    pub last_seq: Seq,
    /// The user may see only messages after this seq: their join point in a
    /// group without full history (0: everything).
    pub floor: Seq,
}

/// Characters of a message body a conversation list shows
/// ([`ConvSummary::last`]); the store cuts longer bodies.
pub const PREVIEW_CHARS: usize = 200;

/// One conversation of a user as a conversation list shows it: their
/// cursor row, the other side's cursor (direct), a name, the newest message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSummary {
    pub cursor: ConvCursor,
    /// Direct: the peer's delivered (read) cursor; 0 for groups.
    pub peer_delivered: Seq,
    /// Direct: the peer's username; group: the group's name.
    pub name: String,
    /// The newest message (any sender), its body cut to [`PREVIEW_CHARS`]
    /// characters; `None` for an empty conversation.
    pub last: Option<StoredMessage>,
    /// `last`'s body was cut.
    pub truncated: bool,
}

//! Persistence behind one interface, two backends (embedded SQLite, MySQL).
//!
//! Every method is *blocking*: the I/O shell calls them only from glommio's
//! blocking thread pool (`spawn_blocking`), never on an executor thread. The
//! hot-path writes (messages and delivery cursors) go through
//! [`Store::write_batch`] so a whole batch costs one transaction / one fsync
//! (group commit). Rare writes (users, friendships, groups) have their own
//! methods. Both backends must pass the same conformance suite
//! (`store::conformance`).

use crate::model::{ConvId, GroupId, Seq, UserId};

pub mod commit;
#[doc(hidden)]
pub mod conformance;
pub mod mysql;
pub mod sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (username or group name taken).
    #[error("already exists")]
    Conflict,
    #[error("storage backend error: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

// The domain types live in `model` (the core owns the domain; the store
// only persists it). Re-exported here for the store's callers.
pub use crate::model::{
    ConvCursor, ConvSummary, ConvTail, FriendKind, FriendRow, GroupRecord, MemberRow, PairRecord,
    PairState, PendingRow, Role, StoredMessage, UserRecord,
};

/// A hot-path write, applied with others in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Append a message; `(conv, seq)` is unique and assigned by the owner shard.
    Message(StoredMessage),
    /// Advance `user`'s delivered cursor in `conv` to `seq`, never backwards,
    /// and only where the user is a member of that conversation (a row exists).
    Cursor {
        user: UserId,
        conv: ConvId,
        seq: Seq,
    },
}

pub trait Store: Send + Sync + 'static {
    // ---- users and sessions
    /// Creates a user; `Conflict` if the name is taken (names compare exactly).
    fn create_user(&self, username: &str, password_hash: &str) -> Result<UserId>;
    fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;
    fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>>;
    /// Users whose name starts with `prefix` (literal: `%` and `_` match
    /// themselves), with `id > after_id`, ordered by id, at most `limit`.
    /// Matching ignores ASCII case ("ali" finds "Alice"), as users expect.
    fn search_users(
        &self,
        prefix: &str,
        after_id: UserId,
        limit: u32,
    ) -> Result<Vec<(UserId, String)>>;
    /// Stores a session token (its hash), last used at `created_ms`.
    fn create_session(&self, token_hash: &[u8], user: UserId, created_ms: u64) -> Result<()>;
    /// The token's user, whatever its age (no side effect).
    fn session_user(&self, token_hash: &[u8]) -> Result<Option<UserId>>;
    /// Resuming with a token: its user if it exists and was last used less
    /// than `ttl_ms` before `now_ms` (`ttl_ms == 0`: tokens never expire).
    /// A live token is marked used at `now_ms` (sliding expiry) when its
    /// stored time is at least [`session_touch_ms`] old, so most uses are a
    /// read only; an expired one is deleted and `None` returned.
    fn use_session(&self, token_hash: &[u8], now_ms: u64, ttl_ms: u64) -> Result<Option<UserId>>;
    fn delete_session(&self, token_hash: &[u8]) -> Result<()>;
    /// Revokes every session token of `user`; returns how many there were.
    fn delete_sessions_of(&self, user: UserId) -> Result<u64> {
        self.delete_user_sessions(user, None)
    }
    /// Sets the account's disabled flag (`UserRecord::disabled`); nothing
    /// happens for an unknown user.
    fn set_disabled(&self, user: UserId, disabled: bool) -> Result<()>;
    /// Deletes every session of `user` except the one whose hash is `keep`;
    /// returns how many were deleted.
    fn delete_user_sessions(&self, user: UserId, keep: Option<&[u8]>) -> Result<u64>;
    /// Deletes sessions last used before `before_ms` (the expiry sweep);
    /// returns how many.
    fn delete_sessions_unused_since(&self, before_ms: u64) -> Result<u64>;
    /// Sets `user`'s password hash and, in the same transaction, deletes
    /// every session of the user except `keep`.
    fn set_password(&self, user: UserId, password_hash: &str, keep: Option<&[u8]>) -> Result<()>;
    /// Replaces `user`'s password hash with `new` only if it is still `old`
    /// (an upgrade of the hash's parameters must not undo a password change
    /// made meanwhile). Returns whether it was replaced.
    fn upgrade_password_hash(&self, user: UserId, old: &str, new: &str) -> Result<bool>;

    // ---- relationships (owned by the pair's conversation shard)
    /// The stored pair, or the default (all false, empty note) if none.
    fn get_pair(&self, lo: UserId, hi: UserId) -> Result<PairRecord>;
    /// Upserts the pair. When `rec.state.friends` is true it also makes both
    /// users members of `direct_conv(lo, hi)` (cursor rows starting at 0 if
    /// absent; existing rows keep their cursor). Rows are kept when the
    /// friendship ends so undelivered messages still reach them.
    fn set_pair(&self, lo: UserId, hi: UserId, rec: &PairRecord) -> Result<()>;
    /// Everyone `user` has a relationship with: friends, pending requests
    /// both ways, and users `user` blocks. Ordered by user id.
    fn friends_of(&self, user: UserId) -> Result<Vec<FriendRow>>;

    // ---- groups (owned by the group's conversation shard)
    /// Creates a public group with `owner` as its `Owner` member (cursor 0);
    /// `Conflict` if a live group of the same owner has that name.
    fn create_group(&self, name: &str, owner: UserId) -> Result<GroupId> {
        self.create_group_opts(name, owner, false, false)
    }
    /// `create_group` with the group's privacy flags (`GroupRecord`).
    /// Names are unique per owner among live groups.
    fn create_group_opts(
        &self,
        name: &str,
        owner: UserId,
        private: bool,
        full_history: bool,
    ) -> Result<GroupId>;
    fn get_group(&self, id: GroupId) -> Result<Option<GroupRecord>>;
    /// Members ordered by user id.
    fn group_members(&self, id: GroupId) -> Result<Vec<MemberRow>>;
    /// Adds a member whose delivered cursor starts at `delivered` (so they do
    /// not receive history from before they joined). Unless the group has
    /// `full_history`, `delivered` is also the member's floor
    /// (`ConvCursor::floor`, `join_floor`): History and catch-up show them
    /// nothing at or below it. Removes any invitation or join request of
    /// the user for the group. Idempotent: for an existing member nothing
    /// changes (role changes go through `set_role`).
    fn add_member(&self, id: GroupId, user: UserId, role: Role, delivered: Seq) -> Result<()>;
    /// The floor of `user` in group conversation `conv`: the seq they joined
    /// at (0 for members who may see everything, and for non-members).
    fn join_floor(&self, conv: ConvId, user: UserId) -> Result<Seq>;
    /// Records an invitation (`Some(true)`), a join request (`Some(false)`)
    /// of `user` for the group, replacing any earlier one, or removes it
    /// (`None`).
    fn set_pending(&self, id: GroupId, user: UserId, invited: Option<bool>) -> Result<()>;
    /// Invitations and join requests of a group, ordered by user id.
    fn group_pending(&self, id: GroupId) -> Result<Vec<PendingRow>>;
    fn set_role(&self, id: GroupId, user: UserId, role: Role) -> Result<()>;
    /// Removes membership and the user's cursor row for the group conversation.
    fn remove_member(&self, id: GroupId, user: UserId) -> Result<()>;
    /// Marks the group dissolved and removes all members, invitations and
    /// join requests; its name becomes free.
    fn dissolve_group(&self, id: GroupId) -> Result<()>;
    /// Live groups the user belongs to, with their role, ordered by group id.
    fn groups_of(&self, user: UserId) -> Result<Vec<(GroupRecord, Role)>>;

    // ---- messages and cursors
    /// Applies all ops in one transaction: all or nothing.
    fn write_batch(&self, ops: &[WriteOp]) -> Result<()>;
    fn conv_tail(&self, conv: ConvId, window: usize) -> Result<ConvTail>;
    /// Up to `limit` messages with `seq > after`, ascending.
    fn messages_after(&self, conv: ConvId, after: Seq, limit: u32) -> Result<Vec<StoredMessage>>;
    /// The `limit` messages just before `before` (all if `before == 0`),
    /// returned ascending.
    fn history(&self, conv: ConvId, before: Seq, limit: u32) -> Result<Vec<StoredMessage>>;
    /// Every conversation the user is a member of (cursor rows), ordered by conv.
    fn conversations_of(&self, user: UserId) -> Result<Vec<ConvCursor>>;
    /// Every conversation the user is a member of with what a conversation
    /// list shows (`ConvSummary`), ordered by conv as `u64`: one query, the
    /// newest message's body cut in the store to `PREVIEW_CHARS` characters.
    fn conversation_list(&self, user: UserId) -> Result<Vec<ConvSummary>>;
    /// Every member's delivered (read) cursor in `conv` (cursor rows),
    /// ordered by user id.
    fn read_cursors(&self, conv: ConvId) -> Result<Vec<(UserId, Seq)>>;

    // ---- legacy protocol and import (src/legacy, docs/MIGRATING.md)
    /// Creates a user with a chosen id, so users imported from another
    /// server keep the numeric ids their clients log in with. `Conflict` if
    /// the id or the name is taken. Later `create_user` ids continue above.
    fn create_user_with_id(&self, id: UserId, username: &str, password_hash: &str) -> Result<()>;
    /// `create_group` with a chosen id (import); `Conflict` if the id or a
    /// live group's name is taken.
    fn create_group_with_id(&self, id: GroupId, name: &str, owner: UserId) -> Result<()>;
    /// Sets a group's description (the legacy protocol's `groupdesc`).
    fn set_group_desc(&self, id: GroupId, desc: &str) -> Result<()>;
    /// A group's description; empty if never set or no such group.
    fn group_desc(&self, id: GroupId) -> Result<String>;

    // ---- bulk provisioning (load tests; `ringchat provision`)
    /// Idempotently creates `usernames` (user `i` with `password_hashes[i]`;
    /// existing users are reused untouched), makes each `(i, j)` pair of indices
    /// friends, and creates each named group (reused if a live group has
    /// that name) with the listed member indices, the first one as owner.
    /// Returns the user ids in `usernames` order and the group ids in
    /// `groups` order. The default goes through the ordinary methods (one
    /// transaction each); backends override it to use one transaction,
    /// because 20k users one fsync at a time takes minutes.
    fn provision_bulk(
        &self,
        password_hashes: &[String],
        usernames: &[String],
        pairs: &[(usize, usize)],
        groups: &[(String, Vec<usize>)],
    ) -> Result<(Vec<UserId>, Vec<GroupId>)> {
        if password_hashes.len() != usernames.len() {
            return Err(StoreError::Backend("one password hash per user".into()));
        }
        let mut ids = Vec::with_capacity(usernames.len());
        for (name, hash) in usernames.iter().zip(password_hashes) {
            let id = match self.user_by_name(name)? {
                Some(u) => u.id,
                None => self.create_user(name, hash)?,
            };
            ids.push(id);
        }
        for &(a, b) in pairs {
            let (lo, hi) = (ids[a].min(ids[b]), ids[a].max(ids[b]));
            let mut rec = self.get_pair(lo, hi)?;
            if !rec.state.friends {
                rec.state = PairState {
                    friends: true,
                    ..PairState::default()
                };
                self.set_pair(lo, hi, &rec)?;
            }
        }
        let mut gids = Vec::with_capacity(groups.len());
        for (name, members) in groups {
            let Some(&owner) = members.first() else {
                return Err(StoreError::Backend(format!("group {name} has no members")));
            };
            let owner = ids[owner];
            let gid = match self.create_group(name, owner) {
                Ok(g) => g,
                Err(StoreError::Conflict) => self
                    .groups_of(owner)?
                    .into_iter()
                    .find(|(g, _)| &g.name == name && g.owner == owner)
                    .map(|(g, _)| g.id)
                    .ok_or_else(|| {
                        StoreError::Backend(format!("group {name} exists but is not found"))
                    })?,
                Err(e) => return Err(e),
            };
            let tail = self.conv_tail(crate::model::group_conv(gid), 0)?.last_seq;
            for &m in &members[1..] {
                self.add_member(gid, ids[m], Role::Member, tail)?;
            }
            gids.push(gid);
        }
        Ok((ids, gids))
    }
}

/// How stale a session's `last_used_ms` may be before a use of its token
/// writes it again: a tenth of the TTL, at most a minute. A resume is then
/// one read (no commit, no fsync) unless the token was last written longer
/// ago than that, so a reconnect storm (every client of a restarted node at
/// once) does not queue one synchronous commit per client behind the
/// writer: that held a 10k-client storm to ~2k resumes/s (bench/RESULTS.md).
/// The price: a session may expire up to this much before `ttl` after its
/// true last use.
pub fn session_touch_ms(ttl_ms: u64) -> u64 {
    if ttl_ms == 0 {
        60_000
    } else {
        (ttl_ms / 10).clamp(1, 60_000)
    }
}

/// Whether a token last written at `last` is still valid at `now`, and
/// whether this use must write the new time (see [`session_touch_ms`]).
pub fn session_use(last: u64, now: u64, ttl_ms: u64) -> (bool, bool) {
    let valid = ttl_ms == 0 || last.saturating_add(ttl_ms) > now;
    let touch = valid && now.saturating_sub(last) >= session_touch_ms(ttl_ms);
    (valid, touch)
}

/// A stored message's sender name: the user's, or "system" for an
/// operator's broadcast (sender `SYSTEM_USER`, no user row).
pub fn sender_name(sender: UserId, joined: String) -> String {
    if sender == crate::model::SYSTEM_USER {
        crate::model::SYSTEM_NAME.to_string()
    } else {
        joined
    }
}

/// Opens the store named by `--store` (`sqlite:PATH` or a data dir, or
/// `mysql://user:pass@host:port/db[?pool=N]`, see `store::mysql`). Runs
/// migrations.
pub fn open(spec: &str, data_dir: &std::path::Path) -> Result<std::sync::Arc<dyn Store>> {
    if spec.starts_with("mysql://") {
        return mysql::open_store(spec);
    }
    let path = match spec.strip_prefix("sqlite:") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                StoreError::Backend(format!("creating {}: {e}", data_dir.display()))
            })?;
            data_dir.join("ringchat.db")
        }
    };
    sqlite::open_store(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_use_writes_only_when_the_stored_time_is_stale() {
        let day = 86_400_000;
        // Valid, written a minute ago or more: write.
        assert_eq!(session_use(0, 60_000, 30 * day), (true, true));
        // Valid, written seconds ago: read only.
        assert_eq!(session_use(0, 59_999, 30 * day), (true, false));
        // Expired: not valid (the caller deletes it).
        assert_eq!(session_use(0, 30 * day, 30 * day), (false, false));
        // Short TTLs touch at a tenth of the TTL.
        assert_eq!(session_use(0, 99, 1000), (true, false));
        assert_eq!(session_use(0, 100, 1000), (true, true));
        // No expiry: always valid, written once a minute.
        assert_eq!(session_use(0, u64::MAX, 0), (true, true));
        assert_eq!(session_use(5, 4, 0), (true, false));
    }
}

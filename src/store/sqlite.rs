//! Embedded backend: one SQLite file in WAL mode.
//!
//! Concurrency model: the trait's methods are called from several blocking
//! threads at once. SQLite allows one writer and many readers in WAL mode, so
//! the store keeps exactly one read-write connection behind a [`Mutex`] (writes
//! are serialized here instead of bouncing on `SQLITE_BUSY`) plus a small pool
//! of read-only connections, each behind its own `Mutex`. A read picks any free
//! reader, so reads never queue behind a write transaction (WAL readers see the
//! last committed snapshot and are not blocked by the writer).
//!
//! Durability: `synchronous=FULL` on the writer, because the server acks a
//! message once `write_batch` returns; with `NORMAL` a power loss could drop
//! the last acked transactions. Batching (group commit) is what keeps this
//! affordable: one fsync per `write_batch`, not per message.
//!
//! Id encoding: SQLite integers are `i64`. Every `u64` (ids, seqs, timestamps,
//! client message ids, and especially `ConvId`, whose top bit tags direct
//! conversations) is stored with a bit-preserving `as i64` cast and read back
//! with `as u64`. Consequence: SQL `ORDER BY conv` would put direct
//! conversations (negative as `i64`) first, so ordering by conv is done in Rust.
//!
//! The same cast would turn a `u64` *query bound* of 2^63 or more into a
//! negative number, below every stored value (a `History` with
//! `before_seq = 2^63` used to find nothing). Bounds therefore go through
//! [`upper_incl`] / `i64::try_from`, which rely on this invariant: stored
//! seqs and user ids are below 2^63 (seqs count messages of one
//! conversation from 1; user ids come from `AUTOINCREMENT` or 31-bit
//! imported ids, see `model::MAX_USER_ID`). Values a client chooses freely
//! and that are compared, not just matched, are compared as `u64` in SQL:
//! the delivered cursor (`Ack` may carry any seq).
//!
//! Only file-backed databases are supported: `:memory:` would give every
//! pooled connection its own private database.

use super::*;
use crate::model::{direct_conv, group_conv};
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Read-only connections in the pool. Reads are short indexed lookups, so a
/// handful covers the blocking pool's parallelism without many open files.
const READERS: usize = 4;
/// How long a connection waits on a lock held by another *process* (or a
/// checkpoint) before failing; in-process writers are serialized by the mutex.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection; the store uses ~30 distinct ones.
const STATEMENT_CACHE: usize = 64;

/// Schema steps; step `i` upgrades `user_version` from `i` to `i + 1`. Never
/// edit a released step: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE users(
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        username      TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_ms    INTEGER NOT NULL
    );
    CREATE TABLE sessions(
        token_hash BLOB PRIMARY KEY,
        user_id    INTEGER NOT NULL REFERENCES users(id),
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE pairs(
        lo          INTEGER NOT NULL REFERENCES users(id),
        hi          INTEGER NOT NULL REFERENCES users(id),
        friends     INTEGER NOT NULL DEFAULT 0,
        req_lo_hi   INTEGER NOT NULL DEFAULT 0,
        req_hi_lo   INTEGER NOT NULL DEFAULT 0,
        block_lo_hi INTEGER NOT NULL DEFAULT 0,
        block_hi_lo INTEGER NOT NULL DEFAULT 0,
        note        TEXT NOT NULL DEFAULT '',
        PRIMARY KEY(lo, hi)
    ) WITHOUT ROWID;
    CREATE INDEX pairs_hi ON pairs(hi);
    CREATE TABLE chat_groups(
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        name       TEXT NOT NULL,
        owner      INTEGER NOT NULL REFERENCES users(id),
        dissolved  INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL
    );
    -- Names are unique among live groups only, so a dissolved group's name
    -- can be taken again.
    CREATE UNIQUE INDEX chat_groups_live_name ON chat_groups(name) WHERE dissolved = 0;
    CREATE TABLE group_members(
        group_id INTEGER NOT NULL REFERENCES chat_groups(id),
        user_id  INTEGER NOT NULL REFERENCES users(id),
        role     INTEGER NOT NULL,
        PRIMARY KEY(group_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_user ON group_members(user_id);
    -- Delivery cursors; a row means "user is a member of conv".
    CREATE TABLE conv_members(
        user_id   INTEGER NOT NULL REFERENCES users(id),
        conv      INTEGER NOT NULL,
        delivered INTEGER NOT NULL,
        PRIMARY KEY(user_id, conv)
    ) WITHOUT ROWID;
    CREATE INDEX conv_members_conv ON conv_members(conv);
    -- Clustered on (conv, seq): appends are sequential per conversation and
    -- MAX(seq), tails and ranges are single b-tree seeks. No foreign key on
    -- sender: it would cost a lookup per message on the hot path.
    CREATE TABLE messages(
        conv          INTEGER NOT NULL,
        seq           INTEGER NOT NULL,
        sender        INTEGER NOT NULL,
        ts            INTEGER NOT NULL,
        client_msg_id INTEGER NOT NULL,
        body          TEXT NOT NULL,
        PRIMARY KEY(conv, seq)
    ) WITHOUT ROWID;
    "#,
    // 2: group descriptions (legacy protocol `groupdesc`); NULL = none.
    r#"
    ALTER TABLE chat_groups ADD COLUMN description TEXT;
    "#,
    // 3: accounts an operator disabled (`ringchat admin disable`).
    r#"
    ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4: session expiry (`serve --session-ttl-secs`): when a token was last
    // used; existing tokens count from their creation.
    r#"
    ALTER TABLE sessions ADD COLUMN last_used_ms INTEGER NOT NULL DEFAULT 0;
    UPDATE sessions SET last_used_ms = created_ms;
    CREATE INDEX sessions_last_used ON sessions(last_used_ms);
    "#,
    // 5: private groups, join points, invitations and join requests; group
    // names unique per owner instead of globally. Existing groups are public
    // and existing members keep their full view (floor 0).
    r#"
    ALTER TABLE chat_groups ADD COLUMN is_private INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE chat_groups ADD COLUMN full_history INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE conv_members ADD COLUMN join_floor INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE group_pending(
        group_id   INTEGER NOT NULL REFERENCES chat_groups(id),
        user_id    INTEGER NOT NULL REFERENCES users(id),
        invited    INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY(group_id, user_id)
    ) WITHOUT ROWID;
    DROP INDEX chat_groups_live_name;
    CREATE UNIQUE INDEX chat_groups_live_owner_name ON chat_groups(owner, name) WHERE dissolved = 0;
    "#,
];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == ErrorCode::ConstraintViolation
                    && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) =>
            {
                StoreError::Conflict
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

/// Locks a connection even if a previous holder panicked: rusqlite rolls back
/// an open `Transaction` on drop, so the connection is still consistent.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct SqliteStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    /// Round-robin start for picking a reader, so load spreads evenly.
    next_reader: AtomicUsize,
    /// Tells the checkpoint thread to stop.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes of WAL file kept after the log restarts (`journal_size_limit`).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Checkpoints the WAL from a thread of its own.
///
/// SQLite's automatic checkpoint runs inside whichever commit crosses the
/// threshold, copying the WAL into the database and fsyncing it: a commit
/// that normally takes a millisecond then takes tens to hundreds, and every
/// message in that group commit waits. Turned off on the writer, the same
/// work runs here as PASSIVE checkpoints, which never block the writer.
fn spawn_checkpointer(path: &Path, stop: Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        })
        .map_err(|e| StoreError::Backend(format!("checkpoint thread: {e}")))?;
    Ok(())
}

/// Opens (creating and migrating) the SQLite database at `path`.
pub fn open_store(path: &Path) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(SqliteStore::open(path)?))
}

impl SqliteStore {
    /// Opens the writer first (it creates the file, switches to WAL and runs
    /// migrations), then the read-only pool, which needs the WAL files to exist.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let mut writer = Connection::open(path)?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        writer.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "{}: could not enable WAL (journal_mode={mode})",
                path.display()
            )));
        }
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.pragma_update(None, "foreign_keys", true)?;
        migrate(&mut writer)?;
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        // WAL files are reused, not shrunk, after a checkpoint: without a
        // limit the file keeps the size of its longest stretch between
        // resets (1.9 GB after the 60-minute soak). Truncated to this when
        // the log restarts.
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        spawn_checkpointer(path, stop.clone())?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            r.busy_timeout(BUSY_TIMEOUT)?;
            r.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            readers.push(Mutex::new(r));
        }
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            stop,
        })
    }

    /// A free reader if there is one, else waits for the round-robin pick.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.readers.len() {
            let m = &self.readers[(start + i) % self.readers.len()];
            match m.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        lock(&self.readers[start % self.readers.len()])
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer: the write
    /// lock is taken up front so the transaction cannot fail half-way with
    /// `SQLITE_BUSY` on lock upgrade. Dropping the transaction on error rolls
    /// back.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version)
        .map_err(|_| StoreError::Backend(format!("bad schema version {version}")))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this binary ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        // Each step and its version bump commit together, so a crash leaves
        // the schema at a well-defined version.
        // The version is re-read under the lock: another process (a second
        // node on the same file) may have applied this step meanwhile.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i as i64 {
            tx.commit()?;
            continue;
        }
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn delete_user_sessions(tx: &Transaction<'_>, user: UserId, keep: Option<&[u8]>) -> Result<u64> {
    let n = match keep {
        Some(k) => tx
            .prepare_cached("DELETE FROM sessions WHERE user_id = ?1 AND token_hash <> ?2")?
            .execute(params![user as i64, k])?,
        None => tx
            .prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
            .execute([user as i64])?,
    };
    Ok(n as u64)
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: r.get::<_, i64>(0)? as u64,
        username: r.get(1)?,
        password_hash: r.get(2)?,
        disabled: r.get::<_, i64>(3)? != 0,
    })
}

/// Columns: conv, seq, sender, ts, client_msg_id, body, sender name.
const MESSAGE_COLUMNS: &str = "m.conv, m.seq, m.sender, m.ts, m.client_msg_id, m.body, \
     COALESCE(u.username, '') FROM messages m LEFT JOIN users u ON u.id = m.sender";

fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let sender = r.get::<_, i64>(2)? as u64;
    Ok(StoredMessage {
        conv: r.get::<_, i64>(0)? as u64,
        seq: r.get::<_, i64>(1)? as u64,
        sender,
        timestamp_ms: r.get::<_, i64>(3)? as u64,
        client_msg_id: r.get::<_, i64>(4)? as u64,
        body: r.get(5)?,
        sender_name: super::sender_name(sender, r.get(6)?),
    })
}

/// `seq < before` as an inclusive `i64` bound for the bit-cast column
/// (`before == 0`: no bound). Exact for every stored seq (all below 2^63,
/// see the module docs), whatever `before` is.
fn upper_incl(before: u64) -> i64 {
    match before {
        0 => i64::MAX,
        b => i64::try_from(b - 1).unwrap_or(i64::MAX),
    }
}

/// Raises a delivered cursor to `?1`, never lowering it, comparing the
/// bit-cast values as `u64`: when the signs differ, the negative one (2^63
/// or more) is the larger.
const RAISE_CURSOR: &str = "UPDATE conv_members SET delivered = \
     CASE WHEN (delivered < 0) = (?1 < 0) THEN MAX(delivered, ?1) \
     WHEN delivered < 0 THEN delivered ELSE ?1 END \
     WHERE user_id = ?2 AND conv = ?3";

/// Escapes `LIKE` wildcards so `prefix` matches literally (with `ESCAPE '\'`).
fn like_prefix(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

/// How `user` sees the other side of a pair, from the stored bits viewed from
/// `user`'s side. Blocking wins (the UI must offer "unblock"), then
/// friendship, then requests. A block by the *other* side alone yields `None`:
/// `user` must not learn that they are blocked.
fn friend_kind(
    friends: bool,
    i_requested: bool,
    they_requested: bool,
    i_block: bool,
) -> Option<FriendKind> {
    if i_block {
        Some(FriendKind::Blocked)
    } else if friends {
        Some(FriendKind::Friend)
    } else if they_requested {
        Some(FriendKind::Incoming)
    } else if i_requested {
        Some(FriendKind::Outgoing)
    } else {
        None
    }
}

impl Store for SqliteStore {
    fn create_user(&self, username: &str, password_hash: &str) -> Result<UserId> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO users(username, password_hash, created_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                username,
                password_hash,
                crate::model::now_ms() as i64
            ])?;
            Ok(tx.last_insert_rowid() as u64)
        })
    }

    fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT id, username, password_hash, disabled FROM users WHERE username = ?1",
        )?;
        Ok(st.query_row([username], user_from_row).optional()?)
    }

    fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT id, username, password_hash, disabled FROM users WHERE id = ?1",
        )?;
        Ok(st.query_row([id as i64], user_from_row).optional()?)
    }

    /// Case-insensitive for ASCII (SQLite's `LIKE`): people typing "ali" expect
    /// to find "Alice". Wildcards in `prefix` are escaped, so it is literal.
    fn search_users(
        &self,
        prefix: &str,
        after_id: UserId,
        limit: u32,
    ) -> Result<Vec<(UserId, String)>> {
        // No user id reaches 2^63 (module docs): nothing is above such a bound.
        let Ok(after_id) = i64::try_from(after_id) else {
            return Ok(Vec::new());
        };
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT id, username FROM users WHERE username LIKE ?1 ESCAPE '\\' AND id > ?2 \
             ORDER BY id LIMIT ?3",
        )?;
        let rows = st.query_map(params![like_prefix(prefix), after_id, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn create_session(&self, token_hash: &[u8], user: UserId, created_ms: u64) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO sessions(token_hash, user_id, created_ms, last_used_ms) \
                 VALUES (?1, ?2, ?3, ?3)",
            )?
            .execute(params![token_hash, user as i64, created_ms as i64])?;
            Ok(())
        })
    }

    fn session_user(&self, token_hash: &[u8]) -> Result<Option<UserId>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached("SELECT user_id FROM sessions WHERE token_hash = ?1")?;
        Ok(st
            .query_row([token_hash], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|v| v as u64))
    }

    fn use_session(&self, token_hash: &[u8], now_ms: u64, ttl_ms: u64) -> Result<Option<UserId>> {
        // A read first: most uses need no write (`session_touch_ms`).
        let row: Option<(i64, i64)> = self
            .reader()
            .prepare_cached("SELECT user_id, last_used_ms FROM sessions WHERE token_hash = ?1")?
            .query_row([token_hash], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((user, last)) = row else {
            return Ok(None);
        };
        if super::session_use(last as u64, now_ms, ttl_ms) == (true, false) {
            return Ok(Some(user as u64));
        }
        self.write(|tx| {
            let row: Option<(i64, i64)> = tx
                .prepare_cached("SELECT user_id, last_used_ms FROM sessions WHERE token_hash = ?1")?
                .query_row([token_hash], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((user, last)) = row else {
                return Ok(None);
            };
            if !super::session_use(last as u64, now_ms, ttl_ms).0 {
                tx.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
                    .execute([token_hash])?;
                return Ok(None);
            }
            tx.prepare_cached(
                "UPDATE sessions SET last_used_ms = MAX(last_used_ms, ?2) WHERE token_hash = ?1",
            )?
            .execute(params![token_hash, now_ms as i64])?;
            Ok(Some(user as u64))
        })
    }

    fn delete_session(&self, token_hash: &[u8]) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
                .execute([token_hash])?;
            Ok(())
        })
    }

    fn set_disabled(&self, user: UserId, disabled: bool) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached("UPDATE users SET disabled = ?1 WHERE id = ?2")?
                .execute(params![disabled as i64, user as i64])?;
            Ok(())
        })
    }

    fn delete_user_sessions(&self, user: UserId, keep: Option<&[u8]>) -> Result<u64> {
        self.write(|tx| delete_user_sessions(tx, user, keep))
    }

    fn delete_sessions_unused_since(&self, before_ms: u64) -> Result<u64> {
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        self.write(|tx| {
            Ok(tx
                .prepare_cached("DELETE FROM sessions WHERE last_used_ms < ?1")?
                .execute([before])? as u64)
        })
    }

    fn set_password(&self, user: UserId, password_hash: &str, keep: Option<&[u8]>) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")?
                .execute(params![user as i64, password_hash])?;
            delete_user_sessions(tx, user, keep)?;
            Ok(())
        })
    }

    fn upgrade_password_hash(&self, user: UserId, old: &str, new: &str) -> Result<bool> {
        self.write(|tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE users SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2",
                )?
                .execute(params![user as i64, old, new])?
                == 1)
        })
    }

    fn get_pair(&self, lo: UserId, hi: UserId) -> Result<PairRecord> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT friends, req_lo_hi, req_hi_lo, block_lo_hi, block_hi_lo, note \
             FROM pairs WHERE lo = ?1 AND hi = ?2",
        )?;
        let rec = st
            .query_row([lo as i64, hi as i64], |r| {
                Ok(PairRecord {
                    state: PairState {
                        friends: r.get(0)?,
                        request_lo_to_hi: r.get(1)?,
                        request_hi_to_lo: r.get(2)?,
                        lo_blocks_hi: r.get(3)?,
                        hi_blocks_lo: r.get(4)?,
                    },
                    note: r.get(5)?,
                })
            })
            .optional()?;
        Ok(rec.unwrap_or_default())
    }

    fn set_pair(&self, lo: UserId, hi: UserId, rec: &PairRecord) -> Result<()> {
        self.write(|tx| {
            let s = &rec.state;
            tx.prepare_cached(
                "INSERT INTO pairs(lo, hi, friends, req_lo_hi, req_hi_lo, block_lo_hi, block_hi_lo, note) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT(lo, hi) DO UPDATE SET friends = excluded.friends, \
                 req_lo_hi = excluded.req_lo_hi, req_hi_lo = excluded.req_hi_lo, \
                 block_lo_hi = excluded.block_lo_hi, block_hi_lo = excluded.block_hi_lo, \
                 note = excluded.note",
            )?
            .execute(params![
                lo as i64,
                hi as i64,
                s.friends,
                s.request_lo_to_hi,
                s.request_hi_to_lo,
                s.lo_blocks_hi,
                s.hi_blocks_lo,
                rec.note
            ])?;
            if s.friends {
                let conv = direct_conv(lo, hi) as i64;
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO conv_members(user_id, conv, delivered) VALUES (?1, ?2, 0)",
                )?;
                st.execute([lo as i64, conv])?;
                st.execute([hi as i64, conv])?;
            }
            Ok(())
        })
    }

    /// The pending-request note is only reported for `Incoming`/`Outgoing`
    /// rows; for friends and blocks it is empty even if a stale one is stored.
    fn friends_of(&self, user: UserId) -> Result<Vec<FriendRow>> {
        let conn = self.reader();
        // Two index seeks (PK prefix on lo, pairs_hi on hi) rather than an OR
        // that the planner may turn into a scan. Columns are normalized to
        // "me"/"them" so the Rust side needs no case split.
        let mut st = conn.prepare_cached(
            "SELECT p.hi, u.username, p.friends, p.req_lo_hi, p.req_hi_lo, p.block_lo_hi, p.note \
             FROM pairs p JOIN users u ON u.id = p.hi WHERE p.lo = ?1 \
             UNION ALL \
             SELECT p.lo, u.username, p.friends, p.req_hi_lo, p.req_lo_hi, p.block_hi_lo, p.note \
             FROM pairs p JOIN users u ON u.id = p.lo WHERE p.hi = ?1",
        )?;
        let rows = st.query_map([user as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, String>(1)?,
                friend_kind(r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (user_id, username, kind, note) = row?;
            let Some(kind) = kind else { continue };
            let note = match kind {
                FriendKind::Incoming | FriendKind::Outgoing => note,
                FriendKind::Friend | FriendKind::Blocked => String::new(),
            };
            out.push(FriendRow {
                user_id,
                username,
                kind,
                note,
            });
        }
        out.sort_by_key(|r| r.user_id);
        Ok(out)
    }

    fn create_group_opts(
        &self,
        name: &str,
        owner: UserId,
        private: bool,
        full_history: bool,
    ) -> Result<GroupId> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO chat_groups(name, owner, dissolved, created_ms, is_private, full_history) \
                 VALUES (?1, ?2, 0, ?3, ?4, ?5)",
            )?
            .execute(params![
                name,
                owner as i64,
                crate::model::now_ms() as i64,
                private,
                full_history
            ])?;
            let id = tx.last_insert_rowid() as u64;
            tx.prepare_cached(
                "INSERT INTO group_members(group_id, user_id, role) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id as i64, owner as i64, Role::Owner as u8])?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO conv_members(user_id, conv, delivered) VALUES (?1, ?2, 0)",
            )?
            .execute([owner as i64, group_conv(id) as i64])?;
            Ok(id)
        })
    }

    fn create_user_with_id(&self, id: UserId, username: &str, password_hash: &str) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO users(id, username, password_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                id as i64,
                username,
                password_hash,
                crate::model::now_ms() as i64
            ])?;
            Ok(())
        })
    }

    fn create_group_with_id(&self, id: GroupId, name: &str, owner: UserId) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO chat_groups(id, name, owner, dissolved, created_ms) \
                 VALUES (?1, ?2, ?3, 0, ?4)",
            )?
            .execute(params![
                id as i64,
                name,
                owner as i64,
                crate::model::now_ms() as i64
            ])?;
            tx.prepare_cached(
                "INSERT INTO group_members(group_id, user_id, role) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id as i64, owner as i64, Role::Owner as u8])?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO conv_members(user_id, conv, delivered) VALUES (?1, ?2, 0)",
            )?
            .execute([owner as i64, group_conv(id) as i64])?;
            Ok(())
        })
    }

    fn set_group_desc(&self, id: GroupId, desc: &str) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached("UPDATE chat_groups SET description = ?2 WHERE id = ?1")?
                .execute(params![id as i64, desc])?;
            Ok(())
        })
    }

    fn group_desc(&self, id: GroupId) -> Result<String> {
        let conn = self.reader();
        let mut st = conn.prepare_cached("SELECT description FROM chat_groups WHERE id = ?1")?;
        let d: Option<Option<String>> = st.query_row([id as i64], |r| r.get(0)).optional()?;
        Ok(d.flatten().unwrap_or_default())
    }

    fn get_group(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        let conn = self.reader();
        let mut st = conn
            .prepare_cached("SELECT id, name, owner, dissolved, is_private, full_history FROM chat_groups WHERE id = ?1")?;
        Ok(st
            .query_row([id as i64], |r| {
                Ok(GroupRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    owner: r.get::<_, i64>(2)? as u64,
                    dissolved: r.get(3)?,
                    private: r.get(4)?,
                    full_history: r.get(5)?,
                })
            })
            .optional()?)
    }

    fn group_members(&self, id: GroupId) -> Result<Vec<MemberRow>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT gm.user_id, u.username, gm.role FROM group_members gm \
             JOIN users u ON u.id = gm.user_id WHERE gm.group_id = ?1 ORDER BY gm.user_id",
        )?;
        let rows = st.query_map([id as i64], |r| {
            Ok(MemberRow {
                user_id: r.get::<_, i64>(0)? as u64,
                username: r.get(1)?,
                role: Role::from_u8(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Idempotent in the strong sense: re-adding an existing member changes
    /// nothing — neither the role (a retried "add" must not demote an admin
    /// or the owner; roles change through `set_role`) nor the cursor.
    fn add_member(&self, id: GroupId, user: UserId, role: Role, delivered: Seq) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO group_members(group_id, user_id, role) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id as i64, user as i64, role as u8])?;
            let full: bool = tx
                .prepare_cached("SELECT full_history FROM chat_groups WHERE id = ?1")?
                .query_row([id as i64], |r| r.get(0))
                .optional()?
                .unwrap_or(false);
            let floor = if full { 0 } else { delivered };
            tx.prepare_cached(
                "INSERT OR IGNORE INTO conv_members(user_id, conv, delivered, join_floor) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute([
                user as i64,
                group_conv(id) as i64,
                delivered as i64,
                floor as i64,
            ])?;
            tx.prepare_cached("DELETE FROM group_pending WHERE group_id = ?1 AND user_id = ?2")?
                .execute([id as i64, user as i64])?;
            Ok(())
        })
    }

    fn join_floor(&self, conv: ConvId, user: UserId) -> Result<Seq> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT join_floor FROM conv_members WHERE user_id = ?1 AND conv = ?2",
        )?;
        let f: Option<i64> = st
            .query_row([user as i64, conv as i64], |r| r.get(0))
            .optional()?;
        Ok(f.unwrap_or(0) as u64)
    }

    fn set_pending(&self, id: GroupId, user: UserId, invited: Option<bool>) -> Result<()> {
        self.write(|tx| {
            match invited {
                Some(inv) => tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO group_pending(group_id, user_id, invited, created_ms) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        id as i64,
                        user as i64,
                        inv,
                        crate::model::now_ms() as i64
                    ])?,
                None => tx
                    .prepare_cached(
                        "DELETE FROM group_pending WHERE group_id = ?1 AND user_id = ?2",
                    )?
                    .execute([id as i64, user as i64])?,
            };
            Ok(())
        })
    }

    fn group_pending(&self, id: GroupId) -> Result<Vec<PendingRow>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT p.user_id, u.username, p.invited FROM group_pending p \
             JOIN users u ON u.id = p.user_id WHERE p.group_id = ?1 ORDER BY p.user_id",
        )?;
        let rows = st.query_map([id as i64], |r| {
            Ok(PendingRow {
                user_id: r.get::<_, i64>(0)? as u64,
                username: r.get(1)?,
                invited: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A no-op for a non-member.
    fn set_role(&self, id: GroupId, user: UserId, role: Role) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "UPDATE group_members SET role = ?3 WHERE group_id = ?1 AND user_id = ?2",
            )?
            .execute(params![id as i64, user as i64, role as u8])?;
            Ok(())
        })
    }

    fn remove_member(&self, id: GroupId, user: UserId) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
                .execute([id as i64, user as i64])?;
            tx.prepare_cached("DELETE FROM conv_members WHERE user_id = ?1 AND conv = ?2")?
                .execute([user as i64, group_conv(id) as i64])?;
            Ok(())
        })
    }

    fn dissolve_group(&self, id: GroupId) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached("UPDATE chat_groups SET dissolved = 1 WHERE id = ?1")?
                .execute([id as i64])?;
            tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1")?
                .execute([id as i64])?;
            tx.prepare_cached("DELETE FROM conv_members WHERE conv = ?1")?
                .execute([group_conv(id) as i64])?;
            tx.prepare_cached("DELETE FROM group_pending WHERE group_id = ?1")?
                .execute([id as i64])?;
            Ok(())
        })
    }

    fn groups_of(&self, user: UserId) -> Result<Vec<(GroupRecord, Role)>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT g.id, g.name, g.owner, g.dissolved, gm.role, g.is_private, g.full_history \
             FROM group_members gm JOIN chat_groups g ON g.id = gm.group_id \
             WHERE gm.user_id = ?1 AND g.dissolved = 0 ORDER BY g.id",
        )?;
        let rows = st.query_map([user as i64], |r| {
            Ok((
                GroupRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    owner: r.get::<_, i64>(2)? as u64,
                    dissolved: r.get(3)?,
                    private: r.get(5)?,
                    full_history: r.get(6)?,
                },
                Role::from_u8(r.get(4)?),
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A duplicate `(conv, seq)` fails the whole batch with `Conflict`.
    fn write_batch(&self, ops: &[WriteOp]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages(conv, seq, sender, ts, client_msg_id, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut cursor = tx.prepare_cached(RAISE_CURSOR)?;
            for op in ops {
                match op {
                    WriteOp::Message(m) => {
                        insert.execute(params![
                            m.conv as i64,
                            m.seq as i64,
                            m.sender as i64,
                            m.timestamp_ms as i64,
                            m.client_msg_id as i64,
                            m.body
                        ])?;
                    }
                    WriteOp::Cursor { user, conv, seq } => {
                        cursor.execute([*seq as i64, *user as i64, *conv as i64])?;
                    }
                }
            }
            Ok(())
        })
    }

    fn conv_tail(&self, conv: ConvId, window: usize) -> Result<ConvTail> {
        let mut conn = self.reader();
        // One read transaction so `last_seq` and `recent` come from the same
        // snapshot.
        let tx = conn.transaction()?;
        let last_seq: i64 = tx
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conv = ?1")?
            .query_row([conv as i64], |r| r.get(0))?;
        let recent = {
            let mut st = tx.prepare_cached(
                "SELECT sender, client_msg_id, seq, ts FROM messages WHERE conv = ?1 \
                 ORDER BY seq DESC LIMIT ?2",
            )?;
            let window = i64::try_from(window).unwrap_or(i64::MAX);
            let rows = st.query_map([conv as i64, window], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.commit()?;
        Ok(ConvTail {
            last_seq: last_seq as u64,
            recent,
        })
    }

    fn messages_after(&self, conv: ConvId, after: Seq, limit: u32) -> Result<Vec<StoredMessage>> {
        // No seq reaches 2^63 (module docs): nothing is after such a bound.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let conn = self.reader();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} WHERE m.conv = ?1 AND m.seq > ?2 ORDER BY m.seq LIMIT ?3"
        ))?;
        let rows = st.query_map([conv as i64, after, limit as i64], message_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn history(&self, conv: ConvId, before: Seq, limit: u32) -> Result<Vec<StoredMessage>> {
        // A plain range seek on the primary key; `before == 0` ("from the
        // newest") and `before >= 2^63` both become the largest bound.
        let upto = upper_incl(before);
        let conn = self.reader();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} WHERE m.conv = ?1 AND m.seq <= ?2 ORDER BY m.seq DESC LIMIT ?3"
        ))?;
        let rows = st.query_map([conv as i64, upto, limit as i64], message_from_row)?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Ordered by conv as `u64` (group conversations, then direct ones).
    /// One transaction for everything: the cost is one fsync instead of one
    /// per user, pair and membership (20k users in about a second).
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
        self.write(|tx| {
            let now = crate::model::now_ms() as i64;
            let mut ids = Vec::with_capacity(usernames.len());
            {
                let mut ins = tx.prepare_cached(
                    "INSERT OR IGNORE INTO users(username, password_hash, created_ms) VALUES (?1, ?2, ?3)",
                )?;
                let mut sel = tx.prepare_cached("SELECT id FROM users WHERE username = ?1")?;
                for (name, hash) in usernames.iter().zip(password_hashes) {
                    ins.execute(params![name, hash, now])?;
                    ids.push(sel.query_row([name], |r| r.get::<_, i64>(0))? as u64);
                }
            }
            {
                let mut pair = tx.prepare_cached(
                    "INSERT INTO pairs(lo, hi, friends) VALUES (?1, ?2, 1) \
                     ON CONFLICT(lo, hi) DO UPDATE SET friends = 1, req_lo_hi = 0, req_hi_lo = 0, \
                     block_lo_hi = 0, block_hi_lo = 0, note = ''",
                )?;
                let mut member = tx.prepare_cached(
                    "INSERT OR IGNORE INTO conv_members(user_id, conv, delivered) VALUES (?1, ?2, ?3)",
                )?;
                for &(a, b) in pairs {
                    let (lo, hi) = (ids[a].min(ids[b]), ids[a].max(ids[b]));
                    pair.execute([lo as i64, hi as i64])?;
                    let conv = direct_conv(lo, hi) as i64;
                    member.execute([lo as i64, conv, 0])?;
                    member.execute([hi as i64, conv, 0])?;
                }
                let mut find = tx.prepare_cached(
                    "SELECT id FROM chat_groups WHERE name = ?1 AND owner = ?2 AND dissolved = 0",
                )?;
                let mut create = tx.prepare_cached(
                    "INSERT INTO chat_groups(name, owner, dissolved, created_ms) VALUES (?1, ?2, 0, ?3)",
                )?;
                let mut gm = tx.prepare_cached(
                    "INSERT OR IGNORE INTO group_members(group_id, user_id, role) VALUES (?1, ?2, ?3)",
                )?;
                let mut tail =
                    tx.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conv = ?1")?;
                let mut gids = Vec::with_capacity(groups.len());
                for (name, members) in groups {
                    let Some(&owner) = members.first() else {
                        return Err(StoreError::Backend(format!("group {name} has no members")));
                    };
                    let gid = match find
                        .query_row(params![name, ids[owner] as i64], |r| r.get::<_, i64>(0))
                        .optional()?
                    {
                        Some(g) => g,
                        None => {
                            create.execute(params![name, ids[owner] as i64, now])?;
                            tx.last_insert_rowid()
                        }
                    };
                    let conv = group_conv(gid as u64) as i64;
                    let last: i64 = tail.query_row([conv], |r| r.get(0))?;
                    for (k, &m) in members.iter().enumerate() {
                        let role = if k == 0 { Role::Owner } else { Role::Member };
                        gm.execute([gid, ids[m] as i64, role as u8 as i64])?;
                        member.execute([ids[m] as i64, conv, last])?;
                    }
                    gids.push(gid as u64);
                }
                Ok((ids, gids))
            }
        })
    }

    fn conversations_of(&self, user: UserId) -> Result<Vec<ConvCursor>> {
        let conn = self.reader();
        // The correlated MAX(seq) is one seek to the end of the conv's range
        // in the messages primary key.
        let mut st = conn.prepare_cached(
            "SELECT c.conv, c.delivered, \
             COALESCE((SELECT MAX(m.seq) FROM messages m WHERE m.conv = c.conv), 0), c.join_floor \
             FROM conv_members c WHERE c.user_id = ?1",
        )?;
        let rows = st.query_map([user as i64], |r| {
            Ok(ConvCursor {
                conv: r.get::<_, i64>(0)? as u64,
                delivered: r.get::<_, i64>(1)? as u64,
                last_seq: r.get::<_, i64>(2)? as u64,
                floor: r.get::<_, i64>(3)? as u64,
            })
        })?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        out.sort_by_key(|c| c.conv);
        Ok(out)
    }

    /// One query: the cursor row, the peer's row (direct conversations are
    /// negative as `i64`), the group, and the newest message (one seek to
    /// the end of the conversation's range) with its sender's name.
    fn conversation_list(&self, user: UserId) -> Result<Vec<ConvSummary>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT c.conv, c.delivered, c.join_floor, COALESCE(p.delivered, 0), \
             COALESCE(g.name, pu.username, ''), \
             m.seq, m.sender, m.ts, m.client_msg_id, substr(m.body, 1, ?2), \
             COALESCE(length(m.body) > ?2, 0), COALESCE(su.username, '') \
             FROM conv_members c \
             LEFT JOIN conv_members p ON c.conv < 0 AND p.conv = c.conv AND p.user_id <> c.user_id \
             LEFT JOIN users pu ON pu.id = p.user_id \
             LEFT JOIN chat_groups g ON c.conv >= 0 AND g.id = c.conv \
             LEFT JOIN messages m ON m.conv = c.conv \
               AND m.seq = (SELECT MAX(x.seq) FROM messages x WHERE x.conv = c.conv) \
             LEFT JOIN users su ON su.id = m.sender \
             WHERE c.user_id = ?1",
        )?;
        let rows = st.query_map(
            params![user as i64, crate::model::PREVIEW_CHARS as i64],
            |r| {
                let conv = r.get::<_, i64>(0)? as u64;
                let seq: Option<i64> = r.get(5)?;
                let last = match seq {
                    Some(seq) => {
                        let sender = r.get::<_, i64>(6)? as u64;
                        Some(StoredMessage {
                            conv,
                            seq: seq as u64,
                            sender,
                            timestamp_ms: r.get::<_, i64>(7)? as u64,
                            client_msg_id: r.get::<_, i64>(8)? as u64,
                            body: r.get(9)?,
                            sender_name: super::sender_name(sender, r.get(11)?),
                        })
                    }
                    None => None,
                };
                Ok(ConvSummary {
                    cursor: ConvCursor {
                        conv,
                        delivered: r.get::<_, i64>(1)? as u64,
                        last_seq: last.as_ref().map(|m| m.seq).unwrap_or(0),
                        floor: r.get::<_, i64>(2)? as u64,
                    },
                    peer_delivered: r.get::<_, i64>(3)? as u64,
                    name: r.get(4)?,
                    truncated: r.get::<_, i64>(10)? != 0,
                    last,
                })
            },
        )?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        out.sort_by_key(|c| c.cursor.conv);
        Ok(out)
    }

    fn read_cursors(&self, conv: ConvId) -> Result<Vec<(UserId, Seq)>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT user_id, delivered FROM conv_members WHERE conv = ?1 ORDER BY user_id",
        )?;
        let rows = st.query_map([conv as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use std::path::PathBuf;

    /// A unique database path in the temp dir, removed (with its WAL/SHM
    /// files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new(tag: &str) -> TempDb {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            TempDb(std::env::temp_dir().join(format!(
                "ringchat-test-{tag}-{}-{n}-{nanos}.db",
                std::process::id()
            )))
        }
        fn open(&self) -> Arc<dyn Store> {
            open_store(&self.0).expect("open sqlite store")
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// One `#[test]` per conformance check, each on a fresh database, so a
    /// failure names the check.
    macro_rules! conformance_tests {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    let db = TempDb::new(stringify!($name));
                    conformance::$name(&*db.open());
                }
            )*
        };
    }

    crate::for_each_conformance_check!(conformance_tests);

    #[test]
    fn all_checks_listed_here() {
        // Keeps the macro's list in step with CHECKS.
        assert_eq!(conformance::CHECKS.len(), 20);
    }

    #[test]
    fn run_all_on_one_store() {
        // The checks must also pass when they share one database.
        let db = TempDb::new("run_all");
        conformance::run_all(&*db.open());
    }

    #[test]
    fn check_survives_reopen() {
        let db = TempDb::new("reopen");
        conformance::check_survives_reopen(&|| db.open());
    }

    #[test]
    fn migrations_set_version_and_reopen_is_noop() {
        let db = TempDb::new("migrate");
        drop(db.open());
        let c = Connection::open(&db.0).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(c);
        // Reopening must not re-run step 1 (it would fail on existing tables).
        drop(db.open());
    }

    /// A database at schema 2 (before private groups) upgrades in place:
    /// its groups become public, its members keep their full view, and
    /// group names become unique per owner.
    #[test]
    fn version_2_database_upgrades_to_private_groups() {
        let db = TempDb::new("v2");
        {
            let c = Connection::open(&db.0).unwrap();
            for step in &MIGRATIONS[..2] {
                c.execute_batch(step).unwrap();
            }
            c.execute_batch(
                "INSERT INTO users(id, username, password_hash, created_ms) VALUES \
                 (1, 'old_owner', 'h', 0), (2, 'old_member', 'h', 0), (3, 'other', 'h', 0);
                 INSERT INTO chat_groups(id, name, owner, dissolved, created_ms) VALUES (5, 'old', 1, 0, 0);
                 INSERT INTO group_members VALUES (5, 1, 2), (5, 2, 0);
                 INSERT INTO conv_members VALUES (1, 5, 0), (2, 5, 7);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let s = db.open();
        let g = s.get_group(5).unwrap().unwrap();
        assert!(!g.private && !g.full_history);
        assert_eq!(s.join_floor(5, 2).unwrap(), 0, "existing members see all");
        assert_eq!(s.conversations_of(2).unwrap()[0].floor, 0);
        assert!(s.create_group("old", 3).is_ok(), "another owner's name");
        assert!(matches!(
            s.create_group("old", 1),
            Err(StoreError::Conflict)
        ));
        drop(s);
        assert!(matches!(
            db.open().create_group("old", 3),
            Err(StoreError::Conflict)
        ));
    }

    #[test]
    fn a_database_from_before_the_disabled_flag_is_migrated() {
        // A database as the previous release left it: steps 1-2, a user.
        let db = TempDb::new("pre_disabled");
        {
            let c = Connection::open(&db.0).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute(
                "INSERT INTO users(username, password_hash, created_ms) VALUES ('old', 'h', 1)",
                [],
            )
            .unwrap();
        }
        let s = db.open();
        let u = s.user_by_name("old").unwrap().unwrap();
        assert!(!u.disabled, "existing accounts stay enabled");
        s.set_disabled(u.id, true).unwrap();
        assert!(s.user_by_id(u.id).unwrap().unwrap().disabled);
        drop(s);
        assert!(db.open().user_by_name("old").unwrap().unwrap().disabled);
    }

    #[test]
    fn a_version_2_database_gets_session_expiry() {
        // A data dir from before session expiry: schema steps 1-2 only,
        // with a user and a token.
        let db = TempDb::new("v2");
        {
            let mut c = Connection::open(&db.0).unwrap();
            let tx = c.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0]).unwrap();
            tx.execute_batch(MIGRATIONS[1]).unwrap();
            tx.pragma_update(None, "user_version", 2).unwrap();
            tx.execute(
                "INSERT INTO users(username, password_hash, created_ms) VALUES ('old', 'h', 1)",
                [],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO sessions(token_hash, user_id, created_ms) VALUES (x'0102', 1, 5000)",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let s = db.open();
        // The old token counts from its creation.
        assert_eq!(s.use_session(&[1, 2], 5999, 1000).unwrap(), Some(1));
        assert_eq!(s.use_session(&[1, 2], 7000, 1000).unwrap(), None);
        s.create_session(&[3], 1, 10).unwrap();
        assert_eq!(s.delete_sessions_unused_since(11).unwrap(), 1);
    }

    #[test]
    fn newer_schema_is_refused() {
        let db = TempDb::new("newer");
        drop(db.open());
        let c = Connection::open(&db.0).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            SqliteStore::open(&db.0),
            Err(StoreError::Backend(_))
        ));
    }

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(like_prefix(""), "%");
    }

    /// Throughput of `write_batch` by batch size; run with
    /// `cargo test --release --lib store::sqlite -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_write_batch_sizes() {
        let db = TempDb::new("bench");
        let store = db.open();
        crate::store::conformance::bench_write_batch_sizes(&*store);
    }
}

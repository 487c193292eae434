//! Networked backend: MySQL / MariaDB (InnoDB) through a connection pool.
//!
//! Selected with `--store mysql://user:pass@host:port/db[?pool=N]`. `pool` is
//! the number of pooled connections (default [`DEFAULT_POOL_SIZE`]); they are
//! all opened up front, so `open` fails fast when the server is unreachable,
//! and calls from more blocking threads than that wait for a free connection.
//! Other query parameters are passed to the `mysql` crate (for example
//! `tcp_connect_timeout_ms`), except `pool_min`/`pool_max`, which `pool`
//! replaces. The database is created if missing (the user needs `CREATE`
//! privilege for that; otherwise create it beforehand).
//!
//! Schema: the same tables as the SQLite backend (`users`, `sessions`,
//! `pairs`, `chat_groups`, `group_members`, `conv_members`, `messages`), in
//! InnoDB with `utf8mb4` / `utf8mb4_bin`, so any text round-trips byte for
//! byte. Ids, seqs, timestamps, client message ids and `ConvId`s are
//! `BIGINT UNSIGNED`, so `ORDER BY conv` is the `u64` order (group
//! conversations before direct ones, whose top bit is set).
//!
//! Names (usernames, group names) are `VARBINARY`, not `VARCHAR ... utf8mb4_bin`:
//! MySQL's and MariaDB's `utf8mb4_bin` is a PAD SPACE collation, under which
//! `'bob' = 'bob '`, so the unique index would reject a name that differs
//! only by trailing spaces and a lookup would find the wrong one. Bytes
//! compare exactly, as names must ("names compare exactly").
//!
//! Live group names are unique through a generated column
//! (`live_name = IF(dissolved, NULL, name)`) with a unique index: MySQL has no
//! partial indexes, and NULLs never collide in a unique index.
//!
//! Durability: InnoDB commits are durable with the server's default
//! `innodb_flush_log_at_trx_commit=1`; [`Store::write_batch`] is one
//! transaction, so one log flush per batch (group commit).
//!
//! Every value goes through prepared statements with placeholders; the only
//! SQL text built at run time is the placeholder list of the multi-row insert
//! and the (validated, quoted) database name in `CREATE DATABASE`.

use super::*;
use crate::model::{direct_conv, group_conv};
use ::mysql::prelude::{FromRow, Queryable};
use ::mysql::{
    Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, PooledConn, Transaction,
    TxOpts, Value,
};
use std::sync::Arc;
use std::time::Duration;

/// Pooled connections when the URL has no `pool=N`.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Connect timeout unless the URL sets `tcp_connect_timeout_ms`: an
/// unreachable server should fail startup quickly, not hang on SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Socket read/write timeout unless the URL sets `read_timeout` /
/// `write_timeout`: a server that stops answering (a network partition, a
/// hung host) must turn into a retryable error for the waiting senders, not
/// hold every blocking thread until TCP gives up minutes later. Longer than
/// any query the server makes (one group commit, one catch-up page). Not
/// yet enough on its own: a partition test (docs/CLUSTER.md, faults) still
/// saw a send unanswered after 90 s.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Prepared statements kept per connection: ~30 fixed ones plus one per
/// multi-row insert shape ([`INSERT_CHUNKS`]).
const STATEMENT_CACHE: usize = 64;
/// Rows per multi-row `INSERT` statement. A batch is split greedily into these
/// sizes, so only five statement shapes exist (each prepared once per
/// connection and cached) instead of one per batch length. 256 rows x 6
/// columns stays far below the 65,535-placeholder limit.
const INSERT_CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];
/// Soft cap on message body bytes per `INSERT` statement, well below the
/// smallest common `max_allowed_packet` (4 MiB on MySQL 5.7): 256 bodies of
/// 64 KiB would be 16 MiB. A single message is always sent, whatever its size.
const INSERT_BYTES: usize = 2 << 20;
/// How often a transaction is retried after InnoDB picked it as a deadlock
/// victim (error 1213): concurrent batches can deadlock on next-key locks,
/// and the victim's whole transaction was rolled back, so rerunning is safe.
const DEADLOCK_RETRIES: usize = 5;

/// MySQL error codes this module acts on.
const ER_DUP_ENTRY: u16 = 1062;
const ER_DUP_ENTRY_WITH_KEY_NAME: u16 = 1586;
const ER_LOCK_DEADLOCK: u16 = 1213;

/// Schema steps; step `i` upgrades `ringchat_schema.version` from `i` to
/// `i + 1`. Never edit a released step: append a new one.
///
/// MySQL commits DDL implicitly, so a step cannot commit atomically with its
/// version bump. Every statement is therefore idempotent (`IF NOT EXISTS`):
/// a step interrupted half-way is simply re-run on the next open.
const MIGRATIONS: &[&[&str]] = &[
    // 1: initial schema.
    &[
        r#"CREATE TABLE IF NOT EXISTS users(
            id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            username      VARBINARY(255) NOT NULL,
            password_hash TEXT NOT NULL,
            created_ms    BIGINT UNSIGNED NOT NULL,
            UNIQUE KEY users_username(username)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"#,
        r#"CREATE TABLE IF NOT EXISTS sessions(
            token_hash VARBINARY(255) NOT NULL PRIMARY KEY,
            user_id    BIGINT UNSIGNED NOT NULL,
            created_ms BIGINT UNSIGNED NOT NULL,
            KEY sessions_user(user_id),
            FOREIGN KEY (user_id) REFERENCES users(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"#,
        r#"CREATE TABLE IF NOT EXISTS pairs(
            lo          BIGINT UNSIGNED NOT NULL,
            hi          BIGINT UNSIGNED NOT NULL,
            friends     BOOLEAN NOT NULL DEFAULT 0,
            req_lo_hi   BOOLEAN NOT NULL DEFAULT 0,
            req_hi_lo   BOOLEAN NOT NULL DEFAULT 0,
            block_lo_hi BOOLEAN NOT NULL DEFAULT 0,
            block_hi_lo BOOLEAN NOT NULL DEFAULT 0,
            note        TEXT NOT NULL,
            PRIMARY KEY(lo, hi),
            KEY pairs_hi(hi),
            FOREIGN KEY (lo) REFERENCES users(id),
            FOREIGN KEY (hi) REFERENCES users(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"#,
        // `live_name` is NULL for dissolved groups, so a dissolved group's
        // name can be taken again.
        r#"CREATE TABLE IF NOT EXISTS chat_groups(
            id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name       VARBINARY(255) NOT NULL,
            owner      BIGINT UNSIGNED NOT NULL,
            dissolved  BOOLEAN NOT NULL DEFAULT 0,
            created_ms BIGINT UNSIGNED NOT NULL,
            live_name  VARBINARY(255) AS (IF(dissolved, NULL, name)) STORED,
            UNIQUE KEY chat_groups_live_name(live_name),
            FOREIGN KEY (owner) REFERENCES users(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"#,
        r#"CREATE TABLE IF NOT EXISTS group_members(
            group_id BIGINT UNSIGNED NOT NULL,
            user_id  BIGINT UNSIGNED NOT NULL,
            role     TINYINT UNSIGNED NOT NULL,
            PRIMARY KEY(group_id, user_id),
            KEY group_members_user(user_id),
            FOREIGN KEY (group_id) REFERENCES chat_groups(id),
            FOREIGN KEY (user_id) REFERENCES users(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"#,
        // Delivery cursors; a row means "user is a member of conv".
        r#"CREATE TABLE IF NOT EXISTS conv_members(
            user_id   BIGINT UNSIGNED NOT NULL,
            conv      BIGINT UNSIGNED NOT NULL,
            delivered BIGINT UNSIGNED NOT NULL,
            PRIMARY KEY(user_id, conv),
            KEY conv_members_conv(conv),
            FOREIGN KEY (user_id) REFERENCES users(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"#,
        // Clustered on (conv, seq): appends are sequential per conversation
        // and MAX(seq), tails and ranges are single b-tree seeks. No foreign
        // key on sender: it would cost a lookup per message on the hot path.
        // MEDIUMTEXT: TEXT stops at 64 KiB of bytes, a 64 KiB frame can carry
        // a body close to that.
        r#"CREATE TABLE IF NOT EXISTS messages(
            conv          BIGINT UNSIGNED NOT NULL,
            seq           BIGINT UNSIGNED NOT NULL,
            sender        BIGINT UNSIGNED NOT NULL,
            ts            BIGINT UNSIGNED NOT NULL,
            client_msg_id BIGINT UNSIGNED NOT NULL,
            body          MEDIUMTEXT NOT NULL,
            PRIMARY KEY(conv, seq)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"#,
    ],
    // 2: group descriptions (legacy protocol `groupdesc`); NULL = none.
    // Re-running it after a crash hits "duplicate column", which
    // `migrate_locked` treats as done (MySQL has no ADD COLUMN IF NOT EXISTS).
    &[r#"ALTER TABLE chat_groups ADD COLUMN description TEXT NULL"#],
    // 3: accounts an operator disabled (`ringchat admin disable`); the same
    // duplicate-column tolerance makes a re-run harmless.
    &[r#"ALTER TABLE users ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT 0"#],
    // 4: session expiry (`serve --session-ttl-secs`): when a token was last
    // used; existing tokens count from their creation. Each statement is
    // safe to re-run (duplicate column/key count as done; the UPDATE only
    // touches rows the first run did not).
    &[
        r#"ALTER TABLE sessions ADD COLUMN last_used_ms BIGINT UNSIGNED NOT NULL DEFAULT 0"#,
        r#"UPDATE sessions SET last_used_ms = created_ms WHERE last_used_ms = 0"#,
        r#"ALTER TABLE sessions ADD KEY sessions_last_used(last_used_ms)"#,
    ],
    // 5: private groups, join points, invitations and join requests; live
    // group names unique per owner instead of globally (the new key is
    // added before the old one is dropped, so names stay unique throughout).
    // Existing groups are public; existing members keep their full view.
    &[
        r#"ALTER TABLE chat_groups ADD COLUMN is_private BOOLEAN NOT NULL DEFAULT 0"#,
        r#"ALTER TABLE chat_groups ADD COLUMN full_history BOOLEAN NOT NULL DEFAULT 0"#,
        r#"ALTER TABLE conv_members ADD COLUMN join_floor BIGINT UNSIGNED NOT NULL DEFAULT 0"#,
        r#"CREATE TABLE IF NOT EXISTS group_pending(
            group_id   BIGINT UNSIGNED NOT NULL,
            user_id    BIGINT UNSIGNED NOT NULL,
            invited    BOOLEAN NOT NULL,
            created_ms BIGINT UNSIGNED NOT NULL,
            PRIMARY KEY(group_id, user_id),
            FOREIGN KEY (group_id) REFERENCES chat_groups(id),
            FOREIGN KEY (user_id) REFERENCES users(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"#,
        r#"ALTER TABLE chat_groups ADD UNIQUE KEY chat_groups_owner_live_name(owner, live_name)"#,
        r#"ALTER TABLE chat_groups DROP INDEX chat_groups_live_name"#,
    ],
];

/// ER_DUP_FIELDNAME: an `ADD COLUMN` that already ran.
const ER_DUP_FIELDNAME: u16 = 1060;
/// ER_DUP_KEYNAME: an `ADD KEY` that already ran.
const ER_DUP_KEYNAME: u16 = 1061;
/// ER_CANT_DROP_FIELD_OR_KEY: a `DROP INDEX` that already ran.
const ER_CANT_DROP_FIELD_OR_KEY: u16 = 1091;

/// Session setup run on every new connection: utf8mb4 on the wire, and strict
/// mode so an oversized value is an error instead of a silent truncation, and
/// a missing InnoDB is an error instead of a silent MyISAM table.
const INIT: &[&str] = &[
    "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,\
     ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
];

fn is_code(e: &::mysql::Error, codes: &[u16]) -> bool {
    matches!(e, ::mysql::Error::MySqlError(m) if codes.contains(&m.code))
}

impl From<::mysql::Error> for StoreError {
    fn from(e: ::mysql::Error) -> Self {
        if is_code(&e, &[ER_DUP_ENTRY, ER_DUP_ENTRY_WITH_KEY_NAME]) {
            StoreError::Conflict
        } else {
            StoreError::Backend(format!("mysql: {e}"))
        }
    }
}

/// An `AUTO_INCREMENT` insert that reported no id (should not happen).
fn no_insert_id() -> ::mysql::Error {
    ::mysql::Error::IoError(std::io::Error::other(
        "INSERT reported no AUTO_INCREMENT id",
    ))
}

fn backend(msg: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(msg.to_string())
}

/// Rows of a query, decoded without panicking (the `mysql` crate's `exec`
/// panics on a type mismatch; this reports it as an error instead).
fn rows<T: FromRow, Q: Queryable>(
    q: &mut Q,
    sql: &str,
    params: impl Into<Params>,
) -> ::mysql::Result<Vec<T>> {
    q.exec_opt(sql, params)?
        .into_iter()
        .map(|r| r.map_err(|e| ::mysql::Error::FromRowError(e.0)))
        .collect()
}

fn first<T: FromRow, Q: Queryable>(
    q: &mut Q,
    sql: &str,
    params: impl Into<Params>,
) -> ::mysql::Result<Option<T>> {
    match q.exec_first_opt(sql, params)? {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(v)),
        Some(Err(e)) => Err(::mysql::Error::FromRowError(e.0)),
    }
}

/// Splits `pool=N` off the URL's query string; the rest is for the `mysql`
/// crate. Returns the URL without `pool` and the pool size, if given.
fn split_pool_param(url: &str) -> Result<(String, Option<usize>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut pool = None;
    let mut rest = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("pool", v)) => {
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| backend(format!("bad pool size {v:?} in the MySQL URL")))?;
                pool = Some(n);
            }
            Some(("pool_min" | "pool_max", _)) => {
                return Err(backend(
                    "use pool=N in the MySQL URL instead of pool_min/pool_max",
                ));
            }
            _ => rest.push(kv),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, pool))
}

/// Opens the store named by a `mysql://...` URL (with optional `pool=N`).
pub fn open_store(url: &str) -> Result<Arc<dyn Store>> {
    let (url, pool) = split_pool_param(url)?;
    Ok(Arc::new(MysqlStore::open(
        &url,
        pool.unwrap_or(DEFAULT_POOL_SIZE),
    )?))
}

/// Database names are identifiers, which cannot be bound as parameters; only
/// plain ones are accepted so quoting them is trivially safe.
fn check_db_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$');
    if ok {
        Ok(())
    } else {
        Err(backend(format!(
            "MySQL database name {name:?} must be 1-64 characters of A-Z a-z 0-9 _ $"
        )))
    }
}

pub struct MysqlStore {
    pool: Pool,
}

impl MysqlStore {
    /// Connects to `url` (`mysql://user:pass@host:port/db`, no `pool`
    /// parameter here), creates the database if it does not exist, runs the
    /// migrations and opens a pool of exactly `pool_size` connections.
    pub fn open(url: &str, pool_size: usize) -> Result<MysqlStore> {
        let opts = Opts::from_url(url).map_err(|e| backend(format!("MySQL URL: {e}")))?;
        let db = opts
            .get_db_name()
            .ok_or_else(|| backend("the MySQL URL must name a database: mysql://.../DB"))?
            .to_string();
        check_db_name(&db)?;
        let mut builder = OptsBuilder::from_opts(opts.clone())
            .init(INIT.to_vec())
            .stmt_cache_size(STATEMENT_CACHE);
        if opts.get_tcp_connect_timeout().is_none() {
            builder = builder.tcp_connect_timeout(Some(CONNECT_TIMEOUT));
        }
        if opts.get_read_timeout().is_none() {
            builder = builder.read_timeout(Some(IO_TIMEOUT));
        }
        if opts.get_write_timeout().is_none() {
            builder = builder.write_timeout(Some(IO_TIMEOUT));
        }

        // The database may not exist yet, so the first connection names none.
        {
            let mut conn = Conn::new(builder.clone().db_name(None::<String>))?;
            conn.query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS `{db}` \
                 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))?;
            conn.query_drop(format!("USE `{db}`"))?;
            migrate(&mut conn)?;
        }

        let pool_size = pool_size.max(1);
        let constraints = PoolConstraints::new(pool_size, pool_size)
            .ok_or_else(|| backend(format!("bad pool size {pool_size}")))?;
        // No reset on return to the pool: a reset would drop the prepared
        // statement cache every time. Nothing leaks between uses: an
        // unfinished `Transaction` rolls back when dropped, and the only
        // session state is the `INIT` settings.
        let pool = Pool::new(
            builder.pool_opts(
                PoolOpts::default()
                    .with_constraints(constraints)
                    .with_reset_connection(false),
            ),
        )?;
        Ok(MysqlStore { pool })
    }

    fn conn(&self) -> ::mysql::Result<PooledConn> {
        self.pool.get_conn()
    }

    /// Runs `f` in one transaction: committed if `f` succeeds, rolled back
    /// (by dropping the transaction) otherwise. A deadlock victim is retried
    /// from scratch, since InnoDB already rolled the whole transaction back.
    fn write<T>(&self, mut f: impl FnMut(&mut Transaction<'_>) -> ::mysql::Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            let r = (|| {
                let mut conn = self.conn()?;
                let mut tx = conn.start_transaction(TxOpts::default())?;
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            })();
            match r {
                Err(e) if attempt < DEADLOCK_RETRIES && is_code(&e, &[ER_LOCK_DEADLOCK]) => {
                    attempt += 1;
                }
                r => return r.map_err(StoreError::from),
            }
        }
    }
}

/// Brings the schema to `MIGRATIONS.len()`. An advisory lock serializes
/// concurrent openers (several server processes starting at once).
fn migrate(conn: &mut Conn) -> Result<()> {
    let got: Option<Option<i64>> = first(
        conn,
        "SELECT GET_LOCK(CONCAT('ringchat_migrate.', DATABASE()), 60)",
        (),
    )?;
    if got != Some(Some(1)) {
        return Err(backend("timed out waiting for the MySQL migration lock"));
    }
    let r = migrate_locked(conn);
    let _ = conn.query_drop("SELECT RELEASE_LOCK(CONCAT('ringchat_migrate.', DATABASE()))");
    r
}

fn migrate_locked(conn: &mut Conn) -> Result<()> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS ringchat_schema(
            id      TINYINT UNSIGNED NOT NULL PRIMARY KEY,
            version INT UNSIGNED NOT NULL
        ) ENGINE=InnoDB",
    )?;
    conn.exec_drop(
        "INSERT INTO ringchat_schema(id, version) VALUES (1, 0) \
         ON DUPLICATE KEY UPDATE id = id",
        (),
    )?;
    let version: u64 = first(conn, "SELECT version FROM ringchat_schema WHERE id = 1", ())?
        .ok_or_else(|| backend("ringchat_schema has no version row"))?;
    let version = usize::try_from(version).map_err(backend)?;
    if version > MIGRATIONS.len() {
        return Err(backend(format!(
            "database schema version {version} is newer than this binary ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        for stmt in *step {
            match conn.query_drop(stmt) {
                Err(e)
                    if is_code(
                        &e,
                        &[ER_DUP_FIELDNAME, ER_DUP_KEYNAME, ER_CANT_DROP_FIELD_OR_KEY],
                    ) => {}
                r => r?,
            }
        }
        conn.exec_drop(
            "UPDATE ringchat_schema SET version = ? WHERE id = 1",
            (i as u64 + 1,),
        )?;
    }
    Ok(())
}

fn delete_user_sessions(
    tx: &mut Transaction<'_>,
    user: UserId,
    keep: Option<&[u8]>,
) -> ::mysql::Result<u64> {
    match keep {
        Some(k) => tx.exec_drop(
            "DELETE FROM sessions WHERE user_id = ? AND token_hash <> ?",
            (user, k),
        )?,
        None => tx.exec_drop("DELETE FROM sessions WHERE user_id = ?", (user,))?,
    }
    Ok(tx.affected_rows())
}

type MessageRow = (u64, u64, u64, u64, u64, String, String);

/// Columns: conv, seq, sender, ts, client_msg_id, body, sender name.
const MESSAGE_COLUMNS: &str = "m.conv, m.seq, m.sender, m.ts, m.client_msg_id, m.body, \
     COALESCE(u.username, '') FROM messages m LEFT JOIN users u ON u.id = m.sender";

fn message(r: MessageRow) -> StoredMessage {
    StoredMessage {
        conv: r.0,
        seq: r.1,
        sender: r.2,
        timestamp_ms: r.3,
        client_msg_id: r.4,
        body: r.5,
        sender_name: super::sender_name(r.2, r.6),
    }
}

/// Escapes `LIKE` wildcards so `prefix` matches literally (with `ESCAPE '!'`).
/// `!` rather than backslash: a backslash's meaning in SQL string literals
/// depends on `NO_BACKSLASH_ESCAPES`, `!` means the same everywhere.
fn like_prefix(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '!') {
            s.push('!');
        }
        s.push(c);
    }
    s.push('%');
    s
}

/// SQLite's `LIKE` prefix semantics: bytes equal up to ASCII case.
fn ascii_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// See `sqlite::friend_kind`: blocking wins, then friendship, then requests;
/// a block by the other side alone is hidden.
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

/// Multi-row insert with `rows` rows; only placeholders are generated.
fn insert_messages_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO messages(conv, seq, sender, ts, client_msg_id, body) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?)");
    }
    sql
}

/// Splits `msgs` into chunks whose lengths are in [`INSERT_CHUNKS`] and whose
/// bodies stay under [`INSERT_BYTES`] (a lone oversized message still forms a
/// chunk of one).
fn insert_chunks<'a>(mut msgs: &'a [&'a StoredMessage]) -> Vec<&'a [&'a StoredMessage]> {
    let mut out = Vec::new();
    while !msgs.is_empty() {
        let n = INSERT_CHUNKS
            .iter()
            .copied()
            .find(|&n| {
                n == 1
                    || (n <= msgs.len()
                        && msgs[..n].iter().map(|m| m.body.len()).sum::<usize>() <= INSERT_BYTES)
            })
            .unwrap_or(1);
        let (chunk, rest) = msgs.split_at(n);
        out.push(chunk);
        msgs = rest;
    }
    out
}

impl Store for MysqlStore {
    fn create_user(&self, username: &str, password_hash: &str) -> Result<UserId> {
        self.write(|tx| {
            tx.exec_drop(
                "INSERT INTO users(username, password_hash, created_ms) VALUES (?, ?, ?)",
                (username, password_hash, crate::model::now_ms()),
            )?;
            tx.last_insert_id().ok_or_else(no_insert_id)
        })
    }

    fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let r: Option<(u64, String, String, bool)> = first(
            &mut self.conn()?,
            "SELECT id, username, password_hash, disabled FROM users WHERE username = ?",
            (username.as_bytes(),),
        )?;
        Ok(r.map(|(id, username, password_hash, disabled)| UserRecord {
            id,
            username,
            password_hash,
            disabled,
        }))
    }

    fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>> {
        let r: Option<(u64, String, String, bool)> = first(
            &mut self.conn()?,
            "SELECT id, username, password_hash, disabled FROM users WHERE id = ?",
            (id,),
        )?;
        Ok(r.map(|(id, username, password_hash, disabled)| UserRecord {
            id,
            username,
            password_hash,
            disabled,
        }))
    }

    /// Same semantics as SQLite's `LIKE`: a literal prefix, ASCII case
    /// ignored, non-ASCII compared exactly. SQL does a coarser match
    /// (Unicode lowercase on both sides, which accepts everything the exact
    /// rule accepts, plus e.g. "Ü" for "ü"), and Rust keeps the exact
    /// matches, fetching more pages if it dropped any so `limit` is honoured.
    fn search_users(
        &self,
        prefix: &str,
        after_id: UserId,
        limit: u32,
    ) -> Result<Vec<(UserId, String)>> {
        let pattern = like_prefix(prefix);
        let mut conn = self.conn()?;
        let mut out = Vec::new();
        let mut after = after_id;
        while out.len() < limit as usize {
            let want = limit as usize - out.len();
            let page: Vec<(u64, String)> = rows(
                &mut conn,
                "SELECT id, username FROM users \
                 WHERE LOWER(CONVERT(username USING utf8mb4)) \
                 LIKE LOWER(CONVERT(? USING utf8mb4)) COLLATE utf8mb4_bin ESCAPE '!' \
                 AND id > ? ORDER BY id LIMIT ?",
                (&pattern, after, want as u64),
            )?;
            let full = page.len() == want;
            for (id, name) in page {
                after = id;
                if ascii_prefix(&name, prefix) {
                    out.push((id, name));
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    fn create_session(&self, token_hash: &[u8], user: UserId, created_ms: u64) -> Result<()> {
        self.write(|tx| {
            tx.exec_drop(
                "INSERT INTO sessions(token_hash, user_id, created_ms, last_used_ms) \
                 VALUES (?, ?, ?, ?)",
                (token_hash, user, created_ms, created_ms),
            )
        })
    }

    fn session_user(&self, token_hash: &[u8]) -> Result<Option<UserId>> {
        Ok(first(
            &mut self.conn()?,
            "SELECT user_id FROM sessions WHERE token_hash = ?",
            (token_hash,),
        )?)
    }

    fn use_session(&self, token_hash: &[u8], now_ms: u64, ttl_ms: u64) -> Result<Option<UserId>> {
        // A read first: most uses need no write (`session_touch_ms`).
        let row: Option<(u64, u64)> = first(
            &mut self.conn()?,
            "SELECT user_id, last_used_ms FROM sessions WHERE token_hash = ?",
            (token_hash,),
        )?;
        let Some((user, last)) = row else {
            return Ok(None);
        };
        if super::session_use(last, now_ms, ttl_ms) == (true, false) {
            return Ok(Some(user));
        }
        self.write(|tx| {
            let row: Option<(u64, u64)> = first(
                tx,
                "SELECT user_id, last_used_ms FROM sessions WHERE token_hash = ? FOR UPDATE",
                (token_hash,),
            )?;
            let Some((user, last)) = row else {
                return Ok(None);
            };
            if !super::session_use(last, now_ms, ttl_ms).0 {
                tx.exec_drop("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))?;
                return Ok(None);
            }
            tx.exec_drop(
                "UPDATE sessions SET last_used_ms = GREATEST(last_used_ms, ?) WHERE token_hash = ?",
                (now_ms, token_hash),
            )?;
            Ok(Some(user))
        })
    }

    fn delete_session(&self, token_hash: &[u8]) -> Result<()> {
        Ok(self
            .conn()?
            .exec_drop("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))?)
    }

    fn set_disabled(&self, user: UserId, disabled: bool) -> Result<()> {
        Ok(self.conn()?.exec_drop(
            "UPDATE users SET disabled = ? WHERE id = ?",
            (disabled, user),
        )?)
    }

    fn delete_user_sessions(&self, user: UserId, keep: Option<&[u8]>) -> Result<u64> {
        self.write(|tx| delete_user_sessions(tx, user, keep))
    }

    fn delete_sessions_unused_since(&self, before_ms: u64) -> Result<u64> {
        self.write(|tx| {
            tx.exec_drop("DELETE FROM sessions WHERE last_used_ms < ?", (before_ms,))?;
            Ok(tx.affected_rows())
        })
    }

    fn set_password(&self, user: UserId, password_hash: &str, keep: Option<&[u8]>) -> Result<()> {
        self.write(|tx| {
            tx.exec_drop(
                "UPDATE users SET password_hash = ? WHERE id = ?",
                (password_hash, user),
            )?;
            delete_user_sessions(tx, user, keep)?;
            Ok(())
        })
    }

    fn upgrade_password_hash(&self, user: UserId, old: &str, new: &str) -> Result<bool> {
        self.write(|tx| {
            tx.exec_drop(
                "UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                (new, user, old),
            )?;
            Ok(tx.affected_rows() == 1)
        })
    }

    fn get_pair(&self, lo: UserId, hi: UserId) -> Result<PairRecord> {
        let r: Option<(bool, bool, bool, bool, bool, String)> = first(
            &mut self.conn()?,
            "SELECT friends, req_lo_hi, req_hi_lo, block_lo_hi, block_hi_lo, note \
             FROM pairs WHERE lo = ? AND hi = ?",
            (lo, hi),
        )?;
        Ok(r.map(|(f, a, b, c, d, note)| PairRecord {
            state: PairState {
                friends: f,
                request_lo_to_hi: a,
                request_hi_to_lo: b,
                lo_blocks_hi: c,
                hi_blocks_lo: d,
            },
            note,
        })
        .unwrap_or_default())
    }

    fn set_pair(&self, lo: UserId, hi: UserId, rec: &PairRecord) -> Result<()> {
        let s = rec.state;
        let bits = (
            s.friends,
            s.request_lo_to_hi,
            s.request_hi_to_lo,
            s.lo_blocks_hi,
            s.hi_blocks_lo,
            rec.note.as_str(),
        );
        self.write(|tx| {
            // The new values are bound twice rather than read back with
            // `VALUES(col)`, which MySQL 8 deprecates (and its replacement
            // syntax is not MariaDB's).
            let mut p: Vec<Value> = vec![lo.into(), hi.into()];
            for _ in 0..2 {
                p.extend([
                    bits.0.into(),
                    bits.1.into(),
                    bits.2.into(),
                    bits.3.into(),
                    bits.4.into(),
                    bits.5.into(),
                ]);
            }
            tx.exec_drop(
                "INSERT INTO pairs(lo, hi, friends, req_lo_hi, req_hi_lo, block_lo_hi, block_hi_lo, note) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE friends = ?, req_lo_hi = ?, req_hi_lo = ?, \
                 block_lo_hi = ?, block_hi_lo = ?, note = ?",
                p,
            )?;
            if s.friends {
                let conv = direct_conv(lo, hi);
                // `ON DUPLICATE KEY UPDATE` no-op rather than `INSERT IGNORE`,
                // which would also swallow foreign-key and truncation errors.
                tx.exec_batch(
                    "INSERT INTO conv_members(user_id, conv, delivered) VALUES (?, ?, 0) \
                     ON DUPLICATE KEY UPDATE delivered = delivered",
                    [(lo, conv), (hi, conv)],
                )?;
            }
            Ok(())
        })
    }

    /// The pending-request note is only reported for `Incoming`/`Outgoing`
    /// rows, as in the SQLite backend.
    fn friends_of(&self, user: UserId) -> Result<Vec<FriendRow>> {
        let all: Vec<(u64, String, bool, bool, bool, bool, String)> = rows(
            &mut self.conn()?,
            "SELECT p.hi, u.username, p.friends, p.req_lo_hi, p.req_hi_lo, p.block_lo_hi, p.note \
             FROM pairs p JOIN users u ON u.id = p.hi WHERE p.lo = ? \
             UNION ALL \
             SELECT p.lo, u.username, p.friends, p.req_hi_lo, p.req_lo_hi, p.block_hi_lo, p.note \
             FROM pairs p JOIN users u ON u.id = p.lo WHERE p.hi = ?",
            (user, user),
        )?;
        let mut out: Vec<FriendRow> = all
            .into_iter()
            .filter_map(|(user_id, username, f, mine, theirs, block, note)| {
                let kind = friend_kind(f, mine, theirs, block)?;
                let note = match kind {
                    FriendKind::Incoming | FriendKind::Outgoing => note,
                    FriendKind::Friend | FriendKind::Blocked => String::new(),
                };
                Some(FriendRow {
                    user_id,
                    username,
                    kind,
                    note,
                })
            })
            .collect();
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
            tx.exec_drop(
                "INSERT INTO chat_groups(name, owner, dissolved, created_ms, is_private, full_history) \
                 VALUES (?, ?, 0, ?, ?, ?)",
                (
                    name.as_bytes(),
                    owner,
                    crate::model::now_ms(),
                    private,
                    full_history,
                ),
            )?;
            let id = tx.last_insert_id().ok_or_else(no_insert_id)?;
            tx.exec_drop(
                "INSERT INTO group_members(group_id, user_id, role) VALUES (?, ?, ?)",
                (id, owner, Role::Owner as u8),
            )?;
            tx.exec_drop(
                "INSERT INTO conv_members(user_id, conv, delivered) VALUES (?, ?, 0) \
                 ON DUPLICATE KEY UPDATE delivered = delivered",
                (owner, group_conv(id)),
            )?;
            Ok(id)
        })
    }

    fn create_user_with_id(&self, id: UserId, username: &str, password_hash: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec_drop(
                "INSERT INTO users(id, username, password_hash, created_ms) VALUES (?, ?, ?, ?)",
                (id, username, password_hash, crate::model::now_ms()),
            )
        })
    }

    fn create_group_with_id(&self, id: GroupId, name: &str, owner: UserId) -> Result<()> {
        self.write(|tx| {
            tx.exec_drop(
                "INSERT INTO chat_groups(id, name, owner, dissolved, created_ms) \
                 VALUES (?, ?, ?, 0, ?)",
                (id, name.as_bytes(), owner, crate::model::now_ms()),
            )?;
            tx.exec_drop(
                "INSERT INTO group_members(group_id, user_id, role) VALUES (?, ?, ?)",
                (id, owner, Role::Owner as u8),
            )?;
            tx.exec_drop(
                "INSERT INTO conv_members(user_id, conv, delivered) VALUES (?, ?, 0) \
                 ON DUPLICATE KEY UPDATE delivered = delivered",
                (owner, group_conv(id)),
            )
        })
    }

    fn set_group_desc(&self, id: GroupId, desc: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec_drop(
                "UPDATE chat_groups SET description = ? WHERE id = ?",
                (desc, id),
            )
        })
    }

    fn group_desc(&self, id: GroupId) -> Result<String> {
        let r: Option<Option<String>> = first(
            &mut self.conn()?,
            "SELECT description FROM chat_groups WHERE id = ?",
            (id,),
        )?;
        Ok(r.flatten().unwrap_or_default())
    }

    fn get_group(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        let r: Option<(u64, String, u64, bool, bool, bool)> = first(
            &mut self.conn()?,
            "SELECT id, name, owner, dissolved, is_private, full_history FROM chat_groups WHERE id = ?",
            (id,),
        )?;
        Ok(r.map(
            |(id, name, owner, dissolved, private, full_history)| GroupRecord {
                id,
                name,
                owner,
                dissolved,
                private,
                full_history,
            },
        ))
    }

    fn group_members(&self, id: GroupId) -> Result<Vec<MemberRow>> {
        let r: Vec<(u64, String, u8)> = rows(
            &mut self.conn()?,
            "SELECT gm.user_id, u.username, gm.role FROM group_members gm \
             JOIN users u ON u.id = gm.user_id WHERE gm.group_id = ? ORDER BY gm.user_id",
            (id,),
        )?;
        Ok(r.into_iter()
            .map(|(user_id, username, role)| MemberRow {
                user_id,
                username,
                role: Role::from_u8(role),
            })
            .collect())
    }

    /// Idempotent in the strong sense, as in SQLite: re-adding an existing
    /// member changes neither the role nor the cursor.
    fn add_member(&self, id: GroupId, user: UserId, role: Role, delivered: Seq) -> Result<()> {
        self.write(|tx| {
            tx.exec_drop(
                "INSERT INTO group_members(group_id, user_id, role) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE role = role",
                (id, user, role as u8),
            )?;
            let full: Option<bool> = tx.exec_first(
                "SELECT full_history FROM chat_groups WHERE id = ?",
                (id,),
            )?;
            let floor = if full.unwrap_or(false) { 0 } else { delivered };
            tx.exec_drop(
                "INSERT INTO conv_members(user_id, conv, delivered, join_floor) VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE delivered = delivered",
                (user, group_conv(id), delivered, floor),
            )?;
            tx.exec_drop(
                "DELETE FROM group_pending WHERE group_id = ? AND user_id = ?",
                (id, user),
            )
        })
    }

    fn join_floor(&self, conv: ConvId, user: UserId) -> Result<Seq> {
        let r: Option<u64> = first(
            &mut self.conn()?,
            "SELECT join_floor FROM conv_members WHERE user_id = ? AND conv = ?",
            (user, conv),
        )?;
        Ok(r.unwrap_or(0))
    }

    fn set_pending(&self, id: GroupId, user: UserId, invited: Option<bool>) -> Result<()> {
        let mut c = self.conn()?;
        match invited {
            Some(inv) => c.exec_drop(
                "INSERT INTO group_pending(group_id, user_id, invited, created_ms) \
                 VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE invited = VALUES(invited), created_ms = VALUES(created_ms)",
                (id, user, inv, crate::model::now_ms()),
            )?,
            None => c.exec_drop(
                "DELETE FROM group_pending WHERE group_id = ? AND user_id = ?",
                (id, user),
            )?,
        }
        Ok(())
    }

    fn group_pending(&self, id: GroupId) -> Result<Vec<PendingRow>> {
        let r: Vec<(u64, String, bool)> = rows(
            &mut self.conn()?,
            "SELECT p.user_id, u.username, p.invited FROM group_pending p \
             JOIN users u ON u.id = p.user_id WHERE p.group_id = ? ORDER BY p.user_id",
            (id,),
        )?;
        Ok(r.into_iter()
            .map(|(user_id, username, invited)| PendingRow {
                user_id,
                username,
                invited,
            })
            .collect())
    }

    /// A no-op for a non-member.
    fn set_role(&self, id: GroupId, user: UserId, role: Role) -> Result<()> {
        Ok(self.conn()?.exec_drop(
            "UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?",
            (role as u8, id, user),
        )?)
    }

    fn remove_member(&self, id: GroupId, user: UserId) -> Result<()> {
        self.write(|tx| {
            tx.exec_drop(
                "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
                (id, user),
            )?;
            tx.exec_drop(
                "DELETE FROM conv_members WHERE user_id = ? AND conv = ?",
                (user, group_conv(id)),
            )
        })
    }

    fn dissolve_group(&self, id: GroupId) -> Result<()> {
        self.write(|tx| {
            tx.exec_drop("UPDATE chat_groups SET dissolved = 1 WHERE id = ?", (id,))?;
            tx.exec_drop("DELETE FROM group_members WHERE group_id = ?", (id,))?;
            tx.exec_drop("DELETE FROM conv_members WHERE conv = ?", (group_conv(id),))?;
            tx.exec_drop("DELETE FROM group_pending WHERE group_id = ?", (id,))
        })
    }

    fn groups_of(&self, user: UserId) -> Result<Vec<(GroupRecord, Role)>> {
        let r: Vec<(u64, String, u64, bool, u8, bool, bool)> = rows(
            &mut self.conn()?,
            "SELECT g.id, g.name, g.owner, g.dissolved, gm.role, g.is_private, g.full_history \
             FROM group_members gm JOIN chat_groups g ON g.id = gm.group_id \
             WHERE gm.user_id = ? AND g.dissolved = 0 ORDER BY g.id",
            (user,),
        )?;
        Ok(r.into_iter()
            .map(
                |(id, name, owner, dissolved, role, private, full_history)| {
                    (
                        GroupRecord {
                            id,
                            name,
                            owner,
                            dissolved,
                            private,
                            full_history,
                        },
                        Role::from_u8(role),
                    )
                },
            )
            .collect())
    }

    /// One transaction: messages go in multi-row inserts (see
    /// [`insert_chunks`]), then cursors. Cursor ops are merged per
    /// `(user, conv)` to their maximum first, which is equivalent because a
    /// cursor only moves forward (`GREATEST`). A duplicate `(conv, seq)`
    /// fails the whole batch with `Conflict`.
    fn write_batch(&self, ops: &[WriteOp]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let msgs: Vec<&StoredMessage> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Message(m) => Some(m),
                WriteOp::Cursor { .. } => None,
            })
            .collect();
        let mut cursors: Vec<(UserId, ConvId, Seq)> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Cursor { user, conv, seq } => Some((*user, *conv, *seq)),
                WriteOp::Message(_) => None,
            })
            .collect();
        // Sorted by (user, conv, seq): the last of each key holds the maximum,
        // and a fixed lock order makes deadlocks between batches rarer.
        cursors.sort_unstable();
        cursors.dedup_by(|next, prev| {
            let same = next.0 == prev.0 && next.1 == prev.1;
            if same {
                prev.2 = prev.2.max(next.2);
            }
            same
        });
        let chunks = insert_chunks(&msgs);
        self.write(|tx| {
            for chunk in &chunks {
                let mut params = Vec::with_capacity(chunk.len() * 6);
                for m in chunk.iter() {
                    params.extend([
                        Value::from(m.conv),
                        m.seq.into(),
                        m.sender.into(),
                        m.timestamp_ms.into(),
                        m.client_msg_id.into(),
                        m.body.as_str().into(),
                    ]);
                }
                tx.exec_drop(insert_messages_sql(chunk.len()), params)?;
            }
            if !cursors.is_empty() {
                tx.exec_batch(
                    "UPDATE conv_members SET delivered = GREATEST(delivered, ?) \
                     WHERE user_id = ? AND conv = ?",
                    cursors.iter().map(|&(user, conv, seq)| (seq, user, conv)),
                )?;
            }
            Ok(())
        })
    }

    /// One statement when `window > 0` (the newest row carries `last_seq`),
    /// so `last_seq` and `recent` always come from the same snapshot.
    fn conv_tail(&self, conv: ConvId, window: usize) -> Result<ConvTail> {
        let mut conn = self.conn()?;
        if window == 0 {
            let last: Option<u64> = first(
                &mut conn,
                "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conv = ?",
                (conv,),
            )?;
            return Ok(ConvTail {
                last_seq: last.unwrap_or(0),
                recent: Vec::new(),
            });
        }
        let recent: Vec<(u64, u64, u64, u64)> = rows(
            &mut conn,
            "SELECT sender, client_msg_id, seq, ts FROM messages WHERE conv = ? \
             ORDER BY seq DESC LIMIT ?",
            (conv, u64::try_from(window).unwrap_or(u64::MAX)),
        )?;
        Ok(ConvTail {
            last_seq: recent.first().map(|r| r.2).unwrap_or(0),
            recent,
        })
    }

    fn messages_after(&self, conv: ConvId, after: Seq, limit: u32) -> Result<Vec<StoredMessage>> {
        let r: Vec<MessageRow> = rows(
            &mut self.conn()?,
            &format!(
                "SELECT {MESSAGE_COLUMNS} WHERE m.conv = ? AND m.seq > ? ORDER BY m.seq LIMIT ?"
            ),
            (conv, after, limit),
        )?;
        Ok(r.into_iter().map(message).collect())
    }

    fn history(&self, conv: ConvId, before: Seq, limit: u32) -> Result<Vec<StoredMessage>> {
        // `before == 0` means "from the newest": an upper bound no seq reaches
        // keeps the query a plain range seek on the primary key.
        let before = if before == 0 { u64::MAX } else { before };
        let r: Vec<MessageRow> = rows(
            &mut self.conn()?,
            &format!(
                "SELECT {MESSAGE_COLUMNS} WHERE m.conv = ? AND m.seq < ? \
                 ORDER BY m.seq DESC LIMIT ?"
            ),
            (conv, before, limit),
        )?;
        let mut out: Vec<StoredMessage> = r.into_iter().map(message).collect();
        out.reverse();
        Ok(out)
    }

    /// Ordered by conv as `u64` (the column is unsigned, so SQL's order is it).
    fn conversations_of(&self, user: UserId) -> Result<Vec<ConvCursor>> {
        let r: Vec<(u64, u64, u64, u64)> = rows(
            &mut self.conn()?,
            "SELECT c.conv, c.delivered, \
             COALESCE((SELECT MAX(m.seq) FROM messages m WHERE m.conv = c.conv), 0), c.join_floor \
             FROM conv_members c WHERE c.user_id = ? ORDER BY c.conv",
            (user,),
        )?;
        Ok(r.into_iter()
            .map(|(conv, delivered, last_seq, floor)| ConvCursor {
                conv,
                delivered,
                last_seq,
                floor,
            })
            .collect())
    }

    /// One query, as in SQLite: the cursor row, the peer's row (direct
    /// conversations have the top bit set), the group, and the newest
    /// message with its sender's name.
    fn conversation_list(&self, user: UserId) -> Result<Vec<ConvSummary>> {
        let n = crate::model::PREVIEW_CHARS as u64;
        let r: Vec<::mysql::Row> = rows(
            &mut self.conn()?,
            "SELECT c.conv, c.delivered, c.join_floor, COALESCE(p.delivered, 0), \
             COALESCE(g.name, pu.username, ''), \
             m.seq, m.sender, m.ts, m.client_msg_id, SUBSTRING(m.body, 1, ?), \
             COALESCE(CHAR_LENGTH(m.body) > ?, 0), COALESCE(su.username, '') \
             FROM conv_members c \
             LEFT JOIN conv_members p ON c.conv >= 9223372036854775808 \
               AND p.conv = c.conv AND p.user_id <> c.user_id \
             LEFT JOIN users pu ON pu.id = p.user_id \
             LEFT JOIN chat_groups g ON c.conv < 9223372036854775808 AND g.id = c.conv \
             LEFT JOIN messages m ON m.conv = c.conv \
               AND m.seq = (SELECT MAX(x.seq) FROM messages x WHERE x.conv = c.conv) \
             LEFT JOIN users su ON su.id = m.sender \
             WHERE c.user_id = ? ORDER BY c.conv",
            (n, n, user),
        )?;
        let bad = |what: &str| StoreError::Backend(format!("conversation_list: bad {what}"));
        let mut out = Vec::with_capacity(r.len());
        for row in r {
            let get_u = |i: usize| -> Result<u64> {
                row.get_opt::<u64, _>(i)
                    .and_then(|x| x.ok())
                    .ok_or_else(|| bad("number"))
            };
            let get_s = |i: usize| -> Result<String> {
                let b: Vec<u8> = row
                    .get_opt::<Vec<u8>, _>(i)
                    .and_then(|x| x.ok())
                    .ok_or_else(|| bad("text"))?;
                String::from_utf8(b).map_err(|_| bad("utf-8"))
            };
            let conv = get_u(0)?;
            let seq: Option<u64> = row
                .get_opt::<Option<u64>, _>(5)
                .and_then(|x| x.ok())
                .flatten();
            let last = match seq {
                Some(seq) => {
                    let sender = get_u(6)?;
                    Some(StoredMessage {
                        conv,
                        seq,
                        sender,
                        timestamp_ms: get_u(7)?,
                        client_msg_id: get_u(8)?,
                        body: get_s(9)?,
                        sender_name: super::sender_name(sender, get_s(11)?),
                    })
                }
                None => None,
            };
            out.push(ConvSummary {
                cursor: ConvCursor {
                    conv,
                    delivered: get_u(1)?,
                    last_seq: last.as_ref().map(|m| m.seq).unwrap_or(0),
                    floor: get_u(2)?,
                },
                peer_delivered: get_u(3)?,
                name: get_s(4)?,
                truncated: get_u(10)? != 0,
                last,
            });
        }
        Ok(out)
    }

    fn read_cursors(&self, conv: ConvId) -> Result<Vec<(UserId, Seq)>> {
        Ok(rows(
            &mut self.conn()?,
            "SELECT user_id, delivered FROM conv_members WHERE conv = ? ORDER BY user_id",
            (conv,),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The server the tests use: local MariaDB/MySQL, root without password.
    /// `RINGCHAT_TEST_MYSQL` overrides it (a server URL without database).
    fn server() -> String {
        std::env::var("RINGCHAT_TEST_MYSQL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
    }

    fn server_opts() -> Opts {
        Opts::from_url(&server()).expect("test server URL")
    }

    /// Why the server cannot be used, if it cannot.
    fn unreachable() -> Option<String> {
        let opts =
            OptsBuilder::from_opts(server_opts()).tcp_connect_timeout(Some(Duration::from_secs(2)));
        match Conn::new(opts) {
            Ok(mut c) => c.query_drop("SELECT 1").err().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }

    /// A fresh database `ringchat_test_<pid>_<n>` on [`server()`], dropped when
    /// the guard is dropped, including when the test panics (unwinding runs
    /// `Drop`). `None` when the server is unreachable and
    /// `RINGCHAT_REQUIRE_MYSQL` is not `1`, after saying so on stderr; with
    /// `RINGCHAT_REQUIRE_MYSQL=1` (CI) an unreachable server fails the test,
    /// so a broken CI setup cannot pass by skipping everything.
    struct TestDb {
        name: String,
    }

    impl TestDb {
        fn new() -> Option<TestDb> {
            if let Some(why) = unreachable() {
                let o = server_opts();
                let at = format!("{}:{}", o.get_ip_or_hostname(), o.get_tcp_port());
                if std::env::var("RINGCHAT_REQUIRE_MYSQL").as_deref() == Ok("1") {
                    panic!("MySQL not reachable at {at} ({why}) and RINGCHAT_REQUIRE_MYSQL=1");
                }
                // Straight to the stderr handle: `eprintln!` is captured by
                // the test harness for passing tests, and a skip must show.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: MySQL not reachable at {at} ({why})"
                );
                return None;
            }
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let db = TestDb {
                name: format!("ringchat_test_{}_{n}", std::process::id()),
            };
            // A leftover from an earlier run with the same pid would make
            // the checks fail on taken names.
            db.drop_database();
            Some(db)
        }

        fn url(&self) -> String {
            format!("{}/{}", server(), self.name)
        }

        /// A small pool: tests run in parallel against one server.
        fn open(&self) -> Arc<dyn Store> {
            Arc::new(MysqlStore::open(&self.url(), 4).expect("open mysql store"))
        }

        fn admin(&self) -> Conn {
            Conn::new(server_opts()).expect("admin connection")
        }

        fn drop_database(&self) {
            if let Ok(mut c) = Conn::new(server_opts()) {
                let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
            }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            self.drop_database();
        }
    }

    /// One `#[test]` per conformance check, each on a fresh database, so a
    /// failure names the check.
    macro_rules! conformance_tests {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    let Some(db) = TestDb::new() else { return };
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
        let Some(db) = TestDb::new() else { return };
        conformance::run_all(&*db.open());
    }

    #[test]
    fn check_survives_reopen() {
        let Some(db) = TestDb::new() else { return };
        conformance::check_survives_reopen(&|| db.open());
    }

    /// Through `store::open` with a `pool` parameter, as `--store` does.
    #[test]
    fn store_open_dispatches_mysql_urls() {
        let Some(db) = TestDb::new() else { return };
        let s = crate::store::open(&format!("{}?pool=2", db.url()), std::path::Path::new("."))
            .expect("store::open(mysql://...)");
        let id = s.create_user("via_open", "h").unwrap();
        assert_eq!(s.user_by_name("via_open").unwrap().unwrap().id, id);
    }

    /// A ~60 KB body of emoji, quotes and backslashes survives byte for byte
    /// (MEDIUMTEXT, utf8mb4, no escaping done by hand), also when it shares a
    /// multi-row insert with small ones, and in `history`.
    #[test]
    fn big_emoji_quote_body_roundtrip() {
        let Some(db) = TestDb::new() else { return };
        let s = db.open();
        let u = s.create_user("big_body", "h").unwrap();
        let conv = group_conv(s.create_group("big_body", u).unwrap());
        let big = "😀'\"\\%_ `; DROP TABLE messages; -- é\0".repeat(1600);
        assert!(big.len() > 60_000 && big.len() < 65_536, "{}", big.len());
        let bodies = [big.clone(), "small".to_string(), big.clone() + "!"];
        let ops: Vec<WriteOp> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                WriteOp::Message(StoredMessage {
                    conv,
                    seq: i as u64 + 1,
                    sender: u,
                    timestamp_ms: 1,
                    client_msg_id: i as u64,
                    body: b.clone(),
                    sender_name: String::new(),
                })
            })
            .collect();
        s.write_batch(&ops).unwrap();
        let back = s.history(conv, 0, 10).unwrap();
        assert_eq!(back.len(), 3);
        for (m, b) in back.iter().zip(&bodies) {
            assert_eq!(m.body.as_bytes(), b.as_bytes(), "seq {}", m.seq);
        }
    }

    /// Names differing only by trailing spaces are different names (the
    /// PAD SPACE pitfall of `utf8mb4_bin` that `VARBINARY` avoids), and
    /// search keeps non-ASCII case exact like SQLite's `LIKE`.
    #[test]
    fn names_compare_exactly() {
        let Some(db) = TestDb::new() else { return };
        let s = db.open();
        let a = s.create_user("pad", "h1").unwrap();
        let b = s.create_user("pad ", "h2").unwrap();
        assert_ne!(a, b);
        assert_eq!(s.user_by_name("pad").unwrap().unwrap().id, a);
        assert_eq!(s.user_by_name("pad ").unwrap().unwrap().id, b);
        let g = s.create_group("crew", a).unwrap();
        let g2 = s.create_group("crew ", a).unwrap();
        assert_ne!(g, g2);

        let up = s.create_user("ÜBER", "h").unwrap();
        let low = s.create_user("über", "h").unwrap();
        let ids = |p: &str| {
            s.search_users(p, 0, 10)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        };
        // Non-ASCII letters are compared exactly, as in SQLite...
        assert_eq!(ids("ü"), vec![low]);
        assert_eq!(ids("Ü"), vec![up]);
        // ...and the rows SQL over-matched do not eat into `limit`.
        let x = s.create_user("übera", "h").unwrap();
        assert_eq!(
            s.search_users("üb", 0, 2)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
            vec![low, x]
        );
    }

    #[test]
    fn a_database_from_before_the_disabled_flag_is_migrated() {
        let Some(db) = TestDb::new() else { return };
        let s = db.open();
        let id = s.create_user("old", "h").unwrap();
        drop(s);
        // Back to the previous release's schema (version 2, no column).
        let mut c = db.admin();
        c.query_drop(format!(
            "ALTER TABLE `{}`.users DROP COLUMN disabled",
            db.name
        ))
        .unwrap();
        c.query_drop(format!(
            "UPDATE `{}`.ringchat_schema SET version = 2 WHERE id = 1",
            db.name
        ))
        .unwrap();
        let s = db.open();
        let u = s.user_by_id(id).unwrap().unwrap();
        assert!(!u.disabled, "existing accounts stay enabled");
        s.set_disabled(id, true).unwrap();
        assert!(s.user_by_name("old").unwrap().unwrap().disabled);
    }

    #[test]
    fn a_version_2_database_gets_session_expiry_and_step_3_reruns() {
        let Some(db) = TestDb::new() else { return };
        let s = db.open();
        let u = s.create_user("old", "h").unwrap();
        drop(s);
        // Back to a database from before session expiry, with a token.
        let mut c = db.admin();
        let n = &db.name;
        c.query_drop(format!(
            "ALTER TABLE `{n}`.sessions DROP COLUMN last_used_ms"
        ))
        .unwrap();
        c.query_drop(format!(
            "UPDATE `{n}`.ringchat_schema SET version = 2 WHERE id = 1"
        ))
        .unwrap();
        c.exec_drop(
            format!("INSERT INTO `{n}`.sessions(token_hash, user_id, created_ms) VALUES (?, ?, ?)"),
            (&[1u8, 2][..], u, 5000u64),
        )
        .unwrap();
        let s = db.open();
        // The old token counts from its creation.
        assert_eq!(s.use_session(&[1, 2], 5999, 1000).unwrap(), Some(u));
        assert_eq!(s.use_session(&[1, 2], 7000, 1000).unwrap(), None);
        drop(s);
        // A step 3 interrupted after its DDL (MySQL commits DDL at once)
        // runs again without harm.
        c.query_drop(format!(
            "UPDATE `{n}`.ringchat_schema SET version = 2 WHERE id = 1"
        ))
        .unwrap();
        let s = db.open();
        s.create_session(&[3], u, 10).unwrap();
        assert_eq!(s.delete_sessions_unused_since(11).unwrap(), 1);
    }

    #[test]
    fn migrations_set_version_and_reopen_is_noop() {
        let Some(db) = TestDb::new() else { return };
        drop(db.open());
        let mut c = db.admin();
        let v: Option<u64> = c
            .query_first(format!(
                "SELECT version FROM `{}`.ringchat_schema WHERE id = 1",
                db.name
            ))
            .unwrap();
        assert_eq!(v, Some(MIGRATIONS.len() as u64));
        let engines: Vec<(String, String)> = c
            .exec(
                "SELECT table_name, engine FROM information_schema.tables \
                 WHERE table_schema = ? ORDER BY table_name",
                (&db.name,),
            )
            .unwrap();
        assert_eq!(engines.len(), 9, "{engines:?}");
        assert!(engines.iter().all(|(_, e)| e == "InnoDB"), "{engines:?}");
        // Reopening must keep the data (migrations do not re-run destructively).
        let s = db.open();
        s.create_user("m", "h").unwrap();
        drop(s);
        assert!(db.open().user_by_name("m").unwrap().is_some());
    }

    /// A database at schema 2 (before private groups) upgrades in place:
    /// its groups become public, its members keep their full view, and
    /// group names become unique per owner.
    #[test]
    fn version_2_database_upgrades_to_private_groups() {
        let Some(db) = TestDb::new() else { return };
        db.admin()
            .query_drop(format!("CREATE DATABASE `{}`", db.name))
            .unwrap();
        let mut c = Conn::new(Opts::from_url(&db.url()).unwrap()).unwrap();
        for stmt in MIGRATIONS[..2].iter().flat_map(|s| s.iter()) {
            c.query_drop(stmt).unwrap();
        }
        c.query_drop(
            "CREATE TABLE ringchat_schema(id TINYINT UNSIGNED NOT NULL PRIMARY KEY, \
             version INT UNSIGNED NOT NULL) ENGINE=InnoDB",
        )
        .unwrap();
        c.query_drop("INSERT INTO ringchat_schema VALUES (1, 2)")
            .unwrap();
        c.query_drop(
            "INSERT INTO users(id, username, password_hash, created_ms) VALUES \
             (1, 'old_owner', 'h', 0), (2, 'old_member', 'h', 0), (3, 'other', 'h', 0)",
        )
        .unwrap();
        c.query_drop(
            "INSERT INTO chat_groups(id, name, owner, dissolved, created_ms) VALUES (5, 'old', 1, 0, 0)",
        )
        .unwrap();
        c.query_drop("INSERT INTO group_members VALUES (5, 1, 2), (5, 2, 0)")
            .unwrap();
        c.query_drop("INSERT INTO conv_members VALUES (1, 5, 0), (2, 5, 7)")
            .unwrap();
        drop(c);
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
        // Reopening is a no-op.
        assert!(matches!(
            db.open().create_group("old", 3),
            Err(StoreError::Conflict)
        ));
    }

    #[test]
    fn newer_schema_is_refused() {
        let Some(db) = TestDb::new() else { return };
        drop(db.open());
        db.admin()
            .query_drop(format!(
                "UPDATE `{}`.ringchat_schema SET version = 99",
                db.name
            ))
            .unwrap();
        assert!(matches!(
            MysqlStore::open(&db.url(), 1),
            Err(StoreError::Backend(_))
        ));
    }

    #[test]
    fn pool_param_is_split_off() {
        assert_eq!(
            split_pool_param("mysql://u:p@h:1/db").unwrap(),
            ("mysql://u:p@h:1/db".to_string(), None)
        );
        assert_eq!(
            split_pool_param("mysql://h/db?pool=3").unwrap(),
            ("mysql://h/db".to_string(), Some(3))
        );
        assert_eq!(
            split_pool_param("mysql://h/db?tcp_connect_timeout_ms=50&pool=16").unwrap(),
            (
                "mysql://h/db?tcp_connect_timeout_ms=50".to_string(),
                Some(16)
            )
        );
        assert!(split_pool_param("mysql://h/db?pool=0").is_err());
        assert!(split_pool_param("mysql://h/db?pool=x").is_err());
        assert!(split_pool_param("mysql://h/db?pool_max=4").is_err());
    }

    #[test]
    fn database_names_are_checked() {
        assert!(check_db_name("ringchat_test_1").is_ok());
        assert!(check_db_name("a`b").is_err());
        assert!(check_db_name("").is_err());
        assert!(matches!(
            open_store("mysql://root@127.0.0.1:3306/bad-name"),
            Err(StoreError::Backend(_))
        ));
    }

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("a_b%c!\\"), "a!_b!%c!!\\%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn insert_chunks_use_fixed_sizes_and_byte_cap() {
        let m = |len: usize| StoredMessage {
            conv: 1,
            seq: 1,
            sender: 1,
            timestamp_ms: 0,
            client_msg_id: 0,
            body: "x".repeat(len),
            sender_name: String::new(),
        };
        let small: Vec<StoredMessage> = (0..343).map(|_| m(10)).collect();
        let refs: Vec<&StoredMessage> = small.iter().collect();
        let sizes: Vec<usize> = insert_chunks(&refs).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![256, 64, 16, 4, 1, 1, 1]);
        let big: Vec<StoredMessage> = (0..64).map(|_| m(60_000)).collect();
        let refs: Vec<&StoredMessage> = big.iter().collect();
        let chunks = insert_chunks(&refs);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 64);
        for c in &chunks {
            assert!(c.iter().map(|m| m.body.len()).sum::<usize>() <= INSERT_BYTES);
        }
    }

    /// Throughput of `write_batch` by batch size; run with
    /// `cargo test --release --lib store::mysql -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_write_batch_sizes() {
        let Some(db) = TestDb::new() else { return };
        let store = db.open();
        crate::store::conformance::bench_write_batch_sizes(&*store);
    }
}

//! Accounts: registration, the password check behind every login, logout,
//! user search.

use super::{Next, STORAGE};
use crate::core::request::Account;
use crate::core::{ErrorCode, Reject, validate};
use crate::model::{MAX_USER_ID, UserId};
use crate::server::auth;
use crate::server::hasher::Denied;
use crate::server::session::Session;
use crate::server::shard::{Revoked, Shard};
use crate::store::{StoreError, UserRecord};
use std::borrow::Cow;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

/// Registers an account (the same name and password rules for every
/// protocol, so every account can log in on each). Hashing runs on the
/// hashing pool, bounded: a full queue is `RateLimited`.
pub async fn register(
    shard: &Rc<Shard>,
    username: &str,
    password: &str,
) -> Result<UserId, Refusal> {
    validate::username(username).map_err(Refusal::from)?;
    let hash = new_password_hash(shard, password).await?;
    let name = username.to_string();
    match shard.blocking(move |s| s.create_user(&name, &hash)).await {
        Ok(id) => Ok(id),
        Err(StoreError::Conflict) => {
            Err(Reject(ErrorCode::UsernameTaken, "username is taken").into())
        }
        Err(_) => Err(STORAGE.into()),
    }
}

/// A new password (registration, change): the length rules
/// (`--min-password-len` to 128 bytes), then its hash on the hashing pool
/// (a full queue is `RateLimited`).
async fn new_password_hash(shard: &Rc<Shard>, password: &str) -> Result<String, Refusal> {
    let min = shard.cfg.min_password;
    if !validate::password_len_ok(password, min) {
        return Err(Refusal {
            code: ErrorCode::InvalidPassword,
            text: if min == validate::MIN_PASSWORD {
                Cow::Borrowed("password must be 8-128 bytes")
            } else {
                Cow::Owned(format!("password must be {min}-128 bytes"))
            },
        });
    }
    let pass = password.to_string();
    match shard.hasher.run(move || auth::hash_password(&pass)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(_)) => Err(Reject(ErrorCode::Internal, "password hashing failed").into()),
        Err(d) => Err(d.into()),
    }
}

/// Why a password login failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong account or password (the two look the same).
    BadCredentials,
    /// Throttled, or the hashing queue is full: no hashing was done.
    Denied(Denied),
    /// The store could not be read: retry.
    Storage,
    /// The password was right but an operator disabled the account
    /// (`server::admin`). Said only after the password check, so it does
    /// not tell a guesser which accounts exist or are disabled.
    Disabled,
}

/// The refusal of a login or resume of a disabled account.
pub const DISABLED: Reject = Reject(
    ErrorCode::AccountDisabled,
    "this account has been disabled by an operator",
);

/// A refusal whose words may be computed (a throttle says when to retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub text: Cow<'static, str>,
}

impl From<Reject> for Refusal {
    fn from(r: Reject) -> Refusal {
        Refusal {
            code: r.0,
            text: Cow::Borrowed(r.1),
        }
    }
}

/// Refused before hashing: `RateLimited`, with when to retry.
impl From<Denied> for Refusal {
    fn from(d: Denied) -> Refusal {
        Refusal {
            code: ErrorCode::RateLimited,
            text: Cow::Owned(d.text()),
        }
    }
}

/// The password check behind every login, native (by name) and legacy (by
/// id): see [`verify`]. After a success, a stored hash whose parameters are
/// not the server's (a fast test hash, an older choice) is replaced, in the
/// background, by a hash of the same password with the server's parameters.
pub async fn check_password(
    shard: &Rc<Shard>,
    account: Account<'_>,
    password: &str,
    peer: Option<IpAddr>,
) -> Result<UserRecord, LoginError> {
    let res = verify(shard, account, password, peer).await;
    if let Some(pause) = res.as_ref().err().and_then(tarpit) {
        glommio::timer::sleep(pause).await;
    }
    let rec = res?;
    if shard.cfg.rehash && auth::needs_rehash(&rec.password_hash) {
        upgrade_hash(
            shard,
            rec.id,
            rec.password_hash.clone(),
            password.to_string(),
        );
    }
    Ok(rec)
}

/// How long a refused login's reply is held on its connection.
pub const TARPIT: Duration = Duration::from_millis(200);

/// How long to hold a refused login's reply on its connection.
///
/// Why: refusals before hashing are cheap for the server but also for the
/// attacker, who otherwise gets one back at once and sends the next (a
/// 48-connection flood reached 23,000 attempts/s on one shard, and the
/// cycles spent answering it raised other users' send latency from 1.5 to
/// 84 ms: `bench/login_flood.sh`). A connection handles one request at a
/// time, so holding the reply (a timer, no thread, no CPU) caps each
/// connection at a few attempts per second, while a person who mistypes
/// waits a fraction of a second. Shorter than the first back-off step, so
/// a throttled client that retries at once is still refused (and held
/// again). The connection count is capped elsewhere (`--max-conns-per-addr`,
/// `--max-conns`).
fn tarpit(e: &LoginError) -> Option<Duration> {
    match e {
        LoginError::Denied(_) | LoginError::BadCredentials => Some(TARPIT),
        LoginError::Storage | LoginError::Disabled => None,
    }
}

/// Rehashes `password` with the server's parameters on the hashing pool and
/// stores it if the stored hash is still `old`. Best effort: a full hashing
/// queue or a store error leaves the old hash for the next login.
fn upgrade_hash(shard: &Rc<Shard>, user: UserId, old: String, password: String) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let Ok(Ok(new)) = shard
            .hasher
            .run(move || auth::hash_password(&password))
            .await
        else {
            return;
        };
        match shard
            .blocking(move |s| s.upgrade_password_hash(user, &old, &new))
            .await
        {
            Ok(true) => tracing::info!(user, "password hash upgraded to the server's parameters"),
            Ok(false) => {} // changed meanwhile: the new one is current
            Err(e) => tracing::warn!(user, error = %e, "upgrading a password hash failed"),
        }
    })
    .detach();
}

/// Checks an account's password. Refusals that cost no hashing come first:
/// an over-long password (argon2's cost grows with it), a throttled account
/// or address, a full hashing queue; an unknown account costs a dummy hash
/// (no enumeration by timing). Failures count against the account's name
/// and the address.
async fn verify(
    shard: &Rc<Shard>,
    account: Account<'_>,
    password: &str,
    peer: Option<IpAddr>,
) -> Result<UserRecord, LoginError> {
    if password.len() > validate::MAX_PASSWORD {
        return Err(LoginError::BadCredentials);
    }
    // The first budget checked: the name, or for a login by id `#id` (so a
    // throttled address costs no store read either way).
    let first = match account {
        Account::Name(n) if n.len() > validate::MAX_USERNAME => {
            return Err(LoginError::BadCredentials);
        }
        Account::Name(n) => n.to_string(),
        Account::Id(id) => format!("#{id}"),
    };
    shard
        .hasher
        .admit(&first, peer)
        .map_err(LoginError::Denied)?;
    let rec = match account {
        Account::Name(n) => {
            let n = n.to_string();
            shard.blocking(move |s| s.user_by_name(&n)).await
        }
        Account::Id(id) if id == 0 || id > MAX_USER_ID => Ok(None),
        Account::Id(id) => shard.blocking(move |s| s.user_by_id(id)).await,
    }
    .map_err(|_| LoginError::Storage)?;
    // An account's budget is its name, whichever way it logs in.
    let key = match &rec {
        Some(r) if r.username != first => {
            shard
                .hasher
                .admit(&r.username, peer)
                .map_err(LoginError::Denied)?;
            r.username.clone()
        }
        _ => first,
    };
    let phc = rec.as_ref().map(|r| r.password_hash.clone());
    let ok = shard
        .hasher
        .verify(phc, password.to_string())
        .await
        .map_err(LoginError::Denied)?;
    shard.hasher.outcome(&key, peer, ok);
    match rec {
        Some(r) if ok && r.disabled => Err(LoginError::Disabled),
        Some(r) if ok => Ok(r),
        _ => Err(LoginError::BadCredentials),
    }
}

/// Ends the session: its resume token stops working and every other live
/// connection that logged in or resumed with it (on this node and, in a
/// cluster, on the others) is closed with a Goodbye. This connection closes
/// after the reply (the old protocol goes back to its login menu instead;
/// its codec handles that).
pub async fn logout(shard: &Rc<Shard>, sess: &Session, req_id: u64) -> Next {
    if let Some(token) = &sess.token {
        let th = auth::token_hash(token);
        let th2 = th.clone();
        if shard
            .blocking(move |s| s.delete_session(&th2))
            .await
            .is_err()
        {
            sess.error(req_id, STORAGE);
            return Next::Continue;
        }
        end_sessions(shard, sess, Revoked::Logout(th));
    }
    sess.reply.ok(req_id);
    Next::Close
}

/// Closes the user's other live connections that `why` ends, here and on
/// the other nodes holding sessions of the user. (All of a user's
/// connections on a node live on its home shard, which is this one.)
fn end_sessions(shard: &Shard, sess: &Session, why: Revoked) {
    let n = shard.end_sessions(sess.user(), &why, Some(sess.conn.id));
    if let Some(c) = &shard.cluster {
        c.end_sessions_remote(sess.user(), &why);
    }
    tracing::info!(
        user = sess.user(),
        closed_here = n,
        why = why.text(),
        "sessions ended"
    );
}

/// Logs out everywhere: every token of the user is deleted and every live
/// connection closed (both protocols), this one after the reply.
pub async fn logout_all(shard: &Rc<Shard>, sess: &Session, req_id: u64) -> Next {
    let user = sess.user();
    if shard
        .blocking(move |s| s.delete_user_sessions(user, None))
        .await
        .is_err()
    {
        sess.error(req_id, STORAGE);
        return Next::Continue;
    }
    end_sessions(shard, sess, Revoked::LogoutAll);
    sess.reply.ok(req_id);
    Next::Close
}

/// Changes the password: the old one is checked like a login's (same
/// throttle, so a stolen session cannot guess it quickly), the new one
/// follows the registration rules. Every other session of the user ends
/// (tokens deleted with the password change, in one transaction; live
/// connections closed); this one stays and its token keeps working.
pub async fn change_password(
    shard: &Rc<Shard>,
    sess: &Session,
    req_id: u64,
    old_password: &str,
    new_password: &str,
) {
    let user = sess.user();
    match verify(shard, Account::Id(user), old_password, None).await {
        Ok(_) => {}
        Err(LoginError::BadCredentials) => {
            return sess
                .reply
                .error(req_id, ErrorCode::BadCredentials, "wrong password");
        }
        Err(LoginError::Denied(d)) => {
            return sess.reply.error(req_id, ErrorCode::RateLimited, &d.text());
        }
        Err(LoginError::Storage) => return sess.error(req_id, STORAGE),
        Err(LoginError::Disabled) => return sess.error(req_id, DISABLED),
    }
    let hash = match new_password_hash(shard, new_password).await {
        Ok(h) => h,
        Err(r) => return sess.reply.error(req_id, r.code, &r.text),
    };
    let keep = sess.token.as_deref().map(auth::token_hash);
    if shard
        .blocking(move |s| s.set_password(user, &hash, keep.as_deref()))
        .await
        .is_err()
    {
        return sess.error(req_id, STORAGE);
    }
    end_sessions(shard, sess, Revoked::PasswordChanged);
    sess.reply.ok(req_id);
}

/// Users whose name starts with `prefix`, after id `after`, a page at a
/// time. Online state is shown for friends only.
pub async fn search(
    shard: &Rc<Shard>,
    sess: &Session,
    req_id: u64,
    prefix: &str,
    after: UserId,
    limit: u32,
) {
    let limit = match limit {
        0 => 20,
        n => n.min(100),
    };
    let prefix = prefix.to_string();
    match shard
        .blocking(move |s| s.search_users(&prefix, after, limit + 1))
        .await
    {
        Ok(mut rows) => {
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            let next = if more {
                rows.last().map(|r| r.0).unwrap_or(0)
            } else {
                0
            };
            let friends = shard.friends_of_local(sess.user());
            let items: Vec<(UserId, &str, bool)> = rows
                .iter()
                .map(|(id, n)| {
                    (
                        *id,
                        n.as_str(),
                        friends.contains(id) && shard.is_online(*id),
                    )
                })
                .collect();
            sess.reply.user_list(req_id, &items, next);
        }
        Err(_) => sess.error(req_id, STORAGE),
    }
}

//! Operator commands on a live node: `/admin/...` on the metrics address
//! (and `ringchat admin`, a client of it). See docs/DEPLOY.md ("Admin") and
//! docs/SECURITY.md ("Admin surface").
//!
//! - `GET /admin/online`: users and connections on this node (all shards);
//! - `GET /admin/users/NAME`: id, online, live connections, disabled;
//! - `POST /admin/users/NAME/kick`: revokes the user's session tokens, then
//!   closes their live connections (a `Goodbye` `BadToken` first): on this
//!   node, and in a cluster on the other nodes holding some (the bus);
//! - `POST /admin/users/NAME/disable` / `enable`: the store's flag (login and
//!   resume refused with `AccountDisabled`, everywhere the store is shared);
//!   disabling also closes the live connections (`Goodbye` `AccountDisabled`);
//! - `POST /admin/groups/ID/broadcast` (body: the text): a system message
//!   (sender id 0, name "system") sequenced and stored in the group's
//!   conversation like any message; answered with its seq once durable.
//!
//! Every request needs `Authorization: Bearer TOKEN` (`--admin-token` or
//! `--admin-token-file`); without a configured token the endpoints answer
//! 403 "admin is disabled". The token is compared by SHA-256 digest with a
//! constant-time fold, and never logged.
//!
//! The HTTP side runs on the exporter's plain thread (store calls there are
//! blocking, as for `/readyz`; never on an executor). It reaches the shards
//! through one bounded flume channel per shard, drained by a task on each
//! shard ([`shard_loop`]): a send from a plain thread wakes the executor
//! through glommio's foreign-wake path (queue + eventfd, docs/WAKEUPS.md),
//! as the hashing pool's results do. The thread waits for each answer on a
//! one-shot channel, at most [`WAIT`].

use super::io::Frame;
use super::shard::{ConnId, Origin, OwnerOp, Shard, ShardMsg};
use crate::model::{GroupId, SYSTEM_NAME, SYSTEM_USER, Seq, UserId, group_conv, home_shard};
use crate::store::Store;
use crate::wire::fb;
use serde_json::json;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The admin token as configured; `Debug` does not show it.
#[derive(Clone)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(hidden)")
    }
}

/// The connection id of requests an operator makes (a broadcast's origin):
/// never a real connection's (those are `shard << 48 | n`).
pub const ADMIN_CONN: ConnId = u64::MAX;
/// Commands queued per shard before the HTTP side waits for room.
const CHANNEL: usize = 64;
/// How long the HTTP side waits for a shard's answer.
pub const WAIT: Duration = Duration::from_secs(10);

/// What a broadcast comes to: its seq, or the owner's refusal.
pub type Broadcasted = Result<(Seq, u64), (fb::ErrorCode, String)>;

/// A command for one shard.
pub enum Cmd {
    /// Users homed on the shard with a live session, and its sessions.
    Count {
        reply: flume::Sender<(usize, usize)>,
    },
    /// Live connections of `user` (asked of its home shard), and whether the
    /// user is online anywhere (another node included).
    Conns {
        user: UserId,
        reply: flume::Sender<(usize, bool)>,
    },
    /// Closes every live connection of `user` (on its home shard), each
    /// after a `Goodbye` with `code` and `text`; answers how many. In a
    /// cluster the user's other nodes are told to do the same (the count
    /// is this node's).
    Close {
        user: UserId,
        code: fb::ErrorCode,
        text: String,
        reply: flume::Sender<usize>,
    },
    /// A system message to `group`, answered once durable (or refused).
    Broadcast {
        group: GroupId,
        body: String,
        reply: flume::Sender<Broadcasted>,
    },
}

/// One channel per shard: the senders for the HTTP side, the receivers for
/// the shards.
pub fn channels(n: usize) -> (Vec<flume::Sender<Cmd>>, Vec<flume::Receiver<Cmd>>) {
    (0..n).map(|_| flume::bounded(CHANNEL)).unzip()
}

/// Runs on every shard: the operator's commands, one at a time. Awaits the
/// channel once per command (a Pending poll registers one waker, which the
/// next send wakes from the HTTP thread).
pub async fn shard_loop(shard: Rc<Shard>, rx: flume::Receiver<Cmd>) {
    while let Ok(cmd) = rx.recv_async().await {
        run(&shard, cmd);
    }
}

fn run(shard: &Rc<Shard>, cmd: Cmd) {
    match cmd {
        Cmd::Count { reply } => {
            let users = shard.users.borrow().len();
            let _ = reply.send((users, shard.conns.borrow().len()));
        }
        Cmd::Conns { user, reply } => {
            let n = shard.users.borrow().get(&user).map_or(0, |s| s.conns.len());
            let _ = reply.send((n, n > 0 || shard.is_online(user)));
        }
        Cmd::Close {
            user,
            code,
            text,
            reply,
        } => {
            // Other nodes holding sessions of the user close theirs too
            // (over the bus, to the user's home shard there).
            if let Some(c) = &shard.cluster {
                c.close_remote(user, code, &text);
            }
            let _ = reply.send(close_user(shard, user, code, &text, close_reason(code)));
        }
        Cmd::Broadcast { group, body, reply } => {
            let ticket = shard.admin_ticket();
            shard.admin_waiting.borrow_mut().insert(ticket, reply);
            let origin = Origin {
                node: None,
                shard: shard.id,
                conn: ADMIN_CONN,
                req_id: ticket,
                user: SYSTEM_USER,
                name: SYSTEM_NAME.into(),
            };
            let conv = group_conv(group);
            // Unique per broadcast: the owner's resend dedup keys on it.
            let op = OwnerOp::System {
                group,
                client_msg_id: rand::random(),
                body,
            };
            let local = match &shard.cluster {
                Some(c) => c.route_owner(conv, origin, op),
                None => Some((origin, op)),
            };
            if let Some((o, op)) = local {
                let to = crate::model::owner_shard(conv, shard.n);
                shard.send(to, ShardMsg::Owner(o, op));
            }
        }
    }
}

/// The `session ended` reason of a session an operator closed with `code`.
pub fn close_reason(code: fb::ErrorCode) -> &'static str {
    if code == fb::ErrorCode::AccountDisabled {
        "disabled"
    } else {
        "kicked"
    }
}

/// Closes every live connection of `user` homed here: a `Goodbye` (`code`,
/// `text`) is queued, then the connection closes once it is written.
/// Returns how many were closed.
pub fn close_user(
    shard: &Shard,
    user: UserId,
    code: fb::ErrorCode,
    text: &str,
    reason: &'static str,
) -> usize {
    let ids = shard
        .users
        .borrow()
        .get(&user)
        .map(|s| s.conns.clone())
        .unwrap_or_default();
    if ids.is_empty() {
        return 0;
    }
    let bye = shard.enc.borrow_mut().goodbye(code, text).to_vec();
    let conns = shard.conns.borrow();
    let mut n = 0;
    for id in ids {
        let Some(c) = conns.get(&id) else { continue };
        if c.out.is_closing() {
            continue;
        }
        c.ended_by.set(Some(reason));
        c.out.push(Frame::Own(bye.clone()));
        c.out.close();
        n += 1;
    }
    tracing::info!(user, closed = n, reason, "sessions closed by an operator");
    n
}

/// The answer to a broadcast arrived at its origin shard (the owner's
/// `SendOk` or error frame, addressed to [`ADMIN_CONN`]).
pub fn answered(shard: &Shard, frame: &[u8]) {
    let Ok(env) = crate::wire::decode(frame) else {
        return;
    };
    let Some(reply) = shard.admin_waiting.borrow_mut().remove(&env.req_id()) else {
        return;
    };
    let res = match (env.body_as_send_ok(), env.body_as_error_reply()) {
        (Some(ok), _) => Ok((ok.seq(), ok.timestamp_ms())),
        (None, Some(e)) => Err((e.code(), e.message().unwrap_or("").to_string())),
        (None, None) => Err((fb::ErrorCode::Internal, "unexpected answer".into())),
    };
    let _ = reply.send(res);
}

// ---------------------------------------------------------------- HTTP side

/// An admin endpoint's answer: status line, JSON body, extra header lines.
#[derive(Debug)]
pub struct Answer {
    pub status: &'static str,
    pub body: String,
    pub headers: &'static str,
}

fn answer(status: &'static str, v: serde_json::Value) -> Answer {
    Answer {
        status,
        body: format!("{v}\n"),
        headers: "",
    }
}

fn error(status: &'static str, text: &str) -> Answer {
    answer(status, json!({ "error": text }))
}

/// Actions counted in `ringchat_admin_actions_total{action}`; `denied` is a
/// request refused for its token.
pub const ACTIONS: [&str; 7] = [
    "online",
    "lookup",
    "kick",
    "disable",
    "enable",
    "broadcast",
    "denied",
];

/// The node's admin surface (held by the exporter thread).
pub struct Admin {
    /// SHA-256 of the configured token; `None`: admin is disabled.
    token: Option<[u8; 32]>,
    shards: Vec<flume::Sender<Cmd>>,
    store: Arc<dyn Store>,
    max_frame: usize,
    actions: [AtomicU64; ACTIONS.len()],
}

/// A request refused or failed: the answer to send instead.
type Step<T> = Result<T, Answer>;

impl Admin {
    pub fn new(
        token: Option<&str>,
        shards: Vec<flume::Sender<Cmd>>,
        store: Arc<dyn Store>,
        max_frame: usize,
    ) -> Admin {
        Admin {
            token: token.map(super::auth::admin_digest),
            shards,
            store,
            max_frame,
            actions: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn count(&self, action: &str) {
        if let Some(i) = ACTIONS.iter().position(|a| *a == action) {
            self.actions[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends `ringchat_admin_actions_total{action}` to a `/metrics` body.
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP ringchat_admin_actions_total operator actions on /admin (denied: a bad or missing token)\n\
             # TYPE ringchat_admin_actions_total counter\n",
        );
        for (a, n) in ACTIONS.iter().zip(&self.actions) {
            out.push_str(&format!(
                "ringchat_admin_actions_total{{action=\"{a}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
    }

    /// Answers one request for a path under `/admin`. `auth` is the
    /// `Authorization` header's value.
    pub fn http(&self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> Answer {
        let Some(digest) = &self.token else {
            return error(
                "403 Forbidden",
                "admin is disabled on this node: start it with --admin-token-file or --admin-token",
            );
        };
        let given = auth.and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
        if !given.is_some_and(|g| super::auth::admin_token_matches(g, digest)) {
            self.count("denied");
            let mut a = error(
                "401 Unauthorized",
                "missing or wrong admin token (send `Authorization: Bearer TOKEN`)",
            );
            a.headers = "WWW-Authenticate: Bearer realm=\"ringchat-admin\"\r\n";
            return a;
        }
        match self.route(method, path, body) {
            Ok(a) | Err(a) => a,
        }
    }

    fn route(&self, method: &str, path: &str, body: &[u8]) -> Step<Answer> {
        let path = path.split('?').next().unwrap_or(path);
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
        let want = |m: &'static str, allow: &'static str| -> Step<()> {
            if method == m {
                Ok(())
            } else {
                let mut a = error(
                    "405 Method Not Allowed",
                    &format!("{path} takes {m}, not {method}"),
                );
                a.headers = allow;
                Err(a)
            }
        };
        match parts.as_slice() {
            ["online"] => {
                want("GET", "Allow: GET\r\n")?;
                self.online()
            }
            ["users", name] => {
                want("GET", "Allow: GET\r\n")?;
                self.lookup(&decode_name(name)?)
            }
            ["users", name, action @ ("kick" | "disable" | "enable")] => {
                want("POST", "Allow: POST\r\n")?;
                let name = decode_name(name)?;
                match *action {
                    "kick" => self.kick(&name),
                    "disable" => self.set_disabled(&name, true),
                    _ => self.set_disabled(&name, false),
                }
            }
            ["groups", id, "broadcast"] => {
                want("POST", "Allow: POST\r\n")?;
                self.broadcast(id, body)
            }
            _ => Err(error(
                "404 Not Found",
                "no such admin endpoint; try GET /admin/online, GET /admin/users/NAME, \
                 POST /admin/users/NAME/{kick,disable,enable}, POST /admin/groups/ID/broadcast",
            )),
        }
    }

    /// Sends `cmd` to shard `to` and waits for its answer on `rx`.
    fn ask<T>(&self, to: usize, cmd: Cmd, rx: flume::Receiver<T>) -> Step<T> {
        let unavailable = || error("503 Service Unavailable", "the node is stopping");
        self.shards[to]
            .send_timeout(cmd, WAIT)
            .map_err(|_| unavailable())?;
        rx.recv_timeout(WAIT).map_err(|e| match e {
            flume::RecvTimeoutError::Timeout => error(
                "504 Gateway Timeout",
                &format!("shard {to} did not answer within {} s", WAIT.as_secs()),
            ),
            flume::RecvTimeoutError::Disconnected => unavailable(),
        })
    }

    fn user(&self, name: &str) -> Step<crate::store::UserRecord> {
        match self.store.user_by_name(name) {
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err(error("404 Not Found", &format!("no user named {name:?}"))),
            Err(e) => Err(error("503 Service Unavailable", &format!("store: {e}"))),
        }
    }

    fn online(&self) -> Step<Answer> {
        let mut users = 0;
        let mut conns = 0;
        let mut per = Vec::new();
        for s in 0..self.shards.len() {
            let (tx, rx) = flume::bounded(1);
            let (u, c) = self.ask(s, Cmd::Count { reply: tx }, rx)?;
            users += u;
            conns += c;
            per.push(json!({ "shard": s, "users": u, "connections": c }));
        }
        self.count("online");
        Ok(answer(
            "200 OK",
            json!({ "users": users, "connections": conns, "shards": per }),
        ))
    }

    fn lookup(&self, name: &str) -> Step<Answer> {
        let u = self.user(name)?;
        let (tx, rx) = flume::bounded(1);
        let home = home_shard(u.id, self.shards.len());
        let (conns, online) = self.ask(
            home,
            Cmd::Conns {
                user: u.id,
                reply: tx,
            },
            rx,
        )?;
        self.count("lookup");
        Ok(answer(
            "200 OK",
            json!({
                "user": u.username,
                "id": u.id,
                "online": online,
                "connections": conns,
                "disabled": u.disabled,
            }),
        ))
    }

    fn close(&self, user: UserId, code: fb::ErrorCode, text: &str) -> Step<usize> {
        let (tx, rx) = flume::bounded(1);
        let cmd = Cmd::Close {
            user,
            code,
            text: text.to_string(),
            reply: tx,
        };
        self.ask(home_shard(user, self.shards.len()), cmd, rx)
    }

    fn kick(&self, name: &str) -> Step<Answer> {
        let u = self.user(name)?;
        // Tokens first: a kicked client must not resume behind our back.
        let revoked = self
            .store
            .delete_sessions_of(u.id)
            .map_err(|e| error("503 Service Unavailable", &format!("store: {e}")))?;
        let closed = self.close(
            u.id,
            fb::ErrorCode::BadToken,
            "an operator ended this account's sessions; log in again",
        )?;
        self.count("kick");
        tracing::info!(user = u.id, name = %u.username, closed, revoked, "admin: kicked");
        Ok(answer(
            "200 OK",
            json!({ "user": u.username, "id": u.id, "closed": closed, "tokens_revoked": revoked }),
        ))
    }

    fn set_disabled(&self, name: &str, disabled: bool) -> Step<Answer> {
        let u = self.user(name)?;
        self.store
            .set_disabled(u.id, disabled)
            .map_err(|e| error("503 Service Unavailable", &format!("store: {e}")))?;
        let closed = if disabled {
            self.close(
                u.id,
                fb::ErrorCode::AccountDisabled,
                "an operator disabled this account",
            )?
        } else {
            0
        };
        let action = if disabled { "disable" } else { "enable" };
        self.count(action);
        tracing::info!(user = u.id, name = %u.username, closed, "admin: {action}d");
        Ok(answer(
            "200 OK",
            json!({ "user": u.username, "id": u.id, "disabled": disabled, "closed": closed }),
        ))
    }

    fn broadcast(&self, id: &str, body: &[u8]) -> Step<Answer> {
        let group: GroupId = id
            .parse()
            .ok()
            .filter(|g| *g != 0 && group_conv(*g) == *g)
            .ok_or_else(|| error("400 Bad Request", &format!("{id:?} is not a group id")))?;
        let text = std::str::from_utf8(body)
            .map_err(|_| error("400 Bad Request", "the message must be UTF-8 text"))?;
        crate::core::validate::body(text, self.max_frame)
            .map_err(|r| error("400 Bad Request", r.1))?;
        let (tx, rx) = flume::bounded(1);
        let to = crate::model::owner_shard(group_conv(group), self.shards.len());
        let cmd = Cmd::Broadcast {
            group,
            body: text.to_string(),
            reply: tx,
        };
        match self.ask(to, cmd, rx)? {
            Ok((seq, ts)) => {
                self.count("broadcast");
                tracing::info!(group, seq, "admin: broadcast");
                Ok(answer(
                    "200 OK",
                    json!({ "group": group, "conversation": group_conv(group), "seq": seq, "timestamp_ms": ts }),
                ))
            }
            Err((fb::ErrorCode::NoSuchGroup, t)) => Err(error("404 Not Found", &t)),
            Err((code, t)) => Err(error(
                "503 Service Unavailable",
                &format!("{}: {t}", crate::wire::error_name(code)),
            )),
        }
    }
}

/// A user name from a path segment: `%XX` escapes decoded, UTF-8.
fn decode_name(seg: &str) -> Step<String> {
    let bad = || error("400 Bad Request", "bad percent-encoding in the user name");
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
            let s = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(s, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).map_err(|_| bad())?;
    if name.is_empty() {
        return Err(error("400 Bad Request", "empty user name"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_decoded_and_bad_escapes_refused() {
        assert_eq!(decode_name("al%20ice").unwrap(), "al ice");
        assert_eq!(decode_name("%C3%BC").unwrap(), "ü");
        assert_eq!(decode_name("bob").unwrap(), "bob");
        for bad in ["%", "%4", "%zz", "%FF", ""] {
            assert_eq!(
                decode_name(bad).unwrap_err().status,
                "400 Bad Request",
                "{bad}"
            );
        }
    }
}

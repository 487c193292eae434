//! Operator commands (`/admin/...` on the metrics address, `ringchat admin`)
//! against the real server over real TCP: the token, online users and
//! lookup, kick, disable/enable (native and legacy logins), broadcast, the
//! CLI. Servers run with 2 shards (tests/common).

mod common;

use common::*;
use ringchat::client::Event;
use ringchat::legacy::codec::{Split, Splitter};
use ringchat::wire::fb::ErrorCode;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKEN: &str = "admin-test-token-0123456789abcdef";

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A running node with metrics (and admin, when `token`) on `metrics`.
struct Node {
    s: TestServer,
    metrics: SocketAddr,
    token_file: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token_file);
    }
}

fn start(token: bool, extra: &[&str]) -> Node {
    let metrics = free_addr();
    let token_file = std::env::temp_dir().join(format!(
        "ringchat-admin-token-{}-{}",
        std::process::id(),
        metrics.port()
    ));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let m = metrics.to_string();
    let f = token_file.to_str().unwrap().to_string();
    let mut args = vec!["--metrics", m.as_str()];
    if token {
        args.extend(["--admin-token-file", f.as_str()]);
    }
    args.extend_from_slice(extra);
    Node {
        s: TestServer::start_with(&args),
        metrics,
        token_file,
    }
}

/// One HTTP request; the status and the JSON body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let v = serde_json::from_str(body.trim()).unwrap_or(Value::String(body.to_string()));
    (status, v)
}

impl Node {
    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        http(
            self.metrics,
            method,
            path,
            Some(&format!("Bearer {TOKEN}")),
            body,
        )
    }

    fn ok(&self, method: &str, path: &str, body: &str) -> Value {
        let (st, v) = self.admin(method, path, body);
        assert_eq!(st, 200, "{method} {path}: {v}");
        v
    }

    /// `ringchat_admin_actions_total{action=ACTION}`.
    fn actions(&self, action: &str) -> u64 {
        let series = format!("ringchat_admin_actions_total{{action=\"{action}\"}}");
        common::metric(self.metrics, &series)
    }

    /// Waits until the node's lookup of `name` shows `conns` connections.
    fn wait_conns(&self, name: &str, conns: u64) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let v = self.ok("GET", &format!("/admin/users/{name}"), "");
            if v["connections"] == conns {
                return v;
            }
            assert!(Instant::now() < deadline, "{name} never had {conns}: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The client saw the server's Goodbye with `code`, then the close.
fn said_goodbye(c: &ringchat::client::Client, code: ErrorCode) -> String {
    let e = wait(c, "Goodbye", |e| matches!(e, Event::Goodbye { .. }));
    let Event::Goodbye { code: got, message } = e else {
        unreachable!()
    };
    assert_eq!(got, code, "{message}");
    wait_closed(c);
    message
}

#[test]
fn without_a_token_admin_is_disabled() {
    let n = start(false, &[]);
    for auth in [None, Some(format!("Bearer {TOKEN}"))] {
        let (st, v) = http(n.metrics, "GET", "/admin/online", auth.as_deref(), "");
        assert_eq!(st, 403, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("admin is disabled"),
            "{v}"
        );
    }
    let (st, _) = http(n.metrics, "POST", "/admin/users/x/kick", None, "");
    assert_eq!(st, 403);
    // The rest of the metrics address is unchanged.
    let (st, _) = http(n.metrics, "GET", "/readyz", None, "");
    assert_eq!(st, 200);
}

#[test]
fn a_bad_token_is_refused_and_bad_requests_are_named() {
    let n = start(true, &[]);
    let u = n.s.user(&uname("adm_tok"));
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token-wrong"),
        Some(&format!("Basic {TOKEN}") as &str),
        Some(&format!("Bearer {TOKEN}x") as &str),
    ] {
        let (st, v) = http(
            n.metrics,
            "POST",
            &format!("/admin/users/{}/kick", u.name),
            auth,
            "",
        );
        assert_eq!(st, 401, "{auth:?}: {v}");
        assert!(v["error"].as_str().unwrap().contains("token"), "{v}");
    }
    assert_eq!(n.actions("denied"), 4);
    assert_eq!(n.actions("kick"), 0);
    // Nobody was kicked.
    u.ping().unwrap();
    // Wrong method, unknown endpoint, bad input: clear errors.
    let (st, v) = n.admin("GET", &format!("/admin/users/{}/kick", u.name), "");
    assert_eq!(st, 405, "{v}");
    let (st, v) = n.admin("POST", "/admin/online", "");
    assert_eq!(st, 405, "{v}");
    let (st, v) = n.admin("GET", "/admin/nothing", "");
    assert_eq!(st, 404, "{v}");
    let (st, v) = n.admin("GET", "/admin/users/nobody-at-all", "");
    assert_eq!(st, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nobody-at-all"));
    let (st, v) = n.admin("GET", "/admin/users/bad%zz", "");
    assert_eq!(st, 400, "{v}");
    for g in ["abc", "0", "18446744073709551615"] {
        let (st, v) = n.admin("POST", &format!("/admin/groups/{g}/broadcast"), "hi");
        assert_eq!(st, 400, "{g}: {v}");
    }
    u.ping().unwrap();
}

#[test]
fn online_count_and_lookup_match_the_logged_in_clients() {
    let n = start(true, &[]);
    assert_eq!(n.ok("GET", "/admin/online", "")["users"], 0);
    // Users until both shards are home to one (ids hash to shards).
    let mut users = vec![];
    let mut shards = std::collections::BTreeSet::new();
    while shards.len() < 2 || users.len() < 2 {
        let u = n.s.user(&uname("adm_on"));
        shards.insert(ringchat::model::home_shard(u.id, 2));
        users.push(u);
        assert!(users.len() < 20);
    }
    let a = &users[0];
    let a2 = n.s.device(a);
    let v = n.ok("GET", "/admin/online", "");
    assert_eq!(v["users"], users.len() as u64, "{v}");
    assert_eq!(v["connections"], users.len() as u64 + 1, "{v}");
    let per = v["shards"].as_array().unwrap();
    assert_eq!(per.len(), 2);
    assert!(per.iter().all(|s| s["users"].as_u64().unwrap() > 0), "{v}");

    let v = n.ok("GET", &format!("/admin/users/{}", a.name), "");
    assert_eq!(
        v,
        json!({"user": a.name, "id": a.id, "online": true, "connections": 2, "disabled": false})
    );
    a2.close();
    n.wait_conns(&a.name, 1);
    let last = users.pop().unwrap();
    let name = last.name.clone();
    drop(last);
    let v = n.wait_conns(&name, 0);
    assert_eq!(v["online"], false, "{v}");
    let v = n.ok("GET", "/admin/online", "");
    assert_eq!(v["users"], users.len() as u64, "{v}");
    assert!(n.actions("online") >= 3);
    assert!(n.actions("lookup") >= 2);
}

#[test]
fn kick_closes_every_session_of_the_user_and_they_cannot_resume() {
    let n = start(true, &[]);
    let a = n.s.user(&uname("adm_kick"));
    let a2 = n.s.device(&a);
    let b = n.s.user(&uname("adm_stay"));
    let v = n.ok("POST", &format!("/admin/users/{}/kick", a.name), "");
    assert_eq!(v["closed"], 2, "{v}");
    assert_eq!(v["tokens_revoked"], 2, "{v}");
    assert_eq!(v["id"], a.id);
    let text = said_goodbye(&a.c, ErrorCode::BadToken);
    assert!(text.contains("operator"), "{text}");
    said_goodbye(&a2, ErrorCode::BadToken);
    // The tokens were revoked: no silent resume.
    let c = n.s.client();
    assert_code(c.resume(&a.session.token), ErrorCode::BadToken);
    // Someone else is untouched.
    b.ping().unwrap();
    assert_eq!(
        n.ok("GET", &format!("/admin/users/{}", b.name), "")["connections"],
        1
    );
    // A kick is not a ban: the password still works.
    let c = n.s.client();
    login_synced(&c, &a.name);
    n.wait_conns(&a.name, 1);
    assert_eq!(n.actions("kick"), 1);
    // The token is never logged (the server logs each action).
    assert!(n.s.stderr().contains("admin: kicked"), "{}", n.s.stderr());
    assert!(!n.s.stderr().contains(TOKEN));
    // Kicking someone with no session closes nothing and is no error.
    let v = n.ok("POST", &format!("/admin/users/{}/kick", a.name), "");
    assert_eq!(v["closed"], 1);
    let v = n.ok("POST", &format!("/admin/users/{}/kick", a.name), "");
    assert_eq!(v["closed"], 0, "{v}");
}

#[test]
fn disable_closes_and_refuses_the_account_until_enabled() {
    let n = start(true, &[]);
    let a = n.s.user(&uname("adm_dis"));
    let v = n.ok("POST", &format!("/admin/users/{}/disable", a.name), "");
    assert_eq!(
        (v["disabled"].clone(), v["closed"].clone()),
        (json!(true), json!(1)),
        "{v}"
    );
    said_goodbye(&a.c, ErrorCode::AccountDisabled);
    let c = n.s.client();
    assert_code(c.login(&a.name, PASSWORD), ErrorCode::AccountDisabled);
    assert_code(c.resume(&a.session.token), ErrorCode::AccountDisabled);
    // A wrong password still looks like any wrong password.
    assert_code(
        c.login(&a.name, "not the password"),
        ErrorCode::BadCredentials,
    );
    assert_eq!(
        n.ok("GET", &format!("/admin/users/{}", a.name), "")["disabled"],
        true
    );
    let v = n.ok("POST", &format!("/admin/users/{}/enable", a.name), "");
    assert_eq!(v["disabled"], false, "{v}");
    // Enabled again: the password works, and so does the old token (a
    // disable keeps tokens; a kick revokes them).
    login_synced(&c, &a.name);
    let d = n.s.client();
    d.resume(&a.session.token).unwrap();
    assert_eq!(n.actions("disable"), 1);
    assert_eq!(n.actions("enable"), 1);
}

/// The old JSON protocol: one object plus a NUL per request.
struct Legacy {
    s: TcpStream,
    sp: Splitter,
}

impl Legacy {
    fn connect(addr: SocketAddr) -> Legacy {
        let s = TcpStream::connect(addr).unwrap();
        Legacy {
            s,
            sp: Splitter::new(1 << 20),
        }
    }

    fn send(&mut self, v: Value) {
        let mut b = serde_json::to_vec(&v).unwrap();
        b.push(0);
        self.s.write_all(&b).unwrap();
    }

    /// The next object, or `None` once the server closed the connection.
    fn next(&mut self) -> Option<Value> {
        self.s.set_read_timeout(Some(T)).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.sp.next_object() {
                Split::Object(o) => return Some(Value::Object(o)),
                Split::Garbage(g) => panic!("server sent garbage: {g}"),
                Split::NeedMore => {}
            }
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.sp.push(&buf[..n]),
                Err(e) => panic!("no object within T: {e}"),
            }
        }
    }
}

#[test]
fn legacy_clients_are_closed_refused_and_see_broadcasts() {
    let n = start(true, &["--legacy-listen", "127.0.0.1:0"]);
    let legacy = n.s.legacy.unwrap();
    let owner = n.s.user(&uname("adm_lgo"));
    let a = n.s.user(&uname("adm_lg"));
    let (g, _) = owner.create_group_conv(&uname("adm_lgg")).unwrap();
    a.join_group(g).unwrap();
    a.c.close();
    let mut l = Legacy::connect(legacy);
    l.send(json!({"msgid": 1, "id": a.id, "password": PASSWORD}));
    let r = l.next().unwrap();
    assert_eq!(
        (r["msgid"].clone(), r["errno"].clone()),
        (json!(2), json!(0)),
        "{r}"
    );
    n.wait_conns(&a.name, 1);
    // A broadcast reaches an old client as a group chat from id 0, "system".
    let v = n.ok(
        "POST",
        &format!("/admin/groups/{g}/broadcast"),
        "to old clients",
    );
    assert!(v["seq"].as_u64().unwrap() > 0);
    let m = l.next().unwrap();
    assert_eq!(m["msgid"], 9, "{m}");
    assert_eq!(
        (
            m["from"].clone(),
            m["sendname"].clone(),
            m["groupid"].clone(),
            m["msg"].clone()
        ),
        (json!(0), json!("system"), json!(g), json!("to old clients")),
        "{m}"
    );
    // Disabled: one closing object in the old shape, then the close.
    n.ok("POST", &format!("/admin/users/{}/disable", a.name), "");
    let bye = l.next().unwrap();
    assert_eq!(
        (bye["msgid"].clone(), bye["errno"].clone()),
        (json!(0), json!(1)),
        "{bye}"
    );
    assert!(
        bye["errmsg"].as_str().unwrap().contains("disabled"),
        "{bye}"
    );
    assert!(l.next().is_none(), "the connection stays open");
    // The old login refuses it in its old shape.
    let mut l = Legacy::connect(legacy);
    l.send(json!({"msgid": 1, "id": a.id, "password": PASSWORD}));
    let r = l.next().unwrap();
    assert_eq!(
        (r["msgid"].clone(), r["errno"].clone()),
        (json!(2), json!(1)),
        "{r}"
    );
    assert!(r["errmsg"].as_str().unwrap().contains("disabled"), "{r}");
    n.ok("POST", &format!("/admin/users/{}/enable", a.name), "");
    l.send(json!({"msgid": 1, "id": a.id, "password": PASSWORD}));
    let r = l.next().unwrap();
    assert_eq!(r["errno"], 0, "{r}");
}

#[test]
fn a_broadcast_reaches_members_live_and_at_next_login_once_and_in_order() {
    let n = start(true, &[]);
    let a = n.s.user(&uname("adm_bo"));
    let b = n.s.user(&uname("adm_bb"));
    let c = n.s.user(&uname("adm_bc"));
    let (g, conv) = a.create_group_conv(&uname("adm_bg")).unwrap();
    b.join_group(g).unwrap();
    c.join_group(g).unwrap();
    // c goes offline.
    let c_name = c.name.clone();
    drop(c);
    n.wait_conns(&c_name, 0);
    let m1 = a.send_group(g, "before").unwrap();
    let v = n.ok(
        "POST",
        &format!("/admin/groups/{g}/broadcast"),
        "maintenance at noon ✓",
    );
    let seq = v["seq"].as_u64().unwrap();
    assert_eq!(seq, m1.seq + 1, "{v}");
    assert_eq!(v["conversation"], conv);
    let m2 = a.send_group(g, "after").unwrap();
    assert_eq!(m2.seq, seq + 1);
    // Live, in order, exactly once.
    let got: Vec<_> = (0..3).map(|_| wait_msg(&b.c, "group message")).collect();
    let seen: Vec<(u64, u64, &str, &str)> = got
        .iter()
        .map(|m| (m.seq, m.sender, m.sender_name.as_str(), m.body.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (m1.seq, a.id, a.name.as_str(), "before"),
            (seq, 0, "system", "maintenance at noon ✓"),
            (m2.seq, a.id, a.name.as_str(), "after"),
        ]
    );
    assert_quiet(&b.c, "a repeat", |e| matches!(e, Event::Message(_)));
    // The owner (a sender of the others) gets the broadcast too.
    let am = wait_msg(&a.c, "the broadcast");
    assert_eq!((am.seq, am.sender), (seq, 0));
    // Offline: on the next login, in order, once.
    let c = n.s.client();
    c.login(&c_name, PASSWORD).unwrap();
    let mut caught = vec![];
    loop {
        match c.next_event(T) {
            Some(Event::Message(m)) => caught.push((m.seq, m.sender, m.sender_name, m.body)),
            Some(Event::SyncDone { .. }) => break,
            Some(_) => {}
            None => panic!("no SyncDone"),
        }
    }
    assert_eq!(
        caught,
        vec![
            (m1.seq, a.id, a.name.clone(), "before".to_string()),
            (
                seq,
                0,
                "system".to_string(),
                "maintenance at noon ✓".to_string()
            ),
            (m2.seq, a.id, a.name.clone(), "after".to_string()),
        ]
    );
    assert_quiet(&c, "a repeat", |e| matches!(e, Event::Message(_)));
    // History shows it too.
    let h = b.history(conv, 0, 10).unwrap();
    assert!(
        h.iter()
            .any(|m| m.seq == seq && m.sender == 0 && m.sender_name == "system")
    );
    // Bad input and missing groups.
    let (st, v) = n.admin("POST", &format!("/admin/groups/{g}/broadcast"), "");
    assert_eq!(st, 400, "{v}");
    let (st, v) = n.admin(
        "POST",
        &format!("/admin/groups/{}/broadcast", g + 1000),
        "x",
    );
    assert_eq!(st, 404, "{v}");
    assert_eq!(n.actions("broadcast"), 1);
}

fn cli(n: &Node, args: &[&str]) -> std::process::Output {
    let m = n.metrics.to_string();
    std::process::Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["admin", "--addr", &m])
        .args(args)
        .env_remove("RINGCHAT_ADMIN_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn the_cli_reports_online_users_and_kicks() {
    let n = start(true, &[]);
    let a = n.s.user(&uname("adm_cli"));
    let _a2 = n.s.device(&a);
    let f = n.token_file.to_str().unwrap().to_string();
    let out = cli(&n, &["--token-file", &f, "online"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("1 users online, 2 connections"), "{text}");
    let out = cli(&n, &["--token", TOKEN, "user", &a.name]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("online, 2 connection(s)") && text.contains("enabled"),
        "{text}"
    );
    let out = cli(&n, &["--token-file", &f, "kick", &a.name]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("2 connection(s) closed, 2 session token(s) revoked"),
        "{text}"
    );
    said_goodbye(&a.c, ErrorCode::BadToken);
    // Errors: a non-zero status and the server's words.
    let out = cli(&n, &["--token", "wrong-token-wrong-token", "online"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let out = cli(&n, &["--token-file", &f, "user", "nobody-here"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nobody-here"),
        "{out:?}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["admin", "--addr", &n.metrics.to_string(), "online"])
        .env("RINGCHAT_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn config_print_never_shows_the_token_and_short_tokens_are_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["config", "print", "--admin-token", TOKEN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains("# admin-token = (set; not shown)"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["config", "print", "--admin-token", "short"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 16 bytes"),
        "{out:?}"
    );
}

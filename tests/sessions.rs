//! Sessions that end (logout closes every connection of its token, logout
//! everywhere, password change, token expiry) and password hashes that are
//! never weak or shared (provision's fast hashes, upgrade at login). Each
//! over TCP against the real server (security issue items 5 and 6;
//! docs/SECURITY.md "Sessions and passwords").

mod common;

use common::*;
use ringchat::client::{Client, ErrorCode, Event};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits for the Goodbye that ends a revoked session, then the close.
#[track_caller]
fn wait_revoked(c: &Client, what: &str) -> String {
    let e = wait(c, what, |e| {
        matches!(
            e,
            Event::Goodbye {
                code: ErrorCode::BadToken,
                ..
            }
        )
    });
    wait_closed(c);
    match e {
        Event::Goodbye { message, .. } => message,
        _ => unreachable!(),
    }
}

/// A fresh connection that resumes with `token` (waiting for its catch-up).
fn resumed(s: &TestServer, token: &str) -> Client {
    let c = s.client();
    c.resume(token)
        .unwrap_or_else(|e| panic!("resume: {e}; stderr:\n{}", s.stderr()));
    wait(&c, "SyncDone after resume", |e| {
        matches!(e, Event::SyncDone { .. })
    });
    c
}

#[test]
fn logout_closes_every_live_connection_of_its_token() {
    let s = TestServer::start();
    let u = s.user(&uname("lo"));
    // Two more connections with the same token (a device that reconnected
    // while its old connection lingered), one with a token of its own.
    let same1 = resumed(&s, &u.session.token);
    let same2 = resumed(&s, &u.session.token);
    let other = s.device(&u);
    same1.logout().unwrap();
    wait_closed(&same1);
    let why = wait_revoked(&u.c, "Goodbye on the first connection of the token");
    assert!(why.contains("logged out"), "{why}");
    wait_revoked(&same2, "Goodbye on the other resumed connection");
    // The other token's session is untouched.
    other.ping().unwrap();
    assert_quiet(&other, "Goodbye on another token's session", |e| {
        matches!(e, Event::Goodbye { .. } | Event::Closed)
    });
    assert_code(s.client().resume(&u.session.token), ErrorCode::BadToken);
}

#[test]
fn logout_all_ends_every_session_and_token() {
    let s = TestServer::start();
    let u = s.user(&uname("la"));
    let d2 = s.client();
    let t2 = login_synced(&d2, &u.name).token;
    let d3 = s.device(&u);
    d3.logout_all().unwrap();
    // The caller's connection closes after the reply, without a Goodbye.
    wait_closed(&d3);
    let why = wait_revoked(&u.c, "Goodbye on the first device");
    assert!(why.contains("everywhere"), "{why}");
    wait_revoked(&d2, "Goodbye on the second device");
    for t in [&u.session.token, &t2] {
        assert_code(s.client().resume(t), ErrorCode::BadToken);
    }
    // The password still works: a fresh login starts a new session.
    let again = s.client();
    login_synced(&again, &u.name);
    again.list_friends().unwrap();
}

#[test]
fn logout_all_also_ends_legacy_sessions() {
    let (s, legacy) = TestServer::start_legacy();
    let u = s.user(&uname("ll"));
    let mut old = std::net::TcpStream::connect(legacy).unwrap();
    old.set_read_timeout(Some(T)).unwrap();
    use std::io::{Read, Write};
    write!(
        old,
        "{}",
        serde_json::json!({"msgid": 1, "id": u.id, "password": PASSWORD})
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = old.read(&mut buf).unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(reply.contains("\"errno\":0"), "legacy login: {reply}");
    u.logout_all().unwrap();
    // The old client sees its connection end (after whatever it is told).
    let deadline = Instant::now() + T;
    loop {
        match old.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("legacy connection still open after logout-all: {e}"),
        }
        assert!(Instant::now() < deadline, "legacy connection not closed");
    }
}

#[test]
fn change_password_ends_the_other_sessions_and_keeps_the_callers() {
    let s = TestServer::start();
    let u = s.user(&uname("cp"));
    let d2 = s.client();
    let t2 = login_synced(&d2, &u.name).token;
    let new = "a brand new password";
    // Refusals change nothing.
    assert_code(
        u.change_password("not the password", new),
        ErrorCode::BadCredentials,
    );
    assert_code(
        u.change_password(PASSWORD, "short"),
        ErrorCode::InvalidPassword,
    );
    assert_code(
        u.change_password(PASSWORD, &"p".repeat(129)),
        ErrorCode::InvalidPassword,
    );
    d2.ping().unwrap();
    u.change_password(PASSWORD, new).unwrap();
    let why = wait_revoked(&d2, "Goodbye on the other device");
    assert!(why.contains("password"), "{why}");
    assert_code(s.client().resume(&t2), ErrorCode::BadToken);
    // The caller's session and token stay.
    u.list_friends().unwrap();
    assert_quiet(&u.c, "Goodbye on the caller", |e| {
        matches!(e, Event::Goodbye { .. } | Event::Closed)
    });
    let r = resumed(&s, &u.session.token);
    r.list_friends().unwrap();
    // Only the new password logs in.
    assert_code(
        s.client().login(&u.name, PASSWORD),
        ErrorCode::BadCredentials,
    );
    s.client().login(&u.name, new).unwrap();
}

#[test]
fn change_password_follows_min_password_len() {
    let s = TestServer::start_with(&["--min-password-len", "12"]);
    let u = s.user(&uname("cpm"));
    let r = u.change_password(PASSWORD, "elevenchars");
    assert_code(r, ErrorCode::InvalidPassword);
    u.change_password(PASSWORD, "twelve chars").unwrap();
}

#[test]
fn an_unused_token_expires_and_each_use_extends_it() {
    let s = TestServer::start_with(&["--session-ttl-secs", "2"]);
    let u = s.user(&uname("ttl"));
    let token = u.session.token.clone();
    drop(u);
    // Used every second for longer than the TTL: still good (sliding).
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        std::thread::sleep(Duration::from_millis(900));
        let c = resumed(&s, &token);
        c.close();
    }
    // Then left alone for longer than the TTL: refused, and gone for good.
    std::thread::sleep(Duration::from_millis(2600));
    assert_code(s.client().resume(&token), ErrorCode::BadToken);
    assert_code(s.client().resume(&token), ErrorCode::BadToken);
}

#[test]
fn tokens_last_by_default() {
    // The default TTL is 30 days: a token a few seconds old resumes, which
    // it would not if the default were "expire quickly".
    let s = TestServer::start();
    let u = s.user(&uname("ttld"));
    std::thread::sleep(Duration::from_millis(2100));
    resumed(&s, &u.session.token).list_friends().unwrap();
}

// ---------------------------------------------------------------- hashes

fn provision(dir: &Path, prefix: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .arg("provision")
        .arg("--data-dir")
        .arg(dir)
        .args(["--users", "2", "--prefix", prefix, "--password", PASSWORD])
        .args(extra)
        .output()
        .expect("run ringchat provision")
}

fn stored_hash(dir: &Path, name: &str) -> String {
    let st = ringchat::store::open("", dir).expect("open the store");
    st.user_by_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no user {name}"))
        .password_hash
}

/// The server's parameters (argon2id, 19 MiB, t=2, p=1).
const SERVER_PARAMS: &str = "$argon2id$v=19$m=19456,t=2,p=1$";

#[test]
fn provision_fast_hash_needs_the_test_only_flag_and_salts_per_user() {
    let dir = std::env::temp_dir().join(format!("rc-sess-prov-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = provision(&dir, "pf", &["--fast-hash"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "fast hash accepted: {err}");
    assert!(err.contains("--insecure-fast-hash-for-tests"), "{err}");
    // Nothing was written.
    if dir.join("ringchat.db").exists() {
        assert!(
            ringchat::store::open("", &dir)
                .unwrap()
                .user_by_name("pf0")
                .unwrap()
                .is_none()
        );
    }
    let out = provision(
        &dir,
        "pf",
        &["--fast-hash", "--insecure-fast-hash-for-tests"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (stored_hash(&dir, "pf0"), stored_hash(&dir, "pf1"));
    assert_ne!(a, b, "two users with one password share a hash");
    assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
    // Full-strength provisioning salts per user too.
    let out = provision(&dir, "ps", &[]);
    assert!(out.status.success());
    let (a, b) = (stored_hash(&dir, "ps0"), stored_hash(&dir, "ps1"));
    assert_ne!(a, b);
    assert!(a.starts_with(SERVER_PARAMS), "{a}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls the stored hash of `name` until `pred` holds (the upgrade runs
/// after the login reply, in the background).
fn wait_hash(dir: &Path, name: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + T;
    loop {
        let h = stored_hash(dir, name);
        if pred(&h) || Instant::now() > deadline {
            return h;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_weak_hash_is_upgraded_at_the_next_login() {
    let mut s = TestServer::start();
    s.stop();
    let out = provision(
        &s.data_dir,
        "up",
        &["--fast-hash", "--insecure-fast-hash-for-tests"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let weak = stored_hash(&s.data_dir, "up0");
    assert!(weak.contains("m=64,t=1"), "{weak}");
    s.start_again();
    // A failed login changes nothing.
    assert_code(
        s.client().login("up0", "wrong password"),
        ErrorCode::BadCredentials,
    );
    login_synced(&s.client(), "up0");
    let strong = wait_hash(&s.data_dir, "up0", |h| h != weak);
    assert!(strong.starts_with(SERVER_PARAMS), "not upgraded: {strong}");
    assert!(ringchat::server::auth::verify_password(PASSWORD, &strong));
    // The upgraded hash logs in, and is kept as it is.
    login_synced(&s.client(), "up0");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stored_hash(&s.data_dir, "up0"), strong);
    // The user that did not log in keeps the old hash until they do.
    assert!(stored_hash(&s.data_dir, "up1").contains("m=64,t=1"));
}

#[test]
fn a_server_for_benchmarks_keeps_fast_hashes_when_told_to() {
    let mut s = TestServer::start_with(&["--insecure-fast-hash-for-tests"]);
    s.stop();
    let out = provision(
        &s.data_dir,
        "kp",
        &["--fast-hash", "--insecure-fast-hash-for-tests"],
    );
    assert!(out.status.success());
    let weak = stored_hash(&s.data_dir, "kp0");
    s.start_again();
    login_synced(&s.client(), "kp0");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(stored_hash(&s.data_dir, "kp0"), weak);
}

//! Limits that protect everyone else from one user, over real TCP: each is
//! configurable, answered with a clear error code, counted in
//! `ringchat_limited_total{kind}`, and lifts when the cause goes away.

mod common;

use common::*;
use ringchat::wire::fb::{Body, ErrorCode};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

fn metrics_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `ringchat_limited_total{kind="KIND"}` from the node's /metrics.
fn limited(metrics: SocketAddr, kind: &str) -> u64 {
    common::metric(
        metrics,
        &format!("ringchat_limited_total{{kind=\"{kind}\"}}"),
    )
}

fn start(args: &[&str]) -> (TestServer, SocketAddr) {
    let m = metrics_addr();
    let ms = m.to_string();
    let mut all = vec!["--metrics", ms.as_str()];
    all.extend_from_slice(args);
    (TestServer::start_with(&all), m)
}

#[test]
fn sends_past_the_rate_are_refused_then_allowed_again() {
    let (s, m) = start(&["--max-send-rate", "2", "--max-send-burst", "5"]);
    let a = s.user(&uname("rl_a"));
    let b = s.user(&uname("rl_b"));
    befriend(&a, &b);
    for i in 0..5 {
        a.send_direct(b.id, &format!("burst {i}")).unwrap();
    }
    let r = a.send_direct(b.id, "one too many");
    assert_code(r, ErrorCode::RateLimited);
    // Another user is not affected by a's bucket.
    b.send_direct(a.id, "b is fine").unwrap();
    assert_eq!(limited(m, "send"), 1);
    // At 2/s one token is back within 500 ms.
    std::thread::sleep(Duration::from_millis(600));
    a.send_direct(b.id, "after waiting").unwrap();
    // Nothing refused was stored or delivered: b sees exactly the 6 accepted.
    let mut bodies = Vec::new();
    while bodies.len() < 6 {
        bodies.push(wait_msg(&b.c, "accepted messages").body);
    }
    assert!(!bodies.iter().any(|x| x == "one too many"), "{bodies:?}");
    assert_eq!(bodies.last().map(String::as_str), Some("after waiting"));
}

#[test]
fn friend_requests_per_hour_are_capped() {
    let (s, m) = start(&["--max-friend-requests-per-hour", "2"]);
    let a = s.user(&uname("fr_a"));
    let targets: Vec<_> = (0..3)
        .map(|i| s.user(&uname(&format!("fr_t{i}"))))
        .collect();
    a.friend_request(targets[0].id, "hi").unwrap();
    a.friend_request(targets[1].id, "hi").unwrap();
    assert_code(
        a.friend_request(targets[2].id, "hi"),
        ErrorCode::RateLimited,
    );
    assert_eq!(limited(m, "friend_request"), 1);
    // Answering requests is not limited.
    targets[0].friend_respond(a.id, true).unwrap();
}

#[test]
fn sessions_per_user_are_capped_and_freed_by_a_logout() {
    let (s, m) = start(&["--max-sessions-per-user", "2"]);
    let name = uname("ss");
    let u = s.user(&name);
    let second = s.device(&u);
    let third = s.client();
    assert_code(third.login(&name, PASSWORD), ErrorCode::LimitReached);
    assert_eq!(limited(m, "sessions"), 1);
    second.logout().unwrap();
    wait_closed(&second);
    // The freed place is taken on the next login (the server may need a
    // moment to unregister the closed connection).
    let mut ok = false;
    for _ in 0..50 {
        let c = s.client();
        match c.login(&name, PASSWORD) {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(e) if e.code() == Some(ErrorCode::LimitReached) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(ok, "a logout frees a session place");
}

#[test]
fn groups_per_user_and_members_per_group_are_capped() {
    let (s, m) = start(&["--max-groups-per-user", "2", "--max-members-per-group", "2"]);
    let a = s.user(&uname("gq_a"));
    let g1 = a.create_group(&uname("gq1")).unwrap();
    let _g2 = a.create_group(&uname("gq2")).unwrap();
    assert_code(a.create_group(&uname("gq3")), ErrorCode::LimitReached);
    assert_eq!(limited(m, "groups"), 1);
    a.dissolve_group(g1).unwrap();
    let g3 = a.create_group(&uname("gq4")).unwrap();
    // Owner + one member fill a group of two.
    let b = s.user(&uname("gq_b"));
    let c = s.user(&uname("gq_c"));
    b.join_group(g3).unwrap();
    assert_code(c.join_group(g3), ErrorCode::LimitReached);
    assert_eq!(limited(m, "members"), 1);
    b.leave_group(g3).unwrap();
    c.join_group(g3).unwrap();
}

/// Connects and reads what the server says first (a refusal is an error
/// frame and a close).
fn refused(addr: SocketAddr) -> Option<ErrorCode> {
    let mut r = Raw::connect(addr);
    r.s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    match r.read() {
        Some(f) if f.body == Body::ErrorReply => f.code,
        _ => None,
    }
}

#[test]
fn connections_per_address_and_in_total_are_capped_with_a_clear_refusal() {
    let (s, m) = start(&["--max-conns-per-addr", "3"]);
    let held: Vec<_> = (0..3).map(|_| Raw::hello(s.addr)).collect();
    assert_eq!(refused(s.addr), Some(ErrorCode::LimitReached));
    assert_eq!(limited(m, "conns_per_addr"), 1);
    drop(held);
    // Closed connections free their places (once the server notices).
    let ok = (0..50).any(|_| {
        let served = hello_ok(s.addr);
        if !served {
            std::thread::sleep(Duration::from_millis(50));
        }
        served
    });
    assert!(ok, "closing connections frees places");
    drop(s);

    let (s, m) = start(&["--max-conns", "2"]);
    let _held: Vec<_> = (0..2).map(|_| Raw::hello(s.addr)).collect();
    assert_eq!(refused(s.addr), Some(ErrorCode::LimitReached));
    assert_eq!(limited(m, "conns_total"), 1);
}

/// Whether a new connection is served (its Hello answered).
fn hello_ok(addr: SocketAddr) -> bool {
    let mut r = Raw::connect(addr);
    r.s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let f = r.enc.hello(1, "limits-test").to_vec();
    if r.s.write_all(&f).is_err() {
        return false;
    }
    matches!(r.read(), Some(f) if f.body == Body::HelloOk)
}

#[test]
fn the_old_protocol_is_capped_too_and_refused_in_its_own_words() {
    let (s, m) = start(&[
        "--legacy-listen",
        "127.0.0.1:0",
        "--max-conns-per-addr",
        "2",
    ]);
    let legacy = s.legacy.expect("legacy address reported");
    // Each held connection is answered once before the next connects: the
    // shards accept in parallel, and the cap refuses whichever connection
    // comes third in *their* order.
    let served = || {
        let mut s = std::net::TcpStream::connect(legacy).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(br#"{"msgid":99}"#).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("unknown msgid"));
        s
    };
    let _a = served();
    let _b = served();
    let mut c = std::net::TcpStream::connect(legacy).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("\"errno\":1") && text.contains("too many connections"),
        "{text}"
    );
    assert_eq!(limited(m, "conns_per_addr"), 1);
}

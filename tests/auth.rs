//! Accounts and sessions: register, login, resume, logout.

mod common;

use common::*;
use ringchat::client::{ErrorCode, Event};

#[test]
fn register_assigns_distinct_ids_and_does_not_log_in() {
    let s = TestServer::start();
    let c = s.client();
    let a = c.register(&uname("reg_a"), PASSWORD).unwrap();
    let b = c.register(&uname("reg_b"), PASSWORD).unwrap();
    assert_ne!(a, 0);
    assert_ne!(b, 0);
    assert_ne!(a, b);
    // Registering does not log in: a session-only request is refused.
    assert_code(c.list_friends(), ErrorCode::NotLoggedIn);
}

#[test]
fn register_is_allowed_while_logged_in() {
    let s = TestServer::start();
    let u = s.user(&uname("reglog"));
    let other = u.register(&uname("reglog2"), PASSWORD).unwrap();
    assert_ne!(other, u.id);
    // Still the same session afterwards.
    assert!(u.list_friends().unwrap().is_empty());
}

#[test]
fn duplicate_username_is_taken() {
    let s = TestServer::start();
    let c = s.client();
    let name = uname("dup");
    c.register(&name, PASSWORD).unwrap();
    assert_code(
        c.register(&name, "another password"),
        ErrorCode::UsernameTaken,
    );
}

#[test]
fn invalid_usernames_and_passwords_are_rejected() {
    let s = TestServer::start();
    let c = s.client();
    for bad in [
        "",
        "has space",
        "semi;colon",
        "ümlaut",
        "slash/x",
        &"a".repeat(33),
    ] {
        assert_code(c.register(bad, PASSWORD), ErrorCode::InvalidUsername);
    }
    // The whole allowed alphabet and the maximum length are fine.
    c.register("Az09_.-", PASSWORD).unwrap();
    c.register(&"b".repeat(32), PASSWORD).unwrap();
    assert_code(
        c.register(&uname("pw7"), "1234567"),
        ErrorCode::InvalidPassword,
    );
    assert_code(
        c.register(&uname("pwlong"), &"p".repeat(129)),
        ErrorCode::InvalidPassword,
    );
    c.register(&uname("pw8"), "12345678").unwrap();
    c.register(&uname("pw128"), &"p".repeat(128)).unwrap();
}

#[test]
fn wrong_password_and_unknown_user_are_bad_credentials() {
    let s = TestServer::start();
    let c = s.client();
    let name = uname("cred");
    c.register(&name, PASSWORD).unwrap();
    assert_code(c.login(&name, "wrong password"), ErrorCode::BadCredentials);
    assert_code(
        c.login(&uname("nobody"), PASSWORD),
        ErrorCode::BadCredentials,
    );
    // The connection stays usable and the right password works.
    let sess = c.login(&name, PASSWORD).unwrap();
    assert_eq!(sess.username, name);
    assert!(!sess.token.is_empty());
}

#[test]
fn requests_before_login_are_not_logged_in_and_connection_stays_open() {
    let s = TestServer::start();
    let c = s.client();
    assert_code(c.list_friends(), ErrorCode::NotLoggedIn);
    assert_code(c.send_direct(1, "hi"), ErrorCode::NotLoggedIn);
    assert_code(c.create_group("g"), ErrorCode::NotLoggedIn);
    assert_code(c.search_users("a", 0, 10), ErrorCode::NotLoggedIn);
    assert_code(c.history(1, 0, 10), ErrorCode::NotLoggedIn);
    c.ping().unwrap();
    let name = uname("late");
    c.register(&name, PASSWORD).unwrap();
    login_synced(&c, &name);
    assert!(c.list_friends().unwrap().is_empty());
}

#[test]
fn second_login_on_one_connection_is_already_logged_in() {
    let s = TestServer::start();
    let u = s.user(&uname("twice"));
    assert_code(u.login(&u.name, PASSWORD), ErrorCode::AlreadyLoggedIn);
}

#[test]
fn resume_with_token_on_a_new_connection() {
    let s = TestServer::start();
    let u = s.user(&uname("resume"));
    let c2 = s.client();
    let sess = c2.resume(&u.session.token).unwrap();
    assert_eq!(sess.user_id, u.id);
    assert_eq!(sess.username, u.name);
    wait(&c2, "SyncDone after resume", |e| {
        matches!(e, Event::SyncDone { .. })
    });
    assert!(c2.list_friends().unwrap().is_empty());
    // The token survives the first connection going away.
    drop(u);
    let c3 = s.client();
    assert_eq!(c3.resume(&sess.token).unwrap().user_id, sess.user_id);
}

#[test]
fn unknown_token_is_bad_token() {
    let s = TestServer::start();
    let c = s.client();
    assert_code(c.resume("not-a-token"), ErrorCode::BadToken);
    assert_code(c.resume(""), ErrorCode::BadToken);
    // Still not logged in.
    assert_code(c.list_friends(), ErrorCode::NotLoggedIn);
}

#[test]
fn logout_revokes_only_that_token_and_closes() {
    let s = TestServer::start();
    let u = s.user(&uname("logout"));
    let other = s.client();
    let other_sess = login_synced(&other, &u.name);
    assert_ne!(other_sess.token, u.session.token);
    u.logout().unwrap();
    wait_closed(&u.c);
    let c = s.client();
    assert_code(c.resume(&u.session.token), ErrorCode::BadToken);
    // The other session's token is unaffected.
    assert_eq!(c.resume(&other_sess.token).unwrap().user_id, u.id);
}

#[test]
fn same_user_on_two_connections_both_receive_a_message() {
    let s = TestServer::start();
    let alice = s.user(&uname("two_a"));
    let bob = s.user(&uname("two_b"));
    befriend(&alice, &bob);
    let alice2 = s.device(&alice);
    let sent = bob.send_direct(alice.id, "to both devices").unwrap();
    for c in [&alice.c, &alice2] {
        let m = wait_msg(c, "the message");
        assert_eq!(m.body, "to both devices");
        assert_eq!(m.seq, sent.seq);
        assert_eq!(m.sender, bob.id);
    }
}

// ------------------------------------------------------------ login floods
// (argon2 costs tens of ms of CPU per attempt: floods are refused before
// hashing, and hashing never runs on the store's threads)

#[test]
fn failed_logins_are_throttled_per_username_before_hashing() {
    let s = TestServer::start();
    let c = s.client();
    let victim = uname("thr_v");
    c.register(&victim, PASSWORD).unwrap();
    for _ in 0..5 {
        assert_code(
            c.login(&victim, "wrong password!"),
            ErrorCode::BadCredentials,
        );
    }
    // Past the free failures: refused at once, even the right password,
    // and the reply says when to retry.
    match c.login(&victim, "wrong password!") {
        Err(e) if e.code() == Some(ErrorCode::RateLimited) => {
            assert!(e.to_string().contains("retry in"), "{e}");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_code(c.login(&victim, PASSWORD), ErrorCode::RateLimited);
    // Another account from the same address is not affected.
    let other = uname("thr_o");
    c.register(&other, PASSWORD).unwrap();
    let c2 = s.client();
    login_synced(&c2, &other);
    // After the back-off (1 s for the first step) the owner gets in.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let c3 = s.client();
    login_synced(&c3, &victim);
}

#[test]
fn failed_logins_are_throttled_per_source_address() {
    let s = TestServer::start();
    let c = s.client();
    // 20 failures spread over 10 unknown names (2 each: no single name is
    // throttled) exhaust this address's budget.
    for i in 0..20 {
        assert_code(
            c.login(&format!("nobody{}", i % 10), "wrong password!"),
            ErrorCode::BadCredentials,
        );
    }
    assert_code(
        c.login("nobody0x", "wrong password!"),
        ErrorCode::RateLimited,
    );
    // Even a valid account is refused from this address until the back-off ends.
    let name = uname("thr_a");
    c.register(&name, PASSWORD).unwrap();
    assert_code(c.login(&name, PASSWORD), ErrorCode::RateLimited);
}

#[test]
fn overlong_passwords_are_refused_without_hashing() {
    let s = TestServer::start();
    let c = s.client();
    let name = uname("longpw");
    c.register(&name, PASSWORD).unwrap();
    assert_code(
        c.login(&name, &"x".repeat(60_000)),
        ErrorCode::BadCredentials,
    );
    login_synced(&c, &name);
}

#[test]
fn a_full_hashing_queue_refuses_at_once_and_retries_succeed() {
    // One hashing thread, one queued job: concurrent registrations beyond
    // that are refused with RateLimited instead of queueing.
    let s = TestServer::start_with(&["--hash-threads", "1", "--hash-queue", "1"]);
    let addr = s.addr;
    let results: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let c = ringchat::client::Client::connect(addr).unwrap();
                let name = format!("hq{}x{i}", std::process::id() % 100_000);
                let mut last = c.register(&name, PASSWORD).map(|_| ());
                let refused = last.is_err();
                // Retry until admitted: the refusal is temporary.
                let mut tries = 0;
                while let Err(e) = &last {
                    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
                    tries += 1;
                    assert!(tries < 200, "never admitted");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    last = c.register(&name, PASSWORD).map(|_| ());
                }
                refused
            })
        })
        .collect();
    let refused = results
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|r| *r)
        .count();
    assert!(
        refused > 0,
        "8 concurrent hashes on a 1+1 pool: some must be refused"
    );
}

/// A refused login's reply is held on its connection (a tarpit): one
/// connection gets at most five refusals a second, however fast it asks,
/// whether the refusal is a wrong password or the throttle.
#[test]
fn refused_logins_are_held_so_one_connection_cannot_flood() {
    let s = TestServer::start();
    let c = s.client();
    let t0 = std::time::Instant::now();
    let n = 12; // past the 5 free failures: the last ones are throttled
    for _ in 0..n {
        assert!(c.login("nobody-at-all", "wrong password!").is_err());
    }
    let took = t0.elapsed();
    let floor = ringchat::server::cmd::account::TARPIT * n;
    assert!(
        took >= floor,
        "{n} refusals came back in {took:?}, under the {floor:?} the tarpit holds them"
    );
    // The connection is still usable after the refusals.
    c.ping().unwrap();
}

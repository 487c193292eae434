//! Every `ulong` field of the protocol at the extremes of its range (0, 1,
//! 2^63-1, 2^63, 2^63+1, u64::MAX), over real TCP, on both stores: the
//! embedded SQLite store keeps `u64`s as `i64`, where 2^63 and above turn
//! negative, so a bound such as `History.before_seq = 2^63` used to find
//! nothing and `SearchUsers.after_id = 2^63` used to find everybody.
//!
//! Each scenario runs once on SQLite (`sqlite::*`) and once on the MySQL
//! store (`mysql::*`, on the local MariaDB; skipped with a message when it is
//! unreachable, unless `RINGCHAT_REQUIRE_MYSQL=1`).

mod common;

use common::*;
use ringchat::client::{ErrorCode, Event};
use ringchat::model::{ConvId, MAX_USER_ID, Seq, direct_conv};
use ringchat::wire::{self, fb};

/// 2^63: the first `u64` that is negative as an `i64`.
const I63: u64 = 1 << 63;
/// Bounds at and above the last stored value, up to the top of the range.
const HIGH: [u64; 4] = [I63 - 1, I63, I63 + 1, u64::MAX];

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&mut super::TestServer::start());
                }
            )*
        }
        mod mysql {
            $(
                #[test]
                fn $name() {
                    let Some(db) = super::MysqlDb::new(stringify!($name)) else {
                        return;
                    };
                    let mut s = super::TestServer::start_with(&["--store", &db.store()]);
                    super::$name(&mut s);
                }
            )*
        }
    };
}

on_both_stores!(
    history_before_seq,
    resume_since,
    search_after_id,
    ack_seq,
    client_msg_id,
    user_and_group_ids,
);

fn seqs(msgs: &[ringchat::client::ChatMsg]) -> Vec<Seq> {
    msgs.iter().map(|m| m.seq).collect()
}

/// Logs `name` in on a fresh connection and returns how many messages the
/// catch-up sent (`SyncDone.messages`, counted by the server).
fn catch_up_count(s: &TestServer, name: &str) -> u64 {
    let c = s.client();
    // Acking the catch-up would move the cursor this is measuring.
    c.set_auto_ack(false);
    c.login(name, PASSWORD).unwrap();
    match wait(&c, "SyncDone", |e| matches!(e, Event::SyncDone { .. })) {
        Event::SyncDone { messages } => messages,
        _ => unreachable!(),
    }
}

fn history_before_seq(s: &mut TestServer) {
    let a = s.user(&uname("hb_a"));
    let b = s.user(&uname("hb_b"));
    befriend(&a, &b);
    let direct = direct_conv(a.id, b.id);
    let g = a.create_group(&uname("hb_g")).unwrap();
    b.join_group(g).unwrap();
    for i in 1..=3 {
        a.send_direct(b.id, &format!("d{i}")).unwrap();
        a.send_group(g, &format!("g{i}")).unwrap();
    }
    for conv in [direct, g] {
        let h = |before, limit| seqs(&b.history(conv, before, limit).unwrap());
        for before in [0, 4, 5].into_iter().chain(HIGH) {
            assert_eq!(h(before, 0), [1, 2, 3], "conv {conv} before_seq {before}");
            assert_eq!(h(before, 1), [3], "conv {conv} before_seq {before} limit 1");
        }
        assert!(h(1, 0).is_empty(), "before_seq 1");
        assert_eq!(h(2, 0), [1], "before_seq 2");
        assert_eq!(h(3, 1), [2], "before_seq 3 limit 1");
        assert_eq!(h(u64::MAX, u32::MAX), [1, 2, 3], "limit u32::MAX");
    }
}

fn resume_since(s: &mut TestServer) {
    let a = s.user(&uname("rs_a"));
    let b = s.user(&uname("rs_b"));
    befriend(&a, &b);
    let conv = direct_conv(a.id, b.id);
    for i in 1..=3 {
        a.send_direct(b.id, &format!("m{i}")).unwrap();
    }
    // b's own connection acks what it received: its cursor is 3 by now, so
    // everything the catch-ups below send comes from `since`.
    for _ in 0..3 {
        wait_msg(&b, "message");
    }
    b.ping().unwrap();
    let token = b.session.token.clone();
    let cases: [(Seq, u64); 8] = [
        (0, 3),
        (1, 2),
        (2, 1),
        (3, 0),
        (I63 - 1, 0),
        (I63, 0),
        (I63 + 1, 0),
        (u64::MAX, 0),
    ];
    for (since, want) in cases {
        let c = s.client();
        c.resume_since(&token, &[(conv, since)]).unwrap();
        let got = match wait(&c, "SyncDone", |e| matches!(e, Event::SyncDone { .. })) {
            Event::SyncDone { messages } => messages,
            _ => unreachable!(),
        };
        assert_eq!(got, want, "since {since}");
    }
    // In a group, no `since` replays what came before the user joined: the
    // join point is a floor the server keeps (docs/SECURITY.md, "Groups"),
    // so a device that asks from 0 gets nothing from before it.
    let g = a.create_group(&uname("rs_g")).unwrap();
    a.send_group(g, "before b joined").unwrap();
    b.join_group(g).unwrap();
    for (since, want) in [(0, 0), (1, 0), (u64::MAX, 0)] {
        let c = s.client();
        c.resume_since(&token, &[(g, since)]).unwrap();
        let got = match wait(&c, "SyncDone", |e| matches!(e, Event::SyncDone { .. })) {
            Event::SyncDone { messages } => messages,
            _ => unreachable!(),
        };
        assert_eq!(got, want, "group since {since}");
    }
    assert_eq!(catch_up_count(s, &b.name), 0, "joined at the end");
    // A conversation the user is not in is ignored, whatever its id.
    for other in [0, 999_999, I63 - 1, I63, u64::MAX] {
        let c = s.client();
        c.resume_since(&token, &[(other, 0), (conv, 2)]).unwrap();
        let got = match wait(&c, "SyncDone", |e| matches!(e, Event::SyncDone { .. })) {
            Event::SyncDone { messages } => messages,
            _ => unreachable!(),
        };
        assert_eq!(got, 1, "since for conversation {other}");
    }
}

fn search_after_id(s: &mut TestServer) {
    let p = uname("sa");
    let c = s.client();
    let ids: Vec<u64> = (0..3)
        .map(|i| c.register(&format!("{p}_{i}"), PASSWORD).unwrap())
        .collect();
    login_synced(&c, &format!("{p}_0"));
    let found = |after, limit| {
        let (users, next) = c.search_users(&p, after, limit).unwrap();
        (users.iter().map(|u| u.user_id).collect::<Vec<_>>(), next)
    };
    assert_eq!(found(0, 0), (ids.clone(), 0));
    assert_eq!(found(ids[0], 0), (ids[1..].to_vec(), 0));
    assert_eq!(found(0, 2), (ids[..2].to_vec(), ids[1]));
    assert_eq!(found(ids[1], 2), (ids[2..].to_vec(), 0));
    assert_eq!(found(0, u32::MAX), (ids.clone(), 0), "limit u32::MAX");
    for after in HIGH {
        assert_eq!(found(after, 0), (vec![], 0), "after_id {after}");
    }
}

fn ack_seq(s: &mut TestServer) {
    let a = s.user(&uname("ak_a"));
    let b = s.user(&uname("ak_b"));
    befriend(&a, &b);
    b.set_auto_ack(false);
    let conv = direct_conv(a.id, b.id);
    for i in 1..=3 {
        a.send_direct(b.id, &format!("m{i}")).unwrap();
        wait_msg(&b, "message");
    }
    // The round trip after each Ack orders it before the next login.
    let ack = |seq: Seq| {
        b.ack(&[(conv, seq)]).unwrap();
        b.ping().unwrap();
    };
    ack(0);
    assert_eq!(catch_up_count(s, &b.name), 3, "ack 0 moves nothing");
    ack(1);
    assert_eq!(catch_up_count(s, &b.name), 2);
    // Acks for conversations the connection has not seen are ignored,
    // whatever the ids.
    b.ack(&[(0, 5), (I63 - 1, 5), (I63, u64::MAX), (u64::MAX, u64::MAX)])
        .unwrap();
    b.ping().unwrap();
    assert_eq!(
        catch_up_count(s, &b.name),
        2,
        "acks for other conversations"
    );
    // An ack past the end is capped at the highest seq the session was
    // sent: it acknowledges what the device has, never messages that come
    // later (an ack of 2^63 or u64::MAX would otherwise hide every later
    // message from the user's next catch-up).
    ack(I63);
    assert_eq!(catch_up_count(s, &b.name), 0, "cursor capped at seq 3");
    ack(2);
    assert_eq!(catch_up_count(s, &b.name), 0, "cursors never move back");
    a.send_direct(b.id, "live").unwrap();
    assert_eq!(wait_msg(&b, "live message").seq, 4, "live delivery goes on");
    assert_eq!(
        catch_up_count(s, &b.name),
        1,
        "seq 4 came after the ack of 2^63: it is not acknowledged by it"
    );
    ack(u64::MAX);
    assert_eq!(
        catch_up_count(s, &b.name),
        0,
        "cursor u64::MAX, capped at 4"
    );
    // History is not affected by cursors.
    assert_eq!(seqs(&b.history(conv, 0, 0).unwrap()), [1, 2, 3, 4]);
    // The cursor survives a restart as the same u64.
    s.restart();
    assert_eq!(catch_up_count(s, &b.name), 0, "cursor after restart");
}

fn client_msg_id(s: &mut TestServer) {
    let a = s.user(&uname("cm_a"));
    let b = s.user(&uname("cm_b"));
    befriend(&a, &b);
    let conv = direct_conv(a.id, b.id);
    let ids = [1, I63 - 1, I63, I63 + 1, u64::MAX];
    let mut sent = vec![];
    for (i, &id) in ids.iter().enumerate() {
        let r = a.send_raw(b.id, 0, id, &format!("id {id}")).unwrap();
        assert_eq!((r.seq, r.duplicate), (i as u64 + 1, false), "id {id}");
        let m = wait_msg(&b, "message");
        assert_eq!((m.seq, m.client_msg_id), (r.seq, id));
        sent.push(r);
    }
    assert_code(a.send_raw(b.id, 0, 0, "id 0"), ErrorCode::BadRequest);
    let resend_all = |c: &ringchat::client::Client| {
        for (&id, r) in ids.iter().zip(&sent) {
            let again = c.send_raw(b.id, 0, id, &format!("id {id}")).unwrap();
            assert!(again.duplicate, "resend of {id}");
            assert_eq!(
                (again.conversation, again.seq, again.timestamp_ms),
                (conv, r.seq, r.timestamp_ms),
                "resend of {id}"
            );
        }
    };
    resend_all(&a);
    let h = b.history(conv, 0, 0).unwrap();
    assert_eq!(
        h.iter().map(|m| m.client_msg_id).collect::<Vec<_>>(),
        ids,
        "stored as sent"
    );
    // The resend window is rebuilt from the store after a restart.
    s.restart();
    let a2 = s.client();
    login_synced(&a2, &a.name);
    resend_all(&a2);
    let b2 = s.client();
    login_synced(&b2, &b.name);
    assert_eq!(
        b2.history(conv, 0, 0).unwrap(),
        h,
        "same history after restart"
    );
}

fn user_and_group_ids(s: &mut TestServer) {
    let a = s.user(&uname("id_a"));
    let b = s.user(&uname("id_b"));
    befriend(&a, &b);
    let g = a.create_group(&uname("id_g")).unwrap();
    for bad in [0, 1_000_000].into_iter().chain(HIGH) {
        assert_code(a.join_group(bad), ErrorCode::NoSuchGroup);
        assert_code(a.leave_group(bad), ErrorCode::NoSuchGroup);
        assert_code(a.group_members(bad), ErrorCode::NoSuchGroup);
        assert_code(a.dissolve_group(bad), ErrorCode::NoSuchGroup);
        assert_code(a.remove_member(bad, b.id), ErrorCode::NoSuchGroup);
        assert_code(a.set_admin(bad, b.id, true), ErrorCode::NoSuchGroup);
        let want = if bad == 0 {
            ErrorCode::BadRequest // neither target set
        } else {
            ErrorCode::NoSuchGroup
        };
        assert_code(a.send_raw(0, bad, 5, "x"), want);
    }
    for bad in [0, 1_000_000].into_iter().chain(HIGH) {
        assert_code(a.friend_request(bad, ""), ErrorCode::NoSuchUser);
        assert_code(a.friend_respond(bad, true), ErrorCode::NoSuchUser);
        assert_code(a.friend_remove(bad), ErrorCode::NoSuchUser);
        assert_code(a.friend_block(bad, true), ErrorCode::NoSuchUser);
        assert_code(a.remove_member(g, bad), ErrorCode::NotMember);
        assert_code(a.set_admin(g, bad, true), ErrorCode::NotMember);
        if bad != 0 {
            assert_code(a.send_raw(bad, 0, 5, "x"), ErrorCode::NotFriends);
        }
    }
    // The caller's own id is SelfTarget for all four friend requests.
    assert_code(a.friend_request(a.id, ""), ErrorCode::SelfTarget);
    assert_code(a.friend_respond(a.id, true), ErrorCode::SelfTarget);
    assert_code(a.friend_remove(a.id), ErrorCode::SelfTarget);
    assert_code(a.friend_block(a.id, true), ErrorCode::SelfTarget);
    // History of conversations that do not exist or are not the caller's:
    // group ids (top bit clear) are NoSuchGroup, direct ones NotMember,
    // including direct ids that name the caller but no real pair.
    let cases: [(ConvId, ErrorCode); 9] = [
        (0, ErrorCode::NoSuchGroup),
        (I63 - 1, ErrorCode::NoSuchGroup),
        (I63, ErrorCode::NotMember),
        (I63 + 1, ErrorCode::NotMember),
        (I63 | a.id, ErrorCode::NotMember),
        (I63 | a.id << 31, ErrorCode::NotMember),
        (I63 | a.id << 31 | a.id, ErrorCode::NotMember),
        (
            I63 | (MAX_USER_ID + 1 + a.id) << 31 | a.id,
            ErrorCode::NotMember,
        ),
        (u64::MAX, ErrorCode::NotMember),
    ];
    for (conv, code) in cases {
        for before in [0, I63, u64::MAX] {
            assert_code(a.history(conv, before, 0), code);
        }
    }
    // The real ones still work.
    a.send_direct(b.id, "ok").unwrap();
    a.send_group(g, "ok").unwrap();
    assert_eq!(a.history(g, u64::MAX, 0).unwrap().len(), 1);
}

/// `req_id` and `Ping.nonce` are echoed over the whole range; a request
/// with `req_id` 0 gets `BadRequest` (with req_id 0) and the connection
/// stays open. Store-independent.
#[test]
fn req_id_and_ping_nonce() {
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    let all = [0, 1, I63 - 1, I63, I63 + 1, u64::MAX];
    for req in &all[1..] {
        for nonce in all {
            let f = r.enc.ping(*req, nonce).to_vec();
            r.write(&f);
            let got = r.read().expect("Pong");
            assert_eq!(
                (got.body, got.req_id, got.nonce),
                (fb::Body::Pong, *req, Some(nonce))
            );
        }
    }
    let f = r.enc.ping(0, 5).to_vec();
    r.write(&f);
    let got = r.read().expect("an error reply");
    assert_eq!(
        (got.body, got.req_id, got.code),
        (fb::Body::ErrorReply, 0, Some(ErrorCode::BadRequest))
    );
    // Replies carry the req_id as sent, also in the server's other replies.
    let f = r.enc.register(u64::MAX, &uname("rq"), PASSWORD).to_vec();
    r.write(&f);
    let got = r.read().expect("RegisterOk");
    assert_eq!((got.body, got.req_id), (fb::Body::RegisterOk, u64::MAX));
    let env = wire::decode(&got.bytes).unwrap();
    assert!(env.body_as_register_ok().unwrap().user_id() > 0);
}

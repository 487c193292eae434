//! Direct messages: sequencing, resend dedup, offline delivery, resume,
//! history, large bodies and durability across restarts.

mod common;

use common::*;
use ringchat::client::{ChatMsg, Client, ErrorCode, Event};
use ringchat::model::{direct_conv, now_ms};
use ringchat::wire::fb;

/// Two friends, both logged in and synced.
fn pair(s: &TestServer, tag: &str) -> (User, User) {
    let a = s.user(&uname(&format!("{tag}_a")));
    let b = s.user(&uname(&format!("{tag}_b")));
    befriend(&a, &b);
    (a, b)
}

/// Collects events until `SyncDone`, returning the messages before it.
fn until_sync_done(c: &Client) -> (Vec<ChatMsg>, u64) {
    let mut msgs = vec![];
    loop {
        match c.next_event(T) {
            Some(Event::Message(m)) => msgs.push(m),
            Some(Event::SyncDone { messages }) => return (msgs, messages),
            Some(Event::Closed) | None => panic!("no SyncDone; got {} messages", msgs.len()),
            Some(_) => {}
        }
    }
}

#[test]
fn direct_message_between_friends() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "dm");
    let before = now_ms();
    let mid = alice.next_msg_id();
    let sent = alice.send_raw(bob.id, 0, mid, "hello bob").unwrap();
    let after = now_ms();
    assert_eq!(sent.conversation, direct_conv(alice.id, bob.id));
    assert_eq!(sent.seq, 1);
    assert!(!sent.duplicate);
    assert!(
        (before.saturating_sub(1000)..=after + 1000).contains(&sent.timestamp_ms),
        "timestamp {} not near now {before}..{after}",
        sent.timestamp_ms
    );
    let m = wait_msg(&bob, "message");
    assert_eq!(m.conversation, sent.conversation);
    assert_eq!(m.seq, sent.seq);
    assert_eq!(m.timestamp_ms, sent.timestamp_ms);
    assert_eq!(m.sender, alice.id);
    assert_eq!(m.sender_name, alice.name);
    assert_eq!(m.group_id, 0);
    assert_eq!(m.client_msg_id, mid);
    assert_eq!(m.body, "hello bob");
    // The reply goes the other way in the same conversation.
    let back = bob.send_direct(alice.id, "hi alice").unwrap();
    assert_eq!((back.conversation, back.seq), (sent.conversation, 2));
    assert_eq!(wait_msg(&alice, "reply").body, "hi alice");
}

#[test]
fn seq_increases_without_gaps_over_200_messages() {
    // A burst far above a person's send rate (tests/limits.rs covers that).
    let s = TestServer::start_with(&["--max-send-burst", "1000"]);
    let (alice, bob) = pair(&s, "seq");
    let conv = direct_conv(alice.id, bob.id);
    for i in 1..=200u64 {
        let (from, to) = if i % 3 == 0 {
            (&bob, &alice)
        } else {
            (&alice, &bob)
        };
        let sent = from.send_direct(to.id, &format!("m{i}")).unwrap();
        assert_eq!(sent.conversation, conv);
        assert_eq!(sent.seq, i, "gap or reorder at message {i}");
    }
    // Each side receives the other's messages in seq order.
    let got = bob.wait_messages(134, T, |m| m.conversation == conv);
    let want: Vec<u64> = (1..=200).filter(|i| i % 3 != 0).collect();
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
    assert!(got.iter().all(|m| m.body == format!("m{}", m.seq)));
    let got = alice.wait_messages(66, T, |m| m.conversation == conv);
    let want: Vec<u64> = (1..=200).filter(|i| i % 3 == 0).collect();
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
}

#[test]
fn resend_with_same_client_msg_id_is_deduplicated() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "rs");
    let watcher = s.client_with(|o| o.dedup = false);
    login_synced(&watcher, &bob.name);
    let mid = alice.next_msg_id();
    let first = alice.send_raw(bob.id, 0, mid, "only once").unwrap();
    assert!(!first.duplicate);
    let again = alice.send_raw(bob.id, 0, mid, "only once").unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.conversation, again.seq, again.timestamp_ms),
        (first.conversation, first.seq, first.timestamp_ms)
    );
    // A resend from another connection of the same user is the same message.
    let alice2 = s.device(&alice);
    let third = alice2.send_raw(bob.id, 0, mid, "only once").unwrap();
    assert!(third.duplicate);
    assert_eq!(third.seq, first.seq);
    let next = alice.send_direct(bob.id, "next").unwrap();
    assert_eq!(next.seq, first.seq + 1, "a duplicate consumed a seq");
    let got = watcher.wait_messages(2, T, |_| true);
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![first.seq, next.seq]
    );
    assert!(queued_messages(&watcher).is_empty(), "duplicate delivered");
    let h = bob.history(first.conversation, 0, 50).unwrap();
    assert_eq!(
        h.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        vec!["only once", "next"]
    );
}

#[test]
fn offline_recipient_gets_everything_in_order_then_sync_done() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "off");
    let (bob_name, bob_id) = (bob.name.clone(), bob.id);
    drop(bob);
    let mut seqs = vec![];
    for i in 0..50 {
        seqs.push(
            alice
                .send_direct(bob_id, &format!("offline {i}"))
                .unwrap()
                .seq,
        );
    }
    let c = s.client();
    c.login(&bob_name, PASSWORD).unwrap();
    let (msgs, count) = until_sync_done(&c);
    assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.body, format!("offline {i}"));
        assert_eq!(m.sender, alice.id);
    }
    assert!(count >= 50, "SyncDone counted {count}");
    // Auto-ack moved the cursor: the next login has nothing to catch up.
    c.ping().unwrap(); // the Ack frame was written before this request
    drop(c);
    let c = s.client();
    c.login(&bob_name, PASSWORD).unwrap();
    let (msgs, count) = until_sync_done(&c);
    assert!(
        msgs.is_empty(),
        "acknowledged messages replayed: {}",
        msgs.len()
    );
    assert_eq!(count, 0);
}

#[test]
fn unacknowledged_messages_are_replayed_on_login() {
    let s = TestServer::start();
    let alice = s.user(&uname("una_a"));
    let bob_name = uname("una_b");
    let bob = s.client_with(|o| o.auto_ack = false);
    let bob_id = bob.register(&bob_name, PASSWORD).unwrap();
    login_synced(&bob, &bob_name);
    alice.friend_request(bob_id, "").unwrap();
    wait(&bob, "request", |e| matches!(e, Event::Friend { .. }));
    bob.friend_respond(alice.id, true).unwrap();
    for i in 0..3 {
        alice.send_direct(bob_id, &format!("u{i}")).unwrap();
    }
    let got = bob.wait_messages(3, T, |_| true);
    assert_eq!(got.len(), 3);
    // Explicitly acknowledge only the first.
    bob.ack(&[(got[0].conversation, got[0].seq)]).unwrap();
    bob.ping().unwrap();
    drop(bob);
    let c = s.client();
    c.login(&bob_name, PASSWORD).unwrap();
    let (msgs, _) = until_sync_done(&c);
    assert_eq!(
        msgs.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        vec!["u1", "u2"]
    );
}

#[test]
fn resume_replays_only_what_the_device_missed() {
    let s = TestServer::start();
    let alice = s.user(&uname("res_a"));
    let bob_name = uname("res_b");
    // No auto-ack: the user's cursor stays at 0, so only `since` can make
    // the server skip what this device already has.
    let bob = s.client_with(|o| o.auto_ack = false);
    let bob_id = bob.register(&bob_name, PASSWORD).unwrap();
    let sess = login_synced(&bob, &bob_name);
    alice.friend_request(bob_id, "").unwrap();
    wait(&bob, "request", |e| matches!(e, Event::Friend { .. }));
    bob.friend_respond(alice.id, true).unwrap();
    for i in 1..=5 {
        alice.send_direct(bob_id, &format!("r{i}")).unwrap();
    }
    assert_eq!(bob.wait_messages(5, T, |_| true).len(), 5);
    let conv = direct_conv(alice.id, bob_id);
    assert_eq!(bob.seen().get(&conv), Some(&5));
    let since: Vec<_> = bob.seen().into_iter().collect();
    drop(bob);
    for i in 6..=8 {
        alice.send_direct(bob_id, &format!("r{i}")).unwrap();
    }
    let c = s.client_with(|o| {
        o.dedup = false;
        o.auto_ack = false;
    });
    let resumed = c.resume_since(&sess.token, &since).unwrap();
    assert_eq!(resumed.user_id, bob_id);
    let (msgs, _) = until_sync_done(&c);
    assert_eq!(
        msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![6, 7, 8]
    );
    assert_eq!(msgs[0].body, "r6");
    // Without `since`, the user's (unmoved) cursor applies: everything.
    let c2 = s.client_with(|o| o.auto_ack = false);
    c2.resume(&sess.token).unwrap();
    let (msgs, _) = until_sync_done(&c2);
    assert_eq!(
        msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
}

#[test]
fn history_pages_backwards_in_ascending_pages() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "hist");
    let eve = s.user(&uname("hist_e"));
    let conv = direct_conv(alice.id, bob.id);
    for i in 1..=25 {
        alice.send_direct(bob.id, &format!("h{i}")).unwrap();
    }
    let seqs = |v: Vec<ChatMsg>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(bob.history(conv, 0, 10).unwrap()),
        (16..=25).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(bob.history(conv, 16, 10).unwrap()),
        (6..=15).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(bob.history(conv, 6, 10).unwrap()),
        (1..=5).collect::<Vec<_>>()
    );
    assert!(bob.history(conv, 1, 10).unwrap().is_empty());
    // limit 0 means the default page (50): all 25 here.
    let all = alice.history(conv, 0, 0).unwrap();
    assert_eq!(seqs(all.clone()), (1..=25).collect::<Vec<_>>());
    assert_eq!(all[24].body, "h25");
    assert_eq!(all[0].sender_name, alice.name);
    // Only the two participants may read it.
    assert_code(eve.history(conv, 0, 10), ErrorCode::NotMember);
}

#[test]
fn large_body_round_trips_byte_for_byte() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "big");
    let unit = "\"quoted\" 'single' \\ back\\slash 😀🎉 ünïcødé \n\t<&>\0";
    let mut body = String::new();
    while body.len() + unit.len() <= 60 * 1024 {
        body.push_str(unit);
    }
    assert!(body.len() > 59 * 1024);
    let sent = alice.send_direct(bob.id, &body).unwrap();
    let m = wait_msg(&bob, "big message");
    assert_eq!(m.body.len(), body.len());
    assert!(m.body == body, "body changed in transit");
    let h = bob.history(sent.conversation, 0, 1).unwrap();
    assert!(h[0].body == body, "body changed in storage");
}

#[test]
fn message_size_and_target_rules() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "rule");
    let stranger = s.user(&uname("rule_s"));
    let max = alice.hello().max_frame as usize - 1024;
    assert_code(
        alice.send_direct(bob.id, &"x".repeat(max + 1)),
        ErrorCode::MessageTooLarge,
    );
    alice.send_direct(bob.id, &"x".repeat(max)).unwrap();
    // An empty (or absent) body is a missing field: BadRequest, as the
    // error table says; MessageTooLarge only ever means too large.
    assert_code(alice.send_direct(bob.id, ""), ErrorCode::BadRequest);
    let g0 = alice.create_group(&uname("rg0")).unwrap();
    assert_code(alice.send_group(g0, ""), ErrorCode::BadRequest);
    let mut raw = Raw::hello(s.addr);
    let login = raw.enc.login(1, &alice.name, PASSWORD).to_vec();
    raw.write(&login);
    let f = raw.read().unwrap();
    assert_eq!((f.body, f.req_id), (fb::Body::LoginOk, 1), "{f:?}");
    let no_body = send_without_body(2, bob.id);
    raw.write(&no_body);
    let f = loop {
        let f = raw.read().expect("a reply to the body-less SendMessage");
        if f.req_id == 2 {
            break f;
        }
    };
    assert_eq!(
        (f.body, f.code),
        (fb::Body::ErrorReply, Some(ErrorCode::BadRequest)),
        "{f:?}"
    );
    assert_code(alice.send_direct(stranger.id, "hi"), ErrorCode::NotFriends);
    assert_code(alice.send_direct(alice.id, "me"), ErrorCode::SelfTarget);
    assert_code(alice.send_raw(0, 0, 5, "nowhere"), ErrorCode::BadRequest);
    let g = alice.create_group(&uname("rg")).unwrap();
    assert_code(alice.send_raw(bob.id, g, 6, "both"), ErrorCode::BadRequest);
    assert_code(alice.send_raw(bob.id, 0, 0, "no id"), ErrorCode::BadRequest);
}

#[test]
fn restart_keeps_users_friends_groups_and_messages() {
    let mut s = TestServer::start();
    let (alice, bob) = pair(&s, "rst");
    let g = alice.create_group(&uname("rstg")).unwrap();
    bob.join_group(g).unwrap();
    for i in 1..=5 {
        alice.send_direct(bob.id, &format!("d{i}")).unwrap();
    }
    for i in 1..=3 {
        bob.send_group(g, &format!("g{i}")).unwrap();
    }
    let conv = direct_conv(alice.id, bob.id);
    let before = alice.history(conv, 0, 50).unwrap();
    let group_before = alice.history(g, 0, 50).unwrap();
    let (aname, bname, token) = (
        alice.name.clone(),
        bob.name.clone(),
        alice.session.token.clone(),
    );
    let (aid, bid) = (alice.id, bob.id);
    drop((alice, bob));

    s.restart();

    let a = s.client();
    login_synced(&a, &aname);
    assert_eq!(a.history(conv, 0, 50).unwrap(), before);
    assert_eq!(a.history(g, 0, 50).unwrap(), group_before);
    let friends = a.list_friends().unwrap();
    assert_eq!(friends.len(), 1);
    assert_eq!(friends[0].user_id, bid);
    let groups = a.list_groups().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group_id, g);
    assert_eq!(a.group_members(g).unwrap().len(), 2);
    assert_eq!(
        a.send_direct(bid, "d6").unwrap().seq,
        6,
        "seq did not continue"
    );
    assert_eq!(
        a.send_group(g, "g4").unwrap().seq,
        4,
        "group seq did not continue"
    );
    let b = s.client();
    login_synced(&b, &bname);
    wait(
        &b,
        "g4 after restart",
        |e| matches!(e, Event::Message(m) if m.body == "g4"),
    );
    // Session tokens survive too.
    let a2 = s.client();
    assert_eq!(a2.resume(&token).unwrap().user_id, aid);
}

#[test]
fn acknowledged_sends_survive_kill_9() {
    let mut s = TestServer::start();
    let (alice, bob) = pair(&s, "k9");
    let mut acked = vec![];
    for i in 0..30 {
        let sent = alice.send_direct(bob.id, &format!("durable {i}")).unwrap();
        acked.push((sent.seq, format!("durable {i}")));
    }
    let conv = direct_conv(alice.id, bob.id);
    let aname = alice.name.clone();
    drop((alice, bob));
    s.kill9();
    s.start_again();
    let a = s.client();
    login_synced(&a, &aname);
    let h = a.history(conv, 0, 200).unwrap();
    let got: Vec<(u64, String)> = h.into_iter().map(|m| (m.seq, m.body)).collect();
    assert_eq!(got, acked);
}

/// A recipient that stops reading is cut off once its unwritten output
/// passes `--max-outbound-kib`; nothing is dropped silently: after it comes
/// back, the catch-up delivers every message, in order, once.
#[test]
fn slow_consumer_is_cut_off_then_catches_up_everything() {
    let s = TestServer::start_with(&["--max-outbound-kib", "64", "--max-send-burst", "1000"]);
    let alice = s.user(&uname("slow_a"));
    let bob_name = uname("slow_b");
    let bob_id = {
        let bob = s.user(&bob_name);
        befriend(&alice, &bob);
        bob.id
    };
    // Bob logs in on a raw socket and then never reads again.
    let mut raw = Raw::hello(s.addr);
    let f = raw.enc.login(2, &bob_name, PASSWORD).to_vec();
    raw.write(&f);
    let body = "x".repeat(50_000);
    let mut seqs = Vec::new();
    for i in 0..120 {
        let sent = alice.send_direct(bob_id, &format!("{i} {body}")).unwrap();
        seqs.push(sent.seq);
    }
    // The server gave up on the silent connection: reading what it managed
    // to write ends in EOF rather than all 120 messages.
    let mut frames = 0;
    while let Some(f) = raw.read() {
        frames += 1;
        assert_ne!(f.body, ringchat::wire::fb::Body::ErrorReply, "{f:?}");
    }
    assert!(frames < 120, "the slow connection was never cut off");
    // Back with a normal client: everything arrives, in order, once.
    let c = s.client();
    c.login(&bob_name, PASSWORD).unwrap();
    let (msgs, _) = until_sync_done(&c);
    let got: Vec<_> = msgs.iter().map(|m| m.seq).collect();
    assert_eq!(got, seqs);
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.body.starts_with(&format!("{i} ")));
        assert_eq!(m.body.len(), format!("{i} ").len() + body.len());
    }
}

/// Reads the node's total of operations written in group-commit batches.
fn batch_ops(metrics: std::net::SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with("ringchat_store_batch_ops_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn acks_for_conversations_the_user_is_not_in_are_dropped() {
    let metrics: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = TestServer::start_with(&["--metrics", &metrics.to_string()]);
    let (a, b) = pair(&s, "ackf");
    let c = s.user(&uname("ackf_c"));
    a.send_direct(b.id, "one").unwrap();
    let m = wait_msg(&b.c, "one");
    let before = batch_ops(metrics);
    // c is in neither conversation: 20,000 ack items for a's and b's chat
    // and for groups that c never joined.
    let mut items = vec![(m.conversation, 1)];
    items.extend((1..20_000u64).map(|g| (ringchat::model::group_conv(g), 1)));
    for chunk in items.chunks(2_000) {
        c.ack(chunk).unwrap();
    }
    // b's own ack is legitimate and is written (it tells us a flush ran).
    b.ack(&[(m.conversation, m.seq)]).unwrap();
    let deadline = std::time::Instant::now() + T;
    while batch_ops(metrics) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "b's ack never written"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Two more flush periods for anything c's acks would have produced.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let written = batch_ops(metrics) - before;
    assert!(
        written < 100,
        "{written} operations written: c's acks for others' conversations reached the store"
    );
    // c still works.
    c.ping().unwrap();
}

/// A `SendMessage` frame without its `body` field (built by hand: the
/// encoder always writes one).
fn send_without_body(req_id: u64, to_user: u64) -> Vec<u8> {
    let mut b = flatbuffers::FlatBufferBuilder::new();
    let m = fb::SendMessage::create(
        &mut b,
        &fb::SendMessageArgs {
            to_user,
            group_id: 0,
            client_msg_id: 77,
            body: None,
        },
    );
    let env = fb::Envelope::create(
        &mut b,
        &fb::EnvelopeArgs {
            req_id,
            body_type: fb::Body::SendMessage,
            body: Some(m.as_union_value()),
        },
    );
    b.finish_size_prefixed(env, None);
    b.finished_data().to_vec()
}

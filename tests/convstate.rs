//! Conversation state for UIs over TCP: the conversation list with unread
//! counts, read receipts (`ReadUpTo`, `ReadCursors`), typing notifications,
//! and sending as reading.

mod common;

use common::*;
use ringchat::client::{Client, ErrorCode, Event};
use ringchat::model::{ConvId, Seq, direct_conv};

/// Two friends, both logged in and synced.
fn pair(s: &TestServer, tag: &str) -> (User, User) {
    let a = s.user(&uname(&format!("{tag}_a")));
    let b = s.user(&uname(&format!("{tag}_b")));
    befriend(&a, &b);
    (a, b)
}

/// A fresh connection of `u` that acknowledges nothing by itself.
fn quiet_device(s: &TestServer, u: &User) -> Client {
    let c = s.client_with(|o| o.auto_ack = false);
    login_synced(&c, &u.name);
    c
}

fn info(c: &Client, conv: ConvId) -> ringchat::client::ConversationInfo {
    c.list_conversations()
        .unwrap()
        .into_iter()
        .find(|i| i.conversation == conv)
        .unwrap_or_else(|| panic!("conversation {conv} not listed"))
}

/// The ReadUpTo events `c` gets until one with `seq` (inclusive).
fn read_receipts_until(c: &Client, conv: ConvId, seq: Seq) -> Vec<(u64, Seq)> {
    let mut got = Vec::new();
    loop {
        match c.next_event(T) {
            Some(Event::ReadUpTo {
                conversation,
                reader,
                seq: s,
            }) if conversation == conv => {
                got.push((reader, s));
                if s >= seq {
                    return got;
                }
            }
            Some(Event::Closed) | None => panic!("no ReadUpTo {seq}; got {got:?}"),
            Some(_) => {}
        }
    }
}

#[test]
fn unread_counts_after_offline_messages() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "un");
    let conv = direct_conv(alice.id, bob.id);
    bob.c.close();
    for i in 1..=3 {
        alice.send_direct(bob.id, &format!("m{i}")).unwrap();
    }
    let bob2 = quiet_device(&s, &bob);
    let i = info(&bob2, conv);
    assert_eq!(
        (i.peer, i.name.as_str(), i.group_id),
        (alice.id, alice.name.as_str(), 0)
    );
    assert_eq!((i.last_seq, i.read_seq, i.unread), (3, 0, 3));
    let last = i.last_message.expect("the newest message");
    assert_eq!(
        (last.seq, last.body.as_str(), last.sender),
        (3, "m3", alice.id)
    );
    assert!(!i.preview_truncated);
    assert!(i.online, "alice is a friend and online");

    bob2.ack(&[(conv, 2)]).unwrap();
    let i = info(&bob2, conv);
    assert_eq!((i.read_seq, i.unread), (2, 1));
    // Alice sent all three: none is unread for her; she sees bob's cursor.
    let a = info(&alice.c, conv);
    assert_eq!((a.read_seq, a.unread, a.peer_read_seq), (3, 0, 2));
}

#[test]
fn own_messages_are_not_unread_after_relogin() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "own");
    let conv = direct_conv(alice.id, bob.id);
    bob.send_direct(alice.id, "from bob").unwrap();
    wait_msg(&alice.c, "bob's message");
    alice.send_direct(bob.id, "mine 1").unwrap();
    alice.send_direct(bob.id, "mine 2").unwrap();
    alice.c.close();

    let again = s.client_with(|o| o.auto_ack = false);
    again.login(&alice.name, PASSWORD).unwrap();
    let mut replayed = Vec::new();
    loop {
        match again.next_event(T) {
            Some(Event::Message(m)) => replayed.push(m.body),
            Some(Event::SyncDone { .. }) => break,
            Some(Event::Closed) | None => panic!("no SyncDone"),
            Some(_) => {}
        }
    }
    assert!(
        replayed.is_empty(),
        "her own messages (and what came before them) count as read: {replayed:?}"
    );
    let i = info(&again, conv);
    assert_eq!((i.last_seq, i.read_seq, i.unread), (3, 3, 0));
}

#[test]
fn read_up_to_reaches_the_peer_once_per_ack_batch() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "rr");
    let conv = direct_conv(alice.id, bob.id);
    bob.set_auto_ack(false);
    let bob2 = quiet_device(&s, &bob);
    for i in 1..=3 {
        alice.send_direct(bob.id, &format!("m{i}")).unwrap();
    }
    for _ in 0..3 {
        wait_msg(&bob.c, "alice's messages");
    }
    // Acknowledged message by message, in one batch: one receipt.
    bob.ack(&[(conv, 1), (conv, 2), (conv, 3)]).unwrap();
    assert_eq!(read_receipts_until(&alice.c, conv, 3), vec![(bob.id, 3)]);
    // Bob's other device hears it too; the acking one does not.
    assert_eq!(read_receipts_until(&bob2, conv, 3), vec![(bob.id, 3)]);
    assert_quiet(&bob.c, "a receipt on the acking connection", |e| {
        matches!(e, Event::ReadUpTo { .. })
    });
    // An older or repeated ack announces nothing.
    bob.ack(&[(conv, 2), (conv, 3)]).unwrap();
    assert_quiet(&alice.c, "a receipt for nothing new", |e| {
        matches!(e, Event::ReadUpTo { .. })
    });
    assert_eq!(info(&alice.c, conv).peer_read_seq, 3);
    // What bob was not sent cannot be acknowledged as read.
    bob.ack(&[(conv, 99)]).unwrap();
    assert_quiet(
        &alice.c,
        "a receipt beyond what bob got",
        |e| matches!(e, Event::ReadUpTo { seq, .. } if *seq > 3),
    );
}

#[test]
fn group_read_cursors_per_member() {
    let s = TestServer::start();
    let alice = s.user(&uname("gr_a"));
    let bob = s.user(&uname("gr_b"));
    let carol = s.user(&uname("gr_c"));
    let dave = s.user(&uname("gr_d"));
    let (g, conv) = alice.create_group_conv(&uname("grp")).unwrap();
    bob.join_group(g).unwrap();
    carol.join_group(g).unwrap();
    bob.set_auto_ack(false);
    carol.set_auto_ack(false);
    for i in 1..=3 {
        alice.send_group(g, &format!("g{i}")).unwrap();
    }
    for _ in 0..3 {
        wait_msg(&bob.c, "group messages");
    }
    bob.ack(&[(conv, 2)]).unwrap();
    let mut want = vec![(alice.id, 3), (bob.id, 2), (carol.id, 0)];
    want.sort_unstable();
    assert_eq!(bob.read_cursors(conv).unwrap(), want);
    // Paged by user id.
    let (first, next) = bob.read_cursors_page(conv, 0, 1).unwrap();
    assert_eq!((first.as_slice(), next), (&want[..1], want[0].0));

    let i = info(&bob.c, conv);
    assert_eq!((i.group_id, i.peer, i.peer_read_seq), (g, 0, 0));
    assert_eq!((i.last_seq, i.read_seq, i.unread), (3, 2, 1));
    assert_eq!(info(&carol.c, conv).unread, 3);

    assert_code(dave.read_cursors(conv), ErrorCode::NotMember);
    // A direct conversation of others is not dave's either.
    assert_code(
        dave.read_cursors(direct_conv(alice.id, bob.id)),
        ErrorCode::NotMember,
    );
}

#[test]
fn typing_reaches_online_participants_only_and_is_never_stored() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "ty");
    let carol = s.user(&uname("ty_c"));
    let (g, conv) = alice.create_group_conv(&uname("tyg")).unwrap();
    bob.join_group(g).unwrap();
    carol.join_group(g).unwrap();
    carol.c.close();

    alice.typing(conv, false).unwrap();
    match wait(&bob.c, "alice typing in the group", |e| {
        matches!(e, Event::Typing { .. })
    }) {
        Event::Typing {
            conversation,
            group_id,
            user_id,
            username,
            stopped,
        } => {
            assert_eq!((conversation, group_id, user_id), (conv, g, alice.id));
            assert_eq!((username.as_str(), stopped), (alice.name.as_str(), false));
        }
        _ => unreachable!(),
    }
    assert_quiet(&alice.c, "the typist's own notification", |e| {
        matches!(e, Event::Typing { .. })
    });
    // Carol was offline: nothing waits for her.
    let carol2 = s.device(&carol);
    assert_quiet(&carol2, "a replayed typing notification", |e| {
        matches!(e, Event::Typing { .. })
    });

    // Direct: to the friend; stopping is relayed too.
    let d = direct_conv(alice.id, bob.id);
    alice.typing(d, true).unwrap();
    wait(&bob.c, "alice stopped typing to bob", |e| {
        matches!(e, Event::Typing { conversation, group_id: 0, stopped: true, user_id, .. }
            if *conversation == d && *user_id == alice.id)
    });
}

#[test]
fn typing_is_rate_limited_per_user() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "tl");
    let d = direct_conv(alice.id, bob.id);
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..40 {
        match alice.typing(d, false) {
            Ok(()) => ok += 1,
            Err(e) if e.code() == Some(ErrorCode::RateLimited) => limited += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(ok >= 1, "the first notifications go through");
    assert!(limited >= 1, "40 at once are more than the burst allows");
    assert!(ok < 40);
    // Only what was accepted reached bob (at most `ok` events).
    let mut got = 0;
    while bob
        .wait_for(QUIET, |e| matches!(e, Event::Typing { .. }))
        .is_some()
    {
        got += 1;
    }
    assert!(got >= 1 && got <= ok, "bob got {got}, {ok} accepted");
}

#[test]
fn typing_where_one_may_not_write_is_refused() {
    let s = TestServer::start();
    let (alice, bob) = pair(&s, "tn");
    let dave = s.user(&uname("tn_d"));
    let (g, conv) = alice.create_group_conv(&uname("tng")).unwrap();
    bob.join_group(g).unwrap();
    assert_code(dave.typing(conv, false), ErrorCode::NotMember);
    assert_code(
        dave.typing(direct_conv(dave.id, alice.id), false),
        ErrorCode::NotFriends,
    );
    assert_code(
        dave.typing(direct_conv(alice.id, bob.id), false),
        ErrorCode::NotMember,
    );
    assert_code(dave.typing(987_654, false), ErrorCode::NoSuchGroup);
    assert_quiet(&bob.c, "a refused typing notification", |e| {
        matches!(e, Event::Typing { .. })
    });
}

#[test]
fn a_long_conversation_list_comes_in_pages_within_the_frame_limit() {
    let s = TestServer::start_with(&["--max-frame", "4096"]);
    let (alice, bob) = pair(&s, "pg");
    let long = "é".repeat(1000);
    let mut convs = vec![direct_conv(alice.id, bob.id)];
    alice.send_direct(bob.id, &long).unwrap();
    for i in 0..30 {
        let name = format!("{}-{i:02}-{}", uname("pgg"), "x".repeat(30));
        let (g, conv) = alice
            .create_group_conv(&name[..name.len().min(64)])
            .unwrap();
        alice.send_group(g, &long).unwrap();
        convs.push(conv);
    }
    convs.sort_unstable();
    let (first, next) = alice.list_conversations_page(0, 0).unwrap();
    assert!(next != 0, "31 long entries do not fit one 4 KiB frame");
    assert!(!first.is_empty() && first.len() < 31);
    let all = alice.list_conversations().unwrap();
    let got: Vec<ConvId> = all.iter().map(|c| c.conversation).collect();
    assert_eq!(got, convs, "every conversation once, in id order");
    for c in &all {
        let m = c.last_message.as_ref().expect("a preview");
        assert!(c.preview_truncated);
        assert_eq!(m.body.chars().count(), ringchat::model::PREVIEW_CHARS);
        assert_eq!((c.unread, c.read_seq), (0, 1), "her own message is read");
    }
    // A limit is honoured too.
    let (two, _) = alice.list_conversations_page(0, 2).unwrap();
    assert_eq!(two.len(), 2);
}

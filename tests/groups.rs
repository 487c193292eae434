//! Groups: membership, roles, permissions and group messages.

mod common;

use common::*;
use ringchat::client::{Client, ErrorCode, Event, GroupEventKind};
use ringchat::model::{GroupId, UserId, group_conv};
use ringchat::store::Role;

fn group_event(kind: GroupEventKind, g: GroupId, who: UserId) -> impl FnMut(&Event) -> bool {
    move |e| {
        matches!(e, Event::Group { kind: k, group_id, user_id, .. }
            if *k == kind && *group_id == g && *user_id == who)
    }
}

fn actor_of(e: Event) -> UserId {
    match e {
        Event::Group { actor, .. } => actor,
        other => panic!("not a group event: {other:?}"),
    }
}

/// Owner plus members who joined (each join awaited by the owner).
fn group_with(owner: &User, members: &[&User]) -> GroupId {
    let g = owner.create_group(&uname("grp")).unwrap();
    for m in members {
        m.join_group(g).unwrap();
        wait(
            owner,
            "Joined",
            group_event(GroupEventKind::Joined, g, m.id),
        );
    }
    g
}

fn roles(c: &Client, g: GroupId) -> Vec<(UserId, Role)> {
    c.group_members(g)
        .unwrap()
        .into_iter()
        .map(|m| (m.user_id, m.role))
        .collect()
}

#[test]
fn creator_is_owner() {
    let s = TestServer::start();
    let alice = s.user(&uname("own"));
    let name = uname("team");
    let (g, conv) = alice.create_group_conv(&name).unwrap();
    assert_ne!(g, 0);
    assert_eq!(conv, group_conv(g));
    let groups = alice.list_groups().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group_id, g);
    assert_eq!(groups[0].name, name);
    assert_eq!(groups[0].role, Role::Owner);
    assert_eq!(groups[0].conversation, conv);
    let members = alice.group_members(g).unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, alice.id);
    assert_eq!(members[0].username, alice.name);
    assert_eq!(members[0].role, Role::Owner);
    assert!(members[0].online);
}

#[test]
fn group_names_are_unique_and_bounded() {
    let s = TestServer::start();
    let alice = s.user(&uname("nm_a"));
    let bob = s.user(&uname("nm_b"));
    let name = uname("dupgroup");
    alice.create_group(&name).unwrap();
    // Unique per owner (tests/group_privacy.rs): another owner may reuse it.
    assert_code(alice.create_group(&name), ErrorCode::NameTaken);
    bob.create_group(&name).unwrap();
    assert_code(alice.create_group(""), ErrorCode::InvalidName);
    assert_code(alice.create_group(&"n".repeat(65)), ErrorCode::InvalidName);
    alice.create_group(&"n".repeat(64)).unwrap();
}

#[test]
fn join_notifies_members_and_lists_roles() {
    let s = TestServer::start();
    let alice = s.user(&uname("jn_a"));
    let bob = s.user(&uname("jn_b"));
    let carol = s.user(&uname("jn_c"));
    let g = alice.create_group(&uname("jg")).unwrap();
    bob.join_group(g).unwrap();
    let e = wait(
        &alice,
        "bob Joined",
        group_event(GroupEventKind::Joined, g, bob.id),
    );
    assert_eq!(actor_of(e), bob.id);
    carol.join_group(g).unwrap();
    wait(
        &alice,
        "carol Joined",
        group_event(GroupEventKind::Joined, g, carol.id),
    );
    wait(
        &bob,
        "carol Joined",
        group_event(GroupEventKind::Joined, g, carol.id),
    );
    assert_code(bob.join_group(g), ErrorCode::AlreadyMember);
    assert_code(bob.join_group(9_999_999), ErrorCode::NoSuchGroup);
    let mut want = vec![
        (alice.id, Role::Owner),
        (bob.id, Role::Member),
        (carol.id, Role::Member),
    ];
    want.sort();
    let mut got = roles(&bob, g);
    got.sort();
    assert_eq!(got, want);
    let bg = bob.list_groups().unwrap();
    assert_eq!(bg.len(), 1);
    assert_eq!(bg[0].role, Role::Member);
}

#[test]
fn group_message_reaches_every_member_once_but_not_the_sending_connection() {
    let s = TestServer::start();
    let alice = s.user(&uname("gm_a"));
    let bob = s.user(&uname("gm_b"));
    let carol = s.user(&uname("gm_c"));
    let g = group_with(&alice, &[&bob, &carol]);
    // Raw delivery (no client-side dedup) on every observing connection.
    let raw = |name: &str| {
        let c = s.client_with(|o| o.dedup = false);
        login_synced(&c, name);
        c
    };
    let a1 = raw(&alice.name);
    let a2 = raw(&alice.name);
    let b2 = raw(&bob.name);
    let c2 = raw(&carol.name);
    let first = a1.send_group(g, "hello group").unwrap();
    assert_eq!(first.conversation, group_conv(g));
    assert!(!first.duplicate);
    // A second message is the barrier: once it is in, any duplicate of the
    // first would already have arrived (per-conversation order).
    let second = a1.send_group(g, "second").unwrap();
    assert_eq!(second.seq, first.seq + 1);
    for c in [&a2, &b2, &c2] {
        let got = c.wait_messages(2, T, |m| m.conversation == group_conv(g));
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![first.seq, second.seq]);
        assert_eq!(got[0].body, "hello group");
        assert_eq!(got[0].sender, alice.id);
        assert_eq!(got[0].sender_name, alice.name);
        assert_eq!(got[0].group_id, g);
        assert!(queued_messages(c).is_empty(), "duplicate delivery");
    }
    // Once a2 (same user, other device) has both, anything for a1 would
    // have arrived too.
    assert!(
        queued_messages(&a1).is_empty(),
        "sender's own connection got its message"
    );
    assert_quiet(&a1, "echo to the sending connection", |e| {
        matches!(e, Event::Message(_))
    });
}

#[test]
fn non_members_cannot_post_or_read() {
    let s = TestServer::start();
    let alice = s.user(&uname("nmb_a"));
    let eve = s.user(&uname("nmb_e"));
    let g = alice.create_group(&uname("priv")).unwrap();
    alice.send_group(g, "secret").unwrap();
    assert_code(eve.send_group(g, "let me in"), ErrorCode::NotMember);
    assert_code(eve.history(group_conv(g), 0, 50), ErrorCode::NotMember);
    assert_code(eve.group_members(g), ErrorCode::NotMember);
    assert_code(eve.send_group(9_999_999, "x"), ErrorCode::NoSuchGroup);
}

#[test]
fn joiner_gets_later_messages_and_history_from_the_join() {
    let s = TestServer::start();
    let alice = s.user(&uname("late_a"));
    // Bob does not acknowledge, so his catch-up shows where his cursor
    // started when he joined.
    let bob_name = uname("late_b");
    let bob = s.client_with(|o| o.auto_ack = false);
    bob.register(&bob_name, PASSWORD).unwrap();
    login_synced(&bob, &bob_name);
    let g = alice.create_group(&uname("lg")).unwrap();
    alice.send_group(g, "before bob").unwrap();
    bob.join_group(g).unwrap();
    let after = alice.send_group(g, "after bob").unwrap();
    let m = wait_msg(&bob, "message after join");
    assert_eq!((m.seq, m.body.as_str()), (after.seq, "after bob"));
    // A group without full_history shows a new member its messages from
    // the join on (security issue item 3; tests/group_privacy.rs).
    let h = bob.history(group_conv(g), 0, 50).unwrap();
    let bodies: Vec<&str> = h.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, vec!["after bob"]);
    drop(bob);
    let again = s.client();
    again.login(&bob_name, PASSWORD).unwrap();
    wait(&again, "SyncDone", |e| matches!(e, Event::SyncDone { .. }));
    let caught_up: Vec<String> = queued_messages(&again)
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(
        caught_up,
        vec!["after bob".to_string()],
        "catch-up must start at the join"
    );
}

#[test]
fn leave_notifies_and_stops_delivery() {
    let s = TestServer::start();
    let alice = s.user(&uname("lv_a"));
    let bob = s.user(&uname("lv_b"));
    let carol = s.user(&uname("lv_c"));
    let g = group_with(&alice, &[&bob, &carol]);
    wait(
        &bob,
        "carol Joined",
        group_event(GroupEventKind::Joined, g, carol.id),
    );
    bob.leave_group(g).unwrap();
    wait(&alice, "Left", group_event(GroupEventKind::Left, g, bob.id));
    wait(&carol, "Left", group_event(GroupEventKind::Left, g, bob.id));
    alice.send_group(g, "bob is gone").unwrap();
    assert_eq!(wait_msg(&carol, "message").body, "bob is gone");
    assert_quiet(&bob, "message after leaving", |e| {
        matches!(e, Event::Message(_))
    });
    assert_code(bob.send_group(g, "x"), ErrorCode::NotMember);
    assert_code(bob.leave_group(g), ErrorCode::NotMember);
    assert!(bob.list_groups().unwrap().is_empty());
    assert_code(alice.leave_group(g), ErrorCode::NotAllowed);
    assert_eq!(roles(&alice, g).len(), 2);
}

#[test]
fn owner_and_admin_remove_members_within_their_rights() {
    let s = TestServer::start();
    let owner = s.user(&uname("rmv_o"));
    let admin = s.user(&uname("rmv_ad"));
    let admin2 = s.user(&uname("rmv_a2"));
    let m1 = s.user(&uname("rmv_m1"));
    let m2 = s.user(&uname("rmv_m2"));
    let outsider = s.user(&uname("rmv_x"));
    let g = group_with(&owner, &[&admin, &admin2, &m1, &m2]);
    owner.set_admin(g, admin.id, true).unwrap();
    owner.set_admin(g, admin2.id, true).unwrap();

    // Plain members cannot remove; admins cannot remove the owner or admins.
    assert_code(m1.remove_member(g, m2.id), ErrorCode::NotAllowed);
    assert_code(admin.remove_member(g, owner.id), ErrorCode::NotAllowed);
    assert_code(admin.remove_member(g, admin2.id), ErrorCode::NotAllowed);
    assert_code(admin.remove_member(g, outsider.id), ErrorCode::NotMember);

    // The acting connection is covered by
    // `group_events_reach_every_session_of_the_actor`.
    admin.remove_member(g, m1.id).unwrap();
    for c in [&owner, &admin2, &m2, &m1] {
        let e = wait(c, "Removed", group_event(GroupEventKind::Removed, g, m1.id));
        assert_eq!(actor_of(e), admin.id);
    }
    assert_code(m1.send_group(g, "x"), ErrorCode::NotMember);

    owner.remove_member(g, admin2.id).unwrap();
    let e = wait(
        &admin2,
        "Removed",
        group_event(GroupEventKind::Removed, g, admin2.id),
    );
    assert_eq!(actor_of(e), owner.id);
    let mut got = roles(&owner, g);
    got.sort();
    let mut want = vec![
        (owner.id, Role::Owner),
        (admin.id, Role::Admin),
        (m2.id, Role::Member),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn only_the_owner_sets_admins() {
    let s = TestServer::start();
    let owner = s.user(&uname("adm_o"));
    let bob = s.user(&uname("adm_b"));
    let carol = s.user(&uname("adm_c"));
    let g = group_with(&owner, &[&bob, &carol]);
    assert_code(bob.set_admin(g, carol.id, true), ErrorCode::NotAllowed);
    owner.set_admin(g, bob.id, true).unwrap();
    for c in [&bob, &carol] {
        let e = wait(
            c,
            "RoleChanged",
            group_event(GroupEventKind::RoleChanged, g, bob.id),
        );
        assert_eq!(actor_of(e), owner.id);
    }
    assert!(roles(&carol, g).contains(&(bob.id, Role::Admin)));
    // Admins still cannot appoint admins.
    assert_code(bob.set_admin(g, carol.id, true), ErrorCode::NotAllowed);
    owner.set_admin(g, bob.id, false).unwrap();
    wait(
        &carol,
        "RoleChanged",
        group_event(GroupEventKind::RoleChanged, g, bob.id),
    );
    assert!(roles(&carol, g).contains(&(bob.id, Role::Member)));
}

#[test]
fn only_the_owner_dissolves() {
    let s = TestServer::start();
    let owner = s.user(&uname("dis_o"));
    let bob = s.user(&uname("dis_b"));
    let carol = s.user(&uname("dis_c"));
    let name = uname("doomed");
    let g = owner.create_group(&name).unwrap();
    for m in [&bob, &carol] {
        m.join_group(g).unwrap();
        wait(
            &owner,
            "Joined",
            group_event(GroupEventKind::Joined, g, m.id),
        );
    }
    owner.set_admin(g, bob.id, true).unwrap();
    assert_code(bob.dissolve_group(g), ErrorCode::NotAllowed);
    assert_code(carol.dissolve_group(g), ErrorCode::NotAllowed);
    owner.dissolve_group(g).unwrap();
    for c in [&bob, &carol] {
        wait(
            c,
            "Dissolved",
            |e| matches!(e, Event::Group { kind: GroupEventKind::Dissolved, group_id, .. } if *group_id == g),
        );
    }
    for c in [&owner, &bob, &carol] {
        assert!(c.list_groups().unwrap().is_empty());
    }
    assert_code(owner.send_group(g, "anyone?"), ErrorCode::NoSuchGroup);
    assert_code(bob.send_group(g, "anyone?"), ErrorCode::NoSuchGroup);
    assert_code(carol.join_group(g), ErrorCode::NoSuchGroup);
    assert_code(owner.dissolve_group(g), ErrorCode::NoSuchGroup);
    // The name is free again.
    assert_ne!(owner.create_group(&name).unwrap(), g);
}

/// PROTOCOL.md: group events go to every member, the one who acted
/// included; this checks both the actor's other device and the connection
/// that made the request.
#[test]
fn group_events_reach_every_session_of_the_actor() {
    let s = TestServer::start();
    let owner = s.user(&uname("act_o"));
    let bob = s.user(&uname("act_b"));
    let other_device = s.device(&owner);
    let g = group_with(&owner, &[&bob]);
    owner.set_admin(g, bob.id, true).unwrap();
    for (c, what) in [
        (&other_device, "other device"),
        (&owner.c, "acting connection"),
    ] {
        wait(
            c,
            &format!("RoleChanged on the owner's {what}"),
            group_event(GroupEventKind::RoleChanged, g, bob.id),
        );
    }
    owner.dissolve_group(g).unwrap();
    for (c, what) in [
        (&other_device, "other device"),
        (&owner.c, "acting connection"),
    ] {
        wait(
            c,
            &format!("Dissolved on the owner's {what}"),
            |e| matches!(e, Event::Group { kind: GroupEventKind::Dissolved, group_id, .. } if *group_id == g),
        );
    }
}

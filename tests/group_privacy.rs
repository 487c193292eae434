//! Private groups (join by invitation or approved request) and join points
//! (a new member sees a group's messages from when they joined, unless the
//! group shows its full history), over TCP against the real server.
//! Security issue item 3; the legacy side is in tests/legacy.rs.

mod common;

use common::*;
use ringchat::client::{ChatMsg, Client, ErrorCode, Event, GroupEventKind, Pending};
use ringchat::model::{GroupId, Seq, UserId, group_conv};
use ringchat::store::Role;

fn group_event(kind: GroupEventKind, g: GroupId, who: UserId) -> impl FnMut(&Event) -> bool {
    move |e| {
        matches!(e, Event::Group { kind: k, group_id, user_id, .. }
            if *k == kind && *group_id == g && *user_id == who)
    }
}

fn bodies(msgs: &[ChatMsg]) -> Vec<&str> {
    msgs.iter().map(|m| m.body.as_str()).collect()
}

/// Everything a fresh connection of `u` is replayed after resuming with
/// `since`, up to `SyncDone`.
fn caught_up(s: &TestServer, u: &User, since: &[(u64, Seq)]) -> Vec<ChatMsg> {
    let c = s.client();
    c.resume_since(&u.session.token, since).unwrap();
    let mut got = vec![];
    loop {
        match c.next_event(T) {
            Some(Event::Message(m)) => got.push(m),
            Some(Event::SyncDone { .. }) => return got,
            Some(_) => {}
            None => panic!("no SyncDone; got {got:?}"),
        }
    }
}

fn pending_of(c: &Client, g: GroupId) -> Vec<(UserId, Option<Pending>)> {
    c.group_members(g)
        .unwrap()
        .into_iter()
        .map(|m| (m.user_id, m.pending))
        .collect()
}

#[test]
fn a_private_group_is_joined_by_invitation_only() {
    let s = TestServer::start();
    let alice = s.user(&uname("pv_a"));
    let bob = s.user(&uname("pv_b"));
    let carol = s.user(&uname("pv_c"));
    let name = uname("secret");
    let (g, _) = alice.create_group_opts(&name, true, false).unwrap();
    let listed = alice.list_groups().unwrap();
    assert!(listed[0].private && !listed[0].full_history);

    // Uninvited: a join is a request, not a membership.
    assert_code(bob.join_group(g), ErrorCode::PendingApproval);
    wait(
        &alice,
        "JoinRequested",
        group_event(GroupEventKind::JoinRequested, g, bob.id),
    );
    assert_code(bob.join_group(g), ErrorCode::PendingApproval);
    assert_code(bob.send_group(g, "let me in"), ErrorCode::NotMember);
    assert_code(bob.group_members(g), ErrorCode::NotMember);
    assert_code(bob.history(group_conv(g), 0, 50), ErrorCode::NotMember);
    assert!(bob.list_groups().unwrap().is_empty());

    // Only an owner or admin invites; the invitee hears the group's name.
    alice.invite_to_group(g, carol.id).unwrap();
    let e = wait(
        &carol,
        "Invited",
        group_event(GroupEventKind::Invited, g, carol.id),
    );
    match e {
        Event::Group { actor, name: n, .. } => assert_eq!((actor, n), (alice.id, name.clone())),
        _ => unreachable!(),
    }
    assert_eq!(
        pending_of(&alice, g),
        vec![
            (alice.id, None),
            (bob.id, Some(Pending::Requested)),
            (carol.id, Some(Pending::Invited)),
        ]
    );
    carol.join_group(g).unwrap();
    wait(
        &alice,
        "carol Joined",
        group_event(GroupEventKind::Joined, g, carol.id),
    );
    assert_code(carol.invite_to_group(g, bob.id), ErrorCode::NotAllowed);
    assert_code(
        carol.respond_join_request(g, bob.id, true),
        ErrorCode::NotAllowed,
    );
    // A plain member does not see who waits at the door.
    assert_eq!(
        pending_of(&carol, g),
        vec![(alice.id, None), (carol.id, None)]
    );
    assert_code(alice.invite_to_group(g, carol.id), ErrorCode::AlreadyMember);
    assert_code(alice.invite_to_group(g, 9_999_999), ErrorCode::NoSuchUser);
    assert_code(alice.invite_to_group(g, 0), ErrorCode::NoSuchUser);
    // Inviting someone who asked lets them in at once.
    alice.invite_to_group(g, bob.id).unwrap();
    wait(
        &bob,
        "bob Joined",
        group_event(GroupEventKind::Joined, g, bob.id),
    );
    bob.send_group(g, "in").unwrap();
    let mut ids: Vec<_> = alice
        .group_members(g)
        .unwrap()
        .into_iter()
        .map(|m| (m.user_id, m.role, m.pending))
        .collect();
    ids.sort_by_key(|x| x.0);
    assert_eq!(
        ids,
        vec![
            (alice.id, Role::Owner, None),
            (bob.id, Role::Member, None),
            (carol.id, Role::Member, None)
        ]
    );
}

#[test]
fn join_requests_are_approved_or_rejected_by_owners_and_admins() {
    let s = TestServer::start();
    let alice = s.user(&uname("rq_a"));
    let adm = s.user(&uname("rq_adm"));
    let bob = s.user(&uname("rq_b"));
    let (g, _) = alice
        .create_group_opts(&uname("club"), true, false)
        .unwrap();
    alice.invite_to_group(g, adm.id).unwrap();
    adm.join_group(g).unwrap();
    alice.set_admin(g, adm.id, true).unwrap();
    wait(
        &adm,
        "RoleChanged",
        group_event(GroupEventKind::RoleChanged, g, adm.id),
    );

    assert_code(
        adm.respond_join_request(g, bob.id, true),
        ErrorCode::NoSuchRequest,
    );
    assert_code(bob.join_group(g), ErrorCode::PendingApproval);
    // Both the owner and the admin are told.
    wait(
        &alice,
        "JoinRequested",
        group_event(GroupEventKind::JoinRequested, g, bob.id),
    );
    wait(
        &adm,
        "JoinRequested",
        group_event(GroupEventKind::JoinRequested, g, bob.id),
    );
    adm.respond_join_request(g, bob.id, false).unwrap();
    wait(
        &bob,
        "JoinRejected",
        group_event(GroupEventKind::JoinRejected, g, bob.id),
    );
    assert_code(bob.send_group(g, "x"), ErrorCode::NotMember);
    assert_code(
        alice.respond_join_request(g, bob.id, true),
        ErrorCode::NoSuchRequest,
    );
    // Asking again, and approved this time.
    assert_code(bob.join_group(g), ErrorCode::PendingApproval);
    alice.respond_join_request(g, bob.id, true).unwrap();
    wait(
        &bob,
        "Joined",
        group_event(GroupEventKind::Joined, g, bob.id),
    );
    bob.send_group(g, "thanks").unwrap();
    assert_eq!(wait_msg(&adm, "bob's message").body, "thanks");
    assert_code(bob.join_group(g), ErrorCode::AlreadyMember);
    // Public groups are still joined at once.
    let p = alice.create_group(&uname("open")).unwrap();
    bob.join_group(p).unwrap();
}

/// History and catch-up of a new member start at their join point, in a
/// public group too; a device cannot ask for more with `since`. Members
/// from before keep their full view.
#[test]
fn new_members_see_messages_from_their_join_point() {
    let s = TestServer::start();
    let alice = s.user(&uname("jp_a"));
    let bob = s.user(&uname("jp_b"));
    let g = alice.create_group(&uname("pub")).unwrap();
    let conv = group_conv(g);
    alice.send_group(g, "before 1").unwrap();
    alice.send_group(g, "before 2").unwrap();
    bob.join_group(g).unwrap();
    wait(
        &alice,
        "bob Joined",
        group_event(GroupEventKind::Joined, g, bob.id),
    );
    alice.send_group(g, "after").unwrap();
    wait_msg(&bob, "live message");

    assert_eq!(bodies(&bob.history(conv, 0, 50).unwrap()), vec!["after"]);
    assert!(bob.history(conv, 3, 50).unwrap().is_empty());
    assert_eq!(
        bodies(&alice.history(conv, 0, 50).unwrap()),
        vec!["before 1", "before 2", "after"]
    );
    // A device that claims to have seen nothing is replayed only from the
    // join point.
    assert_eq!(bodies(&caught_up(&s, &bob, &[(conv, 0)])), vec!["after"]);
    assert_eq!(
        bodies(&caught_up(&s, &alice, &[(conv, 0)])),
        vec!["before 1", "before 2", "after"]
    );
    // Leaving and joining again moves the join point.
    bob.leave_group(g).unwrap();
    alice.send_group(g, "while away").unwrap();
    bob.join_group(g).unwrap();
    assert!(bob.history(conv, 0, 50).unwrap().is_empty());
    assert!(caught_up(&s, &bob, &[(conv, 0)]).is_empty());
}

#[test]
fn a_full_history_group_shows_new_members_its_past() {
    let s = TestServer::start();
    let alice = s.user(&uname("fh_a"));
    let bob = s.user(&uname("fh_b"));
    let (g, conv) = alice.create_group_opts(&uname("fh"), true, true).unwrap();
    alice.send_group(g, "old news").unwrap();
    alice.invite_to_group(g, bob.id).unwrap();
    bob.join_group(g).unwrap();
    alice.send_group(g, "new news").unwrap();
    wait_msg(&bob, "live message");
    assert_eq!(
        bodies(&bob.history(conv, 0, 50).unwrap()),
        vec!["old news", "new news"]
    );
    // Login catch-up still starts at the join point (the past is History's).
    let c = s.client();
    c.resume(&bob.session.token).unwrap();
    let mut replayed = vec![];
    loop {
        match c.next_event(T) {
            Some(Event::Message(m)) => replayed.push(m),
            Some(Event::SyncDone { .. }) => break,
            Some(_) => {}
            None => panic!("no SyncDone"),
        }
    }
    assert!(
        replayed.iter().all(|m| m.body != "old news"),
        "{replayed:?}"
    );
}

#[test]
fn group_names_are_unique_per_owner() {
    let s = TestServer::start();
    let alice = s.user(&uname("un_a"));
    let bob = s.user(&uname("un_b"));
    let name = uname("samename");
    let ga = alice.create_group(&name).unwrap();
    // Another owner may use the same name: nobody can squat a name.
    let gb = bob.create_group(&name).unwrap();
    assert_ne!(ga, gb);
    assert_code(alice.create_group(&name), ErrorCode::NameTaken);
    assert_code(
        alice.create_group_opts(&name, true, false),
        ErrorCode::NameTaken,
    );
    alice.dissolve_group(ga).unwrap();
    alice.create_group(&name).unwrap();
}

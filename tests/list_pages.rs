//! List replies stay within the advertised `max_frame` and page through
//! everything exactly once (security issue item 8): ListGroups, ListFriends,
//! GroupMembers, SearchUsers and History, over TCP, frame sizes measured on
//! the raw socket.

mod common;

use common::*;
use ringchat::model::{UserId, group_conv};
use ringchat::wire::{self, fb};

const USERS: usize = 3000;
const GROUPS: usize = 2500;

/// A raw connection logged in as `name`, past its catch-up.
fn raw_login(s: &TestServer, name: &str) -> Raw {
    let mut r = Raw::hello(s.addr);
    let f = r.enc.login(1, name, PASSWORD).to_vec();
    r.write(&f);
    loop {
        let got = r.read().expect("login and catch-up");
        assert_ne!(got.body, fb::Body::ErrorReply, "{got:?}");
        if got.body == fb::Body::SyncDone {
            return r;
        }
    }
}

/// Sends `frame` (request id `req_id`) and returns its reply, checking that
/// it fits the frame size the server advertises.
fn ask(r: &mut Raw, req_id: u64, frame: Vec<u8>, max_frame: usize) -> RawFrame {
    r.write(&frame);
    loop {
        let got = r.read().expect("a reply");
        assert!(
            got.bytes.len() <= max_frame,
            "a {:?} frame of {} bytes exceeds max_frame {max_frame}",
            got.body,
            got.bytes.len()
        );
        if got.req_id == req_id {
            assert_ne!(got.body, fb::Body::ErrorReply, "{got:?}");
            return got;
        }
    }
}

#[test]
fn list_replies_fit_max_frame_and_page_through_everything_once() {
    let mut s = TestServer::start();
    let me_name = uname("pg_me");
    let me = s.user(&me_name);
    let max_frame = me.hello().max_frame as usize;
    drop(me);
    // Provision straight into the store while the server is stopped (one
    // transaction): long names make the pages fill the frame.
    s.stop();
    let me_idx = USERS;
    let mut names: Vec<String> = (0..USERS)
        .map(|i| format!("pg{i:05}_{}", "n".repeat(24)))
        .collect();
    names.push(me_name.clone());
    let pairs: Vec<(usize, usize)> = (0..GROUPS).map(|i| (me_idx, i)).collect();
    // GROUPS groups of two (owned by another, `me` a member), and one group
    // of everybody owned by `me`.
    let mut groups: Vec<(String, Vec<usize>)> = (0..GROUPS)
        .map(|i| {
            (
                format!("pg-group-{i:05}-{}", "g".repeat(40)),
                vec![i, me_idx],
            )
        })
        .collect();
    let mut all = vec![me_idx];
    all.extend(0..USERS);
    groups.push(("pg-everybody".to_string(), all));
    let (ids, gids) = {
        let store = ringchat::store::open("", &s.data_dir).unwrap();
        // One fast hash for all: logins here test paging, not passwords.
        let hash = ringchat::provision::hash(PASSWORD, true).unwrap();
        let hashes = vec![hash; names.len()];
        store
            .provision_bulk(&hashes, &names, &pairs, &groups)
            .unwrap()
    };
    s.start_again();
    let mut r = raw_login(&s, &me_name);
    let mut req = 10;

    // ListGroups: every group once, in order, each page within a frame.
    for limit in [0u32, 1_000_000] {
        let mut got = Vec::new();
        let mut after = 0;
        let mut pages = 0;
        loop {
            req += 1;
            let f = r.enc.list_groups_page(req, after, limit).to_vec();
            let reply = ask(&mut r, req, f, max_frame);
            let env = wire::decode(&reply.bytes).unwrap();
            let l = env.body_as_group_list().expect("GroupList");
            got.extend(l.groups().unwrap().iter().map(|g| g.group_id()));
            pages += 1;
            if l.next_after_id() == 0 {
                break;
            }
            after = l.next_after_id();
        }
        let mut want = gids.clone();
        want.sort_unstable();
        assert_eq!(got, want, "ListGroups limit {limit}");
        assert!(pages > 1, "{} groups in one page", got.len());
    }

    // ListFriends.
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        req += 1;
        let f = r.enc.list_friends_page(req, after, 5000).to_vec();
        let reply = ask(&mut r, req, f, max_frame);
        let env = wire::decode(&reply.bytes).unwrap();
        let l = env.body_as_friend_list().expect("FriendList");
        got.extend(l.friends().unwrap().iter().map(|f| f.user_id()));
        if l.next_after_id() == 0 {
            break;
        }
        after = l.next_after_id();
    }
    let mut want: Vec<UserId> = ids[..GROUPS].to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "ListFriends");

    // GroupMembers of the big group.
    let big = *gids.last().unwrap();
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        req += 1;
        let f = r.enc.group_members_page(req, big, after, 0).to_vec();
        let reply = ask(&mut r, req, f, max_frame);
        let env = wire::decode(&reply.bytes).unwrap();
        let l = env.body_as_member_list().expect("MemberList");
        got.extend(l.members().unwrap().iter().map(|m| m.user_id()));
        if l.next_after_id() == 0 {
            break;
        }
        after = l.next_after_id();
    }
    let mut want = ids.clone();
    want.sort_unstable();
    assert_eq!(got, want, "GroupMembers");

    // SearchUsers: its page size is capped too.
    req += 1;
    let f = r.enc.search_users(req, "pg", 0, 1_000_000).to_vec();
    let reply = ask(&mut r, req, f, max_frame);
    let env = wire::decode(&reply.bytes).unwrap();
    let l = env.body_as_user_list().expect("UserList");
    assert!(l.next_after_id() != 0 && !l.users().unwrap().is_empty());

    // History: pages of large messages stay within the frame as well.
    let body = "h".repeat(max_frame / 3);
    for i in 0..4u64 {
        req += 1;
        let f = r.enc.send_message(req, 0, big, 100 + i, &body).to_vec();
        ask(&mut r, req, f, max_frame);
    }
    req += 1;
    let f = r.enc.history(req, group_conv(big), 0, 200).to_vec();
    let reply = ask(&mut r, req, f, max_frame);
    let env = wire::decode(&reply.bytes).unwrap();
    let n = env.body_as_messages().unwrap().messages().unwrap().len();
    assert!((1..4).contains(&n), "{n} messages of {} bytes", body.len());
}

//! Backend-independent conformance suite for [`Store`].
//!
//! Every backend runs every check (the SQLite tests run each on a fresh
//! database; see `store::sqlite::tests`). The checks only use the trait, so
//! they pin down the contract, not an implementation. They panic on failure.
//!
//! Each check uses its own user and group names and only conversations it
//! created, so all checks can also run one after another on a single store
//! ([`run_all`]); a single check cannot run twice on the same store (its
//! names would already be taken).
//!
//! Not `cfg(test)`: integration tests and other backends call it.

use super::*;
use crate::model::{direct_conv, group_conv};
use std::sync::Arc;

/// A conformance check: panics if `store` breaks the contract.
pub type Check = fn(&dyn Store);

/// Calls `$m!(check_users, check_search_users, ...)` with every check, so
/// each backend expands one `#[test]` per check from this single list.
#[macro_export]
macro_rules! for_each_conformance_check {
    ($m:ident) => {
        $m!(
            check_users,
            check_search_users,
            check_sessions,
            check_pairs,
            check_friends_of,
            check_groups,
            check_group_members,
            check_write_batch_atomic,
            check_cursors,
            check_conv_tail,
            check_messages_after_and_history,
            check_conversations_of,
            check_body_roundtrip,
            check_concurrent_access,
            check_legacy_ids_and_desc,
            check_disable_and_revoke,
            check_session_expiry_and_revocation,
            check_password_changes,
            check_group_privacy,
            check_conversation_list,
        );
    };
}

/// Every check that needs only a store, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("check_users", check_users),
    ("check_search_users", check_search_users),
    ("check_sessions", check_sessions),
    ("check_pairs", check_pairs),
    ("check_friends_of", check_friends_of),
    ("check_groups", check_groups),
    ("check_group_members", check_group_members),
    ("check_write_batch_atomic", check_write_batch_atomic),
    ("check_cursors", check_cursors),
    ("check_conv_tail", check_conv_tail),
    (
        "check_messages_after_and_history",
        check_messages_after_and_history,
    ),
    ("check_conversations_of", check_conversations_of),
    ("check_body_roundtrip", check_body_roundtrip),
    ("check_concurrent_access", check_concurrent_access),
    ("check_legacy_ids_and_desc", check_legacy_ids_and_desc),
    ("check_disable_and_revoke", check_disable_and_revoke),
    (
        "check_session_expiry_and_revocation",
        check_session_expiry_and_revocation,
    ),
    ("check_password_changes", check_password_changes),
    ("check_group_privacy", check_group_privacy),
    ("check_conversation_list", check_conversation_list),
];

/// Runs every check in [`CHECKS`] against one store. [`check_survives_reopen`]
/// needs a way to reopen and is run separately.
pub fn run_all(store: &dyn Store) {
    for (name, check) in CHECKS {
        eprintln!("conformance: {name}");
        check(store);
    }
}

fn user(s: &dyn Store, name: &str) -> UserId {
    s.create_user(name, &format!("$argon2id$v=19$hash-of-{name}"))
        .unwrap_or_else(|e| panic!("create_user({name}): {e}"))
}

fn msg(conv: ConvId, seq: Seq, sender: UserId, body: &str) -> StoredMessage {
    StoredMessage {
        conv,
        seq,
        sender,
        timestamp_ms: 1_700_000_000_000 + seq,
        client_msg_id: 1000 + seq,
        body: body.to_string(),
        sender_name: String::new(),
    }
}

fn write_msgs(s: &dyn Store, msgs: &[StoredMessage]) {
    let ops: Vec<WriteOp> = msgs.iter().cloned().map(WriteOp::Message).collect();
    s.write_batch(&ops).expect("write_batch");
}

fn seqs(msgs: &[StoredMessage]) -> Vec<Seq> {
    msgs.iter().map(|m| m.seq).collect()
}

fn cursor_of(s: &dyn Store, user: UserId, conv: ConvId) -> Option<Seq> {
    s.conversations_of(user)
        .expect("conversations_of")
        .into_iter()
        .find(|c| c.conv == conv)
        .map(|c| c.delivered)
}

/// Sets the relationship between `me` and `other` as seen from `me`, mapping
/// it onto the stored `lo < hi` orientation.
#[allow(clippy::too_many_arguments)]
fn relate(
    s: &dyn Store,
    me: UserId,
    other: UserId,
    friends: bool,
    me_requests: bool,
    other_requests: bool,
    me_blocks: bool,
    other_blocks: bool,
    note: &str,
) {
    let (lo, hi) = (me.min(other), me.max(other));
    let me_lo = me == lo;
    let state = PairState {
        friends,
        request_lo_to_hi: if me_lo { me_requests } else { other_requests },
        request_hi_to_lo: if me_lo { other_requests } else { me_requests },
        lo_blocks_hi: if me_lo { me_blocks } else { other_blocks },
        hi_blocks_lo: if me_lo { other_blocks } else { me_blocks },
    };
    s.set_pair(
        lo,
        hi,
        &PairRecord {
            state,
            note: note.to_string(),
        },
    )
    .expect("set_pair");
}

pub fn check_users(s: &dyn Store) {
    let a = user(s, "cu_alice");
    let b = user(s, "cu_bob");
    assert!(a > 0 && b > 0 && a != b, "ids {a} {b}");
    assert!(
        matches!(
            s.create_user("cu_alice", "other"),
            Err(StoreError::Conflict)
        ),
        "duplicate username must be Conflict"
    );
    // Names compare exactly: a different case is a different name.
    let upper = user(s, "cu_ALICE");
    assert_ne!(upper, a);

    let rec = s.user_by_name("cu_alice").unwrap().expect("alice by name");
    assert_eq!(
        rec,
        UserRecord {
            id: a,
            username: "cu_alice".into(),
            password_hash: "$argon2id$v=19$hash-of-cu_alice".into(),
            disabled: false,
        }
    );
    assert_eq!(
        s.user_by_id(b).unwrap().expect("bob by id").username,
        "cu_bob"
    );
    assert_eq!(s.user_by_id(upper).unwrap().unwrap().username, "cu_ALICE");
    assert_eq!(s.user_by_name("cu_nobody").unwrap(), None);
    assert_eq!(s.user_by_id(crate::model::MAX_USER_ID).unwrap(), None);
    // The failed duplicate left the original untouched.
    assert_eq!(
        s.user_by_name("cu_alice").unwrap().unwrap().password_hash,
        "$argon2id$v=19$hash-of-cu_alice"
    );
}

pub fn check_search_users(s: &dyn Store) {
    let a_b = user(s, "srch_a_b");
    let axb = user(s, "srch_axb");
    let pct = user(s, "srch_a%c");
    let abc = user(s, "srch_abc");
    let bsl = user(s, "srch\\x");
    let up = user(s, "SRCH_Upper");
    let _other = user(s, "xsrch_not_a_prefix_match");

    let names = |v: Vec<(UserId, String)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();

    // `_` and `%` are literal.
    assert_eq!(names(s.search_users("srch_a_", 0, 10).unwrap()), vec![a_b]);
    assert_eq!(names(s.search_users("srch_a%", 0, 10).unwrap()), vec![pct]);
    assert_eq!(names(s.search_users("srch_ax", 0, 10).unwrap()), vec![axb]);
    // So is the backslash (a typical LIKE escape character).
    assert_eq!(names(s.search_users("srch\\", 0, 10).unwrap()), vec![bsl]);
    assert_eq!(
        s.search_users("srch_ab", 0, 10).unwrap(),
        vec![(abc, "srch_abc".to_string())]
    );
    // ASCII case is ignored; a mid-name match is not a prefix match.
    let all = vec![a_b, axb, pct, abc, bsl, up];
    assert_eq!(names(s.search_users("srch", 0, 100).unwrap()), all);
    assert_eq!(names(s.search_users("SrCh", 0, 100).unwrap()), all);
    assert!(s.search_users("rch", 0, 100).unwrap().is_empty());

    // Paging: ordered by id, `after_id` exclusive, `limit` respected.
    let p1 = names(s.search_users("srch", 0, 4).unwrap());
    assert_eq!(p1, all[..4]);
    let p2 = names(s.search_users("srch", *p1.last().unwrap(), 4).unwrap());
    assert_eq!(p2, all[4..]);
    assert!(s.search_users("srch", up, 4).unwrap().is_empty());
    assert!(s.search_users("srch", 0, 0).unwrap().is_empty());

    // `after_id` over the whole u64 range (SQLite keeps ids as i64).
    for after in [I63 - 1, I63, I63 + 1, u64::MAX] {
        assert!(
            s.search_users("srch", after, 100).unwrap().is_empty(),
            "after_id {after}"
        );
    }
    assert_eq!(
        names(s.search_users("srch", all[0], 100).unwrap()),
        all[1..]
    );
    assert!(
        s.search_users("srch", u32::MAX as u64, 100)
            .unwrap()
            .is_empty()
    );
}

/// 2^63: the first `u64` that is negative as an `i64`.
const I63: u64 = 1 << 63;

pub fn check_sessions(s: &dyn Store) {
    let a = user(s, "cs_alice");
    let b = user(s, "cs_bob");
    let ta = [0xAAu8; 32];
    let mut tb = [0xAAu8; 32];
    tb[31] = 0; // differs in the last byte only; also contains a NUL
    s.create_session(&ta, a, 1).unwrap();
    s.create_session(&tb, b, 2).unwrap();
    assert_eq!(s.session_user(&ta).unwrap(), Some(a));
    assert_eq!(s.session_user(&tb).unwrap(), Some(b));
    assert_eq!(s.session_user(&[0xAA; 31]).unwrap(), None);
    assert!(
        s.create_session(&ta, b, 3).is_err(),
        "a token hash cannot be reused"
    );
    assert_eq!(s.session_user(&ta).unwrap(), Some(a));
    s.delete_session(&ta).unwrap();
    assert_eq!(s.session_user(&ta).unwrap(), None);
    assert_eq!(s.session_user(&tb).unwrap(), Some(b));
    s.delete_session(&ta).unwrap(); // deleting twice is fine
}

pub fn check_session_expiry_and_revocation(s: &dyn Store) {
    let a = user(s, "cx_alice");
    let b = user(s, "cx_bob");
    let t = |n: u8| [n; 32];
    // Late times: the sweep below also deletes the (earlier) tokens of
    // checks that ran before on the same store; none looks at them again.
    let base = 1u64 << 50;
    s.create_session(&t(1), a, base).unwrap();
    s.create_session(&t(2), a, base).unwrap();
    s.create_session(&t(3), a, base).unwrap();
    s.create_session(&t(4), b, base).unwrap();
    // Used within the TTL: valid, and the use starts the time again.
    assert_eq!(s.use_session(&t(1), base + 900, 1000).unwrap(), Some(a));
    assert_eq!(s.use_session(&t(1), base + 1800, 1000).unwrap(), Some(a));
    // A use right after another is a read only: the stored time stays
    // +1800, so the token expires 1000 after that, not after this use.
    assert_eq!(s.use_session(&t(1), base + 1850, 1000).unwrap(), Some(a));
    assert_eq!(s.use_session(&t(1), base + 2790, 1000).unwrap(), Some(a));
    // Not used for the TTL: refused and deleted.
    assert_eq!(s.use_session(&t(2), base + 1000, 1000).unwrap(), None);
    assert_eq!(s.session_user(&t(2)).unwrap(), None);
    // TTL 0: never expires; a use never moves the time backwards.
    assert_eq!(s.use_session(&t(3), base + 10_000_000, 0).unwrap(), Some(a));
    assert_eq!(s.use_session(&t(3), base + 5, 0).unwrap(), Some(a));
    assert_eq!(s.use_session(&[9; 32], base, 1000).unwrap(), None);
    // The sweep deletes what was last used before the bound.
    assert!(s.delete_sessions_unused_since(base + 1000).unwrap() >= 1); // t(4)
    assert_eq!(s.session_user(&t(4)).unwrap(), None);
    assert_eq!(s.session_user(&t(1)).unwrap(), Some(a));
    assert_eq!(s.session_user(&t(3)).unwrap(), Some(a));
    // Revoking all of a user's sessions but one, then all.
    s.create_session(&t(5), a, base).unwrap();
    s.create_session(&t(6), b, base).unwrap();
    assert_eq!(s.delete_user_sessions(a, Some(&t(1))).unwrap(), 2); // t(3), t(5)
    assert_eq!(s.session_user(&t(1)).unwrap(), Some(a));
    assert_eq!(s.session_user(&t(3)).unwrap(), None);
    assert_eq!(s.session_user(&t(6)).unwrap(), Some(b));
    assert_eq!(s.delete_user_sessions(a, None).unwrap(), 1);
    assert_eq!(s.session_user(&t(1)).unwrap(), None);
    assert_eq!(s.session_user(&t(6)).unwrap(), Some(b));
}

pub fn check_password_changes(s: &dyn Store) {
    let a = s.create_user("cw_alice", "hash-1").unwrap();
    let b = s.create_user("cw_bob", "hash-b").unwrap();
    let t = |n: u8| [n; 32];
    s.create_session(&t(21), a, 1).unwrap();
    s.create_session(&t(22), a, 1).unwrap();
    s.create_session(&t(23), b, 1).unwrap();
    // A change keeps the caller's session only.
    s.set_password(a, "hash-2", Some(&t(21))).unwrap();
    let rec = s.user_by_id(a).unwrap().unwrap();
    assert_eq!(rec.password_hash, "hash-2");
    assert_eq!(s.session_user(&t(21)).unwrap(), Some(a));
    assert_eq!(s.session_user(&t(22)).unwrap(), None);
    assert_eq!(s.session_user(&t(23)).unwrap(), Some(b));
    // An upgrade applies only over the hash it was computed from.
    assert!(
        !s.upgrade_password_hash(a, "hash-1", "hash-1-strong")
            .unwrap()
    );
    assert_eq!(s.user_by_id(a).unwrap().unwrap().password_hash, "hash-2");
    assert!(
        s.upgrade_password_hash(a, "hash-2", "hash-2-strong")
            .unwrap()
    );
    assert_eq!(
        s.user_by_name("cw_alice").unwrap().unwrap().password_hash,
        "hash-2-strong"
    );
    assert_eq!(s.user_by_id(b).unwrap().unwrap().password_hash, "hash-b");
    s.set_password(a, "hash-3", None).unwrap();
    assert_eq!(s.session_user(&t(21)).unwrap(), None);
}

pub fn check_pairs(s: &dyn Store) {
    let lo = user(s, "cp_lo");
    let hi = user(s, "cp_hi");
    assert!(lo < hi);
    let conv = direct_conv(lo, hi);
    assert_eq!(s.get_pair(lo, hi).unwrap(), PairRecord::default());

    let req = PairRecord {
        state: PairState {
            request_lo_to_hi: true,
            hi_blocks_lo: false,
            ..Default::default()
        },
        note: "salut l'ami \"😀\"".into(),
    };
    s.set_pair(lo, hi, &req).unwrap();
    assert_eq!(s.get_pair(lo, hi).unwrap(), req);
    assert_eq!(
        cursor_of(s, lo, conv),
        None,
        "no conversation before friendship"
    );
    assert_eq!(cursor_of(s, hi, conv), None);

    // Every bit round-trips independently.
    for bit in 0..5 {
        let st = PairState {
            friends: false,
            request_lo_to_hi: bit == 0,
            request_hi_to_lo: bit == 1,
            lo_blocks_hi: bit == 2,
            hi_blocks_lo: bit == 3,
        };
        let rec = PairRecord {
            state: st,
            note: format!("n{bit}"),
        };
        s.set_pair(lo, hi, &rec).unwrap();
        assert_eq!(s.get_pair(lo, hi).unwrap(), rec, "bit {bit}");
    }

    let friends = PairRecord {
        state: PairState {
            friends: true,
            ..Default::default()
        },
        note: String::new(),
    };
    s.set_pair(lo, hi, &friends).unwrap();
    assert_eq!(s.get_pair(lo, hi).unwrap(), friends);
    assert_eq!(cursor_of(s, lo, conv), Some(0));
    assert_eq!(cursor_of(s, hi, conv), Some(0));

    // Re-setting keeps existing cursors.
    s.write_batch(&[WriteOp::Cursor {
        user: lo,
        conv,
        seq: 5,
    }])
    .unwrap();
    s.set_pair(lo, hi, &friends).unwrap();
    assert_eq!(cursor_of(s, lo, conv), Some(5));
    assert_eq!(cursor_of(s, hi, conv), Some(0));

    // Ending the friendship keeps the rows.
    s.set_pair(lo, hi, &PairRecord::default()).unwrap();
    assert_eq!(s.get_pair(lo, hi).unwrap(), PairRecord::default());
    assert_eq!(cursor_of(s, lo, conv), Some(5));
    assert_eq!(cursor_of(s, hi, conv), Some(0));
}

pub fn check_friends_of(s: &dyn Store) {
    // `me` sits in the middle so relations are stored both as lo and as hi.
    let f_lo = user(s, "cf_friend_lo");
    let inc_lo = user(s, "cf_incoming_lo");
    let me = user(s, "cf_me");
    let out_hi = user(s, "cf_outgoing_hi");
    let blk_hi = user(s, "cf_blocked_hi");
    let blocks_me = user(s, "cf_blocks_me");
    let both = user(s, "cf_friend_and_blocked");
    let mutual_req = user(s, "cf_mutual_request");
    let nothing = user(s, "cf_nothing");

    relate(s, me, f_lo, true, false, false, false, false, "");
    relate(
        s,
        me,
        inc_lo,
        false,
        false,
        true,
        false,
        false,
        "let's talk",
    );
    relate(s, me, out_hi, false, true, false, false, false, "hello 👋");
    relate(s, me, blk_hi, false, false, false, true, false, "");
    relate(s, me, blocks_me, false, false, false, false, true, "");
    relate(s, me, both, true, false, false, true, false, "");
    relate(s, me, mutual_req, false, true, true, false, false, "both");
    relate(s, me, nothing, false, false, false, false, false, "");

    let row = |id, name: &str, kind, note: &str| FriendRow {
        user_id: id,
        username: name.into(),
        kind,
        note: note.into(),
    };
    assert_eq!(
        s.friends_of(me).unwrap(),
        vec![
            row(f_lo, "cf_friend_lo", FriendKind::Friend, ""),
            row(inc_lo, "cf_incoming_lo", FriendKind::Incoming, "let's talk"),
            row(out_hi, "cf_outgoing_hi", FriendKind::Outgoing, "hello 👋"),
            row(blk_hi, "cf_blocked_hi", FriendKind::Blocked, ""),
            // `blocks_me` is absent: `me` must not learn about the block.
            row(both, "cf_friend_and_blocked", FriendKind::Blocked, ""),
            row(
                mutual_req,
                "cf_mutual_request",
                FriendKind::Incoming,
                "both"
            ),
        ]
    );

    // The other sides.
    assert_eq!(
        s.friends_of(f_lo).unwrap(),
        vec![row(me, "cf_me", FriendKind::Friend, "")]
    );
    assert_eq!(
        s.friends_of(inc_lo).unwrap(),
        vec![row(me, "cf_me", FriendKind::Outgoing, "let's talk")]
    );
    assert_eq!(
        s.friends_of(out_hi).unwrap(),
        vec![row(me, "cf_me", FriendKind::Incoming, "hello 👋")]
    );
    assert!(s.friends_of(blk_hi).unwrap().is_empty());
    assert_eq!(
        s.friends_of(blocks_me).unwrap(),
        vec![row(me, "cf_me", FriendKind::Blocked, "")]
    );
    assert_eq!(
        s.friends_of(both).unwrap(),
        vec![row(me, "cf_me", FriendKind::Friend, "")]
    );
    assert!(s.friends_of(nothing).unwrap().is_empty());

    // Friendship gave both sides a conversation.
    assert_eq!(cursor_of(s, me, direct_conv(me, f_lo)), Some(0));
    assert_eq!(cursor_of(s, f_lo, direct_conv(f_lo, me)), Some(0));
    assert_eq!(cursor_of(s, me, direct_conv(me, inc_lo)), None);
}

pub fn check_groups(s: &dyn Store) {
    let owner = user(s, "cg_owner");
    let g = s.create_group("cg_team 'one'", owner).unwrap();
    let rec = GroupRecord {
        id: g,
        name: "cg_team 'one'".into(),
        owner,
        dissolved: false,
        private: false,
        full_history: false,
    };
    assert_eq!(s.get_group(g).unwrap(), Some(rec.clone()));
    assert_eq!(s.get_group(g + 1_000_000).unwrap(), None);
    assert_eq!(
        s.group_members(g).unwrap(),
        vec![MemberRow {
            user_id: owner,
            username: "cg_owner".into(),
            role: Role::Owner
        }]
    );
    assert_eq!(cursor_of(s, owner, group_conv(g)), Some(0));
    assert_eq!(
        s.groups_of(owner).unwrap(),
        vec![(rec.clone(), Role::Owner)]
    );

    assert!(matches!(
        s.create_group("cg_team 'one'", owner),
        Err(StoreError::Conflict)
    ));
    let g2 = s.create_group("cg_team 'two'", owner).unwrap();
    assert_ne!(g2, g);
    let groups: Vec<GroupId> = s
        .groups_of(owner)
        .unwrap()
        .iter()
        .map(|(r, _)| r.id)
        .collect();
    assert_eq!(groups, vec![g.min(g2), g.max(g2)]);

    s.dissolve_group(g).unwrap();
    assert_eq!(
        s.get_group(g).unwrap(),
        Some(GroupRecord {
            dissolved: true,
            ..rec
        })
    );
    assert!(s.group_members(g).unwrap().is_empty());
    assert_eq!(cursor_of(s, owner, group_conv(g)), None);
    let groups: Vec<GroupId> = s
        .groups_of(owner)
        .unwrap()
        .iter()
        .map(|(r, _)| r.id)
        .collect();
    assert_eq!(groups, vec![g2], "dissolved groups are not listed");

    // The name is free again; the live twin still blocks its own name.
    let g3 = s.create_group("cg_team 'one'", owner).unwrap();
    assert!(g3 != g && g3 != g2);
    assert!(matches!(
        s.create_group("cg_team 'one'", owner),
        Err(StoreError::Conflict)
    ));
    assert!(!s.get_group(g3).unwrap().unwrap().dissolved);
}

pub fn check_group_members(s: &dyn Store) {
    let owner = user(s, "cm_owner");
    let m1 = user(s, "cm_one");
    let m2 = user(s, "cm_two");
    let g = s.create_group("cm_group", owner).unwrap();
    let conv = group_conv(g);

    s.add_member(g, m2, Role::Member, 0).unwrap();
    s.add_member(g, m1, Role::Member, 7).unwrap();
    assert_eq!(cursor_of(s, m1, conv), Some(7));
    assert_eq!(cursor_of(s, m2, conv), Some(0));
    // Idempotent: a repeated add changes neither cursor nor role.
    s.add_member(g, m1, Role::Admin, 0).unwrap();
    s.add_member(g, owner, Role::Member, 3).unwrap();
    assert_eq!(cursor_of(s, m1, conv), Some(7));
    assert_eq!(cursor_of(s, owner, conv), Some(0));
    let roles = |s: &dyn Store| {
        s.group_members(g)
            .unwrap()
            .into_iter()
            .map(|m| (m.user_id, m.role))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        roles(s),
        vec![(owner, Role::Owner), (m1, Role::Member), (m2, Role::Member)]
    );

    s.set_role(g, m1, Role::Admin).unwrap();
    assert_eq!(
        roles(s),
        vec![(owner, Role::Owner), (m1, Role::Admin), (m2, Role::Member)]
    );
    assert_eq!(s.group_members(g).unwrap()[1].username, "cm_one");
    let (rec, role) = s.groups_of(m1).unwrap().pop().expect("m1 in a group");
    assert_eq!(
        (rec.id, rec.name.as_str(), role),
        (g, "cm_group", Role::Admin)
    );

    s.remove_member(g, m1).unwrap();
    assert_eq!(roles(s), vec![(owner, Role::Owner), (m2, Role::Member)]);
    assert_eq!(cursor_of(s, m1, conv), None);
    assert!(s.groups_of(m1).unwrap().is_empty());
    assert_eq!(cursor_of(s, m2, conv), Some(0));
    s.remove_member(g, m1).unwrap(); // removing twice is fine

    // Rejoining starts from the given cursor.
    s.add_member(g, m1, Role::Member, 2).unwrap();
    assert_eq!(cursor_of(s, m1, conv), Some(2));
}

pub fn check_write_batch_atomic(s: &dyn Store) {
    let u = user(s, "cw_user");
    let g = s.create_group("cw_group", u).unwrap();
    let conv = group_conv(g);
    s.write_batch(&[]).unwrap();
    write_msgs(s, &[msg(conv, 1, u, "one")]);

    // Second message duplicates (conv, 1): nothing of the batch may persist.
    let r = s.write_batch(&[
        WriteOp::Cursor {
            user: u,
            conv,
            seq: 1,
        },
        WriteOp::Message(msg(conv, 2, u, "two")),
        WriteOp::Message(msg(conv, 1, u, "one again")),
    ]);
    assert!(r.is_err(), "duplicate (conv, seq) must fail the batch");
    let stored = s.messages_after(conv, 0, 10).unwrap();
    assert_eq!(seqs(&stored), vec![1]);
    assert_eq!(stored[0].body, "one");
    assert_eq!(s.conv_tail(conv, 10).unwrap().last_seq, 1);
    assert_eq!(cursor_of(s, u, conv), Some(0), "cursor op rolled back too");

    // The store is still usable and the rolled-back seq is free.
    s.write_batch(&[
        WriteOp::Message(msg(conv, 2, u, "two")),
        WriteOp::Cursor {
            user: u,
            conv,
            seq: 2,
        },
    ])
    .unwrap();
    assert_eq!(seqs(&s.messages_after(conv, 0, 10).unwrap()), vec![1, 2]);
    assert_eq!(cursor_of(s, u, conv), Some(2));
}

pub fn check_cursors(s: &dyn Store) {
    let u = user(s, "cc_member");
    let outsider = user(s, "cc_outsider");
    let g = s.create_group("cc_group", u).unwrap();
    let conv = group_conv(g);
    let cur = |user, seq| WriteOp::Cursor { user, conv, seq };

    s.write_batch(&[cur(u, 5)]).unwrap();
    assert_eq!(cursor_of(s, u, conv), Some(5));
    s.write_batch(&[cur(u, 3)]).unwrap();
    assert_eq!(cursor_of(s, u, conv), Some(5), "never backwards");
    s.write_batch(&[cur(u, 9), cur(u, 4)]).unwrap();
    assert_eq!(
        cursor_of(s, u, conv),
        Some(9),
        "never backwards within a batch"
    );

    // The whole u64 range, compared as u64 (SQLite stores them as i64).
    s.write_batch(&[cur(u, I63 - 1)]).unwrap();
    assert_eq!(cursor_of(s, u, conv), Some(I63 - 1));
    s.write_batch(&[cur(u, I63)]).unwrap();
    assert_eq!(cursor_of(s, u, conv), Some(I63));
    s.write_batch(&[cur(u, I63 - 1), cur(u, 10)]).unwrap();
    assert_eq!(
        cursor_of(s, u, conv),
        Some(I63),
        "never backwards from 2^63"
    );
    s.write_batch(&[cur(u, u64::MAX), cur(u, I63 + 1)]).unwrap();
    assert_eq!(cursor_of(s, u, conv), Some(u64::MAX));
    s.write_batch(&[cur(u, 0), cur(u, 1), cur(u, I63)]).unwrap();
    assert_eq!(cursor_of(s, u, conv), Some(u64::MAX), "u64::MAX stays");
    let u2 = user(s, "cc_member2");
    s.add_member(g, u2, Role::Member, 0).unwrap();
    s.write_batch(&[cur(u2, 1)]).unwrap();
    assert_eq!(cursor_of(s, u2, conv), Some(1));
    s.write_batch(&[cur(u2, I63 + 7)]).unwrap();
    assert_eq!(
        cursor_of(s, u2, conv),
        Some(I63 + 7),
        "from 1 to above 2^63"
    );
    s.write_batch(&[cur(u2, 9)]).unwrap();
    assert_eq!(cursor_of(s, u2, conv), Some(I63 + 7));

    // Non-members: ignored, no row created, no error.
    s.write_batch(&[cur(outsider, 4)]).unwrap();
    assert!(s.conversations_of(outsider).unwrap().is_empty());
    // Another conversation of the same user is untouched.
    let g2 = s.create_group("cc_group2", u).unwrap();
    s.write_batch(&[WriteOp::Cursor {
        user: u,
        conv: group_conv(g2),
        seq: 1,
    }])
    .unwrap();
    assert_eq!(cursor_of(s, u, conv), Some(u64::MAX));
    assert_eq!(cursor_of(s, u, group_conv(g2)), Some(1));
}

pub fn check_conv_tail(s: &dyn Store) {
    let a = user(s, "ct_a");
    let b = user(s, "ct_b");
    let g = s.create_group("ct_group", a).unwrap();
    let conv = group_conv(g);
    let other = group_conv(s.create_group("ct_other", a).unwrap());
    assert_eq!(s.conv_tail(conv, 4).unwrap(), ConvTail::default());

    let msgs: Vec<StoredMessage> = (1..=5)
        .map(|i| StoredMessage {
            client_msg_id: u64::MAX - i, // full u64 range survives
            ..msg(conv, i, if i % 2 == 0 { a } else { b }, "x")
        })
        .collect();
    write_msgs(s, &msgs);
    write_msgs(s, &[msg(other, 1, a, "y"), msg(other, 2, a, "y")]);
    s.write_batch(&[WriteOp::Message(msg(other, 3, a, "z"))])
        .unwrap();

    let t = s.conv_tail(conv, 3).unwrap();
    assert_eq!(t.last_seq, 5);
    let expect = |i: u64| {
        let m = &msgs[i as usize - 1];
        (m.sender, m.client_msg_id, m.seq, m.timestamp_ms)
    };
    assert_eq!(t.recent, vec![expect(5), expect(4), expect(3)]);
    assert_eq!(
        s.conv_tail(conv, 0).unwrap(),
        ConvTail {
            last_seq: 5,
            recent: vec![]
        }
    );
    assert_eq!(s.conv_tail(conv, 100).unwrap().recent.len(), 5);
    assert_eq!(s.conv_tail(other, 1).unwrap().last_seq, 3);
}

pub fn check_messages_after_and_history(s: &dyn Store) {
    let a = user(s, "ch_a");
    let b = user(s, "ch_b");
    let g = s.create_group("ch_group", a).unwrap();
    let conv = group_conv(g);
    let direct = direct_conv(a, b);
    assert!(direct > i64::MAX as u64, "direct convs use the top bit");

    let group_msgs: Vec<StoredMessage> = (1..=10)
        .map(|i| msg(conv, i, if i % 3 == 0 { b } else { a }, &format!("g{i}")))
        .collect();
    write_msgs(s, &group_msgs);
    let direct_msgs = vec![
        StoredMessage {
            timestamp_ms: u64::MAX >> 1,
            client_msg_id: u64::MAX,
            ..msg(direct, 1, b, "d1")
        },
        msg(direct, 2, a, "d2"),
        msg(direct, 3, b, "d3"),
    ];
    write_msgs(s, &direct_msgs);

    let named = |m: &StoredMessage| StoredMessage {
        sender_name: if m.sender == a { "ch_a" } else { "ch_b" }.into(),
        ..m.clone()
    };
    let all = s.messages_after(conv, 0, 100).unwrap();
    assert_eq!(all, group_msgs.iter().map(named).collect::<Vec<_>>());
    assert_eq!(
        seqs(&s.messages_after(conv, 7, 100).unwrap()),
        vec![8, 9, 10]
    );
    assert_eq!(seqs(&s.messages_after(conv, 2, 3).unwrap()), vec![3, 4, 5]);
    assert!(s.messages_after(conv, 10, 100).unwrap().is_empty());
    assert!(s.messages_after(conv, 0, 0).unwrap().is_empty());

    assert_eq!(seqs(&s.history(conv, 0, 3).unwrap()), vec![8, 9, 10]);
    assert_eq!(seqs(&s.history(conv, 8, 3).unwrap()), vec![5, 6, 7]);
    assert_eq!(seqs(&s.history(conv, 3, 10).unwrap()), vec![1, 2]);
    assert_eq!(s.history(conv, 0, 100).unwrap(), all);
    assert!(s.history(conv, 1, 10).unwrap().is_empty());
    assert_eq!(seqs(&s.history(conv, 1000, 2).unwrap()), vec![9, 10]);

    // Bounds over the whole u64 range (SQLite keeps seqs as i64).
    for before in [11, I63 - 1, I63, I63 + 1, u64::MAX] {
        assert_eq!(
            seqs(&s.history(conv, before, 3).unwrap()),
            vec![8, 9, 10],
            "history before {before}"
        );
        assert_eq!(
            s.history(conv, before, 100).unwrap(),
            all,
            "before {before}"
        );
    }
    assert_eq!(seqs(&s.history(conv, 2, 3).unwrap()), vec![1]);
    assert_eq!(seqs(&s.history(conv, 10, 1).unwrap()), vec![9]);
    assert_eq!(seqs(&s.history(conv, u64::MAX, 1).unwrap()), vec![10]);
    assert_eq!(seqs(&s.messages_after(conv, 1, 2).unwrap()), vec![2, 3]);
    for after in [10, 11, I63 - 1, I63, I63 + 1, u64::MAX] {
        assert!(
            s.messages_after(conv, after, 100).unwrap().is_empty(),
            "messages_after {after}"
        );
    }

    let d = s.messages_after(direct, 0, 100).unwrap();
    assert_eq!(d, direct_msgs.iter().map(named).collect::<Vec<_>>());
    assert_eq!(s.history(direct, 0, 100).unwrap(), d);
    assert_eq!(seqs(&s.history(direct, 3, 1).unwrap()), vec![2]);
    for bound in [I63, u64::MAX] {
        assert_eq!(
            s.history(direct, bound, 100).unwrap(),
            d,
            "direct before {bound}"
        );
        assert!(s.messages_after(direct, bound, 100).unwrap().is_empty());
    }
}

pub fn check_conversations_of(s: &dyn Store) {
    let me = user(s, "co_me");
    let peer = user(s, "co_peer");
    let g1 = s.create_group("co_g1", me).unwrap();
    let g2 = s.create_group("co_g2", me).unwrap();
    relate(s, me, peer, true, false, false, false, false, "");
    let (c1, c2, d) = (group_conv(g1), group_conv(g2), direct_conv(me, peer));
    assert!(c1 < c2, "group ids ascend");

    write_msgs(
        s,
        &[
            msg(c1, 1, me, "a"),
            msg(c1, 2, me, "b"),
            msg(c1, 3, me, "c"),
            msg(d, 1, peer, "x"),
            msg(d, 2, me, "y"),
        ],
    );
    s.write_batch(&[WriteOp::Cursor {
        user: me,
        conv: c1,
        seq: 2,
    }])
    .unwrap();

    let cc = |conv, delivered, last_seq| ConvCursor {
        conv,
        delivered,
        last_seq,
        floor: 0,
    };
    // Ordered by conv id as u64: groups (small ids) before direct convs.
    assert_eq!(
        s.conversations_of(me).unwrap(),
        vec![cc(c1, 2, 3), cc(c2, 0, 0), cc(d, 0, 2)]
    );
    assert_eq!(s.conversations_of(peer).unwrap(), vec![cc(d, 0, 2)]);
}

pub fn check_conversation_list(s: &dyn Store) {
    let me = user(s, "cl_me");
    let peer = user(s, "cl_peer");
    let other = user(s, "cl_other");
    let g1 = s.create_group("cl_g1", me).unwrap();
    let g2 = s.create_group("cl_g2", other).unwrap();
    s.add_member(g2, me, Role::Member, 0).unwrap();
    s.add_member(g2, peer, Role::Member, 0).unwrap();
    relate(s, me, peer, true, false, false, false, false, "");
    let (c1, c2, d) = (group_conv(g1), group_conv(g2), direct_conv(me, peer));
    let long: String = "é".repeat(crate::model::PREVIEW_CHARS + 5);
    write_msgs(
        s,
        &[
            msg(c2, 1, other, "g2 first"),
            msg(c2, 2, peer, &long),
            msg(d, 1, peer, "x"),
            msg(d, 2, me, "y"),
            msg(d, 3, peer, "z 😀"),
        ],
    );
    s.write_batch(&[
        WriteOp::Cursor {
            user: me,
            conv: d,
            seq: 2,
        },
        WriteOp::Cursor {
            user: peer,
            conv: d,
            seq: 3,
        },
        WriteOp::Cursor {
            user: me,
            conv: c2,
            seq: 1,
        },
    ])
    .unwrap();

    let list = s.conversation_list(me).unwrap();
    let convs: Vec<ConvId> = list.iter().map(|c| c.cursor.conv).collect();
    assert_eq!(convs, vec![c1, c2, d], "ordered by conv as u64");

    // An empty group: its name, no message.
    assert_eq!(list[0].name, "cl_g1");
    assert_eq!(list[0].cursor.last_seq, 0);
    assert_eq!(list[0].last, None);
    assert_eq!(list[0].peer_delivered, 0);

    // A group: the newest message cut to the preview, no peer cursor even
    // though other members have rows.
    assert_eq!(list[1].name, "cl_g2");
    assert_eq!((list[1].cursor.delivered, list[1].cursor.last_seq), (1, 2));
    assert_eq!(list[1].peer_delivered, 0);
    let last = list[1].last.as_ref().expect("a last message");
    assert_eq!((last.seq, last.sender), (2, peer));
    assert_eq!(last.sender_name, "cl_peer");
    assert_eq!(last.body, "é".repeat(crate::model::PREVIEW_CHARS));
    assert!(list[1].truncated);

    // Direct: the peer's name and cursor, the newest message whole.
    assert_eq!(list[2].name, "cl_peer");
    assert_eq!((list[2].cursor.delivered, list[2].cursor.last_seq), (2, 3));
    assert_eq!(list[2].peer_delivered, 3);
    let last = list[2].last.as_ref().unwrap();
    assert_eq!((last.seq, last.body.as_str()), (3, "z 😀"));
    assert!(!list[2].truncated);

    // The same conversation from the peer's side.
    let theirs = s.conversation_list(peer).unwrap();
    let dp = theirs.iter().find(|c| c.cursor.conv == d).unwrap();
    assert_eq!((dp.name.as_str(), dp.peer_delivered), ("cl_me", 2));
    assert!(
        s.conversation_list(user(s, "cl_nobody"))
            .unwrap()
            .is_empty()
    );

    // Read cursors: every member's, by user id.
    let mut want = vec![(me, 1), (peer, 0), (other, 0)];
    want.sort_unstable();
    assert_eq!(s.read_cursors(c2).unwrap(), want);
    let mut want = vec![(me, 2), (peer, 3)];
    want.sort_unstable();
    assert_eq!(s.read_cursors(d).unwrap(), want);
    assert!(s.read_cursors(group_conv(999_999)).unwrap().is_empty());
}

pub fn check_body_roundtrip(s: &dyn Store) {
    let u = user(s, "cb_ünïcødé 'quoted' \"name\" 😀");
    assert_eq!(
        s.user_by_id(u).unwrap().unwrap().username,
        "cb_ünïcødé 'quoted' \"name\" 😀"
    );
    let g = s.create_group("cb_grüppe \"x\" ' ; --", u).unwrap();
    assert_eq!(
        s.get_group(g).unwrap().unwrap().name,
        "cb_grüppe \"x\" ' ; --"
    );
    let conv = group_conv(g);

    // ~60 KB mixing 1-, 2- and 4-byte UTF-8 sequences.
    let big = "0123456789abcdé😀\n".repeat(3000);
    assert_eq!(big.len(), 63_000);
    let bodies = [
        String::new(),
        "héllo wörld 👋 世界 مرحبا".to_string(),
        "it's \"quoted\"; DROP TABLE messages; -- \\ %_".to_string(),
        "nul\0inside\r\n\ttabs".to_string(),
        big,
    ];
    let msgs: Vec<StoredMessage> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| msg(conv, i as u64 + 1, u, b))
        .collect();
    write_msgs(s, &msgs);
    let back = s.messages_after(conv, 0, 100).unwrap();
    assert_eq!(back.len(), bodies.len());
    for (m, b) in back.iter().zip(&bodies) {
        assert_eq!(m.body.as_bytes(), b.as_bytes(), "body of seq {}", m.seq);
        assert_eq!(m.sender_name, "cb_ünïcødé 'quoted' \"name\" 😀");
    }
}

/// Writers and readers on several threads at once: every call succeeds and
/// nothing is lost.
pub fn check_concurrent_access(s: &dyn Store) {
    const THREADS: u64 = 4;
    const BATCHES: u64 = 25;
    const PER_BATCH: u64 = 8;
    let u = user(s, "cx_user");
    let convs: Vec<ConvId> = (0..THREADS)
        .map(|i| group_conv(s.create_group(&format!("cx_group{i}"), u).unwrap()))
        .collect();
    std::thread::scope(|scope| {
        for &conv in &convs {
            scope.spawn(move || {
                for b in 0..BATCHES {
                    let mut ops: Vec<WriteOp> = (1..=PER_BATCH)
                        .map(|i| WriteOp::Message(msg(conv, b * PER_BATCH + i, u, "c")))
                        .collect();
                    ops.push(WriteOp::Cursor {
                        user: u,
                        conv,
                        seq: (b + 1) * PER_BATCH,
                    });
                    s.write_batch(&ops).expect("concurrent write_batch");
                }
            });
            scope.spawn(move || {
                let mut last = 0;
                for _ in 0..BATCHES {
                    let t = s.conv_tail(conv, 4).expect("concurrent conv_tail");
                    assert!(t.last_seq >= last, "last_seq went backwards");
                    assert_eq!(t.recent.first().map(|r| r.2).unwrap_or(0), t.last_seq);
                    last = t.last_seq;
                    let after = s.messages_after(conv, 0, 1000).expect("messages_after");
                    assert_eq!(seqs(&after), (1..=after.len() as u64).collect::<Vec<_>>());
                    s.conversations_of(u).expect("conversations_of");
                }
            });
        }
    });
    for conv in convs {
        assert_eq!(s.conv_tail(conv, 0).unwrap().last_seq, BATCHES * PER_BATCH);
        assert_eq!(cursor_of(s, u, conv), Some(BATCHES * PER_BATCH));
    }
}

/// Everything written before closing is there after reopening. `open` must
/// return a store on the same underlying database each time; the previous
/// handle is dropped before the next open.
pub fn check_survives_reopen(open: &dyn Fn() -> Arc<dyn Store>) {
    let s = open();
    let a = user(&*s, "cr_a");
    let b = user(&*s, "cr_b");
    relate(&*s, a, b, true, false, false, false, false, "");
    let g = s.create_group("cr_group", a).unwrap();
    s.add_member(g, b, Role::Admin, 0).unwrap();
    s.create_session(b"cr-token", a, 42).unwrap();
    let d = direct_conv(a, b);
    write_msgs(
        &*s,
        &[msg(d, 1, a, "kept"), msg(group_conv(g), 1, b, "also")],
    );
    s.write_batch(&[WriteOp::Cursor {
        user: b,
        conv: d,
        seq: 1,
    }])
    .unwrap();
    let before = (
        s.friends_of(a).unwrap(),
        s.group_members(g).unwrap(),
        s.conversations_of(b).unwrap(),
        s.messages_after(d, 0, 10).unwrap(),
    );
    drop(s);

    let s = open();
    assert_eq!(s.user_by_name("cr_a").unwrap().map(|r| r.id), Some(a));
    assert_eq!(s.session_user(b"cr-token").unwrap(), Some(a));
    let after = (
        s.friends_of(a).unwrap(),
        s.group_members(g).unwrap(),
        s.conversations_of(b).unwrap(),
        s.messages_after(d, 0, 10).unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(after.3.len(), 1);
    assert_eq!(after.2.len(), 2);
    // Ids keep counting after a restart.
    let c = user(&*s, "cr_c");
    assert!(c > b);
    assert!(matches!(
        s.create_user("cr_a", "x"),
        Err(StoreError::Conflict)
    ));
}

/// Users and groups created with chosen ids (import) and group descriptions.
/// Admin: the disabled flag (read with the user, by name and by id) and
/// revoking every session token of one user, no one else's.
pub fn check_disable_and_revoke(s: &dyn Store) {
    let a = user(s, "cdr_alice");
    let b = user(s, "cdr_bob");
    assert!(!s.user_by_name("cdr_alice").unwrap().unwrap().disabled);
    s.set_disabled(a, true).unwrap();
    assert!(s.user_by_name("cdr_alice").unwrap().unwrap().disabled);
    assert!(s.user_by_id(a).unwrap().unwrap().disabled);
    assert!(!s.user_by_id(b).unwrap().unwrap().disabled);
    s.set_disabled(a, true).unwrap(); // idempotent
    assert!(s.user_by_id(a).unwrap().unwrap().disabled);
    s.set_disabled(a, false).unwrap();
    assert!(!s.user_by_id(a).unwrap().unwrap().disabled);
    s.set_disabled(crate::model::MAX_USER_ID, true).unwrap(); // unknown: no-op

    let (t1, t2, t3) = ([0xD1u8; 32], [0xD2u8; 32], [0xD3u8; 32]);
    s.create_session(&t1, a, 1).unwrap();
    s.create_session(&t2, a, 2).unwrap();
    s.create_session(&t3, b, 3).unwrap();
    assert_eq!(s.delete_sessions_of(a).unwrap(), 2);
    assert_eq!(s.session_user(&t1).unwrap(), None);
    assert_eq!(s.session_user(&t2).unwrap(), None);
    assert_eq!(s.session_user(&t3).unwrap(), Some(b));
    assert_eq!(s.delete_sessions_of(a).unwrap(), 0);

    // An operator's broadcast is stored with sender 0 and read back as
    // "system".
    let g = s.create_group("cdr_group", a).unwrap();
    let conv = group_conv(g);
    let sys = StoredMessage {
        conv,
        seq: 1,
        sender: crate::model::SYSTEM_USER,
        timestamp_ms: 5,
        client_msg_id: 99,
        body: "maintenance at noon".into(),
        sender_name: String::new(),
    };
    s.write_batch(&[WriteOp::Message(sys)]).unwrap();
    let got = s.messages_after(conv, 0, 10).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender, 0);
    assert_eq!(got[0].sender_name, "system");
    assert_eq!(s.history(conv, 0, 10).unwrap()[0].sender_name, "system");
}

pub fn check_legacy_ids_and_desc(s: &dyn Store) {
    let id = 1_000_000 + (crate::model::now_ms() % 1_000_000);
    s.create_user_with_id(id, "legacy_imp_a", "$argon2id$v=19$x")
        .unwrap();
    let u = s.user_by_id(id).unwrap().expect("imported user");
    assert_eq!(u.username, "legacy_imp_a");
    assert!(matches!(
        s.create_user_with_id(id, "legacy_imp_b", "h"),
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        s.create_user_with_id(id + 1, "legacy_imp_a", "h"),
        Err(StoreError::Conflict)
    ));
    // Ids assigned later continue above the imported one.
    let next = user(s, "legacy_imp_c");
    assert!(next > id, "{next} <= {id}");

    let g = 2_000_000 + (crate::model::now_ms() % 1_000_000);
    s.create_group_with_id(g, "legacy imported group", id)
        .unwrap();
    let rec = s.get_group(g).unwrap().expect("imported group");
    assert_eq!((rec.owner, rec.dissolved), (id, false));
    assert_eq!(s.group_members(g).unwrap()[0].role, Role::Owner);
    assert!(
        s.conversations_of(id)
            .unwrap()
            .iter()
            .any(|c| c.conv == group_conv(g))
    );
    assert!(matches!(
        s.create_group_with_id(g + 1, "legacy imported group", id),
        Err(StoreError::Conflict)
    ));
    assert!(s.create_group("legacy later group", next).unwrap() > g);

    assert_eq!(s.group_desc(g).unwrap(), "");
    s.set_group_desc(g, "a \"quoted\" desc 😀").unwrap();
    assert_eq!(s.group_desc(g).unwrap(), "a \"quoted\" desc 😀");
    assert_eq!(s.group_desc(g + 12345).unwrap(), "");
}

/// Not a check: times `write_batch` at batch sizes 1, 64 and 256 (the
/// group-commit measurement in docs/STORAGE.md); run by each backend's
/// ignored `bench_write_batch_sizes` test.
pub fn bench_write_batch_sizes(store: &dyn Store) {
    let u = store.create_user("bench", "x").unwrap();
    let g = store.create_group("bench", u).unwrap();
    let conv = group_conv(g);
    let body = "x".repeat(100);
    let mut seq = 0u64;
    for batch in [1usize, 64, 256] {
        let total = if batch == 1 { 500 } else { 20_000 };
        let start = std::time::Instant::now();
        let mut written = 0;
        while written < total {
            let ops: Vec<WriteOp> = (0..batch)
                .map(|_| {
                    seq += 1;
                    WriteOp::Message(StoredMessage {
                        conv,
                        seq,
                        sender: u,
                        timestamp_ms: seq,
                        client_msg_id: seq,
                        body: body.clone(),
                        sender_name: String::new(),
                    })
                })
                .collect();
            store.write_batch(&ops).unwrap();
            written += batch;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "batch {batch:>3}: {written} msgs in {secs:.3}s = {:.0} msgs/s ({:.2} ms/commit)",
            written as f64 / secs,
            secs * 1000.0 / (written / batch) as f64
        );
    }
    assert_eq!(store.conv_tail(conv, 1).unwrap().last_seq, seq);
}

/// Private groups, join points, invitations and join requests, and group
/// names unique per owner.
pub fn check_group_privacy(s: &dyn Store) {
    let owner = user(s, "cpv_owner");
    let other = user(s, "cpv_other");
    let a = user(s, "cpv_a");
    let b = user(s, "cpv_b");
    // Names are unique per owner: another owner may reuse one.
    let g = s.create_group_opts("cpv same", owner, true, false).unwrap();
    let g_other = s.create_group("cpv same", other).unwrap();
    assert_ne!(g, g_other);
    assert!(matches!(
        s.create_group("cpv same", owner),
        Err(StoreError::Conflict)
    ));
    let rec = s.get_group(g).unwrap().unwrap();
    assert!(rec.private && !rec.full_history);
    let rec2 = s.get_group(g_other).unwrap().unwrap();
    assert!(!rec2.private && !rec2.full_history);
    assert_eq!(s.groups_of(owner).unwrap(), vec![(rec, Role::Owner)]);
    let full = s.create_group_opts("cpv full", owner, false, true).unwrap();
    assert!(s.get_group(full).unwrap().unwrap().full_history);

    // Invitations and requests: one per user, replaced, ordered by user id.
    s.set_pending(g, b, Some(false)).unwrap();
    s.set_pending(g, a, Some(false)).unwrap();
    s.set_pending(g, a, Some(true)).unwrap();
    let pend = |s: &dyn Store| {
        s.group_pending(g)
            .unwrap()
            .into_iter()
            .map(|p| (p.user_id, p.username, p.invited))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pend(s),
        vec![(a, "cpv_a".into(), true), (b, "cpv_b".into(), false)]
    );
    s.set_pending(g, b, None).unwrap();
    assert_eq!(pend(s), vec![(a, "cpv_a".into(), true)]);

    // Joining ends the invitation; the floor is the join point unless the
    // group shows its full history. The owner sees everything.
    s.add_member(g, a, Role::Member, 5).unwrap();
    assert!(pend(s).is_empty());
    assert_eq!(s.join_floor(group_conv(g), a).unwrap(), 5);
    assert_eq!(s.join_floor(group_conv(g), owner).unwrap(), 0);
    assert_eq!(s.join_floor(group_conv(g), b).unwrap(), 0, "non-member");
    s.add_member(full, a, Role::Member, 9).unwrap();
    assert_eq!(s.join_floor(group_conv(full), a).unwrap(), 0);
    let floors: Vec<(ConvId, Seq, Seq)> = s
        .conversations_of(a)
        .unwrap()
        .iter()
        .map(|c| (c.conv, c.delivered, c.floor))
        .collect();
    assert_eq!(
        floors,
        vec![(group_conv(g), 5, 5), (group_conv(full), 9, 0)]
    );

    // Dissolving forgets the pending ones.
    s.set_pending(g, b, Some(false)).unwrap();
    s.dissolve_group(g).unwrap();
    assert!(s.group_pending(g).unwrap().is_empty());
}

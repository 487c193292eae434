//! `ringchat import-legacy`: moves a cc_ChatServer MySQL database (tables
//! `User`, `Friend`, `AllGroup`, `GroupUser`, `OfflineMessage`) into a
//! ringchat store. See docs/MIGRATING.md for the rules and their reasons.
//!
//! The import is offline (run it with the server stopped) and blocking; it
//! talks to the target only through the `Store` trait, so both backends work.
//! Re-running it skips users and groups that are already there; offline
//! messages are imported only into conversations that have no messages yet,
//! so a re-run does not duplicate them.

use super::codec;
use crate::model::{ConvId, GroupId, MAX_USER_ID, Seq, UserId, direct_conv, group_conv, now_ms};
use crate::server::auth;
use crate::store::{PairRecord, PairState, Role, Store, StoreError, StoredMessage, WriteOp};
use ::mysql::prelude::Queryable;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What an import did, for the operator.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub users: usize,
    pub users_skipped: usize,
    pub friendships: usize,
    pub groups: usize,
    pub members: usize,
    pub messages: usize,
    /// Offline rows not imported (not chat, unparsable, unknown users,
    /// non-friends, non-members, or a conversation that already had messages).
    pub messages_skipped: usize,
}

/// Marks imported messages' `client_msg_id`s (unique per conversation).
const IMPORT_MSG_ID: u64 = 0x4c47_0000_0000_0000;

fn e(ctx: &str) -> impl Fn(::mysql::Error) -> String + '_ {
    move |err| format!("{ctx}: {err}")
}

fn s(ctx: &str) -> impl Fn(StoreError) -> String + '_ {
    move |err| format!("{ctx}: {err}")
}

/// One pending chat message, as the old server kept it per recipient.
struct Offline {
    sender: UserId,
    ts: u64,
    body: String,
    recipients: BTreeSet<UserId>,
}

pub fn import(source: &str, store: &dyn Store) -> Result<Report, String> {
    let opts = ::mysql::Opts::from_url(source).map_err(|err| format!("source URL: {err}"))?;
    let mut src = ::mysql::Conn::new(opts).map_err(e("connecting to the source"))?;
    let mut rep = Report::default();

    // ---- users: same ids, argon2 hashes of the plaintext passwords.
    let users: Vec<(u64, Option<String>, Option<String>)> = src
        .query("SELECT id, name, password FROM User ORDER BY id")
        .map_err(e("reading User"))?;
    let mut known: BTreeSet<UserId> = BTreeSet::new();
    let todo: Vec<(u64, String, String)> = users
        .into_iter()
        .filter_map(|(id, name, pw)| {
            let (Some(name), Some(pw)) = (name, pw) else {
                rep.users_skipped += 1;
                return None;
            };
            if id == 0 || id > MAX_USER_ID || name.is_empty() {
                rep.users_skipped += 1;
                return None;
            }
            Some((id, name, pw))
        })
        .collect();
    // argon2 is deliberately slow: hash on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = todo.len().div_ceil(threads).max(1);
    let results: Vec<Result<Option<UserId>, String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = todo
            .chunks(chunk)
            .map(|part| {
                sc.spawn(move || {
                    part.iter()
                        .map(|(id, name, pw)| import_user(store, *id, name, pw))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("hashing panicked".into())])
            })
            .collect()
    });
    for (r, (id, _, _)) in results.into_iter().zip(&todo) {
        if r?.is_some() {
            rep.users += 1;
        }
        known.insert(*id);
    }

    // ---- friendships: one row per direction in the old table; either
    // direction makes the pair friends.
    let rows: Vec<(u64, u64)> = src
        .query("SELECT userid, friendid FROM Friend")
        .map_err(e("reading Friend"))?;
    let pairs: BTreeSet<(UserId, UserId)> = rows
        .into_iter()
        .filter(|(a, b)| a != b && known.contains(a) && known.contains(b))
        .map(|(a, b)| (a.min(b), a.max(b)))
        .collect();
    let friend_rec = PairRecord {
        state: PairState {
            friends: true,
            ..PairState::default()
        },
        note: String::new(),
    };
    for (lo, hi) in &pairs {
        store
            .set_pair(*lo, *hi, &friend_rec)
            .map_err(s("writing a friendship"))?;
        rep.friendships += 1;
    }

    // ---- groups and members. The creator becomes the owner; a group
    // without one is owned by its lowest member; a group with no members
    // cannot be owned and is skipped.
    let groups: Vec<(u64, Option<String>, Option<String>)> = src
        .query("SELECT id, groupname, groupdesc FROM AllGroup ORDER BY id")
        .map_err(e("reading AllGroup"))?;
    let members: Vec<(u64, u64, Option<String>)> = src
        .query("SELECT groupid, userid, grouprole FROM GroupUser ORDER BY groupid, userid")
        .map_err(e("reading GroupUser"))?;
    let mut by_group: BTreeMap<GroupId, Vec<(UserId, bool)>> = BTreeMap::new();
    for (g, u, role) in members {
        if known.contains(&u) {
            by_group
                .entry(g)
                .or_default()
                .push((u, role.as_deref() == Some("creator")));
        }
    }
    let mut group_members: HashMap<GroupId, Vec<UserId>> = HashMap::new();
    for (g, name, desc) in groups {
        let ms = by_group.remove(&g).unwrap_or_default();
        if g == 0 || group_conv(g) != g || ms.is_empty() {
            continue;
        }
        let name = name.unwrap_or_else(|| format!("group {g}"));
        let owner = ms.iter().find(|m| m.1).unwrap_or(&ms[0]).0;
        match store.get_group(g).map_err(s("reading a group"))? {
            Some(_) => {}
            None => {
                store
                    .create_group_with_id(g, &name, owner)
                    .map_err(|err| format!("creating group {g} {name:?}: {err}"))?;
                rep.groups += 1;
            }
        }
        if let Some(d) = desc.filter(|d| !d.is_empty()) {
            store
                .set_group_desc(g, &d)
                .map_err(s("writing a group description"))?;
        }
        for (u, creator) in &ms {
            if *u != owner {
                // Further "creator" rows (the old schema allows them) become admins.
                let role = if *creator { Role::Admin } else { Role::Member };
                store
                    .add_member(g, *u, role, 0)
                    .map_err(s("adding a group member"))?;
                rep.members += 1;
            }
        }
        group_members.insert(g, ms.iter().map(|m| m.0).collect());
    }

    // ---- offline messages: one stored chat JSON per recipient. A group
    // message stored for several recipients becomes one message.
    let rows: Vec<(u64, Option<String>)> = src
        .query("SELECT userid, message FROM OfflineMessage")
        .map_err(e("reading OfflineMessage"))?;
    let mut convs: BTreeMap<ConvId, Vec<Offline>> = BTreeMap::new();
    let mut group_index: HashMap<(GroupId, UserId, String, String), usize> = HashMap::new();
    for (recipient, text) in rows {
        let parsed = text
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
        let Some(v) = parsed else {
            rep.messages_skipped += 1;
            continue;
        };
        let from = v["from"].as_u64().or_else(|| v["id"].as_u64()).unwrap_or(0);
        let body = v["msg"].as_str().unwrap_or("").to_string();
        let time = v["time"].as_str().unwrap_or("").to_string();
        let ts = codec::parse_time(&time).unwrap_or_else(now_ms);
        if !known.contains(&from) || !known.contains(&recipient) || body.is_empty() {
            rep.messages_skipped += 1;
            continue;
        }
        match v["msgid"].as_i64() {
            Some(codec::ONE_CHAT) => {
                let (lo, hi) = (from.min(recipient), from.max(recipient));
                if from == recipient || !pairs.contains(&(lo, hi)) {
                    rep.messages_skipped += 1;
                    continue;
                }
                convs
                    .entry(direct_conv(from, recipient))
                    .or_default()
                    .push(Offline {
                        sender: from,
                        ts,
                        body,
                        recipients: BTreeSet::from([recipient]),
                    });
            }
            Some(codec::GROUP_CHAT) => {
                let g = v["groupid"].as_u64().unwrap_or(0);
                let Some(ms) = group_members.get(&g) else {
                    rep.messages_skipped += 1;
                    continue;
                };
                if !ms.contains(&recipient) {
                    rep.messages_skipped += 1;
                    continue;
                }
                let list = convs.entry(g).or_default();
                let key = (g, from, time, body.clone());
                match group_index.get(&key) {
                    Some(&i) => {
                        list[i].recipients.insert(recipient);
                    }
                    None => {
                        group_index.insert(key, list.len());
                        list.push(Offline {
                            sender: from,
                            ts,
                            body,
                            recipients: BTreeSet::from([recipient]),
                        });
                    }
                }
            }
            // Friend requests and the like: the relationship itself was imported.
            _ => rep.messages_skipped += 1,
        }
    }
    for (conv, mut list) in convs {
        let tail = store
            .conv_tail(conv, 0)
            .map_err(s("reading a conversation"))?;
        if tail.last_seq != 0 {
            rep.messages_skipped += list.len();
            continue;
        }
        // Stable: equal times keep the old table's order.
        list.sort_by_key(|m| m.ts);
        let audience: Vec<UserId> = match crate::model::conv_kind(conv) {
            crate::model::ConvKind::Direct { lo, hi } => vec![lo, hi],
            crate::model::ConvKind::Group(g) => group_members.get(&g).cloned().unwrap_or_default(),
        };
        let mut ops = Vec::with_capacity(list.len() + audience.len());
        // Each member's cursor stops just before the first message they had
        // pending, so exactly the pending ones (and any in between) arrive
        // at their next login; the others are history.
        let mut first_pending: HashMap<UserId, Seq> = HashMap::new();
        for (i, m) in list.iter().enumerate() {
            let seq = i as Seq + 1;
            for r in &m.recipients {
                first_pending.entry(*r).or_insert(seq);
            }
            ops.push(WriteOp::Message(StoredMessage {
                conv,
                seq,
                sender: m.sender,
                timestamp_ms: m.ts,
                client_msg_id: IMPORT_MSG_ID | seq,
                body: m.body.clone(),
                sender_name: String::new(),
            }));
        }
        let last = list.len() as Seq;
        for u in audience {
            let delivered = first_pending.get(&u).map_or(last, |s| s - 1);
            if delivered > 0 {
                ops.push(WriteOp::Cursor {
                    user: u,
                    conv,
                    seq: delivered,
                });
            }
        }
        store
            .write_batch(&ops)
            .map_err(s("writing offline messages"))?;
        rep.messages += list.len();
    }
    Ok(rep)
}

/// Creates one user unless the same user is already there (a re-run).
/// `Some(id)` when created.
fn import_user(
    store: &dyn Store,
    id: UserId,
    name: &str,
    pw: &str,
) -> Result<Option<UserId>, String> {
    if let Some(u) = store.user_by_id(id).map_err(s("reading a user"))? {
        return if u.username == name {
            Ok(None)
        } else {
            Err(format!(
                "user id {id} is {:?} in the target but {name:?} in the source",
                u.username
            ))
        };
    }
    let hash = auth::hash_password(pw).map_err(|err| format!("hashing: {err}"))?;
    store
        .create_user_with_id(id, name, &hash)
        .map_err(|err| format!("creating user {id} {name:?}: {err}"))?;
    Ok(Some(id))
}

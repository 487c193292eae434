//! Groups: creation, membership, roles, the lists.
//!
//! Membership changes are decided by the group's owner shard
//! (`core::group`), one at a time; creation and the read-only lists are
//! answered here from the store.

use super::{STORAGE, to_owner};
use crate::core::group::GroupAction;
use crate::core::{ErrorCode, Reject, validate};
use crate::model::{GroupId, UserId, group_conv};
use crate::server::limits::Kind;
use crate::server::session::{GroupInfo, Session};
use crate::server::shard::{OwnerOp, Shard};
use crate::store::StoreError;
use std::rc::Rc;

/// Longest group description kept, in characters.
pub const MAX_DESC_CHARS: usize = 256;

const NO_SUCH_GROUP: Reject = Reject(ErrorCode::NoSuchGroup, "no such group");

fn valid(g: GroupId) -> bool {
    g != 0 && group_conv(g) == g
}

fn to_group(shard: &Shard, sess: &Session, req_id: u64, g: GroupId, op: OwnerOp) {
    if !valid(g) {
        return sess.error(req_id, NO_SUCH_GROUP);
    }
    to_owner(shard, sess, req_id, g, op);
}

fn action(shard: &Shard, sess: &Session, req_id: u64, g: GroupId, action: GroupAction) {
    to_group(shard, sess, req_id, g, OwnerOp::Group { group: g, action })
}

pub fn join(shard: &Shard, sess: &Session, req_id: u64, g: GroupId) {
    action(shard, sess, req_id, g, GroupAction::Join)
}

pub fn leave(shard: &Shard, sess: &Session, req_id: u64, g: GroupId) {
    action(shard, sess, req_id, g, GroupAction::Leave)
}

pub fn dissolve(shard: &Shard, sess: &Session, req_id: u64, g: GroupId) {
    action(shard, sess, req_id, g, GroupAction::Dissolve)
}

pub fn remove(shard: &Shard, sess: &Session, req_id: u64, g: GroupId, user: UserId) {
    action(shard, sess, req_id, g, GroupAction::Remove(user))
}

pub fn set_admin(
    shard: &Shard,
    sess: &Session,
    req_id: u64,
    g: GroupId,
    user: UserId,
    admin: bool,
) {
    action(shard, sess, req_id, g, GroupAction::SetAdmin(user, admin))
}

/// Owner/admin: invites `user`, who may then join the (private) group.
pub fn invite(shard: &Shard, sess: &Session, req_id: u64, g: GroupId, user: UserId) {
    if user == 0 || user > crate::model::MAX_USER_ID {
        return sess.error(req_id, Reject(ErrorCode::NoSuchUser, "no such user"));
    }
    action(shard, sess, req_id, g, GroupAction::Invite(user))
}

/// Owner/admin: accepts or rejects `user`'s request to join.
pub fn respond(shard: &Shard, sess: &Session, req_id: u64, g: GroupId, user: UserId, accept: bool) {
    action(shard, sess, req_id, g, GroupAction::Respond(user, accept))
}

/// Members only: asked of the owner, which knows the membership. A page of
/// user ids above `after`.
pub fn members(shard: &Shard, sess: &Session, req_id: u64, g: GroupId, after: UserId, limit: u32) {
    to_group(
        shard,
        sess,
        req_id,
        g,
        OwnerOp::Members {
            group: g,
            after,
            limit,
        },
    )
}

/// Creates a group owned by the session's user. `desc` (the old protocol's
/// group description) is kept if given.
pub async fn create(
    shard: &Rc<Shard>,
    sess: &Session,
    req_id: u64,
    name: &str,
    desc: &str,
    private: bool,
    full_history: bool,
) {
    if let Err(r) = validate::group_name(name) {
        return sess.error(req_id, r);
    }
    let me = sess.user();
    let n2 = name.to_string();
    let desc: String = desc
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESC_CHARS)
        .collect();
    let quota = shard.limits.cfg.groups_per_user;
    let res = shard
        .blocking(move |s| {
            if quota != 0 {
                let owned = s
                    .groups_of(me)?
                    .iter()
                    .filter(|(g, _)| g.owner == me && !g.dissolved)
                    .count();
                if owned >= quota {
                    return Ok(None);
                }
            }
            let g = s.create_group_opts(&n2, me, private, full_history)?;
            if !desc.is_empty() {
                s.set_group_desc(g, &desc)?;
            }
            Ok(Some(g))
        })
        .await;
    match res {
        Ok(Some(g)) => sess.reply.group_created(req_id, g, name),
        Ok(None) => {
            shard.limits.refused(Kind::Groups);
            let text = format!("you own {quota} groups, the most allowed; dissolve one first");
            sess.reply.error(req_id, ErrorCode::LimitReached, &text)
        }
        Err(StoreError::Conflict) => sess.error(
            req_id,
            Reject(
                ErrorCode::NameTaken,
                "you already have a group with that name",
            ),
        ),
        Err(_) => sess.error(req_id, STORAGE),
    }
}

/// A page of the user's groups (ids above `after`), within one frame.
pub async fn list(shard: &Rc<Shard>, sess: &Session, req_id: u64, after: GroupId, limit: u32) {
    let me = sess.user();
    match shard.blocking(move |s| s.groups_of(me)).await {
        Ok(gs) => {
            let (page, next) = validate::page(
                &gs,
                |(g, _)| g.id,
                |(g, _)| g.name.len(),
                after,
                limit,
                shard.cfg.max_frame,
            );
            sess.reply.group_list(req_id, page, next)
        }
        Err(_) => sess.error(req_id, STORAGE),
    }
}

/// Name, description and members of an existing group: of a public group
/// to anyone (the old server answered its "group info", msgid 12, so, and
/// its console client asks it before joining); of a private group to its
/// members only; anyone else is told there is no such group.
pub async fn info(shard: &Rc<Shard>, sess: &Session, req_id: u64, g: GroupId) {
    if !valid(g) {
        return sess.error(req_id, NO_SUCH_GROUP);
    }
    let me = sess.user();
    let res = shard
        .blocking(move |s| {
            Ok(match s.get_group(g)? {
                Some(rec) if !rec.dissolved => {
                    let members = s.group_members(g)?;
                    if rec.private && !members.iter().any(|m| m.user_id == me) {
                        None
                    } else {
                        Some((rec.name, s.group_desc(g)?, members))
                    }
                }
                _ => None,
            })
        })
        .await;
    match res {
        Ok(Some((name, desc, members))) => {
            // Presence is for members: an outsider sees everyone offline.
            let member = members.iter().any(|m| m.user_id == sess.user());
            sess.reply.group_info(
                req_id,
                &GroupInfo {
                    group: g,
                    name: &name,
                    desc: &desc,
                    members: &members,
                },
                &|u| member && shard.is_online(u),
            )
        }
        Ok(None) => sess.error(req_id, NO_SUCH_GROUP),
        Err(_) => sess.error(req_id, STORAGE),
    }
}

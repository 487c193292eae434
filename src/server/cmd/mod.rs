//! The session's commands: one handler per family, shared by every
//! protocol (mini-redis's `cmd/` layout). The codec has already parsed the
//! request (`core::request`); a handler applies it (validation, routing to
//! the conversation's owner, store reads on the blocking pool) and answers
//! through the session's `Responder` — or lets the owner answer.
//!
//! | file | requests |
//! |---|---|
//! | `account.rs` | Register, Login/Resume checks, Logout, LogoutAll, ChangePassword, SearchUsers, Ping |
//! | `message.rs` | Send, Ack (and its read receipts), History |
//! | `state.rs` | ListConversations, ReadCursors, Typing |
//! | `friend.rs` | FriendRequest/Respond/Remove/Block/Add, ListFriends |
//! | `group.rs` | CreateGroup, Join/Leave/Dissolve, RemoveMember, SetAdmin, InviteToGroup, RespondJoinRequest, GroupMembers, GroupInfo, ListGroups |

pub mod account;
pub mod friend;
pub mod group;
pub mod message;
pub mod state;

use super::session::Session;
use super::shard::{OwnerOp, Shard, ShardMsg};
use crate::core::ErrorCode;
use crate::core::request::Request;
use crate::model::{ConvId, owner_shard};
use std::rc::Rc;

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    Close,
}

/// Handles one request of a logged-in session (already through the phase
/// gate, `core::session::gate`).
///
/// The requests that wait (store reads, password hashing) run boxed: a
/// session's reader keeps this future inside its own for its whole life,
/// so unboxed, every idle connection would hold the largest of them (the
/// size test in `server::conn`). Send, Ack and Ping never wait and stay
/// allocation-free.
pub async fn dispatch(shard: &Rc<Shard>, sess: &Session, req_id: u64, req: Request<'_>) -> Next {
    match req {
        Request::Send {
            to,
            client_msg_id,
            body,
        } => message::send(shard, sess, req_id, to, client_msg_id, body),
        Request::Ack { items } => message::ack(shard, sess, items),
        Request::History {
            conversation,
            before_seq,
            limit,
        } => {
            Box::pin(message::history(
                shard,
                sess,
                req_id,
                conversation,
                before_seq,
                limit,
            ))
            .await
        }
        Request::Ping { nonce } => sess.reply.pong(req_id, nonce),
        Request::Logout => return Box::pin(account::logout(shard, sess, req_id)).await,
        Request::LogoutAll => return Box::pin(account::logout_all(shard, sess, req_id)).await,
        Request::ChangePassword {
            old_password,
            new_password,
        } => {
            Box::pin(account::change_password(
                shard,
                sess,
                req_id,
                old_password,
                new_password,
            ))
            .await
        }
        Request::Register { username, password } => {
            match Box::pin(account::register(shard, username, password)).await {
                Ok(id) => sess.reply.register_ok(req_id, id),
                Err(r) => sess.reply.error(req_id, r.code, &r.text),
            }
        }
        Request::SearchUsers {
            prefix,
            after,
            limit,
        } => Box::pin(account::search(shard, sess, req_id, prefix, after, limit)).await,
        Request::FriendRequest { user, note } => friend::request(shard, sess, req_id, user, note),
        Request::FriendRespond { user, accept } => {
            friend::respond(shard, sess, req_id, user, accept)
        }
        Request::FriendRemove { user } => friend::remove(shard, sess, req_id, user),
        Request::FriendBlock { user, block } => friend::block(shard, sess, req_id, user, block),
        Request::FriendAdd { user, .. } => friend::respond(shard, sess, req_id, user, true),
        Request::ListFriends { after, limit } => {
            Box::pin(friend::list(shard, sess, req_id, after, limit)).await
        }
        Request::CreateGroup {
            name,
            desc,
            private,
            full_history,
        } => {
            Box::pin(group::create(
                shard,
                sess,
                req_id,
                name,
                desc,
                private,
                full_history,
            ))
            .await
        }
        Request::JoinGroup { group: g } => group::join(shard, sess, req_id, g),
        Request::LeaveGroup { group: g } => group::leave(shard, sess, req_id, g),
        Request::DissolveGroup { group: g } => group::dissolve(shard, sess, req_id, g),
        Request::RemoveMember { group: g, user } => group::remove(shard, sess, req_id, g, user),
        Request::SetAdmin {
            group: g,
            user,
            admin,
        } => group::set_admin(shard, sess, req_id, g, user, admin),
        Request::GroupMembers {
            group: g,
            after,
            limit,
        } => group::members(shard, sess, req_id, g, after, limit),
        Request::InviteToGroup { group: g, user } => group::invite(shard, sess, req_id, g, user),
        Request::RespondJoinRequest {
            group: g,
            user,
            accept,
        } => group::respond(shard, sess, req_id, g, user, accept),
        Request::GroupInfo { group: g } => Box::pin(group::info(shard, sess, req_id, g)).await,
        Request::ListGroups { after, limit } => {
            Box::pin(group::list(shard, sess, req_id, after, limit)).await
        }
        Request::ListConversations { after, limit } => {
            Box::pin(state::list(shard, sess, req_id, after, limit)).await
        }
        Request::ReadCursors {
            conversation,
            after,
            limit,
        } => {
            Box::pin(state::read_cursors(
                shard,
                sess,
                req_id,
                conversation,
                after,
                limit,
            ))
            .await
        }
        Request::Typing {
            conversation,
            stopped,
        } => state::typing(shard, sess, req_id, conversation, stopped),
        Request::Hello { .. } | Request::Login { .. } | Request::Resume { .. } => {
            // The phase gate answers these before a session exists.
            sess.reply
                .error(req_id, ErrorCode::BadRequest, "unexpected request")
        }
    }
    Next::Continue
}

/// Sends an operation to the owner of `conv` (this node or another); the
/// owner answers the request itself.
pub fn to_owner(shard: &Shard, sess: &Session, req_id: u64, conv: ConvId, op: OwnerOp) {
    let origin = sess.origin(shard, req_id);
    let local = match &shard.cluster {
        Some(c) => c.route_owner(conv, origin, op),
        None => Some((origin, op)),
    };
    if let Some((o, op)) = local {
        shard.send(owner_shard(conv, shard.n), ShardMsg::Owner(o, op));
    }
}

/// The reply to a store failure: retryable.
pub const STORAGE: crate::core::Reject =
    crate::core::Reject(ErrorCode::Internal, "storage unavailable, retry");

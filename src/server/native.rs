//! The native codec's input side: a verified FlatBuffers envelope becomes a
//! [`Request`] of the one request model (`core::request`).
//!
//! Only the shape of the wire is checked here (which union member, which of
//! two exclusive fields is set); the rules users rely on (body limits,
//! friendship, membership) are the handlers' business, the same for every
//! protocol. Text fields borrow from the frame, so nothing is copied.

use crate::core::Reject;
use crate::core::request::{Account, Kind, Pairs, Request, Target};
use crate::model::{ConvId, Seq};
use crate::wire::fb::{self, Body};

/// `(conversation, seq)` pairs read in place from a frame.
pub struct FbPairs<'a>(pub Option<flatbuffers::Vector<'a, fb::ConvSeq>>);

impl Pairs for FbPairs<'_> {
    fn each(&self, f: &mut dyn FnMut(ConvId, Seq)) {
        if let Some(v) = &self.0 {
            for c in v.iter() {
                f(c.conversation(), c.seq())
            }
        }
    }
}

/// The request kind of a union member; `None` for anything a client may
/// not send (a reply type, NONE, a member this build does not know).
pub fn kind(body: Body) -> Option<Kind> {
    Some(match body {
        Body::Hello => Kind::Hello,
        Body::Ping => Kind::Ping,
        Body::Register => Kind::Register,
        Body::Login => Kind::Login,
        Body::Resume => Kind::Resume,
        Body::Logout => Kind::Logout,
        Body::Ack => Kind::Ack,
        Body::SearchUsers
        | Body::FriendRequest
        | Body::FriendRespond
        | Body::FriendRemove
        | Body::FriendBlock
        | Body::ListFriends
        | Body::CreateGroup
        | Body::JoinGroup
        | Body::LeaveGroup
        | Body::GroupMembers
        | Body::RemoveMember
        | Body::DissolveGroup
        | Body::ListGroups
        | Body::SendMessage
        | Body::History
        | Body::SetAdmin
        | Body::ChangePassword
        | Body::LogoutAll
        | Body::InviteToGroup
        | Body::RespondJoinRequest
        | Body::ListConversations
        | Body::ReadCursors
        | Body::Typing => Kind::Session,
        _ => return None,
    })
}

/// Bodies a client may send.
pub fn is_request(body: Body) -> bool {
    kind(body).is_some()
}

/// Holds what a decoded request borrows besides the frame (the pair lists
/// are read through it).
#[derive(Default)]
pub struct Scratch<'a> {
    pairs: Option<FbPairs<'a>>,
}

impl<'a> Scratch<'a> {
    pub fn new() -> Scratch<'a> {
        Scratch { pairs: None }
    }
}

/// Translates a verified envelope. `Err` is the reply for a request whose
/// shape is wrong (the connection stays open).
pub fn decode<'a>(
    env: fb::Envelope<'a>,
    scratch: &'a mut Scratch<'a>,
) -> Result<Request<'a>, Reject> {
    use crate::core::ErrorCode as E;
    let missing = Reject(E::Malformed, "request body missing");
    let s = |o: Option<&'a str>| o.unwrap_or("");
    Ok(match env.body_type() {
        Body::Hello => {
            let h = env.body_as_hello().ok_or(missing)?;
            Request::Hello {
                version: h.protocol_version(),
            }
        }
        Body::Ping => Request::Ping {
            nonce: env.body_as_ping().map(|p| p.nonce()).unwrap_or(0),
        },
        Body::Register => {
            let r = env.body_as_register().ok_or(missing)?;
            Request::Register {
                username: s(r.username()),
                password: s(r.password()),
            }
        }
        Body::Login => {
            let l = env.body_as_login().ok_or(missing)?;
            Request::Login {
                account: Account::Name(s(l.username())),
                password: s(l.password()),
            }
        }
        Body::Resume => {
            let r = env.body_as_resume().ok_or(missing)?;
            let pairs = scratch.pairs.insert(FbPairs(r.since()));
            Request::Resume {
                token: s(r.token()),
                since: pairs,
            }
        }
        Body::Logout => Request::Logout,
        Body::LogoutAll => Request::LogoutAll,
        Body::ChangePassword => {
            let c = env.body_as_change_password().ok_or(missing)?;
            Request::ChangePassword {
                old_password: s(c.old_password()),
                new_password: s(c.new_password()),
            }
        }
        Body::Ack => {
            let items = env.body_as_ack().and_then(|a| a.items());
            Request::Ack {
                items: scratch.pairs.insert(FbPairs(items)),
            }
        }
        Body::SendMessage => {
            let m = env.body_as_send_message().ok_or(missing)?;
            if m.client_msg_id() == 0 {
                return Err(Reject(E::BadRequest, "client_msg_id must be non-zero"));
            }
            let to = match (m.to_user(), m.group_id()) {
                (0, 0) | (1.., 1..) => {
                    return Err(Reject(
                        E::BadRequest,
                        "set exactly one of to_user and group_id",
                    ));
                }
                (u, 0) => Target::User(u),
                (_, g) => Target::Group(g),
            };
            Request::Send {
                to,
                client_msg_id: m.client_msg_id(),
                body: s(m.body()),
            }
        }
        Body::SearchUsers => {
            let q = env.body_as_search_users().ok_or(missing)?;
            Request::SearchUsers {
                prefix: s(q.prefix()),
                after: q.after_id(),
                limit: q.limit(),
            }
        }
        Body::FriendRequest => {
            let r = env.body_as_friend_request().ok_or(missing)?;
            Request::FriendRequest {
                user: r.user_id(),
                note: s(r.note()),
            }
        }
        Body::FriendRespond => {
            let r = env.body_as_friend_respond().ok_or(missing)?;
            Request::FriendRespond {
                user: r.user_id(),
                accept: r.accept(),
            }
        }
        Body::FriendRemove => Request::FriendRemove {
            user: env.body_as_friend_remove().ok_or(missing)?.user_id(),
        },
        Body::FriendBlock => {
            let r = env.body_as_friend_block().ok_or(missing)?;
            Request::FriendBlock {
                user: r.user_id(),
                block: r.block(),
            }
        }
        Body::ListFriends => {
            let r = env.body_as_list_friends();
            Request::ListFriends {
                after: r.map(|x| x.after_id()).unwrap_or(0),
                limit: r.map(|x| x.limit()).unwrap_or(0),
            }
        }
        Body::CreateGroup => {
            let g = env.body_as_create_group();
            Request::CreateGroup {
                name: s(g.and_then(|g| g.name())),
                desc: "",
                private: g.map(|g| g.private()).unwrap_or(false),
                full_history: g.map(|g| g.full_history()).unwrap_or(false),
            }
        }
        Body::JoinGroup => Request::JoinGroup {
            group: env.body_as_join_group().map(|x| x.group_id()).unwrap_or(0),
        },
        Body::LeaveGroup => Request::LeaveGroup {
            group: env.body_as_leave_group().map(|x| x.group_id()).unwrap_or(0),
        },
        Body::DissolveGroup => Request::DissolveGroup {
            group: env
                .body_as_dissolve_group()
                .map(|x| x.group_id())
                .unwrap_or(0),
        },
        Body::RemoveMember => {
            let r = env.body_as_remove_member().ok_or(missing)?;
            Request::RemoveMember {
                group: r.group_id(),
                user: r.user_id(),
            }
        }
        Body::SetAdmin => {
            let r = env.body_as_set_admin().ok_or(missing)?;
            Request::SetAdmin {
                group: r.group_id(),
                user: r.user_id(),
                admin: r.admin(),
            }
        }
        Body::GroupMembers => {
            let r = env.body_as_group_members();
            Request::GroupMembers {
                group: r.map(|x| x.group_id()).unwrap_or(0),
                after: r.map(|x| x.after_id()).unwrap_or(0),
                limit: r.map(|x| x.limit()).unwrap_or(0),
            }
        }
        Body::ListGroups => {
            let r = env.body_as_list_groups();
            Request::ListGroups {
                after: r.map(|x| x.after_id()).unwrap_or(0),
                limit: r.map(|x| x.limit()).unwrap_or(0),
            }
        }
        Body::InviteToGroup => {
            let r = env.body_as_invite_to_group().ok_or(missing)?;
            Request::InviteToGroup {
                group: r.group_id(),
                user: r.user_id(),
            }
        }
        Body::RespondJoinRequest => {
            let r = env.body_as_respond_join_request().ok_or(missing)?;
            Request::RespondJoinRequest {
                group: r.group_id(),
                user: r.user_id(),
                accept: r.accept(),
            }
        }
        Body::History => {
            let h = env.body_as_history().ok_or(missing)?;
            Request::History {
                conversation: h.conversation(),
                before_seq: h.before_seq(),
                limit: h.limit(),
            }
        }
        Body::ListConversations => {
            let r = env.body_as_list_conversations();
            Request::ListConversations {
                after: r.map(|x| x.after()).unwrap_or(0),
                limit: r.map(|x| x.limit()).unwrap_or(0),
            }
        }
        Body::ReadCursors => {
            let r = env.body_as_read_cursors().ok_or(missing)?;
            Request::ReadCursors {
                conversation: r.conversation(),
                after: r.after_id(),
                limit: r.limit(),
            }
        }
        Body::Typing => {
            let r = env.body_as_typing().ok_or(missing)?;
            Request::Typing {
                conversation: r.conversation(),
                stopped: r.stopped(),
            }
        }
        _ => {
            return Err(Reject(
                E::UnknownBody,
                "unknown or non-request message type",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Enc;

    fn decoded<T>(frame: &[u8], f: impl FnOnce(Result<Request<'_>, Reject>) -> T) -> T {
        let env = crate::wire::decode(frame).expect("verifies");
        let mut scratch = Scratch::new();
        f(decode(env, &mut scratch))
    }

    #[test]
    fn send_needs_exactly_one_target_and_an_id() {
        let mut enc = Enc::new();
        let f = enc.send_message(1, 7, 0, 5, "hi").to_vec();
        decoded(&f, |r| match r {
            Ok(Request::Send {
                to: Target::User(7),
                client_msg_id: 5,
                body: "hi",
            }) => {}
            _ => panic!("not decoded as a send to user 7"),
        });
        for (to, g, cmid) in [(0, 0, 5), (7, 3, 5), (7, 0, 0)] {
            let f = enc.send_message(1, to, g, cmid, "hi").to_vec();
            decoded(&f, |r| {
                assert!(matches!(
                    r,
                    Err(Reject(crate::core::ErrorCode::BadRequest, _))
                ))
            });
        }
    }

    #[test]
    fn ack_items_are_read_in_place() {
        let mut enc = Enc::new();
        let f = enc.ack(&[(3, 9), (u64::MAX, u64::MAX)]).to_vec();
        decoded(&f, |r| match r {
            Ok(Request::Ack { items }) => {
                assert_eq!(items.collect_pairs(), vec![(3, 9), (u64::MAX, u64::MAX)])
            }
            _ => panic!("not an ack"),
        });
    }

    #[test]
    fn replies_are_not_requests() {
        for b in [Body::OkReply, Body::Messages, Body::NONE, Body(200)] {
            assert!(!is_request(b));
        }
        assert!(is_request(Body::SetAdmin));
    }
}

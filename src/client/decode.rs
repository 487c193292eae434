//! Turning one verified frame into an owned reply or push.

use super::types::*;
use crate::wire::{self, enc::role_from_fb, fb};

/// What one frame from the server carries.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Reply to request `req_id` (non-zero).
    Reply(u64, Reply),
    /// Pushed messages (live or catch-up), before dedup.
    Messages(Vec<ChatMsg>),
    /// Any other push.
    Event(Event),
    /// A frame the client has no use for (e.g. a reply type with req_id 0).
    Ignored,
}

fn s(v: Option<&str>) -> String {
    v.unwrap_or_default().to_owned()
}

fn chat_msg(c: fb::ChatMessage<'_>) -> ChatMsg {
    ChatMsg {
        conversation: c.conversation(),
        seq: c.seq(),
        sender: c.sender(),
        group_id: c.group_id(),
        timestamp_ms: c.timestamp_ms(),
        client_msg_id: c.client_msg_id(),
        body: s(c.body()),
        sender_name: s(c.sender_name()),
    }
}

fn chat_msgs(m: fb::Messages<'_>) -> Vec<ChatMsg> {
    m.messages()
        .map(|v| v.iter().map(chat_msg).collect())
        .unwrap_or_default()
}

fn missing(what: &str) -> String {
    format!("{what} frame without its body")
}

/// Decodes a frame payload (without the length prefix).
pub(crate) fn decode(payload: &[u8]) -> Result<Incoming> {
    let env =
        wire::decode(payload).map_err(|e| ClientError::Protocol(format!("invalid frame: {e}")))?;
    let req_id = env.req_id();
    let ty = env.body_type();
    // Every accessor below returns `Some` when `body_type` matches; the
    // verifier already checked the union, so `None` means a NONE body.
    let reply = match ty {
        fb::Body::OkReply => Reply::Ok,
        fb::Body::ErrorReply => {
            let e = env
                .body_as_error_reply()
                .ok_or_else(|| ClientError::Protocol(missing("ErrorReply")))?;
            if req_id == 0 {
                return Ok(Incoming::Event(Event::Error {
                    code: e.code(),
                    message: s(e.message()),
                }));
            }
            Reply::Error(e.code(), s(e.message()))
        }
        fb::Body::HelloOk => {
            let h = env
                .body_as_hello_ok()
                .ok_or_else(|| ClientError::Protocol(missing("HelloOk")))?;
            Reply::HelloOk(HelloInfo {
                protocol_version: h.protocol_version(),
                server: s(h.server()),
                max_frame: h.max_frame(),
                idle_timeout_ms: h.idle_timeout_ms(),
            })
        }
        fb::Body::RegisterOk => {
            let r = env
                .body_as_register_ok()
                .ok_or_else(|| ClientError::Protocol(missing("RegisterOk")))?;
            Reply::RegisterOk(r.user_id())
        }
        fb::Body::LoginOk => {
            let r = env
                .body_as_login_ok()
                .ok_or_else(|| ClientError::Protocol(missing("LoginOk")))?;
            Reply::LoginOk(Session {
                user_id: r.user_id(),
                username: s(r.username()),
                token: s(r.token()),
            })
        }
        fb::Body::Pong => {
            let p = env
                .body_as_pong()
                .ok_or_else(|| ClientError::Protocol(missing("Pong")))?;
            Reply::Pong(p.nonce())
        }
        fb::Body::UserList => {
            let l = env
                .body_as_user_list()
                .ok_or_else(|| ClientError::Protocol(missing("UserList")))?;
            let users = l
                .users()
                .map(|v| {
                    v.iter()
                        .map(|u| UserInfo {
                            user_id: u.user_id(),
                            username: s(u.username()),
                            online: u.online(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Reply::UserList(users, l.next_after_id())
        }
        fb::Body::FriendList => {
            let l = env
                .body_as_friend_list()
                .ok_or_else(|| ClientError::Protocol(missing("FriendList")))?;
            let friends = l
                .friends()
                .map(|v| {
                    v.iter()
                        .map(|f| Friend {
                            user_id: f.user_id(),
                            username: s(f.username()),
                            online: f.online(),
                            state: f.state(),
                            note: s(f.note()),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Reply::FriendList(friends, l.next_after_id())
        }
        fb::Body::GroupCreated => {
            let g = env
                .body_as_group_created()
                .ok_or_else(|| ClientError::Protocol(missing("GroupCreated")))?;
            Reply::GroupCreated(g.group_id(), g.conversation())
        }
        fb::Body::MemberList => {
            let l = env
                .body_as_member_list()
                .ok_or_else(|| ClientError::Protocol(missing("MemberList")))?;
            let members = l
                .members()
                .map(|v| {
                    v.iter()
                        .map(|m| Member {
                            user_id: m.user_id(),
                            username: s(m.username()),
                            role: role_from_fb(m.role()),
                            online: m.online(),
                            pending: match m.role() {
                                fb::Role::Invited => Some(Pending::Invited),
                                fb::Role::Pending => Some(Pending::Requested),
                                _ => None,
                            },
                        })
                        .collect()
                })
                .unwrap_or_default();
            Reply::MemberList(members, l.next_after_id())
        }
        fb::Body::GroupList => {
            let l = env
                .body_as_group_list()
                .ok_or_else(|| ClientError::Protocol(missing("GroupList")))?;
            let groups = l
                .groups()
                .map(|v| {
                    v.iter()
                        .map(|g| GroupInfo {
                            group_id: g.group_id(),
                            name: s(g.name()),
                            role: role_from_fb(g.role()),
                            conversation: g.conversation(),
                            private: g.private(),
                            full_history: g.full_history(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Reply::GroupList(groups, l.next_after_id())
        }
        fb::Body::SendOk => {
            let o = env
                .body_as_send_ok()
                .ok_or_else(|| ClientError::Protocol(missing("SendOk")))?;
            Reply::SendOk(Sent {
                conversation: o.conversation(),
                seq: o.seq(),
                timestamp_ms: o.timestamp_ms(),
                duplicate: o.duplicate(),
            })
        }
        fb::Body::Messages => {
            let m = env
                .body_as_messages()
                .ok_or_else(|| ClientError::Protocol(missing("Messages")))?;
            let msgs = chat_msgs(m);
            if req_id == 0 {
                return Ok(Incoming::Messages(msgs));
            }
            Reply::Messages(msgs)
        }
        fb::Body::ConversationList => {
            let l = env
                .body_as_conversation_list()
                .ok_or_else(|| ClientError::Protocol(missing("ConversationList")))?;
            let convs = l
                .conversations()
                .map(|v| {
                    v.iter()
                        .map(|c| ConversationInfo {
                            conversation: c.conversation(),
                            group_id: c.group_id(),
                            peer: c.peer(),
                            name: s(c.name()),
                            last_seq: c.last_seq(),
                            read_seq: c.read_seq(),
                            unread: c.unread(),
                            peer_read_seq: c.peer_read_seq(),
                            last_message: c.last_message().map(chat_msg),
                            preview_truncated: c.preview_truncated(),
                            online: c.online(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Reply::ConversationList(convs, l.next_after())
        }
        fb::Body::ReadCursorList => {
            let l = env
                .body_as_read_cursor_list()
                .ok_or_else(|| ClientError::Protocol(missing("ReadCursorList")))?;
            let cursors = l
                .cursors()
                .map(|v| v.iter().map(|c| (c.user_id(), c.seq())).collect())
                .unwrap_or_default();
            Reply::ReadCursorList(cursors, l.next_after_id())
        }
        fb::Body::ReadUpTo => {
            let r = env
                .body_as_read_up_to()
                .ok_or_else(|| ClientError::Protocol(missing("ReadUpTo")))?;
            return Ok(Incoming::Event(Event::ReadUpTo {
                conversation: r.conversation(),
                reader: r.reader(),
                seq: r.seq(),
            }));
        }
        fb::Body::TypingEvent => {
            let t = env
                .body_as_typing_event()
                .ok_or_else(|| ClientError::Protocol(missing("TypingEvent")))?;
            return Ok(Incoming::Event(Event::Typing {
                conversation: t.conversation(),
                group_id: t.group_id(),
                user_id: t.user_id(),
                username: s(t.username()),
                stopped: t.stopped(),
            }));
        }
        fb::Body::SyncDone => {
            let d = env
                .body_as_sync_done()
                .ok_or_else(|| ClientError::Protocol(missing("SyncDone")))?;
            return Ok(Incoming::Event(Event::SyncDone {
                messages: d.messages(),
            }));
        }
        fb::Body::Presence => {
            let p = env
                .body_as_presence()
                .ok_or_else(|| ClientError::Protocol(missing("Presence")))?;
            return Ok(Incoming::Event(Event::Presence {
                user_id: p.user_id(),
                online: p.online(),
            }));
        }
        fb::Body::FriendEvent => {
            let e = env
                .body_as_friend_event()
                .ok_or_else(|| ClientError::Protocol(missing("FriendEvent")))?;
            return Ok(Incoming::Event(Event::Friend {
                kind: e.kind(),
                user_id: e.user_id(),
                username: s(e.username()),
                note: s(e.note()),
            }));
        }
        fb::Body::GroupEvent => {
            let e = env
                .body_as_group_event()
                .ok_or_else(|| ClientError::Protocol(missing("GroupEvent")))?;
            return Ok(Incoming::Event(Event::Group {
                kind: e.kind(),
                group_id: e.group_id(),
                user_id: e.user_id(),
                actor: e.actor(),
                name: s(e.name()),
            }));
        }
        fb::Body::Goodbye => {
            let g = env
                .body_as_goodbye()
                .ok_or_else(|| ClientError::Protocol(missing("Goodbye")))?;
            return Ok(Incoming::Event(Event::Goodbye {
                code: g.code(),
                message: s(g.message()),
            }));
        }
        other => {
            return Err(ClientError::Protocol(format!(
                "server sent a {} frame, which only clients send",
                other.variant_name().unwrap_or("unknown")
            )));
        }
    };
    if req_id == 0 {
        // A reply type without a request to answer: nothing to complete.
        return Ok(Incoming::Ignored);
    }
    Ok(Incoming::Reply(req_id, reply))
}

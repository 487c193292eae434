//! Building frames. One [`Enc`] per connection or shard is reused for every
//! frame (`reset` keeps the builder's allocation), so encoding allocates
//! nothing in steady state. Each method returns the finished, size-prefixed
//! frame as a slice of the builder; copy it where it must go (the outbound
//! buffer, or an `Arc<[u8]>` shared by all recipients of a push).

use super::fb;
use crate::model::{ConvId, GroupId, Seq, UserId};
use crate::model::{ConvSummary, FriendKind, FriendRow, GroupRecord, Role, StoredMessage};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

/// One entry of a `ConversationList` reply: the stored summary and what
/// the server adds (the peer, the unread count, presence).
#[derive(Debug, Clone, Copy)]
pub struct ConvEntry<'a> {
    pub summary: &'a ConvSummary,
    /// Direct: the other participant; 0 for groups.
    pub peer: UserId,
    pub unread: u64,
    pub online: bool,
}

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

pub struct Enc {
    b: FlatBufferBuilder<'static>,
}

impl Default for Enc {
    fn default() -> Self {
        Enc::new()
    }
}

/// One user for `UserList`: (id, name, online).
pub type UserItem<'a> = (UserId, &'a str, bool);

pub fn role_fb(r: Role) -> fb::Role {
    match r {
        Role::Member => fb::Role::Member,
        Role::Admin => fb::Role::Admin,
        Role::Owner => fb::Role::Owner,
    }
}

pub fn role_from_fb(r: fb::Role) -> Role {
    match r {
        fb::Role::Owner => Role::Owner,
        fb::Role::Admin => Role::Admin,
        _ => Role::Member,
    }
}

impl Enc {
    pub fn new() -> Enc {
        Enc {
            b: FlatBufferBuilder::with_capacity(1024),
        }
    }

    fn finish(&mut self, req_id: u64, ty: fb::Body, body: WIPOffset<UnionWIPOffset>) -> &[u8] {
        let env = fb::Envelope::create(
            &mut self.b,
            &fb::EnvelopeArgs {
                req_id,
                body_type: ty,
                body: Some(body),
            },
        );
        self.b.finish_size_prefixed(env, None);
        self.b.finished_data()
    }

    fn start(&mut self) -> &mut FlatBufferBuilder<'static> {
        self.b.reset();
        &mut self.b
    }

    // ------------------------------------------------------------ replies

    pub fn ok(&mut self, req_id: u64) -> &[u8] {
        let b = self.start();
        let o = fb::OkReply::create(b, &fb::OkReplyArgs {});
        self.finish(req_id, fb::Body::OkReply, o.as_union_value())
    }

    pub fn error(&mut self, req_id: u64, code: fb::ErrorCode, message: &str) -> &[u8] {
        let b = self.start();
        let m = b.create_string(message);
        let o = fb::ErrorReply::create(
            b,
            &fb::ErrorReplyArgs {
                code,
                message: Some(m),
            },
        );
        self.finish(req_id, fb::Body::ErrorReply, o.as_union_value())
    }

    pub fn hello_ok(&mut self, req_id: u64, max_frame: u32, idle_timeout_ms: u32) -> &[u8] {
        let b = self.start();
        let s = b.create_string(concat!("ringchat/", env!("CARGO_PKG_VERSION")));
        let o = fb::HelloOk::create(
            b,
            &fb::HelloOkArgs {
                protocol_version: PROTOCOL_VERSION,
                server: Some(s),
                max_frame,
                idle_timeout_ms,
            },
        );
        self.finish(req_id, fb::Body::HelloOk, o.as_union_value())
    }

    pub fn register_ok(&mut self, req_id: u64, user_id: UserId) -> &[u8] {
        let b = self.start();
        let o = fb::RegisterOk::create(b, &fb::RegisterOkArgs { user_id });
        self.finish(req_id, fb::Body::RegisterOk, o.as_union_value())
    }

    pub fn login_ok(&mut self, req_id: u64, user_id: UserId, username: &str, token: &str) -> &[u8] {
        let b = self.start();
        let u = b.create_string(username);
        let t = b.create_string(token);
        let o = fb::LoginOk::create(
            b,
            &fb::LoginOkArgs {
                user_id,
                username: Some(u),
                token: Some(t),
            },
        );
        self.finish(req_id, fb::Body::LoginOk, o.as_union_value())
    }

    pub fn pong(&mut self, req_id: u64, nonce: u64) -> &[u8] {
        let b = self.start();
        let o = fb::Pong::create(b, &fb::PongArgs { nonce });
        self.finish(req_id, fb::Body::Pong, o.as_union_value())
    }

    pub fn user_list(
        &mut self,
        req_id: u64,
        users: &[UserItem<'_>],
        next_after_id: UserId,
    ) -> &[u8] {
        let b = self.start();
        let mut items = Vec::with_capacity(users.len());
        for &(user_id, name, online) in users {
            let n = b.create_string(name);
            items.push(fb::UserInfo::create(
                b,
                &fb::UserInfoArgs {
                    user_id,
                    username: Some(n),
                    online,
                },
            ));
        }
        let v = b.create_vector(&items);
        let o = fb::UserList::create(
            b,
            &fb::UserListArgs {
                users: Some(v),
                next_after_id,
            },
        );
        self.finish(req_id, fb::Body::UserList, o.as_union_value())
    }

    /// `online(user)` tells each row's presence.
    pub fn friend_list(
        &mut self,
        req_id: u64,
        rows: &[FriendRow],
        online: impl Fn(UserId) -> bool,
        next_after_id: UserId,
    ) -> &[u8] {
        let b = self.start();
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let n = b.create_string(&r.username);
            let note = b.create_string(&r.note);
            let state = match r.kind {
                FriendKind::Friend => fb::FriendState::Friend,
                FriendKind::Incoming => fb::FriendState::IncomingRequest,
                FriendKind::Outgoing => fb::FriendState::OutgoingRequest,
                FriendKind::Blocked => fb::FriendState::Blocked,
            };
            // Presence is only shown between friends.
            let on = r.kind == FriendKind::Friend && online(r.user_id);
            items.push(fb::FriendEntry::create(
                b,
                &fb::FriendEntryArgs {
                    user_id: r.user_id,
                    username: Some(n),
                    online: on,
                    state,
                    note: Some(note),
                },
            ));
        }
        let v = b.create_vector(&items);
        let o = fb::FriendList::create(
            b,
            &fb::FriendListArgs {
                friends: Some(v),
                next_after_id,
            },
        );
        self.finish(req_id, fb::Body::FriendList, o.as_union_value())
    }

    pub fn group_created(&mut self, req_id: u64, group_id: GroupId, conversation: ConvId) -> &[u8] {
        let b = self.start();
        let o = fb::GroupCreated::create(
            b,
            &fb::GroupCreatedArgs {
                group_id,
                conversation,
            },
        );
        self.finish(req_id, fb::Body::GroupCreated, o.as_union_value())
    }

    /// Members as `(user, name, role)`; `role` may be `Pending`/`Invited`
    /// for the owner's and admins' view. Presence only for real members.
    pub fn member_list(
        &mut self,
        req_id: u64,
        group_id: GroupId,
        members: &[(UserId, &str, fb::Role)],
        online: impl Fn(UserId) -> bool,
        next_after_id: UserId,
    ) -> &[u8] {
        let b = self.start();
        let mut items = Vec::with_capacity(members.len());
        for &(user_id, name, role) in members {
            let n = b.create_string(name);
            let member = matches!(role, fb::Role::Member | fb::Role::Admin | fb::Role::Owner);
            items.push(fb::Member::create(
                b,
                &fb::MemberArgs {
                    user_id,
                    username: Some(n),
                    role,
                    online: member && online(user_id),
                },
            ));
        }
        let v = b.create_vector(&items);
        let o = fb::MemberList::create(
            b,
            &fb::MemberListArgs {
                group_id,
                members: Some(v),
                next_after_id,
            },
        );
        self.finish(req_id, fb::Body::MemberList, o.as_union_value())
    }

    pub fn group_list(
        &mut self,
        req_id: u64,
        groups: &[(GroupRecord, Role)],
        next_after_id: GroupId,
    ) -> &[u8] {
        let b = self.start();
        let mut items = Vec::with_capacity(groups.len());
        for (g, role) in groups {
            let n = b.create_string(&g.name);
            items.push(fb::GroupInfo::create(
                b,
                &fb::GroupInfoArgs {
                    group_id: g.id,
                    name: Some(n),
                    role: role_fb(*role),
                    conversation: crate::model::group_conv(g.id),
                    private: g.private,
                    full_history: g.full_history,
                },
            ));
        }
        let v = b.create_vector(&items);
        let o = fb::GroupList::create(
            b,
            &fb::GroupListArgs {
                groups: Some(v),
                next_after_id,
            },
        );
        self.finish(req_id, fb::Body::GroupList, o.as_union_value())
    }

    pub fn send_ok(
        &mut self,
        req_id: u64,
        conversation: ConvId,
        seq: Seq,
        timestamp_ms: u64,
        duplicate: bool,
    ) -> &[u8] {
        let b = self.start();
        let o = fb::SendOk::create(
            b,
            &fb::SendOkArgs {
                conversation,
                seq,
                timestamp_ms,
                duplicate,
            },
        );
        self.finish(req_id, fb::Body::SendOk, o.as_union_value())
    }

    pub fn conversation_list(
        &mut self,
        req_id: u64,
        convs: &[ConvEntry<'_>],
        next_after: ConvId,
    ) -> &[u8] {
        let b = self.start();
        let mut items = Vec::with_capacity(convs.len());
        for e in convs {
            let s = e.summary;
            let name = b.create_string(&s.name);
            let group_id = match crate::model::conv_kind(s.cursor.conv) {
                crate::model::ConvKind::Group(g) => g,
                _ => 0,
            };
            let last_message = s.last.as_ref().map(|m| {
                let body = b.create_string(&m.body);
                let sender_name = b.create_string(&m.sender_name);
                fb::ChatMessage::create(
                    b,
                    &fb::ChatMessageArgs {
                        conversation: m.conv,
                        seq: m.seq,
                        sender: m.sender,
                        group_id,
                        timestamp_ms: m.timestamp_ms,
                        client_msg_id: m.client_msg_id,
                        body: Some(body),
                        sender_name: Some(sender_name),
                    },
                )
            });
            items.push(fb::ConversationInfo::create(
                b,
                &fb::ConversationInfoArgs {
                    conversation: s.cursor.conv,
                    group_id,
                    peer: e.peer,
                    name: Some(name),
                    last_seq: s.cursor.last_seq,
                    read_seq: s.cursor.delivered,
                    unread: e.unread,
                    peer_read_seq: s.peer_delivered,
                    preview_truncated: s.truncated && last_message.is_some(),
                    last_message,
                    online: e.online,
                },
            ));
        }
        let v = b.create_vector(&items);
        let o = fb::ConversationList::create(
            b,
            &fb::ConversationListArgs {
                conversations: Some(v),
                next_after,
            },
        );
        self.finish(req_id, fb::Body::ConversationList, o.as_union_value())
    }

    pub fn read_cursor_list(
        &mut self,
        req_id: u64,
        conversation: ConvId,
        cursors: &[(UserId, Seq)],
        next_after_id: UserId,
    ) -> &[u8] {
        let b = self.start();
        let items: Vec<fb::UserSeq> = cursors
            .iter()
            .map(|&(u, s)| fb::UserSeq::new(u, s))
            .collect();
        let v = b.create_vector(&items);
        let o = fb::ReadCursorList::create(
            b,
            &fb::ReadCursorListArgs {
                conversation,
                cursors: Some(v),
                next_after_id,
            },
        );
        self.finish(req_id, fb::Body::ReadCursorList, o.as_union_value())
    }

    // ------------------------------------------------------------ pushes

    /// `reader` has read `conversation` up to `seq` (req_id 0).
    pub fn read_up_to(&mut self, conversation: ConvId, reader: UserId, seq: Seq) -> &[u8] {
        let b = self.start();
        let o = fb::ReadUpTo::create(
            b,
            &fb::ReadUpToArgs {
                conversation,
                reader,
                seq,
            },
        );
        self.finish(0, fb::Body::ReadUpTo, o.as_union_value())
    }

    /// `user_id` is typing in `conversation` (req_id 0).
    pub fn typing_event(
        &mut self,
        conversation: ConvId,
        user_id: UserId,
        username: &str,
        stopped: bool,
    ) -> &[u8] {
        let b = self.start();
        let group_id = match crate::model::conv_kind(conversation) {
            crate::model::ConvKind::Group(g) => g,
            _ => 0,
        };
        let u = b.create_string(username);
        let o = fb::TypingEvent::create(
            b,
            &fb::TypingEventArgs {
                conversation,
                group_id,
                user_id,
                username: Some(u),
                stopped,
            },
        );
        self.finish(0, fb::Body::TypingEvent, o.as_union_value())
    }

    /// `Messages` frame: a live push (req_id 0), a catch-up page, or a History reply.
    pub fn messages<'m>(
        &mut self,
        req_id: u64,
        msgs: impl IntoIterator<Item = &'m StoredMessage>,
    ) -> &[u8] {
        let b = self.start();
        let mut items = Vec::new();
        for m in msgs {
            let body = b.create_string(&m.body);
            let name = b.create_string(&m.sender_name);
            let group_id = match crate::model::conv_kind(m.conv) {
                crate::model::ConvKind::Group(g) => g,
                _ => 0,
            };
            items.push(fb::ChatMessage::create(
                b,
                &fb::ChatMessageArgs {
                    conversation: m.conv,
                    seq: m.seq,
                    sender: m.sender,
                    group_id,
                    timestamp_ms: m.timestamp_ms,
                    client_msg_id: m.client_msg_id,
                    body: Some(body),
                    sender_name: Some(name),
                },
            ));
        }
        let v = b.create_vector(&items);
        let o = fb::Messages::create(b, &fb::MessagesArgs { messages: Some(v) });
        self.finish(req_id, fb::Body::Messages, o.as_union_value())
    }

    pub fn sync_done(&mut self, messages: u64) -> &[u8] {
        let b = self.start();
        let o = fb::SyncDone::create(b, &fb::SyncDoneArgs { messages });
        self.finish(0, fb::Body::SyncDone, o.as_union_value())
    }

    pub fn presence(&mut self, user_id: UserId, online: bool) -> &[u8] {
        let b = self.start();
        let o = fb::Presence::create(b, &fb::PresenceArgs { user_id, online });
        self.finish(0, fb::Body::Presence, o.as_union_value())
    }

    pub fn friend_event(
        &mut self,
        kind: fb::FriendEventKind,
        user_id: UserId,
        username: &str,
        note: &str,
    ) -> &[u8] {
        let b = self.start();
        let u = b.create_string(username);
        let n = b.create_string(note);
        let o = fb::FriendEvent::create(
            b,
            &fb::FriendEventArgs {
                kind,
                user_id,
                username: Some(u),
                note: Some(n),
            },
        );
        self.finish(0, fb::Body::FriendEvent, o.as_union_value())
    }

    /// `name`: the group's name, for an invitee (empty: none sent).
    pub fn group_event(
        &mut self,
        kind: fb::GroupEventKind,
        group_id: GroupId,
        user_id: UserId,
        actor: UserId,
        name: &str,
    ) -> &[u8] {
        let b = self.start();
        let name = (!name.is_empty()).then(|| b.create_string(name));
        let o = fb::GroupEvent::create(
            b,
            &fb::GroupEventArgs {
                kind,
                group_id,
                user_id,
                actor,
                name,
            },
        );
        self.finish(0, fb::Body::GroupEvent, o.as_union_value())
    }

    pub fn goodbye(&mut self, code: fb::ErrorCode, message: &str) -> &[u8] {
        let b = self.start();
        let m = b.create_string(message);
        let o = fb::Goodbye::create(
            b,
            &fb::GoodbyeArgs {
                code,
                message: Some(m),
            },
        );
        self.finish(0, fb::Body::Goodbye, o.as_union_value())
    }

    // ------------------------------------------------------------ requests (client side)

    pub fn hello(&mut self, req_id: u64, client_name: &str) -> &[u8] {
        self.hello_version(req_id, PROTOCOL_VERSION, client_name)
    }

    pub fn hello_version(
        &mut self,
        req_id: u64,
        protocol_version: u32,
        client_name: &str,
    ) -> &[u8] {
        let b = self.start();
        let n = b.create_string(client_name);
        let o = fb::Hello::create(
            b,
            &fb::HelloArgs {
                protocol_version,
                client_name: Some(n),
            },
        );
        self.finish(req_id, fb::Body::Hello, o.as_union_value())
    }

    pub fn register(&mut self, req_id: u64, username: &str, password: &str) -> &[u8] {
        let b = self.start();
        let u = b.create_string(username);
        let p = b.create_string(password);
        let o = fb::Register::create(
            b,
            &fb::RegisterArgs {
                username: Some(u),
                password: Some(p),
            },
        );
        self.finish(req_id, fb::Body::Register, o.as_union_value())
    }

    pub fn login(&mut self, req_id: u64, username: &str, password: &str) -> &[u8] {
        let b = self.start();
        let u = b.create_string(username);
        let p = b.create_string(password);
        let o = fb::Login::create(
            b,
            &fb::LoginArgs {
                username: Some(u),
                password: Some(p),
            },
        );
        self.finish(req_id, fb::Body::Login, o.as_union_value())
    }

    /// `since`: (conversation, last seq held) per conversation the device knows.
    pub fn resume(&mut self, req_id: u64, token: &str, since: &[(ConvId, Seq)]) -> &[u8] {
        let b = self.start();
        let t = b.create_string(token);
        let items: Vec<fb::ConvSeq> = since.iter().map(|&(c, s)| fb::ConvSeq::new(c, s)).collect();
        let v = b.create_vector(&items);
        let o = fb::Resume::create(
            b,
            &fb::ResumeArgs {
                token: Some(t),
                since: Some(v),
            },
        );
        self.finish(req_id, fb::Body::Resume, o.as_union_value())
    }

    pub fn logout(&mut self, req_id: u64) -> &[u8] {
        let b = self.start();
        let o = fb::Logout::create(b, &fb::LogoutArgs {});
        self.finish(req_id, fb::Body::Logout, o.as_union_value())
    }

    pub fn logout_all(&mut self, req_id: u64) -> &[u8] {
        let b = self.start();
        let o = fb::LogoutAll::create(b, &fb::LogoutAllArgs {});
        self.finish(req_id, fb::Body::LogoutAll, o.as_union_value())
    }

    pub fn change_password(&mut self, req_id: u64, old: &str, new: &str) -> &[u8] {
        let b = self.start();
        let o = b.create_string(old);
        let n = b.create_string(new);
        let o = fb::ChangePassword::create(
            b,
            &fb::ChangePasswordArgs {
                old_password: Some(o),
                new_password: Some(n),
            },
        );
        self.finish(req_id, fb::Body::ChangePassword, o.as_union_value())
    }

    pub fn ping(&mut self, req_id: u64, nonce: u64) -> &[u8] {
        let b = self.start();
        let o = fb::Ping::create(b, &fb::PingArgs { nonce });
        self.finish(req_id, fb::Body::Ping, o.as_union_value())
    }

    pub fn search_users(
        &mut self,
        req_id: u64,
        prefix: &str,
        after_id: UserId,
        limit: u32,
    ) -> &[u8] {
        let b = self.start();
        let p = b.create_string(prefix);
        let o = fb::SearchUsers::create(
            b,
            &fb::SearchUsersArgs {
                prefix: Some(p),
                after_id,
                limit,
            },
        );
        self.finish(req_id, fb::Body::SearchUsers, o.as_union_value())
    }

    pub fn friend_request(&mut self, req_id: u64, user_id: UserId, note: &str) -> &[u8] {
        let b = self.start();
        let n = b.create_string(note);
        let o = fb::FriendRequest::create(
            b,
            &fb::FriendRequestArgs {
                user_id,
                note: Some(n),
            },
        );
        self.finish(req_id, fb::Body::FriendRequest, o.as_union_value())
    }

    pub fn friend_respond(&mut self, req_id: u64, user_id: UserId, accept: bool) -> &[u8] {
        let b = self.start();
        let o = fb::FriendRespond::create(b, &fb::FriendRespondArgs { user_id, accept });
        self.finish(req_id, fb::Body::FriendRespond, o.as_union_value())
    }

    pub fn friend_remove(&mut self, req_id: u64, user_id: UserId) -> &[u8] {
        let b = self.start();
        let o = fb::FriendRemove::create(b, &fb::FriendRemoveArgs { user_id });
        self.finish(req_id, fb::Body::FriendRemove, o.as_union_value())
    }

    pub fn friend_block(&mut self, req_id: u64, user_id: UserId, block: bool) -> &[u8] {
        let b = self.start();
        let o = fb::FriendBlock::create(b, &fb::FriendBlockArgs { user_id, block });
        self.finish(req_id, fb::Body::FriendBlock, o.as_union_value())
    }

    pub fn list_friends(&mut self, req_id: u64) -> &[u8] {
        self.list_friends_page(req_id, 0, 0)
    }

    pub fn list_friends_page(&mut self, req_id: u64, after_id: UserId, limit: u32) -> &[u8] {
        let b = self.start();
        let o = fb::ListFriends::create(b, &fb::ListFriendsArgs { after_id, limit });
        self.finish(req_id, fb::Body::ListFriends, o.as_union_value())
    }

    pub fn create_group(&mut self, req_id: u64, name: &str) -> &[u8] {
        self.create_group_opts(req_id, name, false, false)
    }

    pub fn create_group_opts(
        &mut self,
        req_id: u64,
        name: &str,
        private: bool,
        full_history: bool,
    ) -> &[u8] {
        let b = self.start();
        let n = b.create_string(name);
        let o = fb::CreateGroup::create(
            b,
            &fb::CreateGroupArgs {
                name: Some(n),
                private,
                full_history,
            },
        );
        self.finish(req_id, fb::Body::CreateGroup, o.as_union_value())
    }

    pub fn invite_to_group(&mut self, req_id: u64, group_id: GroupId, user_id: UserId) -> &[u8] {
        let b = self.start();
        let o = fb::InviteToGroup::create(b, &fb::InviteToGroupArgs { group_id, user_id });
        self.finish(req_id, fb::Body::InviteToGroup, o.as_union_value())
    }

    pub fn respond_join_request(
        &mut self,
        req_id: u64,
        group_id: GroupId,
        user_id: UserId,
        accept: bool,
    ) -> &[u8] {
        let b = self.start();
        let o = fb::RespondJoinRequest::create(
            b,
            &fb::RespondJoinRequestArgs {
                group_id,
                user_id,
                accept,
            },
        );
        self.finish(req_id, fb::Body::RespondJoinRequest, o.as_union_value())
    }

    pub fn join_group(&mut self, req_id: u64, group_id: GroupId) -> &[u8] {
        let b = self.start();
        let o = fb::JoinGroup::create(b, &fb::JoinGroupArgs { group_id });
        self.finish(req_id, fb::Body::JoinGroup, o.as_union_value())
    }

    pub fn leave_group(&mut self, req_id: u64, group_id: GroupId) -> &[u8] {
        let b = self.start();
        let o = fb::LeaveGroup::create(b, &fb::LeaveGroupArgs { group_id });
        self.finish(req_id, fb::Body::LeaveGroup, o.as_union_value())
    }

    pub fn group_members(&mut self, req_id: u64, group_id: GroupId) -> &[u8] {
        self.group_members_page(req_id, group_id, 0, 0)
    }

    pub fn group_members_page(
        &mut self,
        req_id: u64,
        group_id: GroupId,
        after_id: UserId,
        limit: u32,
    ) -> &[u8] {
        let b = self.start();
        let o = fb::GroupMembers::create(
            b,
            &fb::GroupMembersArgs {
                group_id,
                after_id,
                limit,
            },
        );
        self.finish(req_id, fb::Body::GroupMembers, o.as_union_value())
    }

    pub fn remove_member(&mut self, req_id: u64, group_id: GroupId, user_id: UserId) -> &[u8] {
        let b = self.start();
        let o = fb::RemoveMember::create(b, &fb::RemoveMemberArgs { group_id, user_id });
        self.finish(req_id, fb::Body::RemoveMember, o.as_union_value())
    }

    pub fn dissolve_group(&mut self, req_id: u64, group_id: GroupId) -> &[u8] {
        let b = self.start();
        let o = fb::DissolveGroup::create(b, &fb::DissolveGroupArgs { group_id });
        self.finish(req_id, fb::Body::DissolveGroup, o.as_union_value())
    }

    pub fn set_admin(
        &mut self,
        req_id: u64,
        group_id: GroupId,
        user_id: UserId,
        admin: bool,
    ) -> &[u8] {
        let b = self.start();
        let o = fb::SetAdmin::create(
            b,
            &fb::SetAdminArgs {
                group_id,
                user_id,
                admin,
            },
        );
        self.finish(req_id, fb::Body::SetAdmin, o.as_union_value())
    }

    pub fn list_groups(&mut self, req_id: u64) -> &[u8] {
        self.list_groups_page(req_id, 0, 0)
    }

    pub fn list_groups_page(&mut self, req_id: u64, after_id: GroupId, limit: u32) -> &[u8] {
        let b = self.start();
        let o = fb::ListGroups::create(b, &fb::ListGroupsArgs { after_id, limit });
        self.finish(req_id, fb::Body::ListGroups, o.as_union_value())
    }

    /// Exactly one of `to_user` / `group_id` is non-zero.
    pub fn send_message(
        &mut self,
        req_id: u64,
        to_user: UserId,
        group_id: GroupId,
        client_msg_id: u64,
        body: &str,
    ) -> &[u8] {
        let b = self.start();
        let t = b.create_string(body);
        let o = fb::SendMessage::create(
            b,
            &fb::SendMessageArgs {
                to_user,
                group_id,
                client_msg_id,
                body: Some(t),
            },
        );
        self.finish(req_id, fb::Body::SendMessage, o.as_union_value())
    }

    /// Delivered cursors; sent with req_id 0, no reply.
    pub fn ack(&mut self, items: &[(ConvId, Seq)]) -> &[u8] {
        let b = self.start();
        let items: Vec<fb::ConvSeq> = items.iter().map(|&(c, s)| fb::ConvSeq::new(c, s)).collect();
        let v = b.create_vector(&items);
        let o = fb::Ack::create(b, &fb::AckArgs { items: Some(v) });
        self.finish(0, fb::Body::Ack, o.as_union_value())
    }

    pub fn history(
        &mut self,
        req_id: u64,
        conversation: ConvId,
        before_seq: Seq,
        limit: u32,
    ) -> &[u8] {
        let b = self.start();
        let o = fb::History::create(
            b,
            &fb::HistoryArgs {
                conversation,
                before_seq,
                limit,
            },
        );
        self.finish(req_id, fb::Body::History, o.as_union_value())
    }

    pub fn list_conversations(&mut self, req_id: u64, after: ConvId, limit: u32) -> &[u8] {
        let b = self.start();
        let o = fb::ListConversations::create(b, &fb::ListConversationsArgs { after, limit });
        self.finish(req_id, fb::Body::ListConversations, o.as_union_value())
    }

    pub fn read_cursors(
        &mut self,
        req_id: u64,
        conversation: ConvId,
        after_id: UserId,
        limit: u32,
    ) -> &[u8] {
        let b = self.start();
        let o = fb::ReadCursors::create(
            b,
            &fb::ReadCursorsArgs {
                conversation,
                after_id,
                limit,
            },
        );
        self.finish(req_id, fb::Body::ReadCursors, o.as_union_value())
    }

    pub fn typing(&mut self, req_id: u64, conversation: ConvId, stopped: bool) -> &[u8] {
        let b = self.start();
        let o = fb::Typing::create(
            b,
            &fb::TypingArgs {
                conversation,
                stopped,
            },
        );
        self.finish(req_id, fb::Body::Typing, o.as_union_value())
    }
}

//! One request model for every protocol.
//!
//! A connection is transport + codec + the one session: the native codec
//! (`server::native`) turns a verified FlatBuffers envelope into a [`Request`],
//! the legacy codec (`legacy::codec`) turns a JSON object into one, and the
//! session's handlers (`server::cmd`) never know which protocol a request
//! came in on. Text fields borrow from the received bytes (the native frame
//! buffer, or the parsed legacy object), so decoding a request allocates
//! nothing; list fields (ack items, resume cursors) are read through
//! [`Pairs`] for the same reason.

use crate::model::{ConvId, GroupId, Seq, UserId};

/// A read-only list of `(conversation, seq)` pairs, whatever holds it: a
/// FlatBuffers vector in the frame, or a slice.
pub trait Pairs {
    fn each(&self, f: &mut dyn FnMut(ConvId, Seq));

    fn collect_pairs(&self) -> Vec<(ConvId, Seq)> {
        let mut v = Vec::new();
        self.each(&mut |c, s| v.push((c, s)));
        v
    }
}

impl Pairs for &[(ConvId, Seq)] {
    fn each(&self, f: &mut dyn FnMut(ConvId, Seq)) {
        for &(c, s) in self.iter() {
            f(c, s)
        }
    }
}

impl Pairs for Vec<(ConvId, Seq)> {
    fn each(&self, f: &mut dyn FnMut(ConvId, Seq)) {
        self.as_slice().each(f)
    }
}

/// Who a password login names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account<'a> {
    /// The native protocol logs in by username.
    Name(&'a str),
    /// The old protocol logs in by numeric user id.
    Id(UserId),
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    User(UserId),
    Group(GroupId),
}

/// What a client asks for. Identity is never part of it: the session's
/// login decides who acts.
pub enum Request<'a> {
    /// Native handshake (the old protocol has none).
    Hello {
        version: u32,
    },
    Ping {
        nonce: u64,
    },
    Register {
        username: &'a str,
        password: &'a str,
    },
    Login {
        account: Account<'a>,
        password: &'a str,
    },
    Resume {
        token: &'a str,
        since: &'a dyn Pairs,
    },
    Logout,
    /// Ends every session of the user (tokens and live connections), this
    /// one after the reply.
    LogoutAll,
    /// Sets a new password after checking the old one; every other session
    /// of the user ends, this one stays.
    ChangePassword {
        old_password: &'a str,
        new_password: &'a str,
    },
    Send {
        to: Target,
        /// Non-zero; the owner dedups resends on `(sender, client_msg_id)`.
        client_msg_id: u64,
        body: &'a str,
    },
    Ack {
        items: &'a dyn Pairs,
    },
    SearchUsers {
        prefix: &'a str,
        after: UserId,
        limit: u32,
    },
    FriendRequest {
        user: UserId,
        note: &'a str,
    },
    FriendRespond {
        user: UserId,
        accept: bool,
    },
    FriendRemove {
        user: UserId,
    },
    FriendBlock {
        user: UserId,
        block: bool,
    },
    /// The old protocol's "add friend": accept the user's pending request
    /// to us if there is one, else ask them (never a friendship by itself).
    FriendAdd {
        user: UserId,
        note: &'a str,
    },
    /// A page of the user's relationships: user ids above `after`, at most
    /// `limit` (0: the server's page size), never more than fit one frame.
    ListFriends {
        after: UserId,
        limit: u32,
    },
    CreateGroup {
        name: &'a str,
        desc: &'a str,
        /// Joining needs an invitation or an approved request.
        private: bool,
        /// New members may read history from before they joined.
        full_history: bool,
    },
    JoinGroup {
        group: GroupId,
    },
    LeaveGroup {
        group: GroupId,
    },
    DissolveGroup {
        group: GroupId,
    },
    RemoveMember {
        group: GroupId,
        user: UserId,
    },
    SetAdmin {
        group: GroupId,
        user: UserId,
        admin: bool,
    },
    /// A page of a group's members (members only), by user id like
    /// `ListFriends`; owners and admins also see who is invited or asks.
    GroupMembers {
        group: GroupId,
        after: UserId,
        limit: u32,
    },
    /// Owner/admin: lets `user` join the (private) group.
    InviteToGroup {
        group: GroupId,
        user: UserId,
    },
    /// Owner/admin: accepts or rejects `user`'s request to join.
    RespondJoinRequest {
        group: GroupId,
        user: UserId,
        accept: bool,
    },
    /// Name, description and members of an existing group (the old
    /// protocol's "group info"): of a public group to anyone, as the old
    /// server did; of a private group to its members only.
    GroupInfo {
        group: GroupId,
    },
    /// A page of the user's groups, by group id like `ListFriends`.
    ListGroups {
        after: GroupId,
        limit: u32,
    },
    History {
        conversation: ConvId,
        before_seq: Seq,
        limit: u32,
    },
    /// A page of the user's conversations (direct and group) with their
    /// last message and read state, by conversation id like `ListFriends`.
    ListConversations {
        after: ConvId,
        limit: u32,
    },
    /// A page of the participants' read cursors in a conversation the user
    /// belongs to, by user id.
    ReadCursors {
        conversation: ConvId,
        after: UserId,
        limit: u32,
    },
    /// The user is typing (or stopped) in a conversation: relayed to its
    /// online participants, never stored.
    Typing {
        conversation: ConvId,
        stopped: bool,
    },
}

/// The kind of a request, for the phase gate and for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello,
    Ping,
    Register,
    Login,
    Resume,
    Logout,
    Ack,
    /// Everything that needs a logged-in session.
    Session,
}

impl Request<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Hello { .. } => Kind::Hello,
            Request::Ping { .. } => Kind::Ping,
            Request::Register { .. } => Kind::Register,
            Request::Login { .. } => Kind::Login,
            Request::Resume { .. } => Kind::Resume,
            Request::Logout => Kind::Logout,
            Request::Ack { .. } => Kind::Ack,
            _ => Kind::Session,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_from_a_slice_keep_order() {
        let v: &[(ConvId, Seq)] = &[(3, 1), (1, 9), (3, 2)];
        assert_eq!(v.collect_pairs(), vec![(3, 1), (1, 9), (3, 2)]);
        let mut sum = 0;
        v.each(&mut |c, s| sum += c * 10 + s);
        assert_eq!(sum, 31 + 19 + 32);
    }

    #[test]
    fn only_session_requests_need_a_login() {
        let none: &[(ConvId, Seq)] = &[];
        assert_eq!(Request::Ping { nonce: 1 }.kind(), Kind::Ping);
        assert_eq!(Request::Ack { items: &none }.kind(), Kind::Ack);
        assert_eq!(
            Request::ListFriends { after: 0, limit: 0 }.kind(),
            Kind::Session
        );
        assert_eq!(
            Request::Login {
                account: Account::Id(7),
                password: "x"
            }
            .kind(),
            Kind::Login
        );
    }
}

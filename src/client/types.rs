//! Owned results and events of the client.
//!
//! FlatBuffers views borrow the frame they came from; the reader thread
//! reuses its buffer for the next frame, so everything handed to callers is
//! copied into these plain types first.

use crate::model::Role;
use crate::model::{ConvId, GroupId, Seq, UserId};
use crate::wire::fb;
use std::fmt;

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket failed (connect, read or write).
    Io(std::io::Error),
    /// The server answered with `ErrorReply`.
    Server {
        code: fb::ErrorCode,
        message: String,
    },
    /// The connection is closed (by the server, by us, or by a network error).
    Closed,
    /// No reply arrived within the request timeout.
    Timeout,
    /// The server sent something this client cannot make sense of.
    Protocol(String),
}

impl ClientError {
    /// The server's error code, if the server rejected the request.
    ///
    /// Callers (and tests) switch on codes, never on message text, which is
    /// meant for people and may change.
    pub fn code(&self) -> Option<fb::ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "network error: {e}"),
            ClientError::Server { code, message } if message.is_empty() => {
                write!(f, "server refused: {}", crate::wire::error_name(*code))
            }
            ClientError::Server { code, message } => {
                write!(
                    f,
                    "server refused ({}): {message}",
                    crate::wire::error_name(*code)
                )
            }
            ClientError::Closed => write!(f, "the connection is closed"),
            ClientError::Timeout => write!(f, "the server did not answer in time"),
            ClientError::Protocol(m) => write!(f, "unexpected data from the server: {m}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// What the server said in `HelloOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    pub protocol_version: u32,
    pub server: String,
    pub max_frame: u32,
    pub idle_timeout_ms: u32,
}

/// A logged-in session (from `LoginOk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub username: String,
    /// Bearer token for `Resume` on a later connection.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub user_id: UserId,
    pub username: String,
    /// Only ever true for friends: presence is not shown to strangers.
    pub online: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Friend {
    pub user_id: UserId,
    pub username: String,
    pub online: bool,
    pub state: fb::FriendState,
    /// Note of a pending request (empty otherwise).
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: UserId,
    pub username: String,
    /// `Member` for the pending ones.
    pub role: Role,
    pub online: bool,
    /// Not a member yet: invited, or asking to join (shown to the owner and
    /// admins only).
    pub pending: Option<Pending>,
}

/// Why a non-member is listed with a group's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// An owner or admin invited them; they may join.
    Invited,
    /// They asked to join; an owner or admin decides.
    Requested,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub group_id: GroupId,
    pub name: String,
    pub role: Role,
    pub conversation: ConvId,
    pub private: bool,
    pub full_history: bool,
}

/// The server's acknowledgement of a sent message: it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub conversation: ConvId,
    pub seq: Seq,
    pub timestamp_ms: u64,
    /// True when this was a resend of a message the server already had; the
    /// other fields then describe the original.
    pub duplicate: bool,
}

/// One chat message (live, catch-up or history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMsg {
    pub conversation: ConvId,
    pub seq: Seq,
    pub sender: UserId,
    /// 0 for one-to-one conversations.
    pub group_id: GroupId,
    pub timestamp_ms: u64,
    pub client_msg_id: u64,
    pub body: String,
    pub sender_name: String,
}

/// One conversation of the user, as a conversation list shows it
/// (`ListConversations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInfo {
    pub conversation: ConvId,
    /// 0 for direct conversations.
    pub group_id: GroupId,
    /// Direct: the other participant; 0 for groups.
    pub peer: UserId,
    /// Direct: the peer's username; group: the group's name.
    pub name: String,
    pub last_seq: Seq,
    /// The user's read cursor (acknowledged or sent).
    pub read_seq: Seq,
    pub unread: u64,
    /// Direct: the peer's read cursor; 0 for groups.
    pub peer_read_seq: Seq,
    /// The newest visible message, its body cut to a preview.
    pub last_message: Option<ChatMsg>,
    pub preview_truncated: bool,
    /// Direct: whether the peer (a friend) is online.
    pub online: bool,
}

/// Something the server pushed (req_id 0), or the end of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message not surfaced before on this client (see [`super::Client::seen`]).
    Message(ChatMsg),
    Presence {
        user_id: UserId,
        online: bool,
    },
    Friend {
        kind: fb::FriendEventKind,
        user_id: UserId,
        username: String,
        note: String,
    },
    Group {
        kind: fb::GroupEventKind,
        group_id: GroupId,
        user_id: UserId,
        actor: UserId,
        /// The group's name, on `Invited` only (empty otherwise).
        name: String,
    },
    /// Catch-up after login/resume is complete; `messages` is how many the
    /// server sent (before client-side dedup).
    SyncDone {
        messages: u64,
    },
    /// The server announced it is closing the connection.
    Goodbye {
        code: fb::ErrorCode,
        message: String,
    },
    /// An `ErrorReply` not tied to a request (req_id 0), e.g. `FrameTooLarge`.
    Error {
        code: fb::ErrorCode,
        message: String,
    },
    /// `reader` has read `conversation` up to `seq` (the peer of a direct
    /// conversation, or this user on another device).
    ReadUpTo {
        conversation: ConvId,
        reader: UserId,
        seq: Seq,
    },
    /// `user_id` is typing in `conversation` (or `stopped`). Show it for a
    /// few seconds unless renewed.
    Typing {
        conversation: ConvId,
        group_id: GroupId,
        user_id: UserId,
        username: String,
        stopped: bool,
    },
    /// The connection ended. Emitted once, last.
    Closed,
}

/// A reply to one request, decoded.
#[derive(Debug)]
pub(crate) enum Reply {
    Ok,
    Error(fb::ErrorCode, String),
    HelloOk(HelloInfo),
    RegisterOk(UserId),
    LoginOk(Session),
    Pong(u64),
    UserList(Vec<UserInfo>, UserId),
    FriendList(Vec<Friend>, UserId),
    GroupCreated(GroupId, ConvId),
    MemberList(Vec<Member>, UserId),
    GroupList(Vec<GroupInfo>, GroupId),
    SendOk(Sent),
    Messages(Vec<ChatMsg>),
    ConversationList(Vec<ConversationInfo>, ConvId),
    ReadCursorList(Vec<(UserId, Seq)>, UserId),
}

impl Reply {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Reply::Ok => "OkReply",
            Reply::Error(..) => "ErrorReply",
            Reply::HelloOk(_) => "HelloOk",
            Reply::RegisterOk(_) => "RegisterOk",
            Reply::LoginOk(_) => "LoginOk",
            Reply::Pong(_) => "Pong",
            Reply::UserList(..) => "UserList",
            Reply::FriendList(..) => "FriendList",
            Reply::GroupCreated(..) => "GroupCreated",
            Reply::MemberList(..) => "MemberList",
            Reply::GroupList(..) => "GroupList",
            Reply::SendOk(_) => "SendOk",
            Reply::Messages(_) => "Messages",
            Reply::ConversationList(..) => "ConversationList",
            Reply::ReadCursorList(..) => "ReadCursorList",
        }
    }
}

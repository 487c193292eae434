//! The per-connection protocol state machine: which requests are allowed in
//! which phase, and which mistakes end the connection.

use super::{ErrorCode, Reject};
use crate::wire::fb::Body;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing received yet: only `Hello` is acceptable.
    AwaitHello,
    /// Hello done, not authenticated.
    Anonymous,
    /// Authenticated: identity comes from this session, never from payloads.
    LoggedIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Run the handler.
    Handle,
    /// Reply with this error; the connection stays open.
    Reject(Reject),
    /// Reply with this error, then close: the peer is not speaking our protocol.
    Close(Reject),
}

/// Bodies a client may send. Anything else (a reply type, NONE, a future
/// union member this build does not know) is a protocol violation.
pub fn is_request(body: Body) -> bool {
    matches!(
        body,
        Body::Hello
            | Body::Register
            | Body::Login
            | Body::Resume
            | Body::Logout
            | Body::Ping
            | Body::SearchUsers
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
            | Body::Ack
            | Body::History
            | Body::SetAdmin
    )
}

/// Decides what to do with a request of type `body` with id `req_id` in `phase`.
pub fn gate(phase: Phase, body: Body, req_id: u64) -> Gate {
    if !is_request(body) {
        return Gate::Close(Reject(
            ErrorCode::UnknownBody,
            "unknown or non-request message type",
        ));
    }
    match phase {
        Phase::AwaitHello if body != Body::Hello => Gate::Close(Reject(
            ErrorCode::HelloRequired,
            "the first frame must be Hello",
        )),
        _ if body == Body::Hello && phase != Phase::AwaitHello => {
            Gate::Reject(Reject(ErrorCode::BadRequest, "Hello was already received"))
        }
        _ if body != Body::Ack && req_id == 0 => Gate::Reject(Reject(
            ErrorCode::BadRequest,
            "requests need a non-zero req_id",
        )),
        Phase::Anonymous
            if !matches!(
                body,
                Body::Register | Body::Login | Body::Resume | Body::Ping | Body::Ack
            ) =>
        {
            Gate::Reject(Reject(ErrorCode::NotLoggedIn, "log in first"))
        }
        Phase::LoggedIn if matches!(body, Body::Login | Body::Resume) => Gate::Reject(Reject(
            ErrorCode::AlreadyLoggedIn,
            "this connection is already logged in",
        )),
        _ => Gate::Handle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_first_then_login_then_everything() {
        assert_eq!(gate(Phase::AwaitHello, Body::Hello, 1), Gate::Handle);
        assert!(matches!(
            gate(Phase::AwaitHello, Body::Ping, 1),
            Gate::Close(Reject(ErrorCode::HelloRequired, _))
        ));
        assert!(matches!(
            gate(Phase::Anonymous, Body::SendMessage, 1),
            Gate::Reject(Reject(ErrorCode::NotLoggedIn, _))
        ));
        assert_eq!(gate(Phase::Anonymous, Body::Login, 1), Gate::Handle);
        assert_eq!(gate(Phase::LoggedIn, Body::SendMessage, 2), Gate::Handle);
        assert!(matches!(
            gate(Phase::LoggedIn, Body::Login, 3),
            Gate::Reject(Reject(ErrorCode::AlreadyLoggedIn, _))
        ));
    }

    #[test]
    fn replies_and_unknown_bodies_close() {
        for b in [Body::OkReply, Body::Messages, Body::NONE, Body(200)] {
            assert!(matches!(
                gate(Phase::LoggedIn, b, 1),
                Gate::Close(Reject(ErrorCode::UnknownBody, _))
            ));
        }
    }

    #[test]
    fn zero_req_id_only_for_ack() {
        assert_eq!(gate(Phase::LoggedIn, Body::Ack, 0), Gate::Handle);
        assert!(matches!(
            gate(Phase::LoggedIn, Body::Ping, 0),
            Gate::Reject(Reject(ErrorCode::BadRequest, _))
        ));
    }
}

//! The per-connection protocol state machine: which requests are allowed in
//! which phase, and which mistakes end the connection.

use super::request::Kind;
use super::{ErrorCode, Reject};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing received yet: only `Hello` is acceptable (native protocol;
    /// the old protocol has no handshake and starts `Anonymous`).
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

/// Decides what to do with a request of kind `kind` (`None`: the codec saw
/// something that is not a request at all) with id `req_id` in `phase`.
pub fn gate(phase: Phase, kind: Option<Kind>, req_id: u64) -> Gate {
    let Some(kind) = kind else {
        return Gate::Close(Reject(
            ErrorCode::UnknownBody,
            "unknown or non-request message type",
        ));
    };
    match phase {
        Phase::AwaitHello if kind != Kind::Hello => Gate::Close(Reject(
            ErrorCode::HelloRequired,
            "the first frame must be Hello",
        )),
        _ if kind == Kind::Hello && phase != Phase::AwaitHello => {
            Gate::Reject(Reject(ErrorCode::BadRequest, "Hello was already received"))
        }
        _ if kind != Kind::Ack && req_id == 0 => Gate::Reject(Reject(
            ErrorCode::BadRequest,
            "requests need a non-zero req_id",
        )),
        Phase::Anonymous
            if !matches!(
                kind,
                Kind::Register | Kind::Login | Kind::Resume | Kind::Ping | Kind::Ack
            ) =>
        {
            Gate::Reject(Reject(ErrorCode::NotLoggedIn, "log in first"))
        }
        Phase::LoggedIn if matches!(kind, Kind::Login | Kind::Resume) => Gate::Reject(Reject(
            ErrorCode::AlreadyLoggedIn,
            "this connection is already logged in",
        )),
        _ => Gate::Handle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Option<Kind> = Some(Kind::Session);

    #[test]
    fn hello_first_then_login_then_everything() {
        assert_eq!(gate(Phase::AwaitHello, Some(Kind::Hello), 1), Gate::Handle);
        assert!(matches!(
            gate(Phase::AwaitHello, Some(Kind::Ping), 1),
            Gate::Close(Reject(ErrorCode::HelloRequired, _))
        ));
        assert!(matches!(
            gate(Phase::Anonymous, S, 1),
            Gate::Reject(Reject(ErrorCode::NotLoggedIn, _))
        ));
        assert_eq!(gate(Phase::Anonymous, Some(Kind::Login), 1), Gate::Handle);
        assert_eq!(gate(Phase::LoggedIn, S, 2), Gate::Handle);
        assert!(matches!(
            gate(Phase::LoggedIn, Some(Kind::Login), 3),
            Gate::Reject(Reject(ErrorCode::AlreadyLoggedIn, _))
        ));
    }

    #[test]
    fn non_requests_close() {
        for p in [Phase::AwaitHello, Phase::Anonymous, Phase::LoggedIn] {
            assert!(matches!(
                gate(p, None, 1),
                Gate::Close(Reject(ErrorCode::UnknownBody, _))
            ));
        }
    }

    #[test]
    fn zero_req_id_only_for_ack() {
        assert_eq!(gate(Phase::LoggedIn, Some(Kind::Ack), 0), Gate::Handle);
        assert!(matches!(
            gate(Phase::LoggedIn, Some(Kind::Ping), 0),
            Gate::Reject(Reject(ErrorCode::BadRequest, _))
        ));
    }
}

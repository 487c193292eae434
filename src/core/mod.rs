//! The chat logic as sans-IO state machines.
//!
//! Nothing here touches sockets, threads, clocks or the store: callers pass
//! in the current state and the time, and get back decisions (an error code,
//! a new state, the seq to assign, the recipients). The glommio shell in
//! `server` executes those decisions. This keeps every rule that users rely
//! on (sequencing, dedup, permissions, friendship transitions, catch-up
//! planning) testable deterministically and in microseconds.

pub mod conv;
pub mod forward;
pub mod group;
pub mod limits;
pub mod owner;
pub mod pair;
pub mod receipts;
pub mod request;
pub mod session;
pub mod sync;
pub mod throttle;
pub mod validate;

pub use crate::wire::fb::ErrorCode;

/// A rejected request: the code clients switch on plus words for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject(pub ErrorCode, pub &'static str);

pub type Decision<T> = Result<T, Reject>;

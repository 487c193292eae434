//! ringchat: a shard-per-core instant-messaging server on glommio/io_uring.
//!
//! Layers, from the wire inwards (see docs/ARCHITECTURE.md):
//! - [`wire`]: the FlatBuffers schema (generated) and the frame codec.
//! - [`core`]: the chat logic as sans-IO state machines, deterministic and
//!   testable without sockets or clocks.
//! - [`store`]: persistence behind one blocking interface.
//! - [`server`]: the glommio shell that wires sockets, shards and the store
//!   around the core.
//! - [`client`]: a Rust client used by the tests, `ringchat chat` and loadgen.
//! - [`chat`]: the interactive console client (`ringchat chat`).

pub mod chat;
pub mod client;
pub mod cluster;
pub mod config;
pub mod core;
pub mod legacy;
pub mod model;
pub mod provision;
pub mod server;
pub mod store;
pub mod wire;

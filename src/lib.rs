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

pub mod admin_cli;
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

/// Runs a node: the server with every protocol this build speaks, as
/// configured (the native one on `cfg.listen`; the old JSON one on
/// `cfg.legacy_listen`; WebSocket and the web client on `cfg.ws_listen`). The server itself names no protocol: see
/// `server::protocol`.
pub fn serve(cfg: server::Config) -> Result<(), String> {
    let extra = protocols(&cfg);
    server::serve(cfg, extra)
}

/// Like [`serve`], stopped by `ctl` instead of by signals: for running
/// nodes inside another program (the tests run several per process).
pub fn serve_with(cfg: server::Config, ctl: server::Control) -> Result<(), String> {
    let extra = protocols(&cfg);
    server::serve_with(cfg, extra, ctl)
}

fn protocols(cfg: &server::Config) -> Vec<server::protocol::Listen> {
    let mut extra = Vec::new();
    if let Some(addr) = cfg.legacy_listen {
        extra.push(server::protocol::Listen {
            addr,
            proto: std::sync::Arc::new(legacy::conn::Legacy::new()),
            what: "legacy-listen",
        });
    }
    if let Some(addr) = cfg.ws_listen {
        extra.push(server::protocol::Listen {
            addr,
            proto: std::sync::Arc::new(server::conn::Native::websocket(
                server::websocket::WsOptions {
                    allowed_origins: cfg.ws_allowed_origins.clone(),
                },
            )),
            what: "ws-listen",
        });
    }
    extra
}

//! Listeners are (address, protocol) pairs: the shell accepts connections
//! and hands each to its protocol, which owns the connection's transport
//! and codec and drives the one session (`server::session`). The shell
//! never names a protocol: the native one (`server::conn`) and the old
//! JSON one (`legacy`) are registered by whoever starts the node
//! (`crate::serve`), and a third (WebSocket) costs one more registration.

use super::router::LocalFut;
use super::shard::{HandOff, Shard};
use glommio::net::TcpStream;
use std::net::SocketAddr;
use std::rc::Rc;

pub trait Protocol: Send + Sync + std::fmt::Debug + 'static {
    /// For logs and errors ("legacy", "native", ...).
    fn name(&self) -> &'static str;

    /// Serves a freshly accepted connection until it closes (or moves to
    /// its user's home shard after login, see [`HandOff`]).
    fn serve(&self, shard: Rc<Shard>, stream: TcpStream) -> LocalFut<'static, ()>;

    /// Takes over a logged-in connection handed over by another shard.
    fn adopt(&self, shard: Rc<Shard>, h: HandOff);
}

/// One more listener besides the native `--listen` one.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    pub addr: SocketAddr,
    pub proto: &'static dyn Protocol,
    /// The option that asked for it, for error messages (`legacy-listen`).
    pub what: &'static str,
}

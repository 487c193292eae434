//! Listeners are (address, protocol) pairs: the shell accepts connections
//! and hands each to its protocol, which owns the connection's transport
//! and codec and drives the one session (`server::session`). The shell
//! never names a protocol: the native one (`server::conn`) and the old
//! JSON one (`legacy`) are registered by whoever starts the node
//! (`crate::serve`), and a third (WebSocket) costs one more registration.

use super::limits::ConnSlot;
use super::router::LocalFut;
use super::shard::{HandOff, Shard};
use glommio::net::TcpStream;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

pub trait Protocol: Send + Sync + std::fmt::Debug + 'static {
    /// For logs and errors ("legacy", "native", ...).
    fn name(&self) -> &'static str;

    /// Serves a freshly accepted connection until it closes (or moves to
    /// its user's home shard after login, see [`HandOff`]).
    /// `slot` is the connection's place under the node's connection caps:
    /// held as long as the connection lives (it moves with a [`HandOff`]).
    fn serve(
        self: Arc<Self>,
        shard: Rc<Shard>,
        stream: TcpStream,
        slot: ConnSlot,
    ) -> LocalFut<'static, ()>;

    /// What to write to a connection refused at accept (a cap is reached)
    /// before closing it: `why` in the protocol's own error form.
    fn refusal(&self, why: &str) -> Vec<u8>;

    /// Takes over a logged-in connection handed over by another shard.
    fn adopt(self: Arc<Self>, shard: Rc<Shard>, h: HandOff);
}

/// One more listener besides the native `--listen` one.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    /// One instance per node: per-node protocol state (e.g. the old
    /// protocol's unauthenticated-connection counts) lives in it.
    pub proto: Arc<dyn Protocol>,
    /// The option that asked for it, for error messages (`legacy-listen`).
    pub what: &'static str,
}

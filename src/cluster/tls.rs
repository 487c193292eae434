//! TLS to Redis (`rediss://`) without a second async runtime.
//!
//! rustls is used sans-IO: its `ClientConnection` only turns bytes into
//! bytes, and the glommio `TcpStream` moves them. That keeps the pipelined
//! connection's shape (one reader task, one writer task, both on the shard,
//! sharing the connection state through a `RefCell` that is never held
//! across an await), where an `AsyncRead + AsyncWrite` TLS wrapper would
//! need the two halves of one stream polled from two tasks.
//!
//! Server certificates are checked against the system roots, or against the
//! PEM file given with `--redis-ca` (a private CA, as most Redis TLS setups
//! use). No client certificates: Redis AUTH still authenticates the node.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What a `rediss://` address needs to open a session: the verified
/// configuration and the name the certificate must carry.
#[derive(Clone)]
pub struct TlsSetup {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsSetup({:?})", self.name)
    }
}

impl TlsSetup {
    /// Trust `ca` (PEM, one or more certificates) or, without it, the
    /// system's roots; `host` is the name checked in the certificate.
    pub fn new(host: &str, ca: Option<&Path>) -> Result<TlsSetup, String> {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(p) => {
                let certs = CertificateDer::pem_file_iter(p)
                    .map_err(|e| format!("--redis-ca {}: {e}", p.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--redis-ca {}: {e}", p.display()))?;
                if certs.is_empty() {
                    return Err(format!("--redis-ca {}: no certificate in it", p.display()));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("--redis-ca {}: {e}", p.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(
                        "rediss://: no system root certificates found; give --redis-ca".into(),
                    );
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("rediss://{host}: not a valid TLS server name: {e}"))?;
        Ok(TlsSetup {
            config: Arc::new(config),
            name,
        })
    }

    /// Runs the handshake on a fresh connection (bounded: a server that
    /// stops answering mid-handshake must not stall a shard's reconnect).
    pub async fn handshake(&self, tcp: &mut TcpStream) -> Result<ClientConnection, String> {
        let mut conn = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| format!("redis TLS: {e}"))?;
        glommio::timer::timeout(Duration::from_secs(5), async {
            let mut chunk = vec![0u8; 16 << 10];
            let mut out = Vec::new();
            while conn.is_handshaking() {
                if conn.wants_write() {
                    take_output(&mut conn, &mut out).map_err(io_err)?;
                    tcp.write_all(&out).await?;
                    out.clear();
                    continue;
                }
                let n = tcp.read(&mut chunk).await?;
                if n == 0 {
                    return Err(
                        io_err("redis closed the connection during the TLS handshake").into(),
                    );
                }
                decrypt(&mut conn, &chunk[..n], &mut |_| {}).map_err(io_err)?;
            }
            // The client's last handshake flight (Finished).
            take_output(&mut conn, &mut out).map_err(io_err)?;
            if !out.is_empty() {
                tcp.write_all(&out).await?;
            }
            Ok::<(), glommio::GlommioError<()>>(())
        })
        .await
        .map_err(|e| format!("redis TLS handshake: {e}"))?;
        Ok(conn)
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Feeds ciphertext read from the socket; calls `plain` with every piece
/// of plaintext it yields. Errors are fatal for the connection (bad record,
/// failed verification, alert from the server).
pub fn decrypt(
    conn: &mut ClientConnection,
    mut cipher: &[u8],
    plain: &mut dyn FnMut(&[u8]),
) -> Result<(), String> {
    let mut buf = [0u8; 16 << 10];
    while !cipher.is_empty() {
        conn.read_tls(&mut cipher)
            .map_err(|e| format!("redis TLS: {e}"))?;
        conn.process_new_packets()
            .map_err(|e| format!("redis TLS: {e}"))?;
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => plain(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("redis TLS: {e}")),
            }
        }
    }
    Ok(())
}

/// Encrypts `plain` and appends the records (and anything else rustls has
/// to say, e.g. a key update) to `out`.
pub fn encrypt(conn: &mut ClientConnection, plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    conn.writer()
        .write_all(plain)
        .map_err(|e| format!("redis TLS: {e}"))?;
    take_output(conn, out)
}

/// Appends whatever TLS records rustls has queued to `out`.
pub fn take_output(conn: &mut ClientConnection, out: &mut Vec<u8>) -> Result<(), String> {
    while conn.wants_write() {
        conn.write_tls(out).map_err(|e| format!("redis TLS: {e}"))?;
    }
    Ok(())
}

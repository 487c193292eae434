//! Redis from a glommio executor without a second async runtime.
//!
//! Commands are packed with the `redis` crate (`Cmd::get_packed_command`)
//! and replies parsed with its `Parser`, fed from a glommio `TcpStream`: the
//! parser keeps partial state, so a reply split across reads resumes where
//! it stopped. One connection per shard carries every command, pipelined:
//! callers append to a write buffer and await a FIFO reply slot; a writer
//! task flushes everything queued in one write. Subscriptions use a second
//! connection per shard. `rediss://` runs the same over TLS (`super::tls`).

use super::tls::TlsSetup;
use crate::server::io::Signal;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use redis::{Cmd, IntoConnectionInfo, Value};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Read;
use std::rc::Rc;

#[derive(Debug, Clone)]
pub struct RedisAddr {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
    pub username: Option<String>,
    pub db: i64,
    /// Set for `rediss://`: the session runs over TLS.
    pub tls: Option<TlsSetup>,
}

/// Parses `redis://[user:password@]host:port[/db]` or the same with
/// `rediss://` (TLS; the certificate is checked against `ca` or, without
/// it, the system roots).
pub fn parse_url(url: &str, ca: Option<&std::path::Path>) -> Result<RedisAddr, String> {
    // The redis crate is built without its TLS features (we do TLS
    // ourselves), so it is given the plain form of the URL.
    let (plain, tls) = match url.strip_prefix("rediss://") {
        Some(rest) => (format!("redis://{rest}"), true),
        None => (url.to_string(), false),
    };
    let info = plain
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("bad redis url {url}: {e}"))?;
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        _ => {
            return Err(format!(
                "only redis://host:port or rediss://host:port is supported, got {url}"
            ));
        }
    };
    if ca.is_some() && !tls {
        return Err("--redis-ca is for rediss:// (TLS) URLs".into());
    }
    let tls = if tls {
        Some(TlsSetup::new(&host, ca)?)
    } else {
        None
    };
    let s = info.redis_settings();
    Ok(RedisAddr {
        host,
        port,
        password: s.password().map(str::to_string),
        username: s.username().map(str::to_string),
        db: s.db(),
        tls,
    })
}

/// Connects with a deadline and a few attempts: an unanswered connect must
/// not stall a shard's start-up or its reconnect loop.
async fn connect_tcp(addr: &RedisAddr) -> Result<TcpStream, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let target = (addr.host.clone(), addr.port);
        let attempt = glommio::timer::timeout(std::time::Duration::from_secs(2), async move {
            TcpStream::connect((target.0.as_str(), target.1)).await
        })
        .await;
        match attempt {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "connecting to redis {}:{}: {last}",
        addr.host, addr.port
    ))
}

/// Feeds the parser from our buffer; `WouldBlock` when it needs more bytes.
struct Feed<'a> {
    buf: &'a mut Vec<u8>,
    pos: &'a mut usize,
}

impl Read for Feed<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let avail = &self.buf[*self.pos..];
        if avail.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        *self.pos += n;
        Ok(n)
    }
}

/// Incremental RESP decoding over a byte stream.
pub struct Decoder {
    parser: redis::Parser,
    buf: Vec<u8>,
    pos: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            parser: redis::Parser::new(),
            buf: Vec::with_capacity(16 << 10),
            pos: 0,
        }
    }
}

impl Decoder {
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete value, `Ok(None)` when more bytes are needed.
    /// The parser buffers what it has read internally, so it is always
    /// asked (our buffer may be empty while its own still holds values).
    pub fn next_value(&mut self) -> redis::RedisResult<Option<Value>> {
        let feed = Feed {
            buf: &mut self.buf,
            pos: &mut self.pos,
        };
        match self.parser.parse_value(feed) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_io_error() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

struct Slot {
    value: RefCell<Option<redis::RedisResult<Value>>>,
    ready: Signal,
}

/// A reply not yet awaited.
pub struct Pending(Option<Rc<Slot>>);

impl Pending {
    pub async fn wait(self) -> redis::RedisResult<Value> {
        let Some(slot) = self.0 else {
            return Err(broken());
        };
        loop {
            if let Some(v) = slot.value.borrow_mut().take() {
                return v;
            }
            slot.ready.wait().await;
        }
    }
}

/// A pipelined command connection.
pub struct RedisConn {
    out: RefCell<Vec<u8>>,
    wake_writer: Signal,
    waiters: RefCell<VecDeque<Option<Rc<Slot>>>>,
    broken: Cell<bool>,
    stream: Rc<RefCell<TcpStream>>,
    /// The TLS session of a `rediss://` connection. Borrowed only between
    /// awaits, by the reader (decrypt) and the writer (encrypt).
    tls: Option<RefCell<rustls::ClientConnection>>,
}

fn broken() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "redis connection lost",
    ))
}

impl RedisConn {
    /// Connects, authenticates/selects if the URL says so, and starts the
    /// reader and writer tasks.
    pub async fn connect(addr: &RedisAddr) -> Result<Rc<RedisConn>, String> {
        let mut s = connect_tcp(addr).await?;
        let tls = match &addr.tls {
            Some(t) => Some(RefCell::new(t.handshake(&mut s).await?)),
            None => None,
        };
        let conn = Rc::new(RedisConn {
            out: RefCell::new(Vec::with_capacity(16 << 10)),
            wake_writer: Signal::default(),
            waiters: RefCell::new(VecDeque::new()),
            broken: Cell::new(false),
            stream: Rc::new(RefCell::new(s)),
            tls,
        });
        glommio::spawn_local(conn.clone().reader()).detach();
        glommio::spawn_local(conn.clone().writer()).detach();
        if let Some(pw) = &addr.password {
            let mut c = redis::cmd("AUTH");
            if let Some(u) = &addr.username {
                c.arg(u);
            }
            c.arg(pw);
            conn.query(&c)
                .await
                .map_err(|e| format!("redis AUTH: {e}"))?;
        }
        if addr.db != 0 {
            conn.query(redis::cmd("SELECT").arg(addr.db))
                .await
                .map_err(|e| format!("redis SELECT: {e}"))?;
        }
        Ok(conn)
    }

    pub fn is_broken(&self) -> bool {
        self.broken.get()
    }

    fn enqueue(&self, cmd: &Cmd, slot: Option<Rc<Slot>>) {
        cmd.write_packed_command(&mut self.out.borrow_mut());
        self.waiters.borrow_mut().push_back(slot);
        self.wake_writer.notify();
    }

    /// Sends without waiting for the reply (errors are only logged by the
    /// connection going broken); ordering with other commands is kept.
    pub fn fire(&self, cmd: &Cmd) {
        if !self.broken.get() {
            self.enqueue(cmd, None);
        }
    }

    /// Queues a command now and returns its pending reply, so many commands
    /// can be in flight before the first one is awaited (pipelining).
    pub fn start(&self, cmd: &Cmd) -> Pending {
        if self.broken.get() {
            return Pending(None);
        }
        let slot = Rc::new(Slot {
            value: RefCell::new(None),
            ready: Signal::default(),
        });
        self.enqueue(cmd, Some(slot.clone()));
        Pending(Some(slot))
    }

    pub async fn query(&self, cmd: &Cmd) -> redis::RedisResult<Value> {
        self.start(cmd).wait().await
    }

    async fn writer(self: Rc<Self>) {
        let mut w = crate::server::io::WriteHalf(self.stream.clone());
        let mut buf = Vec::new();
        let mut cipher = Vec::new();
        loop {
            std::mem::swap(&mut buf, &mut self.out.borrow_mut());
            let tls_pending = self.tls.as_ref().is_some_and(|t| t.borrow().wants_write());
            if buf.is_empty() && !tls_pending {
                if self.broken.get() {
                    return;
                }
                self.wake_writer.wait().await;
                continue;
            }
            let wire = match &self.tls {
                None => &buf,
                Some(t) => {
                    cipher.clear();
                    if super::tls::encrypt(&mut t.borrow_mut(), &buf, &mut cipher).is_err() {
                        return self.fail();
                    }
                    &cipher
                }
            };
            if w.write_all(wire).await.is_err() {
                self.fail();
                return;
            }
            buf.clear();
        }
    }

    async fn reader(self: Rc<Self>) {
        let mut r = crate::server::io::ReadHalf(self.stream.clone());
        let mut dec = Decoder::default();
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            loop {
                match dec.next_value() {
                    Ok(Some(v)) => {
                        let w = self.waiters.borrow_mut().pop_front();
                        if let Some(Some(slot)) = w {
                            let v = match v {
                                Value::ServerError(e) => Err(e.into()),
                                v => Ok(v),
                            };
                            *slot.value.borrow_mut() = Some(v);
                            slot.ready.notify();
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return self.fail(),
                }
            }
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return self.fail(),
                Ok(n) => match &self.tls {
                    None => dec.feed(&chunk[..n]),
                    Some(t) => {
                        let mut t = t.borrow_mut();
                        if super::tls::decrypt(&mut t, &chunk[..n], &mut |p| dec.feed(p)).is_err() {
                            drop(t);
                            return self.fail();
                        }
                        if t.wants_write() {
                            // e.g. a key update: the writer sends it.
                            self.wake_writer.notify();
                        }
                    }
                },
            }
        }
    }

    fn fail(&self) {
        if self.broken.replace(true) {
            return;
        }
        crate::server::io::shutdown_now(&self.stream);
        self.wake_writer.notify();
        for s in self.waiters.borrow_mut().drain(..).flatten() {
            *s.value.borrow_mut() = Some(Err(broken()));
            s.ready.notify();
        }
    }
}

/// A subscriber connection: calls `on_message(channel, payload)` for each
/// message until the connection breaks.
pub async fn subscribe(
    addr: &RedisAddr,
    channels: &[String],
    mut on_message: impl FnMut(&[u8], Vec<u8>),
    on_subscribed: impl FnOnce(),
) -> Result<(), String> {
    let mut s = connect_tcp(addr).await?;
    let mut tls = match &addr.tls {
        Some(t) => Some(t.handshake(&mut s).await?),
        None => None,
    };
    let mut out = Vec::new();
    if let Some(pw) = &addr.password {
        let mut c = redis::cmd("AUTH");
        if let Some(u) = &addr.username {
            c.arg(u);
        }
        c.arg(pw).write_packed_command(&mut out);
    }
    let mut c = redis::cmd("SUBSCRIBE");
    for ch in channels {
        c.arg(ch);
    }
    c.write_packed_command(&mut out);
    if let Some(t) = &mut tls {
        let mut cipher = Vec::new();
        super::tls::encrypt(t, &out, &mut cipher)?;
        out = cipher;
    }
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut dec = Decoder::default();
    let mut chunk = vec![0u8; 64 << 10];
    let mut confirmed = 0;
    let mut on_subscribed = Some(on_subscribed);
    loop {
        loop {
            match dec.next_value() {
                Ok(Some(Value::Array(items))) | Ok(Some(Value::Push { data: items, .. })) => {
                    let mut it = items.into_iter();
                    let kind = it.next();
                    match kind {
                        Some(Value::BulkString(k)) if k == b"message" => {
                            if let (Some(Value::BulkString(ch)), Some(Value::BulkString(p))) =
                                (it.next(), it.next())
                            {
                                on_message(&ch, p);
                            }
                        }
                        Some(Value::BulkString(k)) if k == b"subscribe" => {
                            confirmed += 1;
                            if confirmed == channels.len()
                                && let Some(f) = on_subscribed.take()
                            {
                                f();
                            }
                        }
                        _ => {}
                    }
                }
                Ok(Some(Value::ServerError(e))) => return Err(format!("redis: {e:?}")),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(format!("redis protocol: {e}")),
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) => return Err("redis closed the subscription".into()),
            Ok(n) => match &mut tls {
                None => dec.feed(&chunk[..n]),
                Some(t) => {
                    super::tls::decrypt(t, &chunk[..n], &mut |p| dec.feed(p))?;
                    out.clear();
                    super::tls::take_output(t, &mut out)?;
                    if !out.is_empty() {
                        s.write_all(&out).await.map_err(|e| e.to_string())?;
                    }
                }
            },
            Err(e) => return Err(format!("redis read: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_resumes_across_splits() {
        let wire = b"+OK\r\n:42\r\n$5\r\nhello\r\n*2\r\n$1\r\na\r\n:7\r\n";
        for split in 1..wire.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            d.feed(&wire[..split]);
            while let Some(v) = d.next_value().unwrap() {
                got.push(v);
            }
            d.feed(&wire[split..]);
            while let Some(v) = d.next_value().unwrap() {
                got.push(v);
            }
            assert_eq!(got.len(), 4, "split at {split}: {got:?}");
            assert_eq!(got[1], Value::Int(42));
            assert_eq!(got[2], Value::BulkString(b"hello".to_vec()));
        }
    }
}

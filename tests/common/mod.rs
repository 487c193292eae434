//! Test harness: runs the real `ringchat` binary on a free port with a fresh
//! data directory, plus helpers shared by the integration tests.
//!
//! Every test starts its own server so tests are independent and can run in
//! parallel; usernames are still unique per test so a failure message names
//! the test it came from.

#![allow(dead_code)] // each test binary uses a different subset

use ringchat::client::{Client, ClientOptions, Event, FriendEventKind, Session};
use ringchat::model::UserId;
use ringchat::wire::{self, Enc, FrameBuf, fb};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

/// How long to wait for something that must happen.
pub const T: Duration = Duration::from_secs(10);
/// How long to watch for something that must *not* happen. Absence can only
/// be observed over a window; this one is long compared to a local round-trip.
pub const QUIET: Duration = Duration::from_millis(400);
pub const PASSWORD: &str = "correct horse battery";

const STARTUP: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub addr: SocketAddr,
    /// The `--legacy-listen` address as bound, if one was asked for.
    pub legacy: Option<SocketAddr>,
    /// The `--ws-listen` address as bound, if one was asked for.
    pub ws: Option<SocketAddr>,
    pub data_dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Held for the server's life: see [`ONE_SERVER`]. Dropped after `drop`
    /// has killed the child (fields drop after `Drop::drop`).
    _turn: Option<MutexGuard<'static, ()>>,
}

/// One server per test binary at a time. Each server pins one executor per
/// CPU (`Placement::Fixed`), so two servers running side by side compete
/// for the same cores: measured on a 2-core machine, `tests/auth.rs` took
/// ~40 s with two test threads against ~4 s one at a time. Serialising the
/// servers keeps the suite fast and its timeouts meaningful. (It is about
/// CPUs, not state: servers share nothing and run side by side when asked,
/// `start_alongside`, or in one process, tests/in_process.rs.)
static ONE_SERVER: Mutex<()> = Mutex::new(());

fn fresh_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "ringchat-test-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(&[])
    }

    /// Starts with extra `serve` arguments, e.g. `["--idle-timeout-secs", "1"]`.
    pub fn start_with(extra: &[&str]) -> TestServer {
        // A test that panicked while holding the turn poisons it; the lock
        // only orders servers, so the poison carries no meaning here.
        let turn = ONE_SERVER.lock().unwrap_or_else(|e| e.into_inner());
        TestServer::start_turn(extra, Some(turn))
    }

    /// Starts without waiting for the one-server turn: for a test that
    /// keeps a server mostly idle for a long time, so it runs alongside the
    /// other tests of its binary instead of adding its length to the suite.
    pub fn start_alongside(extra: &[&str]) -> TestServer {
        TestServer::start_turn(extra, None)
    }

    fn start_turn(extra: &[&str], turn: Option<MutexGuard<'static, ()>>) -> TestServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut s = TestServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            legacy: None,
            ws: None,
            data_dir: fresh_dir(),
            child: None,
            extra,
            stderr: Arc::new(Mutex::new(String::new())),
            _turn: turn,
        };
        // Port 0: the server binds a free port itself and says which (no
        // race with another process for a port we picked, no retries).
        if let Err(e) = s.spawn() {
            panic!("server did not start: {e}");
        }
        s
    }

    /// Starts with the legacy JSON protocol also served (`--legacy-listen`)
    /// on a port of its own; returns that address too.
    pub fn start_legacy() -> (TestServer, SocketAddr) {
        let s = TestServer::start_with(&["--legacy-listen", "127.0.0.1:0"]);
        let legacy = s.legacy.expect("the server reports its legacy address");
        (s, legacy)
    }

    /// Starts with WebSocket and the web client also served (`--ws-listen`)
    /// on a port of its own.
    pub fn start_ws(extra: &[&str]) -> TestServer {
        let mut args = vec!["--ws-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let s = TestServer::start_with(&args);
        assert!(s.ws.is_some(), "the server reports its websocket address");
        s
    }

    /// A connected WebSocket client (Hello done) on the `--ws-listen` address.
    pub fn ws_client(&self) -> Client {
        self.ws_client_with(|_| {})
    }

    pub fn ws_client_with(&self, f: impl FnOnce(&mut ClientOptions)) -> Client {
        let mut o = ClientOptions {
            websocket: true,
            ..ClientOptions::default()
        };
        f(&mut o);
        let addr = self.ws.expect("started with start_ws");
        Client::connect_with(addr, o)
            .unwrap_or_else(|e| panic!("ws connect {addr}: {e}; server stderr:\n{}", self.stderr()))
    }

    /// Spawns the binary and waits for its `listening on` line.
    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringchat"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--shards")
            .arg("2")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        *self.stderr.lock().unwrap() = String::new();
        let sink = self.stderr.clone();
        let (ltx, lrx) = mpsc::channel::<(bool, SocketAddr)>();
        // Both pipes are drained for the server's whole life so it never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // "legacy JSON protocol on ADDR": the bound legacy address.
                for (ws, banner) in [
                    (false, "legacy JSON protocol on "),
                    (true, "websocket protocol on "),
                ] {
                    if let Some(a) = line.split(banner).nth(1)
                        && let Ok(a) = a.trim().parse()
                    {
                        let _ = ltx.send((ws, a));
                    }
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // "ringchat listening on ADDR (N shards)"
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(a) = rest.split_whitespace().next()
                    && let Ok(a) = a.parse()
                {
                    let _ = tx.send(a);
                }
            }
        });
        let deadline = Instant::now() + STARTUP;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    self.child = Some(child);
                    // Later restarts keep the same addresses.
                    self.addr = addr;
                    // The extra listeners' bound addresses (printed before
                    // `listening on`); restarts reuse them.
                    let wanted = ["--legacy-listen", "--ws-listen"]
                        .iter()
                        .filter(|f| self.extra.iter().any(|a| a == *f))
                        .count();
                    for _ in 0..wanted {
                        let Ok((ws, l)) = lrx.recv_timeout(STARTUP) else {
                            break;
                        };
                        let flag = if ws { "--ws-listen" } else { "--legacy-listen" };
                        if ws {
                            self.ws = Some(l);
                        } else {
                            self.legacy = Some(l);
                        }
                        if let Some(i) = self.extra.iter().position(|a| a == flag) {
                            self.extra[i + 1] = l.to_string();
                        }
                    }
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Give the stderr thread a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "server exited with {status} before listening; stderr:\n{}",
                    self.stderr()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "server did not print `listening on` within {STARTUP:?}; stderr:\n{}",
                    self.stderr()
                ));
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops the server with SIGTERM (graceful shutdown) and waits for it.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server not running");
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server ignored SIGTERM for {STARTUP:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for the server to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("server not running");
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                // Let the stderr thread collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts the server again on the same port and data directory.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "server still running");
        let deadline = Instant::now() + STARTUP;
        // The old process's socket may linger briefly; retry the bind.
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// SIGTERM, then start again on the same port and data directory.
    pub fn restart(&mut self) {
        let st = self.stop();
        assert!(
            st.success(),
            "server exited with {st} on SIGTERM; stderr:\n{}",
            self.stderr()
        );
        self.start_again();
    }

    /// A connected client (Hello done), default options.
    pub fn client(&self) -> Client {
        Client::connect(self.addr).unwrap_or_else(|e| {
            panic!(
                "connect {}: {e}; server stderr:\n{}",
                self.addr,
                self.stderr()
            )
        })
    }

    pub fn client_with(&self, f: impl FnOnce(&mut ClientOptions)) -> Client {
        let mut o = ClientOptions::default();
        f(&mut o);
        Client::connect_with(self.addr, o).unwrap_or_else(|e| {
            panic!(
                "connect {}: {e}; server stderr:\n{}",
                self.addr,
                self.stderr()
            )
        })
    }

    /// Registers `name` and returns a logged-in client whose catch-up is done.
    pub fn user(&self, name: &str) -> User {
        let c = self.client();
        let id = c
            .register(name, PASSWORD)
            .unwrap_or_else(|e| panic!("register {name}: {e}"));
        let session = login_synced(&c, name);
        assert_eq!(session.user_id, id);
        User {
            id,
            name: name.to_string(),
            session,
            c,
        }
    }

    /// Another logged-in connection of an existing user.
    pub fn device(&self, u: &User) -> Client {
        let c = self.client();
        login_synced(&c, &u.name);
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Logs in and waits for `SyncDone`, so later events are live ones.
pub fn login_synced(c: &Client, name: &str) -> Session {
    let s = c
        .login(name, PASSWORD)
        .unwrap_or_else(|e| panic!("login {name}: {e}"));
    wait(c, "SyncDone after login", |e| {
        matches!(e, Event::SyncDone { .. })
    });
    s
}

/// A registered, logged-in user on its first connection.
pub struct User {
    pub id: UserId,
    pub name: String,
    pub session: Session,
    pub c: Client,
}

impl std::ops::Deref for User {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.c
    }
}

/// A unique username: `prefix` plus a per-process counter (max 32 chars).
pub fn uname(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let s = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(s.len() <= 32, "username too long: {s}");
    s
}

/// Waits for the first matching event or panics naming `what`.
pub fn wait(c: &Client, what: &str, pred: impl FnMut(&Event) -> bool) -> Event {
    match c.wait_for(T, pred) {
        Some(e) => e,
        None => panic!(
            "timed out waiting for {what}; queued events: {:?}",
            c.drain_events()
        ),
    }
}

/// Asserts no matching event arrives within [`QUIET`] (others stay queued).
pub fn assert_quiet(c: &Client, what: &str, pred: impl FnMut(&Event) -> bool) {
    if let Some(e) = c.wait_for(QUIET, pred) {
        panic!("unexpected {what}: {e:?}");
    }
}

/// Waits for the connection to end (the reader saw EOF).
pub fn wait_closed(c: &Client) {
    wait(c, "connection close", |e| matches!(e, Event::Closed));
}

/// Makes `a` and `b` friends through the request/accept flow.
pub fn befriend(a: &User, b: &User) {
    a.friend_request(b.id, "").unwrap();
    wait(
        &b.c,
        "friend request",
        |e| matches!(e, Event::Friend { kind: FriendEventKind::Requested, user_id, .. } if *user_id == a.id),
    );
    b.friend_respond(a.id, true).unwrap();
    wait(
        &a.c,
        "friend accepted",
        |e| matches!(e, Event::Friend { kind: FriendEventKind::Accepted, user_id, .. } if *user_id == b.id),
    );
    // New friends who are both online learn each other's presence; taking
    // these here keeps later presence assertions about later changes.
    wait(
        &a.c,
        "presence of the new friend",
        |e| matches!(e, Event::Presence { user_id, online: true } if *user_id == b.id),
    );
    wait(
        &b.c,
        "presence of the new friend",
        |e| matches!(e, Event::Presence { user_id, online: true } if *user_id == a.id),
    );
}

/// Asserts `r` failed with the server error `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(
    r: Result<T, ringchat::client::ClientError>,
    code: fb::ErrorCode,
) {
    match r {
        Err(e) if e.code() == Some(code) => {}
        other => panic!("expected {}, got {other:?}", wire::error_name(code)),
    }
}

// ---------------------------------------------------------------- raw sockets

/// Sends one HTTP request and returns the whole response (the server
/// closes after answering).
pub fn http(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A bare connection for protocol tests: frames are built with [`Enc`] (or
/// deliberately broken by hand) and replies decoded with `wire::decode`.
pub struct Raw {
    pub s: TcpStream,
    pub enc: Enc,
    buf: FrameBuf,
}

/// An owned summary of one received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub req_id: u64,
    pub body: fb::Body,
    /// `ErrorReply`/`Goodbye` code, if any.
    pub code: Option<fb::ErrorCode>,
    /// `Pong` nonce, if any.
    pub nonce: Option<u64>,
    /// The whole frame (length prefix included), for `wire::decode`.
    pub bytes: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            s,
            enc: Enc::new(),
            buf: FrameBuf::new(16 << 20),
        }
    }

    /// Connects and completes the handshake.
    pub fn hello(addr: SocketAddr) -> Raw {
        let mut r = Raw::connect(addr);
        let f = r.enc.hello(1, "raw-test").to_vec();
        r.write(&f);
        let got = r.read().expect("HelloOk");
        assert_eq!(got.body, fb::Body::HelloOk, "{got:?}");
        r
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next frame, or `None` if the server closed the connection (or
    /// nothing arrived within [`T`]: that fails the caller's expectation too).
    pub fn read(&mut self) -> Option<RawFrame> {
        self.s.set_read_timeout(Some(T)).unwrap();
        loop {
            if let Some(r) = self
                .buf
                .next_frame()
                .expect("server sent a bad frame length")
            {
                let bytes = self.buf.get(r).to_vec();
                let env = wire::decode(&bytes).expect("server sent an unverifiable frame");
                let code = env
                    .body_as_error_reply()
                    .map(|e| e.code())
                    .or_else(|| env.body_as_goodbye().map(|g| g.code()));
                return Some(RawFrame {
                    req_id: env.req_id(),
                    body: env.body_type(),
                    code,
                    nonce: env.body_as_pong().map(|p| p.nonce()),
                    bytes: bytes.clone(),
                });
            }
            match self.s.read(self.buf.spare(4096)) {
                Ok(0) => return None,
                Ok(n) => self.buf.filled(n),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("no frame from the server within {T:?}")
                }
                Err(_) => return None, // reset by peer counts as closed
            }
        }
    }

    /// Expects an `ErrorReply` with `code` and then the connection to close
    /// (a `Goodbye` in between is allowed).
    #[track_caller]
    pub fn expect_error_then_close(&mut self, code: fb::ErrorCode) {
        let f = self
            .read()
            .unwrap_or_else(|| panic!("closed without {}", wire::error_name(code)));
        assert_eq!(f.body, fb::Body::ErrorReply, "{f:?}");
        assert_eq!(f.code, Some(code), "{f:?}");
        self.expect_close();
    }

    /// Expects EOF, allowing only a `Goodbye` before it.
    #[track_caller]
    pub fn expect_close(&mut self) {
        while let Some(f) = self.read() {
            assert_eq!(
                f.body,
                fb::Body::Goodbye,
                "expected the connection to close, got {f:?}"
            );
        }
    }
}

/// A length-prefixed frame around arbitrary payload bytes.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Waits for the next message event (other events stay queued).
pub fn wait_msg(c: &Client, what: &str) -> ringchat::client::ChatMsg {
    match wait(c, what, |e| matches!(e, Event::Message(_))) {
        Event::Message(m) => m,
        _ => unreachable!(),
    }
}

/// Messages surfaced so far on `c` (others events stay queued, in order).
pub fn queued_messages(c: &Client) -> Vec<ringchat::client::ChatMsg> {
    let mut out = vec![];
    while let Some(Event::Message(m)) =
        c.wait_for(Duration::ZERO, |e| matches!(e, Event::Message(_)))
    {
        out.push(m);
    }
    out
}

// ---------------------------------------------------------------- MySQL store

/// The local MariaDB the MySQL-store tests use.
pub const MYSQL_ADDR: &str = "127.0.0.1:3306";

/// A database name for one server run on the local MariaDB (`--store` URL
/// via [`MysqlDb::store`]); the server creates it, [`Drop`] drops it.
/// `None` (after printing `SKIPPED: ...` to stderr) when MariaDB is not
/// reachable, unless `RINGCHAT_REQUIRE_MYSQL=1` (CI): then it panics, so a
/// broken setup cannot pass by skipping.
pub struct MysqlDb {
    pub name: String,
}

impl MysqlDb {
    pub fn new(test: &str) -> Option<MysqlDb> {
        if let Err(e) = std::net::TcpStream::connect(MYSQL_ADDR) {
            if std::env::var("RINGCHAT_REQUIRE_MYSQL").as_deref() == Ok("1") {
                panic!("MariaDB is required (RINGCHAT_REQUIRE_MYSQL=1) but {MYSQL_ADDR}: {e}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test} on the MySQL store (no MariaDB on {MYSQL_ADDR}: {e})"
            );
            return None;
        }
        static N: AtomicU64 = AtomicU64::new(0);
        let db = MysqlDb {
            name: format!(
                "ringchat_t_{test}_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ),
        };
        db.drop_database();
        Some(db)
    }

    /// The `--store` argument.
    pub fn store(&self) -> String {
        format!(
            "mysql://root@{MYSQL_ADDR}/{}?pool=2&prefer_socket=false",
            self.name
        )
    }

    fn drop_database(&self) {
        use mysql::prelude::Queryable;
        let Ok(opts) = mysql::Opts::from_url(&format!("mysql://root@{MYSQL_ADDR}")) else {
            return;
        };
        if let Ok(mut c) = mysql::Conn::new(opts) {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

impl Drop for MysqlDb {
    fn drop(&mut self) {
        self.drop_database();
    }
}

/// The value of one metric series (`name{labels}` exactly as exported) on
/// a server's `--metrics` address.
pub fn metric(metrics: std::net::SocketAddr, series: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let prefix = format!("{series} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

//! One worker process: a single glommio executor driving a slice of the
//! connections, one task per connection (plus a writer task each).
//!
//! Talks to the parent over stdio (see [`crate::ipc`]): prints `READY`
//! once every connection is logged in and synced, waits for `GO <t0>`,
//! then runs the scenario and prints its result.
//!
//! Every conversation a worker's users take part in (friend pair, group)
//! lies entirely inside the worker's user range, so delivery can be checked
//! locally: for each acknowledged `(conv, seq)` the worker knows how many
//! recipients must see it and counts what they actually see.

mod legacy;
pub use legacy::read_id_map;

use crate::ipc::{self, WorkerResult};
use crate::track::{Effect, Ledger, Source, View};
use crate::{Args, Protocol, Scenario, mono_us};
use ahash::AHashMap;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringchat::model::{ConvId, Seq, UserId, conv_kind};
use ringchat::wire::{self, Enc, FrameBuf, fb, ws};
use std::cell::{Cell, RefCell};
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::FromRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Latency histograms in µs, 1 µs .. 60 s at 3 significant digits: the
/// default auto-resizing histogram would be fine too, but fixed bounds make
/// merged histograms from several workers compatible by construction.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Wakes one waiting task; a notify before the wait is kept.
#[derive(Default)]
struct Signal {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

type Shared = Rc<RefCell<TcpStream>>;
struct Half(Shared);

impl futures_lite::AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl futures_lite::AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// A send waiting for its `SendOk`: enough to resend it, with the same
/// `client_msg_id`, on the next session if the connection is lost first.
struct Sent {
    sched_us: u64,
    /// Order of the send within the worker (resends keep it).
    i: u64,
    to: UserId,
    gid: u64,
    cmid: u64,
    /// When it was last written (mono µs; 0: not yet, queued while down).
    tx_us: u64,
    /// Times it was answered `Internal` and retried (the back-off exponent).
    retries: u32,
}

/// What a received message is to the accounting.
#[derive(Clone, Copy, Debug)]
enum Item {
    /// A message of this run: scheduled send time, identity (send index + 1).
    Run { sched: u64, id: u64 },
    /// From an earlier run (catch-up of old traffic).
    Stale,
    /// The device's own message (its SendOk, or replayed to it).
    Own,
}

/// An outstanding `History` request.
#[derive(Clone, Copy)]
enum Hist {
    /// Where the conversation ends before the run (sets every view's base).
    Base(ConvId),
    /// Filling a gap.
    Fill(ConvId),
}

/// One connection's state shared between its reader, its writer and the
/// scheduler that hands it messages to send.
#[derive(Default)]
struct Conn {
    out: RefCell<Vec<u8>>,
    ready: Signal,
    closing: Cell<bool>,
    /// Logged in and past `SyncDone`.
    live: Cell<bool>,
    synced: Cell<bool>,
    user_id: Cell<UserId>,
    group_id: Cell<u64>,
    token: RefCell<String>,
    next_req: Cell<u64>,
    sent: RefCell<AHashMap<u64, Sent>>,
    /// Last time anything was read on the connection (mono µs).
    rx_us: Cell<u64>,
    /// Requests superseded by a timed-out resend on the same session: old
    /// req_id → its replacement.
    retired: RefCell<AHashMap<u64, u64>>,
    /// Legacy protocol: highest sequence number seen per stream.
    last_seq: RefCell<AHashMap<ConvId, Seq>>,
    /// Native: what this device shows per conversation (crate::track).
    views: RefCell<AHashMap<ConvId, View<Item>>>,
    /// Outstanding History requests by req_id.
    history: RefCell<AHashMap<u64, Hist>>,
    /// When the connection was lost (mono µs); 0 while connected or never lost.
    lost_at: Cell<u64>,
    /// Failed reconnect attempts since the loss (back-off exponent).
    attempt: Cell<u32>,
    /// Closed on purpose by loadgen (login storm, end of run): no reconnect.
    by_us: Cell<bool>,
    /// The token was refused: the next session is a fresh Login.
    relogin: Cell<bool>,
    /// A reconnect's login failed for good (e.g. BadCredentials).
    gave_up: Cell<bool>,
    done: Signal,
    finished: Cell<bool>,
    /// Legacy protocol: objects waiting to be written, one per write.
    lq: RefCell<std::collections::VecDeque<Vec<u8>>>,
    /// Legacy protocol: the friend's id (from the login reply).
    partner_id: Cell<UserId>,
    /// Legacy protocol: last sequence number sent per stream (direct, group).
    legacy_seq: Cell<[u64; 2]>,
    /// The Login/Resume frame of the current attempt (resent on RateLimited).
    auth_frame: RefCell<Vec<u8>>,
    auth_retries: Cell<u32>,
    /// LoginOk received on this connection.
    authed: Cell<bool>,
    /// `--protocol ws`: every frame goes out as one WebSocket message.
    ws: Cell<bool>,
}

impl Conn {
    fn push(&self, f: &[u8]) {
        if self.ws.get() {
            ws::encode_binary(ws::Role::Client, f, &mut self.out.borrow_mut());
        } else {
            self.out.borrow_mut().extend_from_slice(f);
        }
        self.ready.notify();
    }
    fn req(&self) -> u64 {
        let r = self.next_req.get() + 1;
        self.next_req.set(r);
        r
    }
    fn close(&self) {
        self.closing.set(true);
        self.ready.notify();
    }
    /// Closes on purpose (the login storm): not a loss, no reconnect.
    fn drop_by_us(&self) {
        self.by_us.set(true);
        self.close();
    }
}

#[derive(Default)]
struct Stats {
    sent: u64,
    acked: u64,
    delivered: u64,
    send_errors: u64,
    out_of_order: u64,
    stale: u64,
    conn_failures: u64,
    connected: u64,
    live: u64,
    errors: AHashMap<String, u64>,
    /// Login/Resume refusals by error code.
    login_failures: AHashMap<String, u64>,
    /// Per second since GO: (sent, acked, delivered).
    timeline: Vec<[u64; 3]>,
    /// Connections lost (closed or reset by the other side) and reconnected.
    losses: u64,
    reconnects: u64,
    /// Reconnect attempts that failed (refused, reset, login error).
    reconnect_failures: u64,
    /// Unacknowledged sends resent on a new session (same client_msg_id).
    resent: u64,
    /// SendOk with `duplicate` set (the server had stored the first try).
    resend_deduped: u64,
    /// Sends written again after --send-timeout-ms without a SendOk.
    resent_timeout: u64,
    /// Arrivals dropped as already shown that were legitimately sent again.
    redelivered: u64,
    /// Arrivals dropped as already shown with no reason to come again.
    duplicate_arrivals: u64,
    /// Pushes that arrived above a gap (held back, gap filled by History).
    gaps: u64,
    history_fills: u64,
    /// Longest loss → LoginOk (µs).
    unavailable_max_us: u64,
    /// (mono µs, kind, count), coalesced per 100 ms and kind.
    events: Vec<(u64, &'static str, u64)>,
    /// Sends answered `Internal` (retryable, e.g. the store is down) and
    /// written again after a back-off with the same client_msg_id.
    internal_retries: u64,
    /// Per reconnect: (mono µs of the loss, loss → SyncDone µs).
    resumes: Vec<(u64, u64)>,
    /// Per second of *scheduled* send time since GO: [acked, acked after
    /// more than SLOW_ACK_US, longest wait µs] — what a user who pressed
    /// send in that second waited for the SendOk.
    ack_slow: Vec<[u64; 3]>,
}

/// A SendOk later than this counts as delayed in `ack_slow_timeline`.
pub(crate) const SLOW_ACK_US: u64 = 250_000;

struct Worker {
    args: Args,
    /// First user index of this worker.
    base: usize,
    n: usize,
    run: u64,
    conns: Vec<Rc<Conn>>,
    enc: RefCell<Enc>,
    stats: RefCell<Stats>,
    ack: RefCell<Histogram<u64>>,
    e2e: RefCell<Histogram<u64>>,
    login: RefCell<Histogram<u64>>,
    /// Loss of a connection → SyncDone of the session that replaced it.
    resume: RefCell<Histogram<u64>>,
    /// `--window-report`: the histograms as of the last `WINDOW` message.
    win_prev: RefCell<[Histogram<u64>; 3]>,
    ledger: RefCell<Ledger>,
    /// Each conversation's last seq before the run (History at READY).
    conv_base: RefCell<AHashMap<ConvId, Seq>>,
    /// Set after the drain: losses are no longer reconnected.
    stopping: Cell<bool>,
    reconnect: bool,
    /// Limits connects+logins in flight (the ramp).
    gate: glommio::sync::Semaphore,
    go_us: Cell<u64>,
    /// `--closed-loop`: no new sends after this instant (µs).
    closed_end: Cell<u64>,
    src_ip: Ipv4Addr,
    server: SocketAddr,
    /// `--id-map`: legacy user ids by user index.
    id_map: Option<Vec<u64>>,
}

impl Worker {
    fn tick(&self, col: usize) {
        let go = self.go_us.get();
        if go == 0 {
            return;
        }
        let sec = (mono_us().saturating_sub(go) / 1_000_000) as usize;
        let mut st = self.stats.borrow_mut();
        if st.timeline.len() <= sec {
            st.timeline.resize(sec + 1, [0; 3]);
        }
        st.timeline[sec][col] += 1;
    }

    fn event(&self, kind: &'static str) {
        let now = mono_us();
        let mut st = self.stats.borrow_mut();
        if let Some(e) = st
            .events
            .iter_mut()
            .rev()
            .take(8)
            .find(|e| e.1 == kind && now - e.0 < 100_000)
        {
            e.2 += 1;
            return;
        }
        if st.events.len() < 5000 {
            st.events.push((now, kind, 1));
        }
    }

    /// Records one SendOk wait under the second its send was scheduled in.
    fn slow_tick(&self, sched: u64, wait: u64) {
        let go = self.go_us.get();
        if go == 0 || sched < go {
            return;
        }
        let sec = ((sched - go) / 1_000_000) as usize;
        let mut st = self.stats.borrow_mut();
        if st.ack_slow.len() <= sec {
            st.ack_slow.resize(sec + 1, [0; 3]);
        }
        let b = &mut st.ack_slow[sec];
        b[0] += 1;
        b[1] += (wait > SLOW_ACK_US) as u64;
        b[2] = b[2].max(wait);
    }

    fn expected_recipients(&self, conv: ConvId) -> u32 {
        match conv_kind(conv) {
            ringchat::model::ConvKind::Direct { .. } => 1,
            ringchat::model::ConvKind::Group(_) => self.args.group_size.saturating_sub(1) as u32,
        }
    }
}

/// Creates a non-blocking TCP socket bound to `src` (port chosen at connect
/// time thanks to IP_BIND_ADDRESS_NO_PORT, so 20k sockets per source IP do
/// not exhaust the ephemeral range at bind time) and starts connecting.
/// The connect finishes in the background; glommio's first write waits for
/// writability, which is exactly "connected".
fn start_connect(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        return Err(std::io::Error::other("IPv4 server address expected"));
    };
    // SAFETY: plain socket syscalls on a fresh fd we own; sockaddr structs are zeroed and filled.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            sz,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            sz,
        );
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(src).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        sa.sin_port = dst.port().to_be();
        sa.sin_addr.s_addr = u32::from(*dst.ip()).to_be();
        if libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(stream)
    }
}

/// Waits for a non-blocking connect to finish by polling the fd every
/// millisecond. Handing a still-connecting socket to glommio left some
/// connections silently stuck (their first write never completed until
/// unrelated ring activity), so the connection is handed over only once
/// established; at most `--max-inflight` sockets are polled at a time.
async fn connected(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let t0 = mono_us();
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n > 0 {
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: valid out-pointers of the right size.
            unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut err as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            return if err == 0 {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(err))
            };
        }
        if mono_us() - t0 > 30_000_000 {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

async fn writer(conn: Rc<Conn>, stream: Shared) {
    let mut w = Half(stream.clone());
    let mut buf = Vec::with_capacity(4096);
    loop {
        std::mem::swap(&mut buf, &mut *conn.out.borrow_mut());
        if buf.is_empty() {
            if conn.closing.get() {
                break;
            }
            conn.ready.wait().await;
            continue;
        }
        if w.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
    }
    conn.closing.set(true);
    use std::os::fd::AsRawFd;
    let fd = stream.borrow().as_raw_fd();
    // SAFETY: fd is owned by the live stream; shutdown wakes the reader.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

enum Auth {
    Login,
    Resume,
}

/// The WebSocket upgrade (`GET /ws`) on a fresh connection; returns bytes
/// read past the response (already frames).
async fn ws_upgrade(s: &mut TcpStream, server: SocketAddr) -> std::io::Result<Vec<u8>> {
    let key = ws::new_key();
    s.write_all(ws::upgrade_request(&server.to_string(), &key).as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed during the upgrade"));
        }
        buf.extend_from_slice(&chunk[..n]);
        match ws::upgrade_response(&buf, &key) {
            Ok(Some(used)) => return Ok(buf[used..].to_vec()),
            Ok(None) => {}
            Err(why) => return Err(std::io::Error::other(why)),
        }
    }
}

/// Connects, authenticates, syncs, then processes frames until closed.
async fn conn_task(w: Rc<Worker>, idx: usize, auth: Auth) {
    let conn = w.conns[idx].clone();
    conn.closing.set(false);
    conn.finished.set(false);
    conn.synced.set(false);
    conn.authed.set(false);
    conn.by_us.set(false);
    conn.auth_retries.set(0);
    conn.history.borrow_mut().clear();
    let permit = w.gate.acquire_permit(1).await.ok();
    conn.rx_us.set(mono_us());
    if w.stopping.get() && conn.lost_at.get() != 0 {
        conn.finished.set(true);
        conn.done.notify();
        return;
    }
    let t0 = mono_us();
    let stream = match start_connect(w.src_ip, w.server) {
        Ok(s) => s,
        Err(e) => {
            drop(permit);
            fail(&w, idx, &format!("connect: {e}"));
            return;
        }
    };
    if let Err(e) = connected(&stream).await {
        drop(permit);
        fail(&w, idx, &format!("connect: {e}"));
        return;
    }
    let mut stream = stream;
    conn.ws.set(w.args.protocol == Protocol::Ws);
    let mut ws_in = None;
    if conn.ws.get() {
        match ws_upgrade(&mut stream, w.server).await {
            Ok(rest) => {
                let mut r = ws::WsIn::new(ws::Role::Client, 1 << 20);
                r.push(&rest);
                ws_in = Some(r);
            }
            Err(e) => {
                drop(permit);
                fail(&w, idx, &format!("websocket upgrade: {e}"));
                return;
            }
        }
    }
    let stream = Rc::new(RefCell::new(stream));
    *conn.out.borrow_mut() = Vec::new();
    {
        let mut enc = w.enc.borrow_mut();
        let r = conn.req();
        conn.push(enc.hello(r, "loadgen"));
        let r = conn.req();
        let f = match auth {
            Auth::Login => {
                let name = format!("{}{}", w.args.prefix, w.base + idx);
                enc.login(r, &name, &w.args.password).to_vec()
            }
            Auth::Resume => {
                // `since` = the highest *contiguous* seq shown per conversation.
                let since: Vec<_> = conn
                    .views
                    .borrow()
                    .iter()
                    .filter_map(|(c, v)| Some((*c, v.held()?)))
                    .collect();
                let tok = conn.token.borrow().clone();
                enc.resume(r, &tok, &since).to_vec()
            }
        };
        conn.push(&f);
        *conn.auth_frame.borrow_mut() = f;
    }
    let wr = glommio::spawn_local(writer(conn.clone(), stream.clone()));
    let mut rd = Half(stream.clone());
    let mut fbuf = FrameBuf::with_capacity(1 << 20, 8192);
    let mut permit = permit;
    // LOADGEN_TRACE=<index>: print every frame one connection receives.
    let trace: Option<usize> = std::env::var("LOADGEN_TRACE").ok().and_then(|v| {
        if v == "all" {
            Some(usize::MAX)
        } else {
            v.parse().ok()
        }
    });
    let mut need_groups =
        matches!(w.args.scenario, Scenario::Group | Scenario::Mixed) && conn.group_id.get() == 0;
    'outer: loop {
        loop {
            let range = match fbuf.next_frame() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    w.note_error(&format!("frame: {e:?}"));
                    break 'outer;
                }
            };
            let Ok(env) = wire::decode(fbuf.get(range)) else {
                w.note_error("frame failed verification");
                break 'outer;
            };
            if trace == Some(idx) || trace == Some(usize::MAX) {
                eprintln!(
                    "trace conn {idx}: +{} µs req {} {:?}",
                    mono_us() - t0,
                    env.req_id(),
                    env.body_type()
                );
            }
            if !handle(&w, &conn, idx, env, t0, &mut need_groups) {
                break 'outer;
            }
            if permit.is_some() && conn.live.get() {
                permit = None;
                let now = mono_us();
                w.stats.borrow_mut().live += 1;
                conn.attempt.set(0);
                let lost = conn.lost_at.replace(0);
                if lost != 0 {
                    w.resume.borrow_mut().saturating_record((now - lost).max(1));
                    let mut st = w.stats.borrow_mut();
                    st.reconnects += 1;
                    if st.resumes.len() < 200_000 {
                        st.resumes.push((lost, now - lost));
                    }
                    drop(st);
                    w.event("reconnected");
                } else {
                    w.login.borrow_mut().record(now - t0).ok();
                }
            }
        }
        if let Some(r) = &mut ws_in {
            // Take WebSocket messages apart into native frames, reading
            // until at least one is whole (pongs answered on the way).
            let mut control = Vec::new();
            loop {
                match r.step(&mut fbuf, &mut control) {
                    ws::Step::Frame => break,
                    ws::Step::Close(_) => break 'outer,
                    ws::Step::More => {}
                }
                match rd.read(r.spare(8192)).await {
                    Ok(0) | Err(_) => break 'outer,
                    Ok(n) => {
                        conn.rx_us.set(mono_us());
                        r.filled(n)
                    }
                }
            }
            if !control.is_empty() {
                conn.out.borrow_mut().extend_from_slice(&control);
                conn.ready.notify();
            }
            continue;
        }
        let buf = fbuf.spare(8192);
        match rd.read(buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                conn.rx_us.set(mono_us());
                fbuf.filled(n)
            }
        }
    }
    let became_live = permit.is_none();
    let quiet_close = conn.closing.get();
    drop(permit);
    if conn.live.replace(false) {
        w.stats.borrow_mut().live -= 1;
    }
    conn.close();
    wr.await;
    if !ended(&w, idx, became_live) && !became_live && !quiet_close {
        w.stats.borrow_mut().conn_failures += 1;
    }
    conn.finished.set(true);
    conn.done.notify();
}

/// A session (or an attempt at one) ended. With `--reconnect`, a loss that
/// loadgen did not cause schedules a new session; returns whether it did.
fn ended(w: &Rc<Worker>, idx: usize, became_live: bool) -> bool {
    let conn = &w.conns[idx];
    let was_lost = conn.lost_at.get() != 0;
    if !w.reconnect
        || conn.by_us.get()
        || w.stopping.get()
        || conn.gave_up.get()
        || conn.token.borrow().is_empty()
    {
        return false;
    }
    if was_lost && !became_live {
        w.stats.borrow_mut().reconnect_failures += 1;
    }
    if !was_lost || became_live {
        // A session that was up is lost now.
        conn.lost_at.set(mono_us());
        w.stats.borrow_mut().losses += 1;
        w.event("lost");
    }
    let relogin = conn.relogin.get();
    for v in conn.views.borrow_mut().values_mut() {
        if relogin {
            v.on_relogin();
        } else {
            v.on_resume();
        }
    }
    // Exponential back-off with jitter: 25..50 ms, 50..100 ms, ... up to
    // --reconnect-max-ms, so a fleet of clients does not reconnect in step.
    let n = conn.attempt.get();
    conn.attempt.set(n + 1);
    let cap = w.args.reconnect_max_ms.max(10);
    let top = (50u64 << n.min(12)).min(cap);
    let ms = top / 2 + jitter(idx as u64 ^ ((n as u64) << 40)) % (top / 2 + 1);
    let auth = if relogin { Auth::Login } else { Auth::Resume };
    let w = w.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(Duration::from_millis(ms)).await;
        if !w.stopping.get() {
            conn_task(w, idx, auth).await;
        }
    })
    .detach();
    true
}

/// A cheap pseudo-random number (splitmix64 of the clock and a salt).
fn jitter(salt: u64) -> u64 {
    let mut z = mono_us()
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fail(w: &Rc<Worker>, idx: usize, what: &str) {
    let conn = &w.conns[idx];
    w.note_error(what);
    if !ended(w, idx, false) {
        w.stats.borrow_mut().conn_failures += 1;
    }
    conn.finished.set(true);
    conn.done.notify();
}

impl Worker {
    fn note_error(&self, what: &str) {
        *self
            .stats
            .borrow_mut()
            .errors
            .entry(what.to_string())
            .or_default() += 1;
    }

    /// The message body: `lg <run> <scheduled µs> <send index> ` padded to
    /// --body-size. The send index identifies the message whatever its
    /// client_msg_id (see `Ledger`).
    /// Writes a tracked send (again) under a fresh req_id, with the same
    /// client_msg_id, and tracks it under that req_id; returns the req_id.
    fn transmit(&self, conn: &Conn, s: Sent) -> u64 {
        let r = conn.req();
        let body = self.body(s.sched_us, s.i);
        conn.push(
            self.enc
                .borrow_mut()
                .send_message(r, s.to, s.gid, s.cmid, &body),
        );
        conn.sent.borrow_mut().insert(r, s);
        r
    }

    fn body(&self, sched: u64, i: u64) -> String {
        let mut body = format!("lg {} {} {} ", self.run, sched, i);
        while body.len() < self.args.body_size {
            body.push('x');
        }
        body
    }

    /// Applies what one arrival did to a view: shown messages are delivered.
    fn apply(&self, conn: &Conn, idx: usize, conv: ConvId, fx: Effect<Item>, now: u64) {
        {
            let mut st = self.stats.borrow_mut();
            st.duplicate_arrivals += fx.duplicate as u64;
            st.redelivered += fx.again as u64;
            st.out_of_order += fx.out_of_order as u64;
            st.gaps += fx.gap as u64;
        }
        if fx.gap {
            self.event("gap");
        }
        for (seq, item) in fx.shown {
            match item {
                Item::Run { sched, id } => {
                    self.e2e
                        .borrow_mut()
                        .saturating_record(now.saturating_sub(sched).max(1));
                    self.stats.borrow_mut().delivered += 1;
                    self.tick(2);
                    let exp = self.expected_recipients(conv);
                    self.ledger
                        .borrow_mut()
                        .shown(idx as u32, conv, seq, id, exp);
                }
                Item::Stale => self.stats.borrow_mut().stale += 1,
                Item::Own => {}
            }
        }
        if let Some(req) = fx.fill {
            if conn.synced.get() {
                self.ask_fill(conn, conv, req);
            } else if let Some(v) = conn.views.borrow_mut().get_mut(&conv) {
                // The catch-up in progress fills gaps itself; what is still
                // missing at SyncDone is asked for then.
                v.cancel_fill();
            }
        }
    }

    fn ask_fill(&self, conn: &Conn, conv: ConvId, (before, limit): (Seq, u32)) {
        let r = conn.req();
        conn.history.borrow_mut().insert(r, Hist::Fill(conv));
        self.stats.borrow_mut().history_fills += 1;
        let f = self
            .enc
            .borrow_mut()
            .history(r, conv, before, limit)
            .to_vec();
        conn.push(&f);
    }
}

/// Handles one frame; false closes the connection.
fn handle(
    w: &Rc<Worker>,
    conn: &Rc<Conn>,
    idx: usize,
    env: fb::Envelope<'_>,
    _t0: u64,
    need_groups: &mut bool,
) -> bool {
    let now = mono_us();
    if let Some(ok) = env.body_as_login_ok() {
        conn.authed.set(true);
        conn.relogin.set(false);
        conn.user_id.set(ok.user_id());
        *conn.token.borrow_mut() = ok.token().unwrap_or("").to_string();
        w.stats.borrow_mut().connected += 1;
        let lost = conn.lost_at.get();
        if lost != 0 {
            let mut st = w.stats.borrow_mut();
            st.unavailable_max_us = st.unavailable_max_us.max(now - lost);
        }
        if *need_groups {
            let r = conn.req();
            let f = w.enc.borrow_mut().list_groups(r).to_vec();
            conn.push(&f);
        }
        // Resend, in their original order and with the same client_msg_id,
        // the sends this connection never got a SendOk for (queued while it
        // was down, or lost with the previous session).
        let mut pending: Vec<Sent> = conn.sent.borrow_mut().drain().map(|(_, s)| s).collect();
        pending.sort_by_key(|s| s.i);
        match (w.args.test_fault.as_deref(), lost != 0) {
            (Some("no-resend"), true) => {
                // Forgotten: they stay unacked (and are counted so).
                for (k, s) in pending.drain(..).enumerate() {
                    conn.sent.borrow_mut().insert(u64::MAX - k as u64, s);
                }
            }
            (Some("resend-new-id"), true) => {
                for s in &mut pending {
                    s.cmid = s.cmid.wrapping_add(1 << 40);
                }
            }
            _ => {}
        }
        let n = pending.len() as u64;
        conn.retired.borrow_mut().clear();
        for mut s in pending {
            s.tx_us = now;
            w.transmit(conn, s);
        }
        if lost != 0 {
            w.stats.borrow_mut().resent += n;
        }
        return true;
    }
    if let Some(gl) = env.body_as_group_list() {
        let want = format!("{}g", w.args.prefix);
        if let Some(gs) = gl.groups() {
            for g in gs.iter() {
                if g.name().is_some_and(|n| n.starts_with(&want)) {
                    conn.group_id.set(g.group_id());
                }
            }
        }
        *need_groups = false;
        if conn.synced.get() {
            conn.live.set(true);
        }
        if conn.group_id.get() == 0 {
            w.note_error("user is in no provisioned group (run ringchat provision --groups)");
        }
        return true;
    }
    if env.body_as_sync_done().is_some() {
        // Live once synced and (for group scenarios) the group id is known.
        conn.synced.set(true);
        let fills: Vec<(ConvId, (Seq, u32))> = conn
            .views
            .borrow_mut()
            .iter_mut()
            .filter_map(|(c, v)| Some((*c, v.fill_now()?)))
            .collect();
        for (conv, req) in fills {
            w.ask_fill(conn, conv, req);
        }
        if !*need_groups {
            conn.live.set(true);
        }
        return true;
    }
    if let Some(ok) = env.body_as_send_ok() {
        let Some(s) = take_sent(conn, env.req_id()) else {
            if !conn.retired.borrow().contains_key(&env.req_id()) {
                w.note_error("SendOk for unknown req_id");
            }
            return true;
        };
        let wait = now.saturating_sub(s.sched_us).max(1);
        w.ack.borrow_mut().saturating_record(wait);
        w.stats.borrow_mut().acked += 1;
        w.slow_tick(s.sched_us, wait);
        if ok.duplicate() {
            w.stats.borrow_mut().resend_deduped += 1;
        }
        w.tick(1);
        let conv = ok.conversation();
        let exp = w.expected_recipients(conv);
        if !w.ledger.borrow_mut().acked(conv, ok.seq(), exp) {
            w.note_error("two SendOk for one (conv, seq)");
        }
        // The device holds its own message: it must not leave a gap.
        let fx = conn.views.borrow_mut().entry(conv).or_default().arrive(
            ok.seq(),
            Item::Own,
            Source::Own,
        );
        w.apply(conn, idx, conv, fx, now);
        return true;
    }
    if let Some(ms) = env.body_as_messages() {
        let req = env.req_id();
        let purpose = if req != 0 {
            conn.history.borrow_mut().remove(&req)
        } else {
            None
        };
        let list = ms.messages();
        if let Some(Hist::Base(conv)) = purpose {
            let top = list
                .iter()
                .flat_map(|l| l.iter())
                .map(|m| m.seq())
                .max()
                .unwrap_or(0);
            w.conv_base.borrow_mut().insert(conv, top);
            return true;
        }
        let src = match purpose {
            Some(Hist::Fill(_)) => Source::Fill,
            _ => Source::Push,
        };
        let tag = format!("lg {} ", w.run);
        let me = conn.user_id.get();
        let mut touched: Vec<ConvId> = Vec::new();
        for m in list.iter().flat_map(|l| l.iter()) {
            let (conv, seq) = (m.conversation(), m.seq());
            let (item, src) = if m.sender() == me {
                (Item::Own, Source::Own)
            } else {
                let body = m.body().unwrap_or("");
                match body.strip_prefix(&tag) {
                    Some(rest) => {
                        let mut f = rest.split(' ').map(|s| s.parse::<u64>().ok());
                        let sched = f.next().flatten().unwrap_or(now);
                        // Message identity: the send index (+1, 0 = none).
                        let id = f.next().flatten().map(|i| i + 1).unwrap_or(0);
                        (Item::Run { sched, id }, src)
                    }
                    None => (Item::Stale, src),
                }
            };
            let fx = conn
                .views
                .borrow_mut()
                .entry(conv)
                .or_default()
                .arrive(seq, item, src);
            if fx.duplicate && std::env::var_os("LOADGEN_DEBUG_DUP").is_some() {
                eprintln!(
                    "dup: conn {idx} conv {conv:x} seq {seq} held {:?} synced {} req {req} sender {} me {me} item {item:?} n_in_frame {}",
                    conn.views.borrow().get(&conv).and_then(|v| v.held()),
                    conn.synced.get(),
                    m.sender(),
                    list.map(|l| l.len()).unwrap_or(0)
                );
            }
            w.apply(conn, idx, conv, fx, now);
            if !touched.contains(&conv) {
                touched.push(conv);
            }
        }
        if let Some(Hist::Fill(conv)) = purpose {
            let fx = conn
                .views
                .borrow_mut()
                .entry(conv)
                .or_default()
                .fill_done(true);
            w.apply(conn, idx, conv, fx, now);
            if !touched.contains(&conv) {
                touched.push(conv);
            }
        }
        // Ack what is shown: the contiguous cursor, never past a gap.
        let acks: Vec<(ConvId, Seq)> = {
            let vs = conn.views.borrow();
            touched
                .iter()
                .filter_map(|c| Some((*c, vs.get(c)?.held()?)))
                .collect()
        };
        if !acks.is_empty() {
            let f = w.enc.borrow_mut().ack(&acks).to_vec();
            conn.push(&f);
        }
        return true;
    }
    if let Some(er) = env.body_as_error_reply() {
        // The server refuses a login at once when its password-hashing queue
        // is full (and throttles failed logins), expecting the client to
        // retry with back-off: do that on the same connection, keeping the
        // ramp slot. The login latency then includes the retries.
        if !conn.authed.get()
            && er.code() == fb::ErrorCode::RateLimited
            && conn.auth_retries.get() < AUTH_RETRIES
        {
            let n = conn.auth_retries.get();
            conn.auth_retries.set(n + 1);
            w.note_error("login RateLimited (retried)");
            let ms = (20u64 << n.min(6)).min(1000) + mono_us() % 20;
            let c = conn.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(ms)).await;
                if !c.closing.get() {
                    let f = c.auth_frame.borrow().clone();
                    c.push(&f);
                }
            })
            .detach();
            return true;
        }
        let name = format!("ErrorReply {}", wire::error_name(er.code()));
        w.note_error(&name);
        if !conn.authed.get() {
            // A refused Login/Resume ends this connection.
            let code = wire::error_name(er.code()).to_string();
            *w.stats.borrow_mut().login_failures.entry(code).or_default() += 1;
            w.event("login_failed");
            match er.code() {
                // A resume whose token is gone logs in afresh.
                fb::ErrorCode::BadToken => conn.relogin.set(true),
                fb::ErrorCode::BadCredentials => conn.gave_up.set(true),
                _ => {}
            }
            return false;
        }
        if let Some(s) = take_sent(conn, env.req_id()) {
            if w.reconnect && er.code() == fb::ErrorCode::Internal {
                retry_internal(w, conn, s);
            } else {
                w.stats.borrow_mut().send_errors += 1;
            }
        }
        match conn.history.borrow_mut().remove(&env.req_id()) {
            Some(Hist::Fill(conv)) => {
                let fx = conn
                    .views
                    .borrow_mut()
                    .entry(conv)
                    .or_default()
                    .fill_done(false);
                w.apply(conn, idx, conv, fx, now);
            }
            Some(Hist::Base(conv)) => w.note_error(&format!("History of {conv} failed")),
            None => {}
        }
        return true;
    }
    if let Some(g) = env.body_as_goodbye() {
        w.note_error(&format!("Goodbye {}", wire::error_name(g.code())));
        return false;
    }
    true
}

/// A send answered `Internal` (retryable: the store is unreachable, or a
/// forwarded request's owner died) is written again, with the same
/// client_msg_id, after 100 ms, 200 ms, ... (up to 1 s, with jitter), as
/// the protocol tells a client to. Meanwhile it stays in `conn.sent` under a
/// parking key with `tx_us` 0, so it still counts as unacknowledged, the
/// timeout resender leaves it alone, and a reconnect in between resends it
/// from there (the timer then finds it gone and does nothing).
fn retry_internal(w: &Rc<Worker>, conn: &Rc<Conn>, mut s: Sent) {
    let n = s.retries;
    s.retries += 1;
    s.tx_us = 0;
    let key = PARKED | conn.req();
    conn.sent.borrow_mut().insert(key, s);
    w.stats.borrow_mut().internal_retries += 1;
    w.event("internal_retry");
    let top = (100u64 << n.min(4)).min(1000);
    let ms = top / 2 + jitter(key ^ ((n as u64) << 40)) % (top / 2 + 1);
    let (w, conn) = (w.clone(), conn.clone());
    glommio::spawn_local(async move {
        glommio::timer::sleep(Duration::from_millis(ms)).await;
        if !conn.authed.get() || conn.closing.get() {
            // The next session's LoginOk resends it.
            return;
        }
        let Some(mut s) = conn.sent.borrow_mut().remove(&key) else {
            return;
        };
        s.tx_us = mono_us();
        w.transmit(&conn, s);
    })
    .detach();
}

/// Key bit of a send parked in `conn.sent` between an `Internal` answer
/// and its retry (real req_ids count up from 1 and never reach it).
const PARKED: u64 = 1 << 62;

/// Login/Resume attempts refused with `RateLimited` that are retried (the
/// back-off reaches 1 s after 6, so this is about 45 s of trying).
pub(crate) const AUTH_RETRIES: u32 = 50;

/// The pending send answered by `req`: itself, or the resend that replaced
/// it after a timeout (the answer to the first try may come after all).
/// The other answers then find nothing and are ignored.
fn take_sent(conn: &Conn, req: u64) -> Option<Sent> {
    let mut r = req;
    for _ in 0..64 {
        if let Some(s) = conn.sent.borrow_mut().remove(&r) {
            if r != req {
                // The latest try's own answer may still come: known, ignored.
                conn.retired.borrow_mut().insert(r, 0);
            }
            return Some(s);
        }
        r = *conn.retired.borrow().get(&r)?;
    }
    None
}

/// With --reconnect, every 250 ms:
/// - `--send-timeout-ms`: a send that got no SendOk in time is written
///   again on the same session with the same client_msg_id, as the protocol
///   says a client does; the server's dedup returns the original seq if the
///   first try was stored.
/// - A logged-in connection that received nothing for 3 ping periods (the
///   server answers every ping) is presumed dead and closed, so it is
///   reconnected: a hung server or a silent network is a loss too.
async fn resender(w: Rc<Worker>) {
    let timeout = w.args.send_timeout_ms * 1000;
    let silent = 3 * w.args.ping_secs.max(1) * 1_000_000;
    loop {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        if w.stopping.get() {
            return;
        }
        let now = mono_us();
        for conn in &w.conns {
            if !conn.authed.get() || conn.closing.get() {
                continue;
            }
            if now.saturating_sub(conn.rx_us.get()) > silent {
                w.note_error("nothing received for 3 ping periods: connection closed");
                conn.close();
                continue;
            }
            if timeout == 0 {
                continue;
            }
            let late: Vec<u64> = conn
                .sent
                .borrow()
                .iter()
                .filter(|(_, s)| s.tx_us != 0 && now - s.tx_us > timeout)
                .map(|(r, _)| *r)
                .collect();
            for old in late {
                let Some(mut s) = conn.sent.borrow_mut().remove(&old) else {
                    continue;
                };
                s.tx_us = now;
                if w.args.test_fault.as_deref() == Some("resend-new-id") {
                    s.cmid = s.cmid.wrapping_add(1 << 40);
                }
                let r = w.transmit(conn, s);
                conn.retired.borrow_mut().insert(old, r);
                w.stats.borrow_mut().resent_timeout += 1;
            }
        }
    }
}

/// Partner index (within the worker) for direct messages.
fn partner(idx: usize) -> usize {
    idx ^ 1
}

/// Open-loop sender: message `i` is *scheduled* at `go + i/rate`, and its
/// latency is measured from that instant, not from when it was actually
/// written. If the client or server stalls, the backlog is sent as fast as
/// possible and the stall shows up in the latencies (no coordinated omission).
async fn sender(w: Rc<Worker>, rate: f64, go: u64, end: u64) {
    if rate <= 0.0 || w.conns.is_empty() {
        return;
    }
    let n = w.conns.len();
    let mut i: u64 = 0;
    let mut next_conn = 0usize;
    loop {
        let now = mono_us();
        if now >= end {
            break;
        }
        let due = ((now - go) as f64 * rate / 1e6) as u64 + 1;
        while i < due {
            let sched = go + (i as f64 * 1e6 / rate) as u64;
            if sched >= end {
                break;
            }
            // Skip connections that are down (they would never ack).
            let mut tries = 0;
            let idx = loop {
                let c = next_conn;
                next_conn = (next_conn + 1) % n;
                tries += 1;
                if w.conns[c].live.get() || tries > n {
                    break c;
                }
            };
            let conn = &w.conns[idx];
            let group = match w.args.scenario {
                Scenario::Group => true,
                Scenario::Mixed => i % 5 == 4,
                _ => false,
            };
            let (to, gid) = if group {
                (0, conn.group_id.get())
            } else {
                (w.conns[partner(idx)].user_id.get(), 0)
            };
            let body = w.body(sched, i);
            let r = conn.req();
            let cmid = (w.run << 24) ^ i;
            let mut s = Sent {
                sched_us: sched,
                i,
                to,
                gid,
                cmid,
                tx_us: 0,
                retries: 0,
            };
            // A connection that is down keeps the send; its next session
            // sends it (see `handle`, LoginOk).
            if conn.authed.get() && !conn.closing.get() {
                s.tx_us = mono_us();
                let f = w
                    .enc
                    .borrow_mut()
                    .send_message(r, to, gid, cmid, &body)
                    .to_vec();
                conn.push(&f);
            }
            conn.sent.borrow_mut().insert(r, s);
            if i.is_multiple_of(100)
                && w.args.test_fault.as_deref() == Some("double-send")
                && conn.authed.get()
            {
                // The same message once more under another client_msg_id.
                let r2 = conn.req();
                let c2 = cmid.wrapping_add(1 << 40);
                let f = w
                    .enc
                    .borrow_mut()
                    .send_message(r2, to, gid, c2, &body)
                    .to_vec();
                conn.push(&f);
                let s2 = Sent {
                    sched_us: sched,
                    i,
                    to,
                    gid,
                    cmid: c2,
                    tx_us: mono_us(),
                    retries: 0,
                };
                conn.sent.borrow_mut().insert(r2, s2);
            }
            w.stats.borrow_mut().sent += 1;
            w.tick(0);
            i += 1;
        }
        glommio::timer::sleep(Duration::from_micros(500)).await;
    }
}

/// Keeps idle connections alive: the server closes connections silent for
/// its idle timeout (60 s by default), clients ping at a third of it.
///
/// Pings are spread evenly over the period (a slice of the connections
/// every 100 ms), as independent real clients would be: pinging all 10k
/// connections in the same instant is a synthetic burst that measures the
/// burst, not the steady state.
async fn pinger(w: Rc<Worker>) {
    const SLICES: usize = 10;
    let period = Duration::from_secs(w.args.ping_secs.max(1));
    let step = period / (SLICES as u32 * period.as_secs().max(1) as u32);
    let slices = SLICES * period.as_secs().max(1) as usize;
    let mut k = 0usize;
    loop {
        glommio::timer::sleep(step).await;
        let n = w.conns.len();
        let (from, to) = (n * k / slices, n * (k + 1) / slices);
        for c in &w.conns[from..to] {
            if c.live.get() {
                let r = c.req();
                let f = w.enc.borrow_mut().ping(r, r).to_vec();
                c.push(&f);
            }
        }
        k = (k + 1) % slices;
    }
}

/// `cur - prev` (`cur` itself if `prev` does not fit in it, which would mean
/// `cur` was reset without resetting `prev`).
fn hist_delta(cur: &Histogram<u64>, prev: &Histogram<u64>) -> Histogram<u64> {
    let mut d = cur.clone();
    if d.subtract(prev).is_err() {
        d = cur.clone();
    }
    d
}

/// Sends the parent what was recorded since the last call (every second:
/// the report's latency-over-time chart and `--window-report`).
fn send_window(w: &Worker) {
    let cur = [
        w.ack.borrow().clone(),
        w.e2e.borrow().clone(),
        w.login.borrow().clone(),
    ];
    let mut prev = w.win_prev.borrow_mut();
    let d = [
        hist_delta(&cur[0], &prev[0]),
        hist_delta(&cur[1], &prev[1]),
        hist_delta(&cur[2], &prev[2]),
    ];
    ipc::send_window(&d);
    *prev = cur;
}

/// Prints a progress line to the parent once a second.
async fn progress(w: Rc<Worker>) {
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        send_window(&w);
        let st = w.stats.borrow();
        ipc::send_progress(&[
            st.live,
            st.sent,
            st.acked,
            st.delivered,
            w.ack.borrow().value_at_quantile(0.99),
            w.e2e.borrow().value_at_quantile(0.99),
            st.reconnects,
            st.losses,
            st.conn_failures,
        ]);
        if !st.login_failures.is_empty() {
            ipc::send_login_failures(&st.login_failures);
        }
    }
}

fn wait_line() -> String {
    let mut s = String::new();
    std::io::stdin().lock().read_line(&mut s).ok();
    s
}

/// Entry point of a worker process.
pub fn run(args: Args, widx: usize, base: usize, n: usize) -> ! {
    let builder = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&format!("lg-worker-{widx}"))
        .ring_depth(args.ring_depth)
        .io_memory(args.io_memory_kib << 10);
    let res = builder
        .spawn(move || async move { run_async(args, widx, base, n).await })
        .and_then(|h| {
            h.join().map_err(|e| {
                glommio::GlommioError::IoError(std::io::Error::other(format!("{e:?}")))
            })
        });
    match res {
        Ok(r) => {
            ipc::send_result(&r);
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("loadgen worker {widx}: {e}");
            std::process::exit(3)
        }
    }
}

async fn run_async(args: Args, widx: usize, base: usize, n: usize) -> WorkerResult {
    let src_ip = if args.procs > 1 || args.spread_source {
        Ipv4Addr::new(127, 0, 0, 2 + widx as u8)
    } else {
        Ipv4Addr::new(127, 0, 0, 1)
    };
    let server = args.server;
    let legacy = args.protocol == Protocol::Legacy;
    let id_map = match &args.id_map {
        Some(p) if legacy => match read_id_map(p, &args.prefix) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("loadgen worker {widx}: --id-map: {e}");
                std::process::exit(2)
            }
        },
        _ => None,
    };
    let conns: Vec<Rc<Conn>> = (0..n).map(|_| Rc::new(Conn::default())).collect();
    let reconnect = args.reconnect_on();
    let w = Rc::new(Worker {
        gate: glommio::sync::Semaphore::new(args.max_inflight as u64),
        run: args.run_id,
        args,
        base,
        n,
        conns,
        enc: RefCell::new(Enc::new()),
        stats: RefCell::new(Stats::default()),
        ack: RefCell::new(new_hist()),
        e2e: RefCell::new(new_hist()),
        login: RefCell::new(new_hist()),
        resume: RefCell::new(new_hist()),
        win_prev: RefCell::new([new_hist(), new_hist(), new_hist()]),
        ledger: RefCell::new(Ledger::default()),
        conv_base: RefCell::new(AHashMap::new()),
        stopping: Cell::new(false),
        reconnect,
        go_us: Cell::new(0),
        closed_end: Cell::new(0),
        src_ip,
        server,
        id_map,
    });
    glommio::spawn_local(progress(w.clone())).detach();
    // Legacy connections are never timed out for silence (and cannot ping).
    if !legacy {
        glommio::spawn_local(pinger(w.clone())).detach();
        if w.reconnect {
            glommio::spawn_local(resender(w.clone())).detach();
        }
    }
    // Ramp: every connection task starts now; the semaphore keeps at most
    // `max_inflight` connecting/logging in at once.
    let ramp0 = mono_us();
    for i in 0..w.n {
        if legacy {
            glommio::spawn_local(legacy::conn_task(w.clone(), i)).detach();
        } else {
            glommio::spawn_local(conn_task(w.clone(), i, Auth::Login)).detach();
        }
    }
    loop {
        let settled = {
            let st = w.stats.borrow();
            st.live + st.conn_failures
        };
        if settled >= w.n as u64 {
            break;
        }
        if mono_us() - ramp0 > w.args.connect_timeout_s * 1_000_000 {
            w.note_error("connect/login phase timed out");
            break;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let ramp_us = mono_us() - ramp0;
    if !legacy
        && matches!(
            w.args.scenario,
            Scenario::Direct | Scenario::Group | Scenario::Mixed
        )
    {
        set_bases(&w).await;
    }
    ipc::send_ready(w.stats.borrow().live);
    // The parent answers with GO <start µs> once every worker is ready.
    let line = glommio::executor().spawn_blocking(wait_line).await;
    let go: u64 = line
        .trim()
        .strip_prefix("GO ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(mono_us);
    while mono_us() < go {
        glommio::timer::sleep(Duration::from_micros((go - mono_us()).min(100_000))).await;
    }
    w.go_us.set(go);
    let dur = w.args.duration * 1_000_000;
    let end = go + dur;
    let mut storm = None;
    match w.args.scenario {
        Scenario::Direct | Scenario::Group | Scenario::Mixed => {
            // Nobody logged in: nothing to send (the failures are reported).
            let rate = if w.stats.borrow().live == 0 {
                0.0
            } else {
                w.args.rate * w.n as f64 / w.args.connections as f64
            };
            if legacy {
                legacy::sender(w.clone(), rate, go, end).await;
            } else {
                sender(w.clone(), rate, go, end).await;
            }
            // Drain: wait for outstanding acks and deliveries, at most --drain s.
            let dl = mono_us() + w.args.drain * 1_000_000;
            while mono_us() < dl {
                let pending_acks: usize = w
                    .conns
                    .iter()
                    .map(|c| c.sent.borrow().len() + c.lq.borrow().len())
                    .sum();
                let undelivered = w.ledger.borrow().undelivered();
                if pending_acks == 0 && !undelivered {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
        Scenario::Connect => {
            glommio::timer::sleep(Duration::from_micros(dur)).await;
        }
        Scenario::LoginStorm => {
            // Everyone drops at once, then reconnects with the resume token.
            for c in &w.conns {
                c.drop_by_us();
            }
            for c in &w.conns {
                while !c.finished.get() {
                    c.done.wait().await;
                }
            }
            let before = w.stats.borrow().live;
            *w.login.borrow_mut() = new_hist();
            w.win_prev.borrow_mut()[2] = new_hist();
            w.stats.borrow_mut().conn_failures = 0;
            let t0 = mono_us();
            for i in 0..w.n {
                glommio::spawn_local(conn_task(w.clone(), i, Auth::Resume)).detach();
            }
            loop {
                let settled = {
                    let st = w.stats.borrow();
                    st.live + st.conn_failures
                };
                if settled >= w.n as u64 || mono_us() - t0 > w.args.connect_timeout_s * 1_000_000 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            storm = Some((mono_us() - t0, before));
            let rest = end.saturating_sub(mono_us());
            glommio::timer::sleep(Duration::from_micros(rest)).await;
        }
    }
    let elapsed_us = mono_us() - go;
    w.stopping.set(true);
    send_window(&w);
    let st = w.stats.borrow();
    let t = w.ledger.borrow().totals();
    let unacked: u64 = w.conns.iter().map(|c| c.sent.borrow().len() as u64).sum();
    let held_back: u64 = w
        .conns
        .iter()
        .map(|c| {
            c.views
                .borrow()
                .values()
                .map(|v| v.held_back() as u64)
                .sum::<u64>()
        })
        .sum();
    let mut login_failures: Vec<(String, u64)> = st.login_failures.clone().into_iter().collect();
    login_failures.sort();
    WorkerResult {
        worker: widx,
        connections: st.live,
        conn_failures: st.conn_failures,
        ramp_us,
        storm_us: storm.map(|s| s.0).unwrap_or(0),
        sent: st.sent,
        acked: st.acked,
        delivered: st.delivered,
        expected: t.expected,
        lost: t.lost,
        // Shown twice: a message under two seqs, or more showings than
        // recipients. Arrivals at or below the cursor are dropped, as the
        // protocol tells clients to (after a resume the server may push
        // what the catch-up already sent): counted apart, not a failure.
        duplicated: t.duplicated,
        duplicated_shown: t.duplicated,
        duplicate_arrivals: st.duplicate_arrivals,
        out_of_order: st.out_of_order,
        unacked,
        unacked_delivered: t.unacked_delivered,
        losses: st.losses,
        reconnects: st.reconnects,
        reconnect_failures: st.reconnect_failures,
        resent: st.resent,
        resend_deduped: st.resend_deduped,
        resent_timeout: st.resent_timeout,
        redelivered: st.redelivered,
        gaps: st.gaps,
        history_fills: st.history_fills,
        held_back,
        unavailable_max_us: st.unavailable_max_us,
        login_failures,
        events: st
            .events
            .iter()
            .map(|(t, k, n)| (*t as i64 - go as i64, k.to_string(), *n))
            .collect(),
        send_errors: st.send_errors,
        internal_retries: st.internal_retries,
        resumes: st
            .resumes
            .iter()
            .map(|(t, d)| (*t as i64 - go as i64, *d))
            .collect(),
        ack_slow: st.ack_slow.clone(),
        stale: st.stale,
        elapsed_us,
        errors: st.errors.clone().into_iter().collect(),
        timeline: st.timeline.clone(),
        ack: w.ack.borrow().clone(),
        e2e: w.e2e.borrow().clone(),
        login: w.login.borrow().clone(),
        resume: w.resume.borrow().clone(),
    }
}

/// Before GO: asks one member of every conversation the run sends to for
/// its last seq (`History`, limit 1) and starts every member's view there.
/// Everything up to it predates the run; the run's first message in the
/// conversation must be shown right after it, so a missing first message is
/// a gap like any other.
async fn set_bases(w: &Rc<Worker>) {
    let mut convs: AHashMap<ConvId, Vec<usize>> = AHashMap::new();
    let direct = matches!(w.args.scenario, Scenario::Direct | Scenario::Mixed);
    let group = matches!(w.args.scenario, Scenario::Group | Scenario::Mixed);
    for (i, c) in w.conns.iter().enumerate() {
        if !c.live.get() {
            continue;
        }
        let me = c.user_id.get();
        if direct {
            let other = w.conns[partner(i)].user_id.get();
            if other != 0 {
                convs
                    .entry(ringchat::model::direct_conv(me, other))
                    .or_default()
                    .push(i);
            }
        }
        if group && c.group_id.get() != 0 {
            convs.entry(c.group_id.get()).or_default().push(i);
        }
    }
    for (conv, members) in &convs {
        let c = &w.conns[members[0]];
        let r = c.req();
        c.history.borrow_mut().insert(r, Hist::Base(*conv));
        let f = w.enc.borrow_mut().history(r, *conv, 0, 1).to_vec();
        c.push(&f);
    }
    let t0 = mono_us();
    while w.conv_base.borrow().len() < convs.len() && mono_us() - t0 < 30_000_000 {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let base = w.conv_base.borrow();
    if base.len() < convs.len() {
        w.note_error("no History reply for a conversation's start (views start at first arrival)");
    }
    for (conv, members) in &convs {
        if let Some(&b) = base.get(conv) {
            for &i in members {
                w.conns[i]
                    .views
                    .borrow_mut()
                    .entry(*conv)
                    .or_default()
                    .set_base(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(i: u64) -> Sent {
        Sent {
            sched_us: 0,
            i,
            to: 2,
            gid: 0,
            cmid: 100 + i,
            tx_us: 1,
            retries: 0,
        }
    }

    #[test]
    fn the_first_answer_to_any_try_of_a_send_acks_it_once() {
        let c = Conn::default();
        // Message 7 was sent as req 1, timed out, resent as req 2, then 3.
        c.sent.borrow_mut().insert(3, sent(7));
        c.retired.borrow_mut().insert(1, 2);
        c.retired.borrow_mut().insert(2, 3);
        c.sent.borrow_mut().insert(4, sent(8));
        // The answer to the first try arrives late: it acks message 7.
        assert_eq!(take_sent(&c, 1).map(|s| s.i), Some(7));
        // The answers to the resends find nothing (and are known requests).
        assert!(take_sent(&c, 2).is_none());
        assert!(take_sent(&c, 3).is_none());
        assert!(c.retired.borrow().contains_key(&2));
        assert!(c.retired.borrow().contains_key(&3));
        // Other sends are untouched.
        assert_eq!(take_sent(&c, 4).map(|s| s.i), Some(8));
        assert!(take_sent(&c, 5).is_none());
    }
}

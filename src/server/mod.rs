//! The glommio shell: executors, listeners, the shard mesh and shutdown.
//!
//! One executor per CPU, each pinned, each with its own SO_REUSEPORT
//! listener, so the kernel spreads accepts over shards. Everything here is
//! plumbing around `core` (decisions) and `store` (blocking persistence).

pub mod admin;
pub mod auth;
pub mod cmd;
pub mod conn;
pub mod hasher;
pub mod health;
pub mod heap;
pub mod io;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod native;
pub mod owner;
pub mod protocol;
pub mod router;
pub mod session;
pub mod shard;
pub mod watchdog;
pub mod websocket;

use crate::store::Store;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use shard::{Shard, ShardMsg};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub shards: usize,
    pub data_dir: PathBuf,
    /// `sqlite:PATH`, `mysql://...`, or empty for `<data_dir>/ringchat.db`.
    pub store: String,
    pub max_frame: usize,
    pub idle_timeout: Duration,
    pub ring_depth: usize,
    pub io_memory: usize,
    pub blocking_threads: usize,
    pub metrics: Option<SocketAddr>,
    /// Capacity of each cross-shard channel.
    pub mesh_capacity: usize,
    /// Unwritten bytes after which a connection is cut off as a slow consumer.
    pub out_limit: usize,
    /// Cluster mode (Redis bus and presence); `None` for a single node.
    pub cluster: Option<Arc<dyn router::RouterFactory>>,
    /// Also serve the old cc_ChatServer JSON protocol here (`src/legacy`).
    pub legacy_listen: Option<SocketAddr>,
    /// Also serve WebSocket and the web client here (`server::websocket`).
    pub ws_listen: Option<SocketAddr>,
    /// Browser origins allowed besides our own (`*`: any).
    pub ws_allowed_origins: Vec<String>,
    /// Exit when a shard makes no progress for this long (`Duration::ZERO`:
    /// never). See `watchdog`.
    pub watchdog: Duration,
    /// Test hook: a deliberate stall or panic on one shard.
    pub fault: Option<watchdog::Fault>,
    /// Rates and quotas (see `core::limits`; `0` = unlimited).
    pub limits: crate::core::limits::Limits,
    /// Shortest password a registration may use, in bytes (1..=128).
    pub min_password: usize,
    /// Password-hashing threads (node-wide) and the queue in front of them
    /// (see `hasher`).
    pub hash_threads: usize,
    pub hash_queue: usize,
    /// Bearer token of `/admin` on the metrics address; `None`: admin is
    /// disabled (see `admin`).
    pub admin_token: Option<admin::AdminToken>,
    /// A resume token unused this long expires (`Duration::ZERO`: never).
    pub session_ttl: Duration,
    /// A store call unanswered this long is failed (`Internal`, retryable).
    pub store_timeout: Duration,
    /// Upgrade a password hash whose parameters differ from the server's
    /// at a successful login (off only for benchmarks of fast hashes).
    pub rehash: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7000".parse().expect("valid"),
            shards: 0,
            data_dir: PathBuf::from("./data"),
            store: String::new(),
            max_frame: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            ring_depth: 2048,
            io_memory: 256 << 10,
            blocking_threads: 4,
            metrics: None,
            mesh_capacity: 4096,
            out_limit: 16 << 20,
            cluster: None,
            legacy_listen: None,
            ws_listen: None,
            ws_allowed_origins: Vec::new(),
            watchdog: Duration::from_secs(10),
            fault: None,
            hash_threads: 0,
            hash_queue: 16,
            limits: crate::core::limits::Limits::default(),
            min_password: crate::core::validate::MIN_PASSWORD,
            admin_token: None,
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            store_timeout: Duration::from_secs(15),
            rehash: true,
        }
    }
}

/// Ticks (50 ms) between sweeps of expired session tokens: 10 minutes.
const SESSION_SWEEP_TICKS: u64 = 12_000;

/// Deletes the session tokens unused for longer than `--session-ttl-secs`,
/// in the background on the store's blocking pool.
fn sweep_sessions(shard: &Rc<Shard>) {
    let ttl = shard.cfg.session_ttl.as_millis() as u64;
    if ttl == 0 {
        return;
    }
    let before = crate::model::now_ms().saturating_sub(ttl);
    let s2 = shard.clone();
    glommio::spawn_local(async move {
        match s2
            .blocking(move |s| s.delete_sessions_unused_since(before))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired session tokens deleted"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired session tokens failed"),
        }
    })
    .detach();
}

/// CPUs this process may run on (respects taskset / cgroups).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: plain libc call with a zeroed set of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        let v: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect();
        if v.is_empty() { vec![0] } else { v }
    }
}

/// Fails early, in words, where glommio would panic with a misleading
/// message ("kernel too old") when io_uring or locked memory is missing.
pub fn preflight(cfg: &Config, shards: usize) -> Result<(), String> {
    // SAFETY: io_uring_setup with a valid params struct; the fd is closed.
    unsafe {
        let mut params = [0u8; 120];
        let fd = libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr());
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            return Err(format!(
                "io_uring is not available ({err}). ringchat needs Linux >= 5.8 with io_uring enabled; \
                 in containers allow the io_uring_setup/io_uring_enter/io_uring_register syscalls \
                 (e.g. docker --security-opt seccomp=unconfined) and check /proc/sys/kernel/io_uring_disabled"
            ));
        }
        libc::close(fd as i32);
    }
    // Each executor locks its rings (~300 B per entry, three rings) plus io_memory.
    let per_shard = cfg.ring_depth * 300 * 3 + cfg.io_memory + (64 << 10);
    let need = per_shard * shards;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; geteuid has no preconditions.
    let (ok, root) = unsafe {
        (
            libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0,
            libc::geteuid() == 0,
        )
    };
    if ok && !root && lim.rlim_cur != libc::RLIM_INFINITY && (lim.rlim_cur as usize) < need {
        return Err(format!(
            "locked-memory limit is {} KiB but {shards} shard(s) at ring depth {} need about {} KiB. \
             Raise it (ulimit -l, systemd LimitMEMLOCK=, or grant CAP_IPC_LOCK), or lower \
             --shards / --ring-depth / --io-memory-kib",
            lim.rlim_cur / 1024,
            cfg.ring_depth,
            need / 1024
        ));
    }
    Ok(())
}

/// Conversations whose owner state a shard keeps cached (~1-30 KiB each
/// with the dedup window); idle ones beyond this are dropped.
const MAX_CACHED_CONVS: usize = 50_000;
/// Owner state unused for this long is dropped (reloaded on next use).
const CONV_IDLE_EVICT_S: u64 = 60;

/// What the caller holds of a running node: its stop signal and where it
/// reports its bound address. A value, not process-wide state, so one
/// process can run several nodes (tests do).
#[derive(Clone, Default)]
pub struct Control {
    stop: Arc<AtomicBool>,
    ready: Option<std::sync::mpsc::Sender<SocketAddr>>,
}

impl Control {
    pub fn new() -> Control {
        Control::default()
    }

    /// Also tells `to` the bound native address once every shard accepts.
    pub fn report_ready(mut self, to: std::sync::mpsc::Sender<SocketAddr>) -> Control {
        self.ready = Some(to);
        self
    }

    /// Asks the node to stop (what SIGINT/SIGTERM do for `ringchat serve`).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested (the node is draining).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The flag itself, e.g. for `signal_hook::flag::register`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
}

thread_local! {
    /// Tasks that panicked on this shard's executor (one shard per thread).
    static PANICS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Spawns a detached task; a panic in it is logged and contained instead of
/// taking the executor (and every other connection on it) down.
pub fn spawn_guarded<F: std::future::Future<Output = ()> + 'static>(fut: F) {
    glommio::spawn_local(Guarded(fut)).detach();
}

/// The future of a [`spawn_guarded`] task: polls `F` under `catch_unwind`.
///
/// A struct, not an `async move { fut.catch_unwind().await }` block: an
/// async block keeps the future it captured *and* the one it awaits in
/// separate slots (rustc does not overlap a coroutine's captured upvars
/// with its locals), so every session task held its future twice, 6 KB
/// per handed-off connection (heaptrack, docs/ARCHITECTURE.md "Memory per
/// connection"). `guarded_task_holds_its_future_once` pins the size.
struct Guarded<F>(F);

impl<F: std::future::Future<Output = ()>> std::future::Future for Guarded<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        // SAFETY: structural pinning: the inner future is never moved out
        // of `self`, and `Guarded` has no Drop or Unpin impl of its own.
        let fut = unsafe { self.map_unchecked_mut(|g| &mut g.0) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(p) => p,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %msg, "connection task panicked; connection closed");
                PANICS.with(|c| c.set(c.get() + 1));
                // Never polled again: the task ends and drops the future.
                std::task::Poll::Ready(())
            }
        }
    }
}

/// Runs the server until SIGINT/SIGTERM (see `serve_with` for a node
/// stopped by its caller). Prints `ringchat listening on ADDR` to stdout
/// once every shard accepts connections.
///
/// `extra` are the listeners besides the native `--listen` one, each with
/// its protocol (`crate::serve` registers the old JSON protocol there).
pub fn serve(cfg: Config, extra: Vec<protocol::Listen>) -> Result<(), String> {
    let ctl = Control::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, ctl.flag()).map_err(|e| format!("signal handler: {e}"))?;
    }
    serve_with(cfg, extra, ctl)
}

/// Runs a node until `ctl` is told to stop. Any number of nodes may run in
/// one process, each on its own addresses and data dir (port 0 works: the
/// bound address goes to `Control::report_ready`).
pub fn serve_with(
    mut cfg: Config,
    extra: Vec<protocol::Listen>,
    ctl: Control,
) -> Result<(), String> {
    let cpus = allowed_cpus();
    if cfg.shards == 0 {
        cfg.shards = cpus.len();
    }
    let n = cfg.shards;
    preflight(&cfg, n)?;
    // Before anything else touches the data dir or the address: a second
    // server on either must fail here, not half-start (see `listen`).
    // The data dir holds the embedded store; nodes sharing a MySQL store
    // do not use it (several may run from one directory).
    let _lock = if cfg.store.starts_with("mysql:") {
        None
    } else {
        Some(listen::lock_data_dir(&cfg.data_dir)?)
    };
    let (socks, bound) = listen::bind_group(cfg.listen, n, "listen")?;
    cfg.listen = bound;
    // Per shard, its socket of each extra listener.
    let mut extra_socks: Vec<Vec<(std::os::fd::OwnedFd, Arc<dyn protocol::Protocol>)>> =
        (0..n).map(|_| Vec::new()).collect();
    let mut extra_bound = Vec::new();
    for l in &extra {
        let (socks, b) = listen::bind_group(l.addr, n, l.what)?;
        for (i, s) in socks.into_iter().enumerate() {
            extra_socks[i].push((s, l.proto.clone()));
        }
        extra_bound.push((l.proto.name(), b));
    }
    let store: Arc<dyn Store> = crate::store::open(&cfg.store, &cfg.data_dir)
        .map_err(|e| format!("opening the store: {e}"))?;
    let published = metrics::Published::new(n);
    let limits = limits::NodeLimits::new(cfg.limits);
    let progress = Arc::new(watchdog::Progress::new(n));
    let health = Arc::new(health::Health {
        progress: progress.clone(),
        store: store.clone(),
        started: AtomicBool::new(false),
        stop: ctl.flag(),
        limits: limits.clone(),
    });
    let (admin_tx, admin_rx) = admin::channels(n);
    if let Some(addr) = cfg.metrics {
        let admin = Arc::new(admin::Admin::new(
            cfg.admin_token.as_ref().map(|t| t.0.as_str()),
            admin_tx,
            store.clone(),
            cfg.max_frame,
        ));
        let a = metrics::spawn_exporter(addr, published.clone(), health.clone(), admin)
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
        eprintln!("metrics on http://{a}/metrics");
    } else if cfg.admin_token.is_some() {
        tracing::warn!("an admin token is set but --metrics is not: admin is unreachable");
    }
    let cfg = Arc::new(cfg);
    let committer = crate::store::commit::GroupCommitter::new(store.clone());
    let hash_threads = match cfg.hash_threads {
        0 => (cpus.len() / 2).max(1),
        t => t,
    };
    let hasher = Arc::new(hasher::Hasher::new(hash_threads, cfg.hash_queue));
    let mesh: MeshBuilder<ShardMsg, _> = MeshBuilder::full(n, cfg.mesh_capacity);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::new();
    let mut admin_rx = admin_rx.into_iter();
    for (i, (sock, extra_sock)) in socks.into_iter().zip(extra_socks).enumerate() {
        let admin_rx = admin_rx.next().expect("one admin channel per shard");
        let committer = committer.clone();
        let hasher = hasher.clone();
        let limits = limits.clone();
        let stop = ctl.flag();
        let (cfg, store, mesh, ready, published, progress) = (
            cfg.clone(),
            store.clone(),
            mesh.clone(),
            ready_tx.clone(),
            published.clone(),
            progress.clone(),
        );
        let cpu = cpus[i % cpus.len()];
        let builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{i}"))
            .ring_depth(cfg.ring_depth)
            .io_memory(cfg.io_memory)
            .preempt_timer(Duration::from_millis(5))
            .blocking_thread_pool_placement(PoolPlacement::Unbound(cfg.blocking_threads));
        let listeners = Listeners {
            native: sock,
            extra: extra_sock,
        };
        let h = builder
            .spawn(move || {
                shard_main(
                    i,
                    n,
                    cfg,
                    (store, committer, hasher, limits),
                    mesh,
                    (ready, published, progress, stop, admin_rx),
                    listeners,
                )
            })
            .map_err(|e| format!("starting shard {i}: {e}"))?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                ctl.stop();
                return Err(e);
            }
            Err(_) => return Err("a shard failed to start".into()),
        }
    }
    for (name, addr) in extra_bound {
        eprintln!("{name} protocol on {addr}");
    }
    health.started.store(true, Ordering::SeqCst);
    println!("ringchat listening on {} ({n} shards)", cfg.listen);
    if let Some(r) = &ctl.ready {
        let _ = r.send(cfg.listen);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    supervise(&ctl, &progress, cfg.watchdog);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// The main thread's job while shards run: return once a stop was
/// requested; exit the process if a shard stopped making progress, whether
/// its executor is stalled or dead (a panic that escapes a task kills it).
/// A deaf process must not keep its listeners: see `watchdog`.
fn supervise(ctl: &Control, progress: &watchdog::Progress, limit: Duration) {
    progress.restart_clocks();
    let mut trims = heap::TrimClock::new(std::time::Instant::now());
    while !ctl.stopping() {
        std::thread::sleep(Duration::from_millis(200));
        if trims.due(
            std::time::Instant::now(),
            progress.trim.swap(false, Ordering::Relaxed),
        ) {
            heap::trim();
        }
        if ctl.stopping() || limit.is_zero() {
            continue;
        }
        if let Some((i, silent)) = progress.stalled(limit) {
            tracing::error!(
                shard = i,
                silent_ms = silent.as_millis() as u64,
                "shard {i} made no progress for {:.1} s (its executor is stalled or died: \
                 a blocking call, a stopped reactor or an escaped panic); exiting so that \
                 a supervisor restarts this node",
                silent.as_secs_f64()
            );
            std::process::exit(watchdog::EXIT_STALLED);
        }
    }
}

/// Accepts connections on one listener of this shard until dropped, each
/// served by `proto`.
fn accept_loop(
    shard: Rc<Shard>,
    listener: glommio::net::TcpListener,
    proto: Arc<dyn protocol::Protocol>,
) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    metrics::Metrics::inc(&shard.metrics.accepted);
                    tracing::debug!(
                        shard = shard.id,
                        protocol = proto.name(),
                        remote = stream.peer_addr().ok().map(tracing::field::display),
                        "connection accepted"
                    );
                    let s = shard.clone();
                    let p = proto.clone();
                    let ip = stream
                        .peer_addr()
                        .map(|a| a.ip())
                        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
                    let slot = match shard.limits.admit(ip) {
                        Ok(slot) => slot,
                        Err(why) => {
                            // A clear refusal, then close: never an accept
                            // loop spinning on EMFILE (the cap stays below
                            // the open-file limit).
                            tracing::debug!(shard = shard.id, %ip, "{why}");
                            let bytes = p.refusal(&why);
                            spawn_guarded(async move {
                                use futures_lite::AsyncWriteExt;
                                let mut stream = stream;
                                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                                let _ = stream.write_all(&bytes).await;
                            });
                            continue;
                        }
                    };
                    spawn_guarded(async move {
                        s.metrics.connections.set(s.metrics.connections.get() + 1);
                        p.serve(s.clone(), stream, slot).await;
                        s.metrics.connections.set(s.metrics.connections.get() - 1);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(shard = shard.id, protocol = proto.name(), error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// A shard's listening sockets, bound by `serve` (see `listen`).
struct Listeners {
    native: std::os::fd::OwnedFd,
    extra: Vec<(std::os::fd::OwnedFd, Arc<dyn protocol::Protocol>)>,
}

fn adopt(fd: std::os::fd::OwnedFd) -> glommio::net::TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: a bound, listening TCP socket whose ownership moves here.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

/// What a shard reports to and watches from the main thread: its start-up
/// result, its metrics, its progress stamps, the node's stop signal.
type ShardLinks = (
    std::sync::mpsc::Sender<Result<(), String>>,
    Arc<metrics::Published>,
    Arc<watchdog::Progress>,
    Arc<AtomicBool>,
    flume::Receiver<admin::Cmd>,
);

async fn shard_main(
    id: usize,
    n: usize,
    cfg: Arc<Config>,
    (store, committer, hasher, limits): (
        Arc<dyn Store>,
        crate::store::commit::GroupCommitter,
        Arc<hasher::Hasher>,
        Arc<limits::NodeLimits>,
    ),
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    (ready, published, progress, stop, admin_rx): ShardLinks,
    listeners: Listeners,
) {
    let listener = adopt(listeners.native);
    let extra: Vec<_> = listeners
        .extra
        .into_iter()
        .map(|(fd, p)| (adopt(fd), p))
        .collect();
    let (senders, receivers) = match mesh.join().await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(format!("joining the shard mesh failed: {e}")));
            return;
        }
    };
    tracing::debug!(shard = id, "mesh joined");
    let shard = Rc::new(Shard::new(
        id,
        n,
        cfg.clone(),
        (store, committer, hasher, limits),
        senders,
    ));
    shard.spawn_receivers(receivers);
    for to in 0..n {
        if to != id {
            glommio::spawn_local(shard.clone().forward_loop(to)).detach();
        }
    }
    glommio::spawn_local(shard.clone().local_loop()).detach();
    glommio::spawn_local(shard.clone().writer_loop()).detach();
    glommio::spawn_local(admin::shard_loop(shard.clone(), admin_rx)).detach();
    if let Some(c) = shard.cluster.clone()
        && let Err(e) = c.start(shard.clone()).await
    {
        let _ = ready.send(Err(format!("joining the cluster: {e}")));
        return;
    }
    // Cursor flush + metrics publication + stop check.
    let ticker = {
        let shard = shard.clone();
        let published = published.clone();
        glommio::spawn_local(async move {
            let mut ticks = 0u64;
            let mut evictions = heap::EvictionTrim::default();
            while !stop.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
                ticks += 1;
                // The watchdog's evidence that this executor still runs.
                if ticks.is_multiple_of(5) {
                    progress.beat(shard.id);
                }
                // Cursors are coalesced for 2 s: losing them costs a client a
                // few replayed (deduplicated) messages, writing them costs I/O.
                if ticks.is_multiple_of(40) {
                    shard.flush_cursors();
                }
                if ticks.is_multiple_of(200) {
                    shard.rates.borrow_mut().prune(crate::model::now_ms());
                }
                // Expired session tokens are deleted by shard 0, a minute
                // after start and then every 10 minutes (a Resume refuses
                // and deletes an expired one meanwhile).
                if shard.id == 0 && ticks % SESSION_SWEEP_TICKS == 1200 {
                    sweep_sessions(&shard);
                }
                if ticks.is_multiple_of(20) {
                    shard.clock_s.set(ticks / 20);
                    if evictions
                        .after_pass(shard.evict_idle_convs(MAX_CACHED_CONVS, CONV_IDLE_EVICT_S))
                    {
                        progress.trim.store(true, Ordering::Relaxed);
                    }
                    shard.metrics.task_panics.set(PANICS.with(|c| c.get()));
                    shard.metrics.publish(&published);
                }
            }
        })
    };
    let _ = ready.send(Ok(()));
    watchdog::inject(cfg.fault, id);
    let accept: Vec<glommio::Task<()>> = std::iter::once((
        listener,
        Arc::new(conn::Native::tcp()) as Arc<dyn protocol::Protocol>,
    ))
    .chain(extra)
    .map(|(l, p)| accept_loop(shard.clone(), l, p))
    .collect();
    ticker.await;
    // Graceful stop: no new connections, make acked cursors durable, wait for
    // in-flight writes, tell sessions goodbye.
    drop(accept);
    shard.stopping.set(true);
    shard.flush_cursors();
    shard.flush_writes().await;
    if let Some(c) = &shard.cluster {
        // Leave the cluster now instead of when our liveness key expires:
        // the other nodes take over our conversations within a second.
        c.leave(&shard).await;
        // Other nodes refresh their view every second: until then they may
        // still route requests for our conversations here, so keep serving
        // the bus (and flushing what it produces) a little longer.
        glommio::timer::sleep(Duration::from_millis(1300)).await;
        shard.flush_writes().await;
    }
    let conns: Vec<_> = shard.conns.borrow().values().cloned().collect();
    for c in conns {
        shard.goodbye(
            &c,
            crate::wire::fb::ErrorCode::ShuttingDown,
            "server shutting down",
        );
    }
    glommio::timer::sleep(Duration::from_millis(100)).await;
    shard.metrics.publish(&published);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_is_contained_and_counted() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor");
        ex.run(async {
            let ran = std::rc::Rc::new(std::cell::Cell::new(false));
            spawn_guarded(async { panic!("boom") });
            let r = ran.clone();
            spawn_guarded(async move { r.set(true) });
            glommio::timer::sleep(Duration::from_millis(20)).await;
            assert!(ran.get(), "the executor goes on after a task panicked");
            assert_eq!(PANICS.with(|c| c.get()), 1);
        });
    }

    #[test]
    fn guarded_task_holds_its_future_once() {
        let big = [7u8; 4096];
        let fut = async move {
            std::future::ready(()).await;
            std::hint::black_box(&big);
        };
        let inner = std::mem::size_of_val(&fut);
        assert!(inner >= 4096);
        let task = Guarded(fut);
        assert_eq!(std::mem::size_of_val(&task), inner);
    }
}

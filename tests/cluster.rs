//! Cluster tests: real `ringchat` nodes sharing this machine's MariaDB and
//! Redis, nginx (stream proxy, the rendered `nginx/ringchat.conf`) in front.
//!
//! Each test starts its own cluster: database and Redis prefix
//! `ringchat_ct_<pid>_<n>`, node processes, nginx with its own pid file and
//! logs in a temporary directory; all of it is removed when the cluster is
//! dropped (even after a failed assertion). Tests run one at a time (a global
//! lock): nodes pin their executors and the machine may have 2 cores.
//!
//! A missing service skips a test with `SKIPPED: ...` on stderr, unless
//! `RINGCHAT_REQUIRE_MYSQL=1`, `RINGCHAT_REQUIRE_REDIS=1` or
//! `RINGCHAT_REQUIRE_NGINX=1` is set (CI sets all three): then it fails.

mod common;

use common::{PASSWORD, T, User, befriend, login_synced, uname, wait, wait_msg};
use redis::Commands as _;
use ringchat::client::{ChatMsg, Client, ClientError, ClientOptions, Event, FriendEventKind};
use ringchat::model::{ConvId, Seq, UserId};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

const MYSQL_ADDR: &str = "127.0.0.1:3306";
const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306";
const REDIS_ADDR: &str = "127.0.0.1:6379";
const NGINX_TEMPLATE: &str = include_str!("../nginx/ringchat.conf");
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// A node's start: store connect, Redis registration, the 1.5 s warm-up.
const STARTUP: Duration = Duration::from_secs(30);
/// A crashed node's liveness key expires after `cluster::ALIVE_TTL_MS`; the
/// others read the live set every second. Allow a little on top.
const CRASH_NOTICED: Duration =
    Duration::from_millis(ringchat::cluster::ALIVE_TTL_MS + 1000 + 2500);

/// How a cluster's nodes are started, beyond the defaults.
#[derive(Default)]
struct NodeOpts {
    /// More `serve` arguments for every node.
    extra: Vec<String>,
    /// Another MySQL server (`mysql://user@host:port`) than this machine's.
    mysql_url: Option<String>,
    /// Nodes serve `--metrics` with `--admin-token ADMIN_TOKEN`.
    admin: bool,
}

/// One cluster at a time (see the module docs).
static TURN: Mutex<()> = Mutex::new(());

// ------------------------------------------------------------------ skips

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn port_open(addr: &str) -> Result<(), String> {
    let a: SocketAddr = addr.parse().unwrap();
    TcpStream::connect_timeout(&a, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| format!("nothing accepts on {addr}: {e}"))
}

fn nginx_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    dirs.into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// Says `SKIPPED: ...` on the real stderr: the test harness captures
/// `eprintln!` of passing tests, and a skip must never be silent.
fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
}

/// Whether the services a test needs are here; prints `SKIPPED` or panics
/// (when required) otherwise.
fn services_ready(test: &str, nginx: bool) -> bool {
    let mut checks: Vec<(&str, &str, Result<(), String>)> = vec![
        ("MySQL", "RINGCHAT_REQUIRE_MYSQL", port_open(MYSQL_ADDR)),
        ("Redis", "RINGCHAT_REQUIRE_REDIS", port_open(REDIS_ADDR)),
    ];
    if nginx {
        let r = match nginx_binary() {
            None => Err("no nginx binary in PATH or /usr/sbin".to_string()),
            Some(_) if !Path::new(STREAM_MODULE).exists() => {
                Err(format!("stream module {STREAM_MODULE} missing"))
            }
            Some(_) => Ok(()),
        };
        checks.push(("nginx", "RINGCHAT_REQUIRE_NGINX", r));
    }
    for (what, var, r) in checks {
        if let Err(why) = r {
            if required(var) {
                panic!("{test}: {what} not available ({why}) and {var}=1");
            }
            skipped(&format!("{what} not available ({why}) [{test}]"));
            return false;
        }
    }
    true
}

// ------------------------------------------------------------------ harness

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn ncpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Collects a child's output lines; `ready` fires on `listening on`.
fn drain(
    r: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    ready: Option<mpsc::Sender<()>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if line.contains("listening on")
                && let Some(tx) = &ready
            {
                let _ = tx.send(());
            }
            let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
            s.push_str(&line);
            s.push('\n');
        }
    });
}

struct Node {
    name: String,
    addr: SocketAddr,
    /// `--ws-listen`: every node serves WebSocket too (nginx's http block).
    ws: SocketAddr,
    /// `--metrics` (with `/admin`), when the cluster was started with admin.
    metrics: Option<SocketAddr>,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

struct Nginx {
    addr: SocketAddr,
    /// The http (WebSocket upgrade) listener.
    ws: SocketAddr,
    child: Child,
    dir: PathBuf,
}

/// A redis-server of the test's own (for the restart test), so the shared
/// one is never disturbed.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let dir = std::env::temp_dir().join(format!(
            "ringchat-ct-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = PrivateRedis {
            port: free_port(),
            dir,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + T;
        while port_open(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A redis-server that speaks only TLS (no plaintext port), with a
    /// certificate for 127.0.0.1 from a CA made for the test. Returns the
    /// server and the CA's PEM file.
    fn start_tls() -> (PrivateRedis, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "ringchat-ct-redis-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringchat test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(dir.join("redis.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("redis.key"), key.serialize_pem()).unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(dir.join("redis.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("redis.key"))
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .args(["--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + T;
        while port_open(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) on {addr} did not start: is it built with TLS?"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = PrivateRedis {
            port,
            dir,
            child: Some(child),
        };
        let ca_copy = std::env::temp_dir().join(format!(
            "ringchat-ct-ca-{}-{}.pem",
            std::process::id(),
            port
        ));
        std::fs::copy(&ca_file, &ca_copy).unwrap();
        (r, ca_copy)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Cluster {
    /// Database name and Redis prefix (with `:`) of this cluster.
    tag: String,
    redis_url: String,
    shards: usize,
    nodes: Vec<Node>,
    nginx: Option<Nginx>,
    dir: PathBuf,
    /// More `serve` arguments for every node.
    extra: Vec<String>,
    /// The MySQL server the nodes use (`mysql://user@host:port`).
    mysql_url: String,
    /// Nodes serve `--metrics` with `--admin-token ADMIN_TOKEN`.
    admin: bool,
    _turn: MutexGuard<'static, ()>,
}

const ADMIN_TOKEN: &str = "cluster-admin-token-0123456789";

impl Cluster {
    /// `k` nodes with `shards` shards each (and nginx in front if asked),
    /// or `None` when the test is skipped.
    fn start(test: &str, k: usize, shards: usize, nginx: bool) -> Option<Cluster> {
        Cluster::start_on(test, k, shards, nginx, format!("redis://{REDIS_ADDR}"))
    }

    fn start_on(
        test: &str,
        k: usize,
        shards: usize,
        nginx: bool,
        redis_url: String,
    ) -> Option<Cluster> {
        Cluster::start_with(test, k, shards, nginx, redis_url, NodeOpts::default())
    }

    /// Nodes with the admin endpoints on their metrics addresses.
    fn start_admin(test: &str, k: usize, shards: usize) -> Option<Cluster> {
        let opts = NodeOpts {
            admin: true,
            ..NodeOpts::default()
        };
        Cluster::start_with(
            test,
            k,
            shards,
            false,
            format!("redis://{REDIS_ADDR}"),
            opts,
        )
    }

    fn start_with(
        test: &str,
        k: usize,
        shards: usize,
        nginx: bool,
        redis_url: String,
        opts: NodeOpts,
    ) -> Option<Cluster> {
        if !services_ready(test, nginx) {
            return None;
        }
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        static N: AtomicU64 = AtomicU64::new(0);
        let tag = format!(
            "ringchat_ct_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Cluster {
            tag,
            redis_url,
            shards,
            nodes: Vec::new(),
            nginx: None,
            dir,
            extra: opts.extra,
            mysql_url: opts.mysql_url.unwrap_or_else(|| MYSQL_URL.to_string()),
            admin: opts.admin,
            _turn: turn,
        };
        for i in 0..k {
            c.nodes.push(Node {
                name: format!("n{}", i + 1),
                addr: "127.0.0.1:0".parse().unwrap(),
                ws: "127.0.0.1:0".parse().unwrap(),
                metrics: None,
                child: None,
                log: Arc::new(Mutex::new(String::new())),
            });
        }
        // Start every node at once (each waits out its warm-up), retrying
        // a node whose picked port was taken meanwhile.
        let mut waiting = Vec::new();
        for i in 0..k {
            c.nodes[i].addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            c.nodes[i].ws = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            waiting.push((i, c.spawn_node(i)));
        }
        for (i, rx) in waiting {
            if let Err(e) = c.await_ready(i, rx) {
                eprintln!("node n{} did not start, retrying: {e}", i + 1);
                let mut ok = false;
                for _ in 0..3 {
                    c.nodes[i].addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                    c.nodes[i].ws = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                    let rx = c.spawn_node(i);
                    if c.await_ready(i, rx).is_ok() {
                        ok = true;
                        break;
                    }
                }
                assert!(ok, "node n{} did not start: {e}", i + 1);
            }
        }
        if nginx {
            c.start_nginx();
        }
        Some(c)
    }

    fn spawn_node(&mut self, i: usize) -> mpsc::Receiver<()> {
        let mut store = format!("{}/{}", self.mysql_url, self.tag);
        if self.mysql_url != MYSQL_URL {
            store.push_str("?prefer_socket=false");
        }
        let prefix = format!("{}:", self.tag);
        let node = &mut self.nodes[i];
        node.log.lock().unwrap().clear();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringchat"));
        cmd.arg("serve")
            .args(["--listen", &node.addr.to_string()])
            .args(["--ws-listen", &node.ws.to_string()])
            .args(["--shards", &self.shards.to_string()])
            .args(["--store", &store])
            .args(["--redis", &self.redis_url])
            .args(["--node-id", &node.name])
            .args(["--redis-prefix", &prefix])
            .arg("--data-dir")
            .arg(self.dir.join(&node.name))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.admin {
            let m = *node
                .metrics
                .get_or_insert_with(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
            cmd.args(["--metrics", &m.to_string(), "--admin-token", ADMIN_TOKEN]);
        }
        if self.shards == 1 {
            // One executor per node: spread the nodes over the CPUs rather
            // than pinning them all to the first.
            let cpu = i % ncpus();
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn ringchat");
        let (tx, rx) = mpsc::channel();
        drain(child.stdout.take().unwrap(), node.log.clone(), Some(tx));
        drain(child.stderr.take().unwrap(), node.log.clone(), None);
        node.child = Some(child);
        rx
    }

    fn await_ready(&mut self, i: usize, rx: mpsc::Receiver<()>) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        let node = &mut self.nodes[i];
        loop {
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(());
            }
            let child = node.child.as_mut().unwrap();
            if let Ok(Some(st)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                node.child = None;
                return Err(format!(
                    "exited with {st}; output:\n{}",
                    node.log.lock().unwrap()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                node.child = None;
                return Err(format!(
                    "no `listening on` within {STARTUP:?}; output:\n{}",
                    node.log.lock().unwrap()
                ));
            }
        }
    }

    fn start_nginx(&mut self) {
        let bin = nginx_binary().expect("nginx");
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let ws: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let dir = self.dir.join("nginx");
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("nginx.conf");
            let nodes: Vec<(String, String)> = self
                .nodes
                .iter()
                .map(|n| (n.addr.to_string(), n.ws.to_string()))
                .collect();
            std::fs::write(&conf, render_nginx(addr, ws, &dir, &nodes)).unwrap();
            let log = dir.join("error.log");
            let mut child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&log)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let deadline = Instant::now() + T;
            loop {
                if port_open(&addr.to_string()).is_ok() && port_open(&ws.to_string()).is_ok() {
                    self.nginx = Some(Nginx {
                        addr,
                        ws,
                        child,
                        dir,
                    });
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile, most likely: retry
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "nginx did not start on {addr}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("nginx did not start");
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    fn nginx_addr(&self) -> SocketAddr {
        self.nginx.as_ref().expect("nginx").addr
    }

    /// Every node's output and nginx's error log, for failure messages.
    fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let log = n.log.lock().unwrap_or_else(|e| e.into_inner());
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(200);
            s.push_str(&format!("---- {} ({}) ----\n", n.name, n.addr));
            for l in &lines[from..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        if let Some(ng) = &self.nginx {
            s.push_str("---- nginx error.log ----\n");
            s.push_str(&std::fs::read_to_string(ng.dir.join("error.log")).unwrap_or_default());
        }
        s
    }

    fn kill9(&mut self, i: usize) {
        let mut c = self.nodes[i].child.take().expect("node not running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Starts a stopped node again on its address.
    fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node still running");
        let rx = self.spawn_node(i);
        if let Err(e) = self.await_ready(i, rx) {
            panic!("restart of n{} failed: {e}", i + 1);
        }
    }

    fn client_with(&self, addr: SocketAddr, f: impl FnOnce(&mut ClientOptions)) -> Client {
        let mut o = ClientOptions::default();
        f(&mut o);
        Client::connect_with(addr, o)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}; logs:\n{}", self.logs()))
    }

    fn client(&self, addr: SocketAddr) -> Client {
        self.client_with(addr, |_| {})
    }

    /// Registers a fresh user through `addr` and logs in there.
    fn user(&self, addr: SocketAddr, prefix: &str) -> User {
        let name = uname(prefix);
        let c = self.client(addr);
        let id = c
            .register(&name, PASSWORD)
            .unwrap_or_else(|e| panic!("register {name}: {e}; logs:\n{}", self.logs()));
        let session = login_synced(&c, &name);
        assert_eq!(session.user_id, id);
        User {
            id,
            name,
            session,
            c,
        }
    }

    fn redis(&self) -> redis::Connection {
        redis::Client::open(self.redis_url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("redis connection")
    }

    /// The nodes Redis says hold `user`'s sessions.
    fn nodes_of(&self, user: UserId) -> BTreeSet<String> {
        redis::cmd("SMEMBERS")
            .arg(format!("{}:loc:{user}", self.tag))
            .query(&mut self.redis())
            .expect("SMEMBERS")
    }

    /// Waits until Redis places `user` on exactly `want` (by node name).
    fn wait_nodes_of(&self, user: UserId, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + T;
        loop {
            let got = self.nodes_of(user);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "user {user} is on {got:?} in Redis, expected {want:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Logs `name` in through nginx until its session lands on a node
    /// `want` accepts: nginx balances by open connections, so each new
    /// connection of an otherwise idle cluster goes to another node.
    fn login_via_nginx(&self, name: &str, id: UserId, want: impl Fn(&str) -> bool) -> User {
        let mut seen = Vec::new();
        for _ in 0..9 {
            let cl = self.client(self.nginx_addr());
            let session = login_synced(&cl, name);
            let on = self.nodes_of(id);
            if on.len() == 1 && on.iter().all(|n| want(n)) {
                return User {
                    id,
                    name: name.to_string(),
                    session,
                    c: cl,
                };
            }
            seen.push(on);
            cl.close();
            self.wait_nodes_of(id, &[]);
        }
        panic!("nginx never put {name} on a wanted node: {seen:?}");
    }

    /// An admin request to node `i`; the status and the JSON reply.
    fn admin_http(&self, i: usize, method: &str, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.http(i, method, path);
        (
            status,
            serde_json::from_str(body.trim()).unwrap_or_default(),
        )
    }

    /// A request to node `i`'s metrics address (with the admin token); the
    /// status and the body.
    fn http(&self, i: usize, method: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = self.nodes[i].metrics.expect("started with admin");
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP reply");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    /// The view every node has with all of them up (one shard each, as the
    /// tests that compute owners start them).
    fn view(&self) -> ringchat::cluster::NodeView {
        ringchat::cluster::NodeView {
            nodes: self
                .nodes
                .iter()
                .map(|n| (n.name.as_str().into(), 1))
                .collect(),
        }
    }

    /// Logs the registered user `name` (`id`) in on node `i`.
    fn login_at(&self, i: usize, name: String, id: UserId) -> User {
        let c = self.client(self.addr(i));
        let session = login_synced(&c, &name);
        User {
            id,
            name,
            session,
            c,
        }
    }

    fn index_of(&self, node: &str) -> usize {
        self.nodes.iter().position(|n| n.name == node).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut ng) = self.nginx.take() {
            // SIGTERM: the master stops its workers and exits.
            unsafe {
                libc::kill(ng.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while ng.child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = ng.child.kill();
                    let _ = ng.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("cluster {} logs:\n{}", self.tag, self.logs());
        }
        let db = self.tag.clone();
        let drop_db = || -> Result<(), mysql::Error> {
            use mysql::prelude::Queryable;
            let mut conn = mysql::Conn::new(mysql::Opts::from_url(MYSQL_URL)?)?;
            conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
        };
        if let Err(e) = drop_db() {
            eprintln!("cleanup: DROP DATABASE {db}: {e}");
        }
        if let Err(e) = delete_keys(&self.redis_url, &format!("{}:*", self.tag)) {
            eprintln!("cleanup: redis keys {}:*: {e}", self.tag);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn delete_keys(url: &str, pattern: &str) -> redis::RedisResult<()> {
    let mut conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    let keys: Vec<String> = conn.scan_match(pattern)?.collect::<Result<_, _>>()?;
    for chunk in keys.chunks(500) {
        redis::cmd("DEL").arg(chunk).query::<()>(&mut conn)?;
    }
    Ok(())
}

/// The nginx template with the placeholders filled in outside comments
/// (`{{NODE}}` lines repeated per node), as `tools/cluster` renders it.
/// `nodes`: (native address, `--ws-listen` address) of each node.
fn render_nginx(
    listen: SocketAddr,
    ws: SocketAddr,
    dir: &Path,
    nodes: &[(String, String)],
) -> String {
    let mut out = String::new();
    for line in NGINX_TEMPLATE.lines() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            out.push('\n');
        } else if line.contains("{{NODE}}") || line.contains("{{WS_NODE}}") {
            for (n, w) in nodes {
                out.push_str(&line.replace("{{NODE}}", n).replace("{{WS_NODE}}", w));
                out.push('\n');
            }
        } else {
            out.push_str(
                &line
                    .replace("{{LISTEN}}", &listen.to_string())
                    .replace("{{WS_LISTEN}}", &ws.to_string())
                    .replace("{{RUN_DIR}}", &dir.to_string_lossy()),
            );
            out.push('\n');
        }
    }
    out
}

// ------------------------------------------------------------------ helpers

fn wait_presence(c: &Client, who: UserId, online: bool, within: Duration) -> Duration {
    let t0 = Instant::now();
    match c.wait_for(
        within,
        |e| matches!(e, Event::Presence { user_id, online: o } if *user_id == who && *o == online),
    ) {
        Some(_) => t0.elapsed(),
        None => panic!(
            "no presence {} for user {who} within {within:?}; queued events: {:?}",
            if online { "online" } else { "offline" },
            c.drain_events()
        ),
    }
}

/// Sends like a real client: on a timeout or a server error, resends with
/// the same `client_msg_id` until `deadline`.
fn send_retrying(
    c: &Client,
    to: UserId,
    body: &str,
    deadline: Instant,
) -> (ringchat::client::Sent, u32) {
    let mid = c.next_msg_id();
    let mut tries = 0;
    loop {
        tries += 1;
        match c.send_raw(to, 0, mid, body) {
            Ok(s) => return (s, tries),
            Err(ClientError::Timeout) | Err(ClientError::Server { .. })
                if Instant::now() < deadline =>
            {
                continue;
            }
            Err(e) => panic!("send {body:?} failed after {tries} tries: {e}"),
        }
    }
}

/// The messages of `conv` already surfaced on `c` (others stay queued).
fn seqs_of(msgs: &[ChatMsg], conv: ConvId) -> Vec<Seq> {
    msgs.iter()
        .filter(|m| m.conversation == conv)
        .map(|m| m.seq)
        .collect()
}

// ------------------------------------------------------------------ tests

/// Users on different nodes (connected straight to each node) become
/// friends, chat one-to-one and in a group, and see each other come and go.
#[test]
fn two_nodes_chat_groups_presence_and_friend_requests() {
    let Some(c) = Cluster::start(
        "two_nodes_chat_groups_presence_and_friend_requests",
        2,
        2,
        false,
    ) else {
        return;
    };
    let a = c.user(c.addr(0), "a");
    let b = c.user(c.addr(1), "b");
    c.wait_nodes_of(a.id, &["n1"]);
    c.wait_nodes_of(b.id, &["n2"]);

    // Friend request across nodes, both ways of the flow (helper waits for
    // the Requested/Accepted events and both presence notices).
    befriend(&a, &b);
    let fa = a.list_friends().unwrap();
    assert!(
        fa.iter().any(|f| f.user_id == b.id && f.online),
        "a's friend list should show b online: {fa:?}"
    );

    // One-to-one, both directions.
    let s1 = a.send_direct(b.id, "hello from n1").unwrap();
    let m = wait_msg(&b.c, "a's message on n2");
    assert_eq!(
        (m.body.as_str(), m.sender, m.seq),
        ("hello from n1", a.id, s1.seq)
    );
    let s2 = b.send_direct(a.id, "hello from n2").unwrap();
    let m = wait_msg(&a.c, "b's message on n1");
    assert_eq!(
        (m.body.as_str(), m.sender, m.seq),
        ("hello from n2", b.id, s2.seq)
    );
    assert_eq!((s1.seq, s2.seq), (1, 2), "one conversation, dense seqs");

    // A second device of b on the other node gets the next message too.
    let b2 = c.client(c.addr(0));
    login_synced(&b2, &b.name);
    c.wait_nodes_of(b.id, &["n1", "n2"]);
    let s3 = a.send_direct(b.id, "to both devices").unwrap();
    // (b2's catch-up may replay seq 1-2: b's ack of them was taken on n2 and
    // is flushed to the store in the background, which n1's catch-up query
    // does not wait for. Only the live message is looked at here.)
    for (dev, what) in [(&b.c, "b on n2"), (&b2, "b on n1")] {
        let m = dev
            .wait_for(T, |e| matches!(e, Event::Message(m) if m.seq == s3.seq))
            .unwrap_or_else(|| panic!("{what}: no seq {}; logs:\n{}", s3.seq, c.logs()));
        let Event::Message(m) = m else { unreachable!() };
        assert_eq!(
            (m.conversation, m.body.as_str()),
            (s1.conversation, "to both devices"),
            "{what}"
        );
    }

    // A group spanning both nodes: creator on n1, members on n1 and n2.
    let d = c.user(c.addr(1), "d");
    let (g, gconv) = a.create_group_conv("spanning").unwrap();
    b.join_group(g).unwrap();
    d.join_group(g).unwrap();
    let members = a.group_members(g).unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    let sent = d.send_group(g, "group hello from n2").unwrap();
    assert_eq!(sent.conversation, gconv);
    for (who, cl) in [("a on n1", &a.c), ("b on n2", &b.c), ("b on n1", &b2)] {
        let m = cl
            .wait_for(
                T,
                |e| matches!(e, Event::Message(m) if m.conversation == gconv),
            )
            .unwrap_or_else(|| panic!("group message to {who}; logs:\n{}", c.logs()));
        let Event::Message(m) = m else { unreachable!() };
        assert_eq!(
            (m.seq, m.sender, m.body.as_str()),
            (sent.seq, d.id, "group hello from n2")
        );
    }
    let s = a.send_group(g, "group reply from n1").unwrap();
    let m = wait_msg(&d.c, "a's group message on n2");
    assert_eq!((m.conversation, m.seq), (gconv, s.seq));
    assert_eq!(s.seq, sent.seq + 1);

    // Presence: b goes offline only when its last device (on either node)
    // is gone, and comes back online when it logs in again.
    b2.close();
    c.wait_nodes_of(b.id, &["n2"]);
    b.c.close();
    wait_presence(&a.c, b.id, false, T);
    c.wait_nodes_of(b.id, &[]);
    let fa = a.list_friends().unwrap();
    assert!(
        fa.iter().any(|f| f.user_id == b.id && !f.online),
        "a's friend list should show b offline: {fa:?}"
    );
    // While b was offline a single "offline" was shown, not one per device.
    common::assert_quiet(
        &a.c,
        "second offline notice",
        |e| matches!(e, Event::Presence { user_id, .. } if *user_id == b.id),
    );
    let b3 = c.client(c.addr(1));
    login_synced(&b3, &b.name);
    wait_presence(&a.c, b.id, true, T);

    // A friend request to an offline user on the other node arrives at login.
    let e = c.user(c.addr(1), "e");
    e.c.close();
    a.friend_request(e.id, "hi from n1").unwrap();
    let e2 = c.client(c.addr(1));
    login_synced(&e2, &e.name);
    let fl = e2.list_friends().unwrap();
    assert!(
        fl.iter()
            .any(|f| f.user_id == a.id && f.note == "hi from n1"),
        "pending request should be listed for e: {fl:?}"
    );
    // And live between online users on different nodes.
    d.friend_request(a.id, "").unwrap();
    wait(
        &a.c,
        "friend request from n2",
        |ev| matches!(ev, Event::Friend { kind: FriendEventKind::Requested, user_id, .. } if *user_id == d.id),
    );

    // Unfriending across nodes: b (now on n2 as b3) is told, messages are
    // refused both ways, and a no longer follows b's presence.
    a.friend_remove(b.id).unwrap();
    wait(
        &b3,
        "Removed on n2",
        |ev| matches!(ev, Event::Friend { kind: FriendEventKind::Removed, user_id, .. } if *user_id == a.id),
    );
    common::assert_code(
        a.send_direct(b.id, "hi"),
        ringchat::client::ErrorCode::NotFriends,
    );
    common::assert_code(
        b3.send_direct(a.id, "hi"),
        ringchat::client::ErrorCode::NotFriends,
    );
    b3.close();
    c.wait_nodes_of(b.id, &[]);
    common::assert_quiet(
        &a.c,
        "presence of a former friend",
        |e| matches!(e, Event::Presence { user_id, .. } if *user_id == b.id),
    );
}

/// Three nodes behind nginx. The receiver's node is killed with SIGKILL;
/// what is sent to the receiver meanwhile reaches it when it resumes
/// (through nginx, so on a surviving node): all of it, each message once,
/// with dense seqs.
#[test]
fn three_nodes_behind_nginx_kill9_then_resume_loses_nothing() {
    let Some(mut c) = Cluster::start(
        "three_nodes_behind_nginx_kill9_then_resume_loses_nothing",
        3,
        1,
        true,
    ) else {
        return;
    };
    let lb = c.nginx_addr();
    let (r_name, s_name) = (uname("r"), uname("s"));
    let reg = c.client(lb);
    let r_id = reg.register(&r_name, PASSWORD).unwrap();
    let s_id = reg.register(&s_name, PASSWORD).unwrap();
    drop(reg);
    // The hardest case: the node that dies holds the receiver's session
    // *and* owns (sequences) their conversation, so sends in flight to it
    // are lost and must be retried, and the conversation moves.
    let conv = ringchat::model::direct_conv(r_id, s_id);
    let view = c.view();
    let victim = view.owner(conv).unwrap().0.to_string();
    let r = c.login_via_nginx(&r_name, r_id, |n| n == victim);
    let s = c.login_via_nginx(&s_name, s_id, |n| n != victim);
    befriend(&s, &r);

    let first = s.send_direct(r.id, "before the crash").unwrap();
    let m = wait_msg(&r.c, "message before the crash");
    assert_eq!(m.seq, first.seq);
    assert_eq!(first.conversation, conv);
    let held = r.c.seen();

    c.kill9(c.index_of(&victim));
    common::wait_closed(&r.c);

    // While r is down, send a batch. Requests routed to the dead node
    // (until its liveness key expires) time out; the sender resends with
    // the same client_msg_id, as PROTOCOL.md prescribes.
    let mut s_c = s.c;
    s_c.set_timeout(Duration::from_secs(2));
    const N: usize = 10;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = Vec::new();
    let t0 = Instant::now();
    let mut tries = 0;
    for i in 0..N {
        let (ok, n) = send_retrying(&s_c, r.id, &format!("while down {i}"), deadline);
        assert_eq!(ok.conversation, conv);
        sent.push(ok.seq);
        tries += n;
    }
    eprintln!(
        "{N} sends took {tries} tries and {:?} after the owner died",
        t0.elapsed()
    );
    let want: Vec<Seq> = (first.seq + 1..=first.seq + N as u64).collect();
    assert_eq!(sent, want, "SendOk seqs must be dense and unique");

    // r comes back through nginx with its token and what it held.
    let r2 = c.client_with(lb, |o| o.dedup = false);
    let since: Vec<(ConvId, Seq)> = held.into_iter().collect();
    r2.resume_since(&r.session.token, &since)
        .unwrap_or_else(|e| panic!("resume: {e}; logs:\n{}", c.logs()));
    // (The dead node may still be listed until the key's TTL: it never got
    // to remove itself. Senders skip nodes that are not live.)
    let on = c.nodes_of(r.id);
    assert!(
        on.iter().any(|n| *n != victim),
        "resumed session should be on a surviving node, Redis says {on:?}"
    );
    let got = r2.wait_messages(N, T, |m| m.conversation == conv);
    let got_seqs = seqs_of(&got, conv);
    assert_eq!(
        got_seqs,
        want,
        "after resume r must get every message sent while down, once, in order; logs:\n{}",
        c.logs()
    );
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.body, format!("while down {i}"));
        assert_eq!(m.sender, s_id);
    }
    // Nothing twice: no further copy arrives (dedup is off on r2).
    common::assert_quiet(
        &r2,
        "duplicate delivery",
        |e| matches!(e, Event::Message(m) if m.conversation == conv),
    );

    // s saw r go offline with the crash (at the latest when the dead node's
    // key expired) and online again after the resume elsewhere — and r
    // stays online once the dead node is gone for good.
    wait_presence(&s_c, r.id, false, T);
    wait_presence(&s_c, r.id, true, T);
    let fl = s_c.list_friends().unwrap();
    assert!(
        fl.iter().any(|f| f.user_id == r.id && f.online),
        "r resumed on a live node, so s should list r online: {fl:?}"
    );

    // The conversation keeps working live across the surviving nodes.
    let after = s_c.send_direct(r.id, "after the resume").unwrap();
    assert_eq!(after.seq, first.seq + N as u64 + 1);
    let m = wait_msg(&r2, "live message after the resume");
    assert_eq!(m.seq, after.seq);
    let hist = r2.history(conv, 0, 100).unwrap();
    let hs: Vec<Seq> = hist.iter().map(|m| m.seq).collect();
    assert_eq!(
        hs,
        (1..=after.seq).collect::<Vec<_>>(),
        "stored history is dense"
    );

    // The dead node comes back: it owns the conversation again (rendezvous)
    // and must carry on from the stored seqs, not from its old memory.
    let v = c.index_of(&victim);
    c.restart(v);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (back, _) = send_retrying(&s_c, r.id, "after the rejoin", deadline);
    assert_eq!(
        back.seq,
        after.seq + 1,
        "seqs stay dense when the owner returns"
    );
    let m = wait_msg(&r2, "message after the node rejoined");
    assert_eq!((m.seq, m.body.as_str()), (back.seq, "after the rejoin"));
    common::assert_quiet(&r2, "duplicate delivery after the rejoin", |e| {
        matches!(e, Event::Message(_))
    });
}

/// A crashed node's users turn offline for their friends on other nodes
/// within the liveness TTL, and online again when they come back.
#[test]
fn crashed_node_turns_its_users_offline_within_ttl() {
    let Some(mut c) = Cluster::start(
        "crashed_node_turns_its_users_offline_within_ttl",
        2,
        1,
        false,
    ) else {
        return;
    };
    let a = c.user(c.addr(0), "a");
    let b = c.user(c.addr(1), "b");
    befriend(&a, &b);
    c.kill9(1);
    let took = wait_presence(&a.c, b.id, false, CRASH_NOTICED);
    eprintln!("offline noticed after {took:?}");
    let fl = a.list_friends().unwrap();
    assert!(
        fl.iter().any(|f| f.user_id == b.id && !f.online),
        "b should be listed offline: {fl:?}"
    );
    // Not flapping back: no "online" for b while its node is down.
    common::assert_quiet(
        &a.c,
        "b online while its node is dead",
        |e| matches!(e, Event::Presence { user_id, online: true } if *user_id == b.id),
    );
    c.restart(1);
    let b2 = c.client(c.addr(1));
    b2.resume(&b.session.token).unwrap();
    wait(&b2, "SyncDone after resume", |e| {
        matches!(e, Event::SyncDone { .. })
    });
    wait_presence(&a.c, b.id, true, T);
    let s = a.send_direct(b.id, "welcome back").unwrap();
    let m = wait_msg(&b2, "message after the node restarted");
    assert_eq!(m.seq, s.seq);
}

/// Logout, logout-all and a password change on one node end the user's
/// sessions on the other node too (the bus's `EndSessions`), and a
/// message published after them still arrives (they travel alone, never in
/// a batch an older node would drop).
#[test]
fn sessions_end_on_every_node() {
    let Some(c) = Cluster::start("sessions_end_on_every_node", 2, 1, false) else {
        return;
    };
    let ended = |cl: &Client, what: &str| {
        wait(cl, what, |e| {
            matches!(
                e,
                Event::Goodbye {
                    code: ringchat::wire::fb::ErrorCode::BadToken,
                    ..
                }
            )
        });
        wait(cl, what, |e| matches!(e, Event::Closed));
    };
    let a = c.user(c.addr(0), "se");
    let friend = c.user(c.addr(1), "sf");
    befriend(&a, &friend);
    // Logout: the same token resumed on the other node is closed there.
    let same = c.client(c.addr(1));
    same.resume(&a.session.token).unwrap();
    let other_token = c.client(c.addr(1));
    login_synced(&other_token, &a.name);
    a.logout().unwrap();
    ended(&same, "Goodbye on n2 after logout on n1");
    other_token.ping().unwrap();
    // Password change on n2 ends the session on n1, keeps the caller's.
    let on1 = c.client(c.addr(0));
    login_synced(&on1, &a.name);
    other_token
        .change_password(PASSWORD, "another password")
        .unwrap();
    ended(&on1, "Goodbye on n1 after a password change on n2");
    other_token.ping().unwrap();
    // Logout everywhere from n1 ends n2's.
    let on1 = c.client(c.addr(0));
    on1.login(&a.name, "another password").unwrap();
    on1.logout_all().unwrap();
    ended(&other_token, "Goodbye on n2 after logout-all on n1");
    // The bus still delivers to the user's friend afterwards.
    let back = c.client(c.addr(0));
    back.login(&a.name, "another password").unwrap();
    let s = back.send_direct(friend.id, "still here").unwrap();
    let m = wait_msg(&friend.c, "message after the sessions ended");
    assert_eq!(m.seq, s.seq);
}

/// Conversation state across nodes: a typing notification and a read
/// receipt reach a user on the other node (owner ops and pushes over the
/// bus), and the conversation list there counts what was read.
#[test]
fn read_receipts_and_typing_cross_nodes() {
    let Some(c) = Cluster::start("read_receipts_and_typing_cross_nodes", 2, 1, false) else {
        return;
    };
    let a = c.user(c.addr(0), "rta");
    let b = c.user(c.addr(1), "rtb");
    befriend(&a, &b);
    let conv = ringchat::model::direct_conv(a.id, b.id);
    b.set_auto_ack(false);
    let (sent, _) = send_retrying(&a.c, b.id, "read me", Instant::now() + T);
    wait_msg(&b.c, "the message on n2");
    b.ack(&[(conv, sent.seq)]).unwrap();
    wait(&a.c, "ReadUpTo from n2", |e| {
        matches!(e, Event::ReadUpTo { conversation, reader, seq }
            if *conversation == conv && *reader == b.id && *seq == sent.seq)
    });
    b.typing(conv, false).unwrap();
    wait(&a.c, "typing from n2", |e| {
        matches!(e, Event::Typing { conversation, user_id, stopped: false, .. }
            if *conversation == conv && *user_id == b.id)
    });
    let list = b.list_conversations().unwrap();
    let i = list.iter().find(|i| i.conversation == conv).unwrap();
    assert_eq!((i.read_seq, i.unread, i.peer), (sent.seq, 0, a.id));
}

/// A node that crashes and is restarted under the same name before its
/// liveness key expires (a supervisor restarting it at once): the users it
/// held are gone, so their friends must see them offline — not online
/// forever because the node never looked dead to the others.
#[test]
fn node_restarted_within_ttl_does_not_leave_its_users_online() {
    let Some(mut c) = Cluster::start(
        "node_restarted_within_ttl_does_not_leave_its_users_online",
        2,
        1,
        false,
    ) else {
        return;
    };
    let a = c.user(c.addr(0), "a");
    let b = c.user(c.addr(1), "b");
    befriend(&a, &b);
    let t0 = Instant::now();
    c.kill9(1);
    c.restart(1);
    eprintln!("n2 back after {:?}", t0.elapsed());
    wait_presence(&a.c, b.id, false, CRASH_NOTICED);
    let fl = a.list_friends().unwrap();
    assert!(
        fl.iter().any(|f| f.user_id == b.id && !f.online),
        "b has no session anywhere and should be listed offline: {fl:?}"
    );
}

/// Redis (a private redis-server, not the shared one) restarts with no
/// persistence: the nodes reconnect, re-register, and keep delivering; a
/// live session is caught up in place, not closed.
#[test]
fn redis_restart_nodes_reconnect_and_keep_delivering() {
    let test = "redis_restart_nodes_reconnect_and_keep_delivering";
    if !services_ready(test, false) || !redis_binary(test) {
        return;
    }
    let mut redis = PrivateRedis::start();
    // Declared before the cluster so it outlives it: the cluster's cleanup
    // deletes its keys there.
    let kept_redis: Option<PrivateRedis>;
    let Some(c) = Cluster::start_on(test, 2, 1, false, redis.url()) else {
        return;
    };
    // a sits on the node owning the conversation: its sends are stored
    // during the outage, and only the bus can't carry them to b.
    let (an, bn) = (uname("a"), uname("b"));
    let reg = c.client(c.addr(0));
    let (a_id, b_id) = (
        reg.register(&an, PASSWORD).unwrap(),
        reg.register(&bn, PASSWORD).unwrap(),
    );
    drop(reg);
    let view = c.view();
    let a_at = c.index_of(
        &view
            .owner(ringchat::model::direct_conv(a_id, b_id))
            .unwrap()
            .0,
    );
    let b_at = 1 - a_at;
    let login = |name: &str, id: UserId, at: usize, dedup: bool| {
        let cl = c.client_with(c.addr(at), |o| {
            o.timeout = Duration::from_secs(2);
            o.dedup = dedup;
        });
        let session = login_synced(&cl, name);
        User {
            id,
            name: name.to_string(),
            session,
            c: cl,
        }
    };
    let a = login(&an, a_id, a_at, true);
    // b shows every delivery raw: a duplicate is seen, not hidden.
    let b = login(&bn, b_id, b_at, false);
    befriend(&a, &b);
    let s = a.send_direct(b.id, "before").unwrap();
    assert_eq!(wait_msg(&b.c, "before the restart").seq, s.seq);

    // Redis goes away for a while; a keeps sending to b meanwhile, like a
    // real client: resend with the same client_msg_id on a timeout, resume
    // and resend when the server closes the session.
    redis.kill9();
    let t_out = Instant::now();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2)); // the outage
        redis.spawn();
        redis
    });
    const K: u64 = 4;
    let mut a_cur: Option<Client> = None; // replaces a.c after a reconnect
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut during = Vec::new();
    for i in 0..K {
        let body = format!("during {i}");
        let mid = a.next_msg_id();
        loop {
            let cl = a_cur.as_ref().unwrap_or(&a.c);
            match cl.send_raw(b.id, 0, mid, &body) {
                Ok(sent) => {
                    during.push(sent.seq);
                    break;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "send {body:?} still failing: {e}; logs:\n{}",
                        c.logs()
                    );
                    if cl.is_closed() {
                        common::wait_closed(cl);
                        let n = c.client_with(c.addr(a_at), |o| o.timeout = Duration::from_secs(2));
                        let since: Vec<(ConvId, Seq)> = cl.seen().into_iter().collect();
                        match n.resume_since(&a.session.token, &since) {
                            Ok(_) => a_cur = Some(n),
                            Err(e) => eprintln!("resume of a failed (retrying): {e}"),
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{K} sends around the outage done after {:?}; a had to resume: {}",
        t_out.elapsed(),
        a_cur.is_some()
    );
    kept_redis = Some(restarter.join().unwrap());
    assert!(kept_redis.is_some());
    assert_eq!(
        during,
        (s.seq + 1..=s.seq + K).collect::<Vec<_>>(),
        "seqs of the messages sent around the outage"
    );

    // The nodes re-subscribe and catch their live sessions up from the
    // store in place (what was published while they were away is lost to
    // the bus, not to the store): b gets everything sent around the outage,
    // once each and in order, on the connection it never lost.
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    while got.len() < during.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match b.c.wait_for(left, |e| {
            matches!(e, Event::Message(m) if m.conversation == s.conversation)
                || matches!(e, Event::Goodbye { .. })
        }) {
            Some(Event::Message(m)) => got.push(m.seq),
            Some(e) => panic!(
                "b's session was closed after the Redis restart ({e:?}); it should be \
                 caught up in place; logs:\n{}",
                c.logs()
            ),
            None => panic!(
                "b got {got:?} of {during:?} after the Redis restart; logs:\n{}",
                c.logs()
            ),
        }
    }
    assert_eq!(got, during, "b's deliveries around the outage, in order");
    common::assert_quiet(&b.c, "duplicate delivery after the outage", |e| {
        matches!(e, Event::Message(_))
    });
    assert!(
        !b.c.is_closed(),
        "b's session must survive the Redis restart"
    );
    let a2 = a_cur.as_ref().unwrap_or(&a.c);
    let b2 = &b.c;
    // Both nodes are back in Redis.
    let deadline = Instant::now() + T;
    loop {
        let live: Option<String> = redis::cmd("GET")
            .arg(format!("{}:node:n2", c.tag))
            .query(&mut c.redis())
            .unwrap();
        let live1: Option<String> = redis::cmd("GET")
            .arg(format!("{}:node:n1", c.tag))
            .query(&mut c.redis())
            .unwrap();
        if live.is_some() && live1.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not re-register; logs:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..5 {
        let (ok, _) = send_retrying(a2, b.id, &format!("after {i}"), deadline);
        assert_eq!(ok.seq, s.seq + K + 1 + i, "dense seqs after the restart");
        let m = b2
            .wait_for(T, |e| matches!(e, Event::Message(m) if m.seq == ok.seq))
            .unwrap_or_else(|| {
                panic!(
                    "message {i} not delivered after the Redis restart; queued {:?}; logs:\n{}",
                    b2.drain_events(),
                    c.logs()
                )
            });
        let Event::Message(m) = m else { unreachable!() };
        assert_eq!(m.body, format!("after {i}"));
    }
    // Presence works again across nodes.
    b2.close();
    wait_presence(a2, b.id, false, T);
}

/// A node stopped gracefully (SIGTERM) leaves the registry at once, so the
/// conversations it owned move to a live node by the others' next view
/// refresh (every second). A send routed to it before that may time out;
/// resent with the same `client_msg_id` it succeeds, nothing is lost or
/// stored twice.
#[test]
fn graceful_stop_moves_owned_conversations_within_a_view_refresh() {
    graceful_stop_of_owner(
        "graceful_stop_moves_owned_conversations_within_a_view_refresh",
        Some(Duration::from_millis(1500)),
    );
}

/// Stricter: no send times out at all while the owner stops gracefully:
/// the stopping node leaves the registry, then keeps serving bus traffic
/// for one view-refresh period before it exits.
#[test]
fn graceful_stop_of_owner_node_does_not_stall_sends() {
    graceful_stop_of_owner("graceful_stop_of_owner_node_does_not_stall_sends", None);
}

/// Both users on the node that stays, their conversation owned by the node
/// that stops; a sends every 100 ms across the stop. Sends that fail must
/// have started within `window` of the SIGTERM (none at all if `None`).
fn graceful_stop_of_owner(test: &str, window: Option<Duration>) {
    let Some(mut c) = Cluster::start(test, 2, 1, false) else {
        return;
    };
    let (an, bn) = (uname("a"), uname("b"));
    let reg = c.client(c.addr(0));
    let a_id = reg.register(&an, PASSWORD).unwrap();
    let b_id = reg.register(&bn, PASSWORD).unwrap();
    drop(reg);
    // Both users on the node that stays; their conversation owned by the
    // node that stops.
    let conv = ringchat::model::direct_conv(a_id, b_id);
    let view = c.view();
    let owner = c.index_of(&view.owner(conv).unwrap().0);
    let stay = 1 - owner;
    let a = c.client(c.addr(stay));
    login_synced(&a, &an);
    let b = c.client(c.addr(stay));
    login_synced(&b, &bn);
    a.friend_request(b_id, "").unwrap();
    b.friend_respond(a_id, true).unwrap();
    a.send_direct(b_id, "before").unwrap();

    let pid = c.nodes[owner].child.as_ref().unwrap().id();
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let mut a = a;
    a.set_timeout(Duration::from_secs(2));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(20);
    let mut failures = Vec::new();
    let mut seqs = Vec::new();
    while t0.elapsed() < Duration::from_secs(5) {
        let started = t0.elapsed();
        let (sent, tries) = send_retrying(&a, b_id, "during the stop", deadline);
        if tries > 1 {
            failures.push(started);
        }
        seqs.push(sent.seq);
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = c.nodes[owner].child.as_mut().unwrap().wait().unwrap();
    c.nodes[owner].child = None;
    assert!(st.success(), "node exited with {st} on SIGTERM");
    assert_eq!(
        seqs,
        (2..2 + seqs.len() as u64).collect::<Vec<_>>(),
        "every send stored once, seqs dense"
    );
    let limit = window.unwrap_or(Duration::ZERO);
    let late: Vec<_> = failures.iter().filter(|t| **t >= limit).collect();
    assert!(
        late.is_empty(),
        "sends started at {late:?} after SIGTERM had to be resent (allowed only \
         within {limit:?}; all resent: {failures:?}); logs:\n{}",
        c.logs()
    );
}

/// Skips (or, under RINGCHAT_REQUIRE_REDIS=1, fails) a test that needs a
/// private redis-server binary.
fn redis_binary(test: &str) -> bool {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    if required("RINGCHAT_REQUIRE_REDIS") {
        panic!("{test}: redis-server binary not available and RINGCHAT_REQUIRE_REDIS=1");
    }
    skipped(&format!(
        "Redis not available (no redis-server binary to run a private one) [{test}]"
    ));
    false
}

/// A cluster key file of the test's own.
fn key_file(tag: &str, secret: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "ringchat-ct-key-{}-{tag}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    p
}

/// The bus over TLS (`rediss://`, a Redis with no plaintext port) with
/// signed payloads: two nodes still carry chat, friend events and presence.
#[test]
fn rediss_bus_with_signed_payloads_carries_chat_between_nodes() {
    let test = "rediss_bus_with_signed_payloads_carries_chat_between_nodes";
    if !services_ready(test, false) || !redis_binary(test) {
        return;
    }
    let (redis, ca) = PrivateRedis::start_tls();
    let key = key_file("tls", "a shared secret for this test only");
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let extra = vec![
        "--redis-ca".to_string(),
        ca.display().to_string(),
        "--cluster-key-file".to_string(),
        key.display().to_string(),
    ];
    let opts = NodeOpts {
        extra,
        ..NodeOpts::default()
    };
    let Some(c) = Cluster::start_with(test, 2, 1, false, url, opts) else {
        return;
    };
    let a = c.user(c.addr(0), "ta");
    let b = c.user(c.addr(1), "tb");
    befriend(&a, &b);
    let s = a.send_direct(b.id, "over tls").unwrap();
    let m = wait_msg(&b.c, "a's message over the TLS bus");
    assert_eq!(
        (m.conversation, m.seq, m.body.as_str()),
        (s.conversation, s.seq, "over tls")
    );
    let s2 = b.send_direct(a.id, "and back").unwrap();
    let m = wait_msg(&a.c, "b's message over the TLS bus");
    assert_eq!((m.seq, m.body.as_str()), (s2.seq, "and back"));
    b.c.close();
    wait_presence(&a.c, b.id, false, CRASH_NOTICED);
    let logs = c.logs();
    assert!(
        !logs.contains("bus message dropped"),
        "a signed bus dropped its own messages:\n{logs}"
    );
    drop(c);
    drop(redis);
    let _ = std::fs::remove_file(ca);
    let _ = std::fs::remove_file(key);
}

/// Someone who can publish on the Redis injects a bus payload that pushes
/// a frame to a user on another node. Without a cluster key that works (the
/// hole this closes); with one, unsigned and wrongly signed payloads are
/// dropped and only one sealed with the cluster's key gets through.
#[test]
fn forged_bus_payloads_are_dropped_when_the_cluster_has_a_key() {
    let test = "forged_bus_payloads_are_dropped_when_the_cluster_has_a_key";
    if !services_ready(test, false) {
        return;
    }
    let secret = "the cluster's own secret, 16+ bytes";
    let key = key_file("forge", secret);
    let extra = vec!["--cluster-key-file".to_string(), key.display().to_string()];
    let redis = format!("redis://{REDIS_ADDR}");
    let opts = NodeOpts {
        extra,
        ..NodeOpts::default()
    };
    let Some(c) = Cluster::start_with(test, 2, 1, false, redis, opts) else {
        return;
    };
    let b = c.user(c.addr(1), "fb");
    // A Presence push about a user id nobody has: nothing else sends it.
    let fake_user: UserId = 4_000_000_000 + u64::from(std::process::id());
    let frame = ringchat::wire::enc::Enc::new()
        .presence(fake_user, true)
        .to_vec();
    let msg = vec![ringchat::cluster::NodeMsg::Push {
        users: vec![b.id],
        frame,
        msg: None,
        skip_node: String::new(),
        skip_conn: 0,
    }];
    let body = ringchat::cluster::encode(&msg);
    let channel = format!("{}:ch:n2:0", c.tag);
    let publish = |payload: Vec<u8>| {
        let n: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query(&mut c.redis())
            .unwrap();
        assert_eq!(n, 1, "node n2 is not subscribed to {channel}");
    };
    let got_fake = |within: Duration| {
        b.c.wait_for(
            within,
            |e| matches!(e, Event::Presence { user_id, .. } if *user_id == fake_user),
        )
        .is_some()
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    publish(body.clone());
    assert!(
        !got_fake(Duration::from_secs(1)),
        "an unsigned payload was delivered"
    );
    let wrong = ringchat::cluster::BusKey::new(b"somebody else's key!").unwrap();
    publish(wrong.seal(&channel, now(), &body));
    assert!(
        !got_fake(Duration::from_secs(1)),
        "a forged payload was delivered"
    );
    let right = ringchat::cluster::BusKey::new(secret.as_bytes()).unwrap();
    publish(right.seal(&format!("{}:ch:n1:0", c.tag), now(), &body));
    assert!(
        !got_fake(Duration::from_secs(1)),
        "a payload signed for another channel was delivered"
    );
    publish(right.seal(&channel, now() - 120_000, &body));
    assert!(
        !got_fake(Duration::from_secs(1)),
        "a stale payload was delivered"
    );
    // The same payload sealed with the cluster's key is delivered: the
    // drops above are the signature check, not a broken injection.
    publish(right.seal(&channel, now(), &body));
    assert!(got_fake(T), "a correctly signed payload was not delivered");
    let logs = c.logs();
    assert!(
        logs.contains("bus message dropped"),
        "no drop logged:\n{logs}"
    );
    drop(c);
    let _ = std::fs::remove_file(key);
}

/// Without a key the bus trusts whoever publishes: the injection above
/// works. This pins the threat model documented in docs/SECURITY.md.
#[test]
fn without_a_cluster_key_the_bus_trusts_any_publisher() {
    let test = "without_a_cluster_key_the_bus_trusts_any_publisher";
    let Some(c) = Cluster::start(test, 2, 1, false) else {
        return;
    };
    let b = c.user(c.addr(1), "nb");
    let fake_user: UserId = 4_100_000_000 + u64::from(std::process::id());
    let frame = ringchat::wire::enc::Enc::new()
        .presence(fake_user, true)
        .to_vec();
    let body = ringchat::cluster::encode(&vec![ringchat::cluster::NodeMsg::Push {
        users: vec![b.id],
        frame,
        msg: None,
        skip_node: String::new(),
        skip_conn: 0,
    }]);
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}:ch:n2:0", c.tag))
        .arg(body)
        .query(&mut c.redis())
        .unwrap();
    assert!(
        b.c.wait_for(
            T,
            |e| matches!(e, Event::Presence { user_id, .. } if *user_id == fake_user)
        )
        .is_some(),
        "an unsigned payload was not delivered on a cluster without a key"
    );
}

/// A certificate and key for 127.0.0.1 made by `openssl` (self-signed,
/// CA:FALSE, so it can be its own trust anchor), in `dir`.
fn openssl_self_signed(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .ok()?;
    out.status.success().then_some((cert, key))
}

/// A blocking TLS connection speaking raw ringchat frames, trusting only
/// `cert`: what a TLS client of the protocol does, without the client
/// library (which speaks plain TCP).
struct TlsFrames {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    enc: ringchat::wire::Enc,
    buf: Vec<u8>,
}

impl TlsFrames {
    fn connect(addr: SocketAddr, cert: &Path) -> TlsFrames {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_file(cert).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(T)).unwrap();
        TlsFrames {
            s: rustls::StreamOwned::new(conn, tcp),
            enc: ringchat::wire::Enc::new(),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, f: impl FnOnce(&mut ringchat::wire::Enc) -> &[u8]) {
        use std::io::Write;
        let frame = f(&mut self.enc).to_vec();
        self.s.write_all(&frame).unwrap();
        self.s.flush().unwrap();
    }

    /// The next frame's body type, and the frame (length prefix included).
    fn next(&mut self) -> (ringchat::wire::fb::Body, Vec<u8>) {
        use std::io::Read;
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).expect("frame over TLS");
        let n = u32::from_le_bytes(len) as usize;
        self.buf.clear();
        self.buf.extend_from_slice(&len);
        self.buf.resize(4 + n, 0);
        self.s.read_exact(&mut self.buf[4..]).unwrap();
        let env = ringchat::wire::decode(&self.buf).expect("valid frame");
        (env.body_type(), self.buf.clone())
    }

    /// Reads until a frame of type `want`, skipping pushes of other kinds.
    fn until(&mut self, want: ringchat::wire::fb::Body) -> Vec<u8> {
        for _ in 0..100 {
            let (b, f) = self.next();
            if b == want {
                return f;
            }
            assert_ne!(
                b,
                ringchat::wire::fb::Body::ErrorReply,
                "error reply while waiting for {want:?}"
            );
        }
        panic!("no {want:?} in 100 frames");
    }
}

/// nginx terminates TLS (nginx/ringchat-tls.conf, loaded by a reload) in
/// front of the nodes: a TLS client registers, logs in, becomes friends
/// with a plain-TCP user on another node and chats both ways.
#[test]
fn websocket_through_nginx_reaches_the_cluster() {
    let test = "websocket_through_nginx_reaches_the_cluster";
    let Some(c) = Cluster::start(test, 2, 1, true) else {
        return;
    };
    let lb = c.nginx.as_ref().unwrap().ws;
    // The web client's page, through the proxy.
    let page = common::http(lb, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        page.starts_with("HTTP/1.1 200 OK\r\n") && page.contains("<html"),
        "{page}"
    );
    // A browser page served through nginx upgrades with its own origin:
    // nginx passes Host on, so the node's same-origin check holds.
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let upgrade = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {lb}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        )
    };
    let mut s = TcpStream::connect(lb).unwrap();
    {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(upgrade(&format!("http://{lb}")).as_bytes())
            .unwrap();
        let mut head = [0u8; 512];
        let n = s.read(&mut head).unwrap();
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    }
    let evil = common::http(lb, &upgrade("https://evil.example"));
    assert!(evil.starts_with("HTTP/1.1 403 "), "{evil}");
    // WebSocket users through nginx chat with a TCP user on a node directly,
    // whichever node nginx picked for them.
    let t = c.user(c.addr(1), "wt");
    for n in 0..2 {
        let w = c.client_with(lb, |o| o.websocket = true);
        let name = uname(&format!("wn{n}"));
        let id = w.register(&name, PASSWORD).unwrap();
        let session = login_synced(&w, &name);
        let w = User {
            id,
            name,
            session,
            c: w,
        };
        befriend(&w, &t);
        w.send_direct(t.id, &format!("from ws {n}")).unwrap();
        assert_eq!(
            wait_msg(&t, "ws message via nginx").body,
            format!("from ws {n}")
        );
        t.send_direct(w.id, &format!("to ws {n}")).unwrap();
        assert_eq!(
            wait_msg(&w, "tcp message via nginx").body,
            format!("to ws {n}")
        );
    }
}

#[test]
fn tls_through_nginx_reaches_the_cluster() {
    use ringchat::wire::fb::Body;
    let test = "tls_through_nginx_reaches_the_cluster";
    let Some(c) = Cluster::start(test, 2, 1, true) else {
        return;
    };
    let ng = c.nginx.as_ref().unwrap();
    let Some((cert, key)) = openssl_self_signed(&ng.dir) else {
        if required("RINGCHAT_REQUIRE_NGINX") {
            panic!("{test}: openssl could not make a certificate");
        }
        skipped(&format!("openssl not available [{test}]"));
        return;
    };
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let conf = include_str!("../nginx/ringchat-tls.conf")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| {
            l.replace("{{TLS_LISTEN}}", &tls_addr.to_string())
                .replace("{{TLS_CERT}}", &cert.to_string_lossy())
                .replace("{{TLS_KEY}}", &key.to_string_lossy())
                + "\n"
        })
        .collect::<String>();
    std::fs::write(ng.dir.join("ringchat-tls.conf"), conf).unwrap();
    // SIGHUP: nginx re-reads its configuration, which now includes the file.
    unsafe {
        libc::kill(ng.child.id() as libc::pid_t, libc::SIGHUP);
    }
    let deadline = Instant::now() + T;
    while port_open(&tls_addr.to_string()).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not open the TLS listener: {}",
            std::fs::read_to_string(ng.dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let plain = c.user(c.addr(1), "pl");
    let name = uname("tl");
    let mut t = TlsFrames::connect(tls_addr, &cert);
    t.send(|e| e.hello(1, "tls-test"));
    t.until(Body::HelloOk);
    t.send(|e| e.register(2, &name, PASSWORD));
    let f = t.until(Body::RegisterOk);
    let my_id = ringchat::wire::decode(&f)
        .unwrap()
        .body_as_register_ok()
        .unwrap()
        .user_id();
    t.send(|e| e.login(3, &name, PASSWORD));
    t.until(Body::LoginOk);
    t.until(Body::SyncDone);

    plain.friend_request(my_id, "over tls?").unwrap();
    t.until(Body::FriendEvent);
    t.send(|e| e.friend_respond(4, plain.id, true));
    t.until(Body::OkReply);
    let s = plain.send_direct(my_id, "to the TLS user").unwrap();
    let f = t.until(Body::Messages);
    let env = ringchat::wire::decode(&f).unwrap();
    let msgs = env.body_as_messages().unwrap().messages().unwrap();
    let m = msgs.get(0);
    assert_eq!(
        (m.conversation(), m.seq(), m.body()),
        (s.conversation, s.seq, Some("to the TLS user"))
    );
    t.send(|e| e.send_message(5, plain.id, 0, 77, "from behind TLS"));
    t.until(Body::SendOk);
    let back = wait(
        &plain.c,
        "message from the TLS user",
        |e| matches!(e, Event::Message(m) if m.body == "from behind TLS"),
    );
    assert!(matches!(back, Event::Message(m) if m.sender == my_id));
}

/// A TCP proxy in front of MariaDB that the test can cut: an outage of the
/// store without stopping the MariaDB that everything else on the machine
/// uses. Cut = every proxied connection is shut down and new ones are
/// closed as soon as they are accepted (what a client of a stopped server
/// sees: the connection fails at once).
struct StoreProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// A partition: connections stay open, every byte vanishes.
    swallow: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl StoreProxy {
    fn start() -> StoreProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let swallow = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (cut2, live2, swallow2) = (cut.clone(), live.clone(), swallow.clone());
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(mut client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                if swallow2.load(Ordering::SeqCst) {
                    // Accepted, never answered (a SYN reaching a host whose
                    // replies are lost looks the same to the client).
                    live2.lock().unwrap().push(client.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut client, &mut std::io::sink());
                    });
                    continue;
                }
                let Ok(server) = TcpStream::connect(MYSQL_ADDR) else {
                    continue;
                };
                {
                    let mut v = live2.lock().unwrap();
                    v.push(client.try_clone().unwrap());
                    v.push(server.try_clone().unwrap());
                }
                let pump = |mut from: TcpStream, mut to: TcpStream| {
                    let swallow = swallow2.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read as _, Write as _};
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if swallow.load(Ordering::SeqCst) {
                                continue;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                };
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        StoreProxy {
            port,
            cut,
            swallow,
            live,
        }
    }

    /// The store URL prefix for the nodes. `prefer_socket=false`: the
    /// mysql crate would otherwise switch a 127.0.0.1 connection to the
    /// server's Unix socket, around the proxy.
    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Packets vanish: nothing is refused or closed, nothing is answered.
    fn partition(&self) {
        self.swallow.store(true, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        if self.swallow.swap(false, Ordering::SeqCst) {
            // The connections that lost bytes are out of step with the
            // server: end them, as a healed partition's TCP timeouts would.
            for s in self.live.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// MySQL goes away under a running cluster and comes back: connections
/// stay up, sends are answered at once with the retryable `Internal` (not
/// silence), presence keeps working, and the same send (same
/// `client_msg_id`) succeeds within seconds of the store's return and is
/// delivered exactly once.
#[test]
fn mysql_outage_answers_sends_retryably_and_recovers() {
    store_outage("mysql_outage_answers_sends_retryably_and_recovers");
}

fn store_outage(test: &str) {
    if !services_ready(test, false) {
        return;
    }
    let proxy = StoreProxy::start();
    let redis = format!("redis://{REDIS_ADDR}");
    let opts = NodeOpts {
        mysql_url: Some(proxy.url()),
        ..NodeOpts::default()
    };
    let Some(c) = Cluster::start_with(test, 2, 1, false, redis, opts) else {
        return;
    };
    // A client timeout longer than the bound below, so that the server's
    // answer (not the client giving up) is what is measured.
    let a = {
        let name = uname("oa");
        let cl = c.client_with(c.addr(0), |o| o.timeout = Duration::from_secs(30));
        let id = cl.register(&name, PASSWORD).unwrap();
        let session = login_synced(&cl, &name);
        User {
            id,
            name,
            session,
            c: cl,
        }
    };
    let b = c.user(c.addr(1), "ob");
    let w = c.user(c.addr(1), "ow");
    befriend(&a, &b);
    befriend(&a, &w);
    let s = a.send_direct(b.id, "before").unwrap();
    assert_eq!(wait_msg(&b.c, "message before the outage").seq, s.seq);

    proxy.cut();
    let t0 = Instant::now();
    let mid = 9_000_001;
    let r = a.c.send_raw(b.id, 0, mid, "during");
    let answered = t0.elapsed();
    assert_eq!(
        r.as_ref().err().and_then(|e| e.code()),
        Some(ringchat::wire::fb::ErrorCode::Internal),
        "a send during the outage: {r:?}"
    );
    let bound = Duration::from_secs(5);
    assert!(
        answered < bound,
        "the send was answered only after {answered:?}"
    );
    // Presence lives in Redis: a friend leaving is still seen.
    w.c.close();
    wait_presence(&a.c, w.id, false, CRASH_NOTICED);
    // Nobody's connection was dropped for the store's sake.
    a.c.ping().expect("a's connection survives the outage");
    b.c.ping().expect("b's connection survives the outage");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    let sent = loop {
        match a.c.send_raw(b.id, 0, mid, "during") {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "sends still fail 15 s after the store came back: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let m = wait_msg(&b.c, "the retried message");
    assert_eq!((m.seq, m.body.as_str()), (sent.seq, "during"));
    assert_eq!(sent.seq, s.seq + 1, "a seq was skipped or reused");
    // Exactly once: a second retry is a duplicate, and b sees nothing more.
    let again = a.c.send_raw(b.id, 0, mid, "during").unwrap();
    assert_eq!(again.seq, sent.seq);
    common::assert_quiet(&b.c, "a second copy", |e| matches!(e, Event::Message(_)));
    let s3 = a.send_direct(b.id, "after").unwrap();
    assert_eq!(wait_msg(&b.c, "message after the outage").seq, s3.seq);
}

/// The client got a `Goodbye` with `code`, then the connection closed.
fn said_goodbye(c: &Client, code: ringchat::wire::fb::ErrorCode) {
    let e = wait(c, "Goodbye", |e| matches!(e, Event::Goodbye { .. }));
    assert!(
        matches!(e, Event::Goodbye { code: got, .. } if got == code),
        "{e:?}"
    );
    wait(c, "close", |e| matches!(e, Event::Closed));
}

#[test]
fn admin_kick_and_disable_reach_the_users_sessions_on_every_node() {
    use ringchat::wire::fb::ErrorCode;
    let Some(c) = Cluster::start_admin(
        "admin_kick_and_disable_reach_the_users_sessions_on_every_node",
        2,
        1,
    ) else {
        return;
    };
    let a = c.user(c.addr(0), "adm_k");
    let a2 = c.client(c.addr(1));
    login_synced(&a2, &a.name);
    let b = c.user(c.addr(1), "adm_s");
    c.wait_nodes_of(a.id, &["n1", "n2"]);
    // Asked on n1: its own session and n2's are closed.
    let (st, v) = c.admin_http(0, "POST", &format!("/admin/users/{}/kick", a.name));
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["closed"].as_u64(), v["tokens_revoked"].as_u64()),
        (Some(1), Some(2)),
        "{v}"
    );
    said_goodbye(&a.c, ErrorCode::BadToken);
    said_goodbye(&a2, ErrorCode::BadToken);
    c.wait_nodes_of(a.id, &[]);
    let r = c.client(c.addr(1)).resume(&a.session.token);
    assert_eq!(r.err().and_then(|e| e.code()), Some(ErrorCode::BadToken));
    b.ping().unwrap();
    // Disabled through n2 while the user is on n1 only.
    let a3 = c.client(c.addr(0));
    login_synced(&a3, &a.name);
    c.wait_nodes_of(a.id, &["n1"]);
    let (st, v) = c.admin_http(1, "POST", &format!("/admin/users/{}/disable", a.name));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["closed"], 0, "{v}");
    said_goodbye(&a3, ErrorCode::AccountDisabled);
    let r = c.client(c.addr(0)).login(&a.name, PASSWORD);
    assert_eq!(
        r.err().and_then(|e| e.code()),
        Some(ErrorCode::AccountDisabled)
    );
    let (_, v) = c.admin_http(0, "GET", &format!("/admin/users/{}", a.name));
    assert_eq!(
        (v["disabled"].as_bool(), v["online"].as_bool()),
        (Some(true), Some(false)),
        "{v}"
    );
    c.admin_http(0, "POST", &format!("/admin/users/{}/enable", a.name));
    login_synced(&c.client(c.addr(1)), &a.name);
}

/// Two nodes; a and b on `stay`, their conversation owned by the other
/// node. Returns (cluster, a, b, index of the owner node).
fn pair_owned_elsewhere(test: &str) -> Option<(Cluster, User, User, usize)> {
    let c = Cluster::start(test, 2, 1, false)?;
    let (an, bn) = (uname("a"), uname("b"));
    let reg = c.client(c.addr(0));
    let a_id = reg.register(&an, PASSWORD).unwrap();
    let b_id = reg.register(&bn, PASSWORD).unwrap();
    drop(reg);
    let view = c.view();
    let conv = ringchat::model::direct_conv(a_id, b_id);
    let owner = c.index_of(&view.owner(conv).unwrap().0);
    let stay = 1 - owner;
    let a = c.login_at(stay, an, a_id);
    let b = c.login_at(stay, bn, b_id);
    a.friend_request(b_id, "").unwrap();
    b.friend_respond(a_id, true).unwrap();
    Some((c, a, b, owner))
}

fn signal(c: &Cluster, i: usize, sig: libc::c_int) {
    let pid = c.nodes[i].child.as_ref().unwrap().id();
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Issue 10: a send forwarded to an owner node that dies before answering
/// is neither lost nor left unanswered. The owner is frozen (SIGSTOP) so
/// the forwarded request is certainly in flight, then killed: the node the
/// sender is on sees the owner's bus subscription vanish (not its 5 s
/// liveness key), takes it out of the view and sends the request to the
/// new owner, which stores it once and answers SendOk; b gets it once.
#[test]
fn send_in_flight_to_a_killed_owner_is_rerouted_and_answered() {
    let test = "send_in_flight_to_a_killed_owner_is_rerouted_and_answered";
    let Some((mut c, a, b, owner)) = pair_owned_elsewhere(test) else {
        return;
    };
    let first = a.send_direct(b.id, "before").unwrap();
    assert_eq!(wait_msg(&b.c, "message before the kill").seq, first.seq);
    signal(&c, owner, libc::SIGSTOP);
    let mut a = a;
    a.c.set_timeout(Duration::from_secs(30));
    let a = Arc::new(a);
    let sender = {
        let a = a.clone();
        let to = b.id;
        std::thread::spawn(move || {
            let mid = a.c.next_msg_id();
            a.c.send_raw(to, 0, mid, "in flight when the owner died")
        })
    };
    // Let the request reach the frozen owner's socket, then kill it.
    std::thread::sleep(Duration::from_millis(700));
    c.kill9(owner);
    let sent = sender
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("send across the kill: {e}; logs:\n{}", c.logs()));
    assert_eq!(
        sent.seq,
        first.seq + 1,
        "stored once, right after the first"
    );
    let m = wait_msg(&b.c, "the re-routed message");
    assert_eq!(
        (m.seq, m.body.as_str()),
        (sent.seq, "in flight when the owner died")
    );
    common::assert_quiet(&b.c, "the re-routed message shown twice", |e| {
        matches!(e, Event::Message { .. })
    });
    let logs = c.logs();
    assert!(
        logs.contains("bus subscription is gone"),
        "the death should be seen through the bus subscription, not the TTL; logs:\n{logs}"
    );
}

/// No false positive: a node that stops making progress for 3 s (frozen,
/// as under a CPU starvation or a long GC-like stall) keeps its sockets, so
/// nobody takes it out of the view; a send forwarded to it meanwhile is
/// answered by it once it runs again.
#[test]
fn a_stalled_owner_is_not_declared_dead() {
    let test = "a_stalled_owner_is_not_declared_dead";
    let Some((c, a, b, owner)) = pair_owned_elsewhere(test) else {
        return;
    };
    let first = a.send_direct(b.id, "before").unwrap();
    signal(&c, owner, libc::SIGSTOP);
    let mut a = a;
    a.c.set_timeout(Duration::from_secs(30));
    let a = Arc::new(a);
    let sender = {
        let a = a.clone();
        let to = b.id;
        std::thread::spawn(move || {
            let mid = a.c.next_msg_id();
            a.c.send_raw(to, 0, mid, "sent to a stalled owner")
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    signal(&c, owner, libc::SIGCONT);
    let sent = sender
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("send to a stalled owner: {e}; logs:\n{}", c.logs()));
    assert_eq!(sent.seq, first.seq + 1);
    let logs = c.logs();
    assert!(
        !logs.contains("bus subscription is gone"),
        "a stalled node must not be declared dead; logs:\n{logs}"
    );
}

/// A partition between the nodes and MySQL (packets vanish: no refusal, no
/// close): a send is answered `Internal` (retryable) within the store
/// timeout (`--store-timeout-secs 3` here), never left hanging for the
/// minutes the driver's reconnects would take; connections stay up; after
/// the partition heals the same send succeeds once, with the next seq.
#[test]
fn mysql_partition_answers_sends_within_the_store_timeout() {
    let test = "mysql_partition_answers_sends_within_the_store_timeout";
    if !services_ready(test, false) {
        return;
    }
    let proxy = StoreProxy::start();
    let redis = format!("redis://{REDIS_ADDR}");
    let opts = NodeOpts {
        mysql_url: Some(proxy.url()),
        extra: vec!["--store-timeout-secs".into(), "3".into()],
        ..NodeOpts::default()
    };
    let Some(c) = Cluster::start_with(test, 1, 1, false, redis, opts) else {
        return;
    };
    let a = {
        let name = uname("pa");
        let cl = c.client_with(c.addr(0), |o| o.timeout = Duration::from_secs(60));
        let id = cl.register(&name, PASSWORD).unwrap();
        let session = login_synced(&cl, &name);
        User {
            id,
            name,
            session,
            c: cl,
        }
    };
    let b = c.user(c.addr(0), "pb");
    befriend(&a, &b);
    let s = a.send_direct(b.id, "before").unwrap();
    assert_eq!(wait_msg(&b.c, "message before the partition").seq, s.seq);

    proxy.partition();
    let mid = 9_000_002;
    let r = a.c.send_raw(b.id, 0, mid, "during");
    assert_eq!(
        r.as_ref().err().and_then(|e| e.code()),
        Some(ringchat::wire::fb::ErrorCode::Internal),
        "a send during the partition must be answered retryably: {r:?}; logs:\n{}",
        c.logs()
    );
    a.c.ping().expect("a's connection survives the partition");
    b.c.ping().expect("b's connection survives the partition");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    let sent = loop {
        match a.c.send_raw(b.id, 0, mid, "during") {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "sends still fail 60 s after the partition healed: {e}; logs:\n{}",
                    c.logs()
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    };
    assert_eq!(sent.seq, s.seq + 1, "a seq was skipped or reused");
    // b sees it exactly once (live, or through the gap fill of the next).
    let s3 = a.send_direct(b.id, "after").unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = wait_msg(&b.c, "messages after the partition");
        got.push((m.seq, m.body));
    }
    assert_eq!(
        got,
        vec![
            (sent.seq, "during".to_string()),
            (s3.seq, "after".to_string())
        ]
    );
    common::assert_quiet(&b.c, "a second copy", |e| matches!(e, Event::Message(_)));
}

/// A node's counter summed over its shards, from its `/metrics`.
fn node_metric(c: &Cluster, i: usize, name: &str) -> u64 {
    let (_, body) = c.http(i, "GET", "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Issue 10/14: a node's death moves only its own conversations. The
/// survivors keep the owner state of the conversations they still own
/// (rendezvous ownership), so after a kill -9 they load from the store just
/// the dead node's conversations, once each — not every conversation they
/// hold, which made every view change a store query storm on the nodes that
/// were also taking over the dead node's clients. Counted by
/// `ringchat_conv_loads_total`; every message of the second round still gets
/// the next seq (state carried over is current).
#[test]
fn a_kill_reloads_only_the_dead_nodes_conversations() {
    let test = "a_kill_reloads_only_the_dead_nodes_conversations";
    let Some(mut c) = Cluster::start_admin(test, 3, 1) else {
        return;
    };
    let view = c.view();
    let victim = 2;
    let reg = c.client(c.addr(0));
    let mut pairs: Vec<(String, UserId, String, UserId)> = Vec::new();
    let (mut on_victim, mut elsewhere) = (0, 0);
    while on_victim < 2 || elsewhere < 2 {
        assert!(pairs.len() < 60, "no spread of owners over 60 pairs");
        let (an, bn) = (uname("kl"), uname("kl"));
        let a = reg.register(&an, PASSWORD).unwrap();
        let b = reg.register(&bn, PASSWORD).unwrap();
        let conv = ringchat::model::direct_conv(a, b);
        if c.index_of(&view.owner(conv).unwrap().0) == victim {
            on_victim += 1;
        } else {
            elsewhere += 1;
        }
        pairs.push((an, a, bn, b));
    }
    drop(reg);
    // Everyone on a survivor; one message per conversation loads its owner.
    let users: Vec<(User, User)> = pairs
        .into_iter()
        .map(|(an, a, bn, b)| {
            let ua = c.login_at(0, an, a);
            let ub = c.login_at(1, bn, b);
            befriend(&ua, &ub);
            (ua, ub)
        })
        .collect();
    let mut last = Vec::new();
    for (a, b) in &users {
        let s = a.send_direct(b.id, "before").unwrap();
        assert_eq!(wait_msg(&b.c, "message before the kill").seq, s.seq);
        last.push(s.seq);
    }
    std::thread::sleep(Duration::from_millis(1500)); // metrics published each second
    let loads = |c: &Cluster| {
        node_metric(c, 0, "ringchat_conv_loads_total")
            + node_metric(c, 1, "ringchat_conv_loads_total")
    };
    let before = loads(&c);
    c.kill9(victim);
    let deadline = Instant::now() + T;
    for ((a, b), prev) in users.iter().zip(&last) {
        let (s, _) = send_retrying(&a.c, b.id, "after", deadline);
        assert_eq!(s.seq, prev + 1, "the next seq after the kill");
        assert_eq!(wait_msg(&b.c, "message after the kill").seq, s.seq);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let reloaded = loads(&c) - before;
    assert!(
        (1..=on_victim).contains(&reloaded),
        "{reloaded} conversations loaded on the survivors after the kill; the dead node owned \
         {on_victim} of {} (the survivors' own should stay loaded); logs:\n{}",
        on_victim + elsewhere,
        c.logs()
    );
}

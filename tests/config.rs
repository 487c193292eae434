//! `ringchat serve` configuration end to end: the real binary with a config
//! file, overridden by the environment and by a flag (checked by connecting
//! to the effective address), `config print`, errors, and the log format.

mod common;

use common::{PASSWORD, TestServer, login_synced, uname};
use ringchat::client::Client;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One server at a time in this binary (they pin executors to CPUs).
static TURN: Mutex<()> = Mutex::new(());

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "ringchat-config-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The binary, with no `RINGCHAT_*` setting inherited from the test's own
/// environment.
fn ringchat(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringchat"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("RINGCHAT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

struct Running {
    child: Child,
    /// The address from the `ringchat listening on ADDR` line.
    listening: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ringchat serve ARGS` and waits for its `listening on` line.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut cmd = ringchat(&[&["serve"], args].concat(), env);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ringchat listening on ") {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                let _ = tx.send(addr);
            }
        }
    });
    let err = std::sync::Arc::new(Mutex::new(String::new()));
    let sink = err.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(listening) = rx.recv_timeout(Duration::from_millis(50)) {
            return Running { child, listening };
        }
        if let Ok(Some(st)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "serve {args:?} exited with {st}; stderr:\n{}",
                err.lock().unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "serve {args:?} did not start; stderr:\n{}",
            err.lock().unwrap()
        );
    }
}

/// A real ringchat answers on `addr` (hello handshake), and nothing on `not`.
fn answers_on(addr: SocketAddr, not: &[SocketAddr]) {
    Client::connect(addr).unwrap_or_else(|e| panic!("no ringchat on {addr}: {e}"));
    for a in not {
        assert!(
            std::net::TcpStream::connect(a).is_err(),
            "something listens on {a}, which was overridden"
        );
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("ringchat.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn file_then_env_then_flag_decide_the_listen_address() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("layers");
    let (file_addr, env_addr, flag_addr, metrics) =
        (free_addr(), free_addr(), free_addr(), free_addr());
    let cfg = write_config(
        &dir,
        &format!(
            "listen = \"{file_addr}\"\nshards = 1\ndata-dir = \"{}\"\nmetrics = \"{metrics}\"\n",
            dir.join("data").display()
        ),
    );
    let cfg_s = cfg.to_str().unwrap();

    // File alone.
    let r = serve(&["--config", cfg_s], &[]);
    assert_eq!(r.listening, file_addr);
    answers_on(file_addr, &[]);
    // The file's other settings apply too: metrics on its address.
    assert!(http_get(metrics, "/metrics").contains("ringchat_connections"));
    drop(r);

    // Environment over file (the file named by RINGCHAT_CONFIG).
    let env_s = env_addr.to_string();
    let r = serve(
        &[],
        &[("RINGCHAT_CONFIG", cfg_s), ("RINGCHAT_LISTEN", &env_s)],
    );
    assert_eq!(r.listening, env_addr);
    answers_on(env_addr, &[file_addr]);
    drop(r);

    // Flag over environment over file.
    let r = serve(
        &["--config", cfg_s, "--listen", &flag_addr.to_string()],
        &[("RINGCHAT_LISTEN", &env_s)],
    );
    assert_eq!(r.listening, flag_addr);
    answers_on(flag_addr, &[file_addr, env_addr]);
    drop(r);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn serve_with_the_example_file() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("example");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/ringchat.example.toml");
    // Its addresses are the well-known ports, maybe taken on this machine:
    // moved by the environment (which is the point of env overrides).
    let (listen, metrics) = (free_addr().to_string(), free_addr().to_string());
    let data = dir.join("data");
    let env = [
        ("RINGCHAT_LISTEN", listen.as_str()),
        ("RINGCHAT_METRICS", metrics.as_str()),
        ("RINGCHAT_DATA_DIR", data.to_str().unwrap()),
        ("RINGCHAT_SHARDS", "1"),
    ];
    let r = serve(&["--config", example], &env);
    assert_eq!(r.listening.to_string(), listen);
    let c = Client::connect(r.listening).unwrap();
    let name = uname("example");
    c.register(&name, PASSWORD).unwrap();
    login_synced(&c, &name);
    let body = http_get(metrics.parse().unwrap(), "/readyz");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    drop(r);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn config_print_names_every_source() {
    let dir = temp_dir("print");
    let cfg = write_config(&dir, "shards = 3\nmax-frame = 4096\n");
    let out = ringchat(
        &[
            "config",
            "print",
            "--config",
            cfg.to_str().unwrap(),
            "--max-frame",
            "8192",
        ],
        &[("RINGCHAT_HASH_QUEUE", "9")],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
            .to_string()
    };
    assert!(line("shards").contains("= 3") && line("shards").contains("# file "));
    assert!(
        line("max-frame").contains("= 8192") && line("max-frame").contains("# flag --max-frame")
    );
    assert!(
        line("hash-queue").contains("= 9")
            && line("hash-queue").contains("# env RINGCHAT_HASH_QUEUE")
    );
    assert!(line("listen").contains("\"127.0.0.1:7000\"") && line("listen").contains("# default"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_settings_fail_naming_the_key_and_source() {
    let dir = temp_dir("bad");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = ringchat(args, env).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let cfg = write_config(&dir, "listen = \"127.0.0.1:7000\"\nlisten_port = 7\n");
    let cfg_s = cfg.to_str().unwrap();
    let err = run(&["serve", "--config", cfg_s], &[]);
    assert!(
        err.contains("unknown key `listen_port`") && err.contains(cfg_s),
        "{err}"
    );
    let cfg = write_config(&dir, "max-frame = \"big\"\n");
    let err = run(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert!(
        err.contains("`max-frame`") && err.contains("\"big\""),
        "{err}"
    );
    let err = run(&["serve"], &[("RINGCHAT_WATCHDOG_SECS", "soon")]);
    assert!(
        err.contains("env RINGCHAT_WATCHDOG_SECS") && err.contains("`watchdog-secs`"),
        "{err}"
    );
    let err = run(
        &["config", "print"],
        &[("RINGCHAT_REDIS", "redis://127.0.0.1:6379")],
    );
    assert!(err.contains("--redis and --node-id go together"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--log-format json`: one JSON object per line; at info, one line when a
/// session starts (user, shard, remote address) and one when it ends, and
/// nothing per message.
#[test]
fn json_logs_show_session_lifecycle_and_nothing_per_message() {
    let mut s = TestServer::start_with(&["--log-format", "json"]);
    let (a, b) = (s.user(&uname("loga")), s.user(&uname("logb")));
    common::befriend(&a, &b);
    for i in 0..20 {
        a.c.send_direct(b.id, &format!("m{i}")).unwrap();
    }
    for _ in 0..20 {
        common::wait_msg(&b.c, "message");
    }
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.stderr().contains("session ended") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    s.stop();
    let logs = s.stderr();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let msg = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_string();
    let started: Vec<_> = lines
        .iter()
        .filter(|v| msg(v) == "session started")
        .collect();
    // a and b register+login once each (befriend adds no sessions).
    assert_eq!(started.len(), 2, "{logs}");
    for v in &started {
        assert_eq!(v["level"], "INFO");
        assert!(v["fields"]["user"].as_u64().unwrap() > 0, "{v}");
        assert!(v["fields"]["shard"].as_u64().unwrap() < 2, "{v}");
        assert!(
            v["fields"]["remote"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1"),
            "{v}"
        );
    }
    let ended: Vec<_> = lines.iter().filter(|v| msg(v) == "session ended").collect();
    assert!(!ended.is_empty(), "{logs}");
    assert!(
        ended.iter().all(|v| v["fields"]["reason"].is_string()
            && v["fields"]["remote"]
                .as_str()
                .unwrap_or("")
                .contains("127.0.0.1")),
        "{logs}"
    );
    // Nothing else at info per message: the whole run logs a handful of
    // lines, not one per message.
    let info = lines.iter().filter(|v| v["level"] == "INFO").count();
    assert!(
        info <= 2 + 2 + 1,
        "{info} info lines for 20 messages:\n{logs}"
    );
}

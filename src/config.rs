//! Configuration of `ringchat serve`: command-line flags, `RINGCHAT_*`
//! environment variables and a TOML file, layered
//! **flag > environment > file > default**.
//!
//! - File keys are the long flag names, kebab-case, at the top level:
//!   `idle-timeout-secs = 60` for `--idle-timeout-secs 60`
//!   (`ringchat.example.toml` lists every one). An unknown key is an error
//!   naming it.
//! - Environment: `RINGCHAT_` + the flag in upper snake case:
//!   `RINGCHAT_IDLE_TIMEOUT_SECS=60`; `RINGCHAT_CONFIG` names the file.
//!   Other `RINGCHAT_*` variables (used by the test and cluster scripts) are
//!   not settings and are ignored.
//! - For optional settings (`metrics`, `redis`, `node-id`, `legacy-listen`,
//!   `ws-listen`, `ws-allowed-origin`, `admin-token`, `admin-token-file`)
//!   an empty value means "off", so an environment variable or a flag can
//!   turn off what the file turns on.
//! - Every value from the environment or the file is parsed exactly like
//!   the flag; a bad one is an error naming the key and where it came from
//!   (a value that is overridden is still checked).
//!
//! `ringchat config print` shows the effective value of every setting and
//! its source.

use crate::server::watchdog::Fault;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Prefix of every setting's environment variable.
pub const ENV_PREFIX: &str = "RINGCHAT_";

const AFTER_HELP: &str = "Every flag can also be set in the --config file (key = the flag name, \
e.g. `idle-timeout-secs = 60`) or by an environment variable (RINGCHAT_ + the flag in upper \
snake case, e.g. RINGCHAT_IDLE_TIMEOUT_SECS=60). Precedence: flag > environment > file > default. \
`ringchat config print` shows the effective values and where each came from.";

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line (tracing-subscriber's json formatter).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected `text` or `json`".into()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// A value that is never shown: `config print` and `Debug` hide it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Secret, String> {
        Ok(Secret(s.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(hidden)")
    }
}

/// Shortest admin token accepted, in bytes.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// `ringchat serve` options. Each one is also a config-file key and an
/// environment variable (see the module docs).
#[derive(Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct ServeArgs {
    /// TOML configuration file (keys: the long flag names, e.g.
    /// `listen = "0.0.0.0:7000"`); see ringchat.example.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address every shard listens on (SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Number of shards (executors); default: one per allowed CPU.
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Directory of the embedded store.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Store to use: empty for the embedded store in --data-dir,
    /// `sqlite:PATH`, or `mysql://user:pass@host:port/db[?pool=N]`
    /// (N pooled connections, default 8; the database is created if missing).
    #[arg(long, default_value = "")]
    pub store: String,
    /// Largest accepted frame in bytes.
    #[arg(long, default_value_t = 65536)]
    pub max_frame: usize,
    /// Close connections silent for this long (clients ping at a third of it).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// io_uring ring depth per shard.
    #[arg(long, default_value_t = 2048)]
    pub ring_depth: usize,
    /// Locked I/O memory per shard, KiB.
    #[arg(long, default_value_t = 256)]
    pub io_memory_kib: usize,
    /// Blocking threads per shard for store calls (passwords are hashed on
    /// their own pool: --hash-threads).
    #[arg(long, default_value_t = 4)]
    pub blocking_threads: usize,
    /// Cut off a connection whose unwritten output exceeds this (slow
    /// consumer); it catches up from the store when it comes back.
    #[arg(long, default_value_t = 16384)]
    pub max_outbound_kib: usize,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Join a cluster through this Redis (bus and presence registry),
    /// e.g. redis://127.0.0.1:6379. Needs --node-id and a shared --store.
    #[arg(long)]
    pub redis: Option<String>,
    /// This node's unique name in the cluster.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel, so clusters can share a Redis.
    #[arg(long, default_value = "ringchat:")]
    pub redis_prefix: String,
    /// PEM file of the CA that signed the Redis server's certificate, for a
    /// rediss:// (TLS) URL; without it the system's roots are trusted.
    #[arg(long)]
    pub redis_ca: Option<PathBuf>,
    /// File holding the cluster's shared secret (at least 16 bytes; the
    /// same on every node). Every bus message is then signed (HMAC-SHA256)
    /// and unsigned or forged ones are dropped: without it, anyone who can
    /// publish on the Redis can inject messages (docs/SECURITY.md).
    #[arg(long)]
    pub cluster_key_file: Option<PathBuf>,
    /// Also serve the old cc_ChatServer JSON protocol on this address (off
    /// by default; see docs/MIGRATING.md).
    #[arg(long)]
    pub legacy_listen: Option<SocketAddr>,
    /// Also serve WebSocket (`/ws`, the native protocol, one frame per
    /// binary message) and the web client (`/`) on this address (off by
    /// default; see docs/WEB.md).
    #[arg(long)]
    pub ws_listen: Option<SocketAddr>,
    /// Browser origins allowed to open a WebSocket besides the server's own
    /// address, comma-separated (`https://chat.example.com`); `*` allows
    /// any. Requests without an Origin (non-browser clients) are allowed.
    #[arg(long)]
    pub ws_allowed_origin: Option<String>,
    /// Exit (status 70) when a shard makes no progress for this many
    /// seconds, so a supervisor restarts the node instead of it staying
    /// deaf; 0 disables the watchdog.
    #[arg(long, default_value_t = 10)]
    pub watchdog_secs: u64,
    /// Threads that hash passwords (argon2), node-wide; 0: half the CPUs.
    /// They run at a lower priority than message traffic.
    #[arg(long, default_value_t = 0)]
    pub hash_threads: usize,
    /// Logins/registrations waiting for a hashing thread; beyond this they
    /// are refused at once with RateLimited (clients retry).
    #[arg(long, default_value_t = 16)]
    pub hash_queue: usize,
    /// Log format on stderr: `text` or `json` (one object per line). The
    /// level filter is RUST_LOG (default `info`).
    #[arg(long, default_value = "text")]
    pub log_format: LogFormat,
    /// Chat messages per second per user, sustained (0: unlimited); beyond
    /// it sends get RateLimited with when to retry.
    #[arg(long, default_value_t = 20.0)]
    pub max_send_rate: f64,
    /// Messages a user may send at once above --max-send-rate.
    #[arg(long, default_value_t = 100)]
    pub max_send_burst: u32,
    /// Friend requests per hour per user (0: unlimited).
    #[arg(long, default_value_t = 100)]
    pub max_friend_requests_per_hour: u32,
    /// Live sessions per user on this node (0: unlimited); one more login
    /// gets LimitReached.
    #[arg(long, default_value_t = 16)]
    pub max_sessions_per_user: usize,
    /// Live groups a user may own (0: unlimited).
    #[arg(long, default_value_t = 100)]
    pub max_groups_per_user: usize,
    /// Members per group (0: unlimited).
    #[arg(long, default_value_t = 5000)]
    pub max_members_per_group: usize,
    /// Connections per source address, IPv6 per /64 (0: unlimited). Leave
    /// it off behind nginx: every client then shares nginx's address.
    #[arg(long, default_value_t = 0)]
    pub max_conns_per_addr: usize,
    /// Connections in total (0: the open-file limit less 1024).
    #[arg(long, default_value_t = 0)]
    pub max_conns: usize,
    /// Shortest password a registration accepts, in bytes (1-128). Lower it
    /// only to migrate users of a system that allowed shorter ones (the old
    /// cc_ChatServer took any password; docs/MIGRATING.md).
    #[arg(long, default_value_t = 8)]
    pub min_password_len: usize,
    /// Bearer token of the admin endpoints on the --metrics address
    /// (`ringchat admin`); at least 16 bytes. Prefer --admin-token-file (a
    /// flag shows in `ps`). Unset: admin is disabled. Never logged or printed.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<Secret>,
    /// A file holding the admin token (trailing whitespace ignored).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A session token not used for this many seconds expires (sliding:
    /// each login or resume with it starts the time again; 0: never).
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    pub session_ttl_secs: u64,
    /// A store call (one query, one group-commit batch) unanswered for this
    /// many seconds is answered `Internal` (retryable): a store that is
    /// unreachable without refusing connections (a partition) must not hold
    /// requests for minutes. The call itself finishes or fails on its own.
    #[arg(long, default_value_t = 15)]
    pub store_timeout_secs: u64,
    /// Benchmarks and tests only: keep the weak hashes of `provision
    /// --fast-hash` instead of upgrading each to the server's parameters at
    /// its user's next login (flag only: not a setting of the file or the
    /// environment).
    #[arg(long, hide = true)]
    pub insecure_fast_hash_for_tests: bool,
    /// Test hook: `stall:SHARD:AFTER_MS` or `panic:SHARD:AFTER_MS` (flag
    /// only: not a setting of the file or the environment).
    #[arg(long, hide = true)]
    pub test_fault: Option<Fault>,
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(k) => write!(f, "flag --{k}"),
        }
    }
}

/// One setting's effective value (as a TOML literal; `None`: unset) and source.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: Option<String>,
    pub source: Source,
}

/// The resolved `serve` options and where each value came from.
#[derive(Debug, Clone)]
pub struct Effective {
    pub args: ServeArgs,
    pub entries: Vec<Entry>,
}

impl Effective {
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.source)
    }

    /// `ringchat config print`: a valid TOML file of the effective
    /// settings, each with its source as a comment.
    pub fn render(&self) -> String {
        let lines: Vec<(String, String)> = self
            .entries
            .iter()
            .map(|e| match &e.value {
                // The file cannot name another file: shown, commented out.
                Some(v) if e.key == "config" => (format!("# config = {v}"), e.source.to_string()),
                // A secret is never printed.
                Some(_) if e.key == "admin-token" => (
                    "# admin-token = (set; not shown)".to_string(),
                    e.source.to_string(),
                ),
                Some(v) => (format!("{} = {v}", e.key), e.source.to_string()),
                None => (format!("# {} (unset)", e.key), e.source.to_string()),
            })
            .collect();
        let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut out = String::from(
            "# effective configuration of `ringchat serve` (flag > env > file > default)\n",
        );
        for (l, s) in lines {
            out.push_str(&format!("{l:width$}  # {s}\n"));
        }
        out
    }

    /// The server's configuration (and checks that span several settings).
    pub fn server_config(&self) -> Result<crate::server::Config, String> {
        let a = &self.args;
        if !(1..=crate::core::validate::MAX_PASSWORD).contains(&a.min_password_len) {
            return Err(format!(
                "min-password-len must be 1-{}, not {}",
                crate::core::validate::MAX_PASSWORD,
                a.min_password_len
            ));
        }
        let admin_token = admin_token(a)?.map(crate::server::admin::AdminToken);
        Ok(crate::server::Config {
            admin_token,
            listen: a.listen,
            shards: a.shards,
            data_dir: a.data_dir.clone(),
            store: a.store.clone(),
            max_frame: a.max_frame,
            idle_timeout: Duration::from_secs(a.idle_timeout_secs.max(1)),
            ring_depth: a.ring_depth,
            io_memory: a.io_memory_kib << 10,
            blocking_threads: a.blocking_threads.max(1),
            metrics: a.metrics,
            // At least a few frames, so a catch-up page never overflows it.
            out_limit: (a.max_outbound_kib << 10).max(4 * a.max_frame),
            cluster: cluster_config(a)?
                .map(|c| c as std::sync::Arc<dyn crate::server::router::RouterFactory>),
            legacy_listen: a.legacy_listen,
            ws_listen: a.ws_listen,
            ws_allowed_origins: a
                .ws_allowed_origin
                .iter()
                .flat_map(|s| s.split(','))
                .map(|s| s.trim().trim_end_matches('/').to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            watchdog: Duration::from_secs(a.watchdog_secs),
            fault: a.test_fault,
            hash_threads: a.hash_threads,
            hash_queue: a.hash_queue,
            limits: crate::core::limits::Limits {
                send_per_s: a.max_send_rate,
                send_burst: a.max_send_burst,
                friend_requests_per_hour: a.max_friend_requests_per_hour,
                sessions_per_user: a.max_sessions_per_user,
                groups_per_user: a.max_groups_per_user,
                members_per_group: a.max_members_per_group,
                conns_per_addr: a.max_conns_per_addr,
                conns_total: a.max_conns,
                ..crate::core::limits::Limits::default()
            },
            min_password: a.min_password_len,
            session_ttl: Duration::from_secs(a.session_ttl_secs),
            store_timeout: Duration::from_secs(a.store_timeout_secs.max(1)),
            rehash: !a.insecure_fast_hash_for_tests,
            ..Default::default()
        })
    }
}

/// The admin token, from `--admin-token` or `--admin-token-file` (one of
/// them; none: admin is disabled).
fn admin_token(a: &ServeArgs) -> Result<Option<String>, String> {
    let token = match (&a.admin_token, &a.admin_token_file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err("set one of admin-token and admin-token-file, not both".into());
        }
        (Some(t), None) => t.0.clone(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .map_err(|e| format!("reading admin-token-file {}: {e}", p.display()))?
            .trim_end()
            .to_string(),
    };
    if token.len() < MIN_ADMIN_TOKEN || token.chars().any(char::is_whitespace) {
        return Err(format!(
            "the admin token must be at least {MIN_ADMIN_TOKEN} bytes without spaces \
             (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(Some(token))
}

fn cluster_config(
    a: &ServeArgs,
) -> Result<Option<std::sync::Arc<crate::cluster::ClusterConfig>>, String> {
    match (&a.redis, &a.node_id) {
        (None, None) if a.redis_ca.is_some() || a.cluster_key_file.is_some() => {
            Err("--redis-ca and --cluster-key-file are for a cluster (--redis)".into())
        }
        (None, None) => Ok(None),
        (Some(url), Some(node)) => {
            if node.is_empty() || node.contains(':') {
                return Err("--node-id must be non-empty and must not contain ':'".into());
            }
            let key = match &a.cluster_key_file {
                Some(p) => Some(crate::cluster::BusKey::from_file(p)?),
                None => None,
            };
            Ok(Some(std::sync::Arc::new(crate::cluster::ClusterConfig {
                redis: crate::cluster::redis::parse_url(url, a.redis_ca.as_deref())?,
                node: node.clone(),
                prefix: a.redis_prefix.clone(),
                key,
            })))
        }
        _ => Err("--redis and --node-id go together".into()),
    }
}

/// A value as a TOML literal, for `config print`.
trait Show {
    fn show(&self) -> String;
}

macro_rules! show_number {
    ($($t:ty),*) => {$(impl Show for $t { fn show(&self) -> String { self.to_string() } })*};
}
macro_rules! show_string {
    ($($t:ty),*) => {$(impl Show for $t {
        fn show(&self) -> String { toml::Value::String(self.to_string()).to_string() }
    })*};
}
show_number!(usize, u64, u32, f64);
show_string!(SocketAddr, String, LogFormat);

impl Show for Secret {
    fn show(&self) -> String {
        "(hidden)".into()
    }
}

impl Show for PathBuf {
    fn show(&self) -> String {
        toml::Value::String(self.display().to_string()).to_string()
    }
}

/// The environment variable of a setting (`idle_timeout_secs` →
/// `RINGCHAT_IDLE_TIMEOUT_SECS`).
pub fn env_var(id: &str) -> String {
    format!("{ENV_PREFIX}{}", id.to_ascii_uppercase())
}

/// The file key of a setting (`idle_timeout_secs` → `idle-timeout-secs`).
pub fn file_key(id: &str) -> String {
    id.replace('_', "-")
}

/// Every setting's file key (the visible long flags except --config).
pub fn keys() -> Vec<String> {
    ServeOnly::command()
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_long().is_some())
        .map(|a| file_key(a.get_id().as_str()))
        .filter(|k| k != "config")
        .collect()
}

/// A command holding only the serve options, to parse them on their own
/// (tests, `keys`).
#[derive(Parser, Debug)]
#[command(name = "serve")]
pub struct ServeOnly {
    #[command(flatten)]
    pub args: ServeArgs,
}

/// The layers below the command line while resolving.
struct Layers<'a> {
    matches: &'a ArgMatches,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: toml::Table,
    path: PathBuf,
    entries: Vec<Entry>,
}

/// A TOML value as the text a flag would take.
fn toml_text(v: toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Layers<'_> {
    fn given_as_flag(&self, id: &str) -> bool {
        self.matches.value_source(id) == Some(ValueSource::CommandLine)
    }

    /// The env and file values of a setting (if any), each with its source.
    fn lower(&mut self, id: &str) -> Result<Vec<(String, Source)>, String> {
        let mut out = Vec::new();
        let var = env_var(id);
        if let Some(v) = (self.env)(&var) {
            out.push((v, Source::Env(var)));
        }
        let key = file_key(id);
        if let Some(v) = self.file.remove(&key) {
            let shown = v.to_string();
            let text = toml_text(v).ok_or_else(|| {
                format!(
                    "{}: `{key}` = {shown}: expected a string or a number",
                    self.path.display()
                )
            })?;
            out.push((text, Source::File(self.path.clone())));
        }
        Ok(out)
    }

    fn bad(id: &str, text: &str, src: &Source, e: impl fmt::Display) -> String {
        let key = file_key(id);
        match src {
            Source::File(p) => {
                format!("{}: invalid value {text:?} for `{key}`: {e}", p.display())
            }
            _ => format!("{src}: invalid value {text:?} for `{key}`: {e}"),
        }
    }

    fn record(&mut self, id: &str, value: Option<String>, source: Source) {
        self.entries.push(Entry {
            key: file_key(id),
            value,
            source,
        });
    }

    /// A setting with a default.
    fn one<T>(&mut self, id: &'static str, v: &mut T) -> Result<(), String>
    where
        T: FromStr + Show,
        T::Err: fmt::Display,
    {
        let mut source = Source::Default;
        if self.given_as_flag(id) {
            source = Source::Flag(file_key(id));
        }
        // Env before file; every layer's value is checked, the highest
        // one present wins.
        for (text, src) in self.lower(id)? {
            let parsed = text
                .parse::<T>()
                .map_err(|e| Self::bad(id, &text, &src, e))?;
            if source == Source::Default {
                *v = parsed;
                source = src;
            }
        }
        self.record(id, Some(v.show()), source);
        Ok(())
    }

    /// An optional setting: an empty value turns it off.
    fn opt<T>(&mut self, id: &'static str, v: &mut Option<T>) -> Result<(), String>
    where
        T: FromStr + Show,
        T::Err: fmt::Display,
    {
        let mut source = Source::Default;
        if self.given_as_flag(id) {
            source = Source::Flag(file_key(id));
        }
        for (text, src) in self.lower(id)? {
            let parsed = if text.is_empty() {
                None
            } else {
                Some(
                    text.parse::<T>()
                        .map_err(|e| Self::bad(id, &text, &src, e))?,
                )
            };
            if source == Source::Default {
                *v = parsed;
                source = src;
            }
        }
        self.record(id, v.as_ref().map(Show::show), source);
        Ok(())
    }
}

/// Resolves the serve options from parsed command-line `matches` (of a
/// command built from [`ServeArgs`]), an environment lookup and the config
/// file named by `--config` or `RINGCHAT_CONFIG`.
pub fn resolve(
    matches: &ArgMatches,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Effective, String> {
    let mut args = ServeArgs::from_arg_matches(matches).map_err(|e| e.to_string())?;
    // The file itself: flag > env.
    let (path, path_source) = if matches.value_source("config") == Some(ValueSource::CommandLine) {
        (args.config.clone(), Source::Flag("config".into()))
    } else {
        match env(&env_var("config")).filter(|v| !v.is_empty()) {
            Some(p) => (Some(PathBuf::from(p)), Source::Env(env_var("config"))),
            None => (None, Source::Default),
        }
    };
    let file = match &path {
        None => toml::Table::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("reading the config file {}: {e}", p.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| format!("{}: {e}", p.display()))?
        }
    };
    // Unknown keys first: a misspelt key must not pass silently.
    let known = keys();
    for k in file.keys() {
        if !known.iter().any(|x| x == k) {
            let kebab = file_key(k);
            let hint = if known.contains(&kebab) {
                format!(" (keys are kebab-case: did you mean `{kebab}`?)")
            } else {
                String::new()
            };
            return Err(format!(
                "{}: unknown key `{k}`{hint}; valid keys: {}",
                path.as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                known.join(", ")
            ));
        }
    }
    args.config = path.clone();
    let mut l = Layers {
        matches,
        env,
        file,
        path: path.clone().unwrap_or_default(),
        entries: Vec::new(),
    };
    l.entries.push(Entry {
        key: "config".into(),
        value: path.as_ref().map(Show::show),
        source: path_source,
    });
    macro_rules! layered {
        (one: $($f:ident),*; opt: $($o:ident),*) => {
            $( l.one(stringify!($f), &mut args.$f)?; )*
            $( l.opt(stringify!($o), &mut args.$o)?; )*
        };
    }
    layered!(
        one: listen, shards, data_dir, store, max_frame, idle_timeout_secs, ring_depth,
             io_memory_kib, blocking_threads, max_outbound_kib, redis_prefix, watchdog_secs,
             hash_threads, hash_queue, log_format, max_send_rate, max_send_burst,
             max_friend_requests_per_hour, max_sessions_per_user, max_groups_per_user,
             max_members_per_group, max_conns_per_addr, max_conns, min_password_len,
             session_ttl_secs, store_timeout_secs;
        opt: metrics, redis, node_id, legacy_listen, ws_listen, ws_allowed_origin, redis_ca, cluster_key_file, admin_token,
             admin_token_file
    );
    // Keep the file's order of options: same as `--help`.
    let order = known;
    let mut entries = std::mem::take(&mut l.entries);
    entries.sort_by_key(|e| {
        order
            .iter()
            .position(|k| *k == e.key)
            .map(|p| p + 1)
            .unwrap_or(0)
    });
    Ok(Effective { args, entries })
}

/// Parses `argv` (the words after `serve`) and resolves them: for tests.
pub fn resolve_args(
    argv: &[&str],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Effective, String> {
    let m = ServeOnly::command()
        .try_get_matches_from(std::iter::once("serve").chain(argv.iter().copied()))
        .map_err(|e| e.to_string())?;
    resolve(&m, env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn file(text: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringchat-config-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_without_anything() {
        let e = resolve_args(&[], &env_of(&[])).unwrap();
        assert_eq!(e.args.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(e.args.shards, 0);
        assert_eq!(e.args.metrics, None);
        assert_eq!(e.args.log_format, LogFormat::Text);
        assert!(e.entries.iter().all(|x| x.source == Source::Default));
        // Same as the server's own defaults.
        let c = e.server_config().unwrap();
        let d = crate::server::Config::default();
        assert_eq!(
            (
                c.listen,
                c.max_frame,
                c.idle_timeout,
                c.ring_depth,
                c.io_memory
            ),
            (
                d.listen,
                d.max_frame,
                d.idle_timeout,
                d.ring_depth,
                d.io_memory
            )
        );
        assert_eq!((c.out_limit, c.watchdog), (d.out_limit, d.watchdog));
        assert_eq!(
            (c.blocking_threads, c.hash_threads, c.hash_queue),
            (d.blocking_threads, d.hash_threads, d.hash_queue)
        );
    }

    #[test]
    fn precedence_flag_env_file_default() {
        let p = file(
            "listen = \"127.0.0.1:7101\"\nshards = 3\nmax-frame = 1000\nmetrics = \"127.0.0.1:9101\"\n",
        );
        let ps = p.to_str().unwrap();
        let env = env_of(&[
            ("RINGCHAT_LISTEN", "127.0.0.1:7102"),
            ("RINGCHAT_SHARDS", "5"),
        ]);
        let e = resolve_args(&["--config", ps, "--listen", "127.0.0.1:7103"], &env).unwrap();
        assert_eq!(e.args.listen.to_string(), "127.0.0.1:7103");
        assert_eq!(e.source("listen"), Some(&Source::Flag("listen".into())));
        assert_eq!(e.args.shards, 5);
        assert_eq!(
            e.source("shards"),
            Some(&Source::Env("RINGCHAT_SHARDS".into()))
        );
        assert_eq!(e.args.max_frame, 1000);
        assert_eq!(e.source("max-frame"), Some(&Source::File(p.clone())));
        assert_eq!(e.args.metrics.unwrap().to_string(), "127.0.0.1:9101");
        assert_eq!(e.args.ring_depth, 2048);
        assert_eq!(e.source("ring-depth"), Some(&Source::Default));
        // Env alone over file; the file named by the environment.
        let env = env_of(&[
            ("RINGCHAT_CONFIG", ps),
            ("RINGCHAT_LISTEN", "127.0.0.1:7102"),
        ]);
        let e = resolve_args(&[], &env).unwrap();
        assert_eq!(e.args.listen.to_string(), "127.0.0.1:7102");
        assert_eq!(e.args.shards, 3);
        assert_eq!(
            e.source("config"),
            Some(&Source::Env("RINGCHAT_CONFIG".into()))
        );
        // A flag equal to the default still wins over env and file.
        let e = resolve_args(&["--config", ps, "--shards", "0"], &env).unwrap();
        assert_eq!(e.args.shards, 0);
        assert_eq!(e.source("shards"), Some(&Source::Flag("shards".into())));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn empty_turns_optional_settings_off() {
        let p = file("metrics = \"127.0.0.1:9101\"\nlegacy-listen = \"127.0.0.1:6000\"\n");
        let ps = p.to_str().unwrap();
        let env = env_of(&[("RINGCHAT_METRICS", "")]);
        let e = resolve_args(&["--config", ps], &env).unwrap();
        assert_eq!(e.args.metrics, None);
        assert_eq!(
            e.source("metrics"),
            Some(&Source::Env("RINGCHAT_METRICS".into()))
        );
        assert_eq!(e.args.legacy_listen.unwrap().to_string(), "127.0.0.1:6000");
        assert!(e.render().contains("# metrics (unset)"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let p = file("listen = \"127.0.0.1:7000\"\nlisten-addr = \"x\"\n");
        let err = resolve_args(&["--config", p.to_str().unwrap()], &env_of(&[])).unwrap_err();
        assert!(err.contains("unknown key `listen-addr`"), "{err}");
        assert!(err.contains(p.to_str().unwrap()), "{err}");
        let p2 = file("idle_timeout_secs = 5\n");
        let err = resolve_args(&["--config", p2.to_str().unwrap()], &env_of(&[])).unwrap_err();
        assert!(err.contains("did you mean `idle-timeout-secs`"), "{err}");
        // The test hook is not a setting.
        let p3 = file("test-fault = \"stall:0:1\"\n");
        let err = resolve_args(&["--config", p3.to_str().unwrap()], &env_of(&[])).unwrap_err();
        assert!(err.contains("unknown key `test-fault`"), "{err}");
        for p in [p, p2, p3] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn bad_values_name_key_and_source() {
        let p = file("shards = -1\n");
        let ps = p.to_str().unwrap();
        let err = resolve_args(&["--config", ps], &env_of(&[])).unwrap_err();
        assert!(err.contains("`shards`") && err.contains(ps), "{err}");
        let err = resolve_args(&[], &env_of(&[("RINGCHAT_LISTEN", "nowhere")])).unwrap_err();
        assert!(
            err.contains("env RINGCHAT_LISTEN") && err.contains("`listen`"),
            "{err}"
        );
        let err = resolve_args(&[], &env_of(&[("RINGCHAT_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(
            err.contains("`log-format`") && err.contains("json"),
            "{err}"
        );
        // Overridden values are still checked.
        let err = resolve_args(&["--config", ps, "--shards", "2"], &env_of(&[])).unwrap_err();
        assert!(err.contains("`shards`"), "{err}");
        // Wrong TOML type.
        let p2 = file("listen = [1, 2]\n");
        let err = resolve_args(&["--config", p2.to_str().unwrap()], &env_of(&[])).unwrap_err();
        assert!(err.contains("`listen`"), "{err}");
        // TOML syntax errors name the file and line.
        let p3 = file("listen = \n");
        let err = resolve_args(&["--config", p3.to_str().unwrap()], &env_of(&[])).unwrap_err();
        assert!(
            err.contains(p3.to_str().unwrap()) && err.contains("line 1"),
            "{err}"
        );
        let err = resolve_args(&["--config", "/nonexistent/r.toml"], &env_of(&[])).unwrap_err();
        assert!(err.contains("/nonexistent/r.toml"), "{err}");
        for p in [p, p2, p3] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn print_shows_every_setting_with_its_source_and_reparses() {
        let p = file("shards = 2\n");
        let ps = p.to_str().unwrap();
        let e = resolve_args(
            &["--config", ps, "--store", "sqlite:/tmp/x.db"],
            &env_of(&[("RINGCHAT_HASH_QUEUE", "7")]),
        )
        .unwrap();
        let out = e.render();
        for k in keys() {
            assert!(
                out.contains(&format!("\n{k} = ")) || out.contains(&format!("# {k} (unset)")),
                "{k} missing in:\n{out}"
            );
        }
        assert!(out.contains("# flag --store"), "{out}");
        assert!(out.contains("# env RINGCHAT_HASH_QUEUE"), "{out}");
        assert!(out.contains(&format!("# file {ps}")), "{out}");
        // The output is itself a valid config file.
        assert!(out.contains(&format!("# config = \"{ps}\"")), "{out}");
        let p2 = file(&out);
        let again = resolve_args(&["--config", p2.to_str().unwrap()], &env_of(&[])).unwrap();
        assert_eq!(again.args.store, "sqlite:/tmp/x.db");
        assert_eq!(again.args.hash_queue, 7);
        std::fs::remove_file(p2).unwrap();
        let reparsed: toml::Table = out.parse().unwrap();
        assert_eq!(reparsed["shards"].as_integer(), Some(2));
        assert_eq!(reparsed["store"].as_str(), Some("sqlite:/tmp/x.db"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn the_example_file_covers_every_setting() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ringchat.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let e = resolve_args(&["--config", path.to_str().unwrap()], &env_of(&[])).unwrap();
        e.server_config().unwrap();
        // Every key appears, set or as a commented-out line.
        for k in keys() {
            assert!(
                text.lines().any(|l| {
                    let l = l.trim_start_matches('#').trim_start();
                    l.starts_with(&format!("{k} =")) || l.starts_with(&format!("{k}="))
                }),
                "{k} is not in ringchat.example.toml"
            );
        }
    }
}

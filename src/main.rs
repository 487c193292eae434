use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// ringchat: a shard-per-core instant-messaging server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (embedded store by default).
    Serve(Box<ServeArgs>),
    /// Import a cc_ChatServer MySQL database (users with their ids,
    /// friendships, groups, pending offline messages); run it with the
    /// server stopped. See docs/MIGRATING.md.
    ImportLegacy(ImportArgs),
    /// Line-based chat client (interactive on a terminal, scriptable on a pipe).
    Chat(ChatArgs),
    /// Bulk-create load-test users/friends/groups in the store (run before `serve`).
    Provision(ProvisionArgs),
}

#[derive(clap::Args)]
struct ProvisionArgs {
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "")]
    store: String,
    /// Users `<prefix>0 .. <prefix>N-1`.
    #[arg(long)]
    users: usize,
    #[arg(long, default_value = "lg")]
    prefix: String,
    /// The one password every provisioned user has.
    #[arg(long, default_value = "loadgen-pass")]
    password: String,
    /// Make users 2i and 2i+1 friends.
    #[arg(long)]
    friends_pairs: bool,
    /// Groups `<prefix>g<j>` of consecutive users.
    #[arg(long, default_value_t = 0)]
    groups: usize,
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Cheap argon2 parameters so benchmark logins do not measure argon2.
    #[arg(long)]
    fast_hash: bool,
}

#[derive(clap::Args)]
struct ChatArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    server: String,
    /// Log in as user:password before reading commands.
    #[arg(long, value_name = "USER:PASSWORD")]
    login: Option<String>,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The old database: mysql://user:pass@host:port/db
    #[arg(long)]
    from: String,
    /// Target store, as for `serve --store` (empty: the embedded store in --data-dir).
    #[arg(long, default_value = "")]
    store: String,
    /// Directory of the embedded store.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address every shard listens on (SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Number of shards (executors); default: one per allowed CPU.
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Directory of the embedded store.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Store to use: empty for the embedded store in --data-dir,
    /// `sqlite:PATH`, or `mysql://user:pass@host:port/db[?pool=N]`
    /// (N pooled connections, default 8; the database is created if missing).
    #[arg(long, default_value = "")]
    store: String,
    /// Largest accepted frame in bytes.
    #[arg(long, default_value_t = 65536)]
    max_frame: usize,
    /// Close connections silent for this long (clients ping at a third of it).
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
    /// io_uring ring depth per shard.
    #[arg(long, default_value_t = 2048)]
    ring_depth: usize,
    /// Locked I/O memory per shard, KiB.
    #[arg(long, default_value_t = 256)]
    io_memory_kib: usize,
    /// Blocking threads per shard for store calls (passwords are hashed on
    /// their own pool: --hash-threads).
    #[arg(long, default_value_t = 4)]
    blocking_threads: usize,
    /// Cut off a connection whose unwritten output exceeds this (slow
    /// consumer); it catches up from the store when it comes back.
    #[arg(long, default_value_t = 16384)]
    max_outbound_kib: usize,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Join a cluster through this Redis (bus and presence registry),
    /// e.g. redis://127.0.0.1:6379. Needs --node-id and a shared --store.
    #[arg(long)]
    redis: Option<String>,
    /// This node's unique name in the cluster.
    #[arg(long)]
    node_id: Option<String>,
    /// Prefix of every Redis key and channel, so clusters can share a Redis.
    #[arg(long, default_value = "ringchat:")]
    redis_prefix: String,
    /// Also serve the old cc_ChatServer JSON protocol on this address (off
    /// by default; see docs/MIGRATING.md).
    #[arg(long)]
    legacy_listen: Option<SocketAddr>,
    /// Exit (status 70) when a shard makes no progress for this many
    /// seconds, so a supervisor restarts the node instead of it staying
    /// deaf; 0 disables the watchdog.
    #[arg(long, default_value_t = 10)]
    watchdog_secs: u64,
    /// Threads that hash passwords (argon2), node-wide; 0: half the CPUs.
    /// They run at a lower priority than message traffic.
    #[arg(long, default_value_t = 0)]
    hash_threads: usize,
    /// Logins/registrations waiting for a hashing thread; beyond this they
    /// are refused at once with RateLimited (clients retry).
    #[arg(long, default_value_t = 16)]
    hash_queue: usize,
    /// Test hook: `stall:SHARD:AFTER_MS` or `panic:SHARD:AFTER_MS`.
    #[arg(long, hide = true)]
    test_fault: Option<ringchat::server::watchdog::Fault>,
    /// Chat messages per second per user, sustained (0: unlimited); beyond
    /// it sends get RateLimited with when to retry.
    #[arg(long, default_value_t = 20.0)]
    max_send_rate: f64,
    /// Messages a user may send at once above --max-send-rate.
    #[arg(long, default_value_t = 100)]
    max_send_burst: u32,
    /// Friend requests per hour per user (0: unlimited).
    #[arg(long, default_value_t = 100)]
    max_friend_requests_per_hour: u32,
    /// Live sessions per user on this node (0: unlimited); one more login
    /// gets LimitReached.
    #[arg(long, default_value_t = 16)]
    max_sessions_per_user: usize,
    /// Live groups a user may own (0: unlimited).
    #[arg(long, default_value_t = 100)]
    max_groups_per_user: usize,
    /// Members per group (0: unlimited).
    #[arg(long, default_value_t = 5000)]
    max_members_per_group: usize,
    /// Connections per source address, IPv6 per /64 (0: unlimited). Leave
    /// it off behind nginx: every client then shares nginx's address.
    #[arg(long, default_value_t = 0)]
    max_conns_per_addr: usize,
    /// Connections in total (0: the open-file limit less 1024).
    #[arg(long, default_value_t = 0)]
    max_conns: usize,
}

/// Large allocations always get their own mapping, returned on free.
///
/// argon2 allocates 19 MiB per hash on a blocking thread. glibc's default
/// mmap threshold is dynamic: after the first such block is unmapped it
/// rises to the block's size, and from then on every hash is carved from
/// the thread's malloc arena, which keeps it (interleaved small
/// allocations pin the arena's top, so it is never trimmed). Measured with
/// `bench/idle_rss.sh` (1,000 real-password logins on 2 shards): 887 MiB of
/// anonymous memory held while idle. A fixed threshold turns the dynamic
/// rule off; the cost is an mmap/munmap pair and page faults per hash,
/// small next to argon2's own 19 MiB of writes.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only adjusts allocator parameters; called before any
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() {
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Chat(a) => std::process::exit(ringchat::chat::run(ringchat::chat::ChatOptions {
            server: a.server,
            login: a.login,
        })),
        Cmd::ImportLegacy(a) => ringchat::store::open(&a.store, &a.data_dir)
            .map_err(|e| format!("opening the store: {e}"))
            .and_then(|store| ringchat::legacy::import::import(&a.from, &*store))
            .map(|r| println!("imported: {r:?}")),
        Cmd::Serve(a) => cluster_config(&a).and_then(|cluster| {
            ringchat::serve(ringchat::server::Config {
                listen: a.listen,
                shards: a.shards,
                data_dir: a.data_dir,
                store: a.store,
                max_frame: a.max_frame,
                idle_timeout: Duration::from_secs(a.idle_timeout_secs.max(1)),
                ring_depth: a.ring_depth,
                io_memory: a.io_memory_kib << 10,
                blocking_threads: a.blocking_threads.max(1),
                metrics: a.metrics,
                // At least a few frames, so a catch-up page never overflows it.
                out_limit: (a.max_outbound_kib << 10).max(4 * a.max_frame),
                cluster: cluster
                    .map(|c| c as std::sync::Arc<dyn ringchat::server::router::RouterFactory>),
                legacy_listen: a.legacy_listen,
                watchdog: Duration::from_secs(a.watchdog_secs),
                fault: a.test_fault,
                hash_threads: a.hash_threads,
                hash_queue: a.hash_queue,
                limits: ringchat::core::limits::Limits {
                    send_per_s: a.max_send_rate,
                    send_burst: a.max_send_burst,
                    friend_requests_per_hour: a.max_friend_requests_per_hour,
                    sessions_per_user: a.max_sessions_per_user,
                    groups_per_user: a.max_groups_per_user,
                    members_per_group: a.max_members_per_group,
                    conns_per_addr: a.max_conns_per_addr,
                    conns_total: a.max_conns,
                },
                ..Default::default()
            })
        }),
        Cmd::Provision(a) => ringchat::provision::run(&ringchat::provision::ProvisionSpec {
            data_dir: a.data_dir,
            store: a.store,
            users: a.users,
            prefix: a.prefix,
            password: a.password,
            friends_pairs: a.friends_pairs,
            groups: a.groups,
            group_size: a.group_size,
            fast_hash: a.fast_hash,
        })
        .map(|_| ()),
    };
    if let Err(e) = res {
        eprintln!("ringchat: {e}");
        std::process::exit(1);
    }
}

fn cluster_config(
    a: &ServeArgs,
) -> Result<Option<std::sync::Arc<ringchat::cluster::ClusterConfig>>, String> {
    match (&a.redis, &a.node_id) {
        (None, None) => Ok(None),
        (Some(url), Some(node)) => {
            if node.is_empty() || node.contains(':') {
                return Err("--node-id must be non-empty and must not contain ':'".into());
            }
            Ok(Some(std::sync::Arc::new(
                ringchat::cluster::ClusterConfig {
                    redis: ringchat::cluster::redis::parse_url(url)?,
                    node: node.clone(),
                    prefix: a.redis_prefix.clone(),
                },
            )))
        }
        _ => Err("--redis and --node-id go together".into()),
    }
}

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use ringchat::config::{LogFormat, ServeArgs};
use std::path::PathBuf;

/// ringchat: a shard-per-core instant-messaging server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (embedded store by default). Settings also come from
    /// a TOML file (--config) and RINGCHAT_* environment variables.
    Serve(Box<ServeArgs>),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Import a cc_ChatServer MySQL database (users with their ids,
    /// friendships, groups, pending offline messages); run it with the
    /// server stopped. See docs/MIGRATING.md.
    ImportLegacy(ImportArgs),
    /// Line-based chat client (interactive on a terminal, scriptable on a pipe).
    Chat(ChatArgs),
    /// Bulk-create load-test users/friends/groups in the store (run before `serve`).
    Provision(ProvisionArgs),
    /// Operator commands on a running node, through its --metrics address
    /// (see docs/DEPLOY.md, "Admin").
    Admin(AdminArgs),
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The node's metrics address (`serve --metrics`).
    #[arg(long, default_value = "127.0.0.1:9100")]
    addr: String,
    /// The admin token (visible in `ps`: prefer --token-file or the
    /// RINGCHAT_ADMIN_TOKEN environment variable).
    #[arg(long)]
    token: Option<String>,
    /// A file holding the admin token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    action: AdminAction,
}

#[derive(Subcommand)]
enum AdminAction {
    /// Users and connections online on the node.
    Online,
    /// A user's id, online state, live connections and disabled flag.
    User { name: String },
    /// Close every live connection of the user and revoke their session tokens.
    Kick { name: String },
    /// Refuse the user's logins and resumes; closes their live connections.
    Disable { name: String },
    /// Undo `disable`.
    Enable { name: String },
    /// A system message to a group (stored and delivered like any message).
    Broadcast { group: u64, text: String },
}

fn admin(a: AdminArgs) -> i32 {
    let token = match (a.token, a.token_file) {
        (Some(t), None) => t,
        (None, Some(p)) => match std::fs::read_to_string(&p) {
            Ok(t) => t.trim_end().to_string(),
            Err(e) => {
                eprintln!("ringchat admin: reading {}: {e}", p.display());
                return 2;
            }
        },
        (Some(_), Some(_)) => {
            eprintln!("ringchat admin: give --token or --token-file, not both");
            return 2;
        }
        (None, None) => match std::env::var("RINGCHAT_ADMIN_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => {
                eprintln!(
                    "ringchat admin: no token: give --token-file, --token or RINGCHAT_ADMIN_TOKEN"
                );
                return 2;
            }
        },
    };
    use ringchat::admin_cli::Action;
    let action = match a.action {
        AdminAction::Online => Action::Online,
        AdminAction::User { name } => Action::User(name),
        AdminAction::Kick { name } => Action::Kick(name),
        AdminAction::Disable { name } => Action::Disable(name),
        AdminAction::Enable { name } => Action::Enable(name),
        AdminAction::Broadcast { group, text } => Action::Broadcast { group, text },
    };
    ringchat::admin_cli::run(&ringchat::admin_cli::Options {
        addr: a.addr,
        token,
        action,
    })
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective `serve` configuration (takes the same flags,
    /// file and environment) with the source of every value:
    /// default, file, env or flag. The output is itself a valid config file.
    Print(Box<ServeArgs>),
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
    /// Cheap argon2 parameters so benchmark logins do not measure argon2
    /// (weak: needs --insecure-fast-hash-for-tests too).
    #[arg(long)]
    fast_hash: bool,
    /// Confirms that --fast-hash's weak hashes are for tests and benchmarks.
    #[arg(long)]
    insecure_fast_hash_for_tests: bool,
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The serve options of `serve` or `config print`, layered with the
/// environment and the config file (see `ringchat::config`).
fn effective(m: &ArgMatches, path: &[&str]) -> Result<ringchat::config::Effective, String> {
    let mut sub = m;
    for name in path {
        sub = sub
            .subcommand_matches(name)
            .ok_or_else(|| format!("no `{name}` subcommand"))?;
    }
    ringchat::config::resolve(sub, &|k| std::env::var(k).ok())
}

fn main() {
    tune_malloc();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if !matches!(cli.cmd, Cmd::Serve(_)) {
        init_logging(LogFormat::Text);
    }
    let res = match cli.cmd {
        Cmd::Admin(a) => std::process::exit(admin(a)),
        Cmd::Chat(a) => std::process::exit(ringchat::chat::run(ringchat::chat::ChatOptions {
            server: a.server,
            login: a.login,
        })),
        Cmd::ImportLegacy(a) => ringchat::store::open(&a.store, &a.data_dir)
            .map_err(|e| format!("opening the store: {e}"))
            .and_then(|store| ringchat::legacy::import::import(&a.from, &*store))
            .map(|r| println!("imported: {r:?}")),
        Cmd::Serve(_) => effective(&matches, &["serve"]).and_then(|eff| {
            init_logging(eff.args.log_format);
            eff.server_config().and_then(ringchat::serve)
        }),
        Cmd::Config(ConfigCmd::Print(_)) => effective(&matches, &["config", "print"])
            .and_then(|eff| eff.server_config().map(|_| print!("{}", eff.render()))),
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
            insecure_for_tests: a.insecure_fast_hash_for_tests,
        })
        .map(|_| ()),
    };
    if let Err(e) = res {
        eprintln!("ringchat: {e}");
        std::process::exit(1);
    }
}

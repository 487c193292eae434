//! Wrong-password login flood: the attacker of the security review
//! (docs/SECURITY.md, "Logins and password hashing"), for
//! `bench/login_flood.sh`, which measures what it does to *other* users.
//!
//! Each connection logs in with a wrong password again and again, as fast
//! as the server answers, spread over several source addresses (so the
//! per-address throttle is not the only thing standing) and over many
//! target accounts (so the per-account one is not either): what is left
//! to protect everyone else is the bounded hashing pool. A connection the
//! server closes is opened again. Plain threads and blocking sockets: the
//! attacker's efficiency is not what is measured.
//!
//! Prints one JSON object: attempts, replies by error code, attempts/s.

use clap::Parser;
use ringchat::wire::{self, Enc, fb};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(about = "wrong-password login flood against a ringchat server")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    server: SocketAddr,
    /// Concurrent attacking connections.
    #[arg(long, default_value_t = 48)]
    connections: usize,
    /// Source addresses 127.0.0.(100+k), k < sources, used round robin.
    #[arg(long, default_value_t = 12)]
    sources: u8,
    /// Target accounts `<prefix><i>`, i < accounts (1: one account).
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    #[arg(long, default_value = "victim")]
    prefix: String,
    #[arg(long, default_value_t = 30)]
    duration: u64,
}

type Counts = BTreeMap<String, u64>;

fn main() {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new(Counts::new()));
    let start = Instant::now();
    let threads: Vec<_> = (0..args.connections)
        .map(|i| {
            let (args, stop, counts) = (args.clone(), stop.clone(), counts.clone());
            std::thread::spawn(move || {
                let mut mine = Counts::new();
                attack(&args, i, &stop, &mut mine);
                let mut all = counts.lock().unwrap();
                for (k, v) in mine {
                    *all.entry(k).or_default() += v;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.duration));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let counts = counts.lock().unwrap();
    let attempts: u64 = counts
        .iter()
        .filter(|(k, _)| k.as_str() != "connect_failed" && k.as_str() != "closed")
        .map(|(_, v)| v)
        .sum();
    println!(
        "{}",
        serde_json::json!({
            "connections": args.connections,
            "sources": args.sources,
            "accounts": args.accounts,
            "seconds": secs,
            "attempts": attempts,
            "attempts_per_s": attempts as f64 / secs,
            "replies": *counts,
        })
    );
}

fn connect(args: &Args, i: usize) -> std::io::Result<TcpStream> {
    let k = (i % args.sources.max(1) as usize) as u8;
    let src: SocketAddr = SocketAddr::from(([127, 0, 0, 100 + k], 0));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&src.into())?;
    sock.connect_timeout(&args.server.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Sends one frame, reads one reply frame; `None` when the connection ended.
fn call(s: &mut TcpStream, frame: &[u8], buf: &mut Vec<u8>) -> Option<String> {
    s.write_all(frame).ok()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = u32::from_le_bytes(len) as usize;
    buf.clear();
    buf.extend_from_slice(&len);
    buf.resize(4 + n, 0);
    s.read_exact(&mut buf[4..]).ok()?;
    let env = wire::decode(buf).ok()?;
    Some(match env.body_as_error_reply() {
        Some(e) => wire::error_name(e.code()).to_string(),
        None => format!("{:?}", env.body_type()),
    })
}

fn attack(args: &Args, i: usize, stop: &AtomicBool, counts: &mut Counts) {
    let mut enc = Enc::new();
    let mut buf = Vec::new();
    let mut n = i;
    while !stop.load(Ordering::Relaxed) {
        let mut s = match connect(args, i) {
            Ok(s) => s,
            Err(_) => {
                *counts.entry("connect_failed".into()).or_default() += 1;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if call(&mut s, enc.hello(1, "login-flood"), &mut buf).as_deref() != Some("HelloOk") {
            *counts.entry("closed".into()).or_default() += 1;
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            n = n.wrapping_add(args.connections);
            let user = format!("{}{}", args.prefix, n % args.accounts.max(1));
            let reply = call(&mut s, enc.login(2, &user, "not-the-password-1"), &mut buf);
            match reply {
                Some(r) => {
                    if r == format!("{:?}", fb::Body::LoginOk) {
                        // A guessed password would be a finding of its own.
                        eprintln!("login-flood: {user} logged in with a wrong password!");
                    }
                    *counts.entry(r).or_default() += 1;
                }
                None => {
                    *counts.entry("closed".into()).or_default() += 1;
                    break;
                }
            }
        }
    }
}

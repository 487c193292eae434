//! `faultproxy`: the TCP proxy in front of the shared MariaDB for
//! `bench/chaos.sh`, which "stops MySQL" by making the proxy refuse and
//! reset (the machine's MariaDB is shared and never stopped).
//!
//! It replaces `bench/chaos_proxy.py`, with the same command line and
//! signals, because the Python one relayed every MySQL packet through one
//! event loop: `top` during a resume storm showed it at 23-42 % of a core
//! on a 2-core machine that had no idle time left, i.e. the fault injector
//! itself slowed the store it was supposed to cut only on command. Here a
//! connection is two threads blocked in `read`/`write` (a few dozen pooled
//! store connections in a chaos run): no event loop, no copies beyond the
//! kernel's, no cost while idle.
//!
//! ```text
//! faultproxy LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
//!   SIGUSR1  outage: stop listening (connects are refused, as from a
//!            stopped server) and reset every proxied connection (RST, what
//!            the clients of a killed mysqld see)
//!   SIGUSR2  back: listen again
//!   SIGTERM, SIGINT  exit
//! ```
//! Each state change is logged on stderr with a UTC timestamp.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// Bumped at every outage: an accept loop of an older epoch ends.
    epoch: u64,
    /// The listening socket's fd while listening (shut down to wake accept).
    listener: Option<i32>,
    /// Both sockets of every proxied connection (clones), to reset them.
    conns: Vec<(u64, TcpStream, TcpStream)>,
    next_id: u64,
    accepted: u64,
}

type Shared = Arc<Mutex<State>>;

fn log(msg: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "{}.{:03} faultproxy: {msg}",
        now.as_secs(),
        now.subsec_millis()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: faultproxy LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().expect("LISTEN_PORT");
    let upstream = format!("{}:{}", args[2], args[3]);
    // Signals go to the sigwait loop below only: block them before any
    // thread is spawned (threads inherit the mask).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let st: Shared = Arc::default();
    listen(&st, port, &upstream);
    loop {
        let mut sig = 0;
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        match sig {
            libc::SIGUSR1 => down(&st),
            libc::SIGUSR2 => {
                if st.lock().unwrap().listener.is_none() {
                    listen(&st, port, &upstream);
                    log("BACK: accepting connections again");
                }
            }
            _ => {
                let n = st.lock().unwrap().accepted;
                log(&format!("stopping ({n} connections accepted in all)"));
                return;
            }
        }
    }
}

fn listen(st: &Shared, port: u16, upstream: &str) {
    // std sets SO_REUSEADDR, so the port can be listened on again at once.
    let l = TcpListener::bind(("127.0.0.1", port)).expect("listen");
    let epoch = {
        let mut s = st.lock().unwrap();
        s.listener = Some(l.as_raw_fd());
        s.epoch
    };
    log(&format!("listening on 127.0.0.1:{port} -> {upstream}"));
    let (st, upstream) = (st.clone(), upstream.to_string());
    std::thread::spawn(move || {
        for c in l.incoming() {
            if st.lock().unwrap().epoch != epoch {
                break;
            }
            let Ok(c) = c else { continue };
            let st = st.clone();
            let upstream = upstream.clone();
            std::thread::spawn(move || relay(st, c, &upstream));
        }
        // `l` closes here: connects are refused until the next `listen`.
    });
}

fn relay(st: Shared, client: TcpStream, upstream: &str) {
    let up = match TcpStream::connect(upstream) {
        Ok(u) => u,
        Err(e) => {
            log(&format!("upstream connect failed: {e}"));
            reset(&client);
            return;
        }
    };
    for s in [&client, &up] {
        let _ = s.set_nodelay(true);
    }
    let id = {
        let mut s = st.lock().unwrap();
        s.accepted += 1;
        s.next_id += 1;
        let id = s.next_id;
        match (client.try_clone(), up.try_clone()) {
            (Ok(a), Ok(b)) => s.conns.push((id, a, b)),
            _ => return,
        }
        id
    };
    let (c2, u2) = match (client.try_clone(), up.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return,
    };
    let back = std::thread::spawn(move || pipe(u2, c2));
    pipe(client, up);
    let _ = back.join();
    st.lock().unwrap().conns.retain(|(i, _, _)| *i != id);
}

/// Copies until either side ends; then passes the end on as a FIN.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// SO_LINGER 0, so the last close sends RST (as the kernel does for the
/// connections of a dead mysqld); `shutdown(Read)` wakes the threads
/// blocked on it without sending a FIN first.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
    let _ = s.shutdown(Shutdown::Read);
}

fn down(st: &Shared) {
    let mut s = st.lock().unwrap();
    let Some(fd) = s.listener.take() else { return };
    s.epoch += 1;
    // Wakes the blocked accept (it fails), so its loop ends and closes it.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
    let n = s.conns.len();
    for (_, a, b) in s.conns.drain(..) {
        reset(&a);
        reset(&b);
    }
    log(&format!(
        "OUTAGE: listener closed (connects refused), {n} connections reset"
    ));
}

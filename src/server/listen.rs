//! One process per address and per data directory.
//!
//! Every shard accepts on its own SO_REUSEPORT socket so the kernel spreads
//! connections over shards. SO_REUSEPORT also lets a *second process* of
//! the same user join the group silently, and the kernel then splits new
//! connections between the two (seen in wave 1: half the clients of a
//! restarted server landed on a deaf old one). So the sockets are bound
//! here, on the main thread, before any shard starts, and then the kernel's
//! own table of listening sockets (`/proc/net/tcp{,6}`) is checked for a
//! listener on the same address that is not one of ours. A second ringchat
//! finds ours the same way and refuses to start; whichever of two
//! simultaneous starts looks last sees the other.
//!
//! The data directory is locked with `flock` for the life of the process,
//! so two servers never share one embedded store.

use socket2::{Domain, Protocol, Socket, Type};
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Binds `n` listening sockets to `addr` in one SO_REUSEPORT group (port 0:
/// the first socket's port for all), and fails if any other process
/// listens on the same address. Returns the sockets and the bound address.
pub fn bind_group(
    addr: SocketAddr,
    n: usize,
    what: &str,
) -> Result<(Vec<OwnedFd>, SocketAddr), String> {
    let mut socks = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n.max(1) {
        let s = bind_one(bound).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "{what} address {addr} is already in use by another process \
                     (is another ringchat running there?)"
                )
            } else {
                format!("binding the {what} address {addr}: {e}")
            }
        })?;
        if bound.port() == 0 {
            bound = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| format!("binding the {what} address {addr}: no local address"))?;
        }
        socks.push(OwnedFd::from(s));
    }
    let ours: Vec<u64> = socks.iter().filter_map(inode_of).collect();
    // A process killed a moment ago can still have a listening socket here:
    // its io_uring instance is torn down asynchronously after the process
    // is reaped, and requests it had in flight (an accept) hold the socket
    // until then. That lasts well under a second; a live server's listener
    // does not go away. So a foreign listener must persist to count.
    let deadline = std::time::Instant::now() + LINGER_GRACE;
    let foreign = loop {
        let foreign: Vec<u64> = listening_inodes(bound)
            .into_iter()
            .filter(|i| !ours.contains(i))
            .collect();
        if foreign.is_empty() || std::time::Instant::now() >= deadline {
            break foreign;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if !foreign.is_empty() {
        return Err(format!(
            "{what} address {bound} is already in use by another process \
             (is another ringchat running there?): refusing to share it, the kernel \
             would split new connections between the two"
        ));
    }
    Ok((socks, bound))
}

/// How long a foreign listener on our address may take to disappear
/// before it counts as another server (see `bind_group`).
const LINGER_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

fn bind_one(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Restarting while old connections sit in TIME_WAIT must work.
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s)
}

fn inode_of(fd: &OwnedFd) -> Option<u64> {
    // SAFETY: fstat on a valid fd into a zeroed struct we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd.as_raw_fd(), &mut st) == 0).then_some(st.st_ino)
    }
}

/// Inodes of every socket listening on `addr` (or on the wildcard address
/// of its family with the same port), from the kernel's tables.
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let path = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let Ok(table) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    parse_listeners(&table, addr)
}

/// Parses a `/proc/net/tcp{,6}` table: rows in state LISTEN (0A) whose
/// local address is `addr` or the wildcard with `addr`'s port.
fn parse_listeners(table: &str, addr: SocketAddr) -> Vec<u64> {
    let want_ip = proc_hex_ip(addr.ip());
    let wild = proc_hex_ip(match addr {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    });
    let port = format!("{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            let (ip, p) = local.split_once(':')?;
            let matches = *state == "0A" && p == port && (ip == want_ip || ip == wild);
            matches.then(|| inode.parse().ok()).flatten()
        })
        .collect()
}

/// An address as the kernel prints it in /proc/net/tcp: each 32-bit word
/// in host (little-endian) byte order, as hex.
fn proc_hex_ip(ip: std::net::IpAddr) -> String {
    let bytes: Vec<u8> = match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes
        .chunks(4)
        .map(|w| {
            let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            format!("{v:08X}")
        })
        .collect()
}

/// Holds an exclusive `flock` on `<dir>/ringchat.lock` (created with the
/// directory if missing) for as long as the returned file lives.
pub fn lock_data_dir(dir: &Path) -> Result<File, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("creating data dir {}: {e}", dir.display()))?;
    let path = dir.join("ringchat.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
            format!(
                "data dir {} is in use by another ringchat process (lock {} is held)",
                dir.display(),
                path.display()
            )
        } else {
            format!("locking {}: {err}", path.display())
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listeners_of_the_kernel_table() {
        // Real rows (header + 127.0.0.1:7300 LISTEN, 0.0.0.0:7300 LISTEN,
        // 127.0.0.1:7300 ESTABLISHED, 127.0.0.1:7301 LISTEN).
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1C84 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 00000000:1C84 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0\n\
   2: 0100007F:1C84 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0\n\
   3: 0100007F:1C85 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0 100 0 0 10 0\n";
        let addr: SocketAddr = "127.0.0.1:7300".parse().unwrap();
        assert_eq!(parse_listeners(table, addr), vec![111, 222]);
    }

    #[test]
    fn a_second_group_on_the_same_address_is_refused() {
        let (ours, addr) = bind_group("127.0.0.1:0".parse().unwrap(), 2, "test").unwrap();
        assert_eq!(ours.len(), 2);
        assert_ne!(addr.port(), 0);
        let err = bind_group(addr, 2, "test").unwrap_err();
        assert!(err.contains("already in use"), "{err}");
    }

    #[test]
    fn the_data_dir_lock_is_exclusive() {
        let dir = std::env::temp_dir().join(format!("ringchat-lock-{}", std::process::id()));
        let first = lock_data_dir(&dir).unwrap();
        let err = lock_data_dir(&dir).unwrap_err();
        assert!(err.contains("in use by another ringchat"), "{err}");
        drop(first);
        assert!(lock_data_dir(&dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

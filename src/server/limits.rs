//! The node's limits: connection caps at accept, per-user rates on the
//! home shard, and the counters of every refusal (`ringchat_limited_total`).
//!
//! The rules are `core::limits` (sans IO); this holds the node-wide state:
//! connection counts per source address and in total (one mutex, touched
//! once per accepted and per closed connection, never per message) and the
//! refusal counters (atomics, touched only when something is refused).
//! Per-user rates need no lock: a user's requests all run on their home
//! shard, which keeps the buckets (`Shard::rates`).

use crate::core::limits::{Limits, RateTable};
use crate::model::UserId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What was refused, for the metric's `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Send = 0,
    FriendRequest = 1,
    Sessions = 2,
    Groups = 3,
    Members = 4,
    ConnsPerAddr = 5,
    ConnsTotal = 6,
    Typing = 7,
}

const KINDS: [(&str, Kind); 8] = [
    ("send", Kind::Send),
    ("friend_request", Kind::FriendRequest),
    ("sessions", Kind::Sessions),
    ("groups", Kind::Groups),
    ("members", Kind::Members),
    ("conns_per_addr", Kind::ConnsPerAddr),
    ("conns_total", Kind::ConnsTotal),
    ("typing", Kind::Typing),
];

/// Descriptors kept free for the store, the data dir, the metrics and
/// cluster sockets when the total connection cap is derived from the
/// open-file limit.
pub const FD_RESERVE: usize = 1024;

#[derive(Debug)]
pub struct NodeLimits {
    pub cfg: Limits,
    /// The total connection cap in force (`cfg.conns_total`, or derived).
    pub conns_total: usize,
    refused: [AtomicU64; 8],
    conns: Mutex<Conns>,
}

#[derive(Debug, Default)]
struct Conns {
    total: usize,
    per_addr: HashMap<IpAddr, usize>,
}

/// One connection counted against its source address and the total;
/// released on drop, wherever the connection ends (it travels with the
/// socket to the user's home shard).
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<NodeLimits>,
    key: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.limits.conns.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_addr.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_addr.remove(&self.key);
            }
        }
    }
}

/// The address a per-source limit counts against: IPv4 addresses (also when
/// mapped into IPv6) one by one, IPv6 by /64, the smallest block a single
/// host is usually given.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

/// The process's open-file limit (soft), if it can be read.
fn nofile_limit() -> Option<usize> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur as usize)
}

impl NodeLimits {
    pub fn new(cfg: Limits) -> Arc<NodeLimits> {
        let conns_total = match cfg.conns_total {
            0 => nofile_limit()
                .map(|n| n.saturating_sub(FD_RESERVE).max(64))
                .unwrap_or(0),
            n => n,
        };
        Arc::new(NodeLimits {
            cfg,
            conns_total,
            refused: Default::default(),
            conns: Mutex::new(Conns::default()),
        })
    }

    /// Counts a refusal.
    pub fn refused(&self, k: Kind) {
        self.refused[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusals(&self, k: Kind) -> u64 {
        self.refused[k as usize].load(Ordering::Relaxed)
    }

    /// Admits one more connection from `ip`, or says why not (and counts it).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, String> {
        let key = source_key(ip);
        let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if crate::core::limits::over(c.total, self.conns_total) {
            drop(c);
            self.refused(Kind::ConnsTotal);
            return Err(format!(
                "server full: {} connections; try again later",
                self.conns_total
            ));
        }
        let n = c.per_addr.get(&key).copied().unwrap_or(0);
        if crate::core::limits::over(n, self.cfg.conns_per_addr) {
            drop(c);
            self.refused(Kind::ConnsPerAddr);
            return Err(format!(
                "too many connections from your address (at most {})",
                self.cfg.conns_per_addr
            ));
        }
        c.total += 1;
        *c.per_addr.entry(key).or_insert(0) += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            key,
        })
    }

    /// Appends `ringchat_limited_total{kind}` to a Prometheus page.
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP ringchat_limited_total requests and connections refused by a limit\n\
             # TYPE ringchat_limited_total counter\n",
        );
        for (name, k) in KINDS {
            out.push_str(&format!(
                "ringchat_limited_total{{kind=\"{name}\"}} {}\n",
                self.refusals(k)
            ));
        }
    }
}

/// A shard's per-user rate buckets (users homed on it).
#[derive(Debug)]
pub struct Rates {
    pub send: RateTable<UserId>,
    pub friend_requests: RateTable<UserId>,
    pub typing: RateTable<UserId>,
}

/// Buckets kept per shard at most (each a few dozen bytes).
const MAX_BUCKETS: usize = 200_000;

impl Rates {
    pub fn new(l: &Limits) -> Rates {
        Rates {
            send: RateTable::new(l.send_per_s, l.send_burst, MAX_BUCKETS),
            friend_requests: RateTable::new(
                l.friend_requests_per_hour as f64 / 3600.0,
                l.friend_requests_per_hour,
                MAX_BUCKETS,
            ),
            typing: RateTable::new(l.typing_per_s, l.typing_burst, MAX_BUCKETS),
        }
    }

    /// Forgets full buckets (they carry no information).
    pub fn prune(&mut self, now_ms: u64) {
        self.send.prune(now_ms);
        self.friend_requests.prune(now_ms);
        self.typing.prune(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_address_and_in_total_and_released() {
        let l = NodeLimits::new(Limits {
            conns_per_addr: 2,
            conns_total: 3,
            ..Limits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.admit(a).unwrap();
        let _s2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_err(), "third from one address");
        assert_eq!(l.refusals(Kind::ConnsPerAddr), 1);
        let _s3 = l.admit(b).unwrap();
        assert!(l.admit(b).is_err(), "fourth in total");
        assert_eq!(l.refusals(Kind::ConnsTotal), 1);
        drop(s1);
        assert!(l.admit(b).is_ok(), "a closed connection frees its slot");
    }

    #[test]
    fn sources_are_counted_per_address_and_per_ipv6_64() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("10.0.0.1"), k("::ffff:10.0.0.1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
    }

    #[test]
    fn the_total_defaults_to_the_open_file_limit_less_a_reserve() {
        let l = NodeLimits::new(Limits::default());
        if let Some(n) = nofile_limit() {
            assert_eq!(l.conns_total, n.saturating_sub(FD_RESERVE).max(64));
        }
        let mut page = String::new();
        l.render(&mut page);
        assert!(page.contains("ringchat_limited_total{kind=\"send\"} 0"));
    }
}

//! Worker → parent protocol over the worker's stdout (parent → worker is
//! one `GO <t0>` line on stdin). Text lines, except the histograms, which
//! travel in hdrhistogram's V2 format right after the `RESULT` header so
//! the parent merges exact distributions rather than percentiles.
//!
//! - `PROGRESS live sent acked delivered ack_p99_us e2e_p99_us reconnects losses conn_failures`
//! - `LOGINFAIL <code>=<count> ...`: refused logins/resumes so far, by code
//! - `READY live`
//! - `WINDOW <ack bytes> <e2e bytes> <login bytes>` + payloads: latencies
//!   recorded since the previous `WINDOW` (every second)
//! - `RESULT <json bytes> <ack bytes> <e2e bytes> <login bytes> <resume bytes>` + payloads

use crate::worker::new_hist;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use std::io::{BufRead, Write};

#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub struct WorkerResult {
    pub worker: usize,
    pub connections: u64,
    pub conn_failures: u64,
    pub ramp_us: u64,
    pub storm_us: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Same as `duplicated` (messages a device showed twice).
    pub duplicated_shown: u64,
    /// Arrivals of something already shown that the device had no reason
    /// to get again: dropped, as the protocol says (not in `duplicated`).
    pub duplicate_arrivals: u64,
    pub out_of_order: u64,
    /// Sends that never got a SendOk (nor an error) before the drain ended.
    pub unacked: u64,
    /// (conv, seq) seen by recipients whose SendOk never arrived.
    pub unacked_delivered: u64,
    pub send_errors: u64,
    /// Messages from earlier runs (catch-up of old traffic), ignored.
    pub stale: u64,
    pub elapsed_us: u64,
    pub errors: Vec<(String, u64)>,
    pub timeline: Vec<[u64; 3]>,
    /// Sessions lost (closed/reset by the other side) and reconnected.
    pub losses: u64,
    pub reconnects: u64,
    pub reconnect_failures: u64,
    pub resent: u64,
    pub resend_deduped: u64,
    pub resent_timeout: u64,
    /// Expected re-arrivals (fill replies, resume replays), dropped.
    pub redelivered: u64,
    pub gaps: u64,
    pub history_fills: u64,
    /// Received but never shown at the end (above a gap never filled).
    pub held_back: u64,
    pub unavailable_max_us: u64,
    pub login_failures: Vec<(String, u64)>,
    /// (µs since GO, kind, count).
    pub events: Vec<(i64, String, u64)>,
    /// Sends answered `Internal` and retried (same client_msg_id).
    #[serde(default)]
    pub internal_retries: u64,
    /// Per reconnect: (loss, µs since GO; loss → SyncDone, µs).
    #[serde(default)]
    pub resumes: Vec<(i64, u64)>,
    /// Per second of scheduled send time: [acked, slow, longest wait µs].
    #[serde(default)]
    pub ack_slow: Vec<[u64; 3]>,
    #[serde(skip, default = "new_hist")]
    pub ack: Histogram<u64>,
    #[serde(skip, default = "new_hist")]
    pub e2e: Histogram<u64>,
    #[serde(skip, default = "new_hist")]
    pub login: Histogram<u64>,
    #[serde(skip, default = "new_hist")]
    pub resume: Histogram<u64>,
}

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

/// Progress fields, in order (see the module doc).
pub const PROGRESS_FIELDS: usize = 9;

pub fn send_progress(v: &[u64; PROGRESS_FIELDS]) {
    let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    let _ = writeln!(out(), "PROGRESS {}", s.join(" "));
    let _ = out().flush();
}

pub fn send_login_failures<'a>(m: impl IntoIterator<Item = (&'a String, &'a u64)>) {
    let s: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out(), "LOGINFAIL {}", s.join(" "));
    let _ = out().flush();
}

pub fn send_ready(live: u64) {
    let _ = writeln!(out(), "READY {live}");
    let _ = out().flush();
}

fn ser(h: &Histogram<u64>) -> Vec<u8> {
    let mut v = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut v)
        .expect("in-memory serialize");
    v
}

/// Latencies recorded since the previous call (ack, e2e, login).
pub fn send_window(h: &[Histogram<u64>; 3]) {
    let b: Vec<Vec<u8>> = h.iter().map(ser).collect();
    let mut o = out();
    let _ = writeln!(o, "WINDOW {} {} {}", b[0].len(), b[1].len(), b[2].len());
    for x in &b {
        let _ = o.write_all(x);
    }
    let _ = o.flush();
}

pub fn send_result(r: &WorkerResult) {
    let j = serde_json::to_vec(r).expect("serializable");
    let (a, e, l, m) = (ser(&r.ack), ser(&r.e2e), ser(&r.login), ser(&r.resume));
    let mut o = out();
    let _ = writeln!(
        o,
        "RESULT {} {} {} {} {}",
        j.len(),
        a.len(),
        e.len(),
        l.len(),
        m.len()
    );
    for b in [&j, &a, &e, &l, &m] {
        let _ = o.write_all(b);
    }
    let _ = o.flush();
}

pub enum Msg {
    Progress([u64; PROGRESS_FIELDS]),
    LoginFailures(Vec<(String, u64)>),
    Ready(u64),
    Window(Box<[Histogram<u64>; 3]>),
    Result(Box<WorkerResult>),
}

/// Reads the next message from a worker; `None` at EOF or garbage.
pub fn read_msg(r: &mut impl BufRead) -> Option<Msg> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let mut it = line.split_whitespace();
        let nums = |it: std::str::SplitWhitespace<'_>| -> Vec<u64> {
            it.filter_map(|s| s.parse().ok()).collect()
        };
        match it.next() {
            Some("PROGRESS") => {
                let v = nums(it);
                let mut a = [0u64; PROGRESS_FIELDS];
                for (d, s) in a.iter_mut().zip(v) {
                    *d = s;
                }
                return Some(Msg::Progress(a));
            }
            Some("LOGINFAIL") => {
                let v = it
                    .filter_map(|kv| {
                        let (k, n) = kv.split_once('=')?;
                        Some((k.to_string(), n.parse().ok()?))
                    })
                    .collect();
                return Some(Msg::LoginFailures(v));
            }
            Some("READY") => return Some(Msg::Ready(nums(it).first().copied().unwrap_or(0))),
            Some("WINDOW") => {
                let v = nums(it);
                if v.len() != 3 {
                    return None;
                }
                let mut d = Deserializer::new();
                let mut hs = [new_hist(), new_hist(), new_hist()];
                for (h, n) in hs.iter_mut().zip(v) {
                    let mut b = vec![0u8; n as usize];
                    r.read_exact(&mut b).ok()?;
                    *h = d.deserialize(&mut &b[..]).ok()?;
                }
                return Some(Msg::Window(Box::new(hs)));
            }
            Some("RESULT") => {
                let v = nums(it);
                if v.len() != 5 {
                    return None;
                }
                let mut bufs = Vec::new();
                for n in v {
                    let mut b = vec![0u8; n as usize];
                    r.read_exact(&mut b).ok()?;
                    bufs.push(b);
                }
                let mut res: WorkerResult = serde_json::from_slice(&bufs[0]).ok()?;
                let mut d = Deserializer::new();
                res.ack = d.deserialize(&mut &bufs[1][..]).ok()?;
                res.e2e = d.deserialize(&mut &bufs[2][..]).ok()?;
                res.login = d.deserialize(&mut &bufs[3][..]).ok()?;
                res.resume = d.deserialize(&mut &bufs[4][..]).ok()?;
                return Some(Msg::Result(Box::new(res)));
            }
            _ => continue,
        }
    }
}

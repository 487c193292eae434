//! Worker → parent protocol over the worker's stdout (parent → worker is
//! one `GO <t0>` line on stdin). Text lines, except the histograms, which
//! travel in hdrhistogram's V2 format right after the `RESULT` header so
//! the parent merges exact distributions rather than percentiles.
//!
//! - `PROGRESS live sent acked delivered ack_p99_us e2e_p99_us`
//! - `READY live`
//! - `WINDOW <ack bytes> <e2e bytes> <login bytes>` + payloads: latencies
//!   recorded since the previous `WINDOW` (only with `--window-report`)
//! - `RESULT <json bytes> <ack bytes> <e2e bytes> <login bytes>` + payloads

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
    #[serde(skip, default = "new_hist")]
    pub ack: Histogram<u64>,
    #[serde(skip, default = "new_hist")]
    pub e2e: Histogram<u64>,
    #[serde(skip, default = "new_hist")]
    pub login: Histogram<u64>,
}

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

pub fn send_progress(live: u64, sent: u64, acked: u64, delivered: u64, ack99: u64, e2e99: u64) {
    let _ = writeln!(
        out(),
        "PROGRESS {live} {sent} {acked} {delivered} {ack99} {e2e99}"
    );
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
    let (a, e, l) = (ser(&r.ack), ser(&r.e2e), ser(&r.login));
    let mut o = out();
    let _ = writeln!(o, "RESULT {} {} {} {}", j.len(), a.len(), e.len(), l.len());
    for b in [&j, &a, &e, &l] {
        let _ = o.write_all(b);
    }
    let _ = o.flush();
}

pub enum Msg {
    Progress([u64; 6]),
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
                let mut a = [0u64; 6];
                for (d, s) in a.iter_mut().zip(v) {
                    *d = s;
                }
                return Some(Msg::Progress(a));
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
                if v.len() != 4 {
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
                return Some(Msg::Result(Box::new(res)));
            }
            _ => continue,
        }
    }
}

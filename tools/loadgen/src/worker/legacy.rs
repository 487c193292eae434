//! `--protocol legacy`: the same scenarios over the cc_ChatServer JSON
//! protocol (one compact object + NUL per write; see docs/MIGRATING.md).
//!
//! The legacy protocol has no acknowledgement for chat messages (msgid 5
//! and 9), so only end-to-end latency (scheduled send → delivered) is
//! measured. Delivery is checked with a per-sender sequence number carried
//! in the message text: `lg <run> <sched µs> <stream> <n> xxx…`, where
//! `stream` = 2 × sender index (+1 for group messages). A message counts as
//! expected once it was queued for writing; `lost` = expected recipients
//! that never saw it, `duplicated` = extra sightings, `out_of_order` = a
//! lower `n` seen after a higher one on the same stream.
//!
//! Users are logged in by numeric id (the legacy login has no name): user
//! `<prefix><i>` is id `--id-base + i` (ringchat provision on a fresh store
//! assigns ids 1, 2, … in order, so the default is 1), or the id given in
//! `--id-map`. The login reply's `name` is checked against the expected
//! name, so a wrong mapping fails loudly instead of measuring the wrong
//! users. Friend and group ids come from the login reply itself.

use super::*;
use ringchat::legacy::codec::{Split, Splitter, format_time};
use serde_json::{Map, Value, json};

const ID_MISMATCH: &str =
    "legacy login reply names another user than expected (wrong --id-base / --id-map)";

/// Legacy user id of worker-local connection `idx`.
fn user_id(w: &Worker, idx: usize) -> u64 {
    let i = w.base + idx;
    match &w.id_map {
        Some(m) => m.get(i).copied().unwrap_or(0),
        None => w.args.id_base + i as u64,
    }
}

fn name(w: &Worker, idx: usize) -> String {
    format!("{}{}", w.args.prefix, w.base + idx)
}

/// Reads `--id-map`: lines `name id` (or `id name`); returns ids by user index.
pub fn read_id_map(path: &std::path::Path, prefix: &str) -> Result<Vec<u64>, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut v: Vec<u64> = Vec::new();
    for line in s.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 2 {
            continue;
        }
        let (n, id) = match (f[0].parse::<u64>(), f[1].parse::<u64>()) {
            (Err(_), Ok(id)) => (f[0], id),
            (Ok(id), Err(_)) => (f[1], id),
            _ => continue,
        };
        let Some(i) = n.strip_prefix(prefix).and_then(|r| r.parse::<usize>().ok()) else {
            continue;
        };
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] = id;
    }
    Ok(v)
}

fn frame(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(0);
    b
}

/// One object per write, never more: the old server reads one request per
/// read and does not cope with coalesced objects.
async fn writer(conn: Rc<Conn>, stream: Shared) {
    let mut w = Half(stream.clone());
    loop {
        let next = conn.lq.borrow_mut().pop_front();
        let Some(obj) = next else {
            if conn.closing.get() {
                break;
            }
            conn.ready.wait().await;
            continue;
        };
        if w.write_all(&obj).await.is_err() {
            break;
        }
    }
    conn.closing.set(true);
    use std::os::fd::AsRawFd;
    let fd = stream.borrow().as_raw_fd();
    // SAFETY: fd is owned by the live stream; shutdown wakes the reader.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

fn push(conn: &Conn, obj: Vec<u8>) {
    conn.lq.borrow_mut().push_back(obj);
    conn.ready.notify();
}

/// Entries of a login reply list: old servers send JSON strings, accept objects too.
fn entries(o: &Map<String, Value>, key: &str) -> Vec<Map<String, Value>> {
    let Some(Value::Array(a)) = o.get(key) else {
        return Vec::new();
    };
    a.iter()
        .filter_map(|e| match e {
            Value::Object(m) => Some(m.clone()),
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => Some(m),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Connects, logs in (msgid 1), then reads pushes until closed.
pub(super) async fn conn_task(w: Rc<Worker>, idx: usize) {
    let conn = w.conns[idx].clone();
    conn.closing.set(false);
    conn.finished.set(false);
    let permit = w.gate.acquire_permit(1).await.ok();
    let t0 = mono_us();
    let stream = match start_connect(w.src_ip, w.server) {
        Ok(s) => s,
        Err(e) => {
            fail(&w, idx, &format!("connect: {e}"));
            return;
        }
    };
    if let Err(e) = connected(&stream).await {
        fail(&w, idx, &format!("connect: {e}"));
        return;
    }
    let stream = Rc::new(RefCell::new(stream));
    conn.lq.borrow_mut().clear();
    let id = user_id(&w, idx);
    conn.user_id.set(id);
    push(
        &conn,
        frame(&json!({"msgid": 1, "id": id, "password": w.args.password})),
    );
    let wr = glommio::spawn_local(writer(conn.clone(), stream.clone()));
    let mut rd = Half(stream.clone());
    let mut sp = Splitter::new(256 << 20);
    let mut buf = vec![0u8; 16384];
    let mut permit = permit;
    'outer: loop {
        loop {
            match sp.next_object() {
                Split::Object(o) => {
                    if !handle(&w, &conn, idx, &o) {
                        break 'outer;
                    }
                    if permit.is_some() && conn.live.get() {
                        permit = None;
                        w.stats.borrow_mut().live += 1;
                        w.login.borrow_mut().record(mono_us() - t0).ok();
                    }
                }
                Split::NeedMore => break,
                Split::Garbage(e) => {
                    w.note_error(&format!("legacy stream: {e}"));
                    break 'outer;
                }
            }
        }
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => sp.push(&buf[..n]),
        }
    }
    if permit.is_some() && !conn.closing.get() {
        w.stats.borrow_mut().conn_failures += 1;
    }
    drop(permit);
    if conn.live.replace(false) {
        w.stats.borrow_mut().live -= 1;
    }
    conn.close();
    wr.await;
    conn.finished.set(true);
    conn.done.notify();
}

fn handle(w: &Rc<Worker>, conn: &Rc<Conn>, idx: usize, o: &Map<String, Value>) -> bool {
    let now = mono_us();
    let msgid = o.get("msgid").and_then(Value::as_i64).unwrap_or(-1);
    let errno = o.get("errno").and_then(Value::as_i64);
    let errmsg = o.get("errmsg").and_then(Value::as_str).unwrap_or("");
    match (msgid, errno) {
        (2, Some(0)) => {
            let want = name(w, idx);
            let got = o.get("name").and_then(Value::as_str).unwrap_or("");
            if got != want {
                if !w.stats.borrow().errors.contains_key(ID_MISMATCH) {
                    eprintln!(
                        "loadgen: id {} logged in as `{got}`, expected `{want}`",
                        conn.user_id.get()
                    );
                }
                w.note_error(ID_MISMATCH);
                return false;
            }
            let peer = format!("{}{}", w.args.prefix, w.base + partner(idx));
            for f in entries(o, "friends") {
                if f.get("name").and_then(Value::as_str) == Some(peer.as_str()) {
                    conn.partner_id
                        .set(f.get("id").and_then(Value::as_u64).unwrap_or(0));
                }
            }
            let gp = format!("{}g", w.args.prefix);
            for g in entries(o, "groups") {
                let n = g.get("groupname").and_then(Value::as_str).unwrap_or("");
                if n.starts_with(&gp) {
                    conn.group_id
                        .set(g.get("id").and_then(Value::as_u64).unwrap_or(0));
                }
            }
            match w.args.scenario {
                Scenario::Direct | Scenario::Mixed if conn.partner_id.get() == 0 => w.note_error(
                    "user's partner is not in its friends (run provision --friends-pairs)",
                ),
                Scenario::Group | Scenario::Mixed if conn.group_id.get() == 0 => w.note_error(
                    "user is in no provisioned group (run ringchat provision --groups)",
                ),
                _ => {}
            }
            w.stats.borrow_mut().connected += 1;
            conn.live.set(true);
            true
        }
        // errno 3: the server's password-hashing queue is full; like the
        // native RateLimited, retry on the same connection with back-off.
        (2, Some(3)) if conn.auth_retries.get() < super::AUTH_RETRIES => {
            let n = conn.auth_retries.get();
            conn.auth_retries.set(n + 1);
            w.note_error("legacy login busy (retried)");
            let ms = (20u64 << n.min(6)).min(1000) + mono_us() % 20;
            let (c, id, pw) = (conn.clone(), conn.user_id.get(), w.args.password.clone());
            glommio::spawn_local(async move {
                glommio::timer::sleep(std::time::Duration::from_millis(ms)).await;
                if !c.closing.get() {
                    push(&c, frame(&json!({"msgid": 1, "id": id, "password": pw})));
                }
            })
            .detach();
            true
        }
        (2, e) => {
            w.note_error(&format!("legacy login errno {e:?}: {errmsg}"));
            false
        }
        (5 | 9, Some(e)) => {
            w.stats.borrow_mut().send_errors += 1;
            w.note_error(&format!("legacy msgid {msgid} errno {e}: {errmsg}"));
            true
        }
        (5 | 9, None) => {
            let body = o.get("msg").and_then(Value::as_str).unwrap_or("");
            let tag = format!("lg {} ", w.run);
            let Some(rest) = body.strip_prefix(&tag) else {
                w.stats.borrow_mut().stale += 1;
                return true;
            };
            let mut it = rest.split(' ').map(|s| s.parse::<u64>().ok());
            let (Some(Some(sched)), Some(Some(stream)), Some(Some(n))) =
                (it.next(), it.next(), it.next())
            else {
                w.note_error("legacy message with a malformed loadgen tag");
                return true;
            };
            w.e2e
                .borrow_mut()
                .saturating_record(now.saturating_sub(sched).max(1));
            w.stats.borrow_mut().delivered += 1;
            w.tick(2);
            {
                let mut ls = conn.last_seq.borrow_mut();
                let last = ls.entry(stream).or_default();
                if n < *last {
                    w.stats.borrow_mut().out_of_order += 1;
                } else {
                    *last = n;
                }
            }
            {
                let mut ledger = w.ledger.borrow_mut();
                let e = ledger.entries.entry((stream, n)).or_default();
                e.delivered += 1;
            }
            // Closed loop: a direct message from a connection of this
            // worker arrived, so its sender may send the next one.
            let from = (stream / 2) as usize;
            if w.args.closed_loop.is_some()
                && stream % 2 == 0
                && from < w.conns.len()
                && w.conns[from].live.get()
                && now < w.closed_end.get()
            {
                send_one(w, from, false, mono_us());
            }
            true
        }
        _ => true,
    }
}

/// Open-loop sender (as the native one): message `i` is scheduled at
/// `go + i/rate` on the next live connection, round robin; each connection
/// writes its objects one per write, in order. With `--closed-loop N` every
/// live connection starts N messages instead, and each delivery makes its
/// sender send the next (see `handle`) until `end`.
pub(super) async fn sender(w: Rc<Worker>, rate: f64, go: u64, end: u64) {
    if let Some(depth) = w.args.closed_loop {
        w.closed_end.set(end);
        for idx in 0..w.conns.len() {
            if w.conns[idx].live.get() {
                for _ in 0..depth {
                    send_one(&w, idx, false, mono_us());
                }
            }
        }
        while mono_us() < end {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        return;
    }
    if rate <= 0.0 || w.conns.is_empty() {
        return;
    }
    let n = w.conns.len();
    let mut i: u64 = 0;
    let mut next_conn = 0usize;
    loop {
        let now = mono_us();
        if now >= end {
            break;
        }
        let due = ((now - go) as f64 * rate / 1e6) as u64 + 1;
        while i < due {
            let sched = go + (i as f64 * 1e6 / rate) as u64;
            if sched >= end {
                break;
            }
            let mut tries = 0;
            let idx = loop {
                let c = next_conn;
                next_conn = (next_conn + 1) % n;
                tries += 1;
                if w.conns[c].live.get() || tries > n {
                    break c;
                }
            };
            let group = match w.args.scenario {
                Scenario::Group => true,
                Scenario::Mixed => i % 5 == 4,
                _ => false,
            };
            send_one(&w, idx, group, sched);
            i += 1;
        }
        glommio::timer::sleep(Duration::from_micros(500)).await;
    }
}

/// Queues one chat message from connection `idx` (to its partner, or to its
/// group), stamped with `sched` (µs, the latency's start).
fn send_one(w: &Worker, idx: usize, group: bool, sched: u64) {
    let conn = &w.conns[idx];
    let stream = (idx as u64) * 2 + group as u64;
    let k = group as usize;
    let mut seqs = conn.legacy_seq.get();
    seqs[k] += 1;
    conn.legacy_seq.set(seqs);
    let seq = seqs[k];
    let mut body = format!("lg {} {} {} {} ", w.run, sched, stream, seq);
    while body.len() < w.args.body_size {
        body.push('x');
    }
    let me = conn.user_id.get();
    let time = format_time(ringchat::model::now_ms());
    let sendname = name(w, idx);
    let (obj, exp) = if group {
        (
            json!({"msgid": 9, "id": me, "from": me, "groupid": conn.group_id.get(),
                   "msg": body, "sendname": sendname, "time": time}),
            w.args.group_size.saturating_sub(1) as u32,
        )
    } else {
        (
            json!({"msgid": 5, "from": me, "to": conn.partner_id.get(),
                   "msg": body, "sendname": sendname, "time": time}),
            1,
        )
    };
    {
        let mut ledger = w.ledger.borrow_mut();
        let es = &mut ledger.entries;
        let e = es.entry((stream, seq)).or_default();
        e.expected = exp;
        e.acked = true;
    }
    push(conn, frame(&obj));
    w.stats.borrow_mut().sent += 1;
    w.tick(0);
}

//! The WebSocket listener (`--ws-listen`), over real sockets: the native
//! protocol inside binary messages, the HTTP side (upgrade, origin, the web
//! client's files), close codes for protocol breaches, and WebSocket and
//! TCP users talking to each other.

mod common;

use common::*;
use ringchat::client::Event;
use ringchat::wire::ws::{self, Role};
use ringchat::wire::{self, Enc, fb};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// What a raw WebSocket connection received.
#[derive(Debug, PartialEq)]
enum Got {
    /// A native frame: its body type, req_id and Pong nonce if any.
    Frame(fb::Body, u64, Option<u64>),
    /// A control frame (opcode, payload).
    Control(u8, Vec<u8>),
    /// The server closed the TCP connection.
    Eof,
}

/// A hand-driven WebSocket client: the upgrade and frames written here,
/// received frames parsed by hand (server frames are unmasked), so the
/// test sees exactly what the server sends.
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
    enc: Enc,
}

fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

impl RawWs {
    fn connect(addr: SocketAddr) -> RawWs {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(upgrade_request("").as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        buf.drain(..end);
        RawWs {
            s,
            buf,
            enc: Enc::new(),
        }
    }

    fn send_native(&mut self, frame: &[u8]) {
        let mut out = Vec::new();
        ws::encode_binary(Role::Client, frame, &mut out);
        self.s.write_all(&out).unwrap();
    }

    fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next server frame, parsed by hand.
    fn next(&mut self) -> Got {
        loop {
            if let Some((op, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                if op == 2 {
                    let env = wire::decode(&payload).expect("a verifiable native frame");
                    return Got::Frame(
                        env.body_type(),
                        env.req_id(),
                        env.body_as_pong().map(|p| p.nonce()),
                    );
                }
                return Got::Control(op, payload);
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return Got::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Skips native frames until the first of `body`.
    fn until(&mut self, body: fb::Body) -> Got {
        loop {
            match self.next() {
                Got::Frame(b, ..) if b != body => {}
                g => return g,
            }
        }
    }

    /// Expects a Close frame with `code`, then the end of the connection.
    fn expect_close(&mut self, code: u16) {
        loop {
            match self.next() {
                Got::Frame(..) => {}
                Got::Control(8, p) => {
                    assert_eq!(
                        u16::from_be_bytes([p[0], p[1]]),
                        code,
                        "close payload {p:?}"
                    );
                    break;
                }
                g => panic!("expected a close frame {code}, got {g:?}"),
            }
        }
        assert_eq!(self.next(), Got::Eof, "the server closes after its Close");
    }
}

/// (opcode, payload, bytes used) of one whole unmasked frame.
fn parse_server_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
    assert_eq!(b[0] & 0x80, 0x80, "server sends whole messages");
    let (len, at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (b.len() >= at + len).then(|| (b[0] & 0x0f, b[at..at + len].to_vec(), at + len))
}

/// A client frame with explicit bits (masked, as clients must).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9, 8, 7, 6];
    let mut v = vec![first];
    assert!(payload.len() < 126);
    v.push(0x80 | payload.len() as u8);
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    v
}

#[test]
fn websocket_and_tcp_users_chat_both_ways_with_presence() {
    let s = TestServer::start_ws(&[]);
    // The WebSocket user, through the same client library.
    let wc = s.ws_client();
    let wname = uname("ws");
    let wid = wc.register(&wname, PASSWORD).unwrap();
    login_synced(&wc, &wname);
    let w = User {
        id: wid,
        name: wname,
        session: wc.session().unwrap(),
        c: wc,
    };
    let t = s.user(&uname("tcp"));
    befriend(&w, &t);
    for i in 0..20 {
        w.send_direct(t.id, &format!("ws->tcp {i}")).unwrap();
        t.send_direct(w.id, &format!("tcp->ws {i}")).unwrap();
    }
    for (rx, want) in [(&t, "ws->tcp"), (&w, "tcp->ws")] {
        for i in 0..20 {
            let m = wait_msg(rx, want);
            assert_eq!(m.body, format!("{want} {i}"), "in order, once");
        }
    }
    // Presence crosses protocols: the WebSocket user leaving is seen by TCP.
    w.close();
    wait(
        &t.c,
        "the ws user offline",
        |e| matches!(e, Event::Presence { user_id, online: false } if *user_id == w.id),
    );
}

#[test]
fn a_websocket_device_resumes_and_gets_what_it_missed_once() {
    let s = TestServer::start_ws(&[]);
    let t = s.user(&uname("tcp"));
    // Several users so that both a login on the accepting shard and one
    // handed to another shard (2 shards) are exercised.
    for n in 0..4 {
        let wc = s.ws_client();
        let name = uname(&format!("wr{n}"));
        let id = wc.register(&name, PASSWORD).unwrap();
        let sess = login_synced(&wc, &name);
        let w = User {
            id,
            name,
            session: sess.clone(),
            c: wc,
        };
        befriend(&w, &t);
        t.send_direct(w.id, "before").unwrap();
        wait_msg(&w, "first message");
        let seen = w.seen();
        w.close();
        wait_closed(&w.c);
        for i in 0..5 {
            t.send_direct(w.id, &format!("missed {i}")).unwrap();
        }
        let again = s.ws_client_with(|o| o.dedup = false);
        let since: Vec<_> = seen.into_iter().collect();
        again.resume_since(&sess.token, &since).unwrap();
        let mut got = Vec::new();
        loop {
            match again.next_event(T).expect("catch-up") {
                Event::Message(m) => got.push(m.body),
                Event::SyncDone { .. } => break,
                _ => {}
            }
        }
        let want: Vec<String> = (0..5).map(|i| format!("missed {i}")).collect();
        assert_eq!(got, want, "user {n}: each missed message once, in order");
    }
}

#[test]
fn requests_pipelined_behind_the_login_survive_the_move_to_the_home_shard() {
    let s = TestServer::start_ws(&[]);
    let c = s.client();
    let names: Vec<String> = (0..6).map(|i| uname(&format!("pl{i}"))).collect();
    for n in &names {
        c.register(n, PASSWORD).unwrap();
    }
    for n in &names {
        let mut r = RawWs::connect(s.ws.unwrap());
        // Hello, Login and two Pings in one TCP write, the last split over
        // two WebSocket frames.
        let mut bytes = Vec::new();
        ws::encode_binary(Role::Client, r.enc.hello(1, "pipeline"), &mut bytes);
        ws::encode_binary(Role::Client, r.enc.login(2, n, PASSWORD), &mut bytes);
        ws::encode_binary(Role::Client, r.enc.ping(3, 77), &mut bytes);
        let ping = r.enc.ping(4, 78).to_vec();
        bytes.extend(client_frame(0x02, &ping[..5]));
        bytes.extend(client_frame(0x80, &ping[5..]));
        r.write(&bytes);
        assert_eq!(r.next(), Got::Frame(fb::Body::HelloOk, 1, None));
        assert!(matches!(r.next(), Got::Frame(fb::Body::LoginOk, 2, None)));
        assert_eq!(
            r.until(fb::Body::Pong),
            Got::Frame(fb::Body::Pong, 3, Some(77))
        );
        assert_eq!(
            r.until(fb::Body::Pong),
            Got::Frame(fb::Body::Pong, 4, Some(78))
        );
    }
}

#[test]
fn pings_are_answered_and_a_close_is_echoed() {
    let s = TestServer::start_ws(&[]);
    let mut r = RawWs::connect(s.ws.unwrap());
    let hello = r.enc.hello(1, "raw").to_vec();
    r.send_native(&hello);
    assert_eq!(r.next(), Got::Frame(fb::Body::HelloOk, 1, None));
    r.write(&client_frame(0x89, b"still there?"));
    assert_eq!(r.next(), Got::Control(0xA, b"still there?".to_vec()));
    let mut close = 1001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"tab closed");
    r.write(&client_frame(0x88, &close));
    r.expect_close(1001);
}

#[test]
fn protocol_breaches_close_with_their_codes() {
    let s = TestServer::start_ws(&["--max-frame", "1024"]);
    let addr = s.ws.unwrap();
    // Text instead of binary.
    let mut r = RawWs::connect(addr);
    r.write(&client_frame(0x81, b"{\"hello\":1}"));
    r.expect_close(ws::code::UNSUPPORTED_DATA);
    // An unmasked client frame.
    let mut r = RawWs::connect(addr);
    let hello = Enc::new().hello(1, "x").to_vec();
    let mut unmasked = vec![0x82, hello.len() as u8];
    unmasked.extend_from_slice(&hello);
    r.write(&unmasked);
    r.expect_close(ws::code::PROTOCOL_ERROR);
    // A message that is not one native frame.
    let mut r = RawWs::connect(addr);
    r.write(&client_frame(0x82, b"\x10\x00\x00\x00abc"));
    r.expect_close(ws::code::INVALID_PAYLOAD);
    // Larger than --max-frame: refused from its header alone.
    let mut r = RawWs::connect(addr);
    let mut big = vec![0x82, 0x80 | 126];
    big.extend_from_slice(&4000u16.to_be_bytes());
    big.extend_from_slice(&[1, 2, 3, 4]);
    r.write(&big);
    r.expect_close(ws::code::TOO_BIG);
    // Garbage inside a well-framed message fails verification like on TCP:
    // an error reply, then the close.
    let mut r = RawWs::connect(addr);
    r.send_native(&frame(&[0xff; 32]));
    match r.next() {
        Got::Frame(fb::Body::ErrorReply, 0, None) => {}
        g => panic!("expected Malformed, got {g:?}"),
    }
    r.expect_close(ws::code::NORMAL);
    // Other users are untouched: the server still serves.
    let c = s.ws_client();
    assert!(c.ping().is_ok());
}

#[test]
fn the_idle_timeout_says_goodbye_then_closes() {
    let s = TestServer::start_ws(&["--idle-timeout-secs", "1"]);
    let mut r = RawWs::connect(s.ws.unwrap());
    let hello = r.enc.hello(1, "idle").to_vec();
    r.send_native(&hello);
    assert_eq!(r.next(), Got::Frame(fb::Body::HelloOk, 1, None));
    assert_eq!(r.next(), Got::Frame(fb::Body::Goodbye, 0, None));
    r.expect_close(ws::code::NORMAL);
}

#[test]
fn the_http_side_serves_the_client_and_guards_the_upgrade() {
    let s = TestServer::start_ws(&["--ws-allowed-origin", "https://chat.example"]);
    let addr = s.ws.unwrap();
    let index = http(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(index.starts_with("HTTP/1.1 200 OK\r\n"), "{index}");
    assert!(index.contains("text/html") && index.contains("<html"));
    let missing = http(addr, "GET /nope.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let plain = http(addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");
    // A page of another site may not use a visitor's browser to connect.
    let evil = http(addr, &upgrade_request("Origin: https://evil.example\r\n"));
    assert!(evil.starts_with("HTTP/1.1 403 "), "{evil}");
    let listed = http(addr, &upgrade_request("Origin: https://chat.example\r\n"));
    assert!(listed.starts_with("HTTP/1.1 101 "), "{listed}");
    // The native TCP listener does not speak HTTP: its port is unaffected.
    assert!(s.client().ping().is_ok());
}

#[test]
fn a_request_head_trickled_byte_by_byte_is_cut_off() {
    // Every byte arrives well within the idle timeout, but the head as a
    // whole must too: otherwise one byte a minute holds a connection forever.
    let s = TestServer::start_ws(&["--idle-timeout-secs", "1"]);
    let mut c = TcpStream::connect(s.ws.unwrap()).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut closed = false;
    for _ in 0..75 {
        if c.write_all(b"a").is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("no answer is due to an unfinished request"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "still open after 15 s of a trickled request head");
}

#[test]
fn a_websocket_slow_consumer_is_cut_off_with_1008_and_catches_up() {
    let s = TestServer::start_ws(&["--max-outbound-kib", "64", "--max-send-burst", "1000"]);
    let alice = s.user(&uname("wsa"));
    let bob_name = uname("wsb");
    let bob = s.user(&bob_name);
    befriend(&alice, &bob);
    let bob_id = bob.id;
    drop(bob);
    // Bob logs in over WebSocket and then stops reading.
    let mut raw = RawWs::connect(s.ws.unwrap());
    let mut bytes = Vec::new();
    ws::encode_binary(Role::Client, raw.enc.hello(1, "slow"), &mut bytes);
    ws::encode_binary(
        Role::Client,
        raw.enc.login(2, &bob_name, PASSWORD),
        &mut bytes,
    );
    raw.write(&bytes);
    let body = "x".repeat(50_000);
    for i in 0..120 {
        alice.send_direct(bob_id, &format!("{i} {body}")).unwrap();
    }
    // What was queued before the cut-off arrives, then the Close says why.
    raw.expect_close(ws::code::POLICY);
    // Nothing was dropped: a new session catches up on every message.
    let c = s.ws_client();
    c.login(&bob_name, PASSWORD).unwrap();
    let mut n = 0;
    loop {
        match c.next_event(T).expect("catch-up") {
            Event::Message(m) => {
                assert!(m.body.starts_with(&format!("{n} ")), "in order, once");
                n += 1;
            }
            Event::SyncDone { .. } => break,
            _ => {}
        }
    }
    assert_eq!(n, 120);
}

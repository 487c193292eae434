//! Framing and handshake rules, exercised with raw sockets.

mod common;

use common::*;
use ringchat::client::{ErrorCode, Event};
use ringchat::wire::{Enc, fb};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn first_frame_must_be_hello() {
    let s = TestServer::start();
    let mut r = Raw::connect(s.addr);
    let ping = r.enc.ping(5, 42).to_vec();
    r.write(&ping);
    r.expect_error_then_close(ErrorCode::HelloRequired);
    // Logging in without Hello is refused the same way.
    let mut r = Raw::connect(s.addr);
    let login = r.enc.login(1, "someone", PASSWORD).to_vec();
    r.write(&login);
    r.expect_error_then_close(ErrorCode::HelloRequired);
}

#[test]
fn unsupported_version_is_refused() {
    let s = TestServer::start();
    for v in [0, 2, u32::MAX] {
        let mut r = Raw::connect(s.addr);
        let hello = r.enc.hello_version(1, v, "future").to_vec();
        r.write(&hello);
        r.expect_error_then_close(ErrorCode::UnsupportedVersion);
    }
}

#[test]
fn hello_ok_describes_the_server() {
    let s = TestServer::start();
    let c = s.client();
    let h = c.hello();
    assert_eq!(h.protocol_version, 1);
    assert_eq!(h.max_frame, 65536);
    assert_eq!(h.idle_timeout_ms, 60_000);
    assert!(!h.server.is_empty());
}

#[test]
fn oversized_frame_is_refused_and_closed() {
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    let mut bytes = 65537u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 1024]);
    r.write(&bytes);
    let f = r.read().expect("FrameTooLarge");
    assert_eq!(
        (f.body, f.code, f.req_id),
        (fb::Body::ErrorReply, Some(ErrorCode::FrameTooLarge), 0)
    );
    r.expect_close();
}

#[test]
fn a_frame_of_exactly_max_is_accepted() {
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    // A valid Ping padded to the limit: FlatBuffers verification only looks
    // at referenced bytes, so the padding is harmless and the frame is legal.
    let mut payload = r.enc.ping(9, 9)[4..].to_vec();
    payload.resize(65536, 0);
    r.write(&frame(&payload));
    let f = r.read().expect("a reply");
    assert_eq!((f.body, f.req_id, f.nonce), (fb::Body::Pong, 9, Some(9)));
}

#[test]
fn unverifiable_frame_is_malformed_and_closed() {
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    r.write(&frame(&[0xff; 16]));
    r.expect_error_then_close(ErrorCode::Malformed);
}

#[test]
fn empty_frame_is_malformed_and_closed() {
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    r.write(&0u32.to_le_bytes());
    r.expect_error_then_close(ErrorCode::Malformed);
}

#[test]
fn garbage_before_hello_is_malformed() {
    let s = TestServer::start();
    let mut r = Raw::connect(s.addr);
    r.write(&frame(b"definitely not a flatbuffer"));
    let f = r.read().expect("an error reply");
    assert_eq!(f.body, fb::Body::ErrorReply);
    assert!(
        matches!(
            f.code,
            Some(ErrorCode::Malformed | ErrorCode::HelloRequired)
        ),
        "{f:?}"
    );
    r.expect_close();
}

#[test]
fn frames_written_one_byte_at_a_time_work() {
    let s = TestServer::start();
    let mut r = Raw::connect(s.addr);
    let mut bytes = r.enc.hello(1, "slow").to_vec();
    bytes.extend_from_slice(r.enc.ping(2, 0xfeed));
    for b in &bytes {
        r.s.write_all(std::slice::from_ref(b)).unwrap();
        r.s.flush().unwrap();
    }
    let f = r.read().unwrap();
    assert_eq!((f.body, f.req_id), (fb::Body::HelloOk, 1));
    let f = r.read().unwrap();
    assert_eq!(
        (f.body, f.req_id, f.nonce),
        (fb::Body::Pong, 2, Some(0xfeed))
    );
}

#[test]
fn hundred_pings_in_one_write_get_hundred_pongs_in_order() {
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    let mut enc = Enc::new();
    let mut bytes = vec![];
    for i in 0..100u64 {
        bytes.extend_from_slice(enc.ping(1000 + i, i * 7));
    }
    r.write(&bytes);
    for i in 0..100u64 {
        let f = r.read().unwrap_or_else(|| panic!("closed after {i} pongs"));
        assert_eq!(
            (f.body, f.req_id, f.nonce),
            (fb::Body::Pong, 1000 + i, Some(i * 7))
        );
    }
}

#[test]
fn a_reply_type_from_the_client_is_unknown_body() {
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    let ok = r.enc.ok(3).to_vec();
    r.write(&ok);
    r.expect_error_then_close(ErrorCode::UnknownBody);
    // A push type too.
    let mut r = Raw::hello(s.addr);
    let push = r.enc.goodbye(ErrorCode::Unknown, "bye").to_vec();
    r.write(&push);
    r.expect_error_then_close(ErrorCode::UnknownBody);
}

#[test]
fn ping_works_before_login() {
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    let ping = r.enc.ping(8, 1).to_vec();
    r.write(&ping);
    let f = r.read().unwrap();
    assert_eq!((f.body, f.req_id), (fb::Body::Pong, 8));
}

#[test]
fn a_connection_dying_mid_frame_does_not_disturb_others() {
    let s = TestServer::start();
    let alice = s.user(&uname("iso_a"));
    let bob = s.user(&uname("iso_b"));
    befriend(&alice, &bob);
    let carol = s.user(&uname("iso_c"));
    let mut enc = Enc::new();
    let whole = enc.send_message(50, alice.id, 0, 1, "half").to_vec();
    carol.write_bytes(&whole[..whole.len() / 2]).unwrap();
    drop(carol);
    let mut r = Raw::hello(s.addr);
    r.write(&whole[..7]);
    drop(r);
    let sent = alice.send_direct(bob.id, "still here").unwrap();
    let m = wait_msg(&bob, "message");
    assert_eq!((m.seq, m.body.as_str()), (sent.seq, "still here"));
    bob.send_direct(alice.id, "me too").unwrap();
    assert_eq!(wait_msg(&alice, "reply").body, "me too");
}

#[test]
fn idle_connections_get_goodbye_and_pinging_ones_stay() {
    let s = TestServer::start_with(&["--idle-timeout-secs", "1"]);
    let quiet = s.client_with(|o| o.keepalive = false);
    assert_eq!(quiet.hello().idle_timeout_ms, 1000);
    let pinger = s.client_with(|o| o.keepalive = false);
    let started = Instant::now();
    let goodbye = {
        // Ping explicitly well inside the timeout while waiting for the
        // quiet connection's Goodbye.
        let mut got = None;
        while started.elapsed() < Duration::from_secs(8) {
            pinger.ping().expect("pinging connection was closed");
            if let Some(e) = quiet.wait_for(Duration::from_millis(250), |e| {
                matches!(e, Event::Goodbye { .. })
            }) {
                got = Some(e);
                break;
            }
        }
        got.expect("no Goodbye for an idle connection")
    };
    assert!(
        matches!(
            goodbye,
            Event::Goodbye {
                code: ErrorCode::IdleTimeout,
                ..
            }
        ),
        "{goodbye:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout"
    );
    wait_closed(&quiet);
    // Keep pinging past another full timeout: still open.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        pinger.ping().expect("pinging connection was closed");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!pinger.is_closed());
    // The built-in keepalive (a third of the timeout) also keeps a client open.
    let kept = s.client();
    std::thread::sleep(Duration::from_millis(2500));
    kept.ping().expect("keepalive client was closed");
}

/// A Ping envelope built with the plain FlatBuffers API, finished either
/// the documented way (`finish_size_prefixed`: the frame is the builder's
/// output as is) or the wrong way (`finish`, then a length prepended).
fn ping_built_by_hand(req_id: u64, nonce: u64, size_prefixed: bool) -> Vec<u8> {
    let mut b = flatbuffers::FlatBufferBuilder::new();
    let p = fb::Ping::create(&mut b, &fb::PingArgs { nonce });
    let env = fb::Envelope::create(
        &mut b,
        &fb::EnvelopeArgs {
            req_id,
            body_type: fb::Body::Ping,
            body: Some(p.as_union_value()),
        },
    );
    if size_prefixed {
        b.finish_size_prefixed(env, None);
        b.finished_data().to_vec()
    } else {
        b.finish(env, None);
        frame(b.finished_data())
    }
}

#[test]
fn frames_are_flatbuffers_size_prefixed_buffers() {
    // PROTOCOL.md "Framing": the u32 length is FlatBuffers' size prefix and
    // alignment counts from its first byte.
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    let f = ping_built_by_hand(u64::MAX, u64::MAX - 1, true);
    assert_eq!(
        u32::from_le_bytes(f[..4].try_into().unwrap()) as usize,
        f.len() - 4,
        "the size prefix is the frame length"
    );
    r.write(&f);
    let got = r.read().expect("Pong");
    assert_eq!(
        (got.body, got.req_id, got.nonce),
        (fb::Body::Pong, u64::MAX, Some(u64::MAX - 1))
    );
    // What the server sends is the same form: it verifies as a size-prefixed
    // buffer (Raw::read did that), and the bytes after the prefix are *not*
    // a valid standalone buffer once a u64 is in it.
    assert!(
        fb::root_as_envelope(&got.bytes[4..]).is_err(),
        "server frames are size-prefixed buffers, not prefix + plain buffer"
    );
    // A plain buffer with a length prepended puts every u64 at 4 mod 8:
    // unverifiable, so Malformed and the connection closes.
    let plain = ping_built_by_hand(u64::MAX, 7, false);
    r.write(&plain);
    r.expect_error_then_close(ErrorCode::Malformed);
}

#[test]
fn req_id_zero_and_a_second_hello_are_bad_requests_that_keep_the_connection() {
    let s = TestServer::start();
    let mut r = Raw::hello(s.addr);
    let again = r.enc.hello(4, "again").to_vec();
    r.write(&again);
    let f = r.read().expect("an error reply");
    assert_eq!(
        (f.body, f.req_id, f.code),
        (fb::Body::ErrorReply, 4, Some(ErrorCode::BadRequest))
    );
    let zero = r.enc.register(0, &uname("rz"), PASSWORD).to_vec();
    r.write(&zero);
    let f = r.read().expect("an error reply");
    assert_eq!(
        (f.body, f.req_id, f.code),
        (fb::Body::ErrorReply, 0, Some(ErrorCode::BadRequest))
    );
    let ping = r.enc.ping(5, 55).to_vec();
    r.write(&ping);
    let f = r.read().expect("Pong: the connection stayed open");
    assert_eq!((f.body, f.req_id, f.nonce), (fb::Body::Pong, 5, Some(55)));
}

//! The client library's gap-proof rule (issue 10), over a real TCP socket
//! against a scripted server that injects what a real cluster can produce:
//! a later seq before an earlier one, a gap only a `History` can fill, a gap
//! nobody can fill, and a peer's message racing ahead of our own `SendOk`.
//! Checks what users rely on: every message is shown once and in order,
//! and the cursor the device acknowledges and resumes from is the highest
//! *contiguous* seq it holds, so a resume can never skip a message.

use ringchat::client::{Client, ClientOptions, Event};
use ringchat::model::{ConvId, Seq, StoredMessage};
use ringchat::wire::{Enc, FrameBuf, fb};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const CONV: ConvId = 0x4000_0000_0000_0001;
const T: Duration = Duration::from_secs(10);

/// What the scripted server read from the client.
#[derive(Debug, PartialEq, Eq)]
enum Req {
    Hello(u64),
    Resume(u64, Vec<(ConvId, Seq)>),
    History {
        id: u64,
        conv: ConvId,
        before: Seq,
        limit: u32,
    },
    Ack(Vec<(ConvId, Seq)>),
    Send(u64),
    Other(&'static str),
}

struct Server {
    s: TcpStream,
    buf: FrameBuf,
    enc: Enc,
}

impl Server {
    fn read(&mut self) -> Req {
        loop {
            if let Some(r) = self.buf.next_frame().unwrap() {
                let f = self.buf.get(r).to_vec();
                let e = ringchat::wire::decode(&f).unwrap();
                let id = e.req_id();
                return match e.body_type() {
                    fb::Body::Hello => Req::Hello(id),
                    fb::Body::Resume => {
                        let r = e.body_as_resume().unwrap();
                        let since = r
                            .since()
                            .map(|v| v.iter().map(|c| (c.conversation(), c.seq())).collect())
                            .unwrap_or_default();
                        Req::Resume(id, since)
                    }
                    fb::Body::History => {
                        let h = e.body_as_history().unwrap();
                        Req::History {
                            id,
                            conv: h.conversation(),
                            before: h.before_seq(),
                            limit: h.limit(),
                        }
                    }
                    fb::Body::Ack => {
                        let a = e.body_as_ack().unwrap();
                        Req::Ack(
                            a.items()
                                .map(|v| v.iter().map(|c| (c.conversation(), c.seq())).collect())
                                .unwrap_or_default(),
                        )
                    }
                    fb::Body::SendMessage => Req::Send(id),
                    other => Req::Other(other.variant_name().unwrap_or("?")),
                };
            }
            let n = self.s.read(self.buf.spare(4096)).unwrap();
            assert!(n > 0, "client hung up");
            self.buf.filled(n);
        }
    }

    /// The next request that is not an Ack (acks are collected).
    fn next(&mut self, acks: &mut Vec<(ConvId, Seq)>) -> Req {
        loop {
            match self.read() {
                Req::Ack(a) => acks.extend(a),
                r => return r,
            }
        }
    }

    fn write(&mut self, f: impl FnOnce(&mut Enc) -> Vec<u8>) {
        let bytes = f(&mut self.enc);
        self.s.write_all(&bytes).unwrap();
    }

    fn push(&mut self, req_id: u64, seqs: &[Seq]) {
        let msgs: Vec<StoredMessage> = seqs.iter().map(|&s| msg(s)).collect();
        self.write(|e| e.messages(req_id, &msgs).to_vec());
    }
}

fn msg(seq: Seq) -> StoredMessage {
    StoredMessage {
        conv: CONV,
        seq,
        sender: 2,
        timestamp_ms: 1,
        client_msg_id: seq,
        body: format!("m{seq}"),
        sender_name: "bob".into(),
    }
}

fn shown(c: &Client, n: usize) -> Vec<Seq> {
    (0..n)
        .map(
            |_| match c.wait_for(T, |e| matches!(e, Event::Message(_))) {
                Some(Event::Message(m)) => m.seq,
                other => panic!("expected a message, got {other:?}"),
            },
        )
        .collect()
}

fn nothing_more(c: &Client) {
    let e = c.wait_for(Duration::from_millis(300), |e| {
        matches!(e, Event::Message(_))
    });
    assert!(e.is_none(), "shown again or out of order: {e:?}");
}

#[test]
fn reordered_and_missing_seqs_are_shown_once_in_order_and_never_skipped_by_the_cursor() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut srv = Server {
            s,
            buf: FrameBuf::new(1 << 20),
            enc: Enc::new(),
        };
        let Req::Hello(id) = srv.read() else {
            panic!("hello first")
        };
        srv.write(|e| e.hello_ok(id, 1 << 20, 60_000).to_vec());
        let Req::Resume(id, since) = srv.read() else {
            panic!("resume")
        };
        assert_eq!(since, vec![(CONV, 3)]);
        srv.write(|e| e.login_ok(id, 1, "alice", "tok").to_vec());
        srv.write(|e| e.sync_done(0).to_vec());
        let mut acks = Vec::new();

        // 1. 5 before 4: the client holds 5 back and asks for the gap.
        srv.push(0, &[5]);
        let r = srv.next(&mut acks);
        let Req::History {
            id,
            conv: CONV,
            before: 5,
            limit: 1,
        } = r
        else {
            panic!("expected a fill for seq 4, got {r:?}")
        };
        assert!(acks.is_empty(), "acked {acks:?} while 4 was missing");
        srv.push(0, &[4]); // the late push arrives before the fill's reply
        srv.push(id, &[4]); // the fill's reply: 4 again, dropped
        // 2. A gap that only History fills: 6 never comes as a push.
        srv.push(0, &[7]);
        let r = srv.next(&mut acks);
        let Req::History {
            id,
            before: 7,
            limit: 1,
            ..
        } = r
        else {
            panic!("expected a fill for seq 6, got {r:?}")
        };
        srv.push(id, &[6]);
        // 3. Our own message (SendOk 8) with the peer's 9 racing ahead.
        let Req::Send(id) = srv.next(&mut acks) else {
            panic!("expected the send")
        };
        srv.push(0, &[9]);
        srv.write(|e| e.send_ok(id, CONV, 8, 1, false).to_vec());
        // 9 arrived above a gap (the client cannot know 8 is its own, on
        // its way): it asks for 8; the reply brings 8 again, dropped.
        let r = srv.next(&mut acks);
        let Req::History {
            id,
            before: 9,
            limit: 1,
            ..
        } = r
        else {
            panic!("expected a fill for seq 8, got {r:?}")
        };
        srv.push(id, &[8]);
        // 4. A gap nobody can fill (10, 11 never stored): given up after an
        // empty fill, 12 is shown.
        srv.push(0, &[12]);
        let r = srv.next(&mut acks);
        let Req::History {
            id,
            before: 12,
            limit: 2,
            ..
        } = r
        else {
            panic!("expected a fill for 10..11, got {r:?}")
        };
        srv.push(id, &[]);
        // Collect the remaining acks until the client hangs up.
        let mut rest = [0u8; 4096];
        srv.s
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        loop {
            match srv.buf.next_frame() {
                Ok(Some(r)) => {
                    let f = srv.buf.get(r).to_vec();
                    let e = ringchat::wire::decode(&f).unwrap();
                    if let Some(a) = e.body_as_ack() {
                        acks.extend(
                            a.items()
                                .unwrap()
                                .iter()
                                .map(|c| (c.conversation(), c.seq())),
                        );
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => panic!("{e:?}"),
            }
            match srv.s.read(&mut rest) {
                Ok(0) | Err(_) => break,
                Ok(n) => srv.buf.push(&rest[..n]),
            }
        }
        acks
    });

    let c = Client::connect_with(addr, ClientOptions::default()).unwrap();
    c.resume_since("tok", &[(CONV, 3)]).unwrap();
    assert_eq!(shown(&c, 2), vec![4, 5], "4 first, though 5 arrived first");
    assert_eq!(c.seen()[&CONV], 5);
    assert_eq!(
        shown(&c, 2),
        vec![6, 7],
        "7 waits for 6, which the fill brought"
    );
    let sent = c.send_raw(2, 0, 99, "mine").unwrap();
    assert_eq!(sent.seq, 8);
    assert_eq!(shown(&c, 1), vec![9], "9 released by our own 8");
    assert_eq!(
        shown(&c, 1),
        vec![12],
        "an unfillable gap does not block forever"
    );
    nothing_more(&c);
    assert_eq!(c.seen()[&CONV], 12);
    c.close();
    let acks = server.join().unwrap();
    let acked: Vec<Seq> = acks.iter().map(|&(_, s)| s).collect();
    let mut sorted = acked.clone();
    sorted.sort();
    assert_eq!(acked, sorted, "acks only move forward: {acked:?}");
    assert_eq!(acked.last(), Some(&12), "{acked:?}");
    assert!(
        acked.iter().all(|s| ![6, 10, 11].contains(s)),
        "acked a seq above a gap it did not hold: {acked:?}"
    );
}

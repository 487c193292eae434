//! Minimal smoke client: register two users, befriend, chat. Prints what it sees.
use ringchat::wire::{self, Enc, FrameBuf, fb};
use std::io::{Read, Write};
use std::net::TcpStream;

struct C {
    s: TcpStream,
    fb: FrameBuf,
    enc: Enc,
    id: u64,
}
impl C {
    fn new(addr: &str) -> C {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut c = C {
            s,
            fb: FrameBuf::new(1 << 20),
            enc: Enc::new(),
            id: 0,
        };
        let f = c.enc.hello(1, "smoke").to_vec();
        c.s.write_all(&f).unwrap();
        c.next();
        c
    }
    fn next(&mut self) -> (u64, fb::Body, Vec<u8>) {
        loop {
            if let Some(r) = self.fb.next_frame().unwrap() {
                let p = self.fb.get(r).to_vec();
                let e = wire::decode(&p).unwrap();
                let out = (e.req_id(), e.body_type(), p.clone());
                if let Some(er) = e.body_as_error_reply() {
                    println!("  <- ERROR {:?} {}", er.code(), er.message().unwrap_or(""));
                } else {
                    println!("  <- req {} {:?}", e.req_id(), e.body_type());
                }
                return out;
            }
            let b = self.fb.spare(4096);
            let n = self.s.read(b).unwrap();
            assert!(n > 0, "closed");
            self.fb.filled(n);
        }
    }
    fn req(&mut self, f: impl FnOnce(&mut Enc, u64) -> Vec<u8>) -> (u64, fb::Body, Vec<u8>) {
        self.id += 1;
        let id = self.id + 100;
        let frame = f(&mut self.enc, id);
        self.s.write_all(&frame).unwrap();
        loop {
            let r = self.next();
            if r.0 == id {
                return r;
            }
        }
    }
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:7100".into());
    // A second address puts the second user on another node of a cluster.
    let addr_b = std::env::args().nth(2).unwrap_or(addr.clone());
    let tag = std::process::id();
    let (ua, ub) = (format!("a{tag}"), format!("b{tag}"));
    let mut a = C::new(&addr);
    let mut b = C::new(&addr_b);
    a.req(|e, id| e.register(id, &ua, "password1").to_vec());
    b.req(|e, id| e.register(id, &ub, "password1").to_vec());
    let r = a.req(|e, id| e.login(id, &ua, "password1").to_vec());
    let aid = wire::decode(&r.2)
        .unwrap()
        .body_as_login_ok()
        .unwrap()
        .user_id();
    let r = b.req(|e, id| e.login(id, &ub, "password1").to_vec());
    let bid = wire::decode(&r.2)
        .unwrap()
        .body_as_login_ok()
        .unwrap()
        .user_id();
    println!("a={aid} b={bid}");
    a.req(|e, id| e.friend_request(id, bid, "hi").to_vec());
    b.req(|e, id| e.friend_respond(id, aid, true).to_vec());
    for i in 0..3 {
        let r = a.req(|e, id| e.send_message(id, bid, 0, 1000 + i, "hello there").to_vec());
        let d = wire::decode(&r.2).unwrap();
        if let Some(ok) = d.body_as_send_ok() {
            println!("sent seq {} conv {:x}", ok.seq(), ok.conversation());
        }
    }
    // Pushes may be coalesced into fewer frames: count messages, not frames.
    let mut got = 0;
    while got < 3 {
        let (_, body, p) = b.next();
        if body == fb::Body::Messages {
            let d = wire::decode(&p).unwrap();
            for m in d.body_as_messages().unwrap().messages().unwrap() {
                got += 1;
                println!(
                    "b got seq {} from {} {:?}",
                    m.seq(),
                    m.sender_name().unwrap_or(""),
                    m.body()
                );
            }
        }
    }
}

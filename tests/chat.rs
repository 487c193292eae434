//! `ringchat chat` driven as a subprocess through stdin/stdout against a real
//! server: the non-interactive line format of docs/CHAT.md is the contract.

mod common;

use common::*;
use ringchat::client::{Client, Event, FriendEventKind};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// One `ringchat chat` process.
struct Chat {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far.
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Chat {
    fn start(addr: SocketAddr, login: Option<&str>) -> Chat {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringchat"));
        cmd.arg("chat").arg("--server").arg(addr.to_string());
        if let Some(user) = login {
            cmd.arg("--login").arg(format!("{user}:{PASSWORD}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringchat chat");
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_pipe.read_to_string(&mut s);
            sink.lock().unwrap().push_str(&s);
        });
        Chat {
            name: login.unwrap_or("anonymous").to_string(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: vec![],
            stderr,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin closed");
        writeln!(stdin, "{line}").expect("write to chat stdin");
        stdin.flush().unwrap();
    }

    /// Reads lines until one satisfies `pred`; panics with everything seen
    /// if none does within `within`.
    fn expect_within(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "{}: no line {what} within {within:?}; saw:\n{}\nstderr:\n{}",
                    self.name,
                    self.seen.join("\n"),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    #[track_caller]
    fn expect(&mut self, exact: &str) {
        self.expect_within(&format!("{exact:?}"), T, |l| l == exact);
    }

    fn expect_prefix(&mut self, prefix: &str) -> String {
        self.expect_within(&format!("starting {prefix:?}"), T, |l| {
            l.starts_with(prefix)
        })
    }

    /// Closes stdin (end of input) and waits for the exit; returns the
    /// status and collects the remaining output into `seen`.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let deadline = Instant::now() + T;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{}: did not exit after end of input", self.name);
            }
            // Wait on the output pipe: it closes when the process exits.
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l);
            }
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers users without logging them in.
fn register(s: &TestServer, names: &[&str]) {
    let c = s.client();
    for n in names {
        c.register(n, PASSWORD)
            .unwrap_or_else(|e| panic!("register {n}: {e}"));
    }
}

fn login_chat(addr: SocketAddr, user: &str) -> Chat {
    let mut c = Chat::start(addr, Some(user));
    c.expect(&format!("ok login {user}"));
    c
}

#[test]
fn two_users_chat_through_the_binary() {
    let s = TestServer::start();
    let (a, b) = (uname("ca"), uname("cb"));
    register(&s, &[&a, &b]);
    let mut ca = login_chat(s.addr, &a);
    let mut cb = login_chat(s.addr, &b);

    ca.send(&format!("/add {b} let's talk"));
    ca.expect(&format!("ok add {b}"));
    cb.expect(&format!("friend-request {a} let's talk"));
    cb.send(&format!("/accept {a}"));
    cb.expect(&format!("ok accept {a}"));
    ca.expect(&format!("friend-accepted {b}"));
    ca.expect(&format!("presence {b} online"));

    // The whole line goes, spaces and UTF-8 included.
    ca.send(&format!("/msg {b} héllo  wörld ✓ 你好"));
    ca.expect(&format!("ok msg @{b} 1"));
    cb.expect(&format!("msg @{a} 1 {a} héllo  wörld ✓ 你好"));

    // Plain lines go to the open conversation.
    cb.send(&format!("/open {a}"));
    cb.expect(&format!("ok open @{a}"));
    cb.send("plain reply");
    cb.expect(&format!("ok msg @{a} 2"));
    ca.expect(&format!("msg @{b} 2 {b} plain reply"));

    ca.send("/friends");
    ca.expect(&format!("friend {b} friend online"));
    ca.expect("ok friends 1");

    ca.send(&format!("/history {b}"));
    ca.expect(&format!("history @{b} 1 {a} héllo  wörld ✓ 你好"));
    ca.expect(&format!("history @{b} 2 {b} plain reply"));
    ca.expect("ok history 2");
    ca.send("/more");
    ca.expect("ok history 0");

    ca.send("/quit");
    let (st, _) = ca.finish();
    assert!(st.success(), "{st}");
    cb.expect(&format!("presence {a} offline"));
    let (st, lines) = cb.finish();
    assert!(st.success(), "{st}: {lines:?}");
}

#[test]
fn group_conversation() {
    let s = TestServer::start();
    let (a, b) = (uname("ga"), uname("gb"));
    register(&s, &[&a, &b]);
    let mut ca = login_chat(s.addr, &a);
    let mut cb = login_chat(s.addr, &b);
    let group = uname("devs");

    ca.send(&format!("/create {group}"));
    let created = ca.expect_prefix("ok create ");
    let gid: u64 = created.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(created, format!("ok create {gid} {group}"));

    cb.send(&format!("/join {gid}"));
    cb.expect(&format!("ok join {gid}"));
    ca.expect(&format!("group-event {gid} joined {b}"));

    cb.send(&format!("/g {group} hello group ✓"));
    cb.expect(&format!("ok msg #{gid} 1"));
    ca.expect(&format!("msg #{gid} 1 {b} hello group ✓"));

    ca.send(&format!("/open #{group}"));
    ca.expect(&format!("ok open #{gid}"));
    ca.send("to everyone here");
    ca.expect(&format!("ok msg #{gid} 2"));
    cb.expect(&format!("msg #{gid} 2 {a} to everyone here"));

    ca.send(&format!("/members {group}"));
    ca.expect(&format!("member {gid} {a} owner online"));
    ca.expect(&format!("member {gid} {b} member online"));
    ca.expect("ok members 2");

    cb.send(&format!("/leave {gid}"));
    cb.expect(&format!("ok leave {gid}"));
    ca.expect(&format!("group-event {gid} left {b}"));

    ca.send(&format!("/dissolve {group}"));
    ca.expect(&format!("ok dissolve {gid}"));
    // The group is gone: writing to it is refused in plain words.
    ca.send(&format!("/g {gid} anyone?"));
    ca.expect_prefix("error NoSuchGroup: ");

    let (st, _) = cb.finish();
    assert!(st.success(), "{st}");
    let (st, _) = ca.finish();
    assert!(!st.success(), "a failed command must fail the run");
}

#[test]
fn rejected_commands_print_plain_errors_and_fail_the_run() {
    let s = TestServer::start();
    let (a, b) = (uname("ea"), uname("eb"));
    register(&s, &[&a, &b]);
    let mut ca = login_chat(s.addr, &a);

    ca.send(&format!("/msg {b} hi"));
    ca.expect("error NotFriends: you are not friends with that user");
    ca.send("/msg nobody_here hi");
    ca.expect("error NoSuchUser: there is no user named nobody_here");
    ca.send("/g nogroup hi");
    ca.expect("error NoSuchGroup: you are in no group named or numbered nogroup");
    ca.send("/frobnicate");
    ca.expect("error Usage: unknown command /frobnicate; try /help");
    ca.send("/kick onlyone");
    ca.expect("error Usage: usage: /kick <group> <user>");
    ca.send("no conversation open");
    ca.expect_prefix("error NoConversation: ");
    // Still usable after errors.
    ca.send("/search ea");
    ca.expect(&format!("user {a} offline"));
    let (st, lines) = ca.finish();
    assert_eq!(st.code(), Some(1), "{lines:?}");

    // A failed --login ends the run before any command.
    let bad = Chat::start(s.addr, Some(&format!("{a}:wrong")));
    let (st, lines) = bad.finish();
    assert_eq!(st.code(), Some(1));
    assert_eq!(
        lines,
        vec!["error BadCredentials: wrong username or password"]
    );
}

/// A TCP proxy the test can cut, so one client loses its connection while
/// the server stays up.
struct Proxy {
    addr: SocketAddr,
    st: Arc<ProxyState>,
}

struct ProxyState {
    /// Refuse (accept and close) new connections.
    refuse: AtomicBool,
    /// Swallow what the server sends instead of forwarding it.
    hold_down: AtomicBool,
    socks: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let st = Arc::new(ProxyState {
            refuse: AtomicBool::new(false),
            hold_down: AtomicBool::new(false),
            socks: Mutex::new(vec![]),
        });
        let st2 = st.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                if st2.refuse.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(u) = TcpStream::connect(upstream) else {
                    continue;
                };
                {
                    let mut socks = st2.socks.lock().unwrap();
                    socks.push(c.try_clone().unwrap());
                    socks.push(u.try_clone().unwrap());
                }
                let (c2, u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
                std::thread::spawn(move || pipe(c, u, None));
                let st3 = st2.clone();
                std::thread::spawn(move || pipe(u2, c2, Some(st3)));
            }
        });
        Proxy { addr, st }
    }

    fn hold_downstream(&self) {
        self.st.hold_down.store(true, Ordering::SeqCst);
    }

    /// Closes every proxied connection and refuses new ones.
    fn cut(&self) {
        self.st.refuse.store(true, Ordering::SeqCst);
        for s in self.st.socks.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.st.hold_down.store(false, Ordering::SeqCst);
        self.st.refuse.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, hold: Option<Arc<ProxyState>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if hold
            .as_ref()
            .is_some_and(|h| h.hold_down.load(Ordering::SeqCst))
        {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[test]
fn dropped_connection_reconnects_gets_missed_messages_and_resends_once() {
    let s = TestServer::start();
    let alice = s.user(&uname("ra"));
    let bob = uname("rb");
    register(&s, &[&bob]);
    let proxy = Proxy::start(s.addr);
    let mut cb = login_chat(proxy.addr, &bob);

    let bob_id = alice.search_users(&bob, 0, 10).unwrap().0[0].user_id;
    alice.friend_request(bob_id, "").unwrap();
    cb.expect(&format!("friend-request {}", alice.name));
    cb.send(&format!("/accept {}", alice.name));
    cb.expect(&format!("ok accept {}", alice.name));
    wait(&alice.c, "accepted", |e| {
        matches!(
            e,
            Event::Friend {
                kind: FriendEventKind::Accepted,
                ..
            }
        )
    });

    alice.send_direct(bob_id, "before").unwrap();
    cb.expect(&format!("msg @{0} 1 {0} before", alice.name));

    // The server stores bob's message but its SendOk never reaches him.
    proxy.hold_downstream();
    cb.send(&format!("/msg {} in flight", alice.name));
    let m = wait_msg(&alice.c, "bob's in-flight message");
    assert_eq!((m.seq, m.body.as_str()), (2, "in flight"));

    proxy.cut();
    cb.expect("status reconnecting");
    alice.send_direct(bob_id, "missed one").unwrap();
    alice.send_direct(bob_id, "missed two").unwrap();
    cb.send(&format!("/msg {} typed while offline", alice.name));
    cb.expect("status queued");

    proxy.restore();
    let a = &alice.name;
    cb.expect(&format!("msg @{a} 3 {a} missed one"));
    cb.expect(&format!("msg @{a} 4 {a} missed two"));
    cb.expect("status resumed");
    // The resend carries the same client_msg_id: the server answers with
    // the original seq instead of storing it again.
    cb.expect(&format!("ok msg @{a} 2"));
    cb.expect(&format!("ok msg @{a} 5"));
    let m = wait_msg(&alice.c, "the message typed while offline");
    assert_eq!((m.seq, m.body.as_str()), (5, "typed while offline"));
    assert_quiet(&alice.c, "a second copy", |e| {
        matches!(e, Event::Message(_))
    });

    // Still live after the resume.
    alice.send_direct(bob_id, "after").unwrap();
    cb.expect(&format!("msg @{a} 6 {a} after"));

    let (st, lines) = cb.finish();
    assert!(st.success(), "{st}: {lines:?}");
    let msgs: Vec<&String> = lines.iter().filter(|l| l.starts_with("msg ")).collect();
    assert_eq!(msgs.len(), 4, "each message shown once: {lines:?}");
    for l in &lines {
        assert_eq!(
            lines.iter().filter(|x| *x == l).count(),
            1,
            "{l:?} twice in {lines:?}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("in flight") && l.starts_with("msg")),
        "own message echoed: {lines:?}"
    );
}

#[test]
fn server_restart_resumes_and_delivers_what_was_typed_meanwhile() {
    let mut s = TestServer::start();
    let alice = s.user(&uname("sa"));
    let bob = s.user(&uname("sb"));
    befriend(&alice, &bob);
    let (a, b) = (alice.name.clone(), bob.name.clone());
    drop(alice);
    drop(bob);
    let mut cb = login_chat(s.addr, &b);

    s.stop();
    cb.expect("status reconnecting");
    cb.send(&format!("/msg {a} written during the restart"));
    cb.expect("status queued");
    s.start_again();
    cb.expect_within("status resumed", Duration::from_secs(30), |l| {
        l == "status resumed"
    });
    cb.expect(&format!("ok msg @{a} 1"));

    let c = Client::connect(s.addr).unwrap();
    c.login(&a, PASSWORD).unwrap();
    let m = wait_msg(&c, "message from the restart");
    assert_eq!(m.body, "written during the restart");

    let (st, lines) = cb.finish();
    assert!(st.success(), "{st}: {lines:?}");
}

#[test]
fn passwd_and_logout_all_from_the_chat_client() {
    let s = TestServer::start();
    let a = uname("pw");
    // Chat arguments are words: a password without spaces.
    let first = "first-password";
    s.client().register(&a, first).unwrap();
    let mut ca = Chat::start(s.addr, None);
    ca.send(&format!("/login {a} {first}"));
    ca.expect(&format!("ok login {a}"));
    // Another device of the same user.
    let other = Client::connect(s.addr).unwrap();
    other.login(&a, first).unwrap();

    ca.send("/passwd not-the-password new-password-1");
    ca.expect_prefix("error BadCredentials");
    ca.send(&format!("/passwd {first} new-password-1"));
    ca.expect("ok passwd");
    wait(&other, "Goodbye after the password change", |e| {
        matches!(e, Event::Goodbye { .. })
    });
    wait_closed(&other);
    // The chat's own session stays.
    ca.send("/friends");
    ca.expect("ok friends 0");

    // Logged out everywhere from elsewhere: the chat says so, and its
    // reconnect finds the token gone.
    let d = Client::connect(s.addr).unwrap();
    d.login(&a, "new-password-1").unwrap();
    d.logout_all().unwrap();
    ca.expect("status ended");
    ca.expect("status expired");

    // And from the chat itself.
    ca.send(&format!("/login {a} new-password-1"));
    ca.expect(&format!("ok login {a}"));
    let d2 = Client::connect(s.addr).unwrap();
    let t2 = d2.login(&a, "new-password-1").unwrap().token;
    ca.send("/logout-all");
    ca.expect("ok logout-all");
    wait_closed(&d2);
    let r = Client::connect(s.addr).unwrap();
    assert!(r.resume(&t2).is_err(), "a token survived /logout-all");

    let (st, lines) = ca.finish();
    // The refused /passwd fails the run.
    assert!(!st.success(), "{lines:?}");
}

/// Private groups from the console: `/create --private`, a join that asks,
/// `/invite`, `/requests`, `/approve` and `/reject <group> <user>`.
#[test]
fn private_group_invitations_and_requests() {
    let s = TestServer::start();
    let (a, b, c, d) = (uname("pa"), uname("pb"), uname("pc"), uname("pd"));
    register(&s, &[&a, &b, &c, &d]);
    let mut ca = login_chat(s.addr, &a);
    let mut cb = login_chat(s.addr, &b);
    let mut cc = login_chat(s.addr, &c);
    let mut cd = login_chat(s.addr, &d);
    let group = uname("inner");

    ca.send(&format!("/create --private {group}"));
    let created = ca.expect_prefix("ok create ");
    let gid: u64 = created.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(created, format!("ok create {gid} {group}"));

    cb.send(&format!("/join {gid}"));
    cb.expect_prefix("error PendingApproval: ");
    ca.expect(&format!("group-event {gid} asks-to-join {b}"));
    ca.send(&format!("/invite {c} {group}"));
    ca.expect(&format!("ok invite {gid} {c}"));
    cc.expect(&format!("group-invite {gid} {group}"));
    ca.send(&format!("/requests {group}"));
    ca.expect(&format!("request {gid} {b} asks"));
    ca.expect(&format!("request {gid} {c} invited"));
    ca.expect("ok requests 2");

    ca.send(&format!("/approve {group} {b}"));
    ca.expect(&format!("ok approve {gid} {b}"));
    cb.expect(&format!("group-event {gid} joined {b}"));
    cc.send(&format!("/join {gid}"));
    cc.expect(&format!("ok join {gid}"));

    cd.send(&format!("/join {gid}"));
    cd.expect_prefix("error PendingApproval: ");
    ca.expect(&format!("group-event {gid} asks-to-join {d}"));
    ca.send(&format!("/reject {group} {d}"));
    ca.expect(&format!("ok reject {gid} {d}"));
    cd.expect_prefix(&format!("group-event {gid} join-rejected {d} by "));

    ca.send(&format!("/members {group}"));
    ca.expect("ok members 3");
    ca.send("/quit");
    let (st, _) = ca.finish();
    assert!(st.success(), "{st}");
    let (st, lines) = cc.finish();
    assert!(st.success(), "{st}: {lines:?}");
    for x in [cb, cd] {
        let (st, _) = x.finish();
        assert!(!st.success(), "the join that asked fails the run");
    }
}

#[test]
fn unread_typing_and_read_receipts_in_the_chat() {
    let s = TestServer::start();
    let a = s.user(&uname("cua"));
    let b = s.user(&uname("cub"));
    befriend(&a, &b);
    a.c.close();
    b.send_direct(a.id, "first").unwrap();
    b.send_direct(a.id, "second").unwrap();

    let mut ca = login_chat(s.addr, &a.name);
    let replayed = format!("msg @{} 2 {} second", b.name, b.name);
    assert!(
        ca.seen.contains(&replayed),
        "catch-up at login: {:?}",
        ca.seen
    );
    // Shown, so read: the list says so, with the last message.
    ca.send("/unread");
    ca.expect(&format!("unread @{} 0 {}: second", b.name, b.name));
    ca.expect("ok unread 0");

    ca.send(&format!("/open {}", b.name));
    ca.expect(&format!("ok open @{}", b.name));
    ca.send("/typing");
    ca.expect("ok typing");
    wait(
        &b.c,
        "the chat's typing notification",
        |e| matches!(e, Event::Typing { user_id, .. } if *user_id == a.id),
    );
    b.typing(ringchat::model::direct_conv(a.id, b.id), false)
        .unwrap();
    ca.expect(&format!("typing @{}", b.name));

    // Sent (ok msg), then read by bob's client (it acknowledges what it gets).
    ca.send("hello bob");
    ca.expect(&format!("ok msg @{} 3", b.name));
    wait_msg(&b.c, "the chat's message");
    ca.expect(&format!("read @{} 3", b.name));

    ca.send("/quit");
    let (st, lines) = ca.finish();
    assert!(st.success(), "{st}: {lines:?}");
}

//! Nodes run in-process: `serve_with` takes its stop signal as a value and
//! reports the address it bound (port 0), so one process runs several nodes
//! side by side and one after another, with no process-wide state between
//! them (the server once kept its stop flag and panic counter in statics and
//! could run once per process).

mod common;

use common::{PASSWORD, T, uname, wait_msg};
use ringchat::client::{Client, Event};
use ringchat::server::{Config, Control};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

struct Node {
    addr: SocketAddr,
    legacy: SocketAddr,
    ctl: Control,
    thread: Option<JoinHandle<Result<(), String>>>,
    dir: PathBuf,
}

impl Node {
    fn start(tag: &str) -> Node {
        let dir = std::env::temp_dir().join(format!(
            "ringchat-inproc-{}-{}",
            std::process::id(),
            uname(tag)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // A free port for the old protocol: `serve_with` binds port 0 for
        // the native listener itself; the extra one is asked for by address.
        let legacy = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 1,
            data_dir: dir.clone(),
            legacy_listen: Some(legacy),
            hash_threads: 1,
            ..Config::default()
        };
        let (tx, rx) = mpsc::channel();
        let ctl = Control::new().report_ready(tx);
        let c2 = ctl.clone();
        let thread = std::thread::spawn(move || ringchat::serve_with(cfg, c2));
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the node reports its bound address");
        assert_ne!(addr.port(), 0);
        Node {
            addr,
            legacy,
            ctl,
            thread: Some(thread),
            dir,
        }
    }

    /// Stops the node and waits for `serve_with` to return.
    fn stop(&mut self) {
        self.ctl.stop();
        let t = self.thread.take().expect("running");
        t.join()
            .expect("serve thread")
            .expect("serve returned an error");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two users who are friends on `node`, logged in.
fn pair(node: &Node) -> (Client, Client, u64) {
    let a = Client::connect(node.addr).unwrap();
    let b = Client::connect(node.addr).unwrap();
    let (an, bn) = (uname("ipa"), uname("ipb"));
    a.register(&an, PASSWORD).unwrap();
    let b_id = b.register(&bn, PASSWORD).unwrap();
    a.login(&an, PASSWORD).unwrap();
    b.login(&bn, PASSWORD).unwrap();
    a.friend_request(b_id, "").unwrap();
    b.wait_for(T, |e| matches!(e, Event::Friend { .. }))
        .expect("request");
    b.friend_respond(a.user_id(), true).unwrap();
    a.wait_for(T, |e| matches!(e, Event::Friend { .. }))
        .expect("accepted");
    (a, b, b_id)
}

#[test]
fn several_nodes_in_one_process_each_with_its_own_stop() {
    let mut n1 = Node::start("n1");
    let n2 = Node::start("n2");
    assert_ne!(n1.addr, n2.addr);
    let (a1, b1, b1_id) = pair(&n1);
    let (a2, b2, b2_id) = pair(&n2);
    a1.send_direct(b1_id, "on node one").unwrap();
    a2.send_direct(b2_id, "on node two").unwrap();
    assert_eq!(wait_msg(&b1, "node one message").body, "on node one");
    assert_eq!(wait_msg(&b2, "node two message").body, "on node two");

    // Stopping one node leaves the other serving (the stop signal is the
    // node's, not the process's).
    n1.stop();
    a2.send_direct(b2_id, "still here").unwrap();
    assert_eq!(wait_msg(&b2, "after the other stopped").body, "still here");
    // The old protocol's listener is the node's too: n2's still answers.
    let mut l = std::net::TcpStream::connect(n2.legacy).unwrap();
    use std::io::{Read, Write};
    l.write_all(br#"{"msgid":1,"id":999999,"password":"nope-nope"}"#)
        .unwrap();
    l.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 512];
    let n = l.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("\"errno\":1"),
        "legacy login refused with errno 1: {}",
        String::from_utf8_lossy(&buf[..n])
    );

    // And a new node starts in the same process after one stopped.
    let n3 = Node::start("n3");
    let (a3, b3, b3_id) = pair(&n3);
    a3.send_direct(b3_id, "third").unwrap();
    assert_eq!(wait_msg(&b3, "node three message").body, "third");
    drop((a1, b1, a2, b2, a3, b3));
}

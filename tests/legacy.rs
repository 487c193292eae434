//! The legacy (cc_ChatServer) JSON protocol over real TCP, driven the way
//! the old console client drives it: one compact JSON object plus a NUL per
//! write, one `read` per reply. Pushes and large messages are read with a
//! streaming splitter, as the old GUI clients do.

mod common;

use common::*;
use ringchat::client::{Event, FriendEventKind, GroupEventKind};
use ringchat::legacy::codec::{Split, Splitter};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

struct Legacy {
    s: TcpStream,
    sp: Splitter,
}

impl Legacy {
    fn connect(addr: SocketAddr) -> Legacy {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Legacy {
            s,
            sp: Splitter::new(16 << 20),
        }
    }

    /// One request as the old client writes it: JSON, NUL, one write.
    fn send(&mut self, v: Value) {
        let mut b = serde_json::to_vec(&v).unwrap();
        b.push(0);
        self.s.write_all(&b).unwrap();
    }

    fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// The old console client's read: one `read` into a 1024-byte buffer
    /// must hold exactly one whole object.
    #[track_caller]
    fn reply(&mut self) -> Value {
        assert!(
            self.sp.pending().is_empty(),
            "unread bytes before a reply: {:?}",
            String::from_utf8_lossy(self.sp.pending())
        );
        self.s.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 1024];
        let n = self.s.read(&mut buf).expect("no reply within T");
        assert!(n > 0, "connection closed instead of a reply");
        assert!(n < 1024, "reply fills the old client's 1024-byte buffer");
        serde_json::from_slice(&buf[..n]).unwrap_or_else(|e| {
            panic!(
                "one read is not one JSON object ({e}): {:?}",
                String::from_utf8_lossy(&buf[..n])
            )
        })
    }

    /// The next object, however the bytes arrive (streaming decoder).
    #[track_caller]
    fn next(&mut self) -> Value {
        self.next_within(T)
            .expect("no object from the server within T")
    }

    fn next_within(&mut self, t: Duration) -> Option<Value> {
        self.s.set_read_timeout(Some(t)).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.sp.next_object() {
                Split::Object(o) => return Some(Value::Object(o)),
                Split::Garbage(g) => panic!("server sent garbage: {g}"),
                Split::NeedMore => {}
            }
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.sp.push(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Nothing arrives for a while (and the connection stays open).
    #[track_caller]
    fn quiet(&mut self) {
        if let Some(v) = self.next_within(QUIET) {
            panic!("unexpected object: {v}");
        }
    }

    /// The server closes the connection (after any objects, returned).
    #[track_caller]
    fn closed(&mut self) -> Vec<Value> {
        let mut got = vec![];
        self.s.set_read_timeout(Some(T)).unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            while let Split::Object(o) = self.sp.next_object() {
                got.push(Value::Object(o));
            }
            match self.s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => self.sp.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
                Err(e) => panic!("connection not closed: {e}"),
            }
        }
    }

    fn login(&mut self, id: u64) -> Value {
        self.send(json!({"msgid": 1, "id": id, "password": PASSWORD}));
        let r = self.next();
        assert_eq!(r["msgid"], 2, "{r}");
        assert_eq!(r["errno"], 0, "login failed: {r}");
        r
    }
}

/// Registers over the legacy protocol and returns the new id.
fn register(addr: SocketAddr, name: &str) -> u64 {
    let mut c = Legacy::connect(addr);
    c.send(json!({"msgid": 3, "name": name, "password": PASSWORD}));
    let r = c.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(4), Some(0)),
        "{r}"
    );
    r["id"].as_u64().unwrap()
}

/// A registered, logged-in legacy user whose login reply was read.
fn user(addr: SocketAddr, prefix: &str) -> (Legacy, u64, String) {
    let name = uname(prefix);
    let id = register(addr, &name);
    let mut c = Legacy::connect(addr);
    let r = c.login(id);
    assert_eq!(r["id"], id);
    assert_eq!(r["name"], name.as_str());
    (c, id, name)
}

/// Decodes a list of JSON strings (the old format nests JSON in strings).
fn nested(v: &Value) -> Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| serde_json::from_str(s.as_str().expect("a JSON string")).unwrap())
        .collect()
}

/// Two old clients become friends the only way they can: each adds the
/// other (msgid 6). The first add is a request the other receives; adding
/// back accepts it, and the first hears of it as a msgid 6 object too.
fn befriend(a: &mut Legacy, b: &mut Legacy, b_id: u64) {
    a.send(json!({"msgid": 6, "from": 0, "to": b_id, "msg": "hi", "sendname": "x", "time": "t"}));
    let r = a.reply();
    assert_eq!(
        (r["errno"].as_i64(), r["friendstate"].as_str()),
        (Some(0), Some("pending")),
        "{r}"
    );
    let push = b.next();
    assert_eq!(push["msgid"], 6, "{push}");
    let a_id = push["from"].as_u64().unwrap();
    b.send(json!({"msgid": 6, "to": a_id, "msg": "hi back"}));
    let r = b.reply();
    assert_eq!(
        (r["errno"].as_i64(), r["friendstate"].as_str()),
        (Some(0), Some("online")),
        "{r}"
    );
    let push = a.next();
    assert_eq!(
        (push["msgid"].as_i64(), push["from"].as_u64()),
        (Some(6), Some(b_id)),
        "{push}"
    );
}

#[test]
fn register_and_login_errors() {
    let (_srv, addr) = TestServer::start_legacy();
    let name = uname("lgreg");
    let id = register(addr, &name);
    let mut c = Legacy::connect(addr);
    // Same name again.
    c.send(json!({"msgid": 3, "name": name, "password": PASSWORD}));
    let r = c.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(4), Some(1)),
        "{r}"
    );
    // Wrong password, unknown id: errno 1 with errmsg, connection stays usable.
    for (uid, pw) in [(id, "wrong password"), (id + 1000, PASSWORD), (0, PASSWORD)] {
        c.send(json!({"msgid": 1, "id": uid, "password": pw}));
        let r = c.reply();
        assert_eq!(
            (r["msgid"].as_i64(), r["errno"].as_i64()),
            (Some(2), Some(1)),
            "{r}"
        );
        // The old server's words: its console client prints them.
        assert_eq!(r["errmsg"], "用户名或密码错误，请重新登录", "{r}");
    }
    // A password below the minimum: refused, saying why.
    c.send(json!({"msgid": 3, "name": uname("lgshort"), "password": "abc"}));
    let r = c.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(4), Some(1)),
        "{r}"
    );
    assert!(
        r["errmsg"].as_str().unwrap_or("").contains("8-128"),
        "the reply says what the rule is: {r}"
    );
    // Requests that need a login are refused, not executed.
    c.send(json!({"msgid": 7, "from": id, "groupname": "g", "groupdesc": "d"}));
    let r = c.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(7), Some(1)),
        "{r}"
    );
    let r = c.login(id);
    assert_eq!(r["id"], id);
    assert!(
        r.get("offlinemsg").is_none() && r.get("friends").is_none(),
        "{r}"
    );
    // Logging in twice on one connection.
    c.send(json!({"msgid": 1, "id": id, "password": PASSWORD}));
    let r = c.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(2), Some(2)),
        "{r}"
    );
}

#[test]
fn every_msgid_between_legacy_users() {
    let (_srv, addr) = TestServer::start_legacy();
    let (mut a, a_id, a_name) = user(addr, "lga");
    let (mut b, b_id, b_name) = user(addr, "lgb");

    // 5 before friendship: refused.
    a.send(json!({"msgid": 5, "from": a_id, "to": b_id, "msg": "early", "sendname": a_name, "time": "t"}));
    let r = a.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(5), Some(1)),
        "{r}"
    );
    b.quiet();

    // 6: a request; the other side gets the request object, and the reply
    // does not tell whether they are online.
    a.send(json!({"msgid": 6, "from": a_id, "to": b_id, "msg": "be my friend", "sendname": a_name, "time": "t"}));
    let r = a.reply();
    assert_eq!(
        r,
        json!({"msgid": 6, "errno": 0, "friendname": b_name, "friendstate": "pending"})
    );
    let push = b.reply();
    assert_eq!(push["msgid"], 6);
    assert_eq!(push["from"], a_id);
    assert_eq!(push["to"], b_id);
    assert_eq!(push["sendname"], a_name.as_str());
    assert_eq!(push["msg"], "be my friend");
    // Still not friends.
    a.send(json!({"msgid": 5, "to": b_id, "msg": "too early"}));
    assert_eq!(a.reply()["errno"], 1);
    b.quiet();
    // 6 back: friends (the old client has no accept command; this is it).
    b.send(
        json!({"msgid": 6, "from": b_id, "to": a_id, "msg": "ok", "sendname": b_name, "time": "t"}),
    );
    let r = b.reply();
    assert_eq!(
        r,
        json!({"msgid": 6, "errno": 0, "friendname": a_name, "friendstate": "online"})
    );
    let push = a.reply();
    assert_eq!(
        (
            push["msgid"].as_i64(),
            push["from"].as_u64(),
            push["to"].as_u64()
        ),
        (Some(6), Some(b_id), Some(a_id)),
        "{push}"
    );
    assert_eq!(push["sendname"], b_name.as_str());
    assert_eq!(push["msg"], "accepted your friend request");
    // 6 again between friends: errno 0, nobody is notified.
    a.send(json!({"msgid": 6, "to": b_id, "msg": "again"}));
    assert_eq!(a.reply()["friendstate"], "online");
    b.quiet();
    // 6 to nobody.
    a.send(json!({"msgid": 6, "from": a_id, "to": 999_999, "msg": "", "sendname": a_name, "time": "t"}));
    let r = a.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(6), Some(1)),
        "{r}"
    );
    assert_eq!(r["errmsg"], "该用户不存在", "the old server's words: {r}");

    // 5: forwarded; no reply to the sender.
    a.send(json!({"msgid": 5, "from": a_id, "to": b_id, "msg": "hello b", "sendname": a_name, "time": "t"}));
    let m = b.reply();
    assert_eq!(m["msgid"], 5);
    assert_eq!(
        (m["from"].as_u64(), m["to"].as_u64()),
        (Some(a_id), Some(b_id))
    );
    assert_eq!(m["msg"], "hello b");
    assert_eq!(m["sendname"], a_name.as_str());
    assert!(m["time"].as_str().unwrap().len() == 19, "{m}");
    a.quiet();

    // 7: create group (a name its creator already uses → errno 1; names
    // are unique per owner, tests/group_privacy.rs).
    let gname = uname("lgg");
    a.send(json!({"msgid": 7, "from": a_id, "groupname": gname, "groupdesc": "the \"desc\""}));
    let r = a.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(7), Some(0)),
        "{r}"
    );
    let g = r["groupid"].as_u64().unwrap();
    a.send(json!({"msgid": 7, "from": a_id, "groupname": gname, "groupdesc": ""}));
    let r = a.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(7), Some(1)),
        "{r}"
    );

    // 12 by a non-member: answered, as the old server did (its console
    // client asks for the group info first and joins only if that
    // succeeds), but members' presence is for members only.
    b.send(json!({"msgid": 12, "groupid": g}));
    let r = b.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(12), Some(0)),
        "{r}"
    );
    assert_eq!(r["groupname"], gname.as_str());
    let users = nested(&r["groupusers"]);
    assert_eq!(users.len(), 1, "{r}");
    assert_eq!(
        (users[0]["id"].as_u64(), users[0]["state"].as_str()),
        (Some(a_id), Some("offline")),
        "an outsider does not see a member online: {r}"
    );
    // An unknown group is still an error.
    b.send(json!({"msgid": 12, "groupid": g + 1000}));
    assert_eq!(b.reply()["errno"], 1);

    // 8: join; twice is an error; unknown group is an error.
    b.send(json!({"msgid": 8, "from": b_id, "groupid": g}));
    let r = b.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(8), Some(0)),
        "{r}"
    );
    assert_eq!(r["groupid"], g);
    b.send(json!({"msgid": 8, "from": b_id, "groupid": g}));
    let r = b.reply();
    assert_eq!(
        (r["errno"].as_i64(), r["groupid"].as_u64()),
        (Some(1), Some(g)),
        "{r}"
    );
    b.send(json!({"msgid": 8, "from": b_id, "groupid": g + 1000}));
    let r = b.reply();
    assert_eq!(r["errno"], 1, "{r}");

    // 12: group info with roles and states.
    a.send(json!({"msgid": 12, "groupid": g}));
    let r = a.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(12), Some(0)),
        "{r}"
    );
    assert_eq!(r["groupname"], gname.as_str());
    assert_eq!(r["groupdesc"], "the \"desc\"");
    let users = nested(&r["groupusers"]);
    assert_eq!(users.len(), 2);
    let ua = users.iter().find(|u| u["id"] == a_id).unwrap();
    let ub = users.iter().find(|u| u["id"] == b_id).unwrap();
    assert_eq!(
        (ua["role"].as_str(), ua["state"].as_str()),
        (Some("creator"), Some("online"))
    );
    assert_eq!(
        (ub["role"].as_str(), ub["name"].as_str()),
        (Some("normal"), Some(b_name.as_str()))
    );

    // 9: forwarded to the other members, not echoed.
    b.send(json!({"msgid": 9, "from": b_id, "groupid": g, "groupname": gname, "sendname": b_name, "time": "t", "msg": "hi group"}));
    let m = a.reply();
    assert_eq!(m["msgid"], 9);
    assert_eq!(
        (m["from"].as_u64(), m["groupid"].as_u64()),
        (Some(b_id), Some(g))
    );
    assert_eq!(m["groupname"], gname.as_str());
    assert_eq!(m["msg"], "hi group");
    b.quiet();

    // 10: leave; then group chat from b is refused and a gets nothing.
    b.send(json!({"msgid": 10, "from": b_id, "groupid": g}));
    let r = b.reply();
    assert_eq!(
        (
            r["msgid"].as_i64(),
            r["errno"].as_i64(),
            r["groupid"].as_u64()
        ),
        (Some(10), Some(0), Some(g)),
        "{r}"
    );
    b.send(json!({"msgid": 9, "from": b_id, "groupid": g, "msg": "after leaving"}));
    let r = b.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(9), Some(1)),
        "{r}"
    );
    a.quiet();

    // 11: only the creator dissolves; afterwards the group is gone.
    b.send(json!({"msgid": 8, "groupid": g}));
    assert_eq!(b.reply()["errno"], 0);
    b.send(json!({"msgid": 11, "from": b_id, "groupid": g}));
    let r = b.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(11), Some(1)),
        "{r}"
    );
    a.send(json!({"msgid": 11, "from": a_id, "groupid": g}));
    let r = a.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(11), Some(0)),
        "{r}"
    );
    b.quiet(); // group events have no legacy form
    a.send(json!({"msgid": 12, "groupid": g}));
    assert_eq!(a.reply()["errno"], 1);
    // The name is free again.
    a.send(json!({"msgid": 7, "groupname": gname}));
    assert_eq!(a.reply()["errno"], 0);

    // 13: logout, no reply; the same connection logs in again.
    a.send(json!({"msgid": 13, "id": a_id}));
    a.quiet();
    let r = a.login(a_id);
    assert_eq!(r["name"], a_name.as_str());
    let friends = nested(&r["friends"]);
    assert_eq!(
        friends,
        vec![json!({"id": b_id, "name": b_name, "state": "online"})]
    );
    a.send(json!({"msgid": 5, "to": b_id, "msg": "back again"}));
    assert_eq!(b.reply()["msg"], "back again");
}

#[test]
fn offline_messages_arrive_once_at_next_login() {
    let (_srv, addr) = TestServer::start_legacy();
    let (mut a, a_id, a_name) = user(addr, "lgoa");
    let (mut b, b_id, b_name) = user(addr, "lgob");
    befriend(&mut a, &mut b, b_id);
    a.send(json!({"msgid": 7, "groupname": uname("lgog"), "groupdesc": "desc"}));
    let g = a.reply()["groupid"].as_u64().unwrap();
    b.send(json!({"msgid": 8, "groupid": g}));
    assert_eq!(b.reply()["errno"], 0);
    b.send(json!({"msgid": 13, "id": b_id}));
    b.quiet();
    drop(b);
    a.send(json!({"msgid": 5, "to": b_id, "msg": "while you were out 1"}));
    a.send(json!({"msgid": 9, "groupid": g, "msg": "group while out"}));
    a.send(json!({"msgid": 5, "to": b_id, "msg": "while you were out 2"}));
    a.quiet();

    let mut b = Legacy::connect(addr);
    let r = b.login(b_id);
    let off = nested(&r["offlinemsg"]);
    let texts: Vec<&str> = off.iter().map(|m| m["msg"].as_str().unwrap()).collect();
    assert_eq!(off.len(), 3, "{off:?}");
    let direct: Vec<&str> = off
        .iter()
        .filter(|m| m["msgid"] == 5)
        .map(|m| m["msg"].as_str().unwrap())
        .collect();
    assert_eq!(
        direct,
        ["while you were out 1", "while you were out 2"],
        "{texts:?}"
    );
    let gm = off.iter().find(|m| m["msgid"] == 9).unwrap();
    assert_eq!(
        (gm["groupid"].as_u64(), gm["from"].as_u64()),
        (Some(g), Some(a_id))
    );
    assert_eq!(gm["sendname"], a_name.as_str());
    assert_eq!(nested(&r["friends"])[0]["state"], "online");
    let groups = nested(&r["groups"]);
    assert_eq!(groups[0]["id"], g);
    assert_eq!(groups[0]["groupdesc"], "desc");
    assert_eq!(nested(&groups[0]["groupusers"]).len(), 2);
    // Live messages received now are delivered too, and not again later.
    a.send(json!({"msgid": 5, "to": b_id, "msg": "live"}));
    assert_eq!(b.reply()["msg"], "live");
    drop(b);
    // Give the cursor flush (200 ms tick) a moment; a fresh login must see
    // neither the earlier offline messages nor the live one.
    std::thread::sleep(Duration::from_millis(300));
    let mut b = Legacy::connect(addr);
    let r = b.login(b_id);
    assert!(r.get("offlinemsg").is_none(), "delivered again: {r}");
    assert_eq!(r["name"], b_name.as_str());
    // The sender's own messages are not offline messages for the sender.
    let mut a2 = Legacy::connect(addr);
    let r = a2.login(a_id);
    assert!(r.get("offlinemsg").is_none(), "own messages replayed: {r}");
}

#[test]
fn split_coalesced_and_nul_less_input() {
    let (_srv, addr) = TestServer::start_legacy();
    let (mut a, a_id, _) = user(addr, "lgsa");
    let (mut b, b_id, _) = user(addr, "lgsb");
    befriend(&mut a, &mut b, b_id);
    // One object in single bytes.
    let one = serde_json::to_vec(&json!({"msgid": 5, "to": b_id, "msg": "trickle 😀"})).unwrap();
    for byte in &one {
        a.send_raw(std::slice::from_ref(byte));
        std::thread::sleep(Duration::from_millis(1));
    }
    a.send_raw(b"\0");
    assert_eq!(b.next()["msg"], "trickle 😀");
    // Three objects in one write, NULs and none mixed.
    let mut many = Vec::new();
    for (i, sep) in ["\0", "", "\0"].iter().enumerate() {
        many.extend(
            serde_json::to_vec(&json!({"msgid": 5, "to": b_id, "msg": format!("batch {i}")}))
                .unwrap(),
        );
        many.extend_from_slice(sep.as_bytes());
    }
    a.send_raw(&many);
    for i in 0..3 {
        assert_eq!(b.next()["msg"], format!("batch {i}"));
    }
    // Login split across writes, on a new connection.
    let mut c = Legacy::connect(addr);
    let login = serde_json::to_vec(&json!({"msgid": 1, "id": a_id, "password": PASSWORD})).unwrap();
    let (x, y) = login.split_at(7);
    c.send_raw(x);
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(y);
    c.send_raw(b"\0");
    let r = c.next();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(2), Some(0)),
        "{r}"
    );
}

#[test]
fn identity_comes_from_the_login_not_from_fields() {
    let (_srv, addr) = TestServer::start_legacy();
    let (mut a, a_id, a_name) = user(addr, "lgida");
    let (mut b, b_id, _) = user(addr, "lgidb");
    let (mut c, c_id, _) = user(addr, "lgidc");
    befriend(&mut b, &mut c, c_id);
    // a claims to be b (a friend of c): still a, and a is no friend of c.
    a.send(json!({"msgid": 5, "from": b_id, "id": b_id, "to": c_id, "msg": "spoof", "sendname": "b", "time": "t"}));
    let r = a.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(5), Some(1)),
        "{r}"
    );
    c.quiet();
    // Once friends, the pushed object names the real sender.
    befriend(&mut a, &mut c, c_id);
    a.send(json!({"msgid": 5, "from": b_id, "to": c_id, "msg": "real", "sendname": "not me"}));
    let m = c.reply();
    assert_eq!(
        (m["from"].as_u64(), m["sendname"].as_str()),
        (Some(a_id), Some(a_name.as_str()))
    );
    // Logout naming another id logs out this connection only.
    a.send(json!({"msgid": 13, "id": b_id}));
    b.send(json!({"msgid": 5, "to": c_id, "msg": "b still here"}));
    assert_eq!(c.reply()["msg"], "b still here");
}

#[test]
fn non_member_group_post_reaches_nobody() {
    let (_srv, addr) = TestServer::start_legacy();
    let (mut a, _, _) = user(addr, "lgnma");
    let (mut x, _, _) = user(addr, "lgnmx");
    a.send(json!({"msgid": 7, "groupname": uname("lgnmg")}));
    let g = a.reply()["groupid"].as_u64().unwrap();
    x.send(json!({"msgid": 9, "groupid": g, "msg": "intrusion"}));
    let r = x.reply();
    assert_eq!(
        (
            r["msgid"].as_i64(),
            r["errno"].as_i64(),
            r["groupid"].as_u64()
        ),
        (Some(9), Some(1), Some(g)),
        "{r}"
    );
    a.quiet();
    x.send(json!({"msgid": 10, "groupid": g}));
    assert_eq!(x.reply()["errno"], 1);
    x.send(json!({"msgid": 11, "groupid": g}));
    assert_eq!(x.reply()["errno"], 1);
    x.send(json!({"msgid": 9, "groupid": 1u64 << 63, "msg": "bad id"}));
    assert_eq!(x.reply()["errno"], 1);
}

#[test]
fn large_message_with_quotes_and_emoji() {
    let (_srv, addr) = TestServer::start_legacy();
    let (mut a, a_id, _) = user(addr, "lgla");
    let (mut b, b_id, _) = user(addr, "lglb");
    befriend(&mut a, &mut b, b_id);
    let unit = "\"quoted\" 😀 \\ {}[] ";
    let mut text = String::new();
    while text.len() < 60_000 {
        text.push_str(unit);
    }
    a.send(json!({"msgid": 5, "to": b_id, "msg": text}));
    let m = b.next();
    assert_eq!(m["msg"].as_str().unwrap(), text);
    assert_eq!(m["from"], a_id);
    // Group path too.
    a.send(json!({"msgid": 7, "groupname": uname("lglg")}));
    let g = a.reply()["groupid"].as_u64().unwrap();
    b.send(json!({"msgid": 8, "groupid": g}));
    assert_eq!(b.reply()["errno"], 0);
    b.send(json!({"msgid": 9, "groupid": g, "msg": text}));
    assert_eq!(a.next()["msg"].as_str().unwrap(), text);
    // Over the body limit: an errno, not a close.
    let huge = "x".repeat(70_000);
    a.send(json!({"msgid": 5, "to": b_id, "msg": huge}));
    let r = a.next();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(5), Some(1)),
        "{r}"
    );
    a.send(json!({"msgid": 5, "to": b_id, "msg": "still fine"}));
    assert_eq!(b.next()["msg"], "still fine");
}

#[test]
fn bad_input_gets_errno_or_close_and_harms_nobody() {
    let (_srv, addr) = TestServer::start_legacy();
    let (mut a, _, _) = user(addr, "lgbia");
    let (mut b, b_id, _) = user(addr, "lgbib");
    befriend(&mut a, &mut b, b_id);
    // Typed errors keep the connection.
    for (req, msgid) in [
        (json!({"msgid": 99}), 99),
        (json!({"msgid": "5", "to": b_id}), 0),
        (json!({"to": b_id, "msg": "no msgid"}), 0),
        (json!({"msgid": 5, "to": "2", "msg": "x"}), 5),
        (json!({"msgid": 5, "to": b_id, "msg": 17}), 5),
        (json!({"msgid": 5, "to": b_id}), 5),
        (json!({"msgid": 5, "to": b_id, "msg": ""}), 5),
        (json!({"msgid": 8, "groupid": -1}), 8),
        (json!({"msgid": 12}), 12),
        (json!({"msgid": 1, "id": "x"}), 2),
        (
            json!({"msgid": 3, "name": "bad name!", "password": PASSWORD}),
            4,
        ),
    ] {
        a.send(req.clone());
        let r = a.reply();
        assert_eq!(
            (r["msgid"].as_i64(), r["errno"].as_i64()),
            (Some(msgid), Some(1)),
            "{req} -> {r}"
        );
        assert!(r["errmsg"].is_string(), "{r}");
    }
    b.quiet();
    // Garbage closes that connection only.
    for garbage in [&b"not json at all\0"[..], b"{\"msgid\":5,]\0", b"[1,2,3]\0"] {
        let (mut c, _, _) = user(addr, "lgbic");
        c.send_raw(garbage);
        let got = c.closed();
        assert!(got.iter().all(|v| v["errno"] == 1), "{got:?}");
    }
    // An unauthenticated connection too.
    let mut d = Legacy::connect(addr);
    d.send_raw(b"\xff\xfe garbage");
    d.closed();
    a.send(json!({"msgid": 5, "to": b_id, "msg": "unharmed"}));
    assert_eq!(b.reply()["msg"], "unharmed");
}

#[test]
fn legacy_and_native_users_chat_both_ways() {
    let (srv, addr) = TestServer::start_legacy();
    let n = srv.user(&uname("lgnat"));
    let (mut l, l_id, l_name) = user(addr, "lgleg");
    // Legacy add-friend: a native friend request; accepted natively, the
    // legacy side hears it as msgid 6, the native side gets presence.
    l.send(json!({"msgid": 6, "to": n.id, "msg": "hello native"}));
    let r = l.reply();
    assert_eq!(
        r,
        json!({"msgid": 6, "errno": 0, "friendname": n.name, "friendstate": "pending"})
    );
    let ev = wait(&n.c, "friend event", |e| matches!(e, Event::Friend { .. }));
    match ev {
        Event::Friend {
            kind,
            user_id,
            username,
            note,
        } => {
            assert_eq!(kind, FriendEventKind::Requested);
            assert_eq!(
                (user_id, username.as_str(), note.as_str()),
                (l_id, l_name.as_str(), "hello native")
            );
        }
        _ => unreachable!(),
    }
    n.friend_respond(l_id, true).unwrap();
    let push = l.reply();
    assert_eq!(
        (push["msgid"].as_i64(), push["from"].as_u64()),
        (Some(6), Some(n.id)),
        "{push}"
    );
    wait(
        &n.c,
        "presence of the legacy friend",
        |e| matches!(e, Event::Presence { user_id, online: true } if *user_id == l_id),
    );
    // Native → legacy.
    n.send_direct(l_id, "from native \"quoted\"").unwrap();
    let m = l.reply();
    assert_eq!(
        (m["msgid"].as_i64(), m["from"].as_u64(), m["to"].as_u64()),
        (Some(5), Some(n.id), Some(l_id))
    );
    assert_eq!(m["msg"], "from native \"quoted\"");
    assert_eq!(m["sendname"], n.name.as_str());
    // Legacy → native.
    l.send(json!({"msgid": 5, "from": 1, "to": n.id, "msg": "from legacy 😀"}));
    let got = wait_msg(&n.c, "message from the legacy user");
    assert_eq!((got.sender, got.body.as_str()), (l_id, "from legacy 😀"));
    // Groups: native creates, legacy joins, both post.
    let g = n.create_group(&uname("lgxg")).unwrap();
    l.send(json!({"msgid": 8, "groupid": g}));
    assert_eq!(l.reply()["errno"], 0);
    n.send_group(g, "native to group").unwrap();
    let m = l.next();
    assert_eq!(
        (
            m["msgid"].as_i64(),
            m["groupid"].as_u64(),
            m["msg"].as_str()
        ),
        (Some(9), Some(g), Some("native to group"))
    );
    l.send(json!({"msgid": 9, "groupid": g, "msg": "legacy to group"}));
    let got = wait_msg(&n.c, "group message from the legacy user");
    assert_eq!(
        (got.sender, got.group_id, got.body.as_str()),
        (l_id, g, "legacy to group")
    );
    // Native friend request to a legacy user arrives as a msgid 6 object.
    let n2 = srv.user(&uname("lgnat2"));
    n2.friend_request(l_id, "add me?").unwrap();
    let m = l.next();
    assert_eq!(
        (m["msgid"].as_i64(), m["from"].as_u64(), m["msg"].as_str()),
        (Some(6), Some(n2.id), Some("add me?"))
    );
    // Legacy logout: native friend sees it go offline.
    l.send(json!({"msgid": 13, "id": l_id}));
    wait(
        &n.c,
        "legacy friend offline",
        |e| matches!(e, Event::Presence { user_id, online: false } if *user_id == l_id),
    );
}

#[test]
fn one_user_on_legacy_and_native_at_once() {
    let (srv, addr) = TestServer::start_legacy();
    let n = srv.user(&uname("lgboth"));
    let friend = srv.user(&uname("lgbothf"));
    befriend_native(&n, &friend);
    // The same account logs in on the legacy port as well: no errno 2.
    let mut l = Legacy::connect(addr);
    let r = l.login(n.id);
    assert_eq!(nested(&r["friends"])[0]["id"], friend.id);
    // Both sessions receive the friend's message.
    friend.send_direct(n.id, "to both").unwrap();
    assert_eq!(l.reply()["msg"], "to both");
    assert_eq!(wait_msg(&n.c, "native copy").body, "to both");
    // A legacy send reaches the friend and the user's native session.
    l.send(json!({"msgid": 5, "to": friend.id, "msg": "sent from legacy"}));
    assert_eq!(wait_msg(&friend.c, "friend copy").body, "sent from legacy");
    assert_eq!(wait_msg(&n.c, "own other device").body, "sent from legacy");
    l.quiet(); // not echoed to the sending connection
    // The user's own message from the native device is not shown to the
    // legacy client either (the old server never echoed own messages).
    n.send_direct(friend.id, "sent from native").unwrap();
    assert_eq!(wait_msg(&friend.c, "friend copy").body, "sent from native");
    l.quiet();
}

fn befriend_native(a: &User, b: &User) {
    common::befriend(a, b);
}

/// A cc_ChatServer database in its own MySQL database on the local MariaDB,
/// dropped when the test ends.
struct OldDb {
    admin: mysql::Pool,
    name: String,
}

impl OldDb {
    fn create() -> Option<OldDb> {
        use mysql::prelude::Queryable;
        let admin = match mysql::Pool::new("mysql://root@127.0.0.1:3306") {
            Ok(p) if p.get_conn().is_ok() => p,
            other => {
                let why = other
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or("no connection".into());
                if std::env::var("RINGCHAT_REQUIRE_MYSQL").as_deref() == Ok("1") {
                    panic!("MariaDB at 127.0.0.1:3306 unreachable: {why}");
                }
                println!("SKIPPED: MariaDB at 127.0.0.1:3306 unreachable ({why})");
                return None;
            }
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "ringchat_oldchat_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000
        );
        let mut c = admin.get_conn().unwrap();
        c.query_drop(format!("CREATE DATABASE {name}")).unwrap();
        c.query_drop(format!("USE {name}")).unwrap();
        for ddl in [
            "CREATE TABLE User(id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(50) NOT NULL UNIQUE,
              password VARCHAR(50) NOT NULL, state ENUM('online','offline') DEFAULT 'offline')",
            "CREATE TABLE Friend(userid INT NOT NULL, friendid INT NOT NULL, PRIMARY KEY(userid, friendid))",
            "CREATE TABLE AllGroup(id INT PRIMARY KEY AUTO_INCREMENT, groupname VARCHAR(50) NOT NULL UNIQUE,
              groupdesc VARCHAR(200) DEFAULT '')",
            "CREATE TABLE GroupUser(groupid INT NOT NULL, userid INT NOT NULL,
              grouprole ENUM('creator','normal') DEFAULT 'normal', PRIMARY KEY(groupid, userid))",
            "CREATE TABLE OfflineMessage(userid INT NOT NULL, message VARCHAR(500) NOT NULL)",
        ] {
            c.query_drop(ddl).unwrap();
        }
        Some(OldDb { admin, name })
    }

    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:3306/{}", self.name)
    }
}

impl Drop for OldDb {
    fn drop(&mut self) {
        use mysql::prelude::Queryable;
        if let Ok(mut c) = self.admin.get_conn() {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS {}", self.name));
        }
    }
}

#[test]
fn import_legacy_from_mysql() {
    use mysql::prelude::Queryable;
    let Some(db) = OldDb::create() else { return };
    let mut c = db.admin.get_conn().unwrap();
    c.query_drop(format!("USE {}", db.name)).unwrap();
    // alice(5) and bob(9) are friends (a row per direction); carol(12) is a
    // friend of nobody. Group 3: alice creator, bob and carol members.
    // Old passwords are plaintext and often short.
    for stmt in [
        "INSERT INTO User VALUES (5,'alice','pw-alice1','online'),(9,'bob','123456','offline'),
          (12,'carol','carol pass','offline')",
        "INSERT INTO Friend VALUES (5,9),(9,5)",
        "INSERT INTO AllGroup VALUES (3,'old group','the \"old\" desc')",
        "INSERT INTO GroupUser VALUES (3,5,'creator'),(3,9,'normal'),(3,12,'normal')",
    ] {
        c.query_drop(stmt).unwrap();
    }
    let direct = r#"{"msgid":5,"from":5,"to":9,"msg":"offline hi","sendname":"alice","time":"2023-05-01 10:00:00"}"#;
    let group = r#"{"msgid":9,"from":5,"groupid":3,"groupname":"old group","sendname":"alice","time":"2023-05-01 10:01:00","msg":"group offline"}"#;
    let spoofed =
        r#"{"msgid":5,"from":12,"to":9,"msg":"not a friend","time":"2023-05-01 10:02:00"}"#;
    for (user, m) in [
        (9, direct),
        (9, group),
        (12, group),
        (9, spoofed),
        (12, "not json"),
    ] {
        c.exec_drop("INSERT INTO OfflineMessage VALUES (?, ?)", (user, m))
            .unwrap();
    }

    let (mut srv, addr) = TestServer::start_legacy();
    assert!(srv.stop().success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["import-legacy", "--from", &db.url(), "--data-dir"])
        .arg(&srv.data_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("users: 3") && stdout.contains("messages: 2"),
        "{stdout}"
    );
    assert!(stdout.contains("messages_skipped: 2"), "{stdout}");
    srv.start_again();

    // bob logs in with his old id and old password and gets what he missed.
    let mut bob = Legacy::connect(addr);
    bob.send(json!({"msgid": 1, "id": 9, "password": "123456"}));
    let r = bob.next();
    assert_eq!(
        (r["errno"].as_i64(), r["name"].as_str()),
        (Some(0), Some("bob")),
        "{r}"
    );
    let off = nested(&r["offlinemsg"]);
    assert_eq!(off.len(), 2, "{off:?}");
    assert_eq!(
        (off[0]["msgid"].as_i64(), off[0]["msg"].as_str()),
        (Some(9), Some("group offline"))
    );
    assert_eq!(off[0]["time"], "2023-05-01 10:01:00");
    assert_eq!(
        (off[1]["msgid"].as_i64(), off[1]["from"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(off[1]["msg"], "offline hi");
    assert_eq!(
        nested(&r["friends"]),
        vec![json!({"id": 5, "name": "alice", "state": "offline"})]
    );
    let groups = nested(&r["groups"]);
    assert_eq!(
        (groups[0]["id"].as_u64(), groups[0]["groupname"].as_str()),
        (Some(3), Some("old group"))
    );
    assert_eq!(groups[0]["groupdesc"], "the \"old\" desc");
    let gu = nested(&groups[0]["groupusers"]);
    assert_eq!(gu.len(), 3);
    assert_eq!(gu.iter().find(|u| u["id"] == 5).unwrap()["role"], "creator");

    // carol gets only the group message; alice (the sender) nothing.
    let mut carol = Legacy::connect(addr);
    carol.send(json!({"msgid": 1, "id": 12, "password": "carol pass"}));
    let r = carol.next();
    let off = nested(&r["offlinemsg"]);
    assert_eq!(off.len(), 1, "{off:?}");
    assert_eq!(off[0]["msg"], "group offline");
    let mut alice = Legacy::connect(addr);
    alice.send(json!({"msgid": 1, "id": 5, "password": "pw-alice1"}));
    let r = alice.next();
    assert_eq!(r["errno"], 0, "{r}");
    assert!(r.get("offlinemsg").is_none(), "{r}");
    // Imported users work natively too, and new ids continue above them.
    let n = srv.client();
    let s = n.login("alice", "pw-alice1").unwrap();
    assert_eq!(s.user_id, 5);
    assert!(n.register(&uname("lgnew"), PASSWORD).unwrap() > 12);
    // The imported friendship carries chat.
    alice.send(json!({"msgid": 5, "to": 9, "msg": "hello again"}));
    assert_eq!(bob.next()["msg"], "hello again");
}

// ------------------------------------------------- security (issue 15)

/// Like `TestServer::start_legacy`, with extra `serve` arguments.
fn start_legacy_with(extra: &[&str]) -> (TestServer, SocketAddr) {
    let mut args = vec!["--legacy-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let s = TestServer::start_with(&args);
    let legacy = s.legacy.expect("legacy address reported");
    (s, legacy)
}

/// The next friend event on a native client.
fn friend_event(c: &ringchat::client::Client, what: &str) -> (FriendEventKind, u64, String) {
    match wait(c, what, |e| matches!(e, Event::Friend { .. })) {
        Event::Friend {
            kind,
            user_id,
            note,
            ..
        } => (kind, user_id, note),
        _ => unreachable!(),
    }
}

/// Finding 1: msgid 6 used to force a friendship on the target (instant,
/// `Accepted` on the native side, online state in the reply, and a removed
/// friend could re-add themselves). Now it is a friend request: friends
/// only with the other side's consent.
#[test]
fn add_friend_is_a_request_not_a_forced_friendship() {
    let (srv, addr) = TestServer::start_legacy();
    let n = srv.user(&uname("lgsfn"));
    let (mut l, l_id, _) = user(addr, "lgsfl");

    // A request: the reply does not say whether the target is online.
    l.send(json!({"msgid": 6, "to": n.id, "msg": "let me in"}));
    let r = l.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(6), Some(0)),
        "{r}"
    );
    assert_eq!(r["friendname"], n.name.as_str(), "{r}");
    assert_eq!(r["friendstate"], "pending", "presence leaked: {r}");
    // The native user sees an ordinary request it can answer.
    assert_eq!(
        friend_event(&n.c, "friend request"),
        (FriendEventKind::Requested, l_id, "let me in".to_string())
    );
    // Not friends: no messages, no presence.
    l.send(json!({"msgid": 5, "to": n.id, "msg": "unsolicited"}));
    assert_eq!(l.reply()["errno"], 1);
    assert_quiet(&n.c, "message from a non-friend", |e| {
        matches!(e, Event::Message(_) | Event::Presence { .. })
    });
    // A repeat is no new notification.
    l.send(json!({"msgid": 6, "to": n.id, "msg": "let me in!!"}));
    assert_eq!(l.reply()["friendstate"], "pending");
    assert_quiet(&n.c, "a second request event", |e| {
        matches!(e, Event::Friend { .. })
    });
    // Rejected: still nothing.
    n.friend_respond(l_id, false).unwrap();
    l.send(json!({"msgid": 5, "to": n.id, "msg": "after reject"}));
    assert_eq!(l.reply()["errno"], 1);
    assert_quiet(&n.c, "message after reject", |e| {
        matches!(e, Event::Message(_))
    });

    // Asked again and accepted: friends; the legacy user hears it as msgid 6.
    l.send(json!({"msgid": 6, "to": n.id, "msg": "please"}));
    assert_eq!(l.reply()["friendstate"], "pending");
    assert_eq!(
        friend_event(&n.c, "second request").0,
        FriendEventKind::Requested
    );
    n.friend_respond(l_id, true).unwrap();
    let push = l.reply();
    assert_eq!(
        (
            push["msgid"].as_i64(),
            push["from"].as_u64(),
            push["to"].as_u64()
        ),
        (Some(6), Some(n.id), Some(l_id)),
        "{push}"
    );
    l.send(json!({"msgid": 5, "to": n.id, "msg": "now friends"}));
    assert_eq!(
        wait_msg(&n.c, "message from the new friend").body,
        "now friends"
    );
    // Adding an existing friend is harmless, and now the state is theirs to see.
    l.send(json!({"msgid": 6, "to": n.id, "msg": ""}));
    assert_eq!(
        l.reply(),
        json!({"msgid": 6, "errno": 0, "friendname": n.name, "friendstate": "online"})
    );
    assert_quiet(&n.c, "an event for a repeat add", |e| {
        matches!(e, Event::Friend { .. })
    });

    // Removed: msgid 6 does not undo the removal, it asks again.
    n.friend_remove(l_id).unwrap();
    l.send(json!({"msgid": 6, "to": n.id, "msg": "why"}));
    let r = l.reply();
    assert_eq!(
        (r["errno"].as_i64(), r["friendstate"].as_str()),
        (Some(0), Some("pending")),
        "{r}"
    );
    let (kind, who, _) = friend_event(&n.c, "request after removal");
    assert_eq!((kind, who), (FriendEventKind::Requested, l_id));
    l.send(json!({"msgid": 5, "to": n.id, "msg": "still here"}));
    assert_eq!(l.reply()["errno"], 1);
    assert_quiet(&n.c, "message after removal", |e| {
        matches!(e, Event::Message(_))
    });

    // Mutual consent: the native user asks a legacy user; msgid 6 back accepts.
    let (mut m, m_id, _) = user(addr, "lgsfm");
    n.friend_request(m_id, "hi m").unwrap();
    let push = m.reply();
    assert_eq!(
        (
            push["msgid"].as_i64(),
            push["from"].as_u64(),
            push["msg"].as_str()
        ),
        (Some(6), Some(n.id), Some("hi m"))
    );
    m.send(json!({"msgid": 6, "to": n.id, "msg": "sure"}));
    assert_eq!(
        m.reply(),
        json!({"msgid": 6, "errno": 0, "friendname": n.name, "friendstate": "online"})
    );
    let (kind, who, _) = friend_event(&n.c, "accepted by the legacy user");
    assert_eq!((kind, who), (FriendEventKind::Accepted, m_id));
    n.send_direct(m_id, "welcome").unwrap();
    assert_eq!(m.reply()["msg"], "welcome");
}

/// `a` creates a group and `b` joins: a way for two users to talk that
/// does not depend on how friendships are made.
fn shared_group(a: &mut Legacy, b: &mut Legacy) -> u64 {
    a.send(json!({"msgid": 7, "groupname": uname("lgsg")}));
    let g = a.reply()["groupid"].as_u64().unwrap();
    b.send(json!({"msgid": 8, "groupid": g}));
    assert_eq!(b.reply()["errno"], 0);
    g
}

/// Finding 2: before login, a legacy connection is held only as long as the
/// native listener holds one (`--idle-timeout-secs` without a byte), must
/// log in within two of those, and may buffer only a small object.
#[test]
fn unauthenticated_connections_have_deadlines_and_a_small_buffer() {
    let (_srv, addr) = start_legacy_with(&["--idle-timeout-secs", "3"]);
    let (mut a, _, _) = user(addr, "lgdla");
    let (mut b, _, _) = user(addr, "lgdlb");
    let g = shared_group(&mut a, &mut b);
    let t0 = std::time::Instant::now();
    // A partial object, then nothing.
    let mut partial = Legacy::connect(addr);
    partial.send_raw(br#"{"msgid":1,"id":"#);
    // Nothing at all.
    let mut silent = Legacy::connect(addr);
    // Complete but useless objects (logout while logged out), forever.
    let mut chatty = Legacy::connect(addr);
    let chatty_s = chatty.s.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let ticker = std::thread::spawn(move || {
        let mut s = chatty_s;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if s.write_all(b"{\"msgid\":13}\0").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });

    // An over-long object before login: a clear error, then the close.
    let mut big = Legacy::connect(addr);
    let mut obj = br#"{"msgid":3,"name":""#.to_vec();
    obj.extend(std::iter::repeat_n(b'a', 5000));
    big.send_raw(&obj);
    let got = big.closed();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0]["msgid"].as_i64(), got[0]["errno"].as_i64()),
        (Some(0), Some(1))
    );
    let why = got[0]["errmsg"].as_str().unwrap();
    assert!(why.contains("4096") && why.contains("login"), "{why}");

    for (c, what) in [(&mut partial, "partial object"), (&mut silent, "silent")] {
        let got = c.closed();
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(2500) && took < Duration::from_secs(9),
            "{what}: closed after {took:?}"
        );
        assert!(got.iter().all(|v| v["errno"] == 1), "{what}: {got:?}");
    }
    // Logged-in users are not timed out (old clients never ping)...
    a.send(json!({"msgid": 9, "groupid": g, "msg": "still here after the deadline"}));
    assert_eq!(b.reply()["msg"], "still here after the deadline");
    // ... but an unauthenticated one that keeps talking without logging in is
    // closed at the login deadline (2 × 3 s).
    let got = chatty.closed();
    let took = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.join().unwrap();
    assert!(
        took >= Duration::from_millis(5500) && took < Duration::from_secs(12),
        "login deadline: closed after {took:?}"
    );
    assert!(got.iter().all(|v| v["errno"] == 1), "{got:?}");
    // A logged-in user that stops in the middle of an object is closed too.
    let (mut c, _, _) = user(addr, "lgdlc");
    c.send_raw(br#"{"msgid":5,"to":1,"msg":"never finish"#);
    let t1 = std::time::Instant::now();
    let got = c.closed();
    assert!(
        t1.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t1.elapsed()
    );
    assert!(got.iter().all(|v| v["errno"] == 1), "{got:?}");
    // Nobody else noticed.
    b.send(json!({"msgid": 9, "groupid": g, "msg": "unharmed"}));
    assert_eq!(a.reply()["msg"], "unharmed");
}

/// Finding 2: unauthenticated legacy connections per source address are
/// capped; logged-in users and logins once a slot is free are unaffected.
#[test]
fn unauthenticated_connections_per_address_are_capped() {
    use ringchat::legacy::conn::MAX_UNAUTH_PER_ADDR;
    let (_srv, addr) = TestServer::start_legacy();
    let (mut a, a_id, _) = user(addr, "lgcpa");
    let (mut b, b_id, _) = user(addr, "lgcpb");
    let g = shared_group(&mut a, &mut b);
    let mut held: Vec<Legacy> = (0..MAX_UNAUTH_PER_ADDR)
        .map(|_| Legacy::connect(addr))
        .collect();
    // Let both shards accept them all.
    std::thread::sleep(Duration::from_millis(500));
    let mut over = Legacy::connect(addr);
    let got = over.closed();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["errno"], 1, "{got:?}");
    assert!(
        got[0]["errmsg"].as_str().unwrap().contains("too many"),
        "{got:?}"
    );
    // Logged-in users keep working.
    a.send(json!({"msgid": 9, "groupid": g, "msg": "while capped"}));
    assert_eq!(b.reply()["msg"], "while capped");
    // A held connection that logs in frees its slot for the next one.
    let mut h = held.pop().unwrap();
    h.login(a_id);
    let mut next = None;
    for _ in 0..50 {
        let mut c = Legacy::connect(addr);
        c.send(json!({"msgid": 1, "id": b_id, "password": PASSWORD}));
        match c.next_within(T) {
            Some(r) if r["errno"] == 0 => {
                next = Some(c);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert!(next.is_some(), "no slot after a held connection logged in");
    drop(held);
    a.send(json!({"msgid": 9, "groupid": g, "msg": "after"}));
    assert_eq!(b.reply()["msg"], "after");
}

/// Legacy logins go through the same failed-login throttle as native ones
/// (per account, shared by both protocols, and per address): the old port
/// is no way around it.
#[test]
fn failed_legacy_logins_are_throttled_with_native_ones() {
    let (srv, addr) = TestServer::start_legacy();
    let name = uname("lgthr");
    let id = register(addr, &name);
    let mut c = Legacy::connect(addr);
    let free = ringchat::server::hasher::USER_POLICY.free;
    for _ in 0..free {
        c.send(json!({"msgid": 1, "id": id, "password": "wrong password"}));
        let r = c.reply();
        assert_eq!(
            (r["msgid"].as_i64(), r["errno"].as_i64()),
            (Some(2), Some(1)),
            "{r}"
        );
    }
    // Now even the right password waits out the back-off...
    c.send(json!({"msgid": 1, "id": id, "password": PASSWORD}));
    let r = c.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(2), Some(1)),
        "{r}"
    );
    assert!(
        r["errmsg"]
            .as_str()
            .unwrap()
            .contains("too many failed logins"),
        "{r}"
    );
    // ... on the native port too (one budget per account).
    assert_code(
        srv.client().login(&name, PASSWORD),
        ringchat::client::ErrorCode::RateLimited,
    );
    // After the back-off the right password works.
    std::thread::sleep(Duration::from_millis(1100));
    let r = c.login(id);
    assert_eq!(r["name"], name.as_str());
}

#[test]
fn the_password_minimum_is_a_serve_option_for_migrations() {
    // The old server took any password; a migration may lower the minimum.
    let (_s, addr) = start_legacy_with(&["--min-password-len", "3"]);
    let mut c = Legacy::connect(addr);
    c.send(json!({"msgid": 3, "name": uname("lgmin"), "password": "abc"}));
    let r = c.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(4), Some(0)),
        "a 3-byte password is accepted: {r}"
    );
    c.send(json!({"msgid": 3, "name": uname("lgmin"), "password": "ab"}));
    let r = c.reply();
    assert_eq!(r["errno"], 1, "{r}");
    assert!(
        r["errmsg"].as_str().unwrap_or("").contains("3-128"),
        "the reply states the configured rule: {r}"
    );
}

/// Security issue item 3: the old protocol's join (msgid 8) keeps working
/// for public groups; a private group refuses it in the old shape (the
/// request is recorded for the owner, as natively), until an invitation.
#[test]
fn legacy_join_works_for_public_groups_and_is_refused_for_private_ones() {
    let (srv, addr) = TestServer::start_legacy();
    let owner = srv.user(&uname("lgpo"));
    let (mut l, l_id, _) = user(addr, "lgpj");
    let public = owner.create_group(&uname("lgpub")).unwrap();
    let (private, _) = owner
        .create_group_opts(&uname("lgpriv"), true, false)
        .unwrap();

    l.send(json!({"msgid": 8, "id": l_id, "groupid": public}));
    let r = l.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(8), Some(0)),
        "{r}"
    );

    l.send(json!({"msgid": 8, "id": l_id, "groupid": private}));
    let r = l.reply();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(8), Some(1)),
        "{r}"
    );
    assert_eq!(r["groupid"], private);
    assert!(r.get("groupname").is_none(), "{r}");
    wait(&owner.c, "JoinRequested", |e| {
        matches!(e, Event::Group { kind: GroupEventKind::JoinRequested, group_id, user_id, .. }
            if *group_id == private && *user_id == l_id)
    });
    // Still not a member: a post reaches nobody and is refused.
    l.send(json!({"msgid": 9, "id": l_id, "groupid": private, "msg": "hi"}));
    assert_eq!(l.reply()["errno"], 1);

    owner.invite_to_group(private, l_id).unwrap();
    wait(&owner.c, "Joined", |e| {
        matches!(e, Event::Group { kind: GroupEventKind::Joined, group_id, user_id, .. }
            if *group_id == private && *user_id == l_id)
    });
    assert!(
        owner
            .group_members(private)
            .unwrap()
            .iter()
            .any(|m| m.user_id == l_id && m.pending.is_none())
    );
}

/// Security issue item 3: the old protocol's "group info" (msgid 12)
/// answers for any public group, but tells a non-member nothing about a
/// private one (not even its name): the same reply as for no group.
#[test]
fn legacy_group_info_of_a_private_group_is_for_members_only() {
    let (srv, addr) = TestServer::start_legacy();
    let owner = srv.user(&uname("lgio"));
    let (mut l, l_id, _) = user(addr, "lgii");
    let pub_name = uname("lginfopub");
    let priv_name = uname("lginfopriv");
    let public = owner.create_group(&pub_name).unwrap();
    let (private, _) = owner.create_group_opts(&priv_name, true, false).unwrap();

    l.send(json!({"msgid": 12, "id": l_id, "groupid": public}));
    let r = l.next();
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(12), Some(0)),
        "{r}"
    );
    assert_eq!(r["groupname"], pub_name.as_str());

    l.send(json!({"msgid": 12, "id": l_id, "groupid": private}));
    let hidden = l.next();
    l.send(json!({"msgid": 12, "id": l_id, "groupid": 9_999_999}));
    let missing = l.next();
    assert_eq!(hidden["errno"], 1, "{hidden}");
    assert!(!hidden.to_string().contains(&priv_name), "{hidden}");
    assert_eq!(hidden["errmsg"], missing["errmsg"]);

    // A member asks: answered.
    owner.invite_to_group(private, l_id).unwrap();
    l.send(json!({"msgid": 8, "id": l_id, "groupid": private}));
    assert_eq!(l.reply()["errno"], 0);
    l.send(json!({"msgid": 12, "id": l_id, "groupid": private}));
    let r = l.next();
    assert_eq!(
        (r["errno"].as_i64(), r["groupname"].as_str()),
        (Some(0), Some(priv_name.as_str())),
        "{r}"
    );
}

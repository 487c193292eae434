//! Sans-IO codec for the cc_ChatServer JSON protocol: splitting the byte
//! stream into objects, typing requests, and building replies and pushes.
//!
//! Nothing here touches a socket or a clock, so every rule is unit-tested
//! below (every split point, coalesced input, bad types).

use serde_json::{Map, Value, json};

pub const LOGIN: i64 = 1;
pub const LOGIN_ACK: i64 = 2;
pub const REGISTER: i64 = 3;
pub const REGISTER_ACK: i64 = 4;
pub const ONE_CHAT: i64 = 5;
pub const ADD_FRIEND: i64 = 6;
pub const CREATE_GROUP: i64 = 7;
pub const JOIN_GROUP: i64 = 8;
pub const GROUP_CHAT: i64 = 9;
pub const LEAVE_GROUP: i64 = 10;
pub const DISSOLVE_GROUP: i64 = 11;
pub const GROUP_INFO: i64 = 12;
pub const LOGOUT: i64 = 13;

/// The msgid a reply to request `msgid` carries: login and register are
/// answered with their own ack ids, everything else with the request's id.
pub fn reply_msgid(msgid: i64) -> i64 {
    match msgid {
        LOGIN => LOGIN_ACK,
        REGISTER => REGISTER_ACK,
        n => n,
    }
}

/// What the splitter found at the front of the buffer.
#[derive(Debug, PartialEq)]
pub enum Split {
    /// One complete top-level object.
    Object(Map<String, Value>),
    /// The buffer holds a (possibly empty) prefix of an object.
    NeedMore,
    /// The stream cannot be trusted any more: not an object, not JSON, or an
    /// object larger than the limit. The connection should be closed.
    Garbage(String),
}

/// Streaming splitter over the client's bytes.
///
/// Old clients write `JSON NUL` per request, but TCP may split or join
/// writes and some clients omit the NUL, so objects are found by scanning:
/// NULs and whitespace between objects are skipped, and an object ends at
/// the brace that closes its first one (strings and escapes are tracked so
/// braces inside text do not count). The scan resumes where it stopped, so
/// an object trickling in byte by byte costs linear time, and it is parsed
/// (by serde_json, which also validates UTF-8 and nesting depth) once.
pub struct Splitter {
    buf: Vec<u8>,
    max: usize,
    /// Scan state for the object at the front of `buf`.
    pos: usize,
    depth: usize,
    in_str: bool,
    esc: bool,
    /// The last `Garbage` was an object over `max`.
    over_limit: bool,
}

impl Splitter {
    /// `max`: the largest object accepted, in bytes as sent.
    pub fn new(max: usize) -> Splitter {
        Splitter {
            buf: Vec::new(),
            max,
            pos: 0,
            depth: 0,
            in_str: false,
            esc: false,
            over_limit: false,
        }
    }

    /// The largest object accepted.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether the last [`Split::Garbage`] was an object over [`Self::max`]
    /// (rather than bytes that are not JSON).
    pub fn over_limit(&self) -> bool {
        self.over_limit
    }

    /// Whether part of an object is buffered (meaningful after
    /// [`Self::next_object`] returned [`Split::NeedMore`]).
    pub fn in_object(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Releases the buffer's memory once nothing is buffered, so an idle
    /// connection holds none (the next object allocates what it needs).
    pub fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as objects.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    pub fn next_object(&mut self) -> Split {
        if self.pos == 0 {
            let skip = self
                .buf
                .iter()
                .position(|b| !matches!(b, 0 | b' ' | b'\t' | b'\r' | b'\n'))
                .unwrap_or(self.buf.len());
            self.buf.drain(..skip);
            match self.buf.first() {
                None => return Split::NeedMore,
                Some(b'{') => {}
                Some(_) => return Split::Garbage("expected a JSON object".into()),
            }
        }
        let mut end = None;
        for (i, &b) in self.buf.iter().enumerate().skip(self.pos) {
            if self.in_str {
                if self.esc {
                    self.esc = false;
                } else if b == b'\\' {
                    self.esc = true;
                } else if b == b'"' {
                    self.in_str = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            self.pos = self.buf.len();
            if self.buf.len() > self.max {
                self.over_limit = true;
                return Split::Garbage(format!("object larger than {} bytes", self.max));
            }
            return Split::NeedMore;
        };
        if end > self.max {
            self.over_limit = true;
            return Split::Garbage(format!("object larger than {} bytes", self.max));
        }
        let parsed = serde_json::from_slice::<Value>(&self.buf[..end]);
        self.buf.drain(..end);
        (self.pos, self.depth, self.in_str, self.esc) = (0, 0, false, false);
        match parsed {
            Ok(Value::Object(m)) => Split::Object(m),
            Ok(_) => Split::Garbage("expected a JSON object".into()),
            Err(e) => Split::Garbage(format!("invalid JSON: {e}")),
        }
    }
}

/// A request, typed. Identity fields (`id` of requests after login, `from`)
/// are deliberately not carried: the connection's login decides who acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Login { id: u64, password: String },
    Register { name: String, password: String },
    OneChat { to: u64, msg: String },
    AddFriend { to: u64, note: String },
    CreateGroup { name: String, desc: String },
    JoinGroup { group: u64 },
    GroupChat { group: u64, msg: String },
    LeaveGroup { group: u64 },
    DissolveGroup { group: u64 },
    GroupInfo { group: u64 },
    Logout,
}

impl Request {
    /// The msgid this request was sent with.
    pub fn msgid(&self) -> i64 {
        match self {
            Request::Login { .. } => LOGIN,
            Request::Register { .. } => REGISTER,
            Request::OneChat { .. } => ONE_CHAT,
            Request::AddFriend { .. } => ADD_FRIEND,
            Request::CreateGroup { .. } => CREATE_GROUP,
            Request::JoinGroup { .. } => JOIN_GROUP,
            Request::GroupChat { .. } => GROUP_CHAT,
            Request::LeaveGroup { .. } => LEAVE_GROUP,
            Request::DissolveGroup { .. } => DISSOLVE_GROUP,
            Request::GroupInfo { .. } => GROUP_INFO,
            Request::Logout => LOGOUT,
        }
    }
}

/// A request that could not be typed; answered with `errno` 1 under
/// `reply_msgid(msgid)` (0 when the object had no integer msgid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub msgid: i64,
    pub reason: String,
}

fn uint(o: &Map<String, Value>, key: &str, msgid: i64) -> Result<u64, BadRequest> {
    match o.get(key) {
        Some(v) => v.as_u64().ok_or_else(|| BadRequest {
            msgid,
            reason: format!("field `{key}` must be a non-negative integer"),
        }),
        None => Err(BadRequest {
            msgid,
            reason: format!("missing field `{key}`"),
        }),
    }
}

fn string(o: &Map<String, Value>, key: &str, msgid: i64) -> Result<String, BadRequest> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(BadRequest {
            msgid,
            reason: format!("field `{key}` must be a string"),
        }),
        None => Err(BadRequest {
            msgid,
            reason: format!("missing field `{key}`"),
        }),
    }
}

/// An optional text field: absent or null is empty, another type is an error.
fn opt_string(o: &Map<String, Value>, key: &str, msgid: i64) -> Result<String, BadRequest> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => string(o, key, msgid),
    }
}

pub fn parse_request(o: &Map<String, Value>) -> Result<Request, BadRequest> {
    let msgid = match o.get("msgid").and_then(Value::as_i64) {
        Some(m) => m,
        None => {
            return Err(BadRequest {
                msgid: 0,
                reason: "missing or non-integer `msgid`".into(),
            });
        }
    };
    Ok(match msgid {
        LOGIN => Request::Login {
            id: uint(o, "id", msgid)?,
            password: string(o, "password", msgid)?,
        },
        REGISTER => Request::Register {
            name: string(o, "name", msgid)?,
            password: string(o, "password", msgid)?,
        },
        ONE_CHAT => Request::OneChat {
            to: uint(o, "to", msgid)?,
            msg: string(o, "msg", msgid)?,
        },
        ADD_FRIEND => Request::AddFriend {
            to: uint(o, "to", msgid)?,
            note: opt_string(o, "msg", msgid)?,
        },
        CREATE_GROUP => Request::CreateGroup {
            name: string(o, "groupname", msgid)?,
            desc: opt_string(o, "groupdesc", msgid)?,
        },
        JOIN_GROUP => Request::JoinGroup {
            group: uint(o, "groupid", msgid)?,
        },
        GROUP_CHAT => Request::GroupChat {
            group: uint(o, "groupid", msgid)?,
            msg: string(o, "msg", msgid)?,
        },
        LEAVE_GROUP => Request::LeaveGroup {
            group: uint(o, "groupid", msgid)?,
        },
        DISSOLVE_GROUP => Request::DissolveGroup {
            group: uint(o, "groupid", msgid)?,
        },
        GROUP_INFO => Request::GroupInfo {
            group: uint(o, "groupid", msgid)?,
        },
        LOGOUT => Request::Logout,
        n => {
            return Err(BadRequest {
                msgid: n,
                reason: format!("unknown msgid {n}"),
            });
        }
    })
}

// ------------------------------------------------------------------ output

fn bytes(v: Value) -> Vec<u8> {
    // Serializing a Value cannot fail (keys are strings).
    serde_json::to_vec(&v).unwrap_or_default()
}

/// `{msgid, errno, errmsg}` plus extra fields (e.g. `groupid`).
pub fn error(msgid: i64, errno: i64, errmsg: &str, extra: &[(&str, Value)]) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("msgid".into(), msgid.into());
    m.insert("errno".into(), errno.into());
    m.insert("errmsg".into(), errmsg.into());
    for (k, v) in extra {
        m.insert((*k).into(), v.clone());
    }
    bytes(Value::Object(m))
}

pub fn bad_request(b: &BadRequest) -> Vec<u8> {
    error(reply_msgid(b.msgid), 1, &b.reason, &[])
}

/// A friend as listed in the login reply: a JSON *string*.
pub fn friend_entry(id: u64, name: &str, online: bool) -> String {
    json!({"id": id, "name": name, "state": state(online)}).to_string()
}

fn state(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

/// A group member: `{id, name, role, state}` as a JSON string.
pub fn member_entry(id: u64, name: &str, creator: bool, online: bool) -> String {
    let role = if creator { "creator" } else { "normal" };
    json!({"id": id, "name": name, "role": role, "state": state(online)}).to_string()
}

/// A group as listed in the login reply: a JSON string whose `groupusers`
/// is a list of [`member_entry`] strings.
pub fn group_entry(id: u64, name: &str, desc: &str, users: Vec<String>) -> String {
    json!({"id": id, "groupname": name, "groupdesc": desc, "groupusers": users}).to_string()
}

/// The login reply. Empty lists are omitted, as the old server did.
pub fn login_ok(
    id: u64,
    name: &str,
    offline: Vec<String>,
    friends: Vec<String>,
    groups: Vec<String>,
) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("msgid".into(), LOGIN_ACK.into());
    m.insert("errno".into(), 0.into());
    m.insert("id".into(), id.into());
    m.insert("name".into(), name.into());
    for (k, v) in [
        ("offlinemsg", offline),
        ("friends", friends),
        ("groups", groups),
    ] {
        if !v.is_empty() {
            m.insert(k.into(), v.into());
        }
    }
    bytes(Value::Object(m))
}

pub fn register_ok(id: u64) -> Vec<u8> {
    bytes(json!({"msgid": REGISTER_ACK, "errno": 0, "id": id}))
}

/// The reply to an add-friend (msgid 6) that made or found a friendship:
/// the friend's state is theirs to see.
pub fn add_friend_ok(friend_name: &str, online: bool) -> Vec<u8> {
    add_friend_reply(friend_name, state(online))
}

/// The reply to an add-friend (msgid 6) that is waiting for the other
/// user's consent: `friendstate` is `"pending"`, never their presence.
/// Same fields as [`add_friend_ok`], so old clients read it the same way.
pub fn add_friend_pending(friend_name: &str) -> Vec<u8> {
    add_friend_reply(friend_name, "pending")
}

fn add_friend_reply(friend_name: &str, friendstate: &str) -> Vec<u8> {
    bytes(
        json!({"msgid": ADD_FRIEND, "errno": 0, "friendname": friend_name, "friendstate": friendstate}),
    )
}

pub fn create_group_ok(group: u64) -> Vec<u8> {
    bytes(json!({"msgid": CREATE_GROUP, "errno": 0, "groupid": group}))
}

/// Replies of join (8), leave (10) and dissolve (11).
pub fn group_op_ok(msgid: i64, group: u64, msg: &str) -> Vec<u8> {
    bytes(json!({"msgid": msgid, "errno": 0, "groupid": group, "msg": msg}))
}

pub fn group_info(group: u64, name: &str, desc: &str, users: Vec<String>) -> Vec<u8> {
    bytes(json!({
        "msgid": GROUP_INFO, "errno": 0, "groupid": group,
        "groupname": name, "groupdesc": desc, "groupusers": users,
    }))
}

/// A one-to-one chat object (msgid 5) as pushed and as stored in `offlinemsg`.
pub fn one_chat(from: u64, to: u64, sendname: &str, ts_ms: u64, msg: &str) -> Value {
    json!({"msgid": ONE_CHAT, "from": from, "to": to, "msg": msg,
           "sendname": sendname, "time": format_time(ts_ms)})
}

/// A group chat object (msgid 9).
pub fn group_chat(
    from: u64,
    group: u64,
    groupname: &str,
    sendname: &str,
    ts_ms: u64,
    msg: &str,
) -> Value {
    json!({"msgid": GROUP_CHAT, "from": from, "groupid": group, "groupname": groupname,
           "sendname": sendname, "time": format_time(ts_ms), "msg": msg})
}

/// A friend request as the other user receives it (msgid 6).
pub fn friend_request(from: u64, to: u64, sendname: &str, ts_ms: u64, note: &str) -> Vec<u8> {
    bytes(
        json!({"msgid": ADD_FRIEND, "from": from, "to": to, "msg": note,
                 "sendname": sendname, "time": format_time(ts_ms)}),
    )
}

pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// `YYYY-MM-DD HH:MM:SS` in UTC: old clients print `time` as a string, and
/// a server clock is a more honest time than the one a client claims.
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Inverse of [`format_time`] (`YYYY-MM-DD HH:MM:SS`, read as UTC), for the
/// `time` of imported messages; `None` if it is not in that shape.
pub fn parse_time(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 || y < 1970
    {
        return None;
    }
    // Days-from-civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        match serde_json::from_str(s).unwrap() {
            Value::Object(m) => m,
            _ => panic!(),
        }
    }

    fn all(sp: &mut Splitter) -> Vec<Map<String, Value>> {
        let mut v = vec![];
        loop {
            match sp.next_object() {
                Split::Object(o) => v.push(o),
                Split::NeedMore => return v,
                Split::Garbage(g) => panic!("garbage: {g}"),
            }
        }
    }

    #[test]
    fn every_split_point_with_and_without_nul() {
        let a = r#"{"msgid":5,"from":1,"to":2,"msg":"he said \"}{\" 😀 \\","time":"x"}"#;
        let b = r#"{"msgid":9,"groupid":3,"msg":"[{]}"}"#;
        for sep in ["\0", "", "\n", "\0\0 "] {
            let stream = format!("{a}{sep}{b}{sep}");
            let bytes = stream.as_bytes();
            for cut in 0..=bytes.len() {
                let mut sp = Splitter::new(1 << 20);
                sp.push(&bytes[..cut]);
                let mut got = all(&mut sp);
                sp.push(&bytes[cut..]);
                got.extend(all(&mut sp));
                assert_eq!(got, vec![obj(a), obj(b)], "sep {sep:?} cut {cut}");
                assert!(sp.pending().iter().all(|b| *b == 0 || *b == b' '));
            }
        }
    }

    #[test]
    fn byte_by_byte_and_coalesced() {
        let a = r#"{"msgid":13,"id":7}"#;
        let stream = format!("{a}\0{a}{a}\0");
        let mut sp = Splitter::new(1024);
        let mut got = vec![];
        for b in stream.as_bytes() {
            sp.push(std::slice::from_ref(b));
            got.extend(all(&mut sp));
        }
        assert_eq!(got.len(), 3);
        let mut sp = Splitter::new(1024);
        sp.push(stream.as_bytes());
        assert_eq!(all(&mut sp).len(), 3);
    }

    #[test]
    fn garbage_is_reported() {
        let bad: [&[u8]; 6] = [
            b"hello\0",
            b"[1,2]",
            b"42",
            b"{\"a\":]",
            b"{\"a\":1,}",
            b"{\"s\":\"\xff\"}",
        ];
        for bad in bad {
            let mut sp = Splitter::new(1024);
            sp.push(bad);
            assert!(matches!(sp.next_object(), Split::Garbage(_)), "{bad:?}");
        }
        // Too large, complete or not.
        let mut sp = Splitter::new(16);
        sp.push(br#"{"msg":"0123456789012345"}"#);
        assert!(matches!(sp.next_object(), Split::Garbage(_)));
        let mut sp = Splitter::new(16);
        sp.push(br#"{"msg":"0123456789012345"#);
        assert!(matches!(sp.next_object(), Split::Garbage(_)));
        assert!(sp.over_limit());
        let mut sp = Splitter::new(16);
        sp.push(b"[1]");
        assert!(matches!(sp.next_object(), Split::Garbage(_)));
        assert!(!sp.over_limit());
        // Deep nesting is refused by serde_json's recursion limit, not a crash.
        let mut sp = Splitter::new(1 << 20);
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
        sp.push(deep.as_bytes());
        assert!(matches!(sp.next_object(), Split::Garbage(_)));
    }

    #[test]
    fn requests_are_typed() {
        assert_eq!(
            parse_request(&obj(r#"{"msgid":1,"id":3,"password":"pw"}"#)),
            Ok(Request::Login {
                id: 3,
                password: "pw".into()
            })
        );
        // `from` is ignored: identity comes from the connection.
        assert_eq!(
            parse_request(&obj(
                r#"{"msgid":5,"from":99,"to":4,"msg":"hi","sendname":"x","time":"t"}"#
            )),
            Ok(Request::OneChat {
                to: 4,
                msg: "hi".into()
            })
        );
        assert_eq!(
            parse_request(&obj(r#"{"msgid":7,"from":1,"groupname":"g"}"#)),
            Ok(Request::CreateGroup {
                name: "g".into(),
                desc: String::new()
            })
        );
        assert_eq!(
            parse_request(&obj(r#"{"msgid":13,"id":1}"#)),
            Ok(Request::Logout)
        );
        for (s, msgid) in [
            (r#"{"msgid":5,"to":"4","msg":"hi"}"#, 5),
            (r#"{"msgid":5,"to":-4,"msg":"hi"}"#, 5),
            (r#"{"msgid":5,"to":4.5,"msg":"hi"}"#, 5),
            (r#"{"msgid":5,"to":4,"msg":7}"#, 5),
            (r#"{"msgid":8}"#, 8),
            (r#"{"msgid":1,"id":1}"#, 1),
            (r#"{"msgid":77}"#, 77),
            (r#"{"msgid":"5"}"#, 0),
            (r#"{"id":5}"#, 0),
        ] {
            let e = parse_request(&obj(s)).unwrap_err();
            assert_eq!(e.msgid, msgid, "{s}");
        }
        let e = parse_request(&obj(r#"{"msgid":1}"#)).unwrap_err();
        let v: Value = serde_json::from_slice(&bad_request(&e)).unwrap();
        assert_eq!(v["msgid"], 2);
        assert_eq!(v["errno"], 1);
    }

    #[test]
    fn replies_are_compact_and_omit_empty_lists() {
        let r = login_ok(3, "ann", vec![], vec![friend_entry(4, "bob", true)], vec![]);
        let s = String::from_utf8(r).unwrap();
        assert!(!s.contains(' ') && !s.contains('\n'), "{s}");
        let v: Value = serde_json::from_str(&s).unwrap();
        assert!(v.get("offlinemsg").is_none() && v.get("groups").is_none());
        let f: Value = serde_json::from_str(v["friends"][0].as_str().unwrap()).unwrap();
        assert_eq!(f, json!({"id":4,"name":"bob","state":"online"}));
        let g = group_entry(1, "g", "d", vec![member_entry(3, "ann", true, false)]);
        let g: Value = serde_json::from_str(&g).unwrap();
        let u: Value = serde_json::from_str(g["groupusers"][0].as_str().unwrap()).unwrap();
        assert_eq!(u["role"], "creator");
        assert_eq!(u["state"], "offline");
    }

    #[test]
    fn partial_objects_and_shrinking() {
        let mut sp = Splitter::new(1 << 20);
        sp.push(b"\0 ");
        assert_eq!(sp.next_object(), Split::NeedMore);
        assert!(!sp.in_object(), "separators alone are not an object");
        sp.push(b"{\"msgid\":13");
        assert_eq!(sp.next_object(), Split::NeedMore);
        assert!(sp.in_object());
        let big = format!("}}{{\"msg\":\"{}\"}}\0", "x".repeat(100_000));
        sp.push(big.as_bytes());
        assert!(matches!(sp.next_object(), Split::Object(_)));
        assert!(matches!(sp.next_object(), Split::Object(_)));
        assert_eq!(sp.next_object(), Split::NeedMore);
        assert!(!sp.in_object());
        sp.shrink_if_idle();
        assert!(sp.buf.capacity() <= 16 << 10);
    }

    #[test]
    fn add_friend_replies_have_the_old_fields() {
        for (r, st) in [
            (add_friend_pending("bob"), "pending"),
            (add_friend_ok("bob", false), "offline"),
        ] {
            let v: Value = serde_json::from_slice(&r).unwrap();
            assert_eq!(
                v,
                json!({"msgid": 6, "errno": 0, "friendname": "bob", "friendstate": st})
            );
        }
    }

    #[test]
    fn time_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_709_251_199_000), "2024-02-29 23:59:59");
        assert_eq!(format_time(4_102_444_800_000), "2100-01-01 00:00:00");
        for ms in [0, 951_782_400_000, 1_709_251_199_000, 1_682_935_260_000] {
            assert_eq!(parse_time(&format_time(ms)), Some(ms));
        }
        for bad in [
            "",
            "2023-13-01 00:00:00",
            "2023-05-01T10:00:00",
            "yesterday",
            "2023-05-01 10:00:0x",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}

/// The old server's words. Its console client shows `errmsg` as is, and
/// users of it read Chinese: where the old server had a text for a case,
/// the same text is sent; ringchat-only refusals keep their English words.
pub mod text {
    use crate::wire::fb::ErrorCode;

    /// A wrong id or password at login (the two look the same).
    pub const BAD_CREDENTIALS: &str = "用户名或密码错误，请重新登录";
    /// The user named by a request does not exist.
    pub const NO_SUCH_USER: &str = "该用户不存在";
    /// A login to an account an operator disabled (`ringchat admin disable`).
    pub const ACCOUNT_DISABLED: &str = "该账号已被停用 (account disabled by an operator)";
    /// An operator closed the session (`ringchat admin kick`).
    pub const KICKED: &str = "管理员已结束您的会话，请重新登录 (an operator ended this session)";

    /// The old protocol's text for an error answered with `code`.
    pub fn translate(code: ErrorCode, text: &str) -> String {
        match code {
            ErrorCode::BadCredentials => BAD_CREDENTIALS.into(),
            ErrorCode::NoSuchUser => NO_SUCH_USER.into(),
            ErrorCode::AccountDisabled => ACCOUNT_DISABLED.into(),
            _ => text.into(),
        }
    }

    /// A registration refused for its password's length: the old server
    /// took any password, so say why (see docs/MIGRATING.md).
    pub fn short_password(text: &str) -> String {
        format!("密码不符合要求：{text}")
    }
}

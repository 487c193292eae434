//! Property-based fuzzing of the legacy (cc_ChatServer JSON) codec:
//! the object splitter, request typing, reply builders and time format.
//!
//! - Valid objects, compact or pretty, separated by NULs/whitespace or
//!   nothing, split and coalesced anywhere, come out exactly as serde_json
//!   parses each of them alone; an object over the size limit is refused
//!   as soon as it is known to be too large.
//! - Arbitrary bytes never panic and give the same answers however they
//!   are split (so no state leaks between reads).
//! - Typed requests survive a JSON round trip with extra fields; arbitrary
//!   objects never panic `parse_request` and errors carry the right msgid.
//! - Replies are valid JSON carrying the given strings back unchanged.
//!
//! Cases: `PROPTEST_CASES` (default per test below); `bench/fuzz.sh` runs
//! it for longer.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use ringchat::legacy::codec::{self, BadRequest, Request, Split, Splitter};
use serde_json::{Map, Value, json};

/// `PROPTEST_CASES` if set, else `default`. Shrunk failures are saved in
/// tests/proptest-regressions/ and replayed first by later runs.
fn config(default: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default;
    }
    c.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(
        "tests/proptest-regressions/prop_legacy.txt",
    )));
    c
}

/// Strings that stress the scanner: braces, brackets, quotes, backslashes,
/// NULs and multi-byte characters, or anything at all.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[{}\\[\\]\"\\\\a-z0-9 \\x00\\n\\t:,é😀]{0,16}",
        any::<String>(),
        Just(String::new()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        tricky_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(tricky_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(tricky_string(), json_value(), 0..6)
        .prop_map(|m| m.into_iter().collect())
}

fn separator() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["", "\0", "\n", " ", "\r\n", "\0\0 \t", "\t\0"])
}

/// Objects serialized as a client might: compact or pretty, each followed
/// by a separator. Returns the stream and each object's text.
fn object_stream() -> impl Strategy<Value = (Vec<u8>, Vec<String>)> {
    (
        separator(),
        proptest::collection::vec((json_object(), any::<bool>(), separator()), 0..8),
    )
        .prop_map(|(lead, objs)| {
            let mut stream = lead.as_bytes().to_vec();
            let mut texts = vec![];
            for (o, pretty, sep) in objs {
                let v = Value::Object(o);
                let t = if pretty {
                    serde_json::to_string_pretty(&v)
                } else {
                    serde_json::to_string(&v)
                }
                .expect("a Value serializes");
                stream.extend_from_slice(t.as_bytes());
                stream.extend_from_slice(sep.as_bytes());
                texts.push(t);
            }
            (stream, texts)
        })
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![1usize..4, 1usize..64, 1usize..4096], 1..32)
}

/// Feeds `stream` in chunks (cycled), collecting every answer up to and
/// including the first `Garbage` (the connection closes there).
fn split_all(stream: &[u8], max: usize, chunks: &[usize]) -> (Vec<Split>, Vec<u8>) {
    let mut sp = Splitter::new(max);
    let mut out = vec![];
    let mut at = 0;
    let mut i = 0;
    loop {
        // Each answer but NeedMore consumes bytes or ends the loop.
        loop {
            match sp.next_object() {
                Split::NeedMore => break,
                g @ Split::Garbage(_) => {
                    out.push(g);
                    return (out, sp.pending().to_vec());
                }
                o => out.push(o),
            }
        }
        if at == stream.len() {
            return (out, sp.pending().to_vec());
        }
        let n = chunks[i % chunks.len()].min(stream.len() - at);
        i += 1;
        sp.push(&stream[at..at + n]);
        at += n;
    }
}

fn is_separator(b: &u8) -> bool {
    matches!(b, 0 | b' ' | b'\t' | b'\r' | b'\n')
}

fn parse_obj(t: &str) -> Map<String, Value> {
    match serde_json::from_str(t).expect("serde_json reads its own output") {
        Value::Object(m) => m,
        v => panic!("not an object: {v}"),
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Valid objects split and coalesced anywhere parse exactly as each
    /// does alone, and only separators are left over.
    #[test]
    fn valid_objects_split_anywhere((stream, texts) in object_stream(), chunks in chunks()) {
        let want: Vec<Split> = texts.iter().map(|t| Split::Object(parse_obj(t))).collect();
        let (got, rest) = split_all(&stream, 1 << 20, &chunks);
        prop_assert_eq!(got, want);
        prop_assert!(rest.iter().all(is_separator), "left over: {:?}", rest);
    }

    /// The size limit: objects up to `max` bytes pass, the first larger one
    /// is refused (whether it has fully arrived or not), nothing after it.
    #[test]
    fn size_limit_is_exact((stream, texts) in object_stream(), chunks in chunks(), max in 2usize..400) {
        let mut want = vec![];
        for t in &texts {
            if t.len() > max {
                want.push(Split::Garbage(format!("object larger than {max} bytes")));
                break;
            }
            want.push(Split::Object(parse_obj(t)));
        }
        let (got, _) = split_all(&stream, max, &chunks);
        prop_assert_eq!(got, want);
    }

    /// Arbitrary bytes (biased towards JSON-ish ones): no panic, no hang,
    /// and the same answers however the bytes are split.
    #[test]
    fn arbitrary_bytes_same_answers_any_split(
        stream in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            proptest::collection::vec(
                proptest::sample::select(b"{}[]\"\\:,0a \x00\n\xff\xc3".to_vec()), 0..600),
        ],
        chunks in chunks(),
        max in prop_oneof![Just(1usize << 20), 1usize..64],
    ) {
        let whole = split_all(&stream, max, &[usize::MAX]);
        let split = split_all(&stream, max, &chunks);
        prop_assert_eq!(&split.0, &whole.0);
        // Objects that were returned are JSON objects serde_json accepts.
        for s in &split.0 {
            if let Split::Object(m) = s {
                let again = serde_json::to_vec(&Value::Object(m.clone())).expect("serializes");
                prop_assert!(serde_json::from_slice::<Value>(&again).is_ok());
            }
        }
    }

    /// Arbitrary strings as a client's lines (the common corruption: text
    /// instead of JSON, cut JSON, several objects on one line).
    #[test]
    fn arbitrary_text_never_panics(lines in proptest::collection::vec(tricky_string(), 0..8)) {
        let stream = lines.join("\0");
        let (got, _) = split_all(stream.as_bytes(), 4096, &[7, 1, 100]);
        for s in got {
            if let Split::Object(m) = s {
                let _ = codec::parse_request(&m);
            }
        }
    }
}

// ------------------------------------------------------------------ requests

fn request() -> impl Strategy<Value = Request> {
    let s = tricky_string;
    prop_oneof![
        (any::<u64>(), s()).prop_map(|(id, password)| Request::Login { id, password }),
        (s(), s()).prop_map(|(name, password)| Request::Register { name, password }),
        (any::<u64>(), s()).prop_map(|(to, msg)| Request::OneChat { to, msg }),
        (any::<u64>(), s()).prop_map(|(to, note)| Request::AddFriend { to, note }),
        (s(), s()).prop_map(|(name, desc)| Request::CreateGroup { name, desc }),
        any::<u64>().prop_map(|group| Request::JoinGroup { group }),
        (any::<u64>(), s()).prop_map(|(group, msg)| Request::GroupChat { group, msg }),
        any::<u64>().prop_map(|group| Request::LeaveGroup { group }),
        any::<u64>().prop_map(|group| Request::DissolveGroup { group }),
        any::<u64>().prop_map(|group| Request::GroupInfo { group }),
        Just(Request::Logout),
    ]
}

/// The object an old client sends for `r`, with the identity fields and
/// extras it also sends (which must be ignored).
fn to_json(r: &Request, from: u64, omit_optional: bool) -> Value {
    let mut v = match r {
        Request::Login { id, password } => json!({"id": id, "password": password}),
        Request::Register { name, password } => json!({"name": name, "password": password}),
        Request::OneChat { to, msg } => {
            json!({"from": from, "to": to, "msg": msg, "sendname": "x", "time": "t"})
        }
        Request::AddFriend { to, note } if note.is_empty() && omit_optional => {
            json!({"id": from, "to": to})
        }
        Request::AddFriend { to, note } => json!({"id": from, "to": to, "msg": note}),
        Request::CreateGroup { name, desc } if desc.is_empty() && omit_optional => {
            json!({"id": from, "groupname": name, "groupdesc": null})
        }
        Request::CreateGroup { name, desc } => {
            json!({"id": from, "groupname": name, "groupdesc": desc})
        }
        Request::JoinGroup { group }
        | Request::LeaveGroup { group }
        | Request::DissolveGroup { group }
        | Request::GroupInfo { group } => json!({"id": from, "groupid": group}),
        Request::GroupChat { group, msg } => {
            json!({"id": from, "groupid": group, "msg": msg, "groupname": "g"})
        }
        Request::Logout => json!({"id": from}),
    };
    v["msgid"] = r.msgid().into();
    v
}

/// Keys the parser knows, so random objects hit the typed paths.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "msgid",
            "id",
            "password",
            "name",
            "to",
            "msg",
            "groupid",
            "groupname",
            "groupdesc",
            "from",
        ])
        .prop_map(String::from),
        tricky_string(),
    ]
}

fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..20).prop_map(Value::from),
        json_value(),
        Just(json!(4.5)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!("5")),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// A typed request, sent as an old client does (extra fields, optional
    /// fields absent or null), split anywhere among others, parses back to
    /// exactly itself.
    #[test]
    fn requests_round_trip_through_the_splitter(
        reqs in proptest::collection::vec((request(), any::<u64>(), any::<bool>(), separator()), 1..6),
        chunks in chunks(),
    ) {
        let mut stream = vec![];
        for (r, from, omit, sep) in &reqs {
            stream.extend(serde_json::to_vec(&to_json(r, *from, *omit)).expect("serializes"));
            stream.extend_from_slice(sep.as_bytes());
        }
        let (got, _) = split_all(&stream, 1 << 20, &chunks);
        prop_assert_eq!(got.len(), reqs.len());
        for (s, (r, ..)) in got.iter().zip(&reqs) {
            let Split::Object(o) = s else {
                return Err(TestCaseError::fail(format!("not an object: {s:?}")));
            };
            prop_assert_eq!(&codec::parse_request(o), &Ok(r.clone()));
        }
    }

    /// Any object: `parse_request` never panics; the msgid it reports is the
    /// object's integer msgid (0 if it has none), and the error reply is a
    /// JSON object with `errno` 1 under `reply_msgid`.
    #[test]
    fn parse_request_total(fields in proptest::collection::btree_map(key(), field_value(), 0..8)) {
        let o: Map<String, Value> = fields.into_iter().collect();
        let msgid = o.get("msgid").and_then(Value::as_i64);
        match codec::parse_request(&o) {
            Ok(r) => prop_assert_eq!(Some(r.msgid()), msgid),
            Err(e) => {
                let BadRequest { msgid: m, .. } = &e;
                prop_assert_eq!(*m, msgid.unwrap_or(0));
                let reply: Value = serde_json::from_slice(&codec::bad_request(&e))
                    .map_err(|x| TestCaseError::fail(x.to_string()))?;
                prop_assert_eq!(&reply["msgid"], &json!(codec::reply_msgid(*m)));
                prop_assert_eq!(&reply["errno"], &json!(1));
                prop_assert!(reply["errmsg"].is_string());
            }
        }
    }

    /// Replies and pushes are single-line JSON objects (old clients split
    /// on the closing brace too) carrying every string back unchanged.
    #[test]
    fn replies_carry_strings_unchanged(
        a in tricky_string(), b in tricky_string(), c in tricky_string(),
        ids in (any::<u64>(), any::<u64>()), ms in 0u64..253_402_300_799_000, online in any::<bool>(),
    ) {
        let (x, y) = ids;
        let outs: Vec<Vec<u8>> = vec![
            codec::to_bytes(&codec::one_chat(x, y, &a, ms, &b)),
            codec::to_bytes(&codec::group_chat(x, y, &a, &b, ms, &c)),
            codec::friend_request(x, y, &a, ms, &b),
            codec::error(5, 2, &a, &[("groupid", json!(y))]),
            codec::login_ok(
                x, &a, vec![b.clone()],
                vec![codec::friend_entry(y, &b, online)],
                vec![codec::group_entry(y, &a, &b, vec![codec::member_entry(x, &c, online, !online)])],
            ),
            codec::add_friend_ok(&a, online),
            codec::group_op_ok(8, y, &c),
            codec::group_info(y, &a, &b, vec![c.clone()]),
        ];
        let mut stream = vec![];
        for o in &outs {
            prop_assert!(!o.contains(&b'\n'), "multi-line reply");
            stream.extend_from_slice(o);
            stream.push(0);
        }
        // What old clients do with our output: split it back.
        let (got, rest) = split_all(&stream, 1 << 20, &[3, 50]);
        prop_assert!(rest.iter().all(is_separator));
        let got: Vec<Value> = got
            .into_iter()
            .map(|s| match s {
                Split::Object(m) => Value::Object(m),
                other => panic!("{other:?}"),
            })
            .collect();
        prop_assert_eq!(got.len(), outs.len());
        let time = codec::format_time(ms);
        prop_assert_eq!(&got[0]["sendname"], &json!(a));
        prop_assert_eq!(&got[0]["msg"], &json!(b));
        prop_assert_eq!(&got[0]["time"], &json!(time));
        prop_assert_eq!(&got[1]["groupname"], &json!(a));
        prop_assert_eq!(&got[1]["msg"], &json!(c));
        prop_assert_eq!(&got[2]["msg"], &json!(b));
        prop_assert_eq!(&got[3]["errmsg"], &json!(a));
        prop_assert_eq!(&got[4]["offlinemsg"][0], &json!(b));
        let friend: Value = serde_json::from_str(got[4]["friends"][0].as_str().unwrap_or("?"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&friend["name"], &json!(b));
        let group: Value = serde_json::from_str(got[4]["groups"][0].as_str().unwrap_or("?"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&group["groupdesc"], &json!(b));
        prop_assert_eq!(&got[5]["friendname"], &json!(a));
        prop_assert_eq!(&got[6]["msg"], &json!(c));
        prop_assert_eq!(&got[7]["groupusers"][0], &json!(c));
    }

    /// `parse_time` inverts `format_time` to the second over years
    /// 1970-9999, and never panics on arbitrary text.
    #[test]
    fn time_round_trip(ms in 0u64..253_402_300_799_000, junk in "\\PC{0,24}", mask in any::<u32>()) {
        let t = codec::format_time(ms);
        prop_assert_eq!(t.len(), 19);
        prop_assert_eq!(codec::parse_time(&t), Some(ms - ms % 1000));
        let _ = codec::parse_time(&junk);
        // Corrupt single characters of a valid time.
        let mut b: Vec<char> = t.chars().collect();
        for (i, ch) in b.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *ch = junk.chars().nth(i).unwrap_or('é');
            }
        }
        let corrupted: String = b.into_iter().collect();
        let _ = codec::parse_time(&corrupted);
    }
}

//! Property-based fuzzing of the frame splitter and the envelope verifier
//! (issue 10 item 5: fuzzing on the stable toolchain).
//!
//! - Any byte stream, cut into reads anywhere, yields exactly the frames (or
//!   the error) that a one-shot reference parser finds in the whole stream,
//!   and the buffer never grows past one max frame plus one read.
//! - Streams of real frames built by `wire::Enc`, cut anywhere, yield the
//!   same frames, each verifying and reading back what was encoded.
//! - Arbitrary, mutated and truncated frames never panic the verifier, and
//!   whatever it accepts can be read in full (every accessor the server's
//!   `expect("type checked")` relies on is `Some`).
//!
//! Cases: `PROPTEST_CASES` (default per test below, sized so the whole prop
//! suite runs in well under a minute); `bench/fuzz.sh` runs it for longer.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use ringchat::server::native::is_request;
use ringchat::store::StoredMessage;
use ringchat::wire::frame::PREFIX;
use ringchat::wire::{self, Enc, FrameBuf, FrameError, fb};

/// `PROPTEST_CASES` if set, else `default`. Shrunk failures are saved in
/// tests/proptest-regressions/ and replayed first by later runs.
fn config(default: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default;
    }
    c.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(
        "tests/proptest-regressions/prop_wire.txt",
    )));
    c
}

// ------------------------------------------------------------------ splitter

/// How a stream ended, as the one-shot reference parser sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Every byte was returned as part of a frame.
    Clean,
    /// Some bytes of an incomplete frame are left over.
    Partial(usize),
    Error(FrameError),
}

/// The reference: the frames of a whole stream, prefix included.
fn reference(stream: &[u8], max: usize) -> (Vec<Vec<u8>>, End) {
    let mut frames = vec![];
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.is_empty() {
            return (frames, End::Clean);
        }
        if rest.len() < PREFIX {
            return (frames, End::Partial(rest.len()));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > max {
            return (frames, End::Error(FrameError::TooLarge { len, max }));
        }
        if len == 0 {
            return (frames, End::Error(FrameError::Empty));
        }
        if rest.len() < PREFIX + len {
            return (frames, End::Partial(rest.len()));
        }
        frames.push(rest[..PREFIX + len].to_vec());
        at += PREFIX + len;
    }
}

/// One socket read: up to `size` bytes into `spare(min)`, or a `push` (the
/// hand-over path); `shrink` calls `release_if_idle` first, as `fill` does when a read waits.
#[derive(Debug, Clone)]
struct Read {
    size: usize,
    min: usize,
    push: bool,
    shrink: bool,
}

fn reads() -> impl Strategy<Value = Vec<Read>> {
    let read = (
        prop_oneof![1usize..8, 1usize..300, 1usize..5000],
        prop_oneof![Just(1usize), 1usize..64, Just(1024usize), 1usize..4096],
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.3),
    )
        .prop_map(|(size, min, push, shrink)| Read {
            size,
            min,
            push,
            shrink,
        });
    proptest::collection::vec(read, 1..40)
}

/// Feeds `stream` through a `FrameBuf` in the given reads (cycled), popping
/// frames after every read like the server's loops; stops at the first error.
/// Checks the buffer bounds on the way.
fn drive(stream: &[u8], max: usize, cap: usize, plan: &[Read]) -> (Vec<Vec<u8>>, End) {
    let mut fb = FrameBuf::with_capacity(max, cap);
    let mut frames = vec![];
    let mut at = 0;
    let mut biggest_min = 0;
    let mut i = 0;
    // Every read moves at least one byte, so this terminates.
    while at < stream.len() {
        let r = &plan[i % plan.len()];
        i += 1;
        if r.shrink {
            fb.release_if_idle();
        }
        let want = r.size.min(stream.len() - at);
        let n = if r.push {
            fb.push(&stream[at..at + want]);
            biggest_min = biggest_min.max(want);
            want
        } else {
            let held = fb.buffered();
            let dst = fb.spare(r.min);
            assert!(
                dst.len() >= r.min,
                "spare({}) gave {} bytes",
                r.min,
                dst.len()
            );
            biggest_min = biggest_min.max(r.min);
            // The buffer holds at most one frame being assembled plus one
            // read (or it is a pooled buffer, lent after a release): it
            // must not grow with traffic.
            let bound = (max + PREFIX + biggest_min)
                .max(cap)
                .max(ringchat::wire::pool::BUF);
            assert!(
                dst.len() + held <= bound,
                "buffer grew to at least {} (bound {bound})",
                dst.len() + held
            );
            // A short read: the socket had less than the room offered.
            let n = want.min(dst.len());
            dst[..n].copy_from_slice(&stream[at..at + n]);
            fb.filled(n);
            n
        };
        at += n;
        loop {
            match fb.next_frame() {
                Ok(Some(range)) => {
                    assert_eq!(range.len(), fb.get(range.clone()).len());
                    frames.push(fb.get(range).to_vec());
                }
                Ok(None) => break,
                // The stream cannot be resynchronised: the caller closes.
                Err(e) => return (frames, End::Error(e)),
            }
        }
    }
    assert_eq!(fb.pending().len(), fb.buffered());
    let end = match fb.buffered() {
        0 => End::Clean,
        n => End::Partial(n),
    };
    (frames, end)
}

/// A length prefix: often near the limit, sometimes far over it, zero, or random.
fn length_prefix(max: usize) -> impl Strategy<Value = u32> {
    let max = max as u32;
    prop_oneof![
        Just(0u32),
        Just(max),
        Just(max.saturating_add(1)),
        Just(u32::MAX),
        1..=max,
        any::<u32>(),
    ]
}

/// A stream mixing well-formed frames of arbitrary bytes with, sometimes,
/// a bad length and garbage after it; the frame limit is below `max_limit`.
fn framed_stream(max_limit: usize) -> impl Strategy<Value = (usize, Vec<u8>)> {
    (1usize..max_limit).prop_flat_map(|max| {
        let payload = prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 1..64.min(max + 1)),
            1 => proptest::collection::vec(any::<u8>(), max..=max),
        ];
        (
            Just(max),
            proptest::collection::vec(payload, 0..12),
            proptest::option::weighted(0.4, length_prefix(max)),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(max, payloads, bad, tail)| {
                let mut s = vec![];
                for p in payloads {
                    s.extend_from_slice(&(p.len() as u32).to_le_bytes());
                    s.extend_from_slice(&p);
                }
                if let Some(len) = bad {
                    s.extend_from_slice(&len.to_le_bytes());
                    s.extend_from_slice(&tail);
                }
                (max, s)
            })
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary bytes: the splitter agrees with the reference whatever the
    /// reads, and never panics or loops.
    #[test]
    fn splitter_matches_reference_on_arbitrary_bytes(
        max in prop_oneof![1usize..16, 1usize..70_000],
        stream in proptest::collection::vec(any::<u8>(), 0..2000),
        cap in 0usize..64,
        plan in reads(),
    ) {
        let want = reference(&stream, max);
        prop_assert_eq!(drive(&stream, max, cap, &plan), want);
    }

    /// Valid frames (and sometimes a bad length after them) split anywhere:
    /// exactly the same frames, then the same error.
    #[test]
    fn splitter_any_split_of_framed_stream(
        (max, stream) in framed_stream(3000),
        cap in 0usize..64,
        plan in reads(),
    ) {
        let want = reference(&stream, max);
        let got = drive(&stream, max, cap, &plan);
        prop_assert_eq!(&got, &want);
        // Every frame is handed out whole and can be verified without panicking.
        for f in &got.0 {
            let _ = wire::decode(f).map(|env| format!("{env:?}"));
        }
    }

    /// Every split point of a framed stream, two reads each (the exhaustive
    /// version of the unit test, on arbitrary streams).
    #[test]
    fn splitter_every_single_cut((max, stream) in framed_stream(200)) {
        let want = reference(&stream, max);
        for cut in 0..=stream.len() {
            let mut fb = FrameBuf::with_capacity(max, 8);
            let mut frames = vec![];
            let mut err = None;
            'feed: for piece in [&stream[..cut], &stream[cut..]] {
                fb.push(piece);
                loop {
                    match fb.next_frame() {
                        Ok(Some(r)) => frames.push(fb.get(r).to_vec()),
                        Ok(None) => break,
                        Err(e) => {
                            err = Some(e);
                            break 'feed;
                        }
                    }
                }
            }
            prop_assert_eq!(&frames, &want.0, "cut {}", cut);
            match (&want.1, err) {
                (End::Error(w), Some(e)) => prop_assert_eq!(*w, e),
                (End::Error(w), None) => prop_assert!(false, "cut {cut}: expected {w:?}"),
                (_, Some(e)) => prop_assert!(false, "cut {cut}: unexpected {e:?}"),
                (End::Clean, None) => prop_assert_eq!(fb.buffered(), 0),
                (End::Partial(n), None) => prop_assert_eq!(fb.buffered(), *n),
            }
        }
    }
}

// ------------------------------------------------------------------ real frames

/// Every request a client can send, plus the pushes with nested tables.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Hello(u64, String),
    Register(u64, String, String),
    Login(u64, String, String),
    Resume(u64, String, Vec<(u64, u64)>),
    Logout(u64),
    LogoutAll(u64),
    ChangePassword(u64, String, String),
    Ping(u64, u64),
    SearchUsers(u64, String, u64, u32),
    FriendRequest(u64, u64, String),
    FriendRespond(u64, u64, bool),
    FriendRemove(u64, u64),
    FriendBlock(u64, u64, bool),
    ListFriends(u64),
    CreateGroup(u64, String),
    JoinGroup(u64, u64),
    LeaveGroup(u64, u64),
    GroupMembers(u64, u64),
    RemoveMember(u64, u64, u64),
    DissolveGroup(u64, u64),
    SetAdmin(u64, u64, u64, bool),
    InviteToGroup(u64, u64, u64),
    RespondJoinRequest(u64, u64, u64, bool),
    ListGroups(u64),
    SendMessage(u64, u64, u64, u64, String),
    Ack(Vec<(u64, u64)>),
    History(u64, u64, u64, u32),
    /// (req_id, conv, seq, sender, ts, cmid, body, sender name) per message.
    Messages(u64, Vec<(u64, u64, u64, u64, u64, String, String)>),
    Error(u64, u16, String),
    Presence(u64, bool),
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9_.-]{1,12}",
        any::<String>(),
        "\\PC{0,300}",
    ]
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..100, any::<u64>()]
}

fn req() -> impl Strategy<Value = Req> {
    let pairs = || proptest::collection::vec((id(), id()), 0..8);
    let msg = (id(), id(), id(), id(), id(), text(), text());
    prop_oneof![
        (id(), text()).prop_map(|(r, s)| Req::Hello(r, s)),
        (id(), text(), text()).prop_map(|(r, a, b)| Req::Register(r, a, b)),
        (id(), text(), text()).prop_map(|(r, a, b)| Req::Login(r, a, b)),
        (id(), text(), pairs()).prop_map(|(r, t, s)| Req::Resume(r, t, s)),
        id().prop_map(Req::Logout),
        id().prop_map(Req::LogoutAll),
        (id(), text(), text()).prop_map(|(r, a, b)| Req::ChangePassword(r, a, b)),
        (id(), id()).prop_map(|(r, n)| Req::Ping(r, n)),
        (id(), text(), id(), any::<u32>()).prop_map(|(r, p, a, l)| Req::SearchUsers(r, p, a, l)),
        (id(), id(), text()).prop_map(|(r, u, n)| Req::FriendRequest(r, u, n)),
        (id(), id(), any::<bool>()).prop_map(|(r, u, a)| Req::FriendRespond(r, u, a)),
        (id(), id()).prop_map(|(r, u)| Req::FriendRemove(r, u)),
        (id(), id(), any::<bool>()).prop_map(|(r, u, b)| Req::FriendBlock(r, u, b)),
        id().prop_map(Req::ListFriends),
        (id(), text()).prop_map(|(r, n)| Req::CreateGroup(r, n)),
        (id(), id()).prop_map(|(r, g)| Req::JoinGroup(r, g)),
        (id(), id()).prop_map(|(r, g)| Req::LeaveGroup(r, g)),
        (id(), id()).prop_map(|(r, g)| Req::GroupMembers(r, g)),
        (id(), id(), id()).prop_map(|(r, g, u)| Req::RemoveMember(r, g, u)),
        (id(), id()).prop_map(|(r, g)| Req::DissolveGroup(r, g)),
        (id(), id(), id(), any::<bool>()).prop_map(|(r, g, u, a)| Req::SetAdmin(r, g, u, a)),
        (id(), id(), id()).prop_map(|(r, g, u)| Req::InviteToGroup(r, g, u)),
        (id(), id(), id(), any::<bool>())
            .prop_map(|(r, g, u, a)| Req::RespondJoinRequest(r, g, u, a)),
        id().prop_map(Req::ListGroups),
        (id(), id(), id(), id(), text())
            .prop_map(|(r, t, g, c, b)| Req::SendMessage(r, t, g, c, b)),
        pairs().prop_map(Req::Ack),
        (id(), id(), id(), any::<u32>()).prop_map(|(r, c, b, l)| Req::History(r, c, b, l)),
        (id(), proptest::collection::vec(msg, 0..6)).prop_map(|(r, m)| Req::Messages(r, m)),
        (id(), any::<u16>(), text()).prop_map(|(r, c, m)| Req::Error(r, c, m)),
        (id(), any::<bool>()).prop_map(|(u, o)| Req::Presence(u, o)),
    ]
}

fn encode(e: &mut Enc, r: &Req) -> Vec<u8> {
    match r {
        Req::Hello(id, n) => e.hello(*id, n),
        Req::Register(id, u, p) => e.register(*id, u, p),
        Req::Login(id, u, p) => e.login(*id, u, p),
        Req::Resume(id, t, s) => e.resume(*id, t, s),
        Req::Logout(id) => e.logout(*id),
        Req::LogoutAll(id) => e.logout_all(*id),
        Req::ChangePassword(id, o, n) => e.change_password(*id, o, n),
        Req::Ping(id, n) => e.ping(*id, *n),
        Req::SearchUsers(id, p, a, l) => e.search_users(*id, p, *a, *l),
        Req::FriendRequest(id, u, n) => e.friend_request(*id, *u, n),
        Req::FriendRespond(id, u, a) => e.friend_respond(*id, *u, *a),
        Req::FriendRemove(id, u) => e.friend_remove(*id, *u),
        Req::FriendBlock(id, u, b) => e.friend_block(*id, *u, *b),
        Req::ListFriends(id) => e.list_friends(*id),
        Req::CreateGroup(id, n) => e.create_group(*id, n),
        Req::JoinGroup(id, g) => e.join_group(*id, *g),
        Req::LeaveGroup(id, g) => e.leave_group(*id, *g),
        Req::GroupMembers(id, g) => e.group_members(*id, *g),
        Req::RemoveMember(id, g, u) => e.remove_member(*id, *g, *u),
        Req::DissolveGroup(id, g) => e.dissolve_group(*id, *g),
        Req::SetAdmin(id, g, u, a) => e.set_admin(*id, *g, *u, *a),
        Req::InviteToGroup(id, g, u) => e.invite_to_group(*id, *g, *u),
        Req::RespondJoinRequest(id, g, u, a) => e.respond_join_request(*id, *g, *u, *a),
        Req::ListGroups(id) => e.list_groups(*id),
        Req::SendMessage(id, t, g, c, b) => e.send_message(*id, *t, *g, *c, b),
        Req::Ack(items) => e.ack(items),
        Req::History(id, c, b, l) => e.history(*id, *c, *b, *l),
        Req::Messages(id, ms) => {
            let stored: Vec<StoredMessage> = ms
                .iter()
                .map(|(conv, seq, sender, ts, cmid, body, name)| StoredMessage {
                    conv: *conv,
                    seq: *seq,
                    sender: *sender,
                    timestamp_ms: *ts,
                    client_msg_id: *cmid,
                    body: body.clone(),
                    sender_name: name.clone(),
                })
                .collect();
            e.messages(*id, &stored)
        }
        Req::Error(id, c, m) => e.error(*id, fb::ErrorCode(*c), m),
        Req::Presence(u, o) => e.presence(*u, *o),
    }
    .to_vec()
}

fn s(v: Option<&str>) -> String {
    v.unwrap_or_default().to_owned()
}

fn pairs(v: Option<flatbuffers::Vector<'_, fb::ConvSeq>>) -> Vec<(u64, u64)> {
    v.map(|v| v.iter().map(|c| (c.conversation(), c.seq())).collect())
        .unwrap_or_default()
}

/// The body of a verified envelope of type `ty`: present, or a verifier bug
/// (the server unwraps it with `expect("type checked")`).
fn must<T>(body: Option<T>, ty: fb::Body) -> T {
    body.unwrap_or_else(|| panic!("verified {ty:?} frame without its body"))
}

/// Reads a verified envelope back into a `Req`, the way the server and the
/// client read it (accessors only; every `body_as_*` must be `Some`).
fn read_back(env: fb::Envelope<'_>) -> Req {
    let id = env.req_id();
    let ty = env.body_type();
    match ty {
        fb::Body::Hello => {
            let h = must(env.body_as_hello(), ty);
            Req::Hello(id, s(h.client_name()))
        }
        fb::Body::Register => {
            let r = must(env.body_as_register(), ty);
            Req::Register(id, s(r.username()), s(r.password()))
        }
        fb::Body::Login => {
            let r = must(env.body_as_login(), ty);
            Req::Login(id, s(r.username()), s(r.password()))
        }
        fb::Body::Resume => {
            let r = must(env.body_as_resume(), ty);
            Req::Resume(id, s(r.token()), pairs(r.since()))
        }
        fb::Body::Logout => {
            must(env.body_as_logout(), ty);
            Req::Logout(id)
        }
        fb::Body::LogoutAll => {
            must(env.body_as_logout_all(), ty);
            Req::LogoutAll(id)
        }
        fb::Body::ChangePassword => {
            let r = must(env.body_as_change_password(), ty);
            Req::ChangePassword(id, s(r.old_password()), s(r.new_password()))
        }
        fb::Body::Ping => Req::Ping(id, must(env.body_as_ping(), ty).nonce()),
        fb::Body::SearchUsers => {
            let q = must(env.body_as_search_users(), ty);
            Req::SearchUsers(id, s(q.prefix()), q.after_id(), q.limit())
        }
        fb::Body::FriendRequest => {
            let r = must(env.body_as_friend_request(), ty);
            Req::FriendRequest(id, r.user_id(), s(r.note()))
        }
        fb::Body::FriendRespond => {
            let r = must(env.body_as_friend_respond(), ty);
            Req::FriendRespond(id, r.user_id(), r.accept())
        }
        fb::Body::FriendRemove => {
            Req::FriendRemove(id, must(env.body_as_friend_remove(), ty).user_id())
        }
        fb::Body::FriendBlock => {
            let r = must(env.body_as_friend_block(), ty);
            Req::FriendBlock(id, r.user_id(), r.block())
        }
        fb::Body::ListFriends => {
            must(env.body_as_list_friends(), ty);
            Req::ListFriends(id)
        }
        fb::Body::CreateGroup => {
            Req::CreateGroup(id, s(must(env.body_as_create_group(), ty).name()))
        }
        fb::Body::JoinGroup => Req::JoinGroup(id, must(env.body_as_join_group(), ty).group_id()),
        fb::Body::LeaveGroup => Req::LeaveGroup(id, must(env.body_as_leave_group(), ty).group_id()),
        fb::Body::GroupMembers => {
            Req::GroupMembers(id, must(env.body_as_group_members(), ty).group_id())
        }
        fb::Body::RemoveMember => {
            let r = must(env.body_as_remove_member(), ty);
            Req::RemoveMember(id, r.group_id(), r.user_id())
        }
        fb::Body::DissolveGroup => {
            Req::DissolveGroup(id, must(env.body_as_dissolve_group(), ty).group_id())
        }
        fb::Body::SetAdmin => {
            let r = must(env.body_as_set_admin(), ty);
            Req::SetAdmin(id, r.group_id(), r.user_id(), r.admin())
        }
        fb::Body::InviteToGroup => {
            let r = must(env.body_as_invite_to_group(), ty);
            Req::InviteToGroup(id, r.group_id(), r.user_id())
        }
        fb::Body::RespondJoinRequest => {
            let r = must(env.body_as_respond_join_request(), ty);
            Req::RespondJoinRequest(id, r.group_id(), r.user_id(), r.accept())
        }
        fb::Body::ListGroups => {
            must(env.body_as_list_groups(), ty);
            Req::ListGroups(id)
        }
        fb::Body::SendMessage => {
            let m = must(env.body_as_send_message(), ty);
            Req::SendMessage(
                id,
                m.to_user(),
                m.group_id(),
                m.client_msg_id(),
                s(m.body()),
            )
        }
        fb::Body::Ack => Req::Ack(pairs(must(env.body_as_ack(), ty).items())),
        fb::Body::History => {
            let h = must(env.body_as_history(), ty);
            Req::History(id, h.conversation(), h.before_seq(), h.limit())
        }
        fb::Body::Messages => {
            let m = must(env.body_as_messages(), ty);
            let ms = m
                .messages()
                .map(|v| {
                    v.iter()
                        .map(|c| {
                            (
                                c.conversation(),
                                c.seq(),
                                c.sender(),
                                c.timestamp_ms(),
                                c.client_msg_id(),
                                s(c.body()),
                                s(c.sender_name()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Req::Messages(id, ms)
        }
        fb::Body::ErrorReply => {
            let e = must(env.body_as_error_reply(), ty);
            Req::Error(id, e.code().0, s(e.message()))
        }
        fb::Body::Presence => {
            let p = must(env.body_as_presence(), ty);
            Req::Presence(p.user_id(), p.online())
        }
        other => panic!("unexpected body {other:?}"),
    }
}

/// Reads everything a verified envelope holds, through the generated Debug
/// (which walks every field of every table) and, for requests, through the
/// accessors the server unwraps with `expect("type checked")`.
fn read_all(env: fb::Envelope<'_>) {
    let dbg = format!("{env:?}");
    let ty = env.body_type();
    let known = fb::Body::ENUM_VALUES.contains(&ty) && ty != fb::Body::NONE;
    assert!(
        !known || !dbg.contains("InvalidFlatbuffer"),
        "verified {ty:?} envelope whose body does not match: {dbg}"
    );
    if is_request(ty) {
        // Panics (with the type) if the verifier let through a request
        // whose body is missing.
        let _ = read_back(env);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Real frames, cut anywhere: the same frames, each verifying and
    /// reading back exactly what was encoded.
    #[test]
    fn real_frames_split_anywhere_read_back(
        reqs in proptest::collection::vec(req(), 1..10),
        cap in 0usize..64,
        plan in reads(),
    ) {
        let mut e = Enc::new();
        let frames: Vec<Vec<u8>> = reqs.iter().map(|r| encode(&mut e, r)).collect();
        let stream: Vec<u8> = frames.concat();
        let max = frames.iter().map(|f| f.len() - PREFIX).max().unwrap_or(1);
        let (got, end) = drive(&stream, max, cap, &plan);
        prop_assert_eq!(end, End::Clean);
        prop_assert_eq!(&got, &frames);
        for (f, r) in got.iter().zip(&reqs) {
            let env = wire::decode(f).map_err(|e| TestCaseError::fail(format!("{r:?}: {e}")))?;
            prop_assert_eq!(&read_back(env), r);
            // Ack and pushes go with req_id 0 (a client may send anything there).
            if matches!(r, Req::Ack(_) | Req::Presence(..)) {
                prop_assert_eq!(env.req_id(), 0);
            }
            read_all(env);
        }
    }

    /// Arbitrary bytes behind a correct length prefix: verification fails or
    /// succeeds, never panics, and what succeeds reads in full.
    #[test]
    fn verifier_never_panics_on_arbitrary_payloads(
        payload in proptest::collection::vec(any::<u8>(), 1..512),
    ) {
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&payload);
        if let Ok(env) = wire::decode(&f) {
            read_all(env);
        }
    }

    /// Real frames with bytes overwritten, flipped, inserted or cut (the
    /// length prefix kept consistent, as the splitter guarantees): the
    /// verifier rejects or accepts, never panics, and what it accepts reads
    /// in full.
    #[test]
    fn verifier_never_panics_on_mutated_frames(
        r in req(),
        edits in proptest::collection::vec(
            (0u8..5, any::<proptest::sample::Index>(), any::<u8>()), 1..12),
    ) {
        let mut e = Enc::new();
        let mut p = encode(&mut e, &r)[PREFIX..].to_vec();
        for (kind, at, v) in edits {
            if p.is_empty() {
                p.push(v);
            }
            let i = at.index(p.len());
            match kind {
                0 => p[i] = v,
                1 => p[i] ^= 1 << (v % 8),
                2 => p.insert(i, v),
                3 => p.truncate(i.max(1)),
                // Small integers are the interesting values for offsets,
                // vtable entries and union tags.
                _ => p[i] = v % 48,
            }
        }
        let mut f = (p.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&p);
        if let Ok(env) = wire::decode(&f) {
            read_all(env);
        }
        // The verifier is also given whatever prefix the stream claimed.
        f[..PREFIX].copy_from_slice(&(p.len() as u32 ^ 0x5a).to_le_bytes());
        if let Ok(env) = wire::decode(&f) {
            read_all(env);
        }
    }
}

//! The engine behind `ringchat chat`: runs commands, prints events, and keeps
//! the session alive across dropped connections.
//!
//! One thread owns all state. It waits on three things at once: the next
//! input line (from the terminal or stdin thread), the next event of the
//! current connection (a small pump thread per connection forwards
//! [`Client::next_event`] into one channel, tagged with a generation number),
//! and the reconnect timer.
//!
//! Reconnecting: when the connection drops (an `Event::Closed`, or a request
//! failing with a socket error or timeout) the engine prints one status line
//! and retries `connect` with exponential backoff (100 ms doubling to 5 s,
//! each delay jittered to 50–100 %). Once connected it resumes the session
//! with the token and `since` = the highest seq it has *shown* per
//! conversation, so the server sends exactly what was missed. That is gap-
//! proof because the client library surfaces each conversation in seq order,
//! filling a gap with `History` before it shows what lies above it
//! (`client::inbox`): the highest seq shown is the highest contiguous one.
//! Then it resends
//! every message whose `SendOk` never came, with the same `client_msg_id`
//! (the server dedups), and finally runs the commands typed while offline.
//!
//! Never twice: a message is printed only if its seq is above the highest one
//! printed for its conversation, and messages this device sent itself (known
//! from `SendOk`) are not echoed when a catch-up replays them.

use super::ui::{Out, Shown, Style};
use super::{ChatOptions, Command, HELP, Target};
use crate::client::{
    self, Client, ClientError, ErrorCode, Event, FriendEventKind, FriendState, GroupEventKind,
};
use crate::model::{ConvId, GroupId, Seq, UserId, direct_conv, direct_peer};
use crossbeam_channel::{Receiver, Sender, after, never, select};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One line from the user; the engine answers with the next prompt, or
/// `None` when it is done (after `/quit`). A closed channel is end of input.
pub enum Input {
    Line(String, Sender<Option<String>>),
    /// The user edited the line being typed (no answer).
    Keystroke,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long login/resume wait for the catch-up to finish (`SyncDone`).
const SYNC_WAIT: Duration = Duration::from_secs(10);
/// At end of input, how long to keep trying to deliver queued messages.
const DRAIN_WAIT: Duration = Duration::from_secs(15);
const HISTORY_PAGE: u32 = 20;
/// How many pages of search results to scan for an exact username.
const SEARCH_PAGES: usize = 50;

/// A message not yet confirmed by `SendOk`.
struct Outgoing {
    to_user: UserId,
    group: GroupId,
    client_msg_id: u64,
    body: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Conv {
    Direct(UserId, String),
    Group(GroupId, String),
}

/// Why a command failed.
enum Fail {
    Client(ClientError),
    Local(Shown),
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        Fail::Client(e)
    }
}

fn local(code: &str, words: impl Into<String>) -> Fail {
    Fail::Local(Shown::new(code, words))
}

type R<T> = Result<T, Fail>;

pub struct Engine<O: Out> {
    addr: String,
    out: O,
    style: Style,
    conn: Option<Arc<Client>>,
    /// Generation of `conn`: events of older connections carry older numbers.
    gen_: u64,
    ev_tx: Sender<(u64, Event)>,
    ev_rx: Receiver<(u64, Event)>,
    me: Option<client::Session>,
    /// Highest seq printed per conversation: the dedup and resume cursor.
    printed: HashMap<ConvId, Seq>,
    /// Messages this device sent (from `SendOk`): not echoed on replay.
    own: HashSet<(ConvId, Seq)>,
    unacked: VecDeque<Outgoing>,
    /// Commands typed while disconnected, run after the resume.
    deferred: VecDeque<Command>,
    names: HashMap<UserId, String>,
    ids: HashMap<String, UserId>,
    groups: HashMap<GroupId, String>,
    current: Option<Conv>,
    /// The conversation and first seq of the last history page (for /more).
    page: Option<(Conv, Seq)>,
    /// Set while disconnected: when to try next.
    retry_at: Option<Instant>,
    backoff: Duration,
    failed: bool,
    quit: bool,
    mid_base: u64,
    mid_next: u64,
    /// When to tell the server this user is typing.
    typing_out: client::typing::TypingOut,
    /// Who is typing, as shown.
    typing_in: client::typing::TypingIn,
    /// Seqs this device sent per direct conversation that the peer has not
    /// read yet (✓ printed, ✓✓ pending).
    unread_by_peer: HashMap<ConvId, std::collections::BTreeSet<Seq>>,
    /// When the engine started: the clock of the typing state.
    epoch: Instant,
}

impl<O: Out> Engine<O> {
    fn new(addr: String, out: O, pretty: bool) -> Self {
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        Engine {
            addr,
            out,
            style: Style { pretty },
            conn: None,
            gen_: 0,
            ev_tx,
            ev_rx,
            me: None,
            printed: HashMap::new(),
            own: HashSet::new(),
            unacked: VecDeque::new(),
            deferred: VecDeque::new(),
            names: HashMap::new(),
            ids: HashMap::new(),
            groups: HashMap::new(),
            current: None,
            page: None,
            retry_at: None,
            backoff: BACKOFF_MIN,
            failed: false,
            quit: false,
            mid_base: rand::random::<u64>(),
            mid_next: 0,
            typing_out: Default::default(),
            typing_in: Default::default(),
            unread_by_peer: HashMap::new(),
            epoch: Instant::now(),
        }
    }

    /// Connects, logs in if asked, then serves `input` until quit or end of
    /// input. Returns the process exit code.
    pub fn start(opts: ChatOptions, out: O, pretty: bool, input: Receiver<Input>) -> i32 {
        Self::start_notify(opts, out, pretty, input, None)
    }

    /// Like [`start`](Self::start); sends the first prompt on `ready` once
    /// connected (and logged in), so the terminal shows no prompt before.
    pub fn start_notify(
        opts: ChatOptions,
        out: O,
        pretty: bool,
        input: Receiver<Input>,
        ready: Option<Sender<String>>,
    ) -> i32 {
        let mut e = Engine::new(opts.server.clone(), out, pretty);
        match Client::connect(opts.server.as_str()) {
            Ok(c) => e.install(c),
            Err(err) => {
                let shown = Shown::from(&err);
                e.fail(Shown::new(
                    &shown.code,
                    format!("cannot reach the server at {}: {}", e.addr, shown.words),
                ));
                return 1;
            }
        }
        if let Some(l) = opts.login {
            let Some((user, password)) = l.split_once(':') else {
                e.fail(Shown::new("Usage", "--login takes user:password"));
                return 1;
            };
            e.command(Command::Login {
                user: user.to_string(),
                password: password.to_string(),
            });
            if e.failed {
                return 1;
            }
        }
        if let Some(r) = ready {
            let _ = r.send(e.prompt());
        }
        e.run(input)
    }

    fn run(&mut self, input: Receiver<Input>) -> i32 {
        while !self.quit {
            let ev_rx = self.ev_rx.clone();
            let timer = match self.retry_at {
                Some(at) => after(at.saturating_duration_since(Instant::now())),
                None => never(),
            };
            select! {
                recv(input) -> m => match m {
                    Ok(Input::Line(line, ack)) => {
                        self.line(&line);
                        let _ = ack.send((!self.quit).then(|| self.prompt()));
                    }
                    Ok(Input::Keystroke) => self.keystroke(),
                    Err(_) => {
                        self.drain();
                        break;
                    }
                },
                recv(ev_rx) -> e => {
                    if let Ok((g, ev)) = e {
                        self.event(g, ev);
                    }
                }
                recv(timer) -> _ => self.reconnect(),
            }
        }
        self.shutdown();
        i32::from(self.failed)
    }

    /// End of input: give queued work a bounded chance to go out.
    fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN_WAIT;
        while !(self.unacked.is_empty() && self.deferred.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if self.conn.is_some() {
                self.flush();
                self.run_deferred();
                if self.conn.is_some() {
                    break;
                }
                continue;
            }
            let ev_rx = self.ev_rx.clone();
            let timer = match self.retry_at {
                Some(at) => after(at.saturating_duration_since(Instant::now()).min(left)),
                None => after(left),
            };
            select! {
                recv(ev_rx) -> e => if let Ok((g, ev)) = e { self.event(g, ev) },
                recv(timer) -> _ => self.reconnect(),
            }
        }
        if !self.deferred.is_empty() {
            let n = self.deferred.len();
            self.deferred.clear();
            self.fail(Shown::new(
                "Offline",
                format!("{n} command(s) were not run: the server could not be reached"),
            ));
        }
    }

    fn shutdown(&mut self) {
        if !self.unacked.is_empty() {
            self.flush();
        }
        if !self.unacked.is_empty() {
            let n = self.unacked.len();
            self.unacked.clear();
            self.fail(Shown::new(
                "Unsent",
                format!("{n} message(s) could not be delivered to the server"),
            ));
        }
        if let Some(c) = self.conn.take() {
            c.close();
        }
    }

    // ------------------------------------------------------------ output

    fn print(&mut self, s: &str) {
        self.out.line(s);
    }

    fn ok(&mut self, what: &str) {
        let s = self.style.ok(what);
        self.print(&s);
    }

    fn fail(&mut self, e: Shown) {
        self.failed = true;
        let s = self.style.error(&e);
        self.print(&s);
    }

    fn status(&mut self, state: &str, words: &str) {
        let s = self.style.status(state, words);
        self.print(&s);
    }

    fn prompt(&self) -> String {
        let who = self.me.as_ref().map_or("", |s| s.username.as_str());
        match &self.current {
            Some(Conv::Direct(_, n)) => format!("{who} [@{n}]> "),
            Some(Conv::Group(_, n)) => format!("{who} [#{n}]> "),
            None if who.is_empty() => "> ".to_string(),
            None => format!("{who}> "),
        }
    }

    // ------------------------------------------------------------ connection

    fn install(&mut self, c: Client) {
        self.gen_ += 1;
        let gen_ = self.gen_;
        let c = Arc::new(c);
        let pump = c.clone();
        let tx = self.ev_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("ringchat-chat-events".into())
            .spawn(move || {
                loop {
                    if let Some(ev) = pump.next_event(Duration::from_secs(3600)) {
                        let closed = ev == Event::Closed;
                        if tx.send((gen_, ev)).is_err() || closed {
                            return;
                        }
                    }
                }
            });
        if spawned.is_err() {
            // Without a pump we would never see events: treat as a drop.
            c.close();
        }
        self.conn = Some(c);
    }

    fn client(&self) -> R<Arc<Client>> {
        self.conn.clone().ok_or(Fail::Client(ClientError::Closed))
    }

    /// The connection is gone (or useless): close it, say so once, and
    /// schedule a reconnect.
    fn lost(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close();
        }
        if self.retry_at.is_none() {
            self.status("reconnecting", "connection lost; reconnecting…");
            self.retry_at = Some(Instant::now() + jitter(self.backoff));
        }
    }

    fn reconnect(&mut self) {
        if self.retry_at.is_none() {
            return;
        }
        let c = match Client::connect(self.addr.as_str()) {
            Ok(c) => c,
            Err(_) => {
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.retry_at = Some(Instant::now() + jitter(self.backoff));
                return;
            }
        };
        self.install(c);
        let Some(me) = self.me.clone() else {
            self.retry_at = None;
            self.backoff = BACKOFF_MIN;
            self.status("connected", "reconnected (not logged in)");
            self.run_deferred();
            return;
        };
        let since: Vec<(ConvId, Seq)> = self.printed.iter().map(|(&c, &s)| (c, s)).collect();
        let conn = self.conn.clone().expect("just installed");
        match conn.resume_since(&me.token, &since) {
            Ok(s) => {
                self.me = Some(s);
                self.wait_sync();
                if self.conn.is_none() {
                    return; // dropped again during catch-up; retry is scheduled
                }
                self.retry_at = None;
                self.backoff = BACKOFF_MIN;
                self.status("resumed", "reconnected; session resumed");
                self.flush();
                self.run_deferred();
            }
            Err(ClientError::Server {
                code: ErrorCode::BadToken,
                ..
            }) => {
                self.retry_at = None;
                self.backoff = BACKOFF_MIN;
                self.me = None;
                self.status("expired", "reconnected, but the session has expired");
                if !self.unacked.is_empty() {
                    let n = self.unacked.len();
                    self.unacked.clear();
                    self.fail(Shown::new(
                        "BadToken",
                        format!(
                            "{n} unsent message(s) dropped: the session has expired; log in again"
                        ),
                    ));
                }
                self.run_deferred();
            }
            Err(_) => {
                // Connected but could not resume: keep backing off.
                if let Some(c) = self.conn.take() {
                    c.close();
                }
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.retry_at = Some(Instant::now() + jitter(self.backoff));
            }
        }
    }

    /// Handles events until the current connection's `SyncDone` (the end of
    /// the catch-up), so missed messages print before the next line.
    fn wait_sync(&mut self) {
        let gen_ = self.gen_;
        let deadline = Instant::now() + SYNC_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ev_rx.recv_timeout(left) {
                Ok((g, Event::SyncDone { .. })) if g == gen_ => return,
                Ok((g, ev)) => {
                    self.event(g, ev);
                    if self.conn.is_none() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    fn run_deferred(&mut self) {
        while self.conn.is_some() {
            let Some(cmd) = self.deferred.pop_front() else {
                return;
            };
            self.command(cmd);
        }
    }

    // ------------------------------------------------------------ names

    fn learn(&mut self, id: UserId, name: &str) {
        if id != 0 && !name.is_empty() {
            self.names.insert(id, name.to_string());
            self.ids.insert(name.to_string(), id);
        }
    }

    fn name_of(&self, id: UserId) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("user:{id}"))
    }

    fn my_id(&self) -> UserId {
        self.me.as_ref().map_or(0, |s| s.user_id)
    }

    /// Resolves a username exactly (search is by prefix, case-insensitive).
    fn user_id(&mut self, name: &str) -> R<UserId> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let c = self.client()?;
        let mut after_id = 0;
        for _ in 0..SEARCH_PAGES {
            let (users, next) = c.search_users(name, after_id, 100)?;
            for u in &users {
                self.learn(u.user_id, &u.username);
            }
            if let Some(u) = users.iter().find(|u| u.username == name) {
                return Ok(u.user_id);
            }
            if next == 0 {
                break;
            }
            after_id = next;
        }
        Err(local(
            "NoSuchUser",
            format!("there is no user named {name}"),
        ))
    }

    fn refresh_friends(&mut self) -> R<Vec<client::Friend>> {
        let fs = self.client()?.list_friends()?;
        for f in &fs {
            self.learn(f.user_id, &f.username);
        }
        Ok(fs)
    }

    fn refresh_groups(&mut self) -> R<Vec<client::GroupInfo>> {
        let gs = self.client()?.list_groups()?;
        self.groups = gs.iter().map(|g| (g.group_id, g.name.clone())).collect();
        Ok(gs)
    }

    fn find_group(&self, g: &str) -> Option<(GroupId, String)> {
        if let Some((&id, n)) = self.groups.iter().find(|(_, n)| n.as_str() == g) {
            return Some((id, n.clone()));
        }
        let id: GroupId = g.parse().ok()?;
        self.groups.get(&id).map(|n| (id, n.clone()))
    }

    /// One of my groups, by name or id.
    fn group(&mut self, g: &str) -> R<(GroupId, String)> {
        let g = g.strip_prefix('#').unwrap_or(g);
        if let Some(found) = self.find_group(g) {
            return Ok(found);
        }
        self.refresh_groups()?;
        self.find_group(g).ok_or_else(|| {
            local(
                "NoSuchGroup",
                format!("you are in no group named or numbered {g}"),
            )
        })
    }

    fn conv_of(&mut self, t: &Target) -> R<Conv> {
        Ok(match t {
            Target::User(u) => Conv::Direct(self.user_id(u)?, u.clone()),
            Target::Group(g) => {
                let (id, name) = self.group(g)?;
                Conv::Group(id, name)
            }
        })
    }

    fn conv_id(&self, c: &Conv) -> ConvId {
        match c {
            Conv::Direct(u, _) => direct_conv(self.my_id(), *u),
            Conv::Group(g, _) => *g,
        }
    }

    /// `(plain label, pretty label)` of a message's conversation.
    fn labels(&self, m: &client::ChatMsg) -> (String, String) {
        if m.group_id != 0 {
            let name = self
                .groups
                .get(&m.group_id)
                .cloned()
                .unwrap_or_else(|| m.group_id.to_string());
            (format!("#{}", m.group_id), format!("#{name}"))
        } else {
            let peer = direct_peer(m.conversation, self.my_id()).unwrap_or(m.sender);
            let name = if peer == m.sender && !m.sender_name.is_empty() {
                m.sender_name.clone()
            } else {
                self.name_of(peer)
            };
            (format!("@{name}"), format!("@{name}"))
        }
    }

    fn print_msg(&mut self, kind: &str, m: &client::ChatMsg) {
        self.learn(m.sender, &m.sender_name);
        let (plain, pretty) = self.labels(m);
        let from = if m.sender_name.is_empty() {
            self.name_of(m.sender)
        } else {
            m.sender_name.clone()
        };
        let s = self.style.msg(kind, &plain, &pretty, m.seq, &from, &m.body);
        self.print(&s);
    }

    // ------------------------------------------------------------ events

    fn event(&mut self, g: u64, ev: Event) {
        match ev {
            Event::Message(m) => {
                let last = self.printed.entry(m.conversation).or_insert(0);
                if m.seq <= *last {
                    return;
                }
                *last = m.seq;
                if self.own.remove(&(m.conversation, m.seq)) {
                    return;
                }
                // Our own message whose SendOk was lost: the resend confirms
                // it (the server dedups); don't echo it as incoming.
                if m.sender == self.my_id()
                    && self
                        .unacked
                        .iter()
                        .any(|o| o.client_msg_id == m.client_msg_id)
                {
                    return;
                }
                self.typing_in.message(m.conversation, m.sender);
                self.print_msg("msg", &m);
            }
            Event::ReadUpTo {
                conversation,
                reader,
                seq,
            } => {
                if reader == self.my_id() {
                    return; // another device of ours
                }
                let Some(set) = self.unread_by_peer.get_mut(&conversation) else {
                    return;
                };
                let read: Vec<Seq> = set.range(..=seq).copied().collect();
                if read.is_empty() {
                    return;
                }
                for s in &read {
                    set.remove(s);
                }
                let who = self.name_of(reader);
                let s = if self.style.pretty {
                    format!("✓✓ {who} read your messages (up to {seq})")
                } else {
                    format!("read @{who} {seq}")
                };
                self.print(&s);
            }
            Event::Typing {
                conversation,
                group_id,
                user_id,
                username,
                stopped,
            } => {
                let now = self.now_ms();
                let before = self.typing_in.status(conversation, now);
                self.typing_in
                    .event(conversation, user_id, &username, stopped, now);
                let after = self.typing_in.status(conversation, now);
                if stopped || before == after {
                    return;
                }
                let s = if self.style.pretty {
                    format!("-- {after}")
                } else if group_id != 0 {
                    format!("typing #{group_id} {username}")
                } else {
                    format!("typing @{username}")
                };
                self.print(&s);
            }
            Event::Presence { user_id, online } => {
                if !self.names.contains_key(&user_id) {
                    let _ = self.refresh_friends();
                }
                let s = self.style.presence(&self.name_of(user_id), online);
                self.print(&s);
            }
            Event::Friend {
                kind,
                user_id,
                username,
                note,
            } => {
                self.learn(user_id, &username);
                let what = match kind {
                    FriendEventKind::Requested => "request",
                    FriendEventKind::Accepted => "accepted",
                    FriendEventKind::Rejected => "rejected",
                    _ => "removed",
                };
                let s = self.style.friend(what, &self.name_of(user_id), &note);
                self.print(&s);
            }
            Event::Group {
                kind,
                group_id,
                user_id,
                actor,
                name,
            } => {
                if kind == GroupEventKind::Invited && user_id == self.my_id() {
                    // Not a member yet: only the invitation names the group.
                    let s = self.style.invited(group_id, &name);
                    self.print(&s);
                } else {
                    self.group_event(kind, group_id, user_id, actor)
                }
            }
            // Logged out elsewhere, or the password changed: say so (the
            // reconnect that follows finds the token gone: "expired").
            Event::Goodbye {
                code: ErrorCode::BadToken,
                message,
            } => self.status("ended", &message),
            Event::SyncDone { .. } | Event::Goodbye { .. } => {}
            Event::Error { code, .. } => {
                let s = self.style.error(&Shown::new(
                    crate::wire::error_name(code),
                    super::ui::plain_words(code),
                ));
                self.print(&s);
            }
            Event::Closed => {
                if g == self.gen_ && self.conn.is_some() {
                    self.lost();
                }
            }
        }
    }

    fn group_event(&mut self, kind: GroupEventKind, gid: GroupId, user: UserId, actor: UserId) {
        let what = match kind {
            GroupEventKind::Joined => "joined",
            GroupEventKind::Left => "left",
            GroupEventKind::Removed => "removed",
            GroupEventKind::Dissolved => "dissolved",
            GroupEventKind::Invited => "invited",
            GroupEventKind::JoinRequested => "asks-to-join",
            GroupEventKind::JoinRejected => "join-rejected",
            _ => "role-changed",
        };
        if !self.groups.contains_key(&gid) && what != "dissolved" {
            let _ = self.refresh_groups();
        }
        if (!self.names.contains_key(&user) || !self.names.contains_key(&actor))
            && matches!(
                what,
                "joined" | "removed" | "role-changed" | "invited" | "asks-to-join"
            )
            && let Ok(c) = self.client()
            && let Ok(ms) = c.group_members(gid)
        {
            for m in ms {
                self.learn(m.user_id, &m.username);
            }
        }
        let gname = self
            .groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string());
        let s =
            self.style
                .group_event(gid, &gname, what, &self.name_of(user), &self.name_of(actor));
        self.print(&s);
        let gone = what == "dissolved" || (what == "removed" && user == self.my_id());
        if gone {
            self.groups.remove(&gid);
            if matches!(&self.current, Some(Conv::Group(g, _)) if *g == gid) {
                self.current = None;
            }
        }
    }

    // ------------------------------------------------------------ commands

    fn line(&mut self, line: &str) {
        match super::parse(line) {
            Ok(cmd) => self.command(cmd),
            Err(usage) => self.fail(Shown::new("Usage", usage)),
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Empty => return,
            Command::Quit => {
                self.quit = true;
                return;
            }
            Command::Help => {
                for (u, what) in HELP {
                    let s = format!("  {u:<28} {what}");
                    self.print(&s);
                }
                self.print("  plain lines go to the conversation opened with /open");
                return;
            }
            Command::Close => {
                self.current = None;
                self.ok("close");
                return;
            }
            _ => {}
        }
        if self.conn.is_none() {
            self.deferred.push_back(cmd);
            self.status("queued", "not connected: will run after reconnecting");
            return;
        }
        match self.exec(cmd) {
            Ok(()) => {}
            Err(Fail::Local(s)) => self.fail(s),
            Err(Fail::Client(e)) => {
                let shown = Shown::from(&e);
                if matches!(
                    e,
                    ClientError::Closed | ClientError::Io(_) | ClientError::Timeout
                ) {
                    self.lost();
                }
                self.fail(shown);
            }
        }
    }

    fn exec(&mut self, cmd: Command) -> R<()> {
        match cmd {
            Command::Register { user, password } => {
                let id = self.client()?.register(&user, &password)?;
                self.learn(id, &user);
                self.ok(&format!("register {user} {id}"));
            }
            Command::Login { user, password } => {
                let s = self.client()?.login(&user, &password)?;
                self.printed.clear();
                self.own.clear();
                self.current = None;
                self.page = None;
                self.learn(s.user_id, &s.username);
                self.me = Some(s);
                // What happened while away: pending requests, who is online.
                if let Ok(fs) = self.refresh_friends() {
                    for f in fs {
                        let s = match f.state {
                            FriendState::IncomingRequest => {
                                self.style.friend("request", &f.username, &f.note)
                            }
                            FriendState::Friend if f.online => {
                                self.style.presence(&f.username, true)
                            }
                            _ => continue,
                        };
                        self.print(&s);
                    }
                }
                let _ = self.refresh_groups();
                self.wait_sync();
                self.ok(&format!("login {user}"));
            }
            Command::Passwd { old, new } => {
                self.client()?.change_password(&old, &new)?;
                self.ok("passwd");
            }
            c @ (Command::LogoutAll | Command::Logout) => {
                let all = c == Command::LogoutAll;
                if all {
                    self.client()?.logout_all()?;
                } else {
                    self.client()?.logout()?;
                }
                self.me = None;
                self.current = None;
                self.page = None;
                // The server closes this connection; start a fresh one quietly.
                if let Some(c) = self.conn.take() {
                    c.close();
                }
                match Client::connect(self.addr.as_str()) {
                    Ok(c) => self.install(c),
                    Err(_) => self.lost(),
                }
                self.ok(if all { "logout-all" } else { "logout" });
            }
            Command::Search { prefix } => {
                let (users, _) = self.client()?.search_users(&prefix, 0, 100)?;
                for u in &users {
                    self.learn(u.user_id, &u.username);
                    let st = if u.online { "online" } else { "offline" };
                    self.print(&format!("user {} {st}", u.username));
                }
                self.ok(&format!("search {}", users.len()));
            }
            Command::FriendRequest { user, note } => {
                let id = self.user_id(&user)?;
                self.client()?.friend_request(id, &note)?;
                self.ok(&format!("add {user}"));
            }
            Command::Accept { user } => {
                let id = self.user_id(&user)?;
                self.client()?.friend_respond(id, true)?;
                self.ok(&format!("accept {user}"));
            }
            Command::Reject { user } => {
                let id = self.user_id(&user)?;
                self.client()?.friend_respond(id, false)?;
                self.ok(&format!("reject {user}"));
            }
            Command::Unfriend { user } => {
                let id = self.user_id(&user)?;
                self.client()?.friend_remove(id)?;
                self.ok(&format!("unfriend {user}"));
            }
            Command::Block { user } => {
                let id = self.user_id(&user)?;
                self.client()?.friend_block(id, true)?;
                self.ok(&format!("block {user}"));
            }
            Command::Unblock { user } => {
                let id = self.user_id(&user)?;
                self.client()?.friend_block(id, false)?;
                self.ok(&format!("unblock {user}"));
            }
            Command::Friends => {
                let fs = self.refresh_friends()?;
                for f in &fs {
                    let state = match f.state {
                        FriendState::Friend => "friend",
                        FriendState::IncomingRequest => "incoming",
                        FriendState::OutgoingRequest => "outgoing",
                        _ => "blocked",
                    };
                    let online = if f.online { "online" } else { "offline" };
                    let mut s = format!("friend {} {state} {online}", f.username);
                    if !f.note.is_empty() {
                        s.push(' ');
                        s.push_str(&super::ui::one_line(&f.note));
                    }
                    self.print(&s);
                }
                self.ok(&format!("friends {}", fs.len()));
            }
            Command::Unread => {
                let convs = self.client()?.list_conversations()?;
                let mut total = 0;
                for c in &convs {
                    total += c.unread;
                    let label = if c.group_id != 0 {
                        self.groups.insert(c.group_id, c.name.clone());
                        format!("#{}", c.group_id)
                    } else {
                        self.learn(c.peer, &c.name);
                        format!("@{}", c.name)
                    };
                    let last = c.last_message.as_ref().map_or(String::new(), |m| {
                        let more = if c.preview_truncated { "…" } else { "" };
                        format!("{}: {}{more}", m.sender_name, super::ui::one_line(&m.body))
                    });
                    let s = if self.style.pretty {
                        let name = if c.group_id != 0 {
                            format!("#{}", c.name)
                        } else {
                            label.clone()
                        };
                        format!("{name}: {} unread  {last}", c.unread)
                    } else {
                        format!("unread {label} {} {last}", c.unread)
                            .trim_end()
                            .to_string()
                    };
                    self.print(&s);
                }
                self.ok(&format!("unread {total}"));
            }
            Command::Typing => {
                let conv = self.current.clone().ok_or_else(|| {
                    local(
                        "NoConversation",
                        "no conversation is open: use /open <user> or /open #<group>",
                    )
                })?;
                let id = self.conv_id(&conv);
                self.client()?.typing(id, false)?;
                self.ok("typing");
            }
            Command::Groups => {
                let gs = self.refresh_groups()?;
                for g in &gs {
                    let s = format!("group {} {} {}", g.group_id, role(g.role), g.name);
                    self.print(&s);
                }
                self.ok(&format!("groups {}", gs.len()));
            }
            Command::Create {
                name,
                private,
                full_history,
            } => {
                let (gid, _) = self
                    .client()?
                    .create_group_opts(&name, private, full_history)?;
                self.groups.insert(gid, name.clone());
                self.ok(&format!("create {gid} {name}"));
            }
            Command::Invite { user, group } => {
                let (gid, _) = self.group(&group)?;
                let uid = self.user_id(&user)?;
                self.client()?.invite_to_group(gid, uid)?;
                self.ok(&format!("invite {gid} {user}"));
            }
            Command::Requests { group } => {
                let (gid, _) = self.group(&group)?;
                let ms = self.client()?.group_members(gid)?;
                let mut n = 0;
                for m in &ms {
                    self.learn(m.user_id, &m.username);
                    let what = match m.pending {
                        Some(client::Pending::Requested) => "asks",
                        Some(client::Pending::Invited) => "invited",
                        None => continue,
                    };
                    n += 1;
                    self.print(&format!("request {gid} {} {what}", m.username));
                }
                self.ok(&format!("requests {n}"));
            }
            Command::Decide {
                group,
                user,
                accept,
            } => {
                let (gid, _) = self.group(&group)?;
                let uid = self.user_id(&user)?;
                self.client()?.respond_join_request(gid, uid, accept)?;
                let verb = if accept { "approve" } else { "reject" };
                self.ok(&format!("{verb} {gid} {user}"));
            }
            Command::Join { group } => {
                let g = group.strip_prefix('#').unwrap_or(&group);
                let gid = match g.parse::<GroupId>() {
                    Ok(id) => id,
                    Err(_) => {
                        return Err(local(
                            "Usage",
                            "join takes the group's number (ask a member: /groups shows it)",
                        ));
                    }
                };
                self.client()?.join_group(gid)?;
                let _ = self.refresh_groups();
                self.ok(&format!("join {gid}"));
            }
            Command::Leave { group } => {
                let (gid, _) = self.group(&group)?;
                self.client()?.leave_group(gid)?;
                self.forget_group(gid);
                self.ok(&format!("leave {gid}"));
            }
            Command::Dissolve { group } => {
                let (gid, _) = self.group(&group)?;
                self.client()?.dissolve_group(gid)?;
                self.forget_group(gid);
                self.ok(&format!("dissolve {gid}"));
            }
            Command::Members { group } => {
                let (gid, _) = self.group(&group)?;
                let ms: Vec<_> = self
                    .client()?
                    .group_members(gid)?
                    .into_iter()
                    .filter(|m| m.pending.is_none())
                    .collect();
                for m in &ms {
                    self.learn(m.user_id, &m.username);
                    let online = if m.online { "online" } else { "offline" };
                    let s = format!("member {gid} {} {} {online}", m.username, role(m.role));
                    self.print(&s);
                }
                self.ok(&format!("members {}", ms.len()));
            }
            Command::Kick { group, user } => {
                let (gid, _) = self.group(&group)?;
                let uid = self.user_id(&user)?;
                self.client()?.remove_member(gid, uid)?;
                self.ok(&format!("kick {gid} {user}"));
            }
            Command::Msg { user, text } => {
                let uid = self.user_id(&user)?;
                self.send(uid, 0, text);
            }
            Command::GroupMsg { group, text } => {
                let (gid, _) = self.group(&group)?;
                self.send(0, gid, text);
            }
            Command::Say { text } => match self.current.clone() {
                Some(Conv::Direct(uid, _)) => self.send(uid, 0, text),
                Some(Conv::Group(gid, _)) => self.send(0, gid, text),
                None => {
                    return Err(local(
                        "NoConversation",
                        "no conversation is open: use /open <user> or /open #<group>, or /msg",
                    ));
                }
            },
            Command::Open { target } => {
                let conv = self.conv_of(&target)?;
                let label = match &conv {
                    Conv::Direct(_, n) => format!("@{n}"),
                    Conv::Group(g, _) => format!("#{g}"),
                };
                self.current = Some(conv);
                self.ok(&format!("open {label}"));
            }
            Command::History { target } => {
                let conv = match target {
                    Some(t) => self.conv_of(&t)?,
                    None => self.current.clone().ok_or_else(|| {
                        local(
                            "NoConversation",
                            "no conversation is open: use /history <user> or /history #<group>",
                        )
                    })?,
                };
                self.history_page(conv, 0)?;
            }
            Command::More => {
                let Some((conv, first)) = self.page.clone() else {
                    return Err(local("NoHistory", "use /history first"));
                };
                if first <= 1 {
                    self.ok("history 0");
                } else {
                    self.history_page(conv, first)?;
                }
            }
            Command::Empty | Command::Help | Command::Quit | Command::Close => {}
        }
        Ok(())
    }

    fn forget_group(&mut self, gid: GroupId) {
        self.groups.remove(&gid);
        if matches!(&self.current, Some(Conv::Group(g, _)) if *g == gid) {
            self.current = None;
        }
    }

    fn history_page(&mut self, conv: Conv, before: Seq) -> R<()> {
        let id = self.conv_id(&conv);
        let msgs = self.client()?.history(id, before, HISTORY_PAGE)?;
        for m in &msgs {
            self.print_msg("history", m);
        }
        let first = msgs.first().map_or(1, |m| m.seq);
        self.page = Some((conv, first));
        self.ok(&format!("history {}", msgs.len()));
        Ok(())
    }

    // ------------------------------------------------------------ sending

    fn send(&mut self, to_user: UserId, group: GroupId, body: String) {
        if let Some(client::typing::Notify::Stopped(conv)) = self.typing_out.done() {
            self.notify_typing(conv, true);
        }
        let client_msg_id = self.next_msg_id();
        self.unacked.push_back(Outgoing {
            to_user,
            group,
            client_msg_id,
            body,
        });
        self.flush();
    }

    /// Sends queued messages in order until the queue is empty or the
    /// connection fails (then they wait for the reconnect).
    fn flush(&mut self) {
        while let Some(o) = self.unacked.front() {
            let Some(c) = self.conn.clone() else { return };
            let (to, group) = (o.to_user, o.group);
            match c.send_raw(to, group, o.client_msg_id, &o.body) {
                Ok(sent) => {
                    self.unacked.pop_front();
                    self.own.insert((sent.conversation, sent.seq));
                    let label = if group != 0 {
                        format!("#{group}")
                    } else {
                        self.unread_by_peer
                            .entry(sent.conversation)
                            .or_default()
                            .insert(sent.seq);
                        format!("@{}", self.name_of(to))
                    };
                    if self.style.pretty {
                        self.print(&format!("✓ sent to {label} ({})", sent.seq));
                    } else {
                        self.ok(&format!("msg {label} {}", sent.seq));
                    }
                }
                Err(e @ ClientError::Server { .. }) => {
                    self.unacked.pop_front();
                    self.fail(Shown::from(&e));
                }
                Err(_) => {
                    // Not confirmed: keep it and resend after reconnecting,
                    // with the same client_msg_id so it is stored once.
                    self.lost();
                    return;
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The user typed in the open conversation: maybe tell it.
    fn keystroke(&mut self) {
        let Some(conv) = self.current.clone() else {
            return;
        };
        if self.me.is_none() {
            return;
        }
        let id = self.conv_id(&conv);
        let now = self.now_ms();
        for n in self.typing_out.keystroke(id, now) {
            match n {
                client::typing::Notify::Typing(c) => self.notify_typing(c, false),
                client::typing::Notify::Stopped(c) => self.notify_typing(c, true),
            }
        }
    }

    /// Best effort: a typing notification that fails (rate-limited, the
    /// connection down) is not worth an error line.
    fn notify_typing(&mut self, conv: ConvId, stopped: bool) {
        if let Some(c) = self.conn.clone() {
            let _ = c.typing(conv, stopped);
        }
    }

    fn next_msg_id(&mut self) -> u64 {
        loop {
            let id = self.mid_base.wrapping_add(self.mid_next);
            self.mid_next += 1;
            if id != 0 {
                return id;
            }
        }
    }
}

fn role(r: crate::model::Role) -> &'static str {
    match r {
        crate::model::Role::Owner => "owner",
        crate::model::Role::Admin => "admin",
        crate::model::Role::Member => "member",
    }
}

/// 50–100 % of `d`, so clients dropped together do not reconnect together.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let extra = rand::random::<u64>() % (half.as_nanos() as u64).max(1);
    half + Duration::from_nanos(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(
                j >= Duration::from_millis(50) && j < Duration::from_millis(100),
                "{j:?}"
            );
        }
    }

    fn msg(conversation: ConvId, seq: Seq, sender: UserId, body: &str) -> client::ChatMsg {
        client::ChatMsg {
            conversation,
            seq,
            sender,
            group_id: 0,
            timestamp_ms: 0,
            client_msg_id: seq,
            body: body.into(),
            sender_name: "bob".into(),
        }
    }

    #[test]
    fn messages_print_once_and_own_sends_are_not_echoed() {
        let out = super::super::ui::Collect::default();
        let mut e = Engine::new("127.0.0.1:1".into(), out.clone(), false);
        e.me = Some(client::Session {
            user_id: 1,
            username: "alice".into(),
            token: String::new(),
        });
        let conv = direct_conv(1, 2);
        e.event(0, Event::Message(msg(conv, 1, 2, "one")));
        e.event(0, Event::Message(msg(conv, 1, 2, "one")));
        e.own.insert((conv, 2));
        e.event(0, Event::Message(msg(conv, 2, 1, "mine")));
        e.event(0, Event::Message(msg(conv, 3, 2, "three")));
        e.event(0, Event::Message(msg(conv, 2, 1, "mine")));
        assert_eq!(
            *out.0.lock().unwrap(),
            vec!["msg @bob 1 bob one", "msg @bob 3 bob three"]
        );
        assert_eq!(e.printed[&conv], 3);
    }
}

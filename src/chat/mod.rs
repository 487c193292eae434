//! `ringchat chat`: a line-based console client on top of [`crate::client`].
//!
//! - [`parse`] turns one typed line into a [`Command`] (pure, unit-tested).
//! - [`session`] runs the commands against a server and keeps the session
//!   alive across dropped connections (resume by token, resend unacked
//!   messages, never show a message twice).
//! - [`ui`] formats what is shown: a stable greppable line format when stdin
//!   is not a terminal (see docs/CHAT.md), a friendlier one on a terminal.

pub mod session;
pub mod ui;

use std::io::{BufRead, IsTerminal};

/// Where a conversation command points: a user (`bob`, `@bob`) or a group
/// (`#devs`, `#12`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Group(String),
}

/// One parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A blank line: nothing to do.
    Empty,
    Help,
    Register {
        user: String,
        password: String,
    },
    Login {
        user: String,
        password: String,
    },
    Logout,
    /// `/logout-all`: end every session of the user, everywhere.
    LogoutAll,
    /// `/passwd <old> <new>`: other sessions end, this one stays.
    Passwd {
        old: String,
        new: String,
    },
    Search {
        prefix: String,
    },
    FriendRequest {
        user: String,
        note: String,
    },
    Accept {
        user: String,
    },
    Reject {
        user: String,
    },
    Unfriend {
        user: String,
    },
    Block {
        user: String,
    },
    Unblock {
        user: String,
    },
    Friends,
    /// `/unread`: the conversations with their unread counts.
    Unread,
    /// `/typing`: tell the open conversation you are typing (a terminal
    /// does this as you type).
    Typing,
    Groups,
    Create {
        name: String,
        /// Join by invitation or approved request only.
        private: bool,
        /// New members may read what was said before they joined.
        full_history: bool,
    },
    /// Invite a user into one of my groups (owner/admin).
    Invite {
        user: String,
        group: String,
    },
    /// Pending invitations and join requests of a group (owner/admin).
    Requests {
        group: String,
    },
    /// Accept (`approve`) or reject a request to join a group.
    Decide {
        group: String,
        user: String,
        accept: bool,
    },
    Join {
        group: String,
    },
    Leave {
        group: String,
    },
    Dissolve {
        group: String,
    },
    Members {
        group: String,
    },
    Kick {
        group: String,
        user: String,
    },
    /// `/msg <user> <text>`: the text is the rest of the line, as typed.
    Msg {
        user: String,
        text: String,
    },
    /// `/g <group> <text>`.
    GroupMsg {
        group: String,
        text: String,
    },
    /// A plain line: goes to the current conversation.
    Say {
        text: String,
    },
    /// Switch the current conversation.
    Open {
        target: Target,
    },
    /// Leave the current conversation (plain lines are then refused).
    Close,
    /// The latest page of a conversation (the current one if `None`).
    History {
        target: Option<Target>,
    },
    /// The page before the last one shown.
    More,
    Quit,
}

/// The usage line of every command, for `/help` and usage errors.
pub const HELP: &[(&str, &str)] = &[
    ("/register <user> <password>", "create an account"),
    ("/login <user> <password>", "log in"),
    ("/logout", "log out (ends the session token)"),
    (
        "/logout-all",
        "log out everywhere (ends every session of yours)",
    ),
    (
        "/passwd <old> <new>",
        "change your password (your other sessions end)",
    ),
    ("/search <prefix>", "find users by name"),
    ("/add <user> [note]", "send a friend request"),
    ("/accept <user>", "accept a friend request"),
    ("/unfriend <user>", "remove a friend"),
    ("/block <user>", "block a user (ends a friendship)"),
    ("/unblock <user>", "lift a block"),
    (
        "/friends",
        "friends, requests and blocks, with online state",
    ),
    ("/groups", "your groups"),
    (
        "/unread",
        "your conversations with unread counts and the last message",
    ),
    (
        "/typing",
        "tell the open conversation you are typing (automatic on a terminal)",
    ),
    (
        "/create [--private] [--full-history] <name>",
        "create a group (private: join by invitation or approval)",
    ),
    ("/join <group-id>", "join a group (a private one: ask to)"),
    ("/invite <user> <group>", "invite a user into your group"),
    (
        "/requests <group>",
        "who asks to join your group, and who is invited",
    ),
    (
        "/approve <group> <user>",
        "let a user who asked join your group",
    ),
    (
        "/reject <user> | <group> <user>",
        "reject a friend request, or a request to join your group",
    ),
    ("/leave <group>", "leave a group"),
    ("/dissolve <group>", "dissolve a group you own"),
    ("/members <group>", "members of a group"),
    ("/kick <group> <user>", "remove a member from a group"),
    ("/msg <user> <text>", "message a friend"),
    ("/g <group> <text>", "message a group"),
    (
        "/open <user>|#<group>",
        "switch conversation: plain lines go there",
    ),
    ("/close", "leave the current conversation"),
    (
        "/history [<user>|#<group>]",
        "latest messages of a conversation",
    ),
    ("/more", "older messages (after /history)"),
    ("/help", "this list"),
    ("/quit", "exit"),
];

fn usage(cmd: &str) -> String {
    HELP.iter()
        .find(|(u, _)| u.split_whitespace().next() == Some(cmd))
        .map_or_else(
            || format!("{cmd}: wrong arguments; see /help"),
            |(u, _)| format!("usage: {u}"),
        )
}

/// Splits off the first whitespace-separated word and the rest of the line.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => {
            // Spacing inside the rest is kept: "/msg bob a  b" sends "a  b".
            (&s[..i], s[i..].trim_start())
        }
        None => (s, ""),
    }
}

fn target(s: &str) -> Target {
    if let Some(g) = s.strip_prefix('#') {
        Target::Group(g.to_string())
    } else {
        Target::User(s.strip_prefix('@').unwrap_or(s).to_string())
    }
}

/// Parses one input line. `Err` carries a usage message in plain words.
///
/// Lines not starting with `/` are [`Command::Say`]; `//text` says `/text`.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Ok(Command::Empty);
    }
    if let Some(text) = line.strip_prefix("//") {
        return Ok(Command::Say {
            text: format!("/{text}"),
        });
    }
    let Some(cmdline) = line.strip_prefix('/') else {
        return Ok(Command::Say {
            text: line.to_string(),
        });
    };
    let (name, rest) = word(cmdline);
    let cmd = format!("/{name}");
    let args: Vec<&str> = rest.split_whitespace().collect();
    let bad = || Err(usage(&cmd));
    // Commands taking exactly one word.
    let one = |f: fn(String) -> Command| match args.as_slice() {
        [a] => Ok(f(a.to_string())),
        _ => bad(),
    };
    let none = |c: Command| {
        if args.is_empty() { Ok(c) } else { bad() }
    };
    match name {
        "help" | "h" | "?" => Ok(Command::Help),
        "quit" | "exit" | "q" => none(Command::Quit),
        "register" | "login" => match args.as_slice() {
            [u, p] => {
                let (user, password) = (u.to_string(), p.to_string());
                Ok(if name == "login" {
                    Command::Login { user, password }
                } else {
                    Command::Register { user, password }
                })
            }
            _ => bad(),
        },
        "logout" => none(Command::Logout),
        "logout-all" => none(Command::LogoutAll),
        "passwd" => match args.as_slice() {
            [o, n] => Ok(Command::Passwd {
                old: o.to_string(),
                new: n.to_string(),
            }),
            _ => bad(),
        },
        "search" => match args.as_slice() {
            [p] => Ok(Command::Search {
                prefix: p.to_string(),
            }),
            [] => Ok(Command::Search {
                prefix: String::new(),
            }),
            _ => bad(),
        },
        "add" | "request" => {
            let (user, note) = word(rest);
            if user.is_empty() {
                return bad();
            }
            Ok(Command::FriendRequest {
                user: user.strip_prefix('@').unwrap_or(user).to_string(),
                note: note.trim().to_string(),
            })
        }
        "accept" => one(|user| Command::Accept { user }),
        "reject" => match args.as_slice() {
            [u] => Ok(Command::Reject {
                user: u.to_string(),
            }),
            [g, u] => Ok(Command::Decide {
                group: g.to_string(),
                user: u.strip_prefix('@').unwrap_or(u).to_string(),
                accept: false,
            }),
            _ => bad(),
        },
        "approve" => match args.as_slice() {
            [g, u] => Ok(Command::Decide {
                group: g.to_string(),
                user: u.strip_prefix('@').unwrap_or(u).to_string(),
                accept: true,
            }),
            _ => bad(),
        },
        "invite" => match args.as_slice() {
            [u, g] => Ok(Command::Invite {
                user: u.strip_prefix('@').unwrap_or(u).to_string(),
                group: g.to_string(),
            }),
            _ => bad(),
        },
        "requests" => one(|group| Command::Requests { group }),
        "unfriend" | "remove" => one(|user| Command::Unfriend { user }),
        "block" => one(|user| Command::Block { user }),
        "unblock" => one(|user| Command::Unblock { user }),
        "friends" => none(Command::Friends),
        "unread" => none(Command::Unread),
        "typing" => none(Command::Typing),
        "groups" => none(Command::Groups),
        "create" => {
            let (mut private, mut full_history) = (false, false);
            let mut name = rest.trim();
            loop {
                let (w, after) = word(name);
                match w {
                    "--private" => private = true,
                    "--full-history" => full_history = true,
                    _ => break,
                }
                name = after.trim();
            }
            if name.is_empty() {
                return bad();
            }
            Ok(Command::Create {
                name: name.to_string(),
                private,
                full_history,
            })
        }
        "join" => one(|group| Command::Join { group }),
        "leave" => one(|group| Command::Leave { group }),
        "dissolve" => one(|group| Command::Dissolve { group }),
        "members" => one(|group| Command::Members { group }),
        "kick" => match args.as_slice() {
            [g, u] => Ok(Command::Kick {
                group: g.to_string(),
                user: u.strip_prefix('@').unwrap_or(u).to_string(),
            }),
            _ => bad(),
        },
        "msg" | "m" | "g" => {
            let (to, text) = word(rest);
            if to.is_empty() || text.trim().is_empty() {
                return bad();
            }
            let text = text.to_string();
            Ok(if name == "g" {
                Command::GroupMsg {
                    group: to.to_string(),
                    text,
                }
            } else {
                Command::Msg {
                    user: to.strip_prefix('@').unwrap_or(to).to_string(),
                    text,
                }
            })
        }
        "open" | "to" => one(|t| Command::Open { target: target(&t) }),
        "close" => none(Command::Close),
        "history" => match args.as_slice() {
            [] => Ok(Command::History { target: None }),
            [t] => Ok(Command::History {
                target: Some(target(t)),
            }),
            _ => bad(),
        },
        "more" => none(Command::More),
        _ => Err(format!("unknown command /{name}; try /help")),
    }
}

/// Options of `ringchat chat`.
pub struct ChatOptions {
    pub server: String,
    /// `user:password` to log in with before reading commands.
    pub login: Option<String>,
}

/// Runs the client until `/quit` or end of input; returns the exit code
/// (non-zero if a command failed, or if the first connection failed).
pub fn run(opts: ChatOptions) -> i32 {
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if interactive {
        run_interactive(opts)
    } else {
        let out = ui::Stdout;
        let (tx, rx) = crossbeam_channel::bounded::<session::Input>(0);
        let engine = std::thread::spawn(move || session::Engine::start(opts, out, false, rx));
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
            if tx.send(session::Input::Line(line, ack_tx)).is_err() {
                break;
            }
            match ack_rx.recv() {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        drop(tx);
        engine.join().unwrap_or(1)
    }
}

/// Reports every edit of the input line to the engine (rustyline asks the
/// hinter on each keystroke), which turns them into typing notifications.
/// Never blocks the editor: a keystroke the busy engine cannot take now is
/// dropped (the next one will do).
struct Keys(crossbeam_channel::Sender<session::Input>);

impl rustyline::completion::Completer for Keys {
    type Candidate = String;
}
impl rustyline::hint::Hinter for Keys {
    type Hint = String;
    fn hint(&self, line: &str, _pos: usize, _ctx: &rustyline::Context<'_>) -> Option<String> {
        if !line.is_empty() && !line.starts_with('/') {
            let _ = self.0.try_send(session::Input::Keystroke);
        }
        None
    }
}
impl rustyline::highlight::Highlighter for Keys {}
impl rustyline::validate::Validator for Keys {}
impl rustyline::Helper for Keys {}

fn run_interactive(opts: ChatOptions) -> i32 {
    use rustyline::error::ReadlineError;
    let mut rl = match rustyline::Editor::<Keys, rustyline::history::DefaultHistory>::new() {
        Ok(rl) => rl,
        Err(e) => {
            eprintln!("ringchat: cannot set up the terminal: {e}");
            return 1;
        }
    };
    let printer = match rl.create_external_printer() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ringchat: cannot set up the terminal: {e}");
            return 1;
        }
    };
    let out = ui::Printer(printer);
    let (tx, rx) = crossbeam_channel::bounded::<session::Input>(0);
    rl.set_helper(Some(Keys(tx.clone())));
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let engine = std::thread::spawn(move || {
        session::Engine::start_notify(opts, out, true, rx, Some(ready_tx))
    });
    // The engine connects (and logs in with --login) before the first prompt.
    let mut prompt = match ready_rx.recv() {
        Ok(p) => p,
        Err(_) => return engine.join().unwrap_or(1),
    };
    loop {
        match rl.readline(&prompt) {
            Ok(line) => {
                let t = line.trim_start();
                // Passwords stay out of the up-arrow history.
                if !t.is_empty()
                    && !t.starts_with("/login")
                    && !t.starts_with("/register")
                    && !t.starts_with("/passwd")
                {
                    let _ = rl.add_history_entry(line.as_str());
                }
                let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
                if tx.send(session::Input::Line(line, ack_tx)).is_err() {
                    break;
                }
                match ack_rx.recv() {
                    Ok(Some(p)) => prompt = p,
                    _ => break,
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(_) => break,
        }
    }
    drop(tx);
    engine.join().unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Command {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn session_commands() {
        assert_eq!(p("/logout-all"), Command::LogoutAll);
        assert_eq!(
            p("/passwd old-one new-one"),
            Command::Passwd {
                old: "old-one".into(),
                new: "new-one".into()
            }
        );
        assert_eq!(
            parse("/passwd only-one"),
            Err("usage: /passwd <old> <new>".into())
        );
        assert!(parse("/logout-all now").is_err());
    }

    #[test]
    fn msg_keeps_the_whole_line() {
        assert_eq!(
            p("/msg bob héllo  wörld ✓ "),
            Command::Msg {
                user: "bob".into(),
                text: "héllo  wörld ✓ ".into()
            }
        );
        assert_eq!(
            p("/msg @bob hi"),
            Command::Msg {
                user: "bob".into(),
                text: "hi".into()
            }
        );
        assert_eq!(
            p("/g devs ship it\r\n"),
            Command::GroupMsg {
                group: "devs".into(),
                text: "ship it".into()
            }
        );
        assert!(parse("/msg bob").is_err());
        assert!(parse("/msg bob   ").is_err());
        assert!(parse("/g").is_err());
    }

    #[test]
    fn plain_lines_are_said() {
        assert_eq!(
            p("  hello there"),
            Command::Say {
                text: "  hello there".into()
            }
        );
        assert_eq!(
            p("//me waves"),
            Command::Say {
                text: "/me waves".into()
            }
        );
        assert_eq!(p("   "), Command::Empty);
        assert_eq!(p(""), Command::Empty);
    }

    #[test]
    fn account_and_friend_commands() {
        assert_eq!(
            p("/login alice secret123"),
            Command::Login {
                user: "alice".into(),
                password: "secret123".into()
            }
        );
        assert_eq!(
            p("/register alice secret123"),
            Command::Register {
                user: "alice".into(),
                password: "secret123".into()
            }
        );
        assert!(parse("/login alice").is_err());
        assert_eq!(
            p("/add bob let's talk"),
            Command::FriendRequest {
                user: "bob".into(),
                note: "let's talk".into()
            }
        );
        assert_eq!(
            p("/add bob"),
            Command::FriendRequest {
                user: "bob".into(),
                note: String::new()
            }
        );
        assert_eq!(p("/accept bob"), Command::Accept { user: "bob".into() });
        assert_eq!(p("/reject bob"), Command::Reject { user: "bob".into() });
        assert_eq!(p("/remove bob"), Command::Unfriend { user: "bob".into() });
        assert_eq!(p("/block bob"), Command::Block { user: "bob".into() });
        assert_eq!(p("/unblock bob"), Command::Unblock { user: "bob".into() });
        assert!(parse("/accept").is_err());
        assert!(parse("/accept a b").is_err());
        assert_eq!(p("/friends"), Command::Friends);
        assert_eq!(
            p("/search al"),
            Command::Search {
                prefix: "al".into()
            }
        );
        assert_eq!(p("/logout"), Command::Logout);
        assert_eq!(p("/quit"), Command::Quit);
    }

    #[test]
    fn group_and_conversation_commands() {
        assert_eq!(
            p("/create rust fans"),
            Command::Create {
                name: "rust fans".into(),
                private: false,
                full_history: false,
            }
        );
        assert_eq!(
            p("/create --private --full-history inner circle"),
            Command::Create {
                name: "inner circle".into(),
                private: true,
                full_history: true,
            }
        );
        assert!(parse("/create --private").is_err());
        assert_eq!(
            p("/invite @bob devs"),
            Command::Invite {
                user: "bob".into(),
                group: "devs".into()
            }
        );
        assert_eq!(
            p("/requests devs"),
            Command::Requests {
                group: "devs".into()
            }
        );
        assert_eq!(
            p("/approve devs bob"),
            Command::Decide {
                group: "devs".into(),
                user: "bob".into(),
                accept: true
            }
        );
        assert_eq!(
            p("/reject devs bob"),
            Command::Decide {
                group: "devs".into(),
                user: "bob".into(),
                accept: false
            }
        );
        assert!(parse("/approve bob").is_err());
        assert_eq!(p("/join 12"), Command::Join { group: "12".into() });
        assert_eq!(
            p("/kick devs @bob"),
            Command::Kick {
                group: "devs".into(),
                user: "bob".into()
            }
        );
        assert_eq!(
            p("/open #devs"),
            Command::Open {
                target: Target::Group("devs".into())
            }
        );
        assert_eq!(
            p("/open @bob"),
            Command::Open {
                target: Target::User("bob".into())
            }
        );
        assert_eq!(p("/history"), Command::History { target: None });
        assert_eq!(
            p("/history bob"),
            Command::History {
                target: Some(Target::User("bob".into()))
            }
        );
        assert_eq!(p("/more"), Command::More);
    }

    #[test]
    fn unknown_and_misused_commands_explain_themselves() {
        assert_eq!(
            parse("/frobnicate x").unwrap_err(),
            "unknown command /frobnicate; try /help"
        );
        assert_eq!(
            parse("/kick devs").unwrap_err(),
            "usage: /kick <group> <user>"
        );
        assert_eq!(parse("/friends now").unwrap_err(), "usage: /friends");
    }
}

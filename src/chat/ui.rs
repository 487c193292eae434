//! What `ringchat chat` prints, and where.
//!
//! Two styles: `plain` (stdin is not a terminal) prints one stable,
//! space-separated line per event or result, documented in docs/CHAT.md so
//! scripts and tests can grep it; `pretty` (a terminal) prints the same facts
//! for people. Free text (message bodies, notes) always comes last on a line,
//! with newlines escaped as `\n` so one event stays one line.

use crate::client::{ClientError, ErrorCode};
use crate::wire::error_name;
use std::io::Write;

/// A sink for whole lines.
pub trait Out: Send + 'static {
    fn line(&mut self, s: &str);
}

/// Plain stdout, flushed per line (a pipe would otherwise hold lines back).
pub struct Stdout;

impl Out for Stdout {
    fn line(&mut self, s: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    }
}

/// Prints above the line being edited (rustyline's external printer), so
/// incoming events never corrupt what the user is typing.
pub struct Printer<P>(pub P);

impl<P: rustyline::ExternalPrinter + Send + 'static> Out for Printer<P> {
    fn line(&mut self, s: &str) {
        let _ = self.0.print(format!("{s}\n"));
    }
}

/// Collects lines; for unit tests.
#[derive(Default, Clone)]
pub struct Collect(pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Out for Collect {
    fn line(&mut self, s: &str) {
        self.0.lock().unwrap().push(s.to_string());
    }
}

/// Keeps free text on one line: `\` → `\\`, newline → `\n`, CR → `\r`.
pub fn one_line(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            c => o.push(c),
        }
    }
    o
}

/// An error as shown: a stable code word and plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub code: String,
    pub words: String,
}

impl Shown {
    pub fn new(code: &str, words: impl Into<String>) -> Shown {
        Shown {
            code: code.to_string(),
            words: words.into(),
        }
    }
}

impl From<&ClientError> for Shown {
    fn from(e: &ClientError) -> Shown {
        match e {
            ClientError::Server { code, .. } => {
                // Our own sentence per code: the server's message is for
                // logs and may be terse or change.
                Shown::new(error_name(*code), plain_words(*code))
            }
            ClientError::Io(io) => Shown::new("Offline", format!("cannot reach the server ({io})")),
            ClientError::Closed => Shown::new("Offline", "the connection to the server is closed"),
            ClientError::Timeout => Shown::new("Timeout", "the server did not answer in time"),
            ClientError::Protocol(m) => Shown::new(
                "Protocol",
                format!("the server sent something unexpected: {m}"),
            ),
        }
    }
}

/// What a server error code means, for a person.
pub fn plain_words(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "the request was incomplete or out of range",
        ErrorCode::UnsupportedVersion => "the server speaks another protocol version",
        ErrorCode::FrameTooLarge => "that was too large for the server",
        ErrorCode::Malformed | ErrorCode::UnknownBody => "the server could not read the request",
        ErrorCode::HelloRequired => "the handshake was skipped",
        ErrorCode::NotLoggedIn => "you are not logged in; use /login <user> <password>",
        ErrorCode::AlreadyLoggedIn => "you are already logged in; /logout first",
        ErrorCode::UsernameTaken => "that username is taken",
        ErrorCode::InvalidUsername => "usernames are 1-32 letters, digits, '_', '.' or '-'",
        ErrorCode::InvalidPassword => "passwords are 8 to 128 bytes long",
        ErrorCode::BadCredentials => "wrong username or password",
        ErrorCode::BadToken => "the session has expired; log in again",
        ErrorCode::NoSuchUser => "there is no such user",
        ErrorCode::NotFriends => "you are not friends with that user",
        ErrorCode::Blocked => "a block stands between you and that user",
        ErrorCode::AlreadyFriends => "you are already friends",
        ErrorCode::NoSuchRequest => "there is no friend request from that user",
        ErrorCode::NoSuchGroup => "there is no such group",
        ErrorCode::NotMember => "not a member of that group",
        ErrorCode::AlreadyMember => "you are already a member of that group",
        ErrorCode::NotAllowed => "your role in the group does not allow that",
        ErrorCode::MessageTooLarge => "the message is too long",
        ErrorCode::RateLimited => "too many requests; wait a moment",
        ErrorCode::Internal => "the server had a storage problem; try again",
        ErrorCode::ShuttingDown => "the server is shutting down",
        ErrorCode::IdleTimeout => "the connection was idle too long",
        ErrorCode::SelfTarget => "you cannot do that to yourself",
        ErrorCode::InvalidName => "group names are 1 to 64 bytes",
        ErrorCode::NameTaken => "you already have a group with that name",
        ErrorCode::AccountDisabled => "an operator disabled this account",
        ErrorCode::PendingApproval => {
            "the group is private: your request to join waits for an owner or admin"
        }
        _ => "the server refused",
    }
}

/// Formats lines in the chosen style.
#[derive(Clone, Copy)]
pub struct Style {
    pub pretty: bool,
}

impl Style {
    /// A chat message. `conv` is `@peer` or `#group-id`; `group_name` is
    /// used by the pretty style only.
    pub fn msg(
        &self,
        kind: &str,
        conv: &str,
        label: &str,
        seq: u64,
        from: &str,
        body: &str,
    ) -> String {
        if self.pretty {
            let tag = if kind == "history" { "  " } else { "" };
            format!("{tag}[{label}] {from}: {body}")
        } else {
            format!("{kind} {conv} {seq} {from} {}", one_line(body))
        }
    }

    pub fn ok(&self, what: &str) -> String {
        if self.pretty {
            format!("ok: {what}")
        } else {
            format!("ok {what}")
        }
    }

    pub fn error(&self, e: &Shown) -> String {
        if self.pretty {
            format!("error: {} ({})", e.words, e.code)
        } else {
            format!("error {}: {}", e.code, e.words)
        }
    }

    /// `state` is one word: `reconnecting`, `resumed`, `connected`, ...
    pub fn status(&self, state: &str, words: &str) -> String {
        if self.pretty {
            format!("-- {words}")
        } else {
            format!("status {state}")
        }
    }

    pub fn presence(&self, user: &str, online: bool) -> String {
        let st = if online { "online" } else { "offline" };
        if self.pretty {
            format!("* {user} is {st}")
        } else {
            format!("presence {user} {st}")
        }
    }

    /// `kind`: `request`, `accepted`, `rejected`, `removed`.
    pub fn friend(&self, kind: &str, user: &str, note: &str) -> String {
        if self.pretty {
            match kind {
                "request" if note.is_empty() => {
                    format!("* {user} wants to be friends (/accept {user} or /reject {user})")
                }
                "request" => format!(
                    "* {user} wants to be friends: \"{note}\" (/accept {user} or /reject {user})"
                ),
                "accepted" => format!("* {user} accepted your friend request"),
                "rejected" => format!("* {user} rejected your friend request"),
                _ => format!("* {user} is no longer your friend"),
            }
        } else if note.is_empty() {
            format!("friend-{kind} {user}")
        } else {
            format!("friend-{kind} {user} {}", one_line(note))
        }
    }

    /// An invitation to me: the group's name is all I know of it.
    pub fn invited(&self, gid: u64, gname: &str) -> String {
        if self.pretty {
            format!("* you are invited to #{gname} (/join {gid})")
        } else {
            format!("group-invite {gid} {}", one_line(gname))
        }
    }

    /// `what`: `joined`, `left`, `removed`, `role-changed`, `dissolved`,
    /// `invited`, `asks-to-join`, `join-rejected`.
    pub fn group_event(
        &self,
        gid: u64,
        gname: &str,
        what: &str,
        user: &str,
        actor: &str,
    ) -> String {
        if self.pretty {
            match what {
                "dissolved" => format!("* group #{gname} was dissolved"),
                "removed" => format!("* {actor} removed {user} from #{gname}"),
                "role-changed" => format!("* {actor} changed the role of {user} in #{gname}"),
                "invited" => format!("* {actor} invited {user} to #{gname} (/join {gid})"),
                "asks-to-join" => format!(
                    "* {user} asks to join #{gname} (/approve {gid} {user} or /reject {gid} {user})"
                ),
                "join-rejected" => format!("* {actor} rejected {user}'s request to join #{gname}"),
                _ => format!("* {user} {what} #{gname}"),
            }
        } else {
            match what {
                "dissolved" => format!("group-event {gid} dissolved"),
                "removed" | "role-changed" | "invited" | "join-rejected" => {
                    format!("group-event {gid} {what} {user} by {actor}")
                }
                _ => format!("group-event {gid} {what} {user}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_are_stable() {
        let s = Style { pretty: false };
        assert_eq!(
            s.msg("msg", "@bob", "bob", 3, "bob", "hi\nthere \\o/"),
            "msg @bob 3 bob hi\\nthere \\\\o/"
        );
        assert_eq!(s.presence("bob", true), "presence bob online");
        assert_eq!(s.friend("request", "bob", ""), "friend-request bob");
        assert_eq!(s.friend("request", "bob", "hi"), "friend-request bob hi");
        assert_eq!(
            s.group_event(4, "devs", "removed", "bob", "alice"),
            "group-event 4 removed bob by alice"
        );
        assert_eq!(
            s.group_event(4, "devs", "joined", "bob", "bob"),
            "group-event 4 joined bob"
        );
        assert_eq!(s.status("resumed", "back"), "status resumed");
    }

    #[test]
    fn server_errors_in_plain_words() {
        let e = ClientError::Server {
            code: ErrorCode::NotFriends,
            message: "nf".into(),
        };
        let s = Style { pretty: false };
        assert_eq!(
            s.error(&Shown::from(&e)),
            "error NotFriends: you are not friends with that user"
        );
        let p = Style { pretty: true };
        assert_eq!(
            p.error(&Shown::from(&ClientError::Timeout)),
            "error: the server did not answer in time (Timeout)"
        );
    }
}

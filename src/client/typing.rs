//! Client-side typing state, sans IO (times in milliseconds from the caller).
//!
//! [`TypingOut`] decides when a client tells the server the user is typing:
//! once when they start, then at most every [`RENEW_MS`] while they keep
//! typing, and one "stopped" when they send or go quiet (the server also
//! rate-limits per user). [`TypingIn`] tracks who is shown as typing: an
//! event shows a user for [`SHOW_MS`] unless renewed or stopped.

use crate::model::{ConvId, UserId};
use std::collections::HashMap;

/// A typing notification is renewed at most this often per conversation.
pub const RENEW_MS: u64 = 3_000;
/// Someone is shown as typing this long after their last notification.
pub const SHOW_MS: u64 = 5_000;

/// What to tell the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    Typing(ConvId),
    Stopped(ConvId),
}

/// The local user's typing, at most one conversation at a time.
#[derive(Debug, Default)]
pub struct TypingOut {
    /// The conversation last announced as typing, and when.
    active: Option<(ConvId, u64)>,
}

impl TypingOut {
    /// The user typed a key in `conv` at `now`.
    pub fn keystroke(&mut self, conv: ConvId, now: u64) -> Vec<Notify> {
        let mut out = Vec::new();
        match self.active {
            Some((c, at)) if c == conv && now.saturating_sub(at) < RENEW_MS => return out,
            Some((c, _)) if c == conv => {}
            Some((c, _)) => out.push(Notify::Stopped(c)),
            None => {}
        }
        self.active = Some((conv, now));
        out.push(Notify::Typing(conv));
        out
    }

    /// The user sent (or cleared) what they were typing.
    pub fn done(&mut self) -> Option<Notify> {
        self.active.take().map(|(c, _)| Notify::Stopped(c))
    }

    /// Called now and then: a user idle for `SHOW_MS` stopped typing (the
    /// others' clients would stop showing it anyway; this says so at once).
    pub fn tick(&mut self, now: u64) -> Option<Notify> {
        match self.active {
            Some((_, at)) if now.saturating_sub(at) >= SHOW_MS => self.done(),
            _ => None,
        }
    }
}

/// Who is typing where, as shown to the local user.
#[derive(Debug, Default)]
pub struct TypingIn {
    /// (conversation, user) -> (name, shown until).
    shown: HashMap<(ConvId, UserId), (String, u64)>,
}

impl TypingIn {
    /// A `TypingEvent` arrived at `now`.
    pub fn event(&mut self, conv: ConvId, user: UserId, name: &str, stopped: bool, now: u64) {
        if stopped {
            self.shown.remove(&(conv, user));
        } else {
            self.shown
                .insert((conv, user), (name.to_string(), now + SHOW_MS));
        }
    }

    /// `user` sent a message in `conv`: they are no longer typing it.
    pub fn message(&mut self, conv: ConvId, user: UserId) {
        self.shown.remove(&(conv, user));
    }

    /// Names typing in `conv` at `now`, sorted (expired ones are dropped).
    pub fn typing_in(&mut self, conv: ConvId, now: u64) -> Vec<String> {
        self.shown.retain(|_, (_, until)| *until > now);
        let mut v: Vec<String> = self
            .shown
            .iter()
            .filter(|((c, _), _)| *c == conv)
            .map(|(_, (n, _))| n.clone())
            .collect();
        v.sort();
        v
    }

    /// "alice is typing…", "alice and bob are typing…", or empty.
    pub fn status(&mut self, conv: ConvId, now: u64) -> String {
        let names = self.typing_in(conv, now);
        match names.as_slice() {
            [] => String::new(),
            [one] => format!("{one} is typing…"),
            [a, b] => format!("{a} and {b} are typing…"),
            [a, rest @ ..] => format!("{a} and {} others are typing…", rest.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_is_announced_once_then_renewed_at_most_every_few_seconds() {
        let mut t = TypingOut::default();
        assert_eq!(t.keystroke(7, 1000), vec![Notify::Typing(7)]);
        assert!(t.keystroke(7, 1500).is_empty());
        assert!(t.keystroke(7, 1000 + RENEW_MS - 1).is_empty());
        assert_eq!(t.keystroke(7, 1000 + RENEW_MS), vec![Notify::Typing(7)]);
        // Switching conversations stops the first.
        assert_eq!(
            t.keystroke(9, 5000),
            vec![Notify::Stopped(7), Notify::Typing(9)]
        );
        assert_eq!(t.done(), Some(Notify::Stopped(9)));
        assert_eq!(t.done(), None, "stopped once");
        assert_eq!(t.keystroke(9, 5001), vec![Notify::Typing(9)]);
    }

    #[test]
    fn going_quiet_stops_typing() {
        let mut t = TypingOut::default();
        t.keystroke(7, 0);
        assert_eq!(t.tick(SHOW_MS - 1), None);
        assert_eq!(t.tick(SHOW_MS), Some(Notify::Stopped(7)));
        assert_eq!(t.tick(SHOW_MS * 2), None);
    }

    #[test]
    fn others_are_shown_until_stopped_expired_or_their_message_arrives() {
        let mut t = TypingIn::default();
        t.event(7, 1, "alice", false, 0);
        assert_eq!(t.status(7, 10), "alice is typing…");
        assert_eq!(t.status(8, 10), "", "per conversation");
        t.event(7, 2, "bob", false, 100);
        assert_eq!(t.status(7, 200), "alice and bob are typing…");
        t.event(7, 3, "carol", false, 100);
        assert_eq!(t.status(7, 200), "alice and 2 others are typing…");
        t.event(7, 3, "carol", true, 300);
        t.message(7, 2);
        assert_eq!(t.status(7, 400), "alice is typing…");
        assert_eq!(t.status(7, SHOW_MS), "", "expired");
        t.event(7, 1, "alice", false, SHOW_MS);
        assert_eq!(t.status(7, SHOW_MS + 1), "alice is typing…", "renewed");
    }
}

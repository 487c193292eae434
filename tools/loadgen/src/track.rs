//! Receiver-side bookkeeping of one device (connection) in one
//! conversation, sans I/O so it can be unit-tested: what a correct client
//! *shows*, and which arrivals are duplicates, gaps or out of order.
//!
//! The client rule (docs/PROTOCOL.md, issue 10): a device shows a
//! conversation in seq order and its cursor `held` is the highest
//! *contiguous* seq it has shown; that is what it acks and what it sends as
//! `since` on a resume.
//!
//! - An arrival at `held + 1` is shown, then everything held back just
//!   above it.
//! - An arrival above a gap (`seq > held + 1`) is held back, not shown, and
//!   the device asks for the gap (`History` before the lowest held-back
//!   seq). The reply fills the gap and the held-back messages are shown in
//!   order. Only when a reply brings nothing new for the gap does the device
//!   give up on it: it shows what it holds, and the skipped seqs, if they
//!   ever arrive, are shown **out of order** (`out_of_order`); if they never
//!   arrive they are `lost` (counted by the sender-side ledger). A gap still
//!   open when the connection is lost is filled by the resume (`since` =
//!   `held`).
//! - An arrival at or below `held` (or already held back) is dropped, never
//!   shown twice. It is *expected again* if the device asked for it (a
//!   `History` reply, or the late push a fill stood in for), if it is the
//!   device's own message (its SendOk and the catch-up of its own sends), if
//!   it was held back when the connection was lost (the resume replays
//!   everything after `held`), or if the session was a fresh `Login` (the
//!   server replays from its acked cursor, which may lag `held`). Otherwise
//!   it is a *duplicate arrival*: the protocol lets the server push, after a
//!   resume, what the catch-up already sent, and tells clients to drop it,
//!   so it is counted but is not a failure.
//!
//! A message is **duplicated** only when a device *shows* it twice, which
//! the rule above prevents for one seq; what remains is one client message
//! stored under two seqs (a resend the server failed to dedup), counted by
//! [`Ledger`] through the message's identity (its send index, in the body).

use ahash::AHashMap;
use ringchat::model::{ConvId, Seq};
use std::collections::{BTreeMap, BTreeSet};

/// Where an arrival came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A push (live or catch-up) on the connection.
    Push,
    /// A `History` reply the device asked for to fill a gap.
    Fill,
    /// The device's own message: its SendOk, or its own send replayed.
    Own,
}

/// What one arrival did.
#[derive(Debug, PartialEq, Eq)]
pub struct Effect<T> {
    /// Newly shown, in seq order (the arrival and/or released held-back ones).
    pub shown: Vec<(Seq, T)>,
    /// Dropped: seen before, and not expected again (a duplicate arrival).
    pub duplicate: bool,
    /// Dropped: seen before, legitimately sent again (fill, own, resume).
    pub again: bool,
    /// Shown after a higher seq (its gap had been given up on).
    pub out_of_order: bool,
    /// The arrival opened a gap (seq > held + 1) on a push.
    pub gap: bool,
    /// Ask for `History { before_seq, limit }` to fill the gap.
    pub fill: Option<(Seq, u32)>,
}

impl<T> Default for Effect<T> {
    fn default() -> Self {
        Effect {
            shown: Vec::new(),
            duplicate: false,
            again: false,
            out_of_order: false,
            gap: false,
            fill: None,
        }
    }
}

/// Most messages one `History` request may ask for (server maximum).
pub const FILL_PAGE: u32 = 200;

/// One device's view of one conversation.
#[derive(Debug)]
pub struct View<T> {
    /// Whether `held` means anything yet (a conversation seen for the first
    /// time starts contiguous at its first arrival unless a base was set).
    known: bool,
    held: Seq,
    ahead: BTreeMap<Seq, T>,
    /// Seqs that may arrive again without being duplicates (held back at a
    /// resume; replayed by it).
    again_ok: BTreeSet<Seq>,
    /// After a fresh Login, anything at or below this may be replayed.
    relogin_floor: Seq,
    /// Gaps given up on: an arrival of one of these is shown out of order.
    skipped: BTreeSet<Seq>,
    /// A fill request is outstanding; `filled` counts its new arrivals.
    filling: bool,
    filled: u32,
}

impl<T> Default for View<T> {
    fn default() -> Self {
        View {
            known: false,
            held: 0,
            ahead: BTreeMap::new(),
            again_ok: BTreeSet::new(),
            relogin_floor: 0,
            skipped: BTreeSet::new(),
            filling: false,
            filled: 0,
        }
    }
}

impl<T> View<T> {
    /// The highest contiguous seq shown (`since` / ack), if known.
    pub fn held(&self) -> Option<Seq> {
        self.known.then_some(self.held)
    }

    /// Messages received but not shown (waiting above a gap).
    pub fn held_back(&self) -> usize {
        self.ahead.len()
    }

    /// Everything up to `base` predates the run: the device holds it.
    pub fn set_base(&mut self, base: Seq) {
        self.known = true;
        self.held = base;
        self.ahead.clear();
        self.again_ok.clear();
        self.skipped.clear();
        self.filling = false;
    }

    /// The connection was lost; the next session resumes with `since` =
    /// `held`, so what is held back will be replayed.
    pub fn on_resume(&mut self) {
        self.again_ok = self.ahead.keys().copied().collect();
        self.filling = false;
    }

    /// The next session is a fresh Login (replay from the server's cursor).
    pub fn on_relogin(&mut self) {
        self.on_resume();
        self.relogin_floor = self.held;
    }

    fn fill_request(&self) -> Option<(Seq, u32)> {
        let (&first, _) = self.ahead.first_key_value()?;
        let want = first - self.held - 1;
        Some((first, want.min(FILL_PAGE as u64) as u32))
    }

    fn release(&mut self, shown: &mut Vec<(Seq, T)>) {
        while let Some(e) = self.ahead.first_entry() {
            if *e.key() != self.held + 1 {
                break;
            }
            let (s, v) = e.remove_entry();
            self.held = s;
            shown.push((s, v));
        }
    }

    /// One arrival of `seq` carrying `item`.
    pub fn arrive(&mut self, seq: Seq, item: T, src: Source) -> Effect<T> {
        let mut fx = Effect::default();
        if !self.known {
            self.known = true;
            self.held = seq.saturating_sub(1);
        }
        if seq <= self.held || self.ahead.contains_key(&seq) {
            if self.skipped.remove(&seq) {
                fx.out_of_order = true;
                fx.shown.push((seq, item));
            } else if src != Source::Push || self.again_ok.remove(&seq) || seq <= self.relogin_floor
            {
                fx.again = true;
            } else {
                fx.duplicate = true;
            }
            return fx;
        }
        if src == Source::Fill {
            if self.filling {
                self.filled += 1;
            }
            // The push it stood in for may still come (late): not a duplicate.
            self.again_ok.insert(seq);
        }
        if seq == self.held + 1 {
            self.held = seq;
            fx.shown.push((seq, item));
            self.release(&mut fx.shown);
            return fx;
        }
        self.ahead.insert(seq, item);
        if src == Source::Push {
            fx.gap = true;
        }
        if !self.filling {
            self.filling = true;
            self.filled = 0;
            fx.fill = self.fill_request();
        }
        fx
    }

    /// Forgets an outstanding fill request without an answer (the caller
    /// did not send it: during a catch-up the replay fills gaps itself).
    pub fn cancel_fill(&mut self) {
        self.filling = false;
    }

    /// Asks for the gap now, if there is one and no request is outstanding
    /// (at the end of a catch-up).
    pub fn fill_now(&mut self) -> Option<(Seq, u32)> {
        if self.filling || self.ahead.is_empty() {
            return None;
        }
        self.filling = true;
        self.filled = 0;
        self.fill_request()
    }

    /// The reply to the outstanding fill request was processed (`ok`:
    /// false if it was an error). Returns what to show now and the next
    /// fill request, if the gap is still open but the reply made progress.
    pub fn fill_done(&mut self, ok: bool) -> Effect<T> {
        let mut fx = Effect::default();
        self.filling = false;
        if self.ahead.is_empty() {
            return fx;
        }
        if !ok {
            // Try again on the next arrival or at the resume.
            return fx;
        }
        if self.filled > 0 {
            self.filling = true;
            self.filled = 0;
            fx.fill = self.fill_request();
            return fx;
        }
        // The server has nothing for the gap: show what is held back.
        let first = *self.ahead.keys().next().expect("not empty");
        self.skipped.extend(self.held + 1..first);
        self.held = first - 1;
        self.release(&mut fx.shown);
        if !self.ahead.is_empty() {
            self.filling = true;
            self.filled = 0;
            fx.fill = self.fill_request();
        }
        fx
    }
}

/// Delivery bookkeeping for one `(conv, seq)` of this run.
#[derive(Default, Clone, Copy, Debug)]
pub struct Entry {
    pub expected: u32,
    /// Recipient devices that showed it.
    pub delivered: u32,
    pub acked: bool,
}

/// A worker's delivery truth: every `(conv, seq)` acknowledged to a sender,
/// how many recipient devices must show it and how many did; and which
/// message (its send index, carried in the body) each device showed under
/// which seq, so that a
/// message stored twice (a resend the server failed to dedup: two seqs, one
/// client message) counts as duplicated although each seq is shown once.
/// A resend the server dedups gets the original seq back: one entry, no
/// duplicate.
#[derive(Default)]
pub struct Ledger {
    pub entries: AHashMap<(ConvId, Seq), Entry>,
    shown_ids: AHashMap<(u32, u64), Seq>,
    /// Showings of a message under a second seq.
    pub id_duplicates: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub expected: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unacked_delivered: u64,
}

impl Ledger {
    /// A SendOk for `(conv, seq)`; false if that seq was already acked.
    pub fn acked(&mut self, conv: ConvId, seq: Seq, expected: u32) -> bool {
        let e = self.entries.entry((conv, seq)).or_default();
        e.expected = expected;
        !std::mem::replace(&mut e.acked, true)
    }

    /// Device `dev` showed `(conv, seq)`, the sender's message `id` (unique
    /// per worker and run; 0 = unknown).
    pub fn shown(&mut self, dev: u32, conv: ConvId, seq: Seq, id: u64, expected: u32) {
        let e = self.entries.entry((conv, seq)).or_default();
        e.expected = expected;
        e.delivered += 1;
        if id != 0 {
            match self.shown_ids.entry((dev, id)) {
                std::collections::hash_map::Entry::Occupied(o) => {
                    if *o.get() != seq {
                        self.id_duplicates += 1;
                    }
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(seq);
                }
            }
        }
    }

    /// Some acked message still misses a recipient.
    pub fn undelivered(&self) -> bool {
        self.entries
            .values()
            .any(|e| e.acked && e.delivered < e.expected)
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            duplicated: self.id_duplicates,
            ..Totals::default()
        };
        for e in self.entries.values() {
            if e.acked {
                t.expected += e.expected as u64;
                t.lost += e.expected.saturating_sub(e.delivered) as u64;
            } else {
                t.unacked_delivered += 1;
            }
            t.duplicated += e.delivered.saturating_sub(e.expected) as u64;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs<T>(fx: &Effect<T>) -> Vec<Seq> {
        fx.shown.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn in_order_is_shown_at_once() {
        let mut v = View::<()>::default();
        v.set_base(10);
        for s in 11..=13 {
            let fx = v.arrive(s, (), Source::Push);
            assert_eq!(seqs(&fx), vec![s]);
            assert!(!fx.duplicate && !fx.gap && fx.fill.is_none());
        }
        assert_eq!(v.held(), Some(13));
    }

    #[test]
    fn gap_is_held_back_and_filled_in_order() {
        let mut v = View::<u32>::default();
        v.set_base(0);
        assert_eq!(seqs(&v.arrive(1, 1, Source::Push)), vec![1]);
        // 2 and 3 are missing: 4 and 5 wait, the cursor stays at 1.
        let fx = v.arrive(4, 4, Source::Push);
        assert!(fx.gap && fx.shown.is_empty());
        assert_eq!(fx.fill, Some((4, 2)));
        let fx = v.arrive(5, 5, Source::Push);
        assert!(fx.fill.is_none(), "one fill request at a time");
        assert_eq!(v.held(), Some(1));
        // The History reply brings 2 and 3: everything is shown in order.
        assert_eq!(seqs(&v.arrive(2, 2, Source::Fill)), vec![2]);
        let fx = v.arrive(3, 3, Source::Fill);
        assert_eq!(seqs(&fx), vec![3, 4, 5]);
        assert!(!fx.out_of_order);
        let fx = v.fill_done(true);
        assert!(fx.shown.is_empty() && fx.fill.is_none());
        assert_eq!(v.held(), Some(5));
        // The late push of a filled seq is expected once, not shown again;
        // a second copy is a duplicate arrival.
        let fx = v.arrive(3, 3, Source::Push);
        assert!(fx.again && fx.shown.is_empty());
        assert!(v.arrive(3, 3, Source::Push).duplicate);
        assert!(v.arrive(4, 4, Source::Push).duplicate);
    }

    #[test]
    fn late_arrival_before_the_fill_reply_is_not_out_of_order() {
        let mut v = View::<()>::default();
        v.set_base(0);
        v.arrive(2, (), Source::Push);
        let fx = v.arrive(1, (), Source::Push);
        assert_eq!(seqs(&fx), vec![1, 2]);
        assert!(!fx.out_of_order && !fx.duplicate);
        // The fill reply then repeats 1: asked for, so not a duplicate.
        let fx = v.arrive(1, (), Source::Fill);
        assert!(fx.again && !fx.duplicate);
        assert!(v.fill_done(true).shown.is_empty());
    }

    #[test]
    fn late_push_of_a_filled_seq_is_not_a_duplicate() {
        let mut v = View::<()>::default();
        v.set_base(0);
        v.arrive(2, (), Source::Push);
        assert_eq!(seqs(&v.arrive(1, (), Source::Fill)), vec![1, 2]);
        v.fill_done(true);
        // The push of 1 the fill stood in for comes late: dropped, expected.
        let fx = v.arrive(1, (), Source::Push);
        assert!(fx.again && !fx.duplicate && fx.shown.is_empty());
        // A third copy is not.
        assert!(v.arrive(1, (), Source::Push).duplicate);
    }

    #[test]
    fn gap_during_catch_up_is_asked_for_at_its_end() {
        let mut v = View::<()>::default();
        v.set_base(0);
        // The device's own SendOk for seq 3 overtakes the replay of 1..2.
        let fx = v.arrive(3, (), Source::Own);
        assert!(fx.fill.is_some() && !fx.gap);
        v.cancel_fill();
        assert_eq!(seqs(&v.arrive(1, (), Source::Push)), vec![1]);
        assert_eq!(seqs(&v.arrive(2, (), Source::Push)), vec![2, 3]);
        assert_eq!(v.fill_now(), None, "nothing left to ask for");
        v.arrive(5, (), Source::Own);
        v.cancel_fill();
        assert_eq!(v.fill_now(), Some((5, 1)));
        assert_eq!(v.fill_now(), None, "one request at a time");
    }

    #[test]
    fn unfillable_gap_is_skipped_and_a_late_arrival_is_out_of_order() {
        let mut v = View::<()>::default();
        v.set_base(0);
        v.arrive(3, (), Source::Push);
        // The reply had nothing for 1..2: give up, show 3.
        let fx = v.fill_done(true);
        assert_eq!(seqs(&fx), vec![3]);
        let fx = v.arrive(1, (), Source::Push);
        assert!(fx.out_of_order && !fx.duplicate);
        assert_eq!(seqs(&fx), vec![1]);
        // Shown once: a second copy is a duplicate.
        assert!(v.arrive(1, (), Source::Push).duplicate);
    }

    #[test]
    fn long_gap_is_filled_page_by_page() {
        let mut v = View::<()>::default();
        v.set_base(0);
        let fx = v.arrive(500, (), Source::Push);
        assert_eq!(fx.fill, Some((500, FILL_PAGE)));
        for s in 300..500 {
            assert!(v.arrive(s, (), Source::Fill).shown.is_empty());
        }
        assert_eq!(v.fill_done(true).fill, Some((300, FILL_PAGE)));
        for s in 100..300 {
            v.arrive(s, (), Source::Fill);
        }
        assert_eq!(v.fill_done(true).fill, Some((100, 99)));
        for s in 1..100 {
            v.arrive(s, (), Source::Fill);
        }
        assert_eq!(v.held(), Some(500));
        assert!(v.fill_done(true).fill.is_none());
    }

    #[test]
    fn resume_replays_what_was_held_back_without_duplicates() {
        let mut v = View::<()>::default();
        v.set_base(0);
        v.arrive(1, (), Source::Push);
        v.arrive(3, (), Source::Push); // 2 missing; connection lost
        v.on_resume();
        assert_eq!(v.held(), Some(1), "since = contiguous point");
        // The resume replays 2, 3: 3 again is expected.
        assert_eq!(seqs(&v.arrive(2, (), Source::Push)), vec![2, 3]);
        let fx = v.arrive(3, (), Source::Push);
        assert!(fx.again && !fx.duplicate);
        // But only once.
        assert!(v.arrive(3, (), Source::Push).duplicate);
    }

    #[test]
    fn own_messages_fill_gaps_and_are_never_duplicates() {
        let mut v = View::<()>::default();
        v.set_base(0);
        assert_eq!(seqs(&v.arrive(1, (), Source::Own)), vec![1]);
        // The resume replays the device's own message.
        let fx = v.arrive(1, (), Source::Own);
        assert!(fx.again && !fx.duplicate);
    }

    #[test]
    fn relogin_may_replay_below_the_cursor() {
        let mut v = View::<()>::default();
        v.set_base(0);
        for s in 1..=5 {
            v.arrive(s, (), Source::Push);
        }
        v.on_relogin();
        for s in 3..=5 {
            assert!(v.arrive(s, (), Source::Push).again);
        }
        assert_eq!(seqs(&v.arrive(6, (), Source::Push)), vec![6]);
    }

    #[test]
    fn first_arrival_without_a_base_starts_the_view() {
        let mut v = View::<()>::default();
        assert_eq!(v.held(), None);
        assert_eq!(seqs(&v.arrive(42, (), Source::Push)), vec![42]);
        assert_eq!(v.held(), Some(42));
    }

    #[test]
    fn resend_deduped_by_the_server_is_not_a_duplicate() {
        // The SendOk of message 7 never came (connection lost); the resend
        // with the same client_msg_id got the original seq back.
        let mut l = Ledger::default();
        l.shown(1, 99, 5, 7, 1); // the recipient saw it before the loss
        assert!(l.acked(99, 5, 1)); // SendOk{duplicate} of the resend
        let t = l.totals();
        assert_eq!((t.lost, t.duplicated, t.unacked_delivered), (0, 0, 0));
    }

    #[test]
    fn message_stored_twice_is_a_duplicate() {
        // The server failed to dedup the resend: seq 5 (no SendOk) and seq 6
        // hold the same client message, and the recipient shows both.
        let mut l = Ledger::default();
        l.shown(1, 99, 5, 7, 1);
        assert!(l.acked(99, 6, 1));
        l.shown(1, 99, 6, 7, 1);
        let t = l.totals();
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.lost, 0);
        assert_eq!(t.unacked_delivered, 1);
    }

    #[test]
    fn same_seq_shown_by_too_many_devices_is_a_duplicate_and_missing_ones_are_lost() {
        let mut l = Ledger::default();
        assert!(l.acked(1, 1, 2));
        assert!(!l.acked(1, 1, 2), "a second SendOk for one seq is reported");
        l.shown(10, 1, 1, 3, 2);
        assert!(l.undelivered());
        l.shown(11, 1, 1, 3, 2);
        assert!(!l.undelivered());
        l.shown(12, 1, 1, 3, 2);
        assert_eq!(l.totals().duplicated, 1);
        assert!(l.acked(1, 2, 2));
        l.shown(10, 1, 2, 4, 2);
        let t = l.totals();
        assert_eq!((t.expected, t.lost), (4, 1));
    }
}

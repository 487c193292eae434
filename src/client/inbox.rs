//! What one device has shown of each conversation, and the gap-proof resume
//! cursor that follows from it (sans I/O; the client library drives it).
//!
//! The rule (docs/PROTOCOL.md "Client rules", issue 10): a device shows each
//! conversation in seq order, and its cursor is the highest **contiguous**
//! seq it holds. That cursor is what it acknowledges and what it sends as
//! `Resume.since`. Why not "the highest seq shown": if seq 5 ever arrives
//! before seq 4 (seen across nodes: a push and a reply racing on the bus),
//! a max cursor of 5 makes the resume skip 4 for good, and a "drop what is
//! at or below the max" dedup drops 4 when it does arrive. A contiguous
//! cursor of 3 makes the resume replay 4 and 5, and dedup drops only what
//! was really shown.
//!
//! - An arrival at `held + 1` is shown, then every held-back seq just above.
//! - An arrival above a gap is held back and the device asks for the gap
//!   (`History { before: lowest held back, limit: gap size }`); the reply's
//!   messages arrive like any other. When a reply brings nothing for the
//!   gap, the device gives up on it and shows what it holds back (a seq
//!   that was never stored cannot block a conversation forever).
//! - An arrival at or below `held`, or already held back, is dropped.
//! - The device's own message (its `SendOk`) counts as shown: nothing to
//!   display, but it moves the cursor.
//! - A conversation the device knows nothing about starts at its first
//!   arrival (a fresh login's catch-up starts at the user's acked cursor,
//!   which the device does not know).

use crate::model::{ConvId, Seq};
use std::collections::{BTreeMap, HashMap};

/// Held-back messages above a gap, per conversation, before the device
/// stops waiting for the gap and shows them (bounds memory).
pub const MAX_AHEAD: usize = 10_000;
/// Largest gap asked for in one `History` request; a larger gap is filled
/// by several.
pub const FILL_LIMIT: u32 = 200;

#[derive(Debug)]
struct Conv<T> {
    held: Seq,
    /// Seqs above a gap: `Some(msg)` to show, `None` for own messages.
    ahead: BTreeMap<Seq, Option<T>>,
    /// A fill request is out for this conversation.
    filling: bool,
}

impl<T> Conv<T> {
    fn new(held: Seq) -> Conv<T> {
        Conv {
            held,
            ahead: BTreeMap::new(),
            filling: false,
        }
    }

    /// Moves `held` over every contiguous held-back seq, appending the
    /// messages to `shown`.
    fn release(&mut self, shown: &mut Vec<T>) {
        while let Some(e) = self.ahead.first_entry() {
            if *e.key() != self.held + 1 {
                break;
            }
            self.held += 1;
            if let Some(m) = e.remove() {
                shown.push(m);
            }
        }
    }

    /// Shows everything held back, gap or not.
    fn give_up(&mut self, shown: &mut Vec<T>) {
        let ahead = std::mem::take(&mut self.ahead);
        for (seq, m) in ahead {
            self.held = self.held.max(seq);
            shown.extend(m);
        }
    }

    fn fill(&mut self, conv: ConvId) -> Option<Fill> {
        if self.filling {
            return None;
        }
        let (&lowest, _) = self.ahead.first_key_value()?;
        self.filling = true;
        let gap = lowest.saturating_sub(self.held + 1);
        Some(Fill {
            conv,
            before: lowest,
            limit: gap.clamp(1, FILL_LIMIT as u64) as u32,
        })
    }
}

/// Ask the server for the messages of `conv` before seq `before` (at most
/// `limit`, the newest of them), then call [`Inbox::fill_done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub conv: ConvId,
    pub before: Seq,
    pub limit: u32,
}

/// What an arrival did.
#[derive(Debug, PartialEq, Eq)]
pub struct Effect<T> {
    /// Newly shown, in seq order.
    pub shown: Vec<T>,
    /// A gap to ask for.
    pub fill: Option<Fill>,
    /// The cursor moved: acknowledge `held`.
    pub advanced: bool,
    /// The arrival was new (shown or held back), not a duplicate.
    pub new: bool,
}

impl<T> Default for Effect<T> {
    fn default() -> Self {
        Effect {
            shown: Vec::new(),
            fill: None,
            advanced: false,
            new: false,
        }
    }
}

/// The device's state over all its conversations.
#[derive(Debug)]
pub struct Inbox<T> {
    convs: HashMap<ConvId, Conv<T>>,
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox {
            convs: HashMap::new(),
        }
    }
}

impl<T> Inbox<T> {
    /// The cursor of every conversation: what to acknowledge and resume
    /// from.
    pub fn cursors(&self) -> HashMap<ConvId, Seq> {
        self.convs.iter().map(|(&c, v)| (c, v.held)).collect()
    }

    pub fn held(&self, conv: ConvId) -> Option<Seq> {
        self.convs.get(&conv).map(|c| c.held)
    }

    /// The device already holds everything of `conv` up to `seq` (a resume
    /// from cursors an earlier connection kept).
    /// Seq 0 holds nothing: the conversation stays unknown and starts at
    /// its first arrival (a group's replay starts at the member's join
    /// point, which the device does not know).
    pub fn seed(&mut self, conv: ConvId, seq: Seq) {
        if seq == 0 {
            return;
        }
        let c = self.convs.entry(conv).or_insert_with(|| Conv::new(seq));
        if seq > c.held {
            c.held = seq;
            c.ahead = c.ahead.split_off(&(seq + 1));
        }
    }

    /// Forgets everything (a fresh login, possibly as another user).
    pub fn clear(&mut self) {
        self.convs.clear();
    }

    /// A message at `seq` of `conv` arrived; `msg` is what to show (`None`
    /// for the device's own message, known from its `SendOk`).
    pub fn arrive(&mut self, conv: ConvId, seq: Seq, msg: Option<T>) -> Effect<T> {
        let mut eff = Effect::default();
        let c = self
            .convs
            .entry(conv)
            .or_insert_with(|| Conv::new(seq.saturating_sub(1)));
        if seq <= c.held || c.ahead.contains_key(&seq) {
            return eff;
        }
        eff.new = true;
        if seq == c.held + 1 {
            c.held = seq;
            eff.shown.extend(msg);
            c.release(&mut eff.shown);
            eff.advanced = true;
            return eff;
        }
        c.ahead.insert(seq, msg);
        if c.ahead.len() > MAX_AHEAD {
            c.give_up(&mut eff.shown);
            eff.advanced = true;
            return eff;
        }
        eff.fill = c.fill(conv);
        eff
    }

    /// The answer to a [`Fill`] has been fed through [`arrive`](Self::arrive)
    /// (or failed). If it brought something new and a gap remains, asks for
    /// the rest; if it brought nothing new, gives up on the gap.
    /// `progressed`: whether any arrival of the reply was new
    /// ([`Effect::new`]).
    pub fn fill_done(&mut self, conv: ConvId, progressed: bool) -> Effect<T> {
        let mut eff = Effect::default();
        let Some(c) = self.convs.get_mut(&conv) else {
            return eff;
        };
        c.filling = false;
        if c.ahead.is_empty() {
            return eff;
        }
        if progressed {
            eff.fill = c.fill(conv);
        } else {
            c.give_up(&mut eff.shown);
            eff.advanced = true;
        }
        eff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(ib: &mut Inbox<u64>, seq: Seq) -> Effect<u64> {
        ib.arrive(7, seq, Some(seq))
    }

    #[test]
    fn in_order_arrivals_are_shown_and_move_the_cursor() {
        let mut ib = Inbox::default();
        for s in 5..8 {
            let e = show(&mut ib, s);
            assert_eq!(e.shown, vec![s]);
            assert!(e.advanced && e.fill.is_none());
        }
        assert_eq!(
            ib.held(7),
            Some(7),
            "a conversation starts at its first arrival"
        );
    }

    #[test]
    fn a_reordered_arrival_is_held_back_not_lost_and_the_cursor_stays_contiguous() {
        let mut ib = Inbox::default();
        ib.seed(7, 3);
        let e = show(&mut ib, 5);
        assert!(e.shown.is_empty(), "5 waits for 4");
        assert_eq!(
            e.fill,
            Some(Fill {
                conv: 7,
                before: 5,
                limit: 1
            })
        );
        assert_eq!(ib.held(7), Some(3), "resume must replay 4");
        let e = show(&mut ib, 4);
        assert_eq!(e.shown, vec![4, 5]);
        assert_eq!(ib.held(7), Some(5));
        // The fill's reply brings 4 again: dropped, nothing left to do.
        assert!(show(&mut ib, 4).shown.is_empty());
        let e = ib.fill_done(7, false);
        assert!(e.shown.is_empty() && e.fill.is_none());
    }

    #[test]
    fn duplicates_are_dropped_whether_shown_or_held_back() {
        let mut ib = Inbox::default();
        ib.seed(7, 1);
        show(&mut ib, 2);
        assert!(show(&mut ib, 2).shown.is_empty());
        show(&mut ib, 4);
        let e = show(&mut ib, 4);
        assert!(e.shown.is_empty() && e.fill.is_none(), "one fill at a time");
        assert_eq!(show(&mut ib, 3).shown, vec![3, 4]);
    }

    #[test]
    fn a_gap_the_store_cannot_fill_is_given_up_after_an_empty_fill() {
        let mut ib = Inbox::default();
        ib.seed(7, 1);
        show(&mut ib, 4);
        show(&mut ib, 5);
        let e = ib.fill_done(7, false);
        assert_eq!(e.shown, vec![4, 5]);
        assert_eq!(ib.held(7), Some(5));
    }

    #[test]
    fn a_large_gap_is_filled_in_several_requests() {
        let mut ib = Inbox::default();
        ib.seed(7, 1);
        show(&mut ib, 1);
        let e = show(&mut ib, 1000);
        assert_eq!(e.fill.unwrap().limit, FILL_LIMIT);
        // The first reply: the newest 200 before 1000 (800..=999).
        for s in 800..1000 {
            assert!(show(&mut ib, s).shown.is_empty());
        }
        let e = ib.fill_done(7, true);
        assert!(e.shown.is_empty());
        assert_eq!(
            e.fill,
            Some(Fill {
                conv: 7,
                before: 800,
                limit: FILL_LIMIT
            })
        );
        for s in (1..800).rev() {
            show(&mut ib, s);
        }
        assert_eq!(
            ib.held(7),
            Some(1000),
            "filled down to the cursor: all shown"
        );
        let mut ib = Inbox::default();
        ib.seed(7, 1);
        show(&mut ib, 300);
        for s in 1..200 {
            show(&mut ib, s);
        }
        let e = ib.fill_done(7, true);
        assert_eq!(
            e.fill,
            Some(Fill {
                conv: 7,
                before: 300,
                limit: 100
            }),
            "the rest of the gap: 200..300"
        );
    }

    #[test]
    fn own_messages_move_the_cursor_without_being_shown() {
        let mut ib = Inbox::default();
        ib.seed(7, 2);
        let e = ib.arrive(7, 3, None);
        assert!(e.shown.is_empty() && e.advanced);
        assert_eq!(show(&mut ib, 4).shown, vec![4]);
        // A peer's 6 before our own 5's SendOk: held back, released by it.
        show(&mut ib, 6);
        let e = ib.arrive(7, 5, None);
        assert_eq!(e.shown, vec![6]);
        assert_eq!(ib.held(7), Some(6));
    }

    #[test]
    fn a_seed_drops_what_it_covers() {
        let mut ib = Inbox::default();
        ib.seed(7, 1);
        show(&mut ib, 3);
        show(&mut ib, 6);
        ib.seed(7, 4);
        assert_eq!(ib.held(7), Some(4));
        assert_eq!(show(&mut ib, 5).shown, vec![5, 6]);
    }

    #[test]
    fn a_seed_of_zero_holds_nothing_and_the_first_arrival_starts_the_conversation() {
        let mut ib = Inbox::default();
        ib.seed(7, 0);
        let e = show(&mut ib, 3);
        assert_eq!(e.shown, vec![3], "a group replay starts at the join point");
    }

    #[test]
    fn held_back_messages_are_bounded() {
        let mut ib = Inbox::default();
        ib.seed(7, 1);
        let mut shown = 0;
        for s in 3..(MAX_AHEAD as u64 + 4) {
            shown += show(&mut ib, s).shown.len();
        }
        assert_eq!(shown, MAX_AHEAD + 1);
    }
}

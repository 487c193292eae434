//! Catch-up after login/resume, and how it meets live delivery.
//!
//! Offline delivery and reconnect are one mechanism: a new session replays
//! every stored message after its cursors, then switches to live pushes.
//! While the replay runs, live pushes for the session are *held*; at the
//! switch, held messages already covered by the replay are dropped, so the
//! session sees each message once and each conversation in order. If the
//! hold overflows (a flood during a long replay) it is discarded and the
//! replay simply runs again from where it got: everything is in the store.

use crate::model::ConvCursor;
use crate::model::{ConvId, Seq};
use ahash::AHashMap;

/// One conversation to replay: messages with `after < seq <= upto` (upto as
/// known at planning; the replay reads until the store has no more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    pub conv: ConvId,
    pub after: Seq,
}

/// Which conversations to replay from where: the user's stored cursor, or
/// the device's own `since` for conversations it names (only for
/// conversations the user belongs to), never from below the user's floor
/// (their join point in a group that does not show new members its past).
pub fn plan(convs: &[ConvCursor], since: &[(ConvId, Seq)]) -> Vec<Replay> {
    let overrides: AHashMap<ConvId, Seq> = since.iter().copied().collect();
    convs
        .iter()
        .filter_map(|c| {
            let after = overrides
                .get(&c.conv)
                .copied()
                .unwrap_or(c.delivered)
                .max(c.floor);
            (c.last_seq > after).then_some(Replay {
                conv: c.conv,
                after,
            })
        })
        .collect()
}

/// Live pushes held while a session replays.
#[derive(Debug)]
pub struct Hold<F> {
    items: Vec<(ConvId, Seq, F)>,
    cap: usize,
    overflowed: bool,
}

impl<F> Hold<F> {
    pub fn new(cap: usize) -> Hold<F> {
        Hold {
            items: Vec::new(),
            cap,
            overflowed: false,
        }
    }

    pub fn push(&mut self, conv: ConvId, seq: Seq, frame: F) {
        if self.overflowed {
            return;
        }
        if self.items.len() >= self.cap {
            self.items.clear();
            self.overflowed = true;
            return;
        }
        self.items.push((conv, seq, frame));
    }

    /// Ends the hold: returns the frames to send (those not covered by the
    /// replay, which reached `replayed[conv]`), or `Err(())` if the hold
    /// overflowed and the replay must run again.
    #[allow(clippy::result_unit_err)]
    pub fn release(&mut self, replayed: &AHashMap<ConvId, Seq>) -> Result<Vec<F>, ()> {
        if std::mem::take(&mut self.overflowed) {
            return Err(());
        }
        let mut sent: AHashMap<ConvId, Seq> = AHashMap::new();
        let mut out = Vec::new();
        for (conv, seq, f) in self.items.drain(..) {
            let floor = sent
                .get(&conv)
                .copied()
                .or_else(|| replayed.get(&conv).copied())
                .unwrap_or(0);
            if seq > floor {
                sent.insert(conv, seq);
                out.push(f);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(conv: ConvId, delivered: Seq, last_seq: Seq) -> ConvCursor {
        ConvCursor {
            conv,
            delivered,
            last_seq,
            floor: 0,
        }
    }

    #[test]
    fn a_device_cannot_replay_from_below_its_floor() {
        let mut c = cc(7, 10, 12);
        c.floor = 10;
        assert_eq!(plan(&[c], &[(7, 0)]), vec![Replay { conv: 7, after: 10 }]);
        assert_eq!(plan(&[c], &[(7, 11)]), vec![Replay { conv: 7, after: 11 }]);
    }

    #[test]
    fn plan_uses_cursor_or_device_since() {
        let convs = [cc(1, 5, 5), cc(2, 3, 9), cc(3, 0, 2)];
        assert_eq!(
            plan(&convs, &[]),
            vec![Replay { conv: 2, after: 3 }, Replay { conv: 3, after: 0 }]
        );
        // The device saw less of conv 1 than the user's cursor (another device acked).
        assert_eq!(
            plan(&convs, &[(1, 2), (3, 2), (99, 0)]),
            vec![Replay { conv: 1, after: 2 }, Replay { conv: 2, after: 3 }]
        );
    }

    #[test]
    fn hold_drops_what_replay_covered_and_keeps_order() {
        let mut h = Hold::new(10);
        h.push(1, 4, "a4");
        h.push(1, 5, "a5");
        h.push(2, 1, "b1");
        h.push(1, 5, "a5-dup");
        let replayed: AHashMap<ConvId, Seq> = [(1, 4)].into_iter().collect();
        assert_eq!(h.release(&replayed).unwrap(), vec!["a5", "b1"]);
    }

    #[test]
    fn overflow_forces_another_replay() {
        let mut h = Hold::new(2);
        h.push(1, 1, ());
        h.push(1, 2, ());
        h.push(1, 3, ());
        assert!(h.release(&AHashMap::new()).is_err());
        h.push(1, 4, ());
        assert_eq!(h.release(&AHashMap::new()).unwrap().len(), 1);
    }
}

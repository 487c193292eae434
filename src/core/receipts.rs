//! Read receipts, sans IO: which acknowledgements become `ReadUpTo` pushes.
//!
//! `Ack` is the read cursor. A client may acknowledge message by message,
//! so one ack batch can name a conversation many times; the home shard
//! pushes at most one `ReadUpTo` per conversation per batch, and only when
//! the user's read mark there advanced past what was already announced
//! (a repeated or older ack announces nothing). Marks are per user on the
//! home shard, kept while the user has sessions.

use crate::model::{ConvId, Seq};
use ahash::AHashMap;

/// The highest read seq announced per conversation, for one user.
#[derive(Debug, Default, Clone)]
pub struct ReadMarks {
    marks: AHashMap<ConvId, Seq>,
}

impl ReadMarks {
    /// Applies one ack batch (`(conversation, seq)` as the session accepted
    /// it, already capped to what it was sent). Returns each conversation
    /// whose mark advanced, once, with its new mark, in first-seen order.
    pub fn batch(&mut self, items: impl IntoIterator<Item = (ConvId, Seq)>) -> Vec<(ConvId, Seq)> {
        let mut out: Vec<(ConvId, Seq)> = Vec::new();
        for (conv, seq) in items {
            if seq == 0 {
                continue;
            }
            let m = self.marks.entry(conv).or_insert(0);
            if seq <= *m {
                continue;
            }
            *m = seq;
            match out.iter_mut().find(|(c, _)| *c == conv) {
                Some(e) => e.1 = seq,
                None => out.push((conv, seq)),
            }
        }
        out
    }

    pub fn get(&self, conv: ConvId) -> Seq {
        self.marks.get(&conv).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_receipt_per_conversation_per_batch_with_the_highest_seq() {
        let mut m = ReadMarks::default();
        let out = m.batch([(7, 1), (7, 2), (9, 4), (7, 3), (9, 2)]);
        assert_eq!(out, vec![(7, 3), (9, 4)]);
        assert_eq!((m.get(7), m.get(9)), (3, 4));
    }

    #[test]
    fn repeated_or_older_acks_announce_nothing() {
        let mut m = ReadMarks::default();
        assert_eq!(m.batch([(7, 5)]), vec![(7, 5)]);
        assert!(m.batch([(7, 5), (7, 4), (7, 0)]).is_empty());
        assert!(m.batch([(8, 0)]).is_empty(), "an ack of 0 reads nothing");
        assert_eq!(m.batch([(7, 6)]), vec![(7, 6)]);
    }
}

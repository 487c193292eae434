//! Group commit across shards.
//!
//! Every shard already batches its own hot writes; with several shards on
//! one store, their batches would still each pay a commit (one fsync) and,
//! on SQLite, wait for each other on the single writer. One committer
//! thread per process takes whatever batches are waiting, from all shards,
//! and writes them in one transaction. Under load that is one fsync per
//! round for the whole node instead of one per shard.
//!
//! A failed combined write is retried batch by batch, so one shard's bad
//! batch (for example a stale owner's duplicate seq after a cluster view
//! change) fails only that shard's batch.

use super::{Result, Store, WriteOp};
use std::sync::Arc;

struct Job {
    ops: Vec<WriteOp>,
    /// A flume channel because both kinds of waiter take it: a thread
    /// (`write`, the tests) blocks on it, a shard's writer (`write_async`)
    /// awaits it, and the committer's send wakes that task directly
    /// (glommio queues a waker woken on another thread and writes the
    /// executor's eventfd).
    done: flume::Sender<Result<()>>,
}

fn stopped() -> super::StoreError {
    super::StoreError::Backend("group committer stopped".into())
}

#[derive(Clone)]
pub struct GroupCommitter {
    tx: crossbeam_channel::Sender<Job>,
}

impl GroupCommitter {
    /// Starts the committer thread; it ends when every handle is dropped.
    pub fn new(store: Arc<dyn Store>) -> GroupCommitter {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter());
                    commit(&*store, jobs);
                }
            })
            .expect("spawning the group-commit thread");
        GroupCommitter { tx }
    }

    /// Writes `ops` atomically (blocking until durable): the tests' way in,
    /// from plain threads.
    #[cfg(test)]
    pub fn write(&self, ops: Vec<WriteOp>) -> Result<()> {
        self.submit(ops)?.recv().unwrap_or_else(|_| Err(stopped()))
    }

    /// Queues `ops` for the next combined transaction and returns where
    /// its outcome will arrive, for an executor to await without a thread
    /// of its own in between: a shard's writer used to hand each batch to
    /// a blocking-pool thread that only sat waiting on the committer (two
    /// extra thread wake-ups per batch, which dominated the CPU per message
    /// at low load; bench/RESULTS.md, issue 14).
    fn submit(&self, ops: Vec<WriteOp>) -> Result<flume::Receiver<Result<()>>> {
        let (done, wait) = flume::bounded(1);
        self.tx.send(Job { ops, done }).map_err(|_| stopped())?;
        Ok(wait)
    }

    /// `submit`, awaited: resolves when the batch is durable or failed.
    pub async fn write_async(&self, ops: Vec<WriteOp>) -> Result<()> {
        let wait = self.submit(ops)?;
        wait.recv_async().await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn commit(store: &dyn Store, mut jobs: Vec<Job>) {
    if jobs.len() == 1 {
        let job = jobs.pop().expect("one job");
        let r = guarded(|| store.write_batch(&job.ops));
        let _ = job.done.send(r);
        return;
    }
    let mut all = Vec::with_capacity(jobs.iter().map(|j| j.ops.len()).sum());
    let mut bounds = Vec::with_capacity(jobs.len());
    for j in &mut jobs {
        let start = all.len();
        all.append(&mut j.ops);
        bounds.push(start..all.len());
    }
    if guarded(|| store.write_batch(&all)).is_ok() {
        for j in jobs {
            let _ = j.done.send(Ok(()));
        }
        return;
    }
    for (j, r) in jobs.into_iter().zip(bounds) {
        let res = guarded(|| store.write_batch(&all[r]));
        let _ = j.done.send(res);
    }
}

/// A panicking backend fails the batch instead of killing the thread.
fn guarded(f: impl FnOnce() -> Result<()>) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(super::StoreError::Backend("store write panicked".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoredMessage, sqlite};

    fn msg(conv: u64, seq: u64) -> WriteOp {
        WriteOp::Message(StoredMessage {
            conv,
            seq,
            sender: 1,
            timestamp_ms: 1,
            client_msg_id: seq,
            body: format!("m{seq}"),
            sender_name: String::new(),
        })
    }

    #[test]
    fn concurrent_batches_commit_and_a_bad_one_fails_alone() {
        let dir = std::env::temp_dir().join(format!("ringchat-gc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = sqlite::open_store(&dir.join("db")).unwrap();
        let gc = GroupCommitter::new(store.clone());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        gc.write(vec![msg(100 + t, i * 2 + 1), msg(100 + t, i * 2 + 2)])
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for t in 0..4u64 {
            assert_eq!(store.conv_tail(100 + t, 0).unwrap().last_seq, 100);
            assert_eq!(store.messages_after(100 + t, 0, 1000).unwrap().len(), 100);
        }
        // A duplicate (conv, seq) fails, and only its own batch.
        let (a, b) = (gc.clone(), gc.clone());
        let bad = std::thread::spawn(move || a.write(vec![msg(100, 100)]));
        let good = std::thread::spawn(move || b.write(vec![msg(200, 1)]));
        assert!(bad.join().unwrap().is_err());
        good.join().unwrap().unwrap();
        assert_eq!(store.conv_tail(200, 0).unwrap().last_seq, 1);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The sleep/notify handshake of the patched glommio (vendor/glommio,
//! RINGCHAT-PATCH.md patch 2: SeqCst fences instead of a `membarrier`
//! syscall per park; docs/WAKEUPS.md).
//!
//! An executor about to park sets `should_notify`, fences, and re-checks
//! its shared channels, blocking-pool results and foreign wakers; a
//! producer publishes its item, fences, and writes the eventfd if it sees
//! the flag. Get either half wrong and a wake-up is lost: the sleeper never
//! hears of an item that is already there. Each test below makes every
//! single item arrive at an executor that has nothing else to do, so it
//! parks between items: one lost wake-up stops the exchange for good (no
//! timer, no I/O, nothing else ever wakes it).
//!
//! Nothing is timed: the watchdog only decides "no progress at all for
//! 10 s", which a working handshake never comes near (an exchange takes
//! tens of microseconds).

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ROUNDS: u64 = 20_000;

/// Waits until `progress` reaches `goal`; panics naming `what` if it stood
/// still for 10 s (a lost wake-up: the exchange can never resume).
fn watch(what: &str, progress: &AtomicU64, goal: u64) {
    let mut last = (0, Instant::now());
    loop {
        let p = progress.load(Ordering::Relaxed);
        if p >= goal {
            return;
        }
        if p != last.0 {
            last = (p, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            panic!("{what}: no progress for 10 s at round {p} of {goal}: a lost wake-up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn executor(name: &str) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Unbound).name(name)
}

/// Ping-pong between two executors over glommio's shared channels (the
/// mesh's transport): each side parks waiting for every reply.
#[test]
fn executors_ping_pong_without_losing_a_wake_up() {
    let progress = Arc::new(AtomicU64::new(0));
    let (ping_tx, ping_rx) = shared_channel::new_bounded::<u64>(1);
    let (pong_tx, pong_rx) = shared_channel::new_bounded::<u64>(1);
    let p = progress.clone();
    let a = executor("wake-a")
        .spawn(move || async move {
            let (tx, rx) = (ping_tx.connect().await, pong_rx.connect().await);
            for i in 1..=ROUNDS {
                tx.send(i).await.expect("b is there");
                assert_eq!(rx.recv().await, Some(i), "the reply to round {i}");
                p.store(i, Ordering::Relaxed);
            }
        })
        .expect("executor a");
    let b = executor("wake-b")
        .spawn(move || async move {
            let (rx, tx) = (ping_rx.connect().await, pong_tx.connect().await);
            while let Some(i) = rx.recv().await {
                tx.send(i).await.expect("a is there");
            }
        })
        .expect("executor b");
    watch("shared-channel ping-pong", &progress, ROUNDS);
    a.join().expect("a finishes");
    b.join().expect("b finishes once a hangs up");
}

/// A plain thread wakes an executor's task (a foreign waker: the path of
/// flume and every other channel a non-glommio thread sends on) and waits
/// for the answer before the next round, so the executor parks each time.
#[test]
fn a_foreign_thread_wakes_a_parked_executor_every_time() {
    let progress = Arc::new(AtomicU64::new(0));
    let (to_ex, from_thread) = flume::bounded::<u64>(1);
    let (to_thread, from_ex) = std::sync::mpsc::sync_channel::<u64>(1);
    let ex = executor("wake-foreign")
        .spawn(move || async move {
            while let Ok(i) = from_thread.recv_async().await {
                to_thread.send(i).expect("the thread waits for it");
            }
        })
        .expect("executor");
    let p = progress.clone();
    let thread = std::thread::spawn(move || {
        for i in 1..=ROUNDS {
            to_ex.send(i).expect("executor is there");
            assert_eq!(from_ex.recv().expect("executor answers"), i);
            p.store(i, Ordering::Relaxed);
        }
    });
    watch("foreign waker", &progress, ROUNDS);
    thread.join().expect("thread finishes");
    ex.join()
        .expect("executor finishes once the thread hangs up");
}

/// Blocking-pool results (every store call takes this path): one call at
/// a time, so the executor parks until each result is queued.
#[test]
fn blocking_pool_results_wake_a_parked_executor_every_time() {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let ex = executor("wake-blocking")
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
        .spawn(move || async move {
            for i in 1..=ROUNDS / 4 {
                let r = glommio::executor().spawn_blocking(move || i * 2).await;
                assert_eq!(r, i * 2);
                p.store(i, Ordering::Relaxed);
            }
        })
        .expect("executor");
    watch("blocking pool", &progress, ROUNDS / 4);
    ex.join().expect("executor finishes");
}

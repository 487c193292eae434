//! Reproducer for the glommio 0.9.0 bug patched in `vendor/glommio`
//! (see vendor/glommio/RINGCHAT-PATCH.md and docs/WAKEUPS.md).
//!
//! An executor whose preempt timer fires between arming and checking it
//! (forced here with a preempt period of a few microseconds; on a loaded
//! machine any descheduling does it) used to park with runnable tasks and
//! nothing left to wake it. The executor below has runnable work and
//! nothing else: no timer, no I/O, no other thread. Without the patch it
//! stops after 0 iterations every time; with it, it finishes.
//!
//! Nothing here is timed: the watchdog only decides "no progress at all for
//! several seconds", which the patched executor never comes near.

use glommio::{LocalExecutorBuilder, Placement};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ITERATIONS: u64 = 5_000;

/// Runs `ITERATIONS` spawn-and-await rounds; returns the last iteration
/// reached if the executor made no progress for `stall`.
fn run(preempt: Duration, stall: Duration) -> Result<(), u64> {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let h = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(preempt)
        .spawn(move || async move {
            for i in 1..=ITERATIONS {
                let t = glommio::spawn_local(async move {
                    let s = Instant::now();
                    while s.elapsed() < Duration::from_micros(20) {}
                });
                t.await;
                p.store(i, Ordering::Relaxed);
            }
        })
        .expect("executor starts");
    let mut last = 0;
    let mut last_change = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = progress.load(Ordering::Relaxed);
        if now == ITERATIONS {
            h.join().expect("executor thread");
            return Ok(());
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall {
            // The executor thread is parked for good; leave it behind.
            return Err(now);
        }
    }
}

#[test]
fn executor_does_not_park_with_runnable_tasks_after_preemption() {
    // (1 µs is not used: a period shorter than one turn of the run loop
    // preempts every turn, a livelock by configuration, not this bug.)
    for us in [2, 5] {
        if let Err(at) = run(Duration::from_micros(us), Duration::from_secs(5)) {
            panic!(
                "executor with a {us} µs preempt period parked with runnable tasks \
                 after {at} of {ITERATIONS} iterations (glommio park bug; is \
                 vendor/glommio patched in via [patch.crates-io]?)"
            );
        }
    }
}

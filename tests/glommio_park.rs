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
/// The scheduler state letter of thread `tid` of this process ('R' running,
/// 'S' sleeping, ...), from /proc.
fn thread_state(tid: u64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // "tid (comm) S ...": the state follows the last ')'.
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// The id of this process's thread named `name`, from /proc.
///
/// Found by name, not reported by the executor's first task: on a slow
/// machine a 2 µs period can preempt every turn of the run loop from the
/// first one, so the first task never runs, and an id it never reported
/// must not read as "asleep" (CI saw exactly that: a livelocked executor
/// reported as parked at iteration 0).
fn thread_named(name: &str) -> Option<u64> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|e| {
        let e = e.ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim_end() == name).then(|| e.file_name().to_str()?.parse().ok())?
    })
}

/// Whether the stalled executor thread is asleep (parked: the bug) rather
/// than spinning (on a slow or busy machine one turn of glommio's run loop
/// can outlast a 2 µs period, so every turn is preempted before it runs a
/// task: a livelock by configuration, not this bug).
fn parked(name: &str) -> bool {
    let Some(tid) = thread_named(name) else {
        panic!("executor thread {name} not found in /proc/self/task");
    };
    (0..20).all(|_| {
        std::thread::sleep(Duration::from_millis(10));
        // Anything but 'R' (running or runnable): 'S' is the park in
        // io_uring_enter.
        !matches!(thread_state(tid), Some('R'))
    })
}

fn run(preempt: Duration, stall: Duration) -> Result<(), u64> {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    // At most 15 bytes: the kernel's limit for a thread name.
    let name = format!("park-{}us", preempt.as_micros());
    let h = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&name)
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
            if parked(&name) {
                // The executor thread is parked for good; leave it behind.
                return Err(now);
            }
            // Spinning, not parked: not the bug this test is about.
            eprintln!(
                "{preempt:?}: executor spinning without progress at {now} (run loop slower \
                 than the preempt period on this machine); not a park"
            );
            return Ok(());
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

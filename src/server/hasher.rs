//! Password hashing on its own small pool, with failed-login throttling.
//!
//! argon2 (19 MiB, t=2) costs tens of milliseconds of CPU per login. On the
//! store's blocking pool a wrong-password flood queued ahead of every store
//! read and group commit (measured: another user's SendMessage median went
//! from 2-5 ms to 715 ms under 48 flooding connections). So:
//! - hashes run on dedicated threads (`--hash-threads`), at a lower CPU
//!   priority (nice 10) than the executors and the committer, so hashing
//!   yields the CPU to message traffic instead of competing with it;
//! - the queue in front of them is small (`--hash-queue`); when it is full a
//!   login or register gets `RateLimited` at once instead of waiting behind
//!   a flood (the client retries with back-off);
//! - failed logins are throttled per username and per source address
//!   (`core::throttle`), *before* hashing: a throttled attempt costs nothing.
//!
//! Results come back over a one-shot channel whose waker is woken from the
//! hashing thread: glommio's foreign-wake path (queue + eventfd), see
//! docs/WAKEUPS.md.

use crate::core::throttle::{Policy, Throttle, Verdict};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// Why an attempt was refused before any hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Too many failures for this username or address; retry after this.
    Throttled(Duration),
    /// Every hashing thread is busy and the queue is full.
    Busy,
}

impl Denied {
    pub fn text(self) -> String {
        match self {
            Denied::Throttled(d) => format!(
                "too many failed logins; retry in {} s",
                d.as_secs_f64().ceil() as u64
            ),
            Denied::Busy => "server busy checking passwords; retry shortly".into(),
        }
    }
}

pub struct Hasher {
    tx: crossbeam_channel::Sender<Job>,
    epoch: Instant,
    users: Mutex<Throttle<String>>,
    addrs: Mutex<Throttle<IpAddr>>,
}

/// Per username: 5 free failures, then 1 s doubling to 60 s.
pub const USER_POLICY: Policy = Policy {
    free: 5,
    base_ms: 1000,
    max_ms: 60_000,
    forget_ms: 15 * 60_000,
    max_keys: 100_000,
};

/// Per source address: more room (NAT, shared offices), same back-off.
pub const ADDR_POLICY: Policy = Policy {
    free: 20,
    base_ms: 1000,
    max_ms: 60_000,
    forget_ms: 15 * 60_000,
    max_keys: 100_000,
};

impl Hasher {
    pub fn new(threads: usize, queue: usize) -> Hasher {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue.max(1));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("hasher-{i}"))
                .spawn(move || {
                    // SAFETY: setpriority on this thread's own id.
                    unsafe {
                        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
                    }
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .expect("spawning a hashing thread");
        }
        Hasher {
            tx,
            epoch: Instant::now(),
            users: Mutex::new(Throttle::new(USER_POLICY)),
            addrs: Mutex::new(Throttle::new(ADDR_POLICY)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `f` on a hashing thread, or refuses at once if the queue is full.
    pub async fn run<R, F>(&self, f: F) -> Result<R, Denied>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = flume::bounded(1);
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        });
        if self.tx.try_send(job).is_err() {
            return Err(Denied::Busy);
        }
        match rx.recv_async().await {
            Ok(Ok(r)) => Ok(r),
            // A panic in argon2 (or a vanished thread) is not a verdict on
            // the password: tell the client to retry.
            _ => Err(Denied::Busy),
        }
    }

    /// Checks `password` against a stored PHC hash on a hashing thread.
    /// `None` (no such user) costs the same as a wrong password, so users
    /// cannot be enumerated by timing.
    pub async fn verify(&self, phc: Option<String>, password: String) -> Result<bool, Denied> {
        self.run(move || match phc {
            Some(h) => super::auth::verify_password(&password, &h),
            None => {
                super::auth::verify_password(&password, super::auth::dummy_hash());
                false
            }
        })
        .await
    }

    /// May a login for `user` from `addr` be checked now?
    pub fn admit(&self, user: &str, addr: Option<IpAddr>) -> Result<(), Denied> {
        let now = self.now_ms();
        let mut wait = 0;
        if let Verdict::Wait(ms) = lock(&self.users).check(&user.to_string(), now) {
            wait = ms;
        }
        if let Some(a) = addr
            && let Verdict::Wait(ms) = lock(&self.addrs).check(&a, now)
        {
            wait = wait.max(ms);
        }
        if wait > 0 {
            Err(Denied::Throttled(Duration::from_millis(wait)))
        } else {
            Ok(())
        }
    }

    /// Records the outcome of a checked login.
    pub fn outcome(&self, user: &str, addr: Option<IpAddr>, ok: bool) {
        let now = self.now_ms();
        if ok {
            lock(&self.users).succeeded(&user.to_string());
            // A success does not clear the address: one valid account must
            // not reset the budget for guessing others from there.
            return;
        }
        lock(&self.users).failed(&user.to_string(), now);
        if let Some(a) = addr {
            lock(&self.addrs).failed(&a, now);
        }
    }
}

/// The throttle tables hold plain data: a panic while one was locked
/// leaves nothing half-updated that matters, so poison is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! `ringchat provision`: bulk-creates load-test users, friendships and
//! groups straight in the store, before the server starts.
//!
//! Registering 20k users over the wire costs 20k argon2 hashes and 20k
//! fsyncs; here the hashes are computed on every core and everything lands
//! in one transaction. Every user has the same password but a hash of its
//! own (its own random salt), so a leaked database does not show which
//! users share a password and one cracked hash does not crack them all.
//! Benchmarks that log in thousands of times may store cheap argon2
//! parameters instead (`--fast-hash`), refused without the explicit
//! `--insecure-fast-hash-for-tests` (and a server started with the same
//! flag, which otherwise upgrades them at each user's first login). It is
//! idempotent: existing users, friendships and groups are reused, so runs
//! can share one data dir.
//!
//! Naming contract with `loadgen`: users are `<prefix><i>` for
//! `i in 0..users`; with `--friends-pairs` users `2i` and `2i+1` are
//! friends; group `j` is `<prefix>g<j>` with members
//! `j*group_size .. (j+1)*group_size` (the first is the owner).

use crate::store::{self, StoreError};
use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, Version};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ProvisionSpec {
    pub data_dir: PathBuf,
    /// `--store` spec, as for `serve` (empty: `<data_dir>/ringchat.db`).
    pub store: String,
    pub users: usize,
    pub prefix: String,
    pub password: String,
    pub friends_pairs: bool,
    pub groups: usize,
    pub group_size: usize,
    /// Cheap argon2 parameters (m=64 KiB, t=1) instead of the server's
    /// (19 MiB, t=2). Verification uses the parameters stored in the hash, so
    /// this makes each benchmark login cost ~0.1 ms of server CPU instead of
    /// tens of ms: 10k logins on 2 cores would otherwise take minutes and
    /// the benchmark would measure argon2, not messaging. Weak: refused
    /// unless `insecure_for_tests` is set too.
    pub fast_hash: bool,
    /// `--insecure-fast-hash-for-tests`: the caller knows fast hashes are
    /// for test data only.
    pub insecure_for_tests: bool,
}

/// What `provision --fast-hash` says without the test-only flag.
pub const FAST_HASH_REFUSED: &str = "--fast-hash stores weak password hashes (argon2 m=64 KiB, t=1) and is \
     for benchmarks and tests only: add --insecure-fast-hash-for-tests to confirm \
     (and start the server with it too, or it upgrades each hash at the user's first login)";

/// (usernames, friend pairs as user indices, groups as (name, member indices)).
pub type Plan = (Vec<String>, Vec<(usize, usize)>, Vec<(String, Vec<usize>)>);

/// Users, pairs and groups named by the contract above.
pub fn plan(spec: &ProvisionSpec) -> Plan {
    let names: Vec<String> = (0..spec.users)
        .map(|i| format!("{}{i}", spec.prefix))
        .collect();
    let pairs = if spec.friends_pairs {
        (0..spec.users / 2).map(|i| (2 * i, 2 * i + 1)).collect()
    } else {
        Vec::new()
    };
    let k = spec.group_size.max(2);
    let groups = (0..spec.groups)
        .filter(|j| (j + 1) * k <= spec.users)
        .map(|j| {
            (
                format!("{}g{j}", spec.prefix),
                (j * k..(j + 1) * k).collect(),
            )
        })
        .collect();
    (names, pairs, groups)
}

/// One hash of `password` with a fresh random salt.
pub fn hash(password: &str, fast: bool) -> Result<String, String> {
    let argon = if fast {
        let p = Params::new(64, 1, 1, None).map_err(|e| e.to_string())?;
        Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
    } else {
        Argon2::default()
    };
    argon
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A hash (own salt) for each of `n` users, computed on every core.
fn hashes(password: &str, fast: bool, n: usize) -> Result<Vec<String>, String> {
    let threads = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1)
        .clamp(1, n.max(1));
    let per = n.div_ceil(threads);
    let parts: Vec<Result<Vec<String>, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let k = per.min(n.saturating_sub(t * per));
                s.spawn(move || (0..k).map(|_| hash(password, fast)).collect())
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("hashing panicked".into())))
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// Runs the provisioning; returns (users, groups) created or reused.
pub fn run(spec: &ProvisionSpec) -> Result<(usize, usize), String> {
    if spec.users > crate::model::MAX_USER_ID as usize {
        return Err("too many users".into());
    }
    if spec.fast_hash && !spec.insecure_for_tests {
        return Err(FAST_HASH_REFUSED.into());
    }
    let t0 = std::time::Instant::now();
    let st = store::open(&spec.store, &spec.data_dir).map_err(|e: StoreError| e.to_string())?;
    let (names, pairs, groups) = plan(spec);
    // Hash only for the users that do not exist yet (existing ones are
    // reused untouched).
    let mut missing = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if st.user_by_name(n).map_err(|e| e.to_string())?.is_none() {
            missing.push(i);
        }
    }
    let mut fresh = hashes(&spec.password, spec.fast_hash, missing.len())?.into_iter();
    let mut hs = vec![String::new(); names.len()];
    for i in missing {
        hs[i] = fresh.next().unwrap_or_default();
    }
    let (ids, gids) = st
        .provision_bulk(&hs, &names, &pairs, &groups)
        .map_err(|e| e.to_string())?;
    eprintln!(
        "provisioned {} users ({} friend pairs, {} groups) in {:.2}s",
        ids.len(),
        pairs.len(),
        gids.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok((ids.len(), gids.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisions_idempotently() {
        let dir = std::env::temp_dir().join(format!("rc-prov-{}", std::process::id()));
        let spec = ProvisionSpec {
            data_dir: dir.clone(),
            store: String::new(),
            users: 10,
            prefix: "t".into(),
            password: "pw-123456".into(),
            friends_pairs: true,
            groups: 2,
            group_size: 4,
            fast_hash: true,
            insecure_for_tests: false,
        };
        let refused = run(&spec).unwrap_err();
        assert!(
            refused.contains("--insecure-fast-hash-for-tests"),
            "{refused}"
        );
        let spec = ProvisionSpec {
            insecure_for_tests: true,
            ..spec
        };
        assert_eq!(run(&spec).unwrap(), (10, 2));
        let st = store::open("", &dir).unwrap();
        let before = st.user_by_name("t0").unwrap().unwrap().password_hash;
        drop(st);
        assert_eq!(run(&spec).unwrap(), (10, 2));
        let st = store::open("", &dir).unwrap();
        let u0 = st.user_by_name("t0").unwrap().unwrap();
        let u1 = st.user_by_name("t1").unwrap().unwrap();
        assert_eq!(
            u0.password_hash, before,
            "existing users are reused untouched"
        );
        // Same password, a salt of its own each.
        assert_ne!(u0.password_hash, u1.password_hash);
        for u in [&u0, &u1] {
            assert!(crate::server::auth::verify_password(
                "pw-123456",
                &u.password_hash
            ));
        }
        let f = st.friends_of(u0.id).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].user_id, u1.id);
        let g = st.groups_of(u0.id).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(st.group_members(g[0].0.id).unwrap().len(), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

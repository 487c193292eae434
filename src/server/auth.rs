//! Password hashing and session tokens. All of it is CPU-heavy (argon2id)
//! or touches the store, so callers run it on the blocking pool.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};

/// argon2id with the crate's recommended parameters (19 MiB, t=2, p=1).
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether a stored hash should be replaced by one with the server's
/// parameters (argon2id v0x13, 19 MiB, t=2, p=1, 32-byte output): a fast
/// hash from `provision --fast-hash`, an older or cheaper choice, anything
/// that does not parse. Checked after a successful login, when the
/// password is at hand.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(h) = argon2::PasswordHash::new(phc) else {
        return true;
    };
    if h.algorithm != argon2::ARGON2ID_IDENT || h.version != Some(argon2::Version::V0x13 as u32) {
        return true;
    }
    let Ok(p) = argon2::Params::try_from(&h) else {
        return true;
    };
    let d = argon2::Params::DEFAULT;
    p.m_cost() != d.m_cost()
        || p.t_cost() != d.t_cost()
        || p.p_cost() != d.p_cost()
        || p.output_len().unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN)
            != argon2::Params::DEFAULT_OUTPUT_LEN
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// A dummy hash verified for unknown usernames, so a login for a missing
/// user costs the same time as a wrong password (no user enumeration by timing).
pub fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("not-a-real-password").unwrap_or_default())
}

/// 256 random bits, hex: what the client keeps to resume.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// What the store keeps: a leaked database does not leak live tokens.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// What the node keeps of the admin token (`--admin-token`): its SHA-256.
pub fn admin_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `given` is the admin token, in time independent of where they
/// differ: both sides are hashed (so neither length nor a common prefix
/// shows) and the digests compared with an accumulated XOR that does not
/// stop early (`black_box` keeps the optimizer from short-circuiting it).
pub fn admin_token_matches(given: &str, digest: &[u8; 32]) -> bool {
    let g: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let diff = g
        .iter()
        .zip(digest)
        .fold(0u8, |acc, (a, b)| std::hint::black_box(acc | (a ^ b)));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_tokens_differ() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a phc string"));
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn the_admin_token_matches_only_itself() {
        let d = admin_digest("s3cret-admin-token");
        assert!(admin_token_matches("s3cret-admin-token", &d));
        for wrong in [
            "",
            "s3cret-admin-toke",
            "s3cret-admin-token ",
            "S3cret-admin-token",
        ] {
            assert!(!admin_token_matches(wrong, &d), "{wrong:?}");
        }
    }

    #[test]
    fn only_hashes_with_other_parameters_need_a_rehash() {
        let h = hash_password("correct horse").unwrap();
        assert!(!needs_rehash(&h), "{h}");
        // `provision --fast-hash`'s parameters.
        let p = argon2::Params::new(64, 1, 1, None).unwrap();
        let fast = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p)
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        assert!(needs_rehash(&fast), "{fast}");
        let argon2i = "$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$\
                       RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        assert!(needs_rehash(argon2i));
        assert!(needs_rehash("not a phc string"));
    }
}

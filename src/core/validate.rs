//! Input rules for names and passwords, shared by every entry point.

use super::{Decision, ErrorCode, Reject};

pub const MAX_USERNAME: usize = 32;
pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 128;
pub const MAX_GROUP_NAME: usize = 64;

/// 1–32 characters of `[A-Za-z0-9_.-]`: unambiguous to type and to display.
pub fn username(name: &str) -> Decision<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USERNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Reject(
            ErrorCode::InvalidUsername,
            "username must be 1-32 characters of A-Z a-z 0-9 _ . -",
        ))
    }
}

/// Whether a password's length is within `min..=MAX_PASSWORD` bytes (the
/// minimum is a serve option, `--min-password-len`, for migrations).
pub fn password_len_ok(pw: &str, min: usize) -> bool {
    (min..=MAX_PASSWORD).contains(&pw.len())
}

pub fn password(pw: &str) -> Decision<()> {
    if password_len_ok(pw, MIN_PASSWORD) {
        Ok(())
    } else {
        Err(Reject(
            ErrorCode::InvalidPassword,
            "password must be 8-128 bytes",
        ))
    }
}

pub fn group_name(name: &str) -> Decision<()> {
    if !name.trim().is_empty()
        && name.len() <= MAX_GROUP_NAME
        && !name.chars().any(char::is_control)
    {
        Ok(())
    } else {
        Err(Reject(
            ErrorCode::InvalidName,
            "group name must be 1-64 bytes of printable text",
        ))
    }
}

/// Largest message body for a given frame limit: the envelope and message
/// fields around the body need some room.
pub fn max_body(max_frame: usize) -> usize {
    max_frame.saturating_sub(1024)
}

/// Per-message bytes of a `ChatMessage` besides its strings (fields,
/// vtable, offsets, alignment), generously rounded up.
const MESSAGE_OVERHEAD: usize = 128;

/// How many messages, of the given string sizes in order, fit in one frame
/// of `max_frame` bytes. Always at least one (every stored body was accepted
/// under the same limit), so a page never stalls.
pub fn fit_in_frame(sizes: impl IntoIterator<Item = usize>, max_frame: usize) -> usize {
    let budget = max_frame.saturating_sub(256);
    let mut used = 0;
    let mut n = 0;
    for s in sizes {
        used += s + MESSAGE_OVERHEAD;
        if used > budget && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

/// Entries in a list reply page when the request asks for none (0).
pub const DEFAULT_PAGE: usize = 200;
/// The most entries a list reply page holds, whatever the request asks.
pub const MAX_PAGE: usize = 1000;

/// One page of a list ordered by ascending id: the entries with an id above
/// `after`, at most `limit` (0: [`DEFAULT_PAGE`]; capped at [`MAX_PAGE`])
/// and no more than fit one frame of `max_frame` bytes (`size`: the bytes
/// of an entry's strings). Returns the page and the cursor for the next one
/// (the last id of the page), or 0 when nothing follows.
pub fn page<T>(
    items: &[T],
    id: impl Fn(&T) -> u64,
    size: impl Fn(&T) -> usize,
    after: u64,
    limit: u32,
    max_frame: usize,
) -> (&[T], u64) {
    let start = items.partition_point(|t| id(t) <= after);
    let rest = &items[start..];
    let limit = match limit as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let n = fit_in_frame(rest.iter().take(limit).map(&size), max_frame).min(rest.len());
    let page = &rest[..n];
    let next = if n < rest.len() {
        page.last().map(&id).unwrap_or(0)
    } else {
        0
    };
    (page, next)
}

pub fn body(text: &str, max_frame: usize) -> Decision<()> {
    if text.is_empty() {
        return Err(Reject(ErrorCode::BadRequest, "message body is empty"));
    }
    if text.len() > max_body(max_frame) {
        return Err(Reject(ErrorCode::MessageTooLarge, "message body too large"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once_and_fit() {
        let items: Vec<(u64, usize)> = (1..=2500).map(|i| (i * 3, 40)).collect();
        for (limit, max_frame) in [(0, 65536), (7, 65536), (5000, 65536), (5000, 4096)] {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                let (p, next) = page(&items, |t| t.0, |t| t.1, after, limit, max_frame);
                assert!(!p.is_empty());
                assert!(p.len() <= MAX_PAGE);
                assert!(p.len() * (40 + MESSAGE_OVERHEAD) <= max_frame);
                seen.extend(p.iter().map(|t| t.0));
                if next == 0 {
                    break;
                }
                after = next;
            }
            assert_eq!(seen, items.iter().map(|t| t.0).collect::<Vec<_>>());
        }
        let (p, next) = page(&items, |t| t.0, |t| t.1, 7500, 0, 65536);
        assert!(p.is_empty() && next == 0);
    }

    #[test]
    fn pages_fit_the_frame_limit() {
        assert_eq!(fit_in_frame([10usize; 5], 65536), 5);
        assert_eq!(fit_in_frame([30_000usize; 5], 65536), 2);
        // One oversized message still goes alone rather than stalling.
        assert_eq!(fit_in_frame([65_100usize, 10], 65536), 1);
        assert_eq!(fit_in_frame(Vec::<usize>::new(), 65536), 0);
    }

    #[test]
    fn usernames() {
        assert!(username("alice_01.x-y").is_ok());
        assert!(username("").is_err());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(username("al ice").is_err());
        assert!(username("ålice").is_err());
        assert!(username("a%b").is_err());
    }

    #[test]
    fn passwords_and_bodies() {
        assert!(password("1234567").is_err());
        assert!(password("12345678").is_ok());
        assert!(password(&"x".repeat(129)).is_err());
        assert_eq!(body("", 65536).unwrap_err().0, ErrorCode::BadRequest);
        assert!(body(&"x".repeat(60_000), 65536).is_ok());
        assert_eq!(
            body(&"x".repeat(65_000), 65536).unwrap_err().0,
            ErrorCode::MessageTooLarge
        );
        assert!(group_name("  ").is_err());
        assert!(group_name("rust 🦀").is_ok());
    }
}

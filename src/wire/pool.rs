//! Read buffers lent to connections only while bytes are in them.
//!
//! A connection waiting for its peer needs no buffer: glommio reads
//! readiness-first (a non-blocking `recv`, else a poll for readability),
//! so the slice given to a read is touched only inside the poll that
//! returns data. The readers ([`crate::wire::FrameBuf`],
//! [`crate::wire::ws::WsIn`]) take a buffer from this thread's free list
//! when they read and give it back as soon as every byte in it was made
//! into frames, and the server's read loops give it back when a read is
//! pending (`server::io::read_lent`). 19k idle connections then hold no
//! read buffer at all, instead of 1 KiB each (4 KiB on the old protocol),
//! and a busy connection reuses a warm buffer instead of a fresh
//! allocation per read. docs/ARCHITECTURE.md "Memory per connection".
//!
//! One free list per thread (one per shard), capped at [`MAX_FREE`], so a
//! burst of busy connections leaves at most 1 MiB behind.

use std::cell::RefCell;

/// Size of a pooled buffer. A larger frame grows its own buffer, which is
/// freed (not pooled) once it is consumed.
pub const BUF: usize = 4096;
/// Free buffers kept per thread.
pub const MAX_FREE: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of [`BUF`] bytes (contents unspecified), from the free list if
/// it has one.
pub fn take() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; BUF])
}

/// Gives a buffer back: pooled if it is a pool-sized one and the free list
/// has room, freed otherwise.
pub fn give(v: Vec<u8>) {
    if v.len() != BUF {
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < MAX_FREE {
            f.push(v);
        }
    });
}

/// Buffers on this thread's free list.
pub fn free() -> usize {
    FREE.with(|f| f.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_free_list_is_bounded() {
        let a = take();
        assert_eq!(a.len(), BUF);
        let p = a.as_ptr();
        give(a);
        assert_eq!(free(), 1);
        let again = take();
        assert_eq!(again.as_ptr(), p, "the freed buffer is lent again");
        give(again);
        assert_eq!(take().len(), BUF);
        let many: Vec<_> = (0..MAX_FREE + 10).map(|_| take()).collect();
        assert_eq!(free(), 0);
        many.into_iter().for_each(give);
        assert_eq!(free(), MAX_FREE);
        give(vec![0; BUF * 2]);
        assert_eq!(free(), MAX_FREE, "a grown buffer is not pooled");
    }
}

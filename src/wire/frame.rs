//! Frame splitting: a frame is a FlatBuffers *size-prefixed* buffer (`u32`
//! little-endian length, then that many bytes; the prefix belongs to the
//! buffer and alignment counts from it, see docs/PROTOCOL.md "Framing").
//!
//! Sans-IO: the caller reads socket bytes into [`FrameBuf::spare`], commits
//! them with [`FrameBuf::filled`], then pops complete frames with
//! [`FrameBuf::next_frame`]. TCP may split or coalesce frames at any byte; the
//! splitter only ever looks at what has fully arrived, so every boundary is
//! handled by the same code path. Frames are returned as ranges into the
//! buffer so handlers read a verified view in place (zero-copy).

use std::ops::Range;

/// Bytes of the length prefix.
pub const PREFIX: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
}

pub struct FrameBuf {
    buf: Vec<u8>,
    /// Start of unconsumed bytes.
    start: usize,
    /// End of received bytes.
    end: usize,
    max_frame: usize,
}

impl FrameBuf {
    /// An empty splitter: it holds no buffer until bytes arrive (one is
    /// lent from [`crate::wire::pool`] then).
    pub fn new(max_frame: usize) -> FrameBuf {
        FrameBuf {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Gives the buffer back once everything in it was consumed, so an idle
    /// connection holds none (see [`crate::wire::pool`]); a buffer grown for
    /// a large frame is freed.
    pub fn release_if_idle(&mut self) {
        if self.start == self.end && !self.buf.is_empty() {
            super::pool::give(std::mem::take(&mut self.buf));
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether a buffer is held (bytes are in flight).
    pub fn holds_buffer(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn with_capacity(max_frame: usize, cap: usize) -> FrameBuf {
        FrameBuf {
            buf: vec![0; cap.max(PREFIX * 2)],
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Room to read into: at least `min` bytes (grows up to one max frame).
    ///
    /// Moves pending bytes to the front first, so the buffer stays as small
    /// as the largest frame in flight instead of growing with traffic.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = super::pool::take();
        }
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < min) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Grow to hold the frame being assembled if we know its size.
        let want = self.pending_frame_len().map(|n| n + PREFIX).unwrap_or(0);
        let need = (self.end + min).max(want);
        if need > self.buf.len() {
            let new_len = need
                .next_power_of_two()
                .min(self.max_frame + PREFIX)
                .max(need);
            self.buf.resize(new_len, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Commits `n` bytes written into the slice returned by [`spare`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    fn pending_frame_len(&self) -> Option<usize> {
        if self.end - self.start < PREFIX {
            return None;
        }
        let p = &self.buf[self.start..self.start + PREFIX];
        Some(u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize)
    }

    /// The next complete frame's range (length prefix included: FlatBuffers
    /// alignment is relative to the start of the size-prefixed buffer, so
    /// the verifier must see the prefix too), `None` if incomplete.
    /// An oversized or empty length is an error: the stream cannot be
    /// resynchronised, so the caller replies and closes.
    pub fn next_frame(&mut self) -> Result<Option<Range<usize>>, FrameError> {
        let Some(len) = self.pending_frame_len() else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if self.end - self.start < PREFIX + len {
            return Ok(None);
        }
        let from = self.start;
        self.start = from + PREFIX + len;
        Ok(Some(from..self.start))
    }

    pub fn get(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Unconsumed bytes (handed over with a connection moved between shards).
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Appends raw bytes (used to seed a buffer with a handed-over remainder).
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return; // no buffer for nothing (a hand-off with no remainder)
        }
        let dst = self.spare(bytes.len());
        dst[..bytes.len()].copy_from_slice(bytes);
        self.filled(bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn drain(fb: &mut FrameBuf) -> Vec<Vec<u8>> {
        let mut out = vec![];
        while let Some(r) = fb.next_frame().unwrap() {
            out.push(fb.get(r)[PREFIX..].to_vec());
        }
        out
    }

    #[test]
    fn every_split_point_yields_the_same_frames() {
        let payloads: Vec<Vec<u8>> = (1..20u8).map(|i| vec![i; i as usize * 7]).collect();
        let stream: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        for chunk in [1usize, 2, 3, 5, 8, 13, 64, 1000, stream.len()] {
            let mut fb = FrameBuf::with_capacity(1024, 8);
            let mut got = vec![];
            for piece in stream.chunks(chunk) {
                fb.push(piece);
                got.extend(drain(&mut fb));
            }
            assert_eq!(got, payloads, "chunk size {chunk}");
            assert_eq!(fb.buffered(), 0);
        }
    }

    #[test]
    fn oversized_and_empty_frames_are_errors() {
        let mut fb = FrameBuf::new(16);
        fb.push(&17u32.to_le_bytes());
        assert_eq!(
            fb.next_frame(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        let mut fb = FrameBuf::new(16);
        fb.push(&0u32.to_le_bytes());
        assert_eq!(fb.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn max_sized_frame_fits_and_buffer_stays_bounded() {
        let mut fb = FrameBuf::with_capacity(100_000, 16);
        let p = vec![9u8; 100_000];
        for _ in 0..3 {
            for piece in frame(&p).chunks(4096) {
                let dst = fb.spare(piece.len());
                dst[..piece.len()].copy_from_slice(piece);
                fb.filled(piece.len());
            }
            assert_eq!(drain(&mut fb), vec![p.clone()]);
        }
        assert!(fb.buf.len() <= 100_000 + PREFIX + 4096 * 2);
    }

    #[test]
    fn an_idle_splitter_holds_no_buffer() {
        let mut fb = FrameBuf::new(1 << 20);
        assert!(!fb.holds_buffer());
        fb.push(&[]);
        assert!(!fb.holds_buffer(), "nothing handed over: no buffer");
        let f = frame(b"hello");
        fb.push(&f[..3]);
        fb.release_if_idle();
        assert!(fb.holds_buffer(), "a partial frame keeps its bytes");
        fb.push(&f[3..]);
        assert_eq!(drain(&mut fb), vec![b"hello".to_vec()]);
        fb.release_if_idle();
        assert!(!fb.holds_buffer());
        // A large frame grows the buffer; consumed, it is freed, not kept.
        let big = frame(&vec![1u8; 100_000]);
        fb.push(&big);
        assert_eq!(drain(&mut fb).len(), 1);
        fb.release_if_idle();
        assert!(!fb.holds_buffer());
        assert!(crate::wire::pool::free() <= 1);
        fb.push(&f);
        assert_eq!(drain(&mut fb), vec![b"hello".to_vec()]);
    }
}

//! Small I/O building blocks for one executor: a single-waiter signal, the
//! per-connection outbound queue, and read/write halves of one socket.

use crate::wire::ws;
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Wakes one waiting task. Notifications before the wait are not lost.
#[derive(Default)]
pub struct Signal {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// An outbound frame: owned by this connection, or shared by every
/// recipient of one push (encoded once, never per recipient).
pub enum Frame {
    Own(Vec<u8>),
    Shared(Arc<[u8]>),
    /// Bytes already in another protocol's encoding (legacy JSON), written
    /// as they are; every other frame is FlatBuffers.
    Raw(Vec<u8>),
}

impl Frame {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Frame::Own(v) | Frame::Raw(v) => v,
            Frame::Shared(a) => a,
        }
    }
}

/// Frames waiting to be written to one connection.
///
/// Bounded by bytes: a consumer that falls `limit` bytes behind is cut off
/// (it catches up from the store when it comes back) instead of growing the
/// server's memory or silently dropping messages.
pub struct Outbound {
    q: RefCell<VecDeque<Frame>>,
    bytes: Cell<usize>,
    limit: usize,
    closing: Cell<bool>,
    pub overflowed: Cell<bool>,
    pub ready: Signal,
    pub drained: Signal,
}

impl Outbound {
    pub fn new(limit: usize) -> Outbound {
        Outbound {
            q: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            limit,
            closing: Cell::new(false),
            overflowed: Cell::new(false),
            ready: Signal::default(),
            drained: Signal::default(),
        }
    }

    /// Queues a frame; false if the connection is closing or just overflowed.
    pub fn push(&self, f: Frame) -> bool {
        if self.closing.get() {
            return false;
        }
        let n = self.bytes.get() + f.bytes().len();
        if n > self.limit {
            self.overflowed.set(true);
            self.close();
            return false;
        }
        self.bytes.set(n);
        self.q.borrow_mut().push_back(f);
        self.ready.notify();
        true
    }

    pub fn push_own(&self, bytes: &[u8]) -> bool {
        self.push(Frame::Own(bytes.to_vec()))
    }

    /// Stop accepting frames; the writer flushes what is queued, then shuts the socket.
    pub fn close(&self) {
        self.closing.set(true);
        self.ready.notify();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    pub fn queued_bytes(&self) -> usize {
        self.bytes.get()
    }

    /// Takes the oldest queued frame, for writers that transform frames
    /// before writing them (the legacy protocol's).
    pub fn pop(&self) -> Option<Frame> {
        let f = self.q.borrow_mut().pop_front()?;
        self.bytes.set(self.bytes.get() - f.bytes().len());
        Some(f)
    }

    /// Frees the queue's memory while nothing is queued (the writer goes
    /// idle): an idle connection holds no queue slots.
    pub fn release_if_empty(&self) {
        let mut q = self.q.borrow_mut();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
    }

    /// Drops everything queued (the writer is gone).
    pub fn discard(&self) {
        self.q.borrow_mut().clear();
        self.bytes.set(0);
        self.drained.notify();
    }

    /// Moves queued frames into `buf` (coalescing into one write) up to
    /// `max` bytes. On a WebSocket connection (`ws` is our role) each
    /// native frame becomes one binary message, and `Raw` frames (control
    /// frames, already WebSocket-framed) go as they are. Returns whether a
    /// Close frame was among them.
    fn drain_framed(&self, buf: &mut Vec<u8>, max: usize, ws: Option<ws::Role>) -> bool {
        let mut q = self.q.borrow_mut();
        let mut closed = false;
        while let Some(f) = q.front() {
            let b = f.bytes();
            if !buf.is_empty() && buf.len() + b.len() > max {
                break;
            }
            match (ws, f) {
                (Some(role), Frame::Own(_) | Frame::Shared(_)) => ws::encode_binary(role, b, buf),
                (Some(_), Frame::Raw(_)) => {
                    closed |= b.first() == Some(&ws::CLOSE_BYTE);
                    buf.extend_from_slice(b);
                }
                (None, _) => buf.extend_from_slice(b),
            }
            self.bytes.set(self.bytes.get() - b.len());
            q.pop_front();
        }
        closed
    }

    /// Waits until fewer than `mark` bytes are queued (backpressure for
    /// producers such as the catch-up replay).
    pub async fn wait_below(&self, mark: usize) {
        while self.bytes.get() >= mark && !self.closing.get() {
            self.drained.wait().await;
        }
    }
}

/// Shared socket: the reader task and the writer task each borrow it only
/// inside a single poll, so the borrows never overlap (one thread, and
/// glommio keeps separate read and write sources per stream).
pub type SharedStream = Rc<RefCell<TcpStream>>;

pub struct ReadHalf(pub SharedStream);
pub struct WriteHalf(pub SharedStream);

impl futures_lite::AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.0.borrow_mut();
        Pin::new(&mut *s).poll_read(cx, buf)
    }
}

impl futures_lite::AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.0.borrow_mut();
        Pin::new(&mut *s).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.borrow_mut();
        Pin::new(&mut *s).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.borrow_mut();
        Pin::new(&mut *s).poll_close(cx)
    }
}

/// One read into a buffer that `b` holds only while bytes are in it:
/// `spare` lends room (taking a buffer from `wire::pool` if `b` has none),
/// and when the read has to wait, `release` gives an empty buffer back, so
/// a connection waiting for its peer holds no read buffer.
///
/// Sound because glommio's `TcpStream` reads readiness-first: a pending
/// read has copied nothing into the slice (it polls for readability and
/// makes a fresh non-blocking `recv` with the next poll's slice).
pub async fn read_lent<R, B>(
    r: &mut R,
    b: &mut B,
    spare: fn(&mut B) -> &mut [u8],
    release: fn(&mut B),
) -> io::Result<usize>
where
    R: futures_lite::AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| match Pin::new(&mut *r).poll_read(cx, spare(b)) {
        Poll::Pending => {
            release(b);
            Poll::Pending
        }
        ready => ready,
    })
    .await
}

/// One read into a buffer lent from `wire::pool` for that poll only, the
/// bytes handed to `sink` (for readers that copy anyway, such as the old
/// protocol's JSON splitter).
pub async fn read_pooled<R>(r: &mut R, mut sink: impl FnMut(&[u8])) -> io::Result<usize>
where
    R: futures_lite::AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        let mut buf = crate::wire::pool::take();
        let res = Pin::new(&mut *r).poll_read(cx, &mut buf);
        if let Poll::Ready(Ok(n)) = res {
            sink(&buf[..n]);
        }
        crate::wire::pool::give(buf);
        res
    })
    .await
}

/// Largest single coalesced write.
const MAX_WRITE: usize = 256 << 10;

/// Drains `out` into the socket until the queue is closed and empty or the
/// peer goes away. Many queued frames become one `write` call.
pub async fn writer_loop(out: Rc<Outbound>, stream: SharedStream) {
    writer_loop_framed(out, stream, None).await
}

/// [`writer_loop`] for a connection whose frames travel as WebSocket
/// messages (`ws`: our role) or plain (`None`). A WebSocket connection
/// ends with a Close frame: the one queued (a protocol error, the peer's
/// close echoed), or else 1000, or 1008 for a slow consumer cut off.
pub async fn writer_loop_framed(out: Rc<Outbound>, stream: SharedStream, ws: Option<ws::Role>) {
    use futures_lite::AsyncWriteExt;
    let mut w = WriteHalf(stream.clone());
    // Allocated on demand and released when the queue runs dry: 10k idle
    // connections must not each hold a write buffer.
    let mut buf = Vec::new();
    let mut close_sent = false;
    loop {
        buf.clear();
        close_sent |= out.drain_framed(&mut buf, MAX_WRITE, ws);
        if buf.is_empty() {
            if out.is_closing()
                && !close_sent
                && let Some(role) = ws
            {
                close_sent = true;
                let (code, why) = if out.overflowed.get() {
                    (ws::code::POLICY, "slow consumer")
                } else {
                    (ws::code::NORMAL, "")
                };
                let _ = w.write_all(&ws::close_frame(role, code, why)).await;
            }
            buf = Vec::new();
            out.release_if_empty();
            out.drained.notify();
            if out.is_closing() {
                break;
            }
            out.ready.wait().await;
            continue;
        }
        if w.write_all(&buf).await.is_err() {
            out.close();
            break;
        }
        out.drained.notify();
    }
    // Drop anything still queued and wake the reader out of its read.
    out.q.borrow_mut().clear();
    out.bytes.set(0);
    out.drained.notify();
    shutdown_now(&stream);
}

/// Shuts both directions at once (a plain non-blocking syscall, so no
/// borrow of the stream is held across an await while the reader polls).
pub fn shutdown_now(stream: &SharedStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.borrow().as_raw_fd();
    // SAFETY: fd is owned by the stream, which is alive.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_is_bounded_and_cuts_off_instead_of_dropping() {
        let out = Outbound::new(100);
        assert!(out.push_own(&[1; 40]));
        assert!(out.push(Frame::Shared(Arc::from(&[2u8; 40][..]))));
        assert_eq!(out.queued_bytes(), 80);
        // The frame that would pass the limit is refused and the connection
        // is marked for closing: it is never queued partially or silently lost.
        assert!(!out.push_own(&[3; 40]));
        assert!(out.overflowed.get());
        assert!(out.is_closing());
        assert!(
            !out.push_own(&[4; 1]),
            "nothing is queued after the cut-off"
        );
        // What was queued before still drains, coalesced into one buffer.
        let mut buf = Vec::new();
        out.drain_framed(&mut buf, 1 << 20, None);
        assert_eq!(buf.len(), 80);
        assert_eq!((buf[0], buf[79]), (1, 2));
        assert_eq!(out.queued_bytes(), 0);
    }

    #[test]
    fn a_notification_before_the_wait_is_not_lost() {
        let s = Signal::default();
        s.notify();
        futures_lite::future::block_on(s.wait());
        // Consumed: the next wait would block until the next notify.
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(s.wait())).is_none()
        );
    }

    #[test]
    fn coalescing_respects_the_write_size() {
        let out = Outbound::new(1 << 20);
        for i in 0..10u8 {
            out.push_own(&[i; 100]);
        }
        let mut buf = Vec::new();
        out.drain_framed(&mut buf, 250, None);
        assert_eq!(buf.len(), 200, "whole frames only, up to the limit");
        buf.clear();
        out.drain_framed(&mut buf, 1 << 20, None);
        assert_eq!(buf.len(), 800);
        assert_eq!(buf[0], 2);
    }
}

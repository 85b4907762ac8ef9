//! A connection's byte stream with its deadlines:
//!
//! - **write**: a write (or flush) that makes no progress for `write_timeout` fails with
//!   `TimedOut`, so a client that never reads its response cannot hold a connection and its
//!   buffers forever;
//! - **idle**: a read that waits for `idle_timeout` with nothing read or written since fails,
//!   closing keep-alive connections nobody uses (HTTP/2 included);
//! - **head** (public listeners): from the connection's start, and once a client has sent a
//!   byte after an answer, an answer must be written within `head_timeout`, or its next read
//!   fails — a request head dribbled out a byte at a time (slowloris) is cut off, and so is a
//!   new connection that sends nothing at all (else it would be held for the idle timeout, and
//!   a few hundred a second would fill the connection cap). A keep-alive connection between
//!   requests is the idle deadline's. Public requests carry no body, so this is hyper's header
//!   read timeout without hyper's timer, which armed and disarmed a timer-wheel entry (a lock
//!   and an allocation) for every request. The admin listener, whose uploads can be long,
//!   keeps hyper's.
//!
//! Each deadline starts at the first `Pending` after progress and is cleared by progress:
//! bytes written clear all three, bytes read clear only the idle one. Where it starts is read
//! from the kernel's coarse clock (see [`coarse_now`]).
//!
//! It also tells the connection's [`Pipeline`] each time the client is waited for, so the
//! service can count the requests it answers to a client that sends without pausing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};

pub struct Deadlines<T> {
    inner: T,
    write: Deadline,
    idle: Deadline,
    head: Option<Deadline>,
    /// A new connection, or bytes read since the last answer was written: the head deadline
    /// runs.
    heard: bool,
    pipeline: Pipeline,
}

/// HTTP/1 requests answered on one connection since its client was last waited for (a read
/// that found nothing) or since the connection last yielded. A browser or CDN sends a request
/// and waits for the answer, so this stays at 1; a client that pipelines (or never reads, its
/// answers piling up in the socket) makes it climb, and the service then yields to the other
/// connections every few answers (see `server::PIPELINE_BURST`).
#[derive(Clone, Default)]
pub struct Pipeline(Arc<AtomicU32>);

impl Pipeline {
    /// Counts one request; returns how many have been answered without a pause, this one
    /// included. Only the connection's task touches it, so a load and a store suffice.
    pub fn answer(&self) -> u32 {
        let n = self.0.load(Ordering::Relaxed).saturating_add(1);
        self.0.store(n, Ordering::Relaxed);
        n
    }

    /// The client was waited for, or the connection yielded: the count starts over.
    pub fn restart(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// One deadline. Its timer is made once per connection and never moved on the busy path:
/// progress only marks the deadline stale, the next `Pending` notes when it restarts, and a
/// timer that fires before the current deadline is pushed out then — once per timeout period
/// at most, instead of a trip through the timer wheel per request.
struct Deadline {
    after: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current deadline started (the first `Pending` after progress).
    since: Instant,
    /// Progress since `since`: the deadline restarts at the next `Pending`.
    stale: bool,
    /// The task the timer was last polled for (it wakes that one).
    waker: Option<Waker>,
}

impl Deadline {
    fn new(after: Duration) -> Deadline {
        Deadline {
            after,
            timer: None,
            since: coarse_now(),
            stale: true,
            waker: None,
        }
    }

    fn progress(&mut self) {
        self.stale = true;
    }

    /// Called on `Pending`: starts the deadline if progress was made since it started, and
    /// polls it; true means it has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.stale {
            self.stale = false;
            self.since = coarse_now();
        }
        let due = self.since + self.after;
        let timer = self.timer.get_or_insert_with(|| Box::pin(sleep_until(due)));
        // Registered for this task already and not fired: nothing to do (polling the timer
        // again would only re-register the same waker, on every request).
        if !timer.is_elapsed() && self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        self.waker = Some(cx.waker().clone());
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= due {
                // Restart, so a caller that polls again after the error does not spin.
                self.stale = true;
                return true;
            }
            // Set for an earlier deadline: move it to this one and wait again.
            timer.as_mut().reset(due);
        }
    }
}

/// Now, to within a clock tick (1–4 ms), which is plenty for deadlines of a second or more.
/// A keep-alive connection starts its idle deadline twice per request; the kernel's coarse
/// monotonic clock is one load from the vDSO page, where `Instant::now` reads and scales the
/// TSC (about 25 ns here; these were two of the six precise reads a request made). The coarse clock counts from
/// the same origin as `Instant`'s, so one pair of readings, taken once, converts between them.
fn coarse_now() -> Instant {
    // Through libc, whose `clock_gettime` uses the vDSO where there is one and the syscall
    // where there is not (under valgrind, rustix's own vDSO lookup faulted).
    let coarse = || {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `t` is a valid timespec for the call to fill; the clock id is a constant.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    static ORIGIN: OnceLock<(Instant, Duration)> = OnceLock::new();
    let (at, coarse_at) = *ORIGIN.get_or_init(|| (Instant::now(), coarse()));
    at + coarse().saturating_sub(coarse_at)
}

/// How long a connection may wait for each thing (`head`: `None` for no head deadline).
#[derive(Clone, Copy)]
pub struct Timeouts {
    pub write: Duration,
    pub idle: Duration,
    pub head: Option<Duration>,
}

impl<T> Deadlines<T> {
    pub fn new(inner: T, t: Timeouts, pipeline: Pipeline) -> Self {
        Deadlines {
            inner,
            write: Deadline::new(t.write),
            idle: Deadline::new(t.idle),
            head: t.head.map(Deadline::new),
            heard: true,
            pipeline,
        }
    }

    /// A request is due now, whatever was written before: after a TLS handshake, whose own
    /// writes would otherwise leave a connection that then sends nothing to the idle deadline.
    pub fn await_request(&mut self) {
        self.heard = true;
        if let Some(head) = &mut self.head {
            head.progress();
        }
    }

    /// Bytes written: every deadline starts over, and the head deadline waits for the next
    /// byte read.
    fn progress(&mut self) {
        self.write.progress();
        self.idle.progress();
        self.heard = false;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                // Reading is progress for the idle deadline only: a client that keeps sending
                // but never reads must still hit the write deadline.
                if buf.filled().len() > before {
                    this.idle.progress();
                    if !this.heard {
                        // The first byte since the last answer: the head deadline starts now,
                        // and more bytes do not move it.
                        this.heard = true;
                        if let Some(head) = &mut this.head {
                            head.progress();
                        }
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                this.pipeline.restart();
                if this.idle.expired(cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")));
                }
                if let (true, Some(head)) = (this.heard, &mut this.head) {
                    if head.expired(cx) {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "header read timeout")));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlines<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.write.expired(cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write timeout")));
                }
                Poll::Pending
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.write.expired(cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write timeout")));
                }
                Poll::Pending
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.write.progress();
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.write.expired(cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write timeout")));
                }
                Poll::Pending
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! A connection's byte stream with two deadlines hyper does not have:
//!
//! - **write**: a write (or flush) that makes no progress for `write_timeout` fails with
//!   `TimedOut`, so a client that never reads its response cannot hold a connection and its
//!   buffers forever;
//! - **idle**: a read that waits for `idle_timeout` with nothing read or written since fails,
//!   closing keep-alive connections nobody uses (hyper's HTTP/1 header timer covers a request
//!   that has started; this covers the rest, HTTP/2 included).
//!
//! Each deadline starts at the first `Pending` after progress and is cleared by progress:
//! bytes written clear both, bytes read clear only the idle one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};

pub struct Deadlines<T> {
    inner: T,
    write: Deadline,
    idle: Deadline,
}

/// One deadline. Its timer is made once per connection and then only moved: progress just
/// marks it stale, and the next `Pending` pushes it out (for tokio a later deadline is an
/// atomic update, not a trip through the timer wheel), so a busy keep-alive connection does
/// not allocate, register and cancel a timer per request.
struct Deadline {
    after: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Progress since the timer was last set: it must restart from the next `Pending`.
    stale: bool,
}

impl Deadline {
    fn new(after: Duration) -> Deadline {
        Deadline {
            after,
            timer: None,
            stale: true,
        }
    }

    fn progress(&mut self) {
        self.stale = true;
    }

    /// Called on `Pending`: starts the deadline if progress was made since it was set, and
    /// polls it; true means it has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.stale {
            self.stale = false;
            let at = Instant::now() + self.after;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(sleep_until(at))),
            }
        }
        let Some(t) = &mut self.timer else { return false };
        if t.as_mut().poll(cx).is_ready() {
            // Re-arm so a caller that polls again after the error does not spin.
            self.stale = true;
            return true;
        }
        false
    }
}

impl<T> Deadlines<T> {
    pub fn new(inner: T, write_timeout: Duration, idle_timeout: Duration) -> Self {
        Deadlines {
            inner,
            write: Deadline::new(write_timeout),
            idle: Deadline::new(idle_timeout),
        }
    }

    /// Bytes written: both deadlines start over.
    fn progress(&mut self) {
        self.write.progress();
        self.idle.progress();
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
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.idle.expired(cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")));
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

//! 414 for an HTTP/1 request line over `http.max_uri_bytes`, on the public listeners.
//!
//! hyper answers 431 to any head past its buffer (`http.max_header_bytes`), a long URI
//! included, and its own 414 only past 64 KiB of URI inside a head that fits, which cannot
//! happen here. So the connection's plaintext is watched, above TLS: from the first byte of a
//! request (a new connection, or the first byte read after an answer was written) up to the
//! first `\n`. A line that runs past the limit gets a 414 written here, the write side shut,
//! and what the client still sends read and dropped for a moment (up to 256 KiB) before the
//! read fails and hyper closes the connection: closing with unread bytes would send a reset,
//! and the client could lose the answer.
//!
//! The 414 waits until hyper has flushed what it wrote before (an answer to a pipelined
//! request), so it never lands inside another answer. A `100 Continue` does not count as an
//! answer: the body that follows it is not a request line.
//!
//! Cost on the busy path: a request whose whole head arrives in one read, within the limit,
//! costs a four-byte compare; otherwise one `memchr` over its request line. An HTTP/2
//! connection (its preface is `PRI * HTTP/2.0`) is not watched after the preface. A client
//! that pipelines may have a read start inside a later request's head; that read is taken for
//! a request line only if it starts with a capital letter (a method), so a header line that
//! starts such a read and runs past the limit gets 414 (hyper would have taken it up to
//! `max_header_bytes`). Pipelined request lines after the first in one read are not watched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const ANSWER: &[u8] = b"HTTP/1.1 414 URI Too Long\r\ncontent-type: text/plain\r\ncache-control: no-store\r\ncontent-length: 13\r\nconnection: close\r\n\r\nURI too long\n";
/// What is read and dropped after the answer before the connection is closed.
const DRAIN_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// The next byte read starts a request line.
    Due,
    /// Inside a request line, this many bytes of it read.
    Reading(usize),
    /// Past this request's line (until the next answer is written).
    Done,
    /// HTTP/2: never watched again.
    Off,
    /// The answer is being written (this much of it so far), then the client drained.
    Refusing { written: usize, shut: bool, drained: usize },
}

pub struct RequestLine<T> {
    inner: T,
    limit: usize,
    line: Line,
    /// hyper wrote bytes it has not flushed yet.
    unflushed: bool,
    /// The read waiting for that flush before it refuses.
    waiting: Option<Waker>,
}

impl<T> RequestLine<T> {
    /// `limit`: `None` watches nothing (the admin listener).
    pub fn new(inner: T, limit: Option<usize>) -> Self {
        RequestLine {
            inner,
            limit: limit.unwrap_or(usize::MAX),
            line: if limit.is_some() { Line::Due } else { Line::Off },
            unflushed: false,
            waiting: None,
        }
    }

    /// Follows the request line through newly read bytes; true once it is past the limit.
    fn too_long(&mut self, new: &[u8]) -> bool {
        let so_far = match self.line {
            Line::Due => {
                if new.starts_with(b"PRI ") {
                    self.line = Line::Off;
                    return false;
                }
                // A whole head in one read, no longer than the limit (a GET, nearly always):
                // its line is shorter still, and no byte needs looking at.
                let whole_head = new.len() <= self.limit && new.ends_with(b"\r\n\r\n");
                if whole_head || !new.first().is_some_and(u8::is_ascii_uppercase) {
                    self.line = Line::Done;
                    return false;
                }
                0
            }
            Line::Reading(n) => n,
            _ => return false,
        };
        // The line's CR, before its LF, is not counted.
        let limit = self.limit.saturating_add(1);
        match memchr::memchr(b'\n', new) {
            Some(end) => {
                self.line = Line::Done;
                so_far + end > limit
            }
            None => {
                self.line = Line::Reading(so_far + new.len());
                so_far + new.len() > limit
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> RequestLine<T> {
    /// Writes the 414, shuts the write side, then reads and drops until the client closes
    /// or `DRAIN_BYTES` were dropped; then the read fails (hyper closes the connection).
    fn refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let closed = || Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "request line too long")));
        if self.unflushed {
            // hyper flushes what it wrote on this same task; `poll_flush` wakes this read.
            self.waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
        loop {
            let Line::Refusing { written, shut, drained } = &mut self.line else {
                return closed();
            };
            if *written < ANSWER.len() {
                match Pin::new(&mut self.inner).poll_write(cx, &ANSWER[*written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => *written += n,
                    Poll::Ready(_) => return closed(),
                    Poll::Pending => return Poll::Pending,
                }
            } else if !*shut {
                match Pin::new(&mut self.inner).poll_shutdown(cx) {
                    Poll::Ready(_) => *shut = true,
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                let mut scratch = [0u8; 4096];
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() && *drained < DRAIN_BYTES => {
                        *drained += buf.filled().len()
                    }
                    Poll::Ready(_) => return closed(),
                    // The connection's deadlines (below) end a client that stops sending.
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for RequestLine<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.line, Line::Refusing { .. }) {
            return this.refuse(cx);
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && this.too_long(&buf.filled()[before..]) {
            // hyper never sees these bytes: it waits on this read until the connection ends.
            buf.set_filled(before);
            this.line = Line::Refusing {
                written: 0,
                shut: false,
                drained: 0,
            };
            return this.refuse(cx);
        }
        r
    }
}

impl<T> RequestLine<T> {
    /// hyper wrote `first` (the start of what it wrote): an answer, unless an interim
    /// `100 Continue`, makes the next byte read the start of a request.
    fn wrote(&mut self, first: &[u8]) {
        self.unflushed = true;
        if self.line == Line::Done && !first.starts_with(b"HTTP/1.1 1") {
            self.line = Line::Due;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for RequestLine<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote(buf);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            self.wrote(first);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.unflushed = false;
            if let Some(w) = self.waiting.take() {
                w.wake();
            }
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(limit: usize) -> RequestLine<()> {
        RequestLine::new((), Some(limit))
    }

    #[test]
    fn a_line_is_followed_across_reads_and_rearmed_only_by_an_answer() {
        let mut w = watch(20);
        assert!(!w.too_long(b"GET /0123456789"));
        assert!(!w.too_long(b"abcde"), "20 bytes so far");
        assert!(!w.too_long(b"\r"), "its CR is not counted");
        assert!(!w.too_long(b"\nHost: x\r\n"));
        let mut w = watch(20);
        assert!(!w.too_long(b"GET /0123456789abcde"));
        assert!(w.too_long(b"fg"), "22 bytes, no end yet");

        let mut w = watch(20);
        assert!(!w.too_long(b"GET /short HTTP/1.1\r\nHost: a-very-long-header-line-beyond-20\r\n"));
        assert_eq!(w.line, Line::Done, "headers are not watched");
        assert!(!w.too_long(b"X-More: 0123456789012345678901234567890\r\n"));
        let mut w = watch(20);
        assert!(
            w.too_long(b"GET /0123456789012345678 HTTP/1.1\r\n"),
            "ended, but past it"
        );
    }

    #[test]
    fn an_answer_rearms_the_watch_and_an_interim_100_continue_does_not() {
        let mut w = watch(30);
        assert!(!w.too_long(b"POST /webhooks HTTP/1.1\r\n"));
        w.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(w.line, Line::Done, "the body follows");
        assert!(!w.too_long(b"{\"A\":\"01234567890123456789012345678901234567890\"}"));
        w.wrote(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(w.line, Line::Due);
        assert!(w.unflushed);
    }

    #[test]
    fn http2_and_reads_that_are_not_a_request_start_are_not_watched() {
        let mut w = watch(20);
        assert!(!w.too_long(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert_eq!(w.line, Line::Off);
        assert!(!w.too_long(&[b'A'; 100]), "frames after the preface");
        let mut w2 = watch(20);
        assert!(!w2.too_long(b"okie=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
        assert_eq!(w2.line, Line::Done, "a read inside a pipelined head");
    }
}

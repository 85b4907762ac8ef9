//! The one retry policy every sink shares: what a failure is (a small, bounded [`ErrorKind`]
//! that becomes the `kind` label of `cartlink_sink_errors_total`), whether it is worth
//! retrying, and how long to wait before the next attempt.
//!
//! Status table (HTTP, and what the other sinks map onto it):
//!
//! | outcome | kind | retried |
//! |---|---|---|
//! | 2xx | – | delivered |
//! | connection refused / reset / DNS | `connect` | yes |
//! | no answer within the timeout | `timeout` | yes |
//! | 429 Too Many Requests | `status_429` | yes |
//! | 408 Request Timeout | `status_408` | yes |
//! | 5xx | `status_5xx` | yes |
//! | 400, 413, 415, 422: the content refused | `status_4xx` | no: the batch is dropped, counted as `dropped{reason="sink_rejected"}` |
//! | any other (401, 403, 404, 409, a 3xx…): the endpoint, not the content | `status_other` | yes |
//! | local write error (file sink, ENOSPC…) | `io` | yes |
//! | JetStream publish not acknowledged | `ack` | yes |
//!
//! Backoff: exponential from `base`, doubling per failure, capped at `cap`, with "equal jitter"
//! (each delay is uniformly in `[ceiling/2, ceiling]`) so a fleet of edges that lost the same
//! collector does not come back in lockstep. Attempts are unlimited; only the drain deadline
//! ends them (the batch then goes to the disk spill).

use std::time::Duration;

/// Why a sink write failed, reduced to a label-safe set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Timeout,
    Status429,
    Status408,
    Status5xx,
    Status4xx,
    /// Neither success nor a verdict on the content: auth, path, a redirect, a conflict. A
    /// misconfigured or moved endpoint (or a proxy in front of one that is down) answers so
    /// for every batch, so dropping would lose everything until someone fixed it.
    StatusOther,
    Io,
    Ack,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Status429,
        ErrorKind::Status408,
        ErrorKind::Status5xx,
        ErrorKind::Status4xx,
        ErrorKind::StatusOther,
        ErrorKind::Io,
        ErrorKind::Ack,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status429 => "status_429",
            ErrorKind::Status408 => "status_408",
            ErrorKind::Status5xx => "status_5xx",
            ErrorKind::Status4xx => "status_4xx",
            ErrorKind::StatusOther => "status_other",
            ErrorKind::Io => "io",
            ErrorKind::Ack => "ack",
        }
    }

    /// Everything but a definitive "no" from the collector is retried.
    pub fn retriable(self) -> bool {
        !matches!(self, ErrorKind::Status4xx)
    }
}

/// A failed sink write: its kind (for metrics and the retry decision) and a message for logs.
/// The message never holds a secret (sinks build it from status codes and error kinds).
#[derive(Debug, thiserror::Error)]
#[error("{} ({detail})", kind.label())]
pub struct SinkError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl SinkError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> SinkError {
        SinkError {
            kind,
            detail: detail.into(),
        }
    }
}

/// Classifies an HTTP status: `None` for success, else the failure kind.
pub fn classify_status(status: u16) -> Option<ErrorKind> {
    match status {
        200..=299 => None,
        429 => Some(ErrorKind::Status429),
        408 => Some(ErrorKind::Status408),
        500..=599 => Some(ErrorKind::Status5xx),
        400 | 413 | 415 | 422 => Some(ErrorKind::Status4xx),
        _ => Some(ErrorKind::StatusOther),
    }
}

/// Capped exponential backoff with equal jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            next: base.min(cap),
            cap,
        }
    }

    /// The next delay, drawing jitter from the thread RNG.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// The next delay for a given uniform sample `u` in `[0, 1)`: pure, so it can be tested.
    pub fn next_delay_with(&mut self, u: f64) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.cap);
        ceiling.mul_f64(0.5 + u.clamp(0.0, 1.0) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_table() {
        assert_eq!(classify_status(200), None);
        assert_eq!(classify_status(204), None);
        for (s, retried) in [
            (429, true),
            (408, true),
            (500, true),
            (503, true),
            (400, false),
            (413, false),
            (415, false),
            (422, false),
            (401, true),
            (403, true),
            (404, true),
            (409, true),
            (301, true),
        ] {
            let k = classify_status(s).unwrap();
            assert_eq!(k.retriable(), retried, "{s}");
        }
    }

    proptest! {
        #[test]
        fn backoff_is_capped_jittered_and_grows(base_ms in 1u64..1000, cap_ms in 1u64..60_000, us in proptest::collection::vec(0.0f64..1.0, 1..40)) {
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let mut b = Backoff::new(base, cap);
            let mut ceiling = base.min(cap);
            for u in us {
                let d = b.next_delay_with(u);
                prop_assert!(d <= cap);
                prop_assert!(d <= ceiling);
                prop_assert!(d >= ceiling / 2 - Duration::from_nanos(1));
                ceiling = (ceiling * 2).min(cap);
            }
        }
    }
}

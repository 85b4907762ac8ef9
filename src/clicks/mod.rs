//! Click records and the pipeline that carries them to a sink.
//!
//! The redirect path calls [`Recorder::record`], which never waits: `try_send` into a bounded
//! queue, and a full queue is a counted drop (`cartlink_clicks_dropped_total{reason="queue_full"}`).
//! A dedicated thread batches records (count, bytes or age) and writes them to the sink
//! ([`sink`]: file, HTTP or NATS JetStream) under one retry policy ([`retry`]); while the sink
//! is down or slow, batches wait in a disk spill ([`spill`]) and are replayed in order.
//! Conservation, checked by tests at rest:
//! `accepted == delivered + dropped (all reasons) + buffered`.

pub mod batch;
pub mod file_sink;
pub mod http_sink;
pub mod nats_sink;
pub mod pipeline;
pub mod record;
pub mod retry;
pub mod sink;
pub mod spill;
pub mod syncer;

pub use pipeline::{start, Pipeline};
pub use record::{Click, Device, Served};

use crate::metrics::Metrics;
use tokio::sync::mpsc;

/// What travels through the queue: a click (encoded on the pipeline thread, off the redirect
/// path) or a record already encoded elsewhere (conversions, commissions).
pub enum Record {
    Click(Click),
    /// One JSON object with its trailing newline; its id is `"<type>_id"`.
    Encoded(Box<[u8]>),
}

/// The redirect path's handle on the pipeline.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
    metrics: Metrics,
}

impl Recorder {
    pub(crate) fn new(tx: mpsc::Sender<Record>, metrics: Metrics) -> Recorder {
        Recorder { tx, metrics }
    }

    /// Hands a click to the pipeline without waiting.
    pub fn record(&self, click: Click) {
        self.send(Record::Click(click));
    }

    /// Hands another record (a JSON object with a `type` and a `<type>_id`) to the same stream.
    pub fn emit(&self, record: &serde_json::Value) {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        self.send(Record::Encoded(line.into_boxed_slice()));
    }

    fn send(&self, record: Record) {
        self.metrics.clicks_accepted.increment(1);
        match self.tx.try_send(record) {
            Ok(()) => self.metrics.clicks_buffered.increment(1.0),
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.clicks_dropped.queue_full.increment(1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.clicks_dropped.shutdown.increment(1),
        }
    }
}

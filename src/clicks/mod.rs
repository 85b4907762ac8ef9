//! Click records and the pipeline that carries them to a sink.
//!
//! The redirect path calls [`Recorder::record`], which never waits: it encodes the record and
//! `try_send`s it into a bounded queue, and a full queue is a counted drop
//! (`cartlink_clicks_dropped_total{reason="queue_full"}`).
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

/// What travels through the queue: one encoded record, a JSON object with its trailing
/// newline, whose id is `"<type>_id"` (clicks, conversions, commissions).
pub type Record = Vec<u8>;

/// Room for a click record: they are about 420 bytes, longer only with long labels.
const CLICK_CAPACITY: usize = 512;

/// The redirect path's handle on the pipeline.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
    metrics: Metrics,
    /// This server's name, in every click record.
    edge: std::sync::Arc<str>,
}

impl Recorder {
    pub(crate) fn new(tx: mpsc::Sender<Record>, metrics: Metrics, edge: &str) -> Recorder {
        Recorder {
            tx,
            metrics,
            edge: edge.into(),
        }
    }

    /// Encodes a click and hands it to the pipeline without waiting. Encoding here rather than
    /// on the pipeline thread reads the link while it is still in this core's cache, and the
    /// queue holds no reference to the link.
    pub fn record(&self, click: &Click) {
        let mut line = Vec::with_capacity(CLICK_CAPACITY);
        click.encode(&self.edge, &mut line);
        self.send(line);
    }

    /// Hands another record (a JSON object with a `type` and a `<type>_id`) to the same stream.
    pub fn emit(&self, record: &serde_json::Value) {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        self.send(line);
    }

    fn send(&self, record: Record) {
        self.metrics.clicks_accepted.increment(1);
        match self.tx.try_send(record) {
            Ok(()) => self.metrics.clicks_buffered.increment(1),
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.clicks_dropped.queue_full.increment(1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.clicks_dropped.shutdown.increment(1),
        }
    }
}

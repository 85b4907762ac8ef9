//! Click records and the pipeline that carries them to a sink.
//!
//! The redirect path calls [`Recorder::record`], which never waits: it packs the click into
//! its thread's ring ([`ring`]), or, when that is full, `try_send`s it into the bounded overflow
//! queue (`queue_capacity`); a full queue is a counted drop
//! (`cartlink_clicks_dropped_total{reason="queue_full"}`).
//! A dedicated thread drains rings and queue on its beat, renders packed clicks as their
//! records ([`record::render`]), batches records (count, bytes or age)
//! and writes them to the sink ([`sink`]: file, HTTP or NATS JetStream) under one retry policy
//! ([`retry`]); while the sink is down or slow, batches wait in a disk spill ([`spill`]) and are
//! replayed in order. Records of one thread keep their order except across an overflow.
//! Conservation, checked by tests at rest:
//! `accepted == delivered + dropped (all reasons) + buffered`.

pub mod batch;
pub mod file_sink;
pub mod http_sink;
pub mod nats_sink;
pub mod pipeline;
pub mod record;
pub mod retry;
pub mod ring;
pub mod sink;
pub mod spill;
pub mod syncer;

pub use pipeline::{start, Pipeline};
pub use record::{Click, Device, Served};

use crate::metrics::Metrics;
use ring::{Hub, Pushed};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// One record in the overflow queue: a packed click ([`Click::pack`]), or a JSON object with its
/// trailing newline whose id is `"<type>_id"` (conversions, commissions).
pub type Record = Vec<u8>;

/// The redirect path's handle on the pipeline.
#[derive(Clone)]
pub struct Recorder {
    hub: Arc<Hub>,
    tx: mpsc::Sender<Record>,
    metrics: Metrics,
}

impl Recorder {
    pub(crate) fn new(hub: Arc<Hub>, tx: mpsc::Sender<Record>, metrics: Metrics) -> Recorder {
        Recorder { hub, tx, metrics }
    }

    /// Packs a click and hands it to the pipeline without waiting. Packing here copies the
    /// link's strings while they are still in this core's cache, so the ring holds no reference
    /// to the link; the pipeline thread writes the JSON.
    pub fn record(&self, click: &Click) {
        self.send(|line| click.pack(line));
    }

    /// Hands another record (an encoded JSON object with a `type` and a `<type>_id`, on one
    /// line) to the same stream.
    pub fn emit(&self, json: &[u8]) {
        self.send(|line| {
            line.extend_from_slice(json);
            line.push(b'\n');
        });
    }

    fn send(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        self.metrics.clicks_accepted.increment(1);
        let overflow = match self.hub.push(encode) {
            Pushed::Ring => return self.metrics.clicks_buffered.increment(1),
            Pushed::Closed => return self.metrics.clicks_dropped.shutdown.increment(1),
            Pushed::Full(record) => record,
        };
        match self.tx.try_send(overflow) {
            Ok(()) => self.metrics.clicks_buffered.increment(1),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.clicks_dropped.queue_full.increment(1);
                warn_queue_full();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.clicks_dropped.shutdown.increment(1),
        }
    }
}

/// Runs `work` on a thread of its own named `name`, with a current-thread runtime (I/O and
/// timers) to drive its futures, so that work never runs on the request workers: the click
/// pipeline, the payout sender.
pub(crate) fn own_thread(
    name: &str,
    work: impl FnOnce(&tokio::runtime::Runtime) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        work(&rt);
    })
}

/// At most one warning a second per process: a full queue means the pipeline thread is not
/// keeping up, which an operator (or a benchmark that would otherwise look cheaper than it is)
/// must see in the log as well as in the counter.
fn warn_queue_full() {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!("click queue full: dropping clicks (cartlink_clicks_dropped_total{{reason=\"queue_full\"}}); the pipeline thread is not keeping up");
    }
}

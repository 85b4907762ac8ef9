//! The pipeline: batcher → sink stage, with the disk spill beside them, on a thread of its own
//! (a current-thread runtime) so sink work never runs on the redirect workers.
//!
//! ```text
//! Recorder::record ──▶ worker's ring ─┬─▶ batcher ──try_send──▶ in-flight batches ──▶ sender ──▶ sink
//!      (ring full) ──try_send──▶ queue ┘     │  (full, spill not empty,                ▲ replay, oldest first
//!                                            │   or queue past watermark)              │
//!                                            └──────────────▶ spill (data_dir/spill) ──┘
//! ```
//!
//! - The **batcher** drains the rings ([`super::ring`]) and the overflow queue on its beat (5 ms,
//!   slowing to 25 ms while few clicks come), renders packed clicks ([`super::record::render`]) into
//!   a [`Batch`] and flushes it when it reaches `batch_max_records` or `batch_max_bytes`, or
//!   when its oldest record is `batch_max_age_ms` old. It never waits on the sink: a flushed
//!   batch goes to the bounded in-flight channel (`inflight_batches`), or — when that is full,
//!   when the spill already holds records (so replay order is kept), or when what waits in
//!   rings and queue is past `spill_watermark_pct` of `queue_capacity` — to the spill. Only a
//!   spill that is full or failing drops records, each counted by reason.
//! - The **sender** writes in-flight batches first, then replays the spill segment by segment;
//!   each write is retried under the one policy in [`super::retry`] (unlimited attempts while
//!   serving). A segment is deleted once every record in it is acknowledged. A collector that
//!   is slow rather than down puts everything behind it in the spill; to an HTTP sink a
//!   segment's batches then go `http_concurrency` at a time, so a collector that takes 2 s per
//!   request still takes 2,000 clicks a second at the defaults (four 1,000-record batches at
//!   once) instead of 500, and the backlog drains once it is faster than the click rate.
//! - **Shutdown** ([`Pipeline::shutdown`]): queue and rings are closed and drained, batches are
//!   flushed; the sender keeps delivering (and replaying) until nothing is left or the deadline
//!   passes; at the deadline an unacknowledged in-memory batch goes to the spill, to be replayed
//!   at the next start. Nothing is dropped at shutdown unless the spill cannot take it.
//!
//! Conservation, exact at rest: `accepted == delivered + dropped + buffered`, where `buffered`
//! counts records in the rings and the queue, in batches, in flight and in the spill. Records
//! found in the spill at start-up are counted as accepted (and in
//! `cartlink_clicks_recovered_total`).

use super::batch::Batch;
use super::http_sink::HttpSink;
use super::retry::Backoff;
use super::retry::SinkError;
use super::ring::{Hub, RING_BYTES};
use super::sink::Sink;
use super::spill::{Spill, SpillError};
use super::{Record, Recorder};
use crate::config::{PipelineConfig, SinkSettings};
use crate::metrics::Metrics;
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// The running pipeline; [`Pipeline::shutdown`] flushes and joins it.
pub struct Pipeline {
    stop: Option<oneshot::Sender<Instant>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pipeline {
    /// Closes the queue, delivers (or spills) everything in it, and waits for the thread. The
    /// thread stops delivering at `deadline`; what is left then is in the spill.
    pub fn shutdown(mut self, deadline: Instant) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(deadline);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("click sink: {0}")]
    Sink(String),
    #[error("click spill {path}: {source}")]
    Spill { path: String, source: std::io::Error },
}

/// Opens the spill (counting what an earlier run left there), starts the pipeline thread and
/// returns the recorder the redirect path uses.
pub fn start(
    sink: &SinkSettings,
    cfg: &PipelineConfig,
    data_dir: &Path,
    metrics: Metrics,
    edge: &str,
) -> Result<(Recorder, Pipeline), StartError> {
    let sink = Sink::new(sink, cfg).map_err(StartError::Sink)?;
    let spill_dir = data_dir.join("spill");
    let (spill, damage) = Spill::open(
        &spill_dir,
        cfg.spill_max_bytes,
        cfg.spill_segment_bytes,
        Duration::from_millis(cfg.spill_fsync_ms),
    )
    .map_err(|source| StartError::Spill {
        path: spill_dir.display().to_string(),
        source,
    })?;
    let recovered = spill.records();
    if recovered > 0 || damage.stretches > 0 {
        tracing::info!(
            records = recovered,
            segments = spill.segments(),
            damaged = damage.stretches,
            lost = damage.records,
            "spill: replaying records left by an earlier run"
        );
    }
    // Records known lost to damage were accepted by the earlier run: counted here as accepted
    // and dropped, so they show in the one drop counter and the sums still hold.
    metrics.clicks_accepted.increment(recovered + damage.records);
    metrics.clicks_dropped.spill_error.increment(damage.records);
    metrics.clicks_recovered.increment(recovered);
    metrics.clicks_buffered.increment(recovered);
    metrics.spill_corrupt.increment(damage.stretches);
    metrics.spill_bytes.set(spill.bytes() as f64);
    metrics.spill_max_bytes.set(cfg.spill_max_bytes as f64);
    metrics.spill_segments.set(spill.segments() as f64);
    metrics.sink_up.set(1.0);

    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let hub = Hub::new(RING_BYTES);
    let rings = hub.clone();
    let (stop_tx, stop_rx) = oneshot::channel();
    let cfg = cfg.clone();
    let m = metrics.clone();
    let edge: Arc<str> = edge.into();
    let thread = super::own_thread("cartlink-clicks", move |rt| {
        let shared = Shared {
            spill: RefCell::new(spill),
            metrics: m,
            deadline: Cell::new(None),
            stopping: Notify::new(),
            wake: Notify::new(),
            spill_failing: Cell::new(false),
        };
        rt.block_on(run(&shared, sink, Input { rings, queue: rx }, stop_rx, &cfg, &edge));
    })
    .map_err(|e| StartError::Sink(e.to_string()))?;
    Ok((
        Recorder::new(hub, tx, metrics),
        Pipeline {
            stop: Some(stop_tx),
            thread: Some(thread),
        },
    ))
}

/// State the batcher and the sender share; both run in one task on one thread.
struct Shared {
    spill: RefCell<Spill>,
    metrics: Metrics,
    /// Set once, when shutdown starts.
    deadline: Cell<Option<Instant>>,
    stopping: Notify,
    /// The batcher spilled something the sender should look at.
    wake: Notify,
    /// The last spill write failed (logs once per change of state, not per batch).
    spill_failing: Cell<bool>,
}

impl Shared {
    /// Resolves at the shutdown deadline (never while serving).
    async fn deadline_reached(&self) {
        loop {
            if let Some(d) = self.deadline.get() {
                tokio::time::sleep_until(d.into()).await;
                return;
            }
            self.stopping.notified().await;
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() >= d)
    }

    /// Writes a batch to the spill, or counts its records as dropped.
    fn spill_batch(&self, batch: &Batch) {
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        let m = &self.metrics;
        let result = self.spill.borrow_mut().append(batch);
        match result {
            Ok(()) => {
                m.clicks_spilled.increment(n);
                if self.spill_failing.replace(false) {
                    tracing::info!("spill: writing again");
                }
            }
            Err(e) => {
                match &e {
                    SpillError::Full => m.clicks_dropped.spill_full.increment(n),
                    SpillError::Io(_) => {
                        if e.kind() == "enospc" {
                            m.spill_errors.enospc.increment(1);
                        } else {
                            m.spill_errors.io.increment(1);
                        }
                        m.clicks_dropped.spill_error.increment(n);
                    }
                }
                m.clicks_buffered.decrement(n);
                if !self.spill_failing.replace(true) {
                    tracing::error!(error = %e, records = n, "spill: cannot take batches; dropping them (counted in cartlink_clicks_dropped_total)");
                }
            }
        }
        self.gauges();
        self.wake.notify_one();
    }

    fn gauges(&self) {
        let s = self.spill.borrow();
        self.metrics.spill_bytes.set(s.bytes() as f64);
        self.metrics.spill_segments.set(s.segments() as f64);
    }
}

/// Where records come from: the workers' rings, and the queue they overflow into.
struct Input {
    rings: Arc<Hub>,
    queue: mpsc::Receiver<Record>,
}

impl Input {
    /// Records waiting in rings and queue.
    fn depth(&self) -> usize {
        self.queue.len() + self.rings.depth() as usize
    }
}

async fn run(
    sh: &Shared,
    mut sink: Sink,
    rx: Input,
    stop: oneshot::Receiver<Instant>,
    cfg: &PipelineConfig,
    edge: &str,
) {
    let (btx, brx) = mpsc::channel(cfg.inflight_batches);
    tokio::join!(batcher(sh, rx, btx, stop, cfg, edge), sender(sh, &mut sink, brx, cfg));
    sink.close();
    let mut spill = sh.spill.borrow_mut();
    spill.close();
    if spill.records() > 0 {
        tracing::warn!(
            records = spill.records(),
            segments = spill.segments(),
            "stopped with clicks in the spill; they are replayed at the next start"
        );
    }
    drop(spill);
    sh.gauges();
}

/// The longest wait between two drains of an idle or lightly loaded pipeline (see `batcher`).
const IDLE_BEAT: Duration = Duration::from_millis(25);
/// A beat that takes fewer clicks than this lets the next one wait longer.
const BUSY_BEAT_RECORDS: usize = 256;

async fn batcher(
    sh: &Shared,
    mut rx: Input,
    out: mpsc::Sender<Batch>,
    mut stop: oneshot::Receiver<Instant>,
    cfg: &PipelineConfig,
    edge: &str,
) {
    let max_age = Duration::from_millis(cfg.batch_max_age_ms);
    let watermark = cfg.queue_capacity.saturating_mul(cfg.spill_watermark_pct as usize) / 100;
    let mut batch = Batch::new();
    let mut oldest: Option<tokio::time::Instant> = None;
    let mut stopped = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The queue is drained on this thread's own beat, never by awaiting `recv()`: a waiting
    // receiver makes every `try_send` on the redirect path wake this thread (a futex call and,
    // on a busy core, a context switch per click). Polling costs one wake-up per beat instead.
    let beat = Duration::from_millis(cfg.batch_max_age_ms.clamp(1, 5));
    // While beats find few clicks (under `BUSY_BEAT_RECORDS`, some 50k a second at 5 ms) the
    // wait doubles, up to `IDLE_BEAT` (never past the batch age), so a lightly loaded or idle
    // server wakes this thread some 40 times a second instead of 200; a beat that finds more
    // goes back to `beat`. A ring holds some 4,000 clicks, so a spike that starts during a
    // long wait still fits in the rings below about 160k clicks a second, and past that
    // overflows into the queue, as it would anyway.
    let idle_beat = IDLE_BEAT.min(max_age).max(beat);
    let mut wait = beat;
    let mut next_drain = tokio::time::Instant::now() + wait;
    let flush = |batch: &mut Batch, depth: usize| {
        if batch.is_empty() {
            return;
        }
        let b = std::mem::replace(batch, Batch::sized_like(batch));
        let spill_first = sh.spill.borrow().records() > 0 || depth > watermark;
        if spill_first {
            sh.spill_batch(&b);
        } else if let Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) = out.try_send(b) {
            sh.spill_batch(&b);
        }
    };
    loop {
        let age_flush = async {
            match oldest {
                Some(t) => tokio::time::sleep_until(t + max_age).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            d = &mut stop, if !stopped => {
                stopped = true;
                // Sender dropped without a deadline: flush with a short one.
                sh.deadline.set(Some(d.unwrap_or_else(|_| Instant::now() + Duration::from_secs(5))));
                sh.stopping.notify_waiters();
                rx.queue.close();
                rx.rings.close();
            }
            // Before the queue, which is always ready under load and would starve them.
            _ = tick.tick() => {
                sh.metrics.queue_depth.set(rx.depth() as f64);
                sh.spill.borrow_mut().maybe_sync();
            }
            () = age_flush => {
                flush(&mut batch, rx.depth());
                oldest = None;
            }
            () = tokio::time::sleep_until(next_drain) => {
                // Bounded per beat so the stop signal and ticks stay responsive under load.
                let limit = cfg.batch_max_records.max(1) * 4;
                // For the watermark: what was waiting when this beat began.
                let waiting = rx.depth();
                let mut take = |batch: &mut Batch, record: &[u8]| {
                    if !batch.push_with(|body| super::record::render(record, edge, body)) {
                        // Only a bug could cut a packed click short; counted, never written half.
                        sh.metrics.clicks_dropped.sink_rejected.increment(1);
                        sh.metrics.clicks_buffered.decrement(1);
                        tracing::error!("click pipeline: a packed click could not be read; dropped");
                        return;
                    }
                    oldest.get_or_insert_with(tokio::time::Instant::now);
                    if batch.len() >= cfg.batch_max_records || batch.bytes() >= cfg.batch_max_bytes {
                        flush(batch, waiting);
                        oldest = None;
                    }
                };
                let mut taken = rx.rings.drain(limit, |r| take(&mut batch, r));
                let mut closed = false;
                while taken < limit {
                    match rx.queue.try_recv() {
                        Ok(record) => {
                            take(&mut batch, &record);
                            taken += 1;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                // The queue closes only at shutdown, after the rings: done once both are empty.
                if closed && rx.rings.depth() == 0 {
                    break;
                }
                // Busy: past the threshold, or as many as a beat may take (small batches).
                let quiet = taken < BUSY_BEAT_RECORDS.min(limit);
                wait = if quiet && !stopped { (wait * 2).min(idle_beat) } else { beat };
                next_drain = tokio::time::Instant::now() + wait;
            }
        }
    }
    flush(&mut batch, 0);
    sh.metrics.queue_depth.set(0.0);
    // Dropping `out` closes the in-flight channel: the sender finishes what is left.
}

async fn sender(sh: &Shared, sink: &mut Sink, mut rx: mpsc::Receiver<Batch>, cfg: &PipelineConfig) {
    let mut closed = false;
    let mut next: Option<Batch> = None;
    'run: loop {
        if sh.past_deadline() {
            break;
        }
        // 1. In-flight batches, oldest first.
        let batch = match next.take() {
            Some(b) => Some(b),
            None => match rx.try_recv() {
                Ok(b) => Some(b),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    None
                }
            },
        };
        if let Some(b) = batch {
            if !deliver(sh, SinkRef::Own(sink), &b, false, cfg).await {
                sh.spill_batch(&b);
                break;
            }
            continue;
        }
        // 2. The spill, one segment at a time.
        let seg = sh.spill.borrow_mut().oldest();
        match seg {
            Ok(Some(seg)) => {
                if seg.damaged > 0 {
                    sh.metrics.spill_corrupt.increment(seg.damaged);
                    let lost = sh.spill.borrow_mut().forget_records(seg.seq, seg.records.len() as u64);
                    sh.metrics.clicks_dropped.spill_error.increment(lost);
                    sh.metrics.clicks_buffered.decrement(lost);
                }
                let batches = replay_batches(&seg.records, cfg);
                let delivered = match sink {
                    Sink::Http(h) if cfg.http_concurrency > 1 => {
                        use futures_util::StreamExt;
                        let h: &HttpSink = h;
                        futures_util::stream::iter(&batches)
                            .map(|b| deliver(sh, SinkRef::Shared(h), b, true, cfg))
                            .buffer_unordered(cfg.http_concurrency)
                            .all(std::future::ready)
                            .await
                    }
                    _ => {
                        let mut all = true;
                        for b in &batches {
                            if !deliver(sh, SinkRef::Own(sink), b, true, cfg).await {
                                all = false;
                                break;
                            }
                        }
                        all
                    }
                };
                if !delivered {
                    // Left on disk whole; replayed at the next start (duplicates by click_id).
                    break 'run;
                }
                sh.spill.borrow_mut().ack(seg.seq);
                sh.gauges();
                continue;
            }
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed behind our back: its records are gone; count them and move on.
                let lost = sh.spill.borrow_mut().discard_oldest();
                sh.metrics.spill_errors.io.increment(1);
                sh.metrics.clicks_dropped.spill_error.increment(lost);
                sh.metrics.clicks_buffered.decrement(lost);
                sh.gauges();
                tracing::error!(error = %e, records = lost, "spill: a segment vanished; its records are counted as dropped");
            }
            Err(e) => {
                sh.metrics.spill_errors.io.increment(1);
                tracing::error!(error = %e, "spill: cannot read a segment; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = sh.deadline_reached() => break,
                }
                continue;
            }
        }
        if closed {
            break;
        }
        // 3. Nothing to do: wait for a batch, a spill, or the deadline.
        tokio::select! {
            b = rx.recv() => match b {
                Some(b) => next = Some(b),
                None => closed = true,
            },
            () = sh.wake.notified() => {}
            () = sh.deadline_reached() => break,
        }
    }
    // Past the deadline: whatever is still in flight goes to the spill.
    rx.close();
    if let Some(b) = next.take() {
        sh.spill_batch(&b);
    }
    while let Ok(b) = rx.try_recv() {
        sh.spill_batch(&b);
    }
}

/// A spill segment's records as batches with the same count and byte limits as fresh ones.
fn replay_batches(records: &[Vec<u8>], cfg: &PipelineConfig) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut records = records.iter().peekable();
    while records.peek().is_some() {
        let mut b = Batch::new();
        while let Some(r) = records.next_if(|r| {
            b.is_empty() || (b.len() < cfg.batch_max_records && b.bytes() + r.len() <= cfg.batch_max_bytes)
        }) {
            b.push_raw(r);
        }
        batches.push(b);
    }
    batches
}

/// The sink a delivery writes to: the pipeline's own, or an HTTP sink that several deliveries
/// share at once (its client is shared).
enum SinkRef<'a> {
    Own(&'a mut Sink),
    Shared(&'a HttpSink),
}

impl SinkRef<'_> {
    async fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        match self {
            SinkRef::Own(sink) => sink.send(batch).await,
            SinkRef::Shared(http) => http.send(batch).await,
        }
    }
}

/// Writes one batch under the retry policy. `true` once it is acknowledged (or rejected for
/// good, a counted drop); `false` if the shutdown deadline came first.
async fn deliver(sh: &Shared, mut sink: SinkRef<'_>, batch: &Batch, from_spill: bool, cfg: &PipelineConfig) -> bool {
    let m = &sh.metrics;
    let n = batch.len() as u64;
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.retry_base_ms),
        Duration::from_millis(cfg.retry_max_ms.max(cfg.retry_base_ms)),
    );
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = sink.send(batch) => r,
            () = sh.deadline_reached() => return false,
        };
        match result {
            Ok(()) => {
                m.flush_duration.record(started.elapsed().as_secs_f64());
                m.batch_records.record(n as f64);
                m.clicks_delivered.increment(n);
                if from_spill {
                    m.clicks_replayed.increment(n);
                }
                m.clicks_buffered.decrement(n);
                m.sink_up.set(1.0);
                return true;
            }
            Err(e) => {
                m.sink_errors.get(e.kind).increment(1);
                if !e.kind.retriable() {
                    tracing::error!(error = %e, records = n, "click sink refused a batch for good; dropped (cartlink_clicks_dropped_total{{reason=\"sink_rejected\"}})");
                    m.clicks_dropped.sink_rejected.increment(n);
                    m.clicks_buffered.decrement(n);
                    // Not a successful write: a collector refusing everything (bad auth or
                    // schema) is as down as one that answers nothing.
                    m.sink_up.set(0.0);
                    return true;
                }
                m.sink_up.set(0.0);
                m.sink_retries.increment(1);
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, records = n, retry_in_ms = wait.as_millis() as u64, "click sink: write failed");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = sh.deadline_reached() => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clicks::{Click, Device, Served};

    /// Clicks recorded faster than the pipeline drains them overflow the ring into the queue;
    /// from either, each is written once, as exactly the record its packed form renders to.
    #[test]
    fn packed_clicks_from_ring_and_queue_are_written_as_their_records() {
        let dir = std::env::temp_dir().join(format!("cartlink-packed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let clicks_dir = dir.join("clicks");
        // 40 records a beat: the ring (512 KiB, ~4,000 of these) overflows while they are made.
        let cfg = PipelineConfig {
            batch_max_records: 10,
            ..Default::default()
        };
        let metrics = Metrics::new();
        let sink = SinkSettings::File {
            dir: clicks_dir.clone(),
        };
        let (recorder, pipeline) = start(&sink, &cfg, &dir.join("data"), metrics.clone(), "edge-1").unwrap();
        let line = r#"{"id":"jane-serum","creator":"jane \"j\"","campaign":"summer26","target":{"type":"url","url":"https://brand.example/p"}}"#;
        let table = crate::links::parse(line, "t", &crate::links::signature::demo()).unwrap();
        let link = table.get(b"jane-serum").unwrap();
        let n = 8_000u64;
        let oos = [9_007_199_254_740_993u64, 7];
        let mut want = std::collections::BTreeSet::new();
        for i in 0..n {
            let click = Click {
                click_id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | u128::from(i)),
                ts_ms: 1_780_000_000_000 + i,
                link,
                sub: (i % 3 == 0).then_some("reel-1"),
                country: (i % 2 == 0).then_some(*b"US"),
                device: Device::Android,
                bot: i % 5 == 0,
                unique: i % 7 == 0,
                app: (i % 4 == 0).then_some("tiktok"),
                referer_host: (i % 6 == 0).then_some("l.instagram.com"),
                ip: if i % 2 == 0 {
                    "203.0.113.0".parse().unwrap()
                } else {
                    "2001:db8:1::".parse().unwrap()
                },
                served: if i % 9 == 0 { Served::Variant(2) } else { Served::Target },
                oos: if i % 11 == 0 { &oos } else { &[] },
                target_type: crate::links::TargetType::ShopifyCart,
                status: 302,
                attributed_to: (i % 13 == 0).then(|| uuid::Uuid::from_u128(u128::from(i))),
            };
            let (mut packed, mut record) = (Vec::new(), Vec::new());
            click.pack(&mut packed);
            assert!(crate::clicks::record::render(&packed, "edge-1", &mut record));
            want.insert(record);
            recorder.record(&click);
        }
        pipeline.shutdown(Instant::now() + Duration::from_secs(30));
        let mut got = std::collections::BTreeSet::new();
        for file in std::fs::read_dir(&clicks_dir).unwrap() {
            let body = std::fs::read(file.unwrap().path()).unwrap();
            for line in body.split_inclusive(|b| *b == b'\n') {
                assert!(
                    got.insert(line.to_vec()),
                    "written twice: {}",
                    String::from_utf8_lossy(line)
                );
            }
        }
        assert_eq!(got.len() as u64, n, "every click written once");
        assert!(got == want, "the written records are the clicks' records");
        assert_eq!(metrics.clicks_accepted.get(), n);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Batcher and sink stage, on a thread of their own so sink work never runs on the redirect
//! workers. Flushes when a batch reaches `batch_max_records` or `batch_max_bytes`, or when its
//! oldest record is `batch_max_age_ms` old. A failed write is retried with capped, jittered
//! exponential backoff while the queue absorbs new clicks; on shutdown the queue is closed,
//! drained and flushed before the thread ends.

use super::file_sink::FileSink;
use super::{Click, Recorder};
use crate::config::{PipelineConfig, SinkSettings};
use crate::metrics::Metrics;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The running pipeline; [`Pipeline::shutdown`] flushes and joins it.
pub struct Pipeline {
    stop: Option<oneshot::Sender<Instant>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pipeline {
    /// Closes the queue, writes everything in it, and waits (until `deadline`) for the thread.
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
}

/// Starts the pipeline thread and returns the recorder the redirect path uses.
pub fn start(
    sink: &SinkSettings,
    cfg: &PipelineConfig,
    metrics: Metrics,
    edge: String,
) -> Result<(Recorder, Pipeline), StartError> {
    let sink = match sink {
        SinkSettings::File { dir } => FileSink::new(
            dir,
            cfg.file_max_bytes,
            Duration::from_secs(cfg.file_max_age_s),
            Duration::from_millis(cfg.file_fsync_ms),
        )
        .map_err(|e| StartError::Sink(format!("{}: {e}", dir.display())))?,
        other => {
            return Err(StartError::Sink(format!(
                "{other:?} is not built yet; use a file:// sink"
            )))
        }
    };
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let (stop_tx, stop_rx) = oneshot::channel();
    let worker = Worker {
        rx,
        sink,
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        edge,
        buf: Vec::new(),
        count: 0,
    };
    let thread = std::thread::Builder::new()
        .name("cartlink-clicks".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("pipeline runtime");
            rt.block_on(worker.run(stop_rx));
        })
        .map_err(|e| StartError::Sink(e.to_string()))?;
    metrics.sink_up.set(1.0);
    Ok((
        Recorder::new(tx, metrics),
        Pipeline {
            stop: Some(stop_tx),
            thread: Some(thread),
        },
    ))
}

struct Worker {
    rx: mpsc::Receiver<Click>,
    sink: FileSink,
    cfg: PipelineConfig,
    metrics: Metrics,
    edge: String,
    buf: Vec<u8>,
    count: usize,
}

impl Worker {
    async fn run(mut self, mut stop: oneshot::Receiver<Instant>) {
        let max_age = Duration::from_millis(self.cfg.batch_max_age_ms);
        let mut oldest: Option<tokio::time::Instant> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            let age_flush = async {
                match oldest {
                    Some(t) => tokio::time::sleep_until(t + max_age).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                d = &mut stop, if deadline.is_none() => {
                    // Sender dropped without a deadline: flush with a short one.
                    deadline = Some(d.unwrap_or_else(|_| Instant::now() + Duration::from_secs(5)));
                    self.rx.close();
                }
                msg = self.rx.recv() => match msg {
                    Some(click) => {
                        click.encode(&self.edge, &mut self.buf);
                        self.count += 1;
                        oldest.get_or_insert_with(tokio::time::Instant::now);
                        if self.count >= self.cfg.batch_max_records || self.buf.len() >= self.cfg.batch_max_bytes {
                            self.flush(deadline).await;
                            oldest = None;
                        }
                    }
                    None => break,
                },
                () = age_flush => {
                    self.flush(deadline).await;
                    oldest = None;
                }
            }
        }
        self.flush(deadline).await;
        if let Err(e) = self.sink.close() {
            tracing::error!(error = %e, "click sink: final sync failed");
        }
    }

    /// Writes the batch, retrying until it lands or the shutdown deadline passes.
    async fn flush(&mut self, deadline: Option<Instant>) {
        if self.count == 0 {
            return;
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let started = Instant::now();
            match self.sink.write(&self.buf) {
                Ok(()) => {
                    self.metrics.flush_duration.record(started.elapsed().as_secs_f64());
                    self.metrics.batch_records.record(self.count as f64);
                    self.metrics.clicks_delivered.increment(self.count as u64);
                    self.metrics.clicks_buffered.decrement(self.count as f64);
                    self.metrics.sink_up.set(1.0);
                    break;
                }
                Err(e) => {
                    self.metrics.sink_errors.increment(1);
                    self.metrics.sink_up.set(0.0);
                    let wait = backoff.next_delay();
                    if deadline.is_some_and(|d| Instant::now() + wait > d) {
                        tracing::error!(error = %e, records = self.count, "click sink: giving up at shutdown; records dropped");
                        self.metrics.clicks_dropped.sink_rejected.increment(self.count as u64);
                        self.metrics.clicks_buffered.decrement(self.count as f64);
                        break;
                    }
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "click sink: write failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        self.buf.clear();
        self.count = 0;
    }
}

/// Capped exponential backoff with full jitter.
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { next: base, cap }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.cap);
        let jitter: f64 = rand::random::<f64>();
        ceiling.mul_f64(0.5 + jitter / 2.0)
    }
}

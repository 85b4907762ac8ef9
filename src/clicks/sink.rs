//! The sink stage: one [`Sink`] per pipeline, chosen by `CARTLINK_SINK`. Every sink takes a whole
//! [`Batch`] and answers with success (every record acknowledged) or a classified
//! [`SinkError`]; the pipeline owns retries ([`super::retry`]) and the spill, so a sink is only
//! encode → request → send → classify.

use super::batch::Batch;
use super::file_sink::FileSink;
use super::http_sink::HttpSink;
use super::nats_sink::NatsSink;
use super::retry::{ErrorKind, SinkError};
use crate::config::{PipelineConfig, SinkSettings};
use std::time::Duration;

pub enum Sink {
    File(FileSink),
    /// The network sinks are boxed: their client and stream config dwarf the file sink.
    Http(Box<HttpSink>),
    Nats(Box<NatsSink>),
}

impl Sink {
    /// Builds the sink; nothing here connects (a collector that is down at start-up is a sink
    /// that is down, handled by retries and the spill, not a failed start).
    pub fn new(settings: &SinkSettings, cfg: &PipelineConfig) -> Result<Sink, String> {
        Ok(match settings {
            SinkSettings::File { dir } => Sink::File(
                FileSink::new(
                    dir,
                    cfg.file_max_bytes,
                    Duration::from_secs(cfg.file_max_age_s),
                    Duration::from_millis(cfg.file_fsync_ms),
                    cfg.file_drop_cache,
                )
                .map_err(|e| format!("{}: {e}", dir.display()))?,
            ),
            SinkSettings::Http { url, auth } => Sink::Http(Box::new(HttpSink::new(url, auth, cfg)?)),
            SinkSettings::Nats { server, subject } => Sink::Nats(Box::new(NatsSink::new(server, subject, cfg))),
        })
    }

    /// Writes one batch; `Ok` only when the sink acknowledged every record in it.
    pub async fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        match self {
            Sink::File(f) => f
                .write(batch.body())
                .map_err(|e| SinkError::new(ErrorKind::Io, e.to_string())),
            Sink::Http(h) => h.send(batch).await,
            Sink::Nats(n) => n.send(batch).await,
        }
    }

    /// Final sync (file sink); the network sinks have nothing buffered.
    pub fn close(&mut self) {
        if let Sink::File(f) = self {
            if let Err(e) = f.close() {
                tracing::error!(error = %e, "click sink: final sync failed");
            }
        }
    }
}

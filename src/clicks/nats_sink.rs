//! The NATS JetStream sink: every record is published on the sink's subject with header
//! `Nats-Msg-Id` = its `click_id`, so a record published twice (a retry after a lost ack, a
//! spill segment replayed after a crash) is stored once by the server within the stream's
//! duplicate window. A batch is delivered when the server acknowledged every record in it; the
//! records are published back to back and the acks awaited after, so a batch costs one round
//! trip, not one per record.
//!
//! The stream (name, subjects, retention, max age, duplicate window from `[pipeline] nats_*`) is
//! created if missing, on first connect. The connection is made lazily: a server that is down at
//! start-up is a sink that is down (retried, spilled), not a failed start.

use super::batch::{record_id_of, Batch};
use super::retry::{ErrorKind, SinkError};
use crate::config::PipelineConfig;
use async_nats::jetstream::{self, context::Publish, stream};
use bytes::Bytes;
use std::time::Duration;

pub struct NatsSink {
    server: String,
    subject: String,
    stream: stream::Config,
    timeout: Duration,
    js: Option<jetstream::Context>,
}

impl NatsSink {
    pub fn new(server: &str, subject: &str, cfg: &PipelineConfig) -> NatsSink {
        let retention = match cfg.nats_retention.as_str() {
            "interest" => stream::RetentionPolicy::Interest,
            "workqueue" => stream::RetentionPolicy::WorkQueue,
            _ => stream::RetentionPolicy::Limits,
        };
        let subjects = if cfg.nats_subjects.is_empty() {
            vec![subject.to_string()]
        } else {
            cfg.nats_subjects.clone()
        };
        NatsSink {
            server: server.to_string(),
            subject: subject.to_string(),
            stream: stream::Config {
                name: cfg.nats_stream.clone(),
                subjects,
                retention,
                max_age: Duration::from_secs(cfg.nats_max_age_s),
                duplicate_window: Duration::from_secs(cfg.nats_duplicate_window_s),
                ..Default::default()
            },
            timeout: Duration::from_millis(cfg.http_timeout_ms),
            js: None,
        }
    }

    async fn connect(&mut self) -> Result<jetstream::Context, SinkError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(self.timeout)
            .connect(self.server.as_str())
            .await
            .map_err(|e| SinkError::new(ErrorKind::Connect, e.to_string()))?;
        let mut js = jetstream::new(client);
        js.set_timeout(self.timeout);
        js.get_or_create_stream(self.stream.clone())
            .await
            .map_err(|e| SinkError::new(ErrorKind::Connect, format!("stream {}: {e}", self.stream.name)))?;
        tracing::info!(server = %self.server, stream = %self.stream.name, subject = %self.subject, "NATS JetStream sink connected");
        self.js = Some(js.clone());
        Ok(js)
    }

    pub async fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let js = match &self.js {
            Some(js) => js.clone(),
            None => self.connect().await?,
        };
        let mut acks = Vec::with_capacity(batch.len());
        for record in batch.records() {
            let payload = record.strip_suffix(b"\n").unwrap_or(record);
            let mut publish = Publish::build().payload(Bytes::copy_from_slice(payload));
            if let Some(id) = record_id_of(record) {
                publish = publish.message_id(id);
            }
            let ack = js
                .send_publish(self.subject.clone(), publish)
                .await
                .map_err(|e| SinkError::new(ErrorKind::Connect, e.to_string()))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| SinkError::new(ErrorKind::Ack, e.to_string()))?;
        }
        Ok(())
    }
}

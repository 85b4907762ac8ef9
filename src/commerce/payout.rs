//! Payouts: every commission record (clawbacks too) is also POSTed to `payout.url`, the trigger
//! a payout or store-credit system listens to. Off unless `payout.url` is set.
//!
//! - The webhook never waits on the payout system: it waits only for the record to be synced
//!   into the outbox ([`super::outbox`], under `<data_dir>/payout/`). A sender thread of its own
//!   posts from there.
//! - One request per record: the body is the commission record, byte for byte as in the
//!   stream, with `Content-Type: application/json`,
//!   `X-Cartlink-Signature: sha256=<hex of HMAC-SHA256(CARTLINK_PAYOUT_SECRET, body)>` and
//!   `Idempotency-Key: <commission_id>` (the same id is inside the signed body).
//! - Once per commission id: an id already queued, delivered or dead-lettered is not queued
//!   again, across restarts (the webhooks' own de-duplication is in memory only).
//! - Outcomes, by [`crate::clicks::retry::classify_status`]: 2xx delivered; 400, 413, 415
//!   and 422 (the record refused) are refusals for good: logged, counted, kept in the
//!   dead-letter file, not retried; everything else (408, 429, 5xx, 401, 403, 404, a 3xx…,
//!   refused or reset connections, timeouts) is retried with the sinks' capped, jittered
//!   backoff, without end: a wrong or moved endpoint must not dead-letter the whole backlog.
//! - Order: one record at a time, oldest first, so a record the payout system keeps answering
//!   5xx holds up the ones behind it (`cartlink_payout_pending` grows).
//! - Shutdown drops a POST in flight; the record is still pending in the outbox and is sent
//!   after the restart (with the same `Idempotency-Key`).

use super::ledger::Ledger;
use super::outbox::{Enqueued, Outbox, Pending};
use crate::clicks::http_sink::{client, exchange, HttpClient};
use crate::clicks::retry::Backoff;
use crate::config::PayoutSettings;
use crate::metrics::PayoutMetrics;
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;
use ring::hmac;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// The outbox and its sender thread.
pub struct Payouts {
    outbox: Arc<Outbox>,
    metrics: PayoutMetrics,
    /// Rung after records are queued; stores a permit when the sender is busy.
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Payouts {
    /// Opens the outbox under `data_dir/payout` and starts the sender thread. Nothing connects
    /// here: a payout system that is down at start-up is retried like any other failure.
    pub fn start(settings: &PayoutSettings, data_dir: &Path, metrics: PayoutMetrics) -> Result<Payouts, String> {
        let dir = data_dir.join("payout");
        let (outbox, opened) = Outbox::open(&dir).map_err(|e| format!("payout outbox {}: {e}", dir.display()))?;
        if opened.torn_bytes > 0 || opened.bad_lines > 0 {
            tracing::warn!(
                torn_bytes = opened.torn_bytes,
                bad_lines = opened.bad_lines,
                "payout outbox: cut a torn tail (a crash mid-write; that webhook was not answered 200)"
            );
        }
        tracing::info!(pending = opened.pending, known = opened.known, url = %crate::config::redact_url(&settings.url.to_string()), "payouts on");
        metrics.pending.set(opened.pending as f64);
        let client = client(settings.timeout, &settings.ca_file, "payout.ca_file")?;
        let outbox = Arc::new(outbox);
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let sender = Sender {
            outbox: outbox.clone(),
            client,
            settings: settings.clone(),
            key: hmac::Key::new(hmac::HMAC_SHA256, settings.secret.as_bytes()),
            metrics: metrics.clone(),
            wake: wake.clone(),
        };
        let thread = crate::clicks::own_thread("cartlink-payout", move |rt| rt.block_on(sender.run(stopped)))
            .map_err(|e| format!("payout thread: {e}"))?;
        Ok(Payouts {
            outbox,
            metrics,
            wake,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `(commission_id, body)` records, synced to disk when this returns `Ok`; the
    /// caller answers the webhook only then. Runs the disk work off the async workers. Answers
    /// the ids queued now (not those known before).
    pub async fn enqueue(&self, records: Vec<(Arc<str>, Bytes)>) -> std::io::Result<Vec<Arc<str>>> {
        let outbox = self.outbox.clone();
        let done = tokio::task::spawn_blocking(move || outbox.enqueue(&records))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        self.counted(done)
    }

    /// The metrics of one outbox write, and the sender woken when it queued something.
    fn counted(&self, done: std::io::Result<Enqueued>) -> std::io::Result<Vec<Arc<str>>> {
        let m = &self.metrics;
        match done {
            Ok(e) => {
                m.queued.increment(e.queued.len() as u64);
                m.duplicates.increment(e.duplicates as u64);
                m.pending.set(self.outbox.pending() as f64);
                if !e.queued.is_empty() {
                    self.wake.notify_one();
                }
                Ok(e.queued)
            }
            Err(e) => {
                m.outbox_errors.increment(1);
                Err(e)
            }
        }
    }

    /// At start-up, before any webhook: settles the ledger's lines older than its `payout`
    /// flag from what the outbox knows, then queues the commission records the ledger holds
    /// for the payout system and the outbox does not know (its write failed after the
    /// ledger's, or a crash came in between), made again with `edge`. Returns their bodies,
    /// for the stream (as any record made again that the outbox queues).
    pub fn mend(&self, ledger: &Ledger, edge: &str) -> std::io::Result<Vec<Bytes>> {
        let outbox = &self.outbox;
        ledger.settle_payouts(|order, what| outbox.knows(&super::webhooks::commission_id(order, what)));
        let missing = missing_from(outbox, ledger, edge);
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let queued = self.counted(outbox.enqueue(&missing))?;
        tracing::warn!(
            queued = queued.len(),
            "payout outbox: queued commissions the ledger holds and the outbox did not (a write after the ledger's failed, or a crash)"
        );
        Ok(missing.into_iter().map(|(_, body)| body).collect())
    }

    /// Stops the sender (a POST in flight is dropped; its record stays pending) and joins it.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// `sha256=` and the lowercase hex of HMAC-SHA256(key, body): the `X-Cartlink-Signature` value.
pub fn signature(key: &hmac::Key, body: &[u8]) -> String {
    let tag = hmac::sign(key, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// The commission records the ledger holds for the payout system that the outbox does not
/// know, made again from the ledger.
fn missing_from(outbox: &Outbox, ledger: &Ledger, edge: &str) -> Vec<(Arc<str>, Bytes)> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let ts = crate::clicks::record::rfc3339_ms(now_ms);
    let mut out = Vec::new();
    for (order, paid) in ledger.for_payout() {
        for mut r in super::webhooks::payout_records(order, &paid, &ts) {
            let Some(id) = r["commission_id"]
                .as_str()
                .filter(|id| !outbox.knows(id))
                .map(Arc::<str>::from)
            else {
                continue;
            };
            r["edge"] = serde_json::Value::from(edge);
            let body = serde_json::to_vec(&r).expect("a JSON value encodes");
            out.push((id, Bytes::from(body)));
        }
    }
    out
}

struct Sender {
    outbox: Arc<Outbox>,
    client: HttpClient,
    settings: PayoutSettings,
    key: hmac::Key,
    metrics: PayoutMetrics,
    wake: Arc<Notify>,
}

impl Sender {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            let Some(p) = self.outbox.front() else {
                tokio::select! {
                    () = self.wake.notified() => continue,
                    _ = stop.changed() => return,
                }
            };
            tokio::select! {
                () = self.deliver(&p) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Posts one record until it is delivered or refused for good.
    async fn deliver(&self, p: &Pending) {
        let m = &self.metrics;
        let mut signature = HeaderValue::from_str(&signature(&self.key, &p.body)).expect("hex is a header value");
        signature.set_sensitive(true);
        let mut backoff = Backoff::new(self.settings.retry_base, self.settings.retry_max);
        loop {
            let req = Request::post(self.settings.url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("x-cartlink-signature", signature.clone())
                .header("idempotency-key", &*p.id)
                .body(Full::new(p.body.clone()))
                .expect("URL and headers are checked at load and enqueue");
            let Err(e) = exchange(&self.client, req, self.settings.timeout).await else {
                // Recorded before counted: once `sent` moves, a restart does not send it again.
                if let Err(e) = self.outbox.delivered(&p.id) {
                    tracing::error!(commission_id = %p.id, error = %e, "payout delivered, but the outbox could not record it: a restart sends it once more");
                }
                m.pending.set(self.outbox.pending() as f64);
                m.sent.increment(1);
                return;
            };
            m.failures.get(e.kind).increment(1);
            if !e.kind.retriable() {
                tracing::error!(commission_id = %p.id, error = %e, "payout refused for good: not retried, kept in payout/dead-letter.jsonl");
                let ts = crate::clicks::record::rfc3339_ms(now_ms());
                if let Err(e) = self.outbox.dead_letter(p, &e.to_string(), &ts) {
                    tracing::error!(commission_id = %p.id, error = %e, "payout dead letter not written: a restart tries the record again");
                }
                m.pending.set(self.outbox.pending() as f64);
                m.dead_letters.increment(1);
                return;
            }
            let wait = backoff.next_delay();
            tracing::warn!(commission_id = %p.id, error = %e, retry_in_ms = wait.as_millis() as u64, "payout POST failed");
            tokio::time::sleep(wait).await;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

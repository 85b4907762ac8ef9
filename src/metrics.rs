//! Every metric cartlink exports: names, labels, units and buckets in one place.
//!
//! Pattern: `cartlink_<what>_<unit>[_total]`, base units, labels from small fixed sets only
//! (never a link id or creator). Handles are registered once per server against its own
//! recorder, so the hot path only touches atomics; the families the redirect path moves on
//! every request are kept by hand ([`hot`]), one relaxed add per update.
//!
//! Adding a metric: add the name constant, register it in [`Metrics::new`] with a description,
//! list it in the README's metrics table, and assert it moves in a test.

pub mod hot;

pub use hot::{Count, Latency, Level};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub const REQUESTS: &str = "cartlink_requests_total";
pub const REQUEST_DURATION: &str = "cartlink_http_request_duration_seconds";
pub const INFLIGHT: &str = "cartlink_inflight_requests";
pub const SIGNATURE_FAILURES: &str = "cartlink_signature_failures_total";
pub const CLICKS_ACCEPTED: &str = "cartlink_clicks_accepted_total";
pub const CLICKS_DELIVERED: &str = "cartlink_clicks_delivered_total";
pub const CLICKS_DROPPED: &str = "cartlink_clicks_dropped_total";
pub const CLICKS_BUFFERED: &str = "cartlink_clicks_buffered";
pub const SINK_UP: &str = "cartlink_sink_up";
pub const SINK_ERRORS: &str = "cartlink_sink_errors_total";
pub const SINK_RETRIES: &str = "cartlink_sink_retries_total";
pub const CLICKS_SPILLED: &str = "cartlink_clicks_spilled_total";
pub const CLICKS_REPLAYED: &str = "cartlink_clicks_replayed_total";
pub const CLICKS_RECOVERED: &str = "cartlink_clicks_recovered_total";
pub const QUEUE_DEPTH: &str = "cartlink_clicks_queue_depth";
pub const SPILL_BYTES: &str = "cartlink_spill_bytes";
pub const SPILL_MAX_BYTES: &str = "cartlink_spill_max_bytes";
pub const SPILL_SEGMENTS: &str = "cartlink_spill_segments";
pub const SPILL_ERRORS: &str = "cartlink_spill_errors_total";
pub const SPILL_CORRUPT: &str = "cartlink_spill_corrupt_total";
pub const BATCH_RECORDS: &str = "cartlink_batch_records";
pub const FLUSH_DURATION: &str = "cartlink_sink_flush_duration_seconds";
pub const CONFIG_GENERATION: &str = "cartlink_config_generation";
pub const RELOADS: &str = "cartlink_config_reloads_total";
pub const RELOAD_FAILURES: &str = "cartlink_config_reload_failures_total";
pub const RESTART_PENDING: &str = "cartlink_config_restart_pending";
pub const LINKS_LOADED: &str = "cartlink_links_loaded";
pub const DRAINING: &str = "cartlink_draining";
pub const CLICKS: &str = "cartlink_clicks_total";
pub const UNIQUE_CLICKS: &str = "cartlink_unique_clicks_total";
pub const UNIQUE_FILL: &str = "cartlink_unique_filter_fill_ratio";
pub const WEBHOOKS: &str = "cartlink_webhooks_total";
pub const SHED: &str = "cartlink_shed_total";
pub const PIPELINE_YIELDS: &str = "cartlink_pipeline_yields_total";
pub const PAYOUT_QUEUED: &str = "cartlink_payout_queued_total";
pub const PAYOUT_DUPLICATES: &str = "cartlink_payout_duplicates_total";
pub const PAYOUT_SENT: &str = "cartlink_payout_sent_total";
pub const PAYOUT_FAILURES: &str = "cartlink_payout_failures_total";
pub const PAYOUT_DEAD_LETTERS: &str = "cartlink_payout_dead_letters_total";
pub const PAYOUT_PENDING: &str = "cartlink_payout_pending";
pub const PAYOUT_OUTBOX_ERRORS: &str = "cartlink_payout_outbox_errors_total";

/// Request latency buckets: fine between 50 µs and 20 ms, where p99 and p99.9 of a healthy
/// redirect live, coarse above to still see pathological tails.
const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 1.0,
];
/// Sink flushes take from under a millisecond (file) to seconds (a slow collector).
const FLUSH_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];
const BATCH_BUCKETS: [f64; 8] = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

/// Request outcomes on the public listener: label `outcome` of `cartlink_requests_total`.
#[derive(Clone, Default)]
pub struct Outcomes {
    pub redirect: Count,
    pub fallback: Count,
    pub not_found: Count,
    pub bad_request: Count,
    pub method_not_allowed: Count,
}

#[derive(Clone, Default)]
pub struct SignatureFailures {
    pub malformed: Count,
    pub bad_mac: Count,
    pub unknown_link: Count,
}

#[derive(Clone)]
pub struct Drops {
    /// The in-memory queue was full (the batcher thread fell behind): never expected, since the
    /// batcher spills instead of waiting.
    pub queue_full: Counter,
    /// A click arrived after the queue closed at shutdown, or could neither be delivered nor
    /// spilled before the drain deadline.
    pub shutdown: Counter,
    /// The sink answered a non-retriable status (4xx other than 408/429).
    pub sink_rejected: Counter,
    /// The spill was at its size cap (policy: drop newest).
    pub spill_full: Counter,
    /// Writing the spill failed (ENOSPC, EIO) while the sink could not take the batch.
    pub spill_error: Counter,
}

/// A counter with a `kind` label, one handle per [`crate::clicks::retry::ErrorKind`]:
/// `cartlink_sink_errors_total{kind}`, `cartlink_payout_failures_total{kind}`.
#[derive(Clone)]
pub struct ByErrorKind {
    by_kind: [Counter; 9],
}

impl ByErrorKind {
    fn new(name: &'static str) -> ByErrorKind {
        ByErrorKind {
            by_kind: crate::clicks::retry::ErrorKind::ALL.map(|k| metrics::counter!(name, "kind" => k.label())),
        }
    }

    pub fn get(&self, kind: crate::clicks::retry::ErrorKind) -> &Counter {
        let i = crate::clicks::retry::ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        &self.by_kind[i]
    }
}

/// `cartlink_spill_errors_total{kind}`.
#[derive(Clone)]
pub struct SpillErrors {
    pub enospc: Counter,
    pub io: Counter,
}

/// Shopify webhook deliveries by outcome.
#[derive(Clone)]
pub struct WebhookOutcomes {
    pub applied: Counter,
    pub duplicate: Counter,
    /// A repeat that arrived while the first attempt was still being applied (answered 503).
    pub under_way: Counter,
    pub unauthorized: Counter,
    pub bad_payload: Counter,
}

/// The payout sender and its outbox (`commerce::payout`).
#[derive(Clone)]
pub struct PayoutMetrics {
    /// Commission records written to the outbox.
    pub queued: Counter,
    /// Commission records not queued because their id was queued or delivered before.
    pub duplicates: Counter,
    /// Records the payout system acknowledged (2xx).
    pub sent: Counter,
    /// Failed POSTs by kind; all but `status_4xx` (400, 413, 415, 422) are retried.
    pub failures: ByErrorKind,
    /// Records refused for good and kept in `dead-letter.jsonl`.
    pub dead_letters: Counter,
    /// Records in the outbox not yet delivered or dead-lettered.
    pub pending: Gauge,
    /// Outbox writes that failed; the webhook was answered 503 so Shopify retries it.
    pub outbox_errors: Counter,
}

/// Requests answered 503 without being handled: label `reason` of `cartlink_shed_total`.
#[derive(Clone)]
pub struct Shed {
    /// Past `http.max_inflight`.
    pub inflight: Counter,
}

#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    pub outcomes: Outcomes,
    pub duration: Arc<Latency>,
    /// Public requests admitted and not yet answered; counted by the server's admission gate
    /// and copied into `cartlink_inflight_requests` when scraped.
    pub inflight: Arc<AtomicUsize>,
    inflight_gauge: Gauge,
    pub signature: SignatureFailures,
    pub clicks_accepted: Count,
    pub clicks_delivered: Counter,
    pub clicks_dropped: Drops,
    pub clicks_buffered: Level,
    pub sink_up: Gauge,
    pub sink_errors: ByErrorKind,
    pub sink_retries: Counter,
    pub clicks_spilled: Counter,
    pub clicks_replayed: Counter,
    pub clicks_recovered: Counter,
    pub queue_depth: Gauge,
    pub spill_bytes: Gauge,
    /// `pipeline.spill_max_bytes`, for alerts that compare against it.
    pub spill_max_bytes: Gauge,
    pub spill_segments: Gauge,
    pub spill_errors: SpillErrors,
    pub spill_corrupt: Counter,
    pub batch_records: Histogram,
    pub flush_duration: Histogram,
    pub config_generation: Gauge,
    pub reloads: Counter,
    pub reload_failures: Counter,
    /// 1 when the last reload found settings changed that only a restart applies.
    pub restart_pending: Gauge,
    pub links_loaded: Gauge,
    pub draining: Gauge,
    pub human_clicks: Count,
    pub bot_clicks: Count,
    pub unique_clicks: Count,
    pub unique_fill_ratio: Gauge,
    pub webhooks: WebhookOutcomes,
    pub shed: Shed,
    /// Times a connection yielded to the others after a burst of pipelined requests.
    pub pipeline_yields: Counter,
    pub payout: PayoutMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder: PrometheusRecorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(FLUSH_DURATION.into()), &FLUSH_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_RECORDS.into()), &BATCH_BUCKETS))
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
            describe_gauge!(INFLIGHT, "Public requests being handled now.");
            describe_counter!(CLICKS_DELIVERED, "Click records the sink acknowledged.");
            describe_counter!(CLICKS_DROPPED, "Click records lost, by reason.");
            describe_gauge!(SINK_UP, "1 when the last sink write succeeded.");
            describe_counter!(
                SINK_ERRORS,
                "Failed sink writes, by kind (connect, timeout, status_5xx, ...)."
            );
            describe_counter!(SINK_RETRIES, "Sink writes retried after a retriable failure.");
            describe_counter!(CLICKS_SPILLED, "Click records written to the disk spill.");
            describe_counter!(CLICKS_REPLAYED, "Click records delivered from the disk spill.");
            describe_counter!(
                CLICKS_RECOVERED,
                "Click records found in the spill at start-up (also counted as accepted)."
            );
            describe_gauge!(QUEUE_DEPTH, "Click records in the in-memory queue.");
            describe_gauge!(SPILL_BYTES, Unit::Bytes, "Bytes in spill segments on disk.");
            describe_gauge!(
                SPILL_MAX_BYTES,
                Unit::Bytes,
                "The spill's cap (pipeline.spill_max_bytes); past it, records are dropped (spill_full)."
            );
            describe_gauge!(SPILL_SEGMENTS, "Spill segment files on disk.");
            describe_counter!(SPILL_ERRORS, "Failed spill writes, by kind (enospc, io).");
            describe_counter!(SPILL_CORRUPT, "Torn or corrupt spill tails skipped on replay.");
            describe_histogram!(BATCH_RECORDS, "Records per batch written to the sink.");
            describe_histogram!(FLUSH_DURATION, Unit::Seconds, "Time to write one batch to the sink.");
            describe_gauge!(CONFIG_GENERATION, "Increments on every successful table load.");
            describe_counter!(RELOADS, "Successful reloads.");
            describe_counter!(RELOAD_FAILURES, "Rejected reloads; the previous table kept serving.");
            describe_gauge!(
                RESTART_PENDING,
                "1 when the last reload found settings changed that apply only at the next restart."
            );
            describe_gauge!(LINKS_LOADED, "Links in the table being served.");
            describe_gauge!(DRAINING, "1 after SIGTERM, while draining.");
            describe_gauge!(
                UNIQUE_FILL,
                "Share of bits set in today's unique-visitor filter; alert well before 0.5."
            );
            describe_counter!(WEBHOOKS, "Shopify webhook deliveries by outcome.");
            describe_counter!(
                SHED,
                "Public requests answered 503 + Retry-After without being handled, by reason."
            );
            describe_counter!(
                PIPELINE_YIELDS,
                "Times an HTTP/1 connection yielded to the others after 2 pipelined requests answered without its client waiting."
            );
            describe_counter!(PAYOUT_QUEUED, "Commission records written to the payout outbox.");
            describe_counter!(
                PAYOUT_DUPLICATES,
                "Commission records not queued for payout: their id was queued or delivered before."
            );
            describe_counter!(PAYOUT_SENT, "Commission records the payout system acknowledged (2xx).");
            describe_counter!(
                PAYOUT_FAILURES,
                "Failed payout POSTs, by kind; all but status_4xx (400, 413, 415, 422) are retried."
            );
            describe_counter!(
                PAYOUT_DEAD_LETTERS,
                "Commission records the payout system refused for good (4xx but 408/429), kept in the dead-letter file."
            );
            describe_gauge!(
                PAYOUT_PENDING,
                "Commission records in the payout outbox not yet delivered."
            );
            describe_counter!(
                PAYOUT_OUTBOX_ERRORS,
                "Payout outbox writes that failed; the webhook was answered 503 for Shopify to retry."
            );
            let drop = |r: &'static str| counter!(CLICKS_DROPPED, "reason" => r);
            Metrics {
                handle: handle.clone(),
                outcomes: Outcomes::default(),
                duration: Arc::new(Latency::new(&LATENCY_BUCKETS)),
                inflight: Arc::new(AtomicUsize::new(0)),
                inflight_gauge: gauge!(INFLIGHT),
                signature: SignatureFailures::default(),
                clicks_accepted: Count::default(),
                clicks_delivered: counter!(CLICKS_DELIVERED),
                clicks_dropped: Drops {
                    queue_full: drop("queue_full"),
                    shutdown: drop("shutdown"),
                    sink_rejected: drop("sink_rejected"),
                    spill_full: drop("spill_full"),
                    spill_error: drop("spill_error"),
                },
                clicks_buffered: Level::default(),
                sink_up: gauge!(SINK_UP),
                sink_errors: ByErrorKind::new(SINK_ERRORS),
                sink_retries: counter!(SINK_RETRIES),
                clicks_spilled: counter!(CLICKS_SPILLED),
                clicks_replayed: counter!(CLICKS_REPLAYED),
                clicks_recovered: counter!(CLICKS_RECOVERED),
                queue_depth: gauge!(QUEUE_DEPTH),
                spill_bytes: gauge!(SPILL_BYTES),
                spill_max_bytes: gauge!(SPILL_MAX_BYTES),
                spill_segments: gauge!(SPILL_SEGMENTS),
                spill_errors: SpillErrors {
                    enospc: counter!(SPILL_ERRORS, "kind" => "enospc"),
                    io: counter!(SPILL_ERRORS, "kind" => "io"),
                },
                spill_corrupt: counter!(SPILL_CORRUPT),
                batch_records: histogram!(BATCH_RECORDS),
                flush_duration: histogram!(FLUSH_DURATION),
                config_generation: gauge!(CONFIG_GENERATION),
                reloads: counter!(RELOADS),
                reload_failures: counter!(RELOAD_FAILURES),
                restart_pending: gauge!(RESTART_PENDING),
                links_loaded: gauge!(LINKS_LOADED),
                draining: gauge!(DRAINING),
                human_clicks: Count::default(),
                bot_clicks: Count::default(),
                unique_clicks: Count::default(),
                unique_fill_ratio: gauge!(UNIQUE_FILL),
                webhooks: WebhookOutcomes {
                    applied: counter!(WEBHOOKS, "outcome" => "applied"),
                    duplicate: counter!(WEBHOOKS, "outcome" => "duplicate"),
                    under_way: counter!(WEBHOOKS, "outcome" => "under_way"),
                    unauthorized: counter!(WEBHOOKS, "outcome" => "unauthorized"),
                    bad_payload: counter!(WEBHOOKS, "outcome" => "bad_payload"),
                },
                shed: Shed {
                    inflight: counter!(SHED, "reason" => "inflight"),
                },
                pipeline_yields: counter!(PIPELINE_YIELDS),
                payout: PayoutMetrics {
                    queued: counter!(PAYOUT_QUEUED),
                    duplicates: counter!(PAYOUT_DUPLICATES),
                    sent: counter!(PAYOUT_SENT),
                    failures: ByErrorKind::new(PAYOUT_FAILURES),
                    dead_letters: counter!(PAYOUT_DEAD_LETTERS),
                    pending: gauge!(PAYOUT_PENDING),
                    outbox_errors: counter!(PAYOUT_OUTBOX_ERRORS),
                },
            }
        })
    }

    /// Prometheus text exposition: the exporter's families, then the hand-kept ones.
    pub fn render(&self) -> String {
        self.inflight_gauge.set(self.inflight.load(Ordering::Relaxed) as f64);
        let mut out = self.handle.render();
        let o = &self.outcomes;
        hot::render_counters(
            &mut out,
            REQUESTS,
            "Public requests by outcome.",
            "outcome",
            &[
                ("redirect", &o.redirect),
                ("fallback", &o.fallback),
                ("not_found", &o.not_found),
                ("bad_request", &o.bad_request),
                ("method_not_allowed", &o.method_not_allowed),
            ],
        );
        self.duration.render(
            &mut out,
            REQUEST_DURATION,
            "Time from request head parsed to response ready.",
        );
        let sig = &self.signature;
        hot::render_counters(
            &mut out,
            SIGNATURE_FAILURES,
            "Link requests refused with 404, by reason.",
            "reason",
            &[
                ("malformed", &sig.malformed),
                ("bad_mac", &sig.bad_mac),
                ("unknown_link", &sig.unknown_link),
            ],
        );
        hot::render_counters(
            &mut out,
            CLICKS_ACCEPTED,
            "Click records handed to the pipeline.",
            "",
            &[("", &self.clicks_accepted)],
        );
        hot::render_level(
            &mut out,
            CLICKS_BUFFERED,
            "Click records accepted but not yet delivered.",
            &self.clicks_buffered,
        );
        hot::render_counters(
            &mut out,
            CLICKS,
            "Link clicks recorded (GET), by kind: human or bot (crawlers, previews, prefetch).",
            "kind",
            &[("human", &self.human_clicks), ("bot", &self.bot_clicks)],
        );
        hot::render_counters(
            &mut out,
            UNIQUE_CLICKS,
            "Human clicks that were the visitor's first on that link in the window.",
            "",
            &[("", &self.unique_clicks)],
        );
        out
    }

    /// Folds histogram samples; called periodically so memory stays bounded between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

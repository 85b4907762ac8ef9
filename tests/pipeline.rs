//! The click pipeline against a real HTTP collector on loopback that the test switches between
//! up, refusing, 5xx, slow and resetting mid-batch. The oracle is the click id: every redirect the
//! client received must be in the collector (at least once), nothing the client never saw may be
//! there, and the metrics must conserve records exactly.
//!
//! Outages are short (2-3 s) so the whole file stays well under a minute; the behaviour does not
//! depend on the length (the spill absorbs any outage up to its cap). Nothing here asserts a
//! time: performance figures live in loadtest/sink_outage.

mod support;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const REST: Duration = Duration::from_secs(20);

fn env(c: &Collector, extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = vec![
        ("CARTLINK_SINK", c.url()),
        ("CARTLINK_PIPELINE_RETRY_BASE_MS", "20".into()),
        ("CARTLINK_PIPELINE_RETRY_MAX_MS", "300".into()),
        ("CARTLINK_PIPELINE_HTTP_TIMEOUT_MS", "5000".into()),
        ("CARTLINK_DRAIN_GRACE_MS", "3000".into()),
    ];
    v.extend(extra.iter().map(|(k, val)| (*k, val.to_string())));
    v
}

fn start(name: &str, env: &[(&'static str, String)]) -> Server {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(name, PIPELINE_LINKS, &pairs)
}

/// Sends `n` clicks one after another on one connection; the click ids of the redirects.
fn clicks(s: &Server, n: usize) -> Vec<String> {
    let mut conn = Conn::open(s.public).unwrap();
    let path = path_for("p");
    (0..n)
        .map(|_| {
            let r = conn.get(&path, IPHONE).unwrap();
            assert_eq!(r.status, 302, "{r:?}");
            r.click_id()
        })
        .collect()
}

struct Oracle {
    missing: Vec<String>,
    phantom: Vec<String>,
    duplicates: usize,
}

fn oracle(sent: &[String], got: &[String]) -> Oracle {
    let sent_set: HashSet<&String> = sent.iter().collect();
    let got_set: HashSet<&String> = got.iter().collect();
    assert_eq!(sent_set.len(), sent.len(), "click ids handed out are unique");
    Oracle {
        missing: sent.iter().filter(|id| !got_set.contains(id)).cloned().collect(),
        phantom: got_set
            .iter()
            .filter(|id| !sent_set.contains(*id))
            .map(|s| s.to_string())
            .collect(),
        duplicates: got.len() - got_set.len(),
    }
}

#[test]
fn sink_down_under_steady_load_then_recovers_with_nothing_missing() {
    let c = Collector::start();
    let s = start("outage", &env(&c, &[]));
    let load = Load::start(s.public, 2, Duration::from_millis(1));
    wait_until("first deliveries", REST, || c.ids().len() > 50);
    c.set(Mode::Refuse);
    wait_until("sink_up to fall to 0", REST, || s.metric("cartlink_sink_up") == 0.0);
    let at_outage = load.sent();
    // Steady load through a 3-second outage.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        load.sent() > at_outage,
        "redirects kept being served while the sink was down"
    );
    assert!(
        s.metric("cartlink_clicks_spilled_total") > 0.0,
        "the outage spilled to disk"
    );
    assert!(s.metric("cartlink_spill_bytes") > 0.0);
    c.set(Mode::Up);
    std::thread::sleep(Duration::from_millis(500));
    let r = load.finish();
    assert_eq!(
        (r.non_redirects, r.conn_errors),
        (0, 0),
        "every request got its redirect"
    );

    let flow = s.wait_at_rest(REST);
    let o = oracle(&r.ids, &c.ids());
    assert!(
        o.missing.is_empty(),
        "{} of {} clicks missing",
        o.missing.len(),
        r.ids.len()
    );
    assert!(
        o.phantom.is_empty(),
        "phantom clicks: {:?}",
        &o.phantom[..o.phantom.len().min(3)]
    );
    assert_eq!(flow.accepted, r.ids.len() as f64);
    assert_eq!(flow.dropped, 0.0);
    assert!(s.metric("cartlink_clicks_replayed_total") > 0.0);
    assert_eq!(s.metric("cartlink_sink_up"), 1.0);
    assert!(s.metric("cartlink_sink_errors_total{kind=\"connect\"}") > 0.0);
    assert!(s.metric("cartlink_sink_retries_total") > 0.0);
    assert_eq!(s.metric("cartlink_spill_bytes"), 0.0, "replayed segments are deleted");
    assert_eq!(s.metric("cartlink_spill_segments"), 0.0);
}

#[test]
fn slow_sink_does_not_hold_up_redirects() {
    let c = Collector::start();
    c.set(Mode::Delay(1500));
    let s = start("slow", &env(&c, &[]));
    let load = Load::start(s.public, 2, Duration::from_millis(1));
    wait_until("batches to overflow to the spill", REST, || {
        s.metric("cartlink_clicks_spilled_total") > 0.0
    });
    let at_spill = load.sent();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        load.sent() > at_spill,
        "redirects kept flowing while each batch took 1.5 s"
    );
    let r = load.finish();
    assert_eq!(
        (r.non_redirects, r.conn_errors),
        (0, 0),
        "every request got its redirect"
    );
    c.set(Mode::Up);
    let flow = s.wait_at_rest(REST);
    let o = oracle(&r.ids, &c.ids());
    assert!(
        o.missing.is_empty(),
        "{} of {} clicks missing",
        o.missing.len(),
        r.ids.len()
    );
    assert!(o.phantom.is_empty());
    assert_eq!((flow.accepted, flow.dropped), (r.ids.len() as f64, 0.0));
}

/// A collector that stays slow (1 s per request) is caught up with several requests at once
/// from the spill, not one at a time: everything arrives while it is still slow.
#[test]
fn a_slow_collector_gets_the_backlog_several_batches_at_once() {
    let c = Collector::start();
    c.set(Mode::Delay(1000));
    let s = start(
        "slow-catch-up",
        &env(&c, &[("CARTLINK_PIPELINE_BATCH_MAX_RECORDS", "50")]),
    );
    let sent = clicks(&s, 1000);
    let flow = s.wait_at_rest(REST);
    let o = oracle(&sent, &c.ids());
    assert!(o.missing.is_empty(), "{} of 1000 missing", o.missing.len());
    assert_eq!((flow.accepted, flow.delivered, flow.dropped), (1000.0, 1000.0, 0.0));
    assert!(
        s.metric("cartlink_clicks_spilled_total") > 0.0,
        "the backlog went through the spill"
    );
    assert!(
        (2..=4).contains(&c.max_in_flight()),
        "requests at once: {} (http_concurrency 4)",
        c.max_in_flight()
    );
}

#[test]
fn server_errors_and_resets_mid_batch_are_retried_and_duplicates_share_click_ids() {
    let c = Collector::start();
    c.fail_next(3, Mode::Status(503));
    c.fail_next(1, Mode::Status(429));
    c.fail_next(2, Mode::StoreThenReset);
    c.fail_next(1, Mode::ResetBeforeStore);
    let s = start("retry", &env(&c, &[]));
    let sent = clicks(&s, 300);
    let flow = s.wait_at_rest(REST);
    let got = c.ids();
    let o = oracle(&sent, &got);
    assert!(o.missing.is_empty(), "{} missing", o.missing.len());
    assert!(o.phantom.is_empty());
    assert!(
        o.duplicates >= 1,
        "a batch stored before its answer was lost must arrive twice (raw {}, unique {})",
        got.len(),
        got.len() - o.duplicates
    );
    assert_eq!(flow.dropped, 0.0);
    assert_eq!(flow.delivered, 300.0);
    assert_eq!(s.metric("cartlink_sink_errors_total{kind=\"status_5xx\"}"), 3.0);
    assert_eq!(s.metric("cartlink_sink_errors_total{kind=\"status_429\"}"), 1.0);
    assert!(s.metric("cartlink_sink_errors_total{kind=\"connect\"}") >= 3.0);
    assert!(s.metric("cartlink_sink_retries_total") >= 7.0);
}

/// A 404 or a 403 from the collector (a moved endpoint, a revoked token, a proxy before a
/// collector that is down) says nothing about the batch: retried, nothing dropped.
#[test]
fn a_404_or_403_from_the_collector_is_retried_and_nothing_is_dropped() {
    let c = Collector::start();
    c.fail_next(2, Mode::Status(404));
    c.fail_next(1, Mode::Status(403));
    let s = start("endpoint-wrong", &env(&c, &[]));
    let sent = clicks(&s, 100);
    let flow = s.wait_at_rest(REST);
    let o = oracle(&sent, &c.ids());
    assert!(o.missing.is_empty(), "{} missing", o.missing.len());
    assert_eq!((flow.delivered, flow.dropped), (100.0, 0.0));
    assert_eq!(s.metric("cartlink_sink_errors_total{kind=\"status_other\"}"), 3.0);
}

#[test]
fn a_definitive_4xx_is_not_retried_and_is_counted_as_a_drop() {
    let c = Collector::start();
    c.fail_next(1, Mode::Status(400));
    let s = start("reject", &env(&c, &[]));
    let sent = clicks(&s, 50);
    let flow = s.wait_at_rest(REST);
    let o = oracle(&sent, &c.ids());
    let rejected = s.metric("cartlink_clicks_dropped_total{reason=\"sink_rejected\"}");
    assert!(rejected > 0.0);
    assert_eq!(
        o.missing.len() as f64,
        rejected,
        "exactly the counted drops are missing"
    );
    assert_eq!(flow.dropped, rejected);
    assert_eq!(s.metric("cartlink_sink_errors_total{kind=\"status_4xx\"}"), 1.0);
    assert_eq!(s.metric("cartlink_sink_retries_total"), 0.0);
    // A refused write is not a working sink: sink_up says so until a write succeeds. (The 50
    // clicks above may have gone in more than one batch, the later ones accepted: the last
    // write decides, so it is made the refused one here.)
    c.fail_next(1, Mode::Status(400));
    clicks(&s, 1);
    s.wait_at_rest(REST);
    assert_eq!(s.metric("cartlink_sink_up"), 0.0);
    clicks(&s, 1);
    s.wait_at_rest(REST);
    assert_eq!(s.metric("cartlink_sink_up"), 1.0);
}

#[test]
fn http_sink_posts_ndjson_with_gzip_and_credentials_from_the_environment() {
    let c = Collector::start();
    let s = start(
        "http-auth",
        &env(
            &c,
            &[
                ("CARTLINK_PIPELINE_HTTP_GZIP", "true"),
                ("CARTLINK_PIPELINE_HTTP_HEADERS", "X-Table: clicks"),
                ("CARTLINK_SINK_BEARER_TOKEN", "sink-secret-token-0123"),
            ],
        ),
    );
    let sent = clicks(&s, 5);
    s.wait_at_rest(REST);
    assert!(oracle(&sent, &c.ids()).missing.is_empty());
    let h = c.last_headers().unwrap();
    assert_eq!(h["content-type"], "application/x-ndjson");
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["authorization"], "Bearer sink-secret-token-0123");
    assert_eq!(h["x-table"], "clicks");
    assert!(!s.stderr().contains("sink-secret-token"), "the token is never logged");
}

#[test]
fn https_sink_trusts_a_private_ca_from_the_config() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let c = Collector::start_tls(server);
    let ca_file = scratch("https-ca").join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let mut e = env(&c, &[("CARTLINK_PIPELINE_HTTP_GZIP", "true")]);
    e[0].1 = format!("https://127.0.0.1:{}/ingest", c.addr.port());
    e.push(("CARTLINK_PIPELINE_HTTP_CA_FILE", ca_file.display().to_string()));
    let s = start("https", &e);
    let sent = clicks(&s, 20);
    let flow = s.wait_at_rest(REST);
    assert_eq!((flow.delivered, flow.dropped), (20.0, 0.0));
    let o = oracle(&sent, &c.ids());
    assert!(o.missing.is_empty() && o.phantom.is_empty());

    // Without the private CA the collector is not trusted: retried, never delivered.
    let mut e2 = env(&c, &[]);
    e2[0].1 = format!("https://127.0.0.1:{}/ingest", c.addr.port());
    let s2 = start("https-untrusted", &e2);
    clicks(&s2, 3);
    wait_until("a TLS failure to be counted", REST, || {
        s2.metric("cartlink_sink_errors_total{kind=\"connect\"}") > 0.0
    });
    assert_eq!(s2.metric("cartlink_clicks_delivered_total"), 0.0);
    let _ = std::fs::remove_dir_all(ca_file.parent().unwrap());
}

/// A server whose collector refuses: `n` clicks go to the spill, then SIGTERM (exit 0). The
/// collector, the environment (for a restart), the stopped server and the click ids sent.
fn spill_and_stop(name: &str, n: usize) -> (Collector, Vec<(&'static str, String)>, Server, Vec<String>) {
    let c = Collector::start();
    c.set(Mode::Refuse);
    let e = env(&c, &[("CARTLINK_DRAIN_GRACE_MS", "1000")]);
    let mut s = start(name, &e);
    let sent = clicks(&s, n);
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(15)), 0, "{}", s.stderr());
    (c, e, s, sent)
}

#[test]
fn restart_with_a_non_empty_spill_replays_it() {
    let (c, e, s, sent) = spill_and_stop("spill-restart", 150);
    let segments: Vec<_> = std::fs::read_dir(s.dir.join("data/spill"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!segments.is_empty() && segments.iter().all(|n| n.starts_with("seg-") && n.ends_with(".spill")));
    assert!(c.ids().is_empty());

    let dir = dir_for_restart(s, "spill-restart-2", PIPELINE_LINKS);
    c.set(Mode::Up);
    let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s2 = Server::start_in(dir.clone(), &pairs);
    let flow = s2.wait_at_rest(REST);
    assert_eq!(s2.metric("cartlink_clicks_recovered_total"), 150.0);
    assert_eq!(s2.metric("cartlink_clicks_replayed_total"), 150.0);
    assert_eq!((flow.accepted, flow.delivered, flow.dropped), (150.0, 150.0, 0.0));
    let o = oracle(&sent, &c.ids());
    assert!(o.missing.is_empty() && o.phantom.is_empty());
    assert_eq!(
        std::fs::read_dir(dir.join("data/spill")).unwrap().count(),
        0,
        "replayed segments deleted"
    );
}

/// The frames of a spill segment: (offset of the frame, its payload's `click_id`).
fn spill_frames(data: &[u8]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut at = 8; // b"CLSPILL1"
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let record: serde_json::Value = serde_json::from_slice(&data[at + 8..at + 8 + len]).unwrap();
        out.push((at, record["click_id"].as_str().unwrap().to_string()));
        at += 8 + len;
    }
    out
}

/// The fault matrix's disk row: a spoiled record in the spill costs that record (counted as
/// dropped), a torn tail its last one; everything after the spoiled one is still replayed.
#[test]
fn a_spoiled_spill_record_costs_only_itself_and_is_counted() {
    let (c, e, s, sent) = spill_and_stop("spill-spoiled", 150);
    let dir = dir_for_restart(s, "spill-spoiled-2", PIPELINE_LINKS);
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("data/spill"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert_eq!(segments.len(), 1, "150 clicks fit one segment");
    let mut data = std::fs::read(&segments[0]).unwrap();
    let frames = spill_frames(&data);
    assert_eq!(frames.len(), 150);
    // A byte of the 11th record's payload flipped (the disk spoiled it), and the last record
    // torn (a crash mid-write).
    let (spoiled_at, spoiled) = frames[10].clone();
    data[spoiled_at + 8 + 20] ^= 0x01;
    let torn = frames[149].1.clone();
    data.truncate(data.len() - 3);
    std::fs::write(&segments[0], &data).unwrap();

    c.set(Mode::Up);
    let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s2 = Server::start_in(dir, &pairs);
    let flow = s2.wait_at_rest(REST);
    let mut missing = oracle(&sent, &c.ids()).missing;
    missing.sort();
    let mut want = vec![spoiled, torn];
    want.sort();
    assert_eq!(missing, want, "only the spoiled and the torn record are missing");
    assert_eq!(s2.metric("cartlink_spill_corrupt_total"), 2.0);
    assert_eq!(s2.metric("cartlink_clicks_recovered_total"), 148.0);
    // The spoiled record is known lost (its frame was whole): accepted and dropped; how many
    // records a torn tail held cannot be told.
    assert_eq!(s2.metric("cartlink_clicks_dropped_total{reason=\"spill_error\"}"), 1.0);
    assert_eq!((flow.accepted, flow.delivered, flow.dropped), (149.0, 148.0, 1.0));
}

#[test]
fn sigterm_under_load_loses_nothing() {
    let c = Collector::start();
    let mut s = start("sigterm", &env(&c, &[]));
    let load = Load::start(s.public, 2, Duration::from_millis(1));
    wait_until("some load", REST, || load.sent() > 300);
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(15)), 0, "{}", s.stderr());
    let r = load.finish();
    let o = oracle(&r.ids, &c.ids());
    assert!(
        o.missing.is_empty(),
        "{} of {} redirected clicks missing",
        o.missing.len(),
        r.ids.len()
    );
    assert!(!s.stderr().contains("panicked"));
}

/// SIGTERM ends within the drain delay plus the grace period, even with a request still in
/// flight at its end and the sink down: the click flush gets only what is left of the grace,
/// and what it cannot deliver goes to the spill, which the next start delivers.
#[test]
fn sigterm_ends_within_delay_plus_grace_and_the_spill_keeps_the_rest() {
    use std::io::Write;
    let c = Collector::start();
    c.set(Mode::Refuse);
    // `env` sets the grace to 3 s.
    let e = env(&c, &[("CARTLINK_DRAIN_DELAY_MS", "300")]);
    let mut s = start("sigterm-budget", &e);
    let sent = clicks(&s, 50);
    // An upload that never finishes keeps its request in flight through the whole grace.
    let mut upload = std::net::TcpStream::connect(s.public).unwrap();
    upload
        .write_all(b"POST /webhooks/shopify/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"id\":")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let signalled = std::time::Instant::now();
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(15)), 0, "{}", s.stderr());
    let took = signalled.elapsed();
    // Before, the flush had a grace of its own after the connections' (6.3 s here).
    assert!(
        took >= Duration::from_millis(3200) && took < Duration::from_millis(4300),
        "exit {took:?} after SIGTERM; drain delay 0.3 s + grace 3 s"
    );
    assert!(s.stderr().contains("grace period over"), "{}", s.stderr());
    assert!(
        s.stderr().contains("stopped with clicks in the spill"),
        "{}",
        s.stderr()
    );
    drop(upload);

    let dir = dir_for_restart(s, "sigterm-budget-2", PIPELINE_LINKS);
    c.set(Mode::Up);
    let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s2 = Server::start_in(dir, &pairs);
    s2.wait_at_rest(REST);
    let o = oracle(&sent, &c.ids());
    assert!(
        o.missing.is_empty(),
        "{} of 50 missing after the restart",
        o.missing.len()
    );
}

#[test]
fn spill_cap_drops_exactly_the_clicks_it_counts() {
    let c = Collector::start();
    c.set(Mode::Refuse);
    let s = start(
        "spill-cap",
        &env(
            &c,
            &[
                ("CARTLINK_PIPELINE_SPILL_MAX_BYTES", "30000"),
                ("CARTLINK_PIPELINE_INFLIGHT_BATCHES", "1"),
                ("CARTLINK_PIPELINE_BATCH_MAX_RECORDS", "10"),
            ],
        ),
    );
    let sent = clicks(&s, 300);
    wait_until("the spill to reach its cap", REST, || {
        s.metric("cartlink_clicks_dropped_total{reason=\"spill_full\"}") > 0.0
    });
    assert!(s.metric("cartlink_spill_bytes") <= 30000.0);
    assert_eq!(s.metric("cartlink_spill_max_bytes"), 30000.0, "the cap, for the alert");
    c.set(Mode::Up);
    let flow = s.wait_at_rest(REST);
    let dropped = s.metric("cartlink_clicks_dropped_total{reason=\"spill_full\"}");
    let o = oracle(&sent, &c.ids());
    assert_eq!(o.missing.len() as f64, dropped, "exactly the counted drops are missing");
    assert!(o.phantom.is_empty());
    assert_eq!(flow.dropped, dropped);
    assert_eq!(flow.accepted, 300.0);
}

#[test]
fn enospc_in_the_spill_is_counted_survived_and_resumed() {
    let dir = scratch("enospc");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let Some(_unmount) = Tmpfs::mount(&data, "64k", "enospc_in_the_spill_is_counted_survived_and_resumed") else {
        return;
    };
    std::fs::write(dir.join("links.jsonl"), PIPELINE_LINKS).unwrap();
    let c = Collector::start();
    c.set(Mode::Refuse);
    let e = env(
        &c,
        &[
            ("CARTLINK_PIPELINE_INFLIGHT_BATCHES", "1"),
            ("CARTLINK_PIPELINE_BATCH_MAX_RECORDS", "5"),
        ],
    );
    let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_in(dir.clone(), &pairs);

    // Phase 1: the sink is down and the 64 KiB disk fills.
    let sent = clicks(&s, 400);
    wait_until("ENOSPC to be counted", REST, || {
        s.metric("cartlink_spill_errors_total{kind=\"enospc\"}") > 0.0
    });
    c.set(Mode::Up);
    let flow = s.wait_at_rest(REST);
    let dropped = s.metric("cartlink_clicks_dropped_total{reason=\"spill_error\"}");
    let o = oracle(&sent, &c.ids());
    assert!(dropped > 0.0);
    assert_eq!(o.missing.len() as f64, dropped, "exactly the counted drops are missing");
    assert_eq!(flow.dropped, dropped);

    // Phase 2: space is free again; a second outage spills and replays normally.
    c.set(Mode::Refuse);
    let spilled_before = s.metric("cartlink_clicks_spilled_total");
    let errors_before = s.metric("cartlink_spill_errors_total{kind=\"enospc\"}");
    let sent2 = clicks(&s, 30);
    wait_until("spill writes to resume", REST, || {
        s.metric("cartlink_clicks_spilled_total") > spilled_before
    });
    c.set(Mode::Up);
    let flow2 = s.wait_at_rest(REST);
    assert_eq!(flow2.dropped, dropped, "no new drops once space is free");
    assert_eq!(s.metric("cartlink_spill_errors_total{kind=\"enospc\"}"), errors_before);
    assert!(oracle(&sent2, &c.ids()).missing.is_empty());
    drop(s);
}

#[test]
fn kill_9_loses_only_the_in_memory_window_and_the_spill_survives() {
    let c = Collector::start();
    c.set(Mode::Refuse);
    let e = env(
        &c,
        &[
            ("CARTLINK_PIPELINE_INFLIGHT_BATCHES", "1"),
            ("CARTLINK_PIPELINE_BATCH_MAX_RECORDS", "5"),
        ],
    );
    let s = start("kill9", &e);
    let sent = clicks(&s, 100);
    // At rest with the sink down: everything is spilled except the batch the sender is retrying
    // and the one waiting in the in-flight channel.
    let mut spilled = 0.0;
    wait_until("the batcher to go idle", REST, || {
        let before = s.metric("cartlink_clicks_spilled_total");
        std::thread::sleep(Duration::from_millis(200));
        spilled = s.metric("cartlink_clicks_spilled_total");
        spilled == before && s.metric("cartlink_clicks_queue_depth") == 0.0 && spilled > 0.0
    });
    let mut s = s;
    s.signal("KILL");
    s.wait_exit(Duration::from_secs(10));

    let dir = dir_for_restart(s, "kill9-2", PIPELINE_LINKS);
    c.set(Mode::Up);
    let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s2 = Server::start_in(dir, &pairs);
    s2.wait_at_rest(REST);
    assert_eq!(
        s2.metric("cartlink_clicks_recovered_total"),
        spilled,
        "every spilled record survives kill -9"
    );
    let o = oracle(&sent, &c.ids());
    assert_eq!(o.missing.len() as f64, 100.0 - spilled);
    assert!(
        o.missing.len() <= 2 * 5,
        "only the in-memory window (in-flight batch + channel) is lost: {} missing",
        o.missing.len()
    );
}

/// Context switches of the server's pipeline thread so far.
fn pipeline_thread_switches(pid: u32) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        if std::fs::read_to_string(task.join("comm")).unwrap_or_default().trim() != "cartlink-clicks" {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        return status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
            .sum();
    }
    panic!("no cartlink-clicks thread in process {pid}");
}

#[test]
fn an_idle_pipeline_wakes_rarely_and_still_delivers_the_next_clicks() {
    let s = Server::start(
        "pipeline-idle",
        PIPELINE_LINKS,
        &[("CARTLINK_PIPELINE_BATCH_MAX_AGE_MS", "200")],
    );
    let pid = s.child.id();
    // Settle: the beat doubles from 5 ms to 25 ms within some 50 ms of the last record.
    std::thread::sleep(Duration::from_millis(500));
    let before = pipeline_thread_switches(pid);
    std::thread::sleep(Duration::from_secs(2));
    let woke = pipeline_thread_switches(pid) - before;
    // A 25 ms beat and the 100 ms tick: about 50 a second. At a fixed 5 ms beat it was 210.
    assert!(woke < 200, "the idle pipeline thread switched {woke} times in 2 s");
    // Lightly loaded (some 300 clicks a second, each beat finding a few): it wakes about as
    // rarely (136 times here). With the beat back at 5 ms as soon as one click came: 384.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, public) = (stop.clone(), s.public);
        std::thread::spawn(move || {
            let mut conn = Conn::open(public).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(conn.get(&path_for("p"), IPHONE).unwrap().status, 302);
                n += 1;
                std::thread::sleep(Duration::from_micros(2500));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = pipeline_thread_switches(pid);
    std::thread::sleep(Duration::from_secs(2));
    let woke = pipeline_thread_switches(pid) - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = load.join().unwrap();
    assert!(
        woke < 300,
        "under light load the pipeline thread switched {woke} times in 2 s ({n} clicks)"
    );
    let sent = clicks(&s, 5);
    wait_until("the clicks after the idle spell in the click files", REST, || {
        let mut written = String::new();
        for f in std::fs::read_dir(s.dir.join("clicks")).into_iter().flatten().flatten() {
            written.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
        }
        sent.iter().all(|id| written.contains(id.as_str()))
    });
}

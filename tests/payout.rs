//! Payouts against a running server and a real receiver on a loopback port: each commission
//! record POSTed signed, byte for byte the stream's record; retried through 503s and a stall,
//! delivered once; kept in the outbox across a SIGTERM and restart while the receiver is down;
//! not paid twice when Shopify re-sends the order after a restart; nothing posted while the
//! ledger's disk is full, and a commission the outbox's full disk refused posted once on the
//! retry; a 400 dead-lettered, not retried; clawbacks posted negative; `cartlink check`
//! refusing a bad set-up.

mod support;
use ring::hmac;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const LINKS: &str = r#"{"id":"kit","creator":"jane","campaign":"s26","discount":"JANE15","target":{"type":"url","url":"https://brand.example/kit"},"commission":{"rate_bp":1000}}
{"id":"sam","creator":"sam","campaign":"mugs","discount":"SAM10","target":{"type":"url","url":"https://mugs.example/"},"commission":{"flat_minor":500}}
"#;
const SHOP_SECRET: &str = "shop-secret";
const PAYOUT_SECRET: &str = "payout-secret-0123456789";
const ORDERS: &str = "/webhooks/shopify/orders";

/// What the receiver does with the next request.
#[derive(Debug, Clone, Copy)]
enum Act {
    Status(u16),
    /// Wait this long before answering 503 (longer than the server's payout timeout).
    Stall(u64),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    body: Vec<u8>,
    content_type: String,
    idempotency_key: String,
    /// `X-Cartlink-Signature` is `sha256=` + hex HMAC-SHA256(PAYOUT_SECRET, body).
    signed: bool,
    status: u16,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A payout receiver: verifies the signature and the Idempotency-Key like a real one would
/// (401 / 400 when they are wrong), answers by script (then 200), and records every request.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<(VecDeque<Act>, Vec<Got>)>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(script: &[Act]) -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    /// On a given address (one that was down until now).
    fn start_on(addr: SocketAddr, script: &[Act]) -> Receiver {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr) {
                Ok(l) => return Receiver::on(l, script),
                Err(e) => assert!(Instant::now() < end, "cannot re-bind {addr}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn on(listener: TcpListener, script: &[Act]) -> Receiver {
        listener.set_nonblocking(true).unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new((script.iter().copied().collect(), Vec::new()))),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (state, stop) = (r.state.clone(), r.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let state = state.clone();
                        std::thread::spawn(move || answer(conn, &state));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        r
    }

    fn url(&self) -> String {
        format!("http://{}/payouts", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.state.lock().unwrap().1.clone()
    }

    /// The requests answered 2xx: what the payout system took.
    fn taken(&self) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.status < 300).collect()
    }

    fn wait_taken(&self, n: usize) -> Vec<Got> {
        wait_until(&format!("{n} payouts taken"), Duration::from_secs(15), || {
            self.taken().len() >= n
        });
        self.taken()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one HTTP/1.1 request, answers it and closes the connection.
fn answer(conn: TcpStream, state: &Mutex<(VecDeque<Act>, Vec<Got>)>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(conn);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut body = vec![0; header("content-length").parse().unwrap_or(0)];
    reader.read_exact(&mut body).unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, PAYOUT_SECRET.as_bytes());
    let signed = header("x-cartlink-signature")
        .strip_prefix("sha256=")
        .and_then(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .is_some_and(|tag| hmac::verify(&key, &body, &tag).is_ok());
    let id_in_body = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["commission_id"].as_str().map(str::to_string));
    let act = state.lock().unwrap().0.pop_front().unwrap_or(Act::Status(200));
    let (status, stall) = match act {
        _ if !signed => (401, 0),
        _ if id_in_body.as_deref() != Some(header("idempotency-key").as_str()) => (400, 0),
        Act::Status(s) => (s, 0),
        Act::Stall(ms) => (503, ms),
    };
    // Recorded on arrival, so the list is in the order the attempts were made.
    state.lock().unwrap().1.push(Got {
        body,
        content_type: header("content-type"),
        idempotency_key: header("idempotency-key"),
        signed,
        status,
    });
    std::thread::sleep(Duration::from_millis(stall));
    let mut conn = reader.into_inner();
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

fn env_for(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CARTLINK_SHOPIFY_WEBHOOK_SECRETS", SHOP_SECRET.into()),
        ("CARTLINK_PAYOUT_URL", url.into()),
        ("CARTLINK_PAYOUT_SECRET", PAYOUT_SECRET.into()),
        ("CARTLINK_PAYOUT_RETRY_BASE_MS", "20".into()),
        ("CARTLINK_PAYOUT_RETRY_MAX_MS", "200".into()),
        ("CARTLINK_PAYOUT_TIMEOUT_MS", "2000".into()),
    ]
}

fn start(name: &str, url: &str) -> Server {
    let env = env_for(url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(name, LINKS, &env)
}

/// A receiver answering by `script`, and a server paying out to it.
fn with_receiver(name: &str, script: &[Act]) -> (Receiver, Server) {
    let rx = Receiver::start(script);
    let s = start(name, &rx.url());
    (rx, s)
}

/// The same server's data on a fresh process: SIGTERM, wait for exit 0, copy, start again.
fn restart(mut s: Server, name: &str, url: &str) -> Server {
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(15)), 0, "{}", s.stderr());
    let dir = scratch(name);
    copy_tree(&s.dir, &dir);
    drop(s);
    let env = env_for(url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_in(dir, &env)
}

fn order(id: u64, subtotal: &str, code: &str) -> String {
    format!(
        r#"{{"id":{id},"currency":"USD","current_subtotal_price":"{subtotal}","discount_codes":[{{"code":"{code}"}}],"note_attributes":[]}}"#
    )
}

fn pay(s: &Server, webhook_id: &str, body: &str) {
    assert_eq!(
        deliver_webhook(s, ORDERS, "orders/paid", webhook_id, body.as_bytes(), SHOP_SECRET),
        200
    );
}

/// The raw line (without its newline) of the commission record `id` in the stream, once it
/// is there: the one whose bytes are `posted` if given, else the only one.
fn stream_copy(s: &Server, id: &str, posted: Option<&[u8]>) -> Vec<u8> {
    let mut found = Vec::new();
    wait_until(&format!("{id} in the stream"), Duration::from_secs(10), || {
        found.clear();
        let Ok(files) = std::fs::read_dir(s.dir.join("clicks")) else {
            return false;
        };
        for f in files {
            let text = std::fs::read(f.unwrap().path()).unwrap();
            for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                if v["commission_id"] == id && posted.is_none_or(|p| p == line) {
                    found.push(line.to_vec());
                }
            }
        }
        !found.is_empty()
    });
    assert_eq!(found.len(), 1, "{id}: {} copies", found.len());
    found.pop().unwrap()
}

fn stream_line(s: &Server, id: &str) -> Vec<u8> {
    stream_copy(s, id, None)
}

fn metric_is(s: &Server, series: &str, want: f64) {
    wait_until(&format!("{series} == {want}"), Duration::from_secs(15), || {
        s.metric(series) == want
    });
}

#[test]
fn commissions_are_posted_signed_and_byte_for_byte_the_stream_record() {
    let (rx, s) = with_receiver("payout-basic", &[]);
    // 10 % of 123.45 is 12.345: 12.35 (half away from zero); SAM10 pays a flat 5.00.
    pay(&s, "w-1", &order(5_764_607_523_034_234_881, "123.45", "JANE15"));
    pay(&s, "w-2", &order(2, "40.00", "SAM10"));
    let got = rx.wait_taken(2);
    let ids: Vec<&str> = got.iter().map(|g| g.idempotency_key.as_str()).collect();
    assert_eq!(ids, ["shopify:5764607523034234881:paid", "shopify:2:paid"]);
    let amounts: Vec<_> = got.iter().map(|g| g.json()["amount_minor"].as_i64()).collect();
    assert_eq!(amounts, [Some(1235), Some(500)]);
    for g in &got {
        assert!(g.signed, "{g:?}");
        assert_eq!(g.content_type, "application/json");
        assert_eq!(g.json()["commission_id"], g.idempotency_key.as_str());
        assert_eq!(
            String::from_utf8_lossy(&g.body),
            String::from_utf8_lossy(&stream_line(&s, &g.idempotency_key)),
            "the body is the stream's record, byte for byte"
        );
    }
    assert_eq!(rx.got().len(), 2, "nothing else was posted");
    metric_is(&s, "cartlink_payout_sent_total", 2.0);
    assert_eq!(s.metric("cartlink_payout_queued_total"), 2.0);
    assert_eq!(s.metric("cartlink_payout_pending"), 0.0);
}

#[test]
fn a_stall_and_503s_are_retried_until_delivered_exactly_once() {
    // A stall past the 2 s payout timeout, then three 503s, then 200.
    let (rx, s) = with_receiver(
        "payout-retry",
        &[Act::Stall(5000), Act::Status(503), Act::Status(503), Act::Status(503)],
    );
    let started = Instant::now();
    pay(&s, "w-1", &order(7, "19.95", "JANE15"));
    let answered_in = started.elapsed();
    assert!(
        answered_in < Duration::from_millis(1500),
        "the webhook waited on the payout system: {answered_in:?}"
    );
    let got = rx.wait_taken(1);
    assert_eq!(got[0].json()["amount_minor"], 200);
    metric_is(&s, "cartlink_payout_sent_total", 1.0);
    std::thread::sleep(Duration::from_millis(500));
    let all = rx.got();
    let statuses: Vec<u16> = all.iter().map(|g| g.status).collect();
    assert_eq!(statuses, [503, 503, 503, 503, 200], "the stalled attempt answered late");
    assert!(all
        .iter()
        .all(|g| g.body == all[0].body && g.idempotency_key == "shopify:7:paid"));
    assert_eq!(s.metric("cartlink_payout_failures_total{kind=\"timeout\"}"), 1.0);
    assert_eq!(s.metric("cartlink_payout_failures_total{kind=\"status_5xx\"}"), 3.0);
    assert_eq!(s.metric("cartlink_payout_pending"), 0.0);
}

#[test]
fn the_outbox_survives_a_restart_while_the_receiver_is_down() {
    // A port with nothing listening on it: connections are refused.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{addr}/payouts");
    let s = start("payout-down", &url);
    pay(&s, "w-1", &order(11, "50.00", "JANE15"));
    wait_until("a refused attempt", Duration::from_secs(10), || {
        s.metric("cartlink_payout_failures_total{kind=\"connect\"}") >= 1.0
    });
    assert_eq!(s.metric("cartlink_payout_pending"), 1.0);

    let s = restart(s, "payout-down-2", &url);
    assert_eq!(s.metric("cartlink_payout_pending"), 1.0, "read back from the outbox");
    // Shopify re-sends the order (a new webhook id) while it is still queued: the ledger knows
    // it was paid, so nothing is made or queued again.
    pay(&s, "w-2", &order(11, "50.00", "JANE15"));
    stream_line(&s, "shopify:11:paid");
    assert_eq!(s.metric("cartlink_webhooks_total{outcome=\"applied\"}"), 1.0);
    assert_eq!(s.metric("cartlink_payout_queued_total"), 0.0);

    let rx = Receiver::start_on(addr, &[]);
    let got = rx.wait_taken(1);
    assert_eq!(
        (got[0].idempotency_key.as_str(), got[0].json()["amount_minor"].as_i64()),
        ("shopify:11:paid", Some(500))
    );
    metric_is(&s, "cartlink_payout_sent_total", 1.0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.got().len(), 1, "once");
    assert_eq!(s.metric("cartlink_payout_pending"), 0.0);
}

#[test]
fn a_redelivery_after_a_restart_is_not_paid_twice() {
    let (rx, s) = with_receiver("payout-dedup", &[]);
    let paid = order(21, "19.95", "JANE15");
    pay(&s, "w-1", &paid);
    rx.wait_taken(1);
    metric_is(&s, "cartlink_payout_sent_total", 1.0);

    // The webhooks' in-memory de-duplication is gone with the process; the commission ledger
    // (and behind it the outbox's) is not.
    let s = restart(s, "payout-dedup-2", &rx.url());
    pay(&s, "w-2", &paid);
    assert_eq!(s.metric("cartlink_payout_queued_total"), 0.0);
    // A new order still goes out, after the duplicate.
    pay(&s, "w-3", &order(22, "19.95", "JANE15"));
    let got = rx.wait_taken(2);
    std::thread::sleep(Duration::from_millis(500));
    let ids: Vec<String> = rx.got().iter().map(|g| g.idempotency_key.clone()).collect();
    assert_eq!(ids, ["shopify:21:paid", "shopify:22:paid"], "{got:?}");
}

#[test]
fn clawbacks_after_a_restart_take_back_exactly_what_was_paid() {
    let (rx, s) = with_receiver("payout-ledger", &[]);
    let paid = order(51, "123.45", "JANE15");
    pay(&s, "w-1", &paid);
    let refund = |id: u64, amount: &str| {
        format!(
            r#"{{"id":{id},"order_id":51,"refund_line_items":[{{"subtotal_set":{{"shop_money":{{"amount":"{amount}","currency_code":"USD"}}}}}}]}}"#
        )
    };
    let deliver = |s: &Server, topic: &str, id: &str, body: &str| {
        assert_eq!(deliver_webhook(s, ORDERS, topic, id, body.as_bytes(), SHOP_SECRET), 200);
    };
    deliver(&s, "refunds/create", "w-2", &refund(901, "9.99"));
    rx.wait_taken(2);
    // The process that saw the order paid is gone; its ledger on disk is not.
    let s = restart(s, "payout-ledger-2", &rx.url());
    // Shopify delivering the payment again (a new webhook id) after the restart changes
    // nothing: the ledger still knows what was paid and clawed back.
    pay(&s, "w-2b", &paid);
    deliver(&s, "refunds/create", "w-3", &refund(902, "20.00"));
    deliver(&s, "orders/cancelled", "w-4", &paid);
    deliver(&s, "refunds/create", "w-5", &refund(903, "50.00"));
    rx.wait_taken(4);
    std::thread::sleep(Duration::from_millis(500));
    let seen: Vec<(String, i64)> = rx
        .got()
        .iter()
        .map(|g| (g.idempotency_key.clone(), g.json()["amount_minor"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("shopify:51:paid".to_string(), 1235),
            ("shopify:51:refund:901".to_string(), -100),
            ("shopify:51:refund:902".to_string(), -200),
            ("shopify:51:cancelled".to_string(), -935),
        ],
        "a refund after the cancellation takes nothing more"
    );
    assert_eq!(seen.iter().map(|(_, a)| a).sum::<i64>(), 0);
    stream_line(&s, "shopify:51:cancelled");
    let paid_records: usize = std::fs::read_dir(s.dir.join("clicks"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .map(|text| text.matches("\"commission_id\":\"shopify:51:paid\"").count())
        .sum();
    assert_eq!(paid_records, 1, "the payment delivered again is not streamed again");
}

/// A server paying out to `rx` whose `data/<sub>` directory is a small tmpfs, already full.
fn with_full_disk(name: &str, sub: &str, rx: &Receiver) -> Option<(Tmpfs, Server)> {
    let dir = scratch(name);
    let disk = Tmpfs::mount(&dir.join("data").join(sub), "64k", name)?;
    disk.fill();
    std::fs::write(dir.join("links.jsonl"), LINKS).unwrap();
    let env = env_for(&rx.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Some((disk, Server::start_in(dir, &env)))
}

/// How many records of the stream have `key` == `id`.
fn in_stream(s: &Server, key: &str, id: &str) -> usize {
    read_records(&s.dir.join("clicks"))
        .iter()
        .filter(|r| r[key] == id)
        .count()
}

#[test]
fn nothing_is_posted_while_the_ledger_cannot_take_the_commission() {
    let rx = Receiver::start(&[]);
    let Some((disk, s)) = with_full_disk("payout-ledger-full", "commerce", &rx) else {
        return;
    };
    let paid = order(61, "19.95", "JANE15");
    let deliver = || deliver_webhook(&s, ORDERS, "orders/paid", "w-61", paid.as_bytes(), SHOP_SECRET);
    assert_eq!(deliver(), 503, "the ledger is full: Shopify must retry");
    // A payout posted now could never be clawed back: the ledger does not hold it.
    std::thread::sleep(Duration::from_millis(800));
    assert!(rx.got().is_empty(), "posted while the ledger could not take it");
    assert_eq!(s.metric("cartlink_payout_queued_total"), 0.0);

    disk.free();
    assert_eq!(deliver(), 200, "Shopify's retry, once there is room");
    let got = rx.wait_taken(1);
    assert_eq!(got[0].json()["amount_minor"], 200);
    stream_line(&s, "shopify:61:paid");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.got().len(), 1, "posted once");
    assert_eq!(in_stream(&s, "conversion_id", "shopify:61"), 1);
    assert_eq!(in_stream(&s, "commission_id", "shopify:61:paid"), 1);
}

#[test]
fn a_commission_the_outbox_could_not_take_is_posted_once_on_the_retry() {
    let rx = Receiver::start(&[]);
    let Some((disk, s)) = with_full_disk("payout-outbox-full", "payout", &rx) else {
        return;
    };
    let paid = order(62, "19.95", "JANE15");
    let deliver = |s: &Server, id: &str| deliver_webhook(s, ORDERS, "orders/paid", id, paid.as_bytes(), SHOP_SECRET);
    assert_eq!(deliver(&s, "w-62"), 503, "the outbox is full: Shopify must retry");
    // The ledger took it first (and the stream got the records then).
    let ledger = std::fs::read_to_string(s.dir.join("data/commerce/ledger.jsonl")).unwrap();
    assert!(
        ledger.contains(r#""order":62"#) && ledger.contains(r#""payout":true"#),
        "{ledger}"
    );
    stream_line(&s, "shopify:62:paid");
    std::thread::sleep(Duration::from_millis(500));
    assert!(rx.got().is_empty());

    // The retry makes the commission again from the ledger; the outbox takes it now.
    disk.free();
    assert_eq!(deliver(&s, "w-62"), 200);
    let got = rx.wait_taken(1);
    assert_eq!(
        (got[0].idempotency_key.as_str(), got[0].json()["amount_minor"].as_i64()),
        ("shopify:62:paid", Some(200))
    );
    // The stream has the record posted, byte for byte (beside the first attempt's copy).
    stream_copy(&s, "shopify:62:paid", Some(&got[0].body));
    // In the stream twice (same ids): once when the ledger took it, once when the outbox did.
    assert_eq!(in_stream(&s, "conversion_id", "shopify:62"), 2);
    assert_eq!(in_stream(&s, "commission_id", "shopify:62:paid"), 2);

    // After a restart Shopify delivers the order again: made again, known to the outbox, so
    // neither posted nor streamed again.
    let s = restart(s, "payout-outbox-full-2", &rx.url());
    assert_eq!(deliver(&s, "w-62b"), 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.got().len(), 1, "posted once");
    assert_eq!(s.metric("cartlink_payout_queued_total"), 0.0);
    assert_eq!(s.metric("cartlink_payout_duplicates_total"), 1.0);
    assert_eq!(
        in_stream(&s, "commission_id", "shopify:62:paid"),
        2,
        "not streamed again"
    );
}

#[test]
fn a_crash_between_the_ledger_and_the_outbox_is_mended_at_start_up() {
    let rx = Receiver::start(&[]);
    let Some((disk, mut s)) = with_full_disk("payout-crash", "payout", &rx) else {
        return;
    };
    let refund = br#"{"id":630,"order_id":63,"refund_line_items":[{"subtotal_set":{"shop_money":{"amount":"10.00","currency_code":"USD"}}}]}"#;
    // Paid while the outbox's disk is full; a refund too. Both are on the ledger, neither in
    // the outbox, and Shopify never gets to retry: the process is killed.
    assert_eq!(
        deliver_webhook(
            &s,
            ORDERS,
            "orders/paid",
            "w-63",
            order(63, "50.00", "JANE15").as_bytes(),
            SHOP_SECRET
        ),
        503
    );
    assert_eq!(
        deliver_webhook(&s, ORDERS, "refunds/create", "w-630", refund, SHOP_SECRET),
        503
    );
    s.signal("KILL");
    s.wait_exit(Duration::from_secs(10));
    disk.free();
    let dir = dir_for_restart(s, "payout-crash-2", LINKS);
    drop(disk);
    let env = env_for(&rx.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_in(dir, &env);
    // The start-up check finds both on the ledger and queues them, the payment first.
    let got = rx.wait_taken(2);
    let posted: Vec<(String, Option<i64>)> = got
        .iter()
        .map(|g| (g.idempotency_key.clone(), g.json()["amount_minor"].as_i64()))
        .collect();
    assert_eq!(
        posted,
        [
            ("shopify:63:paid".to_string(), Some(500)),
            ("shopify:63:refund:630".to_string(), Some(-100))
        ]
    );
    assert!(
        s.stderr().contains("queued commissions the ledger holds"),
        "{}",
        s.stderr()
    );
    // Made again, they go to the stream too, byte for byte what was posted.
    for g in &got {
        stream_copy(&s, &g.idempotency_key, Some(&g.body));
        assert_eq!(g.json()["edge"], "test-edge");
    }
    assert_eq!(s.metric("cartlink_payout_queued_total"), 2.0);
    // Shopify's retry after that finds them known.
    assert_eq!(
        deliver_webhook(&s, ORDERS, "refunds/create", "w-630", refund, SHOP_SECRET),
        200
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.got().len(), 2);
}

/// A 404 or a 401 says the endpoint (or the proxy before it) is wrong, not the record:
/// retried until it is right, never dead-lettered.
#[test]
fn a_404_or_401_is_retried_not_dead_lettered() {
    let (rx, s) = with_receiver("payout-404", &[Act::Status(404), Act::Status(401)]);
    pay(&s, "w-1", &order(41, "19.95", "JANE15"));
    metric_is(&s, "cartlink_payout_sent_total", 1.0);
    assert_eq!(s.metric("cartlink_payout_failures_total{kind=\"status_other\"}"), 2.0);
    assert_eq!(s.metric("cartlink_payout_dead_letters_total"), 0.0);
    let ids: Vec<String> = rx.got().iter().map(|g| g.idempotency_key.clone()).collect();
    assert_eq!(ids, ["shopify:41:paid"; 3]);
}

#[test]
fn a_400_is_dead_lettered_and_not_retried() {
    let (rx, s) = with_receiver("payout-400", &[Act::Status(400)]);
    pay(&s, "w-1", &order(31, "19.95", "JANE15"));
    metric_is(&s, "cartlink_payout_dead_letters_total", 1.0);
    assert_eq!(s.metric("cartlink_payout_failures_total{kind=\"status_4xx\"}"), 1.0);
    assert_eq!(s.metric("cartlink_payout_pending"), 0.0);
    assert_eq!(s.metric("cartlink_payout_sent_total"), 0.0);
    let dead = std::fs::read_to_string(s.dir.join("data/payout/dead-letter.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["record"]["commission_id"], "shopify:31:paid");
    assert_eq!(lines[0]["record"]["amount_minor"], 200);
    assert!(lines[0]["error"].as_str().unwrap().contains("400"), "{dead}");
    // The queue is not held up: the next commission goes out; the refused one never again.
    pay(&s, "w-2", &order(32, "19.95", "JANE15"));
    rx.wait_taken(1);
    metric_is(&s, "cartlink_payout_sent_total", 1.0);
    std::thread::sleep(Duration::from_millis(500));
    let ids: Vec<String> = rx.got().iter().map(|g| g.idempotency_key.clone()).collect();
    assert_eq!(ids, ["shopify:31:paid", "shopify:32:paid"]);
    assert!(!s.stderr().contains(PAYOUT_SECRET), "the secret is never logged");
}

#[test]
fn clawbacks_are_posted_with_negative_amounts() {
    let (rx, s) = with_receiver("payout-clawback", &[]);
    let paid = order(41, "123.45", "JANE15");
    pay(&s, "w-1", &paid);
    // A refund of 9.99 claws back 1.00 (10 %, rounded); the cancellation what is left.
    let refund = br#"{"id":991,"order_id":41,"refund_line_items":[{"subtotal_set":{"shop_money":{"amount":"9.99","currency_code":"USD"}}}]}"#;
    assert_eq!(
        deliver_webhook(&s, ORDERS, "refunds/create", "w-2", refund, SHOP_SECRET),
        200
    );
    assert_eq!(
        deliver_webhook(&s, ORDERS, "orders/cancelled", "w-3", paid.as_bytes(), SHOP_SECRET),
        200
    );
    let got = rx.wait_taken(3);
    let seen: Vec<(String, i64, i64)> = got
        .iter()
        .map(|g| {
            let v = g.json();
            (
                g.idempotency_key.clone(),
                v["amount_minor"].as_i64().unwrap(),
                v["basis_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("shopify:41:paid".to_string(), 1235, 12345),
            ("shopify:41:refund:991".to_string(), -100, -999),
            ("shopify:41:cancelled".to_string(), -1135, -11346),
        ]
    );
    for g in &got {
        assert!(g.signed);
        assert_eq!(g.body, stream_line(&s, &g.idempotency_key));
    }
}

#[test]
fn check_refuses_a_bad_payout_url_or_a_missing_secret() {
    let dir = scratch("payout-check");
    std::fs::write(dir.join("links.jsonl"), LINKS).unwrap();
    let check = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cartlink"))
            .arg("check")
            .current_dir(&dir)
            .env_clear()
            .env("CARTLINK_LINKS", dir.join("links.jsonl"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(PAYOUT_SECRET), "the secret is never printed: {text}");
        (out.status.success(), text)
    };
    let (ok, text) = check(&[
        ("CARTLINK_PAYOUT_URL", "ftp://payouts.example/in"),
        ("CARTLINK_PAYOUT_SECRET", PAYOUT_SECRET),
    ]);
    assert!(!ok && text.contains("payout.url must be http:// or https://"), "{text}");
    let (ok, text) = check(&[("CARTLINK_PAYOUT_URL", "https://payouts.example/in")]);
    assert!(!ok && text.contains("CARTLINK_PAYOUT_SECRET"), "{text}");
    let (ok, text) = check(&[
        ("CARTLINK_PAYOUT_URL", "https://payouts.example/in"),
        ("CARTLINK_PAYOUT_SECRET", PAYOUT_SECRET),
    ]);
    assert!(ok && text.contains("payouts to https://payouts.example/in"), "{text}");
    let (ok, text) = check(&[]);
    assert!(ok && text.contains("payouts off"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

//! The NATS JetStream sink against the real server on 127.0.0.1:4222 (this machine and CI;
//! `CARTLINK_TEST_NATS=host:port` points the tests elsewhere).
//! Without a reachable server these tests print `SKIPPED …` and pass, so `cargo test` works on a
//! fresh machine; under `CI=true` a missing server fails them instead.
//!
//! Each test uses its own stream and subject and deletes the stream at the end.

mod support;
use cartlink::clicks::batch::Batch;
use cartlink::clicks::nats_sink::NatsSink;
use std::collections::HashSet;
use std::time::Duration;
use support::*;

const REST: Duration = Duration::from_secs(20);

struct Stream {
    name: String,
    subject: String,
    rt: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
}

impl Stream {
    fn new(test: &str) -> Stream {
        let tag = format!(
            "{}_{}_{}",
            test,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let js = rt.block_on(async { async_nats::jetstream::new(async_nats::connect(nats_addr()).await.unwrap()) });
        Stream {
            name: format!("CARTLINK_TEST_{}", tag.to_uppercase()),
            subject: format!("cartlink.test.{tag}"),
            rt,
            js,
        }
    }

    /// Every message in the stream: (click_id from the payload, Nats-Msg-Id header).
    fn messages(&self) -> Vec<(String, String)> {
        self.rt.block_on(async {
            let mut stream = self.js.get_stream(&self.name).await.unwrap();
            let n = stream.info().await.unwrap().state.messages;
            let mut out = Vec::new();
            for seq in 1..=n {
                let m = stream.get_raw_message(seq).await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                let msg_id = m
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|h| h.as_str().to_string())
                    .unwrap_or_default();
                out.push((v["click_id"].as_str().unwrap().to_string(), msg_id));
            }
            out
        })
    }

    fn env(&self, server: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CARTLINK_SINK", format!("nats://{server}/{}", self.subject)),
            ("CARTLINK_PIPELINE_NATS_STREAM", self.name.clone()),
            ("CARTLINK_PIPELINE_RETRY_BASE_MS", "20".into()),
            ("CARTLINK_PIPELINE_RETRY_MAX_MS", "300".into()),
            ("CARTLINK_PIPELINE_HTTP_TIMEOUT_MS", "2000".into()),
            ("CARTLINK_DRAIN_GRACE_MS", "1000".into()),
        ]
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.js.delete_stream(&self.name));
    }
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn clicks(s: &Server, n: usize) -> Vec<String> {
    let mut conn = Conn::open(s.public).unwrap();
    let path = path_for("p");
    (0..n)
        .map(|_| {
            let r = conn.get(&path, IPHONE).unwrap();
            assert_eq!(r.status, 302);
            r.click_id()
        })
        .collect()
}

#[test]
fn nats_sink_publishes_every_click_with_its_id_and_the_server_dedups_retries() {
    if !nats_available("nats_sink_publishes_every_click_with_its_id_and_the_server_dedups_retries") {
        return;
    }
    let st = Stream::new("deliver");
    let s = Server::start("nats", PIPELINE_LINKS, &pairs(&st.env(&nats_addr())));
    let sent = clicks(&s, 120);
    let flow = s.wait_at_rest(REST);
    assert_eq!((flow.delivered, flow.dropped), (120.0, 0.0));
    let msgs = st.messages();
    assert_eq!(msgs.len(), 120);
    for (id, msg_id) in &msgs {
        assert_eq!(id, msg_id, "Nats-Msg-Id is the click id");
    }
    let got: HashSet<String> = msgs.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, sent.iter().cloned().collect::<HashSet<_>>());

    // A retried batch (the ack was lost, so the sink sends it again) is stored once.
    let mut batch = Batch::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for id in &sent[..10] {
        batch.push_raw(format!("{{\"v\":1,\"type\":\"click\",\"click_id\":\"{id}\"}}\n").as_bytes());
    }
    let cfg = cartlink::config::PipelineConfig {
        nats_stream: st.name.clone(),
        ..Default::default()
    };
    let mut sink = NatsSink::new(&nats_addr(), &st.subject, &cfg);
    rt.block_on(sink.send(&batch)).unwrap();
    rt.block_on(sink.send(&batch)).unwrap();
    assert_eq!(
        st.messages().len(),
        120,
        "duplicates by Nats-Msg-Id are dropped by the server"
    );
}

#[test]
fn nats_down_then_restart_replays_the_spill_into_jetstream() {
    if !nats_available("nats_down_then_restart_replays_the_spill_into_jetstream") {
        return;
    }
    let st = Stream::new("replay");
    // Nothing listens on port 1: the sink is down from the start.
    let e1 = st.env("127.0.0.1:1");
    let mut s = Server::start("nats-down", PIPELINE_LINKS, &pairs(&e1));
    let sent = clicks(&s, 80);
    wait_until("the sink to be seen down", REST, || s.metric("cartlink_sink_up") == 0.0);
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(15)), 0, "{}", s.stderr());

    let dir = scratch("nats-up");
    copy_tree(&s.dir.join("data"), &dir.join("data"));
    std::fs::write(dir.join("links.jsonl"), PIPELINE_LINKS).unwrap();
    drop(s);
    let s2 = Server::start_in(dir, &pairs(&st.env(&nats_addr())));
    let flow = s2.wait_at_rest(REST);
    assert_eq!(s2.metric("cartlink_clicks_recovered_total"), 80.0);
    assert_eq!((flow.delivered, flow.dropped), (80.0, 0.0));
    let got: HashSet<String> = st.messages().into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, sent.into_iter().collect::<HashSet<_>>());
}

//! Pipeline throughput, in process: how many click records per second one pipeline thread
//! moves into the file sink and into an HTTP collector on loopback. Ignored by default (it is a
//! measurement, not a check); run in release:
//!
//!     cargo test --release --test pipeline_throughput -- --ignored --nocapture --test-threads 1

use cartlink::clicks::{self, Click, Device, Served};
use cartlink::config::{PipelineConfig, SinkSettings};
use cartlink::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: u64 = 1_000_000;

fn link() -> Arc<cartlink::links::Link> {
    let table = cartlink::links::parse(
        r#"{"id":"jane-serum","creator":"jane","campaign":"summer26","target":{"type":"url","url":"https://brand.example/p"}}"#,
        "bench",
        &cartlink::links::signature::KeyRing::parse(cartlink::config::DEMO_SIGNING_KEYS).unwrap(),
    )
    .unwrap();
    table.get(b"jane-serum").unwrap().clone()
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn run(name: &str, sink: SinkSettings) {
    let dir = std::env::temp_dir().join(format!("cartlink-throughput-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let metrics = Metrics::new();
    let cfg = PipelineConfig {
        queue_capacity: N as usize,
        ..Default::default()
    };
    let (recorder, pipeline) = clicks::start(&sink, &cfg, &dir.join("data"), metrics.clone(), "bench").unwrap();
    let link = link();
    let started = Instant::now();
    for i in 0..N {
        recorder.record(&Click {
            click_id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | u128::from(i)),
            ts_ms: 1_780_000_000_000 + i,
            link: &link,
            sub: None,
            country: Some(*b"US"),
            device: Device::Ios,
            bot: false,
            unique: true,
            app: Some("instagram"),
            referer_host: Some("l.instagram.com"),
            ip: "203.0.113.0".parse().unwrap(),
            served: Served::Target,
            oos: &[],
            target_type: cartlink::links::TargetType::Url,
            status: 302,
            attributed_to: None,
        });
    }
    let recorded = started.elapsed();
    loop {
        let text = metrics.render();
        let delivered = counter(&text, "cartlink_clicks_delivered_total");
        let dropped = counter(&text, "cartlink_clicks_dropped_total{reason=\"queue_full\"}");
        if delivered + dropped >= N {
            let spilled = counter(&text, "cartlink_clicks_spilled_total");
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{name}: {N} records delivered in {secs:.3} s = {:.0} records/s (recording alone: {:.0}/s; spilled {spilled}, dropped {dropped})",
                N as f64 / secs,
                N as f64 / recorded.as_secs_f64()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    pipeline.shutdown(Instant::now() + Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "measurement; run in release with --ignored"]
fn file_sink_throughput() {
    let dir = std::env::temp_dir().join(format!("cartlink-throughput-files-{}", std::process::id()));
    run("file sink", SinkSettings::File { dir: dir.clone() });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "measurement; run in release with --ignored"]
fn http_sink_throughput() {
    // A minimal collector: reads each body and answers 200.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    use http_body_util::BodyExt;
                    let body = req.into_body().collect().await?.to_bytes();
                    std::hint::black_box(memchr::memchr_iter(b'\n', &body).count());
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    run(
        "http sink",
        SinkSettings::Http {
            url: format!("http://{addr}/ingest"),
            auth: Default::default(),
        },
    );
    rt.shutdown_background();
}

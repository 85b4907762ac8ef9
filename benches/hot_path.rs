//! The redirect hot path, in process: verify + resolve + build `Location` + cookie + record
//! handed to the pipeline (file sink on another thread), plus its parts on their own.
//!
//!     cargo bench --bench hot_path

use cartlink::clicks;
use cartlink::config::{Config, SinkSettings};
use cartlink::links;
use cartlink::metrics::Metrics;
use cartlink::redirect;
use cartlink::state::App;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Uri};
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

// The server's allocator (src/main.rs), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0";

fn make_app(n: usize) -> (Arc<App>, clicks::Pipeline) {
    // The full path: geo database, client IP from X-Forwarded-For behind a trusted proxy.
    let geo = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/geo-geolite2.mmdb");
    let env = move |k: &str| match k {
        "CARTLINK_SIGNING_KEYS" => Some(KEYS.to_string()),
        "CARTLINK_GEOIP" => Some(geo.to_string()),
        "CARTLINK_TRUSTED_PROXIES" => Some("127.0.0.1/32".to_string()),
        _ => None,
    };
    let dir = bench_dir();
    let settings = Config::load(Path::new("none.toml"), false, &env)
        .unwrap()
        .validate(&env)
        .unwrap();
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            r#"{{"id":"l{i}","creator":"creator{c}","campaign":"s26","discount":"CODE{c}","target":{{"type":"shopify_cart","shop":"brand.example","items":[{{"variant":{v},"qty":1}},{{"variant":40000000002,"qty":2}}]}},"utm":{{"source":"instagram","medium":"creator"}}}}"#,
            c = i % 1000,
            v = 9_007_199_254_740_993u64 + i as u64
        ));
        text.push('\n');
    }
    let table = links::parse(&text, "bench", &settings.secrets.keys).unwrap();
    let metrics = Metrics::new();
    let sink = SinkSettings::File {
        dir: dir.join("clicks"),
    };
    let (recorder, pipeline) =
        clicks::start(&sink, &settings.pipeline, &dir.join("data"), metrics.clone(), "bench").unwrap();
    let app = App::new(&settings, table, recorder, metrics, Path::new("none.toml"), false).unwrap();
    (Arc::new(app), pipeline)
}

/// Where the bench's pipeline writes its click records and spill (gigabytes in a full run):
/// removed when the bench ends.
fn bench_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cartlink-bench-{}", std::process::id()))
}

fn bench(c: &mut Criterion) {
    let n = 100_000;
    let (app, pipeline) = make_app(n);
    let keys = links::signature::KeyRing::parse(KEYS).unwrap();
    let uris: Vec<Uri> = (0..1024)
        .map(|i| {
            format!(
                "/l{}.{}?sub=reel-{i}&fbclid=abc",
                (i * 97) % n,
                keys.sign(&format!("l{}", (i * 97) % n))
            )
            .parse()
            .unwrap()
        })
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert(http::header::USER_AGENT, HeaderValue::from_static(IPHONE));
    headers.insert(
        http::header::REFERER,
        HeaderValue::from_static("https://l.instagram.com/"),
    );
    let peer: IpAddr = "127.0.0.1".parse().unwrap();

    let mut i = 0usize;
    c.bench_function("redirect/human_click_full_path", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(redirect::handle(&app, &Method::GET, &uris[i], &headers, peer))
        })
    });
    c.bench_function("redirect/head_probe", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(redirect::handle(&app, &Method::HEAD, &uris[i], &headers, peer))
        })
    });
    let forged: Uri = "/l1.AAAAAAAAAAAAAAAA".parse().unwrap();
    c.bench_function("redirect/forged_404", |b| {
        b.iter(|| black_box(redirect::handle(&app, &Method::GET, &forged, &headers, peer)))
    });
    let sig = keys.sign("l42");
    c.bench_function("signature/verify", |b| {
        b.iter(|| black_box(keys.verify(black_box(b"l42"), sig.as_bytes())))
    });
    let id = uuid::Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001);
    c.bench_function("cookie/write", |b| {
        let mut s = String::with_capacity(256);
        b.iter(|| {
            s.clear();
            redirect::cookie::write(&keys, "cl_att", &id, 1_800_000_000, "l42", "creator42", &mut s);
            black_box(s.len())
        })
    });
    // What the pipeline thread does per click: a packed click (as the redirect path leaves it
    // in a ring) rendered as its JSON record.
    let table = links::parse(
        r#"{"id":"l42","creator":"creator42","campaign":"s26","target":{"type":"url","url":"https://brand.example/"}}"#,
        "bench",
        &keys,
    )
    .unwrap();
    let link = table.get(b"l42").unwrap();
    let mut packed = Vec::new();
    clicks::Click {
        click_id: id,
        ts_ms: 1_800_000_000_123,
        link,
        sub: Some("reel-7"),
        country: Some(*b"DE"),
        device: clicks::Device::Ios,
        bot: false,
        unique: true,
        app: Some("instagram"),
        referer_host: Some("l.instagram.com"),
        ip: "203.0.113.0".parse().unwrap(),
        served: clicks::Served::Target,
        oos: &[],
        target_type: links::TargetType::ShopifyCart,
        status: 302,
        attributed_to: None,
    }
    .pack(&mut packed);
    c.bench_function("clicks/render (packed click to its JSON record)", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            black_box(clicks::record::render(black_box(&packed), "edge-1", &mut out))
        })
    });
    // What audience work adds, part by part.
    c.bench_function("audience/referer_host (an in-app browser's Referer)", |b| {
        b.iter(|| black_box(cartlink::audience::referer_host(black_box(&headers))))
    });
    c.bench_function("audience/agent (cached User-Agent)", |b| {
        b.iter(|| black_box(cartlink::audience::agent(black_box(&headers))))
    });
    c.bench_function("audience/agent scan (first sight: bots, device, app)", |b| {
        b.iter(|| black_box(cartlink::audience::agent::scan(black_box(IPHONE.as_bytes()))))
    });
    let snap = app.state.load();
    let client: IpAddr = "203.0.113.77".parse().unwrap();
    c.bench_function("audience/client_ip (trusted proxy, XFF)", |b| {
        b.iter(|| black_box(snap.view.client_ip.resolve(black_box(peer), &headers)))
    });
    let geo = snap.view.geo.as_ref().unwrap();
    c.bench_function("audience/geo country lookup", |b| {
        b.iter(|| black_box(geo.country(black_box(client))))
    });
    let mut n_unique = 0u32;
    c.bench_function("audience/unique check_and_insert", |b| {
        b.iter(|| {
            n_unique = n_unique.wrapping_add(1);
            black_box(app.unique.check_and_insert(
                client,
                0x1234_5678_9abc_def0,
                if n_unique % 2 == 0 { "a" } else { "b" },
            ))
        })
    });
    drop(snap);
    drop(app);
    pipeline.shutdown(std::time::Instant::now() + std::time::Duration::from_secs(5));

    // A spike spread over many creators' links: each request's link (and its rendered URL) is
    // most likely not in the CPU's caches, as on a busy edge. 65,536 URIs over a million links.
    let n = 1_000_000;
    let (cold, cold_pipeline) = make_app(n);
    let uris: Vec<Uri> = (0..1u64 << 16)
        .map(|i| {
            let id = format!("l{}", i.wrapping_mul(2_654_435_761) % n as u64);
            format!("/{id}.{}?sub=reel-{i}", keys.sign(&id)).parse().unwrap()
        })
        .collect();
    c.bench_function("redirect/human_click_cold_links (1M links)", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            black_box(redirect::handle(&cold, &Method::GET, &uris[i], &headers, peer))
        })
    });
    drop(cold);
    cold_pipeline.shutdown(std::time::Instant::now() + std::time::Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(bench_dir());
}

criterion_group!(benches, bench);
criterion_main!(benches);

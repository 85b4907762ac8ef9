//! The whole public path in process: arbitrary request target and headers through
//! `redirect::handle` (query merging, URL building, cookie, audience). Never panics; every
//! redirect's `Location` is an https URL on the link's own host.
#![no_main]
use cartlink::clicks;
use cartlink::config::{Config, SinkSettings};
use cartlink::links::signature::KeyRing;
use cartlink::metrics::Metrics;
use cartlink::state::App;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const LINKS: &str = concat!(
    r#"{"id":"kit","creator":"jane","campaign":"s26","discount":"JANE15","target":{"type":"shopify_cart","shop":"brand.example","items":[{"variant":9007199254740993,"qty":1}]},"utm":{"source":"instagram"}}"#,
    "\n",
    r#"{"id":"url","creator":"jane","campaign":"s26","discount":"J&1","target":{"type":"url","url":"https://brand.example/p?x=1#f","platform":"shopify"}}"#,
    "\n",
    r#"{"id":"woo","creator":"sam","campaign":"m","discount":"S10","target":{"type":"woocommerce_cart","shop":"brand.example","items":[{"product":1,"variation":2,"qty":2}]}}"#,
    "\n",
);

struct Fixture {
    app: Arc<App>,
    tokens: Vec<String>,
    _pipeline: clicks::Pipeline,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let env = |k: &str| (k == "CARTLINK_SIGNING_KEYS").then(|| KEYS.to_string());
        let mut cfg = Config::default();
        cfg.trusted_proxies = vec!["10.0.0.0/8".into()];
        let settings = cfg.validate(&env).expect("valid settings");
        let table = cartlink::links::parse(LINKS, "fuzz", &settings.secrets.keys).expect("valid links");
        let metrics = Metrics::new();
        let dir = std::env::temp_dir().join(format!("cartlink-fuzz-{}", std::process::id()));
        let sink = SinkSettings::File { dir: dir.join("clicks") };
        let (recorder, pipeline) = clicks::start(&sink, &settings.pipeline, &dir.join("data"), metrics.clone(), "fuzz".into())
            .expect("file sink");
        let app = App::new(
            &settings,
            table,
            recorder,
            metrics,
            std::path::Path::new("none.toml"),
            false,
        )
        .expect("app");
        let keys = KeyRing::parse(KEYS).expect("keys");
        let tokens = ["kit", "url", "woo"]
            .iter()
            .map(|id| format!("/{id}.{}", keys.sign(id)))
            .collect();
        Fixture {
            app: Arc::new(app),
            tokens,
            _pipeline: pipeline,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // Byte 0 picks a valid token (so the fuzzer reaches URL building) or none; the first line
    // of the rest is the query or whole target, the other lines are `name: value` headers.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let target = match f.tokens.get(pick as usize % 4) {
        Some(t) => {
            let mut s = t.clone().into_bytes();
            s.extend_from_slice(first);
            s
        }
        None => first.to_vec(),
    };
    let Ok(uri) = Uri::try_from(target) else { return };
    let mut headers = HeaderMap::new();
    for line in lines.take(64) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    let method = if pick & 0x80 != 0 { Method::HEAD } else { Method::GET };
    let peer = if pick & 0x40 != 0 {
        [10, 0, 0, 1]
    } else {
        [203, 0, 113, 9]
    };
    let resp = cartlink::redirect::handle(&f.app, &method, &uri, &headers, peer.into());
    if resp.status().is_redirection() {
        let loc = resp.headers()[http::header::LOCATION]
            .to_str()
            .expect("Location is ASCII");
        assert!(
            loc.starts_with("https://brand.example/"),
            "Location left the link's host: {loc}"
        );
    }
});

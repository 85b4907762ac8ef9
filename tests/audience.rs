//! Who clicked, over real sockets: client address behind a trusted proxy, country from both
//! database schemas and from the CDN header, geo and device targets, bots and previews,
//! unique humans, `max_clicks` with bots not counted.

mod support;
use support::*;

const LINKS: &str = r#"{"id":"geo","creator":"c","campaign":"k","target":{"type":"url","url":"https://brand.example/"},"geo":{"FR":{"type":"url","url":"https://brand.example/fr"},"DE":{"type":"url","url":"https://brand.example/de"}},"device":{"android":{"type":"url","url":"https://brand.example/android"}}}
{"id":"other","creator":"c","campaign":"k","target":{"type":"url","url":"https://brand.example/o"}}
{"id":"capped","creator":"c","campaign":"k","target":{"type":"url","url":"https://brand.example/first500"},"max_clicks":3,"fallback":"https://brand.example/waitlist"}
"#;

const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn get(s: &Server, id: &str, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("User-Agent", IPHONE)];
    h.extend_from_slice(headers);
    let r = s.get(&path_for(id), &h);
    assert_eq!(r.status, 302, "{r:?}");
    r
}

fn record(s: &Server, r: &Resp) -> serde_json::Value {
    let id = r.click_id();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(rec) = s.clicks().into_iter().find(|c| c["click_id"] == id.as_str()) {
            return rec;
        }
        assert!(std::time::Instant::now() < end, "no record for {id}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn trusted_proxy_geo_and_device_targets_with_both_schemas() {
    for db in ["geo-geolite2.mmdb", "geo-iplocation.mmdb"] {
        let s = Server::start(
            "audience-geo",
            LINKS,
            &[
                ("CARTLINK_GEOIP", &fixture(db)),
                ("CARTLINK_TRUSTED_PROXIES", "127.0.0.1/32"),
            ],
        );
        let fr = get(&s, "geo", &[("X-Forwarded-For", "6.6.6.6, 203.0.113.9")]);
        assert!(
            fr.location().starts_with("https://brand.example/fr?cl_click="),
            "{db}: {}",
            fr.location()
        );
        let rec = record(&s, &fr);
        assert_eq!(
            (rec["country"].as_str(), rec["ip"].as_str(), rec["served"].as_str()),
            (Some("FR"), Some("203.0.113.0"), Some("geo")),
            "{db}"
        );
        assert_eq!(rec["app"], "instagram");
        let de = get(&s, "geo", &[("X-Forwarded-For", "198.51.100.7")]);
        assert!(de.location().starts_with("https://brand.example/de?"), "{db}");
        // The CDN's country header from a trusted peer wins over the database.
        let gb = get(&s, "geo", &[("X-Forwarded-For", "203.0.113.9"), ("CF-IPCountry", "gb")]);
        assert_eq!(record(&s, &gb)["country"], "GB");
        // No geo target for the country: device target, then the default.
        let android = s.get(
            &path_for("geo"),
            &[("User-Agent", ANDROID), ("X-Forwarded-For", "8.8.8.8")],
        );
        assert!(
            android.location().starts_with("https://brand.example/android?"),
            "{}",
            android.location()
        );
        let rec = record(&s, &android);
        assert_eq!(
            (rec["country"].is_null(), rec["device"].as_str(), rec["served"].as_str()),
            (true, Some("android"), Some("device"))
        );
        let plain = get(&s, "geo", &[]);
        assert_eq!(record(&s, &plain)["country"], "US", "127.0.0.1 is US in the fixture");
    }
}

#[test]
fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let s = Server::start(
        "audience-untrusted",
        LINKS,
        &[("CARTLINK_GEOIP", &fixture("geo-geolite2.mmdb"))],
    );
    for headers in [
        vec![("X-Forwarded-For", "203.0.113.9")],
        vec![("Forwarded", "for=203.0.113.9")],
        vec![("CF-Connecting-IP", "203.0.113.9"), ("CF-IPCountry", "FR")],
    ] {
        let r = get(&s, "geo", &headers);
        assert!(
            r.location().starts_with("https://brand.example/?cl_click="),
            "{headers:?}: {}",
            r.location()
        );
        let rec = record(&s, &r);
        assert_eq!(
            (rec["ip"].as_str(), rec["country"].as_str()),
            (Some("127.0.0.0"), Some("US")),
            "{headers:?}"
        );
    }
    // No full client address in any record.
    for rec in s.clicks() {
        assert!(rec["ip"].as_str().unwrap().ends_with(".0"), "{rec}");
    }
}

#[test]
fn bots_previews_and_prefetch_are_answered_never_counted() {
    let s = Server::start("audience-bots", LINKS, &[]);
    let fixtures: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("crawler-user-agents.json")).unwrap()).unwrap();
    // A sample of the list's own instances over the wire (all of them are checked in-process below).
    let sample: Vec<String> = fixtures
        .iter()
        .step_by(15)
        .filter_map(|e| e["instances"].as_array()?.first()?.as_str().map(str::to_string))
        .filter(|ua| ua.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .collect();
    assert!(sample.len() > 50);
    let mut conn = Conn::open(s.public).unwrap();
    for ua in &sample {
        let r = conn.get(&path_for("capped"), ua).unwrap();
        assert_eq!(r.status, 302, "{ua}");
        assert!(
            r.header("set-cookie").is_none() && click_id_of(r.location()).is_none(),
            "{ua}"
        );
        assert!(
            r.location().starts_with("https://brand.example/first500"),
            "bots never use up max_clicks: {ua}"
        );
    }
    for (h, v) in [
        ("Sec-Purpose", "prefetch;prerender"),
        ("Purpose", "prefetch"),
        ("X-Purpose", "preview"),
    ] {
        let r = s.get(&path_for("capped"), &[("User-Agent", IPHONE), (h, v)]);
        assert!(r.header("set-cookie").is_none(), "{h}");
    }
    let n = sample.len() + 3;
    let records = s.wait_clicks(n);
    assert_eq!(
        records
            .iter()
            .filter(|r| r["bot"] == true && r["unique"] == false)
            .count(),
        n
    );
    assert_eq!(s.metric("cartlink_clicks_total{kind=\"human\"}"), 0.0);
    assert_eq!(s.metric("cartlink_clicks_total{kind=\"bot\"}"), n as f64);
    // Now humans: exactly three reach the target, the rest the fallback.
    let resps: Vec<Resp> = (0..5)
        .map(|i| get(&s, "capped", &[("X-Test", &i.to_string())]))
        .collect();
    let locs: Vec<String> = resps.iter().map(|r| r.location().to_string()).collect();
    // Past the cap the link attributes nothing: no cookie.
    let cookies: Vec<bool> = resps.iter().map(|r| r.header("set-cookie").is_some()).collect();
    assert_eq!(cookies, [true, true, true, false, false]);
    let v: serde_json::Value = serde_json::from_slice(&s.admin("GET", "/admin/links/capped", b"").body).unwrap();
    assert_eq!(v["human_clicks"], 5, "{v}");
    assert!(
        locs[..3]
            .iter()
            .all(|l| l.starts_with("https://brand.example/first500?")),
        "{locs:?}"
    );
    assert!(
        locs[3..]
            .iter()
            .all(|l| l.starts_with("https://brand.example/waitlist?")),
        "{locs:?}"
    );
}

#[test]
fn every_listed_crawler_instance_is_a_bot_and_browsers_are_not() {
    let fixtures: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("crawler-user-agents.json")).unwrap()).unwrap();
    let mut checked = 0;
    for e in &fixtures {
        for ua in e["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
        {
            let Ok(v) = http::HeaderValue::from_str(ua) else {
                continue;
            };
            let mut h = http::HeaderMap::new();
            h.insert(http::header::USER_AGENT, v);
            assert!(
                cartlink::audience::is_bot(&h),
                "not flagged: {ua} (pattern {})",
                e["pattern"]
            );
            checked += 1;
        }
    }
    assert!(checked > 1000, "{checked}");
    let browsers = [
        IPHONE,
        ANDROID,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/21B74 [FBAN/FBIOS;FBAV/440.0.0.30.108;FBBV/548934583;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.1;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
        "Mozilla/5.0 (Linux; Android 13; SM-S918B Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.5845.163 Mobile Safari/537.36 trill_310003 BytedanceWebview/d8a21c6",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 musical_ly_30.9.0 JsSdk/2.0 NetType/WIFI Channel/App Store ByteLocale/en Region/US",
        "Mozilla/5.0 (Linux; Android 14; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.6261.105 Mobile Safari/537.36 Instagram 321.0.0.39.106 Android (34/14; 450dpi; 1080x2340; samsung; SM-A546B; a54x; s5e8835; en_GB; 578963147)",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.71 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 12; CUBOT KINGKONG 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 [Pinterest/Android]",
    ];
    let mut flagged = Vec::new();
    for ua in browsers {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::USER_AGENT, http::HeaderValue::from_str(ua).unwrap());
        if cartlink::audience::is_bot(&h) {
            flagged.push(ua);
        }
    }
    assert!(flagged.is_empty(), "browsers flagged as bots: {flagged:?}");
}

#[test]
fn unique_humans_per_link() {
    let s = Server::start("audience-unique", LINKS, &[("CARTLINK_TRUSTED_PROXIES", "127.0.0.1")]);
    let as_visitor = |id: &str, ip: &str| record(&s, &get(&s, id, &[("X-Forwarded-For", ip)]))["unique"].clone();
    assert_eq!(as_visitor("other", "203.0.113.1"), true);
    assert_eq!(as_visitor("other", "203.0.113.1"), false, "same visitor, same link");
    assert_eq!(as_visitor("geo", "203.0.113.1"), true, "same visitor, another link");
    assert_eq!(as_visitor("other", "203.0.113.2"), true, "another visitor");
    assert_eq!(s.metric("cartlink_unique_clicks_total"), 3.0);
    assert_eq!(s.metric("cartlink_clicks_total{kind=\"human\"}"), 4.0);
}

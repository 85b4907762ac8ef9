//! The redirect path over real sockets: every target type's exact `Location`, cookies,
//! signatures, key rotation, HEAD, bots, paused links and the click records they leave.

mod support;
use support::*;

const LINKS: &str = r##"{"id":"jane-serum","creator":"jane","campaign":"summer26","discount":"JANE15","target":{"type":"url","url":"https://brand.example/products/serum?color=red#reviews","platform":"shopify"},"utm":{"source":"instagram","campaign":"summer26"}}
{"id":"plain","creator":"jane","campaign":"summer26","target":{"type":"url","url":"https://brand.example/p?utm_source=old&x=1#top"},"utm":{"source":"instagram"}}
{"id":"kit","creator":"jane","campaign":"summer26","discount":"JANE15","target":{"type":"shopify_cart","shop":"brand.example","items":[{"variant":9007199254740993,"qty":1},{"variant":40000000002,"qty":2}]}}
{"id":"kit-fr","creator":"jane","campaign":"summer26","target":{"type":"shopify_cart","shop":"brand.example","locale":"fr","storefront":true,"items":[{"variant":1,"qty":1}]}}
{"id":"buy","creator":"jane","campaign":"summer26","discount":"JANE15","target":{"type":"shopify_cart","format":"buy","shop":"brand.example","items":[{"variant":18446744073709551615,"qty":3}]},"utm":{"source":"tiktok"}}
{"id":"woo","creator":"sam","campaign":"mugs","discount":"SAM10","target":{"type":"woocommerce_cart","shop":"mugs.example","items":[{"product":123,"variation":456,"qty":2}]}}
{"id":"woo-link","creator":"sam","campaign":"mugs","discount":"SAM10","target":{"type":"woocommerce_cart","format":"checkout_link","shop":"mugs.example","items":[{"product":123,"qty":2},{"product":124,"variation":999,"qty":1}]}}
{"id":"bc","creator":"lee","campaign":"tees","discount":"LEE5","target":{"type":"bigcommerce_cart","shop":"tees.example","items":[{"sku":"TEE-RED-XL","qty":1}]}}
{"id":"bc-buy","creator":"lee","campaign":"tees","discount":"LEE5","target":{"type":"bigcommerce_cart","format":"buy","shop":"tees.example","items":[{"product":77,"qty":2}]}}
{"id":"bc-co","creator":"lee","campaign":"tees","discount":"LEE5","target":{"type":"bigcommerce_cart","format":"checkout","shop":"tees.example","items":[{"product":77,"qty":1},{"sku":"CAP-1","qty":2}]},"redirect":307}
{"id":"paused","creator":"lee","campaign":"tees","discount":"LEE5","target":{"type":"url","url":"https://tees.example/drop"},"status":"paused","fallback":"https://tees.example/waitlist"}
{"id":"expired","creator":"lee","campaign":"tees","target":{"type":"url","url":"https://tees.example/old"},"expires_at":"2020-01-01T00:00:00Z"}
{"id":"hostile","creator":"jö & co\"#","campaign":"c d","discount":"A&B #1=2?","target":{"type":"shopify_cart","shop":"brand.example","items":[{"variant":5,"qty":1}]},"utm":{"source":"ig & fb","content":"a%0d%0aSet-Cookie: x=1"}}
"##;

fn get(s: &Server, id: &str, query: &str) -> Resp {
    s.get(&format!("{}{query}", path_for(id)), &[("User-Agent", IPHONE)])
}

/// `Location` with its click ID replaced by `{ID}`, after checking it is the record's.
fn shape(r: &Resp) -> String {
    let id = r.click_id();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok_and(|u| u.get_version_num() == 7),
        "UUIDv7: {id}"
    );
    r.location().replace(&id, "{ID}")
}

#[test]
fn every_target_type_has_its_exact_location() {
    let s = Server::start("targets", LINKS, &[]);
    let cases = [
        ("jane-serum", "", 302, "https://brand.example/discount/JANE15?redirect=%2Fproducts%2Fserum%3Fcolor%3Dred%26utm_source%3Dinstagram%26utm_campaign%3Dsummer26%26cl_click%3D{ID}%23reviews"),
        ("plain", "", 302, "https://brand.example/p?x=1&utm_source=instagram&cl_click={ID}#top"),
        ("kit", "", 302, "https://brand.example/cart/9007199254740993:1,40000000002:2?discount=JANE15&ref=jane&attributes%5Bcl_link%5D=kit&attributes%5Bcl_click%5D={ID}"),
        ("kit-fr", "", 302, "https://brand.example/fr/cart/1:1?ref=jane&attributes%5Bcl_link%5D=kit-fr&storefront=true&attributes%5Bcl_click%5D={ID}"),
        ("buy", "", 303, "https://brand.example/buy/18446744073709551615:3?discounts%2Fcodes%2F0=JANE15&attribution%2Fref=jane&attribution%2Fcl_link=buy&attribution%2Futm_source=tiktok&attribution%2Fcl_click={ID}"),
        ("woo", "", 302, "https://mugs.example/?add-to-cart=123&quantity=2&variation_id=456&coupon=SAM10&cl_click={ID}"),
        ("woo-link", "", 302, "https://mugs.example/checkout-link/?products=123%3A2%2C999%3A1&coupon=SAM10&cl_click={ID}"),
        ("bc", "", 302, "https://tees.example/cart.php?action=add&sku=TEE-RED-XL&qty=1&couponcode=LEE5&cl_click={ID}"),
        ("bc-buy", "", 302, "https://tees.example/cart.php?action=buy&product_id=77&qty=2&couponcode=LEE5&cl_click={ID}"),
        ("bc-co", "", 307, "https://tees.example/checkout/?products=77%3A1%2CCAP-1%3A2&coupon=LEE5&cl_click={ID}"),
        ("paused", "", 302, "https://tees.example/waitlist?cl_click={ID}"),
        ("expired", "", 302, "https://tees.example/?cl_click={ID}"),
        ("hostile", "", 302, "https://brand.example/cart/5:1?discount=A%26B+%231%3D2%3F&ref=j%C3%B6+%26+co%22%23&attributes%5Bcl_link%5D=hostile&utm_source=ig+%26+fb&utm_content=a%250d%250aSet-Cookie%3A+x%3D1&attributes%5Bcl_click%5D={ID}"),
    ];
    let mut ids = Vec::new();
    for (id, q, status, want) in cases {
        let r = get(&s, id, q);
        assert_eq!(r.status, status, "{id}: {r:?}");
        assert_eq!(shape(&r), want, "{id}");
        assert_eq!(r.header("cache-control"), Some("private, no-store"), "{id}");
        assert_eq!(
            r.header("referrer-policy"),
            (id == "buy").then_some("no-referrer"),
            "{id}"
        );
        assert!(r.body.is_empty(), "{id}: tiny body");
        // Paused and expired links attribute nothing: no cookie.
        let inactive = id == "paused" || id == "expired";
        assert_eq!(r.header("set-cookie").is_none(), inactive, "{id}");
        ids.push((id, r.click_id()));
    }
    // Every redirect left a record with the same click ID.
    let records = s.wait_clicks(ids.len());
    for (id, click) in &ids {
        let rec = records
            .iter()
            .find(|r| r["click_id"] == *click)
            .unwrap_or_else(|| panic!("no record for {id}"));
        assert_eq!(rec["link_id"], *id);
        assert_eq!(rec["v"], 1);
        assert_eq!(rec["bot"], false);
        assert_eq!(rec["device"], "ios");
        assert_eq!(rec["ip"], "127.0.0.0");
        assert_eq!(rec["edge"], "test-edge");
        let served = if *id == "paused" || *id == "expired" {
            "fallback"
        } else {
            "target"
        };
        assert_eq!(rec["served"], served, "{id}");
    }
    let hostile = records.iter().find(|r| r["link_id"] == "hostile").unwrap();
    assert_eq!(hostile["creator"], "jö & co\"#");
}

#[test]
fn extras_are_forwarded_but_never_override_link_params() {
    let s = Server::start("extras", LINKS, &[]);
    let q = "?sub=reel%2042%0d%0a&fbclid=F%26B&ttclid=t1&utm_source=evil&utm_medium=story&discount=FREE&ref=mallory&attributes%5Bcl_click%5D=x&cl_click=forged&fbclid=second&evil=1";
    let r = get(&s, "kit", q);
    assert_eq!(
        shape(&r),
        "https://brand.example/cart/9007199254740993:1,40000000002:2?discount=JANE15&ref=jane&attributes%5Bcl_link%5D=kit&attributes%5Bcl_click%5D={ID}&fbclid=F%26B&ttclid=t1&utm_source=evil&utm_medium=story"
    );
    // Pinned UTM (the link owns utm_source) is not taken from the visitor.
    let r = get(&s, "plain", "?utm_source=evil&utm_term=t%23x&gclid=g");
    assert_eq!(
        shape(&r),
        "https://brand.example/p?x=1&utm_source=instagram&cl_click={ID}&utm_term=t%2523x&gclid=g#top"
            .replace("%2523", "%23")
    );
    // Nested in Shopify's discount redirect, extras are encoded once more.
    let r = get(&s, "jane-serum", "?fbclid=a%26b");
    assert!(
        shape(&r).ends_with("cl_click%3D{ID}%26fbclid%3Da%2526b%23reviews"),
        "{}",
        r.location()
    );
    // On /buy, extras travel as attribution fields.
    let r = get(&s, "buy", "?fbclid=z&utm_source=no");
    assert!(
        shape(&r).ends_with("attribution%2Fcl_click={ID}&attribution%2Ffbclid=z"),
        "{}",
        r.location()
    );
    let records = s.wait_clicks(4);
    let first = records.iter().find(|r| r["link_id"] == "kit").unwrap();
    assert_eq!(first["sub"], "reel42", "sub is cleaned and capped");
}

#[test]
fn forged_truncated_and_unknown_links_get_one_identical_404() {
    let s = Server::start("forged", LINKS, &[]);
    let good = path_for("kit");
    let sig = good.rsplit_once('.').unwrap().1.to_string();
    let mut flipped = sig.clone().into_bytes();
    flipped[15] = if flipped[15] == b'A' { b'B' } else { b'A' };
    let paths = [
        format!("/kit.{}", String::from_utf8(flipped).unwrap()),
        format!("/kit.{}", &sig[..15]),
        "/kit.".to_string(),
        "/kit".to_string(),
        format!("/kix.{sig}"),
        format!("/kit.{sig}/"),
        format!("/nope.{}", sign(OLD_KEYS, "nope")),
        format!("/gone.{}", sign(KEYS, "gone")),
        format!("/%6Bit.{sig}"),
        "/".to_string(),
    ];
    let mut bodies = std::collections::HashSet::new();
    for p in &paths {
        let r = s.get(p, &[("User-Agent", IPHONE)]);
        assert_eq!(r.status, 404, "{p}");
        assert!(r.header("location").is_none() && r.header("set-cookie").is_none());
        let mut hs: Vec<_> = r.headers.iter().filter(|(k, _)| k != "date").cloned().collect();
        hs.sort();
        bodies.insert((hs, r.body.clone()));
    }
    assert_eq!(bodies.len(), 1, "every rejection is byte-identical: {bodies:?}");
    assert_eq!(
        s.metric("cartlink_signature_failures_total{reason=\"unknown_link\"}"),
        1.0
    );
    assert_eq!(s.metric("cartlink_signature_failures_total{reason=\"bad_mac\"}"), 3.0);
    assert_eq!(s.metric("cartlink_signature_failures_total{reason=\"malformed\"}"), 6.0);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(s.clicks().is_empty(), "no record for a rejected link");
}

#[test]
fn key_rotation_keeps_old_links_working() {
    let rotated = format!("{KEYS},{OLD_KEYS}");
    let s = Server::start("rotation", LINKS, &[("CARTLINK_SIGNING_KEYS", &rotated)]);
    assert_eq!(
        s.get(&format!("/kit.{}", sign(OLD_KEYS, "kit")), &[("User-Agent", IPHONE)])
            .status,
        302
    );
    assert_eq!(s.get(&path_for("kit"), &[("User-Agent", IPHONE)]).status, 302);
    let only_new = Server::start("rotation2", LINKS, &[]);
    assert_eq!(
        only_new
            .get(&format!("/kit.{}", sign(OLD_KEYS, "kit")), &[("User-Agent", IPHONE)])
            .status,
        404
    );
}

#[test]
fn a_buy_destination_answers_303_whatever_the_links_redirect() {
    // A 307 link whose iPhone visitors go to a `/buy` cart: UCP's 303 wins for them.
    const MIXED: &str = r#"{"id":"mixed","creator":"jane","campaign":"s26","redirect":307,"target":{"type":"url","url":"https://brand.example/p"},"device":{"ios":{"type":"shopify_cart","format":"buy","shop":"brand.example","items":[{"variant":7,"qty":1}]}}}
"#;
    let s = Server::start("buy-status", MIXED, &[]);
    let ios = get(&s, "mixed", "");
    assert_eq!(ios.status, 303);
    assert_eq!(ios.header("referrer-policy"), Some("no-referrer"));
    assert!(
        ios.location().starts_with("https://brand.example/buy/7:1?"),
        "{}",
        ios.location()
    );
    let android = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
    let other = s.get(&path_for("mixed"), &[("User-Agent", android)]);
    assert_eq!(other.status, 307);
    assert!(other.header("referrer-policy").is_none());
    let records = s.wait_clicks(2);
    let mut statuses: Vec<_> = records.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [303, 307], "the record carries the status sent");
}

#[test]
fn head_and_bots_are_answered_but_not_counted() {
    let s = Server::start("bots", LINKS, &[]);
    let head = request(s.public, "HEAD", &path_for("kit"), &[("User-Agent", IPHONE)], b"");
    assert_eq!(head.status, 302);
    assert_eq!(
        head.location(),
        "https://brand.example/cart/9007199254740993:1,40000000002:2?discount=JANE15&ref=jane&attributes%5Bcl_link%5D=kit"
    );
    assert!(head.header("set-cookie").is_none());
    for ua in [
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "WhatsApp/2.23.20.0",
        "",
    ] {
        let r = s.get(&path_for("kit"), &[("User-Agent", ua)]);
        assert_eq!(r.status, 302);
        assert!(
            click_id_of(r.location()).is_none() && r.header("set-cookie").is_none(),
            "{ua}"
        );
    }
    let prefetch = s.get(&path_for("kit"), &[("User-Agent", IPHONE), ("Sec-Purpose", "prefetch")]);
    assert!(prefetch.header("set-cookie").is_none());
    let human = get(&s, "kit", "");
    let records = s.wait_clicks(5);
    assert_eq!(records.len(), 5, "HEAD leaves no record; bots leave flagged ones");
    assert_eq!(records.iter().filter(|r| r["bot"] == true).count(), 4);
    assert_eq!(
        records.iter().find(|r| r["bot"] == false).unwrap()["click_id"],
        human.click_id().as_str()
    );
}

#[test]
fn cookie_policies_and_tampering() {
    let last = Server::start("cookie-last", LINKS, &[("CARTLINK_COOKIE_DOMAIN", "brand.example")]);
    let r1 = get(&last, "kit", "");
    let set = r1.header("set-cookie").unwrap();
    assert!(set.starts_with("cl_att="));
    assert!(
        set.ends_with("; Max-Age=2592000; Domain=brand.example; Path=/; Secure; HttpOnly; SameSite=Lax"),
        "{set}"
    );
    assert!(set.len() < 4096);
    let cookie = r1.cookie().unwrap();
    let r2 = last.get(&path_for("woo"), &[("User-Agent", IPHONE), ("Cookie", &cookie)]);
    assert_ne!(r2.click_id(), r1.click_id(), "last_click: the new click wins");
    assert!(r2.header("set-cookie").is_some());

    let first = Server::start("cookie-first", LINKS, &[("CARTLINK_COOKIE_POLICY", "first_click")]);
    let a = get(&first, "kit", "");
    let cookie = a.cookie().unwrap();
    let b = first.get(
        &path_for("woo"),
        &[("User-Agent", IPHONE), ("Cookie", &format!("x=1; {cookie}"))],
    );
    assert_eq!(
        b.click_id(),
        a.click_id(),
        "first_click: the cart keeps the first click"
    );
    assert!(b.header("set-cookie").is_none());
    // Another Shopify cart: it names its own link and, for the order, the first click's.
    let c = first.get(&path_for("kit-fr"), &[("User-Agent", IPHONE), ("Cookie", &cookie)]);
    assert_eq!(
        c.location(),
        format!(
            "https://brand.example/fr/cart/1:1?ref=jane&attributes%5Bcl_link%5D=kit-fr&storefront=true&attributes%5Bcl_click%5D={}&attributes%5Bcl_first_link%5D=kit",
            a.click_id()
        )
    );
    // The first link itself again: nothing to add.
    let again = first.get(&path_for("kit"), &[("User-Agent", IPHONE), ("Cookie", &cookie)]);
    assert!(again
        .location()
        .ends_with(&format!("attributes%5Bcl_click%5D={}", a.click_id())));
    let records = first.wait_clicks(4);
    let second = records.iter().find(|r| r["link_id"] == "woo").unwrap();
    assert_eq!(second["attributed_to"], a.click_id().as_str());
    assert_ne!(second["click_id"], a.click_id().as_str());
    // A paused link neither sets nor reads the cookie: nothing is credited through it.
    let p = first.get(&path_for("paused"), &[("User-Agent", IPHONE), ("Cookie", &cookie)]);
    assert!(p.header("set-cookie").is_none());
    assert_ne!(p.click_id(), a.click_id());
    let records = first.wait_clicks(5);
    let paused = records.iter().find(|r| r["link_id"] == "paused").unwrap();
    assert_eq!(paused["served"], "fallback");
    assert!(paused["attributed_to"].is_null());

    // Tampered, duplicated, oversized, or signed under another key: ignored, fresh cookie issued.
    let value = cookie.split_once('=').unwrap().1.to_string();
    let mut flipped = value.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let other = Server::start(
        "cookie-other-key",
        LINKS,
        &[
            ("CARTLINK_SIGNING_KEYS", OLD_KEYS),
            ("CARTLINK_COOKIE_POLICY", "first_click"),
        ],
    );
    let foreign = other
        .get(&format!("/kit.{}", sign(OLD_KEYS, "kit")), &[("User-Agent", IPHONE)])
        .cookie()
        .unwrap();
    let bad = [
        format!("cl_att={}", String::from_utf8(flipped).unwrap()),
        format!("{cookie}; {cookie}"),
        format!("cl_att={}", "A".repeat(8192)),
        foreign,
        "cl_att=".to_string(),
        "cl_att=%00%0d%0a".to_string(),
    ];
    for c in &bad {
        let r = first.get(&path_for("woo"), &[("User-Agent", IPHONE), ("Cookie", c)]);
        assert_eq!(r.status, 302, "{c}");
        assert_ne!(r.click_id(), a.click_id());
        assert!(r.header("set-cookie").is_some(), "fresh cookie for {c}");
    }
}

#[test]
fn admin_api_needs_the_token_and_shows_links() {
    let s = Server::start("admin", LINKS, &[]);
    assert_eq!(request(s.admin, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(request(s.admin, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(request(s.admin, "POST", "/admin/reload", &[], b"").status, 401);
    assert_eq!(
        request(
            s.admin,
            "POST",
            "/admin/reload",
            &[("Authorization", "Bearer wrong-token-wrong-token")],
            b""
        )
        .status,
        401
    );
    let r = s.admin("GET", "/admin/links/kit", b"");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["creator"], "jane");
    assert_eq!(v["sig"], sign(KEYS, "kit"));
    assert!(
        v["human_clicks"].is_null(),
        "no max_clicks: not counted, so not a 0: {v}"
    );
    assert_eq!(s.admin("GET", "/admin/links/nope", b"").status, 404);
    let off = Server::start("admin-off", LINKS, &[("CARTLINK_ADMIN_TOKEN", "")]);
    assert_eq!(
        off.admin("POST", "/admin/reload", b"").status,
        404,
        "no token configured: admin API off"
    );
}

#[test]
fn the_request_metrics_count_every_answer_once_in_a_valid_exposition() {
    let s = Server::start("metrics", LINKS, &[]);
    get(&s, "kit", "");
    get(&s, "woo", "");
    s.get(&path_for("kit"), &[("User-Agent", "WhatsApp/2.23.20.0")]);
    s.get("/kit.AAAAAAAAAAAAAAAA", &[]);
    s.get("/no-dot", &[]);
    s.wait_clicks(3);
    let text = request(s.admin, "GET", "/metrics", &[], b"").body_text();
    // One HELP and one TYPE line per family, each before the family's samples.
    let mut families = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(families.insert(name.to_string()), "{name} typed twice");
            let help = format!("# HELP {name} ");
            assert!(
                text.lines().take(i).any(|l| l.starts_with(&help)),
                "{name} has no HELP before its TYPE"
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|sfx| series.strip_suffix(sfx).filter(|f| families.contains(*f)))
                .unwrap_or(series);
            assert!(families.contains(family), "{series} before its TYPE line");
        }
    }
    assert_eq!(s.metric(r#"cartlink_requests_total{outcome="redirect"}"#), 3.0);
    assert_eq!(s.metric(r#"cartlink_requests_total{outcome="not_found"}"#), 2.0);
    assert_eq!(s.metric(r#"cartlink_signature_failures_total{reason="bad_mac"}"#), 1.0);
    assert_eq!(
        s.metric(r#"cartlink_signature_failures_total{reason="malformed"}"#),
        1.0
    );
    assert_eq!(s.metric(r#"cartlink_clicks_total{kind="human"}"#), 2.0);
    assert_eq!(s.metric(r#"cartlink_clicks_total{kind="bot"}"#), 1.0);
    assert_eq!(s.metric("cartlink_unique_clicks_total"), 2.0);
    assert_eq!(s.metric("cartlink_clicks_accepted_total"), 3.0);
    // Every public request is timed once; buckets are cumulative and end at the count.
    let count = s.metric("cartlink_http_request_duration_seconds_count");
    assert_eq!(count, 5.0);
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("cartlink_http_request_duration_seconds_bucket{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 17, "16 bounds and +Inf");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&count));
    assert!(s.metric("cartlink_http_request_duration_seconds_sum") > 0.0);
}

//! Stock-aware carts over real sockets: each policy's exact `Location`, the record's `oos`,
//! updates by variant and by Shopify (item, location) levels, out of order and repeated.

mod support;
use support::*;

// Variant ids above 2^53; inventory item ids too.
const LINKS: &str = r#"{"id":"drop","creator":"jane","campaign":"s","discount":"JANE15","target":{"type":"shopify_cart","shop":"brand.example","items":[{"variant":9007199254740993,"qty":1,"inventory_item":271878346596884015},{"variant":40000000002,"qty":2}]},"stock":{"policy":"drop","threshold":2},"fallback":"https://brand.example/waitlist"}
{"id":"swap","creator":"jane","campaign":"s","target":{"type":"shopify_cart","shop":"brand.example","items":[{"variant":9007199254740993,"qty":1},{"variant":40000000002,"qty":2}]},"stock":{"policy":"swap","threshold":2,"substitutes":{"40000000002":40000000003}}}
{"id":"all-or-nothing","creator":"jane","campaign":"s","target":{"type":"woocommerce_cart","format":"checkout_link","shop":"mugs.example","items":[{"product":123,"qty":1},{"product":40000000002,"qty":1}]},"stock":{"policy":"fallback","threshold":2},"fallback":"https://mugs.example/waitlist"}
"#;

const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";

/// The `Location` of a human click on `id` (its click ID as `{ID}`) and its click record.
fn redirect(s: &Server, id: &str, headers: &[(&str, &str)]) -> (String, serde_json::Value) {
    let r = s.get(&path_for(id), headers);
    assert_eq!(r.status, 302, "{r:?}");
    let click = r.click_id();
    let shape = r.location().replace(&click, "{ID}");
    loop {
        if let Some(rec) = s.clicks().into_iter().find(|c| c["click_id"] == click.as_str()) {
            return (shape, rec);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn loc(s: &Server, id: &str) -> (String, serde_json::Value) {
    let (shape, rec) = redirect(s, id, &[("User-Agent", IPHONE)]);
    (shape, rec["oos"].clone())
}

fn inventory(s: &Server, body: &str) -> serde_json::Value {
    let r = s.admin("POST", "/admin/inventory", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body_text());
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn each_stock_policy_sends_the_follower_somewhere_sellable() {
    let s = Server::start("commerce-stock", LINKS, &[]);
    // Unknown stock counts as in stock: the pre-rendered carts.
    assert_eq!(
        loc(&s, "drop").0,
        "https://brand.example/cart/9007199254740993:1,40000000002:2?discount=JANE15&ref=jane&attributes%5Bcl_link%5D=drop&attributes%5Bcl_click%5D={ID}"
    );
    // 40000000002 down to the threshold (2 counts as out).
    inventory(&s, r#"{"variant":40000000002,"available":2}"#);
    let (l, oos) = loc(&s, "drop");
    assert_eq!(
        l,
        "https://brand.example/cart/9007199254740993:1?discount=JANE15&ref=jane&attributes%5Bcl_link%5D=drop&attributes%5Bcl_click%5D={ID}"
    );
    assert_eq!(oos, serde_json::json!([40000000002u64]));
    let (l, oos) = loc(&s, "swap");
    assert_eq!(
        l,
        "https://brand.example/cart/9007199254740993:1,40000000003:2?ref=jane&attributes%5Bcl_link%5D=swap&attributes%5Bcl_click%5D={ID}"
    );
    assert_eq!(oos, serde_json::json!([40000000002u64]));
    let (l, _) = loc(&s, "all-or-nothing");
    assert_eq!(l, "https://mugs.example/waitlist?cl_click={ID}");
    // The substitute runs out too: the swap link drops the item.
    inventory(&s, r#"[{"variant":40000000003,"available":0}]"#);
    assert_eq!(
        loc(&s, "swap").0,
        "https://brand.example/cart/9007199254740993:1?ref=jane&attributes%5Bcl_link%5D=swap&attributes%5Bcl_click%5D={ID}"
    );

    // Shopify levels for the first variant's inventory item, by location, out of order.
    let level = |loc_id: u64, n: i64, at: &str| {
        format!(
            r#"{{"inventory_item_id":271878346596884015,"location_id":{loc_id},"available":{n},"updated_at":"{at}","admin_graphql_api_id":"gid://shopify/InventoryLevel/{loc_id}?inventory_item_id=271878346596884015"}}"#
        )
    };
    let v = inventory(
        &s,
        &format!(
            "[{},{}]",
            level(1, 1, "2026-11-27T10:00:00Z"),
            level(2, 1, "2026-11-27T10:00:00Z")
        ),
    );
    assert_eq!(v["applied"], 2);
    let (l, oos) = loc(&s, "drop");
    assert_eq!(
        l, "https://brand.example/waitlist?cl_click={ID}",
        "both items out (1+1 ≤ 2): fallback"
    );
    assert_eq!(oos, serde_json::json!([9007199254740993u64, 40000000002u64]));
    // A newer level restocks; a late, older delivery and a repeat do not roll it back.
    inventory(&s, &level(1, 40, "2026-11-27T10:05:00Z"));
    let v = inventory(
        &s,
        &format!(
            "[{},{}]",
            level(1, 0, "2026-11-27T10:01:00Z"),
            level(1, 40, "2026-11-27T10:05:00Z")
        ),
    );
    assert_eq!((v["applied"].as_u64(), v["stale"].as_u64()), (Some(0), Some(2)));
    let r = s.admin("GET", "/admin/inventory/9007199254740993", b"");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["available"],
        41
    );
    assert_eq!(
        loc(&s, "drop").0,
        "https://brand.example/cart/9007199254740993:1?discount=JANE15&ref=jane&attributes%5Bcl_link%5D=drop&attributes%5Bcl_click%5D={ID}",
        "the update reached the very next redirect"
    );
    // Bad updates are refused with a reason.
    let r = s.admin("POST", "/admin/inventory", br#"{"variant":1.5,"available":1}"#);
    assert_eq!(r.status, 400);
    // A reload keeps stock state.
    assert_eq!(s.admin("POST", "/admin/reload", b"").status, 200);
    assert_eq!(
        loc(&s, "all-or-nothing").0,
        "https://mugs.example/waitlist?cl_click={ID}"
    );
}

/// A list of updates is applied whole or not at all, and a level dated far ahead (a typo such
/// as 2099, which would make every later level stale, restarts included) is refused.
#[test]
fn a_bad_update_in_a_list_applies_none_of_it() {
    let s = Server::start("commerce-list", LINKS, &[]);
    let r = s.admin(
        "POST",
        "/admin/inventory",
        br#"[{"variant":40000000002,"available":0},{"inventory_item_id":271878346596884015,"location_id":1,"available":3,"updated_at":"2099-01-01T00:00:00Z"}]"#,
    );
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert!(
        r.body_text().contains("update 2") && r.body_text().contains("ahead"),
        "{}",
        r.body_text()
    );
    let r = s.admin("GET", "/admin/inventory/40000000002", b"");
    assert!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["available"].is_null(),
        "the first update of the refused list was not applied"
    );
}

/// A substitute given with its Shopify inventory item is kept current by the store's level
/// webhooks, like the items themselves: a sold-out substitute is not swapped in.
#[test]
fn a_substitutes_shopify_levels_reach_the_swap() {
    let links = r#"{"id":"swap2","creator":"jane","campaign":"s","target":{"type":"shopify_cart","shop":"brand.example","items":[{"variant":40000000002,"qty":2}]},"stock":{"policy":"swap","substitutes":{"40000000002":{"variant":40000000003,"inventory_item":271878346596884099}}},"fallback":"https://brand.example/soon"}
"#;
    let s = Server::start("commerce-substitute", links, &[]);
    inventory(&s, r#"{"variant":40000000002,"available":0}"#);
    assert_eq!(
        loc(&s, "swap2"),
        (
            "https://brand.example/cart/40000000003:2?ref=jane&attributes%5Bcl_link%5D=swap2&attributes%5Bcl_click%5D={ID}".into(),
            serde_json::json!([40000000002u64])
        )
    );
    let v = inventory(
        &s,
        r#"{"inventory_item_id":271878346596884099,"location_id":1,"available":0,"updated_at":"2026-11-27T10:00:00Z"}"#,
    );
    assert_eq!(v["applied"], 1);
    assert_eq!(
        loc(&s, "swap2").0,
        "https://brand.example/soon?cl_click={ID}",
        "the substitute sold out too: nothing left to send"
    );
}

/// Stock levels outlive a restart (saved at shutdown) and a crash (saved once a second): a
/// sold-out item must not count as in stock after a deploy.
#[test]
fn stock_levels_survive_a_restart_and_a_crash() {
    let mut s = Server::start("commerce-restart", LINKS, &[]);
    let level = |loc_id: u64, n: i64, at: &str| {
        format!(
            r#"{{"inventory_item_id":271878346596884015,"location_id":{loc_id},"available":{n},"updated_at":"{at}"}}"#
        )
    };
    inventory(
        &s,
        &format!(
            r#"[{},{},{{"variant":40000000002,"available":0}}]"#,
            level(1, 1, "2026-11-27T10:00:00Z"),
            level(2, 1, "2026-11-27T10:00:00Z")
        ),
    );
    let sold_out = (
        "https://brand.example/waitlist?cl_click={ID}".to_string(),
        serde_json::json!([9007199254740993u64, 40000000002u64]),
    );
    assert_eq!(loc(&s, "drop"), sold_out);
    let restart = |s: Server, sig: &str, name: &str| {
        let mut s = s;
        s.signal(sig);
        s.wait_exit(std::time::Duration::from_secs(20));
        Server::start_in(dir_for_restart(s, name, LINKS), &[])
    };
    s = restart(s, "TERM", "commerce-restart-2");
    assert_eq!(loc(&s, "drop"), sold_out, "after a restart");
    // The levels came back, not only the totals: an older level is still stale.
    let v = inventory(&s, &level(1, 40, "2026-11-27T09:59:00Z"));
    assert_eq!((v["applied"].as_u64(), v["stale"].as_u64()), (Some(0), Some(1)));
    // Set after the restart, then a crash a second and a half later.
    inventory(&s, &level(1, 40, "2026-11-27T10:01:00Z"));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let s = restart(s, "KILL", "commerce-restart-3");
    let r = s.admin("GET", "/admin/inventory/9007199254740993", b"");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["available"],
        41
    );
    assert_eq!(
        loc(&s, "drop").0,
        "https://brand.example/cart/9007199254740993:1?discount=JANE15&ref=jane&attributes%5Bcl_link%5D=drop&attributes%5Bcl_click%5D={ID}"
    );
}

/// A follower routed by country, device or A/B variant gets a cart checked for stock too: the
/// link's `stock` section applies to each of its carts.
#[test]
fn geo_device_and_variant_carts_are_stock_aware_too() {
    let cart = |items: &str| format!(r#"{{"type":"shopify_cart","shop":"brand.example","items":[{items}]}}"#);
    let routes = format!(
        r#"{{"id":"routes","creator":"jane","campaign":"s","target":{},"geo":{{"FR":{}}},"device":{{"ios":{}}},"stock":{{"policy":"drop"}},"fallback":"https://brand.example/waitlist"}}"#,
        cart(r#"{"variant":11,"qty":1}"#),
        cart(r#"{"variant":21,"qty":1},{"variant":11,"qty":1}"#),
        cart(r#"{"variant":31,"qty":1}"#)
    );
    let ab = format!(
        r#"{{"id":"ab","creator":"jane","campaign":"s","target":{},"variants":[{{"weight":1,"target":{}}}],"stock":{{"policy":"fallback"}},"fallback":"https://brand.example/soon"}}"#,
        cart(r#"{"variant":11,"qty":1}"#),
        cart(r#"{"variant":41,"qty":2}"#)
    );
    let links = format!("{routes}\n{ab}\n");
    let s = Server::start(
        "commerce-routes",
        &links,
        &[("CARTLINK_TRUSTED_PROXIES", "127.0.0.1/32")],
    );
    let from_fr = [
        ("User-Agent", ANDROID),
        ("X-Forwarded-For", "203.0.113.9"),
        ("CF-IPCountry", "FR"),
    ];
    let get = |id: &str, headers: &[(&str, &str)]| {
        let (shape, rec) = redirect(&s, id, headers);
        (shape, rec["served"].as_str().unwrap().to_string(), rec["oos"].clone())
    };
    let q = |id: &str| format!("ref=jane&attributes%5Bcl_link%5D={id}&attributes%5Bcl_click%5D={{ID}}");
    assert_eq!(
        get("routes", &from_fr),
        (
            format!("https://brand.example/cart/21:1,11:1?{}", q("routes")),
            "geo".into(),
            serde_json::json!([])
        )
    );
    inventory(
        &s,
        r#"[{"variant":21,"available":0},{"variant":31,"available":0},{"variant":41,"available":0}]"#,
    );
    // France's cart loses its sold-out item; the rest of it is still sent.
    assert_eq!(
        get("routes", &from_fr),
        (
            format!("https://brand.example/cart/11:1?{}", q("routes")),
            "geo".into(),
            serde_json::json!([21])
        )
    );
    // The iPhone cart has nothing left: the link's fallback, not an empty cart.
    assert_eq!(
        get("routes", &[("User-Agent", IPHONE)]),
        (
            "https://brand.example/waitlist?cl_click={ID}".into(),
            "fallback".into(),
            serde_json::json!([31])
        )
    );
    // Other devices from elsewhere: the target, untouched.
    assert_eq!(
        get("routes", &[("User-Agent", ANDROID)]),
        (
            format!("https://brand.example/cart/11:1?{}", q("routes")),
            "target".into(),
            serde_json::json!([])
        )
    );
    // The only A/B variant's item is out, under `fallback`.
    assert_eq!(
        get("ab", &[("User-Agent", IPHONE)]),
        (
            "https://brand.example/soon?cl_click={ID}".into(),
            "fallback".into(),
            serde_json::json!([41])
        )
    );
    inventory(&s, r#"{"variant":41,"available":5}"#);
    assert_eq!(
        get("ab", &[("User-Agent", IPHONE)]),
        (
            format!("https://brand.example/cart/41:2?{}", q("ab")),
            "variant".into(),
            serde_json::json!([])
        )
    );
}

/// Under load (three keep-alive clients hammering the link), every stock change reaches the
/// first redirect that starts after the update was acknowledged.
#[test]
fn stock_updates_reach_redirects_under_load() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let s = Server::start("commerce-load", LINKS, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, served, addr) = (stop.clone(), served.clone(), s.public);
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(conn.get(&path_for("all-or-nothing"), IPHONE).unwrap().status, 302);
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut conn = Conn::open(s.public).unwrap();
    for round in 0..50 {
        let out = round % 2 == 0;
        let body = format!(r#"{{"variant":40000000002,"available":{}}}"#, if out { 0 } else { 50 });
        assert_eq!(s.admin("POST", "/admin/inventory", body.as_bytes()).status, 200);
        let loc = conn
            .get(&path_for("all-or-nothing"), IPHONE)
            .unwrap()
            .location()
            .to_string();
        let want = if out {
            "https://mugs.example/waitlist?"
        } else {
            "https://mugs.example/checkout-link/?"
        };
        assert!(loc.starts_with(want), "round {round}: {loc}");
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(served.load(Ordering::Relaxed) > 50, "the load ran alongside");
}

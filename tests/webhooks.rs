//! Shopify webhooks against a running server: verification (rotation, one changed byte),
//! replays (ten at once apply once), oversized bodies, conversions attributed three ways,
//! commissions to the cent with clawbacks, and inventory levels reaching redirects.

mod support;
use support::*;

const LINKS: &str = r#"{"id":"kit","creator":"jane","campaign":"s26","discount":"JANE15","target":{"type":"shopify_cart","shop":"brand.example","items":[{"variant":9007199254740993,"qty":1,"inventory_item":271878346596884015}]},"commission":{"rate_bp":1000},"stock":{"policy":"fallback","threshold":0},"fallback":"https://brand.example/waitlist"}
{"id":"sam","creator":"sam","campaign":"mugs","discount":"SAM10","target":{"type":"url","url":"https://mugs.example/"},"commission":{"flat_minor":500}}
"#;

fn records_of(s: &Server, kind: &str) -> Vec<serde_json::Value> {
    s.clicks().into_iter().filter(|r| r["type"] == kind).collect()
}

/// Every commission record as (commission_id, amount_minor), sorted: records of separate
/// deliveries may reach the stream in any order.
fn commissions(s: &Server) -> Vec<(String, i64)> {
    let mut amounts: Vec<(String, i64)> = records_of(s, "commission")
        .iter()
        .map(|c| {
            (
                c["commission_id"].as_str().unwrap().to_string(),
                c["amount_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    amounts.sort_unstable();
    amounts
}

fn settle(s: &Server) {
    // The pipeline writes within a few batch ages; wait until accepted == delivered.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.metric("cartlink_clicks_accepted_total") != s.metric("cartlink_clicks_delivered_total") {
        assert!(std::time::Instant::now() < end, "pipeline did not settle");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn orders_become_conversions_and_commissions_exactly_once() {
    let s = Server::start(
        "webhooks",
        LINKS,
        &[("CARTLINK_SHOPIFY_WEBHOOK_SECRETS", "new-secret,old-secret")],
    );
    let click = s.get(&path_for("kit"), &[("User-Agent", IPHONE)]).click_id();
    let order = |id: u64, attrs: &str, codes: &str| {
        format!(
            r#"{{"id":{id},"currency":"USD","current_subtotal_price":"19.95","note_attributes":[{attrs}],"discount_codes":[{codes}],"customer":{{"id":7205759403792793299}}}}"#
        )
    };
    let paid = order(
        5_764_607_523_034_234_881,
        &format!(r#"{{"name":"cl_click","value":"{click}"}},{{"name":"cl_link","value":"kit"}}"#),
        r#"{"code":"SAM10"}"#,
    );
    let orders = "/webhooks/shopify/orders";

    // Ten concurrent deliveries of the same webhook: one conversion, one commission.
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..10)
            .map(|_| sc.spawn(|| deliver_webhook(&s, orders, "orders/paid", "d-1", paid.as_bytes(), "new-secret")))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // One is applied; a repeat that arrives while it is under way gets 503 (that attempt
    // could still fail), and Shopify's retry of it then gets 200.
    let ok = statuses.iter().filter(|&&c| c == 200).count();
    let under_way = statuses.iter().filter(|&&c| c == 503).count();
    assert!(ok >= 1 && ok + under_way == 10, "{statuses:?}");
    for _ in 0..under_way {
        assert_eq!(
            deliver_webhook(&s, orders, "orders/paid", "d-1", paid.as_bytes(), "new-secret"),
            200
        );
    }
    // Another delivery id for the same order (Shopify resends on a new event) is not re-applied.
    assert_eq!(
        deliver_webhook(&s, orders, "orders/paid", "d-2", paid.as_bytes(), "old-secret"),
        200,
        "rotation: old secret accepted"
    );
    settle(&s);
    let conv = records_of(&s, "conversion");
    assert_eq!(conv.len(), 1, "{conv:?}");
    assert_eq!(
        conv[0]["order_id"], 5_764_607_523_034_234_881u64,
        "ids above 2^53 stay exact"
    );
    assert_eq!(
        (conv[0]["attribution"].as_str(), conv[0]["click_id"].as_str()),
        (Some("click"), Some(click.as_str()))
    );
    assert_eq!(
        (conv[0]["creator"].as_str(), conv[0]["subtotal_minor"].as_i64()),
        (Some("jane"), Some(1995))
    );
    let comm = records_of(&s, "commission");
    assert_eq!(comm.len(), 1);
    assert_eq!(
        (comm[0]["amount_minor"].as_i64(), comm[0]["commission_id"].as_str()),
        (Some(200), Some("shopify:5764607523034234881:paid"))
    );
    assert_eq!(s.metric("cartlink_webhooks_total{outcome=\"duplicate\"}"), 9.0);
    assert_eq!(
        s.metric("cartlink_webhooks_total{outcome=\"under_way\"}"),
        under_way as f64
    );

    // By discount code (flat 5.00), and unattributed.
    assert_eq!(
        deliver_webhook(
            &s,
            orders,
            "orders/paid",
            "d-3",
            order(2, "", r#"{"code":"sam10"}"#).as_bytes(),
            "new-secret"
        ),
        200
    );
    assert_eq!(
        deliver_webhook(
            &s,
            orders,
            "orders/paid",
            "d-4",
            order(3, "", "").as_bytes(),
            "new-secret"
        ),
        200
    );
    // A refund of 9.99 on the clicked order claws back 1.00; cancelling, what is left (1.00).
    let refund = br#"{"id":991,"order_id":5764607523034234881,"refund_line_items":[{"subtotal":9.99,"subtotal_set":{"shop_money":{"amount":"9.99","currency_code":"USD"}}}]}"#;
    assert_eq!(
        deliver_webhook(&s, orders, "refunds/create", "d-5", refund, "new-secret"),
        200
    );
    assert_eq!(
        deliver_webhook(&s, orders, "orders/cancelled", "d-6", paid.as_bytes(), "new-secret"),
        200
    );
    settle(&s);
    let conv = records_of(&s, "conversion");
    // Records of separate deliveries may reach the stream in any order (each worker thread
    // has its own ring): compare them sorted.
    let mut how: Vec<_> = conv.iter().map(|c| c["attribution"].as_str().unwrap()).collect();
    how.sort_unstable();
    assert_eq!(how, ["click", "discount", "none"]);
    let amounts = commissions(&s);
    assert_eq!(
        amounts,
        [
            ("shopify:2:paid".to_string(), 500),
            ("shopify:5764607523034234881:cancelled".to_string(), -100),
            ("shopify:5764607523034234881:paid".to_string(), 200),
            ("shopify:5764607523034234881:refund:991".to_string(), -100),
        ]
    );
}

/// Delivery ids are remembered in memory only; the ledger is on disk. A refund Shopify
/// delivers again after a restart must not be clawed back twice, and a cancellation after it
/// takes exactly what is left.
#[test]
fn a_refund_delivered_again_after_a_restart_is_not_clawed_back_twice() {
    let env = [("CARTLINK_SHOPIFY_WEBHOOK_SECRETS", "new-secret")];
    let mut s = Server::start("webhooks-restart", LINKS, &env);
    let orders = "/webhooks/shopify/orders";
    let click = s.get(&path_for("kit"), &[("User-Agent", IPHONE)]).click_id();
    // 50.00 at 10 %: 5.00 paid.
    let paid = format!(
        r#"{{"id":9007199254740997,"currency":"USD","current_subtotal_price":"50.00","note_attributes":[{{"name":"cl_click","value":"{click}"}},{{"name":"cl_link","value":"kit"}}]}}"#
    );
    let refund = br#"{"id":77,"order_id":9007199254740997,"refund_line_items":[{"subtotal_set":{"shop_money":{"amount":"19.99","currency_code":"USD"}}}]}"#;
    assert_eq!(
        deliver_webhook(&s, orders, "orders/paid", "r-1", paid.as_bytes(), "new-secret"),
        200
    );
    assert_eq!(
        deliver_webhook(&s, orders, "refunds/create", "r-2", refund, "new-secret"),
        200
    );
    settle(&s);
    s.signal("TERM");
    assert_eq!(s.wait_exit(std::time::Duration::from_secs(20)), 0);
    let dir = dir_for_restart(s, "webhooks-restart-2", LINKS);

    let s = Server::start_in(dir, &env);
    // The same delivery again (its id forgotten with the process), then the cancellation.
    assert_eq!(
        deliver_webhook(&s, orders, "refunds/create", "r-2", refund, "new-secret"),
        200
    );
    assert_eq!(
        deliver_webhook(&s, orders, "orders/cancelled", "r-3", paid.as_bytes(), "new-secret"),
        200
    );
    settle(&s);
    let amounts = commissions(&s);
    assert_eq!(
        amounts,
        [
            ("shopify:9007199254740997:cancelled".to_string(), -300),
            ("shopify:9007199254740997:paid".to_string(), 500),
            ("shopify:9007199254740997:refund:77".to_string(), -200),
        ],
        "paid 5.00, the refund of 19.99 took 2.00 once, the cancellation the 3.00 left"
    );
}

#[test]
fn forged_changed_and_oversized_deliveries_are_refused() {
    let s = Server::start(
        "webhooks-bad",
        LINKS,
        &[("CARTLINK_SHOPIFY_WEBHOOK_SECRETS", "new-secret")],
    );
    let orders = "/webhooks/shopify/orders";
    let body = br#"{"id":1,"currency":"USD","current_subtotal_price":"1.00"}"#;
    assert_eq!(
        deliver_webhook(&s, orders, "orders/paid", "x-1", body, "wrong-secret"),
        401
    );
    let mac = shopify_hmac("new-secret", body);
    let mut changed = body.to_vec();
    changed[7] = b'2';
    let headers = [
        ("X-Shopify-Topic", "orders/paid"),
        ("X-Shopify-Webhook-Id", "x-2"),
        ("X-Shopify-Hmac-Sha256", mac.as_str()),
    ];
    assert_eq!(
        request(s.public, "POST", orders, &headers, &changed).status,
        401,
        "one byte changed"
    );
    assert_eq!(
        request(s.public, "POST", orders, &headers[..2], body).status,
        401,
        "no signature"
    );
    // Refused on its declared length before any of the body is read. Only the head is sent: a
    // server that closes with a body still arriving resets the connection, and the reset can
    // discard the answer before the client reads it.
    let mut head = format!("POST {orders} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", 2 << 20));
    let big = support::parse_response(support::raw_request(s.public, head.as_bytes()), false);
    assert_eq!(big.status, 413);
    // The refused ones did not burn the delivery id: the genuine delivery still applies.
    assert_eq!(request(s.public, "POST", orders, &headers, body).status, 200);
    assert_eq!(s.metric("cartlink_webhooks_total{outcome=\"unauthorized\"}"), 3.0);
    // Without secrets the routes do not exist.
    let off = Server::start("webhooks-off", LINKS, &[]);
    assert_eq!(
        deliver_webhook(&off, orders, "orders/paid", "x-3", body, "new-secret"),
        404
    );
}

#[test]
fn inventory_webhooks_reach_the_next_redirect() {
    let s = Server::start(
        "webhooks-stock",
        LINKS,
        &[("CARTLINK_SHOPIFY_WEBHOOK_SECRETS", "new-secret")],
    );
    let level = |n: i64, at: &str| {
        format!(
            r#"{{"inventory_item_id":271878346596884015,"location_id":24826418,"available":{n},"updated_at":"{at}","admin_graphql_api_id":"gid://shopify/InventoryLevel/24826418?inventory_item_id=271878346596884015"}}"#
        )
    };
    let inv = "/webhooks/shopify/inventory";
    assert!(s
        .get(&path_for("kit"), &[("User-Agent", IPHONE)])
        .location()
        .starts_with("https://brand.example/cart/"));
    // Each delivery is applied (200) and decides the very next redirect.
    let deliver_then_redirect = |id: &str, n: i64, at: &str| {
        let status = deliver_webhook(
            &s,
            inv,
            "inventory_levels/update",
            id,
            level(n, at).as_bytes(),
            "new-secret",
        );
        assert_eq!(status, 200, "{id}");
        s.get(&path_for("kit"), &[("User-Agent", IPHONE)])
            .location()
            .to_string()
    };
    assert!(deliver_then_redirect("i-1", 0, "2026-11-27T10:00:00-05:00").starts_with("https://brand.example/waitlist?"));
    // An older delivery arriving late does not restock.
    assert!(deliver_then_redirect("i-2", 9, "2026-11-27T09:00:00-05:00").starts_with("https://brand.example/waitlist?"));
    assert!(deliver_then_redirect("i-3", 9, "2026-11-27T10:01:00-05:00").starts_with("https://brand.example/cart/"));
}

/// Shopify's "continue selling when out of stock" (pre-orders): a variant at zero stays in the
/// cart once `products/update` says so, and goes once it says otherwise. The same delivery
/// says which inventory item is the variant, which the link did not: its levels then reach
/// it. Both outlive a restart.
#[test]
fn a_variant_that_keeps_selling_when_out_stays_in_the_cart() {
    const PRE: &str = r#"{"id":"pre","creator":"jane","campaign":"s26","target":{"type":"shopify_cart","shop":"brand.example","items":[{"variant":9007199254740995,"qty":1},{"variant":40000000002,"qty":2}]},"stock":{"policy":"drop","threshold":0},"fallback":"https://brand.example/waitlist"}
"#;
    const BOTH: &str = "https://brand.example/cart/9007199254740995:1,40000000002:2?";
    const ONLY_B: &str = "https://brand.example/cart/40000000002:2?";
    let env = [("CARTLINK_SHOPIFY_WEBHOOK_SECRETS", "new-secret")];
    let s = Server::start("webhooks-continue", PRE, &env);
    let cart = |s: &Server| {
        s.get(&path_for("pre"), &[("User-Agent", IPHONE)])
            .location()
            .to_string()
    };
    let deliver = |s: &Server, path: &str, topic: &str, id: &str, body: String| {
        assert_eq!(
            deliver_webhook(s, path, topic, id, body.as_bytes(), "new-secret"),
            200,
            "{id}"
        );
    };
    let level = |n: i64, at: &str| {
        format!(
            r#"{{"inventory_item_id":271878346596884099,"location_id":24826418,"available":{n},"updated_at":"{at}"}}"#
        )
    };
    let product = |policy: &str, at: &str| {
        format!(
            r#"{{"id":632910392,"title":"Kit","updated_at":"{at}","variants":[{{"id":9007199254740995,"product_id":632910392,"sku":"KIT-1","price":"19.00","inventory_policy":"{policy}","inventory_item_id":271878346596884099,"inventory_quantity":0,"inventory_management":"shopify","updated_at":"{at}"}}]}}"#
        )
    };
    let (inv, products) = ("/webhooks/shopify/inventory", "/webhooks/shopify/products");
    // The link does not name the variant's inventory item: its level of 0 reaches nothing.
    deliver(
        &s,
        inv,
        "inventory_levels/update",
        "l-1",
        level(0, "2026-11-27T10:00:00Z"),
    );
    assert!(cart(&s).starts_with(BOTH), "{}", cart(&s));
    // The product says which item it is: the level counts, the variant is out.
    deliver(
        &s,
        products,
        "products/update",
        "p-1",
        product("deny", "2026-11-27T10:00:00Z"),
    );
    assert!(cart(&s).starts_with(ONLY_B), "{}", cart(&s));
    // Continue selling: back in the cart at a level of 0.
    deliver(
        &s,
        products,
        "products/update",
        "p-2",
        product("continue", "2026-11-27T10:05:00Z"),
    );
    assert!(cart(&s).starts_with(BOTH), "{}", cart(&s));
    let shown = s.admin("GET", "/admin/inventory/9007199254740995", b"");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&shown.body).unwrap(),
        serde_json::json!({"variant": 9007199254740995u64, "available": 0, "inventory_policy": "continue", "sells_when_out": true})
    );
    // An older update delivered late changes nothing.
    deliver(
        &s,
        products,
        "products/create",
        "p-3",
        product("deny", "2026-11-27T10:01:00Z"),
    );
    assert!(cart(&s).starts_with(BOTH), "{}", cart(&s));
    // A payload that is not a product is refused and changes nothing; so is another topic's
    // subscription pointed at this address.
    assert_eq!(
        deliver_webhook(
            &s,
            products,
            "products/update",
            "p-4",
            br#"{"variants":[{"id":-1}]}"#,
            "new-secret"
        ),
        400
    );
    assert_eq!(
        deliver_webhook(&s, products, "orders/paid", "p-5", br#"{"id":1}"#, "new-secret"),
        400
    );
    let misrouted = level(0, "2026-11-27T11:00:00Z");
    assert_eq!(
        deliver_webhook(&s, inv, "orders/paid", "p-5b", misrouted.as_bytes(), "new-secret"),
        400
    );
    // Stock Shopify stops tracking (API 2024-07 and later say so on the inventory item) sells
    // whatever the policy; tracked again, the policy decides.
    let item = |tracked: bool, at: &str| {
        format!(
            r#"{{"id":271878346596884099,"sku":"KIT-1","tracked":{tracked},"updated_at":"{at}","admin_graphql_api_id":"gid://shopify/InventoryItem/271878346596884099"}}"#
        )
    };
    deliver(
        &s,
        products,
        "products/update",
        "p-6",
        product("deny", "2026-11-27T10:06:00Z"),
    );
    assert!(cart(&s).starts_with(ONLY_B), "{}", cart(&s));
    deliver(
        &s,
        inv,
        "inventory_items/update",
        "t-1",
        item(false, "2026-11-27T10:06:00Z"),
    );
    assert!(cart(&s).starts_with(BOTH), "untracked: {}", cart(&s));
    deliver(
        &s,
        inv,
        "inventory_items/update",
        "t-2",
        item(true, "2026-11-27T10:07:00Z"),
    );
    assert!(cart(&s).starts_with(ONLY_B), "tracked: {}", cart(&s));
    deliver(
        &s,
        products,
        "products/update",
        "p-7",
        product("continue", "2026-11-27T10:08:00Z"),
    );
    let mut s = s;
    s.signal("TERM");
    s.wait_exit(std::time::Duration::from_secs(20));
    let s = Server::start_in(dir_for_restart(s, "webhooks-continue-2", PRE), &env);
    assert!(cart(&s).starts_with(BOTH), "the policy after a restart: {}", cart(&s));
    // The admin API sets a policy by variant (stores other than Shopify).
    let r = s.admin(
        "POST",
        "/admin/inventory",
        br#"{"variant":9007199254740995,"inventory_policy":"deny"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(cart(&s).starts_with(ONLY_B), "{}", cart(&s));
    // The item learned before the restart still reaches the variant.
    deliver(
        &s,
        inv,
        "inventory_levels/update",
        "l-2",
        level(5, "2026-11-27T10:10:00Z"),
    );
    assert!(cart(&s).starts_with(BOTH), "{}", cart(&s));
    let r = s.admin("POST", "/admin/inventory", br#"{"variant":9007199254740995}"#);
    assert_eq!(r.status, 400, "nothing to set: {}", r.body_text());
}

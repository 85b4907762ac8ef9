//! Property tests. Against one running server per property (started once, shared by all its
//! cases): whatever `sub` or query string a visitor sends, the answer is a redirect to the link's
//! own scheme and host with exactly the allowed extras, or a clean 4xx — never a 5xx, never a
//! dead connection. And, in-process, `KeyRing`: sign→verify round-trips, any mutation fails.

#[path = "support/oracle.rs"]
mod oracle;
mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cartlink::links::signature::{KeyRing, SIG_CHARS};
use oracle::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};
use support::{path_for, Server, IPHONE};

const LINKS: &str = r##"{"id":"url","creator":"jane","campaign":"c","discount":"JANE15","target":{"type":"url","url":"https://brand.example/p?x=1#top"},"utm":{"source":"instagram"}}
{"id":"shop-disc","creator":"jane","campaign":"c","discount":"JANE15","target":{"type":"url","url":"https://brand.example/products/serum?color=red#reviews","platform":"shopify"},"utm":{"source":"instagram","campaign":"summer26"}}
{"id":"cart","creator":"jane","campaign":"c","discount":"JANE15","target":{"type":"shopify_cart","shop":"shop.example","items":[{"variant":40000000001,"qty":1}]}}
{"id":"buy","creator":"jane","campaign":"c","discount":"JANE15","target":{"type":"shopify_cart","format":"buy","shop":"shop.example","items":[{"variant":1,"qty":3}]},"utm":{"source":"tiktok"}}
{"id":"woo","creator":"sam","campaign":"c","discount":"SAM10","target":{"type":"woocommerce_cart","shop":"mugs.example","items":[{"product":123,"variation":456,"qty":2}]}}
{"id":"bc","creator":"lee","campaign":"c","discount":"LEE5","target":{"type":"bigcommerce_cart","shop":"tees.example","items":[{"sku":"TEE-1","qty":1}]}}
{"id":"paused","creator":"lee","campaign":"c","target":{"type":"url","url":"https://tees.example/drop"},"status":"paused","fallback":"https://waitlist.example/w"}
"##;

const SPECS: &[LinkSpec] = &[
    LinkSpec {
        id: "url",
        host: "brand.example",
        status: 302,
        mode: ExtrasMode::Query,
        pinned: &["utm_source"],
    },
    LinkSpec {
        id: "shop-disc",
        host: "brand.example",
        status: 302,
        mode: ExtrasMode::Nested,
        pinned: &["utm_source", "utm_campaign"],
    },
    LinkSpec {
        id: "cart",
        host: "shop.example",
        status: 302,
        mode: ExtrasMode::Query,
        pinned: &[],
    },
    LinkSpec {
        id: "buy",
        host: "shop.example",
        status: 303,
        mode: ExtrasMode::Attribution,
        pinned: &["utm_source"],
    },
    LinkSpec {
        id: "woo",
        host: "mugs.example",
        status: 302,
        mode: ExtrasMode::Query,
        pinned: &[],
    },
    LinkSpec {
        id: "bc",
        host: "tees.example",
        status: 302,
        mode: ExtrasMode::Query,
        pinned: &[],
    },
    LinkSpec {
        id: "paused",
        host: "waitlist.example",
        status: 302,
        mode: ExtrasMode::Query,
        pinned: &[],
    },
];

/// Cases per server property: each is one request on a fresh connection.
const SERVER_CASES: u32 = 512;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

struct Fixture {
    server: Server,
    bases: Vec<Baseline>,
    paths: Vec<String>,
    /// Anti-vacuity counts: redirects checked, of them with forwarded extras, and 4xx refusals.
    redirects: AtomicUsize,
    with_extras: AtomicUsize,
    refused: AtomicUsize,
}

fn fixture(name: &str) -> Fixture {
    let server = Server::start(name, LINKS, &[]);
    let bases = SPECS
        .iter()
        .map(|l| Baseline::of(l, &server.get(&path_for(l.id), &[("User-Agent", IPHONE)])))
        .collect();
    let paths = SPECS.iter().map(|l| path_for(l.id)).collect();
    Fixture {
        server,
        bases,
        paths,
        redirects: AtomicUsize::new(0),
        with_extras: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
    }
}

impl Fixture {
    /// Sends `?query` (raw bytes) to link `li`; a 3xx must pass the full Location oracle, a 4xx
    /// is accepted only when `may_refuse`; anything else (5xx, no answer) fails.
    fn probe(&self, li: usize, query: &[u8], may_refuse: bool) -> Result<(), TestCaseError> {
        let link = &SPECS[li];
        let target = [self.paths[li].as_bytes(), b"?", query].concat();
        let r = send_target(self.server.public, &target, b"").map_err(TestCaseError::fail)?;
        let shown = String::from_utf8_lossy(query);
        match r.status {
            300..=399 => {
                // What the server saw: the query up to a fragment (hyper drops it).
                let seen = query.split(|&b| b == b'#').next().unwrap_or_default();
                let seen =
                    std::str::from_utf8(seen).map_err(|e| TestCaseError::fail(format!("3xx for non-UTF-8 {e}")))?;
                check_human_redirect(link, &self.bases[li], Some(seen), &r)
                    .map_err(|e| TestCaseError::fail(format!("{}: {e} (query {shown:?})", link.id)))?;
                self.redirects.fetch_add(1, Ordering::Relaxed);
                if !expected_extras(seen, link.pinned).is_empty() {
                    self.with_extras.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            400..=499 if may_refuse => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            s => Err(TestCaseError::fail(format!(
                "{}: status {s} for query {shown:?}",
                link.id
            ))),
        }
    }

    /// Checks the run was not vacuous: at least `min_redirects` redirects, `min_extras` of them
    /// with forwarded extras, `min_refused` refusals.
    fn finish(mut self, what: &str, min_redirects: usize, min_extras: usize, min_refused: usize) {
        let (r, e, x) = (
            self.redirects.load(Ordering::Relaxed),
            self.with_extras.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        );
        eprintln!("{what}: {r} redirects checked ({e} with forwarded extras), {x} clean 4xx");
        assert!(
            r >= min_redirects && e >= min_extras && x >= min_refused,
            "{what}: too few interesting cases: {r} redirects, {e} with extras, {x} refusals"
        );
        assert!(alive(&mut self.server), "server died");
        assert_no_panic(&self.server);
        // Whatever `sub` was sent, the records hold only the cleaned form.
        std::thread::sleep(std::time::Duration::from_millis(200));
        for rec in self.server.clicks() {
            if let Some(sub) = rec["sub"].as_str() {
                assert!(
                    !sub.is_empty()
                        && sub.len() <= 64
                        && sub.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~:".contains(&b)),
                    "uncleaned sub {sub:?}"
                );
            }
        }
    }
}

/// Keys: the contract's own (forwardable, link-owned, `sub`), near misses, and arbitrary text.
fn key() -> impl Strategy<Value = String> {
    let named: Vec<String> = INPUTS
        .iter()
        .chain(FORWARDABLE.iter())
        .map(|s| s.to_string())
        .chain(
            [
                "FBCLID",
                "fbclid%20",
                "%20fbclid",
                "fbclid+",
                "utm_source[]",
                "utm-source",
                "gclid%00",
                "sub[]",
                "",
            ]
            .map(String::from),
        )
        .collect();
    prop_oneof![
        3 => proptest::sample::select(named),
        1 => "[a-z_\\[\\]/]{0,12}",
        1 => proptest::collection::vec(any::<u8>(), 0..12).prop_map(|b| pct_all(&b)),
    ]
}

/// Arbitrary bytes, encoded so the request target stays legal but the server still has to
/// decode: fully, form-style, or only what HTTP forbids (`%`, `&`, `=`, `+` then travel raw).
fn value() -> impl Strategy<Value = String> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..260);
    (bytes, 0..4u8).prop_map(|(b, how)| match how {
        0 => pct_all(&b),
        1 => form_urlencoded::byte_serialize(&b).collect(),
        2 => lenient(&b),
        _ => pct_min(&String::from_utf8_lossy(&b)),
    })
}

/// Keeps every byte HTTP allows raw in a query (including `%`, so malformed escapes like `%G1`
/// or a trailing `%` reach the server), encodes the rest.
fn lenient(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        if matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

/// A query string of `key=value` pairs with odd separators and malformed escapes mixed in.
fn query() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        8 => (key(), value()).prop_map(|(k, v)| format!("{k}={v}")),
        1 => key(),
        1 => proptest::sample::select(vec!["%", "%G1", "%C3%28", "%C0%AF", "%00", "+", "=", "==", "%%", "&"])
            .prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..10).prop_map(|p| p.join("&"))
}

#[test]
fn any_sub_gives_the_links_own_redirect() {
    let f = fixture("prop-sub");
    let mut runner = runner(SERVER_CASES);
    runner
        .run(&(0..SPECS.len(), value()), |(li, v)| {
            f.probe(li, format!("sub={v}").as_bytes(), false)
        })
        .unwrap();
    f.finish("sub", SERVER_CASES as usize, 0, 0);
}

#[test]
fn any_query_of_legal_characters_gives_a_correct_redirect() {
    let f = fixture("prop-query");
    let mut runner = runner(SERVER_CASES);
    runner
        .run(&(0..SPECS.len(), query()), |(li, q)| f.probe(li, q.as_bytes(), false))
        .unwrap();
    f.finish("query", SERVER_CASES as usize, SERVER_CASES as usize / 10, 0);
}

#[test]
fn any_raw_query_bytes_give_a_redirect_or_a_clean_4xx() {
    let f = fixture("prop-raw");
    let mut runner = runner(SERVER_CASES);
    // Raw bytes, CR/LF/NUL/space/high bytes included: the request may be malformed HTTP, which
    // hyper refuses with a 4xx; if it gets through, the redirect must still be right.
    let raw = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        query().prop_map(String::into_bytes),
        (query(), any::<u8>(), any::<prop::sample::Index>()).prop_map(|(q, b, at)| {
            let mut v = q.into_bytes();
            let i = if v.is_empty() { 0 } else { at.index(v.len() + 1) };
            v.insert(i, b);
            v
        }),
    ];
    runner
        .run(&(0..SPECS.len(), raw), |(li, q)| f.probe(li, &q, true))
        .unwrap();
    let n = SERVER_CASES as usize;
    f.finish("raw", n / 10, n / 20, n / 10);
}

// ---- KeyRing, in-process ------------------------------------------------------------------

fn ring_spec() -> impl Strategy<Value = String> {
    ("[A-Za-z0-9_-]{1,16}", proptest::collection::vec(any::<u8>(), 32..80))
        .prop_map(|(kid, key)| format!("{kid}:{}", URL_SAFE_NO_PAD.encode(key)))
}

fn link_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sign_then_verify_round_trips(spec in ring_spec(), id in link_id()) {
        let ring = KeyRing::parse(&spec).unwrap();
        let sig = ring.sign(&id);
        prop_assert_eq!(sig.len(), SIG_CHARS);
        prop_assert!(sig.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert!(ring.verify(id.as_bytes(), sig.as_bytes()));
    }

    #[test]
    fn any_single_byte_change_of_the_signature_fails(
        spec in ring_spec(), id in link_id(), at in any::<prop::sample::Index>(), b in any::<u8>()
    ) {
        let ring = KeyRing::parse(&spec).unwrap();
        let mut sig = ring.sign(&id).into_bytes();
        let i = at.index(sig.len());
        prop_assume!(sig[i] != b);
        sig[i] = b;
        prop_assert!(!ring.verify(id.as_bytes(), &sig));
    }

    #[test]
    fn any_single_byte_change_of_the_id_fails(
        spec in ring_spec(), id in link_id(), at in any::<prop::sample::Index>(), b in any::<u8>()
    ) {
        let ring = KeyRing::parse(&spec).unwrap();
        let sig = ring.sign(&id);
        let mut bytes = id.clone().into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != b);
        bytes[i] = b;
        prop_assert!(!ring.verify(&bytes, sig.as_bytes()));
    }

    #[test]
    fn inserting_or_deleting_a_byte_fails(
        spec in ring_spec(), id in link_id(), at in any::<prop::sample::Index>(), b in any::<u8>(), which in 0..4u8
    ) {
        let ring = KeyRing::parse(&spec).unwrap();
        let sig = ring.sign(&id).into_bytes();
        let mut id_b = id.clone().into_bytes();
        let mut sig_b = sig.clone();
        match which {
            0 => sig_b.insert(at.index(sig_b.len() + 1), b),
            1 => { sig_b.remove(at.index(sig_b.len())); }
            2 => id_b.insert(at.index(id_b.len() + 1), b),
            _ => {
                prop_assume!(id_b.len() > 1);
                id_b.remove(at.index(id_b.len()));
            }
        }
        prop_assert!(!ring.verify(&id_b, &sig_b));
    }

    #[test]
    fn another_ids_or_another_keys_signature_fails(
        a in ring_spec(), b in ring_spec(), id in link_id(), other in link_id()
    ) {
        let (ra, rb) = (KeyRing::parse(&a).unwrap(), KeyRing::parse(&b).unwrap());
        prop_assume!(a.split_once(':').unwrap().1 != b.split_once(':').unwrap().1);
        prop_assert!(!rb.verify(id.as_bytes(), ra.sign(&id).as_bytes()));
        if other != id {
            prop_assert!(!ra.verify(id.as_bytes(), ra.sign(&other).as_bytes()));
        }
        // Rotation: a ring holding both verifies both keys' signatures and signs with the first.
        prop_assume!(a.split_once(':').unwrap().0 != b.split_once(':').unwrap().0);
        let both = KeyRing::parse(&format!("{b},{a}")).unwrap();
        prop_assert!(both.verify(id.as_bytes(), ra.sign(&id).as_bytes()));
        prop_assert!(both.verify(id.as_bytes(), rb.sign(&id).as_bytes()));
        prop_assert_eq!(both.sign(&id), rb.sign(&id));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_only_the_signature_verifies(
        spec in ring_spec(), id in proptest::collection::vec(any::<u8>(), 0..80), sig in proptest::collection::vec(any::<u8>(), 0..40)
    ) {
        let ring = KeyRing::parse(&spec).unwrap();
        let ok = ring.verify(&id, &sig);
        let expected = std::str::from_utf8(&id).is_ok_and(|s| ring.sign(s).as_bytes() == sig.as_slice());
        prop_assert_eq!(ok, expected);
    }
}

/// The fault matrix's "Forged signature" figures, in process against `KeyRing::verify`: 100k
/// mutations of valid tokens (a tag bit flipped, a character substituted, truncated, extended,
/// a letter's case changed, the id edited, another id's or a key outside the ring's signature)
/// all refused, and 100k valid tokens, signed by either key of a rotation, all accepted.
#[test]
fn a_hundred_thousand_mutations_refused_and_a_hundred_thousand_valid_tokens_accepted() {
    const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let key = |kid: &str, fill: u8| format!("{kid}:{}", URL_SAFE_NO_PAD.encode([fill; 32]));
    let (new, old, outside) = (key("k1", 7), key("k0", 9), key("kx", 11));
    let ring = KeyRing::parse(&format!("{new},{old}")).unwrap();
    let signers = [KeyRing::parse(&new).unwrap(), KeyRing::parse(&old).unwrap()];
    let stranger = KeyRing::parse(&outside).unwrap();
    let mut rng = oracle::Rng::new(0x0100_0000_f0f0);
    let id_of = |rng: &mut oracle::Rng| -> String {
        let len = 1 + rng.below(64);
        (0..len).map(|_| B64URL[rng.below(64)] as char).collect()
    };
    let (mut kinds, mut previous) = ([0usize; 8], String::from("seed"));
    for i in 0..100_000 {
        let id = id_of(&mut rng);
        let sig = signers[i % 2].sign(&id);
        assert!(
            ring.verify(id.as_bytes(), sig.as_bytes()),
            "valid token refused: {id}.{sig}"
        );
        let (mut m_id, mut m_sig) = (id.clone().into_bytes(), sig.clone().into_bytes());
        let kind = rng.below(8);
        match kind {
            0 => {
                let mut tag = URL_SAFE_NO_PAD.decode(&sig).unwrap();
                let bit = rng.below(tag.len() * 8);
                tag[bit / 8] ^= 1 << (bit % 8);
                m_sig = URL_SAFE_NO_PAD.encode(&tag).into_bytes();
            }
            1 => {
                let at = rng.below(m_sig.len());
                while m_sig[at] == sig.as_bytes()[at] {
                    m_sig[at] = B64URL[rng.below(64)];
                }
            }
            2 => m_sig.truncate(rng.below(SIG_CHARS)),
            3 => m_sig.extend((0..1 + rng.below(4)).map(|_| B64URL[rng.below(64)])),
            4 => match m_sig.iter().position(u8::is_ascii_alphabetic) {
                Some(at) => m_sig[at] ^= 0x20,
                None => m_sig.truncate(SIG_CHARS - 1),
            },
            5 => {
                let at = rng.below(m_id.len());
                while m_id[at] == id.as_bytes()[at] {
                    m_id[at] = B64URL[rng.below(64)];
                }
            }
            6 if m_id.len() > 1 && rng.below(2) == 0 => {
                m_id.remove(rng.below(m_id.len()));
            }
            6 => m_id.insert(rng.below(m_id.len() + 1), B64URL[rng.below(64)]),
            _ if previous != id && rng.below(2) == 0 => m_sig = ring.sign(&previous).into_bytes(),
            _ => m_sig = stranger.sign(&id).into_bytes(),
        }
        kinds[kind] += 1;
        assert!(
            !ring.verify(&m_id, &m_sig),
            "forgery accepted (kind {kind}): {}.{}",
            String::from_utf8_lossy(&m_id),
            String::from_utf8_lossy(&m_sig)
        );
        previous = id;
    }
    assert!(
        kinds.iter().all(|&n| n > 10_000),
        "every kind of mutation tried: {kinds:?}"
    );
}

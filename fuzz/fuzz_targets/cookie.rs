//! The attribution cookie reader over arbitrary `Cookie` headers: never panics, and whatever
//! it accepts carries a click ID.
#![no_main]
use cartlink::links::signature::KeyRing;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static KeyRing {
    static K: OnceLock<KeyRing> = OnceLock::new();
    K.get_or_init(|| KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").expect("valid test keys"))
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    // Several Cookie headers when the input has newlines, as a browser or CDN may send.
    for part in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(http::header::COOKIE, v);
        }
    }
    let now = 1_790_000_000;
    let _ = cartlink::redirect::cookie::read(keys(), "cl_att", &headers, now, 30 * 86_400);
});

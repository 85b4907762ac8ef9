//! A links file (one or more JSON Lines): parsing and pre-rendering either succeed or return
//! `file:line: reason`, never panic.
#![no_main]
use cartlink::links::signature::KeyRing;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static KeyRing {
    static K: OnceLock<KeyRing> = OnceLock::new();
    K.get_or_init(|| KeyRing::parse(cartlink::config::DEMO_SIGNING_KEYS).expect("demo keys"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = cartlink::links::parse(text, "fuzz", keys()) {
            let _ = e.to_string();
        }
    }
});

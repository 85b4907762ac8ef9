//! A links file (one or more JSON Lines): parsing and pre-rendering either succeed or return
//! `file:line: reason`, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = cartlink::links::parse(text, "fuzz") {
            let _ = e.to_string();
        }
    }
});

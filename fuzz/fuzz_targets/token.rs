//! The link token: `/{id}.{sig}` path splitting, then verification against a key ring.
//! Must never panic; a token it accepts must be the one `sign` makes.
#![no_main]
use cartlink::links::signature::KeyRing;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static KeyRing {
    static K: OnceLock<KeyRing> = OnceLock::new();
    K.get_or_init(|| {
        KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8,k0:HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA")
            .expect("valid test keys")
    })
}

fuzz_target!(|path: &[u8]| {
    if let Some((id, sig)) = cartlink::redirect::split_token(path) {
        if keys().verify(id, sig) {
            let id = std::str::from_utf8(id).expect("ids are ASCII");
            assert_eq!(
                keys().sign(id).as_bytes(),
                sig,
                "accepted a signature `sign` does not make"
            );
        }
    }
});

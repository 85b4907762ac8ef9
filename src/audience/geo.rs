//! Country lookup in a MaxMind-format database. Both common schemas are read: GeoIP2 /
//! GeoLite2 (`country.iso_code`) and the free ip-location-db country databases
//! (`country_code`). The file is read into memory when the links load (a country database is
//! a few MiB; reading it instead of mapping it means replacing the file on disk can never
//! fault a running server) and reloaded with them.

use maxminddb::{PathElement, Reader};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    /// `true`: GeoIP2 schema; `false`: ip-location-db (`country_code`).
    nested: bool,
    /// Decoded countries by data record (see [`GeoDb::country`]).
    decoded: Box<[AtomicU64]>,
}

/// Slots in the decoded-record cache: a country database has a few hundred distinct records,
/// a city database many more, of which the busy ones stay here.
const DECODED_SLOTS: usize = 4096;

const GEOIP2: [PathElement<'static>; 2] = [PathElement::Key("country"), PathElement::Key("iso_code")];
const FLAT: [PathElement<'static>; 1] = [PathElement::Key("country_code")];

impl GeoDb {
    pub fn open(path: &Path) -> Result<GeoDb, String> {
        let reader = Reader::open_readfile(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let kind = reader.metadata().database_type.to_ascii_lowercase();
        // GeoIP2/GeoLite2 name themselves; anything else is probed on a well-known address.
        let nested = kind.contains("geoip2") || kind.contains("geolite2") || {
            let probe: IpAddr = [1, 1, 1, 1].into();
            reader
                .lookup(probe)
                .ok()
                .and_then(|r| r.decode_path::<&str>(&GEOIP2).ok().flatten())
                .is_some()
        };
        Ok(GeoDb {
            reader,
            nested,
            decoded: (0..DECODED_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// ISO 3166 alpha-2 of `ip`, upper-case; `None` when unknown.
    ///
    /// The tree walk finds the address's data record; what that record decodes to is kept in
    /// a direct-mapped cache keyed by its offset (one atomic word per slot: offset + 1 in the
    /// high 48 bits, the code in the low 16, zero for a record without a country), so the
    /// many visitors of one country decode it once. No lock: a slot is one load or one store.
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let found = self.reader.lookup(ip).ok()?;
        let offset = found.offset()? as u64;
        let slot = &self.decoded[offset as usize % DECODED_SLOTS];
        let tag = (offset + 1) << 16;
        let seen = slot.load(Ordering::Relaxed);
        if seen >> 16 == offset + 1 {
            let cc = (seen as u16).to_be_bytes();
            return (cc != [0, 0]).then_some(cc);
        }
        let code: Option<&str> = if self.nested {
            found.decode_path(&GEOIP2)
        } else {
            found.decode_path(&FLAT)
        }
        .ok()?;
        let cc = code.and_then(|c| country_code(c.as_bytes()));
        if offset < 1 << 47 {
            slot.store(
                tag | u64::from(u16::from_be_bytes(cc.unwrap_or([0, 0]))),
                Ordering::Relaxed,
            );
        }
        cc
    }
}

/// Two ASCII letters, upper-cased; the CDN placeholders `XX` and `T1` (Tor) are unknown.
pub fn country_code(b: &[u8]) -> Option<[u8; 2]> {
    let [a, c] = b else { return None };
    let cc = [a.to_ascii_uppercase(), c.to_ascii_uppercase()];
    (cc.iter().all(u8::is_ascii_uppercase) && &cc != b"XX").then_some(cc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    #[test]
    fn both_schemas_give_countries() {
        for name in ["geo-geolite2.mmdb", "geo-iplocation.mmdb"] {
            let db = GeoDb::open(&fixture(name)).unwrap();
            let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
            assert_eq!(db.country(ip("203.0.113.9")), Some(*b"FR"), "{name}");
            assert_eq!(db.country(ip("198.51.100.1")), Some(*b"DE"), "{name}");
            assert_eq!(db.country(ip("2001:db8:f::1")), Some(*b"FR"), "{name}");
            assert_eq!(db.country(ip("8.8.8.8")), None, "{name}");
            // Again, now from the decoded-record cache.
            for _ in 0..2 {
                assert_eq!(db.country(ip("203.0.113.77")), Some(*b"FR"), "{name}");
                assert_eq!(db.country(ip("198.51.100.200")), Some(*b"DE"), "{name}");
                assert_eq!(db.country(ip("8.8.4.4")), None, "{name}");
            }
        }
        assert!(GeoDb::open(&fixture("crawler-user-agents.LICENSE")).is_err());
    }

    #[test]
    fn cdn_country_codes() {
        assert_eq!(country_code(b"fr"), Some(*b"FR"));
        assert_eq!(country_code(b"XX"), None);
        assert_eq!(country_code(b"T1"), None);
        assert_eq!(country_code(b"FRA"), None);
    }
}

//! Country lookup in a MaxMind-format database. Both common schemas are read: GeoIP2 /
//! GeoLite2 (`country.iso_code`) and the free ip-location-db country databases
//! (`country_code`). The file is read into memory when the links load (a country database is
//! a few MiB; reading it instead of mapping it means replacing the file on disk can never
//! fault a running server) and reloaded with them.

use maxminddb::{PathElement, Reader};
use std::net::IpAddr;
use std::path::Path;

pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    /// `true`: GeoIP2 schema; `false`: ip-location-db (`country_code`).
    nested: bool,
}

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
        Ok(GeoDb { reader, nested })
    }

    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// ISO 3166 alpha-2 of `ip`, upper-case; `None` when unknown.
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let found = self.reader.lookup(ip).ok()?;
        let code: &str = if self.nested {
            found.decode_path(&GEOIP2)
        } else {
            found.decode_path(&FLAT)
        }
        .ok()??;
        country_code(code.as_bytes())
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

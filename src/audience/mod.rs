//! Who is clicking, decided in memory during the request: device class, bot or human,
//! in-app browser, the client address behind the CDN and its anonymised form, country, and
//! whether this human is new to the link (`unique`).

pub mod agent;
pub mod bots;
pub mod client_ip;
pub mod geo;
pub mod unique;

pub use agent::Agent;
use http::HeaderMap;
use std::borrow::Cow;
use std::net::IpAddr;

/// The request's User-Agent; an absent one reads as empty (which is a bot).
pub fn user_agent(headers: &HeaderMap) -> &[u8] {
    headers.get(http::header::USER_AGENT).map_or(&b""[..], |v| v.as_bytes())
}

/// What the request's User-Agent says (see [`agent`]).
pub fn agent(headers: &HeaderMap) -> Agent {
    let ua = user_agent(headers);
    agent::of(ua, agent::hash(ua))
}

/// A request that says it is a prefetch or a link preview, whatever its User-Agent. One pass
/// over the few headers a request has, instead of a hashed lookup per name.
pub fn is_prefetch(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, v)| {
        let what: &[u8] = match name.as_str() {
            "sec-purpose" | "purpose" | "x-moz" => b"prefetch",
            "x-purpose" => b"preview",
            _ => return false,
        };
        v.as_bytes().windows(what.len()).any(|w| w.eq_ignore_ascii_case(what))
    })
}

/// True for crawlers, previews and prefetches: an empty or bot User-Agent, or a request that
/// says it is a prefetch or preview.
pub fn is_bot(headers: &HeaderMap) -> bool {
    agent(headers).bot || is_prefetch(headers)
}

/// IPv4 to its /24, IPv6 to its /48: what records and logs may carry.
pub fn anonymize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => anonymize(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
            }
        },
    }
}

/// The host of a Referer header, lower-cased; `None` when absent or not a URL with a host.
pub fn referer_host(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    // Bytes, not `to_str`: only the host's bytes matter, and they are checked below.
    let r = headers.get(http::header::REFERER)?.as_bytes();
    // The first `://` (a searcher for it costs more to build than this header takes to scan).
    let colon = memchr::memchr_iter(b':', r).find(|&i| r[i + 1..].starts_with(b"//"))?;
    let rest = &r[colon + 3..];
    let end = memchr::memchr3(b'/', b'?', b'#', rest).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = memchr::memrchr(b'@', authority).map_or(authority, |at| &authority[at + 1..]);
    let host = if host.first() == Some(&b'[') {
        host
    } else {
        &host[..memchr::memchr(b':', host).unwrap_or(host.len())]
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.iter().fold(true, |ok, &b| {
            ok & (b.is_ascii_alphanumeric() | matches!(b, b'-' | b'.' | b'[' | b']' | b':'))
        });
    if !ok {
        return None;
    }
    // ASCII once checked, so always UTF-8.
    let host = std::str::from_utf8(host).ok()?;
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ua(s: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::USER_AGENT, HeaderValue::from_str(s).unwrap());
        h
    }

    #[test]
    fn previews_are_bots_browsers_are_not() {
        for b in [
            "facebookexternalhit/1.1",
            "WhatsApp/2.23",
            "TelegramBot (like TwitterBot)",
            "Slackbot-LinkExpanding 1.0",
            "",
        ] {
            assert!(is_bot(&ua(b)), "{b}");
        }
        let insta = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0";
        assert!(!is_bot(&ua(insta)));
        assert_eq!(agent(&ua(insta)).device, crate::clicks::Device::Ios);
        let mut h = ua(insta);
        h.insert("sec-purpose", HeaderValue::from_static("prefetch;prerender"));
        assert!(is_bot(&h));
    }

    #[test]
    fn anonymises_to_prefixes() {
        assert_eq!(anonymize("203.0.113.77".parse().unwrap()).to_string(), "203.0.113.0");
        assert_eq!(
            anonymize("2001:db8:1234:5678::1".parse().unwrap()).to_string(),
            "2001:db8:1234::"
        );
    }

    #[test]
    fn referer_hosts() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::REFERER,
            HeaderValue::from_static("https://L.Instagram.com:443/path?x=1"),
        );
        assert_eq!(referer_host(&h).as_deref(), Some("l.instagram.com"));
        // Already lower case: borrowed from the header, not copied.
        h.insert(
            http::header::REFERER,
            HeaderValue::from_static("https://l.instagram.com/"),
        );
        assert!(matches!(referer_host(&h), Some(Cow::Borrowed("l.instagram.com"))));
        // Bytes past the host that are not visible ASCII do not hide it.
        h.insert(
            http::header::REFERER,
            HeaderValue::from_bytes(b"https://shop.example/caf\xc3\xa9").unwrap(),
        );
        assert_eq!(referer_host(&h).as_deref(), Some("shop.example"));
    }

    /// The host as the first version read it, through `str` methods: the oracle.
    fn referer_host_by_str(r: &str) -> Option<String> {
        let rest = r.split_once("://")?.1;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if host.starts_with('[') {
            host
        } else {
            host.split(':').next()?
        };
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
        ok.then(|| host.to_ascii_lowercase())
    }

    proptest::proptest! {
        #[test]
        fn referer_host_reads_what_the_str_version_read(
            r in "[a-zA-Z]{0,5}(://)?(://)?[a-zA-Z0-9@:.\\[\\]_%-]{0,40}[/?#]?[ -~]{0,20}"
        ) {
            let mut h = HeaderMap::new();
            h.insert(http::header::REFERER, HeaderValue::from_str(&r).unwrap());
            proptest::prop_assert_eq!(referer_host(&h).map(Cow::into_owned), referer_host_by_str(&r));
        }
    }
}

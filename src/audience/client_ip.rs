//! The client's address: the socket peer, unless the peer is a trusted proxy (a CIDR in
//! `trusted_proxies`), in which case the configured CDN header (`CF-Connecting-IP`…) or else
//! the rightmost untrusted hop of `X-Forwarded-For` (all of its lines, in order) or
//! `Forwarded: for=`. From an untrusted peer these headers are ignored.

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use std::net::IpAddr;

/// Hops read from the right of a forwarding chain before giving up.
const MAX_HOPS: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    /// The CDN's own client-address header, if configured.
    cdn_header: Option<HeaderName>,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

impl ClientIp {
    pub fn new(trusted: &[String], cdn_header: &str) -> Result<ClientIp, String> {
        let trusted = trusted
            .iter()
            .map(|t| {
                t.parse::<IpNet>()
                    .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("trusted_proxies: `{t}` is not a CIDR or address"))
            })
            .collect::<Result<_, _>>()?;
        let cdn_header = cdn_header.trim();
        let cdn_header = (!cdn_header.is_empty())
            .then(|| HeaderName::from_bytes(cdn_header.as_bytes()))
            .transpose()
            .map_err(|_| format!("client_ip_header: `{cdn_header}` is not a header name"))?;
        Ok(ClientIp { trusted, cdn_header })
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Resolves the client address for a request that arrived from `peer`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return peer;
        }
        if let Some(name) = &self.cdn_header {
            if let Some(ip) = headers.get(name).and_then(|v| v.to_str().ok()).and_then(parse_hop) {
                return ip;
            }
        }
        // The common case, one line whose last hop is the client: the walk's first step,
        // without the iterators it is built from (about half the instructions of this call).
        let mut xff_lines = headers.get_all(&X_FORWARDED_FOR).iter();
        if let (Some(Ok(line)), None) = (xff_lines.next().map(|v| v.to_str()), xff_lines.next()) {
            // After an ASCII comma, so a char boundary.
            let last = memchr::memrchr(b',', line.as_bytes()).map_or(line, |i| &line[i + 1..]);
            if let Some(ip) = parse_hop(last).filter(|ip| !self.is_trusted(*ip)) {
                return ip;
            }
        }
        // Right to left over every line of the header, without collecting the hops.
        let lines = |name| headers.get_all(name).iter().rev().filter_map(|v| v.to_str().ok());
        let mut xff = lines(&X_FORWARDED_FOR).flat_map(|v| v.rsplit(',')).peekable();
        if xff.peek().is_some() {
            return self.rightmost_untrusted(peer, xff);
        }
        let mut fwd = lines(&FORWARDED)
            .flat_map(|v| v.rsplit(','))
            .filter_map(|elem| {
                elem.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v)
                })
            })
            .peekable();
        if fwd.peek().is_some() {
            return self.rightmost_untrusted(peer, fwd);
        }
        peer
    }

    /// Walks right to left past trusted hops; the first untrusted one is the client. A hop that
    /// is not an address ends the walk at the last address known to be real.
    fn rightmost_untrusted<'a>(&self, peer: IpAddr, hops: impl Iterator<Item = &'a str>) -> IpAddr {
        let mut last = peer;
        for hop in hops.take(MAX_HOPS) {
            let Some(ip) = parse_hop(hop) else { return last };
            if !self.is_trusted(ip) {
                return ip;
            }
            last = ip;
        }
        last
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, as dual-stack sockets report IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `a.b.c.d` in decimal without leading zeros: exactly what std's parser accepts as IPv4.
fn dotted_quad(s: &[u8]) -> Option<IpAddr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for octet in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p[0] == b'0') || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = p.iter().fold(0u16, |v, &d| v * 10 + u16::from(d - b'0'));
        *octet = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then(|| IpAddr::from(octets))
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`, quoted or not.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    // Most hops are a bare IPv4 address: tried before the Unicode-aware trims.
    if let Some(ip) = dotted_quad(hop.as_bytes().trim_ascii()) {
        return Some(ip);
    }
    let h = hop.trim().trim_matches('"');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok()).map(canonical);
    }
    let (ip, port) = h.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    proptest::proptest! {
        #[test]
        fn dotted_quad_accepts_what_std_accepts(s in "[0-9.]{0,17}|[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,4}") {
            let std_says = s.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4);
            proptest::prop_assert_eq!(dotted_quad(s.as_bytes()), std_says);
        }
    }

    #[test]
    fn twenty_cases() {
        let c = ClientIp::new(
            &["127.0.0.2/32".into(), "10.0.0.0/8".into(), "2001:db8:cd::/48".into()],
            "CF-Connecting-IP",
        )
        .unwrap();
        let cdn: IpAddr = "127.0.0.2".parse().unwrap();
        let direct: IpAddr = "127.0.0.3".parse().unwrap();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let cases: Vec<(IpAddr, HeaderMap, &str)> = vec![
            (direct, h(&[("x-forwarded-for", "1.1.1.1")]), "127.0.0.3"),
            (direct, h(&[("cf-connecting-ip", "1.1.1.1")]), "127.0.0.3"),
            (direct, h(&[("forwarded", "for=1.1.1.1")]), "127.0.0.3"),
            (cdn, h(&[]), "127.0.0.2"),
            (cdn, h(&[("x-forwarded-for", "203.0.113.7")]), "203.0.113.7"),
            (cdn, h(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]), "203.0.113.7"),
            (cdn, h(&[("x-forwarded-for", "203.0.113.7, 10.1.2.3")]), "203.0.113.7"),
            (
                cdn,
                h(&[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
                ]),
                "203.0.113.7",
            ),
            (cdn, h(&[("x-forwarded-for", "garbage, 10.0.0.9")]), "10.0.0.9"),
            (cdn, h(&[("x-forwarded-for", "unknown")]), "127.0.0.2"),
            (cdn, h(&[("x-forwarded-for", "203.0.113.7:4711")]), "203.0.113.7"),
            (cdn, h(&[("x-forwarded-for", "[2001:db8::7]:443")]), "2001:db8::7"),
            (cdn, h(&[("x-forwarded-for", "2001:db8::7")]), "2001:db8::7"),
            (
                cdn,
                h(&[("x-forwarded-for", "2001:db8::7, 2001:db8:cd::1")]),
                "2001:db8::7",
            ),
            (cdn, h(&[("x-forwarded-for", &["10.0.0.1"; 100].join(","))]), "10.0.0.1"),
            (
                cdn,
                h(&[("cf-connecting-ip", "198.51.100.4"), ("x-forwarded-for", "6.6.6.6")]),
                "198.51.100.4",
            ),
            (
                cdn,
                h(&[("cf-connecting-ip", "nonsense"), ("x-forwarded-for", "6.6.6.6")]),
                "6.6.6.6",
            ),
            (
                cdn,
                h(&[("forwarded", "for=\"[2001:db8::9]:80\";proto=https, for=10.0.0.2")]),
                "2001:db8::9",
            ),
            (cdn, h(&[("forwarded", "For=198.51.100.9")]), "198.51.100.9"),
            (
                ip("::ffff:127.0.0.2"),
                h(&[("x-forwarded-for", "203.0.113.7")]),
                "203.0.113.7",
            ),
        ];
        assert_eq!(cases.len(), 20);
        for (i, (peer, headers, want)) in cases.into_iter().enumerate() {
            assert_eq!(c.resolve(peer, &headers), ip(want), "case {i}");
        }
        assert!(ClientIp::new(&["not-a-cidr".into()], "").is_err());
    }
}

//! The client's address behind trusted reverse proxies.
//!
//! Per-address limits count the TCP peer, which behind a reverse proxy is the
//! proxy: every user would share one allowance. When the peer is one of the
//! configured trusted proxies (`--trusted-proxy CIDR`, repeatable), the
//! client address is read from the one header those proxies write
//! (`--trusted-proxy-header`): `X-Forwarded-For` (the de-facto
//! comma-separated list; the default, as nginx, HAProxy and Envoy append it)
//! or `Forwarded` (RFC 7239, its `for=` parameters). Only that header is
//! read: a proxy passes the other one through from the client untouched, so
//! reading it would let a client pick the address that is counted. The list
//! is walked from the right (the hop nearest to Herald) and the first
//! address that is not itself a trusted proxy is the client: a client cannot
//! forge its way past a proxy that appends what it saw. A header that cannot
//! be read (obfuscated or `unknown` identifiers, garbage) leaves the peer's
//! own address. From an untrusted peer the headers are ignored.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Which header trusted proxies write the client address into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, ...`.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl std::str::FromStr for ProxyHeader {
    type Err = String;

    /// `x-forwarded-for` or `forwarded` (any case).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ProxyHeader::XForwardedFor),
            "forwarded" => Ok(ProxyHeader::Forwarded),
            other => Err(format!(
                "--trusted-proxy-header {other:?}: choose x-forwarded-for or forwarded"
            )),
        }
    }
}

/// The client address for a request from `peer` with `headers`, given the
/// trusted proxy networks and the header they write.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ProxyHeader,
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = match header {
        ProxyHeader::Forwarded => forwarded_for(headers),
        ProxyHeader::XForwardedFor => x_forwarded_for(headers),
    };
    let Some(hops) = hops else {
        return peer;
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(ip) {
                    return client;
                }
            }
            // An identifier that is not an address: stop at the last known hop.
            None => return client,
        }
    }
    client
}

/// The address a per-address limit counts for `ip`: an IPv4-mapped IPv6
/// address counts as its IPv4 address, and an IPv6 address as its /64 (one
/// host commonly holds a whole /64, so counting single addresses would give
/// it millions of allowances).
pub fn counted(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Parses `--trusted-proxy` values: `10.0.0.0/8`, `::1/128`, or a single
/// address (`127.0.0.1`, taken as /32 or /128).
///
/// Errors: the offending value, with what was expected.
pub fn parse_networks(values: &[String]) -> Result<Vec<IpNet>, String> {
    values
        .iter()
        .map(|v| {
            let v = v.trim();
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("--trusted-proxy {v:?}: expected an address or a CIDR network such as 10.0.0.0/8")
                })
        })
        .collect()
}

/// The `for=` values of every `Forwarded` header, in order; `None` when
/// there is no such header or it cannot be read.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut hops = Vec::new();
    let mut any = false;
    for v in headers.get_all("forwarded") {
        any = true;
        let v = v.to_str().ok()?;
        for element in v.split(',') {
            let mut found = false;
            for pair in element.split(';') {
                let (k, val) = pair.trim().split_once('=')?;
                if k.trim().eq_ignore_ascii_case("for") {
                    hops.push(node_ip(val.trim()));
                    found = true;
                }
            }
            if !found {
                return None;
            }
        }
    }
    (any && !hops.is_empty()).then_some(hops)
}

fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut hops = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let v = v.to_str().ok()?;
        hops.extend(v.split(',').map(|h| node_ip(h.trim())));
    }
    (!hops.is_empty()).then_some(hops)
}

/// An RFC 7239 node (`192.0.2.1`, `"192.0.2.1:80"`, `"[2001:db8::1]:80"`,
/// `2001:db8::1` in X-Forwarded-For) as an address; `None` for `unknown`,
/// obfuscated names and anything else.
fn node_ip(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const X: ProxyHeader = ProxyHeader::XForwardedFor;
    const F: ProxyHeader = ProxyHeader::Forwarded;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn untrusted_peers_are_taken_as_they_are() {
        let trusted = parse_networks(&["10.0.0.0/8".into()]).unwrap();
        let headers = h(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_ip(ip("8.8.8.8"), &headers, &trusted, X),
            ip("8.8.8.8")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &headers, &[], X), ip("10.0.0.1"));
    }

    #[test]
    fn x_forwarded_for_from_the_right() {
        let trusted = parse_networks(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let peer = ip("127.0.0.1");
        // One proxy that appended the client.
        let one = h(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(client_ip(peer, &one, &trusted, X), ip("203.0.113.7"));
        // A client that forged an entry: the proxy appended the real address.
        let forged = h(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        assert_eq!(client_ip(peer, &forged, &trusted, X), ip("203.0.113.7"));
        // Two trusted proxies in a row.
        let chain = h(&[("x-forwarded-for", "203.0.113.7, 10.1.2.3")]);
        assert_eq!(client_ip(peer, &chain, &trusted, X), ip("203.0.113.7"));
        // Split over two headers.
        let split = h(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.1.2.3"),
        ]);
        assert_eq!(client_ip(peer, &split, &trusted, X), ip("203.0.113.7"));
        // IPv6.
        let v6 = h(&[("x-forwarded-for", "2001:db8::7")]);
        assert_eq!(client_ip(peer, &v6, &trusted, X), ip("2001:db8::7"));
        // Garbage: the peer.
        let bad = h(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(client_ip(peer, &bad, &trusted, X), peer);
        // No header: the peer.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted, X), peer);
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let trusted = parse_networks(&["127.0.0.0/8".into()]).unwrap();
        let peer = ip("127.0.0.1");
        // nginx appends X-Forwarded-For and passes the client's Forwarded on.
        let h = h(&[("forwarded", "for=8.8.8.1"), ("x-forwarded-for", "7.7.7.8")]);
        assert_eq!(client_ip(peer, &h, &trusted, X), ip("7.7.7.8"));
        assert_eq!(client_ip(peer, &h, &trusted, F), ip("8.8.8.1"));
        assert_eq!("Forwarded".parse::<ProxyHeader>(), Ok(F));
        assert!("via".parse::<ProxyHeader>().is_err());
    }

    #[test]
    fn forwarded_is_read_per_rfc_7239() {
        let trusted = parse_networks(&["127.0.0.0/8".into()]).unwrap();
        let peer = ip("127.0.0.1");
        let f = h(&[
            ("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(client_ip(peer, &f, &trusted, F), ip("192.0.2.60"));
        let quoted = h(&[("forwarded", "for=\"[2001:db8:cafe::17]:4711\"")]);
        assert_eq!(
            client_ip(peer, &quoted, &trusted, F),
            ip("2001:db8:cafe::17")
        );
        let ported = h(&[("forwarded", "for=\"192.0.2.43:47011\", for=127.0.0.5")]);
        assert_eq!(client_ip(peer, &ported, &trusted, F), ip("192.0.2.43"));
        // An obfuscated hop nearest to us: no address beyond the peer.
        let hidden = h(&[("forwarded", "for=192.0.2.43, for=_hidden")]);
        assert_eq!(client_ip(peer, &hidden, &trusted, F), peer);
        let unknown = h(&[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(peer, &unknown, &trusted, F), peer);
    }

    #[test]
    fn counted_addresses() {
        assert_eq!(counted(ip("::ffff:4.4.4.6")), ip("4.4.4.6"));
        assert_eq!(counted(ip("2001:db8::1")), counted(ip("2001:db8::4")));
        assert_eq!(counted(ip("2001:db8:0:0:1:2:3:4")), ip("2001:db8::"));
        assert_ne!(counted(ip("2001:db8:0:1::1")), counted(ip("2001:db8::1")));
        assert_eq!(counted(ip("10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn networks() {
        assert!(parse_networks(&["10.0.0.0/8".into(), "::1".into(), "fd00::/8".into()]).is_ok());
        let e = parse_networks(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(e.contains("--trusted-proxy"), "{e}");
        assert!(parse_networks(&["example.com".into()]).is_err());
    }
}

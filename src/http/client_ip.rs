//! The client's address, for logs and (later) rate limits: the peer, unless the peer is a
//! configured trusted proxy (`trusted_proxies`), in which case `X-Forwarded-For` is walked from
//! the right past every trusted hop. A client cannot spoof its address by sending the header
//! itself: an untrusted peer's header is ignored.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client address of a request (`None` without a peer address, as in some tests).
pub fn of_request(req: &actix_web::HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if trusted.is_empty() {
        return Some(peer);
    }
    let xff: Vec<&str> = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()).collect();
    Some(client_ip(peer, &xff, trusted))
}

/// The peer, when it forwards for others without being trusted: the request carries
/// `X-Forwarded-For` (or `Forwarded`) and the peer is not in `trusted_proxies`.
pub fn untrusted_forwarder(req: &actix_web::HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let h = req.headers();
    if !h.contains_key("x-forwarded-for") && !h.contains_key("forwarded") {
        return None;
    }
    let peer = req.peer_addr()?.ip();
    (!trusted.iter().any(|n| n.contains(&peer))).then_some(peer)
}

/// The client address given the TCP peer, the `X-Forwarded-For` values (in order) and the
/// trusted proxies.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.iter().rev().flat_map(|v| v.rsplit(',')) {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // Garbage in the chain: stop at the last address we could trust.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_peers_may_forward() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let cases: &[(&str, &[&str], &str)] = &[
            ("203.0.113.9", &["1.2.3.4"], "203.0.113.9"), // untrusted peer: header ignored
            ("10.0.0.2", &["1.2.3.4"], "1.2.3.4"),
            ("10.0.0.2", &["6.6.6.6, 1.2.3.4, 10.0.0.7"], "1.2.3.4"), // spoofed left part ignored
            ("10.0.0.2", &["6.6.6.6", "1.2.3.4"], "1.2.3.4"),         // several header lines
            ("10.0.0.2", &[], "10.0.0.2"),
            ("10.0.0.2", &["10.0.0.9"], "10.0.0.9"),
            ("10.0.0.2", &["1.2.3.4, garbage"], "10.0.0.2"),
            ("::1", &["2001:db8::1"], "2001:db8::1"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(client_ip(ip(peer), xff, &trusted), ip(want), "{peer} {xff:?}");
        }
        assert_eq!(client_ip(ip("10.0.0.2"), &["1.2.3.4"], &[]), ip("10.0.0.2"), "nothing trusted by default");
    }
}

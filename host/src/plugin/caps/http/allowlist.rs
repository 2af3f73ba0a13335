//! Where a getter's outbound HTTP may go: the operator's allowlist (`--plugin-http`, TOML
//! `http = [...]`), with Spin's `allowed_outbound_hosts` semantics.
//!
//! An entry is `SCHEME://HOST[:PORT]`:
//! - SCHEME is `http`, `https` or `*` (either);
//! - HOST is a name (`api.example.com`), a wildcard over its subdomains (`*.internal`: any
//!   name ending in `.internal`, not `internal` itself), `*` (any name), or an IP literal
//!   (`127.0.0.1`, `[::1]`). IP literals in requests match only entries that list them: `*`
//!   covers names, never addresses;
//! - PORT is a number, `*` (any), or absent: the scheme's default (80, 443; both for `*://`).
//!
//! Names are checked here; the addresses they resolve to are checked by the plugin's
//! connector (`caps/http/mod.rs`): loopback, link-local, unspecified and multicast addresses are
//! refused unless the allowlist lists that address as an IP literal.

use std::net::IpAddr;

/// One allowed origin pattern, as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: SchemeRule,
    host: HostRule,
    port: PortRule,
    /// The entry as given, normalized (lower case): its metric label and how logs name it.
    text: std::sync::Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemeRule {
    Http,
    Https,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// One name, lower case, without a trailing dot.
    Name(String),
    /// Names ending in this suffix (it starts with `.`).
    Subdomains(String),
    /// Any name (not an IP literal).
    AnyName,
    /// One address.
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortRule {
    Default,
    Exact(u16),
    Any,
}

/// A plugin's allowed origins. Empty: every request is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpAllowlist {
    entries: Vec<AllowedOrigin>,
}

/// What a request is sent to, taken from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    https: bool,
    host: DestHost,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DestHost {
    Name(String),
    Ip(IpAddr),
}

impl std::fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl AllowedOrigin {
    /// Parses one entry.
    ///
    /// # Errors
    /// A message naming the entry and what a valid one looks like.
    pub fn parse(entry: &str) -> Result<AllowedOrigin, String> {
        let bad = |why: &str| {
            format!(
                "HTTP allowlist entry {entry:?}: {why}; expected SCHEME://HOST[:PORT], e.g. \
                 https://api.example.com, https://*.internal:8443 or http://127.0.0.1:8080"
            )
        };
        let text = entry.trim().to_ascii_lowercase();
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme {
            "http" => SchemeRule::Http,
            "https" => SchemeRule::Https,
            "*" => SchemeRule::Any,
            _ => return Err(bad("the scheme must be http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("only an origin is allowed: no path, query or user"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| bad("a bad host or port"))?;
        let port = match port {
            None => PortRule::Default,
            Some("*") => PortRule::Any,
            Some(p) => PortRule::Exact(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port must be 1 to 65535 or *"))?,
            ),
        };
        let host = if host == "*" {
            HostRule::AnyName
        } else if let Some(ip) = parse_ip(host) {
            HostRule::Ip(ip)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_name(suffix) {
                return Err(bad("the name after *. is not a valid host name"));
            }
            HostRule::Subdomains(format!(".{}", suffix.trim_end_matches('.')))
        } else if valid_name(host) {
            HostRule::Name(host.trim_end_matches('.').to_string())
        } else {
            return Err(bad("not a valid host name or IP address"));
        };
        Ok(AllowedOrigin {
            scheme,
            host,
            port,
            text: text.into(),
        })
    }

    /// The entry as a metric label (shared, not copied).
    pub(crate) fn label(&self) -> opentelemetry::StringValue {
        opentelemetry::StringValue::from(std::sync::Arc::clone(&self.text))
    }

    fn allows(&self, to: &Destination) -> bool {
        let scheme = match self.scheme {
            SchemeRule::Http => !to.https,
            SchemeRule::Https => to.https,
            SchemeRule::Any => true,
        };
        let port = match self.port {
            PortRule::Default => to.port == if to.https { 443 } else { 80 },
            PortRule::Exact(p) => to.port == p,
            PortRule::Any => true,
        };
        let host = match (&self.host, &to.host) {
            (HostRule::Name(n), DestHost::Name(h)) => n == h,
            (HostRule::Subdomains(suffix), DestHost::Name(h)) => {
                h.len() > suffix.len() && h.ends_with(suffix.as_str())
            }
            (HostRule::AnyName, DestHost::Name(_)) => true,
            (HostRule::Ip(a), DestHost::Ip(b)) => a == b,
            _ => false,
        };
        scheme && port && host
    }
}

impl HttpAllowlist {
    /// Parses entries (each as [`AllowedOrigin::parse`]).
    ///
    /// # Errors
    /// The first entry that does not parse.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut list = HttpAllowlist::default();
        for entry in entries {
            let origin = AllowedOrigin::parse(entry)?;
            if !list.entries.contains(&origin) {
                list.entries.push(origin);
            }
        }
        Ok(list)
    }

    /// Adds `other`'s entries (those not here already).
    pub fn extend(&mut self, other: HttpAllowlist) {
        for origin in other.entries {
            if !self.entries.contains(&origin) {
                self.entries.push(origin);
            }
        }
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, as given.
    pub fn entries(&self) -> impl Iterator<Item = &AllowedOrigin> {
        self.entries.iter()
    }

    /// The first entry that allows a request to `to`.
    pub(crate) fn allowing(&self, to: &Destination) -> Option<&AllowedOrigin> {
        self.entries.iter().find(|e| e.allows(to))
    }

    /// Whether `ip` is listed as an IP literal: the one way an address that is refused by
    /// default (loopback, link-local, ...) may be reached.
    pub(crate) fn lists_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.entries
            .iter()
            .any(|e| matches!(e.host, HostRule::Ip(a) if canonical(a) == ip))
    }
}

impl Destination {
    /// Where a request for `uri` goes: `None` for a URL without an `http`/`https` scheme or a
    /// host.
    pub(crate) fn of(uri: &http::Uri) -> Option<Destination> {
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // A number a resolver reads as an IPv4 address (`167772161`, `10.1`, `0x7f.1`) is an
        // address, not a name: `*` (names only) does not reach it.
        let host = match parse_ip(&host).or_else(|| numeric_ipv4(&host).map(IpAddr::V4)) {
            Some(ip) => DestHost::Ip(ip),
            None => DestHost::Name(host.trim_end_matches('.').to_string()),
        };
        Some(Destination { https, host, port })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match &self.host {
            DestHost::Name(n) => write!(f, "{scheme}://{n}:{}", self.port),
            DestHost::Ip(IpAddr::V6(ip)) => write!(f, "{scheme}://[{ip}]:{}", self.port),
            DestHost::Ip(ip) => write!(f, "{scheme}://{ip}:{}", self.port),
        }
    }
}

/// Cloud instance-metadata services outside the link-local ranges: AWS's IPv6 endpoint
/// (`fd00:ec2::254`) and Alibaba Cloud's (`100.100.100.200`). (169.254.169.254, which most
/// clouds use, is link-local and guarded as such.)
const METADATA_ADDRS: [IpAddr; 2] = [
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
];

/// Whether an address is one that a name may not resolve to unless it is listed: loopback,
/// link-local (which holds cloud metadata services, 169.254.169.254), the other metadata
/// services' addresses ([`METADATA_ADDRS`]), unspecified, multicast or broadcast. Private
/// ranges (10/8, 192.168/16, fc00::/7) are allowed: internal services live there.
pub(crate) fn is_guarded(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    if METADATA_ADDRS.contains(&ip) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps, so `::ffff:127.0.0.1` is loopback.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address a resolver (`inet_aton`) reads in `host` when it is made of one to four
/// numbers, each decimal, octal (a leading `0`) or hexadecimal (`0x`), the last one filling
/// the remaining bytes: `167772161` and `10.1` are 10.0.0.1. `None` for anything else.
fn numeric_ipv4(host: &str) -> Option<std::net::Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let numbers = parts
        .iter()
        .map(|p| {
            let (digits, radix) =
                if let Some(hex) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
                    (hex, 16)
                } else if p.len() > 1 && p.starts_with('0') {
                    (&p[1..], 8)
                } else {
                    (*p, 10)
                };
            if digits.is_empty() && radix != 16 {
                return None;
            }
            if digits.is_empty() {
                return Some(0);
            }
            u64::from_str_radix(digits, radix).ok()
        })
        .collect::<Option<Vec<u64>>>()?;
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|n| *n > 255) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut value: u64 = 0;
    for (i, n) in leading.iter().enumerate() {
        value |= n << (24 - 8 * i as u32);
    }
    Some(std::net::Ipv4Addr::from(u32::try_from(value | last).ok()?))
}

/// An IP literal, IPv6 in brackets or not.
fn parse_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 literal.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    match s.split_once(':') {
        Some((host, port)) if !host.is_empty() && !port.is_empty() => Some((host, Some(port))),
        Some(_) => None,
        None if !s.is_empty() => Some((s, None)),
        None => None,
    }
}

/// A DNS name: labels of letters, digits, `-` and `_`, 1 to 63 bytes, 253 in all.
fn valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn to(url: &str) -> Destination {
        Destination::of(&url.parse().unwrap()).unwrap()
    }

    fn allows(entries: &[&str], url: &str) -> bool {
        HttpAllowlist::parse(entries.iter().copied())
            .unwrap()
            .allowing(&to(url))
            .is_some()
    }

    #[test]
    fn names_schemes_and_ports_follow_spins_rules() {
        let api = ["https://api.example.com"];
        assert!(allows(&api, "https://api.example.com/v1/x?y=1"));
        assert!(allows(&api, "https://API.example.com./v1"));
        assert!(allows(&api, "https://api.example.com:443/"));
        assert!(!allows(&api, "http://api.example.com/"), "scheme");
        assert!(!allows(&api, "https://api.example.com:8443/"), "port");
        assert!(!allows(&api, "https://example.com/"));
        assert!(!allows(&api, "https://api.example.com.evil.net/"));

        let internal = ["https://*.internal:8443"];
        assert!(allows(&internal, "https://users.internal:8443/"));
        assert!(allows(&internal, "https://a.b.internal:8443/"));
        assert!(
            !allows(&internal, "https://internal:8443/"),
            "not the suffix itself"
        );
        assert!(!allows(&internal, "https://xinternal:8443/"));
        assert!(!allows(&internal, "https://users.internal/"));

        assert!(allows(&["*://example.com"], "http://example.com/"));
        assert!(allows(&["*://example.com"], "https://example.com/"));
        assert!(!allows(&["*://example.com"], "http://example.com:443/"));
        assert!(allows(
            &["http://example.com:*"],
            "http://example.com:1234/"
        ));
        assert!(allows(&["https://*"], "https://anything.at.all/"));
    }

    #[test]
    fn ip_literals_match_only_entries_that_list_them() {
        assert!(allows(
            &["http://127.0.0.1:8080"],
            "http://127.0.0.1:8080/k"
        ));
        assert!(!allows(
            &["http://127.0.0.1:8080"],
            "http://127.0.0.2:8080/k"
        ));
        assert!(
            !allows(&["http://*:*"], "http://127.0.0.1:8080/"),
            "* is names only"
        );
        assert!(!allows(&["http://*:*"], "http://[::1]:8080/"));
        assert!(allows(&["http://[::1]:8080"], "http://[::1]:8080/"));
        let list = HttpAllowlist::parse(["http://127.0.0.1:9"]).unwrap();
        assert!(list.lists_ip("127.0.0.1".parse().unwrap()));
        assert!(list.lists_ip("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!list.lists_ip("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn bad_entries_say_what_is_expected() {
        for bad in [
            "api.example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://user@x.com",
            "https://x.com:0",
            "https://x.com:99999",
            "https://",
            "https://*.",
            "https://bad name",
        ] {
            let e = AllowedOrigin::parse(bad).unwrap_err();
            assert!(e.contains("SCHEME://HOST[:PORT]"), "{bad}: {e}");
        }
    }

    #[test]
    fn numbers_a_resolver_reads_as_addresses_are_addresses() {
        for (host, ip) in [
            ("167772161", "10.0.0.1"),
            ("10.1", "10.0.0.1"),
            ("10.0.1", "10.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("127.0.0.1.", "127.0.0.1"),
        ] {
            assert_eq!(numeric_ipv4(host), Some(ip.parse().unwrap()), "{host}");
        }
        for host in [
            "example.com",
            "10.256.1",
            "4294967296",
            "1.2.3.4.5",
            "a1",
            "08",
        ] {
            assert_eq!(numeric_ipv4(host), None, "{host}");
        }
        // `http://*` covers names only: a numeric host is an address, refused unless listed.
        let any = HttpAllowlist::parse(["http://*"]).unwrap();
        for url in [
            "http://167772161/",
            "http://10.1/",
            "http://2130706433:8080/",
        ] {
            let to = Destination::of(&url.parse().unwrap()).unwrap();
            assert!(any.allowing(&to).is_none(), "{url}");
        }
        let listed = HttpAllowlist::parse(["http://10.0.0.1"]).unwrap();
        let to = Destination::of(&"http://167772161/".parse().unwrap()).unwrap();
        assert!(listed.allowing(&to).is_some());
    }

    #[test]
    fn loopback_link_local_and_unspecified_are_guarded() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:100.100.100.200",
        ] {
            assert!(is_guarded(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "93.184.216.34",
            "fd00::1",
            "fd00:ec2::253",
            "100.100.100.201",
            "2606:4700::1",
        ] {
            assert!(!is_guarded(ip.parse().unwrap()), "{ip}");
        }
    }
}

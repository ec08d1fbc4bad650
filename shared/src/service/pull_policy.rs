//! Pulling an upload from an object store the client names: ExternalData whose `file.endpoint`
//! is not the service's own upload store, with the client's own `credentials`.
//!
//! A service that connects to addresses its clients choose is a request-forgery proxy unless it
//! refuses the addresses that reach its own surroundings: loopback, the cloud metadata service
//! (169.254.169.254), private networks, and every other non-public range. The rules live here,
//! as pure functions, and are applied three times:
//!
//! 1. by the api when the upload is posted ([`PullPolicy::check_endpoint`]: URL syntax, scheme,
//!    an IP-literal host), so that a refused endpoint is a 400 with a clear message;
//! 2. by fan-out again before it pulls (the policy may have changed meanwhile), which matters for
//!    IP-literal hosts because the HTTP client connects to those without asking a resolver;
//! 3. by the resolver of fan-out's HTTP client ([`PullPolicy::check_address`] on every address a
//!    name resolves to, at connect time), so that a name resolving, or later re-resolving (DNS
//!    rebinding), to a forbidden address is refused too.
//!
//! The client's credentials travel from the api to fan-out inside the upload reference in the
//! work bucket (encrypted at rest, deleted once ingested or failed). [`ClientCredentials`]'s
//! `Debug` hides them, and no message built here or from a store's answer contains them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Region used to sign requests when ExternalData names none (S3-compatible stores other than
/// AWS accept any).
pub const DEFAULT_REGION: &str = "us-east-1";

// ---- the policy --------------------------------------------------------------------------------

/// Whether and where fan-out may pull uploads from stores that clients name. Off by default;
/// when on, only https to public addresses unless the deployment says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullPolicy {
    pub enabled: bool,
    /// Plain `http://` endpoints (the local stack; never for credentials crossing a network).
    pub allow_http: bool,
    /// 127.0.0.0/8, ::1 and `localhost` (the local stack, where the client's store is an emulator).
    pub allow_loopback: bool,
    /// Networks allowed although non-public, e.g. a store inside the deployment's own VPC.
    pub allowed_networks: Vec<Network>,
    /// Ports pulls may connect to besides 443 (none by default), so the service cannot be
    /// pointed at arbitrary services of a public host.
    pub allowed_ports: Vec<u16>,
}

/// The one port pulls always may use.
pub const HTTPS_PORT: u16 = 443;

/// Why an endpoint or address is refused; the messages are for the person who posted the upload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PullRefused {
    #[error(
        "Pulling encodings from another object store ('{host}') is not supported; upload them to this service's \
         store with the credentials from authorize-external-upload, and name that object (the endpoint may be left out)."
    )]
    Disabled { host: String },
    #[error("The object store endpoint is not valid: {0}")]
    InvalidEndpoint(String),
    #[error("The object store endpoint '{host}' must use https: this service does not send credentials over plain http.")]
    TlsRequired { host: String },
    #[error(
        "The object store endpoint '{host}' is {class} address ({address}); this service does not connect to such \
         addresses. Use a publicly reachable endpoint."
    )]
    ForbiddenAddress { host: String, address: IpAddr, class: &'static str },
    #[error("The object store credentials are not valid: {0}")]
    InvalidCredentials(String),
    #[error("The object store endpoint '{host}' uses port {port}; this service connects to object stores on port 443 only, unless its operator allows more.")]
    PortNotAllowed { host: String, port: u16 },
}

impl PullPolicy {
    /// Parses `endpoint` (`host[:port]`, the form authorize-external-upload announces, with
    /// `secure` choosing https (the default) or http; or `https://host[:port]`) and checks it
    /// against the policy. A host name is checked here only for what it says (`localhost`); the
    /// addresses it resolves to are checked at connect time.
    pub fn check_endpoint(&self, endpoint: &str, secure: Option<bool>) -> Result<ClientEndpoint, PullRefused> {
        let parsed = ClientEndpoint::parse(endpoint, secure)?;
        if !self.enabled {
            return Err(PullRefused::Disabled { host: parsed.authority() });
        }
        if parsed.scheme == Scheme::Http && !self.allow_http {
            return Err(PullRefused::TlsRequired { host: parsed.authority() });
        }
        match &parsed.host {
            Host::Ip(ip) => self.check_address(&parsed.authority(), *ip)?,
            Host::Name(name) if is_localhost(name) && !self.allow_loopback => {
                return Err(PullRefused::ForbiddenAddress {
                    host: parsed.authority(),
                    address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    class: "a loopback",
                });
            }
            Host::Name(_) => {}
        }
        let port = parsed.port.unwrap_or(match parsed.scheme {
            Scheme::Https => HTTPS_PORT,
            Scheme::Http => 80,
        });
        if port != HTTPS_PORT && !self.allowed_ports.contains(&port) {
            return Err(PullRefused::PortNotAllowed { host: parsed.authority(), port });
        }
        Ok(parsed)
    }

    /// Whether fan-out may connect to `address` (one that `host` names or resolves to).
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), PullRefused> {
        if self.allowed_networks.iter().any(|n| n.contains(address)) {
            return Ok(());
        }
        match forbidden_class(address) {
            None => Ok(()),
            Some(class) if class == LOOPBACK && self.allow_loopback => Ok(()),
            Some(class) => Err(PullRefused::ForbiddenAddress { host: host.to_string(), address, class }),
        }
    }
}

const LOOPBACK: &str = "a loopback";

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name == "localhost" || name.ends_with(".localhost")
}

/// The kind of non-public address `ip` is (as the article of a sentence: "a private"), or
/// `None` for a globally routable unicast address. IPv6 forms that embed or translate to an
/// IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are refused outright: they would
/// reach IPv4 hosts around the IPv4 rules.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => "an unspecified",
        (0, _, _) => "a 'this network' (0.0.0.0/8)",
        (127, _, _) => LOOPBACK,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "a private",
        (100, 64..=127, _) => "a shared (carrier-grade NAT)",
        (169, 254, _) => "a link-local (cloud metadata)",
        (192, 0, 0) => "an IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation",
        (192, 88, 99) => "a 6to4 relay",
        (198, 18..=19, _) => "a benchmarking",
        _ if ip.is_broadcast() => "a broadcast",
        (224..=239, _, _) => "a multicast",
        (240..=255, _, _) => "a reserved",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s {
        _ if ip.is_unspecified() => "an unspecified",
        _ if ip.is_loopback() => LOOPBACK,
        [0, 0, 0, 0, 0, 0xffff, _, _] => "an IPv4-mapped",
        [0, 0, 0, 0, 0, 0, _, _] => "an IPv4-compatible",
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => "a NAT64",
        [0x100, 0, 0, 0, ..] => "a discard-only",
        [0x2001, 0xdb8, ..] | [0x3fff, 0..=0x0fff, ..] => "a documentation",
        [0x2001, 0, ..] => "a Teredo",
        [0x2002, ..] => "a 6to4",
        [0x2001, 0x0..=0x01ff, ..] => "an IETF protocol assignment",
        [x, ..] if x & 0xfe00 == 0xfc00 => "a unique local (private)",
        [x, ..] if x & 0xffc0 == 0xfe80 => "a link-local",
        [x, ..] if x & 0xffc0 == 0xfec0 => "a site-local (private)",
        [x, ..] if x & 0xff00 == 0xff00 => "a multicast",
        // Only 2000::/3 is allocated for global unicast.
        [x, ..] if x & 0xe000 != 0x2000 => "a reserved",
        _ => return None,
    })
}

/// An IP network in CIDR notation (`10.20.0.0/16`, `fd00::/8`), for explicit allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (address, prefix) = s.trim().split_once('/').ok_or_else(|| format!("'{s}' is not in CIDR notation (address/prefix)"))?;
        let address: IpAddr = address.parse().map_err(|_| format!("'{address}' is not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("'{prefix}' is not a prefix length of 0..={max}"))?;
        Ok(Network { address, prefix })
    }
}

// ---- endpoints ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

/// A store's endpoint, parsed and normalised: what fan-out connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEndpoint {
    pub scheme: Scheme,
    pub host: Host,
    pub port: Option<u16>,
}

impl ClientEndpoint {
    /// `host[:port]` with `secure` (default true) choosing the scheme, or `http(s)://host[:port]`
    /// (a trailing `/` allowed). No user info, path, query or fragment.
    pub fn parse(endpoint: &str, secure: Option<bool>) -> Result<Self, PullRefused> {
        let invalid = |why: &str| PullRefused::InvalidEndpoint(why.to_string());
        let endpoint = endpoint.trim();
        let (scheme, rest) = match endpoint.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = match scheme.to_ascii_lowercase().as_str() {
                    "https" => Scheme::Https,
                    "http" => Scheme::Http,
                    _ => return Err(invalid("only http:// and https:// endpoints are supported")),
                };
                if secure.is_some_and(|secure| secure != (scheme == Scheme::Https)) {
                    return Err(invalid("'secure' contradicts the endpoint's scheme"));
                }
                (scheme, rest)
            }
            None if secure == Some(false) => (Scheme::Http, endpoint),
            None => (Scheme::Https, endpoint),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            // Not echoed: user info is a password in the URL.
            return Err(invalid("user info in the endpoint is not allowed; give the credentials in 'credentials'"));
        }
        if authority.contains(['/', '?', '#', '\\']) || authority.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("give host[:port] only (no path, query or spaces)"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| invalid("the port is not a number of 1..=65535"))?;
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Host::Ip(IpAddr::V6(v6.parse().map_err(|_| invalid("the bracketed host is not an IPv6 address"))?))
        } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(v4))
        } else {
            Host::Name(check_host_name(host)?)
        };
        Ok(ClientEndpoint { scheme, host, port })
    }

    /// `host[:port]`, as messages show it.
    pub fn authority(&self) -> String {
        let host = match &self.host {
            Host::Name(name) => name.clone(),
            Host::Ip(IpAddr::V4(ip)) => ip.to_string(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        };
        match self.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }

    /// The URL the S3 client is given (path-style requests go below it).
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}", self.authority())
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    // `[v6]:port`, `[v6]`, `host:port`, `host`.
    let (host, port) = match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') && (authority.starts_with('[') || !authority[..at].contains(':')) => {
            (&authority[..at], Some(&authority[at + 1..]))
        }
        _ => (authority, None),
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
    };
    Some((host, port))
}

/// A DNS name as URLs allow it, lower-cased. A last label that is a number is refused: resolvers
/// read `2130706433`, `0x7f.1` or `127.1` as IPv4 addresses, which would dodge the literal check.
fn check_host_name(host: &str) -> Result<String, PullRefused> {
    let invalid = |why: &str| PullRefused::InvalidEndpoint(why.to_string());
    let name = host.to_ascii_lowercase();
    let trimmed = name.strip_suffix('.').unwrap_or(&name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(invalid("the host name is empty or longer than 253 characters"));
    }
    for label in trimmed.split('.') {
        let ok_chars = label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty() || label.len() > 63 || !ok_chars || label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("the host is neither a DNS name nor an IP address"));
        }
    }
    let last = trimmed.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(invalid("the host looks like a numeric IPv4 address; write it as a.b.c.d"));
    }
    Ok(name)
}

// ---- credentials -------------------------------------------------------------------------------

/// ExternalData's `credentials`: the client's key for its own store. `Debug` shows none of it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCredentials {
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    pub secret_access_key: String,
    #[serde(rename = "SessionToken", default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials").finish_non_exhaustive()
    }
}

impl ClientCredentials {
    /// Reads `credentials` from the request. Hand-checked rather than derived so that no error
    /// message can quote a value (serde's "invalid type: string \"...\"" would).
    pub fn from_json(value: &Value) -> Result<Self, PullRefused> {
        let invalid = |why: String| PullRefused::InvalidCredentials(why);
        let Value::Object(map) = value else {
            return Err(invalid("expected an object with AccessKeyId, SecretAccessKey and optionally SessionToken".into()));
        };
        let field = |name: &str, max: usize, required: bool| -> Result<Option<String>, PullRefused> {
            match map.get(name) {
                None | Some(Value::Null) if !required => Ok(None),
                None | Some(Value::Null) => Err(invalid(format!("{name} is missing"))),
                Some(Value::String(s)) if s.is_empty() && !required => Ok(None),
                Some(Value::String(s)) => {
                    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_graphic()) {
                        Err(invalid(format!("{name} must be 1..={max} printable ASCII characters without spaces")))
                    } else {
                        Ok(Some(s.clone()))
                    }
                }
                Some(_) => Err(invalid(format!("{name} must be a string"))),
            }
        };
        Ok(ClientCredentials {
            access_key_id: field("AccessKeyId", 128, true)?.unwrap_or_default(),
            secret_access_key: field("SecretAccessKey", 256, true)?.unwrap_or_default(),
            session_token: field("SessionToken", 8192, false)?,
        })
    }

    /// `text` with every credential value replaced: the last guard before a message from a
    /// store's answer is stored or logged.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in [Some(&self.access_key_id), Some(&self.secret_access_key), self.session_token.as_ref()].into_iter().flatten() {
            if !secret.is_empty() {
                text = text.replace(secret.as_str(), "[redacted]");
            }
        }
        text
    }
}

/// Where an upload's object is when a client's store holds it: what the api writes into the
/// upload reference for fan-out (the endpoint as the client gave it; fan-out checks it again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStoreAccess {
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub credentials: ClientCredentials,
}

impl ClientStoreAccess {
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }
}

/// A region name as S3 signs with it (`us-east-1`, `eu-central-1`, MinIO's `local`).
pub fn check_region(region: &str) -> Result<(), PullRefused> {
    let ok = !region.is_empty() && region.len() <= 64 && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(PullRefused::InvalidEndpoint("the region must be lower-case letters, digits and '-'".into())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> PullPolicy {
        PullPolicy { enabled: true, ..PullPolicy::default() }
    }

    fn refused_class(policy: &PullPolicy, ip: &str) -> Option<&'static str> {
        match policy.check_address("h", ip.parse().unwrap()) {
            Ok(()) => None,
            Err(PullRefused::ForbiddenAddress { class, .. }) => Some(class),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_non_public_ipv4_class_is_refused() {
        let policy = on();
        for (ip, class) in [
            ("0.0.0.0", "an unspecified"),
            ("0.1.2.3", "a 'this network' (0.0.0.0/8)"),
            ("127.0.0.1", "a loopback"),
            ("127.255.255.254", "a loopback"),
            ("10.0.0.1", "a private"),
            ("172.16.0.1", "a private"),
            ("172.31.255.255", "a private"),
            ("192.168.1.1", "a private"),
            ("100.64.0.1", "a shared (carrier-grade NAT)"),
            ("100.127.255.255", "a shared (carrier-grade NAT)"),
            ("169.254.169.254", "a link-local (cloud metadata)"),
            ("192.0.0.170", "an IETF protocol assignment"),
            ("192.0.2.1", "a documentation"),
            ("198.51.100.1", "a documentation"),
            ("203.0.113.1", "a documentation"),
            ("192.88.99.1", "a 6to4 relay"),
            ("198.18.0.1", "a benchmarking"),
            ("224.0.0.1", "a multicast"),
            ("239.255.255.250", "a multicast"),
            ("240.0.0.1", "a reserved"),
            ("255.255.255.255", "a broadcast"),
        ] {
            assert_eq!(refused_class(&policy, ip), Some(class), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "52.216.0.1", "172.15.255.255", "172.32.0.1", "100.63.255.255", "100.128.0.1", "192.169.0.1", "223.255.255.255"] {
            assert_eq!(refused_class(&policy, ip), None, "{ip}");
        }
    }

    #[test]
    fn every_non_public_ipv6_class_is_refused() {
        let policy = on();
        for (ip, class) in [
            ("::", "an unspecified"),
            ("::1", "a loopback"),
            ("::ffff:127.0.0.1", "an IPv4-mapped"),
            ("::ffff:169.254.169.254", "an IPv4-mapped"),
            ("::ffff:8.8.8.8", "an IPv4-mapped"),
            ("::10.0.0.1", "an IPv4-compatible"),
            ("64:ff9b::a9fe:a9fe", "a NAT64"),
            ("64:ff9b:1::1", "a NAT64"),
            ("100::1", "a discard-only"),
            ("2001:db8::1", "a documentation"),
            ("3fff::1", "a documentation"),
            ("2001:0:4136:e378::1", "a Teredo"),
            ("2002:a9fe:a9fe::1", "a 6to4"),
            ("2001:10::1", "an IETF protocol assignment"),
            ("fc00::1", "a unique local (private)"),
            ("fd12:3456::1", "a unique local (private)"),
            ("fe80::1", "a link-local"),
            ("febf::1", "a link-local"),
            ("fec0::1", "a site-local (private)"),
            ("ff02::1", "a multicast"),
            ("4000::1", "a reserved"),
            ("::2", "an IPv4-compatible"),
        ] {
            assert_eq!(refused_class(&policy, ip), Some(class), "{ip}");
        }
        for ip in ["2600:1f18::1", "2a00:1450:4001::200e", "2606:4700::6810:84e5"] {
            assert_eq!(refused_class(&policy, ip), None, "{ip}");
        }
    }

    #[test]
    fn loopback_and_networks_are_allowed_only_explicitly() {
        let local = PullPolicy { allow_loopback: true, ..on() };
        assert_eq!(refused_class(&local, "127.0.0.1"), None);
        assert_eq!(refused_class(&local, "::1"), None);
        // Allowing loopback allows nothing else, not even loopback written as IPv4-mapped.
        assert_eq!(refused_class(&local, "::ffff:127.0.0.1"), Some("an IPv4-mapped"));
        assert_eq!(refused_class(&local, "169.254.169.254"), Some("a link-local (cloud metadata)"));
        assert_eq!(refused_class(&local, "10.1.2.3"), Some("a private"));

        let vpc = PullPolicy { allowed_networks: vec!["10.20.0.0/16".parse().unwrap(), "fd00:1::/32".parse().unwrap()], ..on() };
        assert_eq!(refused_class(&vpc, "10.20.3.4"), None);
        assert_eq!(refused_class(&vpc, "10.21.0.1"), Some("a private"));
        assert_eq!(refused_class(&vpc, "fd00:1:2::3"), None);
        assert_eq!(refused_class(&vpc, "fd00:2::3"), Some("a unique local (private)"));
        assert_eq!(refused_class(&vpc, "127.0.0.1"), Some("a loopback"));
        assert!("10.0.0.0".parse::<Network>().is_err());
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("::/0".parse::<Network>().unwrap().contains("::1".parse().unwrap()));
    }

    #[test]
    fn endpoints_parse_to_scheme_host_and_port() {
        let p = |e: &str, secure| ClientEndpoint::parse(e, secure).map(|e| e.url());
        assert_eq!(p("store.example.com", None).unwrap(), "https://store.example.com");
        assert_eq!(p("Store.Example.com:9000", Some(false)).unwrap(), "http://store.example.com:9000");
        assert_eq!(p("https://store.example.com:8443/", None).unwrap(), "https://store.example.com:8443");
        assert_eq!(p("HTTP://127.0.0.1:4566", Some(false)).unwrap(), "http://127.0.0.1:4566");
        assert_eq!(p("[2600:1f18::1]:443", None).unwrap(), "https://[2600:1f18::1]:443");
        assert_eq!(p("[::1]", None).unwrap(), "https://[::1]");
        for bad in [
            "ftp://store.example.com",
            "https://user:pass@store.example.com",
            "store.example.com/bucket",
            "store.example.com?x=1",
            "store.example.com:0",
            "store.example.com:99999",
            "store.example.com:http",
            "[::1",
            "[not-v6]:80",
            "",
            "-bad-.example.com",
            "exa mple.com",
            "2130706433",
            "0x7f.1",
            "127.1",
            "::1",
        ] {
            assert!(matches!(ClientEndpoint::parse(bad, None), Err(PullRefused::InvalidEndpoint(_))), "{bad}");
        }
        assert!(matches!(ClientEndpoint::parse("https://s.example.com", Some(false)), Err(PullRefused::InvalidEndpoint(_))));
        // The user info is not repeated in the message.
        let message = ClientEndpoint::parse("https://AKIA:s3cr3t@store.example.com", None).unwrap_err().to_string();
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn https_is_required_unless_configured() {
        let policy = on();
        assert!(matches!(policy.check_endpoint("store.example.com:9000", Some(false)), Err(PullRefused::TlsRequired { .. })));
        assert!(matches!(policy.check_endpoint("http://store.example.com", None), Err(PullRefused::TlsRequired { .. })));
        let message = policy.check_endpoint("http://store.example.com", None).unwrap_err().to_string();
        assert!(message.contains("must use https"), "{message}");
        assert!(policy.check_endpoint("store.example.com", None).is_ok());
        assert!(policy.check_endpoint("https://store.example.com", Some(true)).is_ok());
        let http = PullPolicy { allow_http: true, allowed_ports: vec![9000], ..on() };
        assert_eq!(http.check_endpoint("store.example.com:9000", Some(false)).unwrap().url(), "http://store.example.com:9000");
    }

    #[test]
    fn only_port_443_unless_more_are_allowed() {
        let policy = PullPolicy { allow_http: true, ..on() };
        for endpoint in ["store.example.com:22", "https://store.example.com:6379", "http://store.example.com"] {
            let refused = policy.check_endpoint(endpoint, None);
            assert!(matches!(refused, Err(PullRefused::PortNotAllowed { .. })), "{endpoint}: {refused:?}");
        }
        assert!(policy.check_endpoint("store.example.com:443", None).is_ok());
        let more = PullPolicy { allowed_ports: vec![9000], ..policy };
        assert!(more.check_endpoint("store.example.com:9000", None).is_ok());
        assert!(more.check_endpoint("store.example.com:9001", None).is_err());
    }

    #[test]
    fn literal_and_named_local_hosts_are_refused_statically() {
        let policy = PullPolicy { allow_http: true, ..on() };
        for endpoint in ["169.254.169.254", "http://10.1.2.3:9000", "[::1]:4566", "[::ffff:7f00:1]", "localhost:4566", "s3.localhost", "0.0.0.0:80"] {
            let refused = policy.check_endpoint(endpoint, None);
            assert!(matches!(refused, Err(PullRefused::ForbiddenAddress { .. })), "{endpoint}: {refused:?}");
        }
        let message = policy.check_endpoint("169.254.169.254", None).unwrap_err().to_string();
        assert!(message.contains("link-local") && message.contains("169.254.169.254"), "{message}");
        let local = PullPolicy { allow_loopback: true, allowed_ports: vec![4566], ..policy.clone() };
        assert!(local.check_endpoint("127.0.0.1:4566", Some(false)).is_ok());
        assert!(local.check_endpoint("localhost:4566", Some(false)).is_ok());
        assert!(local.check_endpoint("10.0.0.1:4566", Some(false)).is_err());
    }

    #[test]
    fn a_disabled_policy_refuses_with_the_historical_message() {
        let message = PullPolicy::default().check_endpoint("store.example.com", None).unwrap_err().to_string();
        assert!(message.starts_with("Pulling encodings from another object store ('store.example.com') is not supported"), "{message}");
    }

    #[test]
    fn credentials_are_checked_without_quoting_them() {
        let ok = ClientCredentials::from_json(&serde_json::json!({"AccessKeyId": "AKIAEXAMPLE", "SecretAccessKey": "abc/def+ghi"})).unwrap();
        assert_eq!(ok.session_token, None);
        assert_eq!(format!("{ok:?}"), "ClientCredentials { .. }");
        assert_eq!(ok.redact("key AKIAEXAMPLE secret abc/def+ghi"), "key [redacted] secret [redacted]");
        for bad in [
            serde_json::json!("AKIA:secret-value"),
            serde_json::json!({"AccessKeyId": "AKIA"}),
            serde_json::json!({"AccessKeyId": "AKIA", "SecretAccessKey": 12345678}),
            serde_json::json!({"AccessKeyId": "AKIA", "SecretAccessKey": "has space-secret-value"}),
            serde_json::json!({"AccessKeyId": "", "SecretAccessKey": "secret-value"}),
            serde_json::json!({"AccessKeyId": "AKIA", "SecretAccessKey": "secret-value", "SessionToken": ["secret-value"]}),
        ] {
            let message = ClientCredentials::from_json(&bad).unwrap_err().to_string();
            assert!(!message.contains("secret-value") && !message.contains("12345678"), "{message}");
        }
    }
}

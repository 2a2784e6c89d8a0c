//! A tap's match, checked once when the tap opens and compiled into plain types: what the
//! request path evaluates per tapped request holds no protobuf.

use std::net::{IpAddr, SocketAddr};

use linkerd2_proxy_api::{
    http_types::{self, scheme},
    tap::observe_request::{
        self,
        r#match::{self as pm, http as ph, tcp as pt},
    },
};

use super::TapRequest;

/// Nesting a tapper may send: the real controller sends a few levels; this stops a request
/// whose evaluation would recurse without end.
const MAX_DEPTH: usize = 16;
/// Matches in one tap, all levels together.
const MAX_NODES: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MatchError {
    #[error("match nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("match has more than {MAX_NODES} parts")]
    TooLarge,
    #[error("a match with nothing to match")]
    Empty,
    #[error("netmask: {0}")]
    Netmask(&'static str),
    #[error("port range {0}..{1} is not a range of ports")]
    Ports(u32, u32),
    #[error("HTTP method is not valid")]
    Method,
    #[error("scheme is not valid")]
    Scheme,
}

/// One compiled match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    All(Vec<Match>),
    Any(Vec<Match>),
    Not(Box<Match>),
    Source(Tcp),
    Destination(Tcp),
    DestinationLabel {
        key: String,
        value: String,
    },
    /// The gateway has no route labels: a route-label match selects nothing.
    RouteLabel,
    Scheme(String),
    Method(http::Method),
    Authority(Text),
    Path(Text),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tcp {
    Net { ip: IpAddr, prefix: u8 },
    Ports { min: u16, max: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Exact(String),
    Prefix(String),
}

impl Text {
    fn matches(&self, s: &str) -> bool {
        match self {
            Text::Exact(e) => s == e,
            Text::Prefix(p) => s.starts_with(p.as_str()),
        }
    }
}

impl Tcp {
    fn matches(&self, addr: SocketAddr) -> bool {
        match *self {
            Tcp::Ports { min, max } => (min..=max).contains(&addr.port()),
            Tcp::Net { ip, prefix } => in_net(addr.ip(), ip, prefix),
        }
    }
}

fn in_net(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let addr = match (addr, net) {
        // A v4 caller may be seen as a v4-mapped v6 address on a dual-stack socket.
        (IpAddr::V6(a), IpAddr::V4(_)) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        (a, _) => a,
    };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Match {
    /// `None`: the tap selects every request.
    pub fn compile(m: Option<observe_request::Match>) -> Result<Option<Self>, MatchError> {
        let mut nodes = 0;
        match m {
            None => Ok(None),
            Some(m) => Self::node(m, 0, &mut nodes).map(Some),
        }
    }

    fn node(
        m: observe_request::Match,
        depth: usize,
        nodes: &mut usize,
    ) -> Result<Self, MatchError> {
        if depth >= MAX_DEPTH {
            return Err(MatchError::TooDeep);
        }
        *nodes += 1;
        if *nodes > MAX_NODES {
            return Err(MatchError::TooLarge);
        }
        let seq = |s: pm::Seq, nodes: &mut usize| -> Result<Vec<Match>, MatchError> {
            s.matches
                .into_iter()
                .map(|m| Self::node(m, depth + 1, nodes))
                .collect()
        };
        Ok(match m.r#match.ok_or(MatchError::Empty)? {
            pm::Match::All(s) => Match::All(seq(s, nodes)?),
            pm::Match::Any(s) => Match::Any(seq(s, nodes)?),
            pm::Match::Not(inner) => Match::Not(Box::new(Self::node(*inner, depth + 1, nodes)?)),
            pm::Match::Source(t) => Match::Source(tcp(t)?),
            pm::Match::Destination(t) => Match::Destination(tcp(t)?),
            pm::Match::DestinationLabel(l) => Match::DestinationLabel {
                key: l.key,
                value: l.value,
            },
            pm::Match::RouteLabel(_) => Match::RouteLabel,
            pm::Match::Http(h) => match h.r#match.ok_or(MatchError::Empty)? {
                ph::Match::Scheme(s) => Match::Scheme(scheme_name(s)?),
                ph::Match::Method(m) => {
                    Match::Method(http::Method::try_from(m).map_err(|_| MatchError::Method)?)
                }
                ph::Match::Authority(s) => Match::Authority(text(s)?),
                ph::Match::Path(s) => Match::Path(text(s)?),
            },
        })
    }

    pub fn matches(&self, r: &TapRequest<'_>) -> bool {
        match self {
            Match::All(ms) => ms.iter().all(|m| m.matches(r)),
            Match::Any(ms) => ms.iter().any(|m| m.matches(r)),
            Match::Not(m) => !m.matches(r),
            Match::Source(t) => t.matches(r.source),
            Match::Destination(t) => t.matches(r.endpoint.addr),
            Match::DestinationLabel { key, value } => r
                .endpoint
                .meta
                .dst_labels
                .iter()
                .any(|(k, v)| k == key && v == value),
            Match::RouteLabel => false,
            Match::Scheme(s) => r.uri.scheme_str().unwrap_or("https") == s,
            Match::Method(m) => r.method == m,
            Match::Authority(t) => t.matches(r.authority),
            Match::Path(t) => t.matches(r.uri.path()),
        }
    }
}

fn tcp(t: pm::Tcp) -> Result<Tcp, MatchError> {
    match t.r#match.ok_or(MatchError::Empty)? {
        pt::Match::Netmask(n) => {
            let ip =
                n.ip.ok_or(MatchError::Netmask("no address"))
                    .and_then(|ip| {
                        IpAddr::try_from(ip).map_err(|_| MatchError::Netmask("bad address"))
                    })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            // 0 means the whole address, as the controller sends it for a single IP.
            let prefix = match n.mask {
                0 => max,
                m if m <= max => m,
                _ => return Err(MatchError::Netmask("mask longer than the address")),
            };
            Ok(Tcp::Net {
                ip,
                prefix: prefix as u8,
            })
        }
        pt::Match::Ports(p) => {
            let (min, max) = match (p.min, p.max) {
                (0, 0) => return Err(MatchError::Ports(0, 0)),
                (m, 0) | (0, m) => (m, m),
                (a, b) => (a, b),
            };
            match (u16::try_from(min), u16::try_from(max)) {
                (Ok(a), Ok(b)) if a <= b => Ok(Tcp::Ports { min: a, max: b }),
                _ => Err(MatchError::Ports(min, max)),
            }
        }
    }
}

fn text(s: ph::StringMatch) -> Result<Text, MatchError> {
    match s.r#match.ok_or(MatchError::Empty)? {
        ph::string_match::Match::Exact(e) => Ok(Text::Exact(e)),
        ph::string_match::Match::Prefix(p) => Ok(Text::Prefix(p)),
    }
}

fn scheme_name(s: http_types::Scheme) -> Result<String, MatchError> {
    match s.r#type.ok_or(MatchError::Scheme)? {
        scheme::Type::Registered(r) => match scheme::Registered::try_from(r) {
            Ok(scheme::Registered::Http) => Ok("http".into()),
            Ok(scheme::Registered::Https) => Ok("https".into()),
            Err(_) => Err(MatchError::Scheme),
        },
        scheme::Type::Unregistered(u) => Ok(u.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(in_net(v4, "10.1.0.0".parse().unwrap(), 16));
        assert!(!in_net(v4, "10.2.0.0".parse().unwrap(), 16));
        assert!(in_net(v4, "0.0.0.0".parse().unwrap(), 0));
        assert!(in_net(v4, v4, 32));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(in_net(mapped, "10.1.2.0".parse().unwrap(), 24));
        assert!(!in_net("::1".parse().unwrap(), v4, 32));
    }

    #[test]
    fn hostile_matches_are_refused() {
        let mut m = observe_request::Match {
            r#match: Some(pm::Match::RouteLabel(pm::Label::default())),
        };
        for _ in 0..MAX_DEPTH + 1 {
            m = observe_request::Match {
                r#match: Some(pm::Match::Not(Box::new(m))),
            };
        }
        assert_eq!(Match::compile(Some(m)), Err(MatchError::TooDeep));
        let empty = observe_request::Match { r#match: None };
        assert_eq!(Match::compile(Some(empty)), Err(MatchError::Empty));
        let ports = observe_request::Match {
            r#match: Some(pm::Match::Source(pm::Tcp {
                r#match: Some(pt::Match::Ports(pt::PortRange { min: 9, max: 70000 })),
            })),
        };
        assert_eq!(
            Match::compile(Some(ports)),
            Err(MatchError::Ports(9, 70000))
        );
        let wide = observe_request::Match {
            r#match: Some(pm::Match::Any(pm::Seq {
                matches: vec![
                    observe_request::Match {
                        r#match: Some(pm::Match::RouteLabel(pm::Label::default())),
                    };
                    MAX_NODES + 1
                ],
            })),
        };
        assert_eq!(Match::compile(Some(wide)), Err(MatchError::TooLarge));
    }
}

//! Request authorities, normalised so that `Web-Svc.emojivoto.svc.cluster.local.` and
//! `web-svc.emojivoto.svc.cluster.local:80` name the same route.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use crate::{decimal::Decimal, errors::ProxyError};

/// A normalised `host:port`: lower-case host without a trailing dot, explicit port (80 when
/// the request gave none, as plain-HTTP authorities default to it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    /// `host:port`, with IPv6 hosts in brackets. Shared: a connection keeps its last request's
    /// authority and hands out clones of it.
    full: Arc<str>,
    host_len: usize,
    port: u16,
}

pub const DEFAULT_PORT: u16 = 80;

impl Authority {
    pub fn parse(raw: &str) -> Result<Self, ProxyError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(ProxyError::NoAuthority);
        }
        // Userinfo has no place in a proxied authority.
        if raw.len() > 300 || raw.as_bytes().contains(&b'@') {
            return Err(ProxyError::BadAuthority);
        }
        let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or(ProxyError::BadAuthority)?;
            v6.parse::<std::net::Ipv6Addr>()
                .map_err(|_| ProxyError::BadAuthority)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(ProxyError::BadAuthority)?),
            };
            (HostBuf::Bracketed(v6), port)
        } else {
            let (host, port) = match raw.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (raw, None),
            };
            let host = host.strip_suffix('.').unwrap_or(host);
            // At most 253 characters (DNS; and so the normalised `host:port` stays under the
            // 300-byte bound above, which fuzzing found it could exceed), in labels of 1 to
            // 63 name characters: no empty label (`a..b`, a leading dot, or a
            // second trailing dot), found by fuzzing to break normalisation (`x..` became
            // `x.`, which normalised again to `x`). One pass: this runs for every request.
            if host.is_empty() || host.len() > 253 || !valid_labels(host.as_bytes()) {
                return Err(ProxyError::BadAuthority);
            }
            (HostBuf::Name(host), port)
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(ProxyError::BadAuthority),
            },
        };
        // Exact size, no formatting machinery (callers keep parsed authorities per connection,
        // so this runs once per name a connection uses, not per request).
        let mut full = String::with_capacity(host.len() + 1 + port_digits(port));
        match host {
            HostBuf::Bracketed(v6) => {
                full.push('[');
                push_lower(&mut full, v6);
                full.push(']');
            }
            HostBuf::Name(h) => push_lower(&mut full, h),
        }
        let host_len = full.len();
        full.push(':');
        full.push_str(Decimal::new(u64::from(port)).as_str());
        Ok(Self {
            full: Arc::from(full),
            host_len,
            port,
        })
    }

    pub fn from_parts(host: &str, port: u16) -> Result<Self, ProxyError> {
        Self::parse(&format!("{host}:{port}"))
    }

    pub fn host(&self) -> &str {
        &self.full[..self.host_len]
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// True when the host is `<anything>.svc.<cluster_domain>`: a cluster-local Service name.
    pub fn is_cluster_service(&self, cluster_domain: &str) -> bool {
        let host = self.host();
        let Some(prefix) = host.strip_suffix(cluster_domain) else {
            return false;
        };
        let Some(prefix) = prefix.strip_suffix(".svc.") else {
            return false;
        };
        !prefix.is_empty()
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// The last authority a connection's requests named, as sent and as parsed. Callers name the
/// same service request after request, and normalising it cost about 1.5k instructions each
/// time; a request naming it with the same bytes gets a clone (a reference count) instead.
/// A lock, not a cell: an HTTP/2 connection's streams share it.
#[derive(Default)]
pub struct LastAuthority(Mutex<Option<(Box<str>, Authority)>>);

impl LastAuthority {
    /// [`Authority::parse`] of `raw`, reusing the last result when `raw` is the same.
    pub fn parse(&self, raw: &str) -> Result<Authority, ProxyError> {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((sent, parsed)) = &*last {
            if **sent == *raw {
                return Ok(parsed.clone());
            }
        }
        let parsed = Authority::parse(raw)?;
        *last = Some((raw.into(), parsed.clone()));
        Ok(parsed)
    }
}

/// The host as the request gave it, before lower-casing.
enum HostBuf<'a> {
    Bracketed(&'a str),
    Name(&'a str),
}

impl HostBuf<'_> {
    fn len(&self) -> usize {
        match self {
            HostBuf::Bracketed(v6) => v6.len() + 2,
            HostBuf::Name(h) => h.len(),
        }
    }
}

/// Labels of 1 to 63 of `[A-Za-z0-9_-]`, separated by single dots.
fn valid_labels(host: &[u8]) -> bool {
    let mut label = 0usize;
    for &b in host {
        if b == b'.' {
            if label == 0 {
                return false;
            }
            label = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label += 1;
            if label > 63 {
                return false;
            }
        } else {
            return false;
        }
    }
    label > 0
}

fn port_digits(port: u16) -> usize {
    match port {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

fn push_lower(out: &mut String, s: &str) {
    let start = out.len();
    out.push_str(s);
    out[start..].make_ascii_lowercase();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_authority_is_reused_only_for_the_same_bytes() {
        let last = LastAuthority::default();
        let a = last.parse("Web-Svc.emojivoto.svc.cluster.local.").unwrap();
        let again = last.parse("Web-Svc.emojivoto.svc.cluster.local.").unwrap();
        assert!(
            std::ptr::eq(a.as_str(), again.as_str()),
            "reused, not parsed again"
        );
        assert_eq!(again.as_str(), "web-svc.emojivoto.svc.cluster.local:80");
        // The same name sent otherwise is parsed (to the same authority).
        let other = last
            .parse("web-svc.emojivoto.svc.cluster.local:80")
            .unwrap();
        assert_eq!(other, a);
        assert!(!std::ptr::eq(other.as_str(), a.as_str()));
        // A refused one is refused every time and does not replace the last good one.
        for _ in 0..2 {
            assert_eq!(last.parse("a..b"), Err(ProxyError::BadAuthority));
        }
        let kept = last
            .parse("web-svc.emojivoto.svc.cluster.local:80")
            .unwrap();
        assert!(std::ptr::eq(kept.as_str(), other.as_str()));
    }

    #[test]
    fn normalises() {
        for (raw, want) in [
            (
                "web-svc.emojivoto.svc.cluster.local:80",
                "web-svc.emojivoto.svc.cluster.local:80",
            ),
            (
                "Web-Svc.Emojivoto.svc.cluster.local",
                "web-svc.emojivoto.svc.cluster.local:80",
            ),
            (
                "web-svc.emojivoto.svc.cluster.local.:8080",
                "web-svc.emojivoto.svc.cluster.local:8080",
            ),
            ("127.0.0.1:9", "127.0.0.1:9"),
            ("[::1]:443", "[::1]:443"),
            ("[::1]", "[::1]:80"),
            ("[FE80::1]:65535", "[fe80::1]:65535"),
            ("a:1", "a:1"),
            ("a:010", "a:10"),
        ] {
            assert_eq!(Authority::parse(raw).unwrap().as_str(), want, "{raw}");
        }
        let a = Authority::parse("web-svc.emojivoto.svc.cluster.local:8080").unwrap();
        assert_eq!(a.host(), "web-svc.emojivoto.svc.cluster.local");
        assert_eq!(a.port(), 8080);
        let a = Authority::parse("[::1]:443").unwrap();
        assert_eq!((a.host(), a.port()), ("[::1]", 443));
    }

    #[test]
    fn refuses_junk() {
        for raw in [
            "",
            ":80",
            "a:0",
            "a:65536",
            "a:x",
            "user@host",
            "a b",
            "[::1",
            "[zz]:1",
            "a/b",
            "a:80:90",
            // Empty labels (found by the authority fuzz target).
            "..........",
            "a..b",
            ".a",
            "a..",
            &"a".repeat(254),
        ] {
            assert!(Authority::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn cluster_service_suffix() {
        let yes = Authority::parse("web-svc.emojivoto.svc.cluster.local").unwrap();
        assert!(yes.is_cluster_service("cluster.local"));
        assert!(!yes.is_cluster_service("example.org"));
        for no in [
            "svc.cluster.local",
            "evil-svc.cluster.local",
            "web.hackersvc.cluster.local",
            "cluster.local",
        ] {
            assert!(
                !Authority::parse(no)
                    .unwrap()
                    .is_cluster_service("cluster.local"),
                "{no}"
            );
        }
    }
}

//! The request-message rules a proxy must enforce that its servers leave to it (RFC 9110,
//! 9112, 9113). What the servers already refuse is listed in README "Security" and tested
//! beside these in `tests/tests/framing.rs`; this module holds only the rest, so nothing is
//! checked twice on the hot path.

use http::{header, HeaderMap, HeaderValue, Method, Request, Version};

use crate::{authority::Authority, errors::ProxyError};

/// What to do with a request that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Forward,
    /// `OPTIONS` with `Max-Forwards: 0`: the gateway is the final recipient (RFC 9110 §7.6.2).
    AnswerHere,
}

/// Checks one request and applies the rewrites the rules require of an intermediary.
/// A direct HTTP/1.1 request without `Host` (and not in absolute-form) is refused by routing
/// as `missing authority`; on a transport-header connection, whose header names the target,
/// it is let through, because Linkerd's proxies strip `Host` for the hop.
/// `named_target`: the connection's transport header names the target, so routing will not
/// read `Host`, and it is validated here instead (elsewhere routing parses it once).
pub fn check<B>(req: &mut Request<B>, named_target: bool) -> Result<Next, ProxyError> {
    let method = req.method();
    // CONNECT would open a tunnel to whatever the caller names; TRACE would echo back the
    // headers the gateway adds (identities, `Forwarded`). Neither is refused by a library.
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(ProxyError::MethodNotSupported);
    }
    let options = method == Method::OPTIONS;
    let version = req.version();
    check_host(req.headers(), version, req.uri().authority(), named_target)?;
    let headers = req.headers_mut();
    // HTTP/1: the server's codec refuses what RFC 9112 §6 calls unframeable, and a request with both
    // Transfer-Encoding and Content-Length it frames by the former, drops the latter and
    // closes the connection after the response (§6.1 allows exactly that).
    if version == Version::HTTP_2 {
        check_h2_values(headers)?;
    }
    if options {
        return max_forwards(headers);
    }
    Ok(Next::Forward)
}

/// RFC 9112 §3.2 and RFC 9113 §8.3.1: one `Host` at most, a valid one, and on HTTP/2 the
/// same authority as `:authority`. (In HTTP/1.1 absolute-form the received Host is ignored
/// and replaced, RFC 9112 §3.2.2: routing reads the target URI first.)
fn check_host(
    headers: &HeaderMap,
    version: Version,
    uri_authority: Option<&http::uri::Authority>,
    named_target: bool,
) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return Ok(());
    };
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    let h2_authority = uri_authority.filter(|_| version == Version::HTTP_2);
    // Parsed here only when nothing else will: an origin-form HTTP/1.1 request is routed by
    // its Host (one parse, there), an absolute-form one ignores it (RFC 9112 §3.2.2).
    if h2_authority.is_none() && !named_target {
        return Ok(());
    }
    let raw = host.to_str().map_err(|_| ProxyError::BadAuthority)?;
    let host = Authority::parse(raw)?;
    {
        if let Some(a) = h2_authority {
            let authority = Authority::parse(a.as_str())?;
            // A port left out means the scheme's default, which is not always 80: compare
            // ports only when both name one.
            let same = authority.host() == host.host()
                && (authority.port() == host.port()
                    || !explicit_port(raw)
                    || !explicit_port(a.as_str()));
            if !same {
                return Err(ProxyError::HostMismatch);
            }
        }
    }
    Ok(())
}

fn explicit_port(authority: &str) -> bool {
    authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// RFC 9113 §8.2.1: no leading or trailing whitespace in a field value (h2 already refuses
/// NUL, CR and LF, upper-case names and connection-specific fields).
fn check_h2_values(headers: &HeaderMap) -> Result<(), ProxyError> {
    let padded = |v: &HeaderValue| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    };
    if headers.values().any(padded) {
        return Err(ProxyError::BadHeaderValue);
    }
    Ok(())
}

/// RFC 9110 §7.6.2 for OPTIONS: decrement `Max-Forwards`, or answer at 0.
fn max_forwards(headers: &mut HeaderMap) -> Result<Next, ProxyError> {
    let Some(v) = headers.get(header::MAX_FORWARDS) else {
        return Ok(Next::Forward);
    };
    let n: u64 = v
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(ProxyError::BadHeaderValue)?;
    if n == 0 {
        return Ok(Next::AnswerHere);
    }
    headers.insert(header::MAX_FORWARDS, HeaderValue::from(n - 1));
    Ok(Next::Forward)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).version(version).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        let h1 = |h: &[(&str, &str)]| check(&mut req("GET", Version::HTTP_11, "/", h), true);
        assert_eq!(h1(&[("host", "a.b")]), Ok(Next::Forward));
        assert_eq!(h1(&[]), Ok(Next::Forward));
        assert_eq!(
            h1(&[("host", "a.b"), ("host", "a.b")]),
            Err(ProxyError::DuplicateHost)
        );
        assert_eq!(h1(&[("host", "a b")]), Err(ProxyError::BadAuthority));
        assert_eq!(h1(&[("host", "u@a.b")]), Err(ProxyError::BadAuthority));
        let h2 = |uri: &str, host: &str| {
            check(
                &mut req("GET", Version::HTTP_2, uri, &[("host", host)]),
                false,
            )
        };
        assert_eq!(h2("https://a.b:80/", "A.b:80"), Ok(Next::Forward));
        assert_eq!(h2("https://a.b/", "a.b:443"), Ok(Next::Forward));
        assert_eq!(
            h2("https://a.b:80/", "a.b:81"),
            Err(ProxyError::HostMismatch)
        );
        assert_eq!(h2("https://a.b/", "c.d"), Err(ProxyError::HostMismatch));
    }

    #[test]
    fn methods_values_and_max_forwards() {
        for m in ["CONNECT", "TRACE"] {
            assert_eq!(
                check(&mut req(m, Version::HTTP_11, "/", &[]), false),
                Err(ProxyError::MethodNotSupported)
            );
        }
        assert_eq!(
            check(
                &mut req("GET", Version::HTTP_2, "https://a.b/", &[("x", " v")]),
                false
            ),
            Err(ProxyError::BadHeaderValue)
        );
        assert_eq!(
            check(
                &mut req("GET", Version::HTTP_2, "https://a.b/", &[("x", "v w")]),
                false
            ),
            Ok(Next::Forward)
        );
        let mut r = req("OPTIONS", Version::HTTP_11, "/", &[("max-forwards", "2")]);
        assert_eq!(check(&mut r, false), Ok(Next::Forward));
        assert_eq!(r.headers()["max-forwards"], "1");
        let mut r = req("OPTIONS", Version::HTTP_11, "/", &[("max-forwards", "0")]);
        assert_eq!(check(&mut r, false), Ok(Next::AnswerHere));
        let mut r = req("OPTIONS", Version::HTTP_11, "/", &[("max-forwards", "-1")]);
        assert_eq!(check(&mut r, false), Err(ProxyError::BadHeaderValue));
    }
}

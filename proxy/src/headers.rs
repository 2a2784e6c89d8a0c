//! Header names and rewriting rules both sides of the proxy follow: hop-by-hop stripping,
//! request targets, `l5d-orig-proto`, the loop check's reading of `Forwarded`.

use http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Request, Uri, Version,
};
use identity::Identity;

use crate::{authority::Authority, errors::ProxyError};

pub const L5D_CLIENT_ID: HeaderName = HeaderName::from_static("l5d-client-id");
/// The target's `name:port`, which Linkerd's gateway adds to requests it forwards.
pub const L5D_DST_CANONICAL: HeaderName = HeaderName::from_static("l5d-dst-canonical");
pub const L5D_PROXY_ERROR: HeaderName = HeaderName::from_static("l5d-proxy-error");
pub const L5D_PROXY_CONNECTION: HeaderName = HeaderName::from_static("l5d-proxy-connection");
/// Set by a Linkerd source proxy that upgraded an HTTP/1 request to HTTP/2 for the hop.
pub const L5D_ORIG_PROTO: HeaderName = HeaderName::from_static("l5d-orig-proto");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The fields the gateway writes into every request it forwards: `Host` (toward HTTP/1
/// services), its verified `l5d-client-id`, `l5d-dst-canonical`, and its `Forwarded` element.
/// The first three replace whatever the caller sent under those names; `Forwarded` follows
/// the caller's.
///
/// Toward HTTP/2 they go into the request's header map ([`GatewayFields::insert_into`]). Toward
/// an HTTP/1 service the upstream codec writes them itself while it writes the caller's fields
/// ([`GatewayFields::replaces`]): inserting them into the caller's map grew and rehashed it on
/// nearly every request (its capacity is the caller's field count), which cost more than
/// writing the head.
#[derive(Debug, Clone, Default)]
pub struct GatewayFields {
    pub host: Option<HeaderValue>,
    pub client_id: Option<HeaderValue>,
    pub canonical: Option<HeaderValue>,
    pub forwarded: Option<HeaderValue>,
}

impl GatewayFields {
    /// Whether the caller's field `name` is replaced by one of these, and so not forwarded.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        (self.host.is_some() && name == header::HOST)
            || (self.client_id.is_some() && name == L5D_CLIENT_ID)
            || (self.canonical.is_some() && name == L5D_DST_CANONICAL)
    }

    /// These fields as `name: value` lines, in the order an HTTP/1 head carries them after the
    /// caller's fields.
    pub fn lines(&self) -> impl Iterator<Item = (&'static str, &HeaderValue)> {
        [
            ("host", &self.host),
            ("l5d-client-id", &self.client_id),
            ("l5d-dst-canonical", &self.canonical),
            ("forwarded", &self.forwarded),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| (name, v)))
    }

    /// Writes these fields into `headers`, with the same meaning as [`GatewayFields::lines`]
    /// written after the caller's fields minus those [`GatewayFields::replaces`].
    pub fn insert_into(self, headers: &mut HeaderMap) {
        if let Some(v) = self.host {
            headers.insert(header::HOST, v);
        }
        if let Some(v) = self.client_id {
            headers.insert(L5D_CLIENT_ID, v);
        }
        if let Some(v) = self.canonical {
            headers.insert(L5D_DST_CANONICAL, v);
        }
        if let Some(v) = self.forwarded {
            headers.append(FORWARDED, v);
        }
    }
}

/// `HTTP/1.1` or `HTTP/1.0`, optionally followed by `; absolute-form`.
pub fn parse_orig_proto(v: &HeaderValue) -> Option<Version> {
    let s = v.to_str().ok()?;
    let proto = s.split(';').next()?.trim();
    match proto {
        "HTTP/1.1" => Some(Version::HTTP_11),
        "HTTP/1.0" => Some(Version::HTTP_10),
        _ => None,
    }
}

/// `/path?query`: the request target an origin server expects.
pub fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// `http://<authority><path?query>`: the same request, aimed elsewhere.
pub fn retarget(uri: &Uri, authority: http::uri::Authority) -> Result<Uri, http::Error> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
}

/// `:authority` for HTTP/2 and absolute-form requests, else `Host`.
pub fn request_authority<B>(req: &Request<B>) -> Result<Authority, ProxyError> {
    Authority::parse(raw_authority(req)?)
}

/// The authority as the request gave it (see [`request_authority`]), not yet normalised.
pub fn raw_authority<B>(req: &Request<B>) -> Result<&str, ProxyError> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .ok_or(ProxyError::NoAuthority)?;
    host.to_str().map_err(|_| ProxyError::BadAuthority)
}

/// Whether any `Forwarded` element says it was forwarded `by` this gateway already.
pub fn forwarded_by(headers: &HeaderMap, own: &Identity) -> bool {
    headers
        .get_all(FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("by")
                && v.trim()
                    .trim_matches('"')
                    .eq_ignore_ascii_case(own.as_str())
        })
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

/// The hop-by-hop fields [`strip_hop_by_hop`] knows by name, as bits.
const HOP_CONNECTION: u16 = 1;
const HOP_UPGRADE: u16 = 1 << 1;
const HOP_TE: u16 = 1 << 2;
const HOP_TRANSFER_ENCODING: u16 = 1 << 3;
const HOP_PROXY_AUTHENTICATE: u16 = 1 << 4;
const HOP_PROXY_AUTHORIZATION: u16 = 1 << 5;
const HOP_KEEP_ALIVE: u16 = 1 << 6;
const HOP_PROXY_CONNECTION: u16 = 1 << 7;

/// The names `hop_bit` knows, as a `Connection` listing may spell them.
const HOP_NAMES: [&[u8]; 8] = [
    b"keep-alive",
    b"connection",
    b"upgrade",
    b"te",
    b"transfer-encoding",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
];

fn hop_bit(name: &HeaderName) -> u16 {
    if name == header::CONNECTION {
        HOP_CONNECTION
    } else if name == header::UPGRADE {
        HOP_UPGRADE
    } else if name == header::TE {
        HOP_TE
    } else if name == header::TRANSFER_ENCODING {
        HOP_TRANSFER_ENCODING
    } else if name == header::PROXY_AUTHENTICATE {
        HOP_PROXY_AUTHENTICATE
    } else if name == header::PROXY_AUTHORIZATION {
        HOP_PROXY_AUTHORIZATION
    } else if name == KEEP_ALIVE {
        HOP_KEEP_ALIVE
    } else if name == PROXY_CONNECTION {
        HOP_PROXY_CONNECTION
    } else {
        0
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), keeping `Upgrade` on an upgrade and `TE:
/// trailers` (which gRPC needs end to end). `Trailer` is end to end: it announces the
/// trailer fields, and HTTP/1.1 servers send only the trailers it names.
///
/// One pass over the names present finds the known ones; only those present are removed, and
/// only names `Connection` lists that are not already known cost a lookup. Most messages
/// carry none; many responses carry `Connection: keep-alive` alone.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        present |= hop_bit(name);
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    if present & HOP_CONNECTION != 0 {
        let mut listed: Vec<HeaderName> = Vec::new();
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        {
            let token = token.trim_ascii();
            // Known hop-by-hop names are removed below, if present; `keep-alive`, the token
            // nearly every listing names, is one of them, and comparing costs less than
            // parsing a `HeaderName`.
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || HOP_NAMES.iter().any(|n| token.eq_ignore_ascii_case(n))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                if hop_bit(&name) == 0 {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(&name);
        }
    }
    let remove = |headers: &mut HeaderMap, bit: u16, name: &HeaderName| {
        if present & bit != 0 {
            headers.remove(name);
        }
    };
    remove(headers, HOP_KEEP_ALIVE, &KEEP_ALIVE);
    remove(headers, HOP_PROXY_CONNECTION, &PROXY_CONNECTION);
    remove(headers, HOP_PROXY_AUTHENTICATE, &header::PROXY_AUTHENTICATE);
    remove(
        headers,
        HOP_PROXY_AUTHORIZATION,
        &header::PROXY_AUTHORIZATION,
    );
    remove(headers, HOP_TRANSFER_ENCODING, &header::TRANSFER_ENCODING);
    if present & HOP_TE != 0 {
        let te_trailers = headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !te_trailers {
            headers.remove(header::TE);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        remove(headers, HOP_CONNECTION, &header::CONNECTION);
        remove(headers, HOP_UPGRADE, &header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 3, "{h:?}");
        assert!(h.contains_key("x-kept"));
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn loop_detection_reads_every_forwarded_element() {
        let own = Identity::parse("gw.ns.serviceaccount.identity.linkerd.cluster.local").unwrap();
        let mut h = HeaderMap::new();
        h.append(FORWARDED, HeaderValue::from_static("for=a;by=other"));
        assert!(!forwarded_by(&h, &own));
        h.append(
            FORWARDED,
            HeaderValue::from_static(
                "for=x, by=\"gw.ns.serviceaccount.identity.linkerd.cluster.local\";proto=https",
            ),
        );
        assert!(forwarded_by(&h, &own));
    }

    #[test]
    fn orig_proto_values() {
        for (v, want) in [
            ("HTTP/1.1", Some(Version::HTTP_11)),
            ("HTTP/1.1; absolute-form", Some(Version::HTTP_11)),
            ("HTTP/1.0", Some(Version::HTTP_10)),
            ("HTTP/1.0; absolute-form", Some(Version::HTTP_10)),
            ("HTTP/2", None),
            ("junk", None),
        ] {
            assert_eq!(parse_orig_proto(&HeaderValue::from_static(v)), want, "{v}");
        }
    }

    #[test]
    fn authority_from_uri_or_host() {
        let r = Request::get("http://web-svc.emojivoto.svc.cluster.local/x")
            .body(())
            .unwrap();
        assert_eq!(
            request_authority(&r).unwrap().as_str(),
            "web-svc.emojivoto.svc.cluster.local:80"
        );
        let r = Request::get("/x")
            .header("host", "Web-Svc.emojivoto.svc.cluster.local:8080")
            .body(())
            .unwrap();
        assert_eq!(
            request_authority(&r).unwrap().as_str(),
            "web-svc.emojivoto.svc.cluster.local:8080"
        );
        let r = Request::get("/x").body(()).unwrap();
        assert_eq!(request_authority(&r).unwrap_err(), ProxyError::NoAuthority);
    }
}

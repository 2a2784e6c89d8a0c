//! Why the gateway refused or failed something, in one vocabulary: [`ProxyError`] for a request
//! (or a stream's target), [`ConnError`] for a whole connection. Each variant has one stable
//! reason string, [`ProxyError::reason`] / [`ConnError::reason`]: it is the response body, the
//! `l5d-proxy-error` header, the `error`/`reason` metric label and the log field, so an operator
//! can go from any one of them to the others.

use http::StatusCode;
use identity::VerifyError;
use transport_header::DecodeError;

/// Linkerd's wording for connections to the gateway port that are not mTLS for it.
pub const NOT_FOR_US: &str = "direct connections must be mutually authenticated";

/// Why a request (or a transport-header stream) was not proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The name is not under `svc.<cluster-domain>` and no static route names it.
    #[error("bad gateway domain")]
    BadDomain,
    /// The export allow-list does not contain the service.
    #[error("service not exported")]
    NotExported,
    /// The caller's identity is not in the caller allow-list.
    #[error("caller not allowed")]
    CallerDenied,
    /// `linkerd-policy`'s authorizations for the gateway port do not admit this caller.
    #[error("unauthorized")]
    Unauthorized,
    /// The caller identity already holds its budget of connections (`--caller-max-connections`
    /// or a `[[caller_limits]]` override).
    #[error("caller connection limit")]
    CallerConnections,
    /// The caller identity has its budget of requests open, or is over its request rate.
    #[error("too many requests")]
    TooManyRequests,
    /// The gateway port has HTTP routes and none takes this request.
    #[error("no route")]
    NoRoute,
    /// The request already passed through this gateway (or came from it).
    #[error("gateway loop")]
    Loop,
    #[error("missing authority")]
    NoAuthority,
    #[error("invalid authority")]
    BadAuthority,
    /// More than one `Host` field (RFC 9112 §3.2).
    #[error("duplicate host")]
    DuplicateHost,
    /// An HTTP/2 request whose `Host` names another authority than `:authority` (RFC 9113
    /// §8.3.1).
    #[error("host differs from authority")]
    HostMismatch,
    /// A field value HTTP/2 forbids (leading or trailing whitespace, RFC 9113 §8.2.1), or an
    /// unreadable `Max-Forwards`.
    #[error("invalid header value")]
    BadHeaderValue,
    /// CONNECT (no tunnels through the gateway) or TRACE (it would reflect what the gateway
    /// adds to a request).
    #[error("method not supported")]
    MethodNotSupported,
    /// DNS had no answer for a cluster name: check the Service exists in this cluster.
    #[error("name resolution failed")]
    Resolve,
    #[error("no endpoints")]
    NoEndpoints,
    /// Discovery already watches as many names as it may, all in use: too many distinct
    /// names asked for at once.
    #[error("too many names")]
    NameLimit,
    /// A discovered service had no endpoints for the whole fail-fast timeout.
    #[error("no endpoints within the failfast timeout")]
    FailFast,
    #[error("upstream connect failed")]
    Connect,
    #[error("upstream connect timeout")]
    ConnectTimeout,
    #[error("upstream request failed")]
    Upstream,
    /// mTLS to a meshed endpoint failed: its certificate did not chain to the anchors or
    /// name the identity discovery gave, or it refused the gateway's.
    /// The service's HTTP/1.1 response broke the protocol (framing, head, chunked coding).
    #[error("upstream response malformed")]
    UpstreamProtocol,
    #[error("upstream TLS handshake failed")]
    UpstreamTls,
    #[error("upstream response timeout")]
    ResponseTimeout,
}

impl ProxyError {
    /// The stable reason string (also the `Display` text).
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadDomain => "bad gateway domain",
            ProxyError::NotExported => "service not exported",
            ProxyError::CallerDenied => "caller not allowed",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::NoRoute => "no route",
            ProxyError::CallerConnections => "caller connection limit",
            ProxyError::TooManyRequests => "too many requests",
            ProxyError::Loop => "gateway loop",
            ProxyError::NoAuthority => "missing authority",
            ProxyError::BadAuthority => "invalid authority",
            ProxyError::DuplicateHost => "duplicate host",
            ProxyError::HostMismatch => "host differs from authority",
            ProxyError::BadHeaderValue => "invalid header value",
            ProxyError::MethodNotSupported => "method not supported",
            ProxyError::Resolve => "name resolution failed",
            ProxyError::NoEndpoints => "no endpoints",
            ProxyError::NameLimit => "too many names",
            ProxyError::FailFast => "no endpoints within the failfast timeout",
            ProxyError::Connect => "upstream connect failed",
            ProxyError::ConnectTimeout => "upstream connect timeout",
            ProxyError::Upstream => "upstream request failed",
            ProxyError::UpstreamProtocol => "upstream response malformed",
            ProxyError::UpstreamTls => "upstream TLS handshake failed",
            ProxyError::ResponseTimeout => "upstream response timeout",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadDomain => StatusCode::NOT_FOUND,
            ProxyError::NotExported | ProxyError::CallerDenied | ProxyError::Unauthorized => {
                StatusCode::FORBIDDEN
            }
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::CallerConnections | ProxyError::TooManyRequests => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::NoAuthority
            | ProxyError::BadAuthority
            | ProxyError::DuplicateHost
            | ProxyError::HostMismatch
            | ProxyError::BadHeaderValue => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotSupported => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Resolve
            | ProxyError::Connect
            | ProxyError::Upstream
            | ProxyError::UpstreamProtocol
            | ProxyError::UpstreamTls => StatusCode::BAD_GATEWAY,
            ProxyError::NoEndpoints | ProxyError::NameLimit => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout | ProxyError::FailFast => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// Whether the endpoint (not the request) failed: it could not be connected to, refused
    /// the gateway's TLS, or dropped the request. Such endpoints are passed over for a while.
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect
                | ProxyError::ConnectTimeout
                | ProxyError::UpstreamTls
                | ProxyError::Upstream
                | ProxyError::UpstreamProtocol
        )
    }

    /// Whether the caller's connection should be closed after this response (the loop case:
    /// a misrouted peer would only loop again).
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::Loop)
    }
}

/// Why a connection was closed before anything was proxied on it. Which metric family counts
/// it follows from the layer it failed in; see [`ConnError::family`].
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection refused: at the limit of {0} connections")]
    AtLimit(usize),
    /// The pending budget was full and this connection, the oldest not yet authenticated,
    /// made room for a newer one. Many of these mean a flood of connections that never
    /// finish a handshake, or `--max-pending-connections` too small for the callers' RTT.
    #[error("shed: the oldest unauthenticated connection made room for a new one")]
    Shed,
    #[error("plaintext on the mTLS port")]
    Plaintext,
    #[error("no TLS handshake within the timeout")]
    HandshakeTimeout,
    #[error("{NOT_FOR_US}: SNI {0:?} is not this gateway's identity")]
    SniMismatch(String),
    /// rustls refused the handshake; `reason` names the TLS or certificate problem.
    #[error("TLS handshake failed: {detail}")]
    Tls {
        reason: &'static str,
        detail: String,
    },
    #[error("the client certificate names no usable identity: {0}")]
    NoClientIdentity(VerifyError),
    #[error("no transport header within the timeout")]
    TransportHeaderTimeout,
    #[error(transparent)]
    TransportHeader(#[from] DecodeError),
    #[error("the transport header names no target")]
    NoTargetName,
    /// The stream's caller or target was refused, for the same reasons a request is.
    #[error(transparent)]
    Refused(#[from] ProxyError),
}

/// The metric family a [`ConnError`] is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnErrorFamily {
    /// `gateway_connections_refused_total{reason}`: refused before any byte was read.
    Refused,
    /// `gateway_tls_handshake_failures_total{reason}`.
    Handshake,
    /// `inbound_tcp_errors_total{error}`: after the handshake, before proxying.
    Tcp,
}

impl ConnError {
    /// The stable reason string: the metric label and the log's `reason` field.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnError::AtLimit(_) => "limit",
            ConnError::Shed => "shed",
            ConnError::Plaintext => "plaintext",
            ConnError::HandshakeTimeout => "timeout",
            ConnError::SniMismatch(_) => "sni_mismatch",
            ConnError::Tls { reason, .. } => reason,
            ConnError::NoClientIdentity(e) => e.reason(),
            ConnError::TransportHeaderTimeout => "transport header timeout",
            ConnError::TransportHeader(e) => e.reason(),
            ConnError::NoTargetName => "transport header name required",
            ConnError::Refused(e) => e.reason(),
        }
    }

    pub fn family(&self) -> ConnErrorFamily {
        match self {
            ConnError::AtLimit(_) | ConnError::Shed => ConnErrorFamily::Refused,
            ConnError::Plaintext
            | ConnError::HandshakeTimeout
            | ConnError::SniMismatch(_)
            | ConnError::Tls { .. }
            | ConnError::NoClientIdentity(_) => ConnErrorFamily::Handshake,
            ConnError::TransportHeaderTimeout
            | ConnError::TransportHeader(_)
            | ConnError::NoTargetName
            | ConnError::Refused(_) => ConnErrorFamily::Tcp,
        }
    }

    /// From a failed rustls accept: the TLS problem's stable name when rustls says what it
    /// was, else `io` (the caller went away mid-handshake).
    pub fn from_tls_io(e: &std::io::Error) -> Self {
        let reason = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(identity::tls::failure_reason)
            .unwrap_or("io");
        ConnError::Tls {
            reason,
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_reason() {
        for e in [
            ProxyError::BadDomain,
            ProxyError::NotExported,
            ProxyError::CallerDenied,
            ProxyError::Unauthorized,
            ProxyError::NoRoute,
            ProxyError::CallerConnections,
            ProxyError::TooManyRequests,
            ProxyError::Loop,
            ProxyError::NoAuthority,
            ProxyError::BadAuthority,
            ProxyError::DuplicateHost,
            ProxyError::HostMismatch,
            ProxyError::BadHeaderValue,
            ProxyError::MethodNotSupported,
            ProxyError::Resolve,
            ProxyError::NoEndpoints,
            ProxyError::NameLimit,
            ProxyError::FailFast,
            ProxyError::Connect,
            ProxyError::ConnectTimeout,
            ProxyError::Upstream,
            ProxyError::UpstreamTls,
            ProxyError::ResponseTimeout,
        ] {
            assert_eq!(e.to_string(), e.reason());
            let conn = ConnError::from(e);
            assert_eq!(conn.reason(), e.reason());
            assert_eq!(conn.family(), ConnErrorFamily::Tcp);
        }
    }

    #[test]
    fn header_errors_keep_their_reason() {
        let e = ConnError::from(DecodeError::Truncated);
        assert_eq!(e.reason(), "truncated header");
        assert_eq!(ConnError::AtLimit(3).family(), ConnErrorFamily::Refused);
        assert_eq!(ConnError::Plaintext.family(), ConnErrorFamily::Handshake);
    }
}

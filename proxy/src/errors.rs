//! Why a request was not proxied. The `Display` strings are stable: they are the response body,
//! the `l5d-proxy-error` header, the `error` metric label and the log message.

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    BadDomain,
    NotExported,
    CallerDenied,
    Loop,
    NoAuthority,
    BadAuthority,
    Resolve,
    NoEndpoints,
    Connect,
    ConnectTimeout,
    Upstream,
    ResponseTimeout,
    Draining,
}

impl ProxyError {
    /// The stable reason string.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProxyError::BadDomain => "bad gateway domain",
            ProxyError::NotExported => "service not exported",
            ProxyError::CallerDenied => "caller not allowed",
            ProxyError::Loop => "gateway loop",
            ProxyError::NoAuthority => "missing authority",
            ProxyError::BadAuthority => "invalid authority",
            ProxyError::Resolve => "name resolution failed",
            ProxyError::NoEndpoints => "no endpoints",
            ProxyError::Connect => "upstream connect failed",
            ProxyError::ConnectTimeout => "upstream connect timeout",
            ProxyError::Upstream => "upstream request failed",
            ProxyError::ResponseTimeout => "upstream response timeout",
            ProxyError::Draining => "gateway shutting down",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadDomain => StatusCode::NOT_FOUND,
            ProxyError::NotExported | ProxyError::CallerDenied => StatusCode::FORBIDDEN,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::NoAuthority | ProxyError::BadAuthority => StatusCode::BAD_REQUEST,
            ProxyError::Resolve | ProxyError::Connect | ProxyError::Upstream => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::NoEndpoints | ProxyError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the caller's connection should be closed after this response (the loop case:
    /// a misrouted peer would only loop again).
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::Loop | ProxyError::Draining)
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ProxyError {}

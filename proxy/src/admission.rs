//! Who may use the gateway, and for what: the caller check (allow-list, loop) once per
//! connection, the target check (domain, export, route) once per stream or request, and the
//! per-request loop check on `Forwarded`. Every refusal is a [`ProxyError`].

use std::sync::Arc;

use http::HeaderMap;
use identity::Identity;

use crate::{
    authority::Authority,
    context::{ConnCtx, Gateway},
    errors::ProxyError,
    headers::forwarded_by,
    routing::Target,
};

/// Once per connection: whether this caller may use the gateway at all.
pub fn caller(gw: &Gateway, client_id: &Identity) -> Result<(), ProxyError> {
    if !gw.callers.allows(client_id) {
        return Err(ProxyError::CallerDenied);
    }
    // Our own identity calling us is a loop through another gateway sharing it.
    if client_id == &gw.identity {
        return Err(ProxyError::Loop);
    }
    Ok(())
}

/// The target a transport header names: Linkerd's rule first (only names under
/// `svc.<cluster-domain>`), then the caller, then the router.
pub async fn header_target(
    gw: &Gateway,
    caller: Result<(), ProxyError>,
    authority: &Authority,
) -> Result<Arc<Target>, ProxyError> {
    if !authority.is_cluster_service(gw.router.cluster_domain()) {
        return Err(ProxyError::BadDomain);
    }
    caller?;
    gw.router.route(authority).await
}

/// Per request, once routed: `linkerd-policy`'s authorizations for the route the request
/// takes, when a policy is configured.
pub fn authorize_request<B>(
    gw: &Gateway,
    conn: &ConnCtx,
    target: &Target,
    req: &http::Request<B>,
) -> Result<(), ProxyError> {
    match &gw.policy {
        None => Ok(()),
        Some(p) => p.check_http(
            &conn.client_id,
            conn.peer.ip(),
            target.name.host(),
            req.method(),
            req.uri(),
            req.headers(),
        ),
    }
}

/// Once per opaque stream: `linkerd-policy`'s authorizations for the gateway port.
pub fn authorize_stream(gw: &Gateway, conn: &ConnCtx) -> Result<(), ProxyError> {
    match &gw.policy {
        None => Ok(()),
        Some(p) => p.check_tcp(&conn.client_id, conn.peer.ip()),
    }
}

/// Per request: the connection's caller decision, then the loop check on the request's
/// `Forwarded` elements.
pub fn request(
    gw: &Gateway,
    caller: Result<(), ProxyError>,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    caller?;
    if forwarded_by(headers, &gw.identity) {
        return Err(ProxyError::Loop);
    }
    Ok(())
}

/// An allow-list entry: an exact identity, or `*.suffix` matching any identity ending in
/// `.suffix` (e.g. `*.emojivoto.serviceaccount.identity.linkerd.cluster.local`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerPattern {
    Exact(String),
    Suffix(String),
}

impl CallerPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(suffix) = s.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!("bad caller pattern {s:?}"));
            }
            return Ok(Self::Suffix(format!(".{suffix}")));
        }
        if s.is_empty() || s.contains('*') {
            return Err(format!(
                "bad caller pattern {s:?}: use an identity or *.suffix"
            ));
        }
        Ok(Self::Exact(s))
    }

    pub fn matches_str(&self, id: &str) -> bool {
        match self {
            Self::Exact(e) => id == e,
            Self::Suffix(s) => id.len() > s.len() && id.ends_with(s.as_str()),
        }
    }
}

impl CallerPattern {
    pub fn matches(&self, id: &Identity) -> bool {
        self.matches_str(id.as_str())
    }
}

/// Empty means any identity chained to the trust anchors may call.
#[derive(Debug, Clone, Default)]
pub struct CallerPolicy {
    allow: Vec<CallerPattern>,
}

impl CallerPolicy {
    pub fn new(allow: Vec<CallerPattern>) -> Self {
        Self { allow }
    }

    pub fn allows(&self, id: &Identity) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|p| p.matches(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = CallerPolicy::new(vec![
            CallerPattern::parse("*.emojivoto.serviceaccount.identity.linkerd.cluster.local")
                .unwrap(),
            CallerPattern::parse(
                "probe.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local",
            )
            .unwrap(),
        ]);
        let id = |s: &str| Identity::parse(s).unwrap();
        assert!(p.allows(&id(
            "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local"
        )));
        assert!(p.allows(&id(
            "probe.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local"
        )));
        assert!(!p.allows(&id("x.other.serviceaccount.identity.linkerd.cluster.local")));
        assert!(!p.allows(&id(
            "emojivoto.serviceaccount.identity.linkerd.cluster.local"
        )));
        assert!(CallerPolicy::default().allows(&id("anyone.at.all")));
        assert!(CallerPattern::parse("*.").is_err());
        assert!(CallerPattern::parse("a*b").is_err());
    }
}

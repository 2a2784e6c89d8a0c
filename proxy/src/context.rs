//! The state every layer of the gateway reads: [`Gateway`], built once at start-up, and
//! [`ConnCtx`], what is known about one caller's connection once its handshake is done.

use std::{net::SocketAddr, sync::Arc};

use http::HeaderValue;
use identity::Identity;

use crate::{
    admission::{self, CallerPolicy},
    drain::Drain,
    errors::ProxyError,
    metrics::ConnMetrics,
    policy::Policy,
    quota::{CallerQuota, Quotas, RequestPermit},
    routing::Router,
    upstream::Upstreams,
    watchdog::{Activity, OpenRequest, Timeouts},
};

/// Everything the request path reads, built once at start-up.
pub struct Gateway {
    /// This gateway's own identity: the SNI it answers to and the `by=` of its `Forwarded`.
    pub identity: Identity,
    pub router: Router,
    pub upstreams: Upstreams,
    pub callers: CallerPolicy,
    /// Authorization from `linkerd-policy` (or a default policy); `None`: only `callers`.
    pub policy: Option<Arc<Policy>>,
    /// Tunnels (upgrades) are spawned through it so the drain can wait for them and close them.
    pub drain: Drain,
    /// One `access` line per request (per connection for opaque streams).
    pub access_log: bool,
    /// Idle and stall bounds for callers' connections.
    pub timeouts: Timeouts,
    /// Each caller identity's share of the gateway.
    pub quotas: Arc<Quotas>,
    /// Open taps (viz's, the dashboard's); requests read one atomic while there are none.
    pub taps: Arc<crate::tap::Taps>,
}

/// What is known about the caller's connection.
pub struct ConnCtx {
    pub peer: SocketAddr,
    pub client_id: Identity,
    /// The connection-wide admission decision ([`admission::caller`]): HTTP callers that fail
    /// it get the refusal on every request, as Linkerd answers 403 per request.
    pub admitted: Result<(), ProxyError>,
    pub metrics: ConnMetrics,
    /// Made once per connection rather than per request: the `l5d-client-id` value and the
    /// start of this gateway's `Forwarded` element.
    pub client_id_header: Option<HeaderValue>,
    pub forwarded_prefix: String,
    /// Bytes and requests on this connection, for its watchdog.
    pub activity: Arc<Activity>,
    /// This connection's place in its caller's budget.
    pub quota: CallerQuota,
}

/// What a request holds until its response has been sent: its place in the connection's
/// activity and in its caller's budget.
/// Nothing reads it: dropping it is what matters.
#[derive(Debug)]
pub struct Held {
    _open: OpenRequest,
    _quota: Option<RequestPermit>,
}

impl Held {
    pub fn new(open: OpenRequest, quota: Option<RequestPermit>) -> Self {
        Self {
            _open: open,
            _quota: quota,
        }
    }
}

impl ConnCtx {
    pub fn new(
        gw: &Gateway,
        peer: SocketAddr,
        client_id: Identity,
        metrics: ConnMetrics,
        activity: Arc<Activity>,
        quota: CallerQuota,
    ) -> Self {
        Self {
            client_id_header: HeaderValue::from_str(client_id.as_str()).ok(),
            forwarded_prefix: format!("by={};for={};host=", gw.identity, client_id),
            admitted: admission::caller(gw, &client_id),
            peer,
            client_id,
            metrics,
            activity,
            quota,
        }
    }
}

//! East's control plane for the local demo: `linkerd-identity` signing with east's issuer,
//! `linkerd-destination` answering for `web-svc` with its meshed endpoint (identity
//! `web.emojivoto...`, `h2` hint), and `linkerd-policy` admitting emojivoto's workloads on the
//! gateway port. Built from the same API crate the real control plane speaks.

use std::{net::SocketAddr, path::Path, time::Duration};

use control_plane::{
    DestinationAnswer, DestinationStub, IdentityStub, PolicyAnswer, PolicyStub, StubEndpoint,
};
use identity::Signer;

use super::{WEB_ID, WEB_SVC};

/// What Linkerd's identity controller issues by default.
const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

pub struct ControlPlaneOptions {
    pub identity: SocketAddr,
    pub destination: SocketAddr,
    pub policy: SocketAddr,
    /// web-svc's meshed inbound (its proxy), which discovery hands the gateway.
    pub web_endpoint: SocketAddr,
}

pub async fn run(opts: ControlPlaneOptions, dir: &Path) -> anyhow::Result<()> {
    let issuer = Signer::from_pem(
        &std::fs::read(dir.join("issuer-east.crt"))?,
        &std::fs::read(dir.join("issuer-east.key"))?,
        "issuer-east.crt",
    )?;
    let _identity = IdentityStub::with_issuer(issuer, opts.identity, LEAF_LIFETIME, None).await;
    let destination = DestinationStub::start(opts.destination).await;
    destination.set(
        WEB_SVC,
        DestinationAnswer::Endpoints(vec![StubEndpoint {
            addr: opts.web_endpoint,
            identity: Some(WEB_ID.to_string()),
            http2: true,
            opaque_transport: None,
        }]),
    );
    let _policy = PolicyStub::start_at(
        opts.policy,
        PolicyAnswer::Identities {
            exact: vec![],
            suffixes: vec!["emojivoto.serviceaccount.identity.linkerd.cluster.local".into()],
        },
    )
    .await;
    eprintln!(
        "control plane: identity {}, destination {}, policy {}",
        opts.identity, opts.destination, opts.policy
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

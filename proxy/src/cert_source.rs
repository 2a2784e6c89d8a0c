//! Where the gateway's trust anchors and own certificate come from, and how the certificate is
//! kept current: PEM files reloaded when they change (cert-manager), or Linkerd's identity
//! service (Certify at start, renewed at 70 % of the lifetime, retried with backoff, the current
//! certificate kept until a new one is in hand). Either way the new certificate goes into the
//! shared [`CertStore`]: the next handshake uses it, open connections are untouched.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use control::{Certifier, ControlAddr};
use identity::{CertStore, Credentials, Identity, TrustAnchors};

use crate::{
    admin::Readiness,
    config::{AnchorsSource, Config, IdentitySource},
    drain::Drain,
    metrics,
};

/// Certify retries start this soon after a failure and double up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub fn load_anchors(source: &AnchorsSource) -> anyhow::Result<TrustAnchors> {
    Ok(match source {
        AnchorsSource::File(path) => TrustAnchors::load(path)?,
        AnchorsSource::Pem(pem) => {
            TrustAnchors::from_pem(pem.as_bytes(), "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS")?
        }
    })
}

fn describe(source: &AnchorsSource) -> String {
    match source {
        AnchorsSource::File(path) => path.display().to_string(),
        AnchorsSource::Pem(_) => "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS".into(),
    }
}

pub fn load_files(
    cert: &Path,
    key: &Path,
    anchors: &TrustAnchors,
    anchors_source: &AnchorsSource,
) -> anyhow::Result<Credentials> {
    let creds = Credentials::load(cert, key)?;
    creds.verify(anchors).with_context(|| {
        format!(
            "{} is not valid under {}",
            cert.display(),
            describe(anchors_source)
        )
    })?;
    Ok(creds)
}

/// The gateway's identity and a store for its certificate: filled from the files now, or
/// empty until the identity service answers (see [`certify`]).
pub struct Started {
    pub identity: Identity,
    pub store: Arc<CertStore>,
    /// True when the certificate is already in hand (file mode).
    pub ready: bool,
}

pub fn start(cfg: &Config, anchors: &TrustAnchors) -> anyhow::Result<Started> {
    match &cfg.identity {
        IdentitySource::Files { cert, key } => {
            let creds = load_files(cert, key, anchors, &cfg.trust_anchors)?;
            metrics::cert_expiry(creds.info().not_after_unix(), creds.identity().as_str());
            Ok(Started {
                identity: creds.identity().clone(),
                store: CertStore::new(&creds)?,
                ready: true,
            })
        }
        IdentitySource::Certify { local, .. } => Ok(Started {
            identity: Identity::parse(local).with_context(|| format!("identity {local:?}"))?,
            store: CertStore::empty(),
            ready: false,
        }),
    }
}

/// Runs what keeps the certificate current until draining begins.
pub async fn maintain(
    cfg: Config,
    anchors: TrustAnchors,
    started: &Started,
    readiness: Arc<Readiness>,
    drain: Drain,
) -> anyhow::Result<()> {
    let store = started.store.clone();
    match &cfg.identity {
        IdentitySource::Files { cert, key } => {
            let (cert, key) = (cert.clone(), key.clone());
            tokio::spawn(
                async move { reload_files(&cfg, &cert, &key, anchors, store, drain).await },
            );
        }
        IdentitySource::Certify {
            svc_addr,
            svc_name,
            token_file,
            ..
        } => {
            let addr = ControlAddr::parse(svc_addr, svc_name.as_deref())?;
            // No client certificate: the gateway has none yet.
            let channel = addr.connect(None, &anchors)?;
            let certifier = Certifier::new(
                channel,
                started.identity.clone(),
                token_file.clone(),
                anchors,
            );
            tracing::info!(service = %addr.addr, identity = %started.identity, "getting the certificate from the identity service");
            tokio::spawn(certify(certifier, store, readiness, drain));
        }
    }
    Ok(())
}

/// Picks up renewed certificates (cert-manager or a sidecar rewriting the files) without a
/// restart; a renewal that does not verify is logged and ignored.
async fn reload_files(
    cfg: &Config,
    cert: &Path,
    key: &Path,
    anchors: TrustAnchors,
    store: Arc<CertStore>,
    drain: Drain,
) {
    let stamp = || {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (m(cert), m(key))
    };
    let mut last = stamp();
    let mut tick = tokio::time::interval(cfg.cert_reload_interval.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = drain.draining() => return,
            _ = tick.tick() => {}
        }
        let now = stamp();
        if now == last {
            continue;
        }
        match load_files(cert, key, &anchors, &cfg.trust_anchors).and_then(|c| {
            store.set(&c)?;
            Ok(c)
        }) {
            Ok(c) => {
                last = now;
                metrics::cert_expiry(c.info().not_after_unix(), c.identity().as_str());
                metrics::cert_refreshed("ok");
                tracing::info!(not_after = %c.info().not_after, "reloaded certificate");
            }
            Err(e) => {
                metrics::cert_refreshed("invalid");
                tracing::warn!(error = %format!("{e:#}"), "certificate changed but cannot be used; keeping the current one")
            }
        }
    }
}

/// Certify now, then again at 70 % of each certificate's lifetime; on failure retry with
/// backoff, serving the current certificate meanwhile. The gateway is ready from the first
/// certificate on.
async fn certify(
    mut certifier: Certifier,
    store: Arc<CertStore>,
    readiness: Arc<Readiness>,
    drain: Drain,
) {
    let mut retry = RETRY_MIN;
    let mut expires: Option<SystemTime> = None;
    loop {
        let wait = match certifier.certify().await.and_then(|c| {
            store
                .set(&c)
                .map_err(control::CertifyError::BadCertificate)?;
            Ok(c)
        }) {
            Ok(creds) => {
                let not_after = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(creds.info().not_after_unix().max(0) as u64);
                let renew_in = control::refresh_in(not_after, SystemTime::now());
                metrics::cert_expiry(creds.info().not_after_unix(), creds.identity().as_str());
                metrics::cert_refreshed("ok");
                tracing::info!(identity = %creds.identity(), not_after = %creds.info().not_after, ?renew_in, "certified");
                expires = Some(not_after);
                retry = RETRY_MIN;
                if !drain.is_draining() {
                    readiness.set(true);
                }
                renew_in
            }
            Err(e) => {
                metrics::cert_refreshed(e.reason());
                let expired = expires.is_some_and(|t| t <= SystemTime::now());
                tracing::warn!(reason = e.reason(), error = %e, retry_in = ?retry, expired, "cannot get a certificate from the identity service");
                if expired {
                    // Serving an expired certificate only earns handshake failures: say so.
                    readiness.set(false);
                }
                let wait = retry;
                retry = (retry * 2).min(RETRY_MAX);
                wait
            }
        };
        tokio::select! {
            _ = drain.draining() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

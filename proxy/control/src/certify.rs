//! The gateway's identity from Linkerd's identity service: a P-256 key made in memory (never
//! written anywhere), a signing request naming the gateway's identity, the service-account
//! token as proof, and an answer that must chain to the trust anchors and name that identity.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use identity::{Credentials, Identity, TrustAnchors, VerifyError};
use linkerd2_proxy_api::identity::{identity_client::IdentityClient, CertifyRequest};
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;

/// A Certify answer is a leaf and a short chain: a few kilobytes. Anything far larger is not
/// an answer to act on.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// How long one Certify call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Renewal bounds: never sooner than this after a certificate arrives...
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// ...and never later than this, however long the certificate lives.
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Why a certificate could not be had. [`reason`](Self::reason) is the stable label for logs
/// and `identity_cert_refreshes_total{result}`.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("cannot read the service-account token {path}: {source}; check the projected token volume (audience identity.l5d.io)")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a key and signing request: {0}")]
    Request(identity::Error),
    #[error("the identity service did not certify: {}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("the identity service answered with an unusable certificate: {0}")]
    BadCertificate(identity::Error),
    #[error("the certificate from the identity service does not chain to the trust anchors: {0}")]
    Untrusted(VerifyError),
    #[error("the identity service certified {got}, but this gateway is {want}")]
    WrongName { want: Identity, got: Identity },
}

impl CertifyError {
    pub fn reason(&self) -> &'static str {
        match self {
            CertifyError::Token { .. } => "token",
            CertifyError::Request(_) => "csr",
            CertifyError::Refused(s) if s.code() == tonic::Code::Unavailable => "unavailable",
            CertifyError::Refused(s) if s.code() == tonic::Code::DeadlineExceeded => "timeout",
            CertifyError::Refused(_) => "refused",
            CertifyError::BadCertificate(_) => "bad_certificate",
            CertifyError::Untrusted(e) => e.reason(),
            CertifyError::WrongName { .. } => "name_mismatch",
        }
    }
}

/// Asks the identity service for this workload's certificate.
pub struct Certifier {
    client: IdentityClient<Channel>,
    local: Identity,
    token_file: PathBuf,
    anchors: TrustAnchors,
}

impl Certifier {
    pub fn new(
        channel: Channel,
        local: Identity,
        token_file: PathBuf,
        anchors: TrustAnchors,
    ) -> Self {
        Self {
            client: IdentityClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES),
            local,
            token_file,
            anchors,
        }
    }

    pub fn local(&self) -> &Identity {
        &self.local
    }

    /// One Certify round: a fresh key and request, the current token (projected tokens are
    /// rotated by the kubelet, so it is read every time), and a checked answer.
    pub async fn certify(&mut self) -> Result<Credentials, CertifyError> {
        let token =
            tokio::fs::read(&self.token_file)
                .await
                .map_err(|source| CertifyError::Token {
                    path: self.token_file.clone(),
                    source,
                })?;
        let request = identity::certificate_request(&self.local).map_err(CertifyError::Request)?;
        let call = self.client.certify(CertifyRequest {
            identity: self.local.to_string(),
            token,
            certificate_signing_request: request.csr_der,
        });
        let answer = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| {
                CertifyError::Refused(tonic::Status::deadline_exceeded(format!(
                    "no answer within {CALL_TIMEOUT:?}"
                )))
            })?
            .map_err(CertifyError::Refused)?
            .into_inner();
        let mut chain = vec![CertificateDer::from(answer.leaf_certificate)];
        chain.extend(
            answer
                .intermediate_certificates
                .into_iter()
                .map(CertificateDer::from),
        );
        let creds = Credentials::from_der(chain, request.key.into(), "certified leaf")
            .map_err(CertifyError::BadCertificate)?;
        creds
            .verify(&self.anchors)
            .map_err(CertifyError::Untrusted)?;
        if creds.identity() != &self.local {
            return Err(CertifyError::WrongName {
                want: self.local.clone(),
                got: creds.identity().clone(),
            });
        }
        Ok(creds)
    }
}

/// When to ask again: at 70 % of the time the certificate has left, as Linkerd's proxy does,
/// within [1 s, 24 h].
pub fn refresh_in(not_after: SystemTime, now: SystemTime) -> Duration {
    let left = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    left.mul_f64(0.7).clamp(MIN_REFRESH, MAX_REFRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_seventy_percent_within_bounds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            refresh_in(now + Duration::from_secs(10), now),
            Duration::from_secs(7)
        );
        assert_eq!(
            refresh_in(now + Duration::from_secs(24 * 3600), now),
            Duration::from_secs(24 * 3600 * 7 / 10)
        );
        assert_eq!(refresh_in(now, now), MIN_REFRESH);
        assert_eq!(refresh_in(now - Duration::from_secs(5), now), MIN_REFRESH);
        assert_eq!(
            refresh_in(now + Duration::from_secs(365 * 24 * 3600), now),
            MAX_REFRESH
        );
    }
}

//! Chain verification against the mesh's trust anchors, with reasons an operator can act on.
//!
//! Path building and signature checks are rustls-webpki's (the same code rustls runs in the
//! handshake); this module maps its verdicts to [`VerifyError`] and extracts the identity.

use std::{path::Path, sync::Arc, time::SystemTime};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::{
    error::{Error, Result, VerifyError},
    inspect::{self, CertInfo},
    name::Identity,
    pem,
};

/// Which side of TLS a certificate must be fit for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
    /// Mesh workloads are both: they accept and originate mTLS.
    Both,
}

/// The set of trusted roots. Several anchors may be trusted at once during a rotation.
#[derive(Clone)]
pub struct TrustAnchors {
    anchors: Arc<[TrustAnchor<'static>]>,
    certs: Arc<[CertificateDer<'static>]>,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchors")
            .field("count", &self.anchors.len())
            .finish()
    }
}

impl TrustAnchors {
    pub fn from_certs(certs: Vec<CertificateDer<'static>>, what: &str) -> Result<Self> {
        let mut anchors = Vec::with_capacity(certs.len());
        for cert in &certs {
            let info = CertInfo::parse(cert).map_err(|e| Error::BadCertificate {
                what: what.to_string(),
                detail: e.to_string(),
            })?;
            if !info.is_ca {
                return Err(Error::NotCa {
                    what: format!("{what} ({})", info.subject),
                });
            }
            let anchor =
                webpki::anchor_from_trusted_cert(cert).map_err(|e| Error::BadCertificate {
                    what: what.to_string(),
                    detail: format!("unusable as a trust anchor: {e}"),
                })?;
            anchors.push(anchor.to_owned());
        }
        Ok(Self {
            anchors: anchors.into(),
            certs: certs.into(),
        })
    }

    pub fn from_pem(pem_text: &[u8], what: &str) -> Result<Self> {
        Self::from_certs(pem::parse_certs(pem_text, what)?, what)
    }

    pub fn load(path: &Path) -> Result<Self> {
        Self::from_pem(&pem::read(path)?, &path.display().to_string())
    }

    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Verifies `leaf` (with `intermediates`) chains to one of these anchors at `now` and is fit
    /// for `usage`; returns the peer identity (first DNS or URI SAN).
    pub fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<Identity, VerifyError> {
        self.verify_chain(leaf, intermediates, now, usage)?;
        inspect::peer_identity(leaf)
    }

    /// The chain and usage checks of [`verify`](Self::verify) without reading the identity:
    /// for a TLS verifier whose caller reads the identity once, after the handshake.
    pub fn verify_chain(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<(), VerifyError> {
        let ee = EndEntityCert::try_from(leaf).map_err(map_webpki)?;
        let algs = crate::tls::provider().signature_verification_algorithms.all;
        let usages: &[KeyUsage] = match usage {
            Usage::Client => &[KeyUsage::client_auth()],
            Usage::Server => &[KeyUsage::server_auth()],
            Usage::Both => &[KeyUsage::client_auth(), KeyUsage::server_auth()],
        };
        for ku in usages {
            ee.verify_for_usage(algs, &self.anchors, intermediates, now, *ku, None, None)
                .map_err(|e| match map_webpki(e) {
                    VerifyError::MissingEku(_) if *ku == KeyUsage::server_auth() => {
                        VerifyError::MissingEku("serverAuth")
                    }
                    other => other,
                })?;
        }
        Ok(())
    }

    /// [`verify`](Self::verify), then require that a DNS or URI SAN equals `expected`.
    pub fn verify_identity(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
        expected: &Identity,
    ) -> Result<Identity, VerifyError> {
        let first = self.verify(leaf, intermediates, now, usage)?;
        check_names(leaf, expected)?;
        Ok(if &first == expected {
            first
        } else {
            expected.clone()
        })
    }
}

/// Linkerd's rule: any DNS or URI SAN of the leaf may match the expected identity.
pub(crate) fn check_names(leaf: &[u8], expected: &Identity) -> Result<(), VerifyError> {
    let names = inspect::san_identities(leaf)?;
    if names.iter().any(|n| n == expected.as_str()) {
        Ok(())
    } else {
        Err(VerifyError::NameMismatch {
            expected: expected.to_string(),
            found: if names.is_empty() {
                "no DNS or URI names".into()
            } else {
                names.join(", ")
            },
        })
    }
}

pub fn now() -> UnixTime {
    UnixTime::now()
}

pub fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

fn ts(t: UnixTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.as_secs() as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{}", t.as_secs()))
}

#[allow(deprecated)]
pub(crate) fn map_webpki(e: webpki::Error) -> VerifyError {
    use webpki::Error as W;
    match e {
        W::CertExpired { time, not_after } => VerifyError::Expired {
            not_after: ts(not_after),
            now: ts(time),
        },
        W::CertNotValidYet { time, not_before } => VerifyError::NotYetValid {
            not_before: ts(not_before),
            now: ts(time),
        },
        W::UnknownIssuer => VerifyError::UnknownIssuer,
        W::EndEntityUsedAsCa => VerifyError::NotACa,
        W::CaUsedAsEndEntity => VerifyError::CaUsedAsLeaf,
        W::PathLenConstraintViolated => VerifyError::PathLength,
        W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) => {
            VerifyError::MissingEku("clientAuth")
        }
        W::InvalidSignatureForPublicKey | W::SignatureAlgorithmMismatch => {
            VerifyError::BadSignature
        }
        W::BadDer | W::BadDerTime | W::TrailingData(_) | W::MalformedExtensions => {
            VerifyError::Malformed(format!("{e:?}"))
        }
        other => VerifyError::Other(format!("{other:?}")),
    }
}

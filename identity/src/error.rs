//! Typed errors. Every `Display` string names what an operator should check,
//! and [`VerifyError::reason`] gives a stable label for logs and metrics.

use std::path::PathBuf;

/// Why an identity name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {0} bytes long; DNS names are at most 253")]
    TooLong(usize),
    #[error("label {0:?} is empty (two dots in a row, or a leading dot)")]
    EmptyLabel(String),
    #[error("label {0:?} is longer than 63 bytes")]
    LabelTooLong(String),
    #[error("label {label:?} contains {ch:?}; only a-z, 0-9 and '-' are allowed")]
    BadChar { label: String, ch: char },
    #[error("label {0:?} starts or ends with '-'")]
    Hyphen(String),
    #[error("not a workload identity: expected <sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>")]
    NotWorkload,
    #[error("URI identity {0:?} must be scheme://rest with no spaces or control characters")]
    BadUri(String),
}

/// Why a certificate chain was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("certificate expired at {not_after} (checked at {now})")]
    Expired { not_after: String, now: String },
    #[error("certificate is not valid before {not_before} (checked at {now}); check the clocks")]
    NotYetValid { not_before: String, now: String },
    #[error("unknown issuer: the chain does not lead to any trusted anchor (is the issuer signed by this trust anchor? are the intermediates included?)")]
    UnknownIssuer,
    #[error("a certificate in the chain signs others but is not a CA (basicConstraints CA:TRUE missing)")]
    NotACa,
    #[error("a CA certificate was presented as the leaf")]
    CaUsedAsLeaf,
    #[error("path length constraint violated: a CA in the chain allows fewer CAs below it")]
    PathLength,
    #[error(
        "missing extended key usage {0} (the certificate may not be used for this side of TLS)"
    )]
    MissingEku(&'static str),
    #[error("certificate has no DNS or URI subject alternative name to take an identity from")]
    NoIdentity,
    #[error("identity mismatch: expected {expected}, certificate names {found}")]
    NameMismatch { expected: String, found: String },
    #[error("a signature in the chain does not verify: a certificate names a trusted issuer but was signed by another key (a different anchor or issuer with the same name?)")]
    BadSignature,
    #[error("certificate could not be parsed: {0}")]
    Malformed(String),
    #[error("certificate rejected: {0}")]
    Other(String),
}

impl VerifyError {
    /// A short, stable label for metrics and structured logs.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Expired { .. } => "expired",
            VerifyError::NotYetValid { .. } => "not_yet_valid",
            VerifyError::UnknownIssuer => "unknown_issuer",
            VerifyError::NotACa => "not_a_ca",
            VerifyError::CaUsedAsLeaf => "ca_used_as_leaf",
            VerifyError::PathLength => "path_length",
            VerifyError::MissingEku(_) => "missing_eku",
            VerifyError::NoIdentity => "no_identity",
            VerifyError::NameMismatch { .. } => "name_mismatch",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::Other(_) => "other",
        }
    }
}

/// Errors from loading, generating and configuring credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid identity {name:?}: {reason}")]
    InvalidName { name: String, reason: NameError },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: no PEM {expected} found")]
    NoPem {
        what: String,
        expected: &'static str,
    },
    #[error("{what}: malformed PEM: {detail}")]
    Pem { what: String, detail: String },
    #[error("{what}: unsupported key ({found}); mesh credentials must be ECDSA P-256")]
    UnsupportedKey { what: String, found: String },
    #[error("{what}: private key does not match the certificate's public key")]
    KeyMismatch { what: String },
    #[error("{what}: {detail}")]
    BadCertificate { what: String, detail: String },
    #[error("{what}: not a CA certificate (basicConstraints CA:TRUE missing); it cannot sign")]
    NotCa { what: String },
    #[error("issuer name {0:?} equals the trust anchor's name; Linkerd cannot verify such chains, pick another (e.g. identity.linkerd.cluster.local)")]
    IssuerSameAsAnchor(String),
    #[error("the signing CA expired at {0}; make a new one before issuing")]
    SignerExpired(String),
    #[error("invalid validity: {0}")]
    Validity(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("random number generator failed")]
    Rng,
    /// A certificate signing request the issuer will not sign (Linkerd's checkCSR rules).
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

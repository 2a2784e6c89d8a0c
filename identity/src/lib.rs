//! Mesh identity: trust anchors, issuers and workload certificates, loading and checking them,
//! and the rustls configs every other part of the project builds its TLS on.
//!
//! - [`name`]: the [`Identity`] name type.
//! - [`generate`]: anchors, issuers and leaves (what `step certificate create` and Linkerd's
//!   identity controller make).
//! - [`pem`]: loading PEM certificates, bundles and keys.
//! - [`verify`]: chaining a leaf to the anchors and taking the peer's identity.
//! - [`inspect`]: a certificate's fields.
//! - [`tls`]: the crypto policy, credential store and rustls verifiers/configs.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod error;
pub mod generate;
pub mod inspect;
pub mod name;
pub mod pem;
pub mod tls;
pub mod verify;

pub use error::{Error, NameError, Result, VerifyError};
pub use generate::{
    certificate_request, issue_for_request, issue_leaf, make_anchor, make_issuer, CertRequest,
    Generated, Issued, LeafOptions, Pki, Signer, Validity,
};
pub use inspect::{peer_identity, CertInfo};
pub use name::Identity;
pub use tls::{client_config, server_config, CertStore, Credentials};
pub use verify::{TrustAnchors, Usage};

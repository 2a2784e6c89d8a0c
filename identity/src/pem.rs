//! Loading certificates and keys from PEM: single certificates, bundles (several anchors
//! during a rotation), leaf-plus-chain files, and PKCS#8 or SEC1 EC keys as written by
//! rcgen, openssl and step.

use std::path::Path;

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// All certificates in a PEM text, in order. Errors if there are none.
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoPem {
            what: what.to_string(),
            expected: "CERTIFICATE",
        });
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert).map_err(|e| Error::BadCertificate {
            what: what.to_string(),
            detail: format!("not an X.509 certificate: {e}"),
        })?;
    }
    Ok(certs)
}

/// All certificates in a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(&read(path)?, &path.display().to_string())
}

/// The first private key in a PEM text: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`, with or
/// without a leading `EC PARAMETERS` block) or PKCS#1 (so RSA keys get a precise refusal later).
pub fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => Error::NoPem {
            what: what.to_string(),
            expected: "PRIVATE KEY",
        },
        other => Error::Pem {
            what: what.to_string(),
            detail: other.to_string(),
        },
    })
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    parse_key(&read(path)?, &path.display().to_string())
}

/// An ECDSA P-256 signing key. Anything else gets [`Error::UnsupportedKey`] naming what it is.
pub fn p256_key_pair(key: &PrivateKeyDer<'_>, what: &str) -> Result<rcgen::KeyPair> {
    if let Ok(kp) = rcgen::KeyPair::from_der_and_sign_algo(key, &rcgen::PKCS_ECDSA_P256_SHA256) {
        return Ok(kp);
    }
    let found = match rcgen::KeyPair::try_from(key) {
        Ok(kp) => describe_alg(kp.algorithm()),
        Err(_) => match key {
            PrivateKeyDer::Pkcs1(_) => "RSA".to_string(),
            _ => "unreadable or unsupported key".to_string(),
        },
    };
    Err(Error::UnsupportedKey {
        what: what.to_string(),
        found,
    })
}

fn describe_alg(alg: &'static rcgen::SignatureAlgorithm) -> String {
    if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384".into()
    } else if alg == &rcgen::PKCS_ED25519 {
        "Ed25519".into()
    } else if alg == &rcgen::PKCS_RSA_SHA256
        || alg == &rcgen::PKCS_RSA_SHA384
        || alg == &rcgen::PKCS_RSA_SHA512
    {
        "RSA".into()
    } else {
        format!("{alg:?}")
    }
}

/// Errors unless `key` is the private half of `cert`'s public key.
pub fn check_key_matches(
    key: &rcgen::KeyPair,
    cert: &CertificateDer<'_>,
    what: &str,
) -> Result<()> {
    use rcgen::PublicKeyData;
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| Error::BadCertificate {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(Error::KeyMismatch {
            what: what.to_string(),
        });
    }
    Ok(())
}

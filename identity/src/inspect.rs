//! Reading a certificate's fields, for `identity inspect`, for start-up checks and for the
//! gateway's certificate-expiry metric.

use serde::Serialize;
use sha2::{Digest, Sha256};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use x509_parser::{
    certificate::X509Certificate,
    extensions::{GeneralName, ParsedExtension},
    oid_registry,
    public_key::PublicKey,
};

use crate::error::VerifyError;

/// The fields of one certificate that an operator checks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// `DNS:name`, `URI:uri`, `IP:addr`, `email:x`.
    pub sans: Vec<String>,
    /// Colon-separated upper-case hex.
    pub serial: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
    #[serde(skip)]
    not_after_unix: i64,
    #[serde(skip)]
    not_before_unix: i64,
    pub key_algorithm: String,
    pub signature_algorithm: String,
    pub is_ca: bool,
    pub path_len: Option<u32>,
    pub key_usage: Vec<String>,
    pub extended_key_usage: Vec<String>,
    pub self_signed: bool,
    /// SHA-256 of the DER, colon-separated upper-case hex.
    pub sha256_fingerprint: String,
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix}"))
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, VerifyError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        Ok(Self::from_x509(&cert, der))
    }

    fn from_x509(cert: &X509Certificate<'_>, der: &[u8]) -> Self {
        let mut info = CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans: Vec::new(),
            serial: colon_hex(cert.raw_serial()),
            not_before: rfc3339(cert.validity().not_before.timestamp()),
            not_after: rfc3339(cert.validity().not_after.timestamp()),
            not_after_unix: cert.validity().not_after.timestamp(),
            not_before_unix: cert.validity().not_before.timestamp(),
            key_algorithm: key_algorithm(cert),
            signature_algorithm: oid_name(&cert.signature_algorithm.algorithm),
            is_ca: false,
            path_len: None,
            key_usage: Vec::new(),
            extended_key_usage: Vec::new(),
            self_signed: cert.subject() == cert.issuer(),
            sha256_fingerprint: colon_hex(&Sha256::digest(der)),
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    info.sans = san.general_names.iter().filter_map(format_name).collect();
                }
                ParsedExtension::BasicConstraints(bc) => {
                    info.is_ca = bc.ca;
                    info.path_len = bc.path_len_constraint;
                }
                ParsedExtension::KeyUsage(ku) => {
                    let flags = [
                        (ku.digital_signature(), "digitalSignature"),
                        (ku.non_repudiation(), "contentCommitment"),
                        (ku.key_encipherment(), "keyEncipherment"),
                        (ku.data_encipherment(), "dataEncipherment"),
                        (ku.key_agreement(), "keyAgreement"),
                        (ku.key_cert_sign(), "keyCertSign"),
                        (ku.crl_sign(), "cRLSign"),
                        (ku.encipher_only(), "encipherOnly"),
                        (ku.decipher_only(), "decipherOnly"),
                    ];
                    info.key_usage = flags
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, n)| n.to_string())
                        .collect();
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    let flags = [
                        (eku.any, "any"),
                        (eku.server_auth, "serverAuth"),
                        (eku.client_auth, "clientAuth"),
                        (eku.code_signing, "codeSigning"),
                        (eku.email_protection, "emailProtection"),
                        (eku.time_stamping, "timeStamping"),
                        (eku.ocsp_signing, "OCSPSigning"),
                    ];
                    info.extended_key_usage = flags
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, n)| n.to_string())
                        .collect();
                    info.extended_key_usage
                        .extend(eku.other.iter().map(|o| o.to_id_string()));
                }
                _ => {}
            }
        }
        info
    }

    /// The subject's commonName, if it has one.
    pub fn subject_cn(&self) -> Option<&str> {
        self.subject
            .split(", ")
            .find_map(|part| part.strip_prefix("CN="))
    }

    pub fn not_after_unix(&self) -> i64 {
        self.not_after_unix
    }

    pub fn not_before_unix(&self) -> i64 {
        self.not_before_unix
    }

    pub(crate) fn not_after_time(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.not_after_unix)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Seconds from `now` until expiry; negative once expired.
    pub fn seconds_left(&self, now: OffsetDateTime) -> i64 {
        self.not_after_unix - now.unix_timestamp()
    }

    /// Human time left, e.g. `23h59m40s` or `expired 2h ago`.
    pub fn time_left(&self, now: OffsetDateTime) -> String {
        let left = self.seconds_left(now);
        let fmt = |s: i64| {
            humantime::format_duration(std::time::Duration::from_secs(s.unsigned_abs()))
                .to_string()
                .replace(' ', "")
        };
        if left >= 0 {
            fmt(left)
        } else {
            format!("expired {} ago", fmt(left))
        }
    }
}

fn format_name(name: &GeneralName<'_>) -> Option<String> {
    Some(match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(ip) => match ip.len() {
            4 => format!(
                "IP:{}",
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?)
            ),
            16 => format!(
                "IP:{}",
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?)
            ),
            _ => return None,
        },
        _ => return None,
    })
}

fn key_algorithm(cert: &X509Certificate<'_>) -> String {
    match cert.public_key().parsed() {
        Ok(PublicKey::EC(_)) => {
            let curve = cert
                .public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve.map(|o| o.to_id_string()).as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".into(),
                Some("1.3.132.0.34") => "ECDSA P-384".into(),
                Some("1.3.132.0.35") => "ECDSA P-521".into(),
                Some(other) => format!("ECDSA {other}"),
                None => "ECDSA".into(),
            }
        }
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(_) => oid_name(&cert.public_key().algorithm.algorithm),
        Err(_) => "unknown".into(),
    }
}

fn oid_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    oid_registry::OidRegistry::default()
        .with_crypto()
        .with_x509()
        .get(oid)
        .map(|e| e.sn().to_string())
        .unwrap_or_else(|| oid.to_id_string())
}

/// The peer identity a certificate carries: its first DNS or URI SAN. This is what Linkerd
/// calls the client id, and what the gateway puts in `l5d-client-id`.
pub fn peer_identity(der: &[u8]) -> Result<crate::Identity, VerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| VerifyError::Malformed(e.to_string()))?
        .ok_or(VerifyError::NoIdentity)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .and_then(|name| crate::Identity::parse(name).ok())
        .ok_or(VerifyError::NoIdentity)
}

/// Every DNS and URI SAN of a certificate, for matching an expected identity.
pub(crate) fn san_identities(der: &[u8]) -> Result<Vec<String>, VerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    Ok(san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

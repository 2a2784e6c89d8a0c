//! rustls configuration for mesh mTLS: the crypto policy in one place, the credential store,
//! and verifiers that check chains against the mesh anchors and identities by SAN, never by
//! the address dialled.

use std::sync::{Arc, OnceLock, RwLock};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        ResolvesClientCert,
    },
    crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ClientHello, ResolvesServerCert,
    },
    sign::CertifiedKey,
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};

use crate::{
    error::{Error, Result, VerifyError},
    inspect::CertInfo,
    name::Identity,
    pem,
    verify::{TrustAnchors, Usage},
};

/// Linkerd's ALPN protocol id for connections that carry a transport header.
pub const ALPN_TRANSPORT_HEADER: &[u8] = b"transport.l5d.io/v1";
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The mesh crypto policy: TLS 1.3 suites AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305
/// (Linkerd proxies before mid-2025 offer ChaCha20 only), and hybrid post-quantum, X25519,
/// P-256 and P-384 key exchange, all from aws-lc-rs.
pub fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        use aws_lc_rs::{cipher_suite as cs, kx_group as kx};
        Arc::new(CryptoProvider {
            cipher_suites: vec![
                cs::TLS13_AES_128_GCM_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
            ],
            kx_groups: vec![kx::X25519MLKEM768, kx::X25519, kx::SECP256R1, kx::SECP384R1],
            ..aws_lc_rs::default_provider()
        })
    })
}

fn sig_algs() -> &'static WebPkiSupportedAlgorithms {
    &provider().signature_verification_algorithms
}

/// A workload's own credentials: its leaf with chain, its P-256 key and its identity.
#[derive(Debug)]
pub struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
    info: CertInfo,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
            info: self.info.clone(),
        }
    }
}

impl Credentials {
    /// Loads `leaf + chain` and its key, checking the key is P-256 and matches the leaf.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Self> {
        let chain = pem::parse_certs(cert_pem, what)?;
        let key = pem::parse_key(key_pem, &format!("{what} key"))?;
        Self::from_der(chain, key, what)
    }

    /// The same checks as [`from_pem`](Self::from_pem), for a chain and key already decoded
    /// (a Certify answer and the key made in memory for it).
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        what: &str,
    ) -> Result<Self> {
        let bad = |e: VerifyError| Error::BadCertificate {
            what: what.to_string(),
            detail: e.to_string(),
        };
        let leaf = chain
            .first()
            .ok_or_else(|| bad(VerifyError::Malformed("no certificate".into())))?;
        let kp = pem::p256_key_pair(&key, &format!("{what} key"))?;
        pem::check_key_matches(&kp, leaf, what)?;
        let info = CertInfo::parse(leaf).map_err(bad)?;
        if info.is_ca {
            return Err(bad(VerifyError::CaUsedAsLeaf));
        }
        let identity = crate::inspect::peer_identity(leaf).map_err(bad)?;
        Ok(Self {
            chain,
            key,
            identity,
            info,
        })
    }

    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        Self::from_pem(
            &pem::read(cert)?,
            &pem::read(key)?,
            &cert.display().to_string(),
        )
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Checks the leaf chains to `anchors` now, for both client and server use.
    pub fn verify(&self, anchors: &TrustAnchors) -> Result<Identity, VerifyError> {
        anchors.verify(
            &self.chain[0],
            &self.chain[1..],
            UnixTime::now(),
            Usage::Both,
        )
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        let key = provider()
            .key_provider
            .load_private_key(self.key.clone_key())?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), key)))
    }
}

/// Holds the current certified key for both the server and client side, so a renewed
/// certificate takes effect on the next handshake without rebuilding configs.
#[derive(Debug, Default)]
pub struct CertStore {
    /// `None` until the first certificate arrives (a workload waiting for Certify):
    /// handshakes fail until then.
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertStore {
    pub fn new(creds: &Credentials) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            current: RwLock::new(Some(creds.certified_key()?)),
        }))
    }

    /// A store with no certificate yet.
    pub fn empty() -> Arc<Self> {
        Arc::default()
    }

    /// Swaps in new credentials (for rotation).
    pub fn set(&self, creds: &Credentials) -> Result<()> {
        let key = Some(creds.certified_key()?);
        match self.current.write() {
            Ok(mut g) => *g = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        // Like Linkerd, present nothing when the server cannot take an ECDSA P-256 signature.
        if schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256) {
            self.get()
        } else {
            None
        }
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// Rejects a verification failure with the TLS alert that fits it best.
fn to_rustls(e: VerifyError) -> rustls::Error {
    let ce = match e {
        VerifyError::Expired { .. } => CertificateError::Expired,
        VerifyError::NotYetValid { .. } => CertificateError::NotValidYet,
        VerifyError::UnknownIssuer => CertificateError::UnknownIssuer,
        VerifyError::MissingEku(_) => CertificateError::InvalidPurpose,
        VerifyError::NameMismatch { .. } => CertificateError::NotValidForName,
        VerifyError::BadSignature => CertificateError::BadSignature,
        VerifyError::Malformed(_) => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

/// A stable label for why a handshake failed, for logs and metrics.
pub fn failure_reason(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(ce) => {
            match ce {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "not_yet_valid"
                }
                CertificateError::UnknownIssuer => "unknown_issuer",
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => "missing_eku",
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => "name_mismatch",
                CertificateError::BadSignature => "bad_signature",
                CertificateError::BadEncoding => "malformed",
                CertificateError::Other(OtherError(inner)) => inner
                    .downcast_ref::<VerifyError>()
                    .map(VerifyError::reason)
                    .unwrap_or("bad_certificate"),
                _ => "bad_certificate",
            }
        }
        E::PeerIncompatible(_) => "incompatible",
        E::NoApplicationProtocol => "no_alpn",
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => "bad_message",
        E::AlertReceived(_) => "alert_received",
        E::PeerMisbehaved(_) => "peer_misbehaved",
        _ => "other",
    }
}

/// Verifies client certificates against the mesh anchors (chain, validity, clientAuth).
#[derive(Debug)]
pub struct MeshClientVerifier {
    anchors: TrustAnchors,
    hints: Vec<DistinguishedName>,
}

impl MeshClientVerifier {
    pub fn new(anchors: TrustAnchors) -> Self {
        let hints = anchors
            .anchors()
            .iter()
            // webpki keeps the Name without its SEQUENCE header; the TLS hint wants it whole.
            .map(|a| DistinguishedName::in_sequence(a.subject.as_ref()))
            .collect();
        Self { anchors, hints }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The caller's identity is read once, by the server after the handshake; here only
        // the chain and the clientAuth usage are checked.
        self.anchors
            .verify_chain(end_entity, intermediates, now, Usage::Client)
            .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, sig_algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, sig_algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        sig_algs().supported_schemes()
    }
}

/// Verifies a server's chain against the mesh anchors and that one of its DNS/URI SANs is the
/// expected identity, whatever address or SNI was used to reach it.
#[derive(Debug)]
pub struct MeshServerVerifier {
    anchors: TrustAnchors,
    expected: Identity,
}

impl MeshServerVerifier {
    pub fn new(anchors: TrustAnchors, expected: Identity) -> Self {
        Self { anchors, expected }
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.anchors
            .verify_identity(
                end_entity,
                intermediates,
                now,
                Usage::Server,
                &self.expected,
            )
            .map_err(to_rustls)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, sig_algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, sig_algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        sig_algs().supported_schemes()
    }
}

/// A TLS 1.3-only server config that presents `store`'s certificate and requires a client
/// certificate chained to `anchors`. `alpn` is in preference order.
pub fn server_config(
    store: Arc<CertStore>,
    anchors: &TrustAnchors,
    alpn: &[&[u8]],
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::new(anchors.clone())))
        .with_cert_resolver(store);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Mesh peers do not resume; tickets would only cost memory.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A TLS 1.3-only client config that presents `store`'s certificate (if any) and accepts only
/// a server proving `expected` under `anchors`.
pub fn client_config(
    store: Option<Arc<CertStore>>,
    anchors: &TrustAnchors,
    expected: Identity,
    alpn: &[&[u8]],
) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier::new(
            anchors.clone(),
            expected,
        )));
    let mut config = match store {
        Some(store) => builder.with_client_cert_resolver(store),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The SNI a mesh client sends: the server's identity.
pub fn server_name(identity: &Identity) -> Result<ServerName<'static>> {
    ServerName::try_from(identity.as_str().to_string()).map_err(|_| Error::InvalidName {
        name: identity.to_string(),
        reason: crate::error::NameError::BadUri(identity.to_string()),
    })
}

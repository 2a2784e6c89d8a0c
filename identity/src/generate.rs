//! Certificate generation: the trust anchor and issuer that `step certificate create` makes in
//! the tutorial, and the workload leaves that Linkerd's identity controller issues.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::{
    error::{Error, Result},
    inspect::CertInfo,
    name::Identity,
    pem,
};

/// Step's `root-ca` default lifetime: ten years.
pub const DEFAULT_ANCHOR_VALIDITY: Duration = Duration::from_secs(87_600 * 3600);
/// The tutorial's `--not-after 8760h` for the issuer.
pub const DEFAULT_ISSUER_VALIDITY: Duration = Duration::from_secs(8_760 * 3600);
/// Linkerd's `issuanceLifetime` default.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Linkerd's `clockSkewAllowance` default, applied at both ends of a leaf's window.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(20);
/// X.520 caps a commonName at 64 characters; longer identities leave the CN empty.
const MAX_CN_LEN: usize = 64;

pub const DEFAULT_ANCHOR_NAME: &str = "root.linkerd.cluster.local";
pub const DEFAULT_ISSUER_NAME: &str = "identity.linkerd.cluster.local";

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The new certificate followed by the chain above it (never the anchor).
    pub cert_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

/// How long a certificate lives, and from when.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start of the window; `None` means now.
    pub not_before: Option<OffsetDateTime>,
    pub lifetime: Duration,
}

impl Validity {
    pub fn from_now(lifetime: Duration) -> Self {
        Self {
            not_before: None,
            lifetime,
        }
    }

    fn window(&self, skew: Duration) -> Result<(OffsetDateTime, OffsetDateTime)> {
        let start = self.not_before.unwrap_or_else(OffsetDateTime::now_utc);
        let to = |d: Duration| {
            time::Duration::try_from(d).map_err(|e| Error::Validity(format!("{d:?}: {e}")))
        };
        if self.lifetime.is_zero() {
            return Err(Error::Validity("lifetime must be greater than zero".into()));
        }
        let not_before = start - to(skew)?;
        let not_after = start
            .checked_add(to(self.lifetime)? + to(skew)?)
            .ok_or_else(|| Error::Validity(format!("{:?} is too long", self.lifetime)))?;
        Ok((truncate(not_before), truncate(not_after)))
    }
}

/// X.509 times have one-second resolution; truncating keeps what we print equal to what we sign.
fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A CA that can sign: its certificate (plus the chain above it) and its P-256 key.
pub struct Signer {
    chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
    info: CertInfo,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.info.subject)
            .finish()
    }
}

impl Signer {
    /// Loads a CA from PEM: the first certificate is the CA itself, any others its chain.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Self> {
        let chain = pem::parse_certs(cert_pem, what)?;
        let key_der = pem::parse_key(key_pem, &format!("{what} key"))?;
        let key = pem::p256_key_pair(&key_der, &format!("{what} key"))?;
        pem::check_key_matches(&key, &chain[0], what)?;
        let info = CertInfo::parse(&chain[0]).map_err(|e| Error::BadCertificate {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
        if !info.is_ca {
            return Err(Error::NotCa {
                what: what.to_string(),
            });
        }
        Ok(Self { chain, key, info })
    }

    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        Self::from_pem(
            &pem::read(cert)?,
            &pem::read(key)?,
            &cert.display().to_string(),
        )
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    fn sign(&self, params: &CertificateParams, key: &KeyPair) -> Result<rcgen::Certificate> {
        let issuer = rcgen::Issuer::from_ca_cert_der(&self.chain[0], &self.key)?;
        Ok(params.signed_by(key, &issuer)?)
    }

    /// The signer's chain without a self-signed root: what a leaf file carries after the leaf.
    fn chain_to_send(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.chain
            .iter()
            .filter(|c| CertInfo::parse(c).map(|i| !i.self_signed).unwrap_or(true))
    }

    fn cap(&self, not_after: OffsetDateTime) -> Result<OffsetDateTime> {
        let ca_end = self.info.not_after_time();
        if ca_end <= OffsetDateTime::now_utc() {
            return Err(Error::SignerExpired(self.info.not_after.clone()));
        }
        Ok(not_after.min(ca_end))
    }
}

fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Rng)?;
    // Positive and of full length, so every serial is 16 bytes and unique with overwhelming odds.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(
    name: &str,
    path_len: u8,
    window: (OffsetDateTime, OffsetDateTime),
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = window.0;
    params.not_after = window.1;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn finish(cert: rcgen::Certificate, key: &KeyPair, chain: Vec<&CertificateDer<'_>>) -> Generated {
    let mut cert_pem = cert.pem();
    for c in chain {
        cert_pem.push_str(&pem_encode(c));
    }
    Generated {
        cert_pem,
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
    }
}

/// PEM text of one DER certificate.
pub fn pem_encode(cert: &CertificateDer<'_>) -> String {
    ::pem::encode(&::pem::Pem::new("CERTIFICATE", cert.as_ref().to_vec()))
}

/// A self-signed trust anchor: CA:TRUE pathlen 1, keyUsage certSign + cRLSign (step's `root-ca`).
pub fn make_anchor(name: &str, validity: Validity) -> Result<Generated> {
    let name = Identity::parse(name)?;
    let params = ca_params(name.as_str(), 1, validity.window(Duration::ZERO)?)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(finish(cert, &key, vec![]))
}

/// An issuer signed by `anchor`: CA:TRUE pathlen 0 (step's `intermediate-ca`). Refuses a name
/// equal to the anchor's, which breaks chain building in Linkerd.
pub fn make_issuer(anchor: &Signer, name: &str, validity: Validity) -> Result<Generated> {
    let name = Identity::parse(name)?;
    if anchor
        .info
        .subject_cn()
        .map(str::to_ascii_lowercase)
        .as_deref()
        == Some(name.as_str())
    {
        return Err(Error::IssuerSameAsAnchor(name.to_string()));
    }
    let (nb, na) = validity.window(Duration::ZERO)?;
    let params = ca_params(name.as_str(), 0, (nb, anchor.cap(na)?))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = anchor.sign(&params, &key)?;
    Ok(finish(cert, &key, anchor.chain_to_send().collect()))
}

/// Options for a workload leaf; the defaults are Linkerd's.
#[derive(Debug, Clone, Copy)]
pub struct LeafOptions {
    pub validity: Validity,
    pub clock_skew: Duration,
}

impl Default for LeafOptions {
    fn default() -> Self {
        Self {
            validity: Validity::from_now(DEFAULT_LEAF_VALIDITY),
            clock_skew: DEFAULT_CLOCK_SKEW,
        }
    }
}

/// A workload certificate for `identity`, as Linkerd's identity controller issues it.
pub fn issue_leaf(issuer: &Signer, identity: &Identity, opts: LeafOptions) -> Result<Generated> {
    let params = leaf_params(issuer, identity, opts)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = issuer.sign(&params, &key)?;
    Ok(finish(cert, &key, issuer.chain_to_send().collect()))
}

fn leaf_params(
    issuer: &Signer,
    identity: &Identity,
    opts: LeafOptions,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if identity.as_str().len() <= MAX_CN_LEN && !identity.is_uri() {
        dn.push(DnType::CommonName, identity.as_str());
    }
    params.distinguished_name = dn;
    params.subject_alt_names = vec![if identity.is_uri() {
        SanType::URI(identity.as_str().try_into()?)
    } else {
        SanType::DnsName(identity.as_str().try_into()?)
    }];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let (nb, na) = opts.validity.window(opts.clock_skew)?;
    params.not_before = nb;
    params.not_after = issuer.cap(na)?;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A key made in memory and the PKCS#10 request for `identity` that Linkerd's Certify API
/// takes: one DNS SAN, the identity, and nothing else.
pub struct CertRequest {
    /// PKCS#8 DER; it never leaves the process.
    pub key: rustls_pki_types::PrivatePkcs8KeyDer<'static>,
    /// The request, DER.
    pub csr_der: Vec<u8>,
}

/// Makes a P-256 key and a signing request for `identity`.
pub fn certificate_request(identity: &Identity) -> Result<CertRequest> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::DnsName(identity.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok(CertRequest {
        key: rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        csr_der: csr.der().to_vec(),
    })
}

/// A certificate issued for a signing request: the leaf and the chain above it (DER).
#[derive(Debug, Clone)]
pub struct Issued {
    pub leaf: CertificateDer<'static>,
    pub intermediates: Vec<CertificateDer<'static>>,
}

/// Signs the key in `csr_der` for `identity`, as Linkerd's identity controller does: the
/// request must carry a valid signature, an ECDSA P-256 key, and exactly one DNS SAN equal to
/// `identity` (no other names), and the leaf gets the same profile as [`issue_leaf`].
pub fn issue_for_request(
    issuer: &Signer,
    csr_der: &[u8],
    identity: &Identity,
    opts: LeafOptions,
) -> Result<Issued> {
    let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
    let csr = rcgen::CertificateSigningRequestParams::from_der(&der)
        .map_err(|e| Error::BadCsr(format!("unreadable: {e}")))?;
    if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(Error::BadCsr("the key is not ECDSA P-256".into()));
    }
    let names: Vec<String> = csr
        .params
        .subject_alt_names
        .iter()
        .map(|n| match n {
            SanType::DnsName(d) => d.as_str().to_ascii_lowercase(),
            other => format!("{other:?}"),
        })
        .collect();
    if names != [identity.as_str()] {
        return Err(Error::BadCsr(format!(
            "it must name exactly {identity}, it names {names:?}"
        )));
    }
    let params = leaf_params(issuer, identity, opts)?;
    let rcgen_issuer = rcgen::Issuer::from_ca_cert_der(&issuer.chain[0], &issuer.key)?;
    let cert = params.signed_by(&csr.public_key, &rcgen_issuer)?;
    Ok(Issued {
        leaf: cert.der().clone(),
        intermediates: issuer.chain_to_send().cloned().collect(),
    })
}

/// A whole mesh PKI in memory: anchor, issuer, and leaves on demand. The demo and the test
/// suites build on it; files come from [`Generated::write`].
pub struct Pki {
    pub anchor: Generated,
    pub issuer: Generated,
    issuer_signer: Signer,
}

impl Pki {
    /// A fresh anchor `root.linkerd.cluster.local` and issuer `identity.linkerd.cluster.local`.
    pub fn new() -> Result<Self> {
        Self::with_names(DEFAULT_ANCHOR_NAME, DEFAULT_ISSUER_NAME)
    }

    pub fn with_names(anchor_name: &str, issuer_name: &str) -> Result<Self> {
        let anchor = make_anchor(anchor_name, Validity::from_now(DEFAULT_ANCHOR_VALIDITY))?;
        let anchor_signer = Signer::from_pem(
            anchor.cert_pem.as_bytes(),
            anchor.key_pem.as_bytes(),
            "anchor",
        )?;
        Self::under(anchor, &anchor_signer, issuer_name)
    }

    /// Another issuer under the same anchor (Linkerd allows one per cluster).
    pub fn sibling(&self, issuer_name: &str) -> Result<Self> {
        let anchor_signer = Signer::from_pem(
            self.anchor.cert_pem.as_bytes(),
            self.anchor.key_pem.as_bytes(),
            "anchor",
        )?;
        Self::under(self.anchor.clone(), &anchor_signer, issuer_name)
    }

    fn under(anchor: Generated, anchor_signer: &Signer, issuer_name: &str) -> Result<Self> {
        let issuer = make_issuer(
            anchor_signer,
            issuer_name,
            Validity::from_now(DEFAULT_ISSUER_VALIDITY),
        )?;
        let issuer_signer = Signer::from_pem(
            issuer.cert_pem.as_bytes(),
            issuer.key_pem.as_bytes(),
            "issuer",
        )?;
        Ok(Self {
            anchor,
            issuer,
            issuer_signer,
        })
    }

    pub fn issuer_signer(&self) -> &Signer {
        &self.issuer_signer
    }

    /// A leaf for `identity` with Linkerd's defaults.
    pub fn leaf(&self, identity: &str) -> Result<Generated> {
        self.leaf_with(identity, LeafOptions::default())
    }

    pub fn leaf_with(&self, identity: &str, opts: LeafOptions) -> Result<Generated> {
        issue_leaf(&self.issuer_signer, &Identity::parse(identity)?, opts)
    }

    pub fn anchors(&self) -> Result<crate::TrustAnchors> {
        crate::TrustAnchors::from_pem(self.anchor.cert_pem.as_bytes(), "anchor")
    }

    pub fn credentials(&self, identity: &str) -> Result<crate::Credentials> {
        self.leaf(identity)?.credentials()
    }
}

impl Generated {
    pub fn credentials(&self) -> Result<crate::Credentials> {
        crate::Credentials::from_pem(
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
            "generated",
        )
    }

    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key` (0600), overwriting.
    pub fn write(
        &self,
        dir: &std::path::Path,
        stem: &str,
    ) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        use std::os::unix::fs::PermissionsExt;
        let crt = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::write(&crt, &self.cert_pem).map_err(io(&crt))?;
        std::fs::write(&key, &self.key_pem).map_err(io(&key))?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(io(&key))?;
        Ok((crt, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str =
        "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local";

    #[test]
    fn leaf_window_has_skew_at_both_ends() {
        let pki = Pki::new().unwrap();
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let leaf = pki.leaf(GW).unwrap();
        let after = OffsetDateTime::now_utc().unix_timestamp();
        let info = CertInfo::parse(&leaf.cert_der).unwrap();
        assert!(
            (before - 21..=after - 20).contains(&info.not_before_unix()),
            "{info:?}"
        );
        assert!(
            (before + 86_400 + 19..=after + 86_400 + 20).contains(&info.not_after_unix()),
            "{info:?}"
        );
        // The gateway's identity is too long for a CN: the subject is empty, the SAN carries it.
        assert_eq!(info.subject, "");
        assert_eq!(info.sans, vec![format!("DNS:{GW}")]);
        assert_eq!(info.extended_key_usage, ["serverAuth", "clientAuth"]);
        assert_eq!(info.key_usage, ["digitalSignature", "keyEncipherment"]);
        assert!(!info.is_ca);
        // Short identities keep CN = identity.
        let short = pki
            .leaf("web.emojivoto.serviceaccount.identity.linkerd.cluster.local")
            .unwrap();
        assert_eq!(
            CertInfo::parse(&short.cert_der).unwrap().subject_cn(),
            Some("web.emojivoto.serviceaccount.identity.linkerd.cluster.local")
        );
    }

    #[test]
    fn leaf_is_capped_at_issuer_expiry() {
        let anchor =
            make_anchor("root.test", Validity::from_now(Duration::from_secs(3600))).unwrap();
        let signer =
            Signer::from_pem(anchor.cert_pem.as_bytes(), anchor.key_pem.as_bytes(), "a").unwrap();
        // The issuer asks for a year but the anchor lives an hour.
        let issuer = make_issuer(
            &signer,
            "issuer.test",
            Validity::from_now(DEFAULT_ISSUER_VALIDITY),
        )
        .unwrap();
        let a = CertInfo::parse(&anchor.cert_der).unwrap();
        let i = CertInfo::parse(&issuer.cert_der).unwrap();
        assert_eq!(i.not_after_unix(), a.not_after_unix());
        let isigner =
            Signer::from_pem(issuer.cert_pem.as_bytes(), issuer.key_pem.as_bytes(), "i").unwrap();
        let leaf = issue_leaf(
            &isigner,
            &Identity::parse("a.b.serviceaccount.identity.l.td").unwrap(),
            LeafOptions::default(),
        )
        .unwrap();
        assert_eq!(
            CertInfo::parse(&leaf.cert_der).unwrap().not_after_unix(),
            a.not_after_unix()
        );
    }

    #[test]
    fn expired_signer_refuses_to_issue() {
        let anchor = make_anchor(
            "root.test",
            Validity {
                not_before: Some(OffsetDateTime::now_utc() - time::Duration::days(2)),
                lifetime: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let signer =
            Signer::from_pem(anchor.cert_pem.as_bytes(), anchor.key_pem.as_bytes(), "a").unwrap();
        let err = make_issuer(
            &signer,
            "issuer.test",
            Validity::from_now(Duration::from_secs(60)),
        )
        .unwrap_err();
        assert!(matches!(err, Error::SignerExpired(_)), "{err}");
    }

    #[test]
    fn serials_are_unique_and_positive() {
        let pki = Pki::new().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let leaf = pki
                .leaf("a.b.serviceaccount.identity.linkerd.cluster.local")
                .unwrap();
            let info = CertInfo::parse(&leaf.cert_der).unwrap();
            assert_eq!(info.serial.len(), 16 * 3 - 1);
            assert!(seen.insert(info.serial));
        }
    }

    #[test]
    fn a_request_made_in_memory_is_signed_for_its_identity_only() {
        let pki = Pki::new().unwrap();
        let id = Identity::parse(
            "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local",
        )
        .unwrap();
        let req = certificate_request(&id).unwrap();
        let issued = issue_for_request(
            pki.issuer_signer(),
            &req.csr_der,
            &id,
            LeafOptions::default(),
        )
        .unwrap();
        let mut chain = vec![issued.leaf];
        chain.extend(issued.intermediates);
        let creds = crate::Credentials::from_der(chain, req.key.into(), "certified").unwrap();
        assert_eq!(creds.verify(&pki.anchors().unwrap()).unwrap(), id);
        // Asking for someone else's name with this request is refused.
        let other =
            Identity::parse("web.emojivoto.serviceaccount.identity.linkerd.cluster.local").unwrap();
        let err = issue_for_request(
            pki.issuer_signer(),
            &req.csr_der,
            &other,
            LeafOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::BadCsr(_)), "{err}");
        assert!(matches!(
            issue_for_request(pki.issuer_signer(), b"junk", &id, LeafOptions::default()),
            Err(Error::BadCsr(_))
        ));
    }

    #[test]
    fn round_trip_through_pem_and_verify() {
        let pki = Pki::new().unwrap();
        let anchors = pki.anchors().unwrap();
        for id in [
            GW,
            "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local",
            "spiffe://cluster.local/ns/a/sa/b",
        ] {
            let leaf = pki.leaf(id).unwrap();
            let creds = leaf.credentials().unwrap();
            assert_eq!(creds.identity().as_str(), id);
            assert_eq!(creds.chain().len(), 2, "leaf + issuer, no anchor");
            assert_eq!(creds.verify(&anchors).unwrap().as_str(), id);
        }
        // A second issuer under the same anchor verifies under the same anchors.
        let east = pki.sibling("identity-east.linkerd.cluster.local").unwrap();
        assert_eq!(
            east.credentials(GW)
                .unwrap()
                .verify(&anchors)
                .unwrap()
                .as_str(),
            GW
        );
    }
}

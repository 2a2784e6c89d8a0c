//! The rustls configs over real loopback sockets: who gets in, who is refused, and why.

use std::{sync::Arc, time::Duration};

use identity::{
    tls::{self, failure_reason, CertStore, ALPN_H2, ALPN_TRANSPORT_HEADER},
    CertInfo, Identity, LeafOptions, Pki, Validity,
};
use rustls::{ClientConfig, ServerConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const GW: &str =
    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local";
const VOTE_BOT: &str = "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local";

struct Outcome {
    server: Result<(Identity, Option<Vec<u8>>, rustls::SupportedCipherSuite), rustls::Error>,
    client: Result<(), std::io::Error>,
}

/// One handshake between the configs; the server reports the client's identity, the ALPN and
/// the suite it negotiated, or the rustls error it failed with.
async fn handshake(server: ServerConfig, client: ClientConfig) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let (_, conn) = tls.get_ref();
                let id = identity::peer_identity(&conn.peer_certificates().unwrap()[0]).unwrap();
                let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                let suite = conn.negotiated_cipher_suite().unwrap();
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.unwrap();
                tls.write_all(&buf).await.unwrap();
                tls.shutdown().await.ok();
                Ok((id, alpn, suite))
            }
            Err(e) => Err(e
                .into_inner()
                .and_then(|inner| inner.downcast::<rustls::Error>().ok())
                .map(|b| *b)
                .unwrap_or(rustls::Error::General("io".into()))),
        }
    });
    let connector = TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tls::server_name(&Identity::parse(GW).unwrap()).unwrap();
    let client = async {
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    };
    let client = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .unwrap();
    let server = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    Outcome { server, client }
}

fn server_cfg(pki: &Pki, alpn: &[&[u8]]) -> ServerConfig {
    let store = CertStore::new(&pki.credentials(GW).unwrap()).unwrap();
    tls::server_config(store, &pki.anchors().unwrap(), alpn).unwrap()
}

fn client_cfg(pki: &Pki, client_pki: &Pki, alpn: &[&[u8]]) -> ClientConfig {
    let store = CertStore::new(&client_pki.credentials(VOTE_BOT).unwrap()).unwrap();
    tls::client_config(
        Some(store),
        &pki.anchors().unwrap(),
        Identity::parse(GW).unwrap(),
        alpn,
    )
    .unwrap()
}

#[tokio::test]
async fn mutual_tls_carries_identities_and_alpn() {
    let pki = Pki::new().unwrap();
    let out = handshake(
        server_cfg(&pki, &[ALPN_TRANSPORT_HEADER, ALPN_H2]),
        client_cfg(&pki, &pki, &[ALPN_TRANSPORT_HEADER]),
    )
    .await;
    out.client.unwrap();
    let (id, alpn, _) = out.server.unwrap();
    assert_eq!(id.as_str(), VOTE_BOT);
    assert_eq!(alpn.as_deref(), Some(ALPN_TRANSPORT_HEADER));
}

#[tokio::test]
async fn clients_under_another_issuer_of_the_same_anchor_are_accepted() {
    let east = Pki::new().unwrap();
    let west = east.sibling("identity-west.linkerd.cluster.local").unwrap();
    let out = handshake(server_cfg(&east, &[]), client_cfg(&east, &west, &[])).await;
    out.client.unwrap();
    assert_eq!(out.server.unwrap().0.as_str(), VOTE_BOT);
}

#[tokio::test]
async fn chacha20_only_clients_are_served() {
    // Linkerd proxies before mid-2025 offer only TLS13_CHACHA20_POLY1305_SHA256.
    let pki = Pki::new().unwrap();
    let mut provider = (**tls::provider()).clone();
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let verifier = Arc::new(tls::MeshServerVerifier::new(
        pki.anchors().unwrap(),
        Identity::parse(GW).unwrap(),
    ));
    let client = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(CertStore::new(&pki.credentials(VOTE_BOT).unwrap()).unwrap());
    let out = handshake(server_cfg(&pki, &[]), client).await;
    out.client.unwrap();
    let (_, _, suite) = out.server.unwrap();
    assert_eq!(
        suite.suite(),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
}

#[tokio::test]
async fn refusals_carry_their_reason() {
    let pki = Pki::new().unwrap();
    let other = Pki::with_names("root.other.example", "issuer.other.example").unwrap();

    // No client certificate.
    let client = tls::client_config(
        None,
        &pki.anchors().unwrap(),
        Identity::parse(GW).unwrap(),
        &[],
    )
    .unwrap();
    let out = handshake(server_cfg(&pki, &[]), client).await;
    assert!(out.client.is_err());
    assert_eq!(failure_reason(&out.server.unwrap_err()), "no_client_cert");

    // A client under another anchor.
    let out = handshake(server_cfg(&pki, &[]), client_cfg(&pki, &other, &[])).await;
    assert!(out.client.is_err());
    assert_eq!(failure_reason(&out.server.unwrap_err()), "unknown_issuer");

    // An expired client certificate.
    let expired = pki
        .leaf_with(
            VOTE_BOT,
            LeafOptions {
                validity: Validity {
                    not_before: Some(time::OffsetDateTime::now_utc() - time::Duration::days(2)),
                    lifetime: Duration::from_secs(3600),
                },
                clock_skew: Duration::from_secs(20),
            },
        )
        .unwrap()
        .credentials()
        .unwrap();
    let client = tls::client_config(
        Some(CertStore::new(&expired).unwrap()),
        &pki.anchors().unwrap(),
        Identity::parse(GW).unwrap(),
        &[],
    )
    .unwrap();
    let out = handshake(server_cfg(&pki, &[]), client).await;
    assert!(out.client.is_err());
    assert_eq!(failure_reason(&out.server.unwrap_err()), "expired");

    // The client expects another identity from the server: the client refuses.
    let client = tls::client_config(
        Some(CertStore::new(&pki.credentials(VOTE_BOT).unwrap()).unwrap()),
        &pki.anchors().unwrap(),
        Identity::parse("web.emojivoto.serviceaccount.identity.linkerd.cluster.local").unwrap(),
        &[],
    )
    .unwrap();
    let out = handshake(server_cfg(&pki, &[]), client).await;
    let err = out.client.unwrap_err();
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap();
    assert_eq!(failure_reason(&inner), "name_mismatch");
    assert!(out.server.is_err());

    // A TLS 1.2-only client.
    let mut client12 = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(tls::MeshServerVerifier::new(
        pki.anchors().unwrap(),
        Identity::parse(GW).unwrap(),
    )))
    .with_client_cert_resolver(CertStore::new(&pki.credentials(VOTE_BOT).unwrap()).unwrap());
    client12.alpn_protocols.clear();
    let out = handshake(server_cfg(&pki, &[]), client12).await;
    assert!(out.client.is_err());
    assert_eq!(failure_reason(&out.server.unwrap_err()), "incompatible");

    // ALPN required by the server but not offered.
    let out = handshake(
        server_cfg(&pki, &[ALPN_TRANSPORT_HEADER]),
        client_cfg(&pki, &pki, &[b"foo"]),
    )
    .await;
    assert!(out.client.is_err());
    assert_eq!(failure_reason(&out.server.unwrap_err()), "no_alpn");
}

#[tokio::test]
async fn rotation_takes_effect_on_the_next_handshake() {
    let pki = Pki::new().unwrap();
    let first = pki.credentials(GW).unwrap();
    let store = CertStore::new(&first).unwrap();
    let server = tls::server_config(store.clone(), &pki.anchors().unwrap(), &[]).unwrap();
    let server = Arc::new(server);

    let serial_seen = |pki: &Pki, server: Arc<ServerConfig>| {
        let client = client_cfg(pki, pki, &[]);
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let srv = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = TlsAcceptor::from(server).accept(tcp).await.unwrap();
                tls.shutdown().await.ok();
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = TlsConnector::from(Arc::new(client))
                .connect(
                    tls::server_name(&Identity::parse(GW).unwrap()).unwrap(),
                    tcp,
                )
                .await
                .unwrap();
            let serial = CertInfo::parse(&tls.get_ref().1.peer_certificates().unwrap()[0])
                .unwrap()
                .serial;
            srv.await.unwrap();
            serial
        }
    };
    assert_eq!(serial_seen(&pki, server.clone()).await, first.info().serial);
    let second = pki.credentials(GW).unwrap();
    store.set(&second).unwrap();
    assert_eq!(serial_seen(&pki, server).await, second.info().serial);
}

//! Interop with openssl: our certificates pass `openssl verify` and an `s_server`/`s_client`
//! mutual-TLS handshake, and certificates openssl makes with step's profiles load, sign and
//! verify with ours. Every refusal is checked for its reason through the library and the CLI.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use identity::{Identity, TrustAnchors, Usage, VerifyError};

const BIN: &str = env!("CARGO_BIN_EXE_identity");
const VOTE_BOT: &str = "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local";
const GATEWAY: &str =
    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local";

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn identity(dir: &Path, args: &[&str]) -> Output {
    run(Command::new(BIN).current_dir(dir).args(args))
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    ok(Command::new("openssl").current_dir(dir).args(args))
}

/// root.crt/key, issuer.crt/key and a leaf for `name` in `dir`, made by our CLI.
fn cli_pki(dir: &Path) {
    for args in [
        &["anchor", "--out", "root.crt", "--key-out", "root.key"][..],
        &[
            "issuer",
            "--ca",
            "root.crt",
            "--ca-key",
            "root.key",
            "--out",
            "issuer.crt",
            "--key-out",
            "issuer.key",
            "--not-after",
            "8760h",
        ],
        &[
            "issue",
            "--ca",
            "issuer.crt",
            "--ca-key",
            "issuer.key",
            "--sa",
            "vote-bot",
            "--ns",
            "emojivoto",
            "--out",
            "vote-bot.crt",
            "--key-out",
            "vote-bot.key",
        ],
        &[
            "issue",
            "--ca",
            "issuer.crt",
            "--ca-key",
            "issuer.key",
            "--name",
            GATEWAY,
            "--out",
            "gw.crt",
            "--key-out",
            "gw.key",
        ],
    ] {
        let out = identity(dir, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn verify_cli(dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["verify", "--anchors", "root.crt"];
    args.extend_from_slice(extra);
    let out = identity(dir, &args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lib_verify(
    dir: &Path,
    anchors: &str,
    leaf: &str,
    usage: Usage,
) -> Result<Identity, VerifyError> {
    let anchors = TrustAnchors::load(&dir.join(anchors)).unwrap();
    let mut chain = identity::pem::load_certs(&dir.join(leaf)).unwrap();
    let leaf = chain.remove(0);
    anchors.verify(&leaf, &chain, identity::verify::now(), usage)
}

#[test]
fn openssl_verifies_our_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    cli_pki(d);
    // --out holds the leaf then the issuer; openssl wants the leaf alone.
    openssl(d, &["x509", "-in", "vote-bot.crt", "-out", "leaf-only.crt"]);
    let out = openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "root.crt",
            "-untrusted",
            "issuer.crt",
            "leaf-only.crt",
        ],
    );
    assert!(out.contains("leaf-only.crt: OK"), "{out}");
    let out = openssl(
        d,
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "root.crt",
            "-untrusted",
            "issuer.crt",
            "leaf-only.crt",
        ],
    );
    assert!(out.contains("OK"), "{out}");
    let out = openssl(
        d,
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "root.crt",
            "-untrusted",
            "issuer.crt",
            "leaf-only.crt",
        ],
    );
    assert!(out.contains("OK"), "{out}");
    // Keys are private.
    use std::os::unix::fs::PermissionsExt;
    for k in ["root.key", "issuer.key", "vote-bot.key"] {
        let mode = std::fs::metadata(d.join(k)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{k}");
    }
    // openssl reads our keys and agrees they match the certificates.
    for (crt, key) in [("root.crt", "root.key"), ("vote-bot.crt", "vote-bot.key")] {
        let a = openssl(d, &["x509", "-in", crt, "-noout", "-pubkey"]);
        let b = openssl(d, &["pkey", "-in", key, "-pubout"]);
        assert_eq!(a, b);
    }
    let text = openssl(d, &["x509", "-in", "root.crt", "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");
    assert!(text.contains("Key Usage: critical"), "{text}");
    let text = openssl(d, &["x509", "-in", "issuer.crt", "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    let text = openssl(d, &["x509", "-in", "gw.crt", "-noout", "-text"]);
    assert!(text.contains(&format!("DNS:{GATEWAY}")), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn openssl_mutual_tls_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    cli_pki(d);
    let port = free_port().to_string();
    let _server = Child(
        Command::new("openssl")
            .current_dir(d)
            .args([
                "s_server",
                "-accept",
                &port,
                "-4",
                "-tls1_3",
                "-cert",
                "gw.crt",
                "-key",
                "gw.key",
                "-cert_chain",
                "issuer.crt",
                "-CAfile",
                "root.crt",
                "-Verify",
                "2",
                "-verify_return_error",
                "-www",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port.parse().unwrap())).is_err() {
        assert!(Instant::now() < deadline, "s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = Command::new("openssl")
        .current_dir(d)
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-tls1_3",
            "-cert",
            "vote-bot.crt",
            "-key",
            "vote-bot.key",
            "-cert_chain",
            "issuer.crt",
            "-CAfile",
            "root.crt",
            "-verify_return_error",
            "-servername",
            GATEWAY,
            "-ign_eof",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    let out = client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    // s_server -www answers with the session it saw, including the client certificate it
    // verified against root.crt.
    assert!(stdout.contains("HTTP/1.0 200 ok"), "{stdout}");
    assert!(stdout.contains("Client certificate"), "{stdout}");
    assert!(
        stdout.contains("Subject: CN=vote-bot.emojivoto"),
        "{stdout}"
    );
}

/// openssl configs equivalent to step's root-ca / intermediate-ca templates and a Linkerd leaf.
const EXT: &str = r#"
[root_ca]
basicConstraints = critical, CA:TRUE, pathlen:1
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[intermediate_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local
[server_only]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local
"#;

/// An openssl-made PKI: SEC1 keys (with an EC PARAMETERS block) for the CAs, like
/// `openssl ecparam -genkey` writes them.
fn openssl_pki(d: &Path, prefix: &str, root_name: &str) {
    std::fs::write(d.join("ext.cnf"), EXT).unwrap();
    let f = |s: &str| format!("{prefix}{s}");
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            &f("root.key"),
        ],
    );
    let root_cnf = format!(
        "[req]\ndistinguished_name = dn\nx509_extensions = root_ca\nprompt = no\n[dn]\nCN = {root_name}\n{EXT}"
    );
    std::fs::write(d.join("root.cnf"), root_cnf).unwrap();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &f("root.key"),
            "-days",
            "3650",
            "-sha256",
            "-config",
            "root.cnf",
            "-out",
            &f("root.crt"),
        ],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            &f("issuer.key"),
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            &f("issuer.key"),
            "-subj",
            "/CN=identity.linkerd.cluster.local",
            "-out",
            &f("issuer.csr"),
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &f("issuer.csr"),
            "-CA",
            &f("root.crt"),
            "-CAkey",
            &f("root.key"),
            "-CAcreateserial",
            "-days",
            "365",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "intermediate_ca",
            "-out",
            &f("issuer.crt"),
        ],
    );
}

fn openssl_leaf(d: &Path, prefix: &str, ext: &str, ca: &str, ca_key: &str, out: &str) {
    let f = |s: &str| format!("{prefix}{s}");
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &f(&format!("{out}.key")),
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            &f(&format!("{out}.key")),
            "-subj",
            "/CN=vote-bot",
            "-out",
            &f(&format!("{out}.csr")),
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &f(&format!("{out}.csr")),
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-extensions",
            ext,
            "-out",
            &f(&format!("{out}.crt")),
        ],
    );
}

#[test]
fn openssl_made_step_profile_certs_load_sign_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    openssl_pki(d, "", "root.linkerd.cluster.local");
    openssl_leaf(d, "", "leaf", "issuer.crt", "issuer.key", "leaf");
    // The library verifies an all-openssl chain.
    let leaf_with_chain = format!(
        "{}{}",
        std::fs::read_to_string(d.join("leaf.crt")).unwrap(),
        std::fs::read_to_string(d.join("issuer.crt")).unwrap()
    );
    std::fs::write(d.join("leaf-chain.crt"), leaf_with_chain).unwrap();
    assert_eq!(
        lib_verify(d, "root.crt", "leaf-chain.crt", Usage::Both)
            .unwrap()
            .as_str(),
        VOTE_BOT
    );
    let (okay, stdout, stderr) = verify_cli(d, &["--intermediates", "issuer.crt", "leaf.crt"]);
    assert!(okay, "{stderr}");
    assert_eq!(stdout.trim(), VOTE_BOT);
    // Our CLI signs with an openssl-made SEC1 issuer key, and the result verifies with openssl.
    let out = identity(
        d,
        &[
            "issue",
            "--ca",
            "issuer.crt",
            "--ca-key",
            "issuer.key",
            "--sa",
            "web",
            "--ns",
            "emojivoto",
            "--out",
            "web.crt",
            "--key-out",
            "web.key",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    openssl(d, &["x509", "-in", "web.crt", "-out", "web-only.crt"]);
    let v = openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "root.crt",
            "-untrusted",
            "issuer.crt",
            "web-only.crt",
        ],
    );
    assert!(v.contains("OK"), "{v}");
    // And makes an issuer under an openssl-made SEC1 anchor.
    let out = identity(
        d,
        &[
            "issuer",
            "--ca",
            "root.crt",
            "--ca-key",
            "root.key",
            "--name",
            "issuer2.linkerd.cluster.local",
            "--out",
            "i2.crt",
            "--key-out",
            "i2.key",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // inspect reads openssl's certificates.
    let out = identity(d, &["inspect", "issuer.crt", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["is_ca"], true);
    assert_eq!(v[0]["path_len"], 0);
    assert_eq!(v[0]["key_algorithm"], "ECDSA P-256");
}

#[test]
fn each_bad_leaf_is_refused_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    cli_pki(d);
    openssl_pki(d, "other-", "root.other.example");
    openssl_pki(d, "twin-", "root.linkerd.cluster.local");

    // Under another anchor.
    openssl_leaf(
        d,
        "",
        "leaf",
        "other-issuer.crt",
        "other-issuer.key",
        "foreign",
    );
    assert_eq!(
        lib_verify(d, "root.crt", "foreign.crt", Usage::Client),
        Err(VerifyError::UnknownIssuer)
    );
    let (okay, _, err) = verify_cli(d, &["--intermediates", "other-issuer.crt", "foreign.crt"]);
    assert!(!okay && err.contains("unknown issuer"), "{err}");
    // Under another anchor that carries the same name as ours: the names chain, the keys don't.
    openssl_leaf(d, "", "leaf", "twin-issuer.crt", "twin-issuer.key", "twin");
    let (okay, _, err) = verify_cli(d, &["--intermediates", "twin-issuer.crt", "twin.crt"]);
    assert!(
        !okay && err.contains("[bad_signature]") && err.contains("same name"),
        "{err}"
    );

    // Without clientAuth.
    openssl_leaf(d, "", "server_only", "issuer.crt", "issuer.key", "srvonly");
    assert_eq!(
        lib_verify(d, "root.crt", "srvonly.crt", Usage::Client)
            .err()
            .map(|e| e.reason()),
        Some("missing_eku")
    );
    let (okay, _, err) = verify_cli(
        d,
        &[
            "--intermediates",
            "issuer.crt",
            "srvonly.crt",
            "--usage",
            "client",
        ],
    );
    assert!(
        !okay && err.contains("missing extended key usage clientAuth"),
        "{err}"
    );
    // It is still a fine server certificate.
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(d.join("srvonly.crt")).unwrap(),
        std::fs::read_to_string(d.join("issuer.crt")).unwrap()
    );
    std::fs::write(d.join("srvonly-chain.crt"), chain).unwrap();
    assert_eq!(
        lib_verify(d, "root.crt", "srvonly-chain.crt", Usage::Server)
            .unwrap()
            .as_str(),
        VOTE_BOT
    );

    // A CA certificate used as the leaf.
    assert_eq!(
        lib_verify(d, "root.crt", "issuer.crt", Usage::Client),
        Err(VerifyError::CaUsedAsLeaf)
    );
    let (okay, _, err) = verify_cli(d, &["issuer.crt"]);
    assert!(
        !okay && err.contains("CA certificate was presented as the leaf"),
        "{err}"
    );

    // Expired and not yet valid, made by our CLI with explicit windows.
    let out = identity(
        d,
        &[
            "issue",
            "--ca",
            "issuer.crt",
            "--ca-key",
            "issuer.key",
            "--sa",
            "old",
            "--ns",
            "ns",
            "--not-before",
            "2020-01-01T00:00:00Z",
            "--not-after",
            "1h",
            "--out",
            "old.crt",
            "--key-out",
            "old.key",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(
        lib_verify(d, "root.crt", "old.crt", Usage::Both),
        Err(VerifyError::Expired { .. })
    ));
    let (okay, _, err) = verify_cli(d, &["old.crt"]);
    assert!(
        !okay && err.contains("expired at 2020-01-01T01:00:20Z"),
        "{err}"
    );
    let future = (time::OffsetDateTime::now_utc() + time::Duration::days(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = identity(
        d,
        &[
            "issue",
            "--ca",
            "issuer.crt",
            "--ca-key",
            "issuer.key",
            "--sa",
            "new",
            "--ns",
            "ns",
            "--not-before",
            &future,
            "--out",
            "new.crt",
            "--key-out",
            "new.key",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(
        lib_verify(d, "root.crt", "new.crt", Usage::Both),
        Err(VerifyError::NotYetValid { .. })
    ));
    let (okay, _, err) = verify_cli(d, &["new.crt"]);
    assert!(!okay && err.contains("not valid before"), "{err}");
    // --at moves the check into the window (the whole chain is checked at that time: the
    // issuer did not exist in 2020, so the old leaf cannot be revived that way).
    let later =
        (time::OffsetDateTime::now_utc() + time::Duration::days(3) + time::Duration::hours(1))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
    let (okay, out, err) = verify_cli(d, &["new.crt", "--at", &later]);
    assert!(okay, "{err}");
    assert_eq!(
        out.trim(),
        "new.ns.serviceaccount.identity.linkerd.cluster.local"
    );
    let (okay, _, err) = verify_cli(d, &["old.crt", "--at", "2020-01-01T00:30:00Z"]);
    assert!(!okay && err.contains("[not_yet_valid]"), "{err}");

    // A leaf signing another leaf: not a CA.
    openssl(d, &["x509", "-in", "vote-bot.crt", "-out", "vb-only.crt"]);
    openssl_leaf(d, "", "leaf", "vb-only.crt", "vote-bot.key", "underleaf");
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(d.join("underleaf.crt")).unwrap(),
        std::fs::read_to_string(d.join("vote-bot.crt")).unwrap()
    );
    std::fs::write(d.join("underleaf-chain.crt"), chain).unwrap();
    assert_eq!(
        lib_verify(d, "root.crt", "underleaf-chain.crt", Usage::Client),
        Err(VerifyError::NotACa)
    );
    let (okay, _, err) = verify_cli(d, &["underleaf-chain.crt"]);
    assert!(!okay && err.contains("not a CA"), "{err}");

    // Path length: the issuer (pathlen 0) signs another CA.
    let out = identity(
        d,
        &[
            "issuer",
            "--ca",
            "issuer.crt",
            "--ca-key",
            "issuer.key",
            "--name",
            "sub.linkerd.cluster.local",
            "--out",
            "sub.crt",
            "--key-out",
            "sub.key",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = identity(
        d,
        &[
            "issue",
            "--ca",
            "sub.crt",
            "--ca-key",
            "sub.key",
            "--sa",
            "deep",
            "--ns",
            "ns",
            "--out",
            "deep.crt",
            "--key-out",
            "deep.key",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lib_verify(d, "root.crt", "deep.crt", Usage::Client),
        Err(VerifyError::PathLength)
    );
    let (okay, _, err) = verify_cli(d, &["deep.crt"]);
    assert!(!okay && err.contains("path length"), "{err}");

    // Name mismatch.
    let (okay, _, err) = verify_cli(d, &["vote-bot.crt", "--identity", GATEWAY]);
    assert!(!okay && err.contains("identity mismatch"), "{err}");
    let (okay, out, _) = verify_cli(d, &["vote-bot.crt", "--identity", VOTE_BOT]);
    assert!(okay);
    assert_eq!(out.trim(), VOTE_BOT);
}

#[test]
fn bad_input_gets_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    cli_pki(d);
    std::fs::write(d.join("junk.pem"), "hello, not pem\n").unwrap();
    openssl(d, &["genrsa", "-out", "rsa.key", "2048"]);
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            "p384.key",
        ],
    );
    let cases: &[(&[&str], &str)] = &[
        (&["inspect", "missing.crt"], "missing.crt: No such file"),
        (&["inspect", "junk.pem"], "no PEM CERTIFICATE found"),
        (
            &[
                "issue",
                "--ca",
                "issuer.crt",
                "--ca-key",
                "rsa.key",
                "--sa",
                "a",
                "--ns",
                "b",
                "--out",
                "x.crt",
                "--key-out",
                "x.key",
            ],
            "unsupported key (RSA)",
        ),
        (
            &[
                "issue",
                "--ca",
                "issuer.crt",
                "--ca-key",
                "p384.key",
                "--sa",
                "a",
                "--ns",
                "b",
                "--out",
                "x.crt",
                "--key-out",
                "x.key",
            ],
            "unsupported key (ECDSA P-384)",
        ),
        (
            &[
                "issue",
                "--ca",
                "issuer.crt",
                "--ca-key",
                "root.key",
                "--sa",
                "a",
                "--ns",
                "b",
                "--out",
                "x.crt",
                "--key-out",
                "x.key",
            ],
            "does not match",
        ),
        (
            &[
                "issue",
                "--ca",
                "issuer.crt",
                "--ca-key",
                "junk.pem",
                "--sa",
                "a",
                "--ns",
                "b",
                "--out",
                "x.crt",
                "--key-out",
                "x.key",
            ],
            "no PEM PRIVATE KEY found",
        ),
        (
            &[
                "issue",
                "--ca",
                "vote-bot.crt",
                "--ca-key",
                "vote-bot.key",
                "--sa",
                "a",
                "--ns",
                "b",
                "--out",
                "x.crt",
                "--key-out",
                "x.key",
            ],
            "not a CA certificate",
        ),
        (
            &[
                "issue",
                "--ca",
                "issuer.crt",
                "--ca-key",
                "issuer.key",
                "--sa",
                "A_b",
                "--ns",
                "b",
                "--out",
                "x.crt",
                "--key-out",
                "x.key",
            ],
            "contains '_'",
        ),
        (
            &[
                "issuer",
                "--ca",
                "root.crt",
                "--ca-key",
                "root.key",
                "--name",
                "root.linkerd.cluster.local",
                "--out",
                "x.crt",
                "--key-out",
                "x.key",
            ],
            "equals the trust anchor's name",
        ),
        (
            &["anchor", "--out", "root.crt", "--key-out", "new.key"],
            "root.crt exists; pass --force",
        ),
        (
            &["verify", "--anchors", "vote-bot.crt", "vote-bot.crt"],
            "not a CA certificate",
        ),
    ];
    for (args, want) in cases {
        let out = identity(d, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Nothing half-written by the refusals.
    assert!(!d.join("x.crt").exists() && !d.join("x.key").exists() && !d.join("new.key").exists());
    // --force overwrites, and an overwritten key is tightened to 0600.
    std::fs::write(d.join("k.key"), "old").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("k.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = identity(
        d,
        &[
            "anchor",
            "--out",
            "root.crt",
            "--key-out",
            "k.key",
            "--force",
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        std::fs::metadata(d.join("k.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

//! `cargo xtask demo --doks` against recording fakes of doctl, kubectl and linkerd (no cloud is
//! reachable here): the sequence and arguments of a fresh run, a re-run that skips what is done,
//! fast failures without a CLI or credentials, cleanup, and the --dry-run plan as a golden file.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const FAKE: &str = r#"#!/usr/bin/env bash
# Records its invocation, answers like the real CLI would for this flow.
echo "$(basename "$0") $*" >> "$FAKE_LOG"
tool=$(basename "$0")
args="$*"
exists() { [ -n "$FAKE_ALL_EXIST" ]; }
case "$tool" in
  doctl)
    case "$args" in
      "account get") [ -z "$FAKE_NO_AUTH" ] && echo "user@example.com" || { echo "Error: unable to initialize DigitalOcean API client: access token is required" >&2; exit 1; } ;;
      "kubernetes cluster get "*) exists || { echo "Error: not found" >&2; exit 1; } ;;
    esac ;;
  kubectl)
    case "$args" in
      "kustomize "*) exec "$REAL_KUBECTL" $args ;;
      *" apply -f -"|*" delete --ignore-not-found -f -") cat > /dev/null ;;
      "config get-contexts "*) exists || exit 1 ;;
      *" get deploy linkerd-gateway -o jsonpath="*) exists && echo -n meshgate ;;
      *" get "*) exists || { echo "Error from server (NotFound)" >&2; exit 1; } ;;
      *" logs "*) [ -n "$FAKE_NO_MTLS" ] && exit 0; echo '{"level":"INFO","target":"access","client_id":"vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local","tls":true,"authority":"web-svc.emojivoto.svc.cluster.local:80","status":200}' ;;
    esac ;;
  linkerd)
    case "$args" in
      *"multicluster gateways") printf 'CLUSTER  ALIVE    NUM_SVC      LATENCY\neast     True           1        148ms\n' ;;
      *) echo "kind: List" ;;
    esac ;;
esac
exit 0
"#;

struct Env {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    log: PathBuf,
    dir: PathBuf,
}

fn env(tools: &[&str]) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for t in tools {
        let p = bin.join(t);
        std::fs::write(&p, FAKE).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let log = tmp.path().join("calls.log");
    let dir = tmp.path().join("pki");
    Env {
        bin,
        log,
        dir,
        _tmp: tmp,
    }
}

fn real_kubectl() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v kubectl"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn xtask(e: &Env, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    // Only the fakes and the basic system tools: no real cloud CLI can be reached.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["demo", "--doks", "--dir"])
        .arg(&e.dir)
        .args(args)
        .env("PATH", format!("{}:/usr/bin:/bin", e.bin.display()))
        .env("FAKE_LOG", &e.log)
        .env("REAL_KUBECTL", real_kubectl())
        .env("XTASK_VERIFY_INTERVAL_SECS", "0");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn calls(e: &Env) -> Vec<String> {
    std::fs::read_to_string(&e.log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Asserts `want` appear in `got` in this order (other calls may come between).
fn in_order(got: &[String], want: &[&str]) {
    let mut i = 0;
    for w in want {
        match got[i..]
            .iter()
            .position(|g| g == w || (w.ends_with('*') && g.starts_with(&w[..w.len() - 1])))
        {
            Some(p) => i += p + 1,
            None => panic!("missing or out of order: {w:?}\ncalls:\n{}", got.join("\n")),
        }
    }
}

#[test]
fn fresh_run_follows_the_tutorial() {
    let e = env(&["doctl", "kubectl", "linkerd"]);
    let out = xtask(&e, &["--image", "registry.example/gateway:1"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = e.dir.display();
    let got = calls(&e);
    in_order(&got, &[
        "doctl account get",
        "doctl kubernetes cluster create west --region sfo3 --count 3 --size s-8vcpu-16gb --wait",
        "doctl kubernetes cluster create east --region syd1 --count 3 --size s-8vcpu-16gb --wait",
        "doctl kubernetes cluster kubeconfig save west",
        "kubectl config rename-context do-sfo3-west west",
        "doctl kubernetes cluster kubeconfig save east",
        "kubectl config rename-context do-syd1-east east",
        "linkerd install --crds",
        "kubectl --context=west apply -f -",
        &format!("linkerd install --identity-trust-anchors-file {d}/root.crt --identity-issuer-certificate-file {d}/issuer.crt --identity-issuer-key-file {d}/issuer.key"),
        "kubectl --context=west apply -f -",
        "linkerd --context=west check",
        "linkerd install --crds",
        "kubectl --context=east apply -f -",
        "linkerd --context=east check",
        "linkerd --context=west multicluster install",
        "linkerd --context=west viz install",
        "linkerd --context=east multicluster install --gateway=false",
        "linkerd --context=east viz install",
        &format!("kubectl --context=east -n linkerd-multicluster create configmap linkerd-identity-trust-roots --from-file=ca-bundle.crt={d}/root.crt"),
        "kubectl kustomize *",
        "kubectl --context=east apply -f -",
        "kubectl --context=east -n linkerd-multicluster rollout status deployment/linkerd-gateway --timeout=5m",
        "linkerd --context=east multicluster link --cluster-name east",
        "kubectl --context=west apply -f -",
        "kubectl --context=west -n emojivoto delete deploy voting web emoji --ignore-not-found",
        "kubectl --context=east -n emojivoto delete deploy vote-bot --ignore-not-found",
        "kubectl --context=east -n emojivoto label svc web-svc mirror.linkerd.io/exported=true --overwrite",
        "kubectl --context=west -n emojivoto set env deployment/vote-bot WEB_HOST=web-svc-east.emojivoto:80",
        "kubectl --context=east -n linkerd-multicluster logs deploy/linkerd-gateway --since=5m",
        "linkerd --context=west multicluster gateways",
    ]);
    // The anchor and issuer were made with the identity crate, as `step` would have, and chain;
    // no certificate was made for the gateway, which gets its own from linkerd-identity.
    let anchors = identity::TrustAnchors::load(&e.dir.join("root.crt")).unwrap();
    let issuer = identity::Signer::from_pem(
        &std::fs::read(e.dir.join("issuer.crt")).unwrap(),
        &std::fs::read(e.dir.join("issuer.key")).unwrap(),
        "issuer.crt",
    )
    .unwrap();
    let id = identity::Identity::parse(
        "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local",
    )
    .unwrap();
    let leaf = identity::issue_leaf(&issuer, &id, identity::LeafOptions::default()).unwrap();
    assert_eq!(leaf.credentials().unwrap().verify(&anchors).unwrap(), id);
    assert!(!e.dir.join("gateway.crt").exists() && !e.dir.join("gateway.key").exists());
    assert!(
        stdout.contains("gateway saw vote-bot over mTLS: true; probe alive: true"),
        "{stdout}"
    );
    assert!(
        stdout.contains("linkerd viz dashboard --context west"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sed 's#meshgate/gateway:0.1.0#registry.example/gateway:1#'"),
        "{stdout}"
    );
}

#[test]
fn rerun_skips_finished_steps() {
    let e = env(&["doctl", "kubectl", "linkerd"]);
    // A first run made the PKI; now every cluster-side object exists too.
    assert!(xtask(&e, &[], &[]).status.success());
    std::fs::remove_file(&e.log).unwrap();
    let out = xtask(&e, &[], &[("FAKE_ALL_EXIST", "1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let got = calls(&e);
    for mutating in [
        "cluster create",
        "rename-context",
        "install --crds",
        "install --identity",
        "multicluster install",
        "viz install",
        "create configmap",
        "multicluster link",
    ] {
        assert!(
            !got.iter().any(|c| c.contains(mutating)),
            "re-run ran {mutating:?}:\n{}",
            got.join("\n")
        );
    }
    for done in [
        "already done: cluster west",
        "already done: PKI",
        "already done: control plane on east",
        "already done: gateway trust roots",
        "already done: link east",
    ] {
        assert!(stdout.contains(done), "{done}: {stdout}");
    }
}

#[test]
fn missing_cli_or_credentials_stop_at_once() {
    let e = env(&["doctl", "kubectl"]);
    let out = xtask(&e, &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("missing on PATH: linkerd (https://linkerd.io/2/getting-started/)"),
        "{err}"
    );
    assert!(calls(&e).is_empty(), "ran commands: {:?}", calls(&e));

    let e = env(&["doctl", "kubectl", "linkerd"]);
    let out = xtask(&e, &[], &[("FAKE_NO_AUTH", "1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("doctl is not authenticated: run `doctl auth init`"),
        "{err}"
    );
    assert_eq!(calls(&e), ["doctl account get"]);
}

#[test]
fn cleanup_removes_what_it_made() {
    let e = env(&["doctl", "kubectl", "linkerd"]);
    let out = xtask(&e, &["--cleanup", "--delete-clusters"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    in_order(
        &calls(&e),
        &[
            "linkerd --context=west multicluster unlink --cluster-name east",
            "kubectl --context=west delete --ignore-not-found -f -",
            "kubectl --context=east delete --ignore-not-found -f -",
            "linkerd --context=west viz uninstall",
            "linkerd --context=west multicluster uninstall",
            "linkerd --context=west uninstall",
            "linkerd --context=east uninstall",
            "doctl kubernetes cluster delete west --force",
            "doctl kubernetes cluster delete east --force",
        ],
    );
}

fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/doks-dry-run.txt")
}

#[test]
fn dry_run_prints_the_plan_and_needs_no_cli() {
    let e = env(&[]);
    let out = xtask(&e, &["--dry-run"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(calls(&e).is_empty());
    assert!(!e.dir.exists(), "dry run wrote files");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .display()
        .to_string();
    let text = String::from_utf8_lossy(&out.stdout)
        .replace(&e.dir.display().to_string(), "<dir>")
        .replace(&repo, "<repo>");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden_path(), &text).unwrap();
    }
    let want = std::fs::read_to_string(golden_path())
        .expect("golden file; create it with UPDATE_GOLDEN=1");
    assert_eq!(
        text, want,
        "dry-run plan changed; if intended, re-run with UPDATE_GOLDEN=1"
    );
}

#[test]
fn verification_fails_when_the_gateway_never_sees_vote_bot() {
    let e = env(&["doctl", "kubectl", "linkerd"]);
    let out = xtask(&e, &["--verify-attempts", "2"], &[("FAKE_NO_MTLS", "1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("attempt 2: gateway saw vote-bot over mTLS: false; probe alive: true"),
        "{stdout}"
    );
    assert!(stderr.contains("verification failed"), "{stderr}");
    assert!(!stdout.contains("==> done"), "{stdout}");
}

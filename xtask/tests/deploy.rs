//! deploy/: every overlay renders with `kubectl kustomize`, every object passes strict schema
//! validation for the DOKS Kubernetes version (unknown fields rejected), and the gateway keeps
//! the contract `linkerd multicluster link` and the probes read.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

const K8S_VERSION: &str = "1.32.0";
const GATEWAY_ID: &str =
    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local";

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn render(overlay: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy().join(overlay))
        .output()
        .expect("kubectl (kustomize) must be installed; `cargo xtask test` installs it");
    assert!(
        out.status.success(),
        "kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn validate(yaml: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", K8S_VERSION])
        .arg(&file)
        .output()
        .expect("kubernetes-validate must be installed (pip install kubernetes-validate); `cargo xtask test` installs it");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The rendered documents as JSON values (PyYAML comes with kubernetes-validate).
fn objects(yaml: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

#[test]
fn every_overlay_renders_and_validates_strictly() {
    for overlay in ["gateway", "emojivoto", "demo/east", "demo/west"] {
        let yaml = render(overlay);
        validate(&yaml).unwrap_or_else(|e| panic!("{overlay}: {e}"));
        // The certificate Secret is made at deploy time, never committed.
        assert!(
            objects(&yaml).iter().all(|o| o["kind"] != "Secret"),
            "{overlay} renders a Secret"
        );
    }
    // The validator does reject what it should: an unknown field.
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  bogus: 1\n  ports: [{port: 1}]\n";
    assert!(
        validate(bad).is_err(),
        "strict validation accepted an unknown field"
    );
}

#[test]
fn gateway_service_has_what_link_reads() {
    let objs = objects(&render("gateway"));
    let svc = find(&objs, "Service", "linkerd-gateway").expect("Service linkerd-gateway");
    assert_eq!(svc["metadata"]["namespace"], "linkerd-multicluster");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    let a = &svc["metadata"]["annotations"];
    assert_eq!(a["mirror.linkerd.io/gateway-identity"], GATEWAY_ID);
    assert_eq!(a["mirror.linkerd.io/probe-path"], "/ready");
    assert_eq!(a["mirror.linkerd.io/probe-period"], "3");
    let ports: Vec<(String, i64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("mc-gateway".to_string(), 4143),
            ("mc-probe".to_string(), 4191)
        ]
    );
    assert_eq!(svc["spec"]["selector"]["app"], "linkerd-gateway");
    // What the LoadBalancer publishes: the gateway port, and behind `mc-probe` the pod's
    // probe listener (only /ready), never the admin port with /metrics.
    let targets: Vec<&Value> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["targetPort"])
        .collect();
    assert_eq!(targets, [&Value::from(4143), &Value::from("gateway-probe")]);
    let d = find(&objs, "Deployment", "linkerd-gateway").expect("Deployment");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let named = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_i64())
    };
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_string)
    };
    assert_eq!(named("gateway-probe"), Some(4181));
    assert_eq!(env("GATEWAY_PROBE_LISTEN").as_deref(), Some("0.0.0.0:4181"));
    assert_eq!(named("linkerd-admin"), Some(4191));
    assert_eq!(
        env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR").as_deref(),
        Some("0.0.0.0:4191")
    );
    // Tap: viz's tap server finds a tap-enabled pod and calls its control port as its own
    // identity; the Service publishes neither.
    assert_eq!(named("linkerd-tap"), Some(4190));
    assert_eq!(
        env("LINKERD2_PROXY_CONTROL_LISTEN_ADDR").as_deref(),
        Some("0.0.0.0:4190")
    );
    assert_eq!(
        env("LINKERD2_PROXY_TAP_SVC_NAME").as_deref(),
        Some("tap.linkerd-viz.serviceaccount.identity.linkerd.cluster.local")
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["viz.linkerd.io/tap-enabled"],
        "true"
    );
    assert!(
        find(&objs, "ServiceAccount", "linkerd-gateway").is_some(),
        "the identity comes from this SA"
    );
}

#[test]
fn gateway_deployment_is_hardened_and_probed() {
    let objs = objects(&render("gateway"));
    let d = find(&objs, "Deployment", "linkerd-gateway").expect("Deployment");
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(spec["serviceAccountName"], "linkerd-gateway");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["linkerd.io/inject"],
        "disabled"
    );
    assert!(spec["topologySpreadConstraints"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    let ports: Vec<i64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [4143, 4191, 4181, 4190]);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 4191);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live");
    // The grace period covers preStop plus the gateway's drain.
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap();
    let drain: i64 = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("--drain-timeout="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .unwrap();
    assert!(spec["terminationGracePeriodSeconds"].as_i64().unwrap() > pre_stop + drain);
    assert!(find(&objs, "PodDisruptionBudget", "linkerd-gateway").is_some());
    assert!(find(&objs, "HorizontalPodAutoscaler", "linkerd-gateway").is_some());
}

#[test]
fn demo_overlays_match_the_tutorial() {
    let east = objects(&render("demo/east"));
    assert!(
        find(&east, "Deployment", "vote-bot").is_none(),
        "east runs no vote-bot"
    );
    for d in ["web", "emoji", "voting", "linkerd-gateway"] {
        assert!(find(&east, "Deployment", d).is_some(), "east lacks {d}");
    }
    let web = find(&east, "Service", "web-svc").unwrap();
    assert_eq!(
        web["metadata"]["labels"]["mirror.linkerd.io/exported"],
        "true"
    );
    // `--doks` verifies the demo from the gateway's access lines, which are off by default.
    let gw_args = &find(&east, "Deployment", "linkerd-gateway").unwrap()["spec"]["template"]
        ["spec"]["containers"][0]["args"];
    assert!(
        gw_args
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--access-log"),
        "{gw_args}"
    );
    let west = objects(&render("demo/west"));
    for d in ["web", "emoji", "voting"] {
        assert!(find(&west, "Deployment", d).is_none(), "west still has {d}");
    }
    let bot = find(&west, "Deployment", "vote-bot").unwrap();
    assert_eq!(
        bot["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "web-svc-east.emojivoto:80"
    );
    for o in east
        .iter()
        .chain(&west)
        .filter(|o| o["kind"] == "Deployment" && o["metadata"]["namespace"] == "emojivoto")
    {
        assert_eq!(
            o["spec"]["template"]["metadata"]["annotations"]["linkerd.io/inject"],
            "enabled"
        );
        let image = o["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap();
        assert!(
            image.starts_with("docker.l5d.io/buoyantio/emojivoto-") && image.ends_with(":v11"),
            "{image}"
        );
    }
}

#[test]
fn gateway_runs_as_a_member_of_the_mesh() {
    let objs = objects(&render("gateway"));
    let d = find(&objs, "Deployment", "linkerd-gateway").expect("Deployment");
    let spec = &d["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let env: std::collections::HashMap<&str, &Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let value = |name: &str| {
        env.get(name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name} not set"))
    };
    assert_eq!(
        value("LINKERD2_PROXY_IDENTITY_SVC_ADDR"),
        "linkerd-identity-headless.linkerd.svc.cluster.local.:8080"
    );
    assert_eq!(
        value("LINKERD2_PROXY_DESTINATION_SVC_ADDR"),
        "linkerd-dst-headless.linkerd.svc.cluster.local.:8086"
    );
    assert_eq!(
        value("LINKERD2_PROXY_POLICY_SVC_ADDR"),
        "linkerd-policy.linkerd.svc.cluster.local.:8090"
    );
    assert_eq!(
        value("LINKERD2_PROXY_IDENTITY_LOCAL_NAME"),
        "$(_pod_sa).$(_pod_ns).serviceaccount.identity.linkerd.cluster.local"
    );
    assert_eq!(
        env["LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS"]["valueFrom"]["configMapKeyRef"]["name"],
        "linkerd-identity-trust-roots"
    );
    // The token Certify presents, projected for linkerd-identity alone.
    let token_file = value("LINKERD2_PROXY_IDENTITY_TOKEN_FILE");
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "linkerd-identity-token")
        .expect("projected token volume");
    let sa = &volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sa["audience"], "identity.l5d.io");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "linkerd-identity-token")
        .expect("token mount");
    assert_eq!(
        format!(
            "{}/{}",
            mount["mountPath"].as_str().unwrap(),
            sa["path"].as_str().unwrap()
        ),
        token_file
    );
    // No certificate or key from files: nothing of the kind is mounted.
    assert!(spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v.get("secret").is_none()));
    let args = c["args"].as_array().unwrap();
    assert!(
        args.iter()
            .all(|a| !a.as_str().unwrap().starts_with("--cert")
                && !a.as_str().unwrap().starts_with("--key")),
        "{args:?}"
    );
}

//! `cargo xtask demo --doks`: the tutorial for real on DigitalOcean Kubernetes, with our gateway
//! in place of `linkerd-gateway`. Every command is printed before it runs (`--dry-run` prints
//! them only); each step first checks whether it is already done, so a re-run picks up where
//! the last one stopped.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};
use identity::{generate, Signer, Validity};

use crate::demo::VOTE_BOT_ID;

pub struct DoksOptions {
    pub dry_run: bool,
    pub cleanup: bool,
    pub delete_clusters: bool,
    pub nodes: u32,
    pub size: String,
    pub west_region: String,
    pub east_region: String,
    pub image: String,
    pub dir: PathBuf,
    pub verify_attempts: u32,
    pub verify_interval: Duration,
}

/// The image name in deploy/gateway/kustomization.yaml, replaced by `--image`.
const BASE_IMAGE: &str = "meshgate/gateway:0.1.0";

struct Shell {
    dry_run: bool,
}

fn quote(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
            {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Shell {
    fn show(&self, line: &str) {
        println!("$ {line}");
    }

    /// Runs a command that changes something; fails the step if it fails.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        self.show(&quote(args));
        if self.dry_run {
            return Ok(String::new());
        }
        stdout_of(args)
    }

    /// Whether a read-only check succeeds (never run in a dry run: everything counts as to do).
    fn check(&self, args: &[&str]) -> bool {
        if self.dry_run {
            return false;
        }
        Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Output of a read-only command, if it succeeds.
    fn query(&self, args: &[&str]) -> Option<String> {
        if self.dry_run {
            return None;
        }
        let out = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `from | to`, with an optional rewrite of the text in between (shown as sed).
    fn pipe(
        &self,
        from: &[&str],
        rewrite: Option<(&str, &str)>,
        to: &[&str],
    ) -> anyhow::Result<()> {
        let middle = rewrite
            .map(|(a, b)| format!(" | sed 's#{a}#{b}#'"))
            .unwrap_or_default();
        self.show(&format!("{}{middle} | {}", quote(from), quote(to)));
        if self.dry_run {
            return Ok(());
        }
        let mut text = stdout_of(from)?;
        if let Some((a, b)) = rewrite {
            text = text.replace(a, b);
        }
        let mut child = Command::new(to[0])
            .args(&to[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", to[0]))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}",
                quote(to),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Runs `args`; its stdout, or an error naming the command and its stderr.
fn stdout_of(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            quote(args),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(n: &mut u32, title: &str) {
    *n += 1;
    println!("\n==> [{n}] {title}");
}

fn skip(what: &str) {
    println!("    already done: {what}");
}

const TOOLS: &[(&str, &str)] = &[
    (
        "doctl",
        "https://docs.digitalocean.com/reference/doctl/how-to/install/",
    ),
    ("kubectl", "https://kubernetes.io/docs/tasks/tools/"),
    ("linkerd", "https://linkerd.io/2/getting-started/"),
];

fn preflight(sh: &Shell) -> anyhow::Result<()> {
    if sh.dry_run {
        return Ok(());
    }
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| !in_path(t))
        .map(|(t, url)| format!("{t} ({url})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing on PATH: {}", missing.join(", "));
    }
    if !sh.check(&["doctl", "account", "get"]) {
        bail!("doctl is not authenticated: run `doctl auth init` with a DigitalOcean API token");
    }
    Ok(())
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// The tutorial's `step certificate create` pair, made with the identity crate; shown as the
/// equivalent `identity` commands. The gateway needs no certificate of its own: it gets one
/// from linkerd-identity like any meshed workload.
fn pki(sh: &Shell, dir: &Path) -> anyhow::Result<()> {
    let p = |f: &str| dir.join(f).display().to_string();
    let (root, root_key, issuer, issuer_key) = (
        p("root.crt"),
        p("root.key"),
        p("issuer.crt"),
        p("issuer.key"),
    );
    sh.show(&quote(&[
        "identity",
        "anchor",
        "--out",
        &root,
        "--key-out",
        &root_key,
    ]));
    sh.show(&quote(&[
        "identity",
        "issuer",
        "--ca",
        &root,
        "--ca-key",
        &root_key,
        "--out",
        &issuer,
        "--key-out",
        &issuer_key,
        "--not-after",
        "8760h",
    ]));
    if sh.dry_run {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let anchor = generate::make_anchor(
        generate::DEFAULT_ANCHOR_NAME,
        Validity::from_now(generate::DEFAULT_ANCHOR_VALIDITY),
    )?;
    anchor.write(dir, "root")?;
    let anchor = Signer::from_pem(
        anchor.cert_pem.as_bytes(),
        anchor.key_pem.as_bytes(),
        "root.crt",
    )?;
    let iss = generate::make_issuer(
        &anchor,
        generate::DEFAULT_ISSUER_NAME,
        Validity::from_now(generate::DEFAULT_ISSUER_VALIDITY),
    )?;
    iss.write(dir, "issuer")?;
    Ok(())
}

pub fn run(opts: DoksOptions) -> anyhow::Result<()> {
    let sh = Shell {
        dry_run: opts.dry_run,
    };
    if opts.dry_run {
        println!("# dry run: commands are printed, nothing is run");
    }
    preflight(&sh)?;
    if opts.cleanup {
        return cleanup(&sh, &opts);
    }
    let clusters = [
        ("west", opts.west_region.as_str()),
        ("east", opts.east_region.as_str()),
    ];
    let dir = &opts.dir;
    let root = crate::workspace_root();
    let f = |name: &str| dir.join(name).display().to_string();
    let mut n = 0;

    step(&mut n, "clusters: west (sfo3) and east (syd1)");
    for (name, region) in clusters {
        if sh.check(&["doctl", "kubernetes", "cluster", "get", name]) {
            skip(&format!("cluster {name}"));
        } else {
            sh.run(&[
                "doctl",
                "kubernetes",
                "cluster",
                "create",
                name,
                "--region",
                region,
                "--count",
                &opts.nodes.to_string(),
                "--size",
                &opts.size,
                "--wait",
            ])?;
        }
    }

    step(&mut n, "kubeconfig and context names");
    for (name, region) in clusters {
        if sh.check(&["kubectl", "config", "get-contexts", name]) {
            skip(&format!("context {name}"));
            continue;
        }
        sh.run(&["doctl", "kubernetes", "cluster", "kubeconfig", "save", name])?;
        sh.run(&[
            "kubectl",
            "config",
            "rename-context",
            &format!("do-{region}-{name}"),
            name,
        ])?;
    }

    step(&mut n, "trust anchor and issuer (identity instead of step)");
    if !opts.dry_run && dir.join("root.crt").exists() && dir.join("issuer.crt").exists() {
        skip(&format!("PKI in {}", dir.display()));
    } else {
        pki(&sh, dir)?;
    }

    step(
        &mut n,
        "Linkerd CRDs and control plane, with the shared trust anchor",
    );
    for (ctx, _) in clusters {
        let c = format!("--context={ctx}");
        if sh.check(&["kubectl", &c, "get", "crd", "servers.policy.linkerd.io"]) {
            skip(&format!("CRDs on {ctx}"));
        } else {
            sh.pipe(
                &["linkerd", "install", "--crds"],
                None,
                &["kubectl", &c, "apply", "-f", "-"],
            )?;
        }
        if sh.check(&[
            "kubectl",
            &c,
            "-n",
            "linkerd",
            "get",
            "deploy",
            "linkerd-destination",
        ]) {
            skip(&format!("control plane on {ctx}"));
        } else {
            sh.pipe(
                &[
                    "linkerd",
                    "install",
                    "--identity-trust-anchors-file",
                    &f("root.crt"),
                    "--identity-issuer-certificate-file",
                    &f("issuer.crt"),
                    "--identity-issuer-key-file",
                    &f("issuer.key"),
                ],
                None,
                &["kubectl", &c, "apply", "-f", "-"],
            )?;
        }
        sh.run(&["linkerd", &c, "check"])?;
    }

    step(&mut n, "multicluster and viz extensions");
    for (ctx, _) in clusters {
        let c = format!("--context={ctx}");
        for (ext, ns) in [
            ("multicluster", "linkerd-multicluster"),
            ("viz", "linkerd-viz"),
        ] {
            if sh.check(&["kubectl", &c, "get", "ns", ns]) {
                skip(&format!("{ext} on {ctx}"));
            } else {
                // East's gateway is ours: install the extension without Linkerd's.
                let mut install = vec!["linkerd", c.as_str(), ext, "install"];
                if ext == "multicluster" && ctx == "east" {
                    install.push("--gateway=false");
                }
                sh.pipe(&install, None, &["kubectl", &c, "apply", "-f", "-"])?;
            }
        }
    }

    step(&mut n, "east: our gateway in place of linkerd-gateway");
    // The gateway reads the mesh's anchors from this ConfigMap (a copy of linkerd's
    // linkerd-identity-trust-roots: ConfigMaps cannot be read across namespaces).
    if sh.check(&[
        "kubectl",
        "--context=east",
        "-n",
        "linkerd-multicluster",
        "get",
        "configmap",
        "linkerd-identity-trust-roots",
    ]) {
        skip("gateway trust roots");
    } else {
        sh.run(&[
            "kubectl",
            "--context=east",
            "-n",
            "linkerd-multicluster",
            "create",
            "configmap",
            "linkerd-identity-trust-roots",
            &format!("--from-file=ca-bundle.crt={}", f("root.crt")),
        ])?;
    }
    let east_overlay = root.join("deploy/demo/east").display().to_string();
    let west_overlay = root.join("deploy/demo/west").display().to_string();
    let rewrite = (opts.image != BASE_IMAGE).then_some((BASE_IMAGE, opts.image.as_str()));
    sh.pipe(
        &["kubectl", "kustomize", &east_overlay],
        rewrite,
        &["kubectl", "--context=east", "apply", "-f", "-"],
    )?;
    sh.run(&[
        "kubectl",
        "--context=east",
        "-n",
        "linkerd-multicluster",
        "rollout",
        "status",
        "deployment/linkerd-gateway",
        "--timeout=5m",
    ])?;

    step(&mut n, "link east into west");
    if sh.check(&[
        "kubectl",
        "--context=west",
        "-n",
        "linkerd-multicluster",
        "get",
        "links.multicluster.linkerd.io",
        "east",
    ]) {
        skip("link east");
    } else {
        sh.pipe(
            &[
                "linkerd",
                "--context=east",
                "multicluster",
                "link",
                "--cluster-name",
                "east",
            ],
            None,
            &["kubectl", "--context=west", "apply", "-f", "-"],
        )?;
    }

    step(&mut n, "emojivoto, as the tutorial trims it");
    sh.pipe(
        &["kubectl", "kustomize", &west_overlay],
        None,
        &["kubectl", "--context=west", "apply", "-f", "-"],
    )?;
    sh.run(&[
        "kubectl",
        "--context=west",
        "-n",
        "emojivoto",
        "delete",
        "deploy",
        "voting",
        "web",
        "emoji",
        "--ignore-not-found",
    ])?;
    sh.run(&[
        "kubectl",
        "--context=west",
        "-n",
        "emojivoto",
        "delete",
        "svc",
        "voting-svc",
        "web-svc",
        "emoji-svc",
        "--ignore-not-found",
    ])?;
    sh.run(&[
        "kubectl",
        "--context=east",
        "-n",
        "emojivoto",
        "delete",
        "deploy",
        "vote-bot",
        "--ignore-not-found",
    ])?;

    step(&mut n, "export web-svc and point vote-bot at web-svc-east");
    sh.run(&[
        "kubectl",
        "--context=east",
        "-n",
        "emojivoto",
        "label",
        "svc",
        "web-svc",
        "mirror.linkerd.io/exported=true",
        "--overwrite",
    ])?;
    sh.run(&[
        "kubectl",
        "--context=west",
        "-n",
        "emojivoto",
        "set",
        "env",
        "deployment/vote-bot",
        "WEB_HOST=web-svc-east.emojivoto:80",
    ])?;

    step(
        &mut n,
        "verify: mTLS from vote-bot at the gateway, and the mirror's probe alive",
    );
    verify(&sh, &opts)?;

    println!("\n==> done. Dashboards:");
    println!("    linkerd viz dashboard --context west --port 50750 &");
    println!("    linkerd viz dashboard --context east --port 50760 &");
    println!("    linkerd --context=west -n emojivoto viz tap deploy/vote-bot");
    println!("    Clean up: cargo xtask demo --doks --cleanup [--delete-clusters]");
    Ok(())
}

fn verify(sh: &Shell, opts: &DoksOptions) -> anyhow::Result<()> {
    let logs = [
        "kubectl",
        "--context=east",
        "-n",
        "linkerd-multicluster",
        "logs",
        "deploy/linkerd-gateway",
        "--since=5m",
    ];
    let gateways = ["linkerd", "--context=west", "multicluster", "gateways"];
    sh.show(&quote(&logs));
    sh.show(&quote(&gateways));
    if sh.dry_run {
        return Ok(());
    }
    for attempt in 1..=opts.verify_attempts {
        let log = sh.query(&logs).unwrap_or_default();
        let mtls = log.lines().any(|l| {
            l.contains(VOTE_BOT_ID) && (l.contains("tls=true") || l.contains("\"tls\":true"))
        });
        let alive = sh.query(&gateways).unwrap_or_default().lines().any(|l| {
            l.split_whitespace().next() == Some("east")
                && l.split_whitespace().nth(1) == Some("True")
        });
        println!(
            "    attempt {attempt}: gateway saw vote-bot over mTLS: {mtls}; probe alive: {alive}"
        );
        if mtls && alive {
            return Ok(());
        }
        std::thread::sleep(opts.verify_interval);
    }
    bail!(
        "verification failed: see `{}` and `{}`",
        quote(&logs),
        quote(&gateways)
    )
}

fn cleanup(sh: &Shell, opts: &DoksOptions) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let mut n = 0;
    step(&mut n, "unlink and remove the demo");
    sh.pipe(
        &[
            "linkerd",
            "--context=west",
            "multicluster",
            "unlink",
            "--cluster-name",
            "east",
        ],
        None,
        &[
            "kubectl",
            "--context=west",
            "delete",
            "--ignore-not-found",
            "-f",
            "-",
        ],
    )?;
    for ctx in ["west", "east"] {
        let overlay = root
            .join(format!("deploy/demo/{ctx}"))
            .display()
            .to_string();
        sh.pipe(
            &["kubectl", "kustomize", &overlay],
            None,
            &[
                "kubectl",
                &format!("--context={ctx}"),
                "delete",
                "--ignore-not-found",
                "-f",
                "-",
            ],
        )?;
    }
    sh.run(&[
        "kubectl",
        "--context=east",
        "-n",
        "linkerd-multicluster",
        "delete",
        "configmap",
        "linkerd-identity-trust-roots",
        "--ignore-not-found",
    ])?;
    step(&mut n, "uninstall Linkerd and its extensions");
    for ctx in ["west", "east"] {
        let c = format!("--context={ctx}");
        for what in [
            &["viz", "uninstall"][..],
            &["multicluster", "uninstall"],
            &["uninstall"],
        ] {
            let mut from = vec!["linkerd", c.as_str()];
            from.extend_from_slice(what);
            sh.pipe(
                &from,
                None,
                &["kubectl", &c, "delete", "--ignore-not-found", "-f", "-"],
            )?;
        }
    }
    if opts.delete_clusters {
        step(&mut n, "delete the clusters");
        for name in ["west", "east"] {
            sh.run(&["doctl", "kubernetes", "cluster", "delete", name, "--force"])?;
        }
    }
    println!(
        "\n==> cleaned up (certificates kept in {})",
        opts.dir.display()
    );
    Ok(())
}

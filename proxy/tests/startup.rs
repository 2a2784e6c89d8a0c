//! Start-up errors: one clear line on stderr and a non-zero exit, never a panic.

use std::process::Command;

use identity::Pki;

const GW: &str =
    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local";

fn run(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.current_dir(dir);
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let out = cmd
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("spawn");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_start_up_inputs_get_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = Pki::new().unwrap();
    std::fs::write(d.join("root.crt"), &pki.anchor.cert_pem).unwrap();
    pki.leaf(GW).unwrap().write(d, "gw").unwrap();
    pki.leaf(GW).unwrap().write(d, "other").unwrap();
    let foreign = Pki::with_names("root.other.example", "issuer.other.example").unwrap();
    foreign.leaf(GW).unwrap().write(d, "foreign").unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();

    let base = ["--trust-anchors", "root.crt"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--cert", "gw.crt", "--key", "gw.key"],
            "--trust-anchors is required",
        ),
        (
            vec![
                "--trust-anchors",
                "missing.crt",
                "--cert",
                "gw.crt",
                "--key",
                "gw.key",
            ],
            "missing.crt: No such file",
        ),
        (
            vec![base[0], base[1], "--cert", "gw.crt", "--key", "other.key"],
            "does not match",
        ),
        (
            vec![
                base[0],
                base[1],
                "--cert",
                "foreign.crt",
                "--key",
                "foreign.key",
            ],
            "not valid under root.crt: unknown issuer",
        ),
        (
            vec![
                base[0], base[1], "--cert", "gw.crt", "--key", "gw.key", "--route", "bogus",
            ],
            "expected AUTHORITY=HOST:PORT",
        ),
        (
            vec![
                base[0],
                base[1],
                "--cert",
                "gw.crt",
                "--key",
                "gw.key",
                "--allow-client",
                "a*b",
            ],
            "bad caller pattern",
        ),
        (
            vec![
                base[0], base[1], "--cert", "gw.crt", "--key", "gw.key", "--listen", &busy_addr,
            ],
            "cannot listen on",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = run(d, &args);
        assert!(
            matches!(code, Some(c) if c != 0),
            "{args:?} exited {code:?}"
        );
        assert!(err.contains(want), "{args:?}: want {want:?} in {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

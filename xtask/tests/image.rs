//! `cargo xtask image` drives docker with the project's Dockerfile (a recording fake here: this
//! machine has no Docker engine), and says so clearly when no engine answers.

use std::{os::unix::fs::PermissionsExt, process::Command};

fn fake_docker(dir: &std::path::Path, engine_up: bool) {
    let script = format!(
        "#!/usr/bin/env bash\necho \"docker $*\" >> \"$FAKE_LOG\"\n[ \"$1\" = info ] && {{ {}; }}\nexit 0\n",
        if engine_up { "echo 28.2.2" } else { "echo 'Cannot connect to the Docker daemon' >&2; exit 1" }
    );
    let p = dir.join("docker");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn builds_and_pushes_with_the_dockerfile() {
    let tmp = tempfile::tempdir().unwrap();
    fake_docker(tmp.path(), true);
    let log = tmp.path().join("log");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["image", "--tag", "registry.example/gw:1", "--push"])
        .env("PATH", format!("{}:/usr/bin:/bin", tmp.path().display()))
        .env("FAKE_LOG", &log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines[0], "docker info --format {{.ServerVersion}}");
    assert_eq!(
        lines[1],
        format!(
            "docker build -f {}/deploy/gateway/Dockerfile -t registry.example/gw:1 {}",
            root.display(),
            root.display()
        )
    );
    assert_eq!(lines[2], "docker push registry.example/gw:1");
}

#[test]
fn no_engine_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    fake_docker(tmp.path(), false);
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["image"])
        .env("PATH", format!("{}:/usr/bin:/bin", tmp.path().display()))
        .env("FAKE_LOG", tmp.path().join("log"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Docker engine reachable"));
}

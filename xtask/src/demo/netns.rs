//! West and east in network namespaces of their own, joined by a veth pair, when run as root
//! with iproute2. The addresses (192.0.2.0/30, TEST-NET-1) exist only inside the namespaces
//! this demo creates, and the namespaces are deleted when it ends.

use std::process::{Command, Stdio};

pub const WEST_IP: &str = "192.0.2.1";
pub const EAST_IP: &str = "192.0.2.2";
const PREFIX: &str = "mgdemo";

pub struct Netns {
    pub west: String,
    pub east: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Namespaces left by a demo that was killed (its pid is gone).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest
            .trim_start_matches(['-', 'w', 'e'])
            .trim_start_matches('-');
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Netns {
    /// Whether this process can make namespaces (root, and `ip` present).
    pub fn available() -> bool {
        is_root()
            && Command::new("ip")
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
    }

    pub fn create() -> anyhow::Result<Self> {
        remove_stale();
        let pid = std::process::id();
        let ns = Self {
            west: format!("{PREFIX}-w-{pid}"),
            east: format!("{PREFIX}-e-{pid}"),
        };
        // Drop deletes whatever was made if a later step fails.
        let (vw, ve) = (format!("mgw{pid}"), format!("mge{pid}"));
        ip(&["netns", "add", &ns.west])?;
        ip(&["netns", "add", &ns.east])?;
        ip(&["link", "add", &vw, "type", "veth", "peer", "name", &ve])?;
        ip(&["link", "set", &vw, "netns", &ns.west])?;
        ip(&["link", "set", &ve, "netns", &ns.east])?;
        ip(&[
            "-n",
            &ns.west,
            "addr",
            "add",
            &format!("{WEST_IP}/30"),
            "dev",
            &vw,
        ])?;
        ip(&[
            "-n",
            &ns.east,
            "addr",
            "add",
            &format!("{EAST_IP}/30"),
            "dev",
            &ve,
        ])?;
        for (n, dev) in [(&ns.west, &vw), (&ns.east, &ve)] {
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            ip(&["-n", n, "link", "set", dev, "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth pair, and with it the other end.
        let _ = ip(&["netns", "del", &self.west]);
        let _ = ip(&["netns", "del", &self.east]);
    }
}

/// `program` run inside namespace `ns` (or here, when `None`).
pub fn command(ns: Option<&str>, program: &std::path::Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

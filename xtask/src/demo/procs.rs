//! The demo's child processes: started with their output captured, stopped (SIGTERM, then
//! SIGKILL) whatever way the demo ends, so nothing is left behind.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    pub fn new() -> Self {
        Self {
            children: Vec::new(),
        }
    }

    /// Starts `cmd` as `name`, its stderr going to `log`. Returns stdout's pipe when asked.
    pub fn spawn(
        &mut self,
        name: &str,
        mut cmd: Command,
        log: &Path,
        pipe_stdout: bool,
    ) -> anyhow::Result<Option<std::process::ChildStdout>> {
        let log_file = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stderr(log_file)
            .stdout(if pipe_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        let out = child.stdout.take();
        self.children.push((name.to_string(), child));
        Ok(out)
    }

    /// The first child that has exited, with its status.
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.children
            .iter_mut()
            .find_map(|(n, c)| c.try_wait().ok().flatten().map(|s| (n.clone(), s)))
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// SIGTERM to everyone (so the gateway drains), then SIGKILL to whoever is left after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        for (_, c) in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + grace;
        for (_, c) in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

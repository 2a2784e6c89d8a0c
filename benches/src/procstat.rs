//! Samples a process's CPU time and resident memory from /proc while a run lasts.

use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    /// user + system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// The system (kernel) part of it: on loopback the TCP stack, both ends' share of each
    /// send included, weighs as much as a proxy's own work.
    pub system_seconds: f64,
    pub rss_bytes: u64,
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32, ticks: f64) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; here indices 11 and 12.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_seconds: (utime + stime) / ticks,
        system_seconds: stime / ticks,
        rss_bytes: rss_kb * 1024,
    })
}

/// Samples every `every` until told to stop; reports CPU used between `start()` and the end,
/// and the peak RSS seen.
pub struct Sampler {
    pid: u32,
    ticks: f64,
    start: Option<ProcSample>,
    peak_rss: u64,
}

impl Sampler {
    pub fn new(pid: u32) -> anyhow::Result<Self> {
        let ticks = clock_ticks();
        let first = sample(pid, ticks)
            .ok_or_else(|| anyhow::anyhow!("--pid {pid}: no such process (or /proc unreadable)"))?;
        Ok(Self {
            pid,
            ticks,
            start: None,
            peak_rss: first.rss_bytes,
        })
    }

    /// Marks the start of the measured window (after warm-up).
    pub fn start(&mut self) {
        self.start = sample(self.pid, self.ticks);
    }

    pub fn tick(&mut self) {
        if let Some(s) = sample(self.pid, self.ticks) {
            self.peak_rss = self.peak_rss.max(s.rss_bytes);
        }
    }

    /// CPU seconds used in the window (all, and the system part), and the peak RSS.
    pub fn finish(&mut self) -> (f64, f64, u64) {
        self.tick();
        let end = sample(self.pid, self.ticks).unwrap_or_default();
        let (cpu, system) = self
            .start
            .map(|s| {
                (
                    end.cpu_seconds - s.cpu_seconds,
                    end.system_seconds - s.system_seconds,
                )
            })
            .unwrap_or((0.0, 0.0));
        (cpu.max(0.0), system.max(0.0), self.peak_rss)
    }

    pub const INTERVAL: Duration = Duration::from_millis(100);
}

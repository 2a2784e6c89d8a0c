//! Refusal log lines an attacker cannot multiply: per site (a listener, `request`) and
//! reason, the first [`BURST`] lines of each [`WINDOW`] are written, the rest only counted,
//! and one summary line per window says how many were left out. The metrics stay exact; only
//! the log is thinned.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// How long one window lasts, and how many lines of one kind it lets through.
pub const WINDOW: Duration = Duration::from_secs(10);
pub const BURST: u32 = 10;

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

type Key = (&'static str, &'static str);

/// Keys are static strings from a finite set (listener names, reason strings), so the map
/// stays small whatever a peer sends.
fn windows() -> &'static Mutex<HashMap<Key, Window>> {
    static WINDOWS: OnceLock<Mutex<HashMap<Key, Window>>> = OnceLock::new();
    WINDOWS.get_or_init(Default::default)
}

/// Whether to write this refusal's log line now.
pub fn allow(site: &'static str, reason: &'static str) -> bool {
    allow_at(&mut lock(), (site, reason), Instant::now())
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<Key, Window>> {
    // Never held across an await or a panic point that leaves the map inconsistent.
    windows().lock().unwrap_or_else(|p| p.into_inner())
}

fn allow_at(map: &mut HashMap<Key, Window>, key: Key, now: Instant) -> bool {
    let w = map.entry(key).or_insert(Window {
        start: now,
        logged: 0,
        suppressed: 0,
    });
    if now.duration_since(w.start) >= WINDOW {
        summarize(key, w);
        *w = Window {
            start: now,
            logged: 0,
            suppressed: 0,
        };
    }
    if w.logged < BURST {
        w.logged += 1;
        true
    } else {
        w.suppressed += 1;
        false
    }
}

fn summarize(key: Key, w: &Window) {
    if w.suppressed > 0 {
        tracing::warn!(
            site = key.0,
            reason = key.1,
            not_logged = w.suppressed,
            window = ?WINDOW,
            "more refusals like the ones above were counted but not logged"
        );
    }
}

/// Writes the summaries of windows that have ended, so a flood that stops is still
/// accounted for in the log; run every [`WINDOW`].
pub fn flush() {
    let now = Instant::now();
    let mut map = lock();
    map.retain(|key, w| {
        if now.duration_since(w.start) < WINDOW {
            return true;
        }
        summarize(*key, w);
        false
    });
}

/// Flushes every window until draining begins.
pub async fn run(drain: crate::drain::Drain) {
    let mut tick = tokio::time::interval(WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => flush(),
            _ = drain.draining() => {
                flush();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_counted() {
        let mut map = HashMap::new();
        let t0 = Instant::now();
        let key = ("gateway", "timeout");
        let allowed = (0..100).filter(|_| allow_at(&mut map, key, t0)).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(map[&key].suppressed, 100 - BURST as u64);
        // Another reason has its own budget.
        assert!(allow_at(&mut map, ("gateway", "limit"), t0));
        // A new window starts afresh.
        assert!(allow_at(&mut map, key, t0 + WINDOW));
        assert_eq!(map[&key].suppressed, 0);
        assert_eq!(map[&key].logged, 1);
    }
}

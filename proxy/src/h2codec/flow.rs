//! The receiving side of a flow-control window (RFC 9113 §6.9): what a peer may still send
//! on a stream or a connection, and the credit owed back as received bytes are handed on.

/// A window the gateway advertised, as it receives against it.
#[derive(Debug, Clone, Copy)]
pub struct RecvWindow {
    /// What the peer may still send.
    available: i64,
    /// Bytes handed on and not yet given back.
    unacked: usize,
    /// The window's full size; credit goes back once half of it is owed, so one
    /// WINDOW_UPDATE covers many frames.
    size: u32,
}

impl RecvWindow {
    pub fn new(size: u32) -> RecvWindow {
        RecvWindow {
            available: size as i64,
            unacked: 0,
            size,
        }
    }

    /// Counts a DATA frame of `len` bytes (padding included) against the window; false if
    /// the peer sent beyond it (FLOW_CONTROL_ERROR).
    pub fn take(&mut self, len: usize) -> bool {
        if len as i64 > self.available {
            return false;
        }
        self.available -= len as i64;
        true
    }

    /// `n` received bytes were handed on (or dropped): the WINDOW_UPDATE increment to send
    /// now, once half the window is owed.
    pub fn release(&mut self, n: usize) -> Option<u32> {
        self.unacked += n;
        if self.unacked < self.size as usize / 2 {
            return None;
        }
        let increment = self.unacked as u32;
        self.available += self.unacked as i64;
        self.unacked = 0;
        Some(increment)
    }

    /// What the peer may still send.
    pub fn available(&self) -> i64 {
        self.available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_goes_back_at_half_a_window() {
        let mut w = RecvWindow::new(100);
        assert!(w.take(60));
        assert!(!w.take(41), "beyond the window");
        assert_eq!(w.release(30), None);
        assert_eq!(w.release(20), Some(50));
        assert_eq!(w.available(), 90);
        assert!(w.take(90));
        assert_eq!(w.available(), 0);
    }
}

//! Numbers as ASCII digits without the formatting machinery, for paths every request takes
//! (a port in an authority, a `content-length`).

/// `n` in decimal, on the stack.
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(mut n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Self { digits, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    pub fn as_str(&self) -> &str {
        // ASCII digits: valid UTF-8 by construction.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0")
    }
}

#[cfg(test)]
mod tests {
    use super::Decimal;

    #[test]
    fn digits() {
        for n in [0, 7, 10, 80, 65535, u64::MAX] {
            assert_eq!(Decimal::new(n).as_str(), n.to_string());
        }
    }
}

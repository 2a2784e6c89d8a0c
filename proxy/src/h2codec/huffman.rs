//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoding only: the gateway writes its
//! literals raw, which any peer must accept and which costs no CPU.
//!
//! The code is canonical (codes of one length are consecutive and follow the shorter ones in
//! symbol order), so the table below needs only each symbol's code length; the codes are
//! derived from it once. Decoding looks the next 8 bits up in a 256-entry table first (every
//! symbol of 8 bits or fewer, which covers letters, digits and the usual punctuation), and
//! walks the canonical ranges for the longer ones.

use std::sync::OnceLock;

use super::HpackError;

/// Code length in bits of symbols 0..=255 and of EOS (256), from RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

const EOS: u16 = 256;
const SHORTEST: u32 = 5;
const LONGEST: u32 = 30;

/// The decoding tables, derived from [`CODE_LENGTHS`].
struct Tables {
    /// By the next 8 bits: (symbol, length) when a code of 8 bits or fewer starts there;
    /// length 0 otherwise.
    short: [(u8, u8); 256],
    /// Per length L: one past the largest L-bit code, left-aligned in 32 bits (exclusive
    /// upper bound of the L-bit codes' range), 0 when no code has this length.
    limit: [u64; LONGEST as usize + 1],
    /// Per length L: the first L-bit code, and the index in `symbols` of its symbol.
    first: [(u32, u16); LONGEST as usize + 1],
    /// Symbols in canonical order (by length, then value).
    symbols: [u16; 257],
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut symbols = [0u16; 257];
        let mut order: Vec<u16> = (0..=256).collect();
        order.sort_by_key(|&s| (CODE_LENGTHS[s as usize], s));
        symbols.copy_from_slice(&order);
        let mut t = Tables {
            short: [(0, 0); 256],
            limit: [0; LONGEST as usize + 1],
            first: [(0, 0); LONGEST as usize + 1],
            symbols,
        };
        let mut code: u32 = 0;
        let mut prev_len = CODE_LENGTHS[order[0] as usize] as u32;
        for (i, &sym) in order.iter().enumerate() {
            let len = CODE_LENGTHS[sym as usize] as u32;
            if i > 0 {
                code = (code + 1) << (len - prev_len);
            }
            if i == 0 || len != prev_len {
                t.first[len as usize] = (code, i as u16);
            }
            prev_len = len;
            t.limit[len as usize] = ((code as u64) + 1) << (32 - len);
            if len <= 8 {
                let start = (code << (8 - len)) as usize;
                for e in &mut t.short[start..start + (1 << (8 - len))] {
                    *e = (sym as u8, len as u8);
                }
            }
        }
        t
    })
}

/// Appends the decoding of `src` to `out`. Fails on EOS inside the string, padding longer
/// than 7 bits, or padding that is not the EOS code's leading ones (§5.2).
pub fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let t = tables();
    out.reserve(src.len() + src.len() / 2);
    // Bits not yet decoded, left-aligned in the low `avail` bits' high end of a u64.
    let mut acc: u64 = 0;
    let mut avail: u32 = 0;
    let mut input = src.iter();
    loop {
        while avail <= 56 {
            match input.next() {
                Some(&b) => {
                    acc |= (b as u64) << (56 - avail);
                    avail += 8;
                }
                None => break,
            }
        }
        if avail < SHORTEST {
            break;
        }
        // The next 32 bits, with ones beyond the input (as padding is).
        let window = if avail >= 32 {
            acc >> 32
        } else {
            (acc >> 32) | (u32::MAX as u64 >> avail)
        };
        let (sym, len) = {
            let (s, l) = t.short[(window >> 24) as usize];
            if l != 0 {
                (s as u16, l as u32)
            } else {
                let mut len = 9;
                while len <= LONGEST
                    && (t.limit[len as usize] == 0 || window >= t.limit[len as usize])
                {
                    len += 1;
                }
                if len > LONGEST {
                    return Err(HpackError::Huffman);
                }
                let (first_code, first_index) = t.first[len as usize];
                let offset = (window >> (32 - len)) as u32 - first_code;
                (t.symbols[first_index as usize + offset as usize], len)
            }
        };
        if len > avail {
            // What is left is shorter than the code it starts: padding.
            break;
        }
        if sym == EOS {
            return Err(HpackError::Huffman);
        }
        out.push(sym as u8);
        acc <<= len;
        avail -= len;
    }
    // At most 7 bits of padding, all ones.
    let padding_ok = avail == 0 || (avail <= 7 && acc >> (64 - avail) == (1u64 << avail) - 1);
    if !padding_ok {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

/// Encodes `src` (for tests and fuzzing: the gateway writes literals raw).
pub fn encode(src: &[u8], out: &mut Vec<u8>) {
    let t = tables();
    let mut codes = [(0u32, 0u32); 257];
    for (rank, &sym) in t.symbols.iter().enumerate() {
        let len = CODE_LENGTHS[sym as usize] as u32;
        let (first_code, first_index) = t.first[len as usize];
        codes[sym as usize] = (first_code + (rank as u32 - first_index as u32), len);
    }
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        let (code, len) = codes[b as usize];
        acc = (acc << len) | code as u64;
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_the_rfc_examples() {
        // RFC 7541 C.4.1-C.4.3 and C.6.1.
        for (coded, plain) in [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
        ] {
            let mut out = Vec::new();
            decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes(), "{coded}");
            let mut back = Vec::new();
            encode(plain.as_bytes(), &mut back);
            assert_eq!(back, hex(coded), "{plain}");
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).chain((0..=255).rev()).collect();
        let mut coded = Vec::new();
        encode(&all, &mut coded);
        let mut out = Vec::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        let mut out = Vec::new();
        // "0" is 00000 (5 bits): padding of three zeros instead of ones.
        assert!(decode(&[0b0000_0000], &mut out).is_err());
        // A whole byte of padding after a complete symbol.
        assert!(decode(&[0b0000_0111, 0xff], &mut out).is_err());
        // EOS (30 ones) spelled out.
        assert!(decode(&[0xff, 0xff, 0xff, 0xfc], &mut out).is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff], &mut out).is_err());
        // "0" and three bits of padding; the empty string.
        out.clear();
        decode(&[0b0000_0111], &mut out).unwrap();
        assert_eq!(out, b"0");
        out.clear();
        decode(&[], &mut out).unwrap();
        assert!(out.is_empty());
    }
}

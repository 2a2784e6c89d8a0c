//! The map from stream id to stream that the server and the client both keep.
//!
//! std's `HashMap` hashes with SipHash-1-3, about 110 instructions per lookup, and a request
//! looks its stream up six to eight times over its life (headers, data, response, window
//! updates, close): some 800 instructions per request on the HTTP/2 paths, twice that where
//! the gateway is also the client (counted with `cargo xtask bench-cost`). A stream id needs
//! no keyed hash: SipHash's keys defend a map that grows with what a peer sends, and these
//! maps hold at most the connection's concurrent-stream limit (the server refuses stream
//! `max_concurrent_streams + 1`; the client opens no more than the endpoint's limit and its
//! callers' requests). A peer that picked ids to collide would make lookups walk at most that
//! many entries, no worse than a list.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// Streams by id.
pub type StreamMap<V> = HashMap<u32, V, BuildHasherDefault<StreamIdHasher>>;

/// A new, empty [`StreamMap`].
pub fn stream_map<V>() -> StreamMap<V> {
    StreamMap::default()
}

/// Fibonacci hashing of a 31-bit id: one multiplication. The high half is folded into the
/// low one because the table takes its bucket from the low bits and its tag from the top
/// seven, and ids of one side are all odd (client) or all even (server).
#[derive(Default, Clone, Copy)]
pub struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u32` keys reach this map; any other key still gets a deterministic hash.
        for &b in bytes {
            self.write_u32(u32::from(b) ^ (self.0 as u32));
        }
    }

    fn write_u32(&mut self, id: u32) {
        let h = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_client_ids_spread_over_buckets_and_tags() {
        let build = BuildHasherDefault::<StreamIdHasher>::default();
        let ids = (0..128u32).map(|i| 2 * i + 1);
        let hashes: Vec<u64> = ids.map(|id| build.hash_one(id)).collect();
        // The bucket index of a 128-slot table: the low seven bits.
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 127).collect();
        assert!(buckets.len() > 64, "{} distinct buckets", buckets.len());
        // The control tag: the top seven bits.
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(tags.len() > 32, "{} distinct tags", tags.len());
    }

    #[test]
    fn a_map_of_streams_finds_what_it_holds() {
        let mut m = stream_map();
        for id in (1..2001u32).step_by(2) {
            m.insert(id, id * 3);
        }
        for id in (1..2001u32).step_by(2) {
            assert_eq!(m.get(&id), Some(&(id * 3)));
            assert_eq!(m.get(&(id + 1)), None);
        }
    }
}

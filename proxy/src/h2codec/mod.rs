//! The HTTP/2 wire format the gateway's own HTTP/2 server and client speak: frames and HPACK
//! header compression (RFC 9113, RFC 7541), and a stream's received body, which both hand to
//! its reader. No I/O and no connection state here: `inbound/http2/` and `upstream/http2/`
//! hold those.

pub mod flow;
pub mod frame;
pub mod hpack;
pub mod huffman;
pub mod recv_body;
pub mod stream_map;

/// Why a header block could not be decoded. Each is a connection error
/// (COMPRESSION_ERROR): the compression context is lost with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("hpack: index out of the tables")]
    BadIndex,
    #[error("hpack: block ends inside a field")]
    Truncated,
    #[error("hpack: integer too large")]
    IntegerOverflow,
    #[error("hpack: invalid Huffman string")]
    Huffman,
    #[error("hpack: table size update after a field")]
    SizeUpdateMisplaced,
    #[error("hpack: table size update above the advertised limit")]
    SizeUpdateTooLarge,
}

/// Fuzzing: header blocks one after another on one decoder (each chunk's first byte gives
/// its length). Every block that decodes is written again two ways and must come back the
/// same: as plain literals (raw or Huffman, by the chunk's length byte) on a fresh decoder,
/// and its regular fields through the gateway's encoder to a decoder that follows it from
/// block to block, which checks the encoder's view of the dynamic table.
pub fn fuzz_hpack(mut data: &[u8]) {
    use http::{HeaderMap, StatusCode};

    let mut decoder = hpack::Decoder::default();
    let mut encoder = hpack::Encoder::default();
    let mut follower = hpack::Decoder::default();
    while let Some((&len, rest)) = data.split_first() {
        let n = (len as usize).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        data = tail;
        let block = bytes::Bytes::copy_from_slice(chunk);
        let mut fields = Vec::new();
        if decoder.decode(&block, |f| fields.push(f.clone())).is_err() {
            return;
        }
        let name_of = |f: &hpack::Field| -> Option<Vec<u8>> {
            match &f.name {
                hpack::Name::Header(h) => Some(h.as_str().as_bytes().to_vec()),
                hpack::Name::Pseudo(p) => Some(
                    match p {
                        hpack::Pseudo::Method => ":method",
                        hpack::Pseudo::Scheme => ":scheme",
                        hpack::Pseudo::Authority => ":authority",
                        hpack::Pseudo::Path => ":path",
                        hpack::Pseudo::Status => ":status",
                        hpack::Pseudo::Protocol => ":protocol",
                        hpack::Pseudo::Unknown => return None,
                    }
                    .as_bytes()
                    .to_vec(),
                ),
                hpack::Name::Invalid => None,
            }
        };
        let known: Vec<(Vec<u8>, bytes::Bytes)> = fields
            .iter()
            .filter_map(|f| name_of(f).map(|n| (n, f.value.clone())))
            .collect();
        let mut plain = Vec::new();
        for (n, v) in &known {
            hpack::encode_literal(&mut plain, n, v, false, len % 2 == 1);
        }
        let mut again = Vec::new();
        if let Err(e) = hpack::Decoder::default().decode(&plain.into(), |f| {
            again.push((name_of(f).unwrap_or_default(), f.value.clone()))
        }) {
            panic!("literals of decoded fields do not decode: {e}");
        }
        assert_eq!(known, again, "fields differ when written as literals");

        let mut map = HeaderMap::new();
        for f in &fields {
            if let (hpack::Name::Header(h), Some(v)) = (&f.name, &f.header) {
                if !hpack::is_connection_specific(h) {
                    map.append(h.clone(), v.clone());
                }
            }
        }
        let mut out = Vec::new();
        encoder.encode(Some(StatusCode::OK), &map, &mut out);
        let mut back = HeaderMap::new();
        let mut status = None;
        if let Err(e) = follower.decode(&out.into(), |f| match (&f.name, &f.header) {
            (hpack::Name::Header(h), Some(v)) => {
                back.append(h.clone(), v.clone());
            }
            (hpack::Name::Pseudo(hpack::Pseudo::Status), _) => status = Some(f.value.clone()),
            (name, _) => panic!("encoder wrote {name:?}"),
        }) {
            panic!("the encoder's block does not decode: {e}");
        }
        assert_eq!(status.as_deref(), Some(&b"200"[..]));
        assert_eq!(map, back, "fields differ through the encoder");
    }
}

//! Any bytes: decoding never panics, never reads past its input, and whatever decodes
//! re-encodes to a header that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport_header::Header;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, used)) = Header::decode(data) {
        assert!(used <= data.len());
        let again = header.encode();
        let (back, n) = Header::decode(&again).expect("re-encoded header decodes");
        assert_eq!(back, header);
        assert_eq!(n, again.len());
    }
    // The message decoder alone, on raw protobuf.
    let _ = Header::decode_message(data);
});

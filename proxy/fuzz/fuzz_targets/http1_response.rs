//! The upstream HTTP/1.1 response codec: whatever a service sends, split into reads anywhere,
//! the head parser and the body decoders return an answer or an error, never a panic, and
//! decode no more body than arrived.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxy::fuzzing::upstream_response(data));

//! The caller-facing HTTP/1.1 request codec: whatever a caller sends, request heads and their
//! bodies' framing (chunked included) give an answer or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxy::fuzzing::caller_request(data));

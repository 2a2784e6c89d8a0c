//! An endpoint's bytes on an HTTP/2 connection the gateway opened, with requests in flight:
//! the gateway's client must never panic and its flow-control windows must stay in bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxy::fuzzing::upstream_http2(data));

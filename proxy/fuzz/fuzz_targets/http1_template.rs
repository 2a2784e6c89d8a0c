//! A connection's response-head template: the heads a service sends one after another,
//! built from the last one's fields, come out exactly as each parsed afresh, or fail alike.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxy::fuzzing::upstream_response_template(data));

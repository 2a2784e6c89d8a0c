//! HPACK header blocks as a caller sends them: the gateway's decoder must never panic, and
//! what it decodes must survive being written again (plain literals, and the gateway's own
//! encoder with its dynamic table) unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxy::fuzzing::hpack(data));

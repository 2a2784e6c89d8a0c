//! The gateway's caller-facing HTTP/2 server (prior knowledge), in memory: arbitrary bytes as a connection,
//! every request through the gateway's rules. Nothing may panic or hang.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod server;

fuzz_target!(|data: &[u8]| server::drive(data, true));

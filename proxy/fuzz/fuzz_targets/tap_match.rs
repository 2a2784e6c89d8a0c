//! A tap request's match, as the tap controller sends it: decoding, compiling and evaluating
//! never panic, whatever the nesting, masks, port ranges or strings.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxy::fuzzing::tap_match(data);
});

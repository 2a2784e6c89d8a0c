//! The config loader on arbitrary TOML: an error or a configuration, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = proxy::config::Config::from_toml(text);
    }
});

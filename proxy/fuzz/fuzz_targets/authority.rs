//! The authority normaliser: never panics, and what it accepts is a fixed point (parsing its
//! own output gives the same authority), lower-case, with a port.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proxy::authority::Authority;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(a) = Authority::parse(s) {
        let again = Authority::parse(a.as_str()).expect("a parsed authority parses again");
        assert_eq!(again, a);
        assert!(!a.as_str().bytes().any(|b| b.is_ascii_uppercase()));
        assert!(a.port() != 0);
        assert!(a.as_str().ends_with(&format!(":{}", a.port())));
    }
});

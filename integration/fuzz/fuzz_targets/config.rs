//! The configuration loader on arbitrary text: an error naming the key, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ballast::config::parse(std::path::Path::new("fuzz.yaml"), text);
    }
});

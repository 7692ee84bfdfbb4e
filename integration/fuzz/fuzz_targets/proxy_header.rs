//! The PROXY protocol header reader (`accept_proxy_protocol`) on arbitrary client bytes: a
//! header no longer than the input, incomplete, or invalid; never a panic.
#![no_main]

use ballast::proxy_protocol::{parse, Parsed, MAX_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Header { len, .. } => assert!(len <= data.len() && len <= MAX_HEADER),
        Parsed::Incomplete => assert!(data.len() < MAX_HEADER),
        Parsed::Invalid(_) => {}
    }
});

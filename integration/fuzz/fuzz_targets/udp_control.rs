//! The parser of received control messages (IP_PKTINFO / IPV6_PKTINFO) on arbitrary bytes:
//! `None` or an address, never a read outside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ballast::pktinfo_in(data);
});

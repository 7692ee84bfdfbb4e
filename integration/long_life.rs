//! A long life in a few seconds: counters that wrap, started next to their wrap point
//! (`BALLAST_FAULT_NEAR_WRAP`, fault-injection builds), and the faults a months-long run meets.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// One worker whose socket tags start 20 short of their wrap (2^24): 40 connections (two
/// registrations each) proxy across it, each echoing its own bytes; a long-lived connection
/// opened before the wrap keeps working after it; UDP sessions whose ids cross the wrap too.
#[test]
fn connections_and_sessions_are_served_across_the_tag_wrap() {
    let echo_target = Backend::start(echo());
    let udp_target = UdpBackend::start(udp_echo());
    let yaml = format!(
        "workers: 1\nlisteners:\n  - {{name: t, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n  \
         - {{name: u, protocol: udp, bind: '127.0.0.1:0', target_group: ug}}\n\
         target_groups:\n  - name: g\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n  \
         - name: ug\n    health_check: {{protocol: udp, interval: 60s, timeout: 1s, send: ping, expect: ping}}\n    \
         targets: [{{address: '{}'}}]\n",
        echo_target.addr, udp_target.addr
    );
    let lb = Ballast::start_with_env(&yaml, &[("BALLAST_FAULT_NEAR_WRAP", "20")]);
    let (tcp, udp) = (lb.addr("t"), lb.addr("u"));
    let short = Duration::from_secs(3);

    let mut held = client(tcp);
    held.set_read_timeout(Some(short)).unwrap();
    let echo_on = |s: &mut std::net::TcpStream, what: &str| {
        let mut back = vec![0u8; what.len()];
        s.write_all(what.as_bytes()).unwrap();
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("{what}: no echo ({e}); log:\n{}", lb.log()));
        assert_eq!(back, what.as_bytes());
    };
    echo_on(&mut held, "before the wrap");
    for i in 0..40 {
        let mut s = client(tcp);
        s.set_read_timeout(Some(short)).unwrap();
        echo_on(&mut s, &format!("connection {i}"));
    }
    echo_on(&mut held, "after the wrap");

    for i in 0..40 {
        let c = udp_client(udp);
        c.set_read_timeout(Some(short)).unwrap();
        let what = format!("flow {i}");
        c.send(what.as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = c
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: no reply ({e}); log:\n{}", lb.log()));
        assert_eq!(&buf[..n], what.as_bytes());
    }
}

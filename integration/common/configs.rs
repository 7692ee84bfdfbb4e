//! Configuration builders and files.

use std::io::Write;
use std::net::SocketAddr;

/// Writes `yaml` to a temporary file.
pub fn write_config(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("ballast-test-")
        .suffix(".yaml")
        .tempfile()
        .unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

/// A config with one listener `l` on a free port in front of group `g` with these targets.
pub fn config(
    algorithm: &str,
    targets: &[(SocketAddr, u32)],
    extra_listener: &str,
    health: &str,
) -> String {
    let mut yaml = format!(
        "workers: 2\nshutdown_timeout: 5s\nlisteners:\n  - name: l\n    protocol: tcp\n    bind: 127.0.0.1:0\n    target_group: g\n{extra_listener}\
         target_groups:\n  - name: g\n    algorithm: {algorithm}\n{health}    targets:\n"
    );
    for (addr, weight) in targets {
        yaml += &format!("      - address: {addr}\n        weight: {weight}\n");
    }
    yaml
}

/// A config with one UDP listener `l` on a free port in front of group `g`.
pub fn udp_config(targets: &[SocketAddr], udp: &str, health: &str) -> String {
    let mut yaml = format!(
        "workers: 2\nshutdown_timeout: 5s\nlisteners:\n  - name: l\n    protocol: udp\n    bind: 127.0.0.1:0\n    target_group: g\n    udp: {{{udp}}}\n\
         target_groups:\n  - name: g\n    algorithm: round_robin\n{health}    targets:\n"
    );
    for addr in targets {
        yaml += &format!("      - address: {addr}\n");
    }
    yaml
}

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

/// The forwarding this test binary runs its listeners with: a binary whose name ends in
/// `_sockmap` (a second `[[test]]` target over the same file, see Cargo.toml) runs every test
/// of that file again with `forwarding: sockmap`.
pub fn forwarding_override() -> Option<&'static str> {
    env!("CARGO_CRATE_NAME")
        .ends_with("_sockmap")
        .then_some("sockmap")
}

/// A config with one listener `l` on a free port in front of group `g` with these targets
/// (with [`forwarding_override`]'s `forwarding`, unless `extra_listener` sets one).
pub fn config(
    algorithm: &str,
    targets: &[(SocketAddr, u32)],
    extra_listener: &str,
    health: &str,
) -> String {
    let forced;
    let extra_listener = match forwarding_override() {
        Some(f) if !extra_listener.contains("forwarding:") => {
            forced = format!("{extra_listener}    forwarding: {f}\n");
            forced.as_str()
        }
        _ => extra_listener,
    };
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

/// Writes a token file as the config requires it: readable by its owner only (mode 0600).
pub fn write_token(path: &std::path::Path, token: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `yaml` with an admin API on a free loopback port that requires the token `s3cret`, its
/// file (mode 0600) written in `dir`; `extra` adds admin keys (e.g. `, unix: '/path'`).
pub fn with_token(dir: &std::path::Path, extra: &str, yaml: &str) -> String {
    let file = dir.join("token");
    write_token(&file, "s3cret");
    format!(
        "admin: {{bind: '127.0.0.1:0', token_file: '{}'{extra}}}\n{yaml}",
        file.display()
    )
}

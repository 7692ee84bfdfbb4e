//! What an operator installs beside the binary: shell completions, the manual page, and the
//! systemd unit (`conf/systemd/ballast.service`), checked with the tools that read them.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn ballast(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ballast {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_are_valid_scripts_that_know_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = ballast(&["completions", shell]);
        for sub in ["run", "check", "deploy", "targets", "completions"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        if shell == "bash" {
            let path = dir.path().join("ballast.bash");
            std::fs::write(&path, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(check.status.success(), "bash -n: {check:?}");
        }
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// Writes `ballast man` to `dir/man1/ballast.1` (a MANPATH entry) and returns its text.
fn man_page(dir: &Path) -> String {
    let page = ballast(&["man"]);
    std::fs::create_dir_all(dir.join("man1")).unwrap();
    std::fs::write(dir.join("man1/ballast.1"), &page).unwrap();
    page
}

#[test]
fn the_man_page_renders_with_the_subcommands() {
    need("man");
    let dir = tempfile::tempdir().unwrap();
    let page = man_page(dir.path());
    assert!(
        page.starts_with(".ie") || page.contains(".TH ballast"),
        "{page:.200}"
    );
    let out = Command::new("man")
        .args(["-P", "cat", "ballast"])
        .env("MANPATH", dir.path())
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "man: {out:?}");
    for needle in ["SYNOPSIS", "ballast-run(1)", "load balancer"] {
        assert!(text.contains(needle), "man page lacks {needle}: {text}");
    }
}

#[test]
fn the_systemd_units_verify_without_a_warning() {
    need("systemd-analyze");
    need("man");
    let dir = tempfile::tempdir().unwrap();
    man_page(dir.path());
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/systemd/ballast.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // Verified with this build's binary where the unit names /usr/bin/ballast.
    let path = dir.path().join("ballast.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/ballast", env!("CARGO_BIN_EXE_ballast")),
    )
    .unwrap();
    // The optional socket unit beside it (socket activation), verified together.
    let socket = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/systemd/ballast.socket"),
    )
    .unwrap();
    assert!(socket.contains("ListenStream="));
    let socket_path = dir.path().join("ballast.socket");
    std::fs::write(&socket_path, socket).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&socket_path)
        .arg(&path)
        .env("MANPATH", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {out:?}"
    );
}

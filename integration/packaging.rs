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
    for needle in [
        "SYNOPSIS",
        "ballast-run(1)",
        "load balancer",
        "FILES",
        "/etc/ballast/ballast.yaml",
        "SIGNALS",
        "SIGHUP",
        "EXIT STATUS",
        "CONFIGURATION",
        "target_groups.health_check.healthy_threshold",
        "listeners.tls.min_version",
    ] {
        assert!(text.contains(needle), "man page lacks {needle}: {text}");
    }
    // Roff escapes hold: no line of the reference turned into a request by mistake.
    let warnings = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} man | groff -k -man -Tutf8 -ww -z 2>&1",
            env!("CARGO_BIN_EXE_ballast")
        ))
        .output()
        .unwrap();
    let warned = String::from_utf8_lossy(&warnings.stdout);
    assert!(warned.trim().is_empty(), "groff warns: {warned}");
}

/// Piped into `head`, the output ends quietly when the pipe closes: no "Broken pipe" error.
#[test]
fn output_piped_into_head_ends_quietly() {
    for command in ["man", "schema", "completions bash"] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} {command} | head -c 10 >/dev/null",
                env!("CARGO_BIN_EXE_ballast")
            ))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "ballast {command} | head: {stderr}");
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
    assert!(unit.contains("Type=notify"));
    // A reload that fails says so (not a signal that cannot fail), and the logs have a home.
    assert!(
        unit.contains("\nExecReload=/usr/bin/ballast reload --config /etc/ballast/ballast.yaml\n")
            && unit.contains("\nLogsDirectory=ballast\n"),
        "{unit}"
    );
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

/// Runs `program` with `args`; its stdout, after asserting it succeeded.
fn output(program: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_holds_the_binary_units_config_man_page_and_completions() {
    need("cargo-deb");
    need("dpkg-deb");
    need("man");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    // From the debug build this test run has just made (cargo test built it).
    let out = Command::new("bash")
        .arg(manifest.join("examples/package_deb.sh"))
        .arg("--fast") // lighter compression: the debug build's symbols are large
        .arg("--output")
        .arg(dir.path())
        .env("PROFILE", "dev")
        .env("BUILT", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "package_deb.sh: {stderr}");
    let deb = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb made: {stderr}"));
    let deb = deb.as_os_str();

    let contents = output("dpkg-deb", &["--contents".as_ref(), deb]);
    for file in [
        "./usr/bin/ballast",
        "/systemd/system/ballast.service",
        "/systemd/system/ballast.socket",
        "./etc/ballast/ballast.yaml",
        "./usr/share/man/man1/ballast.1.gz",
        "./usr/share/bash-completion/completions/ballast",
        "./usr/share/zsh/vendor-completions/_ballast",
        "./usr/share/fish/vendor_completions.d/ballast.fish",
        "./usr/share/doc/ballast/monitoring/alerts.yml",
        "./usr/share/doc/ballast/copyright",
        "./usr/share/ballast/ballast.schema.json",
        "./usr/share/doc/ballast/examples/ballast.schema.json",
        "./usr/share/doc/ballast/examples/tls/",
    ] {
        assert!(
            contents.contains(file),
            "{file} not in the package:\n{contents}"
        );
    }
    // The binary is stripped; its symbols are in the -dbgsym package beside it.
    let unpacked = dir.path().join("root");
    output("dpkg-deb", &["-x".as_ref(), deb, unpacked.as_os_str()]);
    let sections = output(
        "readelf",
        &["-S".as_ref(), unpacked.join("usr/bin/ballast").as_os_str()],
    );
    assert!(
        !sections.contains(".debug_info"),
        "not stripped: {sections}"
    );
    let dbgsym = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("dbgsym"))
        .expect("a -dbgsym package");
    let symbols = output("dpkg-deb", &["--contents".as_ref(), dbgsym.as_os_str()]);
    assert!(
        symbols.contains("./usr/lib/debug/.build-id/") && symbols.contains(".debug"),
        "{symbols}"
    );
    // The packaged config's editor modeline names the installed schema.
    let yaml = std::fs::read_to_string(unpacked.join("etc/ballast/ballast.yaml")).unwrap();
    assert!(
        yaml.starts_with(
            "# yaml-language-server: $schema=/usr/share/ballast/ballast.schema.json\n"
        ),
        "{yaml:.120}"
    );
    let info = output("dpkg-deb", &["--info".as_ref(), deb]);
    assert!(
        info.contains("Package: ballast") && info.contains("Depends: libc6"),
        "{info}"
    );

    // Control files: the config is a conffile (kept over upgrades); postinst has the unit
    // handling, and neither enables nor starts the service.
    let control = dir.path().join("control");
    output(
        "dpkg-deb",
        &["--control".as_ref(), deb, control.as_os_str()],
    );
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.trim(),
        "/etc/ballast/ballast.yaml",
        "the config, and nothing of the program's"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    let once = postinst
        .matches("deb-systemd-helper update-state ballast.service")
        .count();
    assert_eq!(once, 1, "{postinst}");
    // Not started on install, not restarted on upgrade (that would close connections).
    for never in [
        "deb-systemd-invoke start",
        "try-restart",
        "restart ballast.service",
    ] {
        assert!(!postinst.contains(never), "{never}: {postinst}");
    }

    // What it installs works: the binary, the default config, the man page.
    let root = dir.path().join("root");
    output("dpkg-deb", &["-x".as_ref(), deb, root.as_os_str()]);
    let bin = root.join("usr/bin/ballast");
    let version = output(bin.to_str().unwrap(), &["--version".as_ref()]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let config = root.join("etc/ballast/ballast.yaml");
    output(
        bin.to_str().unwrap(),
        &["check".as_ref(), "--config".as_ref(), config.as_os_str()],
    );
    let page = root.join("usr/share/man/man1/ballast.1.gz");
    let man = output("man", &["-l".as_ref(), page.as_os_str()]);
    assert!(man.contains("SYNOPSIS"), "{man}");
}

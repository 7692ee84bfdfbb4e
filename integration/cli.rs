//! The CLI as an operator uses it: it finds the admin API from the running configuration
//! (its UNIX socket, or its address with its token), reloads with an exit status that tells,
//! and prints what happened in words.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

const CHECKS: &str = "    health_check: {protocol: tcp, interval: 100ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}\n";

/// Runs `ballast ARGS` with `env`, and nothing of the caller's environment that would say
/// where an API is.
fn ballast(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .env_remove("BALLAST_ADMIN")
        .env_remove("BALLAST_CONFIG")
        .env_remove("BALLAST_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("run ballast")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_cli_finds_the_api_from_the_config_over_its_unix_socket() {
    let a = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let lb = Ballast::start(&format!(
        "admin: {{bind: '127.0.0.1:0', unix: '{}'}}\n{}",
        socket.display(),
        config("round_robin", &[(a.addr, 1)], "", CHECKS)
    ));
    let config = path(lb.config_path());
    // --config: the socket the file names.
    let out = ballast(&["targets", "--config", config], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&a.addr.to_string()),
        "{}",
        stdout(&out)
    );
    // BALLAST_CONFIG does the same; a subcommand's subcommand takes it too.
    let out = ballast(&["node", "status"], &[("BALLAST_CONFIG", config)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("node: serving"),
        "{}",
        stdout(&out)
    );
    // --admin unix:PATH, and BALLAST_ADMIN.
    let url = format!("unix:{}", socket.display());
    let out = ballast(&["health", "--admin", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ballast(&["targets", "--json"], &[("BALLAST_ADMIN", &url)]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["target_groups"][0]["name"], "g");
    // A flag wins over the environment: --config with BALLAST_ADMIN naming another place.
    let elsewhere = [("BALLAST_ADMIN", "unix:/nonexistent/admin.sock")];
    let out = ballast(&["targets", "--config", config], &elsewhere);
    assert!(out.status.success(), "{}", stderr(&out));
    // A socket nobody listens on: a clear error, exit 1.
    let out = ballast(&["targets", "--admin", "unix:/nonexistent/admin.sock"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the admin API at unix:/nonexistent/admin.sock"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_cli_sends_the_configs_token_to_the_configs_address() {
    let a = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write_token(&token, "s3cret");
    let port = stable_port();
    let lb = Ballast::start(&format!(
        "admin: {{bind: '0.0.0.0:{port}', token_file: '{}'}}\n{}",
        token.display(),
        config("round_robin", &[(a.addr, 1)], "", CHECKS)
    ));
    let config = path(lb.config_path());
    // 0.0.0.0 is asked on loopback, with the file's token.
    let out = ballast(&["reload", "--config", config], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("reloaded: generation 1"),
        "{}",
        stdout(&out)
    );
    // Without it (the address alone), refused.
    let out = ballast(&["reload", "--admin", &format!("127.0.0.1:{port}")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
}

/// `ExecReload=ballast reload --config FILE`: a broken file fails the reload with the
/// reason (systemctl reload then fails too), and the running configuration stays.
#[test]
fn a_reload_of_a_broken_file_exits_non_zero_with_the_reason() {
    let a = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let good = format!(
        "admin: {{bind: '127.0.0.1:0', unix: '{}'}}\n{}",
        socket.display(),
        config("round_robin", &[(a.addr, 1)], "", CHECKS)
    );
    let lb = Ballast::start(&good);
    let config = path(lb.config_path());
    lb.rewrite_config(&good.replace("algorithm: round_robin", "algorithm: round_robbin"));
    let mark = lb.notifications.count();
    let out = ballast(&["reload", "--config", config], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("400") && err.contains("round_robbin"),
        "the reason: {err}"
    );
    // The service manager hears it too (`systemctl status` shows STATUS=).
    let said = lb.notifications.wait_line_after(mark, "READY=1", WAIT);
    assert!(
        said.iter().any(
            |m| m.contains("STATUS=reload refused, generation 0 stays: ")
                && m.contains("round_robbin")
        ),
        "{said:?}"
    );
    assert_eq!(echo_once(lb.addr("l"), b"still"), b"still");
    lb.rewrite_config(&good);
    let out = ballast(&["reload", "--config", config], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_cli_speaks_in_words_and_says_why_a_check_fails() {
    let a = Backend::start(echo());
    let dead = dead_addr();
    let lb = Ballast::start(&config(
        "round_robin",
        &[(a.addr, 1), (dead, 1)],
        "",
        CHECKS,
    ));
    let admin = format!("http://{}", lb.admin_addr());
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--admin", &admin]);
        let out = ballast(&all, &[]);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    wait_health(lb.admin_addr(), "g", dead, "unhealthy");
    let table = run(&["targets"]);
    let row = table
        .lines()
        .find(|l| l.contains(&dead.to_string()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("unhealthy") && row.contains("fail: connection refused"),
        "the reason, not only `fail`: {row}"
    );
    let doc = get_json(lb.admin_addr(), "/targets");
    let t = &doc["target_groups"][0]["targets"][1];
    assert_eq!(t["last_failure"]["reason"], "connection refused", "{t}");
    assert!(t["last_failure"]["at_unix_ms"].as_u64().unwrap() > 0, "{t}");

    let a = a.addr.to_string();
    assert_eq!(run(&["drain", "g", &a]), format!("{a}: draining\n"));
    assert_eq!(run(&["enable", "g", &a]), format!("{a}: active\n"));
    let added = run(&["add", "g", "127.0.0.1:9", "--max-connections", "3"]);
    assert!(
        added.starts_with("added 127.0.0.1:9 to g (generation "),
        "no debug formatting: {added}"
    );
    let doc = get_json(lb.admin_addr(), "/targets");
    let t = &doc["target_groups"][0]["targets"][2];
    assert_eq!(t["max_connections"], 3, "{t}");
    let table = run(&["targets"]);
    let row = table.lines().find(|l| l.contains("127.0.0.1:9 ")).unwrap();
    assert!(
        row.contains(" 0/3 "),
        "active out of max_connections: {row}"
    );
    let removed = run(&["remove", "g", "127.0.0.1:9"]);
    assert_eq!(removed, "removed 127.0.0.1:9 from g; it drains\n");
    // An address that is a path stays one segment: no request reaches another endpoint.
    let out = ballast(
        &["drain", "g", "x/../../../../node/drain?", "--admin", &admin],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(get_json(lb.admin_addr(), "/node")["service"], "serving");
}

/// `check` probes what `run` would fail on: an address another process serves (with
/// `--probe-binds`), an access log in a directory that does not exist; and says what it did
/// not probe.
#[test]
fn check_refuses_what_run_would_refuse() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = config("round_robin", &[(dead_addr(), 1)], "", CHECKS).replace(
        "bind: 127.0.0.1:0",
        &format!("bind: {}", taken.local_addr().unwrap()),
    );
    let file = dir.path().join("ballast.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = ballast(&["check", "--config", path(&file)], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("not probed: listener and admin addresses, live sockets"),
        "{}",
        stdout(&out)
    );
    let out = ballast(&["check", "--probe-binds", "--config", path(&file)], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("address in use"), "{}", stderr(&out));
    drop(taken);
    let out = ballast(&["check", "--probe-binds", "--config", path(&file)], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok: listeners bound: 127.0.0.1:"),
        "{}",
        stdout(&out)
    );
    // The admin address too: taken, refused.
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let with_admin = format!("admin: {{bind: '{}'}}\n{yaml}", admin.local_addr().unwrap());
    std::fs::write(&file, &with_admin).unwrap();
    let out = ballast(&["check", "--probe-binds", "--config", path(&file)], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("admin.bind 127.0.0.1:"),
        "{}",
        stderr(&out)
    );
    drop(admin);

    let log = dir.path().join("missing/access.log");
    std::fs::write(&file, format!("access_log: {}\n{yaml}", log.display())).unwrap();
    let out = ballast(&["check", "--config", path(&file)], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("access_log {}: cannot be created", log.display())),
        "{}",
        stderr(&out)
    );
    std::fs::create_dir(dir.path().join("missing")).unwrap();
    let out = ballast(&["check", "--config", path(&file)], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok: access_log"), "{}", stdout(&out));
}

/// The packaged unit's `ExecReload=` line, run as systemd would run it (the binary and the
/// config path swapped for this build's and this test's): it fails on a file Ballast refuses.
#[test]
fn the_units_reload_command_fails_when_the_reload_does() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/systemd/ballast.service"),
    )
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecReload="))
        .expect("an ExecReload= line");
    let a = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "admin: {{bind: '127.0.0.1:0', unix: '{}'}}\n{}",
        dir.path().join("admin.sock").display(),
        config("round_robin", &[(a.addr, 1)], "", CHECKS)
    );
    let lb = Ballast::start(&good);
    let exec_reload = || {
        let words: Vec<String> = line
            .replace("/usr/bin/ballast", env!("CARGO_BIN_EXE_ballast"))
            .replace("/etc/ballast/ballast.yaml", path(lb.config_path()))
            .split_whitespace()
            .map(String::from)
            .collect();
        Command::new(&words[0])
            .args(&words[1..])
            .env_remove("BALLAST_ADMIN")
            .output()
            .unwrap()
    };
    let out = exec_reload();
    assert!(out.status.success(), "{line}: {}", stderr(&out));
    lb.rewrite_config(&good.replace("algorithm:", "algoritm:"));
    let out = exec_reload();
    assert_ne!(
        out.status.code(),
        Some(0),
        "{line}: a refused reload must fail"
    );
    assert!(stderr(&out).contains("400"), "{}", stderr(&out));
    // Not even YAML: the command cannot read where the API is, and fails saying why.
    lb.rewrite_config(&good.replace("listeners:\n", "listeners: [\n"));
    let out = exec_reload();
    assert_ne!(
        out.status.code(),
        Some(0),
        "{line}: a refused reload must fail"
    );
    assert!(stderr(&out).contains("line "), "{}", stderr(&out));
}

/// The runtime controls HAProxy users reach for: a target's weight, and one connection ended.
#[test]
fn a_weight_set_at_runtime_shifts_traffic_and_one_connection_can_be_ended() {
    let (a, b) = (
        Backend::start(named_echo("a")),
        Backend::start(named_echo("b")),
    );
    let lb = Ballast::start(&config(
        "weighted_round_robin",
        &[(a.addr, 1), (b.addr, 1)],
        "",
        CHECKS,
    ));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let url = format!("http://{admin}");
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--admin", &url]);
        ballast(&all, &[])
    };
    let out = run(&["weight", "g", &b.addr.to_string(), "9"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}: weight 9\n", b.addr));
    let to_b = (0..20).filter(|_| open_named(addr).1 == "b").count();
    assert!(to_b >= 16, "weight 9 against 1: {to_b} of 20 to b");
    // Out of range, an unknown target, a bad body: 4xx with a message.
    let out = run(&["weight", "g", &b.addr.to_string(), "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("400: weight must be 1 to 10000"),
        "{}",
        stderr(&out)
    );
    let out = run(&["weight", "g", "127.0.0.1:1", "2"]);
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    let weight = format!("/target-groups/g/targets/{}/weight", b.addr);
    let (status, body) = http(admin, "POST", &weight, None, r#"{"weight": "heavy"}"#);
    assert_eq!(status, 400, "{body}");

    // Two open connections; end one by its ID: it is reset, the other goes on.
    let (mut kept, _) = open_named(addr);
    let (mut ended, _) = open_named(addr);
    let mut ids = Vec::new();
    wait_until("both connections listed", || {
        let doc = get_json(admin, "/connections");
        ids = doc["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["stage"] == "established")
            .map(|c| {
                (
                    c["client"].as_str().unwrap().to_string(),
                    c["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        ids.len() == 2
    });
    let mine = ended.local_addr().unwrap().to_string();
    let (_, id) = ids.iter().find(|(client, _)| *client == mine).unwrap();
    let out = run(&["disconnect", id]);
    assert!(out.status.success(), "{}", stderr(&out));
    ended.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    use std::io::{Read, Write};
    let err = ended.read(&mut buf).expect_err("reset, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    kept.write_all(b"still here").unwrap();
    kept.set_read_timeout(Some(WAIT)).unwrap();
    let n = kept.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still here");
    // Gone now: 404; nonsense: 400.
    let out = run(&["disconnect", id]);
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    let (status, _) = http(admin, "DELETE", "/connections/nonsense", None, "");
    assert_eq!(status, 400);
}

/// `admin.unix` (or `upgrade_socket`) naming a file that is not a socket: `check` and `run`
/// refuse, and the file is left as it was (a typo must not delete a config).
#[test]
fn a_unix_socket_path_holding_a_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let yaml = format!(
        "admin: {{bind: '127.0.0.1:0', unix: '{}'}}\n{}",
        precious.display(),
        config("round_robin", &[(dead_addr(), 1)], "", CHECKS)
    );
    let file = dir.path().join("b.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = ballast(&["check", "--config", path(&file)], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("exists and is not a socket"),
        "{}",
        stderr(&out)
    );
    let refused = run_refused(&yaml);
    assert!(refused.contains("exists and is not a socket"), "{refused}");
    let upgrade = format!(
        "upgrade_socket: '{}'\n{}",
        precious.display(),
        config("round_robin", &[(dead_addr(), 1)], "", CHECKS)
    );
    run_refused(&upgrade);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
}

/// A file whose admin section was edited to name another instance's API: the CLI finds that
/// the instance answering runs another file, and sends nothing (it reloaded the wrong one).
#[test]
fn the_cli_never_acts_on_an_instance_that_runs_another_file() {
    let t = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let (sock_a, sock_b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let yaml = |sock: &Path| {
        format!(
            "admin: {{bind: '127.0.0.1:0', unix: '{}'}}\n{}",
            sock.display(),
            config("round_robin", &[(t.addr, 1)], "", CHECKS)
        )
    };
    let a = Ballast::start(&yaml(&sock_a));
    let b = Ballast::start(&yaml(&sock_b));
    let config_a = path(a.config_path());
    a.rewrite_config(&yaml(&sock_b));
    let out = ballast(&["reload", "--config", config_a], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("serves the Ballast of"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        get_json(b.admin_addr(), "/node")["generation"],
        0,
        "b was not reloaded"
    );
    // Its own file: fine.
    let out = ballast(&["reload", "--config", path(b.config_path())], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `admin.read_only` (the packaged default): over TCP, reads only; changes through the UNIX
/// socket, whose file mode keeps them to root and Ballast's user.
#[test]
fn a_read_only_tcp_api_leaves_changes_to_the_unix_socket() {
    let a = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let lb = Ballast::start(&format!(
        "admin: {{bind: '127.0.0.1:0', unix: '{}', read_only: true}}\n{}",
        socket.display(),
        config("round_robin", &[(a.addr, 1)], "", CHECKS)
    ));
    let admin = lb.admin_addr();
    assert_eq!(http(admin, "GET", "/targets", None, "").0, 200);
    assert_eq!(http(admin, "GET", "/metrics", None, "").0, 200);
    let drain = format!("/target-groups/g/targets/{}/drain", a.addr);
    let (status, body) = http(admin, "POST", &drain, None, "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.read_only"), "{body}");
    assert_eq!(http(admin, "POST", "/node/drain", None, "").0, 403);
    assert_eq!(get_json(admin, "/node")["service"], "serving");
    let url = format!("unix:{}", socket.display());
    let out = ballast(&["drain", "g", &a.addr.to_string(), "--admin", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// round_robin ignores weights: setting one is refused (409) with what to use instead, and
/// `check` warns of weights given in the file.
#[test]
fn a_weight_for_a_group_that_ignores_weights_is_refused_with_the_reason() {
    let (a, b) = (Backend::start(echo()), Backend::start(echo()));
    let yaml = config("round_robin", &[(a.addr, 1), (b.addr, 3)], "", CHECKS);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rr.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = ballast(&["check", "--config", path(&file)], &[]);
    assert!(
        stderr(&out).contains("uses round_robin, which ignores them"),
        "{}",
        stderr(&out)
    );
    let lb = Ballast::start(&yaml);
    let admin = format!("http://{}", lb.admin_addr());
    let out = ballast(
        &["weight", "g", &a.addr.to_string(), "5", "--admin", &admin],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("409") && stderr(&out).contains("weighted_round_robin"),
        "{}",
        stderr(&out)
    );
    // Nor is a weight given with a new target (one of 1, the default, is).
    let c = dead_addr().to_string();
    let out = ballast(&["add", "g", &c, "--weight", "4", "--admin", &admin], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("409"), "{}", stderr(&out));
    assert!(group_targets(lb.admin_addr(), "g").len() == 2);
    let out = ballast(&["add", "g", &c, "--admin", &admin], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `admin.unix` naming a socket another process serves: `run` refuses rather than take its
/// place (`check --probe-binds` says so too), and that process keeps its socket. A stale
/// socket file (nobody accepts on it) is replaced.
#[test]
fn another_process_s_live_admin_socket_is_refused_a_stale_one_replaced() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let inode = std::fs::metadata(&socket).unwrap().ino();
    let yaml = format!(
        "admin: {{bind: '127.0.0.1:0', unix: '{}'}}\n{}",
        socket.display(),
        config("round_robin", &[(dead_addr(), 1)], "", CHECKS)
    );
    let refused = run_refused(&yaml);
    assert!(
        refused.contains("another process holds a socket at"),
        "{refused}"
    );
    let file = dir.path().join("b.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = ballast(&["check", "--probe-binds", "--config", path(&file)], &[]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        format!("{}{}", stdout(&out), stderr(&out))
            .contains(&format!("admin.unix {}: another process", socket.display())),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(std::fs::metadata(&socket).unwrap().ino(), inode);
    std::os::unix::net::UnixStream::connect(&socket).expect("the other process still serves");
    drop(other);
    // A live socket of another type (a datagram socket, as /dev/log is) is refused too.
    std::fs::remove_file(&socket).unwrap();
    let datagram = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    let refused = run_refused(&yaml);
    assert!(
        refused.contains("another process holds a socket at"),
        "{refused}"
    );
    assert!(socket.exists());
    drop(datagram);
    // Stale now: Ballast replaces it.
    let inode = std::fs::metadata(&socket).unwrap().ino();
    let lb = Ballast::start(&yaml);
    assert_ne!(std::fs::metadata(&socket).unwrap().ino(), inode);
    drop(lb);
}

/// Started with a relative `--config`, Ballast names its file absolutely (`/node`), and takes
/// a relative `admin.unix` from the file's directory, as the CLI does: a CLI run from another
/// directory finds the socket and recognises the instance (the TCP API is read-only, so only
/// the socket can take the reload).
#[test]
fn a_config_given_relative_is_recognised_from_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let socket = dir.path().join("sub/admin.sock");
    let file = dir.path().join("sub/b.yaml");
    std::fs::write(
        &file,
        format!(
            "admin: {{bind: '127.0.0.1:0', unix: admin.sock, read_only: true}}\n{}",
            config("round_robin", &[(dead_addr(), 1)], "", CHECKS)
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["run", "--config", "sub/b.yaml"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the admin socket answering beside the file", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["reload", "--config", path(&file)])
        .current_dir("/")
        .env_remove("BALLAST_ADMIN")
        .env_remove("BALLAST_TOKEN_FILE")
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

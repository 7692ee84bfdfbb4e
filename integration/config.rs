//! Every bad configuration is refused with exit code 2 and a message for each thing wrong,
//! one a line: `file:line:column: key.path: message`.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};

use common::{run_refused, write_config, Ballast};

const GOOD: &str = "\
listeners:
  - name: pg
    protocol: tcp
    bind: 127.0.0.1:0
    target_group: pg
target_groups:
  - name: pg
    health_check:
      interval: 2s
      healthy_threshold: 2
    targets:
      - address: 127.0.0.1:5432
";

fn ballast(args: &[&str], yaml: &str) -> (Output, String, String) {
    let file = write_config(yaml);
    let path = file.path().display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stderr, path)
}

/// `ballast check` on `yaml` must exit 2 with a message containing the file and each of `want`.
fn refused(yaml: &str, want: &[&str]) {
    let (out, stderr, path) = ballast(&["check"], yaml);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&path),
        "message does not name the file: {stderr}"
    );
    for w in want {
        assert!(stderr.contains(w), "message lacks {w:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one message: {stderr}");
}

#[test]
fn good_config_checks_and_prints_the_plan() {
    let (out, stderr, _) = ballast(&["check"], GOOD);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("listener pg (tcp) on 127.0.0.1:0 -> target group pg"),
        "{stdout}"
    );
    assert!(
        stdout.contains("target 127.0.0.1:5432 weight 1"),
        "{stdout}"
    );
}

#[test]
fn unknown_key() {
    refused(
        &GOOD.replace(
            "    target_group: pg\n",
            "    target_group: pg\n    max_conns: 5\n",
        ),
        &[":6:5: listeners[0].max_conns: unknown field `max_conns`"],
    );
}

#[test]
fn missing_field() {
    refused(
        &GOOD.replace("    target_group: pg\n", ""),
        &[":2:5: listeners[0]: missing field `target_group`"],
    );
}

#[test]
fn bad_address() {
    refused(
        &GOOD.replace("127.0.0.1:5432", "127.0.0.1:99999"),
        &[":12:18: target_groups[0].targets[0].address: bad address"],
    );
    refused(
        &GOOD.replace("bind: 127.0.0.1:0", "bind: nowhere"),
        &[":4:11: listeners[0].bind: bad address `nowhere`", "ip:port"],
    );
}

#[test]
fn zero_and_negative_interval() {
    refused(
        &GOOD.replace("interval: 2s", "interval: 0s"),
        &[
            ":9:17: target_groups[0].health_check.interval",
            "greater than zero",
        ],
    );
    refused(
        &GOOD.replace("interval: 2s", "interval: -2s"),
        &[
            ":9:17: target_groups[0].health_check.interval",
            "bad duration",
        ],
    );
}

#[test]
fn zero_threshold() {
    refused(
        &GOOD.replace("healthy_threshold: 2", "healthy_threshold: 0"),
        &[":10:26: target_groups[0].health_check.healthy_threshold"],
    );
}

#[test]
fn duplicate_names() {
    let two_listeners = GOOD.replace(
        "target_groups:",
        "  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:0\n    target_group: pg\ntarget_groups:",
    );
    refused(
        &two_listeners,
        &["listeners[1].name", "duplicate listener name `pg`"],
    );
    let two_groups = format!("{GOOD}  - name: pg\n    targets:\n      - address: 127.0.0.1:5433\n");
    refused(
        &two_groups,
        &["target_groups[1].name", "duplicate target group name `pg`"],
    );
}

#[test]
fn listener_naming_a_missing_group() {
    refused(
        &GOOD.replace("    target_group: pg", "    target_group: mysql"),
        &[":5:19: listeners[0].target_group", "`mysql`", "not defined"],
    );
}

#[test]
fn empty_target_list() {
    refused(
        &GOOD.replace(
            "    targets:\n      - address: 127.0.0.1:5432\n",
            "    targets: []\n",
        ),
        &["target_groups[0].targets", "no targets"],
    );
}

#[test]
fn udp_and_tcp_settings_stay_with_their_protocol() {
    let udp = GOOD.replace("protocol: tcp", "protocol: udp");
    refused(
        &udp.replace(
            "    target_group: pg\n",
            "    target_group: pg\n    max_connections: 5\n",
        ),
        &[
            "listeners[0].max_connections",
            "for udp use `udp.max_sessions`",
        ],
    );
    refused(
        &GOOD.replace(
            "    target_group: pg\n",
            "    target_group: pg\n    udp: {max_sessions: 5}\n",
        ),
        &["listeners[0].udp", "apply to udp listeners only"],
    );
    refused(
        &udp.replace(
            "    target_group: pg\n",
            "    target_group: pg\n    udp: {max_sesions: 5}\n",
        ),
        &["listeners[0].udp", "unknown field `max_sesions`"],
    );
    refused(
        &GOOD.replace(
            "      interval: 2s\n",
            "      protocol: udp\n      interval: 2s\n",
        ),
        &[
            "target_groups[0].health_check.send",
            "need a `send` payload",
        ],
    );
    refused(
        &GOOD.replace(
            "      interval: 2s\n",
            "      send: ping\n      interval: 2s\n",
        ),
        &[
            "target_groups[0].health_check.send",
            "applies to udp checks only",
        ],
    );
    refused(
        &GOOD.replace(
            "      interval: 2s\n",
            "      protocol: udp\n      send: {hex: 'zz'}\n      interval: 2s\n",
        ),
        &["target_groups[0].health_check.send", "bad hex digits"],
    );
}

#[test]
fn a_tcp_and_a_udp_listener_may_share_a_port() {
    let yaml = GOOD.replace(
        "target_groups:",
        "  - name: pg-udp\n    protocol: udp\n    bind: 127.0.0.1:7000\n    target_group: pg\ntarget_groups:",
    )
    .replace("bind: 127.0.0.1:0", "bind: 127.0.0.1:7000");
    let (out, stderr, _) = ballast(&["check"], &yaml);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("listener pg-udp (udp) on 127.0.0.1:7000"),
        "{stdout}"
    );
    let clash = yaml.replace("protocol: udp", "protocol: tcp");
    refused(
        &clash,
        &["listeners[1].bind", "already bound by listener `pg`"],
    );
}

#[test]
fn yaml_syntax_error_and_missing_file() {
    refused(
        &GOOD.replace("  - name: pg\n    protocol", "  - name: pg\n   protocol"),
        &["line"],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["check", "--config", "/nonexistent/ballast.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ballast.yaml"));
}

#[test]
fn run_refuses_a_bad_file_with_exit_2_and_nothing_started() {
    let (out, stderr, path) = ballast(&["run"], &GOOD.replace("interval: 2s", "interval: 0s"));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&path) && stderr.contains("interval"),
        "{stderr}"
    );
}

/// A second Ballast on the addresses a running one serves is refused (exit 2), TCP and UDP:
/// SO_REUSEPORT used to let it join the first one's sockets silently, and the kernel split the
/// clients between two processes.
#[test]
fn a_second_ballast_on_the_same_addresses_is_refused() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = udp.local_addr().unwrap();
    let running = Ballast::start(&format!(
        "workers: 2\nlisteners:\n  - {{name: t, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n  \
         - {{name: u, protocol: udp, bind: '127.0.0.1:0', target_group: g}}\n\
         target_groups:\n  - name: g\n    health_check: {{protocol: udp, send: ping, interval: 60s, timeout: 1s}}\n    \
         targets: [{{address: '{target}'}}]\n"
    ));
    for (name, protocol) in [("t", "tcp"), ("u", "udp")] {
        let addr = running.addr(name);
        let stderr = run_refused(&format!(
            "listeners:\n  - {{name: again, protocol: {protocol}, bind: '{addr}', target_group: g}}\n\
             target_groups:\n  - name: g\n    targets: [{{address: '{target}'}}]\n"
        ));
        assert!(
            stderr.contains(&format!("cannot bind listener again on {addr}"))
                && stderr.contains("another process already serves"),
            "{protocol}: {stderr}"
        );
    }
}

#[test]
fn bind_address_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let yaml = GOOD.replace("bind: 127.0.0.1:0", &format!("bind: {addr}"));
    let (out, stderr, path) = ballast(&["run"], &yaml);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot bind listener pg on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains(&path), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        !stderr.contains("ballast running"),
        "half-started: {stderr}"
    );
}

#[test]
fn interface_names_linux_refuses_and_unknown_interfaces() {
    let with = |name: &str| {
        GOOD.replace(
            "bind: 127.0.0.1:0",
            &format!("bind: 0.0.0.0:0\n    interface: {name}"),
        )
    };
    refused(
        &with("averyveryverylongname"),
        &["listeners[0].interface", "15 bytes"],
    );
    refused(&with("'a b'"), &["listeners[0].interface", "space"]);
    refused(&with("''"), &["listeners[0].interface", "1 to 15"]);
    // A well-formed name that no interface has: known only at bind time, still exit 2.
    let (out, stderr, path) = ballast(&["run"], &with("nosuchif0"));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot bind listener pg"), "{stderr}");
    assert!(
        stderr.contains("no network interface named `nosuchif0`"),
        "{stderr}"
    );
    assert!(stderr.contains(&path), "{stderr}");
    assert!(
        !stderr.contains("ballast running"),
        "half-started: {stderr}"
    );
}

#[test]
fn bad_usage_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shipped_example_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
                .arg("check")
                .arg("--config")
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{}: {stderr}", path.display());
            if path.ends_with("quic.yaml") {
                // Its QUIC health check is named as such, not as the UDP probe it is built on.
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(stdout.contains("health check quic"), "{stdout}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "expected quickstart, postgres, redis and iperf configs"
    );
}

#[test]
fn access_log_that_cannot_be_opened_exits_2() {
    let yaml =
        format!("access_log: /nonexistent/dir/access.log\nadmin: {{bind: 127.0.0.1:0}}\n{GOOD}");
    let (out, stderr, path) = ballast(&["run"], &yaml);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot open access_log /nonexistent/dir/access.log"),
        "{stderr}"
    );
    assert!(stderr.contains(&path), "{stderr}");
}

#[test]
fn unbounded_values_are_refused_with_their_key() {
    let weight = GOOD.replace(
        "      - address: 127.0.0.1:5432\n",
        "      - address: 127.0.0.1:5432\n        weight: 4000000000\n",
    );
    refused(
        &weight,
        &["target_groups[0].targets[0].weight", "expected 1 to 10000"],
    );
    let weight = weight.replace("4000000000", "10001");
    refused(&weight, &["targets[0].weight", "expected 1 to 10000"]);
    refused(
        &GOOD.replace("interval: 2s", "interval: 100000000h"),
        &["target_groups[0].health_check.interval", "too long"],
    );
    refused(
        &format!("shutdown_timeout: 99999days\n{GOOD}"),
        &["shutdown_timeout", "too long"],
    );
    let udp = GOOD.replace("protocol: tcp", "protocol: udp").replace(
        "target_group: pg\n",
        "target_group: pg\n    udp: {batch: 2000}\n",
    );
    refused(&udp, &["listeners[0].udp.batch", "expected 1 to 1024"]);
    let (out, stderr, _) = ballast(&["check"], &udp.replace("2000", "1024"));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn tls_and_target_keys_are_checked_with_their_key() {
    let hc = "    health_check:\n      interval: 2s\n      healthy_threshold: 2\n";
    refused(
        &GOOD.replace("protocol: tcp", "protocol: tls"),
        &["listeners[0].tls", "certificates"],
    );
    refused(
        &GOOD.replace(
            "    target_group: pg\ntarget",
            "    target_group: pg\n    tls: {certificates: []}\ntarget",
        ),
        &["listeners[0].tls", "`tls` goes with `protocol: tls`"],
    );
    refused(
        &GOOD.replace(
            hc,
            &format!("{hc}      steps: [{{send: PING, expect: PONG}}]\n"),
        ),
        &["target_groups[0].health_check.steps[0]", "one of"],
    );
    refused(
        &GOOD.replace(
            hc,
            &format!("{hc}      steps: [{{expect: {{regex: '(unclosed'}}}}]\n"),
        ),
        &["health_check.steps[0].expect", "bad regex"],
    );
    refused(
        &GOOD.replace(
            hc,
            &format!("{hc}      redis: {{role: master}}\n      steps: [{{send: x}}]\n"),
        ),
        &["health_check.redis", "not both"],
    );
    refused(
        &GOOD.replace(
            "    targets:",
            "    outlier_detection: {base_ejection: 1m, max_ejection: 10s}\n    targets:",
        ),
        &["target_groups[0].outlier_detection.max_ejection"],
    );
    refused(
        &GOOD.replace(
            "    targets:",
            "    discover: [{dns: no-port.example}]\n    targets:",
        ),
        &["target_groups[0].discover[0].dns", "host:port"],
    );
    // A group may start with discovered targets only.
    let (out, stderr, _) = ballast(
        &["check"],
        &GOOD.replace(
            "    targets:\n      - address: 127.0.0.1:5432\n",
            "    discover: [{srv: _pg._tcp.example}]\n",
        ),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// `ballast schema`, parsed.
fn generated_schema() -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("the schema is JSON")
}

#[test]
fn the_committed_schema_is_the_one_the_config_types_generate() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ballast.schema.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        committed == generated_schema(),
        "conf/ballast.schema.json is stale: run `cargo run -- schema > conf/ballast.schema.json`"
    );
}

#[test]
fn every_shipped_config_names_the_schema_and_validates_against_it() {
    let schema = generated_schema();
    let validator = jsonschema::draft7::new(&schema).expect("a valid draft-07 schema");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=ballast.schema.json\n"),
            "{} does not name the schema for editors",
            path.display()
        );
        let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        checked += 1;
    }
    assert!(checked >= 10, "{checked} configs");
    // The schema is as strict as the loader where it can be: unknown keys, bad enums, ranges.
    for bad in [
        "listeners: [{name: a, protocol: tcp, bind: '127.0.0.1:1', target_group: g, max_conns: 5}]\ntarget_groups: [{name: g, targets: [{address: '127.0.0.1:2'}]}]",
        "listeners: [{name: a, protocol: sctp, bind: '127.0.0.1:1', target_group: g}]\ntarget_groups: [{name: g, targets: [{address: '127.0.0.1:2'}]}]",
        "listeners: [{name: a, protocol: tcp, bind: '127.0.0.1:1', target_group: g}]\ntarget_groups: [{name: g, targets: [{address: '127.0.0.1:2', weight: 0}]}]",
        "listeners: [{name: a, protocol: tcp, bind: '127.0.0.1:1', target_group: g}]\ntarget_groups: [{name: g, health_check: {interval: soon}, targets: [{address: '127.0.0.1:2'}]}]",
    ] {
        let doc: serde_json::Value = serde_yaml::from_str(bad).unwrap();
        assert!(!validator.is_valid(&doc), "the schema takes {bad}");
        assert_eq!(run_check(bad), Some(2), "ballast check takes {bad}");
    }
}

/// `ballast check --config` on `yaml`: its exit code.
fn run_check(yaml: &str) -> Option<i32> {
    let file = write_config(yaml);
    Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["check", "--config"])
        .arg(file.path())
        .output()
        .unwrap()
        .status
        .code()
}

#[test]
fn check_explain_tells_a_keys_meaning_form_and_neighbours() {
    let explain = |key: &str| {
        Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(["check", "--explain", key])
            .output()
            .unwrap()
    };
    let out = explain("listeners.per_source.ipv4_prefix");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("default 32") && text.contains("from 1 to 32"),
        "{text}"
    );
    let out = explain("target_groups.health_check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("interval: Default 2s") && text.contains("unhealthy_threshold"),
        "{text}"
    );
    let out = explain("target_groups.algorithm");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("one of round_robin |") && text.contains("maglev"),
        "{text}"
    );
    let out = explain("listeners.bnd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no key `bnd` in listeners") && err.contains("bind"),
        "{err}"
    );
}

/// `ballast ARGS --config PATH` with `env` set: (exit code, stdout, stderr).
fn ballast_on(
    args: &[&str],
    path: &std::path::Path,
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .arg("--config")
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn every_error_in_a_file_is_reported_at_once_by_check_and_run() {
    let yaml = "\
listeners:
  - {name: a, protocol: tcp, bind: '127.0.0.1:0', target_group: g, helth: 1}
  - {name: b, protocol: tcp, bind: 'nowhere', target_group: g}
target_groups:
  - name: g
    healthcheck: {}
    targets: [{address: '127.0.0.1:5432'}]
";
    let file = write_config(yaml);
    let path = file.path().display().to_string();
    let want = [
        format!("{path}:2:68: listeners[0].helth: unknown field `helth`"),
        format!("{path}:3:36: listeners[1].bind: bad address `nowhere`"),
        format!("{path}:6:5: target_groups[0].healthcheck: unknown field `healthcheck`: did you mean `health_check`?"),
    ];
    let (code, _, stderr) = ballast_on(&["check"], file.path(), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(line.starts_with(want.as_str()), "{line}\nwant {want}");
    }
    let (code, _, stderr) = ballast_on(&["run"], file.path(), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    for want in &want {
        assert!(stderr.contains(want.as_str()), "run lacks {want}: {stderr}");
    }

    // The whole-file checks: every finding, each with its line and column.
    let yaml = "\
listeners:
  - {name: a, protocol: tcp, bind: '127.0.0.1:0', target_group: nope}
  - {name: b, protocol: udp, bind: '127.0.0.1:0', target_group: g, retries: 1}
target_groups:
  - {name: g, targets: [{address: '127.0.0.1:5432'}]}
  - {name: g, targets: [{address: '127.0.0.1:5433'}]}
";
    let (out, stderr, path) = ballast(&["check"], yaml);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!("{path}:6:12: target_groups[1].name: duplicate target group name `g`, first at {path}:5:12"),
            format!("{path}:2:65: listeners[0].target_group: listener `a` names target group `nope`, which is not defined"),
            format!("{path}:3:77: listeners[1].retries: `retries` applies to tcp listeners only"),
        ]
    );
}

#[test]
fn environment_variables_fill_values() {
    let yaml = "\
workers: ${BALLAST_TEST_WORKERS}
access_log: '/tmp/ballast-test-$$HOME.log'
listeners:
  - {name: 'a', protocol: tcp, bind: '127.0.0.1:${BALLAST_TEST_UNSET:-0}', target_group: g}
target_groups:
  - {name: g, targets: [{address: '127.0.0.1:${BALLAST_TEST_PORT}'}]}
";
    let file = write_config(yaml);
    let env = [("BALLAST_TEST_WORKERS", "3"), ("BALLAST_TEST_PORT", "5433")];
    let (code, stdout, stderr) = ballast_on(&["check"], file.path(), &env);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("workers: 3,"), "{stdout}");
    assert!(
        stdout.contains("listener a (tcp) on 127.0.0.1:0")
            && stdout.contains("access log: /tmp/ballast-test-$HOME.log"),
        "{stdout}"
    );
    assert!(
        stdout.contains("target 127.0.0.1:5433 weight 1"),
        "{stdout}"
    );
    // Unset, with no default: refused at its place, naming the variable.
    let (code, _, stderr) = ballast_on(&["check"], file.path(), &env[..1]);
    assert_eq!(code, Some(2), "{stderr}");
    let path = file.path().display();
    assert_eq!(
        stderr.trim(),
        format!(
            "{path}:6:35: target_groups[0].targets[0].address: environment variable \
             `BALLAST_TEST_PORT` is not set (write ${{BALLAST_TEST_PORT:-default}} for a default)"
        )
    );
    // A value is a value: a newline and `key: value` in it add nothing to the file.
    let (code, _, stderr) = ballast_on(
        &["check"],
        file.path(),
        &[("BALLAST_TEST_WORKERS", "2\ntarget_groups: []"), env[1]],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{path}:1:10: workers: invalid type: string")),
        "{stderr}"
    );
}

/// `bind: ":PORT"` (HAProxy's `bind :PORT`) listens on every IPv4 address.
#[test]
fn bind_without_an_address_listens_on_every_address() {
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = format!(
        "listeners:\n  - {{name: l, protocol: tcp, bind: ':0', target_group: g}}\n\
         target_groups:\n  - {{name: g, targets: [{{address: '{}'}}]}}\n",
        target.local_addr().unwrap()
    );
    let (out, stderr, _) = ballast(&["check"], &yaml.replace("':0'", "'*:0'"));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listener l (tcp) on 0.0.0.0:0"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let running = Ballast::start(&yaml);
    let addr = running.addr("l");
    assert!(addr.ip().is_unspecified(), "{addr}");
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    std::net::TcpStream::connect(loopback).expect("reachable on 127.0.0.1");
    target.accept().expect("forwarded to the target");
}

#[test]
fn included_files_are_checked_and_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    let main = dir.path().join("ballast.yaml");
    std::fs::write(&main, "include: [conf.d/*.yaml]\nlisteners:\n  - {name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: g}\n").unwrap();
    let part = dir.path().join("conf.d/g.yaml");
    std::fs::write(
        &part,
        "target_groups:\n  - {name: g, targets: [{address: '127.0.0.1:5432'}]}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = ballast_on(&["check"], &main, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("included {}", part.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("listener l (tcp) on 127.0.0.1:0 -> target group g"),
        "{stdout}"
    );

    std::fs::write(
        &part,
        "target_groups:\n  - {name: g, targets: [{adress: '127.0.0.1:5432'}]}\n",
    )
    .unwrap();
    let (code, _, stderr) = ballast_on(&["check"], &main, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}:2:26: target_groups[0].targets[0].adress: unknown field `adress`: did you mean `address`?",
            part.display()
        )),
        "{stderr}"
    );
    std::fs::write(&main, "include: [conf.d/missing.yaml]\nlisteners: []\n").unwrap();
    let (code, _, stderr) = ballast_on(&["check"], &main, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}:1:11: include[0]: cannot read ",
            main.display()
        )),
        "{stderr}"
    );
}

/// A group only UDP listeners use, left with the default check (a TCP connect), would mark a
/// UDP-only server unhealthy: `check` warns, and says what to set; a group given a check of
/// its own, or also used by a TCP listener, gets no warning.
#[test]
fn check_warns_of_a_udp_group_left_with_the_tcp_check() {
    let udp =
        "listeners:\n  - {name: dns, protocol: udp, bind: '127.0.0.1:0', target_group: dns}\n\
               target_groups:\n  - name: dns\n    targets: [{address: '127.0.0.1:5353'}]\n";
    let (out, stderr, _) = ballast(&["check"], udp);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "warning: target group dns serves UDP listeners only but checks its \
                         targets with TCP connects"
        ) && stderr.contains("protocol: udp"),
        "{stderr}"
    );
    let checked = udp.replace(
        "    targets:",
        "    health_check: {protocol: udp, send: ping}\n    targets:",
    );
    let (_, stderr, _) = ballast(&["check"], &checked);
    assert!(!stderr.contains("warning"), "{stderr}");
    let also_tcp = udp.replace(
        "target_groups:",
        "  - {name: t, protocol: tcp, bind: '127.0.0.1:0', target_group: dns}\ntarget_groups:",
    );
    let (_, stderr, _) = ballast(&["check"], &also_tcp);
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// Names go into log lines, metric labels, URL paths and terminals: a name with a newline,
/// an escape, a space or a slash is refused with the key, not written into a forged log line.
#[test]
fn names_are_words_not_log_lines() {
    for bad in [
        "a b=c",
        "x/y",
        "a\\u001b[31m",
        "fake\\ntcp listener=evil",
        "../../node",
    ] {
        let yaml = GOOD.replace(
            "  - name: pg\n    protocol",
            &format!("  - name: \"{bad}\"\n    protocol"),
        );
        refused(&yaml, &["listeners[0].name", "letters, digits"]);
    }
    let long = "n".repeat(65);
    let yaml = GOOD.replace(
        "  - name: pg\n    protocol",
        &format!("  - name: {long}\n    protocol"),
    );
    refused(&yaml, &["listeners[0].name", "at most", "64"]);
}

#[test]
fn a_bad_cluster_section_names_its_key() {
    let cluster = |etcd: &str| format!("cluster:\n  node_id: n1\n  etcd: {etcd}\n{GOOD}");
    refused(
        &cluster("{endpoints: ['127.0.0.1:2379'], prefix: ballast}"),
        &["cluster.etcd.prefix", "starts with `/`"],
    );
    refused(
        &cluster("{endpoints: [], prefix: /ballast}"),
        &["cluster.etcd.endpoints", "at least one"],
    );
    refused(
        &cluster("{endpoints: ['https://127.0.0.1:2379'], prefix: /ballast}"),
        &["cluster.etcd.endpoints[0]", "https needs cluster.etcd.tls"],
    );
    refused(
        &cluster("{endpoints: ['127.0.0.1:2379'], prefix: /b, username: u}"),
        &["cluster.etcd.password_file", "username needs password_file"],
    );
    refused(
        &cluster("{endpoints: ['127.0.0.1:2379'], prefix: /b, username: u, password_file: /nonexistent/p}"),
        &["cluster.etcd.password_file", "cannot read /nonexistent/p"],
    );
    refused(
        &cluster("{endpoints: ['127.0.0.1:2379'], prefix: /b, tls: {ca: /nonexistent/ca.pem}}"),
        &["cluster.etcd.tls.ca", "cannot read"],
    );
    refused(
        &format!("cluster:\n  node_id: 'a b'\n  etcd: {{endpoints: ['127.0.0.1:2379'], prefix: /b}}\n{GOOD}"),
        &["cluster.node_id", "letters, digits"],
    );
}

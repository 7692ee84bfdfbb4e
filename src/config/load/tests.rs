//! The loader end to end on text and on files in a temporary directory: every error at once,
//! each placed; `${VAR}`; `include:`; `bind: ":PORT"`.

use std::path::Path;

use super::*;

/// Variables for the tests (the process environment is shared by every test thread).
fn env(name: &str) -> Option<String> {
    match name {
        "PG_PORT" => Some("5432".into()),
        "WORKERS" => Some("3".into()),
        "EMPTY" => Some(String::new()),
        "NEWLINE" => Some("a\ntarget_groups: []".into()),
        "SECRET" => Some("hunter2-s3cret".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(Path::new("t.yaml"), text, &env)
}

/// Every problem's line.
fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

const ONE: &str = "\
listeners:
  - {name: pg, protocol: tcp, bind: '127.0.0.1:6432', target_group: pg}
target_groups:
  - name: pg
    targets: [{address: '127.0.0.1:5432'}]
";

#[test]
fn every_entry_with_an_error_is_reported_each_at_its_place() {
    let text = "\
workers: 0
listeners:
  - {name: a, protocol: tcp, bind: '127.0.0.1:1', target_group: pg, retires: 2}
  - {name: b, protocol: tcp, bind: 'nowhere', target_group: pg}
  - {name: c, protocol: tcp, bind: '127.0.0.1:3', target_group: pg}
target_groups:
  - name: pg
    healthcheck: {}
    targets: [{address: '127.0.0.1:5432'}]
";
    assert_eq!(
        problems(text),
        [
            "t.yaml:1:10: workers: invalid value: integer `0`, expected a nonzero u32",
            "t.yaml:3:69: listeners[0].retires: unknown field `retires`: did you mean `retries`?",
            "t.yaml:4:36: listeners[1].bind: bad address `nowhere`: expected ip:port or host:port",
            "t.yaml:8:5: target_groups[0].healthcheck: unknown field `healthcheck`: did you mean \
             `health_check`?",
        ]
    );
}

#[test]
fn whole_file_checks_report_every_finding_with_line_and_column() {
    let text = "\
listeners:
  - {name: a, protocol: tcp, bind: '127.0.0.1:1', target_group: nope}
  - {name: a, protocol: tcp, bind: '127.0.0.1:2', target_group: pg}
  - name: c
    protocol: udp
    bind: '127.0.0.1:3'
    target_group: pg
    retries: 1
target_groups:
  - name: pg
    targets: [{address: '127.0.0.1:5432'}]
  - name: pg
    targets: []
";
    assert_eq!(
        problems(text),
        [
            "t.yaml:12:11: target_groups[1].name: duplicate target group name `pg`, first at \
             t.yaml:10:11",
            "t.yaml:2:65: listeners[0].target_group: listener `a` names target group `nope`, \
             which is not defined",
            "t.yaml:3:12: listeners[1].name: duplicate listener name `a`, first at t.yaml:2:12",
            "t.yaml:8:14: listeners[2].retries: `retries` applies to tcp listeners only",
        ]
    );
    assert_eq!(
        problems("listeners: []\ntarget_groups: []\n"),
        ["t.yaml:1:12: listeners: at least one listener is needed"]
    );
}

#[test]
fn syntax_errors_and_odd_files_are_one_problem_each() {
    let p = problems("listeners: [\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("t.yaml:2:1: "), "{p:?}");
    assert_eq!(
        problems("# nothing\n"),
        ["t.yaml:1:1: the file is empty: it needs `listeners` and `target_groups`"]
    );
    let p = problems("- a\n- b\n");
    assert!(
        p[0].starts_with("t.yaml:1:1: invalid type: sequence"),
        "{p:?}"
    );
    let p = problems("listeners: 5\ntarget_groups: {}\n");
    assert!(
        p[0].starts_with("t.yaml:1:12: listeners: invalid type"),
        "{p:?}"
    );
}

#[test]
fn variables_are_substituted_in_values() {
    let text = format!(
        "workers: ${{WORKERS}}\n{}",
        ONE.replace("5432'", "${PG_PORT}'")
            .replace("'127.0.0.1:6432'", "':${LISTEN:-6432}'")
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.workers, 3);
    assert_eq!(c.listeners[0].bind, "0.0.0.0:6432".parse().unwrap());
    assert_eq!(c.target_groups[0].targets[0].address.port(), 5432);
    // Unset, empty, and a value that would be structure in the text: each an error at its place.
    let text = ONE
        .replace("name: pg, protocol", "name: '${NEWLINE}', protocol")
        .replace("target_group: pg}", "target_group: '${NO_SUCH}'}")
        .replace("'127.0.0.1:5432'", "'${EMPTY}'");
    assert_eq!(
        problems(&text),
        [
            "t.yaml:2:79: listeners[0].target_group: environment variable `NO_SUCH` is not set \
             (write ${NO_SUCH:-default} for a default)",
            "t.yaml:5:25: target_groups[0].targets[0].address: bad address ``: expected ip:port \
             or host:port (after substituting `${EMPTY}`)",
        ]
    );
}

/// Writes `files` (name, text) into a new temporary directory.
fn directory(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn load_in(dir: &tempfile::TempDir) -> Result<Config, ConfigError> {
    let main = dir.path().join("ballast.yaml");
    parse_with(&main, &std::fs::read_to_string(&main).unwrap(), &env)
}

const GROUP_A: &str = "target_groups:\n  - {name: a, targets: [{address: '127.0.0.1:1'}]}\n";
const LISTENER_A: &str =
    "listeners:\n  - {name: a, protocol: tcp, bind: '127.0.0.1:0', target_group: a}\n";

#[test]
fn included_files_are_merged_in_name_order() {
    let main = format!("include: [conf.d/*.yaml, more.yaml, 'empty/*.yaml']\n{ONE}");
    let dir = directory(&[
        ("ballast.yaml", &main),
        (
            "conf.d/20-b.yaml",
            "target_groups:\n  - {name: b, targets: [{address: '127.0.0.1:2'}]}\n",
        ),
        ("conf.d/10-a.yaml", &format!("{LISTENER_A}{GROUP_A}")),
        ("conf.d/notes.txt", "not yaml: ["),
        ("more.yaml", "# nothing yet\n"),
        ("empty/.keep", ""),
    ]);
    let c = load_in(&dir).unwrap();
    let names: Vec<_> = c.target_groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["pg", "a", "b"]);
    assert_eq!(c.listeners[1].target_group, 1);
    let files: Vec<_> = c
        .included
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(files, ["conf.d/10-a.yaml", "conf.d/20-b.yaml", "more.yaml"]);
    // An empty list includes nothing.
    let dir = directory(&[("ballast.yaml", &format!("include: []\n{ONE}"))]);
    assert!(load_in(&dir).unwrap().included.is_empty());
}

#[test]
fn errors_in_included_files_name_that_file_and_duplicates_both_places() {
    let main = format!("include: [conf.d/*.yaml]\n{ONE}");
    let dir = directory(&[
        ("ballast.yaml", &main),
        (
            "conf.d/a.yaml",
            "listeners:\n  - {name: pg, protocol: tcp, bind: '127.0.0.1:0', target_group: zz}\n",
        ),
        (
            "conf.d/b.yaml",
            "workers: 2\ntarget_groups:\n  - {name: b, targts: []}\n",
        ),
        ("conf.d/c.yaml", "include: [x.yaml]\n"),
    ]);
    let e = load_in(&dir).unwrap_err().to_string();
    let d = dir.path().display();
    assert_eq!(
        e.lines().collect::<Vec<_>>(),
        [
            format!(
                "{d}/conf.d/b.yaml:1:1: workers: unknown field `workers`, expected `listeners` \
                 or `target_groups` (an included file holds only listeners and target groups)"
            ),
            format!(
                "{d}/conf.d/b.yaml:3:15: target_groups[0].targts: unknown field `targts`: did \
                 you mean `targets`?"
            ),
            format!(
                "{d}/conf.d/c.yaml:1:10: include: includes do not nest: only the main file may \
                 have `include`"
            ),
        ]
    );
    // With the parse errors fixed, the whole-file checks place theirs in the included file.
    std::fs::remove_file(dir.path().join("conf.d/b.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("conf.d/c.yaml")).unwrap();
    let e = load_in(&dir).unwrap_err().to_string();
    assert_eq!(
        e.lines().collect::<Vec<_>>(),
        [format!(
            "{d}/conf.d/a.yaml:2:12: listeners[0].name: duplicate listener name `pg`, first \
                 at {d}/ballast.yaml:3:12"
        ),]
    );
}

#[test]
fn bad_include_entries_are_reported_at_the_entry() {
    let main = format!("include:\n  - conf.d\n  - missing.yaml\n  - 'nodir/*.yaml'\n{ONE}");
    let dir = directory(&[("ballast.yaml", &main), ("conf.d/a.yaml", GROUP_A)]);
    let e = load_in(&dir).unwrap_err().to_string();
    let lines: Vec<_> = e.lines().collect();
    assert_eq!(lines.len(), 3, "{e}");
    assert!(lines[0].contains("ballast.yaml:2:5: include[0]: "), "{e}");
    assert!(lines[0].contains("is a directory"), "{e}");
    assert!(
        lines[1].contains("ballast.yaml:3:5: include[1]: cannot read"),
        "{e}"
    );
    assert!(
        lines[2].contains("ballast.yaml:4:5: include[2]: cannot read directory"),
        "{e}"
    );
}

#[test]
fn a_substituted_value_never_shows_in_an_error() {
    let text = "workers: ${SECRET}\nlisteners:\n  - {name: a, protocol: tcp, bind: '127.0.0.1:0', target_group: g}\ntarget_groups:\n  - {name: g, targets: [{address: '127.0.0.1:1'}]}\n";
    let all = problems(text).join("\n");
    assert!(all.contains("${SECRET}"), "names the reference: {all}");
    assert!(!all.contains("hunter2"), "the value shows: {all}");
}

/// PostgreSQL routes: a pattern that can never match is refused where it is written.
#[test]
fn postgres_routes_that_never_match_are_refused_at_their_key() {
    let routed = |route: &str| {
        ONE.replace(
            "target_group: pg}",
            &format!("target_group: pg, postgres: {{routes: [{route}]}}}}"),
        )
    };
    let p = problems(&routed("{database: '', target_group: pg}"));
    assert!(
        p[0].contains("postgres.routes[0].database: an empty database never matches"),
        "{p:?}"
    );
    let p = problems(&routed("{user: '', target_group: pg}"));
    assert!(p[0].contains("routes[0].user: an empty user"), "{p:?}");
    let p = problems(&routed("{database: 'a*b', target_group: pg}"));
    assert!(p[0].contains("a `*` goes only at the end"), "{p:?}");
    // A client that sets no application_name has an empty one: that may be matched.
    let c = parse(&routed("{application_name: '', target_group: pg}")).unwrap();
    let pg = c.listeners[0].postgres.as_ref().unwrap();
    assert_eq!(pg.group_for("db", "u", ""), Some(0));
    assert_eq!(pg.group_for("db", "u", "psql"), None);
}

/// What `check` warns of: weights or an agent's percentages under round_robin, a queue that
/// nothing fills, TCP-only settings on a UDP-only group.
#[test]
fn advice_names_settings_that_change_nothing() {
    let c = parse(&ONE.replace(
        "    targets:",
        "    agent_check: {port: 9999}\n    queue: {max: 10}\n    targets:",
    ))
    .unwrap();
    let said = crate::config::advice(&c).join("\n");
    assert!(
        said.contains("has an agent_check but uses round_robin"),
        "{said}"
    );
    assert!(
        said.contains("has a queue but no target sets max_connections"),
        "{said}"
    );
    let c = parse(&ONE.replace(
        "    targets:",
        "    algorithm: least_connections\n    agent_check: {port: 9999}\n    targets:",
    ))
    .unwrap();
    assert_eq!(crate::config::advice(&c), Vec::<String>::new());
    // TCP-only settings on a group only a UDP listener uses.
    let c = parse(&ONE.replace("protocol: tcp", "protocol: udp").replace(
        "    targets:",
        "    health_check: {protocol: udp, send: a, expect: b}\n    source: client\n    \
             queue: {max: 10}\n    targets:",
    ))
    .unwrap();
    let said = crate::config::advice(&c);
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(said[0].contains("sets source: client, which applies to TCP connections only"));
    assert!(said[1].contains("sets queue, which applies to TCP connections only"));
    // Tokens and server IDs where no listener routes by them.
    let c = parse(
        &ONE.replace("protocol: tcp", "protocol: udp")
            .replace(
                "    targets:",
                "    health_check: {protocol: udp, send: a, expect: b}\n    targets:",
            )
            .replace(
                "'127.0.0.1:5432'}",
                "'127.0.0.1:5432', tokens: [abcd], server_id: 1}",
            ),
    )
    .unwrap();
    let said = crate::config::advice(&c);
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(said[0].contains("gives targets tokens, but no listener of the group has `token:`"));
    assert!(said[1].contains("gives targets server_id, but no listener of the group has `quic:`"));
    // A quic: listener's group: its Initials balanced without a hash of their ID; a UDP
    // health check suggested as QUIC's.
    let quic = ONE.replace("protocol: tcp", "protocol: udp").replace(
        "target_group: pg}",
        "target_group: pg, quic: {server_id_length: 1}}",
    );
    let said = crate::config::advice(&parse(&quic).unwrap()).join("\n");
    assert!(
        said.contains("balances QUIC Initials with round_robin")
            && said.contains("{protocol: quic}"),
        "{said}"
    );
    let maglev = quic.replace(
        "    targets:",
        "    algorithm: maglev\n    health_check: {protocol: quic}\n    targets:",
    );
    assert_eq!(
        crate::config::advice(&parse(&maglev).unwrap()),
        Vec::<String>::new()
    );
    // TLS passed through by name beside database routing: a TLS client without a name.
    let sni = ONE.replace(
        "target_group: pg}",
        "target_group: pg, postgres_starttls: true, routes: [{server_name: a.example, \
         target_group: pg}], postgres: {}}",
    );
    let said = crate::config::advice(&parse(&sni).unwrap()).join("\n");
    assert!(
        said.contains("`without_server_name: close` makes such a libpq"),
        "{said}"
    );
    let closed = sni.replace("postgres: {}", "without_server_name: close, postgres: {}");
    assert_eq!(
        crate::config::advice(&parse(&closed).unwrap()),
        Vec::<String>::new()
    );
}

/// `quic:` mistakes, each at its key: a TCP listener, a key with plaintext or none with
/// block_cipher, a key file others can read or that holds no key, lengths the draft refuses,
/// server IDs too large or given twice.
#[test]
fn quic_mistakes_are_refused_at_their_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.display().to_string()
    };
    let good = write("good.key", "8f95f09245765f80256934e50c66207f\n", 0o600);
    let open = write("open.key", "8f95f09245765f80256934e50c66207f\n", 0o644);
    let short = write("short.key", "8f95f092", 0o600);
    let udp = |quic: &str, targets: &str| {
        format!(
            "listeners:\n  - {{name: q, protocol: udp, bind: '127.0.0.1:4433', target_group: \
             g, quic: {quic}}}\ntarget_groups:\n  - name: g\n    targets: [{targets}]\n"
        )
    };
    let one = "{address: '127.0.0.1:4434', server_id: 1}";
    let first = |text: &str| problems(text)[0].clone();
    assert!(first(&ONE.replace(
        "target_group: pg}",
        "target_group: pg, quic: {server_id_length: 1}}"
    ))
    .contains("listeners[0].quic: QUIC routing applies to udp listeners only"));
    assert!(first(&udp(
        &format!("{{server_id_length: 1, key_file: '{good}'}}"),
        one
    ))
    .contains("quic.key_file: a key goes with `algorithm: block_cipher`"));
    assert!(
        first(&udp("{server_id_length: 1, algorithm: block_cipher}", one))
            .contains("needs a key_file")
    );
    assert!(first(&udp(
        &format!("{{server_id_length: 1, algorithm: block_cipher, key_file: '{open}'}}"),
        one
    ))
    .contains("can be read by group or others"));
    assert!(first(&udp(
        &format!("{{server_id_length: 1, algorithm: block_cipher, key_file: '{short}'}}"),
        one
    ))
    .contains("32 hex digits"));
    assert!(
        first(&udp("{server_id_length: 8, nonce_length: 12}", one)).contains("at most 19 octets")
    );
    assert!(first(&udp("{server_id_length: 9}", one)).contains("quic.server_id_length"));
    assert!(
        first(&udp("{server_id_length: 1, config_rotation: 7}", one))
            .contains("quic.config_rotation")
    );
    assert!(
        first(&udp("{server_id_length: 1, connection_id_length: 5}", one))
            .contains("connection_id_length")
    );
    assert!(first(&udp(
        "{server_id_length: 1}",
        "{address: '127.0.0.1:4434', server_id: 256}"
    ))
    .contains("server_id 256, which does not fit 1 octet(s) (at most 255)"));
    assert!(first(&udp(
        "{server_id_length: 1}",
        "{address: '127.0.0.1:4434', server_id: 3}, {address: '127.0.0.1:4435', server_id: 3}"
    ))
    .contains(
        "two targets have server_id 3 (targets[0] 127.0.0.1:4434 and targets[1] 127.0.0.1:4435)"
    ));
    // A retiring configuration: its own codepoint, its own key rules, server IDs fitting it.
    assert!(first(&udp(
        "{server_id_length: 1, retiring: {server_id_length: 2, config_rotation: 0}}",
        one
    ))
    .contains("quic.retiring.config_rotation: 0 is the current configuration's codepoint"));
    assert!(first(&udp(
        "{server_id_length: 1, retiring: {server_id_length: 1, config_rotation: 1, \
         algorithm: block_cipher}}",
        one
    ))
    .contains("quic.retiring.key_file"));
    assert!(first(&udp(
        "{server_id_length: 2, retiring: {server_id_length: 1, config_rotation: 1}}",
        "{address: '127.0.0.1:4434', server_id: 300}"
    ))
    .contains("server_id 300, which does not fit 1 octet(s) (retiring)"));
    let c = parse(&udp(
        "{server_id_length: 1, retiring: {server_id_length: 3, nonce_length: 6, \
         config_rotation: 2}}",
        one,
    ))
    .unwrap();
    let q = c.listeners[0].quic.as_ref().unwrap();
    assert_eq!(q.connection_id_length, 10, "the longer of 6 and 10");
    assert!(first(&udp(
        "{server_id_length: 1, connection_id_length: 8, retiring: {server_id_length: 3, \
         nonce_length: 6, config_rotation: 2}}",
        one
    ))
    .contains("(the retiring configuration's)"));
    // Tokens: a repeat names both holders; a wrong size shows unprintable octets as base64.
    let tokens = |targets: &str| {
        format!(
            "listeners:\n  - {{name: t, protocol: udp, bind: '127.0.0.1:4433', target_group: \
             g, token: {{capture: prefix, size: 4}}}}\ntarget_groups:\n  - name: g\n    \
             targets: [{targets}]\n"
        )
    };
    assert!(first(&tokens(
        "{address: '127.0.0.1:1', tokens: [abcd]}, {address: '127.0.0.1:2', tokens: [abcd]}"
    ))
    .contains("token `abcd` is listed twice (targets[0] 127.0.0.1:1 and targets[1] 127.0.0.1:2)"));
    let said = first(&tokens("{address: '127.0.0.1:1', tokens: ['base64:AAEC']}"));
    assert!(said.contains("token `base64:AAEC` is 3 octet(s)"), "{said}");
    // And a good one: the key is read, never shown.
    let c = parse(&udp(
        &format!("{{server_id_length: 2, algorithm: block_cipher, key_file: '{good}'}}"),
        one,
    ))
    .unwrap();
    let q = c.listeners[0].quic.as_ref().unwrap();
    assert_eq!(q.connection_id_length, 7);
    assert!(!format!("{q:?}").contains("8f95"), "{q:?}");
}

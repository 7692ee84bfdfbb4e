//! `source: client` (IP_TRANSPARENT) in network namespaces: a client, the Ballast host and a
//! PostgreSQL 15 host whose route to the client goes through Ballast. With the routing of
//! `conf/tproxy/setup.sh` PostgreSQL sees the client's own address in `pg_stat_activity`;
//! without it the connect times out and the log says where to look; without CAP_NET_ADMIN
//! Ballast refuses to start, saying so.

mod common;

use std::io::Write;
use std::process::Command;

use common::netns::wait_for;
use common::netns::{run, Lab};
use common::postgres::{initdb, postgres_bin};
use common::*;

/// psql from namespace `ns` to Ballast at 10.55.1.1:6432: the address PostgreSQL sees.
fn client_addr_seen(lab: &Lab) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "psql"])
        .arg("host=10.55.1.1 port=6432 user=postgres dbname=postgres connect_timeout=5")
        .args([
            "-tAXc",
            "select client_addr from pg_stat_activity where pid = pg_backend_pid()",
        ])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[test]
fn postgresql_sees_the_client_s_own_address() {
    let mut lab = Lab::new("tp");
    for ns in ["client", "lb", "db"] {
        lab.add(ns);
    }
    lab.link("client", "c0", "lb", "l0");
    lab.link("lb", "l1", "db", "d0");
    lab.ip("client", &["addr", "add", "10.55.1.2/24", "dev", "c0"]);
    lab.ip("client", &["route", "add", "default", "via", "10.55.1.1"]);
    lab.ip("lb", &["addr", "add", "10.55.1.1/24", "dev", "l0"]);
    lab.ip("lb", &["addr", "add", "10.55.2.1/24", "dev", "l1"]);
    lab.ip("db", &["addr", "add", "10.55.2.2/24", "dev", "d0"]);
    // The database's way back to the client is through the Ballast host.
    lab.ip("db", &["route", "add", "default", "via", "10.55.2.1"]);

    // PostgreSQL on the db host, taking everyone (trust), run as `postgres` there.
    let (pg_dir, data) = initdb();
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))
        .unwrap();
    writeln!(hba, "host all all 0.0.0.0/0 trust").unwrap();
    drop(hba);
    let postgres = postgres_bin().join("postgres");
    let socket_dir = pg_dir.path().to_str().unwrap().to_string();
    let pg = lab.spawn(
        "db",
        "postgres",
        "setpriv",
        &[
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            postgres.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-k",
            &socket_dir,
            "-c",
            "listen_addresses=10.55.2.2",
            "-c",
            "ssl=off",
        ],
    );

    // Ballast on the middle host: the shipped recipe's config with this lab's addresses.
    let recipe = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/tproxy/ballast.yaml"
    ))
    .unwrap();
    let yaml = recipe
        .replace("bind: 0.0.0.0:5432", "bind: 10.55.1.1:6432")
        .replace("10.0.2.10:5432", "10.55.2.2:5432")
        .replace("connect_timeout: 2s", "connect_timeout: 1s\n    retries: 0")
        .replace(
            "workers: 2\n",
            "workers: 2\nadmin: {bind: '127.0.0.1:7390'}\n",
        )
        .replace(
            "target_groups:",
            "  - {name: behind, protocol: tcp, bind: '10.55.1.1:6433', target_group: db, \
             accept_proxy_protocol: {trusted: [10.55.1.0/24]}, \
             connect_timeout: 1s, retries: 0}\ntarget_groups:",
        );
    assert!(yaml.contains("source: client"), "{yaml}");
    let config = lab.dir().join("ballast.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let ballast = env!("CARGO_BIN_EXE_ballast");
    let lb = lab.spawn(
        "lb",
        "ballast",
        ballast,
        &["run", "--config", config.to_str().unwrap()],
    );
    wait_for("PostgreSQL ready", WAIT, || {
        lab.process(pg)
            .log()
            .contains("ready to accept connections")
    });
    wait_for("Ballast listening", WAIT, || {
        lab.process(lb).log().contains("on 10.55.1.1:6432")
    });

    // Without the routing: the database answers the client's address, the answer is not
    // Ballast's, the connect times out, and the log says where to look.
    let refused = client_addr_seen(&lab).unwrap_err();
    assert!(
        refused.contains("server closed the connection"),
        "{refused}"
    );
    let log = lab.process(lb).log();
    assert!(
        log.contains("source: client: are the target's answers to clients routed back"),
        "{log}"
    );

    // With conf/tproxy/setup.sh on the Ballast host: PostgreSQL sees the client itself.
    let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tproxy/setup.sh");
    run("ip", &["netns", "exec", &lab.ns("lb"), "sh", setup]);
    let seen = client_addr_seen(&lab).unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(seen, "10.55.1.2");

    // A PROXY header naming the database host itself as the client: refused as a source at
    // once (its SYN would come back to it from its own address and time out), counted
    // against no target.
    let header = "PROXY TCP4 10.55.2.2 10.55.1.1 40000 6433\r\n";
    let send = format!(
        "import socket; s = socket.create_connection(('10.55.1.1', 6433), 5); \
         s.settimeout(5); s.sendall(b'{}'); s.recv(1)",
        header.replace("\r\n", "\\r\\n")
    );
    let _ = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "python3", "-c", &send])
        .output()
        .unwrap();
    wait_for("the refusal in the log", WAIT, || {
        lab.process(lb).log().contains("is the target's own")
    });
    assert!(
        !lab.process(lb).log().contains("reason=no target"),
        "{}",
        lab.process(lb).log()
    );

    // Without CAP_NET_ADMIN (an unprivileged user): refused at start, saying what is missing.
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            ballast,
        ])
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");
}

/// An IPv6 client of a group whose target is IPv4: its address cannot be a source there. It is
/// reset at once, logged (rate-limited) and counted against no target.
#[test]
fn a_client_whose_address_cannot_be_the_source_is_reset_and_logged() {
    let target = Backend::start(echo());
    let lb = Ballast::start(&format!(
        "listeners:\n  - {{name: l, protocol: tcp, bind: '[::1]:0', target_group: g}}\n\
         target_groups:\n  - name: g\n    source: client\n    \
         health_check: {{protocol: tcp, interval: 60s, timeout: 1s}}\n    \
         targets: [{{address: '{}'}}]\n",
        target.addr
    ));
    let mut s = std::net::TcpStream::connect(lb.addr("l")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(b"hello");
    let mut buf = [0u8; 8];
    assert!(!matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0));
    wait_until("the warning", || {
        lb.log().contains("`source: client` cannot connect")
    });
    wait_until("the access log line", || {
        lb.log().contains("reason=source_unusable")
    });
    assert_eq!(
        group_targets(lb.admin_addr(), "g")[0]["connect_failures"],
        0
    );
}

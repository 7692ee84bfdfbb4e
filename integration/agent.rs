//! Agent checks (HAProxy's agent-check protocol): an agent on each target's host answers a
//! line, and the words move traffic within one interval: `drain` takes the target out of new
//! connections, `ready 75%` brings it back at three quarters of its weight, `down` makes it
//! unhealthy whatever its health check says, `up` lifts that. A line with a word Ballast
//! does not know is ignored and logged once.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// An agent on `ip`: answers every connection with the current line, then closes.
struct Agent {
    line: Arc<Mutex<String>>,
    port: u16,
}

impl Agent {
    fn start(ip: &str, port: u16) -> Agent {
        let listener = TcpListener::bind((ip, port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let line = Arc::new(Mutex::new("ready up 100%\n".to_string()));
        let said = line.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let text = said.lock().unwrap().clone();
                let _ = conn.write_all(text.as_bytes());
            }
        });
        Agent { line, port }
    }

    fn say(&self, line: &str) {
        *self.line.lock().unwrap() = format!("{line}\n");
    }
}

/// Which target answered each of `n` connections: (to a, to b).
fn spread(addr: SocketAddr, n: usize) -> (usize, usize) {
    let mut counts = (0, 0);
    for _ in 0..n {
        match fetch(addr).unwrap().trim() {
            "a" => counts.0 += 1,
            "b" => counts.1 += 1,
            other => panic!("answered {other:?}"),
        }
    }
    counts
}

/// The `/targets` entry of the target at `address`.
fn target(admin: SocketAddr, address: SocketAddr) -> serde_json::Value {
    group_targets(admin, "g")
        .into_iter()
        .find(|t| t["address"] == address.to_string())
        .unwrap()
}

#[test]
fn agent_words_move_traffic_within_an_interval() {
    // Two hosts on loopback, each with a target and an agent on the same port.
    let a = Backend::start_on("127.0.0.2:0".parse().unwrap(), named("a"));
    let b = Backend::start_on("127.0.0.3:0".parse().unwrap(), named("b"));
    let agent_a = Agent::start("127.0.0.2", 0);
    let agent_b = Agent::start("127.0.0.3", agent_a.port);
    // Weights of 1: an agent's 75% must still count (not be truncated back to 1).
    let yaml = |agent: bool| {
        format!(
            "workers: 1\nlisteners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', \
             target_group: g}}\ntarget_groups:\n  - name: g\n    \
             algorithm: weighted_round_robin\n    \
             health_check: {{protocol: tcp, interval: 60s, timeout: 1s}}\n    {}\
             targets: [{{address: '{}', weight: 1}}, {{address: '{}', weight: 1}}]\n",
            if agent {
                format!(
                    "agent_check: {{port: {}, interval: 200ms, timeout: 100ms}}\n    ",
                    agent_a.port
                )
            } else {
                String::new()
            },
            a.addr,
            b.addr
        )
    };
    let lb = Ballast::start(&yaml(true));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    wait_until("both agents heard", || {
        [a.addr, b.addr]
            .iter()
            .all(|&t| target(admin, t)["agent"]["answered"] == true)
    });
    assert_eq!(spread(addr, 8), (4, 4));

    // drain: no new connections to a, within an interval.
    let asked = Instant::now();
    agent_a.say("drain");
    wait_until("a drained", || {
        target(admin, a.addr)["agent"]["mode"] == "drain"
    });
    assert!(
        asked.elapsed() < Duration::from_millis(600),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(spread(addr, 8), (0, 8));
    // The operator sees why in `ballast targets`: an agent's drain, not theirs.
    // `ballast ARGS` against this node: what it printed.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(args)
            .args(["--admin", &format!("http://{admin}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let a_addr = a.addr.to_string();
    let row_of_a = || {
        let table = cli(&["targets"]);
        let row = table.lines().find(|l| l.contains(&a.addr.to_string()));
        row.map_or(table.clone(), str::to_string)
    };
    assert!(row_of_a().contains("agt:drain"), "{}", row_of_a());
    // Drained by the operator as well: both show (enabling it would not bring it back).
    let drain = format!("/target-groups/g/targets/{}/drain", a.addr);
    assert_eq!(http(admin, "POST", &drain, None, "").0, 200);
    let row = row_of_a();
    assert!(row.contains("draining,agt:drain"), "{row}");
    // Enabled by the operator, it is still the agent's to bring back: the CLI says so.
    let said = cli(&["enable", "g", &a_addr]);
    assert!(said.contains("active (but its agent says drain"), "{said}");
    // `0%` drains too: what the algorithms use is then nothing.
    agent_a.say("ready 0%");
    wait_until("a at 0%", || {
        target(admin, a.addr)["agent"]["weight_percent"] == 0
    });
    assert_eq!(target(admin, a.addr)["effective_weight"], 0);
    assert_eq!(spread(addr, 8), (0, 8));
    let said = cli(&["enable", "g", &a_addr]);
    assert!(said.contains("(but its agent says 0%"), "{said}");
    // What it said, as text (a tab is a tab), up to the NUL that ends the line.
    agent_a.say("ready\tup\0junk 1%");
    wait_until("the line recorded", || {
        target(admin, a.addr)["agent"]["said"] == "ready\tup"
    });
    assert_eq!(
        target(admin, a.addr)["agent"]["weight_percent"],
        0,
        "junk unread"
    );

    // ready 75%: back, at three quarters of b's weight.
    agent_a.say("ready 75%");
    wait_until("a back at 75%", || {
        target(admin, a.addr)["effective_weight"] == 75
    });
    assert_eq!(target(admin, a.addr)["weight"], 1, "the configured weight");
    assert_eq!(target(admin, a.addr)["agent"]["mode"], "ready");
    assert_eq!(spread(addr, 70), (30, 40));

    // down: unhealthy, whatever the (passing) health check says.
    agent_a.say("down # replica lag 42s");
    wait_until("a down", || target(admin, a.addr)["health"] == "unhealthy");
    assert_eq!(spread(addr, 8), (0, 8));
    // Both down: the group fails open, and says so.
    agent_b.say("down");
    wait_until("failing open logged", || {
        lb.log()
            .contains("target group g: every target is unhealthy; failing open")
    });
    agent_b.say("up");
    wait_until("b up", || target(admin, b.addr)["health"] == "healthy");
    agent_a.say("up");
    wait_until("a up", || target(admin, a.addr)["health"] == "healthy");
    let (to_a, _) = spread(addr, 14);
    assert!(to_a > 0);

    // A word it does not know: the line is ignored (a stays as it was), logged once.
    agent_a.say("up sideways");
    let logged = || lb.log().matches("said `up sideways`").count();
    wait_until("the malformed line logged", || logged() >= 1);
    let before = target(admin, a.addr)["agent"]["at_unix_ms"]
        .as_u64()
        .unwrap();
    wait_until("two more answers", || {
        target(admin, a.addr)["agent"]["at_unix_ms"]
            .as_u64()
            .unwrap()
            > before + 300
    });
    assert_eq!(
        lb.log().matches("said `up sideways`").count(),
        1,
        "{}",
        lb.log()
    );
    let t = target(admin, a.addr);
    assert_eq!(
        (t["health"].as_str(), t["effective_weight"].as_u64()),
        (Some("healthy"), Some(75))
    );

    // agent_check removed by a reload while a's agent says drain and down: what it said no
    // longer counts (a is back, healthy, at its own weight) and it is asked no more.
    agent_a.say("drain down 50%");
    wait_until("a drained and down", || {
        let t = target(admin, a.addr);
        t["agent"]["mode"] == "drain" && t["health"] == "unhealthy"
    });
    lb.rewrite_config(&yaml(false));
    let (status, body) = http(admin, "POST", "/reload", None, "");
    assert_eq!(status, 200, "{body}");
    wait_until("a back in service", || {
        let t = target(admin, a.addr);
        t["health"] == "healthy" && t["agent"].is_null() && t["effective_weight"] == 1
    });
    assert_eq!(spread(addr, 8), (4, 4));
    drop(agent_b);
}

/// `examples/pg_lag_agent.py` against real PostgreSQL 15: a streaming replica in step is at
/// full weight (`up ready 100%`), a primary is kept out of the reads (`drain`), and a server
/// that stopped is `down`; through Ballast, the replica takes the reads and the primary none.
#[test]
fn the_postgresql_lag_agent_sends_reads_to_replicas_only() {
    use common::pki::Pki;
    use common::postgres::Postgres;
    let pki = Pki::new();
    let primary = Postgres::start_with(&pki, "primary", false);
    let replica = Postgres::replica_of(&primary);
    // An agent runs on its server's host, and Ballast asks it at the target's host. Both
    // servers listen on 127.0.0.1, so each agent gets a loopback address of its own, and
    // below a hop on that address (a second Ballast) stands for its server.
    let agent = |pg: &Postgres, ip: &str, port: u16| {
        let child = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/pg_lag_agent.py"
            ))
            .args(["--bind", ip, "--port", &port.to_string(), "--dsn"])
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                pg.addr.port()
            ))
            .spawn()
            .unwrap();
        KillOnDrop(child)
    };
    let port = free_port();
    let _on_primary = agent(&primary, "127.0.0.2", port);
    let _on_replica = agent(&replica, "127.0.0.3", port);
    let ask = |ip: &str| -> String {
        let mut s = match std::net::TcpStream::connect((ip, port)) {
            Ok(s) => s,
            Err(e) => return format!("no agent: {e}"),
        };
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut line = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut line);
        line.trim().to_string()
    };
    wait_until("the replica's agent at full weight", || {
        ask("127.0.0.3") == "up ready 100%"
    });
    assert_eq!(ask("127.0.0.2"), "up drain # not a replica");

    // Through Ballast: the targets are the hops, so each target's host is its agent's.
    let hop = |ip: &str, to: SocketAddr| {
        Ballast::start(&format!(
            "listeners:\n  - {{name: h, protocol: tcp, bind: '{ip}:0', target_group: s}}\n\
             target_groups:\n  - name: s\n    \
             health_check: {{protocol: tcp, interval: 60s, timeout: 1s}}\n    \
             targets: [{{address: '{to}'}}]\n"
        ))
    };
    let (to_primary, to_replica) = (
        hop("127.0.0.2", primary.addr),
        hop("127.0.0.3", replica.addr),
    );
    let lb = Ballast::start(&format!(
        "listeners:\n  - {{name: reads, protocol: tcp, bind: '127.0.0.1:0', target_group: r}}\n\
         target_groups:\n  - name: r\n    \
         health_check: {{protocol: tcp, interval: 60s, timeout: 1s}}\n    \
         agent_check: {{port: {port}, interval: 1s, timeout: 900ms}}\n    \
         targets: [{{address: '{}'}}, {{address: '{}'}}]\n",
        to_primary.addr("h"),
        to_replica.addr("h")
    ));
    wait_until("the primary drained by its agent", || {
        target_of(&lb, to_primary.addr("h"))["agent"]["mode"] == "drain"
    });
    for _ in 0..4 {
        let got = common::postgres::psql(
            lb.addr("reads"),
            "postgres",
            "",
            "select pg_is_in_recovery()",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, "t", "a read reached the primary");
    }
    // The replica's server stops: its agent says down, and the target is unhealthy.
    drop(replica);
    wait_until("the replica's agent says down", || {
        ask("127.0.0.3").starts_with("down #")
    });
    wait_until("the replica's target unhealthy", || {
        target_of(&lb, to_replica.addr("h"))["health"] == "unhealthy"
    });
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `/targets` entry of group `r`'s target at `address` on `lb`.
fn target_of(lb: &Ballast, address: SocketAddr) -> serde_json::Value {
    group_targets(lb.admin_addr(), "r")
        .into_iter()
        .find(|t| t["address"] == address.to_string())
        .unwrap()
}

//! Zero-downtime restart and upgrade: `ballast run --upgrade-from SOCKET` takes the listening
//! sockets of the running process over (SCM_RIGHTS), which then stops accepting and drains.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// A config in front of `target` on a fixed port (a free one found now: the new process
/// must configure the same address), serving `upgrade_socket` at `socket`.
fn upgradable(target: SocketAddr, socket: &std::path::Path, listener_extra: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config("round_robin", &[(target, 1)], listener_extra, NO_CHECKS)
        .replacen("bind: 127.0.0.1:0", &format!("bind: 127.0.0.1:{port}"), 1)
        .replacen(
            "shutdown_timeout: 5s\n",
            &format!(
                "shutdown_timeout: 20s\nupgrade_socket: {}\n",
                socket.display()
            ),
            1,
        )
}

/// Waits until `old` has handed its listeners over and stopped accepting: its admin API stops
/// answering (the new process serves the API now, on the same address when it is fixed).
#[track_caller]
fn wait_handed_over(old: &Ballast) {
    let admin = old.admin_addr();
    wait_until(
        "the old process to hand over and close its admin API",
        || try_http(admin, "GET", "/node", None, "").is_err(),
    );
}

/// One request through `addr`: bytes out, the same bytes back, a clean end.
fn round_trip(addr: SocketAddr, payload: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(payload).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != payload {
        return Err(format!("{} bytes back of {}", back.len(), payload.len()));
    }
    Ok(())
}

#[test]
fn clients_waiting_in_the_backlog_are_served_by_the_new_process() {
    let target = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    // One connection at a time: further clients wait in the backlog of the old process.
    let yaml = upgradable(target.addr, &socket, "    max_connections: 1\n");
    let mut old = Ballast::start(&yaml);
    let addr = old.addr("l");
    let mut holder = client(addr);
    holder.write_all(b"held").unwrap();
    let mut buf = [0u8; 4];
    holder.read_exact(&mut buf).unwrap();
    let waiting: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = client(addr);
            s.write_all(format!("waiting {i:02}").as_bytes()).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            s
        })
        .collect();
    assert_eq!(
        sample(
            &scrape(old.admin_addr()).0,
            "ballast_listener_active",
            "listener",
            "l"
        ),
        Some(1.0),
        "the others must wait in the backlog"
    );

    let new = Ballast::start_with_args(&yaml, &["--upgrade-from", socket.to_str().unwrap()]);
    wait_handed_over(&old);
    // The old process still holds its connection, and ends when it does.
    holder.write_all(b"more").unwrap();
    holder.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"more");
    for (i, mut s) in waiting.into_iter().enumerate() {
        let mut back = String::new();
        s.read_to_string(&mut back)
            .unwrap_or_else(|e| panic!("waiting client {i}: {e}"));
        assert_eq!(back, format!("waiting {i:02}"));
    }
    drop(holder);
    let status = old
        .wait_exit(WAIT)
        .expect("the old process exits once drained");
    assert!(status.success(), "{status:?}");
    assert!(new.log().contains("takes over 2 sockets"), "{}", new.log());
    // The handed-over sockets join the new process's steering: the old one released them
    // from its socket arrays (a socket can be in one only; EBUSY otherwise).
    let load_aware = unlabelled(new.admin_addr(), "ballast_accept_steering_load_aware");
    assert_eq!(load_aware, Some(1.0), "{}", new.log());
    // For a service manager: the new process says READY with its own MAINPID; the old one,
    // whose place it took, never says STOPPING (systemd would take the service as stopping).
    let said = new.notifications.messages().join("\n");
    assert!(said.contains(&format!("MAINPID={}", new.pid())), "{said}");
    let old_said = old.notifications.messages().join("\n");
    assert!(!old_said.contains("STOPPING=1"), "{old_said}");
    assert_eq!(http(new.admin_addr(), "GET", "/healthz", None, "").0, 200);
    // The new process serves the upgrade socket in turn.
    assert!(socket.exists());
}

#[test]
fn upgrade_under_load_fails_no_connection_and_cuts_no_stream() {
    let target = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let yaml = upgradable(target.addr, &socket, "");
    let mut old = Ballast::start(&yaml);
    let addr = old.addr("l");
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

    // ~200 new connections per second, from two threads.
    let churn: Vec<_> = (0..2)
        .map(|t| {
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    match round_trip(addr, format!("thread {t} request").as_bytes()) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.push(e);
                            failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(10));
                }
                errors
            })
        })
        .collect();
    // 20 long streams, each sending a numbered chunk every 20 ms and checking the echo.
    let streams: Vec<_> = (0..20)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let mut s = client(addr);
                let mut chunks = 0;
                while !stop.load(Ordering::Acquire) {
                    let chunk = format!("stream {i:02} chunk {chunks:06}\n");
                    s.write_all(chunk.as_bytes())
                        .map_err(|e| format!("write: {e}"))?;
                    let mut back = vec![0u8; chunk.len()];
                    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
                    if back != chunk.as_bytes() {
                        return Err(format!("stream {i}: chunk {chunks} came back altered"));
                    }
                    chunks += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                s.shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).map_err(|e| format!("end: {e}"))?;
                Ok(chunks)
            })
        })
        .collect();

    wait_until("traffic flows", || done.load(Ordering::Relaxed) > 50);
    let new = Ballast::start_with_args(&yaml, &["--upgrade-from", socket.to_str().unwrap()]);
    wait_handed_over(&old);
    let handed = done.load(Ordering::Relaxed);
    wait_until("the new process serves", || {
        done.load(Ordering::Relaxed) > handed + 200
    });
    stop.store(true, Ordering::Release);
    let errors: Vec<String> = churn.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    for (i, s) in streams.into_iter().enumerate() {
        let chunks = s
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert!(chunks > 10, "stream {i}: {chunks} chunks");
    }
    // Its streams done, the old process exits well before its shutdown_timeout.
    let started = Instant::now();
    let status = old
        .wait_exit(WAIT)
        .expect("the old process exits once drained");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(round_trip(new.addr("l"), b"after").is_ok());
}

#[test]
fn a_second_process_without_upgrade_from_is_refused_and_a_bad_socket_is_an_error() {
    let target = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let yaml = upgradable(target.addr, &socket, "");
    let _running = Ballast::start(&yaml);
    let stderr = run_refused(&yaml);
    assert!(stderr.contains("start with `--upgrade-from"), "{stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["run", "--upgrade-from"])
        .arg(dir.path().join("nothing.sock"))
        .arg("--config")
        .arg(write_config(&yaml).path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

/// An echo target and an upgradable config with the admin API on a fixed address and a UNIX
/// socket (`admin.sock`, beside `upgrade.sock`, in the directory returned).
fn with_fixed_admin() -> (Backend, tempfile::TempDir, String, SocketAddr) {
    let target = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let unix = dir.path().join("admin.sock");
    let admin_port = stable_port();
    let yaml = format!(
        "admin: {{bind: '127.0.0.1:{admin_port}', unix: '{}'}}\n{}",
        unix.display(),
        upgradable(target.addr, &socket, "")
    );
    (target, dir, yaml, ([127, 0, 0, 1], admin_port).into())
}

/// The packaged way: the admin API on a fixed address and a UNIX socket. The new process binds
/// the same address beside the old one (SO_REUSEPORT) and its own socket at the same path;
/// after the handover only the new one answers, on both; the old one's exit removes nothing of
/// the new one's. A second process *without* `--upgrade-from` is refused the admin address.
#[test]
fn an_upgrade_takes_a_fixed_admin_address_and_unix_socket_over() {
    let (_target, dir, yaml, admin) = with_fixed_admin();
    let (socket, unix) = (
        dir.path().join("upgrade.sock"),
        dir.path().join("admin.sock"),
    );
    let mut old = Ballast::start(&yaml);
    assert_eq!(get_json(admin, "/node")["pid"], old.pid());
    // Not an upgrade (and listeners of its own): the admin address is another process's.
    let port = old.addr("l").port();
    let other = yaml
        .replace(&format!("upgrade_socket: {}", socket.display()), "")
        .replace(&format!("bind: 127.0.0.1:{port}"), "bind: 127.0.0.1:0");
    let refused = run_refused(&other);
    assert!(
        refused.contains("admin API") && refused.contains("in use"),
        "{refused}"
    );

    let new = Ballast::start_with_args(&yaml, &["--upgrade-from", socket.to_str().unwrap()]);
    // Both serve the one socket until the old one hears `taken`: wait for that, then for its
    // accept loop to end.
    wait_until("the old process hands over", || {
        old.log()
            .contains("upgrade: a new process serves the listeners")
    });
    wait_until("the new process answers the admin address", || {
        get_json(admin, "/node")["pid"] == new.pid()
    });
    // The old one drains what waited in the shared backlog, then closes its side.
    wait_until("the old process stops accepting", || {
        old.log().contains("admin API: no longer accepting")
    });
    // For a while: every answer is the new one's (the old one closed its side).
    for _ in 0..20 {
        assert_eq!(get_json(admin, "/node")["pid"], new.pid());
    }
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args([
            "node",
            "status",
            "--admin",
            &format!("unix:{}", unix.display()),
        ])
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", stderr(&cli));
    assert!(
        old.wait_exit(Duration::from_secs(30)).is_some(),
        "the old process exits"
    );
    assert!(
        unix.exists(),
        "the old process's exit left the new one's socket"
    );
    assert_eq!(get_json(admin, "/node")["pid"], new.pid());
    round_trip(new.addr("l"), b"still served").unwrap();
}

/// Clients of the admin API (one request per connection, over TCP and the UNIX socket) never
/// see a connection closed unanswered while three upgrades in a row hand the API over: what
/// the old process accepted it answers, what waited in its backlogs it accepts and answers
/// too. (The race this guards is narrow: a release build under a tight loop of clients hit
/// it a few times in 50,000 requests; a debug build rarely does.)
#[test]
fn admin_clients_are_answered_through_an_upgrade() {
    let (_target, dir, yaml, admin) = with_fixed_admin();
    let (socket, unix) = (
        dir.path().join("upgrade.sock"),
        dir.path().join("admin.sock"),
    );
    let mut old = Ballast::start(&yaml);
    let done = AtomicBool::new(false);
    let (asked, unanswered) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let request = b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let ask = |mut s: Box<dyn ReadWrite>| {
        asked.fetch_add(1, Ordering::Relaxed);
        let mut answer = Vec::new();
        let ok = s.write_all(request).is_ok() && s.read_to_end(&mut answer).is_ok();
        if !ok || !answer.starts_with(b"HTTP/1.1 200") {
            unanswered.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut last = None;
    std::thread::scope(|scope| {
        for over_unix in [false, true].repeat(4) {
            let (done, ask, unix) = (&done, &ask, &unix);
            scope.spawn(move || {
                while !done.load(Ordering::Acquire) {
                    let s: Box<dyn ReadWrite> = if over_unix {
                        let s = std::os::unix::net::UnixStream::connect(unix).unwrap();
                        s.set_read_timeout(Some(WAIT)).unwrap();
                        Box::new(s)
                    } else {
                        let s = TcpStream::connect(admin).unwrap();
                        s.set_read_timeout(Some(WAIT)).unwrap();
                        Box::new(s)
                    };
                    ask(s);
                }
            });
        }
        // Three upgrades in a row, each new process the next one's old.
        for round in 0..3 {
            let before = asked.load(Ordering::Relaxed);
            wait_until("clients asking", || {
                asked.load(Ordering::Relaxed) > before + 50
            });
            let new =
                Ballast::start_with_args(&yaml, &["--upgrade-from", socket.to_str().unwrap()]);
            assert!(
                old.wait_exit(WAIT * 3).is_some(),
                "round {round}: the old process exits"
            );
            old = new;
        }
        done.store(true, Ordering::Release);
    });
    last.replace(old); // stopped after the clients' last requests
    assert_eq!(unanswered.load(Ordering::Relaxed), 0, "of {asked:?}");
}

/// A stream the test can write a request to and read the answer from.
trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

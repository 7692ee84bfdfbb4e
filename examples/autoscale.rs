//! Autoscaling end to end: load rises, a hook starts a new local backend and it joins; load
//! falls, one target is drained and its backend stopped.
//!
//! ```text
//! cargo run --release --example autoscale
//! ```
//!
//! Runs Ballast in this process with one backend and `scaling:` hooks that call this same
//! program (`autoscale hook-out` starts a backend process and prints `add 127.0.0.1:PORT`;
//! `autoscale hook-in` stops the backend of `$BALLAST_TARGET`). Twelve clients hold
//! connections open (12 per target, above the threshold of 5): a second backend is started and
//! taken in; the clients leave (0 per target, below 1): one target is drained, removed and its
//! backend stopped. Every step is printed; the whole run takes about 15 seconds.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ballast::{config, runtime};

/// A backend: answers each connection with its name and holds it until the client closes.
fn serve(listener: TcpListener, name: String) {
    for conn in listener.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || {
            let mut conn = conn;
            let _ = writeln!(conn, "{name}");
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line); // until the client closes
        });
    }
}

/// Where the hooks keep the pids of the backends they started.
/// A client of the demo listener, with the name of the backend that greeted it.
fn connect(listener: SocketAddr) -> std::io::Result<(TcpStream, String)> {
    let c = TcpStream::connect(listener)?;
    let mut name = String::new();
    BufReader::new(&c).read_line(&mut name)?;
    Ok((c, name.trim().to_string()))
}

fn pid_file(port: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ballast-autoscale-{port}.pid"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        // A backend process started by the scale-out hook.
        Some("backend") => {
            let listener = TcpListener::bind(("127.0.0.1", args[2].parse::<u16>()?))?;
            serve(listener, format!("backend :{}", args[2]));
            return Ok(());
        }
        // The scale-out hook: start a backend, tell Ballast where it is.
        Some("hook-out") => {
            let port = TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
                .to_string();
            let child = std::process::Command::new(std::env::current_exe()?)
                .args(["backend", &port])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            std::fs::write(pid_file(&port), child.id().to_string())?;
            println!("add 127.0.0.1:{port}");
            return Ok(());
        }
        // The scale-in hook: Ballast already drained $BALLAST_TARGET; stop its backend.
        Some("hook-in") => {
            let target = std::env::var("BALLAST_TARGET")?;
            let port = target.rsplit(':').next().unwrap_or_default();
            if let Ok(pid) = std::fs::read_to_string(pid_file(port)) {
                std::process::Command::new("kill")
                    .arg(pid.trim())
                    .status()?;
                eprintln!("hook-in: stopped the backend on {target}");
            } else {
                eprintln!("hook-in: {target} is not one of ours; nothing to stop");
            }
            return Ok(());
        }
        _ => {}
    }

    let first = TcpListener::bind("127.0.0.1:0")?;
    let first_addr = first.local_addr()?;
    std::thread::spawn(move || serve(first, "backend (first)".into()));
    let me = std::env::current_exe()?.display().to_string();
    let yaml = format!(
        "workers: 2\naccess_log: \"off\"\nadmin: {{bind: '127.0.0.1:0'}}\n\
         listeners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: app}}\n\
         target_groups:\n  - name: app\n    algorithm: least_connections\n\
         \x20   health_check: {{protocol: tcp, interval: 250ms, timeout: 200ms, healthy_threshold: 1}}\n\
         \x20   scaling:\n\
         \x20     scale_out: {{when: active_connections_per_target above 5 for 1s, exec: '{me} hook-out'}}\n\
         \x20     scale_in: {{when: active_connections_per_target below 1 for 2s, exec: '{me} hook-in'}}\n\
         \x20     cooldown: 3s\n      min_targets: 1\n      max_targets: 2\n\
         \x20   targets:\n      - address: {first_addr}\n"
    );
    let dir = std::env::temp_dir().join(format!("ballast-autoscale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("autoscale.yaml");
    std::fs::write(&path, yaml)?;
    let running = runtime::start(config::load(&path)?)?;
    let generation = running.generation();
    let listener = generation.listeners[0].config.bind;
    let targets = || -> Vec<(SocketAddr, String, u64)> {
        let generation = running.generation();
        generation.groups[0]
            .targets
            .iter()
            .map(|t| {
                let state = if t.is_healthy() {
                    t.admin_state().to_string()
                } else {
                    format!("{} (unhealthy)", t.admin_state())
                };
                (
                    t.address,
                    state,
                    t.active.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect()
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            if Instant::now() > deadline {
                return Err(format!("{what}: not within 20s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    println!("Ballast on {listener}, one target: {first_addr}");

    println!("\n1. Load rises: 12 clients hold connections (12 per target; the threshold is 5).");
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(connect(listener)?.0);
    }
    wait("a second target", &|| {
        targets().iter().filter(|t| t.1 == "active").count() == 2
    })?;
    println!("   scale_out ran its hook; targets now:");
    for t in targets() {
        println!("     {} {} ({} open)", t.0, t.1, t.2);
    }
    for _ in 0..4 {
        let (c, name) = connect(listener)?;
        println!("   a new client reached: {name}");
        clients.push(c);
    }

    println!("\n2. Load falls: every client leaves (0 per target; below 1 for 2s scales in).");
    drop(clients);
    wait("one target removed", &|| {
        targets().iter().filter(|t| t.1 == "active").count() == 1
    })?;
    println!("   scale_in drained and removed one target, its hook stopped the backend:");
    for t in targets() {
        println!("     {} {} ({} open)", t.0, t.1, t.2);
    }
    let left = targets();
    running.stop();
    // Backends a hook started and no scale-in stopped.
    for t in left {
        let pid = pid_file(&t.0.port().to_string());
        if let Ok(p) = std::fs::read_to_string(&pid) {
            let _ = std::process::Command::new("kill").arg(p.trim()).status();
            let _ = std::fs::remove_file(pid);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

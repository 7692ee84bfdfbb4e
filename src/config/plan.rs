//! `ballast check`'s plan: what `run` would start for a valid configuration, printed on
//! standard output (listeners, target groups, their checks and limits), with a warning on
//! standard error for each certificate that has expired or expires within 14 days, and for
//! what [`super::advice`] finds.

use std::io::Write;

use super::scaling::ScalingRule;
use super::steps::CheckStep;
use super::{
    open_file_limit, Config, HealthCheckKind, NoServerName, TlsListener, UnhealthyConnections,
};

/// Prints the plan of `c` on standard output (see the module's doc).
pub fn print(c: &Config) {
    for advice in super::advice(c) {
        eprintln!("warning: {advice}");
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "config {} is valid", c.path.display());
    for file in &c.included {
        let _ = writeln!(out, "included {}", file.display());
    }
    let _ = writeln!(
        out,
        "workers: {}, shutdown_timeout: {}, shutdown_grace: {}, node_drain_grace: {}, \
         upgrade_socket: {}",
        c.workers,
        humantime::format_duration(c.shutdown_timeout),
        humantime::format_duration(c.shutdown_grace),
        humantime::format_duration(c.node_drain_grace),
        c.upgrade_socket
            .as_ref()
            .map_or("none".to_string(), |p| p.display().to_string())
    );
    // The defaults of udp.max_sessions and udp.max_unreplied are sized from it.
    let _ = writeln!(
        out,
        "open-file limit: {}",
        open_file_limit().map_or("unlimited".to_string(), |n| n.to_string())
    );
    let access = &c.access_log;
    let _ = writeln!(
        out,
        "admin API on {}{}{}, access log: {access}",
        c.admin.bind,
        c.admin
            .unix
            .as_ref()
            .map_or(String::new(), |p| format!(" and unix:{}", p.display())),
        if c.admin.token.is_some() {
            " (token required)"
        } else {
            ""
        }
    );
    if let Some(cluster) = &c.cluster {
        let e = &cluster.etcd;
        let _ = writeln!(
            out,
            "fleet: node {} of {} in etcd ({}{}{}): from etcd, once the fleet holds them, each \
             group's targets (address, weight, backup, max_connections, server_id) and every \
             target's admin state; from this file, listeners, target groups, health checks, \
             algorithms and tokens",
            cluster.node_id,
            e.prefix,
            e.endpoints.join(", "),
            if e.tls.is_some() { ", TLS" } else { "" },
            e.user
                .as_ref()
                .map_or(String::new(), |(u, _)| format!(", user {u}"))
        );
    }
    for l in &c.listeners {
        let g = &c.target_groups[l.target_group];
        let settings = match &l.udp {
            Some(u) => format!(
                "session_idle_timeout {}, unreplied_timeout {}, max_sessions {}, max_unreplied \
                 {}, max_responses {}, on_unhealthy {}, batch {}",
                humantime::format_duration(u.session_idle_timeout),
                humantime::format_duration(u.unreplied_timeout),
                u.max_sessions,
                u.max_unreplied,
                if u.max_responses == 0 {
                    "unlimited".to_string()
                } else {
                    u.max_responses.to_string()
                },
                u.on_unhealthy,
                u.batch
            ),
            None => format!(
                "max_connections {}, connect_timeout {}, idle_timeout {}, retries {}, \
                 forwarding {}",
                l.max_connections
                    .map_or("unlimited".to_string(), |m| m.to_string()),
                humantime::format_duration(l.connect_timeout),
                humantime::format_duration(l.idle_timeout),
                l.retries,
                l.forwarding
            ),
        };
        let _ = writeln!(
            out,
            "listener {} ({}) on {}{} -> target group {} ({settings}, readiness {})",
            l.name,
            l.kind(),
            l.endpoint(),
            if l.freebind { " (freebind)" } else { "" },
            g.name,
            l.readiness
        );
        let nets = |v: &[ipnet::IpNet]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(q) = &l.quic {
            let (codepoint, sid, nonce) = q.lb.params();
            let _ = writeln!(
                out,
                "  routes QUIC by connection ID (QUIC-LB {}, codepoint {codepoint}): server IDs \
                 of {sid} octet(s), nonce {nonce}, short-header IDs of {} octets",
                match q.algorithm {
                    super::QuicAlgorithm::Plaintext => "plaintext: IDs readable on the path",
                    super::QuicAlgorithm::BlockCipher => "block_cipher, key read",
                },
                q.connection_id_length
            );
            if let Some(r) = &q.retiring {
                let (codepoint, sid, nonce) = r.lb.params();
                let _ = writeln!(
                    out,
                    "  and still IDs of the retiring configuration (codepoint {codepoint}, \
                     server IDs of {sid} octet(s), nonce {nonce}{})",
                    if r.key.is_some() { ", key read" } else { "" }
                );
            }
        }
        if let Some(t) = &l.token {
            let _ = writeln!(
                out,
                "  routes by token: {} octets at the {}, {}; unknown tokens are dropped",
                t.size,
                match t.capture {
                    super::TokenCapture::Prefix => "start",
                    super::TokenCapture::Suffix => "end",
                },
                if t.strip { "stripped" } else { "kept" }
            );
        }
        if let Some(a) = &l.accept_proxy {
            let _ = writeln!(
                out,
                "  reads a PROXY protocol header (v1 or v2) within {} from [{}] only",
                humantime::format_duration(a.timeout),
                nets(&a.trusted)
            );
        }
        if !l.access.allow.is_empty() {
            let _ = writeln!(out, "  allow [{}]", nets(&l.access.allow));
        }
        if !l.access.deny.is_empty() {
            let _ = writeln!(out, "  deny [{}]", nets(&l.access.deny));
        }
        if let Some(tls) = &l.tls {
            print_tls(&mut out, tls);
        }
        if let Some(sni) = &l.sni {
            for r in &sni.routes {
                let _ = writeln!(
                    out,
                    "  route server_name {} -> target group {}",
                    r.server_name, c.target_groups[r.target_group].name
                );
            }
            if sni.postgres_starttls && l.tls.is_some() {
                let _ = writeln!(
                    out,
                    "  answers PostgreSQL's SSLRequest, then terminates TLS: targets get plain \
                     PostgreSQL"
                );
            } else if sni.postgres_starttls {
                let _ = writeln!(
                    out,
                    "  answers PostgreSQL's SSLRequest, routes by the SNI that follows"
                );
            }
            let _ = writeln!(
                out,
                "  {}: {}",
                match (&l.tls, &l.postgres) {
                    (Some(_), _) => "no SNI or another name".to_string(),
                    // Plain PostgreSQL clients go by database, whatever their timing.
                    (None, Some(_)) => "TLS with another name or none".to_string(),
                    (None, None) => format!(
                        "other names, no ClientHello within {} or not TLS",
                        humantime::format_duration(sni.timeout)
                    ),
                },
                match sni.otherwise {
                    NoServerName::Default => format!("target group {}", g.name),
                    NoServerName::Close => "reset".to_string(),
                }
            );
        }
        if let Some(pg) = &l.postgres {
            print_postgres(&mut out, pg, c, &g.name);
        }
        if let Some(p) = &l.per_source {
            let mut limits = Vec::new();
            if let Some(n) = p.max_open {
                limits.push(format!("{n} open"));
            }
            if let Some(r) = p.rate {
                limits.push(format!("{r} new"));
            }
            let _ = writeln!(
                out,
                "  per source (/{} or /{}): {}; table of {} entries",
                p.ipv4_prefix,
                p.ipv6_prefix,
                limits.join(", "),
                p.table_size
            );
        }
    }
    for g in &c.target_groups {
        let hc = &g.health_check;
        let check = match &hc.kind {
            HealthCheckKind::Tcp => "tcp".to_string(),
            HealthCheckKind::Http { path } => format!("http GET {path}"),
            HealthCheckKind::Steps { steps } => format!(
                "tcp send/expect ({})",
                steps
                    .iter()
                    .map(|s| match s {
                        CheckStep::Send(b) => format!("send {} bytes", b.len()),
                        CheckStep::Expect(e, None) => format!("expect {e}"),
                        CheckStep::Expect(e, Some(u)) => {
                            format!("expect {e} unless {u}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            HealthCheckKind::Udp { send, expect }
                if (send.clone(), expect.clone()) == crate::quic::version_probe() =>
            {
                "quic (Version Negotiation answered to a reserved version)".to_string()
            }
            HealthCheckKind::Udp { send, expect } => format!(
                "udp ({} bytes out, reply must contain {} bytes)",
                send.len(),
                expect.len()
            ),
        };
        let _ = writeln!(
            out,
            "target group {} ({}): health check {check}{} every {}, timeout {}, healthy after {}, \
             unhealthy after {}",
            g.name,
            g.algorithm,
            hc.port.map_or(String::new(), |p| format!(" on port {p}")),
            humantime::format_duration(hc.interval),
            humantime::format_duration(hc.timeout),
            hc.healthy_threshold,
            hc.unhealthy_threshold
        );
        let mut extras = vec![format!(
            "drain_timeout {}",
            humantime::format_duration(g.drain_timeout)
        )];
        if let Some(v) = g.proxy_protocol {
            extras.push(format!(
                "sends PROXY protocol {v}{}",
                if hc.proxy_protocol.is_some() {
                    " (health checks too)"
                } else {
                    ""
                }
            ));
        }
        if g.on_unhealthy == UnhealthyConnections::Close {
            extras.push("on_unhealthy close (open connections reset)".into());
        }
        if let Some(a) = &g.agent_check {
            extras.push(format!(
                "agent check on port {} every {}, timeout {}",
                a.port,
                humantime::format_duration(a.interval),
                humantime::format_duration(a.timeout)
            ));
        }
        if let Some(q) = &g.queue {
            extras.push(format!(
                "queue: up to {} waiting, {} each at most",
                q.max,
                humantime::format_duration(q.timeout)
            ));
        }
        if g.source == super::SourceAddress::Client {
            extras.push("source: client (connects from each client's own address)".into());
        }
        if let Some(od) = &g.outlier_detection {
            extras.push(format!(
                "outlier detection: eject after {} failures for {} up to {}, at most {}% out",
                od.consecutive_failures,
                humantime::format_duration(od.base_ejection),
                humantime::format_duration(od.max_ejection),
                od.max_ejected_percent
            ));
        }
        if let Some(sc) = &g.scaling {
            let rule = |name: &str, r: &Option<ScalingRule>| {
                r.as_ref().map(|r| format!("{name} when {r}: `{}`", r.exec))
            };
            let rules: Vec<String> = [
                rule("scale_out", &sc.scale_out),
                rule("scale_in", &sc.scale_in),
            ]
            .into_iter()
            .flatten()
            .collect();
            extras.push(format!(
                "scaling {} targets, cooldown {}: {}",
                if sc.min_targets == sc.max_targets {
                    sc.min_targets.to_string()
                } else {
                    format!("{}..{}", sc.min_targets, sc.max_targets)
                },
                humantime::format_duration(sc.cooldown),
                rules.join("; ")
            ));
        }
        for d in &g.discover {
            extras.push(format!(
                "discover {} every {}..{}",
                d.source,
                humantime::format_duration(d.min_ttl),
                humantime::format_duration(d.max_ttl)
            ));
        }
        if let Some(t) = &g.target_tls {
            let ca =
                t.ca.as_ref()
                    .map_or("the system's CAs".to_string(), |p| p.display().to_string());
            let name = t
                .server_name
                .as_deref()
                .unwrap_or("each target's IP address");
            extras.push(match (t.verify, &t.client_cert) {
                (false, _) => "TLS to targets, certificates NOT verified".to_string(),
                (true, None) => format!("TLS to targets, verified against {ca} as {name}"),
                (true, Some(c)) => format!(
                    "TLS to targets, verified against {ca} as {name}, client certificate {}",
                    c.cert.display()
                ),
            });
        }
        if let Some(d) = g.slow_start {
            extras.push(format!("slow_start {}", humantime::format_duration(d)));
        }
        if let Some(st) = g.stickiness {
            extras.push(format!(
                "stickiness {} / {} entries",
                humantime::format_duration(st.timeout),
                st.max_entries
            ));
        }
        let _ = writeln!(out, "  {}", extras.join(", "));
        for t in &g.targets {
            let mut flags = String::new();
            if t.backup {
                flags += " backup";
            }
            if let Some(max) = t.max_connections {
                flags += &format!(" max_connections {max}");
            }
            if let Some(id) = t.server_id {
                flags += &format!(" server_id {id}");
            }
            if !t.tokens.is_empty() {
                flags += &format!(" tokens {}", t.tokens.len());
            }
            let _ = writeln!(out, "  target {} weight {}{flags}", t.address, t.weight);
        }
    }
}

/// A `tls` listener's settings and each certificate's names and validity; a warning on stderr
/// for a certificate that has expired or expires within 14 days.
fn print_tls(out: &mut impl Write, tls: &TlsListener) {
    let alpn = if tls.alpn.is_empty() {
        String::new()
    } else {
        format!(", ALPN [{}]", tls.alpn.join(", "))
    };
    let _ = writeln!(
        out,
        "  terminates TLS {}+{alpn}, handshake within {}, session tickets {}",
        tls.min_version,
        humantime::format_duration(tls.handshake_timeout),
        if tls.session_tickets { "on" } else { "off" }
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let date = |secs: i64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    for (i, c) in tls.server.certificates.iter().enumerate() {
        let left = c.not_after - now;
        let _ = writeln!(
            out,
            "  certificate {}{}: {}; valid {} to {} ({})",
            c.file.display(),
            if i == 0 { " (default)" } else { "" },
            c.names.join(", "),
            date(c.not_before),
            date(c.not_after),
            if left < 0 {
                "EXPIRED".to_string()
            } else {
                format!("{} days left", left / 86_400)
            }
        );
        if left < 14 * 86_400 {
            eprintln!(
                "warning: certificate {} {}",
                c.file.display(),
                if left < 0 {
                    format!("expired on {}", date(c.not_after))
                } else {
                    format!("expires on {}", date(c.not_after))
                }
            );
        }
    }
}

/// A listener's `postgres:` lines: its routes, what takes the rest, and cancels.
fn print_postgres(out: &mut impl Write, pg: &super::PostgresRouting, c: &Config, default: &str) {
    let _ = writeln!(
        out,
        "  reads each PostgreSQL StartupMessage (within {}); cancel requests go to the server \
         that issued their key",
        humantime::format_duration(pg.startup_timeout)
    );
    for r in &pg.routes {
        let fields: Vec<String> = [
            ("database", &r.database),
            ("user", &r.user),
            ("application_name", &r.application_name),
        ]
        .iter()
        .filter_map(|(k, p)| p.as_ref().map(|p| format!("{k} {}", p.0)))
        .collect();
        let _ = writeln!(
            out,
            "  route {} -> target group {}",
            fields.join(", "),
            c.target_groups[r.target_group].name
        );
    }
    if !pg.routes.is_empty() {
        let _ = writeln!(
            out,
            "  no route: {}",
            match pg.without_route {
                super::WithoutRoute::Refuse => "refused with an error naming the database".into(),
                super::WithoutRoute::Default => format!("target group {default}"),
            }
        );
    }
}

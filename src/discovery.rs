//! DNS discovery (`discover:` on a target group): a thread looks each name up again when its
//! answer's TTL runs out (clamped to the entry's `min_ttl`..`max_ttl`), with hickory-resolver
//! asking the system's name servers (`/etc/resolv.conf`) or the top-level `resolvers:`. The
//! union of a group's answers becomes its discovered targets through
//! [`Control::set_discovered`], the admin API's path: new addresses are targets that must pass
//! their health check first, vanished ones drain as `removed`.
//!
//! - `{dns: host:port}`: A and AAAA records, each address a target on `port`;
//! - `{srv: name}`: SRV records of the lowest priority, each target host's addresses on the
//!   record's port with the record's weight (0 counts as 1).
//!
//! A lookup that fails (a timeout, a refused query, a server that is down) keeps the last
//! answer and is retried after `min_ttl`, logged at most every 10 s per source. A name that
//! exists with no records (or does not exist) is an answer: its targets go.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::config::{Discover, DiscoverSource, MAX_WEIGHT};
use crate::control::Control;
use crate::throttle::LogLimiter;

/// Longest sleep between two looks at the configuration (a reload may add sources).
const IDLE: Duration = Duration::from_secs(1);

/// One source's state: when it is next looked up, and its last answer.
struct Source {
    next_due: Instant,
    found: Option<BTreeMap<SocketAddr, u32>>,
    failures: LogLimiter,
}

/// Starts the discovery thread; it ends by itself once `control` is dropped. Until a group has
/// `discover:` it only looks at the configuration once a second (no runtime, no resolver, no
/// descriptors).
///
/// # Errors
/// When the thread cannot be spawned.
pub(crate) fn start(control: &Arc<Control>) -> std::io::Result<()> {
    let weak = Arc::downgrade(control);
    std::thread::Builder::new()
        .name("ballast-discovery".into())
        .spawn(move || run(weak))
        .map(drop)
}

/// A resolver for `servers` (the system's when empty), caching nothing: every lookup asks.
fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("the system's resolver: {e}"))?
    } else {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    options.attempts = 1;
    builder.build().map_err(|e| e.to_string())
}

fn run(control: Weak<Control>) {
    let mut sources: HashMap<(String, Discover), Source> = HashMap::new();
    let mut current: Option<(Vec<SocketAddr>, TokioResolver)> = None;
    let mut runtime: Option<tokio::runtime::Runtime> = None;
    let mut setup_failed = LogLimiter::default();
    let mut next = Duration::ZERO;
    loop {
        std::thread::sleep(next);
        next = IDLE;
        let Some(control) = control.upgrade() else {
            return;
        };
        let generation = control.generation();
        if generation
            .config
            .target_groups
            .iter()
            .all(|g| g.discover.is_empty())
        {
            sources.clear();
            continue;
        }
        if runtime.is_none() {
            runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => Some(r),
                Err(e) => {
                    if setup_failed.allow(Instant::now()).is_some() {
                        log::error!("DNS discovery: no runtime: {e}");
                    }
                    continue;
                }
            };
        }
        let Some(rt) = runtime.as_ref() else {
            continue;
        };
        let servers = generation.config.resolvers.clone();
        if current.as_ref().is_none_or(|(s, _)| *s != servers) {
            // Built inside the runtime: the resolver's transports belong to it.
            let _entered = rt.enter();
            current = match resolver(&servers) {
                Ok(r) => Some((servers, r)),
                Err(e) => {
                    if setup_failed.allow(Instant::now()).is_some() {
                        log::error!("DNS discovery: {e}");
                    }
                    None
                }
            };
        }
        // Sources as configured now; those a reload dropped are forgotten.
        // In a fleet only the group's leader looks names up; it writes what it finds to etcd.
        let wanted: Vec<(String, Discover)> = generation
            .config
            .target_groups
            .iter()
            .filter(|g| control.fleet().is_none_or(|f| f.leads(&g.name)))
            .flat_map(|g| g.discover.iter().map(|d| (g.name.clone(), d.clone())))
            .collect();
        sources.retain(|k, _| wanted.contains(k));
        let now = Instant::now();
        let mut looked_up = Vec::new();
        if let Some((_, resolver)) = &current {
            for key in &wanted {
                let source = sources.entry(key.clone()).or_insert_with(|| Source {
                    next_due: now,
                    found: None,
                    failures: LogLimiter::default(),
                });
                if source.next_due > now {
                    continue;
                }
                let d = &key.1;
                let result = rt.block_on(lookup(resolver, &d.source));
                log::debug!("target group {}: discover {}: {result:?}", key.0, d.source);
                match result {
                    Ok((found, ttl)) => {
                        source.next_due = Instant::now() + ttl.clamp(d.min_ttl, d.max_ttl);
                        source.found = Some(found);
                    }
                    Err(e) => {
                        source.next_due = Instant::now() + d.min_ttl;
                        if let Some(more) = source.failures.allow(Instant::now()) {
                            log::warn!(
                                "target group {}: discover {}: {e}; keeping the last answer \
                                 ({more} more failures since the last report)",
                                key.0,
                                d.source
                            );
                        }
                    }
                }
                looked_up.push(key.0.clone());
            }
        }
        looked_up.dedup();
        for group in looked_up {
            // The union of the group's answers, once every source has answered once.
            let answers: Option<Vec<&BTreeMap<SocketAddr, u32>>> = sources
                .iter()
                .filter(|((g, _), _)| *g == group)
                .map(|(_, s)| s.found.as_ref())
                .collect();
            let Some(answers) = answers else {
                continue;
            };
            let mut union = BTreeMap::new();
            for found in answers {
                union.extend(found.iter().map(|(a, w)| (*a, *w)));
            }
            match control.set_discovered(&group, union) {
                Ok(Some(s)) => log::info!(
                    "target group {group}: discovery added [{}], removed [{}]",
                    s.targets_added.join(", "),
                    s.targets_removed.join(", ")
                ),
                Ok(None) => {}
                Err(e) => log::warn!("target group {group}: discovered targets not applied: {e}"),
            }
        }
        next = sources
            .values()
            .map(|s| s.next_due)
            .min()
            .map_or(IDLE, |t| t.saturating_duration_since(Instant::now()))
            .min(IDLE);
    }
}

/// Looks `source` up: the targets it names (address → weight) and how long the answer holds.
async fn lookup(
    resolver: &TokioResolver,
    source: &DiscoverSource,
) -> Result<(BTreeMap<SocketAddr, u32>, Duration), String> {
    let now = Instant::now();
    match source {
        DiscoverSource::Dns { host, port } => {
            let (ips, ttl) = addresses(resolver, host).await?;
            Ok((
                ips.into_iter()
                    .map(|ip| (SocketAddr::new(ip, *port), 1))
                    .collect(),
                ttl,
            ))
        }
        DiscoverSource::Srv { name } => {
            let answer = match resolver.srv_lookup(name.as_str()).await {
                Ok(a) => a,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    return Ok((BTreeMap::new(), Duration::ZERO))
                }
                Err(e) => return Err(e.to_string()),
            };
            let mut ttl = answer.valid_until().saturating_duration_since(now);
            let records: Vec<_> = answer
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                })
                .collect();
            let Some(best) = records.iter().map(|r| r.priority).min() else {
                return Ok((BTreeMap::new(), ttl));
            };
            let mut found = BTreeMap::new();
            for r in records.iter().filter(|r| r.priority == best) {
                let host = r.target.to_string();
                let (ips, host_ttl) = addresses(resolver, &host).await?;
                ttl = ttl.min(host_ttl);
                let weight = u32::from(r.weight).clamp(1, MAX_WEIGHT as u32);
                for ip in ips {
                    found.insert(SocketAddr::new(ip, r.port), weight);
                }
            }
            Ok((found, ttl))
        }
    }
}

/// The A and AAAA addresses of `host` and how long they hold; none when the name has none.
async fn addresses(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<std::net::IpAddr>, Duration), String> {
    let now = Instant::now();
    match resolver.lookup_ip(host).await {
        Ok(found) => Ok((
            found.iter().collect(),
            found.valid_until().saturating_duration_since(now),
        )),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok((Vec::new(), Duration::ZERO)),
        Err(e) => Err(format!("{host}: {e}")),
    }
}

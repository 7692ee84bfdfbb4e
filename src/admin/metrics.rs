//! `GET /metrics`: the shared counters in Prometheus text exposition, encoded by the official
//! client crate (prometheus-client). Values are read from the atomics at scrape time into a
//! fresh registry, so the data path keeps its plain atomics.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::generation::Generation;
use crate::target::record::CheckSnapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target_group: String,
    target: String,
}

/// Every target's check-latency histogram, read from its [`CheckRecord`] at scrape time
/// (prometheus-client's own `Histogram` is observed in place, which the prober's plain atomics
/// are not).
///
/// [`CheckRecord`]: crate::target::record::CheckRecord
#[derive(Debug, Default)]
struct CheckLatencies(Vec<(TargetLabels, CheckSnapshot)>);

impl TypedMetric for CheckLatencies {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for CheckLatencies {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, s) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(s.latency_sum_s, s.count, &s.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Labels of `ballast_thread_restarts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminStateLabels {
    target_group: String,
    target: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabels {
    thread: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    protocol: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueRefusedLabels {
    target_group: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CancelLabels {
    listener: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SockmapLabels {
    listener: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuicRouteLabels {
    listener: String,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScalingSampleLabels {
    target_group: String,
    metric: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScalingRunLabels {
    target_group: String,
    action: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    target_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeFailureLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    listener: String,
    certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    state: &'static str,
}

/// The exposition text for everything in `generation`, the thread restarts counted in
/// `restarts`, the node's state and readiness (`node`), the scaling hooks' samples and
/// runs (`scaling`), and the workers' loads and how connections are placed (`steering`).
pub(crate) fn encode(
    generation: &Generation,
    restarts: &crate::fault::Restarts,
    node: &crate::node::Node,
    scaling: &std::sync::Mutex<std::collections::BTreeMap<String, crate::scaling::ScalingStats>>,
    steering: &crate::steering::Steering,
    fleet: Option<&crate::control::fleet::FleetLink>,
) -> String {
    let mut registry = Registry::with_prefix("ballast");
    if let Some(fleet) = fleet {
        register_fleet(&mut registry, fleet);
    }
    register_scaling(&mut registry, scaling);
    register_steering(&mut registry, steering);
    register_node(&mut registry, node, generation);
    register_threads(&mut registry, restarts);
    register_listeners(&mut registry, generation);
    register_postgres(&mut registry, generation);
    register_sockmap(&mut registry, generation);
    register_routed(&mut registry, generation);
    register_queues(&mut registry, generation);
    register_agents(&mut registry, generation);
    register_tls(&mut registry, generation);
    register_targets(&mut registry, generation);
    register_capacity(&mut registry, generation);
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// The node's readiness (`/healthz`) and service state.
fn register_node(registry: &mut Registry, node: &crate::node::Node, generation: &Generation) {
    let ready = Gauge::<i64>::default();
    ready.set(i64::from(node.readiness(generation).is_empty()));
    registry.register(
        "node_ready",
        "1 while GET /healthz answers 200 (serving, workers running, healthy targets), else 0",
        ready,
    );
    let state = Family::<NodeLabels, Gauge>::default();
    let now = node.service().0.to_string();
    for s in ["serving", "draining", "drained", "stopping"] {
        state
            .get_or_create(&NodeLabels { state: s })
            .set(i64::from(now == s));
    }
    registry.register(
        "node_state",
        "1 for the node's current service state (node drain: serving, draining, drained; stopping)",
        state,
    );
}

/// With `cluster:`: whether etcd answers, failed exchanges, changes not applied, the
/// revision applied, and the nodes etcd lists.
fn register_fleet(registry: &mut Registry, fleet: &crate::control::fleet::FleetLink) {
    use std::sync::atomic::Ordering::Relaxed;
    let status = fleet
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let connected = Gauge::<i64>::default();
    connected.set(i64::from(status.connected));
    registry.register(
        "fleet_etcd_connected",
        "1 while the last exchange with etcd worked (cluster:), else 0: the node serves the state it applied last",
        connected,
    );
    let errors = Counter::<u64>::default();
    errors.inc_by(fleet.errors.load(Relaxed));
    registry.register(
        "fleet_etcd_errors",
        "Failed exchanges with etcd (connects, reads, watches, lease renewals, writes)",
        errors,
    );
    let refused = Counter::<u64>::default();
    refused.inc_by(fleet.apply_errors.load(Relaxed));
    registry.register(
        "fleet_apply_errors",
        "Fleet state this node could not apply (a value that does not parse, a list its checks refuse)",
        refused,
    );
    let revision = Gauge::<i64>::default();
    revision.set(status.applied_revision);
    registry.register(
        "fleet_applied_revision",
        "The etcd revision of the newest change to targets or admin states this node applied",
        revision,
    );
    let nodes = Gauge::<i64>::default();
    nodes.set(status.nodes.len() as i64);
    registry.register("fleet_nodes", "Nodes with a live record in etcd", nodes);
}

/// Threads restarted after a panic, and access-log lines dropped.
fn register_threads(registry: &mut Registry, restarts: &crate::fault::Restarts) {
    let thread_restarts = Family::<ThreadLabels, Counter>::default();
    for (thread, n) in restarts.counts() {
        thread_restarts
            .get_or_create(&ThreadLabels { thread })
            .inc_by(n);
    }
    let dropped = Counter::<u64>::default();
    dropped.inc_by(crate::access_log::DROPPED_LINES.load(std::sync::atomic::Ordering::Relaxed));
    registry.register(
        "access_log_dropped_lines",
        "Access-log lines dropped because the writer could not keep up or its writes failed",
        dropped,
    );
    registry.register(
        "thread_restarts",
        "Threads replaced after a panic or a failed poll (admin: request handlers that panicked)",
        thread_restarts,
    );
}

/// Per target of a group with `agent_check`: what its agent asks (mode, weight percentage,
/// down).
fn register_agents(registry: &mut Registry, generation: &Generation) {
    let modes = Family::<AdminStateLabels, Gauge>::default();
    let percent = Family::<TargetLabels, Gauge>::default();
    let down = Family::<TargetLabels, Gauge>::default();
    for g in generation.groups.iter().filter(|g| !g.removed) {
        if g.config.agent_check.is_none() {
            continue;
        }
        for t in g.targets.iter() {
            if t.admin_state() == crate::target::AdminState::Removed {
                continue;
            }
            let labels = TargetLabels {
                target_group: g.name().to_string(),
                target: t.address.to_string(),
            };
            for mode in [
                crate::target::AgentMode::Ready,
                crate::target::AgentMode::Drain,
                crate::target::AgentMode::Maint,
            ] {
                modes
                    .get_or_create(&AdminStateLabels {
                        target_group: labels.target_group.clone(),
                        target: labels.target.clone(),
                        state: mode.as_str(),
                    })
                    .set(i64::from(t.agent_mode() == mode));
            }
            percent
                .get_or_create(&labels)
                .set(i64::from(t.agent_percent()));
            down.get_or_create(&labels).set(i64::from(t.agent_down()));
        }
    }
    registry.register(
        "target_agent_mode",
        "1 for what the target's agent asks (ready, drain, maint)",
        modes,
    );
    registry.register(
        "target_agent_weight_percent",
        "The weight the target's agent gives, as a percentage of the configured one",
        percent,
    );
    registry.register(
        "target_agent_down",
        "1 while the target's agent says down (the target counts as unhealthy)",
        down,
    );
}

/// Per group with a `queue:`: connections waiting now, those that waited and were served,
/// refused (full, timeout), and the seconds waited in all (the mean wait is its rate over
/// the served and timed-out ones').
fn register_queues(registry: &mut Registry, generation: &Generation) {
    let waiting = Family::<GroupLabels, Gauge>::default();
    let served = Family::<GroupLabels, Counter>::default();
    let refused = Family::<QueueRefusedLabels, Counter>::default();
    let waited = Family::<GroupLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    for g in generation.groups.iter().filter(|g| !g.removed) {
        if g.config.queue.is_none() {
            continue;
        }
        let q = &g.queue;
        let labels = GroupLabels {
            target_group: g.name().to_string(),
        };
        waiting
            .get_or_create(&labels)
            .set(q.waiting.load(Ordering::Relaxed) as i64);
        served
            .get_or_create(&labels)
            .inc_by(q.served.load(Ordering::Relaxed));
        waited
            .get_or_create(&labels)
            .inc_by(q.waited_us.load(Ordering::Relaxed) as f64 / 1e6);
        for (reason, n) in [("full", &q.refused_full), ("timeout", &q.refused_timeout)] {
            refused
                .get_or_create(&QueueRefusedLabels {
                    target_group: g.name().to_string(),
                    reason,
                })
                .inc_by(n.load(Ordering::Relaxed));
        }
    }
    registry.register(
        "target_group_queue_waiting",
        "Connections waiting in the group's queue now (every target at max_connections)",
        waiting,
    );
    registry.register(
        "target_group_queue_served",
        "Connections that waited in the queue, then went to a target",
        served,
    );
    registry.register(
        "target_group_queue_refused",
        "Connections reset by the queue: full (queue.max waiting) or timeout (queue.timeout)",
        refused,
    );
    registry.register(
        "target_group_queue_wait_seconds",
        "Seconds waited in the queue, in all, by connections served or timed out",
        waited,
    );
}

/// Per `postgres:` listener: cancel requests by what became of them, and the cancel keys
/// held (one per open PostgreSQL connection whose server sent one).
fn register_postgres(registry: &mut Registry, generation: &Generation) {
    let cancels = Family::<CancelLabels, Counter>::default();
    let keys = Family::<ListenerLabels, Gauge>::default();
    for l in generation.listeners.iter().filter(|l| !l.removed) {
        let Some(held) = &l.cancel_keys else {
            continue;
        };
        for (result, n) in [
            ("routed", &l.cancels_routed),
            ("unknown", &l.cancels_unknown),
        ] {
            cancels
                .get_or_create(&CancelLabels {
                    listener: l.config.name.clone(),
                    result,
                })
                .inc_by(n.load(Ordering::Relaxed));
        }
        keys.get_or_create(&ListenerLabels {
            listener: l.config.name.clone(),
            protocol: l.config.kind().to_string(),
        })
        .set(held.len() as i64);
    }
    registry.register(
        "listener_postgres_cancels",
        "PostgreSQL cancel requests: routed (to the server that issued the key) or unknown (no \
         open connection holds the key; closed)",
        cancels,
    );
    registry.register(
        "listener_postgres_cancel_keys",
        "Cancel keys held: open PostgreSQL connections whose server sent one",
        keys,
    );
}

/// Per `forwarding: sockmap` listener: connections by what the kernel path did with them,
/// and directions that left it for buffers.
fn register_sockmap(registry: &mut Registry, generation: &Generation) {
    use crate::listener::SockmapOutcome;
    let taken = Family::<SockmapLabels, Counter>::default();
    let diverted = Family::<ListenerLabels, Counter>::default();
    let trimmed = Family::<ListenerLabels, Counter>::default();
    let sockmap = crate::config::Forwarding::Sockmap;
    for l in generation
        .listeners
        .iter()
        .filter(|l| !l.removed && l.config.forwarding == sockmap)
    {
        for how in SockmapOutcome::ALL {
            taken
                .get_or_create(&SockmapLabels {
                    listener: l.config.name.clone(),
                    outcome: how.as_str(),
                })
                .inc_by(l.sockmap[how as usize].load(Ordering::Relaxed));
        }
        let labels = ListenerLabels {
            listener: l.config.name.clone(),
            protocol: l.config.kind().to_string(),
        };
        diverted
            .get_or_create(&labels)
            .inc_by(l.sockmap_diverted.load(Ordering::Relaxed));
        trimmed
            .get_or_create(&labels)
            .inc_by(l.sockmap_trimmed.load(Ordering::Relaxed));
    }
    registry.register(
        "listener_sockmap_connections",
        "forwarding: sockmap: established connections by outcome: joined (the kernel forwards \
         them), or forwarded in user space: not_plain (TLS, a PostgreSQL key watch), map_full, \
         unavailable (no CAP_BPF/CAP_NET_ADMIN/CAP_PERFMON or kernel support), refused",
        taken,
    );
    registry.register(
        "listener_sockmap_diverted",
        "forwarding: sockmap: directions that spent their kernel budget (bulk, or a peer not \
         reading) and went on through buffers",
        diverted,
    );
    registry.register(
        "listener_sockmap_trimmed_bytes",
        "forwarding: sockmap: bytes a peer sent again (a TCP retransmission overlapping what \
         had arrived) that the kernel path cut instead of forwarding twice",
        trimmed,
    );
}

/// Per `quic:` listener: datagrams by how they were routed, and of those the unknown server
/// IDs and the migrations; per `token:` listener, datagrams routed and dropped (unknown).
fn register_routed(registry: &mut Registry, generation: &Generation) {
    let routed = Family::<QuicRouteLabels, Counter>::default();
    let unknown = Family::<ListenerLabels, Counter>::default();
    let migrations = Family::<ListenerLabels, Counter>::default();
    let tokens = Family::<QuicRouteLabels, Counter>::default();
    for l in generation.listeners.iter().filter(|l| !l.removed) {
        let q = &l.routed;
        if l.config.token.is_some() {
            for (route, n) in [("routed", &q.by_token), ("unknown", &q.unknown_token)] {
                tokens
                    .get_or_create(&QuicRouteLabels {
                        listener: l.config.name.clone(),
                        route,
                    })
                    .inc_by(n.load(Ordering::Relaxed));
            }
        }
        if l.config.quic.is_none() {
            continue;
        }
        for (route, n) in [
            ("connection_id", &q.by_connection_id),
            ("balanced", &q.balanced),
            ("fallback", &q.fallback),
        ] {
            routed
                .get_or_create(&QuicRouteLabels {
                    listener: l.config.name.clone(),
                    route,
                })
                .inc_by(n.load(Ordering::Relaxed));
        }
        let labels = ListenerLabels {
            listener: l.config.name.clone(),
            protocol: l.config.kind().to_string(),
        };
        unknown
            .get_or_create(&labels)
            .inc_by(q.unknown_server_id.load(Ordering::Relaxed));
        migrations
            .get_or_create(&labels)
            .inc_by(q.migrations.load(Ordering::Relaxed));
    }
    registry.register(
        "listener_quic_datagrams",
        "QUIC datagrams by route: connection_id (the server its connection ID names), balanced \
         (an Initial or 0-RTT packet of a new flow, on its connection ID) or fallback (by \
         5-tuple)",
        routed,
    );
    registry.register(
        "listener_quic_unknown_server_id",
        "QUIC datagrams whose connection ID names no target of the group (routed by 5-tuple)",
        unknown,
    );
    registry.register(
        "listener_token_datagrams",
        "Datagrams of token listeners: routed (to the target listing their token) or unknown \
         (no target lists it: dropped)",
        tokens,
    );
    registry.register(
        "listener_quic_migrations",
        "QUIC short header datagrams from an address without a session (a client that moved), \
         sent to the server their connection ID names",
        migrations,
    );
}

/// Per listener: open, accepted, refused (by reason), retries, and UDP's datagrams and
/// evictions.
fn register_listeners(registry: &mut Registry, generation: &Generation) {
    let l_active = Family::<ListenerLabels, Gauge>::default();
    let l_accepted = Family::<ListenerLabels, Counter>::default();
    let l_dropped = Family::<ListenerLabels, Counter>::default();
    let l_retries = Family::<ListenerLabels, Counter>::default();
    let l_up = Family::<ListenerLabels, Counter>::default();
    let l_down = Family::<ListenerLabels, Counter>::default();
    let l_refused = Family::<RefusedLabels, Counter>::default();
    let l_evicted = Family::<ListenerLabels, Counter>::default();
    for l in generation.listeners.iter().filter(|l| !l.removed) {
        for why in crate::listener::Refusal::ALL {
            let n = l
                .refused
                .get(why as usize)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            l_refused
                .get_or_create(&RefusedLabels {
                    listener: l.config.name.clone(),
                    protocol: l.config.kind().to_string(),
                    reason: why.as_str(),
                })
                .inc_by(n);
        }
        let labels = ListenerLabels {
            listener: l.config.name.clone(),
            protocol: l.config.kind().to_string(),
        };
        l_active
            .get_or_create(&labels)
            .set(l.active.load(Ordering::Relaxed) as i64);
        l_accepted
            .get_or_create(&labels)
            .inc_by(l.accepted.load(Ordering::Relaxed));
        l_dropped
            .get_or_create(&labels)
            .inc_by(l.dropped.load(Ordering::Relaxed));
        l_retries
            .get_or_create(&labels)
            .inc_by(l.retries.load(Ordering::Relaxed));
        if l.config.protocol == crate::config::Protocol::Udp {
            l_evicted
                .get_or_create(&labels)
                .inc_by(l.evicted.load(Ordering::Relaxed));
            l_up.get_or_create(&labels)
                .inc_by(l.datagrams_up.load(Ordering::Relaxed));
            l_down
                .get_or_create(&labels)
                .inc_by(l.datagrams_down.load(Ordering::Relaxed));
        }
    }
    registry.register(
        "listener_active",
        "Open TCP connections or UDP sessions of the listener",
        l_active,
    );
    registry.register(
        "listener_accepted",
        "TCP connections accepted or UDP sessions created by the listener",
        l_accepted,
    );
    registry.register(
        "listener_dropped_datagrams",
        "UDP datagrams dropped (max_sessions, no target, full socket buffers)",
        l_dropped,
    );
    registry.register(
        "listener_datagrams_up",
        "UDP datagrams forwarded from clients to targets",
        l_up,
    );
    registry.register(
        "listener_datagrams_down",
        "UDP datagrams forwarded from targets to clients",
        l_down,
    );
    registry.register(
        "listener_evicted_sessions",
        "UDP sessions ended unanswered to make room for a new flow when max_sessions was reached",
        l_evicted,
    );
    registry.register(
        "listener_refused",
        "Clients refused before any target was touched: denied (allow/deny; UDP counts \
         datagrams), untrusted_proxy, bad_proxy_header, proxy_timeout",
        l_refused,
    );
    registry.register(
        "listener_retries",
        "Connect attempts after a failed one (TCP)",
        l_retries,
    );
}

/// Per group its slots; per target its health, ejection, connections, failures, bytes and
/// check latencies (removed targets while connections to them remain).
fn register_targets(registry: &mut Registry, generation: &Generation) {
    let t_healthy = Family::<TargetLabels, Gauge>::default();
    let t_active = Family::<TargetLabels, Gauge>::default();
    let t_total = Family::<TargetLabels, Counter>::default();
    let t_failures = Family::<TargetLabels, Counter>::default();
    let t_ejected = Family::<TargetLabels, Gauge>::default();
    let t_ejections = Family::<TargetLabels, Counter>::default();
    let t_bytes_in = Family::<TargetLabels, Counter>::default();
    let t_bytes_out = Family::<TargetLabels, Counter>::default();
    let mut latencies = CheckLatencies::default();
    let g_slots = Family::<GroupLabels, Gauge>::default();
    for g in generation.groups.iter().filter(|g| !g.removed) {
        g_slots
            .get_or_create(&GroupLabels {
                target_group: g.name().to_string(),
            })
            .set(g.targets.len() as i64);
        let live = |t: &&crate::target::Target| {
            t.admin_state() != crate::target::AdminState::Removed
                || t.active.load(Ordering::Relaxed) > 0
        };
        for t in g.targets.iter().filter(live) {
            let labels = TargetLabels {
                target_group: g.name().to_string(),
                target: t.address.to_string(),
            };
            t_healthy
                .get_or_create(&labels)
                .set(i64::from(t.is_healthy()));
            t_active
                .get_or_create(&labels)
                .set(t.active.load(Ordering::Relaxed) as i64);
            t_total
                .get_or_create(&labels)
                .inc_by(t.total.load(Ordering::Relaxed));
            t_failures
                .get_or_create(&labels)
                .inc_by(t.connect_failures.load(Ordering::Relaxed));
            if g.config.outlier_detection.is_some() {
                t_ejected
                    .get_or_create(&labels)
                    .set(i64::from(t.is_ejected()));
                t_ejections
                    .get_or_create(&labels)
                    .inc_by(t.ejections.load(Ordering::Relaxed));
            }
            t_bytes_in
                .get_or_create(&labels)
                .inc_by(t.bytes_to_target.load(Ordering::Relaxed));
            t_bytes_out
                .get_or_create(&labels)
                .inc_by(t.bytes_from_target.load(Ordering::Relaxed));
            latencies.0.push((labels, t.checks.snapshot()));
        }
    }
    registry.register(
        "target_group_slots",
        "Target slots the group holds: its targets, and removed ones whose connections have \
         not ended yet (a slot is reused once they have)",
        g_slots,
    );
    registry.register(
        "target_healthy",
        "1 when the target passes its health check",
        t_healthy,
    );
    registry.register(
        "target_active",
        "Open connections (connecting or established) and UDP sessions to the target",
        t_active,
    );
    registry.register(
        "target_connections",
        "TCP connections established and UDP sessions created to the target",
        t_total,
    );
    registry.register(
        "target_connect_failures",
        "Connect attempts to the target that failed",
        t_failures,
    );
    registry.register(
        "target_ejected",
        "1 while outlier detection has ejected the target (no new connections)",
        t_ejected,
    );
    registry.register(
        "target_ejections",
        "Times outlier detection ejected the target",
        t_ejections,
    );
    registry.register(
        "target_bytes_sent",
        "Bytes sent from clients to the target",
        t_bytes_in,
    );
    registry.register(
        "target_bytes_received",
        "Bytes sent from the target to clients",
        t_bytes_out,
    );
    registry.register(
        "target_check_latency_seconds",
        "Time health checks of the target took (a timed-out check counts its timeout)",
        latencies,
    );
}

/// Per target its admin state (so an alert on an unhealthy target can leave drained ones
/// out); per listener and target the most they take, beside `listener_active` and
/// `target_active` (saturation: active over the limit).
fn register_capacity(registry: &mut Registry, generation: &Generation) {
    use crate::target::AdminState;
    let states = Family::<AdminStateLabels, Gauge>::default();
    let t_max = Family::<TargetLabels, Gauge>::default();
    let l_max = Family::<ListenerLabels, Gauge>::default();
    for g in generation.groups.iter().filter(|g| !g.removed) {
        for t in g.targets.iter() {
            let now = t.admin_state();
            if now == AdminState::Removed && t.active.load(Ordering::Relaxed) == 0 {
                continue;
            }
            for state in [
                AdminState::Active,
                AdminState::Draining,
                AdminState::Disabled,
                AdminState::Removed,
            ] {
                states
                    .get_or_create(&AdminStateLabels {
                        target_group: g.name().to_string(),
                        target: t.address.to_string(),
                        state: state.as_str(),
                    })
                    .set(i64::from(now == state));
            }
            if let Some(max) = t.max_connections {
                t_max
                    .get_or_create(&TargetLabels {
                        target_group: g.name().to_string(),
                        target: t.address.to_string(),
                    })
                    .set(i64::try_from(max).unwrap_or(i64::MAX));
            }
        }
    }
    for l in generation.listeners.iter().filter(|l| !l.removed) {
        let max = match &l.config.udp {
            Some(udp) => Some(udp.max_sessions),
            None => l.config.max_connections,
        };
        if let Some(max) = max {
            l_max
                .get_or_create(&ListenerLabels {
                    listener: l.config.name.clone(),
                    protocol: l.config.kind().to_string(),
                })
                .set(i64::try_from(max).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "target_admin_state",
        "1 for the target's current admin state (active, draining, disabled, removed)",
        states,
    );
    registry.register(
        "target_max_connections",
        "The target's max_connections (targets without a limit are left out)",
        t_max,
    );
    registry.register(
        "listener_max_active",
        "The most open TCP connections (max_connections) or UDP sessions (max_sessions) the \
         listener takes (unlimited TCP listeners are left out)",
        l_max,
    );
}

/// The `tls` listeners' handshakes, failures by reason, and each certificate's time to expiry.
fn register_tls(registry: &mut Registry, generation: &Generation) {
    let handshakes = Family::<TlsListenerLabels, Counter>::default();
    let resumed = Family::<TlsListenerLabels, Counter>::default();
    let failed = Family::<HandshakeFailureLabels, Counter>::default();
    let expiry = Family::<CertificateLabels, Gauge>::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for l in generation.listeners.iter().filter(|l| !l.removed) {
        let Some(tls) = &l.config.tls else {
            continue;
        };
        let labels = TlsListenerLabels {
            listener: l.config.name.clone(),
        };
        handshakes
            .get_or_create(&labels)
            .inc_by(l.tls_handshakes.load(Ordering::Relaxed));
        resumed
            .get_or_create(&labels)
            .inc_by(l.tls_resumed.load(Ordering::Relaxed));
        for why in crate::listener::HandshakeFailure::ALL {
            let n = l
                .tls_failed
                .get(why as usize)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            failed
                .get_or_create(&HandshakeFailureLabels {
                    listener: l.config.name.clone(),
                    reason: why.as_str(),
                })
                .inc_by(n);
        }
        for cert in &tls.server.certificates {
            expiry
                .get_or_create(&CertificateLabels {
                    listener: l.config.name.clone(),
                    certificate: cert.file.display().to_string(),
                })
                .set(cert.not_after - now);
        }
    }
    registry.register(
        "listener_tls_handshakes",
        "TLS handshakes completed by the listener (protocol: tls)",
        handshakes,
    );
    registry.register(
        "listener_tls_resumed_handshakes",
        "Of those, sessions resumed by a ticket or session ID",
        resumed,
    );
    registry.register(
        "listener_tls_handshake_failures",
        "TLS handshakes that failed: timeout, client_closed, malformed (not TLS), incompatible \
         (no common version or cipher), client_alert (e.g. it refused the certificate), \
         no_application_protocol, other",
        failed,
    );
    registry.register(
        "tls_certificate_expiry_seconds",
        "Seconds until the certificate expires (negative: expired), as loaded",
        expiry,
    );
}

/// The scaling hooks' last samples and the commands they ran.
fn register_scaling(
    registry: &mut Registry,
    scaling: &std::sync::Mutex<std::collections::BTreeMap<String, crate::scaling::ScalingStats>>,
) {
    let samples =
        Family::<ScalingSampleLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let runs = Family::<ScalingRunLabels, Counter>::default();
    let stats = scaling.lock().map(|s| s.clone()).unwrap_or_default();
    for (group, s) in &stats {
        for (metric, value) in &s.samples {
            samples
                .get_or_create(&ScalingSampleLabels {
                    target_group: group.clone(),
                    metric,
                })
                .set(*value);
        }
        for ((action, result), n) in &s.runs {
            runs.get_or_create(&ScalingRunLabels {
                target_group: group.clone(),
                action,
                result,
            })
            .inc_by(*n);
        }
    }
    registry.register(
        "scaling_sample",
        "The last sample of each metric a group's scaling rules watch",
        samples,
    );
    registry.register(
        "scaling_runs",
        "Scaling commands run, by action (scale_out, scale_in) and result (ok, failed, timeout)",
        runs,
    );
}

/// Labels of `ballast_worker_connections`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

fn register_steering(registry: &mut Registry, steering: &crate::steering::Steering) {
    let per_worker = Family::<WorkerLabels, Gauge>::default();
    for w in 0..steering.workers() {
        per_worker
            .get_or_create(&WorkerLabels {
                worker: w.to_string(),
            })
            .set(steering.active(w) as i64);
    }
    registry.register(
        "worker_connections",
        "Open TCP connections per worker (as the worker last published them)",
        per_worker,
    );
    let load_aware = Gauge::<i64>::default();
    load_aware.set(i64::from(steering.load_aware()));
    registry.register(
        "accept_steering_load_aware",
        "1 when new TCP connections go to the worker with the fewest (reuseport eBPF program), \
         0 when the kernel's reuseport hash places them",
        load_aware,
    );
    let wanted = Gauge::<i64>::default();
    wanted.set(i64::from(steering.wanted()));
    registry.register(
        "accept_steering_configured_load_aware",
        "1 when accept_steering is least_connections (load-aware placement asked for, whether \
         or not it could be set up), 0 for hash",
        wanted,
    );
}

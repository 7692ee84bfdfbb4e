//! A UDP listener's settings (`udp:`), validated, with their defaults.

use std::time::Duration;

/// Default `udp.session_idle_timeout`.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most `udp.max_sessions` is by default; below it, the default is what the open-file
/// limit leaves the listener (see `descriptors.rs`).
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// Default `udp.batch`: datagrams moved per `recvmmsg`/`sendmmsg` call.
pub const DEFAULT_UDP_BATCH: usize = 32;

/// What happens to a UDP session whose target turns unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnUnhealthy {
    /// The session moves to a healthy target at its next datagram from the client.
    Rebalance,
    /// The session stays with its target until it ends.
    Keep,
}

/// Settings of a UDP listener's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpSettings {
    /// No datagram either way for this long ends a session and closes its upstream socket.
    pub session_idle_timeout: Duration,
    /// Most sessions across all workers; datagrams of new flows past it are dropped.
    /// Default: the listener's share of the open-file limit, at most
    /// [`DEFAULT_MAX_SESSIONS`].
    pub max_sessions: usize,
    /// Most sessions the target has not answered yet, at most `max_sessions`, split evenly
    /// across the workers (see [`UdpSettings::unreplied_per_worker`]). Default: an eighth
    /// of what the open-file limit leaves each UDP listener.
    pub max_unreplied: usize,
    /// Replies after which a session ends (1 for DNS); 0 is unlimited.
    pub max_responses: u32,
    /// What a session does when its target turns unhealthy.
    pub on_unhealthy: OnUnhealthy,
    /// Datagrams per `recvmmsg`/`sendmmsg` call (≥ 1; 1 uses plain `recvfrom`/`sendto`).
    pub batch: usize,
    /// A session the target has not answered yet ends this long after its last datagram
    /// (as conntrack's unreplied UDP timeout), and is the first evicted when the table is
    /// full.
    pub unreplied_timeout: Duration,
}

impl UdpSettings {
    /// The unanswered sessions one of `workers` workers may hold: `max_unreplied` split
    /// evenly (at least 1). A worker over its share ends its oldest unanswered session
    /// before it opens another.
    ///
    /// Why a share per worker: the kernel's SO_REUSEPORT hash pins a flow to one worker, and
    /// a worker can end only its own sessions (no locks on the data path). With the bound
    /// counted across workers alone, a flood hashed to one worker filled it, and new flows
    /// on another worker found nothing of theirs to evict: all dropped until the flood's
    /// sessions timed out. With a share each, a flood pinned to one worker holds at most
    /// `max_unreplied / workers` places (≤ `max_sessions / workers`), churning through its own;
    /// the rest stay for the other workers' flows. Simpler than asking the other workers to
    /// evict (a message round trip while the datagram waits), and unlike splitting
    /// `max_sessions` itself it leaves answered sessions free to gather on any worker.
    pub fn unreplied_per_worker(&self, workers: usize) -> usize {
        (self.max_unreplied / workers.max(1)).max(1)
    }
}

/// Default `udp.unreplied_timeout`.
pub const DEFAULT_UNREPLIED_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for UdpSettings {
    fn default() -> Self {
        UdpSettings {
            session_idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_unreplied: DEFAULT_MAX_SESSIONS,
            max_responses: 0,
            on_unhealthy: OnUnhealthy::Rebalance,
            batch: DEFAULT_UDP_BATCH,
            unreplied_timeout: DEFAULT_UNREPLIED_TIMEOUT,
        }
    }
}

impl std::fmt::Display for OnUnhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnUnhealthy::Rebalance => "rebalance",
            OnUnhealthy::Keep => "keep",
        })
    }
}

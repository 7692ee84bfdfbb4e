//! The open-file limit, and what it means for the limits a configuration leaves at their
//! defaults.
//!
//! Every UDP session holds one descriptor (its upstream socket) and every TCP connection two
//! (client and target); the listeners, the workers' own descriptors and the rest of the
//! process share one limit, `RLIMIT_NOFILE`. A default above what the process can open is a
//! time bomb: a flood of spoofed UDP sources would take every descriptor, and then no new flow
//! (nor TCP client) could be served. So `udp.max_sessions` and `udp.max_unreplied` are sized by
//! default from the limit read at start ([`udp_defaults`], no I/O: it takes the limit).

use std::sync::OnceLock;

use super::{ListenerConfig, Protocol, DEFAULT_MAX_SESSIONS};

/// Descriptors kept aside from the sizing for the rest of the process: the admin API and its
/// clients, the log and access-log files, health checks in flight, DNS lookups.
const SPARE: u64 = 64;

/// The least default `udp.max_sessions`, even when the limit leaves less (start-up then warns
/// that the limits may need more descriptors than the process has).
const MIN_SESSIONS: usize = 64;

/// The part of its descriptors a UDP listener lets unanswered sessions hold by default: an
/// eighth, so a flood of unanswered flows keeps its hands off the other seven.
const UNREPLIED_PART: u64 = 8;

/// The process's soft open-file limit (`RLIMIT_NOFILE`), read once, at the first call (the
/// first configuration is loaded at start); `None` when it cannot be read or is unlimited.
pub fn open_file_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit through a valid pointer.
        let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0;
        (read && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
    })
}

/// Descriptors `workers` workers hold whatever the load: each its poll, its waker, a reserve
/// descriptor, a spare, and a socket per listener (of `listeners`).
pub(super) fn fixed_descriptors(workers: usize, listeners: usize) -> u64 {
    workers as u64 * (4 + listeners as u64)
}

/// What a UDP listener set itself (`None`: the default applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct UdpExplicit {
    /// `udp.max_sessions`.
    pub max_sessions: Option<usize>,
    /// `udp.max_unreplied`.
    pub max_unreplied: Option<usize>,
}

/// `(max_sessions, max_unreplied)` for each listener of `listeners` (`None` for TCP ones),
/// given what each set itself (`explicit`, by listener; `None` for TCP ones), the number of
/// `workers` and the open-file limit `nofile` (`None`: unlimited).
///
/// The descriptors the limit leaves (less the workers' own and [`SPARE`]) go first to the
/// bounded listeners: two per connection under a TCP listener's `max_connections`, one per
/// session under an explicit `udp.max_sessions`. What remains is split evenly among the
/// listeners with no bound of their own (TCP ones without `max_connections`, UDP ones without
/// `max_sessions`); a UDP listener's share, between [`MIN_SESSIONS`] and
/// [`DEFAULT_MAX_SESSIONS`], is its default `max_sessions`. Its default `max_unreplied` is an
/// eighth of what the limit leaves to each UDP listener; `max_unreplied` is never more than
/// `max_sessions`.
pub(super) fn udp_defaults(
    listeners: &[ListenerConfig],
    explicit: &[Option<UdpExplicit>],
    workers: usize,
    nofile: Option<u64>,
) -> Vec<Option<(usize, usize)>> {
    let room = nofile.map_or(u64::MAX, |n| {
        n.saturating_sub(fixed_descriptors(workers, listeners.len()) + SPARE)
    });
    let mut bounded = 0u64;
    let mut open = 0u64;
    let mut udp = 0u64;
    for (l, e) in listeners.iter().zip(explicit) {
        match (
            l.protocol,
            l.max_connections,
            e.and_then(|e| e.max_sessions),
        ) {
            (Protocol::Tcp, Some(n), _) => bounded = bounded.saturating_add(2 * n as u64),
            (Protocol::Udp, _, Some(n)) => bounded = bounded.saturating_add(n as u64),
            _ => open += 1,
        }
        udp += u64::from(l.protocol == Protocol::Udp);
    }
    let share = room.saturating_sub(bounded) / open.max(1);
    let default_sessions = usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(MIN_SESSIONS, DEFAULT_MAX_SESSIONS);
    let default_unreplied =
        usize::try_from(room / udp.max(1) / UNREPLIED_PART).unwrap_or(usize::MAX);
    listeners
        .iter()
        .zip(explicit)
        .map(|(l, e)| {
            let e = e.filter(|_| l.protocol == Protocol::Udp)?;
            let sessions = e.max_sessions.unwrap_or(default_sessions);
            let unreplied = e.max_unreplied.unwrap_or(default_unreplied);
            Some((sessions, unreplied.clamp(1, sessions)))
        })
        .collect()
}

/// Descriptors the configured limits may hold at once: two per TCP connection under each
/// listener's `max_connections` (client and target sockets) and one per UDP session under
/// `udp.max_sessions`, plus the workers' own ([`fixed_descriptors`]). `None` when a TCP
/// listener has no `max_connections` (nothing bounds it).
pub fn descriptors_needed(config: &super::Config) -> Option<u64> {
    let mut need = fixed_descriptors(config.workers, config.listeners.len());
    for l in &config.listeners {
        need += match l.protocol {
            Protocol::Tcp => 2 * l.max_connections? as u64,
            Protocol::Udp => l.udp.as_ref().map_or(0, |u| u.max_sessions as u64),
        };
    }
    Some(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners(yaml_listeners: &str) -> Vec<ListenerConfig> {
        let yaml = format!(
            "listeners:\n{yaml_listeners}target_groups:\n  - name: g\n    targets:\n      - address: 127.0.0.1:9\n"
        );
        let raw = serde_yaml::from_str(&yaml).unwrap();
        super::super::validate(std::path::Path::new("t.yaml"), raw)
            .unwrap()
            .listeners
    }

    const UDP: &str = "  - {name: u, protocol: udp, bind: '127.0.0.1:53', target_group: g}\n";
    const TCP: &str = "  - {name: t, protocol: tcp, bind: '127.0.0.1:80', target_group: g}\n";

    fn defaults(ls: &[ListenerConfig], nofile: Option<u64>) -> Vec<Option<(usize, usize)>> {
        let explicit: Vec<Option<UdpExplicit>> = ls
            .iter()
            .map(|l| (l.protocol == Protocol::Udp).then(UdpExplicit::default))
            .collect();
        udp_defaults(ls, &explicit, 2, nofile)
    }

    #[test]
    fn one_udp_listener_takes_what_the_limit_leaves_and_an_eighth_for_unanswered() {
        let ls = listeners(UDP);
        // 4,096 less 2 workers × 5 and the spare 64: 4,022.
        assert_eq!(defaults(&ls, Some(4096)), [Some((4022, 502))]);
        assert_eq!(defaults(&ls, Some(20_000)), [Some((19_926, 2490))]);
        assert_eq!(defaults(&ls, None)[0].map(|d| d.0), Some(100_000));
    }

    #[test]
    fn other_listeners_share_the_limit() {
        // An unbounded TCP listener takes an even share.
        let ls = listeners(&format!("{UDP}{TCP}"));
        assert_eq!(defaults(&ls, Some(4096)), [Some((2010, 502)), None]);
        // A bounded one its 2 descriptors per connection first.
        let ls = listeners(&format!(
            "{UDP}{}",
            TCP.replace('}', ", max_connections: 1000}")
        ));
        assert_eq!(defaults(&ls, Some(4096)), [Some((2020, 502)), None]);
        // Two UDP listeners split both the room and the unanswered part.
        let ls = listeners(&format!(
            "{UDP}{}",
            UDP.replace(":53", ":54").replace("u,", "v,")
        ));
        assert_eq!(defaults(&ls, Some(4096)), [Some((2010, 251)); 2]);
    }

    #[test]
    fn each_worker_gets_an_even_share_of_unreplied_sessions() {
        let mut u = super::super::UdpSettings {
            max_sessions: 100,
            max_unreplied: 100,
            ..Default::default()
        };
        assert_eq!(u.unreplied_per_worker(2), 50);
        assert_eq!(u.unreplied_per_worker(1), 100);
        u.max_unreplied = 3;
        assert_eq!(u.unreplied_per_worker(8), 1, "at least one");
    }

    #[test]
    fn explicit_values_stand_and_unreplied_never_exceeds_sessions() {
        let ls = listeners(UDP);
        let set = |s, u| {
            udp_defaults(
                &ls,
                &[Some(UdpExplicit {
                    max_sessions: s,
                    max_unreplied: u,
                })],
                2,
                Some(4096),
            )
        };
        assert_eq!(set(Some(100), None), [Some((100, 100))]);
        assert_eq!(set(Some(100), Some(30)), [Some((100, 30))]);
        assert_eq!(set(None, Some(10_000)), [Some((4022, 4022))]);
        // A limit that leaves nothing still gives a usable default (start-up warns).
        assert_eq!(set(None, None), [Some((4022, 502))]);
        let tiny = udp_defaults(&ls, &[Some(UdpExplicit::default())], 2, Some(10));
        assert_eq!(tiny, [Some((MIN_SESSIONS, 1))]);
    }
}

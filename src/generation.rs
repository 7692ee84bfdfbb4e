//! One *generation* of the running configuration, as every thread shares it: listeners,
//! target groups and targets, immutable once built, in an `Arc`.
//!
//! A hot reload or a target added through the admin API builds the next generation with
//! [`Generation::successor`] and hands it to every thread. Indices never move between generations:
//! a listener or group keeps its index for the life of the process (one that is removed stays as
//! a tombstone), and a target while anything refers to it (a removed target's index goes to a
//! new one only once its connections and sessions have ended), so whatever recorded an index
//! finds the same thing in any later generation. What changes while a generation runs (health, admin states, counters)
//! lives in atomics shared by all generations.

use std::sync::Arc;

use crate::balancer::table_builder;
use crate::config::{Config, ListenerConfig};
// The listener's state moved to `crate::listener`; the workers still name it from here.
pub(crate) use crate::listener::{HandshakeFailure, ListenerPlace, ListenerState, Refusal};
use crate::target::TargetGroup;

/// Everything the threads share: one generation, built from a [`Config`].
#[derive(Debug)]
pub struct Generation {
    /// The configuration this generation was built from, as written (file order).
    pub config: Config,
    /// Listeners by index (the first generation's in config order, then those added later;
    /// removed ones stay, with `removed` set).
    pub listeners: Vec<ListenerState>,
    /// Target groups by index, likewise.
    pub groups: Vec<TargetGroup>,
    /// 0 for the first generation, then 1, 2, … for each applied change.
    pub generation: u64,
}

impl Generation {
    /// Builds the first generation for `config`, every target healthy and every counter zero.
    /// Listeners' `bind` should be the addresses they got (port 0 resolved).
    pub fn new(config: Config) -> Arc<Self> {
        let groups = config
            .target_groups
            .iter()
            .map(|c| TargetGroup::new(c, table_builder))
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerState::new(l.clone()))
            .collect();
        Arc::new(Generation {
            config,
            listeners,
            groups,
            generation: 0,
        })
    }

    /// The next generation for `config`, matching groups and listeners by name (see
    /// [`TargetGroup`] for targets). A listener whose protocol or bind address changed counts
    /// as removed and added again. Returns it with the indices of the listeners that are new
    /// (they need sockets). Marks removed and revived targets on their shared state at once:
    /// call it only to apply the result.
    pub fn successor(&self, config: Config) -> (Generation, Vec<usize>) {
        let mut groups: Vec<TargetGroup> = self
            .groups
            .iter()
            .map(|g| {
                let next = config
                    .target_groups
                    .iter()
                    .find(|c| c.name == g.config.name && !g.removed);
                g.successor(next, table_builder)
            })
            .collect();
        for c in &config.target_groups {
            if !groups.iter().any(|g| g.config.name == c.name && !g.removed) {
                groups.push(TargetGroup::new(c, table_builder)); // healthy, as at start
            }
        }
        // Listeners name groups by their index in `config`; ours are by name.
        let index = |i: usize| {
            let name = &config.target_groups[i].name;
            groups
                .iter()
                .position(|g| &g.config.name == name && !g.removed)
                .expect("every configured group has an index")
        };
        let layout = |mut l: ListenerConfig| {
            for g in l.route_groups_mut() {
                *g = index(*g);
            }
            l
        };
        let mut listeners: Vec<ListenerState> = self
            .listeners
            .iter()
            .map(|old| {
                let next = config
                    .listeners
                    .iter()
                    .find(|c| !old.removed && same_socket(c, &old.config));
                let config = next.map_or_else(|| old.config.clone(), |c| layout(c.clone()));
                old.successor(config, next.is_none())
            })
            .collect();
        let mut added = Vec::new();
        for i in self.added_listeners(&config) {
            added.push(listeners.len());
            let c = layout(config.listeners[i].clone());
            listeners.push(ListenerState::new(c));
        }
        let next = Generation {
            config,
            listeners,
            groups,
            generation: self.generation + 1,
        };
        (next, added)
    }

    /// Indices (into `config.listeners`) of the listeners that [`Generation::successor`] would
    /// add: those with no live listener of the same name, protocol and address.
    pub fn added_listeners(&self, config: &Config) -> Vec<usize> {
        (0..config.listeners.len())
            .filter(|&i| {
                !self
                    .listeners
                    .iter()
                    .any(|l| !l.removed && same_socket(&config.listeners[i], &l.config))
            })
            .collect()
    }

    /// The group named `name` (not removed), with its index.
    pub fn group(&self, name: &str) -> Option<(usize, &TargetGroup)> {
        self.groups
            .iter()
            .enumerate()
            .find(|(_, g)| !g.removed && g.config.name == name)
    }
}

/// Whether the running listener `old` (its `bind` the address it got) serves `new` as
/// configured: same name and protocol, and the same address, or the same IP when `new` asks for
/// port 0 (any port: the one it has will do).
fn same_socket(new: &ListenerConfig, old: &ListenerConfig) -> bool {
    let address = new.bind == old.bind || (new.bind.port() == 0 && new.bind.ip() == old.bind.ip());
    new.name == old.name
        && new.protocol == old.protocol
        && address
        && new.interface == old.interface
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::config;
    use crate::target::AdminState;

    /// Listeners `(name, bind)` in front of group `g`, and groups `(name, algorithm, ports)`
    /// of targets on 127.0.0.1.
    fn config(listeners: &[(&str, &str)], groups: &[(&str, &str, &[u16])]) -> Config {
        let mut yaml = "listeners:\n".to_string();
        for (name, bind) in listeners {
            yaml += &format!(
                "  - {{name: {name}, protocol: tcp, bind: '{bind}', target_group: {}}}\n",
                groups[0].0
            );
        }
        yaml += "target_groups:\n";
        for (name, algorithm, ports) in groups {
            yaml += &format!("  - name: {name}\n    algorithm: {algorithm}\n    targets:\n");
            for p in *ports {
                yaml += &format!("      - {{address: '127.0.0.1:{p}'}}\n");
            }
        }
        config::parse(Path::new("t.yaml"), &yaml).unwrap()
    }

    fn addresses(g: &TargetGroup) -> Vec<(u16, AdminState)> {
        g.targets
            .iter()
            .map(|t| (t.address.port(), t.admin_state()))
            .collect()
    }

    #[test]
    fn places_are_given_back_when_dropped_and_never_exceed_the_limit() {
        let g = Generation::new(config(&[("l", "127.0.0.1:7000")], &[("g", "random", &[1])]));
        let (l, t) = (&g.listeners[0], &g.groups[0].targets[0]);
        let a = l.reserve(Some(2)).expect("first place");
        let b = l.reserve(Some(2)).expect("second place");
        assert!(l.reserve(Some(2)).is_none(), "a third past max 2");
        assert_eq!(
            l.active.load(Ordering::Relaxed),
            2,
            "a refused place is given back"
        );
        let held = (t.hold(), t.hold());
        assert_eq!(t.active.load(Ordering::Relaxed), 2);
        drop((a, held));
        assert_eq!(l.active.load(Ordering::Relaxed), 1);
        assert_eq!(t.active.load(Ordering::Relaxed), 0);
        drop(b);
        assert_eq!(l.active.load(Ordering::Relaxed), 0);
        assert!(l.reserve(None).is_some(), "no limit");
    }

    #[test]
    fn targets_keep_their_index_and_state_across_generations() {
        let first = Generation::new(config(
            &[("l", "127.0.0.1:7000")],
            &[("g", "round_robin", &[1, 2, 3])],
        ));
        first.groups[0].targets[1]
            .active
            .store(5, Ordering::Relaxed);
        // 1 still has a connection: its slot stays its own while it drains.
        first.groups[0].targets[0]
            .active
            .store(1, Ordering::Relaxed);
        first.groups[0].set_admin_state(2, AdminState::Draining);

        // 1 goes, 4 comes, the algorithm changes.
        let (second, added) = first.successor(config(
            &[("l", "127.0.0.1:7000")],
            &[("g", "least_connections", &[2, 3, 4])],
        ));
        assert!(added.is_empty(), "same listener, same sockets");
        let g = &second.groups[0];
        use AdminState::*;
        assert_eq!(
            addresses(g),
            [(1, Removed), (2, Active), (3, Draining), (4, Active)]
        );
        assert_eq!(g.config.algorithm, config::Algorithm::LeastConnections);
        assert_eq!(
            g.targets[1].active.load(Ordering::Relaxed),
            5,
            "counters carried"
        );
        assert!(
            !g.targets[3].is_healthy(),
            "a new target waits for its checks"
        );
        assert!(g.targets[1].is_healthy());
        assert_eq!(
            first.groups[0].targets[0].admin_state(),
            Removed,
            "the state is shared: older generations see the removal"
        );

        // 1 comes back: same index, in service, unhealthy until checked.
        let (third, _) = second.successor(config(
            &[("l", "127.0.0.1:7000")],
            &[("g", "least_connections", &[1, 2, 3, 4])],
        ));
        let g = &third.groups[0];
        assert_eq!(
            addresses(g),
            [(1, Active), (2, Active), (3, Draining), (4, Active)]
        );
        assert!(!g.targets[0].is_healthy());
        assert_eq!(third.generation, 2);

        // 4 goes with no connection open and 5 comes: 5 takes 4's slot.
        let (fourth, _) = third.successor(config(
            &[("l", "127.0.0.1:7000")],
            &[("g", "least_connections", &[1, 2, 3, 5])],
        ));
        let g = &fourth.groups[0];
        assert_eq!(
            addresses(g),
            [(1, Active), (2, Active), (3, Draining), (5, Active)]
        );
        assert!(!g.targets[3].is_healthy(), "a fresh state, not 4's");
    }

    #[test]
    fn groups_and_listeners_are_matched_by_name_and_address() {
        let first = Generation::new(config(
            &[("l", "127.0.0.1:7000"), ("m", "127.0.0.1:7001")],
            &[("g", "round_robin", &[1]), ("h", "round_robin", &[2])],
        ));
        first.listeners[0].accepted.store(9, Ordering::Relaxed);
        // m moves to another port; n is new; h goes, k comes; l asks for port 0 (any: it keeps
        // the one it has).
        let (next, added) = first.successor(config(
            &[
                ("l", "127.0.0.1:0"),
                ("m", "127.0.0.1:7002"),
                ("n", "127.0.0.1:7003"),
            ],
            &[("g", "round_robin", &[1]), ("k", "round_robin", &[3])],
        ));
        let live: Vec<(&str, bool)> = next
            .listeners
            .iter()
            .map(|l| (l.config.name.as_str(), l.removed))
            .collect();
        assert_eq!(
            live,
            [("l", false), ("m", true), ("m", false), ("n", false)]
        );
        assert_eq!(added, [2, 3], "indices of the listeners that need sockets");
        assert_eq!(next.listeners[0].accepted.load(Ordering::Relaxed), 9);
        let groups: Vec<(&str, bool)> = next.groups.iter().map(|g| (g.name(), g.removed)).collect();
        assert_eq!(groups, [("g", false), ("h", true), ("k", false)]);
        assert_eq!(next.groups[1].targets[0].admin_state(), AdminState::Removed);
        assert_eq!(next.group("k").map(|(i, _)| i), Some(2));
        assert_eq!(next.group("h").map(|(i, _)| i), None);
    }
}

//! The fleet's keys in etcd, and what a node makes of them (no I/O: [`View`] is fed the keys
//! a range read or a watch returns).
//!
//! Under the prefix `P` (`cluster.etcd.prefix`), group names percent-encoded:
//!
//! ```text
//! P/groups/<group>/seeded            the fleet holds this group's target list (from then
//!                                    on the file's targets of the group are not used)
//! P/groups/<group>/targets/<addr>    a target: {"weight":1,"backup":false,
//!                                    "max_connections":null,"server_id":null}
//! P/groups/<group>/states/<addr>     its admin state: "active", "draining", "disabled"
//!                                    (no key: active); for file targets too, seeded or not
//! P/nodes/<id>                       a node's record (FleetNode as JSON), under its lease
//! P/gone/<id>                        a node whose record expired without its leaving (the
//!                                    unix time in ms it was seen gone); no lease: every node,
//!                                    even one started since, knows; cleared when it returns
//! P/leaders/<group>                  the id of the node that runs the group's scaling
//!                                    hooks and DNS discovery for the fleet, under its lease
//! ```
//!
//! Each key is written whole by one request, so two writers of one key are ordered by
//! etcd's revision: the last one wins (and is logged by every node that applies it).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use crate::config::TargetConfig;
use crate::control::fleet::FleetNode;
use crate::target::AdminState;

/// What a group name keeps unencoded in a key.
const NAME: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// A target as the fleet holds it (its tokens stay with each node).
/// Fields it does not know are ignored (a newer version's, during a rolling upgrade).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TargetRecord {
    /// Relative share for weighted algorithms.
    pub weight: u32,
    /// Used only when no primary target is healthy.
    #[serde(default)]
    pub backup: bool,
    /// Most open connections at once.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// QUIC-LB server ID.
    #[serde(default)]
    pub server_id: Option<u64>,
    /// Found by DNS discovery (the group's leader removes it when DNS no longer lists it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovered: bool,
}

impl TargetRecord {
    /// The record of `t`.
    pub(crate) fn of(t: &TargetConfig) -> TargetRecord {
        TargetRecord {
            weight: t.weight,
            backup: t.backup,
            max_connections: t.max_connections,
            server_id: t.server_id,
            discovered: false,
        }
    }

    /// The target at `address` it describes (no tokens).
    pub(crate) fn target(&self, address: SocketAddr) -> TargetConfig {
        TargetConfig {
            address,
            weight: self.weight,
            backup: self.backup,
            max_connections: self.max_connections,
            server_id: self.server_id,
            tokens: Vec::new(),
        }
    }
}

/// The keys of one fleet (its prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// `groups/<group>/seeded`.
    Seeded(String),
    /// `groups/<group>/targets/<addr>`.
    Target(String, SocketAddr),
    /// `groups/<group>/states/<addr>`.
    State(String, SocketAddr),
    /// `nodes/<id>`.
    Node(String),
    /// `leaders/<group>`.
    Leader(String),
    /// `gone/<id>`.
    Gone(String),
}

impl Keys {
    /// The keys under `prefix` (without a trailing `/`).
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// Every key of the fleet starts with this.
    pub(crate) fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The key of `key`.
    pub(crate) fn key(&self, key: &Key) -> String {
        let g = |name: &str| utf8_percent_encode(name, NAME).to_string();
        match key {
            Key::Seeded(group) => format!("{}/groups/{}/seeded", self.prefix, g(group)),
            Key::Target(group, a) => format!("{}/groups/{}/targets/{a}", self.prefix, g(group)),
            Key::State(group, a) => format!("{}/groups/{}/states/{a}", self.prefix, g(group)),
            Key::Node(id) => format!("{}/nodes/{}", self.prefix, g(id)),
            Key::Leader(group) => format!("{}/leaders/{}", self.prefix, g(group)),
            Key::Gone(id) => format!("{}/gone/{}", self.prefix, g(id)),
        }
    }

    /// The prefix of every target key of group `group`.
    pub(crate) fn targets_of(&self, group: &str) -> String {
        let name = utf8_percent_encode(group, NAME);
        format!("{}/groups/{name}/targets/", self.prefix)
    }

    /// What `key` is; `None` for a key this version does not know (left alone).
    pub(crate) fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let name = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|n| n.into_owned())
        };
        match rest.split('/').collect::<Vec<_>>()[..] {
            ["groups", group, "seeded"] => Some(Key::Seeded(name(group)?)),
            ["groups", group, "targets", a] => Some(Key::Target(name(group)?, a.parse().ok()?)),
            ["groups", group, "states", a] => Some(Key::State(name(group)?, a.parse().ok()?)),
            ["nodes", id] => Some(Key::Node(name(id)?)),
            ["leaders", group] => Some(Key::Leader(name(group)?)),
            ["gone", id] => Some(Key::Gone(name(id)?)),
            _ => None,
        }
    }
}

/// One group as the fleet holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupView {
    /// Whether the fleet holds its target list.
    pub seeded: bool,
    /// The revision its `seeded` key was last written at (0: none): a node that hands the
    /// fleet a whole list does so only if no other did since it looked.
    pub seeded_revision: i64,
    /// Its targets, when seeded.
    pub targets: BTreeMap<SocketAddr, TargetRecord>,
    /// Admin states other than active.
    pub states: BTreeMap<SocketAddr, AdminState>,
}

impl GroupView {
    /// Its targets DNS discovery found: address → weight.
    pub(crate) fn discovered(&self) -> BTreeMap<SocketAddr, u32> {
        self.targets
            .iter()
            .filter(|(_, r)| r.discovered)
            .map(|(&a, r)| (a, r.weight))
            .collect()
    }
}

impl GroupView {
    /// The target list the fleet holds, when it holds one.
    pub(crate) fn list(&self) -> Option<Vec<TargetConfig>> {
        self.seeded.then(|| {
            self.targets
                .iter()
                .map(|(&address, r)| r.target(address))
                .collect()
        })
    }

    /// The admin state of `address` (active when the fleet says nothing).
    pub(crate) fn state(&self, address: SocketAddr) -> AdminState {
        self.states
            .get(&address)
            .copied()
            .unwrap_or(AdminState::Active)
    }
}

/// The fleet's state as a node has read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// By group name.
    pub groups: BTreeMap<String, GroupView>,
    /// Node records, by id.
    pub nodes: BTreeMap<String, FleetNode>,
    /// The leader of each group that has one: group name → node id.
    pub leaders: BTreeMap<String, String>,
    /// Nodes gone without leaving: id → unix time in ms they were seen gone.
    pub gone: BTreeMap<String, u64>,
    /// The lease each leader key is held under (group name → lease id).
    pub leader_leases: BTreeMap<String, i64>,
}

impl View {
    /// Takes `value` for `key`.
    ///
    /// # Errors
    /// A value that does not parse (the key is left as it was).
    pub(crate) fn put(&mut self, key: Key, value: &[u8]) -> Result<(), String> {
        // A value that does not parse counts as no key at all, so a node that reads it now
        // and one that saw the good value before agree.
        let taken = self.take(key.clone(), value);
        if taken.is_err() {
            self.delete(key);
        }
        taken
    }

    /// [`View::put`] of a value that parses; an error changes nothing.
    fn take(&mut self, key: Key, value: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(value);
        match key {
            Key::Seeded(group) => self.groups.entry(group).or_default().seeded = true,
            Key::Target(group, address) => {
                let record: TargetRecord = serde_json::from_slice(value)
                    .map_err(|e| format!("target {address} of group `{group}`: {e}: {text}"))?;
                if record.weight == 0 || u64::from(record.weight) > crate::config::MAX_WEIGHT {
                    return Err(format!(
                        "target {address} of group `{group}`: weight {} out of range",
                        record.weight
                    ));
                }
                let g = self.groups.entry(group).or_default();
                g.targets.insert(address, record);
            }
            Key::State(group, address) => {
                let state = match text.trim().trim_matches('"') {
                    "active" => AdminState::Active,
                    "draining" => AdminState::Draining,
                    "disabled" => AdminState::Disabled,
                    other => {
                        return Err(format!(
                            "target {address} of group `{group}`: state `{other}`: active, \
                             draining or disabled"
                        ))
                    }
                };
                let g = self.groups.entry(group).or_default();
                if state == AdminState::Active {
                    g.states.remove(&address);
                } else {
                    g.states.insert(address, state);
                }
            }
            Key::Node(id) => {
                let record: FleetNode =
                    serde_json::from_slice(value).map_err(|e| format!("node {id}: {e}: {text}"))?;
                self.nodes.insert(id, record);
            }
            Key::Leader(group) => {
                self.leaders.insert(group, text.trim().to_string());
            }
            Key::Gone(id) => {
                let since = text
                    .trim()
                    .parse()
                    .map_err(|e| format!("gone {id}: {e}: {text}"))?;
                self.gone.insert(id, since);
            }
        }
        Ok(())
    }

    /// Forgets `key`.
    pub(crate) fn delete(&mut self, key: Key) {
        match key {
            Key::Seeded(group) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.seeded = false;
                    g.seeded_revision = 0;
                }
            }
            Key::Target(group, address) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.targets.remove(&address);
                }
            }
            Key::State(group, address) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.states.remove(&address);
                }
            }
            Key::Node(id) => {
                self.nodes.remove(&id);
            }
            Key::Leader(group) => {
                self.leaders.remove(&group);
                self.leader_leases.remove(&group);
            }
            Key::Gone(id) => {
                self.gone.remove(&id);
            }
        }
    }

    /// The group `name` (empty when the fleet says nothing of it).
    pub(crate) fn group(&self, name: &str) -> GroupView {
        self.groups.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_any_group_name() {
        let k = Keys::new("/ballast/prod");
        let a: SocketAddr = "[::1]:5432".parse().unwrap();
        for key in [
            Key::Seeded("pg/primary east".into()),
            Key::Target("pg".into(), a),
            Key::State("ü".into(), "10.0.0.1:80".parse().unwrap()),
            Key::Node("lb-1".into()),
            Key::Leader("pg/1".into()),
            Key::Gone("lb-2".into()),
        ] {
            let text = k.key(&key);
            assert!(text.starts_with(&k.all()), "{text}");
            assert_eq!(text.matches('/').count(), k.key(&key).matches('/').count());
            assert_eq!(k.parse(text.as_bytes()), Some(key), "{text}");
        }
        assert_eq!(
            k.key(&Key::Seeded("a/b".into())),
            "/ballast/prod/groups/a%2Fb/seeded"
        );
        // Another fleet's keys, and keys this version does not know, are left alone.
        assert_eq!(k.parse(b"/ballast/prodx/nodes/a"), None);
        assert_eq!(
            k.parse(b"/ballast/prod/leaders/pg"),
            Some(Key::Leader("pg".into()))
        );
        assert_eq!(k.parse(b"/ballast/prod/elsewhere/pg"), None);
        assert_eq!(k.parse(b"/ballast/prod/groups/pg/targets/nonsense"), None);
    }

    #[test]
    fn a_view_follows_puts_and_deletes() {
        let k = Keys::new("/f");
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut v = View::default();
        assert_eq!(v.group("web").list(), None, "not seeded: the file's list");
        v.put(Key::Seeded("web".into()), b"lb-1").unwrap();
        assert_eq!(v.group("web").list(), Some(vec![]));
        v.put(Key::Target("web".into(), a), br#"{"weight":3}"#)
            .unwrap();
        assert_eq!(v.group("web").list().unwrap()[0].weight, 3);
        assert!(v
            .put(Key::Target("web".into(), a), br#"{"weight":0}"#)
            .is_err());
        assert_eq!(v.group("web").list(), Some(vec![]));
        v.put(Key::Target("web".into(), a), br#"{"weight":3}"#)
            .unwrap();
        let before = v.clone();
        assert!(v.put(Key::Target("web".into(), a), b"{").is_err());
        assert_eq!(
            v.group("web").list(),
            Some(vec![]),
            "a bad value is as no key, as a node reading it afresh sees it"
        );
        assert_ne!(v, before);
        let newer = br#"{"weight":3,"from_a_newer_version":1}"#;
        v.put(Key::Target("web".into(), a), newer).unwrap();
        assert_eq!(v, before);
        v.put(Key::State("web".into(), a), b"draining").unwrap();
        assert_eq!(v.group("web").state(a), AdminState::Draining);
        assert!(v.put(Key::State("web".into(), a), b"removed").is_err());
        v.put(Key::State("web".into(), a), b"active").unwrap();
        assert_eq!(v.group("web").state(a), AdminState::Active);
        v.put(Key::State("web".into(), a), b"disabled").unwrap();
        v.delete(Key::State("web".into(), a));
        assert_eq!(v.group("web").state(a), AdminState::Active);
        v.delete(Key::Target("web".into(), a));
        assert_eq!(v.group("web").list(), Some(vec![]));
        v.delete(Key::Seeded("web".into()));
        assert_eq!(v.group("web").list(), None);
        let _ = k;
    }
}

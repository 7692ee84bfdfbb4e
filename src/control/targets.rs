//! The changes to target groups' targets: added and removed (the admin API, `discover:`,
//! scaling hooks), admin states (drain, disable, enable), and the prober's health and
//! outlier-detection flips; a target taken out is closed once its group's `drain_timeout` has
//! passed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{ChangeError, Control, Summary};
use crate::config::{self, Config, TargetConfig, UnhealthyConnections};
use crate::target::AdminState;
use crate::worker::Message;

impl Control {
    /// The targets `discover:` found for group `group` are now `found` (address → weight):
    /// new ones are added (taking traffic once they pass their health check), vanished ones
    /// removed (they drain). Returns `None` when nothing changed.
    ///
    /// # Errors
    /// As [`Control::add_target`]: an unknown group, a `maglev_table_size` too small.
    pub fn set_discovered(
        self: &Arc<Self>,
        group: &str,
        found: BTreeMap<SocketAddr, u32>,
    ) -> Result<Option<Summary>, ChangeError> {
        if let Some(fleet) = self.fleet() {
            // The group's leader writes it to etcd; every node (this one too) applies it from
            // there.
            let before = fleet.discovered(group);
            if before == found {
                return Ok(None);
            }
            let change = super::fleet::FleetChange::Discover {
                group: group.to_string(),
                before,
                found,
            };
            return match fleet.write_as_leader(change) {
                Ok(_) => Ok(None),
                Err(super::fleet::FleetError::Refused(e)) => Err(e),
                Err(e) => Err(ChangeError::Invalid(e.to_string())),
            };
        }
        let _guard = self.locked();
        let mut known = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
        let before = known.get(group).cloned().unwrap_or_default();
        if before == found {
            return Ok(None);
        }
        let mut config = self.generation().config.clone();
        let g = group_config(&mut config, group)?;
        g.targets
            .retain(|t| !before.contains_key(&t.address) || found.contains_key(&t.address));
        for (&address, &weight) in &found {
            match g.targets.iter_mut().find(|t| t.address == address) {
                Some(t) if before.contains_key(&address) => t.weight = weight,
                Some(_) => {} // also listed in the file: the file's settings stay
                None => g.targets.push(TargetConfig::new(address, weight)),
            }
        }
        config::check_group(g).map_err(|(_, m)| ChangeError::Invalid(m))?;
        let drain = g.drain_timeout;
        let summary = self.apply_locked(config)?;
        // Vanished targets drain, then what is still open after drain_timeout is closed, as
        // for a target removed through the API.
        let generation = self.generation();
        if let Some((gi, g)) = generation.group(group) {
            for address in before.keys().filter(|a| !found.contains_key(a)) {
                if let Some((ti, _)) =
                    g.targets.iter().enumerate().find(|(_, t)| {
                        t.address == *address && t.admin_state() == AdminState::Removed
                    })
                {
                    self.close_after(gi, ti, drain, AdminState::Removed);
                }
            }
        }
        known.insert(group.to_string(), found);
        Ok(Some(summary))
    }

    /// A reload's `config` keeps what `discover:` found for the groups that still discover.
    pub(super) fn keep_discovered(&self, config: &mut Config) {
        let mut known = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|name, _| {
            config
                .target_groups
                .iter()
                .any(|g| &g.name == name && !g.discover.is_empty())
        });
        for g in &mut config.target_groups {
            for (&address, &weight) in known.get(&g.name).into_iter().flatten() {
                if !g.targets.iter().any(|t| t.address == address) {
                    g.targets.push(TargetConfig::new(address, weight));
                }
            }
        }
    }

    /// Adds `target` to group `group` (it takes traffic once it passes `healthy_threshold`
    /// checks).
    ///
    /// # Errors
    /// [`ChangeError::NotFound`] for an unknown group, [`ChangeError::Conflict`] when the
    /// address is already a target of the group or a weight other than 1 is asked of a
    /// `round_robin` group (which ignores weights) or its `server_id` is another target's,
    /// [`ChangeError::Invalid`] when the group's rules refuse it (port 0, a
    /// `maglev_table_size` too small for one more target, a `server_id` too large for a
    /// `quic:` listener of the group).
    pub fn add_target(&self, group: &str, target: TargetConfig) -> Result<Summary, ChangeError> {
        let _guard = self.locked();
        let config = with_target_added(self.generation().config.clone(), group, target)?;
        self.apply_locked(config)
    }

    /// Removes `address` from group `group`: it takes nothing new, its open connections go
    /// on, and whatever is still open after the group's `drain_timeout` is closed.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`] for an unknown group or target, [`ChangeError::Invalid`]
    /// for a group's last target.
    pub fn remove_target(
        self: &Arc<Self>,
        group: &str,
        address: SocketAddr,
    ) -> Result<Summary, ChangeError> {
        let _guard = self.locked();
        let (config, drain) =
            with_target_removed(self.generation().config.clone(), group, address)?;
        let summary = self.apply_locked(config)?;
        let generation = self.generation();
        if let Some((gi, _)) = generation.group(group) {
            if let Some(ti) = generation.groups[gi]
                .targets
                .iter()
                .position(|t| t.address == address)
            {
                self.close_after(gi, ti, drain, AdminState::Removed);
            }
        }
        Ok(summary)
    }

    /// Sets the weight of `address` in `group` (1 to [`config::MAX_WEIGHT`]): the group's
    /// algorithm is rebuilt with it (a new generation; open connections keep their targets).
    /// It lasts until the next reload, which applies the file's weight. Returns the new
    /// generation's `(group index, target index)`.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`] for an unknown group or target; [`ChangeError::Invalid`]
    /// for a weight out of range, or one the group's rules refuse (`maglev_table_size`);
    /// [`ChangeError::Conflict`] for a `round_robin` group, which ignores weights.
    pub fn set_weight(
        &self,
        group: &str,
        address: SocketAddr,
        weight: u32,
    ) -> Result<(usize, usize), ChangeError> {
        let _guard = self.locked();
        let config = self.generation().config.clone();
        let before = target_config(&config, group, address)?.weight;
        let config = with_weight(config, group, address, weight)?;
        if before != weight {
            self.apply_locked(config)?;
            log::info!("target group {group}: {address}: weight {before} -> {weight} (admin API)");
        }
        let generation = self.generation();
        let (gi, g) = generation
            .group(group)
            .ok_or_else(|| ChangeError::NotFound(format!("unknown target group `{group}`")))?;
        let (ti, _) = g.target(address).ok_or_else(|| no_target(group, address))?;
        Ok((gi, ti))
    }

    /// Adds tokens `add` to and removes `remove` from target `address` of group `group`
    /// (`token:` listeners route datagrams carrying them): a new generation, so a token a
    /// matchmaker adds is routed within one. It lasts until the next reload, which applies
    /// the file's tokens. Returns the new generation's `(group index, target index)`.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`] for an unknown group or target; [`ChangeError::Conflict`]
    /// for a token another target holds, or tokens added to a draining or disabled target;
    /// [`ChangeError::Invalid`] for one of a size a listener of the group does not read.
    pub fn change_tokens(
        &self,
        group: &str,
        address: SocketAddr,
        add: Vec<Box<[u8]>>,
        remove: &[Box<[u8]>],
    ) -> Result<(usize, usize), ChangeError> {
        let _guard = self.locked();
        let mut config = self.generation().config.clone();
        let g = group_config(&mut config, group)?;
        let t = g
            .targets
            .iter_mut()
            .find(|t| t.address == address)
            .ok_or_else(|| no_target(group, address))?;
        // Sets, not scans: a matchmaker's target may hold tens of thousands of tokens.
        let held: std::collections::HashSet<&[u8]> = t.tokens.iter().map(|k| &k[..]).collect();
        let add: Vec<Box<[u8]>> = add.into_iter().filter(|k| !held.contains(&k[..])).collect();
        // A draining or disabled target takes no new players: its tokens may only go (adding
        // one it holds already changes nothing, and is no error: a matchmaker may retry).
        let state = self
            .generation()
            .group(group)
            .and_then(|(_, g)| g.target(address).map(|(_, t)| t.admin_state()));
        if !add.is_empty() && state.is_some_and(|s| s != AdminState::Active) {
            return Err(ChangeError::Conflict(format!(
                "target {address} of group `{group}` is {}: it takes no new tokens (enable \
                 it first)",
                state.map_or(String::new(), |s| s.to_string())
            )));
        }
        let adding = !add.is_empty();
        let before = t.tokens.len();
        let remove: std::collections::HashSet<&[u8]> = remove.iter().map(|k| &k[..]).collect();
        t.tokens.retain(|k| !remove.contains(&k[..]));
        let removed = before - t.tokens.len();
        let mut added = std::collections::HashSet::new();
        for k in add {
            if added.insert(k.clone()) {
                t.tokens.push(k);
            }
        }
        if removed > 0 || !added.is_empty() {
            let changed = t.clone();
            routing_ids_fit(&config, group, &changed, Some(address), adding)?;
            self.apply_locked(config)?;
            log::info!(
                "target group {group}: {address}: {} token(s) now (admin API)",
                changed.tokens.len()
            );
        }
        let generation = self.generation();
        let (gi, g) = generation
            .group(group)
            .ok_or_else(|| ChangeError::NotFound(format!("unknown target group `{group}`")))?;
        let (ti, _) = g.target(address).ok_or_else(|| no_target(group, address))?;
        Ok((gi, ti))
    }

    /// Sets the admin state of `address` in `group`; returns `(group index, target index,
    /// whether it changed)`. Disabling also closes what is still open after the group's
    /// `drain_timeout`.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`] for an unknown group or target.
    pub fn set_admin_state(
        self: &Arc<Self>,
        group: &str,
        address: SocketAddr,
        state: AdminState,
    ) -> Result<(usize, usize, bool), ChangeError> {
        let _guard = self.locked();
        let generation = self.generation();
        let (gi, g) = generation
            .group(group)
            .ok_or_else(|| ChangeError::NotFound(format!("unknown target group `{group}`")))?;
        let (ti, _) = g.target(address).ok_or_else(|| no_target(group, address))?;
        let changed = g.set_admin_state(ti, state);
        if changed {
            log::info!("target group {group}: {address} is now {state} (admin API)");
            if state == AdminState::Disabled {
                self.close_after(gi, ti, g.config.drain_timeout, AdminState::Disabled);
            }
        }
        Ok((gi, ti, changed))
    }

    /// Outlier detection ejects target `target` of group `group` or lets it back; returns
    /// whether that changed anything.
    pub fn set_ejected(&self, group: usize, target: usize, ejected: bool) -> bool {
        let _guard = self.locked();
        self.generation().groups[group].set_ejected(target, ejected)
    }

    /// An agent gave a target a new weight percentage (already stored in its state): the
    /// running configuration is applied again, so every group's weights are built anew from
    /// the file's and the agents' (a new generation; open connections keep their targets).
    ///
    /// # Errors
    /// As [`Control::apply`] (cannot happen for the running configuration but for resources).
    pub fn refresh_weights(&self) -> Result<(), ChangeError> {
        let _guard = self.locked();
        let config = self.generation().config.clone();
        self.apply_locked(config).map(drop)
    }

    /// The prober's verdict on target `target` of group `group`; returns whether it changed.
    /// A target turning unhealthy in a group with `on_unhealthy: close` has its open TCP
    /// connections reset.
    pub fn set_healthy(&self, group: usize, target: usize, healthy: bool) -> bool {
        let _guard = self.locked();
        let generation = self.generation();
        let changed = generation.groups[group].set_healthy(target, healthy);
        if changed
            && !healthy
            && generation.groups[group].config.on_unhealthy == UnhealthyConnections::Close
        {
            // `on_unhealthy: close`: the open TCP connections go too, reset (a primary that
            // lost its role must take no more writes; clients reconnect elsewhere).
            let open = generation.groups[group].targets[target]
                .active
                .load(std::sync::atomic::Ordering::Relaxed);
            log::info!(
                "target group {}: {}: unhealthy; resetting its {open} open connection(s) \
                 (on_unhealthy: close)",
                generation.groups[group].name(),
                generation.groups[group].targets[target].address
            );
            for w in &self.workers() {
                w.send(Message::CloseTarget {
                    group,
                    target,
                    sessions: false,
                    reason: "target_unhealthy",
                });
            }
        }
        changed
    }

    /// After `wait`, closes whatever is still open to target `index` of group `g`, if it is
    /// still in state `expect` from this very change (not enabled, re-added, or disabled
    /// again since: that change has a timer of its own). A timer thread waits, so the caller
    /// answers at once.
    pub(super) fn close_after(
        self: &Arc<Self>,
        g: usize,
        index: usize,
        wait: Duration,
        expect: AdminState,
    ) {
        let set = self.generation().groups[g].targets[index].state().clone();
        let change = set.admin_changes();
        let spawned = self.after("ballast-drain", wait, move |control| {
            let generation = control.generation();
            let (group, target) = (&generation.groups[g], &generation.groups[g].targets[index]);
            if target.admin_state() == expect
                && Arc::ptr_eq(target.state(), &set)
                && set.admin_changes() == change
                && target.active.load(std::sync::atomic::Ordering::Relaxed) > 0
            {
                log::info!(
                    "target group {}: {}: drain_timeout passed; closing what is still open",
                    group.name(),
                    target.address
                );
                for w in &control.workers() {
                    w.send(Message::CloseTarget {
                        group: g,
                        target: index,
                        sessions: true,
                        reason: "disabled",
                    });
                }
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the drain timer: {e}");
        }
    }
}

/// `config` with `target` added to group `group`: the checks of [`Control::add_target`].
///
/// # Errors
/// As [`Control::add_target`].
pub(super) fn with_target_added(
    mut config: Config,
    group: &str,
    target: TargetConfig,
) -> Result<Config, ChangeError> {
    let g = group_config(&mut config, group)?;
    if target.address.port() == 0 {
        return Err(ChangeError::Invalid("target port must not be 0".into()));
    }
    if g.targets.iter().any(|t| t.address == target.address) {
        return Err(ChangeError::Conflict(format!(
            "target group `{group}` already has target {}",
            target.address
        )));
    }
    if target.weight != 1 {
        weights_count(g)?;
    }
    routing_ids_fit(&config, group, &target, None, !target.tokens.is_empty())?;
    let g = group_config(&mut config, group)?;
    g.targets.push(target);
    config::check_group(g).map_err(|(_, m)| ChangeError::Invalid(m))?;
    Ok(config)
}

/// `config` without `address` in group `group`, and the group's `drain_timeout`: the checks
/// of [`Control::remove_target`].
///
/// # Errors
/// As [`Control::remove_target`].
pub(super) fn with_target_removed(
    mut config: Config,
    group: &str,
    address: SocketAddr,
) -> Result<(Config, Duration), ChangeError> {
    let g = group_config(&mut config, group)?;
    let Some(pos) = g.targets.iter().position(|t| t.address == address) else {
        return Err(no_target(group, address));
    };
    if g.targets.len() == 1 {
        return Err(ChangeError::Invalid(format!(
            "{address} is the last target of `{group}`; a group needs at least one"
        )));
    }
    g.targets.remove(pos);
    let drain = g.drain_timeout;
    Ok((config, drain))
}

/// `config` with `address` of group `group` at `weight`: the checks of
/// [`Control::set_weight`].
///
/// # Errors
/// As [`Control::set_weight`].
pub(super) fn with_weight(
    mut config: Config,
    group: &str,
    address: SocketAddr,
    weight: u32,
) -> Result<Config, ChangeError> {
    if weight == 0 || u64::from(weight) > config::MAX_WEIGHT {
        return Err(ChangeError::Invalid(format!(
            "weight must be 1 to {}, not {weight} (to stop new connections, drain the \
             target)",
            config::MAX_WEIGHT
        )));
    }
    let g = group_config(&mut config, group)?;
    weights_count(g)?;
    let t = g
        .targets
        .iter_mut()
        .find(|t| t.address == address)
        .ok_or_else(|| no_target(group, address))?;
    if std::mem::replace(&mut t.weight, weight) != weight {
        config::check_group(g).map_err(|(_, m)| ChangeError::Invalid(m))?;
    }
    Ok(config)
}

/// Target `address` of group `group` in `config`.
///
/// # Errors
/// [`ChangeError::NotFound`] for an unknown group or target.
pub(super) fn target_config<'c>(
    config: &'c Config,
    group: &str,
    address: SocketAddr,
) -> Result<&'c TargetConfig, ChangeError> {
    config
        .target_groups
        .iter()
        .find(|g| g.name == group)
        .ok_or_else(|| ChangeError::NotFound(format!("unknown target group `{group}`")))?
        .targets
        .iter()
        .find(|t| t.address == address)
        .ok_or_else(|| no_target(group, address))
}

pub(super) fn group_config<'c>(
    config: &'c mut Config,
    group: &str,
) -> Result<&'c mut config::TargetGroupConfig, ChangeError> {
    config
        .target_groups
        .iter_mut()
        .find(|g| g.name == group)
        .ok_or_else(|| ChangeError::NotFound(format!("unknown target group `{group}`")))
}

/// Whether `target`'s QUIC server ID and tokens can join group `group` (`except` being the
/// target it replaces, if any): not another target's, fitting every listener of the group
/// (`quic.server_id_length`, `token.size`), and read by one: a new target's server ID needs
/// a `quic:` listener of the group, tokens being added (`adding_tokens`) a `token:` one.
///
/// # Errors
/// [`ChangeError::Conflict`] for a server ID or token another target holds, or one no
/// listener of the group would route by; [`ChangeError::Invalid`] for one a listener cannot
/// carry.
fn routing_ids_fit(
    config: &Config,
    group: &str,
    target: &TargetConfig,
    except: Option<SocketAddr>,
    adding_tokens: bool,
) -> Result<(), ChangeError> {
    let Some((gi, g)) = config
        .target_groups
        .iter()
        .enumerate()
        .find(|(_, g)| g.name == group)
    else {
        return Err(ChangeError::NotFound(format!(
            "unknown target group `{group}`"
        )));
    };
    let users = || config.listeners.iter().filter(|l| l.target_group == gi);
    let unread = |what: &str, key: &str| {
        ChangeError::Conflict(format!(
            "no listener of target group `{group}` has `{key}`: {what} would route nothing \
             (a matchmaker pointed at the wrong group?)"
        ))
    };
    if except.is_none() && target.server_id.is_some() && !users().any(|l| l.quic.is_some()) {
        return Err(unread("a server_id", "quic:"));
    }
    if adding_tokens && !users().any(|l| l.token.is_some()) {
        return Err(unread("tokens", "token:"));
    }
    let others = || g.targets.iter().filter(|t| Some(t.address) != except);
    if let Some(id) = target.server_id {
        if let Some(t) = others().find(|t| t.server_id == Some(id)) {
            return Err(ChangeError::Conflict(format!(
                "target {} of group `{group}` has server_id {id} already",
                t.address
            )));
        }
    }
    if !target.tokens.is_empty() {
        let holders: std::collections::HashMap<&[u8], SocketAddr> = others()
            .flat_map(|t| t.tokens.iter().map(move |k| (&k[..], t.address)))
            .collect();
        if let Some((token, holder)) = target
            .tokens
            .iter()
            .find_map(|k| holders.get(&k[..]).map(|a| (k, a)))
        {
            return Err(ChangeError::Conflict(format!(
                "target {holder} of group `{group}` has token `{}` already",
                crate::config::show_token(token)
            )));
        }
    }
    for l in config.listeners.iter().filter(|l| l.target_group == gi) {
        let misfit = l.quic.as_ref().and_then(|q| q.misfit(target));
        if let Some(why) = misfit.or_else(|| l.token.as_ref().and_then(|k| k.misfit(target))) {
            return Err(ChangeError::Invalid(format!(
                "listener `{}`: {why}",
                l.name
            )));
        }
    }
    Ok(())
}

/// How many tokens the running configuration `old` routes that `new` (a file being reloaded)
/// gives no target of the same group and address: the players on them lose their server.
pub(super) fn tokens_dropped(old: &Config, new: &Config) -> usize {
    let kept: std::collections::HashSet<_> = routed_tokens(new).collect();
    routed_tokens(old).filter(|key| !kept.contains(key)).count()
}

/// Every token of `config`, as (group, target address, token).
fn routed_tokens(config: &Config) -> impl Iterator<Item = (&str, SocketAddr, &[u8])> {
    config.target_groups.iter().flat_map(|g| {
        g.targets.iter().flat_map(move |t| {
            t.tokens
                .iter()
                .map(move |k| (g.name.as_str(), t.address, &k[..]))
        })
    })
}

fn no_target(group: &str, address: SocketAddr) -> ChangeError {
    ChangeError::NotFound(format!("target group `{group}` has no target `{address}`"))
}

/// Refuses a weight asked of group `g` when its algorithm ignores weights (`round_robin`):
/// the operator would believe it counts.
fn weights_count(g: &config::TargetGroupConfig) -> Result<(), ChangeError> {
    if g.algorithm == config::Algorithm::RoundRobin {
        return Err(ChangeError::Conflict(format!(
            "target group `{}` uses round_robin, which ignores weights: use \
             weighted_round_robin (or another weighted algorithm) for weights to count",
            g.name
        )));
    }
    Ok(())
}

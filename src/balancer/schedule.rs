//! A cyclic pick order shared by the workers of a group through an atomic cursor.

use std::sync::atomic::Ordering;

use crate::target::TargetGroup;

/// A cycle of target indices, rebuilt by each worker when the group's health changes.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    generation: Option<u64>,
    cycle: Vec<usize>,
}

impl Schedule {
    /// Returns the next target: the cycle entry at the group's shared cursor, or the first
    /// entry after it that is not in `exclude`. When the whole cycle is excluded, falls back to
    /// any target not in `exclude` (healthy first), so a retry can still reach a target the
    /// prober has not yet found alive; `None` when every target is excluded.
    ///
    /// `build` turns the health of every target into the cycle; it runs only when the group's
    /// health generation has changed since the last call.
    pub(crate) fn pick(
        &mut self,
        group: &TargetGroup,
        exclude: &[usize],
        build: impl FnOnce(&TargetGroup, &[bool]) -> Vec<usize>,
    ) -> Option<usize> {
        let generation = group.health_generation();
        if self.generation != Some(generation) || self.cycle.is_empty() {
            self.cycle = build(group, &group.health());
            self.generation = Some(generation);
        }
        let len = self.cycle.len();
        if len > 0 {
            let start = group.cursor.fetch_add(1, Ordering::Relaxed);
            if let Some(i) = (0..len)
                .map(|k| self.cycle[(start.wrapping_add(k)) % len])
                .find(|i| !exclude.contains(i))
            {
                return Some(i);
            }
        }
        let health = group.health();
        let untried = |&i: &usize| !exclude.contains(&i) && group.targets[i].in_service();
        (0..health.len())
            .filter(|&i| health[i])
            .find(untried)
            .or_else(|| (0..health.len()).find(untried))
    }
}

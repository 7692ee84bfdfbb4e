//! Outlier detection's ejections, decided on the prober thread: the workers only count each
//! target's data-connection failures in a row (an atomic add; see
//! [`crate::target::TargetState::note_failure`]); a sweep every [`SWEEP`] ejects the targets
//! that reached their group's `consecutive_failures`, within its `max_ejected_percent`, and
//! lets back those whose ejection is over. Ejecting rebuilds the group's lookup tables, which
//! is work for this thread, not a worker's.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::control::Control;
use crate::generation::Generation;
use crate::target::AdminState;

/// How often the failure counts are looked at while some group has outlier detection: the
/// longest a target that reached its threshold still takes new connections.
pub(super) const SWEEP: Duration = Duration::from_millis(50);

/// When each ejected target (group, target index) comes back.
#[derive(Debug, Default)]
pub(super) struct Ejections {
    until: HashMap<(usize, usize), Instant>,
}

impl Ejections {
    /// Ejects and lets back; returns how soon to sweep again (`None`: no group has outlier
    /// detection).
    pub(super) fn sweep(
        &mut self,
        generation: &Generation,
        control: &Control,
        now: Instant,
    ) -> Option<Duration> {
        let mut any = false;
        for (g, group) in generation.groups.iter().enumerate() {
            if group.removed {
                continue;
            }
            let Some(od) = group.config.outlier_detection else {
                // Outlier detection removed by a reload: everyone comes back.
                for t in 0..group.targets.len() {
                    if group.targets[t].is_ejected() {
                        control.set_ejected(g, t, false);
                        self.until.remove(&(g, t));
                    }
                }
                continue;
            };
            any = true;
            let live = |t: &&crate::target::Target| t.admin_state() != AdminState::Removed;
            let n = group.targets.iter().filter(live).count();
            let budget = if od.max_ejected_percent == 0 {
                0
            } else {
                (n * od.max_ejected_percent as usize / 100).max(1)
            };
            let mut ejected = group.targets.iter().filter(|t| t.is_ejected()).count();
            for (t, target) in group.targets.iter().enumerate() {
                if target.is_ejected() {
                    let due = self.until.get(&(g, t)).is_none_or(|u| *u <= now);
                    if due {
                        control.set_ejected(g, t, false);
                        self.until.remove(&(g, t));
                        ejected -= 1;
                        log::info!(
                            "target group {}: {} back after its ejection",
                            group.name(),
                            target.address
                        );
                    }
                    continue;
                }
                let failures = target.consecutive_failures.load(Ordering::Relaxed);
                if failures < od.consecutive_failures || target.admin_state() == AdminState::Removed
                {
                    continue;
                }
                if ejected >= budget {
                    continue; // max_ejected_percent: the rest stay, as a failing pool beats none
                }
                let k = target
                    .ejections_in_row
                    .load(Ordering::Relaxed)
                    .saturating_add(1);
                let length = od.ejection(k);
                if control.set_ejected(g, t, true) {
                    ejected += 1;
                    self.until.insert((g, t), now + length);
                    log::warn!(
                        "target group {}: {} ejected for {} after {failures} failed connections \
                         in a row (ejection {k} in a row)",
                        group.name(),
                        target.address,
                        humantime::format_duration(length)
                    );
                }
            }
        }
        any.then_some(SWEEP)
    }
}

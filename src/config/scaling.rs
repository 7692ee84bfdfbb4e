//! `scaling:` of a target group: thresholds on the group's load above which a command adds
//! targets and below which one is taken out ([`crate::scaling`] runs them).

use std::time::Duration;

use super::file::{FileScaling, FileScalingRule};

/// What a scaling rule watches, sampled every second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingMetric {
    /// Open connections (and UDP sessions) per target in service, on average.
    ActiveConnectionsPerTarget,
    /// Connections established to the group per second (over the last second).
    NewConnectionsPerSecond,
    /// The targets' mean response time in milliseconds (`least_response_time`'s moving
    /// averages, over the targets that have one).
    MeanResponseTimeMs,
}

impl ScalingMetric {
    /// Every metric, with its name in the file.
    pub const ALL: [(ScalingMetric, &'static str); 3] = [
        (
            ScalingMetric::ActiveConnectionsPerTarget,
            "active_connections_per_target",
        ),
        (
            ScalingMetric::NewConnectionsPerSecond,
            "new_connections_per_second",
        ),
        (ScalingMetric::MeanResponseTimeMs, "mean_response_time_ms"),
    ];

    /// Its name in the file and in `/metrics`.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("?", |(_, n)| n)
    }
}

/// One rule: `<metric> above|below <value> for <duration>`, and the command to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRule {
    /// What is watched.
    pub metric: ScalingMetric,
    /// True for `above`, false for `below`.
    pub above: bool,
    /// The threshold.
    pub value: f64,
    /// How long the condition must hold (every sample) before the command runs.
    pub sustained: Duration,
    /// The command, run with `sh -c`.
    pub exec: String,
}

impl ScalingRule {
    /// Whether `sample` is past the threshold.
    pub fn holds(&self, sample: f64) -> bool {
        if self.above {
            sample > self.value
        } else {
            sample < self.value
        }
    }
}

impl std::fmt::Display for ScalingRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} for {}",
            self.metric.name(),
            if self.above { "above" } else { "below" },
            self.value,
            humantime::format_duration(self.sustained)
        )
    }
}

/// The validated `scaling:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// Adds targets.
    pub scale_out: Option<ScalingRule>,
    /// Takes one target out.
    pub scale_in: Option<ScalingRule>,
    /// Least time between the end of one command and the start of the next.
    pub cooldown: Duration,
    /// Scale-in never leaves fewer targets than this.
    pub min_targets: usize,
    /// Scale-out never runs with this many targets or more.
    pub max_targets: usize,
    /// A command running longer is killed (and counts as failed).
    pub timeout: Duration,
}

/// `when: "<metric> above|below <value> for <duration>"`.
fn parse_when(text: &str) -> Result<(ScalingMetric, bool, f64, Duration), String> {
    let bad = || {
        format!(
            "`{text}`: write `<metric> above|below <value> for <duration>`, the metric one of {}",
            ScalingMetric::ALL
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let [metric, direction, value, "for", duration] = words[..] else {
        return Err(bad());
    };
    let metric = ScalingMetric::ALL
        .iter()
        .find(|(_, n)| *n == metric)
        .map(|(m, _)| *m)
        .ok_or_else(bad)?;
    let above = match direction {
        "above" => true,
        "below" => false,
        _ => return Err(bad()),
    };
    let value: f64 = value.parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let duration = super::parse_duration(duration, true)?;
    Ok((metric, above, value, duration))
}

fn rule(key: &str, raw: FileScalingRule) -> Result<ScalingRule, (String, String)> {
    let (metric, above, value, sustained) =
        parse_when(&raw.when).map_err(|m| (format!("{key}.when"), m))?;
    if raw.exec.trim().is_empty() {
        return Err((format!("{key}.exec"), "give the command to run".into()));
    }
    Ok(ScalingRule {
        metric,
        above,
        value,
        sustained,
        exec: raw.exec,
    })
}

/// Validates `scaling:` of the group at `key`.
///
/// # Errors
/// `(key, message)`.
pub(super) fn scaling(key: &str, raw: FileScaling) -> Result<Scaling, (String, String)> {
    let key = format!("{key}.scaling");
    let scale_out = raw
        .scale_out
        .map(|r| rule(&format!("{key}.scale_out"), r))
        .transpose()?;
    let scale_in = raw
        .scale_in
        .map(|r| rule(&format!("{key}.scale_in"), r))
        .transpose()?;
    if scale_out.is_none() && scale_in.is_none() {
        return Err((key, "give scale_out, scale_in, or both".into()));
    }
    let min_targets = raw.min_targets.map_or(1, |n| n.get() as usize);
    let max_targets = raw.max_targets.map_or(100, |n| n.get() as usize);
    if max_targets < min_targets {
        return Err((
            format!("{key}.max_targets"),
            "must not be below min_targets".into(),
        ));
    }
    Ok(Scaling {
        scale_out,
        scale_in,
        cooldown: raw.cooldown.map_or(Duration::from_secs(60), |d| d.0),
        min_targets,
        max_targets,
        timeout: raw.timeout.map_or(Duration::from_secs(60), |d| d.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_reads_metric_direction_value_and_duration() {
        let (m, above, v, d) =
            parse_when("active_connections_per_target above 50 for 30s").unwrap();
        assert_eq!(m, ScalingMetric::ActiveConnectionsPerTarget);
        assert!(above);
        assert_eq!(v, 50.0);
        assert_eq!(d, Duration::from_secs(30));
        assert!(parse_when("mean_response_time_ms below 2.5 for 5m").is_ok());
        assert!(parse_when("cpu above 50 for 30s").is_err());
        assert!(parse_when("new_connections_per_second over 5 for 1s").is_err());
        assert!(parse_when("new_connections_per_second above 5").is_err());
    }
}

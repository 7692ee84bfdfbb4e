//! Live progress of the CLI's long waits (`ballast deploy`, `ballast drain --wait`): on a
//! terminal, one status line redrawn in place on stderr (an `indicatif` spinner), cleared
//! when the wait ends; otherwise (piped, in a log) a plain line on the command's output each
//! time the status changes, at most one per [`PLAIN_EVERY`], so a log shows the progress
//! without a line per poll.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Fewest seconds between two plain progress lines.
pub(crate) const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// One wait's progress: `prefix` (e.g. `[2/3] 10.0.0.7:5432`) and a status that changes.
#[derive(Debug)]
pub(crate) struct Progress {
    prefix: String,
    bar: Option<ProgressBar>,
    started: Instant,
    /// The last plain line's status and when it was written.
    last: Option<(String, Instant)>,
}

impl Progress {
    /// Starts showing progress for `prefix`: a spinner when stderr is a terminal.
    pub(crate) fn start(prefix: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            let style = ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(prefix.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            prefix: prefix.to_string(),
            bar,
            started: Instant::now(),
            last: None,
        }
    }

    /// The status is now `status` (e.g. `draining: 3 connections open`): the spinner's line
    /// is redrawn; piped, a line goes to `out` if the status differs from the last line
    /// written and [`PLAIN_EVERY`] has passed since.
    pub(crate) fn update(&mut self, status: &str, out: &mut dyn Write) {
        if let Some(bar) = &self.bar {
            bar.set_message(status.to_string());
            return;
        }
        let now = Instant::now();
        let due = match &self.last {
            None => true,
            Some((said, at)) => said != status && now.duration_since(*at) >= PLAIN_EVERY,
        };
        if due {
            let elapsed = now.duration_since(self.started).as_secs_f64();
            let _ = writeln!(out, "{}: {status} ({elapsed:.0}s)", self.prefix);
            let _ = out.flush();
            self.last = Some((status.to_string(), now));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `n connection(s) open`.
pub(crate) fn connections_open(n: u64) -> String {
    format!("{} open", count(n, "connection"))
}

/// `1 target`, `2 targets`: `n` and the noun, plural unless `n` is 1 (nouns with a plain `s`).
pub(crate) fn count(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piped_progress_writes_a_line_per_change_at_most_once_a_second() {
        // Under `cargo test` stderr is no terminal: the plain lines.
        let mut p = Progress::start("[1/2] 10.0.0.1:80");
        let mut out = Vec::new();
        p.update("draining: 3 connections open", &mut out);
        p.update("draining: 3 connections open", &mut out);
        p.update("draining: 2 connections open", &mut out); // too soon
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            "[1/2] 10.0.0.1:80: draining: 3 connections open (0s)\n"
        );
        p.last = p.last.take().map(|(s, at)| (s, at - PLAIN_EVERY));
        p.update("draining: 2 connections open", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.ends_with("draining: 2 connections open (0s)\n"),
            "{text}"
        );
        assert_eq!(connections_open(1), "1 connection open");
    }
}

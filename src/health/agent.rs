//! Agent checks (`agent_check:`): HAProxy's agent-check protocol, so agents written for
//! HAProxy work unchanged. The prober connects to a TCP port on each target's host, sends
//! `send` if set, and reads one ASCII line (to a newline or the end of the connection). Its
//! words, separated by spaces, tabs or commas, say:
//!
//! - `up` / `down` (also `fail`, `failed`, `stopped`): the target counts as unhealthy while
//!   its agent says down, whatever its health check says; `up` lifts that (the health check
//!   still has to pass). Text after `#` is the reason.
//! - `ready` / `drain` / `maint`: takes new connections, or not (existing ones go on). Beside
//!   the operator's admin state: an agent's `ready` never undoes an operator's drain.
//! - `75%`: the weight, as a percentage of the configured one (`0%` drains).
//! - `maxconn:N`: recognised and ignored (targets' `max_connections` is the file's).
//!
//! An agent that cannot be reached or does not answer in time changes nothing (its last word
//! stands), as in HAProxy: reachability is the health check's business. A line with a word
//! it does not know is ignored whole and logged once, until a good line comes. A NUL ends the
//! line.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::event::Event;
use mio::net::TcpStream;

use crate::target::AgentMode;

/// The longest line read from an agent, in bytes.
pub(crate) const MAX_LINE: usize = 512;

/// What one agent line asks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AgentReply {
    /// `up` (false) or `down` (true), when said.
    pub down: Option<bool>,
    /// `ready`, `drain` or `maint`, when said.
    pub mode: Option<AgentMode>,
    /// A weight percentage, when given.
    pub percent: Option<u32>,
}

/// The highest weight percentage taken (a higher one is capped).
const MAX_PERCENT: u32 = 1000;

/// Reads one agent line (without its newline).
///
/// # Errors
/// The first word it does not know (the line is then ignored whole).
pub(crate) fn parse(line: &str) -> Result<AgentReply, String> {
    // A NUL ends the line, as for HAProxy (which reads the answer as a C string).
    let line = line.split('\0').next().unwrap_or_default();
    let words = line.split('#').next().unwrap_or_default();
    let mut reply = AgentReply::default();
    for word in words.split([' ', '\t', ',']).filter(|w| !w.is_empty()) {
        let lower = word.trim_end_matches('\r').to_ascii_lowercase();
        match lower.as_str() {
            "" => {}
            "up" => reply.down = Some(false),
            "down" | "fail" | "failed" | "stopped" => reply.down = Some(true),
            "ready" => reply.mode = Some(AgentMode::Ready),
            "drain" => reply.mode = Some(AgentMode::Drain),
            "maint" => reply.mode = Some(AgentMode::Maint),
            w if w.starts_with("maxconn:") => {}
            // A percentage of any length of digits is capped, not refused: `4294967296%`
            // means "as much as you allow", as it would to HAProxy.
            w => match w
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            {
                Some(digits) => {
                    let p = digits.parse::<u32>().unwrap_or(u32::MAX);
                    reply.percent = Some(p.min(MAX_PERCENT));
                }
                _ => return Err(format!("unknown word `{}`", word.escape_debug())),
            },
        }
    }
    Ok(reply)
}

/// One question to an agent in flight: connect, send, read a line.
#[derive(Debug)]
pub(crate) struct AgentProbe {
    stream: TcpStream,
    send: Vec<u8>,
    sent: usize,
    connected: bool,
    line: Vec<u8>,
}

impl AgentProbe {
    /// Starts a non-blocking connect to the agent at `addr`; `send` goes once connected.
    ///
    /// # Errors
    /// When the socket cannot be made or the connect fails at once.
    pub(crate) fn start(addr: SocketAddr, send: &[u8]) -> io::Result<AgentProbe> {
        Ok(AgentProbe {
            stream: TcpStream::connect(addr)?,
            send: send.to_vec(),
            sent: 0,
            connected: false,
            line: Vec::new(),
        })
    }

    /// The socket, to register with the prober's poll.
    pub(crate) fn source(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Advances on a readiness event: `Some(Ok(line))` once a line is whole (at a newline,
    /// the end of the connection, or [`MAX_LINE`] bytes), `Some(Err(why))` when the agent
    /// cannot be reached, `None` while in flight.
    pub(crate) fn handle_event(&mut self, event: &Event) -> Option<Result<String, String>> {
        if !self.connected {
            if event.is_error() || event.is_write_closed() && !event.is_writable() {
                return Some(Err(match self.stream.take_error() {
                    Ok(Some(e)) | Err(e) => crate::net::describe(&e),
                    Ok(None) => "connect failed".into(),
                }));
            }
            if !event.is_writable() {
                return None;
            }
            if let Ok(Some(e)) | Err(e) = self.stream.take_error() {
                return Some(Err(crate::net::describe(&e)));
            }
            self.connected = true;
        }
        while self.sent < self.send.len() {
            match self.stream.write(&self.send[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => return Some(Err(crate::net::describe(&e))),
            }
        }
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(Ok(self.take_line())),
                Ok(n) => {
                    self.line.extend_from_slice(&buf[..n]);
                    if self.line.contains(&b'\n') || self.line.len() >= MAX_LINE {
                        return Some(Ok(self.take_line()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => return Some(Err(crate::net::describe(&e))),
            }
        }
    }

    /// The line read so far, up to its newline, as text.
    fn take_line(&mut self) -> String {
        let end = self
            .line
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.line.len())
            .min(MAX_LINE);
        String::from_utf8_lossy(&self.line[..end]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_agent_words_are_read() {
        let r = parse("drain\0up").unwrap();
        assert_eq!(
            (r.down, r.mode),
            (None, Some(AgentMode::Drain)),
            "NUL ends it"
        );
        let r = parse("up 75%").unwrap();
        assert_eq!((r.down, r.percent, r.mode), (Some(false), Some(75), None));
        let r = parse("drain").unwrap();
        assert_eq!(r.mode, Some(AgentMode::Drain));
        let r = parse("down # replica lag 42s").unwrap();
        assert_eq!(r.down, Some(true));
        let r = parse("ready,UP,\t100%\r").unwrap();
        assert_eq!(
            (r.down, r.mode, r.percent),
            (Some(false), Some(AgentMode::Ready), Some(100))
        );
        assert_eq!(parse("maint").unwrap().mode, Some(AgentMode::Maint));
        assert_eq!(parse("stopped").unwrap().down, Some(true));
        assert_eq!(parse("maxconn:30 up").unwrap().down, Some(false));
        assert_eq!(parse("5000%").unwrap().percent, Some(MAX_PERCENT));
        assert_eq!(parse("4294967296%").unwrap().percent, Some(MAX_PERCENT));
        assert_eq!(parse("0%").unwrap().percent, Some(0));
        assert_eq!(parse("").unwrap(), AgentReply::default());
    }

    #[test]
    fn a_line_with_an_unknown_word_is_refused_whole() {
        assert!(parse("up sideways").unwrap_err().contains("sideways"));
        assert!(parse("-5%").is_err());
        assert!(parse("75 %").is_err());
        assert!(parse("%").is_err());
        assert!(parse("+5%").is_err());
        assert!(parse("\u{1b}[31m").unwrap_err().contains("\\u{1b}"));
    }
}

/// One target's agent: where it listens and the question in flight.
#[derive(Debug)]
pub(crate) struct AgentSlot {
    pub group: usize,
    pub target: usize,
    /// The agent's address: the target's host, the group's `agent_check.port`.
    pub address: SocketAddr,
    pub next_due: std::time::Instant,
    /// The question in flight and its deadline.
    pub in_flight: Option<(AgentProbe, std::time::Instant)>,
    /// A malformed line was logged since the last good one (log it once).
    pub malformed_logged: bool,
}

impl super::ProberLoop {
    /// Starts the agent questions due at `now` and gives up on those past their deadline
    /// (the agent's last word stands).
    pub(super) fn ask_agents(&mut self, now: std::time::Instant) {
        use mio::{Interest, Token};
        for i in 0..self.agents.len() {
            let slot = &mut self.agents[i];
            if let Some((_, deadline)) = &slot.in_flight {
                if *deadline <= now {
                    let timeout = self.generation.groups[slot.group]
                        .config
                        .agent_check
                        .as_ref()
                        .map_or(std::time::Duration::ZERO, |c| c.timeout);
                    let why = format!("no line within {}", humantime::format_duration(timeout));
                    self.agent_answered(i, Err(why));
                }
                continue;
            }
            if slot.next_due > now {
                continue;
            }
            let Some(check) = self.generation.groups[slot.group]
                .config
                .agent_check
                .as_ref()
            else {
                continue;
            };
            slot.next_due += check.interval;
            if slot.next_due <= now {
                slot.next_due = now + check.interval;
            }
            let started = AgentProbe::start(slot.address, &check.send).and_then(|mut p| {
                self.poll.registry().register(
                    p.source(),
                    Token(super::AGENT_TOKEN_BASE + i),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(p)
            });
            match started {
                Ok(p) => slot.in_flight = Some((p, now + check.timeout)),
                Err(e) => self.agent_answered(i, Err(crate::net::describe(&e))),
            }
        }
    }

    /// Agent `i` answered `line` (or could not be asked, and why): its words are applied to
    /// its target, and recorded for the admin API.
    pub(super) fn agent_answered(&mut self, i: usize, answer: Result<String, String>) {
        let Some(slot) = self.agents.get_mut(i) else {
            return;
        };
        if let Some((mut probe, _)) = slot.in_flight.take() {
            let _ = self.poll.registry().deregister(probe.source());
        }
        let (gi, ti) = (slot.group, slot.target);
        let group = &self.generation.groups[gi];
        let target = &group.targets[ti];
        // The record keeps the line as text (up to a NUL, which ends it; JSON escapes the
        // rest); the log gets it made printable.
        let text = match &answer {
            Ok(line) => line.split('\0').next().unwrap_or_default(),
            Err(why) => why.as_str(),
        };
        let said = super::printable(text);
        if let Ok(mut record) = target.agent_record.lock() {
            *record = Some(crate::target::AgentRecord {
                said: text.to_string(),
                answered: answer.is_ok(),
                at_unix_ms: crate::target::record::unix_ms(),
            });
        }
        let line = match answer {
            Ok(line) => line,
            Err(why) => {
                log::debug!(
                    "target group {}: agent of {} not asked: {why}",
                    group.name(),
                    target.address
                );
                return;
            }
        };
        let reply = match parse(&line) {
            Ok(reply) => {
                slot.malformed_logged = false;
                reply
            }
            Err(why) => {
                if !std::mem::replace(&mut slot.malformed_logged, true) {
                    log::warn!(
                        "target group {}: agent of {} said `{said}`: {why}; line ignored (said \
                         once until it sends a good one)",
                        group.name(),
                        target.address
                    );
                }
                return;
            }
        };
        if let Some(mode) = reply.mode {
            if group.set_agent_mode(ti, mode) {
                log::info!(
                    "target group {}: agent of {} says {}",
                    group.name(),
                    target.address,
                    mode.as_str()
                );
            }
        }
        if let Some(down) = reply.down {
            if target.set_agent_down(down) {
                let checked = self.check_says_healthy(gi, ti);
                log::info!(
                    "target group {}: agent of {} says {} (`{said}`)",
                    group.name(),
                    target.address,
                    if down { "down" } else { "up" }
                );
                let all_down_before = super::all_down(group);
                self.control.set_healthy(gi, ti, checked && !down);
                super::fail_open_changed(group, all_down_before);
            }
        }
        if let Some(percent) = reply.percent {
            if target.set_agent_percent(percent) {
                log::info!(
                    "target group {}: agent of {} sets its weight to {percent}%",
                    group.name(),
                    target.address
                );
                if let Err(e) = self.control.refresh_weights() {
                    log::warn!("agent weight: the weights cannot be rebuilt: {e}");
                }
            }
        }
    }
}

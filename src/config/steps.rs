//! Send/expect health checks over TCP (`health_check.steps`, as HAProxy's `tcp-check send` /
//! `tcp-check expect`), and the ready-made ones built from them (`redis: {role: master}`).

use super::file::{FileRedisCheck, FileStep, Matcher, RedisRole};

/// Most bytes an `expect` step reads while looking for its pattern; past it the check fails.
pub const MAX_EXPECT_BYTES: usize = 16 * 1024;

/// One step of a send/expect check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckStep {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Read until the bytes received since the last `expect` contain the first pattern (at
    /// most [`MAX_EXPECT_BYTES`]); the bytes up to the end of the match are then consumed.
    /// The check fails at once if the second (`unless`) appears first — so a wrong answer is
    /// a failure when it arrives, not at the check's timeout.
    Expect(Expect, Option<Expect>),
}

/// What an `expect` step looks for.
#[derive(Debug, Clone)]
pub enum Expect {
    /// These bytes, anywhere in what was received.
    Bytes(Vec<u8>),
    /// A match of this regular expression (the `regex` crate's syntax, on bytes).
    Regex(regex::bytes::Regex),
}

impl PartialEq for Expect {
    fn eq(&self, other: &Expect) -> bool {
        match (self, other) {
            (Expect::Bytes(a), Expect::Bytes(b)) => a == b,
            (Expect::Regex(a), Expect::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for Expect {}

impl Expect {
    /// Where the pattern ends in `received`, once it is there.
    pub fn find_end(&self, received: &[u8]) -> Option<usize> {
        match self {
            Expect::Bytes(b) if b.is_empty() => Some(0),
            Expect::Bytes(b) => received
                .windows(b.len())
                .position(|w| w == &b[..])
                .map(|i| i + b.len()),
            Expect::Regex(r) => r.find(received).map(|m| m.end()),
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Bytes(b) => write!(f, "`{}`", String::from_utf8_lossy(b).escape_debug()),
            Expect::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

/// Validates `steps` (under `key`): each step is one `send` or one `expect`, at least one step,
/// regular expressions that compile.
///
/// # Errors
/// `(key of the step, message)`.
pub fn steps(key: &str, raw: Vec<FileStep>) -> Result<Vec<CheckStep>, (String, String)> {
    if raw.is_empty() {
        return Err((
            key.to_string(),
            "list at least one step: {send: …} or {expect: …}".into(),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, s)| {
            let skey = format!("{key}[{i}]");
            match (s.send, s.expect, s.unless) {
                (Some(send), None, None) if send.0.is_empty() => {
                    Err((format!("{skey}.send"), "must not be empty".into()))
                }
                (Some(send), None, None) => Ok(CheckStep::Send(send.0)),
                (None, Some(expect), unless) => Ok(CheckStep::Expect(
                    pattern(&format!("{skey}.expect"), expect)?,
                    unless
                        .map(|u| pattern(&format!("{skey}.unless"), u))
                        .transpose()?,
                )),
                _ => Err((
                    skey,
                    "a step is one of {send: …} or {expect: …, unless: …}".into(),
                )),
            }
        })
        .collect()
}

/// A pattern as written, compiled.
fn pattern(key: &str, raw: Matcher) -> Result<Expect, (String, String)> {
    match raw {
        Matcher::Bytes(b) => Ok(Expect::Bytes(b)),
        Matcher::Regex(r) => regex::bytes::Regex::new(&r)
            .map(Expect::Regex)
            .map_err(|e| {
                // The crate's message spans lines (the pattern, a caret): its last line says what
                // is wrong.
                let text = e.to_string();
                let why = text.lines().last().unwrap_or("").trim().to_string();
                (key.to_string(), format!("bad regex `{r}`: {why}"))
            }),
    }
}

/// The steps of `redis: {role: …}`: `PING` answered `+PONG`, `INFO replication` showing the
/// role, then `QUIT` answered `+OK` (so the server logs no dropped client).
pub fn redis(check: &FileRedisCheck) -> Vec<CheckStep> {
    // The other role fails the check as soon as the INFO reply shows it.
    let (role, other): (&[u8], &[u8]) = match check.role {
        RedisRole::Master => (b"role:master", b"role:slave"),
        RedisRole::Replica => (b"role:slave", b"role:master"),
    };
    let expect = |b: &[u8]| CheckStep::Expect(Expect::Bytes(b.to_vec()), None);
    let mut steps = Vec::new();
    if let Some(password) = &check.password {
        // AUTH in RESP, so a password with spaces or quotes goes as it is.
        let mut auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n", password.len()).into_bytes();
        auth.extend_from_slice(password.as_bytes());
        auth.extend_from_slice(b"\r\n");
        steps.push(CheckStep::Send(auth));
        steps.push(expect(b"+OK"));
    }
    steps.extend([
        CheckStep::Send(b"PING\r\n".to_vec()),
        expect(b"+PONG"),
        CheckStep::Send(b"INFO replication\r\n".to_vec()),
        CheckStep::Expect(
            Expect::Bytes(role.to_vec()),
            Some(Expect::Bytes(other.to_vec())),
        ),
        CheckStep::Send(b"QUIT\r\n".to_vec()),
        expect(b"+OK"),
    ]);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_find_their_end() {
        let b = Expect::Bytes(b"role:master".to_vec());
        assert_eq!(b.find_end(b"# Replication\r\nrole:master\r\n"), Some(26));
        assert_eq!(b.find_end(b"role:slave\r\n"), None);
        let r = Expect::Regex(regex::bytes::Regex::new(r"connected_slaves:[1-9]").unwrap());
        assert_eq!(r.find_end(b"x\r\nconnected_slaves:2\r\n"), Some(21));
        assert_eq!(r.find_end(b"connected_slaves:0"), None);
    }
}

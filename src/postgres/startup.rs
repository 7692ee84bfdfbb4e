//! The client's first packet (PostgreSQL docs §55.2.1 "Start-up", §55.7 "Message Formats"):
//! `Int32 length` (counting itself), `Int32 code`, then for a StartupMessage `name\0value\0`
//! pairs ending in `\0`. The code tells the kind: 80877103 SSLRequest, 80877104 GSSENCRequest,
//! 80877102 CancelRequest (process ID, then the secret key: 4 bytes in protocol 3.0, up to
//! 256 in 3.2), else a protocol version, major in the high 16 bits (3 is the only one
//! PostgreSQL still speaks).

use super::cancel::CancelKey;

/// The longest first packet read (PostgreSQL's own limit, `MAX_STARTUP_PACKET_LENGTH`).
pub(crate) const MAX_STARTUP: usize = 10_000;

/// SSLRequest's code.
const SSL_REQUEST: u32 = 80_877_103;
/// GSSENCRequest's code.
const GSSENC_REQUEST: u32 = 80_877_104;
/// CancelRequest's code.
const CANCEL_REQUEST: u32 = 80_877_102;
/// The longest secret key of protocol 3.2.
const MAX_KEY: usize = 256;

/// What the client's first packet is, read from the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Initial {
    /// Not whole yet.
    Incomplete,
    /// SSLRequest (8 bytes): answer `S` and do TLS, or `N`.
    SslRequest,
    /// GSSENCRequest (8 bytes): answer `N` (Ballast does not do GSSAPI encryption).
    GssEncRequest,
    /// CancelRequest: the key of the backend to cancel; its length is the packet's.
    Cancel(CancelKey, usize),
    /// StartupMessage.
    Startup(Startup),
    /// Not a packet PostgreSQL would take: why, for the client's error message.
    Invalid(String),
}

/// A StartupMessage: its length (the bytes to replay to the server) and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Startup {
    /// The packet's length in bytes.
    pub len: usize,
    /// `(major, minor)`: 3.0, or 3.2 from PostgreSQL 18's clients.
    pub version: (u16, u16),
    /// The parameters in order (`user`, `database`, `application_name`, `options`, …), as
    /// text (bytes that are not UTF-8 replaced).
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// The value of parameter `name`.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The user name (required by the server; empty when missing).
    pub(crate) fn user(&self) -> &str {
        self.param("user").unwrap_or_default()
    }

    /// The database: as given, else the user name (the server's rule).
    pub(crate) fn database(&self) -> &str {
        match self.param("database") {
            Some(d) if !d.is_empty() => d,
            _ => self.user(),
        }
    }

    /// `application_name`, empty when not given.
    pub(crate) fn application_name(&self) -> &str {
        self.param("application_name").unwrap_or_default()
    }
}

/// Reads the client's first packet from the start of `buf` (which may hold more after it).
pub(crate) fn parse_initial(buf: &[u8]) -> Initial {
    let Some(len) = be32(buf, 0) else {
        return Initial::Incomplete;
    };
    let len = len as usize;
    if len < 8 {
        return Initial::Invalid(format!("invalid length of startup packet: {len} bytes"));
    }
    if len > MAX_STARTUP {
        return Initial::Invalid(format!(
            "startup packet too long: {len} bytes (at most {MAX_STARTUP})"
        ));
    }
    // The code is known before the whole packet: a client that waits for an answer to its
    // SSLRequest never sends more, and an over-long "SSLRequest" must not be waited for.
    let Some(code) = be32(buf, 4) else {
        return Initial::Incomplete;
    };
    match code {
        SSL_REQUEST | GSSENC_REQUEST if len != 8 => {
            return Initial::Invalid(format!("invalid length of an encryption request: {len}"))
        }
        SSL_REQUEST => return Initial::SslRequest,
        GSSENC_REQUEST => return Initial::GssEncRequest,
        CANCEL_REQUEST if !(16..=12 + MAX_KEY).contains(&len) => {
            return Initial::Invalid(format!("invalid length of a cancel request: {len}"))
        }
        _ => {}
    }
    let Some(packet) = buf.get(..len) else {
        return Initial::Incomplete;
    };
    if code == CANCEL_REQUEST {
        let (Some(pid), Some(key)) = (be32(packet, 8), packet.get(12..)) else {
            return Initial::Invalid("truncated cancel request".into());
        };
        return Initial::Cancel(CancelKey::new(pid, key), len);
    }
    let version = ((code >> 16) as u16, (code & 0xffff) as u16);
    if version.0 != 3 {
        return Initial::Invalid(format!(
            "unsupported frontend protocol {}.{}: this server speaks 3",
            version.0, version.1
        ));
    }
    match params(packet.get(8..).unwrap_or_default()) {
        Ok(params) => Initial::Startup(Startup {
            len,
            version,
            params,
        }),
        Err(why) => Initial::Invalid(why.into()),
    }
}

/// The `name\0value\0…\0` list of a StartupMessage, which must end exactly at its end.
fn params(mut rest: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
    let mut out = Vec::new();
    loop {
        let (name, after) = cstring(rest)
            .ok_or("invalid startup packet layout: expected terminator as last byte")?;
        if name.is_empty() {
            return if after.is_empty() {
                Ok(out)
            } else {
                Err("invalid startup packet layout: bytes after the terminator")
            };
        }
        let (value, after) =
            cstring(after).ok_or("invalid startup packet layout: a parameter without a value")?;
        // The server takes the last of a repeated name, a router might take the first: a
        // repeat could route by one value and log in with another.
        if out
            .iter()
            .any(|(k, _): &(String, String)| k.as_bytes() == name)
        {
            return Err("a startup parameter is given twice");
        }
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        rest = after;
    }
}

/// The NUL-terminated string at the start of `bytes`, and what follows it.
fn cstring(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((bytes.get(..end)?, bytes.get(end + 1..)?))
}

/// The big-endian `u32` at `at`, if `buf` holds it.
fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes([
        *b.first()?,
        *b.get(1)?,
        *b.get(2)?,
        *b.get(3)?,
    ]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A StartupMessage of protocol 3.0 with `params`.
    pub(crate) fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = (body.len() as u32 + 4).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[test]
    fn a_startup_message_gives_its_parameters_whole_or_not_at_all() {
        let p = startup_packet(&[
            ("user", "ann"),
            ("database", "billing"),
            ("application_name", "psql"),
        ]);
        for cut in 0..p.len() {
            assert_eq!(
                parse_initial(&p[..cut]),
                Initial::Incomplete,
                "cut at {cut}"
            );
        }
        let mut with_more = p.clone();
        with_more.extend_from_slice(b"next");
        let Initial::Startup(s) = parse_initial(&with_more) else {
            panic!("not a startup");
        };
        assert_eq!((s.len, s.version), (p.len(), (3, 0)));
        assert_eq!(
            (s.user(), s.database(), s.application_name()),
            ("ann", "billing", "psql")
        );
        let Initial::Startup(s) = parse_initial(&startup_packet(&[("user", "bob")])) else {
            panic!("not a startup");
        };
        assert_eq!(
            s.database(),
            "bob",
            "the database defaults to the user name"
        );
    }

    #[test]
    fn requests_are_told_apart_by_their_code() {
        assert_eq!(
            parse_initial(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]),
            Initial::SslRequest
        );
        assert_eq!(
            parse_initial(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]),
            Initial::GssEncRequest
        );
        let cancel = [
            0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x30, 0x39, 1, 2, 3, 4,
        ];
        assert_eq!(
            parse_initial(&cancel),
            Initial::Cancel(CancelKey::new(12345, &[1, 2, 3, 4]), 16)
        );
        assert_eq!(parse_initial(&cancel[..15]), Initial::Incomplete);
    }

    #[test]
    fn malformed_packets_are_refused_with_a_reason() {
        let invalid = |b: &[u8]| matches!(parse_initial(b), Initial::Invalid(_));
        assert!(invalid(&[0, 0, 0, 4, 0, 3, 0, 0]), "length under 8");
        assert!(invalid(&[0, 0, 0x40, 0, 0, 3, 0, 0]), "over MAX_STARTUP");
        assert!(
            invalid(&[0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f]),
            "a long SSLRequest"
        );
        assert!(
            invalid(&[0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1]),
            "a short cancel"
        );
        assert!(
            invalid(
                &startup_packet(&[("user", "a")])
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| if i == 5 { 2 } else { b })
                    .collect::<Vec<_>>()
            ),
            "protocol 2"
        );
        let mut unterminated = startup_packet(&[("user", "a")]);
        let n = unterminated.len();
        unterminated[n - 1] = b'x';
        assert!(invalid(&unterminated));
        assert!(
            invalid(&startup_packet(&[
                ("user", "a"),
                ("database", "x"),
                ("database", "y")
            ])),
            "a repeated name"
        );
        let mut no_value = 196_608u32.to_be_bytes().to_vec();
        no_value.extend_from_slice(b"user\0");
        let mut packet = (no_value.len() as u32 + 4).to_be_bytes().to_vec();
        packet.extend(no_value);
        assert!(invalid(&packet));
    }

    #[test]
    fn random_bytes_never_panic_and_never_outrun_the_limit() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..100_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && buf.len() >= 8 {
                let n = buf.len() as u32;
                buf[..4].copy_from_slice(&n.to_be_bytes());
                buf[4..6].copy_from_slice(&[0, 3]);
            }
            if let Initial::Startup(s) = parse_initial(&buf) {
                assert!(s.len <= buf.len());
            }
        }
    }
}

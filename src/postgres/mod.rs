//! The few pieces of PostgreSQL's wire protocol (version 3, PostgreSQL docs §55 "Frontend/
//! Backend Protocol") a balancer in front of PostgreSQL needs: the client's first packet
//! ([`startup`]: an SSLRequest, a GSSENCRequest, a CancelRequest or the StartupMessage with
//! its `database`, `user` and `application_name`), the `ErrorResponse` a refused client
//! reads ([`error_response`]), the server's `BackendKeyData` ([`backend::KeyWatch`]), and the
//! table that sends a cancel to the server that issued its key ([`cancel::CancelKeys`]).
//!
//! Everything here parses bytes from the network: bounded, and never panicking.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::indexing_slicing
    )
)]

pub(crate) mod backend;
pub(crate) mod cancel;
pub(crate) mod startup;

pub(crate) use backend::KeyWatch;
pub(crate) use cancel::{CancelKey, CancelKeys};
pub(crate) use startup::{parse_initial, Initial, Startup, MAX_STARTUP};

/// SQLSTATE 08P01, `protocol_violation`: a malformed, oversized or late startup packet.
pub(crate) const PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE 3D000, `invalid_catalog_name`: no route for the database asked for.
pub(crate) const INVALID_CATALOG_NAME: &str = "3D000";

/// The longest text of a client's (a database or user name) echoed in an error message.
const MAX_ECHO: usize = 64;

/// An `ErrorResponse` message ('E') of severity FATAL with `sqlstate` and `message`, as the
/// server sends before closing: psql prints `FATAL:  message`. NUL bytes in `message` (which
/// would end the field) are dropped.
pub(crate) fn error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::with_capacity(32 + message.len());
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        fields.push(code);
        fields.extend(value.bytes().filter(|&b| b != 0));
        fields.push(0);
    }
    fields.push(0);
    let mut out = Vec::with_capacity(5 + fields.len());
    out.push(b'E');
    out.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

/// `text` from a client, fit for an error message or a log line: at most [`MAX_ECHO`]
/// characters, control characters escaped.
pub(crate) fn echo(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_ECHO)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_ECHO).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_response_is_what_the_server_sends() {
        let e = error_response("3D000", "no route for database \"x\"");
        assert_eq!(e[0], b'E');
        let len = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(len + 1, e.len());
        let body = &e[5..];
        assert_eq!(
            body,
            b"SFATAL\0VFATAL\0C3D000\0Mno route for database \"x\"\0\0".as_slice()
        );
        assert!(!error_response("08P01", "a\0b")
            .windows(3)
            .any(|w| w == b"a\0b"));
    }

    #[test]
    fn echoed_text_is_bounded_and_escaped() {
        assert_eq!(echo("billing"), "billing");
        assert_eq!(echo("a\nb\"c"), "a\\nb\\\"c");
        let long = "x".repeat(100);
        assert_eq!(echo(&long).chars().count(), MAX_ECHO + 1);
    }
}

//! The server's side of the start-up (PostgreSQL docs §55.2.1): authentication requests
//! ('R'), ParameterStatus ('S'), NoticeResponse ('N'), NegotiateProtocolVersion ('v'), then
//! `BackendKeyData` ('K': process ID and secret key) and `ReadyForQuery` ('Z'), or an
//! `ErrorResponse` ('E'). Each message is a type byte, an `Int32` length counting itself, and
//! the body.

use super::cancel::CancelKey;

/// The most bytes watched: a start-up whose key has not come by then (a server sending a
/// huge notice, or something that is not PostgreSQL) is left alone.
const MAX_WATCHED: u64 = 64 * 1024;

/// Follows the bytes a PostgreSQL server sends at the start of a connection, message by
/// message, until its `BackendKeyData`, which it keeps ([`KeyWatch::found`]), or until the
/// start-up is over without one (`ReadyForQuery`, `ErrorResponse`, a malformed message, or
/// [`MAX_WATCHED`] bytes). Fed the bytes in any pieces ([`KeyWatch::feed`]); bounded memory.
#[derive(Debug, Default)]
pub(crate) struct KeyWatch {
    /// The current message's header (type and length) as far as read.
    header: [u8; 5],
    /// Bytes of `header` read.
    header_read: usize,
    /// Bytes of the current message's body still to come.
    body_left: usize,
    /// A `BackendKeyData` body being read (its type seen).
    key_body: Option<Vec<u8>>,
    /// Bytes fed so far.
    watched: u64,
    /// Over: nothing more is looked at.
    done: bool,
    /// The key the server sent.
    found: Option<CancelKey>,
    /// The key as recorded in the listener's table, and for whom: removed when the
    /// connection ends.
    pub(crate) registered: Option<(CancelKey, super::cancel::Owner)>,
}

impl KeyWatch {
    /// Whether the watch is over (a key found, or none will be).
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// The key, once the server sent it (taken once).
    pub(crate) fn take_found(&mut self) -> Option<CancelKey> {
        self.found.take()
    }

    /// Follows `bytes`, the next ones the server sent.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !self.done && !bytes.is_empty() {
            let in_body = self.body_left > 0;
            let want = if in_body {
                self.body_left
            } else {
                self.header.len() - self.header_read
            };
            let (now, rest) = bytes.split_at(want.min(bytes.len()));
            bytes = rest;
            self.watched += now.len() as u64;
            if self.watched > MAX_WATCHED {
                self.done = true;
                return;
            }
            if in_body {
                if let Some(body) = &mut self.key_body {
                    body.extend_from_slice(now);
                }
                self.body_left -= now.len();
                if self.body_left == 0 {
                    self.message_over();
                }
            } else {
                let end = self.header_read + now.len();
                if let Some(slot) = self.header.get_mut(self.header_read..end) {
                    slot.copy_from_slice(now);
                }
                self.header_read = end;
                if self.header_read == self.header.len() {
                    self.message_begins();
                }
            }
        }
    }

    /// A header is whole: what the message is decides what to keep.
    fn message_begins(&mut self) {
        let [kind, a, b, c, d] = self.header;
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        self.header_read = 0;
        let Some(body) = len.checked_sub(4) else {
            self.done = true; // not PostgreSQL
            return;
        };
        match kind {
            // Process ID and a key of 4 bytes (protocol 3.0) to 256 (3.2).
            b'K' if (8..=260).contains(&body) => self.key_body = Some(Vec::with_capacity(body)),
            b'K' | b'Z' | b'E' => {
                self.done = true;
                return;
            }
            _ => {}
        }
        self.body_left = body;
        if body == 0 {
            self.message_over();
        }
    }

    /// A message's body is over.
    fn message_over(&mut self) {
        if let Some(body) = self.key_body.take() {
            let pid = body.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok());
            if let (Some(pid), Some(key)) = (pid, body.get(4..)) {
                self.found = Some(CancelKey::new(u32::from_be_bytes(pid), key));
            }
            self.done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What a server sends after a password: AuthenticationOk, ParameterStatus, the key,
    /// ReadyForQuery.
    fn startup_answer(pid: u32, key: &[u8]) -> Vec<u8> {
        let mut out = message(b'R', &0u32.to_be_bytes());
        out.extend(message(b'S', b"server_version\x0016.1\x00"));
        let mut k = pid.to_be_bytes().to_vec();
        k.extend_from_slice(key);
        out.extend(message(b'K', &k));
        out.extend(message(b'Z', b"I"));
        out
    }

    #[test]
    fn the_key_is_found_in_any_pieces() {
        let answer = startup_answer(4242, &[9, 8, 7, 6]);
        for piece in 1..answer.len() {
            let mut w = KeyWatch::default();
            for chunk in answer.chunks(piece) {
                w.feed(chunk);
            }
            assert!(w.done(), "piece {piece}");
            assert_eq!(
                w.take_found(),
                Some(CancelKey::new(4242, &[9, 8, 7, 6])),
                "piece {piece}"
            );
        }
        let mut long = KeyWatch::default();
        long.feed(&startup_answer(7, &[1; 32]));
        assert_eq!(
            long.take_found(),
            Some(CancelKey::new(7, &[1; 32])),
            "protocol 3.2's longer key"
        );
    }

    #[test]
    fn a_start_up_without_a_key_ends_the_watch() {
        for end in [
            message(b'E', b"SFATAL\0\0"),
            message(b'Z', b"I"),
            vec![b'R', 0, 0, 0, 1],
        ] {
            let mut w = KeyWatch::default();
            w.feed(&message(b'R', &[0, 0, 0, 3]));
            w.feed(&end);
            assert!(w.done());
            assert_eq!(w.take_found(), None);
        }
        let mut big = KeyWatch::default();
        big.feed(&message(b'N', &vec![b'x'; 100_000]));
        assert!(big.done(), "bounded");
    }
}

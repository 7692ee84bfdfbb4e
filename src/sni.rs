//! SNI routing without termination: the server name a TLS client asks for, read from its
//! ClientHello (parsed by rustls' `Acceptor`, fed a copy of the bytes, so nothing is
//! consumed: the ClientHello and everything after it go to the target unchanged), and the
//! route it picks (`routes:` on a TCP listener: exact names, `*.` wildcards of one label).

use rustls::server::Acceptor;

/// Most ClientHello bytes read before giving up on finding a server name (one full TLS
/// record and its header; hellos with post-quantum key shares stay well under it).
pub(crate) const MAX_HELLO: usize = 16 * 1024 + 5;

/// What a client's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A TLS ClientHello may still be arriving: read more.
    Incomplete,
    /// A whole ClientHello, with the server name it asks for (`None`: no SNI extension).
    Complete(Option<String>),
    /// Not TLS (or a malformed or oversize ClientHello).
    NotTls,
}

/// Reads the ClientHello at the start of `bytes`.
pub(crate) fn peek(bytes: &[u8]) -> Hello {
    let mut acceptor = Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Hello::NotTls, // more than rustls buffers: not a sane hello
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Hello::Complete(name);
            }
            Ok(None) => {}
            Err(_) => return Hello::NotTls,
        }
    }
    if bytes.len() < MAX_HELLO {
        Hello::Incomplete
    } else {
        Hello::NotTls
    }
}

/// Whether route name `pattern` (lowercase; `*.example.com` for one label under
/// example.com) matches `name` (lowercase).
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        None => pattern == name,
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(matches("db.example.com", "db.example.com"));
        assert!(!matches("db.example.com", "xdb.example.com"));
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", ".example.com"));
    }

    #[test]
    fn garbage_is_not_tls_and_a_prefix_is_incomplete() {
        assert_eq!(peek(b"GET / HTTP/1.1\r\n\r\n"), Hello::NotTls);
        assert_eq!(peek(&[0x16, 0x03, 0x01]), Hello::Incomplete);
        assert_eq!(peek(&[]), Hello::Incomplete);
    }
}

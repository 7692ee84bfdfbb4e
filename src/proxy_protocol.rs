//! The PROXY protocol (HAProxy, "The PROXY protocol, versions 1 & 2", 2020 revision): a
//! header before the first byte of a connection (or of each UDP datagram, version 2) that
//! tells the receiver the addresses of the original connection. Ballast writes it to targets
//! (`proxy_protocol: v1 | v2` on a target group) and reads it from a balancer in front
//! (`accept_proxy_protocol` on a listener). Encoding and parsing are the `ppp` crate's; this
//! module fixes what Ballast sends and how strictly it reads.

use std::net::{IpAddr, SocketAddr};

use ppp::v2;
use ppp::{HeaderResult, PartialResult};

/// Largest header read from a client, bytes: a v1 header is at most 107; a v2 header is 16
/// plus its length field, and TLVs seen in practice (AWS, GCP, Azure, HAProxy's SSL TLVs)
/// stay well under this. A longer header closes the client.
pub const MAX_HEADER: usize = 1024;

/// Which version a target group sends (`proxy_protocol:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// The text header, `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (TCP only).
    V1,
    /// The binary header (TCP and UDP).
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// The same family for both addresses: an IPv4 address beside an IPv6 one becomes
/// IPv4-mapped IPv6 (a header carries one family).
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if client.is_ipv4() == local.is_ipv4() {
        (client, local)
    } else {
        (v6(client), v6(local))
    }
}

/// The header announcing a connection from `client` to `local` (the address the client
/// used): `PROXY TCP4|TCP6 …\r\n` for v1; for v2 the PROXY command over STREAM (`udp`
/// false) or DGRAM (`udp` true), with no TLVs.
pub fn header(version: Version, client: SocketAddr, local: SocketAddr, udp: bool) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    match version {
        Version::V1 => ppp::v1::Addresses::from((client, local))
            .to_string()
            .into_bytes(),
        Version::V2 => {
            let protocol = if udp {
                v2::Protocol::Datagram
            } else {
                v2::Protocol::Stream
            };
            v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                protocol,
                (client, local),
            )
            .build()
            // Building into a Vec with no TLVs cannot fail; an empty header would be refused
            // by the target, never misread.
            .unwrap_or_default()
        }
    }
}

/// The header a health check sends: v2's LOCAL command ("established on purpose by the
/// proxy without being relayed", the spec's words for health checks), or v1's `PROXY
/// UNKNOWN`.
pub fn local_header(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => v2::Builder::new(
            v2::Version::Two as u8 | v2::Command::Local as u8,
            v2::AddressFamily::Unspecified as u8 | v2::Protocol::Unspecified as u8,
        )
        .build()
        .unwrap_or_default(),
    }
}

/// What a client's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole header yet (and nothing wrong so far): read more.
    Incomplete,
    /// A header of `len` bytes; the client's own addresses when it relays a connection
    /// (`None` for v1 `UNKNOWN`, v2 `LOCAL` and families other than IPv4/IPv6: the
    /// connection's own addresses stand).
    Header {
        /// Bytes the header takes; what follows is the client's data.
        len: usize,
        /// (client, the address the client used).
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    /// Not a PROXY header, or a malformed or oversize one.
    Invalid(String),
}

/// Reads a v1 or v2 header at the start of `input` (any bytes after it are the client's).
pub fn parse(input: &[u8]) -> Parsed {
    // v1 is a line: judge it only once its CRLF is in (ppp reads some cut-off lines, such as a
    // port cut short, as errors), or once it is too long to be one.
    const V1_MAX: usize = 107;
    let v1 = b"PROXY ";
    let prefix = input.len().min(v1.len());
    if input.get(..prefix) == v1.get(..prefix) {
        let line_end = input.windows(2).position(|w| w == b"\r\n");
        match line_end {
            None if input.len() < V1_MAX => return Parsed::Incomplete,
            None => return Parsed::Invalid(format!("no CRLF in the first {V1_MAX} bytes")),
            Some(_) => {}
        }
    }
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        return if input.len() >= MAX_HEADER {
            Parsed::Invalid(format!("no complete header in {MAX_HEADER} bytes"))
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let addresses = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Unknown => None,
            };
            Parsed::Header {
                len: h.header.len(),
                addresses,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            if h.len() > MAX_HEADER {
                return Parsed::Invalid(format!("a {}-byte header", h.len()));
            }
            let addresses = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                _ => None,
            };
            Parsed::Header {
                len: h.len(),
                addresses,
            }
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("bad v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("bad v2 header: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(c: &str, l: &str) -> (SocketAddr, SocketAddr) {
        (c.parse().unwrap(), l.parse().unwrap())
    }

    #[test]
    fn headers_round_trip_in_both_versions_and_families() {
        for (c, l) in [
            addrs("192.0.2.7:41000", "198.51.100.1:5432"),
            addrs("[2001:db8::7]:41000", "[2001:db8::1]:5432"),
        ] {
            for v in [Version::V1, Version::V2] {
                let mut bytes = header(v, c, l, false);
                let len = bytes.len();
                bytes.extend_from_slice(b"client data");
                assert_eq!(
                    parse(&bytes),
                    Parsed::Header {
                        len,
                        addresses: Some((c, l))
                    },
                    "{v}"
                );
                // Every prefix is incomplete, never invalid.
                for cut in 0..len {
                    assert_eq!(parse(&bytes[..cut]), Parsed::Incomplete, "{v} cut at {cut}");
                }
            }
        }
        assert_eq!(
            &header(
                Version::V1,
                addrs("192.0.2.7:1", "198.51.100.1:2").0,
                "198.51.100.1:2".parse().unwrap(),
                false
            ),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n"
        );
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let (c, l) = addrs("192.0.2.7:41000", "[2001:db8::1]:5432");
        let bytes = header(Version::V2, c, l, true);
        let Parsed::Header {
            addresses: Some((pc, pl)),
            ..
        } = parse(&bytes)
        else {
            panic!("{:?}", parse(&bytes));
        };
        assert_eq!(pc.to_string(), "[::ffff:192.0.2.7]:41000");
        assert_eq!(pl, l);
    }

    #[test]
    fn local_and_unknown_keep_the_connection_addresses() {
        for v in [Version::V1, Version::V2] {
            let bytes = local_header(v);
            assert_eq!(
                parse(&bytes),
                Parsed::Header {
                    len: bytes.len(),
                    addresses: None
                }
            );
        }
    }

    #[test]
    fn garbage_and_oversize_are_invalid() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 x 1 2\r\n"),
            Parsed::Invalid(_)
        ));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        // A v2 header announcing 2,000 bytes of TLVs.
        let mut v2 = header(
            Version::V2,
            "1.2.3.4:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap(),
            false,
        );
        v2[14..16].copy_from_slice(&2000u16.to_be_bytes());
        v2.resize(16 + 2000, 0);
        assert!(matches!(parse(&v2), Parsed::Invalid(_)), "{:?}", parse(&v2));
    }
}

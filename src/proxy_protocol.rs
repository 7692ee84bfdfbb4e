//! The PROXY protocol (HAProxy, "The PROXY protocol, versions 1 & 2", 2020 revision): a
//! header before the first byte of a connection (or of each UDP datagram, version 2) that
//! tells the receiver the addresses of the original connection. Ballast writes it to targets
//! (`proxy_protocol: v1 | v2` on a target group) and reads it from a balancer in front
//! (`accept_proxy_protocol` on a listener). Encoding is the `ppp` crate's; reading is this
//! module's own, to the letter of the spec (§2.1 for v1, §2.2 for v2), since what a reader
//! lets through decides whose address a client may claim.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ppp::v2;

/// Largest header read from a client, bytes: a v1 header is at most 107; a v2 header is 16
/// plus its length field, and TLVs seen in practice (AWS, GCP, Azure, HAProxy's SSL TLVs)
/// stay well under this. A longer header closes the client.
pub const MAX_HEADER: usize = 1024;

/// §2.1: the longest v1 line, CRLF included ("PROXY UNKNOWN" with two IPv6 addresses and
/// ports); without a CRLF in this many bytes the line is invalid.
const V1_MAX: usize = 107;
/// §2.1: "PROXY" and exactly one space open a v1 header.
const V1_START: &[u8] = b"PROXY ";
/// §2.2: the 12 bytes that open a v2 header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// §2.2: signature, version and command, family and protocol, length of the rest.
const V2_FIXED: usize = 16;

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
    /// (`None` for v1 `UNKNOWN`, v2 `LOCAL`, and v2 `PROXY` with an unspecified protocol or a
    /// family other than IPv4/IPv6: the connection's own addresses stand).
    Header {
        /// Bytes the header takes; what follows is the client's data.
        len: usize,
        /// (client, the address the client used).
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    /// Not a PROXY header, or a malformed or oversize one.
    Invalid(String),
}

/// What carries the header: its addresses are used only when the header's transport
/// protocol (§2.2, STREAM or DGRAM) is the one it arrived on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Stream,
    Datagram,
}

/// Reads the v1 (§2.1) or v2 (§2.2) header at the start of `input`, the first bytes of a TCP
/// connection (whatever follows the header is the client's).
///
/// `Incomplete` while `input` may still grow into a valid header; then `Header` or `Invalid`
/// as soon as that is known, whatever follows: for v1 at the CRLF, or at 107 bytes without
/// one (§2.1); for v2 once its 16 fixed bytes and the length they announce are in (§2.2).
/// Bytes that can no longer begin a valid header (`GET`, `PROXY X`, `PROXY TCP4 abc`, a v2
/// header over [`MAX_HEADER`]) are `Invalid` at once, as §2.1 recommends.
pub fn parse(input: &[u8]) -> Parsed {
    read(input, Transport::Stream)
}

/// Reads the v2 header (§2.2) at the start of a UDP datagram, as a target behind a
/// `proxy_protocol: v2` UDP group would. The datagram is all there is, so never
/// `Incomplete`; v1 has no datagram form (§2.1 names TCP only) and is `Invalid`.
pub fn parse_datagram(datagram: &[u8]) -> Parsed {
    match read(datagram, Transport::Datagram) {
        Parsed::Incomplete => Parsed::Invalid("a datagram too short for its header".into()),
        parsed => parsed,
    }
}

fn read(input: &[u8], transport: Transport) -> Parsed {
    if let Some(rest) = input.strip_prefix(V1_START) {
        if transport == Transport::Datagram {
            return Parsed::Invalid("a v1 header in a datagram".into());
        }
        return v1(rest);
    }
    if input.starts_with(V2_SIGNATURE) {
        return v2(input, transport);
    }
    // §2.2: anything else "is not covered by this specification and the connection must be
    // dropped"; only a start of either signature may still become one.
    if V1_START.starts_with(input) || V2_SIGNATURE.starts_with(input) {
        Parsed::Incomplete
    } else {
        Parsed::Invalid("not a PROXY protocol header".into())
    }
}

/// §2.1: the v1 line, `rest` being what follows `PROXY `.
fn v1(rest: &[u8]) -> Parsed {
    let room = V1_MAX - V1_START.len();
    let window = rest.get(..room).unwrap_or(rest);
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => match v1_fields(window.get(..end).unwrap_or_default(), false) {
            Ok(addresses) => Parsed::Header {
                len: V1_START.len() + end + 2,
                addresses,
            },
            Err(why) => Parsed::Invalid(format!("bad v1 header: {why}")),
        },
        None if rest.len() >= room => {
            Parsed::Invalid(format!("no CRLF in the first {V1_MAX} bytes"))
        }
        // §2.1 has the receiver wait for the CRLF before decoding, but a line that has already
        // gone wrong is refused now ("as soon as possible"). A CR at the end may be the CRLF's
        // first half.
        None => match v1_fields(window.strip_suffix(b"\r").unwrap_or(window), true) {
            Ok(_) => Parsed::Incomplete,
            Err(why) => Parsed::Invalid(format!("bad v1 header: {why}")),
        },
    }
}

/// The v1 fields of `line` (after `PROXY `, before the CRLF): the addresses, or `None` for
/// `UNKNOWN`. With `cut`, the line's end is still to come: the last field may be partial and
/// fields may be missing, and `Ok` only says that the line may still become valid.
fn v1_fields(line: &[u8], cut: bool) -> Result<Option<(SocketAddr, SocketAddr)>, String> {
    // §2.1: "The receiver must not tolerate a single CR or LF character to end the line"; one
    // before the CRLF would be such an end. This holds for UNKNOWN too, whose rest is ignored
    // but is still a line: a sender ending it with a bare LF must not have its client's data
    // taken for the header up to the client's own first CRLF.
    if line.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err("a lone CR or LF".into());
    }
    // Fields are separated by exactly one space (§2.1), so an empty field is a doubled space
    // or a space at an end.
    let mut fields = line.split(|&b| b == b' ');
    let protocol = fields.next().unwrap_or_default();
    let family = match protocol {
        // §2.1: "the receiver must ignore anything presented before the CRLF is found".
        b"UNKNOWN" => return Ok(None),
        b"TCP4" => Family::V4,
        b"TCP6" => Family::V6,
        p if cut && line.len() == p.len() && PROTOCOLS.iter().any(|n| n.starts_with(p)) => {
            return Ok(None)
        }
        p => return Err(format!("protocol {:?}", String::from_utf8_lossy(p))),
    };
    // Source and destination address, source and destination port.
    let mut four: [&[u8]; 4] = [b""; 4];
    let mut count = 0;
    for field in fields {
        let Some(slot) = four.get_mut(count) else {
            return Err("more than 6 fields".into());
        };
        *slot = field;
        count += 1;
    }
    if cut {
        for (i, (field, name)) in four.iter().zip(FIELDS).enumerate().take(count) {
            let partial = i + 1 == count;
            let fits = match (i, partial) {
                (0 | 1, false) => family.address(field).is_some(),
                (0 | 1, true) => family.address_start(field),
                (_, false) => port(field).is_some(),
                (_, true) => decimal_start(field, 5),
            };
            if !fits {
                return Err(format!("{name} {:?}", String::from_utf8_lossy(field)));
            }
        }
        return Ok(None);
    }
    if count != 4 {
        return Err(format!("{} fields, not 6", count + 2));
    }
    let [src, dst, sport, dport] = four;
    let [src_name, dst_name, sport_name, dport_name] = FIELDS;
    let bad = |name: &str, f: &[u8]| format!("{name} {:?}", String::from_utf8_lossy(f));
    let src = family.address(src).ok_or_else(|| bad(src_name, src))?;
    let dst = family.address(dst).ok_or_else(|| bad(dst_name, dst))?;
    let sport = port(sport).ok_or_else(|| bad(sport_name, sport))?;
    let dport = port(dport).ok_or_else(|| bad(dport_name, dport))?;
    Ok(Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
    )))
}

/// §2.1's protocol names.
const PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];

/// The v1 fields after the protocol, for messages.
const FIELDS: [&str; 4] = [
    "source address",
    "destination address",
    "source port",
    "destination port",
];

/// The address family a v1 `TCP4` or `TCP6` line announces.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// §2.1: an address "in its canonical format" of this family.
    fn address(self, text: &[u8]) -> Option<IpAddr> {
        match self {
            Family::V4 => ipv4(text).map(IpAddr::V4),
            // §2.1: hex groups, at most one `::`, 128 bits in all. Read as HAProxy reads it
            // (inet_pton: RFC 4291's text form, 1 to 4 digits a group), since senders write
            // the short canonical form; that includes a dotted IPv4 tail, which HAProxy, Rust
            // and so Ballast itself write for IPv4-mapped addresses.
            Family::V6 => std::str::from_utf8(text)
                .ok()?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6),
        }
    }

    /// Whether `text` may still become an address of this family.
    fn address_start(self, text: &[u8]) -> bool {
        match self {
            Family::V4 => {
                let mut parts = text.split(|&b| b == b'.').peekable();
                let mut count = 0;
                while let Some(part) = parts.next() {
                    count += 1;
                    let fits = match parts.peek() {
                        Some(_) => decimal(part, 255).is_some(),
                        None => decimal_start(part, 3),
                    };
                    if !fits || count > 4 {
                        return false;
                    }
                }
                true
            }
            // The longest form: six groups of four and a dotted quad.
            Family::V6 => {
                text.len() <= 45
                    && text
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            }
        }
    }
}

/// §2.1: "exactly 4 integers in the range [0..255] inclusive written in decimal
/// representation separated by exactly one dot", without heading zeroes.
fn ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut parts = text.split(|&b| b == b'.');
    let mut octets = [0u8; 4];
    for octet in &mut octets {
        *octet = u8::try_from(decimal(parts.next()?, 255)?).ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// §2.1: a port is "a decimal integer in the range [0..65535] inclusive", without heading
/// zeroes.
fn port(text: &[u8]) -> Option<u16> {
    u16::try_from(decimal(text, 65535)?).ok()
}

/// `text` as a decimal number no greater than `max`: one to five digits (so no overflow), no
/// sign or space, no heading zero ("to avoid any possible confusion with octal numbers", §2.1).
fn decimal(text: &[u8], max: u32) -> Option<u32> {
    if !decimal_start(text, 5) || text.is_empty() {
        return None;
    }
    text.iter()
        .try_fold(0u32, |n, &b| Some(n * 10 + u32::from(b.checked_sub(b'0')?)))
        .filter(|&n| n <= max)
}

/// Whether `text` may still become a decimal number of at most `digits` digits.
fn decimal_start(text: &[u8], digits: usize) -> bool {
    text.len() <= digits
        && text.iter().all(u8::is_ascii_digit)
        && !(text.len() > 1 && text.first() == Some(&b'0'))
}

/// What a v2 `PROXY` header's address block holds for this reader.
enum Block {
    /// Addresses not to be used: the connection's own stand.
    Ignored,
    /// Two IPv4 addresses and ports (12 bytes), then TLVs.
    Inet,
    /// Two IPv6 addresses and ports (36 bytes), then TLVs.
    Inet6,
}

/// §2.2: the binary header, `input` starting with its signature.
fn v2(input: &[u8], transport: Transport) -> Parsed {
    let Some(&version_command) = input.get(12) else {
        return Parsed::Incomplete;
    };
    if version_command >> 4 != 2 {
        return Parsed::Invalid(format!("v2 header of version {}", version_command >> 4));
    }
    // §2.2: LOCAL (0) or PROXY (1); "Receivers must drop connections presenting unexpected
    // values here".
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        other => return Parsed::Invalid(format!("v2 command {other:#x}")),
    };
    let Some(&family_protocol) = input.get(13) else {
        return Parsed::Incomplete;
    };
    let (family, protocol) = (family_protocol >> 4, family_protocol & 0x0f);
    let block = if local {
        // §2.2: with LOCAL the receiver "must use the real connection endpoints and discard
        // the protocol block including the family which is ignored", whatever its bytes.
        Block::Ignored
    } else {
        match (family, protocol, transport) {
            // §2.2: families past AF_UNIX (3) and protocols past DGRAM (2) "must be rejected
            // as invalid by receivers".
            (4.., _, _) | (_, 3.., _) => {
                return Parsed::Invalid(format!("v2 family and protocol {family_protocol:#04x}"))
            }
            // A header whose transport is not the one it came on: a UDP flow announced on a
            // TCP connection (or the reverse). §2.2 leaves a receiver that does not implement a
            // combination free to accept it without its addresses or to refuse it. Ballast
            // refuses, as HAProxy does (2.6 tested: "invalid PROXY protocol header" for 0x12
            // and 0x22 on a TCP listener): the sender is misconfigured, and the addresses are
            // another connection's.
            (_, 1, Transport::Datagram) | (_, 2, Transport::Stream) => {
                return Parsed::Invalid(format!(
                    "v2 family and protocol {family_protocol:#04x} on the wrong transport"
                ))
            }
            // §2.2: with UNSPEC (family or protocol) "the receiver should ignore address
            // information", and may accept the connection; so may a receiver facing a valid
            // combination it does not implement (AF_UNIX), which "falls back to the UNSPEC
            // mode". Ballast accepts, as HAProxy's older readers did. (HAProxy 2.x refuses all
            // but 0x11 and 0x21, DGRAM included, in conn_recv_proxy's TLV walk, which for
            // them starts at offset 0, in the signature, and overruns the header.)
            (0, _, _) | (_, 0, _) | (3, _, _) => Block::Ignored,
            (1, _, _) => Block::Inet,
            _ => Block::Inet6,
        }
    };
    let (Some(&high), Some(&low)) = (input.get(14), input.get(15)) else {
        return Parsed::Incomplete;
    };
    // §2.2: "the length of the protocol header in bytes is always exactly 16 + this value",
    // which receivers "MUST always consider" to skip the header, LOCAL included.
    let len = V2_FIXED + usize::from(u16::from_be_bytes([high, low]));
    if len > MAX_HEADER {
        return Parsed::Invalid(format!("a {len}-byte v2 header (over {MAX_HEADER})"));
    }
    let need = match block {
        Block::Ignored => 0,
        Block::Inet => 12,
        Block::Inet6 => 36,
    };
    if len < V2_FIXED + need {
        return Parsed::Invalid(format!("a v2 address block of {} bytes", len - V2_FIXED));
    }
    let Some(header) = input.get(V2_FIXED..len) else {
        return Parsed::Incomplete;
    };
    let addresses = match block {
        Block::Ignored => None,
        Block::Inet => endpoints::<4>(header),
        Block::Inet6 => endpoints::<16>(header),
    };
    // §2.2 lets a receiver skip the TLVs after the addresses or interpret them; their
    // framing is checked (as HAProxy does) since a header whose TLVs overrun it was not
    // written to the spec. Their contents are not read: no TLV changes what Ballast does
    // (a CRC32C TLV need be checked only by receivers that support it, §2.2.3).
    if addresses.is_some() && !whole_tlvs(header.get(need..).unwrap_or_default()) {
        return Parsed::Invalid("v2 TLVs overrun the header".into());
    }
    Parsed::Header { len, addresses }
}

/// §2.2: the source and destination addresses (`N` bytes each) and ports (2 bytes each) at
/// the start of an address block.
fn endpoints<const N: usize>(block: &[u8]) -> Option<(SocketAddr, SocketAddr)>
where
    IpAddr: From<[u8; N]>,
{
    let src: [u8; N] = block.get(..N)?.try_into().ok()?;
    let dst: [u8; N] = block.get(N..2 * N)?.try_into().ok()?;
    let sport: [u8; 2] = block.get(2 * N..2 * N + 2)?.try_into().ok()?;
    let dport: [u8; 2] = block.get(2 * N + 2..2 * N + 4)?.try_into().ok()?;
    Some((
        SocketAddr::new(IpAddr::from(src), u16::from_be_bytes(sport)),
        SocketAddr::new(IpAddr::from(dst), u16::from_be_bytes(dport)),
    ))
}

/// §2.2: whether `tlvs` is whole TLVs back to back (a type byte, a 2-byte length, the value).
fn whole_tlvs(mut tlvs: &[u8]) -> bool {
    while !tlvs.is_empty() {
        let Some(&[_, high, low]) = tlvs.get(..3) else {
            return false;
        };
        match tlvs.get(3 + usize::from(u16::from_be_bytes([high, low]))..) {
            Some(rest) => tlvs = rest,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests;

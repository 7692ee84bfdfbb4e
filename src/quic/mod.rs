//! QUIC as a load balancer sees it: the invariant header fields that carry a destination
//! connection ID (RFC 8999), and QUIC-LB connection IDs that name their server ([`lb`]).
// The data path: nothing reachable from network input may panic (the no-panic block of
// lib.rs's "Lint policy"; integration/layers.rs keeps it identical). Unit tests may unwrap.
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

pub mod lb;

/// QUIC version 1 (RFC 9000).
pub const VERSION_1: u32 = 1;
/// QUIC version 2 (RFC 9369): the long header packet types are numbered differently.
pub const VERSION_2: u32 = 0x6b33_43cf;

/// The source connection ID of [`version_probe`], which a server's Version Negotiation
/// packet echoes as its destination connection ID.
pub const PROBE_SCID: &[u8; 8] = b"ballastQ";

/// A QUIC health probe (RFC 9000 §6, §15): a 1,200-octet long header packet of a reserved
/// version (0x1a2a3a4a), which every QUIC server must answer with Version Negotiation
/// whatever its own versions and configuration, and the bytes that answer contains: version
/// 0, then [`PROBE_SCID`] as the destination connection ID and the probe's destination
/// connection ID as the source one (RFC 9000 §17.2.1: both copied from the probe).
pub fn version_probe() -> (Vec<u8>, Vec<u8>) {
    const DCID: &[u8; 8] = b"\x5b\xa1\x1a\x57\x00\x00\x00\x01";
    let mut probe = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
    probe.extend_from_slice(DCID);
    probe.push(8);
    probe.extend_from_slice(PROBE_SCID);
    probe.resize(1200, 0);
    let mut answer = vec![0, 0, 0, 0, 8];
    answer.extend_from_slice(PROBE_SCID);
    answer.push(8);
    answer.extend_from_slice(DCID);
    (probe, answer)
}

/// What kind of packet a datagram starts with, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A long header Initial or 0-RTT packet of QUIC v1 or v2: its destination connection
    /// ID may be the client's own choice (the first flight), so it names no server.
    ClientChosen,
    /// Any other long header packet (Handshake, Retry, a version Ballast does not know).
    OtherLong,
    /// A short header (1-RTT) packet.
    Short,
}

/// The routing-relevant part of a QUIC packet's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The kind of packet.
    pub kind: Kind,
    /// Its destination connection ID.
    pub dcid: &'a [u8],
}

/// The longest connection ID of QUIC v1 and v2, in octets (RFC 9000 §17.2).
const MAX_CID_LEN: usize = 20;

/// The header of the first packet in `datagram` (RFC 8999's invariants; RFC 9000 §17.2 and
/// RFC 9369 §3.2 for the packet types), where short headers carry a destination connection
/// ID of `short_dcid_len` octets. `None` for what cannot be QUIC: empty, truncated (a long
/// header's connection IDs not whole), a v1 or v2 connection ID over 20 octets, or version
/// negotiation (version 0, which only servers send).
pub fn header(datagram: &[u8], short_dcid_len: usize) -> Option<Header<'_>> {
    let (&first, rest) = datagram.split_first()?;
    if first & 0x80 == 0 {
        return Some(Header {
            kind: Kind::Short,
            dcid: rest.get(..short_dcid_len)?,
        });
    }
    let version = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let len = usize::from(*rest.get(4)?);
    let dcid = rest.get(5..5 + len)?;
    // The source connection ID follows, whole (an invariant of every version).
    let scid_len = usize::from(*rest.get(5 + len)?);
    rest.get(6 + len..6 + len + scid_len)?;
    let known = matches!(version, VERSION_1 | VERSION_2);
    if known && (len > MAX_CID_LEN || scid_len > MAX_CID_LEN) {
        return None; // v1 and v2 connection IDs are at most 20 octets (RFC 9000 §17.2)
    }
    let packet_type = (first >> 4) & 0x03;
    let kind = match (version, packet_type) {
        (0, _) => return None,
        (VERSION_1, 0 | 1) | (VERSION_2, 1 | 2) => Kind::ClientChosen,
        _ => Kind::OtherLong,
    };
    Some(Header { kind, dcid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever arrives, parsing and decoding answer without panicking, and a decoded
        /// server ID fits its length.
        #[test]
        fn any_datagram_parses_and_decodes_without_panic(
            datagram in proptest::collection::vec(any::<u8>(), 0..64),
            short in 0usize..24,
            sid in 1usize..=8,
            nonce in 4usize..=11,
            keyed in any::<bool>(),
        ) {
            let lb = lb::LbConfig::new(0, sid, nonce, keyed.then_some([7u8; 16])).unwrap();
            if let Some(h) = header(&datagram, short) {
                if let Some(id) = lb.decode(h.dcid) {
                    prop_assert!(id <= lb.max_server_id());
                }
            }
            let _ = lb.decode(&datagram);
        }
    }

    #[test]
    fn headers_of_each_kind() {
        // v1 Initial: 0xc0 | type 0, version 1, DCID of 8, SCID of 0.
        let mut initial = vec![0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0];
        let h = header(&initial, 8).unwrap();
        assert_eq!(
            (h.kind, h.dcid),
            (Kind::ClientChosen, &[1, 2, 3, 4, 5, 6, 7, 8][..])
        );
        initial[0] = 0xd0; // 0-RTT
        assert_eq!(header(&initial, 8).unwrap().kind, Kind::ClientChosen);
        initial[0] = 0xe0; // Handshake
        assert_eq!(header(&initial, 8).unwrap().kind, Kind::OtherLong);
        // v2: Initial is type 1, Handshake type 3.
        initial[1..5].copy_from_slice(&VERSION_2.to_be_bytes());
        initial[0] = 0xd0;
        assert_eq!(header(&initial, 8).unwrap().kind, Kind::ClientChosen);
        initial[0] = 0xf0;
        assert_eq!(header(&initial, 8).unwrap().kind, Kind::OtherLong);
        // A version Ballast does not know: its types mean nothing.
        initial[1..5].copy_from_slice(&0xff00_001d_u32.to_be_bytes());
        initial[0] = 0xc0;
        assert_eq!(header(&initial, 8).unwrap().kind, Kind::OtherLong);
        // Version negotiation, truncated headers.
        initial[1..5].copy_from_slice(&[0; 4]);
        assert_eq!(header(&initial, 8), None);
        assert_eq!(header(&[0xc0, 0, 0, 0, 1, 9, 1, 2], 8), None);
        assert_eq!(header(&[], 8), None);
        // A source connection ID longer than what is left; v1 IDs over 20 octets.
        assert_eq!(header(&[0xc0, 0, 0, 0, 1, 1, 7, 3, 1], 8), None);
        let mut long = vec![0xc0, 0, 0, 0, 1, 21];
        long.extend_from_slice(&[5; 21]);
        long.push(0);
        assert_eq!(header(&long, 8), None);
        long[1..5].copy_from_slice(&0xff00_001d_u32.to_be_bytes());
        assert_eq!(
            header(&long, 8).unwrap().kind,
            Kind::OtherLong,
            "any length elsewhere"
        );
        // Short header: the DCID length is the configuration's.
        let short = [0x40, 9, 8, 7, 6, 5, 4, 3, 2, 0xaa];
        let h = header(&short, 8).unwrap();
        assert_eq!((h.kind, h.dcid), (Kind::Short, &short[1..9]));
        assert_eq!(header(&short[..5], 8), None);
    }
}

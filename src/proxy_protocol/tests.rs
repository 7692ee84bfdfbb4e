//! The reader against the spec's wording, section by section, and the writer against the
//! reader.

use super::*;

fn addrs(c: &str, l: &str) -> (SocketAddr, SocketAddr) {
    (c.parse().unwrap(), l.parse().unwrap())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `bytes` is one whole header with `addresses`: no shorter prefix is anything but
/// `Incomplete`, and nothing after it changes the verdict.
fn assert_header(bytes: &[u8], addresses: Option<(SocketAddr, SocketAddr)>) {
    let want = Parsed::Header {
        len: bytes.len(),
        addresses,
    };
    assert_eq!(parse(bytes), want, "{:?}", text(bytes));
    for tail in [&b"GET / HTTP/1.1\r\n"[..], b"\r\n", b" \0\xff"] {
        let more = [bytes, tail].concat();
        assert_eq!(parse(&more), want, "{:?}", text(&more));
    }
    for cut in 0..bytes.len() {
        let prefix = &bytes[..cut];
        assert_eq!(parse(prefix), Parsed::Incomplete, "{:?}", text(prefix));
    }
}

fn assert_invalid(bytes: &[u8]) {
    let got = parse(bytes);
    assert!(
        matches!(got, Parsed::Invalid(_)),
        "{:?}: {got:?}",
        text(bytes)
    );
}

/// A v2 header: version 2, `command` (0 LOCAL, 1 PROXY), `family_protocol`, `block`.
fn v2(command: u8, family_protocol: u8, block: &[u8]) -> Vec<u8> {
    let len = u16::try_from(block.len()).unwrap().to_be_bytes();
    [
        V2_SIGNATURE,
        &[0x20 | command, family_protocol],
        &len,
        block,
    ]
    .concat()
}

/// 192.0.2.7:41000 to 198.51.100.1:443.
const INET_BLOCK: [u8; 12] = [192, 0, 2, 7, 198, 51, 100, 1, 0xa0, 0x28, 0x01, 0xbb];

fn inet() -> Option<(SocketAddr, SocketAddr)> {
    Some(addrs("192.0.2.7:41000", "198.51.100.1:443"))
}

/// [2001:db8::7]:41000 to [2001:db8::1]:443.
fn inet6_block() -> Vec<u8> {
    let (c, l) = addrs("[2001:db8::7]:41000", "[2001:db8::1]:443");
    let ip = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(_) => unreachable!(),
    };
    [&ip(c)[..], &ip(l), &[0xa0, 0x28, 0x01, 0xbb]].concat()
}

#[test]
fn headers_round_trip_in_both_versions_and_families() {
    for (c, l) in [
        addrs("192.0.2.7:41000", "198.51.100.1:5432"),
        addrs("[2001:db8::7]:41000", "[2001:db8::1]:5432"),
        addrs("0.0.0.0:0", "255.255.255.255:65535"),
    ] {
        for v in [Version::V1, Version::V2] {
            assert_header(&header(v, c, l, false), Some((c, l)));
        }
    }
    assert_eq!(
        header(
            Version::V1,
            "192.0.2.7:1".parse().unwrap(),
            "198.51.100.1:2".parse().unwrap(),
            false
        ),
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n"
    );
}

#[test]
fn mixed_families_become_ipv6() {
    let (c, l) = addrs("192.0.2.7:41000", "[2001:db8::1]:5432");
    let mapped = addrs("[::ffff:192.0.2.7]:41000", "[2001:db8::1]:5432");
    // v1 writes the mapped address with a dotted tail, which the reader must take back.
    let v1 = header(Version::V1, c, l, false);
    assert_eq!(
        text(&v1),
        "PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 41000 5432\r\n"
    );
    assert_header(&v1, Some(mapped));
    assert_header(&header(Version::V2, c, l, false), Some(mapped));
    let udp = header(Version::V2, c, l, true);
    assert_eq!(
        parse_datagram(&udp),
        Parsed::Header {
            len: udp.len(),
            addresses: Some(mapped)
        }
    );
}

#[test]
fn local_and_unknown_keep_the_connection_addresses() {
    for v in [Version::V1, Version::V2] {
        assert_header(&local_header(v), None);
    }
}

#[test]
fn v1_unknown_ignores_the_rest_of_its_line() {
    // §2.1: "the receiver must ignore anything presented before the CRLF is found".
    let worst = format!(
        "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
        ["ffff"; 8].join(":")
    );
    assert_eq!(worst.len(), 107);
    for line in [
        "PROXY UNKNOWN\r\n",
        "PROXY UNKNOWN \r\n",
        "PROXY UNKNOWN   \r\n",
        "PROXY UNKNOWN 192.0.2.7 198.51.100.1 41000 443\r\n",
        "PROXY UNKNOWN 1.2.3.4 5.6.7.8 +80 080 and\ttabs  and more fields\r\n",
        &worst,
    ] {
        assert_header(line.as_bytes(), None);
    }
    // Over 107 bytes; a protocol that only starts with UNKNOWN; a line ended by a bare LF or
    // holding a lone CR before its CRLF.
    assert_invalid(
        format!(
            "PROXY UNKNOWN {0} {0} 65535 655350\r\n",
            ["ffff"; 8].join(":")
        )
        .as_bytes(),
    );
    for line in [
        "PROXY UNKNOWNX\r\n",
        "PROXY UNKNOWN\n",
        "PROXY UNKNOWN\nGET / HTTP/1.1\r\n",
        "PROXY UNKNOWN \rx\r\n",
        "PROXY UNKNOWN\n\r\n",
    ] {
        assert_invalid(line.as_bytes());
    }
}

/// `PROXY TCP4 192.0.2.7 198.51.100.1 <sport> <dport>\r\n`.
fn tcp4(sport: &str, dport: &str) -> Vec<u8> {
    format!("PROXY TCP4 192.0.2.7 198.51.100.1 {sport} {dport}\r\n").into_bytes()
}

#[test]
fn v1_ports_are_plain_decimal() {
    let with = |s: u16, d: u16| {
        Some(addrs(
            &format!("192.0.2.7:{s}"),
            &format!("198.51.100.1:{d}"),
        ))
    };
    assert_header(&tcp4("0", "65535"), with(0, 65535));
    assert_header(&tcp4("80", "1"), with(80, 1));
    // §2.1: "a decimal integer in the range [0..65535] inclusive. Heading zeroes are not
    // permitted".
    for bad in [
        "+80", "-1", "080", "00", "65536", "99999", "100000", "", " 80", "8a", "0x50", "8_0",
        "\u{0668}", "80 ",
    ] {
        assert_invalid(&tcp4(bad, "443"));
        assert_invalid(&tcp4("443", bad));
    }
}

#[test]
fn v1_addresses_are_strict() {
    let line = |p: &str, s: &str, d: &str| format!("PROXY {p} {s} {d} 1 2\r\n").into_bytes();
    for (p, ok) in [
        ("TCP4", "0.0.0.0"),
        ("TCP4", "255.255.255.255"),
        ("TCP4", "10.0.0.1"),
        ("TCP6", "::"),
        ("TCP6", "2001:DB8::a"),
        ("TCP6", "2001:0db8:0000:0000:0000:0000:0000:0001"),
        ("TCP6", "1:2:3:4:5:6:7:8"),
        ("TCP6", "::ffff:192.0.2.7"),
    ] {
        let ip: IpAddr = ok.parse().unwrap();
        let want = Some((SocketAddr::new(ip, 1), SocketAddr::new(ip, 2)));
        assert_header(&line(p, ok, ok), want);
    }
    let v4 = "192.0.2.7";
    for bad in [
        "1.2.3",
        "1.2.3.4.5",
        "256.0.0.1",
        "01.2.3.4",
        "1.2.3.04",
        "1.2.3.00",
        "1..3.4",
        "1.2.3.4.",
        ".1.2.3",
        "1.2.3.+4",
        "1.2.3.-4",
        "0x1.2.3.4",
        "1.2.3.4/32",
        "::1",
        "::ffff:1.2.3.4",
        "",
    ] {
        assert_invalid(&line("TCP4", bad, v4));
        assert_invalid(&line("TCP4", v4, bad));
    }
    for bad in [
        "1.2.3.4",
        "::g",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7",
        "12345::",
        ":::",
        "1::2::3",
        "fe80::1%eth0",
        "[::1]",
        "::ffff:1.2.3.04",
        "::ffff:256.2.3.4",
        "",
    ] {
        assert_invalid(&line("TCP6", bad, "::1"));
        assert_invalid(&line("TCP6", "::1", bad));
    }
}

#[test]
fn v1_fields_and_line_end_are_exact() {
    for bad in [
        // Exactly one space between fields (§2.1).
        "PROXY  TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY TCP4 192.0.2.7  198.51.100.1 1 2\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1  1 2\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1  2\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2 \r\n",
        " PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY\tTCP4 192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY TCP4\t192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY TCP4 192.0.2.7\t198.51.100.1 1 2\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1\t2\r\n",
        // Six fields exactly; known protocols only, in capitals.
        "PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",
        "PROXY TCP4\r\n",
        "PROXY TCP6 ::1 ::1 1\r\n",
        "PROXY tcp4 192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY TCP5 192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY \r\n",
        "PROXY\r\n",
        // A CRLF and nothing else ends the line (§2.1).
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\nGET / HTTP/1.1\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\rGET / HTTP/1.1\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\r\n",
    ] {
        assert_invalid(bad.as_bytes());
    }
    // No CRLF within 107 bytes: invalid, even though UNKNOWN ignores what it holds.
    let long = format!("PROXY UNKNOWN {}", "a".repeat(93));
    assert_eq!(long.len(), 107);
    assert_eq!(parse(&long.as_bytes()[..106]), Parsed::Incomplete);
    assert_invalid(long.as_bytes());
    // Its CRLF at bytes 106 and 107 is just in time; at 107 and 108, too late.
    let in_time = format!("{}\r\n", &long[..105]);
    assert_header(in_time.as_bytes(), None);
    assert_invalid(format!("{}\r\n", &long[..106]).as_bytes());
}

#[test]
fn v1_hopeless_lines_are_refused_before_their_crlf() {
    for start in [
        "G",
        "GET / HTTP/1.1",
        "PROXY\t",
        "PROXYTCP4",
        "PROXY X",
        "PROXY TCP44",
        "PROXY UNKNOWNX",
        "PROXY TCP4 abc",
        "PROXY TCP4 ::1",
        "PROXY TCP4 256.",
        "PROXY TCP4 1.2.3.4.5",
        "PROXY TCP4 01",
        "PROXY TCP4 1.2.3.4  ",
        "PROXY TCP4 1.2.3.4 5.6.7 ",
        "PROXY TCP4 1.2.3.4 5.6.7.8 080",
        "PROXY TCP4 1.2.3.4 5.6.7.8 +",
        "PROXY TCP4 1.2.3.4 5.6.7.8 123456",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        "PROXY TCP6 ::1 ::g",
        "PROXY TCP6 1.2.3.4 ",
        "PROXY UNKNOWN \n",
    ] {
        assert_invalid(start.as_bytes());
    }
    // What may still become a header waits.
    for start in [
        "",
        "P",
        "PROXY",
        "PROXY ",
        "PROXY T",
        "PROXY UNK",
        "PROXY TCP4 ",
        "PROXY TCP4 1.2.3.",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
        "PROXY TCP6 ::ffff:1.2.3.4 2001:db8:",
        "PROXY UNKNOWN +80 \t",
    ] {
        assert_eq!(parse(start.as_bytes()), Parsed::Incomplete, "{start:?}");
    }
}

#[test]
fn v2_local_ignores_its_block_and_skips_it() {
    // §2.2: LOCAL: "discard the protocol block including the family which is ignored", and
    // "must not assume zero is presented for LOCAL connections".
    for (family_protocol, block) in [
        (0x00, Vec::new()),
        (0x11, vec![1, 2]),
        (0x11, INET_BLOCK.to_vec()),
        (0x21, vec![7; 100]),
        (0x12, INET_BLOCK.to_vec()),
        (0xff, vec![0; 5]),
    ] {
        assert_header(&v2(0, family_protocol, &block), None);
    }
}

#[test]
fn v2_unspec_and_unix_keep_the_connection_addresses() {
    for (family_protocol, block) in [
        (0x00, Vec::new()),
        (0x00, INET_BLOCK.to_vec()),
        (0x10, INET_BLOCK.to_vec()),
        (0x20, Vec::new()),
        (0x01, vec![9; 3]),
        (0x30, Vec::new()),
        (0x31, vec![0; 216]),
    ] {
        assert_header(&v2(1, family_protocol, &block), None);
    }
}

#[test]
fn v2_datagram_headers_are_refused_on_streams_and_read_in_datagrams() {
    for (family_protocol, block) in [
        (0x12, INET_BLOCK.to_vec()),
        (0x22, inet6_block()),
        (0x02, Vec::new()),
        (0x32, vec![0; 216]),
    ] {
        let bytes = v2(1, family_protocol, &block);
        assert_invalid(&bytes);
        // Known from the family byte on.
        assert_invalid(&bytes[..14]);
    }
    // In a datagram, the reverse; and the whole header must be in it.
    let udp = v2(1, 0x12, &INET_BLOCK);
    let with_data = [&udp[..], b"datagram"].concat();
    let want = Parsed::Header {
        len: udp.len(),
        addresses: inet(),
    };
    assert_eq!(parse_datagram(&udp), want);
    assert_eq!(parse_datagram(&with_data), want);
    let want6 = Some(addrs("[2001:db8::7]:41000", "[2001:db8::1]:443"));
    let udp6 = v2(1, 0x22, &inet6_block());
    assert!(
        matches!(parse_datagram(&udp6), Parsed::Header { addresses, .. } if addresses == want6)
    );
    for none in [
        v2(0, 0x00, &[]),
        v2(1, 0x00, &INET_BLOCK),
        v2(0, 0x11, &INET_BLOCK),
    ] {
        assert!(matches!(
            parse_datagram(&none),
            Parsed::Header {
                addresses: None,
                ..
            }
        ));
    }
    for bad in [
        v2(1, 0x11, &INET_BLOCK),
        udp[..udp.len() - 1].to_vec(),
        udp[..10].to_vec(),
        Vec::new(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
    ] {
        let got = parse_datagram(&bad);
        assert!(matches!(got, Parsed::Invalid(_)), "{bad:?}: {got:?}");
    }
}

#[test]
fn v2_values_outside_the_spec_are_refused_at_once() {
    let good = v2(1, 0x11, &INET_BLOCK);
    assert_header(&good, inet());
    // Version (high nibble of byte 13): 2 only. Commands: LOCAL and PROXY only.
    for version_command in [0x11, 0x31, 0x01, 0xf1, 0x22, 0x23, 0x2f] {
        let mut bytes = good.clone();
        bytes[12] = version_command;
        assert_invalid(&bytes[..13]);
        assert_invalid(&bytes);
    }
    // Families past AF_UNIX, protocols past DGRAM.
    for family_protocol in [0x41, 0x13, 0x03, 0xf1, 0xff] {
        let bytes = v2(1, family_protocol, &INET_BLOCK);
        assert_invalid(&bytes[..14]);
    }
    // An address block too short for its family, known from the length field on.
    for (family_protocol, short) in [(0x11, 8), (0x11, 11), (0x21, 12), (0x21, 35)] {
        let bytes = v2(1, family_protocol, &vec![0; short]);
        assert_invalid(&bytes[..16]);
        assert_invalid(&bytes);
    }
    // Longer than MAX_HEADER, known from the length field on.
    let mut long = good.clone();
    long[14..16].copy_from_slice(&u16::try_from(MAX_HEADER - 15).unwrap().to_be_bytes());
    assert_invalid(&long[..16]);
    long[14..16].copy_from_slice(&u16::try_from(MAX_HEADER - 16).unwrap().to_be_bytes());
    assert_eq!(parse(&long), Parsed::Incomplete);
    // A signature one byte off.
    let mut off = good.clone();
    off[10] = b'X';
    assert_invalid(&off[..11]);
}

#[test]
fn v2_tlvs_are_skipped_when_whole() {
    let tlvs: &[u8] =
        b"\x01\x00\x02h2\x02\x00\x0edb.example.com\x04\x00\x00\x03\x00\x04\xde\xad\xbe\xef";
    // A CRC32C TLV is not checked (§2.2.3: only by receivers that support it).
    let block = [&INET_BLOCK[..], tlvs].concat();
    assert_header(&v2(1, 0x11, &block), inet());
    let block6 = [&inet6_block()[..], tlvs].concat();
    let want6 = Some(addrs("[2001:db8::7]:41000", "[2001:db8::1]:443"));
    assert_header(&v2(1, 0x21, &block6), want6);
    for broken in [
        &b"\x01"[..],
        b"\x01\x00",
        b"\x01\x00\x03h2",
        b"\x01\x00\x02h2\x04",
    ] {
        let block = [&INET_BLOCK[..], broken].concat();
        assert_invalid(&v2(1, 0x11, &block));
    }
}

#[test]
fn garbage_and_oversize_are_invalid() {
    assert_invalid(b"GET / HTTP/1.1\r\n\r\n");
    assert_invalid(b"PROXY TCP4 1.2.3.4 x 1 2\r\n");
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(200, b'1');
    assert_invalid(&long);
    // A v2 header announcing 2,000 bytes of TLVs.
    let mut v2 = header(
        Version::V2,
        "1.2.3.4:1".parse().unwrap(),
        "5.6.7.8:2".parse().unwrap(),
        false,
    );
    v2[14..16].copy_from_slice(&2000u16.to_be_bytes());
    v2.resize(16 + 2000, 0);
    assert_invalid(&v2);
}

/// Once a verdict is given it stands however many bytes follow, and it stays within the
/// bounds the callers rely on (the fuzz target's assertions), on many mutations of valid
/// headers: each byte changed, dropped or doubled, and random bytes at random places.
#[test]
fn verdicts_never_change_and_stay_in_bounds() {
    let seeds: Vec<Vec<u8>> = vec![
        tcp4("41000", "443"),
        b"PROXY TCP6 2001:db8::7 ::ffff:192.0.2.7 41000 443\r\n".to_vec(),
        b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        v2(1, 0x11, &[&INET_BLOCK[..], b"\x01\x00\x02h2"].concat()),
        v2(1, 0x21, &inet6_block()),
        v2(0, 0x11, &[1, 2]),
        v2(1, 0x12, &INET_BLOCK),
    ];
    let mut inputs = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in &seeds {
        inputs.push(seed.clone());
        for i in 0..seed.len() {
            let mut dropped = seed.clone();
            dropped.remove(i);
            let mut doubled = seed.clone();
            doubled.insert(i, seed[i]);
            inputs.extend([dropped, doubled]);
            for b in [0u8, b' ', b'\t', b'\r', b'\n', b'0', b'+', b':', b'.', 0xff] {
                let mut changed = seed.clone();
                changed[i] = b;
                inputs.push(changed);
            }
        }
        for _ in 0..500 {
            let mut random = seed.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() % random.len() as u64) as usize;
                random[at] = next() as u8;
            }
            inputs.push(random);
        }
    }
    for input in &inputs {
        let with_data = [&input[..], &[b'x'; 64][..]].concat();
        let mut verdict: Option<Parsed> = None;
        for cut in 0..=with_data.len() {
            let bytes = &with_data[..cut];
            let got = parse(bytes);
            match &got {
                Parsed::Header { len, .. } => assert!(*len <= cut && *len <= MAX_HEADER),
                Parsed::Incomplete => assert!(cut < MAX_HEADER),
                Parsed::Invalid(_) => {}
            }
            match (&verdict, &got) {
                (None, Parsed::Incomplete) => {}
                (None, _) => verdict = Some(got),
                (Some(Parsed::Invalid(_)), Parsed::Invalid(_)) => {}
                (Some(before), now) => assert_eq!(before, now, "{:?}", text(bytes)),
            }
            let _ = parse_datagram(bytes);
        }
    }
}

//! The fuzz targets' seed corpora (`integration/fuzz/corpus/`), replayed on the stable
//! toolchain in every test run: each input goes through the same entry point its fuzz target
//! drives, and must neither panic nor lose its meaning (the shipped configs still load, the
//! well-formed control messages still give their address, the admin requests still answer).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballast::Control;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integration/fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{target}: too few seeds");
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn config_seeds_load() {
    for (path, bytes) in corpus("config") {
        let text = String::from_utf8(bytes).unwrap();
        if let Err(e) = ballast::config::parse(&path, &text) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn udp_control_seeds_parse() {
    let mut found = 0;
    for (path, bytes) in corpus("udp_control") {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let got = ballast::pktinfo_in(&bytes);
        match name.as_str() {
            "v4" | "ts_then_v4" => assert_eq!(got, Some("127.0.0.2".parse().unwrap()), "{name}"),
            "v6" | "ts_then_v6" => assert_eq!(got, Some("::1".parse().unwrap()), "{name}"),
            _ => assert_eq!(got, None, "{name}: malformed"),
        }
        found += usize::from(got.is_some());
    }
    assert_eq!(found, 4);
}

#[test]
fn admin_seeds_answer() {
    let config = ballast::config::parse(
        Path::new("fuzz.yaml"),
        "listeners:\n  - {name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: g}\n\
         target_groups:\n  - name: g\n    targets: [{address: '127.0.0.1:9'}, {address: \
         '127.0.0.1:10', weight: 3}]\n",
    )
    .unwrap();
    let control: Arc<Control> = Control::new(ballast::Generation::new(config), Vec::new());
    for (path, bytes) in corpus("admin") {
        let text = String::from_utf8(bytes).unwrap();
        let mut parts = text.splitn(4, '\n');
        let method: ballast::Method = parts.next().unwrap().parse().unwrap();
        let url = parts.next().unwrap_or("");
        let token = parts.next().filter(|t| !t.is_empty());
        let body = parts.next().unwrap_or("").to_string();
        let reply = ballast::answer(&control, &method, url, token, || Ok(body));
        let status = reply.status;
        assert!((200..500).contains(&status), "{}: {status}", path.display());
    }
}

#[test]
fn proxy_header_seeds_keep_their_meaning() {
    use ballast::proxy_protocol::{parse, Parsed};
    for (path, bytes) in corpus("proxy_header") {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let got = parse(&bytes);
        let client = |p: &Parsed| match p {
            Parsed::Header {
                addresses: Some((c, _)),
                ..
            } => Some(c.to_string()),
            _ => None,
        };
        match name.as_str() {
            "v1_tcp4" | "v2_ipv4" | "v2_tlvs" => {
                assert_eq!(client(&got).as_deref(), Some("192.0.2.7:41000"), "{name}")
            }
            "v1_tcp6" => assert_eq!(client(&got).as_deref(), Some("[2001:db8::7]:41000")),
            "v2_ipv6" => assert_eq!(client(&got).as_deref(), Some("[::]:41000")),
            // The rest of an UNKNOWN line, a LOCAL header's address block and an UNSPEC
            // header's addresses are ignored; the connection's own addresses stand.
            "v1_unknown" | "v1_unknown_fields" | "v2_local" | "v2_local_addresses"
            | "v2_unspec" => assert!(
                matches!(
                    got,
                    Parsed::Header {
                        addresses: None,
                        ..
                    }
                ),
                "{name}: {got:?}"
            ),
            "v1_truncated" => assert_eq!(got, Parsed::Incomplete, "{name}"),
            // Among them v2_udp: a UDP flow's header on a TCP connection.
            _ => assert!(matches!(got, Parsed::Invalid(_)), "{name}: {got:?}"),
        }
    }
}

//! The monitoring kit (`conf/monitoring/`): Prometheus alert rules checked and unit-tested by
//! `promtool`, and every Ballast metric named by the rules or the Grafana dashboard present in
//! a running Ballast's `/metrics` (a renamed metric breaks this test, not an operator's alert).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn kit(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf/monitoring")
        .join(file)
}

fn promtool(args: &[&str]) {
    need("promtool");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(kit(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool {args:?}: {out:?}");
}

#[test]
fn the_alert_rules_check_and_fire_on_the_series_they_are_written_for() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

/// The `ballast_*` names in `text`, with the suffixes exposition adds to a family
/// (`_total`, `_bucket`, `_sum`, `_count`) taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ballast_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_total", "_bucket", "_sum", "_count"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        names.insert(name.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let rules = std::fs::read_to_string(kit("alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(kit("grafana-dashboard.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let panels = doc["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for p in panels {
        let targets = p["targets"].as_array().expect("every panel has queries");
        assert!(
            targets.iter().all(|t| t["expr"].is_string()),
            "{}",
            p["title"]
        );
    }
    let wanted: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    assert!(wanted.len() >= 15, "{wanted:?}");

    // A Ballast with a TCP, a UDP and a TLS listener, and a target with a limit, exports
    // every family.
    let pki = common::pki::Pki::new();
    let tcp = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = pki.leaf_pem(&["example.com"]);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let yaml = format!(
        "workers: 2\nlisteners:\n\
         \x20 - {{name: t, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n\
         \x20 - {{name: u, protocol: udp, bind: '127.0.0.1:0', target_group: g}}\n\
         \x20 - {{name: s, protocol: tls, bind: '127.0.0.1:0', target_group: g, \
         tls: {{certificates: [{{cert: '{}', key: '{}'}}]}}}}\n\
         target_groups:\n  - name: g\n    health_check: {{protocol: tcp, interval: 60s, \
         timeout: 1s}}\n    targets: [{{address: '{}', max_connections: 100}}]\n",
        cert.display(),
        key.display(),
        tcp.addr
    );
    let lb = Ballast::start(&yaml);
    let (_, text) = scrape(lb.admin_addr());
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| metric_names(n).into_iter().next().unwrap_or_default())
        .collect();
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named by conf/monitoring but not exported: {missing:?}"
    );
}

//! One pick per algorithm over a group of 100 targets (criterion micro-benchmark).
//!
//! `cargo bench --bench pick`; the README's table comes from here.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;

use ballast::config::{self, Protocol};
use ballast::{for_algorithm, FiveTuple, Generation, Request};
use criterion::{criterion_group, criterion_main, Criterion};

fn group_yaml(algorithm: &str) -> String {
    let mut yaml = format!(
        "listeners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:1', target_group: g}}\n\
         target_groups:\n  - name: g\n    algorithm: {algorithm}\n    targets:\n"
    );
    for i in 0..100 {
        yaml += &format!(
            "      - {{address: '10.0.{}.{}:80', weight: {}}}\n",
            i / 250,
            i % 250 + 1,
            1 + i % 3
        );
    }
    yaml
}

fn picks(c: &mut Criterion) {
    for algorithm in [
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "random",
        "power_of_two",
        "source_hash",
        "maglev",
        "least_response_time",
    ] {
        let cfg = config::parse(Path::new("bench.yaml"), &group_yaml(algorithm)).unwrap();
        let generation = Generation::new(cfg);
        let group = &generation.groups[0];
        let mut b = for_algorithm(group.config.algorithm, group.config.hash_key);
        let mut port = 0u16;
        c.bench_function(&format!("pick/{algorithm}/100 targets"), |bench| {
            bench.iter(|| {
                port = port.wrapping_add(1);
                let request = Request::new(FiveTuple {
                    protocol: Protocol::Tcp,
                    client: SocketAddr::from(([192, 0, 2, (port % 251) as u8], port)),
                    listener: SocketAddr::from(([127, 0, 0, 1], 80)),
                });
                black_box(b.pick(group, black_box(&request), &[]))
            })
        });
    }
}

criterion_group!(benches, picks);
criterion_main!(benches);

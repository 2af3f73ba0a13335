//! A 100-key batch on a 3-node cluster against 100 single gets of the same kind of keys, in the
//! same run: real nodes on 127.0.0.1 (static peers) with `synth_getter` (64-byte values). Every
//! iteration asks for 100 keys never asked before, so every key is a miss at the node asked and
//! about two thirds are owned by the other nodes: the batch sends one `_batch` request per
//! owner, the single gets one peer request per key (16 gets in flight at a time).
//!
//! `cargo bench -p geecache-tests --bench batch`

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt as _;
use geecache_tests::{TestNode, plugins};

const KEYS: usize = 100;

fn benches(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let nodes = tokio.block_on(TestNode::cluster(
        3,
        &[
            "--plugin",
            plugins::SYNTH_GETTER,
            "--plugin-config",
            "synth_getter.value_bytes=64",
        ],
    ));
    let node = &nodes[0];
    let next = AtomicU64::new(0);
    let fresh_keys = || -> Vec<String> {
        let round = next.fetch_add(1, Ordering::Relaxed);
        (0..KEYS).map(|i| format!("r{round}-k{i}")).collect()
    };
    let mut group = c.benchmark_group("cluster_3_nodes_100_missing_keys");
    group.bench_function("one_batch", |b| {
        b.to_async(&tokio).iter(|| {
            let keys = fresh_keys();
            async move {
                assert_eq!(node.batch("scores", &keys).await.0, 200);
            }
        });
    });
    group.bench_function("single_gets_16_in_flight", |b| {
        b.to_async(&tokio).iter(|| {
            let keys = fresh_keys();
            async move {
                futures::stream::iter(keys)
                    .map(|key| async move {
                        let (status, _) = node.get(&format!("/api?key={key}")).await;
                        assert_eq!(status, 200);
                    })
                    .buffer_unordered(16)
                    .collect::<Vec<()>>()
                    .await;
            }
        });
    });
    group.finish();
    tokio.block_on(async {
        for n in nodes {
            n.stop().await;
        }
    });
}

criterion_group!(batch, benches);
criterion_main!(batch);

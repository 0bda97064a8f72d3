//! `cargo bench -p remora-bench --bench replica`: seal and open of whole
//! session replicas (JSON record, LZ4 when it pays, AES-256-GCM-SIV,
//! base64url) for sessions of about 1 KiB and 16 KiB, and seal+open with
//! LZ4 never tried (`lz4-never`), to weigh the compression. Goal: seal+open of a 1 KiB session under 5 us.
//! Prints the replica sizes once.

// `criterion_group!` defines a public function without a doc comment.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use remora_seal::{Keyring, Purpose, Sealer};
use remora_session::Record;
use remora_session::record::Attribute;
use remora_session::replica::{DEFAULT_MAX_LEN, ReplicaCodec};

/// A session whose JSON is about `target` bytes: a cart of realistic lines
/// and a user, like the demo shop's.
fn session(target: usize) -> Record {
    let mut r = Record::new(
        "Zm9vYmFyYmF6cXV4MTIzNDU2".into(),
        1_000,
        30 * 60_000,
        12 * 3_600_000,
    );
    r.version = 7;
    r.replica_seq = 1_700_000_000_000;
    r.attributes.insert(
        "user".into(),
        Attribute::from_value(&serde_json::json!("ann")).unwrap(),
    );
    let mut items = Vec::new();
    let mut i = 0u32;
    while serde_json::to_vec(&r).map(|v| v.len()).unwrap_or(0) + 64 * items.len() < target {
        items.push(serde_json::json!({ "sku": format!("sku-{:05}", i * 7919 % 100_000), "qty": 1 + i % 5, "note": format!("gift {i}") }));
        i += 1;
    }
    r.attributes.insert(
        "cart".into(),
        Attribute::from_value(&serde_json::Value::Array(items)).unwrap(),
    );
    r
}

fn replica(c: &mut Criterion) {
    let codec = ReplicaCodec::new(
        Sealer::new(&Keyring::generate(), Purpose::Replica),
        DEFAULT_MAX_LEN,
    );
    let never = ReplicaCodec::new(
        Sealer::new(&Keyring::generate(), Purpose::Replica),
        DEFAULT_MAX_LEN,
    )
    .with_lz4_min_json(usize::MAX);
    let mut group = c.benchmark_group("replica");
    for kib in [1usize, 16] {
        let rec = session(kib * 1024);
        let json = serde_json::to_vec(&rec).expect("json").len();
        let text = codec.seal(&rec).expect("seal");
        println!(
            "replica {kib}KiB: session JSON {json} B, replica {} chars of base64url",
            text.len()
        );
        let raw = never.seal(&rec).expect("seal");
        println!(
            "replica {kib}KiB with lz4-never: {} chars of base64url",
            raw.len()
        );
        let label = format!("{kib}KiB");
        group.bench_with_input(BenchmarkId::new("seal", &label), &rec, |b, r| {
            b.iter(|| codec.seal(black_box(r)))
        });
        group.bench_with_input(BenchmarkId::new("open", &label), &text, |b, t| {
            b.iter(|| codec.open(black_box(t), &rec.id, 2_000))
        });
        group.bench_with_input(BenchmarkId::new("seal+open", &label), &rec, |b, r| {
            b.iter(|| {
                let t = codec.seal(black_box(r)).expect("seal");
                codec.open(&t, &r.id, 2_000)
            })
        });
        group.bench_with_input(
            BenchmarkId::new("seal+open lz4-never", &label),
            &rec,
            |b, r| {
                b.iter(|| {
                    let t = never.seal(black_box(r)).expect("seal");
                    never.open(&t, &r.id, 2_000)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, replica);
criterion_main!(benches);

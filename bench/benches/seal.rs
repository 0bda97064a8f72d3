//! `cargo bench -p remora-bench --bench seal`: seal, open and seal+open of
//! 1 KiB and 16 KiB payloads with `remora-seal` (format version 2,
//! AES-256-GCM-SIV; goal: seal+open of 1 KiB far under 5 us).

// `criterion_group!` defines a public function without a doc comment.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use remora_seal::{Keyring, Purpose, Sealer};

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn seal(c: &mut Criterion) {
    let ring = Keyring::generate();
    let sealer = Sealer::new(&ring, Purpose::Replica);
    let aad = b"session-0123456789abcdef";
    let mut group = c.benchmark_group("seal");
    for len in [1024usize, 16 * 1024] {
        let plain = payload(len);
        let blob = sealer.seal(&plain, aad);
        assert_eq!(blob.len(), plain.len() + remora_seal::OVERHEAD);
        group.throughput(Throughput::Bytes(len as u64));
        let label = format!("{}KiB", len / 1024);
        group.bench_with_input(BenchmarkId::new("seal", &label), &plain, |b, p| {
            b.iter(|| sealer.seal(black_box(p), aad))
        });
        group.bench_with_input(BenchmarkId::new("open", &label), &blob, |b, blob| {
            b.iter(|| sealer.open(black_box(blob), aad))
        });
        group.bench_with_input(BenchmarkId::new("seal+open", &label), &plain, |b, p| {
            b.iter(|| {
                let blob = sealer.seal(black_box(p), aad);
                sealer.open(&blob, aad)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);

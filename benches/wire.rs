//! Micro-benchmarks of the per-message hot path: splitting and verifying
//! incoming frames, the routing decision, and encoding one delivery. These
//! are the costs paid per message per connection, so a regression here
//! shows up directly in loadgen's server CPU.

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use ringchat::model::{direct_conv, group_conv, home_shard, owner_shard};
use ringchat::store::StoredMessage;
use ringchat::wire::{self, Enc, FrameBuf};

fn frames(c: &mut Criterion) {
    // 64 SendMessage frames back to back, as one socket read would deliver them.
    let mut enc = Enc::new();
    let mut stream = Vec::new();
    for i in 0..64u64 {
        stream.extend_from_slice(enc.send_message(i + 1, 42, 0, i, &"x".repeat(64)));
    }
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(64));
    g.bench_function("split+verify 64 SendMessage", |b| {
        let mut fb = FrameBuf::new(1 << 16);
        b.iter(|| {
            let buf = fb.spare(stream.len());
            buf[..stream.len()].copy_from_slice(&stream);
            fb.filled(stream.len());
            let mut n = 0u64;
            while let Some(r) = fb.next_frame().expect("valid") {
                let env = wire::decode(fb.get(r)).expect("verifies");
                n += env.req_id();
            }
            black_box(n)
        })
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    c.bench_function("route: direct conv + owner + recipient home", |b| {
        let mut u = 1u64;
        b.iter(|| {
            u = u.wrapping_mul(6364136223846793005).wrapping_add(1) & 0xffff;
            let conv = direct_conv(u + 1, u + 2);
            black_box(owner_shard(conv, 2) + home_shard(u + 2, 2))
        })
    });
    c.bench_function("route: group owner", |b| {
        let mut g = 1u64;
        b.iter(|| {
            g += 1;
            black_box(owner_shard(group_conv(g), 2))
        })
    });
}

fn encode(c: &mut Criterion) {
    let msg = StoredMessage {
        conv: direct_conv(7, 8),
        seq: 12345,
        sender: 7,
        timestamp_ms: 1_700_000_000_000,
        client_msg_id: 99,
        body: "x".repeat(64),
        sender_name: "lg7".into(),
    };
    let mut enc = Enc::new();
    c.bench_function("encode Messages (1 delivery, 64 B body)", |b| {
        b.iter(|| black_box(enc.messages(0, std::iter::once(&msg)).len()))
    });
}

criterion_group!(benches, frames, routing, encode);
criterion_main!(benches);

//! What does a timer cost per connection: insert, lazy cancel (re-arm later = no-op) and expiry,
//! on a wheel already holding 10,000 live entries (a busy worker)?
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use wsplice::core::timer::Wheel;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_wheel");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("insert_1000_expire_1000_with_10k_live", |b| {
        let mut w = Wheel::new(1);
        for k in 0..10_000u32 {
            w.insert(k, 1_000_000 + k); // far future: stays in the wheel
        }
        let mut now = 1u32;
        b.iter(|| {
            for k in 0..1000u32 {
                w.insert(k, now + 1 + (k % 64));
            }
            now += 65;
            let mut n = 0;
            w.expire(now, |_, _| n += 1);
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

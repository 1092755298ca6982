//! Does route lookup stay flat as the table grows? Lookup of a deep path with 10 and 1,000 routes
//! (hash probe per `/`-boundary, so the cost follows path depth, not route count).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use wsplice::config::{ForwardedFor, Route};
use wsplice::core::route::RouteTable;

fn table(n: usize) -> RouteTable {
    let routes: Vec<Route> = (0..n)
        .map(|i| Route {
            prefix: format!("/svc{i}/v1"),
            host: (i % 3 == 0).then(|| format!("h{i}.example.com")),
            backends: vec!["127.0.0.1:1".parse().expect("addr")],
            strip_prefix: true,
            forwarded_for: ForwardedFor::Append,
            send_proxy: None,
            options: Default::default(),
        })
        .collect();
    RouteTable::new(&routes)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [10usize, 1000] {
        let t = table(n);
        let hit = format!("/svc{}/v1/room/42/events", n - 1);
        g.bench_with_input(BenchmarkId::new("hit_depth5", n), &hit, |b, path| {
            b.iter(|| black_box(t.lookup(black_box("push.example.com"), black_box(path))))
        });
        g.bench_with_input(
            BenchmarkId::new("miss_depth5", n),
            &"/nothing/here/at/all/x",
            |b, path| {
                b.iter(|| black_box(t.lookup(black_box("push.example.com"), black_box(path))))
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

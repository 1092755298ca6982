//! What does one upgrade request cost the proxy's CPU before any byte is relayed: frame + strict
//! pre-check + httparse + validation + route + rewrite, per request, for a typical browser head?
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::time::Instant;
use wsplice::config::{ForwardedFor, Route, Timeouts};
use wsplice::core::handshake::{Action, Handshake, Settings};
use wsplice::core::route::RouteTable;

const BROWSER_HEAD: &[u8] = b"GET /notice/room/42?token=abcdef0123456789 HTTP/1.1\r\n\
Host: push.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://www.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn settings() -> Settings {
    Settings::new(
        RouteTable::new(&[Route {
            prefix: "/notice".into(),
            host: None,
            backends: vec!["127.0.0.1:50001".parse().expect("addr")],
            strip_prefix: true,
            forwarded_for: ForwardedFor::Append,
            send_proxy: None,
            options: Default::default(),
        }]),
        Timeouts::default(),
    )
}

fn bench(c: &mut Criterion) {
    let s = settings();
    let now = Instant::now();
    let ip = "203.0.113.9".parse().expect("ip");
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_validate_route_rewrite", |b| {
        b.iter_batched(
            || Handshake::new(ip, now, &s),
            |mut hs| {
                let a = hs.handle_client_data(&s, now, black_box(BROWSER_HEAD));
                assert!(matches!(a, Action::Connect(_)));
                let _ = black_box(hs.handle_connected(&s, now));
                hs
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

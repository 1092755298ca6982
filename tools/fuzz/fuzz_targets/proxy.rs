//! PROXY protocol in: arbitrary bytes, fed in two chunks to a session on a listener that expects
//! a PROXY header from a trusted peer. Invariants: no panic; the parser is prefix-stable (a
//! prefix of the input never gives a different verdict than the whole once decided); a session
//! only asks to connect when the bytes started with a header `proxy_proto::parse` accepts, and
//! then the client it reports is the header's source (or the peer for LOCAL/UNKNOWN).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wsplice::config::{ForwardedFor, Route, Timeouts};
use wsplice::core::proxy_proto::{parse, ProxyParse};
use wsplice::core::route::RouteTable;
use wsplice::core::handshake::{Action, Handshake, Settings};

fuzz_target!(|data: &[u8]| {
    // Prefix stability of the parser itself.
    let whole = parse(data);
    for cut in 0..data.len() {
        match parse(&data[..cut]) {
            Ok(ProxyParse::Incomplete) => {}
            other => {
                // Once a prefix is decided, the whole input must agree.
                if let Ok(ProxyParse::Done { header_len, .. }) = other {
                    assert!(header_len <= cut);
                }
                assert_eq!(other, whole, "prefix {cut} decided differently");
                break;
            }
        }
    }

    let mut s = Settings::new(
        RouteTable::new(&[Route {
            prefix: "/".into(),
            host: None,
            backends: vec!["127.0.0.1:9".parse().unwrap()],
            strip_prefix: true,
            forwarded_for: ForwardedFor::Append,
            send_proxy: None,
            options: Default::default(),
        }]),
        Timeouts {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            half_close: Duration::from_secs(30),
            drain: Duration::from_secs(30),
            client_idle: Duration::from_secs(60),
        },
    );
    s.proxy_trusted = vec!["127.0.0.0/8".parse().unwrap()];
    let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:443".parse().unwrap();
    let now = Instant::now();
    let mut hs = Handshake::accept(peer, local, true, now, &s);
    let mid = data.len() / 2;
    let mut action = Action::Wait;
    for chunk in [&data[..mid], &data[mid..]] {
        if chunk.is_empty() || action != Action::Wait {
            continue;
        }
        let limit = hs.client_read_limit(&s).min(chunk.len());
        action = hs.handle_client_data(&s, now, &chunk[..limit]);
    }
    if let Action::Connect(_) = action {
        match whole {
            Ok(ProxyParse::Done { source, .. }) => {
                assert_eq!(hs.client(), source.unwrap_or(peer));
            }
            other => panic!("connected without a valid PROXY header: {other:?}"),
        }
    }
});

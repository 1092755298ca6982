//! The per-route origin allowlist over real sockets: upgrades and plain requests from another
//! `Origin` get 403 and never reach the backend; listed origins (any case) and requests
//! without `Origin` pass.

#[allow(unused_macros)]
#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use http::*;
use support::*;

#[test]
fn only_listed_origins_reach_the_backend() {
    run_auto(|_| async {
        let echo = EchoBackend::start().await;
        let origin = Origin::start().await;
        let allowed = "[\"https://app.example\", \"http://localhost:8080\"]";
        let p = with_routes(
            Proxy::builder(Relay::Auto),
            &[
                r("/ws", &[echo.addr]).key("origins", allowed),
                r("/", &[origin.addr]).key("origins", allowed),
            ],
        )
        .start()
        .await;
        let upgrade = |origin: &str| {
            let line = format!("Origin: {origin}");
            upgrade_request("/ws/chat", &[line.as_str()])
        };
        let answer = |bytes: Vec<u8>| {
            let addr = p.addr();
            async move {
                let mut c = Peer::connect(addr).await;
                c.send(&bytes).await;
                let m = c.head().await.expect("an answer");
                m.status
            }
        };
        for bad in [
            "https://evil.example",
            "https://app.example.evil",
            "null",
            "http://app.example",
        ] {
            assert_eq!(answer(upgrade(bad)).await, 403, "upgrade from {bad}");
            assert_eq!(
                answer(get("/page", &[&format!("Origin: {bad}")])).await,
                403,
                "request from {bad}"
            );
        }
        let two = get(
            "/page",
            &[
                "Origin: https://app.example",
                "Origin: https://evil.example",
            ],
        );
        assert_eq!(answer(two).await, 403, "two origins");
        assert_eq!(echo.log().connections, 0);
        assert_eq!(origin.accepted(), 0);

        assert_eq!(answer(upgrade("https://APP.example")).await, 101);
        assert_eq!(
            answer(get("/page", &["Origin: http://localhost:8080"])).await,
            200
        );
        assert_eq!(
            answer(get("/page", &[])).await,
            200,
            "no Origin: not a browser page"
        );
    });
}

//! Balancing per route over real sockets: the sticky cookie as the client sees it, hashing by
//! header, least connections across tunnels and requests. socket.io and SockJS sessions
//! across two backends are in tests/realtime.rs.

#[allow(unused_macros)]
#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use http::*;
use support::*;

/// Two origins that answer with their name ("a", "b") behind wsplice, balanced on "/" by
/// `keys` (route keys and their TOML values).
async fn balanced_pair(keys: &[(&str, &str)]) -> (Proxy, [Origin; 2]) {
    let a = Origin::with(|_| Reply::ok("a")).await;
    let b = Origin::with(|_| Reply::ok("b")).await;
    let route = keys
        .iter()
        .fold(r("/", &[a.addr, b.addr]), |route, (k, v)| route.key(k, v));
    (start_routes(&[route]).await, [a, b])
}

async fn fetch(p: &Proxy, path: &str, extra: &[&str]) -> Msg {
    let mut c = Peer::connect(p.addr()).await;
    c.send(&get(path, extra)).await;
    c.answer("GET").await
}

#[test]
fn sticky_cookie_is_set_once_with_its_attributes_and_followed() {
    run_auto(|_| async {
        let (p, _origins) = balanced_pair(&[
            ("balance", "\"cookie\""),
            ("cookie_name", "\"srv\""),
            ("cookie_secure", "true"),
            ("cookie_same_site", "\"none\""),
        ])
        .await;
        let first = fetch(&p, "/", &[]).await;
        let set = first
            .header("set-cookie")
            .expect("a sticky cookie")
            .to_owned();
        let (pair, attrs) = set.split_once("; ").expect("attributes");
        assert_eq!(attrs, "Path=/; HttpOnly; Secure; SameSite=None");
        let value = pair.strip_prefix("srv=").expect("named srv");
        assert_eq!(value.len(), 16, "{set}");
        // Every request with the cookie goes to the same backend, and gets no new cookie.
        let cookie = format!("Cookie: other=1; srv={value}");
        for _ in 0..10 {
            let m = fetch(&p, "/", &[&cookie]).await;
            assert_eq!(m.text(), first.text());
            assert_eq!(m.header("set-cookie"), None);
        }
        // A cookie naming no backend (stale, forged) is replaced.
        let m = fetch(&p, "/", &["Cookie: srv=0000000000000000"]).await;
        assert!(m
            .header("set-cookie")
            .is_some_and(|c| c.starts_with("srv=")));
        // Without cookies, requests are spread.
        let names: std::collections::BTreeSet<String> =
            futures_util::future::join_all((0..6).map(|_| fetch(&p, "/", &[])))
                .await
                .into_iter()
                .map(|m| m.text())
                .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    });
}

#[test]
fn hash_by_header_keeps_each_key_on_one_backend() {
    run_auto(|_| async {
        let (p, _origins) =
            balanced_pair(&[("balance", "\"hash\""), ("hash_key", "\"header:X-User\"")]).await;
        let mut seen = std::collections::BTreeMap::new();
        for round in 0..3 {
            for user in 0..20 {
                let h = format!("X-User: u{user}");
                let got = fetch(&p, "/", &[&h]).await.text();
                let first = seen.entry(user).or_insert_with(|| got.clone());
                assert_eq!(*first, got, "user {user} moved in round {round}");
            }
        }
        let on_a = seen.values().filter(|v| *v == "a").count();
        assert!((3..=17).contains(&on_a), "20 keys, {on_a} on a: {seen:?}");
    });
}

#[test]
fn least_conn_sends_new_tunnels_to_the_emptiest_backend() {
    run_auto(|_| async {
        let a = EchoBackend::start().await;
        let b = EchoBackend::start().await;
        // With worker processes the loads are shared (tests/workers_http.rs checks a choice
        // across workers).
        let p = with_routes(
            Proxy::builder(Relay::Auto),
            &[r("/", &[a.addr, b.addr]).key("balance", "\"least_conn\"")],
        )
        .start()
        .await;
        let mut open = Vec::new();
        for i in 0..4 {
            let mut ws = ws_connect(&p, "/").await;
            ws_echo_once(&mut ws, &format!("t{i}")).await;
            open.push(ws);
        }
        assert_eq!((a.log().connections, b.log().connections), (2, 2));
        // Close the two tunnels to `a`: its load drops to 0 while `b` holds 2.
        let to_a: Vec<usize> = (0..4).filter(|i| i % 2 == 0).collect();
        for i in to_a.into_iter().rev() {
            let mut ws = open.remove(i);
            let _ = futures_util::SinkExt::close(&mut ws).await;
        }
        // Give the proxy a moment to see the closes.
        eventually("the closed tunnels to be released", STEP, || {
            a.log().closes.len() == 2
        })
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for i in 0..2 {
            let mut ws = ws_connect(&p, "/").await;
            ws_echo_once(&mut ws, &format!("n{i}")).await;
            open.push(ws);
        }
        assert_eq!(
            (a.log().connections, b.log().connections),
            (4, 2),
            "both new tunnels went to the emptier backend"
        );
    });
}

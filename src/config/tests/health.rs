//! `[route.health]` and weighted backends: read, defaulted, and every mistake named.

use super::*;

#[test]
fn health_and_weights_are_read() {
    let cfg = parse(
        r#"listen = ["127.0.0.1:8080"]
[[route]]
prefix = "/a"
backends = ["127.0.0.1:9", { addr = "127.0.0.1:10", weight = 3 }]
[route.health]
kind = "http"
path = "/healthz?deep=1"
expect_status = 204
interval = "500ms"
timeout = "250ms"
rise = 1
fall = 4
eject_after = 0
max_ejected_percent = 20
[[route]]
prefix = "/b"
backends = ["127.0.0.1:9"]
[route.health]
kind = "websocket"
[[route]]
prefix = "/c"
backends = [{ addr = "127.0.0.1:9" }, "127.0.0.1:11"]
"#,
    )
    .unwrap();
    let a = &cfg.routes[0];
    assert_eq!(a.backends.len(), 2);
    assert_eq!(a.options.weights, [1, 3]);
    let h = a.options.health.as_ref().unwrap();
    let c = h.check.as_ref().unwrap();
    assert_eq!(
        (c.kind, c.path.as_str(), c.expect_status),
        (CheckKind::Http, "/healthz?deep=1", 204)
    );
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_millis(500), Duration::from_millis(250))
    );
    assert_eq!(
        (h.rise, h.fall, h.eject_after, h.max_ejected_percent),
        (1, 4, 0, 20)
    );
    let b = cfg.routes[1].options.health.as_ref().unwrap();
    assert_eq!(
        b.check.as_ref().map(|c| (c.kind, c.expect_status)),
        Some((CheckKind::WebSocket, 101))
    );
    assert_eq!((b.rise, b.fall, b.eject_after), (2, 3, 5));
    // All weights 1: nothing to keep.
    assert!(cfg.routes[2].options.weights.is_empty());
    assert!(cfg.routes[2].options.health.is_none());
}

#[test]
fn health_mistakes_name_the_key() {
    let route = "[[route]]\nprefix = \"/\"\n";
    for (body, key, want) in [
        (
            "backends = [{ addr = \"127.0.0.1:9\", weight = 0 }]\n",
            "route.backends.weight",
            "between 1 and 256",
        ),
        (
            "backends = [{ weight = 2 }]\n",
            "route.backends.addr",
            "missing required key",
        ),
        (
            "backends = [{ addr = \"127.0.0.1:9\", wieght = 2 }]\n",
            "route.backends.wieght",
            "unknown key",
        ),
        ("backends = [1]\n", "route.backends", "expected a string"),
        (
            "backends = [\"127.0.0.1:9\"]\n[route.health]\nkind = \"udp\"\n",
            "route.health.kind",
            "\"tcp\"",
        ),
        (
            "backends = [\"127.0.0.1:9\"]\n[route.health]\npath = \"/x\"\n",
            "route.health.path",
            "add kind",
        ),
        (
            "backends = [\"127.0.0.1:9\"]\n[route.health]\nkind = \"tcp\"\nexpect_status = 200\n",
            "route.health.expect_status",
            "kind = \"http\"",
        ),
        (
            "backends = [\"127.0.0.1:9\"]\n[route.health]\nkind = \"http\"\npath = \"x\"\n",
            "route.health.path",
            "must start with '/'",
        ),
        (
            "backends = [\"127.0.0.1:9\"]\n[route.health]\nfall = 0\n",
            "route.health.fall",
            "between 1 and 100",
        ),
        (
            "backends = [\"127.0.0.1:9\"]\n[route.health]\nmax_ejected_percent = 101\n",
            "route.health.max_ejected_percent",
            "between 0 and 100",
        ),
        (
            "backends = [\"127.0.0.1:9\"]\n[route.health]\neject_time = \"10m\"\n",
            "route.health",
            "raise eject_max_time",
        ),
        (
            "backends = [\"127.0.0.1:9\"]\n[route.health]\nintervall = \"1s\"\n",
            "route.health.intervall",
            "unknown key",
        ),
    ] {
        let e = error_for(&format!("{LISTEN}{route}{body}"));
        assert_eq!(e.key(), Some(key), "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    let heavy: Vec<String> = (0..300)
        .map(|i| format!("{{ addr = \"127.0.0.1:{}\", weight = 256 }}", 1000 + i))
        .collect();
    let e = error_for(&format!(
        "{LISTEN}{route}backends = [{}]\n",
        heavy.join(", ")
    ));
    assert!(e.to_string().contains("the weights add up to 76800"), "{e}");
}

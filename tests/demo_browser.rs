//! `wsplice demo` in a real browser: headless Chromium (the Debian `chromium` package) opens
//! the demo page, whose script connects to `/notice` and `/msg` through the proxy asking for
//! the subprotocols `chat, superchat`. The test reads from the live page's DOM (over the
//! DevTools protocol, support/browser.rs) that both tunnels opened with the subprotocol
//! `chat` answered (Chrome fails a connection whose answer names none it asked for), that
//! notices arrive, and that what the page sent on `/msg` (`?send=...`, then a second message
//! typed into its form) came back.
//!
//! Drivers: under epoll and io_uring alike the page itself comes from the proxy (`GET /`
//! forwarded to the demo's page backend), and its WebSockets go through the same proxy.
//! Relay modes: the demo runs with the default (`auto`); the relay modes are covered by
//! tests/demo.rs's clients and tests/e2e.rs.
//!
//! Without Chromium the test says so and passes, unless `CI` or `WSPLICE_REQUIRE_BROWSER` is
//! set (`.ci/run` sets it and installs the package): then it fails.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::browser::{chromium, LivePage};
use support::{Driver, Proxy};

/// Generous: Chromium starts slowly on a loaded machine.
const WITHIN: Duration = Duration::from_secs(60);

/// What the proxy answers to `GET /` on a fresh connection: the status line.
fn status_of_root(proxy: SocketAddr) -> String {
    let request = b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n";
    let answer = support::blocking::exchange(proxy, request, Duration::from_secs(10));
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or("").to_owned()
}

fn demo_in_browser(driver: Driver) {
    let Some(bin) = chromium() else { return };
    let demo = Proxy::blocking_start_args(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--driver",
        driver.as_str(),
    ]);
    let proxy = demo.addr();
    let token = format!("hello-{}-{}", std::process::id(), driver.as_str());
    let root = status_of_root(proxy);
    assert_eq!(root, "HTTP/1.1 200 OK", "the page through the proxy");
    let url = format!("http://{proxy}/?send={token}");
    let mut page = LivePage::open(&bin, &url);

    // Both tunnels open with the subprotocol answered; a notice and the echo arrive.
    let tunnels_up = |dom: &support::browser::Dom| {
        let open = |id| {
            dom.all("id", Some(id))
                .first()
                .is_some_and(|t| t.get("data-state").map(String::as_str) == Some("open"))
        };
        let count = |id| {
            dom.all("id", Some(id))
                .first()
                .and_then(|t| t.get("data-count"))
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0)
        };
        open("notice-state") && open("msg-state") && count("notices") >= 2 && count("echoes") >= 1
    };
    let html = page.wait_for("two notices and the echo", WITHIN, tunnels_up);
    let dom = support::browser::Dom::parse(&html);
    for id in ["notice-state", "msg-state"] {
        assert_eq!(
            dom.one("id", id).get("data-protocol").map(String::as_str),
            Some("chat"),
            "{id}: the first of `chat, superchat` is answered"
        );
    }
    let notices = dom.one("id", "notices");
    let last = &notices["data-last"];
    assert!(
        last.starts_with("{\"notice\":") && last.ends_with("\"}"),
        "a notice as the backend sends it: {last}"
    );
    let n: u64 = last["{\"notice\":".len()..]
        .split(',')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a numbered notice: {last}"));
    assert!(n >= 2, "the second notice or later: {last}");
    let echoes = dom.one("id", "echoes");
    assert_eq!(echoes["data-last"], token, "the echo of ?send=");
    assert_eq!(echoes["data-count"], "1");

    // A message typed into the page's form comes back too.
    page.eval(
        "document.getElementById('text').value = 'typed into the form'; \
         document.getElementById('send').requestSubmit(); true",
    );
    let html = page.wait_for("the echo of the form's message", WITHIN, |dom| {
        dom.all("id", Some("echoes"))
            .first()
            .is_some_and(|t| t.get("data-last").map(String::as_str) == Some("typed into the form"))
    });
    let dom = support::browser::Dom::parse(&html);
    assert_eq!(dom.one("id", "echoes")["data-count"], "2");
    // Nothing closed on the way.
    assert_eq!(dom.one("id", "msg-state")["data-state"], "open");
    assert_eq!(dom.one("id", "notice-state")["data-state"], "open");
    drop(page);
    drop(demo);
}

drivers!(demo_page_in_chromium, demo_in_browser);

//! `wsplice demo`, the README's first command: the proxy and its built-in backends serve the
//! demo page over HTTP and answer real WebSocket clients, subprotocols included.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use support::Proxy;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn demo_pushes_notices_and_echoes() {
    let demo = Proxy::start_args(&["demo", "--listen", "127.0.0.1:0"]).await;
    let addr = demo.addr();

    let work = async {
        let (mut notice, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/notice"))
            .await
            .expect("connect /notice");
        for _ in 0..2 {
            let m = notice.next().await.expect("a notice").expect("frame");
            let text = m.into_text().expect("text");
            assert!(text.starts_with("{\"notice\":"), "{text}");
        }
        let (mut msg, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/msg"))
            .await
            .expect("connect /msg");
        msg.send(Message::text("hello")).await.expect("send");
        let back = msg.next().await.expect("echo").expect("frame");
        assert_eq!(back.into_text().expect("text").as_str(), "hello");

        // The page, through the HTTP path, on a keep-alive connection.
        let (all, end) = support::send_and_read_all(
            &demo,
            b"GET / HTTP/1.1\r\nHost: demo\r\n\r\nHEAD / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(end, support::End::Eof, "closed after the HEAD answer");
        let all = String::from_utf8_lossy(&all);
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
        assert!(all.contains("Content-Type: text/html"), "{all}");
        assert!(all.contains("new WebSocket(url(\"/msg\"), [\"chat\", \"superchat\"])"));
        assert_eq!(
            all.matches("HTTP/1.1 200 OK").count(),
            2,
            "GET then HEAD: {all}"
        );
        assert!(all.ends_with("\r\n\r\n"), "the HEAD answer has no body");

        // A browser asking for subprotocols gets the first one back.
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/msg")
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "chat, superchat".parse().expect("header value"),
        );
        let (_ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.as_bytes()),
            Some(&b"chat"[..])
        );
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("demo answered in time");
}

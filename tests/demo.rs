//! `wsplice demo`, the README's first command: the proxy and its two built-in backends answer
//! real WebSocket clients.

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
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("demo answered in time");
}

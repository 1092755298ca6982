//! `wsplice demo`, the README's first command: the proxy and its two built-in backends answer
//! real WebSocket clients.

use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn demo_pushes_notices_and_echoes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsplice"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wsplice demo");
    let out = child.stdout.take().expect("stdout");
    let _guard = Kill(child);
    let addr = tokio::task::spawn_blocking(move || {
        let mut addr = None;
        for line in BufReader::new(out).lines() {
            let line = line.expect("stdout");
            if let Some(rest) = line.strip_prefix("listen ") {
                addr = rest.split_whitespace().next().map(str::to_string);
            }
            if line == "ready" {
                break;
            }
        }
        addr.expect("listen line")
    })
    .await
    .expect("startup");

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

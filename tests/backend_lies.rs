//! Backends that lie: a raw TCP backend reads the proxied head, then answers something that is
//! not a WebSocket `101`. For each lie: what the client gets, that the client's connection ends
//! (EOF within [`STEP`]), that no client byte sent with or after the head reaches the backend
//! (there is no tunnel), and that the proxy still serves a real WebSocket afterwards.

#[macro_use]
mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

const MAX_HEAD: usize = 4096;
/// Sent by the client together with its head, and again after the answer: must never reach the
/// backend unless a valid 101 opened the tunnel.
const PIPELINED: &[u8] = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
const AFTER: &[u8] = b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// What the client must receive.
enum Want {
    /// The proxy's own answer with this status (and `Connection: close`).
    Status(u16),
    /// Exactly these bytes, relayed from the backend.
    Exact(Vec<u8>),
}

/// One lie: the backend writes `chunks` (pausing between them), then closes if `close`. The
/// proxy only checks that `Sec-WebSocket-Accept` is there, so the lies use [`ACCEPT`].
struct Lie {
    chunks: Vec<Vec<u8>>,
    close: bool,
    want: Want,
}

fn ok_101() -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    )
}

fn without(line: &str) -> Vec<u8> {
    let r = ok_101();
    assert!(r.contains(line), "{line:?} not in the 101");
    r.replace(line, "").into_bytes()
}

fn lie(chunks: Vec<Vec<u8>>, want: Want) -> Lie {
    Lie {
        chunks,
        close: false,
        want,
    }
}

/// A lie after which the backend closes its socket.
fn lie_then_close(chunks: Vec<Vec<u8>>, want: Want) -> Lie {
    Lie {
        close: true,
        ..lie(chunks, want)
    }
}

async fn tell(relay: Relay, lie: Lie) {
    let backend = RawBackend::start().await;
    let echo = EchoBackend::start().await;
    let proxy = Proxy::builder(relay)
        .timeout("handshake", "3s")
        .limit("max_head_bytes", MAX_HEAD)
        .route(route("/lie", &[backend.addr]))
        .route(route("/echo", &[echo.addr]))
        .start()
        .await;

    let mut first = upgrade_request("/lie/x", &[]);
    first.extend_from_slice(PIPELINED);
    let mut client = send(&proxy, &first).await;

    let (mut server, head) = backend.next_head_alone().await;
    assert_eq!(first_line(&head), "GET /x HTTP/1.1");
    let n = lie.chunks.len();
    for (i, chunk) in lie.chunks.iter().enumerate() {
        // The proxy may have given up already (an oversized head): ignore write errors.
        let _ = server.write_all(chunk).await;
        if i + 1 < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut server = if lie.close {
        drop(server);
        None
    } else {
        Some(server)
    };

    // The client's answer, then EOF (or a reset after it) within STEP.
    let (got, _end) = read_to_end(&mut client, STEP).await;
    match &lie.want {
        Want::Status(code) => {
            assert_status(&got, *code, "client");
            let close = header(&got, "connection").unwrap_or_default();
            assert!(
                close.eq_ignore_ascii_case("close"),
                "no Connection: close in {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        Want::Exact(bytes) => assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(bytes),
            "the backend's answer must be relayed as is"
        ),
    }
    // Whatever the client sends now goes nowhere.
    let _ = client.write_all(AFTER).await;
    if let Some(server) = server.as_mut() {
        assert_closed_without_bytes(server, "client bytes at the backend without a tunnel").await;
    }
    assert_eq!(backend.accepted(), 1, "one backend connection");

    assert_still_serving(&proxy, "/echo", "still serving").await;
}

e2e!(switch_without_upgrade_is_502, |relay| async move {
    let answer = without("Upgrade: websocket\r\n");
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(switch_without_connection_is_502, |relay| async move {
    let answer = without("Connection: Upgrade\r\n");
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(switch_without_accept_is_502, |relay| async move {
    let answer = without(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n"));
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(switch_with_empty_accept_is_502, |relay| async move {
    let answer = ok_101().replace(ACCEPT, "").into_bytes();
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(switch_to_h2c_is_502, |relay| async move {
    let answer = ok_101().replace("websocket", "h2c").into_bytes();
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(switch_with_two_upgrades_is_502, |relay| async move {
    let answer = ok_101()
        .replace("\r\n\r\n", "\r\nUpgrade: h2c\r\n\r\n")
        .into_bytes();
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(http10_switch_is_502, |relay| async move {
    let answer = ok_101().replace("HTTP/1.1", "HTTP/1.0").into_bytes();
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(
    upgrade_required_relayed_without_tunnel,
    |relay| async move {
        let answer =
            b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
        Content-Length: 0\r\n\r\n"
                .to_vec();
        tell(relay, lie(vec![answer.clone()], Want::Exact(answer))).await;
    }
);

e2e!(ok_with_body_relayed_then_closed, |relay| async move {
    // The body ends at Content-Length: what follows is not relayed, and the backend's socket
    // stays open, so the proxy must end the exchange itself.
    let answer =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    let mut sent = answer.clone();
    sent.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
    tell(relay, lie(vec![sent], Want::Exact(answer))).await;
});

e2e!(ok_until_close_relayed, |relay| async move {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until close".to_vec();
    tell(
        relay,
        lie_then_close(vec![answer.clone()], Want::Exact(answer)),
    )
    .await;
});

e2e!(oversized_answer_head_is_502, |relay| async move {
    let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-Big: ".to_vec();
    answer.extend(std::iter::repeat_n(b'a', MAX_HEAD + 100));
    answer.extend_from_slice(
        format!("\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n").as_bytes(),
    );
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(oversized_answer_head_in_pieces_is_502, |relay| async move {
    let mut chunks = vec![b"HTTP/1.1 101 Switching Protocols\r\n".to_vec()];
    for i in 0..(MAX_HEAD / 1000 + 1) {
        chunks.push(format!("X-Pad-{i}: {}\r\n", "p".repeat(1000)).into_bytes());
    }
    tell(relay, lie(chunks, Want::Status(502))).await;
});

e2e!(close_mid_head_is_502, |relay| async move {
    let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: webs".to_vec();
    tell(relay, lie_then_close(vec![answer], Want::Status(502))).await;
});

e2e!(close_without_answer_is_502, |relay| async move {
    tell(relay, lie_then_close(vec![], Want::Status(502))).await;
});

e2e!(garbage_is_502, |relay| async move {
    let answer = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec();
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(non_http_banner_is_502, |relay| async move {
    let answer = b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec();
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(garbage_then_close_is_502, |relay| async move {
    let answer = b"\x00\xffnot http at all".to_vec();
    tell(relay, lie_then_close(vec![answer], Want::Status(502))).await;
});

e2e!(continue_then_switch_is_502, |relay| async move {
    let mut answer = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
    answer.extend_from_slice(ok_101().as_bytes());
    tell(relay, lie(vec![answer], Want::Status(502))).await;
});

e2e!(
    continue_then_switch_in_two_writes_is_502,
    |relay| async move {
        let chunks = vec![
            b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
            ok_101().into_bytes(),
        ];
        tell(relay, lie(chunks, Want::Status(502))).await;
    }
);

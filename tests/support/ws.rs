//! WebSocket: a tokio-tungstenite client through the proxy, and frames made by hand for raw
//! tunnels.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{connect, tls, Proxy, STEP};

/// Largest message the tungstenite peers accept (the suite sends up to 16 MiB).
pub const MAX_MESSAGE: usize = 64 << 20;

/// The tungstenite settings of both the test client and the [`super::EchoBackend`].
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

pub type Ws = WebSocketStream<super::tls::ClientStream>;

/// A tokio-tungstenite client through the proxy to `path`; over TLS (rustls) to a TLS proxy.
pub async fn ws_connect(proxy: &Proxy, path: &str) -> Ws {
    let stream = match proxy.tls_addr() {
        Some(addr) => {
            let config = tls::shared().0.client();
            match tokio::time::timeout(STEP, tls::connect(addr, config, tls::SERVER_NAME)).await {
                Ok(Ok(s)) => tls::ClientStream::Tls(Box::new(s)),
                Ok(Err(e)) => panic!("TLS handshake with the proxy: {e}"),
                Err(_) => panic!("TLS handshake with the proxy timed out"),
            }
        }
        None => tls::ClientStream::Plain(connect(proxy).await),
    };
    let url = proxy.url(path);
    match tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config())),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => panic!("WebSocket handshake through the proxy to {url}: {e}"),
        Err(_) => panic!("WebSocket handshake through the proxy to {url} timed out"),
    }
}

/// The next message that is not a ping/pong, within [`STEP`] (six times that under an
/// emulator, where a 16 MiB message through TLS takes seconds of emulated crypto).
pub async fn ws_recv(ws: &mut Ws) -> Message {
    let wait = if super::emulated() { STEP * 6 } else { STEP };
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => panic!("no message within {wait:?}"),
            Ok(None) => panic!("stream ended"),
            Ok(Some(Err(e))) => panic!("receive error: {e}"),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(m))) => return m,
        }
    }
}

/// Sends one text message and expects it back.
pub async fn ws_echo_once(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned()))
        .await
        .expect("send text");
    match ws_recv(ws).await {
        Message::Text(t) => assert_eq!(t.as_str(), text, "echoed text differs"),
        other => panic!("expected the text echo, got {other:?}"),
    }
}

/// The proxy still serves: a fresh WebSocket to the echo route `path` echoes `text`.
pub async fn assert_still_serving(proxy: &Proxy, path: &str, text: &str) {
    let mut ws = ws_connect(proxy, path).await;
    ws_echo_once(&mut ws, text).await;
}

/// A FIN frame with `opcode`, masked (client to server).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = frame_header(opcode, payload.len(), true);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A FIN frame with `opcode`, unmasked (server to client).
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame_header(opcode, payload.len(), false);
    f.extend_from_slice(payload);
    f
}

fn frame_header(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
    let m = if masked { 0x80 } else { 0 };
    let mut f = vec![0x80 | opcode];
    if len < 126 {
        f.push(m | len as u8);
    } else if len <= 0xffff {
        f.push(m | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(m | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f
}

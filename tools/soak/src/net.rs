//! Sockets: source addresses, connecting, resets, limits, and short error reasons used as tally
//! keys.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wsbench::common::Target;
pub use wsbench::common::{io_reason, raise_nofile, ws_reason, Sources, Ws};

/// Small buffers: thousands of mostly idle connections, and tungstenite allocates its read
/// buffer eagerly (128 KiB by default). Messages go up to 256 KiB, well under the cap.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8192)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// One TCP connection from the next source address and a WebSocket client handshake
/// (tungstenite checks the 101 and `Sec-WebSocket-Accept`). The error is a tally key.
pub async fn connect(proxy: SocketAddr, sources: &Sources) -> Result<Ws, String> {
    let target = Target {
        url: format!("ws://{proxy}/soak"),
        addr: proxy,
    };
    wsbench::common::connect(&target, sources, ws_config()).await
}

/// Drops the connection with a RST instead of a FIN (SO_LINGER 0), whatever is in flight.
pub fn reset(ws: Ws) {
    let _ = socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
    drop(ws);
}

/// TCP half-close of our side (FIN), leaving the read side open.
pub fn shutdown_write(ws: &Ws) {
    let _ = socket2::SockRef::from(ws.get_ref()).shutdown(std::net::Shutdown::Write);
}

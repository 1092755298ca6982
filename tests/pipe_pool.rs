//! The splice pipe pool at its cap (`[splice] max_pipes`): a tunnel whose pipe still holds bytes
//! keeps it (backpressure), the next tunnel that needs a pipe is served by the copy path instead,
//! byte-exact, and the counters in /metrics show both. Then the held pipe drains and comes back.
//!
//! Blocking std sockets with read timeouts: nothing can hang.

mod common;

use common::{read_head, start, upgrade_head, ACCEPT};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const STEP: Duration = Duration::from_secs(10);
/// What the stalled tunnel's client pushes: far more than socket buffers plus one pipe hold.
const PUSH: usize = 16 << 20;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// In a thread: accepts one connection, answers its upgrade with a 101, hands the socket over.
fn accept_101(l: &TcpListener) -> mpsc::Receiver<TcpStream> {
    let l = l.try_clone().expect("clone listener");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut s, _) = l.accept().expect("backend accept");
        s.set_read_timeout(Some(STEP)).expect("timeout");
        read_head(&mut s).expect("backend reads the head");
        write!(s, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n").expect("101");
        let _ = tx.send(s);
    });
    rx
}

fn client(proxy: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(STEP)).expect("timeout");
    s.write_all(upgrade_head(path).as_bytes())
        .expect("send head");
    let head = read_head(&mut s).expect("answer");
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[test]
fn pool_at_its_cap_falls_back_to_copy_and_counts_it() {
    let stall_l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let echo_l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\nrelay = \"splice\"\nadmin = \"127.0.0.1:0\"\n\
         [splice]\nmax_pipes = 1\n\
         [[route]]\nprefix = \"/stall\"\nbackends = [\"{}\"]\n\
         [[route]]\nprefix = \"/echo\"\nbackends = [\"{}\"]\n",
        stall_l.local_addr().expect("addr"),
        echo_l.local_addr().expect("addr"),
    );
    let p = start(&toml, "");

    // Tunnel A: the client pushes 16 MiB while its backend reads nothing. The proxy's one pipe
    // fills and stays with A, holding bytes.
    let a_backend = accept_101(&stall_l);
    let mut a = client(p.addr, "/stall");
    let mut a_backend = a_backend.recv_timeout(STEP).expect("A's backend");
    let mut a_writer = a.try_clone().expect("clone");
    let pusher = thread::spawn(move || {
        let data: Vec<u8> = (0..PUSH).map(pattern).collect();
        a_writer.write_all(&data).map_err(|e| e.to_string())
    });
    common::eventually("tunnel A to hold the only pipe", STEP, || {
        p.metric("wsplice_pipes_in_use") == 1
    });

    // Tunnel B needs a pipe too, there is none: it is served by copying, byte-exact.
    let b_backend = accept_101(&echo_l);
    let mut b = client(p.addr, "/echo");
    let mut b_backend = b_backend.recv_timeout(STEP).expect("B's backend");
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            match b_backend.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if b_backend.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = done_tx.send(());
    });
    let msg: Vec<u8> = (0..256 << 10).map(|i| pattern(i * 7)).collect();
    let mut writer = b.try_clone().expect("clone");
    let sent = msg.clone();
    let w = thread::spawn(move || writer.write_all(&sent).map_err(|e| e.to_string()));
    let mut back = vec![0u8; msg.len()];
    b.read_exact(&mut back).expect("echo through the copy path");
    w.join().expect("writer").expect("write");
    assert!(back == msg, "echo through the copy path is not byte-exact");
    common::eventually("the counters to be published", STEP, || {
        p.metric("wsplice_bytes_copied_total") >= 2 * msg.len() as u64
    });
    assert!(p.metric("wsplice_copy_fallbacks_total") >= 1);
    assert!(p.metric("wsplice_pipes_unavailable_total") >= 1);
    assert_eq!(
        p.metric("wsplice_pipes_in_use"),
        1,
        "A still holds its pipe"
    );
    assert_eq!(p.metric("wsplice_pipes_created_total"), 1, "the cap held");
    drop(b);
    done_rx
        .recv_timeout(STEP)
        .expect("B's backend saw the close");

    // A's backend now reads everything: every byte arrives, in order, and the pipe comes back.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    while got < PUSH {
        let n = a_backend.read(&mut buf).expect("A's backend reads");
        assert!(n > 0, "A's stream ended after {got} bytes");
        for (k, &byte) in buf[..n].iter().enumerate() {
            assert_eq!(byte, pattern(got + k), "A's byte {} differs", got + k);
        }
        got += n;
    }
    pusher
        .join()
        .expect("pusher")
        .expect("A's client wrote all");
    common::eventually("the drained pipe to return to the pool", STEP, || {
        p.metric("wsplice_pipes_in_use") == 0 && p.metric("wsplice_pipes_pooled") == 1
    });
    // And the returned pipe serves the next tunnel: nothing more is copied.
    let copied = p.metric("wsplice_bytes_copied_total");
    let spliced = p.metric("wsplice_bytes_spliced_total");
    a.write_all(b"spliced again").expect("write");
    let mut four = [0u8; 13];
    a_backend.read_exact(&mut four).expect("read");
    assert_eq!(&four, b"spliced again");
    common::eventually("the counters to be published", STEP, || {
        p.metric("wsplice_bytes_spliced_total") >= spliced + 13
    });
    assert_eq!(p.metric("wsplice_bytes_copied_total"), copied);
}

//! uwsgi backends (`protocol = "uwsgi"`, nginx's `uwsgi_pass`) against a real uWSGI from
//! Debian's packages (`uwsgi`, `uwsgi-plugin-python3`, installed by .ci/run) serving
//! tests/uwsgi/app.py, a WSGI app that answers with its CGI variables and a digest of the body
//! it read.
//!
//! ```text
//!   raw client ──HTTP/1.1──▶ wsplice ──uwsgi packet + body──▶ uWSGI ─▶ app.py
//! ```

#[allow(unused_macros)]
#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use http::*;
use support::*;
use tokio::process::{Child, Command};

/// A uWSGI serving the test app on 127.0.0.1, killed on drop.
async fn uwsgi() -> (Child, SocketAddr) {
    assert!(
        std::path::Path::new("/usr/bin/uwsgi").exists(),
        "uWSGI is not installed: apt-get install uwsgi uwsgi-plugin-python3 (as .ci/run does)"
    );
    let app = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/uwsgi/app.py");
    for _ in 0..3 {
        // A free port: the kernel's pick, released for uWSGI to bind (another process may take
        // it meanwhile: then try again).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = Command::new("/usr/bin/uwsgi")
            .args(["--plugins", "python3", "--socket"])
            .arg(addr.to_string())
            .arg("--wsgi-file")
            .arg(&app)
            .args([
                "--processes",
                "1",
                "--threads",
                "4",
                "--buffer-size",
                "65535",
            ])
            .args(["--need-app", "--disable-logging", "--die-on-term"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("uwsgi runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break; // could not bind: another port
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return (child, addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("uWSGI did not start");
}

fn vars(m: &Msg) -> serde_json::Value {
    serde_json::from_slice(&m.body)
        .unwrap_or_else(|e| panic!("{e}: status {} {:?}", m.status, m.text()))
}

#[test]
fn uwsgi_backend_gets_cgi_variables_and_a_streamed_body() {
    run_auto(|_| async {
        let (_uwsgi, addr) = uwsgi().await;
        let p = start_routes(&[r("/app", &[addr]).key("protocol", "\"uwsgi\"")]).await;
        let mut c = Peer::connect(p.addr()).await;
        let client_port = c.s.local_addr().expect("local").port().to_string();

        // GET with a query, headers as HTTP_* variables, the client address.
        c.send(&get(
            "/app/hello/w%20x?a=1&b=two",
            &[
                "X-Custom: yes",
                "Cookie: a=1",
                "Cookie: b=2",
                "X_Real_IP: 6.6.6.6",
            ],
        ))
        .await;
        let a = c.answer("GET").await;
        assert_eq!(a.status, 200, "{:?}", a.text());
        let v = vars(&a);
        let proxy_port = p.addr().port().to_string();
        for (k, want) in [
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/hello/w%20x?a=1&b=two"),
            ("PATH_INFO", "/hello/w x"),
            ("SCRIPT_NAME", "/app"),
            ("QUERY_STRING", "a=1&b=two"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("REMOTE_PORT", client_port.as_str()),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", proxy_port.as_str()),
            ("HTTPS", "off"),
            ("HTTP_HOST", "localhost"),
            ("HTTP_X_CUSTOM", "yes"),
            ("HTTP_COOKIE", "a=1; b=2"),
            ("wsgi.url_scheme", "http"),
        ] {
            assert_eq!(v[k].as_str(), Some(want), "{k} in {v}");
        }
        assert_eq!(
            v["HTTP_X_REAL_IP"],
            serde_json::Value::Null,
            "a forged client address"
        );
        assert_eq!(v["body_len"], 0);

        // A 5 MiB POST on the same client connection, streamed to the app.
        let body = pattern(5 << 20, 3);
        c.send(&post_octets("/app/upload", &body)).await;
        let a = c.answer("POST").await;
        let v = vars(&a);
        assert_eq!(v["body_len"], body.len());
        assert_eq!(v["CONTENT_LENGTH"].as_str(), Some("5242880"));
        assert_eq!(v["CONTENT_TYPE"].as_str(), Some("application/octet-stream"));
        use sha1::Digest as _;
        let want: String = sha1::Sha1::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v["body_sha1"].as_str(), Some(want.as_str()));

        // uwsgi takes no chunked body (411) and no upgrade (400).
        c.send(b"POST /app/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                .await;
        let a = c.answer("POST").await;
        assert_eq!(a.status, 411);
        let mut ws = Peer::connect(p.addr()).await;
        ws.send(&upgrade_request("/app/ws", &[])).await;
        assert_eq!(ws.answer("GET").await.status, 400);
    });
}

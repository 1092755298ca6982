//! Shared by the targets: the configuration they run under and a strict head checker.
#![allow(dead_code)]

use std::sync::OnceLock;
use wsplice::config::Config;
use wsplice::core::route::RouteTable;
use wsplice::core::handshake::Settings;

/// Small limits so the overflow paths are reachable; three backends on `/notice` so fail-over
/// runs; `/r` replaces X-Forwarded-For, everything else appends.
pub const CONFIG: &str = r#"
listen = ["127.0.0.1:8000"]

[timeouts]
handshake = "10s"
connect = "5s"

[limits]
max_head_bytes = "2KiB"
max_headers = 16

[[route]]
prefix = "/notice"
backends = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]

[[route]]
prefix = "/r"
backends = ["127.0.0.1:4"]
forwarded_for = "replace"
strip_prefix = false

[[route]]
prefix = "/"
backends = ["127.0.0.1:5"]
"#;

pub fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::from_toml_str(CONFIG, "fuzz.toml").expect("fuzz config"))
}

pub fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| {
        let c = config();
        // `Settings::new` keeps this harness compiling when settings grow fields.
        let mut s = Settings::new(RouteTable::new(&c.routes), c.timeouts.clone());
        s.max_head_bytes = c.limits.max_head_bytes;
        s.max_headers = c.limits.max_headers;
        s
    })
}

/// Every LF is preceded by CR, every CR followed by LF, no NUL; ends with CRLF CRLF.
pub fn assert_crlf_framing(head: &[u8], what: &str) {
    assert!(
        head.ends_with(b"\r\n\r\n"),
        "{what}: does not end with CRLF CRLF: {:?}",
        String::from_utf8_lossy(head)
    );
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' => assert!(
                i > 0 && head[i - 1] == b'\r',
                "{what}: bare LF at {i}: {:?}",
                String::from_utf8_lossy(head)
            ),
            b'\r' => assert!(
                head.get(i + 1) == Some(&b'\n'),
                "{what}: bare CR at {i}: {:?}",
                String::from_utf8_lossy(head)
            ),
            0 => panic!("{what}: NUL at {i}: {:?}", String::from_utf8_lossy(head)),
            _ => {}
        }
    }
}

/// Comma-separated tokens, trimmed, empty ones skipped (RFC 9110 §5.6.1).
pub fn tokens(value: &[u8]) -> Vec<Vec<u8>> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

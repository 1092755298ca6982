//! Hostile request heads over raw sockets: a generated table of obfuscations that request
//! smugglers and desync tools use, each row answered by the proxy itself.
//!
//! ```text
//!   raw client ──▶ wsplice ──/rec──▶ RecordingBackend (must see 0 connections, 0 bytes)
//!                          ──/ok───▶ RawBackend       (rows that must pass: it reads the head,
//!                                                      answers 101)
//!                          ──/echo─▶ EchoBackend      (a real WebSocket: "the proxy still serves")
//! ```
//!
//! The expected status of each row follows `src/core/head.rs` and `src/core/handshake.rs`:
//! bare CR/LF and NUL first (400), then the request line's shape and the target length (400/414),
//! the header count (431), CONNECT (405), the target form and framing headers (400), "is this an
//! upgrade at all" (426 on a WebSocket-only route), then the upgrade's own fields (400). Heads
//! larger than the limit are 431, or 414 while the request line is still incomplete.
//!
//! Routes forward plain HTTP by default, so the rows that are not upgrades at all (written
//! with 426, the answer of a route with `http = false`) run twice: on a WebSocket-only route
//! for their 426, and on a default route, where they are forwarded (`FORWARDED`): the
//! Acceptor answers them 200 and their heads are checked as clean plain requests. Framing
//! attacks on forwarded requests and their bodies are in `tests/smuggling_http.rs`.

#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MAX_HEAD: usize = 4096;
const MAX_HEADERS: usize = 32;
/// Rows run at once.
const BATCH: usize = 16;
/// A real WebSocket echo after this many rows.
const ECHO_EVERY: usize = 25;

// ---------------------------------------------------------------------------------------------
// Building heads
// ---------------------------------------------------------------------------------------------

/// A request head as lines without their CRLF; [`Head::bytes`] joins them.
#[derive(Clone)]
struct Head {
    line: Vec<u8>,
    fields: Vec<Vec<u8>>,
}

/// `{name}: {value}`, the value as raw bytes.
fn field_line(name: &str, value: &[u8]) -> Vec<u8> {
    let mut l = name.as_bytes().to_vec();
    l.extend_from_slice(b": ");
    l.extend_from_slice(value);
    l
}

fn name_of(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    &field[..end]
}

impl Head {
    /// A valid upgrade to `path` (`/rec/x` for rows that must be refused, `/ok/x` for 101 rows).
    fn to(path: &str) -> Head {
        Head {
            line: format!("GET {path} HTTP/1.1").into_bytes(),
            fields: vec![
                b"Host: localhost".to_vec(),
                b"Upgrade: websocket".to_vec(),
                b"Connection: Upgrade".to_vec(),
                format!("Sec-WebSocket-Key: {KEY}").into_bytes(),
                b"Sec-WebSocket-Version: 13".to_vec(),
            ],
        }
    }

    /// The valid head whose route fits the expected status.
    fn expecting(want: u16) -> Head {
        Head::to(if want == 101 { "/ok/x" } else { "/rec/x" })
    }

    fn line(mut self, line: impl AsRef<[u8]>) -> Head {
        self.line = line.as_ref().to_vec();
        self
    }

    /// `GET {target} HTTP/1.1`.
    fn target(self, target: &[u8]) -> Head {
        let mut l = b"GET ".to_vec();
        l.extend_from_slice(target);
        l.extend_from_slice(b" HTTP/1.1");
        self.line(l)
    }

    /// Where the first field named `name` is.
    fn position(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .position(|f| name_of(f).eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Replaces the first field named `name` by `line` (the whole line, name included).
    fn replace(mut self, name: &str, line: impl AsRef<[u8]>) -> Head {
        let i = self
            .position(name)
            .unwrap_or_else(|| panic!("no field {name}"));
        self.fields[i] = line.as_ref().to_vec();
        self
    }

    /// Sets the value of field `name` to raw bytes: `{name}: {value}`.
    fn value(self, name: &str, value: &[u8]) -> Head {
        self.replace(name, field_line(name, value))
    }

    /// Replaces the first field named `name` by `line`, or adds `line` when there is none.
    fn put(self, name: &str, line: impl AsRef<[u8]>) -> Head {
        if self.position(name).is_some() {
            self.replace(name, line)
        } else {
            self.add(line)
        }
    }

    fn remove(mut self, name: &str) -> Head {
        self.fields
            .retain(|f| !name_of(f).eq_ignore_ascii_case(name.as_bytes()));
        self
    }

    fn add(mut self, line: impl AsRef<[u8]>) -> Head {
        self.fields.push(line.as_ref().to_vec());
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = self.line.clone();
        v.extend_from_slice(b"\r\n");
        for f in &self.fields {
            v.extend_from_slice(f);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    /// Adds an `X-Pad` field so the head is exactly `size` bytes.
    fn padded_to(self, size: usize) -> Head {
        let now = self.bytes().len();
        let overhead = "X-Pad: \r\n".len();
        assert!(now + overhead <= size, "head already {now} bytes");
        let pad = "p".repeat(size - now - overhead);
        let h = self.add(format!("X-Pad: {pad}"));
        assert_eq!(h.bytes().len(), size);
        h
    }
}

/// A printable name for raw bytes.
fn show(b: &[u8]) -> String {
    b.iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

struct Row {
    category: &'static str,
    name: String,
    bytes: Vec<u8>,
    want: u16,
}

#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn push(&mut self, category: &'static str, name: impl Into<String>, bytes: Vec<u8>, want: u16) {
        self.0.push(Row {
            category,
            name: name.into(),
            bytes,
            want,
        });
    }

    fn head(&mut self, category: &'static str, name: impl Into<String>, head: Head, want: u16) {
        self.push(category, name, head.bytes(), want);
    }

    /// [`Table::values`] for field `name`, then the field left out, then the field sent again
    /// as each of `again` (row name, line): both refused.
    fn field(
        &mut self,
        category: &'static str,
        name: &str,
        values: &[(&str, u16)],
        again: &[(&str, &str)],
    ) {
        self.values(category, name, values);
        let absent = Head::to("/rec/x").remove(name);
        self.head(category, format!("no {name}"), absent, 400);
        for &(row, line) in again {
            self.head(category, row, Head::to("/rec/x").add(line), 400);
        }
    }

    /// One row per (name, head, expected status).
    fn rows<const N: usize>(&mut self, category: &'static str, rows: [(&str, Head, u16); N]) {
        for (name, head, want) in rows {
            self.head(category, name, head, want);
        }
    }

    /// One row per (value, expected status): the valid head with field `name` set to the value.
    fn values(&mut self, category: &'static str, name: &str, values: &[(&str, u16)]) {
        for &(v, want) in values {
            self.head(
                category,
                format!("{name}: {v:?}"),
                Head::expecting(want).value(name, v.as_bytes()),
                want,
            );
        }
    }
}

/// Control bytes 0x01..=0x1F except TAB, and DEL.
fn controls() -> Vec<u8> {
    (1u8..=0x1f).filter(|&b| b != b'\t').chain([0x7f]).collect()
}

/// `a{b}b`: a byte in the middle of a value.
fn with_byte(before: &str, b: u8, after: &str) -> Vec<u8> {
    let mut v = before.as_bytes().to_vec();
    v.push(b);
    v.extend_from_slice(after.as_bytes());
    v
}

fn obs_fold(t: &mut Table) {
    const C: &str = "obs-fold";
    // (field, value split in two for the folded form)
    let fields: [(&str, &str, &str); 8] = [
        ("Host", "local", "host"),
        ("Upgrade", "web", "socket"),
        ("Connection", "keep-alive,", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBs", "ZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "1", "3"),
        ("Content-Length", "0", "0"),
        ("Transfer-Encoding", "identity,", "chunked"),
        ("X-Custom", "a", "b"),
    ];
    for (name, a, b) in fields {
        for fold in [" ", "\t", "  \t"] {
            // Whole value on the continuation line, and the value split across two lines.
            let whole = format!("{name}:\r\n{fold}{a}{b}");
            let split = format!("{name}: {a}\r\n{fold}{b}");
            for (form, line) in [("whole", whole), ("split", split)] {
                let head = Head::to("/rec/x").put(name, line);
                t.head(C, format!("{name} folded ({form}, {:?})", fold), head, 400);
            }
        }
    }
    // A continuation line right after the request line: nothing to continue.
    let mut h = Head::to("/rec/x");
    h.fields.insert(0, b" X-Lead: 1".to_vec());
    t.head(C, "first field line starts with a space", h, 400);
    let mut h = Head::to("/rec/x");
    h.fields.insert(0, b"\tHost: evil".to_vec());
    t.head(C, "first field line starts with a tab", h, 400);
}

fn line_endings(t: &mut Table) {
    const C: &str = "bare CR/LF";
    let valid = Head::to("/rec/x").bytes();
    let crlfs: Vec<usize> = valid
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w == b"\r\n")
        .map(|(i, _)| i)
        .collect();
    let last = *crlfs.last().expect("crlf");
    for (n, &i) in crlfs.iter().enumerate() {
        // That one CRLF as a bare LF.
        let mut lf = valid[..i].to_vec();
        lf.extend_from_slice(&valid[i + 1..]);
        if i == last {
            // "\r\n\n" would end the head only for a lenient parser; keep the bytes coming so
            // the proxy sees a bare LF with a byte after it.
            lf.extend_from_slice(b"\r\n");
        }
        t.push(C, format!("line end {n} as bare LF"), lf, 400);
        // That one CRLF as a bare CR (a byte always follows it).
        let mut cr = valid[..i + 1].to_vec();
        if i == last {
            cr.extend_from_slice(b"X-After-CR: 1\r\n\r\n");
        } else {
            cr.extend_from_slice(&valid[i + 2..]);
        }
        t.push(C, format!("line end {n} as bare CR"), cr, 400);
        // LF CR instead of CR LF.
        let mut swapped = valid[..i].to_vec();
        swapped.extend_from_slice(b"\n\r");
        swapped.extend_from_slice(&valid[i + 2..]);
        swapped.extend_from_slice(b"\r\n\r\n");
        t.push(C, format!("line end {n} as LF CR"), swapped, 400);
    }
    let all_lf = String::from_utf8(valid.clone())
        .expect("ascii")
        .replace("\r\n", "\n");
    t.push(C, "every line end a bare LF", all_lf.into_bytes(), 400);
    let mut crcrlf = String::from_utf8(valid.clone()).expect("ascii");
    crcrlf = crcrlf.replacen("\r\n", "\r\r\n", 2);
    t.push(C, "CR CR LF line end", crcrlf.into_bytes(), 400);
    for (i, (what, head)) in [
        (
            "request line",
            Head::to("/rec/x").line("GET /rec/x\rHTTP/1.1"),
        ),
        ("target", Head::to("/rec/x").line("GET /rec\n/x HTTP/1.1")),
        (
            "Host value",
            Head::to("/rec/x").value("Host", b"local\nhost"),
        ),
        (
            "Host value",
            Head::to("/rec/x").value("Host", b"local\rhost"),
        ),
        (
            "Upgrade value",
            Head::to("/rec/x").value("Upgrade", b"websocket\nX: y"),
        ),
        (
            "Connection value",
            Head::to("/rec/x").value("Connection", b"Upgrade\rTransfer-Encoding: chunked"),
        ),
        (
            "field name",
            Head::to("/rec/x").add("Transfer\n-Encoding: chunked"),
        ),
        (
            "smuggled TE line after bare LF",
            Head::to("/rec/x").add("X: y\nTransfer-Encoding: chunked"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        t.head(C, format!("bare CR/LF in {what} (#{i})"), head, 400);
    }
}

/// Each framing field with byte `b` in the middle of its value: refused.
fn framing_values_with(t: &mut Table, b: u8) {
    // (field, value before the byte, value after it)
    let framing: [(&str, &str, &str); 5] = [
        ("Host", "local", "host"),
        ("Upgrade", "web", "socket"),
        ("Connection", "Up", "grade"),
        ("Content-Length", "0", "0"),
        ("Transfer-Encoding", "chun", "ked"),
    ];
    for (name, a, z) in framing {
        let head = Head::to("/rec/x").put(name, field_line(name, &with_byte(a, b, z)));
        t.head(
            "control bytes",
            format!("{name} value with {b:#04x}"),
            head,
            400,
        );
    }
}

fn control_bytes(t: &mut Table) {
    const C: &str = "control bytes";
    let mut bytes = controls();
    bytes.insert(0, 0);
    for &b in &bytes {
        framing_values_with(t, b);
        // The request line: (part, the line before the byte, after it).
        for (part, before, after) in [
            ("version", "GET /rec/x HT", "TP/1.1"),
            ("target", "GET /rec/", "x HTTP/1.1"),
            ("method", "G", "ET /rec/x HTTP/1.1"),
        ] {
            let head = Head::to("/rec/x").line(with_byte(before, b, after));
            t.head(C, format!("{part} with {b:#04x}"), head, 400);
        }
        let mut field = with_byte("X-Ctl", b, "");
        field.extend_from_slice(b": v");
        t.head(
            C,
            format!("field name with {b:#04x}"),
            Head::to("/rec/x").add(field),
            400,
        );
    }
    // obs-text (bytes >= 0x80) where only tokens or framing values belong.
    for b in [0x80u8, 0xa0, 0xc3, 0xff] {
        framing_values_with(t, b);
        let mut field = with_byte("Transfer-Encoding", b, "");
        field.extend_from_slice(b": chunked");
        t.head(
            C,
            format!("Transfer-Encoding name + {b:#04x}"),
            Head::to("/rec/x").add(field),
            400,
        );
        t.head(
            C,
            format!("method with {b:#04x}"),
            Head::to("/rec/x").line(with_byte("GE", b, "T /rec/x HTTP/1.1")),
            400,
        );
    }
    // NUL at the very end of the head, and NUL after a complete head (tunnel bytes: accepted).
    let mut nul_end = Head::to("/rec/x").bytes();
    nul_end.truncate(nul_end.len() - 2);
    nul_end.extend_from_slice(b"\0\r\n\r\n");
    t.push(C, "NUL just before the blank line", nul_end, 400);
}

fn content_length(t: &mut Table) {
    const C: &str = "Content-Length";
    let values: &[(&str, u16)] = &[
        ("0", 101),
        ("00", 101),
        ("0000000000000000000", 101), // 19 digits: still a number
        (" 0 ", 101),                 // optional whitespace around the value
        ("\t0\t", 101),
        ("00000000000000000000", 400), // 20 digits
        ("1", 400),                    // a body on an upgrade
        (" 1 ", 400),                  // trimmed, still non-zero
        ("01", 400),
        ("1, 1", 400),
        ("0, 0", 400),
        ("0,", 400),
        (",0", 400),
        ("+1", 400),
        ("+0", 400),
        ("-1", 400),
        ("-0", 400),
        ("0x0", 400),
        ("0x10", 400),
        ("1e3", 400),
        ("0e0", 400),
        ("0.0", 400),
        ("1 1", 400),
        ("0 0", 400),
        ("9223372036854775807", 400),
        ("18446744073709551616", 400),
        ("99999999999999999999999999", 400),
        ("", 400),
        ("   ", 400),
        ("zero", 400),
        ("\u{0660}", 400), // ARABIC-INDIC DIGIT ZERO
    ];
    for &(v, want) in values {
        t.head(
            C,
            format!("Content-Length: {v:?}"),
            Head::expecting(want).add(format!("Content-Length: {v}")),
            want,
        );
    }
    let dups: &[(&[&str], u16)] = &[
        (&["Content-Length: 0", "Content-Length: 0"], 400),
        (&["Content-Length: 0", "Content-Length: 5"], 400),
        (&["Content-Length: 5", "Content-Length: 0"], 400),
        (&["Content-Length: 0", "content-length: 0"], 400),
        (&["content-length: 5"], 400),
        (&["CONTENT-LENGTH: 5"], 400),
        (&["Content-Length : 0"], 400),
        (&["Content-Length\t: 0"], 400),
        (&["Content-Length 0"], 400),
        (&["Content-Length:0"], 101),
    ];
    for &(lines, want) in dups {
        let mut h = Head::expecting(want);
        for l in lines {
            h = h.add(l);
        }
        t.head(C, format!("{lines:?}"), h, want);
    }
}

fn transfer_encoding(t: &mut Table) {
    const C: &str = "Transfer-Encoding";
    let values: &[&[u8]] = &[
        b"chunked",
        b"Chunked",
        b"CHUNKED",
        b" chunked",
        b"chunked ",
        b"\tchunked",
        b"chunked\t",
        b"chunked, chunked",
        b",chunked",
        b"chunked,",
        b", chunked",
        b"identity",
        b"identity, chunked",
        b"gzip, chunked",
        b"chunked, identity",
        b"chunked\x0b",
        b"\x0bchunked",
        b"chunked\x0c",
        b"chunk\x00ed",
        b"ch\xfcnked",
        b"\xffchunked",
        b"chunked\xa0",
        b"\"chunked\"",
        b"chunked;q=1",
        b"x",
        b"",
    ];
    for v in values {
        t.head(
            C,
            format!("Transfer-Encoding: {}", show(v)),
            Head::to("/rec/x").add(field_line("Transfer-Encoding", v)),
            400,
        );
    }
    let names: &[&[u8]] = &[
        b"transfer-encoding: chunked",
        b"TRANSFER-ENCODING: chunked",
        b"TrAnSfEr-EnCoDiNg: chunked",
        b"Transfer-Encoding:chunked",
        b"Transfer-Encoding : chunked",
        b"Transfer-Encoding  : chunked",
        b"Transfer-Encoding\t: chunked",
        b"Transfer-Encoding\t:chunked",
        b"Transfer-Encoding\x0b: chunked",
        b" Transfer-Encoding: chunked",
        b"Transfer-Encoding chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked\r\nContent-Length: 0",
        b"Content-Length: 0\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked",
    ];
    for l in names {
        t.head(C, show(l), Head::to("/rec/x").add(l), 400);
    }
    // TE first, before Host: the TE check must not depend on header order.
    let mut h = Head::to("/rec/x");
    h.fields.insert(0, b"Transfer-Encoding: chunked".to_vec());
    t.head(C, "Transfer-Encoding before Host", h, 400);
}

fn host(t: &mut Table) {
    const C: &str = "Host";
    let values: &[(&[u8], u16)] = &[
        (b"", 400),
        (b" ", 400),
        (b"localhost:99999", 400),
        (b"localhost:65536", 400),
        (b"localhost:", 400),
        (b"localhost:abc", 400),
        (b"localhost:-1", 400),
        (b"localhost:+80", 400),
        (b"localhost:8 0", 400),
        (b"localhost:000080", 400),
        (b"localhost:80:80", 400),
        (b":80", 400),
        (b"local host", 400),
        (b"local\thost", 400),
        (b"user@localhost", 400),
        (b"user:pass@localhost", 400),
        (b"@localhost", 400),
        (b"localhost@evil", 400),
        (b"localhost/x", 400),
        (b"localhost/", 400),
        (b"/localhost", 400),
        (b"localhost?x", 400),
        (b"localhost#x", 400),
        (b"localhost\\x", 400),
        (b"localhost,evil", 400),
        (b"localhost, evil", 400),
        (b"localhost;x", 400),
        (b"local%68ost", 400),
        (b"[::1", 400),
        (b"[::1]x", 400),
        (b"[::1]:", 400),
        (b"[zz]", 400),
        (b"[::1]:99999", 400),
        (b"http://localhost", 400),
        // Valid hosts: the proxy must not be stricter than RFC 9110.
        (b"localhost:80", 101),
        (b"localhost:0", 101),
        (b"localhost:65535", 101),
        (b"localhost:080", 101),
        (b"LOCALHOST", 101),
        (b"127.0.0.1", 101),
        (b"127.0.0.1:8080", 101),
        (b"[::1]", 101),
        (b"[::1]:8080", 101),
        (b"my_host.example-1.com", 101),
        (b"  localhost  ", 101), // optional whitespace is not part of the value
    ];
    for &(v, want) in values {
        t.head(
            C,
            format!("Host: {}", show(v)),
            Head::expecting(want).value("Host", v),
            want,
        );
    }
    let extra: &[(&str, &[&str])] = &[
        ("no Host", &[]),
        ("Host twice, same value", &["Host: localhost"]),
        ("Host twice, other value", &["Host: evil"]),
        ("Host and host", &["host: localhost"]),
        ("Host and empty Host", &["Host:"]),
    ];
    for &(name, lines) in extra {
        let mut h = Head::to("/rec/x");
        if lines.is_empty() {
            h = h.remove("Host");
        }
        for l in lines {
            h = h.add(l);
        }
        t.head(C, name, h, 400);
    }
    t.rows(
        C,
        [
            (
                "Host : with a space before the colon",
                Head::to("/rec/x").replace("Host", "Host : localhost"),
                400,
            ),
            (
                "no Host, Host_ instead",
                Head::to("/rec/x").replace("Host", "Host_: localhost"),
                400,
            ),
        ],
    );
}

fn limits(t: &mut Table) {
    const C: &str = "size limits";
    let half = MAX_HEAD / 2;
    let target = |len: usize, prefix: &str| {
        let mut s = prefix.to_owned();
        s.push_str(&"t".repeat(len - prefix.len()));
        s
    };
    t.head(
        C,
        format!("target of exactly {half} bytes"),
        Head::to("/").target(target(half, "/ok/").as_bytes()),
        101,
    );
    t.head(
        C,
        format!("target of {} bytes", half + 1),
        Head::to("/").target(target(half + 1, "/rec/").as_bytes()),
        414,
    );
    t.head(
        C,
        "target of 3000 bytes, head complete",
        Head::to("/").target(target(3000, "/rec/").as_bytes()),
        414,
    );
    t.head(
        C,
        "target too long and with `#`: length first",
        Head::to("/").target(format!("{}#", target(half + 1, "/rec/")).as_bytes()),
        414,
    );
    let mut no_line_end = b"GET ".to_vec();
    no_line_end.extend_from_slice(target(MAX_HEAD + 500, "/rec/").as_bytes());
    t.push(
        C,
        "request line longer than the head limit (no line end yet)",
        no_line_end,
        414,
    );
    let mut long_line = b"GET ".to_vec();
    long_line.extend_from_slice(target(MAX_HEAD + 500, "/rec/").as_bytes());
    long_line.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\n\r\n");
    t.push(C, "request line longer than the head limit", long_line, 414);
    t.head(
        C,
        "long target, then the head overflows after the request line",
        Head::to("/")
            .target(target(half + 1, "/rec/").as_bytes())
            .add(format!("X-Big: {}", "b".repeat(MAX_HEAD))),
        431,
    );
    t.head(
        C,
        "long target and a bare LF in a field: framing first",
        Head::to("/")
            .target(target(half + 1, "/rec/").as_bytes())
            .add("X: a\nb"),
        400,
    );
    t.head(
        C,
        format!("head of exactly {MAX_HEAD} bytes"),
        Head::to("/ok/x").padded_to(MAX_HEAD),
        101,
    );
    t.head(
        C,
        format!("head of {} bytes", MAX_HEAD + 1),
        Head::to("/rec/x").padded_to(MAX_HEAD + 1),
        431,
    );
    t.head(
        C,
        format!("head of {} bytes", MAX_HEAD + 1000),
        Head::to("/rec/x").padded_to(MAX_HEAD + 1000),
        431,
    );
    t.head(
        C,
        "one 5000-byte field",
        Head::to("/rec/x").add(format!("X-Big: {}", "b".repeat(5000))),
        431,
    );
    let base_fields = Head::to("/").fields.len();
    let fill = |h: Head, n: usize| (0..n).fold(h, |h, i| h.add(format!("X-F{i}: v")));
    t.head(
        C,
        format!("exactly {MAX_HEADERS} fields"),
        fill(Head::to("/ok/x"), MAX_HEADERS - base_fields),
        101,
    );
    t.head(
        C,
        format!("{} fields", MAX_HEADERS + 1),
        fill(Head::to("/rec/x"), MAX_HEADERS + 1 - base_fields),
        431,
    );
    t.head(
        C,
        "300 one-letter fields (small head, too many fields)",
        (0..300).fold(Head::to("/rec/x"), |h, _| h.add("A: b")),
        431,
    );
    t.head(
        C,
        "too many fields and Upgrade: h2c: count first",
        fill(
            Head::to("/rec/x").value("Upgrade", b"h2c"),
            MAX_HEADERS + 1 - base_fields,
        ),
        431,
    );
    t.head(
        C,
        "too many fields and CONNECT: count first",
        fill(
            Head::to("/rec/x").line("CONNECT localhost:80 HTTP/1.1"),
            MAX_HEADERS + 1 - base_fields,
        ),
        431,
    );
    t.head(
        C,
        format!("head of exactly {MAX_HEAD} bytes with Transfer-Encoding"),
        Head::to("/rec/x")
            .add("Transfer-Encoding: chunked")
            .padded_to(MAX_HEAD),
        400,
    );
}

fn versions(t: &mut Table) {
    const C: &str = "HTTP version";
    let lines: &[&[u8]] = &[
        b"GET /rec/x HTTP/1.0",
        b"GET /rec/x",
        b"GET /rec/x HTTP/0.9",
        b"GET /rec/x HTTP/2.0",
        b"GET /rec/x HTTP/2",
        b"GET /rec/x HTTP/3",
        b"GET /rec/x HTTP/1.2",
        b"GET /rec/x HTTP/1.10",
        b"GET /rec/x HTTP/01.1",
        b"GET /rec/x HTTP/1",
        b"GET /rec/x HTTP/1.1 ",
        b"GET /rec/x HTTP/1.1 junk",
        b"GET /rec/x HTTP/1.1\t",
        b"GET /rec/x http/1.1",
        b"GET /rec/x Http/1.1",
        b"GET /rec/x HTTPS/1.1",
        b"GET /rec/x  HTTP/1.1",
        b"GET  /rec/x HTTP/1.1",
        b"GET\t/rec/x HTTP/1.1",
        b" GET /rec/x HTTP/1.1",
        b"GET /rec/x HTTP/1.1 HTTP/1.1",
        b"",
    ];
    for l in lines {
        t.head(C, format!("{:?}", show(l)), Head::to("/rec/x").line(l), 400);
    }
    // An empty line before the request line (RFC 9112 §2.2 lets servers skip it; the proxy
    // refuses it, which is allowed).
    let mut lead = b"\r\n".to_vec();
    lead.extend_from_slice(&Head::to("/rec/x").bytes());
    t.push(C, "empty line before the request line", lead, 400);
}

fn upgrade_and_method(t: &mut Table) {
    const C: &str = "Upgrade/Connection";
    let upgrades: &[(&str, u16)] = &[
        ("h2c", 400),
        ("websocket, h2c", 400),
        ("h2c, websocket", 400),
        ("websocket,", 400),
        ("websocket/13", 400),
        ("websockets", 400),
        ("web socket", 400),
        ("", 400),
        ("WebSocket", 101),
        ("WEBSOCKET", 101),
        ("  websocket  ", 101),
    ];
    t.values(C, "Upgrade", upgrades);
    let twice: &[(&str, &str)] = &[
        ("Upgrade: websocket", "two Upgrade: websocket"),
        ("Upgrade: h2c", "Upgrade: websocket + Upgrade: h2c"),
        ("upgrade: websocket", "Upgrade + upgrade"),
    ];
    for &(l, name) in twice {
        t.head(C, name, Head::to("/rec/x").add(l), 400);
    }
    let connections: &[(&str, u16)] = &[
        ("keep-alive", 426),
        ("close", 426),
        ("Upgrade2", 426),
        ("upgrade-insecure-requests", 426),
        ("Up grade", 426),
        ("\"Upgrade\"", 426),
        ("", 426),
        ("upgrade", 101),
        ("UPGRADE", 101),
        ("keep-alive, Upgrade", 101),
        ("Upgrade, close", 101),
        (",Upgrade,", 101),
        (" ,, Upgrade ,", 101),
    ];
    t.values(C, "Connection", connections);
    t.rows(
        C,
        [
            (
                "Connection twice, upgrade in the second",
                Head::to("/ok/x")
                    .value("Connection", b"keep-alive")
                    .add("Connection: Upgrade"),
                101,
            ),
            (
                "no Connection",
                Head::to("/rec/x").remove("Connection"),
                426,
            ),
            ("no Upgrade", Head::to("/rec/x").remove("Upgrade"), 426),
            (
                "neither Upgrade nor Connection",
                Head::to("/rec/x").remove("Upgrade").remove("Connection"),
                426,
            ),
            (
                "Upgrade: h2c without the Connection token",
                Head::to("/rec/x")
                    .value("Upgrade", b"h2c")
                    .value("Connection", b"keep-alive"),
                426,
            ),
            (
                "plain GET with a body length",
                Head::to("/rec/x")
                    .remove("Upgrade")
                    .remove("Connection")
                    .add("Content-Length: 5"),
                400,
            ),
        ],
    );

    const M: &str = "method/target";
    for m in [
        "POST", "PUT", "OPTIONS", "DELETE", "PATCH", "HEAD", "TRACE", "get", "Get", "PRI",
    ] {
        t.head(
            M,
            format!("{m} with upgrade headers"),
            Head::to("/rec/x").line(format!("{m} /rec/x HTTP/1.1")),
            400,
        );
    }
    for m in ["POST", "PUT", "OPTIONS"] {
        t.head(
            M,
            format!("{m} without upgrade headers"),
            Head::to("/rec/x")
                .line(format!("{m} /rec/x HTTP/1.1"))
                .remove("Upgrade")
                .remove("Connection"),
            426,
        );
    }
    for line in [
        "CONNECT localhost:80 HTTP/1.1",
        "CONNECT /rec/x HTTP/1.1",
        "CONNECT 127.0.0.1:1 HTTP/1.1",
        "CONNECT localhost:80 HTTP/1.0",
    ] {
        t.head(M, line, Head::to("/rec/x").line(line), 405);
    }
    let targets: &[&[u8]] = &[
        b"http://localhost/rec/x",
        b"HTTP://localhost/rec/x",
        b"ws://localhost/rec/x",
        b"https://localhost:443/rec/x",
        b"localhost:80",
        b"localhost",
        b"*",
        b"rec/x",
        b"/rec/x#frag",
        b"/rec/x#",
        b"/rec/x?a=1#b",
        b"/rec/x\x7f",
        b"/rec/x\x80",
        b"/rec/\xc3\xa9",
        b"/rec/\xff",
        b"/rec/x\tHTTP/1.1 y",
        b"/rec/x y",
        b"/rec/x%00\x00",
    ];
    for target in targets {
        t.head(
            M,
            format!("target {}", show(target)),
            Head::to("/rec/x").target(target),
            400,
        );
    }
}

fn websocket_fields(t: &mut Table) {
    const C: &str = "Sec-WebSocket-*";
    let keys: &[(&str, u16)] = &[
        ("", 400),
        ("c2hvcnQ=", 400),                                     // 5 bytes
        ("AAAAAAAAAAAAAAAAAAAA", 400),                         // 15 bytes
        ("AAAAAAAAAAAAAAAAAAAAAAA=", 400),                     // 17 bytes
        ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 400), // 32 bytes
        ("dGhlIHNhbXBsZSBub25jZQ", 400),                       // no padding
        ("dGhlIHNhbXBsZSBub25jZQ=", 400),
        ("dGhlIHNhbXBsZSBub25jZQ===", 400),
        ("dGhl-HNhbXBsZSBub25jZQ==", 400), // URL-safe alphabet
        ("dGhl_HNhbXBsZSBub25jZQ==", 400),
        ("dGhlIHNh bXBsZSBub25jZQ==", 400),
        ("!!!!!!!!!!!!!!!!!!!!!!==", 400),
        ("dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==", 400),
        ("  dGhlIHNhbXBsZSBub25jZQ==  ", 101),
        ("AAAAAAAAAAAAAAAAAAAAAA==", 101),
    ];
    let same_key = format!("Sec-WebSocket-Key: {KEY}");
    let again = [
        ("Sec-WebSocket-Key twice (same value)", same_key.as_str()),
        (
            "Sec-WebSocket-Key twice (other value)",
            "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==",
        ),
    ];
    t.field(C, "Sec-WebSocket-Key", keys, &again);
    let versions: &[(&str, u16)] = &[
        ("", 400),
        ("thirteen", 400),
        ("13, 8", 400),
        ("1300", 400),
        ("-1", 400),
        ("+13", 400),
        ("0x0d", 400),
        ("1 3", 400),
        ("13", 101),
        (" 13 ", 101),
        ("8", 101),
        ("013", 101),
    ];
    let again = [("Sec-WebSocket-Version twice", "Sec-WebSocket-Version: 13")];
    t.field(C, "Sec-WebSocket-Version", versions, &again);
}

/// Header names that are not framing headers to the proxy but are to some backends (CGI-style
/// servers map `_` and `-` to the same variable). The upgrade goes through; a name with `_`
/// that reads as a header the proxy strips is dropped, others pass: the forwarded heads are
/// checked below.
fn lookalikes(t: &mut Table) {
    const C: &str = "lookalike names";
    for l in [
        "Transfer_Encoding: chunked",
        "Content_Length: 5",
        "X-Transfer-Encoding: chunked",
    ] {
        t.head(C, l, Head::to("/ok/x").add(l), 101);
    }
}

fn table() -> Vec<Row> {
    let mut t = Table::default();
    obs_fold(&mut t);
    line_endings(&mut t);
    control_bytes(&mut t);
    content_length(&mut t);
    transfer_encoding(&mut t);
    host(&mut t);
    limits(&mut t);
    versions(&mut t);
    upgrade_and_method(&mut t);
    websocket_fields(&mut t);
    lookalikes(&mut t);
    t.0
}

// ---------------------------------------------------------------------------------------------
// Running rows
// ---------------------------------------------------------------------------------------------

async fn run_row(proxy: &Proxy, row: &Row) -> Result<(), String> {
    if row.want != 101 && row.want != FORWARDED {
        return try_refusal(proxy, &row.bytes, row.want).await.map(drop);
    }
    let mut s = connect(proxy).await;
    // The proxy may answer and close before reading everything: ignore write errors.
    let _ = s.write_all(&row.bytes).await;
    let head = match tokio::time::timeout(STEP, try_read_head(&mut s, 1 << 16)).await {
        Err(_) => return Err("no answer head".into()),
        Ok(Err(e)) => return Err(format!("reading the answer: {e}")),
        Ok(Ok((head, _))) => head,
    };
    match status(&head) {
        Some(code) if code == row.want => Ok(()),
        _ => Err(format!(
            "expected {}, got {:?}",
            row.want,
            String::from_utf8_lossy(&head)
        )),
    }
}

/// The head the acceptor got for a passing row is one clean HTTP/1.1 upgrade, or one clean
/// plain request: no Upgrade or Connection, no Transfer-Encoding, the body length only as the
/// proxy wrote it.
fn check_forwarded(head: &[u8]) -> Result<(), String> {
    if header(head, "upgrade").is_none() {
        return check_forwarded_plain(head);
    }
    let text = String::from_utf8_lossy(head);
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let req = parse_forwarded(head, &mut fields)?;
    if req.method != Some("GET") || req.version != Some(1) {
        return Err(format!("forwarded request line: {text:?}"));
    }
    for name in ["host", "upgrade", "connection", "sec-websocket-key"] {
        let n = count(&req, name);
        if n != 1 {
            return Err(format!("{name} {n} times in {text:?}"));
        }
    }
    if count(&req, "transfer-encoding") != 0 {
        return Err(format!("Transfer-Encoding forwarded: {text:?}"));
    }
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") && h.value.iter().any(|&b| b != b'0') {
            return Err(format!("non-zero Content-Length forwarded: {text:?}"));
        }
    }
    Ok(())
}

fn check_forwarded_plain(head: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(head);
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let req = parse_forwarded(head, &mut fields)?;
    if req.version != Some(1) || !req.path.is_some_and(|p| p.starts_with("/x")) {
        return Err(format!("forwarded request line: {text:?}"));
    }
    let hosts = count(&req, "host");
    if hosts != 1 {
        return Err(format!("Host {hosts} times in {text:?}"));
    }
    for name in ["upgrade", "connection", "transfer-encoding", "keep-alive"] {
        if count(&req, name) != 0 {
            return Err(format!("{name} forwarded in a plain request: {text:?}"));
        }
    }
    if count(&req, "content-length") > 1 {
        return Err(format!("Content-Length repeated: {text:?}"));
    }
    Ok(())
}

/// What every forwarded head is, upgrade or plain: CRLF line ends only, no NUL, and one
/// complete head that httparse reads to its last byte.
fn parse_forwarded<'b, 'h>(
    head: &'h [u8],
    fields: &'b mut [httparse::Header<'h>],
) -> Result<httparse::Request<'b, 'h>, String> {
    let text = String::from_utf8_lossy(head);
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| (b == b'\n' && (i == 0 || head[i - 1] != b'\r')) || b == 0)
    {
        return Err(format!("bare LF or NUL in the forwarded head {text:?}"));
    }
    let mut req = httparse::Request::new(fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => Ok(req),
        other => Err(format!(
            "forwarded head does not parse ({other:?}): {text:?}"
        )),
    }
}

/// How many times the request carries the header `name` (any case).
fn count(req: &httparse::Request, name: &str) -> usize {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

/// A row's expected outcome when a default route forwards it as a plain request.
const FORWARDED: u16 = 200;

/// The rows as a default route sees them: a row that is not an upgrade at all (426 on a
/// WebSocket-only route) is forwarded there, to the acceptor instead of the recorder. So is
/// the plain GET with a body length: a body is no fault of a plain request (on an upgrade it
/// is, and those rows keep their 400); the acceptor answers before the body, and the proxy
/// closes after that answer.
fn forwarding(rows: Vec<Row>) -> Vec<Row> {
    rows.into_iter()
        .map(|mut r| {
            if r.want == 426 || r.name == "plain GET with a body length" {
                r.want = FORWARDED;
                let at = r
                    .bytes
                    .windows(5)
                    .position(|w| w == b"/rec/")
                    .expect("a /rec/ target");
                r.bytes.splice(at..at + 5, b"/ok/".iter().copied());
            }
            r
        })
        .collect()
}

e2e!(hostile_heads, |relay| async move {
    let recorder = RecordingBackend::start().await;
    let acceptor = RawBackend::start_with(Behavior::Accept101Echo).await;
    let echo = EchoBackend::start().await;
    let proxy = Proxy::builder(relay)
        .timeout("handshake", "2s")
        .limit("max_head_bytes", MAX_HEAD)
        .limit("max_headers", MAX_HEADERS)
        .route(route("/rec", &[recorder.addr]))
        // Whatever a hostile target turns into, a wrongly accepted row reaches the recorder.
        .route(route("/", &[recorder.addr]))
        .route(route("/ok", &[acceptor.addr]))
        .route(route("/echo", &[echo.addr]))
        .start()
        .await;

    // Under either driver a default route forwards the plain rows.
    let rows = forwarding(table());
    assert!(rows.len() >= 300, "only {} rows", rows.len());
    let mut failures = Vec::new();
    let mut done = 0;
    let mut echoes = 0;
    for batch in rows.chunks(BATCH) {
        let results =
            futures_util::future::join_all(batch.iter().map(|r| run_row(&proxy, r))).await;
        for (r, res) in batch.iter().zip(results) {
            if let Err(e) = res {
                failures.push(format!("[{}] {}: {e}", r.category, r.name));
            }
        }
        let before = done / ECHO_EVERY;
        done += batch.len();
        if done / ECHO_EVERY != before || done == rows.len() {
            assert_still_serving(&proxy, "/echo", &format!("after row {done}")).await;
            echoes += 1;
        }
    }
    // Give a wrongly opened backend connection time to show up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts = recorder.counts();
    if counts != (0, 0) {
        failures.push(format!(
            "the recording backend got (connections, bytes) = {counts:?}: {}",
            recorder.describe()
        ));
    }
    let passing = rows
        .iter()
        .filter(|r| r.want == 101 || r.want == FORWARDED)
        .count();
    // Rows that got their 101 have had their head read; allow for a straggler.
    for _ in 0..50 {
        if acceptor.heads().len() >= passing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let heads = acceptor.heads();
    if heads.len() != passing {
        failures.push(format!(
            "{} heads reached the acceptor for {passing} passing rows",
            heads.len()
        ));
    }
    for h in &heads {
        if let Err(e) = check_forwarded(h) {
            failures.push(e);
        }
    }
    // `Transfer_Encoding` reads as a hop-by-hop header and never reaches a backend;
    // `Content_Length` (the proxy does not strip Content-Length) and `X-Transfer-Encoding` are
    // ordinary headers and travel unchanged (see `lookalikes`).
    for (name, want) in [
        ("Transfer_Encoding", 0),
        ("Content_Length", 1),
        ("X-Transfer-Encoding", 1),
    ] {
        let n = heads
            .iter()
            .filter(|h| !header_all(h, name).is_empty())
            .count();
        if n != want {
            failures.push(format!("{name} forwarded {n} times, expected {want}"));
        }
    }

    let mut summary: BTreeMap<&str, BTreeMap<u16, usize>> = BTreeMap::new();
    for r in &rows {
        *summary
            .entry(r.category)
            .or_default()
            .entry(r.want)
            .or_default() += 1;
    }
    println!(
        "{} rows (relay = {}), {echoes} echo checks:",
        rows.len(),
        relay.as_str()
    );
    for (c, by) in &summary {
        let total: usize = by.values().sum();
        println!("  {c:<20} {total:>4}  {by:?}");
    }
    assert_rows_passed(&failures, rows.len());
});

// On a route with `http = false` the rows that are not upgrades keep their 426 (and the plain
// GET with a body length gets it too: there it is a plain request, refused as such), and the
// backend gets nothing.
e2e!(
    websocket_only_route_refuses_plain_requests,
    |relay| async move {
        let recorder = RecordingBackend::start().await;
        let echo = EchoBackend::start().await;
        let proxy = http::with_routes(
            Proxy::builder(relay)
                .limit("max_head_bytes", MAX_HEAD)
                .limit("max_headers", MAX_HEADERS),
            &[
                http::r("/rec", &[recorder.addr]).key("http", "false"),
                http::r("/echo", &[echo.addr]).key("http", "false"),
            ],
        )
        .start()
        .await;
        let mut rows: Vec<Row> = table().into_iter().filter(|r| r.want == 426).collect();
        assert_eq!(rows.len(), 14, "the plain rows of the corpus");
        let mut body = table()
            .into_iter()
            .find(|r| r.name == "plain GET with a body length")
            .expect("row");
        body.want = 426;
        rows.push(body);
        let mut failures = Vec::new();
        for r in &rows {
            if let Err(e) = run_row(&proxy, r).await {
                failures.push(format!("[{}] {}: {e}", r.category, r.name));
            }
        }
        let mut ws = ws_connect(&proxy, "/echo").await;
        ws_echo_once(&mut ws, "after the plain rows").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(recorder.counts(), (0, 0), "{}", recorder.describe());
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
);

// ---------------------------------------------------------------------------------------------
// Pipelining: after the head, every byte is tunnel data
// ---------------------------------------------------------------------------------------------

const SECOND: &[u8] =
    b"GET /admin HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
    0\r\n\r\nGET /rec/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

e2e!(pipelined_request_is_tunnel_data, |relay| async move {
    let (proxy, backend) = raw_proxy(relay, "/pipe").await;
    let mut both = upgrade_request("/pipe/x", &[]);
    both.extend_from_slice(SECOND);
    let mut client = send(&proxy, &both).await;

    let (mut server, head) = backend.next_head_alone().await;
    assert!(
        first_line(&head) == "GET /x HTTP/1.1",
        "backend head {:?}",
        String::from_utf8_lossy(&head)
    );
    answer_101_after_silence(&mut server, &head, Duration::from_millis(300)).await;
    let (resp, after) = read_head(&mut client).await;
    assert_status(&resp, 101, "client");
    assert!(after.is_empty(), "client got bytes after the 101");
    // Exactly the raw pipelined bytes: not parsed, not rewritten, no second head.
    assert_pipelined_bytes_arrive(&mut server).await;
    assert_silent(
        &mut server,
        Duration::from_millis(200),
        "backend after the pipelined bytes",
    )
    .await;
    assert_eq!(backend.accepted(), 1, "one backend connection");
    // And the tunnel still works both ways.
    pump_both_ways(&mut client, &mut server, b"up", b"down").await;
});

/// The backend reads [`SECOND`], byte for byte.
async fn assert_pipelined_bytes_arrive(server: &mut TcpStream) {
    let got = read_exact_n(server, SECOND.len(), "pipelined bytes").await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(SECOND)
    );
}

e2e!(
    pipelined_in_a_later_write_waits_for_101,
    |relay| async move {
        let (proxy, backend) = raw_proxy(relay, "/pipe").await;
        let mut client = send(&proxy, &upgrade_request("/pipe/x", &[])).await;
        let (mut server, head) = backend.next_head_alone().await;
        client.write_all(SECOND).await.expect("client writes more");
        answer_101_after_silence(&mut server, &head, Duration::from_millis(300)).await;
        let (resp, _) = read_head(&mut client).await;
        assert_status(&resp, 101, "client");
        assert_pipelined_bytes_arrive(&mut server).await;
    }
);

e2e!(
    pipelined_request_dropped_when_backend_refuses,
    |relay| async move {
        let (proxy, backend) = raw_proxy(relay, "/pipe").await;
        let mut both = upgrade_request("/pipe/x", &[]);
        both.extend_from_slice(SECOND);
        let mut client = send(&proxy, &both).await;
        let (mut server, _head) = backend.next_head_alone().await;
        let answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        server.write_all(answer).await.expect("backend answers 403");
        let (got, _) = read_to_end(&mut client, STEP).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(answer)
        );
        let what = "pipelined bytes at the backend after it refused";
        assert_closed_without_bytes(&mut server, what).await;
        assert_eq!(backend.accepted(), 1, "no second backend connection");
    }
);

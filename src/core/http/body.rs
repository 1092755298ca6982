//! Resumable body framing: Content-Length, chunked (with trailers) and until-close bodies,
//! checked byte by byte as they stream through and written out again in canonical form.
//!
//! ```text
//!   in:  "5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\nGET /next..."
//!   out: "5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"        consumed: up to the end of the body
//! ```
//!
//! The reader never holds a body: each call takes what arrived, appends the bytes the next hop
//! gets to `out`, and says how much of the input belonged to the body (the rest is the next
//! message). A chunked body is re-framed, never passed through: size lines are written fresh
//! without extensions, so a size line two parsers could read differently never travels on.

use crate::core::head::has_bare_line_ending;
use crate::core::rewrite::is_hop_by_hop;
use crate::core::validate::Body;
use std::io::Write as _;

/// Longest chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Largest trailer section.
pub const MAX_TRAILERS: usize = 8 * 1024;
/// Most trailer fields.
const MAX_TRAILER_FIELDS: usize = 32;

/// Why a body's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// A chunk-size line that is not `HEXDIG+ [BWS ";" ext] CRLF`, overflows 64 bits, holds a
    /// control or non-ASCII byte, or is longer than [`MAX_CHUNK_LINE`].
    ChunkSize,
    /// A chunk's data is not followed by CRLF.
    ChunkEnd,
    /// A malformed trailer section, or one larger than [`MAX_TRAILERS`].
    Trailer,
    /// The sender closed before the body ended.
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes left.
    Length(u64),
    UntilClose,
    /// Until close, written out chunked: each piece a chunk, the last chunk at the close.
    Rechunk,
    /// Reading a chunk-size line into `line`.
    Size,
    /// This many bytes of chunk data left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// After the last chunk: the trailer section, up to its blank line, into `line`.
    Trailers,
    Done,
}

/// The framing state of one body in flight.
#[derive(Debug)]
pub struct BodyReader {
    state: State,
    /// A partial chunk-size line or trailer section.
    line: Vec<u8>,
    /// Body bytes (chunk data or the whole body) seen so far.
    data: u64,
}

impl BodyReader {
    /// A reader for a body framed as `body`.
    pub fn new(body: Body) -> BodyReader {
        let state = match body {
            Body::None | Body::Length(0) => State::Done,
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::Size,
            Body::UntilClose => State::UntilClose,
        };
        BodyReader {
            state,
            line: Vec::new(),
            data: 0,
        }
    }

    /// True once the whole body (and its trailers) went through.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A body that runs until its sender closes, written out chunked, so that the connection
    /// it goes on to can carry another message after it.
    pub fn rechunking() -> BodyReader {
        BodyReader {
            state: State::Rechunk,
            line: Vec::new(),
            data: 0,
        }
    }

    /// True for a body that ends only when its sender closes.
    pub fn until_close(&self) -> bool {
        matches!(self.state, State::UntilClose | State::Rechunk)
    }

    /// Payload bytes seen so far (chunk data without framing).
    pub fn data_bytes(&self) -> u64 {
        self.data
    }

    /// The most bytes a read should ask for: what is left of a Content-Length, so that a read
    /// never takes the bytes of the next message. `None`: the framing sets no bound (chunked
    /// bodies find their own end; what follows it is handed back).
    pub fn read_limit(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            State::UntilClose
            | State::Rechunk
            | State::Size
            | State::Data(_)
            | State::DataCr
            | State::DataLf
            | State::Trailers => None,
        }
    }

    /// Passes up to `n` body bytes from the front of `input` to `out` unchanged (a length body,
    /// a chunk's data) and returns how many of the `n` are still to come.
    fn pass(&mut self, n: u64, input: &mut &[u8], out: &mut Vec<u8>) -> u64 {
        let k = input.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let (now, rest) = std::mem::take(input).split_at(k);
        out.extend_from_slice(now);
        *input = rest;
        self.data += k as u64;
        n - k as u64
    }

    /// Takes body bytes from `input`, appends what the next hop gets to `out`, and returns how
    /// many bytes of `input` belonged to the body. Fewer than `input.len()` only once the body
    /// is done: the rest is the next message.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<usize, FramingError> {
        let total = input.len();
        while !input.is_empty() {
            match self.state {
                State::Done => break,
                State::Length(n) => {
                    self.state = match self.pass(n, &mut input, out) {
                        0 => State::Done,
                        left => State::Length(left),
                    };
                }
                State::UntilClose => {
                    out.extend_from_slice(input);
                    self.data += input.len() as u64;
                    input = &[];
                }
                State::Rechunk => {
                    let _ = write!(out, "{:x}\r\n", input.len());
                    out.extend_from_slice(input);
                    out.extend_from_slice(b"\r\n");
                    self.data += input.len() as u64;
                    input = &[];
                }
                State::Size => {
                    let (take, complete) = match input.iter().position(|&b| b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (input.len(), false),
                    };
                    if self.line.len() + take > MAX_CHUNK_LINE {
                        return Err(FramingError::ChunkSize);
                    }
                    self.line.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    // A CR is only ever followed by the LF that ends the line.
                    let l = &self.line;
                    if l.iter().take(l.len() - 1).any(|&b| b == b'\r')
                        && !(complete && l.ends_with(b"\r\n"))
                    {
                        return Err(FramingError::ChunkSize);
                    }
                    if !complete {
                        continue;
                    }
                    let size = chunk_size(&self.line)?;
                    self.line.clear();
                    if size == 0 {
                        out.extend_from_slice(b"0\r\n");
                        self.state = State::Trailers;
                    } else {
                        let _ = write!(out, "{size:x}\r\n");
                        self.state = State::Data(size);
                    }
                }
                State::Data(n) => {
                    self.state = match self.pass(n, &mut input, out) {
                        0 => State::DataCr,
                        left => State::Data(left),
                    };
                }
                State::DataCr => {
                    if input[0] != b'\r' {
                        return Err(FramingError::ChunkEnd);
                    }
                    input = &input[1..];
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if input[0] != b'\n' {
                        return Err(FramingError::ChunkEnd);
                    }
                    input = &input[1..];
                    out.extend_from_slice(b"\r\n");
                    self.state = State::Size;
                }
                State::Trailers => {
                    // Byte by byte: trailer sections are rare and small, and the end must be
                    // found exactly (what follows is the next message).
                    let b = input[0];
                    input = &input[1..];
                    let prev = self.line.last().copied();
                    // Every LF ends a CRLF and every CR starts one, checked as bytes arrive.
                    if (b == b'\n') != (prev == Some(b'\r')) {
                        return Err(FramingError::Trailer);
                    }
                    self.line.push(b);
                    let l = &self.line;
                    if l.len() > MAX_TRAILERS {
                        return Err(FramingError::Trailer);
                    }
                    if l == b"\r\n" || l.ends_with(b"\r\n\r\n") {
                        write_trailers(&self.line, out)?;
                        self.line = Vec::new();
                        self.state = State::Done;
                    }
                }
            }
        }
        Ok(total - input.len())
    }

    /// The sender closed: fine for a body that runs until close (it is done now; a rechunked
    /// one gets its last chunk in `out`), an error for any other body not done yet.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), FramingError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            State::Rechunk => {
                out.extend_from_slice(b"0\r\n\r\n");
                self.state = State::Done;
                Ok(())
            }
            State::Length(_)
            | State::Size
            | State::Data(_)
            | State::DataCr
            | State::DataLf
            | State::Trailers => Err(FramingError::Truncated),
        }
    }
}

/// The size of a complete chunk-size line (ending with LF).
///
/// httparse's `parse_chunk_size` reads the number; before it, the line is held to
/// `HEXDIG+ [BWS ";" chunk-ext] CRLF` with printable ASCII only, because httparse accepts an
/// empty size, a bare LF inside an extension and whitespace after the size, any of which a
/// backend may read differently.
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let bad = FramingError::ChunkSize;
    let text = line.strip_suffix(b"\r\n").ok_or(bad)?;
    if !text.first().is_some_and(u8::is_ascii_hexdigit)
        || text
            .iter()
            .any(|&b| !(b == b'\t' || (0x20..=0x7e).contains(&b)))
    {
        return Err(bad);
    }
    let digits = text
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(text.len());
    let rest = &text[digits..];
    if !rest.is_empty() && !rest.trim_ascii_start().starts_with(b";") {
        return Err(bad);
    }
    match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((n, size))) if n == line.len() => Ok(size),
        _ => Err(bad),
    }
}

/// True for a trailer field that must not travel: framing, routing and hop-by-hop fields (a
/// trailer cannot change how the message was framed or where it went), and `_` lookalikes of
/// them.
fn forbidden_trailer(name: &str) -> bool {
    let check = |n: &str| {
        is_hop_by_hop(n)
            || [
                "content-length",
                "host",
                "content-type",
                "content-encoding",
                "expect",
            ]
            .iter()
            .any(|f| n.eq_ignore_ascii_case(f))
    };
    check(name) || (name.contains('_') && check(&name.replace('_', "-")))
}

/// Checks a complete trailer section (`\r\n`, or fields and a blank line) and appends the
/// fields that may travel, then the blank line.
fn write_trailers(section: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
    if section != b"\r\n" {
        if has_bare_line_ending(section) || section.contains(&0) {
            return Err(FramingError::Trailer);
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        match httparse::parse_headers(section, &mut fields) {
            Ok(httparse::Status::Complete((n, parsed))) if n == section.len() => {
                for f in parsed.iter().filter(|f| !forbidden_trailer(f.name)) {
                    out.extend_from_slice(f.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(f.value);
                    out.extend_from_slice(b"\r\n");
                }
            }
            _ => return Err(FramingError::Trailer),
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns (output, consumed, error).
    fn run(body: Body, input: &[u8], step: usize) -> (Vec<u8>, usize, Option<FramingError>) {
        let mut r = BodyReader::new(body);
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(step.max(1)) {
            match r.feed(piece, &mut out) {
                Ok(n) => {
                    used += n;
                    if n < piece.len() {
                        break;
                    }
                }
                Err(e) => return (out, used, Some(e)),
            }
        }
        assert!(r.is_done() || used == input.len());
        (out, used, None)
    }

    #[test]
    fn length_stops_at_the_end_whatever_the_pieces() {
        for step in [1, 2, 3, 7, 100] {
            let (out, used, err) = run(Body::Length(5), b"helloGET / HTTP/1.1", step);
            assert_eq!(
                (out.as_slice(), used, err),
                (&b"hello"[..], 5, None),
                "{step}"
            );
        }
        let r = BodyReader::new(Body::Length(0));
        assert!(r.is_done());
        assert_eq!(BodyReader::new(Body::Length(9)).read_limit(), Some(9));
    }

    #[test]
    fn chunked_is_reframed_and_stops_after_trailers() {
        let input = b"5;ext=\"a b\"\r\nhello\r\n00A\r\n0123456789\r\n0\r\nX-Sum: 1\r\nContent-Length: 9\r\n\r\nNEXT";
        for step in [1, 2, 5, 13, 1000] {
            let (out, used, err) = run(Body::Chunked, input, step);
            assert_eq!(err, None, "step {step}");
            assert_eq!(used, input.len() - 4, "step {step}");
            assert_eq!(
                String::from_utf8_lossy(&out),
                "5\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n",
                "step {step}"
            );
        }
        let (out, used, err) = run(Body::Chunked, b"0\r\n\r\n", 1);
        assert_eq!((out.as_slice(), used, err), (&b"0\r\n\r\n"[..], 5, None));
    }

    #[test]
    fn bad_chunk_framing_is_refused() {
        use FramingError as E;
        let cases: &[(&[u8], FramingError)] = &[
            (b"\r\n", E::ChunkSize),                  // empty size
            (b"5\nhello\r\n0\r\n\r\n", E::ChunkSize), // bare LF
            (b"5\rhello", E::ChunkSize),              // bare CR
            (b" 5\r\n", E::ChunkSize),                // leading space
            (b"5 \r\n", E::ChunkSize),                // trailing space, no extension
            (b"-1\r\n", E::ChunkSize),                // negative
            (b"+5\r\n", E::ChunkSize),                // sign
            (b"0x5\r\n", E::ChunkSize),               // prefix
            (b"5;a\nb\r\n", E::ChunkSize),            // LF inside an extension
            (b"5;\x01\r\n", E::ChunkSize),            // control byte
            (b"5;\xff\r\n", E::ChunkSize),            // non-ASCII
            (b"10000000000000000\r\n", E::ChunkSize), // 17 hex digits: overflow
            (b"5\r\nhelloX\r\n", E::ChunkEnd),        // data longer than its size
            (b"5\r\nhell\r\n", E::ChunkEnd),          // shorter: the CRLF lands in the data
            (b"0\r\nX: 1\n\r\n", E::Trailer),         // bare LF in a trailer
            (b"0\r\nX : 1\r\n\r\n", E::Trailer),      // space before the colon
            (b"0\r\n\n", E::Trailer),
        ];
        for (input, want) in cases {
            let (_, _, err) = run(Body::Chunked, input, 1);
            assert_eq!(err, Some(*want), "{:?}", String::from_utf8_lossy(input));
            let (_, _, err) = run(Body::Chunked, input, 64);
            assert_eq!(err, Some(*want), "{:?}", String::from_utf8_lossy(input));
        }
        let long = [b"5;".as_slice(), &[b'a'; MAX_CHUNK_LINE]].concat();
        assert_eq!(run(Body::Chunked, &long, 100).2, Some(E::ChunkSize));
    }

    #[test]
    fn sixteen_hex_digits_fit_and_size_is_written_canonically() {
        let mut r = BodyReader::new(Body::Chunked);
        let mut out = Vec::new();
        assert_eq!(r.feed(b"000000000000000F\r\n", &mut out), Ok(18));
        assert_eq!(out, b"f\r\n");
    }

    #[test]
    fn eof_ends_only_until_close_bodies() {
        let mut r = BodyReader::new(Body::UntilClose);
        let mut out = Vec::new();
        assert_eq!(r.feed(b"abc", &mut out), Ok(3));
        assert_eq!(r.finish(&mut out), Ok(()));
        assert!(r.is_done());
        let mut r = BodyReader::new(Body::Length(4));
        assert_eq!(r.feed(b"abc", &mut out), Ok(3));
        assert_eq!(r.finish(&mut out), Err(FramingError::Truncated));
        let mut r = BodyReader::new(Body::Chunked);
        assert_eq!(r.feed(b"3\r\nabc\r\n", &mut out), Ok(8));
        assert_eq!(r.finish(&mut out), Err(FramingError::Truncated));
        // Until close, rechunked: each piece a chunk, the last at the close.
        let mut r = BodyReader::rechunking();
        let mut out = Vec::new();
        assert_eq!(r.feed(b"data: 1\n\n", &mut out), Ok(9));
        assert_eq!(r.feed(b"xy", &mut out), Ok(2));
        assert!(!r.is_done() && r.until_close());
        assert_eq!(r.finish(&mut out), Ok(()));
        assert_eq!(out, b"9\r\ndata: 1\n\n\r\n2\r\nxy\r\n0\r\n\r\n");
    }
}

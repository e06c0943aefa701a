//! The SCGI front (<https://python.ca/scgi/protocol.txt>): a request is a
//! netstring of NUL-separated header pairs (`CONTENT_LENGTH` first, `SCGI` =
//! `1` present) followed by exactly CONTENT_LENGTH body bytes; the response is
//! a CGI response (Status header, headers, blank line, body), then the
//! connection is closed.
//!
//! Owns: the sans-I/O decoder of the request head ([`decode_head`], capped
//! by [`Limits`]) and the connection driver implementing [`Exchange`], with
//! the body spooled and the response queued exactly as the FastCGI front does.
//! Must not: run applications (it hands a [`Request`] to a [`Back`]) or decide
//! about processes and signals.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use crate::back::{Back, Context, Outcome};
use crate::config::Limits;
use crate::front::{self, outq::OutQueue};
use crate::request::{Exchange, InputEvent, Request, ResponseHead};
use crate::spool::Spool;
use crate::sys::Conn;

/// How long a peer may stay silent while not taking our response. The head
/// has `Limits::request_read_timeout` from the accept.
const IO_TIMEOUT: Duration = Duration::from_secs(40);
/// After the response, how long we keep reading a body nobody wanted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Digits of the netstring length we accept (caps it below 100 MB whatever
/// the limits say).
const MAX_LENGTH_DIGITS: usize = 8;
/// Body bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Codec

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScgiError {
    /// The netstring length is not decimal digits followed by ':'.
    BadLength,
    /// The netstring is longer than the limit (`max_params_bytes`).
    TooLarge { length: usize, max: usize },
    /// The netstring does not end with ','.
    MissingComma,
    /// The headers are not NUL-terminated name/value pairs.
    BadHeaders,
    /// More header pairs than `max_params`.
    TooManyHeaders(usize),
    /// The first header is not CONTENT_LENGTH.
    ContentLengthNotFirst,
    /// CONTENT_LENGTH is not a decimal number.
    BadContentLength,
    /// No `SCGI: 1` header.
    NotScgi,
}

impl fmt::Display for ScgiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScgiError::BadLength => f.write_str("malformed netstring length"),
            ScgiError::TooLarge { length, max } => {
                write!(f, "headers of {length} bytes exceed the limit of {max}")
            }
            ScgiError::MissingComma => f.write_str("netstring does not end with ','"),
            ScgiError::BadHeaders => f.write_str("headers are not NUL-terminated pairs"),
            ScgiError::TooManyHeaders(n) => write!(f, "more than {n} headers"),
            ScgiError::ContentLengthNotFirst => {
                f.write_str("CONTENT_LENGTH is not the first header")
            }
            ScgiError::BadContentLength => f.write_str("CONTENT_LENGTH is not a number"),
            ScgiError::NotScgi => f.write_str("no SCGI=1 header"),
        }
    }
}

/// A decoded request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub params: Pairs,
    pub content_length: u64,
}

/// What [`decode_head`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// More bytes are needed.
    Partial,
    /// The head, and how many bytes of the input it used.
    Complete(Head, usize),
}

/// Decode the head at the start of `input`. The declared length is checked
/// against `max_bytes` before anything is buffered for it, so a peer cannot
/// make us hold more than `max_bytes` (+ a few) bytes of head.
pub fn decode_head(input: &[u8], max_bytes: usize, max_pairs: usize) -> Result<Decoded, ScgiError> {
    let digits = input.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > MAX_LENGTH_DIGITS {
        return Err(ScgiError::BadLength);
    }
    let Some(&after) = input.get(digits) else {
        return Ok(Decoded::Partial);
    };
    if digits == 0 || after != b':' {
        return Err(ScgiError::BadLength);
    }
    let length: usize = std::str::from_utf8(&input[..digits])
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(ScgiError::BadLength)?;
    if length > max_bytes {
        return Err(ScgiError::TooLarge {
            length,
            max: max_bytes,
        });
    }
    let start = digits + 1;
    let Some(comma) = input.get(start + length) else {
        return Ok(Decoded::Partial);
    };
    if *comma != b',' {
        return Err(ScgiError::MissingComma);
    }
    let params = decode_pairs(&input[start..start + length], max_pairs)?;
    let content_length = match params.first() {
        Some((name, value)) if name == b"CONTENT_LENGTH" => std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .ok_or(ScgiError::BadContentLength)?,
        _ => return Err(ScgiError::ContentLengthNotFirst),
    };
    if !params.iter().any(|(n, v)| n == b"SCGI" && v == b"1") {
        return Err(ScgiError::NotScgi);
    }
    Ok(Decoded::Complete(
        Head {
            params,
            content_length,
        },
        start + length + 1,
    ))
}

/// Append a request head (what [`decode_head`] reads): the netstring of
/// NUL-separated pairs, CONTENT_LENGTH first and SCGI = 1 second, then
/// `pairs` (their own CONTENT_LENGTH and SCGI left out). A name or value
/// with a NUL cannot be carried: it is left out.
pub fn encode_head<'a>(
    out: &mut Vec<u8>,
    content_length: u64,
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) {
    let mut block = Vec::new();
    let mut pair = |name: &[u8], value: &[u8]| {
        if !name.is_empty() && !name.contains(&0) && !value.contains(&0) {
            block.extend_from_slice(name);
            block.push(0);
            block.extend_from_slice(value);
            block.push(0);
        }
    };
    pair(b"CONTENT_LENGTH", content_length.to_string().as_bytes());
    pair(b"SCGI", b"1");
    for (name, value) in pairs {
        if name != b"CONTENT_LENGTH" && name != b"SCGI" {
            pair(name, value);
        }
    }
    out.extend_from_slice(block.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(&block);
    out.push(b',');
}

/// Header name-value pairs, in order.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn decode_pairs(mut bytes: &[u8], max_pairs: usize) -> Result<Pairs, ScgiError> {
    let mut pairs = Vec::new();
    while !bytes.is_empty() {
        if pairs.len() == max_pairs {
            return Err(ScgiError::TooManyHeaders(max_pairs));
        }
        let mut fields = bytes.splitn(3, |&b| b == 0);
        let (Some(name), Some(value), Some(rest)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(ScgiError::BadHeaders);
        };
        if name.is_empty() {
            return Err(ScgiError::BadHeaders);
        }
        pairs.push((name.to_vec(), value.to_vec()));
        bytes = rest;
    }
    Ok(pairs)
}

// ---------------------------------------------------------------------------
// Connection driver

/// Serve one accepted SCGI connection (one request). Errors are logged here.
/// `conn` comes from `sys::accept`: non-blocking.
pub fn serve_connection(conn: Conn, back: &mut dyn Back, ctx: &mut Context<'_>, limits: Limits) {
    let mut exchange = match read_head(conn, ctx, limits) {
        Ok(Some(exchange)) => exchange,
        Ok(None) => return,
        Err(e) => {
            log::error!("scgi: closing connection: {e}");
            return;
        }
    };
    let outcome = back.serve(&mut exchange, ctx);
    // A body we could not hold stopped the back: answer 503 all the same.
    if let Some(e) = exchange.spool_failed.take() {
        crate::front::answer_spool_failure("scgi", &mut exchange, &e);
    } else if outcome == Outcome::FrontGone {
        return;
    }
    if let Err(e) = exchange.settle(ctx) {
        log::warn!("scgi: closing connection: {e}");
    }
}

/// Wait for `conn` to become ready for `flags`, a stop signal, or the timeout.
/// Returns whether the connection is ready.
fn read_head(
    conn: Conn,
    ctx: &Context<'_>,
    limits: Limits,
) -> Result<Option<ScgiExchange>, String> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let deadline = Instant::now() + limits.request_read_timeout;
    loop {
        match decode_head(&buf, limits.max_params_bytes, limits.max_params) {
            Err(e) => return Err(e.to_string()),
            Ok(Decoded::Complete(head, used)) => {
                let mut body = Spool::new();
                let already = buf.len() - used;
                let take = usize::try_from(head.content_length).map_or(already, |n| n.min(already));
                body.push(&buf[used..used + take])
                    .map_err(|e| e.to_string())?;
                let remaining = head.content_length - take as u64;
                return Ok(Some(ScgiExchange {
                    conn,
                    request: Request::new(head.params),
                    body,
                    remaining,
                    out: OutQueue::new(),
                    head_sent: false,
                    spool_failed: None,
                    socket_full: false,
                }));
            }
            Ok(Decoded::Partial) => {}
        }
        if buf.is_empty() && crate::sys::stop_requested() {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no complete request within {}s (request_read_timeout)",
                limits.request_read_timeout.as_secs_f64()
            ));
        }
        if !front::wait(conn.as_fd(), None, PollFlags::POLLIN, ctx, left)
            .map_err(|e| e.to_string())?
        {
            continue;
        }
        let old = buf.len();
        match front::read_some(&conn, &mut buf, 16 * 1024).map_err(|e| e.to_string())? {
            Some(0) if buf.is_empty() => return Ok(None),
            Some(0) => {
                return Err(format!(
                    "peer closed after {old} bytes of an incomplete head"
                ));
            }
            Some(_) | None => {}
        }
    }
}

/// One SCGI request as the back sees it.
struct ScgiExchange {
    conn: Conn,
    request: Request,
    /// Body bytes read and not yet taken by the application.
    body: Spool,
    /// Body bytes still to come from the socket.
    remaining: u64,
    out: OutQueue,
    head_sent: bool,
    /// The body could not be held (a full temporary directory): the back
    /// was told the connection failed; the rest of the body is dropped.
    spool_failed: Option<io::Error>,
    /// The last splice found the socket full: counted as output backlog
    /// until the socket is ready again.
    socket_full: bool,
}

impl ScgiExchange {
    /// Read up to one chunk of the body. `Ok(false)`: the peer closed early.
    fn read_body(&mut self) -> io::Result<bool> {
        if self.remaining == 0 {
            return Ok(true);
        }
        let max = usize::try_from(self.remaining).map_or(READ_CHUNK, |r| r.min(READ_CHUNK));
        let mut chunk = Vec::new();
        match front::read_some(&self.conn, &mut chunk, max)? {
            Some(0) => Ok(false),
            Some(n) => {
                self.remaining -= n as u64;
                if self.spool_failed.is_none()
                    && let Err(e) = self.body.push(&chunk)
                {
                    let err = crate::front::StoppedByFront::error(&e);
                    self.spool_failed = Some(e);
                    return Err(err);
                }
                Ok(true)
            }
            None => Ok(true),
        }
    }

    /// After the response: write everything queued, read (and drop) the rest
    /// of the body for a moment so closing does not reset the connection.
    fn settle(&mut self, ctx: &Context<'_>) -> io::Result<()> {
        front::flush_within(&mut self.out, &mut self.conn, ctx, IO_TIMEOUT)?;
        self.conn.shutdown_write();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.remaining > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero()
                || !front::wait(self.conn.as_fd(), None, PollFlags::POLLIN, ctx, left)?
            {
                break;
            }
            self.body = Spool::new();
            if !self.read_body()? {
                break;
            }
        }
        Ok(())
    }
}

impl Exchange for ScgiExchange {
    fn request(&self) -> &Request {
        &self.request
    }

    fn poll_interest(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
        let mut flags = PollFlags::empty();
        if self.remaining > 0 {
            flags |= PollFlags::POLLIN;
        }
        if self.out.pending() > 0 || self.socket_full {
            flags |= PollFlags::POLLOUT;
        }
        (!flags.is_empty()).then(|| (self.conn.as_fd(), flags))
    }

    fn input_pending(&self) -> bool {
        false
    }

    fn on_ready(&mut self) -> io::Result<InputEvent> {
        self.socket_full = false;
        self.out.flush_to_socket(&mut self.conn)?;
        if self.read_body()? {
            Ok(InputEvent::Progress)
        } else {
            Ok(InputEvent::Closed)
        }
    }

    fn body(&self) -> &[u8] {
        self.body.front()
    }

    fn consume_body(&mut self, n: usize) {
        if let Err(e) = self.body.consume(n) {
            log::error!("scgi: cannot read back the spooled request body: {e}");
        }
    }

    fn body_finished(&self) -> bool {
        self.remaining == 0
    }

    fn send_head(&mut self, head: &ResponseHead) -> io::Result<()> {
        head.write_cgi(self.out.tail());
        self.head_sent = true;
        self.out.flush_to_socket(&mut self.conn)
    }

    fn send_body(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.tail().extend_from_slice(data);
        self.out.flush_to_socket(&mut self.conn)
    }

    fn can_splice(&self) -> bool {
        crate::sys::splice_works()
    }

    /// The response is the bytes themselves (no records): spliced as they are.
    fn splice_body(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        self.out.flush_to_socket(&mut self.conn)?;
        let moved = if self.out.pending() > 0 {
            0
        } else {
            self.out.raise_send_buffer(&self.conn);
            match crate::sys::splice_to_socket(pipe, self.conn.as_fd(), len) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            }
        };
        self.socket_full = moved == 0;
        Ok(moved)
    }

    fn output_backlog(&self) -> usize {
        self.out.pending() + usize::from(self.socket_full)
    }

    fn head_sent(&self) -> bool {
        self.head_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"70:CONTENT_LENGTH\x0027\x00SCGI\x001\x00REQUEST_METHOD\x00POST\x00REQUEST_URI\x00/deepthought\x00,";

    #[test]
    fn spec_example() {
        let mut input = HEAD.to_vec();
        input.extend_from_slice(b"What is the answer to life?");
        let Decoded::Complete(head, used) = decode_head(&input, 1024, 100).unwrap() else {
            panic!("partial")
        };
        assert_eq!(used, HEAD.len());
        assert_eq!(head.content_length, 27);
        assert_eq!(head.params.len(), 4);
        assert_eq!(
            head.params[3],
            (b"REQUEST_URI".to_vec(), b"/deepthought".to_vec())
        );
    }

    #[test]
    fn every_truncation_is_partial() {
        for cut in 0..HEAD.len() {
            assert_eq!(
                decode_head(&HEAD[..cut], 1024, 100),
                Ok(Decoded::Partial),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn malformed_heads() {
        let cases: &[(&[u8], ScgiError)] = &[
            (b":", ScgiError::BadLength),
            (b"1x", ScgiError::BadLength),
            (b"123456789:", ScgiError::BadLength),
            (
                b"2000:",
                ScgiError::TooLarge {
                    length: 2000,
                    max: 1024,
                },
            ),
            (b"3:a\x00b;", ScgiError::MissingComma),
            (b"4:a\x00b\x00,", ScgiError::ContentLengthNotFirst),
            (b"3:a\x00b,", ScgiError::BadHeaders),
            (b"17:CONTENT_LENGTH\x00x\x00,", ScgiError::BadContentLength),
            (b"17:CONTENT_LENGTH\x000\x00,", ScgiError::NotScgi),
            (
                b"24:CONTENT_LENGTH\x000\x00SCGI\x001\x00,",
                ScgiError::TooManyHeaders(1),
            ),
        ];
        for (input, want) in cases {
            let max_pairs = if matches!(want, ScgiError::TooManyHeaders(_)) {
                1
            } else {
                100
            };
            assert_eq!(
                decode_head(input, 1024, max_pairs).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }
}

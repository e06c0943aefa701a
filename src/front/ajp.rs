//! The AJP13 front (Apache `mod_proxy_ajp`, the AJPv13 packet format): packets
//! from the web server start `0x12 0x34` and a 2-byte length, ours `AB` and a
//! 2-byte length. A request is one FORWARD_REQUEST (method, URI, peer, coded
//! headers, attributes); its body comes in body packets, the first unasked when
//! Content-Length > 0, the others after our GET_BODY_CHUNK; we answer with
//! SEND_HEADERS, SEND_BODY_CHUNKs within the packet size and END_RESPONSE
//! (reuse: the connection then carries the next request). CPING gets CPONG.
//!
//! Owns: the sans-I/O codec (packet framing capped by the 16-bit length, the
//! forward request decoded into meta-variables capped by [`Limits`], the
//! encoders of our packets) and the connection driver implementing
//! [`Exchange`]. Security (Ghostcat, CVE-2020-1938): the `secret` attribute is
//! required when one is configured and compared in constant time; request
//! attributes only ever become a fixed set of meta-variables, never arbitrary
//! names. SCRIPT_NAME and PATH_INFO are not produced here (AJP has no
//! SCRIPT_NAME): [`crate::request`] derives them from REQUEST_URI and the
//! configured `script_name`.
//! Must not: run applications (it hands a [`Request`] to a [`Back`]) or decide
//! about processes and signals.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use crate::back::{Back, Context, Outcome};
use crate::config::Limits;
use crate::front::{self, outq::OutQueue};
use crate::request::{Exchange, InputEvent, Request, ResponseHead};
use crate::spool::Spool;
use crate::sys::Conn;

/// How long a peer may stay silent while not taking our response.
const IO_TIMEOUT: Duration = Duration::from_secs(40);
/// The packet size we write (mod_proxy_ajp's default ProxyIOBufferSize /
/// `packetsize`, the smallest it accepts): header included.
pub const PACKET_SIZE: usize = 8192;
/// Body bytes in one SEND_BODY_CHUNK: the packet less `AB`, length, type,
/// chunk length and the trailing NUL.
pub const MAX_SEND_CHUNK: usize = PACKET_SIZE - 8;
/// Body bytes asked for in one GET_BODY_CHUNK (mod_proxy_ajp's
/// AJP13_MAX_SEND_BODY_SZ: the packet less header and chunk length).
pub const MAX_BODY_REQUEST: usize = PACKET_SIZE - 6;

/// Packet types from the web server.
const FORWARD_REQUEST: u8 = 2;
const SHUTDOWN: u8 = 7;
const PING: u8 = 8;
const CPING: u8 = 10;
/// Packet types to the web server.
const SEND_BODY_CHUNK: u8 = 3;
const SEND_HEADERS: u8 = 4;
const END_RESPONSE: u8 = 5;
const GET_BODY_CHUNK: u8 = 6;
const CPONG: u8 = 9;

// ---------------------------------------------------------------------------
// Codec

/// Why input from the web server was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AjpError {
    /// A packet does not start with 0x12 0x34.
    BadMagic([u8; 2]),
    /// A packet ends before one of its fields does.
    Truncated(&'static str),
    /// A string is not NUL-terminated.
    Unterminated(&'static str),
    /// A packet type we do not take at this point.
    UnexpectedPacket(u8),
    /// A method code outside the table (and no stored method).
    UnknownMethod(u8),
    /// A coded header name outside the table.
    UnknownHeaderCode(u16),
    /// An attribute code outside the table.
    UnknownAttribute(u8),
    /// More headers or attributes than `max_params`.
    TooManyHeaders(usize),
    /// The meta-variables exceed `max_params_bytes`.
    TooLarge { length: usize, max: usize },
    /// Content-Length is not a decimal number.
    BadContentLength,
    /// A body packet whose chunk length disagrees with the packet, or more
    /// body than Content-Length.
    BadBodyChunk,
    /// Bytes left in a forward request after its attribute terminator.
    TrailingBytes,
}

impl fmt::Display for AjpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AjpError::BadMagic(m) => {
                write!(
                    f,
                    "packet starts with {:#04x} {:#04x}, not 0x12 0x34",
                    m[0], m[1]
                )
            }
            AjpError::Truncated(what) => write!(f, "packet ends inside the {what}"),
            AjpError::Unterminated(what) => write!(f, "the {what} is not NUL-terminated"),
            AjpError::UnexpectedPacket(t) => write!(f, "unexpected packet type {t}"),
            AjpError::UnknownMethod(m) => write!(f, "unknown method code {m}"),
            AjpError::UnknownHeaderCode(c) => write!(f, "unknown coded header {c:#06x}"),
            AjpError::UnknownAttribute(a) => write!(f, "unknown attribute code {a:#04x}"),
            AjpError::TooManyHeaders(n) => write!(f, "more than {n} headers and attributes"),
            AjpError::TooLarge { length, max } => {
                write!(f, "request of {length} bytes exceeds the limit of {max}")
            }
            AjpError::BadContentLength => f.write_str("Content-Length is not a number"),
            AjpError::BadBodyChunk => f.write_str("malformed or excess body chunk"),
            AjpError::TrailingBytes => f.write_str("bytes after the attribute list"),
        }
    }
}

/// Split the first complete packet from the web server off `input`:
/// `Ok(None)` while more bytes are needed, else its payload and the bytes
/// used. The 16-bit length caps a packet at 65 539 bytes.
pub fn decode_packet(input: &[u8]) -> Result<Option<(&[u8], usize)>, AjpError> {
    match input {
        [] | [0x12] => return Ok(None),
        [a, b, ..] if [*a, *b] != [0x12, 0x34] => return Err(AjpError::BadMagic([*a, *b])),
        [0x12, b, ..] if *b != 0x34 => return Err(AjpError::BadMagic([0x12, *b])),
        _ => {}
    }
    let Some(&[hi, lo]) = input.get(2..4) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    match input.get(4..4 + len) {
        Some(payload) => Ok(Some((payload, 4 + len))),
        None => Ok(None),
    }
}

/// What a packet from the web server is, outside a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Forward(Forward),
    /// CPING (or the older PING): answer CPONG.
    Ping,
    /// SHUTDOWN: close the connection.
    Shutdown,
}

/// A decoded FORWARD_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The meta-variables, in order.
    pub params: Vec<(Vec<u8>, Vec<u8>)>,
    /// The `secret` attribute, if sent.
    pub secret: Option<Vec<u8>>,
    /// Body bytes announced by Content-Length; `None` without one.
    pub content_length: Option<u64>,
    /// Transfer-Encoding: chunked without Content-Length: the body is asked
    /// for until an empty chunk.
    pub chunked: bool,
    /// What was dropped (unknown-to-us attributes, odd header names), for a
    /// debug log line.
    pub dropped: Vec<String>,
}

/// Decode the payload of a packet that is not a body chunk.
pub fn decode_message(payload: &[u8], limits: &Limits) -> Result<Message, AjpError> {
    match payload.first() {
        None => Err(AjpError::Truncated("packet type")),
        Some(&FORWARD_REQUEST) => decode_forward(&payload[1..], limits).map(Message::Forward),
        Some(&CPING | &PING) => Ok(Message::Ping),
        Some(&SHUTDOWN) => Ok(Message::Shutdown),
        Some(&t) => Err(AjpError::UnexpectedPacket(t)),
    }
}

/// Decode the payload of a body packet: the chunk (empty: the body ends).
pub fn decode_body_chunk(payload: &[u8]) -> Result<&[u8], AjpError> {
    if payload.is_empty() {
        return Ok(payload);
    }
    let mut r = Reader::new(payload);
    let len = usize::from(r.u16("body chunk length")?);
    let data = r.take(len, "body chunk")?;
    if !r.rest().is_empty() {
        return Err(AjpError::BadBodyChunk);
    }
    Ok(data)
}

/// A bounds-checked reader over a payload.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], AjpError> {
        if n > self.buf.len() {
            return Err(AjpError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, AjpError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, AjpError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn peek_u8(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// An AJP string: length, bytes, NUL; length 0xFFFF is a null string.
    fn string(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, AjpError> {
        let len = self.u16(what)?;
        if len == 0xFFFF {
            return Ok(None);
        }
        let s = self.take(usize::from(len), what)?;
        if self.u8(what)? != 0 {
            return Err(AjpError::Unterminated(what));
        }
        Ok(Some(s))
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

const METHODS: &[&str] = &[
    "OPTIONS",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "TRACE",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "ACL",
    "REPORT",
    "VERSION-CONTROL",
    "CHECKIN",
    "CHECKOUT",
    "UNCHECKOUT",
    "SEARCH",
    "MKWORKSPACE",
    "UPDATE",
    "LABEL",
    "MERGE",
    "BASELINE-CONTROL",
    "MKACTIVITY",
];

/// The method code for a stored method (sent as the `stored_method` attribute).
const STORED_METHOD: u8 = 0xFF;

/// Request header codes 0xA001.. in order, as meta-variable names.
const REQUEST_HEADERS: &[&str] = &[
    "HTTP_ACCEPT",
    "HTTP_ACCEPT_CHARSET",
    "HTTP_ACCEPT_ENCODING",
    "HTTP_ACCEPT_LANGUAGE",
    "HTTP_AUTHORIZATION",
    "HTTP_CONNECTION",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_COOKIE",
    "HTTP_COOKIE2",
    "HTTP_HOST",
    "HTTP_PRAGMA",
    "HTTP_REFERER",
    "HTTP_USER_AGENT",
];

/// Response header codes 0xA001.. in order (lower case).
const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-language",
    "content-length",
    "date",
    "last-modified",
    "location",
    "set-cookie",
    "set-cookie2",
    "servlet-engine",
    "status",
    "www-authenticate",
];

/// Attributes.
const A_CONTEXT: u8 = 0x01;
const A_SERVLET_PATH: u8 = 0x02;
const A_REMOTE_USER: u8 = 0x03;
const A_AUTH_TYPE: u8 = 0x04;
const A_QUERY_STRING: u8 = 0x05;
const A_ROUTE: u8 = 0x06;
const A_SSL_CERT: u8 = 0x07;
const A_SSL_CIPHER: u8 = 0x08;
const A_SSL_SESSION: u8 = 0x09;
const A_REQ_ATTRIBUTE: u8 = 0x0A;
const A_SSL_KEY_SIZE: u8 = 0x0B;
const A_SECRET: u8 = 0x0C;
const A_STORED_METHOD: u8 = 0x0D;
const A_ARE_DONE: u8 = 0xFF;

/// The `req_attribute` names mod_proxy_ajp sends that mean a meta-variable;
/// every other name is dropped.
const KNOWN_REQ_ATTRIBUTES: &[(&[u8], &str)] = &[
    (b"AJP_REMOTE_PORT", "REMOTE_PORT"),
    (b"AJP_LOCAL_ADDR", "SERVER_ADDR"),
];

/// A header name as a CGI meta-variable (`HTTP_` + upper case, `-` → `_`),
/// or `None` for a name that is not a token or holds `_` (which would let
/// `X_Y` pose as `X-Y`, as Apache refuses for CGI).
fn header_meta_variable(name: &[u8]) -> Option<Vec<u8>> {
    if name.is_empty()
        || !name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^`|~".contains(b))
    {
        return None;
    }
    let upper: Vec<u8> = name
        .iter()
        .map(|b| {
            if *b == b'-' {
                b'_'
            } else {
                b.to_ascii_uppercase()
            }
        })
        .collect();
    if upper == b"CONTENT_TYPE" || upper == b"CONTENT_LENGTH" {
        return Some(upper);
    }
    let mut out = b"HTTP_".to_vec();
    out.extend_from_slice(&upper);
    Some(out)
}

fn decode_forward(payload: &[u8], limits: &Limits) -> Result<Forward, AjpError> {
    let mut r = Reader::new(payload);
    let method_code = r.u8("method")?;
    let protocol = r.string("protocol")?.unwrap_or(b"HTTP/1.1");
    let uri = r.string("request URI")?.unwrap_or(b"/");
    let remote_addr = r.string("remote address")?;
    let remote_host = r.string("remote host")?;
    let server_name = r.string("server name")?;
    let server_port = r.u16("server port")?;
    let is_ssl = r.u8("is_ssl")? != 0;
    let num_headers = usize::from(r.u16("header count")?);
    if num_headers > limits.max_params {
        return Err(AjpError::TooManyHeaders(limits.max_params));
    }
    let mut f = Forward {
        params: Vec::new(),
        secret: None,
        content_length: None,
        chunked: false,
        dropped: Vec::new(),
    };
    let mut params: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(num_headers + 12);
    let add = |params: &mut Vec<(Vec<u8>, Vec<u8>)>, name: &[u8], value: &[u8]| {
        params.push((name.to_vec(), value.to_vec()));
    };
    let mut query: &[u8] = b"";
    for _ in 0..num_headers {
        let name = if r.peek_u8() == Some(0xA0) {
            let code = r.u16("header name")?;
            let index = usize::from(code & 0xFF);
            let Some(name) = index.checked_sub(1).and_then(|i| REQUEST_HEADERS.get(i)) else {
                return Err(AjpError::UnknownHeaderCode(code));
            };
            Some(name.as_bytes().to_vec())
        } else {
            let raw = r.string("header name")?.unwrap_or(b"");
            let mapped = header_meta_variable(raw);
            if mapped.is_none() {
                f.dropped
                    .push(format!("header {:?}", String::from_utf8_lossy(raw)));
            }
            mapped
        };
        let value = r.string("header value")?.unwrap_or(b"");
        let Some(name) = name else { continue };
        match name.as_slice() {
            b"CONTENT_LENGTH" => {
                let n = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse().ok())
                    .ok_or(AjpError::BadContentLength)?;
                f.content_length = Some(n);
            }
            b"HTTP_TRANSFER_ENCODING" => {
                f.chunked = value.eq_ignore_ascii_case(b"chunked");
            }
            _ => {}
        }
        add(&mut params, &name, value);
    }
    let mut method: Option<&[u8]> = METHODS
        .get(usize::from(method_code).wrapping_sub(1))
        .map(|m| m.as_bytes());
    let mut attributes = 0usize;
    loop {
        let code = r.u8("attribute code")?;
        if code == A_ARE_DONE {
            break;
        }
        attributes += 1;
        if num_headers + attributes > limits.max_params {
            return Err(AjpError::TooManyHeaders(limits.max_params));
        }
        if code == A_SSL_KEY_SIZE {
            let size = r.u16("ssl_key_size")?;
            add(
                &mut params,
                b"SSL_CIPHER_USEKEYSIZE",
                size.to_string().as_bytes(),
            );
            continue;
        }
        if code == A_REQ_ATTRIBUTE {
            let name = r.string("req_attribute name")?.unwrap_or(b"");
            let value = r.string("req_attribute value")?.unwrap_or(b"");
            match KNOWN_REQ_ATTRIBUTES.iter().find(|(n, _)| *n == name) {
                Some((_, meta)) => add(&mut params, meta.as_bytes(), value),
                None => f
                    .dropped
                    .push(format!("req_attribute {:?}", String::from_utf8_lossy(name))),
            }
            continue;
        }
        let what = match code {
            A_CONTEXT => "context",
            A_SERVLET_PATH => "servlet_path",
            A_REMOTE_USER => "remote_user",
            A_AUTH_TYPE => "auth_type",
            A_QUERY_STRING => "query_string",
            A_ROUTE => "route",
            A_SSL_CERT => "ssl_cert",
            A_SSL_CIPHER => "ssl_cipher",
            A_SSL_SESSION => "ssl_session",
            A_SECRET => "secret",
            A_STORED_METHOD => "stored_method",
            _ => return Err(AjpError::UnknownAttribute(code)),
        };
        let value = r.string(what)?.unwrap_or(b"");
        let meta: &[u8] = match code {
            A_REMOTE_USER => b"REMOTE_USER",
            A_AUTH_TYPE => b"AUTH_TYPE",
            A_SSL_CERT => b"SSL_CLIENT_CERT",
            A_SSL_CIPHER => b"SSL_CIPHER",
            A_SSL_SESSION => b"SSL_SESSION_ID",
            A_QUERY_STRING => {
                query = value;
                continue;
            }
            A_SECRET => {
                f.secret = Some(value.to_vec());
                continue;
            }
            A_STORED_METHOD => {
                method = Some(value);
                continue;
            }
            _ => {
                f.dropped.push(format!("attribute {what}"));
                continue;
            }
        };
        add(&mut params, meta, value);
    }
    if !r.rest().is_empty() {
        return Err(AjpError::TrailingBytes);
    }
    let method = match method {
        Some(m) if !m.is_empty() => m,
        _ => return Err(AjpError::UnknownMethod(method_code)),
    };
    if method_code == STORED_METHOD && method.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(AjpError::UnknownMethod(method_code));
    }
    let mut request_uri = uri.to_vec();
    if !query.is_empty() {
        request_uri.push(b'?');
        request_uri.extend_from_slice(query);
    }
    let port = server_port.to_string();
    let mut head: Vec<(&[u8], &[u8])> = vec![
        (b"GATEWAY_INTERFACE", b"CGI/1.1"),
        (b"REQUEST_METHOD", method),
        (b"SERVER_PROTOCOL", protocol),
        (b"REQUEST_URI", &request_uri),
        (b"QUERY_STRING", query),
        (b"SERVER_PORT", port.as_bytes()),
        (b"REQUEST_SCHEME", if is_ssl { b"https" } else { b"http" }),
    ];
    if is_ssl {
        head.push((b"HTTPS", b"on"));
    }
    for (name, value) in [
        (&b"REMOTE_ADDR"[..], remote_addr),
        (b"REMOTE_HOST", remote_host),
        (b"SERVER_NAME", server_name),
    ] {
        if let Some(v) = value {
            head.push((name, v));
        }
    }
    f.params = head
        .into_iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .chain(params)
        .collect();
    let length: usize = f.params.iter().map(|(n, v)| n.len() + v.len()).sum();
    if length > limits.max_params_bytes {
        return Err(AjpError::TooLarge {
            length,
            max: limits.max_params_bytes,
        });
    }
    Ok(f)
}

/// Are `given` and `wanted` equal? Takes the same time for every `given` of
/// a length (and does not stop at the first difference).
pub fn secret_matches(given: &[u8], wanted: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != wanted.len());
    for (i, w) in wanted.iter().enumerate() {
        diff |= w ^ given.get(i).copied().unwrap_or(!w);
    }
    diff == 0
}

fn packet(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(b"AB\0\0");
    body(out);
    let len = u16::try_from(out.len() - start - 4).unwrap_or(u16::MAX);
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX - 1);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s[..usize::from(len)]);
    out.push(0);
}

/// Append SEND_HEADERS for `head`. Fails (appending nothing) when the packet
/// would not fit in [`PACKET_SIZE`].
pub fn encode_send_headers(head: &ResponseHead, out: &mut Vec<u8>) -> Result<(), usize> {
    let mut p = Vec::new();
    packet(&mut p, |o| {
        o.push(SEND_HEADERS);
        o.extend_from_slice(&head.status().to_be_bytes());
        put_string(o, head.reason());
        let n = u16::try_from(head.headers().len()).unwrap_or(u16::MAX);
        o.extend_from_slice(&n.to_be_bytes());
        for (name, value) in head.headers() {
            let lower = name.to_ascii_lowercase();
            match RESPONSE_HEADERS.iter().position(|h| h.as_bytes() == lower) {
                Some(i) => o.extend_from_slice(&[0xA0, (i + 1) as u8]),
                None => put_string(o, name),
            }
            put_string(o, value);
        }
    });
    if p.len() > PACKET_SIZE {
        return Err(p.len());
    }
    out.extend_from_slice(&p);
    Ok(())
}

/// Append SEND_BODY_CHUNKs carrying `data`, each within [`PACKET_SIZE`].
pub fn encode_body(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_SEND_CHUNK) {
        packet(out, |o| {
            o.push(SEND_BODY_CHUNK);
            o.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            o.extend_from_slice(chunk);
            o.push(0);
        });
    }
}

/// Append END_RESPONSE.
pub fn encode_end_response(reuse: bool, out: &mut Vec<u8>) {
    packet(out, |o| {
        o.extend_from_slice(&[END_RESPONSE, u8::from(reuse)])
    });
}

/// Append GET_BODY_CHUNK for up to `n` bytes (at most [`MAX_BODY_REQUEST`]).
pub fn encode_get_body_chunk(n: usize, out: &mut Vec<u8>) {
    let n = n.min(MAX_BODY_REQUEST) as u16;
    packet(out, |o| {
        o.push(GET_BODY_CHUNK);
        o.extend_from_slice(&n.to_be_bytes());
    });
}

/// Append CPONG.
pub fn encode_cpong(out: &mut Vec<u8>) {
    packet(out, |o| o.push(CPONG));
}

// ---------------------------------------------------------------------------
// Connection driver

/// The socket and what was read from it but not yet used.
struct Link {
    conn: Conn,
    inbuf: Vec<u8>,
    out: OutQueue,
    peer: String,
}

impl Link {
    /// Read what is there into `inbuf`. `Ok(false)`: the peer closed.
    fn fill(&mut self) -> io::Result<bool> {
        Ok(front::read_some(&self.conn, &mut self.inbuf, 16 * 1024)? != Some(0))
    }

    /// Write everything queued, waiting at most [`IO_TIMEOUT`] for the peer.
    fn flush_all(&mut self, ctx: &Context<'_>) -> io::Result<()> {
        front::flush_within(&mut self.out, &mut self.conn, ctx, IO_TIMEOUT)
    }
}

/// Serve one accepted AJP connection: its requests one after another while
/// the web server keeps it. Errors are logged here. `secret`: the value the
/// `secret` attribute must have. `listener`: when this is the only worker,
/// an idle kept connection gives way to a waiting one.
pub fn serve_connection(
    conn: Conn,
    back: &mut dyn Back,
    ctx: &mut Context<'_>,
    limits: Limits,
    secret: Option<&[u8]>,
    listener: Option<BorrowedFd<'_>>,
) {
    let peer = conn
        .peer_ip()
        .map_or_else(|| "a local peer".to_string(), |ip| ip.to_string());
    let mut link = Link {
        conn,
        inbuf: Vec::new(),
        out: OutQueue::new(),
        peer,
    };
    let mut first = true;
    loop {
        let forward = match next_forward(&mut link, ctx, limits, first, listener) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                log::error!("ajp: closing the connection from {}: {e}", link.peer);
                return;
            }
        };
        first = false;
        if !forward.dropped.is_empty() {
            log::debug!("ajp: dropped {}", forward.dropped.join(", "));
        }
        if let Some(wanted) = secret
            && !forward
                .secret
                .as_deref()
                .is_some_and(|given| secret_matches(given, wanted))
        {
            let why = if forward.secret.is_some() {
                "a wrong"
            } else {
                "no"
            };
            log::error!(
                "ajp: refused a request from {} with {why} secret (ajp_secret is set); \
                 closing the connection",
                link.peer
            );
            let head = ResponseHead::new(403).with_header("Content-Type", "text/plain");
            if encode_send_headers(&head, link.out.tail()).is_ok() {
                encode_body(b"403 Forbidden\n", link.out.tail());
            }
            encode_end_response(false, link.out.tail());
            let _ = link.flush_all(ctx);
            return;
        }
        let (body, state) = match forward.content_length {
            Some(0) => (Spool::new(), BodyState::Complete),
            Some(n) => (
                Spool::new(),
                BodyState::Coming {
                    remaining: Some(n),
                    asked: true,
                },
            ),
            None if forward.chunked => (
                Spool::new(),
                BodyState::Coming {
                    remaining: None,
                    asked: false,
                },
            ),
            None => (Spool::new(), BodyState::Complete),
        };
        let mut exchange = AjpExchange {
            link,
            request: Request::new(forward.params),
            body,
            state,
            head_sent: false,
            spool_failed: None,
            broken: None,
        };
        // A body packet may already be buffered.
        if let Err(e) = exchange.take_packets() {
            log::error!(
                "ajp: closing the connection from {}: {e}",
                exchange.link.peer
            );
            return;
        }
        let outcome = back.serve(&mut exchange, ctx);
        if let Some(e) = exchange.spool_failed.take() {
            crate::front::answer_spool_failure("ajp", &mut exchange, &e);
        } else if outcome == Outcome::FrontGone {
            if let Some(e) = exchange.broken.take() {
                log::error!(
                    "ajp: closing the connection from {}: {e}",
                    exchange.link.peer
                );
            }
            return;
        }
        if !exchange.head_sent {
            let _ = crate::request::send_error(&mut exchange, 502, "No response.");
        }
        // A body not read to its end would be taken for the next packets.
        let reuse = exchange.state == BodyState::Complete && exchange.broken.is_none();
        encode_end_response(reuse, exchange.link.out.tail());
        link = exchange.link;
        if let Err(e) = link.flush_all(ctx) {
            log::warn!("ajp: closing the connection from {}: {e}", link.peer);
            return;
        }
        if !reuse {
            return;
        }
    }
}

/// Wait for `conn` to become ready for `flags`, a stop signal, a waiting
/// connection on `listener`, or the timeout. Returns whether `conn` is ready.
/// Has `listener` a connection waiting?
fn listener_waiting(listener: Option<BorrowedFd<'_>>) -> bool {
    let Some(l) = listener else { return false };
    let mut fds = [PollFd::new(l, PollFlags::POLLIN)];
    matches!(poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Read packets until a FORWARD_REQUEST, answering CPINGs. `Ok(None)`: the
/// peer closed or shut down between requests, a stop was asked for, or an
/// idle kept connection gave way.
fn next_forward(
    link: &mut Link,
    ctx: &Context<'_>,
    limits: Limits,
    first: bool,
    listener: Option<BorrowedFd<'_>>,
) -> Result<Option<Forward>, String> {
    let deadline = Instant::now() + limits.request_read_timeout;
    loop {
        while let Some((payload, used)) = decode_packet(&link.inbuf).map_err(|e| e.to_string())? {
            let message = decode_message(payload, &limits).map_err(|e| e.to_string())?;
            link.inbuf.drain(..used);
            match message {
                Message::Forward(f) => return Ok(Some(f)),
                Message::Shutdown => {
                    log::info!("ajp: {} sent SHUTDOWN; closing the connection", link.peer);
                    return Ok(None);
                }
                Message::Ping => {
                    encode_cpong(link.out.tail());
                    link.flush_all(ctx).map_err(|e| e.to_string())?;
                }
            }
        }
        let idle = link.inbuf.is_empty();
        if idle && (crate::sys::stop_requested() || (!first && listener_waiting(listener))) {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            if idle && !first {
                // A kept connection nobody uses: let the web server open a new one.
                return Ok(None);
            }
            return Err(format!(
                "no complete request within {}s (request_read_timeout)",
                limits.request_read_timeout.as_secs_f64()
            ));
        }
        let watch = if first { None } else { listener };
        if !front::wait(link.conn.as_fd(), watch, PollFlags::POLLIN, ctx, left)
            .map_err(|e| e.to_string())?
        {
            continue;
        }
        let had = link.inbuf.len();
        if !link.fill().map_err(|e| e.to_string())? {
            if link.inbuf.is_empty() {
                return Ok(None);
            }
            return Err(format!(
                "peer closed after {had} bytes of an incomplete packet"
            ));
        }
    }
}

/// Where the request body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// All of it received.
    Complete,
    /// More to come: `remaining` bytes (`None`: until an empty chunk);
    /// `asked`: a body packet is on its way (after our GET_BODY_CHUNK, or
    /// the first one the web server sends unasked).
    Coming { remaining: Option<u64>, asked: bool },
}

/// One AJP request as the back sees it.
struct AjpExchange {
    link: Link,
    request: Request,
    body: Spool,
    state: BodyState,
    head_sent: bool,
    /// The body could not be held (a full temporary directory).
    spool_failed: Option<io::Error>,
    /// The web server sent something malformed: the connection is not reused.
    broken: Option<AjpError>,
}

impl AjpExchange {
    /// Take the body packets buffered; ask for the next one when due.
    fn take_packets(&mut self) -> Result<(), AjpError> {
        while let BodyState::Coming { remaining, asked } = self.state {
            if !asked {
                let n = remaining.map_or(MAX_BODY_REQUEST, |r| {
                    usize::try_from(r).map_or(MAX_BODY_REQUEST, |r| r.min(MAX_BODY_REQUEST))
                });
                encode_get_body_chunk(n, self.link.out.tail());
                self.state = BodyState::Coming {
                    remaining,
                    asked: true,
                };
                continue;
            }
            let Some((payload, used)) = decode_packet(&self.link.inbuf)? else {
                return Ok(());
            };
            let chunk = decode_body_chunk(payload)?;
            let n = chunk.len() as u64;
            let left = match remaining {
                Some(r) if n > r => return Err(AjpError::BadBodyChunk),
                Some(r) => Some(r - n),
                None => None,
            };
            if self.spool_failed.is_none()
                && let Err(e) = self.body.push(chunk)
            {
                self.spool_failed = Some(e);
            }
            self.link.inbuf.drain(..used);
            self.state = if n == 0 || left == Some(0) {
                BodyState::Complete
            } else {
                BodyState::Coming {
                    remaining: left,
                    asked: false,
                }
            };
        }
        Ok(())
    }
}

impl Exchange for AjpExchange {
    fn request(&self) -> &Request {
        &self.request
    }

    fn poll_interest(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
        let mut flags = PollFlags::empty();
        if matches!(self.state, BodyState::Coming { .. }) {
            flags |= PollFlags::POLLIN;
        }
        if self.link.out.pending() > 0 {
            flags |= PollFlags::POLLOUT;
        }
        (!flags.is_empty()).then(|| (self.link.conn.as_fd(), flags))
    }

    fn input_pending(&self) -> bool {
        matches!(self.state, BodyState::Coming { asked: false, .. })
    }

    fn on_ready(&mut self) -> io::Result<InputEvent> {
        if let Err(e) = self.take_packets() {
            self.broken = Some(e.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
        }
        self.link.out.flush_to_socket(&mut self.link.conn)?;
        if matches!(self.state, BodyState::Coming { asked: true, .. }) {
            if !self.link.fill()? {
                return Ok(InputEvent::Closed);
            }
            if let Err(e) = self.take_packets() {
                self.broken = Some(e.clone());
                return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
            }
            self.link.out.flush_to_socket(&mut self.link.conn)?;
        }
        if let Some(e) = &self.spool_failed {
            return Err(crate::front::StoppedByFront::error(e));
        }
        Ok(InputEvent::Progress)
    }

    fn body(&self) -> &[u8] {
        self.body.front()
    }

    fn consume_body(&mut self, n: usize) {
        if let Err(e) = self.body.consume(n) {
            log::error!("ajp: cannot read back the spooled request body: {e}");
        }
    }

    fn body_finished(&self) -> bool {
        self.state == BodyState::Complete
    }

    fn send_head(&mut self, head: &ResponseHead) -> io::Result<()> {
        if let Err(len) = encode_send_headers(head, self.link.out.tail()) {
            return Err(io::Error::other(format!(
                "a response head of {len} bytes does not fit in an AJP packet of {PACKET_SIZE}"
            )));
        }
        self.head_sent = true;
        self.link.out.flush_to_socket(&mut self.link.conn)
    }

    fn send_body(&mut self, data: &[u8]) -> io::Result<()> {
        encode_body(data, self.link.out.tail());
        self.link.out.flush_to_socket(&mut self.link.conn)
    }

    fn output_backlog(&self) -> usize {
        self.link.out.pending()
    }

    fn head_sent(&self) -> bool {
        self.head_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
        out.push(0);
    }

    /// A forward request as mod_proxy_ajp writes it: a POST with a query
    /// string, coded and named headers, user, SSL, a req_attribute, a secret.
    fn forward_payload() -> Vec<u8> {
        let mut p = vec![FORWARD_REQUEST, 4];
        string(&mut p, b"HTTP/1.1");
        string(&mut p, b"/app/echo");
        string(&mut p, b"192.0.2.7");
        p.extend_from_slice(&0xFFFFu16.to_be_bytes()); // remote_host: null
        string(&mut p, b"example.org");
        p.extend_from_slice(&443u16.to_be_bytes());
        p.push(1);
        p.extend_from_slice(&5u16.to_be_bytes());
        p.extend_from_slice(&[0xA0, 0x0B]);
        string(&mut p, b"example.org");
        p.extend_from_slice(&[0xA0, 0x08]);
        string(&mut p, b"5");
        p.extend_from_slice(&[0xA0, 0x07]);
        string(&mut p, b"text/plain");
        string(&mut p, b"X-Forwarded-Proto");
        string(&mut p, b"https");
        string(&mut p, b"X_Sneaky");
        string(&mut p, b"1");
        p.push(A_QUERY_STRING);
        string(&mut p, b"a=1&b=2");
        p.push(A_REMOTE_USER);
        string(&mut p, b"alice");
        p.push(A_AUTH_TYPE);
        string(&mut p, b"Basic");
        p.push(A_ROUTE);
        string(&mut p, b"node1");
        p.push(A_SSL_CIPHER);
        string(&mut p, b"TLS_AES_128_GCM_SHA256");
        p.push(A_SSL_KEY_SIZE);
        p.extend_from_slice(&128u16.to_be_bytes());
        p.push(A_REQ_ATTRIBUTE);
        string(&mut p, b"AJP_REMOTE_PORT");
        string(&mut p, b"51000");
        p.push(A_REQ_ATTRIBUTE);
        string(&mut p, b"PATH");
        string(&mut p, b"/evil");
        p.push(A_SECRET);
        string(&mut p, b"s3cret");
        p.push(A_ARE_DONE);
        p
    }

    fn packet_of(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x12, 0x34];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn forward() -> Forward {
        match decode_message(&forward_payload(), &limits()).unwrap() {
            Message::Forward(f) => f,
            other => panic!("{other:?}"),
        }
    }

    fn get<'a>(f: &'a Forward, name: &str) -> Option<&'a str> {
        f.params
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn forward_request_meta_variables() {
        let f = forward();
        for (name, want) in [
            ("REQUEST_METHOD", "POST"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_URI", "/app/echo?a=1&b=2"),
            ("QUERY_STRING", "a=1&b=2"),
            ("REMOTE_ADDR", "192.0.2.7"),
            ("SERVER_NAME", "example.org"),
            ("SERVER_PORT", "443"),
            ("HTTPS", "on"),
            ("REQUEST_SCHEME", "https"),
            ("HTTP_HOST", "example.org"),
            ("CONTENT_LENGTH", "5"),
            ("CONTENT_TYPE", "text/plain"),
            ("HTTP_X_FORWARDED_PROTO", "https"),
            ("REMOTE_USER", "alice"),
            ("AUTH_TYPE", "Basic"),
            ("SSL_CIPHER", "TLS_AES_128_GCM_SHA256"),
            ("SSL_CIPHER_USEKEYSIZE", "128"),
            ("REMOTE_PORT", "51000"),
        ] {
            assert_eq!(get(&f, name), Some(want), "{name}");
        }
        assert_eq!(f.content_length, Some(5));
        assert_eq!(f.secret.as_deref(), Some(&b"s3cret"[..]));
        // Never arbitrary names: not PATH from a req_attribute, not X_Sneaky,
        // not the route, not SCRIPT_NAME (derived later).
        for absent in [
            "PATH",
            "HTTP_X_SNEAKY",
            "REMOTE_HOST",
            "SCRIPT_NAME",
            "PATH_INFO",
        ] {
            assert_eq!(get(&f, absent), None, "{absent}");
        }
        assert!(f.params.iter().all(|(n, _)| n != b"AJP_ROUTE"));
        assert_eq!(
            f.dropped,
            [
                "header \"X_Sneaky\"",
                "attribute route",
                "req_attribute \"PATH\""
            ]
        );
    }

    #[test]
    fn every_truncation_of_a_packet_is_partial() {
        let packet = packet_of(&forward_payload());
        for cut in 0..packet.len() {
            assert_eq!(decode_packet(&packet[..cut]), Ok(None), "cut {cut}");
        }
        let (payload, used) = decode_packet(&packet).unwrap().unwrap();
        assert_eq!(used, packet.len());
        assert_eq!(payload, forward_payload());
    }

    #[test]
    fn every_truncation_of_a_payload_is_refused() {
        let payload = forward_payload();
        for cut in 0..payload.len() {
            let got = decode_message(&payload[..cut], &limits());
            assert!(
                matches!(got, Err(AjpError::Truncated(_) | AjpError::Unterminated(_))),
                "cut {cut}: {got:?}"
            );
        }
    }

    #[test]
    fn malformed_input() {
        assert_eq!(decode_packet(b"AB\0\0"), Err(AjpError::BadMagic(*b"AB")));
        assert_eq!(
            decode_packet(b"\x12\x35"),
            Err(AjpError::BadMagic([0x12, 0x35]))
        );
        assert_eq!(
            decode_packet(b"GET / HTTP/1.1\r\n"),
            Err(AjpError::BadMagic(*b"GE"))
        );
        let l = limits();
        assert_eq!(decode_message(&[3], &l), Err(AjpError::UnexpectedPacket(3)));
        assert_eq!(decode_message(&[CPING], &l), Ok(Message::Ping));
        assert_eq!(decode_message(&[SHUTDOWN], &l), Ok(Message::Shutdown));
        let mut p = forward_payload();
        p.push(0);
        assert_eq!(decode_message(&p, &l), Err(AjpError::TrailingBytes));
        let mut p = forward_payload();
        p[1] = 99;
        assert_eq!(decode_message(&p, &l), Err(AjpError::UnknownMethod(99)));
        let mut p = forward_payload();
        let at = p.iter().position(|&b| b == A_SECRET).unwrap();
        p[at] = 0x42;
        assert_eq!(
            decode_message(&p, &l),
            Err(AjpError::UnknownAttribute(0x42))
        );
        let mut p = forward_payload();
        let at = p.windows(2).position(|w| w == [0xA0, 0x0B]).unwrap();
        p[at + 1] = 0x0F;
        assert_eq!(
            decode_message(&p, &l),
            Err(AjpError::UnknownHeaderCode(0xA00F))
        );
        let mut p = forward_payload();
        let at = p.windows(4).position(|w| w == [0, 1, b'5', 0]).unwrap();
        p[at + 2] = b'x';
        assert_eq!(decode_message(&p, &l), Err(AjpError::BadContentLength));
        let mut p = forward_payload();
        let at = p.windows(4).position(|w| w == [0, 1, b'5', 0]).unwrap();
        p[at + 3] = b'!';
        assert_eq!(
            decode_message(&p, &l),
            Err(AjpError::Unterminated("header value"))
        );
        let few = Limits {
            max_params: 4,
            ..limits()
        };
        assert_eq!(
            decode_message(&forward_payload(), &few),
            Err(AjpError::TooManyHeaders(4))
        );
        let small = Limits {
            max_params_bytes: 100,
            ..limits()
        };
        assert!(matches!(
            decode_message(&forward_payload(), &small),
            Err(AjpError::TooLarge { max: 100, .. })
        ));
    }

    #[test]
    fn stored_method() {
        let mut p = forward_payload();
        p[1] = STORED_METHOD;
        p.pop();
        p.push(A_STORED_METHOD);
        string(&mut p, b"PATCH");
        p.push(A_ARE_DONE);
        let Message::Forward(f) = decode_message(&p, &limits()).unwrap() else {
            panic!()
        };
        assert_eq!(get(&f, "REQUEST_METHOD"), Some("PATCH"));
        let mut p = forward_payload();
        p[1] = STORED_METHOD;
        assert_eq!(
            decode_message(&p, &limits()),
            Err(AjpError::UnknownMethod(STORED_METHOD))
        );
    }

    #[test]
    fn body_chunks() {
        assert_eq!(decode_body_chunk(b""), Ok(&b""[..]));
        assert_eq!(decode_body_chunk(b"\0\0"), Ok(&b""[..]));
        assert_eq!(decode_body_chunk(b"\0\x03abc"), Ok(&b"abc"[..]));
        for bad in [&b"\0"[..], b"\0\x04abc"] {
            assert!(
                matches!(decode_body_chunk(bad), Err(AjpError::Truncated(_))),
                "{bad:?}"
            );
        }
        assert_eq!(decode_body_chunk(b"\0\x02abc"), Err(AjpError::BadBodyChunk));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(secret_matches(b"s3cret", b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret!", b"S3cret", b"s3creu"] {
            assert!(!secret_matches(wrong, b"s3cret"), "{wrong:?}");
        }
    }

    #[test]
    fn response_packets() {
        let mut head = ResponseHead::new(200);
        head.push_header(b"Content-Type", b"text/html").unwrap();
        head.push_header(b"X-Frame-Options", b"DENY").unwrap();
        let mut out = Vec::new();
        encode_send_headers(&head, &mut out).unwrap();
        let mut want = b"AB\0\x31\x04\0\xc8\0\x02OK\0\0\x02\xa0\x01\0\x09text/html\0".to_vec();
        want.extend_from_slice(b"\0\x0fX-Frame-Options\0\0\x04DENY\0");
        assert_eq!(out, want);

        let mut out = Vec::new();
        encode_end_response(true, &mut out);
        encode_get_body_chunk(100_000, &mut out);
        encode_cpong(&mut out);
        assert_eq!(out, b"AB\0\x02\x05\x01AB\0\x03\x06\x1f\xfaAB\0\x01\x09");

        let data = vec![7u8; MAX_SEND_CHUNK + 10];
        let mut out = Vec::new();
        encode_body(&data, &mut out);
        assert_eq!(out.len(), PACKET_SIZE + 4 + 4 + 10);
        assert_eq!(&out[..7], b"AB\x1f\xfc\x03\x1f\xf8");
        assert_eq!(out[PACKET_SIZE - 1], 0);
        assert_eq!(&out[PACKET_SIZE..PACKET_SIZE + 7], b"AB\0\x0e\x03\0\x0a");

        let mut big = ResponseHead::new(200);
        big.push_header(b"X-Big", &vec![b'a'; PACKET_SIZE]).unwrap();
        let mut out = Vec::new();
        assert!(encode_send_headers(&big, &mut out).is_err());
        assert!(out.is_empty());
    }
}

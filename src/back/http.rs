//! `kind = "http"`: one request as HTTP/1.1 to the application's own server,
//! sans-I/O (the driver and the process are `back::server`'s).
//!
//! Owns: the request head made from the meta-variables (method, the
//! original REQUEST_URI with the site's prefix taken off, headers from
//! HTTP_*, Content-Length or chunked body, X-Forwarded-For / -Proto / -Host
//! / -Prefix), and the response (a redirect to a path outside the prefix
//! gets it put back, like ProxyPassReverse):
//! status line and headers parsed by `httparse`, hop-by-hop headers dropped,
//! the rest validated by [`ResponseHead`]; the body framed by
//! Content-Length, chunked or until close; whether the connection may carry
//! the next request.
//! Must not: read or write sockets, or buffer a body.

use super::server::{Event, Refusal, Wire};
use crate::request::{self, Request, ResponseHead, ScriptName};

/// Most response header fields we parse.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line or trailer block we wait for.
const MAX_CHUNK_LINE: usize = 4096;

/// Request headers never passed on: hop-by-hop (RFC 9110 §7.6.1), the
/// ones the shim writes itself, and `Expect` (the body is sent anyway).
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "HTTP_HOST",
    "HTTP_CONNECTION",
    "HTTP_KEEP_ALIVE",
    "HTTP_PROXY_CONNECTION",
    "HTTP_TRANSFER_ENCODING",
    "HTTP_TE",
    "HTTP_TRAILER",
    "HTTP_UPGRADE",
    "HTTP_EXPECT",
    "HTTP_CONTENT_LENGTH",
    "HTTP_CONTENT_TYPE",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PREFIX",
];

/// Response headers never passed on (hop-by-hop).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

pub struct HttpWire {
    script_name: ScriptName,
    /// Take the prefix off the request-target (and put it back on redirects).
    strip_prefix: bool,
    max_head: usize,
    /// The request was HEAD: the answer has no body whatever it says.
    head_request: bool,
    /// The request body goes chunked (no Content-Length was given).
    chunked_body: bool,
    state: State,
    /// The connection may be used again after this answer.
    keep_alive: bool,
    /// The site's prefix taken off the request-target ("" at the root):
    /// put back on a redirect to a path outside it.
    prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// Body bytes still to come.
    Sized(u64),
    /// Waiting for a chunk-size line.
    ChunkSize,
    /// Bytes of the current chunk still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    UntilClose,
    Done,
}

impl HttpWire {
    pub fn new(
        script_name: ScriptName,
        strip_prefix: bool,
        max_head: usize,
        head_request: bool,
    ) -> HttpWire {
        HttpWire {
            script_name,
            strip_prefix,
            max_head,
            head_request,
            chunked_body: false,
            state: State::Head,
            keep_alive: false,
            prefix: String::new(),
        }
    }

    /// A redirect to a path of the server's ("/login") is one to the site's
    /// ("/blog/login") for the visitor, as Apache's ProxyPassReverse does;
    /// a Location already under the prefix, or a URL, is left as it is.
    fn with_prefix(&self, location: &[u8]) -> Option<Vec<u8>> {
        let p = self.prefix.as_bytes();
        let under = location.strip_prefix(p).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(b"/") || rest.starts_with(b"?")
        });
        if p.is_empty() || !location.starts_with(b"/") || location.starts_with(b"//") || under {
            return None;
        }
        Some([p, location].concat())
    }

    fn decode_head(&mut self, input: &[u8]) -> Result<(usize, Event), String> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let used = match resp.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if input.len() > self.max_head => {
                return Err(format!(
                    "its response head is larger than {} bytes",
                    self.max_head
                ));
            }
            Ok(httparse::Status::Partial) => return Ok((0, Event::NeedMore)),
            Err(e) => {
                return Err(format!(
                    "it answered something that is not an HTTP/1 response ({e}): {}",
                    request::Escaped(&input[..input.len().min(80)])
                ));
            }
        };
        if used > self.max_head {
            return Err(format!(
                "its response head is larger than {} bytes",
                self.max_head
            ));
        }
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            if status == 101 {
                return Err("it switched protocols (101), which is not relayed".into());
            }
            // An interim answer (100 Continue, 103 Early Hints): skipped.
            return Ok((used, Event::NeedMore));
        }
        let reason = resp.reason.unwrap_or("");
        let line = if reason.is_empty() {
            status.to_string()
        } else {
            format!("{status} {reason}")
        };
        let mut head = ResponseHead::from_status_line(line.as_bytes())
            .map_err(|e| format!("invalid response: {e}"))?;
        let mut connection_close = resp.version == Some(0);
        let mut chunked = false;
        let mut encoded = false;
        let mut length: Option<u64> = None;
        // Names listed in Connection are hop-by-hop too.
        let listed: Vec<Vec<u8>> = resp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(|t| t.trim_ascii().to_ascii_lowercase())
            .collect();
        for h in resp.headers.iter() {
            let lower = h.name.to_ascii_lowercase();
            match lower.as_str() {
                "connection" => {
                    connection_close |= listed.iter().any(|t| t == b"close");
                }
                "transfer-encoding" => {
                    encoded = true;
                    let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                    chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
                }
                "content-length" => {
                    let text = std::str::from_utf8(h.value).unwrap_or("").trim();
                    let n: u64 = text
                        .parse()
                        .ok()
                        .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| {
                            format!("invalid Content-Length {}", request::Escaped(h.value))
                        })?;
                    if length.is_some_and(|l| l != n) {
                        return Err("two different Content-Length headers".into());
                    }
                    length = Some(n);
                }
                _ => {}
            }
            if HOP_BY_HOP.contains(&lower.as_str()) || listed.iter().any(|t| *t == lower.as_bytes())
            {
                continue;
            }
            // A length that does not describe what we pass on.
            if lower == "content-length" && encoded {
                continue;
            }
            let value = match lower.as_str() {
                "location" => self.with_prefix(h.value),
                _ => None,
            };
            head.push_header(h.name.as_bytes(), value.as_deref().unwrap_or(h.value))
                .map_err(|e| format!("invalid response: {e}"))?;
        }
        if encoded && length.is_some() {
            // RFC 9112 §6.3: Transfer-Encoding wins; the length is dropped.
            head = without_header(head, "content-length");
        }
        let no_body = self.head_request || status == 204 || status == 304;
        self.state = if no_body {
            State::Done
        } else if encoded && chunked {
            State::ChunkSize
        } else if encoded {
            connection_close = true;
            State::UntilClose
        } else {
            match length {
                Some(0) => State::Done,
                Some(n) => State::Sized(n),
                None => {
                    connection_close = true;
                    State::UntilClose
                }
            }
        };
        self.keep_alive = !connection_close;
        Ok((used, Event::Head(head, Vec::new())))
    }

    fn decode_body(&mut self, input: &[u8], eof: bool) -> Result<(usize, Event), String> {
        let cut_short = || Err("it closed the connection in the middle of the response".into());
        match self.state {
            State::Head => self.decode_head(input),
            State::Done => Ok((0, Event::End)),
            State::UntilClose if input.is_empty() && eof => {
                self.state = State::Done;
                Ok((0, Event::End))
            }
            State::UntilClose => Ok((input.len(), Event::Body(0..input.len()))),
            State::Sized(left) | State::ChunkData(left) => {
                if input.is_empty() {
                    return if eof {
                        cut_short()
                    } else {
                        Ok((0, Event::NeedMore))
                    };
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                let left = left - n as u64;
                self.state = match (self.state, left) {
                    (State::Sized(_), 0) => State::Done,
                    (State::Sized(_), l) => State::Sized(l),
                    (_, 0) => State::ChunkEnd,
                    (_, l) => State::ChunkData(l),
                };
                Ok((n, Event::Body(0..n)))
            }
            State::ChunkSize => match httparse::parse_chunk_size(input) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    self.state = State::Trailers;
                    Ok((used, Event::NeedMore))
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    self.state = State::ChunkData(size);
                    Ok((used, Event::NeedMore))
                }
                Ok(httparse::Status::Partial) if input.len() > MAX_CHUNK_LINE => {
                    Err("a chunk-size line is too long".into())
                }
                Ok(httparse::Status::Partial) if eof => cut_short(),
                Ok(httparse::Status::Partial) => Ok((0, Event::NeedMore)),
                Err(_) => Err(format!(
                    "invalid chunked encoding: {}",
                    request::Escaped(&input[..input.len().min(40)])
                )),
            },
            State::ChunkEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize;
                    Ok((2, Event::NeedMore))
                }
                [] | [b'\r'] if !eof => Ok((0, Event::NeedMore)),
                [] | [b'\r'] => cut_short(),
                _ => Err("invalid chunked encoding: no CRLF after a chunk".into()),
            },
            State::Trailers => {
                // Trailer fields are dropped (FastCGI has no place for them).
                let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                    if input.len() > MAX_CHUNK_LINE {
                        return Err("the trailer section is too long".into());
                    }
                    return if eof {
                        cut_short()
                    } else {
                        Ok((0, Event::NeedMore))
                    };
                };
                let line = &input[..nl];
                if line.is_empty() || line == b"\r" {
                    self.state = State::Done;
                    return Ok((nl + 1, Event::End));
                }
                Ok((nl + 1, Event::NeedMore))
            }
        }
    }
}

/// `head` without the header fields named `name`.
fn without_header(head: ResponseHead, name: &str) -> ResponseHead {
    let mut out = ResponseHead::from_status_line(
        format!(
            "{} {}",
            head.status(),
            String::from_utf8_lossy(head.reason())
        )
        .as_bytes(),
    )
    .unwrap_or_else(|_| ResponseHead::new(head.status()));
    for (n, v) in head.headers() {
        if !n.eq_ignore_ascii_case(name.as_bytes()) {
            // Validated once already.
            let _ = out.push_header(n, v);
        }
    }
    out
}

impl Wire for HttpWire {
    fn begin(&mut self, req: &Request, body_empty: bool, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let method = req.get("REQUEST_METHOD").unwrap_or("GET");
        if method.is_empty() || !method.bytes().all(request::is_token_byte) {
            return Err(Refusal(400, format!("invalid method {method:?}")));
        }
        let prefix = request::presented_script_name(req, &self.script_name)
            .or_else(|| req.get("SCRIPT_NAME").map(str::to_string))
            .unwrap_or_default();
        let target = request_target(req, if self.strip_prefix { &prefix } else { "" })?;
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let host = req
            .get("HTTP_HOST")
            .filter(|h| !h.is_empty() && is_field_value(h.as_bytes()))
            .map(str::to_string)
            .unwrap_or_else(|| {
                let name = req.get("SERVER_NAME").unwrap_or("localhost");
                match req.get("SERVER_PORT") {
                    Some(p) if p != "80" && p != "443" && !p.is_empty() => format!("{name}:{p}"),
                    _ => name.to_string(),
                }
            });
        let mut header = |name: &[u8], value: &[u8]| {
            if is_field_value(value) {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        };
        header(b"Host", host.as_bytes());
        let mut forwarded_for = None;
        let mut name = Vec::new();
        request::for_each_application_meta_variable(req, &ScriptName::AsReceived, |n, v| {
            if n == b"HTTP_X_FORWARDED_FOR" {
                forwarded_for = Some(v.to_vec());
            }
            let Some(rest) = n.strip_prefix(b"HTTP_") else {
                return;
            };
            if rest.is_empty() || DROPPED_REQUEST_HEADERS.iter().any(|d| d.as_bytes() == n) {
                return;
            }
            // Only a name that is a token once `_` is `-` (no `:`, space or
            // CR from a front that let it through) becomes a header line.
            if !rest.iter().all(|&b| b == b'_' || request::is_token_byte(b)) {
                return;
            }
            header_name(rest, &mut name);
            header(&name, v);
        });
        if let Some(t) = req.get("CONTENT_TYPE").filter(|t| !t.is_empty()) {
            header(b"Content-Type", t.as_bytes());
        }
        let length = req
            .get("CONTENT_LENGTH")
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
        match length {
            Some(l) => header(b"Content-Length", l.as_bytes()),
            None if body_empty => {
                if !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS" | "TRACE") {
                    header(b"Content-Length", b"0");
                }
            }
            None => {
                self.chunked_body = true;
                header(b"Transfer-Encoding", b"chunked");
            }
        }
        if let Some(addr) = req.get("REMOTE_ADDR").filter(|a| !a.is_empty()) {
            let value = match forwarded_for.filter(|f| !f.is_empty()) {
                Some(mut f) => {
                    f.extend_from_slice(b", ");
                    f.extend_from_slice(addr.as_bytes());
                    f
                }
                None => addr.as_bytes().to_vec(),
            };
            header(b"X-Forwarded-For", &value);
        }
        let https = req
            .get("HTTPS")
            .is_some_and(|v| v.eq_ignore_ascii_case("on") || v == "1")
            || req.get("REQUEST_SCHEME") == Some("https");
        header(b"X-Forwarded-Proto", if https { b"https" } else { b"http" });
        header(b"X-Forwarded-Host", host.as_bytes());
        if !prefix.is_empty() {
            header(b"X-Forwarded-Prefix", prefix.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if self.strip_prefix {
            self.prefix = prefix;
        }
        Ok(())
    }

    fn body(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if self.chunked_body {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.chunked_body {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }

    fn decode(&mut self, input: &[u8], eof: bool) -> Result<(usize, Event), String> {
        let decoded = self.decode_body(input, eof)?;
        if eof && self.state == State::Head && decoded == (0, Event::NeedMore) {
            return Err(if input.is_empty() {
                "it closed the connection without answering".into()
            } else {
                "it closed the connection in the middle of the response head".into()
            });
        }
        Ok(decoded)
    }

    fn reusable(&self) -> bool {
        self.keep_alive && self.state == State::Done
    }
}

/// The request-target: the original REQUEST_URI (or PATH_INFO and
/// QUERY_STRING when the web server sent none) with the site's `prefix`
/// taken off, as a server mounted there expects (X-Forwarded-Prefix says it).
fn request_target(req: &Request, prefix: &str) -> Result<String, Refusal> {
    let target = match req.get("REQUEST_URI").filter(|u| !u.is_empty()) {
        Some(uri) => match uri.strip_prefix(prefix) {
            Some(rest) if !prefix.is_empty() && rest.is_empty() => "/".to_string(),
            Some(rest) if !prefix.is_empty() && rest.starts_with('?') => format!("/{rest}"),
            Some(rest) if !prefix.is_empty() && rest.starts_with('/') => rest.to_string(),
            _ => uri.to_string(),
        },
        None => {
            let mut t = req.get("PATH_INFO").unwrap_or("").to_string();
            if t.is_empty() {
                t.push('/');
            }
            if let Some(q) = req.get("QUERY_STRING").filter(|q| !q.is_empty()) {
                t.push('?');
                t.push_str(q);
            }
            t
        }
    };
    let ok =
        (target.starts_with('/') || target == "*") && target.bytes().all(|b| b > b' ' && b != 0x7f);
    if !ok {
        return Err(Refusal(
            400,
            format!(
                "invalid request target {}",
                request::Escaped(target.as_bytes())
            ),
        ));
    }
    Ok(target)
}

/// HTTP_X_FOO_BAR's "X_FOO_BAR" → "X-Foo-Bar".
fn header_name(meta: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut start = true;
    for &b in meta {
        if b == b'_' {
            out.push(b'-');
            start = true;
        } else {
            out.push(if start {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            });
            start = false;
        }
    }
}

/// A value we can put on a header line (no CR, LF, NUL).
fn is_field_value(v: &[u8]) -> bool {
    !v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// The body bytes of `events` for tests: decode `input` fed in `step`-byte pieces.
#[cfg(test)]
fn decode_all(
    wire: &mut HttpWire,
    input: &[u8],
    step: usize,
) -> Result<(Option<ResponseHead>, Vec<u8>, bool), String> {
    let mut head = None;
    let mut body = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        let eof = fed >= input.len();
        loop {
            let (used, event) = wire.decode(&buf, eof)?;
            let body_range: Option<std::ops::Range<usize>> = match event {
                Event::Head(h, rest) => {
                    body.extend_from_slice(&rest);
                    head = Some(h);
                    None
                }
                Event::Body(r) => Some(r),
                Event::End => return Ok((head, body, true)),
                Event::NeedMore | Event::Log(_) => None,
            };
            if let Some(r) = body_range {
                body.extend_from_slice(&buf[r]);
            }
            buf.drain(..used);
            if used == 0 {
                break;
            }
        }
        if eof {
            return Ok((head, body, false));
        }
        let end = (fed + step).min(input.len());
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> HttpWire {
        HttpWire::new(ScriptName::Auto, true, 65536, false)
    }

    fn req(pairs: &[(&str, &str)]) -> Request {
        Request::from_strs(pairs)
    }

    fn encode(pairs: &[(&str, &str)], body_empty: bool) -> (String, HttpWire) {
        let mut w = wire();
        let mut out = Vec::new();
        w.begin(&req(pairs), body_empty, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), w)
    }

    #[test]
    fn a_meta_variable_name_that_is_no_token_sends_no_header() {
        let (text, _) = encode(
            &[
                ("REQUEST_METHOD", "GET"),
                ("REQUEST_URI", "/x"),
                ("HTTP_X:EVIL", "1"),
                ("HTTP_A B", "2"),
                ("HTTP_OK_NAME", "3"),
            ],
            true,
        );
        assert!(!text.contains("Evil") && !text.contains("A b"), "{text}");
        assert!(text.contains("Ok-Name: 3\r\n"), "{text}");
    }

    #[test]
    fn request_head_from_meta_variables() {
        let (text, _) = encode(
            &[
                ("REQUEST_METHOD", "POST"),
                ("REQUEST_URI", "/node/up?x=1"),
                ("SCRIPT_NAME", "/node/mysite.fcgi"),
                ("PATH_INFO", "/up"),
                ("QUERY_STRING", "x=1"),
                ("HTTP_HOST", "example.org"),
                ("HTTP_USER_AGENT", "t/1"),
                ("HTTP_CONNECTION", "keep-alive"),
                ("HTTP_X_FORWARDED_FOR", "10.0.0.1"),
                ("HTTP_X_FORWARDED_HOST", "evil"),
                ("HTTP_PROXY", "http://evil"),
                ("HTTP_COOKIE", "a=1; b=2"),
                ("CONTENT_TYPE", "text/plain"),
                ("CONTENT_LENGTH", "5"),
                ("REMOTE_ADDR", "192.0.2.7"),
                ("HTTPS", "on"),
            ],
            false,
        );
        assert!(
            text.starts_with("POST /up?x=1 HTTP/1.1\r\nHost: example.org\r\n"),
            "{text}"
        );
        for line in [
            "User-Agent: t/1\r\n",
            "Cookie: a=1; b=2\r\n",
            "Content-Type: text/plain\r\n",
            "Content-Length: 5\r\n",
            "X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n",
            "X-Forwarded-Proto: https\r\n",
            "X-Forwarded-Host: example.org\r\n",
            "X-Forwarded-Prefix: /node\r\n",
        ] {
            assert!(text.contains(line), "{line:?} not in {text}");
        }
        for absent in ["Connection", "Proxy", "evil"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_body_without_length_goes_chunked() {
        let (text, mut w) = encode(&[("REQUEST_METHOD", "PUT"), ("REQUEST_URI", "/a")], false);
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        let mut out = Vec::new();
        w.body(b"hello", &mut out);
        w.body(b"", &mut out);
        w.end(&mut out);
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        let (text, _) = encode(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/a")], true);
        assert!(
            !text.contains("Content-Length") && !text.contains("chunked"),
            "{text}"
        );
    }

    #[test]
    fn hostile_targets_are_refused() {
        let mut out = Vec::new();
        for uri in ["/a b", "/a\r\nX: y", "http://x/", ""] {
            let r = req(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", uri)]);
            let got = wire().begin(&r, true, &mut out);
            if uri.is_empty() {
                assert!(got.is_ok(), "fallback for an empty REQUEST_URI");
            } else {
                assert_eq!(got.map_err(|r| r.0), Err(400), "{uri:?}");
            }
        }
        let r = req(&[("REQUEST_METHOD", "G T"), ("REQUEST_URI", "/")]);
        assert!(wire().begin(&r, true, &mut out).is_err());
    }

    #[test]
    fn sized_chunked_and_until_close_at_every_split() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-T: 1\r\n\r\n",
                b"hello!",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\nuntil close", b"until close", false),
            (
                b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                  Transfer-Encoding: chunked\r\n\r\n30\r\nNODE GET /x len=0 xff=undefined prefix=undefined\r\n0\r\n\r\n",
                b"NODE GET /x len=0 xff=undefined prefix=undefined",
                true,
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", false),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b"", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", b"", false),
        ];
        for (input, body, reusable) in cases {
            for step in 1..=input.len() {
                let mut w = wire();
                let (head, got, ended) = decode_all(&mut w, input, step).unwrap();
                assert!(ended && head.is_some(), "{step}");
                assert_eq!(
                    &got,
                    body,
                    "split {step} of {}",
                    String::from_utf8_lossy(input)
                );
                assert_eq!(
                    w.reusable(),
                    *reusable,
                    "{}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn repeated_headers_and_hop_by_hop() {
        let input =
            b"HTTP/1.1 302 Found\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nLocation: /node/x\r\n\
            Connection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n\
            Transfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n0\r\n\r\n";
        let (head, body, ended) = decode_all(&mut wire(), input, input.len()).unwrap();
        let head = head.unwrap();
        assert!(ended && body.is_empty());
        assert_eq!(head.status(), 302);
        let names: Vec<String> = head
            .headers()
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        assert_eq!(
            names,
            ["Set-Cookie=a=1", "Set-Cookie=b=2", "Location=/node/x"]
        );
    }

    #[test]
    fn the_prefix_is_taken_off_and_put_back_on_redirects() {
        let site = [
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", "/blog/mysite.fcgi"),
            ("PATH_INFO", "/a"),
        ];
        for (uri, target) in [
            ("/blog/a?x=1", "/a?x=1"),
            ("/blog", "/"),
            ("/blog?x", "/?x"),
            ("/blogger", "/blogger"),
            ("/blog/mysite.fcgi/a", "/a"),
        ] {
            let mut pairs = site.to_vec();
            pairs.push(("REQUEST_URI", uri));
            let mut w = wire();
            let mut out = Vec::new();
            w.begin(&req(&pairs), true, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.starts_with(&format!("GET {target} HTTP/1.1\r\n")),
                "{uri}: {text}"
            );
        }
        let mut pairs = site.to_vec();
        pairs.push(("REQUEST_URI", "/blog/a"));
        for (location, sent) in [
            ("/login", "/blog/login"),
            ("/blog/x", "/blog/x"),
            ("/blog", "/blog"),
            ("https://example.org/x", "https://example.org/x"),
            ("//cdn/x", "//cdn/x"),
        ] {
            let mut w = wire();
            w.begin(&req(&pairs), true, &mut Vec::new()).unwrap();
            let input = format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\n\r\n");
            let (head, _, _) = decode_all(&mut w, input.as_bytes(), 9).unwrap();
            assert_eq!(
                head.unwrap().header("Location"),
                Some(sent.as_bytes()),
                "{location}"
            );
        }
        // A site at the root (or script_name = ""): the whole path, as it came.
        let mut w = HttpWire::new(ScriptName::Fixed(String::new()), true, 65536, false);
        let mut out = Vec::new();
        w.begin(&req(&pairs), true, &mut out).unwrap();
        assert!(out.starts_with(b"GET /blog/a HTTP/1.1\r\n"));
        // strip_prefix = false: the whole path, the prefix said, redirects as they are.
        let mut w = HttpWire::new(ScriptName::Auto, false, 65536, false);
        let mut out = Vec::new();
        w.begin(&req(&pairs), true, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /blog/a HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("X-Forwarded-Prefix: /blog\r\n"), "{text}");
        let input = b"HTTP/1.1 302 Found\r\nLocation: /login\r\n\r\n";
        let (head, _, _) = decode_all(&mut w, input, 9).unwrap();
        assert_eq!(head.unwrap().header("Location"), Some(&b"/login"[..]));
    }

    #[test]
    fn a_head_request_has_no_body() {
        let mut w = HttpWire::new(ScriptName::Auto, true, 65536, true);
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let (head, body, ended) = decode_all(&mut w, input, 3).unwrap();
        assert!(ended && body.is_empty());
        assert_eq!(head.unwrap().header("Content-Length"), Some(&b"5"[..]));
    }

    #[test]
    fn garbage_and_short_answers_are_errors() {
        for input in [
            &b"hello world\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
            b"HTTP/1.1 101 Switching\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\n",
            b"",
        ] {
            assert!(
                decode_all(&mut wire(), input, 4).is_err(),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(100));
        let mut w = HttpWire::new(ScriptName::Auto, true, 64, false);
        assert!(decode_all(&mut w, big.as_bytes(), 7).is_err());
    }
}

//! The request and response where fronts and backs meet.
//!
//! Owns: [`Request`] (RFC 3875 meta-variables), [`ResponseHead`] (status and
//! headers, written out as a CGI response head), the parser for CGI response
//! heads that programs and adapters print, and the [`Exchange`] trait through
//! which a back reads the request body and streams the response of one request.
//! Must not: know which protocol a front speaks or which application a back runs.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use nix::poll::PollFlags;

/// The meta-variables of one request (the FastCGI params, the SCGI headers, or
/// the CGI environment), in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    params: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Request {
    pub fn new(params: Vec<(Vec<u8>, Vec<u8>)>) -> Request {
        Request { params }
    }

    /// The value of a meta-variable, if present and valid UTF-8. The last one
    /// wins when a name is repeated.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// All meta-variables, in order.
    pub fn params(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.params
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    /// A short description for log lines: "GET /path".
    pub fn summary(&self) -> String {
        let method = self.get("REQUEST_METHOD").unwrap_or("-");
        let uri = self
            .get("REQUEST_URI")
            .or_else(|| self.get("SCRIPT_NAME"))
            .unwrap_or("-");
        format!("{method} {uri}")
    }
}

/// Meta-variables never passed to an application: `Proxy:` request headers
/// would become HTTP_PROXY, which many HTTP clients obey (httpoxy, CVE-2016-5385).
pub fn is_forbidden_meta_variable(name: &[u8]) -> bool {
    name == b"HTTP_PROXY"
}

/// Status line and headers of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// Header fields other than Status, as the application wrote them.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// A response with a standard reason phrase.
    pub fn new(status: u16) -> ResponseHead {
        ResponseHead {
            status,
            reason: reason_phrase(status).to_string(),
            headers: Vec::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// RFC 3875 §6.2.2: a local redirect is a Location that is a path, with no
    /// status of its own. The web server performs it; we pass it on untouched.
    pub fn is_local_redirect(&self) -> bool {
        self.status == 200 && self.header("Location").is_some_and(|l| l.starts_with('/'))
    }

    /// Append the head as a CGI response head (what FastCGI and SCGI carry).
    pub fn write_cgi(&self, out: &mut Vec<u8>) {
        if !self.is_local_redirect() {
            out.extend_from_slice(
                format!("Status: {} {}\r\n", self.status, self.reason).as_bytes(),
            );
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The standard reason phrase for the statuses we produce or commonly see.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Why an application's response head was refused (the client gets a 502).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// More than the configured number of bytes without the blank line.
    TooLarge(usize),
    /// A line that is not `Name: value`.
    BadLine(String),
    /// A Status header that is not "NNN reason".
    BadStatus(String),
    /// None of Content-Type, Location or Status (RFC 3875 §6.2).
    NoDocument,
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge(n) => write!(f, "response header block larger than {n} bytes"),
            HeadError::BadLine(l) => write!(f, "malformed response header line {l:?}"),
            HeadError::BadStatus(s) => write!(f, "malformed Status header {s:?}"),
            HeadError::NoDocument => {
                f.write_str("response head has none of Content-Type, Location, Status")
            }
        }
    }
}

/// Parses a CGI response head (RFC 3875 §6) as it arrives in pieces.
#[derive(Debug)]
pub struct CgiHeadParser {
    buf: Vec<u8>,
    max: usize,
}

/// What [`CgiHeadParser::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadProgress {
    /// The blank line has not arrived yet.
    Partial,
    /// The head, and the body bytes that followed it in the same input.
    Complete(ResponseHead, Vec<u8>),
}

impl CgiHeadParser {
    pub fn new(max: usize) -> CgiHeadParser {
        CgiHeadParser {
            buf: Vec::new(),
            max,
        }
    }

    /// Bytes received so far without a complete head.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feed output; lines end in LF or CRLF, the head ends at an empty line.
    pub fn push(&mut self, data: &[u8]) -> Result<HeadProgress, HeadError> {
        let scan_from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(data);
        let Some((head_len, body_start)) = find_blank_line(&self.buf, scan_from) else {
            if self.buf.len() > self.max {
                return Err(HeadError::TooLarge(self.max));
            }
            return Ok(HeadProgress::Partial);
        };
        if head_len > self.max {
            return Err(HeadError::TooLarge(self.max));
        }
        let head = parse_head(&self.buf[..head_len])?;
        let body = self.buf.split_off(body_start);
        self.buf.clear();
        Ok(HeadProgress::Complete(head, body))
    }
}

/// Position of the end of the head and the start of the body, if the blank
/// line (LF LF or CRLF CRLF, or a mix) is present at or after `from`.
fn find_blank_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(pos) = buf
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let nl = i + pos;
        // Is this newline directly followed by an empty line?
        match buf.get(nl + 1) {
            Some(b'\n') => return Some((nl, nl + 2)),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some((nl, nl + 3)),
            _ => {}
        }
        // The head may also be empty: output starting with a blank line.
        if nl == 0 || (nl == 1 && buf.first() == Some(&b'\r')) {
            return Some((0, nl + 1));
        }
        i = nl + 1;
    }
    None
}

fn parse_head(head: &[u8]) -> Result<ResponseHead, HeadError> {
    let text = String::from_utf8_lossy(head);
    let mut status: Option<(u16, String)> = None;
    let mut headers = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HeadError::BadLine(line.to_string()));
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HeadError::BadLine(line.to_string()));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            status = Some(parse_status(value)?);
        } else {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let mut head = ResponseHead {
        status: 200,
        reason: "OK".into(),
        headers,
    };
    match status {
        Some((code, reason)) => {
            head.status = code;
            head.reason = reason;
        }
        None => {
            let location = head.header("Location").map(str::to_string);
            match location {
                // RFC 3875 §6.2.3/§6.2.4: a client redirect without a Status is a 302.
                Some(l) if !l.starts_with('/') => head.status = 302,
                Some(_) => {}
                None if head.header("Content-Type").is_none() => return Err(HeadError::NoDocument),
                None => {}
            }
            head.reason = reason_phrase(head.status).to_string();
        }
    }
    Ok(head)
}

fn parse_status(value: &str) -> Result<(u16, String), HeadError> {
    let (code, reason) = value.split_once(' ').unwrap_or((value, ""));
    match code.parse::<u16>() {
        Ok(c) if code.len() == 3 && (100..=999).contains(&c) => {
            let reason = reason.trim();
            let reason = if reason.is_empty() {
                reason_phrase(c)
            } else {
                reason
            };
            Ok((c, reason.to_string()))
        }
        _ => Err(HeadError::BadStatus(value.to_string())),
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What reading from the front produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEvent {
    /// Something was read (body bytes, or records the front handled itself).
    Progress,
    /// The web server aborted the request (FCGI_ABORT_REQUEST).
    Aborted,
    /// The web server closed the connection.
    Closed,
}

/// One request's conversation with its front, as a back sees it.
///
/// The back polls what [`Exchange::poll_interest`] asks for together with its
/// application's fds, and calls [`Exchange::on_ready`] when that fd is ready
/// (or at once while [`Exchange::input_pending`]). Sending never blocks: output
/// is queued and written as the web server takes it, so that a web server that
/// sends the whole body before reading (mod_fcgid) cannot deadlock with an
/// application that answers while it reads. A back stops reading its
/// application's output while [`Exchange::output_backlog`] is large.
pub trait Exchange {
    fn request(&self) -> &Request;

    /// The fd to poll and for what, or `None` when there is nothing to wait for.
    fn poll_interest(&self) -> Option<(BorrowedFd<'_>, PollFlags)>;

    /// Input is already buffered: call [`Exchange::on_ready`] without polling.
    fn input_pending(&self) -> bool;

    /// Read what the front has for us and write what it will take.
    fn on_ready(&mut self) -> io::Result<InputEvent>;

    /// Body bytes received and not yet consumed (the next part of them).
    fn body(&self) -> &[u8];

    fn consume_body(&mut self, n: usize);

    /// Has the end of the body been received? (It may not be consumed yet.)
    fn body_finished(&self) -> bool;

    /// Queue the response head. Called at most once, before any body.
    fn send_head(&mut self, head: &ResponseHead) -> io::Result<()>;

    /// Queue response body bytes; written as the web server takes them.
    fn send_body(&mut self, data: &[u8]) -> io::Result<()>;

    /// Response bytes queued and not yet written.
    fn output_backlog(&self) -> usize;

    /// Has the head been sent?
    fn head_sent(&self) -> bool;
}

/// Send a complete error response (a short text body) if no head went out yet.
pub fn send_error(exchange: &mut dyn Exchange, status: u16, detail: &str) -> io::Result<()> {
    if exchange.head_sent() {
        return Ok(());
    }
    let mut head = ResponseHead::new(status);
    head.headers
        .push(("Content-Type".into(), "text/plain; charset=utf-8".into()));
    exchange.send_head(&head)?;
    let body = format!("{} {}\n{detail}\n", status, reason_phrase(status));
    exchange.send_body(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<HeadProgress, HeadError> {
        CgiHeadParser::new(1024).push(input)
    }

    #[test]
    fn head_and_body_in_one_piece() {
        let HeadProgress::Complete(head, body) =
            parse_all(b"Content-Type: text/plain\r\nX-A: 1\r\n\r\nhello").unwrap()
        else {
            panic!("partial")
        };
        assert_eq!(head.status, 200);
        assert_eq!(
            head.headers,
            vec![
                ("Content-Type".into(), "text/plain".into()),
                ("X-A".into(), "1".into())
            ]
        );
        assert_eq!(body, b"hello");
    }

    #[test]
    fn head_split_at_every_byte() {
        let input = b"Status: 404 Not Found\nContent-Type: text/html\n\nbody";
        for split in 0..input.len() {
            let mut p = CgiHeadParser::new(1024);
            let first = p.push(&input[..split]).unwrap();
            let result = match first {
                HeadProgress::Complete(h, mut b) => {
                    b.extend_from_slice(&input[split..]);
                    (h, b)
                }
                HeadProgress::Partial => match p.push(&input[split..]).unwrap() {
                    HeadProgress::Complete(h, b) => (h, b),
                    HeadProgress::Partial => panic!("partial at split {split}"),
                },
            };
            assert_eq!(result.0.status, 404, "split {split}");
            assert_eq!(result.0.reason, "Not Found");
            assert_eq!(result.1, b"body", "split {split}");
        }
    }

    #[test]
    fn redirects() {
        let HeadProgress::Complete(local, _) = parse_all(b"Location: /other\n\n").unwrap() else {
            panic!()
        };
        assert!(local.is_local_redirect());
        let mut out = Vec::new();
        local.write_cgi(&mut out);
        assert_eq!(out, b"Location: /other\r\n\r\n");

        let HeadProgress::Complete(client, _) =
            parse_all(b"Location: http://example.com/x\n\n").unwrap()
        else {
            panic!()
        };
        assert_eq!((client.status, client.reason.as_str()), (302, "Found"));
        let mut out = Vec::new();
        client.write_cgi(&mut out);
        assert_eq!(
            out,
            b"Status: 302 Found\r\nLocation: http://example.com/x\r\n\r\n"
        );
    }

    #[test]
    fn malformed_heads() {
        assert_eq!(
            parse_all(b"garbage line\n\n"),
            Err(HeadError::BadLine("garbage line".into()))
        );
        assert_eq!(
            parse_all(b"Status: abc\n\n"),
            Err(HeadError::BadStatus("abc".into()))
        );
        assert_eq!(parse_all(b"X-Only: 1\n\n"), Err(HeadError::NoDocument));
        assert_eq!(
            CgiHeadParser::new(8).push(b"Content-Type: x"),
            Err(HeadError::TooLarge(8))
        );
    }

    #[test]
    fn request_lookup() {
        let r = Request::new(vec![
            (b"A".to_vec(), b"1".to_vec()),
            (b"A".to_vec(), b"2".to_vec()),
        ]);
        assert_eq!(r.get("A"), Some("2"));
        assert_eq!(r.get("B"), None);
    }
}

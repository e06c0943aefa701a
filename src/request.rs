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
/// the CGI environment), in the order received. Held as one buffer and the
/// places of the names and values in it: no allocation per variable.
#[derive(Debug, Clone, Default)]
pub struct Request {
    data: Vec<u8>,
    /// (name, value) as (start, end) offsets into `data`.
    pairs: Vec<(Span, Span)>,
}

/// A (start, end) range of bytes.
pub type Span = (usize, usize);

impl Request {
    pub fn new(params: Vec<(Vec<u8>, Vec<u8>)>) -> Request {
        let mut data = Vec::with_capacity(params.iter().map(|(n, v)| n.len() + v.len()).sum());
        let mut pairs = Vec::with_capacity(params.len());
        for (name, value) in &params {
            let n = data.len();
            data.extend_from_slice(name);
            let v = data.len();
            data.extend_from_slice(value);
            pairs.push(((n, v), (v, data.len())));
        }
        Request { data, pairs }
    }

    /// A request from text pairs (tests, and requests the shim makes itself).
    pub fn from_strs(pairs: &[(&str, &str)]) -> Request {
        Request::new(
            pairs
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// Where `pairs`, sub-slices of `data` (a decoder's output), lie in it:
    /// for [`Request::from_spans`]. `None` if one is not inside `data`.
    pub fn spans_in(data: &[u8], pairs: &[(&[u8], &[u8])]) -> Option<Vec<(Span, Span)>> {
        let base = data.as_ptr() as usize;
        let span = |part: &[u8]| {
            let start = (part.as_ptr() as usize).checked_sub(base)?;
            let end = start.checked_add(part.len())?;
            (end <= data.len()).then_some((start, end))
        };
        pairs
            .iter()
            .map(|(name, value)| Some((span(name)?, span(value)?)))
            .collect()
    }

    /// A request whose names and values lie in `data` at `spans` (see
    /// [`Request::spans_in`]); spans outside `data` are dropped.
    pub fn from_spans(data: Vec<u8>, mut spans: Vec<(Span, Span)>) -> Request {
        let fits = |(s, e): Span| s <= e && e <= data.len();
        spans.retain(|&(n, v)| fits(n) && fits(v));
        Request { data, pairs: spans }
    }

    fn pair(&self, (n, v): &(Span, Span)) -> (&[u8], &[u8]) {
        (&self.data[n.0..n.1], &self.data[v.0..v.1])
    }

    /// The value of a meta-variable, if present and valid UTF-8. The last one
    /// wins when a name is repeated.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .map(|p| self.pair(p))
            .find(|(n, _)| *n == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// All meta-variables, in order.
    pub fn params(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|p| self.pair(p))
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

impl PartialEq for Request {
    fn eq(&self, other: &Request) -> bool {
        self.params().eq(other.params())
    }
}

impl Eq for Request {}

/// Meta-variables never passed to an application: `Proxy:` request headers
/// would become HTTP_PROXY, which many HTTP clients obey (httpoxy, CVE-2016-5385).
pub fn is_forbidden_meta_variable(name: &[u8]) -> bool {
    name == b"HTTP_PROXY"
}

/// Status line and headers of a response, as bytes (PEP 3333 headers are
/// latin-1, CGI output is bytes): carried to the web server as they came.
///
/// Only validated parts get in: [`ResponseHead::from_status_line`] and
/// [`ResponseHead::push_header`] apply the one set of rules every back shares
/// (RFC 9110: a status of 100-599, a reason of visible bytes, token names,
/// values without CR, LF or NUL), so no front can be made to write a line break
/// an application chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    status: u16,
    reason: Vec<u8>,
    /// Header fields other than Status, as the application wrote them.
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ResponseHead {
    /// A response with a standard reason phrase (statuses the shim chooses).
    pub fn new(status: u16) -> ResponseHead {
        ResponseHead {
            status,
            reason: reason_phrase(status).as_bytes().to_vec(),
            headers: Vec::new(),
        }
    }

    /// A head from an application's status line "NNN reason" (the reason may
    /// be missing: the standard phrase is used).
    pub fn from_status_line(line: &[u8]) -> Result<ResponseHead, HeadError> {
        let (status, reason) = parse_status_line(line)?;
        let mut head = ResponseHead::new(status);
        if !reason.is_empty() {
            head.reason = reason.to_vec();
        }
        Ok(head)
    }

    /// The same head with another status and its standard reason.
    fn with_status(mut self, status: u16) -> ResponseHead {
        self.status = status;
        self.reason = reason_phrase(status).as_bytes().to_vec();
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn reason(&self) -> &[u8] {
        &self.reason
    }

    pub fn headers(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.headers
    }

    /// Add a header field after checking it: a token name, a value with no
    /// CR, LF or NUL.
    pub fn push_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeadError> {
        check_header(name, value)?;
        self.headers.push((name.to_vec(), value.to_vec()));
        Ok(())
    }

    /// Add a header field the shim itself chose (a constant known to pass
    /// [`check_header`]).
    pub fn with_header(mut self, name: &'static str, value: &'static str) -> ResponseHead {
        debug_assert!(check_header(name.as_bytes(), value.as_bytes()).is_ok());
        self.headers
            .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    /// RFC 3875 §6.2.2: a local redirect is a Location that is a path, with no
    /// status of its own. The web server performs it; we pass it on untouched.
    pub fn is_local_redirect(&self) -> bool {
        self.status == 200 && self.header("Location").is_some_and(|l| l.starts_with(b"/"))
    }

    /// Append the head as a CGI response head (what FastCGI and SCGI carry).
    pub fn write_cgi(&self, out: &mut Vec<u8>) {
        if !self.is_local_redirect() {
            out.extend_from_slice(format!("Status: {} ", self.status).as_bytes());
            out.extend_from_slice(&self.reason);
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// "NNN reason" → the status (100-599) and the reason (possibly empty):
/// three digits, then nothing or a space and a reason of HTAB, SP, visible
/// ASCII and obs-text (RFC 9112 §4), so never CR, LF, NUL or another control.
pub fn parse_status_line(line: &[u8]) -> Result<(u16, &[u8]), HeadError> {
    let bad = || HeadError::BadStatus(line.to_vec());
    let (code, reason) = match line.get(3) {
        None => (line, &b""[..]),
        Some(b' ') => (&line[..3], &line[4..]),
        Some(_) => return Err(bad()),
    };
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&status) || !reason.iter().all(|&b| is_reason_byte(b)) {
        return Err(bad());
    }
    Ok((status, reason))
}

/// The one check of a response header field every back applies.
pub fn check_header(name: &[u8], value: &[u8]) -> Result<(), HeadError> {
    if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
        return Err(HeadError::BadName(name.to_vec()));
    }
    if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(HeadError::BadValue {
            name: name.to_vec(),
            value: value.to_vec(),
        });
    }
    Ok(())
}

/// RFC 9110 §5.5 / RFC 9112 §4: HTAB, SP, VCHAR, obs-text.
fn is_reason_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80
}

/// Bytes as a double-quoted string: printable ASCII as it is, the rest
/// escaped (`\r`, `\n`, `\0`, `\xe9`), so a log line shows what was refused.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            match b {
                b'"' => f.write_str("\\\"")?,
                b'\\' => f.write_str("\\\\")?,
                b'\r' => f.write_str("\\r")?,
                b'\n' => f.write_str("\\n")?,
                b'\t' => f.write_str("\\t")?,
                0 => f.write_str("\\0")?,
                b' '..=b'~' => write!(f, "{}", b as char)?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
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
/// The bytes kept are the application's, shown escaped by `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// More than the configured number of bytes without the blank line.
    TooLarge(usize),
    /// A line that is not `Name: value` (no colon, or a continuation line).
    BadLine(Vec<u8>),
    /// A status line (CGI's Status header, WSGI's status) that is not
    /// "NNN reason" with 100 <= NNN <= 599 and a reason of visible bytes.
    BadStatus(Vec<u8>),
    /// A header name that is not an RFC 9110 token.
    BadName(Vec<u8>),
    /// A header value with CR, LF or NUL in it.
    BadValue { name: Vec<u8>, value: Vec<u8> },
    /// A WSGI head frame whose names and values do not pair up.
    BadFieldList,
    /// None of Content-Type, Location or Status (RFC 3875 §6.2).
    NoDocument,
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge(n) => write!(f, "response header block larger than {n} bytes"),
            HeadError::BadLine(l) => write!(f, "malformed response header line {}", Escaped(l)),
            HeadError::BadStatus(s) => write!(f, "invalid Status line {}", Escaped(s)),
            HeadError::BadName(n) => write!(f, "invalid response header name {}", Escaped(n)),
            HeadError::BadValue { name, value } => write!(
                f,
                "invalid value of response header {}: {}",
                Escaped(name),
                Escaped(value)
            ),
            HeadError::BadFieldList => f.write_str("malformed response header list"),
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
    let mut status: Option<&[u8]> = None;
    let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(HeadError::BadLine(line.to_vec()));
        };
        // No whitespace around the name (RFC 9112 §5.1, and a line starting
        // with whitespace would be an obsolete continuation): the name check
        // refuses it.
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"Status") {
            status = Some(value);
        } else {
            fields.push((name, value));
        }
    }
    let mut head = match status {
        Some(line) => ResponseHead::from_status_line(line)?,
        None => ResponseHead::new(200),
    };
    for (name, value) in fields {
        head.push_header(name, value)?;
    }
    if status.is_none() {
        match head.header("Location") {
            // RFC 3875 §6.2.3/§6.2.4: a client redirect without a Status is a 302.
            Some(l) if !l.starts_with(b"/") => head = head.with_status(302),
            Some(_) => {}
            None if head.header("Content-Type").is_none() => return Err(HeadError::NoDocument),
            None => {}
        }
    }
    Ok(head)
}

/// A tchar of RFC 9110 §5.6.2 (header names, methods).
pub fn is_token_byte(b: u8) -> bool {
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

    /// Can [`Exchange::splice_body`] move body bytes from a pipe?
    fn can_splice(&self) -> bool {
        false
    }

    /// Move up to `len` response body bytes, which are in `pipe` (the
    /// application's output), straight to the web server without copying
    /// them through us (splice(2)). Returns how many moved: 0 when the
    /// web server's socket is full (then [`Exchange::output_backlog`] is
    /// above 0 until it has room). Once some moved, the back must give the
    /// rest of that body chunk this way too, even after an abort, until this
    /// fails (after an abort: once the record it had open is complete).
    /// Only if [`Exchange::can_splice`].
    fn splice_body(&mut self, _pipe: BorrowedFd<'_>, _len: usize) -> io::Result<usize> {
        Ok(0)
    }

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
    let head = ResponseHead::new(status).with_header("Content-Type", "text/plain; charset=utf-8");
    exchange.send_head(&head)?;
    let body = format!("{} {}\n{detail}\n", status, reason_phrase(status));
    exchange.send_body(body.as_bytes())
}

// ---------------------------------------------------------------------------
// What an application that builds URLs sees (issue 3): SCRIPT_NAME after a
// rewrite, Authorization restored, httpoxy. Front- and back-neutral.

/// How SCRIPT_NAME is presented to an application that builds URLs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptName {
    /// Keep the web server's SCRIPT_NAME, unless the request was rewritten
    /// (REDIRECT_URL or SCRIPT_URL present, or REQUEST_URI not under
    /// SCRIPT_NAME): then use the prefix the visitor actually used, so that
    /// generated URLs never contain `mysite.fcgi`.
    Auto,
    /// Always this prefix ("" for a site at the root): Django's FORCE_SCRIPT_NAME.
    Fixed(String),
    /// The web server's SCRIPT_NAME as sent: what a CGI program (the `cgi`
    /// kind) is given, as RFC 3875 says.
    AsReceived,
}

/// The SCRIPT_NAME to present instead of the one received, if it differs.
pub fn presented_script_name(req: &Request, mode: &ScriptName) -> Option<String> {
    let script = req.get("SCRIPT_NAME").unwrap_or("");
    let wanted = match mode {
        ScriptName::AsReceived => return None,
        ScriptName::Fixed(prefix) => prefix.clone(),
        ScriptName::Auto => {
            let visited = req
                .get("REDIRECT_URL")
                .or_else(|| req.get("SCRIPT_URL"))
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .or_else(|| {
                    let uri = req.get("REQUEST_URI")?;
                    let path = percent_decode(uri.split('?').next().unwrap_or(""));
                    (!path.starts_with(script)).then_some(path)
                })?;
            let path_info = req.get("PATH_INFO").unwrap_or("");
            let prefix = match visited.strip_suffix(path_info) {
                Some(prefix) if !path_info.is_empty() => prefix,
                // The rewrite changed the path: the directory of the script is
                // the best guess (the .htaccess lives beside it).
                _ => script.rsplit_once('/').map_or("", |(dir, _)| dir),
            };
            prefix.trim_end_matches('/').to_string()
        }
    };
    (wanted != script).then_some(wanted)
}

/// Apache hides `Authorization` from (Fast)CGI applications; the documented
/// `.htaccess` line passes it as HTTP_AUTHORIZATION, which becomes
/// REDIRECT_HTTP_AUTHORIZATION after mod_rewrite's internal redirect. The value
/// to present as HTTP_AUTHORIZATION when only the latter arrived.
pub fn restored_authorization(req: &Request) -> Option<&str> {
    if req.get("HTTP_AUTHORIZATION").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    req.get("REDIRECT_HTTP_AUTHORIZATION")
        .filter(|v| !v.is_empty())
}

/// Visit the meta-variables an application is given, in order: every one
/// received except the forbidden ones (HTTP_PROXY) and an empty
/// HTTP_AUTHORIZATION, with SCRIPT_NAME as `mode` says and Authorization
/// restored. A repeated name is visited again; the last one wins when they
/// go into a map (as the WSGI environ does). SCRIPT_NAME and PATH_INFO are
/// always visited (PEP 3333 requires both keys): one the web server did not
/// send is derived (see [`derived_path_info`]), as nginx's stock
/// `scgi_params` sends neither. Allocates only a changed or derived value.
pub fn for_each_application_meta_variable(
    req: &Request,
    mode: &ScriptName,
    mut visit: impl FnMut(&[u8], &[u8]),
) {
    let script_name = presented_script_name(req, mode);
    let (mut saw_script_name, mut saw_path_info) = (false, false);
    for (name, value) in req.params() {
        if is_forbidden_meta_variable(name) || (name == b"HTTP_AUTHORIZATION" && value.is_empty()) {
            continue;
        }
        saw_path_info |= name == b"PATH_INFO";
        match (name, &script_name) {
            (b"SCRIPT_NAME", Some(s)) => {
                saw_script_name = true;
                visit(name, s.as_bytes());
            }
            (b"SCRIPT_NAME", None) => {
                saw_script_name = true;
                visit(name, value);
            }
            _ => visit(name, value),
        }
    }
    if let Some(auth) = restored_authorization(req) {
        visit(b"HTTP_AUTHORIZATION", auth.as_bytes());
    }
    let presented = script_name
        .as_deref()
        .or_else(|| req.get("SCRIPT_NAME"))
        .unwrap_or("");
    if !saw_script_name {
        visit(b"SCRIPT_NAME", presented.as_bytes());
    }
    if !saw_path_info {
        visit(b"PATH_INFO", derived_path_info(req, presented).as_bytes());
    }
}

/// PATH_INFO for a request that came without one: the percent-decoded path of
/// REQUEST_URI after `script_name` (the SCRIPT_NAME presented: the one
/// received, or the configured prefix, "" when nothing is known). A path not
/// under that prefix is given whole when no SCRIPT_NAME was received (the web
/// server routed it here), else it is "" (the script is the whole path, as
/// nginx's `fastcgi_params` without `fastcgi_split_path_info` sends it).
pub fn derived_path_info(req: &Request, script_name: &str) -> String {
    let Some(uri) = req.get("REQUEST_URI") else {
        return String::new();
    };
    let path = percent_decode(uri.split('?').next().unwrap_or(""));
    match path.strip_prefix(script_name) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_string(),
        _ if req.get("SCRIPT_NAME").is_none() => path,
        _ => String::new(),
    }
}

/// `%XX` decoded (invalid escapes kept as they are; invalid UTF-8 replaced).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod script_name_tests {
    use super::*;

    fn req(pairs: &[(&str, &str)]) -> Request {
        Request::from_strs(pairs)
    }

    /// (what the web server sent, the SCRIPT_NAME the application must see)
    #[test]
    fn auto_script_name_table() {
        let table: &[(&[(&str, &str)], &str)] = &[
            // mod_fcgid + the rewrite .htaccess at the web root.
            (
                &[
                    ("SCRIPT_NAME", "/mysite.fcgi"),
                    ("PATH_INFO", "/admin/login/"),
                    ("REQUEST_URI", "/admin/login/?next=/admin/"),
                    ("REDIRECT_URL", "/admin/login/"),
                ],
                "",
            ),
            // The same site in /blog/ (the .htaccess in /blog/).
            (
                &[
                    ("SCRIPT_NAME", "/blog/mysite.fcgi"),
                    ("PATH_INFO", "/admin/login/"),
                    ("REQUEST_URI", "/blog/admin/login/"),
                    ("REDIRECT_URL", "/blog/admin/login/"),
                ],
                "/blog",
            ),
            // The root of the subdirectory.
            (
                &[
                    ("SCRIPT_NAME", "/blog/mysite.fcgi"),
                    ("PATH_INFO", "/"),
                    ("REQUEST_URI", "/blog/"),
                    ("REDIRECT_URL", "/blog/"),
                ],
                "/blog",
            ),
            // SCRIPT_URL (server-context mod_rewrite) instead of REDIRECT_URL.
            (
                &[
                    ("SCRIPT_NAME", "/blog/mysite.fcgi"),
                    ("PATH_INFO", "/a b"),
                    ("REQUEST_URI", "/blog/a%20b"),
                    ("SCRIPT_URL", "/blog/a b"),
                ],
                "/blog",
            ),
            // No rewrite variables, but REQUEST_URI is not under SCRIPT_NAME
            // (an Alias or a server-level rewrite); percent-encoding decoded.
            (
                &[
                    ("SCRIPT_NAME", "/cgi/mysite.fcgi"),
                    ("PATH_INFO", "/caf\u{e9}/x"),
                    ("REQUEST_URI", "/shop/caf%C3%A9/x?q=1"),
                ],
                "/shop",
            ),
            // A rewrite that changed the path: the script's directory.
            (
                &[
                    ("SCRIPT_NAME", "/app/mysite.fcgi"),
                    ("PATH_INFO", "/internal/x"),
                    ("REQUEST_URI", "/pretty/x"),
                    ("REDIRECT_URL", "/pretty/x"),
                ],
                "/app",
            ),
        ];
        for (pairs, want) in table {
            let r = req(pairs);
            assert_eq!(
                presented_script_name(&r, &ScriptName::Auto).as_deref(),
                Some(*want),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn auto_keeps_what_the_visitor_used() {
        // The visitor asked for /mysite.fcgi/x itself: nothing to fix.
        for pairs in [
            &[
                ("SCRIPT_NAME", "/mysite.fcgi"),
                ("PATH_INFO", "/x"),
                ("REQUEST_URI", "/mysite.fcgi/x?y=1"),
            ][..],
            // nginx with a location prefix.
            &[
                ("SCRIPT_NAME", "/app"),
                ("PATH_INFO", "/x"),
                ("REQUEST_URI", "/app/x"),
            ][..],
        ] {
            assert_eq!(presented_script_name(&req(pairs), &ScriptName::Auto), None);
        }
    }

    #[test]
    fn fixed_script_name() {
        let r = req(&[("SCRIPT_NAME", "/mysite.fcgi"), ("PATH_INFO", "/x")]);
        assert_eq!(
            presented_script_name(&r, &ScriptName::Fixed(String::new())).as_deref(),
            Some("")
        );
        assert_eq!(
            presented_script_name(&r, &ScriptName::Fixed("/mysite.fcgi".into())),
            None
        );
    }

    #[test]
    fn meta_variables_for_applications() {
        let r = req(&[
            ("SCRIPT_NAME", "/mysite.fcgi"),
            ("PATH_INFO", "/x"),
            ("REDIRECT_URL", "/x"),
            ("HTTP_PROXY", "http://evil/"),
            ("HTTP_AUTHORIZATION", ""),
            ("REDIRECT_HTTP_AUTHORIZATION", "Basic dTpw"),
            ("HTTP_X", "1"),
            ("HTTP_X", "2"),
        ]);
        let mut vars: Vec<(String, String)> = Vec::new();
        for_each_application_meta_variable(&r, &ScriptName::Auto, |n, v| {
            vars.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        });
        let get = |n: &str| {
            let found: Vec<&str> = vars
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect();
            found
        };
        assert_eq!(get("SCRIPT_NAME"), [""]);
        assert_eq!(get("HTTP_PROXY"), Vec::<&str>::new());
        assert_eq!(get("HTTP_AUTHORIZATION"), ["Basic dTpw"]);
        // In order; a map built from them keeps the last.
        assert_eq!(get("HTTP_X"), ["1", "2"]);
        assert_eq!(get("PATH_INFO"), ["/x"]);
        // The cgi kind: the same rules, SCRIPT_NAME as the web server sent it.
        let mut script_names = Vec::new();
        for_each_application_meta_variable(&r, &ScriptName::AsReceived, |n, v| {
            if n == b"SCRIPT_NAME" {
                script_names.push(String::from_utf8_lossy(v).into_owned());
            }
        });
        assert_eq!(script_names, ["/mysite.fcgi"]);
    }

    /// The SCRIPT_NAME and PATH_INFO (each exactly once) an application is
    /// given for (what the web server sent, the mode): issue 13, nginx's
    /// stock `scgi_params` sends neither.
    #[test]
    fn missing_script_name_and_path_info_derived() {
        let fixed = |p: &str| ScriptName::Fixed(p.into());
        /// (sent, mode, SCRIPT_NAME given, PATH_INFO given)
        type Case<'a> = (&'a [(&'a str, &'a str)], ScriptName, &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            // nginx + scgi_params at the root.
            (
                &[
                    ("REQUEST_URI", "/login/?next=%2F"),
                    ("DOCUMENT_URI", "/login/"),
                ],
                ScriptName::Auto,
                "",
                "/login/",
            ),
            (
                &[("REQUEST_URI", "/caf%C3%A9/a%20b")],
                ScriptName::Auto,
                "",
                "/caf\u{e9}/a b",
            ),
            // Under a prefix that `script_name` names.
            (
                &[("REQUEST_URI", "/app/login/")],
                fixed("/app"),
                "/app",
                "/login/",
            ),
            (&[("REQUEST_URI", "/app")], fixed("/app"), "/app", ""),
            // Not under the prefix: the web server routed it here, all of it.
            (
                &[("REQUEST_URI", "/application/x")],
                fixed("/app"),
                "/app",
                "/application/x",
            ),
            // The cgi kind: "" as the prefix, the whole path.
            (
                &[("REQUEST_URI", "/x/y?z")],
                ScriptName::AsReceived,
                "",
                "/x/y",
            ),
            // Nothing to go by.
            (&[("REQUEST_METHOD", "GET")], ScriptName::Auto, "", ""),
            // Only PATH_INFO missing (nginx fastcgi_params without split_path_info).
            (
                &[("SCRIPT_NAME", "/app/x"), ("REQUEST_URI", "/app/x")],
                ScriptName::Auto,
                "/app/x",
                "",
            ),
            (
                &[
                    ("SCRIPT_NAME", "/cgi/t.cgi"),
                    ("REQUEST_URI", "/cgi/t.cgi/more"),
                ],
                ScriptName::AsReceived,
                "/cgi/t.cgi",
                "/more",
            ),
            // Only SCRIPT_NAME missing: PATH_INFO kept as sent.
            (
                &[("PATH_INFO", "/p"), ("REQUEST_URI", "/app/p")],
                fixed("/app"),
                "/app",
                "/p",
            ),
            (
                &[("PATH_INFO", "/p"), ("REQUEST_URI", "/p")],
                ScriptName::Auto,
                "",
                "/p",
            ),
        ];
        for (pairs, mode, script_name, path_info) in cases {
            let mut seen = (Vec::new(), Vec::new());
            for_each_application_meta_variable(&req(pairs), mode, |n, v| {
                let v = String::from_utf8_lossy(v).into_owned();
                match n {
                    b"SCRIPT_NAME" => seen.0.push(v),
                    b"PATH_INFO" => seen.1.push(v),
                    _ => {}
                }
            });
            assert_eq!(
                seen,
                (vec![script_name.to_string()], vec![path_info.to_string()]),
                "{pairs:?} {mode:?}"
            );
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b%zz%2"), "/a b%zz%2");
        assert_eq!(percent_decode("/caf%C3%A9"), "/caf\u{e9}");
    }
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
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers(),
            [
                (b"Content-Type".to_vec(), b"text/plain".to_vec()),
                (b"X-A".to_vec(), b"1".to_vec())
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
            assert_eq!(result.0.status(), 404, "split {split}");
            assert_eq!(result.0.reason(), b"Not Found");
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
        assert_eq!((client.status(), client.reason()), (302, &b"Found"[..]));
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
            Err(HeadError::BadLine(b"garbage line".to_vec()))
        );
        assert_eq!(
            parse_all(b"Status: abc\n\n"),
            Err(HeadError::BadStatus(b"abc".to_vec()))
        );
        assert_eq!(parse_all(b"X-Only: 1\n\n"), Err(HeadError::NoDocument));
        assert_eq!(
            CgiHeadParser::new(8).push(b"Content-Type: x"),
            Err(HeadError::TooLarge(8))
        );
    }

    /// Issue 13: what an application writes can never become a line of its
    /// own in the head a front writes, whichever back it came through.
    #[test]
    fn hostile_heads_are_refused() {
        let cases: &[(&[u8], HeadError, &str)] = &[
            (
                b"Status: 200 OK\rSet-Cookie: evil=1\nContent-Type: text/plain\n\n",
                HeadError::BadStatus(b"200 OK\rSet-Cookie: evil=1".to_vec()),
                r#"invalid Status line "200 OK\rSet-Cookie: evil=1""#,
            ),
            (
                b"Status: 200 OK\0\nContent-Type: text/plain\n\n",
                HeadError::BadStatus(b"200 OK\0".to_vec()),
                r#"invalid Status line "200 OK\0""#,
            ),
            (
                b"Status: 600 Beyond\nContent-Type: text/plain\n\n",
                HeadError::BadStatus(b"600 Beyond".to_vec()),
                r#"invalid Status line "600 Beyond""#,
            ),
            (
                b"Status: 099 Low\nContent-Type: text/plain\n\n",
                HeadError::BadStatus(b"099 Low".to_vec()),
                r#"invalid Status line "099 Low""#,
            ),
            (
                b"Status: 2000 OK\nContent-Type: text/plain\n\n",
                HeadError::BadStatus(b"2000 OK".to_vec()),
                r#"invalid Status line "2000 OK""#,
            ),
            (
                b"Content-Type: text/plain\nBad Name: x\n\n",
                HeadError::BadName(b"Bad Name".to_vec()),
                r#"invalid response header name "Bad Name""#,
            ),
            (
                b"Content-Type: text/plain\nX-A : x\n\n",
                HeadError::BadName(b"X-A ".to_vec()),
                r#"invalid response header name "X-A ""#,
            ),
            (
                b"Content-Type: text/plain\n continued: x\n\n",
                HeadError::BadName(b" continued".to_vec()),
                r#"invalid response header name " continued""#,
            ),
            (
                b"Content-Type: text/plain\nX-\x01: x\n\n",
                HeadError::BadName(b"X-\x01".to_vec()),
                r#"invalid response header name "X-\x01""#,
            ),
            (
                b"Content-Type: text/plain\nX-(a): x\n\n",
                HeadError::BadName(b"X-(a)".to_vec()),
                r#"invalid response header name "X-(a)""#,
            ),
            (
                b"Content-Type: text/plain\nX-A: a\rSet-Cookie: evil=1\n\n",
                HeadError::BadValue {
                    name: b"X-A".to_vec(),
                    value: b"a\rSet-Cookie: evil=1".to_vec(),
                },
                r#"invalid value of response header "X-A": "a\rSet-Cookie: evil=1""#,
            ),
            (
                b"Content-Type: text/plain\nX-A: a\0b\n\n",
                HeadError::BadValue {
                    name: b"X-A".to_vec(),
                    value: b"a\0b".to_vec(),
                },
                r#"invalid value of response header "X-A": "a\0b""#,
            ),
        ];
        for (input, error, line) in cases {
            let got = parse_all(input);
            assert_eq!(got.as_ref(), Err(error), "{}", Escaped(input));
            assert_eq!(error.to_string(), *line);
        }
    }

    #[test]
    fn heads_are_carried_as_bytes() {
        let input =
            b"Status: 200 \xc7a va\nContent-Disposition: attachment; filename=\"caf\xe9.txt\"\n\n";
        let HeadProgress::Complete(head, _) = parse_all(input).unwrap() else {
            panic!("partial")
        };
        let mut out = Vec::new();
        head.write_cgi(&mut out);
        assert_eq!(
            out,
            b"Status: 200 \xc7a va\r\nContent-Disposition: attachment; filename=\"caf\xe9.txt\"\r\n\r\n"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"204"), Ok((204, &b""[..])));
        assert_eq!(parse_status_line(b"599 x\ty"), Ok((599, &b"x\ty"[..])));
        assert_eq!(
            ResponseHead::from_status_line(b"404").unwrap().reason(),
            b"Not Found"
        );
        for bad in [
            &b""[..],
            b"20",
            b"20x OK",
            b"200OK",
            b"+20 OK",
            b"200 a\x7fb",
        ] {
            assert!(parse_status_line(bad).is_err(), "{}", Escaped(bad));
        }
    }

    #[test]
    fn escaped_bytes() {
        assert_eq!(
            Escaped(b"a\"\\\r\n\t\0\xe9~").to_string(),
            r#""a\"\\\r\n\t\0\xe9~""#
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

    #[test]
    fn request_kept_in_the_decoder_buffer() {
        let data = b"NAMEvalueXy".to_vec();
        let pairs: Vec<(&[u8], &[u8])> =
            vec![(&data[0..4], &data[4..9]), (&data[9..10], &data[10..10])];
        let spans = Request::spans_in(&data, &pairs).unwrap();
        let r = Request::from_spans(data.clone(), spans);
        let copied = Request::new(vec![
            (b"NAME".to_vec(), b"value".to_vec()),
            (b"X".to_vec(), b"".to_vec()),
        ]);
        assert_eq!(r, copied);
        assert_eq!(r.get("NAME"), Some("value"));
        assert_eq!(r.params().count(), 2);
        // A slice from elsewhere is not "in" the buffer.
        let other = b"zz".to_vec();
        assert!(Request::spans_in(&data, &[(&other[..], &data[0..1])]).is_none());
        // Spans outside the buffer are dropped, never read.
        let r = Request::from_spans(b"ab".to_vec(), vec![((0, 1), (1, 2)), ((1, 5), (0, 0))]);
        assert_eq!(r.params().collect::<Vec<_>>(), vec![(&b"a"[..], &b"b"[..])]);
    }
}

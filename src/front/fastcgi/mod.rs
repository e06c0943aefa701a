//! The FastCGI front: drives one connection from a web server.
//!
//! Owns: reading records off the connection (through the sans-I/O [`codec`]),
//! the per-connection state machine (BEGIN_REQUEST, PARAMS, STDIN, ABORT,
//! management records, FCGI_KEEP_CONN, CANT_MPX_CONN for a second request id),
//! the hard caps on what a peer may send, and writing the response as
//! FCGI_STDOUT records and FCGI_END_REQUEST.
//! Must not: run applications (it hands a [`Request`] to a [`Back`]) or decide
//! about processes and signals beyond "stop reading, finish this request".

pub mod codec;

use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use self::codec::{
    BeginRequest, CodecError, Decoded, ProtocolStatus, RecordType, Role, ServerValues,
};
use crate::back::{Back, Context, Outcome};
use crate::config::Limits;
use crate::front::outq::OutQueue;
use crate::request::{Exchange, InputEvent, Request, ResponseHead};
use crate::spool::Spool;
use crate::sys::Conn;

/// How long a peer may stay silent while not taking our response, and how
/// long a kept-alive connection may idle between requests (mod_fcgid's own
/// I/O timeout is 40 s). A request head has `Limits::request_read_timeout`.
const IO_TIMEOUT: Duration = Duration::from_secs(40);
/// After the response, how long we keep reading a request body nobody wanted
/// before closing (closing with unread data can reset the connection).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// An idle keep-alive connection asks this often whether to give way (reload).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Bytes asked for by one read(2): a whole record of the largest size.
const READ_SIZE: usize = 65536 + codec::HEADER_LEN;
/// Reads of a streaming body per `on_ready` at most.
const BODY_READS: usize = 4;
/// Input we hold undecoded while the peer does not read our response.
const MAX_UNREAD_INPUT: usize = 4 * 1024 * 1024;
/// Queued response bytes written at once by `send_body`; less waits for the
/// back's next poll round or the end of the request.
const EAGER_FLUSH: usize = 16 * 1024;

/// appStatus of the END_REQUEST that answers FCGI_ABORT_REQUEST: the
/// application did not finish the request (spec 5.4: the answer comes "as
/// soon as possible", and the application's status says how it ended).
pub const ABORTED_APP_STATUS: u32 = 1;

/// What we tell GET_VALUES in the one-request-at-a-time mode.
pub const SINGLE_VALUES: ServerValues = ServerValues {
    max_conns: 1,
    max_reqs: 1,
    mpxs_conns: false,
};

/// Why a connection was closed early.
#[derive(Debug)]
pub enum ConnError {
    Codec(CodecError),
    /// A record that makes no sense where it came.
    Protocol(String),
    /// A cap from [`Limits`] was exceeded.
    Limit(String),
    /// The peer closed in the middle of a record.
    Truncated(usize),
    /// Nothing arrived for too long.
    Timeout,
    /// The request body could not be held (a full temporary directory).
    Spool(io::Error),
    /// The request head did not arrive in time (`request_read_timeout`).
    HeadTimeout(Duration),
    /// The response ended inside a record whose content was being spliced
    /// from the application (it died, or the request timed out).
    CutShort,
    Io(io::Error),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Codec(e) => write!(f, "{e}"),
            ConnError::Protocol(m) => write!(f, "protocol error: {m}"),
            ConnError::Limit(m) => write!(f, "limit exceeded: {m}"),
            ConnError::Truncated(n) => write!(
                f,
                "peer closed the connection in the middle of a record ({n} bytes pending)"
            ),
            ConnError::Spool(e) => write!(f, "cannot hold the request body: {e}"),
            ConnError::Timeout => write!(f, "no data from the peer for {}s", IO_TIMEOUT.as_secs()),
            ConnError::HeadTimeout(t) => write!(
                f,
                "no complete request within {}s (request_read_timeout)",
                t.as_secs_f64()
            ),
            ConnError::CutShort => write!(
                f,
                "the response ended inside an FCGI_STDOUT record (the application's output stopped)"
            ),
            ConnError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<CodecError> for ConnError {
    fn from(e: CodecError) -> Self {
        ConnError::Codec(e)
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// A record copied out of the input buffer.
struct Frame {
    rtype: RecordType,
    id: u16,
    content: Vec<u8>,
}

/// The connection: buffered input, limits, output scratch space.
struct Connection {
    conn: Conn,
    inbuf: Vec<u8>,
    start: usize,
    limits: Limits,
    values: ServerValues,
    management_records: usize,
    /// Output not yet taken by the peer (the socket is non-blocking).
    out: OutQueue,
    /// The FCGI_STDOUT record whose content is being spliced from the
    /// application's pipe; nothing else is written until it is complete.
    spliced: SplicedRecord,
}

/// A record being written by splice(2): its header, then content bytes
/// that go from the application's pipe to the socket in the kernel.
#[derive(Default)]
struct SplicedRecord {
    header: [u8; codec::HEADER_LEN],
    /// Header bytes written.
    header_written: usize,
    /// Content bytes still to come (0: no record open).
    left: usize,
}

/// The content of a spliced record: the longest that needs no padding.
const SPLICED_RECORD_LEN: usize = codec::MAX_CONTENT_LEN / 8 * 8;

/// What one read(2) produced.
enum Filled {
    Bytes,
    WouldBlock,
    Eof,
}

/// What waiting for the peer produced.
enum Wait {
    Readable,
    /// Another connection is waiting in the listener's backlog.
    OtherConnection,
    Stop,
    /// A signal that asks nothing of us; wait again.
    Interrupted,
    Timeout,
}

impl Connection {
    fn new(conn: Conn, limits: Limits, values: ServerValues) -> Connection {
        Connection {
            conn,
            inbuf: Vec::with_capacity(READ_SIZE),
            start: 0,
            limits,
            values,
            management_records: 0,
            out: OutQueue::new(),
            spliced: SplicedRecord::default(),
        }
    }

    fn has_partial_input(&self) -> bool {
        self.inbuf.len() > self.start
    }

    /// Decode the next record already in the buffer.
    fn buffered_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        match codec::decode_record(&self.inbuf[self.start..])? {
            Decoded::Partial => Ok(None),
            Decoded::Complete(record, used) => {
                let frame = Frame {
                    rtype: record.rtype,
                    id: record.request_id,
                    content: record.content.to_vec(),
                };
                self.start += used;
                if self.start == self.inbuf.len() {
                    self.inbuf.clear();
                    self.start = 0;
                }
                Ok(Some(frame))
            }
        }
    }

    fn has_buffered_frame(&self) -> bool {
        matches!(
            codec::decode_record(&self.inbuf[self.start..]),
            Ok(Decoded::Complete(..)) | Err(_)
        )
    }

    /// One read(2) into the buffer.
    fn fill(&mut self) -> Result<Filled, ConnError> {
        if self.start > 0 && self.start * 2 >= self.inbuf.len() {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        if self.inbuf.len() - self.start > MAX_UNREAD_INPUT {
            return Err(ConnError::Limit(format!(
                "more than {MAX_UNREAD_INPUT} bytes of input waiting while our response is not read"
            )));
        }
        let result = loop {
            match self.conn.read_append(&mut self.inbuf, READ_SIZE) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Filled::WouldBlock),
            Err(e) => return Err(e.into()),
        };
        if n > 0 {
            Ok(Filled::Bytes)
        } else if self.has_partial_input() {
            Err(ConnError::Truncated(self.inbuf.len() - self.start))
        } else {
            Ok(Filled::Eof)
        }
    }

    fn pending_output(&self) -> usize {
        self.out.pending()
    }

    /// Write queued output until it is all written or the socket is full
    /// (after the record being spliced, if one is).
    fn try_flush(&mut self) -> io::Result<()> {
        if self.record_open() {
            return Ok(());
        }
        self.out.flush_to_socket(&mut self.conn)
    }

    /// Is a spliced record not complete yet?
    fn record_open(&self) -> bool {
        self.spliced.left > 0
    }

    /// Up to `max` bytes from `pipe` (at least that many are in it) as
    /// FCGI_STDOUT content of request `id`, moved by splice(2): a record's
    /// header is written first, then its content as the socket takes it.
    /// Ok(0): the socket is full.
    fn splice_stdout(&mut self, id: u16, pipe: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        if !self.record_open() {
            self.try_flush()?;
            if self.pending_output() > 0 || max == 0 {
                return Ok(0);
            }
            let len = max.min(SPLICED_RECORD_LEN);
            let content_len = u16::try_from(len).unwrap_or(u16::MAX);
            self.spliced = SplicedRecord {
                header: codec::record_header(RecordType::Stdout, id, content_len, 0),
                header_written: 0,
                left: usize::from(content_len),
            };
            self.out.raise_send_buffer(&self.conn);
        }
        let s = &mut self.spliced;
        while s.header_written < codec::HEADER_LEN {
            match self.conn.write(&s.header[s.header_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => s.header_written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        let moved = match crate::sys::splice_to_socket(pipe, self.conn.as_fd(), s.left.min(max)) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        s.left -= moved;
        if s.left == 0 {
            // What was queued meanwhile (a management record's answer).
            self.try_flush()?;
        }
        Ok(moved)
    }

    /// Drop buffered STDIN/DATA records of the finished request `id`.
    /// Returns whether the end of its body (an empty STDIN) went by.
    fn drop_stream_records(&mut self, id: u16) -> bool {
        let mut saw_end = false;
        while let Ok(Decoded::Complete(record, used)) =
            codec::decode_record(&self.inbuf[self.start..])
        {
            if record.request_id != id
                || !matches!(record.rtype, RecordType::Stdin | RecordType::Data)
            {
                break;
            }
            saw_end |= record.rtype == RecordType::Stdin && record.content.is_empty();
            self.start += used;
        }
        saw_end
    }

    /// After a request: write all queued output, meanwhile reading (and
    /// dropping) the rest of its body so the peer never blocks writing it.
    /// With `want_body_end`, also wait (briefly) for the end of the body, so
    /// that closing the socket does not reset the connection under the response.
    fn settle(
        &mut self,
        ctx: &Context<'_>,
        id: Option<u16>,
        want_body_end: bool,
    ) -> Result<(), ConnError> {
        let mut body_ended = !want_body_end;
        let mut deadline = Instant::now() + IO_TIMEOUT;
        let mut flushed_at = None;
        loop {
            self.try_flush()?;
            if let Some(id) = id {
                body_ended |= self.drop_stream_records(id);
            }
            let flushed = self.pending_output() == 0;
            if flushed && flushed_at.is_none() {
                flushed_at = Some(Instant::now());
                deadline = Instant::now() + DRAIN_TIMEOUT;
            }
            if flushed && body_ended {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return if flushed {
                    Ok(())
                } else {
                    Err(ConnError::Timeout)
                };
            }
            match self.wait(ctx, None, left)? {
                Wait::Readable => match self.fill()? {
                    Filled::Eof if flushed => return Ok(()),
                    Filled::Eof => return Err(ConnError::Io(io::ErrorKind::BrokenPipe.into())),
                    Filled::Bytes | Filled::WouldBlock => {}
                },
                Wait::Timeout if flushed => return Ok(()),
                Wait::Timeout => return Err(ConnError::Timeout),
                Wait::Stop | Wait::Interrupted | Wait::OtherConnection => {}
            }
        }
    }

    /// Wait until the peer sends something, a stop signal arrives, or (when
    /// `listener` is given) another connection is waiting.
    fn wait(
        &mut self,
        ctx: &Context<'_>,
        listener: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> io::Result<Wait> {
        let conn_events = if self.pending_output() > 0 {
            PollFlags::POLLIN | PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        };
        let mut fds = vec![
            PollFd::new(self.conn.as_fd(), conn_events),
            PollFd::new(ctx.signals.fd(), PollFlags::POLLIN),
        ];
        if let Some(l) = listener {
            fds.push(PollFd::new(l, PollFlags::POLLIN));
        }
        match poll(&mut fds, crate::sys::poll_timeout(timeout)) {
            Ok(0) => return Ok(Wait::Timeout),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {
                return Ok(if crate::sys::stop_requested() {
                    Wait::Stop
                } else {
                    Wait::Interrupted
                });
            }
            Err(e) => return Err(e.into()),
        }
        let revents = |i: usize| {
            fds.get(i)
                .and_then(PollFd::revents)
                .unwrap_or(PollFlags::empty())
        };
        let ready = |i: usize| !revents(i).is_empty();
        let conn = revents(0);
        let (signal, other) = (ready(1), ready(2));
        drop(fds);
        if conn.contains(PollFlags::POLLOUT) {
            self.try_flush()?;
        }
        if conn.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            Ok(Wait::Readable)
        } else if !conn.is_empty() {
            Ok(Wait::Interrupted)
        } else if signal {
            ctx.signals.drain();
            Ok(if crate::sys::stop_requested() {
                Wait::Stop
            } else {
                Wait::Interrupted
            })
        } else if other {
            Ok(Wait::OtherConnection)
        } else {
            Ok(Wait::Timeout)
        }
    }

    /// The next record, reading as needed, for the parts of the conversation
    /// where nothing else runs (before the body), by the head's `deadline`.
    /// `Ok(None)`: the peer closed cleanly.
    fn next_frame(
        &mut self,
        ctx: &Context<'_>,
        deadline: Instant,
    ) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::HeadTimeout(self.limits.request_read_timeout));
            }
            match self.wait(ctx, None, left)? {
                Wait::Readable => {
                    if let Filled::Eof = self.fill()? {
                        return Ok(None);
                    }
                }
                // A request has begun: a stop signal lets it finish (the back enforces the grace period).
                Wait::Stop | Wait::OtherConnection | Wait::Interrupted => {}
                Wait::Timeout => {}
            }
        }
    }

    /// Answer a management record (request id 0).
    fn management(&mut self, frame: &Frame) -> Result<(), ConnError> {
        self.management_records += 1;
        if self.management_records > self.limits.max_management_records {
            return Err(ConnError::Limit(format!(
                "more than {} management records on one connection",
                self.limits.max_management_records
            )));
        }
        match frame.rtype {
            RecordType::GetValues => {
                codec::encode_get_values_result(self.out.tail(), &frame.content, &self.values)?
            }
            other => codec::encode_unknown_type(self.out.tail(), other.as_u8()),
        }
        self.try_flush()?;
        Ok(())
    }

    fn end_request(&mut self, id: u16, status: ProtocolStatus) -> io::Result<()> {
        codec::encode_end_request(self.out.tail(), id, 0, status);
        self.try_flush()
    }

    /// Answer FCGI_ABORT_REQUEST for `id` at once: the end of its STDOUT
    /// stream and END_REQUEST with [`ABORTED_APP_STATUS`].
    fn end_aborted(&mut self, id: u16) -> io::Result<()> {
        codec::encode_record(self.out.tail(), RecordType::Stdout, id, &[]);
        codec::encode_end_request(
            self.out.tail(),
            id,
            ABORTED_APP_STATUS,
            ProtocolStatus::RequestComplete,
        );
        self.try_flush()
    }
}

/// Serve one accepted connection until it is finished. `listener` lets an
/// idle keep-alive connection give way to a waiting one; so does
/// `yield_between_requests` returning true (a reload is due) when nothing of
/// the next request has arrived yet. `conn` comes from `sys::accept`:
/// non-blocking. Errors are logged here.
pub fn serve_connection(
    conn: Conn,
    back: &mut dyn Back,
    ctx: &mut Context<'_>,
    limits: Limits,
    listener: Option<BorrowedFd<'_>>,
    yield_between_requests: &mut dyn FnMut() -> bool,
) {
    let mut connection = Connection::new(conn, limits, SINGLE_VALUES);
    let result = serve(&mut connection, back, ctx, listener, yield_between_requests)
        .and_then(|()| connection.settle(ctx, None, false));
    if let Err(e) = result {
        match e {
            ConnError::Io(ref io)
                if io.kind() == io::ErrorKind::BrokenPipe
                    || io.kind() == io::ErrorKind::ConnectionReset =>
            {
                log::warn!("fastcgi: closing connection: the web server went away ({io})");
            }
            ConnError::HeadTimeout(_) => log::warn!("fastcgi: closing connection: {e}"),
            other => log::error!("fastcgi: closing connection: {other}"),
        }
    }
}

fn serve(
    c: &mut Connection,
    back: &mut dyn Back,
    ctx: &mut Context<'_>,
    listener: Option<BorrowedFd<'_>>,
    yield_between_requests: &mut dyn FnMut() -> bool,
) -> Result<(), ConnError> {
    let mut served_one = false;
    // The head of the next request must be complete by `head_deadline`:
    // from the accept on a new connection, from its first byte on a kept
    // one (which meanwhile may idle for IO_TIMEOUT).
    let read_timeout = c.limits.request_read_timeout;
    let mut head_deadline = Some(Instant::now() + read_timeout);
    let mut idle_deadline = Instant::now() + IO_TIMEOUT;
    // The web server writes its request right after connecting: read before
    // polling, which saves a poll(2) per connection when it is already here.
    if let Filled::Eof = c.fill()? {
        return Ok(());
    }
    loop {
        let idle = served_one && !c.has_buffered_frame() && !c.has_partial_input();
        // A kept-alive connection between requests gives way to a reload: the
        // web server retries a request on a cached connection closed under it.
        if idle && yield_between_requests() {
            return Ok(());
        }
        // Between requests: wait for the next record; an idle keep-alive
        // connection yields to a new one, and to a stop signal. It wakes at
        // least every IDLE_TICK to ask again whether to yield.
        if !c.has_buffered_frame() {
            let idle_listener = if idle { listener } else { None };
            let deadline = head_deadline.unwrap_or(idle_deadline);
            let left = deadline.saturating_duration_since(Instant::now());
            match c.wait(ctx, idle_listener, left.min(IDLE_TICK))? {
                Wait::Readable => {
                    if let Filled::Eof = c.fill()? {
                        return Ok(());
                    }
                    head_deadline.get_or_insert_with(|| Instant::now() + read_timeout);
                    continue;
                }
                Wait::OtherConnection => return Ok(()),
                Wait::Stop if !c.has_partial_input() => return Ok(()),
                Wait::Stop | Wait::Interrupted => continue,
                Wait::Timeout if Instant::now() < deadline => continue,
                Wait::Timeout if head_deadline.is_none() => return Ok(()),
                Wait::Timeout => return Err(ConnError::HeadTimeout(read_timeout)),
            }
        }
        let Some(frame) = c.buffered_frame()? else {
            continue;
        };
        if frame.id == 0 {
            c.management(&frame)?;
            continue;
        }
        match frame.rtype {
            RecordType::BeginRequest => {
                let begin = codec::decode_begin_request(&frame.content)?;
                // FILTER (its FCGI_DATA stream of a file) is not served: no
                // web server we know of sends it.
                if let Role::Responder | Role::Authorizer = begin.role {
                    let deadline = head_deadline.unwrap_or_else(|| Instant::now() + read_timeout);
                    if !serve_request(c, back, ctx, frame.id, begin, deadline)? {
                        return Ok(());
                    }
                } else {
                    log::warn!(
                        "fastcgi: request {} asks for role {:?}; answering FCGI_UNKNOWN_ROLE",
                        frame.id,
                        begin.role
                    );
                    c.end_request(frame.id, ProtocolStatus::UnknownRole)?;
                }
                served_one = true;
                head_deadline = None;
                idle_deadline = Instant::now() + IO_TIMEOUT;
                if !begin.keep_conn {
                    return Ok(());
                }
            }
            // Records of requests that are no longer active (the rest of a body
            // nobody read, an abort that crossed our END_REQUEST) are ignored.
            rtype if is_request_stream(rtype) => {
                log::debug!(
                    "fastcgi: ignoring {:?} record for inactive request {}",
                    frame.rtype,
                    frame.id
                );
            }
            other => {
                return Err(ConnError::Protocol(format!(
                    "unexpected {other:?} record (request {})",
                    frame.id
                )));
            }
        }
    }
}

/// Read PARAMS, hand the request to the back, finish with END_REQUEST.
/// Returns whether the connection is still usable.
fn serve_request(
    c: &mut Connection,
    back: &mut dyn Back,
    ctx: &mut Context<'_>,
    id: u16,
    begin: BeginRequest,
    head_deadline: Instant,
) -> Result<bool, ConnError> {
    let mut params = Vec::new();
    let mut records = 0usize;
    loop {
        let Some(frame) = c.next_frame(ctx, head_deadline)? else {
            return Err(ConnError::Protocol(format!(
                "connection closed while reading the parameters of request {id}"
            )));
        };
        match (frame.rtype, frame.id) {
            (_, 0) => c.management(&frame)?,
            (RecordType::Params, fid) if fid == id => {
                if frame.content.is_empty() {
                    break;
                }
                records += 1;
                if records > c.limits.max_param_records {
                    return Err(ConnError::Limit(format!(
                        "more than {} PARAMS records",
                        c.limits.max_param_records
                    )));
                }
                if params.len() + frame.content.len() > c.limits.max_params_bytes {
                    return Err(ConnError::Limit(format!(
                        "parameters larger than {} bytes",
                        c.limits.max_params_bytes
                    )));
                }
                params.extend_from_slice(&frame.content);
            }
            (RecordType::AbortRequest, fid) if fid == id => {
                c.end_aborted(id)?;
                return Ok(true);
            }
            (RecordType::BeginRequest, _) => reject_second_request(c, &frame)?,
            (rtype, fid) if fid != id && is_request_stream(rtype) => {
                log::debug!("fastcgi: ignoring {rtype:?} record for inactive request {fid}");
            }
            (other, fid) => {
                return Err(ConnError::Protocol(format!(
                    "unexpected {other:?} record for request {fid} while reading parameters"
                )));
            }
        }
    }
    // An authorizer's application learns its role from FCGI_ROLE, as
    // libfcgi's FCGX_Accept tells it (mod_fcgid adds FCGI_APACHE_ROLE).
    let mut max_params = c.limits.max_params;
    if begin.role == Role::Authorizer {
        codec::encode_name_value(&mut params, b"FCGI_ROLE", b"AUTHORIZER");
        max_params += 1;
    }
    // The names and values stay in the buffer they arrived in.
    let pairs = codec::decode_name_values(&params, max_params)?;
    let request = match Request::spans_in(&params, &pairs) {
        Some(spans) => Request::from_spans(params, spans),
        None => Request::new(
            pairs
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
        ),
    };
    let mut exchange = FcgiExchange {
        c,
        id,
        request,
        role: begin.role,
        body: Spool::new(),
        // An authorizer gets no body; mod_fcgid sends not even an empty
        // FCGI_STDIN (other servers may: it is ignored).
        body_eof: begin.role == Role::Authorizer,
        head_sent: false,
        head: Vec::new(),
        aborted: false,
        failure: None,
        socket_full: false,
    };
    let outcome = back.serve(&mut exchange, ctx);
    let aborted = exchange.aborted;
    // A body we could not hold stopped the back: the web server still
    // gets an answer (503), then the connection is closed.
    let spool_failed = match exchange.failure.take() {
        Some(ConnError::Spool(e)) => {
            if !aborted {
                crate::front::answer_spool_failure("fastcgi", &mut exchange, &e);
            }
            true
        }
        other => {
            exchange.failure = other;
            false
        }
    };
    if !aborted {
        exchange.encode_head();
    }
    let failure = exchange.failure.take();
    let body_eof = exchange.body_eof;
    if let Some(e) = failure {
        return Err(e);
    }
    if c.record_open() {
        // Nothing can follow a record short of its content: the back said
        // why in the log (the worker died, the request timed out, ...).
        return Err(ConnError::CutShort);
    }
    if spool_failed {
        if !aborted {
            codec::encode_record(c.out.tail(), RecordType::Stdout, id, &[]);
            codec::encode_end_request(c.out.tail(), id, 0, ProtocolStatus::RequestComplete);
        }
        c.settle(ctx, Some(id), true)?;
        return Ok(false);
    }
    if outcome == Outcome::FrontGone {
        return Ok(false);
    }
    if !aborted {
        codec::encode_record(c.out.tail(), RecordType::Stdout, id, &[]);
        codec::encode_end_request(c.out.tail(), id, 0, ProtocolStatus::RequestComplete);
    }
    c.settle(ctx, Some(id), !aborted && !begin.keep_conn && !body_eof)?;
    Ok(true)
}

/// Records that belong to a request's streams; for a request id that is not
/// active they are ignored (spec 3.3), e.g. the rest of a rejected request.
fn is_request_stream(rtype: RecordType) -> bool {
    matches!(
        rtype,
        RecordType::Params | RecordType::Stdin | RecordType::Data | RecordType::AbortRequest
    )
}

/// FCGI_CANT_MPX_CONN for a BEGIN_REQUEST while another request is active.
fn reject_second_request(c: &mut Connection, frame: &Frame) -> Result<(), ConnError> {
    codec::decode_begin_request(&frame.content)?;
    log::warn!(
        "fastcgi: request {} arrived on a busy connection; answering FCGI_CANT_MPX_CONN",
        frame.id
    );
    c.end_request(frame.id, ProtocolStatus::CantMpxConn)?;
    Ok(())
}

/// What `on_ready` tells the back about a failure of the connection.
fn failure_error(e: &ConnError) -> io::Error {
    match e {
        ConnError::Spool(_) => crate::front::StoppedByFront::error(e),
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// One request as the back sees it.
struct FcgiExchange<'c> {
    c: &'c mut Connection,
    id: u16,
    request: Request,
    /// Responder or Authorizer (which has no body).
    role: Role,
    /// The body: read as fast as the web server sends it (mod_fcgid sends all
    /// of it before reading anything), held until the application takes it.
    body: Spool,
    body_eof: bool,
    head_sent: bool,
    /// The response head as CGI text, until it is encoded (with the first
    /// body bytes when they fit in the same record).
    head: Vec<u8>,
    /// FCGI_ABORT_REQUEST came and was answered at once (END_REQUEST is
    /// queued): what the back still sends is dropped.
    aborted: bool,
    /// A protocol error found while the back was running; logged by the caller.
    failure: Option<ConnError>,
    /// The last splice found the socket full: counted as output backlog
    /// (the back waits) until the socket is ready again.
    socket_full: bool,
}

impl FcgiExchange<'_> {
    /// Queue the kept head (and what `send_body` added to it) as FCGI_STDOUT.
    fn encode_head(&mut self) {
        if !self.head.is_empty() {
            codec::encode_stream(self.c.out.tail(), RecordType::Stdout, self.id, &self.head);
            self.head.clear();
        }
    }

    /// Handle every buffered record.
    fn process_buffered(&mut self) -> Result<Option<InputEvent>, ConnError> {
        loop {
            if self.push_body_record()? {
                continue;
            }
            let Some(frame) = self.c.buffered_frame()? else {
                break;
            };
            match (frame.rtype, frame.id) {
                (_, 0) => self.c.management(&frame)?,
                (RecordType::Stdin, id) if id == self.id && self.role == Role::Authorizer => {
                    log::debug!("fastcgi: ignoring FCGI_STDIN for authorizer request {id}");
                }
                (RecordType::Stdin, id) if id == self.id => {
                    if self.body_eof {
                        return Err(ConnError::Protocol(format!(
                            "FCGI_STDIN after the end of the body (request {id})"
                        )));
                    }
                    if frame.content.is_empty() {
                        self.body_eof = true;
                    } else {
                        self.body.push(&frame.content).map_err(ConnError::Spool)?;
                    }
                }
                (RecordType::AbortRequest, id) if id == self.id => {
                    // Answered now, whatever the back needs to finish (a
                    // WSGI worker may take DRAIN_LIMIT to end its response).
                    if !self.aborted {
                        self.aborted = true;
                        self.head.clear();
                        self.c.end_aborted(id)?;
                    }
                    return Ok(Some(InputEvent::Aborted));
                }
                (RecordType::BeginRequest, _) => reject_second_request(self.c, &frame)?,
                (RecordType::Data, id) if id == self.id => {}
                (rtype, id) if id != self.id && is_request_stream(rtype) => {
                    log::debug!("fastcgi: ignoring {rtype:?} record for inactive request {id}");
                }
                (other, id) => {
                    return Err(ConnError::Protocol(format!(
                        "unexpected {other:?} record for request {id} during the body"
                    )));
                }
            }
        }
        Ok(None)
    }

    /// A buffered body record of this request goes from the input buffer
    /// to the body as it is (no copy of its own first). false: the next
    /// record is something else (or not complete yet).
    fn push_body_record(&mut self) -> Result<bool, ConnError> {
        let c = &mut *self.c;
        let Ok(Decoded::Complete(record, used)) = codec::decode_record(&c.inbuf[c.start..]) else {
            return Ok(false);
        };
        if record.rtype != RecordType::Stdin
            || record.request_id != self.id
            || self.role == Role::Authorizer
            || self.body_eof
            || record.content.is_empty()
        {
            return Ok(false);
        }
        self.body.push(record.content).map_err(ConnError::Spool)?;
        c.start += used;
        if c.start == c.inbuf.len() {
            c.inbuf.clear();
            c.start = 0;
        }
        Ok(true)
    }

    fn fail(&mut self, e: ConnError) -> io::Error {
        let err = failure_error(&e);
        self.failure = Some(e);
        err
    }
}

impl Exchange for FcgiExchange<'_> {
    fn request(&self) -> &Request {
        &self.request
    }

    fn poll_interest(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
        if self.failure.is_some() {
            return None;
        }
        // A kept head counts as output: if no body follows before the back
        // waits, the next round sends it (on_ready).
        let flags = if self.c.pending_output() > 0 || !self.head.is_empty() || self.socket_full {
            PollFlags::POLLIN | PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        };
        Some((self.c.conn.as_fd(), flags))
    }

    fn input_pending(&self) -> bool {
        self.failure.is_none() && self.c.has_buffered_frame()
    }

    fn on_ready(&mut self) -> io::Result<InputEvent> {
        if let Some(e) = &self.failure {
            return Err(failure_error(e));
        }
        self.socket_full = false;
        self.encode_head();
        if let Err(e) = self.c.try_flush() {
            return Err(self.fail(e.into()));
        }
        // While a body streams in, a few reads per wake-up (the web server
        // sends it as fast as we read: 64 KiB a round made a 1 MiB upload
        // 16 rounds of the back's loop).
        let mut reads = 0;
        loop {
            if !self.c.has_buffered_frame() {
                match self.c.fill() {
                    Ok(Filled::Bytes) => reads += 1,
                    Ok(Filled::WouldBlock) => reads = BODY_READS,
                    Ok(Filled::Eof) => return Ok(InputEvent::Closed),
                    Err(e) => return Err(self.fail(e)),
                }
            }
            match self.process_buffered() {
                Ok(Some(event)) => return Ok(event),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
            if self.body_eof || reads >= BODY_READS {
                return Ok(InputEvent::Progress);
            }
        }
    }

    fn body(&self) -> &[u8] {
        self.body.front()
    }

    fn consume_body(&mut self, n: usize) {
        if let Err(e) = self.body.consume(n) {
            log::error!("fastcgi: cannot read back the spooled request body: {e}");
            self.failure = Some(ConnError::Io(e));
        }
    }

    fn body_finished(&self) -> bool {
        self.body_eof
    }

    fn send_head(&mut self, head: &ResponseHead) -> io::Result<()> {
        if self.aborted {
            return Ok(());
        }
        // Kept for the body's first bytes if they come before the back waits
        // again (then a short response is one FCGI_STDOUT record, written
        // with its END_REQUEST at once); else the next poll round sends it.
        head.write_cgi(&mut self.head);
        self.head_sent = true;
        Ok(())
    }

    fn send_body(&mut self, data: &[u8]) -> io::Result<()> {
        if self.aborted {
            return Ok(());
        }
        if self.head.is_empty() {
            codec::encode_stream(self.c.out.tail(), RecordType::Stdout, self.id, data);
        } else if self.head.len() + data.len() <= codec::MAX_CONTENT_LEN {
            self.head.extend_from_slice(data);
            self.encode_head();
        } else {
            self.encode_head();
            codec::encode_stream(self.c.out.tail(), RecordType::Stdout, self.id, data);
        }
        // A little output waits for the back's next poll round (POLLOUT,
        // then on_ready flushes it) or for the end of the request, so that a
        // short response and its END_REQUEST leave in one write: one wake-up
        // of the web server instead of three.
        if self.c.pending_output() >= EAGER_FLUSH {
            self.c.try_flush()
        } else {
            Ok(())
        }
    }

    fn can_splice(&self) -> bool {
        crate::sys::splice_works()
    }

    fn splice_body(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        if let Some(e) = &self.failure {
            return Err(failure_error(e));
        }
        // After an abort only the record already open is completed (its
        // answer waits behind it); the rest is not wanted.
        if self.aborted && !self.c.record_open() {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        self.encode_head();
        let moved = self.c.splice_stdout(self.id, pipe, len)?;
        self.socket_full = moved == 0;
        Ok(moved)
    }

    fn output_backlog(&self) -> usize {
        // Behind a record being spliced, queued output waits for the back
        // to complete it: only a full socket holds the back up then.
        if self.c.record_open() {
            return usize::from(self.socket_full);
        }
        self.c.pending_output() + self.head.len() + usize::from(self.socket_full)
    }

    fn head_sent(&self) -> bool {
        self.head_sent
    }
}

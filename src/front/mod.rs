//! Fronts: the downstream protocols a web server speaks to us. Each turns its
//! protocol into a [`crate::request::Request`] and an [`crate::request::Exchange`].
//!
//! Owns also what every front answers alike: a body that cannot be held
//! (the temporary directory is full) gets a 503; and the socket waits the
//! listener fronts (SCGI, AJP) share: one poll, one read, one bounded flush.
pub mod ajp;
pub mod cgi;
pub mod fastcgi;
pub mod outq;
pub mod scgi;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use crate::back::Context;
use crate::front::outq::OutQueue;
use crate::request::{self, Exchange};
use crate::sys::Conn;

/// Wait up to `timeout` for `flags` on `conn`, the signal pipe (drained) or,
/// when given, a connection waiting on `listener`. `Ok(true)`: `conn` is ready.
pub(crate) fn wait(
    conn: BorrowedFd<'_>,
    listener: Option<BorrowedFd<'_>>,
    flags: PollFlags,
    ctx: &Context<'_>,
    timeout: Duration,
) -> io::Result<bool> {
    let signals = ctx.signals.fd();
    // A slot not wanted polls the signal pipe for no events (nothing allocated).
    let mut fds = [
        PollFd::new(conn, flags),
        PollFd::new(signals, PollFlags::POLLIN),
        listener.map_or(PollFd::new(signals, PollFlags::empty()), |l| {
            PollFd::new(l, PollFlags::POLLIN)
        }),
    ];
    match poll(&mut fds, crate::sys::poll_timeout(timeout)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    if fds[1].revents().is_some_and(|r| !r.is_empty()) {
        ctx.signals.drain();
    }
    Ok(fds[0].revents().is_some_and(|r| !r.is_empty()))
}

/// One read of at most `max` bytes appended to `buf`. `Ok(Some(0))`: the
/// peer closed; `Ok(None)`: nothing there yet (would block, interrupted).
pub(crate) fn read_some(conn: &Conn, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<usize>> {
    match conn.read_append(buf, max) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Write everything `out` holds to `conn`, waiting at most `limit` in all
/// for the peer to take it.
pub(crate) fn flush_within(
    out: &mut OutQueue,
    conn: &mut Conn,
    ctx: &Context<'_>,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        out.flush_to_socket(conn)?;
        if out.pending() == 0 {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        wait(conn.as_fd(), None, PollFlags::POLLOUT, ctx, left)?;
    }
}

/// The error [`Exchange::on_ready`] returns when the front stopped the
/// request itself and logs why (a body it could not hold): the back stops
/// the application without a log line of its own, and does not pass the
/// body on as complete.
#[derive(Debug)]
pub struct StoppedByFront(pub String);

impl fmt::Display for StoppedByFront {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoppedByFront {}

impl StoppedByFront {
    pub fn error(why: impl fmt::Display) -> io::Error {
        io::Error::other(StoppedByFront(why.to_string()))
    }
}

/// Is `e` (from [`Exchange::on_ready`]) a [`StoppedByFront`]?
pub fn stopped_by_front(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<StoppedByFront>())
}

/// The request body could not be held (`e`, from [`crate::spool::Spool::push`]):
/// the back has stopped; answer 503 unless a response head went out
/// already, and say so in the log, once a minute per front.
pub fn answer_spool_failure(front: &str, ex: &mut dyn Exchange, e: &std::io::Error) {
    let what = if ex.head_sent() {
        "response cut short"
    } else {
        "answering 503"
    };
    if let Some(n) = crate::log::once_a_minute(&format!("{front}: spool")) {
        log::error!(
            "{front}: {}: cannot hold the request body: {e}; {what}{}",
            ex.request().summary(),
            crate::log::left_out(n)
        );
    }
    let _ = request::send_error(
        ex,
        503,
        "The server cannot take the request body now; try again later.",
    );
}

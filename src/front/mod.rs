//! Fronts: the downstream protocols a web server speaks to us. Each turns its
//! protocol into a [`crate::request::Request`] and an [`crate::request::Exchange`].
//!
//! Owns also what every front answers alike: a body that cannot be held
//! (the temporary directory is full) gets a 503.
pub mod ajp;
pub mod cgi;
pub mod fastcgi;
pub mod outq;
pub mod scgi;

use std::fmt;
use std::io;

use crate::request::{self, Exchange};

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

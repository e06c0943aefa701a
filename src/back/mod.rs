//! Backs: the applications we run, each behind the same [`Back`] trait.
//!
//! Owns: the choice of back from the settings, and the [`Broken`] back that
//! answers 503 while the settings cannot be used.
//! Must not: know which front a request came from.

pub mod cgi;
pub mod wsgi;

use std::time::{Duration, Instant};

use crate::config::{AppConfig, Config};
use crate::request::{self, Exchange};
use crate::sys::SignalPipe;

/// How long a request in flight may still run after a stop signal. mod_fcgid
/// sends SIGKILL about 3 s after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_millis(2500);

/// How one request ended, as far as the front is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response was sent (possibly an error response).
    Done,
    /// The web server aborted the request.
    Aborted,
    /// The web server went away; nothing more can be sent.
    FrontGone,
}

/// What a back needs from the server loop while it serves a request.
pub struct Context<'a> {
    pub signals: &'a SignalPipe,
    /// When a stop signal arrived during this request: finish by then.
    pub stop_deadline: Option<Instant>,
}

impl Context<'_> {
    /// Note a stop signal (after the signal pipe was readable).
    pub fn on_signal(&mut self) {
        self.signals.drain();
        if crate::sys::stop_requested() && self.stop_deadline.is_none() {
            self.stop_deadline = Some(Instant::now() + STOP_GRACE);
        }
    }
}

/// An application.
pub trait Back {
    /// Serve one request: read its body from `exchange`, send its response.
    fn serve(&mut self, exchange: &mut dyn Exchange, ctx: &mut Context<'_>) -> Outcome;

    /// Stop every process of the application (on exit or reload).
    fn shutdown(&mut self);
}

/// Build the back the settings ask for.
pub fn from_config(config: &Config) -> Box<dyn Back> {
    match &config.app {
        AppConfig::Cgi(cgi) => Box::new(cgi::CgiBack::new(cgi.clone(), config.limits)),
        AppConfig::Wsgi(wsgi) => Box::new(wsgi::WsgiBack::new(wsgi.clone(), config.limits)),
    }
}

/// Send an error response (if no head went out yet) and say how the request ended.
pub fn finish_with_error(exchange: &mut dyn Exchange, status: u16, detail: &str) -> Outcome {
    match request::send_error(exchange, status, detail) {
        Ok(()) => Outcome::Done,
        Err(_) => Outcome::FrontGone,
    }
}

/// Answers every request with 503 and says why in the log, at most once a
/// minute: used when the settings are missing or invalid, because exiting
/// would make mod_fcgid answer 500s and throttle spawning.
pub struct Broken {
    reason: String,
    last_logged: Option<Instant>,
}

impl Broken {
    pub fn new(reason: String) -> Broken {
        Broken {
            reason,
            last_logged: None,
        }
    }
}

impl Back for Broken {
    fn serve(&mut self, exchange: &mut dyn Exchange, _ctx: &mut Context<'_>) -> Outcome {
        if self
            .last_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            log::error!("{} (answering 503 until this is fixed)", self.reason);
            self.last_logged = Some(Instant::now());
        }
        finish_with_error(
            exchange,
            503,
            "The site's settings are invalid; the server log says why.",
        )
    }

    fn shutdown(&mut self) {}
}

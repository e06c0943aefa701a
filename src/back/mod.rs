//! Backs: the applications we run, each behind the same [`Back`] trait.
//!
//! Owns: the choice of back from the settings, and the [`Broken`] back that
//! answers 503 while the settings cannot be used.
//! Must not: know which front a request came from.

pub mod cgi;
pub mod fastcgi;
pub mod http;
pub mod scgi;
pub mod server;
pub mod shared;
pub mod stderr_lines;
pub mod wsgi;

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use crate::config::{AppConfig, Config, ServerConfig};
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

    /// Called about once a second while no request runs: look after the
    /// application between requests (replace a process that died, drain
    /// its stderr). Must not block.
    fn idle(&mut self) {}

    /// No request has come for a while after some did: drop the buffers
    /// kept for the next big body (`server` then trims the heap).
    fn release_memory(&mut self) {}

    /// Stop every process of the application (on exit or reload). `serve`
    /// may still be called afterwards (a reload whose exec failed): it must
    /// then start what it needs again.
    fn shutdown(&mut self);

    /// Has the application started (for `wsgi`: a worker became ready)?
    /// The shim keeps the settings as the last good version once it has.
    fn app_started(&mut self) -> bool {
        true
    }

    /// Where the start of a new application stands, without waiting: a
    /// reload's new version replaces the serving one once this is
    /// [`Startup::Ready`]. [`idle`](Self::idle) moves it on.
    fn startup(&mut self) -> Startup {
        Startup::Ready
    }

    /// Start stopping without waiting (a reload replaced this back): the
    /// processes are asked to end; [`stopped`](Self::stopped) says when
    /// they have. By default, [`shutdown`](Self::shutdown) at once.
    fn begin_stop(&mut self) {
        self.shutdown();
    }

    /// After [`begin_stop`](Self::begin_stop): have all its processes
    /// exited (reaped)?
    fn stopped(&mut self) -> bool {
        true
    }

    /// Before a re-exec into a new executable: make the started
    /// application survive it, and name it in the variable returned (the
    /// new image adopts it instead of starting its own). `None`: nothing to
    /// hand over (a `cgi` program runs per request).
    fn hand_over(&mut self) -> Option<(&'static str, String)> {
        None
    }

    /// The re-exec after [`hand_over`](Self::hand_over) failed: we keep
    /// the application (its fds close-on-exec again).
    fn keep_after_failed_exec(&mut self) {}
}

/// Where a new application's start stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Starting,
    /// Started (for `wsgi`: imported, its warm-up passed).
    Ready,
    /// It cannot start: why, in one line.
    Failed(String),
}

/// Build the back the settings ask for.
pub fn from_config(config: &Config) -> Box<dyn Back> {
    match &config.app {
        AppConfig::Cgi(cgi) => Box::new(cgi::CgiBack::new(cgi.clone(), config.limits)),
        AppConfig::Wsgi(wsgi) => Box::new(wsgi::WsgiBack::new(wsgi.clone(), config.limits)),
        AppConfig::Server(s) => server_back(config, s),
    }
}

/// A server program's back: relaying to the site's shared server (started
/// if none runs for this version), or running a program of its own.
fn server_back(config: &Config, s: &ServerConfig) -> Box<dyn Back> {
    if s.shared {
        match shared::Share::for_config(config, s) {
            Ok(share) => {
                return Box::new(server::ServerBack::shared(s.clone(), config.limits, share));
            }
            Err(e) => log::warn!("shared server: {e}; this process runs a server of its own"),
        }
    }
    Box::new(server::ServerBack::new(s.clone(), config.limits))
}

/// Build the back for a reload's new version: started at once beside the
/// serving one; its start failures are the reload's to report.
pub fn candidate_from_config(config: &Config) -> Box<dyn Back> {
    match &config.app {
        AppConfig::Cgi(cgi) => Box::new(cgi::CgiBack::new(cgi.clone(), config.limits)),
        AppConfig::Wsgi(wsgi) => Box::new(wsgi::WsgiBack::candidate(wsgi.clone(), config.limits)),
        AppConfig::Server(s) => server_back(config, s),
    }
}

/// Start the application once and stop it again: can the new version run?
/// (A reload asks this before it replaces a working version.) For `wsgi`
/// the worker must import the application; a `cgi` program runs per request,
/// so valid settings are all there is to check; a server program must
/// become ready.
pub fn preflight(config: &Config) -> Result<(), String> {
    match &config.app {
        AppConfig::Cgi(_) => Ok(()),
        AppConfig::Wsgi(wsgi) => wsgi::preflight(wsgi.clone(), config.limits),
        AppConfig::Server(s) => server::preflight(s.clone(), config.limits),
    }
}

/// Does this application kind need the process-group guard (see
/// `supervise::Descendants`)? CGI programs and server programs do; the WSGI
/// adapter ends its own group.
pub fn needs_group_guard(config: &Config) -> bool {
    matches!(config.app, AppConfig::Cgi(_) | AppConfig::Server(_))
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

// ---------------------------------------------------------------------------
// Waiting on the front and an application's fds at once (cgi, wsgi).

/// Which of the fds given to [`poll_round`] are ready.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ready {
    /// The front has input or room for output: call `Exchange::on_ready`.
    pub front: bool,
    /// The application's stdin takes more.
    pub stdin: bool,
    /// The application's stdout has output (or was closed).
    pub stdout: bool,
    pub stderr: bool,
    pub signal: bool,
}

impl Ready {
    /// Nothing was ready: the poll timed out.
    pub fn nothing(&self) -> bool {
        !(self.front || self.stdin || self.stdout || self.stderr || self.signal)
    }
}

/// One poll(2) over the front's interest (when `ex` is given), the
/// application's pipes that are given (stdin for writing, stdout and stderr
/// for reading) and the signal pipe. Input the front already holds makes the
/// front ready without waiting.
pub fn poll_round(
    ex: Option<&dyn Exchange>,
    [stdin, stdout, stderr]: [Option<BorrowedFd<'_>>; 3],
    signals: &SignalPipe,
    timeout: Duration,
) -> std::io::Result<Ready> {
    // One slot each: the front, stdin, stdout, stderr, the signal pipe. A
    // slot not wanted polls the signal pipe for no events (it never reports
    // an error or a hang-up: we hold its write end), so nothing is allocated.
    fn entry<'a>(want: Option<(BorrowedFd<'a>, PollFlags)>, idle: BorrowedFd<'a>) -> PollFd<'a> {
        match want {
            Some((fd, flags)) => PollFd::new(fd, flags),
            None => PollFd::new(idle, PollFlags::empty()),
        }
    }
    let idle = signals.fd();
    let mut fds = [
        entry(ex.and_then(|ex| ex.poll_interest()), idle),
        entry(stdin.map(|fd| (fd, PollFlags::POLLOUT)), idle),
        entry(stdout.map(|fd| (fd, PollFlags::POLLIN)), idle),
        entry(stderr.map(|fd| (fd, PollFlags::POLLIN)), idle),
        PollFd::new(idle, PollFlags::POLLIN),
    ];
    let input_pending = ex.is_some_and(|ex| ex.input_pending());
    let timeout = if input_pending {
        Duration::ZERO
    } else {
        timeout
    };
    match poll(&mut fds, crate::sys::poll_timeout(timeout)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    let is_ready = |slot: usize| fds[slot].revents().is_some_and(|r| !r.is_empty());
    Ok(Ready {
        front: is_ready(0) || input_pending,
        stdin: is_ready(1),
        stdout: is_ready(2),
        stderr: is_ready(3),
        signal: is_ready(4),
    })
}

//! The `wsgi` back: a WSGI application (Django, Flask, ...) in one persistent
//! Python worker, run by the adapter that ships inside the binary
//! (`wsgi_adapter.py`, standard library only).
//!
//! Owns: the shim ↔ worker protocol (frames on the worker's stdin and stdout:
//! a type byte, a 4-byte big-endian length, the payload), the start-up
//! handshake (ready, or the import error: 503), streaming the body to the
//! worker and the response back chunk by chunk without blocking the front, the
//! per-request timeout (504, fresh worker), a worker dying mid-request (502),
//! and logging the worker's stderr (wsgi.errors) line by line; direct mode
//! (lending the web server's listening socket to the worker, taking it back,
//! and what its guardian reports; see the section below).
//! Must not: spawn, restart or stop the worker itself (that is
//! `supervise::Supervisor`), or know the front's protocol.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::Signal;

use super::stderr_lines::StderrLines;
use super::{Back, Context, DirectFds, DirectWait, Outcome, Ready, Woken, finish_with_error};
use crate::config::{Limits, WsgiConfig};
use crate::request::{self, Exchange, InputEvent, ResponseHead, ScriptName};
use crate::supervise::{self, Descendants, DescribeExit, SpawnSpec, StartError, Supervisor};
use crate::sys;

/// The adapter, written to the worker's stdin at start.
const ADAPTER: &str = include_str!("wsgi_adapter.py");
/// What `python -c` runs: read LEN bytes of adapter source from fd 0, run them.
const BOOTSTRAP: &str = "import os,sys\nn=int(sys.argv[1]);b=b''\n\
while len(b)<n:\n c=os.read(0,n-len(b))\n if not c:sys.exit(1)\n b+=c\n\
exec(compile(b,'<fcgi-shim wsgi adapter>','exec'))";

/// Body bytes per frame sent to the worker.
const CHUNK: usize = 65536;
/// Response bytes queued for the web server above which we stop reading the
/// worker's output (it then blocks writing: backpressure).
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Lines of the worker's stderr quoted when it fails.
const STDERR_TAIL_LINES: usize = 5;
/// After the web server went away (or aborted the request), how long the
/// worker may take to finish the response we throw away before it is
/// replaced (a restart costs the application's imports).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Grace for the worker at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// After a worker serving directly died: how long its guardian may take to
/// answer the request in flight and report it.
const GUARDIAN_GRACE: Duration = Duration::from_secs(2);

const FRAME_HEADER: usize = 5;

pub struct WsgiBack {
    config: WsgiConfig,
    limits: Limits,
    /// "myproject.wsgi:application", for log lines.
    label: String,
    sup: Supervisor,
    /// The pid the adapter source was written to.
    greeted: Option<u32>,
    /// Frames for the worker not yet written (kept across requests: a body
    /// end marker may still be on its way).
    to_worker: Vec<u8>,
    /// Frames from the worker not yet handled.
    from_worker: Vec<u8>,
    /// What one read of the worker's stdout goes into.
    scratch: Box<[u8]>,
    stderr_lines: StderrLines,
    /// The last import failure: (log summary, Python traceback).
    import_error: Option<(String, String)>,
    /// Direct mode: our copy of the web server's listening socket, which the
    /// worker inherits (None: direct mode is off).
    listener: Option<OwnedFd>,
    /// Our copy of the reloader's inotify fd, which the worker inherits.
    _wake: Option<OwnedFd>,
    /// The current worker said it can serve the socket directly.
    direct_ok: bool,
    /// The log said so for the current worker.
    direct_announced: bool,
    /// The socket is lent to the worker: a pidfd that is readable once it exited.
    lent: Option<OwnedFd>,
    /// What the worker's guardian reported after the worker died.
    guardian: Option<GuardianReport>,
}

/// The guardian's `X` frame: the request the worker died in (or was killed
/// in, after `request_timeout`) and what the web server got instead.
struct GuardianReport {
    timeout: bool,
    /// The head had already gone out: the response was ended early.
    cut: bool,
    summary: String,
    seconds: String,
}

impl GuardianReport {
    /// "KIND\0STATUS\0SUMMARY\0SECONDS".
    fn parse(payload: &[u8]) -> GuardianReport {
        let text = String::from_utf8_lossy(payload);
        let mut fields = text.split('\0');
        let mut next = || fields.next().unwrap_or("").to_string();
        let (kind, status, summary, seconds) = (next(), next(), next(), next());
        GuardianReport {
            timeout: kind == "timeout",
            cut: status == "cut",
            summary,
            seconds,
        }
    }
}

/// What the worker sent.
enum Frame<'a> {
    Ready(&'a [u8]),
    ImportFailed(&'a [u8]),
    Head(&'a [u8]),
    Body(&'a [u8]),
    Done,
    /// Direct mode ended; the payload counts the requests served.
    Returned(&'a [u8]),
    /// From the guardian, after the worker died in a request.
    Guardian(&'a [u8]),
}

/// Start a worker for `config`, wait (up to `start_timeout`) until it has
/// imported the application, stop it. Err: why it cannot (the Python error
/// with its innermost frame, or how the worker ended).
pub fn preflight(config: WsgiConfig, limits: Limits) -> Result<(), String> {
    let deadline = Instant::now() + config.start_timeout;
    let mut back = WsgiBack::new(config, limits, None);
    let result = loop {
        if let Some((summary, _)) = &back.import_error {
            break Err(format!("cannot import {}: {summary}", back.label));
        }
        let state = back.sup.worker().map(|w| (w.ready, w.process.try_wait()));
        match state {
            Some((true, _)) => break Ok(()),
            Some((false, Some(status))) => {
                // Its last words may be the import error.
                back.idle_handshake();
                if let Some((summary, _)) = &back.import_error {
                    break Err(format!("cannot import {}: {summary}", back.label));
                }
                let stderr = back.stderr_summary();
                break Err(format!(
                    "{}: the worker {} during start-up; {stderr}",
                    back.label,
                    DescribeExit(status)
                ));
            }
            None if back.sup.failures() > 0 => {
                let why = back
                    .deployment_problems()
                    .map(|why| format!(": {why}"))
                    .unwrap_or_default();
                break Err(format!(
                    "{}: the worker could not be started{why}",
                    back.label
                ));
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            break Err(format!(
                "{}: the worker did not start within {:.1}s (start_timeout)",
                back.label,
                back.config.start_timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
        back.idle();
    };
    back.shutdown();
    result
}

/// Where a new worker's start-up stands.
enum Started {
    Pending,
    Ready,
    Failed,
}

/// How a wait ended early, or what the front did.
enum Interrupt {
    Aborted,
    FrontGone,
}

impl WsgiBack {
    /// Builds the back and starts the worker at once, so that the first
    /// request does not pay for the application's imports. With `direct`
    /// (the web server's listening socket) the worker may serve it directly.
    pub fn new(config: WsgiConfig, limits: Limits, direct: Option<DirectFds<'_>>) -> WsgiBack {
        let label = format!("{}:{}", config.module, config.attribute);
        let mut args: Vec<OsString> = vec![
            "-c".into(),
            BOOTSTRAP.into(),
            ADAPTER.len().to_string().into(),
            config.module.clone().into(),
            config.attribute.clone().into(),
            if config.debug { "1" } else { "0" }.into(),
        ];
        args.extend(
            config
                .python_path
                .iter()
                .map(|p| p.clone().into_os_string()),
        );
        let mut env = supervise::base_env();
        for (name, value) in &config.env {
            env.retain(|(n, _)| n != name.as_str());
            env.push((name.into(), value.into()));
        }
        // Direct mode: the worker inherits a copy of the listening socket
        // (numbered above stdio: under mod_fcgid ours is fd 0), and one of
        // the reloader's inotify fd: readable, it stops taking connections
        // and hands the socket back, so that the request after a `touch`
        // waits for the reload, as it does when we accept.
        let listener = direct.and_then(|d| {
            sys::dup_above_stdio(d.listener)
                .inspect_err(|e| {
                    log::warn!("wsgi: cannot lend the listening socket ({e}); not serving directly")
                })
                .ok()
        });
        let wake = direct
            .and_then(|d| d.wake)
            .filter(|_| listener.is_some())
            .and_then(|fd| sys::dup_above_stdio(fd).ok());
        if let Some(fd) = &wake {
            env.push((
                "FCGI_SHIM_WAKE_FD".into(),
                fd.as_raw_fd().to_string().into(),
            ));
        }
        if let Some(fd) = &listener {
            let script_name = match &config.script_name {
                ScriptName::Auto => "auto".to_string(),
                ScriptName::Fixed(prefix) => format!("fixed:{prefix}"),
                // Not a wsgi setting (the cgi kind's); the adapter reads
                // anything but "fixed:..." as auto.
                ScriptName::AsReceived => "received".to_string(),
            };
            for (name, value) in [
                ("FCGI_SHIM_LISTEN_FD", fd.as_raw_fd().to_string()),
                (
                    "FCGI_SHIM_REQUEST_TIMEOUT_MS",
                    config.request_timeout.as_millis().to_string(),
                ),
                ("FCGI_SHIM_SCRIPT_NAME", script_name),
            ] {
                env.push((name.into(), value.into()));
            }
        }
        let spec = SpawnSpec {
            program: config.python.clone().into(),
            args,
            env,
            workdir: Some(config.workdir.clone()),
            // The adapter ends its process group when we go (see its end_group).
            descendants: Descendants::LeaderEndsGroup,
            inherit_fds: listener
                .iter()
                .chain(&wake)
                .map(AsRawFd::as_raw_fd)
                .collect(),
        };
        let stderr_lines = StderrLines::new(format!("wsgi: {label}"), STDERR_TAIL_LINES);
        let mut back = WsgiBack {
            sup: Supervisor::new(spec, config.max_requests),
            config,
            limits,
            label,
            greeted: None,
            to_worker: Vec::new(),
            from_worker: Vec::new(),
            scratch: vec![0; CHUNK + FRAME_HEADER].into_boxed_slice(),
            stderr_lines,
            import_error: None,
            listener,
            _wake: wake,
            direct_ok: false,
            direct_announced: false,
            lent: None,
            guardian: None,
        };
        match back.sup.start() {
            Ok(_) => back.greet(),
            Err(e) => back.log_start_error(&e),
        }
        back
    }

    fn log_start_error(&self, e: &StartError) {
        match e {
            StartError::Spawn(e) => log::error!(
                "wsgi: {}: cannot start {}: {e}{}",
                self.label,
                self.sup.name(),
                self.deployment_problems()
                    .map(|why| format!("; {why}"))
                    .unwrap_or_default()
            ),
            StartError::Backoff(_) => {}
        }
    }

    /// What keeps the worker from starting or importing (an unreadable
    /// python_path directory, ...), looked at only after it failed.
    fn deployment_problems(&self) -> Option<String> {
        crate::deploy::explain_start_failure(&crate::config::AppConfig::Wsgi(self.config.clone()))
    }

    /// A new worker: forget the old one's buffers, send it the adapter.
    fn greet(&mut self) {
        let Some(w) = self.sup.worker() else { return };
        let pid = w.process.pid();
        if self.greeted == Some(pid) {
            return;
        }
        self.greeted = Some(pid);
        self.direct_ok = false;
        self.direct_announced = false;
        self.to_worker.clear();
        self.to_worker.extend_from_slice(ADAPTER.as_bytes());
        self.from_worker.clear();
        self.stderr_lines.clear();
        // A worker that cannot take its source is dying; its closed stdout
        // tells the handshake how.
        let _ = self.write_to_worker();
    }

    /// Write what we can of `to_worker` without blocking. Err = the worker
    /// closed its input (it is gone).
    fn write_to_worker(&mut self) -> io::Result<()> {
        let Some(w) = self.sup.worker() else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        let mut written = 0;
        while written < self.to_worker.len() {
            match w.pipes.stdin.write(&self.to_worker[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.to_worker.drain(..written);
                    return Err(e);
                }
            }
        }
        self.to_worker.drain(..written);
        Ok(())
    }

    fn poll_round(
        &mut self,
        ex: Option<&dyn Exchange>,
        ctx: &Context<'_>,
        want_stdout: bool,
        timeout: Duration,
    ) -> io::Result<Ready> {
        let pending_in = !self.to_worker.is_empty();
        let Some(w) = self.sup.worker() else {
            return Err(io::Error::other("no worker"));
        };
        let p = &w.pipes;
        let stdin = pending_in.then(|| p.stdin.as_fd());
        let stdout = want_stdout.then(|| p.stdout.as_fd());
        super::poll_round(
            ex,
            [stdin, stdout, Some(p.stderr.as_fd())],
            ctx.signals,
            timeout,
        )
    }

    /// Handle what a poll round found on the signal pipe and stderr.
    fn on_events(&mut self, ready: &Ready, ctx: &mut Context<'_>) {
        if ready.signal {
            ctx.on_signal();
        }
        if ready.stderr {
            self.read_stderr();
        }
    }

    /// Read from the worker's stdout into `from_worker`. Ok(false) = EOF.
    fn read_stdout(&mut self) -> io::Result<bool> {
        let Some(w) = self.sup.worker() else {
            return Ok(false);
        };
        // Into a scratch buffer kept across reads: no 64 KiB to zero each time.
        let result = loop {
            match w.pipes.stdout.read(&mut self.scratch) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(n) => {
                self.from_worker.extend_from_slice(&self.scratch[..n]);
                Ok(n > 0)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The next complete frame in `from_worker` and its total length.
    fn next_frame(&self) -> Result<Option<(Frame<'_>, usize)>, String> {
        let buf = &self.from_worker;
        let Some(header) = buf.get(..FRAME_HEADER) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let Some(payload) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
            if header[0] == b'H' && len > self.limits.max_response_head_bytes {
                return Err(format!(
                    "response header block larger than {} bytes",
                    self.limits.max_response_head_bytes
                ));
            }
            return Ok(None);
        };
        let frame = match header[0] {
            b'S' => Frame::Ready(payload),
            b'I' => Frame::ImportFailed(payload),
            b'H' => Frame::Head(payload),
            b'B' => Frame::Body(payload),
            b'D' => Frame::Done,
            b'Q' => Frame::Returned(payload),
            b'X' => Frame::Guardian(payload),
            other => return Err(format!("unknown frame type {other:#04x} from the worker")),
        };
        Ok(Some((frame, FRAME_HEADER + len)))
    }

    fn read_stderr(&mut self) {
        let mut buf = [0u8; 8192];
        loop {
            let Some(w) = self.sup.worker() else { return };
            match w.pipes.stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.stderr_lines.push(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
            }
        }
    }

    /// What the worker last wrote to stderr, after reading what is left.
    fn stderr_summary(&mut self) -> String {
        self.read_stderr();
        self.stderr_lines.flush();
        self.stderr_lines.summary()
    }

    /// How the worker ended (it closed its stdout): reaped within a moment.
    fn describe_death(&mut self) -> String {
        let Some(w) = self.sup.worker() else {
            return "is gone".into();
        };
        let pid = w.process.pid();
        match w.process.wait_for(Duration::from_millis(500)) {
            Some(status) => format!("(pid {pid}) {}", DescribeExit(status)),
            None => format!("(pid {pid}) closed its output"),
        }
    }

    // -----------------------------------------------------------------------
    // Start-up: a ready worker, or the reason there is none.

    /// Get a ready worker, waiting for its start-up (or its restart backoff)
    /// while keeping the front going. Err = the response was sent (503).
    fn ready_worker(
        &mut self,
        ex: &mut dyn Exchange,
        ctx: &mut Context<'_>,
    ) -> Result<(), Outcome> {
        let deadline = Instant::now() + self.config.start_timeout;
        // (A worker that exited since the last idle tick is found when the
        // request cannot be written to it: `run` says so and `serve` comes
        // back here. No wait4 before every request.)
        loop {
            let now = Instant::now();
            // Stopping: no point starting a worker (mod_fcgid's SIGKILL
            // follows its SIGTERM within seconds).
            if ctx.stop_deadline.is_some_and(|s| s <= now) || crate::sys::stop_requested() {
                return Err(finish_with_error(ex, 503, "The server is restarting."));
            }
            match self.sup.start() {
                Ok(w) if w.ready => return Ok(()),
                Ok(_) => {
                    self.greet();
                    return self.handshake(ex, ctx, deadline);
                }
                Err(StartError::Backoff(at)) => {
                    if self.import_error.is_some() || at > deadline {
                        return Err(self.unavailable(ex));
                    }
                    std::thread::sleep((at - now).min(Duration::from_millis(50)));
                    if let Some(Err(_)) = self.pump_front(ex) {
                        return Err(Outcome::FrontGone);
                    }
                }
                Err(e) => {
                    self.log_start_error(&e);
                    return Err(self.unavailable(ex));
                }
            }
        }
    }

    /// A worker that died while idle (OOM killer, a thread calling
    /// os._exit) is not a request's fault: say so; another is started.
    fn note_death_while_idle(&mut self) {
        if self
            .sup
            .worker()
            .is_some_and(|w| w.process.try_wait().is_some())
        {
            self.worker_ended("while idle", "; starting another");
        }
    }

    /// Between requests: move a starting worker's handshake on without
    /// waiting. (If it died during start-up, the next request says why: 503.)
    fn idle_handshake(&mut self) {
        if self.sup.worker().is_none_or(|w| w.ready) {
            return;
        }
        if self.write_to_worker().is_err() {
            self.to_worker.clear();
        }
        if let Ok(true) = self.read_stdout() {
            let _ = self.start_frame();
        }
    }

    /// Keep reading the front (the body) while we wait: Some(Err) if it went away.
    fn pump_front(&mut self, ex: &mut dyn Exchange) -> Option<Result<(), ()>> {
        if !ex.input_pending() {
            return None;
        }
        match ex.on_ready() {
            Ok(InputEvent::Progress) => Some(Ok(())),
            _ => Some(Err(())),
        }
    }

    /// Wait for the new worker's first frame: ready, or its import error.
    fn handshake(
        &mut self,
        ex: &mut dyn Exchange,
        ctx: &mut Context<'_>,
        deadline: Instant,
    ) -> Result<(), Outcome> {
        loop {
            match self.start_frame() {
                Started::Ready => return Ok(()),
                Started::Failed => return Err(self.unavailable(ex)),
                Started::Pending => {}
            }
            let now = Instant::now();
            let limit = ctx.stop_deadline.map_or(deadline, |s| s.min(deadline));
            if now >= limit {
                if ctx.stop_deadline.is_some_and(|s| s <= now) {
                    self.sup.failed();
                    return Err(finish_with_error(ex, 503, "The server is restarting."));
                }
                let stderr = self.stderr_summary();
                log::error!(
                    "wsgi: {}: the worker did not start within {:.1}s (start_timeout); killed; {stderr} (503)",
                    self.label,
                    self.config.start_timeout.as_secs_f64(),
                );
                self.sup.failed();
                return Err(self.unavailable(ex));
            }
            let ready = match self.poll_round(Some(ex), ctx, true, limit - now) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("wsgi: {}: poll failed: {e}", self.label);
                    self.sup.failed();
                    return Err(self.unavailable(ex));
                }
            };
            self.on_events(&ready, ctx);
            if let Err(i) = on_front(&ready, ex) {
                return Err(self.interrupted_before_request(i));
            }
            if ready.stdin && self.write_to_worker().is_err() {
                // It closed its input: it is dying; its stdout says how.
                self.to_worker.clear();
            }
            if ready.stdout {
                match self.read_stdout() {
                    Ok(true) => {}
                    Ok(false) | Err(_) => {
                        self.worker_ended("during start-up", " (503)");
                        return Err(self.unavailable(ex));
                    }
                }
            }
        }
    }

    /// Handle the new worker's first frame if it has arrived: ready, or its
    /// import error (logged, kept for the 503 page), or a protocol error.
    fn start_frame(&mut self) -> Started {
        match self.next_frame() {
            Ok(Some((Frame::Ready(payload), used))) => {
                // "Python 3.11.2", and "\0direct" if it can serve the socket.
                let payload = String::from_utf8_lossy(payload).into_owned();
                let mut parts = payload.split('\0');
                let version = parts.next().unwrap_or("").to_string();
                self.direct_ok = parts.any(|p| p == "direct");
                self.from_worker.drain(..used);
                let Some(w) = self.sup.worker() else {
                    return Started::Failed;
                };
                log::info!(
                    "wsgi: {} ready in {:.2}s (pid {}, {version})",
                    self.label,
                    w.started.elapsed().as_secs_f64(),
                    w.process.pid()
                );
                self.sup.mark_ready();
                self.import_error = None;
                Started::Ready
            }
            Ok(Some((Frame::ImportFailed(report), _))) => {
                let report = String::from_utf8_lossy(report).into_owned();
                let (summary, traceback) = report.split_once('\n').unwrap_or((&report, ""));
                let mut summary = summary.to_string();
                let traceback = traceback.to_string();
                // An import that fails because a path cannot be read says so.
                if let Some(why) = self.deployment_problems() {
                    summary.push_str("; ");
                    summary.push_str(&why);
                }
                self.sup.failed();
                log::error!(
                    "wsgi: cannot import {}: {summary} (503 until fixed; next try in {:.1}s at the earliest)",
                    self.label,
                    self.backoff_seconds()
                );
                self.import_error = Some((summary, traceback));
                Started::Failed
            }
            Ok(Some(_)) | Err(_) => {
                log::error!(
                    "wsgi: {}: the worker broke the protocol during start-up (503)",
                    self.label
                );
                self.sup.failed();
                Started::Failed
            }
            Ok(None) => Started::Pending,
        }
    }

    fn interrupted_before_request(&mut self, i: Interrupt) -> Outcome {
        match i {
            Interrupt::Aborted => Outcome::Aborted,
            Interrupt::FrontGone => Outcome::FrontGone,
        }
    }

    fn backoff_seconds(&self) -> f64 {
        let n = self.sup.failures().max(1);
        (supervise::RESTART_BACKOFF_FIRST.as_secs_f64() * f64::from(1u32 << (n - 1).min(16)))
            .min(supervise::RESTART_BACKOFF_MAX.as_secs_f64())
    }

    /// The 503 for "no worker": the import error when there is one (its
    /// traceback only with `debug = true`).
    fn unavailable(&self, ex: &mut dyn Exchange) -> Outcome {
        let Some((summary, traceback)) = &self.import_error else {
            return finish_with_error(
                ex,
                503,
                "The application could not be started; the server log says why.",
            );
        };
        if !self.config.debug {
            return finish_with_error(
                ex,
                503,
                "The application could not be started; the server log says why.",
            );
        }
        let page = debug_page(&self.label, summary, traceback);
        let mut head = ResponseHead::new(503);
        head.headers
            .push(("Content-Type".into(), "text/html; charset=utf-8".into()));
        head.headers.push(("Retry-After".into(), "1".into()));
        match ex
            .send_head(&head)
            .and_then(|()| ex.send_body(page.as_bytes()))
        {
            Ok(()) => Outcome::Done,
            Err(_) => Outcome::FrontGone,
        }
    }

    // -----------------------------------------------------------------------
    // One request.

    /// Serve the request with the ready worker. `None`: the worker had
    /// exited while idle and nothing of the request reached it (logged; a
    /// new one may take the request).
    fn run(&mut self, ex: &mut dyn Exchange, ctx: &mut Context<'_>) -> Option<Outcome> {
        let started = Instant::now();
        let deadline = started + self.config.request_timeout;
        // Records the front already holds (typically the end of an empty
        // body): take them now, so the end marker goes out with the request.
        while ex.input_pending() && !ex.body_finished() {
            match ex.on_ready() {
                Ok(InputEvent::Progress) => {}
                Ok(InputEvent::Aborted) => return Some(Outcome::Aborted),
                Ok(InputEvent::Closed) | Err(_) => return Some(Outcome::FrontGone),
            }
        }
        // The request's meta-variables as one frame.
        let frame_start = self.to_worker.len();
        self.to_worker.extend_from_slice(&[b'R', 0, 0, 0, 0]);
        let out = &mut self.to_worker;
        request::for_each_application_meta_variable(
            ex.request(),
            &self.config.script_name,
            |name, value| {
                if !name.contains(&0) && !value.contains(&0) {
                    out.extend_from_slice(name);
                    out.push(0);
                    out.extend_from_slice(value);
                    out.push(0);
                }
            },
        );
        let len = self.to_worker.len() - frame_start - FRAME_HEADER;
        let Ok(len32) = u32::try_from(len) else {
            return Some(finish_with_error(ex, 500, ""));
        };
        self.to_worker[frame_start + 1..frame_start + FRAME_HEADER]
            .copy_from_slice(&len32.to_be_bytes());
        // No body (most requests): its end goes in the same write, so the
        // worker reads the whole request at once.
        let mut body_done = ex.body_finished() && ex.body().is_empty();
        if body_done {
            push_frame(&mut self.to_worker, b'E', &[]);
        }
        // The request goes out before any body is taken from the front: if
        // the worker is gone (EPIPE), a new one can still have it.
        let queued = self.to_worker.len();
        if self.write_to_worker().is_err() && queued - self.to_worker.len() <= frame_start {
            self.to_worker.clear();
            self.worker_ended("while idle", "; starting another");
            return None;
        }

        let mut gone: Option<(Interrupt, Instant)> = None;
        loop {
            // Move body bytes into frames and on to the worker while the
            // pipe takes them.
            loop {
                if !body_done && self.to_worker.len() < CHUNK {
                    let n = ex.body().len().min(CHUNK);
                    if n > 0 {
                        push_frame(&mut self.to_worker, b'B', &ex.body()[..n]);
                        ex.consume_body(n);
                    } else if ex.body_finished() {
                        push_frame(&mut self.to_worker, b'E', &[]);
                        body_done = true;
                    }
                }
                if self.to_worker.is_empty() {
                    break;
                }
                if self.write_to_worker().is_err() {
                    // The worker closed its input: it is dying; stdout says how.
                    self.to_worker.clear();
                    body_done = true;
                }
                let more = !body_done && (!ex.body().is_empty() || ex.body_finished());
                if !self.to_worker.is_empty() || !more {
                    break;
                }
            }
            // Frames the worker sent.
            loop {
                let step = match self.next_frame() {
                    Ok(Some((frame, used))) => {
                        let step = if gone.is_some() {
                            match frame {
                                Frame::Done => Step::Done,
                                Frame::Head(_) | Frame::Body(_) => Step::Continue,
                                _ => Step::Broken("unexpected frame during a request".into()),
                            }
                        } else {
                            forward(frame, ex, self.limits.max_response_head_bytes)
                        };
                        self.from_worker.drain(..used);
                        step
                    }
                    Ok(None) => break,
                    Err(e) => Step::Broken(e),
                };
                match step {
                    Step::Continue => {}
                    Step::Done => {
                        if !body_done {
                            // The application did not read the whole body: end
                            // it for the worker; the front drains the rest.
                            push_frame(&mut self.to_worker, b'E', &[]);
                            let n = ex.body().len();
                            ex.consume_body(n);
                            let _ = self.write_to_worker();
                        }
                        self.sup.request_done();
                        self.greet();
                        return Some(match gone {
                            Some((Interrupt::Aborted, _)) => Outcome::Aborted,
                            Some((Interrupt::FrontGone, _)) => Outcome::FrontGone,
                            None => Outcome::Done,
                        });
                    }
                    Step::FrontGone => {
                        log::warn!(
                            "wsgi: {}: {}: the web server stopped reading the response",
                            self.label,
                            ex.request().summary()
                        );
                        gone = Some((Interrupt::FrontGone, Instant::now()));
                    }
                    Step::Broken(why) => {
                        log::error!(
                            "wsgi: {}: {}: {why}; worker replaced (502)",
                            self.label,
                            ex.request().summary()
                        );
                        self.sup.replace();
                        self.greet();
                        return Some(finish_with_error(ex, 502, ""));
                    }
                }
            }

            let now = Instant::now();
            let stopping = ctx.stop_deadline.is_some_and(|s| s <= deadline);
            let mut limit = ctx.stop_deadline.map_or(deadline, |s| s.min(deadline));
            if let Some((_, since)) = &gone {
                limit = limit.min(*since + DRAIN_LIMIT);
            }
            if now >= limit {
                return Some(self.give_up(ex, stopping, gone.is_some(), started));
            }
            let want_stdout = gone.is_some() || ex.output_backlog() < OUTPUT_HIGH_WATER;
            let front = if gone.is_some() { None } else { Some(&*ex) };
            let ready = match self.poll_round(front, ctx, want_stdout, limit - now) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("wsgi: {}: poll failed: {e}", self.label);
                    self.sup.replace();
                    self.greet();
                    return Some(finish_with_error(ex, 502, ""));
                }
            };
            self.on_events(&ready, ctx);
            let front = if gone.is_some() {
                Ok(())
            } else {
                on_front(&ready, ex)
            };
            if let Err(i) = front {
                log::info!(
                    "wsgi: {}: {}: {}; letting the application finish",
                    self.label,
                    ex.request().summary(),
                    match i {
                        Interrupt::Aborted => "request aborted by the web server",
                        Interrupt::FrontGone => "the web server closed the connection",
                    }
                );
                gone = Some((i, Instant::now()));
                if !body_done {
                    push_frame(&mut self.to_worker, b'E', &[]);
                    body_done = true;
                }
            }
            if ready.stdout {
                match self.read_stdout() {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return Some(self.died(ex, gone.is_some())),
                }
            }
        }
    }

    /// The worker ended (it closed its output): log how, its last stderr
    /// lines between `during` and `after`, and count a failure (backoff).
    fn worker_ended(&mut self, during: &str, after: &str) {
        let how = self.describe_death();
        let stderr = self.stderr_summary();
        log::error!(
            "wsgi: {}: the worker {how} {during}; {stderr}{after}",
            self.label
        );
        self.sup.failed();
    }

    /// The worker closed its output in the middle of a request.
    fn died(&mut self, ex: &mut dyn Exchange, gone: bool) -> Outcome {
        let status = if ex.head_sent() {
            "response cut short"
        } else {
            "502"
        };
        let during = format!("during {}", ex.request().summary());
        self.worker_ended(&during, &format!(" ({status}); restarting it"));
        if gone {
            return Outcome::FrontGone;
        }
        finish_with_error(ex, 502, "")
    }

    /// The request timeout (504) or the stop grace (503) ran out, or the
    /// worker did not finish a response nobody reads.
    fn give_up(
        &mut self,
        ex: &mut dyn Exchange,
        stopping: bool,
        gone: bool,
        started: Instant,
    ) -> Outcome {
        if stopping {
            log::warn!(
                "wsgi: {}: shutting down; request still running, worker killed (503)",
                self.label
            );
            self.sup.failed();
            return finish_with_error(ex, 503, "The server is restarting.");
        }
        self.sup.replace();
        self.greet();
        if gone {
            log::warn!(
                "wsgi: {}: the application did not finish an abandoned request; worker replaced",
                self.label
            );
            return Outcome::FrontGone;
        }
        log::error!(
            "wsgi: {}: {} timed out after {:.1}s (request_timeout); worker replaced (504)",
            self.label,
            ex.request().summary(),
            started.elapsed().as_secs_f64()
        );
        finish_with_error(ex, 504, "")
    }
}

/// Read what the front has when poll said so.
fn on_front(ready: &Ready, ex: &mut dyn Exchange) -> Result<(), Interrupt> {
    if !ready.front {
        return Ok(());
    }
    match ex.on_ready() {
        Ok(InputEvent::Progress) => Ok(()),
        Ok(InputEvent::Aborted) => Err(Interrupt::Aborted),
        Ok(InputEvent::Closed) | Err(_) => Err(Interrupt::FrontGone),
    }
}

/// What one frame from the worker means for the request.
enum Step {
    Continue,
    Done,
    FrontGone,
    Broken(String),
}

/// Pass one frame of the response to the front.
fn forward(frame: Frame<'_>, ex: &mut dyn Exchange, max_head: usize) -> Step {
    let sent = match frame {
        Frame::Head(raw) => match parse_head(raw, max_head) {
            Ok(head) => ex.send_head(&head),
            Err(e) => return Step::Broken(e),
        },
        Frame::Body(data) => ex.send_body(data),
        Frame::Done => return Step::Done,
        Frame::Ready(_) | Frame::ImportFailed(_) | Frame::Returned(_) | Frame::Guardian(_) => {
            return Step::Broken("unexpected frame during a request".into());
        }
    };
    match sent {
        Ok(()) => Step::Continue,
        Err(_) => Step::FrontGone,
    }
}

fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    // Payloads are at most CHUNK bytes.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// "200 OK\0Name\0value\0..." → a response head.
fn parse_head(raw: &[u8], max: usize) -> Result<ResponseHead, String> {
    if raw.len() > max {
        return Err(format!("response header block larger than {max} bytes"));
    }
    let text = String::from_utf8_lossy(raw);
    let mut fields = text.split('\0');
    let status_line = fields.next().unwrap_or("");
    let (code, reason) = status_line.split_once(' ').unwrap_or((status_line, ""));
    let status = match code.parse::<u16>() {
        Ok(c) if code.len() == 3 && c >= 100 => c,
        _ => return Err(format!("malformed status {status_line:?}")),
    };
    let mut head = ResponseHead::new(status);
    if !reason.is_empty() {
        head.reason = reason.to_string();
    }
    let mut rest: Vec<&str> = fields.collect();
    if rest.last() == Some(&"") {
        rest.pop();
    }
    if !rest.len().is_multiple_of(2) {
        return Err("malformed header list".into());
    }
    for pair in rest.chunks(2) {
        head.headers
            .push((pair[0].to_string(), pair[1].to_string()));
    }
    Ok(head)
}

/// The page shown with `debug = true` when the application cannot start
/// (Passenger's friendly error page is the model). Never shown by default.
fn debug_page(label: &str, summary: &str, traceback: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>The application could not start</title></head>\n\
         <body style=\"font-family: sans-serif; max-width: 60em; margin: 2em auto\">\n\
         <h1>The application could not start</h1>\n\
         <p>fcgi-shim could not load <code>{}</code>:</p>\n<p><strong>{}</strong></p>\n\
         <pre style=\"background: #f4f4f4; padding: 1em; overflow: auto\">{}</pre>\n\
         <p>Fix the error and reload the page: the worker is started again.\n\
         This page is shown because the settings say <code>debug = true</code>; \
         turn that off in production.</p>\n</body></html>\n",
        escape_html(label),
        escape_html(summary),
        escape_html(traceback)
    )
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

// ---------------------------------------------------------------------------
// Direct mode: the worker serves the listening socket itself.
//
// Between requests, a ready worker that said it can (its `S` frame ends in
// "direct") is lent the socket with an `L` frame: it accepts and answers the
// web server's FastCGI connections on its own, one at a time, and the shim
// only watches. The worker's guardian (a process the adapter clones before
// importing the application, sharing the worker's file descriptors) keeps the
// connection in flight open if the worker dies: it answers 502 (or 504 after
// `request_timeout`, killing the worker), then sends us an `X` frame and
// exits. SIGUSR1 asks the worker to finish its request and hand the socket
// back (`Q`, with the number of requests served).

impl WsgiBack {
    fn can_lend(&mut self) -> bool {
        self.listener.is_some()
            && self.direct_ok
            && self.to_worker.is_empty()
            && self.from_worker.is_empty()
            && self.sup.worker().is_some_and(|w| w.ready)
    }

    /// Send the worker `L`: serve the socket (at most the requests it has
    /// left before `max_requests`). False: not lent.
    fn lend(&mut self) -> bool {
        let left = self.sup.requests_left();
        let Some(w) = self.sup.worker() else {
            return false;
        };
        if left == Some(0) {
            return false;
        }
        let pid = w.process.pid();
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!(
                    "wsgi: {}: cannot watch the worker with a pidfd ({e}); not serving directly",
                    self.label
                );
                self.listener = None;
                return false;
            }
        };
        push_frame(
            &mut self.to_worker,
            b'L',
            left.unwrap_or(0).to_string().as_bytes(),
        );
        if self.write_to_worker().is_err() || !self.to_worker.is_empty() {
            // Gone: the next request finds out how.
            self.to_worker.clear();
            return false;
        }
        if !self.direct_announced {
            self.direct_announced = true;
            log::info!(
                "wsgi: {}: the worker (pid {}) is serving directly: it accepts the web server's connections itself",
                self.label,
                pid
            );
        }
        self.lent = Some(pidfd);
        true
    }

    /// One wait while the socket is lent: the worker's frames and stderr, its
    /// exit, and what the caller waits for.
    fn wait_lent(
        &mut self,
        signals: Option<BorrowedFd<'_>>,
        wake: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Woken {
        let (Some(pidfd), Some(w)) = (&self.lent, self.sup.worker()) else {
            self.lent = None;
            return Woken::default();
        };
        let idle = pidfd.as_fd();
        let mut fds = [
            PollFd::new(w.pipes.stdout.as_fd(), PollFlags::POLLIN),
            PollFd::new(w.pipes.stderr.as_fd(), PollFlags::POLLIN),
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.unwrap_or(idle), PollFlags::POLLIN),
            PollFd::new(wake.unwrap_or(idle), PollFlags::POLLIN),
        ];
        match poll(&mut fds, sys::poll_timeout(timeout)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => log::error!("wsgi: {}: poll failed: {e}", self.label),
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (stdout, stderr, exited) = (ready(0), ready(1), ready(2));
        let woken = Woken {
            signal: signals.is_some() && ready(3),
            wake: wake.is_some() && ready(4),
        };
        if stderr {
            self.read_stderr();
        }
        let open = !stdout || matches!(self.read_stdout(), Ok(true));
        self.lent_frames();
        if exited || !open {
            self.lent_worker_died();
        }
        woken
    }

    /// Handle the frames a lent worker (or its guardian) sent.
    fn lent_frames(&mut self) {
        loop {
            let (returned, used) = match self.next_frame() {
                Ok(None) => return,
                // "COUNT\0WHY": asked, limit, changed, accept.
                Ok(Some((Frame::Returned(report), used))) => {
                    let report = String::from_utf8_lossy(report);
                    let (count, why) = report.split_once('\0').unwrap_or((&report, ""));
                    ((count.parse::<u64>().unwrap_or(0), why == "accept"), used)
                }
                Ok(Some((Frame::Guardian(report), used))) => {
                    self.guardian = Some(GuardianReport::parse(report));
                    self.from_worker.drain(..used);
                    continue;
                }
                Ok(Some(_)) | Err(_) => {
                    log::error!(
                        "wsgi: {}: the worker broke the protocol while serving directly; replaced",
                        self.label
                    );
                    self.from_worker.clear();
                    self.lent = None;
                    self.sup.replace();
                    self.greet();
                    return;
                }
            };
            self.from_worker.drain(..used);
            self.lent = None;
            let (served, accept_failed) = returned;
            if served > 0 {
                self.sup.requests_done(served);
                self.greet();
            }
            if accept_failed {
                // Its stderr says why: do not lend this worker the socket again.
                self.direct_ok = false;
            }
        }
    }

    /// The lent worker exited: wait for its guardian's report (the guardian
    /// holds the worker's pipes until it has answered the web server), then
    /// log how it ended and replace it.
    fn lent_worker_died(&mut self) {
        self.lent = None;
        let deadline = Instant::now() + GUARDIAN_GRACE;
        loop {
            let now = Instant::now();
            let Some(w) = self.sup.worker() else { break };
            if now >= deadline {
                break;
            }
            let mut fds = [PollFd::new(w.pipes.stdout.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, sys::poll_timeout(deadline - now));
            let open = matches!(self.read_stdout(), Ok(true));
            self.lent_frames();
            if !open {
                break;
            }
        }
        self.from_worker.clear();
        match self.guardian.take() {
            Some(report) if report.timeout => {
                self.read_stderr();
                log::error!(
                    "wsgi: {}: {} timed out after {}s (request_timeout); worker replaced ({})",
                    self.label,
                    report.summary,
                    report.seconds,
                    if report.cut {
                        "response cut short"
                    } else {
                        "504"
                    }
                );
                self.sup.replace();
                self.greet();
            }
            Some(report) => {
                let status = if report.cut {
                    "response cut short"
                } else {
                    "502"
                };
                self.worker_ended(
                    &format!("during {}", report.summary),
                    &format!(" ({status}); restarting it"),
                );
            }
            None => self.worker_ended("while idle", "; starting another"),
        }
    }
}

impl Back for WsgiBack {
    fn serve_directly(&mut self, wait: &DirectWait<'_>) -> Option<Woken> {
        if self.lent.is_none() && !(self.can_lend() && self.lend()) {
            return None;
        }
        Some(self.wait_lent(Some(wait.signals.fd()), wait.wake, wait.timeout))
    }

    /// SIGUSR1: the worker finishes its request and hands the socket back.
    fn take_back(&mut self) {
        let Some(pid) = self
            .lent
            .as_ref()
            .and(self.sup.worker())
            .map(|w| w.process.pid())
        else {
            self.lent = None;
            return;
        };
        sys::signal_process(pid, Signal::SIGUSR1);
        let limit = if sys::stop_requested() {
            super::STOP_GRACE
        } else {
            self.config.request_timeout + Duration::from_secs(1)
        };
        let deadline = Instant::now() + limit;
        while self.lent.is_some() {
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    "wsgi: {}: the worker did not hand the listening socket back within {:.1}s; replaced",
                    self.label,
                    limit.as_secs_f64()
                );
                self.lent = None;
                self.sup.replace();
                self.greet();
                return;
            }
            self.wait_lent(None, None, deadline - now);
        }
    }

    fn serve(&mut self, exchange: &mut dyn Exchange, ctx: &mut Context<'_>) -> Outcome {
        self.take_back();
        // Twice at most: the first worker may turn out to have exited.
        for _ in 0..2 {
            if let Err(outcome) = self.ready_worker(exchange, ctx) {
                return outcome;
            }
            if let Some(outcome) = self.run(exchange, ctx) {
                return outcome;
            }
        }
        finish_with_error(
            exchange,
            503,
            "The application could not be started; the server log says why.",
        )
    }

    /// Between requests: log what the worker wrote to stderr, and replace a
    /// worker that crashed as soon as the backoff allows, so that the next
    /// request does not pay for the imports. (After an import error the next
    /// try waits for a request: no Python start every 10 s on an idle site.)
    fn idle(&mut self) {
        if self.lent.is_some() {
            // `serve_directly` looks after a lent worker.
            return;
        }
        self.read_stderr();
        // A worker starting up: its handshake, as far as it has come (an
        // import error is read before the death that follows it is noticed).
        self.idle_handshake();
        self.note_death_while_idle();
        if self.sup.worker().is_none()
            && self.import_error.is_none()
            && !crate::sys::stop_requested()
        {
            match self.sup.start() {
                Ok(_) => {
                    self.greet();
                    self.idle_handshake();
                }
                Err(StartError::Backoff(_)) => {}
                Err(e) => self.log_start_error(&e),
            }
        }
    }

    fn shutdown(&mut self) {
        self.take_back();
        self.sup.stop(STOP_GRACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(b"404 Not Found\0Content-Type\0text/plain\0X-A\0b\0", 1024).unwrap();
        assert_eq!((h.status, h.reason.as_str()), (404, "Not Found"));
        assert_eq!(
            h.headers,
            vec![
                ("Content-Type".into(), "text/plain".into()),
                ("X-A".into(), "b".into())
            ]
        );
        assert!(parse_head(b"20 OK\0", 1024).is_err());
        assert!(parse_head(b"200 OK\0A\0", 1024).is_err());
        assert!(parse_head(b"200 OK\0A\0b\0", 4).is_err());
        assert_eq!(
            parse_head(b"204 No Content\0", 1024).unwrap().headers,
            vec![]
        );
    }

    #[test]
    fn guardian_reports() {
        let r = GuardianReport::parse(b"crash\x00502\x00GET /crash\x000.2");
        assert!(!r.timeout && !r.cut);
        assert_eq!(
            (r.summary.as_str(), r.seconds.as_str()),
            ("GET /crash", "0.2")
        );
        let r = GuardianReport::parse(b"timeout\x00cut\x00POST /x?a=b\x0031.0");
        assert!(r.timeout && r.cut);
        assert_eq!(r.summary, "POST /x?a=b");
        // Whatever arrives, something to log.
        let r = GuardianReport::parse(b"");
        assert!(!r.timeout && r.summary.is_empty());
    }

    #[test]
    fn debug_page_escapes() {
        let page = debug_page("a:b", "E: <x>", "Traceback & <y>");
        assert!(page.contains("E: &lt;x&gt;") && page.contains("Traceback &amp; &lt;y&gt;"));
    }
}

//! The `wsgi` back: a WSGI application (Django, Flask, ...) in one persistent
//! Python worker, run by the adapter that ships inside the binary
//! (`wsgi_adapter.py`, standard library only).
//!
//! Owns: the shim ↔ worker protocol (frames on the worker's stdin and stdout:
//! a type byte, a 4-byte big-endian length, the payload), the start-up
//! handshake (ready, or the import error: 503; then the `warmup` GETs the
//! shim makes up itself, a 5xx failing the start), retrying a worker that
//! could not be spawned (a missing interpreter) while idle, streaming the body to the
//! worker and the response back chunk by chunk without blocking the front, the
//! per-request timeout (504, fresh worker), a worker dying mid-request (502),
//! and logging the worker's stderr (wsgi.errors) line by line; a reload's
//! candidate (its start moved on without waiting, [`Back::startup`]) and
//! handing a ready worker over across a re-exec (`FCGI_SHIM_WSGI_WORKER`:
//! its pid and pipe fds) and adopting it in the new image. Every request
//! passes the front: the worker speaks only these frames, never FastCGI.
//! Must not: spawn, restart or stop the worker itself (that is
//! `supervise::Supervisor`), or know the front's protocol.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use super::stderr_lines::StderrLines;
use super::{Back, Context, Outcome, Ready, Startup, finish_with_error};
use crate::config::{Limits, WsgiConfig};
use crate::request::{self, Exchange, HeadError, InputEvent, ResponseHead, ScriptName};
use crate::supervise::{self, Descendants, DescribeExit, SpawnSpec, StartError, Supervisor};

/// The adapter, written to the worker's stdin at start.
const ADAPTER: &str = include_str!("wsgi_adapter.py");
/// What `python -c` runs: read LEN bytes of adapter source from fd 0, run them.
const BOOTSTRAP: &str = "import os,sys\nn=int(sys.argv[1]);b=b''\n\
while len(b)<n:\n c=os.read(0,n-len(b))\n if not c:sys.exit(1)\n b+=c\n\
exec(compile(b,'<fcgi-shim wsgi adapter>','exec'))";

/// Body bytes per frame sent to the worker (at most).
const CHUNK: usize = 256 * 1024;
/// Bytes asked of one read of the worker's stdout.
const READ_MAX: usize = 256 * 1024;
/// The pipe buffer asked for on the worker's stdin and stdout while a big
/// body crosses (the default 64 KiB makes a 1 MiB body 16 round trips
/// between the two processes); back to the default after the request, since
/// the kernel counts every pipe's size against its user's quota
/// (`pipe-user-pages-soft`, 64 MiB: over it, the user's new pipes get 8 KiB).
const BIG_PIPE_SIZE: i32 = 1 << 20;
/// Linux's default pipe size, what the pipes are given back after a big body.
const PIPE_SIZE: i32 = 64 * 1024;
/// Buffers grown past this (an application's single huge chunk) are shrunk
/// to it after the request. Not less: a big body's usual working set
/// (256 KiB frames and reads, twice) is kept, since allocating and faulting it
/// in again for every 1 MiB POST cost about a tenth of its speed.
const KEPT_BUFFER: usize = 2 * CHUNK + 64 * 1024;
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

const FRAME_HEADER: usize = 5;
/// Longest wait between two checks of the worker's pid during a request.
const DEATH_CHECK: Duration = Duration::from_millis(250);

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
    /// Where the frames not yet handled start in `from_worker` (what is
    /// before was handled: moved out before the next read, not per frame).
    from_worker_at: usize,
    /// Payload bytes of a body frame passed on in part: `from_worker`
    /// starts with its rest (no header), this long.
    body_left: usize,
    /// The request's front can splice (FastCGI): the rest of a big body
    /// frame goes from the worker's pipe to the web server in the kernel.
    front_splices: bool,
    /// Part of the current body frame went by splice: the rest must too
    /// (the front has a record open for it).
    splicing_frame: bool,
    /// The worker's pipes are at BIG_PIPE_SIZE (a big body is crossing).
    pipes_grown: bool,
    stderr_lines: StderrLines,
    /// Why the last worker could not start, until one is ready.
    start_failure: Option<StartFailure>,
    /// The new worker imported the application and is answering the
    /// warm-up requests (`warmup`); it is not ready until they passed.
    warming: Option<Warming>,
    /// How the last worker ended before it was ready, for [`Back::startup`].
    died_starting: Option<String>,
    /// A reload's new version (or `check --start-app`): its start failures
    /// are logged by the reload that refuses it (debug level here), not as
    /// 503s of a site that keeps serving its previous version.
    candidate: bool,
}

/// Why no worker is ready.
enum StartFailure {
    /// The interpreter could not be spawned (missing, not executable): tried
    /// again between requests as the backoff allows, so that an interpreter
    /// or virtualenv that appears is picked up without a touch; a request
    /// meanwhile gets the 503 at once.
    Spawn,
    /// The import failed: (log summary, Python traceback).
    Import(String, String),
    /// A warm-up request got a 5xx, a broken answer or none: (log summary,
    /// the first lines of the response).
    Warmup(String, String),
}

impl StartFailure {
    /// Is another worker started between requests? Not after the
    /// application failed: no Python start every 10 s on an idle site (the
    /// next request tries again once the backoff allows).
    fn retried_while_idle(&self) -> bool {
        matches!(self, StartFailure::Spawn)
    }
}

/// A worker's warm-up in progress.
struct Warming {
    /// Index in `config.warmup` of the request being answered.
    at: usize,
    /// "Python 3.11.2", for the ready line.
    version: String,
    /// The answer's status line so far.
    status: Option<(u16, String)>,
    /// The answer's first bytes (quoted if it fails).
    body: Vec<u8>,
}

/// Bytes of a failed warm-up answer kept for the log line.
const WARMUP_QUOTE_BYTES: usize = 2048;
/// The header that marks a warm-up request (`HTTP_X_FCGI_SHIM_WARMUP=1`).
pub const WARMUP_HEADER: &str = "HTTP_X_FCGI_SHIM_WARMUP";

/// What the worker sent.
enum Frame<'a> {
    Ready(&'a [u8]),
    ImportFailed(&'a [u8]),
    Head(&'a [u8]),
    Body(&'a [u8]),
    Done,
}

/// Start a worker for `config`, wait (up to `start_timeout`) until it has
/// imported the application, stop it. Err: why it cannot (the Python error
/// with its innermost frame, or how the worker ended).
pub fn preflight(config: WsgiConfig, limits: Limits) -> Result<(), String> {
    let deadline = Instant::now() + config.start_timeout;
    let mut back = WsgiBack::candidate(config, limits);
    let result = loop {
        match back.startup() {
            Startup::Ready => break Ok(()),
            Startup::Failed(why) => break Err(why),
            Startup::Starting if Instant::now() >= deadline => break Err(back.start_timed_out()),
            Startup::Starting => {}
        }
        std::thread::sleep(Duration::from_millis(10));
        back.idle();
    };
    back.shutdown();
    result
}

/// Names the ready worker an image hands over across its re-exec:
/// `PID:STDIN:STDOUT:STDERR:ADAPTER` (the fds of our ends of its pipes, the
/// FNV-1a hash of the adapter it runs, in hex).
pub const HANDOVER_ENV: &str = "FCGI_SHIM_WSGI_WORKER";

/// The worker named in [`HANDOVER_ENV`] (the variable is removed), if it
/// runs the adapter this image has and is still alive; otherwise it is
/// ended (a new worker is started as usual: one more import).
fn take_handed_worker() -> Option<supervise::Worker> {
    let value = std::env::var(HANDOVER_ENV).ok()?;
    crate::sys::forget_env(HANDOVER_ENV);
    let fields: Vec<&str> = value.split(':').collect();
    let [pid, stdin, stdout, stderr, adapter] = fields[..] else {
        log::warn!("wsgi: {HANDOVER_ENV}={value:?} is not a handed-over worker; ignored");
        return None;
    };
    let pid: u32 = pid.parse().ok()?;
    let fds: Vec<i32> = [stdin, stdout, stderr]
        .iter()
        .filter_map(|fd| fd.parse().ok())
        .collect();
    let pipes = match fds[..] {
        [a, b, c] => (|| {
            Ok::<_, io::Error>(supervise::Stdio3 {
                stdin: Some(crate::sys::adopt_handed_fd(a)?.into()),
                stdout: crate::sys::adopt_handed_fd(b)?.into(),
                stderr: crate::sys::adopt_handed_fd(c)?.into(),
            })
        })(),
        _ => Err(io::Error::other("not three fds")),
    };
    let pipes = match pipes {
        Ok(p) => p,
        Err(e) => {
            log::warn!(
                "wsgi: the worker handed over across the re-exec is unusable ({e}); ending it"
            );
            crate::sys::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            crate::sys::reap(pid, true);
            return None;
        }
    };
    let (mut process, pipes) = supervise::Process::adopt(pid, pipes);
    if adapter != adapter_hash() {
        log::info!(
            "wsgi: the worker handed over across the re-exec runs another version of the \
             adapter; starting a new one"
        );
        process.kill();
        return None;
    }
    if process.try_wait().is_some() {
        return None;
    }
    for fd in pipes.fds() {
        if crate::sys::set_nonblocking(fd).is_err() {
            process.kill();
            return None;
        }
    }
    Some(supervise::Worker {
        process,
        pipes,
        ready: true,
        started: Instant::now(),
        served: 0,
    })
}

/// A handed-over worker that no `wsgi` back took (the new image's settings
/// name another kind): ended, so that nothing outlives its use.
pub fn end_unclaimed_handover() {
    if std::env::var_os(HANDOVER_ENV).is_none() {
        return;
    }
    if let Some(mut w) = take_handed_worker() {
        w.process.kill();
    }
}

fn adapter_hash() -> String {
    format!("{:016x}", crate::last_good::fnv1a(ADAPTER.as_bytes()))
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
    /// The front stopped the request and logs why (a body it could not
    /// hold): the worker is replaced at once.
    StoppedByFront,
}

impl Interrupt {
    /// How the request ended for the front.
    fn outcome(&self) -> Outcome {
        match self {
            Interrupt::Aborted => Outcome::Aborted,
            Interrupt::FrontGone | Interrupt::StoppedByFront => Outcome::FrontGone,
        }
    }
}

impl WsgiBack {
    /// Builds the back and starts the worker at once, so that the first
    /// request does not pay for the application's imports.
    pub fn new(config: WsgiConfig, limits: Limits) -> WsgiBack {
        WsgiBack::start(config, limits, false)
    }

    /// A reload's new version: started at once beside the serving one,
    /// which it replaces when [`Back::startup`] says it is ready.
    pub fn candidate(config: WsgiConfig, limits: Limits) -> WsgiBack {
        WsgiBack::start(config, limits, true)
    }

    fn start(config: WsgiConfig, limits: Limits, candidate: bool) -> WsgiBack {
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
        let spec = SpawnSpec {
            program: config.python.clone().into(),
            args,
            env,
            workdir: Some(config.workdir.clone()),
            // The adapter ends its process group when we go (see its end_group).
            descendants: Descendants::LeaderEndsGroup,
            inherit_fds: Vec::new(),
            stdin_socket: None,
        };
        let stderr_lines = StderrLines::new(format!("wsgi: {label}"), STDERR_TAIL_LINES);
        // The worker our image before a re-exec started and validated, if
        // it handed one over (never to a candidate: `check`, a reload).
        let handed = if candidate {
            None
        } else {
            take_handed_worker()
        };
        let greeted = handed.as_ref().map(|w| w.process.pid());
        let sup = match handed {
            Some(worker) => {
                log::info!(
                    "wsgi: {label}: serving with the worker started and validated before the \
                     re-exec (pid {})",
                    worker.process.pid()
                );
                Supervisor::with_worker(spec, config.max_requests, worker)
            }
            None => Supervisor::new(spec, config.max_requests),
        };
        let mut back = WsgiBack {
            sup,
            config,
            limits,
            label,
            greeted,
            to_worker: Vec::new(),
            from_worker: Vec::new(),
            from_worker_at: 0,
            body_left: 0,
            front_splices: false,
            splicing_frame: false,
            pipes_grown: false,
            stderr_lines,
            start_failure: None,
            warming: None,
            died_starting: None,
            candidate,
        };
        match back.sup.start() {
            Ok(_) => back.greet(),
            Err(e) => back.start_failed(&e),
        }
        back
    }

    /// Where the start of the first worker stands, without waiting: ready
    /// (imported, warm-up passed), still starting, or why it failed (the
    /// Python error with its innermost frame, a failed warm-up, how the
    /// worker ended, or why it could not be spawned). Call
    /// [`Back::idle`] between two looks to move it on.
    fn start_state(&mut self) -> Startup {
        if let Some(why) = self.failure_text() {
            return Startup::Failed(why);
        }
        let state = self.sup.worker().map(|w| (w.ready, w.process.try_wait()));
        match state {
            Some((true, _)) => Startup::Ready,
            Some((false, Some(status))) => {
                // Its last words may be the import error.
                self.idle_handshake();
                if let Some(why) = self.failure_text() {
                    return Startup::Failed(why);
                }
                let stderr = self.stderr_summary();
                Startup::Failed(format!(
                    "{}: the worker {} during start-up; {stderr}",
                    self.label,
                    DescribeExit(status)
                ))
            }
            _ if self.sup.failures() > 0 => Startup::Failed(match self.died_starting.take() {
                Some(death) => death,
                None => {
                    let why = self
                        .deployment_problems()
                        .map(|why| format!(": {why}"))
                        .unwrap_or_default();
                    format!("{}: the worker could not be started{why}", self.label)
                }
            }),
            _ => Startup::Starting,
        }
    }

    /// Why a start that is still going after `start_timeout` failed.
    pub fn start_timed_out(&self) -> String {
        format!(
            "{}: the worker did not start within {:.1}s (start_timeout){}",
            self.label,
            self.config.start_timeout.as_secs_f64(),
            self.warming_note()
        )
    }

    /// How a start failure is logged: an error for the serving back, debug
    /// for a candidate (the reload that refuses it says why, once).
    fn start_level(&self) -> log::Level {
        if self.candidate {
            log::Level::Debug
        } else {
            log::Level::Error
        }
    }

    /// A failed start, for `check --start-app`: the import error or the
    /// failed warm-up in one line.
    fn failure_text(&self) -> Option<String> {
        match self.start_failure.as_ref()? {
            StartFailure::Spawn => None,
            StartFailure::Import(summary, _) => {
                Some(format!("cannot import {}: {summary}", self.label))
            }
            StartFailure::Warmup(summary, _) => Some(format!("{}: {summary}", self.label)),
        }
    }

    /// The worker could not be had: say why (rate-limited), and remember a
    /// spawn failure (no request waits for its backoff).
    fn start_failed(&mut self, e: &StartError) {
        if let StartError::Spawn(_) = e {
            self.start_failure = Some(StartFailure::Spawn);
        }
        self.log_start_error(e);
    }

    fn log_start_error(&self, e: &StartError) {
        match e {
            // Once a minute per cause: out of file descriptors, every
            // request and idle tick would say it again.
            StartError::Spawn(e) => {
                if let Some(n) = crate::log::once_a_minute(&format!("wsgi: spawn: {e}")) {
                    log::log!(
                        self.start_level(),
                        "wsgi: {}: cannot start {}: {e}{}{}",
                        self.label,
                        self.sup.name(),
                        self.deployment_problems()
                            .map(|why| format!("; {why}"))
                            .unwrap_or_default(),
                        crate::log::left_out(n)
                    );
                }
            }
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
        self.warming = None;
        if let Some(StartFailure::Spawn) = self.start_failure {
            self.start_failure = None;
        }
        self.pipes_grown = false;
        self.to_worker.clear();
        self.to_worker.extend_from_slice(ADAPTER.as_bytes());
        self.from_worker.clear();
        self.from_worker_at = 0;
        self.body_left = 0;
        self.splicing_frame = false;
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
            let Some(stdin) = &mut w.pipes.stdin else {
                return Err(io::ErrorKind::BrokenPipe.into());
            };
            match stdin.write(&self.to_worker[written..]) {
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
        let stdin = p.stdin.as_ref().filter(|_| pending_in).map(AsFd::as_fd);
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

    /// Set both worker pipes to `size`; false if the kernel refused one (above
    /// the system's limit or the user's quota, or, shrinking, fuller than that).
    fn size_pipes(&mut self, size: i32) -> bool {
        let Some(w) = self.sup.worker() else {
            return false;
        };
        let pipes = &w.pipes;
        let mut ok = true;
        // Both are tried, whatever the first one gives.
        for fd in pipes
            .stdin
            .as_ref()
            .map(AsFd::as_fd)
            .into_iter()
            .chain([pipes.stdout.as_fd()])
        {
            ok &= crate::sys::set_pipe_size(fd, size).is_ok();
        }
        ok
    }

    /// A big body is crossing: larger pipes, so it takes a few writes, not
    /// one per 64 KiB (the default stays if the kernel refuses).
    fn grow_pipes(&mut self) {
        if !self.pipes_grown {
            self.size_pipes(BIG_PIPE_SIZE);
            self.pipes_grown = true;
        }
    }

    /// After a request: the pipes back to the default size (tried again
    /// after the next request if one still holds more than that) and the
    /// buffers a big body grew back to KEPT_BUFFER.
    fn after_request(&mut self) {
        if self.pipes_grown && self.size_pipes(PIPE_SIZE) {
            self.pipes_grown = false;
        }
        // (`take_frame` already emptied `from_worker` once all of it was handled.)
        for buf in [&mut self.from_worker, &mut self.to_worker] {
            if buf.capacity() > KEPT_BUFFER {
                buf.shrink_to(KEPT_BUFFER);
            }
        }
    }

    /// Read from the worker's stdout into `from_worker`. Ok(false) = EOF.
    fn read_stdout(&mut self) -> io::Result<bool> {
        let Some(w) = self.sup.worker() else {
            return Ok(false);
        };
        // Straight into the spare capacity: no scratch buffer, no copy.
        if self.from_worker_at > 0 {
            self.from_worker.drain(..self.from_worker_at);
            self.from_worker_at = 0;
        }
        let result = loop {
            match crate::sys::read_append(w.pipes.stdout.as_fd(), &mut self.from_worker, READ_MAX) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(n) => {
                // A full default-size pipe: a big response is on its way.
                if n >= PIPE_SIZE as usize {
                    self.grow_pipes();
                }
                Ok(n > 0)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Has the worker process exited (reaped now if so)?
    fn worker_exited(&mut self) -> bool {
        self.sup
            .worker()
            .is_some_and(|w| w.process.try_wait().is_some())
    }

    /// After the worker exited: read what it left in its stdout pipe, up to
    /// where the pipe is empty (a process it forked may keep it open).
    fn drain_stdout(&mut self) {
        loop {
            let before = self.from_worker.len() - self.from_worker_at;
            match self.read_stdout() {
                // Ok(true) is also "would block": stop when nothing came.
                Ok(true) if self.from_worker.len() - self.from_worker_at > before => {}
                _ => return,
            }
        }
    }

    /// The next frame in `from_worker` and the bytes it used there (for
    /// [`WsgiBack::take_frame`]). A body frame is passed on in parts as it
    /// arrives (an application's chunk is one frame, however large), in
    /// whole FastCGI records' worth until its last part.
    fn next_frame(&self) -> Result<Option<(Frame<'_>, usize)>, String> {
        let buf = &self.from_worker[self.from_worker_at..];
        if self.body_left > 0 {
            let n = self.body_part(buf.len(), self.body_left);
            return Ok((n > 0).then(|| (Frame::Body(&buf[..n]), n)));
        }
        let Some(header) = buf.get(..FRAME_HEADER) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let Some(payload) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
            if header[0] == b'B' {
                let n = self.body_part(buf.len() - FRAME_HEADER, len);
                return Ok(
                    (n > 0).then(|| (Frame::Body(&buf[FRAME_HEADER..][..n]), FRAME_HEADER + n))
                );
            }
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
            other => return Err(format!("unknown frame type {other:#04x} from the worker")),
        };
        Ok(Some((frame, FRAME_HEADER + len)))
    }

    /// How much of a body frame's `left` payload bytes to pass on when
    /// `have` of them arrived: all once they are all there; all there is
    /// when the rest is big enough to be spliced ([`WsgiBack::splice_body`]);
    /// else whole FastCGI records' worth (no 1-byte record after each
    /// 64 KiB), or none yet.
    fn body_part(&self, have: usize, left: usize) -> usize {
        if have >= left || (self.front_splices && left - have >= SPLICE_MIN) {
            have.min(left)
        } else {
            have - have % MAX_RECORD
        }
    }

    /// Will the worker's next output go by splice: the rest of a body frame
    /// that is in its pipe, nothing of it buffered here?
    fn will_splice(&self) -> bool {
        self.splicing_frame
            || (self.front_splices
                && self.body_left >= SPLICE_MIN
                && self.from_worker_at == self.from_worker.len())
    }

    /// Move what the worker's pipe holds of the current body frame to the
    /// web server by splice(2). None: nothing is in the pipe (it may be
    /// closed: read it to find out).
    fn splice_body(&mut self, ex: &mut dyn Exchange) -> Option<io::Result<()>> {
        let w = self.sup.worker()?;
        let pipe = w.pipes.stdout.as_fd();
        let there = match crate::sys::pipe_bytes(pipe) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        match ex.splice_body(pipe, there.min(self.body_left)) {
            Ok(n) => {
                self.body_left -= n;
                self.splicing_frame = self.body_left > 0;
                Some(Ok(()))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// After an abort: the record the front has open for a splice is
    /// completed (its content is in the worker's pipe), so that the abort's
    /// answer can follow it and the connection goes on; the rest of the
    /// chunk is then read and dropped. Waits only for the web server to
    /// take it, until `limit` (then the front closes the connection).
    fn finish_spliced_record(&mut self, ex: &mut dyn Exchange, limit: Instant) {
        while self.splicing_frame {
            match self.splice_body(ex) {
                // The front takes no more: its record is complete.
                Some(Err(_)) | None => break,
                Some(Ok(())) if ex.output_backlog() == 0 => continue,
                Some(Ok(())) => {}
            }
            let now = Instant::now();
            let Some((fd, _)) = ex.poll_interest().filter(|_| now < limit) else {
                break;
            };
            let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
            let wait = crate::sys::poll_timeout((limit - now).min(DEATH_CHECK));
            if let Err(e) = poll(&mut fds, wait)
                && e != nix::errno::Errno::EINTR
            {
                break;
            }
        }
        self.splicing_frame = false;
    }

    /// Drop a frame (or part of one) [`WsgiBack::next_frame`] returned.
    fn take_frame(&mut self, used: usize) {
        if self.body_left > 0 {
            self.body_left -= used;
            self.splicing_frame &= self.body_left > 0;
        } else if let [b'B', a, b, c, d, ..] = self.from_worker[self.from_worker_at..] {
            // What is left of a body frame passed on in part.
            self.body_left = FRAME_HEADER + u32::from_be_bytes([a, b, c, d]) as usize - used;
        }
        self.from_worker_at += used;
        if self.from_worker_at == self.from_worker.len() {
            self.from_worker.clear();
            self.from_worker_at = 0;
        }
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
                    if self.start_failure.is_some() || at > deadline {
                        return Err(self.unavailable(ex));
                    }
                    std::thread::sleep((at - now).min(Duration::from_millis(50)));
                    if let Some(Err(_)) = self.pump_front(ex) {
                        return Err(Outcome::FrontGone);
                    }
                }
                Err(e) => {
                    self.start_failed(&e);
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
                    "wsgi: {}: the worker did not start within {:.1}s (start_timeout){}; killed; {stderr} (503)",
                    self.label,
                    self.config.start_timeout.as_secs_f64(),
                    self.warming_note(),
                );
                self.sup.failed();
                return Err(self.unavailable(ex));
            }
            let wait = (limit - now).min(DEATH_CHECK);
            let ready = match self.poll_round(Some(ex), ctx, true, wait) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("wsgi: {}: poll failed: {e}", self.label);
                    self.sup.failed();
                    return Err(self.unavailable(ex));
                }
            };
            self.on_events(&ready, ctx);
            // By its pid: what the application's import started may hold
            // the worker's output open.
            if self.worker_exited() {
                self.drain_stdout();
                match self.start_frame() {
                    // Ready, then gone: `run` finds it gone and says so.
                    Started::Ready => return Ok(()),
                    Started::Failed => {}
                    Started::Pending => self.worker_ended("during start-up", " (503)"),
                }
                return Err(self.unavailable(ex));
            }
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

    /// Handle the new worker's start-up frames that have arrived: ready
    /// (then its warm-up requests, if any, and their answers), or its import
    /// error (logged, kept for the 503 page), or a protocol error.
    fn start_frame(&mut self) -> Started {
        loop {
            let warming = self.warming.is_some();
            let (frame, used) = match self.next_frame() {
                Ok(None) => return Started::Pending,
                Ok(Some(found)) => found,
                Err(_) => return self.broken_start(),
            };
            match frame {
                Frame::Ready(payload) if !warming => {
                    // "Python 3.11.2".
                    let version = String::from_utf8_lossy(payload).into_owned();
                    self.take_frame(used);
                    if self.config.warmup.is_empty() {
                        return self.worker_ready(&version);
                    }
                    self.warming = Some(Warming {
                        at: 0,
                        version,
                        status: None,
                        body: Vec::new(),
                    });
                    self.send_warmup();
                }
                Frame::ImportFailed(report) if !warming => {
                    let report = String::from_utf8_lossy(report).into_owned();
                    return self.import_failed(&report);
                }
                Frame::Head(raw) if warming => {
                    let head = parse_head(raw, self.limits.max_response_head_bytes);
                    self.take_frame(used);
                    let Ok(head) = head else {
                        return self.warmup_failed("got an invalid response head".into());
                    };
                    let reason = String::from_utf8_lossy(head.reason()).into_owned();
                    if let Some(w) = &mut self.warming {
                        w.status = Some((head.status(), reason));
                    }
                }
                Frame::Body(data) if warming => {
                    let kept = self.warming.as_ref().map_or(0, |w| w.body.len());
                    let room = WARMUP_QUOTE_BYTES.saturating_sub(kept);
                    let quote = data[..data.len().min(room)].to_vec();
                    self.take_frame(used);
                    if let Some(w) = &mut self.warming {
                        w.body.extend_from_slice(&quote);
                    }
                }
                Frame::Done if warming => {
                    self.take_frame(used);
                    if let Some(done) = self.warmup_answered() {
                        return done;
                    }
                }
                _ => return self.broken_start(),
            }
        }
    }

    fn broken_start(&mut self) -> Started {
        log::log!(
            self.start_level(),
            "wsgi: {}: the worker broke the protocol during start-up{} (503)",
            self.label,
            self.warming_note()
        );
        self.warming = None;
        self.sup.failed();
        Started::Failed
    }

    /// The import error the worker reported ("summary\n" + traceback).
    fn import_failed(&mut self, report: &str) -> Started {
        let (summary, traceback) = report.split_once('\n').unwrap_or((report, ""));
        let mut summary = summary.to_string();
        let traceback = traceback.to_string();
        // An import that fails because a path cannot be read says so.
        if let Some(why) = self.deployment_problems() {
            summary.push_str("; ");
            summary.push_str(&why);
        }
        self.sup.failed();
        log::log!(
            self.start_level(),
            "wsgi: cannot import {}: {summary} (503 until fixed; next try in {:.1}s at the earliest)",
            self.label,
            self.backoff_seconds()
        );
        self.start_failure = Some(StartFailure::Import(summary, traceback));
        Started::Failed
    }

    /// The worker is ready: imported, and its warm-up (if any) passed.
    fn worker_ready(&mut self, version: &str) -> Started {
        self.warming = None;
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
        self.start_failure = None;
        Started::Ready
    }

    /// Queue the warm-up request `warming.at` as a GET without a body,
    /// through the same frames as a real request.
    fn send_warmup(&mut self) {
        let Some(at) = self.warming.as_ref().map(|w| w.at) else {
            return;
        };
        let Some(path) = self.config.warmup.get(at) else {
            return;
        };
        let req = warmup_request(path, &self.config.script_name);
        push_request_frame(&mut self.to_worker, &req, &self.config.script_name);
        push_frame(&mut self.to_worker, b'E', &[]);
        if self.write_to_worker().is_err() {
            // It closed its input: it is dying; its stdout says how.
            self.to_worker.clear();
        }
    }

    /// A warm-up answer is complete: the next warm-up request, or ready, or
    /// (a 5xx) a failed start. None: the next request went out.
    fn warmup_answered(&mut self) -> Option<Started> {
        let w = self.warming.as_mut()?;
        let path = self.config.warmup.get(w.at).cloned().unwrap_or_default();
        let body = quote_lines(&w.body);
        match w.status.take() {
            Some((status, reason)) if status >= 500 => {
                return Some(self.warmup_failed_with(format!("answered {status} {reason}"), body));
            }
            None => return Some(self.warmup_failed("answered without a status".into())),
            Some((status, reason)) => {
                if status >= 400 {
                    log::warn!(
                        "wsgi: {}: warm-up GET {path} answered {status} {reason} (not a failure, \
                         but the application may not have been warmed; Django: is \"localhost\" \
                         in ALLOWED_HOSTS?): {body}",
                        self.label
                    );
                }
            }
        }
        w.at += 1;
        w.body.clear();
        if w.at < self.config.warmup.len() {
            self.send_warmup();
            return None;
        }
        let version = std::mem::take(&mut w.version);
        Some(self.worker_ready(&version))
    }

    fn warmup_failed(&mut self, what: String) -> Started {
        self.warmup_failed_with(what, String::new())
    }

    /// A warm-up request failed: log it with the answer's first lines and
    /// the worker's last stderr lines; the worker is not used (503, or a
    /// refused reload); the next request tries again after the backoff.
    fn warmup_failed_with(&mut self, what: String, quoted: String) -> Started {
        let path = self
            .warming
            .take()
            .and_then(|w| self.config.warmup.get(w.at).cloned())
            .unwrap_or_default();
        let stderr = self.stderr_summary();
        let mut summary = format!("warm-up GET {path} {what}");
        if !quoted.is_empty() {
            summary.push_str(": ");
            summary.push_str(&quoted);
        }
        summary.push_str("; ");
        summary.push_str(&stderr);
        self.sup.failed();
        log::log!(
            self.start_level(),
            "wsgi: {}: {summary} (503 until fixed; next try in {:.1}s at the earliest)",
            self.label,
            self.backoff_seconds()
        );
        self.start_failure = Some(StartFailure::Warmup(summary, quoted));
        Started::Failed
    }

    /// " (during warm-up GET /x)" while a warm-up request is out, for the
    /// lines that say a start failed.
    fn warming_note(&self) -> String {
        self.warming
            .as_ref()
            .and_then(|w| self.config.warmup.get(w.at))
            .map(|path| format!(" (during warm-up GET {path})"))
            .unwrap_or_default()
    }

    fn interrupted_before_request(&mut self, i: Interrupt) -> Outcome {
        i.outcome()
    }

    fn backoff_seconds(&self) -> f64 {
        let n = self.sup.failures().max(1);
        (supervise::RESTART_BACKOFF_FIRST.as_secs_f64() * f64::from(1u32 << (n - 1).min(16)))
            .min(supervise::RESTART_BACKOFF_MAX.as_secs_f64())
    }

    /// The 503 for "no worker": the import error when there is one (its
    /// traceback only with `debug = true`).
    fn unavailable(&self, ex: &mut dyn Exchange) -> Outcome {
        let (Some(StartFailure::Import(summary, traceback))
        | Some(StartFailure::Warmup(summary, traceback))) = &self.start_failure
        else {
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
        let head = ResponseHead::new(503)
            .with_header("Content-Type", "text/html; charset=utf-8")
            .with_header("Retry-After", "1");
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
        self.front_splices = ex.can_splice();
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
        if !push_request_frame(&mut self.to_worker, ex.request(), &self.config.script_name) {
            return Some(finish_with_error(ex, 500, ""));
        }
        // No body (most requests): its end goes in the same write, so the
        // worker reads the whole request at once.
        let mut body_done = ex.body_finished() && ex.body().is_empty();
        if body_done {
            push_frame(&mut self.to_worker, b'E', &[]);
        } else if ex.body().len() >= PIPE_SIZE as usize
            || ex
                .request()
                .get("CONTENT_LENGTH")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= PIPE_SIZE as u64)
        {
            self.grow_pipes();
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
        // The worker's pid was reaped (SIGCHLD woke us): what it wrote before
        // dying has been read; once its frames are handled, the request failed.
        let mut exited = false;
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
                        self.take_frame(used);
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
                        self.after_request();
                        self.greet();
                        return Some(gone.map_or(Outcome::Done, |(i, _)| i.outcome()));
                    }
                    Step::FrontGone => {
                        log::warn!(
                            "wsgi: {}: {}: the web server stopped reading the response",
                            self.label,
                            ex.request().summary()
                        );
                        gone = Some((Interrupt::FrontGone, Instant::now()));
                    }
                    Step::BadHead(e) => {
                        // The same line as the cgi kind's, then the worker is
                        // replaced: the rest of its answer is not wanted.
                        log::error!("wsgi: {}: {e} (502)", self.label);
                        log::warn!(
                            "wsgi: {}: {}: worker replaced after an invalid response head",
                            self.label,
                            ex.request().summary()
                        );
                        self.sup.replace();
                        self.greet();
                        return Some(finish_with_error(ex, 502, ""));
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

            if exited {
                return Some(self.died(ex, gone.as_ref().map(|(i, _)| i.outcome())));
            }

            let now = Instant::now();
            let stopping = ctx.stop_deadline.is_some_and(|s| s <= deadline);
            let mut limit = ctx.stop_deadline.map_or(deadline, |s| s.min(deadline));
            if let Some((_, since)) = &gone {
                limit = limit.min(*since + DRAIN_LIMIT);
            }
            if now >= limit {
                let abandoned = gone.as_ref().map(|(i, _)| i.outcome());
                return Some(self.give_up(ex, stopping, abandoned, started));
            }
            let splicing = gone.is_none() && self.will_splice();
            let want_stdout = if splicing {
                ex.output_backlog() == 0
            } else {
                gone.is_some() || ex.output_backlog() < OUTPUT_HIGH_WATER
            };
            let front = if gone.is_some() { None } else { Some(&*ex) };
            // SIGCHLD wakes the poll; the cap covers a wake-up another
            // thread's poll took (threaded servers share the signal pipe).
            let wait = (limit - now).min(DEATH_CHECK);
            let ready = match self.poll_round(front, ctx, want_stdout, wait) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("wsgi: {}: poll failed: {e}", self.label);
                    self.sup.replace();
                    self.greet();
                    return Some(finish_with_error(ex, 502, ""));
                }
            };
            self.on_events(&ready, ctx);
            // By its pid, not by the end of its output: a process the
            // application forked may hold the worker's pipes open. Looked
            // for when SIGCHLD (or anything on the signal pipe) woke the
            // poll, or nothing did (the DEATH_CHECK cap), not on every
            // frame the worker sends.
            if (ready.signal || ready.nothing()) && self.worker_exited() {
                exited = true;
                // (Not into a record the front has open for a splice: the
                // response is cut short, the front closes the connection.)
                if !self.splicing_frame {
                    self.drain_stdout();
                }
                continue;
            }
            let front = if gone.is_some() {
                Ok(())
            } else {
                on_front(&ready, ex)
            };
            if let Err(i) = front {
                let why = match i {
                    Interrupt::Aborted => Some("request aborted by the web server"),
                    Interrupt::FrontGone => Some("the web server closed the connection"),
                    Interrupt::StoppedByFront => None,
                };
                if let Some(why) = why {
                    log::info!(
                        "wsgi: {}: {}: {why}; letting the application finish",
                        self.label,
                        ex.request().summary(),
                    );
                }
                if matches!(i, Interrupt::StoppedByFront) {
                    // The application never gets the end of the body (a
                    // truncated upload is not to be taken for a whole one):
                    // a fresh worker rather than one still reading it.
                    self.sup.replace();
                    self.greet();
                    return Some(Outcome::FrontGone);
                }
                if matches!(i, Interrupt::Aborted) && self.splicing_frame {
                    self.finish_spliced_record(ex, Instant::now() + DRAIN_LIMIT);
                }
                gone = Some((i, Instant::now()));
                if !body_done {
                    push_frame(&mut self.to_worker, b'E', &[]);
                    body_done = true;
                }
            }
            if ready.stdout && splicing && gone.is_none() {
                match self.splice_body(ex) {
                    Some(Ok(())) => continue,
                    Some(Err(e)) => {
                        log::warn!(
                            "wsgi: {}: {}: the web server stopped reading the response ({e})",
                            self.label,
                            ex.request().summary()
                        );
                        gone = Some((Interrupt::FrontGone, Instant::now()));
                        continue;
                    }
                    None => {}
                }
            }
            if ready.stdout {
                match self.read_stdout() {
                    Ok(true) => {}
                    Ok(false) | Err(_) => {
                        let abandoned = gone.as_ref().map(|(i, _)| i.outcome());
                        return Some(self.died(ex, abandoned));
                    }
                }
            }
        }
    }

    /// The worker ended (it closed its output): log how, its last stderr
    /// lines between `during` and `after`, and count a failure (backoff).
    fn worker_ended(&mut self, during: &str, after: &str) {
        let how = self.describe_death();
        let stderr = self.stderr_summary();
        let starting = self.sup.worker().is_some_and(|w| !w.ready);
        let level = if starting {
            self.start_level()
        } else {
            log::Level::Error
        };
        log::log!(
            level,
            "wsgi: {}: the worker {how} {during}; {stderr}{after}",
            self.label
        );
        if starting {
            self.died_starting = Some(format!(
                "{}: the worker {how} during start-up; {stderr}",
                self.label
            ));
        }
        self.sup.failed();
    }

    /// The worker closed its output in the middle of a request.
    fn died(&mut self, ex: &mut dyn Exchange, abandoned: Option<Outcome>) -> Outcome {
        let status = if ex.head_sent() {
            "response cut short"
        } else {
            "502"
        };
        let during = format!("during {}", ex.request().summary());
        self.worker_ended(&during, &format!(" ({status}); restarting it"));
        if let Some(outcome) = abandoned {
            return outcome;
        }
        finish_with_error(ex, 502, "")
    }

    /// The request timeout (504) or the stop grace (503) ran out, or the
    /// worker did not finish a response nobody reads.
    fn give_up(
        &mut self,
        ex: &mut dyn Exchange,
        stopping: bool,
        abandoned: Option<Outcome>,
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
        if let Some(outcome) = abandoned {
            log::warn!(
                "wsgi: {}: the application did not finish an abandoned request within {:.1}s; \
                 worker replaced",
                self.label,
                DRAIN_LIMIT.as_secs_f64()
            );
            // Aborted: the front answered the abort already; its
            // connection goes on. Gone: nothing more can be sent.
            return outcome;
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
        Err(e) if crate::front::stopped_by_front(&e) => Err(Interrupt::StoppedByFront),
        Ok(InputEvent::Closed) | Err(_) => Err(Interrupt::FrontGone),
    }
}

/// What one frame from the worker means for the request.
enum Step {
    Continue,
    Done,
    FrontGone,
    Broken(String),
    /// The application's status line or headers were refused.
    BadHead(HeadError),
}

/// Pass one frame of the response to the front.
fn forward(frame: Frame<'_>, ex: &mut dyn Exchange, max_head: usize) -> Step {
    let sent = match frame {
        Frame::Head(raw) => match parse_head(raw, max_head) {
            Ok(head) => ex.send_head(&head),
            Err(e) => return Step::BadHead(e),
        },
        Frame::Body(data) => ex.send_body(data),
        Frame::Done => return Step::Done,
        Frame::Ready(_) | Frame::ImportFailed(_) => {
            return Step::Broken("unexpected frame during a request".into());
        }
    };
    match sent {
        Ok(()) => Step::Continue,
        Err(_) => Step::FrontGone,
    }
}

/// Append the request's meta-variables as one R frame. false: too large
/// for a frame (nothing appended).
fn push_request_frame(out: &mut Vec<u8>, req: &request::Request, mode: &ScriptName) -> bool {
    let frame_start = out.len();
    out.extend_from_slice(&[b'R', 0, 0, 0, 0]);
    request::for_each_application_meta_variable(req, mode, |name, value| {
        if !name.contains(&0) && !value.contains(&0) {
            out.extend_from_slice(name);
            out.push(0);
            out.extend_from_slice(value);
            out.push(0);
        }
    });
    let len = out.len() - frame_start - FRAME_HEADER;
    let Ok(len32) = u32::try_from(len) else {
        out.truncate(frame_start);
        return false;
    };
    out[frame_start + 1..frame_start + FRAME_HEADER].copy_from_slice(&len32.to_be_bytes());
    true
}

/// The warm-up GET for `target` ("/path?query"): the meta-variables a web
/// server would send for a visitor at localhost, plus `WARMUP_HEADER`.
/// PATH_INFO is derived from REQUEST_URI (percent-decoded) as for a real
/// request that comes without one.
pub(crate) fn warmup_request(target: &str, mode: &ScriptName) -> request::Request {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let prefix = match mode {
        ScriptName::Fixed(prefix) => prefix.as_str(),
        ScriptName::Auto | ScriptName::AsReceived => "",
    };
    let uri = format!("{prefix}{target}");
    let pairs = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "fcgi-shim"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", uri.as_str()),
        ("SCRIPT_NAME", prefix),
        ("QUERY_STRING", query),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("HTTP_HOST", "localhost"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "0"),
        (WARMUP_HEADER, "1"),
    ];
    request::Request::from_strs(&pairs)
}

/// The first non-empty lines of a response body (and its HTML `<title>`
/// when the lines do not show it), in one log-line piece.
fn quote_lines(body: &[u8]) -> String {
    const LINES: usize = 5;
    const MAX: usize = 400;
    let text = String::from_utf8_lossy(body);
    let mut quoted = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(LINES)
        .collect::<Vec<_>>()
        .join(" | ");
    let lower = text.to_ascii_lowercase();
    if let (Some(a), Some(b)) = (lower.find("<title>"), lower.find("</title>"))
        && a + 7 <= b
        && !quoted.to_ascii_lowercase().contains("<title>")
    {
        let title = text.get(a + 7..b).unwrap_or("").trim();
        quoted = format!("<title>{title}</title> | {quoted}");
    }
    if quoted.len() > MAX {
        let mut cut = MAX;
        while !quoted.is_char_boundary(cut) {
            cut -= 1;
        }
        quoted.truncate(cut);
        quoted.push_str(" ...");
    }
    quoted
}

/// The rest of a body frame at least this long goes by splice when the
/// front can (a read and a write are cheaper for less).
const SPLICE_MIN: usize = 64 * 1024;

/// Parts of a body frame come in multiples of this: the longest record of
/// FastCGI, the usual front (any front takes any length; this only spares
/// it a short record after each full one).
const MAX_RECORD: usize = 65535;

fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    // Payloads are at most CHUNK bytes.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// "200 OK\0Name\0value\0..." → a response head, the bytes checked by the
/// same rules as a CGI program's (the adapter checks too, but a worker is
/// the application's process: what it writes is not trusted).
pub fn parse_head(raw: &[u8], max: usize) -> Result<ResponseHead, HeadError> {
    if raw.len() > max {
        return Err(HeadError::TooLarge(max));
    }
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    let mut fields = raw.split(|&b| b == 0);
    let mut head = ResponseHead::from_status_line(fields.next().unwrap_or(b""))?;
    let rest: Vec<&[u8]> = fields.collect();
    if !rest.len().is_multiple_of(2) {
        return Err(HeadError::BadFieldList);
    }
    for pair in rest.chunks_exact(2) {
        head.push_header(pair[0], pair[1])?;
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

impl Back for WsgiBack {
    fn app_started(&mut self) -> bool {
        self.sup.worker().is_some_and(|w| w.ready)
    }

    fn startup(&mut self) -> Startup {
        self.start_state()
    }

    /// The worker's pipes are closed and it gets SIGTERM (the adapter ends
    /// its group); reaped by [`stopped`](Back::stopped) later.
    fn begin_stop(&mut self) {
        self.sup.retire();
    }

    fn stopped(&mut self) -> bool {
        self.sup.all_exited()
    }

    fn hand_over(&mut self) -> Option<(&'static str, String)> {
        let w = self.sup.worker().filter(|w| w.ready)?;
        let p = &w.pipes;
        let (Some(stdin), stdout, stderr) = (&p.stdin, &p.stdout, &p.stderr) else {
            return None;
        };
        let fds = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
        let kept = fds.iter().try_for_each(|fd| crate::sys::clear_cloexec(*fd));
        let [a, b, c] = fds.map(|fd| fd.as_raw_fd());
        let value = format!("{}:{a}:{b}:{c}:{}", w.process.pid(), adapter_hash());
        if let Err(e) = kept {
            log::warn!(
                "wsgi: {}: cannot keep the worker across exec ({e})",
                self.label
            );
            self.keep_after_failed_exec();
            return None;
        }
        Some((HANDOVER_ENV, value))
    }

    fn keep_after_failed_exec(&mut self) {
        if let Some(w) = self.sup.worker() {
            for fd in w.pipes.fds() {
                let _ = crate::sys::set_cloexec(fd);
            }
        }
    }

    fn serve(&mut self, exchange: &mut dyn Exchange, ctx: &mut Context<'_>) -> Outcome {
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
        self.read_stderr();
        // A worker starting up: its handshake, as far as it has come (an
        // import error is read before the death that follows it is noticed).
        self.idle_handshake();
        self.note_death_while_idle();
        if self.sup.worker().is_none()
            && self
                .start_failure
                .as_ref()
                .is_none_or(StartFailure::retried_while_idle)
            && !crate::sys::stop_requested()
        {
            match self.sup.start() {
                Ok(_) => {
                    self.greet();
                    self.idle_handshake();
                }
                Err(StartError::Backoff(_)) => {}
                Err(e) => self.start_failed(&e),
            }
        }
    }

    fn shutdown(&mut self) {
        self.sup.stop(STOP_GRACE);
    }

    fn release_memory(&mut self) {
        if self.from_worker.len() == self.from_worker_at {
            self.from_worker = Vec::new();
            self.from_worker_at = 0;
        }
        if self.to_worker.is_empty() {
            self.to_worker = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(b"404 Not Found\0Content-Type\0text/plain\0X-A\0b\0", 1024).unwrap();
        assert_eq!((h.status(), h.reason()), (404, &b"Not Found"[..]));
        assert_eq!(
            h.headers(),
            [
                (b"Content-Type".to_vec(), b"text/plain".to_vec()),
                (b"X-A".to_vec(), b"b".to_vec())
            ]
        );
        assert!(matches!(
            parse_head(b"20 OK\0", 1024),
            Err(HeadError::BadStatus(_))
        ));
        assert_eq!(
            parse_head(b"200 OK\0A\0", 1024),
            Err(HeadError::BadFieldList)
        );
        assert_eq!(
            parse_head(b"200 OK\0A\0b\0", 4),
            Err(HeadError::TooLarge(4))
        );
        assert_eq!(parse_head(b"204 No Content\0", 1024).unwrap().headers(), []);
    }

    #[test]
    fn heads_are_bytes_and_checked_like_cgi() {
        // PEP 3333 headers are latin-1: carried as they are.
        let h = parse_head(
            b"200 OK\0Content-Disposition\0attachment; filename=\"caf\xe9.txt\"\0",
            1024,
        )
        .unwrap();
        assert_eq!(
            h.header("content-disposition"),
            Some(&b"attachment; filename=\"caf\xe9.txt\""[..])
        );
        assert_eq!(
            parse_head(b"200 OK\r\nSet-Cookie: evil=1\0", 1024),
            Err(HeadError::BadStatus(
                b"200 OK\r\nSet-Cookie: evil=1".to_vec()
            ))
        );
        assert_eq!(
            parse_head(b"200 OK\0Bad Name\0x\0", 1024),
            Err(HeadError::BadName(b"Bad Name".to_vec()))
        );
        assert!(matches!(
            parse_head(b"200 OK\0X-A\0a\rb\0", 1024),
            Err(HeadError::BadValue { .. })
        ));
    }

    #[test]
    fn warmup_requests_look_like_a_visitor_at_localhost() {
        let req = warmup_request("/a%20b?x=1", &ScriptName::Fixed("/blog".into()));
        let mut out = Vec::new();
        assert!(push_request_frame(
            &mut out,
            &req,
            &ScriptName::Fixed("/blog".into())
        ));
        let text = String::from_utf8_lossy(&out[FRAME_HEADER..]).replace('\0', "|");
        for pair in [
            "REQUEST_METHOD|GET|",
            "REQUEST_URI|/blog/a%20b?x=1|",
            "SCRIPT_NAME|/blog|",
            "PATH_INFO|/a b|",
            "QUERY_STRING|x=1|",
            "HTTP_HOST|localhost|",
            "REMOTE_ADDR|127.0.0.1|",
            "HTTP_X_FCGI_SHIM_WARMUP|1|",
        ] {
            assert!(text.contains(pair), "{pair} not in {text}");
        }
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!((out[0], len), (b'R', out.len() - FRAME_HEADER));
    }

    #[test]
    fn failed_warmup_answers_are_quoted_briefly() {
        assert_eq!(
            quote_lines(b"\n  Server Error (500)\n\nline 2\n"),
            "Server Error (500) | line 2"
        );
        let django = b"<!DOCTYPE html>\n<html>\n<head>\n<meta a>\n<meta b>\n<title>SyntaxError at /</title>\n";
        assert!(
            quote_lines(django).starts_with("<title>SyntaxError at /</title> | <!DOCTYPE html>")
        );
        let long = "\u{e9}".repeat(1000);
        let quoted = quote_lines(long.as_bytes());
        assert!(quoted.len() <= 404 && quoted.ends_with(" ..."), "{quoted}");
    }

    #[test]
    fn debug_page_escapes() {
        let page = debug_page("a:b", "E: <x>", "Traceback & <y>");
        assert!(page.contains("E: &lt;x&gt;") && page.contains("Traceback &amp; &lt;y&gt;"));
    }
}

//! Server programs: `kind = "http"`, `"fastcgi"` and `"scgi"` (issue 16). The
//! application is its own server (node, gunicorn, puma, php-cgi, flup ...);
//! the shim starts it on a private address, waits until it accepts
//! connections, and relays each request to it in the kind's protocol.
//!
//! Owns: the private address of each process (a unix socket path in a 0700
//! directory of ours for `{socket}`, a free loopback port for `{port}` and
//! `PORT`, or a listening unix socket on fd 0 as mod_fcgid gives one),
//! readiness (the address accepts connections, and for http `ready_path`
//! answers 2xx, within `start_timeout`), the one request driver every kind
//! shares (request bytes streamed out as the body arrives, the answer
//! streamed back as it comes, 504 after `request_timeout`, 502 with the
//! reason and the program's last output lines when it dies or answers
//! garbage), a kept-alive connection (http), and the program's stdout and
//! stderr as log lines. For a shared `http` server (`shared.rs`): the
//! keeper's turn (`keep_running`), and a shim's relay to the address its
//! keeper names. A clean exit between requests (php-cgi after
//! PHP_FCGI_MAX_REQUESTS) is no failure: another process is started.
//! Must not: spawn, restart or stop processes itself (that is
//! `supervise::Supervisor`), or know a protocol's bytes (that is the
//! kind's [`Wire`]: `http.rs`, `fastcgi.rs`, `scgi.rs`).

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use super::shared::{Link, Share, Told};
use super::stderr_lines::StderrLines;
use super::{Back, Context, Outcome, finish_with_error};
use crate::config::{
    Limits, Listen, PORT_PLACEHOLDER, SOCKET_PLACEHOLDER, ServerConfig, ServerKind,
};
use crate::request::{Exchange, InputEvent, Request, ResponseHead};
use crate::supervise::{self, Descendants, DescribeExit, SpawnSpec, StartError, Supervisor};

/// Lines of the program's output quoted when it fails.
const OUTPUT_TAIL_LINES: usize = 5;
/// Request bytes encoded ahead of what the connection took.
const CHUNK: usize = 65536;
/// Response bytes queued for the web server above which we stop reading
/// the application (it then blocks writing: backpressure).
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Longest wait between two looks at the program during a request or start-up.
const TICK: Duration = Duration::from_millis(50);
/// How long a response head waits for the first body bytes before it is
/// passed on alone (see `drive`).
const HEAD_HOLD: Duration = Duration::from_millis(10);
/// During a request, how often the program's stdout (which poll does not
/// watch) is read, so that a program that writes much there never blocks.
const OUTPUT_DRAIN: Duration = Duration::from_millis(100);
/// Grace for the program at shutdown (mod_fcgid's SIGKILL follows in ~3 s).
const STOP_GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// What each kind provides: its protocol, sans-I/O.

/// What decoding the application's answer produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// More bytes are needed (or the answer is over: see [`Event::End`]).
    NeedMore,
    /// The response head, and body bytes that came with it.
    Head(ResponseHead, Vec<u8>),
    /// Body bytes: this range of the input.
    Body(Range<usize>),
    /// Diagnostic output the protocol carries (FastCGI STDERR): this range.
    Log(Range<usize>),
    /// The answer is complete.
    End,
}

/// Why a request cannot be sent to the application (answered with this status).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub u16, pub String);

/// One request in a kind's protocol: encoders append to `out`, the decoder
/// reads from the front of the bytes received (and says how many it used).
pub trait Wire {
    /// The request head; `body_empty`: the whole body is known to be empty.
    fn begin(&mut self, req: &Request, body_empty: bool, out: &mut Vec<u8>) -> Result<(), Refusal>;
    /// Body bytes as they arrive.
    fn body(&mut self, data: &[u8], out: &mut Vec<u8>);
    /// The end of the body.
    fn end(&mut self, out: &mut Vec<u8>);
    /// Decode from the front of `input` (`eof`: the application closed the
    /// connection): (bytes used, what they were). Err: garbage, said why.
    fn decode(&mut self, input: &[u8], eof: bool) -> Result<(usize, Event), String>;
    /// May the connection carry another request after [`Event::End`]?
    fn reusable(&self) -> bool {
        false
    }
    /// Is the sending half of the connection closed once the whole request
    /// went out (SCGI: an application reading `wsgi.input` to its end)?
    fn half_close(&self) -> bool {
        false
    }
}

/// A fresh [`Wire`] for one request.
fn wire_for(kind: &ServerKind, limits: &Limits, head_request: bool) -> Box<dyn Wire> {
    match kind {
        ServerKind::Http {
            script_name,
            strip_prefix,
            ..
        } => Box::new(super::http::HttpWire::new(
            script_name.clone(),
            *strip_prefix,
            limits.max_response_head_bytes,
            head_request,
        )),
        ServerKind::Fastcgi {
            params,
            script_name,
        } => Box::new(super::fastcgi::FastcgiWire::new(
            params.clone(),
            script_name.clone(),
            limits.max_response_head_bytes,
        )),
        ServerKind::Scgi { script_name } => Box::new(super::scgi::ScgiWire::new(
            script_name.clone(),
            limits.max_response_head_bytes,
        )),
    }
}

// ---------------------------------------------------------------------------
// Addresses and connections.

/// Where one process of the program listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Port(u16),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Port(port) => write!(f, "127.0.0.1:{port}"),
        }
    }
}

/// A connection to the application.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }

    fn connect(addr: &Address) -> io::Result<Stream> {
        let stream = match addr {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
            Address::Port(port) => {
                let s = TcpStream::connect((Ipv4Addr::LOCALHOST, *port))?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        };
        match &stream {
            Stream::Unix(s) => s.set_nonblocking(true)?,
            Stream::Tcp(s) => s.set_nonblocking(true)?,
        }
        Ok(stream)
    }

    /// A kept connection the application closed (or sent something
    /// unasked on) while idle is not used again.
    fn still_idle(&self) -> bool {
        let mut fds = [PollFd::new(self.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(0))
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Our private directory for the program's sockets (mode 0700), removed
/// when the back goes.
struct PrivateDir(PathBuf);

static DIRS_MADE: AtomicU32 = AtomicU32::new(0);

impl PrivateDir {
    fn create() -> io::Result<PrivateDir> {
        let n = DIRS_MADE.fetch_add(1, Ordering::SeqCst);
        let mut base = std::env::temp_dir();
        // A socket path must fit in sun_path (108 bytes).
        if base.as_os_str().len() > 60 {
            base = PathBuf::from("/tmp");
        }
        if n == 0 {
            sweep_stale_dirs(&base);
        }
        let dir = base.join(format!("fcgi-shim-{}-{n}", crate::sys::pid()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(PrivateDir(dir))
    }
}

/// Remove the socket directories in `base` that no running process will
/// remove: those of shims killed with SIGKILL (no process has their pid) and
/// those named with our own pid (made by an earlier process that had it, as
/// this one made none yet). Only directories owned by our user, named
/// `fcgi-shim-<pid>-<n>`.
fn sweep_stale_dirs(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (me, uid) = (crate::sys::pid(), nix::unistd::getuid().as_raw());
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(stale_dir_pid) else {
            continue;
        };
        let ours = entry
            .path()
            .symlink_metadata()
            .is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if ours && (pid == me || !crate::sys::process_exists(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid in a socket directory's name `fcgi-shim-<pid>-<n>`.
fn stale_dir_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix("fcgi-shim-")?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Before each spawn: a fresh address, substituted into the arguments (and
/// `PORT`), or a fresh listening socket for fd 0.
fn prepare_spawn(
    listen: Listen,
    template: &[String],
    dir: &Path,
    generation: u32,
    spec: &mut SpawnSpec,
) -> io::Result<Address> {
    let sock = dir.join(format!("app-{generation}.sock"));
    // Made again after a shutdown removed it (a reload whose exec failed).
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    // Sockets of processes before (they are gone or on their way out).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let (address, socket_text, port_text) = match listen {
        Listen::Socket => (
            Address::Unix(sock.clone()),
            sock.to_string_lossy().into_owned(),
            String::new(),
        ),
        Listen::Port => {
            // A free port now; the program binds it a moment later.
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            (Address::Port(port), String::new(), port.to_string())
        }
        Listen::Stdin => {
            let listener = UnixListener::bind(&sock)?;
            spec.stdin_socket = Some(Arc::new(OwnedFd::from(listener)));
            (Address::Unix(sock.clone()), String::new(), String::new())
        }
    };
    spec.args = template
        .iter()
        .map(|a| {
            OsString::from(
                a.replace(SOCKET_PLACEHOLDER, &socket_text)
                    .replace(PORT_PLACEHOLDER, &port_text),
            )
        })
        .collect();
    spec.env.retain(|(n, _)| n != "PORT");
    if let Address::Port(port) = &address {
        spec.env.push(("PORT".into(), port.to_string().into()));
    }
    Ok(address)
}

// ---------------------------------------------------------------------------
// The back.

/// Where the current process's start-up stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Startup {
    /// Not accepting connections yet (or `ready_path` not answered yet).
    Waiting,
    Ready,
    /// It cannot be used: why (logged once).
    Failed(String),
}

/// What the keeper of a shared server (`shared.rs`) tells the site's shims.
pub enum Kept {
    Starting,
    Ready(u32, Address),
    /// The last start failed: why (logged by the keeper).
    Failed(String),
}

pub struct ServerBack {
    config: ServerConfig,
    limits: Limits,
    /// "http: /usr/bin/node", before what a log line says.
    label: String,
    sup: Supervisor,
    /// The address the last spawn was given (set by the spawn hook).
    spawned_at: Rc<RefCell<Option<Address>>>,
    /// The current process's pid and address, once we looked at it.
    current: Option<(u32, Address)>,
    output: StderrLines,
    /// A kept-alive connection to the current process (http).
    idle_conn: Option<Stream>,
    /// Why the last start failed, until one is ready.
    start_failure: Option<String>,
    /// Has a process ever become ready (the settings are good)?
    ever_ready: bool,
    /// What one read of the application's answer goes into (kept: no
    /// 64 KiB to zero per request).
    scratch: Box<[u8]>,
    /// When a ready process was last looked for with wait4 before a request.
    exit_checked: Instant,
    /// Removed last (the sockets are in it).
    dir: Option<PrivateDir>,
    /// A shared server (`shared.rs`): the site's keeper runs it, not our
    /// `sup`, which then never starts anything.
    link: Option<Link>,
    /// The shared server's pid whose address refused us, and when: its
    /// keeper's next word names another, unless it stays the same for
    /// [`BROKEN_WAIT`].
    broken: Option<(u32, Instant)>,
}

/// How long a shim waits for a shared server that refused it (or that it
/// asked to be replaced) to be replaced before it tries the same one again.
const BROKEN_WAIT: Duration = Duration::from_secs(1);
/// How much longer than `start_timeout` a shim waits for its keeper's word.
const KEEPER_MARGIN: Duration = Duration::from_secs(2);

/// A process that serves is looked for (wait4) before a request at most this
/// often: under load, not once per request. One that died shows sooner as a
/// refused or closed connection, and `relay` looks then.
const EXIT_CHECK_EVERY: Duration = Duration::from_millis(100);

impl ServerBack {
    /// Builds the back and starts the program at once.
    pub fn new(config: ServerConfig, limits: Limits) -> ServerBack {
        let program = config.command.first().cloned().unwrap_or_default();
        let label = format!("{}: {program}", config.kind.name());
        let mut env = supervise::base_env();
        if matches!(config.kind, ServerKind::Fastcgi { .. }) {
            // php-cgi: one process serving our one connection at a time
            // (it would fork children that share fd 0 otherwise), and no
            // exit of its own after 500 requests (`max_requests` recycles).
            env.push(("PHP_FCGI_CHILDREN".into(), "0".into()));
            env.push(("PHP_FCGI_MAX_REQUESTS".into(), "0".into()));
        }
        for (name, value) in &config.env {
            env.retain(|(n, _)| n != name.as_str());
            env.push((name.into(), value.into()));
        }
        let spec = SpawnSpec {
            program: program.into(),
            args: Vec::new(),
            env,
            workdir: Some(config.workdir.clone()),
            descendants: Descendants::Guarded,
            inherit_fds: Vec::new(),
            stdin_socket: None,
        };
        let mut sup = Supervisor::new(spec, max_requests(&config));
        let spawned_at = Rc::new(RefCell::new(None));
        let dir = match PrivateDir::create() {
            Ok(d) => Some(d),
            Err(e) => {
                log::error!("{label}: cannot create a private directory for its socket: {e}");
                None
            }
        };
        if let Some(d) = &dir {
            let (listen, template, path) = (
                config.listen,
                config.command.get(1..).unwrap_or_default().to_vec(),
                d.0.clone(),
            );
            let slot = Rc::clone(&spawned_at);
            let mut generation = 0u32;
            sup.set_before_spawn(Box::new(move |spec: &mut SpawnSpec| {
                generation = generation.wrapping_add(1);
                let addr = prepare_spawn(listen, &template, &path, generation, spec)?;
                *slot.borrow_mut() = Some(addr);
                Ok(())
            }));
        }
        let mut back = ServerBack::with(config, limits, label, sup, dir, None);
        back.spawned_at = spawned_at;
        let _ = back.start();
        back
    }

    fn with(
        config: ServerConfig,
        limits: Limits,
        label: String,
        sup: Supervisor,
        dir: Option<PrivateDir>,
        link: Option<Link>,
    ) -> ServerBack {
        let output = StderrLines::for_server_output(label.clone(), OUTPUT_TAIL_LINES);
        ServerBack {
            config,
            limits,
            label,
            sup,
            spawned_at: Rc::new(RefCell::new(None)),
            current: None,
            output,
            idle_conn: None,
            start_failure: None,
            ever_ready: false,
            scratch: vec![0; CHUNK].into_boxed_slice(),
            exit_checked: Instant::now(),
            dir,
            link,
            broken: None,
        }
    }

    /// A back that relays to the site's shared server for this version
    /// (`shared.rs`), starting its keeper if none runs; if none can be
    /// started, one that runs a server of its own (said in the log).
    pub fn shared(config: ServerConfig, limits: Limits, share: Share) -> ServerBack {
        let link = match Link::new(share) {
            Ok(link) => link,
            Err(e) => {
                log::warn!(
                    "cannot start the site's shared server: {e}; this process runs a server of its own"
                );
                return ServerBack::new(config, limits);
            }
        };
        let program = config.command.first().cloned().unwrap_or_default();
        let label = format!("{}: {program}", config.kind.name());
        let spec = SpawnSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            workdir: None,
            descendants: Descendants::Guarded,
            inherit_fds: Vec::new(),
            stdin_socket: None,
        };
        let sup = Supervisor::new(spec, 0);
        ServerBack::with(config, limits, label, sup, None, Some(link))
    }

    /// The keeper's turn (`shared.rs`): the program started if none runs
    /// (after its backoff), its start-up moved on and timed out, its exit
    /// noticed and logged. What the site's shims are told.
    pub fn keep_running(&mut self) -> Kept {
        self.drain_output();
        if self.sup.worker().is_some() {
            let ready = self.sup.worker().is_some_and(|w| w.ready);
            if self.check_exited(if ready {
                "while serving"
            } else {
                "during start-up"
            }) && !ready
            {
                let why = format!("it exited during start-up; {}", self.output.summary());
                self.start_failure = Some(why);
            }
        }
        let failed_or_starting = |back: &ServerBack| match &back.start_failure {
            Some(why) => Kept::Failed(why.clone()),
            None => Kept::Starting,
        };
        if self.sup.worker().is_none() && self.start().is_err() {
            return failed_or_starting(self);
        }
        let started = self.sup.worker().map_or_else(Instant::now, |w| w.started);
        let startup = self.advance_startup(started);
        // The connection that found it ready is not kept: a server with one
        // connection at a time (gunicorn's sync worker) would wait on it
        // while the shims' requests queue.
        self.idle_conn = None;
        match startup {
            Startup::Ready => match &self.current {
                Some((pid, addr)) => Kept::Ready(*pid, addr.clone()),
                None => Kept::Starting,
            },
            Startup::Waiting if started.elapsed() >= self.config.start_timeout => {
                Kept::Failed(self.start_timed_out(""))
            }
            Startup::Waiting => failed_or_starting(self),
            Startup::Failed(why) => {
                log::error!("{}: {why}", self.label);
                self.start_failure = Some(why.clone());
                if self.sup.worker().is_some() {
                    self.sup.failed();
                }
                Kept::Failed(why)
            }
        }
    }

    /// The keeper's: the pid of the process that serves, if one does.
    pub fn serving_pid(&mut self) -> Option<u32> {
        let ready = self.sup.worker().is_some_and(|w| w.ready);
        self.current.as_ref().filter(|_| ready).map(|(p, _)| *p)
    }

    /// The keeper's, when a shim's request to it timed out: kill it, start
    /// another at once.
    pub fn replace_kept(&mut self) {
        self.idle_conn = None;
        self.sup.replace();
    }

    /// Wait (up to `start_timeout`) until the keeper names a ready shared
    /// server. Err: the response was sent (503).
    fn ready_shared(
        &mut self,
        ex: &mut dyn Exchange,
        ctx: &mut Context<'_>,
    ) -> Result<(), Outcome> {
        // The keeper times the start-up out and says so; this is in case
        // it cannot.
        let deadline = Instant::now() + self.config.start_timeout + KEEPER_MARGIN;
        loop {
            if ctx.stop_deadline.is_some_and(|s| s <= Instant::now())
                || crate::sys::stop_requested()
            {
                return Err(finish_with_error(ex, 503, "The server is restarting."));
            }
            let Some(link) = self.link.as_mut() else {
                return Err(self.unavailable(ex));
            };
            match link.refresh().clone() {
                // The keeper has not noticed yet that it is gone.
                Told::Ready(pid, _)
                    if self
                        .broken
                        .is_some_and(|(p, at)| p == pid && at.elapsed() < BROKEN_WAIT) => {}
                Told::Ready(pid, addr) => {
                    self.broken = None;
                    if self
                        .current
                        .as_ref()
                        .is_none_or(|c| *c != (pid, addr.clone()))
                    {
                        self.current = Some((pid, addr));
                        self.idle_conn = None;
                    }
                    self.ever_ready = true;
                    return Ok(());
                }
                // The keeper logged why.
                Told::Failed(_) => return Err(self.unavailable(ex)),
                Told::Starting | Told::Nothing => self.broken = None,
            }
            if Instant::now() >= deadline {
                log::error!(
                    "{}: {}: the shared server was not ready within {:.1}s (start_timeout) (503)",
                    self.label,
                    ex.request().summary(),
                    self.config.start_timeout.as_secs_f64()
                );
                return Err(self.unavailable(ex));
            }
            let link = self.link.as_ref().and_then(Link::fd);
            if let Ok(r) = super::poll_round(None, [None, link, None], ctx.signals, TICK)
                && r.signal
            {
                ctx.on_signal();
            }
        }
    }

    /// The running process (a new one when none runs and the backoff
    /// allows). Err: none can be had now: `Some(when)` the backoff allows
    /// the next start, `None` it cannot be started (logged).
    fn start(&mut self) -> Result<(), Option<Instant>> {
        if self.dir.is_none() {
            return Err(None);
        }
        match self.sup.start() {
            Ok(_) => self.sync_current().map_err(|()| None),
            Err(StartError::Backoff(at)) => Err(Some(at)),
            Err(StartError::Spawn(e)) => {
                if let Some(n) = crate::log::once_a_minute(&format!("{}: spawn: {e}", self.label)) {
                    let why = crate::deploy::explain_start_failure(
                        &crate::config::AppConfig::Server(self.config.clone()),
                    )
                    .map(|why| format!("; {why}"))
                    .unwrap_or_default();
                    log::error!(
                        "{}: cannot start it: {e}{why}{}",
                        self.label,
                        crate::log::left_out(n)
                    );
                }
                self.start_failure = Some(format!("cannot start it: {e}"));
                Err(None)
            }
        }
    }

    /// Remove the private socket directory (made again if needed).
    fn remove_socket_dir(&self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(&dir.0);
        }
    }

    /// A process the supervisor started on its own (recycling after
    /// `max_requests`) is the current one from now on: its address, no
    /// kept connection to the one before. Err: it has no address.
    fn sync_current(&mut self) -> Result<(), ()> {
        let Some(pid) = self.sup.worker().map(|w| w.process.pid()) else {
            return Ok(());
        };
        if self.current.as_ref().is_none_or(|(p, _)| *p != pid) {
            let addr = self.spawned_at.borrow().clone();
            let Some(addr) = addr else { return Err(()) };
            self.current = Some((pid, addr));
            self.idle_conn = None;
            self.output.clear();
        }
        Ok(())
    }

    /// Read what the program wrote to stdout and stderr (log lines).
    fn drain_output(&mut self) {
        let mut buf = [0u8; 8192];
        let Some(w) = self.sup.worker() else { return };
        let mut got = Vec::new();
        for pipe in [0, 1] {
            loop {
                let r = if pipe == 0 {
                    w.pipes.stdout.read(&mut buf)
                } else {
                    w.pipes.stderr.read(&mut buf)
                };
                match r {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
        }
        if !got.is_empty() {
            self.output.push(&got);
        }
    }

    fn output_summary(&mut self) -> String {
        self.drain_output();
        self.output.flush();
        self.output.summary()
    }

    /// Has the current process exited? Handles it if so: a clean exit
    /// (status 0) starts another at once, anything else waits out the backoff.
    fn check_exited(&mut self, when: &str) -> bool {
        let status = self.sup.worker().and_then(|w| w.process.try_wait());
        let Some(status) = status else { return false };
        let pid = self.current.as_ref().map_or(0, |(p, _)| *p);
        let output = self.output_summary();
        self.idle_conn = None;
        if status.success() && self.sup.worker().is_some_and(|w| w.ready) {
            log::info!(
                "{}: (pid {pid}) exited with status 0 {when}; starting another",
                self.label
            );
            self.sup.replace();
        } else {
            log::warn!(
                "{}: (pid {pid}) {} {when}; {output}",
                self.label,
                DescribeExit(status)
            );
            self.sup.failed();
        }
        true
    }

    /// Move the start-up on without waiting long: ready once the address
    /// accepts connections (and `ready_path` answered 2xx).
    fn advance_startup(&mut self, started: Instant) -> Startup {
        if self.sync_current().is_err() {
            return Startup::Failed("it has no address".into());
        }
        let served = self.sup.worker().is_some_and(|w| w.ready);
        if served && self.exit_checked.elapsed() < EXIT_CHECK_EVERY {
            return Startup::Ready;
        }
        self.exit_checked = Instant::now();
        if self.check_exited(if served {
            "while idle"
        } else {
            "during start-up"
        }) {
            if served {
                // Not this start's fault: another one is on its way.
                return Startup::Waiting;
            }
            let why = self.output.summary();
            return Startup::Failed(format!("it exited during start-up; {why}"));
        }
        let Some(w) = self.sup.worker() else {
            return Startup::Failed("it is not running".into());
        };
        if w.ready {
            return Startup::Ready;
        }
        let Some((_, addr)) = self.current.clone() else {
            return Startup::Failed("it has no address".into());
        };
        let Ok(conn) = Stream::connect(&addr) else {
            return Startup::Waiting;
        };
        if let ServerKind::Http {
            ready_path: Some(path),
            script_name,
            ..
        } = &self.config.kind
        {
            let deadline = started + self.config.start_timeout;
            match self.ask_ready_path(conn, path, script_name.clone(), deadline) {
                Ok(status) if (200..300).contains(&status) => {}
                Ok(_) | Err(_) => return Startup::Waiting,
            }
        } else if matches!(self.config.kind, ServerKind::Http { .. }) {
            self.idle_conn = Some(conn);
        }
        self.sup.mark_ready();
        self.ever_ready = true;
        self.start_failure = None;
        if let Some(w) = self.sup.worker() {
            log::info!(
                "{}: ready in {:.2}s (pid {}, {addr})",
                self.label,
                w.started.elapsed().as_secs_f64(),
                w.process.pid()
            );
        }
        Startup::Ready
    }

    /// GET `path` on a fresh connection: the status it answers.
    fn ask_ready_path(
        &self,
        mut conn: Stream,
        path: &str,
        mode: crate::request::ScriptName,
        deadline: Instant,
    ) -> Result<u16, String> {
        let req = super::wsgi::warmup_request(path, &mode);
        let mut wire = wire_for(&self.config.kind, &self.limits, false);
        let mut out = Vec::new();
        wire.begin(&req, true, &mut out).map_err(|r| r.1)?;
        wire.end(&mut out);
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(5));
        let blocking = |s: &Stream| match s {
            Stream::Unix(s) => s
                .set_nonblocking(false)
                .and_then(|()| s.set_read_timeout(Some(wait.max(TICK)))),
            Stream::Tcp(s) => s
                .set_nonblocking(false)
                .and_then(|()| s.set_read_timeout(Some(wait.max(TICK)))),
        };
        blocking(&conn).map_err(|e| e.to_string())?;
        conn.write_all(&out).map_err(|e| e.to_string())?;
        let mut input = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).map_err(|e| e.to_string())?;
            input.extend_from_slice(&buf[..n]);
            match wire.decode(&input, n == 0)? {
                (_, Event::Head(head, _)) => return Ok(head.status()),
                (used, Event::Log(_)) => {
                    input.drain(..used);
                }
                _ if n == 0 => return Err("closed the connection".into()),
                _ => {}
            }
        }
    }

    /// Get a ready process, waiting (up to `start_timeout`) for its start-up.
    /// Err: the response was sent (503).
    fn ready(&mut self, ex: &mut dyn Exchange, ctx: &mut Context<'_>) -> Result<(), Outcome> {
        if self.link.is_some() {
            return self.ready_shared(ex, ctx);
        }
        let begun = Instant::now();
        let deadline = begun + self.config.start_timeout;
        loop {
            if ctx.stop_deadline.is_some_and(|s| s <= Instant::now())
                || crate::sys::stop_requested()
            {
                return Err(finish_with_error(ex, 503, "The server is restarting."));
            }
            match self.start() {
                Ok(()) => {}
                // After a process that served died (kill -9, OOM): the next
                // one is started as soon as the backoff allows.
                Err(Some(at)) if self.start_failure.is_none() && at < deadline => {
                    self.wait_a_tick(ctx);
                    continue;
                }
                // A failed start waits out its backoff; a request does not.
                Err(_) => return Err(self.unavailable(ex)),
            }
            let started = self.sup.worker().map_or(begun, |w| w.started);
            match self.advance_startup(started) {
                Startup::Ready => return Ok(()),
                Startup::Failed(why) => {
                    log::error!("{}: {why} (503)", self.label);
                    self.start_failure = Some(why);
                    return Err(self.unavailable(ex));
                }
                Startup::Waiting => {}
            }
            let now = Instant::now();
            let started_at = self.sup.worker().map_or(now, |w| w.started);
            if now >= deadline || now >= started_at + self.config.start_timeout {
                self.start_timed_out(" (503)");
                return Err(self.unavailable(ex));
            }
            self.wait_a_tick(ctx);
        }
    }

    /// The process did not become ready within `start_timeout`: killed,
    /// the backoff begins, and why (logged, with `suffix`) is remembered.
    fn start_timed_out(&mut self, suffix: &str) -> String {
        let output = self.output_summary();
        let why = format!(
            "it did not accept connections{} within {:.1}s (start_timeout); killed; {output}",
            self.ready_path_note(),
            self.config.start_timeout.as_secs_f64(),
        );
        log::error!("{}: {why}{suffix}", self.label);
        self.start_failure = Some(why.clone());
        self.sup.failed();
        why
    }

    fn ready_path_note(&self) -> String {
        match &self.config.kind {
            ServerKind::Http {
                ready_path: Some(p),
                ..
            } => format!(" (or GET {p} did not answer 2xx)"),
            _ => String::new(),
        }
    }

    /// Sleep up to [`TICK`], waking for a signal or the program's output.
    fn wait_a_tick(&mut self, ctx: &mut Context<'_>) {
        let stderr = self.sup.worker().map(|w| w.pipes.stderr.as_fd());
        if let Ok(r) = super::poll_round(None, [None, None, stderr], ctx.signals, TICK)
            && r.signal
        {
            ctx.on_signal();
        }
        self.drain_output();
    }

    fn unavailable(&self, ex: &mut dyn Exchange) -> Outcome {
        finish_with_error(
            ex,
            503,
            "The application could not be started; the server log says why.",
        )
    }

    /// A connection to the ready process: the kept one, or a new one.
    /// A connection to the ready process: the kept one (true), or a new one.
    fn connection(&mut self) -> io::Result<(Stream, bool)> {
        if let Some(conn) = self.idle_conn.take()
            && conn.still_idle()
        {
            return Ok((conn, true));
        }
        let Some((pid, addr)) = &self.current else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        // A dead server's port may already be another program's: no request
        // (with its cookies) goes there.
        if matches!(addr, Address::Port(_)) && crate::sys::process_gone(*pid) {
            return Err(io::Error::other(format!(
                "the server (pid {pid}) has ended"
            )));
        }
        Stream::connect(addr).map(|c| (c, false))
    }

    /// One request through a connection: `None` when nothing of it reached
    /// the application and it may go to a new process (the old one was
    /// found gone).
    /// The shared server in use cannot serve: forget it (and our kept
    /// connection to it) until its keeper names another (`ready_shared`
    /// waits out BROKEN_WAIT for a keeper that still names it). Its pid.
    fn drop_shared_server(&mut self) -> u32 {
        let pid = self.current.take().map_or(0, |(p, _)| p);
        self.idle_conn = None;
        self.broken = Some((pid, Instant::now()));
        pid
    }

    fn relay(&mut self, ex: &mut dyn Exchange, ctx: &mut Context<'_>) -> Option<Outcome> {
        let (mut conn, reused) = match self.connection() {
            Ok(c) => c,
            Err(e) if self.link.is_some() => {
                // Killed (kill -9, OOM): its keeper starts another; the
                // request waits for it (`ready_shared`).
                let pid = self.drop_shared_server();
                log::warn!(
                    "{}: {}: cannot connect to the shared server (pid {pid}): {e}; waiting for another",
                    self.label,
                    ex.request().summary()
                );
                return None;
            }
            Err(e) => {
                // Exited (php-cgi after its last request)? Then another may take it.
                if self
                    .sup
                    .worker()
                    .is_some_and(|w| w.process.wait_for(TICK).is_some())
                    && self.check_exited("between requests")
                {
                    return None;
                }
                let output = self.output_summary();
                log::error!(
                    "{}: {}: cannot connect: {e}; {output} (502)",
                    self.label,
                    ex.request().summary()
                );
                self.sup.failed();
                return Some(finish_with_error(ex, 502, ""));
            }
        };
        let head_request = ex.request().get("REQUEST_METHOD") == Some("HEAD");
        let mut wire = wire_for(&self.config.kind, &self.limits, head_request);
        let mut relay = Relay {
            out: Vec::new(),
            input: Vec::new(),
            body_done: false,
            half_closed: false,
            head_seen: false,
            eof: false,
            scratch: std::mem::take(&mut self.scratch),
            drained: Instant::now(),
            head_held: None,
        };
        // Records the front already holds (the end of an empty body).
        while ex.input_pending() && !ex.body_finished() {
            match ex.on_ready() {
                Ok(InputEvent::Progress) => {}
                Ok(InputEvent::Aborted) => return Some(Outcome::Aborted),
                Ok(InputEvent::Closed) | Err(_) => return Some(Outcome::FrontGone),
            }
        }
        let body_empty = ex.body_finished() && ex.body().is_empty();
        if let Err(Refusal(status, why)) = wire.begin(ex.request(), body_empty, &mut relay.out) {
            log::warn!(
                "{}: {}: {why} ({status})",
                self.label,
                ex.request().summary()
            );
            return Some(finish_with_error(ex, status, &why));
        }
        let deadline = Instant::now() + self.config.request_timeout;
        let result = self.drive(&mut relay, &mut *wire, &mut conn, ex, ctx, deadline);
        self.scratch = std::mem::take(&mut relay.scratch);
        match result {
            Ok(()) => {
                if !relay.body_done {
                    // The application answered without reading the whole
                    // body: the front drains the rest.
                    let n = ex.body().len();
                    ex.consume_body(n);
                } else if wire.reusable() && relay.out.is_empty() {
                    self.idle_conn = Some(conn);
                }
                self.sup.request_done();
                Some(Outcome::Done)
            }
            Err(Failure::Front(outcome)) => Some(outcome),
            Err(Failure::Timeout) if self.link.is_some() => {
                // As with a server of our own: a fresh one, from its keeper
                // (the other shims' requests to this one end with it).
                let pid = self.drop_shared_server();
                log::error!(
                    "{}: {}: no complete answer within {:.1}s (request_timeout); the shared server (pid {pid}) is replaced (504)",
                    self.label,
                    ex.request().summary(),
                    self.config.request_timeout.as_secs_f64()
                );
                if let Some(link) = &mut self.link {
                    link.ask_replace(pid);
                }
                Some(finish_with_error(ex, 504, ""))
            }
            Err(Failure::Timeout) => {
                let output = self.output_summary();
                log::error!(
                    "{}: {}: no complete answer within {:.1}s (request_timeout); process replaced; {output} (504)",
                    self.label,
                    ex.request().summary(),
                    self.config.request_timeout.as_secs_f64()
                );
                self.sup.replace();
                Some(finish_with_error(ex, 504, ""))
            }
            Err(Failure::Stopping) => Some(finish_with_error(ex, 503, "The server is restarting.")),
            // A kept connection the server closed just as the request went
            // out (its keep-alive timeout): a request without a body is
            // sent again on a new one.
            Err(Failure::App(_)) if reused && body_empty && !relay.head_seen && relay.eof => {
                log::debug!(
                    "{}: a kept connection was closed; sending again",
                    self.label
                );
                self.idle_conn = None;
                None
            }
            // The shared server was killed (kill -9, OOM) before it
            // answered: its address may already be another program's (a
            // port), so the request waits for the server its keeper starts.
            Err(Failure::App(why))
                if self.link.is_some()
                    && body_empty
                    && !relay.head_seen
                    && self
                        .current
                        .as_ref()
                        .is_some_and(|(pid, _)| crate::sys::process_gone(*pid)) =>
            {
                let pid = self.drop_shared_server();
                log::warn!(
                    "{}: {}: {why}, and the shared server (pid {pid}) is gone; waiting for another",
                    self.label,
                    ex.request().summary()
                );
                None
            }
            Err(Failure::App(why)) => {
                let died = self
                    .sup
                    .worker()
                    .and_then(|w| w.process.wait_for(Duration::from_millis(200)));
                let output = self.output_summary();
                let death = died
                    .map(|s| format!("; the process {}", DescribeExit(s)))
                    .unwrap_or_default();
                if died.is_some() {
                    self.idle_conn = None;
                    self.sup.failed();
                }
                let summary = ex.request().summary();
                if died.is_some() && body_empty && !relay.head_seen {
                    // It died before answering a request without a body
                    // (kill -9 just before it came): a new process takes it.
                    log::warn!(
                        "{}: {summary}: {why}{death}; {output}; sending it to a new process",
                        self.label
                    );
                    return None;
                }
                let sent = if relay.head_seen {
                    " (the response was cut short)"
                } else {
                    " (502)"
                };
                log::error!("{}: {summary}: {why}{death}; {output}{sent}", self.label);
                Some(finish_with_error(ex, 502, ""))
            }
        }
    }

    /// Move the request out and the answer back until the answer is complete.
    fn drive(
        &mut self,
        r: &mut Relay,
        wire: &mut dyn Wire,
        conn: &mut Stream,
        ex: &mut dyn Exchange,
        ctx: &mut Context<'_>,
        deadline: Instant,
    ) -> Result<(), Failure> {
        loop {
            // Body bytes into the protocol and on to the application.
            loop {
                if !r.body_done && r.out.len() < CHUNK {
                    let n = ex.body().len().min(CHUNK);
                    if n > 0 {
                        wire.body(&ex.body()[..n], &mut r.out);
                        ex.consume_body(n);
                    } else if ex.body_finished() {
                        wire.end(&mut r.out);
                        r.body_done = true;
                    }
                }
                if r.out.is_empty() {
                    break;
                }
                match conn.write(&r.out) {
                    Ok(n) => {
                        r.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // It stopped reading: what it answered may still come.
                        log::debug!("{}: writing the request: {e}", self.label);
                        r.out.clear();
                        r.body_done = true;
                        break;
                    }
                }
                let more = !r.body_done && (!ex.body().is_empty() || ex.body_finished());
                if !r.out.is_empty() || !more {
                    break;
                }
            }
            if r.body_done && r.out.is_empty() && !r.half_closed && wire.half_close() {
                conn.shutdown_write();
                r.half_closed = true;
            }
            // The answer, as far as it came.
            if self.forward(r, wire, ex)? {
                return Ok(());
            }
            if r.eof {
                return Err(Failure::App(if r.head_seen {
                    "it closed the connection in the middle of the response".into()
                } else {
                    "it closed the connection without answering".into()
                }));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Failure::Timeout);
            }
            if ctx.stop_deadline.is_some_and(|s| s <= now) {
                return Err(Failure::Stopping);
            }
            let want_read = ex.output_backlog() < OUTPUT_HIGH_WATER;
            // A head whose body has not come yet waits a moment for it
            // (an application that writes them apart): the front then
            // writes head, body and end in one go, one wake-up of the web
            // server instead of two or three.
            let held = r
                .head_held
                .map(|t| HEAD_HOLD.saturating_sub(t.elapsed()))
                .filter(|left| !left.is_zero());
            let front: Option<&dyn Exchange> = if held.is_some() { None } else { Some(&*ex) };
            let left = held.unwrap_or(deadline - now).min(deadline - now);
            let ready = self.poll(front, conn, !r.out.is_empty(), want_read, ctx, left);
            if ready.signal {
                ctx.on_signal();
            }
            // stderr wakes the poll; stdout (not polled) is read now and then.
            if ready.output || r.drained.elapsed() >= OUTPUT_DRAIN {
                self.drain_output();
                r.drained = Instant::now();
            }
            if ready.front {
                match ex.on_ready() {
                    Ok(InputEvent::Progress) => {}
                    Ok(InputEvent::Aborted) => return Err(Failure::Front(Outcome::Aborted)),
                    Ok(InputEvent::Closed) | Err(_) => {
                        return Err(Failure::Front(Outcome::FrontGone));
                    }
                }
            }
            if ready.conn_in {
                r.read(conn)
                    .map_err(|e| Failure::App(format!("reading its answer: {e}")))?;
            }
        }
    }

    /// Hand what was decoded to the front. Ok(true): the answer is complete.
    fn forward(
        &mut self,
        r: &mut Relay,
        wire: &mut dyn Wire,
        ex: &mut dyn Exchange,
    ) -> Result<bool, Failure> {
        loop {
            let (used, event) = wire.decode(&r.input, r.eof).map_err(Failure::App)?;
            let front_gone = |_| Failure::Front(Outcome::FrontGone);
            let done = match event {
                Event::NeedMore if used == 0 => return Ok(false),
                Event::NeedMore => false,
                Event::Head(head, body) => {
                    r.head_seen = true;
                    ex.send_head(&head).map_err(front_gone)?;
                    if body.is_empty() {
                        r.head_held = Some(Instant::now());
                    } else {
                        ex.send_body(&body).map_err(front_gone)?;
                    }
                    false
                }
                Event::Body(range) => {
                    if let Some(data) = r.input.get(range).filter(|d| !d.is_empty()) {
                        r.head_held = None;
                        ex.send_body(data).map_err(front_gone)?;
                    }
                    false
                }
                Event::Log(range) => {
                    if let Some(data) = r.input.get(range) {
                        self.output.push(data);
                    }
                    false
                }
                Event::End => true,
            };
            r.input.drain(..used.min(r.input.len()));
            if done {
                return Ok(true);
            }
            if used == 0 {
                return Ok(false);
            }
        }
    }

    fn poll(
        &mut self,
        ex: Option<&dyn Exchange>,
        conn: &Stream,
        want_write: bool,
        want_read: bool,
        ctx: &Context<'_>,
        left: Duration,
    ) -> Polled {
        let stderr = self.sup.worker().map(|w| w.pipes.stderr.as_fd());
        let c = conn.as_fd();
        match super::poll_round(
            ex,
            [want_write.then_some(c), want_read.then_some(c), stderr],
            ctx.signals,
            left.min(TICK * 5),
        ) {
            Ok(r) => Polled {
                front: r.front,
                conn_in: r.stdout,
                output: r.stderr,
                signal: r.signal,
            },
            Err(_) => Polled {
                front: false,
                conn_in: want_read,
                output: true,
                signal: false,
            },
        }
    }
}

struct Polled {
    front: bool,
    conn_in: bool,
    /// The program wrote to stderr.
    output: bool,
    signal: bool,
}

/// One request's bytes in flight.
struct Relay {
    /// Encoded request bytes not yet written.
    out: Vec<u8>,
    /// Answer bytes not yet decoded.
    input: Vec<u8>,
    body_done: bool,
    half_closed: bool,
    head_seen: bool,
    eof: bool,
    scratch: Box<[u8]>,
    /// When the program's output was last read.
    drained: Instant,
    /// Since when the response head waits for body bytes ([`HEAD_HOLD`]).
    head_held: Option<Instant>,
}

impl Relay {
    fn read(&mut self, conn: &mut Stream) -> io::Result<()> {
        // (Empty only if a request before ended without giving it back.)
        if self.scratch.is_empty() {
            self.scratch = vec![0; CHUNK].into_boxed_slice();
        }
        loop {
            match conn.read(&mut self.scratch) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.input.extend_from_slice(&self.scratch[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.eof = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How a relayed request failed.
enum Failure {
    /// The front went away or aborted.
    Front(Outcome),
    Timeout,
    Stopping,
    /// The application: what it did.
    App(String),
}

/// `max_requests`, or php-cgi's own PHP_FCGI_MAX_REQUESTS when that was set
/// in `env` (the shim recycles the process before php-cgi would exit).
fn max_requests(config: &ServerConfig) -> u64 {
    if config.max_requests > 0 {
        return config.max_requests;
    }
    config
        .env
        .iter()
        .find(|(n, _)| n == "PHP_FCGI_MAX_REQUESTS")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

impl Back for ServerBack {
    fn serve(&mut self, exchange: &mut dyn Exchange, ctx: &mut Context<'_>) -> Outcome {
        // Three rounds at most: a kept connection may turn out closed, and
        // then the process gone.
        for _ in 0..3 {
            if let Err(outcome) = self.ready(exchange, ctx) {
                return outcome;
            }
            if let Some(outcome) = self.relay(exchange, ctx) {
                return outcome;
            }
        }
        finish_with_error(exchange, 502, "")
    }

    fn idle(&mut self) {
        if let Some(link) = &mut self.link {
            // A killed keeper is replaced now, not by the next request.
            link.refresh();
            return;
        }
        self.drain_output();
        if self.check_exited("while idle") {
            return;
        }
        if self.sup.worker().is_none() && self.start_failure.is_none() {
            let _ = self.start();
        }
        if let Some(started) = self.sup.worker().filter(|w| !w.ready).map(|w| w.started)
            && let Startup::Failed(why) = self.advance_startup(started)
        {
            log::error!("{}: {why}", self.label);
            self.start_failure = Some(why);
        }
    }

    fn shutdown(&mut self) {
        // Our keeper stops the shared server when its last shim has gone.
        self.link = None;
        self.idle_conn = None;
        self.sup.stop(STOP_GRACE);
        self.current = None;
        // The shim may exit or re-exec without dropping us.
        self.remove_socket_dir();
    }

    fn app_started(&mut self) -> bool {
        self.ever_ready
    }

    /// A reload's new version: ready once its process accepts connections
    /// (and `ready_path` answered); the reload times it out.
    fn startup(&mut self) -> super::Startup {
        if let Some(link) = &mut self.link {
            return match link.refresh() {
                Told::Ready(..) => {
                    self.ever_ready = true;
                    super::Startup::Ready
                }
                Told::Failed(why) => super::Startup::Failed(format!("{}: {why}", self.label)),
                Told::Starting | Told::Nothing => super::Startup::Starting,
            };
        }
        if let Some(why) = &self.start_failure {
            return super::Startup::Failed(format!("{}: {why}", self.label));
        }
        self.drain_output();
        if self.sup.worker().is_none() && self.start().is_err() {
            return match &self.start_failure {
                Some(why) => super::Startup::Failed(format!("{}: {why}", self.label)),
                None => super::Startup::Starting,
            };
        }
        let started = self.sup.worker().map_or_else(Instant::now, |w| w.started);
        match self.advance_startup(started) {
            Startup::Ready => super::Startup::Ready,
            Startup::Waiting => super::Startup::Starting,
            Startup::Failed(why) => {
                self.start_failure = Some(why.clone());
                super::Startup::Failed(format!("{}: {why}", self.label))
            }
        }
    }

    /// Replaced by a reload: the process gets SIGTERM now and is reaped by
    /// [`stopped`](Back::stopped) (SIGKILL after its grace); nobody waits.
    fn begin_stop(&mut self) {
        self.link = None;
        self.idle_conn = None;
        self.current = None;
        self.sup.retire();
    }

    fn stopped(&mut self) -> bool {
        let done = self.sup.all_exited();
        if done {
            self.remove_socket_dir();
        }
        done
    }
}

/// Start the program for `config`, wait (up to `start_timeout`) until it
/// is ready, stop it. Err: why it is not.
pub fn preflight(config: ServerConfig, limits: Limits) -> Result<(), String> {
    let timeout = config.start_timeout;
    let mut back = ServerBack::new(config, limits);
    let begun = Instant::now();
    let result = loop {
        if back.start().is_err() {
            break Err(format!(
                "{}: {}",
                back.label,
                back.start_failure
                    .clone()
                    .unwrap_or_else(|| "cannot start it".into())
            ));
        }
        let started = back.sup.worker().map_or(begun, |w| w.started);
        match back.advance_startup(started) {
            Startup::Ready => break Ok(()),
            Startup::Failed(why) => break Err(format!("{}: {why}", back.label)),
            Startup::Waiting => {}
        }
        if begun.elapsed() >= timeout {
            let output = back.output_summary();
            break Err(format!(
                "{}: it did not accept connections{} within {:.1}s (start_timeout); {output}",
                back.label,
                back.ready_path_note(),
                timeout.as_secs_f64(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
        back.drain_output();
    };
    back.shutdown();
    result
}

//! Application processes: spawn, watch, stop.
//!
//! Owns: how every application process is started (its own process group,
//! PR_SET_PDEATHSIG so it dies with us, a clean environment plus the
//! configured one, its working directory, piped stdio) and how it is stopped
//! (SIGTERM to the group, a grace period, SIGKILL, reaped), by pid, also for
//! a process the image before a re-exec started (`Process::adopt`); telling the
//! group guard (`sys::GroupGuard`) about every group, so that the groups end
//! even if we are killed with SIGKILL; and, as a child subreaper, ending the
//! descendants that left their group (`end_orphans`). Every back that runs a
//! process uses this; none re-implements it.
//! Must not: speak any protocol with the application.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::sys::{self, GroupGuard};

/// Default PATH for applications when the shim's own environment has none
/// (mod_fastcgi starts applications with an empty environment).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How to start an application process.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// The complete environment (nothing is inherited).
    pub env: Vec<(OsString, OsString)>,
    pub workdir: Option<PathBuf>,
    /// How the processes it may start are ended if we die by SIGKILL.
    pub descendants: Descendants,
    /// Fds of ours (3 or above) the process inherits under the same numbers.
    pub inherit_fds: Vec<RawFd>,
    /// A listening socket given as the process's fd 0 (how mod_fcgid starts
    /// a FastCGI program) instead of a pipe: its [`Stdio3::stdin`] is `None`.
    pub stdin_socket: Option<Arc<OwnedFd>>,
}

/// What makes sure an application's whole process group ends with us, even
/// when we are killed with SIGKILL (PR_SET_PDEATHSIG reaches only its leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descendants {
    /// Arbitrary programs (CGI): the leader gets SIGKILL when we die, and the
    /// process-group guard (`sys::GroupGuard`, one small process per shim,
    /// started with the first such group) ends the rest of its group.
    Guarded,
    /// Our own WSGI adapter: the leader gets SIGTERM when we die and ends its
    /// group itself. No guard process needed.
    LeaderEndsGroup,
}

/// A running application process, leader of its own process group (our
/// child: spawned by this image, or by the image before a re-exec).
#[derive(Debug)]
pub struct Process {
    pid: u32,
    pgid: u32,
    status: Option<ExitStatus>,
    guarded: bool,
}

/// The pipes of a freshly spawned process.
pub struct Stdio3 {
    /// `None` when the process was given a socket on fd 0.
    pub stdin: Option<ChildStdin>,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

impl Stdio3 {
    /// The pipes' fds: stdin (if piped), stdout, stderr.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let stdin = self.stdin.as_ref().map(AsFd::as_fd);
        stdin
            .into_iter()
            .chain([self.stdout.as_fd(), self.stderr.as_fd()])
            .collect()
    }
}

impl Process {
    /// Start `spec` with piped stdin, stdout and stderr.
    pub fn spawn(spec: &SpawnSpec) -> io::Result<(Process, Stdio3)> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &spec.stdin_socket {
            Some(socket) => command.stdin(Stdio::from(socket.try_clone()?)),
            None => command.stdin(Stdio::piped()),
        };
        if let Some(dir) = &spec.workdir {
            command.current_dir(dir);
        }
        let guarded = spec.descendants == Descendants::Guarded;
        let death_signal = if guarded {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        sys::set_child_dies_with_parent(&mut command, death_signal);
        for &fd in &spec.inherit_fds {
            sys::keep_open_across_exec(&mut command, fd);
        }
        ensure_subreaper();
        // Registered before anyone can list our children again: another
        // thread ending orphans must not take it for one.
        let mut groups = lock(&GROUPS);
        let mut child = command.spawn()?;
        let pgid = child.id();
        groups.push(pgid);
        drop(groups);
        if guarded {
            guard_watch(pgid);
        }
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        // From here on it is waited for by pid (a `Child` does nothing
        // when dropped): the same whether we spawned it or adopted it.
        drop(child);
        let process = Process {
            pid: pgid,
            pgid,
            status: None,
            guarded,
        };
        let (stdin, Some(stdout), Some(stderr)) = pipes else {
            // Invariant: both were configured as piped above.
            let mut p = process;
            p.kill();
            return Err(io::Error::other("spawned process is missing a pipe"));
        };
        Ok((
            process,
            Stdio3 {
                stdin,
                stdout,
                stderr,
            },
        ))
    }

    /// A process the image before a re-exec spawned (the leader of its own
    /// group, still our child: exec keeps the pid), with its pipes.
    pub fn adopt(pid: u32, pipes: Stdio3) -> (Process, Stdio3) {
        ensure_subreaper();
        lock(&GROUPS).push(pid);
        (
            Process {
                pid,
                pgid: pid,
                status: None,
                guarded: false,
            },
            pipes,
        )
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Has it exited? Reaps it if so.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = sys::try_wait(self.pid);
        }
        self.status
    }

    /// Wait up to `limit` for the process to exit on its own.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL the whole group at once and reap the leader.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        sys::signal_group(self.pgid, Signal::SIGKILL);
        self.wait_for(Duration::from_secs(1))
    }

    /// SIGTERM the group, give it `grace`, then SIGKILL what is left; reap the leader.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            sys::signal_group(self.pgid, Signal::SIGTERM);
            if self.wait_for(grace).is_none() {
                return self.kill();
            }
        }
        self.end_stragglers(grace);
        self.status
    }

    /// After the leader exited: SIGTERM, then SIGKILL, whatever else is still
    /// in its group (background processes it left behind), so nothing outlives
    /// the request.
    pub fn end_stragglers(&mut self, grace: Duration) {
        if !sys::group_alive(self.pgid) {
            return;
        }
        sys::signal_group(self.pgid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while sys::group_alive(self.pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        sys::signal_group(self.pgid, Signal::SIGKILL);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
        } else {
            sys::signal_group(self.pgid, Signal::SIGKILL);
        }
        if self.guarded {
            guard_forget(self.pgid);
        }
        // One entry: a reaped pid may already lead a newer `Process`.
        let mut groups = lock(&GROUPS);
        if let Some(at) = groups.iter().position(|g| *g == self.pgid) {
            groups.swap_remove(at);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// Orphans: descendants that left their process group (`setsid()`, even with
// SIGTERM ignored). We are a child subreaper, so when their parent exits
// they become our children; they are ended after each CGI request and on
// stop.

/// The process groups of our live `Process`es (leader pid = group id).
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// The pid of the group guard (a child of ours), 0 if none.
static GUARD_PID: AtomicU32 = AtomicU32::new(0);
/// The pid that made itself a child subreaper: the flag is not inherited by
/// fork (prefork workers set it again), and set again after a re-exec.
static SUBREAPER: AtomicU32 = AtomicU32::new(0);

/// How long orphans get after SIGTERM before SIGKILL.
pub const ORPHAN_GRACE: Duration = Duration::from_millis(200);
/// How long, after the SIGKILL, we wait for them (and for the groups just
/// ended) to be gone before we give up.
const ORPHAN_KILL_WAIT: Duration = Duration::from_millis(300);

/// Become a child subreaper once per process, before its first child.
fn ensure_subreaper() {
    let me = sys::pid();
    if SUBREAPER.swap(me, Ordering::SeqCst) == me {
        return;
    }
    if let Err(e) = sys::become_child_subreaper() {
        log::warn!(
            "cannot become a child subreaper ({e}; Linux 3.4 or later is needed): \
             processes an application starts in a session of their own may outlive the shim"
        );
    }
}

/// Start this executable again (`/proc/self/exe`, whatever its file is now)
/// with `args`, as a process of its own outside our process tree: its
/// parent is not us, and as an orphan it does not come back to us (we stop
/// being a child subreaper while it is started). It runs in a session of
/// its own, with stdin and stdout on /dev/null, our stderr (the log), and
/// `keep` as its fd `at`. The site's keeper (`back::shared`) is started this
/// way: it must outlive the shim that starts it, and it ends itself.
pub fn spawn_detached(args: &[OsString], keep: BorrowedFd<'_>, at: RawFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let subreaper = SUBREAPER.load(Ordering::SeqCst) == sys::pid();
    if subreaper {
        nix::sys::prctl::set_child_subreaper(false)?;
    }
    let from = keep.as_raw_fd();
    let mut command = Command::new("/proc/self/exe");
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES");
    if let Ok(me) = std::env::current_exe() {
        command.arg0(me);
    }
    // SAFETY: only async-signal-safe calls (setsid, fork, _exit, dup2,
    // fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            match libc::fork() {
                -1 => return Err(io::Error::last_os_error()),
                0 => {}
                // The middle process: gone at once, its child is an orphan
                // (its exec still reports to the parent's spawn).
                _ => libc::_exit(0),
            }
            let moved = if from == at {
                libc::fcntl(at, libc::F_SETFD, 0)
            } else {
                libc::dup2(from, at)
            };
            if moved < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let result = command
        .spawn()
        .and_then(|mut middle| middle.wait())
        .map(|_| ());
    if subreaper && let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!("cannot become a child subreaper again: {e}");
    }
    result
}

/// End every child of ours that is none of our own processes: the orphans
/// an application left behind (SIGTERM, `ORPHAN_GRACE`, SIGKILL; each in
/// its own group too when it leads one), reaping them; and wait, within the
/// same bounds, for `ended` (groups just killed) to empty, since their
/// members re-parent to us only as they die. Spared: the processes of a live
/// `Process` and their groups, the guard, and children in our own process
/// group (a reload's `check`, prefork workers). Blocks at most
/// `ORPHAN_GRACE + ORPHAN_KILL_WAIT`; once a stop was asked for, orphans get
/// SIGKILL at once.
pub fn end_orphans(ended: &[u32]) {
    // (Also before this image spawned anything: the flag survives a
    // re-exec, and so may orphans of the image before.)
    let ours = sys::own_pgid();
    let guard = GUARD_PID.load(Ordering::SeqCst);
    // Stopping: the web server's SIGKILL may be close (mod_fcgid: 3 s after
    // SIGTERM), and their parents had their grace already.
    let grace = if sys::stop_requested() {
        Duration::ZERO
    } else {
        ORPHAN_GRACE
    };
    let term_until = Instant::now() + grace;
    let give_up = term_until + ORPHAN_KILL_WAIT;
    let mut seen: Vec<u32> = Vec::new();
    loop {
        let now = Instant::now();
        let mut live = 0;
        {
            let groups = lock(&GROUPS);
            for c in sys::children() {
                if c.pgid == ours || groups.contains(&c.pgid) {
                    continue;
                }
                if c.zombie {
                    sys::reap(c.pid, false);
                    continue;
                }
                if c.pid == guard {
                    continue;
                }
                live += 1;
                // A member of a group just ended that re-parented to us on
                // its way out (a shell between fork and exec): it got its
                // SIGKILL with the group; no warning, it did not escape.
                if ended.contains(&c.pgid) {
                    sys::signal_process(c.pid, Signal::SIGKILL);
                    continue;
                }
                let first_seen = !seen.contains(&c.pid);
                if first_seen {
                    log::warn!(
                        "process {} ({}) outlived the application process that started it, \
                         in a session or process group of its own; ending it",
                        c.pid,
                        c.name
                    );
                    seen.push(c.pid);
                }
                let signal = if now >= term_until {
                    Signal::SIGKILL
                } else if first_seen {
                    Signal::SIGTERM
                } else {
                    continue;
                };
                if c.pgid == c.pid {
                    sys::signal_group(c.pid, signal);
                }
                sys::signal_process(c.pid, signal);
            }
        }
        let waiting = live > 0 || ended.iter().any(|&g| sys::group_alive(g));
        if !waiting || now >= give_up {
            return;
        }
        std::thread::sleep(Duration::from_millis(if live > 0 { 5 } else { 1 }));
    }
}

/// The group guard (see `sys::GroupGuard`), started with the first application
/// process; `None` if it could not be started (said once in the log).
static GUARD: Mutex<Option<Option<GroupGuard>>> = Mutex::new(None);

fn with_guard(f: impl FnOnce(&GroupGuard) -> io::Result<()>) {
    let mut slot = lock(&GUARD);
    let guard = slot.get_or_insert_with(|| match start_known_guard() {
        Ok(g) => Some(g),
        Err(e) => {
            log::warn!(
                "cannot start the process-group guard ({e}): if the shim is killed with SIGKILL, \
                 processes started by the application may outlive it"
            );
            None
        }
    });
    if let Some(g) = guard
        && let Err(e) = f(g)
    {
        log::warn!("the process-group guard is gone ({e}); continuing without it");
        *slot = Some(None);
    }
}

/// Start the guard, its pid known before another thread's `end_orphans`
/// can list it (the lock it takes).
fn start_known_guard() -> io::Result<GroupGuard> {
    let _groups = lock(&GROUPS);
    let guard = GroupGuard::start()?;
    GUARD_PID.store(guard.pid(), Ordering::SeqCst);
    Ok(guard)
}

/// Start the guard now (if not yet): a prefork manager does this before it
/// forks its workers, so that they all share one guard process.
pub fn start_guard() {
    with_guard(|_| Ok(()));
}

fn guard_watch(pgid: u32) {
    with_guard(|g| g.watch(pgid));
}

fn guard_forget(pgid: u32) {
    with_guard(|g| g.forget(pgid));
}

/// Close our end of the guard's pipe before a re-exec (it is close-on-exec
/// anyway; this makes the order explicit): the guard then ends whatever
/// groups it still knows and exits, and the new image starts its own.
pub fn release_guard() {
    let mut slot = GUARD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *slot = None;
}

/// An exit status in words: "exited with status 3" / "was killed by signal 11 (SIGSEGV)".
pub struct DescribeExit(pub ExitStatus);

impl fmt::Display for DescribeExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = self.0.code() {
            write!(f, "exited with status {code}")
        } else if let Some(sig) = self.0.signal() {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("unknown");
            let core = if self.0.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            write!(f, "was killed by signal {sig} ({name}{core})")
        } else {
            write!(f, "ended with {:?}", self.0)
        }
    }
}

/// The environment applications start from: PATH (ours, or a default).
pub fn base_env() -> Vec<(OsString, OsString)> {
    let path = std::env::var_os("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    vec![("PATH".into(), path)]
}

// ---------------------------------------------------------------------------
// Supervisor: one persistent application process (issue 3). Generic: any back
// that keeps a process between requests (a WSGI worker, an HTTP server)
// uses it; the back speaks its protocol and tells the supervisor how it went.

/// First delay before restarting a process that failed; doubles per
/// consecutive failure.
pub const RESTART_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest delay between restarts.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a process being replaced gets after SIGTERM before SIGKILL.
pub const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// What [`Supervisor::set_before_spawn`] takes.
pub type BeforeSpawn = Box<dyn FnMut(&mut SpawnSpec) -> io::Result<()>>;

/// The running process of a [`Supervisor`], with its pipes.
pub struct Worker {
    pub process: Process,
    pub pipes: Stdio3,
    /// Has the back seen it ready (its handshake done)?
    pub ready: bool,
    pub started: Instant,
    /// Requests completed by this process.
    pub served: u64,
}

/// Why no worker can be had right now.
#[derive(Debug)]
pub enum StartError {
    /// It failed recently; the next start is allowed at this instant.
    Backoff(Instant),
    /// It could not be spawned at all.
    Spawn(io::Error),
}

/// Keeps one application process running: started at once, restarted with
/// backoff (0.1 s doubling to 10 s) after consecutive failures, recycled after
/// `max_requests`, replaced at once when the back gives up on it (a timeout),
/// stopped with SIGTERM, a grace period and SIGKILL. Processes on their way
/// out are reaped without blocking the request at hand.
pub struct Supervisor {
    spec: SpawnSpec,
    /// Called with the spec before each spawn (a server program gets a fresh
    /// private address each time: see `back::server`).
    before_spawn: Option<BeforeSpawn>,
    max_requests: u64,
    current: Option<Worker>,
    failures: u32,
    next_start: Option<Instant>,
    retiring: Vec<(Process, Instant)>,
}

impl Supervisor {
    /// `max_requests` = 0: never recycle.
    pub fn new(spec: SpawnSpec, max_requests: u64) -> Supervisor {
        Supervisor {
            spec,
            before_spawn: None,
            max_requests,
            current: None,
            failures: 0,
            next_start: None,
            retiring: Vec::new(),
        }
    }

    /// A supervisor whose worker runs already: one the image before a
    /// re-exec started and validated (see `Process::adopt`).
    pub fn with_worker(spec: SpawnSpec, max_requests: u64, worker: Worker) -> Supervisor {
        let mut sup = Supervisor::new(spec, max_requests);
        sup.current = Some(worker);
        sup
    }

    /// Call `hook` on the spec before each spawn; an error is a failed start.
    pub fn set_before_spawn(&mut self, hook: BeforeSpawn) {
        self.before_spawn = Some(hook);
    }

    /// The running worker, if any.
    pub fn worker(&mut self) -> Option<&mut Worker> {
        self.current.as_mut()
    }

    /// Consecutive failures since the last request served.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The running worker, or a new one when none runs and the backoff allows.
    pub fn start(&mut self) -> Result<&mut Worker, StartError> {
        self.reap_retiring();
        if self.current.is_none() {
            if let Some(at) = self.next_start.filter(|at| *at > Instant::now()) {
                return Err(StartError::Backoff(at));
            }
            if let Some(hook) = &mut self.before_spawn
                && let Err(e) = hook(&mut self.spec)
            {
                self.note_failure();
                return Err(StartError::Spawn(e));
            }
            let spawned = Process::spawn(&self.spec);
            // A socket for fd 0 belongs to that process alone: with our copy
            // closed, a connection after it exited is refused, not left waiting.
            // (A `before_spawn` hook gives the next process its own.)
            if self.before_spawn.is_some() {
                self.spec.stdin_socket = None;
            }
            let (process, pipes) = spawned.map_err(|e| {
                self.note_failure();
                StartError::Spawn(e)
            })?;
            for fd in pipes.fds() {
                sys::set_nonblocking(fd).map_err(StartError::Spawn)?;
            }
            self.current = Some(Worker {
                process,
                pipes,
                ready: false,
                started: Instant::now(),
                served: 0,
            });
        }
        match self.current.as_mut() {
            Some(w) => Ok(w),
            // Invariant: set just above when it was None.
            None => Err(StartError::Spawn(io::Error::other("no worker"))),
        }
    }

    /// The worker finished its start-up handshake.
    pub fn mark_ready(&mut self) {
        if let Some(w) = &mut self.current {
            w.ready = true;
        }
    }

    /// The worker completed a request; recycle it after `max_requests`
    /// (a fresh one is started at once, so the next request does not wait).
    pub fn request_done(&mut self) {
        self.requests_done(1);
    }

    /// The worker completed `n` requests (it served them on its own).
    pub fn requests_done(&mut self, n: u64) {
        self.failures = 0;
        self.next_start = None;
        let Some(w) = &mut self.current else { return };
        w.served += n;
        let served = w.served;
        if self.max_requests > 0 && served >= self.max_requests {
            log::info!(
                "{}: recycling after {served} requests (max_requests)",
                self.name()
            );
            self.retire();
            let _ = self.start();
        }
    }

    /// The worker failed (died, could not start, broke its protocol): kill
    /// what is left of it; the next start waits out the backoff.
    pub fn failed(&mut self) {
        if let Some(mut w) = self.current.take() {
            w.process.kill();
        }
        self.note_failure();
    }

    /// The back gave up on the worker (a request timed out): kill it and
    /// start a fresh one at once.
    pub fn replace(&mut self) {
        if let Some(mut w) = self.current.take() {
            w.process.kill();
        }
        let _ = self.start();
    }

    /// Stop the worker and everything retiring: SIGTERM, `grace`, SIGKILL;
    /// then end what they left behind outside their groups (`end_orphans`).
    pub fn stop(&mut self, grace: Duration) {
        let mut ended = Vec::new();
        if let Some(mut w) = self.current.take() {
            drop(w.pipes);
            w.process.stop(grace);
            ended.push(w.process.pgid);
        }
        for (mut p, _) in self.retiring.drain(..) {
            p.stop(grace);
            ended.push(p.pgid);
        }
        end_orphans(&ended);
    }

    /// Requests the worker may still serve before it is recycled (None: no limit).
    pub fn requests_left(&self) -> Option<u64> {
        let served = self.current.as_ref().map_or(0, |w| w.served);
        (self.max_requests > 0).then(|| self.max_requests.saturating_sub(served))
    }

    /// The program's name for log lines.
    pub fn name(&self) -> String {
        std::path::Path::new(&self.spec.program)
            .display()
            .to_string()
    }

    fn note_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let delay = RESTART_BACKOFF_FIRST
            .saturating_mul(1u32 << (self.failures - 1).min(16))
            .min(RESTART_BACKOFF_MAX);
        self.next_start = Some(Instant::now() + delay);
    }

    /// Has everything it ran exited (reaped now if so)? Nothing running,
    /// nothing retiring.
    pub fn all_exited(&mut self) -> bool {
        self.reap_retiring();
        self.current.is_none() && self.retiring.is_empty()
    }

    /// Close the worker's pipes and SIGTERM it; it is reaped later
    /// ([`all_exited`](Self::all_exited), or SIGKILL after its grace).
    pub fn retire(&mut self) {
        if let Some(w) = self.current.take() {
            drop(w.pipes);
            sys::signal_group(w.process.pgid, Signal::SIGTERM);
            self.retiring
                .push((w.process, Instant::now() + RETIRE_GRACE));
        }
    }

    /// Reap retired processes that exited; SIGKILL those past their grace.
    fn reap_retiring(&mut self) {
        let now = Instant::now();
        self.retiring.retain_mut(|(p, deadline)| {
            if p.try_wait().is_some() {
                sys::signal_group(p.pgid, Signal::SIGKILL);
                return false;
            }
            if now >= *deadline {
                p.kill();
                return false;
            }
            true
        });
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

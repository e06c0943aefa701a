//! Application processes: spawn, watch, stop.
//!
//! Owns: how every application process is started (its own process group,
//! PR_SET_PDEATHSIG so it dies with us, a clean environment plus the
//! configured one, its working directory, piped stdio) and how it is stopped
//! (SIGTERM to the group, a grace period, SIGKILL, reaped); and telling the
//! group guard (`sys::GroupGuard`) about every group, so that the groups end
//! even if we are killed with SIGKILL. Every back that runs a process uses
//! this; none re-implements it.
//! Must not: speak any protocol with the application.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;
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
}

/// A running application process, leader of its own process group.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pgid: u32,
    status: Option<ExitStatus>,
}

/// The pipes of a freshly spawned process.
pub struct Stdio3 {
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

impl Process {
    /// Start `spec` with piped stdin, stdout and stderr.
    pub fn spawn(spec: &SpawnSpec) -> io::Result<(Process, Stdio3)> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &spec.workdir {
            command.current_dir(dir);
        }
        sys::set_child_dies_with_parent(&mut command);
        let mut child = command.spawn()?;
        let pgid = child.id();
        guard_watch(pgid);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Invariant: all three were configured as piped above.
            let mut p = Process {
                child,
                pgid,
                status: None,
            };
            p.kill();
            return Err(io::Error::other("spawned process is missing a pipe"));
        };
        Ok((
            Process {
                child,
                pgid,
                status: None,
            },
            Stdio3 {
                stdin,
                stdout,
                stderr,
            },
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has it exited? Reaps it if so.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
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
        guard_forget(self.pgid);
    }
}

/// The group guard (see `sys::GroupGuard`), started with the first application
/// process; `None` if it could not be started (said once in the log).
static GUARD: Mutex<Option<Option<GroupGuard>>> = Mutex::new(None);

fn with_guard(f: impl FnOnce(&GroupGuard) -> io::Result<()>) {
    let mut slot = GUARD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let guard = slot.get_or_insert_with(|| match GroupGuard::start() {
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

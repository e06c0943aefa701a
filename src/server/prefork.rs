//! `method=prefork` (runfcgi's `prefork` / `fork`): a manager process keeps
//! between `minspare` and `maxspare` idle worker processes, never more than
//! `maxchildren`, and replaces workers that exit (after `maxrequests`, or by
//! dying).
//!
//! Owns: forking workers, their busy/idle reports (one byte each over a pipe
//! per worker; end-of-file means the worker is gone), retiring spare ones
//! (by closing the worker's control pipe, which it looks at only between
//! connections: a signal could cut off a connection it has just accepted),
//! and stopping them all (SIGTERM, a bounded wait, SIGKILL).
//! Must not: run an application in the manager: it stays single-threaded so
//! that forking is sound, and each worker builds its own [`crate::back::Back`].

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::Signal;

use super::worker::{self, Bounds, Listener, Status};
use crate::back::{self, STOP_GRACE};
use crate::config::Config;
use crate::sys::{self, Forked, SignalPipe};

/// How long the manager sleeps when nothing happens.
const TICK: Duration = Duration::from_millis(500);
/// Pause before starting workers again after one could not be started or died at once.
const RESPAWN_PAUSE: Duration = Duration::from_secs(1);

/// A worker process as the manager sees it.
struct Child {
    pid: u32,
    /// Read end of the worker's status pipe.
    status: File,
    /// Write end of the worker's control pipe: dropped to retire it.
    control: Option<OwnedFd>,
    busy: bool,
    /// It has accepted a connection at least once.
    worked: bool,
    retiring: bool,
    started: Instant,
}

/// Run the manager until a stop signal; then stop every worker.
///
/// `on_tick` runs in the manager at least every tick (standalone reload).
pub fn run(
    listener: &Listener,
    config: &Config,
    bounds: Bounds,
    signals: &SignalPipe,
    on_tick: &mut dyn FnMut(),
) {
    let mut children: Vec<Child> = Vec::new();
    let mut paused_until: Option<Instant> = None;
    // Inherited by every worker (each then has its own).
    super::keep_fd_in_reserve();
    bounds.log_start("prefork");
    while !sys::stop_requested() {
        on_tick();
        if sys::stop_requested() {
            break;
        }
        let idle = children.iter().filter(|c| !c.busy && !c.retiring).count();
        let live = children.iter().filter(|c| !c.retiring).count();
        let (start, retire) = bounds.plan(idle, live);
        if paused_until.is_none_or(|t| Instant::now() >= t) {
            paused_until = None;
            for _ in 0..start {
                match spawn(listener, config, bounds, &mut children) {
                    Ok(child) => children.push(child),
                    Err(e) => {
                        let cause = format!("prefork: spawn: {}", e.raw_os_error().unwrap_or(0));
                        if let Some(n) = crate::log::once_a_minute(&cause) {
                            log::error!(
                                "prefork: cannot start a worker: {e} (while none runs, visitors \
                                 get a 503){}",
                                crate::log::left_out(n)
                            );
                        }
                        paused_until = Some(Instant::now() + RESPAWN_PAUSE);
                        break;
                    }
                }
            }
        }
        for child in children
            .iter_mut()
            .filter(|c| !c.busy && !c.retiring)
            .take(retire)
        {
            log::debug!("prefork: retiring spare worker {}", child.pid);
            child.retiring = true;
            child.control = None;
        }
        // No worker to accept (none could be started): the manager answers
        // the visitors 503 itself rather than leave them waiting.
        let unserved = children.iter().all(|c| c.retiring);
        if wait_for_reports(&mut children, signals, unserved.then_some(listener), TICK) {
            let refused = |conn| super::refuse_allowed(conn, listener, config.limits, signals);
            if let Some(conn) = super::accept(listener.fd.as_fd(), refused) {
                super::refuse_allowed(conn, listener, config.limits, signals);
            }
        }
        let before = children.len();
        children.retain_mut(|c| {
            if read_reports(c) {
                return true;
            }
            sys::reap(c.pid, true);
            // A worker that dies before serving anything, soon after it
            // started, is a crash loop in the making: pause respawning.
            if !c.retiring
                && !c.worked
                && c.started.elapsed() < RESPAWN_PAUSE
                && !sys::stop_requested()
            {
                log::error!("prefork: worker {} exited right after starting", c.pid);
                paused_until = Some(Instant::now() + RESPAWN_PAUSE);
            }
            false
        });
        if children.len() < before {
            log::debug!(
                "prefork: {} worker(s) exited, {} left",
                before - children.len(),
                children.len()
            );
        }
    }
    stop_all(&mut children, signals);
}

/// Poll the signal pipe and every status pipe.
fn wait_for_reports(
    children: &mut [Child],
    signals: &SignalPipe,
    listener: Option<&Listener>,
    timeout: Duration,
) -> bool {
    let mut fds = Vec::with_capacity(children.len() + 2);
    fds.push(PollFd::new(signals.fd(), PollFlags::POLLIN));
    // The listener, when given, goes last: ready means a visitor waits.
    for c in children.iter() {
        fds.push(PollFd::new(c.status.as_fd(), PollFlags::POLLIN));
    }
    if let Some(l) = listener {
        fds.push(PollFd::new(l.fd.as_fd(), PollFlags::POLLIN));
    }
    let _ = poll(&mut fds, sys::poll_timeout(timeout));
    if fds[0].revents().is_some_and(|r| !r.is_empty()) {
        signals.drain();
    }
    listener.is_some()
        && fds
            .last()
            .and_then(PollFd::revents)
            .is_some_and(|r| !r.is_empty())
}

/// Read a worker's reports; `false` when it is gone (end of file).
fn read_reports(child: &mut Child) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match child.status.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if let Some(last) = buf[..n].last() {
                    child.busy = *last == b'B';
                }
                child.worked |= buf[..n].contains(&b'B');
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true, // EAGAIN: nothing more now
        }
    }
}

fn spawn(
    listener: &Listener,
    config: &Config,
    bounds: Bounds,
    children: &mut Vec<Child>,
) -> std::io::Result<Child> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    sys::set_nonblocking(read.as_fd())?;
    let (control_read, control_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    sys::set_nonblocking(control_read.as_fd())?;
    let manager = sys::pid();
    match sys::fork_single_threaded()? {
        Forked::Parent { child } => {
            drop(write);
            drop(control_read);
            log::debug!("prefork: started worker {child}");
            Ok(Child {
                pid: child,
                status: File::from(read),
                control: Some(control_write),
                busy: false,
                worked: false,
                retiring: false,
                started: Instant::now(),
            })
        }
        Forked::Child => {
            drop(read);
            drop(control_write);
            // The other workers' pipes are the manager's business.
            children.clear();
            worker_main(listener, config, bounds, write, control_read, manager)
        }
    }
}

/// The body of a worker process; never returns into the manager's loop.
fn worker_main(
    listener: &Listener,
    config: &Config,
    bounds: Bounds,
    status: OwnedFd,
    control: OwnedFd,
    manager: u32,
) -> ! {
    if let Err(e) = sys::die_with_parent(manager, Signal::SIGTERM) {
        log::error!("prefork worker: cannot arrange to stop with the manager: {e}");
        std::process::exit(1);
    }
    // A pipe of its own: the manager's self-pipe is the manager's.
    let signals = match sys::install_signal_handlers() {
        Ok(s) => s,
        Err(e) => {
            log::error!("prefork worker: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let mut status = File::from(status);
    let mut report = |s: Status| {
        let _ = status.write_all(if s == Status::Busy { b"B" } else { b"I" });
    };
    // The manager closes the control pipe (or dies): time to go.
    let control = File::from(control);
    let retire = || {
        !matches!((&control).read(&mut [0u8; 1]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted))
    };
    let mut back = back::from_config(config);
    let end = worker::run(
        worker::Worker {
            listener,
            limits: config.limits,
            signals: &signals,
            maxrequests: bounds.maxrequests,
            alone: false,
            retire: &retire,
            report: &mut report,
        },
        back.as_mut(),
    );
    back.shutdown();
    log::debug!("prefork worker exits ({end:?})");
    std::process::exit(0);
}

/// SIGTERM every worker, wait for them (requests in flight get
/// [`STOP_GRACE`]), then SIGKILL what is left.
fn stop_all(children: &mut Vec<Child>, signals: &SignalPipe) {
    let signal = sys::last_signal();
    let name = Signal::try_from(signal)
        .map(|s| s.as_str())
        .unwrap_or("a signal");
    log::info!("{name} received: stopping {} worker(s)", children.len());
    for c in children.iter() {
        sys::signal_process(c.pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE + Duration::from_secs(1);
    while !children.is_empty() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        wait_for_reports(children, signals, None, left.min(TICK));
        children.retain_mut(|c| read_reports(c) || !sys::reap(c.pid, true));
    }
    for c in children.drain(..) {
        log::warn!("prefork: worker {} did not stop in time; killing it", c.pid);
        sys::signal_process(c.pid, Signal::SIGKILL);
        sys::reap(c.pid, true);
    }
}

//! The accept loop and its concurrency.
//!
//! Owns: accepting connections on the listening socket and handing each to its
//! front, one at a time ("single": what mod_fcgid wants, since it sends one
//! request per process at a time); reacting to stop signals between requests;
//! asking `reload` whether anything changed before each request and on the
//! idle tick (its inotify fd is in the poll before each accept, so that asking
//! costs nothing while nothing changed; every 20 ms while a new version
//! starts), and taking the new version when it is ready: the new back
//! serves the next connection and the old one is stopped (between
//! connections: nothing of it is in flight), or a re-exec in place.
//! Must not: parse protocols or run applications itself.
//!
//! `fcgi-shim serve` adds its pools beside `run_single`: [`worker`] (the
//! accept loop of one worker), [`prefork`] and [`threaded`].

pub mod prefork;
pub mod threaded;
pub mod worker;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};

use crate::back::{Back, Context, Outcome, finish_with_error};
use crate::config::{FrontProtocol, Limits};
use crate::front::{ajp, fastcgi, scgi};
use crate::launch::{self, ListenerSource};
use crate::reload::{self, NewVersion, Reloader, Verdict};
use crate::request::Exchange;
use crate::sys::{self, Conn, SignalPipe};

/// How often the idle loop wakes up even when nothing happens.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How often it wakes while a reload's new version starts (its readiness
/// is seen within this).
const RELOAD_TICK: Duration = Duration::from_millis(20);

/// Serve FastCGI connections from `listener` one at a time until a stop
/// signal; then stop the application's processes. Never returns early on its
/// own: a FastCGI application that exits between requests makes mod_fcgid
/// answer 500s and throttle spawning. The one exception: the file we were
/// started as was replaced and no request came for a minute, so the web
/// server has moved on to the new file's processes.
///
/// With a `reloader`, a valid change to the watched files starts the new
/// version beside the serving one; once it is ready it serves the next
/// connection (a changed executable: the process re-execs in place before
/// the next connection is accepted). The connections waiting in the listen
/// backlog are served by the new version.
pub fn run_single(
    listener: OwnedFd,
    source: ListenerSource,
    back: &mut Box<dyn Back>,
    mut limits: Limits,
    signals: &SignalPipe,
    mut reloader: Option<&mut Reloader>,
) {
    keep_fd_in_reserve();
    let mut last_request = Instant::now();
    let mut replaced = Replaced::default();
    // Memory freed since the last idle moment that is still ours.
    let mut untrimmed = false;
    while !sys::stop_requested() {
        let (incoming, signalled, woke) = {
            // The reloader's inotify fd, when it has one: readable when a
            // watched file may have changed; then `check_polled` looks.
            let wake = reloader.as_deref().and_then(Reloader::wake_fd);
            let mut fds = [
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.fd(), PollFlags::POLLIN),
                PollFd::new(wake.unwrap_or(signals.fd()), PollFlags::POLLIN),
            ];
            let polled = if wake.is_some() { 3 } else { 2 };
            let tick = if reloader.as_deref().is_some_and(Reloader::busy) || replaced.pending() {
                RELOAD_TICK
            } else {
                IDLE_TICK
            };
            match poll(&mut fds[..polled], sys::poll_timeout(tick)) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("poll on the listening socket failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let ready = |i: usize| i < polled && fds[i].revents().is_some_and(|r| !r.is_empty());
            (ready(0), ready(1), ready(2))
        };
        if signalled {
            signals.drain();
            continue;
        }
        replaced.stop_when(false);
        if let Some(r) = reloader.as_deref_mut() {
            let verdict = r.check_polled(woke, incoming);
            take(
                verdict,
                r,
                &listener,
                source,
                back,
                &mut limits,
                &mut replaced,
            );
            let moved_on = !incoming && r.should_exit_when_idle();
            if moved_on && last_request.elapsed() >= reload::REPLACED_IDLE_EXIT {
                log::info!(
                    "{} was replaced and no request came for {} s: exiting (the web server \
                     starts the new file's processes)",
                    r.started_file().display(),
                    reload::REPLACED_IDLE_EXIT.as_secs()
                );
                r.abandon();
                back.shutdown();
                return;
            }
        }
        if !incoming {
            back.idle();
            if untrimmed {
                // A burst is over: what its big bodies took goes back.
                back.release_memory();
                sys::trim_heap();
                untrimmed = false;
            }
            continue;
        }
        untrimmed = true;
        let refused = |conn| refuse(conn, FrontProtocol::FastCgi, limits, signals);
        // None: nothing to serve, or out of file descriptors (answered 503).
        let Some(conn) = accept(listener.as_fd(), refused) else {
            continue;
        };
        let mut ctx = Context {
            signals,
            stop_deadline: None,
        };
        let mut due = Verdict::Same;
        // The front's poll does not include the inotify fd: `check`
        // reads it (one read that finds nothing, usually). A verdict to act
        // on ends the kept-alive connection; it is taken after it.
        let mut between_requests = || {
            if let Some(r) = reloader.as_deref_mut()
                && due.is_same()
            {
                due = r.check();
            }
            !due.is_same()
        };
        fastcgi::serve_connection(
            conn,
            back.as_mut(),
            &mut ctx,
            limits,
            Some(listener.as_fd()),
            &mut between_requests,
        );
        last_request = Instant::now();
        if let Some(r) = reloader.as_deref_mut() {
            take(due, r, &listener, source, back, &mut limits, &mut replaced);
        }
    }
    replaced.stop_when(true);
    if let Some(r) = reloader {
        r.abandon();
    }
    let signal = sys::last_signal();
    let name = nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str())
        .unwrap_or("a signal");
    log::info!("{name} received: stopping");
    back.shutdown();
}

/// Act on what the reloader found: switch to the new version's back (the
/// previous one is held in `replaced` until it is stopped: we are between
/// connections, nothing of it is in flight), or re-exec.
fn take(
    verdict: Verdict,
    reloader: &mut Reloader,
    listener: &OwnedFd,
    source: ListenerSource,
    back: &mut Box<dyn Back>,
    limits: &mut Limits,
    replaced: &mut Replaced,
) {
    let (new, reexec) = match verdict {
        Verdict::Same => return,
        Verdict::Switch(new) => (new, false),
        Verdict::Reexec(new) => (new, true),
    };
    let NewVersion {
        config,
        back: fresh,
    } = *new;
    replaced.hold(std::mem::replace(back, fresh));
    *limits = config.limits;
    if let Err(e) = crate::log::configure(&config.site, &config.log.target, config.log.level) {
        log::error!("{e}; logging to stderr instead");
    }
    if reexec {
        replaced.stop_when(true);
        reexec_with(reloader, listener, source, back.as_mut());
    }
}

/// How long the processes of the back a reload replaced have to exit
/// after they were asked to, before they are stopped for good (SIGKILL).
const STOP_REPLACED_WITHIN: Duration = Duration::from_secs(2);

/// The back a reload replaced (nothing of it in flight: the switch happens
/// between connections). Its processes are asked to end at once, without
/// waiting; it is dropped once they have, or stopped for good after
/// `STOP_REPLACED_WITHIN`: no request of the new version waits for the old
/// worker to exit.
#[derive(Default)]
struct Replaced(Option<(Box<dyn Back>, Instant)>);

impl Replaced {
    fn pending(&self) -> bool {
        self.0.is_some()
    }

    fn hold(&mut self, mut previous: Box<dyn Back>) {
        self.stop_when(true);
        previous.begin_stop();
        self.0 = Some((previous, Instant::now()));
    }

    /// Drop it if its processes have exited; stop it now if `now`, or if
    /// they took too long.
    fn stop_when(&mut self, now: bool) {
        let Some((previous, since)) = &mut self.0 else {
            return;
        };
        let late = now || since.elapsed() >= STOP_REPLACED_WITHIN;
        if !previous.stopped() && !late {
            return;
        }
        if let Some((mut previous, since)) = self.0.take() {
            previous.shutdown();
            log::debug!(
                "reload: the previous version is stopped ({:.0} ms after the switch)",
                since.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}

/// Re-exec in place into the new executable, handing it `back`'s started
/// application (the previous version is stopped already). Returns only if
/// exec failed; then `back` goes on serving from this image.
fn reexec_with(
    reloader: &mut Reloader,
    listener: &OwnedFd,
    source: ListenerSource,
    back: &mut dyn Back,
) {
    crate::supervise::release_guard();
    let mut env = match launch::prepare_reexec(listener.as_fd(), Some(source)) {
        Ok(env) => env,
        Err(e) => {
            log::error!(
                "reload: cannot keep the listening socket across exec ({e}); the new version \
                 serves from the previous executable"
            );
            reloader.exec_failed(e.to_string());
            return;
        }
    };
    env.extend(back.hand_over());
    let err = reloader.exec(&env);
    back.keep_after_failed_exec();
    log::error!("reload: exec failed ({err}); the new version serves from the previous executable");
    reloader.exec_failed(err.to_string());
}

// ---------------------------------------------------------------------------
// Out of file descriptors: answered, not met with silence.

/// One file descriptor (on /dev/null) held so that a connection can still
/// be accepted and answered 503 when the process has no other left: on
/// EMFILE it is closed, the connection accepted and answered, then it is
/// opened again. One per process (the threads of the threaded pool share it;
/// each prefork worker has its own).
static RESERVE: Mutex<Option<File>> = Mutex::new(None);

/// Open the reserve file descriptor if it is not held.
pub fn keep_fd_in_reserve() {
    let mut reserve = RESERVE.lock().unwrap_or_else(|e| e.into_inner());
    if reserve.is_none() {
        *reserve = File::open("/dev/null").ok();
    }
}

/// Accept one connection from the non-blocking `listener`. `None`: nothing
/// to serve (another worker took it, the peer gave up, a signal, or accept
/// failed: logged once a minute per cause, after a pause so that a failing
/// accept does not spin). Out of file descriptors, the connection is
/// accepted with the reserve and handed to `refuse`, which answers it 503.
pub fn accept(listener: BorrowedFd<'_>, refuse: impl FnOnce(Conn)) -> Option<Conn> {
    let e = match sys::accept(listener) {
        Ok(conn) => return Some(conn),
        Err(e) => e,
    };
    let errno = e.raw_os_error().unwrap_or(0);
    if matches!(errno, libc::EINTR | libc::EAGAIN | libc::ECONNABORTED) {
        return None;
    }
    if matches!(errno, libc::EMFILE | libc::ENFILE) {
        // Held by another thread of the pool, or not reopened: wait.
        if let Ok(mut reserve) = RESERVE.try_lock()
            && reserve.take().is_some()
        {
            let answered = match sys::accept(listener) {
                Ok(conn) => {
                    if let Some(n) = crate::log::once_a_minute("accept: out of fds") {
                        log::error!(
                            "accept failed: {e}: answering 503 with the file descriptor kept \
                             in reserve (raise `ulimit -n`){}",
                            crate::log::left_out(n)
                        );
                    }
                    refuse(conn);
                    true
                }
                Err(_) => false,
            };
            *reserve = File::open("/dev/null").ok();
            if answered {
                return None;
            }
        }
    }
    if let Some(n) = crate::log::once_a_minute(&format!("accept: {errno}")) {
        log::error!("accept failed: {e}{}", crate::log::left_out(n));
    }
    std::thread::sleep(Duration::from_millis(100));
    None
}

/// Answer every request of `conn` with 503: accepted with the reserve file
/// descriptor, there is none for the application.
pub fn refuse(conn: Conn, protocol: FrontProtocol, limits: Limits, signals: &SignalPipe) {
    let mut ctx = Context {
        signals,
        stop_deadline: None,
    };
    let back = &mut OutOfFds;
    match protocol {
        FrontProtocol::FastCgi => {
            fastcgi::serve_connection(conn, back, &mut ctx, limits, None, &mut || false);
        }
        FrontProtocol::Scgi => scgi::serve_connection(conn, back, &mut ctx, limits),
        // The 503 goes to any peer: no application sees the request.
        FrontProtocol::Ajp => ajp::serve_connection(conn, back, &mut ctx, limits, None, None),
    }
}

/// [`refuse`] a connection of a `serve` listener, if its peer is allowed at all.
pub fn refuse_allowed(
    conn: Conn,
    listener: &worker::Listener,
    limits: Limits,
    signals: &SignalPipe,
) {
    if listener.allows(&conn) {
        refuse(conn, listener.protocol, limits, signals);
    }
}

/// The back of a connection accepted with the reserve file descriptor.
struct OutOfFds;

impl Back for OutOfFds {
    fn serve(&mut self, exchange: &mut dyn Exchange, _ctx: &mut Context<'_>) -> Outcome {
        finish_with_error(
            exchange,
            503,
            "The server has no file descriptor left for the application; try again shortly.",
        )
    }

    fn shutdown(&mut self) {}
}

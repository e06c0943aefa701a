//! The accept loop and its concurrency.
//!
//! Owns: accepting connections on the listening socket and handing each to its
//! front, one at a time ("single": what mod_fcgid wants, since it sends one
//! request per process at a time); reacting to stop signals between requests.
//! Must not: parse protocols or run applications itself.
//!
//! `fcgi-shim serve` adds its pools beside `run_single`: [`worker`] (the
//! accept loop of one worker), [`prefork`] and [`threaded`].

pub mod prefork;
pub mod threaded;
pub mod worker;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};

use crate::back::{Back, Context};
use crate::config::Limits;
use crate::front::fastcgi;
use crate::sys::{self, SignalPipe};

/// How often the idle loop wakes up even when nothing happens.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Serve FastCGI connections from `listener` one at a time until a stop
/// signal; then stop the application's processes. Never returns early on its
/// own: a FastCGI application that exits between requests makes mod_fcgid
/// answer 500s and throttle spawning.
pub fn run_single(listener: OwnedFd, back: &mut dyn Back, limits: Limits, signals: &SignalPipe) {
    while !sys::stop_requested() {
        let (incoming, signalled) = {
            let mut fds = [
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, sys::poll_timeout(IDLE_TICK)) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("poll on the listening socket failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            (ready(0), ready(1))
        };
        if signalled {
            signals.drain();
            continue;
        }
        if !incoming {
            continue;
        }
        match sys::accept(listener.as_fd()) {
            Ok(conn) => {
                let mut ctx = Context {
                    signals,
                    stop_deadline: None,
                };
                fastcgi::serve_connection(conn, back, &mut ctx, limits, Some(listener.as_fd()));
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::ECONNABORTED)
                ) => {}
            Err(e) => {
                log::error!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let signal = sys::last_signal();
    let name = nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str())
        .unwrap_or("a signal");
    log::info!("{name} received: stopping");
    back.shutdown();
}

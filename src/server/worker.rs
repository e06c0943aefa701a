//! One worker of the standalone server: accept, check the peer, serve the
//! connection with the configured front, report busy/idle, count requests.
//!
//! Owns: the accept loop shared by the prefork workers, the threads of the
//! threaded pool and `method=single`; refusing peers not in the allowed list.
//! Must not: start or stop other workers (the pools do that), or parse any
//! protocol itself.

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};

use crate::back::{Back, Context};
use crate::config::{FrontProtocol, Limits};
use crate::front::{ajp, fastcgi, scgi};
use crate::sys::{self, SignalPipe};

/// How often an idle worker wakes to look at the stop and retire flags.
const TICK: Duration = Duration::from_millis(250);

/// The shared listening socket and what to do with its connections.
#[derive(Debug)]
pub struct Listener {
    /// Non-blocking: several workers poll it, one wins each accept.
    pub fd: OwnedFd,
    pub protocol: FrontProtocol,
    /// For TCP: peers allowed to connect (empty: any).
    pub allowed: Vec<IpAddr>,
    /// protocol=ajp: the `secret` attribute every request must carry.
    pub ajp_secret: Option<String>,
}

impl Listener {
    /// Is the peer of `conn` allowed (`allowed_addrs`)? If not, say so.
    pub fn allows(&self, conn: &sys::Conn) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        match conn.peer_ip() {
            Some(ip) if self.allowed.contains(&ip) => true,
            peer => {
                let who = peer.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
                log::warn!(
                    "refused a connection from {who}: not in allowed_addrs / FCGI_WEB_SERVER_ADDRS"
                );
                false
            }
        }
    }
}

/// What a worker tells its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It accepted a connection and is serving it.
    Busy,
    /// It is waiting for a connection again.
    Idle,
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Stopped,
    Retired,
    /// It served `maxrequests` connections.
    Recycled,
}

/// What a worker needs besides its application.
pub struct Worker<'a> {
    pub listener: &'a Listener,
    pub limits: Limits,
    pub signals: &'a SignalPipe,
    /// Connections to serve before returning [`End::Recycled`]; 0 = no limit.
    pub maxrequests: usize,
    /// The only worker (`method=single`): an idle kept-alive FastCGI
    /// connection gives way to a waiting one, as in `run_single`. Pool
    /// workers keep theirs: another worker takes the waiting connection.
    pub alone: bool,
    /// Asked between connections: should this worker go away?
    pub retire: &'a dyn Fn() -> bool,
    /// Told when the worker becomes busy or idle.
    pub report: &'a mut dyn FnMut(Status),
}

/// Serve connections until a stop signal, retirement or `maxrequests`.
pub fn run(w: Worker<'_>, back: &mut dyn Back) -> End {
    super::keep_fd_in_reserve();
    let mut served = 0usize;
    let mut untrimmed = false;
    loop {
        if sys::stop_requested() {
            return End::Stopped;
        }
        if (w.retire)() {
            return End::Retired;
        }
        if w.maxrequests > 0 && served >= w.maxrequests {
            return End::Recycled;
        }
        let (incoming, signalled) = {
            let mut fds = [
                PollFd::new(w.listener.fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(w.signals.fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, sys::poll_timeout(TICK)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    log::error!("poll on the listening socket failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            (ready(0), ready(1))
        };
        if signalled {
            w.signals.drain();
        }
        if !incoming || sys::stop_requested() {
            back.idle();
            if untrimmed {
                // As `run_single`: what a burst's big bodies took goes back.
                back.release_memory();
                sys::trim_heap();
                untrimmed = false;
            }
            continue;
        }
        untrimmed = true;
        let refused = |conn| super::refuse_allowed(conn, w.listener, w.limits, w.signals);
        // None: another worker took it, the peer gave up, or out of file
        // descriptors (then it was answered 503).
        let Some(conn) = super::accept(w.listener.fd.as_fd(), refused) else {
            continue;
        };
        if !w.listener.allows(&conn) {
            continue;
        }
        (w.report)(Status::Busy);
        let mut ctx = Context {
            signals: w.signals,
            stop_deadline: None,
        };
        match w.listener.protocol {
            FrontProtocol::FastCgi => {
                let listener = w.alone.then(|| w.listener.fd.as_fd());
                fastcgi::serve_connection(conn, back, &mut ctx, w.limits, listener, &mut || false);
            }
            FrontProtocol::Scgi => scgi::serve_connection(conn, back, &mut ctx, w.limits),
            FrontProtocol::Ajp => {
                let listener = w.alone.then(|| w.listener.fd.as_fd());
                let secret = w.listener.ajp_secret.as_deref().map(str::as_bytes);
                ajp::serve_connection(conn, back, &mut ctx, w.limits, secret, listener);
            }
        }
        served += 1;
        (w.report)(Status::Idle);
    }
}

/// runfcgi's pool bounds, shared by the prefork and threaded pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub minspare: usize,
    pub maxspare: usize,
    pub maxchildren: usize,
    /// Connections a worker serves before it is replaced (0 = never).
    pub maxrequests: usize,
}

impl Bounds {
    pub fn from_settings(s: &crate::config::ServerSettings) -> Bounds {
        Bounds {
            minspare: s.minspare,
            maxspare: s.maxspare,
            maxchildren: s.maxchildren,
            maxrequests: s.maxrequests,
        }
    }

    /// Say in the log which bounds the pool `pool` runs with.
    pub fn log_start(&self, pool: &str) {
        log::info!(
            "{pool}: minspare={} maxspare={} maxchildren={} maxrequests={}",
            self.minspare,
            self.maxspare,
            self.maxchildren,
            self.maxrequests
        );
    }

    /// With `idle` idle workers of `total`: how many to start, how many idle
    /// ones to retire. At least one worker is kept idle (else nobody accepts),
    /// and never more than `maxchildren` run.
    pub fn plan(&self, idle: usize, total: usize) -> (usize, usize) {
        let min = self.minspare.max(1);
        let start = min
            .saturating_sub(idle)
            .min(self.maxchildren.saturating_sub(total));
        let retire = idle.saturating_sub(self.maxspare.max(min));
        (start, retire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_plan() {
        let b = Bounds {
            minspare: 2,
            maxspare: 5,
            maxchildren: 8,
            maxrequests: 0,
        };
        assert_eq!(b.plan(0, 0), (2, 0));
        assert_eq!(b.plan(1, 7), (1, 0));
        assert_eq!(b.plan(0, 8), (0, 0), "never above maxchildren");
        assert_eq!(b.plan(3, 3), (0, 0));
        assert_eq!(b.plan(7, 8), (0, 2), "down to maxspare");
        let zero = Bounds {
            minspare: 0,
            maxspare: 0,
            ..b
        };
        assert_eq!(zero.plan(0, 0), (1, 0), "one worker always accepts");
        assert_eq!(zero.plan(1, 1), (0, 0));
    }
}

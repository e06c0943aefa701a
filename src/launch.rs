//! How we were started: which inherited socket to serve, or none.
//!
//! Owns: detection, in this order: systemd socket activation (LISTEN_PID is
//! our pid, LISTEN_FDS >= 1, the socket on fd 3); a listening socket on fd 0
//! (mod_fcgid, mod_fastcgi, lighttpd `bin-path`, spawn-fcgi, systemd
//! `StandardInput=socket`), validated before use; a plain CGI invocation
//! (GATEWAY_INTERFACE set, or FCGI_FORCE_CGI=Y); otherwise run by hand.
//! Also: making the listening socket survive a re-exec (reload).
//! Must not: bind sockets of its own (standalone mode is a later addition).

use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use crate::sys::{self, FdKind, ListenerFamily};

/// fd of the FastCGI listening socket by convention (FCGI_LISTENSOCK_FILENO).
const FCGI_LISTENSOCK_FILENO: RawFd = 0;
/// First fd passed by systemd (SD_LISTEN_FDS_START).
const SD_LISTEN_FDS_START: RawFd = 3;

/// Where the listening socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerSource {
    /// fd 0, put there by the web server (or systemd's StandardInput=socket).
    Fd0,
    /// fd 3, from systemd socket activation.
    Systemd,
}

/// How this process was started.
#[derive(Debug)]
pub enum Launch {
    Listener {
        fd: OwnedFd,
        source: ListenerSource,
        family: ListenerFamily,
    },
    /// A one-shot CGI invocation: the request is our environment and stdin.
    Cgi,
    /// A person ran it from a shell.
    ByHand,
}

/// An inherited fd that looks meant for us but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchError(String);

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LaunchError {}

/// Work out how we were started.
pub fn detect() -> Result<Launch, LaunchError> {
    if let Some(n) = systemd_fds() {
        sys::forget_listen_env();
        if n > 1 {
            log::warn!("systemd passed {n} sockets; serving the first (fd 3) only");
        }
        return match sys::inspect_fd(SD_LISTEN_FDS_START) {
            FdKind::Listener(family) => {
                let fd = sys::adopt_fd(SD_LISTEN_FDS_START);
                // Our applications must not inherit it.
                sys::set_cloexec(std::os::fd::AsFd::as_fd(&fd))
                    .map_err(|e| LaunchError(format!("fd 3: {e}")))?;
                Ok(Launch::Listener {
                    fd,
                    source: ListenerSource::Systemd,
                    family,
                })
            }
            other => Err(LaunchError(format!(
                "systemd socket activation: fd 3 is {}",
                describe(other)
            ))),
        };
    }
    if std::env::var_os("FCGI_FORCE_CGI").is_some_and(|v| v == "Y" || v == "y") {
        return Ok(Launch::Cgi);
    }
    match sys::inspect_fd(FCGI_LISTENSOCK_FILENO) {
        FdKind::Listener(family) => Ok(Launch::Listener {
            fd: sys::adopt_fd(FCGI_LISTENSOCK_FILENO),
            source: ListenerSource::Fd0,
            family,
        }),
        FdKind::UnusableSocket(why) => Err(LaunchError(format!(
            "fd 0 is a socket but {why}; a FastCGI web server passes a listening socket on fd 0"
        ))),
        FdKind::NotSocket | FdKind::Closed if std::env::var_os("GATEWAY_INTERFACE").is_some() => {
            Ok(Launch::Cgi)
        }
        FdKind::NotSocket | FdKind::Closed => Ok(Launch::ByHand),
    }
}

/// Make the listening socket survive a re-exec where the new image will look
/// for it, and return the environment that tells it so.
pub fn prepare_reexec(
    listener: BorrowedFd<'_>,
    source: ListenerSource,
) -> std::io::Result<Vec<(&'static str, String)>> {
    sys::clear_cloexec(listener)?;
    Ok(match source {
        ListenerSource::Fd0 => Vec::new(),
        // Same pid after exec: systemd's variables, as systemd would set them.
        ListenerSource::Systemd => vec![
            ("LISTEN_PID", sys::pid().to_string()),
            ("LISTEN_FDS", "1".to_string()),
        ],
    })
}

/// Were we spawned by Apache (mod_fcgid / mod_fastcgi's process manager is
/// our parent)? mod_fcgid keys its processes on the file's inode, so after a
/// rename it never sends an old process another request; other spawners
/// (spawn-fcgi, systemd) would not start us again if we exited.
pub fn spawned_by_apache() -> bool {
    let ppid = nix::unistd::getppid();
    std::fs::read_to_string(format!("/proc/{ppid}/comm"))
        .is_ok_and(|comm| matches!(comm.trim(), "apache2" | "httpd"))
}

/// LISTEN_FDS when LISTEN_PID is our pid.
fn systemd_fds() -> Option<u32> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    if pid != sys::pid() {
        return None;
    }
    std::env::var("LISTEN_FDS")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|n| *n >= 1)
}

fn describe(kind: FdKind) -> &'static str {
    match kind {
        FdKind::Closed => "not open",
        FdKind::NotSocket => "not a socket",
        FdKind::UnusableSocket(why) => why,
        FdKind::Listener(_) => "a listening socket",
    }
}

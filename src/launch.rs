//! How we were started: which inherited socket to serve, or none.
//!
//! Owns: detection, in this order: systemd socket activation (LISTEN_PID is
//! our pid, LISTEN_FDS >= 1, the socket on fd 3); a listening socket on fd 0
//! (mod_fcgid, mod_fastcgi, lighttpd `bin-path`, spawn-fcgi, systemd
//! `StandardInput=socket`), validated before use; a plain CGI invocation
//! (GATEWAY_INTERFACE set, or FCGI_FORCE_CGI=Y); otherwise run by hand.
//! Also: making the listening socket survive a re-exec (reload).
//! Standalone (`fcgi-shim serve`): binding a unix socket or TCP port,
//! daemonizing, the pidfile and the umask (the block at the end).
//! Must not: serve connections or decide about concurrency (that is `server`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::config::ServerSettings;
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
/// for it, and return the environment that tells it so: fd 0 and systemd's
/// fd 3 (`source`) are found where the spawner left them; any other fd
/// (`None`: standalone `serve`'s own socket) is named in [`LISTEN_FD_ENV`].
pub fn prepare_reexec(
    listener: BorrowedFd<'_>,
    source: Option<ListenerSource>,
) -> std::io::Result<Vec<(&'static str, String)>> {
    sys::clear_cloexec(listener)?;
    Ok(match source {
        Some(ListenerSource::Fd0) => Vec::new(),
        // Same pid after exec: systemd's variables, as systemd would set them.
        Some(ListenerSource::Systemd) => vec![
            ("LISTEN_PID", sys::pid().to_string()),
            ("LISTEN_FDS", "1".to_string()),
        ],
        None => vec![(LISTEN_FD_ENV, listener.as_raw_fd().to_string())],
    })
}

/// Standalone `serve` after a reload (SIGHUP): the number of the fd that is
/// already our bound listening socket, so the new image neither binds again
/// nor daemonizes again.
pub const LISTEN_FD_ENV: &str = "FCGI_SHIM_LISTEN_FD";

/// The listening socket a standalone server handed to itself across a
/// re-exec ([`LISTEN_FD_ENV`]), validated; the variable is cleared.
pub fn take_reexec_listener() -> Result<Option<(OwnedFd, ListenerFamily)>, LaunchError> {
    let Some(value) = std::env::var_os(LISTEN_FD_ENV) else {
        return Ok(None);
    };
    sys::forget_env(LISTEN_FD_ENV);
    let raw: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| LaunchError(format!("{LISTEN_FD_ENV}={value:?} is not an fd number")))?;
    match sys::inspect_fd(raw) {
        FdKind::Listener(family) => {
            let fd = sys::adopt_fd(raw);
            sys::set_cloexec(fd.as_fd()).map_err(|e| LaunchError(format!("fd {raw}: {e}")))?;
            Ok(Some((fd, family)))
        }
        other => Err(LaunchError(format!(
            "{LISTEN_FD_ENV}: fd {raw} is {}",
            describe(other)
        ))),
    }
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

// ---------------------------------------------------------------------------
// Standalone (`fcgi-shim serve`): bind, daemonize, pidfile.

/// A listening socket we bound ourselves.
#[derive(Debug)]
pub struct Bound {
    pub fd: OwnedFd,
    pub family: ListenerFamily,
    /// The unix socket file, removed by [`Bound::remove_socket`] at exit.
    pub socket_path: Option<PathBuf>,
}

impl Bound {
    /// Remove the unix socket file (call once, from the process that bound it).
    pub fn remove_socket(&self) {
        if let Some(path) = &self.socket_path {
            match std::fs::remove_file(path) {
                Ok(()) => log::debug!("removed {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
            }
        }
    }
}

/// The umask a unix socket is created under when none is configured: owner
/// and group may connect, others may not (mode 0660).
const DEFAULT_SOCKET_UMASK: u32 = 0o117;

/// Bind the listener `settings` asks for (a unix socket or host/port).
pub fn bind(settings: &ServerSettings) -> Result<Bound, LaunchError> {
    let bound = if let Some(path) = &settings.socket {
        bind_unix(path, settings.umask)?
    } else {
        let port = settings
            .port
            .ok_or_else(|| LaunchError("neither `socket` nor `port` given".into()))?;
        let host = settings.host.as_deref().unwrap_or("127.0.0.1");
        bind_tcp(host, port)?
    };
    sys::set_nonblocking(std::os::fd::AsFd::as_fd(&bound.fd))
        .map_err(|e| LaunchError(format!("listening socket: {e}")))?;
    Ok(bound)
}

fn bind_unix(path: &Path, umask: Option<u32>) -> Result<Bound, LaunchError> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(LaunchError(format!("{shown}: {e}"))),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(LaunchError(format!(
                "{shown} exists and is not a socket; refusing to replace it"
            )));
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(LaunchError(format!(
                    "{shown}: another server is listening on this socket; stop it first"
                )));
            }
            Err(_) => {
                log::info!("removing stale socket {shown} (nothing listens on it)");
                std::fs::remove_file(path)
                    .map_err(|e| LaunchError(format!("cannot remove stale {shown}: {e}")))?;
            }
        },
    }
    // A configured umask is the process's from now on (as runfcgi does);
    // otherwise it applies to the socket only.
    let previous = sys::set_umask(umask.unwrap_or(DEFAULT_SOCKET_UMASK));
    let result = UnixListener::bind(path);
    if umask.is_none() {
        sys::set_umask(previous);
    }
    let listener = result.map_err(|e| LaunchError(format!("cannot listen on {shown}: {e}")))?;
    Ok(Bound {
        fd: listener.into(),
        family: ListenerFamily::Unix,
        socket_path: Some(path.to_path_buf()),
    })
}

/// The addresses `host` stands for, without a name lookup: an IP address
/// (`127.0.0.1`, `::1`, `[::1]`) is itself, `localhost` is 127.0.0.1 then ::1.
///
/// Any other name is refused. Resolving it would take getaddrinfo, which in the
/// static executable (`make static`) needs the very glibc shared libraries it
/// is built to do without (NSS); a listening address is better written as an
/// address anyway.
pub fn listen_addrs(host: &str, port: u16) -> Result<Vec<SocketAddr>, LaunchError> {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
        ]);
    }
    Err(LaunchError(format!(
        "host {host:?} is not an IP address: give an address such as 127.0.0.1, \
         0.0.0.0 or ::1 (or localhost); fcgi-shim does not look host names up"
    )))
}

fn bind_tcp(host: &str, port: u16) -> Result<Bound, LaunchError> {
    use std::net::TcpListener;
    let mut last = None;
    for addr in listen_addrs(host, port)? {
        match TcpListener::bind(addr) {
            Ok(listener) => {
                let family = if addr.is_ipv4() {
                    ListenerFamily::Inet
                } else {
                    ListenerFamily::Inet6
                };
                return Ok(Bound {
                    fd: listener.into(),
                    family,
                    socket_path: None,
                });
            }
            Err(e) => last = Some(format!("cannot listen on {addr}: {e}")),
        }
    }
    Err(LaunchError(
        last.unwrap_or_else(|| format!("host {host} has no address")),
    ))
}

/// Peers allowed on a TCP listener: `allowed_addrs` plus FCGI_WEB_SERVER_ADDRS
/// (comma-separated, as libfcgi reads it). Empty: every peer.
pub fn allowed_peers(settings: &ServerSettings) -> Result<Vec<IpAddr>, LaunchError> {
    let mut allowed = settings.allowed_addrs.clone();
    if let Ok(list) = std::env::var("FCGI_WEB_SERVER_ADDRS") {
        let more = crate::config::parse_addrs(list.split(',')).map_err(|bad| {
            LaunchError(format!(
                "FCGI_WEB_SERVER_ADDRS: {bad:?} is not an IP address"
            ))
        })?;
        allowed.extend(more);
    }
    Ok(allowed)
}

/// A pidfile we wrote; [`PidFile::remove`] deletes it if it still names us.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

/// Refuse to start when `path` names a live process.
pub fn check_pidfile(path: &Path) -> Result<(), LaunchError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    match text.trim().parse::<u32>() {
        Ok(pid) if pid != sys::pid() && sys::process_exists(pid) => Err(LaunchError(format!(
            "{}: process {pid} is running; is the server already started? (stop it with: kill $(cat {}))",
            path.display(),
            path.display()
        ))),
        _ => {
            log::info!("ignoring stale pidfile {}", path.display());
            Ok(())
        }
    }
}

/// Write our pid to `path` atomically (a temporary file renamed over it).
pub fn write_pidfile(path: &Path) -> Result<PidFile, LaunchError> {
    let pid = sys::pid();
    let tmp = path.with_file_name(format!(
        ".{}.{pid}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, format!("{pid}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            LaunchError(format!("cannot write pidfile {}: {e}", path.display()))
        })?;
    Ok(PidFile {
        path: path.to_path_buf(),
        pid,
    })
}

impl PidFile {
    /// Remove the pidfile if it still holds our pid.
    pub fn remove(&self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|t| t.trim().parse::<u32>() == Ok(self.pid));
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove pidfile {}: {e}", self.path.display());
        }
    }
}

/// What [`daemonize`] returns in the process that goes on serving.
pub struct Daemon {
    /// Tell the waiting parent we started (or why not); it then exits.
    report: Option<std::fs::File>,
}

impl Daemon {
    /// Report success (`Ok`) or failure to the parent, which exits with it.
    pub fn ready(&mut self, result: Result<(), &str>) {
        use std::io::Write;
        if let Some(mut pipe) = self.report.take() {
            let message = match result {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            let _ = pipe.write_all(message.as_bytes());
        }
    }
}

/// Detach: fork (the parent waits for [`Daemon::ready`] and exits with its
/// verdict), new session, `workdir`, umask (runfcgi's 022 unless set), stdin
/// from /dev/null, stdout and stderr to `outlog` / `errlog` (default /dev/null).
/// Must be called while the process has a single thread.
pub fn daemonize(settings: &ServerSettings) -> Result<Daemon, LaunchError> {
    use std::io::Read;
    let open_log = |p: &Option<PathBuf>| -> Result<std::fs::File, LaunchError> {
        let path = p.as_deref().unwrap_or(Path::new("/dev/null"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| LaunchError(format!("cannot open {}: {e}", path.display())))
    };
    let out = open_log(&settings.outlog)?;
    let err = open_log(&settings.errlog)?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| LaunchError(format!("pipe: {e}")))?;
    match sys::fork_single_threaded().map_err(|e| LaunchError(format!("cannot fork: {e}")))? {
        sys::Forked::Parent { child } => {
            drop(write);
            let mut message = String::new();
            let _ = std::fs::File::from(read).read_to_string(&mut message);
            if message == "ok" {
                println!("fcgi-shim: serving in the background, pid {child}");
                std::process::exit(0);
            }
            if message.is_empty() {
                message = "the background process exited during start-up".into();
            }
            eprintln!("fcgi-shim: {message}");
            std::process::exit(1);
        }
        sys::Forked::Child => {}
    }
    drop(read);
    let mut daemon = Daemon {
        report: Some(std::fs::File::from(write)),
    };
    let detach = || -> Result<(), LaunchError> {
        sys::new_session().map_err(|e| LaunchError(format!("setsid: {e}")))?;
        std::env::set_current_dir(&settings.workdir)
            .map_err(|e| LaunchError(format!("workdir {}: {e}", settings.workdir.display())))?;
        sys::set_umask(settings.umask.unwrap_or(0o022));
        sys::redirect_stdio(
            std::os::fd::AsFd::as_fd(&out),
            std::os::fd::AsFd::as_fd(&err),
        )
        .map_err(|e| LaunchError(format!("redirecting stdio: {e}")))
    };
    match detach() {
        Ok(()) => Ok(daemon),
        Err(e) => {
            // The waiting parent prints it on the terminal.
            daemon.ready(Err(&e.0));
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addrs_take_addresses_and_localhost_without_a_lookup() {
        let table: &[(&str, &[&str])] = &[
            ("127.0.0.1", &["127.0.0.1:3033"]),
            ("0.0.0.0", &["0.0.0.0:3033"]),
            ("::1", &["[::1]:3033"]),
            ("[::1]", &["[::1]:3033"]),
            ("::", &["[::]:3033"]),
            ("fe80::1", &["[fe80::1]:3033"]),
            ("localhost", &["127.0.0.1:3033", "[::1]:3033"]),
            ("LocalHost", &["127.0.0.1:3033", "[::1]:3033"]),
        ];
        for (host, want) in table {
            let got: Vec<String> = listen_addrs(host, 3033)
                .unwrap_or_else(|e| panic!("{host}: {e}"))
                .iter()
                .map(|a| a.to_string())
                .collect();
            assert_eq!(&got, want, "host {host:?}");
        }
    }

    #[test]
    fn listen_addrs_refuse_host_names_and_say_what_to_write() {
        for host in [
            "example.com",
            "myhost",
            "",
            "127.0.0.1.",
            "[localhost]",
            "1.2.3",
        ] {
            let err = listen_addrs(host, 3033).expect_err(host).to_string();
            assert!(
                err.contains(&format!("host {host:?} is not an IP address"))
                    && err.contains("127.0.0.1"),
                "{host:?}: {err}"
            );
        }
    }
}

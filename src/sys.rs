//! The operating-system boundary: every `unsafe` block and every raw libc call
//! of the crate lives here, each behind a safe wrapper with a SAFETY comment.
//!
//! Owns: signal handling (a self-pipe the handlers write one byte to), the
//! child-side setup between fork and exec (PR_SET_PDEATHSIG), the child
//! subreaper flag and the list of our children (/proc), inspection of
//! inherited sockets, and a plain `Read + Write` wrapper around a socket fd.
//! Must not: make policy decisions (what a signal means, which fd to adopt);
//! the callers do that.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, sockopt,
};
use nix::sys::stat::{SFlag, fstat};

// ---------------------------------------------------------------------------
// Signals: handlers only set a flag and write a byte to a pipe.

static SIGNAL_PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Standalone `serve`: SIGHUP asks for a reload instead of a stop.
static HUP_RELOADS: AtomicBool = AtomicBool::new(false);
static RELOAD_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(signo: libc::c_int) {
    if signo == libc::SIGHUP && HUP_RELOADS.load(Ordering::SeqCst) {
        RELOAD_REQUESTED.store(true, Ordering::SeqCst);
    } else {
        STOP_REQUESTED.store(true, Ordering::SeqCst);
        LAST_SIGNAL.store(signo, Ordering::SeqCst);
    }
    let fd = SIGNAL_PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = [0u8; 1];
        // SAFETY: write(2) is async-signal-safe; `fd` is the write end of a
        // non-blocking pipe that stays open for the life of the process, and
        // `byte` is a valid one-byte buffer. A full pipe (EAGAIN) is fine: a
        // byte is already waiting.
        unsafe {
            libc::write(fd, byte.as_ptr().cast(), 1);
        }
    }
}

/// SIGCHLD: a child (an application process) exited; only wakes whoever
/// polls the signal pipe, which then asks `waitpid(pid, WNOHANG)` about the
/// processes it owns. This is how the relay notices a worker's death even
/// when a process the worker forked still holds its pipes open.
extern "C" fn on_child_signal(_signo: libc::c_int) {
    let fd = SIGNAL_PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: as in `on_stop_signal`: write(2) is async-signal-safe, `fd`
        // is the non-blocking write end of the signal pipe, open for the life
        // of the process; a full pipe (EAGAIN) is fine.
        unsafe {
            libc::write(fd, [0u8; 1].as_ptr().cast(), 1);
        }
    }
}

/// The read end of the signal self-pipe: poll it, then call [`SignalPipe::drain`].
pub struct SignalPipe {
    read: OwnedFd,
    // Kept open so the handler's fd stays valid.
    _write: OwnedFd,
}

impl SignalPipe {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Empty the pipe after poll said it is readable.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.read, &mut buf), Ok(n) if n > 0) {}
    }
}

/// Install the stop handlers (SIGTERM, SIGINT, SIGHUP, SIGUSR1) without
/// SA_RESTART, so blocking calls return EINTR, a SIGCHLD handler (with
/// SA_RESTART: a child's exit interrupts only poll and sleeps) that only
/// wakes the signal pipe, and ignore SIGPIPE.
pub fn install_signal_handlers() -> io::Result<SignalPipe> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    SIGNAL_PIPE_WRITE.store(write.as_raw_fd(), Ordering::SeqCst);
    let stop = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        // SAFETY: `on_stop_signal` only touches atomics and calls write(2),
        // both async-signal-safe.
        unsafe { sigaction(signal, &stop) }?;
    }
    let child = SigAction::new(
        SigHandler::Handler(on_child_signal),
        SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    // SAFETY: `on_child_signal` only reads an atomic and calls write(2),
    // both async-signal-safe.
    unsafe { sigaction(Signal::SIGCHLD, &child) }?;
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { sigaction(Signal::SIGPIPE, &ignore) }?;
    Ok(SignalPipe {
        read,
        _write: write,
    })
}

/// Has a stop signal arrived?
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// The number of the last stop signal received (0 if none).
pub fn last_signal() -> i32 {
    LAST_SIGNAL.load(Ordering::SeqCst)
}

/// From now on SIGHUP asks for a reload ([`take_reload_request`]) instead of
/// a stop: standalone servers. Under a web server SIGHUP means the server is
/// restarting (Apache's prefork signals its whole process group): stop.
pub fn hup_means_reload() {
    HUP_RELOADS.store(true, Ordering::SeqCst);
}

/// Did a SIGHUP ask for a reload since the last call?
pub fn take_reload_request() -> bool {
    RELOAD_REQUESTED.swap(false, Ordering::SeqCst)
}

/// Stop as if `signal` had arrived (a validated reload stops the server
/// before it re-execs), and wake whoever polls the signal pipe.
pub fn request_stop(signal: Signal) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
    LAST_SIGNAL.store(signal as i32, Ordering::SeqCst);
    let fd = SIGNAL_PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is the write end of the signal pipe, open for the life
        // of the process; a one-byte buffer; a full pipe (EAGAIN) is fine.
        unsafe {
            libc::write(fd, [0u8; 1].as_ptr().cast(), 1);
        }
    }
}

// ---------------------------------------------------------------------------
// Child processes.

/// Make `command` start its child in a new process group, its leader told
/// of our death: PR_SET_PDEATHSIG(`death_signal`) is set between fork and
/// exec, and the child exits at once if we were already gone by then.
pub fn set_child_dies_with_parent(command: &mut Command, death_signal: Signal) {
    let parent = nix::unistd::getpid();
    let death_signal = death_signal as libc::c_int;
    command.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec; it calls
    // only prctl(2) and getppid(2), both async-signal-safe, allocates nothing
    // and returns an io::Error built from a raw errno (no allocation).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent.as_raw() {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Let the child `command` starts inherit `fd` (its number unchanged): clear
/// close-on-exec on it between fork and exec. `fd` must be 3 or above.
pub fn keep_open_across_exec(command: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only fcntl(2), which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Send `signal` to every process of the group `pgid`. A group that no longer
/// exists is not an error.
pub fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 {
        return; // never signal group 0 (ours) or 1
    }
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), signal);
}

/// Does the process group `pgid` still have members?
pub fn group_alive(pgid: u32) -> bool {
    let Ok(raw) = i32::try_from(pgid) else {
        return false;
    };
    raw > 1 && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), None).is_ok()
}

/// A poll(2) timeout for `d`, saturating at the largest one poll takes.
pub fn poll_timeout(d: std::time::Duration) -> nix::poll::PollTimeout {
    let millis = i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    nix::poll::PollTimeout::try_from(millis).unwrap_or(nix::poll::PollTimeout::MAX)
}

/// Ask for a pipe buffer of `bytes` (F_SETPIPE_SZ); the kernel may refuse
/// (above /proc/sys/fs/pipe-max-size, or the user's pipe quota is used up).
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: i32) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETPIPE_SZ(bytes))?;
    Ok(())
}

/// Ask for a send buffer of `bytes` on socket `fd` (the kernel caps it at
/// net.core.wmem_max).
pub fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SndBuf, &bytes)?;
    Ok(())
}

/// Bytes waiting to be read in the pipe `fd` (FIONREAD).
pub fn pipe_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Move up to `len` bytes from the pipe `from` to the socket `to` in the
/// kernel (splice(2): the pages are handed on, not copied through us),
/// without waiting: WouldBlock when the socket is full.
pub fn splice_to_socket(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: two valid fds, no offsets (a pipe and a socket have none).
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Can this kernel splice from a pipe to a socket? Tried once per process
/// with one byte (a seccomp filter or an exotic kernel may refuse it; the
/// fronts then copy as before).
pub fn splice_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let probe = || -> io::Result<bool> {
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let (ours, _peer) = std::os::unix::net::UnixStream::pair()?;
            nix::unistd::write(&write, b"x")?;
            Ok(splice_to_socket(read.as_fd(), ours.as_fd(), 1)? == 1)
        };
        match probe() {
            Ok(true) => true,
            other => {
                log::debug!("splice(2) from a pipe to a socket does not work here: {other:?}");
                false
            }
        }
    })
}

/// Give the memory malloc holds free back to the system (glibc keeps the
/// heap's free pages otherwise: a 1 MiB upload would leave the shim a
/// megabyte bigger for good). Called when idle, never per request.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims malloc's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Put `fd` in non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Mark `fd` close-on-exec.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Inherited sockets.

/// What an inherited file descriptor turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// Not open at all.
    Closed,
    /// Open, but not a socket (a tty, /dev/null, a pipe, a file).
    NotSocket,
    /// A socket, but not a listening stream socket of a family we serve.
    UnusableSocket(&'static str),
    /// A listening stream socket.
    Listener(ListenerFamily),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerFamily {
    Unix,
    Inet,
    Inet6,
}

/// Inspect fd `raw` without taking ownership of it.
pub fn inspect_fd(raw: RawFd) -> FdKind {
    // SAFETY: the BorrowedFd is used only within this function while `raw` is
    // open (fstat below fails with EBADF otherwise and we return before use).
    let st = match fstat(unsafe { BorrowedFd::borrow_raw(raw) }) {
        Ok(st) => st,
        Err(_) => return FdKind::Closed,
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return FdKind::NotSocket;
    }
    // SAFETY: `raw` is open (fstat succeeded) and we only borrow it here.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    match socket::getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(_) => return FdKind::UnusableSocket("not a stream socket"),
        Err(_) => return FdKind::UnusableSocket("socket type unknown"),
    }
    let listening = match socket::getsockopt(&fd, sockopt::AcceptConn) {
        Ok(v) => v,
        // Fallback (libfcgi's test): a listener has no peer.
        Err(_) => matches!(
            socket::getpeername::<SockaddrStorage>(raw),
            Err(Errno::ENOTCONN)
        ),
    };
    if !listening {
        return FdKind::UnusableSocket("a connected socket, not a listening one");
    }
    let family = socket::getsockname::<SockaddrStorage>(raw)
        .ok()
        .and_then(|a| a.family());
    match family {
        Some(AddressFamily::Unix) => FdKind::Listener(ListenerFamily::Unix),
        Some(AddressFamily::Inet) => FdKind::Listener(ListenerFamily::Inet),
        Some(AddressFamily::Inet6) => FdKind::Listener(ListenerFamily::Inet6),
        _ => FdKind::UnusableSocket("unsupported address family"),
    }
}

/// Take ownership of an inherited fd after [`inspect_fd`] found it usable.
///
/// # Safety contract (checked by the caller)
/// `raw` must be open and not owned by anything else in this process.
pub fn adopt_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: callers pass only fd 0, fd 3, or the fd a standalone server
    // named in FCGI_SHIM_LISTEN_FD before re-exec'ing itself, after
    // inspect_fd found it open; nothing else in the process owns those fds
    // (std never wraps fd 0 in an OwnedFd; stdin is only read through libc by
    // std if used, and we never use it).
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Accept one connection, non-blocking and close-on-exec (one syscall, no
/// fcntl afterwards). EINTR and EAGAIN come back as errors.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Conn> {
    let raw = socket::accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // SAFETY: accept4 just returned this fd; nothing else owns it.
    Ok(Conn(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// Clear the environment variables systemd's socket activation set.
pub fn forget_listen_env() {
    // SAFETY: called during start-up while the process has a single thread,
    // so no other thread reads the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
}

/// Remove one variable from our environment (start-up, single-threaded).
pub fn forget_env(name: &str) {
    // SAFETY: called during start-up while the process has a single thread,
    // so no other thread reads the environment concurrently.
    unsafe {
        std::env::remove_var(name);
    }
}

/// Take ownership of `fd`, a pipe to a worker that the image before a
/// re-exec left open for us (its number came in our environment): checked
/// to be open, and made close-on-exec again.
pub fn adopt_handed_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::other(format!("fd {fd} is not one to adopt")));
    }
    fcntl(
        // SAFETY: only borrowed for the F_GETFD probe; fcntl on a closed
        // number fails with EBADF and touches nothing.
        unsafe { BorrowedFd::borrow_raw(fd) },
        FcntlArg::F_GETFD,
    )?;
    // SAFETY: the number is open (just checked) and was named to us as ours
    // alone by our previous image, which left it to us across exec; the
    // caller takes it once (the variable that named it is removed).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(owned)
}

/// A connected stream socket (Unix or TCP) read and written with plain
/// read(2)/write(2).
#[derive(Debug)]
pub struct Conn(OwnedFd);

impl Conn {
    /// Shut down the write half (tells the peer we are done).
    pub fn shutdown_write(&self) {
        let _ = socket::shutdown(self.0.as_raw_fd(), socket::Shutdown::Write);
    }
}

impl From<OwnedFd> for Conn {
    fn from(fd: OwnedFd) -> Conn {
        Conn(fd)
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Conn {
    /// One read(2) of up to `max` bytes appended to `buf`, into its spare
    /// capacity: no zeroing of a large buffer before each read.
    pub fn read_append(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        read_append(self.0.as_fd(), buf, max)
    }
}

/// One read(2) of up to `max` bytes from `fd` appended to `buf`, into its
/// spare capacity: no zeroing of a large buffer before each read.
pub fn read_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    // SAFETY: read(2) writes at most `len` bytes into the spare capacity,
    // which `reserve` made at least that long; the pointer is valid for
    // writes of `len` bytes and nothing else aliases it meanwhile.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), len) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the first `n` bytes of the spare capacity were just written
    // by read(2) (n <= len <= spare capacity).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::unistd::read(&self.0, buf)?)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(nix::unistd::write(&self.0, buf)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The process id, for log lines.
pub fn pid() -> u32 {
    std::process::id()
}

/// fd 0 in a CGI invocation (the request body).
pub fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: in CGI mode fd 0 is the request body pipe, open for the life of
    // the process; nothing in this process closes or adopts it in that mode.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Clear close-on-exec on `fd`, so it survives a re-exec (systemd's fd 3).
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Child subreaper: descendants that leave their process group stay ours.

/// Become a child subreaper (PR_SET_CHILD_SUBREAPER, Linux 3.4): a
/// descendant whose parent exits is re-parented to us instead of init, also
/// after `setsid()`, so we can end it. Not inherited by fork(2); kept across
/// execve(2).
pub fn become_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// One child process of ours, as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildProcess {
    pub pid: u32,
    pub pgid: u32,
    pub session: u32,
    /// Exited, not yet reaped.
    pub zombie: bool,
    /// Its command name (the kernel's 15 bytes).
    pub name: String,
}

/// Our process group.
pub fn own_pgid() -> u32 {
    nix::unistd::getpgrp().as_raw().unsigned_abs()
}

/// Our children: from /proc/self/task/*/children (CONFIG_PROC_CHILDREN),
/// else by reading every /proc/<pid>/stat for our pid as the parent.
pub fn children() -> Vec<ChildProcess> {
    let me = std::process::id();
    // A thread that ends meanwhile has no file any more: skip it; without
    // CONFIG_PROC_CHILDREN no thread has one.
    let listed = std::fs::read_dir("/proc/self/task").ok().and_then(|tasks| {
        let mut pids = Vec::new();
        let mut any = false;
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                any = true;
                pids.extend(
                    text.split_ascii_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        any.then_some(pids)
    });
    let candidates: Vec<u32> = match listed {
        Some(pids) => pids,
        None => std::fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .collect()
            })
            .unwrap_or_default(),
    };
    candidates
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (ppid, child) = parse_stat(pid, &stat)?;
            (ppid == me).then_some(child)
        })
        .collect()
}

/// /proc/<pid>/stat: "pid (comm) state ppid pgrp session ..."; the name
/// may hold spaces and parentheses, so the fields start after the last ')'.
fn parse_stat(pid: u32, stat: &str) -> Option<(u32, ChildProcess)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let mut fields = stat.get(close + 1..)?.split_ascii_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some((
        ppid,
        ChildProcess {
            pid,
            pgid,
            session,
            zombie: state == "Z" || state == "X",
            name,
        },
    ))
}

// ---------------------------------------------------------------------------
// The group guard: application process groups die with us, even by SIGKILL.
//
// PR_SET_PDEATHSIG reaches only an application's first process; what it
// started (a shell script's `sleep`, a forking server's workers) would
// survive a SIGKILLed shim. The guard is a small forked copy of us, in its own
// session so a signal to the web server's process group misses it, that holds
// the read end of a pipe. We tell it each application process group we start
// and end. When the write end closes (we exited, were killed, or exec'd), it
// ends the groups it still knows with SIGTERM, then SIGKILL, and exits.

/// One message to the guard: b'+' or b'-', then the process group id (LE).
const GUARD_MESSAGE: usize = 5;
/// Groups the guard tracks at once; more are not tracked (logged by the caller).
const GUARD_CAPACITY: usize = 1024;

/// The write end of the pipe to the guard process.
#[derive(Debug)]
pub struct GroupGuard {
    write: OwnedFd,
    pid: u32,
}

impl GroupGuard {
    /// Start the guard. It is our child (as a child subreaper we would
    /// inherit it anyway if it were double-forked), so the caller knows its
    /// pid and spares it when ending orphans; it exits when our end of the
    /// pipe closes, and whoever we are then (the image after a re-exec)
    /// reaps it with the other orphans.
    pub fn start() -> io::Result<GroupGuard> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let read_raw = read.as_raw_fd();
        // SAFETY: fork(2) itself is safe to call; the child branch below only
        // calls async-signal-safe functions (setsid, prctl, signal, close,
        // close_range, read, kill, nanosleep, _exit) on plain stack data and
        // never returns into Rust code that might allocate or take locks, so it
        // is sound even if other threads exist.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                // SAFETY: see above; `guard_child` never returns.
                unsafe { guard_child(read_raw) }
            }
            child => {
                drop(read);
                Ok(GroupGuard {
                    write,
                    pid: child.unsigned_abs(),
                })
            }
        }
    }

    /// The guard's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Tell the guard about a new process group.
    pub fn watch(&self, pgid: u32) -> io::Result<()> {
        self.send(b'+', pgid)
    }

    /// Tell the guard a process group has ended.
    pub fn forget(&self, pgid: u32) -> io::Result<()> {
        self.send(b'-', pgid)
    }

    fn send(&self, op: u8, pgid: u32) -> io::Result<()> {
        let mut msg = [0u8; GUARD_MESSAGE];
        msg[0] = op;
        msg[1..].copy_from_slice(&pgid.to_le_bytes());
        // One write of less than PIPE_BUF bytes is atomic, so prefork workers
        // sharing the pipe never interleave their messages.
        match nix::unistd::write(&self.write, &msg) {
            Ok(GUARD_MESSAGE) => Ok(()),
            Ok(_) => Err(io::ErrorKind::WriteZero.into()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The guard's side; runs in a forked child, never returns.
///
/// # Safety
/// Must be called only in a freshly forked child, with `read` the pipe's read end.
unsafe fn guard_child(read: RawFd) -> ! {
    // SAFETY: only async-signal-safe libc calls on stack data (the caller
    // is a freshly forked child); every path ends in _exit.
    unsafe {
        // Its own session: not in the web server's process group, no terminal.
        libc::setsid();
        // `ps -o comm` / top show what it is (15 bytes + NUL, the kernel's limit).
        libc::prctl(libc::PR_SET_NAME, c"fcgi-shim-guard".as_ptr());
        // Our handlers would write to the signal pipe we are about to close;
        // the guard ends only when the pipe closes.
        for signo in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGPIPE,
        ] {
            libc::signal(signo, libc::SIG_IGN);
        }
        // It starts no process; our SIGCHLD handler has nothing to wake here.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        // Hold nothing of ours open: not the listening socket, not a connection.
        for fd in 0..read {
            libc::close(fd);
        }
        if libc::close_range((read + 1) as libc::c_uint, libc::c_uint::MAX, 0) != 0 {
            for fd in (read + 1)..4096 {
                libc::close(fd);
            }
        }
        let mut groups = [0 as libc::pid_t; GUARD_CAPACITY];
        let mut buf = [0u8; GUARD_MESSAGE];
        loop {
            let mut got = 0;
            while got < GUARD_MESSAGE {
                let n = libc::read(read, buf.as_mut_ptr().add(got).cast(), GUARD_MESSAGE - got);
                if n > 0 {
                    got += n as usize;
                } else if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                } else {
                    guard_end_groups(&groups);
                    libc::_exit(0);
                }
            }
            let pgid = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as libc::pid_t;
            if pgid <= 1 {
                continue;
            }
            let (find, put) = if buf[0] == b'+' { (0, pgid) } else { (pgid, 0) };
            if let Some(slot) = groups.iter_mut().find(|g| **g == find) {
                *slot = put;
            }
        }
    }
}

/// SIGTERM every group, up to 0.5 s for them to go, then SIGKILL.
///
/// # Safety
/// Async-signal-safe; called only from [`guard_child`].
unsafe fn guard_end_groups(groups: &[libc::pid_t]) {
    // SAFETY: kill(2) and nanosleep(2) are async-signal-safe.
    unsafe {
        for &g in groups.iter().filter(|g| **g > 1) {
            libc::kill(-g, libc::SIGTERM);
        }
        for _ in 0..10 {
            if !groups.iter().any(|&g| g > 1 && libc::kill(-g, 0) == 0) {
                return;
            }
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        for &g in groups.iter().filter(|g| **g > 1) {
            libc::kill(-g, libc::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------------------
// Standalone server (`fcgi-shim serve`): fork, sessions, umask, peers.

/// Which side of a [`fork_single_threaded`] we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    Parent { child: u32 },
    Child,
}

/// Threads of this process, from /proc/self/task.
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|entries| entries.count())
}

/// fork(2), refused unless this process has exactly one thread.
///
/// With one thread, the child is a complete copy of the process in which no
/// lock (allocator, logger, stdio) can be held by a thread that does not
/// exist there, so the child may go on running ordinary Rust code.
pub fn fork_single_threaded() -> io::Result<Forked> {
    match thread_count() {
        Some(1) => {}
        Some(n) => {
            return Err(io::Error::other(format!(
                "refusing to fork: the process has {n} threads"
            )));
        }
        None => return Err(io::Error::other("refusing to fork: cannot count threads")),
    }
    // SAFETY: the process has a single thread (checked just above; this
    // crate never starts threads behind the caller's back), so the child
    // inherits no lock held by another thread and may allocate and log.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent {
            child: child.as_raw().unsigned_abs(),
        }),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// In a forked worker: receive `signal` when the parent dies, and exit at
/// once if the parent `parent` is already gone.
pub fn die_with_parent(parent: u32, signal: Signal) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(signal)?;
    if nix::unistd::getppid().as_raw().unsigned_abs() != parent {
        std::process::exit(0);
    }
    Ok(())
}

/// Set the process umask; returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    let mode = nix::sys::stat::Mode::from_bits_truncate(mask as libc::mode_t);
    nix::sys::stat::umask(mode).bits()
}

/// Start a new session (detach from the controlling terminal).
pub fn new_session() -> io::Result<()> {
    nix::unistd::setsid()?;
    Ok(())
}

/// Point fd 0 at /dev/null and fd 1 and fd 2 at the given files.
pub fn redirect_stdio(stdout: BorrowedFd<'_>, stderr: BorrowedFd<'_>) -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(stdout)?;
    nix::unistd::dup2_stderr(stderr)?;
    Ok(())
}

/// Is there a process with this pid (ours or another user's)?
pub fn process_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    raw > 0
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
            Err(Errno::ESRCH)
        )
}

/// Has the process `pid` ended: no such process, or a zombie not reaped
/// yet (by its parent, which may be another process of ours)?
pub fn process_gone(pid: u32) -> bool {
    if !process_exists(pid) {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(pid, &stat))
        .is_none_or(|(_, p)| p.zombie)
}

/// Send `signal` to the process `pid` (never to a group).
pub fn signal_process(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid)
        && raw > 1
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal);
    }
}

/// Has our child `pid` exited? Reaps it if so, with its status. `None`
/// while it runs (or if it is not our child).
pub fn try_wait(pid: u32) -> Option<std::process::ExitStatus> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use std::os::unix::process::ExitStatusExt;
    let raw = i32::try_from(pid).ok()?;
    loop {
        // The raw wait(2) status, as ExitStatus keeps it.
        return match waitpid(nix::unistd::Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                Some(std::process::ExitStatus::from_raw((code & 0xff) << 8))
            }
            Ok(WaitStatus::Signaled(_, signal, core)) => Some(std::process::ExitStatus::from_raw(
                signal as i32 | if core { 0x80 } else { 0 },
            )),
            Err(Errno::EINTR) => continue,
            _ => None,
        };
    }
}

/// Reap `pid` if it has exited (`block`: wait for it).
pub fn reap(pid: u32, block: bool) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    let flags = if block {
        None
    } else {
        Some(nix::sys::wait::WaitPidFlag::WNOHANG)
    };
    !matches!(
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(raw), flags),
        Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(Errno::EINTR)
    )
}

impl Conn {
    /// The peer's IP address (None for a unix socket).
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        let addr = socket::getpeername::<SockaddrStorage>(self.0.as_raw_fd()).ok()?;
        if let Some(v4) = addr.as_sockaddr_in() {
            return Some(std::net::IpAddr::V4(v4.ip()));
        }
        addr.as_sockaddr_in6().map(|v6| {
            let ip = v6.ip();
            // An IPv4 peer on a dual-stack socket: compare it as IPv4.
            ip.to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe finds splice on Linux (else big responses are copied
    /// again, and nothing else would notice), and bytes arrive in order.
    #[test]
    fn splice_moves_pipe_bytes_to_a_socket() {
        assert!(splice_works());
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        nix::unistd::write(&write, b"hello world").unwrap();
        assert_eq!(pipe_bytes(read.as_fd()).unwrap(), 11);
        assert_eq!(splice_to_socket(read.as_fd(), ours.as_fd(), 5).unwrap(), 5);
        assert_eq!(pipe_bytes(read.as_fd()).unwrap(), 6);
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut peer, &mut got).unwrap();
        assert_eq!(&got, b"hello");
    }

    #[test]
    fn stat_lines() {
        let (ppid, c) = parse_stat(42, "42 (sh) S 7 42 42 0 -1 4194560 ...").unwrap();
        assert_eq!(ppid, 7);
        assert_eq!((c.pid, c.pgid, c.session, c.zombie), (42, 42, 42, false));
        assert_eq!(c.name, "sh");
        // A name with spaces and parentheses; a zombie.
        let (ppid, c) = parse_stat(9, "9 (a) b (c) Z 1 5 6 0").unwrap();
        assert_eq!((ppid, c.pgid, c.session, c.zombie), (1, 5, 6, true));
        assert_eq!(c.name, "a) b (c");
        assert!(parse_stat(9, "9 (x").is_none());
        assert!(parse_stat(9, "9 (x) S").is_none());
    }

    #[test]
    fn children_lists_a_child_with_its_group() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let found = children().into_iter().find(|c| c.pid == pid);
        let _ = child.kill();
        let _ = child.wait();
        let c = found.expect("the child is listed");
        assert_eq!((c.pgid, c.zombie, c.name.as_str()), (pid, false, "sleep"));
    }
}

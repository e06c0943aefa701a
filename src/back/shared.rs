//! One server program for all the processes of a site (`kind = "http"`,
//! `shared = true`, the default). mod_fcgid runs up to
//! FcgidMaxProcessesPerClass shims per site, each serving one request at a
//! time; were each to start its own node or puma, a site would run eight
//! servers, each woken once per request with its caches cold, where one
//! serves them all (that is how Passenger and mod_proxy_http run them).
//!
//! Owns: the site's keeper: a process of ours (`fcgi-shim keep-server`),
//! started by the first shim that needs it, outside every shim's process
//! tree (mod_fcgid stops shims one by one, in any order), that runs the
//! server with an owning `ServerBack` (start, readiness, restart with the
//! backoff, its output as log lines) and tells each connected shim where it
//! listens, on a unix socket in the private state directory. The keeper
//! stops the server and exits when its last shim has gone, however it went.
//! A version's key (the settings, the stamps of their files and of the
//! executable): a touch makes another key, so another keeper and another
//! server, ready before a shim switches to it; the old keeper ends when its
//! last shim has switched.
//! Must not: relay requests (each shim connects to the server itself), or
//! start processes other than through `supervise`.
//!
//! What a keeper says, one line each, on connecting and on every change:
//! `starting`, `ready PID unix PATH`, `ready PID port N`, `failed WHY`. A
//! shim's connection being open is what counts; all it ever says is
//! `replace PID` when a request to that server timed out.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use super::Back;
use super::server::{Address, Kept, ServerBack};
use crate::config::{AppConfig, Config, ServerConfig};

/// The fd a keeper gets the site's spawn lock on (held until it listens).
const LOCK_FD: i32 = 3;
/// How long a shim waits for the keeper it started to listen.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// A keeper nobody connects to (its shim died at once) gives up after this.
const NOBODY_CAME: Duration = Duration::from_secs(10);
/// The keeper's longest sleep while its server starts, and once it serves.
const TICK_STARTING: Duration = Duration::from_millis(50);
const TICK_SERVING: Duration = Duration::from_millis(250);
/// The longest path a unix socket address holds (sun_path, with its NUL).
const SUN_PATH_MAX: usize = 107;

/// Where a version's keeper listens, and the site's spawn lock.
#[derive(Debug, Clone)]
pub struct Share {
    socket: PathBuf,
    lock: PathBuf,
    settings: PathBuf,
    key: String,
}

impl Share {
    /// The share of the version `config` is (its server settings `server`).
    pub fn for_config(config: &Config, server: &ServerConfig) -> io::Result<Share> {
        let dir = crate::last_good::private_state_dir()?;
        let name = crate::last_good::file_name(&config.path);
        let stem = name.strip_suffix(".toml").unwrap_or(&name);
        let key = version_key(config, server);
        let socket = dir.join(format!("{stem}-{key}.sock"));
        if socket.as_os_str().len() > SUN_PATH_MAX {
            return Err(io::Error::other(format!(
                "{}: too long for a unix socket; set XDG_STATE_HOME to a shorter directory",
                socket.display()
            )));
        }
        Ok(Share {
            socket,
            lock: dir.join(format!("{stem}.share-lock")),
            settings: config.path.clone(),
            key,
        })
    }

    /// Take the site's spawn lock, waiting for it (another shim holds it
    /// only while its keeper comes up).
    fn lock(&self) -> io::Result<File> {
        let file = crate::verdict::open_lock_file(&self.lock)?;
        file.lock()?;
        Ok(file)
    }
}

/// What identifies a version: the server's settings and limits as parsed,
/// and the stamps (device, inode, size, mtime) of the settings file, the
/// watched files and the executable. `touch` changes it; nothing else does.
fn version_key(config: &Config, server: &ServerConfig) -> String {
    let mut text = format!("{server:?}\n{:?}\n", config.limits);
    let exe = PathBuf::from("/proc/self/exe");
    for path in std::iter::once(&config.path)
        .chain(&config.watch)
        .chain([&exe])
    {
        match fs::metadata(path) {
            Ok(m) => text.push_str(&format!(
                "{} {}:{}:{}:{}.{}\n",
                path.display(),
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            )),
            Err(_) => text.push_str(&format!("{} -\n", path.display())),
        }
    }
    format!("{:016x}", crate::last_good::fnv1a(text.as_bytes()))
}

/// What the keeper last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// Not connected (yet, or the keeper is gone).
    Nothing,
    Starting,
    Ready(u32, Address),
    Failed(String),
}

impl Told {
    fn parse(line: &str) -> Option<Told> {
        let mut words = line.splitn(4, ' ');
        match (words.next()?, words.next(), words.next(), words.next()) {
            ("starting", None, _, _) => Some(Told::Starting),
            ("failed", Some(_), _, _) => Some(Told::Failed(line["failed ".len()..].to_string())),
            ("ready", Some(pid), Some("unix"), Some(path)) => {
                Some(Told::Ready(pid.parse().ok()?, Address::Unix(path.into())))
            }
            ("ready", Some(pid), Some("port"), Some(port)) => Some(Told::Ready(
                pid.parse().ok()?,
                Address::Port(port.parse().ok()?),
            )),
            _ => None,
        }
    }

    fn line(&self) -> String {
        match self {
            Told::Nothing | Told::Starting => "starting\n".into(),
            Told::Ready(pid, Address::Unix(path)) => {
                format!("ready {pid} unix {}\n", path.display())
            }
            Told::Ready(pid, Address::Port(port)) => format!("ready {pid} port {port}\n"),
            Told::Failed(why) => format!("failed {}\n", why.replace('\n', " ")),
        }
    }
}

// ---------------------------------------------------------------------------
// A shim's side.

/// A shim's connection to its version's keeper.
pub struct Link {
    share: Share,
    conn: Option<UnixStream>,
    input: Vec<u8>,
    told: Told,
}

impl Link {
    /// Connect to the version's keeper, starting it if none runs. Err: no
    /// keeper could be had (no /proc/self/exe in a jail, a full state
    /// directory ...).
    pub fn new(share: Share) -> io::Result<Link> {
        let mut link = Link {
            share,
            conn: None,
            input: Vec::new(),
            told: Told::Nothing,
        };
        link.conn = Some(link.connect()?);
        link.told = Told::Starting;
        link.read();
        Ok(link)
    }

    /// What the keeper says now: connected (a keeper started) if we were
    /// not, its new lines read.
    pub fn refresh(&mut self) -> &Told {
        if self.conn.is_none() {
            self.told = match self.connect() {
                Ok(conn) => {
                    self.conn = Some(conn);
                    Told::Starting
                }
                Err(e) => {
                    let why = format!("cannot start the site's shared server: {e}");
                    if let Some(n) = crate::log::once_a_minute(&why) {
                        log::error!("{why} (503){}", crate::log::left_out(n));
                    }
                    Told::Failed(why)
                }
            };
        }
        self.read();
        &self.told
    }

    /// A request to the server `pid` timed out: the keeper replaces it (if
    /// it still serves; another shim may have asked first).
    pub fn ask_replace(&mut self, pid: u32) {
        if let Some(conn) = &mut self.conn {
            let _ = conn.write_all(format!("replace {pid}\n").as_bytes());
        }
    }

    /// The connection, to poll (readable: the keeper said something, or went).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.conn.as_ref().map(AsFd::as_fd)
    }

    fn read(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        let mut buf = [0u8; 512];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => {
                    // The keeper is gone (killed): the next look starts another.
                    self.conn = None;
                    self.input.clear();
                    self.told = Told::Nothing;
                    return;
                }
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        while let Some(end) = self.input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.input.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            match Told::parse(&line) {
                Some(told) => self.told = told,
                None => log::warn!("shared server: the keeper said {line:?}; ignored"),
            }
        }
    }

    /// A connection to the keeper: the running one's, or, under the site's
    /// spawn lock, a new keeper's.
    fn connect(&self) -> io::Result<UnixStream> {
        if let Ok(conn) = UnixStream::connect(&self.share.socket) {
            conn.set_nonblocking(true)?;
            return Ok(conn);
        }
        let lock = self.share.lock()?;
        // Another shim may have started it while we waited for the lock.
        if let Ok(conn) = UnixStream::connect(&self.share.socket) {
            conn.set_nonblocking(true)?;
            return Ok(conn);
        }
        // Nobody listens there: what is left is a killed keeper's.
        let _ = fs::remove_file(&self.share.socket);
        let args = [
            "keep-server".into(),
            self.share.settings.clone().into_os_string(),
            self.share.key.clone().into(),
        ];
        crate::supervise::spawn_detached(&args, lock.as_fd(), LOCK_FD)?;
        let deadline = Instant::now() + LISTEN_WAIT;
        loop {
            match UnixStream::connect(&self.share.socket) {
                Ok(conn) => {
                    conn.set_nonblocking(true)?;
                    return Ok(conn);
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "its keeper did not listen on {} within {}s: {e}",
                        self.share.socket.display(),
                        LISTEN_WAIT.as_secs()
                    )));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The keeper.

/// `fcgi-shim keep-server SETTINGS KEY`: run the site's shared server for
/// the version KEY of SETTINGS until no shim is connected.
pub fn keep_server(settings: &Path, key: &str) -> ExitCode {
    // SAFETY: F_GETFD only asks whether the fd is open.
    if unsafe { libc::fcntl(LOCK_FD, libc::F_GETFD) } < 0 {
        eprintln!(
            "fcgi-shim keep-server: started by fcgi-shim itself, with the site's lock on fd {LOCK_FD}"
        );
        return ExitCode::from(2);
    }
    // SAFETY: it is open: the shim that started us put the site's spawn
    // lock there (`spawn_detached`), and nothing else of ours uses it.
    let lock = unsafe { OwnedFd::from_raw_fd(LOCK_FD) };
    // The server must not inherit it.
    let _ = crate::sys::set_cloexec(lock.as_fd());
    let config = match crate::config::load(settings) {
        Ok(c) => c,
        Err(e) => {
            log::error!("shared server: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = crate::log::configure(&config.site, &config.log.target, config.log.level);
    let AppConfig::Server(server) = &config.app else {
        log::error!("shared server: {}: not kind = \"http\"", settings.display());
        return ExitCode::from(1);
    };
    let share = match Share::for_config(&config, server) {
        Ok(s) if s.key == key => s,
        Ok(_) => {
            // Changed since the shim read them: it reloads and asks again.
            log::info!("shared server: the settings changed before it started; not started");
            return ExitCode::from(3);
        }
        Err(e) => {
            log::error!("shared server: {e}");
            return ExitCode::from(1);
        }
    };
    let signals = match crate::sys::install_signal_handlers() {
        Ok(s) => s,
        Err(e) => {
            log::error!("shared server: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match UnixListener::bind(&share.socket).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            log::error!(
                "shared server: cannot listen on {}: {e}",
                share.socket.display()
            );
            return ExitCode::from(1);
        }
    };
    // Listening: shims that come now connect instead of starting another.
    drop(lock);
    let mut back = ServerBack::new(server.clone(), config.limits);
    let mut shims: Vec<Shim> = Vec::new();
    let (born, mut anyone_came) = (Instant::now(), false);
    log::debug!(
        "shared server: keeper for {} started",
        share.socket.display()
    );
    loop {
        loop {
            match listener.accept() {
                Ok((conn, _)) if conn.set_nonblocking(true).is_ok() => {
                    shims.push(Shim {
                        conn,
                        said: String::new(),
                        input: Vec::new(),
                    });
                    anyone_came = true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let mut replace = Vec::new();
        shims.retain_mut(|shim| shim.read(&mut replace));
        for pid in replace {
            if back.serving_pid() == Some(pid) {
                log::warn!("shared server: replacing pid {pid}: a request to it timed out");
                back.replace_kept();
            }
        }
        if crate::sys::stop_requested()
            || (shims.is_empty() && (anyone_came || born.elapsed() > NOBODY_CAME))
        {
            break;
        }
        let told = match back.keep_running() {
            Kept::Starting => Told::Starting,
            Kept::Ready(pid, addr) => Told::Ready(pid, addr),
            Kept::Failed(why) => Told::Failed(why),
        };
        let line = told.line();
        shims.retain_mut(|shim| {
            if shim.said == line {
                return true;
            }
            shim.said = line.clone();
            // A line is far less than a socket buffer: it never blocks.
            shim.conn.write_all(line.as_bytes()).is_ok()
        });
        let tick = if matches!(told, Told::Ready(..)) {
            TICK_SERVING
        } else {
            TICK_STARTING
        };
        let mut fds: Vec<PollFd<'_>> = [listener.as_fd(), signals.fd()]
            .into_iter()
            .chain(shims.iter().map(|shim| shim.conn.as_fd()))
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        let _ = poll(&mut fds, crate::sys::poll_timeout(tick));
        signals.drain();
    }
    log::debug!("shared server: no shim left; stopping it");
    back.shutdown();
    let _ = fs::remove_file(&share.socket);
    ExitCode::SUCCESS
}

/// A shim connected to the keeper.
struct Shim {
    conn: UnixStream,
    /// The last line it was told.
    said: String,
    input: Vec<u8>,
}

impl Shim {
    /// Read what it sent (`replace PID` lines go to `replace`). False: it
    /// has gone (EOF or error).
    fn read(&mut self, replace: &mut Vec<u32>) -> bool {
        let mut buf = [0u8; 256];
        let open = loop {
            match self.conn.read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break e.kind() == io::ErrorKind::WouldBlock,
            }
        };
        while let Some(end) = self.input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.input.drain(..=end).collect();
            match std::str::from_utf8(&line[..end])
                .ok()
                .and_then(|l| l.strip_prefix("replace "))
                .and_then(|pid| pid.parse().ok())
            {
                Some(pid) => replace.push(pid),
                None => log::warn!(
                    "shared server: a shim said {:?}; ignored",
                    String::from_utf8_lossy(&line[..end])
                ),
            }
        }
        // Bounded: a shim sends a line now and then.
        self.input.len() < 4096 && open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for told in [
            Told::Starting,
            Told::Ready(42, Address::Unix("/tmp/a dir/s.sock".into())),
            Told::Ready(7, Address::Port(8080)),
            Told::Failed("it exited during start-up; node: boom".into()),
        ] {
            let line = told.line();
            assert_eq!(Told::parse(line.trim_end()), Some(told), "{line}");
        }
        assert_eq!(Told::parse("ready x unix /a"), None);
        assert_eq!(Told::parse("hello"), None);
    }
}

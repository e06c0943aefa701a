//! Test harness shared by the integration tests: temporary directories, the real
//! `fcgi-shim` binary started on a listening socket, and a small FastCGI client.
//!
//! The client is written from the specification (raw bytes, std only) and must
//! not use the crate's own codec: a bug shared by both sides would otherwise go
//! unnoticed. Every blocking operation here is bounded by a timeout, so a broken
//! shim makes a test fail instead of hanging the suite.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long any single read or write on a FastCGI connection may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The site name of settings written by `Shim::start`: the settings file's stem.
pub const SITE: &str = "testsite";

/// The binary under test.
pub fn shim_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fcgi-shim"))
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A unique directory under `std::env::temp_dir()`, removed on drop unless the
/// test is failing (then its path is printed so the files can be inspected).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Kept short: the socket path inside must fit in sockaddr_un (108 bytes).
        let label: String = label.chars().take(12).collect();
        let path = std::env::temp_dir().join(format!(
            "fcgi-shim-{label}-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` in this directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.join(name);
        fs::write(&path, contents).expect("write temp file");
        path
    }

    /// Writes an executable `/bin/sh` script (the shebang is added here).
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.write(name, &format!("#!/bin/sh\n{body}\n"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod script");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Any process still running from this directory was started by this
        // test (the path is unique); stop it by pid before removing the files.
        let needle = self.path.to_string_lossy().into_owned();
        for pid in processes_matching(&needle) {
            kill_pid("-KILL", pid);
        }
        if thread::panicking() {
            eprintln!("test failed; keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

fn proc_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Pids of live processes (other than this test process) whose command line
/// contains `needle`. Zombies have an empty command line and are not listed.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    proc_pids()
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| contains(&c, needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Pids of live processes whose initial environment contains `needle`
/// (children of a CGI program inherit the request's params this way).
pub fn processes_with_env(needle: &str) -> Vec<u32> {
    proc_pids()
        .into_iter()
        .filter(|pid| {
            let alive = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| !c.is_empty())
                .unwrap_or(false);
            alive
                && fs::read(format!("/proc/{pid}/environ"))
                    .map(|e| contains(&e, needle.as_bytes()))
                    .unwrap_or(false)
        })
        .collect()
}

/// Polls until `probe` returns an empty list or `timeout` passes; returns the
/// last list seen.
pub fn wait_until_gone(timeout: Duration, probe: impl Fn() -> Vec<u32>) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = probe();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn kill_pid(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Polls `path` until it exists or `timeout` passes.
pub fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    path.exists()
}

/// Spawns `cmd`, retrying while the executable is still busy (ETXTBSY): a
/// freshly written file can be held open for writing by a sibling test's fork.
pub fn spawn_retrying(cmd: &mut Command) -> io::Result<Child> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 50 => {
                tries += 1;
                thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// What a bounded command run produced.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `cmd` (stdout and stderr captured in files of `dir`), killing it and
/// panicking if it has not exited within `timeout`.
pub fn run_bounded(cmd: &mut Command, dir: &TempDir, timeout: Duration) -> Outcome {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(&format!("run{n}.stdout"));
    let err_path = dir.join(&format!("run{n}.stderr"));
    cmd.stdout(File::create(&out_path).expect("create stdout file"));
    cmd.stderr(File::create(&err_path).expect("create stderr file"));
    let started = Instant::now();
    let mut child = spawn_retrying(cmd).expect("spawn command");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not exit within {timeout:?}; stderr so far: {}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned(),
        elapsed: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------
// The shim under test
// ---------------------------------------------------------------------------

/// Where the listening socket handed to the shim lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
}

/// How to start the shim. `Launch::default()` is what `Shim::start` does:
/// a Unix listener on fd 0 and `fcgi-shim <dir>/testsite.toml`.
pub struct Launch {
    pub transport: Transport,
    /// Written to `<dir>/testsite.toml` and passed as the only argument.
    pub settings: Option<String>,
    /// The executable to run; the built binary by default.
    pub program: Option<PathBuf>,
    /// Environment added to the cleared environment (which keeps only PATH).
    pub env: Vec<(String, String)>,
    /// Start through a shell trampoline that moves the listener to fd 3 and sets
    /// LISTEN_PID / LISTEN_FDS as systemd socket activation does.
    pub systemd: bool,
    /// Arguments after argv[0] instead of the settings path (e.g. a bare
    /// `mysite.fcgi`, as suEXEC passes it).
    pub args: Option<Vec<OsString>>,
    /// argv[0] instead of the program's path (e.g. a bare `mysite.fcgi`).
    pub arg0: Option<OsString>,
    /// The working directory instead of `/` (mod_fcgid: the script's directory).
    pub cwd: Option<PathBuf>,
}

impl Default for Launch {
    fn default() -> Launch {
        Launch {
            transport: Transport::Unix,
            settings: None,
            program: None,
            env: Vec::new(),
            systemd: false,
            args: None,
            arg0: None,
            cwd: None,
        }
    }
}

#[derive(Clone, Debug)]
enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A program for [`Launch::program`]: runs the shell lines `prelude` (a
/// `ulimit`, a `trap`), then execs the shim with its arguments, as a user's
/// shell would start it.
pub fn shim_after(dir: &TempDir, prelude: &str) -> PathBuf {
    dir.script(
        "limited-shim",
        &format!("{prelude}\nexec '{}' \"$@\"", shim_bin().display()),
    )
}

/// A running `fcgi-shim` with its listener, log and stdout captured.
pub struct Shim {
    child: Child,
    exited: Option<ExitStatus>,
    address: Address,
    log_path: PathBuf,
    stdout_path: PathBuf,
    // Declared last: dropped after the child has been stopped.
    dir: TempDir,
}

impl Shim {
    /// Starts the shim with `settings_toml` on a Unix listener.
    pub fn start(settings_toml: &str) -> Shim {
        Shim::launch(
            TempDir::new("shim"),
            Launch {
                settings: Some(settings_toml.to_string()),
                ..Launch::default()
            },
        )
    }

    /// Starts the shim with `settings_toml` on a TCP listener on 127.0.0.1.
    pub fn start_tcp(settings_toml: &str) -> Shim {
        Shim::launch(
            TempDir::new("shimtcp"),
            Launch {
                transport: Transport::Tcp,
                settings: Some(settings_toml.to_string()),
                ..Launch::default()
            },
        )
    }

    pub fn launch(dir: TempDir, launch: Launch) -> Shim {
        let (listener, address): (OwnedFd, Address) = match launch.transport {
            Transport::Unix => {
                let path = dir.join("fcgi.sock");
                let listener = UnixListener::bind(&path).expect("bind unix listener");
                (listener.into(), Address::Unix(path))
            }
            Transport::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp listener");
                let addr = listener.local_addr().expect("local_addr");
                (listener.into(), Address::Tcp(addr))
            }
        };
        let program = launch.program.clone().unwrap_or_else(shim_bin);
        let mut args: Vec<OsString> = Vec::new();
        if let Some(settings) = &launch.settings {
            let path = dir.write(&format!("{SITE}.toml"), settings);
            args.push(path.into_os_string());
        }
        if let Some(given) = &launch.args {
            args = given.clone();
        }
        let mut cmd = if launch.systemd {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(r#"exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
                .arg(&program)
                .args(&args);
            cmd
        } else {
            let mut cmd = Command::new(&program);
            cmd.args(&args);
            if let Some(arg0) = &launch.arg0 {
                std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
            }
            cmd
        };
        let log_path = dir.join("stderr.log");
        let stdout_path = dir.join("stdout.log");
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            // The last good copies stay in the test's directory (a test may
            // name another state directory in `env`).
            .env("XDG_STATE_HOME", dir.join("state"))
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(launch.cwd.as_deref().unwrap_or(Path::new("/")))
            .stdin(Stdio::from(listener))
            .stdout(File::create(&stdout_path).expect("create stdout file"))
            .stderr(File::create(&log_path).expect("create log file"));
        let child = spawn_retrying(&mut cmd).expect("spawn fcgi-shim");
        // Dropping `cmd` closes this process's copy of the listener, so a shim
        // that died makes connect() fail instead of queueing forever.
        drop(cmd);
        Shim {
            child,
            exited: None,
            address,
            log_path,
            stdout_path,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// The `[fcgi-shim <site> <pid>] ` prefix every log line must carry.
    pub fn log_prefix(&self, site: &str) -> String {
        format!("[fcgi-shim {site} {}] ", self.pid())
    }

    /// A new connection with read and write timeouts set.
    pub fn connect(&self) -> Conn {
        let conn = match &self.address {
            Address::Unix(path) => Conn::Unix(UnixStream::connect(path).expect("connect unix")),
            Address::Tcp(addr) => Conn::Tcp(TcpStream::connect(addr).expect("connect tcp")),
        };
        conn.set_timeouts(IO_TIMEOUT);
        conn
    }

    /// Everything the shim wrote to its stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Polls the log until it contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the shim wrote to fd 1 (must stay empty).
    pub fn stdout_bytes(&self) -> Vec<u8> {
        fs::read(&self.stdout_path).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        kill_pid("-TERM", self.pid());
    }

    /// Status if the shim has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits up to `timeout` for the shim to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            // Our own child, by pid.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- fcgi-shim log ({}) ----\n{}---- end of log ----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

/// A client connection over either transport.
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    pub fn set_timeouts(&self, timeout: Duration) {
        match self {
            Conn::Unix(s) => {
                s.set_read_timeout(Some(timeout)).expect("set_read_timeout");
                s.set_write_timeout(Some(timeout))
                    .expect("set_write_timeout");
            }
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(timeout)).expect("set_read_timeout");
                s.set_write_timeout(Some(timeout))
                    .expect("set_write_timeout");
            }
        }
    }

    pub fn try_clone(&self) -> Conn {
        match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone().expect("clone stream")),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone().expect("clone stream")),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.shutdown(how),
            Conn::Tcp(s) => s.shutdown(how),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a connection the test no longer writes to came to an end.
#[derive(Debug)]
pub enum Closed {
    /// Orderly end of stream after `bytes` more bytes.
    Eof { bytes: Vec<u8> },
    /// The peer reset the connection (it closed with our data still unread).
    Reset { bytes: Vec<u8> },
}

/// Reads until the peer closes the connection; panics if it stays open for
/// `IO_TIMEOUT`.
pub fn read_until_closed(conn: &mut Conn) -> Closed {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Closed::Eof { bytes },
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Closed::Reset { bytes };
            }
            Err(e) => panic!(
                "connection was not closed by the shim (read error {e}, after {} bytes: {:?})",
                bytes.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// FastCGI client, from the specification
// ---------------------------------------------------------------------------

pub const VERSION_1: u8 = 1;

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const DATA: u8 = 8;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

pub const RESPONDER: u16 = 1;
pub const AUTHORIZER: u16 = 2;
pub const FILTER: u16 = 3;

pub const KEEP_CONN: u8 = 1;

pub const REQUEST_COMPLETE: u8 = 0;
pub const CANT_MPX_CONN: u8 = 1;
pub const OVERLOADED: u8 = 2;
pub const UNKNOWN_ROLE: u8 = 3;

/// Largest content of one record.
pub const MAX_CONTENT: usize = 65535;

/// One record as read from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u8,
    pub rtype: u8,
    pub id: u16,
    pub content: Vec<u8>,
}

/// Appends one record: header, content, `padding` zero bytes.
pub fn encode_record_padded(out: &mut Vec<u8>, rtype: u8, id: u16, content: &[u8], padding: u8) {
    assert!(content.len() <= MAX_CONTENT, "record content too long");
    let len = content.len() as u16;
    out.extend_from_slice(&[
        VERSION_1,
        rtype,
        (id >> 8) as u8,
        id as u8,
        (len >> 8) as u8,
        len as u8,
        padding,
        0,
    ]);
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0u8, padding as usize));
}

/// Appends one record padded to a multiple of eight bytes, as the spec recommends.
pub fn encode_record(out: &mut Vec<u8>, rtype: u8, id: u16, content: &[u8]) {
    let padding = ((8 - content.len() % 8) % 8) as u8;
    encode_record_padded(out, rtype, id, content, padding);
}

/// Appends a stream: its content split into records of at most `chunk` bytes,
/// then the empty record that ends the stream.
pub fn encode_stream(out: &mut Vec<u8>, rtype: u8, id: u16, content: &[u8], chunk: usize) {
    for part in content.chunks(chunk.clamp(1, MAX_CONTENT)) {
        encode_record(out, rtype, id, part);
    }
    encode_record(out, rtype, id, &[]);
}

fn encode_length(out: &mut Vec<u8>, len: usize) {
    if len <= 127 {
        out.push(len as u8);
    } else {
        let len = u32::try_from(len).expect("name-value length fits in 31 bits");
        out.extend_from_slice(&(len | 0x8000_0000).to_be_bytes());
    }
}

/// Appends one name-value pair (1-byte lengths up to 127, 4-byte beyond).
pub fn encode_name_value(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    encode_length(out, name.len());
    encode_length(out, value.len());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// Decodes a sequence of name-value pairs; `None` if it is malformed.
pub fn decode_name_values(mut bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    fn length(bytes: &mut &[u8]) -> Option<usize> {
        let first = *bytes.first()?;
        if first & 0x80 == 0 {
            *bytes = &bytes[1..];
            Some(first as usize)
        } else {
            let four: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
            *bytes = &bytes[4..];
            Some((u32::from_be_bytes(four) & 0x7fff_ffff) as usize)
        }
    }
    let mut pairs = Vec::new();
    while !bytes.is_empty() {
        let name_len = length(&mut bytes)?;
        let value_len = length(&mut bytes)?;
        let name = bytes.get(..name_len)?.to_vec();
        let value = bytes.get(name_len..name_len + value_len)?.to_vec();
        bytes = &bytes[name_len + value_len..];
        pairs.push((name, value));
    }
    Some(pairs)
}

/// The BEGIN_REQUEST body for `role` and `flags`.
pub fn begin_body(role: u16, flags: u8) -> [u8; 8] {
    [(role >> 8) as u8, role as u8, flags, 0, 0, 0, 0, 0]
}

/// Encodes params as one PARAMS stream (records of at most `chunk` bytes).
pub fn encode_params<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    id: u16,
    params: &[(N, V)],
    chunk: usize,
) {
    let mut body = Vec::new();
    for (name, value) in params {
        encode_name_value(&mut body, name.as_ref(), value.as_ref());
    }
    encode_stream(out, PARAMS, id, &body, chunk);
}

/// All the bytes of a RESPONDER request: BEGIN_REQUEST, PARAMS, STDIN.
pub fn encode_request<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    id: u16,
    params: &[(N, V)],
    body: &[u8],
    keep_conn: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let flags = if keep_conn { KEEP_CONN } else { 0 };
    encode_record(&mut out, BEGIN_REQUEST, id, &begin_body(RESPONDER, flags));
    encode_params(&mut out, id, params, MAX_CONTENT);
    // Odd-sized chunks so that padding is exercised on the way in.
    encode_stream(&mut out, STDIN, id, body, 65_531);
    out
}

/// Reads one record; `Ok(None)` on end of stream at a record boundary.
pub fn read_record(r: &mut impl Read) -> io::Result<Option<Record>> {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("end of stream inside a record header after {got} bytes"),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u16::from_be_bytes([header[4], header[5]]) as usize;
    let padding = header[6] as usize;
    let mut content = vec![0u8; len + padding];
    r.read_exact(&mut content)?;
    content.truncate(len);
    Ok(Some(Record {
        version: header[0],
        rtype: header[1],
        id: u16::from_be_bytes([header[2], header[3]]),
        content,
    }))
}

/// Reads one record, panicking on end of stream, timeout or I/O error.
pub fn expect_record(conn: &mut Conn, what: &str) -> Record {
    match read_record(conn) {
        Ok(Some(record)) => {
            assert_eq!(record.version, VERSION_1, "version of {record:?}");
            record
        }
        Ok(None) => panic!("connection closed while waiting for {what}"),
        Err(e) => panic!("error while waiting for {what}: {e}"),
    }
}

/// Writes raw bytes, panicking on error.
pub fn send(conn: &mut Conn, bytes: &[u8]) {
    conn.write_all(bytes).expect("write to the shim");
}

/// The application's answer to one request.
#[derive(Debug, Default)]
pub struct Response {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub app_status: u32,
    pub protocol_status: u8,
    /// An empty STDOUT record ended the stdout stream before END_REQUEST.
    pub stdout_ended: bool,
    /// (type, content length) of every record received, in order.
    pub records: Vec<(u8, usize)>,
}

impl Response {
    /// Parses `stdout` as a CGI response; panics with the raw bytes if it is not one.
    pub fn cgi(&self) -> CgiResponse {
        match parse_cgi(&self.stdout) {
            Ok(cgi) => cgi,
            Err(e) => panic!(
                "FCGI_STDOUT is not a CGI response ({e}): {:?}",
                String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(500)])
            ),
        }
    }

    /// Asserts a normally completed request and returns its CGI response.
    pub fn complete_cgi(&self) -> CgiResponse {
        assert_eq!(
            self.protocol_status, REQUEST_COMPLETE,
            "END_REQUEST protocolStatus"
        );
        assert_eq!(self.app_status, 0, "END_REQUEST appStatus");
        assert!(
            self.stdout_ended,
            "no empty FCGI_STDOUT record before END_REQUEST; records: {:?}",
            self.records
        );
        self.cgi()
    }
}

/// Reads records for request `id` up to and including its END_REQUEST.
/// Any record for another request id, a management record, data after the
/// end of a stream or a malformed END_REQUEST is an error.
pub fn read_response(conn: &mut Conn, id: u16) -> io::Result<Response> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let mut response = Response::default();
    let mut stderr_ended = false;
    loop {
        let Some(record) = read_record(conn)? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before END_REQUEST; records so far: {:?}; stdout so far: {:?}",
                    response.records,
                    String::from_utf8_lossy(&response.stdout[..response.stdout.len().min(300)])
                ),
            ));
        };
        response.records.push((record.rtype, record.content.len()));
        if record.version != VERSION_1 {
            return Err(bad(format!("record with version {}", record.version)));
        }
        if record.id != id {
            return Err(bad(format!(
                "record type {} for request id {} while reading request {id}",
                record.rtype, record.id
            )));
        }
        match record.rtype {
            STDOUT if response.stdout_ended => {
                return Err(bad("FCGI_STDOUT record after the empty one".into()));
            }
            STDOUT if record.content.is_empty() => response.stdout_ended = true,
            STDOUT => response.stdout.extend_from_slice(&record.content),
            STDERR if stderr_ended => {
                return Err(bad("FCGI_STDERR record after the empty one".into()));
            }
            STDERR if record.content.is_empty() => stderr_ended = true,
            STDERR => response.stderr.extend_from_slice(&record.content),
            END_REQUEST => {
                let body: [u8; 8] = record.content.as_slice().try_into().map_err(|_| {
                    bad(format!(
                        "END_REQUEST body of {} bytes, expected 8",
                        record.content.len()
                    ))
                })?;
                response.app_status = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                response.protocol_status = body[4];
                return Ok(response);
            }
            other => return Err(bad(format!("unexpected record type {other}"))),
        }
    }
}

/// Sends `bytes` from a second thread while reading the response to `id`, so
/// that a large request body and a large response cannot deadlock. Returns the
/// response (or the read error) and the writer's error, if any.
pub fn exchange(
    conn: &mut Conn,
    bytes: Vec<u8>,
    id: u16,
) -> (io::Result<Response>, Option<io::Error>) {
    let mut writer = conn.try_clone();
    thread::scope(|scope| {
        let handle = scope.spawn(move || writer.write_all(&bytes).err());
        let response = read_response(conn, id);
        if response.is_err() {
            // Unblock the writer if the shim stopped reading.
            let _ = conn.shutdown(Shutdown::Both);
        }
        let write_error = handle.join().expect("writer thread");
        (response, write_error)
    })
}

/// One RESPONDER request with id 1; panics if no well-formed response arrives.
pub fn request<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    conn: &mut Conn,
    params: &[(N, V)],
    body: &[u8],
    keep_conn: bool,
) -> Response {
    request_with_id(conn, 1, params, body, keep_conn)
}

pub fn request_with_id<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    conn: &mut Conn,
    id: u16,
    params: &[(N, V)],
    body: &[u8],
    keep_conn: bool,
) -> Response {
    let (response, write_error) = exchange(conn, encode_request(id, params, body, keep_conn), id);
    match response {
        Ok(response) => {
            if let Some(e) = write_error {
                panic!("sending request {id} failed although a response came back: {e}");
            }
            response
        }
        Err(e) => panic!(
            "no response to request {id}: {e} (write error: {})",
            write_error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "none".into())
        ),
    }
}

/// The CGI params a web server sends for a simple request.
pub fn cgi_params(method: &str, query: &str, body_len: usize) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "fcgi-shim-tests"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", "/app"),
        ("SCRIPT_NAME", "/app"),
        ("PATH_INFO", ""),
        ("QUERY_STRING", query),
        ("HTTP_HOST", "localhost"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if body_len > 0 {
        params.push(("CONTENT_LENGTH".into(), body_len.to_string()));
        params.push(("CONTENT_TYPE".into(), "application/octet-stream".into()));
    }
    params
}

/// [`cgi_params`] for `mysite.fcgi` + `path`, as mod_fcgid sends them for
/// a script in the web root (SCRIPT_NAME `/mysite.fcgi`, PATH_INFO `path`).
pub fn site_params(
    method: &str,
    path: &str,
    query: &str,
    body_len: usize,
) -> Vec<(String, String)> {
    let mut p = cgi_params(method, query, body_len);
    for (k, v) in p.iter_mut() {
        match k.as_str() {
            "SCRIPT_NAME" => *v = "/mysite.fcgi".into(),
            "PATH_INFO" => *v = path.into(),
            "REQUEST_URI" => *v = format!("/mysite.fcgi{path}"),
            _ => {}
        }
    }
    p
}

/// `GET /mysite.fcgi{path}?{query}` on a fresh connection to `shim`.
pub fn get_site(shim: &Shim, path: &str, query: &str) -> CgiResponse {
    let mut conn = shim.connect();
    request(&mut conn, &site_params("GET", path, query, 0), b"", false).complete_cgi()
}

/// A CGI response: status, headers in order, body.
#[derive(Debug)]
pub struct CgiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CgiResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a CGI response (RFC 3875 section 6): header lines ended by CRLF or
/// LF, an empty line, the body. No Status header means 200.
pub fn parse_cgi(bytes: &[u8]) -> Result<CgiResponse, String> {
    let mut headers = Vec::new();
    let mut pos = 0;
    loop {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            return Err("no empty line after the headers".into());
        };
        let mut line = &bytes[pos..pos + nl];
        pos += nl + 1;
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.is_empty() {
            break;
        }
        let line = std::str::from_utf8(line).map_err(|_| "header line is not UTF-8".to_string())?;
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let status = match headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Status"))
    {
        Some((_, value)) => value
            .split_whitespace()
            .next()
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("bad Status header {value:?}"))?,
        None => 200,
    };
    Ok(CgiResponse {
        status,
        headers,
        body: bytes[pos..].to_vec(),
    })
}

/// Parses `NAME=value` lines (the output of `env`) into a map.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// Settings and test programs
// ---------------------------------------------------------------------------

/// Settings for a CGI app running `command`, with the documented limits.
pub fn settings(command: &Path) -> String {
    settings_with_timeout(command, 5)
}

pub fn settings_with_timeout(command: &Path, timeout_secs: u64) -> String {
    format!(
        r#"[app]
kind = "cgi"
command = ["{command}"]
timeout = {timeout_secs}
env = {{ FOO = "bar" }}

[log]
level = "info"

[limits]
max_params_bytes = 131072
max_params = 1000
max_param_records = 1024
max_management_records = 64
"#,
        command = command.display()
    )
}

/// Body of a script that answers `hello` with a Content-Type header.
pub const HELLO_SCRIPT: &str =
    r#"printf 'Content-Type: text/plain\r\n\r\nhello %s %s' "$REQUEST_METHOD" "$QUERY_STRING""#;

/// Sends a GET with query `q=1` and asserts the HELLO_SCRIPT answer.
pub fn assert_hello(conn: &mut Conn, keep_conn: bool) {
    let response = request(conn, &cgi_params("GET", "q=1", 0), b"", keep_conn);
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 200, "status of {cgi:?}");
    assert_eq!(cgi.header("Content-Type"), Some("text/plain"));
    assert_eq!(cgi.body_text(), "hello GET q=1");
}

/// Deterministic bytes (xorshift64*).
pub fn prng_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A unique string for a test to find its own processes by (see
/// `processes_with_env`).
pub fn unique_marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "marker{}x{}x{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A shim serving one CGI script; the script lives in `dir`.
pub struct App {
    // Declared first: the shim is stopped before the script's directory goes.
    pub shim: Shim,
    pub dir: TempDir,
    pub script: PathBuf,
}

impl App {
    /// A shim on a Unix listener running `script_body` with a 5 s timeout.
    pub fn start(script_body: &str) -> App {
        App::build(5, |_| script_body.to_string())
    }

    /// Like `start`, with the request timeout and a script body that may name
    /// files in the script's directory.
    pub fn build(timeout_secs: u64, script_body: impl FnOnce(&TempDir) -> String) -> App {
        let dir = TempDir::new("app");
        let script = dir.script("app.sh", &script_body(&dir));
        let shim = Shim::start(&settings_with_timeout(&script, timeout_secs));
        App { shim, dir, script }
    }
}

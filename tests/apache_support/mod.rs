//! Test support: a private Apache 2.4 + mod_fcgid instance, a world-readable
//! temp dir, a tiny std-only HTTP/1.1 client and a /proc scanner.
//!
//! Use from an integration test with `mod apache_support;`.
//!
//! The httpd.conf template is `httpd.conf.in` beside this file; the same file
//! is used by `scripts/demo.sh`.
//!
//! Debian 12 paths (`/usr/sbin/apache2`, `/usr/lib/apache2/modules`). When run
//! as root, Apache's children (and so mod_fcgid's processes) run as
//! `www-data`, which cannot read anything under `/root`: put web roots and
//! programs in a [`TempDir`] (under `/tmp`, mode 0755).

#![allow(dead_code)]

pub mod load;

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The httpd.conf template shared with `scripts/demo.sh`.
pub const HTTPD_CONF_TEMPLATE: &str = include_str!("httpd.conf.in");

/// Debian's Apache binary.
pub const APACHE_BIN: &str = "/usr/sbin/apache2";
/// Where Debian keeps Apache's modules.
pub const APACHE_MODULES: &str = "/usr/lib/apache2/modules";
/// Set to `1` to skip (not fail) tests that need Apache.
pub const SKIP_ENV: &str = "FCGI_SHIM_SKIP_APACHE";
/// Set to `1` to keep temp dirs (for debugging a failure).
pub const KEEP_ENV: &str = "FCGI_SHIM_KEEP_TMP";

/// How long `stop()` waits for Apache and everything it started.
const STOP_BOUND: Duration = Duration::from_secs(15);
/// How long `start()` waits for the port to answer.
const START_BOUND: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------

/// Returns `true` when Apache tests should run, `false` when they are skipped
/// explicitly with `FCGI_SHIM_SKIP_APACHE=1`. Panics (fails the test) with
/// installation instructions when Apache or mod_fcgid is missing.
pub fn apache_available_or_fail() -> bool {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("{SKIP_ENV}=1: skipping a test that needs Apache + mod_fcgid");
        return false;
    }
    let mut missing = Vec::new();
    if !Path::new(APACHE_BIN).is_file() {
        missing.push(APACHE_BIN.to_string());
    }
    for m in ["mod_fcgid.so", "mod_rewrite.so", "mod_mpm_event.so"] {
        let p = Path::new(APACHE_MODULES).join(m);
        if !p.is_file() {
            missing.push(p.display().to_string());
        }
    }
    if !missing.is_empty() {
        panic!(
            "end-to-end tests need Apache 2.4 and mod_fcgid (Debian paths); missing: {}.\n\
             Run `.ci/run`, or install them: \
             `apt-get install apache2 libapache2-mod-fcgid`.\n\
             To skip these tests explicitly: {SKIP_ENV}=1",
            missing.join(", ")
        );
    }
    true
}

/// `true` when the effective user is root.
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// ---------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory under `/tmp`, mode 0755 (readable by Apache's `www-data`
/// children), removed on drop unless `FCGI_SHIM_KEEP_TMP=1`.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `/tmp/<prefix>.<pid>.<n>.<nanos>`.
    pub fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = TMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!(
            "/tmp/{prefix}.{}.{n}.{nanos:x}",
            std::process::id()
        ));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        chmod(&path, 0o755);
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `rel` (and missing parents) inside, each new dir mode 0755.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        mkdir_world_readable(&self.path.join(rel))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
            eprintln!("{KEEP_ENV}=1: keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `mkdir -p` with mode 0755 on every directory it creates.
pub fn mkdir_world_readable(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for dir in missing.iter().rev() {
        fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        chmod(dir, 0o755);
    }
    path.to_path_buf()
}

/// `chmod mode path`, panicking with the path on failure.
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Writes `contents` to `path` and sets `mode`.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, mode);
}

/// `cp -r` into a world-readable tree (Apache's children run as www-data).
pub fn copy_tree(from: &Path, to: &Path) {
    mkdir_world_readable(to);
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            copy_file(&src, &dst, 0o644);
        }
    }
}

/// Copies `from` to `to` and sets `mode`.
pub fn copy_file(from: &Path, to: &Path, mode: u32) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
    chmod(to, mode);
}

// ---------------------------------------------------------------------------
// Apache
// ---------------------------------------------------------------------------

/// A private Apache started in the foreground (`apache2 -f conf -DFOREGROUND`)
/// as a child of the test, in its own process group.
pub struct ApacheInstance {
    state: TempDir,
    port: u16,
    child: Option<Child>,
    web_root: PathBuf,
}

/// Fills in `httpd.conf.in`.
pub fn render_httpd_conf(state_dir: &Path, web_root: &Path, port: u16, extra_conf: &str) -> String {
    let run_as = if running_as_root() {
        "User www-data\nGroup www-data"
    } else {
        "# not root: Apache and its children run as the invoking user"
    };
    HTTPD_CONF_TEMPLATE
        .replace("@STATE_DIR@", &state_dir.display().to_string())
        .replace("@WEB_ROOT@", &web_root.display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@RUN_AS@", run_as)
        .replace("@EXTRA_CONF@", extra_conf)
}

/// A loopback port that was free a moment ago (the kernel's choice).
pub fn free_loopback_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

impl ApacheInstance {
    /// Starts Apache serving `web_root` (which must be readable by
    /// `www-data` when running as root) with `extra_conf` appended to the
    /// configuration, and waits until its port answers. Panics (with the
    /// error log) if it does not come up.
    pub fn start(web_root: &Path, extra_conf: &str) -> ApacheInstance {
        Self::start_defining(web_root, extra_conf, &[])
    }

    /// Like [`ApacheInstance::start`], for an Apache with no FastCGI module
    /// loaded (`-DFCGI_SHIM_NO_FCGID`, see httpd.conf.in).
    pub fn start_without_fastcgi(web_root: &Path, extra_conf: &str) -> ApacheInstance {
        Self::start_defining(web_root, extra_conf, &["FCGI_SHIM_NO_FCGID"])
    }

    fn start_defining(web_root: &Path, extra_conf: &str, defines: &[&str]) -> ApacheInstance {
        let mut last_err = String::new();
        // The port is chosen free, then released for Apache: another process
        // may grab it in between, so retry a few times on "address in use".
        for _attempt in 0..4 {
            let state = TempDir::new("fcgi-shim-apache");
            let port = free_loopback_port();
            match Self::try_start(state, web_root, port, extra_conf, defines) {
                Ok(instance) => return instance,
                Err(e) => {
                    let retry =
                        e.contains("Address already in use") || e.contains("could not bind");
                    last_err = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("Apache did not start:\n{last_err}");
    }

    fn try_start(
        state: TempDir,
        web_root: &Path,
        port: u16,
        extra_conf: &str,
        defines: &[&str],
    ) -> Result<ApacheInstance, String> {
        let defines: Vec<String> = defines.iter().map(|d| format!("-D{d}")).collect();
        let dir = state.path().to_path_buf();
        state.mkdir("run");
        let ipc = state.mkdir("fcgid-ipc");
        if running_as_root() {
            // mod_fcgid's process manager runs as www-data and creates its
            // sockets here.
            let user = nix::unistd::User::from_name("www-data")
                .ok()
                .flatten()
                .expect("user www-data exists");
            std::os::unix::fs::chown(&ipc, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .unwrap_or_else(|e| panic!("chown www-data {}: {e}", ipc.display()));
            chmod(&ipc, 0o700);
        }
        let conf_path = dir.join("httpd.conf");
        write_file(
            &conf_path,
            render_httpd_conf(&dir, web_root, port, extra_conf),
            0o644,
        );

        // Check the configuration first: a clear message beats a timeout.
        let check = Command::new(APACHE_BIN)
            .arg("-f")
            .arg(&conf_path)
            .args(&defines)
            .arg("-t")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C")
            .output()
            .map_err(|e| format!("cannot run {APACHE_BIN}: {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "`apache2 -t` rejected {}:\n{}{}",
                conf_path.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            ));
        }

        // -DFOREGROUND: the child *is* Apache's parent process, so its pid is
        // known without racing the PidFile, and wait() reaps it. Own process
        // group: prefork-style killpg(getpgrp()) must never reach the test.
        let child = Command::new(APACHE_BIN)
            .arg("-f")
            .arg(&conf_path)
            .args(&defines)
            .arg("-DFOREGROUND")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LANG", "C")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                fs::File::create(dir.join("stdout.log")).expect("create stdout.log"),
            ))
            .stderr(Stdio::from(
                fs::File::create(dir.join("stderr.log")).expect("create stderr.log"),
            ))
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot spawn {APACHE_BIN}: {e}"))?;

        let mut instance = ApacheInstance {
            state,
            port,
            child: Some(child),
            web_root: web_root.to_path_buf(),
        };
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Some(status) = instance
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                instance.child = None;
                let msg = format!(
                    "apache2 exited during start-up ({status}).\n{}",
                    instance.logs_for_humans()
                );
                return Err(msg);
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && instance.dir().join("httpd.pid").exists()
            {
                return Ok(instance);
            }
            if Instant::now() > deadline {
                let msg = format!(
                    "port {port} did not answer within {START_BOUND:?}.\n{}",
                    instance.logs_for_humans()
                );
                instance.stop();
                return Err(msg);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The directory holding httpd.conf, logs, pid file and fcgid sockets.
    pub fn dir(&self) -> &Path {
        self.state.path()
    }

    pub fn web_root(&self) -> &Path {
        &self.web_root
    }

    /// The whole error log (Apache's messages, mod_fcgid's, and everything
    /// the FastCGI processes write to stderr).
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir().join("error.log"))
            .unwrap_or_else(|e| format!("(cannot read error.log: {e})"))
    }

    /// The access log.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir().join("access.log")).unwrap_or_default()
    }

    /// Lines of the error log containing `needle`.
    pub fn error_log_lines_containing(&self, needle: &str) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Polls the error log until `pred` holds for it or `bound` passes;
    /// returns the last log seen (the caller asserts).
    pub fn wait_for_error_log(&self, bound: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + bound;
        loop {
            let log = self.error_log();
            if pred(&log) || Instant::now() > deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of Apache's parent process while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `true` until `stop()`.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends a request; panics on I/O errors (with the error log).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        http_request(self.port, method, path, headers, body).unwrap_or_else(|e| {
            panic!(
                "{method} {} failed: {e}\n{}",
                self.url(path),
                self.logs_for_humans()
            )
        })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], None)
    }

    /// Stops Apache: SIGTERM to its parent process (the pid in the PidFile,
    /// which is our child), waits until it and every process that descended
    /// from it when `stop()` was called (mod_fcgid's process manager, the
    /// FastCGI processes, their programs) are gone; SIGKILL to the survivors
    /// after a bound. Idempotent. Returns the descendants that had to be
    /// killed with SIGKILL (empty when the shutdown was clean).
    pub fn stop(&mut self) -> Vec<(u32, String)> {
        let Some(mut child) = self.child.take() else {
            return Vec::new();
        };
        let pid = child.id();
        if let Ok(text) = fs::read_to_string(self.dir().join("httpd.pid")) {
            let from_file: Option<u32> = text.trim().parse().ok();
            if from_file.is_some() && from_file != Some(pid) {
                eprintln!(
                    "apache_support: PidFile says {:?}, child pid is {pid}; stopping both",
                    from_file
                );
                if let Some(p) = from_file {
                    signal(p, Signal::SIGTERM);
                }
            }
        }
        let tree = descendants(pid);
        signal(pid, Signal::SIGTERM);

        let deadline = Instant::now() + STOP_BOUND;
        let mut parent_gone = false;
        loop {
            if !parent_gone {
                parent_gone = matches!(child.try_wait(), Ok(Some(_)) | Err(_));
            }
            let alive: Vec<&ProcId> = tree.iter().filter(|p| p.is_alive()).collect();
            if parent_gone && alive.is_empty() {
                return Vec::new();
            }
            if Instant::now() > deadline {
                let mut killed = Vec::new();
                for p in alive {
                    killed.push((p.pid, cmdline(p.pid)));
                    signal(p.pid, Signal::SIGKILL);
                }
                if !parent_gone {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                eprintln!(
                    "apache_support: Apache (pid {pid}) did not stop within {STOP_BOUND:?}; \
                     SIGKILLed: {killed:?}"
                );
                return killed;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Error log and access log, for failure messages.
    pub fn logs_for_humans(&self) -> String {
        let stderr = fs::read_to_string(self.dir().join("stderr.log")).unwrap_or_default();
        format!(
            "----- Apache error log ({}) -----\n{}\n----- access log -----\n{}\n\
             ----- apache2 stderr -----\n{}\n----- end of logs -----",
            self.dir().join("error.log").display(),
            self.error_log(),
            self.access_log(),
            stderr
        )
    }
}

impl Drop for ApacheInstance {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        if thread::panicking() {
            eprintln!("{}", self.logs_for_humans());
        }
    }
}

// ---------------------------------------------------------------------------
// Sites
// ---------------------------------------------------------------------------

/// A site as a user deploys it in `dir`: the shipped rewrite `.htaccess`
/// (htaccess-examples/mod_fcgid.htaccess, as it is), a copy of the fcgi-shim
/// binary as `mysite.fcgi` and `settings` as `mysite.toml`.
pub fn install_site(dir: &Path, settings: &str) {
    mkdir_world_readable(dir);
    copy_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("htaccess-examples/mod_fcgid.htaccess"),
        &dir.join(".htaccess"),
        0o644,
    );
    copy_file(
        Path::new(env!("CARGO_BIN_EXE_fcgi-shim")),
        &dir.join("mysite.fcgi"),
        0o755,
    );
    write_file(&dir.join("mysite.toml"), settings, 0o644);
}

/// Stops `apache`, then asserts that nothing it started is left: no process
/// had to be SIGKILLed at shutdown, none whose command line or executable
/// mentions one of `needles` (the temp dirs of the test) still runs, and
/// mod_fcgid did not have to kill a shim. Leftovers are killed by pid first,
/// so a failing test leaves nothing behind either.
pub fn stop_leaving_nothing(apache: &mut ApacheInstance, needles: &[String]) {
    let killed = apache.stop();
    let log = apache.error_log();
    let mut left = Vec::new();
    for needle in needles {
        left.extend(wait_no_processes_matching(needle, Duration::from_secs(2)));
        kill_processes_matching(needle);
    }
    assert!(killed.is_empty(), "had to SIGKILL at shutdown: {killed:?}");
    assert!(
        left.is_empty(),
        "still running after Apache stopped: {left:#?}"
    );
    assert!(
        !log.contains("terminating forcefully"),
        "mod_fcgid had to SIGKILL a shim:\n{log}"
    );
}

/// GET `path` over a raw socket; returns the bytes up to the first
/// occurrence of `until` and the open stream (to read the rest later).
pub fn read_until(port: u16, path: &str, until: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(until) {
        let n = s.read(&mut buf).expect("read while waiting");
        assert!(
            n > 0,
            "closed before {until:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    (String::from_utf8_lossy(&seen).into_owned(), s)
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A pid plus its start time, so a reused pid is not mistaken for the
/// original process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProcId {
    pid: u32,
    start: u64,
}

impl ProcId {
    fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some(s) if s.start == self.start && s.state != 'Z')
    }
}

struct Stat {
    ppid: u32,
    state: char,
    start: u64,
}

/// Parses /proc/PID/stat (the command name may contain spaces and parens).
fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); ppid is field 4, starttime field 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The parent of `pid`, while it runs.
pub fn parent_pid(pid: u32) -> Option<u32> {
    stat(pid).map(|s| s.ppid)
}

fn all_pids() -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `pid` and all its current descendants.
fn descendants(pid: u32) -> Vec<ProcId> {
    let table: Vec<(u32, Stat)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?)))
        .collect();
    let mut found: HashSet<u32> = HashSet::from([pid]);
    loop {
        let before = found.len();
        for (p, s) in &table {
            if found.contains(&s.ppid) {
                found.insert(*p);
            }
        }
        if found.len() == before {
            break;
        }
    }
    table
        .iter()
        .filter(|(p, _)| found.contains(p))
        .map(|(p, s)| ProcId {
            pid: *p,
            start: s.start,
        })
        .collect()
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

/// The command line of `pid`, arguments separated by spaces ("" if gone).
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// Live (non-zombie) processes, other than this one, whose command line or
/// executable path (`/proc/PID/exe`) contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for pid in all_pids() {
        if pid == me {
            continue;
        }
        let cmd = cmdline(pid);
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if !(cmd.contains(needle) || exe.contains(needle)) {
            continue;
        }
        if matches!(stat(pid), Some(s) if s.state == 'Z') {
            continue;
        }
        out.push((pid, format!("{cmd}  [exe: {exe}]")));
    }
    out
}

/// Polls `processes_matching(needle)` until it is empty or `bound` passes;
/// returns what is left.
pub fn wait_no_processes_matching(needle: &str, bound: Duration) -> Vec<(u32, String)> {
    let deadline = Instant::now() + bound;
    loop {
        let left = processes_matching(needle);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs, by pid, processes matching `needle` (a unique temp dir path):
/// clean-up after a failed assertion so a test run leaves nothing behind.
pub fn kill_processes_matching(needle: &str) -> Vec<(u32, String)> {
    let left = processes_matching(needle);
    for (pid, _) in &left {
        signal(*pid, Signal::SIGKILL);
    }
    left
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client (std only)
// ---------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    /// In order, names as sent; one char per byte (latin-1).
    pub headers: Vec<(String, String)>,
    /// De-chunked body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Status line, headers and (at most 2000 bytes of) body, for messages.
    pub fn summary(&self) -> String {
        let mut s = format!("HTTP {} {}\n", self.status, self.reason);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        let body = self.text();
        let cut: String = body.chars().take(2000).collect();
        s.push_str(&format!("\n{cut}"));
        if cut.len() < body.len() {
            s.push_str(&format!("... ({} bytes in all)", self.body.len()));
        }
        s
    }
}

/// Sends one request to 127.0.0.1:`port` with `Connection: close` and reads
/// the whole response. `Host` and (with a body) `Content-Length` are added
/// unless given in `headers`.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<HttpResponse> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;

    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("Host") {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body
        && !has("Content-Length")
        && !has("Transfer-Encoding")
    {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("Connection: close\r\n\r\n");

    let mut request = head.into_bytes();
    if let Some(b) = body {
        request.extend_from_slice(b);
    }
    // A server may answer (and close) before reading everything, e.g. 413:
    // still read what it said.
    let write_result = stream.write_all(&request).and_then(|()| stream.flush());
    let _ = stream.shutdown(Shutdown::Write);

    let mut raw = Vec::new();
    let read_result = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        write_result?;
        read_result?;
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without a response",
        ));
    }
    parse_response(&raw, method.eq_ignore_ascii_case("HEAD"))
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parses a complete HTTP/1.x response (as read until EOF).
pub fn parse_response(raw: &[u8], head_request: bool) -> io::Result<HttpResponse> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    // Header bytes are kept one char per byte (latin-1), so that a test can
    // compare bytes that are not UTF-8.
    let head: String = raw[..end].iter().map(|&b| char::from(b)).collect();
    let head = head.as_str();
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty response"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut response = HttpResponse {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(response);
    }
    let chunked = response
        .header("Transfer-Encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        dechunk(rest)?
    } else if let Some(cl) = response.header("Content-Length") {
        let n: usize = cl
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
        if rest.len() < n {
            return Err(bad(format!(
                "body cut short: Content-Length {n}, got {}",
                rest.len()
            )));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

/// Decodes a chunked body (trailers are ignored).
pub fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or_else(|| bad("chunk size line not terminated"))?;
        let line = std::str::from_utf8(&data[..eol]).map_err(|_| bad("bad chunk size line"))?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(bad("chunk cut short"));
        }
        out.extend_from_slice(&data[..size]);
        if &data[size..size + 2] != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Self-tests of the pieces that do not need Apache
// ---------------------------------------------------------------------------

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn parses_content_length_response() {
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A: b c\r\n\r\nabcdef",
            false,
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.reason, "Not Found");
        assert_eq!(r.header("x-a"), Some("b c"));
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn parses_chunked_response() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nab\x00\r\n1;ext=1\r\n\xff\r\n0\r\nTrailer: x\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"ab\x00\xff");
    }

    #[test]
    fn rejects_truncated_bodies() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", false).is_err());
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                false
            )
            .is_err()
        );
    }

    #[test]
    fn finds_this_process_children_by_cmdline() {
        let dir = TempDir::new("fcgi-shim-selftest");
        // A symlink, not a copy: a freshly written executable can be busy
        // (ETXTBSY) while a sibling test's fork still holds it open.
        let marker = dir.path().join("marker-sleep");
        std::os::unix::fs::symlink("/bin/sleep", &marker).unwrap();
        let mut child = Command::new(&marker).arg("30").spawn().unwrap();
        let needle = dir.path().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut found = processes_matching(&needle);
        while found.len() != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            found = processes_matching(&needle);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, child.id());
        assert!(wait_no_processes_matching(&needle, Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn temp_dirs_are_world_readable() {
        let dir = TempDir::new("fcgi-shim-selftest");
        let sub = dir.mkdir("a/b");
        for p in [dir.path(), &dir.path().join("a"), &sub] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o755, "{}", p.display());
        }
        let gone = dir.path().to_path_buf();
        drop(dir);
        assert!(!gone.exists());
    }
}

//! Test support for fcgi-shim's standalone server (`fcgi-shim serve`): the
//! shim started in the foreground with runfcgi options, and private nginx and
//! lighttpd instances built from the files in `server-examples/`.
//!
//! Use beside `mod apache_support;` (its world-readable `TempDir`, HTTP client
//! and free-port helper are reused). Every process started here is stopped by
//! its pid; every file lives in a temp dir of the test's own.

#![allow(dead_code)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::apache_support::{self, HttpResponse, TempDir};

pub const NGINX_BIN: &str = "/usr/sbin/nginx";
pub const LIGHTTPD_BIN: &str = "/usr/sbin/lighttpd";
pub const NGINX_TEMPLATE: &str = include_str!("nginx.conf.in");
pub const LIGHTTPD_TEMPLATE: &str = include_str!("lighttpd.conf.in");

/// How long a server may take to answer on its port, or to stop.
const BOUND: Duration = Duration::from_secs(15);

/// The binary under test.
pub fn shim_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fcgi-shim"))
}

/// A file of the repository, as text.
pub fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Replace every `@NAME@` of `vars`; panics if a placeholder is left.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut text = template.to_string();
    for (name, value) in vars {
        text = text.replace(&format!("@{name}@"), value);
    }
    let left: Vec<&str> = text
        .split('@')
        .skip(1)
        .step_by(2)
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(left.is_empty(), "placeholders not filled in: {left:?}");
    text
}

/// Panics with install instructions when `bin` is missing.
pub fn require(bin: &str, package: &str) {
    assert!(
        Path::new(bin).is_file(),
        "{bin} is missing: run .ci/run, or apt-get install {package}"
    );
}

/// (uid, gid) of www-data when running as root: web servers drop to it, so
/// the shim runs as it too (the realistic set-up: same user, socket 0660).
pub fn www_data() -> Option<(u32, u32)> {
    if !apache_support::running_as_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("www-data")
        .ok()
        .flatten()
        .expect("user www-data exists");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// Give `path` to www-data when running as root (a dir the shim writes in).
pub fn hand_to_www_data(path: &Path) {
    if let Some((uid, gid)) = www_data() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// `run_as` line for a template: "user www-data;" style when root.
fn run_as(nginx: bool) -> String {
    match (www_data().is_some(), nginx) {
        (true, true) => "user www-data www-data;".into(),
        (true, false) => "server.username = \"www-data\"\nserver.groupname = \"www-data\"".into(),
        (false, _) => "# not root: runs as the invoking user".into(),
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // A zombie still answers kill(0); look at /proc too.
    kill(Pid::from_raw(raw), None).is_ok()
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
}

/// Signal a process we started, by pid.
pub fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

/// Wait until `child` exits (SIGKILL after `bound`); true if it exited by itself.
fn wait_child(child: &mut Child, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Where a server listens, to know when it is up.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(u16),
}

impl Endpoint {
    fn answers(&self) -> bool {
        match self {
            Endpoint::Unix(p) => UnixStream::connect(p).is_ok(),
            Endpoint::Tcp(port) => TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
                Duration::from_millis(200),
            )
            .is_ok(),
        }
    }
}

// ---------------------------------------------------------------------------
// fcgi-shim serve, in the foreground

/// `fcgi-shim serve SETTINGS daemonize=false WORDS...` started by the test.
pub struct ServeShim {
    child: Option<Child>,
    pub log: PathBuf,
    pub endpoint: Endpoint,
}

impl ServeShim {
    /// Start and wait until `endpoint` accepts connections. Runs as www-data
    /// when the test runs as root (see [`www_data`]).
    pub fn start(dir: &Path, settings: &Path, words: &[&str], endpoint: Endpoint) -> ServeShim {
        let log = dir.join(format!(
            "shim-{}.log",
            match &endpoint {
                Endpoint::Unix(_) => "unix".to_string(),
                Endpoint::Tcp(p) => p.to_string(),
            }
        ));
        let mut cmd = Command::new(shim_bin());
        cmd.arg("serve")
            .arg(settings)
            .arg("daemonize=false")
            .args(words)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create shim log"))
            .process_group(0);
        if let Some((uid, gid)) = www_data() {
            cmd.uid(uid).gid(gid);
        }
        let child = crate::common::spawn_retrying(&mut cmd).expect("spawn");
        let mut shim = ServeShim {
            child: Some(child),
            log,
            endpoint,
        };
        let deadline = Instant::now() + BOUND;
        while !shim.endpoint.answers() {
            if let Some(c) = shim.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                shim.child = None;
                panic!(
                    "fcgi-shim serve exited at start ({status}):\n{}",
                    shim.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "fcgi-shim serve did not listen within {BOUND:?}:\n{}",
                shim.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        shim
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (SIGKILL after a bound). Returns whether it exited in time.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        signal(child.id(), Signal::SIGTERM);
        wait_child(&mut child, BOUND)
    }

    /// Has it exited (without waiting)?
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => matches!(c.try_wait(), Ok(Some(_)) | Err(_)),
        }
    }
}

impl Drop for ServeShim {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "----- fcgi-shim serve log ({}) -----\n{}----- end -----",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// nginx and lighttpd

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Lighttpd,
}

/// A private nginx or lighttpd serving one site file.
pub struct WebServer {
    kind: Kind,
    child: Option<Child>,
    port: u16,
    // Declared last: removed after the server stopped.
    state: TempDir,
}

impl WebServer {
    /// Start `kind` with `site` (a server-examples file, rendered with
    /// `vars` plus PORT and STATE_DIR) and wait until its port answers.
    pub fn start(kind: Kind, site: &str, vars: &[(&str, String)]) -> WebServer {
        let mut last = String::new();
        for _ in 0..4 {
            let state = TempDir::new(match kind {
                Kind::Nginx => "fcgi-shim-nginx",
                Kind::Lighttpd => "fcgi-shim-lighttpd",
            });
            let port = apache_support::free_loopback_port();
            match Self::try_start(kind, state, port, site, vars) {
                Ok(server) => return server,
                Err(e) if e.contains("in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("web server did not start:\n{last}");
    }

    fn try_start(
        kind: Kind,
        state: TempDir,
        port: u16,
        site: &str,
        vars: &[(&str, String)],
    ) -> Result<WebServer, String> {
        let dir = state.path().to_path_buf();
        state.mkdir("htdocs");
        state.mkdir("tmp");
        if kind == Kind::Lighttpd {
            // lighttpd opens its logs and bin-path sockets after dropping to www-data.
            hand_to_www_data(&dir);
        }
        let mut all: Vec<(&str, String)> = vars.to_vec();
        all.push(("PORT", port.to_string()));
        all.push(("STATE_DIR", dir.display().to_string()));
        all.push(("RUN_AS", run_as(kind == Kind::Nginx)));
        apache_support::write_file(&dir.join("site.conf"), render(site, &all), 0o644);
        let (template, bin) = match kind {
            Kind::Nginx => (NGINX_TEMPLATE, NGINX_BIN),
            Kind::Lighttpd => (LIGHTTPD_TEMPLATE, LIGHTTPD_BIN),
        };
        let conf = dir.join("server.conf");
        apache_support::write_file(&conf, render(template, &all), 0o644);
        let mut cmd = Command::new(bin);
        match kind {
            Kind::Nginx => cmd
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf),
            Kind::Lighttpd => cmd.arg("-D").arg("-f").arg(&conf),
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout.log")).expect("stdout.log"))
            .stderr(fs::File::create(dir.join("stderr.log")).expect("stderr.log"))
            .process_group(0);
        let child = crate::common::spawn_retrying(&mut cmd).expect("spawn");
        let mut server = WebServer {
            kind,
            child: Some(child),
            port,
            state,
        };
        let deadline = Instant::now() + BOUND;
        while !Endpoint::Tcp(port).answers() {
            if let Some(c) = server.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                server.child = None;
                return Err(format!(
                    "{bin} exited at start ({status}):\n{}",
                    server.logs()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{bin} did not answer within {BOUND:?}:\n{}",
                    server.logs()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.state.path()
    }

    /// A request; panics with the logs on I/O errors.
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> HttpResponse {
        http_request(self.port, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.logs()))
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, None)
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.dir().join(n)).unwrap_or_default();
        format!(
            "----- {:?} error.log -----\n{}\n----- access.log -----\n{}\n----- stderr -----\n{}\n----- end -----",
            self.kind,
            read("error.log"),
            read("access.log"),
            read("stderr.log")
        )
    }

    /// Stop by pid (nginx: SIGQUIT, graceful; lighttpd: SIGTERM).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sig = match self.kind {
            Kind::Nginx => Signal::SIGQUIT,
            Kind::Lighttpd => Signal::SIGTERM,
        };
        signal(child.id(), sig);
        if !wait_child(&mut child, BOUND) {
            eprintln!("{:?} did not stop within {BOUND:?}; killed", self.kind);
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Pids of live processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    apache_support::processes_matching(needle)
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| pid_alive(*pid))
        .collect()
}

/// One HTTP/1.1 request with `Connection: close`, the response read to the
/// end. Unlike `apache_support::http_request` it does not half-close after
/// sending: nginx takes a half-close for a client that went away (499).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some(b) = body {
        request.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    apache_support::parse_response(&raw, method.eq_ignore_ascii_case("HEAD"))
}

// ---------------------------------------------------------------------------
// The site under test

/// The CGI application: reports what it was given; `?sleep=1` takes a
/// second; `/echo` sends the body back.
pub const APP: &str = r#"#!/bin/sh
case "$QUERY_STRING" in *sleep=1*) sleep 1 ;; esac
if [ "$PATH_INFO" = /echo ]; then
    printf 'Content-Type: application/octet-stream\r\n\r\n'
    exec cat
fi
printf 'Content-Type: text/plain\r\n\r\n'
printf 'SCRIPT_NAME=%s\nPATH_INFO=%s\nQUERY_STRING=%s\nREQUEST_METHOD=%s\nWORKER=%s\n' \
    "$SCRIPT_NAME" "$PATH_INFO" "$QUERY_STRING" "$REQUEST_METHOD" "$PPID"
"#;

/// A site: the application and its settings in a world-readable dir that the
/// shim (www-data when root) may write its socket and pidfile in.
pub struct Site {
    pub dir: TempDir,
    pub settings: PathBuf,
}

impl Site {
    pub fn new() -> Site {
        let dir = TempDir::new("fcgi-shim-serve-site");
        hand_to_www_data(dir.path());
        let app = dir.path().join("app.sh");
        apache_support::write_file(&app, APP, 0o755);
        let settings = dir.path().join("mysite.toml");
        apache_support::write_file(
            &settings,
            format!(
                "[app]\nkind = \"cgi\"\ncommand = [\"{}\"]\ntimeout = 10\n",
                app.display()
            ),
            0o644,
        );
        Site { dir, settings }
    }

    /// The Django project of tests/wsgi_apps (copied into the site, which
    /// www-data can read) as the application, instead of the CGI script.
    pub fn django() -> Site {
        let site = Site::new();
        let python = std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| {
            panic!(
                "the Django tests need FCGI_SHIM_TEST_PYTHON (make test sets it): \
                 FCGI_SHIM_TEST_PYTHON=$(scripts/test-venv.sh) cargo test"
            )
        });
        let project = site.path("djsite");
        apache_support::copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wsgi_apps/djsite"),
            &project,
        );
        apache_support::write_file(
            &site.settings,
            format!(
                "[app]\nkind = \"wsgi\"\nmodule = \"djsite.wsgi\"\npython = \"{python}\"\n\
                 python_path = [\"{}\"]\n\
                 env = {{ DJANGO_SETTINGS_MODULE = \"djsite.settings\", PYTHONDONTWRITEBYTECODE = \"1\" }}\n",
                project.display()
            ),
            0o644,
        );
        site
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `fcgi-shim serve` in the foreground with `words`.
    pub fn serve(&self, words: &[String], endpoint: Endpoint) -> ServeShim {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        ServeShim::start(self.dir.path(), &self.settings, &words, endpoint)
    }
}

//! The shim started by bare names, as suEXEC starts it: the web server's
//! `cmd: mysite.fcgi` with the working directory the script's directory. The
//! shebang form then begins as `fcgi-shim mysite.fcgi` (argv[1] bare), the
//! two-file form as argv[0] = `mysite.fcgi`. Before issue 11 the settings'
//! directory was "" and the WSGI kind answered 503 "cannot start python"
//! (issue 11, item 3). The real binary, on a listening socket or as `check`.
//!
//! The Python: `$FCGI_SHIM_TEST_PYTHON` (set by `make test`) or `python3`;
//! only its standard library is used.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// How long a touch may take to show in a response.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

fn python() -> String {
    std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A WSGI application in `<dir>/app/hello.py` that says `greeting`, its
/// working directory and its pid.
fn write_wsgi_app(dir: &TempDir, greeting: &str) {
    fs::create_dir_all(dir.join("app")).expect("mkdir app");
    fs::write(
        dir.join("app/hello.py"),
        format!(
            "import os\nGREETING = {greeting:?}\n\
             def application(environ, start_response):\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             return [('%s cwd=%s pid=%d' % (GREETING, os.getcwd(), os.getpid())).encode()]\n"
        ),
    )
    .expect("write hello.py");
}

/// The shebang form: `<dir>/mysite.fcgi`, kind wsgi, every path relative
/// (`python_path = ["app"]`, `workdir` left to its default, the settings'
/// directory).
fn write_shebang_wsgi(dir: &TempDir) {
    let site = dir.write(
        "mysite.fcgi",
        &format!(
            "#!{}\n[app]\nkind = \"wsgi\"\nmodule = \"hello:application\"\npython = \"{}\"\n\
             python_path = [\"app\"]\n",
            shim_bin().display(),
            python()
        ),
    );
    fs::set_permissions(&site, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A CGI program `<dir>/run.cgi` that prints `$GREETING` and its working
/// directory.
const CGI_PROGRAM: &str =
    r#"printf 'Content-Type: text/plain\r\n\r\n%s cwd=%s' "$GREETING" "$(pwd)""#;

fn cgi_settings(greeting: &str) -> String {
    format!(
        "[app]\nkind = \"cgi\"\ncommand = [\"./run.cgi\"]\ntimeout = 5\n\
         env = {{ GREETING = \"{greeting}\" }}\n"
    )
}

/// `fcgi-shim check --start-app NAME`, run in `dir`.
fn check_in(dir: &Path, name: &str) -> Outcome {
    let scratch = TempDir::new("check-out");
    run_bounded(
        Command::new(shim_bin())
            .args(["check", "--start-app", name])
            .current_dir(dir),
        &scratch,
        Duration::from_secs(20),
    )
}

fn describe(out: &Outcome) -> String {
    format!(
        "{}; stdout {:?}; stderr {:?}",
        out.status, out.stdout, out.stderr
    )
}

/// GET / on a new connection: status 200 and the body.
fn get_body(shim: &Shim) -> String {
    let mut conn = shim.connect();
    let cgi = request(&mut conn, &cgi_params("GET", "", 0), b"", false).complete_cgi();
    assert_eq!(cgi.status, 200, "status of {cgi:?}; log:\n{}", shim.log());
    cgi.body_text()
}

/// Polls with requests until the body starts with `expected`.
fn wait_for_body(shim: &Shim, expected: &str) -> String {
    let start = Instant::now();
    loop {
        let body = get_body(shim);
        if body.starts_with(expected) {
            return body;
        }
        assert!(
            start.elapsed() < RELOAD_WAIT,
            "still answering {body:?}, expected {expected:?}; log:\n{}",
            shim.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Moves mtime forward, so the change shows on coarse timestamps too.
fn touch_forward(path: &Path, secs: u64) {
    let file = fs::File::options()
        .write(true)
        .open(path)
        .expect("open to touch");
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(secs))
        .expect("set mtime");
}

fn cwd_of(pid: u32) -> std::path::PathBuf {
    fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd of the shim")
}

#[test]
fn issue_11_check_start_app_with_a_bare_settings_name_wsgi() {
    let dir = TempDir::new("bare-check");
    write_wsgi_app(&dir, "hello");
    write_shebang_wsgi(&dir);
    assert_check_ok(&dir, "mysite.fcgi");
}

#[test]
fn issue_11_check_start_app_with_a_bare_settings_name_cgi() {
    let dir = TempDir::new("bare-check-cgi");
    dir.script("run.cgi", CGI_PROGRAM);
    let site = dir.write(
        "mysite.fcgi",
        &format!("#!{}\n{}", shim_bin().display(), cgi_settings("hi")),
    );
    fs::set_permissions(&site, fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_check_ok(&dir, "mysite.fcgi");
}

#[test]
fn issue_11_shebang_form_started_as_fcgi_shim_bare_name_serves_and_reloads() {
    let dir = TempDir::new("bare-shebang");
    write_wsgi_app(&dir, "one");
    write_shebang_wsgi(&dir);
    let site_dir = dir.path().to_path_buf();
    // What the kernel makes of suEXEC's execv("mysite.fcgi") in the shebang form.
    let shim = Shim::launch(
        dir,
        Launch {
            args: Some(vec![OsString::from("mysite.fcgi")]),
            cwd: Some(site_dir.clone()),
            ..Launch::default()
        },
    );
    let body = get_body(&shim);
    // The default workdir is the settings' directory, absolute.
    assert!(
        body.starts_with(&format!("one cwd={} ", site_dir.display())),
        "{body:?}; log:\n{}",
        shim.log()
    );
    let pid = shim.pid();

    // The application changed in place, then `touch mysite.fcgi`.
    write_wsgi_app(shim.dir(), "second");
    touch_forward(&site_dir.join("mysite.fcgi"), 1);
    // (Each greeting a different length: Python's bytecode cache trusts a
    // source file of the same size and mtime second.)
    let body = wait_for_body(&shim, "second ");
    assert!(body.starts_with(&format!("second cwd={} ", site_dir.display())));
    // Taken in place: the same pid, the working directory unchanged, no
    // re-exec (which would name the settings by their absolute path).
    assert_eq!(shim.pid(), pid);
    assert_eq!(cwd_of(pid), site_dir);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert_eq!(
        args.get(1).copied(),
        Some(&b"mysite.fcgi"[..]),
        "argv of the shim: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    // Twice: the process watches the same files (the bare name resolved
    // against its working directory at start).
    write_wsgi_app(shim.dir(), "the third");
    touch_forward(&site_dir.join("mysite.fcgi"), 2);
    wait_for_body(&shim, "the third ");
}

#[test]
fn issue_11_two_file_form_started_with_a_bare_argv0_serves_and_reloads() {
    let dir = TempDir::new("bare-twofile");
    dir.script("run.cgi", CGI_PROGRAM);
    dir.write("mysite.toml", &cgi_settings("one"));
    // A symlink to the binary: /proc/self/exe names the binary's own
    // directory, where no mysite.toml is; argv[0] + the cwd name this one.
    let program = dir.join("mysite.fcgi");
    std::os::unix::fs::symlink(shim_bin(), &program).expect("symlink the binary");
    let site_dir = dir.path().to_path_buf();
    let shim = Shim::launch(
        dir,
        Launch {
            program: Some(program.clone()),
            arg0: Some(OsString::from("mysite.fcgi")),
            args: Some(Vec::new()),
            cwd: Some(site_dir.clone()),
            ..Launch::default()
        },
    );
    let body = get_body(&shim);
    assert_eq!(
        body,
        format!("one cwd={}", site_dir.display()),
        "log:\n{}",
        shim.log()
    );
    assert!(!shim.log().contains("error"), "log:\n{}", shim.log());
    let pid = shim.pid();

    // (mysite.fcgi is a symlink here: touching it would touch the binary.)
    let settings = site_dir.join("mysite.toml");
    fs::write(&settings, cgi_settings("two")).expect("rewrite settings");
    touch_forward(&settings, 1);
    wait_for_body(&shim, "two ");
    assert_eq!(shim.pid(), pid);
    assert_eq!(cwd_of(pid), site_dir);
    // argv[0] kept as given.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        cmdline.starts_with(b"mysite.fcgi\0"),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    fs::write(&settings, cgi_settings("three")).expect("rewrite settings");
    touch_forward(&settings, 2);
    wait_for_body(&shim, "three ");
}

/// `kill -SIG pid` for a daemon this test started.
fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

/// SIGKILLs the daemon (by pid) when the test fails before stopping it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if thread::panicking() {
            signal("-KILL", self.0);
        }
    }
}

/// GET / on `socket`; `None` while nothing answers there.
fn try_get(socket: &Path) -> Option<CgiResponse> {
    let mut conn = Conn::Unix(std::os::unix::net::UnixStream::connect(socket).ok()?);
    conn.set_timeouts(Duration::from_secs(10));
    send(
        &mut conn,
        &encode_request(1, &cgi_params("GET", "", 0), b"", false),
    );
    read_response(&mut conn, 1).ok().map(|r| r.complete_cgi())
}

#[test]
fn issue_11_serve_with_a_relative_settings_path_reloads_on_sighup_after_daemonizing() {
    let dir = TempDir::new("bare-serve");
    dir.script("run.cgi", CGI_PROGRAM);
    dir.write("mysite.toml", &cgi_settings("one"));
    let (socket, pidfile, errlog) = (dir.join("s.sock"), dir.join("s.pid"), dir.join("err.log"));
    // Daemonizes: the daemon's working directory is `/`, so the re-exec on
    // SIGHUP must not look for `mysite.toml` there.
    let out = run_bounded(
        Command::new(shim_bin())
            .args(["serve", "mysite.toml", "method=single"])
            .arg(format!("socket={}", socket.display()))
            .arg(format!("pidfile={}", pidfile.display()))
            .arg(format!("errlog={}", errlog.display()))
            .current_dir(dir.path()),
        &dir,
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let pid: u32 = fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    let _daemon = KillOnDrop(pid);
    let log = || fs::read_to_string(&errlog).unwrap_or_default();
    let body = try_get(&socket).map(|r| r.body_text());
    assert_eq!(
        body,
        Some(format!("one cwd={}", dir.path().display())),
        "{}",
        log()
    );
    assert_eq!(
        cwd_of(pid),
        Path::new("/"),
        "the daemon's working directory"
    );

    fs::write(dir.join("mysite.toml"), cgi_settings("two")).expect("rewrite settings");
    signal("-HUP", pid);
    let start = Instant::now();
    loop {
        let body = try_get(&socket).map(|r| r.body_text());
        if body.as_deref().is_some_and(|b| b.starts_with("two ")) {
            break;
        }
        assert!(
            start.elapsed() < RELOAD_WAIT,
            "after SIGHUP: {body:?}\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        fs::read(format!("/proc/{pid}/cmdline"))
            .expect("same pid after the reload")
            .split(|b| *b == 0)
            .any(|a| a == dir.join("mysite.toml").as_os_str().as_encoded_bytes()),
        "the settings argument is absolute"
    );
    signal("-TERM", pid);
    let start = Instant::now();
    while pidfile.exists() && start.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !pidfile.exists(),
        "stopped and removed its pidfile\n{}",
        log()
    );
}

/// `cd dir && fcgi-shim check --start-app NAME` says `ok: dir/NAME`.
fn assert_check_ok(dir: &TempDir, name: &str) {
    let out = check_in(dir.path(), name);
    assert!(out.status.success(), "check failed: {}", describe(&out));
    assert_eq!(
        out.stdout.trim(),
        format!("ok: {}", dir.join(name).display()),
        "{}",
        describe(&out)
    );
}

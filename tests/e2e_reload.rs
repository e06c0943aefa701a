//! End-to-end: `touch mysite.fcgi` under a private Apache + mod_fcgid, as a
//! shared-hosting user does it: the site keeps answering, the next request
//! shows the change, a broken edit never takes the site down, and no process
//! is left behind (after `kill -9` of a shim, after the binary is replaced by
//! rename, after Apache stops).
//!
//! Needs `apache2`, `libapache2-mod-fcgid` and `wrk` (`.ci/run` installs
//! them). `FCGI_SHIM_RELOAD_LOAD_SECS` shortens the 30 s load test when
//! iterating locally; CI runs the full length.

mod apache_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use apache_support::load::{assert_clean_load, spawn_wrk, wrk_result};
use apache_support::{
    ApacheInstance, HttpResponse, TempDir, apache_available_or_fail, copy_file, parent_pid,
    processes_matching, wait_no_processes_matching, write_file,
};

/// A CGI program answering `greeting=<$GREETING>` (set in the settings), or,
/// on /sleep, leaving a grandchild behind and sleeping.
const APP_CGI: &str = r#"#!/bin/sh
case "$PATH_INFO" in
/sleep)
    "@BIN@/sleep" 31337 &
    touch "@BIN@/started"
    exec "@BIN@/sleep" 31338 ;;
*)
    body="greeting=$GREETING"
    printf 'Content-Type: text/plain\nContent-Length: %d\n\n%s\n' $((${#body} + 1)) "$body" ;;
esac
"#;

fn shim_binary() -> PathBuf {
    std::env::var_os("FCGI_SHIM_E2E_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fcgi-shim")))
}

/// The WSGI application: the same answers as APP_CGI, from a persistent
/// worker that only a restart makes read `GREETING` again.
const APP_PY: &str = r#"import subprocess
import time

GREETING = "@GREETING@"


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/sleep":
        subprocess.Popen(["@BIN@/sleep", "31337"])
        open("@BIN@/started", "w").close()
        time.sleep(31338)
    body = ("greeting=%s\n" % GREETING).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// The Python with the test virtualenv (`make test` sets it).
fn test_python() -> String {
    std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "the WSGI reload tests need FCGI_SHIM_TEST_PYTHON (make test sets it): \
             FCGI_SHIM_TEST_PYTHON=$(scripts/test-venv.sh) cargo test"
        )
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cgi,
    Wsgi,
}

/// A web root with mysite.fcgi (a copy of the binary) + mysite.toml + the
/// rewrite .htaccess, served by its own Apache.
struct Site {
    // Declared first: dropped (stopped) before the temp dir is removed.
    apache: ApacheInstance,
    dir: TempDir,
    www: PathBuf,
    bin: PathBuf,
    kind: Kind,
}

impl Site {
    fn start() -> Option<Site> {
        Site::start_kind(Kind::Cgi)
    }

    fn start_kind(kind: Kind) -> Option<Site> {
        Site::start_with(kind, "FcgidMaxProcessesPerClass 16")
    }

    fn start_with(kind: Kind, extra_conf: &str) -> Option<Site> {
        if !apache_available_or_fail() {
            return None;
        }
        let dir = TempDir::new("fcgi-shim-e2e-reload");
        let www = dir.mkdir("www");
        let bin = dir.mkdir("bin");
        fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod bin");
        // Where the shims keep the last good version (FcgidInitialEnv
        // XDG_STATE_HOME @DIR@/state in the tests that look at it).
        let state = dir.mkdir("state");
        fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod state");
        copy_file(Path::new("/bin/sleep"), &bin.join("sleep"), 0o755);
        write_file(
            &bin.join("app.cgi"),
            APP_CGI.replace("@BIN@", &bin.display().to_string()),
            0o755,
        );
        let htaccess =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("htaccess-examples/mod_fcgid.htaccess");
        copy_file(&htaccess, &www.join(".htaccess"), 0o644);
        copy_file(&shim_binary(), &www.join("mysite.fcgi"), 0o755);
        let settings = match kind {
            Kind::Cgi => settings_text(&bin, "one"),
            Kind::Wsgi => {
                write_file(&bin.join("app.py"), app_py(&bin, "one"), 0o644);
                format!(
                    "[app]\nkind = \"wsgi\"\nmodule = \"app\"\npython = \"{}\"\npython_path = [\"{}\"]\n\n[log]\nlevel = \"info\"\n",
                    test_python(),
                    bin.display()
                )
            }
        };
        write_file(&www.join("mysite.toml"), settings, 0o644);
        // Enough processes for wrk's 8 connections: with fewer, requests queue
        // in mod_fcgid, which retries once a second, whatever the shim does.
        let apache = ApacheInstance::start(
            &www,
            &extra_conf.replace("@DIR@", &dir.path().display().to_string()),
        );
        Some(Site {
            dir,
            www,
            bin,
            kind,
            apache,
        })
    }

    fn settings_path(&self) -> PathBuf {
        self.www.join("mysite.toml")
    }

    fn settings_text(&self, greeting: &str) -> String {
        settings_text(&self.bin, greeting)
    }

    fn write_settings(&self, greeting: &str) {
        write_file(&self.settings_path(), self.settings_text(greeting), 0o644);
    }

    /// What a user edits to change the output: the settings (CGI), the
    /// Python code (WSGI), which takes effect only with a restart.
    fn change_greeting(&self, greeting: &str) {
        match self.kind {
            Kind::Cgi => self.write_settings(greeting),
            Kind::Wsgi => write_file(&self.bin.join("app.py"), app_py(&self.bin, greeting), 0o644),
        }
    }

    fn touch_site(&self) {
        touch(&self.www.join("mysite.fcgi"));
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.apache.get(path)
    }

    /// `touch mysite.fcgi` with a new version that cannot serve: the old
    /// one (`greeting`) answers meanwhile; the error-log line that names
    /// `why` and says the previous version goes on serving.
    fn touch_is_refused(&self, greeting: &str, why: &str) -> String {
        self.touch_site();
        for _ in 0..3 {
            assert_eq!(self.greeting(), greeting);
        }
        let log = self.apache.wait_for_error_log(Duration::from_secs(5), |l| {
            l.contains(why) && l.contains("still serving the previous version")
        });
        log.lines()
            .find(|l| l.contains(why))
            .unwrap_or_else(|| panic!("no {why:?} in the error log:\n{log}"))
            .to_string()
    }

    fn greeting(&self) -> String {
        let r = self.get("/");
        assert_eq!(
            r.status,
            200,
            "{}\n{}",
            r.summary(),
            self.apache.logs_for_humans()
        );
        r.text().trim().to_string()
    }

    /// Polls GET / until it answers `new`; every answer before must be
    /// `old` (a WSGI reload starts the new worker beside the serving one,
    /// which answers meanwhile). Returns the answers seen before `new`.
    fn greeting_becomes(&self, old: &str, new: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut before = 0;
        loop {
            let greeting = self.greeting();
            if greeting == new {
                return before;
            }
            assert_eq!(
                greeting,
                old,
                "neither the old nor the new version\n{}",
                self.apache.logs_for_humans()
            );
            assert!(
                Instant::now() < deadline,
                "still {old:?} 15 s after the touch\n{}",
                self.apache.logs_for_humans()
            );
            before += 1;
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the shim processes mod_fcgid runs for this site (not their
    /// process-group guards, a CGI child before its exec, which carry the
    /// same command line until they run, and on a loaded machine that can
    /// take a while): `mysite.fcgi`, or in the shebang form
    /// `<fcgi-shim> mysite.fcgi`.
    fn shim_pids(&self) -> Vec<u32> {
        let exe = self.www.join("mysite.fcgi").display().to_string();
        let matching: Vec<u32> = processes_matching(&exe)
            .into_iter()
            .filter(|(_, cmd)| cmd.split(' ').take(2).any(|word| word == exe))
            .map(|(pid, _)| pid)
            .collect();
        matching
            .iter()
            .copied()
            .filter(|&pid| !parent_pid(pid).is_some_and(|p| matching.contains(&p)))
            .collect()
    }

    /// Stops Apache; nothing of this site may remain.
    fn finish(mut self) {
        self.apache.stop();
        for needle in [
            self.dir.path().display().to_string(),
            self.apache.dir().display().to_string(),
        ] {
            let left = wait_no_processes_matching(&needle, Duration::from_secs(2));
            assert!(
                left.is_empty(),
                "after Apache stopped, still running: {left:#?}"
            );
        }
    }
}

/// Settings running `<bin>/app.cgi` with `GREETING = greeting`.
fn settings_text(bin: &Path, greeting: &str) -> String {
    format!(
        "[app]\nkind = \"cgi\"\ncommand = [\"{}\"]\ntimeout = 5\nenv = {{ GREETING = \"{greeting}\" }}\n\n[log]\nlevel = \"info\"\n",
        bin.join("app.cgi").display()
    )
}

fn app_py(bin: &Path, greeting: &str) -> String {
    APP_PY
        .replace("@BIN@", &bin.display().to_string())
        .replace("@GREETING@", greeting)
}

/// `touch path`: utimensat on the path (opening a running executable for
/// writing would fail with "Text file busy").
fn touch(path: &Path) {
    let status = Command::new("touch").arg(path).status().expect("run touch");
    assert!(status.success(), "touch {} failed", path.display());
}

/// Three seconds of wrk, not measured, so mod_fcgid has spawned its
/// processes before the measured run.
fn warm_up(site: &Site) {
    let child = spawn_wrk(&site.apache.url("/"), 3);
    let _ = child.wait_with_output();
}

/// GET / in a loop for `length` (a connection each: Apache here does not
/// keep connections alive); returns the 200s, a line for anything else, and
/// the slowest response.
fn exact_load(port: u16, length: Duration) -> (u64, Vec<String>, Duration) {
    let t0 = Instant::now();
    let (mut ok, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
    while t0.elapsed() < length {
        let sent = Instant::now();
        match apache_support::http_request(port, "GET", "/", &[], None) {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) => failed.push(r.summary()),
            Err(e) => failed.push(format!("{e}")),
        }
        slowest = slowest.max(sent.elapsed());
    }
    (ok, failed, slowest)
}

fn load_secs() -> u64 {
    std::env::var("FCGI_SHIM_RELOAD_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

#[test]
fn touch_shows_the_change_on_the_next_request() {
    touch_shows_the_change(Kind::Cgi);
}

#[test]
fn wsgi_touch_shows_the_changed_code_on_the_next_request() {
    touch_shows_the_change(Kind::Wsgi);
}

fn touch_shows_the_change(kind: Kind) {
    let Some(site) = Site::start_kind(kind) else {
        return;
    };
    assert_eq!(site.greeting(), "greeting=one");
    let before = site.shim_pids();
    assert!(!before.is_empty(), "no shim process found");

    // A user's edit, then `touch mysite.fcgi`. (Another length: Python's
    // bytecode cache trusts a source file with the same size and the same
    // mtime second as when it was compiled.)
    site.change_greeting("second");
    if kind == Kind::Wsgi {
        // The worker keeps the code it imported until the site restarts.
        assert_eq!(site.greeting(), "greeting=one");
    }
    site.touch_site();
    let t0 = Instant::now();
    match kind {
        // A CGI program runs per request: the very next one is new.
        Kind::Cgi => assert_eq!(site.greeting(), "greeting=second"),
        // The serving worker answers until the new one is ready.
        Kind::Wsgi => {
            site.greeting_becomes("greeting=one", "greeting=second");
        }
    }
    eprintln!("{kind:?}: touch -> first new response: {:?}", t0.elapsed());

    // Only a touch, nothing else changed: still a restart.
    thread::sleep(Duration::from_millis(20));
    site.touch_site();
    assert_eq!(site.greeting(), "greeting=second");
    let log = site.apache.wait_for_error_log(Duration::from_secs(3), |l| {
        l.matches("mysite.fcgi changed; restarting").count() >= 1
    });
    assert!(log.contains("mysite.fcgi changed; restarting"), "{log}");
    // Re-exec in place: the same processes, no new spawns needed.
    let after = site.shim_pids();
    assert!(
        before.iter().all(|p| after.contains(p)),
        "before {before:?}, after {after:?}"
    );
    site.finish();
}

#[test]
fn touch_every_two_seconds_under_load_fails_no_request() {
    touch_under_load(Kind::Cgi);
}

#[test]
fn wsgi_touch_every_two_seconds_under_load_fails_no_request() {
    touch_under_load(Kind::Wsgi);
}

fn touch_under_load(kind: Kind) {
    let Some(site) = Site::start_kind(kind) else {
        return;
    };
    assert_eq!(site.greeting(), "greeting=one");
    let secs = load_secs();
    warm_up(&site);
    let child = spawn_wrk(&site.apache.url("/"), secs);
    let t0 = Instant::now();
    let mut touches = 0;
    while t0.elapsed() < Duration::from_secs(secs.saturating_sub(1)) {
        thread::sleep(Duration::from_secs(2));
        touches += 1;
        let greeting = if touches % 2 == 0 { "one" } else { "two" };
        site.change_greeting(greeting);
        site.touch_site();
    }
    let load = wrk_result(child.wait_with_output().expect("wrk"));
    let restarts = site.apache.error_log().matches("; restarting").count();
    eprintln!(
        "{kind:?}: wrk 8 connections {secs} s, {touches} touches, {restarts} restarts: {} requests, \
         {} non-2xx, socket errors: {:?}\n{}",
        load.requests, load.non_2xx, load.socket_errors, load.output
    );
    assert_clean_load(&load, &site.apache);
    assert!(
        restarts >= touches / 2,
        "only {restarts} restarts for {touches} touches"
    );
    site.finish();
}

#[test]
fn broken_settings_keep_the_site_up_and_are_reported_precisely() {
    let Some(site) = Site::start() else { return };
    assert_eq!(site.greeting(), "greeting=one");
    let broken = site
        .settings_text("two")
        .replace("timeout = 5", "timeout = \"soon\"");
    write_file(&site.settings_path(), broken, 0o644);
    site.touch_site();
    for _ in 0..3 {
        assert_eq!(site.greeting(), "greeting=one");
    }
    let expected = format!("{}:4:11:", site.settings_path().display());
    let log = site
        .apache
        .wait_for_error_log(Duration::from_secs(3), |l| l.contains(&expected));
    let line = log
        .lines()
        .find(|l| l.contains(&expected))
        .unwrap_or_else(|| panic!("no {expected:?} in the error log:\n{log}"));
    assert!(line.contains("timeout"), "{line}");
    assert!(
        line.contains("still serving the previous version"),
        "{line}"
    );
    site.write_settings("fixed");
    site.touch_site();
    assert_eq!(site.greeting(), "greeting=fixed");
    site.finish();
}

#[test]
fn kill_9_of_a_shim_leaves_no_process_of_its_application() {
    kill_9_leaves_nothing(Kind::Cgi);
}

#[test]
fn wsgi_kill_9_of_a_shim_leaves_no_process_of_its_application() {
    kill_9_leaves_nothing(Kind::Wsgi);
}

fn kill_9_leaves_nothing(kind: Kind) {
    let Some(site) = Site::start_kind(kind) else {
        return;
    };
    let port = site.apache.port();
    let request =
        thread::spawn(move || apache_support::http_request(port, "GET", "/sleep", &[], None));
    let started = site.bin.join("started");
    let t0 = Instant::now();
    while !started.exists() && t0.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(20));
    }
    // CGI: the program (exec'd into sleep) and the sleep it left in the
    // background. WSGI: the Python worker (its sys.path names the directory)
    // and the sleep the application started.
    let app_dir = site.bin.display().to_string();
    let before = processes_matching(&app_dir);
    assert_eq!(
        before.len(),
        2,
        "{kind:?}: the application's processes: {before:#?}"
    );
    for pid in site.shim_pids() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9");
    }
    let left = wait_no_processes_matching(&app_dir, Duration::from_secs(1));
    assert!(
        left.is_empty(),
        "{kind:?}: a second after kill -9: {left:#?}"
    );
    let _ = request.join();
    site.finish();
}

#[test]
fn binary_replaced_by_rename_under_load_and_old_processes_go_away() {
    let Some(site) = Site::start() else { return };
    assert_eq!(site.greeting(), "greeting=one");
    warm_up(&site);
    let old = site.shim_pids();
    // The rename makes a new mod_fcgid process class, which starts cold:
    // requests wait for its processes (mod_fcgid retries once a second, so
    // up to about 2 s here). Our own client counts every response exactly.
    let port = site.apache.port();
    let clients: Vec<_> = (0..8)
        .map(|_| thread::spawn(move || exact_load(port, Duration::from_secs(8))))
        .collect();
    thread::sleep(Duration::from_secs(3));
    // What a careful upload does: copy beside, then rename over.
    let tmp = site.www.join("mysite.fcgi.new");
    copy_file(&shim_binary(), &tmp, 0o755);
    site.write_settings("renamed");
    fs::rename(&tmp, site.www.join("mysite.fcgi")).expect("rename");
    let renamed_at = Instant::now();
    let (mut answered, mut failures, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
    for c in clients {
        let (ok, failed, slow) = c.join().expect("load client");
        answered += ok;
        failures.extend(failed);
        slowest = slowest.max(slow);
    }
    eprintln!(
        "rename under load (8 clients, 8 s): {answered} answered 200, {} failed, slowest {slowest:?}",
        failures.len()
    );
    assert!(answered > 0, "no request was answered");
    assert!(
        failures.is_empty(),
        "failed requests around the rename: {failures:#?}\n{}",
        site.apache.logs_for_humans()
    );
    assert_eq!(site.greeting(), "greeting=renamed");
    // mod_fcgid never sends the old class another request; they exit after
    // 60 s without one.
    let alive = |pids: &[u32]| -> Vec<u32> {
        pids.iter()
            .copied()
            .filter(|p| Path::new(&format!("/proc/{p}/exe")).exists())
            .collect()
    };
    while !alive(&old).is_empty() && renamed_at.elapsed() < Duration::from_secs(70) {
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        alive(&old).is_empty(),
        "old processes {:?} still running 70 s after the rename\n{}",
        alive(&old),
        site.apache.logs_for_humans()
    );
    eprintln!(
        "old processes gone {:?} after the rename",
        renamed_at.elapsed()
    );
    assert!(
        site.apache
            .error_log()
            .contains("was replaced and no request came for 60 s")
    );
    site.finish();
}

#[test]
fn wsgi_broken_code_keeps_the_old_version_serving_until_fixed() {
    let Some(site) = Site::start_kind(Kind::Wsgi) else {
        return;
    };
    assert_eq!(site.greeting(), "greeting=one");
    // A typo in the application, then `touch mysite.fcgi`: the new version
    // does not import, so the old one goes on serving.
    let app = site.bin.join("app.py");
    let broken = app_py(&site.bin, "two").replace("def application(", "def application(:");
    write_file(&app, broken, 0o644);
    let line = site.touch_is_refused("greeting=one", "SyntaxError");
    assert!(line.contains("app.py"), "{line}");
    assert!(
        line.contains("still serving the previous version"),
        "{line}"
    );
    // Fixed: the next touch reloads.
    site.change_greeting("fixed");
    site.touch_site();
    site.greeting_becomes("greeting=one", "greeting=fixed");
    site.finish();
}

// ---------------------------------------------------------------------------
// Last known good (issue 12): processes that start on a broken edit serve
// the last version that validated.

/// Few processes per class, so that load makes mod_fcgid start new ones;
/// the last good copies in the site's temp dir.
const LAST_GOOD_CONF: &str =
    "FcgidMaxProcessesPerClass 8\nFcgidInitialEnv XDG_STATE_HOME @DIR@/state";

fn broken_settings(site: &Site) -> String {
    site.settings_text("two")
        .replace("timeout = 5", "timeout = \"soon\"")
}

#[test]
fn processes_started_on_broken_settings_serve_the_last_good_version() {
    let Some(mut site) = Site::start_with(Kind::Cgi, LAST_GOOD_CONF) else {
        return;
    };
    assert_eq!(site.greeting(), "greeting=one");
    let one_process = site.shim_pids();
    write_file(&site.settings_path(), broken_settings(&site), 0o644);
    site.touch_site();
    // 8 connections: mod_fcgid starts new processes, on the broken file.
    let load = wrk_result(
        spawn_wrk(&site.apache.url("/"), load_secs().min(5))
            .wait_with_output()
            .expect("wrk"),
    );
    let started = site.shim_pids();
    eprintln!(
        "broken + touch, wrk 8 connections: {} requests, {} non-2xx; shims {one_process:?} -> {started:?}",
        load.requests, load.non_2xx
    );
    assert_clean_load(&load, &site.apache);
    assert!(
        started.iter().any(|p| !one_process.contains(p)),
        "mod_fcgid started no new process: {started:?}"
    );
    let log = site.apache.error_log();
    assert!(
        log.contains("serving the last good version"),
        "{}",
        site.apache.logs_for_humans()
    );
    assert_eq!(site.greeting(), "greeting=one");

    // Every shim stopped: the first request starts a fresh one.
    site.apache.stop();
    let left = wait_no_processes_matching(&site.www.display().to_string(), Duration::from_secs(5));
    assert!(left.is_empty(), "still running: {left:#?}");
    site.apache = ApacheInstance::start(
        &site.www,
        &LAST_GOOD_CONF.replace("@DIR@", &site.dir.path().display().to_string()),
    );
    assert_eq!(site.greeting(), "greeting=one");
    assert!(
        site.apache
            .error_log()
            .contains("serving the last good version"),
        "{}",
        site.apache.logs_for_humans()
    );

    // The first valid edit takes over.
    site.write_settings("fixed");
    site.touch_site();
    assert_eq!(site.greeting(), "greeting=fixed");
    site.finish();
}

#[test]
fn a_shebang_site_replaced_by_rename_with_a_broken_version_keeps_serving() {
    let Some(site) = Site::start_with(Kind::Cgi, LAST_GOOD_CONF) else {
        return;
    };
    // The shebang form: mysite.fcgi is the settings, run by the installed binary.
    let _ = fs::remove_file(site.settings_path());
    let shebang = |text: String| format!("#!{}\n{text}", shim_binary().display());
    let started = site.www.join("mysite.fcgi");
    let tmp = site.www.join("mysite.fcgi.new");
    write_file(&tmp, shebang(site.settings_text("one")), 0o755);
    fs::rename(&tmp, &started).expect("rename");
    assert_eq!(site.greeting(), "greeting=one");
    let port = site.apache.port();
    let clients: Vec<_> = (0..8)
        .map(|_| thread::spawn(move || exact_load(port, Duration::from_secs(6))))
        .collect();
    thread::sleep(Duration::from_secs(2));
    write_file(&tmp, shebang(broken_settings(&site)), 0o755);
    fs::rename(&tmp, &started).expect("rename");
    let (mut answered, mut failures) = (0u64, Vec::new());
    for c in clients {
        let (ok, failed, _) = c.join().expect("load client");
        answered += ok;
        failures.extend(failed);
    }
    eprintln!(
        "broken shebang file renamed in under load: {answered} answered 200, {} failed",
        failures.len()
    );
    assert!(answered > 0);
    assert!(
        failures.is_empty(),
        "failed requests: {failures:#?}\n{}",
        site.apache.logs_for_humans()
    );
    assert_eq!(site.greeting(), "greeting=one");
    assert!(
        site.apache
            .error_log()
            .contains("serving the last good version"),
        "{}",
        site.apache.logs_for_humans()
    );
    write_file(&tmp, shebang(site.settings_text("fixed")), 0o755);
    fs::rename(&tmp, &started).expect("rename");
    assert_eq!(site.greeting(), "greeting=fixed");
    site.finish();
}

/// Issue 12 item 4: Django imports its views on the first request, so a
/// SyntaxError there passes the import; `warmup = "/"` makes the new
/// version's validation request "/" and refuses the touch.
#[test]
fn wsgi_warmup_refuses_a_touch_with_a_syntax_error_in_a_lazily_imported_module() {
    let Some(site) = Site::start_kind(Kind::Wsgi) else {
        return;
    };
    assert_eq!(site.greeting(), "greeting=one");
    let views = |greeting: &str| {
        format!(
            "def page(environ, start_response):\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             return [b'greeting={greeting}']\n"
        )
    };
    write_file(
        &site.bin.join("lazyapp.py"),
        "def application(environ, start_response):\n    import views\n    \
         return views.page(environ, start_response)\n",
        0o644,
    );
    write_file(&site.bin.join("views.py"), views("lazy"), 0o644);
    write_file(
        &site.settings_path(),
        format!(
            "[app]\nkind = \"wsgi\"\nmodule = \"lazyapp\"\npython = \"{}\"\npython_path = [\"{}\"]\n\
             warmup = \"/\"\nenv = {{ PYTHONDONTWRITEBYTECODE = \"1\" }}\n\n[log]\nlevel = \"info\"\n",
            test_python(),
            site.bin.display()
        ),
        0o644,
    );
    site.touch_site();
    let deadline = Instant::now() + Duration::from_secs(5);
    while site.greeting() != "greeting=lazy" {
        assert!(
            Instant::now() < deadline,
            "{}",
            site.apache.logs_for_humans()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The running worker has the good views; the new version would not.
    write_file(&site.bin.join("views.py"), "def page(:\n", 0o644);
    let line = site.touch_is_refused("greeting=lazy", "warm-up GET / answered 500");
    assert!(line.contains("SyntaxError"), "{line}");
    // Fixed: the next touch reloads.
    write_file(&site.bin.join("views.py"), views("fixed"), 0o644);
    site.touch_site();
    let deadline = Instant::now() + Duration::from_secs(5);
    while site.greeting() != "greeting=fixed" {
        assert!(
            Instant::now() < deadline,
            "{}",
            site.apache.logs_for_humans()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    site.finish();
}

// ---------------------------------------------------------------------------
// Issue 12 item 3: one validation per site, not per process.

/// APP_PY that appends its pid to `imports.log` when imported; `@BROKEN@`
/// is a line run at import (a failure there refuses the version).
const COUNTING_APP_PY: &str = r#"import os

with open("@BIN@/imports.log", "a") as f:
    f.write("%d\n" % os.getpid())
@BROKEN@
GREETING = "@GREETING@"


def application(environ, start_response):
    body = ("greeting=%s\n" % GREETING).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

fn write_counting_app(site: &Site, greeting: &str, broken: &str) {
    let text = COUNTING_APP_PY
        .replace("@BIN@", &site.bin.display().to_string())
        .replace("@GREETING@", greeting)
        .replace("@BROKEN@", broken);
    write_file(&site.bin.join("app.py"), text, 0o644);
}

fn import_count(site: &Site) -> usize {
    fs::read_to_string(site.bin.join("imports.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn wsgi_a_touch_with_n_processes_imports_at_most_n_times_and_a_refusal_is_logged_once() {
    let Some(site) = Site::start_with(Kind::Wsgi, LAST_GOOD_CONF) else {
        return;
    };
    write_counting_app(&site, "one", "");
    assert_eq!(site.greeting(), "greeting=one");
    // Several processes: wrk's 8 connections make mod_fcgid start them.
    warm_up(&site);
    let processes = site.shim_pids();
    assert!(processes.len() >= 2, "one process only: {processes:?}");

    // A good edit: the validating process's worker serves; each other
    // process starts one worker once the verdict is there.
    let before = import_count(&site);
    write_counting_app(&site, "two", "");
    site.touch_site();
    site.greeting_becomes("greeting=one", "greeting=two");
    // Every process takes it (each on its own tick, no request needed).
    let log = site
        .apache
        .wait_for_error_log(Duration::from_secs(10), |l| {
            l.matches("the new version takes over").count() >= processes.len()
        });
    let imports = import_count(&site) - before;
    eprintln!(
        "a touch with {} processes: {imports} imports",
        processes.len()
    );
    assert_eq!(site.shim_pids(), processes, "the same processes serve");
    assert!(
        imports <= processes.len(),
        "{imports} imports for {} processes\n{log}",
        processes.len()
    );

    // A bad edit: one process imports it and says why, once for the site.
    let before = import_count(&site);
    write_counting_app(&site, "three", "raise RuntimeError('broken on purpose')");
    site.touch_site();
    let log = site
        .apache
        .wait_for_error_log(Duration::from_secs(10), |l| {
            l.contains("broken on purpose") && l.contains("still serving the previous version")
        });
    assert!(log.contains("broken on purpose"), "no refusal:\n{log}");
    // The others had time to read the verdict (they look every 20 ms).
    thread::sleep(Duration::from_secs(3));
    for _ in 0..4 {
        assert_eq!(site.greeting(), "greeting=two");
    }
    let log = site.apache.error_log();
    let refusals = log
        .lines()
        .filter(|l| l.contains("broken on purpose") && l.contains("not usable"))
        .count();
    assert_eq!(refusals, 1, "one refusal per site and version:\n{log}");
    assert_eq!(
        import_count(&site) - before,
        1,
        "one validation import for the site:\n{log}"
    );
    // The verdict is private, beside the last good copy.
    let state = site.dir.path().join("state/fcgi-shim");
    let verdicts: Vec<PathBuf> = fs::read_dir(&state)
        .expect("state dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "verdict"))
        .collect();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    let mode = fs::metadata(&verdicts[0]).expect("verdict").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    site.finish();
}

/// Issue 12 item 2: in the shebang form the installed binary is upgraded
/// (copied beside, renamed over); `mysite.fcgi` keeps its inode, so
/// mod_fcgid keeps its processes. Each re-execs into the new binary with
/// the worker it started and validated before: one import, the same pid.
#[test]
fn wsgi_an_upgraded_binary_is_reexeced_with_the_worker_it_validated() {
    let Some(site) = Site::start_with(Kind::Wsgi, LAST_GOOD_CONF) else {
        return;
    };
    write_counting_app(&site, "one", "");
    let installed = site.bin.join("fcgi-shim");
    copy_file(&shim_binary(), &installed, 0o755);
    let settings = fs::read_to_string(site.settings_path()).expect("settings");
    fs::remove_file(site.settings_path()).expect("rm mysite.toml");
    let started = site.www.join("mysite.fcgi");
    let tmp = site.www.join("mysite.fcgi.new");
    write_file(
        &tmp,
        format!("#!{}\n{settings}", installed.display()),
        0o755,
    );
    fs::rename(&tmp, &started).expect("rename");
    assert_eq!(site.greeting(), "greeting=one");
    let shims = site.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let before = import_count(&site);

    // (Another length: Python's bytecode cache trusts a source of the same
    // size and mtime second.)
    write_counting_app(&site, "second", "");
    let fresh = site.bin.join("fcgi-shim.new");
    copy_file(&shim_binary(), &fresh, 0o755);
    // (No fork of this test binary may still hold the copy open for
    // writing when the shim execs it: ETXTBSY.)
    thread::sleep(Duration::from_millis(200));
    fs::rename(&fresh, &installed).expect("rename binary");
    site.greeting_becomes("greeting=one", "greeting=second");
    assert_eq!(site.shim_pids(), shims, "the same process serves");
    let log = site.apache.wait_for_error_log(Duration::from_secs(3), |l| {
        l.contains("serving with the worker started and validated before the re-exec")
    });
    assert!(
        log.contains("serving with the worker started and validated before the re-exec"),
        "{}",
        site.apache.logs_for_humans()
    );
    use std::os::unix::fs::MetadataExt;
    let exe = fs::metadata(format!("/proc/{}/exe", shims[0])).expect("exe");
    let now = fs::metadata(&installed).expect("installed");
    assert_eq!(
        (exe.dev(), exe.ino()),
        (now.dev(), now.ino()),
        "runs the new binary"
    );
    assert_eq!(
        import_count(&site) - before,
        1,
        "one import for the upgrade\n{log}"
    );
    site.finish();
}

//! End-to-end under suEXEC, as on a real shared host (issue 11, item 3): a
//! private Apache 2.4 + mod_fcgid with `mod_suexec` and `mod_userdir`
//! serves `~fcgishim-test/public_html` through `/~fcgishim-test/`, and
//! suEXEC starts every FastCGI program as that user by its bare name
//! (`cmd: mysite.fcgi`, the cwd its directory). Two sites, each with the
//! shipped `htaccess-examples/mod_fcgid.htaccess` as written:
//!
//! - the shebang form at `~/public_html/mysite.fcgi`, kind wsgi, the shim
//!   installed once as `~/bin/fcgi-shim`;
//! - the two-file form in `~/public_html/cgi/`: a copy of the binary as
//!   `mysite.fcgi` beside `mysite.toml` (mode 600), kind cgi;
//! - the same form in `~/public_html/http/`, kind http: under load mod_fcgid
//!   runs several shims there, and they share one server (the default
//!   `shared`), run as the user by the site's keeper, none of the shims.
//!
//! Each answers 200 as the test user, and `touch mysite.fcgi` makes the next
//! responses show the edited application. At the end Apache stops and no
//! process of the test user is left.
//!
//! Needs root (suEXEC is setuid root and only obeys Apache's `User
//! www-data`; the test creates a user), Apache + mod_fcgid, Debian's
//! `apache2-suexec-pristine` (`.ci/run` installs it) and
//! `FCGI_SHIM_TEST_PYTHON` (a Python the test user can run: the venv under
//! /var/tmp). `FCGI_SHIM_SKIP_APACHE=1` skips it with the other Apache tests.

mod apache_support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use apache_support::load::{spawn_wrk, wrk_result};
use apache_support::{
    APACHE_MODULES, ApacheInstance, HttpResponse, TempDir, apache_available_or_fail, cmdline,
    parent_pid, running_as_root,
};

/// The test user. Created once with `useradd -m` and left in place for later
/// runs; each run replaces only `~/public_html`, `~/bin` and `~/app`, and
/// removes them when it passes (after a failure they are kept to look at).
const USER: &str = "fcgishim-test";
/// Debian's suexec (a symlink to the pristine or the custom one).
const SUEXEC_BIN: &str = "/usr/lib/apache2/suexec";
/// How long a touch may take to show in the responses.
const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// Set by FcgidInitialEnv; suEXEC must drop it.
const INITIAL_ENV: &str = "FCGI_SHIM_E2E_INITIAL_ENV";

fn venv_python() -> String {
    match std::env::var("FCGI_SHIM_TEST_PYTHON") {
        Ok(p) if !p.is_empty() && Path::new(&p).is_file() => p,
        other => panic!(
            "the suEXEC end-to-end test needs FCGI_SHIM_TEST_PYTHON: a Python that the test \
             user can run (got {other:?}). `make test` sets it; by hand: \
             FCGI_SHIM_TEST_PYTHON=$(scripts/test-venv.sh) cargo test --test e2e_suexec. \
             FCGI_SHIM_SKIP_APACHE=1 skips all Apache tests."
        ),
    }
}

/// `true` when the test should run; panics with instructions when suEXEC
/// or mod_userdir is missing.
fn suexec_available_or_fail() -> bool {
    if !apache_available_or_fail() {
        return false;
    }
    if !running_as_root() {
        eprintln!("not root: skipping the suEXEC test (it creates a user and runs Apache as root)");
        return false;
    }
    let mut missing = Vec::new();
    for p in [
        SUEXEC_BIN.to_string(),
        format!("{APACHE_MODULES}/mod_suexec.so"),
        format!("{APACHE_MODULES}/mod_userdir.so"),
    ] {
        if !Path::new(&p).exists() {
            missing.push(p);
        }
    }
    assert!(
        missing.is_empty(),
        "the suEXEC end-to-end test needs Debian's suexec and mod_userdir; missing: {}.\n\
         Run `.ci/run`, or: apt-get install apache2-suexec-pristine\n\
         To skip the Apache tests explicitly: FCGI_SHIM_SKIP_APACHE=1",
        missing.join(", ")
    );
    true
}

/// suEXEC's compiled-in settings (`suexec -V`), e.g. `AP_LOG_EXEC`.
fn suexec_setting(name: &str) -> Option<String> {
    let out = Command::new(SUEXEC_BIN).arg("-V").output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix(&format!("-D {name}="))?;
        Some(v.trim_matches('"').to_string())
    })
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test user (created if missing): uid, gid and home.
fn test_user() -> (u32, u32, PathBuf) {
    let lookup = || nix::unistd::User::from_name(USER).ok().flatten();
    let user = match lookup() {
        Some(u) => u,
        None => {
            run(Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]));
            lookup().expect("the user useradd created")
        }
    };
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let min_uid: u32 = suexec_setting("AP_UID_MIN")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let min_gid: u32 = suexec_setting("AP_GID_MIN")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    assert!(
        uid >= min_uid && gid >= min_gid,
        "suEXEC refuses uid {uid} / gid {gid} of {USER} (minimum {min_uid}/{min_gid})"
    );
    // Apache (www-data) must be able to pass through the home directory.
    let home = user.dir;
    let mode = fs::metadata(&home).expect("home").permissions().mode();
    if mode & 0o001 == 0 {
        fs::set_permissions(&home, fs::Permissions::from_mode((mode & 0o7777) | 0o711))
            .expect("chmod o+x home");
    }
    (uid, gid, home)
}

/// What a user on a shared host uploads: the files with their modes, then
/// everything chowned to the user.
struct Upload {
    uid: u32,
    gid: u32,
}

impl Upload {
    fn dir(&self, path: &Path) {
        if path.exists() {
            fs::remove_dir_all(path).unwrap_or_else(|e| panic!("rm -r {}: {e}", path.display()));
        }
        fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        self.own(path, 0o755);
    }

    fn file(&self, path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.own(path, mode);
    }

    fn copy(&self, from: &Path, to: &Path, mode: u32) {
        fs::copy(from, to)
            .unwrap_or_else(|e| panic!("cp {} {}: {e}", from.display(), to.display()));
        self.own(to, mode);
    }

    fn own(&self, path: &Path, mode: u32) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
    }
}

/// Rewrites `path` in place (same inode, owner and mode) and puts its old
/// mtime back, so the change itself triggers nothing: only `touch
/// mysite.fcgi` can make a shim take it.
fn edit_unnoticed(path: &Path, contents: &str) {
    let before = fs::metadata(path).expect("stat before the edit");
    assert_eq!(
        before.len(),
        contents.len() as u64,
        "keep the size of {} (the reloader compares it)",
        path.display()
    );
    let file = fs::File::options()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open for the edit");
    std::io::Write::write_all(&mut &file, contents.as_bytes()).expect("edit");
    file.set_modified(before.modified().expect("mtime"))
        .expect("restore mtime");
    let after = fs::metadata(path).expect("stat after the edit");
    assert_eq!(after.ino(), before.ino(), "edited in place");
}

/// `touch path`, the command (a running binary cannot be opened for writing).
fn touch(path: &Path) {
    run(Command::new("touch").arg(path));
}

/// Live (non-zombie) processes whose real uid is `uid`: pid and command line.
fn processes_of(uid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        let real_uid = field("Uid:").split_whitespace().next().map(str::to_string);
        if real_uid.as_deref() == Some(&uid.to_string()) && !field("State:").starts_with('Z') {
            found.push((pid, cmdline(pid)));
        }
    }
    found
}

/// suEXEC's log from `offset` on (its lines for this run).
struct SuexecLog {
    path: PathBuf,
    offset: u64,
}

impl SuexecLog {
    fn open() -> SuexecLog {
        let path = PathBuf::from(
            suexec_setting("AP_LOG_EXEC")
                .unwrap_or_else(|| "/var/log/apache2/suexec.log".to_string()),
        );
        let offset = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        SuexecLog { path, offset }
    }

    fn text(&self) -> String {
        let all = fs::read(&self.path).unwrap_or_default();
        let from = usize::try_from(self.offset).unwrap_or(0).min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    }
}

impl Drop for SuexecLog {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "----- suEXEC log ({}, this run) -----\n{}----- end of suEXEC log -----",
                self.path.display(),
                self.text()
            );
        }
    }
}

fn assert_ok(r: &HttpResponse, what: &str, apache: &ApacheInstance) {
    assert_eq!(
        r.status,
        200,
        "{what}: got\n{}\n{}",
        r.summary(),
        apache.logs_for_humans()
    );
}

/// GETs `path` until the body starts with `expected` (or panics), then
/// three more that must all show it: every process of the class reloaded.
fn wait_for_body(apache: &ApacheInstance, path: &str, expected: &str) -> String {
    let start = Instant::now();
    loop {
        let r = apache.get(path);
        assert_ok(&r, path, apache);
        if r.text().starts_with(expected) {
            break;
        }
        assert!(
            start.elapsed() < RELOAD_WAIT,
            "{path}: still {:?} {RELOAD_WAIT:?} after the touch, expected {expected:?}\n{}",
            r.text(),
            apache.logs_for_humans()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let mut last = String::new();
    for _ in 0..3 {
        let r = apache.get(path);
        assert_ok(&r, path, apache);
        last = r.text();
        assert!(last.starts_with(expected), "{path}: back to {last:?}");
    }
    last
}

/// The WSGI application, `~/app/hello.py`. (Give each version a greeting
/// of another length: Python's bytecode cache trusts a source of the same
/// size and mtime second.)
fn wsgi_app(greeting: &str) -> String {
    format!(
        "import os\nGREETING = {greeting:?}\n\n\
         def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         body = '%s uid=%d script_name=%s path_info=%s' % (GREETING, os.getuid(),\n        \
         environ.get('SCRIPT_NAME'), environ.get('PATH_INFO'))\n    \
         return [body.encode()]\n"
    )
}

/// The two-file site's settings; `greeting` keeps its length.
fn cgi_settings(greeting: &str) -> String {
    format!(
        "[app]\nkind = \"cgi\"\ncommand = [\"./run.cgi\"]\ntimeout = 10\n\
         env = {{ GREETING = \"{greeting}\" }}\n"
    )
}

const CGI_PROGRAM: &str = "#!/bin/sh\n\
    printf 'Content-Type: text/plain\\r\\n\\r\\n%s uid=%s cwd=%s' \"$GREETING\" \"$(id -u)\" \"$(pwd)\"\n";

#[test]
fn suexec_userdir_serves_shebang_wsgi_and_two_file_cgi_and_touch_reloads_them() {
    if !suexec_available_or_fail() {
        return;
    }
    let python = venv_python();
    let suexec_log = SuexecLog::open();
    let (uid, gid, home) = test_user();
    assert!(
        processes_of(uid).is_empty(),
        "processes of {USER} are running before the test: {:?}",
        processes_of(uid)
    );
    let up = Upload { uid, gid };
    let public = home.join("public_html");
    let bin = home.join("bin");
    let app = home.join("app");
    let cgi = public.join("cgi");
    for d in [&public, &bin, &app, &cgi] {
        up.dir(d);
    }
    let htaccess = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("htaccess-examples/mod_fcgid.htaccess"),
    )
    .expect("read the shipped .htaccess");
    let shim = Path::new(env!("CARGO_BIN_EXE_fcgi-shim"));
    up.copy(shim, &bin.join("fcgi-shim"), 0o755);

    // (a) the shebang form, kind wsgi.
    up.file(&public.join(".htaccess"), &htaccess, 0o644);
    up.file(&app.join("hello.py"), wsgi_app("wsgi-one"), 0o644);
    let site = public.join("mysite.fcgi");
    up.file(
        &site,
        format!(
            "#!{}\n[app]\nkind = \"wsgi\"\nmodule = \"hello:application\"\npython = \"{python}\"\n\
             python_path = [\"{}\"]\n",
            bin.join("fcgi-shim").display(),
            app.display()
        ),
        0o755,
    );
    // (b) the two-file form in a subdirectory, kind cgi, settings mode 600.
    up.file(&cgi.join(".htaccess"), &htaccess, 0o644);
    up.copy(shim, &cgi.join("mysite.fcgi"), 0o755);
    up.file(&cgi.join("mysite.toml"), cgi_settings("cgi-one"), 0o600);
    up.file(&cgi.join("run.cgi"), CGI_PROGRAM, 0o755);
    // (c) the two-file form, kind http: a Python HTTP server on $PORT.
    let http = public.join("http");
    up.dir(&http);
    let http_app = app.join("http_app.py");
    up.copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server_apps/http_app.py"),
        &http_app,
        0o644,
    );
    up.file(&http.join(".htaccess"), &htaccess, 0o644);
    up.copy(shim, &http.join("mysite.fcgi"), 0o755);
    up.file(
        &http.join("mysite.toml"),
        format!(
            "[app]\nkind = \"http\"\ncommand = [\"/usr/bin/python3\", \"{}\"]\n",
            http_app.display()
        ),
        0o600,
    );

    let www = TempDir::new("fcgi-shim-e2e-suexec");
    let extra = format!(
        "LoadModule suexec_module {APACHE_MODULES}/mod_suexec.so\n\
         LoadModule userdir_module {APACHE_MODULES}/mod_userdir.so\n\
         UserDir public_html\n\
         <Directory {}/*/public_html>\n  Options +ExecCGI +FollowSymLinks\n  \
         AllowOverride All\n  Require all granted\n</Directory>\n\
         FcgidInitialEnv {INITIAL_ENV} dropped-by-suexec\n",
        home.parent().expect("home's parent").display()
    );
    let mut apache = ApacheInstance::start(www.path(), &extra);
    assert!(
        apache
            .error_log()
            .contains("suEXEC mechanism enabled (wrapper: /usr/lib/apache2/suexec)"),
        "suEXEC is not enabled:\n{}",
        apache.logs_for_humans()
    );
    let base = format!("/~{USER}");

    // (a) 200 as the user, SCRIPT_NAME the userdir prefix.
    let r = apache.get(&format!("{base}/hello"));
    assert_ok(&r, "shebang wsgi", &apache);
    assert_eq!(
        r.text(),
        format!("wsgi-one uid={uid} script_name={base} path_info=/hello"),
        "{}",
        r.summary()
    );
    // (b) 200 as the user, in the script's directory.
    let r = apache.get(&format!("{base}/cgi/hello"));
    assert_ok(&r, "two-file cgi", &apache);
    assert_eq!(
        r.text(),
        format!("cgi-one uid={uid} cwd={}", cgi.display()),
        "{}",
        r.summary()
    );
    // The settings are not served, even when mod_fcgid runs them as the user.
    let r = apache.get(&format!("{base}/cgi/mysite.toml"));
    assert_eq!(r.status, 403, "{}", r.summary());

    // suEXEC ran both by their bare names, and cleaned their environment.
    let log = suexec_log.text();
    let ran = format!("uid: ({uid}/{USER}) gid: ({gid}/");
    assert!(
        log.lines()
            .filter(|l| l.contains(&ran) && l.ends_with("cmd: mysite.fcgi"))
            .count()
            >= 2,
        "suEXEC's log should show both starts as {USER}:\n{log}"
    );
    let shims: Vec<(u32, String)> = processes_of(uid)
        .into_iter()
        .filter(|(_, cmd)| cmd.ends_with("mysite.fcgi"))
        .collect();
    assert!(
        shims.iter().any(|(_, c)| c == "mysite.fcgi")
            && shims
                .iter()
                .any(|(_, c)| c.ends_with("/fcgi-shim mysite.fcgi")),
        "the shims as suEXEC started them: {shims:?}"
    );
    for (pid, cmd) in &shims {
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ).replace('\0', " ");
        assert!(
            !environ.contains(INITIAL_ENV) && environ.contains("PATH=/usr/local/bin:/usr/bin:/bin"),
            "{cmd} (pid {pid}): environment {environ:?}"
        );
    }

    // (c) under load, several shims and one server, the keeper's child.
    let r = apache.get(&format!("{base}/http/env"));
    assert_ok(&r, "http", &apache);
    let load = wrk_result(
        spawn_wrk(&apache.url(&format!("{base}/http/env")), 3)
            .wait_with_output()
            .expect("wrk"),
    );
    assert!(
        load.requests > 0 && load.non_2xx == 0,
        "{load:?}\n{}",
        apache.logs_for_humans()
    );
    let in_http = |pid: &u32| fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d == http);
    let (keepers, http_shims): (Vec<_>, Vec<_>) = processes_of(uid)
        .into_iter()
        .filter(|(pid, cmd)| cmd.contains("mysite.fcgi") && in_http(pid))
        .partition(|(_, cmd)| cmd.contains("keep-server"));
    let servers: Vec<(u32, String)> = processes_of(uid)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("http_app.py"))
        .collect();
    assert!(
        http_shims.len() >= 2,
        "mod_fcgid ran {http_shims:?}\n{}",
        apache.logs_for_humans()
    );
    assert_eq!(servers.len(), 1, "{servers:?} for {http_shims:?}");
    let parent = parent_pid(servers[0].0);
    assert!(
        keepers.iter().any(|(p, _)| Some(*p) == parent)
            && !http_shims.iter().any(|(p, _)| Some(*p) == parent),
        "the server's parent {parent:?}; keepers {keepers:?}, shims {http_shims:?}"
    );
    eprintln!(
        "http under suEXEC: {} requests in 3 s, {} shims, keeper {parent:?}, server {}",
        load.requests,
        http_shims.len(),
        servers[0].0
    );
    let server_pid = format!("pid={}\n", servers[0].0);
    for _ in 0..4 {
        let r = apache.get(&format!("{base}/http/env"));
        assert_ok(&r, "http", &apache);
        assert!(r.text().contains(&server_pid), "{}", r.text());
    }

    // touch mysite.fcgi: the edited code and settings take effect. Neither
    // edit changes a watched file's stamp, so it is the touch that counts.
    // (hello.py is not watched: only the touch can make a shim take it.)
    let hello = app.join("hello.py");
    let inode = fs::metadata(&hello).expect("stat hello.py").ino();
    fs::write(&hello, wsgi_app("wsgi-second")).expect("edit hello.py");
    assert_eq!(
        fs::metadata(&hello).expect("stat").ino(),
        inode,
        "edited in place"
    );
    touch(&site);
    wait_for_body(&apache, &format!("{base}/hello"), "wsgi-second uid=");
    edit_unnoticed(&cgi.join("mysite.toml"), &cgi_settings("cgi-two"));
    touch(&cgi.join("mysite.fcgi"));
    wait_for_body(&apache, &format!("{base}/cgi/hello"), "cgi-two uid=");
    assert!(
        !apache.error_log().contains("not usable"),
        "a reload was refused:\n{}",
        apache.logs_for_humans()
    );

    // Stop: nothing of the test user is left.
    let killed = apache.stop();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left = processes_of(uid);
    while !left.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        left = processes_of(uid);
    }
    for (pid, _) in &left {
        // Clean-up after a failure: these are ours (the user is the test's).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(*pid).expect("pid")),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        killed.is_empty(),
        "had to SIGKILL at shutdown: {killed:?}\n{}",
        apache.logs_for_humans()
    );
    assert!(
        left.is_empty(),
        "processes of {USER} still running after Apache stopped: {left:?}\n{}",
        apache.logs_for_humans()
    );
    // The user stays; its site goes (after a failure it is kept to look at).
    for d in [&public, &bin, &app] {
        let _ = fs::remove_dir_all(d);
    }
}

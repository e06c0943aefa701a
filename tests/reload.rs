//! `touch mysite.fcgi` restarts the site: the real binary on a listening
//! socket, its watched files changed under it, observed as a web server would
//! (responses, the log, the pid, the process list).

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

const LOG_WAIT: Duration = Duration::from_secs(5);
/// How long a reload may take to show in a response (each request checks first).
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// A CGI script that answers with $GREETING, which the settings set.
const GREETING_SCRIPT: &str =
    r#"printf 'Content-Type: text/plain\r\n\r\n%s from %s' "$GREETING" "$$""#;

fn greeting_settings(script: &Path, greeting: &str, extra_top: &str) -> String {
    format!(
        "{extra_top}[app]\nkind = \"cgi\"\ncommand = [\"{}\"]\ntimeout = 5\nenv = {{ GREETING = \"{greeting}\" }}\n\n[log]\nlevel = \"info\"\n",
        script.display()
    )
}

/// GET / on a new connection; the body text.
fn get_body(shim: &Shim) -> String {
    let mut conn = shim.connect();
    let response = request(&mut conn, &cgi_params("GET", "", 0), b"", false);
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 200, "status of {cgi:?}; log:\n{}", shim.log());
    cgi.body_text()
}

/// Polls with requests until the body starts with `expected` (or panics).
fn wait_for_greeting(shim: &Shim, expected: &str) -> Duration {
    let start = Instant::now();
    loop {
        let body = get_body(shim);
        if body.starts_with(expected) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < RELOAD_WAIT,
            "still answering {body:?}, expected {expected:?}; log:\n{}",
            shim.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Moves mtime forward by `secs` so a change is visible even on filesystems
/// with coarse timestamps.
fn touch_forward(path: &Path, secs: u64) {
    let when = std::time::SystemTime::now() + Duration::from_secs(secs);
    let file = fs::File::options()
        .write(true)
        .open(path)
        .expect("open to touch");
    file.set_modified(when).expect("set mtime");
}

fn app_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new("reload-app");
    let script = dir.script("app.sh", GREETING_SCRIPT);
    (dir, script)
}

/// A shim whose settings are `<dir>/testsite.toml`.
fn start(settings: &str) -> Shim {
    Shim::launch(
        TempDir::new("reload"),
        Launch {
            settings: Some(settings.to_string()),
            ..Launch::default()
        },
    )
}

fn settings_path(shim: &Shim) -> PathBuf {
    shim.dir().join("testsite.toml")
}

#[test]
fn changed_settings_take_effect_on_the_next_request_in_the_same_process() {
    let (_app, script) = app_dir();
    let shim = start(&greeting_settings(&script, "one", ""));
    assert!(get_body(&shim).starts_with("one from "));
    fs::write(settings_path(&shim), greeting_settings(&script, "two", "")).expect("rewrite");
    touch_forward(&settings_path(&shim), 1);
    // The very next request is served by the new settings.
    let body = get_body(&shim);
    assert!(
        body.starts_with("two from "),
        "got {body:?}; log:\n{}",
        shim.log()
    );
    assert!(
        shim.wait_for_log("restarting", LOG_WAIT),
        "log:\n{}",
        shim.log()
    );
    // Re-exec in place: mod_fcgid still knows this pid.
    let exe = fs::read_link(format!("/proc/{}/exe", shim.pid())).expect("exe");
    assert_eq!(exe, shim_bin().canonicalize().expect("canonical"));
}

#[test]
fn touching_the_started_file_reloads_and_nothing_waiting_is_lost() {
    let (_app, script) = app_dir();
    let shim = start(&greeting_settings(&script, "one", ""));
    assert!(get_body(&shim).starts_with("one"));
    // Connections that arrive while the reload happens wait in the backlog.
    let settings = settings_path(&shim);
    fs::write(&settings, greeting_settings(&script, "two", "")).expect("rewrite");
    touch_forward(&settings, 2);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let mut conn = shim.connect();
            thread::spawn(move || {
                let response = request(&mut conn, &cgi_params("GET", "", 0), b"", false);
                response.complete_cgi()
            })
        })
        .collect();
    for c in clients {
        let cgi = c.join().expect("client thread");
        assert_eq!(cgi.status, 200);
        assert!(cgi.body_text().starts_with("two"), "{:?}", cgi.body_text());
    }
}

#[test]
fn invalid_settings_keep_the_old_version_serving_until_fixed() {
    let (_app, script) = app_dir();
    let shim = start(&greeting_settings(&script, "one", ""));
    assert!(get_body(&shim).starts_with("one"));
    let settings = settings_path(&shim);
    let broken = greeting_settings(&script, "two", "").replace("timeout", "timeuot");
    fs::write(&settings, &broken).expect("break");
    touch_forward(&settings, 1);
    for _ in 0..3 {
        assert!(get_body(&shim).starts_with("one"), "log:\n{}", shim.log());
    }
    let log = shim.log();
    let error_line = format!("{}:4:1: unknown key `timeuot`", settings.display());
    assert!(
        log.contains(&error_line),
        "no {error_line:?} in log:\n{log}"
    );
    assert!(
        log.contains("still serving the previous version"),
        "log:\n{log}"
    );
    assert_eq!(
        log.matches("unknown key `timeuot`").count(),
        1,
        "the error is said once, not per request; log:\n{log}"
    );
    fs::write(&settings, greeting_settings(&script, "fixed", "")).expect("fix");
    touch_forward(&settings, 2);
    wait_for_greeting(&shim, "fixed");
}

#[test]
fn restart_txt_in_the_watch_list_reloads() {
    let (app, script) = app_dir();
    let restart = app.join("restart.txt");
    let top = format!("watch = [\"{}\"]\n\n", restart.display());
    let shim = start(&greeting_settings(&script, "one", &top));
    assert!(get_body(&shim).starts_with("one"));
    // The script changes; only restart.txt tells the shim.
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n{}\n",
            GREETING_SCRIPT.replace("%s from", "new %s from")
        ),
    )
    .expect("rewrite script");
    // A CGI program runs anew per request anyway; what shows the reload is the
    // log line and the new process answering after restart.txt appears.
    fs::write(&restart, "").expect("create restart.txt");
    wait_for_greeting(&shim, "new one");
    assert!(
        shim.wait_for_log("restart.txt changed; restarting", LOG_WAIT),
        "log:\n{}",
        shim.log()
    );
}

#[test]
fn keep_alive_connection_is_closed_between_requests_when_a_reload_is_due() {
    let (_app, script) = app_dir();
    let shim = start(&greeting_settings(&script, "one", ""));
    let mut conn = shim.connect();
    let first = request(&mut conn, &cgi_params("GET", "", 0), b"", true).complete_cgi();
    assert!(first.body_text().starts_with("one"));
    let settings = settings_path(&shim);
    fs::write(&settings, greeting_settings(&script, "two", "")).expect("rewrite");
    touch_forward(&settings, 1);
    // Idle keep-alive connection: the shim closes it (within the idle tick)
    // instead of serving the old version on it.
    conn.set_timeouts(Duration::from_secs(5));
    let (Closed::Eof { bytes } | Closed::Reset { bytes }) = read_until_closed(&mut conn);
    assert!(bytes.is_empty(), "unexpected bytes {bytes:?}");
    assert!(get_body(&shim).starts_with("two"));
}

#[test]
fn replaced_executable_reloads_and_a_broken_one_is_refused() {
    let site = TempDir::new("reload-bin");
    let (_app, script) = app_dir();
    let program = site.join("mysite.fcgi");
    fs::copy(shim_bin(), &program).expect("copy binary");
    let shim = Shim::launch(
        site,
        Launch {
            settings: Some(greeting_settings(&script, "one", "")),
            program: Some(program.clone()),
            ..Launch::default()
        },
    );
    assert!(get_body(&shim).starts_with("one"));

    // Not a runnable file: refused, the old code goes on.
    let junk = shim.dir().join("junk.tmp");
    fs::write(&junk, "not a program\n").expect("write junk");
    fs::rename(&junk, &program).expect("rename junk");
    assert!(get_body(&shim).starts_with("one"), "log:\n{}", shim.log());
    assert!(
        shim.wait_for_log("not executable", LOG_WAIT),
        "log:\n{}",
        shim.log()
    );

    // The real thing, by rename (cp tmp && mv tmp mysite.fcgi).
    let fresh = shim.dir().join("fresh.tmp");
    fs::copy(shim_bin(), &fresh).expect("copy binary");
    fs::rename(&fresh, &program).expect("rename binary");
    fs::write(settings_path(&shim), greeting_settings(&script, "two", "")).expect("rewrite");
    wait_for_greeting(&shim, "two");
    let exe = fs::read_link(format!("/proc/{}/exe", shim.pid())).expect("exe");
    assert_eq!(exe, program, "runs the new file, not the deleted one");
}

#[test]
fn shebang_settings_file_reloads_when_touched() {
    let dir = TempDir::new("reload-shebang");
    let (_app, script) = app_dir();
    let site = dir.join("mysite.fcgi");
    let body = |greeting: &str| {
        format!(
            "#!{}\n{}",
            shim_bin().display(),
            greeting_settings(&script, greeting, "")
        )
    };
    fs::write(&site, body("one")).expect("write site");
    fs::set_permissions(&site, fs::Permissions::from_mode(0o755)).expect("chmod");
    let shim = Shim::launch(
        dir,
        Launch {
            program: Some(site.clone()),
            ..Launch::default()
        },
    );
    assert!(get_body(&shim).starts_with("one"), "log:\n{}", shim.log());
    fs::write(&site, body("two")).expect("rewrite site");
    touch_forward(&site, 1);
    wait_for_greeting(&shim, "two");
}

#[test]
fn reload_under_systemd_socket_activation_keeps_fd_3() {
    let (_app, script) = app_dir();
    let shim = Shim::launch(
        TempDir::new("reload-systemd"),
        Launch {
            settings: Some(greeting_settings(&script, "one", "")),
            systemd: true,
            ..Launch::default()
        },
    );
    assert!(get_body(&shim).starts_with("one"), "log:\n{}", shim.log());
    let settings = settings_path(&shim);
    fs::write(&settings, greeting_settings(&script, "two", "")).expect("rewrite");
    touch_forward(&settings, 1);
    wait_for_greeting(&shim, "two");
    assert!(get_body(&shim).starts_with("two"));
}

/// A shim in the middle of a request whose program left two background
/// sleeps (which PR_SET_PDEATHSIG alone would not reach). Returns the shim,
/// its connection, the program's directory and the marker in the
/// environment of all three processes (QUERY_STRING, which they inherit).
fn shim_with_a_program_and_its_children(label: &str) -> (Shim, common::Conn, TempDir, String) {
    let marker = unique_marker();
    let dir = TempDir::new(label);
    let started = dir.join("started");
    let script = dir.script(
        "app.sh",
        &format!(
            "sleep 30 &\nsleep 31 &\ntouch {}\nwait\n",
            started.display()
        ),
    );
    let shim = Shim::start(&settings_with_timeout(&script, 20));
    let mut conn = shim.connect();
    send(
        &mut conn,
        &encode_request(1, &cgi_params("GET", &marker, 0), b"", false),
    );
    assert!(wait_for_file(&started, LOG_WAIT), "log:\n{}", shim.log());
    assert_eq!(processes_with_env(&marker).len(), 3);
    (shim, conn, dir, marker)
}

#[test]
fn application_processes_die_within_a_second_of_a_sigkilled_shim() {
    let (mut shim, _conn, _dir, marker) = shim_with_a_program_and_its_children("reload-kill9");
    let status = Command::new("kill")
        .args(["-KILL", &shim.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(shim.wait_exit(Duration::from_secs(2)).is_some());
    let left = wait_until_gone(Duration::from_secs(1), || processes_with_env(&marker));
    assert!(left.is_empty(), "still running a second later: {left:?}");
}

#[test]
fn a_stop_during_a_request_ends_the_programs_whole_group() {
    let (mut shim, _conn, _dir, marker) = shim_with_a_program_and_its_children("reload-stop");
    shim.terminate();
    assert!(
        shim.wait_exit(Duration::from_secs(5)).is_some(),
        "log:\n{}",
        shim.log()
    );
    let left = wait_until_gone(Duration::from_secs(1), || processes_with_env(&marker));
    assert!(
        left.is_empty(),
        "still running after the stop: {left:?}\n{}",
        shim.log()
    );
}

/// Issue 12 item 4: a touch after a SyntaxError in a module the application
/// imports only on its first request (Django's views) is refused by the new
/// version's warm-up; the old worker keeps serving; once fixed, a touch is
/// accepted and the first visitor meets a warm worker.
#[test]
fn issue12_a_failing_warmup_refuses_the_reload_and_the_old_version_keeps_serving() {
    let python = std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let app = TempDir::new("reload-warm");
    app.write(
        "lazyapp.py",
        "def application(environ, start_response):\n    import views\n    \
         return views.page(environ, start_response)\n",
    );
    let views = |version: &str| {
        format!(
            "def page(environ, start_response):\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             return [b'{version}']\n"
        )
    };
    app.write("views.py", &views("v1"));
    let settings = |tag: &str| {
        format!(
            "[app]\nkind = \"wsgi\"\nmodule = \"lazyapp\"\npython = \"{python}\"\n\
             python_path = [\"{}\"]\nwarmup = \"/\"\nenv = {{ PYTHONDONTWRITEBYTECODE = \"1\", TAG = \"{tag}\" }}\n\
             [log]\nlevel = \"info\"\n",
            app.path().display()
        )
    };
    let shim = start(&settings("a"));
    assert_eq!(get_body(&shim), "v1");
    // Broken views; the running worker imported the good ones already.
    app.write("views.py", "def page(:\n");
    fs::write(settings_path(&shim), settings("b")).expect("rewrite");
    touch_forward(&settings_path(&shim), 1);
    for _ in 0..3 {
        assert_eq!(get_body(&shim), "v1", "log:\n{}", shim.log());
    }
    assert!(
        shim.wait_for_log("warm-up GET / answered 500", LOG_WAIT),
        "log:\n{}",
        shim.log()
    );
    let log = shim.log();
    assert!(log.contains("SyntaxError"), "log:\n{log}");
    assert!(
        log.contains("still serving the previous version"),
        "log:\n{log}"
    );
    // Fixed and touched: the new version passes its warm-up and serves.
    app.write("views.py", &views("v2"));
    touch_forward(&settings_path(&shim), 2);
    let start = Instant::now();
    loop {
        if get_body(&shim) == "v2" {
            break;
        }
        assert!(start.elapsed() < RELOAD_WAIT * 2, "log:\n{}", shim.log());
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Issue 12 items 2 and 3: one import per reload, none waited for.

/// A WSGI application that appends its worker's pid to `imports.log` when
/// it is imported (after sleeping $IMPORT_SLEEP seconds, 0 when unset), and
/// answers "<version.txt at import> <pid>".
const COUNTING_APP: &str = r#"import os, time
time.sleep(float(os.environ.get("IMPORT_SLEEP", "0")))
HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "imports.log"), "a") as f:
    f.write("%d\n" % os.getpid())
with open(os.path.join(HERE, "version.txt")) as f:
    VERSION = f.read().strip()


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s %d" % (VERSION, os.getpid())).encode()]
"#;

fn counting_settings(app: &TempDir, env: &str) -> String {
    let python = std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    format!(
        "[app]\nkind = \"wsgi\"\nmodule = \"countapp\"\npython = \"{python}\"\n\
         python_path = [\"{}\"]\nenv = {{ PYTHONDONTWRITEBYTECODE = \"1\"{env} }}\n\
         [log]\nlevel = \"info\"\n",
        app.path().display()
    )
}

fn counting_app() -> TempDir {
    let app = TempDir::new("reload-count");
    app.write("countapp.py", COUNTING_APP);
    app.write("version.txt", "v1");
    app
}

/// The worker pids in `imports.log`, one per import.
fn imports(app: &TempDir) -> Vec<u32> {
    fs::read_to_string(app.join("imports.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// "v1 1234" -> ("v1", 1234).
fn version_and_pid(body: &str) -> (String, u32) {
    let (version, pid) = body.split_once(' ').expect("version pid");
    (version.to_string(), pid.parse().expect("pid"))
}

/// Polls until the version answers; every answer before is `old` from
/// `old_pid`. Returns the new worker's pid and the answers before it.
fn wait_for_version(shim: &Shim, new: &str, old: &str, old_pid: u32) -> (u32, usize) {
    let start = Instant::now();
    let mut before = 0;
    loop {
        let (version, pid) = version_and_pid(&get_body(shim));
        if version == new {
            return (pid, before);
        }
        assert_eq!(
            (version.as_str(), pid),
            (old, old_pid),
            "log:\n{}",
            shim.log()
        );
        assert!(start.elapsed() < RELOAD_WAIT * 2, "log:\n{}", shim.log());
        before += 1;
        thread::sleep(Duration::from_millis(20));
    }
}

/// The process never re-exec'd itself: a re-exec sets FCGI_SHIM_ORIGIN
/// in the new image's environment.
fn never_reexeced(pid: u32) -> bool {
    let environ = fs::read(format!("/proc/{pid}/environ")).expect("environ");
    !environ
        .split(|b| *b == 0)
        .any(|var| var.starts_with(b"FCGI_SHIM_ORIGIN="))
}

#[test]
fn issue12_the_validated_worker_becomes_the_serving_worker_one_import_per_touch() {
    let app = counting_app();
    let shim = start(&counting_settings(&app, ""));
    let (version, first) = version_and_pid(&get_body(&shim));
    assert_eq!(version, "v1");
    assert_eq!(imports(&app), [first]);
    for (round, version) in ["v2", "v3"].iter().enumerate() {
        app.write("version.txt", version);
        let old = if round == 0 { "v1" } else { "v2" };
        let old_pid = *imports(&app).last().expect("an import");
        touch_forward(&settings_path(&shim), round as u64 + 1);
        let (serving, _) = wait_for_version(&shim, version, old, old_pid);
        let seen = imports(&app);
        assert_eq!(
            seen.len(),
            round + 2,
            "one import per touch: {seen:?}; log:\n{}",
            shim.log()
        );
        assert_eq!(
            seen.last(),
            Some(&serving),
            "the worker that was validated serves"
        );
        // The previous worker was stopped after the takeover: no orphan.
        let gone = wait_until_gone(Duration::from_secs(3), || {
            processes_matching(&app.path().display().to_string())
                .into_iter()
                .filter(|p| *p == old_pid)
                .collect()
        });
        assert!(gone.is_empty(), "the old worker {old_pid} is still running");
    }
    let log = shim.log();
    let starting = log
        .find("starting the new version beside the serving one")
        .expect("the start line");
    let took_over = log
        .find("restarting: the new version takes over")
        .expect("the takeover line");
    assert!(starting < took_over, "log:\n{log}");
    assert!(never_reexeced(shim.pid()), "a settings change re-exec'd");
    let workers = processes_matching(&app.path().display().to_string());
    assert_eq!(workers.len(), 1, "one worker left: {workers:?}");
}

#[test]
fn issue12_the_old_worker_keeps_serving_while_the_new_version_imports_slowly() {
    let app = counting_app();
    let shim = start(&counting_settings(&app, ""));
    let (_, first) = version_and_pid(&get_body(&shim));
    app.write("version.txt", "v2");
    // The new version's import takes 2 s: the old worker answers meanwhile.
    fs::write(
        settings_path(&shim),
        counting_settings(&app, ", IMPORT_SLEEP = \"2\""),
    )
    .expect("rewrite");
    touch_forward(&settings_path(&shim), 1);
    let (version, pid) = version_and_pid(&get_body(&shim));
    assert_eq!(
        (version.as_str(), pid),
        ("v1", first),
        "log:\n{}",
        shim.log()
    );
    assert!(
        shim.log()
            .contains("starting the new version beside the serving one"),
        "the old worker answered while the new one was starting; log:\n{}",
        shim.log()
    );
    let (serving, before) = wait_for_version(&shim, "v2", "v1", first);
    assert!(before >= 1, "answers by the old worker during the import");
    assert_eq!(imports(&app), [first, serving], "log:\n{}", shim.log());
}

#[test]
fn issue12_a_settings_change_is_taken_in_place_without_exec() {
    let (_app, script) = app_dir();
    let shim = start(&greeting_settings(&script, "one", ""));
    assert!(get_body(&shim).starts_with("one"));
    // New greeting, the log level and a limit: all taken in this process.
    let changed = greeting_settings(&script, "two", "")
        .replace("level = \"info\"", "level = \"debug\"")
        + "\n[limits]\nmax_params = 8\n";
    fs::write(settings_path(&shim), changed).expect("rewrite");
    touch_forward(&settings_path(&shim), 1);
    assert!(
        get_body_of(&shim, 8).starts_with("two"),
        "log:\n{}",
        shim.log()
    );
    assert!(
        shim.wait_for_log("reload: the previous version is stopped", LOG_WAIT),
        "the new log level is in force; log:\n{}",
        shim.log()
    );
    // More than max_params = 8 meta-variables (13): refused by the new limit.
    let mut conn = shim.connect();
    conn.set_timeouts(Duration::from_secs(5));
    send(
        &mut conn,
        &encode_request(1, &cgi_params("GET", "", 0), b"", false),
    );
    let _ = read_until_closed(&mut conn);
    assert!(
        shim.wait_for_log("more than 8 name-value pairs", LOG_WAIT),
        "max_params = 8 is in force; log:\n{}",
        shim.log()
    );
    assert!(never_reexeced(shim.pid()), "log:\n{}", shim.log());
    assert!(!shim.log().contains("re-exec"), "log:\n{}", shim.log());
}

/// GET / with only the first `n` of the usual meta-variables.
fn get_body_of(shim: &Shim, n: usize) -> String {
    let mut conn = shim.connect();
    let params: Vec<_> = cgi_params("GET", "", 0).into_iter().take(n).collect();
    request(&mut conn, &params, b"", false)
        .complete_cgi()
        .body_text()
}

#[test]
fn issue12_a_new_executable_is_exec_d_with_the_worker_it_validated() {
    let app = counting_app();
    let site = TempDir::new("reload-handover");
    let program = site.join("mysite.fcgi");
    fs::copy(shim_bin(), &program).expect("copy binary");
    let shim = Shim::launch(
        site,
        Launch {
            settings: Some(counting_settings(&app, "")),
            program: Some(program.clone()),
            ..Launch::default()
        },
    );
    let (_, first) = version_and_pid(&get_body(&shim));
    assert!(never_reexeced(shim.pid()));
    // A new executable by rename, and new code.
    app.write("version.txt", "v2");
    let fresh = shim.dir().join("fresh.tmp");
    fs::copy(shim_bin(), &fresh).expect("copy binary");
    fs::rename(&fresh, &program).expect("rename binary");
    let (serving, _) = wait_for_version(&shim, "v2", "v1", first);
    let exe = fs::read_link(format!("/proc/{}/exe", shim.pid())).expect("exe");
    assert_eq!(exe, program, "runs the new file; log:\n{}", shim.log());
    assert!(!never_reexeced(shim.pid()), "a new executable re-execs");
    // The worker started and validated before the exec serves after it:
    // one import for the new version.
    assert_eq!(imports(&app), [first, serving], "log:\n{}", shim.log());
    assert!(
        shim.wait_for_log(
            "serving with the worker started and validated before the re-exec",
            LOG_WAIT
        ),
        "log:\n{}",
        shim.log()
    );
    let workers = wait_until_gone(Duration::from_secs(3), || {
        processes_matching(&app.path().display().to_string())
            .into_iter()
            .filter(|p| *p != serving)
            .collect()
    });
    assert!(
        workers.is_empty(),
        "the old worker is still running: {workers:?}"
    );
}

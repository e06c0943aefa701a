//! Applications that try to outlive the shim or to hide their death (issue 13):
//! a grandchild that calls `setsid()` and ignores SIGTERM (cgi and wsgi), a
//! WSGI app that forks a long-lived child and later crashes, and a cgi `root`
//! that holds a setuid program. Each through the real binary: the status, the
//! log line, the process list.
//!
//! The wsgi cases need a python3: `$FCGI_SHIM_TEST_PYTHON` or `python3`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn python() -> String {
    std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn wsgi_settings(app_dir: &Path) -> String {
    format!(
        "[app]\nkind = \"wsgi\"\nmodule = \"hostile\"\npython = \"{}\"\npython_path = [\"{}\"]\n\
         request_timeout = 10\nenv = {{ PYTHONDONTWRITEBYTECODE = \"1\" }}\n[log]\nlevel = \"info\"\n",
        python(),
        app_dir.display()
    )
}

/// A WSGI application (module `hostile`) in `<dir>/app`.
fn hostile_app(dir: &TempDir) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("hostile.py"), HOSTILE_PY).unwrap();
    app
}

const HOSTILE_PY: &str = r#"
import os, signal, subprocess, sys, time

def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/fork":
        # A long-lived child that keeps the worker's stdin/stdout/stderr.
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        body = str(pid)
    elif path == "/escape":
        # A grandchild in its own session that ignores SIGTERM; its argv
        # carries a marker the test looks for in the process list.
        marker = environ["QUERY_STRING"]
        ready = os.path.join(os.path.dirname(__file__), "escaped")
        subprocess.Popen(
            [sys.executable, "-c",
             "import os,signal,sys,time\n"
             "os.setsid()\n"
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "open(sys.argv[2], 'w').close()\n"
             "time.sleep(300)\n", marker, ready],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Answer once it is in its own session and deaf to SIGTERM.
        for _ in range(500):
            if os.path.exists(ready):
                break
            time.sleep(0.01)
        body = "escaped"
    elif path == "/crash":
        sys.stderr.write("hostile about to crash\n")
        sys.stderr.flush()
        os._exit(7)
    else:
        body = "hello"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
"#;

fn get(shim: &Shim, path: &str, query: &str) -> CgiResponse {
    get_site(shim, path, query)
}

/// Issue 13, item 3: the worker forked a child that holds its pipes in
/// request 1; it crashes in request 2: a 502 at once (not a 504 after
/// request_timeout), and the log says how the worker ended.
#[test]
fn worker_crash_is_seen_by_pid_while_a_forked_child_holds_its_pipes() {
    let dir = TempDir::new("hostile-fork");
    let app = hostile_app(&dir);
    let shim = Shim::start(&wsgi_settings(&app));
    let r = get(&shim, "/fork", "");
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), shim.log());
    let child: u32 = r.body_text().parse().expect("the forked child's pid");
    assert!(Path::new(&format!("/proc/{child}")).exists());

    let started = Instant::now();
    let r = get(&shim, "/crash", "");
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}\n{}", r.body_text(), shim.log());
    assert!(took < Duration::from_secs(1), "502 after {took:?}");
    let log = shim.log();
    let line = log
        .lines()
        .find(|l| l.contains("during GET /mysite.fcgi/crash"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("exited with status 7")
            && line.contains("hostile about to crash")
            && line.contains("(502)"),
        "{line}"
    );
    // The worker's group (the forked child with it) was ended.
    assert!(
        wait_until_gone(Duration::from_secs(2), || {
            let alive = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
            if alive { vec![child] } else { vec![] }
        })
        .is_empty(),
        "the forked child {child} outlived its worker"
    );
    // A new worker serves the next request.
    let r = get(&shim, "/hello", "");
    assert_eq!(r.status, 200, "{}", shim.log());
}

/// Settings for a cgi `root` directory.
fn cgi_root_settings(root: &Path) -> String {
    format!(
        "[app]\nkind = \"cgi\"\nroot = \"{}\"\ntimeout = 5\n[log]\nlevel = \"info\"\n",
        root.display()
    )
}

/// A GET for the program `script` under a cgi `root`.
fn get_script(shim: &Shim, script: &Path, query: &str) -> CgiResponse {
    let mut p = cgi_params("GET", query, 0);
    p.push(("SCRIPT_FILENAME".into(), script.display().to_string()));
    let mut conn = shim.connect();
    request(&mut conn, &p, b"", false).complete_cgi()
}

/// Issue 13, item 11: a setuid or setgid program under `root` is not run:
/// 403 and a log line; the same program without the bit runs.
#[test]
fn setuid_and_setgid_programs_under_root_are_refused() {
    let dir = TempDir::new("hostile-suid");
    let root = dir.join("cgi-bin");
    std::fs::create_dir_all(&root).unwrap();
    let ran = dir.join("ran");
    let script = root.join("suid.cgi");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch {}\nprintf 'Content-Type: text/plain\\r\\n\\r\\nran'\n",
            ran.display()
        ),
    )
    .unwrap();
    let shim = Shim::start(&cgi_root_settings(&root));
    for (mode, what) in [(0o4755, "setuid"), (0o2755, "setgid")] {
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(mode)).unwrap();
        let r = get_script(&shim, &script, "");
        assert_eq!(r.status, 403, "{mode:o}: {}\n{}", r.body_text(), shim.log());
        let log = shim.log();
        assert!(
            log.lines().any(|l| l.contains(&format!(
                "refusing SCRIPT_FILENAME {}: a {what} program (mode {mode:o}) (403)",
                script.display()
            ))),
            "{log}"
        );
        assert!(!ran.exists(), "the {what} program ran");
    }
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = get_script(&shim, &script, "");
    assert_eq!(r.status, 200, "{}", shim.log());
    assert_eq!(r.body_text(), "ran");
}

/// Live processes whose command line holds `marker`.
fn escaped(marker: &str) -> Vec<u32> {
    processes_matching(marker)
}

/// Stop the shim: it exits within 5 s, and nothing with `marker` in its
/// command line outlives it.
fn stop_leaving_no_escapee(shim: &mut Shim, marker: &str) {
    shim.terminate();
    assert!(
        shim.wait_exit(Duration::from_secs(5)).is_some(),
        "{}",
        shim.log()
    );
    let left = escaped(marker);
    assert!(
        left.is_empty(),
        "{left:?} outlived the shim\n{}",
        shim.log()
    );
}

/// Issue 13, item 2 (cgi): a program starts a grandchild that calls
/// `setsid()` and ignores SIGTERM, then exits: once the response is in, the
/// grandchild is gone, and the log names it.
/// A cgi program that starts a grandchild in its own session, deaf to
/// SIGTERM, with `marker` in its argv, waits until it is set up, and answers.
fn escaping_script(dir: &TempDir, marker: &str) -> PathBuf {
    dir.script(
        "escape.cgi",
        &format!(
            "rm -f escaped\n\
             setsid sh -c 'trap \"\" TERM; : >escaped; while :; do sleep 1; done' '{marker}' \
             </dev/null >/dev/null 2>&1 &\n\
             # Answer once it is in its own session and deaf to SIGTERM.\n\
             while [ ! -e escaped ]; do sleep 0.01; done\n\
             printf 'Content-Type: text/plain\\r\\n\\r\\nescaped'"
        ),
    )
}

/// One request to the escaping script: 200, and afterwards no process with
/// `marker` is left.
fn escape_and_check(shim: &Shim, marker: &str) {
    let mut conn = shim.connect();
    let r = request(&mut conn, &cgi_params("GET", "", 0), b"", false).complete_cgi();
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), shim.log());
    assert_eq!(r.body_text(), "escaped");
    let left = wait_until_gone(Duration::from_millis(300), || escaped(marker));
    assert!(
        left.is_empty(),
        "{left:?} outlived the request\n{}",
        shim.log()
    );
}

const ORPHAN_LINE: &str = "outlived the application process that started it";

/// Issue 13, item 2 (cgi): a program starts a grandchild that calls
/// `setsid()` and ignores SIGTERM, then exits: once the response is in, the
/// grandchild is gone, and the log names it.
#[test]
fn cgi_grandchild_in_its_own_session_ignoring_sigterm_ends_with_the_request() {
    let dir = TempDir::new("hostile-cgi-setsid");
    let marker = format!("escapee-{}", dir.path().display());
    let shim = Shim::start(&settings(&escaping_script(&dir, &marker)));
    escape_and_check(&shim, &marker);
    let log = shim.log();
    assert!(
        log.lines()
            .any(|l| l.contains(ORPHAN_LINE) && l.contains("(sh)") && l.contains("ending it")),
        "{log}"
    );
    // Again: the shim keeps serving, and holds no zombie.
    escape_and_check(&shim, &marker);
    assert_eq!(shim.log().matches(ORPHAN_LINE).count(), 2, "{}", shim.log());
    assert_eq!(zombies_of(shim.pid()), Vec::<u32>::new());
}

/// The same after `touch` reloaded the shim in place (same pid): it is
/// still a subreaper, and reaps what the previous version left.
#[test]
fn cgi_grandchild_ends_with_the_request_after_a_reload() {
    let dir = TempDir::new("hostile-cgi-reload");
    let marker = format!("escapee-{}", dir.path().display());
    let shim = Shim::start(&settings(&escaping_script(&dir, &marker)));
    escape_and_check(&shim, &marker);
    let toml = shim.dir().join("testsite.toml");
    let file = std::fs::File::options().write(true).open(&toml).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(2))
        .unwrap();
    drop(file);
    // The next request sees the change and is served by the new version.
    escape_and_check(&shim, &marker);
    assert!(shim.log().contains("changed; restarting"), "{}", shim.log());
    escape_and_check(&shim, &marker);
    assert_eq!(shim.log().matches(ORPHAN_LINE).count(), 3, "{}", shim.log());
    assert_eq!(zombies_of(shim.pid()), Vec::<u32>::new());
}

/// The children of `parent` that are zombies (exited, never reaped).
fn zombies_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let f: Vec<&str> = after.split_whitespace().collect();
            f.len() > 2 && f[0] == "Z" && f[1] == parent.to_string()
        })
        .collect()
}

/// Issue 13, item 2 (wsgi): the application starts a grandchild that calls
/// `setsid()` and ignores SIGTERM: once the shim has stopped, it is gone.
#[test]
fn wsgi_grandchild_in_its_own_session_ignoring_sigterm_ends_with_the_shim() {
    let dir = TempDir::new("hostile-wsgi-setsid");
    let app = hostile_app(&dir);
    let marker = format!("escapee-{}", dir.path().display());
    let mut shim = Shim::start(&wsgi_settings(&app));
    let r = get(&shim, "/escape", &marker);
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), shim.log());
    assert!(
        wait_for(Duration::from_secs(2), || !escaped(&marker).is_empty()),
        "the grandchild did not start"
    );
    stop_leaving_no_escapee(&mut shim, &marker);
    assert!(
        shim.log()
            .contains("outlived the application process that started it"),
        "{}",
        shim.log()
    );
}

/// Polls until `done()` or `timeout`; whether it became true.
fn wait_for(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same during start-up: the module forks a long-lived child that holds
/// the worker's pipes, then the worker dies importing it: a 503 at once
/// (not after start_timeout), and the log says how the worker ended.
#[test]
fn worker_death_during_start_up_is_seen_by_pid_while_a_forked_child_holds_its_pipes() {
    let dir = TempDir::new("hostile-import");
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("hostile.py"),
        "import os, sys, time\n\
         if os.fork() == 0:\n    time.sleep(120)\n    os._exit(0)\n\
         sys.stderr.write('hostile dies importing\\n')\n\
         sys.stderr.flush()\n\
         os._exit(3)\n",
    )
    .unwrap();
    let shim = Shim::start(&wsgi_settings(&app));
    let started = Instant::now();
    let r = get(&shim, "/hello", "");
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}\n{}", r.body_text(), shim.log());
    assert!(took < Duration::from_secs(2), "503 after {took:?}");
    let log = shim.log();
    assert!(
        log.lines()
            .any(|l| l.contains("exited with status 3 during start-up")
                && l.contains("hostile dies importing")),
        "{log}"
    );
}

/// Issue 13, item 2 (cgi, on stop): the shim is stopped while the program
/// that started such a grandchild still runs: once the shim has exited,
/// neither is left.
#[test]
fn cgi_grandchild_in_its_own_session_ends_with_a_stopping_shim() {
    let dir = TempDir::new("hostile-cgi-stop");
    let marker = format!("escapee-{}", dir.path().display());
    let script = dir.script(
        "escape.cgi",
        &format!(
            "setsid sh -c 'trap \"\" TERM; : >escaped; while :; do sleep 1; done' '{marker}' \
             </dev/null >/dev/null 2>&1 &\n\
             while [ ! -e escaped ]; do sleep 0.01; done\n\
             printf 'Content-Type: text/plain\\r\\n\\r\\nrunning'\n\
             exec sleep 30"
        ),
    );
    let mut shim = Shim::start(&settings_with_timeout(&script, 30));
    let mut conn = shim.connect();
    send(
        &mut conn,
        &encode_request(1, &cgi_params("GET", "", 0), b"", false),
    );
    assert!(
        wait_for_file(&dir.join("escaped"), Duration::from_secs(5)),
        "{}",
        shim.log()
    );
    stop_leaving_no_escapee(&mut shim, &marker);
    assert!(shim.log().contains(ORPHAN_LINE), "{}", shim.log());
}

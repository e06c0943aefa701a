//! The `wsgi` kind against the real binary and a real Python, spoken to by the
//! test FastCGI client (`tests/common/`): the adapter's PEP 3333 behaviour
//! (with `wsgiref.validate.validator` around the test application), streaming
//! both ways, and the worker's lifecycle (import error 503, crash 502, timeout
//! 504, recycling, coming back once fixed).
//!
//! Needs only a python3 with its standard library: `$FCGI_SHIM_TEST_PYTHON`
//! (set by `make test`) or `python3` from PATH.

mod common;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn python() -> String {
    std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn probe_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wsgi_apps")
}

fn wsgi_settings(module: &str, python_path: &Path, extra: &str) -> String {
    format!(
        "[app]\nkind = \"wsgi\"\nmodule = \"{module}\"\npython = \"{}\"\npython_path = [\"{}\"]\n\
         env = {{ PROBE = \"from-settings\", PYTHONDONTWRITEBYTECODE = \"1\" }}\n{extra}\n[log]\nlevel = \"info\"\n",
        python(),
        python_path.display()
    )
}

/// A shim running tests/wsgi_apps/probe.py.
fn probe_shim(extra: &str) -> Shim {
    Shim::start(&wsgi_settings("probe", &probe_dir(), extra))
}

/// A temp dir whose `app/` holds `files` (name, Python source): the
/// python_path of an application made for one test.
fn app_dir(label: &str, files: &[(&str, &str)]) -> (TempDir, PathBuf) {
    let dir = TempDir::new(label);
    let app_dir = dir.join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    for (name, source) in files {
        std::fs::write(app_dir.join(name), source).unwrap();
    }
    (dir, app_dir)
}

fn params(method: &str, path: &str, query: &str, body_len: usize) -> Vec<(String, String)> {
    site_params(method, path, query, body_len)
}

fn get(shim: &Shim, path: &str, query: &str) -> CgiResponse {
    get_site(shim, path, query)
}

fn post(shim: &Shim, path: &str, body: &[u8]) -> CgiResponse {
    let mut conn = shim.connect();
    request(
        &mut conn,
        &params("POST", path, "", body.len()),
        body,
        false,
    )
    .complete_cgi()
}

/// Send `GET path?query` on `conn` without reading the answer.
fn send_get(conn: &mut Conn, path: &str, query: &str) {
    send(
        conn,
        &encode_request(1, &params("GET", path, query, 0), b"", false),
    );
}

/// The pid of the worker that serves the next request (from /environ).
fn worker_pid(shim: &Shim) -> String {
    pid_in(&get(shim, "/environ", ""))
}

/// The worker's pid in an /environ response.
fn pid_in(response: &CgiResponse) -> String {
    let text = response.body_text();
    let at = text.find("\"pid\": ").expect("pid in /environ") + 7;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn hello_environ_and_pep3333_details() {
    let shim = probe_shim("");
    let r = get(&shim, "/hello", "");
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), shim.log());
    assert_eq!(r.body_text(), "hello from wsgi");
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));

    let mut p = params("GET", "/environ", "a=1", 0);
    p.push(("HTTPS".into(), "on".into()));
    p.push(("HTTP_PROXY".into(), "http://evil.example/".into()));
    p.push(("REDIRECT_HTTP_AUTHORIZATION".into(), "Basic dTpw".into()));
    let mut conn = shim.connect();
    let r = request(&mut conn, &p, b"", false).complete_cgi();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let env = r.body_text();
    for needle in [
        "\"wsgi.url_scheme\": \"https\"",
        "\"wsgi.version\": [1, 0]",
        "\"wsgi.multithread\": false",
        "\"wsgi.run_once\": false",
        "\"QUERY_STRING\": \"a=1\"",
        "\"HTTP_AUTHORIZATION\": \"Basic dTpw\"",
        "\"os.environ.PROBE\": \"from-settings\"",
        // Not rewritten: the visitor used /mysite.fcgi/environ itself.
        "\"SCRIPT_NAME\": \"/mysite.fcgi\"",
        "\"PATH_INFO\": \"/environ\"",
    ] {
        assert!(env.contains(needle), "no {needle} in {env}");
    }
    assert!(!env.contains("HTTP_PROXY"), "{env}");
    // python_path first; the working directory ("") last.
    let path_at = env.find("\"sys.path\": [").expect("sys.path") + 13;
    let path = &env[path_at..path_at + env[path_at..].find(']').unwrap()];
    assert!(
        path.starts_with(&format!("\"{}\"", probe_dir().display())) && path.ends_with("\"\""),
        "{path}"
    );

    let r = get(&shim, "/write", "");
    assert_eq!(r.body_text(), "written, then returned");
    let r = get(&shim, "/file", "");
    assert_eq!(r.body, std::fs::read(probe_dir().join("probe.py")).unwrap());
    let r = get(&shim, "/status", "");
    assert_eq!(r.status, 418);
    let r = get(&shim, "/redirect", "");
    assert_eq!((r.status, r.header("Location")), (302, Some("/hello")));
    let r = get(&shim, "/exc-info", "");
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (500, "handled with exc_info")
    );

    let marker = shim.dir().join("closed");
    let r = get(&shim, "/close", marker.to_str().unwrap());
    assert_eq!(r.body_text(), "body");
    assert!(
        wait_for_file(&marker, Duration::from_secs(2)),
        "close() was not called"
    );

    // wsgi.errors and print() reach the log, never the response.
    let r = get(&shim, "/errors", "");
    assert_eq!(r.body_text(), "logged");
    assert!(
        shim.wait_for_log("probe wrote to wsgi.errors", Duration::from_secs(2)),
        "{}",
        shim.log()
    );
    assert!(
        shim.wait_for_log("probe printed to stdout", Duration::from_secs(2)),
        "{}",
        shim.log()
    );
    // One worker served everything: its pid never changed.
    assert_eq!(
        shim.log().matches(" ready in ").count(),
        1,
        "{}",
        shim.log()
    );
    assert!(
        !shim.log().contains("AssertionError"),
        "validator complained:\n{}",
        shim.log()
    );
}

#[test]
fn application_errors_give_500_and_a_traceback_in_the_log() {
    let shim = probe_shim("");
    let r = get(&shim, "/raise", "");
    assert_eq!(r.status, 500, "{}", r.body_text());
    assert!(
        !r.body_text().contains("probe raised"),
        "traceback shown without debug"
    );
    assert!(
        shim.wait_for_log(
            "ValueError: probe raised on purpose",
            Duration::from_secs(2)
        ),
        "{}",
        shim.log()
    );
    // The same worker goes on.
    assert_eq!(get(&shim, "/hello", "").status, 200);
}

#[test]
fn bodies_stream_both_ways() {
    let shim = probe_shim("");
    // 5 MiB up (past the shim's 1 MiB in-memory spool) and back.
    let sent = prng_bytes(5 << 20, 7);
    let t0 = Instant::now();
    let r = post(&shim, "/echo", &sent);
    assert_eq!(r.status, 200, "{}", shim.log());
    assert_eq!(r.body.len(), sent.len());
    assert!(r.body == sent, "echoed body differs");
    eprintln!("5 MiB echo took {:?}", t0.elapsed());
    // A body read by lines (iteration), and one the app ignores.
    let r = post(&shim, "/lines", b"a\nb\nc");
    assert_eq!(r.body_text(), "3 lines, last b'c'");
    let r = post(&shim, "/ignore-body", &prng_bytes(3 << 20, 9));
    assert_eq!(r.body_text(), "ignored");
    // The worker is in step after the ignored body.
    assert_eq!(get(&shim, "/hello", "").body_text(), "hello from wsgi");
    let r = get(&shim, "/big", "3000000");
    assert_eq!(r.body.len(), 3_000_000);
    assert!(
        r.body
            .chunks(256)
            .all(|c| c.iter().enumerate().all(|(i, &b)| b == i as u8))
    );
}

#[test]
fn a_streamed_response_arrives_chunk_by_chunk() {
    let shim = probe_shim("");
    let gate = shim.dir().join("gate");
    let mut conn = shim.connect();
    send_get(&mut conn, "/stream", gate.to_str().unwrap());
    // The first chunk comes while the view still waits for the gate file.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("first chunk") {
        assert!(
            Instant::now() < deadline,
            "first chunk did not arrive: {:?}",
            String::from_utf8_lossy(&seen)
        );
        let rec = read_record(&mut conn).unwrap().expect("record");
        seen.extend_from_slice(&rec.content);
    }
    assert!(!String::from_utf8_lossy(&seen).contains("last chunk"));
    std::fs::write(&gate, "go").unwrap();
    let rest = read_response(&mut conn, 1).unwrap();
    seen.extend_from_slice(&rest.stdout);
    assert!(String::from_utf8_lossy(&seen).contains("last chunk"));
}

#[test]
fn worker_crash_is_502_and_the_worker_comes_back() {
    let shim = probe_shim("");
    let r = get(&shim, "/crash", "");
    assert_eq!(r.status, 502, "{}", r.body_text());
    assert!(
        shim.wait_for_log("SIGKILL", Duration::from_secs(2)),
        "{}",
        shim.log()
    );
    let log = shim.log();
    let line = log
        .lines()
        .find(|l| l.contains("during GET"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("probe about to crash") && line.contains("(502)"),
        "{line}"
    );
    let r = get(&shim, "/hello", "");
    assert_eq!(r.status, 200, "{}", shim.log());
}

/// Every request passes the shim (there is no other path): big bodies both
/// ways, a body sent whole before any of the response is read (as mod_fcgid
/// does) to an application that answers first, a crash (502 and its log
/// line), a request too slow (504), and a clean stop with nothing left.
#[test]
fn the_relay_serves_bodies_crashes_timeouts_and_stops() {
    let mut shim = probe_shim("request_timeout = 1\n");
    let r = get(&shim, "/environ", "");
    assert_eq!(r.status, 200, "{}", shim.log());
    assert!(!r.body_text().contains("FCGI_SHIM_"), "{}", r.body_text());
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(post(&shim, "/echo", &body).body, body);
    let mut conn = shim.connect();
    conn.set_timeouts(Duration::from_secs(10));
    let big = vec![b'b'; 3 << 20];
    send(
        &mut conn,
        &encode_request(1, &params("POST", "/early", "", big.len()), &big, false),
    );
    let r = read_response(&mut conn, 1).expect("the response after the whole body");
    assert!(r.stdout.ends_with(&[b'e'; 1000]), "{}", shim.log());

    let r = get(&shim, "/crash", "");
    assert_eq!(r.status, 502, "{}\n{}", r.body_text(), shim.log());
    assert!(
        shim.wait_for_log("(502); restarting it", Duration::from_secs(3)),
        "{}",
        shim.log()
    );
    let log = shim.log();
    let line = log
        .lines()
        .find(|l| l.contains("during GET"))
        .unwrap_or_default();
    assert!(
        line.contains("SIGKILL") && line.contains("probe about to crash"),
        "{log}"
    );
    assert_eq!(get(&shim, "/hello", "").status, 200, "{}", shim.log());

    let t0 = Instant::now();
    let r = get(&shim, "/sleep", "30");
    assert_eq!(r.status, 504, "{}", shim.log());
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(
        shim.wait_for_log("timed out after", Duration::from_secs(2)),
        "{}",
        shim.log()
    );
    assert_eq!(get(&shim, "/hello", "").status, 200, "{}", shim.log());

    // One worker, no other process of the application; gone after SIGTERM.
    let worker = worker_pid(&shim);
    let children = std::fs::read_to_string(format!("/proc/{worker}/task/{worker}/children"))
        .unwrap_or_default();
    assert_eq!(children.trim(), "", "the worker has no process of its own");
    shim.terminate();
    assert!(
        shim.wait_exit(Duration::from_secs(5)).is_some(),
        "{}",
        shim.log()
    );
    let alive = || {
        std::fs::read_to_string(format!("/proc/{worker}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z"))
    };
    let t0 = Instant::now();
    while alive() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the worker {worker} is left running after the stop"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Settings written for an older version (`direct = false`) still work,
/// with one warning that says the key is ignored.
#[test]
fn the_old_direct_key_is_ignored_with_a_warning() {
    let shim = probe_shim("direct = false\n");
    assert_eq!(get(&shim, "/hello", "").status, 200, "{}", shim.log());
    let log = shim.log();
    assert!(
        log.lines()
            .any(|l| l.contains("warn") && l.contains("`direct` is no longer used")),
        "{log}"
    );
}

#[test]
fn request_timeout_is_504_with_a_fresh_worker() {
    let shim = probe_shim("request_timeout = 1\n");
    let t0 = Instant::now();
    let r = get(&shim, "/sleep", "30");
    assert_eq!(r.status, 504);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        shim.wait_for_log("timed out after", Duration::from_secs(2)),
        "{}",
        shim.log()
    );
    assert_eq!(get(&shim, "/hello", "").status, 200, "{}", shim.log());
}

#[test]
fn max_requests_recycles_the_worker() {
    let shim = probe_shim("max_requests = 2\n");
    let a = worker_pid(&shim);
    let b = worker_pid(&shim);
    let c = worker_pid(&shim);
    assert_eq!(a, b);
    assert_ne!(b, c);
    assert!(
        shim.log().contains("recycling after 2 requests"),
        "{}",
        shim.log()
    );
    thread::sleep(Duration::from_millis(300));
    assert!(
        !Path::new(&format!("/proc/{a}")).exists()
            || std::fs::read_to_string(format!("/proc/{a}/stat"))
                .unwrap_or_default()
                .contains(") Z"),
        "old worker {a} still running"
    );
}

#[test]
fn import_error_is_503_with_the_python_error_and_recovers_once_fixed() {
    let (_dir, app_dir) = app_dir("wsgiimp", &[]);
    let shim = Shim::start(&wsgi_settings("brokenapp", &app_dir, "debug = false\n"));
    let r = get(&shim, "/", "");
    assert_eq!(r.status, 503);
    assert!(
        !r.body_text().contains("Traceback"),
        "traceback shown without debug"
    );
    assert!(
        shim.wait_for_log(
            "ModuleNotFoundError: No module named 'brokenapp'",
            Duration::from_secs(2)
        ),
        "{}",
        shim.log()
    );
    // Fix it: the next request after the backoff gets a working worker.
    std::fs::write(
        app_dir.join("brokenapp.py"),
        "def application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'fixed']\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&shim, "/", "");
        if r.status == 200 {
            assert_eq!(r.body_text(), "fixed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered:\n{}",
            shim.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn import_error_with_debug_shows_the_traceback_and_innermost_frame() {
    let (_dir, app_dir) = app_dir(
        "wsgidbg",
        &[("badapp.py", "x = 1\nimport no_such_dependency\n")],
    );
    let shim = Shim::start(&wsgi_settings("badapp", &app_dir, "debug = true\n"));
    let r = get(&shim, "/", "");
    assert_eq!(r.status, 503);
    let page = r.body_text();
    assert!(
        page.contains("Traceback") && page.contains("no_such_dependency"),
        "{page}"
    );
    assert!(
        shim.wait_for_log("badapp.py\", line 2", Duration::from_secs(2)),
        "{}",
        shim.log()
    );
}

/// `GET /sleep?SECONDS` (kept connection or not), ABORT_REQUEST `after_ms`
/// later; the END_REQUEST must come within 0.3 s of the abort (its time
/// is returned with the connection and the response).
fn abort_a_sleep(
    shim: &Shim,
    seconds: &str,
    keep: bool,
    after_ms: u64,
) -> (Conn, Response, Instant) {
    let mut conn = shim.connect();
    send(
        &mut conn,
        &encode_request(1, &params("GET", "/sleep", seconds, 0), b"", keep),
    );
    thread::sleep(Duration::from_millis(after_ms));
    let mut abort = Vec::new();
    encode_record(&mut abort, ABORT_REQUEST, 1, &[]);
    send(&mut conn, &abort);
    let t0 = Instant::now();
    let response = read_response(&mut conn, 1).expect("END_REQUEST after ABORT_REQUEST");
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    (conn, response, t0)
}

#[test]
fn abort_lets_the_application_finish_and_keeps_the_worker() {
    let shim = probe_shim("");
    let before = worker_pid(&shim);
    let (_conn, response, _) = abort_a_sleep(&shim, "0.5", false, 100);
    assert_eq!(response.protocol_status, REQUEST_COMPLETE);
    assert_eq!(response.app_status, 1, "appStatus of an aborted request");
    assert!(!String::from_utf8_lossy(&response.stdout).contains("slept"));
    // The application finished in time: the same worker serves the next request.
    assert_eq!(worker_pid(&shim), before, "{}", shim.log());
}

/// Issue 13 item 9: an abort is answered at once even when the application
/// does not finish within DRAIN_LIMIT (it was: no END_REQUEST, the
/// connection closed after 2.2 s); the worker is then replaced and the kept
/// connection serves the next request.
#[test]
fn abort_of_a_request_that_runs_on_is_answered_at_once_and_the_connection_goes_on() {
    let shim = probe_shim("");
    let before = worker_pid(&shim);
    let (mut conn, response, t0) = abort_a_sleep(&shim, "30", true, 200);
    assert_eq!(
        (response.protocol_status, response.app_status),
        (REQUEST_COMPLETE, 1)
    );
    assert!(response.stdout.is_empty(), "{:?}", response.stdout);
    // The next request on the same connection: after DRAIN_LIMIT (2 s) at
    // most, with a new worker.
    let r = request_with_id(&mut conn, 2, &params("GET", "/hello", "", 0), b"", false);
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert_eq!(r.complete_cgi().status, 200, "{}", shim.log());
    assert!(
        shim.log()
            .contains("did not finish an abandoned request within 2.0s; worker replaced"),
        "{}",
        shim.log()
    );
    assert_ne!(worker_pid(&shim), before, "{}", shim.log());
}

#[test]
fn a_worker_that_dies_while_idle_is_replaced_without_a_502() {
    let shim = probe_shim("");
    let pid: i32 = worker_pid(&shim).parse().unwrap();
    // Our own grandchild, by pid.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Replaced within the idle tick, before any request asks for it: the
    // next request does not pay for the imports.
    assert!(
        shim.wait_for_log("while idle", Duration::from_secs(3)),
        "{}",
        shim.log()
    );
    let t0 = Instant::now();
    while shim.log().matches(" ready in ").count() < 2 && t0.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        shim.log().matches(" ready in ").count(),
        2,
        "a second worker became ready with no request:\n{}",
        shim.log()
    );
    let r = get(&shim, "/hello", "");
    assert_eq!(r.status, 200, "{}", shim.log());
    assert_ne!(worker_pid(&shim), pid.to_string());
}

#[test]
fn a_worker_that_died_just_before_a_request_is_replaced_for_it() {
    let shim = probe_shim("");
    // Two requests on one kept-alive connection: no idle tick between them
    // notices the death; the second request itself finds the worker gone.
    let mut conn = shim.connect();
    let first = request(&mut conn, &params("GET", "/environ", "", 0), b"", true).complete_cgi();
    let pid: i32 = pid_in(&first).parse().unwrap();
    // Our own grandchild, by pid; gone (a zombie at most) before we go on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        !st.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    }) && t0.elapsed() < Duration::from_secs(5)
    {
        thread::sleep(Duration::from_millis(5));
    }
    let second = request(&mut conn, &params("GET", "/environ", "", 0), b"", true).complete_cgi();
    assert_eq!(second.status, 200, "{}", shim.log());
    assert_ne!(pid_in(&second), pid.to_string());
    assert!(
        shim.log().contains("while idle") && !shim.log().contains("(502)"),
        "{}",
        shim.log()
    );
}

#[test]
fn the_worker_imports_the_application_before_the_first_request() {
    let dir = TempDir::new("wsgistart");
    let app_dir = dir.join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    let marker = dir.join("imported");
    std::fs::write(
        app_dir.join("startapp.py"),
        format!(
            "open({:?}, 'w').write('yes')\n\
             def application(environ, start_response):\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'started']\n",
            marker.display().to_string()
        ),
    )
    .unwrap();
    let shim = Shim::start(&wsgi_settings("startapp", &app_dir, ""));
    // No request yet: the import happens anyway.
    assert!(
        wait_for_file(&marker, Duration::from_secs(10)),
        "the application was not imported at start:\n{}",
        shim.log()
    );
    assert_eq!(get(&shim, "/", "").body_text(), "started");
}

#[test]
fn a_python_that_cannot_be_started_is_503_and_a_log_line() {
    let shim = Shim::start(
        "[app]\nkind = \"wsgi\"\nmodule = \"probe\"\npython = \"fcgi-shim-no-such-python\"\n",
    );
    let r = get(&shim, "/hello", "");
    assert_eq!(r.status, 503);
    assert!(
        shim.wait_for_log(
            "cannot start fcgi-shim-no-such-python",
            Duration::from_secs(2)
        ),
        "{}",
        shim.log()
    );
}

#[test]
fn an_application_slower_to_import_than_start_timeout_is_503() {
    let (_dir, app_dir) = app_dir(
        "wsgislow",
        &[(
            "slowapp.py",
            "import time\ntime.sleep(30)\napplication = None\n",
        )],
    );
    let shim = Shim::start(&wsgi_settings("slowapp", &app_dir, "start_timeout = 1\n"));
    let t0 = Instant::now();
    let r = get(&shim, "/", "");
    assert_eq!(r.status, 503);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(
        shim.wait_for_log(
            "did not start within 1.0s (start_timeout)",
            Duration::from_secs(2)
        ),
        "{}",
        shim.log()
    );
}

#[test]
fn a_fixed_script_name_replaces_the_web_servers() {
    let shim = probe_shim("script_name = \"/shop/\"\n");
    let env = get(&shim, "/environ", "").body_text();
    assert!(env.contains("\"SCRIPT_NAME\": \"/shop\""), "{env}");
    assert!(env.contains("\"PATH_INFO\": \"/environ\""), "{env}");
}

/// Issue 13 item 6: at `ulimit -n 8` the worker cannot be started (it was:
/// nothing answered and `accept failed` ten times a second): every request
/// gets a 503, and the log says why once.
#[test]
fn at_ulimit_n_8_every_request_gets_a_503_and_the_log_says_it_once() {
    let dir = TempDir::new("wsgi-nofile");
    let program = shim_after(&dir, "ulimit -n 8");
    let shim = Shim::launch(
        dir,
        Launch {
            settings: Some(wsgi_settings("probe", &probe_dir(), "")),
            program: Some(program),
            ..Launch::default()
        },
    );
    for _ in 0..4 {
        let r = get(&shim, "/hello", "");
        assert_eq!(r.status, 503, "{r:?}\n{}", shim.log());
    }
    thread::sleep(Duration::from_millis(1500));
    let log = shim.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("] error: ")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("Too many open files (os error 24)"),
        "{log}"
    );
}

/// Issue 13 item 6: an upload that cannot be spooled (no usable `$TMPDIR`)
/// gets a 503 and one log line; the application never takes the cut-short
/// body for a whole one (its worker is replaced), and the next request is
/// served.
#[test]
fn an_upload_that_cannot_be_spooled_gets_a_503_and_a_fresh_worker() {
    let dir = TempDir::new("wsgi-nospool");
    let missing = dir.join("missing").display().to_string();
    let shim = Shim::launch(
        dir,
        Launch {
            settings: Some(wsgi_settings("probe", &probe_dir(), "")),
            env: vec![("TMPDIR".into(), missing)],
            ..Launch::default()
        },
    );
    let before = worker_pid(&shim);
    let body = prng_bytes(5 * 1024 * 1024, 3);
    let mut conn = shim.connect();
    let (response, _) = exchange(
        &mut conn,
        encode_request(1, &params("POST", "/sleep", "1", body.len()), &body, false),
        1,
    );
    let r = response.expect("a response").complete_cgi();
    assert_eq!(r.status, 503, "{r:?}\n{}", shim.log());
    let log = shim.log();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("] error: ") || l.contains("] warn: "))
        .collect();
    assert_eq!(complaints.len(), 1, "{log}");
    assert!(
        complaints[0].contains("fastcgi: POST ")
            && complaints[0]
                .contains("cannot hold the request body: cannot create a temporary file in "),
        "{log}"
    );
    let after = worker_pid(&shim);
    assert_ne!(after, before, "{}", shim.log());
}

/// A WSGI authenticator: the role and credentials from environ decide.
const AUTH_APP: &str = r#"
import sys

def application(environ, start_response):
    seen = "%s/%s/%s/%r" % (
        environ.get("FCGI_ROLE"),
        environ.get("FCGI_APACHE_ROLE"),
        environ.get("REMOTE_USER"),
        environ["wsgi.input"].read(),
    )
    if environ.get("FCGI_APACHE_ROLE") == "AUTHENTICATOR" and environ.get("REMOTE_PASSWD") == "pw":
        print("allowed " + environ["REMOTE_USER"], file=sys.stderr, flush=True)
        start_response("200 OK", [("Variable-AUTH_METHOD", "wsgi check"), ("Variable-x_Seen", seen)])
        return [b""]
    print("refused " + environ.get("REMOTE_USER", ""), file=sys.stderr, flush=True)
    start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="w"'), ("Content-Type", "text/plain")])
    return [seen.encode()]
"#;

/// An AUTHORIZER request as mod_fcgid sends it: PARAMS, no FCGI_STDIN.
fn authorizer(shim: &Shim, user: &str, password: &str) -> CgiResponse {
    let mut p = params("GET", "/private/report.txt", "", 0);
    p.push(("FCGI_APACHE_ROLE".into(), "AUTHENTICATOR".into()));
    p.push(("REMOTE_USER".into(), user.into()));
    p.push(("REMOTE_PASSWD".into(), password.into()));
    let mut out = Vec::new();
    encode_record(&mut out, BEGIN_REQUEST, 1, &begin_body(AUTHORIZER, 0));
    encode_params(&mut out, 1, &p, MAX_CONTENT);
    let mut conn = shim.connect();
    send(&mut conn, &out);
    read_response(&mut conn, 1)
        .expect("a response to the AUTHORIZER request")
        .complete_cgi()
}

#[test]
fn authorizer_role_environ_status_and_variable_headers() {
    let (_dir, app) = app_dir("fcgi-shim-wsgi-auth", &[("authapp.py", AUTH_APP)]);
    let shim = Shim::start(&wsgi_settings("authapp", &app, ""));
    let r = authorizer(&shim, "bob", "pw");
    assert_eq!(r.status, 200, "{r:?}\n{}", shim.log());
    assert_eq!(r.header("Variable-AUTH_METHOD"), Some("wsgi check"));
    assert!(
        r.headers
            .iter()
            .any(|(n, v)| n == "Variable-x_Seen" && v == "AUTHORIZER/AUTHENTICATOR/bob/b''"),
        "the name as written, the role in environ, no body: {r:?}"
    );
    assert!(
        shim.wait_for_log("allowed bob", Duration::from_secs(5)),
        "{}",
        shim.log()
    );
    let r = authorizer(&shim, "bob", "nope");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("WWW-Authenticate"), Some("Basic realm=\"w\""));
    assert_eq!(r.body_text(), "AUTHORIZER/AUTHENTICATOR/bob/b''");
    assert!(
        shim.wait_for_log("refused bob", Duration::from_secs(5)),
        "{}",
        shim.log()
    );
}

/// An application that imports fine and imports its views on the first
/// request (as Django does): `views.py` is what a warm-up must reach.
const LAZY_APP: &str = "def application(environ, start_response):\n    \
     import views\n    \
     return views.page(environ, start_response)\n";
const GOOD_VIEWS: &str = "def page(environ, start_response):\n    \
     start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
     return [('warm=%s %s' % (environ.get('HTTP_X_FCGI_SHIM_WARMUP'), environ['PATH_INFO'])).encode()]\n";

#[test]
fn issue12_warmup_catches_a_syntax_error_in_a_lazily_imported_module() {
    let (_dir, app_dir) = app_dir(
        "wsgiwarm",
        &[("lazyapp.py", LAZY_APP), ("views.py", "def page(:\n")],
    );
    let shim = Shim::start(&wsgi_settings(
        "lazyapp",
        &app_dir,
        "warmup = [\"/\", \"/health?x=1\"]\n",
    ));
    // The import passes, the warm-up GET / gets the adapter's 500: no
    // visitor meets the broken worker.
    let r = get(&shim, "/", "");
    assert_eq!(r.status, 503, "{}\n{}", r.body_text(), shim.log());
    assert!(
        shim.wait_for_log(
            "lazyapp:application: warm-up GET / answered 500 Internal Server Error: \
             <!DOCTYPE html> | <html><head><title>500 Internal Server Error</title>",
            Duration::from_secs(2)
        ),
        "{}",
        shim.log()
    );
    assert!(shim.log().contains("SyntaxError"), "{}", shim.log());
    // Fixed: the next request after the backoff gets a worker that passed
    // both warm-up requests (the application saw the marker header).
    std::fs::write(app_dir.join("views.py"), GOOD_VIEWS).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&shim, "/page", "");
        if r.status == 200 {
            assert_eq!(r.body_text(), "warm=None /page");
            break;
        }
        assert!(Instant::now() < deadline, "{}", shim.log());
        thread::sleep(Duration::from_millis(200));
    }
    assert!(shim.log().contains("ready in"), "{}", shim.log());
}

#[test]
fn issue12_warmup_requests_are_marked_gets_of_the_configured_paths() {
    // The application records what it was sent before any visitor came.
    let recorder = "import json, os\nseen = []\n\
        def application(environ, start_response):\n    \
        if environ.get('HTTP_X_FCGI_SHIM_WARMUP'):\n        \
        seen.append([environ[k] for k in ('REQUEST_METHOD', 'SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'HTTP_HOST', 'REMOTE_ADDR')])\n    \
        start_response('200 OK', [('Content-Type', 'application/json')])\n    \
        return [json.dumps(seen).encode()]\n";
    let (_dir, app_dir) = app_dir("wsgiwarm2", &[("recorder.py", recorder)]);
    let shim = Shim::start(&wsgi_settings(
        "recorder",
        &app_dir,
        "warmup = [\"/\", \"/a%20b?x=1\"]\nscript_name = \"/blog\"\n",
    ));
    let r = get(&shim, "/seen", "");
    assert_eq!(r.status, 200, "{}", shim.log());
    assert_eq!(
        r.body_text(),
        "[[\"GET\", \"/blog\", \"/\", \"\", \"localhost\", \"127.0.0.1\"], \
         [\"GET\", \"/blog\", \"/a b\", \"x=1\", \"localhost\", \"127.0.0.1\"]]"
    );
}

#[test]
fn issue12_a_missing_interpreter_is_retried_until_it_appears() {
    let dir = TempDir::new("wsgipy");
    let venv_bin = dir.join("venv/bin");
    let python_link = venv_bin.join("python");
    let settings = format!(
        "[app]\nkind = \"wsgi\"\nmodule = \"probe\"\npython = \"{}\"\npython_path = [\"{}\"]\n\
         [log]\nlevel = \"info\"\n",
        python_link.display(),
        probe_dir().display()
    );
    let shim = Shim::start(&settings);
    let r = get(&shim, "/hello", "");
    assert_eq!(r.status, 503, "{}", shim.log());
    assert!(
        shim.wait_for_log("cannot start", Duration::from_secs(2)),
        "{}",
        shim.log()
    );
    // The same cause is said once, not per attempt or request.
    for _ in 0..3 {
        assert_eq!(get(&shim, "/hello", "").status, 503);
    }
    assert_eq!(
        shim.log().matches("cannot start").count(),
        1,
        "{}",
        shim.log()
    );
    // The virtualenv appears: no touch, no new settings.
    std::fs::create_dir_all(&venv_bin).unwrap();
    let real = std::process::Command::new(python())
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let real = String::from_utf8(real.stdout).unwrap();
    std::os::unix::fs::symlink(real.trim(), &python_link).unwrap();
    let appeared = Instant::now();
    loop {
        let r = get(&shim, "/hello", "");
        if r.status == 200 {
            assert_eq!(r.body_text(), "hello from wsgi");
            break;
        }
        assert!(
            appeared.elapsed() < Duration::from_secs(15),
            "still {} after 15 s\n{}",
            r.status,
            shim.log()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn issue12_a_warmup_without_an_answer_within_start_timeout_is_a_failed_start() {
    let slow = "import time\n\
        def application(environ, start_response):\n    \
        if environ.get('HTTP_X_FCGI_SHIM_WARMUP'):\n        \
        time.sleep(30)\n    \
        start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
        return [b'ok']\n";
    let (_dir, app_dir) = app_dir("wsgiwarm3", &[("slowwarm.py", slow)]);
    let shim = Shim::start(&wsgi_settings(
        "slowwarm",
        &app_dir,
        "warmup = \"/slow\"\nstart_timeout = 1\n",
    ));
    let started = Instant::now();
    let r = get(&shim, "/", "");
    assert_eq!(r.status, 503, "{}", shim.log());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        shim.wait_for_log(
            "did not start within 1.0s (start_timeout) (during warm-up GET /slow); killed",
            Duration::from_secs(2)
        ),
        "{}",
        shim.log()
    );
}

/// Bodies for the tests of big bodies: every way of reading wsgi.input, and
/// responses in chunks of any size (issue 14: 1 MiB pipes, 256 KiB frames
/// to the worker, a response chunk as one frame passed on in parts).
const BIG_BODIES_APP: &str = r#"
import os, time

PATTERN = bytes(range(256))


def application(environ, start_response):
    path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
    inp = environ["wsgi.input"]
    if path == "/echo":
        mode = query
        if mode == "all":
            body = inp.read()
        elif mode.startswith("n:"):
            size, parts = int(mode[2:]), []
            while True:
                chunk = inp.read(size)
                assert len(chunk) <= size
                if not chunk:
                    break
                parts.append(chunk)
            body = b"".join(parts)
        elif mode == "read1":
            parts = []
            while True:
                chunk = inp.read1(100000)
                if not chunk:
                    break
                parts.append(chunk)
            body = b"".join(parts)
        elif mode == "lines":
            body = b"".join(inp)
        elif mode == "mixed":
            parts = [inp.read(1), inp.readline(70000), inp.read1(5), inp.read(300001)]
            while True:
                line = inp.readline(123457)
                if not line:
                    break
                parts.append(line)
            body = b"".join(parts)
        assert inp.read() == b"" and inp.read(5) == b"" and inp.readline() == b""
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/out":
        # total:chunk:list|gen
        total, chunk, how = query.split(":")
        total, chunk = int(total), int(chunk)
        data = PATTERN * (total // 256 + 1)
        pieces = [data[i:min(i + chunk, total)] for i in range(0, total, chunk)]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return pieces if how == "list" else iter(pieces)
    if path == "/huge":
        # One chunk far larger than every buffer on the way, then a mark
        # once it was all written.
        mark = query

        def gen():
            yield PATTERN * (48 << 12)
            open(mark, "w").close()
            yield b"end"

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return gen()
    if path == "/dies-mid-chunk":
        # The worker dies while it writes an 8 MiB chunk nobody reads yet.
        import threading
        threading.Thread(target=lambda: (time.sleep(0.5), os._exit(3))).start()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [PATTERN * (8 << 12)]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such path"]
"#;

fn big_bodies_shim() -> (TempDir, Shim) {
    let (dir, app) = app_dir("wsgi-bigbodies", &[("bigbodies.py", BIG_BODIES_APP)]);
    let shim = Shim::start(&wsgi_settings("bigbodies", &app, ""));
    (dir, shim)
}

fn post_query(shim: &Shim, path: &str, query: &str, body: &[u8]) -> CgiResponse {
    let mut conn = shim.connect();
    request(
        &mut conn,
        &params("POST", path, query, body.len()),
        body,
        false,
    )
    .complete_cgi()
}

fn is_pattern(body: &[u8]) -> bool {
    body.iter().enumerate().all(|(i, &b)| b == i as u8)
}

#[test]
fn bodies_across_pipe_frame_and_record_boundaries_arrive_whole() {
    let (_dir, shim) = big_bodies_shim();
    // Around a FastCGI record (65535), the old frame (65536), a frame to the
    // worker (256 KiB), the pipe and the in-memory spool (1 MiB), and past.
    let sizes = [
        1,
        65535,
        65536,
        65537,
        262143,
        262144,
        262149,
        1 << 20,
        (1 << 20) + 5,
        (3 << 20) + 3,
    ];
    for (k, &size) in sizes.iter().enumerate() {
        let body = prng_bytes(size, 100 + k as u64);
        let modes: &[&str] = if size > (1 << 20) {
            &["all", "n:65536", "mixed"]
        } else {
            &[
                "all", "n:1000", "n:65536", "n:300000", "read1", "lines", "mixed",
            ]
        };
        for mode in modes {
            let r = post_query(&shim, "/echo", mode, &body);
            assert_eq!(r.status, 200, "{size} {mode}: {}", shim.log());
            assert_eq!(r.body.len(), size, "{size} {mode}");
            assert!(
                r.body == body,
                "{size} bytes read by {mode}: the echo differs"
            );
        }
    }
    // Responses in chunks of every size, as a list and from a generator.
    for chunk in [1000, 65535, 65536, 65537, 300000, (1 << 20) + 1, 3 << 20] {
        for how in ["list", "gen"] {
            let total = (5 << 19) + 7;
            let r = get(&shim, "/out", &format!("{total}:{chunk}:{how}"));
            assert_eq!(r.status, 200, "{chunk} {how}: {}", shim.log());
            assert_eq!(r.body.len(), total, "{chunk} {how}");
            assert!(
                is_pattern(&r.body),
                "chunks of {chunk} ({how}): the body differs"
            );
        }
    }
    assert_eq!(get(&shim, "/out", "0:10:list").body.len(), 0);
}

#[test]
fn a_huge_chunk_streams_in_parts_and_the_worker_waits_for_the_reader() {
    let (dir, shim) = big_bodies_shim();
    let mark = dir.join("written");
    let mut conn = shim.connect();
    send_get(&mut conn, "/huge", mark.to_str().unwrap());
    // The first MiB of the 48 MiB chunk arrives before the worker could
    // write all of it (the frame is passed on in parts) ...
    let mut body: Vec<u8> = Vec::new();
    let mut head_done = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while body.len() < 1 << 20 {
        assert!(Instant::now() < deadline, "the first MiB did not arrive");
        let rec = expect_record(&mut conn, "the response");
        assert_eq!(rec.rtype, 6, "{rec:?}");
        body.extend_from_slice(&rec.content);
        if !head_done && let Some(at) = body.windows(4).position(|w| w == b"\r\n\r\n") {
            body.drain(..at + 4);
            head_done = true;
        }
    }
    // ... and while we do not read, it stays blocked: nothing on the way
    // holds the whole chunk.
    thread::sleep(Duration::from_millis(700));
    assert!(
        !mark.exists(),
        "the worker wrote 48 MiB while the web server read 1 MiB"
    );
    let rest = read_response(&mut conn, 1).unwrap();
    body.extend_from_slice(&rest.stdout);
    assert_eq!(body.len(), (48 << 20) + 3);
    assert!(is_pattern(&body[..48 << 20]), "the huge chunk differs");
    assert_eq!(&body[48 << 20..], b"end");
    assert!(mark.exists());
}

/// A worker that dies in the middle of a big chunk, which goes from its
/// pipe to the web server by splice: the response is cut short (the
/// connection closes, or ends the request, before the chunk's end), the log
/// says so, and the next request is served by a fresh worker.
#[test]
fn a_worker_dying_in_the_middle_of_a_spliced_chunk_cuts_the_response_short() {
    let (_dir, shim) = big_bodies_shim();
    let mut conn = shim.connect();
    send_get(&mut conn, "/dies-mid-chunk", "");
    // Read a little, then nothing until the worker is dead.
    let first = expect_record(&mut conn, "the response");
    assert_eq!(first.rtype, 6, "{first:?}");
    assert!(
        shim.wait_for_log("cut short", Duration::from_secs(10)),
        "{}",
        shim.log()
    );
    let mut got = first.content.len();
    let mut ended = false;
    loop {
        match read_record(&mut conn) {
            Ok(Some(rec)) if rec.rtype == 6 => got += rec.content.len(),
            Ok(Some(rec)) if rec.rtype == 3 => {
                ended = true;
                break;
            }
            Ok(Some(rec)) => panic!("unexpected {rec:?}"),
            // Closed (the record the splice had open could not be finished).
            Ok(None) | Err(_) => break,
        }
    }
    assert!(got < 8 << 20, "{got} bytes: the whole chunk arrived");
    let log = shim.log();
    assert!(
        ended || log.contains("the response ended inside an FCGI_STDOUT record"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("/dies-mid-chunk") && l.contains("(response cut short)")),
        "{log}"
    );
    let r = get(&shim, "/out", "1000:100:list");
    assert_eq!(r.status, 200, "{}", shim.log());
    assert!(is_pattern(&r.body));
}

/// Issue 13 item 9 while a big chunk is being spliced: the abort is
/// answered (the record the splice had open is completed first, so the
/// stream stays whole), and the kept connection serves the next request.
#[test]
fn an_abort_in_the_middle_of_a_spliced_chunk_is_answered_and_the_connection_goes_on() {
    let (dir, shim) = big_bodies_shim();
    let mark = dir.join("written");
    let mut conn = shim.connect();
    send(
        &mut conn,
        &encode_request(
            1,
            &params("GET", "/huge", mark.to_str().unwrap(), 0),
            b"",
            true,
        ),
    );
    let mut got = 0;
    while got < 1 << 20 {
        let rec = expect_record(&mut conn, "the response");
        assert_eq!(rec.rtype, STDOUT, "{rec:?}");
        got += rec.content.len();
    }
    let mut abort = Vec::new();
    encode_record(&mut abort, ABORT_REQUEST, 1, &[]);
    send(&mut conn, &abort);
    let t0 = Instant::now();
    let response = read_response(&mut conn, 1)
        .unwrap_or_else(|e| panic!("no END_REQUEST after ABORT_REQUEST: {e}\n{}", shim.log()));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(
        (response.protocol_status, response.app_status),
        (REQUEST_COMPLETE, 1),
        "{}",
        shim.log()
    );
    assert!(got + response.stdout.len() < (48 << 20) + 3);
    let r = request_with_id(
        &mut conn,
        2,
        &params("GET", "/out", "1000:100:list", 0),
        b"",
        false,
    );
    assert_eq!(
        (r.protocol_status, r.app_status),
        (REQUEST_COMPLETE, 0),
        "{}",
        shim.log()
    );
    let r = r.complete_cgi();
    assert_eq!(r.status, 200, "{}", shim.log());
    assert!(is_pattern(&r.body));
    assert!(!shim.log().contains("closing connection"), "{}", shim.log());
}

/// The worker's pipes grow to 1 MiB while a big body crosses (a POST that
/// says so, a response that fills a default pipe) and are given back their
/// default 64 KiB after the request: the kernel counts every pipe's size
/// against its user's quota, and a shared host has many workers.
#[test]
fn pipes_grow_for_big_bodies_and_shrink_after() {
    let (_dir, app) = app_dir(
        "pipe-sizes",
        &[(
            "sizes.py",
            "import fcntl, __main__\n\
             def sizes():\n\
             \x20   return ('%d %d' % (fcntl.fcntl(__main__.IN_FD, 1032), fcntl.fcntl(__main__.OUT_FD, 1032))).encode()\n\
             def application(environ, start_response):\n\
             \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
             \x20   if environ['PATH_INFO'] == '/big':\n\
             \x20       return [b'x' * (1 << 20)]\n\
             \x20   n = len(environ['wsgi.input'].read())\n\
             \x20   return [sizes() + b' %d' % n]\n",
        )],
    );
    let shim = Shim::start(&wsgi_settings("sizes", &app, ""));
    let body_of = CgiResponse::body_text;
    assert_eq!(
        body_of(&get(&shim, "/sizes", "")),
        "65536 65536 0",
        "{}",
        shim.log()
    );
    let posted = post(&shim, "/sizes", &vec![b'p'; 300 * 1024]);
    assert_eq!(body_of(&posted), "1048576 1048576 307200", "{}", shim.log());
    assert_eq!(body_of(&get(&shim, "/sizes", "")), "65536 65536 0");
    let big = get(&shim, "/big", "");
    assert_eq!(big.body.len(), 1 << 20);
    assert_eq!(body_of(&get(&shim, "/sizes", "")), "65536 65536 0");
    // A small POST leaves them as they are.
    assert_eq!(body_of(&post(&shim, "/sizes", b"abc")), "65536 65536 3");
}

/// The shim's private memory, as the kernel counts it.
fn private_dirty_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Private_Dirty:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What a burst of big uploads took is the system's again once no request
/// has come for a moment: a shim does not stay megabytes bigger for good.
#[test]
fn memory_a_big_upload_took_is_given_back_when_idle() {
    let (_dir, app) = app_dir(
        "memory",
        &[(
            "count.py",
            "def application(environ, start_response):\n\
             \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
             \x20   return [b'%d' % len(environ['wsgi.input'].read())]\n",
        )],
    );
    let shim = Shim::start(&wsgi_settings("count", &app, ""));
    assert_eq!(get(&shim, "/", "").body_text(), "0", "{}", shim.log());
    thread::sleep(Duration::from_millis(1500));
    let before = private_dirty_kib(shim.pid());
    let body = vec![b'u'; 3 << 20];
    for _ in 0..3 {
        assert_eq!(
            post(&shim, "/", &body).body_text(),
            "3145728",
            "{}",
            shim.log()
        );
    }
    let busy = private_dirty_kib(shim.pid());
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let now = private_dirty_kib(shim.pid());
        if now <= before + 256 || Instant::now() >= deadline {
            break now;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        after <= before + 256,
        "private dirty: {before} KiB idle, {busy} KiB after the uploads, {after} KiB 5 s later"
    );
}

//! The server-program kinds (issue 16) against the real binary, spoken to by
//! the test FastCGI client (`tests/common/`): `http` with a python3
//! `http.server` application (tests/server_apps/http_app.py) on `{port}`
//! and `{socket}`, and node when installed; `fastcgi` with php-cgi and flup;
//! `scgi` with flup (the test venv). Each test checks what a visitor or the
//! log would show: status, headers, bytes, pids, and that no process of
//! the application is left after the shim stops.
//!
//! Needs python3; php-cgi, node and flup tests are skipped (said on stderr)
//! when missing. `$FCGI_SHIM_TEST_PYTHON` names the venv python with flup.

mod common;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn apps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server_apps")
}

fn settings(kind: &str, command: &[&str], extra: &str) -> String {
    let argv: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[app]\nkind = \"{kind}\"\ncommand = [{}]\n{extra}\n[log]\nlevel = \"info\"\n",
        argv.join(", ")
    )
}

fn http_app(extra: &str) -> Shim {
    let app = apps().join("http_app.py");
    Shim::start(&settings(
        "http",
        &["/usr/bin/python3", app.to_str().unwrap()],
        extra,
    ))
}

/// Params of a visitor's request for `/site/{path}?{query}` to `/site/mysite.fcgi`.
fn visit(method: &str, path: &str, query: &str, body_len: usize) -> Vec<(String, String)> {
    let mut p = site_params(method, path, query, body_len);
    for (k, v) in p.iter_mut() {
        match k.as_str() {
            "SCRIPT_NAME" => *v = "/site/mysite.fcgi".into(),
            "REQUEST_URI" if query.is_empty() => *v = format!("/site{path}"),
            "REQUEST_URI" => *v = format!("/site{path}?{query}"),
            _ => {}
        }
    }
    p
}

fn send(shim: &Shim, params: &[(String, String)], body: &[u8]) -> CgiResponse {
    let mut conn = shim.connect();
    request(&mut conn, params, body, false).complete_cgi()
}

fn get(shim: &Shim, path: &str) -> CgiResponse {
    send(shim, &visit("GET", path, "", 0), b"")
}

/// GET /env until it answers 200 (a respawn waits out the backoff).
fn until_200(shim: &Shim, limit: Duration) -> CgiResponse {
    let deadline = Instant::now() + limit;
    loop {
        let r = get(shim, "/env");
        if r.status == 200 {
            return r;
        }
        assert!(Instant::now() < deadline, "no 200: {}", shim.log());
        thread::sleep(Duration::from_millis(100));
    }
}

/// `name=value` lines of an /env answer.
fn field(r: &CgiResponse, name: &str) -> String {
    let text = r.body_text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_string()
}

/// Stop the shim; nothing started under `dir` (the app's command line names it) may be left.
/// This test's processes whose command line contains `needle`: those that
/// work in `dir`, the shim's settings directory (the application's default
/// workdir), not a test's running beside it with the same program.
fn app_processes(dir: &Path, needle: &str) -> Vec<u32> {
    processes_matching(needle)
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

fn stop_leaving_nothing(mut shim: Shim, needle: &str) {
    let dir = shim.dir().path().to_path_buf();
    shim.terminate();
    assert!(
        shim.wait_exit(Duration::from_secs(10)).is_some(),
        "shim did not exit"
    );
    let left = wait_until_gone(Duration::from_secs(5), || app_processes(&dir, needle));
    assert!(left.is_empty(), "left behind: {left:?}\n{}", shim.log());
}

fn sha256_hex(data: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn http_requests_go_through_as_the_visitor_sent_them() {
    let shim = http_app("");
    let r = send(&shim, &visit("GET", "/env", "x=1&y=%20", 0), b"");
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), shim.log());
    assert_eq!(field(&r, "method"), "GET");
    // The site's prefix is taken off (a server mounted there) and said in X-Forwarded-Prefix.
    assert_eq!(field(&r, "target"), "/env?x=1&y=%20");
    assert_eq!(field(&r, "h:host"), "localhost");
    assert_eq!(field(&r, "h:x-forwarded-for"), "127.0.0.1");
    assert_eq!(field(&r, "h:x-forwarded-proto"), "http");
    assert_eq!(field(&r, "h:x-forwarded-prefix"), "/site");
    // A redirect to the server's /env is one to the site's.
    let r = get(&shim, "/redirect");
    assert_eq!((r.status, r.header("Location")), (302, Some("/site/env")));
    // 1 MiB body, byte for byte.
    let blob: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let r = send(&shim, &visit("POST", "/env", "", blob.len()), &blob);
    assert_eq!(r.status, 200, "{}", shim.log());
    assert_eq!(field(&r, "length"), blob.len().to_string());
    assert_eq!(field(&r, "sha256"), sha256_hex(&blob));
    // Two Set-Cookie headers stay two.
    let r = get(&shim, "/cookies");
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    // A chunked answer arrives whole, without hop-by-hop headers.
    let r = get(&shim, "/chunked");
    assert_eq!(r.body_text(), "chunk0\nchunk1\nchunk2\n");
    assert!(r.header("Transfer-Encoding").is_none(), "{:?}", r.headers);
    // The connection to the app is kept: one pid, and the log says ready once.
    let first = field(&get(&shim, "/env"), "pid");
    assert_eq!(field(&get(&shim, "/env"), "pid"), first);
    assert_eq!(shim.log().matches("ready in").count(), 1, "{}", shim.log());
    stop_leaving_nothing(shim, "http_app.py");
}

#[test]
fn http_on_a_unix_socket() {
    let app = apps().join("http_app.py");
    let shim = Shim::start(&settings(
        "http",
        &["/usr/bin/python3", app.to_str().unwrap(), "{socket}"],
        "",
    ));
    let r = get(&shim, "/env");
    assert_eq!(r.status, 200, "{}", shim.log());
    assert!(shim.log().contains(".sock)"), "{}", shim.log());
    stop_leaving_nothing(shim, "http_app.py");
}

/// A shim killed with SIGKILL cannot remove its socket directory
/// (`/tmp/fcgi-shim-<pid>-<n>`); the next shim of the same user removes it,
/// and never one of a process that runs.
#[test]
fn http_socket_directories_of_killed_shims_are_removed_by_the_next() {
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    };
    let stale = PathBuf::from(format!("/tmp/fcgi-shim-{dead}-0"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("app-1.sock"), "").unwrap();
    let running = PathBuf::from(format!("/tmp/fcgi-shim-{}-99", std::process::id()));
    std::fs::create_dir_all(&running).unwrap();
    let app = apps().join("http_app.py");
    let on_socket = settings(
        "http",
        &["/usr/bin/python3", app.to_str().unwrap(), "{socket}"],
        "shared = false\n",
    );

    let mut first = Shim::start(&on_socket);
    assert_eq!(get(&first, "/env").status, 200, "{}", first.log());
    let first_dir = PathBuf::from(format!("/tmp/fcgi-shim-{}-0", first.pid()));
    assert!(first_dir.is_dir(), "{}", first.log());
    assert!(!stale.exists(), "a dead shim's directory is left");
    assert!(
        running.is_dir(),
        "a running process's directory was removed"
    );
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status();
    assert!(first.wait_exit(Duration::from_secs(5)).is_some());
    assert!(first_dir.is_dir(), "SIGKILL leaves it");
    let left = wait_until_gone(Duration::from_secs(5), || {
        app_processes(first.dir().path(), "http_app.py")
    });
    assert!(left.is_empty(), "left behind: {left:?}");

    let second = Shim::start(&on_socket);
    assert_eq!(get(&second, "/env").status, 200, "{}", second.log());
    assert!(!first_dir.exists(), "{}", second.log());
    assert!(running.is_dir());
    std::fs::remove_dir_all(&running).unwrap();
    stop_leaving_nothing(second, "http_app.py");
}

#[test]
fn http_streams_the_answer_as_it_comes() {
    let shim = http_app("");
    let mut conn = shim.connect();
    let started = Instant::now();
    let bytes = encode_request(1, &visit("GET", "/chunked", "", 0), b"", false);
    use std::io::Write;
    conn.write_all(&bytes).unwrap();
    let mut arrivals = Vec::new();
    while let Some(record) = read_record(&mut conn).unwrap() {
        if record.rtype == STDOUT && String::from_utf8_lossy(&record.content).contains("chunk") {
            arrivals.push(started.elapsed());
        }
        if record.rtype == END_REQUEST {
            break;
        }
    }
    assert!(arrivals.len() >= 2, "{arrivals:?}");
    assert!(
        arrivals[arrivals.len() - 1] - arrivals[0] >= Duration::from_millis(400),
        "not streamed: {arrivals:?}"
    );
}

#[test]
fn http_failures_say_why() {
    let shim = http_app("request_timeout = 1\n");
    let r = get(&shim, "/garbage");
    assert_eq!(r.status, 502);
    assert!(
        shim.wait_for_log("not an HTTP/1 response", Duration::from_secs(2)),
        "{}",
        shim.log()
    );
    // Still served after garbage.
    let pid = field(&get(&shim, "/env"), "pid");
    let r = get(&shim, "/sleep");
    assert_eq!(r.status, 504, "{}", shim.log());
    assert!(shim.log().contains("(request_timeout)"), "{}", shim.log());
    let after = field(&get(&shim, "/env"), "pid");
    assert_ne!(after, pid, "a timed-out server is replaced");
    let r = get(&shim, "/die");
    assert_eq!(r.status, 502);
    assert!(
        shim.wait_for_log("app: dying on purpose", Duration::from_secs(2)),
        "{}",
        shim.log()
    );
    assert!(
        shim.log().contains("exited with status 3"),
        "{}",
        shim.log()
    );
    // Respawned (after the backoff) for the next request.
    let r = until_200(&shim, Duration::from_secs(5));
    assert_ne!(field(&r, "pid"), after);
    stop_leaving_nothing(shim, "http_app.py");
}

/// A new executable (renamed over the started one) re-execs the shim: the
/// server the old image validated is not handed over (it is ours until the
/// exec), and the new image serves with a server of its own; no server of
/// either image is left behind.
#[test]
fn http_server_survives_an_executable_upgrade_with_nothing_left() {
    let dir = TempDir::new("srv-upgrade");
    let program = dir.join("mysite.fcgi");
    std::fs::copy(shim_bin(), &program).expect("copy binary");
    let app = apps().join("http_app.py");
    let shim = Shim::launch(
        dir,
        Launch {
            settings: Some(settings(
                "http",
                &["/usr/bin/python3", app.to_str().unwrap()],
                "",
            )),
            program: Some(program.clone()),
            ..Launch::default()
        },
    );
    let before = field(&until_200(&shim, Duration::from_secs(10)), "pid");
    let fresh = shim.dir().join("fresh.tmp");
    std::fs::copy(shim_bin(), &fresh).expect("copy binary");
    std::fs::rename(&fresh, &program).expect("rename binary");
    // Served throughout; then by a server of the new image.
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let r = get(&shim, "/env");
        assert_eq!(r.status, 200, "{}", shim.log());
        let pid = field(&r, "pid");
        let exe = std::fs::read_link(format!("/proc/{}/exe", shim.pid())).expect("exe");
        if pid != before && exe == program {
            break pid;
        }
        assert!(Instant::now() < deadline, "no new server: {}", shim.log());
        thread::sleep(Duration::from_millis(100));
    };
    // Only the new image's server is left running.
    let servers = wait_until_gone(Duration::from_secs(5), || {
        app_processes(shim.dir().path(), "http_app.py")
            .into_iter()
            .filter(|p| p.to_string() != after)
            .collect()
    });
    assert!(servers.is_empty(), "left: {servers:?}\n{}", shim.log());
    let running = app_processes(shim.dir().path(), "http_app.py");
    assert!(
        running.iter().any(|p| p.to_string() == after),
        "the serving server is not found by its workdir: {running:?}"
    );
    stop_leaving_nothing(shim, "http_app.py");
}

#[test]
fn http_killed_app_is_respawned_and_recycled() {
    let shim = http_app("max_requests = 3\n");
    let pid = field(&get(&shim, "/env"), "pid");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    thread::sleep(Duration::from_millis(200));
    // The very next request is served, by a new process.
    let r = get(&shim, "/env");
    assert_eq!(r.status, 200, "{}", shim.log());
    let new = field(&r, "pid");
    assert_ne!(new, pid);
    assert!(
        shim.log().contains("was killed by signal 9"),
        "{}",
        shim.log()
    );
    let pids: Vec<String> = (0..4).map(|_| field(&get(&shim, "/env"), "pid")).collect();
    assert!(pids.windows(2).any(|w| w[0] != w[1]), "{pids:?}");
    assert!(shim.log().contains("(max_requests)"), "{}", shim.log());
    stop_leaving_nothing(shim, "http_app.py");
}

#[test]
fn http_ready_path_must_answer_2xx() {
    let dir = TempDir::new("readypath");
    let flag = dir.join("ready");
    let app = apps().join("http_app.py");
    let shim = Shim::start(&settings(
        "http",
        &["/usr/bin/python3", app.to_str().unwrap()],
        &format!(
            "ready_path = \"/health\"\nstart_timeout = 1\nenv = {{ READY_FILE = \"{}\" }}\n",
            flag.display()
        ),
    ));
    let r = get(&shim, "/env");
    assert_eq!(r.status, 503, "{}", shim.log());
    assert!(
        shim.log().contains("GET /health did not answer 2xx"),
        "{}",
        shim.log()
    );
    std::fs::write(&flag, "").unwrap();
    until_200(&shim, Duration::from_secs(15));
    stop_leaving_nothing(shim, "http_app.py");
}

/// Moves mtime forward so the change shows on coarse timestamps.
fn touch_forward(path: &Path, secs: u64) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn http_touch_reloads_only_a_version_that_becomes_ready() {
    let app = apps().join("http_app.py");
    let version = |greeting: &str, program: &str| {
        settings(
            "http",
            &[program, app.to_str().unwrap()],
            &format!("env = {{ GREETING = \"{greeting}\" }}\nstart_timeout = 3\n"),
        )
    };
    let shim = Shim::start(&version("one", "/usr/bin/python3"));
    let first = get(&shim, "/env");
    assert_eq!(field(&first, "greeting"), "one", "{}", shim.log());
    let file = shim.dir().join("testsite.toml");
    std::fs::write(&file, version("two", "/usr/bin/python3")).unwrap();
    touch_forward(&file, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let r = get(&shim, "/env");
        assert_eq!(r.status, 200, "{}", shim.log());
        if field(&r, "greeting") == "two" {
            break r;
        }
        assert!(Instant::now() < deadline, "not reloaded: {}", shim.log());
        thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(field(&second, "pid"), field(&first, "pid"));
    // A version whose server never becomes ready is refused; "two" keeps serving.
    std::fs::write(&file, version("three", "/bin/false")).unwrap();
    touch_forward(&file, 2);
    assert!(
        shim.wait_for_log(
            "still serving the previous version",
            Duration::from_secs(20)
        ),
        "{}",
        shim.log()
    );
    let r = get(&shim, "/env");
    assert_eq!(field(&r, "greeting"), "two", "{}", shim.log());
    stop_leaving_nothing(shim, "http_app.py");
}

#[test]
fn http_node_when_installed() {
    if !Path::new("/usr/bin/node").exists() {
        eprintln!("skipped: no /usr/bin/node");
        return;
    }
    let dir = TempDir::new("node");
    let app = dir.write(
        "server.js",
        "require('http').createServer((q, s) => { s.setHeader('Set-Cookie', ['a=1', 'b=2']); \
         s.end('NODE ' + q.method + ' ' + q.url + ' ' + process.pid); }).listen(+process.env.PORT, '127.0.0.1');\n",
    );
    let shim = Shim::start(&settings(
        "http",
        &["/usr/bin/node", app.to_str().unwrap()],
        "",
    ));
    let r = send(&shim, &visit("GET", "/hello", "x=1", 0), b"");
    assert_eq!(r.status, 200, "{}", shim.log());
    assert!(
        r.body_text().starts_with("NODE GET /hello?x=1"),
        "{}",
        r.body_text()
    );
    stop_leaving_nothing(shim, app.to_str().unwrap());
}

#[test]
fn fastcgi_php_cgi_with_params_and_its_own_request_limit() {
    if !Path::new("/usr/bin/php-cgi").exists() {
        eprintln!("skipped: no /usr/bin/php-cgi");
        return;
    }
    let dir = TempDir::new("php");
    let index = dir.write(
        "index.php",
        "<?php header('X-Pid: ' . getmypid()); echo 'PHP ', $_SERVER['REQUEST_METHOD'], ' ', \
         $_SERVER['REQUEST_URI'], ' ', $_POST['name'] ?? '-';\n",
    );
    let shim = Shim::start(&settings(
        "fastcgi",
        &["/usr/bin/php-cgi"],
        &format!(
            "params = {{ SCRIPT_FILENAME = \"{}\" }}\nenv = {{ PHP_FCGI_MAX_REQUESTS = \"2\" }}\n",
            index.display()
        ),
    ));
    // Apache's PATH_TRANSLATED names a file for PATH_INFO that is not there.
    let mut params = visit("GET", "/x.php", "y=1", 0);
    params.push(("PATH_TRANSLATED".into(), "/nonexistent/x.php".into()));
    let r = send(&shim, &params, b"");
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), shim.log());
    assert_eq!(r.body_text(), "PHP GET /site/x.php?y=1 -");
    let form = b"name=world";
    let mut params = visit("POST", "/form", "", form.len());
    for (k, v) in params.iter_mut() {
        if k == "CONTENT_TYPE" {
            *v = "application/x-www-form-urlencoded".into();
        }
    }
    let r = send(&shim, &params, form);
    assert_eq!(r.body_text(), "PHP POST /site/form world", "{}", shim.log());
    // PHP_FCGI_MAX_REQUESTS = 2: every request succeeds, in more than one process.
    let mut pids = Vec::new();
    for _ in 0..5 {
        let r = get(&shim, "/again");
        assert_eq!(r.status, 200, "{}", shim.log());
        pids.push(r.header("X-Pid").unwrap_or("").to_string());
    }
    pids.dedup();
    assert!(pids.len() >= 2, "{pids:?}");
    stop_leaving_nothing(shim, "php-cgi");
}

#[test]
fn scgi_and_fastcgi_with_flup() {
    let python = std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_flup = std::process::Command::new(&python)
        .args(["-c", "import flup.server.scgi"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_flup {
        eprintln!("skipped: {python} has no flup");
        return;
    }
    let app = apps().join("scgi_app.py");
    let shim = Shim::start(&settings(
        "scgi",
        &[&python, app.to_str().unwrap(), "{socket}"],
        "",
    ));
    let r = send(&shim, &visit("POST", "/p/q", "", 3), b"xyz");
    assert_eq!(r.status, 201, "{}\n{}", r.body_text(), shim.log());
    assert!(
        r.body_text().starts_with("SCGI POST /p/q pid="),
        "{}",
        r.body_text()
    );
    assert!(r.body_text().ends_with("body=xyz"), "{}", r.body_text());
    let cookies = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .count();
    assert_eq!(cookies, 2);
    stop_leaving_nothing(shim, "scgi_app.py");
    // flup's FastCGI server on the socket the shim gives it as fd 0.
    let app = apps().join("fcgi_app.py");
    let shim = Shim::start(&settings("fastcgi", &[&python, app.to_str().unwrap()], ""));
    let r = get(&shim, "/f/g");
    assert_eq!(r.status, 200, "{}", shim.log());
    assert!(
        r.body_text().starts_with("FLUP FCGI /f/g pid="),
        "{}",
        r.body_text()
    );
    stop_leaving_nothing(shim, "fcgi_app.py");
}

#[test]
fn settings_errors_name_only_the_kinds_keys() {
    let dir = TempDir::new("kindkeys");
    let file = dir.write(
        "mysite.toml",
        "[app]\nkind = \"fastcgi\"\ncommand = [\"/bin/cat\"]\nready_path = \"/\"\n",
    );
    let out = std::process::Command::new(shim_bin())
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("mysite.toml:4:1"), "{text}");
    assert!(text.contains("unknown key `ready_path`"), "{text}");
    assert!(
        text.contains("params") && !text.contains("module"),
        "{text}"
    );
}

/// A site whose processes share one server (`shared`, the default for
/// http): its directory, settings file (tests/server_apps/http_app.py on a
/// port) and the state directory its shims share.
fn shared_site(label: &str) -> (TempDir, PathBuf, PathBuf) {
    let site = TempDir::new(label);
    let app = apps().join("http_app.py");
    let file = site.write(
        "testsite.toml",
        &settings("http", &["/usr/bin/python3", app.to_str().unwrap()], ""),
    );
    let state = site.join("state");
    (site, file, state)
}

/// One more process of that site, as mod_fcgid starts one.
fn shared_shim(file: &Path, state: &Path) -> Shim {
    Shim::launch(
        TempDir::new("sharedshim"),
        Launch {
            args: Some(vec![file.as_os_str().to_owned()]),
            env: vec![("XDG_STATE_HOME".into(), state.display().to_string())],
            ..Launch::default()
        },
    )
}

/// kill -9 of a site's shared server on a port that another program takes
/// at once (it accepts and closes, as a port probe does): the next request
/// waits for the server the keeper starts; nothing is sent to the stranger
/// (it would get the visitor's cookies) and no 502 comes back.
#[test]
fn http_shared_server_killed_and_its_port_taken_by_another_program() {
    let (_site, file, state) = shared_site("sharedport");
    let shim = shared_shim(&file, &state);
    let first = field(&until_200(&shim, Duration::from_secs(10)), "pid");
    let log = shim.log();
    let port: u16 = log
        .split(&format!("(pid {first}, 127.0.0.1:"))
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port for pid {first} in {log}"));
    // A connection the server closes (so that none of ours keeps its port
    // busy and another program can bind it).
    assert_eq!(get(&shim, "/garbage").status, 502, "{}", shim.log());
    // Its keeper is held (SIGSTOP) so that the shim cannot have heard of
    // a new server when the request comes.
    let stat = std::fs::read_to_string(format!("/proc/{first}/stat")).unwrap();
    let keeper = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let signal = |sig: &str, pid: &str| {
        let _ = std::process::Command::new("kill").args([sig, pid]).status();
    };
    signal("-STOP", &keeper);
    signal("-KILL", &first);
    let gone = wait_until_gone(Duration::from_secs(5), || {
        let stat = std::fs::read_to_string(format!("/proc/{first}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .to_string();
        if stat.is_empty() || state.starts_with('Z') {
            Vec::new()
        } else {
            vec![0]
        }
    });
    assert!(gone.is_empty(), "pid {first} survived kill -9");
    let stranger = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the port");
    stranger.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let taker = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut taken = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match stranger.accept() {
                    Ok((conn, _)) => {
                        drop(conn);
                        taken += 1;
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            taken
        })
    };
    let resume = {
        let keeper = keeper.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(500));
            signal("-CONT", &keeper);
        })
    };
    let r = get(&shim, "/env");
    resume.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let taken = taker.join().unwrap();
    assert_eq!(r.status, 200, "{}", shim.log());
    assert_ne!(field(&r, "pid"), first);
    assert_eq!(taken, 0, "a request went to the program that took the port");
    stop_leaving_nothing(shim, "http_app.py");
}

/// The processes of one site (mod_fcgid's, here two shims on their own
/// listeners with the same settings file and state directory) share one
/// server, run by the site's keeper outside both: it survives either shim,
/// is replaced by a touch, a kill -9 and a killed keeper, and nothing of it
/// is left once the last shim has gone.
#[test]
fn http_processes_of_a_site_share_one_server() {
    let (site, file, state) = shared_site("sharedsite");
    let start = || shared_shim(&file, &state);
    let servers = || app_processes(site.path(), "http_app.py");
    // Has the server `pid` gone within 5 s?
    let gone_soon = |pid: &str| {
        let pid: u32 = pid.parse().unwrap();
        wait_until_gone(Duration::from_secs(5), || {
            servers().into_iter().filter(|p| *p == pid).collect()
        })
        .is_empty()
    };
    let keepers = || processes_matching("keep-server");
    let ppid = |pid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("").to_string();
        after.split_whitespace().nth(1).unwrap_or("").to_string()
    };
    let mut a = start();
    let mut b = start();
    let first = field(&until_200(&a, Duration::from_secs(10)), "pid");
    assert_eq!(
        field(&until_200(&b, Duration::from_secs(10)), "pid"),
        first,
        "{}",
        b.log()
    );
    assert_eq!(
        servers().len(),
        1,
        "{:?}\n{}{}",
        servers(),
        a.log(),
        b.log()
    );
    let keeper = ppid(&first);
    assert!(
        ![a.pid(), b.pid()].iter().any(|p| p.to_string() == keeper),
        "{keeper}"
    );
    assert!(
        keepers().iter().any(|k| k.to_string() == keeper),
        "{keeper}"
    );

    // mod_fcgid ends a shim (at worst with SIGKILL): the other's requests
    // go on to the same server.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status();
    assert!(a.wait_exit(Duration::from_secs(5)).is_some());
    for _ in 0..3 {
        assert_eq!(field(&get(&b, "/env"), "pid"), first, "{}", b.log());
    }

    // A touch: a new server, ready before the shim switches; the old one ends.
    touch_forward(&file, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let r = get(&b, "/env");
        assert_eq!(r.status, 200, "{}", b.log());
        let pid = field(&r, "pid");
        if pid != first {
            break pid;
        }
        assert!(Instant::now() < deadline, "not reloaded: {}", b.log());
        thread::sleep(Duration::from_millis(100));
    };
    assert!(gone_soon(&first), "the old server is left: {}", b.log());

    // kill -9 of the server: its keeper starts another, the next request
    // waits for it.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &second])
        .status();
    thread::sleep(Duration::from_millis(200));
    let third = field(&until_200(&b, Duration::from_secs(10)), "pid");
    assert_ne!(third, second);
    assert!(b.log().contains("was killed by signal 9"), "{}", b.log());

    // The keeper killed: its server dies with it, the shim starts another.
    let keeper = ppid(&third);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &keeper])
        .status();
    assert!(gone_soon(&third), "its server outlived the keeper");
    let fourth = field(&until_200(&b, Duration::from_secs(10)), "pid");
    assert_ne!(fourth, third);
    assert_eq!(servers().len(), 1, "{:?}", servers());

    // The last shim goes: the keeper stops the server and exits.
    let new_keeper: u32 = ppid(&fourth).parse().unwrap();
    b.terminate();
    assert!(b.wait_exit(Duration::from_secs(10)).is_some());
    let left = wait_until_gone(Duration::from_secs(5), servers);
    assert!(left.is_empty(), "left behind: {left:?}\n{}", b.log());
    let left = wait_until_gone(Duration::from_secs(5), || {
        keepers().into_iter().filter(|k| *k == new_keeper).collect()
    });
    assert!(left.is_empty(), "the keeper is left: {left:?}\n{}", b.log());
}

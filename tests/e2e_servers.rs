//! End-to-end: `fcgi-shim serve` behind real nginx, lighttpd and Apache
//! (mod_proxy_fcgi, mod_proxy_scgi), each configured with a file of
//! `server-examples/` (placeholders filled in), and lighttpd `bin-path`
//! spawning the shim itself. The tests look at what a user sees: the status,
//! the body (SCRIPT_NAME / PATH_INFO as the application got them), wrk's
//! error counts and the process list.
//!
//! Needs Debian's nginx-light, lighttpd, apache2 and wrk (`.ci/run` installs
//! them). Each test has its own servers, ports chosen at run time and temp dirs.

mod apache_support;
mod common;
mod servers_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use apache_support::{ApacheInstance, TempDir, free_loopback_port};
use servers_support::{
    Endpoint, Kind, Site, WebServer, processes_mentioning, repo_file, require, shim_bin,
};

/// The application saw /app as SCRIPT_NAME and the rest as PATH_INFO.
fn assert_cgi_paths(text: &str, context: &str) {
    for want in [
        "SCRIPT_NAME=/app\n",
        "PATH_INFO=/hello/world\n",
        "QUERY_STRING=x=1\n",
        "REQUEST_METHOD=GET\n",
    ] {
        assert!(
            text.contains(want),
            "{context}: missing {want:?} in:\n{text}"
        );
    }
}

fn get_hello(server: &WebServer, context: &str) {
    let r = server.get("/app/hello/world?x=1");
    assert_eq!(
        r.status,
        200,
        "{context}: {}\n{}",
        r.summary(),
        server.logs()
    );
    assert_cgi_paths(&r.text(), context);
}

#[test]
fn nginx_to_unix_socket() {
    require(servers_support::NGINX_BIN, "nginx-light");
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let pidfile = site.path("mysite.pid");
    let words = [
        "method=prefork".to_string(),
        format!("socket={}", sock.display()),
        format!("pidfile={}", pidfile.display()),
    ];
    let mut shim = site.serve(&words, Endpoint::Unix(sock.clone()));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode: owner and group only");
    let nginx = WebServer::start(
        Kind::Nginx,
        &repo_file("server-examples/nginx-unix-socket.conf"),
        &[("SOCKET", sock.display().to_string())],
    );
    get_hello(&nginx, "nginx -> unix socket");
    assert!(shim.stop(), "shim stops on SIGTERM");
    assert!(!sock.exists(), "socket removed at exit");
    assert!(!pidfile.exists(), "pidfile removed at exit");
}

#[test]
fn nginx_to_tcp() {
    require(servers_support::NGINX_BIN, "nginx-light");
    let site = Site::new();
    let port = free_loopback_port();
    let words = [
        "method=threaded".to_string(),
        "host=127.0.0.1".to_string(),
        format!("port={port}"),
    ];
    let _shim = site.serve(&words, Endpoint::Tcp(port));
    let nginx = WebServer::start(
        Kind::Nginx,
        &repo_file("server-examples/nginx-tcp.conf"),
        &[("SHIM_PORT", port.to_string())],
    );
    get_hello(&nginx, "nginx -> tcp");
}

#[test]
fn lighttpd_to_unix_socket() {
    require(servers_support::LIGHTTPD_BIN, "lighttpd");
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let words = [format!("socket={}", sock.display())];
    let _shim = site.serve(&words, Endpoint::Unix(sock.clone()));
    let lighttpd = WebServer::start(
        Kind::Lighttpd,
        &repo_file("server-examples/lighttpd-socket.conf"),
        &[("SOCKET", sock.display().to_string())],
    );
    get_hello(&lighttpd, "lighttpd -> unix socket");
}

#[test]
fn lighttpd_bin_path_spawns_the_shim() {
    require(servers_support::LIGHTTPD_BIN, "lighttpd");
    let site = Site::new();
    let mut lighttpd = WebServer::start(
        Kind::Lighttpd,
        &repo_file("server-examples/lighttpd-bin-path.conf"),
        &[
            ("SHIM", shim_bin().display().to_string()),
            ("SETTINGS", site.settings.display().to_string()),
        ],
    );
    get_hello(&lighttpd, "lighttpd bin-path");
    let needle = site.settings.display().to_string();
    assert!(
        !processes_mentioning(&needle).is_empty(),
        "lighttpd runs the shim"
    );
    lighttpd.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_mentioning(&needle),
        Vec::<u32>::new(),
        "no shim left after lighttpd stopped"
    );
}

/// Apache with `example` (and `modules` loaded), and its web root; the
/// instance comes first so that it is dropped (stopped) before the root goes.
fn apache_with(example: &str, modules: &[&str], shim_port: u16) -> (ApacheInstance, TempDir) {
    assert!(apache_support::apache_available_or_fail());
    let root = TempDir::new("fcgi-shim-serve-www");
    let mut conf = String::new();
    for m in modules {
        conf.push_str(&format!(
            "LoadModule {m}_module {}/mod_{m}.so\n",
            apache_support::APACHE_MODULES
        ));
    }
    conf.push_str(&servers_support::render(
        &repo_file(example),
        &[("SHIM_PORT", shim_port.to_string())],
    ));
    (ApacheInstance::start(root.path(), &conf), root)
}

/// A shim on TCP with `word`, Apache in front of it with `example`: asserts
/// the CGI paths of a GET and returns both (the shim last, stopped last).
fn through_apache(
    example: &str,
    modules: &[&str],
    word: &str,
) -> (ApacheInstance, TempDir, servers_support::ServeShim, Site) {
    let site = Site::new();
    let port = free_loopback_port();
    let shim = site.serve(
        &[format!("port={port}"), word.to_string()],
        Endpoint::Tcp(port),
    );
    let (apache, root) = apache_with(example, modules, port);
    let r = apache.get("/app/hello/world?x=1");
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.summary(),
        apache.logs_for_humans()
    );
    assert_cgi_paths(&r.text(), example);
    (apache, root, shim, site)
}

#[test]
fn apache_mod_proxy_fcgi() {
    through_apache(
        "server-examples/apache-proxy-fcgi.conf",
        &["proxy", "proxy_fcgi"],
        "method=prefork",
    );
}

#[test]
fn apache_mod_proxy_scgi() {
    let (apache, _root, _shim, _site) = through_apache(
        "server-examples/apache-proxy-scgi.conf",
        &["proxy", "proxy_scgi", "setenvif"],
        "protocol=scgi",
    );
    let body = common::prng_bytes(300_000, 3);
    let r = apache.request("POST", "/app/echo", &[], Some(&body));
    assert_eq!(r.status, 200, "POST: {}", r.summary());
    assert!(
        r.body == body,
        "echoed body differs ({} bytes back)",
        r.body.len()
    );
}

/// wrk's summary: (requests, non-2xx/3xx responses, socket errors line).
fn wrk(port: u16, seconds: u32) -> (u64, u64, Option<String>, String) {
    let out = Command::new("wrk")
        .args(["-t2", "-c8", &format!("-d{seconds}s"), "--timeout", "5s"])
        .arg(format!("http://127.0.0.1:{port}/app/hello/world?x=1"))
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let number = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let socket_errors = text
        .lines()
        .find(|l| l.contains("Socket errors"))
        .map(str::to_string);
    (
        requests,
        number("Non-2xx or 3xx responses:"),
        socket_errors,
        text,
    )
}

/// nginx in front of shims A and B (`nginx-upstream.conf`) under wrk load;
/// `stop_a` is done to A in the middle of the run: no request may fail.
fn upstream_survives(stop_a: impl FnOnce(&mut servers_support::ServeShim), what: &str) {
    require(servers_support::NGINX_BIN, "nginx-light");
    require("/usr/bin/wrk", "wrk");
    let site = Site::new();
    let (port_a, port_b) = (free_loopback_port(), free_loopback_port());
    let words_a = [format!("port={port_a}"), "minspare=4".to_string()];
    let words_b = [format!("port={port_b}"), "minspare=4".to_string()];
    let mut shim_a = site.serve(&words_a, Endpoint::Tcp(port_a));
    let _shim_b = site.serve(&words_b, Endpoint::Tcp(port_b));
    let nginx = WebServer::start(
        Kind::Nginx,
        &repo_file("server-examples/nginx-upstream.conf"),
        &[
            ("SHIM_PORT", port_a.to_string()),
            ("SHIM_PORT2", port_b.to_string()),
        ],
    );
    get_hello(&nginx, "upstream");
    let port = nginx.port();
    let load = thread::spawn(move || wrk(port, 4));
    thread::sleep(Duration::from_millis(1500));
    stop_a(&mut shim_a);
    let (requests, non_2xx, socket_errors, text) = load.join().expect("wrk thread");
    eprintln!("wrk, shim A {what}:\n{text}");
    assert!(requests > 20, "wrk made {requests} requests:\n{text}");
    assert_eq!(non_2xx, 0, "failed requests:\n{text}\n{}", nginx.logs());
    assert_eq!(socket_errors, None, "{text}");
    let r = nginx.get("/app/hello/world?x=1");
    assert_eq!(r.status, 200, "after A stopped: {}", r.summary());
}

#[test]
fn nginx_upstream_of_two_shims_survives_one_stopping_under_load() {
    upstream_survives(
        |a| assert!(a.stop(), "shim A stops on SIGTERM under load"),
        "stopped with SIGTERM",
    );
}

#[test]
fn nginx_upstream_of_two_shims_survives_one_killed_under_load() {
    upstream_survives(
        |a| {
            servers_support::signal(a.pid(), nix::sys::signal::Signal::SIGKILL);
            let killed = Instant::now();
            while !a.exited() {
                assert!(killed.elapsed() < Duration::from_secs(5), "A did not die");
                thread::sleep(Duration::from_millis(10));
            }
        },
        "manager killed with SIGKILL",
    );
}

/// The Django project behind `server`: its `reverse()` and SCRIPT_NAME show
/// the /app prefix the visitor used.
fn assert_django_under_app(r: &apache_support::HttpResponse, context: &str, logs: &str) {
    assert_eq!(r.status, 200, "{context}: {}\n{logs}", r.summary());
    let text = r.text();
    for want in [
        "django index\n",
        "login url: /app/login/\n",
        "script_name: '/app'\n",
    ] {
        assert!(
            text.contains(want),
            "{context}: missing {want:?} in:\n{text}"
        );
    }
}

/// The Django project (kind = "wsgi") through every server of the examples:
/// nginx and lighttpd on one unix socket, nginx to TCP, lighttpd bin-path,
/// Apache mod_proxy_fcgi and mod_proxy_scgi (protocol=scgi).
#[test]
fn django_project_behind_nginx_lighttpd_and_apache() {
    require(servers_support::NGINX_BIN, "nginx-light");
    require(servers_support::LIGHTTPD_BIN, "lighttpd");

    let unix_site = Site::django();
    let sock = unix_site.path("mysite.sock");
    let _unix_shim = unix_site.serve(
        &[
            "method=prefork".into(),
            format!("socket={}", sock.display()),
        ],
        Endpoint::Unix(sock.clone()),
    );
    for (kind, example) in [
        (Kind::Nginx, "server-examples/nginx-unix-socket.conf"),
        (Kind::Lighttpd, "server-examples/lighttpd-socket.conf"),
    ] {
        let server = WebServer::start(
            kind,
            &repo_file(example),
            &[("SOCKET", sock.display().to_string())],
        );
        assert_django_under_app(&server.get("/app/"), example, &server.logs());
    }

    let tcp_site = Site::django();
    let port = free_loopback_port();
    let _tcp_shim = tcp_site.serve(
        &["method=threaded".into(), format!("port={port}")],
        Endpoint::Tcp(port),
    );
    let nginx = WebServer::start(
        Kind::Nginx,
        &repo_file("server-examples/nginx-tcp.conf"),
        &[("SHIM_PORT", port.to_string())],
    );
    assert_django_under_app(&nginx.get("/app/"), "nginx -> tcp", &nginx.logs());
    let (apache, _root) = apache_with(
        "server-examples/apache-proxy-fcgi.conf",
        &["proxy", "proxy_fcgi"],
        port,
    );
    assert_django_under_app(
        &apache.get("/app/"),
        "apache mod_proxy_fcgi",
        &apache.logs_for_humans(),
    );

    let scgi_site = Site::django();
    let scgi_port = free_loopback_port();
    let _scgi_shim = scgi_site.serve(
        &["protocol=scgi".into(), format!("port={scgi_port}")],
        Endpoint::Tcp(scgi_port),
    );
    let (apache, _root) = apache_with(
        "server-examples/apache-proxy-scgi.conf",
        &["proxy", "proxy_scgi", "setenvif"],
        scgi_port,
    );
    assert_django_under_app(
        &apache.get("/app/"),
        "apache mod_proxy_scgi",
        &apache.logs_for_humans(),
    );

    let spawned = Site::django();
    let lighttpd = WebServer::start(
        Kind::Lighttpd,
        &repo_file("server-examples/lighttpd-bin-path.conf"),
        &[
            ("SHIM", shim_bin().display().to_string()),
            ("SETTINGS", spawned.settings.display().to_string()),
        ],
    );
    assert_django_under_app(
        &lighttpd.get("/app/"),
        "lighttpd bin-path",
        &lighttpd.logs(),
    );
}

/// Issue 13: nginx with Debian's stock `scgi_params` sends neither
/// SCRIPT_NAME nor PATH_INFO; the shim derives them (`script_name` and
/// REQUEST_URI), so two URLs reach two different Django views, not both `/`.
#[test]
fn django_behind_nginx_scgi_with_the_stock_scgi_params() {
    require(servers_support::NGINX_BIN, "nginx-light");
    let site = Site::django();
    let settings = std::fs::read_to_string(&site.settings).expect("settings");
    apache_support::write_file(
        &site.settings,
        format!("{settings}script_name = \"/app\"\n"),
        0o644,
    );
    let port = free_loopback_port();
    let _shim = site.serve(
        &[
            "protocol=scgi".into(),
            "method=threaded".into(),
            format!("port={port}"),
        ],
        Endpoint::Tcp(port),
    );
    let nginx = WebServer::start(
        Kind::Nginx,
        &repo_file("server-examples/nginx-scgi.conf"),
        &[("SHIM_PORT", port.to_string())],
    );
    assert_django_under_app(&nginx.get("/app/"), "nginx scgi", &nginx.logs());
    let login = nginx.get("/app/login/");
    assert_eq!(login.status, 200, "{}\n{}", login.summary(), nginx.logs());
    let text = login.text();
    assert!(
        text.contains("csrfmiddlewaretoken") && text.contains("action=\"/app/login/\""),
        "/app/login/ should be the login view:\n{text}"
    );
    let missing = nginx.get("/app/no-such-page/");
    assert_eq!(missing.status, 404, "{}", missing.summary());
}

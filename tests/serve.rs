//! `fcgi-shim serve` against the real binary, without a web server: the
//! concurrency of prefork / threaded / single, maxrequests, daemonize with a
//! pidfile and `kill $(cat pidfile)`, the unix socket's life cycle,
//! allowed_addrs, systemd socket activation with the example unit, the SCGI
//! front, and the errors a wrong command line gets.
//!
//! The FastCGI client is the one of tests/common (written from the spec);
//! the SCGI client here is written from the SCGI spec, not from the crate.

mod apache_support;
mod common;
mod servers_support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use apache_support::free_loopback_port;
use common::{Conn, cgi_params, request};
use servers_support::{Endpoint, ServeShim, Site, processes_mentioning, shim_bin};

/// One FastCGI GET with `query`; returns the body the application printed.
fn fcgi_get(endpoint: &Endpoint, query: &str) -> String {
    let mut conn = match endpoint {
        Endpoint::Unix(p) => Conn::Unix(UnixStream::connect(p).expect("connect unix")),
        Endpoint::Tcp(port) => {
            Conn::Tcp(TcpStream::connect((Ipv4Addr::LOCALHOST, *port)).expect("connect tcp"))
        }
    };
    conn.set_timeouts(Duration::from_secs(20));
    let response = request(&mut conn, &cgi_params("GET", query, 0), b"", false);
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 200, "{cgi:?}");
    cgi.body_text()
}

fn worker_of(body: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("WORKER="))
        .unwrap_or_else(|| panic!("no WORKER= in {body:?}"))
        .to_string()
}

/// `n` concurrent one-second requests; returns the elapsed time and the
/// worker pids that served them.
fn concurrent_sleeps(endpoint: &Endpoint, n: usize) -> (Duration, Vec<String>) {
    let started = Instant::now();
    let workers: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| s.spawn(|| worker_of(&fcgi_get(endpoint, "sleep=1"))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    (started.elapsed(), workers)
}

/// `n` one-second requests at once complete in under 2.5 s (the issue's
/// bound); returns the distinct worker pids that served them.
fn all_at_once(shim: &ServeShim, endpoint: &Endpoint, n: usize, what: &str) -> HashSet<String> {
    let (elapsed, workers) = concurrent_sleeps(endpoint, n);
    eprintln!("{n} x 1 s requests, {what}: {elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(2500),
        "{what}: took {elapsed:?}\n{}",
        shim.log_text()
    );
    workers.into_iter().collect()
}

#[test]
fn prefork_maxchildren_16_serves_16_one_second_requests_at_once() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let shim = site.serve(
        &[
            "method=prefork".into(),
            "maxchildren=16".into(),
            format!("socket={}", sock.display()),
        ],
        Endpoint::Unix(sock.clone()),
    );
    let workers = all_at_once(&shim, &Endpoint::Unix(sock), 16, "prefork maxchildren=16");
    assert_eq!(workers.len(), 16, "16 workers served them: {workers:?}");
}

#[test]
fn prefork_maxrequests_1_replaces_each_worker_and_no_request_fails() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let shim = site.serve(
        &[
            "daemonize=false".into(),
            format!("socket={}", sock.display()),
            "maxrequests=1".into(),
            "maxchildren=4".into(),
            "debug=true".into(),
        ],
        Endpoint::Unix(sock.clone()),
    );
    let endpoint = Endpoint::Unix(sock);
    let mut workers = Vec::new();
    for _round in 0..5 {
        let batch: Vec<String> = thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| worker_of(&fcgi_get(&endpoint, "x=1"))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("request"))
                .collect()
        });
        workers.extend(batch);
    }
    let distinct: HashSet<_> = workers.iter().collect();
    assert_eq!(
        distinct.len(),
        20,
        "each of the 20 requests had a fresh worker: {workers:?}\n{}",
        shim.log_text()
    );
    assert!(
        shim.log_text().contains("prefork worker exits (Recycled)"),
        "{}",
        shim.log_text()
    );
    // A recycled worker is not mistaken for a crash loop.
    assert!(
        !shim.log_text().contains("exited right after starting"),
        "{}",
        shim.log_text()
    );
}

#[test]
fn threaded_pool_serves_concurrently() {
    let site = Site::new();
    let port = free_loopback_port();
    let shim = site.serve(
        &[
            "method=threaded".into(),
            "host=127.0.0.1".into(),
            format!("port={port}"),
            "maxchildren=8".into(),
        ],
        Endpoint::Tcp(port),
    );
    let workers = all_at_once(&shim, &Endpoint::Tcp(port), 8, "threaded maxchildren=8");
    assert_eq!(workers.len(), 1, "one process: {workers:?}");
}

#[test]
fn maxchildren_is_never_exceeded() {
    for method in ["prefork", "threaded"] {
        let site = Site::new();
        let sock = site.path("mysite.sock");
        let shim = site.serve(
            &[
                format!("method={method}"),
                "maxchildren=2".into(),
                "minspare=2".into(),
                format!("socket={}", sock.display()),
            ],
            Endpoint::Unix(sock.clone()),
        );
        let (elapsed, workers) = concurrent_sleeps(&Endpoint::Unix(sock), 4);
        assert!(
            elapsed >= Duration::from_secs(2),
            "{method}: 4 x 1 s with maxchildren=2 took {elapsed:?}"
        );
        let distinct: HashSet<_> = workers.into_iter().collect();
        if method == "prefork" {
            assert!(distinct.len() <= 2, "{method}: workers {distinct:?}");
            let procs = processes_mentioning(&site.settings.display().to_string());
            let guards: Vec<u32> = procs
                .iter()
                .copied()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "fcgi-shim-guard")
                })
                .collect();
            assert!(
                procs.len() - guards.len() <= 3 && guards.len() == 1,
                "manager + 2 workers at most, and one process-group guard: {procs:?} (guards {guards:?})"
            );
        }
        drop(shim);
    }
}

#[test]
fn single_serves_one_at_a_time() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let _shim = site.serve(
        &[
            "method=single".into(),
            format!("socket={}", sock.display()),
            "umask=002".into(),
        ],
        Endpoint::Unix(sock.clone()),
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o775, "socket created under umask=002");
    let (elapsed, _) = concurrent_sleeps(&Endpoint::Unix(sock), 2);
    assert!(elapsed >= Duration::from_secs(2), "took {elapsed:?}");
}

#[test]
fn single_idle_kept_connection_gives_way() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let _shim = site.serve(
        &["method=single".into(), format!("socket={}", sock.display())],
        Endpoint::Unix(sock.clone()),
    );
    let mut kept = Conn::Unix(UnixStream::connect(&sock).expect("connect"));
    kept.set_timeouts(Duration::from_secs(10));
    let r = request(&mut kept, &cgi_params("GET", "x=1", 0), b"", true);
    assert_eq!(r.complete_cgi().status, 200);
    // The kept connection is idle: a second one is served at once.
    let started = Instant::now();
    fcgi_get(&Endpoint::Unix(sock), "x=2");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Pids of the shim's processes other than `manager` (its workers).
fn workers_of(site: &Site, manager: u32) -> Vec<u32> {
    processes_mentioning(&site.settings.display().to_string())
        .into_iter()
        .filter(|p| *p != manager)
        .collect()
}

#[test]
fn prefork_replaces_a_dead_worker() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let shim = site.serve(
        &[format!("socket={}", sock.display()), "minspare=2".into()],
        Endpoint::Unix(sock.clone()),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while workers_of(&site, shim.pid()).len() < 2 {
        assert!(Instant::now() < deadline, "workers did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let victim = workers_of(&site, shim.pid())[0];
    servers_support::signal(victim, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = workers_of(&site, shim.pid());
        if !now.contains(&victim) && now.len() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not replaced: {now:?}\n{}",
            shim.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..4 {
        fcgi_get(&Endpoint::Unix(sock.clone()), "x=1");
    }
}

#[test]
fn workers_die_with_a_killed_manager() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let mut shim = site.serve(
        &[format!("socket={}", sock.display()), "minspare=3".into()],
        Endpoint::Unix(sock.clone()),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while workers_of(&site, shim.pid()).len() < 3 {
        assert!(Instant::now() < deadline, "workers did not start");
        thread::sleep(Duration::from_millis(20));
    }
    servers_support::signal(shim.pid(), nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let needle = site.settings.display().to_string();
    while !processes_mentioning(&needle).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "orphans: {:?}",
            processes_mentioning(&needle)
        );
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "workers gone {:?} after SIGKILL of the manager",
        killed.elapsed()
    );
    assert!(shim.exited());
    // The socket file a killed server leaves is replaced by the next start.
    let _again = site.serve(
        &[format!("socket={}", sock.display())],
        Endpoint::Unix(sock.clone()),
    );
    fcgi_get(&Endpoint::Unix(sock), "x=1");
}

#[test]
fn stop_lets_the_request_in_flight_finish() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let mut shim = site.serve(
        &[format!("socket={}", sock.display())],
        Endpoint::Unix(sock.clone()),
    );
    let endpoint = Endpoint::Unix(sock.clone());
    thread::scope(|s| {
        let slow = s.spawn(|| fcgi_get(&endpoint, "sleep=1"));
        thread::sleep(Duration::from_millis(300));
        let stopping = Instant::now();
        assert!(shim.stop(), "stopped");
        let took = stopping.elapsed();
        let body = slow.join().expect("the slow request completed");
        assert!(body.contains("QUERY_STRING=sleep=1"), "{body}");
        assert!(took < Duration::from_secs(3), "stop took {took:?}");
    });
    assert!(!sock.exists());
    assert!(
        shim.log_text().contains("SIGTERM received"),
        "{}",
        shim.log_text()
    );
}

/// Runs `fcgi-shim serve ARGS` to completion (bounded) in `dir`.
fn run_serve(dir: &Path, args: &[String]) -> (i32, String, String) {
    let mut child = Command::new(shim_bin())
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fcgi-shim serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fcgi-shim serve {args:?} did not return");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// SIGKILLs a server we started (by pid) when a test fails before stopping it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if thread::panicking() {
            servers_support::signal(self.0, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[test]
fn daemonize_pidfile_and_kill_stop_cleanly() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let pidfile = site.path("django.pid");
    let errlog = site.path("err.log");
    // Relative paths everywhere: the daemon changes to workdir (/) later.
    std::fs::write(
        site.path("rel.toml"),
        "[app]\nkind = \"cgi\"\ncommand = [\"./app.sh\"]\n",
    )
    .unwrap();
    // Django's guide: method=prefork socket=... pidfile=... (daemonizes by default).
    let args = vec![
        "rel.toml".to_string(),
        "method=prefork".into(),
        format!("socket={}", sock.display()),
        "pidfile=django.pid".into(),
        format!("errlog={}", errlog.display()),
    ];
    let (code, stdout, stderr) = run_serve(site.dir.path(), &args);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile written before the command returned")
        .trim()
        .parse()
        .expect("pid");
    assert!(stdout.contains(&format!("pid {pid}")), "{stdout}");
    // Should an assertion below fail, the daemon (not our child) still goes.
    let _daemon = KillOnDrop(pid);
    let log = || std::fs::read_to_string(&errlog).unwrap_or_default();
    let body = fcgi_get(&Endpoint::Unix(sock.clone()), "x=1");
    assert!(body.contains("QUERY_STRING=x=1"), "{body}\n{}", log());

    // A second start on the live pidfile is refused, and leaves it alone.
    let (code, _, stderr) = run_serve(site.dir.path(), &args);
    assert_eq!(code, 1, "second start: {stderr}");
    assert!(
        stderr.contains("is running") && stderr.contains("django.pid"),
        "{stderr}"
    );
    assert!(pidfile.exists() && sock.exists());

    // The daemon's processes: their command line names this test's socket.
    let ours: Vec<u32> = processes_mentioning(&sock.display().to_string())
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|d| d == Path::new("/")))
        .collect();
    assert!(
        ours.len() >= 3,
        "manager and workers, in workdir /: {ours:?}"
    );
    let killed_at = Instant::now();
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("kill $(cat {})", pidfile.display()))
        .status()
        .expect("kill");
    assert!(status.success());
    let still = |pids: &[u32]| -> Vec<u32> {
        pids.iter()
            .copied()
            .filter(|p| Path::new(&format!("/proc/{p}/cmdline")).exists())
            .filter(|p| {
                !std::fs::read(format!("/proc/{p}/cmdline"))
                    .unwrap_or_default()
                    .is_empty()
            })
            .collect()
    };
    let mut left = still(&ours);
    while (!left.is_empty() || pidfile.exists() || sock.exists())
        && killed_at.elapsed() < Duration::from_secs(2)
    {
        thread::sleep(Duration::from_millis(20));
        left = still(&ours);
    }
    eprintln!("stopped {:?} after kill", killed_at.elapsed());
    assert_eq!(left, Vec::<u32>::new(), "no process remains\n{}", log());
    assert!(!pidfile.exists(), "pidfile removed\n{}", log());
    assert!(!sock.exists(), "socket removed\n{}", log());
    assert!(log().contains("SIGTERM received"), "{}", log());
}

#[test]
fn stale_socket_is_replaced_live_one_refused() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    // A socket file nobody listens on (a crashed server's leftover).
    drop(UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    let shim = site.serve(
        &[format!("socket={}", sock.display())],
        Endpoint::Unix(sock.clone()),
    );
    assert!(
        shim.log_text().contains("removing stale socket"),
        "{}",
        shim.log_text()
    );
    let (code, _, stderr) = run_serve(
        site.dir.path(),
        &[
            site.settings.display().to_string(),
            "daemonize=false".into(),
            format!("socket={}", sock.display()),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("another server is listening"), "{stderr}");
    fcgi_get(&Endpoint::Unix(sock.clone()), "x=1");
    // A file that is not a socket is never replaced.
    let file = site.path("not-a-socket");
    std::fs::write(&file, "data").unwrap();
    let (code, _, stderr) = run_serve(
        site.dir.path(),
        &[
            site.settings.display().to_string(),
            "daemonize=false".into(),
            format!("socket={}", file.display()),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}

/// A TCP connection to 127.0.0.1:`port` from the source address `from`.
fn connect_from(from: Ipv4Addr, port: u16) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    use std::os::fd::AsRawFd;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0)),
    )
    .expect("bind source");
    connect(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
    )
    .expect("connect");
    TcpStream::from(fd)
}

#[test]
fn peer_not_in_allowed_addrs_is_refused() {
    let site = Site::new();
    let port = free_loopback_port();
    let shim = site.serve(
        &[
            format!("port={port}"),
            "allowed_addrs=127.0.0.1".into(),
            "method=single".into(),
        ],
        Endpoint::Tcp(port),
    );
    let mut stranger = Conn::Tcp(connect_from(Ipv4Addr::new(127, 0, 0, 2), port));
    stranger.set_timeouts(Duration::from_secs(5));
    stranger
        .write_all(&common::encode_request(
            1,
            &cgi_params("GET", "x=1", 0),
            b"",
            false,
        ))
        .ok();
    let mut got = Vec::new();
    let _ = stranger.read_to_end(&mut got);
    assert!(got.is_empty(), "127.0.0.2 got an answer: {got:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shim
        .log_text()
        .contains("refused a connection from 127.0.0.2")
    {
        assert!(
            Instant::now() < deadline,
            "no log line:\n{}",
            shim.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // The allowed peer is served.
    let mut friend = Conn::Tcp(connect_from(Ipv4Addr::LOCALHOST, port));
    friend.set_timeouts(Duration::from_secs(10));
    let r = request(&mut friend, &cgi_params("GET", "x=1", 0), b"", false);
    assert_eq!(r.complete_cgi().status, 200);
}

#[test]
fn fcgi_web_server_addrs_is_enforced() {
    let site = Site::new();
    let port = free_loopback_port();
    let log = site.path("env.log");
    // A guide command line as written (no settings argument: the settings
    // come from $FCGI_SHIM_CONFIG).
    let mut child = Command::new(shim_bin())
        .args([
            "serve",
            "daemonize=false",
            "method=threaded",
            "host=127.0.0.1",
        ])
        .arg(format!("port={port}"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("FCGI_SHIM_CONFIG", &site.settings)
        .env("FCGI_WEB_SERVER_ADDRS", "127.0.0.2")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn");
    let _guard = KillOnDrop(child.id());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "not listening");
        thread::sleep(Duration::from_millis(20));
    }
    let mut from_allowed = Conn::Tcp(connect_from(Ipv4Addr::new(127, 0, 0, 2), port));
    from_allowed.set_timeouts(Duration::from_secs(10));
    let r = request(&mut from_allowed, &cgi_params("GET", "x=1", 0), b"", false);
    assert_eq!(r.complete_cgi().status, 200);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    while !text().contains("refused a connection from 127.0.0.1") {
        let _ = TcpStream::connect(addr);
        assert!(
            Instant::now() < deadline + Duration::from_secs(5),
            "{}",
            text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    servers_support::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

#[test]
fn systemd_socket_activation_with_the_example_units() {
    let site = Site::new();
    let sock = site.path("mysite.sock");
    let vars = [
        ("SOCKET", sock.display().to_string()),
        ("SHIM", shim_bin().display().to_string()),
        ("SETTINGS", site.settings.display().to_string()),
    ];
    let socket_unit = servers_support::render(
        &servers_support::repo_file("server-examples/systemd/mysite.socket"),
        &vars,
    );
    let service_unit = servers_support::render(
        &servers_support::repo_file("server-examples/systemd/mysite.service"),
        &vars,
    );
    let listen = socket_unit
        .lines()
        .find_map(|l| l.strip_prefix("ListenStream="))
        .expect("ListenStream");
    let exec = service_unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    // What systemd does: bind ListenStream, start ExecStart with it on fd 3.
    let listener = UnixListener::bind(listen).expect("bind ListenStream");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let log = site.path("systemd.log");
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
        .args(&argv)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn");
    let _guard = KillOnDrop(child.id());
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let body = fcgi_get(&Endpoint::Unix(sock.clone()), "x=1");
    assert!(body.contains("QUERY_STRING=x=1"), "{body}\n{}", text());
    assert!(text().contains("fd 3 (systemd)"), "{}", text());
    servers_support::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(5), "did not stop");
        thread::sleep(Duration::from_millis(20));
    }
    let needle = site.settings.display().to_string();
    assert_eq!(processes_mentioning(&needle), Vec::<u32>::new());
    // The units' syntax, where systemd-analyze exists (it prints unknown keys
    // as warnings and fails on a missing executable).
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let units = site.path("units");
        std::fs::create_dir(&units).unwrap();
        std::fs::write(units.join("mysite.socket"), &socket_unit).unwrap();
        std::fs::write(units.join("mysite.service"), &service_unit).unwrap();
        let out = common::run_bounded(
            Command::new("/usr/bin/systemd-analyze")
                .arg("verify")
                .arg(units.join("mysite.socket"))
                .arg(units.join("mysite.service")),
            &common::TempDir::new("analyze"),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "systemd-analyze verify: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("Unknown") && !out.stderr.contains("ignoring"),
            "systemd-analyze verify: {}",
            out.stderr
        );
    } else {
        eprintln!("no systemd-analyze: unit syntax not checked");
    }
}

/// An SCGI message, from the SCGI spec: a netstring of NUL-terminated
/// `headers` (CONTENT_LENGTH must be first), then the body.
fn scgi_message(headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut netstring = Vec::new();
    for (n, v) in headers {
        netstring.extend_from_slice(n.as_bytes());
        netstring.push(0);
        netstring.extend_from_slice(v.as_bytes());
        netstring.push(0);
    }
    let mut message = format!("{}:", netstring.len()).into_bytes();
    message.extend_from_slice(&netstring);
    message.push(b',');
    message.extend_from_slice(body);
    message
}

/// An SCGI request ([`scgi_message`]) to `port`. Writes everything before
/// reading anything (as Apache's mod_proxy_scgi does).
fn scgi_request(port: u16, path_info: &str, body: &[u8]) -> Vec<u8> {
    let headers = [
        ("CONTENT_LENGTH", body.len().to_string()),
        ("SCGI", "1".to_string()),
        ("REQUEST_METHOD", "POST".to_string()),
        ("SCRIPT_NAME", "/app".to_string()),
        ("PATH_INFO", path_info.to_string()),
        ("QUERY_STRING", "x=1".to_string()),
        ("SERVER_PROTOCOL", "HTTP/1.1".to_string()),
    ];
    let message = scgi_message(&headers, body);
    let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    thread::scope(|s| {
        s.spawn(move || writer.write_all(&message).expect("send"));
        let mut out = Vec::new();
        conn.read_to_end(&mut out).expect("read response");
        out
    })
}

/// `fcgi-shim serve` of `site` over SCGI on a free port (threaded).
fn serve_scgi(site: &Site) -> (ServeShim, u16) {
    let port = free_loopback_port();
    let shim = site.serve(
        &[
            "protocol=scgi".into(),
            format!("port={port}"),
            "method=threaded".into(),
        ],
        Endpoint::Tcp(port),
    );
    (shim, port)
}

/// What follows the CGI head of an SCGI response.
fn response_body(out: &[u8]) -> &[u8] {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    &out[end + 4..]
}

#[test]
fn scgi_front_serves_and_echoes_a_large_body() {
    let site = Site::new();
    let (_shim, port) = serve_scgi(&site);
    let out = scgi_request(port, "/hello/world", b"");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
    assert!(
        text.contains("SCRIPT_NAME=/app\nPATH_INFO=/hello/world\n"),
        "{text}"
    );
    let body = common::prng_bytes(3 * 1024 * 1024, 7);
    let out = scgi_request(port, "/echo", &body);
    let echoed = response_body(&out);
    assert_eq!(echoed.len(), body.len(), "echoed length");
    assert!(echoed == &body[..], "echoed bytes differ");
}

/// A WSGI application's big chunks over SCGI (whose response is the bytes
/// themselves) go from the worker's pipe to the socket by splice: byte for
/// byte, for a chunk of 3 MiB and for 300,000-byte ones.
#[test]
fn scgi_wsgi_big_chunks_arrive_whole() {
    let site = Site::new();
    let python = std::env::var("FCGI_SHIM_TEST_PYTHON").expect("FCGI_SHIM_TEST_PYTHON");
    apache_support::write_file(
        &site.path("big.py"),
        "PATTERN = bytes(range(256))\n\
         def application(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'application/octet-stream')])\n\
         \x20   data = PATTERN * (3 << 12)\n\
         \x20   if environ['PATH_INFO'] == '/one':\n\
         \x20       return [data]\n\
         \x20   return [data[i:i + 300000] for i in range(0, len(data), 300000)]\n",
        0o644,
    );
    apache_support::write_file(
        &site.settings,
        format!(
            "[app]\nkind = \"wsgi\"\nmodule = \"big:application\"\npython = \"{python}\"\n\
             python_path = [\"{}\"]\n",
            site.dir.path().display()
        ),
        0o644,
    );
    let (_shim, port) = serve_scgi(&site);
    for path in ["/one", "/parts"] {
        let out = scgi_request(port, path, b"");
        assert!(out.starts_with(b"Status: 200 OK\r\n"), "{path}");
        let body = response_body(&out);
        assert_eq!(body.len(), 3 << 20, "{path}");
        assert!(
            body.iter().enumerate().all(|(i, &b)| b == i as u8),
            "{path}: the body differs"
        );
    }
}

#[test]
fn command_line_errors_name_the_word() {
    let site = Site::new();
    let settings = site.settings.display().to_string();
    let (code, _, stderr) = run_serve(site.dir.path(), &[settings.clone(), "maxchilren=3".into()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`maxchilren=3`") && stderr.contains("did you mean `maxchildren`"),
        "{stderr}"
    );
    let (code, _, stderr) = run_serve(
        site.dir.path(),
        &[settings.clone(), "protocol=ajp13".into()],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("fcgi, scgi or ajp"), "{stderr}");
    let (code, _, stderr) = run_serve(
        site.dir.path(),
        &[
            settings.clone(),
            "socket=/tmp/x.sock".into(),
            "port=3033".into(),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not both"), "{stderr}");
    // A daemon that cannot start says why on the terminal it was started from.
    let (code, _, stderr) = run_serve(
        site.dir.path(),
        &[
            settings.clone(),
            format!("port={}", free_loopback_port()),
            "workdir=/nonexistent-fcgi-shim-dir".into(),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("workdir /nonexistent-fcgi-shim-dir"),
        "{stderr}"
    );
    // A failure after binding leaves no socket file behind.
    let sock = site.path("failed.sock");
    let (code, _, stderr) = run_serve(
        site.dir.path(),
        &[
            settings.clone(),
            format!("socket={}", sock.display()),
            "errlog=/nonexistent-fcgi-shim-dir/err.log".into(),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot open /nonexistent-fcgi-shim-dir/err.log"),
        "{stderr}"
    );
    assert!(!sock.exists(), "socket left behind");
    let (code, stdout, _) = run_serve(site.dir.path(), &["help".into()]);
    assert_eq!(code, 0);
    for key in [
        "protocol",
        "host",
        "port",
        "socket",
        "method",
        "daemonize",
        "workdir",
        "pidfile",
        "maxspare",
        "minspare",
        "maxchildren",
        "maxrequests",
        "debug",
        "outlog",
        "errlog",
        "umask",
        "allowed_addrs",
        "ajp_secret",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(key)),
            "help lacks {key}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("fcgi, scgi or ajp") && !stdout.contains("not supported"),
        "{stdout}"
    );
}

/// Standalone reload: SIGHUP validates the new version, lets requests in
/// flight finish, and re-execs in place; the socket and the pidfile stay, and
/// connections made meanwhile wait in the backlog. A broken version is refused.
#[test]
fn sighup_reloads_in_place_and_refuses_a_broken_version() {
    for method in ["single", "prefork", "threaded"] {
        let site = Site::new();
        let sock = site.path("mysite.sock");
        let pidfile = site.path("mysite.pid");
        let mut shim = site.serve(
            &[
                format!("method={method}"),
                format!("socket={}", sock.display()),
                format!("pidfile={}", pidfile.display()),
            ],
            Endpoint::Unix(sock.clone()),
        );
        let endpoint = Endpoint::Unix(sock.clone());
        assert!(!fcgi_get(&endpoint, "x=1").contains("VERSION=2"));

        let app2 = site.path("app2.sh");
        apache_support::write_file(
            &app2,
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nVERSION=2\\n'\n",
            0o755,
        );
        let good = format!(
            "[app]\nkind = \"cgi\"\ncommand = [\"{}\"]\n",
            app2.display()
        );
        apache_support::write_file(&site.settings, &good, 0o644);
        servers_support::signal(shim.pid(), nix::sys::signal::Signal::SIGHUP);
        let t0 = Instant::now();
        loop {
            // Every request meanwhile succeeds (fcgi_get asserts a 200).
            if fcgi_get(&endpoint, "x=2").contains("VERSION=2") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{method}: no reload\n{}",
                shim.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{method}: SIGHUP -> new version in {:?}", t0.elapsed());
        assert!(!shim.exited(), "{method}: the same process goes on");
        assert_eq!(
            std::fs::read_to_string(&pidfile).unwrap_or_default().trim(),
            shim.pid().to_string()
        );

        apache_support::write_file(&site.settings, good.replace("command", "comand"), 0o644);
        servers_support::signal(shim.pid(), nix::sys::signal::Signal::SIGHUP);
        let t0 = Instant::now();
        while !shim.log_text().contains("not reloading") && t0.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(20));
        }
        let log = shim.log_text();
        assert!(
            log.contains("not reloading") && log.contains("unknown key `comand`"),
            "{method}: {log}"
        );
        assert!(fcgi_get(&endpoint, "x=3").contains("VERSION=2"));

        assert!(shim.stop(), "{method}: stopped");
        assert!(
            !sock.exists() && !pidfile.exists(),
            "{method}: files removed"
        );
    }
}

/// Issue 13 item 5: in every method and both protocols, a connection that
/// sends nothing, or half a request head, is closed after
/// `request_read_timeout` with a log line, and the next visitor is served
/// (one worker, so the silent one holds it until then).
#[test]
fn silent_and_half_sent_connections_give_way_after_request_read_timeout_in_every_method() {
    let half_fcgi =
        common::encode_request(1, &cgi_params("GET", "x=1", 0), b"", false)[..30].to_vec();
    let half_scgi = b"70:CONTENT_LENGTH\x000\x00SC".to_vec();
    for (protocol, method) in [
        ("fcgi", "single"),
        ("fcgi", "prefork"),
        ("fcgi", "threaded"),
        ("scgi", "single"),
        ("scgi", "prefork"),
        ("scgi", "threaded"),
    ] {
        let site = Site::new();
        let mut settings = std::fs::read_to_string(&site.settings).unwrap();
        settings.push_str("[limits]\nrequest_read_timeout = \"1s\"\n");
        std::fs::write(&site.settings, settings).unwrap();
        let port = free_loopback_port();
        let shim = site.serve(
            &[
                format!("protocol={protocol}"),
                format!("method={method}"),
                format!("port={port}"),
                "minspare=1".into(),
                "maxspare=1".into(),
                "maxchildren=1".into(),
            ],
            Endpoint::Tcp(port),
        );
        let what = format!("{protocol} {method}");
        for half in [
            &b""[..],
            if protocol == "fcgi" {
                &half_fcgi
            } else {
                &half_scgi
            },
        ] {
            let mut idle = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
            idle.write_all(half).unwrap();
            thread::sleep(Duration::from_millis(100));
            let started = Instant::now();
            if protocol == "fcgi" {
                fcgi_get(&Endpoint::Tcp(port), "x=2");
            } else {
                let out = scgi_request(port, "/next", b"");
                assert!(
                    out.starts_with(b"Status: 200 OK\r\n"),
                    "{what}: {}",
                    String::from_utf8_lossy(&out)
                );
            }
            let waited = started.elapsed();
            assert!(
                waited >= Duration::from_millis(600) && waited < Duration::from_secs(4),
                "{what}, {} bytes sent: the next visitor waited {waited:?}\n{}",
                half.len(),
                shim.log_text()
            );
            let mut rest = Vec::new();
            idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = idle.read_to_end(&mut rest);
            assert!(rest.is_empty(), "{what}: {rest:?}");
        }
        let log = shim.log_text();
        let line = format!(
            "{protocol}: closing connection: no complete request within 1s (request_read_timeout)"
        )
        .replace("fcgi:", "fastcgi:");
        assert_eq!(log.matches(&line).count(), 2, "{what}: {log}");
    }
}

/// Issue 13 item 6 for `serve`: out of file descriptors (`ulimit -n`), in
/// the threaded pool and under the prefork manager (which then cannot start
/// a worker), every visitor gets a 503 and each cause is logged once.
#[test]
fn out_of_file_descriptors_threaded_and_prefork_answer_503_and_log_each_cause_once() {
    for method in ["threaded", "prefork"] {
        for nofile in [7, 9] {
            let dir = common::TempDir::new("serve-nofile");
            let program = common::shim_after(&dir, &format!("ulimit -n {nofile}"));
            let settings = dir.join(&format!("{}.toml", common::SITE));
            let script = dir.script("app.sh", common::HELLO_SCRIPT);
            let shim = common::Shim::launch(
                dir,
                common::Launch {
                    settings: Some(common::settings_with_timeout(&script, 5)),
                    program: Some(program),
                    args: Some(vec![
                        "serve".into(),
                        settings.into(),
                        format!("method={method}").into(),
                        "daemonize=false".into(),
                        "minspare=1".into(),
                        "maxspare=1".into(),
                        "maxchildren=2".into(),
                    ]),
                    ..common::Launch::default()
                },
            );
            let what = format!("{method}, ulimit -n {nofile}");
            for _ in 0..4 {
                let mut conn = shim.connect();
                let r = request(&mut conn, &cgi_params("GET", "q=1", 0), b"", false).complete_cgi();
                assert!(
                    r.status == 503 || r.body_text() == "hello GET q=1",
                    "{what}: {r:?}\n{}",
                    shim.log()
                );
            }
            thread::sleep(Duration::from_millis(1200));
            let log = shim.log();
            let mut errors: Vec<&str> = log
                .lines()
                .filter_map(|l| l.split("] error: ").nth(1))
                .collect();
            let all = errors.len();
            errors.sort();
            errors.dedup();
            assert_eq!(all, errors.len(), "{what}: a cause logged twice:\n{log}");
            assert!(
                !errors.is_empty(),
                "{what}: the log does not say why:\n{log}"
            );
        }
    }
}

/// Issue 13 item 6 for SCGI: a 5 MiB upload that cannot be spooled (no
/// usable `$TMPDIR`) is answered 503, and the log says so once.
#[test]
fn scgi_upload_that_cannot_be_spooled_gets_a_503_and_one_log_line() {
    let dir = common::TempDir::new("scgi-nospool");
    let settings = dir.join(&format!("{}.toml", common::SITE));
    let script = dir.script(
        "app.sh",
        &format!("sleep 1\ncat > /dev/null\n{}", common::HELLO_SCRIPT),
    );
    let missing = dir.join("missing");
    let shim = common::Shim::launch(
        dir,
        common::Launch {
            settings: Some(common::settings_with_timeout(&script, 10)),
            args: Some(vec![
                "serve".into(),
                settings.into(),
                "protocol=scgi".into(),
                "method=single".into(),
                "daemonize=false".into(),
            ]),
            env: vec![("TMPDIR".into(), missing.display().to_string())],
            ..common::Launch::default()
        },
    );
    let body = common::prng_bytes(5 * 1024 * 1024, 5);
    for _ in 0..2 {
        let message = scgi_message(
            &[
                ("CONTENT_LENGTH", body.len().to_string()),
                ("SCGI", "1".into()),
                ("REQUEST_METHOD", "POST".into()),
                ("REQUEST_URI", "/up".into()),
            ],
            &body,
        );
        let mut conn = shim.connect();
        let mut writer = conn.try_clone();
        let out = thread::scope(|s| {
            s.spawn(move || {
                let _ = writer.write_all(&message);
            });
            let mut out = Vec::new();
            let _ = conn.read_to_end(&mut out);
            out
        });
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("Status: 503 Service Unavailable\r\n")
                && text.contains("cannot take the request body"),
            "{text}\n{}",
            shim.log()
        );
    }
    let log = shim.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("] error: ") || l.contains("] warn: "))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(
            "scgi: POST /up: cannot hold the request body: cannot create a temporary file in "
        ) && lines[0].ends_with("answering 503"),
        "{log}"
    );
}

//! End-to-end: `fcgi-shim serve protocol=ajp` behind a private Apache with
//! mod_proxy_ajp, configured with `server-examples/apache-proxy-ajp.conf`
//! (with and without `secret=`): the Django project's `reverse()` URLs, a
//! query string, a 1 MiB POST echoed byte for byte, a response streamed in
//! pieces, the secret enforced, and a malformed connection closed with a log
//! line while the next is served.
//!
//! Needs Debian's apache2 (mod_proxy_ajp); the Django test needs
//! FCGI_SHIM_TEST_PYTHON.

mod apache_support;
mod common;
mod servers_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use apache_support::{ApacheInstance, TempDir, free_loopback_port};
use servers_support::{Endpoint, Site, repo_file};

const SECRET: &str = "tOp-s3cret";

/// A CGI program: /app/stream writes two pieces a second apart, /app/echo echoes the
/// body, anything else prints what it was given.
const APP: &str = r#"#!/bin/sh
if [ "$PATH_INFO" = /app/stream ]; then
    printf 'Content-Type: text/plain\r\n\r\nfirst piece\n'
    sleep 1
    printf 'second piece\n'
    exit 0
fi
if [ "$PATH_INFO" = /app/echo ]; then
    printf 'Content-Type: application/octet-stream\r\n\r\n'
    exec cat
fi
printf 'Content-Type: text/plain\r\n\r\n'
printf 'SCRIPT_NAME=%s\nPATH_INFO=%s\nQUERY_STRING=%s\nREQUEST_METHOD=%s\nREMOTE_ADDR=%s\n' \
    "$SCRIPT_NAME" "$PATH_INFO" "$QUERY_STRING" "$REQUEST_METHOD" "$REMOTE_ADDR"
"#;

/// Apache with the AJP example (`secret=` kept or taken out) to `port`.
fn apache_ajp(port: u16, with_secret: bool) -> (ApacheInstance, TempDir) {
    assert!(apache_support::apache_available_or_fail());
    let root = TempDir::new("fcgi-shim-ajp-www");
    let mut example = repo_file("server-examples/apache-proxy-ajp.conf");
    if !with_secret {
        example = example.replace(" secret=@AJP_SECRET@", "");
    }
    let mut conf = String::new();
    for m in ["proxy", "proxy_ajp"] {
        conf.push_str(&format!(
            "LoadModule {m}_module {}/mod_{m}.so\n",
            apache_support::APACHE_MODULES
        ));
    }
    conf.push_str(&servers_support::render(
        &example,
        &[
            ("SHIM_PORT", port.to_string()),
            ("AJP_SECRET", SECRET.to_string()),
        ],
    ));
    (ApacheInstance::start(root.path(), &conf), root)
}

/// `script_name = "/app"` added to the `[app]` table of `site`.
fn with_script_name(site: &Site) {
    let settings = std::fs::read_to_string(&site.settings).expect("settings");
    apache_support::write_file(
        &site.settings,
        format!("{settings}script_name = \"/app\"\n"),
        0o644,
    );
}

fn cgi_site() -> Site {
    let site = Site::new();
    apache_support::write_file(&site.path("app.sh"), APP, 0o755);
    site
}

fn serve_ajp(site: &Site, port: u16, method: &str) -> servers_support::ServeShim {
    site.serve(
        &[
            "protocol=ajp".into(),
            format!("method={method}"),
            format!("port={port}"),
            format!("ajp_secret={SECRET}"),
        ],
        Endpoint::Tcp(port),
    )
}

#[test]
fn cgi_behind_apache_mod_proxy_ajp() {
    let site = cgi_site();
    let port = free_loopback_port();
    let shim = serve_ajp(&site, port, "prefork");
    let (apache, _root) = apache_ajp(port, true);

    // A GET with a query string. A CGI program has no `script_name`: AJP
    // sends no SCRIPT_NAME, so it is "" and the whole path is PATH_INFO.
    for _ in 0..3 {
        let r = apache.get("/app/hello/world?x=1&y=%20z");
        assert_eq!(
            r.status,
            200,
            "{}\n{}\n{}",
            r.summary(),
            apache.logs_for_humans(),
            shim.log_text()
        );
        let text = r.text();
        for want in [
            "SCRIPT_NAME=\n",
            "PATH_INFO=/app/hello/world\n",
            "QUERY_STRING=x=1&y=%20z\n",
            "REQUEST_METHOD=GET\n",
            "REMOTE_ADDR=127.0.0.1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    // A 1 MiB POST, byte-identical back (many GET_BODY_CHUNKs, many
    // SEND_BODY_CHUNKs).
    let body = common::prng_bytes(1 << 20, 15);
    let r = apache.request("POST", "/app/echo", &[], Some(&body));
    assert_eq!(r.status, 200, "POST: {}\n{}", r.summary(), shim.log_text());
    assert!(
        r.body == body,
        "echoed body differs ({} bytes back)",
        r.body.len()
    );

    // A streamed response: the first piece arrives before the second is written.
    let mut s = TcpStream::connect(("127.0.0.1", apache.port())).expect("connect apache");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /app/stream HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut first_at = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("read the streamed response");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if first_at.is_none() && text.contains("first piece") {
            first_at = Some(start.elapsed());
            assert!(
                !text.contains("second piece"),
                "both pieces came at once:\n{text}"
            );
        }
    }
    let total = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("second piece"), "{text}");
    let first_at = first_at.expect("first piece");
    assert!(
        total - first_at >= Duration::from_millis(700),
        "the first piece came at {first_at:?}, the end at {total:?}"
    );

    // Malformed AJP straight to the shim: that connection is closed with a
    // log line, the next request through Apache is served.
    let mut bad = TcpStream::connect(("127.0.0.1", port)).expect("connect shim");
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    assert!(rest.is_empty(), "answered {rest:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shim
        .log_text()
        .contains("ajp: closing the connection from 127.0.0.1")
    {
        assert!(
            Instant::now() < deadline,
            "no log line:\n{}",
            shim.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        shim.log_text().contains("not 0x12 0x34"),
        "{}",
        shim.log_text()
    );
    let r = apache.get("/app/after?bad=1");
    assert_eq!(r.status, 200, "{}\n{}", r.summary(), shim.log_text());
    assert!(r.text().contains("PATH_INFO=/app/after\n"), "{}", r.text());
}

#[test]
fn a_proxy_without_the_secret_is_refused_and_logged() {
    let site = cgi_site();
    let port = free_loopback_port();
    let shim = serve_ajp(&site, port, "threaded");
    let (apache, _root) = apache_ajp(port, false);
    let r = apache.get("/app/hello");
    assert_eq!(r.status, 403, "{}\n{}", r.summary(), shim.log_text());
    assert!(!r.text().contains("SCRIPT_NAME"), "{}", r.text());
    let log = shim.log_text();
    assert!(
        log.contains("ajp: refused a request from 127.0.0.1 with no secret"),
        "{log}"
    );
    // With the secret the same shim serves.
    let (apache, _root2) = apache_ajp(port, true);
    let r = apache.get("/app/hello");
    assert_eq!(r.status, 200, "{}\n{}", r.summary(), shim.log_text());
}

#[test]
fn django_behind_apache_mod_proxy_ajp() {
    let site = Site::django();
    with_script_name(&site);
    let port = free_loopback_port();
    let shim = serve_ajp(&site, port, "threaded");
    let (apache, _root) = apache_ajp(port, true);
    let r = apache.get("/app/");
    assert_eq!(
        r.status,
        200,
        "{}\n{}\n{}",
        r.summary(),
        apache.logs_for_humans(),
        shim.log_text()
    );
    let text = r.text();
    for want in [
        "django index\n",
        "login url: /app/login/\n",
        "script_name: '/app'\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let login = apache.get("/app/login/?next=/app/");
    assert_eq!(login.status, 200, "{}", login.summary());
    assert!(
        login.text().contains("action=\"/app/login/\""),
        "{}",
        login.text()
    );
    let missing = apache.get("/app/no-such-page/");
    assert_eq!(missing.status, 404, "{}", missing.summary());
}

//! End-to-end: a private Apache 2.4 + mod_fcgid runs fcgi-shim exactly as a
//! shared-hosting user would set it up (the `.htaccess` files from
//! `htaccess-examples/`, `mysite.fcgi` + `mysite.toml` in the web root), and
//! the tests look at what that user sees: status, body bytes, Apache's error
//! log, and the process list.
//!
//! Needs Debian's `apache2` and `libapache2-mod-fcgid` (`.ci/run` installs
//! them). Without them these tests fail; `FCGI_SHIM_SKIP_APACHE=1` skips them.
//! `FCGI_SHIM_E2E_BIN=/path/to/binary` tests another build (e.g. a release
//! build) instead of `target/debug/fcgi-shim`.
//!
//! Each test has its own web root and its own Apache (they run in parallel);
//! the checks inside a test share that Apache and are all run and reported
//! even when an earlier one fails.

mod apache_support;

use std::fmt::Write as _;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apache_support::{
    ApacheInstance, HttpResponse, TempDir, apache_available_or_fail, copy_file,
    kill_processes_matching, wait_no_processes_matching, write_file,
};

/// The shim's CGI timeout in these tests, seconds.
const CGI_TIMEOUT: u64 = 2;

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The binary under test.
fn shim_binary() -> PathBuf {
    match std::env::var_os("FCGI_SHIM_E2E_BIN") {
        Some(p) => {
            eprintln!("FCGI_SHIM_E2E_BIN: testing {}", Path::new(&p).display());
            PathBuf::from(p)
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_fcgi-shim")),
    }
}

/// The CGI program behind `mysite.fcgi`: switches on PATH_INFO.
const APP_CGI: &str = r#"#!/bin/sh
# CGI/1.1 program for fcgi-shim's end-to-end tests; switches on PATH_INFO.
case "$PATH_INFO" in
/echo)
    printf 'Content-Type: application/octet-stream\r\n\r\n'
    exec cat ;;
/missing)
    printf 'Status: 404 Not Found\nContent-Type: text/plain\n\nno such thing\n' ;;
/local-redirect)
    printf 'Location: /other\n\n' ;;
/other)
    printf 'Content-Type: text/plain\n\nthis is /other\n' ;;
/client-redirect)
    printf 'Location: http://example.com/x\n\n' ;;
/inject-status)
    printf 'Status: 200 OK\rSet-Cookie: evil=1\r\nContent-Type: text/plain\r\n\r\nhello\n' ;;
/inject-value)
    printf 'Content-Type: text/plain\r\nX-A: a\rSet-Cookie: evil=1\r\n\r\nhello\n' ;;
/bad-name)
    printf 'Content-Type: text/plain\r\nBad Name: x\r\n\r\nhello\n' ;;
/latin1)
    printf 'Content-Type: text/plain\r\nContent-Disposition: attachment; filename="caf\351.txt"\r\n\r\nhello\n' ;;
/segv)
    ulimit -c 0
    echo "boom-segv: about to crash" >&2
    kill -SEGV $$ ;;
/exit3)
    echo "boom-exit3: giving up" >&2
    exit 3 ;;
/sleep)
    # A grandchild in the same process group, and the program itself.
    "@BIN@/sleep" 31337 &
    exec "@BIN@/sleep" 31338 ;;
*)
    printf 'Content-Type: text/plain\n\n'
    env ;;
esac
"#;

/// One web root + one Apache. Everything lives in two fresh temp dirs, so
/// "no process refers to them" is a precise clean-up check.
struct Site {
    dir: TempDir,
    www: PathBuf,
    bin: PathBuf,
    apache: Option<ApacheInstance>,
}

impl Site {
    /// `None` when Apache tests are skipped explicitly.
    fn new() -> Option<Site> {
        if !apache_available_or_fail() {
            return None;
        }
        let dir = TempDir::new("fcgi-shim-e2e");
        let www = dir.mkdir("www");
        let bin = dir.mkdir("bin");
        // A copy of sleep, so the timeout test can find it by path.
        copy_file(Path::new("/bin/sleep"), &bin.join("sleep"), 0o755);
        write_file(
            &bin.join("app.cgi"),
            APP_CGI.replace("@BIN@", &bin.display().to_string()),
            0o755,
        );
        Some(Site {
            dir,
            www,
            bin,
            apache: None,
        })
    }

    /// The settings every mod_fcgid site here uses.
    fn app_toml(&self) -> String {
        format!(
            "[app]\n\
             kind = \"cgi\"\n\
             command = [\"{}\"]\n\
             timeout = {CGI_TIMEOUT}\n\
             env = {{ GREETING = \"hi\" }}\n\
             \n\
             [log]\n\
             level = \"info\"\n",
            self.bin.join("app.cgi").display()
        )
    }

    /// `.htaccess` = htaccess-examples/mod_fcgid.htaccess, verbatim.
    fn install_htaccess(&self, dir: &Path) {
        write_file(
            &dir.join(".htaccess"),
            repo_file("htaccess-examples/mod_fcgid.htaccess"),
            0o644,
        );
    }

    /// The documented default form: mysite.fcgi is the binary, settings in
    /// the sibling mysite.toml.
    fn sibling_toml_form(self) -> Site {
        self.install_htaccess(&self.www);
        copy_file(&shim_binary(), &self.www.join("mysite.fcgi"), 0o755);
        write_file(&self.www.join("mysite.toml"), self.app_toml(), 0o644);
        self
    }

    /// The shebang form: mysite.fcgi is a text file `#!<binary>` + TOML.
    fn shebang_form(self) -> Site {
        self.install_htaccess(&self.www);
        let shim = self.bin.join("fcgi-shim");
        copy_file(&shim_binary(), &shim, 0o755);
        let text = format!("#!{}\n{}", shim.display(), self.app_toml());
        write_file(&self.www.join("mysite.fcgi"), text, 0o755);
        self
    }

    fn start(self) -> Site {
        self.start_with("")
    }

    fn start_with(mut self, extra_conf: &str) -> Site {
        self.apache = Some(ApacheInstance::start(&self.www, extra_conf));
        self
    }

    fn apache(&self) -> &ApacheInstance {
        self.apache.as_ref().expect("Apache started")
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.apache().get(path)
    }

    /// Stops Apache and checks that nothing it started is left; then fails
    /// the test if any check failed.
    fn finish(mut self, mut checks: Checks) {
        let needles = [
            self.dir.path().display().to_string(),
            self.apache().dir().display().to_string(),
        ];
        let t0 = Instant::now();
        let killed = self.apache.as_mut().expect("Apache started").stop();
        let took = t0.elapsed();
        // mod_fcgid sends SIGTERM, and SIGKILL about 8 s later to a process
        // that ignored it ("still did not exit, terminating forcefully").
        let log = self.apache().error_log();
        let forced: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("terminating forcefully") || l.contains("get stop signal 9"))
            .collect();
        checks.record(
            "at shutdown the FastCGI processes exit on SIGTERM (mod_fcgid never SIGKILLs them)",
            if forced.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "Apache took {took:?} to stop; mod_fcgid said:\n{}",
                    forced.join("\n")
                ))
            },
        );
        checks.record(
            "Apache and its FastCGI processes stop on SIGTERM within the bound",
            if killed.is_empty() {
                Ok(())
            } else {
                Err(format!("had to SIGKILL: {killed:?}"))
            },
        );
        for needle in &needles {
            let left = wait_no_processes_matching(needle, Duration::from_secs(2));
            let _ = kill_processes_matching(needle);
            checks.record(
                &format!("after stop(), no process refers to {needle}"),
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still running: {left:#?}"))
                },
            );
        }
        checks.conclude();
    }
}

/// Runs named checks, keeps going after a failure, fails at the end with the
/// list of everything that failed.
struct Checks {
    test: &'static str,
    failures: Vec<String>,
    passed: Vec<String>,
}

impl Checks {
    fn new(test: &'static str) -> Checks {
        Checks {
            test,
            failures: Vec::new(),
            passed: Vec::new(),
        }
    }

    fn run(&mut self, name: &str, f: impl FnOnce()) {
        let result = catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".to_string())
        });
        self.record(name, result);
    }

    fn record(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                eprintln!("[{}] ok: {name}", self.test);
                self.passed.push(name.to_string());
            }
            Err(msg) => {
                eprintln!("[{}] FAILED: {name}\n{msg}", self.test);
                self.failures.push(format!("{name}:\n{msg}"));
            }
        }
    }

    fn conclude(self) {
        if !self.failures.is_empty() {
            let mut msg = format!(
                "{} of {} checks failed in {}:\n",
                self.failures.len(),
                self.failures.len() + self.passed.len(),
                self.test
            );
            for f in &self.failures {
                let _ = writeln!(msg, "\n* {f}");
            }
            panic!("{msg}");
        }
    }
}

fn assert_status(r: &HttpResponse, want: u16, what: &str) {
    assert_eq!(
        r.status,
        want,
        "{what}: expected status {want}, got:\n{}",
        r.summary()
    );
}

/// Lines of `body` equal to `line`.
fn has_line(body: &str, line: &str) -> bool {
    body.lines().any(|l| l == line)
}

// ---------------------------------------------------------------------------
// Request/response basics (sibling mysite.toml)
// ---------------------------------------------------------------------------

fn check_env(site: &Site, checks: &mut Checks) {
    checks.run(
        "GET /hello/world?x=1: PATH_INFO, QUERY_STRING, configured env",
        || {
            let r = site.get("/hello/world?x=1");
            assert_status(&r, 200, "env page");
            let body = r.text();
            for line in [
                "PATH_INFO=/hello/world",
                "QUERY_STRING=x=1",
                "REQUEST_METHOD=GET",
                "GREETING=hi",
            ] {
                assert!(has_line(&body, line), "no line {line:?} in:\n{body}");
            }
        },
    );
}

fn check_not_found(site: &Site, checks: &mut Checks) {
    checks.run("`Status: 404 Not Found` from the program -> 404", || {
        let r = site.get("/missing");
        assert_status(&r, 404, "Status: 404");
        assert_eq!(r.text(), "no such thing\n", "{}", r.summary());
    });
}

/// 1 MiB of xorshift bytes (contains 0x00 and 0xff).
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn sibling_toml_site() {
    let Some(site) = Site::new() else { return };
    let site = site.sibling_toml_form().start();
    let mut checks = Checks::new("sibling_toml_site");

    check_env(&site, &mut checks);
    check_not_found(&site, &mut checks);

    checks.run("1 MiB POST body echoed back byte-identical", || {
        let sent = pattern(1 << 20);
        assert!(sent.contains(&0x00) && sent.contains(&0xff));
        let r = site.apache().request(
            "POST",
            "/echo",
            &[("Content-Type", "application/octet-stream")],
            Some(&sent),
        );
        assert_status(&r, 200, "echo");
        assert_eq!(
            r.header("Content-Type"),
            Some("application/octet-stream"),
            "{}",
            r.summary()
        );
        if r.body != sent {
            let first_diff = r.body.iter().zip(&sent).position(|(a, b)| a != b);
            panic!(
                "echoed body differs: sent {} bytes, got {}; first differing byte at {:?}",
                sent.len(),
                r.body.len(),
                first_diff
            );
        }
    });

    checks.run(
        "local redirect `Location: /other` -> Apache serves /other with 200",
        || {
            let r = site.get("/local-redirect");
            assert_status(&r, 200, "local redirect");
            assert_eq!(r.text(), "this is /other\n", "{}", r.summary());
            assert_eq!(r.header("Location"), None, "{}", r.summary());
        },
    );

    checks.run(
        "client redirect `Location: http://example.com/x` -> 302",
        || {
            let r = site.get("/client-redirect");
            assert_status(&r, 302, "client redirect");
            assert_eq!(
                r.header("Location"),
                Some("http://example.com/x"),
                "{}",
                r.summary()
            );
        },
    );

    site.finish(checks);
}

#[test]
fn shebang_settings_form() {
    let Some(site) = Site::new() else { return };
    let site = site.shebang_form().start();
    let mut checks = Checks::new("shebang_settings_form");
    checks.run("there is no mysite.toml", || {
        assert!(!site.www.join("mysite.toml").exists());
    });
    check_env(&site, &mut checks);
    check_not_found(&site, &mut checks);
    checks.run("small POST echoed", || {
        let r = site
            .apache()
            .request("POST", "/echo", &[], Some(b"a=1&b=\x00\xff"));
        assert_status(&r, 200, "echo");
        assert_eq!(r.body, b"a=1&b=\x00\xff", "{}", r.summary());
    });
    site.finish(checks);
}

// ---------------------------------------------------------------------------
// Secrets: the shipped .htaccess never serves settings or backups
// ---------------------------------------------------------------------------

/// What the settings of these tests hold that no visitor may ever read.
const SECRET: &str = "s3cret-db-password-7f3a";

/// Settings and the names editors and FTP clients leave beside them.
const BACKUP_NAMES: &[&str] = &[
    "mysite.toml~",
    "mysite.fcgi~",
    "mysite.toml.bak",
    "mysite.toml.orig",
    "mysite.toml.old",
    "mysite.toml.save",
    ".mysite.toml.swp",
    ".mysite.fcgi.swo",
    "#mysite.toml#",
];

/// `GET path` answers 403 and nothing of the file.
fn check_refused(site: &Site, checks: &mut Checks, path: &str, needle: &str) {
    checks.run(&format!("GET {path}: 403, the file is not served"), || {
        let r = site.get(&path.replace('#', "%23"));
        assert!(
            !String::from_utf8_lossy(&r.body).contains(needle),
            "the body holds the file:\n{}",
            r.summary()
        );
        assert_status(&r, 403, path);
    });
}

/// `Authorization` reaches the application with the shipped .htaccess, and
/// (with CGIPassAuth) `Proxy-Authorization`; nothing is invented when the
/// visitor sends neither.
fn check_authorization(site: &Site, checks: &mut Checks, proxy_too: bool) {
    checks.run("Authorization reaches the application", || {
        let r = site.apache().request(
            "GET",
            "/hello",
            &[
                ("Authorization", "Basic dTpw"),
                ("Proxy-Authorization", "Basic cHJveHk6cHc="),
            ],
            None,
        );
        assert_status(&r, 200, "with Authorization");
        let body = r.text();
        assert!(has_line(&body, "HTTP_AUTHORIZATION=Basic dTpw"), "{body}");
        if proxy_too {
            let line = "HTTP_PROXY_AUTHORIZATION=Basic cHJveHk6cHc=";
            assert!(has_line(&body, line), "{body}");
        }
        let r = site.get("/hello");
        assert_status(&r, 200, "without Authorization");
        assert!(
            !r.text()
                .lines()
                .any(|l| l.starts_with("HTTP_AUTHORIZATION=")),
            "{}",
            r.summary()
        );
    });
}

/// The two-file form with a secret in mysite.toml, every backup name beside
/// it and an old copy of the executable, behind `htaccess` (a file of
/// htaccess-examples/, as shipped) and `extra_conf`.
fn never_served_two_file_form(test: &'static str, htaccess: &str, extra_conf: &str) {
    let Some(site) = Site::new() else { return };
    let site = site.sibling_toml_form();
    write_file(&site.www.join(".htaccess"), repo_file(htaccess), 0o644);
    let toml = site.app_toml().replace(
        "GREETING = \"hi\"",
        &format!("GREETING = \"hi\", SECRET_KEY = \"{SECRET}\""),
    );
    write_file(&site.www.join("mysite.toml"), &toml, 0o644);
    for name in BACKUP_NAMES {
        write_file(&site.www.join(name), &toml, 0o644);
    }
    // An old copy of the executable: Apache's AddHandler would run it as a
    // second application (multi-extension rule); the shipped files must not.
    copy_file(&shim_binary(), &site.www.join("mysite.fcgi.bak"), 0o755);
    let www = site.www.display().to_string();
    let site = site.start_with(&extra_conf.replace("@WWW@", &www));
    let mut checks = Checks::new(test);
    checks.run("the application still sees its secret setting", || {
        let r = site.get("/hello");
        assert_status(&r, 200, "app");
        let line = format!("SECRET_KEY={SECRET}");
        assert!(has_line(&r.text(), &line), "{}", r.summary());
    });
    check_refused(&site, &mut checks, "/mysite.toml", SECRET);
    for name in BACKUP_NAMES {
        check_refused(&site, &mut checks, &format!("/{name}"), SECRET);
    }
    check_refused(&site, &mut checks, "/mysite.fcgi.bak", "ELF");
    checks.run("mysite.fcgi.bak was never started", || {
        let log = site.apache().error_log();
        // mod_fcgid logs "server /path/mysite.fcgi.bak(PID) started".
        assert!(!log.contains("mysite.fcgi.bak("), "{log}");
        let bak = site.www.join("mysite.fcgi.bak").display().to_string();
        let running = apache_support::processes_matching(&bak);
        assert!(running.is_empty(), "running: {running:?}");
    });
    check_authorization(&site, &mut checks, htaccess.ends_with("mod_fcgid.htaccess"));
    site.finish(checks);
}

#[test]
fn settings_and_backups_are_never_served_two_file_form() {
    never_served_two_file_form(
        "settings_and_backups_are_never_served_two_file_form",
        "htaccess-examples/mod_fcgid.htaccess",
        "",
    );
}

/// A host that allows FileInfo and Options but not AuthConfig, with the
/// file written for it.
#[test]
fn no_authconfig_htaccess_never_serves_settings_either() {
    never_served_two_file_form(
        "no_authconfig_htaccess_never_serves_settings_either",
        "htaccess-examples/no-authconfig.htaccess",
        "<Directory \"@WWW@\">\n    AllowOverride FileInfo Options\n</Directory>\n",
    );
}

#[test]
fn shebang_settings_are_run_never_shown() {
    let Some(site) = Site::new() else { return };
    let site = site.shebang_form();
    let shebang = fs::read_to_string(site.www.join("mysite.fcgi")).expect("read mysite.fcgi");
    let shebang = shebang.replace(
        "GREETING = \"hi\"",
        &format!("GREETING = \"hi\", SECRET_KEY = \"{SECRET}\""),
    );
    write_file(&site.www.join("mysite.fcgi"), &shebang, 0o755);
    write_file(&site.www.join("mysite.fcgi.bak"), &shebang, 0o755);
    write_file(&site.www.join("mysite.fcgi~"), &shebang, 0o644);
    let site = site.start();
    let mut checks = Checks::new("shebang_settings_are_run_never_shown");
    checks.run("GET /mysite.fcgi runs the application", || {
        let r = site.get("/mysite.fcgi");
        assert_status(&r, 200, "mysite.fcgi");
        assert!(!r.text().contains("[app]"), "{}", r.summary());
        assert!(has_line(&r.text(), "GREETING=hi"), "{}", r.summary());
    });
    check_refused(&site, &mut checks, "/mysite.fcgi.bak", SECRET);
    check_refused(&site, &mut checks, "/mysite.fcgi~", SECRET);
    check_authorization(&site, &mut checks, true);

    // The same web root under an Apache whose FastCGI module is missing:
    // the file would be sent as text; the shipped .htaccess refuses it.
    let mut bare = ApacheInstance::start_without_fastcgi(&site.www, "");
    checks.run(
        "without mod_fcgid: GET /mysite.fcgi is 403, not the file",
        || {
            let r = bare.get("/mysite.fcgi");
            assert!(!r.text().contains(SECRET), "{}", r.summary());
            assert_status(&r, 403, "no FastCGI module");
            let r = bare.get("/anything");
            assert!(!r.text().contains(SECRET), "{}", r.summary());
        },
    );
    bare.stop();
    site.finish(checks);
}

// ---------------------------------------------------------------------------
// Failures: crash before headers, timeout
// ---------------------------------------------------------------------------

/// Error-log lines mentioning "before sending headers".
fn before_headers_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("before sending headers"))
        .map(str::to_string)
        .collect()
}

/// `true` if `word` is a whole token of `line` after its `[...]` prefix.
fn mentions_token(line: &str, word: &str) -> bool {
    let msg = line.split_once("] ").map_or(line, |(_, m)| m);
    msg.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|t| t.eq_ignore_ascii_case(word))
}

#[test]
fn program_dying_before_headers_is_502_and_one_log_line() {
    let Some(site) = Site::new() else { return };
    let site = site.sibling_toml_form().start();
    let mut checks = Checks::new("program_dying_before_headers_is_502_and_one_log_line");
    let apache = site.apache();

    checks.run(
        "SIGSEGV before headers -> 502 + exactly one log line",
        || {
            let r = site.get("/segv");
            assert_status(&r, 502, "crash");
            apache.wait_for_error_log(Duration::from_secs(3), |l| {
                !before_headers_lines(l).is_empty()
            });
            // Give a duplicate line time to show up.
            std::thread::sleep(Duration::from_millis(300));
            let log = apache.error_log();
            let lines = before_headers_lines(&log);
            assert_eq!(
                lines.len(),
                1,
                "want exactly one 'before sending headers' line, got {lines:#?}"
            );
            let line = &lines[0];
            let lower = line.to_ascii_lowercase();
            assert!(
                lower.contains("segv") || lower.contains("signal 11"),
                "the line does not name the signal: {line}"
            );
            assert!(
                log.contains("boom-segv"),
                "the program's stderr is not in the error log"
            );
        },
    );

    checks.run(
        "exit 3 before headers -> 502 + exactly one more log line",
        || {
            let r = site.get("/exit3");
            assert_status(&r, 502, "exit 3");
            apache.wait_for_error_log(Duration::from_secs(3), |l| {
                before_headers_lines(l)
                    .iter()
                    .any(|x| mentions_token(x, "3"))
            });
            std::thread::sleep(Duration::from_millis(300));
            let log = apache.error_log();
            let lines: Vec<String> = before_headers_lines(&log)
                .into_iter()
                .filter(|l| !l.to_ascii_lowercase().contains("segv"))
                .collect();
            assert_eq!(
                lines.len(),
                1,
                "want exactly one 'before sending headers' line for exit 3, got {lines:#?}"
            );
            assert!(
                mentions_token(&lines[0], "3"),
                "the line does not give the exit status 3: {}",
                lines[0]
            );
            assert!(
                log.contains("boom-exit3"),
                "the program's stderr is not in the error log"
            );
        },
    );

    checks.run(
        "the shim's log lines carry the documented `[fcgi-shim mysite PID]` prefix",
        || {
            let lines = before_headers_lines(&apache.error_log());
            assert!(!lines.is_empty(), "no 'before sending headers' line at all");
            for line in &lines {
                assert!(
                    line.contains("[fcgi-shim mysite "),
                    "unexpected log line shape: {line}"
                );
            }
        },
    );

    checks.run("the shim still serves after the crashes", || {
        let r = site.get("/hello");
        assert_status(&r, 200, "after crashes");
        assert!(has_line(&r.text(), "PATH_INFO=/hello"), "{}", r.summary());
    });

    site.finish(checks);
}

/// Issue 13: what a program writes in its head cannot become a header of its
/// own at the visitor, and header bytes that are not UTF-8 arrive as written.
#[test]
fn hostile_response_heads_are_502_and_latin1_is_byte_exact() {
    let Some(site) = Site::new() else { return };
    let site = site.sibling_toml_form().start();
    let mut checks = Checks::new("hostile_response_heads_are_502_and_latin1_is_byte_exact");
    let apache = site.apache();
    let program = site.bin.join("app.cgi").display().to_string();
    for (path, message) in [
        (
            "/inject-status",
            r#"invalid Status line "200 OK\rSet-Cookie: evil=1""#,
        ),
        (
            "/inject-value",
            r#"invalid value of response header "X-A": "a\rSet-Cookie: evil=1""#,
        ),
        ("/bad-name", r#"invalid response header name "Bad Name""#),
    ] {
        checks.run(
            &format!("{path} -> 502, no Set-Cookie, one log line"),
            || {
                let r = site.get(path);
                assert_status(&r, 502, path);
                assert!(
                    r.header("Set-Cookie").is_none() && !r.summary().contains("evil"),
                    "{}",
                    r.summary()
                );
                let line = format!("cgi: {program}: {message} (502)");
                apache.wait_for_error_log(Duration::from_secs(3), |l| l.contains(&line));
                let log = apache.error_log();
                let found: Vec<&str> = log.lines().filter(|l| l.contains(&line)).collect();
                assert_eq!(found.len(), 1, "want one line {line:?} in\n{log}");
                assert!(found[0].contains("[fcgi-shim mysite "), "{}", found[0]);
            },
        );
    }
    checks.run("a latin-1 filename arrives byte-exact", || {
        let r = site.get("/latin1");
        assert_status(&r, 200, "latin1");
        // The harness keeps header bytes one char per byte.
        let got: Option<Vec<u8>> = r
            .header("Content-Disposition")
            .map(|v| v.chars().map(|c| c as u32 as u8).collect());
        assert_eq!(
            got.as_deref(),
            Some(&b"attachment; filename=\"caf\xe9.txt\""[..]),
            "{}",
            r.summary()
        );
        assert_eq!(r.body, b"hello\n");
    });
    site.finish(checks);
}

#[test]
fn program_past_timeout_is_504_and_killed() {
    let Some(site) = Site::new() else { return };
    let site = site.sibling_toml_form().start();
    let mut checks = Checks::new("program_past_timeout_is_504_and_killed");
    let marker = site.bin.join("sleep").display().to_string();

    checks.run(
        &format!("program still running after timeout = {CGI_TIMEOUT} -> 504"),
        || {
            let t0 = Instant::now();
            let r = site.get("/sleep");
            let took = t0.elapsed();
            assert_status(&r, 504, "timeout");
            assert!(
                took >= Duration::from_secs(CGI_TIMEOUT)
                    && took < Duration::from_secs(CGI_TIMEOUT + 5),
                "answered after {took:?}, expected about {CGI_TIMEOUT} s"
            );
        },
    );

    checks.run(
        "after the 504, the program and its process group are gone (within 3 s)",
        || {
            let left = wait_no_processes_matching(&marker, Duration::from_secs(3));
            assert!(left.is_empty(), "still running: {left:#?}");
        },
    );

    checks.run("a log line says \"timed out\"", || {
        let log = site
            .apache()
            .wait_for_error_log(Duration::from_secs(3), |l| l.contains("timed out"));
        assert!(log.contains("timed out"), "no 'timed out' in the error log");
    });

    checks.run("the shim still serves after the timeout", || {
        let r = site.get("/hello");
        assert_status(&r, 200, "after timeout");
    });

    site.finish(checks);
}

// ---------------------------------------------------------------------------
// cgi-bin: FcgidWrapper + root
// ---------------------------------------------------------------------------

#[test]
fn cgi_bin_directory_with_root() {
    let Some(site) = Site::new() else { return };
    let mut checks = Checks::new("cgi_bin_directory_with_root");

    let cgi_bin = site.dir.mkdir("www/cgi-bin");
    let outside = site.dir.mkdir("outside");
    let markers = site.dir.mkdir("markers");
    // The program outside root would leave a file here if it ever ran.
    apache_support::chmod(&markers, 0o777);
    let ran_marker = markers.join("evil-ran");

    let shim = site.bin.join("fcgi-shim");
    copy_file(&shim_binary(), &shim, 0o755);
    let conf = site.dir.mkdir("conf");
    let settings = conf.join("cgi.toml");
    write_file(
        &settings,
        format!(
            "[app]\nkind = \"cgi\"\nroot = \"{}\"\ntimeout = {CGI_TIMEOUT}\n",
            cgi_bin.display()
        ),
        0o644,
    );
    let htaccess = repo_file("htaccess-examples/cgi-bin.htaccess")
        .replace("@SHIM@", &shim.display().to_string())
        .replace("@SETTINGS@", &settings.display().to_string());
    write_file(&cgi_bin.join(".htaccess"), htaccess, 0o644);
    write_file(
        &cgi_bin.join("good.cgi"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\ngood cgi\\n'\n\
         echo \"SCRIPT_NAME=$SCRIPT_NAME\"\n",
        0o755,
    );
    write_file(
        &outside.join("evil.cgi"),
        format!(
            "#!/bin/sh\n: > '{}'\nprintf 'Content-Type: text/plain\\n\\nSHOULD NOT RUN\\n'\n",
            ran_marker.display()
        ),
        0o755,
    );
    std::os::unix::fs::symlink(outside.join("evil.cgi"), cgi_bin.join("evil.cgi"))
        .expect("symlink");
    // An editor's backup of a program: neither run (AddHandler's
    // multi-extension rule would) nor shown.
    write_file(
        &cgi_bin.join("good.cgi.bak"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nBACKUP RAN\\n'\n",
        0o755,
    );

    let site = site.start();

    checks.run("good.cgi.bak -> 403, neither run nor shown", || {
        let r = site.get("/cgi-bin/good.cgi.bak");
        assert_status(&r, 403, "backup of a program");
        assert!(!r.text().contains("BACKUP RAN"), "{}", r.summary());
        assert!(!r.text().contains("#!/bin/sh"), "{}", r.summary());
    });

    checks.run("a .cgi inside root answers 200", || {
        let r = site.get("/cgi-bin/good.cgi");
        assert_status(&r, 200, "good.cgi");
        let body = r.text();
        assert!(has_line(&body, "good cgi"), "{}", r.summary());
        assert!(
            has_line(&body, "SCRIPT_NAME=/cgi-bin/good.cgi"),
            "{}",
            r.summary()
        );
    });

    checks.run(
        "a symlink to a .cgi outside root -> 403, not run, logged 'outside root'",
        || {
            let r = site.get("/cgi-bin/evil.cgi");
            assert_status(&r, 403, "symlink outside root");
            assert!(!r.text().contains("SHOULD NOT RUN"), "{}", r.summary());
            let log = site
                .apache()
                .wait_for_error_log(Duration::from_secs(3), |l| l.contains("outside root"));
            assert!(
                log.lines().any(|l| l.contains("outside root")),
                "no 'outside root' line in the error log"
            );
            assert!(!ran_marker.exists(), "the program outside root was run");
        },
    );

    site.finish(checks);
}

// ---------------------------------------------------------------------------
// The harness itself (no shim involved): if this fails, the others say
// nothing about fcgi-shim.
// ---------------------------------------------------------------------------

#[test]
fn harness_serves_static_files_and_stops_cleanly() {
    let Some(site) = Site::new() else { return };
    write_file(&site.www.join("static.txt"), "static\n", 0o644);
    let site = site.start();
    let mut checks = Checks::new("harness_serves_static_files_and_stops_cleanly");
    checks.run("static file", || {
        let r = site.get("/static.txt");
        assert_status(&r, 200, "static");
        assert_eq!(r.body, b"static\n");
        assert!(
            site.apache()
                .url("/x")
                .ends_with(&format!(":{}/x", site.apache().port()))
        );
    });
    checks.run("missing file -> 404", || {
        assert_status(&site.get("/nope.txt"), 404, "missing");
    });
    site.finish(checks);
}

//! Issue 13: one set of response-head rules for every back. The same hostile
//! heads are written by a CGI program (the `cgi` kind) and by a WSGI
//! application that switched the adapter's own checks off (a worker is the
//! application's process: its frames are not trusted), and the visitor must
//! see the same thing from both: 502 and no injected header, or, for a valid
//! head with latin-1 bytes, the bytes as they were written. The log line is
//! the same after the kind and the application's name; `[limits]` on the
//! head's size too.
//!
//! Needs a python3 with its standard library: `$FCGI_SHIM_TEST_PYTHON` or
//! `python3` from PATH.

mod common;

use std::fmt::Write as _;

use common::*;

fn python() -> String {
    std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Which kinds can express a case (a CGI head cannot hold a line feed inside
/// a line; a WSGI head frame cannot hold a NUL inside a field).
#[derive(Clone, Copy, PartialEq)]
enum Kinds {
    Both,
    Cgi,
    Wsgi,
}

struct Case {
    what: &'static str,
    kinds: Kinds,
    status: &'static [u8],
    headers: &'static [(&'static [u8], &'static [u8])],
    /// What the visitor gets: 502 with this log message, or the head as written.
    expect: Expect,
}

enum Expect {
    Refused(&'static str),
    Passed(u16, &'static [u8]),
}

const TEXT: (&[u8], &[u8]) = (b"Content-Type", b"text/plain");
/// Both shims run with `max_response_head_bytes = 1024`.
const LIMITS: &str = "[limits]\nmax_response_head_bytes = 1024\n";
const LONG: &[u8] = &[b'a'; 2000];

const CASES: &[Case] = &[
    Case {
        what: "CR in the status line",
        kinds: Kinds::Both,
        status: b"200 OK\rSet-Cookie: evil=1",
        headers: &[TEXT],
        expect: Expect::Refused(r#"invalid Status line "200 OK\rSet-Cookie: evil=1""#),
    },
    Case {
        what: "CRLF in the status line",
        kinds: Kinds::Wsgi,
        status: b"200 OK\r\nSet-Cookie: evil=1",
        headers: &[TEXT],
        expect: Expect::Refused(r#"invalid Status line "200 OK\r\nSet-Cookie: evil=1""#),
    },
    Case {
        what: "NUL in the status line",
        kinds: Kinds::Cgi,
        status: b"200 OK\0",
        headers: &[TEXT],
        expect: Expect::Refused(r#"invalid Status line "200 OK\0""#),
    },
    Case {
        what: "status out of range",
        kinds: Kinds::Both,
        status: b"600 Beyond",
        headers: &[TEXT],
        expect: Expect::Refused(r#"invalid Status line "600 Beyond""#),
    },
    Case {
        what: "space in a header name",
        kinds: Kinds::Both,
        status: b"200 OK",
        headers: &[TEXT, (b"Bad Name", b"x")],
        expect: Expect::Refused(r#"invalid response header name "Bad Name""#),
    },
    Case {
        what: "separator in a header name",
        kinds: Kinds::Both,
        status: b"200 OK",
        headers: &[TEXT, (b"X-(a)", b"x")],
        expect: Expect::Refused(r#"invalid response header name "X-(a)""#),
    },
    Case {
        what: "control byte in a header name",
        kinds: Kinds::Both,
        status: b"200 OK",
        headers: &[TEXT, (b"X-\x01", b"x")],
        expect: Expect::Refused(r#"invalid response header name "X-\x01""#),
    },
    Case {
        what: "CRLF in a header name",
        kinds: Kinds::Wsgi,
        status: b"200 OK",
        headers: &[TEXT, (b"X-A\r\nSet-Cookie", b"evil=1")],
        expect: Expect::Refused(r#"invalid response header name "X-A\r\nSet-Cookie""#),
    },
    Case {
        what: "CR in a header value",
        kinds: Kinds::Both,
        status: b"200 OK",
        headers: &[TEXT, (b"X-A", b"a\rSet-Cookie: evil=1")],
        expect: Expect::Refused(
            r#"invalid value of response header "X-A": "a\rSet-Cookie: evil=1""#,
        ),
    },
    Case {
        what: "CRLF in a header value",
        kinds: Kinds::Wsgi,
        status: b"200 OK",
        headers: &[TEXT, (b"X-A", b"a\r\nSet-Cookie: evil=1")],
        expect: Expect::Refused(
            r#"invalid value of response header "X-A": "a\r\nSet-Cookie: evil=1""#,
        ),
    },
    Case {
        what: "NUL in a header value",
        kinds: Kinds::Cgi,
        status: b"200 OK",
        headers: &[TEXT, (b"X-A", b"a\0b")],
        expect: Expect::Refused(r#"invalid value of response header "X-A": "a\0b""#),
    },
    Case {
        what: "a head over [limits] max_response_head_bytes",
        kinds: Kinds::Both,
        status: b"200 OK",
        headers: &[TEXT, (b"X-Long", LONG)],
        expect: Expect::Refused("response header block larger than 1024 bytes"),
    },
    Case {
        what: "latin-1 bytes in the reason and a value",
        kinds: Kinds::Both,
        status: b"200 \xc7a va",
        headers: &[
            TEXT,
            (
                b"Content-Disposition",
                b"attachment; filename=\"caf\xe9.txt\"",
            ),
        ],
        expect: Expect::Passed(
            200,
            b"Status: 200 \xc7a va\r\nContent-Type: text/plain\r\n\
              Content-Disposition: attachment; filename=\"caf\xe9.txt\"\r\n\r\nbody\n",
        ),
    },
];

/// Bytes as a Python bytes literal.
fn py_bytes(bytes: &[u8]) -> String {
    let mut s = String::from("b'");
    for b in bytes {
        write!(s, "\\x{b:02x}").unwrap();
    }
    s.push('\'');
    s
}

/// A WSGI application answering /N with case N's head, the adapter's checks
/// switched off first (what a hostile application can do).
fn wsgi_app() -> String {
    let mut table = String::new();
    for (i, case) in CASES.iter().enumerate() {
        let headers: Vec<String> = case
            .headers
            .iter()
            .map(|(n, v)| format!("({}, {})", py_bytes(n), py_bytes(v)))
            .collect();
        writeln!(
            table,
            "    '/{i}': ({}, [{}]),",
            py_bytes(case.status),
            headers.join(", ")
        )
        .unwrap();
    }
    format!(
        "import __main__\n\
         __main__._check_status = lambda status: None\n\
         __main__._check_header = lambda name, value: None\n\
         CASES = {{\n{table}}}\n\
         def application(environ, start_response):\n\
         \x20   status, headers = CASES[environ['PATH_INFO']]\n\
         \x20   start_response(status.decode('latin-1'),\n\
         \x20                  [(n.decode('latin-1'), v.decode('latin-1')) for n, v in headers])\n\
         \x20   return [b'body\\n']\n"
    )
}

/// The CGI program's output for a case: the head in CGI syntax, then the body.
fn cgi_output(case: &Case) -> Vec<u8> {
    let mut out = b"Status: ".to_vec();
    out.extend_from_slice(case.status);
    out.push(b'\n');
    for (name, value) in case.headers {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out.extend_from_slice(b"\nbody\n");
    out
}

fn get(shim: &Shim, path: &str) -> Response {
    let mut p = cgi_params("GET", "", 0);
    for (k, v) in p.iter_mut() {
        if k == "PATH_INFO" {
            *v = path.into();
        }
    }
    let mut conn = shim.connect();
    request(&mut conn, &p, b"", false)
}

/// The status of a CGI response head (its bytes need not be UTF-8).
fn status_of(stdout: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(stdout);
    text.strip_prefix("Status: ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(200)
}

/// The line of `log` carrying `message`, with what comes before the message.
fn log_line<'a>(log: &'a str, message: &str) -> Option<&'a str> {
    log.lines()
        .find(|l| l.contains(&format!("{message} (502)")))
}

#[test]
fn hostile_heads_are_refused_alike_by_every_kind() {
    let dir = TempDir::new("heads");
    let heads = dir.join("heads");
    std::fs::create_dir_all(&heads).unwrap();
    for (i, case) in CASES.iter().enumerate() {
        std::fs::write(heads.join(i.to_string()), cgi_output(case)).unwrap();
    }
    let program = dir.script(
        "heads.cgi",
        &format!("exec cat \"{}$PATH_INFO\"", heads.display()),
    );
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("hostile.py"), wsgi_app()).unwrap();

    let cgi = Shim::start(&format!(
        "[app]\nkind = \"cgi\"\ncommand = [\"{}\"]\ntimeout = 10\n{LIMITS}",
        program.display()
    ));
    let wsgi = Shim::start(&format!(
        "[app]\nkind = \"wsgi\"\nmodule = \"hostile\"\npython = \"{}\"\npython_path = [\"{}\"]\n{LIMITS}",
        python(),
        app.display()
    ));
    let kinds = [
        (
            Kinds::Cgi,
            "cgi",
            &cgi,
            format!("cgi: {}: ", program.display()),
        ),
        (
            Kinds::Wsgi,
            "wsgi",
            &wsgi,
            "wsgi: hostile:application: ".to_string(),
        ),
    ];

    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let mut seen: Vec<(&str, Vec<u8>)> = Vec::new();
        for (kind, kind_name, shim, prefix) in &kinds {
            if case.kinds != Kinds::Both && case.kinds != *kind {
                continue;
            }
            let path = format!("/{i}");
            let r = get(shim, &path);
            let stdout = r.stdout.clone();
            let what = format!("{kind_name}, {}", case.what);
            match &case.expect {
                Expect::Refused(message) => {
                    let cgi = r.cgi();
                    if cgi.status != 502 {
                        failures.push(format!("{what}: status {}, want 502", cgi.status));
                    }
                    if stdout.windows(6).any(|w| w == b"evil=1") {
                        failures.push(format!("{what}: the injected header reached the visitor"));
                    }
                    // The log line may come a moment after the response.
                    shim.wait_for_log(
                        &format!("{message} (502)"),
                        std::time::Duration::from_secs(5),
                    );
                    let log = shim.log();
                    match log_line(&log, message) {
                        Some(line) if line.contains(&format!("{prefix}{message} (502)")) => {}
                        Some(line) => failures.push(format!(
                            "{what}: log line {line:?}, want {prefix}{message} (502)"
                        )),
                        None => failures.push(format!("{what}: no log line {message:?} in\n{log}")),
                    }
                }
                Expect::Passed(status, bytes) => {
                    if status_of(&stdout) != *status || stdout != *bytes {
                        failures.push(format!(
                            "{what}: got {:?}, want {:?}",
                            String::from_utf8_lossy(&stdout),
                            String::from_utf8_lossy(bytes)
                        ));
                    }
                }
            }
            seen.push((kind_name, stdout));
        }
        if let [(_, a), (_, b)] = &seen[..]
            && a != b
        {
            failures.push(format!(
                "{}: cgi and wsgi answered differently: {:?} / {:?}",
                case.what,
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Through the adapter as it is: an application's CR/LF or non-token name is
/// its own bug, shown as the adapter's 500 with the traceback in the log;
/// latin-1 passes.
#[test]
fn adapter_refuses_bad_heads_early_and_passes_latin1() {
    let dir = TempDir::new("adapter-heads");
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("plain.py"),
        "def application(environ, start_response):\n\
         \x20   path = environ['PATH_INFO']\n\
         \x20   if path == '/status':\n\
         \x20       start_response('200 OK\\r\\nSet-Cookie: evil=1', [('Content-Type', 'text/plain')])\n\
         \x20   elif path == '/name':\n\
         \x20       start_response('200 OK', [('X-(a)', 'x')])\n\
         \x20   elif path == '/euro':\n\
         \x20       start_response('200 OK', [('X-A', '\\u20ac')])\n\
         \x20   else:\n\
         \x20       start_response('200 OK', [('Content-Type', 'text/plain'),\n\
         \x20                      ('Content-Disposition', 'attachment; filename=\"caf\\xe9.txt\"')])\n\
         \x20   return [b'body\\n']\n",
    )
    .unwrap();
    let shim = Shim::start(&format!(
        "[app]\nkind = \"wsgi\"\nmodule = \"plain\"\npython = \"{}\"\npython_path = [\"{}\"]\n",
        python(),
        app.display()
    ));
    let r = get(&shim, "/status");
    assert_eq!(r.cgi().status, 500, "{}", shim.log());
    assert!(!r.stdout.windows(6).any(|w| w == b"evil=1"));
    assert!(
        shim.wait_for_log(
            "status must be a str like",
            std::time::Duration::from_secs(5)
        ),
        "{}",
        shim.log()
    );
    let r = get(&shim, "/name");
    assert_eq!(r.cgi().status, 500, "{}", shim.log());
    assert!(
        shim.wait_for_log(
            "invalid header ('X-(a)', 'x')",
            std::time::Duration::from_secs(5)
        ),
        "{}",
        shim.log()
    );
    let r = get(&shim, "/euro");
    assert_eq!(r.cgi().status, 500, "{}", shim.log());
    assert!(
        shim.wait_for_log("is not latin-1", std::time::Duration::from_secs(5)),
        "{}",
        shim.log()
    );
    let r = get(&shim, "/file");
    assert_eq!(status_of(&r.stdout), 200);
    assert_eq!(
        r.stdout,
        b"Status: 200 OK\r\nContent-Type: text/plain\r\n\
          Content-Disposition: attachment; filename=\"caf\xe9.txt\"\r\n\r\nbody\n"
    );
    // The adapter remembers heads that passed; a bad one is refused again
    // after good ones, and the good one still passes.
    for _ in 0..2 {
        assert_eq!(get(&shim, "/name").cgi().status, 500, "{}", shim.log());
        assert_eq!(status_of(&get(&shim, "/file").stdout), 200);
        assert_eq!(get(&shim, "/status").cgi().status, 500, "{}", shim.log());
    }
}

//! The FastCGI front seen from a web server: the real `fcgi-shim` binary on a
//! listening socket, driven by the independent client in `tests/common`.
//!
//! Each test starts its own shim and CGI script and asserts what a web server
//! would observe: record types and ids, END_REQUEST statuses, the CGI response
//! bytes, the log lines and the process list. Nothing here may use the crate's
//! own codec.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

const LOG_WAIT: Duration = Duration::from_secs(5);

fn get_values_query(names: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    for name in names {
        encode_name_value(&mut body, name.as_bytes(), b"");
    }
    let mut out = Vec::new();
    encode_record(&mut out, GET_VALUES, 0, &body);
    out
}

/// Asks for the three standard variables and an unknown one; returns the answer.
fn get_values(conn: &mut Conn) -> HashMap<String, String> {
    send(
        conn,
        &get_values_query(&[
            "FCGI_MAX_CONNS",
            "FCGI_MAX_REQS",
            "FCGI_MPXS_CONNS",
            "FCGI_NO_SUCH_VARIABLE",
        ]),
    );
    let record = expect_record(conn, "GET_VALUES_RESULT");
    assert_eq!(record.rtype, GET_VALUES_RESULT, "record type of {record:?}");
    assert_eq!(record.id, 0, "request id of GET_VALUES_RESULT");
    let pairs = decode_name_values(&record.content)
        .unwrap_or_else(|| panic!("malformed GET_VALUES_RESULT body {:?}", record.content));
    pairs
        .into_iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(&n).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

fn expected_values() -> HashMap<String, String> {
    [
        ("FCGI_MAX_CONNS", "1"),
        ("FCGI_MAX_REQS", "1"),
        ("FCGI_MPXS_CONNS", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// After a malformed exchange on `conn`: the shim must close it, log
/// "closing connection", and serve the next connection normally.
fn assert_closed_logged_and_next_served(app: &App, mut conn: Conn, sent: &str) {
    let _ = read_until_closed(&mut conn);
    assert_logged_and_next_served(app, sent);
}

/// The shim logged "closing connection" and serves the next connection.
fn assert_logged_and_next_served(app: &App, sent: &str) {
    assert!(
        app.shim.wait_for_log("closing connection", LOG_WAIT),
        "after {sent}: no log line containing \"closing connection\"; log:\n{}",
        app.shim.log()
    );
    assert_hello(&mut app.shim.connect(), false);
}

/// Writes `bytes` from a second thread (the shim may stop reading and close
/// the connection midway) and waits for the connection to be closed.
fn send_expecting_close(conn: &mut Conn, bytes: Vec<u8>) -> Closed {
    let mut writer = conn.try_clone();
    thread::scope(|scope| {
        let handle = scope.spawn(move || {
            let _ = std::io::Write::write_all(&mut writer, &bytes);
        });
        let closed = read_until_closed(conn);
        let _ = conn.shutdown(Shutdown::Both);
        handle.join().expect("writer thread");
        closed
    })
}

fn begin(id: u16, role: u16, flags: u8) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(&mut out, BEGIN_REQUEST, id, &begin_body(role, flags));
    out
}

/// A script that records that it ran, then answers like HELLO_SCRIPT.
fn touching_hello(dir: &TempDir) -> String {
    format!(": > '{}'\n{HELLO_SCRIPT}", dir.join("ran").display())
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[test]
fn responder_request_gets_cgi_response_then_connection_is_closed() {
    let app = App::start(HELLO_SCRIPT);
    let mut conn = app.shim.connect();
    let response = request(&mut conn, &cgi_params("GET", "q=1", 0), b"", false);
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 200, "{cgi:?}");
    assert_eq!(cgi.header("Content-Type"), Some("text/plain"));
    assert_eq!(cgi.body_text(), "hello GET q=1");
    assert!(
        response
            .records
            .iter()
            .all(|&(t, _)| t == STDOUT || t == STDERR || t == END_REQUEST),
        "records: {:?}",
        response.records
    );
    match read_record(&mut conn) {
        Ok(None) => {}
        other => panic!(
            "without KEEP_CONN the shim must close the connection after END_REQUEST; got {other:?}"
        ),
    }
}

#[test]
fn program_status_header_is_passed_through() {
    let app = App::start(
        r#"printf 'Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Test: yes\r\n\r\nnope'"#,
    );
    let response = request(
        &mut app.shim.connect(),
        &cgi_params("GET", "", 0),
        b"",
        false,
    );
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 404, "{cgi:?}");
    assert_eq!(cgi.header("X-Test"), Some("yes"));
    assert_eq!(cgi.body_text(), "nope");
}

#[test]
fn keep_conn_serves_several_requests_on_one_connection() {
    let app = App::start(HELLO_SCRIPT);
    let mut conn = app.shim.connect();
    for id in [1u16, 2, 1, 300] {
        let response = request_with_id(&mut conn, id, &cgi_params("GET", "q=1", 0), b"", true);
        let cgi = response.complete_cgi();
        assert_eq!(
            (cgi.status, cgi.body_text()),
            (200, "hello GET q=1".to_string()),
            "request id {id}"
        );
    }
    let response = request_with_id(&mut conn, 7, &cgi_params("GET", "q=1", 0), b"", false);
    assert_eq!(response.complete_cgi().body_text(), "hello GET q=1");
    match read_record(&mut conn) {
        Ok(None) => {}
        other => panic!("last request had no KEEP_CONN: expected EOF, got {other:?}"),
    }
}

/// A program that prints `first`, then waits (up to 5 s) for the test to
/// create GO before it prints `then` (or `late` if it gave up); one GET sent.
fn go_gated(first: &str, then: &str) -> (App, Conn) {
    let app = App::build(10, |dir| {
        let go = dir.join("GO");
        format!(
            r#"printf '{first}'
i=0
while [ ! -e '{go}' ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
if [ -e '{go}' ]; then printf '{then}'; else printf 'late\n'; fi"#,
            go = go.display()
        )
    });
    let mut conn = app.shim.connect();
    send(
        &mut conn,
        &encode_request(1, &cgi_params("GET", "", 0), b"", false),
    );
    (app, conn)
}

#[test]
fn output_is_streamed_as_the_program_produces_it() {
    // GO is created only once "first" has arrived over FastCGI.
    let (app, mut conn) = go_gated("Content-Type: text/plain\\r\\n\\r\\nfirst\\n", "second\\n");
    let started = Instant::now();
    let mut stdout = Vec::new();
    while !stdout.ends_with(b"first\n") {
        let record = expect_record(&mut conn, "the first chunk of output");
        assert_eq!(
            (record.rtype, record.id),
            (STDOUT, 1),
            "while waiting for the first chunk, got {record:?} (stdout so far {:?})",
            String::from_utf8_lossy(&stdout)
        );
        assert!(
            !record.content.is_empty(),
            "stdout ended before the first chunk"
        );
        stdout.extend_from_slice(&record.content);
    }
    let first_after = started.elapsed();
    std::fs::write(app.dir.join("GO"), b"").expect("create GO");
    let rest = read_response(&mut conn, 1).expect("rest of the response");
    assert_eq!(rest.protocol_status, REQUEST_COMPLETE);
    assert!(rest.stdout_ended, "records: {:?}", rest.records);
    stdout.extend_from_slice(&rest.stdout);
    let cgi = parse_cgi(&stdout).expect("CGI response");
    assert_eq!(
        cgi.body_text(),
        "first\nsecond\n",
        "the first chunk arrived only after {first_after:?}, when the program had given up"
    );
}

#[test]
fn a_head_without_a_body_yet_is_sent_at_once() {
    // The program prints its head only; GO is created once it has arrived.
    let (app, mut conn) = go_gated(
        "Content-Type: text/plain\\r\\nX-Head: early\\r\\n\\r\\n",
        "body\\n",
    );
    let mut stdout = Vec::new();
    while !stdout.windows(4).any(|w| w == b"\r\n\r\n") {
        let record = expect_record(&mut conn, "the response head");
        assert_eq!((record.rtype, record.id), (STDOUT, 1), "{record:?}");
        assert!(!record.content.is_empty(), "stdout ended before the head");
        stdout.extend_from_slice(&record.content);
    }
    std::fs::write(app.dir.join("GO"), b"").expect("create GO");
    let rest = read_response(&mut conn, 1).expect("rest of the response");
    stdout.extend_from_slice(&rest.stdout);
    let cgi = parse_cgi(&stdout).expect("CGI response");
    assert_eq!(
        cgi.body_text(),
        "body\n",
        "the head came only after the program gave up"
    );
}

#[test]
fn one_mebibyte_request_body_is_echoed_byte_identical() {
    let app = App::start(r#"printf 'Content-Type: application/octet-stream\r\n\r\n'; exec cat"#);
    let data = prng_bytes(1 << 20, 0x5eed_f00d_1234_5678);
    assert!(data.contains(&0x00) && data.contains(&0xff));
    let response = request(
        &mut app.shim.connect(),
        &cgi_params("POST", "", data.len()),
        &data,
        false,
    );
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 200);
    assert_eq!(cgi.header("Content-Type"), Some("application/octet-stream"));
    let first_difference = cgi.body.iter().zip(&data).position(|(a, b)| a != b);
    assert!(
        cgi.body.len() == data.len() && first_difference.is_none(),
        "echoed {} bytes for {} sent; first difference at {first_difference:?}",
        cgi.body.len(),
        data.len()
    );
}

/// mod_fcgid writes the whole request, body included, before it reads any of
/// the response. A program that answers while it reads (here: `cat`) must not
/// deadlock with it: the shim keeps taking the body (spooling it past 1 MiB)
/// while the response waits. Regression test for the hang the Apache
/// end-to-end test found with a 1 MiB echo.
#[test]
fn whole_request_written_before_reading_does_not_deadlock_an_echoing_program() {
    let app = App::start(r#"printf 'Content-Type: application/octet-stream\r\n\r\n'; exec cat"#);
    let data = prng_bytes(8 << 20, 0x0dd_ba11_cafe_f00d);
    let mut conn = app.shim.connect();
    conn.set_timeouts(IO_TIMEOUT);
    conn.write_all(&encode_request(
        1,
        &cgi_params("POST", "", data.len()),
        &data,
        false,
    ))
    .expect("the shim must take the whole request before we read anything");
    let response = read_response(&mut conn, 1).expect("response after the whole request was sent");
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 200);
    assert!(
        cgi.body == data,
        "echoed {} bytes for {} sent",
        cgi.body.len(),
        data.len()
    );
}

#[test]
fn program_environment_is_the_params_plus_settings_env_without_http_proxy() {
    let app = App::start(r#"printf 'Content-Type: text/plain\r\n\r\n'; exec /usr/bin/env"#);
    let long_name = format!("HTTP_X_{}", "N".repeat(150));
    let long_value = "v".repeat(300);
    let mut params = cgi_params("GET", "a=1&b=2", 0);
    params.push(("HTTP_PROXY".into(), "http://attacker.invalid:3128".into()));
    params.push(("HTTP_USER_AGENT".into(), "test agent/1.0".into()));
    params.push(("HTTP_X_LONG".into(), long_value.clone()));
    params.push((long_name.clone(), "long-name".into()));
    let response = request(&mut app.shim.connect(), &params, b"", false);
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 200);
    let env = parse_env(&cgi.body_text());
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("REQUEST_METHOD"), Some("GET"));
    assert_eq!(get("QUERY_STRING"), Some("a=1&b=2"));
    assert_eq!(get("GATEWAY_INTERFACE"), Some("CGI/1.1"));
    assert_eq!(get("SCRIPT_NAME"), Some("/app"));
    assert_eq!(get("HTTP_HOST"), Some("localhost"));
    assert_eq!(get("HTTP_USER_AGENT"), Some("test agent/1.0"));
    assert_eq!(
        get("HTTP_X_LONG"),
        Some(long_value.as_str()),
        "4-byte value length"
    );
    assert_eq!(get(&long_name), Some("long-name"), "4-byte name length");
    assert_eq!(get("FOO"), Some("bar"), "env from the settings");
    assert_eq!(
        get("HTTP_PROXY"),
        None,
        "httpoxy: HTTP_PROXY must not reach the program"
    );
}

#[test]
fn program_exiting_before_headers_gives_502_and_a_log_line() {
    let app = App::start("exit 1");
    let response = request(
        &mut app.shim.connect(),
        &cgi_params("GET", "", 0),
        b"",
        false,
    );
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 502, "{cgi:?}");
    assert!(
        app.shim.wait_for_log("before sending headers", LOG_WAIT),
        "log:\n{}",
        app.shim.log()
    );
}

#[test]
fn program_over_its_timeout_gives_504_and_is_killed() {
    let marker = unique_marker();
    let app = App::build(1, |_| {
        "sleep 30\nprintf 'Content-Type: text/plain\\r\\n\\r\\ntoo late'".into()
    });
    let mut params = cgi_params("GET", "", 0);
    params.push(("FCGI_TEST_MARKER".into(), marker.clone()));
    let started = Instant::now();
    let response = request(&mut app.shim.connect(), &params, b"", false);
    let elapsed = started.elapsed();
    let cgi = response.complete_cgi();
    assert_eq!(cgi.status, 504, "{cgi:?}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "504 after {elapsed:?} with timeout = 1"
    );
    let script = app.script.to_string_lossy().into_owned();
    let left = wait_until_gone(Duration::from_secs(2), || {
        let mut pids = processes_matching(&script);
        pids.extend(processes_with_env(&marker));
        pids
    });
    assert!(left.is_empty(), "program processes still running: {left:?}");
}

// ---------------------------------------------------------------------------
// Management records, roles, multiplexing, abort
// ---------------------------------------------------------------------------

#[test]
fn get_values_answers_before_and_between_requests() {
    let app = App::start(HELLO_SCRIPT);
    let mut conn = app.shim.connect();
    assert_eq!(
        get_values(&mut conn),
        expected_values(),
        "before any request"
    );
    assert_hello(&mut conn, true);
    assert_eq!(get_values(&mut conn), expected_values(), "between requests");
    assert_hello(&mut conn, false);
}

#[test]
fn unknown_management_type_gets_unknown_type_reply() {
    let app = App::start(HELLO_SCRIPT);
    let mut conn = app.shim.connect();
    let mut out = Vec::new();
    encode_record(&mut out, 42, 0, b"whatever");
    send(&mut conn, &out);
    let record = expect_record(&mut conn, "UNKNOWN_TYPE");
    assert_eq!((record.rtype, record.id), (UNKNOWN_TYPE, 0), "{record:?}");
    assert_eq!(
        record.content.len(),
        8,
        "FCGI_UnknownTypeBody is 8 bytes: {record:?}"
    );
    assert_eq!(record.content[0], 42, "{record:?}");
    // The connection is still usable.
    assert_hello(&mut conn, false);
}

#[test]
fn filter_role_is_rejected_with_unknown_role() {
    let app = App::build(5, touching_hello);
    let mut conn = app.shim.connect();
    let mut out = begin(1, FILTER, 0);
    encode_params(&mut out, 1, &cgi_params("GET", "", 0), MAX_CONTENT);
    encode_stream(&mut out, STDIN, 1, b"", MAX_CONTENT);
    encode_stream(&mut out, DATA, 1, b"data", MAX_CONTENT);
    send(&mut conn, &out);
    let record = expect_record(&mut conn, "END_REQUEST(UNKNOWN_ROLE)");
    assert_eq!((record.rtype, record.id), (END_REQUEST, 1), "{record:?}");
    assert_eq!(record.content.len(), 8, "{record:?}");
    assert_eq!(record.content[4], UNKNOWN_ROLE, "protocolStatus");
    assert!(
        !app.dir.join("ran").exists(),
        "the program ran for a rejected role"
    );
    assert!(
        app.shim.wait_for_log("FCGI_UNKNOWN_ROLE", LOG_WAIT),
        "log:\n{}",
        app.shim.log()
    );
    assert_hello(&mut app.shim.connect(), false);
}

/// A CGI authenticator in the shape mod_fcgid runs one: it answers from
/// FCGI_ROLE, FCGI_APACHE_ROLE, REMOTE_USER and REMOTE_PASSWD.
const AUTHENTICATOR_SCRIPT: &str = r#"
if [ "$FCGI_ROLE/$FCGI_APACHE_ROLE/$REMOTE_USER/$REMOTE_PASSWD" = "AUTHORIZER/AUTHENTICATOR/bob/s3cret" ]; then
  printf 'Status: 200 OK\r\nVariable-AUTH_METHOD: database lookup\r\nVariable-X_Group: staff\r\n\r\n'
else
  printf 'Status: 401 Unauthorized\r\nWWW-Authenticate: Basic realm="test"\r\nContent-Type: text/plain\r\n\r\nno, %s/%s' "$FCGI_ROLE" "$REMOTE_USER"
fi
"#;

/// An AUTHORIZER request as mod_fcgid sends it: no FCGI_STDIN at all.
fn authorizer_request(conn: &mut Conn, keep_conn: bool, user: &str, password: &str) -> Response {
    let mut params = cgi_params("GET", "", 0);
    params.push(("FCGI_APACHE_ROLE".into(), "AUTHENTICATOR".into()));
    params.push(("REMOTE_USER".into(), user.into()));
    params.push(("REMOTE_PASSWD".into(), password.into()));
    let mut out = begin(1, AUTHORIZER, u8::from(keep_conn));
    encode_params(&mut out, 1, &params, MAX_CONTENT);
    send(conn, &out);
    read_response(conn, 1).expect("a response to the AUTHORIZER request")
}

#[test]
fn authorizer_role_is_served_without_a_body_and_variable_headers_pass_through() {
    let app = App::start(AUTHENTICATOR_SCRIPT);
    let mut conn = app.shim.connect();
    let allowed = authorizer_request(&mut conn, true, "bob", "s3cret").complete_cgi();
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(
        allowed.header("Variable-AUTH_METHOD"),
        Some("database lookup")
    );
    assert_eq!(allowed.header("Variable-X_Group"), Some("staff"));
    assert!(
        allowed.headers.iter().any(|(n, _)| n == "Variable-X_Group"),
        "the name's case is kept: {allowed:?}"
    );
    // The same connection (KEEP_CONN) serves the next one: a refusal with
    // the complete response the web server passes to the client.
    let refused = authorizer_request(&mut conn, false, "bob", "wrong").complete_cgi();
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(
        refused.header("WWW-Authenticate"),
        Some("Basic realm=\"test\"")
    );
    assert_eq!(refused.body_text(), "no, AUTHORIZER/bob");
    // An empty FCGI_STDIN (some servers send one) is ignored.
    let mut conn = app.shim.connect();
    let mut params = cgi_params("GET", "", 0);
    params.push(("FCGI_APACHE_ROLE".into(), "AUTHENTICATOR".into()));
    params.push(("REMOTE_USER".into(), "bob".into()));
    params.push(("REMOTE_PASSWD".into(), "s3cret".into()));
    let mut out = begin(1, AUTHORIZER, 0);
    encode_params(&mut out, 1, &params, MAX_CONTENT);
    encode_stream(&mut out, STDIN, 1, b"", MAX_CONTENT);
    send(&mut conn, &out);
    let cgi = read_response(&mut conn, 1)
        .expect("response")
        .complete_cgi();
    assert_eq!(cgi.status, 200, "{cgi:?}");
}

#[test]
fn second_begin_request_gets_cant_mpx_conn_and_first_completes() {
    let app = App::start("sleep 1\nprintf 'Content-Type: text/plain\\r\\n\\r\\nslow done'");
    let mut conn = app.shim.connect();
    let params = cgi_params("GET", "", 0);
    send(&mut conn, &encode_request(1, &params, b"", true));
    thread::sleep(Duration::from_millis(100));
    send(&mut conn, &encode_request(2, &params, b"", true));

    let mut stdout = Vec::new();
    let mut stdout_ended = false;
    let mut end1: Option<Vec<u8>> = None;
    let mut end2: Option<Vec<u8>> = None;
    while end1.is_none() || end2.is_none() {
        let record = expect_record(
            &mut conn,
            &format!(
                "END_REQUEST for both requests (seen 1: {}, 2: {})",
                end1.is_some(),
                end2.is_some()
            ),
        );
        match (record.id, record.rtype) {
            (1, STDOUT) if record.content.is_empty() => stdout_ended = true,
            (1, STDOUT) => stdout.extend_from_slice(&record.content),
            (1, STDERR) => {}
            (1, END_REQUEST) => end1 = Some(record.content),
            (2, END_REQUEST) => end2 = Some(record.content),
            _ => panic!("unexpected record {record:?}"),
        }
    }
    let end2 = end2.unwrap_or_default();
    assert_eq!(end2.len(), 8);
    assert_eq!(
        end2[4], CANT_MPX_CONN,
        "protocolStatus for the second request"
    );
    let end1 = end1.unwrap_or_default();
    assert_eq!(end1, vec![0; 8], "END_REQUEST body of the first request");
    assert!(stdout_ended);
    let cgi = parse_cgi(&stdout).expect("CGI response");
    assert_eq!(
        (cgi.status, cgi.body_text()),
        (200, "slow done".to_string())
    );
    // Late PARAMS/STDIN records of the rejected id were ignored; the
    // connection still serves requests.
    let response = request_with_id(&mut conn, 3, &params, b"", false);
    assert_eq!(response.complete_cgi().body_text(), "slow done");
}

#[test]
fn abort_request_ends_a_slow_request_promptly_and_kills_the_program() {
    let marker = unique_marker();
    let app = App::build(30, |dir| {
        format!(
            r#"if [ "$QUERY_STRING" = fast ]; then {HELLO_SCRIPT}; exit 0; fi
printf 'Content-Type: text/plain\r\n\r\nstarted\n'
: > '{started}'
sleep 30
printf 'finished\n'"#,
            started = dir.join("started").display()
        )
    });
    let mut conn = app.shim.connect();
    let mut params = cgi_params("GET", "slow", 0);
    params.push(("FCGI_TEST_MARKER".into(), marker.clone()));
    send(&mut conn, &encode_request(1, &params, b"", true));
    assert!(
        wait_for_file(&app.dir.join("started"), Duration::from_secs(5)),
        "the program never started"
    );
    let mut abort = Vec::new();
    encode_record(&mut abort, ABORT_REQUEST, 1, &[]);
    send(&mut conn, &abort);
    let aborted_at = Instant::now();
    let response = read_response(&mut conn, 1).expect("END_REQUEST after ABORT_REQUEST");
    let elapsed = aborted_at.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "END_REQUEST came {elapsed:?} after ABORT_REQUEST"
    );
    assert_eq!(response.protocol_status, REQUEST_COMPLETE);
    assert_eq!(response.app_status, 1, "appStatus of an aborted request");
    assert!(
        !String::from_utf8_lossy(&response.stdout).contains("finished"),
        "the program ran to completion"
    );
    let script = app.script.to_string_lossy().into_owned();
    let left = wait_until_gone(Duration::from_secs(2), || {
        let mut pids = processes_matching(&script);
        pids.extend(processes_with_env(&marker));
        pids
    });
    assert!(
        left.is_empty(),
        "program processes still running after abort: {left:?}"
    );
    // The keep-conn connection still serves.
    let response = request_with_id(&mut conn, 2, &cgi_params("GET", "fast", 0), b"", false);
    assert_eq!(response.complete_cgi().body_text(), "hello GET fast");
}

// ---------------------------------------------------------------------------
// Malformed input and limits
// ---------------------------------------------------------------------------

#[test]
fn bad_version_byte_closes_connection_and_next_is_served() {
    let app = App::build(5, touching_hello);
    let mut conn = app.shim.connect();
    let mut out = begin(1, RESPONDER, 0);
    out[0] = 2;
    send(&mut conn, &out);
    assert_closed_logged_and_next_served(&app, conn, "a BEGIN_REQUEST with version 2");
}

#[test]
fn truncated_record_then_half_close_closes_connection_and_next_is_served() {
    let app = App::build(5, touching_hello);
    let mut conn = app.shim.connect();
    let mut out = begin(1, RESPONDER, 0);
    // A PARAMS header announcing 100 bytes, followed by only 10.
    out.extend_from_slice(&[VERSION_1, PARAMS, 0, 1, 0, 100, 0, 0]);
    out.extend_from_slice(&[b'x'; 10]);
    send(&mut conn, &out);
    conn.shutdown(Shutdown::Write).expect("half-close");
    assert_closed_logged_and_next_served(&app, conn, "a truncated PARAMS record and a half-close");
}

#[test]
fn http_request_instead_of_fastcgi_closes_connection_and_next_is_served() {
    let app = App::build(5, touching_hello);
    let mut conn = app.shim.connect();
    send(&mut conn, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_closed_logged_and_next_served(&app, conn, "an HTTP request");
}

/// Params with exactly `total` bytes of encoded PARAMS stream: the usual CGI
/// params plus padding params of at most 30000 bytes each.
fn params_of_encoded_size(total: usize) -> Vec<(String, String)> {
    let encoded = |params: &[(String, String)]| {
        let mut body = Vec::new();
        for (n, v) in params {
            encode_name_value(&mut body, n.as_bytes(), v.as_bytes());
        }
        body.len()
    };
    let mut params = cgi_params("GET", "q=1", 0);
    for i in 0.. {
        let left = total - encoded(&params);
        let name = format!("HTTP_X_PAD{i}");
        // Name length byte + 4-byte value length + name; values of 128 bytes
        // or more always use the 4-byte length.
        let overhead = 1 + 4 + name.len();
        if left > 30_000 + overhead + 200 {
            params.push((name, "p".repeat(30_000)));
        } else {
            assert!(left >= 128 + overhead, "total too small");
            params.push((name, "p".repeat(left - overhead)));
            break;
        }
    }
    assert_eq!(encoded(&params), total, "padding arithmetic");
    params
}

#[test]
fn params_of_exactly_max_params_bytes_are_accepted() {
    let app = App::start(HELLO_SCRIPT);
    let params = params_of_encoded_size(131_072);
    let response = request(&mut app.shim.connect(), &params, b"", false);
    let cgi = response.complete_cgi();
    assert_eq!(
        (cgi.status, cgi.body_text()),
        (200, "hello GET q=1".to_string())
    );
}

#[test]
fn params_over_max_params_bytes_close_connection_and_next_is_served() {
    let app = App::build(5, touching_hello);
    let mut conn = app.shim.connect();
    let params = params_of_encoded_size(131_073);
    send_expecting_close(&mut conn, encode_request(1, &params, b"", false));
    assert!(
        !app.dir.join("ran").exists(),
        "the program ran for an oversized request"
    );
    assert_logged_and_next_served(&app, "131073 bytes of PARAMS (limit 131072)");
}

fn params_with_count(count: usize) -> Vec<(String, String)> {
    let mut params = cgi_params("GET", "q=1", 0);
    let mut i = 0;
    while params.len() < count {
        params.push((format!("HTTP_X_P{i}"), "x".into()));
        i += 1;
    }
    params
}

#[test]
fn exactly_max_params_pairs_are_accepted() {
    let app = App::start(HELLO_SCRIPT);
    let response = request(
        &mut app.shim.connect(),
        &params_with_count(1000),
        b"",
        false,
    );
    let cgi = response.complete_cgi();
    assert_eq!(
        (cgi.status, cgi.body_text()),
        (200, "hello GET q=1".to_string())
    );
}

#[test]
fn more_than_max_params_pairs_close_connection_and_next_is_served() {
    let app = App::build(5, touching_hello);
    let mut conn = app.shim.connect();
    send_expecting_close(
        &mut conn,
        encode_request(1, &params_with_count(1001), b"", false),
    );
    assert!(
        !app.dir.join("ran").exists(),
        "the program ran with 1001 params"
    );
    assert_closed_logged_and_next_served(&app, conn, "1001 name-value pairs (limit 1000)");
}

#[test]
fn more_than_max_param_records_close_connection_and_next_is_served() {
    let app = App::build(5, touching_hello);
    let mut conn = app.shim.connect();
    // One pair (about 1.2 KB, well under the byte and pair limits) spread over
    // one-byte PARAMS records: 1200+ records, over max_param_records = 1024.
    let mut pairs = Vec::new();
    encode_name_value(&mut pairs, b"HTTP_X_SPLIT", "s".repeat(1200).as_bytes());
    assert!(pairs.len() > 1100);
    let mut out = begin(1, RESPONDER, 0);
    encode_stream(&mut out, PARAMS, 1, &pairs, 1);
    encode_stream(&mut out, STDIN, 1, b"", MAX_CONTENT);
    send_expecting_close(&mut conn, out);
    assert!(
        !app.dir.join("ran").exists(),
        "the program ran with 1200 PARAMS records"
    );
    assert_closed_logged_and_next_served(&app, conn, "1213 one-byte PARAMS records (limit 1024)");
}

#[test]
fn management_records_up_to_the_limit_are_answered() {
    let app = App::start(HELLO_SCRIPT);
    let mut conn = app.shim.connect();
    let query = get_values_query(&["FCGI_MPXS_CONNS"]);
    send(&mut conn, &query.repeat(64));
    for i in 0..64 {
        let record = expect_record(&mut conn, &format!("GET_VALUES_RESULT #{}", i + 1));
        assert_eq!(
            (record.rtype, record.id),
            (GET_VALUES_RESULT, 0),
            "#{}: {record:?}",
            i + 1
        );
    }
    assert_hello(&mut conn, false);
}

#[test]
fn more_than_max_management_records_close_connection_and_next_is_served() {
    let app = App::start(HELLO_SCRIPT);
    let mut conn = app.shim.connect();
    let query = get_values_query(&["FCGI_MPXS_CONNS"]);
    let closed = send_expecting_close(&mut conn, query.repeat(200));
    let bytes = match &closed {
        Closed::Eof { bytes } | Closed::Reset { bytes } => bytes.clone(),
    };
    let mut answers = 0;
    let mut rest = bytes.as_slice();
    while let Ok(Some(record)) = read_record(&mut rest) {
        assert_eq!(record.rtype, GET_VALUES_RESULT, "{record:?}");
        answers += 1;
    }
    assert!(
        answers <= 64,
        "{answers} management records answered (limit 64)"
    );
    assert_logged_and_next_served(&app, "200 GET_VALUES records (limit 64)");
}

// ---------------------------------------------------------------------------
// Transports, activation, logging, signals
// ---------------------------------------------------------------------------

#[test]
fn tcp_listener_on_fd_0_is_served() {
    let dir = TempDir::new("app");
    let script = dir.script("app.sh", HELLO_SCRIPT);
    let shim = Shim::start_tcp(&settings(&script));
    let mut conn = shim.connect();
    assert_hello(&mut conn, true);
    assert_eq!(get_values(&mut conn), expected_values());
    assert_hello(&mut conn, false);
}

#[test]
fn systemd_socket_activation_listener_on_fd_3_is_served() {
    let dir = TempDir::new("app");
    let script = dir.script("app.sh", HELLO_SCRIPT);
    let shim = Shim::launch(
        TempDir::new("shim"),
        Launch {
            settings: Some(settings(&script)),
            systemd: true,
            ..Launch::default()
        },
    );
    assert_hello(&mut shim.connect(), false);
    assert_hello(&mut shim.connect(), false);
}

#[test]
fn log_lines_carry_site_and_pid_and_go_to_stderr() {
    let app = App::start(HELLO_SCRIPT);
    let mut conn = app.shim.connect();
    send(&mut conn, b"GET / HTTP/1.1\r\n\r\n");
    let _ = read_until_closed(&mut conn);
    assert!(
        app.shim.wait_for_log("closing connection", LOG_WAIT),
        "log:\n{}",
        app.shim.log()
    );
    let prefix = app.shim.log_prefix(SITE);
    let log = app.shim.log();
    for line in log.lines().filter(|l| !l.is_empty()) {
        let rest = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("log line without the prefix {prefix:?}: {line:?}"));
        let (level, _message) = rest
            .split_once(": ")
            .unwrap_or_else(|| panic!("log line without `<level>: `: {line:?}"));
        assert!(
            ["error", "warn", "warning", "info", "debug", "trace"]
                .contains(&level.to_ascii_lowercase().as_str()),
            "unknown level {level:?} in {line:?}"
        );
    }
    assert!(app.shim.stdout_bytes().is_empty());
}

#[test]
fn nothing_is_ever_written_to_fd_1() {
    let mut app = App::start(
        r#"echo 'program stderr' >&2
if [ "$QUERY_STRING" = fail ]; then exit 1; fi
printf 'Content-Type: text/plain\r\n\r\nhello %s %s' "$REQUEST_METHOD" "$QUERY_STRING""#,
    );
    let mut conn = app.shim.connect();
    assert_eq!(get_values(&mut conn), expected_values());
    assert_hello(&mut conn, true);
    let response = request_with_id(&mut conn, 2, &cgi_params("GET", "fail", 0), b"", false);
    assert_eq!(response.complete_cgi().status, 502);
    let mut bad = app.shim.connect();
    send(&mut bad, b"garbage garbage garbage");
    let _ = read_until_closed(&mut bad);
    assert!(
        app.shim.wait_for_log("closing connection", LOG_WAIT),
        "log:\n{}",
        app.shim.log()
    );
    app.shim.terminate();
    let status = app.shim.wait_exit(Duration::from_secs(5));
    assert!(status.is_some(), "no exit after SIGTERM");
    assert_eq!(
        String::from_utf8_lossy(&app.shim.stdout_bytes()),
        "",
        "bytes written to fd 1"
    );
}

#[test]
fn sigterm_while_idle_exits_zero_within_one_second() {
    let mut app = App::start(HELLO_SCRIPT);
    assert_hello(&mut app.shim.connect(), false);
    app.shim.terminate();
    let status = app.shim.wait_exit(Duration::from_secs(1));
    match status {
        Some(status) => assert_eq!(status.code(), Some(0), "exit status {status:?}"),
        None => panic!("still running 1 s after SIGTERM"),
    }
}

#[test]
fn sigterm_during_a_request_lets_it_complete_then_exits_zero() {
    let marker = unique_marker();
    let mut app = App::build(10, |dir| {
        format!(
            r#": > '{started}'
sleep 1
printf 'Content-Type: text/plain\r\n\r\ndone'"#,
            started = dir.join("started").display()
        )
    });
    let mut conn = app.shim.connect();
    let mut params = cgi_params("GET", "", 0);
    params.push(("FCGI_TEST_MARKER".into(), marker.clone()));
    send(&mut conn, &encode_request(1, &params, b"", false));
    assert!(
        wait_for_file(&app.dir.join("started"), Duration::from_secs(5)),
        "the program never started"
    );
    app.shim.terminate();
    let response = read_response(&mut conn, 1).expect("the request in flight completes");
    let cgi = response.complete_cgi();
    assert_eq!((cgi.status, cgi.body_text()), (200, "done".to_string()));
    let status = app.shim.wait_exit(Duration::from_secs(5));
    match status {
        Some(status) => assert_eq!(status.code(), Some(0), "exit status {status:?}"),
        None => panic!("still running 5 s after SIGTERM and the request's completion"),
    }
    let script = app.script.to_string_lossy().into_owned();
    let mut left = processes_matching(&script);
    left.extend(processes_with_env(&marker));
    assert!(
        left.is_empty(),
        "program processes left after the shim exited: {left:?}"
    );
}

// ---------------------------------------------------------------------------
// Issue 13 item 5: a silent or half-sent connection does not hold the only
// worker for long (nginx, lighttpd and `serve` on TCP can do this; mod_fcgid
// never does).
// ---------------------------------------------------------------------------

/// The shim on a TCP listener on fd 0 with `request_read_timeout = "1s"`.
fn read_timeout_app() -> (Shim, TempDir) {
    let dir = TempDir::new("readtimeout");
    let script = dir.script("app.sh", HELLO_SCRIPT);
    let settings = settings_with_timeout(&script, 5)
        .replace("[limits]\n", "[limits]\nrequest_read_timeout = \"1s\"\n");
    (Shim::start_tcp(&settings), dir)
}

#[test]
fn a_silent_connection_gives_way_after_request_read_timeout() {
    let (shim, _dir) = read_timeout_app();
    let mut silent = shim.connect();
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    assert_hello(&mut shim.connect(), false);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(4),
        "the next visitor waited {waited:?}"
    );
    assert!(
        matches!(read_until_closed(&mut silent), Closed::Eof { ref bytes } if bytes.is_empty()),
        "the silent connection was not closed quietly"
    );
    assert!(
        shim.wait_for_log(
            "fastcgi: closing connection: no complete request within 1s (request_read_timeout)",
            LOG_WAIT
        ),
        "{}",
        shim.log()
    );
}

#[test]
fn half_a_request_gives_way_after_request_read_timeout_even_when_it_trickles() {
    let (shim, _dir) = read_timeout_app();
    let whole = encode_request(1, &cgi_params("GET", "q=1", 0), b"", false);
    let mut half = shim.connect();
    // BEGIN_REQUEST and part of PARAMS, then a byte every 300 ms: an idle
    // timeout alone would never fire.
    send(&mut half, &whole[..30]);
    let trickle = thread::spawn(move || {
        for b in &whole[30..whole.len() / 2] {
            thread::sleep(Duration::from_millis(300));
            if half.write_all(&[*b]).is_err() {
                break;
            }
        }
    });
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    assert_hello(&mut shim.connect(), false);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(4),
        "the next visitor waited {waited:?}"
    );
    assert!(
        shim.log()
            .contains("closing connection: no complete request within 1s (request_read_timeout)"),
        "{}",
        shim.log()
    );
    trickle.join().unwrap();
}

// ---------------------------------------------------------------------------
// Issue 13 item 6: out of resources is answered, not met with silence.
// ---------------------------------------------------------------------------

/// A 5 MiB upload while the program has not read it yet: past 1 MiB the
/// body goes to a temporary file in `$TMPDIR`.
fn upload_5_mib(shim: &Shim) -> CgiResponse {
    let body = prng_bytes(5 * 1024 * 1024, 13);
    let mut conn = shim.connect();
    let (response, _write_error) = exchange(
        &mut conn,
        encode_request(1, &cgi_params("POST", "up=1", body.len()), &body, false),
        1,
    );
    let response = response.expect("a response to the upload");
    assert_eq!(response.protocol_status, REQUEST_COMPLETE);
    response.complete_cgi()
}

/// `prelude` (shell lines) runs before the shim is exec'd: a wrapper that
/// sets the limits under test, as the user's `ulimit` would.
fn shim_under_limits(dir: TempDir, prelude: &str, env: Vec<(String, String)>) -> Shim {
    let script = dir.script(
        "app.sh",
        &format!("sleep 1\ncat > /dev/null\n{HELLO_SCRIPT}"),
    );
    let wrapper = shim_after(&dir, prelude);
    let settings = settings_with_timeout(&script, 10);
    Shim::launch(
        dir,
        Launch {
            settings: Some(settings),
            program: Some(wrapper),
            env,
            ..Launch::default()
        },
    )
}

fn assert_503_and_one_log_line(shim: &Shim, want_in_line: &str) {
    for round in 0..2 {
        let r = upload_5_mib(shim);
        assert_eq!(r.status, 503, "round {round}: {r:?}\n{}", shim.log());
        assert!(
            r.body_text().contains("cannot take the request body"),
            "{}",
            r.body_text()
        );
    }
    let log = shim.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot hold the request body"))
        .collect();
    assert_eq!(lines.len(), 1, "one line a minute:\n{log}");
    let complaints = log
        .lines()
        .filter(|l| l.contains("] warn: ") || l.contains("] error: "))
        .count();
    assert_eq!(
        complaints, 1,
        "no other warning for the two uploads:\n{log}"
    );
    assert!(
        lines[0].contains("fastcgi: POST ") && lines[0].contains(want_in_line),
        "{log}"
    );
    assert!(lines[0].ends_with("answering 503"), "{log}");
    // Small requests (no temporary file) are still served.
    assert_hello(&mut shim.connect(), false);
}

#[test]
fn an_upload_that_cannot_be_spooled_because_the_disk_is_full_gets_a_503_and_one_log_line() {
    // A file size limit makes writes fail as a full disk does (EFBIG for
    // ENOSPC), without root or a loop device. SIGXFSZ ignored, as a shell's
    // `trap '' XFSZ` passes it on.
    let dir = TempDir::new("fullspool");
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let env = vec![("TMPDIR".to_string(), tmp.display().to_string())];
    let shim = shim_under_limits(dir, "ulimit -f 2048\ntrap '' XFSZ", env);
    assert_503_and_one_log_line(&shim, "cannot write to the temporary file in ");
}

#[test]
fn an_upload_without_a_usable_temporary_directory_gets_a_503_and_one_log_line() {
    let dir = TempDir::new("nospool");
    let env = vec![(
        "TMPDIR".to_string(),
        dir.join("missing").display().to_string(),
    )];
    let shim = shim_under_limits(dir, ":", env);
    assert_503_and_one_log_line(&shim, "cannot create a temporary file in ");
}

/// `ulimit -n` so low that accept(2) fails (EMFILE), or the program cannot
/// be started: every request is answered 503 (or served), and each cause is
/// logged once, not ten times a second.
#[test]
fn out_of_file_descriptors_every_request_gets_a_503_and_each_cause_one_log_line() {
    let mut causes_seen = Vec::new();
    for nofile in 7..=9 {
        let dir = TempDir::new("nofile");
        let script = dir.script("app.sh", HELLO_SCRIPT);
        let wrapper = shim_after(&dir, &format!("ulimit -n {nofile}"));
        let shim = Shim::launch(
            dir,
            Launch {
                settings: Some(settings_with_timeout(&script, 5)),
                program: Some(wrapper),
                ..Launch::default()
            },
        );
        for _ in 0..5 {
            let mut conn = shim.connect();
            let r = request(&mut conn, &cgi_params("GET", "q=1", 0), b"", false).complete_cgi();
            assert!(
                r.status == 503 || r.body_text() == "hello GET q=1",
                "ulimit -n {nofile}: {r:?}\n{}",
                shim.log()
            );
        }
        thread::sleep(Duration::from_millis(300));
        let log = shim.log();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("] error: ")).collect();
        let mut unique = errors.clone();
        unique.dedup();
        assert_eq!(
            errors, unique,
            "ulimit -n {nofile}: a cause logged twice:\n{log}"
        );
        assert!(errors.len() <= 1, "ulimit -n {nofile}:\n{log}");
        causes_seen.extend(
            errors
                .iter()
                .map(|l| l.split("] error: ").nth(1).unwrap_or("").to_string()),
        );
    }
    let seen = causes_seen.join("\n");
    assert!(
        seen.contains(
            "accept failed: Too many open files (os error 24): answering 503 with the file \
             descriptor kept in reserve"
        ),
        "{seen}"
    );
    assert!(
        seen.contains("Too many open files (os error 24) (503)"),
        "{seen}"
    );
}

/// An abort before the parameters are complete is answered at once too,
/// with the same appStatus, and the kept connection goes on.
#[test]
fn abort_during_the_parameters_is_answered_and_the_connection_goes_on() {
    let app = App::build(5, touching_hello);
    let mut conn = app.shim.connect();
    let mut bytes = begin(1, RESPONDER, KEEP_CONN);
    let mut pairs = Vec::new();
    for (name, value) in cgi_params("GET", "q=1", 0) {
        encode_name_value(&mut pairs, name.as_bytes(), value.as_bytes());
    }
    // Not ended (no empty PARAMS record): the request has not begun.
    encode_record(&mut bytes, PARAMS, 1, &pairs);
    encode_record(&mut bytes, ABORT_REQUEST, 1, &[]);
    send(&mut conn, &bytes);
    let response = read_response(&mut conn, 1).expect("END_REQUEST after ABORT_REQUEST");
    assert_eq!(
        (response.protocol_status, response.app_status),
        (REQUEST_COMPLETE, 1)
    );
    assert!(response.stdout.is_empty());
    assert!(!app.dir.join("ran").exists());
    let response = request_with_id(&mut conn, 2, &cgi_params("GET", "q=1", 0), b"", false);
    assert_eq!(response.complete_cgi().body_text(), "hello GET q=1");
}

//! How `fcgi-shim` is launched and how it reads its settings: usage text when
//! run by hand, `--help`, `check`, the 503 fallback for invalid settings, and
//! the ways the settings file is found (argument, file beside the binary,
//! `FCGI_SHIM_CONFIG`).
//!
//! Every run of the binary is bounded in time; a hang is a failure.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const RUN_LIMIT: Duration = Duration::from_secs(5);
const LOG_WAIT: Duration = Duration::from_secs(5);

/// The binary with a cleared environment (PATH kept), stdin /dev/null and an
/// empty working directory, as someone trying it by hand would run it.
fn by_hand(cwd: &TempDir) -> Command {
    let mut cmd = Command::new(shim_bin());
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .current_dir(cwd.path())
        .stdin(Stdio::null());
    cmd
}

/// The run exited with `code` (its stderr in the failure message).
fn assert_exit(outcome: &Outcome, code: i32) {
    assert_eq!(
        outcome.status.code(),
        Some(code),
        "status {:?}; stderr:\n{}",
        outcome.status,
        outcome.stderr
    );
}

fn check(settings: &Path, dir: &TempDir) -> Outcome {
    run_bounded(by_hand(dir).arg("check").arg(settings), dir, RUN_LIMIT)
}

/// Settings with `comand` (line 3, column 1) instead of `command`.
fn misspelt_settings(command: &Path) -> String {
    format!(
        "[app]\nkind = \"cgi\"\ncomand = [\"{}\"]\ntimeout = 5\n\n[log]\nlevel = \"info\"\n",
        command.display()
    )
}

/// Asserts that some line of `stderr` starts with `<path>:<line>:` followed by
/// a column number (exactly `column` if given) and `: `, and that this line
/// contains every string in `words`. Returns the line.
fn assert_located_error(
    stderr: &str,
    path: &Path,
    line: u32,
    column: Option<u32>,
    words: &[&str],
) -> String {
    let prefix = format!("{}:{line}:", path.display());
    let found = stderr.lines().find(|l| {
        let Some(rest) = l.strip_prefix(&prefix) else {
            return false;
        };
        let Some((col, _message)) = rest.split_once(": ") else {
            return false;
        };
        match column {
            Some(c) => col == c.to_string(),
            None => !col.is_empty() && col.bytes().all(|b| b.is_ascii_digit()),
        }
    });
    let Some(found) = found else {
        panic!(
            "no line starting with {prefix:?}{} in stderr:\n{stderr}",
            column
                .map(|c| format!("{c}: "))
                .unwrap_or("<column>: ".into())
        );
    };
    for word in words {
        assert!(found.contains(word), "{word:?} not mentioned in {found:?}");
    }
    found.to_string()
}

/// Opens a connection, sends garbage so that the shim logs "closing
/// connection", and returns that log line.
fn provoke_log_line(shim: &Shim) -> String {
    let mut conn = shim.connect();
    send(&mut conn, b"GET / HTTP/1.1\r\n\r\n");
    let _ = read_until_closed(&mut conn);
    assert!(
        shim.wait_for_log("closing connection", LOG_WAIT),
        "log:\n{}",
        shim.log()
    );
    shim.log()
        .lines()
        .find(|l| l.contains("closing connection"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn run_by_hand_without_arguments_prints_usage_on_stderr_and_exits_2() {
    let cwd = TempDir::new("byhand");
    let outcome = run_bounded(&mut by_hand(&cwd), &cwd, RUN_LIMIT);
    assert_exit(&outcome, 2);
    assert!(
        outcome.elapsed < Duration::from_secs(2),
        "took {:?}",
        outcome.elapsed
    );
    let stderr = outcome.stderr.to_ascii_lowercase();
    assert!(stderr.contains("usage"), "stderr:\n{}", outcome.stderr);
    assert!(
        stderr.contains("fastcgi"),
        "the usage text should explain that a web server launches it over FastCGI:\n{}",
        outcome.stderr
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.stdout, "", "nothing on stdout when run by hand");
}

#[test]
fn help_prints_usage_on_stdout_and_exits_0() {
    let cwd = TempDir::new("help");
    let outcome = run_bounded(by_hand(&cwd).arg("--help"), &cwd, RUN_LIMIT);
    assert_exit(&outcome, 0);
    assert!(
        outcome.stdout.to_ascii_lowercase().contains("usage"),
        "stdout:\n{}\nstderr:\n{}",
        outcome.stdout,
        outcome.stderr
    );
}

#[test]
fn check_accepts_valid_settings() {
    let dir = TempDir::new("check");
    let script = dir.script("app.sh", HELLO_SCRIPT);
    let path = dir.write("good.toml", &settings(&script));
    let outcome = check(&path, &dir);
    assert_exit(&outcome, 0);
    assert!(
        outcome.stdout.to_ascii_lowercase().contains("ok"),
        "stdout {:?}, stderr {:?}",
        outcome.stdout,
        outcome.stderr
    );
}

#[test]
fn check_reports_a_misspelt_key_with_position_and_suggestion() {
    let dir = TempDir::new("check");
    let path = dir.write("typo.toml", &misspelt_settings(Path::new("/bin/true")));
    let outcome = check(&path, &dir);
    assert_exit(&outcome, 1);
    assert_located_error(&outcome.stderr, &path, 3, Some(1), &["comand", "command"]);
}

#[test]
fn check_reports_a_wrong_type_naming_the_key() {
    let dir = TempDir::new("check");
    let path = dir.write(
        "type.toml",
        "[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\ntimeout = \"soon\"\n",
    );
    let outcome = check(&path, &dir);
    assert_exit(&outcome, 1);
    assert_located_error(&outcome.stderr, &path, 4, None, &["timeout"]);
}

#[test]
fn check_reports_a_missing_file() {
    let dir = TempDir::new("check");
    let path = dir.join("does-not-exist.toml");
    let outcome = check(&path, &dir);
    assert_exit(&outcome, 1);
    assert!(
        outcome.stderr.contains(&path.display().to_string()),
        "the error should name the file; stderr:\n{}",
        outcome.stderr
    );
    assert!(
        !outcome.stderr.contains("panicked"),
        "stderr:\n{}",
        outcome.stderr
    );
}

#[test]
fn invalid_settings_with_a_listener_answer_503_and_log_the_error() {
    let dir = TempDir::new("app");
    let script = dir.script(
        "app.sh",
        &format!(": > '{}'\n{HELLO_SCRIPT}", dir.join("ran").display()),
    );
    let mut shim = Shim::start(&misspelt_settings(&script));
    let settings_path = shim.dir().join(&format!("{SITE}.toml"));
    for round in 0..2 {
        let response = request(
            &mut shim.connect(),
            &cgi_params("GET", "q=1", 0),
            b"",
            false,
        );
        let cgi = response.complete_cgi();
        assert_eq!(cgi.status, 503, "request #{round}: {cgi:?}");
    }
    assert!(
        !dir.join("ran").exists(),
        "the program ran with invalid settings"
    );
    assert_eq!(
        shim.try_exit(),
        None,
        "the shim exited instead of answering 503"
    );
    let located = format!("{}:3:1:", settings_path.display());
    assert!(
        shim.wait_for_log(&located, LOG_WAIT),
        "log should contain {located:?}:\n{}",
        shim.log()
    );
    let log = shim.log();
    let line = log
        .lines()
        .find(|l| l.contains(&located))
        .unwrap_or_default();
    assert!(line.contains("comand"), "log line {line:?}");
    assert!(shim.stdout_bytes().is_empty(), "bytes on fd 1");
}

#[test]
fn settings_file_beside_the_binary_is_found() {
    let app_dir = TempDir::new("app");
    let script = app_dir.script("app.sh", HELLO_SCRIPT);
    let dir = TempDir::new("sibling");
    let binary = dir.join("mysite.fcgi");
    fs::copy(shim_bin(), &binary).expect("copy the binary");
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod");
    dir.write("mysite.toml", &settings(&script));
    let shim = Shim::launch(
        dir,
        Launch {
            program: Some(binary),
            ..Launch::default()
        },
    );
    assert_hello(&mut shim.connect(), false);
    let line = provoke_log_line(&shim);
    assert!(
        line.starts_with(&shim.log_prefix("mysite")),
        "site name should be the settings file's stem: {line:?}"
    );
}

#[test]
fn fcgi_shim_config_env_var_names_the_settings() {
    let app_dir = TempDir::new("app");
    let script = app_dir.script("app.sh", HELLO_SCRIPT);
    let config = app_dir.write("other.toml", &settings(&script));
    let shim = Shim::launch(
        TempDir::new("envcfg"),
        Launch {
            env: vec![("FCGI_SHIM_CONFIG".to_string(), config.display().to_string())],
            ..Launch::default()
        },
    );
    assert_hello(&mut shim.connect(), false);
    let line = provoke_log_line(&shim);
    assert!(
        line.starts_with(&shim.log_prefix("other")),
        "site name should be the settings file's stem: {line:?}"
    );
}

#[test]
fn log_target_file_writes_the_log_to_that_file() {
    let dir = TempDir::new("app");
    let script = dir.script("app.sh", HELLO_SCRIPT);
    let log_file = dir.join("shim.log");
    let toml = settings(&script).replace(
        "[log]\nlevel = \"info\"\n",
        &format!(
            "[log]\nlevel = \"info\"\ntarget = \"file\"\nfile = \"{}\"\n",
            log_file.display()
        ),
    );
    assert!(toml.contains("target = \"file\""));
    let shim = Shim::start(&toml);
    let mut conn = shim.connect();
    send(&mut conn, b"GET / HTTP/1.1\r\n\r\n");
    let _ = read_until_closed(&mut conn);
    let deadline = Instant::now() + LOG_WAIT;
    let contents = loop {
        let contents = fs::read_to_string(&log_file).unwrap_or_default();
        if contents.contains("closing connection") || Instant::now() >= deadline {
            break contents;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let line = contents
        .lines()
        .find(|l| l.contains("closing connection"))
        .unwrap_or_else(|| {
            panic!(
                "{} does not contain \"closing connection\":\n{contents}\nstderr:\n{}",
                log_file.display(),
                shim.log()
            )
        });
    assert!(line.starts_with(&shim.log_prefix(SITE)), "{line:?}");
    assert!(
        !shim.log().contains("closing connection"),
        "with target = \"file\" the line should not also go to stderr"
    );
    assert_hello(&mut shim.connect(), false);
}

/// Issue 11, item 6: with unusable settings every log line still names the
/// site (the settings file's stem), and a type error is said in plain words.
#[test]
fn invalid_settings_still_name_the_site_and_say_the_type_plainly() {
    let mut shim = Shim::start("[app]\nkind = \"wsgi\"\nmodule = \"m\"\nmax_requests = \"ten\"\n");
    let response = request(
        &mut shim.connect(),
        &cgi_params("GET", "q=1", 0),
        b"",
        false,
    );
    assert_eq!(response.complete_cgi().status, 503);
    let settings_path = shim.dir().join(&format!("{SITE}.toml"));
    let wanted = format!(
        "{}:4:16: in [app], key `max_requests`: expected a whole number, found the text \"ten\"",
        settings_path.display()
    );
    assert!(
        shim.wait_for_log(&wanted, LOG_WAIT),
        "log should contain {wanted:?}:\n{}",
        shim.log()
    );
    let log = shim.log();
    let prefix = shim.log_prefix(SITE);
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(line.starts_with(&prefix), "{line:?} lacks {prefix:?}");
    }
    assert_eq!(
        shim.try_exit(),
        None,
        "the shim exited instead of answering 503"
    );
}

#[test]
fn check_says_a_wrong_type_in_plain_words() {
    let dir = TempDir::new("check");
    let path = dir.write(
        "type.toml",
        "[app]\nkind = \"wsgi\"\nmodule = \"m\"\ndebug = 3\n",
    );
    let outcome = check(&path, &dir);
    assert_exit(&outcome, 1);
    assert_located_error(
        &outcome.stderr,
        &path,
        4,
        Some(9),
        &["key `debug`", "expected true or false, found the number 3"],
    );
}

/// Issue 13, item 7: a Latin-1 byte is reported at its line:column, not as
/// a bare "stream did not contain valid UTF-8".
#[test]
fn check_locates_a_byte_that_is_not_utf8() {
    let dir = TempDir::new("check");
    let path = dir.join("latin1.toml");
    std::fs::write(&path, b"[app]\nkind = \"cgi\"\n# caf\xe9\n").unwrap();
    let outcome = check(&path, &dir);
    assert_exit(&outcome, 1);
    assert_located_error(&outcome.stderr, &path, 3, Some(6), &["not UTF-8", "0xe9"]);
}

/// Issue 13, item 7: a key of 100 dotted parts is located, not a bare
/// "recursion limit"; nested arrays likewise.
#[test]
fn check_locates_settings_that_nest_too_deeply() {
    let dir = TempDir::new("check");
    let key = vec!["a"; 100].join(".");
    let path = dir.write(
        "key.toml",
        &format!("[app]\nkind = \"cgi\"\n\n  {key} = 1\n"),
    );
    let outcome = check(&path, &dir);
    assert_exit(&outcome, 1);
    assert_located_error(
        &outcome.stderr,
        &path,
        4,
        Some(3),
        &["nest too deeply", "80"],
    );

    let arrays = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let path = dir.write(
        "arrays.toml",
        &format!("[app]\nkind = \"cgi\"\nx = {arrays}\n"),
    );
    let outcome = check(&path, &dir);
    assert_exit(&outcome, 1);
    assert_located_error(&outcome.stderr, &path, 3, None, &["nest too deeply"]);
}

/// Issue 13, item 7: a 30 MB file is refused before parsing, quickly.
#[test]
fn check_refuses_a_huge_settings_file_before_parsing() {
    let dir = TempDir::new("check");
    let body = format!("[app]\nkind = \"cgi\"\nx = [{}]\n", "1,".repeat(15_000_000));
    let path = dir.write("huge.toml", &body);
    let started = Instant::now();
    let outcome = check(&path, &dir);
    assert_exit(&outcome, 1);
    assert!(
        outcome.stderr.contains("larger than 1024 KiB"),
        "stderr:\n{}",
        outcome.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

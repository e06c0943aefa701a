//! `fcgi-shim check` and the classic misdeployments of a shared host (issue
//! 11, item 5): a settings file without the execute bit, saved with CRLF line
//! endings, naming a missing interpreter; a group-writable directory and an
//! owner that differs (what suEXEC refuses); a python_path directory the
//! user cannot read; settings no `.htaccess` denies; and `ok` for a correct
//! site in both forms. Then the same diagnosis in the running shim's log line.
//!
//! Root bypasses permission bits, so the unreadable-directory cases run the
//! binary as nobody (uid 65534); they are skipped when the tests are not root.
//! Every run of the binary is bounded in time.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const RUN_LIMIT: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;
const SHIPPED_HTACCESS: &str = include_str!("../htaccess-examples/mod_fcgid.htaccess");

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A site directory (mode 0755, whatever the umask) in a fresh temp dir.
fn site_dir(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    chmod(dir.path(), 0o755);
    dir
}

/// Settings in the shebang form: `#!` the binary under test, a CGI program.
fn shebang_settings(interpreter: &Path) -> String {
    format!(
        "#!{}\n[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\n",
        interpreter.display()
    )
}

/// `fcgi-shim check ARGS` with a cleared environment (PATH kept).
fn check_command(program: &Path, args: &[&Path]) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("check")
        .args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .current_dir("/")
        .stdin(Stdio::null());
    cmd
}

fn check(dir: &TempDir, settings: &Path) -> Outcome {
    run_bounded(&mut check_command(&shim_bin(), &[settings]), dir, RUN_LIMIT)
}

/// Asserts the exit status and returns stdout + stderr.
fn expect(outcome: &Outcome, code: i32) -> String {
    let all = format!("{}{}", outcome.stdout, outcome.stderr);
    assert_eq!(outcome.status.code(), Some(code), "output:\n{all}");
    assert!(!all.contains("panicked"), "output:\n{all}");
    all
}

/// The one output line about `path`, which must contain every word of `words`.
fn line_about<'a>(output: &'a str, path: &Path, words: &[&str]) -> &'a str {
    let prefix = format!("{}: ", path.display());
    let line = output
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line about {}:\n{output}", path.display()));
    for word in words {
        assert!(line.contains(word), "{word:?} missing from {line:?}");
    }
    assert!(line.contains("; fix: "), "no fix in {line:?}");
    line
}

#[test]
fn a_settings_file_without_the_execute_bit_is_named_with_its_mode() {
    let dir = site_dir("noexec");
    let file = dir.write("noexec.fcgi", &shebang_settings(&shim_bin()));
    chmod(&file, 0o644);
    let out = expect(&check(&dir, &file), 1);
    line_about(&out, &file, &["not executable", "0644", "chmod 755"]);
    assert!(!out.contains("ok:"), "{out}");
}

#[test]
fn a_shebang_file_saved_with_crlf_line_endings_is_named() {
    let dir = site_dir("crlf");
    let text = shebang_settings(&shim_bin()).replace('\n', "\r\n");
    let file = dir.write("crlf.fcgi", &text);
    chmod(&file, 0o755);
    let out = expect(&check(&dir, &file), 1);
    line_about(
        &out,
        &file,
        &["carriage return", "CRLF", "line endings", "sed -i"],
    );
}

#[test]
fn crlf_after_the_first_line_is_named_too() {
    let dir = site_dir("crlf2");
    let text = shebang_settings(&shim_bin());
    let (first, rest) = text.split_once('\n').unwrap();
    let file = dir.write(
        "crlf2.fcgi",
        &format!("{first}\n{}", rest.replace('\n', "\r\n")),
    );
    chmod(&file, 0o755);
    let out = expect(&check(&dir, &file), 1);
    line_about(&out, &file, &["3 line(s)", "CRLF"]);
}

#[test]
fn every_problem_is_listed_not_only_the_first() {
    let dir = site_dir("both");
    let text = shebang_settings(&shim_bin()).replace('\n', "\r\n");
    let file = dir.write("both.fcgi", &text);
    chmod(&file, 0o644);
    let out = expect(&check(&dir, &file), 1);
    let about: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&format!("{}: ", file.display())))
        .collect();
    assert_eq!(about.len(), 2, "{out}");
    assert!(about[0].contains("not executable"), "{out}");
    assert!(about[1].contains("carriage return"), "{out}");
}

#[test]
fn a_missing_shebang_interpreter_is_named() {
    let dir = site_dir("nointerp");
    let interpreter = dir.join("bin/fcgi-shim");
    let file = dir.write("mysite.fcgi", &shebang_settings(&interpreter));
    chmod(&file, 0o755);
    let out = expect(&check(&dir, &file), 1);
    line_about(
        &out,
        &file,
        &[&interpreter.display().to_string(), "does not exist"],
    );
}

#[test]
fn a_group_writable_directory_is_what_suexec_refuses() {
    let dir = site_dir("gwrite");
    let file = dir.write("mysite.fcgi", &shebang_settings(&shim_bin()));
    chmod(&file, 0o755);
    chmod(dir.path(), 0o775);
    let out = expect(&check(&dir, &file), 1);
    line_about(
        &out,
        dir.path(),
        &["writable by its group", "0775", "suEXEC", "chmod 755"],
    );

    // A running shim's re-exec does not go through suEXEC: its check of the
    // new version does not refuse it for that.
    let mut cmd = check_command(&shim_bin(), &[&file]);
    cmd.env("FCGI_SHIM_CHECK_FOR", "reload");
    let out = expect(&run_bounded(&mut cmd, &dir, RUN_LIMIT), 0);
    assert_eq!(out.trim(), format!("ok: {}", file.display()), "{out}");
}

#[test]
fn an_owner_that_differs_from_the_directory_is_what_suexec_refuses() {
    if !running_as_root() {
        eprintln!("skipped: chown needs root");
        return;
    }
    let dir = site_dir("owner");
    let file = dir.write("mysite.fcgi", &shebang_settings(&shim_bin()));
    chmod(&file, 0o755);
    std::os::unix::fs::chown(&file, Some(NOBODY), None).expect("chown nobody");
    let out = expect(&check(&dir, &file), 1);
    line_about(&out, &file, &["owned by nobody", "mismatch", "chown root"]);
}

#[test]
fn a_symlinked_program_is_what_suexec_refuses() {
    let dir = site_dir("symlink");
    let exe = shim_copy(&dir);
    let program = dir.join("mysite.fcgi");
    std::os::unix::fs::symlink(&exe, &program).expect("symlink");
    dir.write(
        "mysite.toml",
        "[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\n",
    );
    let out = expect(
        &run_bounded(&mut check_command(&program, &[]), &dir, RUN_LIMIT),
        1,
    );
    line_about(&out, &program, &["symbolic link", "cannot stat program"]);
}

/// The binary copied into `dir`, so that nobody can run it wherever the
/// build directory is.
fn shim_copy(dir: &TempDir) -> PathBuf {
    let copy = dir.join("fcgi-shim");
    fs::copy(shim_bin(), &copy).expect("copy the shim");
    chmod(&copy, 0o755);
    copy
}

fn python() -> String {
    std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A wsgi site whose python_path `app/` (mode 0700, root's) holds `myapp.py`.
fn site_with_private_app(label: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = site_dir(label);
    let app = dir.join("app");
    fs::create_dir(&app).expect("mkdir app");
    fs::write(
        app.join("myapp.py"),
        "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'hi']\n",
    )
    .expect("write myapp.py");
    chmod(&app, 0o700);
    let settings = dir.write(
        "mysite.toml",
        &format!(
            "[app]\nkind = \"wsgi\"\nmodule = \"myapp\"\npython = \"{}\"\npython_path = [\"{}\"]\n",
            python(),
            app.display()
        ),
    );
    chmod(&settings, 0o644);
    (dir, app, settings)
}

#[test]
fn a_python_path_directory_nobody_can_read_is_named_with_its_mode() {
    if !running_as_root() {
        eprintln!("skipped: needs root to run check as nobody");
        return;
    }
    let (dir, app, settings) = site_with_private_app("unread");
    let shim = shim_copy(&dir);
    let mut cmd = check_command(&shim, &[&settings]);
    cmd.uid(NOBODY).gid(NOBODY);
    let out = expect(&run_bounded(&mut cmd, &dir, RUN_LIMIT), 1);
    line_about(
        &out,
        &app,
        &[
            "nobody (uid 65534)",
            "python_path",
            "mode 0700",
            "owner root",
        ],
    );

    // A directory on the way that nobody may not enter: that one is named.
    let locked = dir.join("locked");
    let inner = locked.join("lib");
    fs::create_dir_all(&inner).expect("mkdir locked/lib");
    chmod(&locked, 0o700);
    let settings = dir.write(
        "locked.toml",
        &format!(
            "[app]\nkind = \"wsgi\"\nmodule = \"myapp\"\npython = \"{}\"\npython_path = [\"{}\"]\n",
            python(),
            inner.display()
        ),
    );
    let mut cmd = check_command(&shim, &[&settings]);
    cmd.uid(NOBODY).gid(NOBODY);
    let out = expect(&run_bounded(&mut cmd, &dir, RUN_LIMIT), 1);
    for word in ["cannot enter", "mode 0700", &locked.display().to_string()] {
        assert!(out.contains(word), "{word:?} missing:\n{out}");
    }
}

#[test]
fn settings_that_no_htaccess_denies_fail_the_check() {
    let dir = site_dir("served");
    let settings = dir.write(
        "mysite.toml",
        "[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\n",
    );
    let htaccess = dir.write(
        ".htaccess",
        "AddHandler fcgid-script .fcgi\nOptions +ExecCGI\n",
    );
    let out = expect(&check(&dir, &settings), 1);
    let line = line_about(
        &out,
        &settings,
        &[&htaccess.display().to_string(), "does not deny"],
    );
    assert!(line.contains("FilesMatch"), "{line}");

    fs::write(&htaccess, SHIPPED_HTACCESS).expect("write .htaccess");
    let out = expect(&check(&dir, &settings), 0);
    assert_eq!(out.trim(), format!("ok: {}", settings.display()), "{out}");
}

#[test]
fn a_correct_site_is_ok_in_the_shebang_form() {
    let dir = site_dir("okshebang");
    fs::write(dir.join(".htaccess"), SHIPPED_HTACCESS).expect("write .htaccess");
    let file = dir.write("mysite.fcgi", &shebang_settings(&shim_bin()));
    chmod(&file, 0o755);
    let out = expect(&check(&dir, &file), 0);
    assert_eq!(out.trim(), format!("ok: {}", file.display()), "{out}");
}

#[test]
fn a_correct_site_is_ok_in_the_two_file_form() {
    let dir = site_dir("oktwo");
    fs::write(dir.join(".htaccess"), SHIPPED_HTACCESS).expect("write .htaccess");
    let exe = shim_copy(&dir);
    let program = dir.join("mysite.fcgi");
    fs::rename(&exe, &program).expect("rename to mysite.fcgi");
    let settings = dir.write(
        "mysite.toml",
        "[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\n",
    );
    // Run as the site's own executable, and by the installed one.
    let mut cmd = check_command(&program, &[]);
    let out = expect(&run_bounded(&mut cmd, &dir, RUN_LIMIT), 0);
    assert_eq!(out.trim(), format!("ok: {}", settings.display()), "{out}");
    let out = expect(&check(&dir, &settings), 0);
    assert_eq!(out.trim(), format!("ok: {}", settings.display()), "{out}");

    // The copied executable without its execute bit: named, not the settings.
    chmod(&program, 0o644);
    let out = expect(&check(&dir, &settings), 1);
    line_about(&out, &program, &["not executable", "0644"]);
}

#[test]
fn a_cgi_program_with_a_crlf_shebang_is_explained_in_the_log() {
    let dir = TempDir::new("cgicrlf");
    let script = dir.write(
        "app.cgi",
        "#!/bin/sh\r\nprintf 'Content-Type: text/plain\\r\\n\\r\\nhi'\r\n",
    );
    chmod(&script, 0o755);
    let out = expect(&check(&dir, &dir.write("cgi.toml", &settings(&script))), 1);
    line_about(&out, &script, &["carriage return"]);

    let shim = Shim::start(&settings(&script));
    let response = request(&mut shim.connect(), &cgi_params("GET", "", 0), b"", false);
    assert_eq!(response.complete_cgi().status, 502);
    let needle = format!(
        "{}: the #! line ends with a carriage return",
        script.display()
    );
    assert!(
        shim.wait_for_log(&needle, Duration::from_secs(5)),
        "log:\n{}",
        shim.log()
    );
}

/// The shim under a web server, as nobody: the worker cannot import the
/// application because its python_path cannot be read, and the log line
/// says so with the directory and its mode.
#[test]
fn the_runtime_import_error_names_the_unreadable_python_path_directory() {
    if !running_as_root() {
        eprintln!("skipped: needs root to run the shim as nobody");
        return;
    }
    let (dir, app, settings) = site_with_private_app("rtunread");
    let shim = shim_copy(&dir);
    let socket = dir.join("fcgi.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let log = dir.join("shim.log");
    let mut cmd = Command::new(&shim);
    cmd.arg(&settings)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("create log"));
    let mut child = spawn_retrying(&mut cmd).expect("start the shim as nobody");
    let deadline = Instant::now() + Duration::from_secs(15);
    let wanted = format!(
        "{}: nobody (uid 65534) cannot read the python_path directory (mode 0700",
        app.display()
    );
    let text = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&wanted) || Instant::now() >= deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains(&wanted))
        .unwrap_or_else(|| panic!("no line with {wanted:?} in the log:\n{text}"));
    assert!(line.starts_with("[fcgi-shim mysite "), "{line}");
    assert!(line.contains("cannot import myapp:application"), "{line}");
    assert!(line.contains("ModuleNotFoundError"), "{line}");
}

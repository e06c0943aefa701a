//! End-to-end, the FastCGI AUTHORIZER role: a private Apache 2.4 + mod_fcgid
//! protects a directory of static files with
//! `htaccess-examples/protect-directory.htaccess` (FcgidAuthenticator and
//! FcgidAuthorizer naming fcgi-shim), once with the shipped Django recipe
//! (`shim-templates/django-auth.fcgi` + `django_fcgi_auth.py`, kind wsgi,
//! real Django users in SQLite) and once with a shell CGI program (kind cgi).
//! What is asserted is what a visitor and the site's owner see: the file for
//! the right user, 401 for a wrong password and for none, and the
//! application's log lines in Apache's error log saying what it decided.
//!
//! Needs what `tests/e2e_wsgi.rs` needs (Apache + mod_fcgid, and
//! `FCGI_SHIM_TEST_PYTHON` with Django for the wsgi test).

mod apache_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use apache_support::{
    ApacheInstance, HttpResponse, TempDir, apache_available_or_fail, chmod, copy_file, copy_tree,
    mkdir_world_readable, stop_leaving_nothing, write_file,
};

/// The Apache modules Basic authentication needs beyond the harness's, as a
/// host's Apache loads them: without mod_auth_basic, a 401 has no
/// WWW-Authenticate and the browser never asks for a password. (mod_fcgid's
/// authenticator runs before mod_auth_basic's, so no AuthUserFile is needed.)
const AUTH_MODULES: &str = "\
LoadModule authn_core_module /usr/lib/apache2/modules/mod_authn_core.so
LoadModule authz_user_module /usr/lib/apache2/modules/mod_authz_user.so
LoadModule auth_basic_module /usr/lib/apache2/modules/mod_auth_basic.so
LoadModule authn_file_module /usr/lib/apache2/modules/mod_authn_file.so
";

/// What the protected directory holds.
const SECRET_FILE: &str = "the protected report 4b1d\n";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn venv_python() -> String {
    match std::env::var("FCGI_SHIM_TEST_PYTHON") {
        Ok(p) if !p.is_empty() && Path::new(&p).is_file() => p,
        other => panic!(
            "the Django authenticator test needs FCGI_SHIM_TEST_PYTHON: a Python with Django \
             that Apache's www-data can run (got {other:?}); `make test` sets it. \
             FCGI_SHIM_SKIP_APACHE=1 skips all Apache tests."
        ),
    }
}

/// RFC 4648 base64, for the Authorization header.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A web root with /private/ protected by the shipped .htaccess, whose
/// FcgidAuthenticator and FcgidAuthorizer name `program`.
struct Site {
    dir: TempDir,
    apache: ApacheInstance,
}

impl Site {
    fn start(dir: TempDir, program: &Path) -> Site {
        let www = dir.mkdir("www");
        let private = mkdir_world_readable(&www.join("private"));
        let htaccess =
            fs::read_to_string(repo_path("htaccess-examples/protect-directory.htaccess"))
                .expect("read htaccess example");
        let edited = htaccess.replace(
            "/home/USER/django-auth.fcgi",
            &program.display().to_string(),
        );
        assert!(
            !edited.contains("/home/USER") && edited.contains("FcgidAuthorizer "),
            "protect-directory.htaccess changed; update this test:\n{edited}"
        );
        write_file(&private.join(".htaccess"), edited, 0o644);
        write_file(&private.join("report.txt"), SECRET_FILE, 0o644);
        let apache = ApacheInstance::start(&www, AUTH_MODULES);
        Site { dir, apache }
    }

    fn get_as(&self, credentials: Option<(&str, &str)>) -> HttpResponse {
        let header =
            credentials.map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| vec![("Authorization", h)])
            .unwrap_or_default();
        self.apache
            .request("GET", "/private/report.txt", &headers, None)
    }

    fn wait_log(&self, needle: &str) -> String {
        self.apache
            .wait_for_error_log(Duration::from_secs(10), |l| l.contains(needle))
    }

    /// The right user gets the file; a wrong password, an unknown user and no
    /// credentials get 401 without it; each decision is in the error log.
    fn check_decisions(&self, tag: &str, user: &str, password: &str) {
        let r = self.get_as(Some((user, password)));
        assert_eq!(
            r.status,
            200,
            "right password: {}\n{}",
            r.summary(),
            self.apache.logs_for_humans()
        );
        assert_eq!(r.text(), SECRET_FILE, "right password: the file");
        self.wait_log(&format!("{tag}: allowed {user}"));
        self.wait_log(&format!("{tag}: authorized {user}"));

        let r = self.get_as(Some((user, "not-the-password")));
        assert_eq!(
            r.status,
            401,
            "wrong password: {}\n{}",
            r.summary(),
            self.apache.logs_for_humans()
        );
        assert!(
            !r.text().contains(SECRET_FILE.trim()),
            "wrong password: {}",
            r.summary()
        );
        self.wait_log(&format!("{tag}: refused {user}: wrong password"));
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some("Basic realm=\"Restricted\""),
            "wrong password: the browser asks again: {}",
            r.summary()
        );

        let r = self.get_as(Some(("mallory", password)));
        assert_eq!(r.status, 401, "unknown user: {}", r.summary());
        self.wait_log(&format!("{tag}: refused mallory"));

        let r = self.get_as(None);
        assert_eq!(r.status, 401, "no credentials: {}", r.summary());
        assert!(
            !r.text().contains(SECRET_FILE.trim()),
            "no credentials: {}",
            r.summary()
        );
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some("Basic realm=\"Restricted\""),
            "no credentials: the browser asks: {}",
            r.summary()
        );
    }

    /// Stop Apache; nothing it started (shims, Python workers) may remain.
    fn finish(mut self) {
        let needles = [
            self.dir.path().display().to_string(),
            self.apache.dir().display().to_string(),
        ];
        stop_leaving_nothing(&mut self.apache, &needles);
    }
}

/// shim-templates/django-auth.fcgi edited as its comments say.
fn django_auth_template(shim: &Path, python: &str, project: &Path, db: &Path) -> String {
    let text = fs::read_to_string(repo_path("shim-templates/django-auth.fcgi")).expect("template");
    let edited = text
        .replacen("#!/home/USER/bin/fcgi-shim", &format!("#!{}", shim.display()), 1)
        .replace("/home/USER/venv/bin/python", python)
        .replace("/home/USER/myproject", &project.display().to_string())
        .replace(
            "env = { DJANGO_SETTINGS_MODULE = \"myproject.settings\" }",
            &format!(
                "env = {{ DJANGO_SETTINGS_MODULE = \"djsite.settings\", DJSITE_DB = \"{}\", PYTHONDONTWRITEBYTECODE = \"1\" }}",
                db.display()
            ),
        );
    assert!(
        !edited.contains("USER") && edited.contains("DJSITE_DB"),
        "shim-templates/django-auth.fcgi changed; update this test:\n{edited}"
    );
    edited
}

fn manage(python: &str, project: &Path, db: &Path, args: &[&str]) {
    let out = Command::new(python)
        .arg("manage.py")
        .args(args)
        .current_dir(project)
        .env("DJANGO_SETTINGS_MODULE", "djsite.settings")
        .env("DJSITE_DB", db)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run manage.py");
    assert!(
        out.status.success(),
        "manage.py {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn django_authenticator_protects_a_directory_of_static_files() {
    if !apache_available_or_fail() {
        return;
    }
    let python = venv_python();
    let dir = TempDir::new("fcgi-shim-e2e-auth-wsgi");
    let project = dir.path().join("app/djsite");
    copy_tree(&repo_path("tests/wsgi_apps/djsite"), &project);
    copy_file(
        &repo_path("shim-templates/django_fcgi_auth.py"),
        &project.join("django_fcgi_auth.py"),
        0o644,
    );
    // The users: a SQLite file Apache's www-data can read (and write, for
    // SQLite's journal should Django ever write).
    let db_dir = dir.mkdir("db");
    chmod(&db_dir, 0o777);
    let db = db_dir.join("users.sqlite3");
    manage(&python, &project, &db, &["migrate", "--noinput", "-v", "0"]);
    manage(
        &python,
        &project,
        &db,
        &[
            "shell",
            "-c",
            "from django.contrib.auth.models import User; User.objects.create_user('bob', password='correct horse 9')",
        ],
    );
    chmod(&db, 0o666);
    let shim = dir.mkdir("bin").join("fcgi-shim");
    copy_file(Path::new(env!("CARGO_BIN_EXE_fcgi-shim")), &shim, 0o755);
    // Outside the web root, as the template says.
    let program = dir.mkdir("auth").join("django-auth.fcgi");
    write_file(
        &program,
        django_auth_template(&shim, &python, &project, &db),
        0o755,
    );
    let site = Site::start(dir, &program);
    site.check_decisions("django-auth", "bob", "correct horse 9");
    site.finish();
}

/// A CGI authenticator and authorizer: one user, a fixed password.
const CGI_AUTH: &str = r#"#!/bin/sh
case "$FCGI_ROLE/$FCGI_APACHE_ROLE" in
AUTHORIZER/AUTHENTICATOR)
    if [ "$REMOTE_USER" = alice ] && [ "$REMOTE_PASSWD" = 'open sesame' ]; then
        echo "cgi-auth: allowed $REMOTE_USER" >&2
        printf 'Status: 200 OK\r\nVariable-AUTH_METHOD: shell\r\n\r\n'
        exit 0
    fi
    if [ "$REMOTE_USER" = alice ]; then
        echo "cgi-auth: refused $REMOTE_USER: wrong password" >&2
    else
        echo "cgi-auth: refused $REMOTE_USER: no such user" >&2
    fi ;;
AUTHORIZER/AUTHORIZER)
    echo "cgi-auth: authorized $REMOTE_USER" >&2
    printf 'Status: 200 OK\r\n\r\n'
    exit 0 ;;
*)
    echo "cgi-auth: refused: role $FCGI_ROLE/$FCGI_APACHE_ROLE" >&2 ;;
esac
printf 'Status: 401 Unauthorized\r\nWWW-Authenticate: Basic realm="cgi"\r\nContent-Type: text/plain\r\n\r\nno\n'
"#;

#[test]
fn cgi_authenticator_protects_a_directory_of_static_files() {
    if !apache_available_or_fail() {
        return;
    }
    let dir = TempDir::new("fcgi-shim-e2e-auth-cgi");
    let auth = dir.mkdir("auth");
    let script = auth.join("check.cgi");
    write_file(&script, CGI_AUTH, 0o755);
    let shim = dir.mkdir("bin").join("fcgi-shim");
    copy_file(Path::new(env!("CARGO_BIN_EXE_fcgi-shim")), &shim, 0o755);
    let program = auth.join("cgi-auth.fcgi");
    write_file(
        &program,
        format!(
            "#!{}\n[app]\nkind = \"cgi\"\ncommand = [\"{}\"]\ntimeout = 10\n[log]\ntarget = \"stderr\"\nlevel = \"info\"\n",
            shim.display(),
            script.display()
        ),
        0o755,
    );
    let site = Site::start(dir, &program);
    site.check_decisions("cgi-auth", "alice", "open sesame");
    site.finish();
}

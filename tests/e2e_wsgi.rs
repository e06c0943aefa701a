//! End-to-end, `kind = "wsgi"`: a private Apache 2.4 + mod_fcgid runs
//! fcgi-shim as `mysite.fcgi` through the rewrite `.htaccess` from
//! `htaccess-examples/`, with real Django and Flask from PyPI behind it; the
//! tests look at what a visitor and the site's owner see: status, bytes,
//! generated URLs, Apache's error log, the process list.
//!
//! Needs Apache + mod_fcgid (as `tests/e2e_apache.rs`) and a Python with
//! Django, Flask and flup that Apache's `www-data` children can run, named by
//! `FCGI_SHIM_TEST_PYTHON`: `make test` sets it from `scripts/test-venv.sh`
//! (a virtualenv under /var/tmp). Without it these tests fail, saying so;
//! `FCGI_SHIM_SKIP_APACHE=1` skips them with the other Apache tests.

mod apache_support;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apache_support::{
    ApacheInstance, HttpResponse, TempDir, apache_available_or_fail, copy_file, copy_tree,
    install_site, mkdir_world_readable, read_until, stop_leaving_nothing, write_file,
};

/// The Python with Django, Flask and flup; panics with instructions if unset.
fn venv_python() -> String {
    match std::env::var("FCGI_SHIM_TEST_PYTHON") {
        Ok(p) if !p.is_empty() && Path::new(&p).is_file() => p,
        other => panic!(
            "the WSGI end-to-end tests need FCGI_SHIM_TEST_PYTHON: a Python with Django, Flask \
             and flup that Apache's www-data can run (got {other:?}). `make test` sets it; by \
             hand: FCGI_SHIM_TEST_PYTHON=$(scripts/test-venv.sh) cargo test. \
             FCGI_SHIM_SKIP_APACHE=1 skips all Apache tests."
        ),
    }
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A web root, its Apache, and the temp dirs both live in.
struct Site {
    dir: TempDir,
    www: PathBuf,
    apache: Option<ApacheInstance>,
}

impl Site {
    fn new() -> Option<(Site, String)> {
        if !apache_available_or_fail() {
            return None;
        }
        let python = venv_python();
        let dir = TempDir::new("fcgi-shim-e2e-wsgi");
        let www = dir.mkdir("www");
        Some((
            Site {
                dir,
                www,
                apache: None,
            },
            python,
        ))
    }

    /// mysite.fcgi (the binary), mysite.toml and the rewrite .htaccess in `dir`.
    fn install(&self, dir: &Path, settings: &str) {
        install_site(dir, settings);
    }

    fn start(&mut self) {
        self.apache = Some(ApacheInstance::start(&self.www, ""));
    }

    fn apache(&self) -> &ApacheInstance {
        self.apache.as_ref().expect("Apache started")
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.apache().get(path)
    }

    /// GET `path` until it answers 200 (returned), for at most `bound`;
    /// with `meanwhile`, every other answer must be a 503 (that label in the
    /// failure). Panics with `what` and the error log when time runs out.
    fn until_200(
        &self,
        path: &str,
        bound: Duration,
        meanwhile: Option<&str>,
        what: &str,
    ) -> HttpResponse {
        let deadline = Instant::now() + bound;
        loop {
            let r = self.get(path);
            if r.status == 200 {
                return r;
            }
            if let Some(label) = meanwhile {
                assert_status(&r, 503, label);
            }
            assert!(
                Instant::now() < deadline,
                "{what}:\n{}",
                self.apache().error_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_log(&self, needle: &str) -> String {
        self.apache()
            .wait_for_error_log(Duration::from_secs(5), |l| l.contains(needle))
    }

    /// Stop Apache; nothing it started (shims, Python workers) may remain.
    fn finish(mut self) {
        let needles = [
            self.dir.path().display().to_string(),
            self.apache().dir().display().to_string(),
        ];
        stop_leaving_nothing(self.apache.as_mut().expect("Apache started"), &needles);
    }
}

fn assert_status(r: &HttpResponse, want: u16, what: &str) {
    assert_eq!(r.status, want, "{what}: got\n{}", r.summary());
}

fn assert_no_script_file(r: &HttpResponse, what: &str) {
    let text = r.text();
    assert!(
        !text.contains("mysite.fcgi")
            && r.header("Location")
                .is_none_or(|l| !l.contains("mysite.fcgi")),
        "{what}: the response mentions mysite.fcgi:\n{}",
        r.summary()
    );
}

fn django_settings(python: &str, project: &Path) -> String {
    format!(
        "[app]\nkind = \"wsgi\"\nmodule = \"djsite.wsgi:application\"\npython = \"{python}\"\n\
         python_path = [\"{}\"]\nrequest_timeout = 20\n\
         env = {{ DJANGO_SETTINGS_MODULE = \"djsite.settings\", DJANGO_DEBUG = \"1\", PYTHONDONTWRITEBYTECODE = \"1\" }}\n",
        project.display(),
    )
}

/// shim-templates/django.fcgi edited as its comments say, in the shebang form:
/// the file Apache runs is the settings, its first line names the shim.
fn django_template(shim: &Path, python: &str, project: &Path) -> String {
    let text = fs::read_to_string(repo_path("shim-templates/django.fcgi")).expect("template");
    let edited = text
        .replacen("#!/home/USER/bin/fcgi-shim", &format!("#!{}", shim.display()), 1)
        .replace("/home/USER/venv/bin/python", python)
        .replace("/home/USER/myproject", &project.display().to_string())
        .replace("\"myproject.", "\"djsite.")
        .replace(
            "env = { DJANGO_SETTINGS_MODULE = \"djsite.settings\" }",
            "env = { DJANGO_SETTINGS_MODULE = \"djsite.settings\", DJANGO_DEBUG = \"0\", PYTHONDONTWRITEBYTECODE = \"1\" }",
        );
    assert!(
        !edited.contains("USER") && edited.contains("DJANGO_DEBUG"),
        "shim-templates/django.fcgi changed; update this test:\n{edited}"
    );
    edited
}

/// `name=value` of the first Set-Cookie header setting `name`.
fn cookie(r: &HttpResponse, name: &str) -> Option<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Set-Cookie"))
        .find_map(|(_, v)| {
            let first = v.split(';').next()?.trim();
            first.strip_prefix(&format!("{name}=")).map(str::to_string)
        })
}

/// The value of `<input ... name="NAME" value="...">` in a page.
fn input_value(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!("name=\"{name}\""))?;
    let tag_start = page[..at].rfind('<')?;
    let tag_end = at + page[at..].find('>')?;
    let tag = &page[tag_start..tag_end];
    let v = tag.find("value=\"")? + 7;
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[test]
fn django_site_at_the_root_and_in_a_subdirectory() {
    let Some((mut site, python)) = Site::new() else {
        return;
    };
    let project = site.dir.path().join("app/djsite");
    copy_tree(&repo_path("tests/wsgi_apps/djsite"), &project);
    // The root site: shim-templates/django.fcgi in the shebang form.
    let shim = site.dir.mkdir("bin").join("fcgi-shim");
    copy_file(Path::new(env!("CARGO_BIN_EXE_fcgi-shim")), &shim, 0o755);
    site.install(&site.www, "");
    fs::remove_file(site.www.join("mysite.toml")).expect("rm mysite.toml");
    write_file(
        &site.www.join("mysite.fcgi"),
        django_template(&shim, &python, &project),
        0o755,
    );
    // The same project in /blog/ with DEBUG = True: binary + mysite.toml.
    site.install(&site.www.join("blog"), &django_settings(&python, &project));
    site.start();
    let port = site.apache().port();

    // The root site (DEBUG = False).
    let r = site.get("/");
    assert_status(&r, 200, "GET /");
    let body = r.text();
    assert!(body.contains("django index"), "{body}");
    assert!(body.contains("login url: /login/\n"), "{body}");
    assert!(
        body.contains(&format!("absolute: http://127.0.0.1:{port}/upload/\n")),
        "{body}"
    );
    assert_no_script_file(&r, "GET /");

    let r = site.get("/admin/login/?next=/admin/");
    assert_status(&r, 200, "admin login page");
    assert!(
        r.text().contains("action=\"/admin/login/?next=/admin/\""),
        "{}",
        r.summary()
    );
    assert_no_script_file(&r, "admin login page");

    // A login POST with the CSRF cookie and token reaches the view; without
    // them Django refuses it.
    let form = site.get("/login/");
    assert_status(&form, 200, "login form");
    assert!(
        form.text().contains("action=\"/login/\""),
        "{}",
        form.summary()
    );
    let csrf_cookie = cookie(&form, "csrftoken").expect("csrftoken cookie");
    let token = input_value(&form.text(), "csrfmiddlewaretoken").expect("csrf token in the form");
    let cookie_header = format!("csrftoken={csrf_cookie}");
    let body = format!("username=alice&password=secret&csrfmiddlewaretoken={token}");
    let r = site.apache().request(
        "POST",
        "/login/",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie_header),
        ],
        Some(body.as_bytes()),
    );
    assert_status(&r, 200, "login POST with CSRF");
    assert_eq!(r.text(), "welcome alice");
    let r = site.apache().request(
        "POST",
        "/login/",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"username=mallory"),
    );
    assert_status(&r, 403, "login POST without CSRF");

    // A 10 MiB multipart upload arrives byte-identical (the view sends it back).
    let file = pattern(10 << 20);
    let boundary = "fcgishimboundary7MA4YWxkTrZu0gW";
    let mut multipart = Vec::new();
    multipart.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nten mebibytes\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    multipart.extend_from_slice(&file);
    multipart.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let t0 = Instant::now();
    let r = site.apache().request(
        "POST",
        "/upload/",
        &[("Content-Type", &content_type)],
        Some(&multipart),
    );
    eprintln!("10 MiB upload and echo took {:?}", t0.elapsed());
    assert_eq!(r.status, 200, "upload: {}", r.status);
    assert_eq!(r.header("X-Upload-Name"), Some("blob.bin"));
    assert_eq!(r.header("X-Upload-Note"), Some("ten mebibytes"));
    assert_eq!(r.header("X-Upload-Size"), Some("10485760"));
    assert_eq!(r.body.len(), file.len());
    assert!(r.body == file, "the uploaded file came back different");

    // A raising view: Django's own 500 page, no traceback with DEBUG = False.
    let r = site.get("/boom/");
    assert_status(&r, 500, "raising view");
    assert!(r.text().contains("Server Error (500)"), "{}", r.summary());
    assert!(
        !r.text().contains("boom from a django view"),
        "{}",
        r.summary()
    );

    // A streaming view: the first chunk arrives while the view waits for the
    // gate file; the last after it exists.
    let gate = site.dir.path().join("gate");
    let (first, mut stream) = read_until(
        port,
        &format!("/stream/?gate={}", gate.display()),
        "first chunk",
    );
    assert!(!first.contains("last chunk"), "{first}");
    fs::write(&gate, "open").unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).expect("read the rest");
    assert!(rest.contains("last chunk"), "{rest}");

    // The same project in /blog/ (DEBUG = True): URLs carry /blog.
    let r = site.get("/blog/");
    assert_status(&r, 200, "GET /blog/");
    let body = r.text();
    assert!(body.contains("login url: /blog/login/\n"), "{body}");
    assert!(
        body.contains(&format!("absolute: http://127.0.0.1:{port}/blog/upload/\n")),
        "{body}"
    );
    assert_no_script_file(&r, "GET /blog/");
    let r = site.get("/blog/admin/login/?next=/blog/admin/");
    assert_status(&r, 200, "admin login page in /blog/");
    assert!(
        r.text()
            .contains("action=\"/blog/admin/login/?next=/blog/admin/\""),
        "{}",
        r.summary()
    );
    assert_no_script_file(&r, "admin login page in /blog/");
    let r = site.get("/blog/login/");
    assert!(
        r.text().contains("action=\"/blog/login/\""),
        "{}",
        r.summary()
    );
    // DEBUG = True: Django's technical 500 page with the traceback.
    let r = site.get("/blog/boom/");
    assert_status(&r, 500, "raising view with DEBUG");
    assert!(
        r.text().contains("ValueError") && r.text().contains("boom from a django view"),
        "{}",
        r.summary()
    );

    site.finish();
}

#[test]
fn flask_routes_url_for_form_and_redirect() {
    let Some((mut site, python)) = Site::new() else {
        return;
    };
    let app = site.dir.path().join("app");
    mkdir_world_readable(&app);
    copy_file(
        &repo_path("tests/wsgi_apps/flaskapp.py"),
        &app.join("flaskapp.py"),
        0o644,
    );
    site.install(
        &site.www,
        &format!(
            "[app]\nkind = \"wsgi\"\nmodule = \"flaskapp:app\"\npython = \"{python}\"\n\
             python_path = [\"{}\"]\nenv = {{ PYTHONDONTWRITEBYTECODE = \"1\" }}\n",
            app.display()
        ),
    );
    // The shipped .htaccess, as it is, passes Authorization.
    site.start();
    let port = site.apache().port();

    let r = site
        .apache()
        .request("GET", "/auth", &[("Authorization", "Basic dTpw")], None);
    assert_eq!(r.text(), "authorization: 'Basic dTpw'", "{}", r.summary());
    let r = site.get("/auth");
    assert_eq!(r.text(), "authorization: None", "{}", r.summary());

    let r = site.get("/");
    assert_status(&r, 200, "GET /");
    assert!(
        r.text().contains("hello url: /hello/world\n"),
        "{}",
        r.summary()
    );
    assert!(
        r.text()
            .contains(&format!("external: http://127.0.0.1:{port}/hello/world\n")),
        "{}",
        r.summary()
    );
    assert_no_script_file(&r, "GET /");
    let r = site.get("/hello/bob");
    assert_eq!(r.text(), "hello bob", "{}", r.summary());
    let r = site.get("/form");
    assert!(r.text().contains("action=\"/form\""), "{}", r.summary());
    let r = site.apache().request(
        "POST",
        "/form",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"word=xyzzy"),
    );
    assert_status(&r, 200, "POST /form");
    assert_eq!(r.text(), "posted xyzzy");
    let r = site.get("/go");
    assert_status(&r, 302, "redirect");
    assert!(
        r.header("Location")
            .is_some_and(|l| l.ends_with("/hello/redirected")),
        "{}",
        r.summary()
    );
    assert_no_script_file(&r, "redirect");
    let r = site.get("/no/such/page");
    assert_status(&r, 404, "Flask's 404");

    site.finish();
}

const LIFE_APP_FIXED: &str = r#"
import os, signal

def application(environ, start_response):
    if environ["PATH_INFO"] == "/crash":
        print("lifeapp: about to crash", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"alive"]
"#;

#[test]
fn import_error_503_crash_502_and_recovery() {
    let Some((mut site, python)) = Site::new() else {
        return;
    };
    let app = site.dir.path().join("app");
    mkdir_world_readable(&app);
    write_file(
        &app.join("lifeapp.py"),
        "import os\nimport fcgi_shim_no_such_module\n",
        0o644,
    );
    site.install(
        &site.www,
        &format!(
            "[app]\nkind = \"wsgi\"\nmodule = \"lifeapp\"\npython = \"{python}\"\n\
             python_path = [\"{}\"]\nenv = {{ PYTHONDONTWRITEBYTECODE = \"1\" }}\n",
            app.display()
        ),
    );
    site.start();

    let r = site.get("/x");
    assert_status(&r, 503, "import error");
    assert!(!r.text().contains("Traceback"), "{}", r.summary());
    let log = site.wait_log("No module named 'fcgi_shim_no_such_module'");
    let line = log
        .lines()
        .find(|l| l.contains("No module named 'fcgi_shim_no_such_module'"))
        .unwrap_or_else(|| panic!("no import error line in:\n{log}"));
    assert!(
        line.contains("ModuleNotFoundError") && line.contains("lifeapp.py\", line 2"),
        "{line}"
    );
    assert!(line.contains("[fcgi-shim mysite "), "{line}");

    // Fixed: the worker comes back (after the restart backoff).
    write_file(&app.join("lifeapp.py"), LIFE_APP_FIXED, 0o644);
    let r = site.until_200(
        "/x",
        Duration::from_secs(10),
        Some("while the fix is picked up"),
        "never came back",
    );
    assert_eq!(r.text(), "alive");

    // A crash mid-request: 502 and one line saying how the worker ended.
    let r = site.get("/crash");
    assert_status(&r, 502, "worker crash");
    let log = site.wait_log("during GET /crash");
    let line = log
        .lines()
        .find(|l| l.contains("during GET /crash"))
        .unwrap_or_else(|| panic!("no crash line in:\n{log}"));
    assert!(line.contains("SIGKILL") && line.contains("(502)"), "{line}");
    assert!(line.contains("lifeapp: about to crash"), "{line}");
    // And it comes back.
    site.until_200(
        "/x",
        Duration::from_secs(10),
        None,
        "never came back after the crash",
    );
    site.finish();
}

/// Issue 12 item 4 through Apache: Django imports its views on the first
/// request, so a SyntaxError in views.py passes the import; `warmup = "/"`
/// catches it before a visitor does (503, the warm-up's status and first
/// lines in the error log), and once fixed the next visitor meets a worker
/// that has answered "/" already.
#[test]
fn issue12_django_warmup_catches_a_syntax_error_in_views() {
    let Some((mut site, python)) = Site::new() else {
        return;
    };
    let project = site.dir.path().join("djsite");
    copy_tree(&repo_path("tests/wsgi_apps/djsite"), &project);
    let views = project.join("probeapp/views.py");
    let good = fs::read_to_string(&views).expect("views.py");
    write_file(&views, format!("{good}\ndef broken(:\n"), 0o644);
    site.install(
        &site.www,
        &format!("{}warmup = \"/\"\n", django_settings(&python, &project)),
    );
    site.start();

    let r = site.get("/");
    assert_status(&r, 503, "warm-up failed");
    let log = site.wait_log("warm-up GET / answered 500");
    let line = log
        .lines()
        .find(|l| l.contains("warm-up GET / answered 500"))
        .unwrap_or_else(|| panic!("no warm-up line in:\n{log}"));
    // DEBUG = True: Django's technical 500 page, its title quoted.
    assert!(line.contains("SyntaxError"), "{line}");
    assert!(line.contains("[fcgi-shim mysite "), "{line}");

    write_file(&views, &good, 0o644);
    site.until_200(
        "/",
        Duration::from_secs(10),
        Some("while the fix is picked up"),
        "never came back",
    );
    site.finish();
}

/// Issue 12 item 5 through Apache: `python` names a virtualenv that does
/// not exist yet: 503 and a log line; once it appears the site answers
/// within 15 s, without a touch.
#[test]
fn issue12_a_virtualenv_made_after_the_start_is_picked_up_without_a_touch() {
    let Some((mut site, python)) = Site::new() else {
        return;
    };
    let app = site.dir.path().join("app");
    mkdir_world_readable(&app);
    write_file(&app.join("lifeapp.py"), LIFE_APP_FIXED, 0o644);
    let venv = site.dir.path().join("venv");
    let link = venv.join("bin/python");
    site.install(
        &site.www,
        &format!(
            "[app]\nkind = \"wsgi\"\nmodule = \"lifeapp\"\npython = \"{}\"\n\
             python_path = [\"{}\"]\nenv = {{ PYTHONDONTWRITEBYTECODE = \"1\" }}\n",
            link.display(),
            app.display()
        ),
    );
    site.start();
    let r = site.get("/x");
    assert_status(&r, 503, "no interpreter yet");
    let log = site.wait_log("cannot start");
    assert!(log.contains(&link.display().to_string()), "{log}");

    mkdir_world_readable(&venv.join("bin"));
    std::os::unix::fs::symlink(&python, &link).expect("symlink the interpreter");
    let r = site.until_200(
        "/x",
        Duration::from_secs(15),
        Some("while the interpreter is picked up"),
        "not picked up within 15 s",
    );
    assert_eq!(r.text(), "alive");
    site.finish();
}

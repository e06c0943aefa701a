//! Last known good (issue 12): a shim that starts on broken settings serves
//! the last version that validated, says so once, and the first valid edit
//! takes over; a site that never had a valid version answers 503. The real
//! binary on a listening socket, as a web server would see it.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

const GREETING_SCRIPT: &str =
    r#"printf 'Content-Type: text/plain\r\n\r\n%s from %s' "$GREETING" "$$""#;

fn settings(script: &Path, greeting: &str) -> String {
    format!(
        "[app]\nkind = \"cgi\"\ncommand = [\"{}\"]\ntimeout = 5\nenv = {{ GREETING = \"{greeting}\" }}\n\n[log]\nlevel = \"info\"\n",
        script.display()
    )
}

/// Broken on line 3, column 7 (a string where a number belongs).
fn broken(script: &Path) -> String {
    format!(
        "[app]\nkind = \"cgi\"\ntimeout = \"soon\"\ncommand = [\"{}\"]\n",
        script.display()
    )
}

fn get(shim: &Shim) -> (u16, String) {
    let mut conn = shim.connect();
    let response = request(&mut conn, &cgi_params("GET", "", 0), b"", false);
    let cgi = response.complete_cgi();
    (cgi.status, cgi.body_text())
}

/// A shim on the settings file `settings`, keeping its copies in `state`.
fn shim_on(settings: &Path, state: &Path) -> Shim {
    Shim::launch(
        TempDir::new("lastgood"),
        Launch {
            args: Some(vec![settings.as_os_str().to_owned()]),
            env: vec![("XDG_STATE_HOME".into(), state.display().to_string())],
            ..Launch::default()
        },
    )
}

fn copies(state: &Path) -> Vec<PathBuf> {
    fs::read_dir(state.join("fcgi-shim"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn touch_forward(path: &Path, secs: u64) {
    let when = std::time::SystemTime::now() + Duration::from_secs(secs);
    fs::File::options()
        .write(true)
        .open(path)
        .expect("open to touch")
        .set_modified(when)
        .expect("set mtime");
}

#[test]
fn a_shim_started_on_broken_settings_serves_the_last_good_version_until_fixed() {
    let site = TempDir::new("lg-site");
    let state = TempDir::new("lg-state");
    let script = site.script("app.sh", GREETING_SCRIPT);
    let path = site.write("testsite.toml", &settings(&script, "one"));

    // A valid start keeps a private copy.
    let first = shim_on(&path, state.path());
    assert_eq!(get(&first).0, 200, "log:\n{}", first.log());
    let kept = copies(state.path());
    assert_eq!(kept.len(), 1, "{kept:?}; log:\n{}", first.log());
    let name = kept[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("testsite-") && name.ends_with(".toml"),
        "{name}"
    );
    assert_eq!(
        fs::metadata(&kept[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let dir_mode = fs::metadata(state.join("fcgi-shim"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    assert_eq!(
        fs::read_to_string(&kept[0]).unwrap(),
        settings(&script, "one")
    );
    drop(first);

    // Broken, a new process serves the saved version and says so once.
    fs::write(&path, broken(&script)).expect("break");
    let second = shim_on(&path, state.path());
    for _ in 0..3 {
        let (status, body) = get(&second);
        assert_eq!(status, 200, "log:\n{}", second.log());
        assert!(body.starts_with("one from "), "{body:?}");
    }
    let log = second.log();
    assert_eq!(
        log.matches("serving the last good version").count(),
        1,
        "log:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("serving the last good version"))
        .unwrap();
    assert!(line.contains(&format!("{}:3:", path.display())), "{line}");
    assert!(line.contains("until the settings are fixed"), "{line}");
    // The broken text was not kept.
    assert_eq!(
        fs::read_to_string(&kept[0]).unwrap(),
        settings(&script, "one")
    );

    // The first valid edit takes over in that process.
    fs::write(&path, settings(&script, "two")).expect("fix");
    touch_forward(&path, 1);
    let start = Instant::now();
    loop {
        let (status, body) = get(&second);
        assert_eq!(status, 200, "log:\n{}", second.log());
        if body.starts_with("two from ") {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "still {body:?}; log:\n{}",
            second.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // ... and is the last good version now.
    let deadline = Instant::now() + WAIT;
    while fs::read_to_string(&kept[0]).unwrap() != settings(&script, "two") {
        assert!(
            Instant::now() < deadline,
            "copy not updated; log:\n{}",
            second.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_site_that_never_had_a_valid_version_answers_503() {
    let site = TempDir::new("lg-never");
    let state = TempDir::new("lg-nstate");
    let script = site.script("app.sh", GREETING_SCRIPT);
    let path = site.write("testsite.toml", &broken(&script));
    let shim = shim_on(&path, state.path());
    assert_eq!(get(&shim).0, 503, "log:\n{}", shim.log());
    assert!(!shim.log().contains("last good"), "log:\n{}", shim.log());
    assert!(copies(state.path()).is_empty());
}

#[test]
fn another_settings_path_does_not_get_this_ones_copy() {
    let site = TempDir::new("lg-other");
    let state = TempDir::new("lg-ostate");
    let script = site.script("app.sh", GREETING_SCRIPT);
    let good = site.write("testsite.toml", &settings(&script, "one"));
    let shim = shim_on(&good, state.path());
    assert_eq!(get(&shim).0, 200);
    drop(shim);
    let sub = site.join("other");
    fs::create_dir(&sub).unwrap();
    let other = sub.join("testsite.toml");
    fs::write(&other, broken(&script)).unwrap();
    let shim = shim_on(&other, state.path());
    assert_eq!(get(&shim).0, 503, "log:\n{}", shim.log());
}

/// WSGI: valid settings are not a good version until the application
/// imports (a worker became ready).
#[test]
fn wsgi_settings_are_kept_only_once_the_application_imports() {
    let site = TempDir::new("lg-wsgi");
    let state = TempDir::new("lg-wstate");
    let app = site.join("app");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("lgapp.py"), "def application(:\n").unwrap();
    let python = std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let text = format!(
        "[app]\nkind = \"wsgi\"\nmodule = \"lgapp\"\npython = \"{python}\"\npython_path = [\"{}\"]\n\
         env = {{ PYTHONDONTWRITEBYTECODE = \"1\" }}\n\n[log]\nlevel = \"info\"\n",
        app.display()
    );
    let path = site.write("testsite.toml", &text);
    let shim = shim_on(&path, state.path());
    assert_eq!(get(&shim).0, 503, "log:\n{}", shim.log());
    thread::sleep(Duration::from_millis(300));
    assert!(copies(state.path()).is_empty(), "log:\n{}", shim.log());
    drop(shim);

    fs::write(
        app.join("lgapp.py"),
        "def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'wsgi ok']\n",
    )
    .unwrap();
    let shim = shim_on(&path, state.path());
    let (status, body) = get(&shim);
    assert_eq!(
        (status, body.as_str()),
        (200, "wsgi ok"),
        "log:\n{}",
        shim.log()
    );
    let kept = copies(state.path());
    assert_eq!(kept.len(), 1, "log:\n{}", shim.log());
    assert_eq!(fs::read_to_string(&kept[0]).unwrap(), text);
}

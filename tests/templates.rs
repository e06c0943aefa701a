//! The settings templates in shim-templates/ (cgi, wsgi, and the server
//! kinds of issue 16: http, fastcgi) are valid settings, and deployed
//! as their comments say (mode 755, the `#!` line naming the installed
//! fcgi-shim) `check` finds nothing wrong with them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

#[test]
fn every_template_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shim-templates");
    let tmp = std::env::temp_dir().join(format!("fcgi-shim-templates-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // Whatever the umask: a group-writable directory is what suEXEC refuses.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "fcgi") {
            continue;
        }
        // The templates name programs under /home/USER; point them at one that exists.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#!"),
            "{} must start with a shebang line",
            path.display()
        );
        // The server kinds' programs (node, puma, php-cgi, gunicorn, a Go
        // binary) may not be installed where the tests run: /bin/true.
        let text = [
            "/usr/bin/node",
            "/usr/local/bin/bundle",
            "/usr/bin/php-cgi",
            "/home/USER/venv/bin/gunicorn",
            "/home/USER/myapp/myapp",
        ]
        .iter()
        .fold(text, |t, program| t.replace(program, "/bin/true"));
        let text = text
            .replace("/home/USER/app/run.cgi", "/bin/true")
            .replace("/home/USER/bin/fcgi-shim", env!("CARGO_BIN_EXE_fcgi-shim"));
        // The wsgi templates: an interpreter and project directories that exist.
        let text = text
            .replace("/home/USER/venv/bin/python", "/bin/sh")
            .replace("/home/USER/myproject", &tmp.display().to_string())
            .replace("/home/USER/myapp", &tmp.display().to_string());
        let copy = tmp.join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_fcgi-shim"))
            .arg("check")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(
        checked >= 9,
        "expected the cgi, django, django-auth, flask, node, rails, go, php and gunicorn \
         templates in {}",
        dir.display()
    );
}

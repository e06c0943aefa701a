//! The shim run as a plain CGI program (no FastCGI socket on fd 0): it serves
//! the one request in its environment and stdin, and writes the response to stdout.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

#[test]
fn plain_cgi_invocation_serves_one_request() {
    let dir = std::env::temp_dir().join(format!("fcgi-shim-cgi-front-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("echo.cgi");
    std::fs::write(
        &program,
        "#!/bin/sh\nprintf 'Status: 201 Created\\r\\nContent-Type: text/plain\\r\\n\\r\\n'\necho \"path=$PATH_INFO\"\ncat\n",
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let settings = dir.join("site.toml");
    std::fs::write(
        &settings,
        format!(
            "[app]\nkind = \"cgi\"\ncommand = [\"{}\"]\n",
            program.display()
        ),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_fcgi-shim"))
        .arg(&settings)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", "POST")
        .env("PATH_INFO", "/x/y")
        .env("CONTENT_LENGTH", "5")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // More than CONTENT_LENGTH: only 5 bytes are the body.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello, and more")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Status: 201 Created\r\nContent-Type: text/plain\r\n\r\npath=/x/y\nhello"
    );
}

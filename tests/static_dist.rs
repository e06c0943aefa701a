//! The static executable and the dist tarball (issue 11): `make static` gives
//! an executable with no dynamic dependencies at all, which serves a request
//! inside an empty chroot (no libc, no /etc, no /proc, no /dev), and `make
//! dist` packs it with the templates, the .htaccess examples and INSTALL into
//! the tarball a shared-hosting user downloads.
//!
//! The tests run `make dist` (and so `make static`) themselves, once per test
//! binary: the tarball is what ships, so it is tested as `make` builds it, not
//! as the test harness would. It is incremental (its own target dir,
//! target/static-build), so after the first build it costs a fraction of a
//! second.
//!
//! The chroot test needs root (chroot(2)). Not root: it fails with a message,
//! unless `FCGI_SHIM_SKIP_CHROOT=1` skips it explicitly.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

/// Set to `1` to skip (not fail) the test that needs root for chroot(2).
const SKIP_CHROOT_ENV: &str = "FCGI_SHIM_SKIP_CHROOT";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn static_exe() -> PathBuf {
    repo().join("target/static/fcgi-shim")
}

fn tarball() -> PathBuf {
    repo().join(format!(
        "target/dist/fcgi-shim-{VERSION}-x86_64-linux.tar.gz"
    ))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `make dist` once for all tests of this binary (they run in parallel
/// threads; two makes at once would race on target/dist). Panics with make's
/// output if it fails.
fn made() {
    static MADE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = MADE.get_or_init(|| {
        let out = Command::new("make")
            .arg("dist")
            // Under `make test`: a make of its own, not a sub-make of that one.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            // The cargo that runs the tests builds the static executable too.
            .arg(format!("CARGO={}", env!("CARGO")))
            .current_dir(repo())
            .output()
            .map_err(|e| format!("cannot run make: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`make dist` failed ({}):\n{}",
                out.status,
                text(&out)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------
// The executable has no dynamic dependencies
// ---------------------------------------------------------------------------

/// ELF program header types (elf.h).
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
/// e_type of an executable that is not position-independent (ET_EXEC).
const ET_EXEC: u16 = 2;

/// What the ELF header and program headers of a 64-bit little-endian file say:
/// its e_type and the p_type of every program header.
fn elf_program_headers(bytes: &[u8]) -> Result<(u16, Vec<u32>), String> {
    let u16_at = |at: usize| -> Result<u16, String> {
        let b = bytes.get(at..at + 2).ok_or(format!("truncated at {at}"))?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| -> Result<u32, String> {
        let b = bytes.get(at..at + 4).ok_or(format!("truncated at {at}"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| -> Result<u64, String> {
        let b = bytes.get(at..at + 8).ok_or(format!("truncated at {at}"))?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB.
    if bytes.get(4..6) != Some([2u8, 1].as_slice()) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let e_type = u16_at(0x10)?;
    let e_phoff = usize::try_from(u64_at(0x20)?).map_err(|e| e.to_string())?;
    let e_phentsize = usize::from(u16_at(0x36)?);
    let e_phnum = usize::from(u16_at(0x38)?);
    let types = (0..e_phnum)
        .map(|i| u32_at(e_phoff + i * e_phentsize))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((e_type, types))
}

#[test]
fn make_static_writes_an_executable_with_no_dynamic_dependencies() {
    made();
    let exe = static_exe();
    let mode = fs::metadata(&exe)
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "mode of {}", exe.display());

    // No program interpreter (ld-linux.so) and no dynamic section, so no
    // DT_NEEDED libraries: the kernel runs it as it is.
    let bytes = fs::read(&exe).expect("read the static executable");
    let (e_type, headers) = elf_program_headers(&bytes).expect("ELF program headers");
    assert!(!headers.is_empty(), "no program headers");
    assert!(
        !headers.contains(&PT_INTERP),
        "{} has a PT_INTERP header: it needs a dynamic loader",
        exe.display()
    );
    assert!(
        !headers.contains(&PT_DYNAMIC),
        "{} has a dynamic section",
        exe.display()
    );
    assert_eq!(
        e_type, ET_EXEC,
        "e_type (ET_EXEC: a plain static executable)"
    );

    // What a user who checks it sees (ldd comes with glibc; it answers
    // "not a dynamic executable" with exit status 1).
    match Command::new("ldd").arg(&exe).output() {
        Ok(out) => assert!(
            text(&out).contains("not a dynamic executable"),
            "ldd {}: {}",
            exe.display(),
            text(&out)
        ),
        Err(e) => eprintln!("ldd not run ({e}); the ELF headers were checked"),
    }

    assert_version(&exe);
}

/// `serve host=`: an address or `localhost`, never a name lookup (getaddrinfo
/// would need glibc's NSS shared libraries, which a static glibc cannot load).
#[test]
fn the_static_executable_listens_on_localhost_and_refuses_host_names() {
    made();
    let dir = TempDir::new("hostnames");
    let settings = dir.write(
        "mysite.toml",
        "[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\n",
    );
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("local_addr").port()
    };
    let serve = |host: &str| {
        let mut cmd = Command::new(static_exe());
        cmd.arg("serve")
            .arg(&settings)
            .arg(format!("host={host}"))
            .arg(format!("port={port}"))
            .args(["daemonize=false", "method=single"]);
        cmd
    };

    let out = run_bounded(&mut serve("example.com"), &dir, Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(1),
        "serve host=example.com: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "error: host \"example.com\" is not an IP address: give an address such as 127.0.0.1"
        ),
        "serve host=example.com: {}",
        out.stderr
    );

    let log = dir.join("localhost.log");
    let mut cmd = serve("localhost");
    cmd.stderr(fs::File::create(&log).expect("create log"));
    let mut child = spawn_retrying(&mut cmd).expect("spawn serve");
    let served = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().expect("wait for serve");
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert!(served, "nothing listens on 127.0.0.1:{port}; log: {log}");
    assert!(
        status.success(),
        "serve host=localhost: {status:?}; log: {log}"
    );
    assert!(
        log.contains(&format!("serving FastCGI on localhost:{port}")),
        "log: {log}"
    );
}

// ---------------------------------------------------------------------------
// It runs in an empty chroot
// ---------------------------------------------------------------------------

/// Returns `false` when the chroot test is skipped with FCGI_SHIM_SKIP_CHROOT=1;
/// panics with what to do when not root.
fn root_or_fail() -> bool {
    if std::env::var(SKIP_CHROOT_ENV).is_ok_and(|v| v == "1") {
        eprintln!("{SKIP_CHROOT_ENV}=1: skipping the empty-chroot test");
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the empty-chroot test of the static executable needs root (chroot(2)); \
         run the tests as root (CI does), or skip it explicitly: {SKIP_CHROOT_ENV}=1"
    );
    true
}

/// coreutils' chroot(8), which is in /usr/sbin (not always on PATH).
fn chroot_command() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join("chroot"))
        .find(|p| p.is_file())
        .expect("chroot(8) from coreutils, in PATH or /usr/sbin")
}

/// An empty root directory with the static fcgi-shim, a statically linked CGI
/// program (cc -static) and `site.fcgi`: settings in the shebang form
/// (`#!/fcgi-shim`), the layout the README recommends. Nothing else: no libc,
/// no /etc (passwd, hosts, nsswitch.conf), no /proc, no /dev, no /tmp.
fn empty_root() -> TempDir {
    let root = TempDir::new("chroot");
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod root");
    fs::copy(static_exe(), root.join("fcgi-shim")).expect("copy the static executable");
    let source = repo().join("tests/data/static_hello_cgi.c");
    let out = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(root.join("hello.cgi"))
        .arg(&source)
        .output()
        .expect("run cc (gcc and glibc's libc.a: apt-get install gcc libc6-dev)");
    assert!(
        out.status.success(),
        "cc -static {}: {}",
        source.display(),
        text(&out)
    );
    let settings = root.write(
        "site.fcgi",
        "#!/fcgi-shim\n[app]\nkind = \"cgi\"\ncommand = [\"/hello.cgi\"]\n",
    );
    fs::set_permissions(settings, fs::Permissions::from_mode(0o755)).expect("chmod site.fcgi");
    root
}

#[test]
fn the_static_executable_serves_a_request_in_an_empty_chroot() {
    made();
    if !root_or_fail() {
        return;
    }
    let root = empty_root();
    let mut names: Vec<String> = fs::read_dir(root.path())
        .expect("read the root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["fcgi-shim", "hello.cgi", "site.fcgi"], "the chroot");

    let chroot = chroot_command();
    let out = Command::new(&chroot)
        .arg(root.path())
        .args(["/fcgi-shim", "--version"])
        .env_clear()
        .output()
        .expect("run chroot");
    assert!(out.status.success(), "chroot ... --version: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("fcgi-shim {VERSION}")
    );

    // As mod_fcgid starts it: a listening unix socket on fd 0 (the harness's,
    // outside the chroot), argv = [the script], environment = PATH only.
    let host = TempDir::new("chroothost");
    let trampoline = host.script(
        "in-chroot.sh",
        &format!(
            "exec '{}' '{}' /site.fcgi\n",
            chroot.display(),
            root.path().display()
        ),
    );
    let mut shim = Shim::launch(
        host,
        Launch {
            program: Some(trampoline),
            ..Launch::default()
        },
    );
    let mut conn = shim.connect();
    let mut params = cgi_params("POST", "x=1", 5);
    for (name, value) in &mut params {
        if name == "PATH_INFO" {
            *value = "/hello/world".into();
        }
    }
    let response = request(&mut conn, &params, b"ping!", false);
    let cgi = response.complete_cgi();
    assert_eq!(
        cgi.status,
        200,
        "body: {}\nlog: {}",
        cgi.body_text(),
        shim.log()
    );
    assert_eq!(cgi.header("Content-Type"), Some("text/plain"));
    assert_eq!(
        cgi.body_text(),
        "hello from a static CGI program in an empty chroot\n\
         PATH_INFO=/hello/world\nQUERY_STRING=x=1\nbody=ping!\n"
    );

    shim.terminate();
    match shim.wait_exit(Duration::from_secs(5)) {
        Some(status) => assert_eq!(status.code(), Some(0), "exit status {status:?}"),
        None => panic!("still running 5 s after SIGTERM; log: {}", shim.log()),
    }
    // Nothing it could not do without /etc, /proc or /dev is worth a warning.
    let log = shim.log();
    let alarming: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("] error:") || l.contains("] warning:") || l.contains("panick"))
        .collect();
    assert!(alarming.is_empty(), "the shim's log in the chroot:\n{log}");
    assert_eq!(String::from_utf8_lossy(&shim.stdout_bytes()), "", "fd 1");
}

// ---------------------------------------------------------------------------
// The tarball
// ---------------------------------------------------------------------------

#[test]
fn make_dist_packs_the_executable_templates_htaccess_and_install() {
    made();
    let tarball = tarball();
    let dir = TempDir::new("dist");
    let top = dir.join(&format!("fcgi-shim-{VERSION}"));

    // What `tar tvzf` shows (with --numeric-owner: no names are stored): one top folder, owned by root, fcgi-shim 755.
    let out = Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&tarball)
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar -tvzf: {}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in listing.lines() {
        let name = line.split_whitespace().last().unwrap_or("");
        assert!(
            name.starts_with(&format!("fcgi-shim-{VERSION}/")),
            "outside the top folder: {line}"
        );
        assert!(line.contains(" 0/0 "), "not owned by 0/0 (root): {line}");
    }
    assert!(
        listing.lines().any(|l| l.starts_with("-rwxr-xr-x ")
            && l.ends_with(&format!(" fcgi-shim-{VERSION}/fcgi-shim"))),
        "fcgi-shim with mode 755 in:\n{listing}"
    );

    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path())
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar -xzf: {}", text(&out));
    for file in [
        "INSTALL",
        "shim-templates/README.md",
        "shim-templates/cgi.fcgi",
        "shim-templates/django.fcgi",
        "shim-templates/flask.fcgi",
        "shim-templates/node.fcgi",
        "shim-templates/php.fcgi",
        "htaccess-examples/README.md",
        "htaccess-examples/mod_fcgid.htaccess",
        "htaccess-examples/cgi-bin.htaccess",
    ] {
        assert!(
            top.join(file).is_file(),
            "{file} missing from {}",
            tarball.display()
        );
    }
    let install = fs::read_to_string(top.join("INSTALL")).expect("read INSTALL");
    assert!(install.contains("chmod 755"), "INSTALL:\n{install}");
    assert_eq!(
        fs::read(top.join("htaccess-examples/mod_fcgid.htaccess")).expect("read"),
        fs::read(repo().join("htaccess-examples/mod_fcgid.htaccess")).expect("read"),
        "the tarball's mod_fcgid.htaccess is the tested one"
    );

    let exe = top.join("fcgi-shim");
    assert_version(&exe);

    // What INSTALL tells the user to do: a template, its shebang pointed at
    // the executable and its program at one that exists, then `check`.
    let template = fs::read_to_string(top.join("shim-templates/cgi.fcgi")).expect("read");
    let site = template
        .replacen(
            "#!/home/USER/bin/fcgi-shim",
            &format!("#!{}", exe.display()),
            1,
        )
        .replace("/home/USER/app/run.cgi", "/bin/true");
    assert_ne!(site, template, "the cgi template's placeholders changed");
    let site_path = dir.write("mysite.fcgi", &site);
    // INSTALL: "chmod 755 it" (check names a settings file that is not executable).
    fs::set_permissions(&site_path, fs::Permissions::from_mode(0o755)).expect("chmod mysite.fcgi");
    let out = Command::new(&exe)
        .arg("check")
        .arg(&site_path)
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "check {}: {}",
        site_path.display(),
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("ok: {}", site_path.display())),
        "check: {}",
        text(&out)
    );

    // A mistake is reported with file:line.
    let broken = dir.write(
        "broken.fcgi",
        &site.replacen("kind = \"cgi\"", "kind = \"cgj\"", 1),
    );
    let out = Command::new(&exe)
        .arg("check")
        .arg(&broken)
        .output()
        .expect("check");
    assert!(!out.status.success(), "check accepted kind = \"cgj\"");
    let line = site
        .lines()
        .position(|l| l.starts_with("kind = "))
        .expect("a kind line")
        + 1;
    assert!(
        text(&out).contains(&format!("{}:{line}", broken.display())),
        "check {}: {}",
        broken.display(),
        text(&out)
    );
}

/// `exe --version` prints this crate's version.
fn assert_version(exe: &Path) {
    let out = Command::new(exe).arg("--version").output().expect("run it");
    assert!(out.status.success(), "--version: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("fcgi-shim {VERSION}")
    );
}

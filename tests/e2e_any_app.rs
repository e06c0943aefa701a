//! End-to-end, issue 16 (any application): a private Apache 2.4 + mod_fcgid
//! runs fcgi-shim as `mysite.fcgi` through the shipped
//! `htaccess-examples/mod_fcgid.htaccess`, with `kind = "http"` (Node.js
//! plain `http` and Express from npm, gunicorn on a unix socket, a Rack app
//! under Puma, a Go `net/http` server), `kind = "fastcgi"` (php-cgi) and
//! `kind = "scgi"` (flup's SCGI server) behind it. The tests look at what a
//! visitor and the site's owner see: status, bytes, headers, the process
//! list after Apache stops.
//!
//! Needs Apache + mod_fcgid, wrk, and the applications' own tools: Debian's
//! `nodejs` + `npm` (and the npm registry, for Express), `puma` (with
//! `ruby-rack`), `golang-go`, `php-cgi`; gunicorn and flup from the test
//! virtualenv named by `FCGI_SHIM_TEST_PYTHON` (`make test` sets it from
//! `scripts/test-venv.sh`). A missing tool fails the test with the package
//! to install (`.ci/run` installs them all); `FCGI_SHIM_SKIP_APACHE=1` skips
//! these tests with the other Apache tests.

mod apache_support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use apache_support::load::{assert_clean_load, spawn_wrk, wrk_result};
use apache_support::{
    ApacheInstance, HttpResponse, TempDir, apache_available_or_fail, install_site,
    mkdir_world_readable, parent_pid, processes_matching, read_until, running_as_root,
    stop_leaving_nothing, write_file,
};

/// How long a site may take to answer its first request (the shim starts
/// the application's server and waits until it accepts connections; Puma
/// and gunicorn take a second or two on a busy 2-core machine).
const FIRST_ANSWER: Duration = Duration::from_secs(60);

/// A program the test needs, found in PATH (an absolute path, as the
/// settings want it), or a failure naming the package to install.
fn need(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_absolute() && p.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is not installed: apt-get install {package} (.ci/run installs it)")
        })
}

/// A program of the test virtualenv (gunicorn), beside its python.
fn venv_program(name: &str) -> PathBuf {
    let python = match std::env::var("FCGI_SHIM_TEST_PYTHON") {
        Ok(p) if !p.is_empty() && Path::new(&p).is_file() => PathBuf::from(p),
        other => panic!(
            "these tests need FCGI_SHIM_TEST_PYTHON: the test virtualenv's python, with \
             gunicorn and flup (got {other:?}). `make test` sets it; by hand: \
             FCGI_SHIM_TEST_PYTHON=$(scripts/test-venv.sh) cargo test --test e2e_any_app"
        ),
    };
    let program = python.with_file_name(name);
    assert!(
        program.is_file(),
        "{} is missing: the test virtualenv predates tests/python-requirements.txt's {name}; \
         rerun scripts/test-venv.sh",
        program.display()
    );
    program
}

/// Runs `cmd` to the end; panics with its output unless it succeeds.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temp dir with the web root `www/` and the applications' code in
/// `apps/`, and the Apache serving `www/`.
struct World {
    // Declared first: dropped (stopped) before the temp dir is removed.
    apache: Option<ApacheInstance>,
    dir: TempDir,
    www: PathBuf,
    apps: PathBuf,
    /// Socket directories in /tmp before this test (of processes before it
    /// that had the pids its shims have now).
    tmp_before: std::collections::BTreeSet<String>,
}

/// The names of the shims' socket directories in /tmp.
fn socket_dirs_in_tmp() -> std::collections::BTreeSet<String> {
    fs::read_dir("/tmp")
        .expect("read /tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("fcgi-shim-"))
        .collect()
}

impl World {
    fn new() -> Option<World> {
        if !apache_available_or_fail() {
            return None;
        }
        let dir = TempDir::new("fcgi-shim-e2e-any");
        let www = dir.mkdir("www");
        let apps = dir.mkdir("apps");
        Some(World {
            apache: None,
            dir,
            www,
            apps,
            tmp_before: socket_dirs_in_tmp(),
        })
    }

    /// A site in `www/<sub>` ("" for the root) with these settings.
    fn site(&self, sub: &str, settings: &str) -> PathBuf {
        let dir = if sub.is_empty() {
            self.www.clone()
        } else {
            self.www.join(sub)
        };
        install_site(&dir, settings);
        dir
    }

    /// A site in `www/<sub>` in the shebang form: `mysite.fcgi` is the
    /// settings text, its first line naming the shim.
    fn shebang_site(&self, sub: &str, text: &str) -> PathBuf {
        let dir = self.site(sub, "");
        fs::remove_file(dir.join("mysite.toml")).expect("rm mysite.toml");
        write_file(&dir.join("mysite.fcgi"), text, 0o755);
        dir
    }

    /// Writes `apps/<name>`.
    fn app_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.apps.join(name);
        if let Some(parent) = path.parent() {
            mkdir_world_readable(parent);
        }
        write_file(&path, text, 0o644);
        path
    }

    /// Hands the sites and the applications to www-data (Apache's children
    /// run as it) and starts Apache with `extra_conf`.
    fn start(&mut self, extra_conf: &str) {
        if running_as_root() {
            for dir in [&self.www, &self.apps] {
                run(
                    Command::new("chown")
                        .args(["-R", "www-data:www-data"])
                        .arg(dir),
                    "chown www-data",
                );
            }
        }
        self.apache = Some(ApacheInstance::start(&self.www, extra_conf));
    }

    fn apache(&self) -> &ApacheInstance {
        self.apache.as_ref().expect("Apache started")
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.apache().get(path)
    }

    /// GETs `path` until `done` holds for the answer (returned), for at most
    /// `bound`; any other answer must be a 200 or have one of the
    /// `meanwhile` statuses.
    fn get_until(
        &self,
        path: &str,
        bound: Duration,
        meanwhile: &[u16],
        done: impl Fn(&HttpResponse) -> bool,
    ) -> HttpResponse {
        let deadline = Instant::now() + bound;
        loop {
            let r = self.get(path);
            if done(&r) {
                return r;
            }
            assert!(
                r.status == 200 || meanwhile.contains(&r.status),
                "GET {path} while waiting: got\n{}\n{}",
                r.summary(),
                self.apache().logs_for_humans()
            );
            assert!(
                Instant::now() < deadline,
                "GET {path}: not what was awaited within {bound:?}; last answer\n{}\n{}",
                r.summary(),
                self.apache().logs_for_humans()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The first answer of a site that is starting: 200 within FIRST_ANSWER
    /// (503 while its application starts).
    fn first_200(&self, path: &str) -> HttpResponse {
        self.get_until(path, FIRST_ANSWER, &[503], |r| r.status == 200)
    }

    /// Stops Apache: nothing of any application may be left, neither a
    /// process naming the temp dir nor a shim's private socket directory
    /// (`/tmp/fcgi-shim-<shim pid>-<n>`).
    fn finish(mut self) {
        let needles = [
            self.dir.path().display().to_string(),
            self.apache().dir().display().to_string(),
        ];
        stop_leaving_nothing(self.apache.as_mut().expect("Apache started"), &needles);
        let log = self.apache().error_log();
        let shims: std::collections::BTreeSet<&str> = log
            .split("[fcgi-shim mysite ")
            .skip(1)
            .filter_map(|rest| rest.split(']').next())
            .collect();
        let left: Vec<String> = socket_dirs_in_tmp()
            .difference(&self.tmp_before)
            .filter(|name| {
                shims
                    .iter()
                    .any(|pid| name.starts_with(&format!("fcgi-shim-{pid}-")))
            })
            .cloned()
            .collect();
        assert!(
            left.is_empty(),
            "private directories of stopped shims left in /tmp: {left:?}"
        );
    }
}

fn assert_status(r: &HttpResponse, want: u16, what: &str, apache: &ApacheInstance) {
    assert_eq!(
        r.status,
        want,
        "{what}: got\n{}\n{}",
        r.summary(),
        apache.logs_for_humans()
    );
}

/// `pid=N` in a body.
fn pid_in(body: &str) -> Option<u32> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|n| n.parse().ok())
}

/// `touch path` (a running executable cannot be opened for writing).
fn touch(path: &Path) {
    run(Command::new("touch").arg(path), "touch");
}

/// The hex SHA-256 of `bytes` (coreutils' sha256sum).
fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A Node.js server on the plain `http` module, on `PORT` (what the shim
/// sets). It answers what it saw, builds redirects from the X-Forwarded-*
/// headers, streams /stream until the gate file exists, and counts and
/// hashes request bodies. `@VERSION@` is the "code" a touch changes.
const NODE_APP: &str = r#"
const http = require('http');
const fs = require('fs');
const crypto = require('crypto');
const VERSION = '@VERSION@';
http.createServer((req, res) => {
  const prefix = req.headers['x-forwarded-prefix'] || '';
  const u = new URL(req.url, 'http://unused');
  let path = u.pathname;
  if (prefix && path.startsWith(prefix)) path = path.slice(prefix.length) || '/';
  if (path === '/stream') {
    res.writeHead(200, {'Content-Type': 'text/plain'});
    res.write('first chunk\n');
    const gate = u.searchParams.get('gate');
    const t = setInterval(() => {
      if (fs.existsSync(gate)) { clearInterval(t); res.end('last chunk\n'); }
    }, 50);
    return;
  }
  if (path === '/go') {
    const proto = req.headers['x-forwarded-proto'] || 'http';
    const host = req.headers['x-forwarded-host'] || req.headers.host;
    res.writeHead(302, {'Location': proto + '://' + host + prefix + '/landed'});
    res.end();
    return;
  }
  const hash = crypto.createHash('sha256');
  let bytes = 0;
  req.on('data', d => { hash.update(d); bytes += d.length; });
  req.on('end', () => {
    res.setHeader('Set-Cookie', ['a=1; Path=/', 'b=2; Path=/']);
    res.writeHead(200, {'Content-Type': 'text/plain'});
    res.end('node ' + VERSION + ' ' + req.method + ' path=' + path + ' query=' + u.search +
      ' prefix=' + prefix + ' for=' + req.headers['x-forwarded-for'] +
      ' proto=' + req.headers['x-forwarded-proto'] + ' pid=' + process.pid +
      ' bytes=' + bytes + ' sha256=' + hash.digest('hex') + '\n');
  });
}).listen(+process.env.PORT, '127.0.0.1');
"#;

fn node_app(version: &str) -> String {
    NODE_APP.replace("@VERSION@", version)
}

fn node_settings(server_js: &Path) -> String {
    format!(
        "[app]\nkind = \"http\"\ncommand = [\"{}\", \"{}\"]\n",
        need("node", "nodejs").display(),
        server_js.display()
    )
}

/// shim-templates/`name` edited as its comments say, in the shebang form
/// (the file Apache runs is the settings, its first line names a copy of
/// the shim): each (from, to) replaced, and each `want` line must then be
/// in it (else the template changed under the test).
fn template(world: &World, name: &str, edits: &[(&str, String)], want: &[String]) -> String {
    let shim = world.dir.path().join("bin/fcgi-shim");
    if !shim.exists() {
        mkdir_world_readable(&world.dir.path().join("bin"));
        apache_support::copy_file(Path::new(env!("CARGO_BIN_EXE_fcgi-shim")), &shim, 0o755);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shim-templates")
        .join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shebang = format!("#!{}\n", shim.display());
    let edited = edits.iter().fold(
        text.replacen("#!/home/USER/bin/fcgi-shim\n", &shebang, 1),
        |t, (from, to)| t.replace(from, to),
    );
    let missing: Vec<&String> = want
        .iter()
        .filter(|line| !edited.contains(&format!("\n{line}\n")))
        .collect();
    assert!(
        edited.starts_with(&shebang) && missing.is_empty(),
        "shim-templates/{name} changed ({missing:?} not in it); update this test:\n{edited}"
    );
    edited
}

fn node_template(world: &World, server_js: &Path) -> String {
    let node = need("node", "nodejs").display().to_string();
    let app_dir = server_js.parent().expect("the app's directory");
    template(
        world,
        "node.fcgi",
        &[
            ("/usr/bin/node", node.clone()),
            ("/home/USER/myapp", app_dir.display().to_string()),
        ],
        &[format!(
            "command = [\"{node}\", \"{}\"]",
            server_js.display()
        )],
    )
}

#[test]
fn node_http_server_query_post_cookies_stream_redirect_and_respawn() {
    let Some(mut world) = World::new() else {
        return;
    };
    let server_js = world.app_file("node/server.js", &node_app("one"));
    // The root site: shim-templates/node.fcgi in the shebang form; /sub: a
    // copy of the binary + mysite.toml.
    world.shebang_site("", &node_template(&world, &server_js));
    world.site("sub", &node_settings(&server_js));
    // One process per site: the request after kill -9 meets the shim whose
    // app was killed.
    world.start("FcgidMaxProcessesPerClass 1");
    let apache = world.apache();
    let port = apache.port();

    // GET with a query string: the app sees the path and the query, and who
    // asked, through the X-Forwarded-* headers.
    let r = world.first_200("/hello?x=1&y=two%20words");
    let body = r.text();
    assert!(
        body.starts_with("node one GET path=/hello query=?x=1&y=two%20words "),
        "{}",
        r.summary()
    );
    assert!(
        body.contains(" for=127.0.0.1 ") && body.contains(" proto=http "),
        "{}",
        r.summary()
    );
    assert!(!body.contains("mysite.fcgi"), "{}", r.summary());

    // Two Set-Cookie headers arrive as two.
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Set-Cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"], "{}", r.summary());

    // A 1 MiB POST arrives byte-identical.
    let blob: Vec<u8> = (0u32..1 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = apache.request(
        "POST",
        "/upload",
        &[("Content-Type", "application/octet-stream")],
        Some(&blob),
    );
    assert_status(&r, 200, "1 MiB POST", apache);
    let body = r.text();
    assert!(
        body.contains(" bytes=1048576 ") && body.contains(&format!(" sha256={}\n", sha256(&blob))),
        "the 1 MiB body arrived different: {body}"
    );

    // A streamed response arrives in pieces: the first while the app waits
    // for the gate file, the last after the test creates it.
    let gate = world.dir.path().join("gate");
    let (first, mut stream) = read_until(
        port,
        &format!("/stream?gate={}", gate.display()),
        "first chunk",
    );
    assert!(!first.contains("last chunk"), "{first}");
    fs::write(&gate, "open").expect("write the gate file");
    let mut rest = String::new();
    stream.read_to_string(&mut rest).expect("read the rest");
    assert!(rest.contains("last chunk"), "{rest}");

    // A site in a subdirectory: the app sees its prefix and builds a
    // redirect that keeps it.
    let r = world.first_200("/sub/hello?q=1");
    assert!(
        r.text()
            .starts_with("node one GET path=/hello query=?q=1 prefix=/sub "),
        "{}",
        r.summary()
    );
    let r = world.get("/sub/go");
    assert_status(&r, 302, "redirect in /sub/", apache);
    assert_eq!(
        r.header("Location"),
        Some(format!("http://127.0.0.1:{port}/sub/landed").as_str()),
        "{}",
        r.summary()
    );
    let r = world.get("/go");
    assert_eq!(
        r.header("Location"),
        Some(format!("http://127.0.0.1:{port}/landed").as_str()),
        "{}",
        r.summary()
    );

    // kill -9 of the app: once it is gone, the very next request is served
    // by a respawned one (a request without a body that meets the dead
    // process goes to a new one); never a 502 or a 503.
    let killed = pid_in(&world.get("/pid").text()).expect("the app says its pid");
    run(
        Command::new("kill").args(["-9", &killed.to_string()]),
        "kill -9 the app",
    );
    let deadline = Instant::now() + FIRST_ANSWER;
    while fs::read_to_string(format!("/proc/{killed}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").starts_with(" Z"))
    {
        assert!(Instant::now() < deadline, "pid {killed} survived kill -9");
        thread::sleep(Duration::from_millis(20));
    }
    let r = world.get("/after-kill");
    assert_status(&r, 200, "the request after kill -9", world.apache());
    assert!(
        r.text().starts_with("node one GET") && pid_in(&r.text()).is_some_and(|p| p != killed),
        "{}",
        r.summary()
    );
    for _ in 0..5 {
        let r = world.get("/again");
        assert_status(&r, 200, "after the respawn", world.apache());
    }
    world.finish();
}

#[test]
fn node_touch_under_load_serves_the_new_code_with_no_failed_request() {
    let Some(mut world) = World::new() else {
        return;
    };
    let server_js = world.app_file("node/server.js", &node_app("one"));
    let site = world.site("", &node_settings(&server_js));
    // Enough processes for wrk's 8 connections (as tests/e2e_reload.rs).
    world.start("FcgidMaxProcessesPerClass 8");
    let r = world.first_200("/");
    assert!(r.text().starts_with("node one GET"), "{}", r.summary());
    // Warm-up, not judged: mod_fcgid spawns its processes.
    let _ = spawn_wrk(&world.apache().url("/"), 3).wait_with_output();
    // Its processes share one node server (`shared`, the default), which
    // none of them is the parent of (mod_fcgid stops them in any order).
    let script = server_js.display().to_string();
    let (keepers, shims): (Vec<_>, Vec<_>) =
        processes_matching(&site.join("mysite.fcgi").display().to_string())
            .into_iter()
            .partition(|(_, cmdline)| cmdline.contains("keep-server"));
    let nodes = processes_matching(&script);
    assert!(shims.len() >= 2, "mod_fcgid ran {shims:?}");
    assert_eq!(nodes.len(), 1, "{nodes:?} for {shims:?}");
    let parent = parent_pid(nodes[0].0);
    assert!(!shims.iter().any(|(p, _)| Some(*p) == parent), "{parent:?}");
    // (The keeper's process-group guard has the same command line.)
    assert!(
        keepers.iter().any(|(p, _)| Some(*p) == parent),
        "{parent:?} {keepers:?}"
    );

    let load = spawn_wrk(&world.apache().url("/"), 8);
    thread::sleep(Duration::from_secs(3));
    write_file(&server_js, node_app("two"), 0o644);
    touch(&site.join("mysite.fcgi"));
    let load = wrk_result(load.wait_with_output().expect("wrk"));
    eprintln!(
        "node touch under wrk 8 connections 8 s: {} requests, {} non-2xx, {}",
        load.requests, load.non_2xx, load.socket_errors
    );
    assert_clean_load(&load, world.apache());

    // Well after the touch: every answer is the new code.
    world.get_until("/", FIRST_ANSWER, &[], |r| {
        r.status == 200 && r.text().starts_with("node two GET")
    });
    for _ in 0..8 {
        let r = world.get("/");
        assert!(
            r.status == 200 && r.text().starts_with("node two GET"),
            "after the touch: {}\n{}",
            r.summary(),
            world.apache().logs_for_humans()
        );
    }
    // The old server ended once no process of the site used it any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_matching(&script).len() > 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        processes_matching(&script).len(),
        1,
        "{:?}",
        processes_matching(&script)
    );
    world.finish();
}

const EXPRESS_APP: &str = r#"
const express = require('express');
const app = express();
app.get('/', (req, res) => res.send('express page q=' + req.query.q));
app.get('/users/:name', (req, res) => res.json({ name: req.params.name, pid: process.pid }));
app.listen(+process.env.PORT, '127.0.0.1');
"#;

#[test]
fn express_app_from_npm_serves_a_page() {
    let Some(mut world) = World::new() else {
        return;
    };
    let node = need("node", "nodejs");
    let npm = need("npm", "npm");
    let dir = mkdir_world_readable(&world.apps.join("express"));
    let app_js = world.app_file("express/app.js", EXPRESS_APP);
    run(
        Command::new(&npm)
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "express",
            ])
            .current_dir(&dir),
        "npm install express (needs the npm registry)",
    );
    world.site(
        "",
        &format!(
            "[app]\nkind = \"http\"\ncommand = [\"{}\", \"{}\"]\n",
            node.display(),
            app_js.display()
        ),
    );
    world.start("");
    let r = world.first_200("/?q=from%20express");
    assert_eq!(r.text(), "express page q=from express", "{}", r.summary());
    let r = world.get("/users/alice");
    assert_status(&r, 200, "an Express route", world.apache());
    assert!(
        r.header("Content-Type")
            .is_some_and(|t| t.starts_with("application/json"))
            && r.text().starts_with("{\"name\":\"alice\""),
        "{}",
        r.summary()
    );
    world.finish();
}

const GUNICORN_APP: &str = "def application(environ, start_response):\n    \
    start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
    return [('gunicorn %s %s %s' % (environ['SCRIPT_NAME'], environ['PATH_INFO'], \
    environ['QUERY_STRING'])).encode()]\n";

/// Mounted at the site's prefix, as shim-templates/rails.fcgi says to.
const RACK_APP: &str = "map '/rack' do\n  run lambda { |env|\n    \
    [200, { 'content-type' => 'text/plain' }, \
    [\"rack #{env['SCRIPT_NAME']} #{env['PATH_INFO']} #{env['QUERY_STRING']}\"]]\n  }\nend\n";

const GO_APP: &str = r#"package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "go %s %s", r.Method, r.URL.RequestURI())
	})
	if err := http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
"#;

const SCGI_APP: &str = "import sys\nfrom flup.server.scgi import WSGIServer\n\n\
def application(environ, start_response):\n    \
    start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
    return [('scgi %s %s %s' % (environ['SCRIPT_NAME'], environ['PATH_INFO'], \
    environ['QUERY_STRING'])).encode()]\n\n\
WSGIServer(application, bindAddress=sys.argv[1]).run()\n";

/// Builds apps/go/main.go with `go build`, its caches in the temp dir.
fn build_go_app(world: &World) -> PathBuf {
    let go = need("go", "golang-go");
    let main_go = world.app_file("go/main.go", GO_APP);
    let binary = world.apps.join("go/goapp");
    let cache = world.dir.mkdir("go-cache");
    run(
        Command::new(go)
            .arg("build")
            .arg("-o")
            .arg(&binary)
            .arg(&main_go)
            .env("GOCACHE", cache.join("build"))
            .env("GOPATH", cache.join("path"))
            .env("HOME", &cache)
            .env("GO111MODULE", "off"),
        "go build",
    );
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod goapp");
    binary
}

#[test]
fn gunicorn_puma_and_go_each_serve_a_page() {
    let Some(mut world) = World::new() else {
        return;
    };
    let gunicorn = venv_program("gunicorn");
    let puma = need("puma", "puma ruby-rack");
    let tag = world.dir.path().display().to_string();

    // shim-templates/gunicorn.fcgi, in /guni/ as its comments say
    // (strip_prefix = false, SCRIPT_NAME); --chdir names the temp dir in
    // gunicorn's command line, for the process list at the end.
    world.app_file("guni/hello.py", GUNICORN_APP);
    let guni_dir = world.apps.join("guni").display().to_string();
    let gunicorn = gunicorn.display().to_string();
    let guni_site = template(
        &world,
        "gunicorn.fcgi",
        &[
            ("/home/USER/venv/bin/gunicorn", gunicorn.clone()),
            (
                "\"--workers\", \"2\"",
                format!("\"--chdir\", \"{guni_dir}\", \"--workers\", \"2\""),
            ),
            (
                "myproject.wsgi:application",
                "hello:application".to_string(),
            ),
            ("/home/USER/myproject", guni_dir.clone()),
            (
                "env = { DJANGO_SETTINGS_MODULE = \"myproject.settings\" }",
                "strip_prefix = false\nenv = { SCRIPT_NAME = \"/guni\" }".to_string(),
            ),
        ],
        &[
            format!(
                "command = [\"{gunicorn}\", \"--chdir\", \"{guni_dir}\", \"--workers\", \"2\", \
                 \"--bind\", \"unix:{{socket}}\", \"--forwarded-allow-ips\", \"*\", \"hello:application\"]"
            ),
            "strip_prefix = false".to_string(),
        ],
    );
    world.shebang_site("guni", &guni_site);
    let config_ru = world.app_file("rack/config.ru", RACK_APP);
    // --tag: Puma renames its process; the tag keeps the temp dir in it.
    world.site(
        "rack",
        &format!(
            "[app]\nkind = \"http\"\ncommand = [\"{}\", \"--tag\", \"{tag}\", \"-e\", \"production\", \
             \"-b\", \"unix://{{socket}}\", \"{}\"]\nstrip_prefix = false\n",
            puma.display(),
            config_ru.display()
        ),
    );
    // shim-templates/go.fcgi, as its comments say.
    let goapp = build_go_app(&world);
    let go_dir = goapp.parent().expect("apps/go").display().to_string();
    let go_site = template(
        &world,
        "go.fcgi",
        &[
            ("/home/USER/myapp/myapp", goapp.display().to_string()),
            ("/home/USER/myapp", go_dir.clone()),
        ],
        &[
            format!("command = [\"{}\"]", goapp.display()),
            format!("workdir = \"{go_dir}\""),
        ],
    );
    world.shebang_site("go", &go_site);
    world.start("");

    // Each site, all of them checked before the verdict.
    let mut wrong = Vec::new();
    let deadline = Instant::now() + FIRST_ANSWER;
    for (path, want) in [
        // With strip_prefix = false, gunicorn takes the prefix from its
        // SCRIPT_NAME environment variable and Rack from `map` (as the
        // README says); Go gets the path without the prefix (the default).
        ("/guni/p/q?a=1", "gunicorn /guni /p/q a=1"),
        ("/rack/r/s?b=2", "rack /rack /r/s b=2"),
        ("/go/g/h?c=3", "go GET /g/h?c=3"),
    ] {
        let r = loop {
            let r = world.get(path);
            if r.status != 503 || Instant::now() > deadline {
                break r;
            }
            thread::sleep(Duration::from_millis(200));
        };
        if r.status != 200 || r.text() != want {
            wrong.push(format!(
                "GET {path}: want 200 {want:?}, got\n{}",
                r.summary()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\n{}",
        wrong.join("\n"),
        world.apache().logs_for_humans()
    );
    world.finish();
}

/// flup's SCGI WSGIServer on `{socket}`: the site in /scgi/ answers, and
/// the application sees the prefix the visitor used as SCRIPT_NAME (what
/// url_for builds on), never mysite.fcgi.
#[test]
fn flup_scgi_server_serves_a_page_with_the_site_prefix() {
    let Some(mut world) = World::new() else {
        return;
    };
    let python = venv_program("python");
    let scgi_py = world.app_file("scgi/app.py", SCGI_APP);
    world.site(
        "scgi",
        &format!(
            "[app]\nkind = \"scgi\"\ncommand = [\"{}\", \"{}\", \"{{socket}}\"]\n",
            python.display(),
            scgi_py.display()
        ),
    );
    world.start("");
    let r = world.first_200("/scgi/t/u?d=4");
    assert_eq!(
        r.text(),
        "scgi /scgi /t/u d=4",
        "{}\n{}",
        r.summary(),
        world.apache().logs_for_humans()
    );
    world.finish();
}

const PHP_PAGE: &str = r#"<?php
if ($_SERVER['REQUEST_METHOD'] === 'POST') {
    echo 'posted ' . htmlspecialchars($_POST['word'] ?? '(none)') . "\n";
    exit;
}
echo 'php ' . getenv('GREETING') . ' uri=' . $_SERVER['REQUEST_URI'] . ' pid=' . getmypid() . "\n";
echo '<form method="post" action="' . htmlspecialchars($_SERVER['REQUEST_URI']) . '">' . "\n";
"#;

/// shim-templates/php.fcgi, with `GREETING` in its env.
fn php_template(world: &World, php_cgi: &Path, index: &Path, greeting: &str) -> String {
    let app_dir = index.parent().expect("apps/php").display().to_string();
    template(
        world,
        "php.fcgi",
        &[
            ("/usr/bin/php-cgi", php_cgi.display().to_string()),
            ("/home/USER/myapp", app_dir.clone()),
            (
                "# env = { APP_ENV = \"production\" }",
                format!("env = {{ GREETING = \"{greeting}\" }}"),
            ),
        ],
        &[
            format!("command = [\"{}\"]", php_cgi.display()),
            format!("params = {{ SCRIPT_FILENAME = \"{}\" }}", index.display()),
            format!("env = {{ GREETING = \"{greeting}\" }}"),
        ],
    )
}

#[test]
fn php_cgi_page_post_form_and_touch_reload() {
    let Some(mut world) = World::new() else {
        return;
    };
    let installed = need("php-cgi", "php-cgi");
    // Through a link in the temp dir, so the process list shows whose it is.
    let php_cgi = world.dir.mkdir("bin").join("php-cgi");
    std::os::unix::fs::symlink(&installed, &php_cgi).expect("link php-cgi");
    let index = world.app_file("php/index.php", PHP_PAGE);
    let site = world.shebang_site("", &php_template(&world, &php_cgi, &index, "one"));
    world.start("");

    let r = world.first_200("/some/page?x=1");
    let body = r.text();
    assert!(
        body.starts_with("php one uri=/some/page?x=1 pid="),
        "{}",
        r.summary()
    );
    assert!(
        body.contains("<form method=\"post\" action=\"/some/page?x=1\">"),
        "{}",
        r.summary()
    );
    let before = pid_in(&body).expect("php says its pid");

    let r = world.apache().request(
        "POST",
        "/some/page?x=1",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"word=xyzzy&other=1"),
    );
    assert_status(&r, 200, "POST the form", world.apache());
    assert_eq!(r.text(), "posted xyzzy\n", "{}", r.summary());

    // An edit of the settings, then touch: a new php-cgi with the new env.
    write_file(
        &site.join("mysite.fcgi"),
        php_template(&world, &php_cgi, &index, "two"),
        0o755,
    );
    touch(&site.join("mysite.fcgi"));
    let r = world.get_until("/after-touch", FIRST_ANSWER, &[], |r| {
        r.status == 200 && r.text().starts_with("php two ")
    });
    assert_ne!(pid_in(&r.text()), Some(before), "{}", r.summary());
    world.finish();
}

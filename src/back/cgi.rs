//! The `cgi` back: a CGI/1.1 program per request (RFC 3875), fcgiwrap's job.
//!
//! Owns: choosing the program (a fixed `command`, or SCRIPT_FILENAME confined
//! to `root`), its meta-variables, feeding it the body while streaming its
//! output back, parsing its response head, the per-request timeout (504),
//! the death-before-headers case (502), and ending what the program left
//! behind (its group, and orphans outside it) before the request counts as done.
//! Must not: spawn or stop processes itself (that is `supervise`), or know the
//! front's protocol.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout};
use std::time::{Duration, Instant};

use super::stderr_lines::StderrLines;
use super::{Back, Context, Outcome, Ready, finish_with_error};
use crate::config::{CgiConfig, CgiProgram, Limits};
use crate::request::{self, CgiHeadParser, Exchange, HeadProgress, InputEvent};
use crate::supervise::{self, Descendants, DescribeExit, Process, SpawnSpec};
use crate::sys;

/// Lines of a program's stderr quoted when it fails.
const STDERR_TAIL_LINES: usize = 3;
/// Read size for the program's output.
const CHUNK: usize = 65536;
/// Response bytes queued for the web server above which we stop reading the
/// program's output (it then blocks writing, which is the backpressure).
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Grace for processes a finished program left behind in its group.
const STRAGGLER_GRACE: Duration = Duration::from_millis(200);

pub struct CgiBack {
    config: CgiConfig,
    limits: Limits,
    /// `root`, with symlinks resolved once.
    root: Option<PathBuf>,
}

/// A refusal before anything was started: status and log line.
struct Refusal(u16, String);

impl CgiBack {
    pub fn new(config: CgiConfig, limits: Limits) -> CgiBack {
        let root = match &config.program {
            CgiProgram::Root(dir) => Some(dir.canonicalize().unwrap_or_else(|_| dir.clone())),
            CgiProgram::Command(_) => None,
        };
        CgiBack {
            config,
            limits,
            root,
        }
    }

    /// The argv to run for this request.
    fn program_for(&self, req: &request::Request) -> Result<Vec<OsString>, Refusal> {
        match (&self.config.program, &self.root) {
            (CgiProgram::Command(argv), _) => Ok(argv.iter().map(OsString::from).collect()),
            (CgiProgram::Root(_), Some(root)) => {
                let script = confine_script(root, req.get("SCRIPT_FILENAME"))?;
                Ok(vec![script.into_os_string()])
            }
            (CgiProgram::Root(_), None) => Err(Refusal(500, "cgi root is not set".into())),
        }
    }

    fn environment(&self, req: &request::Request) -> Vec<(OsString, OsString)> {
        let mut env = supervise::base_env();
        let mut set = |name: OsString, value: OsString| {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        };
        // The same meta-variables as every kind (no HTTP_PROXY, Authorization
        // restored after a rewrite, no empty one), SCRIPT_NAME as received.
        request::for_each_application_meta_variable(
            req,
            &request::ScriptName::AsReceived,
            |name, value| {
                if valid_env_name(name) && !value.contains(&0) {
                    set(
                        OsString::from_vec(name.to_vec()),
                        OsString::from_vec(value.to_vec()),
                    );
                }
            },
        );
        if req.get("GATEWAY_INTERFACE").is_none() {
            set("GATEWAY_INTERFACE".into(), "CGI/1.1".into());
        }
        for (name, value) in &self.config.env {
            set(name.into(), value.into());
        }
        env
    }
}

fn valid_env_name(name: &[u8]) -> bool {
    !name.is_empty() && !name.contains(&b'=') && !name.contains(&0)
}

/// SCRIPT_FILENAME, checked: absolute, no `..`, inside `root` once symlinks
/// are resolved, a regular executable file, neither setuid nor setgid.
/// fcgiwrap's directory traversal is the mistake not to repeat. `root`
/// confines paths, not inodes: a hard link inside it is a file inside it
/// (only someone who may write there can make one; see README, cgi).
fn confine_script(root: &Path, script: Option<&str>) -> Result<PathBuf, Refusal> {
    let Some(script) = script else {
        return Err(Refusal(
            500,
            "the web server sent no SCRIPT_FILENAME; cannot choose a program under root".into(),
        ));
    };
    let path = Path::new(script);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(Refusal(
            403,
            format!("refusing SCRIPT_FILENAME {script}: not an absolute path without `..`"),
        ));
    }
    let real = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Refusal(
                404,
                format!("SCRIPT_FILENAME {script} does not exist"),
            ));
        }
        Err(e) => {
            return Err(Refusal(
                403,
                format!("refusing SCRIPT_FILENAME {script}: {e}"),
            ));
        }
    };
    if !real.starts_with(root) {
        return Err(Refusal(
            403,
            format!(
                "refusing SCRIPT_FILENAME {script}: it is {}, outside root {}",
                real.display(),
                root.display()
            ),
        ));
    }
    match std::fs::metadata(&real) {
        // A setuid or setgid program would run with rights the visitor's
        // request should never get; the shim runs programs as its own user.
        Ok(m) if m.is_file() && m.permissions().mode() & 0o6000 != 0 => Err(Refusal(
            403,
            format!(
                "refusing SCRIPT_FILENAME {script}: a set{}id program (mode {:o})",
                if m.permissions().mode() & 0o4000 != 0 {
                    "u"
                } else {
                    "g"
                },
                m.permissions().mode() & 0o7777
            ),
        )),
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(real),
        Ok(_) => Err(Refusal(
            403,
            format!("refusing SCRIPT_FILENAME {script}: not an executable regular file"),
        )),
        Err(e) => Err(Refusal(
            403,
            format!("refusing SCRIPT_FILENAME {script}: {e}"),
        )),
    }
}

impl Back for CgiBack {
    fn serve(&mut self, exchange: &mut dyn Exchange, ctx: &mut Context<'_>) -> Outcome {
        let argv = match self.program_for(exchange.request()) {
            Ok(argv) => argv,
            Err(Refusal(status, message)) => {
                log::error!(
                    "cgi: {}: {message} ({status})",
                    exchange.request().summary()
                );
                return finish_with_error(exchange, status, "");
            }
        };
        let Some((program, args)) = argv.split_first() else {
            return finish_with_error(exchange, 500, "");
        };
        let workdir = self.config.workdir.clone().or_else(|| {
            Path::new(program)
                .parent()
                .filter(|p| p.is_absolute())
                .map(Path::to_path_buf)
        });
        let spec = SpawnSpec {
            program: program.clone(),
            args: args.to_vec(),
            env: self.environment(exchange.request()),
            workdir,
            descendants: Descendants::Guarded,
            inherit_fds: Vec::new(),
            stdin_socket: None,
        };
        let name = Path::new(program).display().to_string();
        let (process, pipes) = match Process::spawn(&spec) {
            Ok(p) => p,
            // Out of file descriptors or processes: the server's state, not
            // the program's fault: 503, and one line a minute.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
                ) =>
            {
                let cause = format!("cgi: spawn: {}", e.raw_os_error().unwrap_or(0));
                if let Some(n) = crate::log::once_a_minute(&cause) {
                    log::error!(
                        "cgi: cannot start {name}: {e} (503){}",
                        crate::log::left_out(n)
                    );
                }
                return finish_with_error(exchange, 503, "");
            }
            Err(e) => {
                // Why exec failed, when the file says why (mode, #! line, ...).
                let why = crate::deploy::explain_program_failure(
                    Path::new(program),
                    spec.workdir.as_deref(),
                )
                .map(|why| format!("; {why}"))
                .unwrap_or_default();
                log::error!("cgi: cannot start {name}: {e}{why} (502)");
                return finish_with_error(exchange, 502, "");
            }
        };
        if let Some(stdin) = &pipes.stdin
            && let Err(e) = sys::set_nonblocking(stdin.as_fd())
        {
            log::warn!("cgi: {name}: cannot make stdin non-blocking: {e}");
        }
        let stderr_lines = StderrLines::new(format!("cgi: {name}"), STDERR_TAIL_LINES);
        let group = process.pid();
        let run = Run {
            name,
            process,
            stdin: pipes.stdin,
            stdout: Some(pipes.stdout),
            stderr: Some(pipes.stderr),
            parser: CgiHeadParser::new(self.limits.max_response_head_bytes),
            stderr_lines,
            deadline: Instant::now() + self.config.timeout,
            timeout: self.config.timeout,
        };
        let outcome = run.drive(exchange, ctx);
        // Its group is ended; what left the group (setsid) and outlived its
        // parent is ours now (child subreaper): end that too.
        supervise::end_orphans(&[group]);
        outcome
    }

    fn shutdown(&mut self) {
        // Programs live only for the length of a request; only orphans a
        // request's end did not catch may be left.
        supervise::end_orphans(&[]);
    }
}

/// One running CGI program and the state of its request.
struct Run {
    name: String,
    process: Process,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    parser: CgiHeadParser,
    stderr_lines: StderrLines,
    deadline: Instant,
    timeout: Duration,
}

impl Run {
    fn drive(mut self, ex: &mut dyn Exchange, ctx: &mut Context<'_>) -> Outcome {
        let mut buf = vec![0u8; CHUNK];
        loop {
            // Close the program's stdin once the whole body went in.
            if self.stdin.is_some() && ex.body().is_empty() && ex.body_finished() {
                self.stdin = None;
            }
            if self.stdout.is_none() && (self.stderr.is_none() || self.process.try_wait().is_some())
            {
                return self.finish(ex);
            }
            let stopping = ctx.stop_deadline.is_some_and(|s| s <= self.deadline);
            let now = Instant::now();
            let limit = ctx
                .stop_deadline
                .map_or(self.deadline, |s| s.min(self.deadline));
            if now >= limit {
                return self.give_up(ex, stopping);
            }
            let ready = match self.wait(ex, ctx, limit - now) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("cgi: {}: poll failed: {e}", self.name);
                    self.process.kill();
                    return finish_with_error(ex, 502, "");
                }
            };
            if ready.signal {
                ctx.on_signal();
            }
            if ready.front {
                match ex.on_ready() {
                    Ok(InputEvent::Progress) => {}
                    Ok(InputEvent::Aborted) => {
                        log::info!(
                            "cgi: {}: request aborted by the web server; program stopped",
                            self.name
                        );
                        self.process.kill();
                        return Outcome::Aborted;
                    }
                    // The front says why (a body it could not hold).
                    Err(e) if crate::front::stopped_by_front(&e) => {
                        self.process.kill();
                        return Outcome::FrontGone;
                    }
                    Ok(InputEvent::Closed) | Err(_) => {
                        log::warn!(
                            "cgi: {}: the web server closed the connection; program stopped",
                            self.name
                        );
                        self.process.kill();
                        return Outcome::FrontGone;
                    }
                }
            }
            if ready.stdin || self.stdin.is_none() {
                self.feed_stdin(ex);
            }
            if ready.stderr {
                self.read_stderr(&mut buf);
            }
            if ready.stdout
                && let Some(outcome) = self.read_stdout(ex, &mut buf)
            {
                return outcome;
            }
        }
    }

    fn wait(&self, ex: &dyn Exchange, ctx: &Context<'_>, timeout: Duration) -> io::Result<Ready> {
        let stdin = self
            .stdin
            .as_ref()
            .filter(|_| !ex.body().is_empty())
            .map(AsFd::as_fd);
        // Let the program wait while the web server has not taken what we hold.
        let stdout = self
            .stdout
            .as_ref()
            .filter(|_| ex.output_backlog() < OUTPUT_HIGH_WATER)
            .map(AsFd::as_fd);
        let stderr = self.stderr.as_ref().map(AsFd::as_fd);
        super::poll_round(Some(ex), [stdin, stdout, stderr], ctx.signals, timeout)
    }

    /// Move buffered body bytes into the program's stdin. When the program no
    /// longer reads (closed its stdin, or exited), the rest is discarded so the
    /// front can still drain the request.
    fn feed_stdin(&mut self, ex: &mut dyn Exchange) {
        let Some(stdin) = &mut self.stdin else {
            let n = ex.body().len();
            ex.consume_body(n);
            return;
        };
        let body = ex.body();
        if body.is_empty() {
            return;
        }
        match stdin.write(body) {
            Ok(n) => ex.consume_body(n),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                // EPIPE: the program does not want (the rest of) the body.
                self.stdin = None;
                let n = ex.body().len();
                ex.consume_body(n);
            }
        }
    }

    fn read_stderr(&mut self, buf: &mut [u8]) {
        let Some(stderr) = &mut self.stderr else {
            return;
        };
        match stderr.read(buf) {
            Ok(0) | Err(_) => {
                self.stderr = None;
                self.stderr_lines.flush();
            }
            Ok(n) => self.stderr_lines.push(&buf[..n]),
        }
    }

    /// Read the program's output; returns an outcome when the request is over.
    fn read_stdout(&mut self, ex: &mut dyn Exchange, buf: &mut [u8]) -> Option<Outcome> {
        let stdout = self.stdout.as_mut()?;
        let n = match stdout.read(buf) {
            Ok(0) | Err(_) => {
                self.stdout = None;
                return None;
            }
            Ok(n) => n,
        };
        let data = &buf[..n];
        let sent = if ex.head_sent() {
            ex.send_body(data)
        } else {
            match self.parser.push(data) {
                Ok(HeadProgress::Partial) => Ok(()),
                Ok(HeadProgress::Complete(head, body)) => ex.send_head(&head).and_then(|()| {
                    if body.is_empty() {
                        Ok(())
                    } else {
                        ex.send_body(&body)
                    }
                }),
                Err(e) => {
                    log::error!("cgi: {}: {e} (502)", self.name);
                    self.process.kill();
                    return Some(finish_with_error(ex, 502, ""));
                }
            }
        };
        if sent.is_err() {
            log::warn!(
                "cgi: {}: the web server stopped reading the response; program stopped",
                self.name
            );
            self.process.kill();
            return Some(Outcome::FrontGone);
        }
        None
    }

    /// The program closed its output.
    fn finish(mut self, ex: &mut dyn Exchange) -> Outcome {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let status = self.process.wait_for(remaining.min(Duration::from_secs(5)));
        self.read_remaining_stderr();
        if ex.head_sent() {
            if status.is_none() {
                log::warn!(
                    "cgi: {} closed its output but did not exit; killed",
                    self.name
                );
                self.process.kill();
            }
            self.process.end_stragglers(STRAGGLER_GRACE);
            return Outcome::Done;
        }
        let how = match status {
            Some(s) => DescribeExit(s).to_string(),
            None => {
                self.process.kill();
                "closed its output and did not exit".to_string()
            }
        };
        let partial = if self.parser.pending() > 0 {
            " (with an incomplete header block)"
        } else {
            ""
        };
        let stderr = self.stderr_lines.summary();
        log::error!(
            "cgi: {} {how} before sending headers{partial}; {stderr} (502)",
            self.name
        );
        self.process.end_stragglers(STRAGGLER_GRACE);
        finish_with_error(ex, 502, "")
    }

    fn read_remaining_stderr(&mut self) {
        let Some(stderr) = &self.stderr else { return };
        if sys::set_nonblocking(stderr.as_fd()).is_err() {
            return;
        }
        let mut buf = vec![0u8; 4096];
        for _ in 0..64 {
            if self.stderr.is_none() {
                break;
            }
            self.read_stderr(&mut buf);
        }
        self.stderr = None;
        self.stderr_lines.flush();
    }

    /// The timeout (504) or the stop grace period (503) ran out.
    fn give_up(mut self, ex: &mut dyn Exchange, stopping: bool) -> Outcome {
        self.process.kill();
        if stopping {
            log::warn!(
                "cgi: {}: shutting down; request still running, program killed (503)",
                self.name
            );
            return finish_with_error(ex, 503, "The server is restarting.");
        }
        log::error!(
            "cgi: {} timed out after {:.1}s; killed its process group (504)",
            self.name,
            self.timeout.as_secs_f64()
        );
        finish_with_error(ex, 504, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let dir = std::env::temp_dir().join(format!("fcgi-shim-cgi-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let good = root.join("ok.cgi");
        std::fs::write(&good, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = root.join("plain.txt");
        std::fs::write(&plain, "x").unwrap();
        let outside = dir.join("evil.cgi");
        std::fs::write(&outside, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link.cgi")).unwrap();
        let root = root.canonicalize().unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();

        assert_eq!(
            confine_script(&root, Some(&s(&good))).ok(),
            Some(good.canonicalize().unwrap())
        );
        let status = |r: Result<PathBuf, Refusal>| r.err().map(|Refusal(s, _)| s);
        assert_eq!(
            status(confine_script(&root, Some(&s(&root.join("link.cgi"))))),
            Some(403)
        );
        assert_eq!(
            status(confine_script(
                &root,
                Some(&format!("{}/../evil.cgi", s(&root)))
            )),
            Some(403)
        );
        assert_eq!(status(confine_script(&root, Some(&s(&plain)))), Some(403));
        for mode in [0o4755, 0o2755] {
            let suid = root.join("suid.cgi");
            std::fs::write(&suid, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                status(confine_script(&root, Some(&s(&suid)))),
                Some(403),
                "{mode:o}"
            );
        }
        assert_eq!(
            status(confine_script(&root, Some(&s(&root.join("missing.cgi"))))),
            Some(404)
        );
        assert_eq!(
            status(confine_script(&root, Some("relative.cgi"))),
            Some(403)
        );
        assert_eq!(status(confine_script(&root, None)), Some(500));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Reload: has anything changed, is the new version usable, and re-exec in place.
//!
//! Owns: the watched files (the file the web server started — the executable,
//! or in the shebang form the settings file that is `mysite.fcgi` — the
//! executable itself, the settings file, and `watch = [...]`), the check (a
//! stat of each, before each request and on the idle tick), waiting until a
//! changed file is stable, validating the new version by running it (`check`)
//! before acting, and the re-exec that keeps the listening socket. Also knows
//! whether the file we were started as was replaced (new inode), which under
//! mod_fcgid means no request will ever come to us again.
//! Must not: accept connections or stop the application itself; the server
//! loop does that around [`Reloader::exec`].

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Config;

/// Carries the identity (device:inode) of the file the web server started
/// across re-execs, so a reloaded process still knows which file it was
/// spawned for.
pub const ORIGIN_ENV: &str = "FCGI_SHIM_ORIGIN";
/// How long the stamp of a changed file must stay the same before we act.
const SETTLE: Duration = Duration::from_millis(50);
/// How long to wait for a file that keeps changing before deferring.
const SETTLE_LIMIT: Duration = Duration::from_secs(1);
/// How long validating a new version may take.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(10);
/// A rejected version is logged again this often while it stays broken.
const REPEAT_ERROR: Duration = Duration::from_secs(60);
/// An old process (its file was replaced) exits after this long without a request.
pub const REPLACED_IDLE_EXIT: Duration = Duration::from_secs(60);

/// What `stat` says of a file, as far as change detection cares. `None` for a
/// file that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

/// How this process was started, as far as re-running it is concerned.
#[derive(Debug, Clone)]
pub struct Started {
    /// Our argv, unchanged.
    pub argv: Vec<OsString>,
    /// The executable we run as (absolute).
    pub exe: PathBuf,
    /// The settings file named by argv[1] when it starts with `#!` (the
    /// shebang form: it is the file the web server started).
    pub shebang_settings: Option<PathBuf>,
}

impl Started {
    /// From argv and the path we were invoked as.
    pub fn new(argv: Vec<OsString>, exe: &Path) -> Started {
        let exe = std::path::absolute(exe).unwrap_or_else(|_| exe.to_path_buf());
        let shebang_settings = argv
            .get(1)
            .map(PathBuf::from)
            .filter(|p| starts_with_shebang(p))
            .map(|p| std::path::absolute(&p).unwrap_or(p));
        Started {
            argv,
            exe,
            shebang_settings,
        }
    }

    /// The file the web server started: what mod_fcgid keys its processes on.
    pub fn started_file(&self) -> &Path {
        self.shebang_settings.as_deref().unwrap_or(&self.exe)
    }
}

fn starts_with_shebang(path: &Path) -> bool {
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"#!"
}

/// Why a changed version was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(String);

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed (or a change was already rejected, or is still being written).
    Same,
    /// A valid new version: re-exec now.
    Reload,
}

/// Watches the files and decides when to reload.
#[derive(Debug)]
pub struct Reloader {
    started: Started,
    settings: Option<PathBuf>,
    watched: Vec<(PathBuf, Option<Stamp>)>,
    /// (dev, ino) of the file the web server started, when it first started us.
    origin: Option<(u64, u64)>,
    /// The stamps of a version we rejected, its error and when we last said so.
    rejected: Option<(Vec<Option<Stamp>>, Rejected, Instant)>,
    /// Exit when the started file was replaced and no request comes (mod_fcgid).
    exit_when_replaced: bool,
}

impl Reloader {
    /// Watch what `started` and `config` name. `settings` is the settings file
    /// in use (or the one we would use once it exists).
    pub fn new(started: Started, settings: Option<PathBuf>, config: Option<&Config>) -> Reloader {
        let mut paths = vec![started.started_file().to_path_buf(), started.exe.clone()];
        paths.extend(settings.iter().cloned());
        paths.extend(config.iter().flat_map(|c| c.watch.iter().cloned()));
        let mut unique: Vec<PathBuf> = Vec::new();
        for p in paths {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        let watched = unique
            .into_iter()
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect();
        let origin =
            inherited_origin().or_else(|| stamp(started.started_file()).map(|s| (s.dev, s.ino)));
        Reloader {
            started,
            settings,
            watched,
            origin,
            rejected: None,
            exit_when_replaced: false,
        }
    }

    /// Whether an idle process whose file was replaced should exit: true
    /// under mod_fcgid, which will never send it another request.
    pub fn exit_when_replaced(mut self, yes: bool) -> Reloader {
        self.exit_when_replaced = yes;
        self
    }

    /// The paths being watched (for the log and the tests).
    pub fn watched(&self) -> impl Iterator<Item = &Path> {
        self.watched.iter().map(|(p, _)| p.as_path())
    }

    fn current(&self) -> Vec<Option<Stamp>> {
        self.watched.iter().map(|(p, _)| stamp(p)).collect()
    }

    fn baseline(&self) -> Vec<Option<Stamp>> {
        self.watched.iter().map(|(_, s)| *s).collect()
    }

    /// Stat the watched files; on a change that has settled, validate the new
    /// version. A rejected version is not validated again until a file changes
    /// again; its error is repeated at most once a minute.
    pub fn check(&mut self) -> Verdict {
        let now = self.current();
        if now == self.baseline() {
            return Verdict::Same;
        }
        if let Some((stamps, why, last)) = &mut self.rejected
            && *stamps == now
        {
            if last.elapsed() >= REPEAT_ERROR {
                log::error!("{why}; still serving the previous version");
                *last = Instant::now();
            }
            return Verdict::Same;
        }
        let Some(settled) = self.settle(now) else {
            log::info!("reload: a watched file is still changing; waiting until it is complete");
            return Verdict::Same;
        };
        let changed: Vec<String> = self
            .watched
            .iter()
            .zip(&settled)
            .filter(|((_, old), new)| old != *new)
            .map(|((p, _), _)| p.display().to_string())
            .collect();
        match self.validate() {
            Ok(()) => {
                log::info!("reload: {} changed; restarting", changed.join(", "));
                self.rejected = None;
                Verdict::Reload
            }
            Err(why) => {
                log::error!(
                    "reload: {} changed, but the new version is not usable: {why}; \
                     still serving the previous version",
                    changed.join(", ")
                );
                self.rejected = Some((settled, why, Instant::now()));
                Verdict::Same
            }
        }
    }

    /// Wait until two stats `SETTLE` apart agree; `None` if the files keep
    /// changing for `SETTLE_LIMIT` (a copy in progress).
    fn settle(&self, mut seen: Vec<Option<Stamp>>) -> Option<Vec<Option<Stamp>>> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        while Instant::now() < deadline {
            std::thread::sleep(SETTLE);
            let again = self.current();
            if again == seen {
                return Some(seen);
            }
            seen = again;
        }
        None
    }

    /// Run the new version's own `check --start-app` on the settings: proves
    /// that the executable runs, that the settings are valid for it, and that
    /// the application starts (a WSGI application imports). (Standalone
    /// `serve` calls this on SIGHUP.)
    pub fn validate(&self) -> Result<(), Rejected> {
        let (program, mut args) = self.check_command()?;
        args.push("check".into());
        args.push("--start-app".into());
        if let Some(s) = &self.settings {
            args.push(s.into());
        }
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Rejected(format!("cannot run {}: {e}", program.display())))?;
        let deadline = Instant::now() + VALIDATE_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline && !crate::sys::stop_requested() => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Rejected(format!(
                        "{} check did not finish within {} s (or we are stopping)",
                        program.display(),
                        VALIDATE_TIMEOUT.as_secs()
                    )));
                }
            }
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        if status.success() {
            return Ok(());
        }
        let detail = stderr.trim();
        Err(Rejected(if detail.is_empty() {
            format!(
                "{} check {}",
                program.display(),
                crate::supervise::DescribeExit(status)
            )
        } else {
            detail.to_string()
        }))
    }

    /// How to run the new version: the executable; in the shebang form the
    /// interpreter its first line names now.
    fn check_command(&self) -> Result<(PathBuf, Vec<OsString>), Rejected> {
        let (program, args) = match &self.started.shebang_settings {
            Some(script) => interpreter_of(script)?,
            None => (self.started.exe.clone(), Vec::new()),
        };
        runnable(&program)?;
        Ok((program, args))
    }

    /// The file the web server started.
    pub fn started_file(&self) -> &Path {
        self.started.started_file()
    }

    /// The re-exec failed: treat the current files as a rejected version.
    pub fn exec_failed(&mut self, why: String) {
        self.rejected = Some((self.current(), Rejected(why), Instant::now()));
    }

    /// Was the file the web server started replaced (a new inode, or gone)
    /// since it first started us? Under mod_fcgid such a process gets no
    /// more requests.
    pub fn started_file_replaced(&self) -> bool {
        let now = stamp(self.started.started_file()).map(|s| (s.dev, s.ino));
        self.origin.is_some() && now != self.origin
    }

    /// Replaced, and we run under a web server that has moved on to the new file.
    pub fn should_exit_when_idle(&self) -> bool {
        self.exit_when_replaced && self.started_file_replaced()
    }

    /// Replace this process with the new version, keeping the listening
    /// socket (fd 0, systemd's fd 3, or the fd `extra_env` names). Returns
    /// only if exec failed.
    pub fn exec(&self, extra_env: &[(&str, String)]) -> io::Error {
        let mut command = match &self.started.shebang_settings {
            // The kernel reads the shebang line again: a changed interpreter takes effect.
            Some(script) => {
                let mut c = Command::new(script);
                c.args(self.started.argv.iter().skip(2));
                c
            }
            None => {
                let mut c = Command::new(&self.started.exe);
                c.args(self.started.argv.iter().skip(1));
                if let Some(argv0) = self.started.argv.first() {
                    c.arg0(argv0);
                }
                c
            }
        };
        if let Some((dev, ino)) = self.origin {
            command.env(ORIGIN_ENV, format!("{dev}:{ino}"));
        }
        for (k, v) in extra_env {
            command.env(k, v);
        }
        command.exec()
    }
}

fn inherited_origin() -> Option<(u64, u64)> {
    let value = std::env::var(ORIGIN_ENV).ok()?;
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The interpreter a `#!` line names, with `#!/usr/bin/env fcgi-shim`
/// followed through `env` (its word is kept as an argument). Any other
/// argument on the line is ignored: the shebang form names fcgi-shim itself.
fn interpreter_of(script: &Path) -> Result<(PathBuf, Vec<OsString>), Rejected> {
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Rejected(format!("{}: {e}", script.display())))?;
    let first = head[..n].split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first);
    let mut words = line
        .strip_prefix("#!")
        .map(str::split_whitespace)
        .into_iter()
        .flatten();
    let interpreter = words.next().map(PathBuf::from).ok_or_else(|| {
        Rejected(format!(
            "{}:1: the first line must be #!/path/to/fcgi-shim",
            script.display()
        ))
    })?;
    let args = match words.next() {
        Some(program) if interpreter.file_name().is_some_and(|n| n == "env") => {
            vec![OsString::from(program)]
        }
        _ => Vec::new(),
    };
    Ok((interpreter, args))
}

/// A regular file with an execute bit.
fn runnable(path: &Path) -> Result<(), Rejected> {
    let m = std::fs::metadata(path).map_err(|e| Rejected(format!("{}: {e}", path.display())))?;
    if !m.is_file() {
        return Err(Rejected(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if m.permissions().mode() & 0o111 == 0 {
        return Err(Rejected(format!(
            "{} is not executable (chmod +x it)",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fcgi-shim-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn interpreter_is_the_first_word_after_the_shebang() {
        let dir = temp_dir("interp");
        let script = dir.join("site.fcgi");
        std::fs::write(&script, "#!/opt/bin/fcgi-shim  --x\n[app]\n").expect("write");
        assert_eq!(
            interpreter_of(&script),
            Ok((PathBuf::from("/opt/bin/fcgi-shim"), Vec::new()))
        );
        std::fs::write(&script, "#!/usr/bin/env fcgi-shim\n[app]\n").expect("write");
        assert_eq!(
            interpreter_of(&script),
            Ok((
                PathBuf::from("/usr/bin/env"),
                vec![OsString::from("fcgi-shim")]
            ))
        );
        std::fs::write(&script, "[app]\n").expect("write");
        assert!(interpreter_of(&script).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stamp_sees_touch_rename_and_growth() {
        let dir = temp_dir("stamp");
        let file = dir.join("f");
        std::fs::write(&file, "a").expect("write");
        let first = stamp(&file);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(b"b"))
            .expect("append");
        let grown = stamp(&file);
        assert_ne!(first, grown);
        let other = dir.join("g");
        std::fs::write(&other, "ab").expect("write");
        std::fs::rename(&other, &file).expect("rename");
        let renamed = stamp(&file);
        assert_ne!(grown.map(|s| s.ino), renamed.map(|s| s.ino));
        std::fs::remove_file(&file).expect("rm");
        assert_eq!(stamp(&file), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

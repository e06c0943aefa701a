//! Reload: has anything changed, is the new version usable, and take it:
//! in this process, or by a re-exec in place when the executable changed.
//!
//! Owns: the watched files (the file the web server started — the executable,
//! or in the shebang form the settings file that is `mysite.fcgi` — the
//! executable itself, the settings file, and `watch = [...]`), the check
//! before each request and on the idle tick (a stat of each; with the inotify
//! hint only after an event in their directories, or once a second), waiting
//! until a changed file is stable, and validating the new version before it
//! serves. With the same executable the new version is validated here: its
//! settings are read, and its application is started beside the serving one
//! (a [`Candidate`], moved on at each check) and handed to the server loop
//! when ready ([`Verdict::Switch`]): one start per reload, none waited for.
//! The processes of a site agree on a version's verdict (`verdict`): one
//! validates, the others wait for its verdict while they serve. A changed
//! executable must also pass its own `check` (settings and deployment, no
//! import); once the new application is ready the server loop re-execs
//! ([`Verdict::Reexec`]), keeping the listening socket and handing the new
//! worker over. (`serve`'s SIGHUP runs `check --start-app`, then re-execs.) Also knows whether the file
//! we were started as was replaced (new inode), which under mod_fcgid means
//! no request will ever come to us again (then there is nothing to reload).
//! Must not: accept connections or stop the serving application itself; the
//! server loop does that around [`Verdict::Switch`] and [`Reloader::exec`].

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::back::{Back, Startup};
use crate::config::{AppConfig, Config};
use crate::verdict::{Claim, Decision, Site, Validating};

/// Carries the identity (device:inode) of the file the web server started
/// across re-execs, so a reloaded process still knows which file it was
/// spawned for.
pub const ORIGIN_ENV: &str = "FCGI_SHIM_ORIGIN";
/// How long the stamp of a changed file must stay the same before we act.
const SETTLE: Duration = Duration::from_millis(50);
/// How long to wait for a file that keeps changing before deferring.
const SETTLE_LIMIT: Duration = Duration::from_secs(1);
/// How long validating a new version may take at least (more when the
/// application's `start_timeout` is longer: see `Reloader::validate_timeout`).
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a check may take beyond the application's `start_timeout`.
const VALIDATE_MARGIN: Duration = Duration::from_secs(5);
/// A rejected version is logged again this often while it stays broken.
const REPEAT_ERROR: Duration = Duration::from_secs(60);
/// How long a process that noticed a change without a request waiting
/// leaves the validation to one with a request (see [`Phase::Noticed`]).
const CLAIM_DELAY: Duration = Duration::from_millis(100);
/// How long a process waits for another one of its site to validate a
/// version before it validates it itself (the lock holder is stuck).
const VERDICT_WAIT: Duration = Duration::from_secs(VALIDATE_TIMEOUT.as_secs() + 5);
/// An old process (its file was replaced) exits after this long without a request.
pub const REPLACED_IDLE_EXIT: Duration = Duration::from_secs(60);
/// With the inotify hint, the watched files are still stat'ed at least this
/// often (when a check comes). inotify does not see every change: on NFS it
/// misses those made on other clients, and it cannot see a symlink re-pointed
/// in a directory we do not watch; this floor bounds their delay.
const STAT_FLOOR: Duration = Duration::from_secs(1);

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
    /// Our argv (`cli::main` made a relative settings argument absolute).
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
pub enum Verdict {
    /// Nothing to do now: nothing changed, a change was rejected, is still
    /// being written, or its new version is still starting.
    Same,
    /// The new version started and is ready, with a new executable:
    /// re-exec now, handing its application over.
    Reexec(Box<NewVersion>),
    /// The new version started and is ready: it serves from now on (the
    /// caller stops the previous one).
    Switch(Box<NewVersion>),
}

impl Verdict {
    pub fn is_same(&self) -> bool {
        matches!(self, Verdict::Same)
    }
}

/// A validated version, ready to serve.
pub struct NewVersion {
    pub config: Config,
    /// Its application, started (for `wsgi`: imported and warmed up).
    pub back: Box<dyn Back>,
}

/// A new version whose application is starting beside the serving one.
struct Candidate {
    config: Config,
    back: Box<dyn Back>,
    /// The watched files' stamps it was read from.
    stamps: Vec<Option<Stamp>>,
    /// "mysite.fcgi, mysite.toml", for the log lines.
    changed: String,
    started: Instant,
    /// How long it may take to start.
    limit: Duration,
    /// We validate it for the whole site: the verdict goes to the others.
    validating: Option<Validating>,
}

/// Where a reload stands.
enum Phase {
    Watching,
    /// A change noticed while no request was waiting: validating it is
    /// left for a moment to a process of the site that has one (under
    /// mod_fcgid, the one the web server sends requests to: its worker
    /// then serves the new version first).
    Noticed {
        stamps: Vec<Option<Stamp>>,
        changed: String,
        since: Instant,
    },
    /// Another process of the site holds the lock: it is validating the
    /// version with these stamps; we keep serving and look again.
    Waiting {
        stamps: Vec<Option<Stamp>>,
        changed: String,
        since: Instant,
    },
    Starting(Box<Candidate>),
}

/// A version we do not take.
#[derive(Debug)]
struct Rejection {
    stamps: Vec<Option<Stamp>>,
    why: Rejected,
    /// When we last said so; `None`: another process of the site said it.
    said: Option<Instant>,
}

/// Watches the files and decides when to reload.
pub struct Reloader {
    started: Started,
    settings: Option<PathBuf>,
    watched: Vec<(PathBuf, Option<Stamp>)>,
    /// (dev, ino) of the file the web server started, when it first started us.
    origin: Option<(u64, u64)>,
    /// The version we rejected last.
    rejected: Option<Rejection>,
    /// Where a reload stands.
    phase: Phase,
    /// (dev, ino) of the executable this image runs (/proc/self/exe).
    running: Option<(u64, u64)>,
    /// The lock and verdict shared by the processes of the site.
    site: Option<Site>,
    /// Exit when the started file was replaced and no request comes (mod_fcgid).
    exit_when_replaced: bool,
    /// inotify on the watched files' directories: while it reports nothing,
    /// a check skips the stat pass. `None`: stat on every check.
    hint: Option<DirWatch>,
    /// When the last stat pass that left nothing to look at again began;
    /// `None` makes the next check stat.
    quiet_since: Option<Instant>,
    /// How long the new version's `check --start-app` may take: its
    /// application may take `start_timeout` to become ready (a Rails server).
    validate_timeout: Duration,
}

impl Reloader {
    /// Watch what `started` and `config` name. `settings` is the settings file
    /// in use (or the one we would use once it exists).
    pub fn new(started: Started, settings: Option<PathBuf>, config: Option<&Config>) -> Reloader {
        let watched = Reloader::watch_list(&started, settings.as_ref(), config)
            .into_iter()
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect();
        let origin =
            inherited_origin().or_else(|| stamp(started.started_file()).map(|s| (s.dev, s.ino)));
        let running = std::fs::metadata("/proc/self/exe")
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Reloader {
            started,
            settings,
            watched,
            origin,
            rejected: None,
            phase: Phase::Watching,
            running,
            site: None,
            exit_when_replaced: false,
            hint: None,
            quiet_since: None,
            validate_timeout: config
                .and_then(|c| c.app.start_timeout())
                .map_or(VALIDATE_TIMEOUT, |t| {
                    (t + VALIDATE_MARGIN).max(VALIDATE_TIMEOUT)
                }),
        }
    }

    /// The files to watch, each once: the started file, the executable, the
    /// settings and `watch`.
    fn watch_list(
        started: &Started,
        settings: Option<&PathBuf>,
        config: Option<&Config>,
    ) -> Vec<PathBuf> {
        let mut paths = vec![started.started_file().to_path_buf(), started.exe.clone()];
        paths.extend(settings.cloned());
        paths.extend(config.iter().flat_map(|c| c.watch.iter().cloned()));
        let mut unique: Vec<PathBuf> = Vec::new();
        for p in paths {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        unique
    }

    /// Whether an idle process whose file was replaced should exit: true
    /// under mod_fcgid, which will never send it another request.
    pub fn exit_when_replaced(mut self, yes: bool) -> Reloader {
        self.exit_when_replaced = yes;
        self
    }

    /// Put an inotify watch on the directories of the watched files, so that
    /// [`check`](Self::check) stats only after an event (or once a second).
    /// For a caller that checks before every request (`serve`'s reloader,
    /// which only validates on SIGHUP, goes without). Without it, or when
    /// inotify is not available (e.g. the per-user limit of instances,
    /// `fs.inotify.max_user_instances`, is reached), every check stats.
    pub fn with_inotify_hint(mut self) -> Reloader {
        self.hint = self.watch_dirs();
        self
    }

    fn watch_dirs(&self) -> Option<DirWatch> {
        let paths: Vec<&Path> = self.watched().collect();
        DirWatch::new(&paths)
            .inspect_err(|e| {
                log::info!("reload: {e}; checking the watched files with stat before every request")
            })
            .ok()
    }

    /// Readable when a watched file may have changed: a caller that polls
    /// anyway includes it (POLLIN) and passes what it saw to
    /// [`check_polled`](Self::check_polled). `None` without the inotify hint.
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.hint.as_ref().map(|h| h.inotify.as_fd())
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

    /// Has anything changed? Stats the watched files, with the inotify hint
    /// only after an event for one of them (all pending ones are read without
    /// blocking) or when a second has passed since the last stat pass; else
    /// this costs one `read` that finds nothing.
    pub fn check(&mut self) -> Verdict {
        self.check_after(None, true)
    }

    /// [`check`](Self::check) right after a poll(2) that included
    /// [`wake_fd`](Self::wake_fd); `woke`: it was readable. When it was not,
    /// the common case, this makes no system call at all. `request`: a
    /// connection is waiting (a change found without one is validated only
    /// after `CLAIM_DELAY`, unless a request comes first).
    pub fn check_polled(&mut self, woke: bool, request: bool) -> Verdict {
        self.check_after(Some(woke), request)
    }

    fn check_after(&mut self, polled: Option<bool>, request: bool) -> Verdict {
        match &self.phase {
            Phase::Watching => {}
            Phase::Noticed { since, .. } => {
                if !request && since.elapsed() < CLAIM_DELAY {
                    return Verdict::Same;
                }
                let Phase::Noticed {
                    stamps, changed, ..
                } = std::mem::replace(&mut self.phase, Phase::Watching)
                else {
                    return Verdict::Same;
                };
                return self.begin(stamps, changed);
            }
            Phase::Waiting { .. } => return self.look_for_verdict(),
            Phase::Starting(_) => return self.move_candidate_on(),
        }
        if !self.stat_pass_due(polled) {
            return Verdict::Same;
        }
        // Until the next event or the floor, a pass that ends in `Same` need
        // not be repeated; `stat_pass` clears this when a file was still
        // being written.
        self.quiet_since = Some(Instant::now());
        let verdict = self.stat_pass(request);
        if !verdict.is_same() {
            // Not taken yet (the caller execs): say so again at the next check.
            self.quiet_since = None;
        }
        verdict
    }

    /// Whether a stat pass is needed: no hint, an event for a watched name
    /// (all pending events are read), or the floor reached. An event is
    /// queued during the system call that changed the file, so a request
    /// sent after `touch mysite.fcgi` always finds it.
    fn stat_pass_due(&mut self, polled: Option<bool>) -> bool {
        let Some(hint) = &self.hint else {
            return true;
        };
        let events = match polled {
            Some(false) => Events::default(),
            Some(true) | None => hint.drain(),
        };
        if events.watch_lost {
            // A watched directory was deleted or moved away (or the queue
            // failed): watch again what the paths name now. The stat pass
            // below sees whatever changed before.
            self.hint = None;
            self.hint = self.watch_dirs();
        }
        events.relevant || self.quiet_since.is_none_or(|t| t.elapsed() >= STAT_FLOOR)
    }

    /// Stat the watched files; on a change that has settled, validate the new
    /// version. A rejected version is not validated again until a file changes
    /// again; its error is repeated at most once a minute (by the process
    /// that found it).
    fn stat_pass(&mut self, request: bool) -> Verdict {
        let now = self.current();
        if now == self.baseline() {
            return Verdict::Same;
        }
        if let Some(r) = &mut self.rejected
            && r.stamps == now
        {
            if let Some(last) = &mut r.said
                && last.elapsed() >= REPEAT_ERROR
            {
                log::error!("{}; still serving the previous version", r.why);
                *last = Instant::now();
            }
            return Verdict::Same;
        }
        let Some(settled) = self.settle(now) else {
            log::info!("reload: a watched file is still changing; waiting until it is complete");
            // Look again at the next check, event or not.
            self.quiet_since = None;
            return Verdict::Same;
        };
        let changed: Vec<String> = self
            .watched
            .iter()
            .zip(&settled)
            .filter(|((_, old), new)| old != *new)
            .map(|((p, _), _)| p.display().to_string())
            .collect();
        let changed = changed.join(", ");
        if self.should_exit_when_idle() {
            // mod_fcgid sends the new file's requests to new processes:
            // starting the new version here would serve nobody.
            log::info!(
                "reload: {changed} changed, but {} was replaced: the web server starts the new \
                 file's processes; this one serves what is still on its way",
                self.started_file().display()
            );
            self.take_stamps(settled);
            return Verdict::Same;
        }
        // A new executable must run and accept the settings: its own
        // `check` (no import: the application is started below, once, and
        // handed over across the re-exec).
        if self.executable_changed()
            && let Err(why) = self.run_check(false)
        {
            self.refuse(settled, &changed, why, None);
            return Verdict::Same;
        }
        if !request {
            self.phase = Phase::Noticed {
                stamps: settled,
                changed,
                since: Instant::now(),
            };
            return Verdict::Same;
        }
        self.begin(settled, changed)
    }

    /// A new version with the same executable: the site's verdict on it if
    /// there is one, else validate it here (for the whole site when we get
    /// the lock; while another process holds it, wait for its verdict).
    fn begin(&mut self, stamps: Vec<Option<Stamp>>, changed: String) -> Verdict {
        if self.site.is_none()
            && let Some(settings) = &self.settings
        {
            self.site = Site::for_settings(settings)
                .inspect_err(|e| {
                    log::warn!(
                        "reload: no lock to share the validation with the other processes of \
                         this site ({e}); validating here"
                    )
                })
                .ok();
        }
        let key = self.key_of(&stamps);
        let claim = match self.site.as_ref().map(|site| site.claim(&key)) {
            Some(Ok(claim)) => claim,
            Some(Err(e)) => {
                log::warn!("reload: cannot take the site's lock ({e}); validating here");
                return self.start_candidate(stamps, changed, None);
            }
            None => return self.start_candidate(stamps, changed, None),
        };
        match claim {
            Claim::Ours(validating) => self.start_candidate(stamps, changed, Some(validating)),
            Claim::Decided(decision) => self.follow(stamps, changed, decision),
            Claim::Busy => {
                log::debug!("reload: {changed} changed; another process of this site validates it");
                self.phase = Phase::Waiting {
                    stamps,
                    changed,
                    since: Instant::now(),
                };
                Verdict::Same
            }
        }
    }

    /// Waiting for another process's verdict: look again; past
    /// `VERDICT_WAIT`, validate here.
    fn look_for_verdict(&mut self) -> Verdict {
        let Phase::Waiting { since, .. } = &self.phase else {
            return Verdict::Same;
        };
        let waited = since.elapsed();
        let claim = match &self.site {
            Some(site) if waited < VERDICT_WAIT => {
                let Phase::Waiting { stamps, .. } = &self.phase else {
                    return Verdict::Same;
                };
                match site.claim(&self.key_of(stamps)) {
                    Ok(Claim::Busy) => return Verdict::Same,
                    Ok(claim) => Some(claim),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let Phase::Waiting {
            stamps, changed, ..
        } = std::mem::replace(&mut self.phase, Phase::Watching)
        else {
            return Verdict::Same;
        };
        match claim {
            Some(Claim::Decided(decision)) => self.follow(stamps, changed, decision),
            Some(Claim::Ours(validating)) => {
                self.start_candidate(stamps, changed, Some(validating))
            }
            Some(Claim::Busy) | None => {
                log::warn!(
                    "reload: no verdict from the other processes of this site after {:.0} s; \
                     validating here",
                    waited.as_secs_f64()
                );
                self.start_candidate(stamps, changed, None)
            }
        }
    }

    /// Another process of the site validated this version: a good one is
    /// started here too (its own worker), a bad one refused without a word
    /// at error level (that process said why).
    fn follow(
        &mut self,
        stamps: Vec<Option<Stamp>>,
        changed: String,
        decision: Decision,
    ) -> Verdict {
        match decision {
            Decision::Good => self.start_candidate(stamps, changed, None),
            Decision::Bad(why) => {
                log::debug!(
                    "reload: {changed} changed; the new version was refused by another process \
                     of this site: {why}"
                );
                self.rejected = Some(Rejection {
                    stamps,
                    why: Rejected(why),
                    said: None,
                });
                Verdict::Same
            }
        }
    }

    /// Read the new settings and start their application beside the
    /// serving one (moved on by each check until it is ready or fails).
    fn start_candidate(
        &mut self,
        stamps: Vec<Option<Stamp>>,
        changed: String,
        validating: Option<Validating>,
    ) -> Verdict {
        let config = match self.new_settings() {
            Ok(config) => config,
            Err(why) => {
                self.refuse(stamps, &changed, why, validating);
                return Verdict::Same;
            }
        };
        let (config, text) = config;
        log::info!("reload: {changed} changed; starting the new version beside the serving one");
        let back = crate::back::candidate_from_config(&config);
        let back = crate::last_good::SaveWhenStarted::new(back, config.path.clone(), text);
        let limit = match &config.app {
            AppConfig::Wsgi(w) => w.start_timeout.min(VALIDATE_TIMEOUT),
            // A server may take its whole start_timeout (a Rails boot).
            AppConfig::Server(s) => s.start_timeout,
            AppConfig::Cgi(_) => VALIDATE_TIMEOUT,
        };
        self.phase = Phase::Starting(Box::new(Candidate {
            config,
            back: Box::new(back),
            stamps,
            changed,
            started: Instant::now(),
            limit,
            validating,
        }));
        self.move_candidate_on()
    }

    /// The new settings, valid, and how the site is deployed with them
    /// (what `check` would refuse for a reload), with their text.
    fn new_settings(&self) -> Result<(Config, String), Rejected> {
        let Some(path) = &self.settings else {
            return Err(Rejected("no settings file".into()));
        };
        let (config, text) =
            crate::config::load_with_text(path).map_err(|e| Rejected(e.to_string()))?;
        let problems: Vec<String> = crate::deploy::diagnose(
            path,
            &self.started.exe,
            Some(&config),
            crate::deploy::Purpose::Reload,
        )
        .into_iter()
        .filter(crate::deploy::Problem::is_error)
        .map(|p| p.to_string())
        .collect();
        if !problems.is_empty() {
            return Err(Rejected(problems.join("; ")));
        }
        Ok((config, text))
    }

    /// Move the starting application on (without waiting): ready, it
    /// switches; failed or past its time, the version is refused.
    fn move_candidate_on(&mut self) -> Verdict {
        let Phase::Starting(c) = &mut self.phase else {
            return Verdict::Same;
        };
        let mut state = c.back.startup();
        if state == Startup::Starting {
            c.back.idle();
            state = c.back.startup();
        }
        if state == Startup::Starting {
            if crate::sys::stop_requested() {
                self.abandon();
                return Verdict::Same;
            }
            if c.started.elapsed() < c.limit {
                return Verdict::Same;
            }
            // wsgi's start_timeout is capped for a reload; a server's is not.
            let capped = c.config.app.start_timeout().is_some_and(|t| t > c.limit);
            let cap = if capped {
                format!("; a reload waits {} s at most", c.limit.as_secs())
            } else {
                String::new()
            };
            state = Startup::Failed(format!(
                "the new version did not start within {:.1} s (start_timeout{cap})",
                c.limit.as_secs_f64(),
            ));
        }
        let Phase::Starting(c) = std::mem::replace(&mut self.phase, Phase::Watching) else {
            return Verdict::Same;
        };
        let Candidate {
            config,
            mut back,
            stamps,
            changed,
            validating,
            ..
        } = *c;
        match state {
            Startup::Ready => {
                if let Some(v) = validating {
                    v.decide(&Decision::Good);
                }
                self.rejected = None;
                self.take_version(&config, stamps);
                let new = Box::new(NewVersion { config, back });
                if self.executable_changed() {
                    log::info!(
                        "reload: {changed} changed; restarting: a new executable, re-exec'd \
                         with the new version's application"
                    );
                    return Verdict::Reexec(new);
                }
                log::info!("reload: {changed} changed; restarting: the new version takes over");
                Verdict::Switch(new)
            }
            Startup::Failed(why) => {
                back.shutdown();
                self.refuse(stamps, &changed, Rejected(why), validating);
                Verdict::Same
            }
            // Left above while it is starting.
            Startup::Starting => Verdict::Same,
        }
    }

    /// Say why a version is not taken (once for the site: the other
    /// processes read it from the verdict) and remember it.
    fn refuse(
        &mut self,
        stamps: Vec<Option<Stamp>>,
        changed: &str,
        why: Rejected,
        validating: Option<Validating>,
    ) {
        if let Some(v) = validating {
            v.decide(&Decision::Bad(why.to_string()));
        }
        log::error!(
            "reload: {changed} changed, but the new version is not usable: {why}; \
             still serving the previous version"
        );
        self.rejected = Some(Rejection {
            stamps,
            why,
            said: Some(Instant::now()),
        });
    }

    /// Is a new version starting, or are we waiting for the site's verdict
    /// on one? Then the caller checks often (it is moved on by each check).
    pub fn busy(&self) -> bool {
        !matches!(self.phase, Phase::Watching)
    }

    /// Stop a new version that is still starting (we are stopping).
    pub fn abandon(&mut self) {
        if let Phase::Starting(mut c) = std::mem::replace(&mut self.phase, Phase::Watching) {
            c.back.shutdown();
        }
    }

    /// The new version is taken: its files as the baseline, and its
    /// `watch` list watched.
    fn take_version(&mut self, config: &Config, stamps: Vec<Option<Stamp>>) {
        let before: Vec<(PathBuf, Option<Stamp>)> = self
            .watched
            .iter()
            .map(|(p, _)| p.clone())
            .zip(stamps)
            .collect();
        let fresh = Reloader::watch_list(&self.started, self.settings.as_ref(), Some(config));
        let same_paths =
            fresh.len() == before.len() && fresh.iter().zip(&before).all(|(a, b)| *a == b.0);
        self.watched = fresh
            .into_iter()
            .map(|p| {
                let s = before
                    .iter()
                    .find(|(q, _)| *q == p)
                    .map_or_else(|| stamp(&p), |(_, s)| *s);
                (p, s)
            })
            .collect();
        if !same_paths && self.hint.is_some() {
            self.hint = None;
            self.hint = self.watch_dirs();
        }
        self.quiet_since = None;
    }

    /// Accept the files as they are now without reloading.
    fn take_stamps(&mut self, stamps: Vec<Option<Stamp>>) {
        for ((_, s), new) in self.watched.iter_mut().zip(stamps) {
            *s = new;
        }
    }

    /// The identity of the version with these stamps, the same in every
    /// process of the site: each watched file's path, dev, inode, size and
    /// mtime.
    fn key_of(&self, stamps: &[Option<Stamp>]) -> String {
        self.watched
            .iter()
            .zip(stamps)
            .map(|((p, _), s)| match s {
                Some(s) => format!(
                    "{} {}:{}:{}:{}.{:09}",
                    p.display(),
                    s.dev,
                    s.ino,
                    s.size,
                    s.mtime.0,
                    s.mtime.1
                ),
                None => format!("{} -", p.display()),
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Is the executable the started file names now another file than the
    /// one this image runs? (A `touch` of the two-file form's `mysite.fcgi`
    /// keeps its inode; a running executable cannot be written in place:
    /// ETXTBSY. So another inode is the only way it changes.)
    fn executable_changed(&self) -> bool {
        let Some(running) = self.running else {
            return true;
        };
        let program = match self.check_command() {
            Ok((program, args)) if program.file_name().is_some_and(|n| n == "env") => {
                match args.first().and_then(|name| in_path(Path::new(name))) {
                    Some(p) => p,
                    None => return true,
                }
            }
            Ok((program, _)) => program,
            // Not runnable: `validate` says why.
            Err(_) => return true,
        };
        stamp(&program).map(|s| (s.dev, s.ino)) != Some(running)
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
        self.run_check(true)
    }

    /// Run the new version's `check` (with `--start-app` if `start_app`).
    fn run_check(&self, start_app: bool) -> Result<(), Rejected> {
        let (program, mut args) = self.check_command()?;
        args.push("check".into());
        if start_app {
            args.push("--start-app".into());
        }
        if let Some(s) = &self.settings {
            args.push(s.into());
        }
        let mut child = Command::new(&program)
            .args(&args)
            // What suEXEC would refuse does not stop a re-exec: only warn.
            .env(crate::deploy::CHECK_FOR_ENV, "reload")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Rejected(format!("cannot run {}: {e}", program.display())))?;
        let deadline = Instant::now() + self.validate_timeout;
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
                        self.validate_timeout.as_secs()
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
        // `check` says each problem on a line of its own; the log line is one.
        let detail = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
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
        self.rejected = Some(Rejection {
            stamps: self.current(),
            why: Rejected(why),
            said: Some(Instant::now()),
        });
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

/// inotify on the directories that hold the watched files: a rename over a
/// file, a `touch`, a write, a create or a delete there queues an event. Per
/// path it watches the entry's directory, the directory of each symlink on
/// the way (`current -> releases/42` re-pointed), and the directory of the
/// file the path resolves to. Non-blocking and close-on-exec: a re-exec
/// builds its own, and the application never inherits it.
#[derive(Debug)]
struct DirWatch {
    inotify: Inotify,
    /// The entries that matter: a name in the directory of a watch.
    names: Vec<(WatchDescriptor, OsString)>,
}

/// What the pending events said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Events {
    /// One concerns a watched entry (or may: the queue overflowed).
    relevant: bool,
    /// A watched directory was deleted or moved: its watch no longer
    /// covers the path.
    watch_lost: bool,
}

/// What changes a directory entry: everything but reads.
const DIR_EVENTS: AddWatchFlags = AddWatchFlags::IN_ATTRIB
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// Events after which a watch no longer covers its path.
const WATCH_GONE: AddWatchFlags = AddWatchFlags::IN_IGNORED
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_UNMOUNT);

impl DirWatch {
    /// Watch the entries of `paths`; the error says what could not be watched.
    fn new(paths: &[&Path]) -> Result<DirWatch, String> {
        let mut entries: Vec<(PathBuf, OsString)> = Vec::new();
        for path in paths {
            for entry in entries_of(path)? {
                if !entries.contains(&entry) {
                    entries.push(entry);
                }
            }
        }
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| format!("no inotify instance ({e})"))?;
        let mut names = Vec::with_capacity(entries.len());
        for (dir, name) in entries {
            let wd = inotify
                .add_watch(&dir, DIR_EVENTS)
                .map_err(|e| format!("cannot watch {} with inotify ({e})", dir.display()))?;
            names.push((wd, name));
        }
        Ok(DirWatch { inotify, names })
    }

    /// Read every pending event (without blocking).
    fn drain(&self) -> Events {
        let mut seen = Events::default();
        loop {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => return seen,
                Ok(events) => {
                    for e in events {
                        seen.watch_lost |= e.mask.intersects(WATCH_GONE);
                        seen.relevant |= match &e.name {
                            Some(name) => self.names.iter().any(|(wd, n)| *wd == e.wd && n == name),
                            // The directory itself, or the queue overflowed.
                            None => true,
                        };
                    }
                }
                Err(Errno::EAGAIN) => return seen,
                Err(Errno::EINTR) => {}
                Err(_) => {
                    return Events {
                        relevant: true,
                        watch_lost: true,
                    };
                }
            }
        }
    }
}

/// The directory entries whose change can change what `path` names: its
/// own, that of each symlink among its ancestors, and that of what it
/// resolves to. An error for a path without a file name.
fn entries_of(path: &Path) -> Result<Vec<(PathBuf, OsString)>, String> {
    let entry = |p: &Path| {
        let name = p.file_name()?.to_os_string();
        let dir = p.parent()?;
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        Some((dir.to_path_buf(), name))
    };
    let mut entries =
        vec![entry(path).ok_or_else(|| {
            format!("cannot watch {} with inotify: no file name", path.display())
        })?];
    entries.extend(
        path.ancestors()
            .skip(1)
            .filter(|a| a.is_symlink())
            .filter_map(entry),
    );
    if let Ok(real) = path.canonicalize()
        && real != path
    {
        entries.extend(entry(&real));
    }
    Ok(entries)
}

/// `name` looked up in $PATH, as `env` would (a name with a slash as is).
fn in_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return Some(name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| runnable(p).is_ok())
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

    /// Moves mtime forward, as `touch` does (and visibly on coarse clocks).
    fn touch(path: &Path) {
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open to touch");
        file.set_modified(std::time::SystemTime::now() + Duration::from_secs(2))
            .expect("set mtime");
    }

    #[test]
    fn dir_watch_sees_every_kind_of_change_to_a_watched_name_and_only_those() {
        let dir = temp_dir("dirwatch");
        let site = dir.join("mysite.fcgi");
        std::fs::write(&site, "one").expect("write");
        let watch = DirWatch::new(&[&site]).expect("inotify");
        let changed = Events {
            relevant: true,
            watch_lost: false,
        };
        assert_eq!(watch.drain(), Events::default(), "nothing happened yet");
        std::fs::write(dir.join("app.log"), "another file").expect("write");
        assert_eq!(watch.drain(), Events::default(), "not a watched name");
        touch(&site);
        assert_eq!(watch.drain(), changed, "touch");
        assert_eq!(watch.drain(), Events::default(), "drained");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&site)
            .and_then(|mut f| f.write_all(b"two"))
            .expect("append");
        assert_eq!(watch.drain(), changed, "write");
        let upload = dir.join("mysite.fcgi.new");
        std::fs::write(&upload, "three").expect("write");
        assert_eq!(watch.drain(), Events::default(), "upload beside it");
        std::fs::rename(&upload, &site).expect("rename");
        assert_eq!(watch.drain(), changed, "rename over it");
        std::fs::remove_file(&site).expect("rm");
        assert_eq!(watch.drain(), changed, "delete");
        std::fs::write(&site, "four").expect("write");
        assert_eq!(watch.drain(), changed, "create");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dir_watch_follows_symlinks_to_the_file_and_on_the_way() {
        let dir = temp_dir("dirwatch-links");
        let changed = Events {
            relevant: true,
            watch_lost: false,
        };
        // mysite.fcgi -> bin/fcgi-shim: an upgrade of the binary is a change.
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        let binary = dir.join("bin/fcgi-shim");
        std::fs::write(&binary, "v1").expect("write");
        let site = dir.join("mysite.fcgi");
        std::os::unix::fs::symlink("bin/fcgi-shim", &site).expect("symlink");
        // current -> releases/1: re-pointing `current` is a change.
        for release in ["releases/1", "releases/2"] {
            std::fs::create_dir_all(dir.join(release)).expect("mkdir");
            std::fs::write(dir.join(release).join("site.toml"), release).expect("write");
        }
        std::os::unix::fs::symlink("releases/1", dir.join("current")).expect("symlink");
        let settings = dir.join("current/site.toml");
        let watch = DirWatch::new(&[&site, &settings]).expect("inotify");
        touch(&binary);
        assert_eq!(watch.drain(), changed, "the file the symlink names");
        touch(&dir.join("releases/1/site.toml"));
        assert_eq!(
            watch.drain(),
            changed,
            "the file through a symlinked directory"
        );
        touch(&dir.join("releases/2/site.toml"));
        assert_eq!(watch.drain(), Events::default(), "a release not in use");
        std::os::unix::fs::symlink("releases/2", dir.join("current.new")).expect("symlink");
        std::fs::rename(dir.join("current.new"), dir.join("current")).expect("rename");
        assert_eq!(watch.drain(), changed, "the directory symlink re-pointed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dir_watch_reports_a_watched_directory_moved_away() {
        let dir = temp_dir("dirwatch-moved");
        std::fs::create_dir_all(dir.join("www")).expect("mkdir");
        let site = dir.join("www/mysite.fcgi");
        std::fs::write(&site, "one").expect("write");
        let watch = DirWatch::new(&[&site]).expect("inotify");
        std::fs::rename(dir.join("www"), dir.join("www.old")).expect("rename");
        assert_eq!(
            watch.drain(),
            Events {
                relevant: true,
                watch_lost: true
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A site whose executable's `check` always passes (`true`, not a script
    /// of ours: another test's fork could still hold it open for writing),
    /// with `site.toml` in `dir`.
    fn reloader_in(dir: &Path) -> Reloader {
        let exe = Path::new("/bin/true");
        std::fs::write(
            dir.join("site.toml"),
            "[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\n",
        )
        .expect("write");
        Reloader::new(
            Started::new(vec!["true".into()], exe),
            Some(dir.join("site.toml")),
            None,
        )
    }

    #[test]
    fn with_the_hint_a_check_stats_only_after_an_event_or_once_a_second() {
        let dir = temp_dir("hint");
        let mut r = reloader_in(&dir).with_inotify_hint();
        let fd = r.wake_fd().expect("inotify");
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
        assert!(
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC),
            "the application must not inherit it"
        );
        assert!(r.check().is_same(), "the first check stats");
        let first_pass = r.quiet_since.expect("a pass");
        std::fs::write(dir.join("app.log"), "another file").expect("write");
        assert!(r.check().is_same());
        assert!(r.check_polled(false, false).is_same());
        assert_eq!(
            r.quiet_since,
            Some(first_pass),
            "no stat pass without an event"
        );
        r.quiet_since = Some(Instant::now() - STAT_FLOOR);
        assert!(r.stat_pass_due(Some(false)), "a pass once a second");
        // The very next check after a touch finds it.
        touch(&dir.join("site.toml"));
        // (`true` is another executable than this test: a re-exec.)
        assert!(matches!(r.check(), Verdict::Reexec(_)));
        assert!(r.check().is_same(), "taken: the new baseline");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_inotify_every_check_stats() {
        let dir = temp_dir("no-hint");
        let mut r = reloader_in(&dir);
        // A watched path in a directory that does not exist: no hint.
        r.watched.push((dir.join("tmp/restart.txt"), None));
        let mut r = r.with_inotify_hint();
        assert!(r.wake_fd().is_none());
        assert!(r.check().is_same());
        assert!(r.stat_pass_due(None));
        assert!(r.stat_pass_due(Some(false)));
        touch(&dir.join("site.toml"));
        assert!(matches!(r.check_polled(false, true), Verdict::Reexec(_)));
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

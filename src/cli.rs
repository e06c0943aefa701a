//! The command line: with no subcommand, be the shim; `check` validates settings.
//!
//! Owns: argument parsing, the usage text, and turning a run into an exit code.
//! Must not: hold any serving logic; it calls launch, config, back and server.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::back::{self, Back};
use crate::config::{self, Config};
use crate::launch::{self, Launch, ListenerSource};
use crate::reload::{Reloader, Started};
use crate::{deploy, front, server, sys};

pub const USAGE: &str = "\
fcgi-shim: run a web application (CGI programs, and more to come) on hosts that only offer FastCGI.

It is not meant to be run from a shell. A web server starts it:
  - Apache mod_fcgid / mod_fastcgi: make mysite.fcgi in the web root the settings file,
    first line #!/path/to/fcgi-shim, mode 755 (or copy this file there as mysite.fcgi,
    with the settings in mysite.toml beside it), and use htaccess-examples/mod_fcgid.htaccess
    as .htaccess: it runs mysite.fcgi, never serves the settings or backups, passes
    Authorization, and sends every URL that is not a file to mysite.fcgi.
  - lighttpd bin-path, spawn-fcgi, systemd socket units: the listening socket on fd 0 or fd 3.
  - as a plain CGI program (GATEWAY_INTERFACE set): serves that one request.

Usage:
  fcgi-shim [SETTINGS]       be the FastCGI application (when started by a web server)
  fcgi-shim check [--start-app] [SETTINGS]
                             validate the settings and how the site is deployed
                             (execute bit, #! line, CRLF, permissions, suEXEC),
                             one line per problem, and exit (0 = usable); with
                             --start-app also start the application once (a
                             WSGI application is imported), as a reload does
  fcgi-shim serve [SETTINGS] [key=value ...]
                             run standalone, like Django's `manage.py runfcgi`
                             (`fcgi-shim serve help` lists the options)
  fcgi-shim --help | --version

Settings are found as: SETTINGS (argv[1]) if it is a file; else NAME.toml beside
the executable NAME.fcgi; else $FCGI_SHIM_CONFIG. See README.md for every key.
";

/// Parse the command line and run.
pub fn main() -> ExitCode {
    crate::log::init_early();
    // Before anything derives a directory from them (suEXEC starts us by bare
    // names, `mysite.fcgi`, with the cwd the script's directory).
    let args = with_absolute_settings(std::env::args_os().collect());
    let exe = invoked_as(args.first());
    match args.get(1).and_then(|a| a.to_str()) {
        Some("--help" | "-h" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("--version" | "-V") => {
            println!("fcgi-shim {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("check") => {
            let start_app = args.get(2).is_some_and(|a| a == "--start-app");
            let settings = args.get(if start_app { 3 } else { 2 });
            check(settings.map(PathBuf::from).as_deref(), &exe, start_app)
        }
        Some("serve") => serve(&args, &exe),
        // Started by a shim (`back::shared`), not by hand.
        Some("keep-server") => match (args.get(2), args.get(3).and_then(|k| k.to_str())) {
            (Some(settings), Some(key)) => {
                crate::back::shared::keep_server(Path::new(settings), key)
            }
            _ => {
                eprintln!(
                    "fcgi-shim keep-server SETTINGS KEY: started by fcgi-shim itself, not by hand"
                );
                ExitCode::from(2)
            }
        },
        Some(flag) if flag.starts_with('-') => {
            eprintln!("fcgi-shim: unknown option {flag}\n\n{USAGE}");
            ExitCode::from(2)
        }
        _ => run_shim(&args, &exe),
    }
}

/// `args` with the settings argument (argv[1] of the shim, the PATH of
/// `check [--start-app] PATH` and of `serve PATH ...`) made absolute against
/// the working directory, symlinks not resolved. suEXEC runs the shebang form
/// as `fcgi-shim mysite.fcgi`: a bare name whose directory is "". Absolute,
/// the same path serves the settings lookup, the reloader's watch and the
/// re-exec (which keeps the working directory).
fn with_absolute_settings(mut args: Vec<OsString>) -> Vec<OsString> {
    let at = match args.get(1).and_then(|a| a.to_str()) {
        Some("check") if args.get(2).is_some_and(|a| a == "--start-app") => 3,
        Some("check" | "serve") => 2,
        Some(flag) if flag.starts_with('-') || flag == "help" || flag == "keep-server" => {
            return args;
        }
        _ => 1,
    };
    let serve = at == 2 && args[1] == "serve";
    if let Some(arg) = args.get_mut(at) {
        let word = arg.to_string_lossy();
        let option = serve && (word.contains('=') || matches!(&*word, "help" | "--help" | "-h"));
        if !option
            && !arg.is_empty()
            && let Ok(absolute) = std::path::absolute(&*arg)
        {
            *arg = absolute.into_os_string();
        }
    }
    args
}

/// The path we were started as, absolute: argv[0] when it is a path; a bare
/// argv[0] that names this executable in the working directory as that file
/// (suEXEC runs the two-file form as `cmd: mysite.fcgi`, and /proc/self/exe
/// of a symlinked binary would name the wrong sibling `.toml`); else
/// /proc/self/exe.
fn invoked_as(argv0: Option<&OsString>) -> PathBuf {
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    match argv0.map(PathBuf::from) {
        Some(p) if p.components().count() > 1 => absolute(p),
        Some(p) if !p.as_os_str().is_empty() && is_this_executable(&p) => absolute(p),
        _ => std::env::current_exe().unwrap_or_else(|_| PathBuf::from("fcgi-shim")),
    }
}

/// Whether `name` (relative to the working directory) is the file this
/// process runs: the same inode as /proc/self/exe, through a symlink or
/// not. A bare argv[0] found through $PATH must not be taken for a file of
/// the same name that happens to lie in the working directory. Without
/// /proc (an empty chroot) any regular file of that name counts.
fn is_this_executable(name: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(name), std::fs::metadata("/proc/self/exe")) {
        (Ok(file), Ok(exe)) => file.is_file() && (file.dev(), file.ino()) == (exe.dev(), exe.ino()),
        (Ok(file), Err(_)) => file.is_file(),
        _ => false,
    }
}

/// The settings file the shim uses (argv[1], else `NAME.toml` beside the
/// executable, else $FCGI_SHIM_CONFIG), or why there is none.
fn locate_settings(arg: Option<&Path>, exe: &Path) -> Result<PathBuf, String> {
    if let Some(a) = arg.filter(|a| !a.is_file()) {
        if a.exists() {
            return Err(format!("{}: not a settings file", a.display()));
        }
        return Err(format!("{}: no such settings file", a.display()));
    }
    config::find(
        arg,
        exe,
        std::env::var_os(config::CONFIG_ENV).map(PathBuf::from),
    )
    .map(|found| found.path().to_path_buf())
    .ok_or_else(|| {
        format!(
            "no settings file found (looked at {}); see README.md",
            config::search_description(exe)
        )
    })
}

/// The settings to serve and their back. Valid settings: the back saves
/// them as the last good version once the application has started. Invalid
/// ones: the last good version of the same settings file, said once in the
/// log (the reloader still watches the real files: the first valid edit
/// takes over); without one, the 503 back.
fn settings_and_back(arg: Option<&Path>, exe: &Path) -> (Result<Config, String>, Box<dyn Back>) {
    let path = match locate_settings(arg, exe) {
        Ok(path) => path,
        Err(e) => {
            log::error!("{e}");
            return (Err(e.clone()), Box::new(back::Broken::new(e)));
        }
    };
    let e = match config::load_with_text(&path) {
        Ok((config, text)) => {
            let back = back::from_config(&config);
            let back = crate::last_good::SaveWhenStarted::new(back, config.path.clone(), text);
            return (Ok(config), Box::new(back));
        }
        Err(e) => e.to_string(),
    };
    let saved = crate::last_good::load(&path);
    match saved.map(|s| (config::parse(&path, &s.text), s)) {
        Some((Ok(config), saved)) => {
            log::error!(
                "{e}; serving the last good version (saved {}, {}) until the settings are fixed",
                crate::last_good::describe_time(saved.saved),
                saved.path.display()
            );
            let back = back::from_config(&config);
            (Ok(config), back)
        }
        Some((Err(old), saved)) => {
            log::error!("{e}");
            log::warn!(
                "the last good version {} is not valid any more either: {old}",
                saved.path.display()
            );
            (Err(e.clone()), Box::new(back::Broken::new(e)))
        }
        None => {
            log::error!("{e}");
            (Err(e.clone()), Box::new(back::Broken::new(e)))
        }
    }
}

fn find_settings(arg: Option<&Path>, exe: &Path) -> Result<Config, String> {
    config::load(&locate_settings(arg, exe)?).map_err(|e| e.to_string())
}

/// The site's name in log lines before (or without) valid settings: the
/// stem of the settings file tried (argv[1], else the sibling `NAME.toml`).
fn site_name(arg: Option<&Path>, exe: &Path) -> String {
    let tried = locate_settings(arg, exe)
        .ok()
        .or_else(|| arg.map(Path::to_path_buf))
        .unwrap_or_else(|| config::sibling_of(exe));
    config::site_of(&tried)
}

/// `check [--start-app] [SETTINGS]`: validate the settings and how the site
/// is deployed (`deploy`: every problem a line, exit 1 on any error); with
/// `--start-app` also start the application once the way the shim would (a
/// WSGI application is imported), which is what a reload asks of a new version.
fn check(arg: Option<&Path>, exe: &Path, start_app: bool) -> ExitCode {
    let path = match locate_settings(arg, exe) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let loaded = config::load_with_text(&path);
    if let Err(e) = &loaded {
        eprintln!("{e}");
    }
    let (config, text) = match loaded {
        Ok((config, text)) => (Ok(config), Some(text)),
        Err(e) => (Err(e), None),
    };
    // How the site is deployed: every problem, one line each. A reload's
    // check (no one reads its warnings) says only what stops the new version.
    let purpose = deploy::Purpose::from_env();
    let mut problems = deploy::diagnose(&path, exe, config.as_ref().ok(), purpose);
    if purpose == deploy::Purpose::Reload {
        problems.retain(deploy::Problem::is_error);
    }
    for problem in &problems {
        eprintln!("{problem}");
    }
    let Ok(config) = config else {
        return ExitCode::from(1);
    };
    if problems.iter().any(deploy::Problem::is_error) {
        return ExitCode::from(1);
    }
    if start_app {
        // The application's own log lines would bury the one that matters.
        log::set_max_level(log::LevelFilter::Off);
        if let Err(e) = back::preflight(&config) {
            eprintln!("{}: {e}", config.path.display());
            return ExitCode::from(1);
        }
        // This version started: it is the last good one (a reload asks
        // this of the new version before it takes over).
        if let Some(text) = &text
            && let Err(e) = crate::last_good::save(&config.path, text)
        {
            eprintln!("warning: cannot keep a copy of the last good version: {e}");
        }
    }
    match problems.len() {
        0 => println!("ok: {}", config.path.display()),
        n => println!("ok: {} ({n} warning(s) above)", config.path.display()),
    }
    ExitCode::SUCCESS
}

fn run_shim(args: &[OsString], exe: &Path) -> ExitCode {
    let arg = args.get(1).map(PathBuf::from);
    let arg = arg.as_deref();
    // Every line names the site, also when its settings turn out unusable.
    let _ = crate::log::configure(
        &site_name(arg, exe),
        &crate::log::LogTarget::Stderr,
        log::LevelFilter::Info,
    );
    let signals = match sys::install_signal_handlers() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let launch = match launch::detect() {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    if matches!(launch, Launch::ByHand) {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    }
    let (settings, mut back) = settings_and_back(arg, exe);
    // A worker our previous image handed over that no back took: ended.
    back::wsgi::end_unclaimed_handover();
    if let Ok(config) = &settings
        && let Err(e) = crate::log::configure(&config.site, &config.log.target, config.log.level)
    {
        log::error!("{e}; logging to stderr instead");
    }
    let mut reloader = matches!(launch, Launch::Listener { .. })
        .then(|| reloader_for(args, exe, arg, settings.as_ref().ok()));
    let limits = settings.as_ref().map(|c| c.limits).unwrap_or_default();
    match launch {
        Launch::Listener { fd, source, family } => {
            let from = match source {
                ListenerSource::Fd0 => "fd 0",
                ListenerSource::Systemd => "fd 3 (systemd)",
            };
            log::debug!("serving FastCGI on the {family:?} listening socket on {from}");
            server::run_single(fd, source, &mut back, limits, &signals, reloader.as_mut());
        }
        Launch::Cgi => front::cgi::serve_once(back.as_mut(), &signals),
        Launch::ByHand => {}
    }
    ExitCode::SUCCESS
}

/// What to watch for `touch mysite.fcgi`: the files `reload` names, with the
/// settings file in use (or, while none was found, the sibling one would be).
fn reloader_for(
    args: &[OsString],
    exe: &Path,
    arg: Option<&Path>,
    config: Option<&Config>,
) -> Reloader {
    let settings = match config {
        Some(c) => Some(c.path.clone()),
        None => arg
            .map(Path::to_path_buf)
            .or_else(|| Some(config::sibling_of(exe))),
    };
    let reloader = Reloader::new(Started::new(args.to_vec(), exe), settings, config)
        .exit_when_replaced(launch::spawned_by_apache())
        .with_inotify_hint();
    let watched: Vec<String> = reloader
        .watched()
        .map(|p| p.display().to_string())
        .collect();
    let how = if reloader.wake_fd().is_some() {
        "stat after an inotify event or once a second"
    } else {
        "stat before every request"
    };
    log::debug!("reload: watching {} ({how})", watched.join(", "));
    reloader
}

// ---------------------------------------------------------------------------
// `fcgi-shim serve`: the standalone server (Django's runfcgi options).

fn serve_help() -> String {
    let mut text = String::from(
        "fcgi-shim serve [SETTINGS] [key=value ...]: run standalone, like `manage.py runfcgi`.\n\n\
         The application comes from the settings file (found as for the shim); the options\n\
         below may also be written in its [server] table; the command line wins.\n\
         Without socket or port, the listening socket is inherited (fd 0, or systemd's fd 3).\n\n",
    );
    for (name, default, meaning) in config::SERVER_KEYS {
        text.push_str(&format!("  {name:<14} {meaning} (default: {default})\n"));
    }
    text.push_str(
        "\nExamples:\n  fcgi-shim serve mysite.toml method=threaded host=127.0.0.1 port=3033\n  \
         fcgi-shim serve mysite.toml method=prefork socket=/home/user/mysite.sock pidfile=django.pid\n  \
         fcgi-shim serve mysite.toml daemonize=false socket=/tmp/mysite.sock maxrequests=1\n\
         Stop it with: kill $(cat django.pid); reload it in place with: kill -HUP $(cat django.pid)\n",
    );
    text
}

/// `argv`: the whole command line, `serve` at argv[1] (the re-exec on
/// SIGHUP runs it again, after daemonizing changed the working directory:
/// `main` made the settings path in it absolute).
fn serve(argv: &[OsString], exe: &Path) -> ExitCode {
    let args = argv.get(2..).unwrap_or_default();
    let words: Vec<&str> = match args.iter().map(|a| a.to_str()).collect::<Option<Vec<_>>>() {
        Some(w) => w,
        None => {
            eprintln!("fcgi-shim serve: arguments must be valid UTF-8");
            return ExitCode::from(2);
        }
    };
    if words.iter().any(|w| matches!(*w, "help" | "--help" | "-h")) {
        print!("{}", serve_help());
        return ExitCode::SUCCESS;
    }
    // The settings file is the first word that is not key=value. Paths are
    // made absolute first: daemonizing changes to `workdir`, and relative
    // paths in the settings are taken from the settings file's directory.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let (settings_arg, options) = match words.first() {
        Some(first) if !first.contains('=') => (Some(cwd.join(first)), &words[1..]),
        _ => (None, &words[..]),
    };
    let mut config = match find_settings(settings_arg.as_deref(), &cwd.join(exe)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fcgi-shim serve: {e}");
            return ExitCode::from(1);
        }
    };
    for word in options {
        if let Err(e) = config.server.set_word(word, &cwd) {
            eprintln!("fcgi-shim serve: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = config.server.check() {
        eprintln!("fcgi-shim serve: {e}");
        return ExitCode::from(2);
    }
    match serve_with(config, Started::new(argv.to_vec(), exe)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn serve_with(config: Config, started: Started) -> Result<(), String> {
    use crate::config::{FrontProtocol, ServeMethod};
    use crate::server::worker::{self, Bounds, Listener};
    let settings = config.server.clone();
    let level = if settings.debug {
        log::LevelFilter::Debug
    } else {
        config.log.level
    };
    if let Err(e) = crate::log::configure(&config.site, &config.log.target, level) {
        log::error!("{e}; logging to stderr instead");
    }
    if let Some(pidfile) = &settings.pidfile {
        launch::check_pidfile(pidfile).map_err(|e| e.to_string())?;
    }
    let signals = sys::install_signal_handlers()
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let signals: &'static sys::SignalPipe = Box::leak(Box::new(signals));
    // After a SIGHUP reload the bound socket is already ours: neither bind
    // nor daemonize again; the socket file is still ours to remove at exit.
    let kept = launch::take_reexec_listener().map_err(|e| e.to_string())?;
    let reloaded = kept.is_some();
    let (fd, family, bound, place) = if let Some((fd, family)) = kept {
        let bound = launch::Bound {
            fd: fd.try_clone().map_err(|e| e.to_string())?,
            family,
            socket_path: settings.socket.clone(),
        };
        (
            fd,
            family,
            Some(bound),
            "the socket kept across the reload".to_string(),
        )
    } else if settings.binds() {
        let bound = launch::bind(&settings).map_err(|e| e.to_string())?;
        let place = match (&settings.socket, &settings.host, settings.port) {
            (Some(path), _, _) => path.display().to_string(),
            (None, host, Some(port)) => {
                format!("{}:{port}", host.as_deref().unwrap_or("127.0.0.1"))
            }
            _ => String::new(),
        };
        let fd = bound.fd.try_clone().map_err(|e| e.to_string())?;
        (fd, bound.family, Some(bound), place)
    } else {
        match launch::detect().map_err(|e| e.to_string())? {
            Launch::Listener { fd, source, family } => {
                sys::set_nonblocking(std::os::fd::AsFd::as_fd(&fd))
                    .map_err(|e| format!("inherited listener: {e}"))?;
                let place = match source {
                    ListenerSource::Fd0 => "the socket on fd 0",
                    ListenerSource::Systemd => "fd 3 (systemd)",
                };
                (fd, family, None, place.to_string())
            }
            _ => {
                return Err(
                    "nothing to listen on: give socket=PATH or port=N (host=ADDR), \
                            or start under a web server or systemd that passes a listening socket"
                        .into(),
                );
            }
        }
    };
    // From here on a failure removes the socket file we created.
    let fail = |e: launch::LaunchError| {
        if let Some(b) = &bound {
            b.remove_socket();
        }
        e.to_string()
    };
    let allowed = match family {
        sys::ListenerFamily::Unix => Vec::new(),
        _ => launch::allowed_peers(&settings).map_err(fail)?,
    };
    let mut daemon = None;
    if settings.daemonizes() && !reloaded {
        if bound.is_none() {
            log::warn!("daemonize ignored: the listening socket is inherited");
        } else {
            daemon = Some(launch::daemonize(&settings).map_err(fail)?);
        }
    }
    let pidfile = match settings.pidfile.as_deref().map(launch::write_pidfile) {
        Some(Err(e)) => {
            if let Some(d) = daemon.as_mut() {
                d.ready(Err(&e.to_string()));
            }
            return Err(fail(e));
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    if let Some(d) = daemon.as_mut() {
        d.ready(Ok(()));
    }
    drop(daemon);
    let protocol = match settings.protocol {
        FrontProtocol::FastCgi => "FastCGI",
        FrontProtocol::Scgi => "SCGI",
        FrontProtocol::Ajp => "AJP13",
    };
    if settings.protocol == FrontProtocol::Ajp && settings.ajp_secret.is_none() {
        let public = settings.host.as_deref().is_some_and(|h| {
            h.parse::<std::net::IpAddr>()
                .map_or(h != "localhost", |ip| !ip.is_loopback())
        });
        if public && settings.socket.is_none() {
            log::warn!(
                "AJP on a non-loopback address without ajp_secret: anyone who can reach \
                 the port can send requests with any remote address and user"
            );
        }
    }
    log::info!(
        "serving {protocol} on {place} ({:?}, pid {})",
        settings.method,
        sys::pid()
    );
    // SIGHUP: validate the new version (its own `check` of the settings);
    // if good, stop like SIGTERM (requests in flight finish), then re-exec
    // in place with the listening socket (see the end of this function).
    let keep = fd.try_clone().map_err(|e| e.to_string())?;
    let reloader = Reloader::new(started, Some(config.path.clone()), Some(&config));
    sys::hup_means_reload();
    let reload_pending = std::cell::Cell::new(false);
    let on_tick = || {
        if !sys::take_reload_request() {
            return;
        }
        match reloader.validate() {
            Ok(()) => {
                log::info!(
                    "SIGHUP: restarting with the new version once requests in flight finish"
                );
                reload_pending.set(true);
                sys::request_stop(nix::sys::signal::Signal::SIGHUP);
            }
            Err(why) => log::error!(
                "SIGHUP: not reloading, the new version is not usable: {why}; \
                 still serving the previous version"
            ),
        }
    };
    let listener = Listener {
        fd,
        protocol: settings.protocol,
        allowed,
        ajp_secret: settings.ajp_secret.clone(),
    };
    let bounds = Bounds::from_settings(&settings);
    // One process-group guard for the whole server, shared by prefork workers.
    if back::needs_group_guard(&config) {
        crate::supervise::start_guard();
    }
    match settings.method {
        ServeMethod::Prefork => {
            server::prefork::run(&listener, &config, bounds, signals, &mut || on_tick())
        }
        ServeMethod::Threaded => server::threaded::run(
            std::sync::Arc::new(listener),
            std::sync::Arc::new(config.clone()),
            bounds,
            signals,
            &mut || on_tick(),
        ),
        ServeMethod::Single => {
            let mut back = back::from_config(&config);
            worker::run(
                worker::Worker {
                    listener: &listener,
                    limits: config.limits,
                    signals,
                    maxrequests: 0,
                    alone: true,
                    retire: &|| {
                        on_tick();
                        false
                    },
                    report: &mut |_| {},
                },
                back.as_mut(),
            );
            back.shutdown();
        }
    }
    if reload_pending.get() {
        // The socket file and the pidfile stay: the new image takes them over.
        let err = match launch::prepare_reexec(std::os::fd::AsFd::as_fd(&keep), None) {
            Ok(env) => reloader.exec(&env),
            Err(e) => e,
        };
        log::error!("reload: exec failed ({err}); stopping");
    }
    if let Some(b) = &bound {
        b.remove_socket();
    }
    if let Some(p) = &pidfile {
        p.remove();
    }
    log::info!("stopped");
    Ok(())
}

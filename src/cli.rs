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
use crate::{front, server, sys};

pub const USAGE: &str = "\
fcgi-shim: run a web application (CGI programs, and more to come) on hosts that only offer FastCGI.

It is not meant to be run from a shell. A web server starts it:
  - Apache mod_fcgid / mod_fastcgi: copy this file into the web root as mysite.fcgi,
    write the settings in mysite.toml beside it, and add to .htaccess:
        AddHandler fcgid-script .fcgi
        RewriteEngine On
        RewriteCond %{REQUEST_FILENAME} !-f
        RewriteRule ^(.*)$ mysite.fcgi/$1 [QSA,L]
    (or make mysite.fcgi itself the settings file, first line #!/path/to/fcgi-shim)
  - lighttpd bin-path, spawn-fcgi, systemd socket units: the listening socket on fd 0 or fd 3.
  - as a plain CGI program (GATEWAY_INTERFACE set): serves that one request.

Usage:
  fcgi-shim [SETTINGS]       be the FastCGI application (when started by a web server)
  fcgi-shim check [SETTINGS] validate the settings and exit (0 = valid)
  fcgi-shim --help | --version

Settings are found as: SETTINGS (argv[1]) if it is a file; else NAME.toml beside
the executable NAME.fcgi; else $FCGI_SHIM_CONFIG. See README.md for every key.
";

/// Parse the command line and run.
pub fn main() -> ExitCode {
    crate::log::init_early();
    let args: Vec<OsString> = std::env::args_os().collect();
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
        Some("check") => check(args.get(2).map(PathBuf::from).as_deref(), &exe),
        Some(flag) if flag.starts_with('-') => {
            eprintln!("fcgi-shim: unknown option {flag}\n\n{USAGE}");
            ExitCode::from(2)
        }
        _ => run_shim(&args, &exe),
    }
}

/// The path we were started as (argv[0] when it is a path, else /proc/self/exe).
fn invoked_as(argv0: Option<&OsString>) -> PathBuf {
    match argv0.map(PathBuf::from) {
        Some(p) if p.components().count() > 1 => p,
        _ => std::env::current_exe().unwrap_or_else(|_| PathBuf::from("fcgi-shim")),
    }
}

fn find_settings(arg: Option<&Path>, exe: &Path) -> Result<Config, String> {
    if let Some(a) = arg.filter(|a| !a.is_file()) {
        if a.exists() {
            return Err(format!("{}: not a settings file", a.display()));
        }
        return Err(format!("{}: no such settings file", a.display()));
    }
    let found = config::find(
        arg,
        exe,
        std::env::var_os(config::CONFIG_ENV).map(PathBuf::from),
    )
    .ok_or_else(|| {
        format!(
            "no settings file found (looked at {}); see README.md",
            config::search_description(exe)
        )
    })?;
    config::load(found.path()).map_err(|e| e.to_string())
}

fn check(arg: Option<&Path>, exe: &Path) -> ExitCode {
    match find_settings(arg, exe) {
        Ok(config) => {
            println!("ok: {}", config.path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run_shim(args: &[OsString], exe: &Path) -> ExitCode {
    let arg = args.get(1).map(PathBuf::from);
    let arg = arg.as_deref();
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
    let settings = find_settings(arg, exe);
    let (mut back, limits) = match &settings {
        Ok(config) => {
            if let Err(e) =
                crate::log::configure(&config.site, &config.log.target, config.log.level)
            {
                log::error!("{e}; logging to stderr instead");
            }
            (back::from_config(config), config.limits)
        }
        Err(e) => {
            log::error!("{e}");
            (
                Box::new(back::Broken::new(e.clone())) as Box<dyn Back>,
                config::Limits::default(),
            )
        }
    };
    match launch {
        Launch::Listener { fd, source, family } => {
            let from = match source {
                ListenerSource::Fd0 => "fd 0",
                ListenerSource::Systemd => "fd 3 (systemd)",
            };
            log::debug!("serving FastCGI on the {family:?} listening socket on {from}");
            let mut reloader = reloader_for(args, exe, arg, settings.as_ref().ok());
            server::run_single(
                fd,
                source,
                back.as_mut(),
                limits,
                &signals,
                Some(&mut reloader),
            );
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
        .exit_when_replaced(launch::spawned_by_apache());
    let watched: Vec<String> = reloader
        .watched()
        .map(|p| p.display().to_string())
        .collect();
    log::debug!("reload: watching {}", watched.join(", "));
    reloader
}

//! Settings of the kinds that run "a server program": `http`, `fastcgi` and
//! `scgi` (issue 16).
//!
//! Owns: each kind's raw `[app]` keys (one struct per kind with
//! `deny_unknown_fields`, so a typo lists only that kind's keys) and their
//! validation into [`ServerConfig`].
//! Must not: start anything; the address placeholders are only recognised
//! here, substituted by `back::server`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Seconds, Source, parse_script_name, positive_duration};
use crate::request::ScriptName;

/// Default time a server program may take to accept connections (and answer `ready_path`).
pub const DEFAULT_SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time one request to a server program may take.
pub const DEFAULT_SERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The placeholder for the private unix socket path in `command`.
pub const SOCKET_PLACEHOLDER: &str = "{socket}";
/// The placeholder for the private loopback port in `command` (also `PORT`).
pub const PORT_PLACEHOLDER: &str = "{port}";

/// The keys every server kind has, then the kind's own: one struct per kind.
macro_rules! raw_server_app {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            #[allow(dead_code)] // read by the probe parse
            kind: Spanned<String>,
            command: Option<Spanned<Vec<String>>>,
            workdir: Option<Spanned<String>>,
            #[serde(default)]
            env: BTreeMap<String, String>,
            max_requests: Option<Spanned<i64>>,
            start_timeout: Option<Spanned<Seconds>>,
            request_timeout: Option<Spanned<Seconds>>,
            $($(#[$fdoc])* $field: $ty,)*
        }

        impl $name {
            fn common(&mut self) -> Common {
                Common {
                    command: self.command.take(),
                    workdir: self.workdir.take(),
                    env: std::mem::take(&mut self.env),
                    max_requests: self.max_requests.take(),
                    start_timeout: self.start_timeout.take(),
                    request_timeout: self.request_timeout.take(),
                }
            }
        }
    };
}

raw_server_app!(
    /// `kind = "http"`: the application's own HTTP/1.1 server.
    RawHttp {
        /// A path (with an optional query) that must answer 2xx before the server is ready.
        ready_path: Option<Spanned<String>>,
        /// The prefix sent as `X-Forwarded-Prefix` ("auto": the one the shim computes).
        script_name: Option<Spanned<String>>,
        /// Take the prefix off the request path (default) or pass the whole path.
        strip_prefix: Option<Spanned<bool>>,
        /// One server for all the site's processes (default, unless `max_requests`).
        shared: Option<Spanned<bool>>,
    }
);

raw_server_app!(
    /// `kind = "fastcgi"`: a FastCGI program (php-cgi, flup, libfcgi).
    RawFastcgi {
        /// FastCGI params set (or replaced) on every request.
        params: Option<Spanned<BTreeMap<String, String>>>,
        /// The SCRIPT_NAME the program gets ("auto": the one the shim computes).
        script_name: Option<Spanned<String>>,
    }
);

raw_server_app!(
    /// `kind = "scgi"`: an SCGI server.
    RawScgi {
        /// The SCRIPT_NAME the server gets ("auto": the one the shim computes).
        script_name: Option<Spanned<String>>,
    }
);

struct Common {
    command: Option<Spanned<Vec<String>>>,
    workdir: Option<Spanned<String>>,
    env: BTreeMap<String, String>,
    max_requests: Option<Spanned<i64>>,
    start_timeout: Option<Spanned<Seconds>>,
    request_timeout: Option<Spanned<Seconds>>,
}

/// A validated server program.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub kind: ServerKind,
    /// argv; the program resolved against the settings file's directory when it has a `/`.
    pub command: Vec<String>,
    /// Where the shim puts the server (what `command` asks for).
    pub listen: Listen,
    /// The process's working directory (default: the settings file's directory).
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Requests after which the process is replaced; 0 = never.
    pub max_requests: u64,
    pub start_timeout: Duration,
    pub request_timeout: Duration,
    /// One server for all the processes of the site (`back::shared`), run
    /// by the site's keeper, not one per process (http only).
    pub shared: bool,
}

/// The protocol spoken with the server, with its kind's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerKind {
    Http {
        ready_path: Option<String>,
        script_name: ScriptName,
        /// The server is mounted at the prefix: it gets the path without it
        /// (and its redirects get it back). `false`: the whole path.
        strip_prefix: bool,
    },
    Fastcgi {
        params: Vec<(String, String)>,
        script_name: ScriptName,
    },
    Scgi {
        script_name: ScriptName,
    },
}

impl ServerKind {
    /// "http", "fastcgi", "scgi": the kind's name in settings and log lines.
    pub fn name(&self) -> &'static str {
        match self {
            ServerKind::Http { .. } => "http",
            ServerKind::Fastcgi { .. } => "fastcgi",
            ServerKind::Scgi { .. } => "scgi",
        }
    }
}

/// Where the server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket path substituted for `{socket}`.
    Socket,
    /// A loopback port substituted for `{port}` and given as `PORT`.
    Port,
    /// A listening unix socket on fd 0, as mod_fcgid starts FastCGI programs.
    Stdin,
}

pub(super) fn validate_http(
    src: &Source<'_>,
    base: &Path,
    mut raw: RawHttp,
) -> Result<ServerConfig, ConfigError> {
    let ready_path = match raw.ready_path.take() {
        None => None,
        Some(p) => {
            super::check_request_path(p.get_ref()).map_err(|e| src.at(p.span(), e))?;
            Some(p.into_inner())
        }
    };
    let script_name = parse_script_name(src, raw.script_name.take())?;
    let kind = ServerKind::Http {
        ready_path,
        script_name,
        strip_prefix: raw.strip_prefix.take().is_none_or(|s| *s.get_ref()),
    };
    let shared = raw.shared.take();
    let mut config = validate_common(src, base, raw.common(), kind)?;
    // A shared server's requests are counted by no one process: recycling
    // after `max_requests` needs one server per process.
    config.shared = match shared {
        None => config.max_requests == 0,
        Some(s) if *s.get_ref() && config.max_requests > 0 => {
            return Err(src.at(
                s.span(),
                "cannot be true with `max_requests` (a shared server's requests are \
                 not counted by any one process): remove one of them",
            ));
        }
        Some(s) => *s.get_ref(),
    };
    Ok(config)
}

pub(super) fn validate_fastcgi(
    src: &Source<'_>,
    base: &Path,
    mut raw: RawFastcgi,
) -> Result<ServerConfig, ConfigError> {
    let mut params = Vec::new();
    if let Some(p) = raw.params.take() {
        let span = p.span();
        for (name, value) in p.into_inner() {
            if name.is_empty() || name.bytes().any(|b| b == 0) || value.bytes().any(|b| b == 0) {
                return Err(src.at(span, format!("\"{name}\" is not a usable param")));
            }
            params.push((name, value));
        }
    }
    let script_name = parse_script_name(src, raw.script_name.take())?;
    let kind = ServerKind::Fastcgi {
        params,
        script_name,
    };
    validate_common(src, base, raw.common(), kind)
}

pub(super) fn validate_scgi(
    src: &Source<'_>,
    base: &Path,
    mut raw: RawScgi,
) -> Result<ServerConfig, ConfigError> {
    let script_name = parse_script_name(src, raw.script_name.take())?;
    validate_common(src, base, raw.common(), ServerKind::Scgi { script_name })
}

fn validate_common(
    src: &Source<'_>,
    base: &Path,
    raw: Common,
    kind: ServerKind,
) -> Result<ServerConfig, ConfigError> {
    let name = kind.name();
    let Some(command) = raw.command else {
        return Err(src.error(
            None,
            format!("[app] kind = \"{name}\" needs `command = [\"/path/to/server\", \"args\"...]`"),
        ));
    };
    let span = command.span();
    let argv = super::validate_command(src, base, command, "server")?;
    let listen = listen_of(&argv, &kind).map_err(|e| src.at(span, e))?;
    let workdir = super::validate_workdir(src, base, raw.workdir)?;
    let max_requests = super::validate_max_requests(src, raw.max_requests)?;
    let start_timeout = positive_duration(src, raw.start_timeout, DEFAULT_SERVER_START_TIMEOUT)?;
    let request_timeout =
        positive_duration(src, raw.request_timeout, DEFAULT_SERVER_REQUEST_TIMEOUT)?;
    Ok(ServerConfig {
        kind,
        command: argv,
        listen,
        workdir,
        env: raw.env.into_iter().collect(),
        max_requests,
        start_timeout,
        request_timeout,
        shared: false,
    })
}

/// Which address `argv` asks for: `{socket}` or `{port}` (not both); with
/// neither, a port (`PORT`) for http and scgi, fd 0 for fastcgi.
fn listen_of(argv: &[String], kind: &ServerKind) -> Result<Listen, String> {
    let has = |p: &str| argv.iter().skip(1).any(|a| a.contains(p));
    match (has(SOCKET_PLACEHOLDER), has(PORT_PLACEHOLDER)) {
        (true, true) => Err("use either {socket} or {port} in `command`, not both".into()),
        (true, false) => Ok(Listen::Socket),
        (false, true) => Ok(Listen::Port),
        (false, false) if matches!(kind, ServerKind::Fastcgi { .. }) => Ok(Listen::Stdin),
        (false, false) => Ok(Listen::Port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppConfig, parse};

    fn server(text: &str) -> Result<ServerConfig, ConfigError> {
        parse(Path::new("/tmp/mysite.fcgi"), text).map(|c| match c.app {
            AppConfig::Server(s) => s,
            other => panic!("not a server program: {other:?}"),
        })
    }

    #[test]
    fn defaults_and_addresses() {
        let s = server("[app]\nkind = \"http\"\ncommand = [\"node\", \"app.js\"]\n").unwrap();
        assert_eq!(s.listen, Listen::Port);
        assert_eq!(s.workdir, PathBuf::from("/tmp"));
        assert_eq!(
            (s.max_requests, s.start_timeout),
            (0, DEFAULT_SERVER_START_TIMEOUT)
        );
        assert_eq!(s.request_timeout, DEFAULT_SERVER_REQUEST_TIMEOUT);
        assert!(s.shared);
        assert_eq!(
            s.kind,
            ServerKind::Http {
                ready_path: None,
                script_name: ScriptName::Auto,
                strip_prefix: true,
            }
        );
        let s =
            server("[app]\nkind = \"http\"\ncommand = [\"gunicorn\", \"-b\", \"unix:{socket}\"]\n")
                .unwrap();
        assert_eq!(s.listen, Listen::Socket);
        let s = server(
            "[app]\nkind = \"fastcgi\"\ncommand = [\"php-cgi\"]\nparams = { SCRIPT_FILENAME = \"/x/index.php\" }\nmax_requests = 500\n",
        )
        .unwrap();
        assert_eq!(s.listen, Listen::Stdin);
        assert_eq!(s.max_requests, 500);
        assert!(!s.shared);
        assert_eq!(
            s.kind,
            ServerKind::Fastcgi {
                params: vec![("SCRIPT_FILENAME".into(), "/x/index.php".into())],
                script_name: ScriptName::Auto,
            }
        );
        let s =
            server("[app]\nkind = \"scgi\"\ncommand = [\"py\", \"--port\", \"{port}\"]\n").unwrap();
        let kind = ServerKind::Scgi {
            script_name: ScriptName::Auto,
        };
        assert_eq!((s.listen, s.kind), (Listen::Port, kind));
        let s = server(
            "[app]\nkind = \"scgi\"\ncommand = [\"py\", \"{port}\"]\nscript_name = \"/blog\"\n",
        )
        .unwrap();
        let kind = ServerKind::Scgi {
            script_name: ScriptName::Fixed("/blog".into()),
        };
        assert_eq!(s.kind, kind);
    }

    #[test]
    fn http_servers_are_shared_unless_max_requests_or_shared_false() {
        let http = "[app]\nkind = \"http\"\ncommand = [\"node\", \"app.js\"]\n";
        assert!(server(http).unwrap().shared);
        assert!(!server(&format!("{http}shared = false\n")).unwrap().shared);
        assert!(
            !server(&format!("{http}max_requests = 100\n"))
                .unwrap()
                .shared
        );
        let e = server(&format!("{http}max_requests = 100\nshared = true\n")).unwrap_err();
        assert_eq!(e.position, Some((5, 10)), "{e}");
        assert!(
            e.message.contains("key `shared`") && e.message.contains("max_requests"),
            "{e}"
        );
        // Only http has the key: a typo or a misplaced key lists only the kind's own.
        let e = server("[app]\nkind = \"scgi\"\ncommand = [\"a\", \"{port}\"]\nshared = true\n")
            .unwrap_err();
        assert!(e.message.contains("unknown key `shared`"), "{e}");
    }

    #[test]
    fn errors_name_place_and_key() {
        let e = server("[app]\nkind = \"http\"\n").unwrap_err();
        assert!(e.message.contains("needs `command"), "{e}");
        let e = server("[app]\nkind = \"http\"\ncommand = [\"a\", \"{socket}\", \"{port}\"]\n")
            .unwrap_err();
        assert_eq!(e.position, Some((3, 11)), "{e}");
        assert!(e.message.contains("not both"), "{e}");
        let e = server("[app]\nkind = \"http\"\ncommand = [\"a\"]\nready_path = \"health\"\n")
            .unwrap_err();
        assert!(e.message.contains("key `ready_path`"), "{e}");
        let e =
            server("[app]\nkind = \"scgi\"\ncommand = [\"a\"]\nrequest_timeout = 0\n").unwrap_err();
        assert!(e.message.contains("must be more than 0"), "{e}");
        let e = server("[app]\nkind = \"fastcgi\"\ncommand = [\"./missing\"]\n").unwrap_err();
        assert!(e.message.contains("key `command`"), "{e}");
    }
}

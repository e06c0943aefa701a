//! Settings of `kind = "wsgi"` (issue 3): a persistent Python worker running a
//! WSGI application.
//!
//! Owns: the wsgi keys' validation into [`WsgiConfig`], and the error for a
//! wsgi key given to another kind.
//! Must not: start anything or look for the interpreter (a missing one is
//! retried at start, and `check` reports it).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::{
    AppConfig, ConfigError, OneOrMany, RawApp, Source, check_directory, check_request_path,
    parse_script_name, positive_duration, resolve, validate_max_requests, validate_workdir,
};

/// Default time a WSGI worker may take to import the application.
pub const DEFAULT_WSGI_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time one WSGI request may take.
pub const DEFAULT_WSGI_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct WsgiConfig {
    /// The module to import, e.g. `myproject.wsgi`.
    pub module: String,
    /// The attribute of the module that is the application (`application`
    /// unless the setting says `module:attr`); `attr()` calls a factory.
    pub attribute: String,
    /// The interpreter: a path, or a name looked up in PATH.
    pub python: String,
    /// Prepended to sys.path, in order.
    pub python_path: Vec<PathBuf>,
    /// The worker's working directory (default: the settings file's directory).
    pub workdir: PathBuf,
    /// Extra environment of the worker process (e.g. DJANGO_SETTINGS_MODULE).
    pub env: Vec<(String, String)>,
    /// Requests after which the worker is replaced; 0 = never.
    pub max_requests: u64,
    pub start_timeout: Duration,
    pub request_timeout: Duration,
    pub script_name: crate::request::ScriptName,
    /// Show Python tracebacks on the 503 page when the application cannot start.
    pub debug: bool,
    /// Paths (with an optional `?query`) a new worker is sent as GETs before
    /// it serves, at start and in a reload's `check --start-app`; a 5xx or no
    /// answer within `start_timeout` is a failed start.
    pub warmup: Vec<String>,
}

/// The keys only `kind = "wsgi"` takes, with their spans, for the error when
/// another kind is given one.
fn wsgi_keys(raw: &RawApp) -> Vec<(&'static str, Range<usize>)> {
    let mut keys = Vec::new();
    let mut add = |name, span: Option<Range<usize>>| {
        if let Some(span) = span {
            keys.push((name, span));
        }
    };
    add("module", raw.module.as_ref().map(Spanned::span));
    add("python", raw.python.as_ref().map(Spanned::span));
    add("python_path", raw.python_path.as_ref().map(Spanned::span));
    add("max_requests", raw.max_requests.as_ref().map(Spanned::span));
    add(
        "start_timeout",
        raw.start_timeout.as_ref().map(Spanned::span),
    );
    add(
        "request_timeout",
        raw.request_timeout.as_ref().map(Spanned::span),
    );
    add("script_name", raw.script_name.as_ref().map(Spanned::span));
    add("debug", raw.debug.as_ref().map(Spanned::span));
    add("warmup", raw.warmup.as_ref().map(Spanned::span));
    add("direct", raw.direct.as_ref().map(Spanned::span));
    keys
}

pub(super) fn reject_wsgi_keys(src: &Source<'_>, raw: &RawApp) -> Result<(), ConfigError> {
    match wsgi_keys(raw).into_iter().next() {
        Some((name, span)) => Err(src.at(
            span,
            format!(
                "`{name}` is a setting of kind = \"wsgi\", not of kind = \"{}\"",
                raw.kind.get_ref()
            ),
        )),
        None => Ok(()),
    }
}

pub(super) fn validate_wsgi(
    src: &Source<'_>,
    base: &Path,
    raw: RawApp,
) -> Result<AppConfig, ConfigError> {
    if let Some(direct) = &raw.direct {
        log::warn!(
            "{}",
            src.at(
                direct.span(),
                "`direct` is no longer used and is ignored: every request goes through \
                 the shim to the worker; remove the line"
            )
        );
    }
    for (name, span) in [
        ("command", raw.command.as_ref().map(Spanned::span)),
        ("root", raw.root.as_ref().map(Spanned::span)),
        ("timeout", raw.timeout.as_ref().map(Spanned::span)),
    ] {
        if let Some(span) = span {
            let hint = if name == "timeout" {
                " (use `request_timeout`)"
            } else {
                ""
            };
            return Err(src.at(
                span,
                format!("`{name}` is not a setting of kind = \"wsgi\"{hint}"),
            ));
        }
    }
    let Some(module) = raw.module else {
        return Err(src.error(
            None,
            "[app] kind = \"wsgi\" needs `module`, e.g. module = \"myproject.wsgi:application\""
                .into(),
        ));
    };
    let (module_name, attribute) =
        parse_wsgi_module(module.get_ref()).map_err(|e| src.at(module.span(), e))?;
    let python = match raw.python {
        None => "python3".to_string(),
        Some(p) if p.get_ref().is_empty() => {
            return Err(src.at(p.span(), "must name a Python interpreter"));
        }
        // Not checked here: an interpreter that is missing (a virtualenv
        // not made yet) is a start failure, retried with backoff until it
        // appears, not a settings error that needs a touch. `check` reports
        // it (deploy::app_problems).
        Some(p) if p.get_ref().contains('/') => {
            resolve(base, p.get_ref()).to_string_lossy().into_owned()
        }
        Some(p) => p.into_inner(),
    };
    let mut python_path = Vec::new();
    if let Some(list) = raw.python_path {
        for entry in list.get_ref() {
            let dir = resolve(base, entry);
            check_directory(&dir, "the python_path directory")
                .map_err(|e| src.at(list.span(), e))?;
            python_path.push(dir);
        }
    }
    let workdir = validate_workdir(src, base, raw.workdir)?;
    let max_requests = validate_max_requests(src, raw.max_requests)?;
    let start_timeout = positive_duration(src, raw.start_timeout, DEFAULT_WSGI_START_TIMEOUT)?;
    let request_timeout =
        positive_duration(src, raw.request_timeout, DEFAULT_WSGI_REQUEST_TIMEOUT)?;
    let script_name = parse_script_name(src, raw.script_name)?;
    let warmup = match raw.warmup {
        None => Vec::new(),
        Some(w) => {
            let span = w.span();
            let paths = match w.into_inner() {
                OneOrMany::One(p) => vec![p],
                OneOrMany::Many(list) => list,
            };
            for path in &paths {
                check_request_path(path).map_err(|e| src.at(span.clone(), e))?;
            }
            paths
        }
    };
    Ok(AppConfig::Wsgi(WsgiConfig {
        module: module_name,
        attribute,
        python,
        python_path,
        workdir,
        env: raw.env.into_iter().collect(),
        max_requests,
        start_timeout,
        request_timeout,
        script_name,
        debug: raw.debug.is_some_and(|d| *d.get_ref()),
        warmup,
    }))
}

/// "pkg.mod:attr" → ("pkg.mod", "attr"); the attribute defaults to
/// `application`, and may be `factory()` (called once at start).
fn parse_wsgi_module(text: &str) -> Result<(String, String), String> {
    let (module, attribute) = text.split_once(':').unwrap_or((text, "application"));
    let identifier = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_alphanumeric() || c == '_')
    };
    if module.is_empty() || !module.split('.').all(identifier) {
        return Err(format!(
            "\"{text}\" is not a Python module path: expected e.g. \"myproject.wsgi:application\""
        ));
    }
    let bare = attribute.strip_suffix("()").unwrap_or(attribute);
    if !bare.split('.').all(identifier) {
        return Err(format!(
            "\"{attribute}\" is not an attribute name: expected e.g. \"myproject.wsgi:application\" or \"app:create_app()\""
        ));
    }
    Ok((module.to_string(), attribute.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::request::ScriptName;

    fn wsgi(extra: &str) -> Result<WsgiConfig, ConfigError> {
        let text = format!("[app]\nkind = \"wsgi\"\nmodule = \"myproject.wsgi\"\n{extra}");
        parse(Path::new("/tmp/mysite.fcgi"), &text).map(|c| match c.app {
            AppConfig::Wsgi(w) => w,
            other => panic!("not wsgi: {other:?}"),
        })
    }

    #[test]
    fn defaults() {
        let w = wsgi("").unwrap();
        assert_eq!(
            (w.module.as_str(), w.attribute.as_str()),
            ("myproject.wsgi", "application")
        );
        assert_eq!(w.python, "python3");
        assert_eq!(w.workdir, PathBuf::from("/tmp"));
        assert_eq!(w.max_requests, 0);
        assert_eq!(w.start_timeout, DEFAULT_WSGI_START_TIMEOUT);
        assert_eq!(w.request_timeout, DEFAULT_WSGI_REQUEST_TIMEOUT);
        assert_eq!(w.script_name, ScriptName::Auto);
        assert!(!w.debug);
        assert!(w.warmup.is_empty());
    }

    #[test]
    fn warmup_one_or_many() {
        assert_eq!(wsgi("warmup = \"/\"\n").unwrap().warmup, ["/"]);
        assert_eq!(
            wsgi("warmup = [\"/\", \"/health?full=1\"]\n")
                .unwrap()
                .warmup,
            ["/", "/health?full=1"]
        );
    }

    #[test]
    fn a_missing_interpreter_is_no_settings_error() {
        // Retried at start until it appears (issue 12 item 5); `check` says it.
        let w = wsgi("python = \"venv/bin/python\"\n").unwrap();
        assert_eq!(w.python, "/tmp/venv/bin/python");
    }

    #[test]
    fn all_keys() {
        let w = wsgi(
            "python = \"/bin/sh\"\npython_path = [\".\"]\nworkdir = \"/\"\nmax_requests = 500\n\
             start_timeout = \"2m\"\nrequest_timeout = 5\nscript_name = \"/blog/\"\ndebug = true\ndirect = false\n\
             env = { DJANGO_SETTINGS_MODULE = \"myproject.settings\" }\n",
        )
        .unwrap();
        assert_eq!(w.python, "/bin/sh");
        assert_eq!(w.python_path, vec![PathBuf::from("/tmp/.")]);
        assert_eq!(w.workdir, PathBuf::from("/"));
        assert_eq!(w.max_requests, 500);
        assert_eq!(w.start_timeout, Duration::from_secs(120));
        assert_eq!(w.request_timeout, Duration::from_secs(5));
        assert_eq!(w.script_name, ScriptName::Fixed("/blog".into()));
        assert!(w.debug);
        assert_eq!(
            w.env,
            vec![("DJANGO_SETTINGS_MODULE".into(), "myproject.settings".into())]
        );
        assert_eq!(
            wsgi("script_name = \"\"\n").unwrap().script_name,
            ScriptName::Fixed(String::new())
        );
    }

    #[test]
    fn module_forms() {
        assert_eq!(
            parse_wsgi_module("a.b:app").unwrap(),
            ("a.b".into(), "app".into())
        );
        assert_eq!(
            parse_wsgi_module("app:create_app()").unwrap(),
            ("app".into(), "create_app()".into())
        );
        assert!(parse_wsgi_module("my-project.wsgi").is_err());
        assert!(parse_wsgi_module("a:").is_err());
        assert!(parse_wsgi_module(":app").is_err());
    }

    #[test]
    fn errors_name_place_and_key() {
        let e = wsgi("module_x = 1\n").unwrap_err();
        assert_eq!(e.position, Some((4, 1)), "{e}");
        let e = parse(
            Path::new("/tmp/mysite.fcgi"),
            "[app]\nkind = \"wsgi\"\nmodule = \"my-project.wsgi\"\n",
        )
        .unwrap_err();
        assert_eq!(e.position, Some((3, 10)), "{e}");
        assert!(e.message.contains("key `module`"), "{e}");
        let e = wsgi("timeout = 3\n").unwrap_err();
        assert!(e.message.contains("request_timeout"), "{e}");
        let e = wsgi("script_name = \"blog\"\n").unwrap_err();
        assert_eq!(e.position, Some((4, 15)), "{e}");
        let e = wsgi("request_timeout = 0\n").unwrap_err();
        assert!(e.message.contains("key `request_timeout`"), "{e}");
        let e = wsgi("max_requests = -1\n").unwrap_err();
        assert!(e.message.contains("key `max_requests`"), "{e}");
        let e = wsgi("warmup = \"health\"\n").unwrap_err();
        assert!(e.message.contains("key `warmup`"), "{e}");
        let e = wsgi("warmup = [\"/\", \"/a b\"]\n").unwrap_err();
        assert!(e.message.contains("\"/a b\""), "{e}");
        let e = parse(Path::new("/tmp/x.toml"), "[app]\nkind = \"wsgi\"\n").unwrap_err();
        assert!(e.message.contains("needs `module`"), "{e}");
        let e = parse(
            Path::new("/tmp/x.toml"),
            "[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\nmodule = \"a\"\n",
        )
        .unwrap_err();
        assert_eq!(e.position, Some((4, 10)), "{e}");
        assert!(e.message.contains("kind = \"wsgi\""), "{e}");
        let e = parse(Path::new("/tmp/x.toml"), "[app]\nkind = \"wsgj\"\n").unwrap_err();
        assert!(e.message.contains("did you mean \"wsgi\"?"), "{e}");
    }
}

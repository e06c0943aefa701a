//! Settings: where they are found, what the user wrote, and what we validated.
//!
//! Owns: the two stages (raw serde structs with `deny_unknown_fields`, then a
//! validated [`Config`] with real types; `[app]` is read once for its
//! `kind`, then with that kind's keys: `config/cgi.rs`, `config/wsgi.rs`,
//! `config/server.rs` for http, fastcgi and scgi), and errors that name
//! `file:line:column`, the table and the key, with a suggestion for a typo.
//! Must not: start anything, or read anything but the settings file (a
//! permission error is explained by `deploy`, which reads /etc/passwd).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::log::LogTarget;

mod cgi;
mod server;
mod wsgi;
pub use server::{
    DEFAULT_SERVER_REQUEST_TIMEOUT, DEFAULT_SERVER_START_TIMEOUT, Listen, PORT_PLACEHOLDER,
    SOCKET_PLACEHOLDER, ServerConfig, ServerKind,
};
pub use wsgi::{DEFAULT_WSGI_REQUEST_TIMEOUT, DEFAULT_WSGI_START_TIMEOUT, WsgiConfig};
use wsgi::{reject_wsgi_keys, validate_wsgi};

/// Environment variable naming the settings file when neither argv[1] nor a
/// sibling `.toml` file gives one.
pub const CONFIG_ENV: &str = "FCGI_SHIM_CONFIG";

// ---------------------------------------------------------------------------
// Stage 1: what the user wrote.

/// The whole file; `A` is the `[app]` table of one kind (the file is read
/// once for `kind` with [`RawKind`], then again with that kind's keys).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings<A> {
    /// Extra files whose change restarts the site (reload).
    watch: Option<Spanned<Vec<String>>>,
    app: Option<Spanned<A>>,
    log: Option<RawLog>,
    limits: Option<RawLimits>,
    /// `fcgi-shim serve` settings (runfcgi's names); validated in the
    /// "Standalone server" block below.
    server: Option<BTreeMap<String, Spanned<toml::Value>>>,
}

/// Only the kind of `[app]`, whatever else it holds.
#[derive(Deserialize)]
struct RawKind {
    kind: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    kind: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    root: Option<Spanned<String>>,
    timeout: Option<Spanned<Seconds>>,
    workdir: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    // --- kind = "wsgi" (issue 3) ---
    module: Option<Spanned<String>>,
    python: Option<Spanned<String>>,
    python_path: Option<Spanned<Vec<String>>>,
    max_requests: Option<Spanned<i64>>,
    start_timeout: Option<Spanned<Seconds>>,
    request_timeout: Option<Spanned<Seconds>>,
    script_name: Option<Spanned<String>>,
    debug: Option<Spanned<bool>>,
    /// GET requests a new worker must answer (not 5xx) before it serves.
    warmup: Option<Spanned<OneOrMany>>,
    /// Accepted and ignored (direct mode is gone): a warning, not an error,
    /// so that settings written for an older version keep working.
    direct: Option<Spanned<bool>>,
    // --- end of kind = "wsgi" ---
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    target: Option<Spanned<String>>,
    level: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    facility: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_params_bytes: Option<Spanned<i64>>,
    max_params: Option<Spanned<i64>>,
    max_param_records: Option<Spanned<i64>>,
    max_management_records: Option<Spanned<i64>>,
    max_response_head_bytes: Option<Spanned<i64>>,
    request_read_timeout: Option<Spanned<Seconds>>,
}

/// A string or a list of strings (`warmup = "/"`, `warmup = ["/", "/health"]`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A duration written as seconds (`30`, `0.5`) or with a unit (`"500ms"`, `"30s"`, `"2m"`).
#[derive(Debug, Clone, Copy)]
struct Seconds(Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str =
            "a duration: seconds as a number, or a string like \"500ms\", \"30s\", \"2m\"";
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v)
                    .map(|s| Seconds(Duration::from_secs(s)))
                    .map_err(|_| E::custom(format!("negative duration {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(Duration::from_secs(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                Duration::try_from_secs_f64(v)
                    .map(Seconds)
                    .map_err(|_| E::custom(format!("invalid duration {v}: expected {EXPECTED}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                parse_duration(v).map(Seconds).ok_or_else(|| {
                    E::custom(format!("invalid duration \"{v}\": expected {EXPECTED}"))
                })
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(number * factor).ok()
}

// ---------------------------------------------------------------------------
// Stage 2: what we validated.

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The settings file.
    pub path: PathBuf,
    /// The site's name in log lines: the settings file's stem.
    pub site: String,
    /// Extra files whose change restarts the site (`watch = [...]`, relative
    /// to the settings file), e.g. Passenger's `tmp/restart.txt`.
    pub watch: Vec<PathBuf>,
    pub app: AppConfig,
    pub log: LogConfig,
    pub limits: Limits,
    /// The `[server]` table: how `fcgi-shim serve` listens and runs.
    pub server: ServerSettings,
}

/// The application, by kind.
#[derive(Debug, Clone)]
pub enum AppConfig {
    Cgi(CgiConfig),
    Wsgi(WsgiConfig),
    /// `http`, `fastcgi`, `scgi`: a server program the shim starts.
    Server(ServerConfig),
}

impl AppConfig {
    /// How long the application may take to start (None: it runs per request).
    pub fn start_timeout(&self) -> Option<Duration> {
        match self {
            AppConfig::Cgi(_) => None,
            AppConfig::Wsgi(w) => Some(w.start_timeout),
            AppConfig::Server(s) => Some(s.start_timeout),
        }
    }
}

/// Which program a `cgi` application runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgiProgram {
    /// Always this argv.
    Command(Vec<String>),
    /// The file named by SCRIPT_FILENAME, which must lie under this directory.
    Root(PathBuf),
}

#[derive(Debug, Clone)]
pub struct CgiConfig {
    pub program: CgiProgram,
    pub timeout: Duration,
    /// Working directory; `None` = the program's own directory (RFC 3875 §7.1).
    pub workdir: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub target: LogTarget,
    pub level: LevelFilter,
}

/// Hard caps on what a peer may send us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of one request's PARAMS stream.
    pub max_params_bytes: usize,
    /// Name-value pairs in one request.
    pub max_params: usize,
    /// PARAMS records in one request.
    pub max_param_records: usize,
    /// Management records (GET_VALUES, unknown types) on one connection.
    pub max_management_records: usize,
    /// Bytes of an application's response header block.
    pub max_response_head_bytes: usize,
    /// How long a new connection (or a kept one's next request, from its
    /// first byte) may take to send a whole request head.
    pub request_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_params_bytes: 131_072,
            max_params: 1000,
            max_param_records: 1024,
            max_management_records: 64,
            max_response_head_bytes: 65_536,
            request_read_timeout: DEFAULT_REQUEST_READ_TIMEOUT,
        }
    }
}

/// Default time a connection may take to send its request head: web
/// servers send it at once; a peer that connects and stays silent (or sends
/// half a head) holds a one-at-a-time worker for this long at most.
pub const DEFAULT_REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Default per-request timeout of a CGI program.
pub const DEFAULT_CGI_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Errors.

/// A settings error, pointing into the file where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column, when the error has a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Builds errors for one settings file: turns byte spans into line:column and
/// names the table and key a span sits in.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    /// The keys of `[app]` for its kind (once known), when its raw struct
    /// holds more (cgi and wsgi share [`RawApp`]): an unknown-key error
    /// lists only these.
    app_keys: Option<&'static [&'static str]>,
}

/// The `[app]` keys of kind = "cgi".
const CGI_KEYS: &[&str] = &["kind", "command", "root", "timeout", "workdir", "env"];
/// The `[app]` keys of kind = "wsgi".
const WSGI_KEYS: &[&str] = &[
    "kind",
    "module",
    "python",
    "python_path",
    "workdir",
    "env",
    "max_requests",
    "start_timeout",
    "request_timeout",
    "script_name",
    "debug",
    "warmup",
];

impl Source<'_> {
    fn error(&self, span: Option<Range<usize>>, message: String) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            position: span.map(|s| line_column(self.text, s.start)),
            message,
        }
    }

    /// An error about the value at `span`, prefixed with "[table] key: ".
    fn at(&self, span: Range<usize>, message: impl fmt::Display) -> ConfigError {
        let place = self.place(span.start);
        self.error(Some(span), format!("{place}{message}"))
    }

    /// "[app] key `timeout`: " for a position inside `timeout = ...` under `[app]`.
    fn place(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[line_start..]
            .find('\n')
            .map_or(self.text.len(), |i| line_start + i);
        let line = &self.text[line_start..line_end];
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"'))
            .filter(|k| !k.is_empty());
        let table = table_at(self.text, line_start);
        match (table, key) {
            (Some(t), Some(k)) => format!("in [{t}], key `{k}`: "),
            (None, Some(k)) => format!("key `{k}`: "),
            (Some(t), None) => format!("in [{t}]: "),
            (None, None) => String::new(),
        }
    }

    /// Turn a toml/serde error into ours, with a suggestion for unknown keys.
    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().trim_end().to_string();
        let span = err.span();
        if message.contains("recursion") {
            let span = span.or_else(|| deep_key(self.text).map(|at| at..at));
            let text = format!(
                "the settings nest too deeply: tables, arrays and dotted keys \
                 may go at most {MAX_SETTINGS_DEPTH} levels deep"
            );
            return self.error(span, text);
        }
        if let Some((unknown, mut expected)) = parse_unknown_field(&message) {
            let table = span.as_ref().and_then(|s| table_at(self.text, s.start));
            if let Some(keys) = self.app_keys.filter(|_| table.as_deref() == Some("app")) {
                expected.retain(|k| keys.contains(&k.as_str()));
            }
            let within = table.map(|t| format!(" in [{t}]")).unwrap_or_default();
            let mut text = format!("unknown key `{unknown}`{within}");
            if let Some(best) = nearest(&unknown, &expected) {
                text.push_str(&format!("; did you mean `{best}`?"));
            }
            if !expected.is_empty() {
                text.push_str(&format!(" (valid keys: {})", expected.join(", ")));
            }
            return self.error(span, text);
        }
        let written = span.as_ref().and_then(|s| self.text.get(s.clone()));
        let message = plain_type_error(&message, written).unwrap_or(message);
        match span {
            Some(s) => self.at(s, message),
            None => self.error(None, message),
        }
    }
}

/// serde's "invalid type: string \"ten\", expected i64" in plain words:
/// "expected a whole number, found the text \"ten\"". `written` is the value
/// as it stands in the file.
fn plain_type_error(message: &str, written: Option<&str>) -> Option<String> {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (found, expected) = split_found_expected(rest)?;
    let text = found
        .strip_prefix("string \"")
        .and_then(|t| t.strip_suffix('"'));
    let number = |s: &str| {
        let s = s.strip_prefix('`')?;
        let end = s.find('`')?;
        Some(s[..end].to_string())
    };
    let found_words = if let Some(t) = text {
        format!("the text \"{t}\"")
    } else if let Some(n) = found
        .strip_prefix("integer ")
        .or_else(|| found.strip_prefix("floating point "))
        .and_then(number)
    {
        format!("the number {n}")
    } else if let Some(b) = found.strip_prefix("boolean ").and_then(number) {
        format!("the value {b}")
    } else {
        match found {
            "sequence" => "a list".to_string(),
            "map" if written.is_some_and(|w| w.starts_with(|c: char| c.is_ascii_digit())) => {
                "a date or time".to_string()
            }
            "map" => "a table".to_string(),
            other => other.to_string(),
        }
    };
    let (expected_words, kind) = match expected {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => ("a whole number", Kind::Number),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
            ("a whole number, 0 or more", Kind::Number)
        }
        "f32" | "f64" => ("a number", Kind::Number),
        "a boolean" => ("true or false", Kind::Boolean),
        "a string" => ("text in quotes, like \"example\"", Kind::Other),
        "a sequence" => ("a list like [\"a\", \"b\"]", Kind::Other),
        "a map" => ("a table like { NAME = \"value\" }", Kind::Other),
        e if e.starts_with("struct ") => ("a table", Kind::Other),
        e => (e, Kind::Other),
    };
    // "10" for a number, "true" for true or false: the quotes are the mistake.
    let hint = match (text, kind) {
        (Some(t), Kind::Number) if t.trim().parse::<f64>().is_ok() => {
            format!(" (write it without quotes: {})", t.trim())
        }
        (Some(t @ ("true" | "false")), Kind::Boolean) => {
            format!(" (write it without quotes: {t})")
        }
        _ => String::new(),
    };
    Some(format!(
        "expected {expected_words}, found {found_words}{hint}"
    ))
}

#[derive(Clone, Copy)]
enum Kind {
    Number,
    Boolean,
    Other,
}

/// "string \"a, b\", expected i64" → ("string \"a, b\"", "i64"), minding a
/// string that itself says ", expected ".
fn split_found_expected(rest: &str) -> Option<(&str, &str)> {
    let after_text = match rest.strip_prefix("string \"") {
        Some(t) => {
            let mut escaped = false;
            let end = t.char_indices().find_map(|(i, c)| {
                let close = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                close.then_some(i)
            })?;
            "string \"".len() + end + 1
        }
        None => 0,
    };
    let at = rest[after_text..].find(", expected ")? + after_text;
    Some((&rest[..at], &rest[at + ", expected ".len()..]))
}

/// Where a key with [`MAX_SETTINGS_DEPTH`] or more dotted parts starts (toml
/// reports that one without a place): a line's key before `=`, or a `[table]`
/// header, with the dots counted outside quotes. Only run on that error.
fn deep_key(text: &str) -> Option<usize> {
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        let key = match trimmed.strip_prefix('[') {
            Some(header) => header.split(']').next().unwrap_or(header),
            None => trimmed.split('=').next().unwrap_or(trimmed),
        };
        let mut quote = None;
        let mut dots = 0;
        for c in key.chars() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '.') => dots += 1,
                _ => {}
            }
        }
        if dots + 1 >= MAX_SETTINGS_DEPTH {
            return Some(start + indent);
        }
        start += line.len();
    }
    None
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The name of the `[table]` header governing the line that starts at `line_start`.
fn table_at(text: &str, line_start: usize) -> Option<String> {
    text[..line_start].lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim_matches('[').trim().to_string())
    })
}

/// From serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`"):
/// the unknown name and the valid ones.
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((unknown.to_string(), expected))
}

/// The closest valid name, if it is close enough to be a typo.
fn nearest(word: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Loading.

/// The largest settings file read: a real one is a few hundred bytes, and a
/// huge one (a 30 MB array made `check` take seconds and a gigabyte, and every
/// shim runs `check` on reload) is refused before it is parsed.
pub const MAX_SETTINGS_BYTES: usize = 1024 * 1024;

/// How deep tables, arrays and dotted keys may nest: the toml crate's own
/// limit (its `LIMIT`), which ends the parse before the stack does.
const MAX_SETTINGS_DEPTH: usize = 80;

/// Read and validate the settings file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_text(path).map(|(config, _)| config)
}

/// [`load`], also giving the text that was validated (what `last_good` keeps).
pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
    let failed = |message: String| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message,
    };
    let bytes = read_capped(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                crate::deploy::access_problem(path, crate::deploy::Need::Read, "the settings file")
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        failed(format!("cannot read settings: {e}{why}"))
    })?;
    if bytes.len() > MAX_SETTINGS_BYTES {
        return Err(failed(too_big()));
    }
    let text = decode_utf8(path, &bytes)?;
    Ok((parse(path, text)?, text.to_string()))
}

/// At most one byte more than [`MAX_SETTINGS_BYTES`]: enough to tell that a
/// file is too big without reading all of it.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SETTINGS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn too_big() -> String {
    format!(
        "the settings file is larger than {} KiB; settings are a few lines of text \
         (is this the right file?)",
        MAX_SETTINGS_BYTES / 1024
    )
}

/// The text of the settings, or an error at the line:column of the first byte
/// that is not UTF-8.
fn decode_utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, ConfigError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = e.valid_up_to();
        // Invariant: from_utf8 says the bytes before `good` are valid.
        let before = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        ConfigError {
            path: path.to_path_buf(),
            position: Some(line_column(before, good)),
            message: format!(
                "the settings file is not UTF-8 text: byte 0x{:02x} here cannot be decoded \
                 (save the file as UTF-8)",
                bytes[good]
            ),
        }
    })
}

/// Validate settings text that came from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    // Relative settings paths are taken from `base`, the settings file's
    // directory. A bare `mysite.fcgi` (how suEXEC starts the shebang form) has
    // the parent "", which would make every such path, and the default
    // `workdir`, depend on whoever uses it later: spawning with
    // current_dir("") fails with ENOENT, reported as "cannot start python".
    // `cli::main` already makes its settings argument absolute; this is the
    // one place that turns a settings path into a base, so it makes sure
    // here, for every caller, instead of asserting (a panic must not be
    // reachable from a path someone typed). Absolute, not canonical: a
    // symlinked web root keeps the name the user gave it.
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut src = Source {
        path,
        text,
        app_keys: None,
    };
    if text.len() > MAX_SETTINGS_BYTES {
        return Err(src.error(None, too_big()));
    }
    let probe: RawSettings<RawKind> = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        // Only when the working directory is unknown (absolute() failed).
        _ => PathBuf::from("."),
    };
    let site = site_of(path);

    let Some(kind) = probe.app.map(|a| a.into_inner().kind) else {
        return Err(src.error(
            None,
            "missing [app] table: say which application to run, e.g. [app] kind = \"cgi\"".into(),
        ));
    };
    src.app_keys = match kind.get_ref().as_str() {
        "cgi" => Some(CGI_KEYS),
        "wsgi" => Some(WSGI_KEYS),
        _ => None,
    };
    // The file again, with the keys of that kind only.
    fn reparse<A: serde::de::DeserializeOwned>(
        src: &Source<'_>,
    ) -> Result<(A, RawSettings<RawKind>), ConfigError> {
        let raw: RawSettings<A> = toml::from_str(src.text).map_err(|e| src.toml_error(&e))?;
        let app = raw.app.map(Spanned::into_inner);
        let rest = RawSettings {
            watch: raw.watch,
            app: None,
            log: raw.log,
            limits: raw.limits,
            server: raw.server,
        };
        // Invariant: the probe parse found [app].
        app.map(|a| (a, rest))
            .ok_or_else(|| src.error(None, "missing [app] table".into()))
    }
    let (app, raw) = match kind.get_ref().as_str() {
        "http" => {
            let (app, rest) = reparse(&src)?;
            (
                AppConfig::Server(server::validate_http(&src, &base, app)?),
                rest,
            )
        }
        "fastcgi" => {
            let (app, rest) = reparse(&src)?;
            (
                AppConfig::Server(server::validate_fastcgi(&src, &base, app)?),
                rest,
            )
        }
        "scgi" => {
            let (app, rest) = reparse(&src)?;
            (
                AppConfig::Server(server::validate_scgi(&src, &base, app)?),
                rest,
            )
        }
        _ => {
            let (app, rest) = reparse::<RawApp>(&src)?;
            (validate_app(&src, &base, app)?, rest)
        }
    };
    let log = validate_log(&src, &base, raw.log)?;
    let limits = validate_limits(&src, raw.limits)?;
    let watch = validate_watch(&src, &base, raw.watch)?;
    let server = validate_server(&src, &base, raw.server)?;
    Ok(Config {
        path: path.to_path_buf(),
        site,
        watch,
        app,
        log,
        limits,
        server,
    })
}

/// `watch = ["tmp/restart.txt"]`: the files need not exist yet (creating one counts as a change).
fn validate_watch(
    src: &Source<'_>,
    base: &Path,
    raw: Option<Spanned<Vec<String>>>,
) -> Result<Vec<PathBuf>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let span = raw.span();
    raw.into_inner()
        .iter()
        .map(|p| {
            if p.trim().is_empty() {
                Err(src.at(span.clone(), "an empty path cannot be watched"))
            } else {
                Ok(resolve(base, p))
            }
        })
        .collect()
}

const APP_KINDS: &[&str] = &["cgi", "wsgi", "http", "fastcgi", "scgi"];

fn validate_app(src: &Source<'_>, base: &Path, raw: RawApp) -> Result<AppConfig, ConfigError> {
    match raw.kind.get_ref().as_str() {
        "cgi" => reject_wsgi_keys(src, &raw)?,
        "wsgi" => return validate_wsgi(src, base, raw),
        other => {
            let hint = nearest(
                other,
                &APP_KINDS.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .map(|k| format!("; did you mean \"{k}\"?"))
            .unwrap_or_default();
            return Err(src.at(
                raw.kind.span(),
                format!(
                    "unknown application kind \"{other}\"{hint} (kinds: {})",
                    APP_KINDS.join(", ")
                ),
            ));
        }
    }
    cgi::validate_cgi(src, base, raw)
}

/// `dir` is a directory; when it cannot even be looked at, say why.
fn check_directory(dir: &Path, role: &str) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(cannot_reach(dir, crate::deploy::Need::ReadDir, role, &e))
        }
        _ => Err(format!("{} is not a directory", dir.display())),
    }
}

/// A permission error explained: which directory on the way, its mode and owner.
fn cannot_reach(path: &Path, need: crate::deploy::Need, role: &str, e: &std::io::Error) -> String {
    match crate::deploy::access_problem(path, need, role) {
        Some(problem) => problem.to_string(),
        None => format!("{}: {e}", path.display()),
    }
}

fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(cannot_reach(
            path,
            crate::deploy::Need::Run,
            "the program",
            &e,
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(m) if !m.is_file() => Err(format!("{} is not a regular file", path.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(format!(
            "{} is not executable (chmod +x it)",
            path.display()
        )),
        Ok(_) => Ok(()),
    }
}

fn validate_log(
    src: &Source<'_>,
    base: &Path,
    raw: Option<RawLog>,
) -> Result<LogConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(LogConfig {
            target: LogTarget::Stderr,
            level: LevelFilter::Info,
        });
    };
    let level = match &raw.level {
        None => LevelFilter::Info,
        Some(l) => {
            match l.get_ref().to_ascii_lowercase().as_str() {
                "off" => LevelFilter::Off,
                "error" => LevelFilter::Error,
                "warn" | "warning" => LevelFilter::Warn,
                "info" => LevelFilter::Info,
                "debug" => LevelFilter::Debug,
                "trace" => LevelFilter::Trace,
                other => {
                    return Err(src.at(
                    l.span(),
                    format!("unknown level \"{other}\" (levels: off, error, warn, info, debug, trace)"),
                ));
                }
            }
        }
    };
    let target_name = raw
        .target
        .as_ref()
        .map(|t| t.get_ref().as_str())
        .unwrap_or("stderr");
    let target = match target_name {
        "stderr" => LogTarget::Stderr,
        "file" => match &raw.file {
            Some(f) => LogTarget::File(resolve(base, f.get_ref())),
            None => {
                return Err(src.error(
                    None,
                    "[log] target = \"file\" needs `file = \"/path/to/log\"`".into(),
                ));
            }
        },
        "syslog" => {
            let facility = match &raw.facility {
                None => syslog::Facility::LOG_USER,
                Some(f) => crate::log::parse_facility(f.get_ref()).ok_or_else(|| {
                    src.at(
                        f.span(),
                        format!(
                            "unknown syslog facility \"{}\" (e.g. user, daemon, local0..local7)",
                            f.get_ref()
                        ),
                    )
                })?,
            };
            LogTarget::Syslog { facility }
        }
        other => {
            let span = raw.target.as_ref().map(|t| t.span()).unwrap_or(0..0);
            return Err(src.at(
                span,
                format!("unknown target \"{other}\" (targets: stderr, syslog, file)"),
            ));
        }
    };
    if let (Some(f), false) = (&raw.file, matches!(target, LogTarget::File(_))) {
        return Err(src.at(f.span(), "`file` is used only with target = \"file\""));
    }
    if let (Some(f), false) = (&raw.facility, matches!(target, LogTarget::Syslog { .. })) {
        return Err(src.at(f.span(), "`facility` is used only with target = \"syslog\""));
    }
    Ok(LogConfig { target, level })
}

fn validate_limits(src: &Source<'_>, raw: Option<RawLimits>) -> Result<Limits, ConfigError> {
    let mut limits = Limits::default();
    let Some(raw) = raw else { return Ok(limits) };
    let fields = [
        (raw.max_params_bytes, &mut limits.max_params_bytes),
        (raw.max_params, &mut limits.max_params),
        (raw.max_param_records, &mut limits.max_param_records),
        (
            raw.max_management_records,
            &mut limits.max_management_records,
        ),
        (
            raw.max_response_head_bytes,
            &mut limits.max_response_head_bytes,
        ),
    ];
    for (value, slot) in fields {
        if let Some(v) = value {
            *slot = usize::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| src.at(v.span(), "must be a whole number above 0"))?;
        }
    }
    if let Some(t) = raw.request_read_timeout {
        if t.get_ref().0.is_zero() {
            return Err(src.at(t.span(), "must be more than 0"));
        }
        limits.request_read_timeout = t.get_ref().0;
    }
    Ok(limits)
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

// ---------------------------------------------------------------------------
// Keys several kinds share.

/// `command = ["/path/program", "args"...]` (cgi, server kinds): the program
/// resolved against `base` when it has a `/`, and then executable.
fn validate_command(
    src: &Source<'_>,
    base: &Path,
    command: Spanned<Vec<String>>,
    what: &str,
) -> Result<Vec<String>, ConfigError> {
    let span = command.span();
    let mut argv = command.into_inner();
    let Some(first) = argv.first_mut() else {
        return Err(src.at(
            span,
            format!("must name a program: command = [\"/path/to/{what}\", \"args\"...]"),
        ));
    };
    if first.contains('/') {
        *first = resolve(base, first).to_string_lossy().into_owned();
        check_executable(Path::new(first)).map_err(|e| src.at(span.clone(), e))?;
    }
    Ok(argv)
}

/// `workdir`: a directory (default: the settings file's) (wsgi, server kinds).
fn validate_workdir(
    src: &Source<'_>,
    base: &Path,
    raw: Option<Spanned<String>>,
) -> Result<PathBuf, ConfigError> {
    match raw {
        Some(w) => {
            let dir = resolve(base, w.get_ref());
            check_directory(&dir, "the workdir").map_err(|e| src.at(w.span(), e))?;
            Ok(dir)
        }
        None => Ok(base.to_path_buf()),
    }
}

/// `max_requests`: 0 or more, 0 (the default) = never recycle.
fn validate_max_requests(src: &Source<'_>, raw: Option<Spanned<i64>>) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(0),
        Some(m) => u64::try_from(*m.get_ref())
            .map_err(|_| src.at(m.span(), "must be a whole number, 0 or more (0 = never)")),
    }
}

/// A timeout that must be more than 0.
fn positive_duration(
    src: &Source<'_>,
    raw: Option<Spanned<Seconds>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match raw {
        Some(t) if t.get_ref().0.is_zero() => Err(src.at(t.span(), "must be more than 0")),
        Some(t) => Ok(t.get_ref().0),
        None => Ok(default),
    }
}

/// `script_name = "auto" | "/prefix" | ""` (wsgi, http).
fn parse_script_name(
    src: &Source<'_>,
    raw: Option<Spanned<String>>,
) -> Result<crate::request::ScriptName, ConfigError> {
    Ok(match raw {
        None => crate::request::ScriptName::Auto,
        Some(s) if s.get_ref() == "auto" => crate::request::ScriptName::Auto,
        Some(s) if s.get_ref().is_empty() || s.get_ref().starts_with('/') => {
            crate::request::ScriptName::Fixed(s.get_ref().trim_end_matches('/').to_string())
        }
        Some(s) => {
            return Err(src.at(
                s.span(),
                format!(
                    "\"{}\" is neither \"auto\" nor a path prefix starting with / (or \"\" for a site at the root)",
                    s.get_ref()
                ),
            ));
        }
    })
}

/// A request the shim makes itself (`warmup`, `ready_path`): a path from
/// the site's root, optionally with a query; no spaces or control characters.
fn check_request_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "\"{path}\" is not a path: it must start with /, e.g. \"/\""
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "\"{path}\" has a space or a control character (percent-encode it)"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Finding the settings file.

/// How the settings file was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// argv[1] names a file (the shebang form, or `fcgi-shim settings.toml`).
    Argument(PathBuf),
    /// `mysite.toml` beside the executable `mysite.fcgi`.
    Sibling(PathBuf),
    /// The FCGI_SHIM_CONFIG environment variable.
    Environment(PathBuf),
}

impl Found {
    pub fn path(&self) -> &Path {
        match self {
            Found::Argument(p) | Found::Sibling(p) | Found::Environment(p) => p,
        }
    }
}

/// Where we looked, for the error when nothing was found.
pub fn search_description(exe: &Path) -> String {
    format!("argv[1], {}, ${CONFIG_ENV}", sibling_of(exe).display())
}

/// Find the settings: argv[1] if it is a file, else the sibling of `exe`
/// (the path we were started as), else $FCGI_SHIM_CONFIG.
pub fn find(arg: Option<&Path>, exe: &Path, env: Option<PathBuf>) -> Option<Found> {
    if let Some(arg) = arg.filter(|a| a.is_file()) {
        return Some(Found::Argument(arg.to_path_buf()));
    }
    let sibling = sibling_of(exe);
    if sibling.is_file() {
        return Some(Found::Sibling(sibling));
    }
    env.filter(|p| !p.as_os_str().is_empty())
        .map(Found::Environment)
}

/// The site's name in log lines: the settings file's stem.
pub fn site_of(settings: &Path) -> String {
    settings
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "site".into())
}

/// `mysite.toml` for the executable `mysite.fcgi`.
pub fn sibling_of(exe: &Path) -> PathBuf {
    exe.with_extension("toml")
}

// ---------------------------------------------------------------------------
// Standalone server (`fcgi-shim serve`): Django's runfcgi options.
//
// The same names are accepted as `key=value` words on the command line and
// as keys of a `[server]` table in the settings file; the command line wins.
// Everything here is additive to the settings above: `Config::server` is the
// only link.

/// Which protocol the standalone server speaks to the web server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontProtocol {
    FastCgi,
    Scgi,
    /// AJP13 (Apache mod_proxy_ajp); `ajp_secret` is its shared secret.
    Ajp,
}

/// How the standalone server runs requests concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeMethod {
    /// A manager process and worker processes (runfcgi's `prefork`, `fork`).
    Prefork,
    /// A pool of threads in one process.
    Threaded,
    /// One request at a time.
    Single,
}

/// Validated `[server]` settings (defaults are runfcgi's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub protocol: FrontProtocol,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub socket: Option<PathBuf>,
    pub method: ServeMethod,
    /// `None`: runfcgi's default, daemonize when we bind a socket or port ourselves.
    pub daemonize: Option<bool>,
    /// Directory to change to when daemonizing.
    pub workdir: PathBuf,
    pub pidfile: Option<PathBuf>,
    pub maxspare: usize,
    pub minspare: usize,
    pub maxchildren: usize,
    /// Connections a worker serves before it is replaced (one request each
    /// unless the web server keeps connections open); 0 = never.
    pub maxrequests: usize,
    pub debug: bool,
    pub outlog: Option<PathBuf>,
    pub errlog: Option<PathBuf>,
    /// Process umask, when set (octal). Unset: the unix socket is still created
    /// owner- and group-only.
    pub umask: Option<u32>,
    /// Peers allowed on a TCP listener (empty: any; FCGI_WEB_SERVER_ADDRS adds to it).
    pub allowed_addrs: Vec<std::net::IpAddr>,
    /// protocol=ajp: the `secret` every forward request must carry
    /// (mod_proxy_ajp's `secret=`); `None`: not required.
    pub ajp_secret: Option<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            protocol: FrontProtocol::FastCgi,
            host: None,
            port: None,
            socket: None,
            method: ServeMethod::Prefork,
            daemonize: None,
            workdir: PathBuf::from("/"),
            pidfile: None,
            maxspare: 5,
            minspare: 2,
            maxchildren: 50,
            maxrequests: 0,
            debug: false,
            outlog: None,
            errlog: None,
            umask: None,
            allowed_addrs: Vec::new(),
            ajp_secret: None,
        }
    }
}

/// Every `serve` option: name, default, meaning (for `fcgi-shim serve help`).
pub const SERVER_KEYS: &[(&str, &str, &str)] = &[
    (
        "protocol",
        "fcgi",
        "fcgi, scgi or ajp (AJP13, Apache mod_proxy_ajp)",
    ),
    (
        "host",
        "127.0.0.1 when port is given",
        "address to listen on",
    ),
    ("port", "-", "TCP port to listen on"),
    (
        "socket",
        "-",
        "unix socket to listen on (instead of host/port)",
    ),
    ("method", "prefork", "prefork (or fork), threaded, single"),
    (
        "daemonize",
        "true when socket or port is given",
        "detach from the terminal",
    ),
    ("workdir", "/", "directory to change to when daemonizing"),
    ("pidfile", "-", "write the process id to this file"),
    ("maxspare", "5", "most idle workers"),
    ("minspare", "2", "fewest idle workers"),
    ("maxchildren", "50", "most workers in all"),
    (
        "maxrequests",
        "0",
        "connections a worker serves before it is replaced (0 = no limit)",
    ),
    ("debug", "false", "log at debug level"),
    ("outlog", "/dev/null", "stdout when daemonized"),
    (
        "errlog",
        "/dev/null",
        "stderr (and the log) when daemonized",
    ),
    (
        "umask",
        "022 when daemonized; socket 0660",
        "umask, in octal",
    ),
    (
        "allowed_addrs",
        "any",
        "comma-separated peer addresses allowed on TCP",
    ),
    (
        "ajp_secret",
        "-",
        "protocol=ajp: the secret every request must carry (mod_proxy_ajp secret=)",
    ),
];

/// Why a `serve` option was refused (the caller adds where it was written).
fn server_option_error(key: &str, value: &toml::Value, expected: &str) -> String {
    format!("`{key}`: {value} is not {expected}")
}

fn value_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn value_bool(key: &str, value: &toml::Value) -> Result<bool, String> {
    if let toml::Value::Boolean(b) = value {
        return Ok(*b);
    }
    match value_text(value).map(|t| t.to_ascii_lowercase()).as_deref() {
        Some("true" | "yes" | "on" | "1") => Ok(true),
        Some("false" | "no" | "off" | "0") => Ok(false),
        _ => Err(server_option_error(key, value, "true or false")),
    }
}

fn value_count(key: &str, value: &toml::Value) -> Result<usize, String> {
    value_text(value)
        .and_then(|t| t.trim().parse::<usize>().ok())
        .ok_or_else(|| server_option_error(key, value, "a whole number"))
}

fn value_path(key: &str, value: &toml::Value, base: &Path) -> Result<PathBuf, String> {
    match value {
        toml::Value::String(s) if !s.is_empty() => Ok(resolve(base, s)),
        _ => Err(server_option_error(key, value, "a path")),
    }
}

impl ServerSettings {
    /// Apply one option. Relative paths are taken from `base` (the settings
    /// file's directory, or the current directory for the command line).
    pub fn set(&mut self, key: &str, value: &toml::Value, base: &Path) -> Result<(), String> {
        match key {
            "protocol" => {
                self.protocol = match value_text(value).as_deref() {
                    Some("fcgi" | "fastcgi") => FrontProtocol::FastCgi,
                    Some("scgi") => FrontProtocol::Scgi,
                    Some("ajp") => FrontProtocol::Ajp,
                    _ => return Err(server_option_error(key, value, "fcgi, scgi or ajp")),
                }
            }
            "host" => {
                self.host = Some(
                    value_text(value)
                        .filter(|h| !h.is_empty())
                        .ok_or_else(|| server_option_error(key, value, "a host name or address"))?,
                )
            }
            "port" => {
                self.port = Some(
                    value_text(value)
                        .and_then(|t| t.trim().parse::<u16>().ok())
                        .filter(|p| *p > 0)
                        .ok_or_else(|| server_option_error(key, value, "a port number"))?,
                )
            }
            "socket" => self.socket = Some(value_path(key, value, base)?),
            "method" => {
                self.method = match value_text(value).as_deref() {
                    Some("prefork" | "fork") => ServeMethod::Prefork,
                    Some("threaded") => ServeMethod::Threaded,
                    Some("single") => ServeMethod::Single,
                    _ => {
                        return Err(server_option_error(
                            key,
                            value,
                            "prefork, fork, threaded or single",
                        ));
                    }
                }
            }
            "daemonize" => self.daemonize = Some(value_bool(key, value)?),
            "workdir" => self.workdir = value_path(key, value, base)?,
            "pidfile" => self.pidfile = Some(value_path(key, value, base)?),
            "maxspare" => self.maxspare = value_count(key, value)?,
            "minspare" => self.minspare = value_count(key, value)?,
            "maxchildren" => self.maxchildren = value_count(key, value)?,
            "maxrequests" => self.maxrequests = value_count(key, value)?,
            "debug" => self.debug = value_bool(key, value)?,
            "outlog" => self.outlog = Some(value_path(key, value, base)?),
            "errlog" => self.errlog = Some(value_path(key, value, base)?),
            "umask" => {
                let mask = match value {
                    // In TOML write 0o022 (a number) or "022" (octal text).
                    toml::Value::Integer(i) => u32::try_from(*i).ok(),
                    _ => value_text(value).and_then(|t| u32::from_str_radix(t.trim(), 8).ok()),
                };
                self.umask =
                    Some(mask.filter(|m| *m <= 0o777).ok_or_else(|| {
                        server_option_error(key, value, "an octal umask like 022")
                    })?);
            }
            "allowed_addrs" => {
                let items: Vec<String> = match value {
                    toml::Value::Array(a) => a.iter().filter_map(value_text).collect(),
                    other => value_text(other)
                        .map(|t| t.split(',').map(str::to_string).collect())
                        .unwrap_or_default(),
                };
                self.allowed_addrs = parse_addrs(items.iter().map(String::as_str))
                    .map_err(|bad| format!("`allowed_addrs`: {bad:?} is not an IP address"))?;
            }
            "ajp_secret" => {
                self.ajp_secret = Some(
                    value_text(value)
                        .filter(|t| !t.is_empty() && t.len() < 0xFFFF)
                        .ok_or_else(|| server_option_error(key, value, "a non-empty secret"))?,
                )
            }
            other => {
                let names: Vec<String> = SERVER_KEYS.iter().map(|k| k.0.to_string()).collect();
                let hint = nearest(other, &names)
                    .map(|n| format!("; did you mean `{n}`?"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown server option `{other}`{hint} (options: {}; `fcgi-shim serve help` explains them)",
                    names.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Apply a command-line word `key=value`.
    pub fn set_word(&mut self, word: &str, cwd: &Path) -> Result<(), String> {
        let Some((key, value)) = word.split_once('=') else {
            let names: Vec<String> = SERVER_KEYS.iter().map(|k| k.0.to_string()).collect();
            let hint = nearest(word, &names)
                .map(|n| format!("; did you mean `{n}=...`?"))
                .unwrap_or_default();
            return Err(format!(
                "`{word}`: expected key=value{hint} (`fcgi-shim serve help` lists the options)"
            ));
        };
        self.set(key.trim(), &toml::Value::String(value.to_string()), cwd)
            .map_err(|e| format!("command line word `{word}`: {e}"))
    }

    /// Checks between options, once all are applied.
    pub fn check(&self) -> Result<(), String> {
        if self.socket.is_some() && (self.host.is_some() || self.port.is_some()) {
            return Err("give either `socket` or `host`/`port`, not both".into());
        }
        if self.host.is_some() && self.port.is_none() {
            return Err("`host` needs a `port`".into());
        }
        if self.maxchildren == 0 {
            return Err("`maxchildren` must be at least 1".into());
        }
        if self.minspare > self.maxspare {
            return Err(format!(
                "`minspare` ({}) is more than `maxspare` ({})",
                self.minspare, self.maxspare
            ));
        }
        Ok(())
    }

    /// Do we bind a listener ourselves (rather than use an inherited one)?
    pub fn binds(&self) -> bool {
        self.socket.is_some() || self.port.is_some()
    }

    /// runfcgi's rule: daemonize by default when binding our own socket.
    pub fn daemonizes(&self) -> bool {
        self.daemonize.unwrap_or_else(|| self.binds())
    }
}

/// Parse IP addresses; the first one that is not an address is the error.
pub fn parse_addrs<'a>(
    items: impl Iterator<Item = &'a str>,
) -> Result<Vec<std::net::IpAddr>, String> {
    items
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| s.to_string()))
        .collect()
}

fn validate_server(
    src: &Source<'_>,
    base: &Path,
    raw: Option<BTreeMap<String, Spanned<toml::Value>>>,
) -> Result<ServerSettings, ConfigError> {
    let mut settings = ServerSettings::default();
    for (key, value) in raw.unwrap_or_default() {
        settings
            .set(&key, value.get_ref(), base)
            .map_err(|e| src.at(value.span(), e))?;
    }
    settings
        .check()
        .map_err(|e| src.error(None, format!("[server]: {e}")))?;
    Ok(settings)
}

#[cfg(test)]
mod server_tests {
    use super::*;

    const APP: &str = "[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\n";

    #[test]
    fn runfcgi_words() {
        let mut s = ServerSettings::default();
        let cwd = Path::new("/home/user");
        for w in [
            "method=prefork",
            "socket=mysite.sock",
            "pidfile=django.pid",
            "maxrequests=1",
            "daemonize=false",
            "umask=002",
        ] {
            s.set_word(w, cwd).unwrap();
        }
        assert_eq!(s.method, ServeMethod::Prefork);
        assert_eq!(s.socket, Some(PathBuf::from("/home/user/mysite.sock")));
        assert_eq!(s.pidfile, Some(PathBuf::from("/home/user/django.pid")));
        assert_eq!(
            (s.maxrequests, s.daemonize, s.umask),
            (1, Some(false), Some(0o002))
        );
        s.set_word("method=fork", cwd).unwrap();
        assert_eq!(s.method, ServeMethod::Prefork);
        s.set_word("protocol=scgi", cwd).unwrap();
        assert_eq!(s.protocol, FrontProtocol::Scgi);
        s.check().unwrap();
    }

    /// Every runfcgi command line of Django's FastCGI guide, as written.
    #[test]
    fn django_guide_command_lines() {
        let lines = [
            "method=threaded host=127.0.0.1 port=3033",
            "method=prefork socket=/home/user/mysite.sock pidfile=django.pid",
            "daemonize=false socket=/tmp/mysite.sock maxrequests=1",
            "protocol=scgi method=prefork host=127.0.0.1 port=3033",
            "socket=/home/user/mysite.sock pidfile=/home/user/mysite.pid",
            "method=prefork maxchildren=10 maxspare=5 minspare=2 maxrequests=100 host=127.0.0.1 port=3033",
            "method=fork socket=/tmp/s.sock outlog=/tmp/out.log errlog=/tmp/err.log umask=022 workdir=/tmp debug=true",
        ];
        for line in lines {
            let mut s = ServerSettings::default();
            for word in line.split_whitespace() {
                s.set_word(word, Path::new("/home/user"))
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
            }
            s.check().unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(s.binds(), "{line}");
        }
    }

    #[test]
    fn wrong_words_are_named() {
        let mut s = ServerSettings::default();
        let cwd = Path::new("/");
        let e = s.set_word("maxchilden=3", cwd).unwrap_err();
        assert!(
            e.contains("`maxchilden`") && e.contains("did you mean `maxchildren`"),
            "{e}"
        );
        let e = s.set_word("method=forked", cwd).unwrap_err();
        assert!(e.contains("method=forked"), "{e}");
        let e = s.set_word("protocol=ajp13", cwd).unwrap_err();
        assert!(e.contains("fcgi, scgi or ajp"), "{e}");
        s.set_word("protocol=ajp", cwd).unwrap();
        assert_eq!(s.protocol, FrontProtocol::Ajp);
        s.set_word("ajp_secret=s3cret", cwd).unwrap();
        assert_eq!(s.ajp_secret.as_deref(), Some("s3cret"));
        let e = s.set_word("ajp_secret=", cwd).unwrap_err();
        assert!(e.contains("a non-empty secret"), "{e}");
        let e = s.set_word("daemonize", cwd).unwrap_err();
        assert!(e.contains("expected key=value"), "{e}");
        let e = s.set_word("port=http", cwd).unwrap_err();
        assert!(e.contains("not a port number"), "{e}");
    }

    #[test]
    fn server_table_in_file() {
        let text = format!(
            "{APP}[server]\nmethod = \"threaded\"\nhost = \"127.0.0.1\"\nport = 3033\nmaxchildren = 4\numask = 0o027\nallowed_addrs = [\"127.0.0.1\", \"::1\"]\n"
        );
        let c = parse(Path::new("/site/mysite.toml"), &text).unwrap();
        assert_eq!(c.server.method, ServeMethod::Threaded);
        assert_eq!(c.server.port, Some(3033));
        assert_eq!(c.server.umask, Some(0o027));
        assert_eq!(c.server.allowed_addrs.len(), 2);
        assert!(c.server.daemonizes());
    }

    #[test]
    fn server_table_errors_point_into_the_file() {
        let e = parse(
            Path::new("/site/mysite.toml"),
            &format!("{APP}[server]\nmethdo = \"single\"\n"),
        )
        .unwrap_err();
        assert_eq!(e.position, Some((5, 10)), "{e}");
        assert!(e.message.contains("did you mean `method`"), "{e}");
        let e = parse(
            Path::new("/site/mysite.toml"),
            &format!("{APP}[server]\nsocket = \"/x.sock\"\nport = 3\n"),
        )
        .unwrap_err();
        assert!(e.message.contains("not both"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(Path::new("/site/mysite.toml"), text).expect_err("should fail")
    }

    #[test]
    fn typo_names_place_key_and_suggestion() {
        let e = err("[app]\nkind = \"cgi\"\ncomand = [\"/bin/true\"]\n");
        assert_eq!(e.position, Some((3, 1)), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(
                "/site/mysite.toml:3:1: unknown key `comand` in [app]; did you mean `command`?"
            ),
            "{text}"
        );
        // Only the keys of the kind given (issue 16 item 5).
        assert!(
            text.ends_with("(valid keys: kind, command, root, timeout, workdir, env)"),
            "{text}"
        );
        let e = err("[app]\nkind = \"wsgi\"\nmodule = \"a\"\nmodul = 1\n");
        assert!(!e.message.contains("root"), "{e}");
        assert!(e.message.contains("python_path"), "{e}");
        for (kind, key, wanted, other) in [
            ("http", "params", "ready_path", "module"),
            ("fastcgi", "ready_path", "params", "strip_prefix"),
            ("scgi", "params", "request_timeout", "ready_path"),
        ] {
            let e = err(&format!(
                "[app]\nkind = \"{kind}\"\ncommand = [\"/bin/cat\"]\n{key} = 1\n"
            ));
            assert_eq!(e.position, Some((4, 1)), "{e}");
            assert!(e.message.contains(&format!("unknown key `{key}`")), "{e}");
            assert!(
                e.message.contains(wanted) && !e.message.contains(other),
                "{e}"
            );
        }
    }

    #[test]
    fn wrong_type_names_key() {
        let e = err("[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\ntimeout = \"soon\"\n");
        let text = e.to_string();
        assert_eq!(e.position, Some((4, 11)), "{text}");
        assert!(text.contains("key `timeout`"), "{text}");
        assert!(text.contains("invalid duration \"soon\""), "{text}");
    }

    /// serde's type errors, as a shared-hosting user should read them; the
    /// place (file:line:column, table, key) stays in front.
    #[test]
    fn type_errors_in_plain_words() {
        let app = "[app]\nkind = \"wsgi\"\nmodule = \"m\"\n";
        let table = [
            (
                "max_requests = \"ten\"",
                "expected a whole number, found the text \"ten\"",
            ),
            (
                "max_requests = \"10\"",
                "expected a whole number, found the text \"10\" (write it without quotes: 10)",
            ),
            (
                "max_requests = 1.5",
                "expected a whole number, found the number 1.5",
            ),
            (
                "max_requests = true",
                "expected a whole number, found the value true",
            ),
            (
                "max_requests = [1]",
                "expected a whole number, found a list",
            ),
            (
                "max_requests = { a = 1 }",
                "expected a whole number, found a table",
            ),
            (
                "max_requests = 1979-05-27",
                "expected a whole number, found a date or time",
            ),
            (
                "max_requests = 99999999999999999999",
                "expected a whole number, found the number 99999999999999999999",
            ),
            ("debug = 3", "expected true or false, found the number 3"),
            (
                "debug = \"true\"",
                "expected true or false, found the text \"true\" (write it without quotes: true)",
            ),
            (
                "python_path = \"/x\"",
                "expected a list like [\"a\", \"b\"], found the text \"/x\"",
            ),
            (
                "python_path = [1]",
                "expected text in quotes, like \"example\", found the number 1",
            ),
            ("module_x = 1\n", "unknown key `module_x`"),
            (
                "env = 3",
                "expected a table like { NAME = \"value\" }, found the number 3",
            ),
            (
                "request_timeout = true",
                "expected a duration: seconds as a number, or a string like \"500ms\", \"30s\", \"2m\", found the value true",
            ),
        ];
        for (line, want) in table {
            let text = err(&format!("{app}{line}\n")).to_string();
            assert!(text.starts_with("/site/mysite.toml:4:"), "{line}: {text}");
            assert!(text.contains(want), "{line}: {text}");
            assert!(!text.contains("invalid type"), "{line}: {text}");
            if !line.starts_with("module_x") {
                let key = line.split(' ').next().unwrap_or_default();
                assert!(
                    text.contains(&format!("in [app], key `{key}`: expected")),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn type_error_messages_mapped() {
        let table = [
            (
                "invalid value: integer `-1`, expected u64",
                "expected a whole number, 0 or more, found the number -1",
            ),
            (
                "invalid type: string \"x\", expected f64",
                "expected a number, found the text \"x\"",
            ),
            (
                "invalid type: integer `3`, expected struct RawApp",
                "expected a table, found the number 3",
            ),
            (
                "invalid type: string \"a, expected b\", expected i64",
                "expected a whole number, found the text \"a, expected b\"",
            ),
            (
                "invalid type: sequence, expected a map",
                "expected a table like { NAME = \"value\" }, found a list",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "expected true or false, found the text \"yes\"",
            ),
        ];
        for (serde, want) in table {
            assert_eq!(
                plain_type_error(serde, None).as_deref(),
                Some(want),
                "{serde}"
            );
        }
        assert_eq!(plain_type_error("duplicate key", None), None);
    }

    #[test]
    fn unknown_table_suggested() {
        let text = err("[ap]\nkind = \"cgi\"\n").to_string();
        assert!(
            text.contains("unknown key `ap`") && text.contains("did you mean `app`?"),
            "{text}"
        );
    }

    #[test]
    fn unknown_kind() {
        let e = err("[app]\nkind = \"cig\"\ncommand = [\"/bin/true\"]\n");
        assert_eq!(e.position, Some((2, 8)));
        assert!(e.message.contains("did you mean \"cgi\"?"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn decode_errors_point_at_the_first_bad_byte() {
        let e = decode_utf8(Path::new("/x/s.toml"), b"[app]\nk\xc3\xa9y = 1 # \xff\n").unwrap_err();
        assert_eq!(e.position, Some((2, 11)), "{e}");
        assert!(e.message.contains("0xff"), "{e}");
    }

    #[test]
    fn oversized_and_deep_text_named_plainly() {
        let big = format!(
            "[app]\nkind = \"cgi\"\n#{}\n",
            "x".repeat(MAX_SETTINGS_BYTES)
        );
        let e = err(&big);
        assert_eq!(e.position, None);
        assert!(e.message.contains("larger than 1024 KiB"), "{e}");
        let e = err(&format!(
            "[app]\nkind = \"cgi\"\n[{}]\n",
            vec!["t"; 90].join(".")
        ));
        assert_eq!(e.position, Some((3, 1)), "{e}");
        assert!(e.message.contains("nest too deeply"), "{e}");
        let e = err(&format!(
            "[app]\nkind = \"cgi\"\nx = {}\n",
            "{ a = ".repeat(100)
        ));
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
        assert!(e.message.contains("nest too deeply"), "{e}");
    }

    #[test]
    fn valid_settings_with_defaults() {
        let c = parse(Path::new("/x/mysite.fcgi"), "#!/usr/bin/fcgi-shim\n[app]\nkind = \"cgi\"\ncommand = [\"/bin/sh\", \"-c\", \"true\"]\ntimeout = 2.5\n").unwrap();
        assert_eq!(c.site, "mysite");
        let AppConfig::Cgi(cgi) = c.app else {
            panic!("not cgi")
        };
        assert_eq!(cgi.timeout, Duration::from_millis(2500));
        assert_eq!(
            cgi.program,
            CgiProgram::Command(vec!["/bin/sh".into(), "-c".into(), "true".into()])
        );
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn zero_limit_rejected() {
        let e = err("[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\n[limits]\nmax_params = 0\n");
        assert_eq!(e.position, Some((5, 14)));
        assert!(e.message.contains("key `max_params`"), "{e}");
    }

    #[test]
    fn request_read_timeout() {
        let base = "[app]\nkind = \"cgi\"\ncommand = [\"/bin/true\"]\n[limits]\n";
        let c = parse(
            Path::new("/x/mysite.fcgi"),
            &format!("{base}request_read_timeout = \"5s\"\n"),
        )
        .unwrap();
        assert_eq!(c.limits.request_read_timeout, Duration::from_secs(5));
        let e = err(&format!("{base}request_read_timeout = 0\n"));
        assert!(e.message.contains("key `request_read_timeout`"), "{e}");
    }

    #[test]
    fn missing_program_file() {
        let e = err("[app]\nkind = \"cgi\"\ncommand = [\"/no/such/prog\"]\n");
        assert!(e.message.contains("/no/such/prog"), "{e}");
    }

    #[test]
    fn finds_sibling_then_env() {
        let dir = std::env::temp_dir().join(format!("fcgi-shim-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("mysite.fcgi");
        assert_eq!(
            find(None, &exe, Some("/e.toml".into())),
            Some(Found::Environment("/e.toml".into()))
        );
        std::fs::write(dir.join("mysite.toml"), "").unwrap();
        assert_eq!(
            find(None, &exe, None),
            Some(Found::Sibling(dir.join("mysite.toml")))
        );
        assert_eq!(
            find(Some(&exe), &exe, None),
            Some(Found::Sibling(dir.join("mysite.toml")))
        );
        std::fs::write(&exe, "").unwrap();
        assert_eq!(
            find(Some(&exe), &exe, None),
            Some(Found::Argument(exe.clone()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

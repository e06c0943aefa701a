//! Logging through the `log` facade to stderr, syslog or a file.
//!
//! Owns: the one global logger, its line format (`[fcgi-shim SITE PID] level: message`)
//! and switching its target once the settings are known. Under mod_fcgid,
//! stderr is Apache's error log, which is why it is the default.
//! Must not: write anywhere but the configured target; never to fd 1.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where log lines go.
#[derive(Debug, Clone)]
pub enum LogTarget {
    Stderr,
    Syslog { facility: syslog::Facility },
    File(PathBuf),
}

enum Sink {
    Stderr,
    Syslog(Box<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>),
    File(File),
}

struct State {
    site: String,
    sink: Sink,
}

struct ShimLogger {
    state: Mutex<State>,
}

static LOGGER: ShimLogger = ShimLogger {
    state: Mutex::new(State {
        site: String::new(),
        sink: Sink::Stderr,
    }),
};

/// Install the logger (stderr, level info) before anything else runs.
pub fn init_early() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

/// Point the logger at its configured target. On failure (a file that cannot
/// be opened, no syslog socket) the logger stays on stderr and the error is returned.
pub fn configure(site: &str, target: &LogTarget, level: LevelFilter) -> Result<(), String> {
    let sink = match target {
        LogTarget::Stderr => Ok(Sink::Stderr),
        LogTarget::File(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Sink::File)
            .map_err(|e| format!("cannot open log file {}: {e}", path.display())),
        LogTarget::Syslog { facility } => {
            let formatter = syslog::Formatter3164 {
                facility: *facility,
                hostname: None,
                process: format!("fcgi-shim[{site}]"),
                pid: std::process::id(),
            };
            syslog::unix(formatter)
                .map(|l| Sink::Syslog(Box::new(l)))
                .map_err(|e| format!("cannot connect to syslog: {e}"))
        }
    };
    let mut state = LOGGER.state.lock().unwrap_or_else(|p| p.into_inner());
    state.site = site.to_string();
    log::set_max_level(level);
    state.sink = sink?;
    Ok(())
}

impl Log for ShimLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { site, sink } = &mut *state;
        let level = record.level();
        let message = record.args().to_string();
        match sink {
            Sink::Syslog(logger) => {
                let _ = match level {
                    Level::Error => logger.err(message),
                    Level::Warn => logger.warning(message),
                    Level::Info => logger.info(message),
                    Level::Debug | Level::Trace => logger.debug(message),
                };
            }
            sink => {
                let site = if site.is_empty() { "-" } else { site.as_str() };
                let line = format!(
                    "[fcgi-shim {site} {}] {}: {message}\n",
                    std::process::id(),
                    level.as_str().to_ascii_lowercase()
                );
                let _ = match sink {
                    Sink::File(f) => f.write_all(line.as_bytes()),
                    _ => std::io::stderr().write_all(line.as_bytes()),
                };
            }
        }
    }

    fn flush(&self) {}
}

/// Parse a syslog facility name as written in the settings.
pub fn parse_facility(name: &str) -> Option<syslog::Facility> {
    name.parse().ok()
}

/// How often [`once_a_minute`] lets a line about the same cause through.
pub const RATE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Causes logged lately: (cause, when, occurrences left out since).
static RATE_LIMITED: Mutex<Vec<(String, std::time::Instant, u64)>> = Mutex::new(Vec::new());

/// For a line that could repeat many times a second (accept failing for
/// want of file descriptors, a full temporary directory): `Some(n)` if a line
/// about `cause` may be logged now, `n` being how many occurrences were left
/// out since the last one; `None` within [`RATE_LIMIT`] of it. Per process
/// (each prefork worker has its own minute).
pub fn once_a_minute(cause: &str) -> Option<u64> {
    let now = std::time::Instant::now();
    let mut seen = RATE_LIMITED.lock().unwrap_or_else(|e| e.into_inner());
    match seen.iter_mut().find(|(c, _, _)| c == cause) {
        Some((_, at, left_out)) if now.duration_since(*at) < RATE_LIMIT => {
            *left_out += 1;
            None
        }
        Some((_, at, left_out)) => {
            *at = now;
            Some(std::mem::take(left_out))
        }
        None => {
            seen.push((cause.to_string(), now, 0));
            Some(0)
        }
    }
}

/// " (12 more since the last line)" for a count from [`once_a_minute`].
pub fn left_out(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since the last line about it)")
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn once_a_minute_per_cause() {
        assert_eq!(once_a_minute("test: a"), Some(0));
        assert_eq!(once_a_minute("test: a"), None);
        assert_eq!(once_a_minute("test: a"), None);
        assert_eq!(once_a_minute("test: b"), Some(0));
        let mut seen = RATE_LIMITED.lock().unwrap();
        let a = seen.iter_mut().find(|(c, _, _)| c == "test: a").unwrap();
        a.1 -= RATE_LIMIT;
        drop(seen);
        assert_eq!(once_a_minute("test: a"), Some(2));
        assert_eq!(left_out(2), " (2 more since the last line about it)");
    }
}

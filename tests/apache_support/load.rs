//! wrk as the load of the end-to-end tests: run it against a private
//! Apache, read its counts, and assert that no request failed. Shared by
//! the reload tests (tests/e2e_reload.rs) and the any-application tests
//! (tests/e2e_any_app.rs); it judges only what wrk and Apache's logs say.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::ApacheInstance;

/// wrk's counts for one run.
#[derive(Debug)]
pub struct Load {
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: String,
    /// connect, read, write, timeout (from the "Socket errors" line).
    pub errors: [u64; 4],
    pub output: String,
}

/// wrk's --timeout.
pub const WRK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs wrk with 8 connections against `url` for `secs` seconds.
pub fn wrk(url: &str, secs: u64) -> Command {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "2",
        "-c",
        "8",
        "-d",
        &format!("{secs}s"),
        // A request waiting for mod_fcgid to start a process (it retries
        // once a second) may take over 2 s, wrk's default: slow, not failed.
        "--timeout",
        &format!("{}s", WRK_TIMEOUT.as_secs()),
        "--latency",
        url,
    ]);
    cmd
}

/// wrk against `url` for `secs` seconds in the background, its output piped.
pub fn spawn_wrk(url: &str, secs: u64) -> Child {
    wrk(url, secs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run wrk ({e}): apt-get install wrk"))
}

/// The counts in wrk's output.
pub fn wrk_result(output: Output) -> Load {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.to_string())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let socket_errors = text
        .lines()
        .find(|l| l.contains("Socket errors"))
        .unwrap_or("")
        .trim()
        .to_string();
    let mut errors = [0u64; 4];
    for (i, name) in ["connect ", "read ", "write ", "timeout "]
        .iter()
        .enumerate()
    {
        errors[i] = socket_errors
            .split(name)
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
    }
    Load {
        requests,
        non_2xx,
        socket_errors,
        errors,
        output: format!("{text}{}", String::from_utf8_lossy(&output.stderr)),
    }
}

/// The longest time (%D) Apache's access log gives any request.
pub fn slowest_in_access_log(apache: &ApacheInstance) -> Duration {
    apache
        .access_log()
        .lines()
        .filter_map(|l| l.rsplit(' ').next()?.strip_suffix("us")?.parse().ok())
        .max()
        .map(Duration::from_micros)
        .unwrap_or_default()
}

/// No non-2xx response, no connect, read or write error, no timeout. (This
/// wrk counts a response as a timeout when its latency is past --timeout;
/// Apache's slowest request is printed beside it: its %D covers everything
/// the shim does.)
pub fn assert_clean_load(load: &Load, apache: &ApacheInstance) {
    assert!(load.requests > 0, "wrk made no requests:\n{}", load.output);
    let [connect, read, write, timeout] = load.errors;
    assert_eq!(
        (load.non_2xx, connect, read, write),
        (0, 0, 0, 0),
        "failed requests under load:\n{}\n{}",
        load.output,
        apache.logs_for_humans()
    );
    assert_eq!(
        timeout,
        0,
        "wrk counted {timeout} request(s) slower than {WRK_TIMEOUT:?}; the slowest in Apache's \
         access log took {:?}:\n{}\n{}",
        slowest_in_access_log(apache),
        load.output,
        apache.logs_for_humans()
    );
}

//! Direct mode of the `wsgi` adapter (`src/back/wsgi_adapter.py`): the worker
//! serving the web server's FastCGI connections itself on the inherited
//! listening socket, the lend / hand-back frames (L, Q) and the guardian that
//! answers 502 / 504 and reports X when the worker dies or hangs.
//!
//! `tests/wsgi_apps/direct_harness.py` plays both the shim (it starts the
//! adapter exactly as `src/back/wsgi.rs` does) and the web server; this test
//! runs it, bounded, and shows its output when a check fails. Needs only a
//! python3 with its standard library: `$FCGI_SHIM_TEST_PYTHON` or `python3`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn python() -> String {
    std::env::var("FCGI_SHIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn direct_mode_harness_passes_every_check() {
    let dir = TempDir::new("direct");
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wsgi_apps/direct_harness.py");
    let outcome = run_bounded(
        Command::new(python())
            .arg(&harness)
            .arg(dir.path())
            .current_dir(dir.path()),
        &dir,
        Duration::from_secs(120),
    );
    assert!(
        outcome.status.success(),
        "direct_harness.py failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        outcome.status,
        outcome.stdout,
        outcome.stderr
    );
    assert!(
        outcome.stdout.contains("checks, 0 failed"),
        "no summary line:\n{}",
        outcome.stdout
    );
    println!("{}", outcome.stdout);
}

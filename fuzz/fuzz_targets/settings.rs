//! Any settings text: parsing and validating never panics (every error's
//! line:column and "[table] key" come from spans into the text), and an
//! error's position is inside the text.
#![no_main]

use std::path::Path;

use fcgi_shim::config::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse(Path::new("/nonexistent/fuzz/mysite.toml"), text) {
        if let Some((line, column)) = e.position {
            assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "{e}");
            assert!(column >= 1, "{e}");
        }
    }
});

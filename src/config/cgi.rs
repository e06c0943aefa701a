//! Settings of `kind = "cgi"`: a CGI/1.1 program run per request.
//!
//! Owns: the cgi keys' validation into [`CgiConfig`] (`command` or `root`,
//! `timeout`, `workdir`, `env`).
//! Must not: run the program.

use std::path::Path;

use super::{
    AppConfig, CgiConfig, CgiProgram, ConfigError, DEFAULT_CGI_TIMEOUT, RawApp, Source,
    check_directory, resolve, validate_command,
};

/// `raw` is a cgi `[app]` (its kind checked, no wsgi key in it).
pub(super) fn validate_cgi(
    src: &Source<'_>,
    base: &Path,
    raw: RawApp,
) -> Result<AppConfig, ConfigError> {
    let program = match (raw.command, raw.root) {
        (Some(_), Some(root)) => {
            return Err(src.at(root.span(), "give either `command` or `root`, not both"));
        }
        (None, None) => {
            return Err(src.error(
                None,
                "[app] kind = \"cgi\" needs `command = [\"/path/to/program\"]` or `root = \"/dir/of/cgi/programs\"`".into(),
            ));
        }
        (Some(command), None) => {
            CgiProgram::Command(validate_command(src, base, command, "program")?)
        }
        (None, Some(root)) => {
            let dir = resolve(base, root.get_ref());
            check_directory(&dir, "the CGI root directory").map_err(|e| src.at(root.span(), e))?;
            CgiProgram::Root(dir)
        }
    };
    let timeout = match raw.timeout {
        Some(t) if t.get_ref().0.is_zero() => return Err(src.at(t.span(), "must be more than 0")),
        Some(t) => t.get_ref().0,
        None => DEFAULT_CGI_TIMEOUT,
    };
    let workdir = match raw.workdir {
        Some(w) => {
            let dir = resolve(base, w.get_ref());
            check_directory(&dir, "the workdir").map_err(|e| src.at(w.span(), e))?;
            Some(dir)
        }
        None => None,
    };
    Ok(AppConfig::Cgi(CgiConfig {
        program,
        timeout,
        workdir,
        env: raw.env.into_iter().collect(),
    }))
}

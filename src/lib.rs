//! fcgi-shim: run web applications on hosts that only offer FastCGI.
//!
//! The crate is a library so that the codecs can be fuzzed and tested on their
//! own; `src/main.rs` is the thin executable. See README.md, "Architecture":
//! `launch` (how we were started) → `server` (accept loop) → `front` (protocol)
//! → [`request`] (the CGI-shaped request) → `back` (the application), with
//! `supervise` owning application processes, `reload` restarts when files
//! change, `config` the settings, `log` the log lines and `sys` every unsafe call.

pub mod back;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod front;
pub mod last_good;
pub mod launch;
pub mod log;
pub mod reload;
pub mod request;
pub mod server;
pub mod spool;
pub mod supervise;
pub mod sys;
pub mod verdict;

//! fcgi-shim: run web applications on hosts that only offer FastCGI.
//!
//! The crate is a library so that the codecs can be fuzzed and tested on their
//! own; `src/main.rs` is the thin executable. See README.md, "Architecture".

pub mod front;

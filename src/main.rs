//! The `fcgi-shim` executable: everything lives in the library; see `cli`.
fn main() -> std::process::ExitCode {
    fcgi_shim::cli::main()
}

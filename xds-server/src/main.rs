//! `meshgate`: see [`meshgate::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    meshgate::cli::main()
}

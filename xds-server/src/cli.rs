//! The `meshgate` command line. Parsing and printing only; the work is in the library.
//!
//! Exit codes: 0 success (including `up` stopped by SIGINT/SIGTERM); 1 invalid registry or
//! any other error; for `up`, Envoy's own code (or 128 + signal) when it exits by itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::bootstrap;
use crate::launch::{self, Ended, UpError, UpOptions};
use crate::locate::Search;
use crate::registry::Registry;

#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about = "MCP governance for Envoy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a registry file; print a summary, or every error as file:line: message.
    Validate {
        /// The registry YAML file.
        #[arg(short, long, value_name = "FILE")]
        registry: PathBuf,
    },
    /// Validate, start Envoy with a static bootstrap, wait until it is ready, and supervise
    /// it until SIGINT/SIGTERM.
    Up {
        /// The registry YAML file.
        #[arg(short, long, value_name = "FILE")]
        registry: PathBuf,
        /// Envoy binary [default: $MESHGATE_ENVOY, envoy on $PATH, ./.venv/bin/envoy,
        /// <repo>/.venv/bin/envoy].
        #[arg(long, value_name = "PATH")]
        envoy: Option<PathBuf>,
        /// Meshgate wasm module [default: $MESHGATE_WASM,
        /// <repo>/target/wasm32-wasip1/release/meshgate_wasm.wasm].
        #[arg(long, value_name = "PATH")]
        wasm: Option<PathBuf>,
        /// Once ready, write {"listener", "admin", "envoy_pid", "servers"} as JSON here
        /// (atomically; removed again on exit).
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
        /// Keep the bootstrap and admin address file here instead of a temporary folder.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
    },
    /// Print the static Envoy bootstrap `up` would run.
    Bootstrap {
        /// The registry YAML file.
        #[arg(short, long, value_name = "FILE")]
        registry: PathBuf,
        /// Meshgate wasm module path to put in the bootstrap (need not exist yet)
        /// [default: as for `up`].
        #[arg(long, value_name = "PATH")]
        wasm: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    run(Cli::parse())
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate { registry } => validate(registry),
        Command::Bootstrap {
            registry,
            wasm,
            format,
        } => print_bootstrap(registry, wasm, format),
        Command::Up {
            registry,
            envoy,
            wasm,
            ready_file,
            work_dir,
        } => up(UpOptions {
            registry,
            envoy,
            wasm,
            ready_file,
            work_dir,
        }),
    }
}

fn validate(file: PathBuf) -> ExitCode {
    match Registry::load(&file) {
        Ok(registry) => {
            println!("{}", registry.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn print_bootstrap(file: PathBuf, wasm: Option<PathBuf>, format: Format) -> ExitCode {
    let registry = match Registry::load(&file) {
        Ok(registry) => registry,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let wasm = match Search::current().wasm_candidate(wasm.as_deref()) {
        Ok((path, _)) => {
            if !path.is_file() {
                eprintln!(
                    "meshgate: warning: {} does not exist yet (run `make build`)",
                    path.display()
                );
            }
            path
        }
        Err(e) => {
            eprintln!("meshgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = bootstrap::static_bootstrap(&registry, &wasm).and_then(|b| match format {
        Format::Json => Ok(bootstrap::to_json(&b)),
        Format::Yaml => bootstrap::to_yaml(&b),
    });
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn up(options: UpOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("meshgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(launch::up(&options)) {
        Ok(Ended::Stopped) => {
            eprintln!("meshgate: envoy stopped");
            ExitCode::SUCCESS
        }
        Ok(Ended::Exited(status)) => {
            eprintln!("meshgate: envoy exited unexpectedly ({status})");
            ExitCode::from(launch::exit_code(status))
        }
        Err(UpError::Registry(errors)) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("meshgate: {e}");
            ExitCode::FAILURE
        }
    }
}

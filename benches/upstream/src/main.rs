//! `meshgate-bench-upstream [--port N] [--ready-file PATH] [--threads N]`
//!
//! Binds 127.0.0.1:N (0, the default, lets the OS pick), prints
//! `meshgate-bench-upstream: listening on http://127.0.0.1:<port>/mcp`, writes
//! `{"port": <port>}` to the ready file (atomically) once it accepts connections, and serves
//! until killed.

use std::path::PathBuf;
use std::process::ExitCode;

use meshgate_bench_upstream::serve;

struct Args {
    port: u16,
    ready_file: Option<PathBuf>,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { port: 0, ready_file: None, threads: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--ready-file" => args.ready_file = Some(PathBuf::from(value()?)),
            "--threads" => {
                args.threads = value()?.parse().ok().filter(|n| *n > 0).ok_or("--threads must be a positive number")?
            }
            "-h" | "--help" => {
                return Err(String::from("usage: meshgate-bench-upstream [--port N] [--ready-file PATH] [--threads N]"))
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("meshgate-bench-upstream: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    let result = runtime.and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate-bench-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let port = listener.local_addr()?.port();
    println!("meshgate-bench-upstream: listening on http://127.0.0.1:{port}/mcp");
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{{\"port\": {port}}}\n"))?;
        std::fs::rename(&tmp, path)?;
    }
    tokio::select! {
        served = serve(listener) => served,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

//! The `pgrepl` binary: parse the command line, set up logs, run the
//! command, print any error as one line, exit 0 / 1 (2 for usage errors).

use std::process::ExitCode;

use clap::Parser;
use pgrepl::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = if cli.quiet {
        -1
    } else {
        cli.verbose.min(3) as i8
    };
    let json_logs = cli.log_format == pgrepl::cli::LogFormat::Json;
    pgrepl::logging::init(json_logs, verbosity);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(pgrepl::commands::run(cli.command, json_logs)) {
        Ok(code) => code,
        Err(e) => {
            let line = one_line(&e);
            if json_logs {
                // One JSON object like every other log line, with where the
                // sync stood.
                let t = pgrepl::progress::telemetry::telemetry();
                let lsn = pgrepl::lsn::Lsn(t.position.load(std::sync::atomic::Ordering::Relaxed));
                tracing::error!(sync = %t.sync, phase = t.phase(), lsn = %lsn, error = %line, "the command failed");
            } else {
                eprintln!("error: {line}");
            }
            ExitCode::from(1)
        }
    }
}

/// The error chain on one line, each cause once.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

//! The CLI edge: each subcommand wires the stages together, adds context to
//! errors (anyhow) and decides the exit code.

mod check;
mod cutover;
mod status;
mod sync;
mod tail;
mod teardown;
mod verify;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Command, Endpoints};
use crate::conn::{ConnConfig, Endpoint, Side};

/// Runs one command. `json_logs` tells whether logs are JSON (then no bars).
pub async fn run(command: Command, json_logs: bool) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check(args) => check::run(args).await,
        Command::Sync(args) => sync::run(args, json_logs).await,
        Command::Teardown(args) => teardown::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Verify(args) => verify::run(args, json_logs).await,
        Command::Cutover(args) => cutover::run(args, json_logs).await,
        Command::Tail(args) => tail::run(args).await,
    }
}

/// Resolves `--source` / `--target` into endpoints.
pub(crate) fn endpoints(e: &Endpoints) -> anyhow::Result<(Endpoint, Endpoint)> {
    let env = crate::conn::config::ProcessEnv;
    let source = ConnConfig::resolve(&e.source, &env).context("--source")?;
    let target = ConnConfig::resolve(&e.target, &env).context("--target")?;
    Ok((
        Endpoint::new(Side::Source, source),
        Endpoint::new(Side::Target, target),
    ))
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
pub(crate) async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    })
}

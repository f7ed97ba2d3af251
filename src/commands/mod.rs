//! The CLI edge: each subcommand wires the stages together, adds context to
//! errors (anyhow) and decides the exit code.

mod check;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Command, Endpoints};
use crate::conn::{ConnConfig, Endpoint, Side};

pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check(args) => check::run(args).await,
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

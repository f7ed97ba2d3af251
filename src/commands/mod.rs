//! The CLI edge: each subcommand wires the stages together, adds context to
//! errors (anyhow) and decides the exit code.

mod check;
mod cutover;
mod install_capture;
mod server;
pub mod ship;
mod status;
mod sync;
mod sync_copy;
mod tail;
mod teardown;
mod verify;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Command, Endpoints};
use crate::conn::{ConnConfig, Endpoint, Side};

/// Runs one command. `json_logs` tells whether logs are JSON (then no bars).
pub async fn run(command: Command, json_logs: bool) -> anyhow::Result<ExitCode> {
    if matches!(
        command,
        Command::Sync(_) | Command::Cutover(_) | Command::Tail(_)
    ) {
        latch_signals()?;
    }
    // Whole-server forms (`--all-databases`, `--databases`) run each
    // database's single form (`server` uses `sync`, `check`; never back).
    match command {
        Command::Check(args) if args.endpoints.databases.any() => server::check(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Sync(args) if args.endpoints.databases.any() => {
            server::sync(args, json_logs).await
        }
        Command::Sync(args) => sync::run(args, json_logs).await,
        Command::Teardown(args) => teardown::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Verify(args) => verify::run(args, json_logs).await,
        Command::Cutover(args) => cutover::run(args, json_logs).await,
        Command::InstallCapture(args) => install_capture::run(args).await,
        Command::Tail(args) => tail::run(args).await,
        Command::Completions(args) => ship::run_completions(args),
        Command::Man(args) => ship::run_man(args),
    }
}

/// Resolves `--source` / `--target` into endpoints.
pub(crate) fn endpoints(e: &Endpoints) -> anyhow::Result<(Endpoint, Endpoint)> {
    let env = crate::conn::config::ProcessEnv;
    let mut source = ConnConfig::resolve(&e.source, &env).context("--source")?;
    // A source (or target) named by several hosts is followed to its
    // primary: pgrepl publishes, makes slots, applies and fences there.
    // (libpq would take the first that answers.)
    if !source.more_hosts.is_empty()
        && source.session_attrs == crate::conn::config::SessionAttrs::Any
    {
        source.session_attrs = crate::conn::config::SessionAttrs::ReadWrite;
    }
    let mut target = ConnConfig::resolve(&e.target, &env).context("--target")?;
    if !target.more_hosts.is_empty()
        && target.session_attrs == crate::conn::config::SessionAttrs::Any
    {
        target.session_attrs = crate::conn::config::SessionAttrs::ReadWrite;
    }
    let mut source = Endpoint::new(Side::Source, source);
    if let Some(standby) = &e.source_standby {
        source.standby = Some(Box::new(
            ConnConfig::resolve(standby, &env).context("--source-standby")?,
        ));
    }
    Ok((source, Endpoint::new(Side::Target, target)))
}

/// SIGINT and SIGTERM, latched from the start of a command that stops
/// cleanly on them (sync, cutover, tail): a signal that comes before the
/// command is ready to act on it (a supervisor stopping a sync still in its
/// preflight) is kept, not lost and not fatal.
static SIGNALLED: std::sync::OnceLock<tokio::sync::watch::Receiver<Option<&'static str>>> =
    std::sync::OnceLock::new();

/// Starts listening for SIGINT and SIGTERM (once per process).
fn latch_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    if SIGNALLED.get().is_some() {
        return Ok(());
    }
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = int.recv() => "interrupted",
                _ = term.recv() => "terminated",
            };
            let _ = tx.send(Some(name));
        }
    });
    let _ = SIGNALLED.set(rx);
    Ok(())
}

/// Resolves on SIGINT or SIGTERM with the signal's name, at once if one
/// came already.
/// In a whole-server move, a database's work also stops when its scope
/// says so (another database's sync failed).
pub(crate) async fn shutdown_signal() -> anyhow::Result<&'static str> {
    latch_signals()?;
    let mut rx = SIGNALLED
        .get()
        .context("the signal latch is not installed")?
        .clone();
    let scoped = crate::progress::scope::current().map(|s| s.stop);
    let told = async move {
        match scoped {
            Some(mut stop) => {
                let _ = stop.wait_for(|s| *s).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        name = rx.wait_for(Option::is_some) => {
            let name = name.context("the signal latch ended")?;
            Ok(name.unwrap_or("interrupted"))
        }
        () = told => Ok("stopped (another database's sync failed)"),
    }
}

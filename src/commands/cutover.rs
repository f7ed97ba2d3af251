//! `pgrepl cutover`: runs the cutover, prints each step and "the target is
//! ready", or one line saying why nothing changed.

use std::process::ExitCode;

use crate::cli::CutoverArgs;
use crate::cutover::abandon::Fence;
use crate::cutover::{self, CutoverRequest};
use crate::progress::ui::ProgressMode;

pub async fn run(args: CutoverArgs, json_logs: bool) -> anyhow::Result<ExitCode> {
    if args.abandon {
        return abandon(&args).await;
    }
    if args.endpoints.databases.any() {
        return super::server::cutover(args, json_logs).await;
    }
    let (source, target) = super::endpoints(&args.endpoints)?;
    let selection = args.tables.selection();
    let req = CutoverRequest {
        name: &args.endpoints.name,
        source: &source,
        target: &target,
        selection: (!selection.is_everything()).then_some(selection),
        max_lag_bytes: args.max_lag,
        max_lag_time: args.max_lag_time,
        wait: args.wait,
        terminate: args.terminate,
        verify: args.verify,
        reverse: args.reverse,
        jobs: args.jobs.map(usize::from).unwrap_or(2),
        progress: ProgressMode::detect(json_logs),
        together: None,
        reverse_as: None,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        if let Ok(signal) = super::shutdown_signal().await {
            eprintln!("{signal}: lifting the fence; the sync goes on as before");
            let _ = tx.send(true);
        }
    });
    eprintln!("Cutting over sync {}:", args.endpoints.name);
    let result = cutover::run(&req, rx).await;
    signals.abort();
    let summary = result.map_err(|e| match e {
        // Nothing was fenced by this run (the cutover was done before, or
        // it was refused first), or the fence is lasting: they say so.
        e @ (cutover::CutoverError::AlreadyCutOver { .. }
        | cutover::CutoverError::NothingChanged(_)
        | cutover::CutoverError::AfterFence(_)) => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(
            "cutover abandoned; the fence is lifted and the source takes writes as before",
        ),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "The target is ready: switch the application to {}. Fence at source LSN {}; write downtime {} ms (whole cutover {} ms); {} sequence(s) set{}.",
            target.config,
            summary.fence_lsn,
            summary.write_downtime_ms,
            summary.total_ms,
            summary.sequences_set,
            if summary.verified { "; verified equal" } else { "" }
        );
        if let Some(r) = &summary.reverse {
            println!(
                "The way back is ready: `pgrepl sync --name {r} --source <the target> --target <the old source>` carries the application's writes back; `pgrepl cutover --name {r}` returns."
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cutover --abandon`: the fence a cutover left behind comes down (each
/// database's, with `--all-databases`).
async fn abandon(args: &CutoverArgs) -> anyhow::Result<ExitCode> {
    async fn one(
        name: &crate::sql::SyncName,
        way_back: Option<&crate::sql::SyncName>,
        source: &crate::conn::Endpoint,
        target: &crate::conn::Endpoint,
    ) -> anyhow::Result<ExitCode> {
        let done = cutover::abandon::abandon(name, way_back, source, target).await?;
        match done.fence {
            Fence::Lifted { since, lockers } if lockers.is_empty() => crate::say!(
                "Lifted the fence a cutover of sync {name} left on the source{}: its tables take writes again, and the sync goes on.",
                since.map(|s| format!(" (standing since {s})")).unwrap_or_default()
            ),
            Fence::Lifted { lockers, .. } => {
                let pids: Vec<String> = lockers.iter().map(i32::to_string).collect();
                crate::say!(
                    "Lifted the fence a cutover of sync {name} left on the source; the sync goes on. But pgrepl session(s) {} there still hold tables locked (a cutover whose host or connection was lost, not yet noticed by the server): writes to those tables wait until they end; end them with SELECT pg_terminate_backend(pid) on the source.",
                    pids.join(", ")
                );
            }
            Fence::NothingStood => crate::say!(
                "Nothing to abandon: no fence stands on the source of sync {name}."
            ),
        }
        match done.way_back {
            Ok(removed) if removed.is_empty() => Ok(ExitCode::SUCCESS),
            Ok(removed) => {
                crate::say!(
                    "Removed the way back that cutover had set up: {}.",
                    removed.join(", ")
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(anyhow::anyhow!(
                "could not remove the way back that cutover had set up ({e}): its slot on the target holds WAL; remove it with `pgrepl teardown --name {}` (the target as --source, the old source as --target)",
                way_back.map(|n| n.to_string()).unwrap_or_else(|| format!("{name}_r"))
            )),
        }
    }
    // The way back a dead `--reverse` cutover may have set up is named as
    // that cutover would have named it.
    let base_back = cutover::reverse::name_of(&args.endpoints.name).ok();
    if args.endpoints.databases.any() {
        return super::server::each(&args.endpoints, |m| {
            let way_back = base_back
                .as_ref()
                .map(|b| crate::server::databases::sync_name(b, &m.database.name));
            async move { one(&m.name, way_back.as_ref(), &m.source, &m.target).await }
        })
        .await;
    }
    let (source, target) = super::endpoints(&args.endpoints)?;
    one(&args.endpoints.name, base_back.as_ref(), &source, &target).await
}

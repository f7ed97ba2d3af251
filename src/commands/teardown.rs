//! `pgrepl teardown`: removes what pgrepl created for a sync, on both sides,
//! and says what it removed. Idempotent; user data stays.
//!
//! Each side is cleaned on its own: a target that is gone (decommissioned,
//! unreachable) must not keep the source's slot, which holds WAL until the
//! disk is full. What could not be reached is named, with exit 1; running
//! teardown again later finishes the job.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::TeardownArgs;
use crate::sql::SyncName;

pub async fn run(args: TeardownArgs) -> anyhow::Result<ExitCode> {
    if args.endpoints.databases.any() {
        // Nothing removed anywhere while any database's sync runs.
        super::server::each(&args.endpoints, |m| async move {
            if let Ok(tgt) = m.target.connect().await {
                refuse_while_running(&tgt, &m.name).await?;
            }
            Ok(ExitCode::SUCCESS)
        })
        .await?;
        return super::server::each(&args.endpoints, |m| {
            let args = &args;
            async move { one(args, &m.source, &m.target, &m.name).await }
        })
        .await;
    }
    let (source, target) = super::endpoints(&args.endpoints)?;
    one(&args, &source, &target, &args.endpoints.name).await
}

async fn one(
    args: &TeardownArgs,
    source: &crate::conn::Endpoint,
    target: &crate::conn::Endpoint,
    name: &SyncName,
) -> anyhow::Result<ExitCode> {
    let (src, tgt) = tokio::join!(source.connect(), target.connect());
    if let Ok(tgt) = &tgt {
        refuse_while_running(tgt, name).await?;
    }
    let mut removed = Vec::new();
    let mut failed = Vec::new();

    match src {
        Ok(src) => {
            if let Err(e) = clean_source(source, &src, name, &mut removed).await {
                failed.push(format!("{e:#}"));
            }
            if args.unfence {
                match crate::cutover::fence::is_fenced(&src).await {
                    Ok(true) => match crate::cutover::fence::database(&src).await {
                        Ok(db) => {
                            crate::cutover::fence::undo_persistent(&src, &db, &[]).await;
                            removed.push(
                                "source: the cutover fence (its tables take writes again)".into(),
                            );
                        }
                        Err(e) => failed.push(e.to_string()),
                    },
                    Ok(false) => {}
                    Err(e) => failed.push(e.to_string()),
                }
            }
        }
        Err(e) => failed.push(e.to_string()),
    }
    match tgt {
        Ok(tgt) => {
            if let Err(e) = clean_target(&tgt, name, &mut removed).await {
                failed.push(format!("{e:#}"));
            }
        }
        Err(e) => failed.push(e.to_string()),
    }

    if removed.is_empty() && failed.is_empty() {
        crate::say!(
            "Nothing to remove: sync {name} has no slot, publication, origin or state left."
        );
    } else if !removed.is_empty() {
        crate::say!("Removed:");
        for r in &removed {
            crate::say!("  {r}");
        }
        crate::say!("Copied tables and their rows on the target were left as they are.");
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "teardown is incomplete: {}; run `pgrepl teardown` again once that is fixed",
            failed.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Never from under a running sync (streaming, or between two sessions):
/// it would go on without its slot or its position.
async fn refuse_while_running(tgt: &tokio_postgres::Client, name: &SyncName) -> anyhow::Result<()> {
    let present = crate::control::presence::holder(tgt, name)
        .await
        .context("target: reading whether the sync runs")?;
    if let Some(pid) = present {
        anyhow::bail!(
            "sync {name} is running (its target session is pid {pid}): stop it first, then run teardown again. Nothing was removed"
        );
    }
    Ok(())
}

/// The slot, the publication, the DDL capture (see `teardown`).
async fn clean_source(
    source: &crate::conn::Endpoint,
    src: &tokio_postgres::Client,
    name: &SyncName,
    removed: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (decoder, place) = match &source.standby {
        Some(_) => (source.decoder().connect().await?, "source's standby"),
        None => (source.connect().await?, "source"),
    };
    crate::teardown::reading_side(&decoder, src, name, "source", place, removed).await?;
    Ok(())
}

/// The replication origin and pgrepl's state.
async fn clean_target(
    tgt: &tokio_postgres::Client,
    name: &SyncName,
    removed: &mut Vec<String>,
) -> anyhow::Result<()> {
    crate::teardown::writing_side(tgt, name, "target", removed).await?;
    Ok(())
}

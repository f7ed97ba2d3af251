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
use crate::progress::state;
use crate::source::setup;
use crate::sql::SyncName;

pub async fn run(args: TeardownArgs) -> anyhow::Result<ExitCode> {
    if args.endpoints.databases.any() {
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

/// The slot (first: it is what fills the source's disk), the publication,
/// the DDL capture.
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
    if setup::drop_slot(&decoder, &name.slot(), name.as_str()).await? {
        removed.push(format!("{place}: replication slot {}", name.slot()));
    }
    if setup::drop_publication(src, &name.publication()).await? {
        removed.push(format!("source: publication {}", name.publication()));
    }
    for what in crate::ddl::capture::remove(src, name).await.map_err(|e| {
        anyhow::anyhow!(
            "source: removing DDL capture: {}",
            crate::conn::error::describe(&e)
        )
    })? {
        removed.push(format!("source: {what}"));
    }
    Ok(())
}

/// The replication origin and pgrepl's state.
async fn clean_target(
    tgt: &tokio_postgres::Client,
    name: &SyncName,
    removed: &mut Vec<String>,
) -> anyhow::Result<()> {
    let origin = name.origin();
    let dropped_origin = crate::progress::ledger::Ledger::remove(tgt, name)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "target: dropping replication origin {origin}: {}",
                crate::conn::error::describe(&e)
            )
        })?;
    if dropped_origin {
        removed.push(format!("target: replication origin {origin}"));
    }
    if state::forget(tgt, name)
        .await
        .context("target: removing pgrepl state")?
    {
        removed.push(format!("target: pgrepl state for sync {name}"));
    }
    Ok(())
}

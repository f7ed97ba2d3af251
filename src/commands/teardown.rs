//! `pgrepl teardown`: removes what pgrepl created for a sync, on both sides,
//! and says what it removed. Idempotent; user data stays.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::TeardownArgs;
use crate::progress::state;
use crate::source::setup;

pub async fn run(args: TeardownArgs) -> anyhow::Result<ExitCode> {
    let (source, target) = super::endpoints(&args.endpoints)?;
    let name = &args.endpoints.name;
    let (src, tgt) = tokio::try_join!(source.connect(), target.connect())?;
    let mut removed = Vec::new();

    if setup::drop_slot(&src, &name.slot(), name.as_str()).await? {
        removed.push(format!("source: replication slot {}", name.slot()));
    }
    if setup::drop_publication(&src, &name.publication()).await? {
        removed.push(format!("source: publication {}", name.publication()));
    }
    for what in crate::ddl::capture::remove(&src, name).await.map_err(|e| {
        anyhow::anyhow!(
            "source: removing DDL capture: {}",
            crate::conn::error::describe(&e)
        )
    })? {
        removed.push(format!("source: {what}"));
    }

    let origin = name.origin();
    let dropped_origin = tgt
        .query_one(
            "SELECT count(pg_replication_origin_drop(roname)) FROM pg_replication_origin WHERE roname = $1",
            &[&origin.as_str()],
        )
        .await
        .map_err(|e| anyhow::anyhow!("target: dropping replication origin {origin}: {}", crate::conn::error::describe(&e)))?
        .get::<_, i64>(0)
        > 0;
    if dropped_origin {
        removed.push(format!("target: replication origin {origin}"));
    }
    if state::forget(&tgt, name)
        .await
        .context("target: removing pgrepl state")?
    {
        removed.push(format!("target: pgrepl state for sync {name}"));
    }

    if removed.is_empty() {
        println!("Nothing to remove: sync {name} has no slot, publication, origin or state left.");
    } else {
        println!("Removed:");
        for r in &removed {
            println!("  {r}");
        }
        println!("Copied tables and their rows on the target were left as they are.");
    }
    Ok(ExitCode::SUCCESS)
}

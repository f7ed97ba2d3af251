//! While streaming: every few seconds, what the stream does not carry is
//! brought in step — large objects (copied where they differ, removed
//! where the source removed them) and, with `--roles copy`, roles the
//! source's objects came to need since the copy (a GRANT to a new role is
//! replayed once the role exists).

use std::time::Duration;

use tokio_postgres::Client;

use super::{large_objects, roles, Plan, RolesPolicy, TargetView};
use crate::conn::error::describe;
use crate::conn::Endpoint;
use crate::progress::state;
use crate::source::inventory::Inventory;
use crate::sql::SyncName;

/// Runs until dropped.
pub async fn in_step(
    source: Endpoint,
    target: Endpoint,
    name: SyncName,
    policy: Option<RolesPolicy>,
    every: Duration,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = round(&source, &target, &name, policy).await {
            tracing::warn!(error = %e, "could not bring large objects and roles in step; trying again");
        }
    }
}

/// One round on fresh sessions.
async fn round(
    source: &Endpoint,
    target: &Endpoint,
    name: &SyncName,
    policy: Option<RolesPolicy>,
) -> Result<Option<large_objects::Round>, String> {
    let (src, mut tgt) =
        tokio::try_join!(source.connect(), target.connect()).map_err(|e| e.to_string())?;
    round_on(&src, &mut tgt, name, policy).await
}

/// One round on the given sessions; also what `cutover` runs under the
/// fence, reading the source on the fence's own session (the only one
/// its lock on `pg_largeobject` lets read large objects). Returns the
/// large objects' round, when there are any on either side.
pub async fn round_on(
    src: &Client,
    tgt: &mut Client,
    name: &SyncName,
    policy: Option<RolesPolicy>,
) -> Result<Option<large_objects::Round>, String> {
    if policy == Some(RolesPolicy::Copy) {
        new_roles(src, tgt).await?;
    }
    let count: i64 = src
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(|e| format!("source: {}", describe(&e)))?
        .get(0);
    let on_target: i64 = tgt
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(|e| format!("target: {}", describe(&e)))?
        .get(0);
    if count == 0 && on_target == 0 {
        return Ok(None);
    }
    let tx = tgt
        .transaction()
        .await
        .map_err(|e| format!("target: {}", describe(&e)))?;
    let r = large_objects::make_equal(src, &tx, policy != Some(RolesPolicy::Skip))
        .await
        .map_err(|e| e.to_string())?;
    state::record_large_objects(&tx, name, r.total as i64)
        .await
        .map_err(|e| format!("target: {}", describe(&e)))?;
    tx.commit()
        .await
        .map_err(|e| format!("target: {}", describe(&e)))?;
    if r.copied + r.removed > 0 {
        tracing::info!(
            copied = r.copied,
            removed = r.removed,
            bytes = r.bytes,
            "large objects brought in step"
        );
    }
    Ok(Some(r))
}

/// Creates the roles the source's objects need that the target lacks.
async fn new_roles(src: &Client, tgt: &mut Client) -> Result<(), String> {
    let (inventory, view) = tokio::try_join!(
        async {
            Inventory::read(src)
                .await
                .map_err(|e| format!("source: {}", describe(&e)))
        },
        async {
            TargetView::read(&*tgt)
                .await
                .map_err(|e| format!("target: {}", describe(&e)))
        }
    )?;
    let plan = Plan::new(&inventory, &view, Some(RolesPolicy::Copy));
    if plan.create.is_empty() {
        return Ok(());
    }
    let database: String = tgt
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| format!("target: {}", describe(&e)))?
        .get(0);
    let tx = tgt
        .transaction()
        .await
        .map_err(|e| format!("target: {}", describe(&e)))?;
    for sql in roles::statements(&plan, &database, view.major) {
        tx.batch_execute(&sql)
            .await
            .map_err(|e| format!("target: {} ({})", describe(&e), roles::redacted(&sql)))?;
    }
    tx.commit()
        .await
        .map_err(|e| format!("target: {}", describe(&e)))?;
    let created: Vec<&str> = plan.create.iter().map(|r| r.name.as_str()).collect();
    tracing::info!(roles = %super::names(&created), "roles the source's objects came to need, created on the target");
    Ok(())
}

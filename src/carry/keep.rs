//! While streaming: every few seconds, what the stream does not carry is
//! brought in step — large objects (copied where they differ, removed
//! where the source removed them) and, with `--roles copy`, roles the
//! source's objects came to need since the copy (a GRANT to a new role is
//! replayed once the role exists). A round stands aside while a cutover
//! runs (see [`LOCK_KEY`]).

use std::time::Duration;

use tokio_postgres::{Client, GenericClient};

use super::{large_objects, roles, Plan, RolesPolicy, TargetView};
use crate::conn::error::describe;
use crate::conn::Endpoint;
use crate::progress::state;
use crate::source::inventory::Inventory;
use crate::sql::SyncName;

/// The advisory lock, on the target, that keeps the rounds and a cutover
/// apart: `(classid, objid)` = (`hashtext('pgrepl carry')`, `hashtext(the
/// sync's name)`), `$1` the name.
///
/// The rule: a cutover holds it (session level) from before its fence
/// until it ends; a round runs only with it (transaction level, tried,
/// never waited for) and skips otherwise. Without it a round reading the
/// source's large objects waits on the fence's lock there while holding
/// target locks the cutover's own round waits on: a deadlock across two
/// servers that neither detects.
const LOCK_KEY: &str = "pg_catalog.hashtext('pgrepl carry'), pg_catalog.hashtext($1)";

/// Takes the lock for a cutover on `client` (kept until the session
/// ends), waiting at most `wait` for a round that runs.
pub async fn hold_off(
    client: &Client,
    name: &SyncName,
    wait: Duration,
) -> Result<(), tokio_postgres::Error> {
    let timeout = format!("{}ms", wait.as_millis().max(1));
    client
        .execute(
            "SELECT pg_catalog.set_config('lock_timeout', $1, false)",
            &[&timeout],
        )
        .await?;
    let locked = client
        .execute(
            &format!("SELECT pg_catalog.pg_advisory_lock({LOCK_KEY})"),
            &[&name.as_str()],
        )
        .await;
    client.batch_execute("RESET lock_timeout").await?;
    locked.map(|_| ())
}

/// Takes the lock on `client` (kept until the session ends) if nobody
/// holds it: false when a cutover or a round has it.
pub async fn try_hold(client: &Client, name: &SyncName) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            &format!("SELECT pg_catalog.pg_try_advisory_lock({LOCK_KEY})"),
            &[&name.as_str()],
        )
        .await?
        .get(0))
}

/// The target session holding the lock (a cutover's, or a round's for a
/// moment), if one does. Reads `pg_locks` only: takes nothing.
pub async fn holder(
    client: &Client,
    name: &SyncName,
) -> Result<Option<i32>, tokio_postgres::Error> {
    crate::sql::advisory::holder(client, "pgrepl carry", name).await
}

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
        match round(&source, &target, &name, policy).await {
            Ok(Outcome::Busy) => {
                tracing::debug!("a cutover holds large objects and roles: round skipped")
            }
            Ok(Outcome::Done(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not bring large objects and roles in step; trying again")
            }
        }
    }
}

/// What one round did.
#[derive(Debug)]
pub enum Outcome {
    /// Someone else holds the lock (a cutover): nothing was done.
    Busy,
    /// Done; the large objects' round when there are any on either side.
    Done(Option<large_objects::Round>),
}

/// One round on fresh sessions.
async fn round(
    source: &Endpoint,
    target: &Endpoint,
    name: &SyncName,
    policy: Option<RolesPolicy>,
) -> Result<Outcome, String> {
    let (src, mut tgt) =
        tokio::try_join!(source.connect(), target.connect()).map_err(|e| e.to_string())?;
    round_on(&src, &mut tgt, name, policy, None).await
}

/// One round on the given sessions, in one target transaction that holds
/// the lock (see [`LOCK_KEY`]); also what `cutover` runs under the fence,
/// on the target session that holds the lock already, reading the source
/// on the fence's own session (the only one its lock on `pg_largeobject`
/// lets read large objects). `lock_timeout`: how long any target lock may
/// be waited for.
pub async fn round_on(
    src: &Client,
    tgt: &mut Client,
    name: &SyncName,
    policy: Option<RolesPolicy>,
    lock_timeout: Option<Duration>,
) -> Result<Outcome, String> {
    let target_err = |e: tokio_postgres::Error| format!("target: {}", describe(&e));
    let tx = tgt.transaction().await.map_err(target_err)?;
    if let Some(t) = lock_timeout {
        tx.execute(
            "SELECT pg_catalog.set_config('lock_timeout', $1, true)",
            &[&format!("{}ms", t.as_millis().max(1))],
        )
        .await
        .map_err(target_err)?;
    }
    let ours: bool = tx
        .query_one(
            &format!("SELECT pg_catalog.pg_try_advisory_xact_lock({LOCK_KEY})"),
            &[&name.as_str()],
        )
        .await
        .map_err(target_err)?
        .get(0);
    if !ours {
        return Ok(Outcome::Busy);
    }
    if policy == Some(RolesPolicy::Copy) {
        new_roles(src, &tx).await?;
    }
    let count: i64 = src
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(|e| format!("source: {}", describe(&e)))?
        .get(0);
    let on_target: i64 = tx
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(target_err)?
        .get(0);
    if count == 0 && on_target == 0 {
        tx.commit().await.map_err(target_err)?;
        return Ok(Outcome::Done(None));
    }
    let r = large_objects::make_equal(src, &tx, policy != Some(RolesPolicy::Skip))
        .await
        .map_err(|e| e.to_string())?;
    state::record_large_objects(&tx, name, r.total as i64)
        .await
        .map_err(target_err)?;
    tx.commit().await.map_err(target_err)?;
    if r.copied + r.removed > 0 {
        tracing::info!(
            copied = r.copied,
            removed = r.removed,
            bytes = r.bytes,
            "large objects brought in step"
        );
    }
    Ok(Outcome::Done(Some(r)))
}

/// Creates the roles the source's objects need that the target lacks, in
/// the round's transaction `tgt`.
async fn new_roles(src: &Client, tgt: &impl GenericClient) -> Result<(), String> {
    let (inventory, view) = tokio::try_join!(
        async {
            Inventory::read(src)
                .await
                .map_err(|e| format!("source: {}", describe(&e)))
        },
        async {
            TargetView::read(tgt)
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
    for sql in roles::statements(&plan, &database, view.major, view.superuser) {
        tgt.batch_execute(&sql)
            .await
            .map_err(|e| format!("target: {} ({})", describe(&e), roles::redacted(&sql)))?;
    }
    let created: Vec<&str> = plan.create.iter().map(|r| r.name.as_str()).collect();
    tracing::info!(roles = %super::names(&created), "roles the source's objects came to need, created on the target");
    Ok(())
}

//! A cutover that could not lift its own fence: killed (`kill -9`, out of
//! memory), its host gone, its connections cut. Its locking transaction
//! died with its session, but the lasting parts it had put up stay on the
//! source (the DDL fence's row, the read-only default of new sessions; the
//! tables' triggers too if it died between committing them and ending the
//! sync): the application's new sessions there can no longer write.
//!
//! `pgrepl status` names such a fence; running `pgrepl cutover` again
//! finishes the cutover over it; `pgrepl cutover --abandon` lifts it and
//! lets the sync go on.
//!
//! The rule: `--abandon` lifts a fence only when the sync was not cut over
//! (the target took over then, and lifting would let the application write
//! to both) and while it holds the sync's carry lock itself, so no cutover
//! runs meanwhile (a running cutover holds it from before its fence until
//! it ends, see `carry::keep`).

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use super::{fence, CutoverError};
use crate::conn::Endpoint;
use crate::lsn::Lsn;
use crate::sql::SyncName;

/// How long `--abandon` waits for the sync's lock: a round of large
/// objects and roles holds it for a moment, a cutover for as long as it
/// runs.
const LOCK_GRACE: Duration = Duration::from_secs(10);

/// A sync's status with what a cutover left standing: the JSON of
/// `pgrepl status --json` and of the `/status` page.
#[derive(Serialize)]
pub struct WithCutover<'a> {
    #[serde(flatten)]
    pub report: &'a crate::progress::status::StatusReport,
    pub cutover: &'a Standing,
}

/// What a cutover of a sync has left standing, for `status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Standing {
    /// The sync ended at a cutover there: the target took over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_over_at: Option<Lsn>,
    /// A pgrepl fence stands on the source (`None`: could not tell).
    pub source_fenced: Option<bool>,
    /// Since when, by the source's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced_since: Option<String>,
    /// The target session holding the sync's carry lock: a cutover's (or,
    /// for a moment, a round's of large objects and roles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_holder: Option<i32>,
}

impl Standing {
    /// Reads it; what cannot be read on the source is left unknown (a
    /// role that may not read the fence) rather than failing `status`.
    pub async fn read(src: &Client, tgt: &Client, name: &SyncName) -> Result<Self, CutoverError> {
        let cut_over_at = crate::control::cut_over_at(tgt, name)
            .await
            .map_err(|e| CutoverError::target("reading whether the sync was cut over", &e))?;
        let lock_holder = crate::carry::keep::holder(tgt, name)
            .await
            .map_err(|e| CutoverError::target("reading the sync's lock", &e))?;
        let (source_fenced, fenced_since) = match fence::is_fenced(src).await {
            Ok(true) => (Some(true), fence::since(src).await.ok().flatten()),
            Ok(false) => (Some(false), None),
            Err(e) => {
                tracing::debug!(error = %e, "could not tell whether the source is fenced");
                (None, None)
            }
        };
        Ok(Standing {
            cut_over_at,
            source_fenced,
            fenced_since,
            lock_holder,
        })
    }

    /// One line for `status`, when there is something to say.
    pub fn render(&self, name: &SyncName) -> Option<String> {
        let since = self
            .fenced_since
            .as_deref()
            .map(|s| format!(" since {s}"))
            .unwrap_or_default();
        if let Some(at) = self.cut_over_at {
            return Some(format!(
                "cutover: done at source LSN {at}: the target took over, nothing more is applied to it"
            ));
        }
        match (self.source_fenced, self.lock_holder) {
            (Some(true), Some(pid)) => Some(format!(
                "cutover: running, the source fenced{since} (the cutover's session on the target: pid {pid})"
            )),
            (Some(true), None) => Some(format!(
                "cutover: NOT FINISHED: the source is fenced{since} (new sessions read-only, DDL refused) and no cutover runs. Run `pgrepl cutover --name {name}` again to finish it, or `pgrepl cutover --name {name} --abandon` to lift the fence and sync on"
            )),
            _ => None,
        }
    }
}

/// What `--abandon` did.
#[derive(Debug)]
pub struct Abandoned {
    pub fence: Fence,
    /// What was removed of a way back (`--reverse`) the dead cutover had
    /// set up (its slot would hold the target's WAL for good), or why it
    /// could not be.
    pub way_back: Result<Vec<String>, CutoverError>,
}

/// The fence's part of it.
#[derive(Debug, PartialEq, Eq)]
pub enum Fence {
    /// A fence stood (since then, by the source's clock) and is gone;
    /// `lockers`: sessions of the dead cutover still holding table locks.
    Lifted {
        since: Option<String>,
        lockers: Vec<i32>,
    },
    /// No fence stood on the source.
    NothingStood,
}

/// Lifts the fence a cutover of `name` left on the source, and lets a
/// sync still holding for that cutover go on at once.
/// `way_back`: the name a way back set up by the dead cutover would have
/// (`NAME_r`, or a whole server's per-database name).
pub async fn abandon(
    name: &SyncName,
    way_back: Option<&SyncName>,
    source: &Endpoint,
    target: &Endpoint,
) -> Result<Abandoned, CutoverError> {
    let (src, tgt) = tokio::try_join!(source.connect(), target.connect())?;
    refuse_if_cut_over(&tgt, name).await?;
    // Held on a session of its own until this returns: no cutover starts
    // while the fence comes down.
    let lock = target.connect().await?;
    let started = Instant::now();
    loop {
        let ours = crate::carry::keep::try_hold(&lock, name)
            .await
            .map_err(|e| CutoverError::target("taking the sync's lock", &e))?;
        if ours {
            break;
        }
        if started.elapsed() >= LOCK_GRACE {
            let pid = crate::carry::keep::holder(&tgt, name)
                .await
                .map_err(|e| CutoverError::target("reading the sync's lock", &e))?
                .map(|p| p.to_string())
                .unwrap_or_else(|| "gone by now".into());
            return Err(CutoverError::Other(format!(
                "a cutover of sync {name} is running: its session on the target (pid {pid}) holds the sync's lock. Nothing was changed. Interrupt that cutover (Ctrl-C lifts its fence) or let it finish; if its process is gone, end that session on the target (SELECT pg_terminate_backend({pid})) and run --abandon again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Again, with the lock: a cutover that held it may have just finished.
    refuse_if_cut_over(&tgt, name).await?;
    if !fence::is_fenced(&src).await? {
        return Ok(Abandoned {
            fence: Fence::NothingStood,
            way_back: super::reverse::tear_down(name, way_back, source, target).await,
        });
    }
    let since = fence::since(&src).await.ok().flatten();
    let database = fence::database(&src).await?;
    fence::undo_persistent(&src, &database, &[]).await;
    if fence::is_fenced(&src).await? {
        return Err(CutoverError::Other(
            "source: the fence could not be lifted in full (the warnings above say which part): run `pgrepl cutover --abandon` again, or `pgrepl teardown --unfence`".into(),
        ));
    }
    // A sync still holding at the fence for the dead cutover would go on
    // by itself within the hold limit; it goes on now.
    crate::control::release_all(&tgt, name).await?;
    drop(lock);
    let lockers = table_lockers(&src)
        .await
        .map_err(|e| CutoverError::source("reading the source's locks", &e))?;
    // Last, once the fence is down: what failing here leaves is a slot,
    // never a fenced source.
    Ok(Abandoned {
        fence: Fence::Lifted { since, lockers },
        way_back: super::reverse::tear_down(name, way_back, source, target).await,
    })
}

/// Refuses once the sync was cut over (or is being ended at a fence).
async fn refuse_if_cut_over(tgt: &Client, name: &SyncName) -> Result<(), CutoverError> {
    match crate::control::cut_over_at(tgt, name)
        .await
        .map_err(|e| CutoverError::target("reading whether the sync was cut over", &e))?
    {
        Some(at) => Err(CutoverError::Other(format!(
            "sync {name} was cut over at {at}: the target took over there, and lifting the source's fence would let the application write to both. Nothing was changed. To move back, cut over the way back (`pgrepl cutover --name {name}_r`); to write to the old source anyway, `pgrepl teardown --name {name} --unfence`"
        ))),
        None => Ok(()),
    }
}

/// pgrepl sessions of the source database still holding a table in
/// EXCLUSIVE mode: a dead cutover's fence session that the server has not
/// noticed gone (its host lost, say); writes wait for it.
async fn table_lockers(src: &Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    Ok(src
        .query(
            "SELECT DISTINCT l.pid FROM pg_catalog.pg_locks l
               JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'relation' AND l.mode = 'ExclusiveLock' AND l.granted
                AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
                AND a.application_name = 'pgrepl' AND l.pid <> pg_catalog.pg_backend_pid()
              ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

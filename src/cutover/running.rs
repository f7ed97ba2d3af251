//! Which sync a cutover works with: the one streaming, one between two of
//! its sessions (waited for), or, when none runs at all, one it runs
//! itself until it is done.
//!
//! The rule: never a second sync beside a running one. A sync between
//! sessions has an idle slot but says it runs (`control::presence`); a
//! sync run here beside it would only contend with it for the slot.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::{CutoverError, CutoverRequest, ProgressMode};

/// The sync the cutover works with: the running one, or one it runs.
pub(super) enum Sync {
    Running,
    Own {
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    },
}

/// The running sync, or one started here when none runs.
pub(super) async fn start_sync(
    src: &Client,
    req: &CutoverRequest<'_>,
    interrupted: &mut watch::Receiver<bool>,
) -> Result<Sync, CutoverError> {
    // An active slot means a running sync (not waiting for it to settle:
    // one that just exited would not answer the hold request, which then
    // fails clearly after --wait).
    if slot_active(req).await? {
        return Ok(Sync::Running);
    }
    let tgt = req.target.connect().await?;
    let present = crate::control::presence::holder(&tgt, req.name)
        .await
        .map_err(|e| CutoverError::target("reading whether a sync runs", &e))?;
    if let Some(pid) = present {
        crate::say_err!(
            "The sync is running but not streaming at the moment (between two sessions; its target session is pid {pid}): waiting for it."
        );
        if streams_within_wait(req, &tgt, pid, interrupted).await? {
            return Ok(Sync::Running);
        }
    }
    crate::say_err!("No sync is running: running one here until the cutover is done.");
    let record = crate::progress::state::load_sync(&tgt, req.name)
        .await
        .map_err(|e| CutoverError::target("reading the sync", &e))?;
    let roles = record.as_ref().and_then(|r| r.roles);
    let ledger = record
        .map(|r| r.ledger)
        .unwrap_or_else(|| crate::progress::ledger::Ledger::Origin(req.name.origin()));
    let ddl = crate::ddl::capture::stored_selection(src, req.name)
        .await
        .map_err(|e| CutoverError::source("reading the DDL capture", &e))?
        .map(|selection| crate::ddl::replay::ReplayOptions {
            publication: req.name.publication().to_string(),
            selection,
            privileges: roles != Some(crate::carry::RolesPolicy::Skip),
            roles_follow: false,
            skip: Default::default(),
        });
    let (stop, stop_rx) = watch::channel(false);
    let (name, source, target) = (req.name.clone(), req.source.clone(), req.target.clone());
    let task = crate::progress::scope::spawn(async move {
        let _presence = crate::control::presence::Presence::hold(&target, &name).await;
        let request = crate::apply::session::StreamRequest {
            name: &name,
            source: &source,
            target: &target,
            until_caught_up: false,
            retry_for: Duration::from_secs(60),
            progress: ProgressMode::Lines,
            limits: Default::default(),
            ddl,
            skip_pgrepl_origins: false,
            ledger,
        };
        match crate::apply::session::run(&request, stop_rx).await {
            Ok(_) => {}
            // Another sync held at the fence and the cutover is done.
            Err(e @ crate::apply::session::SessionError::CutOver { .. }) => {
                tracing::debug!(error = %e, "the cutover's own sync did not stream");
            }
            Err(e) => tracing::error!(error = %e, "the cutover's own sync stopped"),
        }
    });
    Ok(Sync::Own { stop, task })
}

/// Waits, up to `--wait` and before anything is fenced, for the sync
/// between two sessions to stream (true; it serves the hold request
/// then), or to be gone (false: none runs now). The source may be
/// restarting meanwhile (often why the sync is between sessions): a
/// source that does not answer is asked again.
async fn streams_within_wait(
    req: &CutoverRequest<'_>,
    tgt: &Client,
    pid: i32,
    interrupted: &mut watch::Receiver<bool>,
) -> Result<bool, CutoverError> {
    let since = Instant::now();
    loop {
        let active = tokio::select! {
            r = slot_active(req) => r,
            _ = interrupted.changed() => return Err(CutoverError::Interrupted),
        };
        match active {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(CutoverError::Connect(e)) if e.failure.is_transient() => {
                tracing::debug!(error = %e, "the source does not answer; asking again");
            }
            Err(e) => return Err(e),
        }
        let still = crate::sql::advisory::holder(tgt, crate::sql::advisory::SYNC_RUNS, req.name)
            .await
            .map_err(|e| CutoverError::target("reading whether a sync runs", &e))?;
        if still.is_none() {
            crate::say_err!("The sync stopped while the cutover waited for it.");
            return Ok(false);
        }
        if since.elapsed() >= req.wait {
            return Err(CutoverError::NothingChanged(format!(
                "the sync runs (its target session is pid {pid}) but did not stream for {}: see why in its log, or stop it (if its process is gone, end that session: SELECT pg_terminate_backend({pid}) on the target), then cut over again",
                crate::progress::human_duration(req.wait)
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = interrupted.changed() => return Err(CutoverError::Interrupted),
        }
    }
}

/// Whether a session streams from the sync's slot.
async fn slot_active(req: &CutoverRequest<'_>) -> Result<bool, CutoverError> {
    let slot =
        crate::source::setup::slot_info(&req.source.decoder().connect().await?, &req.name.slot())
            .await
            .map_err(|e| CutoverError::Other(e.to_string()))?
            .ok_or_else(|| {
                CutoverError::Other(format!("source: slot {} is gone", req.name.slot()))
            })?;
    Ok(slot.active_pid.is_some())
}

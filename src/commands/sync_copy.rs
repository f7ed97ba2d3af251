//! The copy phase of `pgrepl sync`: a new copy, or one resumed after an
//! interruption (see `snapshot::resume`), gone on with under a new
//! snapshot for as long as `--retry-for` allows when a connection breaks
//! or a server restarts.
//!
//! The rule: once the copy is recorded on the target, nothing it copied is
//! thrown away on an interruption, a stop (Ctrl-C) or a failure; the next
//! run resumes it. Only a copy that cannot be resumed consistently (its
//! slot lost, the schema changed) is removed and started over, and only a
//! copy that failed before it was recorded is removed on failure.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::check::Preflight;
use crate::cli::SyncArgs;
use crate::conn::Endpoint;
use crate::progress::ledger::Ledger;
use crate::progress::state::{self, SyncPhase, SyncRecord};
use crate::progress::ui::ProgressMode;
use crate::snapshot::{self, pgdump, Copied, CopyRequest, Resumed};
use crate::source::selection::Selection;
use crate::source::setup;
use crate::sql::SyncName;

/// How the copy begins.
pub(super) enum CopyStart {
    Fresh,
    Resume(SyncRecord),
}

/// How the copy phase ended.
pub(super) enum CopyEnd {
    Copied(Copied),
    /// The interrupted copy cannot be resumed (why): start it over.
    StartOver(String),
    /// Stopped by a signal; what was copied is kept.
    Stopped(ExitCode),
}

/// What the copy is asked, from the arguments and the preflight; the
/// pg_dump it will use is found here, before anything is changed.
pub(super) fn request<'a>(
    args: &'a SyncArgs,
    preflight: &'a Preflight,
    selection: &'a Selection,
    (source, target): (&'a Endpoint, &'a Endpoint),
    ledger: Ledger,
    json_logs: bool,
) -> anyhow::Result<CopyRequest<'a>> {
    let pg_dump = match args.existing_schema {
        true => None,
        false => {
            let d = pgdump::find(args.pg_dump.as_deref(), preflight.source.major() as u32)?;
            tracing::info!(pg_dump = %d.path.display(), major = d.major, "schema from pg_dump");
            Some(d)
        }
    };
    let name = &args.endpoints.name;
    Ok(CopyRequest {
        name,
        source,
        target,
        source_facts: &preflight.source,
        target_facts: &preflight.target,
        selected: preflight.selected.as_ref().context("no table selection")?,
        selection,
        publication: name.publication(),
        existing_schema: args.existing_schema,
        pg_dump,
        jobs: args.jobs.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        chunk_bytes: args.chunk_size.min(i64::MAX as u64) as i64,
        binary: args.copy_format == crate::cli::CopyFormatChoice::Auto,
        progress: ProgressMode::detect(json_logs),
        retry_for: args.retry_for,
        carry: &preflight.carry,
        ledger,
        failover_slot: args.failover_slot,
    })
}

/// Runs the copy to its end, resuming it after transient failures.
pub(super) async fn copy(
    args: &SyncArgs,
    request: &CopyRequest<'_>,
    start: CopyStart,
    lost: &mut tokio::sync::watch::Receiver<Option<String>>,
) -> anyhow::Result<CopyEnd> {
    let (name, source, target) = (request.name, request.source, request.target);
    // One copy of a sync at a time: a second run would copy the same
    // tables beside it (the slot is not held while the copy runs).
    let _lock = lock(target, name).await?;
    let mut start = start;
    let mut failing_since: Option<Instant> = None;
    loop {
        let attempt_started = Instant::now();
        let attempt = async {
            match &start {
                CopyStart::Fresh => snapshot::run(request.clone()).await.map(Resumed::Copied),
                CopyStart::Resume(record) => match slot_unusable(source, name, record).await? {
                    Some(why) => Ok(Resumed::StartOver(why)),
                    None => snapshot::resume(request.clone(), record).await,
                },
            }
        };
        let result = tokio::select! {
            result = attempt => result,
            signal = super::shutdown_signal() => {
                let signal = signal?;
                if matches!(recorded(target, name).await, Recorded::Nothing) {
                    crate::say_err!("{signal}: stopping the copy and removing what it wrote");
                    abandon(source, target, name).await;
                } else {
                    crate::say_err!("{signal}: copy stopped; what is copied is kept: run `pgrepl sync` again to resume it, or `pgrepl teardown --name {name}` to remove it");
                }
                return Ok(CopyEnd::Stopped(ExitCode::from(130)));
            }
            reason = lost_reason(lost) => {
                abandon(source, target, name).await;
                bail!("{reason}; the partial copy was removed");
            }
        };
        let e = match result {
            Ok(Resumed::Copied(c)) => return Ok(CopyEnd::Copied(c)),
            Ok(Resumed::StartOver(why)) => return Ok(CopyEnd::StartOver(why)),
            Err(e) => e,
        };
        // A run that went on for a while made progress: --retry-for
        // counts from this failure.
        if attempt_started.elapsed() > Duration::from_secs(60) {
            failing_since = None;
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        let transient = e.is_transient();
        let record = if transient {
            recorded_within(target, name, since, args.retry_for).await
        } else {
            recorded(target, name).await
        };
        match record {
            Recorded::Copying(record) if transient && since.elapsed() < args.retry_for => {
                tracing::warn!(error = %e, "the copy was interrupted; resuming it under a new snapshot");
                crate::say_err!("The copy was interrupted ({e}); resuming it.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                start = CopyStart::Resume(record);
            }
            Recorded::Copying(_) | Recorded::Unknown => {
                return Err(anyhow::Error::new(e).context(format!(
                    "the copy stopped; what is copied is kept: {}run `pgrepl sync` again to resume it, or `pgrepl teardown --name {name}` to remove it",
                    if transient { "" } else { "fix the cause and " }
                )))
            }
            Recorded::Done => {
                return Err(anyhow::Error::new(e).context(
                    "the copy is recorded as done: run `pgrepl sync` again to stream",
                ))
            }
            Recorded::Nothing => {
                abandon(source, target, name).await;
                return Err(
                    anyhow::Error::new(e).context("the copy failed; what it had created was removed")
                );
            }
        }
    }
}

/// Takes the target's lock of this sync's copy for as long as the session
/// lives (a session-level advisory lock).
async fn lock(target: &Endpoint, name: &SyncName) -> anyhow::Result<tokio_postgres::Client> {
    let client = target.connect().await?;
    let got: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('pgrepl copy'), hashtext($1))",
            &[&name.as_str()],
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "target: taking the copy's lock: {}",
                crate::conn::error::describe(&e)
            )
        })?
        .get(0);
    if !got {
        bail!("target: another `pgrepl sync --name {name}` is copying into this database: stop it first (nothing was changed)");
    }
    Ok(client)
}

/// What the target says of the sync.
#[derive(Debug)]
enum Recorded {
    /// Its copy is recorded and not done: it can be resumed.
    Copying(SyncRecord),
    /// Its copy is done.
    Done,
    /// Not recorded at all.
    Nothing,
    /// The target did not answer.
    Unknown,
}

/// Why the sync's slot cannot carry a resumed copy, if it cannot.
async fn slot_unusable(
    source: &Endpoint,
    name: &SyncName,
    record: &SyncRecord,
) -> Result<Option<String>, snapshot::SnapshotError> {
    let decoder = source.decoder().connect().await?;
    Ok(
        match setup::settled_slot_info(&decoder, &name.slot()).await? {
            None => Some(format!("its slot {} is gone", name.slot())),
            Some(s) if s.lost => Some(format!("its slot {} lost WAL it needed", name.slot())),
            // The resume reads the changes since the copy began from it.
            Some(s) if s.confirmed_flush != record.consistent_lsn => Some(format!(
                "its slot {} is at {}, not where the copy began ({})",
                name.slot(),
                s.confirmed_flush,
                record.consistent_lsn
            )),
            Some(_) => None,
        },
    )
}

/// The sync's record on the target.
async fn recorded(target: &Endpoint, name: &SyncName) -> Recorded {
    let Ok(client) = target.connect().await else {
        return Recorded::Unknown;
    };
    match state::load_sync(&client, name).await {
        Ok(Some(r)) if r.phase == SyncPhase::Copying => Recorded::Copying(r),
        Ok(Some(_)) => Recorded::Done,
        Ok(None) => Recorded::Nothing,
        Err(_) => Recorded::Unknown,
    }
}

/// [`recorded`], asking until the target answers or `retry_for` since
/// `since` has passed.
async fn recorded_within(
    target: &Endpoint,
    name: &SyncName,
    since: Instant,
    retry_for: Duration,
) -> Recorded {
    loop {
        match recorded(target, name).await {
            Recorded::Unknown if since.elapsed() < retry_for => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            r => return r,
        }
    }
}

/// Waits until the WAL-safety watch finds the slot lost.
pub(super) async fn lost_reason(lost: &mut tokio::sync::watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = lost.borrow().clone() {
            return reason;
        }
        if lost.changed().await.is_err() {
            // The watch ended without finding it lost: never resolve.
            std::future::pending::<()>().await;
        }
    }
}

/// Best-effort removal of a copy that will not finish, on fresh sessions
/// (the ones the copy used may be broken).
pub(super) async fn abandon(source: &Endpoint, target: &Endpoint, name: &SyncName) {
    let result = async {
        let (src, tgt) = tokio::try_join!(source.connect(), target.connect())?;
        snapshot::discard(&source.decoder().connect().await?, &tgt, name).await?;
        setup::drop_publication(&src, &name.publication()).await?;
        crate::ddl::capture::remove(&src, name).await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        crate::say_err!("error: could not remove the partial copy ({e:#}): run `pgrepl teardown --name {name}` and drop the copied tables on the target");
    }
}

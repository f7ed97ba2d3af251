//! `pgrepl sync`: preflight, source setup, snapshot copy (`sync_copy`),
//! then streaming. A run that finds an interrupted copy resumes it; one
//! that finds a finished copy goes straight to streaming.

use std::process::ExitCode;

use anyhow::{bail, Context};

use super::sync_copy::{self, lost_reason, CopyEnd, CopyStart};
use crate::apply::applier::GroupLimits;
use crate::apply::session::{self, Outcome, StreamRequest};
use crate::carry::RolesPolicy;
use crate::check::{self, CheckOptions, Preflight};
use crate::cli::SyncArgs;
use crate::conn::Endpoint;
use crate::ddl::capture;
use crate::ddl::replay::ReplayOptions;
use crate::progress::ledger::Ledger;
use crate::progress::state::SyncPhase;
use crate::progress::ui::ProgressMode;
use crate::snapshot;
use crate::source::setup;

/// One database's sync (`server::sync` runs every database's).
pub async fn run(args: SyncArgs, json_logs: bool) -> anyhow::Result<ExitCode> {
    let (source, target) = super::endpoints(&args.endpoints)?;
    let name = args.endpoints.name.clone();
    crate::progress::telemetry::init(name.as_str()).set_phase("checking");
    // The listener first: a port in use fails the sync before it changes
    // anything.
    if let Some(addr) = args.listen {
        let server = crate::observe::http::bind(
            addr,
            crate::observe::http::Context {
                name: name.clone(),
                source: source.clone(),
                target: target.clone(),
                retry_for: args.retry_for,
                databases: Vec::new(),
            },
        )
        .await?;
        crate::progress::scope::spawn(server);
    }
    one(&args, &source, &target, json_logs).await
}

/// One database's sync: preflight, setup, copy, stream (`name`: the
/// sync's, from `args` or, in a whole-server move, the database's own).
pub(super) async fn one(
    args: &SyncArgs,
    source: &Endpoint,
    target: &Endpoint,
    json_logs: bool,
) -> anyhow::Result<ExitCode> {
    let name = args.endpoints.name.clone();
    let watch = crate::progress::telemetry::telemetry();
    let (source, target) = (source.clone(), target.clone());
    let (src, tgt) = tokio::try_join!(source.connect(), target.connect())?;
    // Said on the target for as long as this sync runs, between its
    // sessions too: a cutover or a verify then knows it runs while its
    // slot is idle.
    let _presence = crate::control::presence::Presence::hold(&target, &name).await;
    let opts = CheckOptions {
        name: name.clone(),
        selection: args.tables.selection(),
        existing_schema: args.existing_schema,
        ddl: !args.no_ddl,
        resuming: false,
        roles: args.roles.map(Into::into),
        failover_slot: args.failover_slot,
    };
    let mut preflight = check::run(&source, &target, &src, &tgt, &opts).await?;

    match preflight
        .existing
        .as_ref()
        .map(|r| (r.phase.clone(), r.started_at.clone()))
    {
        Some((SyncPhase::Copying, started)) => {
            let record = preflight.existing.clone().expect("matched Some above");
            refuse_on_errors(&preflight)?;
            crate::say!("A copy started at {started} was interrupted: resuming it.");
            let request = sync_copy::request(
                args,
                &preflight,
                &opts.selection,
                (&source, &target),
                record.ledger.clone(),
                json_logs,
            )?;
            let (wal_task, mut lost) = crate::observe::watch_wal(&source, &name, args.warn_wal);
            watch.set_phase("copying");
            let end = sync_copy::copy(args, &request, CopyStart::Resume(record), &mut lost).await?;
            match end {
                CopyEnd::Copied(copied) => {
                    let start = Resume {
                        roles: preflight.carry.policy,
                        wal: (wal_task, lost),
                    };
                    return after_copy(
                        args,
                        (&source, &target),
                        (&src, &tgt),
                        copied,
                        start,
                        json_logs,
                    )
                    .await;
                }
                CopyEnd::Stopped(code) => return Ok(code),
                CopyEnd::StartOver(why) => {
                    wal_task.abort();
                    crate::say!(
                        "The interrupted copy cannot be resumed ({why}): removing what it wrote and starting the copy over."
                    );
                    let gone = snapshot::discard(&source.decoder().connect().await?, &tgt, &name)
                        .await
                        .context("cleaning the interrupted copy")?;
                    tracing::info!(
                        slot_dropped = gone.slot,
                        target_cleaned = gone.target_objects,
                        "interrupted copy removed"
                    );
                    preflight = check::run(&source, &target, &src, &tgt, &opts).await?;
                }
            }
        }
        Some((phase, _)) => {
            let rec = preflight.existing.clone().expect("matched Some above");
            if args.copy_only {
                crate::say!(
                    "The copy of sync {name} is already done (phase {phase}, consistent LSN {}); nothing to copy.",
                    rec.consistent_lsn
                );
                return Ok(ExitCode::SUCCESS);
            }
            refuse_on_errors(&preflight)?;
            let start = Resume {
                roles: preflight.carry.policy,
                wal: crate::observe::watch_wal(&source, &name, args.warn_wal),
            };
            return stream(args, &source, &target, &src, &tgt, &start, json_logs).await;
        }
        None => {}
    }
    refuse_on_errors(&preflight)?;

    // Decided before anything is made; the sync keeps it (see
    // `progress::ledger`).
    let choice = match args.progress_table {
        true => crate::progress::ledger::Choice::Table,
        false => crate::progress::ledger::Choice::Auto,
    };
    let ledger = Ledger::choose(&tgt, &name, choice).await.map_err(|e| {
        anyhow::anyhow!(
            "target: reading function privileges: {}",
            crate::conn::error::describe(&e)
        )
    })?;
    if ledger == Ledger::Table {
        crate::say!("Exactly-once apply keeps its position in table pgrepl.applied on the target, written by the same transaction as the rows{}.", if args.progress_table { "" } else { " (this role may not call the replication-origin functions)" });
    }
    let request = sync_copy::request(
        args,
        &preflight,
        &opts.selection,
        (&source, &target),
        ledger,
        json_logs,
    )?;
    // A slot without state on the target is left by a run that died before
    // recording anything: nothing depends on it.
    if setup::drop_slot(
        &source.decoder().connect().await?,
        &name.slot(),
        name.as_str(),
    )
    .await?
    {
        tracing::warn!(slot = %name.slot(), "dropped a slot left by an interrupted run");
    }
    setup::drop_publication(&src, &name.publication()).await?;
    let mut extra = Vec::new();
    if !args.no_ddl {
        capture::install(&src, &name, &name.publication(), &opts.selection)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "source: installing DDL capture: {}",
                    crate::conn::error::describe(&e)
                )
            })?;
        // A superuser publishes the log with the tables; anyone else adds
        // it once the publication is theirs (see `capture::publish_log`).
        if preflight.source.is_superuser {
            extra.push(crate::sql::TableName::new("pgrepl", "schema_log"));
        }
    } else {
        capture::remove(&src, &name).await.map_err(|e| {
            anyhow::anyhow!(
                "source: removing DDL capture: {}",
                crate::conn::error::describe(&e)
            )
        })?;
    }
    setup::ensure_publication(
        &src,
        &name.publication(),
        &preflight.source,
        request.selected,
        // Only a superuser may publish FOR ALL TABLES: anyone else gets a
        // table list, which the DDL capture extends with new tables.
        opts.selection.is_everything() && preflight.source.is_superuser,
        &extra,
    )
    .await?;
    if !args.no_ddl && !preflight.source.is_superuser {
        capture::publish_log(&src, &name.publication())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "source: publishing the DDL log: {}",
                    crate::conn::error::describe(&e)
                )
            })?;
    }

    watch.set_phase("copying");
    let (wal_task, mut lost) = crate::observe::watch_wal(&source, &name, args.warn_wal);
    let copied = match sync_copy::copy(args, &request, CopyStart::Fresh, &mut lost).await? {
        CopyEnd::Copied(copied) => copied,
        CopyEnd::Stopped(code) => return Ok(code),
        CopyEnd::StartOver(why) => {
            bail!("the copy could not finish ({why}): run pgrepl sync again")
        }
    };
    let start = Resume {
        roles: preflight.carry.policy,
        wal: (wal_task, lost),
    };
    after_copy(
        args,
        (&source, &target),
        (&src, &tgt),
        copied,
        start,
        json_logs,
    )
    .await
}

/// The copy is done: its summary, then streaming (unless --copy-only).
async fn after_copy(
    args: &SyncArgs,
    (source, target): (&Endpoint, &Endpoint),
    (src, tgt): (&tokio_postgres::Client, &tokio_postgres::Client),
    copied: snapshot::Copied,
    start: Resume,
    json_logs: bool,
) -> anyhow::Result<ExitCode> {
    let name = &args.endpoints.name;
    crate::say!("{}", copied.summary);
    if args.copy_only {
        crate::say!(
            "Copy done as of source LSN {}. Slot {} now keeps the source's WAL from there: run `pgrepl sync` to stream, or `pgrepl teardown` to remove it.",
            copied.consistent_lsn,
            name.slot()
        );
        return Ok(ExitCode::SUCCESS);
    }
    stream(args, source, target, src, tgt, &start, json_logs).await
}

/// What streaming takes from the sync's record, and the WAL-safety watch.
struct Resume {
    roles: Option<RolesPolicy>,
    wal: (
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Receiver<Option<String>>,
    ),
}

/// Streams from the slot until stopped, caught up, or a fatal error.
async fn stream(
    args: &SyncArgs,
    source: &Endpoint,
    target: &Endpoint,
    src: &tokio_postgres::Client,
    tgt: &tokio_postgres::Client,
    start: &Resume,
    json_logs: bool,
) -> anyhow::Result<ExitCode> {
    let name = &args.endpoints.name;
    let roles = start.roles;
    if args.ddl_privileges {
        tracing::warn!("--ddl-privileges is obsolete: GRANT, REVOKE and ownership changes are replicated unless --roles skip");
    }
    let decoder = source.decoder().connect().await?;
    match setup::settled_slot_info(&decoder, &name.slot()).await? {
        None => bail!(
            "source: slot {} is gone, so the changes since the copy are lost: run `pgrepl teardown --name {name}`, empty the target, and sync again",
            name.slot()
        ),
        Some(s) if s.lost => bail!(
            "source: slot {} lost WAL it needed (max_slot_wal_keep_size?): the target cannot catch up; run `pgrepl teardown --name {name}` and sync again",
            name.slot()
        ),
        Some(s) => {
            if let Some(pid) = s.active_pid {
                bail!(
                    "source: slot {} is in use by process {pid}: is another `pgrepl sync --name {name}` running? Stop it first",
                    name.slot()
                );
            }
        }
    }
    let record = crate::progress::state::load_sync(tgt, name)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "target: reading pgrepl state: {}",
                crate::conn::error::describe(&e)
            )
        })?
        .with_context(|| format!("target: sync {name} is not recorded there"))?;
    ledger_usable(args, tgt, name, &record.ledger).await?;
    tracing::info!(ledger = %record.ledger, "exactly-once: the applied position is kept in the {}", record.ledger);
    // (That the source is the server the target was copied from, on its
    // timeline, is checked at every streaming session: `apply::guard`.)
    let exists: bool = src
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&name.publication().as_str()],
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "source: reading publications: {}",
                crate::conn::error::describe(&e)
            )
        })?
        .get(0);
    if !exists {
        bail!(
            "source: publication {} is gone: run `pgrepl teardown --name {name}` and sync again",
            name.publication()
        );
    }
    if setup::publish_partitions_as_themselves(src, &name.publication()).await? {
        tracing::warn!(publication = %name.publication(), "the publication published partitions through their root, which drops a TRUNCATE of one partition: it publishes them as themselves from now on");
    }
    let ddl_selection = match args.tables.selection() {
        s if !s.is_everything() => Some(s),
        _ => capture::stored_selection(src, name).await.ok().flatten(),
    };
    let ddl = capture::stored_selection(src, name)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "source: reading the DDL capture: {}",
                crate::conn::error::describe(&e)
            )
        })?
        .map(|selection| ReplayOptions {
            publication: name.publication().to_string(),
            selection,
            privileges: roles != Some(RolesPolicy::Skip),
            roles_follow: roles == Some(RolesPolicy::Copy),
            skip: args.skip_ddl.iter().copied().collect(),
        });
    if ddl.is_none() && !args.skip_ddl.is_empty() {
        bail!("--skip-ddl needs DDL capture, and sync {name} was set up with --no-ddl");
    }
    // What is watched says streaming no later than the target does.
    crate::progress::telemetry::telemetry().set_phase("streaming");
    crate::progress::state::set_phase(tgt, name, SyncPhase::Streaming)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "target: recording the phase: {}",
                crate::conn::error::describe(&e)
            )
        })?;

    crate::say!("Streaming changes (Ctrl-C to stop; `pgrepl sync` resumes where it stopped).");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut lost = start.wal.1.clone();
    let lost_stop = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let signals = {
        let lost_stop = lost_stop.clone();
        crate::progress::scope::spawn(async move {
            tokio::select! {
                signal = super::shutdown_signal() => {
                    if let Ok(signal) = signal {
                        crate::say_err!("{signal}: finishing the current transaction and stopping");
                    }
                }
                reason = lost_reason(&mut lost) => {
                    if let Ok(mut l) = lost_stop.lock() {
                        *l = Some(reason);
                    }
                }
            }
            let _ = stop_tx.send(true);
        })
    };
    let request = StreamRequest {
        name,
        source,
        target,
        until_caught_up: args.until_caught_up,
        retry_for: args.retry_for,
        progress: ProgressMode::detect(json_logs),
        limits: GroupLimits::default(),
        ddl,
        skip_pgrepl_origins: record.reverse_of.is_some(),
        ledger: record.ledger.clone(),
    };
    let excluded: Vec<u32> = crate::source::catalog::list_tables(src)
        .await
        .map(|all| {
            let selection = ddl_selection.clone().unwrap_or_default();
            all.into_iter()
                .filter(|t| !selection.selects(t.top()))
                .map(|t| t.oid)
                .collect()
        })
        .unwrap_or_default();
    let behind = std::sync::Arc::new(crate::sequences::keep::Behind::default());
    let sequences = crate::progress::scope::spawn(crate::sequences::keep_ahead(
        source.clone(),
        target.clone(),
        excluded,
        args.sequence_interval,
        behind,
    ));
    let carrying = crate::progress::scope::spawn(crate::carry::keep::in_step(
        source.clone(),
        target.clone(),
        name.clone(),
        roles,
        args.carry_interval,
    ));
    let outcome = session::run(&request, stop_rx).await;
    sequences.abort();
    carrying.abort();
    signals.abort();
    start.wal.0.abort();
    let lost = lost_stop.lock().ok().and_then(|l| l.clone());
    if let Some(reason) = lost {
        bail!("{reason}");
    }
    let watch = crate::progress::telemetry::telemetry();
    watch.set_phase(match &outcome {
        Ok(Outcome::Finished { .. }) => "cut over",
        Ok(_) => "stopped",
        Err(_) => "failed",
    });
    match outcome? {
        Outcome::Stopped { flushed } => {
            crate::say!("Stopped. The target holds the source's changes through LSN {flushed} (durable); `pgrepl sync` resumes from there.");
        }
        Outcome::CaughtUp { target, flushed } => {
            crate::say!("Caught up: everything the source had written at {target} is applied (durable through {flushed}).");
        }
        Outcome::Finished { at, flushed } => {
            crate::say!("Cut over: every source transaction before the fence at {at} is applied (durable through {flushed}); this sync is done.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A sync keeps the ledger it started with: refused when `--progress-table`
/// asks for another, or when its origin may no longer be used.
async fn ledger_usable(
    args: &SyncArgs,
    tgt: &tokio_postgres::Client,
    name: &crate::sql::SyncName,
    ledger: &Ledger,
) -> anyhow::Result<()> {
    let Ledger::Origin(origin) = ledger else {
        return Ok(());
    };
    if args.progress_table {
        bail!(
            "sync {name} keeps its applied position in replication origin {origin} (decided when it started): run it without --progress-table, or `pgrepl teardown --name {name}` and sync again"
        );
    }
    let lacking = crate::progress::ledger::origins_allowed(tgt)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "target: reading function privileges: {}",
                crate::conn::error::describe(&e)
            )
        })?;
    if !lacking.is_empty() {
        bail!(
            "target: sync {name} keeps its applied position in replication origin {origin}, but this role may no longer execute {}: as a superuser, GRANT EXECUTE ON FUNCTION {} TO the role (nothing was applied)",
            lacking.join(", "),
            lacking.join(", ")
        );
    }
    Ok(())
}

fn refuse_on_errors(preflight: &Preflight) -> anyhow::Result<()> {
    if preflight.report.has_errors() {
        eprint!(
            "{}",
            preflight.report.render(crate::logging::terminal_width())
        );
        bail!(
            "preflight found {} error(s); nothing was changed",
            preflight.report.errors()
        );
    }
    Ok(())
}

//! `cutover`: a migration finished in one command. In order, each step
//! timed: the sync's lag under the limits; the fence on the source (see
//! `fence`); the fence LSN; the sync applying exactly through it and
//! holding, durable; every sequence set exactly to the source's; `verify`
//! under the fence if asked; the way back set up if asked (`reverse`);
//! then the fence handed over to its lasting part, the sync ended, and
//! "the target is ready".
//!
//! The rule: until the target is declared ready, every failure (and
//! Ctrl-C) lifts the fence and lets the sync go on as before, saying why in
//! one line; nothing is half done. The write downtime is measured from the
//! fence standing to the target ready.
//!
//! Without a running sync, the cutover runs one itself, in this process,
//! for as long as it takes.

pub mod abandon;
mod already;
mod error;
pub mod fence;
pub mod reverse;
mod running;
mod sessions;
pub mod together;

pub use error::CutoverError;

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::carry::keep::Outcome;
use crate::conn::error::describe;
use crate::conn::Endpoint;
use crate::control::{Listener, Request, Requester, State};
use crate::lsn::Lsn;
use crate::progress::ui::ProgressMode;
use crate::source::catalog::{self, SelectedTables};
use crate::source::selection::Selection;
use crate::sql::{SyncName, TableName};
use crate::verify::{self, VerifyRequest};
use already::{already_cut_over, ended};

/// What to cut over and how.
pub struct CutoverRequest<'a> {
    pub name: &'a SyncName,
    pub source: &'a Endpoint,
    pub target: &'a Endpoint,
    pub selection: Option<Selection>,
    pub max_lag_bytes: u64,
    pub max_lag_time: Duration,
    pub wait: Duration,
    pub terminate: bool,
    pub verify: bool,
    pub reverse: bool,
    pub jobs: usize,
    pub progress: ProgressMode,
    /// With other databases' cutovers, as one (`--all-databases`).
    pub together: Option<std::sync::Arc<together::Together>>,
    /// The way back's sync name (default `NAME_r`).
    pub reverse_as: Option<SyncName>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: String,
    pub ms: u64,
}

/// What a finished cutover reports.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub fence_lsn: Lsn,
    /// From the fence standing to the target ready.
    pub write_downtime_ms: u64,
    pub total_ms: u64,
    pub steps: Vec<Step>,
    pub sequences_set: usize,
    pub verified: bool,
    /// The reverse sync, when `--reverse` set one up.
    pub reverse: Option<String>,
}

struct Steps {
    list: Vec<Step>,
    at: Instant,
}

impl Steps {
    fn done(&mut self, step: &str) {
        let ms = self.at.elapsed().as_millis() as u64;
        tracing::info!(step, ms, "cutover step done");
        crate::say_err!("  {step:<44} {:>7} ms", ms);
        self.list.push(Step {
            step: step.into(),
            ms,
        });
        self.at = Instant::now();
    }
}

/// Cuts over; `interrupted` turns true on Ctrl-C. With other databases
/// (`req.together`), any failure here is theirs too.
pub async fn run(
    req: &CutoverRequest<'_>,
    interrupted: watch::Receiver<bool>,
) -> Result<Summary, CutoverError> {
    let result = run_alone(req, interrupted).await;
    match (&result, &req.together) {
        // Cut over by an earlier run: the others go on without it.
        (Err(CutoverError::AlreadyCutOver { .. }), Some(t)) => t.done_before(),
        (Err(_), Some(t)) => t.fail(&req.target.config.dbname),
        _ => {}
    }
    result
}

async fn run_alone(
    req: &CutoverRequest<'_>,
    interrupted: watch::Receiver<bool>,
) -> Result<Summary, CutoverError> {
    let started = Instant::now();
    let (src, tgt) = tokio::try_join!(req.source.connect(), req.target.connect())?;
    let record = crate::progress::state::load_sync(&tgt, req.name)
        .await
        .map_err(|e| CutoverError::target("reading pgrepl state", &e))?
        .ok_or_else(|| {
            CutoverError::Other(format!(
                "target: no sync {} is recorded here: check --target and --name",
                req.name
            ))
        })?;
    if record.phase != crate::progress::state::SyncPhase::Streaming
        && record.phase != crate::progress::state::SyncPhase::Copied
    {
        return Err(CutoverError::Other(format!(
            "sync {} is {}: a cutover needs its copy done",
            req.name, record.phase
        )));
    }
    already_cut_over(req, &record, &tgt).await?;
    // The sync's rounds for large objects and roles stand aside (a round
    // running ends first; see `carry::keep`), and no other cutover of it
    // runs, for as long as this session lives.
    let mut carry = req.target.connect().await?;
    if let Err(e) = crate::carry::keep::hold_off(&carry, req.name, req.wait).await {
        let holder = crate::carry::keep::holder(&tgt, req.name)
            .await
            .ok()
            .flatten();
        return Err(CutoverError::NothingChanged(format!(
            "target: another cutover of sync {} runs, or the sync's round of large objects and roles did not end in time ({}{}): nothing was changed; try again, or raise --wait",
            req.name,
            describe(&e),
            holder.map(|p| format!("; the lock's holder is pid {p}")).unwrap_or_default()
        )));
    }
    // Again, with the lock: a cutover that held it may have just finished.
    already_cut_over(req, &record, &tgt).await?;
    // A fence standing already, no other cutover running: one before this
    // died under it (see `abandon`). This one takes it over, and lifts it
    // too if it fails without having ended the sync.
    let leftover = fence::is_fenced(&src).await?;
    if leftover {
        crate::say_err!(
            "The source is fenced already by a cutover that did not finish: this cutover takes the fence over."
        );
    }
    let result = fenced_run(req, &src, &tgt, &mut carry, interrupted, started).await;
    let Err(e) = result else { return result };
    if ended(&tgt, req.name).await {
        // The sync ended at the fence: it stands, whatever failed after.
        let stands = !matches!(fence::is_fenced(&src).await, Ok(false));
        return Err(match e {
            e @ (CutoverError::AfterFence(_) | CutoverError::AlreadyCutOver { .. }) => e,
            e if stands => CutoverError::AfterFence(Box::new(e)),
            e => e,
        });
    }
    // Not ended: the fence comes down (this run's own was lifted where it
    // failed; one it took over comes down here).
    let e = match e {
        CutoverError::AfterFence(inner) if leftover => *inner,
        e => e,
    };
    if leftover {
        fence::lift_what_stands(req.source).await;
    }
    // A way back set up for a cutover that did not happen (by this run, or
    // one that died) would hold the target's WAL for good.
    if req.reverse || leftover {
        let way_back = match &req.reverse_as {
            Some(n) => Some(n.clone()),
            None => reverse::name_of(req.name).ok(),
        };
        reverse::tear_down_or_warn(req.name, way_back.as_ref(), req.source, req.target).await;
    }
    Err(e)
}

/// The cutover once no other one runs (`carry` holds the sync's lock).
async fn fenced_run(
    req: &CutoverRequest<'_>,
    src: &Client,
    tgt: &Client,
    carry: &mut Client,
    mut interrupted: watch::Receiver<bool>,
    started: Instant,
) -> Result<Summary, CutoverError> {
    let mut steps = Steps {
        list: Vec::new(),
        at: Instant::now(),
    };
    let tables = synced_tables(src, req).await?;
    if req.reverse {
        reverse::check(req).await?;
    }
    // The sync holds for this cutover as long as the cutover takes (a
    // verify, the other databases of a set): it says it is still there,
    // for the requests it makes from here on.
    let since = crate::control::now(tgt).await?;
    let sync = running::start_sync(src, req, &mut interrupted).await?;
    let result = tokio::select! {
        r = cut_over(req, src, tgt, carry, &tables, &mut steps, started) => r,
        _ = interrupted.changed() => Err(CutoverError::Interrupted),
        () = crate::control::still_here(tgt, req.name, &since) => unreachable!("still_here runs until dropped"),
    };
    if matches!(result, Err(CutoverError::Interrupted)) && !ended(tgt, req.name).await {
        // Cut short anywhere before the sync was ended at the fence:
        // whatever of the fence stands comes down, and a sync holding for
        // it applies on.
        fence::lift_what_stands(req.source).await;
        if let Err(e) = crate::control::release_all(tgt, req.name).await {
            tracing::warn!(error = %e, "could not release the sync: it goes on by itself within 30 s");
        }
    }

    match (result, sync) {
        (Ok(summary), running::Sync::Own { stop, task }) => {
            // The sync that held at the fence has ended. Ours did, or it
            // never got to stream (a sync between two sessions looked
            // absent, and it was the one that held): either way it stops
            // now, and the record of the cutover keeps it from starting
            // another session.
            let _ = stop.send(true);
            let _ = task.await;
            Ok(summary)
        }
        (Ok(summary), running::Sync::Running) => Ok(summary),
        (Err(e), sync) => {
            if let running::Sync::Own { stop, task } = sync {
                let _ = stop.send(true);
                let _ = task.await;
            }
            Err(e)
        }
    }
}

/// The sync's tables as the source has them now (roots and partitions).
async fn synced_tables(
    src: &Client,
    req: &CutoverRequest<'_>,
) -> Result<Vec<TableName>, CutoverError> {
    let selection = match &req.selection {
        Some(s) => s.clone(),
        None => crate::ddl::capture::stored_selection(src, req.name)
            .await
            .map_err(|e| CutoverError::source("reading the sync's selection", &e))?
            .unwrap_or_default(),
    };
    let all = catalog::list_tables(src)
        .await
        .map_err(|e| CutoverError::source("listing tables", &e))?;
    let selected = SelectedTables::choose(all, &selection)
        .map_err(|errors| CutoverError::Other(SelectedTables::one_line(&errors)))?;
    Ok(selected.names().cloned().collect())
}

async fn lag(
    src: &Client,
    decoder: Option<&Client>,
    tgt: &Client,
    name: &SyncName,
) -> Result<(u64, f64), CutoverError> {
    let r = crate::progress::status::report(src, decoder, tgt, name)
        .await
        .map_err(|e| CutoverError::Other(e.to_string()))?;
    Ok((
        r.lag_bytes.unwrap_or(u64::MAX),
        r.lag_seconds.unwrap_or(0.0),
    ))
}

async fn cut_over(
    req: &CutoverRequest<'_>,
    src: &Client,
    tgt: &Client,
    carry: &mut Client,
    tables: &[TableName],
    steps: &mut Steps,
    started: Instant,
) -> Result<Summary, CutoverError> {
    // 1. The lag under the limits.
    let waiting = Instant::now();
    let decoder = req.source.connect_decoder().await?;
    loop {
        let (bytes, secs) = lag(src, decoder.as_ref(), tgt, req.name).await?;
        if bytes <= req.max_lag_bytes && secs <= req.max_lag_time.as_secs_f64() {
            break;
        }
        tracing::info!(
            lag_bytes = bytes,
            lag_seconds = secs,
            "waiting for the sync's lag to come under --max-lag / --max-lag-time"
        );
        if waiting.elapsed() >= req.wait {
            return Err(CutoverError::Lag {
                lag: format!("{} / {:.1} s", crate::progress::human_bytes(bytes), secs),
                waited: req.wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    steps.done("lag under the limits");
    if let Some(t) = &req.together {
        t.all_close()
            .await
            .map_err(|e| CutoverError::Other(e.to_string()))?;
    }

    // 2. The fence (the sync's rounds stand aside already: `carry`
    // holds their lock), and its LSN.
    // Sessions that could write past the fence (see `sessions`): without
    // --terminate, they must end before it goes up.
    if !req.terminate {
        sessions::wait_gone(src, None, req.wait).await?;
    }
    let mut fence = fence::put_up(req.source, tables, req.wait, req.terminate).await?;
    if let Some(t) = &req.together {
        // Every database fenced before any fence LSN is taken (see
        // `together`).
        let all = t.all_fenced().await;
        let lsn = match all {
            Ok(()) => fence.take_lsn_again(req.source).await,
            Err(e) => Err(CutoverError::Other(e.to_string())),
        };
        if let Err(e) = lsn {
            fence.lift(req.source).await;
            return Err(e);
        }
    }
    let fenced_at = fence.since;
    let fence_lsn = fence.lsn;
    steps.done(&format!("source fenced at {}", fence.lsn));
    let outcome = under_fence(req, src, tgt, carry, &fence, steps).await;
    match outcome {
        Ok((mut held, sequences_set, verified, reverse)) => {
            // Every database's target ready before any fence lasts.
            if let Some(t) = &req.together {
                if let Err(e) = t.all_ready().await {
                    fence.lift(req.source).await;
                    let _ = held.set(&State::Released).await;
                    return Err(CutoverError::Other(e.to_string()));
                }
            }
            // The sync still holds at the fence (it would have gone on by
            // itself had this cutover been silent too long).
            match held.state().await {
                Ok(State::Held { .. }) => {}
                other => {
                    fence.lift(req.source).await;
                    let _ = held.set(&State::Released).await;
                    return Err(CutoverError::Other(format!(
                        "the sync no longer holds at the fence ({}): nothing was cut over",
                        match other {
                            Ok(s) => format!("{s:?}"),
                            Err(e) => e.to_string(),
                        }
                    )));
                }
            }
            // 7. The fence's lasting part takes over; the sync ends. From
            // here a failure leaves the fence standing (see `AfterFence`).
            let after = |e: CutoverError| CutoverError::AfterFence(Box::new(e));
            fence.commit().await.map_err(after)?;
            // Only while it still holds: a sync that went on by itself
            // (its hold expired) must not be recorded as ended here.
            if !held.end_if_held().await.map_err(|e| after(e.into()))? {
                return Err(after(CutoverError::Other(
                    "the sync went on by itself before it could be ended at the fence (its hold expired)".into(),
                )));
            }
            held.wait(Duration::from_secs(30), "the sync did not end", |s| {
                matches!(s, State::Done { .. }).then_some(())
            })
            .await
            .map_err(|e| after(e.into()))?;
            if fence::is_fenced(tgt).await.map_err(after)? {
                // Cutting back: the old source becomes the primary again.
                let db = fence::database(tgt).await.map_err(after)?;
                fence::undo_persistent(tgt, &db, &[]).await;
            }
            steps.done("sync ended, target ready");
            Ok(Summary {
                fence_lsn,
                write_downtime_ms: fenced_at.elapsed().as_millis() as u64,
                total_ms: started.elapsed().as_millis() as u64,
                steps: steps.list.clone(),
                sequences_set,
                verified,
                reverse,
            })
        }
        Err((e, held)) => {
            fence.lift(req.source).await;
            if let Some(h) = held {
                let _ = h.set(&State::Released).await;
            }
            Err(e)
        }
    }
}

type Held<'a> = Requester<'a>;

/// Steps 3 to 6, the fence standing; `carry`: the target session holding
/// the carry lock. On error, also the request to release (if the sync
/// holds already).
async fn under_fence<'a>(
    req: &CutoverRequest<'_>,
    src: &Client,
    tgt: &'a Client,
    carry: &mut Client,
    fence: &fence::Fence,
    steps: &mut Steps,
) -> Result<(Held<'a>, usize, bool, Option<String>), (CutoverError, Option<Held<'a>>)> {
    // 3. The sync applies exactly through the fence, and holds.
    let listener = Listener::start(req.target)
        .await
        .map_err(|e| (e.into(), None))?;
    let mut held = Requester::send(tgt, listener, req.name, &Request::HoldAt { lsn: fence.lsn })
        .await
        .map_err(|e| (e.into(), None))?;
    let r = held
        .wait(
            req.wait,
            "the sync did not reach the fence in time",
            |s| match s {
                State::Held { at, .. } => Some(*at),
                _ => None,
            },
        )
        .await;
    if let Err(e) = r {
        return Err((e.into(), Some(held)));
    }
    let durable = match crate::progress::state::ledger_of(tgt, req.name).await {
        Ok(ledger) => ledger.make_durable(tgt, req.name).await,
        Err(e) => Err(e),
    };
    if let Err(e) = durable {
        return Err((
            CutoverError::target("making the target durable", &e),
            Some(held),
        ));
    }
    steps.done("target applied through the fence, durable");

    // 4. Sequences, exactly, once no session can move one any more.
    let cleared = match req.terminate {
        true => sessions::terminate(src, &fence.read_only_since, req.wait)
            .await
            .map(|n| {
                if n > 0 {
                    steps.done(&format!("{n} other session(s) ended (--terminate)"));
                }
            }),
        false => sessions::wait_gone(src, Some(&fence.read_only_since), Duration::ZERO).await,
    };
    if let Err(e) = cleared {
        return Err((e, Some(held)));
    }
    let set = async {
        let values = crate::sequences::read(src, &[])
            .await
            .map_err(|e| CutoverError::source("reading sequences", &e))?;
        crate::sequences::apply(tgt, &values)
            .await
            .map_err(|e| CutoverError::target("setting sequences", &e))
    }
    .await;
    let sequences_set = match set {
        Ok(n) => n,
        Err(e) => return Err((e, Some(held))),
    };
    steps.done(&format!("{sequences_set} sequence(s) set exactly"));

    // 4b. What the stream does not carry: roles the objects came to need,
    // large objects (the fence locks pg_largeobject and its metadata, so
    // this is exact), on the session holding the carry lock; a target lock
    // in the way waits --wait at most.
    let policy = match crate::progress::state::load_sync(tgt, req.name).await {
        Ok(r) => r.and_then(|r| r.roles),
        Err(e) => return Err((CutoverError::target("reading the sync", &e), Some(held))),
    };
    let carried =
        crate::carry::keep::round_on(fence.session(), carry, req.name, policy, Some(req.wait));
    match carried.await {
        Ok(Outcome::Done(Some(lo))) => steps.done(&format!("{} large object(s) exact", lo.total)),
        Ok(Outcome::Done(None)) => {}
        Ok(Outcome::Busy) => {
            return Err((
                CutoverError::Other(
                    "target: another session holds the carry lock of this sync (another cutover?)"
                        .into(),
                ),
                Some(held),
            ))
        }
        Err(e) => {
            return Err((
                CutoverError::Other(format!("bringing large objects and roles in step: {e}")),
                Some(held),
            ))
        }
    }

    // 5. Verify, with nothing moving.
    let mut verified = false;
    if req.verify {
        let vreq = VerifyRequest {
            name: req.name,
            source: req.source,
            target: req.target,
            selection: req.selection.clone(),
            jobs: req.jobs,
            chunk_rows: 100_000,
            mode: verify::Mode::Fenced(fence.lsn),
            wait: req.wait,
            progress: req.progress,
        };
        match verify::run(&vreq).await {
            Ok(report) if report.equal => verified = true,
            Ok(report) => return Err((CutoverError::Differs(report.render()), Some(held))),
            Err(e) => return Err((e.into(), Some(held))),
        }
        steps.done("verified equal under the fence");
    }

    // 6. The way back.
    let reverse = if req.reverse {
        match reverse::set_up(req).await {
            Ok(name) => {
                steps.done(&format!("way back ready: sync {name}"));
                Some(name.to_string())
            }
            Err(e) => return Err((e, Some(held))),
        }
    } else {
        None
    };
    Ok((held, sequences_set, verified, reverse))
}

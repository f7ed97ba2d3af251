//! Streaming sessions: an apply connection (holding the replication origin
//! when the sync's ledger is one), a walsender stream starting at the
//! ledger's durable position, the applier between them, and a flush
//! watcher that tells the source what the target made durable. A session
//! that breaks for a transient reason (a server restarting, a dropped
//! connection) is replaced, with backoff, until `--retry-for` has passed
//! without success; each new session resumes from the ledger, so nothing
//! is applied twice or skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::Instrument;

use super::applier::Applier;
use super::error::{ApplyError, TxnRef};
use super::event_loop::{Ended, EventLoop};
use super::live::{LiveStatus, StatusSource};
pub use super::request::{Outcome, SessionError, StreamRequest};
use super::resent::Resend;
use super::router::{Router, StreamContext, APPLY_SETTINGS};
use super::shared::Shared;
use crate::conn::error::describe;
use crate::conn::raw::RawSession;
use crate::conn::walsender::WalSender;
use crate::conn::{Endpoint, Side};
use crate::lsn::Lsn;
use crate::progress::ledger::{Ledger, TableFlush};
use crate::sql::quote_literal;
use crate::sql::SyncName;
use crate::stream::receiver::{Feedback, Receiver};

/// Streams until stopped (`stop` turns true), caught up, or a fatal error.
pub async fn run(
    req: &StreamRequest<'_>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, SessionError> {
    let until = if req.until_caught_up {
        let src = req.source.connect().await?;
        // The insert position: commits made with synchronous_commit off
        // and not yet written count as written (they stream once the WAL
        // writer flushes them).
        let lsn: Lsn = src
            .query_one("SELECT pg_current_wal_insert_lsn()", &[])
            .await
            .map_err(|e| SessionError::Target {
                what: "reading the source position",
                message: describe(&e),
                transient: true,
            })?
            .get(0);
        tracing::info!(%lsn, "will stop once the target has applied everything up to here");
        Some(lsn)
    } else {
        None
    };
    let status = LiveStatus::start(req.progress, req.source.clone(), until);
    let paths = Arc::new(super::paths::Totals::default());
    let result = retrying(req, &mut stop, until, &status, &paths).await;
    for (table, counts) in paths.snapshot() {
        tracing::debug!(%table, %counts, "apply paths");
    }
    tracing::debug!(
        grouped_txns = paths.grouped_txns.load(Ordering::Relaxed),
        large_txns = paths.large_txns.load(Ordering::Relaxed),
        "apply groups"
    );
    result
}

/// Sessions, one after the other, until one ends the run.
async fn retrying(
    req: &StreamRequest<'_>,
    stop: &mut watch::Receiver<bool>,
    until: Option<Lsn>,
    status: &LiveStatus,
    paths: &Arc<super::paths::Totals>,
) -> Result<Outcome, SessionError> {
    let mut failing_since: Option<Instant> = None;
    let mut attempt: u32 = 0;
    let mut plan = Plan {
        ungroup: Lsn::ZERO,
        unbatched: Vec::new(),
        stream_large: true,
    };
    loop {
        let started = Instant::now();
        let result = session(req, stop, until, status, &plan, paths).await;
        match result {
            Ok(outcome) => {
                status.finish();
                return Ok(outcome);
            }
            // A conflict rolled back whole transactions that came before it
            // in the same target transaction (or a batch failed): replay up
            // to it one source transaction at a time, without batching, so
            // the sync stops exactly at it, naming the row.
            Err(SessionError::Apply(e)) if e.grouped_stop().is_some_and(|t| plan.replan(t)) => {
                tracing::info!(error = %e, "error inside a group or a batch; replaying without them up to it");
            }
            Err(SessionError::Apply(e @ ApplyError::StreamLockWait { .. }))
                if plan.stream_large =>
            {
                tracing::warn!(error = %e, "streaming of large transactions turned off for this run");
                plan.stream_large = false;
            }
            Err(e) if e.is_transient() => {
                // A session that ran a while was a success: start counting again.
                if started.elapsed() > Duration::from_secs(30) {
                    failing_since = None;
                    attempt = 0;
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= req.retry_for {
                    status.finish();
                    return Err(SessionError::GaveUp {
                        after: crate::progress::human_duration(since.elapsed()),
                        last: Box::new(e),
                    });
                }
                attempt += 1;
                let backoff = Duration::from_millis(250 * 2u64.pow(attempt.min(7)))
                    .min(Duration::from_secs(30))
                    .min(req.retry_for.saturating_sub(since.elapsed()));
                crate::progress::telemetry::telemetry().retrying(e.kind());
                tracing::warn!(
                    sync = %req.name,
                    phase = "streaming",
                    lsn = %status.flushed(),
                    kind = e.kind(),
                    error = %e,
                    retry_in = ?backoff,
                    "streaming interrupted; resuming from the target's position"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {
                        status.finish();
                        return Ok(Outcome::Stopped { flushed: status.flushed() });
                    }
                }
            }
            Err(e) => {
                status.finish();
                return Err(e);
            }
        }
    }
}

/// How the next session applies, after what earlier ones ran into.
struct Plan {
    /// Source transactions ending at or before this commit on their own.
    ungroup: Lsn,
    /// Streamed transactions applied without batching.
    unbatched: Vec<u32>,
    /// Ask the source to stream large transactions while in progress.
    stream_large: bool,
}

impl Plan {
    /// Replays up to `txn` without grouping or batching; false when that
    /// was already the plan (then the error is the answer).
    fn replan(&mut self, txn: TxnRef) -> bool {
        match txn {
            TxnRef::Commit(lsn) if lsn > self.ungroup => {
                self.ungroup = lsn;
                true
            }
            TxnRef::Streamed(xid) if !self.unbatched.contains(&xid) => {
                self.unbatched.push(xid);
                true
            }
            _ => false,
        }
    }
}

/// The main apply connection ([`APPLY_SETTINGS`]), holding the replication
/// origin with an origin ledger. Returns the session and the ledger's
/// durable position: where to start, and what may be reported as flushed
/// from the first status update on (the target's WAL is flushed through
/// the last recorded position before it answers; the in-memory position of
/// an earlier session in this process may be ahead of what a crash would
/// keep).
pub async fn apply_session(
    target: &Endpoint,
    ledger: &Ledger,
    name: &SyncName,
) -> Result<(RawSession, Lsn), SessionError> {
    let mut session = RawSession::connect(Side::Target, &target.config, false).await?;
    let setup = ledger
        .session_setup_sql()
        .map(|s| format!("{s};"))
        .unwrap_or_default();
    let rows = session
        .simple_query(&format!(
            "{APPLY_SETTINGS}
             {setup}
             {}",
            ledger.make_durable_sql(name)
        ))
        .await?;
    let start = rows
        .last()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|l| l.parse().ok())
        .unwrap_or(Lsn::ZERO);
    Ok((session, start))
}

/// What the target recorded with its origin position (see `resent`): the
/// source transaction ending there, if any, and the position.
async fn recorded_end(
    session: &mut RawSession,
    name: &SyncName,
) -> Result<(Option<u32>, Option<Lsn>), SessionError> {
    let rows = session
        .simple_query(&format!(
            "{};
             SELECT xid, end_lsn FROM pgrepl.applied WHERE sync_name = {}",
            crate::progress::state::APPLIED_SQL,
            quote_literal(name.as_str())
        ))
        .await?;
    let row = rows.into_iter().next().unwrap_or_default();
    let field = |i: usize| row.get(i).cloned().flatten();
    Ok((
        field(0).and_then(|x| x.parse().ok()),
        field(1).and_then(|l| l.parse().ok()),
    ))
}

/// The tables a resumed copy took under a later snapshot (see `late`).
async fn copied_late(
    session: &mut RawSession,
    name: &SyncName,
) -> Result<std::collections::HashMap<crate::sql::TableName, Lsn>, SessionError> {
    let rows = session
        .simple_query(&crate::snapshot::kept::copied_late_sql(name))
        .await?;
    Ok(crate::snapshot::kept::parse_copied_late(&rows))
}

async fn session(
    req: &StreamRequest<'_>,
    stop: &mut watch::Receiver<bool>,
    until: Option<Lsn>,
    status: &LiveStatus,
    plan: &Plan,
    paths: &Arc<super::paths::Totals>,
) -> Result<Outcome, SessionError> {
    super::guard::refuse_after_cutover(req).await?;
    let (mut session, start) = apply_session(req.target, &req.ledger, req.name).await?;
    let mut walsender = WalSender::connect(Side::Source, &req.source.decoder().config).await?;
    super::guard::follow_timeline(req, &mut walsender, start).await?;
    super::guard::refuse_a_gap(req, start).await?;
    let (applied, recorded) = recorded_end(&mut session, req.name).await?;
    let resend = Resend::at_start(applied, recorded, start);
    let late = super::late::Late::new(copied_late(&mut session, req.name).await?);
    let late_until = late.until();
    // Changes of a table copied late are told apart by their commit's
    // LSN, known only at the commit of a transaction streamed in progress.
    let stream_large =
        plan.stream_large && walsender.server_version() >= 140000 && start >= late_until;
    let feedback = Feedback::new(start);
    let mut receiver = Receiver::start(
        walsender,
        &req.name.slot(),
        &req.name.publication(),
        start,
        stream_large,
        req.skip_pgrepl_origins,
        feedback.clone(),
    )
    .await?;
    // Without its gate a session could apply past a hold that a requester
    // relies on (one the last session held for): no gate, no apply. Opened
    // once this session owns the slot (no other session of the sync runs),
    // before anything is applied.
    let gate = match crate::control::Gate::open(req.target, req.name, start).await {
        Ok(g) => Some(g),
        Err(crate::control::ControlError::EndedBehind { at }) => {
            receiver.shutdown().await;
            return Err(SessionError::CutOver {
                name: req.name.to_string(),
                at,
            });
        }
        Err(e) => {
            receiver.shutdown().await;
            let transient = !matches!(e, crate::control::ControlError::Unreadable(_));
            return Err(SessionError::Target {
                what: "opening the control channel",
                message: e.to_string(),
                transient,
            });
        }
    };
    tracing::info!(%start, stream_large, "streaming");
    crate::progress::telemetry::telemetry().recovered();
    let shared = Shared::counting_into(start, paths.clone());
    status.attach(StatusSource {
        shared: shared.clone(),
        feedback: feedback.clone(),
    });
    let watcher = crate::progress::scope::spawn(flush_watcher(
        req.target.clone(),
        req.ledger.clone(),
        req.name.clone(),
        start,
        shared.clone(),
        feedback.clone(),
    ));
    let mut main = Applier::new(
        session,
        shared.clone(),
        start,
        req.limits.clone(),
        req.ddl.clone(),
        req.name.clone(),
        &req.ledger,
    );
    main.ungroup_through(plan.ungroup);
    if start < late_until {
        tracing::info!(until = %late_until, "tables of a resumed copy skip what their copy holds");
        main.late = late;
    }
    main.skip_pgrepl_origins = req.skip_pgrepl_origins;
    let mut applier = Router::new(
        main,
        shared.clone(),
        StreamContext {
            target: req.target.clone(),
            ledger: req.ledger.clone(),
            ddl: req.ddl.clone(),
            sync_name: req.name.clone(),
            unbatched: plan.unbatched.clone(),
            skip_pgrepl_origins: req.skip_pgrepl_origins,
            resend,
        },
    );

    let span = tracing::info_span!("apply", slot = %req.name.slot());
    let mut driver = EventLoop {
        applier: &mut applier,
        receiver: &mut receiver,
        shared: shared.clone(),
        gate,
        until,
    };
    let result = driver.run(stop).instrument(span).await;

    let ended = match result {
        Ok(ended) => ended,
        Err(e) => {
            applier.abort().await;
            watcher.abort();
            receiver.shutdown().await;
            return Err(SessionError::Apply(e));
        }
    };
    // Wait (briefly) until what was committed is durable, report it, and
    // close the stream with that as the final flushed position.
    let written = Lsn(shared.written_end.load(Ordering::SeqCst));
    let deadline = Instant::now() + Duration::from_secs(3);
    let client = req.target.connect().await?;
    let mut durable = req
        .ledger
        .make_durable(&client, req.name)
        .await
        .unwrap_or(Lsn::ZERO);
    while durable < written && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        durable = req
            .ledger
            .make_durable(&client, req.name)
            .await
            .unwrap_or(durable);
    }
    watcher.abort();
    let flushed = durable;
    feedback.set_flushed(flushed);
    feedback.set_applied(shared.idle_through());
    receiver.shutdown().await;
    status.set_flushed(flushed);
    Ok(match ended {
        Ended::CaughtUp { target } => Outcome::CaughtUp { target, flushed },
        Ended::Finished { at } => Outcome::Finished { at, flushed },
        Ended::Stopped => Outcome::Stopped { flushed },
    })
}

/// Every half second: reads what the target made durable and lets the
/// writer report it.
async fn flush_watcher(
    target: Endpoint,
    ledger: Ledger,
    name: SyncName,
    start: Lsn,
    shared: Arc<Shared>,
    feedback: Arc<Feedback>,
) {
    let mut table = TableFlush::new(start);
    let mut client: Option<Client> = None;
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    loop {
        interval.tick().await;
        if client.is_none() {
            client = target.connect().await.ok();
        }
        let Some(c) = &client else { continue };
        let written = Lsn(shared.written_end.load(Ordering::SeqCst));
        let durable = match &ledger {
            Ledger::Origin(_) => ledger.make_durable(c, &name).await,
            Ledger::Table => table.poll(c, &name).await,
        };
        match durable {
            Ok(durable) => {
                feedback.set_flushed(durable);
                feedback.set_applied(written);
            }
            Err(e) => {
                tracing::debug!(error = %describe(&e), "flush watcher lost its connection");
                client = None;
                table.forget();
            }
        }
    }
}

//! Two snapshots at one LSN: the source's, exported by a temporary slot at
//! its consistent point P, and the target's, taken while the running sync
//! holds its apply with exactly the source transactions committing before
//! P applied (see `control::gate`).
//!
//! The rule: P is chosen while the sync already holds (it cannot run past
//! a position it has not heard of yet), then the sync applies on to P and
//! holds again; the target's snapshot is exported right then, and the sync
//! is released at once, whatever happens next (a guard releases it on any
//! error). Every session that compares rows imports one of these two
//! snapshots before the sync goes on.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::VerifyError;
use crate::conn::walsender::WalSender;
use crate::conn::{Endpoint, Side};
use crate::control::{Listener, Request, Requester, State};
use crate::lsn::Lsn;
use crate::sql::{quote_literal, SyncName};

/// Sessions' settings that make a row's text the same on every major.
pub const CANONICAL: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC';
     SET extra_float_digits = 1; SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET xmloption = 'content';
     SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0";

/// The two snapshots, while they can still be imported.
pub struct Snapshots {
    pub lsn: Lsn,
    pub source: String,
    pub target: String,
    /// What exported the source's snapshot (imports work while it stays
    /// open and idle).
    _exporter: Exporter,
    /// The target session that exported the target's snapshot.
    _target_exporter: Client,
    /// How long the sync's apply stood still (running sync).
    pub held: Option<Duration>,
    pub requester: Option<RequestHandle>,
}

/// What exported the source's snapshot.
enum Exporter {
    /// A temporary slot's replication session (a snapshot at an LSN).
    Slot(#[allow(dead_code)] WalSender),
    /// A plain session (under the fence, where nothing compared moves).
    Session(#[allow(dead_code)] Client),
}

/// A held sync's request, released when dropped (also on an error).
pub struct RequestHandle {
    target: Endpoint,
    id: i64,
    released: bool,
}

impl RequestHandle {
    /// Lets the sync go on; returns how long it held, by its own count.
    pub async fn release(&mut self, client: &Client) -> Result<Option<Duration>, VerifyError> {
        crate::control::set_state(client, self.id, &State::Released).await?;
        self.released = true;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let State::Done { held_ms, .. } = crate::control::state(client, self.id).await? {
                return Ok(Some(Duration::from_millis(held_ms)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (target, id) = (self.target.clone(), self.id);
        // Best effort, off the error path: the sync also goes on by itself
        // after control::HOLD_LIMIT.
        crate::progress::scope::spawn(async move {
            if let Ok(c) = target.connect().await {
                let _ = crate::control::set_state(&c, id, &State::Released).await;
            }
        });
    }
}

fn process_tag() -> u32 {
    std::process::id()
}

/// A temporary slot on the source and its exported snapshot.
async fn source_snapshot(
    source: &Endpoint,
    name: &SyncName,
) -> Result<(WalSender, crate::conn::walsender::CreatedSlot), VerifyError> {
    let mut ws = WalSender::connect(Side::Source, &source.config).await?;
    let slot = ws
        .create_temporary_slot_exporting_snapshot(&name.temporary_slot(process_tag()))
        .await
        .map_err(|e| VerifyError::Slot(e.to_string()))?;
    Ok((ws, slot))
}

/// A session holding a snapshot of what is committed now, exported.
async fn snapshot_now(endpoint: &Endpoint) -> Result<(Client, String), VerifyError> {
    let client = endpoint.connect().await?;
    let fail = |what: &'static str| {
        let side = endpoint.side;
        move |e: tokio_postgres::Error| VerifyError::Query {
            side,
            what,
            message: crate::conn::error::describe(&e),
        }
    };
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(fail("opening a snapshot"))?;
    let name: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(fail("exporting a snapshot"))?
        .get(0);
    Ok((client, name))
}

/// Snapshots at one LSN with the running sync's help.
pub async fn while_running(
    source: &Endpoint,
    target: &Endpoint,
    src: &Client,
    tgt: &Client,
    name: &SyncName,
    wait: Duration,
) -> Result<Snapshots, VerifyError> {
    let listener = Listener::start(target).await?;
    let mut req = Requester::send(tgt, listener, name, &Request::Hold).await?;
    let mut handle = RequestHandle {
        target: target.clone(),
        id: req.id,
        released: false,
    };
    let held_at = req
        .wait(
            Duration::from_secs(15),
            "start `pgrepl sync`, or compare a stopped sync with `pgrepl verify --stopped`",
            |s| match s {
                State::Held { at, .. } => Some(*at),
                _ => None,
            },
        )
        .await?;
    tracing::debug!(%held_at, "the sync holds; taking the source's snapshot");
    let (exporter, slot) = source_snapshot(source, name).await?;
    let lsn = slot.consistent_point;
    req.set(&State::Advance { through: lsn }).await?;
    // A record past P, so an idle source tells the sync it is there.
    let _ = src
        .execute(
            "SELECT pg_logical_emit_message(false, 'pgrepl', 'verify')",
            &[],
        )
        .await;
    req.wait(
        wait,
        "the sync did not reach the comparison point in time: is it far behind? (--wait)",
        |s| match s {
            State::Held { at, .. } if *at >= lsn => Some(()),
            _ => None,
        },
    )
    .await?;
    let (target_exporter, target_name) = snapshot_now(target).await?;
    // The snapshot is exported; it stays valid for imports while the
    // exporting transaction is open, whatever the sync does next.
    let held = handle.release(tgt).await?;
    Ok(Snapshots {
        lsn,
        source: slot.snapshot,
        target: target_name,
        _exporter: Exporter::Slot(exporter),
        _target_exporter: target_exporter,
        held,
        requester: Some(handle),
    })
}

/// Snapshots at one LSN of a stopped sync: the source's at P must hold
/// nothing the target has not applied (the sync's slot has no change
/// before P that the target's origin has not passed).
pub async fn while_stopped(
    source: &Endpoint,
    target: &Endpoint,
    tgt: &Client,
    name: &SyncName,
) -> Result<Snapshots, VerifyError> {
    let slot = crate::source::setup::slot_info(&source.decoder().connect().await?, &name.slot())
        .await
        .map_err(|e| VerifyError::Other(e.to_string()))?
        .ok_or_else(|| {
            VerifyError::Other(format!("source: slot {} does not exist", name.slot()))
        })?;
    if let Some(pid) = slot.active_pid {
        return Err(VerifyError::Other(format!(
            "the sync is running (its slot is in use by process {pid}): verify without --stopped"
        )));
    }
    // Its slot idle, a sync between two sessions runs all the same.
    let present = crate::control::presence::holder(tgt, name)
        .await
        .map_err(|e| VerifyError::target("reading whether a sync runs", &e))?;
    if let Some(pid) = present {
        return Err(VerifyError::Other(format!(
            "the sync is running (between two sessions; its target session is pid {pid}): verify without --stopped"
        )));
    }
    let ledger = crate::progress::state::ledger_of(tgt, name)
        .await
        .map_err(|e| VerifyError::target("reading the sync", &e))?;
    let applied = ledger
        .applied(tgt, name)
        .await
        .map_err(|e| VerifyError::target("reading the target's position", &e))?
        .unwrap_or(Lsn::ZERO);
    let (exporter, created) = source_snapshot(source, name).await?;
    let lsn = created.consistent_point;
    // Changes the sync's slot holds before P, that the target lacks. A
    // standby that decodes must have P first (else it undercounts them).
    let decoder = source.decoder().connect().await?;
    if source.standby.is_some() {
        let since = std::time::Instant::now();
        loop {
            let replayed: bool = decoder
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, true)",
                    &[&lsn.to_string()],
                )
                .await
                .map_err(|e| VerifyError::source("reading the standby's position", &e))?
                .get(0);
            if replayed {
                break;
            }
            if since.elapsed() > std::time::Duration::from_secs(60) {
                return Err(VerifyError::Other(format!(
                    "source: the standby that decodes has not replayed {lsn} within 60 s: it lags; verify again later"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let pending: i64 = decoder
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL,
                    'proto_version', '1', 'publication_names', {})
                 WHERE lsn > $3::text::pg_lsn AND get_byte(data, 0) IN (73, 85, 68, 84)",
                quote_literal(&format!("\"{}\"", name.publication().as_str()))
            ),
            &[&name.slot().as_str(), &lsn.to_string(), &applied.to_string()],
        )
        .await
        .map_err(|e| VerifyError::source("reading what the sync's slot holds", &e))?
        .get(0);
    if pending > 0 {
        return Err(VerifyError::Other(format!(
            "the source has {pending} change(s) the stopped target has not applied (it holds the source through {applied}): run `pgrepl sync --until-caught-up` with writes stopped, or verify while the sync runs"
        )));
    }
    let (target_exporter, target_name) = snapshot_now(target).await?;
    Ok(Snapshots {
        lsn,
        source: created.snapshot,
        target: target_name,
        _exporter: Exporter::Slot(exporter),
        _target_exporter: target_exporter,
        held: None,
        requester: None,
    })
}

/// Snapshots at one LSN while the source is fenced and the sync holds at
/// the fence (`cutover --verify`): nothing that is compared moves on
/// either side, so the source's snapshot (at some P past the fence) and
/// the target's (now) hold the same transactions.
pub async fn under_fence(
    source: &Endpoint,
    target: &Endpoint,
    fence: Lsn,
) -> Result<Snapshots, VerifyError> {
    // No slot here: creating one would wait for the fence's own open
    // transaction. The synced tables cannot change under the fence, so a
    // snapshot taken now holds exactly what committed before its LSN.
    let (exporter, source_name) = snapshot_now(source).await?;
    let (target_exporter, target_name) = snapshot_now(target).await?;
    Ok(Snapshots {
        lsn: fence,
        source: source_name,
        target: target_name,
        _exporter: Exporter::Session(exporter),
        _target_exporter: target_exporter,
        held: None,
        requester: None,
    })
}

/// A session inside `snapshot`, with the canonical settings.
pub async fn session_in(endpoint: &Endpoint, snapshot: &str) -> Result<Client, VerifyError> {
    let client = endpoint.connect().await?;
    client
        .batch_execute(&format!(
            "{CANONICAL}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(|e| VerifyError::Query {
            side: endpoint.side,
            what: "importing the snapshot",
            message: crate::conn::error::describe(&e),
        })?;
    Ok(client)
}

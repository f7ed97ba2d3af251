//! Where a running sync stands, from another shell: `pgrepl status`, which
//! reads the slot on the source and the origin and state on the target.
//! (The live line a streaming sync shows is `apply::live`'s.)

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use super::state;
use super::{human_bytes, human_duration};
use crate::lsn::Lsn;
use crate::source::setup;
use crate::sql::SyncName;

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub active_pid: Option<i32>,
    pub confirmed_flush: String,
    pub restart_lsn: String,
    pub retained_bytes: i64,
    pub lost: bool,
}

#[derive(Debug, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub state: String,
    pub rows: Option<i64>,
}

/// `pgrepl status` as data.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub sync: String,
    pub phase: Option<String>,
    pub consistent_lsn: Option<String>,
    pub source_lsn: String,
    pub slot: Option<SlotStatus>,
    /// Whether a sync of this name runs: its slot streams, or its process
    /// says on the target that it runs (between two sessions).
    pub running: bool,
    pub origin_lsn: Option<String>,
    pub origin_flushed_lsn: Option<String>,
    /// Where the target keeps the applied position (see `ledger`).
    pub ledger: Option<String>,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// Sequences on both sides, and how far (in `nextval` steps) the
    /// furthest behind on the target is (0: none behind).
    pub sequences: usize,
    pub sequences_behind: i64,
    /// Large objects on the source now, and when the target's were last
    /// made equal to them (and how many there were then).
    pub large_objects: i64,
    pub large_objects_synced: Option<i64>,
    pub large_objects_synced_at: Option<String>,
    /// `--roles` as the copy was told (`copy`, `skip`; none: none missing).
    pub roles: Option<String>,
    pub tables: Vec<TableStatus>,
    /// While the copy runs or waits to be resumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<super::copy_status::CopyProgress>,
    /// Whether the slot would survive a failover of the source (see
    /// [`StatusReport::with_failover`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<crate::source::standby::Failover>,
}

#[derive(Debug, thiserror::Error)]
#[error("{side}: {what}: {message}")]
pub struct StatusError {
    side: &'static str,
    what: &'static str,
    message: String,
}

fn serr(side: &'static str, what: &'static str) -> impl Fn(tokio_postgres::Error) -> StatusError {
    move |e| StatusError {
        side,
        what,
        message: crate::conn::error::describe(&e),
    }
}

/// `decoder`: a session where the slot lives when that is not `src` (a
/// source decoded on its standby).
pub async fn report(
    src: &Client,
    decoder: Option<&Client>,
    tgt: &Client,
    name: &SyncName,
) -> Result<StatusReport, StatusError> {
    let source_lsn: Lsn = src
        .query_one("SELECT pg_current_wal_lsn()", &[])
        .await
        .map_err(serr("source", "reading the WAL position"))?
        .get(0);
    let slot = setup::slot_info(decoder.unwrap_or(src), &name.slot())
        .await
        .map_err(|e| StatusError {
            side: "source",
            what: "reading the slot",
            message: e.to_string(),
        })?;
    let lag_seconds: Option<f64> = match slot.as_ref().and_then(|s| s.active_pid) {
        Some(pid) => src
            .query_opt("SELECT extract(epoch FROM flush_lag)::float8 FROM pg_stat_replication WHERE pid = $1", &[&pid])
            .await
            .map_err(serr("source", "reading pg_stat_replication"))?
            .and_then(|r| r.get::<_, Option<f64>>(0))
            .or(Some(0.0)),
        None => None,
    };
    let record = state::load_sync(tgt, name)
        .await
        .map_err(serr("target", "reading pgrepl state"))?;
    let present = crate::sql::advisory::holder(tgt, crate::sql::advisory::SYNC_RUNS, name)
        .await
        .map_err(serr("target", "reading whether the sync runs"))?;
    let running = present.is_some() || slot.as_ref().is_some_and(|s| s.active_pid.is_some());
    let ledger = record
        .as_ref()
        .map(|r| r.ledger.clone())
        .unwrap_or_else(|| super::ledger::Ledger::Origin(name.origin()));
    // (applied, durable): the origin knows both; the table only what is
    // committed (the flush is not asked for here: status writes nothing).
    let origin = match &ledger {
        super::ledger::Ledger::Origin(o) => tgt
            .query_opt(
                "SELECT pg_replication_origin_progress(roname, false), pg_replication_origin_progress(roname, true)
                 FROM pg_replication_origin WHERE roname = $1",
                &[&o.as_str()],
            )
            .await
            .map_err(serr("target", "reading the replication origin"))?
            .map(|r| (r.get::<_, Option<Lsn>>(0), r.get::<_, Option<Lsn>>(1))),
        super::ledger::Ledger::Table => ledger
            .applied(tgt, name)
            .await
            .map_err(serr("target", "reading pgrepl.applied"))?
            .map(|l| (Some(l), None)),
    };
    let tables = state::load_tables(tgt, name)
        .await
        .map_err(serr("target", "reading table states"))?
        .into_iter()
        .map(|t| TableStatus {
            table: t.table.to_string(),
            state: t.state.label().to_string(),
            rows: t.rows,
        })
        .collect();
    let copy = match &record {
        Some(r) if r.phase == state::SyncPhase::Copying => Some(
            super::copy_status::read(src, tgt, name)
                .await
                .map_err(serr("source or target", "reading the copy's progress"))?,
        ),
        _ => None,
    };
    let (src_seq, tgt_seq) = tokio::try_join!(
        crate::sequences::read(src, &[]),
        crate::sequences::read(tgt, &[])
    )
    .map_err(serr("source or target", "reading sequences"))?;
    let sequences_behind = src_seq
        .iter()
        .filter_map(|s| {
            let t = tgt_seq.iter().find(|t| t.name == s.name)?;
            Some(s.next().saturating_sub(t.next()).max(0))
        })
        .max()
        .unwrap_or(0);
    let large_objects: i64 = src
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(serr("source", "counting large objects"))?
        .get(0);
    let (large_objects_synced, large_objects_synced_at) = match &record {
        Some(_) => tgt
            .query_opt(
                "SELECT (to_jsonb(s) ->> 'large_objects')::int8, to_jsonb(s) ->> 'large_objects_at'
                 FROM pgrepl.sync s WHERE name = $1",
                &[&name.as_str()],
            )
            .await
            .map_err(serr("target", "reading pgrepl state"))?
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or((None, None)),
        None => (None, None),
    };
    let flushed = origin.and_then(|(_, f)| f);
    let lag_bytes = flushed
        .or(origin.and_then(|(l, _)| l))
        .map(|f| source_lsn.bytes_since(f));
    // flush_lag keeps its last value while idle: no byte lag, no time lag.
    let lag_seconds = if lag_bytes == Some(0) {
        lag_seconds.map(|_| 0.0)
    } else {
        lag_seconds
    };
    Ok(StatusReport {
        sync: name.to_string(),
        phase: record.as_ref().map(|r| r.phase.to_string()),
        consistent_lsn: record.as_ref().map(|r| r.consistent_lsn.to_string()),
        source_lsn: source_lsn.to_string(),
        lag_bytes,
        lag_seconds,
        slot: slot.map(|s| SlotStatus {
            name: name.slot().to_string(),
            active_pid: s.active_pid,
            confirmed_flush: s.confirmed_flush.to_string(),
            restart_lsn: s.restart_lsn.to_string(),
            retained_bytes: s.retained_bytes,
            lost: s.lost,
        }),
        running,
        origin_lsn: origin.and_then(|(l, _)| l).map(|l| l.to_string()),
        origin_flushed_lsn: flushed.map(|l| l.to_string()),
        ledger: record.as_ref().map(|_| ledger.to_string()),
        sequences: src_seq.len(),
        sequences_behind,
        large_objects,
        large_objects_synced,
        large_objects_synced_at,
        roles: record
            .as_ref()
            .and_then(|r| r.roles)
            .map(|p| p.as_str().to_string()),
        tables,
        copy,
        failover: None,
    })
}

impl StatusReport {
    /// Adds what the source's standbys hold of the slot (one connection to
    /// each server of a multi-host `--source`).
    pub async fn with_failover(
        mut self,
        source: &crate::conn::Endpoint,
        src: &Client,
        name: &SyncName,
    ) -> Result<Self, StatusError> {
        self.failover = Some(
            crate::source::standby::Failover::read(source, src, &name.slot())
                .await
                .map_err(serr("source", "reading failover settings"))?,
        );
        Ok(self)
    }

    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sync {}: {}",
            self.sync,
            self.phase.as_deref().unwrap_or("not found on the target")
        );
        match &self.slot {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "  source slot {}: {}, confirmed {}, holding {} of WAL{}",
                    s.name,
                    match s.active_pid {
                        Some(pid) => format!("streaming (pid {pid})"),
                        None if self.running => {
                            "idle, the sync runs (between two sessions)".to_string()
                        }
                        None => "idle".to_string(),
                    },
                    s.confirmed_flush,
                    human_bytes(s.retained_bytes.max(0) as u64),
                    if s.lost {
                        " -- LOST: WAL it needed was removed; run teardown and sync again"
                    } else {
                        ""
                    }
                );
            }
            None => {
                let _ = writeln!(out, "  source slot: none");
            }
        }
        let _ = writeln!(out, "  source WAL at {}", self.source_lsn);
        if let Some(f) = &self.failover {
            render_failover(&mut out, f);
        }
        if let Some(o) = &self.origin_lsn {
            let _ = writeln!(
                out,
                "  target applied through {o} (durable: {}; kept in the {})",
                self.origin_flushed_lsn.as_deref().unwrap_or("-"),
                self.ledger.as_deref().unwrap_or("replication origin")
            );
        }
        if let Some(b) = self.lag_bytes {
            let secs = self
                .lag_seconds
                .map(|s| human_duration(Duration::from_secs_f64(s.max(0.0))))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(out, "  lag: {} / {secs}", human_bytes(b));
        }
        if self.sequences > 0 {
            let _ = writeln!(
                out,
                "  sequences: {}, {}",
                self.sequences,
                match self.sequences_behind {
                    0 => "none behind on the target".to_string(),
                    n => format!("the furthest behind on the target by {n}"),
                }
            );
        }
        if self.large_objects > 0 || self.large_objects_synced.is_some() {
            let _ = writeln!(
                out,
                "  large objects: {} on the source, {}",
                self.large_objects,
                match (&self.large_objects_synced, &self.large_objects_synced_at) {
                    (Some(n), Some(at)) => format!("{n} made equal on the target at {at}"),
                    _ => "not yet copied".to_string(),
                }
            );
        }
        if let Some(r) = &self.roles {
            let _ = writeln!(out, "  roles: --roles {r}");
        }
        if let Some(c) = &self.copy {
            out.push_str(&c.render());
        }
        if !self.tables.is_empty() {
            let mut counts: Vec<(String, usize)> = Vec::new();
            for t in &self.tables {
                match counts.iter_mut().find(|(s, _)| *s == t.state) {
                    Some(c) => c.1 += 1,
                    None => counts.push((t.state.clone(), 1)),
                }
            }
            let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            let _ = writeln!(out, "  tables: {}", summary.join(", "));
            for t in &self.tables {
                let rows = t
                    .rows
                    .map(|r| format!("{r} rows copied"))
                    .unwrap_or_default();
                let _ = writeln!(out, "    {:<40} {:<10} {rows}", t.table, t.state);
            }
        }
        out
    }
}

/// The failover lines of `status`: the slot's flag, what the primary waits
/// for, and each standby's copy.
fn render_failover(out: &mut String, f: &crate::source::standby::Failover) {
    use crate::source::standby::SlotCopy;
    use std::fmt::Write;
    if !f.supported {
        return;
    }
    let _ = writeln!(
        out,
        "  failover: {}; synchronized_standby_slots {}",
        match f.slot_failover {
            Some(true) => "a failover slot",
            Some(false) => "NOT a failover slot (a failover loses it)",
            None => "no slot",
        },
        if f.synchronized_standby_slots.trim().is_empty() {
            if f.streaming_standbys > 0 || !f.standbys.is_empty() {
                "empty (the target can get ahead of a promoted standby)".to_string()
            } else {
                "empty (no standby streams from the source)".to_string()
            }
        } else {
            format!("= {}", f.synchronized_standby_slots)
        }
    );
    for s in &f.standbys {
        let _ = writeln!(
            out,
            "    standby {}: {}",
            s.server,
            match &s.slot {
                SlotCopy::Ready => "slot synced and ready".to_string(),
                SlotCopy::NotReady(why) => format!("slot not usable: {why}"),
                SlotCopy::Missing(why) => format!("no slot: {why}"),
                SlotCopy::Unreachable(why) => format!("not reachable: {why}"),
            }
        );
    }
}

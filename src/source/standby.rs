//! A source with standbys: whether the sync's slot would survive a
//! failover. On PostgreSQL 17+ the slot is a failover slot, and each
//! standby running `sync_replication_slots` keeps a copy; a copy is ready
//! when it is `synced`, not `temporary`, and not invalidated. The primary's
//! `synchronized_standby_slots` makes logical walsenders send only what
//! those standbys have flushed: without it, the target can get changes a
//! promoted standby never had (the timeline guard then stops the sync, see
//! `timeline`).
//!
//! The standbys looked at are the other servers of a multi-host source
//! conninfo (`host=a,b`): the ones in recovery.

use tokio_postgres::Client;

use crate::conn::error::describe;
use crate::conn::{Endpoint, Side};
use crate::sql::SlotName;

/// What one standby holds of the slot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "why")]
pub enum SlotCopy {
    /// Synced and usable after a promotion.
    Ready,
    /// There, but not (yet) usable: the reason.
    NotReady(String),
    /// Not there: the reason (settings, or not synced yet).
    Missing(String),
    /// The standby could not be asked.
    Unreachable(String),
}

/// One standby of the source and its copy of the slot.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Standby {
    /// `host:port` or the socket path.
    pub server: String,
    pub slot: SlotCopy,
}

/// What the primary says about failover: whether the slot (if made) is a
/// failover slot, and the standby slots logical walsenders wait for.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Failover {
    /// PostgreSQL 17+: failover slots exist.
    pub supported: bool,
    /// The slot's `failover` flag (`None`: no slot yet).
    pub slot_failover: Option<bool>,
    /// `synchronized_standby_slots` (empty: none).
    pub synchronized_standby_slots: String,
    /// Physical standbys streaming from the primary now.
    pub streaming_standbys: i64,
    /// The other servers of the conninfo that are standbys.
    pub standbys: Vec<Standby>,
}

impl Failover {
    /// Reads it from the primary (`src`) and the conninfo's other servers.
    pub async fn read(
        source: &Endpoint,
        src: &Client,
        slot: &SlotName,
    ) -> Result<Failover, tokio_postgres::Error> {
        let row = src
            .query_one(
                "SELECT current_setting('server_version_num')::int >= 170000,
                        (SELECT (to_jsonb(s) ->> 'failover')::boolean FROM pg_replication_slots s WHERE slot_name = $1),
                        coalesce(current_setting('synchronized_standby_slots', true), ''),
                        (SELECT count(*) FROM pg_stat_replication r
                         WHERE coalesce(r.state, '') = 'streaming'
                           AND NOT EXISTS (SELECT 1 FROM pg_replication_slots l
                                           WHERE l.active_pid = r.pid AND l.slot_type = 'logical'))",
                &[&slot.as_str()],
            )
            .await?;
        let mut failover = Failover {
            supported: row.get(0),
            slot_failover: row.get(1),
            synchronized_standby_slots: row.get(2),
            streaming_standbys: row.get(3),
            standbys: Vec::new(),
        };
        if source.config.more_hosts.is_empty() {
            return Ok(failover);
        }
        for one in source.config.candidates() {
            let server = crate::conn::ConnectError::new(
                Side::Source,
                &one,
                crate::conn::ConnectFailure::Refused,
            )
            .place;
            let endpoint = Endpoint::new(
                Side::Source,
                crate::conn::ConnConfig {
                    session_attrs: crate::conn::config::SessionAttrs::Any,
                    ..one
                },
            );
            let copy = match endpoint.connect().await {
                Ok(c) => match copy_on(&c, slot).await {
                    Ok(Some(copy)) => copy,
                    Ok(None) => continue, // the primary itself
                    Err(e) => SlotCopy::Unreachable(describe(&e)),
                },
                Err(e) => SlotCopy::Unreachable(e.to_string()),
            };
            failover.standbys.push(Standby { server, slot: copy });
        }
        Ok(failover)
    }
}

/// The slot's copy on one server; `None` when that server is no standby.
async fn copy_on(c: &Client, slot: &SlotName) -> Result<Option<SlotCopy>, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT pg_is_in_recovery(),
                    current_setting('server_version_num')::int >= 170000
                        AND coalesce(current_setting('sync_replication_slots', true)::boolean, false),
                    current_setting('hot_standby_feedback')::boolean",
            &[],
        )
        .await?;
    let (standby, syncing, feedback): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !standby {
        return Ok(None);
    }
    let copy = c
        .query_opt(
            "SELECT coalesce((to_jsonb(s) ->> 'synced')::boolean, false), temporary,
                    to_jsonb(s) ->> 'invalidation_reason'
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot.as_str()],
        )
        .await?;
    Ok(Some(match copy {
        None if !syncing => SlotCopy::Missing(
            "it does not keep failover slots: set sync_replication_slots = on (PostgreSQL 17+), hot_standby_feedback = on, primary_slot_name, and a dbname in primary_conninfo".into(),
        ),
        None => SlotCopy::Missing("not synced yet (the standby copies it within about 30 s)".into()),
        Some(r) => {
            let (synced, temporary, invalid): (bool, bool, Option<String>) =
                (r.get(0), r.get(1), r.get(2));
            match (synced, temporary, invalid) {
                (_, _, Some(reason)) => SlotCopy::NotReady(format!("invalidated ({reason})")),
                (false, _, _) => SlotCopy::NotReady("a slot of this name that is not a synced copy".into()),
                (true, true, _) => SlotCopy::NotReady("still temporary: the standby has not caught up with the slot yet".into()),
                (true, false, None) if !feedback => SlotCopy::NotReady("hot_standby_feedback is off: the primary may remove rows the slot needs".into()),
                (true, false, None) => SlotCopy::Ready,
            }
        }
    }))
}

//! `--source-standby`: decoding on a standby of the source (PostgreSQL
//! 16+). The standby must be one of this primary's (same system), decode
//! (`wal_level = logical`), keep the rows its slot needs
//! (`hot_standby_feedback`, else the primary's vacuum invalidates the
//! slot), and take a replication connection. Its slot is no failover slot
//! (PostgreSQL 17 keeps only primaries' slots on standbys).

use super::{CheckError, Finding, Report};
use crate::conn::walsender::WalSender;
use crate::conn::{Endpoint, Side};
use crate::source::catalog::ServerFacts;

const SIDE: Side = Side::Source;

/// The oldest major that decodes on a standby.
const OLDEST: i32 = 16;

pub(super) async fn check(
    source: &Endpoint,
    primary: &ServerFacts,
    report: &mut Report,
) -> Result<(), CheckError> {
    if source.standby.is_none() {
        return Ok(());
    }
    let decoder = source.decoder();
    let place = decoder.config.to_string();
    let client = match decoder.connect().await {
        Ok(c) => c,
        Err(e) => {
            report.push(Finding::error(
                SIDE,
                "standby",
                e.to_string(),
                "check --source-standby",
            ));
            return Ok(());
        }
    };
    let facts = ServerFacts::read(&client)
        .await
        .map_err(super::query_error(SIDE, "reading the standby's facts"))?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('wal_level'),
                    current_setting('hot_standby_feedback')::boolean,
                    coalesce(current_setting('primary_slot_name', true), '')",
            &[],
        )
        .await
        .map_err(super::query_error(SIDE, "reading the standby's settings"))?;
    let (recovering, wal_level, feedback, primary_slot): (bool, String, bool, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut problems = Vec::new();
    if facts.major() < OLDEST {
        problems.push((
            format!(
                "PostgreSQL {} cannot decode on a standby (16+ can)",
                facts.version
            ),
            "decode on the primary (drop --source-standby), or upgrade the standby".to_string(),
        ));
    }
    if !recovering {
        problems.push((
            format!("{place} is not a standby (not in recovery)"),
            "name a streaming standby of the source with --source-standby".to_string(),
        ));
    }
    if !facts.system_id.is_empty()
        && !primary.system_id.is_empty()
        && facts.system_id != primary.system_id
    {
        problems.push((
            format!(
                "{place} is not a standby of the source (system {} there, {} on the source)",
                facts.system_id, primary.system_id
            ),
            "name a standby of the --source server".to_string(),
        ));
    }
    if wal_level != "logical" {
        problems.push((
            format!("the standby's wal_level is '{wal_level}'; decoding there needs 'logical' (on the primary too)"),
            "ALTER SYSTEM SET wal_level = logical; on the standby, then restart it".to_string(),
        ));
    }
    if !feedback {
        problems.push((
            "hot_standby_feedback is off on the standby: the primary's vacuum would remove catalog rows its slot needs, and the slot would be invalidated".to_string(),
            "ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf(); on the standby".to_string(),
        ));
    }
    if problems.is_empty() {
        match WalSender::connect(SIDE, &decoder.config).await {
            Ok(_) => report.push(Finding::ok(
                SIDE,
                "standby",
                format!("decoding on standby {place} (PostgreSQL {}): the slot lives there and the copy reads there", facts.version),
            )),
            Err(e) => problems.push((
                e.to_string(),
                "a logical replication connection to the standby needs REPLICATION and a pg_hba.conf line there".to_string(),
            )),
        }
    }
    for (message, fix) in problems {
        report.push(Finding::error(SIDE, "standby", message, fix));
    }
    if recovering && primary_slot.is_empty() {
        report.push(Finding::warn(
            SIDE,
            "standby",
            "the standby streams without a physical slot (primary_slot_name): the primary may remove WAL it has not received, and its feedback does not survive a reconnection",
            "on the primary: SELECT pg_create_physical_replication_slot('standby_1'); on the standby: ALTER SYSTEM SET primary_slot_name = 'standby_1'; SELECT pg_reload_conf();",
        ));
    }
    report.push(Finding::warn(
        SIDE,
        "standby",
        "a slot on a standby is not kept by any other server: if this standby is lost or promoted, the sync must start over; long queries of the copy there can be cancelled by recovery conflicts (max_standby_streaming_delay)",
        "keep the standby for the migration's length; raise max_standby_streaming_delay on it for a long copy",
    ));
    Ok(())
}

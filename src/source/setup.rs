//! What pgrepl creates on the source, and removes again: the publication
//! `pgrepl_NAME` and the logical replication slot `pgrepl_NAME`.

use tokio_postgres::Client;

use super::catalog::{SelectedTables, ServerFacts, TableKind};
use crate::conn::error::describe;
use crate::lsn::Lsn;
use crate::sql::{PublicationName, SlotName};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("source: {what}: {message}")]
    Query { what: String, message: String },
    #[error("source: slot {slot} is in use by process {pid}: is another `pgrepl sync --name {name}` running? Stop it first")]
    SlotActive {
        slot: SlotName,
        pid: i32,
        name: String,
    },
}

fn query_error(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let what = what.into();
    move |e| SetupError::Query {
        what,
        message: describe(&e),
    }
}

/// The state of the slot on the source.
#[derive(Clone, Debug)]
pub struct SlotInfo {
    pub active_pid: Option<i32>,
    pub confirmed_flush: Lsn,
    pub restart_lsn: Lsn,
    /// WAL the slot holds back on the source, in bytes.
    pub retained_bytes: i64,
    /// PG 13+: `lost` once max_slot_wal_keep_size removed WAL it needed.
    pub lost: bool,
    /// PG 13+: `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// PG 13+: WAL the source may still write before the slot is lost
    /// (`None` when unbounded).
    pub safe_wal_size: Option<i64>,
}

pub async fn slot_info(client: &Client, slot: &SlotName) -> Result<Option<SlotInfo>, SetupError> {
    let row = client
        .query_opt(
            "SELECT active_pid, confirmed_flush_lsn, restart_lsn,
                    coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                                  ELSE pg_current_wal_lsn() END, restart_lsn), 0)::int8,
                    coalesce(to_jsonb(s) ->> 'wal_status' = 'lost', false),
                    to_jsonb(s) ->> 'wal_status', (to_jsonb(s) ->> 'safe_wal_size')::int8
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot.as_str()],
        )
        .await
        .map_err(query_error("reading the replication slot"))?;
    Ok(row.map(|r| SlotInfo {
        active_pid: r.get(0),
        confirmed_flush: r.get::<_, Option<Lsn>>(1).unwrap_or(Lsn::ZERO),
        restart_lsn: r.get::<_, Option<Lsn>>(2).unwrap_or(Lsn::ZERO),
        retained_bytes: r.get(3),
        lost: r.get(4),
        wal_status: r.get(5),
        safe_wal_size: r.get(6),
    }))
}

/// How long a slot may stay active before it counts as in use: the
/// walsender of a pgrepl that was just killed takes a moment to notice.
const SLOT_RELEASE: std::time::Duration = std::time::Duration::from_secs(5);

/// The slot, once no walsender holds it (or `SLOT_RELEASE` has passed:
/// then it is in use for real).
pub async fn settled_slot_info(
    client: &Client,
    slot: &SlotName,
) -> Result<Option<SlotInfo>, SetupError> {
    let since = std::time::Instant::now();
    loop {
        match slot_info(client, slot).await? {
            Some(SlotInfo {
                active_pid: Some(_),
                ..
            }) if since.elapsed() < SLOT_RELEASE => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return Ok(other),
        }
    }
}

/// Drops the slot if it exists and no one uses it. Returns whether it existed.
pub async fn drop_slot(client: &Client, slot: &SlotName, name: &str) -> Result<bool, SetupError> {
    match settled_slot_info(client, slot).await? {
        None => Ok(false),
        Some(SlotInfo {
            active_pid: Some(pid),
            ..
        }) => Err(SetupError::SlotActive {
            slot: slot.clone(),
            pid,
            name: name.to_string(),
        }),
        Some(_) => {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot.as_str()])
                .await
                .map_err(query_error(format!("dropping slot {slot}")))?;
            Ok(true)
        }
    }
}

/// Creates the publication unless it exists: `FOR ALL TABLES` when nothing
/// was filtered and the role may (a superuser), else the selected tables
/// plus `pgrepl.schema_log` when DDL capture is installed (the capture
/// adds tables created later that the selection covers).
///
/// Partitions publish as themselves, not through their root: Postgres
/// publishes no TRUNCATE of a single partition through its root, and the
/// copy fills the same partitions on the target anyway. A table list names
/// partitioned tables (their partitions follow, 13+), or on 12, which
/// cannot publish a partitioned table, their partitions.
pub async fn ensure_publication(
    client: &Client,
    publication: &PublicationName,
    facts: &ServerFacts,
    selected: &SelectedTables,
    everything: bool,
    extra: &[crate::sql::TableName],
) -> Result<bool, SetupError> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication.as_str()],
        )
        .await
        .map_err(query_error("reading publications"))?
        .get(0);
    if exists {
        return Ok(false);
    }
    let target = if everything {
        "FOR ALL TABLES".to_string()
    } else {
        let mut names: Vec<String> = if facts.version_num >= 130000 {
            selected.tops().map(|t| t.name.quoted()).collect()
        } else {
            selected
                .tables
                .iter()
                .filter(|t| t.kind != TableKind::PartitionedRoot)
                .filter(|t| !matches!(t.kind, TableKind::Partition { leaf: false, .. }))
                .map(|t| t.name.quoted())
                .collect()
        };
        names.extend(extra.iter().map(|t| t.quoted()));
        if names.is_empty() {
            String::new()
        } else {
            format!("FOR TABLE {}", names.join(", "))
        }
    };
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} {target}",
            publication.quoted()
        ))
        .await
        .map_err(query_error(format!("creating publication {publication}")))?;
    Ok(true)
}

/// A publication made by an earlier pgrepl published partitions through
/// their root, which loses the TRUNCATE of a single partition: from now on
/// partitions publish as themselves. Returns whether it changed anything.
pub async fn publish_partitions_as_themselves(
    client: &Client,
    publication: &PublicationName,
) -> Result<bool, SetupError> {
    let via_root: bool = client
        .query_one(
            "SELECT CASE WHEN current_setting('server_version_num')::int >= 130000
                         THEN coalesce((SELECT (to_jsonb(p) ->> 'pubviaroot')::bool FROM pg_publication p WHERE pubname = $1), false)
                         ELSE false END",
            &[&publication.as_str()],
        )
        .await
        .map_err(query_error("reading the publication"))?
        .get(0);
    if via_root {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} SET (publish_via_partition_root = false)",
                publication.quoted()
            ))
            .await
            .map_err(query_error(format!("altering publication {publication}")))?;
    }
    Ok(via_root)
}

/// Adds a table to a table-list publication (a new table matching
/// `--include`). No-op for `FOR ALL TABLES`.
pub async fn add_to_publication(
    client: &impl tokio_postgres::GenericClient,
    publication: &PublicationName,
    table: &crate::sql::TableName,
) -> Result<(), tokio_postgres::Error> {
    let all: bool = client
        .query_one(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication.as_str()],
        )
        .await?
        .get(0);
    if !all {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                publication.quoted(),
                table.quoted()
            ))
            .await?;
    }
    Ok(())
}

pub async fn drop_publication(
    client: &Client,
    publication: &PublicationName,
) -> Result<bool, SetupError> {
    let existed = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication.as_str()],
        )
        .await
        .map_err(query_error("reading publications"))?
        .get(0);
    if existed {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                publication.quoted()
            ))
            .await
            .map_err(query_error(format!("dropping publication {publication}")))?;
    }
    Ok(existed)
}

//! What source transactions changed in a stretch of the sync's slot, read
//! without consuming it (`pg_logical_slot_peek_binary_changes`, the sync's
//! publication, pgoutput v1: whole committed transactions only).
//!
//! The rule: a table no transaction committing in `[from, until)` changed
//! is the same under the snapshots at `from` and `until` (a rewrite that
//! moves its rows shows as a new relfilenode, checked by the caller; an
//! unlogged table writes no WAL and is never taken as unchanged), so
//! chunks of it copied under either fit together. Anything not proven
//! untouched counts as changed: a stretch too long to read, a role that
//! may not peek, a message not understood. A DDL logged in the stretch
//! (`pgrepl.schema_log`) is reported: the stream would replay it onto
//! tables already copied after it.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::sql::{PublicationName, SlotName, TableName};
use crate::stream::pgoutput::{self, Message};

/// Changes read at most: a longer stretch is not worth reading twice. The
/// rows are read as they come, never all held.
const MOST: u64 = 2_000_000;

/// What the stretch of the slot holds.
#[derive(Debug, Default)]
pub struct Stretch {
    /// Tables of the question that a transaction changed in their window.
    pub changed: HashSet<TableName>,
    /// A DDL was seen logged in the stretch.
    pub ddl: bool,
}

/// Reads the slot's changes of transactions committing before `until`;
/// `windows`: per table, the commits `[from, to)` that count.
pub async fn read(
    decoder: &Client,
    slot: &SlotName,
    publication: &PublicationName,
    until: Lsn,
    windows: &HashMap<TableName, (Lsn, Lsn)>,
) -> Stretch {
    let unknown = || Stretch {
        changed: windows.keys().cloned().collect(),
        ddl: false,
    };
    let publications = format!("\"{}\"", publication.as_str().replace('"', "\"\""));
    let until = until.to_string();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&slot.as_str(), &until, &publications];
    let rows = decoder
        .query_raw(
            "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL,
                 'proto_version', '1', 'publication_names', $3)",
            params,
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::info!(error = %crate::conn::error::describe(&e), "the slot's changes could not be read: partly copied tables are copied again");
            return unknown();
        }
    };
    pin_mut!(rows);
    let mut relations: HashMap<u32, TableName> = HashMap::new();
    let log = TableName::new("pgrepl", "schema_log");
    let mut commit = Lsn::ZERO;
    let mut out = Stretch::default();
    let mut read = 0u64;
    loop {
        let row = match rows.try_next().await {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => {
                tracing::info!(error = %crate::conn::error::describe(&e), "reading the slot's changes failed: partly copied tables are copied again");
                return unknown();
            }
        };
        read += 1;
        if read > MOST {
            tracing::info!(
                changes = read,
                "too many changes since the copy began to read: partly copied tables are copied again"
            );
            return unknown();
        }
        let data: Vec<u8> = row.get(0);
        let message = match pgoutput::decode(Bytes::from(data)) {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(error = %e, "a change of the slot was not understood: partly copied tables are copied again");
                return unknown();
            }
        };
        let touched: Vec<u32> = match message {
            Message::Relation(r) => {
                relations.insert(r.oid, TableName::new(r.namespace, r.name));
                continue;
            }
            Message::Begin { final_lsn, .. } => {
                commit = final_lsn;
                continue;
            }
            Message::Insert { relation, .. }
            | Message::Update { relation, .. }
            | Message::Delete { relation, .. } => vec![relation],
            Message::Truncate { relations: r, .. } => r,
            _ => continue,
        };
        for oid in touched {
            let Some(table) = relations.get(&oid) else {
                return unknown();
            };
            if *table == log {
                out.ddl = true;
            }
            if windows
                .get(table)
                .is_some_and(|(from, to)| commit >= *from && commit < *to)
            {
                out.changed.insert(table.clone());
            }
        }
    }
    out
}

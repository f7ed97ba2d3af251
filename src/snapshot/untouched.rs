//! Which tables some source transaction changed in a stretch of the
//! sync's slot, read without consuming it
//! (`pg_logical_slot_peek_binary_changes`, the sync's publication).
//!
//! The rule: a table no transaction committing in `[since, until)` changed
//! is the same under the snapshots at `since` and `until` (a rewrite that
//! moves its rows shows as a new relfilenode, checked by the caller), so
//! chunks of it copied under either fit together. Anything not proven
//! untouched counts as changed: a stretch too long to read, a role that
//! may not peek, a message not understood.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::sql::{PublicationName, SlotName, TableName};
use crate::stream::pgoutput::{self, Message};

/// Changes read at most: a longer stretch is not worth reading twice.
const MOST: i32 = 2_000_000;

/// The tables of `since` (each with the LSN from which its changes count)
/// that a transaction committing before `until` changed.
pub async fn changed(
    decoder: &Client,
    slot: &SlotName,
    publication: &PublicationName,
    until: Lsn,
    since: &HashMap<TableName, Lsn>,
) -> HashSet<TableName> {
    let everything = || since.keys().cloned().collect::<HashSet<_>>();
    if since.is_empty() {
        return HashSet::new();
    }
    let rows = decoder
        .query(
            "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3,
                 'proto_version', '1', 'publication_names', $4)",
            &[
                &slot.as_str(),
                &until.to_string(),
                &MOST,
                &format!("\"{}\"", publication.as_str().replace('"', "\"\"")),
            ],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::info!(error = %crate::conn::error::describe(&e), "the slot's changes could not be read: partly copied tables are copied again");
            return everything();
        }
    };
    if rows.len() >= MOST as usize {
        tracing::info!(
            changes = rows.len(),
            "too many changes since the copy began to read: partly copied tables are copied again"
        );
        return everything();
    }
    let mut relations: HashMap<u32, TableName> = HashMap::new();
    let mut commit = Lsn::ZERO;
    let mut out = HashSet::new();
    for row in rows {
        let data: Vec<u8> = row.get(0);
        let message = match pgoutput::decode(Bytes::from(data)) {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(error = %e, "a change of the slot was not understood: partly copied tables are copied again");
                return everything();
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
                return everything();
            };
            if since.get(table).is_some_and(|from| commit >= *from) {
                out.insert(table.clone());
            }
        }
    }
    out
}

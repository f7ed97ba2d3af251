//! Undoing a copy that did not finish: its snapshot is gone, so it is
//! never resumed, only removed and started over.

use tokio_postgres::Client;

use super::SnapshotError;
use crate::conn::error::describe;
use crate::conn::Side;
use crate::progress::state::{self, SchemaOrigin};
use crate::sql::SyncName;

/// What [`discard`] removed.
#[derive(Debug, Default)]
pub struct Discarded {
    pub slot: bool,
    pub target_objects: bool,
}

/// Undoes a copy that did not finish: drops the slot, removes what the
/// schema step created (or empties the tables with `--existing-schema`),
/// and forgets the sync. The rows of tables pgrepl did not create are left
/// alone.
/// `decoder`: a session on the server where the slot lives (the source, or
/// its standby with `--source-standby`).
pub async fn discard(
    decoder: &Client,
    tgt: &Client,
    name: &SyncName,
) -> Result<Discarded, SnapshotError> {
    let mut out = Discarded {
        slot: crate::source::setup::drop_slot(decoder, &name.slot(), name.as_str()).await?,
        ..Default::default()
    };
    if let Some(record) = state::load_sync(tgt, name)
        .await
        .map_err(|e| SnapshotError::target("reading pgrepl state", &e))?
    {
        let sql = match &record.schema {
            SchemaOrigin::Created { cleanup } => format!("BEGIN; {cleanup} COMMIT;"),
            SchemaOrigin::Existing => {
                let tables = state::load_tables(tgt, name)
                    .await
                    .map_err(|e| SnapshotError::target("reading pgrepl state", &e))?;
                let names: Vec<String> = tables.iter().map(|t| t.table.quoted()).collect();
                if names.is_empty() {
                    String::new()
                } else {
                    format!("TRUNCATE {}", names.join(", "))
                }
            }
        };
        if !sql.is_empty() {
            tgt.batch_execute(&sql)
                .await
                .map_err(|e| SnapshotError::Query {
                    side: Side::Target,
                    what: "removing the interrupted copy",
                    message: describe(&e),
                    transient: crate::conn::error::is_transient(&e),
                })?;
            out.target_objects = true;
        }
        tgt.execute("DELETE FROM pgrepl.sync WHERE name = $1", &[&name.as_str()])
            .await
            .map_err(|e| SnapshotError::target("forgetting the interrupted copy", &e))?;
    }
    Ok(out)
}

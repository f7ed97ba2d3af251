//! A row of `pgrepl.schema_log` in the stream: the DDL command it records
//! is replayed (or skipped, saying why) at that very point, inside the
//! same target transaction as the rows around it, with the source's
//! search_path while it runs.

use super::applier::Applier;
use super::error::ApplyError;
use super::sent::Meta;
use crate::ddl::replay::{short, Action, LogRow};
use crate::sql::quote_literal;
use crate::stream::pgoutput::{Datum, Tuple};

impl Applier {
    pub(super) async fn ddl_row(&mut self, new: Tuple) -> Result<(), ApplyError> {
        let (Some(replayer), Some((_, columns))) = (self.ddl.as_mut(), self.schema_log.as_ref())
        else {
            tracing::debug!("DDL log row ignored: DDL replication is off");
            return Ok(());
        };
        let row = LogRow::from_columns(|name| {
            let i = columns.iter().position(|c| c == name)?;
            match new.get(i)? {
                Datum::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            }
        })?;
        let (sql, search_path, creates) = match replayer.decide(&row)? {
            Action::Skip { reason } => {
                tracing::info!(id = row.id, tag = %row.tag, %reason, ddl = %short(&row.ddl), "DDL not replicated");
                return Ok(());
            }
            Action::Replay {
                sql,
                search_path,
                creates,
            } => (sql, search_path, creates),
        };
        if !self.begin_change().await? {
            return Ok(());
        }
        self.flush_batch().await?;
        tracing::info!(id = row.id, tag = %row.tag, ddl = %short(&sql), "replaying DDL");
        // The source's search_path and the planner's defaults while it runs
        // (the apply session turns hash and merge joins off), then back.
        let before = format!(
            "SELECT pg_catalog.set_config('search_path', {}, true), pg_catalog.set_config('enable_hashjoin', 'on', true),
                    pg_catalog.set_config('enable_mergejoin', 'on', true)",
            quote_literal(&search_path)
        );
        self.send_sql(&before, Meta::Control("setting the source's search_path"))
            .await?;
        self.send_sql(
            &sql,
            Meta::Ddl {
                id: row.id,
                statement: short(&sql),
            },
        )
        .await?;
        self.send_sql("RESET search_path", Meta::Control("resetting search_path"))
            .await?;
        let after = "SELECT pg_catalog.set_config('enable_hashjoin', 'off', true), pg_catalog.set_config('enable_mergejoin', 'off', true)";
        self.send_sql(after, Meta::Control("resetting the planner"))
            .await?;
        for table in creates {
            let sql = format!(
                "INSERT INTO pgrepl.tables (sync_name, schema_name, table_name, state) VALUES ({}, {}, {}, 'streaming')
                 ON CONFLICT (sync_name, schema_name, table_name) DO UPDATE SET state = 'streaming', updated_at = now()",
                quote_literal(self.sync_name.as_str()),
                quote_literal(&table.schema),
                quote_literal(&table.name)
            );
            self.statement(sql).await?;
        }
        self.commit_after_txn = true;
        Ok(())
    }
}

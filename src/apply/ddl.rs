//! A row of `pgrepl.schema_log` in the stream: the DDL command it records
//! is replayed (or skipped, saying why) at that very point, inside the
//! same target transaction as the rows around it, with the source's
//! search_path while it runs.
//!
//! A CREATE TABLE AS is not replayed as a query: its start row announces
//! the table, which is created from the description of its first rows when
//! they come before its end row (FOR ALL TABLES), else from the end row's
//! column list.

use super::applier::Applier;
use super::error::ApplyError;
use super::sent::Meta;
use crate::ddl::replay::{short, Action, LogRow};
use crate::sql::{quote_literal, TableName};
use crate::stream::pgoutput::{Datum, Relation, Tuple};

impl Applier {
    /// This connection changes the target's schema (again when it commits,
    /// see `commit_group`): what every applier of the session read of the
    /// catalog before is stale.
    pub(super) fn schema_changed(&mut self) {
        self.relations.schema_changed();
        self.shared.schema_changed();
    }

    pub(super) async fn ddl_row(&mut self, new: Tuple) -> Result<(), ApplyError> {
        // The target's schema is about to change: nothing read ahead holds.
        self.schema_changed();
        let (Some(replayer), Some(columns)) =
            (self.ddl.as_mut(), self.relations.schema_log_columns())
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
        let (sql, search_path, settings, creates, role) = match replayer.decide(&row)? {
            Action::Skip { reason } => {
                tracing::info!(id = row.id, tag = %row.tag, %reason, ddl = %short(&row.ddl), "DDL not replicated");
                return Ok(());
            }
            Action::Expect { table } => {
                tracing::info!(id = row.id, tag = %row.tag, %table, "a table is being created from a query; its rows follow");
                self.expected.insert(table);
                return Ok(());
            }
            Action::Replay {
                sql,
                search_path,
                settings,
                creates,
                role,
            } => (sql, search_path, settings, creates, role),
        };
        for table in &creates {
            self.expected.remove(table);
        }
        if !self.begin_change().await? {
            return Ok(());
        }
        self.flush_batch().await?;
        tracing::info!(id = row.id, tag = %row.tag, ddl = %short(&sql), "replaying DDL");
        // The source's search_path and session settings (how the command
        // reads its values), and the planner's defaults while it runs (the
        // apply session turns hash and merge joins off); all of them local
        // to the transaction, reset right after.
        let mut before = format!(
            "SELECT pg_catalog.set_config('search_path', {}, true), pg_catalog.set_config('enable_hashjoin', 'on', true),
                    pg_catalog.set_config('enable_mergejoin', 'on', true)",
            quote_literal(&search_path)
        );
        for (name, value) in &settings {
            before.push_str(&format!(
                ", pg_catalog.set_config({}, {}, true)",
                quote_literal(name),
                quote_literal(value)
            ));
        }
        // As the role that ran it, when the target has that role: what it
        // creates gets the source's owner and that role's default
        // privileges. Set last: the settings above need none of its rights.
        if let Some(role) = &role {
            before.push_str(&format!(
                ", (SELECT pg_catalog.set_config('role', r.rolname, true) FROM pg_catalog.pg_roles r
                    WHERE r.rolname = {0} AND r.rolname <> current_user)",
                quote_literal(role)
            ));
        }
        self.send_sql(
            &before,
            Meta::Control("setting the source's search_path and settings"),
        )
        .await?;
        self.send_sql(
            &sql,
            Meta::Ddl {
                id: row.id,
                statement: short(&sql),
            },
        )
        .await?;
        if role.is_some() {
            self.send_sql(
                "SELECT pg_catalog.set_config('role', 'none', true)",
                Meta::Control("resetting the role"),
            )
            .await?;
        }
        let names: Vec<String> = std::iter::once("search_path")
            .chain(settings.iter().map(|(n, _)| n.as_str()))
            .map(quote_literal)
            .collect();
        let reset = format!(
            "SELECT pg_catalog.set_config(name, reset_val, true) FROM pg_catalog.pg_settings WHERE name IN ({})",
            names.join(", ")
        );
        self.send_sql(&reset, Meta::Control("resetting search_path and settings"))
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

    /// Creates a table a CREATE TABLE AS is making from the description of
    /// its rows: the same columns, types named on the target (built-in
    /// types by OID, which every major shares; others by name).
    pub(super) async fn create_from_relation(&mut self, rel: &Relation) -> Result<(), ApplyError> {
        self.schema_changed();
        if !self.begin_change().await? {
            return Ok(());
        }
        self.drain().await?;
        let types: Vec<String> = rel
            .columns
            .iter()
            .map(|c| {
                let ty = match self.types.get(&c.type_oid) {
                    Some(name) => format!("{}::pg_catalog.regtype", quote_literal(name)),
                    None => format!("{}::pg_catalog.oid", c.type_oid),
                };
                format!("pg_catalog.format_type({ty}, {})", c.type_modifier)
            })
            .collect();
        let table = TableName::new(rel.namespace.clone(), rel.name.clone());
        let names = match types.is_empty() {
            true => Vec::new(),
            false => self
                .pipe
                .query(&format!("SELECT {}", types.join(", ")), &[])
                .await?
                .into_iter()
                .next()
                .unwrap_or_default(),
        };
        let mut columns = Vec::with_capacity(rel.columns.len());
        for (c, ty) in rel.columns.iter().zip(names) {
            let ty = ty.ok_or_else(|| {
                ApplyError::Protocol(format!(
                    "{table}: column {} has a type unknown to the target",
                    c.name
                ))
            })?;
            columns.push(format!("{} {ty}", crate::sql::quote_ident(&c.name)));
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            table.quoted(),
            columns.join(", ")
        );
        tracing::info!(%table, ddl = %short(&sql), "creating the table of a CREATE TABLE AS from its rows");
        self.send_sql(&sql, Meta::Statement(sql.clone())).await
    }
}

//! The source's relation descriptions, and their mapping onto target
//! tables.
//!
//! The rule: a description is mapped onto its target table (and checked
//! against the target's columns) only when a change of that relation is
//! about to be applied, never when it arrives. pgoutput describes a
//! relation again before its first change after every schema change, so a
//! description that a later DDL of the same transaction made stale (a
//! column added, then dropped again) is replaced before any change uses it;
//! mapping it eagerly would stop the sync on a column the target rightly
//! lacks.
//!
//! pgrepl's own tables on the source are not the user's: `pgrepl.schema_log`
//! carries DDL (see `ddl`), and every other table of schema `pgrepl` (a
//! `FOR ALL TABLES` publication publishes them too) is ignored.

use super::applier::Applier;
use super::error::ApplyError;
use super::relation::TargetRelation;
use crate::source::catalog::{FENCE_SCHEMA, PGREPL_SCHEMA};
use crate::sql::TableName;
use crate::stream::pgoutput::Relation;

/// A relation of pgrepl's own on the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Internal {
    /// `pgrepl.schema_log`: its rows are DDL to replay.
    SchemaLog,
    /// Any other table of schema `pgrepl`: its changes are not the user's.
    Ignored,
}

impl Applier {
    /// A relation description arrived: kept until a change needs it.
    pub(super) async fn describe_relation(&mut self, rel: Relation) -> Result<(), ApplyError> {
        if rel.namespace == PGREPL_SCHEMA && rel.name == "schema_log" {
            self.schema_log = Some((
                rel.oid,
                rel.columns.iter().map(|c| c.name.clone()).collect(),
            ));
            return Ok(());
        }
        // pgrepl's own tables (the fence's flag among them, published FOR
        // ALL TABLES) are not the user's.
        if rel.namespace == PGREPL_SCHEMA || rel.namespace == FENCE_SCHEMA {
            self.ignored.insert(rel.oid);
            return Ok(());
        }
        // What is batched or in flight was sent under the old description.
        self.flush_batch().await?;
        self.drain().await?;
        let table = TableName::new(rel.namespace.clone(), rel.name.clone());
        self.late.describe(rel.oid, &table);
        if self.expected.remove(&table) {
            self.create_from_relation(&rel).await?;
            self.drain().await?;
        }
        self.relations.remove(&rel.oid);
        self.described.insert(rel.oid, rel);
        Ok(())
    }

    /// Whether `oid` is one of pgrepl's own relations.
    pub(super) fn internal(&self, oid: u32) -> Option<Internal> {
        if self.schema_log.as_ref().is_some_and(|(log, _)| *log == oid) {
            Some(Internal::SchemaLog)
        } else if self.ignored.contains(&oid) {
            Some(Internal::Ignored)
        } else {
            None
        }
    }

    /// Maps `oid`'s latest description onto its target table, if that is
    /// not done yet.
    pub(super) async fn map_relation(&mut self, oid: u32) -> Result<(), ApplyError> {
        if self.relations.contains_key(&oid) {
            return Ok(());
        }
        let Some(rel) = self.described.remove(&oid) else {
            return Err(ApplyError::Protocol(format!(
                "a change for relation {oid} came before its description"
            )));
        };
        // The catalog query runs once nothing else is in flight.
        self.drain().await?;
        let mapped = TargetRelation::load(&mut self.pipe, rel, self.ddl.is_some()).await?;
        self.relations.insert(oid, mapped);
        Ok(())
    }

    /// A TRUNCATE of exactly the relations the source truncated: `ONLY`
    /// each (a `TRUNCATE ONLY parent` on the source lists the parent alone,
    /// a plain one lists its children too), except partitioned tables,
    /// which hold no rows and refuse `ONLY`.
    pub(super) async fn truncate(
        &mut self,
        relations: &[u32],
        cascade: bool,
        restart_identity: bool,
    ) -> Result<(), ApplyError> {
        let mut names = Vec::new();
        let mut in_copy = false;
        for &oid in relations {
            if self.in_copy(oid) {
                in_copy = true;
                continue;
            }
            if self.internal(oid).is_some() {
                continue;
            }
            self.map_relation(oid).await?;
            let rel = self.relations.get(&oid).ok_or_else(|| {
                ApplyError::Protocol(format!("relation {oid} was mapped and is gone"))
            })?;
            names.push(rel.truncate_target());
        }
        if names.is_empty() {
            return Ok(());
        }
        // A table copied after this truncate holds what came after it: it
        // is left out, and the others are emptied row by row, so neither a
        // cascade nor a key to it empties it or refuses (the apply session
        // fires no foreign-key trigger).
        if in_copy {
            let sql = names
                .iter()
                .map(|n| format!("DELETE FROM {n}"))
                .collect::<Vec<_>>()
                .join("; ");
            return self.statement(sql).await;
        }
        let sql = format!(
            "TRUNCATE {}{}{}",
            names.join(", "),
            if restart_identity {
                " RESTART IDENTITY"
            } else {
                ""
            },
            if cascade { " CASCADE" } else { "" }
        );
        self.statement(sql).await
    }
}

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
//!
//! [`Relations`] keeps just that: descriptions not mapped yet, relations
//! mapped, pgrepl's own, and the target's catalog read ahead (`catalog`).
//! Its only I/O is a mapping's catalog query, on the pipeline the applier
//! hands it once nothing is in flight there.

use rustc_hash::{FxHashMap, FxHashSet};

use super::catalog::Catalog;
use super::error::ApplyError;
use super::pipeline::Pipeline;
use super::relation::TargetRelation;
use crate::source::catalog::{FENCE_SCHEMA, PGREPL_SCHEMA};
use crate::sql::{SyncName, TableName};
use crate::stream::pgoutput::{Relation, Tuple};

/// A relation of pgrepl's own on the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Internal {
    /// `pgrepl.schema_log`: its rows are DDL to replay.
    SchemaLog,
    /// Any other table of schema `pgrepl`: its changes are not the user's.
    Ignored,
}

#[derive(Default)]
pub(super) struct Relations {
    /// Relations mapped onto their target tables.
    mapped: FxHashMap<u32, TargetRelation>,
    /// Descriptions not mapped yet: mapped when a change needs them.
    described: FxHashMap<u32, Relation>,
    /// pgrepl's own relations other than the schema log: ignored.
    ignored: FxHashSet<u32>,
    /// `pgrepl.schema_log` on the source: its relation id and columns.
    schema_log: Option<(u32, Vec<String>)>,
    /// The target's catalog of tables not mapped yet, read ahead.
    catalog: Catalog,
    /// This connection changed the target's schema in its open transaction.
    schema_changed: bool,
}

impl Relations {
    /// A description of one of pgrepl's own relations is kept as such
    /// (true); any other is the user's, for [`Relations::describe`].
    pub(super) fn own(&mut self, rel: &Relation) -> bool {
        if rel.namespace == PGREPL_SCHEMA && rel.name == "schema_log" {
            self.schema_log = Some((
                rel.oid,
                rel.columns.iter().map(|c| c.name.clone()).collect(),
            ));
            return true;
        }
        // pgrepl's own tables (the fence's flag among them, published FOR
        // ALL TABLES) are not the user's.
        if rel.namespace == PGREPL_SCHEMA || rel.namespace == FENCE_SCHEMA {
            self.ignored.insert(rel.oid);
            return true;
        }
        false
    }

    /// A user relation's description: kept until a change needs it, the
    /// mapping of an older one forgotten.
    pub(super) fn describe(&mut self, rel: Relation) {
        self.mapped.remove(&rel.oid);
        self.described.insert(rel.oid, rel);
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

    /// The columns of `pgrepl.schema_log`, once described.
    pub(super) fn schema_log_columns(&self) -> Option<&[String]> {
        self.schema_log.as_ref().map(|(_, c)| c.as_slice())
    }

    /// `oid`'s latest description when it is not mapped yet (taken: hand
    /// it to [`Relations::map`]); `None` when it is.
    pub(super) fn unmapped(&mut self, oid: u32) -> Result<Option<Relation>, ApplyError> {
        if self.mapped.contains_key(&oid) {
            return Ok(None);
        }
        match self.described.remove(&oid) {
            Some(rel) => Ok(Some(rel)),
            None => Err(ApplyError::Protocol(format!(
                "a change for relation {oid} came before its description"
            ))),
        }
    }

    /// Maps a description onto its target table from the catalog read
    /// ahead, when it is there and fits; gives the description back when
    /// it must be read ([`Relations::map`]).
    /// `epoch`: the session's schema epoch now (see `Shared`).
    pub(super) fn map_ahead(
        &mut self,
        rel: Relation,
        ddl_replicated: bool,
        epoch: u64,
    ) -> Option<Relation> {
        let table = TableName::new(rel.namespace.clone(), rel.name.clone());
        let Some(rows) = self.catalog.take(&table, epoch) else {
            return Some(rel);
        };
        // Read before the source's latest change of a column's type (the
        // target's changed by hand in between, DDL replication off): read
        // again rather than cast to the type read.
        if !Catalog::same_types(&rel, &rows) {
            return Some(rel);
        }
        let oid = rel.oid;
        match TargetRelation::from_rows(rel.clone(), rows, ddl_replicated) {
            Ok(mapped) => {
                self.mapped.insert(oid, mapped);
                None
            }
            // What was read ahead may be older than the table: read again.
            Err(error) => {
                tracing::debug!(%table, %error, "the catalog read ahead does not fit: reading it again");
                Some(rel)
            }
        }
    }

    /// Maps a description onto its target table: a catalog query on
    /// `pipe`, which must have nothing in flight (the next tables of sync
    /// `sync` are read ahead with it).
    pub(super) async fn map<M>(
        &mut self,
        pipe: &mut Pipeline<M>,
        rel: Relation,
        ddl_replicated: bool,
        sync: &SyncName,
        epoch: u64,
    ) -> Result<(), ApplyError> {
        let oid = rel.oid;
        let table = TableName::new(rel.namespace.clone(), rel.name.clone());
        let mapped: FxHashSet<&TableName> = self.mapped.values().map(|m| &m.table).collect();
        let rows = self
            .catalog
            .read(pipe, &table, sync, epoch, |name| mapped.contains(name))
            .await?;
        let mapped = TargetRelation::from_rows(rel, rows, ddl_replicated)?;
        self.mapped.insert(oid, mapped);
        Ok(())
    }

    /// Whether changes of `oid` may have been sent under its description.
    pub(super) fn is_mapped(&self, oid: u32) -> bool {
        self.mapped.contains_key(&oid)
    }

    /// pgrepl changed the target's schema: what was read ahead is stale.
    pub(super) fn schema_changed(&mut self) {
        self.catalog.forget();
        self.schema_changed = true;
    }

    pub(super) fn get(&self, oid: u32) -> Option<&TargetRelation> {
        self.mapped.get(&oid)
    }

    pub(super) fn get_mut(&mut self, oid: u32) -> Option<&mut TargetRelation> {
        self.mapped.get_mut(&oid)
    }

    /// The table of `relation` and the key of `row` in it, for a message.
    pub(super) fn name_key(&self, relation: u32, row: &Tuple) -> (TableName, String) {
        match self.mapped.get(&relation) {
            Some(rel) => (rel.table.clone(), rel.describe_key(row)),
            None => (
                TableName::new("?", format!("relation {relation}")),
                String::new(),
            ),
        }
    }

    /// After COMMIT: every stage table emptied itself.
    /// Whether the transaction changed the target's schema.
    pub(super) fn committed(&mut self) -> bool {
        for rel in self.mapped.values_mut() {
            rel.committed();
        }
        std::mem::take(&mut self.schema_changed)
    }

    /// After a rollback to a savepoint: stage tables may be gone.
    pub(super) fn forget_stages(&mut self) {
        for rel in self.mapped.values_mut() {
            rel.forget_stages();
        }
    }
}

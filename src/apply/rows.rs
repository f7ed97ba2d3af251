//! One row change of a source transaction: folded into the batch of net
//! effects when the table and the change allow it (see `batch`), else sent
//! at once as its prepared statement, after whatever of its table is
//! batched (the order of a table's rows is always kept). A TRUNCATE too.
//! Both map their relations onto target tables first (see `relations`).

use super::applier::Applier;
use super::batch::{Batch, BATCH_BYTES, BATCH_ROWS};
use super::error::ApplyError;
use super::params::Param;
use super::paths::Path;
use super::sent::{Meta, Op};
use crate::lsn::Lsn;
use crate::sql::TableName;
use crate::stream::pgoutput::Relation;
use crate::stream::pgoutput::{OldRow, Tuple};

impl Applier {
    pub(super) async fn row(
        &mut self,
        op: Op,
        relation: u32,
        old: Option<OldRow>,
        new: Tuple,
    ) -> Result<(), ApplyError> {
        if !self.begin_change().await? {
            return Ok(());
        }
        self.map_relation(relation).await?;
        let Some((old, new)) = self.try_batch(op, relation, old, new) else {
            if self.batch.rows >= BATCH_ROWS || self.batch.bytes >= BATCH_BYTES {
                self.flush_batch().await?;
            }
            return Ok(());
        };
        // Not foldable: what is batched for this table goes first, to keep
        // the order of its rows.
        if self.batch.holds(relation) {
            self.flush_batch().await?;
        }
        let rel = self.relations.get_mut(relation).ok_or_else(|| {
            ApplyError::Protocol(format!(
                "a change for relation {relation} came before its description"
            ))
        })?;
        let mut path = Path::Single;
        let prepared = match op {
            Op::Insert => rel.insert(&mut self.pipe),
            Op::Update => {
                let filter = rel
                    .filter_for(old.as_ref(), Some(&new))
                    .expect("an update always has a row to match");
                let key_changed = matches!(old, Some(OldRow::Key(_)));
                if rel.rewrites_identity(key_changed) {
                    path = Path::DeleteInsert;
                }
                rel.update(&mut self.pipe, &new, &filter, key_changed)?
            }
            Op::Delete => {
                let filter = rel
                    .filter_for(old.as_ref(), None)
                    .ok_or_else(|| ApplyError::Protocol("a DELETE without its old row".into()))?;
                rel.delete(&mut self.pipe, &filter)?
            }
        };
        let rel_table = rel.table.clone();
        let params: Vec<Param> = {
            let key_row = match &old {
                Some(OldRow::Key(t)) | Some(OldRow::Full(t)) => t,
                None => &new,
            };
            prepared
                .set
                .iter()
                .map(|&i| Param::from_datum(&new[i]))
                .chain(
                    prepared
                        .filter
                        .iter()
                        .map(|&i| Param::from_datum(&key_row[i])),
                )
                .collect()
        };
        let key_row = match old {
            Some(OldRow::Key(t)) | Some(OldRow::Full(t)) => t,
            None => new,
        };
        let unbatched = !self.batching();
        self.paths.add(&rel_table, path, 1, unbatched);
        self.send(
            &prepared.name,
            &params,
            Meta::Row {
                op,
                relation,
                row: key_row,
            },
        )
        .await
    }

    /// Whether the change being applied may go into a batch (not while a
    /// group or streamed transaction is replayed after a batch failed).
    pub(super) fn batching(&self) -> bool {
        match &self.streamed {
            Some(s) => s.batching,
            None => {
                self.txn.as_ref().map(|t| t.final_lsn).unwrap_or(Lsn::ZERO) > self.ungrouped_through
            }
        }
    }

    /// Folds the change into the batch when the table and the change
    /// allow; otherwise hands the change back.
    fn try_batch(
        &mut self,
        op: Op,
        relation: u32,
        old: Option<OldRow>,
        new: Tuple,
    ) -> Option<(Option<OldRow>, Tuple)> {
        let lsn = self.txn.as_ref().map(|t| t.final_lsn).unwrap_or(Lsn::ZERO);
        if !self.batching() {
            return Some((old, new));
        }
        let Some(rel) = self.relations.get(relation) else {
            return Some((old, new));
        };
        let back = if !Batch::accepts(rel) {
            match (op, old) {
                (Op::Insert, None) => self
                    .batch
                    .add_append(relation, new, lsn)
                    .err()
                    .map(|n| (None, n)),
                (_, old) => Some((old, new)),
            }
        } else {
            let key = &rel.key;
            match (op, old) {
                (Op::Insert, None) => self
                    .batch
                    .add_insert(key, relation, new, lsn)
                    .err()
                    .map(|n| (None, n)),
                (Op::Update, None) => self
                    .batch
                    .add_update(key, relation, None, new, lsn)
                    .err()
                    .map(|(_, n)| (None, n)),
                (Op::Update, Some(OldRow::Key(k))) => self
                    .batch
                    .add_update(key, relation, Some(k), new, lsn)
                    .err()
                    .map(|(k, n)| (k.map(OldRow::Key), n)),
                (Op::Delete, Some(OldRow::Key(k))) => self
                    .batch
                    .add_delete(key, relation, k, lsn)
                    .err()
                    .map(|k| (Some(OldRow::Key(k)), new)),
                (_, old) => Some((old, new)),
            }
        };
        if back.is_none() {
            self.batch_through = self.batch_through.max(lsn);
        }
        back
    }

    /// A relation description arrived: kept until a change needs it.
    pub(super) async fn describe_relation(&mut self, rel: Relation) -> Result<(), ApplyError> {
        if self.relations.own(&rel) {
            return Ok(());
        }
        let table = TableName::new(rel.namespace.clone(), rel.name.clone());
        let create = self.expected.remove(&table);
        // What is batched or in flight was sent under the old description:
        // only a relation mapped now can have any (one not mapped in this
        // session, or not since its last description, waits for nothing).
        if create || self.relations.is_mapped(rel.oid) {
            self.flush_batch().await?;
            self.drain().await?;
        }
        self.late.describe(rel.oid, &table);
        if create {
            self.create_from_relation(&rel).await?;
            self.drain().await?;
        }
        self.relations.describe(rel);
        Ok(())
    }

    /// Maps `oid`'s latest description onto its target table, if that is
    /// not done yet.
    pub(super) async fn map_relation(&mut self, oid: u32) -> Result<(), ApplyError> {
        let Some(rel) = self.relations.unmapped(oid)? else {
            return Ok(());
        };
        let ddl = self.ddl.is_some();
        let epoch = self.shared.schema_epoch();
        let Some(rel) = self.relations.map_ahead(rel, ddl, epoch) else {
            return Ok(());
        };
        // The catalog query runs once nothing else is in flight.
        self.drain().await?;
        self.relations
            .map(&mut self.pipe, rel, ddl, &self.sync_name, epoch)
            .await
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
            if self.relations.internal(oid).is_some() {
                continue;
            }
            self.map_relation(oid).await?;
            let rel = self.relations.get(oid).ok_or_else(|| {
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

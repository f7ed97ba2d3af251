//! Writing out a batch: per table, the net deletes, updates and inserts.
//! Many rows go set-based (deletes and updates as one statement joining
//! the rows, passed as arrays or staged in a temp table, see `sets`;
//! inserts by COPY into the table); a few go as the usual prepared
//! statements. Every row count is checked:
//! a batch whose count is off, or any statement of it that fails, rolls
//! the group back and replays it one source transaction at a time without
//! batching, which names the exact transaction if the failure is real.

use bytes::BytesMut;

use super::applier::Applier;
use super::batch::Net;
use super::copy_text::{copy_text, copy_text_size};
use super::error::ApplyError;
use super::params::Param;
use super::paths::Path;
use super::relation::RowFilter;
use super::sent::{Meta, Sent};
use super::sets::array_params;
use super::sets::StageKind;
use crate::stream::pgoutput::Tuple;

/// Fewer rows than this go as single statements.
const SET_MIN: usize = 16;

impl Applier {
    /// Writes out the batch (inside the open target transaction).
    pub(super) async fn flush_batch(&mut self) -> Result<(), ApplyError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let tables = self.batch.take();
        for (relation, mut net) in tables {
            let (mut deletes, mut updates, mut inserts) = (Vec::new(), Vec::new(), Vec::new());
            for (_, change) in net.changes.drain(..) {
                match change {
                    Net::Delete(t) => deletes.push(t),
                    Net::Update(t) => updates.push(t),
                    Net::Insert(t) => inserts.push(t),
                }
            }
            self.flush_set(relation, BatchedOp::Delete, deletes).await?;
            self.flush_set(relation, BatchedOp::Update, updates).await?;
            self.flush_inserts(relation, inserts).await?;
            self.flush_inserts(relation, net.appends).await?;
        }
        Ok(())
    }

    /// The net deletes or updates of one table: as single statements when
    /// few, else one statement over all of them (arrays, or a stage table
    /// when a column cannot travel in an array).
    async fn flush_set(
        &mut self,
        relation: u32,
        op: BatchedOp,
        rows: Vec<Tuple>,
    ) -> Result<(), ApplyError> {
        let Some(rel) = self.relations.get(relation) else {
            return Err(ApplyError::Protocol(
                "batched rows of an unknown relation".into(),
            ));
        };
        // Deletes carry the key; updates every column and set all but it.
        let (cols, settable, kind) = match op {
            BatchedOp::Update => (rel.all_columns(), rel.settable(), StageKind::Update),
            _ => (rel.key.clone(), Vec::new(), StageKind::Delete),
        };
        if op == BatchedOp::Update && settable.is_empty() {
            // Only key columns: nothing an update could change.
            return Ok(());
        }
        if rows.len() < SET_MIN {
            for row in rows {
                self.batched_row(relation, op, row).await?;
            }
            return Ok(());
        }
        let n = rows.len() as u64;
        let at = self.position();
        let seq = &mut self.stage_seq;
        let rel = self
            .relations
            .get_mut(relation)
            .ok_or_else(|| ApplyError::Protocol("batched rows of an unknown relation".into()))?;
        let statement = |rel: &super::relation::TargetRelation, from: &str| match op {
            BatchedOp::Update => rel.set_update_sql(from, &settable),
            _ => rel.set_delete_sql(from),
        };
        let done = Meta::batch(relation, op.verb(), Some(n));
        let rewrite = op == BatchedOp::Update && rel.rewrites_identity(false);
        let table = rel.table.clone();
        if rel.unnestable(&cols) {
            let path = if rewrite {
                Path::DeleteInsert
            } else {
                Path::Unnest
            };
            self.paths.add(&table, path, n, false);
            let sql = statement(rel, &rel.unnest_from(&cols));
            let prepared = rel.prepare(&mut self.pipe, sql, Vec::new(), Vec::new());
            let params = array_params(&rows, &cols);
            return self.send(&prepared.name, &params, done).await;
        }
        let stage = rel.stage(&mut self.pipe, kind, seq, || {
            Sent::at(Meta::batch(relation, "preparing a stage table", None), at)
        });
        let mut data = BytesMut::with_capacity(copy_text_size(&rows, &cols));
        for r in &rows {
            copy_text(&mut data, r, &cols);
        }
        let copy = rel.copy_sql(&stage, &cols);
        let sql = statement(rel, &format!("{stage} AS s"));
        let path = if rewrite {
            Path::DeleteInsert
        } else {
            Path::Stage
        };
        self.paths.add(&table, path, n, false);
        self.send_copy(&copy, &data, Meta::batch(relation, "staging rows", Some(n)))
            .await?;
        self.send_sql(&sql, done).await
    }

    async fn flush_inserts(&mut self, relation: u32, rows: Vec<Tuple>) -> Result<(), ApplyError> {
        if rows.len() < SET_MIN {
            for row in rows {
                self.batched_row(relation, BatchedOp::Insert, row).await?;
            }
            return Ok(());
        }
        let rel = self
            .relations
            .get(relation)
            .ok_or_else(|| ApplyError::Protocol("batched rows of an unknown relation".into()))?;
        let all = rel.all_columns();
        let mut data = BytesMut::with_capacity(copy_text_size(&rows, &all));
        for r in &rows {
            copy_text(&mut data, r, &all);
        }
        let copy = rel.copy_sql(&rel.table.quoted(), &all);
        let table = rel.table.clone();
        self.paths.add(&table, Path::Copy, rows.len() as u64, false);
        self.send_copy(
            &copy,
            &data,
            Meta::batch(relation, "inserting", Some(rows.len() as u64)),
        )
        .await
    }

    /// One net change as a single statement (for the few rows of a table).
    async fn batched_row(
        &mut self,
        relation: u32,
        op: BatchedOp,
        row: Tuple,
    ) -> Result<(), ApplyError> {
        let rel = self
            .relations
            .get_mut(relation)
            .ok_or_else(|| ApplyError::Protocol("batched rows of an unknown relation".into()))?;
        let path = match op {
            BatchedOp::Update if rel.rewrites_identity(false) => Path::DeleteInsert,
            _ => Path::Single,
        };
        let table = rel.table.clone();
        self.paths.add(&table, path, 1, false);
        let prepared = match op {
            BatchedOp::Insert => rel.insert(&mut self.pipe),
            BatchedOp::Update => rel.update(&mut self.pipe, &row, &RowFilter::Key(&row), false)?,
            BatchedOp::Delete => rel.delete(&mut self.pipe, &RowFilter::Key(&row))?,
        };
        let params: Vec<Param> = prepared
            .set
            .iter()
            .chain(prepared.filter.iter())
            .map(|&i| Param::from_datum(&row[i]))
            .collect();
        let expected = if op == BatchedOp::Insert {
            None
        } else {
            Some(1)
        };
        self.send(
            &prepared.name,
            &params,
            Meta::batch(relation, op.verb(), expected),
        )
        .await
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BatchedOp {
    Insert,
    Update,
    Delete,
}

impl BatchedOp {
    fn verb(self) -> &'static str {
        match self {
            BatchedOp::Insert => "inserting",
            BatchedOp::Update => "updating",
            BatchedOp::Delete => "deleting",
        }
    }
}

//! Which way each row reached the target, per table: one statement of its
//! own, set-based (arrays unnested, or a stage table), COPY, DELETE +
//! INSERT (identity columns, see `identity`), inside a transaction streamed
//! while in progress, or replayed without batching after a batch failed.
//! Counted when the target transaction commits, so a rolled-back attempt
//! counts nothing. Tests use them to prove a path really ran (a failing
//! batch replays its whole group row by row and would hide the set-based
//! path for every table in it); logs show them at the end of a session.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use crate::sql::TableName;

/// One way a row is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Single,
    Unnest,
    Stage,
    Copy,
    DeleteInsert,
}

/// Rows per path for one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounts {
    pub single: u64,
    pub unnest: u64,
    pub stage: u64,
    pub copy: u64,
    pub delete_insert: u64,
    /// Of the above, rows of transactions streamed while in progress.
    pub streamed: u64,
    /// Of the above, rows applied without batching (replays).
    pub unbatched: u64,
}

impl PathCounts {
    fn add(&mut self, path: Path, n: u64) {
        match path {
            Path::Single => self.single += n,
            Path::Unnest => self.unnest += n,
            Path::Stage => self.stage += n,
            Path::Copy => self.copy += n,
            Path::DeleteInsert => self.delete_insert += n,
        }
    }

    fn merge(&mut self, o: &PathCounts) {
        self.single += o.single;
        self.unnest += o.unnest;
        self.stage += o.stage;
        self.copy += o.copy;
        self.delete_insert += o.delete_insert;
        self.streamed += o.streamed;
        self.unbatched += o.unbatched;
    }
}

impl fmt::Display for PathCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "single={} unnest={} stage={} copy={} delete_insert={} streamed={} unbatched={}",
            self.single,
            self.unnest,
            self.stage,
            self.copy,
            self.delete_insert,
            self.streamed,
            self.unbatched
        )
    }
}

/// What one applier sent in its open target transaction.
#[derive(Debug, Default)]
pub struct Pending {
    tables: HashMap<TableName, PathCounts>,
}

impl Pending {
    pub fn add(&mut self, table: &TableName, path: Path, n: u64, unbatched: bool) {
        let c = match self.tables.get_mut(table) {
            Some(c) => c,
            None => self.tables.entry(table.clone()).or_default(),
        };
        c.add(path, n);
        if unbatched {
            c.unbatched += n;
        }
    }

    /// The transaction rolled back: nothing of it counts.
    pub fn forget(&mut self) {
        self.tables.clear();
    }

    /// The transaction committed: its rows count, as streamed ones when
    /// `streamed`.
    pub fn commit(&mut self, into: &Totals, streamed: bool) {
        if self.tables.is_empty() {
            return;
        }
        let Ok(mut totals) = into.tables.lock() else {
            return;
        };
        for (table, mut c) in self.tables.drain() {
            if streamed {
                c.streamed = c.single + c.unnest + c.stage + c.copy + c.delete_insert;
            }
            totals.entry(table).or_default().merge(&c);
        }
    }
}

/// Rows per path per table, for the whole run, and how source
/// transactions were applied.
#[derive(Debug, Default)]
pub struct Totals {
    tables: Mutex<BTreeMap<TableName, PathCounts>>,
    /// Source transactions that shared a target transaction with others.
    pub grouped_txns: AtomicU64,
    /// Source transactions of at least [`LARGE`] changes applied whole,
    /// as committed (not streamed while in progress).
    pub large_txns: AtomicU64,
}

/// Changes that make a source transaction large.
pub const LARGE: usize = 1000;

impl Totals {
    pub fn snapshot(&self) -> BTreeMap<TableName, PathCounts> {
        self.tables.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

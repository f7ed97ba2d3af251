//! What `verify` found: a line per table a person reads at a glance, the
//! differing rows under it, and a summary line with the LSN compared at;
//! or the same as JSON.

use serde::Serialize;

use super::hash::Differences;
use crate::lsn::Lsn;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Data {
    Equal,
    Different,
    /// The table is not on the target at all.
    MissingOnTarget,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableReport {
    pub table: String,
    pub rows_source: i64,
    pub rows_target: i64,
    pub chunks: usize,
    pub data: Data,
    pub missing_on_target: Vec<String>,
    pub extra_on_target: Vec<String>,
    /// Key and the columns that differ.
    pub different: Vec<(String, Vec<String>)>,
    pub missing_count: u64,
    pub extra_count: u64,
    pub different_count: u64,
    /// Schema differences, one line each.
    pub schema: Vec<String>,
    /// What a person should know that is not a difference.
    pub notes: Vec<String>,
}

impl TableReport {
    pub fn new(table: String) -> Self {
        TableReport {
            table,
            rows_source: 0,
            rows_target: 0,
            chunks: 0,
            data: Data::Equal,
            missing_on_target: Vec::new(),
            extra_on_target: Vec::new(),
            different: Vec::new(),
            missing_count: 0,
            extra_count: 0,
            different_count: 0,
            schema: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Folds a differing range's rows in.
    pub fn add(&mut self, d: Differences) {
        self.data = Data::Different;
        let room = |len: usize| super::hash::SHOWN.saturating_sub(len);
        let n = room(self.missing_on_target.len());
        self.missing_on_target.extend(d.missing.into_iter().take(n));
        let n = room(self.extra_on_target.len());
        self.extra_on_target.extend(d.extra.into_iter().take(n));
        let n = room(self.different.len());
        self.different.extend(d.changed.into_iter().take(n));
        self.missing_count += d.missing_count;
        self.extra_count += d.extra_count;
        self.different_count += d.changed_count;
    }

    pub fn equal(&self) -> bool {
        matches!(self.data, Data::Equal) && self.schema.is_empty()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Both sides were compared as of the source's transactions committed
    /// before this LSN.
    pub lsn: Lsn,
    /// How long the running sync held its apply for it, in milliseconds.
    pub held_ms: Option<u64>,
    pub tables: Vec<TableReport>,
    /// Sequences no table owns that differ.
    pub sequences: Vec<String>,
    /// Notes on sequences no table owns (not differences).
    pub notes: Vec<String>,
    pub seconds: f64,
    pub equal: bool,
}

impl Report {
    pub fn rows(&self) -> i64 {
        self.tables.iter().map(|t| t.rows_source).sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let width = self
            .tables
            .iter()
            .map(|t| t.table.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        out.push_str(&format!(
            "{:<width$}  {:>12}  {:>6}  {:<10}  SCHEMA\n",
            "TABLE", "ROWS", "CHUNKS", "DATA"
        ));
        for t in &self.tables {
            let data = match t.data {
                Data::Equal => "equal",
                Data::Different => "DIFFERENT",
                Data::MissingOnTarget => "MISSING",
            };
            let schema = if t.schema.is_empty() {
                "equal"
            } else {
                "DIFFERENT"
            };
            out.push_str(&format!(
                "{:<width$}  {:>12}  {:>6}  {:<10}  {schema}\n",
                t.table, t.rows_source, t.chunks, data
            ));
            let list = |keys: &[String]| keys.join(", ");
            if t.missing_count > 0 {
                out.push_str(&format!(
                    "    missing on the target ({}): {}\n",
                    t.missing_count,
                    list(&t.missing_on_target)
                ));
            }
            if t.extra_count > 0 {
                out.push_str(&format!(
                    "    extra on the target ({}): {}\n",
                    t.extra_count,
                    list(&t.extra_on_target)
                ));
            }
            if t.different_count > 0 {
                let rows: Vec<String> = t
                    .different
                    .iter()
                    .map(|(k, cols)| format!("{k} in {}", cols.join(", ")))
                    .collect();
                out.push_str(&format!(
                    "    different ({}): {}\n",
                    t.different_count,
                    rows.join("; ")
                ));
            }
            for s in &t.schema {
                out.push_str(&format!("    schema: {s}\n"));
            }
            for n in &t.notes {
                out.push_str(&format!("    note: {n}\n"));
            }
        }
        for s in &self.sequences {
            out.push_str(&format!("{s}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        let differ = self.tables.iter().filter(|t| !t.equal()).count();
        let held = match self.held_ms {
            Some(ms) => format!(" (the sync's apply held {ms} ms)"),
            None => String::new(),
        };
        let verdict = if self.equal {
            "equal".to_string()
        } else if differ > 0 {
            format!("{differ} table(s) differ")
        } else {
            "sequences differ".to_string()
        };
        out.push_str(&format!(
            "Compared {} table(s), {} row(s), at source LSN {} in {:.1}s{held}: {verdict}.\n",
            self.tables.len(),
            self.rows(),
            self.lsn,
            self.seconds
        ));
        out
    }
}

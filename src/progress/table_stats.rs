//! One table's copy as the copy workers count it: what the progress
//! display (`ui`) and the telemetry (`telemetry`) both read.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use crate::sql::TableName;

/// One table's copy, updated by the copy workers.
pub struct TableStats {
    pub name: TableName,
    pub estimated_rows: u64,
    pub estimated_bytes: u64,
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub units_left: AtomicUsize,
    pub(super) started: OnceLock<Instant>,
    /// Its bar, while the copy shows bars (see `ui`).
    pub(super) bar: Mutex<Option<ProgressBar>>,
}

impl TableStats {
    pub fn new(name: TableName, estimated_rows: i64, estimated_bytes: i64, units: usize) -> Self {
        TableStats {
            name,
            estimated_rows: estimated_rows.max(0) as u64,
            estimated_bytes: estimated_bytes.max(0) as u64,
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            units_left: AtomicUsize::new(units),
            started: OnceLock::new(),
            bar: Mutex::new(None),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.get().map(Instant::elapsed).unwrap_or_default()
    }
}

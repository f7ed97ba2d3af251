//! What a person watching the copy sees. In a terminal: a bar per table
//! being copied and one overall (rows, bytes, rate, ETA). Otherwise: one
//! log line per table done and an overall line every ten seconds. At the
//! end, one summary.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use super::table_stats::TableStats;
use super::{human_bytes, human_duration};

/// The bars being drawn, if any: log lines are printed above them (see
/// `logging`).
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// While `Some`, log lines are printed above these progress bars.
pub fn route_through(bars: Option<MultiProgress>) {
    if let Ok(mut slot) = BARS.lock() {
        *slot = bars;
    }
}

/// The bars log lines are printed above now.
pub fn bars() -> Option<MultiProgress> {
    BARS.lock().ok().and_then(|b| b.clone())
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    Bars,
    Lines,
}

impl ProgressMode {
    /// Bars on a terminal, lines otherwise (or when logs are JSON).
    pub fn detect(json_logs: bool) -> Self {
        use std::io::IsTerminal;
        // Several databases at once print lines, each naming its database.
        let one_database = super::scope::current().is_none();
        if !json_logs && one_database && std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

/// The whole copy, shown one way or the other.
pub struct CopyDisplay {
    mode: ProgressMode,
    tables: Vec<Arc<TableStats>>,
    started: Instant,
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    last_line: Mutex<Instant>,
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("progress templates are constant and valid")
        .progress_chars("=> ")
}

impl CopyDisplay {
    pub fn new(mode: ProgressMode, tables: Vec<Arc<TableStats>>) -> Self {
        let total_bytes: u64 = tables.iter().map(|t| t.estimated_bytes).sum();
        let (multi, overall) = match mode {
            ProgressMode::Bars => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
                route_through(Some(multi.clone()));
                let overall = multi.add(ProgressBar::new(total_bytes.max(1)));
                overall.set_style(bar_style(
                    "copy  [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                ));
                (Some(multi), Some(overall))
            }
            ProgressMode::Lines => (None, None),
        };
        CopyDisplay {
            mode,
            tables,
            started: Instant::now(),
            multi,
            overall,
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// Marks the table started; `true` the first time only.
    pub fn table_started(&self, t: &TableStats) -> bool {
        if t.started.set(Instant::now()).is_err() {
            return false;
        }
        if let Some(multi) = &self.multi {
            let bar = multi.add(ProgressBar::new(t.estimated_bytes.max(1)));
            bar.set_style(bar_style(
                "  {prefix:32!} [{bar:24}] {bytes:>10} {bytes_per_sec:>12} {msg}",
            ));
            bar.set_prefix(t.name.to_string());
            if let Ok(mut slot) = t.bar.lock() {
                *slot = Some(bar);
            }
        }
        true
    }

    pub fn table_done(&self, t: &TableStats) {
        let rows = t.rows.load(Ordering::Relaxed);
        let bytes = t.bytes.load(Ordering::Relaxed);
        let secs = t.elapsed();
        if let Some(bar) = t.bar.lock().ok().and_then(|mut b| b.take()) {
            bar.finish_and_clear();
            if let Some(multi) = &self.multi {
                let _ = multi.println(format!(
                    "  copied {:<32} {:>12} rows {:>10} in {}",
                    t.name.to_string(),
                    rows,
                    human_bytes(bytes),
                    human_duration(secs)
                ));
            }
        }
        if self.mode == ProgressMode::Lines {
            tracing::info!(
                table = %t.name,
                rows,
                bytes,
                seconds = secs.as_secs_f64(),
                "copied {} ({rows} rows, {}) in {}",
                t.name,
                human_bytes(bytes),
                human_duration(secs)
            );
        }
    }

    /// Refreshes bars, or logs the overall line when ten seconds passed.
    pub fn tick(&self) {
        let bytes: u64 = self
            .tables
            .iter()
            .map(|t| t.bytes.load(Ordering::Relaxed))
            .sum();
        let rows: u64 = self
            .tables
            .iter()
            .map(|t| t.rows.load(Ordering::Relaxed))
            .sum();
        let left = self
            .tables
            .iter()
            .filter(|t| t.units_left.load(Ordering::Relaxed) > 0)
            .count();
        match self.mode {
            ProgressMode::Bars => {
                if let Some(o) = &self.overall {
                    if bytes > o.length().unwrap_or(0) {
                        o.set_length(bytes);
                    }
                    o.set_position(bytes);
                    o.set_message(format!("{rows} rows, {left} table(s) left"));
                }
                for t in &self.tables {
                    if let Some(bar) = t.bar.lock().ok().and_then(|b| b.clone()) {
                        let b = t.bytes.load(Ordering::Relaxed);
                        if b > bar.length().unwrap_or(0) {
                            bar.set_length(b);
                        }
                        bar.set_position(b);
                        let r = t.rows.load(Ordering::Relaxed);
                        bar.set_message(if t.estimated_rows > 0 {
                            format!("{r}/~{} rows", t.estimated_rows)
                        } else {
                            format!("{r} rows")
                        });
                    }
                }
            }
            ProgressMode::Lines => {
                let Ok(mut last) = self.last_line.lock() else {
                    return;
                };
                if last.elapsed() < Duration::from_secs(10) {
                    return;
                }
                *last = Instant::now();
                let total: u64 = self.tables.iter().map(|t| t.estimated_bytes).sum();
                let secs = self.started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    rows,
                    bytes,
                    tables_left = left,
                    "copy: {} of ~{} ({:.0}%), {rows} rows, {}/s, {left} table(s) left",
                    human_bytes(bytes),
                    human_bytes(total),
                    if total > 0 {
                        (bytes as f64 * 100.0 / total as f64).min(100.0)
                    } else {
                        0.0
                    },
                    human_bytes((bytes as f64 / secs) as u64)
                );
            }
        }
    }

    /// Clears the bars and returns the summary line.
    pub fn finish(&self) -> String {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
            route_through(None);
        }
        let rows: u64 = self
            .tables
            .iter()
            .map(|t| t.rows.load(Ordering::Relaxed))
            .sum();
        let bytes: u64 = self
            .tables
            .iter()
            .map(|t| t.bytes.load(Ordering::Relaxed))
            .sum();
        let secs = self.started.elapsed();
        format!(
            "Copied {} table(s): {rows} rows, {} in {} ({}/s)",
            self.tables.len(),
            human_bytes(bytes),
            human_duration(secs),
            human_bytes((bytes as f64 / secs.as_secs_f64().max(0.001)) as u64)
        )
    }
}

impl Drop for CopyDisplay {
    fn drop(&mut self) {
        if self.multi.is_some() {
            route_through(None);
        }
    }
}

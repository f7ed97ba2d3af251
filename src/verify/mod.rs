//! `verify`: source and target compared at the same LSN (see `snapshots`),
//! table by table, in key ranges hashed on `--jobs` sessions per side
//! (`plan`, `hash`), differing ranges narrowed to their rows, the schema
//! beside (`schema`), and one report (`report`). It uses the stages
//! (`source`, `control`, `conn`); nothing uses it but the CLI and, under
//! the fence, `cutover`.

pub mod hash;
pub mod plan;
pub mod report;
pub mod schema;
pub mod snapshots;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::conn::error::describe;
use crate::conn::{ConnectError, Endpoint, Side};
use crate::control::ControlError;
use crate::progress::ui::ProgressMode;
use crate::source::catalog::{self, SelectedTables};
use crate::source::selection::Selection;
use crate::sql::SyncName;
use plan::{Chunk, TablePlan};
use report::{Data, Report, TableReport};
pub use snapshots::Snapshots;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Connect(Box<ConnectError>),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{side}: {what}: {message}")]
    Query {
        side: Side,
        what: &'static str,
        message: String,
    },
    #[error("source: creating the temporary slot for the comparison's snapshot: {0} (verify needs one free replication slot)")]
    Slot(String),
    #[error("{0}")]
    Other(String),
}

impl From<ConnectError> for VerifyError {
    fn from(e: ConnectError) -> Self {
        VerifyError::Connect(Box::new(e))
    }
}

impl From<crate::conn::raw::RawError> for VerifyError {
    fn from(e: crate::conn::raw::RawError) -> Self {
        VerifyError::Other(e.to_string())
    }
}

impl VerifyError {
    pub fn source(what: &'static str, e: &tokio_postgres::Error) -> Self {
        VerifyError::Query {
            side: Side::Source,
            what,
            message: describe(e),
        }
    }

    pub fn target(what: &'static str, e: &tokio_postgres::Error) -> Self {
        VerifyError::Query {
            side: Side::Target,
            what,
            message: describe(e),
        }
    }
}

/// How the two sides are brought to one LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The sync runs: it holds its apply for the snapshots.
    Running,
    /// The sync is stopped (see `snapshots::while_stopped`).
    Stopped,
    /// Under a cutover's fence (at this LSN), the sync holding at it.
    Fenced(crate::lsn::Lsn),
}

/// What to compare and how.
pub struct VerifyRequest<'a> {
    pub name: &'a SyncName,
    pub source: &'a Endpoint,
    pub target: &'a Endpoint,
    /// `None`: the sync's own selection (its DDL capture's), else all.
    pub selection: Option<Selection>,
    pub jobs: usize,
    pub chunk_rows: u64,
    pub mode: Mode,
    pub wait: Duration,
    pub progress: ProgressMode,
}

/// Compares; the report says whether the sides are equal.
pub async fn run(req: &VerifyRequest<'_>) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let (src, tgt) = tokio::try_join!(req.source.connect(), req.target.connect())?;
    let record = crate::progress::state::load_sync(&tgt, req.name)
        .await
        .map_err(|e| VerifyError::target("reading pgrepl state", &e))?
        .ok_or_else(|| {
            VerifyError::Other(format!(
                "target: no sync {} is recorded here: check --target and --name",
                req.name
            ))
        })?;
    if record.phase != crate::progress::state::SyncPhase::Streaming && req.mode == Mode::Running {
        return Err(VerifyError::Other(format!(
            "sync {} is {} (not streaming): verify compares a sync that streams; wait for its copy to finish",
            req.name, record.phase
        )));
    }
    let selection = match &req.selection {
        Some(s) => s.clone(),
        None => crate::ddl::capture::stored_selection(&src, req.name)
            .await
            .map_err(|e| VerifyError::source("reading the sync's selection", &e))?
            .unwrap_or_default(),
    };
    let snaps = match req.mode {
        Mode::Stopped => snapshots::while_stopped(req.source, req.target, &tgt, req.name).await?,
        Mode::Running => {
            snapshots::while_running(req.source, req.target, &src, &tgt, req.name, req.wait).await?
        }
        Mode::Fenced(fence) => snapshots::under_fence(req.source, req.target, fence).await?,
    };
    tracing::info!(lsn = %snaps.lsn, held_ms = ?snaps.held.map(|d| d.as_millis()), "snapshots taken at one LSN");

    // Everything below reads inside the two snapshots.
    let jobs = req.jobs.max(1);
    let mut sources = Vec::with_capacity(jobs);
    let mut targets = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        sources.push(snapshots::session_in(req.source, &snaps.source).await?);
        targets.push(snapshots::session_in(req.target, &snaps.target).await?);
    }
    let lsn = snaps.lsn;
    let held_ms = snaps.held.map(|d| d.as_millis() as u64);
    drop(snaps);

    let all = catalog::list_tables(&sources[0])
        .await
        .map_err(|e| VerifyError::source("listing tables", &e))?;
    let selected = SelectedTables::choose(all, &selection)
        .map_err(|errors| VerifyError::Other(SelectedTables::one_line(&errors)))?;
    let names: Vec<_> = selected.with_storage().map(|t| t.name.clone()).collect();
    let plans = plan::plan(&sources[0], &names, req.chunk_rows).await?;

    let mut reports: Vec<TableReport> = plans
        .iter()
        .map(|p| TableReport::new(p.name.to_string()))
        .collect();
    let mut tables = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        let present: bool = targets[0]
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&p.name.quoted()])
            .await
            .map_err(|e| VerifyError::target("looking for a table", &e))?
            .get(0);
        if !present {
            reports[i].data = Data::MissingOnTarget;
            continue;
        }
        reports[i].chunks = p.parts as usize;
        tables.push(i);
    }
    // The largest first, so the last to finish is a small one.
    tables.sort_by(|a, b| plans[*b].estimate.total_cmp(&plans[*a].estimate));
    let bars = Bars::new(req.progress, tables.len());
    let plans = Arc::new(plans);
    let queue = Arc::new(Mutex::new(VecDeque::from(tables)));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut set = JoinSet::new();
    let mut pairs = sources.into_iter().zip(targets).collect::<Vec<_>>();
    let (first_src, first_tgt) = pairs.remove(0);
    for (s, t) in std::iter::once((first_src, first_tgt)).chain(pairs) {
        let (plans, queue, results, bars) =
            (plans.clone(), queue.clone(), results.clone(), bars.clone());
        set.spawn(async move { worker(s, t, plans, queue, results, bars).await });
    }
    let mut clients = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(pair)) => {
                if clients.is_none() {
                    clients = Some(pair);
                }
            }
            Ok(Err(e)) => {
                set.abort_all();
                bars.finish();
                return Err(e);
            }
            Err(e) => {
                bars.finish();
                return Err(VerifyError::Other(format!("a verify worker failed: {e}")));
            }
        }
    }
    bars.finish();
    let outcomes = std::mem::take(
        &mut *results
            .lock()
            .map_err(|_| VerifyError::Other("results lock".into()))?,
    );
    for (table, fp_src, fp_tgt, diff) in outcomes {
        let r = &mut reports[table];
        r.rows_source += fp_src;
        r.rows_target += fp_tgt;
        if let Some(d) = diff {
            r.add(d);
        }
    }
    let (src1, tgt1) = clients.ok_or_else(|| VerifyError::Other("no verify session".into()))?;
    // Sequences are not transactional: only with nothing moving is one
    // behind on the target a difference.
    let exact = !matches!(req.mode, Mode::Running);
    for (i, p) in plans.iter().enumerate() {
        if matches!(reports[i].data, Data::MissingOnTarget) {
            continue;
        }
        let (differences, notes) = schema::compare(&src1, &tgt1, &p.name, exact).await?;
        reports[i].schema = differences;
        reports[i].notes = notes;
    }
    let (sa, sb) = tokio::try_join!(
        schema::sequences(&src1, Side::Source, None),
        schema::sequences(&tgt1, Side::Target, None)
    )?;
    let found = schema::sequence_differences(&sa, &sb, exact);
    let sequences = found.differences;
    let equal = reports.iter().all(TableReport::equal) && sequences.is_empty();
    Ok(Report {
        lsn,
        held_ms,
        tables: reports,
        sequences,
        notes: found.notes,
        seconds: started.elapsed().as_secs_f64(),
        equal,
    })
}

type Outcome = (usize, i64, i64, Option<hash::Differences>);

/// One source and one target session, hashing tables until none is
/// left: every part of a table in one pass per side, then each part that
/// differs narrowed down.
async fn worker(
    src: Client,
    tgt: Client,
    plans: Arc<Vec<TablePlan>>,
    queue: Arc<Mutex<VecDeque<usize>>>,
    results: Arc<Mutex<Vec<Outcome>>>,
    bars: Bars,
) -> Result<(Client, Client), VerifyError> {
    loop {
        let next = queue.lock().ok().and_then(|mut q| q.pop_front());
        let Some(table) = next else {
            return Ok((src, tgt));
        };
        let plan = &plans[table];
        let (a, b) = tokio::try_join!(
            async {
                let r = hash::fingerprint(&src, Side::Source, plan).await;
                bars.source.inc(1);
                r
            },
            async {
                let r = hash::fingerprint(&tgt, Side::Target, plan).await;
                bars.target.inc(1);
                r
            }
        )?;
        if a == b {
            if let Ok(mut r) = results.lock() {
                r.push((table, a.rows, b.rows, None));
            }
            continue;
        }
        // Different: split into parts, narrow the ones that differ.
        let (parts_a, parts_b) = match plan.parts {
            0 | 1 => (vec![a], vec![b]),
            _ => tokio::try_join!(
                hash::fingerprints(&src, Side::Source, plan),
                hash::fingerprints(&tgt, Side::Target, plan)
            )?,
        };
        for (index, (a, b)) in (0u32..).zip(parts_a.iter().zip(&parts_b)) {
            let diff = if a == b {
                None
            } else {
                let chunk = Chunk { table, index };
                Some(hash::narrow(&src, &tgt, plan, &chunk).await?)
            };
            if let Ok(mut r) = results.lock() {
                r.push((table, a.rows, b.rows, diff));
            }
        }
    }
}

/// A bar per side, on a terminal.
#[derive(Clone)]
struct Bars {
    multi: Option<indicatif::MultiProgress>,
    source: indicatif::ProgressBar,
    target: indicatif::ProgressBar,
}

impl Bars {
    fn new(mode: ProgressMode, chunks: usize) -> Bars {
        let bar = |label: &str| {
            let b = indicatif::ProgressBar::new(chunks as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "  {prefix:8} [{bar:32}] {pos}/{len} key ranges {elapsed}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(label.to_string());
            b
        };
        match mode {
            ProgressMode::Bars => {
                let multi = indicatif::MultiProgress::new();
                let source = multi.add(bar("source"));
                let target = multi.add(bar("target"));
                Bars {
                    multi: Some(multi),
                    source,
                    target,
                }
            }
            ProgressMode::Lines => Bars {
                multi: None,
                source: indicatif::ProgressBar::hidden(),
                target: indicatif::ProgressBar::hidden(),
            },
        }
    }

    fn finish(&self) {
        self.source.finish_and_clear();
        self.target.finish_and_clear();
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

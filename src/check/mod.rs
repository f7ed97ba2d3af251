//! Preflight: everything that would make a sync fail or hurt the source,
//! found before anything is created. `pgrepl check` prints the report;
//! `pgrepl sync` runs the same checks and refuses to start on any error.

mod carry;
mod failover;
mod grants;
pub mod report;
mod source;
mod standby;
mod target;

pub use report::{Finding, Level, Report};
pub use source::{NEWEST_TESTED_MAJOR, OLDEST_SOURCE_MAJOR};

use tokio_postgres::Client;

use crate::conn::error::describe;
use crate::conn::{Endpoint, Side};
use crate::progress::state::SyncRecord;
use crate::source::catalog::{SelectedTables, ServerFacts};
use crate::source::selection::Selection;
use crate::sql::{SyncName, TableName};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{side}: {what} failed: {message}")]
    Query {
        side: Side,
        what: &'static str,
        message: String,
    },
}

pub(crate) fn query_error(
    side: Side,
    what: &'static str,
) -> impl Fn(tokio_postgres::Error) -> CheckError {
    move |e| CheckError::Query {
        side,
        what,
        message: describe(&e),
    }
}

/// What the sync will be asked to do, as far as the checks care.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    pub name: SyncName,
    pub selection: Selection,
    pub existing_schema: bool,
    /// The sync exists and streams; checks warn about what they would refuse.
    pub resuming: bool,
    /// DDL capture is wanted (event triggers need a superuser).
    pub ddl: bool,
    /// `--roles`; a sync that exists falls back to what it recorded.
    pub roles: Option<crate::carry::RolesPolicy>,
    /// `--failover-slot`: the slot is to be a failover slot (17+).
    pub failover_slot: bool,
}

impl CheckOptions {
    /// The same checks for a sync that already streams: what would stop a
    /// new sync (a table without identity, created since) is a warning.
    pub fn resuming(&self) -> Self {
        CheckOptions {
            resuming: true,
            ..self.clone()
        }
    }
}

/// The report and what the checks learnt on the way, for `sync` to reuse.
pub struct Preflight {
    pub report: Report,
    pub source: ServerFacts,
    pub target: ServerFacts,
    /// `None` when a pattern matched nothing (already in the report).
    pub selected: Option<SelectedTables>,
    /// A sync of this name already recorded on the target.
    pub existing: Option<SyncRecord>,
    /// What moves besides rows (roles, extensions, large objects, settings).
    pub carry: crate::carry::Plan,
}

/// Runs every check against open sessions to both sides.
pub async fn run(
    source: &Endpoint,
    target: &Endpoint,
    src: &Client,
    tgt: &Client,
    opts: &CheckOptions,
) -> Result<Preflight, CheckError> {
    let mut report = Report {
        source: source.config.to_string(),
        target: target.config.to_string(),
        findings: Vec::new(),
    };
    let recorded = crate::progress::state::load_sync(tgt, &opts.name)
        .await
        .map_err(query_error(Side::Target, "reading pgrepl state"))?;
    // A sync recorded (streaming, or a copy to resume) keeps what it set
    // up on the source.
    let resumed;
    let opts = if recorded.is_some() {
        resumed = opts.resuming();
        &resumed
    } else {
        opts
    };
    let (source_facts, selected) = source::check(source, src, opts, &mut report).await?;
    if source.standby.is_some() {
        standby::check(source, &source_facts, &mut report).await?;
    } else {
        failover::check(source, src, opts, &mut report).await?;
    }
    let (target_facts, existing) =
        target::check(tgt, opts, &source_facts, selected.as_ref(), &mut report).await?;
    if let Some(selected) = &selected {
        grants::fires_on_target(src, selected, &mut report).await?;
        grants::cutover(src, &source_facts, selected, &mut report).await?;
    }
    let policy = opts
        .roles
        .or_else(|| existing.as_ref().and_then(|r| r.roles));
    let (inventory, view) = tokio::try_join!(
        async {
            crate::source::inventory::Inventory::read(src)
                .await
                .map_err(query_error(
                    Side::Source,
                    "reading roles, extensions and settings",
                ))
        },
        async {
            crate::carry::TargetView::read(tgt)
                .await
                .map_err(query_error(
                    Side::Target,
                    "reading roles, extensions and settings",
                ))
        }
    )?;
    let plan = crate::carry::Plan::new(&inventory, &view, policy);
    // A sync that streams decided at its copy; new roles join while it runs.
    if !opts.resuming {
        carry::report(&plan, &target_facts.user, view.superuser, &mut report);
    }
    Ok(Preflight {
        report,
        source: source_facts,
        target: target_facts,
        selected,
        existing,
        carry: plan,
    })
}

/// `a, b, c and 7 more`: a readable list of table names.
pub(crate) fn name_list<'a>(names: impl IntoIterator<Item = &'a TableName>) -> String {
    const SHOWN: usize = 6;
    let names: Vec<String> = names.into_iter().map(ToString::to_string).collect();
    if names.len() <= SHOWN {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..SHOWN].join(", "),
            names.len() - SHOWN
        )
    }
}

//! The end of the copy, for what moves besides rows: the database's
//! settings, comment and privileges, and the large objects under the
//! snapshot, all in the transaction that marks the copy done (so a copy
//! that dies leaves none of it); then the summary that says what moved
//! and what did not.

use tokio_postgres::{Client, GenericClient};

use super::{CopyRequest, SnapshotError};
use crate::carry::large_objects::{self, Round};
use crate::carry::{database, names, ownership, ExtensionPlan, RolesPolicy};
use crate::conn::error::describe;
use crate::conn::Side;
use crate::progress::state;

/// What `finish` carried.
pub struct Finished {
    large_objects: Option<Round>,
}

pub async fn finish(
    req: &CopyRequest<'_>,
    snapshot: &str,
    tx: &impl GenericClient,
) -> Result<Finished, SnapshotError> {
    let grants = req.carry.carries_ownership();
    for sql in database::statements(req.carry, &req.target_facts.database, grants) {
        tx.batch_execute(&sql)
            .await
            .map_err(|e| SnapshotError::Query {
                side: Side::Target,
                what: "carrying the database's settings",
                message: format!("{} ({sql})", describe(&e)),
                transient: crate::conn::error::is_transient(&e),
            })?;
    }
    if req.carry.inventory.large_objects == 0 {
        return Ok(Finished {
            large_objects: None,
        });
    }
    let src = req.source.connect().await?;
    super::copy::import_snapshot(&src, snapshot)
        .await
        .map_err(|e| SnapshotError::source("opening the snapshot", &e))?;
    let round = large_objects::make_equal(&src, tx, grants)
        .await
        .map_err(|e| SnapshotError::Query {
            side: e.side,
            what: "copying large objects",
            message: e.to_string(),
            transient: false,
        })?;
    state::record_large_objects(tx, req.name, round.total as i64)
        .await
        .map_err(|e| SnapshotError::target("recording large objects", &e))?;
    tracing::info!(
        count = round.copied,
        bytes = round.bytes,
        "large objects copied"
    );
    Ok(Finished {
        large_objects: Some(round),
    })
}

/// One line per thing that moved or did not, so nothing is left behind
/// silently.
pub async fn summary(req: &CopyRequest<'_>, done: Finished, tgt: &Client) -> String {
    let plan = req.carry;
    let mut lines = Vec::new();
    if !plan.create.is_empty() {
        let created: Vec<&str> = plan.create.iter().map(|r| r.name.as_str()).collect();
        lines.push(format!("roles created: {}", names(&created)));
    }
    if !plan.found.is_empty() {
        lines.push(format!(
            "roles found on the target, left as they were: {}",
            names(&plan.found)
        ));
    }
    if !plan.missing.is_empty() {
        lines.push(format!(
            "roles NOT copied (--roles {}): {}; {} owns the objects, no grants moved",
            plan.policy.unwrap_or(RolesPolicy::Skip).as_str(),
            names(&plan.missing),
            req.target_facts.user
        ));
    }
    let unreadable = plan.passwords_unreadable();
    if !unreadable.is_empty() {
        lines.push(format!(
            "passwords NOT copied (the source user may not read pg_authid): {}; set them on the target (psql's \\password, or {})",
            names(&unreadable),
            crate::carry::Plan::password_statements(&unreadable)
        ));
    }
    if !plan.memberships_left.is_empty() {
        let list: Vec<String> = plan
            .memberships_left
            .iter()
            .map(|m| format!("{} in {}", m.member, m.role))
            .collect();
        lines.push(format!("memberships NOT granted: {}", names(&list)));
    }
    match req.source.connect().await {
        Ok(src) => match ownership::differences(&src, tgt).await {
            Ok(diff) if diff.is_empty() => lines.push("owners and grants: as on the source".into()),
            Ok(diff) => {
                let shown: Vec<String> = diff.iter().take(5).map(ToString::to_string).collect();
                lines.push(format!(
                    "owners or grants differ from the source on {} object(s): {}{}",
                    diff.len(),
                    shown.join("; "),
                    if diff.len() > 5 { "; …" } else { "" }
                ));
            }
            Err(e) => lines.push(format!(
                "owners and grants: could not be compared ({})",
                describe(&e)
            )),
        },
        Err(e) => lines.push(format!("owners and grants: could not be compared ({e})")),
    }
    if let Some(lo) = done.large_objects {
        lines.push(format!(
            "large objects copied: {} ({} bytes); kept in step while streaming",
            lo.copied, lo.bytes
        ));
    }
    let extensions: Vec<String> = plan
        .extensions
        .iter()
        .map(|e| match e {
            ExtensionPlan::AtSourceVersion(x) => format!("{} {}", x.name, x.version),
            ExtensionPlan::AtOtherVersion { ext, version } => {
                format!("{} {version} (the source has {})", ext.name, ext.version)
            }
            ExtensionPlan::Present { ext, version } => {
                format!("{} {version} (there already)", ext.name)
            }
            ExtensionPlan::Unavailable(x) => format!("{} MISSING", x.name),
        })
        .collect();
    if !extensions.is_empty() && req.pg_dump.is_some() && !req.existing_schema {
        lines.push(format!("extensions: {}", extensions.join(", ")));
    }
    let carried = database::carried(plan, plan.carries_ownership());
    if !carried.is_empty() {
        lines.push(format!("carried: {}", carried.join(", ")));
    }
    for left in &plan.settings_left {
        lines.push(format!(
            "NOT carried: {} setting {} = {} ({})",
            left.whose, left.setting.name, left.setting.value, left.why
        ));
    }
    lines
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

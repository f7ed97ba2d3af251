//! Checks on what the sync carries besides rows: the roles the objects
//! need, extensions, large objects, settings (see `carry`). A role the
//! target lacks is an error until the user says what to do with it.

use super::{Finding, Report};
use crate::carry::{names, ExtensionPlan, Plan, RolesPolicy};
use crate::conn::Side;

pub(super) fn report(plan: &Plan, target_user: &str, target_superuser: bool, report: &mut Report) {
    roles(plan, target_user, target_superuser, report);
    for e in &plan.extensions {
        match e {
            ExtensionPlan::Unavailable(ext) => report.push(Finding::error(
                Side::Target,
                "extensions",
                format!(
                    "extension {} (version {} on the source) is not available on the target server",
                    ext.name, ext.version
                ),
                "install its package on the target server (see pg_available_extensions there), or drop the extension on the source",
            )),
            ExtensionPlan::AtOtherVersion { ext, version } => report.push(Finding::warn(
                Side::Target,
                "extensions",
                format!(
                    "extension {}: the target offers version {version}, not the source's {}; it is created at {version}",
                    ext.name, ext.version
                ),
                format!("install version {} on the target server to keep the source's", ext.version),
            )),
            _ => {}
        }
    }
    let ready: Vec<String> = plan
        .extensions
        .iter()
        .filter_map(|e| match e {
            ExtensionPlan::AtSourceVersion(ext) => Some(format!("{} {}", ext.name, ext.version)),
            ExtensionPlan::Present { ext, version } => {
                Some(format!("{} {version} (there already)", ext.name))
            }
            _ => None,
        })
        .collect();
    if !ready.is_empty() {
        report.push(Finding::ok(
            Side::Target,
            "extensions",
            format!("available: {}", ready.join(", ")),
        ));
    }
    if plan.inventory.large_objects > 0 {
        report.push(Finding::ok(
            Side::Source,
            "large_objects",
            format!(
                "{} large object(s): copied with the rows, kept in step while streaming, exact at cutover",
                plan.inventory.large_objects
            ),
        ));
    }
    for left in &plan.settings_left {
        report.push(Finding::warn(
            Side::Target,
            "settings",
            format!(
                "{} setting {} = {} is not carried: {}",
                left.whose, left.setting.name, left.setting.value, left.why
            ),
            "set it on the target by hand if the application needs it",
        ));
    }
}

fn roles(plan: &Plan, target_user: &str, target_superuser: bool, report: &mut Report) {
    const CHECK: &str = "roles";
    if !plan.found.is_empty() {
        report.push(Finding::ok(
            Side::Target,
            CHECK,
            format!(
                "roles the objects need, found on the target (left as they are): {}",
                names(&plan.found)
            ),
        ));
    }
    match plan.policy {
        None if !plan.missing.is_empty() => report.push(Finding::error(
            Side::Target,
            CHECK,
            format!(
                "the synced objects need roles the target lacks (owners, grantees, their members): {}",
                names(&plan.missing)
            ),
            format!("pass --roles copy to create them on the target (attributes, memberships, settings, passwords), or --roles skip to have {target_user} own everything there with no grants"),
        )),
        Some(RolesPolicy::Skip) if !plan.missing.is_empty() => report.push(Finding::warn(
            Side::Target,
            CHECK,
            format!(
                "--roles skip: {target_user} will own everything on the target, no grants move, and these roles will not exist there: {}",
                names(&plan.missing)
            ),
            "create the roles and grants on the target before switching the application, or use --roles copy",
        )),
        _ => {}
    }
    if !plan.create.is_empty() {
        let created: Vec<&str> = plan.create.iter().map(|r| r.name.as_str()).collect();
        report.push(Finding::ok(
            Side::Target,
            CHECK,
            format!("roles to create on the target: {}", names(&created)),
        ));
    }
    let unreadable = plan.passwords_unreadable();
    if !unreadable.is_empty() {
        report.push(Finding::warn(
            Side::Source,
            CHECK,
            format!(
                "the passwords of {} cannot be copied: the source user may not read pg_authid",
                names(&unreadable)
            ),
            format!(
                "connect to the source as a superuser, or set them on the target after the copy (psql's \\password, or {})",
                crate::carry::Plan::password_statements(&unreadable)
            ),
        ));
    }
    let privileged = plan.need_superuser();
    if !privileged.is_empty() && !target_superuser {
        report.push(Finding::error(
            Side::Target,
            CHECK,
            format!(
                "roles to create are SUPERUSER, REPLICATION or BYPASSRLS, which only a superuser may create: {}",
                names(&privileged)
            ),
            "create them on the target by hand first, or connect to the target as a superuser",
        ));
    }
    if !plan.predefined_missing.is_empty() {
        report.push(Finding::warn(
            Side::Target,
            CHECK,
            format!(
                "predefined roles the target server does not have (it is older): {}",
                names(&plan.predefined_missing)
            ),
            "grant equivalent privileges by hand on the target",
        ));
    }
    if !plan.memberships_left.is_empty() {
        let list: Vec<String> = plan
            .memberships_left
            .iter()
            .map(|m| format!("{} in {}", m.member, m.role))
            .collect();
        report.push(Finding::warn(
            Side::Target,
            CHECK,
            format!(
                "memberships not granted (a role in them will not exist on the target): {}",
                names(&list)
            ),
            "grant them by hand on the target",
        ));
    }
}

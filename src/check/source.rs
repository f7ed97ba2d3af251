//! Checks on the source: can it feed a logical replication slot, can this
//! role read and publish the tables, and will publishing them break
//! anything for the applications writing to it.

use tokio_postgres::Client;

use super::{name_list, query_error, CheckError, CheckOptions, Finding, Report};
use crate::conn::walsender::WalSender;
use crate::conn::{Endpoint, Side};
use crate::source::catalog::{list_tables, SelectedTables, ServerFacts, TableKind};

const SIDE: Side = Side::Source;

/// The oldest source major pgrepl supports.
pub const OLDEST_SOURCE_MAJOR: i32 = 12;

/// The newest major the test suite runs on both sides (scripts/test's
/// matrix) and `pgrepl --version` names; a newer one is not refused.
pub const NEWEST_TESTED_MAJOR: i32 = 18;

pub(super) async fn check(
    ep: &Endpoint,
    client: &Client,
    opts: &CheckOptions,
    report: &mut Report,
) -> Result<(ServerFacts, Option<SelectedTables>), CheckError> {
    let facts = ServerFacts::read(client)
        .await
        .map_err(query_error(SIDE, "reading server facts"))?;
    if facts.major() < OLDEST_SOURCE_MAJOR {
        report.push(Finding::error(
            SIDE,
            "version",
            format!("PostgreSQL {} is older than {OLDEST_SOURCE_MAJOR}, the oldest source pgrepl supports", facts.version),
            "upgrade the source first, or move it with pg_dump",
        ));
    } else {
        report.push(Finding::ok(
            SIDE,
            "version",
            format!("PostgreSQL {}", facts.version),
        ));
    }

    let settings = client
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('max_replication_slots')::int4,
                    (SELECT count(*)::int4 FROM pg_replication_slots),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    current_setting('max_wal_senders')::int4,
                    (SELECT count(*)::int4 FROM pg_stat_activity WHERE backend_type = 'walsender'),
                    EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2)",
            &[
                &opts.name.slot().as_str(),
                &opts.name.publication().as_str(),
            ],
        )
        .await
        .map_err(query_error(SIDE, "reading replication settings"))?;
    let wal_level: String = settings.get(0);
    if wal_level == "logical" {
        report.push(Finding::ok(SIDE, "wal_level", "wal_level = logical"));
    } else {
        report.push(Finding::error(
            SIDE,
            "wal_level",
            format!("wal_level is '{wal_level}'; logical replication needs 'logical'"),
            "run ALTER SYSTEM SET wal_level = logical; on the source, then restart it",
        ));
    }
    wal_keep(client, report).await?;
    let (max_slots, used_slots, slot_exists): (i32, i32, bool) =
        (settings.get(1), settings.get(2), settings.get(3));
    let slot = opts.name.slot();
    if slot_exists {
        report.push(Finding::ok(
            SIDE,
            "replication_slots",
            format!("slot {slot} exists from an earlier run"),
        ));
    } else if used_slots >= max_slots {
        report.push(Finding::error(
            SIDE,
            "replication_slots",
            format!("all {max_slots} replication slots are in use (max_replication_slots = {max_slots})"),
            "drop unused slots (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active) or raise max_replication_slots and restart",
        ));
    } else {
        report.push(Finding::ok(
            SIDE,
            "replication_slots",
            format!(
                "{} of {max_slots} replication slots free",
                max_slots - used_slots
            ),
        ));
    }
    let (max_senders, used_senders): (i32, i32) = (settings.get(4), settings.get(5));
    if used_senders >= max_senders {
        report.push(Finding::error(
            SIDE,
            "wal_senders",
            format!("all {max_senders} WAL senders are busy (max_wal_senders = {max_senders})"),
            "stop an idle replication client or raise max_wal_senders and restart",
        ));
    } else {
        report.push(Finding::ok(
            SIDE,
            "wal_senders",
            format!(
                "{} of {max_senders} WAL senders free",
                max_senders - used_senders
            ),
        ));
    }

    if facts.can_replicate {
        let how = if facts.is_superuser {
            "superuser"
        } else {
            "REPLICATION"
        };
        report.push(Finding::ok(
            SIDE,
            "replication_role",
            format!("role {:?} has {how}", facts.user),
        ));
    } else {
        report.push(Finding::error(
            SIDE,
            "replication_role",
            format!(
                "role {:?} has neither REPLICATION nor superuser",
                facts.user
            ),
            super::grants::replication_fix(client, &facts.user).await?,
        ));
    }
    match WalSender::connect(SIDE, &ep.config).await {
        Ok(mut ws) => match ws.identify_system().await {
            Ok(sys) => report.push(Finding::ok(
                SIDE,
                "replication_connection",
                format!("replication connection works (system {}, WAL at {})", sys.system_id, sys.xlogpos),
            )),
            Err(e) => report.push(Finding::error(SIDE, "replication_connection", e.to_string(), "see the message above")),
        },
        Err(e) => report.push(Finding::error(
            SIDE,
            "replication_connection",
            e.to_string(),
            "a logical replication connection needs REPLICATION and a pg_hba.conf line for this database",
        )),
    }

    let all = list_tables(client)
        .await
        .map_err(query_error(SIDE, "listing tables"))?;
    let selected = match SelectedTables::choose(all, &opts.selection) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                report.push(Finding::error(
                    SIDE,
                    "selection",
                    e.to_string(),
                    "fix or drop the pattern",
                ));
            }
            return Ok((facts, None));
        }
    };
    let tops = selected.tops().count();
    let partitions = selected.tables.len() - tops;
    let bytes: i64 = selected.tables.iter().map(|t| t.bytes).sum();
    if selected.tables.is_empty() {
        report.push(Finding::warn(
            SIDE,
            "selection",
            "no table to replicate",
            "create tables on the source, or widen --include",
        ));
    } else {
        report.push(Finding::ok(
            SIDE,
            "selection",
            format!(
                "{tops} table(s){} selected, {}",
                if partitions > 0 {
                    format!(" and {partitions} partition(s)")
                } else {
                    String::new()
                },
                crate::progress::human_bytes(bytes.max(0) as u64)
            ),
        ));
    }

    let unreadable: Vec<_> = selected
        .tables
        .iter()
        .filter(|t| !t.can_select)
        .map(|t| &t.name)
        .collect();
    if unreadable.is_empty() {
        report.push(Finding::ok(
            SIDE,
            "select_privilege",
            "every selected table is readable",
        ));
    } else {
        report.push(Finding::error(
            SIDE,
            "select_privilege",
            format!(
                "role {:?} cannot read {} table(s): {}",
                facts.user,
                unreadable.len(),
                name_list(unreadable.iter().copied())
            ),
            "GRANT SELECT on them to this role (or exclude them)",
        ));
    }

    let no_identity: Vec<_> = selected
        .tables
        .iter()
        .filter(|t| t.has_storage() && !t.identity.is_usable())
        .map(|t| &t.name)
        .collect();
    if no_identity.is_empty() {
        report.push(Finding::ok(
            SIDE,
            "replica_identity",
            "every table has a primary key or a replica identity",
        ));
    } else {
        // A sync that already streams is not stopped for tables created
        // since: it is warned, and the table is published either way.
        let make = if opts.resuming {
            Finding::warn
        } else {
            Finding::error
        };
        report.push(make(
            SIDE,
            "replica_identity",
            format!(
                "{} table(s) have no primary key and no replica identity: {}. Once published, UPDATE and DELETE on them FAIL on the source",
                no_identity.len(),
                name_list(no_identity.iter().copied())
            ),
            "add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL, or leave them out with --exclude",
        ));
    }

    let unlogged: Vec<_> = selected
        .tables
        .iter()
        .filter(|t| t.unlogged)
        .map(|t| &t.name)
        .collect();
    if !unlogged.is_empty() {
        report.push(Finding::warn(
            SIDE,
            "unlogged_tables",
            format!(
                "{} unlogged table(s): {}. Their rows are copied once; later changes never reach the WAL, so they are not streamed",
                unlogged.len(),
                name_list(unlogged.iter().copied())
            ),
            "ALTER TABLE ... SET LOGGED to replicate them, or --exclude them",
        ));
    }

    let publication_exists: bool = settings.get(6);
    let publication = opts.name.publication();
    if publication_exists {
        report.push(Finding::ok(
            SIDE,
            "publication",
            format!("publication {publication} exists from an earlier run"),
        ));
    } else if facts.is_superuser {
        report.push(Finding::ok(
            SIDE,
            "publication",
            format!("can create publication {publication}"),
        ));
    } else {
        // A role that is not a superuser publishes a table list, and
        // adding a table to a publication needs its owner's rights.
        let foreign: Vec<_> = selected
            .tables
            .iter()
            .filter(|t| !t.owned && !matches!(t.kind, TableKind::Partition { .. }))
            .collect();
        let list = if opts.selection.is_everything() {
            "a table list (FOR ALL TABLES needs a superuser; new tables join it through the DDL capture)"
        } else {
            "a table list"
        };
        if opts.selection.is_everything() && !opts.ddl {
            // Rule: a table list grows only through the DDL capture; without
            // it a table created later would never be replicated, silently.
            report.push(Finding::error(
                SIDE,
                "publication",
                format!(
                    "{:?} is not a superuser, so every table is published as a list (not FOR ALL TABLES); with --no-ddl nothing adds tables created later, which would then never be replicated",
                    facts.user
                ),
                "install the DDL capture (drop --no-ddl; `pgrepl install-capture` by a superuser), or name the tables with --include (tables created later are then not replicated)",
            ));
        } else if !may_create_in_database(client).await? {
            report.push(Finding::error(
                SIDE,
                "publication",
                format!(
                    "creating a publication takes CREATE on the database; {:?} may not create in {}",
                    facts.user, facts.database
                ),
                format!(
                    "as the database's owner: GRANT CREATE ON DATABASE {} TO {};",
                    crate::sql::quote_ident(&facts.database),
                    crate::sql::quote_ident(&facts.user)
                ),
            ));
        } else if foreign.is_empty() {
            report.push(Finding::ok(
                SIDE,
                "publication",
                format!("can create publication {publication} as {list}"),
            ));
        } else {
            let mut owners: Vec<&str> = foreign.iter().map(|t| t.owner.as_str()).collect();
            owners.sort_unstable();
            owners.dedup();
            let grants: Vec<String> = owners
                .iter()
                .map(|o| {
                    format!(
                        "GRANT {} TO {};",
                        crate::sql::quote_ident(o),
                        crate::sql::quote_ident(&facts.user)
                    )
                })
                .collect();
            report.push(Finding::error(
                SIDE,
                "publication",
                format!(
                    "publishing a table needs its owner's rights; {:?} is not a member of {} (owning {})",
                    facts.user,
                    owners.join(", "),
                    name_list(foreign.iter().map(|t| &t.name))
                ),
                format!(
                    "run as a role with ADMIN on them (the service's admin): {}",
                    grants.join(" ")
                ),
            ));
        }
    }

    if opts.ddl {
        ddl_capture(client, &facts, report).await?;
    }
    Ok((facts, Some(selected)))
}

/// A slot with no limit on the WAL it keeps fills the source's disk when
/// the sync stops or falls behind: say so, and what bounds it.
async fn wal_keep(client: &Client, report: &mut Report) -> Result<(), CheckError> {
    let keep: Option<String> = client
        .query_one(
            "SELECT (SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size')",
            &[],
        )
        .await
        .map_err(query_error(SIDE, "reading max_slot_wal_keep_size"))?
        .get(0);
    match keep.as_deref() {
        Some("-1") => report.push(Finding::warn(
            SIDE,
            "wal_safety",
            "max_slot_wal_keep_size is -1 (unbounded): if the sync stops or falls behind, its slot keeps WAL until the source's disk is full",
            "set max_slot_wal_keep_size (e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '100GB'; SELECT pg_reload_conf();): a slot past it is lost instead of the source, and pgrepl says the sync must start over",
        )),
        None => report.push(Finding::warn(
            SIDE,
            "wal_safety",
            "PostgreSQL 12 cannot bound the WAL a slot keeps: if the sync stops or falls behind, the slot keeps WAL until the source's disk is full",
            "watch the slot's WAL (`pgrepl status`, /metrics with --listen, --warn-wal) and run `pgrepl teardown` if you give up",
        )),
        Some(mb) => report.push(Finding::ok(
            SIDE,
            "wal_safety",
            format!("max_slot_wal_keep_size = {mb} MB: a slot past it is lost, not the source"),
        )),
    }
    Ok(())
}

async fn may_create_in_database(client: &Client) -> Result<bool, CheckError> {
    Ok(client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(query_error(SIDE, "reading database privileges"))?
        .get(0))
}

/// Whether the DDL capture can be had: installed by this role, or made
/// ahead for it (`pgrepl install-capture`), since only some roles may
/// create event triggers (superusers; on some services their admin role).
async fn ddl_capture(
    client: &Client,
    facts: &ServerFacts,
    report: &mut Report,
) -> Result<(), CheckError> {
    if facts.is_superuser {
        report.push(Finding::ok(
            SIDE,
            "ddl_capture",
            "can install the DDL-capturing event triggers",
        ));
        return Ok(());
    }
    let current = crate::ddl::capture::is_current(client)
        .await
        .map_err(query_error(SIDE, "looking for the DDL capture"))?;
    if current {
        let config = crate::sql::TableName::new("pgrepl", "config").oid_sql();
        let log = crate::sql::TableName::new("pgrepl", "schema_log").oid_sql();
        let usable: bool = client
            .query_one(
                // (Several privileges in one call means any of them.) Looked
                // up in the catalog: a role without USAGE on the schema gets
                // false here, not an error.
                &format!(
                    "SELECT coalesce(EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgrepl' AND has_schema_privilege(oid, 'USAGE'))
                        AND has_table_privilege({config}, 'SELECT') AND has_table_privilege({config}, 'INSERT')
                        AND has_table_privilege({config}, 'UPDATE') AND has_table_privilege({config}, 'DELETE')
                        AND (pg_has_role((SELECT relowner FROM pg_class WHERE oid = {log}), 'USAGE')
                             OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                                        WHERE n.nspname = 'pgrepl' AND p.proname = 'publish_schema_log'
                                          AND has_function_privilege(p.oid, 'EXECUTE'))), false)"
                ),
                &[],
            )
            .await
            .map_err(query_error(SIDE, "reading the DDL capture's privileges"))?
            .get(0);
        if usable {
            report.push(Finding::ok(
                SIDE,
                "ddl_capture",
                format!("the DDL capture is installed for {:?}", facts.user),
            ));
            return Ok(());
        }
    }
    if !current && super::grants::may_create_event_triggers(client).await? {
        report.push(Finding::ok(
            SIDE,
            "ddl_capture",
            "can install the DDL-capturing event triggers",
        ));
        return Ok(());
    }
    let user = crate::sql::quote_ident(&facts.user);
    let (message, fix) = if current {
        (
            format!(
                "the DDL capture is installed, but not for {:?}: it may not record its sync in pgrepl.config or publish pgrepl.schema_log (pgrepl.publish_schema_log)",
                facts.user
            ),
            format!(
                "as a superuser: GRANT USAGE ON SCHEMA pgrepl TO {user}; GRANT SELECT, INSERT, UPDATE, DELETE ON pgrepl.config TO {user}; GRANT EXECUTE ON FUNCTION pgrepl.publish_schema_log(text) TO {user}; (`pgrepl install-capture --source CONNINFO --for {user}` does it all)"
            ),
        )
    } else {
        (
            format!(
                "capturing DDL takes event triggers, which {:?} may not create (a superuser may; on RDS and Cloud SQL their admin role may, on Azure and older Neon nobody may)",
                facts.user
            ),
            format!(
                "have a superuser run `pgrepl install-capture --source CONNINFO --for {user}` once (`--print` gives the SQL to run in the service's console), or pass --no-ddl (then DDL on the source stops the sync)"
            ),
        )
    };
    report.push(Finding::error(SIDE, "ddl_capture", message, fix));
    Ok(())
}

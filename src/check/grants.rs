//! Privileges, for a role that is not a superuser: each one the sync (or
//! its cutover) needs and lacks is named with what would break without it
//! and the exact statement that grants it.

use tokio_postgres::Client;

use super::{query_error, CheckError, Finding, Report};
use crate::conn::Side;
use crate::source::catalog::{SelectedTables, ServerFacts};
use crate::sql::quote_ident;

const SIDE: Side = Side::Target;

/// How to give `user` the REPLICATION attribute on this source: RDS and
/// Aurora do it by membership in their own role (the attribute itself is
/// theirs to set), everywhere else with ALTER ROLE.
pub(super) async fn replication_fix(client: &Client, user: &str) -> Result<String, CheckError> {
    let rds: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication')",
            &[],
        )
        .await
        .map_err(query_error(Side::Source, "reading roles"))?
        .get(0);
    let user = quote_ident(user);
    Ok(if rds {
        format!("on RDS / Aurora, as the master user: GRANT rds_replication TO {user};")
    } else {
        format!("as a superuser on the source: ALTER ROLE {user} REPLICATION;")
    })
}

/// May this role create event triggers (superusers; an admin role some
/// services allow it)? Tried in a transaction rolled back: nothing stays.
pub(super) async fn may_create_event_triggers(client: &Client) -> Result<bool, CheckError> {
    let probe = client
        .batch_execute(
            "BEGIN READ WRITE;
             CREATE FUNCTION pg_temp.pgrepl_probe() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN END';
             CREATE EVENT TRIGGER pgrepl_probe ON ddl_command_start EXECUTE PROCEDURE pg_temp.pgrepl_probe();",
        )
        .await;
    client.batch_execute("ROLLBACK").await.map_err(query_error(
        Side::Source,
        "rolling back the event-trigger probe",
    ))?;
    Ok(probe.is_ok())
}

/// What `cutover` takes on the source beyond what the sync does, for a
/// role that is not a superuser. Each lack is a warning, said before the
/// sync rather than at cutover time: the sync runs, and the cutover
/// refuses (nothing fenced) or holds with less.
pub(super) async fn cutover(
    client: &Client,
    facts: &ServerFacts,
    selected: &SelectedTables,
    report: &mut Report,
) -> Result<(), CheckError> {
    if facts.is_superuser {
        return Ok(());
    }
    let user = quote_ident(&facts.user);
    let row = client
        .query_one(
            "SELECT (SELECT pg_has_role(datdba, 'USAGE') FROM pg_database WHERE datname = current_database()),
                    pg_has_role('pg_signal_backend', 'USAGE'),
                    pg_has_role('pg_read_all_stats', 'USAGE'),
                    EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgrepl_fence' AND evtenabled IN ('O', 'A')),
                    has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(query_error(Side::Source, "reading the cutover's privileges"))?;
    let (owner, signal, stats, fence_made, create): (bool, bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let database = quote_ident(&facts.database);
    if !owner {
        report.push(Finding::warn(
            Side::Source,
            "cutover_fence",
            format!(
                "cutover's fence makes new sessions of {} read-only (ALTER DATABASE … SET default_transaction_read_only), which takes the database's owner; {:?} is not its owner or a member of it",
                facts.database, facts.user
            ),
            format!(
                "before the cutover, as the owner: ALTER DATABASE {database} OWNER TO {user}; (or cut over as the owner)"
            ),
        ));
    }
    if !fence_made && !create {
        report.push(Finding::warn(
            Side::Source,
            "cutover_fence",
            format!(
                "cutover's fence keeps its flag and triggers in schema pgrepl_fence, which {:?} may not create",
                facts.user
            ),
            format!(
                "have a superuser run `pgrepl install-capture --source CONNINFO --for {user}` once, or GRANT CREATE ON DATABASE {database} TO {user};"
            ),
        ));
    } else if !fence_made && !may_create_event_triggers(client).await? {
        report.push(Finding::warn(
            Side::Source,
            "cutover_ddl_fence",
            format!(
                "cutover refuses DDL on the old source with an event trigger, which {:?} may not create and none was made ahead: DDL is then held back only by the read-only default of new sessions and by ending the sessions opened before the fence",
                facts.user
            ),
            format!(
                "have a superuser run `pgrepl install-capture --source CONNINFO --for {user}` once (it makes the fence's trigger ahead, inert until a cutover)"
            ),
        ));
    }
    if !signal {
        report.push(Finding::warn(
            Side::Source,
            "cutover_sessions",
            format!(
                "cutover --terminate ends the sessions opened before the fence; {:?} may end only those of roles it is a member of (pg_signal_backend: any but a superuser's)",
                facts.user
            ),
            format!("as a superuser (the service's admin): GRANT pg_signal_backend TO {user};"),
        ));
    }
    if !stats {
        report.push(Finding::warn(
            Side::Source,
            "cutover_sessions",
            format!(
                "{:?} cannot see when other roles' sessions started (pg_read_all_stats): cutover counts each as opened before the fence, to be ended (--terminate) or waited out",
                facts.user
            ),
            format!("as a superuser (the service's admin): GRANT pg_read_all_stats TO {user}; (pg_monitor includes it)"),
        ));
    }
    // The fence locks every synced table (UPDATE, DELETE or TRUNCATE lets
    // a role lock it: one call with several privileges means any) and
    // leaves a statement trigger on each (TRIGGER).
    let oids: Vec<u32> = selected.tables.iter().map(|t| t.oid).collect();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = ANY($1::oid[])
               AND NOT (has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE') AND has_table_privilege(c.oid, 'TRIGGER'))
             ORDER BY 1, 2",
            &[&oids],
        )
        .await
        .map_err(query_error(Side::Source, "reading table privileges"))?;
    if !rows.is_empty() {
        let names: Vec<crate::sql::TableName> = rows
            .iter()
            .map(|r| crate::sql::TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let quoted: Vec<String> = names.iter().map(|t| t.quoted()).collect();
        report.push(Finding::warn(
            Side::Source,
            "cutover_tables",
            format!(
                "cutover's fence locks every synced table and leaves a trigger refusing writes on it; {:?} may not on {} table(s): {}",
                facts.user,
                names.len(),
                super::name_list(names.iter())
            ),
            format!(
                "as their owner: GRANT UPDATE, TRIGGER ON TABLE {} TO {user}; (or GRANT the owner role to {user})",
                quoted.join(", ")
            ),
        ));
    }
    Ok(())
}

pub(super) async fn target(
    client: &Client,
    facts: &ServerFacts,
    report: &mut Report,
) -> Result<(), CheckError> {
    if facts.is_superuser {
        report.push(Finding::ok(
            SIDE,
            "privileges",
            format!("role {:?} is a superuser", facts.user),
        ));
        return Ok(());
    }
    let user = quote_ident(&facts.user);
    let lacking = crate::progress::ledger::origins_allowed(client)
        .await
        .map_err(query_error(SIDE, "reading function privileges"))?;
    if lacking.is_empty() {
        report.push(Finding::ok(
            SIDE,
            "ledger",
            "exactly-once apply keeps its position in a replication origin",
        ));
    } else {
        // Not an error: the position goes to the progress table instead,
        // written by the same transaction as the rows (see
        // `progress::ledger`).
        let why = if facts.major() < 14 {
            format!(
                "before PostgreSQL 14 only a superuser may call the replication-origin functions ({:?} is not one)",
                facts.user
            )
        } else {
            format!("{:?} may not execute {}", facts.user, lacking.join(", "))
        };
        let fix = if facts.major() < 14 {
            "to use a replication origin instead: connect to the target as a superuser".to_string()
        } else {
            format!(
                "to use a replication origin instead, as a superuser (the service's admin), connected to database {}: GRANT EXECUTE ON FUNCTION {} TO {user};",
                quote_ident(&facts.database),
                lacking.join(", ")
            )
        };
        report.push(Finding::warn(
            SIDE,
            "ledger",
            format!(
                "exactly-once apply will keep its position in table pgrepl.applied, written by the same transaction as the rows: {why}"
            ),
            fix,
        ));
    }

    let row = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE'),
                    CASE WHEN current_setting('server_version_num')::int >= 150000
                         THEN has_parameter_privilege('session_replication_role', 'SET') ELSE false END",
            &[],
        )
        .await
        .map_err(query_error(SIDE, "reading privileges"))?;
    let (create, replica_role): (bool, bool) = (row.get(0), row.get(1));
    if create {
        report.push(Finding::ok(
            SIDE,
            "create_schema",
            "may create schemas in the database",
        ));
    } else {
        report.push(Finding::error(
            SIDE,
            "create_schema",
            format!(
                "the copy creates the source's schemas and pgrepl's state schema; {:?} may not create schemas in {}",
                facts.user, facts.database
            ),
            format!(
                "as the database's owner: GRANT CREATE ON DATABASE {} TO {user};",
                quote_ident(&facts.database)
            ),
        ));
    }
    if replica_role {
        report.push(Finding::ok(
            SIDE,
            "replica_role",
            "may set session_replication_role (triggers and foreign-key checks stay off while applying)",
        ));
    } else if facts.major() >= 15 {
        report.push(Finding::error(
            SIDE,
            "replica_role",
            format!(
                "apply runs with session_replication_role = replica so the target's triggers and foreign-key checks do not fire a second time on rows the source already checked; {:?} may not set it",
                facts.user
            ),
            format!(
                "as a superuser (the service's admin): GRANT SET ON PARAMETER session_replication_role TO {user};"
            ),
        ));
    } else {
        report.push(Finding::error(
            SIDE,
            "replica_role",
            format!(
                "apply runs with session_replication_role = replica so the target's triggers and foreign-key checks do not fire a second time; before PostgreSQL 15 only a superuser may set it ({:?} is not one)",
                facts.user
            ),
            "connect to the target as a superuser (on a managed service, its admin role usually may: rds_superuser, cloudsqlsuperuser, azure_pg_admin), or use a PostgreSQL 15+ target and GRANT SET ON PARAMETER session_replication_role",
        ));
    }
    Ok(())
}

/// When the target may not apply with `session_replication_role =
/// replica`: the selected tables whose triggers or foreign keys would fire
/// there on rows the source already checked, named so the user sees what
/// the refusal protects.
pub(super) async fn fires_on_target(
    src: &Client,
    selected: &crate::source::catalog::SelectedTables,
    report: &mut Report,
) -> Result<(), CheckError> {
    let blocked = report
        .findings
        .iter()
        .any(|f| f.side == SIDE && f.check == "replica_role" && f.level == super::Level::Error);
    if !blocked {
        return Ok(());
    }
    let oids: Vec<u32> = selected.tables.iter().map(|t| t.oid).collect();
    let rows = src
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
                    EXISTS (SELECT 1 FROM pg_constraint k WHERE c.oid IN (k.conrelid, k.confrelid) AND k.contype = 'f')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = ANY($1::oid[])
             ORDER BY 1, 2",
            &[&oids],
        )
        .await
        .map_err(query_error(Side::Source, "reading triggers and foreign keys"))?;
    let mut firing = Vec::new();
    for row in rows {
        let (triggers, keys): (bool, bool) = (row.get(2), row.get(3));
        if triggers || keys {
            firing.push(crate::sql::TableName::new(
                row.get::<_, String>(0),
                row.get::<_, String>(1),
            ));
        }
    }
    if !firing.is_empty() {
        report.push(Finding::error(
            SIDE,
            "replica_role_tables",
            format!(
                "without session_replication_role = replica, the triggers or foreign keys of {} table(s) would fire on the target for rows the source already checked (a trigger could change them): {}",
                firing.len(),
                super::name_list(firing.iter())
            ),
            "grant what the replica_role line says, or connect to the target as a superuser",
        ));
    }
    Ok(())
}

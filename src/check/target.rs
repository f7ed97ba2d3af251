//! Checks on the target: can it take the schema and the rows, and would the
//! copy land on top of anything that is already there.

use tokio_postgres::Client;

use super::{name_list, query_error, CheckError, CheckOptions, Finding, Report};
use crate::conn::Side;
use crate::progress::state::{self, SyncRecord};
use crate::source::catalog::{SelectedTables, ServerFacts};
use crate::sql::TableName;

const SIDE: Side = Side::Target;

pub(super) async fn check(
    client: &Client,
    opts: &CheckOptions,
    source: &ServerFacts,
    selected: Option<&SelectedTables>,
    report: &mut Report,
) -> Result<(ServerFacts, Option<SyncRecord>), CheckError> {
    let facts = ServerFacts::read(client)
        .await
        .map_err(query_error(SIDE, "reading server facts"))?;
    let same_server: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND backend_start::text = $2)",
            &[&source.backend.0, &source.backend.1],
        )
        .await
        .map_err(query_error(SIDE, "comparing the servers"))?
        .get(0);
    let same_cluster = facts.system_id.is_empty()
        || source.system_id.is_empty()
        || facts.system_id == source.system_id;
    if same_server && same_cluster && facts.database == source.database {
        report.push(Finding::error(
            SIDE,
            "same_database",
            format!(
                "the target is the source itself (database {} on the same server)",
                facts.database
            ),
            "point --target at another server or database",
        ));
    }
    if facts.major() < source.major() {
        report.push(Finding::warn(
            SIDE,
            "version",
            format!(
                "target PostgreSQL {} is older than the source ({}): the source's schema may not load",
                facts.version, source.version
            ),
            "use a target at least as new as the source",
        ));
    } else if facts.major() > source.major() {
        report.push(Finding::ok(
            SIDE,
            "version",
            format!(
                "PostgreSQL {} (an upgrade from {})",
                facts.version,
                source.major()
            ),
        ));
    } else {
        report.push(Finding::ok(
            SIDE,
            "version",
            format!("PostgreSQL {}", facts.version),
        ));
    }

    if facts.encoding == source.encoding {
        report.push(Finding::ok(
            SIDE,
            "encoding",
            format!("{} on both sides", facts.encoding),
        ));
    } else if facts.encoding == "UTF8" {
        report.push(Finding::warn(
            SIDE,
            "encoding",
            format!(
                "source is {}, target is UTF8: text is converted on the way",
                source.encoding
            ),
            "nothing to do unless you expected the same encoding",
        ));
    } else {
        report.push(Finding::error(
            SIDE,
            "encoding",
            format!(
                "source database is {}, target is {}: characters may not convert",
                source.encoding, facts.encoding
            ),
            format!(
                "create the target database with ENCODING '{}' (or UTF8)",
                source.encoding
            ),
        ));
    }

    super::grants::target(client, &facts, report).await?;

    let existing = state::load_sync(client, &opts.name)
        .await
        .map_err(query_error(SIDE, "reading pgrepl state"))?;
    if let Some(rec) = &existing {
        report.push(Finding::ok(
            SIDE,
            "state",
            format!(
                "sync {:?} exists here ({}): pgrepl sync picks it up from there",
                opts.name.as_str(),
                rec.phase
            ),
        ));
        return Ok((facts, existing));
    }
    large_objects(client, report).await?;
    if let Some(selected) = selected {
        tables(client, opts, selected, report).await?;
    }
    Ok((facts, None))
}

/// The rule: a new sync makes the target's large objects the source's,
/// removing those the source lacks; so it starts only on a database that
/// has none (a sync resuming holds the source's, and never gets here).
async fn large_objects(client: &Client, report: &mut Report) -> Result<(), CheckError> {
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await
        .map_err(query_error(SIDE, "counting large objects"))?
        .get(0);
    if count > 0 {
        report.push(Finding::error(
            SIDE,
            "large_objects",
            format!(
                "the target database already holds {count} large object(s): the sync would replace or remove them with the source's"
            ),
            "remove them on the target (SELECT lo_unlink(oid) FROM pg_largeobject_metadata) or sync into an empty database",
        ));
    }
    Ok(())
}

/// Tables the copy would write: they must not exist (or, with
/// `--existing-schema`, must exist), and must hold no rows.
async fn tables(
    client: &Client,
    opts: &CheckOptions,
    selected: &SelectedTables,
    report: &mut Report,
) -> Result<(), CheckError> {
    let wanted: Vec<&TableName> = selected.with_storage().map(|t| &t.name).collect();
    let schemas: Vec<&str> = wanted.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = wanted.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT w.s, w.n, c.oid IS NOT NULL
             FROM unnest($1::text[], $2::text[]) AS w(s, n)
             LEFT JOIN pg_namespace ns ON ns.nspname = w.s
             LEFT JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = w.n AND c.relkind IN ('r', 'p')",
            &[&schemas, &names],
        )
        .await
        .map_err(query_error(SIDE, "looking up tables"))?;
    let mut present = Vec::new();
    let mut absent = Vec::new();
    for row in rows {
        let name = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        if row.get(2) {
            present.push(name);
        } else {
            absent.push(name);
        }
    }
    let mut holding_rows = Vec::new();
    for chunk in present.chunks(200) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| format!("SELECT {i} WHERE EXISTS (SELECT 1 FROM {})", t.quoted()))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for row in client
            .query(&sql, &[])
            .await
            .map_err(query_error(SIDE, "looking for rows"))?
        {
            let i: i32 = row.get(0);
            holding_rows.push(chunk[i as usize].clone());
        }
    }
    if !holding_rows.is_empty() {
        report.push(Finding::error(
            SIDE,
            "target_rows",
            format!(
                "{} table(s) already hold rows on the target: {}",
                holding_rows.len(),
                name_list(holding_rows.iter())
            ),
            "pgrepl copies into empty tables only: TRUNCATE or drop them on the target",
        ));
    }
    if opts.existing_schema {
        if absent.is_empty() {
            report.push(Finding::ok(
                SIDE,
                "target_tables",
                "every selected table exists on the target (--existing-schema)",
            ));
        } else {
            report.push(Finding::error(
                SIDE,
                "target_tables",
                format!("{} table(s) are missing on the target: {}", absent.len(), name_list(absent.iter())),
                "create them on the target, or drop --existing-schema to let pgrepl create the schema",
            ));
        }
    } else if present.is_empty() {
        report.push(Finding::ok(
            SIDE,
            "target_tables",
            "none of the selected tables exists yet: pgrepl creates the schema",
        ));
    } else {
        report.push(Finding::error(
            SIDE,
            "target_tables",
            format!(
                "{} table(s) already exist on the target: {}",
                present.len(),
                name_list(present.iter())
            ),
            "drop them, or pass --existing-schema to copy into the tables as they are",
        ));
    }
    Ok(())
}

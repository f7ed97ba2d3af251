//! Where the target records how far it applied the source's stream: the
//! sync's ledger.
//!
//! The rule: every target transaction that applies source transactions
//! records, in itself, the end LSN of the last of them, so the rows and the
//! position commit together or not at all (exactly once). Two ledgers keep
//! that rule:
//!
//! - [`Ledger::Origin`], the default: a replication origin.
//!   `pg_replication_origin_xact_setup` stamps the commit record, and the
//!   server keeps the position with the WAL; applied transactions carry
//!   the origin's name (a reverse sync leaves them out).
//! - [`Ledger::Table`], where the target role may not call the origin
//!   functions (before PostgreSQL 14 only a superuser may; a managed
//!   service may not grant them): the row of `pgrepl.applied`, upserted by
//!   the same transaction. Its end LSN is then the position.
//!
//! Both write `pgrepl.applied` (the xid beside the position, see
//! `apply::resent`); only where the position is read differs. What is
//! reported to the source as flushed must be durable on the target: the
//! origin's `progress(.., true)` flushes the target's WAL itself; for the
//! table, a position counts as durable once the target's WAL is flushed
//! past where it was inserted ([`TableFlush`]), and a session starts and
//! ends on a synchronous commit ([`Ledger::make_durable`]).
//!
//! A sync keeps the ledger it started with (`pgrepl.sync.ledger`; a sync
//! made by an older pgrepl has none recorded and uses its origin).

use std::collections::VecDeque;
use std::fmt;

use tokio_postgres::GenericClient;

use crate::lsn::Lsn;
use crate::sql::{quote_literal, OriginName, SyncName};

/// The replication-origin functions the origin ledger calls. They are per
/// database: granted in the target one.
pub const ORIGIN_FUNCTIONS: &[&str] = &[
    "pg_replication_origin_create(text)",
    "pg_replication_origin_drop(text)",
    "pg_replication_origin_session_setup(text)",
    "pg_replication_origin_session_reset()",
    "pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
    "pg_replication_origin_advance(text, pg_lsn)",
    "pg_replication_origin_progress(text, boolean)",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ledger {
    Origin(OriginName),
    Table,
}

/// Which ledger a new sync should use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The origin when the target role may use it, else the table.
    Auto,
    /// `--progress-table`.
    Table,
}

impl Ledger {
    /// The sync's ledger as `pgrepl.sync.ledger` names it.
    pub fn named(kind: Option<&str>, name: &SyncName) -> Ledger {
        match kind {
            Some("table") => Ledger::Table,
            _ => Ledger::Origin(name.origin()),
        }
    }

    /// The ledger a new sync on this target uses.
    pub async fn choose(
        client: &impl GenericClient,
        name: &SyncName,
        choice: Choice,
    ) -> Result<Ledger, tokio_postgres::Error> {
        if choice == Choice::Table || !origins_allowed(client).await?.is_empty() {
            return Ok(Ledger::Table);
        }
        Ok(Ledger::Origin(name.origin()))
    }

    fn kind(&self) -> &'static str {
        match self {
            Ledger::Origin(_) => "origin",
            Ledger::Table => "table",
        }
    }

    /// The origin a streamed transaction's connection takes for its commit.
    pub fn baton(&self) -> Option<&OriginName> {
        match self {
            Ledger::Origin(o) => Some(o),
            Ledger::Table => None,
        }
    }

    /// Run once by the main apply connection before it applies anything.
    pub fn session_setup_sql(&self) -> Option<String> {
        self.baton().map(|o| origin_session_sql(Some(o)))
    }

    /// The statement every applying transaction runs last before COMMIT:
    /// `$1` the end LSN (text), `$2` the source commit time (µs since
    /// 2000), `$3` the source xid ending there (or NULL).
    pub fn xact_setup_sql(&self, name: &SyncName) -> String {
        let upsert = format!(
            "INSERT INTO pgrepl.applied (sync_name, xid, end_lsn) VALUES ({}, $3::int8, $1::text::pg_lsn)
             ON CONFLICT (sync_name) DO UPDATE SET xid = excluded.xid, end_lsn = excluded.end_lsn",
            quote_literal(name.as_str())
        );
        match self {
            Ledger::Origin(_) => format!(
                "WITH applied AS ({upsert})
                 SELECT pg_replication_origin_xact_setup($1::text::pg_lsn,
                        '2000-01-01 00:00:00+00'::timestamptz + $2::int8 * interval '1 microsecond')"
            ),
            Ledger::Table => format!("WITH applied AS ({upsert}) SELECT $2::int8"),
        }
    }

    /// Records the ledger and its first position (the copy's consistent
    /// point), in the caller's transaction with the rest of the copy.
    pub async fn start_at(
        &self,
        client: &impl GenericClient,
        name: &SyncName,
        lsn: Lsn,
    ) -> Result<(), tokio_postgres::Error> {
        if let Ledger::Origin(origin) = self {
            client
                .execute(
                    "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
                    &[&origin.as_str()],
                )
                .await?;
            client
                .execute(
                    "SELECT pg_replication_origin_advance($1, $2)",
                    &[&origin.as_str(), &lsn],
                )
                .await?;
        }
        client
            .execute(
                "INSERT INTO pgrepl.applied (sync_name, xid, end_lsn) VALUES ($1, NULL, $2)
                 ON CONFLICT (sync_name) DO UPDATE SET xid = NULL, end_lsn = excluded.end_lsn",
                &[&name.as_str(), &lsn],
            )
            .await?;
        client
            .execute(
                "UPDATE pgrepl.sync SET ledger = $2 WHERE name = $1",
                &[&name.as_str(), &self.kind()],
            )
            .await?;
        Ok(())
    }

    /// How far the target applied (committed, maybe not yet flushed).
    pub async fn applied(
        &self,
        client: &impl GenericClient,
        name: &SyncName,
    ) -> Result<Option<Lsn>, tokio_postgres::Error> {
        let row = match self {
            Ledger::Origin(o) => {
                client
                    .query_opt(
                        "SELECT pg_replication_origin_progress(roname, false) FROM pg_replication_origin WHERE roname = $1",
                        &[&o.as_str()],
                    )
                    .await?
            }
            Ledger::Table => {
                client
                    .query_opt(
                        "SELECT end_lsn FROM pgrepl.applied WHERE sync_name = $1",
                        &[&name.as_str()],
                    )
                    .await?
            }
        };
        Ok(row.and_then(|r| r.get::<_, Option<Lsn>>(0)))
    }

    /// Simple-query text that flushes the target's WAL through the last
    /// recorded position and returns it (the last row's first column):
    /// what may be told to the source as flushed. Run on the apply
    /// connection at session start, and on any connection at the end.
    pub fn make_durable_sql(&self, name: &SyncName) -> String {
        match self {
            Ledger::Origin(o) => format!(
                "SELECT pg_replication_origin_progress({}, true)",
                quote_literal(o.as_str())
            ),
            // A commit with synchronous_commit on flushes the WAL through
            // itself, so through every commit before it. It must write
            // (a transaction without an xid flushes nothing).
            Ledger::Table => format!(
                "BEGIN;
                 SET LOCAL synchronous_commit = on;
                 UPDATE pgrepl.applied SET end_lsn = end_lsn WHERE sync_name = {0};
                 COMMIT;
                 SELECT end_lsn FROM pgrepl.applied WHERE sync_name = {0}",
                quote_literal(name.as_str())
            ),
        }
    }

    /// [`Ledger::make_durable_sql`] on a client.
    pub async fn make_durable(
        &self,
        client: &tokio_postgres::Client,
        name: &SyncName,
    ) -> Result<Lsn, tokio_postgres::Error> {
        let lsn = client
            .simple_query(&self.make_durable_sql(name))
            .await?
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    r.get(0).and_then(|l| l.parse::<Lsn>().ok())
                }
                _ => None,
            })
            .last();
        Ok(lsn.unwrap_or(Lsn::ZERO))
    }

    /// Removes the origin, if there is one. Returns whether it existed.
    pub async fn remove(
        client: &impl GenericClient,
        name: &SyncName,
    ) -> Result<bool, tokio_postgres::Error> {
        // Looked up first: a role that may not call the origin functions
        // (a table ledger) is never made to.
        let origin = name.origin();
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
                &[&origin.as_str()],
            )
            .await?
            .get(0);
        if exists {
            client
                .execute("SELECT pg_replication_origin_drop($1)", &[&origin.as_str()])
                .await?;
        }
        Ok(exists)
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ledger::Origin(o) => write!(f, "replication origin {o}"),
            Ledger::Table => f.write_str("progress table pgrepl.applied"),
        }
    }
}

/// Takes (`Some`) or gives up the replication origin for this session.
pub fn origin_session_sql(origin: Option<&OriginName>) -> String {
    match origin {
        Some(o) => format!(
            "SELECT pg_catalog.pg_replication_origin_session_setup({})",
            quote_literal(o.as_str())
        ),
        None => "SELECT pg_catalog.pg_replication_origin_session_reset()".into(),
    }
}

/// What keeps the connected role from the origin ledger: empty when it may
/// use it, else the functions it may not execute (all of them before
/// PostgreSQL 14, where they check for a superuser themselves).
pub async fn origins_allowed(
    client: &impl GenericClient,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT r.rolsuper, current_setting('server_version_num')::int,
                    (SELECT coalesce(array_agg(f ORDER BY o), '{}')
                     FROM unnest($1::text[]) WITH ORDINALITY AS w(f, o)
                     WHERE to_regprocedure(f) IS NOT NULL AND NOT has_function_privilege(f, 'EXECUTE'))
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&ORIGIN_FUNCTIONS],
        )
        .await?;
    let superuser: bool = row.get(0);
    let version: i32 = row.get(1);
    Ok(match (superuser, version) {
        (true, _) => Vec::new(),
        (false, v) if v < 140000 => ORIGIN_FUNCTIONS.iter().map(|f| f.to_string()).collect(),
        (false, _) => row.get(2),
    })
}

/// The table ledger's durable position, read without writing: each poll
/// notes the recorded position with the WAL insert position after it; a
/// position is durable once the WAL is flushed past its insert position
/// (its commit record was inserted before any snapshot could see it).
#[derive(Debug)]
pub struct TableFlush {
    pending: VecDeque<(Lsn, Lsn)>,
    durable: Lsn,
}

impl TableFlush {
    /// `durable`: the position made durable when the session started.
    pub fn new(durable: Lsn) -> Self {
        TableFlush {
            pending: VecDeque::new(),
            durable,
        }
    }

    pub async fn poll(
        &mut self,
        client: &impl GenericClient,
        name: &SyncName,
    ) -> Result<Lsn, tokio_postgres::Error> {
        let row = client
            .query_opt(
                "SELECT end_lsn, pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn()
                 FROM pgrepl.applied WHERE sync_name = $1",
                &[&name.as_str()],
            )
            .await?;
        if let Some(r) = row {
            self.note(r.get(0), r.get(1), r.get(2));
        }
        Ok(self.durable)
    }

    /// Forgets what was noted since the last durable position: after a
    /// broken connection the target may have restarted and lost what was
    /// committed but not flushed, and WAL it writes anew would pass the
    /// noted insert positions.
    pub fn forget(&mut self) {
        self.pending.clear();
    }

    fn note(&mut self, recorded: Lsn, inserted: Lsn, flushed: Lsn) {
        if self.pending.back().is_none_or(|(r, _)| *r < recorded) && recorded > self.durable {
            self.pending.push_back((recorded, inserted));
        }
        while let Some(&(r, i)) = self.pending.front() {
            if i > flushed {
                break;
            }
            self.durable = self.durable.max(r);
            self.pending.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_position_counts_as_durable_only_once_the_wal_is_flushed_past_it() {
        let mut f = TableFlush::new(Lsn(100));
        f.note(Lsn(200), Lsn(5000), Lsn(4000));
        assert_eq!(f.durable, Lsn(100));
        f.note(Lsn(300), Lsn(6000), Lsn(5000));
        assert_eq!(f.durable, Lsn(200));
        f.note(Lsn(300), Lsn(6500), Lsn(6400));
        assert_eq!(f.durable, Lsn(300));
        // Never backwards, nothing noted at or behind it.
        f.note(Lsn(250), Lsn(7000), Lsn(7000));
        assert_eq!(f.durable, Lsn(300));
        assert!(f.pending.is_empty());
    }

    #[test]
    fn a_ledger_is_named_by_its_kind_and_old_syncs_use_their_origin() {
        let name = SyncName::default();
        assert_eq!(Ledger::named(Some("table"), &name), Ledger::Table);
        assert_eq!(Ledger::named(None, &name), Ledger::Origin(name.origin()));
        assert!(Ledger::Table.xact_setup_sql(&name).contains("$2::int8"));
        assert!(!Ledger::Table
            .xact_setup_sql(&name)
            .contains("pg_replication_origin"));
    }
}

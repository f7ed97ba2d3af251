//! What the source holds: its tables, as the catalog describes them, and the
//! server facts the checks and the setup need. Read-only.

use tokio_postgres::Client;

use super::selection::{PatternError, Selection};
use crate::sql::TableName;

/// pgrepl's own schema, on both sides: never copied, never published
/// (except `pgrepl.schema_log`, which carries DDL).
pub const PGREPL_SCHEMA: &str = "pgrepl";
/// The cutover fence's schema on a source (its table flags a fence).
pub const FENCE_SCHEMA: &str = "pgrepl_fence";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableKind {
    Plain,
    /// A partitioned table: holds no rows itself; its leaves are copied,
    /// its changes are published through it (`publish_via_partition_root`).
    PartitionedRoot,
    /// A leaf (or intermediate) partition of `root`.
    Partition {
        root: TableName,
        leaf: bool,
    },
}

/// How UPDATE/DELETE find their row, from `relreplident` and the indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key; `false` when the table has none.
    Default {
        has_primary_key: bool,
    },
    Full,
    /// A unique index; `false` when the index was dropped.
    Index {
        present: bool,
    },
    Nothing,
}

impl ReplicaIdentity {
    /// Whether UPDATE/DELETE on the source keep working once published.
    pub fn is_usable(self) -> bool {
        match self {
            ReplicaIdentity::Default { has_primary_key } => has_primary_key,
            ReplicaIdentity::Full => true,
            ReplicaIdentity::Index { present } => present,
            ReplicaIdentity::Nothing => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SourceTable {
    pub oid: u32,
    pub name: TableName,
    pub kind: TableKind,
    pub unlogged: bool,
    pub identity: ReplicaIdentity,
    /// Planner estimate (`reltuples`), -1 when never analysed.
    pub estimated_rows: i64,
    /// Main fork size in bytes (0 for partitioned roots).
    pub bytes: i64,
    pub can_select: bool,
    /// The connected role owns it (or is a member of its owner).
    pub owned: bool,
    /// Its owner role.
    pub owner: String,
}

impl SourceTable {
    /// Holds rows of its own (plain tables and leaf partitions).
    pub fn has_storage(&self) -> bool {
        matches!(
            self.kind,
            TableKind::Plain | TableKind::Partition { leaf: true, .. }
        )
    }

    /// The table patterns and publications name: itself, or its root.
    pub fn top(&self) -> &TableName {
        match &self.kind {
            TableKind::Partition { root, .. } => root,
            _ => &self.name,
        }
    }
}

/// Every user table of the source database, pgrepl's own and extension
/// members left out.
pub async fn list_tables(client: &Client) -> Result<Vec<SourceTable>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text,
                    c.relpersistence::text, c.relreplident::text, c.relispartition,
                    rn.nspname::text, r.relname::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
                    c.reltuples::int8,
                    CASE WHEN c.relkind = 'r' THEN pg_relation_size(c.oid) ELSE 0 END,
                    has_table_privilege(c.oid, 'SELECT'),
                    pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid)
             LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
             WHERE c.relkind IN ('r', 'p')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1, $2)
               AND n.nspname !~ '^pg_(toast|temp_)'
               AND NOT EXISTS (SELECT 1 FROM pg_depend d
                               WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
             ORDER BY n.nspname, c.relname",
            &[&PGREPL_SCHEMA, &FENCE_SCHEMA],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let relkind: String = row.get(3);
            let name = TableName::new(row.get::<_, String>(1), row.get::<_, String>(2));
            let is_partition: bool = row.get(6);
            let kind = match (relkind.as_str(), is_partition) {
                (_, true) => TableKind::Partition {
                    root: TableName::new(
                        row.get::<_, Option<String>>(7).unwrap_or_default(),
                        row.get::<_, Option<String>>(8).unwrap_or_default(),
                    ),
                    leaf: relkind == "r",
                },
                ("p", false) => TableKind::PartitionedRoot,
                _ => TableKind::Plain,
            };
            let has_pk: bool = row.get(9);
            let identity = match row.get::<_, String>(5).as_str() {
                "f" => ReplicaIdentity::Full,
                "i" => ReplicaIdentity::Index {
                    present: row.get(10),
                },
                "n" => ReplicaIdentity::Nothing,
                _ => ReplicaIdentity::Default {
                    has_primary_key: has_pk,
                },
            };
            SourceTable {
                oid: row.get::<_, i64>(0) as u32,
                name,
                kind,
                unlogged: row.get::<_, String>(4) == "u",
                identity,
                estimated_rows: row.get(11),
                bytes: row.get(12),
                can_select: row.get(13),
                owned: row.get(14),
                owner: row.get(15),
            }
        })
        .collect())
}

/// The tables a sync covers: selected top-level tables and, for selected
/// partitioned tables, all their partitions.
#[derive(Clone, Debug, Default)]
pub struct SelectedTables {
    pub tables: Vec<SourceTable>,
    /// The source's other tables (pg_dump leaves them out).
    pub excluded: Vec<SourceTable>,
}

impl SelectedTables {
    /// Applies `selection` to `all`; patterns match plain and partitioned
    /// tables, and partitions follow their root.
    /// `choose`'s errors as one line.
    pub fn one_line(errors: &[PatternError]) -> String {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn choose(all: Vec<SourceTable>, selection: &Selection) -> Result<Self, Vec<PatternError>> {
        let tops = all
            .iter()
            .filter(|t| !matches!(t.kind, TableKind::Partition { .. }))
            .map(|t| &t.name);
        let errors = selection.unmatched(tops);
        if !errors.is_empty() {
            return Err(errors);
        }
        let (tables, excluded) = all.into_iter().partition(|t| selection.selects(t.top()));
        Ok(SelectedTables { tables, excluded })
    }

    /// Tables whose rows are copied (plain tables and leaf partitions).
    pub fn with_storage(&self) -> impl Iterator<Item = &SourceTable> {
        self.tables.iter().filter(|t| t.has_storage())
    }

    /// Top-level tables (plain and partitioned roots): what a publication lists.
    pub fn tops(&self) -> impl Iterator<Item = &SourceTable> {
        self.tables
            .iter()
            .filter(|t| !matches!(t.kind, TableKind::Partition { .. }))
    }

    pub fn names(&self) -> impl Iterator<Item = &TableName> {
        self.tables.iter().map(|t| &t.name)
    }

    pub fn contains(&self, name: &TableName) -> bool {
        self.tables.iter().any(|t| &t.name == name)
    }
}

/// Facts about a server that the checks compare.
#[derive(Clone, Debug)]
pub struct ServerFacts {
    /// `server_version_num`, e.g. 150004.
    pub version_num: i32,
    pub version: String,
    pub encoding: String,
    pub is_superuser: bool,
    pub can_replicate: bool,
    pub user: String,
    pub database: String,
    /// This session's backend, as `pg_stat_activity` shows it (pid and
    /// start time), and the cluster's system identifier: a server with the
    /// same identifier that lists this backend is the same server.
    pub backend: (i32, String),
    pub system_id: String,
}

impl ServerFacts {
    pub fn major(&self) -> i32 {
        self.version_num / 10000
    }

    pub async fn read(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int4,
                        current_setting('server_version'),
                        pg_encoding_to_char(d.encoding)::text,
                        r.rolsuper, r.rolreplication OR r.rolsuper,
                        current_user::text, current_database()::text, pg_backend_pid(),
                        (SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()),
                        CASE WHEN has_function_privilege('pg_control_system()', 'execute')
                             THEN (SELECT system_identifier::text FROM pg_control_system()) ELSE '' END
                 FROM pg_database d, pg_roles r
                 WHERE d.datname = current_database() AND r.rolname = current_user",
                &[],
            )
            .await?;
        Ok(ServerFacts {
            version_num: row.get(0),
            version: row.get(1),
            encoding: row.get(2),
            is_superuser: row.get(3),
            can_replicate: row.get(4),
            user: row.get(5),
            database: row.get(6),
            backend: (
                row.get(7),
                row.get::<_, Option<String>>(8).unwrap_or_default(),
            ),
            system_id: row.get::<_, Option<String>>(9).unwrap_or_default(),
        })
    }
}

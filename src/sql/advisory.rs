//! pgrepl's advisory locks: each is keyed `(hashtext(label),
//! hashtext(the sync's name))` in the current database, so locks of
//! different purposes and syncs never meet.

use tokio_postgres::Client;

use super::SyncName;

/// The lock a running sync holds, shared, for as long as its process runs
/// (see `control::presence`).
pub const SYNC_RUNS: &str = "pgrepl sync";

/// The backend holding the lock `label` of sync `name` in this database,
/// if one does. Reads `pg_locks` only: takes nothing.
pub async fn holder(
    client: &Client,
    label: &str,
    name: &SyncName,
) -> Result<Option<i32>, tokio_postgres::Error> {
    // pg_locks shows the two int4 keys as oids: their bits, unsigned.
    Ok(client
        .query_opt(
            "SELECT l.pid FROM pg_catalog.pg_locks l
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.database = (SELECT oid FROM pg_catalog.pg_database
                                   WHERE datname = pg_catalog.current_database())
                AND l.classid::int8 = (pg_catalog.hashtext($1)::int8 & 4294967295)
                AND l.objid::int8 = (pg_catalog.hashtext($2)::int8 & 4294967295)
              ORDER BY l.pid LIMIT 1",
            &[&label, &name.as_str()],
        )
        .await?
        .map(|r| r.get(0)))
}

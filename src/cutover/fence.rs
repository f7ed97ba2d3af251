//! The fence: from the moment it stands, no session writes to the synced
//! tables of the old source — every role, superusers included, sessions
//! already open included.
//!
//! What closes each gap:
//! - writes in flight: `LOCK ... IN EXCLUSIVE MODE` on every synced table
//!   waits until every transaction that wrote one has ended (so each of
//!   them commits before the fence LSN), and then blocks INSERT, UPDATE,
//!   DELETE, TRUNCATE, COPY and DDL on them from every session, whatever
//!   its role or settings; the same lock on `pg_largeobject` and
//!   `pg_largeobject_metadata` holds large object writers while cutover
//!   copies them;
//! - sessions already open, after the cutover: statement triggers on every
//!   synced table (`BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE`) that
//!   refuse the write, created in the locking transaction and committed
//!   with its end, so the locks hand over to them with no gap; they fire
//!   for superusers too, and not for pgrepl's own apply (replica role), so
//!   a reverse sync can write;
//! - new sessions: `default_transaction_read_only` on the database (no
//!   new table, no `nextval`);
//! - sessions already open calling `nextval` or, once the locks are gone,
//!   writing large objects: nothing here stops them; cutover ends them
//!   (`--terminate`) or refuses while one is left (see `sessions`) before
//!   it reads the sequences;
//! - DDL anywhere in the database (a function created after the fence
//!   would never reach the target): an event trigger refusing it while
//!   `pgrepl_fence.active` holds a row. The trigger stays once made (inert
//!   without the row): a role that is not a superuser may not create one,
//!   so `pgrepl install-capture` makes it ahead for such a role, which
//!   then fences by writing the row.
//!
//! Until the cutover succeeds the locking transaction is open: lifting the
//! fence rolls it back (no trigger ever existed) and undoes the other two.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::CutoverError;
use crate::conn::Endpoint;
use crate::lsn::Lsn;
use crate::sql::{quote_ident, TableName};

/// The flag table and the tables' trigger function, in a schema of their
/// own (`pgrepl_fence`): removing a sync's state or DDL capture (schema
/// `pgrepl`) must never take the fence with it.
const FENCE_TABLE_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS pgrepl_fence;
COMMENT ON SCHEMA pgrepl_fence IS 'pgrepl cutover fence: pgrepl teardown --unfence lifts it';
-- One row while a fence stands. A key: a FOR ALL TABLES publication
-- publishes it, and deleting the row takes a replica identity.
CREATE TABLE IF NOT EXISTS pgrepl_fence.active (
    fenced boolean PRIMARY KEY DEFAULT true CHECK (fenced),
    since timestamptz NOT NULL DEFAULT clock_timestamp()
);
REVOKE ALL ON SCHEMA pgrepl_fence FROM PUBLIC;
CREATE OR REPLACE FUNCTION pgrepl_fence.fenced() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'this database was cut over by pgrepl: % is read-only here', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
        USING HINT = 'the application now writes to the new server; `pgrepl teardown --unfence` lifts the fence';
END
$fn$;
GRANT EXECUTE ON FUNCTION pgrepl_fence.fenced() TO PUBLIC;
"#;

/// The fence against DDL: an event trigger, which only some roles may
/// create (superusers; some services' admin roles).
const FENCE_DDL_SQL: &str = r#"
CREATE OR REPLACE FUNCTION pgrepl_fence.fenced_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    -- pgrepl's own sessions keep their state and its teardown working.
    IF pg_catalog.current_setting('pgrepl.internal', true) = 'on'
       OR pg_catalog.current_setting('application_name') = 'pgrepl'
       OR NOT EXISTS (SELECT 1 FROM pgrepl_fence.active) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'this database is fenced by pgrepl for a cutover: no DDL'
        USING HINT = '`pgrepl teardown --unfence` lifts the fence';
END
$fn$;
DROP EVENT TRIGGER IF EXISTS pgrepl_fence;
CREATE EVENT TRIGGER pgrepl_fence ON ddl_command_start EXECUTE PROCEDURE pgrepl_fence.fenced_ddl();
"#;

/// The fence made ahead by a superuser for `role`, which may then fence
/// (write `pgrepl_fence.active`, create the table triggers) without being
/// one: for `pgrepl install-capture`.
pub fn install_for(role: &str) -> String {
    let role = quote_ident(role);
    format!(
        "{FENCE_TABLE_SQL};
{FENCE_DDL_SQL};
GRANT USAGE ON SCHEMA pgrepl_fence TO {role};
GRANT SELECT, INSERT, DELETE ON pgrepl_fence.active TO {role};
"
    )
}

/// Whether the fence's event trigger and table are there (made ahead).
async fn made_ahead(admin: &Client) -> Result<bool, CutoverError> {
    Ok(admin
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgrepl_fence' AND evtenabled IN ('O', 'A'))
                    AND coalesce(has_table_privilege({}, 'INSERT'), false)
                    AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgrepl_fence' AND has_schema_privilege(oid, 'USAGE'))",
                TableName::new("pgrepl_fence", "active").oid_sql()
            ),
            &[],
        )
        .await
        .map_err(|e| CutoverError::source("looking for the fence", &e))?
        .get(0))
}

async fn is_superuser(admin: &Client) -> Result<bool, CutoverError> {
    Ok(admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| CutoverError::source("reading the role", &e))?
        .get(0))
}

/// The statement-trigger name on fenced tables.
const TRIGGER: &str = "pgrepl_fence";

/// A fence in place (its locks held until `commit` or `lift`).
pub struct Fence {
    lock: Client,
    database: String,
    pub lsn: Lsn,
    pub since: Instant,
    /// The source's clock when new sessions turned read-only by default:
    /// sessions opened before it keep a read-write default.
    pub read_only_since: String,
}

async fn exec(c: &Client, sql: &str, what: &'static str) -> Result<(), CutoverError> {
    c.batch_execute(sql)
        .await
        .map_err(|e| CutoverError::source(what, &e))
}

/// Puts the fence up. `wait`: how long to wait for open transactions to
/// end; `terminate`: end the sessions still in the way after that.
pub async fn put_up(
    source: &Endpoint,
    tables: &[TableName],
    wait: Duration,
    terminate: bool,
) -> Result<Fence, CutoverError> {
    let admin = source.connect().await?;
    let database: String = admin
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| CutoverError::source("reading the database", &e))?
        .get(0);
    // The event trigger and the database default first: from here no DDL
    // and no new read-write session. A role that is not a superuser
    // installs the fence where it may (some services' admin roles), else
    // uses one made ahead for it.
    if !is_superuser(&admin).await? && made_ahead(&admin).await? {
        tracing::debug!("the fence's event trigger was made ahead");
    } else if let Err(e) = admin
        .batch_execute(&format!(
            "SET pgrepl.internal = 'on'; {FENCE_TABLE_SQL}; {FENCE_DDL_SQL}"
        ))
        .await
    {
        if e.code().map(|c| c.code()) != Some("42501") {
            let _ = admin.batch_execute("RESET pgrepl.internal").await;
            return Err(CutoverError::source("installing the fence", &e));
        }
        // No event trigger may be made here (Azure, Neon before 2025): DDL
        // is then held by the read-only default of new sessions and by
        // ending (or waiting out) every session opened before the fence.
        let tables = admin
            .batch_execute(&format!(
                "SET pgrepl.internal = 'on'; {FENCE_TABLE_SQL}; RESET pgrepl.internal"
            ))
            .await;
        let _ = admin.batch_execute("RESET pgrepl.internal").await;
        if let Err(e) = tables {
            if e.code().map(|c| c.code()) == Some("42501") {
                let user: String = admin
                    .query_one("SELECT current_user::text", &[])
                    .await
                    .map_err(|e| CutoverError::source("reading the role", &e))?
                    .get(0);
                return Err(CutoverError::FenceNotMade { user });
            }
            return Err(CutoverError::source("installing the fence", &e));
        }
        tracing::warn!(
            "this role may not create event triggers and none was made ahead (`pgrepl install-capture`): DDL is held back by the read-only default of new sessions and by the sessions rule only; a session that turns default_transaction_read_only off could still run DDL"
        );
    }
    // Rule: once any part of the fence persists, every way out of here
    // takes it down again (the caller lifts only a fence it was given).
    // The row first: a fence stands from it on (see `is_fenced`), so a
    // cutover that dies anywhere after it leaves a fence `status` names
    // and `cutover --abandon` lifts, never a bare read-only default.
    let persistent = async {
        exec(
            &admin,
            "SET pgrepl.internal = 'on'; INSERT INTO pgrepl_fence.active DEFAULT VALUES ON CONFLICT DO NOTHING; RESET pgrepl.internal",
            "fencing DDL",
        )
        .await?;
        exec(
            &admin,
            &format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                quote_ident(&database)
            ),
            "making the database read-only for new sessions",
        )
        .await?;
        let read_only_since: String = admin
            .query_one("SELECT pg_catalog.clock_timestamp()::text", &[])
            .await
            .map_err(|e| CutoverError::source("reading the source's clock", &e))?
            .get(0);
        let lock = source.connect().await?;
        Ok::<_, CutoverError>((read_only_since, lock))
    }
    .await;
    let (read_only_since, lock) = match persistent {
        Ok(v) => v,
        Err(e) => {
            undo_persistent(&admin, &database, &[]).await;
            return Err(e);
        }
    };
    let fence = async {
        exec(
            &lock,
            "SET pgrepl.internal = 'on'; SET default_transaction_read_only = off; BEGIN",
            "starting the fence",
        )
        .await?;
        // pg_largeobject and pg_largeobject_metadata too: large objects
        // are not decoded, cutover copies them under the fence, so their
        // writers must wait as well: those of their contents (lo_write,
        // lo_put, lo_unlink), and those of only their metadata (lo_create,
        // ALTER LARGE OBJECT … OWNER, GRANT … ON LARGE OBJECT). Both
        // catalogs belong to the bootstrap superuser and take the same
        // privilege to lock, so the one fails when the other would.
        // A role that is not a superuser may not lock catalogs: then only
        // the sessions rule (every session opened before the fence ended
        // or gone, new ones read-only) holds large objects still.
        let (lock_lo, large_objects): (bool, i64) = lock
            .query_one(
                "SELECT has_table_privilege('pg_catalog.pg_largeobject', 'UPDATE'),
                        (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)",
                &[],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))
            .map_err(|e| CutoverError::source("reading the large-object privileges", &e))?;
        if !lock_lo && large_objects > 0 {
            tracing::warn!(
                large_objects,
                "the role may not lock pg_largeobject (only a superuser may): large objects are held still only by ending the sessions opened before the fence; a session opened later that turns default_transaction_read_only off could still write one"
            );
        }
        let lo_catalogs = [
            "pg_catalog.pg_largeobject".to_string(),
            "pg_catalog.pg_largeobject_metadata".to_string(),
        ];
        let names: Vec<String> = tables
            .iter()
            .map(|t| t.quoted())
            .chain(lo_catalogs.into_iter().filter(|_| lock_lo))
            .collect();
        let started = Instant::now();
        loop {
            let left = wait.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
            let locked = lock
                .batch_execute(&format!(
                    "SAVEPOINT lk; SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {} IN EXCLUSIVE MODE; RELEASE SAVEPOINT lk",
                    left.as_millis().min(5_000),
                    names.join(", ")
                ))
                .await;
            match locked {
                Ok(()) => break,
                // A lock timeout, or a deadlock with a writer that holds one
                // synced table and wants another the fence took already
                // (the server cancels one of the two): the locks taken so
                // far are given back, and the fence tries again.
                Err(e) if matches!(e.code().map(|c| c.code()), Some("55P03" | "40P01")) => {
                    exec(&lock, "ROLLBACK TO SAVEPOINT lk", "waiting for writers").await?;
                    let blockers = blockers(&admin, &lock, &names).await?;
                    if started.elapsed() < wait {
                        tracing::info!(sessions = blockers.len(), "waiting for transactions that write to the synced tables to end");
                        continue;
                    }
                    // Give up without --terminate, or when ending sessions
                    // does not clear the way either.
                    if !terminate || started.elapsed() >= wait * 3 {
                        return Err(CutoverError::Busy {
                            sessions: blockers.len(),
                            waited: started.elapsed(),
                        });
                    }
                    for pid in &blockers {
                        tracing::warn!(pid, "terminating a session that keeps writing to a synced table (--terminate)");
                        let _ = admin
                            .execute("SELECT pg_terminate_backend($1)", &[pid])
                            .await;
                    }
                }
                Err(e) => return Err(CutoverError::source("locking the synced tables", &e)),
            }
        }
        // Triggers that outlive the locks, created under them.
        for t in tables {
            exec(
                &lock,
                &format!(
                    "DROP TRIGGER IF EXISTS {TRIGGER} ON {t}; CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t}
                     FOR EACH STATEMENT EXECUTE PROCEDURE pgrepl_fence.fenced()",
                    t = t.quoted()
                ),
                "fencing a table",
            )
            .await?;
        }
        // The insert position, not the write position: a commit made with
        // synchronous_commit off just before the fence may sit in WAL the
        // server has not written yet, and must be applied too.
        let lsn: Lsn = lock
            .query_one("SELECT pg_current_wal_insert_lsn()", &[])
            .await
            .map_err(|e| CutoverError::source("reading the fence LSN", &e))?
            .get(0);
        Ok::<Lsn, CutoverError>(lsn)
    }
    .await;
    match fence {
        Ok(lsn) => {
            // A commit past the fence, flushed: everything before it is then
            // on disk and streams (a walsender sends flushed WAL only), and
            // an idle source tells the sync the fence is there.
            let flushed = admin
                .batch_execute(
                    "SET synchronous_commit = on;
                     SELECT pg_logical_emit_message(true, 'pgrepl', 'fence');",
                )
                .await;
            if let Err(e) = flushed {
                drop(lock);
                undo_persistent(&admin, &database, &[]).await;
                return Err(CutoverError::source(
                    "flushing the WAL through the fence",
                    &e,
                ));
            }
            Ok(Fence {
                lock,
                database,
                lsn,
                since: Instant::now(),
                read_only_since,
            })
        }
        Err(e) => {
            drop(lock);
            undo_persistent(&admin, &database, &[]).await;
            Err(e)
        }
    }
}

/// Sessions holding a lock on one of `tables` that a write takes (or
/// stronger), other than `lock`'s.
async fn blockers(
    admin: &Client,
    lock: &Client,
    tables: &[String],
) -> Result<Vec<i32>, CutoverError> {
    let pid: i32 = lock
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(|e| CutoverError::source("reading the fence session", &e))?
        .get(0);
    let rows = admin
        .query(
            "SELECT DISTINCT l.pid FROM pg_locks l
             WHERE l.pid <> $1 AND l.pid <> pg_backend_pid() AND l.granted
               AND l.relation IN (SELECT to_regclass(t) FROM unnest($2::text[]) t)
               AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock',
                              'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')",
            &[&pid, &tables],
        )
        .await
        .map_err(|e| CutoverError::source("finding the sessions in the way", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

impl Fence {
    /// The session holding the fence's locks: the one session that may
    /// still read large objects (they take a lock the fence's blocks).
    pub fn session(&self) -> &Client {
        &self.lock
    }

    /// Takes the fence LSN again, now (every database of a set fenced):
    /// the insert position, and a commit past it flushed, as `put_up` does.
    pub async fn take_lsn_again(&mut self, source: &Endpoint) -> Result<(), CutoverError> {
        let lsn: Lsn = self
            .lock
            .query_one("SELECT pg_current_wal_insert_lsn()", &[])
            .await
            .map_err(|e| CutoverError::source("reading the fence LSN", &e))?
            .get(0);
        let admin = source.connect().await?;
        exec(
            &admin,
            "SET synchronous_commit = on; SELECT pg_logical_emit_message(true, 'pgrepl', 'fence');",
            "flushing the WAL through the fence",
        )
        .await?;
        self.lsn = lsn;
        Ok(())
    }

    /// The cutover succeeded: the triggers take over from the locks.
    pub async fn commit(self) -> Result<(), CutoverError> {
        exec(&self.lock, "COMMIT", "leaving the fence in place").await
    }

    /// The cutover failed: the source is writable again, as before.
    pub async fn lift(self, source: &Endpoint) {
        let _ = self.lock.batch_execute("ROLLBACK").await;
        drop(self.lock);
        match source.connect().await {
            Ok(admin) => undo_persistent(&admin, &self.database, &[]).await,
            Err(e) => {
                tracing::error!(error = %e, "could not lift the fence: run `pgrepl teardown --unfence`")
            }
        }
    }
}

/// Removes a committed fence (or what a failed one left): the triggers
/// on `tables` (all pgrepl fence triggers when empty), the database
/// default, the DDL event trigger. Best effort, each part on its own.
pub async fn undo_persistent(admin: &Client, database: &str, tables: &[TableName]) {
    let mut steps = vec![
        format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            quote_ident(database)
        ),
        format!(
            "SET pgrepl.internal = 'on'; DO $$ BEGIN IF {} IS NOT NULL THEN DELETE FROM pgrepl_fence.active; END IF; END $$",
            TableName::new("pgrepl_fence", "active").oid_sql()
        ),
    ];
    // A fence made ahead for a role that is not a superuser stays, inert:
    // only a superuser may drop an event trigger.
    let superuser = is_superuser(admin).await.unwrap_or(false);
    if superuser {
        steps.push(
            "SET pgrepl.internal = 'on'; DROP EVENT TRIGGER IF EXISTS pgrepl_fence".to_string(),
        );
    }
    let targets: Vec<String> = if tables.is_empty() {
        admin
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = $1",
                &[&TRIGGER],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default()
    } else {
        tables.iter().map(TableName::quoted).collect()
    };
    for t in targets {
        steps.push(format!(
            "SET pgrepl.internal = 'on'; DROP TRIGGER IF EXISTS {TRIGGER} ON {t}"
        ));
    }
    if superuser {
        steps.push(
            "SET pgrepl.internal = 'on'; DROP SCHEMA IF EXISTS pgrepl_fence CASCADE".to_string(),
        );
    }
    for sql in steps {
        if let Err(e) = admin.batch_execute(&sql).await {
            tracing::warn!(error = %crate::conn::error::describe(&e), "lifting part of the fence");
        }
    }
    let _ = admin.batch_execute("RESET pgrepl.internal").await;
}

/// After a cutover cut short anywhere: whatever of a fence stands on the
/// source comes down (best effort; `pgrepl teardown --unfence` finishes
/// the job).
pub async fn lift_what_stands(source: &Endpoint) {
    let admin = match source.connect().await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "could not lift the fence: run `pgrepl teardown --unfence`");
            return;
        }
    };
    match (is_fenced(&admin).await, database(&admin).await) {
        (Ok(true), Ok(db)) => undo_persistent(&admin, &db, &[]).await,
        (Ok(false), _) => {}
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "could not lift the fence: run `pgrepl teardown --unfence`")
        }
    }
}

/// Whether this database carries a pgrepl fence.
pub async fn is_fenced(client: &Client) -> Result<bool, CutoverError> {
    let row = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = $1), {} IS NOT NULL,
                        EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgrepl_fence')",
                TableName::new("pgrepl_fence", "active").oid_sql()
            ),
            &[&TRIGGER],
        )
        .await
        .map_err(|e| CutoverError::target("looking for a fence", &e))?;
    let (tables, active_table, event_trigger): (bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    if tables {
        return Ok(true);
    }
    if !active_table {
        // An earlier pgrepl's fence: its event trigger refused DDL always.
        return Ok(event_trigger);
    }
    let active: i64 = client
        .query_one("SELECT count(*) FROM pgrepl_fence.active", &[])
        .await
        .map_err(|e| CutoverError::target("looking for a fence", &e))?
        .get(0);
    Ok(active > 0)
}

/// When the fence's row was written (a fence made by an older pgrepl has
/// no row: `None`).
pub async fn since(src: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let active = TableName::new("pgrepl_fence", "active");
    let exists: bool = src
        .query_one(&format!("SELECT {} IS NOT NULL", active.oid_sql()), &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(src
        .query_opt(
            &format!("SELECT min(since)::text FROM {}", active.quoted()),
            &[],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// The current database's name, for `undo_persistent`.
pub async fn database(client: &Client) -> Result<String, CutoverError> {
    Ok(client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| CutoverError::target("reading the database", &e))?
        .get(0))
}

//! Connections of a whole-server move, budgeted: each database's sync
//! holds a few sessions on either side while it runs (walsender, apply,
//! flush watcher, control, status, sequence and large-object rounds, its
//! presence on the target), and
//! the copy adds the shared pool's workers (one session on each side
//! each). The sum must fit what each server has free, and `--max-connections`
//! when given.

use tokio_postgres::Client;

use crate::conn::error::describe;

/// Sessions one database's sync holds on the source while it streams.
pub const PER_DATABASE_SOURCE: u32 = 5;
/// The same on the target (one more per large transaction streamed while
/// in progress, briefly).
pub const PER_DATABASE_TARGET: u32 = 8;

/// What one server has free for new sessions, its walsenders and slots.
#[derive(Clone, Copy, Debug)]
pub struct Room {
    pub connections: i64,
    pub walsenders: i64,
    pub slots: i64,
}

/// Reads what `client`'s server has free (walsenders and slots: as a
/// source).
pub async fn room(client: &Client) -> Result<Room, String> {
    let row = client
        .query_one(
            "SELECT current_setting('max_connections')::int
                    - current_setting('superuser_reserved_connections')::int
                    - coalesce(current_setting('reserved_connections', true)::int, 0)
                    -- (backend_type is NULL for other roles' sessions without
                    -- pg_read_all_stats: counted too.)
                    - (SELECT count(*) FROM pg_stat_activity
                       WHERE backend_type = 'client backend' OR backend_type IS NULL)::int,
                    current_setting('max_wal_senders')::int
                    - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int,
                    current_setting('max_replication_slots')::int
                    - (SELECT count(*) FROM pg_replication_slots WHERE slot_name NOT LIKE 'pgrepl\\_%')::int",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(Room {
        connections: i64::from(row.get::<_, i32>(0)),
        walsenders: i64::from(row.get::<_, i32>(1)),
        slots: i64::from(row.get::<_, i32>(2)),
    })
}

/// Sessions `databases` syncs with `jobs` copy workers need on each side.
pub fn needed(databases: usize, jobs: usize) -> (u32, u32) {
    let n = databases as u32;
    let j = jobs as u32;
    (n * PER_DATABASE_SOURCE + j, n * PER_DATABASE_TARGET + j)
}

/// Refuses a move that does not fit: one line saying what to change.
pub fn judge(
    databases: usize,
    jobs: usize,
    max_connections: Option<u32>,
    source: Room,
    target: Room,
) -> Result<(), String> {
    let (src, tgt) = needed(databases, jobs);
    if let Some(max) = max_connections {
        let most = src.max(tgt);
        if most > max {
            return Err(format!(
                "{databases} database(s) with {jobs} copy worker(s) need about {src} sessions on the source and {tgt} on the target ({PER_DATABASE_SOURCE} and {PER_DATABASE_TARGET} per database, one per worker), more than --max-connections {max}: raise it, lower --jobs, or move fewer databases at once (--databases)"
            ));
        }
    }
    if i64::from(src) > source.connections {
        return Err(format!(
            "source: about {src} sessions are needed and the server has {} free (max_connections): raise max_connections, lower --jobs, or move fewer databases at once",
            source.connections.max(0)
        ));
    }
    if i64::from(tgt) > target.connections {
        return Err(format!(
            "target: about {tgt} sessions are needed and the server has {} free (max_connections): raise max_connections, lower --jobs, or move fewer databases at once",
            target.connections.max(0)
        ));
    }
    if databases as i64 > source.walsenders {
        return Err(format!(
            "source: {databases} database(s) stream through one walsender each and the server has {} free (max_wal_senders): raise it and restart the source",
            source.walsenders.max(0)
        ));
    }
    if databases as i64 > source.slots {
        return Err(format!(
            "source: {databases} database(s) need a replication slot each and the server has room for {} more (max_replication_slots): raise it and restart the source",
            source.slots.max(0)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Room = Room {
        connections: 200,
        walsenders: 20,
        slots: 20,
    };

    #[test]
    fn a_move_that_does_not_fit_is_refused_with_what_to_change() {
        assert!(judge(4, 4, None, ROOMY, ROOMY).is_ok());
        let e = judge(4, 4, Some(20), ROOMY, ROOMY).unwrap_err();
        assert!(
            e.contains("--max-connections 20") && e.contains("36 on the target"),
            "{e}"
        );
        let tight = Room {
            connections: 10,
            ..ROOMY
        };
        assert!(judge(4, 4, None, tight, ROOMY)
            .unwrap_err()
            .starts_with("source:"));
        let senders = Room {
            walsenders: 3,
            ..ROOMY
        };
        assert!(judge(4, 4, None, senders, ROOMY)
            .unwrap_err()
            .contains("max_wal_senders"));
    }
}

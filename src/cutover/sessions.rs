//! The sessions the fence does not stop: a session of the old source's
//! database opened before the fence keeps its read-write default and can
//! still call `nextval()` (no table lock or trigger stands in its way), so
//! a sequence read under the fence could be passed by it afterwards; and,
//! once the fence's locks hand over to its triggers, write large objects
//! (no trigger can fence `pg_largeobject`).
//!
//! The rule: the target is declared ready only when no such session is
//! left, checked after the fence stands and before the sequences are read.
//! With `--terminate`, every other session of the database that could move
//! a sequence is ended and waited for; without it, the cutover refuses,
//! naming each one (pid, user, application). pgrepl's own sessions
//! (application `pgrepl`) do not count, nor do sessions opened after the
//! database turned read-only by default (a pool reconnecting): they can
//! write only by turning that default off on purpose (see the README).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::CutoverError;

/// A session that could still write past the fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub pid: i32,
    pub user: String,
    pub application: String,
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let app = match self.application.as_str() {
            "" => "no application name",
            a => a,
        };
        write!(f, "pid {} (user {}, {app})", self.pid, self.user)
    }
}

/// Other client sessions of this database; with `before` (a server
/// timestamp), only those opened before it.
pub async fn open(admin: &Client, before: Option<&str>) -> Result<Vec<Session>, CutoverError> {
    let rows = admin
        .query(
            "SELECT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, '')
             FROM pg_catalog.pg_stat_activity a
             -- A role without pg_read_all_stats sees neither the type nor
             -- the start of other roles' sessions: a session with a user
             -- counts as a client opened before the fence.
             WHERE a.datname = pg_catalog.current_database()
               AND (a.backend_type = 'client backend' OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL))
               AND a.pid <> pg_catalog.pg_backend_pid() AND a.application_name <> 'pgrepl'
               AND ($1::text IS NULL OR a.backend_start IS NULL OR a.backend_start < $1::text::timestamptz)
             ORDER BY a.pid",
            &[&before],
        )
        .await
        .map_err(|e| CutoverError::source("listing the database's sessions", &e))?;
    Ok(rows
        .iter()
        .map(|r| Session {
            pid: r.get(0),
            user: r.get(1),
            application: r.get(2),
        })
        .collect())
}

/// The first few of `sessions`, for one line.
fn named(sessions: &[Session]) -> String {
    let mut parts: Vec<String> = sessions.iter().take(5).map(Session::to_string).collect();
    if sessions.len() > 5 {
        parts.push(format!("and {} more", sessions.len() - 5));
    }
    parts.join(", ")
}

/// Waits up to `wait` for the other sessions to end (opened before
/// `before`, when given); `Err` naming those left.
pub async fn wait_gone(
    admin: &Client,
    before: Option<&str>,
    wait: Duration,
) -> Result<(), CutoverError> {
    let started = Instant::now();
    let mut said = Instant::now() - Duration::from_secs(60);
    loop {
        let left = open(admin, before).await?;
        if left.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(CutoverError::Sessions {
                count: left.len(),
                named: named(&left),
            });
        }
        if said.elapsed() >= Duration::from_secs(5) {
            tracing::info!(sessions = %named(&left), "waiting for the sessions that could still move a sequence or write a large object to end (or pass --terminate)");
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ends every other session opened before `before` and waits until they
/// are gone (at most `wait`). Those opened since are read-only by
/// default: a pool reconnecting is let be.
pub async fn terminate(
    admin: &Client,
    before: &str,
    wait: Duration,
) -> Result<usize, CutoverError> {
    let started = Instant::now();
    let mut ended = std::collections::HashSet::new();
    loop {
        let left = open(admin, Some(before)).await?;
        if left.is_empty() {
            return Ok(ended.len());
        }
        if started.elapsed() >= wait {
            return Err(CutoverError::Sessions {
                count: left.len(),
                named: named(&left),
            });
        }
        for s in &left {
            tracing::warn!(pid = s.pid, user = %s.user, application = %s.application, "terminating a session that could still move a sequence or write a large object (--terminate)");
            let done: bool = admin
                .query_one("SELECT pg_catalog.pg_terminate_backend($1)", &[&s.pid])
                .await
                .map_err(|e| CutoverError::source("ending a session (--terminate)", &e))?
                .get(0);
            if done {
                ended.insert(s.pid);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

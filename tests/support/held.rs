//! What the tests of a sync or a cutover stopped under a hold share: a
//! one-table schema with a sequence, the sync's control requests as their
//! rows show them, and waits on what the sync has sent and applied.

use std::time::Duration;

use super::{db_error, wait_for, Cluster, Pair};

pub const LIMIT: Duration = Duration::from_secs(240);

pub const SCHEMA: &str = "
    CREATE TABLE a (id serial PRIMARY KEY, v text);
    CREATE SEQUENCE free_seq START 500;
    INSERT INTO a (v) SELECT 'a' FROM generate_series(1, 100);
    SELECT nextval('free_seq') FROM generate_series(1, 7);
";

/// An INSERT from a new session on the source: `Err` with the server's
/// message when refused.
pub async fn insert(source: &Cluster, v: &str) -> Result<(), String> {
    source
        .client()
        .await
        .batch_execute(&format!("INSERT INTO a (v) VALUES ('{v}')"))
        .await
        .map_err(|e| db_error(&e))
}

/// Waits for the row with `v` to reach the target: the sync streams.
pub async fn applied_on_target(pair: &Pair, v: &str) {
    let q = format!("SELECT count(*) FROM a WHERE v = '{v}'");
    wait_for("the sync applying it", LIMIT, || {
        let (t, q) = (&pair.target, &q);
        async move { (t.value(q).await == Some("1".into())).then_some(()) }
    })
    .await;
}

/// Waits until the sync applies what the source writes: its session owns
/// the slot and its control channel is open (a cutover started earlier
/// would find no sync running and start its own).
pub async fn streams(pair: &Pair) {
    insert(&pair.source, "streaming")
        .await
        .expect("the source takes writes");
    applied_on_target(pair, "streaming").await;
}

/// The states of the sync's control requests, in order.
pub const STATES: &str = "SELECT string_agg(state->>'state', ',' ORDER BY id) FROM pgrepl.control";

/// Waits until the sync's requests read `states` (see [`STATES`]).
pub async fn states_are(pair: &Pair, states: &str) {
    wait_for("the control requests' states", LIMIT, || async {
        (pair.target.value(STATES).await.as_deref() == Some(states)).then_some(())
    })
    .await;
}

/// Asks the running sync to hold, as a verify does, with no requester
/// behind it, and waits until it holds.
pub async fn hold(pair: &Pair) {
    pair.target
        .exec("INSERT INTO pgrepl.control (sync_name, request) VALUES ('pgrepl', '{\"kind\": \"hold\"}'); NOTIFY pgrepl_control;")
        .await;
    states_are(pair, "held").await;
}

/// The source's current WAL position.
pub async fn source_lsn(pair: &Pair) -> String {
    pair.source
        .value("SELECT pg_current_wal_lsn()::text")
        .await
        .expect("an LSN")
}

/// Makes the schema, starts a sync (with `env`) and waits until it
/// applies what the source writes.
pub async fn streaming_sync(pair: &Pair, env: &[(&str, &str)]) -> super::pgrepl::Running {
    pair.source.exec(SCHEMA).await;
    let sync = sync_with(pair, env);
    super::wait_for_phase(&pair.target, "streaming", LIMIT).await;
    streams(pair).await;
    sync
}

/// Starts `pgrepl sync` on the pair with `env` set.
pub fn sync_with(pair: &Pair, env: &[(&str, &str)]) -> super::pgrepl::Running {
    let args = pair.command("sync", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    super::pgrepl::spawn_with_env(&args, env)
}

/// Stops a sync as its supervisor does, and waits for it to end well.
pub async fn stop(sync: super::pgrepl::Running) {
    sync.signal(libc::SIGTERM);
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
}

/// How many rows with `v` the target holds.
pub async fn rows_with(pair: &Pair, v: &str) -> Option<String> {
    pair.target
        .value(&format!("SELECT count(*) FROM a WHERE v = '{v}'"))
        .await
}

/// Waits until the sync's walsender has sent everything the source wrote
/// so far (so what follows may check what the sync did with it).
pub async fn sent_all(pair: &Pair) {
    let now = source_lsn(pair).await;
    let q = format!(
        "SELECT coalesce(bool_or(r.sent_lsn >= '{now}'::pg_lsn), false)
           FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
          WHERE s.slot_name = 'pgrepl_pgrepl'"
    );
    wait_for("the walsender sending it", LIMIT, || {
        let q = &q;
        async move { (pair.source.value(q).await == Some("t".into())).then_some(()) }
    })
    .await;
}

/// Waits until a sync started again says it holds for the request its
/// killed process held for.
pub async fn serving_the_held_request(sync: &super::pgrepl::Running) {
    wait_for("the new process holding for the request", LIMIT, || {
        let log = sync.stderr.clone();
        async move {
            let log = log.lock().expect("output lock");
            log.contains("serving on the request the last session held for")
                .then_some(())
        }
    })
    .await;
}

/// How a test stops a sync.
#[derive(Clone, Copy)]
pub enum Stop {
    /// SIGKILL: nothing recorded on the way out.
    Kill,
    /// SIGTERM: what was applied committed, where it was recorded.
    Term,
}

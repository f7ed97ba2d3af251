//! A sync without DDL capture (`--no-ddl`): a changed table is a clear
//! error at its first row, a change made on both sides after the catalog
//! was read ahead is found or kept; and log rows of an older capture.
//! Part of the `ddl` test binary.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ddl_a_new_column_is_a_clear_error_at_its_first_row() {
    let pair = Pair::start();
    pair.source.exec(BASE).await;
    assert!(sync(&pair, &["--copy-only", "--no-ddl"]).await.success());
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgrepl%'")
            .await,
        Some("0".into())
    );
    pair.source
        .exec("ALTER TABLE app.items ADD COLUMN extra int")
        .await;
    pair.source
        .exec("INSERT INTO app.items VALUES (500, 'x', 1, 7)")
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let err = out.error_line();
    assert!(
        err.contains("app.items has column(s) extra that the target table lacks"),
        "{err}"
    );
    assert!(err.contains("DDL replication is off"), "{err}");
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM app.items WHERE id = 500")
            .await,
        Some("0".into())
    );
}

/// Waits until `sql` returns a row on `client`.
async fn until_row(client: &tokio_postgres::Client, what: &str, sql: &str) -> tokio_postgres::Row {
    support::wait_for(what, LIMIT, || async move {
        client.query_opt(sql, &[]).await.ok().flatten()
    })
    .await
}

/// BASE and `table` (DDL replication off) copied, then a sync streaming
/// whose first change (of app.items) has read the catalog of the sync's
/// other tables ahead (see `apply::catalog`).
async fn streaming_with_catalog_read_ahead(
    pair: &Pair,
    table: &str,
) -> (pgrepl::Running, tokio_postgres::Client) {
    pair.source.exec(BASE).await;
    pair.source.exec(table).await;
    assert!(sync(pair, &["--copy-only", "--no-ddl"]).await.success());
    let running = pair.spawn("sync", &[]);
    let target = pair.target.client().await;
    pair.source
        .exec("INSERT INTO app.items VALUES (600, 'x', 1)")
        .await;
    until_row(
        &target,
        "the first change applied",
        "SELECT 1 FROM app.items WHERE id = 600",
    )
    .await;
    (running, target)
}

/// A column added by hand on the target (DDL replication off) after the
/// catalog was read ahead, then on the source, must not be taken for
/// missing at the table's first row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ddl_a_column_added_on_both_sides_after_the_catalog_was_read_ahead_is_found() {
    let pair = Pair::start();
    let (mut running, target) = streaming_with_catalog_read_ahead(
        &pair,
        "CREATE TABLE app.more (id int PRIMARY KEY, v int)",
    )
    .await;
    pair.target
        .exec("ALTER TABLE app.more ADD COLUMN extra int")
        .await;
    pair.source
        .exec("ALTER TABLE app.more ADD COLUMN extra int; INSERT INTO app.more VALUES (1, 1, 7)")
        .await;
    let row = until_row(
        &target,
        "app.more's row with its new column",
        "SELECT extra FROM app.more WHERE id = 1",
    )
    .await;
    assert_eq!(row.get::<_, Option<i32>>(0), Some(7));
    running.assert_running();
    running.signal(libc::SIGINT);
    assert_eq!(running.wait(LIMIT).await.code, Some(0));
    equal(&pair).await;
}

/// As above, with a column's type widened by hand on both sides: rows
/// written set-based (an UPDATE of many rows casts its values to the
/// target column's type) must not be cast to the type read ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ddl_a_type_widened_on_both_sides_after_the_catalog_was_read_ahead_is_kept() {
    let pair = Pair::start();
    let (mut running, target) = streaming_with_catalog_read_ahead(
        &pair,
        "CREATE TABLE app.prices (id int PRIMARY KEY, v numeric(10,2));
         INSERT INTO app.prices SELECT g, g FROM generate_series(1, 40) g",
    )
    .await;
    pair.target
        .exec("ALTER TABLE app.prices ALTER COLUMN v TYPE numeric(12,4)")
        .await;
    pair.source
        .exec(
            "ALTER TABLE app.prices ALTER COLUMN v TYPE numeric(12,4);
             UPDATE app.prices SET v = v + 0.1234;
             INSERT INTO app.items VALUES (601, 'y', 1)",
        )
        .await;
    until_row(
        &target,
        "the updates applied",
        "SELECT 1 FROM app.items WHERE id = 601",
    )
    .await;
    running.assert_running();
    running.signal(libc::SIGINT);
    assert_eq!(running.wait(LIMIT).await.code, Some(0));
    assert_eq!(
        pair.target
            .value("SELECT v::text FROM app.prices WHERE id = 7")
            .await,
        Some("7.1234".into())
    );
    equal(&pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_the_capture_leaves_the_role_of_older_log_rows_unknown() {
    let pair = Pair::start();
    // The log as the first release made it, with a row it recorded.
    pair.source
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE SCHEMA pgrepl;
             CREATE TABLE pgrepl.schema_log (
                 id bigserial PRIMARY KEY,
                 logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                 xid bigint NOT NULL DEFAULT txid_current(),
                 command_tag text NOT NULL,
                 event text NOT NULL,
                 objects jsonb NOT NULL DEFAULT '[]',
                 ddl text NOT NULL,
                 search_path text NOT NULL,
                 username text NOT NULL DEFAULT session_user,
                 creation_schema text
             );
             INSERT INTO pgrepl.schema_log (command_tag, event, ddl, search_path)
             VALUES ('CREATE TABLE', 'ddl_command_end', 'CREATE TABLE t (id int PRIMARY KEY)', 'public');",
        )
        .await;
    let out = sync(&pair, &["--copy-only"]).await;
    assert!(out.success(), "{out}");
    let s = pair.source.client().await;
    let row = s
        .query_one(
            "SELECT (SELECT role FROM pgrepl.schema_log WHERE id = 1),
                    (SELECT column_default IS NOT NULL FROM information_schema.columns
                     WHERE table_schema = 'pgrepl' AND table_name = 'schema_log' AND column_name = 'role')",
            &[],
        )
        .await
        .expect("the log");
    let (role, default): (Option<String>, bool) = (row.get(0), row.get(1));
    assert_eq!(role, None, "a row logged before the column is not stamped");
    assert!(default, "rows logged from now on record their role");
}

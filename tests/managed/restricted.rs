//! Services that take away more than a privilege: no event triggers and
//! no pg_authid on the source, no replication-origin functions on the
//! target. Part of the `managed` test binary.

use super::*;

/// A source where nobody may create event triggers (Azure, Neon before
/// 2025) and pg_authid is unreadable: check says DDL capture is
/// impossible; with `--no-ddl` the sync runs, installs no capture, creates
/// the roles without their passwords (naming each with the statement that
/// sets it), and a DDL on the source stops it rather than applying past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_event_triggers_or_pg_authid_the_sync_runs_with_no_ddl_stops_at_a_ddl_and_cuts_over(
) {
    let Some(pair) = rds_like_pair().await else {
        return;
    };
    let source = connect(&pair.source, "postgres").await;
    source.batch_execute(REPORTING).await.unwrap();
    // Nor may the admin read every table (pg_authid among them): it reads
    // the application's as a member of their owner.
    source
        .batch_execute("REVOKE pg_read_all_data FROM admin")
        .await
        .unwrap();
    let (src, tgt) = (admin(&pair.source), admin(&pair.target));
    let ends = ["--source", src.as_str(), "--target", tgt.as_str()];
    let check = pgrepl::run(&[&["check"], &ends[..]].concat(), LIMIT).await;
    assert!(
        !check.success() && check.stdout.contains("ddl_capture"),
        "{check}"
    );
    // Everything with --no-ddl would be a table list that never grows:
    // refused. Named tables go.
    let out = pgrepl::run(&[&["check"], &ends[..], &["--no-ddl"]].concat(), LIMIT).await;
    assert!(
        !out.success() && out.stdout.contains("never be replicated"),
        "{out}"
    );
    let no_ddl = ["--no-ddl", "--roles", "copy", "--include", "shop.*"];
    let check = pgrepl::run(&[&["check"], &ends[..], &no_ddl[..]].concat(), LIMIT).await;
    assert!(check.success(), "{check}");
    assert!(
        check.stdout.contains("cutover_ddl_fence"),
        "check says what the cutover's fence will lack: {check}"
    );
    assert!(
        check.stdout.contains("ALTER ROLE \"reporting\" PASSWORD"),
        "check names the password it cannot copy, with the statement: {check}"
    );
    let sync = pgrepl::spawn(&[&["sync"], &ends[..], &no_ddl[..]].concat());
    wait_for("streaming", LIMIT, || async {
        (phase(&pair.target).await.as_deref() == Some("streaming")).then_some(())
    })
    .await;
    let capture = pair
        .source
        .value("SELECT count(*) FROM pg_event_trigger")
        .await;
    assert_eq!(capture.as_deref(), Some("0"), "an event trigger was made");
    let app = connect(&pair.source, "app").await;
    app.batch_execute("INSERT INTO shop.customers (name) VALUES ('before')")
        .await
        .unwrap();
    let target = pair.target.client_db("shop").await;
    let count = |name: &'static str| {
        let target = &target;
        async move {
            target
                .query_one(
                    "SELECT count(*) FROM shop.customers WHERE name = $1",
                    &[&name],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    wait_for("the row before the DDL", LIMIT, || async {
        (count("before").await == 1).then_some(())
    })
    .await;
    app.batch_execute(
        "ALTER TABLE shop.customers ADD COLUMN tier int; INSERT INTO shop.customers (name, tier) VALUES ('after', 3)",
    )
    .await
    .unwrap();
    let out = sync.wait(LIMIT).await;
    assert!(
        !out.success(),
        "the sync went on past a DDL it could not follow: {out}"
    );
    assert!(
        out.stderr.contains("tier"),
        "the error names the column: {out}"
    );
    assert_eq!(count("after").await, 0, "a row past the DDL was applied");
    assert!(
        out.stdout.contains("passwords NOT copied")
            && out.stdout.contains("ALTER ROLE \"reporting\" PASSWORD"),
        "the sync says which password it left behind: {out}"
    );
    let no_password = "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'reporting'";
    assert_eq!(pair.target.value(no_password).await.as_deref(), Some("t"));
    // What the error says: the column added on the target by hand (as the
    // admin, a member of the owner), the sync started again, and on to a
    // cutover, whose fence holds DDL without an event trigger.
    assert!(out.stderr.contains("add them on the target"), "{out}");
    connect(&pair.target, "admin")
        .await
        .batch_execute("SET ROLE app; ALTER TABLE shop.customers ADD COLUMN tier int")
        .await
        .unwrap();
    let sync = pgrepl::spawn(&[&["sync"], &ends[..], &no_ddl[..]].concat());
    wait_for("the row after the DDL", LIMIT, || async {
        (count("after").await == 1).then_some(())
    })
    .await;
    let verify = pgrepl::run(&[&["verify"], &ends[..]].concat(), LIMIT).await;
    assert!(verify.success(), "{verify}");
    // The superuser's own session is beyond the admin's --terminate.
    drop(source);
    wait_for("the superuser's session to end", LIMIT, || async {
        let left = pair
            .source
            .value("SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND usename = 'postgres'")
            .await;
        (left.as_deref() == Some("0")).then_some(())
    })
    .await;
    let cutover = pgrepl::run(&[&["cutover"], &ends[..], &["--terminate"]].concat(), LIMIT).await;
    assert!(cutover.success(), "{cutover}");
    assert!(
        cutover.stderr.contains("may not create event triggers"),
        "the cutover says its fence holds DDL with less: {cutover}"
    );
    let _ = sync.wait(LIMIT).await;
    assert_same_data(&pair.source.client_db("shop").await, &target).await;
    // New sessions of the old source are read-only: no DDL there either.
    let ddl = connect(&pair.source, "app")
        .await
        .batch_execute("CREATE TABLE shop.after (id int)")
        .await
        .expect_err("DDL after the cutover went through");
    assert!(
        support::db_error(&ddl).contains("read-only"),
        "{}",
        support::db_error(&ddl)
    );
}

/// A target where the admin may not call the replication-origin functions
/// (Neon; before PostgreSQL 14 only a superuser may): the position goes
/// to the progress table, written by the same transaction as the rows. The
/// sync is killed (-9) while the application writes and started again:
/// nothing lost or applied twice; then verify and cutover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_origin_functions_the_progress_table_keeps_it_exactly_once() {
    let Some(pair) = rds_like_pair().await else {
        return;
    };
    let revoke = format!(
        "REVOKE EXECUTE ON FUNCTION {} FROM admin",
        ORIGIN_FUNCTIONS.join(", ")
    );
    pair.target
        .client_db("shop")
        .await
        .batch_execute(&revoke)
        .await
        .unwrap();
    let made = pgrepl::run(
        &[
            "install-capture",
            "--source",
            &pair.source.conninfo_db("shop"),
            "--for",
            "admin",
        ],
        LIMIT,
    )
    .await;
    assert!(made.success(), "{made}");
    let (src, tgt) = (admin(&pair.source), admin(&pair.target));
    let ends = ["--source", src.as_str(), "--target", tgt.as_str()];
    let check = pgrepl::run(&[&["check"], &ends[..]].concat(), LIMIT).await;
    assert!(check.success(), "{check}");
    assert!(check.stdout.contains("pgrepl.applied"), "{check}");

    // The application writes in small transactions all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let app = connect(&pair.source, "app").await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                app.batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO shop.orders (customer, total) VALUES ({c}, {n});
                     UPDATE shop.customers SET name = name || '.' WHERE id = {c};
                     DELETE FROM shop.orders WHERE id = (SELECT min(id) FROM shop.orders WHERE customer = {c});
                     COMMIT;",
                    c = 1 + n % 500
                ))
                .await
                .unwrap();
            }
            n
        })
    };
    let sync = pgrepl::spawn(&[&["sync"], &ends[..]].concat());
    wait_for("streaming", LIMIT, || async {
        (phase(&pair.target).await.as_deref() == Some("streaming")).then_some(())
    })
    .await;
    let target = pair.target.client_db("shop").await;
    let applied = "SELECT end_lsn::text FROM pgrepl.applied";
    let first = target
        .query_one(applied, &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    wait_for(
        "the position to move in the progress table",
        LIMIT,
        || async {
            let now: String = target.query_one(applied, &[]).await.ok()?.get(0);
            (now != first).then_some(())
        },
    )
    .await;
    let said = sync.output_so_far();
    sync.kill().await;
    assert!(
        said.contains("keeps its position in table pgrepl.applied"),
        "the sync says which ledger it uses: {said}"
    );
    let origins = pair
        .target
        .value("SELECT count(*) FROM pg_replication_origin")
        .await;
    assert_eq!(origins.as_deref(), Some("0"), "an origin was made");
    // Started again while the writes go on, then DDL.
    let sync = pgrepl::spawn(&[&["sync"], &ends[..]].concat());
    let app = connect(&pair.source, "app").await;
    app.batch_execute(
        "ALTER TABLE shop.customers ADD COLUMN tier int DEFAULT 1;
         UPDATE shop.customers SET tier = 2 WHERE id < 10;",
    )
    .await
    .unwrap();
    wait_for("the column to arrive", LIMIT, || async {
        target
            .query_one("SELECT count(*) FROM shop.customers WHERE tier = 2", &[])
            .await
            .ok()
            .filter(|r| r.get::<_, i64>(0) == 9)
            .map(|_| ())
    })
    .await;
    let status = pgrepl::run(&[&["status"], &ends[..]].concat(), LIMIT).await;
    assert!(
        status.success()
            && status
                .stdout
                .contains("kept in the progress table pgrepl.applied"),
        "{status}"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert!(written > 0);
    verify_and_cut_over(&pair, &ends, sync).await;
    let down = pgrepl::run(&[&["teardown"], &ends[..]].concat(), LIMIT).await;
    assert!(down.success(), "{down}");
}

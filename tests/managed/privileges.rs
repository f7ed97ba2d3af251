//! A profile that lacks one privilege at a time: each is named with the
//! statement that grants it, and the sync changes nothing. Part of the
//! `managed` test binary.

use super::*;

/// Nothing of pgrepl's on either side: no slot, no publication, no state.
async fn nothing_created(pair: &Pair) {
    let slots = pair
        .source
        .value("SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)")
        .await;
    assert_eq!(
        slots.as_deref(),
        Some("0"),
        "a slot or publication was made"
    );
    let state = connect(&pair.target, "postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname IN ('pgrepl', 'shop')",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(state, 0, "the target was changed");
}

/// Each privilege the RDS-like admin has, taken away on its own: `check`
/// names it with the statement that grants it, and `sync` refuses with
/// nothing created on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_privilege_is_named_with_its_grant_and_sync_changes_nothing() {
    let Some(pair) = rds_like_pair().await else {
        return;
    };
    let (src, tgt) = (admin(&pair.source), admin(&pair.target));
    let ends = ["--source", src.as_str(), "--target", tgt.as_str()];
    let refused = |check: &'static str, fix: &'static str| {
        let pair = &pair;
        async move {
            let out = pgrepl::run(&[&["check"], &ends[..]].concat(), LIMIT).await;
            assert!(!out.success(), "check passed without it ({check}): {out}");
            let line = out
                .stdout
                .lines()
                .position(|l| l.starts_with("ERROR") && l.contains(check))
                .unwrap_or_else(|| panic!("check does not name {check}: {out}"));
            let fix_line = out.stdout.lines().nth(line + 1).unwrap_or_default();
            assert!(
                fix_line.contains(fix),
                "the fix for {check} is not {fix:?}: {out}"
            );
            let sync = pgrepl::run(&[&["sync"], &ends[..]].concat(), LIMIT).await;
            assert!(!sync.success(), "sync ran without it ({check}): {sync}");
            nothing_created(pair).await;
        }
    };
    // The capture not made ahead (a role that may not create event triggers).
    refused(
        "ddl_capture",
        "pgrepl install-capture --source CONNINFO --for \"admin\"",
    )
    .await;
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

    let source = connect(&pair.source, "postgres").await;
    let target = connect(&pair.target, "postgres").await;
    let cases: [(&Client, &str, &str, &'static str, &'static str); 6] = [
        (
            &source,
            "ALTER ROLE admin NOREPLICATION",
            "ALTER ROLE admin REPLICATION",
            "replication_role",
            "ALTER ROLE \"admin\" REPLICATION;",
        ),
        (
            &source,
            "REVOKE app FROM admin",
            "GRANT app TO admin WITH ADMIN OPTION",
            "publication",
            "GRANT \"app\" TO \"admin\";",
        ),
        // (pg_write_all_data writes pgrepl.config whatever its grants.)
        (
            &source,
            "REVOKE EXECUTE ON FUNCTION pgrepl.publish_schema_log(text) FROM admin",
            "GRANT EXECUTE ON FUNCTION pgrepl.publish_schema_log(text) TO admin",
            "ddl_capture",
            "GRANT EXECUTE ON FUNCTION pgrepl.publish_schema_log(text) TO \"admin\";",
        ),
        (
            &source,
            "ALTER DATABASE shop OWNER TO postgres",
            "ALTER DATABASE shop OWNER TO admin",
            "publication",
            "GRANT CREATE ON DATABASE \"shop\" TO \"admin\";",
        ),
        (
            &target,
            "REVOKE SET ON PARAMETER session_replication_role FROM admin",
            "GRANT SET ON PARAMETER session_replication_role TO admin",
            "replica_role",
            "GRANT SET ON PARAMETER session_replication_role TO \"admin\";",
        ),
        (
            &target,
            "ALTER DATABASE shop OWNER TO postgres",
            "ALTER DATABASE shop OWNER TO admin",
            "create_schema",
            "GRANT CREATE ON DATABASE \"shop\" TO \"admin\";",
        ),
    ];
    for (side, take, give, check, fix) in cases {
        side.batch_execute(take).await.unwrap();
        refused(check, fix).await;
        side.batch_execute(give).await.unwrap();
    }
    // What only the cutover needs: named as warnings (the sync may run),
    // each with its statement.
    let warned: [(&Client, &str, &str, &'static str, &'static str); 4] = [
        (
            &source,
            "REVOKE pg_signal_backend FROM admin",
            "GRANT pg_signal_backend TO admin",
            "cutover_sessions",
            "GRANT pg_signal_backend TO \"admin\";",
        ),
        (
            &source,
            "REVOKE pg_monitor FROM admin",
            "GRANT pg_monitor TO admin",
            "cutover_sessions",
            "GRANT pg_read_all_stats TO \"admin\";",
        ),
        (
            &source,
            "ALTER DATABASE shop OWNER TO postgres; GRANT CREATE ON DATABASE shop TO admin",
            "ALTER DATABASE shop OWNER TO admin",
            "cutover_fence",
            "ALTER DATABASE \"shop\" OWNER TO \"admin\";",
        ),
        (
            &source,
            "REVOKE TRIGGER ON shop.orders FROM app",
            "GRANT TRIGGER ON shop.orders TO app",
            "cutover_tables",
            "GRANT UPDATE, TRIGGER ON TABLE \"shop\".\"orders\" TO \"admin\";",
        ),
    ];
    let source_shop = connect(&pair.source, "postgres").await;
    for (side, take, give, check, fix) in warned {
        // Table privileges live in the application's database.
        let side = if take.contains("shop.") {
            &source_shop
        } else {
            side
        };
        side.batch_execute(take).await.unwrap();
        let out = pgrepl::run(&[&["check"], &ends[..]].concat(), LIMIT).await;
        assert!(out.success(), "check refused for {check}: {out}");
        let line = out
            .stdout
            .lines()
            .position(|l| l.starts_with("WARN") && l.contains(check))
            .unwrap_or_else(|| panic!("check does not name {check}: {out}"));
        let fix_at = out
            .stdout
            .lines()
            .skip(line + 1)
            .take(3)
            .any(|l| l.contains(fix));
        assert!(fix_at, "the fix for {check} is not {fix:?}: {out}");
        side.batch_execute(give).await.unwrap();
    }
    // Without an origin function the sync still runs, exactly once, with
    // its position in the progress table: check says so and names the
    // GRANT that would give it the origin back.
    let revoke = "REVOKE EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) FROM admin";
    pair.target
        .client_db("shop")
        .await
        .batch_execute(revoke)
        .await
        .unwrap();
    let out = pgrepl::run(&[&["check"], &ends[..]].concat(), LIMIT).await;
    assert!(out.success(), "{out}");
    let line = out
        .stdout
        .lines()
        .position(|l| l.starts_with("WARN") && l.contains("ledger"))
        .unwrap_or_else(|| panic!("check does not say where the position goes: {out}"));
    assert!(
        out.stdout
            .lines()
            .nth(line)
            .unwrap()
            .contains("pgrepl.applied"),
        "{out}"
    );
    assert!(
        out.stdout.lines().nth(line + 1).unwrap().contains(
            "GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO \"admin\";"
        ),
        "{out}"
    );
    pair.target
        .client_db("shop")
        .await
        .batch_execute(&revoke.replace("REVOKE", "GRANT").replace("FROM", "TO"))
        .await
        .unwrap();
    // Without the replica role, the tables whose triggers and foreign
    // keys would fire are named.
    target
        .batch_execute("REVOKE SET ON PARAMETER session_replication_role FROM admin")
        .await
        .unwrap();
    let out = pgrepl::run(&[&["check"], &ends[..]].concat(), LIMIT).await;
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("replica_role_tables"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("shop.customers") && line.contains("shop.orders"),
        "{out}"
    );
    target
        .batch_execute("GRANT SET ON PARAMETER session_replication_role TO admin")
        .await
        .unwrap();
    // All given back: the check passes.
    let out = pgrepl::run(&[&["check"], &ends[..]].concat(), LIMIT).await;
    assert!(out.success(), "{out}");
}

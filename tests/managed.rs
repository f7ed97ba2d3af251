//! Managed services: pgrepl run by an admin role that is not a superuser,
//! made on a vanilla server with exactly the privileges a cloud gives its
//! admin (RDS-like), and profiles that lack one thing each.

mod support;

use std::time::Duration;

use tokio_postgres::Client;

use support::{assert_same_data, pgrepl, wait_for, Cluster, Pair};

const LIMIT: Duration = Duration::from_secs(240);

/// The application's schema, owned by `app`, in database `shop`.
const SCHEMA: &str = "
    CREATE SCHEMA shop AUTHORIZATION app;
    SET ROLE app;
    CREATE TABLE shop.customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
    CREATE TABLE shop.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        customer int NOT NULL REFERENCES shop.customers, total numeric(12,2), placed timestamptz DEFAULT now(),
        note jsonb);
    CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.note := coalesce(NEW.note, '{}'::jsonb) || '{\"t\": 1}'; RETURN NEW; END $$;
    CREATE TRIGGER orders_touch BEFORE INSERT ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.touch();
    INSERT INTO shop.customers (name, email) SELECT 'c' || g, 'c' || g || '@x' FROM generate_series(1, 500) g;
    INSERT INTO shop.orders (customer, total) SELECT 1 + g % 500, g * 1.5 FROM generate_series(1, 3000) g;
    RESET ROLE;
";

/// A login role of the application's with a password, on the source only:
/// the admin may not read pg_authid, so the password cannot come along.
const REPORTING: &str = "
    CREATE ROLE reporting LOGIN PASSWORD 'secret-r';
    GRANT USAGE ON SCHEMA shop TO reporting;
    GRANT SELECT ON shop.orders TO reporting;
";

/// Makes `admin` as an RDS-like service makes its admin role: no
/// superuser; CREATEDB CREATEROLE REPLICATION; pg_monitor,
/// pg_signal_backend, pg_read_all_data, pg_write_all_data; the application's
/// owner role `app` with ADMIN; on a target also SET on
/// session_replication_role and EXECUTE on the origin functions. The
/// database `shop` is the admin's.
async fn rds_like(c: &Cluster, target: bool) {
    c.exec(
        "CREATE ROLE app LOGIN;
         CREATE ROLE admin LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION;
         GRANT pg_monitor, pg_signal_backend, pg_read_all_data, pg_write_all_data TO admin;
         GRANT app TO admin WITH ADMIN OPTION;",
    )
    .await;
    c.exec("CREATE DATABASE shop OWNER admin").await;
    if target {
        c.exec("GRANT SET ON PARAMETER session_replication_role TO admin")
            .await;
        // Function privileges live in each database.
        let grants = format!(
            "GRANT EXECUTE ON FUNCTION {} TO admin",
            ORIGIN_FUNCTIONS.join(", ")
        );
        c.client_db("shop")
            .await
            .batch_execute(&grants)
            .await
            .unwrap();
    }
}

/// What apply and cutover call on the target.
const ORIGIN_FUNCTIONS: &[&str] = &[
    "pg_replication_origin_create(text)",
    "pg_replication_origin_drop(text)",
    "pg_replication_origin_session_setup(text)",
    "pg_replication_origin_session_reset()",
    "pg_replication_origin_xact_setup(pg_lsn, timestamptz)",
    "pg_replication_origin_advance(text, pg_lsn)",
    "pg_replication_origin_progress(text, boolean)",
];

fn admin(c: &Cluster) -> String {
    format!(
        "host={} port={} user=admin dbname=shop",
        c.socket_dir().display(),
        c.port
    )
}

async fn connect(c: &Cluster, user: &str) -> tokio_postgres::Client {
    let conninfo = format!(
        "host={} port={} user={user} dbname=shop",
        c.socket_dir().display(),
        c.port
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Two servers made RDS-like, the application's schema on the source;
/// `None` (said on stderr) below 15, which cannot grant SET ON PARAMETER.
async fn rds_like_pair() -> Option<Pair> {
    let pair = Pair::start();
    if pair.source.major() < 15 || pair.target.major() < 15 {
        eprintln!("skipped: the RDS-like profile needs 15+ (GRANT SET ON PARAMETER)");
        return None;
    }
    rds_like(&pair.source, false).await;
    rds_like(&pair.target, true).await;
    connect(&pair.source, "postgres")
        .await
        .batch_execute(SCHEMA)
        .await
        .unwrap();
    Some(pair)
}

/// The end of every profile's run: verify while the sync streams, cut
/// over (`--terminate`), the sync ends; the target equals the source and
/// its sequence is past the source's. Returns a session on the target.
async fn verify_and_cut_over(pair: &Pair, ends: &[&str], sync: pgrepl::Running) -> Client {
    let verify = pgrepl::run(&[&["verify"], ends].concat(), LIMIT).await;
    assert!(verify.success(), "{verify}");
    let cutover = pgrepl::run(&[&["cutover"], ends, &["--terminate"]].concat(), LIMIT).await;
    assert!(cutover.success(), "{cutover}");
    let _ = sync.wait(LIMIT).await;
    let target = pair.target.client_db("shop").await;
    assert_same_data(&pair.source.client_db("shop").await, &target).await;
    let seq = |c: Client, sql: &'static str| async move {
        c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
    };
    let last = seq(
        pair.source.client_db("shop").await,
        "SELECT last_value FROM shop.customers_id_seq",
    )
    .await;
    let next = seq(
        pair.target.client_db("shop").await,
        "SELECT nextval('shop.customers_id_seq')",
    )
    .await;
    assert!(next > last, "sequence set past the source's {last}: {next}");
    target
}

async fn phase(c: &Cluster) -> Option<String> {
    let client = c.client_db("shop").await;
    client
        .query_one("SELECT phase FROM pgrepl.sync", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_like_admin_on_both_ends_syncs_verifies_and_cuts_over() {
    let Some(pair) = rds_like_pair().await else {
        return;
    };
    connect(&pair.source, "postgres")
        .await
        .batch_execute(REPORTING)
        .await
        .unwrap();
    let (src, tgt) = (admin(&pair.source), admin(&pair.target));
    let ends = ["--source", src.as_str(), "--target", tgt.as_str()];
    // Without the capture made ahead, check names it and sync refuses.
    let check = pgrepl::run(&[&["check"], &ends[..]].concat(), LIMIT).await;
    assert!(!check.success(), "{check}");
    assert!(check.stdout.contains("pgrepl install-capture"), "{check}");
    // The service's superuser makes it, as its console would.
    let superuser = pair.source.conninfo_db("shop");
    let made = pgrepl::run(
        &["install-capture", "--source", &superuser, "--for", "admin"],
        LIMIT,
    )
    .await;
    assert!(made.success(), "{made}");
    // The admin owns nothing the installer's SECURITY DEFINER code runs.
    let owner =
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'pgrepl.schema_log'::regclass";
    assert_eq!(
        pair.source
            .client_db("shop")
            .await
            .query_one(owner, &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "postgres"
    );
    let check = pgrepl::run(
        &[&["check"], &ends[..], &["--roles", "copy"]].concat(),
        LIMIT,
    )
    .await;
    assert!(check.success(), "{check}");
    let sync = pgrepl::spawn(&[&["sync"], &ends[..], &["--roles", "copy"]].concat());
    wait_for("streaming", LIMIT, || async {
        (phase(&pair.target).await.as_deref() == Some("streaming")).then_some(())
    })
    .await;
    // The application, as its owner role (a superuser's session would
    // be beyond the admin's --terminate).
    let app = connect(&pair.source, "app").await;
    app.batch_execute(
        "INSERT INTO shop.customers (name) VALUES ('late');
         UPDATE shop.orders SET total = total + 1 WHERE id % 7 = 0;
         DELETE FROM shop.orders WHERE id % 11 = 0;
         ALTER TABLE shop.customers ADD COLUMN tier int DEFAULT 1;
         CREATE TABLE shop.returns (id int PRIMARY KEY, order_id bigint, reason text);
         INSERT INTO shop.returns SELECT g, g, 'r' FROM generate_series(1, 50) g;
         UPDATE shop.customers SET tier = 2 WHERE id < 10;",
    )
    .await
    .unwrap();
    let target = verify_and_cut_over(&pair, &ends, sync).await;
    let reporting: (bool, bool) = target
        .query_one(
            "SELECT rolcanlogin, has_table_privilege('reporting', 'shop.orders', 'SELECT') FROM pg_roles WHERE rolname = 'reporting'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(reporting, (true, true));
    // pg_read_all_data reads pg_authid too (vanilla PostgreSQL): the
    // password came along, as its verifier.
    let verifier = "SELECT rolpassword FROM pg_authid WHERE rolname = 'reporting'";
    assert_eq!(
        pair.target.value(verifier).await,
        pair.source.value(verifier).await
    );
    // The old source is fenced for the application: rows and DDL.
    let app = connect(&pair.source, "app").await;
    let write = app
        .batch_execute("INSERT INTO shop.returns VALUES (1000, 1, 'late')")
        .await;
    assert!(write.is_err(), "a write after the cutover went through");
    let ddl = app
        .batch_execute("BEGIN READ WRITE; CREATE TABLE shop.after (id int); COMMIT")
        .await;
    let ddl = ddl.expect_err("DDL after the cutover went through");
    assert!(
        support::db_error(&ddl).contains("fenced by pgrepl"),
        "{}",
        support::db_error(&ddl)
    );
    // Teardown as the admin: its state goes, the capture made for it stays.
    let down = pgrepl::run(&[&["teardown"], &ends[..]].concat(), LIMIT).await;
    assert!(down.success(), "{down}");
    assert!(down.stdout.contains("the capture itself stays"), "{down}");
}

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

/// The least a role needs, on a vanilla server: on the source LOGIN
/// REPLICATION, the database's owner, a member of the application's owner
/// role (and the DDL capture made ahead by a superuser); on the target the
/// database's owner, a member of the owner role, and SET on
/// session_replication_role. No pg_monitor, no pg_read_all_data, no
/// pg_write_all_data, no pg_signal_backend, no CREATEROLE, no origin
/// functions. Copy, streaming, DDL, verify and cutover all run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privileges_are_enough_for_sync_verify_and_cutover() {
    let pair = Pair::start();
    if pair.target.major() < 15 {
        eprintln!(
            "skipped: a target role that is not a superuser needs 15+ (GRANT SET ON PARAMETER)"
        );
        return;
    }
    for (c, target) in [(&pair.source, false), (&pair.target, true)] {
        c.exec(&format!(
            "CREATE ROLE app LOGIN;
             CREATE ROLE mover LOGIN{};
             GRANT app TO mover;",
            if target { "" } else { " REPLICATION" }
        ))
        .await;
        c.exec("CREATE DATABASE shop OWNER mover").await;
        if target {
            c.exec("GRANT SET ON PARAMETER session_replication_role TO mover")
                .await;
        }
    }
    connect(&pair.source, "postgres")
        .await
        .batch_execute(SCHEMA)
        .await
        .unwrap();
    let login = |c: &Cluster| {
        format!(
            "host={} port={} user=mover dbname=shop",
            c.socket_dir().display(),
            c.port
        )
    };
    let (src, tgt) = (login(&pair.source), login(&pair.target));
    let ends = ["--source", src.as_str(), "--target", tgt.as_str()];
    // The capture made for another role: this one may not even look into
    // its schema, and check says what to run rather than failing a query.
    pair.source.exec("CREATE ROLE other").await;
    for role in ["other", "mover"] {
        let made = pgrepl::run(
            &[
                "install-capture",
                "--source",
                &pair.source.conninfo_db("shop"),
                "--for",
                role,
            ],
            LIMIT,
        )
        .await;
        assert!(made.success(), "{made}");
        let check = pgrepl::run(&[&["check"], &ends[..]].concat(), LIMIT).await;
        if role == "other" {
            assert!(
                !check.success()
                    && check
                        .stdout
                        .contains("the DDL capture is installed, but not for \"mover\""),
                "{check}"
            );
        } else {
            assert!(check.success(), "{check}");
        }
    }
    let sync = pgrepl::spawn(&[&["sync"], &ends[..]].concat());
    wait_for("streaming", LIMIT, || async {
        (phase(&pair.target).await.as_deref() == Some("streaming")).then_some(())
    })
    .await;
    let app = connect(&pair.source, "app").await;
    app.batch_execute(
        "INSERT INTO shop.customers (name) VALUES ('late');
         UPDATE shop.orders SET total = total + 1 WHERE id % 7 = 0;
         DELETE FROM shop.orders WHERE id % 11 = 0;
         ALTER TABLE shop.customers ADD COLUMN tier int DEFAULT 1;
         CREATE TABLE shop.returns (id int PRIMARY KEY, order_id bigint, reason text);
         INSERT INTO shop.returns SELECT g, g, 'r' FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let status = pgrepl::run(&[&["status"], &ends[..]].concat(), LIMIT).await;
    assert!(status.success(), "{status}");
    verify_and_cut_over(&pair, &ends, sync).await;
    let write = connect(&pair.source, "app")
        .await
        .batch_execute("INSERT INTO shop.returns VALUES (1000, 1, 'late')")
        .await;
    assert!(write.is_err(), "a write after the cutover went through");
}

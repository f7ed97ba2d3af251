//! Managed services: pgrepl run by an admin role that is not a superuser,
//! made on a vanilla server with exactly the privileges a cloud gives its
//! admin (RDS-like), and profiles that lack one thing each.

#[path = "managed/privileges.rs"]
mod privileges;
#[path = "managed/restricted.rs"]
mod restricted;
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

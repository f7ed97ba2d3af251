//! A whole server moved online: several databases with their own owners,
//! settings and collations, roles with memberships and passwords, pgbench
//! on two databases while the sync runs, one `cutover --all-databases`
//! under load; every database equal, its sequences exact, and the
//! application's roles logging in on the target to see what they saw.

mod support;

use std::time::Duration;

use support::{assert_same_data, pgrepl, wait_for, Cluster, Pair};

const LIMIT: Duration = Duration::from_secs(240);

/// The source's roles and databases; `icu`: a database whose locale
/// provider is ICU (15+ on both sides).
async fn server(source: &Cluster, icu: bool) {
    // (CREATE DATABASE runs alone.)
    for sql in [
        "CREATE ROLE owner1 LOGIN; CREATE ROLE owner2; CREATE ROLE readers;
         CREATE ROLE reporting LOGIN PASSWORD 'secret-r' IN ROLE readers",
        "CREATE DATABASE shop OWNER owner1",
        "CREATE DATABASE crm OWNER owner2 TEMPLATE template0 LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' CONNECTION LIMIT 40",
        "ALTER DATABASE shop SET work_mem = '8MB'; COMMENT ON DATABASE crm IS 'customers'",
    ] {
        source.exec(sql).await;
    }
    if icu {
        source
            .exec("CREATE DATABASE analytics TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'de-DE'")
            .await;
    } else {
        source.exec("CREATE DATABASE analytics").await;
    }
    let exec = |db: &'static str, sql: &'static str| async move {
        source
            .client_db(db)
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{db}: {}", support::db_error(&e)));
    };
    exec(
        "shop",
        "SET ROLE owner1;
         CREATE TABLE orders (id serial PRIMARY KEY, v text, placed timestamptz DEFAULT now());
         INSERT INTO orders (v) SELECT md5(g::text) FROM generate_series(1, 2000) g;
         GRANT SELECT ON orders TO readers;",
    )
    .await;
    exec(
        "crm",
        "SET ROLE owner2;
         CREATE TABLE people (id int PRIMARY KEY, name text COLLATE \"C.utf8\");
         INSERT INTO people SELECT g, 'p' || g FROM generate_series(1, 500) g;",
    )
    .await;
    exec(
        "analytics",
        "CREATE TABLE facts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, label text);
         INSERT INTO facts (label) SELECT 'ä' || g FROM generate_series(1, 300) g;",
    )
    .await;
    exec(
        "postgres",
        "CREATE TABLE admin_notes (id int PRIMARY KEY, note text); INSERT INTO admin_notes VALUES (1, 'hello');",
    )
    .await;
    for db in ["shop", "crm"] {
        support::workload::pgbench_init_keyed(source, db).await;
    }
}

const DATABASES: [&str; 4] = ["shop", "crm", "analytics", "postgres"];

/// A target database's sync is streaming (the database may not be there
/// yet).
async fn streaming(target: &Cluster, db: &str) {
    wait_for(&format!("{db} streaming"), LIMIT, || async {
        let (c, conn) = tokio_postgres::connect(&target.conninfo_db(db), tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        let phase: String = c
            .query_one("SELECT phase FROM pgrepl.sync", &[])
            .await
            .ok()?
            .get(0);
        (phase == "streaming").then_some(())
    })
    .await;
}

async fn all_streaming(target: &Cluster) {
    for db in DATABASES {
        streaming(target, db).await;
    }
}

/// What pg_database says of a database, as the application would see it.
async fn properties(c: &Cluster, db: &str) -> Option<String> {
    c.value(&format!(
        "SELECT concat_ws('|', pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),
                coalesce(to_jsonb(d) ->> 'datlocprovider', 'c'), d.datcollate, d.datctype,
                coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale', '-'), d.datconnlimit,
                (SELECT array_agg(x ORDER BY x)::text FROM pg_db_role_setting s, unnest(s.setconfig) x
                  WHERE s.setdatabase = d.oid AND s.setrole = 0),
                shobj_description(d.oid, 'pg_database'))
         FROM pg_database d WHERE datname = '{db}'"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_whole_server_moves_online_and_cuts_over_as_one() {
    let pair = Pair::start();
    let icu = pair.source.major() >= 15 && pair.target.major() >= 15;
    server(&pair.source, icu).await;
    // A sync holds at the fence only 0.6 s for a silent cutover here: the
    // cutover, verifying every database under the fence, must keep each
    // hold alive while the others finish.
    let short_hold = [("PGREPL_HOLD_LIMIT_MS", "600")];
    let args = pair.command(
        "sync",
        &["--all-databases", "--roles", "copy", "--jobs", "2"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sync = pgrepl::spawn_with_env(&args, &short_hold);
    all_streaming(&pair.target).await;
    for db in ["shop", "crm", "analytics"] {
        assert_eq!(
            properties(&pair.target, db).await,
            properties(&pair.source, db).await,
            "database {db} made as on the source"
        );
    }
    // Writes on two databases while the syncs stream.
    let mut loads = vec![
        support::workload::pgbench_load(&pair.source, "shop", 4),
        support::workload::pgbench_load(&pair.source, "crm", 4),
    ];
    for l in &mut loads {
        let _ = l.wait().await;
    }
    let status = pair.run("status", &["--all-databases"]).await;
    assert!(status.success(), "{status}");
    for db in DATABASES {
        assert!(
            status
                .stdout
                .contains(&format!("[{db}] sync pgrepl_{db}: streaming")),
            "{status}"
        );
    }
    let verify = pair.run("verify", &["--all-databases"]).await;
    assert!(verify.success(), "{verify}");
    // One cutover for all, under load.
    let mut loads = vec![
        support::workload::pgbench_load(&pair.source, "shop", 60),
        support::workload::pgbench_load(&pair.source, "crm", 60),
    ];
    tokio::time::sleep(Duration::from_millis(800)).await;
    let args = pair.command("cutover", &["--all-databases", "--terminate", "--verify"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cutover = pgrepl::run_with_env(&args, &short_hold, LIMIT).await;
    assert!(cutover.success(), "{cutover}");
    assert!(
        cutover.stdout.contains("4 database(s) cut over as one")
            && cutover.stdout.contains("verified equal"),
        "{cutover}"
    );
    for l in &mut loads {
        let _ = l.kill().await;
    }
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "the syncs end with the cutover: {out}");
    for db in DATABASES {
        let (s, t) = (
            pair.source.client_db(db).await,
            pair.target.client_db(db).await,
        );
        assert_same_data(&s, &t).await;
        // Sequences exact: the target's state is the source's.
        let seqs = "SELECT coalesce(string_agg(format('%s=%s', schemaname || '.' || sequencename,
                                                   coalesce(last_value::text, 'unused')), ',' ORDER BY 1), '')
                    FROM pg_sequences WHERE schemaname !~ '^pgrepl'";
        let value = |c: tokio_postgres::Client| async move {
            c.query_one(seqs, &[]).await.unwrap().get::<_, String>(0)
        };
        assert_eq!(value(t).await, value(s).await, "sequences of {db}");
    }
    // The application's reporting role logs in on the target with its
    // password and sees what it saw on the source.
    let count = |c: &Cluster| {
        let conninfo = c.tcp_conninfo("reporting", "secret-r", "shop");
        async move {
            let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .expect("reporting logs in");
            tokio::spawn(conn);
            client
                .query_one("SELECT count(*) FROM orders", &[])
                .await
                .expect("reporting reads orders")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count(&pair.target).await, count(&pair.source).await);
    // The old server is fenced in every database.
    let write = pair
        .source
        .client_db("crm")
        .await
        .batch_execute("INSERT INTO people VALUES (100000, 'late')")
        .await;
    assert!(write.is_err(), "a write after the cutover went through");
    let down = pair.run("teardown", &["--all-databases"]).await;
    assert!(down.success(), "{down}");
    let slots = pair
        .source
        .value("SELECT count(*) FROM pg_replication_slots")
        .await;
    assert_eq!(slots.as_deref(), Some("0"));
}

/// What cannot be made as on the source is named before anything is
/// made; a database created on the source while the move runs is named
/// as not synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_match_is_refused_a_new_database_is_named_and_the_way_back_runs() {
    let pair = Pair::start();
    for sql in [
        "CREATE ROLE owner9",
        "CREATE DATABASE sales OWNER owner9",
        "CREATE DATABASE hr",
    ] {
        pair.source.exec(sql).await;
    }
    pair.source
        .client_db("sales")
        .await
        .batch_execute("CREATE TABLE deals (id int PRIMARY KEY, v text); INSERT INTO deals VALUES (1, 'first')")
        .await
        .unwrap();
    // Without --roles copy the owner does not exist on the target.
    let out = pair
        .run("sync", &["--databases", "sales,hr", "--roles", "skip"])
        .await;
    assert!(!out.success(), "{out}");
    let line = out.error_line();
    assert!(
        line.contains("sales: its owner \"owner9\" is not a role of the target"),
        "{line}"
    );
    let made = pair
        .target
        .value("SELECT count(*) FROM pg_database WHERE datname IN ('sales', 'hr')")
        .await;
    assert_eq!(made.as_deref(), Some("0"), "a database was created");
    let unknown = pair.run("sync", &["--databases", "nope"]).await;
    assert!(
        !unknown.success() && unknown.error_line().contains("no database \"nope\""),
        "{unknown}"
    );
    // check says the same, and what the server needs.
    let check = pair
        .run("check", &["--databases", "sales,hr", "--roles", "skip"])
        .await;
    assert!(
        !check.success() && check.stdout.contains("ERROR  server database sales"),
        "{check}"
    );
    let check = pair
        .run("check", &["--databases", "sales,hr", "--roles", "copy"])
        .await;
    assert!(check.success(), "{check}");
    assert!(
        check
            .stdout
            .contains("sales, hr will be made on the target")
            || check
                .stdout
                .contains("hr, sales will be made on the target"),
        "{check}"
    );
    let tight = pair
        .run(
            "check",
            &[
                "--databases",
                "sales,hr",
                "--roles",
                "copy",
                "--max-connections",
                "5",
            ],
        )
        .await;
    assert!(
        !tight.success() && tight.stdout.contains("--max-connections 5"),
        "{tight}"
    );
    // With the roles, it runs; a database made since is named.
    let sync = pair.spawn(
        "sync",
        &[
            "--all-databases",
            "--exclude-databases",
            "postgres",
            "--roles",
            "copy",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let addr = support::http::listening(&sync).await;
    for db in ["sales", "hr"] {
        streaming(&pair.target, db).await;
    }
    // One listener for all: metrics labelled by database, the status of
    // each, a page with a row each, healthy while all stream.
    let (code, health) = support::http::get(&addr, "/healthz")
        .await
        .expect("healthz");
    assert_eq!(code, 200, "{health}");
    let (_, status) = support::http::get(&addr, "/status").await.expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    let dbs: Vec<&str> = status["databases"]
        .as_array()
        .expect("a list of databases")
        .iter()
        .filter_map(|d| d["database"].as_str())
        .collect();
    assert_eq!(dbs.len(), 2, "{status}");
    // Each database's as `status --json` of its sync: a phase, and what a
    // cutover left (nothing yet).
    for d in status["databases"].as_array().expect("a list") {
        assert_eq!(d["status"]["phase"], "streaming", "{status}");
        assert_eq!(d["status"]["cutover"]["source_fenced"], false, "{status}");
        assert!(d["status"]["failover"].is_object(), "{status}");
    }
    let (_, page) = support::http::get(&addr, "/").await.expect("page");
    assert!(
        page.contains("\"database\":\"sales\"") && page.contains("\"database\":\"hr\""),
        "{page}"
    );
    let phases = |metrics: &str| -> Vec<String> {
        let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
            .expect("metrics parse");
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "pgrepl_phase" && s.labels.get("phase") == Some("streaming"))
            .filter(|s| matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 1.0))
            .filter_map(|s| s.labels.get("database").map(str::to_string))
            .collect()
    };
    wait_for("every database streaming in /metrics", LIMIT, || async {
        let (_, m) = support::http::get(&addr, "/metrics").await?;
        let mut p = phases(&m);
        p.sort();
        (p == ["hr", "sales"]).then_some(())
    })
    .await;
    pair.source.exec("CREATE DATABASE later").await;
    let status = pair
        .run(
            "status",
            &["--all-databases", "--exclude-databases", "postgres"],
        )
        .await;
    assert!(status.stdout.contains("[later] NOT SYNCED"), "{status}");
    let mut sync = sync;
    wait_for("the sync to name the new database", LIMIT, || {
        let said = sync.output_so_far();
        async move {
            said.contains("\"later\" was created on the source after this sync started")
                .then_some(())
        }
    })
    .await;
    let (_, metrics) = support::http::get(&addr, "/metrics")
        .await
        .expect("metrics");
    assert!(
        metrics.contains("pgrepl_database_unsynced{database=\"later\",sync=\"pgrepl\"} 1"),
        "{metrics}"
    );
    sync.assert_running();
    // A cutover that fails in one database, under the fence, lifts the
    // fence of every one: a row the target of sales lost makes its
    // verify fail there.
    pair.source
        .client_db("hr")
        .await
        .batch_execute("CREATE TABLE staff (id int PRIMARY KEY)")
        .await
        .unwrap();
    wait_for("staff on the target", LIMIT, || async {
        pair.target
            .client_db("hr")
            .await
            .query_one("SELECT count(*) FROM staff", &[])
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let lost = "DELETE FROM deals WHERE id = 1";
    let target_sales = pair.target.client_db("sales").await;
    target_sales.batch_execute(lost).await.unwrap();
    let failed = pair
        .run(
            "cutover",
            &["--databases", "sales,hr", "--verify", "--terminate"],
        )
        .await;
    assert!(
        !failed.success() && failed.error_line().contains("every fence is lifted"),
        "{failed}"
    );
    assert!(
        failed.stderr.contains("[hr]   source fenced at")
            && failed.stderr.contains("[sales]   source fenced at"),
        "both were fenced before sales failed: {failed}"
    );
    target_sales
        .batch_execute("INSERT INTO deals VALUES (1, 'first')")
        .await
        .unwrap();
    let hr = pair.source.client_db("hr").await;
    let fenced: i64 = hr
        .query_one(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname = 'pgrepl_fence')
                  + (SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) c
                     WHERE c LIKE 'default_transaction_read_only%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fenced, 0, "a fence stayed after the set failed");
    hr.batch_execute("INSERT INTO staff VALUES (1)")
        .await
        .unwrap();
    sync.assert_running();
    // One cutover for both, with a way back: a whole-server sync named
    // pgrepl_r carries the new server's writes back.
    let cutover = pair
        .run(
            "cutover",
            &["--databases", "sales,hr", "--terminate", "--reverse"],
        )
        .await;
    assert!(
        cutover.success() && cutover.stdout.contains("--name pgrepl_r --databases"),
        "{cutover}"
    );
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    let back = pgrepl::spawn(&[
        "sync",
        "--databases",
        "sales,hr",
        "--name",
        "pgrepl_r",
        "--source",
        &pair.target.conninfo(),
        "--target",
        &pair.source.conninfo(),
    ]);
    pair.target
        .client_db("sales")
        .await
        .batch_execute("INSERT INTO deals VALUES (2, 'written on the new server')")
        .await
        .unwrap();
    let source = pair.source.client_db("sales").await;
    wait_for("the write to come back", LIMIT, || async {
        let n: i64 = source
            .query_one("SELECT count(*) FROM deals WHERE id = 2", &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    back.signal(libc::SIGTERM);
    let out = back.wait(LIMIT).await;
    assert!(out.success(), "{out}");
}

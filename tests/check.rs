//! `pgrepl check` against real clusters, each set up to fail one check.

mod support;

use std::time::Duration;

use support::{pgrepl, Cluster, ClusterOptions, Pair, PgInstall, SUPERUSER_PASSWORD};

const LIMIT: Duration = Duration::from_secs(60);

async fn check(pair: &Pair, extra: &[&str]) -> pgrepl::Output {
    let mut args: Vec<String> = vec!["check".into()];
    args.extend(pair.args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pgrepl::run(&args, LIMIT).await
}

/// The report line for `check`, with its level.
fn line<'a>(out: &'a pgrepl::Output, check: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(check))
        .unwrap_or_else(|| panic!("no {check} line in:\n{out}"))
}

fn level<'a>(out: &'a pgrepl::Output, check: &str) -> &'a str {
    line(out, check).split_whitespace().next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_pair_passes() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    // Unbounded slot WAL is a warning (PostgreSQL 12 cannot bound it).
    let out = check(&pair, &[]).await;
    assert!(out.success(), "{out}");
    assert_eq!(level(&out, "wal_safety"), "WARN", "{out}");
    assert!(
        out.stdout.contains("until the source's disk is full"),
        "{out}"
    );
    if pair.source.major() < 13 {
        return;
    }
    pair.source
        .exec("ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'")
        .await;
    // ALTER SYSTEM refuses to share a query string (an implicit transaction).
    pair.source.exec("SELECT pg_reload_conf()").await;
    support::wait_for("the setting to load", LIMIT, || async {
        (pair
            .source
            .value("SHOW max_slot_wal_keep_size")
            .await
            .as_deref()
            == Some("10GB"))
        .then_some(())
    })
    .await;
    let out = check(&pair, &[]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("All checks passed"), "{out}");
    for c in [
        "wal_level",
        "replication_slots",
        "wal_senders",
        "replication_role",
        "replication_connection",
        "replica_identity",
        "target_tables",
        "wal_safety",
    ] {
        assert_eq!(level(&out, c), "ok", "{c}:\n{out}");
    }
    assert!(!out.stdout.contains(SUPERUSER_PASSWORD));

    let json = check(&pair, &["--json"]).await;
    assert!(json.success(), "{json}");
    let v: serde_json::Value =
        serde_json::from_str(&json.stdout).expect("check --json prints JSON");
    assert_eq!(v["ok"], true);
    assert!(v["findings"].as_array().is_some_and(|f| f.len() >= 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_an_error_with_the_fix() {
    let pair = Pair::start_with(
        ClusterOptions {
            wal_level: "replica",
            ..Default::default()
        },
        ClusterOptions::default(),
    );
    let out = check(&pair, &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let l = line(&out, "wal_level");
    assert!(l.starts_with("ERROR"), "{l}");
    assert!(l.contains("'replica'"), "{l}");
    assert!(
        out.stdout.contains("ALTER SYSTEM SET wal_level = logical"),
        "{out}"
    );

    let json = check(&pair, &["--json"]).await;
    assert_eq!(json.code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    let f = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["check"] == "wal_level")
        .expect("wal_level");
    assert_eq!(f["level"], "error");
    assert!(f["fix"]
        .as_str()
        .is_some_and(|s| s.contains("wal_level = logical")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_slots_and_senders_are_errors() {
    let pair = Pair::start_with(
        ClusterOptions {
            settings: vec![
                "max_replication_slots = 1".into(),
                "max_wal_senders = 0".into(),
            ],
            ..Default::default()
        },
        ClusterOptions::default(),
    );
    pair.source
        .exec("SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')")
        .await;
    let out = check(&pair, &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(level(&out, "replication_slots"), "ERROR", "{out}");
    assert!(
        line(&out, "replication_slots").contains("all 1 replication slots are in use"),
        "{out}"
    );
    assert_eq!(level(&out, "wal_senders"), "ERROR", "{out}");
    assert!(out.stdout.contains("max_wal_senders"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_or_select_is_refused() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE ROLE app LOGIN;
             CREATE TABLE secret (id int PRIMARY KEY);
             CREATE TABLE open (id int PRIMARY KEY);
             GRANT SELECT ON open TO app;",
        )
        .await;
    let source = format!(
        "host={} port={} user=app dbname=postgres",
        pair.source.socket_dir().display(),
        pair.source.port
    );
    let args = [
        "check",
        "--source",
        &source,
        "--target",
        &pair.target.conninfo(),
    ];
    let out = pgrepl::run(&args, LIMIT).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(level(&out, "replication_role"), "ERROR", "{out}");
    assert!(
        out.stdout.contains("ALTER ROLE \"app\" REPLICATION"),
        "{out}"
    );
    assert_eq!(level(&out, "replication_connection"), "ERROR", "{out}");
    assert_eq!(level(&out, "select_privilege"), "ERROR", "{out}");
    assert!(line(&out, "select_privilege").contains("secret"), "{out}");
    assert!(!line(&out, "select_privilege").contains("open"), "{out}");
    assert_eq!(level(&out, "publication"), "ERROR", "{out}");
    assert_eq!(level(&out, "ddl_capture"), "ERROR", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_identity_and_unlogged_tables_are_flagged() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE keyless (a int, b text);
             CREATE TABLE nothing (id int PRIMARY KEY); ALTER TABLE nothing REPLICA IDENTITY NOTHING;
             CREATE TABLE full_ok (a int); ALTER TABLE full_ok REPLICA IDENTITY FULL;
             CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);",
        )
        .await;
    let out = check(&pair, &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let ri = line(&out, "replica_identity");
    assert!(ri.starts_with("ERROR"), "{out}");
    assert!(
        out.stdout.contains("keyless") && out.stdout.contains("nothing"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("UPDATE and DELETE on them FAIL on the source"),
        "{out}"
    );
    assert!(!ri.contains("full_ok"), "{out}");
    assert_eq!(level(&out, "unlogged_tables"), "WARN", "{out}");

    // Excluding the culprits clears the error.
    let out = check(
        &pair,
        &["--exclude", "public.keyless", "--exclude", "nothing"],
    )
    .await;
    assert_eq!(level(&out, "replica_identity"), "ok", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_matching_nothing_are_errors() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY)")
        .await;
    let out = check(&pair, &["--include", "sales.*"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        line(&out, "selection").contains("--include sales.* matches no table"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_tables_with_rows_or_already_there_are_errors() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE full_t (id int PRIMARY KEY); CREATE TABLE empty_t (id int PRIMARY KEY); CREATE TABLE new_t (id int PRIMARY KEY);")
        .await;
    pair.target
        .exec("CREATE TABLE full_t (id int PRIMARY KEY); INSERT INTO full_t VALUES (1); CREATE TABLE empty_t (id int PRIMARY KEY);")
        .await;
    let out = check(&pair, &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let rows = line(&out, "target_rows");
    assert!(
        rows.starts_with("ERROR") && rows.contains("full_t") && !rows.contains("empty_t"),
        "{out}"
    );
    assert_eq!(level(&out, "target_tables"), "ERROR", "{out}");
    assert!(out.stdout.contains("--existing-schema"), "{out}");

    let out = check(&pair, &["--existing-schema"]).await;
    assert_eq!(
        level(&out, "target_tables"),
        "ERROR",
        "new_t is missing:\n{out}"
    );
    assert!(line(&out, "target_tables").contains("new_t"), "{out}");
    let out = check(&pair, &["--existing-schema", "--include", "empty_t"]).await;
    assert!(out.success(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoding_mismatch_is_an_error() {
    let pair = Pair::start();
    pair.target.exec("CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").await;
    let args = [
        "check",
        "--source",
        &pair.source.conninfo(),
        "--target",
        &pair.target.conninfo_db("latin"),
    ];
    let out = pgrepl::run(&args, LIMIT).await;
    assert_eq!(out.code, Some(1), "{out}");
    let l = line(&out, "encoding");
    assert!(
        l.starts_with("ERROR") && l.contains("UTF8") && l.contains("LATIN1"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_target_is_a_warning() {
    let newest = PgInstall::for_source();
    let older = PgInstall::older_than(newest.major).unwrap_or_else(|| {
        panic!(
            "this test needs an older PostgreSQL than {}: run `just pg 13`",
            newest.major
        )
    });
    let source = Cluster::start("source", newest);
    let target = Cluster::start("target", older);
    let args = [
        "check",
        "--source",
        &source.conninfo(),
        "--target",
        &target.conninfo(),
    ];
    let out = pgrepl::run(&args, LIMIT).await;
    let l = line(&out, "version");
    let target_line = out
        .stdout
        .lines()
        .find(|l| l.contains("target") && l.contains(" version "))
        .expect("target version line");
    assert!(target_line.starts_with("WARN"), "{out}");
    assert!(target_line.contains("older than the source"), "{l}\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_one_clear_line() {
    let pair = Pair::start();
    let target = pair.target.conninfo();

    // Wrong password, over TCP with scram.
    let bad_pw = "sw0rdfish-not-it";
    let source = pair.source.tcp_conninfo("postgres", bad_pw, "postgres");
    let out = pgrepl::run(&["check", "--source", &source, "--target", &target], LIMIT).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(
        out.stderr
            .contains("password authentication failed for user \"postgres\""),
        "{out}"
    );
    assert!(out.stderr.starts_with("error: source:"), "{out}");
    assert!(!out.all().contains(bad_pw), "password leaked:\n{out}");

    // The right password through a URI works (and is not printed).
    let uri = format!(
        "postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
        pair.source.port
    );
    let out = pgrepl::run(&["check", "--source", &uri, "--target", &target], LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(!out.all().contains(SUPERUSER_PASSWORD));

    // PGPASSWORD is used when the string has none.
    let source = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        pair.source.port
    );
    let out = pgrepl::run_with_env(
        &["check", "--source", &source, "--target", &target],
        &[("PGPASSWORD", SUPERUSER_PASSWORD)],
        LIMIT,
    )
    .await;
    assert!(out.success(), "{out}");

    // No password at all.
    let out = pgrepl::run(&["check", "--source", &source, "--target", &target], LIMIT).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("asks user \"postgres\" for a password and none was given"),
        "{out}"
    );

    // Unknown host.
    let out = pgrepl::run(
        &[
            "check",
            "--source",
            "host=no-such-host.invalid dbname=x",
            "--target",
            &target,
        ],
        LIMIT,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(out.stderr.contains("cannot resolve the host"), "{out}");

    // Unknown database.
    let out = pgrepl::run(
        &[
            "check",
            "--source",
            &pair.source.conninfo(),
            "--target",
            &pair.target.conninfo_db("nope"),
        ],
        LIMIT,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(
        out.stderr
            .contains("error: target: database \"nope\" does not exist"),
        "{out}"
    );

    // Nothing listening.
    let out = pgrepl::run(
        &[
            "check",
            "--source",
            "host=127.0.0.1 port=1 dbname=x",
            "--target",
            &target,
        ],
        LIMIT,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("refused"), "{out}");

    // A malformed connection string.
    let out = pgrepl::run(&["check", "--source", "hots=x", "--target", &target], LIMIT).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("unknown option \"hots\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_fallbacks_name_the_endpoints() {
    let pair = Pair::start();
    let out = pgrepl::run_with_env(
        &["check"],
        &[
            ("PGREPL_SOURCE", &pair.source.conninfo()),
            ("PGREPL_TARGET", &pair.target.conninfo()),
        ],
        LIMIT,
    )
    .await;
    assert!(out.success(), "{out}");
    let out = pgrepl::run(&["check"], LIMIT).await;
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("--source"), "{out}");
}

/// The source named as the target too is refused by name, before
/// anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_as_its_own_target_is_refused() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY)")
        .await;
    let src = pair.source.conninfo();
    let out = pgrepl::run(&["check", "--source", &src, "--target", &src], LIMIT).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.all().contains("the target is the source itself"),
        "{out}"
    );
    let out = pgrepl::run(&["sync", "--source", &src, "--target", &src], LIMIT).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_replication_slots")
            .await,
        Some("0".into())
    );
}

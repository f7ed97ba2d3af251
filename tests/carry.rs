//! What an application needs besides rows, against real servers (run on
//! 15 -> 17 and 13 -> 17 by `scripts/test`, and on every same-major pair):
//! its roles log in on the target with their passwords and can do exactly
//! what they could on the source, no more (a privilege revoked while the
//! sync runs stays revoked); owners stay non-superuser roles, also for a
//! table created while streaming; large objects written, rewritten and
//! unlinked while the sync runs end equal after cutover; an extension the
//! target cannot provide makes `check` fail naming it; `--roles skip` says
//! what it leaves behind. What carrying must never do: `guards`.

#[path = "carry/guards.rs"]
mod guards;
mod support;

use std::time::Duration;

use support::{wait_for, wait_for_phase, Cluster, Pair};

const LIMIT: Duration = Duration::from_secs(240);

const APP: &str = "
    CREATE ROLE app_owner NOLOGIN;
    CREATE ROLE app_rw NOLOGIN;
    CREATE ROLE app_user LOGIN PASSWORD 'user-pw' CONNECTION LIMIT 7 IN ROLE app_rw;
    ALTER ROLE app_user SET search_path = app, public;
    ALTER ROLE app_user IN DATABASE postgres SET work_mem = '7MB';
    CREATE SCHEMA app AUTHORIZATION app_owner;
    SET ROLE app_owner;
    CREATE TABLE app.orders (id int PRIMARY KEY, item text, note text);
    CREATE TABLE app.audit (id int PRIMARY KEY, what text);
    CREATE FUNCTION app.total() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM app.orders';
    ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO app_rw;
    RESET ROLE;
    GRANT USAGE ON SCHEMA app TO app_rw;
    GRANT SELECT, INSERT, DELETE ON app.orders TO app_rw;
    GRANT UPDATE (note) ON app.orders TO app_rw;
    REVOKE DELETE ON app.orders FROM app_rw;
    GRANT SELECT ON app.audit TO app_rw;
    ALTER TABLE app.audit ENABLE ROW LEVEL SECURITY;
    ALTER TABLE app.audit FORCE ROW LEVEL SECURITY;
    CREATE POLICY mine ON app.audit FOR SELECT TO app_rw USING (id < 100);
    REVOKE EXECUTE ON FUNCTION app.total() FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION app.total() TO app_rw;
    INSERT INTO app.orders SELECT g, 'item' || g, NULL FROM generate_series(1, 50) g;
    INSERT INTO app.audit VALUES (1, 'a'), (200, 'b');
    ALTER DATABASE postgres SET default_transaction_deferrable = on;
    COMMENT ON DATABASE postgres IS 'the shop';
";

/// What the application role may do: each statement in a transaction
/// rolled back, its outcome (the error's SQLSTATE, or the rows).
const PROBES: &[&str] = &[
    "SELECT count(*) FROM app.orders",
    "INSERT INTO app.orders VALUES (1000, 'x', NULL)",
    "DELETE FROM app.orders WHERE id = 1",
    "UPDATE app.orders SET note = 'n' WHERE id = 1",
    "UPDATE app.orders SET item = 'i' WHERE id = 1",
    "SELECT count(*) FROM app.audit",
    "SELECT count(*) FROM app.items",
    "INSERT INTO app.items VALUES (1000, 'x')",
    "SELECT app.total()",
    "SHOW search_path",
    "SHOW work_mem",
    "CREATE TABLE app.mine (x int)",
];

async fn login(
    cluster: &Cluster,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(
        &cluster.tcp_conninfo(user, password, "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .map_err(|e| support::db_error(&e))?;
    tokio::spawn(conn);
    Ok(client)
}

async fn probe(client: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for sql in PROBES {
        client.batch_execute("BEGIN").await.expect("begin");
        let r = match client.simple_query(sql).await {
            Ok(msgs) => msgs
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(","),
            Err(e) => format!("ERROR {}", e.code().map(|c| c.code()).unwrap_or("?")),
        };
        client.batch_execute("ROLLBACK").await.expect("rollback");
        out.push(format!("{sql} -> {r}"));
    }
    out
}

async fn value(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    c.query_opt(sql, &[]).await.expect(sql).map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_logs_in_on_the_target_and_may_do_exactly_what_it_could() {
    let pair = Pair::start();
    pair.source.exec(APP).await;

    // Nothing is left behind silently: the missing roles stop the check.
    let out = pair.run("check", &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains("app_owner")
            && out.stdout.contains("app_user")
            && out.stdout.contains("--roles copy"),
        "{out}"
    );

    let sync = pair.spawn("sync", &["--roles", "copy", "--carry-interval", "1s"]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    // While streaming: a revoke, a table created by the owner role (its
    // default privileges apply), a role created since the copy that gets a
    // grant, a large object.
    pair.source
        .exec(
            "REVOKE INSERT ON app.orders FROM app_rw;
             SET ROLE app_owner;
             CREATE TABLE app.items (id int PRIMARY KEY, v text);
             RESET ROLE;
             CREATE ROLE auditor LOGIN PASSWORD 'aud-pw';
             GRANT USAGE ON SCHEMA app TO auditor;
             GRANT SELECT ON app.audit TO auditor;
             INSERT INTO app.items VALUES (1, 'x');
             INSERT INTO app.orders VALUES (51, 'late', NULL);
             SELECT lo_from_bytea(4242, 'streamed large object');",
        )
        .await;
    let t = pair.target.client().await;
    wait_for("the streamed changes and the large object", LIMIT, || {
        let t = &t;
        async move {
            let items: i64 = t
                .query_one("SELECT count(*) FROM app.items", &[])
                .await
                .ok()?
                .get(0);
            let auditor: bool = t
                .query_one(
                    "SELECT has_table_privilege('auditor', 'app.audit', 'SELECT')",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            let lo: i64 = t
                .query_one(
                    "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 4242",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (items == 1 && auditor && lo == 1).then_some(())
        }
    })
    .await;
    let s = pair.source.client().await;
    wait_for("the last row on the target", LIMIT, || {
        let t = &t;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM app.orders", &[])
                .await
                .ok()?
                .get(0);
            (n == 51).then_some(())
        }
    })
    .await;

    // The application's role logs in with its password, on both sides,
    // and a wrong password is refused (authentication is really checked).
    let on_source = login(&pair.source, "app_user", "user-pw")
        .await
        .expect("source login");
    let on_target = login(&pair.target, "app_user", "user-pw")
        .await
        .expect("target login");
    let wrong = login(&pair.target, "app_user", "nope").await;
    assert!(wrong.is_err(), "a wrong password logs in");
    let (a, b) = (probe(&on_source).await, probe(&on_target).await);
    assert_eq!(
        a, b,
        "the application may do on the target exactly what it could on the source"
    );
    assert!(
        a.iter()
            .any(|l| l.starts_with("INSERT INTO app.orders") && l.ends_with("ERROR 42501")),
        "{a:?}"
    );
    assert!(
        a.iter()
            .any(|l| l.starts_with("SELECT count(*) FROM app.audit") && l.ends_with("-> 1")),
        "{a:?}"
    );
    login(&pair.target, "auditor", "aud-pw")
        .await
        .expect("a role created while streaming logs in");

    // Owners as on the source, the table created while streaming included.
    for (what, sql) in [
        ("schema owner", "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'app'"),
        ("orders owner", "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.orders'::regclass"),
        ("items owner", "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.items'::regclass"),
        ("function owner", "SELECT proowner::regrole::text FROM pg_proc WHERE oid = 'app.total()'::regprocedure"),
        // MAINTAIN (PostgreSQL 17) is left out: an owner has it on 17+ only.
        ("orders grants", "SELECT string_agg(grantee::regrole::text || ':' || privilege_type, ',' ORDER BY 1)
                           FROM aclexplode((SELECT relacl FROM pg_class WHERE oid = 'app.orders'::regclass))
                           WHERE privilege_type <> 'MAINTAIN'"),
        ("column grants", "SELECT attacl::text FROM pg_attribute WHERE attrelid = 'app.orders'::regclass AND attname = 'note'"),
        ("force rls", "SELECT relforcerowsecurity::text FROM pg_class WHERE oid = 'app.audit'::regclass"),
        ("default privileges", "SELECT defaclacl::text FROM pg_default_acl"),
        ("connection limit", "SELECT rolconnlimit::text FROM pg_roles WHERE rolname = 'app_user'"),
        ("membership", "SELECT string_agg(roleid::regrole::text, ',') FROM pg_auth_members WHERE member = 'app_user'::regrole"),
        ("database comment", "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'postgres'"),
        ("database settings", "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting WHERE setrole = 0 AND setdatabase = (SELECT oid FROM pg_database WHERE datname = 'postgres')"),
        ("large object", "SELECT md5(lo_get(4242)) || ' ' || lomowner::regrole::text FROM pg_largeobject_metadata WHERE oid = 4242"),
    ] {
        assert_eq!(value(&s, sql).await, value(&t, sql).await, "{what}");
    }
    assert_eq!(
        value(
            &t,
            "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.items'::regclass"
        )
        .await
        .as_deref(),
        Some("app_owner")
    );

    sync.signal(libc_sigint());
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains("roles created: app_owner, app_rw, app_user"),
        "{out}"
    );
    assert!(
        out.stdout.contains("owners and grants: as on the source"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("database setting default_transaction_deferrable = on"),
        "{out}"
    );
}

fn libc_sigint() -> i32 {
    2
}

/// Large objects, each side described independently of pgrepl: content,
/// owner, and each grant with its grant option and grantor, in one order.
async fn large_objects(c: &tokio_postgres::Client) -> Vec<(u32, String, String, String)> {
    c.query(
        "SELECT m.oid, md5(lo_get(m.oid)), m.lomowner::regrole::text,
                coalesce((SELECT string_agg(x.item, ',' ORDER BY x.item COLLATE \"C\")
                          FROM (SELECT a.grantee::regrole::text || '=' || a.privilege_type
                                       || CASE WHEN a.is_grantable THEN '*' ELSE '' END
                                       || '/' || a.grantor::regrole::text AS item
                                FROM aclexplode(m.lomacl) a) x), '')
         FROM pg_largeobject_metadata m ORDER BY m.oid",
        &[],
    )
    .await
    .expect("large objects")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_written_rewritten_and_unlinked_end_equal_after_cutover() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE ROLE lo_owner NOLOGIN;
             CREATE ROLE lo_reader NOLOGIN;
             CREATE TABLE docs (id int PRIMARY KEY, body oid);
             SELECT lo_from_bytea(1001, 'kept as it is');
             SELECT lo_from_bytea(1002, 'rewritten later');
             SELECT lo_from_bytea(1003, 'unlinked later');
             SELECT lo_from_bytea(1004, repeat('big ', 700000)::bytea);
             ALTER LARGE OBJECT 1001 OWNER TO lo_owner;
             GRANT UPDATE ON LARGE OBJECT 1001 TO PUBLIC;
             GRANT SELECT ON LARGE OBJECT 1001 TO lo_reader WITH GRANT OPTION;
             GRANT UPDATE ON LARGE OBJECT 1001 TO lo_reader;
             INSERT INTO docs VALUES (1, 1001), (2, 1002), (3, 1003), (4, 1004);",
        )
        .await;
    // A long interval: only the copy and the cutover bring them in step.
    let sync = pair.spawn("sync", &["--roles", "copy", "--carry-interval", "1h"]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    wait_for("the copied large objects", LIMIT, || {
        let (s, t) = (&s, &t);
        async move {
            let (a, b) = (large_objects(s).await, large_objects(t).await);
            (a == b).then_some(())
        }
    })
    .await;
    assert_eq!(large_objects(&t).await.len(), 4);
    let status = pair.run("status", &[]).await;
    assert!(
        status
            .stdout
            .contains("large objects: 4 on the source, 4 made equal on the target at"),
        "{status}"
    );

    pair.source
        .exec(
            "SELECT lo_put(1002, 0, 'REWRITTEN');
             SELECT lo_unlink(1003);
             SELECT lo_from_bytea(1005, 'new while streaming');
             SELECT lo_put(1004, 1500000, 'a change deep inside');
             GRANT UPDATE ON LARGE OBJECT 1005 TO lo_reader WITH GRANT OPTION;
             DELETE FROM docs WHERE id = 3;
             INSERT INTO docs VALUES (5, 1005);",
        )
        .await;
    wait_for("the rows streamed", LIMIT, || {
        let t = &t;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM docs WHERE id = 5", &[])
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    assert_ne!(
        large_objects(&s).await,
        large_objects(&t).await,
        "nothing brought them in step yet"
    );

    // --terminate: this test's own session on the source is open.
    let out = pair.run("cutover", &["--verify", "--terminate"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stderr.contains("large object(s) exact"), "{out}");
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    let s = pair.source.client().await;
    let (a, b) = (large_objects(&s).await, large_objects(&t).await);
    assert_eq!(a, b, "large objects exact after cutover");
    assert_eq!(a.len(), 4);
    assert_eq!(
        value(&t, "SELECT convert_from(lo_get(1002, 0, 9), 'UTF8')")
            .await
            .as_deref(),
        Some("REWRITTEN")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_the_target_cannot_provide_fails_the_check_by_name() {
    let pair = Pair::start();
    let s = pair.source.client().await;
    let t = pair.target.client().await;
    let on_source: Vec<String> = s
        .query(
            "SELECT name::text FROM pg_available_extensions ORDER BY 1",
            &[],
        )
        .await
        .expect("source extensions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let on_target: Vec<String> = t
        .query("SELECT name::text FROM pg_available_extensions", &[])
        .await
        .expect("target extensions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let Some(missing) = on_source.iter().find(|e| !on_target.contains(e)) else {
        eprintln!(
            "skipped: PostgreSQL {} offers every extension PostgreSQL {} has (run on 15 -> 17 or 13 -> 17)",
            pair.target.major(),
            pair.source.major()
        );
        return;
    };
    pair.source
        .exec(&format!(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE EXTENSION \"{missing}\""
        ))
        .await;
    let out = pair.run("check", &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains(&format!("extension {missing} "))
            && out.stdout.contains("not available on the target"),
        "{out}"
    );
    let out = pair.run("sync", &["--copy-only"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("nothing was changed"), "{out}");
    assert_eq!(
        value(&t, "SELECT (to_regclass('public.t') IS NULL)::text")
            .await
            .as_deref(),
        Some("true"),
        "nothing was created on the target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_skip_leaves_them_out_and_says_so() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE ROLE app_owner NOLOGIN;
             CREATE TABLE owned (id int PRIMARY KEY);
             ALTER TABLE owned OWNER TO app_owner;
             INSERT INTO owned VALUES (1);",
        )
        .await;
    let out = pair.run("sync", &["--roles", "skip", "--copy-only"]).await;
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("roles NOT copied (--roles skip): app_owner; postgres owns the objects, no grants moved"),
        "{out}"
    );
    let t = pair.target.client().await;
    assert_eq!(
        value(
            &t,
            "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'owned'::regclass"
        )
        .await
        .as_deref(),
        Some("postgres")
    );
    assert_eq!(
        value(
            &t,
            "SELECT rolname::text FROM pg_roles WHERE rolname = 'app_owner'"
        )
        .await,
        None
    );
    let status = pair.run("status", &[]).await;
    assert!(status.stdout.contains("roles: --roles skip"), "{status}");
}

//! What carrying must never do, against real servers: pull in roles
//! through the ADMIN grants PostgreSQL 16 gives a role's creator; replace
//! large objects the target had before the sync; put a password verifier
//! in a server log or pgrepl's; stop undoing a copy on a role it created
//! that was given something since; deadlock a cutover with a round of
//! large objects. Part of the `carry` test binary.

use super::support::{wait_for, wait_for_phase, Pair};
use super::{large_objects, login, value, LIMIT};

/// Roles as the target has them.
async fn role_names(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT rolname::text FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1",
        &[],
    )
    .await
    .expect("roles")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_a_creator_was_given_admin_on_are_not_pulled_in() {
    let pair = Pair::start();
    // PostgreSQL 16+ makes a non-superuser that creates a role a member of
    // it WITH ADMIN (no INHERIT, no SET): not a membership anyone's
    // privileges follow, so neither the creator nor its other roles move.
    pair.source
        .exec(
            "CREATE ROLE creator LOGIN CREATEROLE;
             SET ROLE creator;
             CREATE ROLE app_owner NOLOGIN;
             CREATE ROLE app_group NOLOGIN;
             CREATE ROLE unrelated NOLOGIN;
             RESET ROLE;
             GRANT app_group TO app_owner;
             CREATE TABLE owned (id int PRIMARY KEY);
             ALTER TABLE owned OWNER TO app_owner;",
        )
        .await;
    let v16 = pair.source.major() >= 16;
    if v16 {
        // The same membership granted twice, by two grantors, with other
        // options: the member has an option when any grant gives it.
        pair.source
            .exec("GRANT app_group TO app_owner WITH INHERIT FALSE, SET FALSE GRANTED BY creator")
            .await;
    }
    let out = pair.run("check", &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("need roles the target lacks"))
        .unwrap_or_else(|| panic!("no missing roles named:\n{out}"));
    assert!(
        line.contains("app_group, app_owner") && !line.contains("creator"),
        "{line}"
    );
    assert!(!line.contains("unrelated"), "{line}");

    let out = pair.run("sync", &["--roles", "copy", "--copy-only"]).await;
    assert!(out.success(), "{out}");
    let t = pair.target.client().await;
    let roles = role_names(&t).await;
    assert!(
        roles.contains(&"app_owner".to_string()) && roles.contains(&"app_group".to_string()),
        "{roles:?}"
    );
    assert!(
        !roles.contains(&"creator".to_string()) && !roles.contains(&"unrelated".to_string()),
        "{roles:?}"
    );
    if v16 && pair.target.major() >= 16 {
        assert_eq!(
            value(
                &t,
                "SELECT string_agg(inherit_option || '/' || set_option, ',') FROM pg_auth_members
                 WHERE roleid = 'app_group'::regrole AND member = 'app_owner'::regrole"
            )
            .await
            .as_deref(),
            Some("true/true"),
            "one membership, with the options any of the source's grants gives"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_already_on_the_target_fail_the_check() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE docs (id int PRIMARY KEY, body oid); SELECT lo_from_bytea(7, 'source');",
        )
        .await;
    pair.target
        .exec("SELECT lo_from_bytea(8, 'the target''s own')")
        .await;
    let out = pair.run("check", &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout
            .contains("the target database already holds 1 large object(s)")
            && out.stdout.contains("lo_unlink"),
        "{out}"
    );
    let out = pair.run("sync", &["--copy-only"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let t = pair.target.client().await;
    assert_eq!(
        value(&t, "SELECT convert_from(lo_get(8), 'UTF8')")
            .await
            .as_deref(),
        Some("the target's own"),
        "the target's large object is still there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_verifiers_reach_neither_the_target_log_nor_pgrepl_logs() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE ROLE app_user LOGIN PASSWORD 'pw-secret';
             CREATE TABLE owned (id int PRIMARY KEY);
             ALTER TABLE owned OWNER TO app_user;",
        )
        .await;
    let verifier = value(
        &pair.source.client().await,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_user'",
    )
    .await
    .expect("a verifier");
    // ALTER SYSTEM refuses to share a query string (an implicit transaction).
    pair.target
        .exec("ALTER SYSTEM SET log_statement = 'all'")
        .await;
    pair.target.exec("SELECT pg_reload_conf()").await;
    wait_for("log_statement = all on the target", LIMIT, || async {
        let c = pair.target.client().await;
        (value(&c, "SHOW log_statement").await.as_deref() == Some("all")).then_some(())
    })
    .await;

    let out = pair
        .run("sync", &["--roles", "copy", "--copy-only", "-vv"])
        .await;
    assert!(out.success(), "{out}");
    let log = std::fs::read_to_string(&pair.target.log).expect("the target's log");
    assert!(
        log.contains("CREATE ROLE \"app_user\""),
        "the target logs statements, so the test can fail"
    );
    // SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey (or md5…): the keys.
    let secret = verifier.split('$').nth(2).unwrap_or(&verifier);
    assert!(!log.contains(secret), "the verifier is in the target's log");
    assert!(
        !out.stderr.contains(secret) && !out.stdout.contains(secret),
        "the verifier is in pgrepl's output"
    );
    login(&pair.target, "app_user", "pw-secret")
        .await
        .expect("the password moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_copy_removes_roles_it_created_even_when_granted_something() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE ROLE app_owner NOLOGIN;
             CREATE TABLE big (id int PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 600000) g;
             ALTER TABLE big OWNER TO app_owner;",
        )
        .await;
    let running = pair.spawn(
        "sync",
        &[
            "--roles",
            "copy",
            "--copy-only",
            "--jobs",
            "1",
            "--chunk-size",
            "0",
        ],
    );
    let t = pair.target.client().await;
    wait_for("the copy of big to be under way", LIMIT, || {
        let t = &t;
        async move {
            t.query_opt(
                "SELECT 1 FROM pgrepl.tables WHERE table_name = 'big' AND state = 'copying'",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|_| ())
        }
    })
    .await;
    running.kill().await;
    // A schema changed in between: the copy cannot be resumed, it starts
    // over (see tests/resume.rs).
    pair.source
        .exec("ALTER TABLE big ADD COLUMN note text")
        .await;
    // Since: the created role was granted something, and owns something,
    // that the copy did not create.
    pair.target
        .exec(
            "GRANT CONNECT ON DATABASE postgres TO app_owner;
             CREATE SCHEMA scratch AUTHORIZATION app_owner;",
        )
        .await;

    let out = pair.run("sync", &["--roles", "copy", "--copy-only"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("starting the copy over"), "{out}");
    assert_eq!(
        value(
            &t,
            "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'big'::regclass"
        )
        .await
        .as_deref(),
        Some("app_owner")
    );
    assert_eq!(
        value(
            &t,
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'scratch'"
        )
        .await
        .as_deref(),
        Some("postgres"),
        "what the role owned was handed to the user cleaning up"
    );
    assert_eq!(
        value(&t, "SELECT count(*)::text FROM big").await.as_deref(),
        Some("600000")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_waits_for_the_carry_round_and_rounds_stand_aside_for_it() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE docs (id int PRIMARY KEY, body oid);
             SELECT lo_from_bytea(1001, 'copied');
             INSERT INTO docs VALUES (1, 1001);",
        )
        .await;
    // Rounds every second, racing the cutover.
    let sync = pair.spawn("sync", &["--carry-interval", "1s"]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    wait_for("the copied large object", LIMIT, || {
        let (s, t) = (&s, &t);
        async move { (large_objects(s).await == large_objects(t).await).then_some(()) }
    })
    .await;

    // Someone holds the carry lock (as a cutover would): rounds skip, and
    // a cutover gives up after --wait with nothing fenced.
    let holder = pair.target.client().await;
    holder
        .execute(
            "SELECT pg_advisory_lock(hashtext('pgrepl carry'), hashtext('pgrepl'))",
            &[],
        )
        .await
        .expect("the carry lock");
    pair.source
        .exec("SELECT lo_from_bytea(1002, 'while held'); INSERT INTO docs VALUES (2, 1002);")
        .await;
    let out = pair.run("cutover", &["--wait", "2s"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("round of large objects"), "{out}");
    assert_eq!(
        value(
            &s,
            "SELECT count(*)::text FROM pg_event_trigger WHERE evtname = 'pgrepl_fence'"
        )
        .await
        .as_deref(),
        Some("0"),
        "the source was not fenced"
    );
    assert_eq!(
        value(
            &t,
            "SELECT count(*)::text FROM pg_largeobject_metadata WHERE oid = 1002"
        )
        .await
        .as_deref(),
        Some("0"),
        "no round ran while the lock was held"
    );
    drop(holder);

    // --terminate: this test's own session on the source is open.
    let out = pair.run("cutover", &["--terminate"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stderr.contains("2 large object(s) exact"), "{out}");
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    let s = pair.source.client().await;
    assert_eq!(large_objects(&s).await, large_objects(&t).await);
}

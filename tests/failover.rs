//! A source that fails over: a PostgreSQL 17+ primary with a streaming
//! standby that keeps pgrepl's failover slot, named to pgrepl by both
//! hosts (`host=a,b target_session_attrs=read-write`). The primary dies
//! (`-m immediate`) under pgbench, the standby is promoted, and the same
//! `pgrepl sync` process follows it: nothing lost, nothing applied twice.
//! Without `synchronized_standby_slots` a lagging standby can be promoted
//! behind what the target already applied: the timeline guard stops the
//! sync, naming both positions, before anything of the new timeline.

mod support;

use std::time::Duration;

use support::{assert_same_data, pgrepl, wait_for, Cluster, ClusterOptions};

const LIMIT: Duration = Duration::from_secs(180);

/// Primary, standby (keeping failover slots), target; `None` (said on
/// stderr) below 17, which has no failover slots.
async fn servers() -> Option<(Cluster, Cluster, Cluster)> {
    servers_from(17, "failover slots").await
}

async fn servers_from(major: u32, what: &str) -> Option<(Cluster, Cluster, Cluster)> {
    let primary = Cluster::start_with(
        "primary",
        support::PgInstall::for_source(),
        ClusterOptions::default(),
    );
    if primary.major() < major {
        eprintln!("skipped: {what} need PostgreSQL {major}+");
        return None;
    }
    let standby =
        Cluster::standby_of(&primary, "standby", "standby_1", ClusterOptions::default()).await;
    let target = Cluster::start("target", support::PgInstall::for_target());
    Some((primary, standby, target))
}

/// Both servers, the primary first, as a user names an HA source.
fn both(primary: &Cluster, standby: &Cluster) -> String {
    format!(
        "host={},{} port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
        primary.socket_dir().display(),
        standby.socket_dir().display(),
        primary.port,
        standby.port
    )
}

/// The standby holds pgrepl's slot, ready to take over.
async fn slot_synced(standby: &Cluster) {
    let ready = "SELECT coalesce((SELECT synced AND NOT temporary AND invalidation_reason IS NULL
                 FROM pg_replication_slots WHERE slot_name = 'pgrepl_pgrepl'), false)";
    wait_for("the standby to have the slot synced", LIMIT, || async {
        (standby.value(ready).await.as_deref() == Some("t")).then_some(())
    })
    .await;
}

/// What the target holds: the end of the last source transaction applied.
async fn applied(target: &Cluster) -> ::pgrepl::Lsn {
    target
        .value("SELECT end_lsn::text FROM pgrepl.applied WHERE sync_name = 'pgrepl'")
        .await
        .and_then(|l| l.parse().ok())
        .unwrap_or(::pgrepl::Lsn::ZERO)
}

async fn caught_up(source: &Cluster, target: &Cluster, sync: &mut pgrepl::Running) {
    let lsn: ::pgrepl::Lsn = source
        .value("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .and_then(|l| l.parse().ok())
        .expect("lsn");
    let sync = std::sync::Mutex::new(sync);
    wait_for("the target to catch up", LIMIT, || async {
        if let Ok(mut s) = sync.lock() {
            s.assert_running();
        }
        (applied(target).await >= lsn).then_some(())
    })
    .await;
}

async fn history_count(c: &Cluster) -> i64 {
    c.value("SELECT count(*) FROM pgbench_history")
        .await
        .and_then(|n| n.parse().ok())
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_failover_of_the_source_is_followed_with_nothing_lost_or_applied_twice() {
    let Some((mut primary, standby, target)) = servers().await else {
        return;
    };
    // Logical walsenders send only what the standby has flushed.
    primary
        .exec("ALTER SYSTEM SET synchronized_standby_slots = 'standby_1'")
        .await;
    primary.exec("SELECT pg_reload_conf()").await;
    support::workload::pgbench_init_keyed(&primary, "postgres").await;
    let source = both(&primary, &standby);
    let sync = pgrepl::spawn(&[
        "sync",
        "--source",
        &source,
        "--target",
        &target.conninfo(),
        "--retry-for",
        "150s",
    ]);
    support::wait_for_phase(&target, "streaming", LIMIT).await;
    slot_synced(&standby).await;
    let check = pgrepl::run(
        &["check", "--source", &source, "--target", &target.conninfo()],
        LIMIT,
    )
    .await;
    assert!(
        check.stdout.contains("synced and ready on"),
        "check says the standby holds the slot: {check}"
    );
    let status = pgrepl::run(
        &[
            "status",
            "--source",
            &source,
            "--target",
            &target.conninfo(),
        ],
        LIMIT,
    )
    .await;
    assert!(
        status
            .stdout
            .contains("failover: a failover slot; synchronized_standby_slots = standby_1")
            && status.stdout.contains("slot synced and ready"),
        "{status}"
    );
    // Under load: the primary dies, the standby is promoted.
    let mut load = support::workload::pgbench_load(&primary, "postgres", 60);
    let moved = applied(&target).await;
    wait_for("changes to stream", LIMIT, || async {
        (applied(&target).await > moved).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    primary.stop_mode("immediate");
    let _ = load.kill().await;
    standby.promote().await;
    // More writes on the new primary, then the target catches up with it.
    let mut load = support::workload::pgbench_load(&standby, "postgres", 3);
    let _ = load.wait().await;
    let mut sync = sync;
    caught_up(&standby, &target, &mut sync).await;
    let said = sync.output_so_far();
    assert!(
        said.contains("following its new timeline"),
        "the sync says it followed the failover: {said}"
    );
    let rows = assert_same_data(&standby.client().await, &target.client().await).await;
    assert!(rows > 100_000, "{rows}");
    assert_eq!(history_count(&standby).await, history_count(&target).await);
    sync.signal(libc::SIGTERM);
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_promoted_behind_the_target_stops_the_sync_naming_both_positions() {
    let Some((mut primary, mut standby, target)) = servers().await else {
        return;
    };
    primary
        .exec("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g")
        .await;
    let source = both(&primary, &standby);
    let check = pgrepl::run(
        &["check", "--source", &source, "--target", &target.conninfo()],
        LIMIT,
    )
    .await;
    assert!(
        check.stdout.contains("synchronized_standby_slots"),
        "check warns that a promoted standby could be behind: {check}"
    );
    let sync = pgrepl::spawn(&[
        "sync",
        "--source",
        &source,
        "--target",
        &target.conninfo(),
        "--retry-for",
        "150s",
    ]);
    support::wait_for_phase(&target, "streaming", LIMIT).await;
    slot_synced(&standby).await;
    // The standby stops receiving; the primary goes on, and the target
    // applies what the standby never gets.
    standby.stop();
    primary
        .exec("INSERT INTO t SELECT g, 'lost in the failover' FROM generate_series(101, 200) g")
        .await;
    let written: ::pgrepl::Lsn = primary
        .value("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .and_then(|l| l.parse().ok())
        .expect("lsn");
    wait_for(
        "the target to apply what the standby lacks",
        LIMIT,
        || async { (applied(&target).await >= written).then_some(()) },
    )
    .await;
    let target_at = applied(&target).await;
    primary.stop_mode("immediate");
    standby.start_again();
    standby.promote().await;
    standby
        .exec("INSERT INTO t VALUES (1000, 'on the new timeline')")
        .await;
    let out = sync.wait(LIMIT).await;
    assert!(
        !out.success(),
        "the sync went on past a lost failover: {out}"
    );
    let error = out.error_line();
    assert!(
        error.contains(&target_at.to_string())
            && error.contains("runs timeline 2, which left timeline 1 at"),
        "the error names the target's position and the switch: {error}"
    );
    let seen = target.value("SELECT count(*) FROM t WHERE id = 1000").await;
    assert_eq!(
        seen.as_deref(),
        Some("0"),
        "something of the new timeline was applied"
    );
}

/// `--source-standby`: the slot made on a standby (PostgreSQL 16+), the
/// copy read there under its exported snapshot, the changes decoded there;
/// the primary only publishes and captures DDL. Every type of the fidelity
/// fixture, DDL while streaming; the target ends equal to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoding_on_a_standby_ends_equal_to_the_primary() {
    let Some((primary, standby, target)) = servers_from(12, "standbys").await else {
        return;
    };
    let refused = |standby: String| {
        let (primary, target) = (primary.conninfo(), target.conninfo());
        async move {
            let out = pgrepl::run(
                &[
                    "check",
                    "--source",
                    &primary,
                    "--source-standby",
                    &standby,
                    "--target",
                    &target,
                ],
                LIMIT,
            )
            .await;
            assert!(!out.success(), "{out}");
            out.stdout
        }
    };
    // The primary itself is no standby to decode on.
    let said = refused(primary.conninfo()).await;
    assert!(said.contains("is not a standby"), "{said}");
    if primary.major() < 16 {
        let said = refused(standby.conninfo()).await;
        assert!(said.contains("cannot decode on a standby"), "{said}");
        return;
    }
    primary.exec(include_str!("../fixtures/fidelity.sql")).await;
    let ends = [
        "--source",
        &primary.conninfo(),
        "--source-standby",
        &standby.conninfo(),
        "--target",
        &target.conninfo(),
    ]
    .map(String::from);
    let with = |cmd: &str, extra: &[&str]| -> Vec<String> {
        std::iter::once(cmd.to_string())
            .chain(ends.iter().cloned())
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| async move {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        pgrepl::run(&a, LIMIT).await
    };
    let check = run(with("check", &[])).await;
    assert!(
        check.success() && check.stdout.contains("decoding on standby"),
        "{check}"
    );
    let args = with("sync", &[]);
    let mut sync = pgrepl::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    support::wait_for_phase(&target, "streaming", LIMIT).await;
    let slot = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgrepl_pgrepl'";
    assert_eq!(
        standby.value(slot).await.as_deref(),
        Some("1"),
        "the slot is on the standby"
    );
    assert_eq!(
        primary.value(slot).await.as_deref(),
        Some("0"),
        "no slot on the primary"
    );
    primary
        .exec(
            "CREATE TEMP TABLE tmp AS SELECT * FROM fidelity.types;
             UPDATE tmp SET id = id + 100;
             INSERT INTO fidelity.types SELECT * FROM tmp;
             DELETE FROM fidelity.types WHERE id = 4;
             UPDATE fidelity.big SET small = 'changed ' || id;
             ALTER TABLE fidelity.types ADD COLUMN added text DEFAULT 'new column';
             CREATE TABLE fidelity.later (id int PRIMARY KEY, v text);
             INSERT INTO fidelity.later SELECT g, md5(g::text) FROM generate_series(1, 500) g;",
        )
        .await;
    caught_up(&primary, &target, &mut sync).await;
    let (p, t) = (primary.client().await, target.client().await);
    support::schema::assert_same_shape(&p, &t).await;
    let rows = assert_same_data(&p, &t).await;
    assert!(rows > 500, "{rows}");
    let verify = run(with("verify", &[])).await;
    assert!(verify.success(), "{verify}");
    let status = run(with("status", &[])).await;
    assert!(
        status.success() && status.stdout.contains("streaming (pid"),
        "{status}"
    );
    sync.signal(libc::SIGTERM);
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    let down = run(with("teardown", &[])).await;
    assert!(
        down.success() && down.stdout.contains("source's standby: replication slot"),
        "{down}"
    );
    assert_eq!(standby.value(slot).await.as_deref(), Some("0"));
}

/// Without a failover slot (PostgreSQL 12–16, or `--failover-slot false`)
/// the promoted standby has no slot: the sync stops and says so, rather
/// than retrying for ever or starting anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_failover_slot_a_failover_stops_the_sync_with_what_to_do() {
    let Some((mut primary, standby, target)) = servers_from(12, "standbys").await else {
        return;
    };
    primary
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
        .await;
    let source = both(&primary, &standby);
    let check = pgrepl::run(
        &[
            "check",
            "--source",
            &source,
            "--target",
            &target.conninfo(),
            "--failover-slot",
            "false",
        ],
        LIMIT,
    )
    .await;
    assert!(check.success(), "{check}");
    assert!(
        check.stdout.contains("WARN   source failover"),
        "check warns that a failover loses the sync: {check}"
    );
    let sync = pgrepl::spawn(&[
        "sync",
        "--source",
        &source,
        "--target",
        &target.conninfo(),
        "--failover-slot",
        "false",
        "--retry-for",
        "150s",
    ]);
    support::wait_for_phase(&target, "streaming", LIMIT).await;
    primary.stop_mode("immediate");
    standby.promote().await;
    let out = sync.wait(LIMIT).await;
    assert!(!out.success(), "{out}");
    assert!(
        out.error_line()
            .contains("does not exist on the server now answering"),
        "{out}"
    );
}

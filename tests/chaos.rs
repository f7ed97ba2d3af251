//! pgrepl killed with SIGKILL at random moments under a pgbench load, ten
//! times, then run to the end: the target must equal the source, history
//! rows included (pgbench_history has no key: a duplicate or a loss would
//! show in its count).

mod support;

use std::process::Stdio;
use std::time::Duration;

use rand::Rng;
use support::{assert_same_data, pgrepl, Pair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_pgbench_survives_ten_sigkills() {
    let pair = Pair::start();
    let pgbench = support::pg::pgbench();
    let conn = [
        "-h",
        &pair.source.socket_dir().display().to_string(),
        "-p",
        &pair.source.port.to_string(),
        "-U",
        "postgres",
    ]
    .map(String::from);
    let init = tokio::process::Command::new(&pgbench)
        .args(&conn)
        .args(["-i", "-s", "2", "-q", "postgres"])
        .output()
        .await
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // pgbench_history has no key: give it one so UPDATE/DELETE (none here)
    // would keep working once published, as `pgrepl check` demands.
    pair.source
        .exec("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        .await;
    let mut load = tokio::process::Command::new(&pgbench)
        .args(&conn)
        .args(["-c", "4", "-j", "2", "-T", "600", "-n", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pgbench");

    let args: Vec<String> = std::iter::once("sync".to_string())
        .chain(pair.args())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut rng = rand::rng();
    let target = pair.target.client().await;
    // What the target has applied: the origin's position (0/0 before).
    let applied = "SELECT coalesce((SELECT s.remote_lsn FROM pg_replication_origin_status s
                        JOIN pg_replication_origin o ON o.roident = s.local_id
                        WHERE o.roname = 'pgrepl_pgrepl'), '0/0')::text";
    for round in 0..10 {
        let before: String = target
            .query_one(applied, &[])
            .await
            .expect("origin position")
            .get(0);
        let running = pgrepl::spawn(&args);
        // Round 0 dies in the middle of the copy; each other one once this
        // very run has applied something of the stream, at a random moment
        // after that.
        if round == 0 {
            support::wait_for_phase(&pair.target, "copying", Duration::from_secs(120)).await;
        } else {
            let moved = format!("SELECT ({applied})::pg_lsn > $1::text::pg_lsn");
            support::wait_for(
                "this run to apply changes",
                Duration::from_secs(120),
                || {
                    let (t, moved, before) = (&target, &moved, &before);
                    async move {
                        let m: bool = t.query_one(moved, &[before]).await.ok()?.get(0);
                        m.then_some(())
                    }
                },
            )
            .await;
        }
        let after = Duration::from_millis(rng.random_range(0..2500));
        tokio::time::sleep(after).await;
        running.kill().await;
        eprintln!(
            "round {round}: killed {after:?} after it started working (origin was at {before})"
        );
    }
    load.kill().await.expect("stop pgbench");
    let _ = load.wait().await;

    let mut a = args.clone();
    a.push("--until-caught-up");
    let out = pgrepl::run(&a, Duration::from_secs(300)).await;
    assert!(out.success(), "{out}");
    let rows = assert_same_data(&pair.source.client().await, &pair.target.client().await).await;
    assert!(rows > 200_000, "{rows}");
    let history = |c: &support::Cluster| {
        let c = c.conninfo();
        async move {
            let (client, conn) = tokio_postgres::connect(&c, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            client
                .query_one("SELECT count(*) FROM pgbench_history", &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    let (s, t) = (history(&pair.source).await, history(&pair.target).await);
    assert_eq!(s, t, "pgbench_history differs");
    assert!(s > 1000, "the load wrote too little to prove anything: {s}");
}

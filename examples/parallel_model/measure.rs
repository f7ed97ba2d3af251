//! The target's costs, measured on the model's server as an apply
//! connection runs them: its settings, prepared statements pipelined on
//! one connection (tokio-postgres sends a Sync after each, pgrepl one per
//! batch: single statements come out a little dearer here), rows of
//! pgbench's accounts at random keys as in the traces. What is measured is
//! the backend's CPU time (its own core's worth of work, whatever else
//! runs on the machine), and the round trip's elapsed time (the least of
//! three). A warm-up round, then the median of three.

use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};

use crate::sim::Costs;
use crate::support::Cluster;
use crate::trace::cpu_of;

const ROUNDS: u64 = 3;

/// What one round measures, in seconds.
#[derive(Clone, Copy, Default)]
struct Round {
    rtt: f64,
    single_update: f64,
    single_insert: f64,
    set_row: f64,
    set_statement: f64,
    copy_row: f64,
    commit: f64,
    commit_baton: f64,
}

pub async fn measure(c: &Cluster) -> Costs {
    let client = c.client().await;
    client
        .batch_execute(
            "SET session_replication_role = replica; SET synchronous_commit = off;
             SET enable_hashjoin = off; SET enable_mergejoin = off; SET jit = off;
             CREATE TABLE pm_ins (id bigint PRIMARY KEY, v text NOT NULL);
             CREATE TABLE pm_applied (name text PRIMARY KEY, xid bigint, end_lsn pg_lsn);
             SELECT pg_replication_origin_create('pm');",
        )
        .await
        .expect("set up the measurements");
    let accounts: u64 = c
        .value("SELECT count(*) FROM pgbench_accounts")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rounds = Vec::new();
    let mut next_id = 0;
    for round in 0..=ROUNDS {
        let r = one_round(&client, accounts, round, &mut next_id).await;
        if round > 0 {
            rounds.push(r);
        }
    }
    let med = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (update, set_update) = (med(|r| r.single_update), med(|r| r.set_row));
    Costs {
        // The least disturbed: other work on the machine only adds to it.
        rtt: rounds.iter().map(|r| r.rtt).fold(f64::MAX, f64::min),
        // Deletes as updates; a TRUNCATE 2 ms (none in the traces).
        single: [med(|r| r.single_insert), update, update, 2e-3],
        set_row: [med(|r| r.copy_row), set_update, set_update, 2e-3],
        set_statement: med(|r| r.set_statement),
        commit: med(|r| r.commit),
        commit_baton: med(|r| r.commit_baton),
        ..Costs::default()
    }
}

async fn one_round(
    client: &tokio_postgres::Client,
    accounts: u64,
    round: u64,
    next_id: &mut i64,
) -> Round {
    let mut r = Round::default();
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    // The backend's CPU seconds so far.
    let cpu = || cpu_of(backend).expect("the backend's CPU time");
    let per = |since: f64, n: u64| (cpu() - since) / n as f64;
    // Distinct accounts within a round, others each round.
    let aid = |i: u64| ((i * 7919 + round * 104_729) % accounts) as i32 + 1;
    let one = client.prepare("SELECT 1").await.expect("prepare");
    let t = Instant::now();
    for _ in 0..2000 {
        client.query_one(&one, &[]).await.expect("SELECT 1");
    }
    r.rtt = t.elapsed().as_secs_f64() / 2000.0;
    let filler = " ".repeat(84);
    let upd = client
        .prepare("UPDATE pgbench_accounts SET bid = $2, abalance = $3, filler = $4 WHERE aid = $1")
        .await
        .expect("prepare");
    client.batch_execute("BEGIN").await.expect("BEGIN");
    let t = cpu();
    futures_util::stream::iter((0..10_000u64).map(|i| {
        let (upd, filler) = (&upd, &filler);
        async move {
            client
                .execute(upd, &[&aid(i), &1i32, &(i as i32), filler])
                .await
        }
    }))
    .buffered(256)
    .try_collect::<Vec<_>>()
    .await
    .expect("single updates");
    r.single_update = per(t, 10_000);
    let ins = client
        .prepare("INSERT INTO pm_ins VALUES ($1, $2)")
        .await
        .expect("prepare");
    let first = *next_id;
    *next_id += 10_000;
    let t = cpu();
    futures_util::stream::iter((first..first + 10_000).map(|id| {
        let ins = &ins;
        async move {
            client
                .execute(ins, &[&id, &"8f14e45fceea167a5a36dedd4bea2543"])
                .await
        }
    }))
    .buffered(256)
    .try_collect::<Vec<_>>()
    .await
    .expect("single inserts");
    r.single_insert = per(t, 10_000);
    let set = client
        .prepare(
            "UPDATE pgbench_accounts a SET bid = v.bid, abalance = v.abalance, filler = v.filler
             FROM unnest($1::int4[], $2::int4[], $3::int4[], $4::text[]) AS v(aid, bid, abalance, filler)
             WHERE a.aid = v.aid",
        )
        .await
        .expect("prepare");
    let set_time = |n: u64, start: u64| {
        let ids: Vec<i32> = (start..start + n).map(aid).collect();
        let n = n as usize;
        let (ones, vals, fill) = (vec![1i32; n], vec![7i32; n], vec![filler.clone(); n]);
        let set = &set;
        async move {
            let t = cpu();
            client
                .execute(set, &[&ids, &ones, &vals, &fill])
                .await
                .expect("set update");
            cpu() - t
        }
    };
    let big = set_time(5000, 20_000).await + set_time(5000, 30_000).await;
    r.set_row = big / 10_000.0;
    let mut small = 0.0;
    for k in 0..20 {
        small += set_time(16, 40_000 + k * 16).await;
    }
    r.set_statement = (small / 20.0 - 16.0 * r.set_row).max(0.0);
    let mut data = Vec::new();
    for id in *next_id..*next_id + 50_000 {
        data.extend_from_slice(format!("{id}\t{:032x}\n", id * 2_654_435_761).as_bytes());
    }
    *next_id += 50_000;
    let t = cpu();
    let sink = client
        .copy_in("COPY pm_ins (id, v) FROM STDIN")
        .await
        .expect("COPY");
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from(data)).await.expect("COPY data");
    sink.finish().await.expect("COPY end");
    r.copy_row = per(t, 50_000);
    client.batch_execute("COMMIT").await.expect("COMMIT");
    // The commit step: the ledger's upsert, the origin's position, COMMIT,
    // in one round trip (added to the CPU); passing the origin adds its
    // setup and reset.
    let ledger = "INSERT INTO pm_applied VALUES ('pm', 1, '0/1') ON CONFLICT (name)
                  DO UPDATE SET xid = excluded.xid, end_lsn = excluded.end_lsn;
                  SELECT pg_replication_origin_xact_setup('0/1', now());";
    let commit_step = |sql: String| async move {
        let t = cpu();
        for _ in 0..500 {
            client.batch_execute(&sql).await.expect("commit step");
        }
        per(t, 500) + r.rtt
    };
    client
        .batch_execute("SELECT pg_replication_origin_session_setup('pm')")
        .await
        .expect("take the origin");
    r.commit = commit_step(format!("BEGIN; {ledger} COMMIT;")).await;
    client
        .batch_execute("SELECT pg_replication_origin_session_reset()")
        .await
        .expect("give the origin back");
    r.commit_baton = commit_step(format!(
        "BEGIN; SELECT pg_replication_origin_session_setup('pm'); {ledger} COMMIT;
         SELECT pg_replication_origin_session_reset();"
    ))
    .await;
    let us = |s: f64| (s * 1e7).round() / 10.0;
    eprintln!(
        "parallel_model: costs round {round} (us): rtt {}, update {}, insert {}, set row {}, set statement {}, COPY row {}, commit {}, passing the origin {}",
        us(r.rtt),
        us(r.single_update),
        us(r.single_insert),
        us(r.set_row),
        us(r.set_statement),
        us(r.copy_row),
        us(r.commit),
        us(r.commit_baton)
    );
    r
}

//! Watching a sync, against real servers: `/metrics` parsed by a
//! Prometheus text-format parser with the lag falling to zero after a
//! burst, `/healthz` and `/status`; the status page in headless Chromium
//! (phase and tables, screenshot under target/observe/); a lost slot makes
//! the next sync refuse; `tail --temporary` prints an INSERT, an UPDATE
//! with its old key, a DELETE and a DDL record, and leaves nothing behind.

mod support;

use std::time::Duration;

use support::http::{get, listening};
use support::{pgrepl, wait_for, wait_for_phase, ClusterOptions, Pair};

const LIMIT: Duration = Duration::from_secs(240);

fn sample(scrape: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

async fn scrape(addr: &str) -> Option<prometheus_parse::Scrape> {
    let (code, body) = get(addr, "/metrics").await?;
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Some(prometheus_parse::Scrape::parse(lines).expect("a valid Prometheus text exposition"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_the_page_while_a_burst_comes_and_goes() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE events (id bigint PRIMARY KEY, payload text);
               INSERT INTO events SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
        )
        .await;
    let sync = pair.spawn("sync", &["--listen", "127.0.0.1:0"]);
    let addr = listening(&sync).await;
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let m = scrape(&addr).await.expect("metrics");
    assert_eq!(
        m.samples
            .iter()
            .find(|s| s.metric == "pgrepl_phase" && s.labels.get("phase") == Some("streaming"))
            .map(|s| &s.value),
        Some(&prometheus_parse::Value::Gauge(1.0)),
        "phase streaming"
    );
    assert!(m
        .samples
        .iter()
        .any(|s| s.metric == "pgrepl_table_rows_copied"
            && s.labels.get("table") == Some("public.events")));
    assert!(
        m.samples
            .iter()
            .all(|s| s.labels.get("sync") == Some("pgrepl")),
        "every metric names the sync"
    );
    let before = sample(&m, "pgrepl_applied_rows_total").unwrap_or(0.0);

    // A burst: the lag rises, then falls back to zero.
    let burst = tokio::spawn({
        let c = pair.source.client().await;
        async move {
            for i in 0..10 {
                c.batch_execute(&format!(
                    "INSERT INTO events SELECT g, repeat(md5(g::text), 8) FROM generate_series({0} + 1, {0} + 30000) g",
                    100_000 + i * 30_000
                ))
                .await
                .expect("burst");
            }
        }
    });
    let mut most = 0.0f64;
    loop {
        if let Some(m) = scrape(&addr).await {
            most = most.max(sample(&m, "pgrepl_lag_bytes").unwrap_or(0.0));
        }
        if burst.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = pair.target.client().await;
    wait_for(
        "the burst on the target and the lag back at zero",
        LIMIT,
        || {
            let (addr, t) = (&addr, &t);
            async move {
                let n: i64 = t
                    .query_one("SELECT count(*) FROM events", &[])
                    .await
                    .ok()?
                    .get(0);
                let m = scrape(addr).await?;
                let lag = sample(&m, "pgrepl_lag_bytes")?;
                let rows = sample(&m, "pgrepl_applied_rows_total")?;
                (n == 320_000 && lag == 0.0 && rows >= before + 300_000.0).then_some(())
            }
        },
    )
    .await;
    assert!(most > 0.0, "the lag never showed during the burst");
    eprintln!("largest lag seen during the burst: {most} bytes");

    if pair.source.major() >= 13 {
        wait_for("the slot's wal_status in the metrics", LIMIT, || {
            let addr = &addr;
            async move {
                let m = scrape(addr).await?;
                m.samples
                    .iter()
                    .any(|s| {
                        s.metric == "pgrepl_slot_wal_status"
                            && s.labels.get("wal_status") == Some("reserved")
                            && s.value == prometheus_parse::Value::Gauge(1.0)
                    })
                    .then_some(())
            }
        })
        .await;
    }
    let (code, body) = get(&addr, "/healthz").await.expect("healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(&addr, "/status").await.expect("status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(status["phase"], "streaming", "{body}");
    assert_eq!(status["tables"][0]["table"], "public.events", "{body}");
    assert_eq!(status["cutover"]["source_fenced"], false, "{body}");

    // The page, as a browser renders it.
    page_in_chromium(&addr).await;

    sync.signal(libc::SIGINT);
    assert!(sync.wait(LIMIT).await.success());
}

/// Loads the page in headless Chromium; checks what it shows and keeps a
/// screenshot under target/observe/.
async fn page_in_chromium(addr: &str) {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(chromium) = chromium else {
        assert!(
            std::env::var_os("PGREPL_REQUIRE_CHROMIUM").is_none(),
            "PGREPL_REQUIRE_CHROMIUM is set but no chromium was found (apt install chromium)"
        );
        eprintln!("skipped the page check: no chromium (apt install chromium)");
        return;
    };
    let url = format!("http://{addr}/");
    let common = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ];
    let dom = tokio::process::Command::new(chromium)
        .args(common)
        .args(["--virtual-time-budget=4000", "--dump-dom", &url])
        .output()
        .await
        .expect("chromium --dump-dom");
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains("id=\"phase\" class=\"phase streaming\">streaming<"),
        "{html}"
    );
    assert!(html.contains("<td>public.events</td>"), "{html}");
    assert!(html.contains("<td>copied</td>"), "{html}");
    let dir = support::pg::repo_root().join("target/observe");
    std::fs::create_dir_all(&dir).expect("target/observe");
    let shot = dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::process::Command::new(chromium)
        .args(common)
        .args(["--virtual-time-budget=4000", "--window-size=1280,900"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .await
        .expect("chromium --screenshot");
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_makes_the_next_sync_refuse() {
    let opts = ClusterOptions {
        settings: vec![
            "max_slot_wal_keep_size = 1MB".into(),
            "max_wal_size = 32MB".into(),
            "min_wal_size = 32MB".into(),
        ],
        ..Default::default()
    };
    let pair = Pair::start_with(opts, ClusterOptions::default());
    if pair.source.major() < 13 {
        eprintln!("skipped: PostgreSQL 12 has no max_slot_wal_keep_size");
        return;
    }
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    assert!(pair.run("sync", &["--copy-only"]).await.success());
    // The sync is stopped; a burst and checkpoints push the slot past its limit.
    let c = pair.source.client().await;
    wait_for("the slot to be lost", LIMIT, || {
        let c = &c;
        async move {
            c.batch_execute("INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(2, 20000) g ON CONFLICT (id) DO UPDATE SET v = excluded.v || 'y'; CHECKPOINT; SELECT pg_switch_wal(); CHECKPOINT;")
                .await
                .ok()?;
            let s: String = c
                .query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgrepl_pgrepl'", &[])
                .await
                .ok()?
                .get(0);
            (s == "lost").then_some(())
        }
    })
    .await;
    let out = pair.run("status", &[]).await;
    assert!(out.stdout.contains("LOST"), "{out}");
    let out = pair.run("sync", &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.error_line().contains("lost WAL it needed"), "{out}");
    assert!(out.error_line().contains("teardown"), "{out}");

    // The same refusal as a JSON log line, with the stable field names the
    // README lists.
    let out = pair.run("sync", &["--log-format", "json"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let error = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "ERROR" && v["fields"]["message"] == "the command failed")
        .unwrap_or_else(|| panic!("no JSON error line: {out}"));
    let f = &error["fields"];
    assert_eq!(f["sync"], "pgrepl", "{error}");
    assert!(
        f["phase"].is_string() && f["lsn"].as_str().is_some_and(|l| l.contains('/')),
        "{error}"
    );
    assert!(
        f["error"]
            .as_str()
            .unwrap_or_default()
            .contains("lost WAL it needed"),
        "{error}"
    );
    assert!(error["timestamp"].is_string(), "{error}");
}

async fn tail_until(tail: &pgrepl::Running, kinds: &[&str]) -> Vec<serde_json::Value> {
    wait_for("the tailed records", LIMIT, || async {
        let out = tail.stdout.lock().expect("stdout").clone();
        let records: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        kinds
            .iter()
            .all(|k| records.iter().any(|r| r["kind"] == *k))
            .then_some(records)
    })
    .await
}

async fn tailing(tail: &pgrepl::Running) {
    wait_for("tail to start", LIMIT, || async {
        tail.output_so_far().contains("tailing").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_changes_and_ddl_and_leaves_nothing_behind() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), tags jsonb, ok boolean);")
        .await;
    let source = pair.source.conninfo();

    // A pattern matching nothing (the schema forgotten): one error line,
    // nothing created.
    let out = pgrepl::run(
        &[
            "tail",
            "--source",
            &source,
            "--temporary",
            "--include",
            "sales.items",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.error_line().contains("matches no table"), "{out}");
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_publication")
            .await,
        Some("0".into())
    );

    // No sync yet: tail makes its own publication and drops it at the end.
    let tail = pgrepl::spawn(&[
        "tail",
        "--source",
        &source,
        "--temporary",
        "--include",
        "public.items",
    ]);
    tailing(&tail).await;
    pair.source
        .exec("CREATE TABLE other (x int PRIMARY KEY); INSERT INTO other VALUES (1);")
        .await;
    pair.source
        .exec("INSERT INTO items VALUES (1, 'mug', 9.90, '{\"a\": 1}', true)")
        .await;
    let records = tail_until(&tail, &["insert", "commit"]).await;
    // A transaction that changes nothing selected prints nothing: the
    // first record is the begin of the INSERT's transaction.
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(kinds, ["begin", "insert", "commit"], "{records:?}");
    let insert = records
        .iter()
        .find(|r| r["kind"] == "insert")
        .expect("insert");
    assert_eq!(insert["table"], "public.items");
    assert_eq!(insert["key"]["id"], 1);
    assert_eq!(insert["new"]["price"], "9.90");
    assert_eq!(insert["new"]["tags"]["a"], 1);
    assert_eq!(insert["new"]["ok"], true);
    assert_eq!(insert["types"]["price"], "numeric");
    tail.signal(libc::SIGINT);
    assert!(tail.wait(LIMIT).await.success());
    let c = pair.source.client().await;
    let left: i64 = c
        .query_one("SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)", &[])
        .await
        .expect("left")
        .get(0);
    assert_eq!(left, 0, "tail left a slot or a publication behind");

    // With a sync's publication (and its DDL capture): every kind.
    assert!(pair.run("sync", &["--copy-only"]).await.success());
    let tail = pgrepl::spawn(&["tail", "--source", &source, "--temporary"]);
    tailing(&tail).await;
    pair.source
        .exec(
            "INSERT INTO items VALUES (2, 'pen', 1.50, NULL, false);
               UPDATE items SET id = 3, name = 'pencil' WHERE id = 2;
               DELETE FROM items WHERE id = 1;
               ALTER TABLE items ADD COLUMN note text;",
        )
        .await;
    let records = tail_until(&tail, &["insert", "update", "delete", "ddl", "commit"]).await;
    let update = records
        .iter()
        .find(|r| r["kind"] == "update")
        .expect("update");
    assert_eq!(update["old_key"]["id"], 2, "{update}");
    assert_eq!(update["new"]["id"], 3, "{update}");
    let delete = records
        .iter()
        .find(|r| r["kind"] == "delete")
        .expect("delete");
    assert_eq!(delete["key"]["id"], 1);
    let ddl = records.iter().find(|r| r["kind"] == "ddl").expect("ddl");
    assert!(
        ddl["ddl"]
            .as_str()
            .unwrap_or_default()
            .contains("ADD COLUMN note"),
        "{ddl}"
    );
    assert!(
        records.iter().all(|r| r["lsn"].is_string()),
        "every record has an LSN"
    );
    tail.signal(libc::SIGINT);
    assert!(tail.wait(LIMIT).await.success());
    // The server drops a temporary slot when its walsender has noticed
    // the connection close.
    wait_for("the temporary slot gone", LIMIT, || {
        let c = &c;
        async move {
            let slots: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%tail%'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (slots == 0).then_some(())
        }
    })
    .await;

    // An existing slot is read without moving it.
    let confirmed = |c: tokio_postgres::Client| async move {
        c.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgrepl_pgrepl'", &[])
            .await
            .expect("slot")
            .get::<_, String>(0)
    };
    let before = confirmed(pair.source.client().await).await;
    let tail = pgrepl::spawn(&["tail", "--source", &source, "--slot", "pgrepl_pgrepl"]);
    let records = tail_until(&tail, &["insert", "update", "delete", "ddl"]).await;
    assert!(records
        .iter()
        .any(|r| r["kind"] == "insert" && r["key"]["id"] == 2));
    tail.signal(libc::SIGINT);
    assert!(tail.wait(LIMIT).await.success());
    assert_eq!(
        confirmed(pair.source.client().await).await,
        before,
        "tail moved the slot"
    );
}

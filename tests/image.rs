//! pgrepl's container image, run as an operator runs it: `docker run
//! --network host IMAGE check`, then `sync --until-caught-up` (a copy),
//! changes and DDL on the source, `sync --until-caught-up` again (the
//! stream), `teardown`, each from inside the image with a read-only root
//! filesystem (as the Kubernetes example runs it) and the conninfo in the
//! environment; source and target compared with the independent checksum
//! after each sync.
//!
//! The image is the one `PGREPL_IMAGE` names (`scripts/test` builds it with
//! `scripts/image --binary` for one pair and sets it). Without it the test
//! is skipped with a note, unless `PGREPL_REQUIRE_IMAGE` is set (CI): then
//! it fails, as it does when the image or Docker is missing.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use support::{assert_same_data, Pair, SUPERUSER_PASSWORD};

const LIMIT: Duration = Duration::from_secs(240);

/// The image under test, or `None` to skip.
fn image_under_test() -> Option<String> {
    match std::env::var("PGREPL_IMAGE") {
        Ok(image) if !image.is_empty() => Some(image),
        _ => {
            assert!(
                std::env::var_os("PGREPL_REQUIRE_IMAGE").is_none(),
                "PGREPL_REQUIRE_IMAGE is set but PGREPL_IMAGE names no image (scripts/image --binary target/debug/pgrepl pgrepl:test)"
            );
            eprintln!(
                "skipped: PGREPL_IMAGE names no image (scripts/test sets it on the docker backend)"
            );
            None
        }
    }
}

/// What one `docker run` printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

static RUNS: AtomicU32 = AtomicU32::new(0);

/// `docker run --rm --network host --read-only --tmpfs /tmp IMAGE ARGS`,
/// `env` passed through the environment (never on a command line),
/// `entrypoint` replacing pgrepl when given. Removed if it outlives LIMIT.
async fn docker_run(
    image: &str,
    entrypoint: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let name = format!(
        "pgrepl-image-test-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::SeqCst)
    );
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(["run", "--rm", "--name", &name, "--network", "host"])
        .args(["--read-only", "--tmpfs", "/tmp"])
        .args(["--label", &format!("pgrepl-test={}", std::process::id())]);
    for (k, v) in env {
        cmd.args(["-e", k]).env(k, v);
    }
    if let Some(e) = entrypoint {
        cmd.args(["--entrypoint", e]);
    }
    cmd.arg(image).args(args).kill_on_drop(true);
    let out = match tokio::time::timeout(LIMIT, cmd.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("docker run (is Docker installed?): {e}")),
        Err(_) => {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &name])
                .output();
            panic!("docker run {image} {args:?} did not end within {LIMIT:?}");
        }
    };
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_image_checks_syncs_and_tears_down() {
    let Some(image) = image_under_test() else {
        return;
    };
    support::init_logs();
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        present,
        "image {image} is missing (or no Docker engine answers): scripts/image --binary target/debug/pgrepl {image}"
    );

    // What the image is: pgrepl as the entrypoint, naming its commit and
    // majors; a user that is not root; pg_dump 18 (dumps sources 12 to 18)
    // with TLS compiled in.
    let version = docker_run(&image, None, &["--version"], &[]).await;
    assert_eq!(version.code, Some(0), "{version}");
    assert!(version.stdout.contains("commit: "), "{version}");
    assert!(
        version.stdout.contains("PostgreSQL sources: 12 to 18"),
        "{version}"
    );
    let uid = docker_run(&image, Some("id"), &["-u"], &[]).await;
    assert_eq!(uid.stdout.trim(), "10001", "{uid}");
    let pg_dump = docker_run(&image, Some("pg_dump"), &["--version"], &[]).await;
    assert!(
        pg_dump.stdout.starts_with("pg_dump (PostgreSQL) 18."),
        "{pg_dump}"
    );

    let pair = Pair::start();
    let conninfo =
        |c: &support::Cluster| c.tcp_conninfo("postgres", SUPERUSER_PASSWORD, "postgres");
    let (source, target) = (conninfo(&pair.source), conninfo(&pair.target));
    let env = [
        ("PGREPL_SOURCE", source.as_str()),
        ("PGREPL_TARGET", target.as_str()),
    ];

    // The test servers speak no TLS: a client built without it would say
    // so before asking.
    let tls = docker_run(
        &image,
        Some("psql"),
        &[&format!("{target} sslmode=require"), "-c", "SELECT 1"],
        &[],
    )
    .await;
    assert!(tls.stderr.contains("server does not support SSL"), "{tls}");

    pair.source
        .exec(include_str!("../fixtures/fidelity.sql"))
        .await;
    pair.source
        .exec(
            "CREATE TABLE shipped (id int PRIMARY KEY, v text, n numeric);
             INSERT INTO shipped SELECT g, md5(g::text), g / 7.0 FROM generate_series(1, 5000) g;",
        )
        .await;

    let check = docker_run(&image, None, &["check"], &env).await;
    assert_eq!(check.code, Some(0), "check in the image:\n{check}");

    let sync = docker_run(&image, None, &["sync", "--until-caught-up"], &env).await;
    assert_eq!(sync.code, Some(0), "sync in the image:\n{sync}");
    let (src, tgt) = (pair.source.client().await, pair.target.client().await);
    let rows = assert_same_data(&src, &tgt).await;
    assert!(rows > 5000, "{rows} rows compared");

    // Changes and DDL the slot keeps while no sync runs: the second run
    // streams them.
    pair.source
        .exec(
            "UPDATE shipped SET v = upper(v) WHERE id % 3 = 0;
             DELETE FROM shipped WHERE id % 10 = 0;
             INSERT INTO shipped SELECT g, 'late', NULL FROM generate_series(5001, 6000) g;
             ALTER TABLE shipped ADD COLUMN added timestamptz DEFAULT '2024-01-02 03:04:05+00';
             CREATE TABLE after_copy (k text PRIMARY KEY, payload jsonb);
             INSERT INTO after_copy SELECT 'k' || g, jsonb_build_object('g', g) FROM generate_series(1, 300) g;",
        )
        .await;
    let again = docker_run(&image, None, &["sync", "--until-caught-up"], &env).await;
    assert_eq!(again.code, Some(0), "second sync in the image:\n{again}");
    assert_same_data(&src, &tgt).await;
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM after_copy")
            .await
            .as_deref(),
        Some("300")
    );

    let teardown = docker_run(&image, None, &["teardown"], &env).await;
    assert_eq!(teardown.code, Some(0), "teardown in the image:\n{teardown}");
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_replication_slots")
            .await
            .as_deref(),
        Some("0"),
        "teardown left a slot"
    );
}

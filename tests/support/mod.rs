//! Test harness: real PostgreSQL clusters, an independent data checksum,
//! and the pgrepl binary run as a user runs it.
#![allow(dead_code, unused_imports)]

pub mod checksum;
pub mod cluster;
pub mod docker;
pub mod gen;
pub mod held;
pub mod http;
pub mod pg;
pub mod pgrepl;
pub mod schema;
pub mod stops;
pub mod workload;

pub use checksum::{assert_same_data, assert_same_tables, table_checksum, user_tables, Checksum};
pub use cluster::{wait_for, wait_for_phase, Cluster, ClusterOptions, SUPERUSER_PASSWORD};
pub use pg::{Backend, PgInstall};

/// A source/target pair, started in parallel.
pub struct Pair {
    pub source: Cluster,
    pub target: Cluster,
}

impl Pair {
    pub fn start() -> Pair {
        Self::start_with(ClusterOptions::default(), ClusterOptions::default())
    }

    pub fn start_with(source: ClusterOptions, target: ClusterOptions) -> Pair {
        let s = std::thread::spawn(move || {
            Cluster::start_with("source", PgInstall::for_source(), source)
        });
        let target = Cluster::start_with("target", PgInstall::for_target(), target);
        let source = s.join().expect("source cluster thread");
        Pair { source, target }
    }

    /// `--source ... --target ...` arguments.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--source".into(),
            self.source.conninfo(),
            "--target".into(),
            self.target.conninfo(),
        ]
    }

    /// `pgrepl CMD --source ... --target ... EXTRA...`.
    pub fn command(&self, cmd: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![cmd.into()];
        a.extend(self.args());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Runs `pgrepl CMD` on this pair to its end (at most 240 s).
    pub async fn run(&self, cmd: &str, extra: &[&str]) -> pgrepl::Output {
        let a = self.command(cmd, extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        pgrepl::run(&a, std::time::Duration::from_secs(240)).await
    }

    /// Starts `pgrepl CMD` on this pair in the background.
    pub fn spawn(&self, cmd: &str, extra: &[&str]) -> pgrepl::Running {
        let a = self.command(cmd, extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        pgrepl::spawn(&a)
    }
}

/// The server's message for a query error.
pub fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Installs a test subscriber once, so pgrepl library logs show in failures.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "pgrepl=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A log line without its terminal colours.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

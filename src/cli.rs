//! The command line: every flag documented, parsed with clap's derive API.
//! `main.rs` parses it; `commands` carries it out.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::source::selection::Pattern;
use crate::sql::SyncName;

#[derive(Debug, Parser)]
#[command(
    name = "pgrepl",
    version,
    about = "Postgres-to-Postgres logical replication: consistent copy, exactly-once streaming, DDL",
    long_about = "pgrepl moves a live PostgreSQL database to another server (new hardware, a new \
provider, a new major version) without downtime: it copies every table under one consistent \
snapshot, then streams every change from a logical replication slot and applies it exactly once.\n\n\
Connections are libpq conninfo strings (\"host=db1 dbname=app user=repl\") or URIs \
(postgres://repl@db1/app); passwords come from the string, PGPASSWORD or ~/.pgpass.\n\n\
Start with `pgrepl check`. A slot left on the source keeps WAL forever: when you are done, \
run `pgrepl teardown`."
)]
pub struct Cli {
    /// Log format on stderr: human-readable lines, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,

    /// More detail in the logs (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only warnings and errors in the logs.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that source and target are ready for a sync; change nothing.
    ///
    /// Lists every problem found (wal_level, slots, privileges, replica
    /// identities, versions, encodings, tables already on the target) with
    /// what to do about each. Exits 1 if any is an error.
    Check(CheckArgs),
}

/// Where to connect, and which sync.
#[derive(Clone, Debug, Args)]
pub struct Endpoints {
    /// Source database: a conninfo string ("host=… port=… dbname=… user=…")
    /// or a postgres:// URI. Falls back to $PGREPL_SOURCE.
    #[arg(
        long,
        env = "PGREPL_SOURCE",
        hide_env_values = true,
        value_name = "CONNINFO"
    )]
    pub source: String,

    /// Target database, same forms as --source. Falls back to $PGREPL_TARGET.
    #[arg(
        long,
        env = "PGREPL_TARGET",
        hide_env_values = true,
        value_name = "CONNINFO"
    )]
    pub target: String,

    /// Name of the sync: its slot, publication and origin are pgrepl_NAME.
    /// Lower-case letters, digits and underscores.
    #[arg(long, default_value = "pgrepl", value_name = "NAME")]
    pub name: SyncName,
}

/// Which tables a sync covers.
#[derive(Clone, Debug, Default, Args)]
pub struct TableArgs {
    /// Replicate only tables matching this schema.table glob (`public.*`,
    /// `sales.order_*`); repeatable. Default: every table.
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<Pattern>,

    /// Leave out tables matching this glob; repeatable, applied after --include.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<Pattern>,
}

impl TableArgs {
    pub fn selection(&self) -> crate::source::selection::Selection {
        crate::source::selection::Selection {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,

    #[command(flatten)]
    pub tables: TableArgs,

    /// Check as for `sync --existing-schema`: the tables must already exist
    /// (empty) on the target.
    #[arg(long)]
    pub existing_schema: bool,

    /// Check as for `sync --no-ddl`: no event triggers on the source.
    #[arg(long)]
    pub no_ddl: bool,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Parses `5m`, `90s`, `1h` for duration flags.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 5m, 1h)"))
}

/// A path that must exist, for flags naming programs.
pub fn existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{s} is not a file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag of every subcommand says what it does.
    #[test]
    fn every_flag_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "pgrepl", &mut missing);
        assert!(missing.is_empty(), "undocumented: {missing:?}");
        Cli::command().debug_assert();
    }
}

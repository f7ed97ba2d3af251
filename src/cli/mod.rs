//! The command line: every flag documented, parsed with clap's derive API.
//! `main.rs` parses it; `commands` carries it out.
//!
//! Here: the program and its subcommands. Each subcommand's flags are in
//! `args`, the parsers of sizes, durations and paths in `parse`.

mod args;
mod parse;
pub mod version;

use clap::{Parser, Subcommand, ValueEnum};

pub use args::{
    CheckArgs, CopyFormatChoice, CutoverArgs, DatabaseArgs, Endpoints, InstallCaptureArgs,
    RolesChoice, StatusArgs, SyncArgs, TableArgs, TailArgs, TeardownArgs, VerifyArgs,
};
pub use parse::{existing_file, parse_duration, parse_size};

#[derive(Debug, Parser)]
#[command(
    name = "pgrepl",
    version = version::VERSION,
    long_version = version::long_version(),
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

    /// Copy the source to the target under one snapshot, then stream changes.
    ///
    /// Runs the checks first and changes nothing if any fails. Creates the
    /// publication and slot pgrepl_NAME on the source, the schema and rows
    /// on the target (indexes after the rows), then streams every change
    /// until stopped (Ctrl-C). Run it again to resume where it stopped.
    Sync(SyncArgs),

    /// Remove everything pgrepl created for a sync; leave user data alone.
    ///
    /// Drops the slot and publication (and DDL capture) on the source, the
    /// replication origin and pgrepl's state on the target. A forgotten slot
    /// keeps WAL on the source forever: run this when you are done.
    Teardown(TeardownArgs),

    /// Show where a sync stands: slot, lag, applied position, table states.
    Status(StatusArgs),

    /// Compare source and target, row by row, at the same LSN, while the
    /// sync runs.
    ///
    /// "At the same LSN" means: the source is read in a snapshot holding
    /// exactly the transactions committed before one position P of its
    /// write-ahead log, and the target in a snapshot holding exactly those
    /// same transactions, applied: the running sync holds its apply for a
    /// moment at a transaction boundary, applies on up to P, lets the
    /// target's snapshot be taken, and goes on (the source keeps writing
    /// all along; the pause is reported). So every difference reported is
    /// real, never a change in flight. Each table is hashed whole, tables
    /// on --jobs sessions per side; one that differs is split into parts
    /// by a hash of its key and each differing part narrowed down to the
    /// rows and columns. The schema (columns, constraints, indexes,
    /// sequences) is compared beside the rows. Exits 0 when equal, 1 when
    /// not.
    Verify(VerifyArgs),

    /// Finish a migration: fence the source, apply through the fence, set
    /// every sequence, optionally verify and set up the way back, then
    /// declare the target ready.
    ///
    /// Run it from another shell while `pgrepl sync` runs (without one, it
    /// runs the sync itself). Each step is timed. Until the target is
    /// declared ready, any failure (and Ctrl-C) lifts the fence and lets the
    /// sync go on as before. The fence stays on the old source afterwards:
    /// its synced tables refuse writes from every role (pgrepl's own reverse
    /// sync excepted); `pgrepl teardown --unfence` lifts it.
    Cutover(CutoverArgs),

    /// Install the DDL capture and the cutover's DDL fence on the source
    /// for a role that may not create event triggers.
    ///
    /// Run it once as a role that may (a superuser, or a managed service's
    /// admin where it may), naming the role `pgrepl sync` connects as: that
    /// role then syncs with DDL replicated and cuts over with DDL fenced,
    /// without being a superuser. `--print` prints the SQL instead, to run
    /// in a service's console. `pgrepl teardown` as a superuser removes it.
    InstallCapture(InstallCaptureArgs),

    /// Print the source's decoded changes as JSON lines on stdout.
    ///
    /// One line per row change (table, operation, key, new and old values
    /// with their Postgres types) plus begin, commit, truncate, logical
    /// message and DDL records, for debugging a sync or piping into other
    /// tools (`| jq`). With `--temporary` it reads from a temporary slot of
    /// its own (changes from now on; nothing left behind); with `--slot` it
    /// reads an existing, idle slot from its position without moving it
    /// (unless `--advance`). Ctrl-C stops it.
    Tail(TailArgs),

    /// Print the completion script for a shell, from this binary's own
    /// command line (`pgrepl completions bash > /etc/bash_completion.d/pgrepl`).
    Completions(version::CompletionsArgs),

    /// Print the man page pgrepl(1), or write every page with `--dir`.
    Man(version::ManArgs),
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

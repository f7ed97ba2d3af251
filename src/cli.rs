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
    version = crate::commands::ship::VERSION,
    long_version = crate::commands::ship::long_version(),
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

/// What to do with roles the synced objects need and the target lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RolesChoice {
    /// Create them on the target (attributes, memberships, settings, and
    /// password verifiers when the source user can read them); owners and
    /// grants then move as on the source.
    Copy,
    /// Leave them out: the target user owns everything, no grants move.
    Skip,
}

impl From<RolesChoice> for crate::carry::RolesPolicy {
    fn from(c: RolesChoice) -> Self {
        match c {
            RolesChoice::Copy => crate::carry::RolesPolicy::Copy,
            RolesChoice::Skip => crate::carry::RolesPolicy::Skip,
        }
    }
}

/// Which COPY format the snapshot copy uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CopyFormatChoice {
    /// Binary where both sides run the same major with the same encoding and
    /// every column's type is built in (or an enum); text otherwise.
    #[default]
    Auto,
    /// Always text: every type, every version, parsed by the target.
    Text,
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
    Completions(crate::commands::ship::CompletionsArgs),

    /// Print the man page pgrepl(1), or write every page with `--dir`.
    Man(crate::commands::ship::ManArgs),
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

    /// Decode on this standby of the source (PostgreSQL 16+) rather than on
    /// the primary: the slot lives there and the copy reads there, sparing
    /// the primary; --source stays the primary (publication, DDL capture,
    /// sequences, cutover). The standby needs wal_level = logical,
    /// hot_standby_feedback = on and a physical slot on the primary. Give it
    /// to every command of the sync. Falls back to $PGREPL_SOURCE_STANDBY.
    #[arg(
        long,
        env = "PGREPL_SOURCE_STANDBY",
        hide_env_values = true,
        value_name = "CONNINFO"
    )]
    pub source_standby: Option<String>,

    /// Name of the sync: its slot, publication and origin are pgrepl_NAME.
    /// Lower-case letters, digits and underscores.
    #[arg(long, default_value = "pgrepl", value_name = "NAME")]
    pub name: SyncName,

    #[command(flatten)]
    pub databases: DatabaseArgs,
}

/// A whole server: several databases, each with a sync of its own
/// (`NAME_DATABASE`), in one process. --source and --target then name the
/// servers (their dbname is where pgrepl connects first, e.g. postgres).
#[derive(Clone, Debug, Default, Args)]
pub struct DatabaseArgs {
    /// Every database of the source server but template0 and template1
    /// (and those that take no connections).
    #[arg(long, conflicts_with = "databases")]
    pub all_databases: bool,

    /// These databases of the source server (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "DB,...")]
    pub databases: Vec<String>,

    /// With --all-databases: leave these out (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "DB,...",
        requires = "all_databases"
    )]
    pub exclude_databases: Vec<String>,
}

impl DatabaseArgs {
    /// Whether a whole-server command was asked for.
    pub fn any(&self) -> bool {
        self.all_databases || !self.databases.is_empty()
    }
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

#[derive(Clone, Debug, Args)]
pub struct CutoverArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,

    /// Which tables the fence covers (default: the sync's own selection).
    #[command(flatten)]
    pub tables: TableArgs,

    /// Refuse to fence while the sync is further behind than this.
    #[arg(long, value_name = "SIZE", default_value = "16MB", value_parser = parse_size)]
    pub max_lag: u64,

    /// Refuse to fence while the sync is further behind than this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub max_lag_time: Duration,

    /// How long to wait for the lag to fall, for the sync's round of large
    /// objects and roles to end, for open write transactions to end, and
    /// for the sync to reach the fence.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub wait: Duration,

    /// End the sessions still writing to synced tables after --wait, and,
    /// once the fence stands, every other session of the source database
    /// that could still call nextval(), rather than giving up.
    #[arg(long)]
    pub terminate: bool,

    /// Compare source and target under the fence (exact: nothing moves)
    /// before declaring the target ready.
    #[arg(long)]
    pub verify: bool,

    /// Set up the way back: a sync NAME_r from the target to the old source,
    /// ready to carry the application's writes back.
    #[arg(long)]
    pub reverse: bool,

    /// Sessions per side for --verify.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: Option<u16>,

    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,

    /// Which tables to compare (default: the sync's own selection).
    #[command(flatten)]
    pub tables: TableArgs,

    /// Sessions per side hashing tables in parallel (default: cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: Option<u16>,

    /// Rows per part when a table that differs is split to find its rows.
    #[arg(long, value_name = "ROWS", default_value_t = 100_000)]
    pub chunk_rows: u64,

    /// No sync is running: compare the stopped target with the source, if
    /// the source has nothing the target has not applied.
    #[arg(long)]
    pub stopped: bool,

    /// How long to wait for the running sync to apply up to the comparison
    /// LSN.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub wait: Duration,

    /// Print a JSON report on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
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

    /// With several databases: check as for `sync --jobs N`.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,

    /// With several databases: check as for `sync --max-connections N`.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,

    /// Check as for `sync --failover-slot BOOL` (PostgreSQL 17+ sources).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub failover_slot: bool,

    /// Check as for `sync --roles copy|skip`.
    #[arg(long, value_enum, value_name = "copy|skip")]
    pub roles: Option<RolesChoice>,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,

    #[command(flatten)]
    pub tables: TableArgs,

    /// Parallel sessions for the copy and the index builds (default: CPUs);
    /// with several databases, one pool for all of them.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,

    /// With several databases: connections pgrepl may open on each side,
    /// all databases together (checked against the servers'
    /// max_connections; default: what the servers have free).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,

    /// Split tables larger than this into chunks copied in parallel
    /// (e.g. 64MB, 1GiB; 0 never splits).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub chunk_size: u64,

    /// COPY format for the snapshot copy: `auto` picks binary where it is
    /// safe (same major and encoding, built-in types), `text` always text.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = CopyFormatChoice::Auto)]
    pub copy_format: CopyFormatChoice,

    /// Stop after the copy; the slot keeps the changes since for a later `sync`.
    #[arg(long)]
    pub copy_only: bool,

    /// Copy into tables that already exist (empty) on the target instead of
    /// creating the schema; their columns are checked.
    #[arg(long)]
    pub existing_schema: bool,

    /// The pg_dump to read the source's schema with (default: the newest
    /// found, which must be at least the source's major version).
    #[arg(long, env = "PGREPL_PG_DUMP", value_name = "PATH", value_parser = existing_file)]
    pub pg_dump: Option<PathBuf>,

    /// Once streaming starts, note the source's WAL position and exit 0 when
    /// the target has applied everything up to it.
    #[arg(long, conflicts_with = "copy_only")]
    pub until_caught_up: bool,

    /// How often sequences on the target are moved up to the source's while
    /// streaming (they are never moved back).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub sequence_interval: Duration,

    /// Keep retrying lost connections for this long before giving up
    /// (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub retry_for: Duration,

    /// Do not capture or replicate DDL: no event triggers on the source. A
    /// column added on the source then stops the sync at its first row.
    #[arg(long)]
    pub no_ddl: bool,

    /// Make the slot a failover slot (PostgreSQL 17+ sources; ignored
    /// before): a standby with sync_replication_slots = on keeps a copy, so
    /// the sync survives the standby's promotion. Decided at the copy.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub failover_slot: bool,

    /// Keep the applied position in table pgrepl.applied (written by the
    /// same transaction as the rows) rather than in a replication origin.
    /// Chosen by itself when the target role may not call the
    /// replication-origin functions; decided when the sync starts.
    #[arg(long)]
    pub progress_table: bool,

    /// Skip the captured DDL command with this id (from the error that
    /// stopped the sync) and go on; repeatable.
    #[arg(long = "skip-ddl", value_name = "ID")]
    pub skip_ddl: Vec<i64>,

    /// Roles the synced objects need that the target lacks: `copy` creates
    /// them (with memberships, settings, passwords) and owners and grants
    /// move as on the source, also while streaming; `skip` leaves them out
    /// (the target user owns everything, no grants). Needed only when
    /// roles are missing; remembered by the sync.
    #[arg(long, value_enum, value_name = "copy|skip")]
    pub roles: Option<RolesChoice>,

    /// How often large objects (and, with `--roles copy`, roles created on
    /// the source since) are brought in step with the source while
    /// streaming.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub carry_interval: Duration,

    /// Serve /metrics (Prometheus), /status (JSON), /healthz and a live
    /// status page at this address, e.g. 127.0.0.1:9187 (off by default).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Warn when the slot holds more WAL than this on the source (e.g.
    /// 10GB); `extended`, `unreserved` and `lost` slots are always reported.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = parse_size)]
    pub warn_wal: u64,

    /// Obsolete: GRANT, REVOKE and ownership changes are replicated unless
    /// `--roles skip`.
    #[arg(long, hide = true)]
    pub ddl_privileges: bool,
}

#[derive(Debug, Args)]
pub struct InstallCaptureArgs {
    /// Source database (conninfo or URI), as the installing role. Falls
    /// back to $PGREPL_SOURCE.
    #[arg(
        long,
        env = "PGREPL_SOURCE",
        hide_env_values = true,
        value_name = "CONNINFO",
        required_unless_present = "print"
    )]
    pub source: Option<String>,

    /// The role `pgrepl sync` will connect to the source as.
    #[arg(long = "for", value_name = "ROLE")]
    pub role: String,

    /// Print the SQL on stdout; connect to nothing.
    #[arg(long)]
    pub print: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which_slot").required(true).args(["slot", "temporary"]))]
pub struct TailArgs {
    /// Source database (conninfo or URI). Falls back to $PGREPL_SOURCE.
    #[arg(
        long,
        env = "PGREPL_SOURCE",
        hide_env_values = true,
        value_name = "CONNINFO"
    )]
    pub source: String,

    /// Read this existing logical slot (pgoutput), from where it stands.
    #[arg(long, value_name = "NAME")]
    pub slot: Option<String>,

    /// Read from a temporary slot of tail's own: changes from now on.
    #[arg(long)]
    pub temporary: bool,

    /// Move the existing slot on past what was printed (it then no longer
    /// holds those changes for anyone else).
    #[arg(long, requires = "slot")]
    pub advance: bool,

    /// Decode with this publication (default: the sync's, pgrepl_NAME,
    /// when it exists; else one FOR ALL TABLES made for the run and
    /// dropped at its end).
    #[arg(long, value_name = "NAME")]
    pub publication: Option<String>,

    /// The sync whose publication to use by default.
    #[arg(long, default_value = "pgrepl", value_name = "NAME")]
    pub name: SyncName,

    #[command(flatten)]
    pub tables: TableArgs,
}

#[derive(Clone, Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,

    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
pub struct TeardownArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,

    /// Also lift a cutover's fence from the source (its synced tables take
    /// writes again): deliberately, when it is to be written to again.
    #[arg(long)]
    pub unfence: bool,
}

/// Parses `64MB`, `1GiB`, `512k`, `1048576` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 64MB, 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit (use kB, MB, GB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
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

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("x").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}

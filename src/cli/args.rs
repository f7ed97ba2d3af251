//! The flags of each subcommand (`SyncArgs`, `CutoverArgs`, ...), the
//! groups they share (`Endpoints`, `DatabaseArgs`, `TableArgs`) and the
//! choices some of them take (`RolesChoice`, `CopyFormatChoice`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse::{existing_file, parse_duration, parse_size};
use crate::source::selection::Pattern;
use crate::sql::SyncName;

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

    /// How long to wait for a sync between two sessions to stream again,
    /// for the lag to fall, for the sync's round of large objects and
    /// roles to end, for open write transactions to end, and for the sync
    /// to reach the fence.
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

    /// Do not cut over: lift the fence a cutover that did not finish (killed,
    /// its host or connection lost) left on the source, and let the sync
    /// go on. Refused once the sync was cut over, or while a cutover runs.
    #[arg(long, conflicts_with_all = ["verify", "reverse", "terminate", "json"])]
    pub abandon: bool,
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

//! pgrepl: a Postgres-to-Postgres logical replicator.
//!
//! The data flows through one module per stage:
//!
//! 1. [`source`]: what the source holds, and the setup pgrepl makes on it
//!    (publication, slot with an exported snapshot, DDL capture).
//! 2. [`snapshot`]: schema and rows copied under that one snapshot.
//! 3. [`stream`]: the slot's changes received and decoded (pgoutput).
//! 4. [`apply`]: each source transaction applied once on the target, its
//!    position committed with it through a replication origin.
//! 5. [`progress`]: state on the target and what a person watching sees.
//!
//! Around them: [`conn`] (connections as libpq users expect), [`sql`]
//! (quoting and typed names), [`check`] (preflight), [`commands`] (the CLI
//! edge); operations that use the stages: [`verify`], [`cutover`],
//! [`observe`], [`tail`], and [`server`] (a whole server at once).

pub mod apply;
pub mod carry;
pub mod check;
pub mod cli;
pub mod commands;
pub mod conn;
pub mod control;
pub mod cutover;
pub mod ddl;
pub mod logging;
pub mod lsn;
pub mod observe;
pub mod progress;
pub mod sequences;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod sql;
pub mod stream;
pub mod tail;
pub mod teardown;
pub mod verify;

pub use lsn::Lsn;

//! A whole server moved online: every database (or those named) with a
//! sync of its own, all in one process, roles carried once for the server,
//! one cutover for all. Logical decoding is per database, so each database
//! keeps its own slot, publication, DDL capture and target origin — and so
//! its own exactly-once position; what is shared is the process: one pool
//! of copy workers (`snapshot::pool`), one connection budget, one fence.
//!
//! This folder knows the server's databases ([`databases`]) and makes the
//! target's ([`create`]); the commands wire the per-database syncs.

pub mod budget;
pub mod create;
pub mod databases;

//! DDL replication: captured on the source by event triggers into
//! `pgrepl.schema_log` ([`capture`]), which is published, so each DDL
//! arrives in the stream inside its own transaction, in order with the
//! rows around it; mapped back to its statement and replayed on the target
//! in the same target transaction ([`replay`], [`statement`]).

pub mod capture;
pub mod replay;
pub mod statement;

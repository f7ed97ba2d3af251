//! Stage 4: source transactions applied on the target, exactly once
//! ([`applier`]), row by row through statements prepared per table
//! ([`relation`]) with values in the protocol's own formats ([`params`]),
//! inside one streaming session with retries ([`session`]).

pub mod applier;
pub mod params;
pub mod relation;
pub mod session;

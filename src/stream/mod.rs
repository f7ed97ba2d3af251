//! Stage 3: the slot's changes, received ([`receiver`]) and decoded
//! ([`pgoutput`]).

pub mod pgoutput;
pub mod receiver;
pub mod socket;

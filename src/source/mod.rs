//! Stage 1, the source: what it holds ([`catalog`]), which of it a sync
//! covers ([`selection`]), what pgrepl creates there ([`setup`]), its
//! standbys' copies of the slot ([`standby`]) and the timelines a failover
//! leaves ([`timeline`]).

pub mod catalog;
pub mod inventory;
pub mod selection;
pub mod setup;
pub mod standby;
pub mod timeline;

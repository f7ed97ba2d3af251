//! Stage 1, the source: what it holds ([`catalog`]), which of it a sync
//! covers ([`selection`]), and what pgrepl creates there ([`setup`]).

pub mod catalog;
pub mod inventory;
pub mod selection;
pub mod setup;

//! Stage 1, the source: what it holds ([`catalog`]), which of it a sync
//! covers ([`selection`]).

pub mod catalog;
pub mod selection;

//! SQL text that pgrepl writes itself: every identifier and literal goes
//! through [`quote`]; every name pgrepl handles is a type from [`names`].

pub mod advisory;
pub mod names;
pub mod quote;

pub use names::{
    NameError, ObjectName, OriginName, PublicationName, SlotName, SyncName, TableName,
};
pub use quote::{quote_ident, quote_literal};

//! Stage 4: source transactions applied on the target, exactly once
//! ([`applier`], grouped per `group`, publishing per `shared`), through a
//! pipelined session ([`pipeline`], results judged per `sent`) with
//! statements prepared per table ([`relation`]) and values in the
//! protocol's own formats ([`params`]), mapped when first needed
//! (`relations`); rows folded into net effects
//! (`rows`, [`batch`]) written set-based (`flush`, [`sets`]); DDL replayed
//! in place (`ddl`);
//! large transactions streamed while in progress applied on connections
//! of their own ([`router`], `streamed`); all of it inside streaming
//! sessions with retries ([`session`]), each started only after the
//! checks of `guard` (the source's timeline, the slot's position); tables
//! a resumed copy took later skip what their copy holds (`late`).
//!
//! Imports go one way: the applier uses its components (`group`,
//! `shared`, `relations`, `sent`, `streamed`, `late`), which never use it;
//! `rows`, `flush`, `ddl` and `position` are the applier's own methods,
//! split by topic.

pub mod applier;
pub mod batch;
mod catalog;
mod copy_text;
mod ddl;
pub mod error;
mod event_loop;
mod flush;
mod group;
mod guard;
mod identity;
mod late;
pub mod live;
pub mod params;
pub mod paths;
pub mod pipeline;
mod position;
pub mod relation;
mod relations;
mod request;
pub mod resent;
pub mod router;
mod rows;
mod sent;
pub mod session;
pub mod sets;
mod shared;
mod streamed;

//! What pgrepl created for one sync, removed: on the server it reads from,
//! the slot (first: it is what fills that server's disk), the publication
//! and the sync's DDL capture; on the server it writes to, the replication
//! origin and pgrepl's state. `pgrepl teardown` removes a sync with it, and
//! a cutover a way back (`--reverse`) that did not happen. Each part says
//! what it removed, named by where it lives (`place`): the two servers of
//! a way back are the forward sync's the other way round.

use tokio_postgres::Client;

use crate::conn::error::describe;
use crate::source::setup::{self, SetupError};
use crate::sql::SyncName;

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("{place}: {what}: {message}")]
    Query {
        place: String,
        what: String,
        message: String,
    },
}

fn query(place: &str, what: String) -> impl FnOnce(tokio_postgres::Error) -> TeardownError + '_ {
    move |e| TeardownError::Query {
        place: place.to_string(),
        what,
        message: describe(&e),
    }
}

/// The reading side's part: the slot on `decoder` (where it lives: the
/// source, or its standby, named `slot_place`), the publication and the
/// DDL capture on `src`.
/// What was removed goes to `removed` as it goes (a part failing later
/// leaves the earlier ones said).
pub async fn reading_side(
    decoder: &Client,
    src: &Client,
    name: &SyncName,
    place: &str,
    slot_place: &str,
    removed: &mut Vec<String>,
) -> Result<(), TeardownError> {
    if setup::drop_slot(decoder, &name.slot(), name.as_str()).await? {
        removed.push(format!("{slot_place}: replication slot {}", name.slot()));
    }
    if setup::drop_publication(src, &name.publication()).await? {
        removed.push(format!("{place}: publication {}", name.publication()));
    }
    for what in crate::ddl::capture::remove(src, name)
        .await
        .map_err(query(place, "removing DDL capture".into()))?
    {
        removed.push(format!("{place}: {what}"));
    }
    Ok(())
}

/// The writing side's part: the replication origin and pgrepl's state.
pub async fn writing_side(
    tgt: &Client,
    name: &SyncName,
    place: &str,
    removed: &mut Vec<String>,
) -> Result<(), TeardownError> {
    let origin = name.origin();
    if crate::progress::ledger::Ledger::remove(tgt, name)
        .await
        .map_err(query(
            place,
            format!("dropping replication origin {origin}"),
        ))?
    {
        removed.push(format!("{place}: replication origin {origin}"));
    }
    if crate::progress::state::forget(tgt, name)
        .await
        .map_err(query(place, "removing pgrepl state".into()))?
    {
        removed.push(format!("{place}: pgrepl state for sync {name}"));
    }
    Ok(())
}

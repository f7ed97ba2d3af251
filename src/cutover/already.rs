//! Whether the sync was cut over already: a second cutover refuses, and
//! one that ended before its fence was handed over is told it must stand.

use tokio_postgres::Client;

use super::{fence, CutoverError, CutoverRequest};
use crate::sql::SyncName;

/// Whether the sync was ended at a cutover's fence (or is being ended):
/// from then on the fence must stand. Unsure counts as ended (a fence
/// left standing is named by `status`; one lifted wrongly lets writes
/// reach a source nothing carries them from).
pub(super) async fn ended(tgt: &Client, name: &SyncName) -> bool {
    !matches!(crate::control::cut_over(tgt, name).await, Ok(None))
}

/// Refuses when the sync was cut over already. A cut back whose process
/// ended after its sync did, before it unfenced the old source (this
/// target), is finished here: the old fence is lifted if it is older than
/// the cut back's end (a newer one is another cutover's, left alone).
pub(super) async fn already_cut_over(
    req: &CutoverRequest<'_>,
    record: &crate::progress::state::SyncRecord,
    tgt: &Client,
) -> Result<(), CutoverError> {
    let Some(done) = crate::control::cut_over(tgt, req.name)
        .await
        .map_err(|e| CutoverError::target("reading whether the sync was cut over", &e))?
    else {
        return Ok(());
    };
    let mut lifted_old_fence = false;
    if record.reverse_of.is_some() && fence::is_fenced(tgt).await? {
        let older = match fence::since(tgt).await {
            Ok(Some(since)) => tgt
                .query_one(
                    "SELECT $1::text::timestamptz < $2::text::timestamptz",
                    &[&since, &done.recorded],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false),
            _ => false,
        };
        if older {
            let db = fence::database(tgt).await?;
            fence::undo_persistent(tgt, &db, &[]).await;
            lifted_old_fence = !fence::is_fenced(tgt).await?;
        }
    }
    Err(CutoverError::AlreadyCutOver {
        name: req.name.to_string(),
        at: done.at,
        lifted_old_fence,
    })
}

//! While streaming: every few seconds, each sequence on the target that is
//! behind the source's is moved up to it; none is ever moved back (the
//! target's own use, were there any, stays ahead). New sequences join as
//! soon as DDL has made them on the target.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{read, SequenceValue};
use crate::conn::error::describe;
use crate::conn::Endpoint;

/// How far behind the furthest sequence was at the last check (in values
/// of `nextval`; 0 when none was), for status.
#[derive(Debug, Default)]
pub struct Behind(pub AtomicI64);

/// Runs until dropped: reads both sides every `every`, moves the target's
/// sequences up where they are behind. `excluded_owners`: source tables
/// the sync leaves out (their sequences stay too).
pub async fn keep_ahead(
    source: Endpoint,
    target: Endpoint,
    excluded_owners: Vec<u32>,
    every: Duration,
    behind: Arc<Behind>,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match round(&source, &target, &excluded_owners).await {
            Ok((moved, gap)) => {
                behind.0.store(gap, Ordering::Relaxed);
                if moved > 0 {
                    tracing::debug!(moved, gap, "sequences moved up on the target");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not compare sequences; trying again"),
        }
    }
}

/// One check: returns how many sequences moved, and the largest gap.
async fn round(
    source: &Endpoint,
    target: &Endpoint,
    excluded_owners: &[u32],
) -> Result<(usize, i64), String> {
    let (src, tgt) =
        tokio::try_join!(source.connect(), target.connect()).map_err(|e| e.to_string())?;
    let (a, b) =
        tokio::try_join!(read(&src, excluded_owners), read(&tgt, &[])).map_err(|e| describe(&e))?;
    let mut moved = 0;
    let mut gap = 0i64;
    for s in &a {
        let Some(t) = b.iter().find(|t| t.name == s.name) else {
            continue;
        };
        if t.next() < s.next() {
            gap = gap.max(s.next().saturating_sub(t.next()));
            super::apply(&tgt, std::slice::from_ref::<SequenceValue>(s))
                .await
                .map_err(|e| describe(&e))?;
            moved += 1;
        }
    }
    Ok((moved, gap))
}

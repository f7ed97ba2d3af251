//! Checks at the start of every streaming session, before anything is
//! applied: the source is the server the target was copied from, on a
//! timeline the target's position belongs to (see `source::timeline`), and
//! its slot was not confirmed past what the target holds.

use super::request::{SessionError, StreamRequest};
use crate::conn::error::describe;
use crate::conn::walsender::WalSender;
use crate::lsn::Lsn;
use crate::progress::state;
use crate::source::timeline::{self, Verdict};

/// The timeline guard: after a failover the new primary's timeline must
/// hold everything the target applied. `position` is what the target
/// holds (durable). Records the timeline the session streams from.
pub async fn follow_timeline(
    req: &StreamRequest<'_>,
    walsender: &mut WalSender,
    position: Lsn,
) -> Result<(), SessionError> {
    let system = walsender.identify_system().await?;
    let server = walsender.server().to_string();
    let target_err = |what: &'static str| {
        move |e: tokio_postgres::Error| SessionError::Target {
            what,
            message: describe(&e),
            transient: crate::conn::error::is_transient(&e),
        }
    };
    let tgt = req.target.connect().await?;
    let Some(record) = state::load_sync(&tgt, req.name)
        .await
        .map_err(target_err("reading the sync"))?
    else {
        return Ok(());
    };
    if !record.source_system_id.is_empty() && record.source_system_id != system.system_id {
        return Err(SessionError::OtherSystem {
            server,
            system: system.system_id,
            expected: record.source_system_id,
        });
    }
    let recorded = record.source_timeline.unwrap_or(system.timeline);
    let history = if system.timeline > recorded {
        timeline::parse_history(&walsender.timeline_history(system.timeline).await?)
    } else {
        Vec::new()
    };
    match timeline::judge(recorded, system.timeline, &history, position) {
        Verdict::Same if record.source_timeline.is_some() => return Ok(()),
        Verdict::Same => {}
        Verdict::Follow { ended_at } => {
            tracing::warn!(
                %server,
                from = recorded,
                to = system.timeline,
                %ended_at,
                target_at = %position,
                "the source failed over: following its new timeline (the target holds nothing past where the old one ended)"
            );
        }
        Verdict::TargetAhead { ended_at } => {
            return Err(SessionError::TargetAhead {
                server,
                current: system.timeline,
                recorded,
                ended_at,
                target_at: position,
                name: req.name.to_string(),
            })
        }
        Verdict::Unrelated => {
            return Err(SessionError::OtherTimeline {
                server,
                current: system.timeline,
                recorded,
            })
        }
    }
    state::record_timeline(&tgt, req.name, system.timeline)
        .await
        .map_err(target_err("recording the source's timeline"))
}

/// Refuses to stream into a target this sync was cut over to: the
/// application writes there now, and the source (fenced, or cut back to)
/// must not reach it. A supervisor restarting `pgrepl sync` after the
/// cutover, or a sync that was between sessions when the cutover ran
/// through another, ends here before it touches the target. (A sync a
/// cutover is ending at its fence, its last session gone before it
/// answered, goes on to its gate, which answers for it: `control::gate`.)
pub async fn refuse_after_cutover(req: &StreamRequest<'_>) -> Result<(), SessionError> {
    let tgt = req.target.connect().await?;
    match crate::control::ended_at(&tgt, req.name).await {
        Ok(Some(at)) => Err(SessionError::CutOver {
            name: req.name.to_string(),
            at,
        }),
        Ok(None) => Ok(()),
        Err(e) => Err(SessionError::Target {
            what: "reading whether the sync was cut over",
            message: describe(&e),
            transient: crate::conn::error::is_transient(&e),
        }),
    }
}

/// Refuses to stream when the slot was confirmed past what the target
/// holds: the source would start at its confirmed position and the
/// transactions between would never be applied. pgrepl never confirms more
/// than the target made durable (see `position`), so the target lost them:
/// restored from a backup, or its last transactions lost in a crash.
pub async fn refuse_a_gap(req: &StreamRequest<'_>, durable: Lsn) -> Result<(), SessionError> {
    let src = req.source.decoder().connect().await?;
    let slot = crate::source::setup::slot_info(&src, &req.name.slot())
        .await
        .map_err(|e| SessionError::Source {
            what: "reading the replication slot",
            message: e.to_string(),
        })?;
    match slot {
        Some(s) if s.confirmed_flush > durable => Err(SessionError::TargetBehind {
            slot: req.name.slot().to_string(),
            confirmed: s.confirmed_flush,
            target_at: durable,
            name: req.name.to_string(),
        }),
        // Checked when the sync started: gone since, it was dropped, or
        // the source failed over to a server without it.
        None => Err(SessionError::SlotGone {
            slot: req.name.slot().to_string(),
            server: req.source.decoder().config.to_string(),
            name: req.name.to_string(),
        }),
        _ => Ok(()),
    }
}

//! WAL safety: the one thing a sync can do to the source is keep WAL in
//! its slot until the disk is full. Every few seconds the slot's
//! `wal_status` / `safe_wal_size` (PostgreSQL 13+) and the WAL it retains
//! are read, shown (telemetry) and judged:
//!
//! - `extended`, or more than `--warn-wal` retained: a warning (on the
//!   change, then every ten minutes while it lasts);
//! - `unreserved`: an error — the next checkpoint may remove WAL the slot
//!   needs;
//! - `lost`: the sync stops, saying it must start over. It never streams on
//!   from a lost slot.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::conn::Endpoint;
use crate::progress::human_bytes;
use crate::progress::telemetry::{telemetry, SlotHealth};
use crate::source::setup::{self, SlotInfo};
use crate::sql::SyncName;

/// How often the slot is read.
const EVERY: Duration = Duration::from_secs(5);
/// How often a lasting warning is repeated.
const REPEAT: Duration = Duration::from_secs(600);

/// What the watch concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Retains a lot, or `extended`: the source's disk is at risk.
    Warn(String),
    /// `unreserved`: WAL the slot needs may go at the next checkpoint.
    Danger(String),
    /// The slot lost WAL it needed: the sync cannot go on.
    Lost(String),
}

/// Judges one reading of the slot.
pub fn judge(name: &SyncName, slot: &SlotInfo, warn_bytes: u64) -> Verdict {
    let retained = human_bytes(slot.retained_bytes.max(0) as u64);
    match slot.wal_status.as_deref() {
        Some("lost") => Verdict::Lost(format!(
            "source: slot {} lost WAL it needed (max_slot_wal_keep_size): the target cannot catch up; run `pgrepl teardown --name {name}` and sync again",
            name.slot()
        )),
        Some("unreserved") => Verdict::Danger(format!(
            "source: slot {} is unreserved (it holds {retained}, past max_slot_wal_keep_size): the next checkpoint may remove WAL it needs, and then the sync must start over; let it catch up now, or raise max_slot_wal_keep_size",
            name.slot()
        )),
        Some("extended") => Verdict::Warn(format!(
            "source: slot {} holds {retained} of WAL, more than max_wal_size (wal_status extended){}",
            name.slot(),
            slot.safe_wal_size
                .map(|s| format!("; {} more and it is lost", human_bytes(s.max(0) as u64)))
                .unwrap_or_default()
        )),
        _ if slot.retained_bytes.max(0) as u64 > warn_bytes => Verdict::Warn(format!(
            "source: slot {} holds {retained} of WAL (more than --warn-wal {}): the source's disk fills while the sync lags or stops",
            name.slot(),
            human_bytes(warn_bytes)
        )),
        _ => Verdict::Fine,
    }
}

/// Watches the slot until dropped. On a lost slot it sends the reason on
/// `lost` (the sync stops on it) and ends.
pub async fn watch_slot(
    source: Endpoint,
    name: SyncName,
    warn_bytes: u64,
    lost: watch::Sender<Option<String>>,
) {
    let mut client = None;
    let mut last: Option<(Verdict, Instant)> = None;
    let mut interval = tokio::time::interval(EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if client.is_none() {
            client = source.connect().await.ok();
        }
        let Some(c) = &client else { continue };
        let slot = match setup::slot_info(c, &name.slot()).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(_) => {
                client = None;
                continue;
            }
        };
        telemetry().set_slot(SlotHealth {
            wal_status: slot.wal_status.clone(),
            safe_wal_size: slot.safe_wal_size,
            retained_bytes: slot.retained_bytes,
            warn_bytes,
        });
        let verdict = judge(&name, &slot, warn_bytes);
        let repeat = match &last {
            Some((v, at)) => *v != verdict || at.elapsed() >= REPEAT,
            None => true,
        };
        match &verdict {
            Verdict::Lost(why) => {
                tracing::error!(sync = %name, wal_status = "lost", retained_bytes = slot.retained_bytes, "{why}");
                let _ = lost.send(Some(why.clone()));
                return;
            }
            Verdict::Danger(why) if repeat => {
                tracing::error!(sync = %name, wal_status = "unreserved", retained_bytes = slot.retained_bytes, "{why}")
            }
            Verdict::Warn(why) if repeat => {
                tracing::warn!(sync = %name, wal_status = slot.wal_status.as_deref().unwrap_or(""), retained_bytes = slot.retained_bytes, "{why}")
            }
            Verdict::Fine if matches!(last, Some((ref v, _)) if *v != Verdict::Fine) => {
                tracing::info!(sync = %name, retained_bytes = slot.retained_bytes, "slot {} is back within its WAL limits", name.slot())
            }
            _ => {}
        }
        if repeat || verdict == Verdict::Fine {
            last = Some((verdict, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn slot(status: Option<&str>, retained: i64) -> SlotInfo {
        SlotInfo {
            active_pid: None,
            confirmed_flush: Lsn::ZERO,
            restart_lsn: Lsn::ZERO,
            retained_bytes: retained,
            lost: status == Some("lost"),
            wal_status: status.map(str::to_string),
            safe_wal_size: Some(1 << 20),
        }
    }

    #[test]
    fn each_status_gets_its_alarm() {
        let name = SyncName::new("s").expect("name");
        let gb = 1 << 30;
        assert_eq!(judge(&name, &slot(Some("reserved"), 10), gb), Verdict::Fine);
        assert!(matches!(
            judge(&name, &slot(Some("reserved"), 2 * gb as i64), gb),
            Verdict::Warn(_)
        ));
        assert!(
            matches!(
                judge(&name, &slot(None, 2 * gb as i64), gb),
                Verdict::Warn(_)
            ),
            "PG 12: size only"
        );
        assert!(
            matches!(judge(&name, &slot(Some("extended"), 10), gb), Verdict::Warn(w) if w.contains("more and it is lost"))
        );
        assert!(matches!(
            judge(&name, &slot(Some("unreserved"), 10), gb),
            Verdict::Danger(_)
        ));
        assert!(
            matches!(judge(&name, &slot(Some("lost"), 10), gb), Verdict::Lost(w) if w.contains("teardown"))
        );
    }
}

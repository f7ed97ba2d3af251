//! Whether the sync would survive a failover of the source: the slot a
//! failover slot (PostgreSQL 17+), each standby of the conninfo holding a
//! ready copy, and `synchronized_standby_slots` set so the target never
//! gets ahead of a standby (see `source::standby`).

use tokio_postgres::Client;

use super::{query_error, CheckError, CheckOptions, Finding, Report};
use crate::conn::{Endpoint, Side};
use crate::source::standby::{Failover, SlotCopy};

const SIDE: Side = Side::Source;

pub(super) async fn check(
    source: &Endpoint,
    src: &Client,
    opts: &CheckOptions,
    report: &mut Report,
) -> Result<(), CheckError> {
    let slot = opts.name.slot();
    let f = Failover::read(source, src, &slot)
        .await
        .map_err(query_error(SIDE, "reading failover settings"))?;
    let several = !source.config.more_hosts.is_empty();
    if !f.supported {
        if several || f.streaming_standbys > 0 {
            report.push(Finding::warn(
                SIDE,
                "failover",
                "failover slots need PostgreSQL 17: after a failover the new primary has no slot, and the sync must start over",
                "upgrade the source to 17+ for a sync that survives a failover, or plan the migration around none",
            ));
        }
        return Ok(());
    }
    match (f.slot_failover, opts.failover_slot) {
        (Some(true), _) | (None, true) => report.push(Finding::ok(
            SIDE,
            "failover",
            format!(
                "slot {slot} {} a failover slot: standbys with sync_replication_slots keep a copy",
                if f.slot_failover.is_some() { "is" } else { "will be" }
            ),
        )),
        (Some(false), _) | (None, false) => report.push(Finding::warn(
            SIDE,
            "failover",
            format!("slot {slot} is not a failover slot: after a failover the new primary has none, and the sync must start over"),
            "keep --failover-slot true (the default) when the sync starts; an existing slot keeps what it was made with",
        )),
    }
    let with_standbys = f.streaming_standbys > 0 || !f.standbys.is_empty();
    if with_standbys && f.synchronized_standby_slots.trim().is_empty() {
        report.push(Finding::warn(
            SIDE,
            "failover",
            "synchronized_standby_slots is empty: the target can receive changes a standby has not, and if that standby is then promoted the sync stops (the target is ahead of the new primary) and must start over",
            "on the primary: ALTER SYSTEM SET synchronized_standby_slots = '<each standby''s physical slot>'; SELECT pg_reload_conf();",
        ));
    }
    for s in &f.standbys {
        match &s.slot {
            SlotCopy::Ready => report.push(Finding::ok(
                SIDE,
                "failover",
                format!("slot {slot} synced and ready on standby {}", s.server),
            )),
            SlotCopy::NotReady(why) | SlotCopy::Missing(why) => report.push(Finding::warn(
                SIDE,
                "failover",
                format!("standby {} holds no usable copy of slot {slot}: {why}", s.server),
                "a promoted standby without it cannot continue the sync: fix the standby, then check again",
            )),
            SlotCopy::Unreachable(why) => report.push(Finding::warn(
                SIDE,
                "failover",
                format!("standby {} could not be asked about slot {slot}: {why}", s.server),
                "check that pgrepl may connect to every host of --source",
            )),
        }
    }
    if f.standbys.is_empty() && f.streaming_standbys > 0 && !several {
        report.push(Finding::warn(
            SIDE,
            "failover",
            format!(
                "{} standby(s) stream from the source, but --source names one server: after a failover pgrepl would not find the new primary",
                f.streaming_standbys
            ),
            "name every server, primary first: --source 'host=a,b port=5432,5432 ... target_session_attrs=read-write'",
        ));
    }
    Ok(())
}

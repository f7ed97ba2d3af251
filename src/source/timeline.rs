//! The source's timelines: after a failover the new primary runs a new
//! timeline, which branched off the old one at its switch point. WAL the
//! old primary wrote past that point never reached the new one.
//!
//! The rule (the timeline guard, run at every streaming session's start):
//! the target may hold only changes the source's current timeline has.
//! The sync records the timeline it streams from; when the source answers
//! with a later one, the old one must be an ancestor of it and the
//! target's position must not be past where the old one ended, else the
//! target holds transactions the new primary never had (acknowledged by a
//! primary whose standby had not received them) and the sync stops,
//! naming both positions. Nothing is applied from the new timeline first.

use crate::lsn::Lsn;

/// One line of a timeline history file: `timeline` ended at `switch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub timeline: u32,
    pub switch: Lsn,
}

/// Parses a history file (`TIMELINE_HISTORY`): `tli<TAB>X/Y<TAB>reason`
/// lines; comments and blank lines skipped.
pub fn parse_history(text: &str) -> Vec<Ended> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut fields = line.split_whitespace();
            let timeline = fields.next()?.parse().ok()?;
            let switch = fields.next()?.parse().ok()?;
            Some(Ended { timeline, switch })
        })
        .collect()
}

/// What the guard decides for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same timeline as recorded: nothing to check.
    Same,
    /// A later timeline, and the target holds nothing past where the
    /// recorded one ended: record the new one and stream.
    Follow { ended_at: Lsn },
    /// The target holds changes past the switch point: they were never on
    /// the new primary.
    TargetAhead { ended_at: Lsn },
    /// The recorded timeline is not in the new one's history (another
    /// branch, or an older server).
    Unrelated,
}

/// Judges a source now on `current` (whose history is `history`) for a
/// target at `position` that streamed from `recorded`.
pub fn judge(recorded: u32, current: u32, history: &[Ended], position: Lsn) -> Verdict {
    if recorded == current {
        return Verdict::Same;
    }
    if recorded > current {
        return Verdict::Unrelated;
    }
    match history.iter().find(|e| e.timeline == recorded) {
        Some(e) if position > e.switch => Verdict::TargetAhead { ended_at: e.switch },
        Some(e) => Verdict::Follow { ended_at: e.switch },
        None => Verdict::Unrelated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY: &str = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n";

    #[test]
    fn history_lines_are_read() {
        assert_eq!(
            parse_history(HISTORY),
            vec![
                Ended {
                    timeline: 1,
                    switch: "0/3000158".parse().unwrap()
                },
                Ended {
                    timeline: 2,
                    switch: "0/5000000".parse().unwrap()
                },
            ]
        );
    }

    #[test]
    fn a_target_past_the_switch_point_is_ahead() {
        let h = parse_history(HISTORY);
        let lsn = |s: &str| s.parse::<Lsn>().unwrap();
        assert_eq!(judge(3, 3, &h, lsn("0/9000000")), Verdict::Same);
        assert_eq!(
            judge(1, 3, &h, lsn("0/3000158")),
            Verdict::Follow {
                ended_at: lsn("0/3000158")
            }
        );
        assert_eq!(
            judge(1, 3, &h, lsn("0/3000159")),
            Verdict::TargetAhead {
                ended_at: lsn("0/3000158")
            }
        );
        assert_eq!(judge(4, 3, &h, lsn("0/1")), Verdict::Unrelated);
        assert_eq!(judge(7, 9, &h, lsn("0/1")), Verdict::Unrelated);
    }
}

//! The sync's side of the control channel: a gate in front of the apply
//! that a requester can close at a transaction boundary, open up to an LSN,
//! and open again.
//!
//! The rule: while the gate holds, no source transaction is applied, and
//! what the target shows is exactly the source's transactions committing
//! before the held LSN (everything before it committed on the target,
//! nothing after it begun). The stream is still received meanwhile; the
//! apply resumes with the next message. A gate never holds longer than
//! [`super::HOLD_LIMIT`] without hearing from its requester (a requester
//! busy under the hold says it is still there: `still_here`).
//!
//! The rule across sessions: a hold outlives the session that holds. A
//! session ending while it holds (killed, or a transient error) leaves its
//! request `held` (or `advance`, or a cutover's `End`), and the requester
//! still relies on it; the next session's gate, opened before it applies
//! anything, serves that request on from where it stands (see
//! [`Gate::open`]). The gate writes `held` only over a state it may
//! replace (the requester's answer wins a race), and expires only a
//! request nobody answered.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{
    hold_limit, set_state, set_state_if, ControlError, Listener, Request, State, HOLD_LIMIT,
};
use crate::conn::Endpoint;
use crate::lsn::Lsn;
use crate::sql::SyncName;

/// Where the gate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// A hold was asked: close at the next transaction boundary.
    Closing {
        id: i64,
    },
    /// Holding at `at` since `since`.
    Held {
        id: i64,
        at: Lsn,
        since: Instant,
    },
    /// Applying on through the transactions committing before `through`,
    /// then holding (`finish`: then ending the sync).
    Advancing {
        id: i64,
        through: Lsn,
        finish: bool,
    },
}

/// A request the last session served, as a new session finds it.
#[derive(Clone, Copy, Debug)]
enum Adopted {
    Held {
        at: Lsn,
    },
    Advance {
        through: Lsn,
    },
    /// A cutover's end at its fence, unanswered.
    End {
        fence: Lsn,
    },
}

/// What the apply should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Apply this message.
    Go,
    /// Do not apply it: the gate closed before it.
    Stop,
}

pub struct Gate {
    client: Client,
    listener: Listener,
    name: SyncName,
    phase: Phase,
    /// Time held for the current request, over all its holds.
    held: Duration,
    last_poll: Instant,
}

/// The LSN at which the transaction a pgoutput message begins or commits
/// ends, for a Begin and a Stream Commit.
fn commits_at(payload: &[u8]) -> Option<Lsn> {
    let at = |range: std::ops::Range<usize>| -> Option<Lsn> {
        let b: [u8; 8] = payload.get(range)?.try_into().ok()?;
        Some(Lsn(u64::from_be_bytes(b)))
    };
    match payload.first()? {
        b'B' => at(1..9),
        b'c' => at(6..14),
        _ => None,
    }
}

/// The states the gate writes `held` over: a request it serves that its
/// requester has not answered since it was made or told to advance.
const SERVING: &[&str] = &["requested", "advance"];

/// The states the gate may expire: a request it holds for, unanswered.
const HOLDING: &[&str] = &["requested", "held"];

impl Gate {
    /// Opens the gate of a session that starts applying after `start` (the
    /// target holds every source transaction committing before it). Before
    /// it applies anything: a request the sync's last session held for, or
    /// was advancing to, is served on (see the module's rule).
    pub async fn open(
        target: &Endpoint,
        name: &SyncName,
        start: Lsn,
    ) -> Result<Gate, ControlError> {
        let client = target.connect().await.map_err(|e| ControlError::Query {
            what: "opening the control channel",
            message: e.to_string(),
        })?;
        super::ensure_schema(&client).await?;
        let listener = Listener::start(target).await?;
        let mut gate = Gate {
            client,
            listener,
            name: name.clone(),
            phase: Phase::Open,
            held: Duration::ZERO,
            last_poll: Instant::now() - Duration::from_secs(60),
        };
        gate.adopt(start).await?;
        Ok(gate)
    }

    /// Takes over the request the last session served when it ended, if
    /// any (the newest; a sync serves one at a time).
    async fn adopt(&mut self, start: Lsn) -> Result<(), ControlError> {
        let row = self
            .client
            .query_opt(
                "SELECT id, request::text, state::text, (state->>'reached')::pg_lsn,
                        greatest(extract(epoch FROM clock_timestamp() - updated_at), 0)::float8
                   FROM pgrepl.control
                  WHERE sync_name = $1 AND state->>'state' IN ('held', 'advance', 'end')
                  ORDER BY id DESC LIMIT 1",
                &[&self.name.as_str()],
            )
            .await
            .map_err(super::query("reading control requests"))?;
        let Some(row) = row else { return Ok(()) };
        let id: i64 = row.get(0);
        let request = serde_json::from_str::<Request>(row.get::<_, &str>(1)).ok();
        let state = serde_json::from_str::<State>(row.get::<_, &str>(2)).ok();
        let reached: Option<Lsn> = row.get(3);
        let quiet = Duration::from_secs_f64(row.get::<_, f64>(4));
        let adopted = match (&request, &state) {
            (_, Some(State::Held { at, .. })) => Adopted::Held { at: *at },
            (_, Some(State::Advance { through })) => Adopted::Advance { through: *through },
            (Some(Request::HoldAt { lsn }), Some(State::End)) => Adopted::End { fence: *lsn },
            // Never apply past a hold this sync cannot read.
            _ => return Err(ControlError::Unreadable(id)),
        };
        // Applied past the hold (a sync that went on without it): what the
        // requester relied on is gone. Never claim a hold then.
        let past = match adopted {
            // Past how far the last session had read when it closed (the
            // target's position may go that far: an idle position).
            Adopted::Held { at } | Adopted::End { fence: at } => {
                start > reached.unwrap_or(at).max(at)
            }
            // Advancing applies nothing committing at or after `through`;
            // an idle position may pass it just before the gate closes.
            // Past it and long unanswered: an abandoned row.
            Adopted::Advance { through } => start > through && quiet >= hold_limit(),
        };
        if past {
            if let Adopted::End { fence } = adopted {
                return Err(ControlError::EndedBehind { at: fence });
            }
            let from = match adopted {
                Adopted::Advance { .. } => SERVING,
                _ => HOLDING,
            };
            if !set_state_if(&self.client, id, &State::Expired, from).await? {
                // The requester answered meanwhile: start over, and read it.
                return Err(ControlError::Query {
                    what: "taking over a request",
                    message: "the request changed while the sync started".into(),
                });
            }
            tracing::warn!(request = id, %start, "control: the target is past where the last session held; the request expired");
            return Ok(());
        }
        tracing::info!(
            request = id,
            ?adopted,
            "control: serving on the request the last session held for"
        );
        self.held = Duration::ZERO;
        self.phase = match adopted {
            // Every transaction before `at` is applied, none after: hold
            // where the last session held, as long as it had held (a
            // requester silent too long is let go at the first wait); the
            // first wait acts on what the request says (an `End`: answered).
            Adopted::Held { at } | Adopted::End { fence: at } => Phase::Held {
                id,
                at,
                since: Instant::now()
                    .checked_sub(quiet)
                    .unwrap_or_else(Instant::now),
            },
            Adopted::Advance { through } => Phase::Advancing {
                id,
                through,
                finish: false,
            },
        };
        Ok(())
    }

    /// Returns when a request may have come (a NOTIFY on the channel).
    pub async fn notified(&mut self) {
        self.listener.notified().await
    }

    pub fn is_holding(&self) -> bool {
        matches!(self.phase, Phase::Held { .. })
    }

    /// Looks for a new request (when none is in progress); cheap to call
    /// often (it reads the table at most every 200 ms unless woken).
    pub async fn poll(&mut self, woken: bool) -> Result<(), ControlError> {
        if self.phase != Phase::Open
            || (!woken && self.last_poll.elapsed() < Duration::from_millis(200))
        {
            return Ok(());
        }
        self.last_poll = Instant::now();
        let row = self
            .client
            .query_opt(
                "SELECT id, request::text FROM pgrepl.control
                 WHERE sync_name = $1 AND state ->> 'state' = 'requested' ORDER BY id LIMIT 1",
                &[&self.name.as_str()],
            )
            .await
            .map_err(super::query("reading control requests"))?;
        let Some(row) = row else { return Ok(()) };
        let id: i64 = row.get(0);
        match serde_json::from_str::<Request>(row.get::<_, &str>(1)) {
            Ok(Request::Hold) => {
                tracing::info!(
                    request = id,
                    "control: holding the apply at the next transaction boundary"
                );
                self.held = Duration::ZERO;
                self.phase = Phase::Closing { id };
            }
            Ok(Request::HoldAt { lsn }) => {
                tracing::info!(request = id, %lsn, "control: applying through the fence, then holding");
                self.held = Duration::ZERO;
                self.phase = Phase::Advancing {
                    id,
                    through: lsn,
                    finish: false,
                };
            }
            Ok(Request::Finish { lsn }) => {
                tracing::info!(request = id, %lsn, "control: applying through the fence, then ending the sync");
                self.phase = Phase::Advancing {
                    id,
                    through: lsn,
                    finish: true,
                };
            }
            Err(e) => {
                set_state(
                    &self.client,
                    id,
                    &State::Refused {
                        reason: format!("unknown request: {e}"),
                    },
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Before a message: whether it may be applied.
    pub fn before(&self, payload: &[u8]) -> Verdict {
        match self.phase {
            Phase::Held { .. } => Verdict::Stop,
            Phase::Advancing { through, .. } => match commits_at(payload) {
                Some(lsn) if lsn >= through => Verdict::Stop,
                _ => Verdict::Go,
            },
            _ => Verdict::Go,
        }
    }

    /// Whether the gate wants to close now: at a boundary (no source
    /// transaction half received), asked to hold, or advanced as far as
    /// asked (`position`: everything committing before it is applied).
    pub fn wants_to_close(&self, at_boundary: bool, position: Lsn) -> bool {
        at_boundary
            && match self.phase {
                Phase::Closing { .. } => true,
                Phase::Advancing { through, .. } => position >= through,
                _ => false,
            }
    }

    /// Whether the sync should end after closing (a `Finish` request).
    pub fn finishing(&self) -> bool {
        matches!(self.phase, Phase::Advancing { finish: true, .. })
    }

    /// The apply stopped at a boundary (everything before `position`
    /// committed on the target, nothing after it begun): say so. Returns
    /// the LSN held at (for a `Finish`, the one it finished at).
    pub async fn close(&mut self, position: Lsn) -> Result<Lsn, ControlError> {
        let (id, at) = match self.phase {
            Phase::Closing { id } => (id, position),
            Phase::Advancing {
                id,
                through,
                finish: true,
            } => {
                set_state(
                    &self.client,
                    id,
                    &State::Done {
                        at: through,
                        held_ms: 0,
                        cut_over: false,
                    },
                )
                .await?;
                self.phase = Phase::Open;
                return Ok(through);
            }
            Phase::Advancing { id, through, .. } => (id, through),
            _ => return Ok(position),
        };
        // Over what the requester answered meanwhile (released, ended, or
        // gone on without it), nothing: the first wait acts on that.
        let held = State::Held {
            at,
            reached: Some(position.max(at)),
        };
        if set_state_if(&self.client, id, &held, SERVING).await? {
            tracing::info!(request = id, %at, "control: apply held");
        }
        self.phase = Phase::Held {
            id,
            at,
            since: Instant::now(),
        };
        Ok(at)
    }

    /// While held: waits a moment for the requester (at most 200 ms, less
    /// when woken), then acts on what it wrote: advance, release, end, or,
    /// past [`HOLD_LIMIT`], go on alone. Returns `Some(at)` when the sync
    /// is to end, everything before `at` applied.
    pub async fn wait_held(&mut self) -> Result<Option<Lsn>, ControlError> {
        let Phase::Held { id, at, since } = self.phase else {
            return Ok(None);
        };
        self.listener.wait(Duration::from_millis(200)).await;
        let (state, quiet) = super::state_and_quiet(&self.client, id).await?;
        match state {
            State::Advance { through } => {
                self.held += since.elapsed();
                tracing::info!(request = id, %through, "control: applying on");
                self.phase = Phase::Advancing {
                    id,
                    through,
                    finish: false,
                };
            }
            State::Released => {
                self.held += since.elapsed();
                let held_ms = self.held.as_millis() as u64;
                let done = State::Done {
                    at,
                    held_ms,
                    cut_over: false,
                };
                set_state(&self.client, id, &done).await?;
                tracing::info!(request = id, held_ms, "control: apply released");
                self.phase = Phase::Open;
            }
            State::End => {
                self.held += since.elapsed();
                let held_ms = self.held.as_millis() as u64;
                // The record that keeps any later session of this sync
                // from applying to the target (see `guard`).
                let done = State::Done {
                    at,
                    held_ms,
                    cut_over: true,
                };
                set_state(&self.client, id, &done).await?;
                tracing::info!(request = id, %at, "control: the sync ends here");
                self.phase = Phase::Open;
                return Ok(Some(at));
            }
            // Ended elsewhere (nothing else writes these while the gate
            // holds; never held for in vain).
            State::Done {
                at, cut_over: true, ..
            } => {
                tracing::warn!(request = id, %at, "control: the sync was cut over elsewhere; it ends");
                self.phase = Phase::Open;
                return Ok(Some(at));
            }
            State::Done { .. } | State::Expired | State::Refused { .. } => {
                tracing::warn!(
                    request = id,
                    ?state,
                    "control: the request ended without this sync; applying on"
                );
                self.phase = Phase::Open;
            }
            // Held that long, and the requester silent that long too (and
            // no answer written before the expiry).
            _ if since.elapsed() >= hold_limit() && quiet >= hold_limit() => {
                let expired = set_state_if(&self.client, id, &State::Expired, HOLDING).await?;
                if expired {
                    tracing::warn!(
                        request = id,
                        "control: the requester did not answer within {HOLD_LIMIT:?}; applying on"
                    );
                    self.phase = Phase::Open;
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begins_and_stream_commits_tell_where_they_commit() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x10_0000_0020u64.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        assert_eq!(commits_at(&b), Some(Lsn(0x10_0000_0020)));
        let mut c = vec![b'c', 0, 0, 0, 7, 0];
        c.extend_from_slice(&42u64.to_be_bytes());
        c.extend_from_slice(&[0; 16]);
        assert_eq!(commits_at(&c), Some(Lsn(42)));
        assert_eq!(commits_at(b"I"), None);
        assert_eq!(commits_at(b"B"), None, "cut short");
    }
}

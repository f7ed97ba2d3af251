//! The one channel between a running `sync` and the commands that need its
//! cooperation (`verify` holding its apply at an LSN, `cutover` ending it at
//! the fence LSN): requests are rows of `pgrepl.control` on the target, so
//! they work from any shell and leave a record; NOTIFY on
//! `pgrepl_control` wakes both sides at once (each also polls, so a lost
//! notification only costs a little time).
//!
//! A request moves Requested → Held → (Advance → Held)* → Released → Done
//! for `Hold`, or Requested → Done for `Finish`; the sync writes `Held`
//! and `Done`, the requester `Advance` and `Released`. A sync that waits
//! longer than [`HOLD_LIMIT`] for its requester goes on by itself and
//! marks the request `Expired`.

pub mod gate;
mod listen;
pub mod presence;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

pub use gate::Gate;
pub use listen::Listener;

use crate::conn::error::describe;
use crate::lsn::Lsn;
use crate::sql::SyncName;

/// How long a sync holds still for a requester that does not answer.
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// [`HOLD_LIMIT`], or `PGREPL_HOLD_LIMIT_MS` where a test shortens it to
/// show the requester keeping a long hold alive.
pub fn hold_limit() -> Duration {
    std::env::var("PGREPL_HOLD_LIMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(HOLD_LIMIT)
}

/// The NOTIFY channel.
pub const CHANNEL: &str = "pgrepl_control";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("target: {what}: {message}")]
    Query { what: &'static str, message: String },
    #[error("no running `pgrepl sync --name {name}` answered within {waited:?}: {hint}")]
    NoAnswer {
        name: String,
        waited: Duration,
        hint: &'static str,
    },
    #[error("the sync refused: {0}")]
    Refused(String),
    #[error("the sync went on without waiting (request {0} expired)")]
    Expired(i64),
    /// A cutover ended the sync at `at` (its request reads `End`), and the
    /// target holds more than the transactions before it: it must not be
    /// applied to, nor recorded as cut over there.
    #[error("a cutover ended the sync at {at}, but the target holds changes past it")]
    EndedBehind { at: Lsn },
    #[error("request {0} of pgrepl.control, which this sync was serving, is in a state this pgrepl cannot read (written by another version?); nothing was applied: finish or release it with the pgrepl that made it")]
    Unreadable(i64),
}

fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ControlError {
    move |e| ControlError::Query {
        what,
        message: describe(&e),
    }
}

/// What a command asks of the running sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Stop applying at the next transaction boundary and hold still.
    Hold,
    /// Apply exactly the source transactions committing before `lsn`, then
    /// end the sync.
    Finish { lsn: Lsn },
    /// Apply exactly the source transactions committing before `lsn`, then
    /// hold still (cutover, until it ends the sync or lets it go on).
    HoldAt { lsn: Lsn },
}

/// Where a request stands, as its row says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Requested,
    /// The sync holds: every source transaction committing before `at` is
    /// applied and committed on the target, none after. `reached`: how far
    /// the sync had read when it closed (at or past `at`, with no
    /// transaction committing between): the target's recorded position
    /// may go that far while it holds (an idle position), no further.
    Held {
        at: Lsn,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reached: Option<Lsn>,
    },
    /// The requester asks it to apply on through the transactions
    /// committing before `through`, then hold again.
    Advance {
        through: Lsn,
    },
    /// The requester lets it go on.
    Released,
    /// The requester ends the sync where it holds (cutover done).
    End,
    /// Finished (a `Finish` through its LSN, or a `Hold` released); `held`
    /// is how long the apply stood still, in milliseconds. `cut_over`: the
    /// sync ended here at a cutover's `End`: the target took over from the
    /// source at `at`, and no sync of this name may apply to it again.
    Done {
        at: Lsn,
        held_ms: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cut_over: bool,
    },
    /// The sync went on by itself after waiting [`HOLD_LIMIT`].
    Expired,
    Refused {
        reason: String,
    },
}

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS pgrepl.control (
    id bigserial PRIMARY KEY,
    sync_name text NOT NULL,
    request jsonb NOT NULL,
    state jsonb NOT NULL DEFAULT '{\"state\": \"requested\"}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);";

/// Creates the control table if needed (in the target's `pgrepl` schema).
pub async fn ensure_schema(
    client: &impl tokio_postgres::GenericClient,
) -> Result<(), ControlError> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(query("creating pgrepl.control"))
}

/// Reads the state of request `id`.
pub async fn state(client: &Client, id: i64) -> Result<State, ControlError> {
    let row = client
        .query_one(
            "SELECT state::text FROM pgrepl.control WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(query("reading a control request"))?;
    serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| ControlError::Query {
        what: "reading a control request",
        message: e.to_string(),
    })
}

/// A sync's end at a cutover, as its control request records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutOver {
    /// The fence LSN: the target took over from the source there.
    pub at: Lsn,
    /// When the record was last written (the target's clock, as text).
    pub recorded: String,
}

/// Where sync `name` was cut over, if it was (see [`State::Done`]), or
/// is being ended at a cutover's fence (its request moved to `End`: the
/// sync ends there as soon as it reads it); `None` too on a target that
/// never had a control channel.
pub async fn cut_over(
    client: &Client,
    name: &SyncName,
) -> Result<Option<CutOver>, tokio_postgres::Error> {
    cut_over_where(client, name, true).await
}

/// [`cut_over`], `ending`: also a sync being ended at a cutover's fence.
async fn cut_over_where(
    client: &Client,
    name: &SyncName,
    ending: bool,
) -> Result<Option<CutOver>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT CASE WHEN state->>'state' = 'done' THEN (state->>'at')::pg_lsn
                         ELSE (request->>'lsn')::pg_lsn END,
                    updated_at::text
               FROM pgrepl.control
              WHERE sync_name = $1
                AND ((state->>'state' = 'done' AND state->>'cut_over' = 'true')
                     OR ($2 AND state->>'state' = 'end' AND request->>'kind' = 'hold_at'))
              ORDER BY id DESC LIMIT 1",
            &[&name.as_str(), &ending],
        )
        .await;
    match rows {
        Ok(rows) => Ok(rows.first().map(|r| CutOver {
            at: r.get(0),
            recorded: r.get(1),
        })),
        // No control table: no cutover ever ran here.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`cut_over`]'s LSN.
pub async fn cut_over_at(
    client: &Client,
    name: &SyncName,
) -> Result<Option<Lsn>, tokio_postgres::Error> {
    Ok(cut_over(client, name).await?.map(|c| c.at))
}

/// Where sync `name` ended as cut over (`Done`); not a sync a cutover is
/// ending (`End`), which its next session answers (see `gate`).
pub async fn ended_at(
    client: &Client,
    name: &SyncName,
) -> Result<Option<Lsn>, tokio_postgres::Error> {
    Ok(cut_over_where(client, name, false).await?.map(|c| c.at))
}

/// Moves request `id` to `state` and wakes the other side.
/// A request's state and how long ago either side last wrote to it.
pub async fn state_and_quiet(client: &Client, id: i64) -> Result<(State, Duration), ControlError> {
    let row = client
        .query_one(
            "SELECT state::text, greatest(extract(epoch FROM clock_timestamp() - updated_at), 0)::float8
             FROM pgrepl.control WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(query("reading a control request"))?;
    let state = serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| ControlError::Query {
        what: "reading a control request",
        message: e.to_string(),
    })?;
    Ok((state, Duration::from_secs_f64(row.get::<_, f64>(1))))
}

/// Says, every few seconds, that the requester of sync `name`'s open
/// requests made since `since` (the target's clock, read before the
/// requester's first request: see [`now`]) is still there, so a sync
/// holding for it keeps holding however long the requester's work under
/// the hold takes (a verify, the other databases of a whole-server
/// cutover). Older requests are not its own: a dead requester's, which a
/// sync started again may hold for (see `gate`), must expire. Runs until
/// dropped.
pub async fn still_here(client: &Client, name: &SyncName, since: &str) {
    // Several times within the limit.
    let every = hold_limit() / 6;
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = client
            .execute(
                "UPDATE pgrepl.control SET updated_at = now()
                 WHERE sync_name = $1 AND state->>'state' IN ('requested', 'held', 'advance')
                   AND created_at >= $2::text::timestamptz",
                &[&name.as_str(), &since],
            )
            .await
        {
            tracing::debug!(error = %crate::conn::error::describe(&e), "could not say the cutover is still there");
        }
    }
}

/// The target's clock now, as text (for [`still_here`]).
pub async fn now(client: &Client) -> Result<String, ControlError> {
    Ok(client
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .map_err(query("reading the target's clock"))?
        .get(0))
}

/// Lets every open request of sync `name` go (a requester that was
/// interrupted): a sync holding for it applies on at once.
pub async fn release_all(client: &Client, name: &SyncName) -> Result<(), ControlError> {
    let rows = client
        .query(
            "SELECT id FROM pgrepl.control
             WHERE sync_name = $1 AND state->>'state' IN ('requested', 'held', 'advance')",
            &[&name.as_str()],
        )
        .await;
    let ids: Vec<i64> = match rows {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        // No control table: nothing was ever requested here.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(())
        }
        Err(e) => return Err(query("reading control requests")(e)),
    };
    for id in ids {
        set_state(client, id, &State::Released).await?;
    }
    Ok(())
}

pub async fn set_state(client: &Client, id: i64, state: &State) -> Result<(), ControlError> {
    let text = json(state)?;
    client
        .execute(
            "UPDATE pgrepl.control SET state = $2::text::jsonb, updated_at = now() WHERE id = $1",
            &[&id, &text],
        )
        .await
        .map_err(query("writing a control request"))?;
    notify(client, id).await
}

/// Moves request `id` to `state` only from one of the states named in
/// `from` (`held`, …), in one statement, and wakes the other side; false
/// when it was elsewhere (the other side wrote first).
pub async fn set_state_if(
    client: &Client,
    id: i64,
    state: &State,
    from: &[&str],
) -> Result<bool, ControlError> {
    let text = json(state)?;
    let n = client
        .execute(
            "UPDATE pgrepl.control SET state = $2::text::jsonb, updated_at = now()
              WHERE id = $1 AND state->>'state' = ANY($3)",
            &[&id, &text, &from],
        )
        .await
        .map_err(query("writing a control request"))?;
    if n == 1 {
        notify(client, id).await?;
    }
    Ok(n == 1)
}

/// A request or a state as the row's JSON.
fn json(v: &impl Serialize) -> Result<String, ControlError> {
    serde_json::to_string(v).map_err(|e| ControlError::Query {
        what: "writing a control request",
        message: e.to_string(),
    })
}

async fn notify(client: &Client, id: i64) -> Result<(), ControlError> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id.to_string()])
        .await
        .map_err(query("notifying the sync"))?;
    Ok(())
}

/// The requesting side: one request of one command.
pub struct Requester<'a> {
    client: &'a Client,
    listener: Listener,
    pub id: i64,
    name: SyncName,
}

impl<'a> Requester<'a> {
    /// Records `request` for sync `name` and wakes it.
    pub async fn send(
        client: &'a Client,
        listener: Listener,
        name: &SyncName,
        request: &Request,
    ) -> Result<Requester<'a>, ControlError> {
        ensure_schema(client).await?;
        let text = json(request)?;
        let id: i64 = client
            .query_one(
                "INSERT INTO pgrepl.control (sync_name, request) VALUES ($1, $2::text::jsonb) RETURNING id",
                &[&name.as_str(), &text],
            )
            .await
            .map_err(query("writing a control request"))?
            .get(0);
        notify(client, id).await?;
        Ok(Requester {
            client,
            listener,
            id,
            name: name.clone(),
        })
    }

    /// Waits until the request's state is one `accept` returns `Some` for.
    pub async fn wait<T>(
        &mut self,
        limit: Duration,
        hint: &'static str,
        accept: impl Fn(&State) -> Option<T>,
    ) -> Result<T, ControlError> {
        let started = Instant::now();
        loop {
            let s = state(self.client, self.id).await?;
            if let Some(v) = accept(&s) {
                return Ok(v);
            }
            match s {
                State::Refused { reason } => return Err(ControlError::Refused(reason)),
                State::Expired => return Err(ControlError::Expired(self.id)),
                _ => {}
            }
            if started.elapsed() >= limit {
                return Err(ControlError::NoAnswer {
                    name: self.name.to_string(),
                    waited: limit,
                    hint,
                });
            }
            self.listener.wait(Duration::from_millis(200)).await;
        }
    }

    pub async fn set(&self, state: &State) -> Result<(), ControlError> {
        set_state(self.client, self.id, state).await
    }

    /// Ends the sync where it holds (a cutover's `End`), only while it
    /// holds, in one statement; the hold's record (`at`, `reached`) stays
    /// in the row for a session that answers later (see `gate`). False
    /// when it no longer held.
    pub async fn end_if_held(&self) -> Result<bool, ControlError> {
        let n = self
            .client
            .execute(
                "UPDATE pgrepl.control SET state = state || '{\"state\": \"end\"}'::jsonb, updated_at = now()
                  WHERE id = $1 AND state->>'state' = 'held'",
                &[&self.id],
            )
            .await
            .map_err(query("writing a control request"))?;
        if n == 1 {
            notify(self.client, self.id).await?;
        }
        Ok(n == 1)
    }

    /// The request's state now.
    pub async fn state(&self) -> Result<State, ControlError> {
        state(self.client, self.id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_keeps_its_record_through_end_and_older_rows_still_read() {
        let old: State = serde_json::from_str(r#"{"state":"held","at":"0/10"}"#).expect("held");
        assert_eq!(
            old,
            State::Held {
                at: Lsn(16),
                reached: None
            }
        );
        // `end_if_held` merges the state's name into the held record.
        let ended: State =
            serde_json::from_str(r#"{"state":"end","at":"0/10","reached":"0/20"}"#).expect("end");
        assert_eq!(ended, State::End);
    }

    #[test]
    fn a_cutover_is_recorded_in_done_and_older_rows_still_read() {
        // A row written before `cut_over` existed reads as no cutover.
        let old: State = serde_json::from_str(r#"{"state":"done","at":"0/16B3748","held_ms":12}"#)
            .expect("an older row");
        assert_eq!(
            old,
            State::Done {
                at: "0/16B3748".parse().expect("lsn"),
                held_ms: 12,
                cut_over: false
            }
        );
        // Released holds write no flag; a cutover's end writes it, and
        // `cut_over_at` looks for exactly this text.
        let released = serde_json::to_string(&old).expect("json");
        assert!(!released.contains("cut_over"), "{released}");
        let ended = State::Done {
            at: Lsn(1),
            held_ms: 0,
            cut_over: true,
        };
        let text = serde_json::to_string(&ended).expect("json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["state"], "done");
        assert_eq!(v["cut_over"], true);
    }
}

//! One streaming session's loop: messages from the receiver to the
//! applier, through the control gate (see `control::gate`), with a timer
//! for idle positions, until stopped, caught up, finished on request, or
//! an error.
//!
//! Messages read in one go wait in a backlog and are handed over one by
//! one, so the gate can close exactly before a transaction: what it held
//! back is applied when it opens again, in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::error::ApplyError;
use super::router::Router;
use super::shared::Shared;
use crate::control::gate::Verdict;
use crate::control::Gate;
use crate::lsn::Lsn;
use crate::stream::receiver::{Event, Receiver, StreamError};

/// How a loop ended without an error.
#[derive(Debug)]
pub enum Ended {
    /// Asked to stop.
    Stopped,
    /// Everything the source had written at `target` is applied.
    CaughtUp { target: Lsn },
    /// A control request ended the sync after the transactions committing
    /// before `at` (cutover).
    Finished { at: Lsn },
}

pub struct EventLoop<'a> {
    pub applier: &'a mut Router,
    pub receiver: &'a mut Receiver,
    pub shared: Arc<Shared>,
    pub gate: Option<Gate>,
    pub until: Option<Lsn>,
}

fn control_error(e: crate::control::ControlError) -> ApplyError {
    ApplyError::Target {
        what: "the control channel".into(),
        txn: super::error::TxnRef::Commit(Lsn::ZERO),
        message: e.to_string(),
        transient: true,
    }
}

/// Waits for the control channel's NOTIFY; never returns without a gate.
async fn notified(gate: &mut Option<Gate>) {
    match gate {
        Some(g) => g.notified().await,
        None => std::future::pending().await,
    }
}

impl EventLoop<'_> {
    pub async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> Result<Ended, ApplyError> {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backlog: VecDeque<Bytes> = VecDeque::new();
        loop {
            // The gate first: a request served to its point is answered
            // before the run may end there.
            if let Some(ended) = self.gate_step(stop).await? {
                return Ok(ended);
            }
            if self.gate.as_ref().is_some_and(Gate::is_holding) {
                continue;
            }
            if let Some(target) = self.until {
                if !self.applier.in_transaction() && self.shared.idle_through() >= target {
                    self.applier.finish().await?;
                    return Ok(Ended::CaughtUp { target });
                }
            }
            // Hand over what waits, one message at a time, through the gate.
            if let Some(payload) = backlog.pop_front() {
                if let Some(gate) = &self.gate {
                    if gate.before(&payload) == Verdict::Stop {
                        backlog.push_front(payload);
                        self.close_gate().await?;
                        continue;
                    }
                }
                let more = !backlog.is_empty() || !self.receiver.events.is_empty();
                self.applier.handle(payload, more).await?;
                continue;
            }
            let event = tokio::select! {
                biased;
                _ = stop.changed() => {
                    self.applier.finish().await?;
                    return Ok(Ended::Stopped);
                }
                event = self.receiver.events.recv() => Some(event),
                // A request (verify, cutover) wakes an idle stream at once:
                // a fenced source sends nothing until its next keepalive.
                _ = notified(&mut self.gate) => None,
                _ = ticker.tick() => {
                    self.applier.tick().await?;
                    if let Some(g) = &mut self.gate {
                        g.poll(false).await.map_err(control_error)?;
                    }
                    continue;
                }
            };
            let Some(event) = event else {
                if let Some(g) = &mut self.gate {
                    g.poll(true).await.map_err(control_error)?;
                }
                continue;
            };
            match event {
                None => return Err(ApplyError::Stream(StreamError::Ended)),
                Some(Err(e)) => return Err(ApplyError::Stream(e)),
                Some(Ok(Event::Keepalive { end })) => self.applier.idle(end).await?,
                Some(Ok(Event::Data { payloads, .. })) => backlog.extend(payloads),
            }
            if let Some(g) = &mut self.gate {
                g.poll(false).await.map_err(control_error)?;
            }
        }
    }

    /// Lets the gate act: close it where it wants to close, wait while it
    /// holds. `Some` when the sync is to end.
    async fn gate_step(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Ended>, ApplyError> {
        let Some(gate) = &self.gate else {
            return Ok(None);
        };
        let at_boundary = !self.applier.in_transaction();
        if gate.wants_to_close(at_boundary, self.shared.idle_through()) {
            if let Some(ended) = self.close_gate().await? {
                return Ok(Some(ended));
            }
        }
        let Some(gate) = &mut self.gate else {
            return Ok(None);
        };
        if gate.is_holding() {
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    self.applier.finish().await?;
                    return Ok(Some(Ended::Stopped));
                }
                r = gate.wait_held() => {
                    if let Some(at) = r.map_err(control_error)? {
                        self.applier.finish().await?;
                        return Ok(Some(Ended::Finished { at }));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Commits what the applier holds and closes the gate there.
    async fn close_gate(&mut self) -> Result<Option<Ended>, ApplyError> {
        self.applier.settle().await?;
        let position = self.shared.idle_through();
        let Some(gate) = &mut self.gate else {
            return Ok(None);
        };
        let finishing = gate.finishing();
        let at = gate.close(position).await.map_err(control_error)?;
        if finishing {
            self.applier.finish().await?;
            return Ok(Some(Ended::Finished { at }));
        }
        Ok(None)
    }
}

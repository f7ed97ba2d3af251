//! Which server of a multi-host conninfo pgrepl's own sessions (COPY,
//! apply, walsender) use, as libpq chooses for normal ones: each host in
//! order, the first whose `transaction_read_only` fits
//! `target_session_attrs`. A source named `host=a,b
//! target_session_attrs=read-write` is thus followed to whichever server is
//! the primary now, at every (re)connection.

use std::future::Future;

use super::{RawError, RawSession};
use crate::conn::config::ConnConfig;
use crate::conn::error::{ConnectError, ConnectFailure, Side};

/// Connects to each candidate of `cfg` with `connect` until one fits.
pub(super) async fn first_fitting<F, Fut>(
    side: Side,
    cfg: &ConnConfig,
    mut connect: F,
) -> Result<RawSession, RawError>
where
    F: FnMut(ConnConfig) -> Fut,
    Fut: Future<Output = Result<RawSession, RawError>>,
{
    let candidates = cfg.candidates();
    let mut tried = Vec::new();
    let mut only_error = None;
    for one in candidates.iter().cloned() {
        let place = ConnectError::new(side, &one, ConnectFailure::Refused).place;
        match connect(one).await {
            Ok(mut session) => match session.read_only().await {
                Ok(ro) if cfg.session_attrs.accepts(ro) => return Ok(session),
                Ok(ro) => tried.push(format!(
                    "{place} is {}",
                    if ro { "read-only" } else { "read-write" }
                )),
                Err(e) => tried.push(format!("{place}: {e}")),
            },
            Err(e) => {
                tried.push(e.to_string());
                only_error = Some(e);
            }
        }
    }
    // One server, and it failed: its own error says it best.
    if candidates.len() == 1 {
        if let Some(e) = only_error {
            return Err(e);
        }
    }
    Err(RawError::Connect(ConnectError::new(
        side,
        cfg,
        ConnectFailure::NoneFits {
            wanted: cfg.session_attrs.as_str(),
            tried: tried.join("; "),
        },
    )))
}

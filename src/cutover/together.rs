//! Several cutovers as one (`cutover --all-databases`): one fence across
//! every database, one moment the target is ready.
//!
//! The rule: no fence goes up before every database's lag is under the
//! limits, no database's fence LSN is taken before every database is
//! fenced, and no fence becomes lasting (the target ready, the syncs
//! ended) before every database's target has applied through its own
//! fence and set its sequences and large objects; any failure before that
//! lifts every fence and lets every sync go on. Each cutover meets the
//! others at those three points ([`Together::all_close`],
//! [`Together::all_fenced`], [`Together::all_ready`]) and says when it
//! fails ([`Together::fail`]).

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

/// Where the cutovers meet.
#[derive(Debug)]
pub struct Together {
    count: usize,
    state: Mutex<State>,
    changed: Notify,
}

/// The meeting points, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Every database's lag under the limits: the fences go up together,
    /// none stands while another still waits for its lag.
    Close = 0,
    Fenced = 1,
    Ready = 2,
}

#[derive(Debug, Default)]
struct State {
    arrived: [usize; 3],
    /// Databases cut over by an earlier run: arrived everywhere.
    done: usize,
    /// The database whose cutover failed first.
    failed: Option<String>,
    first_fence: Option<Instant>,
}

/// Another database's cutover failed: this one lifts its fence too.
#[derive(Debug, thiserror::Error)]
#[error("the cutover of database {0} failed, so every fence is lifted")]
pub struct Abandoned(pub String);

impl Together {
    pub fn new(count: usize) -> Self {
        Together {
            count,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    /// This database's lag is under the limits: waits until every
    /// database's is.
    pub async fn all_close(&self) -> Result<(), Abandoned> {
        self.arrive(Stage::Close).await
    }

    /// This database is fenced: waits until every database is.
    pub async fn all_fenced(&self) -> Result<(), Abandoned> {
        if let Ok(mut s) = self.state.lock() {
            s.first_fence.get_or_insert_with(Instant::now);
        }
        self.arrive(Stage::Fenced).await
    }

    /// This database's target is ready: waits until every one is.
    pub async fn all_ready(&self) -> Result<(), Abandoned> {
        self.arrive(Stage::Ready).await
    }

    /// This database was cut over by an earlier run (one that died
    /// before the others were): the others meet without it.
    pub fn done_before(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.done += 1;
        }
        self.changed.notify_waiters();
    }

    /// This database's cutover failed: every other stops waiting.
    pub fn fail(&self, database: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.failed.get_or_insert_with(|| database.to_string());
        }
        self.changed.notify_waiters();
    }

    /// When the first fence stood (for the write downtime of the set).
    pub fn first_fence(&self) -> Option<Instant> {
        self.state.lock().ok().and_then(|s| s.first_fence)
    }

    async fn arrive(&self, stage: Stage) -> Result<(), Abandoned> {
        if let Ok(mut s) = self.state.lock() {
            s.arrived[stage as usize] += 1;
        }
        self.changed.notify_waiters();
        loop {
            let waiting = self.changed.notified();
            tokio::pin!(waiting);
            // Registered before looking, so no wake-up is missed.
            waiting.as_mut().enable();
            {
                let s = self
                    .state
                    .lock()
                    .map_err(|_| Abandoned("(a poisoned lock)".into()))?;
                // Everyone arrived: on, even if one fails right after (its
                // failure is its own from here; the others go on as one).
                if s.arrived[stage as usize] + s.done >= self.count {
                    return Ok(());
                }
                if let Some(db) = &s.failed {
                    return Err(Abandoned(db.clone()));
                }
            }
            waiting.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn nobody_passes_until_all_arrive_and_a_failure_stops_everyone() {
        let t = Arc::new(Together::new(2));
        let a = tokio::spawn({
            let t = t.clone();
            async move { t.all_fenced().await.is_ok() }
        });
        tokio::task::yield_now().await;
        assert!(!a.is_finished());
        assert!(t.all_fenced().await.is_ok());
        assert!(a.await.unwrap());
        let b = tokio::spawn({
            let t = t.clone();
            async move { t.all_ready().await }
        });
        tokio::task::yield_now().await;
        t.fail("crm");
        let err = b.await.unwrap().unwrap_err();
        assert_eq!(err.0, "crm");
        assert!(t.first_fence().is_some());
    }

    #[tokio::test]
    async fn a_database_cut_over_before_is_not_waited_for() {
        let t = Arc::new(Together::new(2));
        let a = tokio::spawn({
            let t = t.clone();
            async move { t.all_close().await.is_ok() && t.all_ready().await.is_ok() }
        });
        tokio::task::yield_now().await;
        assert!(!a.is_finished());
        t.done_before();
        assert!(a.await.unwrap());
    }
}

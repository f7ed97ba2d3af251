//! A session LISTENing on [`super::CHANNEL`]: wakes whoever waits on the
//! control channel as soon as the other side writes.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::Client;

use super::{query, ControlError, CHANNEL};
use crate::conn::Endpoint;

pub struct Listener {
    _client: Client,
    notes: UnboundedReceiver<String>,
}

impl Listener {
    pub async fn start(target: &Endpoint) -> Result<Listener, ControlError> {
        let (client, notes) =
            target
                .connect_listening()
                .await
                .map_err(|e| ControlError::Query {
                    what: "listening on the control channel",
                    message: e.to_string(),
                })?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(query("listening on the control channel"))?;
        Ok(Listener {
            _client: client,
            notes,
        })
    }

    /// Returns when a notification arrives (never, once the channel is
    /// gone: the callers poll on a timer as well).
    pub async fn notified(&mut self) {
        if self.notes.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        while self.notes.try_recv().is_ok() {}
    }

    /// Returns when a notification arrives, or after `at_most`.
    pub async fn wait(&mut self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.notes.recv()).await;
        // Several notifications may have come at once: one wake-up is enough.
        while self.notes.try_recv().is_ok() {}
    }
}

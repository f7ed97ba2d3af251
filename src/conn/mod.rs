//! Connections as libpq users expect them: conninfo or URI, environment
//! fallbacks, `~/.pgpass`, `sslmode`, Unix sockets, `application_name=pgrepl`,
//! and failures explained in one line. Normal sessions are tokio-postgres;
//! the walsender session is [`walsender`].

pub mod config;
pub mod conninfo;
pub mod error;
pub mod pgpass;
pub mod raw;
pub mod tls;
pub mod walsender;

pub use config::{ConnConfig, Host, Password, SslMode};
pub use error::{ConnectError, ConnectFailure, ServerError, Side};

use tokio_postgres::Client;

/// One side's connection settings, labelled for messages.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub side: Side,
    pub config: ConnConfig,
    /// A source decoded on its standby (`--source-standby`): the server
    /// where the slot lives and the copy reads.
    pub standby: Option<Box<ConnConfig>>,
}

impl Endpoint {
    pub fn new(side: Side, config: ConnConfig) -> Self {
        Self {
            side,
            config,
            standby: None,
        }
    }

    /// A session on the standby that decodes, when there is one
    /// (`--source-standby`); `None`: the slot is on this server.
    pub async fn connect_decoder(&self) -> Result<Option<Client>, ConnectError> {
        match &self.standby {
            Some(_) => Ok(Some(self.decoder().connect().await?)),
            None => Ok(None),
        }
    }

    /// The server that decodes: the standby with `--source-standby`, else
    /// this one. The slot lives there; replication sessions, the copy
    /// and everything reading the slot go there.
    pub fn decoder(&self) -> Endpoint {
        match &self.standby {
            Some(s) => Endpoint::new(self.side, (**s).clone()),
            None => Endpoint::new(self.side, self.config.clone()),
        }
    }

    /// Opens a normal session; its connection task runs in the background
    /// and ends when the client is dropped.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let tls = tls::client_config(&self.config).map_err(|e| {
            ConnectError::new(
                self.side,
                &self.config,
                ConnectFailure::Config(e.to_string()),
            )
        })?;
        let pg = self.config.to_tokio();
        let result = match tls {
            Some(tls) => {
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
                pg.connect(connector).await.map(|(client, conn)| {
                    spawn_connection(self.side, conn);
                    client
                })
            }
            None => pg
                .connect(tokio_postgres::NoTls)
                .await
                .map(|(client, conn)| {
                    spawn_connection(self.side, conn);
                    client
                }),
        };
        result
            .map_err(|e| ConnectError::new(self.side, &self.config, ConnectFailure::from_tokio(&e)))
    }

    /// Opens a session whose notifications (LISTEN) arrive on the
    /// returned channel, as their payloads.
    pub async fn connect_listening(
        &self,
    ) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>), ConnectError> {
        let tls = tls::client_config(&self.config).map_err(|e| {
            ConnectError::new(
                self.side,
                &self.config,
                ConnectFailure::Config(e.to_string()),
            )
        })?;
        let pg = self.config.to_tokio();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let result = match tls {
            Some(tls) => {
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
                pg.connect(connector).await.map(|(client, conn)| {
                    spawn_listening(self.side, conn, tx);
                    client
                })
            }
            None => pg
                .connect(tokio_postgres::NoTls)
                .await
                .map(|(client, conn)| {
                    spawn_listening(self.side, conn, tx);
                    client
                }),
        };
        let client = result.map_err(|e| {
            ConnectError::new(self.side, &self.config, ConnectFailure::from_tokio(&e))
        })?;
        Ok((client, rx))
    }

    /// A connection pool with the same settings (for parallel work).
    pub fn pool(&self, size: usize) -> Result<deadpool_postgres::Pool, ConnectError> {
        let tls = tls::client_config(&self.config).map_err(|e| {
            ConnectError::new(
                self.side,
                &self.config,
                ConnectFailure::Config(e.to_string()),
            )
        })?;
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let pg = self.config.to_tokio();
        let manager = match tls {
            Some(tls) => deadpool_postgres::Manager::from_config(
                pg,
                tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone()),
                manager_config,
            ),
            None => {
                deadpool_postgres::Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
            }
        };
        deadpool_postgres::Pool::builder(manager)
            .max_size(size.max(1))
            .build()
            .map_err(|e| {
                ConnectError::new(
                    self.side,
                    &self.config,
                    ConnectFailure::Other(e.to_string()),
                )
            })
    }

    /// Maps a pool checkout failure to the same words as a direct connect.
    pub fn pool_error(&self, e: deadpool_postgres::PoolError) -> ConnectError {
        let failure = match &e {
            deadpool_postgres::PoolError::Backend(pe) => ConnectFailure::from_tokio(pe),
            other => ConnectFailure::Other(other.to_string()),
        };
        ConnectError::new(self.side, &self.config, failure)
    }
}

fn spawn_listening<S, T>(
    side: Side,
    mut conn: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(%side, error = %e, "listening connection closed");
                    return;
                }
                None => return,
            }
        }
    });
}

fn spawn_connection<S, T>(side: Side, conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%side, error = %e, "connection closed");
        }
    });
}

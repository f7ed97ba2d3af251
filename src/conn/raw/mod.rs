//! A Postgres session spoken directly on the wire, for the three places
//! where tokio-postgres cannot serve: the walsender (replication protocol),
//! the copy pipe (COPY data passed through in large chunks, not one channel
//! message per row) and the apply pipeline (statements sent back to back
//! with one Sync per batch). Startup, TLS, password/MD5/SCRAM and error
//! reporting are shared with normal sessions through [`ConnectFailure`].
//!
//! Every other session is tokio-postgres.
//!
//! Here: the session and its error. Its messages are cut and read in
//! `message`, its socket opened in `socket`.

mod choose;
mod message;
mod socket;

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{ConnConfig, APPLICATION_NAME};
use super::error::{ConnectError, ConnectFailure, ServerError, Side};
pub use message::{
    command_rows, parse_error, parse_server_version, read_frame, split_frame, take_cstr, Frame, Row,
};
use message::{parse_data_row, take_copy_data};
pub use socket::Io;
use socket::{negotiate_tls, open_socket};

#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{side}: {error}")]
    Server { side: Side, error: ServerError },
    #[error("{side}: connection lost: {error}")]
    Io { side: Side, error: io::Error },
    #[error("{side}: unexpected reply from the server: {what}")]
    Protocol { side: Side, what: String },
}

impl RawError {
    /// SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            RawError::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    /// Worth retrying: the connection broke, or the server is restarting.
    pub fn is_transient(&self) -> bool {
        match self {
            RawError::Io { .. } => true,
            RawError::Connect(c) => c.failure.is_transient(),
            RawError::Server { error, .. } => {
                error.code.starts_with("08")
                    || error.code.starts_with("57P")
                    // 55006 object_in_use: a slot still held by a walsender
                    // that has not noticed its client is gone.
                    || error.code == "55006"
            }
            RawError::Protocol { .. } => false,
        }
    }
}

/// One chunk of a COPY TO STDOUT.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyOut {
    /// Data messages (about one per row) appended to the caller's buffer.
    Data { messages: u64 },
    /// The COPY finished, with the server's row count (the last data
    /// messages may have been appended too).
    Done { rows: u64, messages: u64 },
}

/// An authenticated session, written to through a buffer.
pub struct RawSession {
    io: Io,
    rbuf: BytesMut,
    /// Messages waiting to be written.
    pub wbuf: BytesMut,
    side: Side,
    /// `server_version_num`, e.g. 150004.
    pub server_version: u32,
    /// The server this session reached: one host, even when it was chosen
    /// among several.
    pub server: Box<ConnConfig>,
}

impl RawSession {
    /// Connects and authenticates; `replication` opens a walsender session
    /// (`replication=database`). With several hosts, or a
    /// `target_session_attrs`, the first server that fits (see `choose`).
    pub async fn connect(
        side: Side,
        cfg: &ConnConfig,
        replication: bool,
    ) -> Result<Self, RawError> {
        if !cfg.needs_choosing() {
            return Self::connect_one(side, cfg, replication).await;
        }
        choose::first_fitting(side, cfg, |one| async move {
            Self::connect_one(side, &one, replication).await
        })
        .await
    }

    /// Whether the server takes only reads (a hot standby).
    pub async fn read_only(&mut self) -> Result<bool, RawError> {
        let rows = self.simple_query("SHOW transaction_read_only").await?;
        Ok(rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .is_some_and(|v| v == "on"))
    }

    async fn connect_one(
        side: Side,
        cfg: &ConnConfig,
        replication: bool,
    ) -> Result<Self, RawError> {
        let fail = |f: ConnectFailure| RawError::Connect(ConnectError::new(side, cfg, f));
        let open = open_socket(cfg);
        let io = match cfg.connect_timeout {
            Some(t) => tokio::time::timeout(t, open)
                .await
                .map_err(|_| fail(ConnectFailure::TimedOut))?,
            None => open.await,
        }
        .map_err(|e| fail(ConnectFailure::from_io(&e)))?;
        let io = negotiate_tls(io, cfg).await.map_err(fail)?;
        let mut session = RawSession {
            io,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::with_capacity(256 * 1024),
            side,
            server_version: 0,
            server: Box::new(ConnConfig {
                more_hosts: Vec::new(),
                ..cfg.clone()
            }),
        };
        session.startup(cfg, replication).await?;
        Ok(session)
    }

    pub fn side(&self) -> Side {
        self.side
    }

    fn io_error(&self, error: io::Error) -> RawError {
        RawError::Io {
            side: self.side,
            error,
        }
    }

    pub fn protocol(&self, what: impl Into<String>) -> RawError {
        RawError::Protocol {
            side: self.side,
            what: what.into(),
        }
    }

    /// Writes out everything buffered.
    pub async fn flush(&mut self) -> Result<(), RawError> {
        if !self.wbuf.is_empty() {
            let buf = self.wbuf.split();
            if let Err(e) = self.io.write_all(&buf).await {
                return Err(self.io_error(e));
            }
        }
        self.io.flush().await.map_err(|e| self.io_error(e))
    }

    pub async fn recv(&mut self) -> Result<Frame, RawError> {
        match read_frame(&mut self.io, &mut self.rbuf).await {
            Ok(f) => Ok(f),
            Err(e) => Err(self.io_error(e)),
        }
    }

    async fn startup(&mut self, cfg: &ConnConfig, replication: bool) -> Result<(), RawError> {
        let side = self.side;
        let fail = |f: ConnectFailure| RawError::Connect(ConnectError::new(side, cfg, f));
        let options = cfg.session_options();
        let mut params = vec![
            ("user", cfg.user.as_str()),
            ("database", cfg.dbname.as_str()),
            ("application_name", APPLICATION_NAME),
            ("client_encoding", "UTF8"),
            ("options", options.as_str()),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut frame = self.recv().await?;
            match frame.tag {
                b'R' => {
                    if frame.body.len() < 4 {
                        return Err(self.protocol("short authentication message"));
                    }
                    let code = frame.body.get_i32();
                    let password = || {
                        cfg.password
                            .as_ref()
                            .map(|p| p.expose().as_bytes().to_vec())
                    };
                    let mut out = BytesMut::new();
                    match code {
                        0 => {}
                        3 => {
                            let pw = password().ok_or_else(|| fail(ConnectFailure::NoPassword))?;
                            frontend::password_message(&pw, &mut out)
                                .map_err(|e| self.protocol(e.to_string()))?;
                        }
                        5 => {
                            let pw = password().ok_or_else(|| fail(ConnectFailure::NoPassword))?;
                            if frame.body.len() < 4 {
                                return Err(self.protocol("short MD5 salt"));
                            }
                            let salt = [frame.body[0], frame.body[1], frame.body[2], frame.body[3]];
                            let hashed = postgres_protocol::authentication::md5_hash(
                                cfg.user.as_bytes(),
                                &pw,
                                salt,
                            );
                            frontend::password_message(hashed.as_bytes(), &mut out)
                                .map_err(|e| self.protocol(e.to_string()))?;
                        }
                        10 => {
                            let mut mechanisms = Vec::new();
                            while let Some(m) = take_cstr(&mut frame.body) {
                                if m.is_empty() {
                                    break;
                                }
                                mechanisms.push(m);
                            }
                            if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                                return Err(fail(ConnectFailure::Other(format!(
                                    "unsupported authentication mechanisms {mechanisms:?}"
                                ))));
                            }
                            let pw = password().ok_or_else(|| fail(ConnectFailure::NoPassword))?;
                            // No channel binding: with verify-full the
                            // certificate check already rules out a MITM.
                            let s = ScramSha256::new(&pw, ChannelBinding::unsupported());
                            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                                .map_err(|e| self.protocol(e.to_string()))?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| RawError::Protocol {
                                side,
                                what: "SASL continue without start".into(),
                            })?;
                            s.update(&frame.body)
                                .map_err(|e| fail(ConnectFailure::Other(e.to_string())))?;
                            frontend::sasl_response(s.message(), &mut out).map_err(|e| {
                                RawError::Protocol {
                                    side,
                                    what: e.to_string(),
                                }
                            })?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| RawError::Protocol {
                                side,
                                what: "SASL final without start".into(),
                            })?;
                            s.finish(&frame.body)
                                .map_err(|e| fail(ConnectFailure::Other(e.to_string())))?;
                        }
                        other => {
                            return Err(fail(ConnectFailure::Other(format!(
                                "unsupported authentication method (code {other})"
                            ))))
                        }
                    }
                    if !out.is_empty() {
                        self.wbuf.put_slice(&out);
                        self.flush().await?;
                    }
                }
                b'E' => {
                    let error = parse_error(frame.body);
                    return Err(fail(ConnectFailure::from_server(&error)));
                }
                b'S' => {
                    let name = take_cstr(&mut frame.body).unwrap_or_default();
                    let value = take_cstr(&mut frame.body).unwrap_or_default();
                    if name == "server_version" {
                        self.server_version = parse_server_version(&value);
                    }
                }
                b'K' | b'N' => {}
                b'Z' => return Ok(()),
                other => {
                    return Err(self.protocol(format!("message {:?} during startup", other as char)))
                }
            }
        }
    }

    /// Runs a simple query (one or more statements) and returns its rows as
    /// text; the first server error, once the server is ready again.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, RawError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let mut frame = self.recv().await?;
            match frame.tag {
                b'D' => rows.push(
                    parse_data_row(&mut frame.body).ok_or_else(|| self.protocol("bad data row"))?,
                ),
                b'E' => {
                    error.get_or_insert(parse_error(frame.body));
                }
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                // A COPY statement in a simple query: refuse politely.
                b'G' => {
                    frontend::copy_fail("no COPY data here", &mut self.wbuf)
                        .map_err(|e| self.protocol(e.to_string()))?;
                    self.flush().await?;
                }
                b'H' => {}
                b'd' | b'c' => {}
                b'Z' => break,
                other => {
                    return Err(self.protocol(format!("message {:?} after a query", other as char)))
                }
            }
        }
        match error {
            Some(error) => Err(RawError::Server {
                side: self.side,
                error,
            }),
            None => Ok(rows),
        }
    }

    /// Starts `COPY ... TO STDOUT`.
    pub async fn copy_out(&mut self, sql: &str) -> Result<(), RawError> {
        self.start_copy(sql, b'H', "CopyOut").await
    }

    /// Sends `sql` and waits for the response that starts a COPY (`tag`,
    /// named `what` in an error).
    async fn start_copy(&mut self, sql: &str, tag: u8, what: &str) -> Result<(), RawError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        loop {
            let frame = self.recv().await?;
            match frame.tag {
                t if t == tag => return Ok(()),
                b'E' => {
                    let error = parse_error(frame.body);
                    self.until_ready().await?;
                    return Err(RawError::Server {
                        side: self.side,
                        error,
                    });
                }
                b'N' | b'S' => {}
                other => {
                    return Err(
                        self.protocol(format!("message {:?} instead of {what}", other as char))
                    )
                }
            }
        }
    }

    /// Appends the payload of the next data messages to `out`, until it
    /// holds at least `at_least` bytes or the COPY ends.
    pub async fn copy_out_chunk(
        &mut self,
        out: &mut BytesMut,
        at_least: usize,
    ) -> Result<CopyOut, RawError> {
        let mut messages = 0;
        loop {
            // Rows first, straight from the read buffer: one copy per row
            // and no buffer bookkeeping (a table has millions of them).
            while take_copy_data(&mut self.rbuf, out).map_err(|e| self.io_error(e))? {
                messages += 1;
                if out.len() >= at_least {
                    return Ok(CopyOut::Data { messages });
                }
            }
            // Take every whole message already read before reading more.
            while let Some(frame) = split_frame(&mut self.rbuf).map_err(|e| self.io_error(e))? {
                match frame.tag {
                    b'd' => {
                        out.put_slice(&frame.body);
                        messages += 1;
                    }
                    b'c' | b'N' | b'S' => {}
                    b'C' => {
                        let rows = command_rows(&frame.body);
                        self.until_ready().await?;
                        return Ok(CopyOut::Done { rows, messages });
                    }
                    b'E' => {
                        let error = parse_error(frame.body);
                        self.until_ready().await?;
                        return Err(RawError::Server {
                            side: self.side,
                            error,
                        });
                    }
                    other => {
                        return Err(
                            self.protocol(format!("message {:?} during COPY OUT", other as char))
                        )
                    }
                }
                if out.len() >= at_least {
                    return Ok(CopyOut::Data { messages });
                }
            }
            if messages > 0 {
                return Ok(CopyOut::Data { messages });
            }
            if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
                self.rbuf.reserve(256 * 1024);
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    return Err(self.io_error(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    )))
                }
                Ok(_) => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// Starts `COPY ... FROM STDIN`.
    pub async fn copy_in(&mut self, sql: &str) -> Result<(), RawError> {
        self.start_copy(sql, b'G', "CopyIn").await
    }

    /// Buffers one CopyData message holding `data` (any number of rows).
    pub fn copy_data(&mut self, data: &[u8]) {
        self.wbuf.put_u8(b'd');
        self.wbuf.put_u32(4 + data.len() as u32);
        self.wbuf.put_slice(data);
    }

    /// Ends a COPY FROM STDIN; returns the rows the server took.
    pub async fn copy_done(&mut self) -> Result<u64, RawError> {
        frontend::copy_done(&mut self.wbuf);
        self.flush().await?;
        let mut rows = 0;
        let mut error = None;
        loop {
            let frame = self.recv().await?;
            match frame.tag {
                b'C' => rows = command_rows(&frame.body),
                b'E' => {
                    error.get_or_insert(parse_error(frame.body));
                }
                b'N' | b'S' => {}
                b'Z' => break,
                other => {
                    return Err(self.protocol(format!("message {:?} after CopyDone", other as char)))
                }
            }
        }
        match error {
            Some(error) => Err(RawError::Server {
                side: self.side,
                error,
            }),
            None => Ok(rows),
        }
    }

    /// Reads until ReadyForQuery (after an error or a finished command).
    async fn until_ready(&mut self) -> Result<(), RawError> {
        loop {
            if self.recv().await?.tag == b'Z' {
                return Ok(());
            }
        }
    }

    /// Hands over the socket and what was read past the last message (the
    /// replication stream takes them over).
    pub fn into_parts(self) -> (Io, BytesMut) {
        (self.io, self.rbuf)
    }

    /// Splits the socket for a reader and a writer working at once.
    pub fn split(self) -> (tokio::io::ReadHalf<Io>, tokio::io::WriteHalf<Io>, BytesMut) {
        let (r, w) = tokio::io::split(self.io);
        (r, w, self.rbuf)
    }
}

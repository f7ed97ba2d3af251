//! The walsender session: a connection with `replication=database`, which
//! tokio-postgres cannot open. It speaks just enough of the protocol for
//! pgrepl: startup with TLS and password/MD5/SCRAM authentication, simple
//! queries (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, plain SQL) and
//! START_REPLICATION, after which the socket is handed to
//! `stream::receiver`, which owns the CopyBoth conversation.
//!
//! Its own module so the transport can be swapped: nothing outside it sees
//! frames or sockets before streaming starts.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::config::{ConnConfig, Host, SslMode, APPLICATION_NAME};
use super::error::{ConnectError, ConnectFailure, ServerError, Side};
use super::tls;
use crate::lsn::Lsn;
use crate::sql::SlotName;

#[derive(Debug, thiserror::Error)]
pub enum WalSenderError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{side}: replication command failed: {error}")]
    Server { side: Side, error: ServerError },
    #[error("{side}: replication connection lost: {error}")]
    Io { side: Side, error: io::Error },
    #[error("{side}: unexpected reply from the walsender: {what}")]
    Protocol { side: Side, what: String },
}

impl WalSenderError {
    /// SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            WalSenderError::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    /// Worth retrying: the connection broke, or the server is restarting.
    pub fn is_transient(&self) -> bool {
        match self {
            WalSenderError::Io { .. } => true,
            WalSenderError::Connect(c) => matches!(
                c.failure,
                ConnectFailure::Refused
                    | ConnectFailure::NoSocket
                    | ConnectFailure::TimedOut
                    | ConnectFailure::NotReady(_)
                    | ConnectFailure::TooMany
            ),
            WalSenderError::Server { error, .. } => {
                error.code.starts_with("08") || error.code.starts_with("57P")
                // 55006 object_in_use: the slot is still held by a walsender
                // that has not noticed its client is gone.
                || error.code == "55006"
            }
            WalSenderError::Protocol { .. } => false,
        }
    }
}

/// One backend message: its tag and body.
#[derive(Debug)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// The socket under the session, plain or encrypted.
pub enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads whole backend messages from `io`, keeping partial ones in `buf`.
/// Cancel-safe: a cancelled read leaves the bytes it got in `buf`.
pub async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> io::Result<Frame> {
    loop {
        if let Some(frame) = split_frame(buf)? {
            return Ok(frame);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
    }
}

/// A complete message at the front of `buf`, if there is one.
pub fn split_frame(buf: &mut BytesMut) -> io::Result<Option<Frame>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message length below 4",
        ));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    buf.advance(5);
    let body = buf.split_to(len - 4).freeze();
    Ok(Some(Frame { tag, body }))
}

/// Reads a NUL-terminated string from `body`.
fn take_cstr(body: &mut Bytes) -> Option<String> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Some(s)
}

/// Parses an ErrorResponse / NoticeResponse body.
pub fn parse_error(mut body: Bytes) -> ServerError {
    let mut e = ServerError::default();
    while body.has_remaining() {
        let field = body.get_u8();
        if field == 0 {
            break;
        }
        let Some(value) = take_cstr(&mut body) else {
            break;
        };
        match field {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    e
}

/// A row of a simple query: text values, `None` for NULL.
pub type Row = Vec<Option<String>>;

/// What `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT` returns.
#[derive(Clone, Debug)]
pub struct CreatedSlot {
    pub consistent_point: Lsn,
    /// The exported snapshot: valid until the next command on this session.
    pub snapshot: String,
}

/// What IDENTIFY_SYSTEM returns.
#[derive(Clone, Debug)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
}

/// An authenticated walsender session, not yet streaming.
pub struct WalSender {
    io: Io,
    buf: BytesMut,
    side: Side,
    /// `server_version_num`, e.g. 150004.
    pub server_version: u32,
}

impl WalSender {
    /// Connects and authenticates with `replication=database`.
    pub async fn connect(side: Side, cfg: &ConnConfig) -> Result<Self, WalSenderError> {
        let fail = |f: ConnectFailure| WalSenderError::Connect(ConnectError::new(side, cfg, f));
        let open = open_socket(cfg);
        let io = match cfg.connect_timeout {
            Some(t) => tokio::time::timeout(t, open)
                .await
                .map_err(|_| fail(ConnectFailure::TimedOut))?,
            None => open.await,
        }
        .map_err(|e| fail(ConnectFailure::from_io(&e)))?;
        let io = negotiate_tls(io, cfg).await.map_err(fail)?;
        let mut session = WalSender {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
            side,
            server_version: 0,
        };
        session.startup(cfg).await?;
        Ok(session)
    }

    async fn send(&mut self, buf: &[u8]) -> Result<(), WalSenderError> {
        let side = self.side;
        self.io
            .write_all(buf)
            .await
            .map_err(|error| WalSenderError::Io { side, error })?;
        self.io
            .flush()
            .await
            .map_err(|error| WalSenderError::Io { side, error })
    }

    async fn recv(&mut self) -> Result<Frame, WalSenderError> {
        let side = self.side;
        read_frame(&mut self.io, &mut self.buf)
            .await
            .map_err(|error| WalSenderError::Io { side, error })
    }

    fn protocol(&self, what: impl Into<String>) -> WalSenderError {
        WalSenderError::Protocol {
            side: self.side,
            what: what.into(),
        }
    }

    async fn startup(&mut self, cfg: &ConnConfig) -> Result<(), WalSenderError> {
        let side = self.side;
        let fail = |f: ConnectFailure| WalSenderError::Connect(ConnectError::new(side, cfg, f));
        let options = cfg.session_options();
        let params = [
            ("user", cfg.user.as_str()),
            ("database", cfg.dbname.as_str()),
            ("replication", "database"),
            ("application_name", APPLICATION_NAME),
            ("client_encoding", "UTF8"),
            ("options", options.as_str()),
        ];
        let mut buf = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut buf)
            .map_err(|e| self.protocol(e.to_string()))?;
        self.send(&buf).await?;

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
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| self.protocol("SASL continue without start"))?;
                            s.update(&frame.body)
                                .map_err(|e| fail(ConnectFailure::Other(e.to_string())))?;
                            frontend::sasl_response(s.message(), &mut out)
                                .map_err(|e| self.protocol(e.to_string()))?;
                        }
                        12 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| self.protocol("SASL final without start"))?;
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
                        self.send(&out).await?;
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

    /// Runs one simple query and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, WalSenderError> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).map_err(|e| self.protocol(e.to_string()))?;
        self.send(&buf).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let mut frame = self.recv().await?;
            match frame.tag {
                b'D' => rows.push(
                    parse_data_row(&mut frame.body).ok_or_else(|| self.protocol("bad data row"))?,
                ),
                b'E' => error = Some(parse_error(frame.body)),
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                b'Z' => break,
                other => {
                    return Err(self.protocol(format!("message {:?} after a query", other as char)))
                }
            }
        }
        match error {
            Some(error) => Err(WalSenderError::Server {
                side: self.side,
                error,
            }),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo, WalSenderError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| self.protocol("IDENTIFY_SYSTEM returned no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemInfo {
            system_id: col(0),
            timeline: col(1).parse().unwrap_or(0),
            xlogpos: col(2)
                .parse()
                .map_err(|_| self.protocol("IDENTIFY_SYSTEM: bad xlogpos"))?,
        })
    }

    /// Creates a pgoutput slot and exports a snapshot of the database as of
    /// its consistent point. The snapshot lives until the next command on
    /// this session: import it everywhere first.
    pub async fn create_slot_exporting_snapshot(
        &mut self,
        slot: &SlotName,
    ) -> Result<CreatedSlot, WalSenderError> {
        // The parenthesised option list is PG 15+; the keyword form works on
        // every version pgrepl supports, but 15+ warns it is deprecated.
        let sql = if self.server_version >= 150000 {
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                slot.as_str()
            )
        } else {
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                slot.as_str()
            )
        };
        let rows = self.simple_query(&sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| self.protocol("CREATE_REPLICATION_SLOT returned no row"))?;
        let consistent_point = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.protocol("CREATE_REPLICATION_SLOT: no consistent point"))?;
        let snapshot = row
            .get(2)
            .cloned()
            .flatten()
            .ok_or_else(|| self.protocol("CREATE_REPLICATION_SLOT: no snapshot name"))?;
        Ok(CreatedSlot {
            consistent_point,
            snapshot,
        })
    }

    /// Sends START_REPLICATION and waits for the server to switch to
    /// CopyBoth; returns the socket and any bytes already read past that.
    pub async fn start_replication(
        mut self,
        command: &str,
    ) -> Result<(Io, BytesMut), WalSenderError> {
        let mut buf = BytesMut::new();
        frontend::query(command, &mut buf).map_err(|e| self.protocol(e.to_string()))?;
        self.send(&buf).await?;
        loop {
            let frame = self.recv().await?;
            match frame.tag {
                b'W' => return Ok((self.io, self.buf)),
                b'E' => {
                    let error = parse_error(frame.body);
                    return Err(WalSenderError::Server {
                        side: self.side,
                        error,
                    });
                }
                b'N' | b'S' => {}
                other => {
                    return Err(
                        self.protocol(format!("message {:?} instead of CopyBoth", other as char))
                    )
                }
            }
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }
}

fn parse_data_row(body: &mut Bytes) -> Option<Row> {
    if body.len() < 2 {
        return None;
    }
    let n = body.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.len() < 4 {
            return None;
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
        } else {
            let len = len as usize;
            if body.len() < len {
                return None;
            }
            row.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
            body.advance(len);
        }
    }
    Some(row)
}

/// `15.4 (Debian ...)` → 150004; `9.6.1` → 90601.
pub fn parse_server_version(v: &str) -> u32 {
    let numeric: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let digits: Vec<u32> = numeric
        .split('.')
        .filter(|s| !s.is_empty())
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    match digits.as_slice() {
        [major, minor, ..] if *major >= 10 => major * 10000 + minor,
        [major] if *major >= 10 => major * 10000,
        [major, minor, patch, ..] => major * 10000 + minor * 100 + patch,
        _ => 0,
    }
}

async fn open_socket(cfg: &ConnConfig) -> io::Result<Io> {
    match &cfg.host {
        Host::Unix(_) => {
            let path = cfg
                .socket_path()
                .ok_or_else(|| io::Error::other("no socket path"))?;
            Ok(Io::Unix(UnixStream::connect(path).await?))
        }
        Host::Tcp(host) => {
            let stream = match cfg.hostaddr {
                Some(addr) => TcpStream::connect((addr, cfg.port)).await?,
                None => TcpStream::connect((host.as_str(), cfg.port)).await?,
            };
            stream.set_nodelay(true)?;
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(std::time::Duration::from_secs(30))
                .with_interval(std::time::Duration::from_secs(10));
            socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
            Ok(Io::Tcp(stream))
        }
    }
}

async fn negotiate_tls(io: Io, cfg: &ConnConfig) -> Result<Io, ConnectFailure> {
    let Io::Tcp(mut stream) = io else {
        return Ok(io);
    };
    if !cfg.tls_wanted() {
        return Ok(Io::Tcp(stream));
    }
    let config = tls::client_config(cfg).map_err(|e| ConnectFailure::Config(e.to_string()))?;
    let Some(config) = config else {
        return Ok(Io::Tcp(stream));
    };
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    stream
        .write_all(&req)
        .await
        .map_err(|e| ConnectFailure::from_io(&e))?;
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(|e| ConnectFailure::from_io(&e))?;
    match answer[0] {
        b'S' => {
            let name = tls::server_name(cfg)
                .ok_or_else(|| ConnectFailure::Tls("no host name to check".into()))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = connector
                .connect(name, stream)
                .await
                .map_err(|e| ConnectFailure::Tls(e.to_string()))?;
            Ok(Io::Tls(Box::new(tls)))
        }
        _ if cfg.sslmode == SslMode::Prefer => Ok(Io::Tcp(stream)),
        _ => Err(ConnectFailure::NoTlsOnServer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_parse_old_and_new_styles() {
        assert_eq!(parse_server_version("15.4 (Debian 15.4-1)"), 150004);
        assert_eq!(parse_server_version("17.10"), 170010);
        assert_eq!(parse_server_version("18beta1"), 180000);
        assert_eq!(parse_server_version("9.6.24"), 90624);
    }

    #[test]
    fn frames_split_only_when_whole() {
        let mut buf = BytesMut::from(&b"Z\x00\x00\x00\x05I"[..]);
        let f = split_frame(&mut buf).expect("ok").expect("frame");
        assert_eq!(f.tag, b'Z');
        assert_eq!(&f.body[..], b"I");
        assert!(buf.is_empty());
        let mut partial = BytesMut::from(&b"D\x00\x00\x00\x09ab"[..]);
        assert!(split_frame(&mut partial).expect("ok").is_none());
    }

    #[test]
    fn error_fields_are_read() {
        let body = Bytes::from_static(
            b"SERROR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0Hcreate it\0\0",
        );
        let e = parse_error(body);
        assert_eq!(e.code, "42P01");
        assert_eq!(e.message, "relation \"x\" does not exist");
        assert_eq!(e.hint.as_deref(), Some("create it"));
    }
}

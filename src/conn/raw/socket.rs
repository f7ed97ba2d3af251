//! The socket under a raw session: TCP (no delay, keepalives) or a Unix
//! socket, opened, and TLS negotiated on TCP as `sslmode` asks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::conn::config::{ConnConfig, Host, SslMode};
use crate::conn::error::ConnectFailure;
use crate::conn::tls;

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

pub(super) async fn open_socket(cfg: &ConnConfig) -> io::Result<Io> {
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

pub(super) async fn negotiate_tls(io: Io, cfg: &ConnConfig) -> Result<Io, ConnectFailure> {
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

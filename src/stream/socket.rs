//! The replication stream's socket, read and written from two places at
//! once.
//!
//! A walsender writes every message with its own `send()` as long as the
//! socket has room. Read eagerly, that is one wake-up of our reader per
//! message, each one preempting the walsender on a small machine: on two
//! cores, tens of thousands of context switches a second, and the CPU they
//! take is CPU the walsender and the target lack. So a plain (TCP or Unix)
//! socket is taken out of the async runtime and read with blocking calls
//! on a thread of its own that, after a short read, pauses a moment
//! before the next: the messages gather in the socket (and, once it is
//! full, in the walsender's buffer, which it then sends in one call), and
//! every read brings many. The pause adds at most [`GATHER_PAUSE`] of
//! latency. A TLS stream stays in the runtime, read as it comes.

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::conn::raw::Io;

/// How long the reader waits after a short read. Measured on pgbench
/// catch-up over a Unix socket (2 cores): 100-300 µs all halve the time;
/// 1 ms lets the socket fill up (a few hundred small messages do) and
/// the walsender stall on it.
pub const GATHER_PAUSE: Duration = Duration::from_micros(250);
/// A read bringing less than this is short.
const SHORT_READ: usize = 64 * 1024;
const READ_CHUNK: usize = 256 * 1024;

/// A plain socket in blocking mode.
pub enum Plain {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Plain {
    fn try_clone(&self) -> std::io::Result<Plain> {
        Ok(match self {
            Plain::Tcp(s) => Plain::Tcp(s.try_clone()?),
            Plain::Unix(s) => Plain::Unix(s.try_clone()?),
        })
    }

    /// Ends both directions: a blocked read or write returns at once.
    pub fn shutdown(&self) {
        let _ = match self {
            Plain::Tcp(s) => s.shutdown(Shutdown::Both),
            Plain::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// Reads what the socket has (blocking until there is something)
    /// straight into `buf`'s spare capacity, which must not be empty.
    fn read_into(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        let sock = match self {
            Plain::Tcp(s) => SockRef::from(&*s),
            Plain::Unix(s) => SockRef::from(&*s),
        };
        loop {
            match sock.recv(buf.spare_capacity_mut()) {
                Ok(n) => {
                    // SAFETY: recv wrote the first `n` bytes of the spare
                    // capacity (and never reports more than it was given).
                    unsafe { buf.set_len(buf.len() + n) };
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Plain::Tcp(s) => s.write_all(buf),
            Plain::Unix(s) => s.write_all(buf),
        }
    }
}

/// The reading side. The `Blocking` variant blocks the thread it runs on:
/// it only ever runs on the stream's own reader thread.
pub enum ReadSide {
    Async(ReadHalf<Io>),
    Blocking { socket: Plain, short: bool },
}

impl ReadSide {
    /// Appends what the socket has (at least one byte) to `buf`; 0 at
    /// end of stream.
    pub async fn fill(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            ReadSide::Async(rd) => {
                if buf.capacity() - buf.len() < 64 * 1024 {
                    buf.reserve(READ_CHUNK);
                }
                rd.read_buf(buf).await
            }
            ReadSide::Blocking { socket, short } => {
                if *short {
                    std::thread::sleep(GATHER_PAUSE);
                }
                // Read in place: no copy of what arrives.
                if buf.capacity() - buf.len() < SHORT_READ {
                    buf.reserve(READ_CHUNK);
                }
                let n = socket.read_into(buf)?;
                *short = n < SHORT_READ;
                Ok(n)
            }
        }
    }

    pub fn is_blocking(&self) -> bool {
        matches!(self, ReadSide::Blocking { .. })
    }
}

/// The writing side; `Blocking` writes block (status updates are small
/// and rare).
pub enum WriteSide {
    Async(WriteHalf<Io>),
    Blocking(Plain),
}

impl WriteSide {
    pub async fn send(&mut self, msg: &[u8]) -> std::io::Result<()> {
        match self {
            WriteSide::Async(wr) => {
                wr.write_all(msg).await?;
                wr.flush().await
            }
            WriteSide::Blocking(s) => s.write_all(msg),
        }
    }
}

/// Splits the stream's socket: plain sockets leave the runtime for
/// blocking use (with a third handle to shut them down), TLS stays async.
pub fn split(io: Io) -> std::io::Result<(ReadSide, WriteSide, Option<Plain>)> {
    let plain = match io {
        Io::Tcp(s) => {
            let s = s.into_std()?;
            s.set_nonblocking(false)?;
            Plain::Tcp(s)
        }
        Io::Unix(s) => {
            let s = s.into_std()?;
            s.set_nonblocking(false)?;
            Plain::Unix(s)
        }
        tls @ Io::Tls(_) => {
            let (rd, wr) = tokio::io::split(tls);
            return Ok((ReadSide::Async(rd), WriteSide::Async(wr), None));
        }
    };
    let writer = plain.try_clone()?;
    let closer = plain.try_clone()?;
    Ok((
        ReadSide::Blocking {
            socket: plain,
            short: false,
        },
        WriteSide::Blocking(writer),
        Some(closer),
    ))
}

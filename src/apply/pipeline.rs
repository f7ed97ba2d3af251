//! Statements to the target without waiting: Parse / Bind / Execute
//! messages buffered back to back and written in large writes, with one
//! Sync per batch (libpq's pipeline mode, by hand). A reader task turns the
//! replies into results, matched in order with what was sent.
//!
//! The server answers each Execute with CommandComplete, or with an error
//! after which it skips everything up to the next Sync; so the first error
//! belongs to the oldest statement still waiting, and nothing after it ran.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::params::Param;
use crate::conn::raw::{command_rows, parse_error, read_frame, Io, RawError, RawSession};
use crate::conn::{ServerError, Side};

/// Bytes buffered before they are written out.
const WRITE_AT: usize = 64 * 1024;

/// What the reader saw, in order.
#[derive(Debug)]
enum Reply {
    /// CommandComplete (or EmptyQuery): rows affected.
    Done(u64),
    Error(ServerError),
    /// ReadyForQuery: a Sync was reached.
    Ready,
    /// A DataRow, as text values (for [`Pipeline::query`]).
    Row(Vec<Option<String>>),
}

/// Something waiting for a reply.
enum Pending<M> {
    Execute(M),
    Query,
    Sync,
}

/// What came back for one statement.
pub enum Outcome<M> {
    Done { meta: M, rows: u64 },
    Failed { meta: M, error: ServerError },
}

pub struct Pipeline<M> {
    wr: WriteHalf<Io>,
    wbuf: BytesMut,
    replies: mpsc::UnboundedReceiver<Result<Reply, RawError>>,
    reader: JoinHandle<()>,
    pending: VecDeque<Pending<M>>,
    /// How many of `pending` are statements.
    executes: usize,
    /// Statements sent since the last Flush or Sync.
    unflushed: usize,
    next_name: u64,
    /// Queries prepared on this connection by [`Pipeline::query_prepared`]:
    /// the caller's key and the statement's name on the server.
    queries: HashMap<&'static str, String>,
    side: Side,
}

impl<M> Drop for Pipeline<M> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// Writes a message: tag, then the body written by `f`, length patched in.
fn message(buf: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    f(buf);
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

impl<M> Pipeline<M> {
    /// Takes over an authenticated session that is idle.
    pub fn new(session: RawSession) -> Self {
        let side = session.side();
        let (mut rd, wr, mut rbuf) = session.split();
        let (tx, replies) = mpsc::unbounded_channel();
        let reader = crate::progress::scope::spawn(async move {
            loop {
                let frame = match read_frame(&mut rd, &mut rbuf).await {
                    Ok(f) => f,
                    Err(error) => {
                        let _ = tx.send(Err(RawError::Io { side, error }));
                        return;
                    }
                };
                let reply = match frame.tag {
                    b'C' => Reply::Done(command_rows(&frame.body)),
                    b'I' => Reply::Done(0),
                    b'E' => Reply::Error(parse_error(frame.body)),
                    b'Z' => Reply::Ready,
                    b'D' => {
                        let mut body = frame.body;
                        Reply::Row(parse_row(&mut body))
                    }
                    // ParseComplete, BindComplete, NoData, descriptions,
                    // notices, parameter changes: nothing to match.
                    _ => continue,
                };
                if tx.send(Ok(reply)).is_err() {
                    return;
                }
            }
        });
        Pipeline {
            wr,
            wbuf: BytesMut::with_capacity(2 * WRITE_AT),
            replies,
            reader,
            pending: VecDeque::new(),
            executes: 0,
            unflushed: 0,
            next_name: 0,
            queries: HashMap::new(),
            side,
        }
    }

    /// Statements sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.executes
    }

    /// Buffers a Parse of a named statement and returns its name. Its
    /// parameter types are the server's to infer.
    pub fn prepare(&mut self, sql: &str) -> String {
        self.next_name += 1;
        let name = format!("pgrepl_{}", self.next_name);
        message(&mut self.wbuf, b'P', |b| {
            put_cstr(b, &name);
            put_cstr(b, sql);
            b.put_i16(0);
        });
        name
    }

    /// Buffers Bind + Execute of a prepared statement.
    pub fn execute<'a>(
        &mut self,
        statement: &str,
        params: impl ExactSizeIterator<Item = &'a Param> + Clone,
        meta: M,
    ) {
        let binary = params.clone().any(|p| matches!(p, Param::Binary(_)));
        message(&mut self.wbuf, b'B', |b| {
            b.put_u8(0); // unnamed portal
            put_cstr(b, statement);
            if binary {
                b.put_i16(params.len() as i16);
                for p in params.clone() {
                    b.put_i16(i16::from(matches!(p, Param::Binary(_))));
                }
            } else {
                b.put_i16(1);
                b.put_i16(0);
            }
            b.put_i16(params.len() as i16);
            for p in params {
                match p {
                    Param::Null => b.put_i32(-1),
                    Param::Text(v) | Param::Binary(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v);
                    }
                }
            }
            b.put_i16(0); // results in text
        });
        message(&mut self.wbuf, b'E', |b| {
            b.put_u8(0);
            b.put_i32(0);
        });
        self.pending.push_back(Pending::Execute(meta));
        self.executes += 1;
        self.unflushed += 1;
    }

    /// Buffers a one-off statement without parameters (unnamed).
    pub fn execute_sql(&mut self, sql: &str, meta: M) {
        message(&mut self.wbuf, b'P', |b| {
            b.put_u8(0);
            put_cstr(b, sql);
            b.put_i16(0);
        });
        self.execute("", std::iter::empty(), meta);
    }

    /// Buffers a `COPY ... FROM STDIN` and all of its data: the server
    /// reads the data as soon as it reaches the COPY, no need to wait.
    pub fn copy_in(&mut self, sql: &str, data: &[u8], meta: M) {
        self.execute_sql(sql, meta);
        for chunk in data.chunks(256 * 1024) {
            self.wbuf.put_u8(b'd');
            self.wbuf.put_u32(4 + chunk.len() as u32);
            self.wbuf.put_slice(chunk);
        }
        message(&mut self.wbuf, b'c', |_| {});
    }

    fn sync_message(&mut self) {
        message(&mut self.wbuf, b'S', |_| {});
        self.pending.push_back(Pending::Sync);
        self.unflushed = 0;
    }

    fn flush_message(&mut self) {
        message(&mut self.wbuf, b'H', |_| {});
        self.unflushed = 0;
    }

    /// Writes what is buffered once there is enough of it.
    pub async fn write_some(&mut self) -> Result<(), RawError> {
        if self.wbuf.len() >= WRITE_AT {
            self.write_all().await?;
        }
        Ok(())
    }

    async fn write_all(&mut self) -> Result<(), RawError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = self.wbuf.split();
        let side = self.side;
        self.wr
            .write_all(&buf)
            .await
            .map_err(|error| RawError::Io { side, error })?;
        self.wr
            .flush()
            .await
            .map_err(|error| RawError::Io { side, error })
    }

    async fn reply(&mut self) -> Result<Reply, RawError> {
        match self.replies.recv().await {
            Some(r) => r,
            None => Err(RawError::Io {
                side: self.side,
                error: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ),
            }),
        }
    }

    /// The oldest statement's outcome, asking the server to send what it
    /// holds first. `None` when nothing is waiting.
    pub async fn next(&mut self) -> Result<Option<Outcome<M>>, RawError> {
        loop {
            match self.pending.front() {
                None => return Ok(None),
                Some(Pending::Execute(_)) | Some(Pending::Query) => {}
                Some(Pending::Sync) => {
                    if let Reply::Ready = self.reply().await? {
                        self.pending.pop_front();
                        continue;
                    }
                    return Err(RawError::Protocol {
                        side: self.side,
                        what: "reply after the end of a batch".into(),
                    });
                }
            }
            if self.unflushed > 0 {
                self.flush_message();
            }
            self.write_all().await?;
            // A statement's rows (pg_replication_origin_xact_setup is a
            // SELECT) are not wanted: only how it ended.
            let reply = loop {
                match self.reply().await? {
                    Reply::Row(_) => continue,
                    other => break other,
                }
            };
            let Some(Pending::Execute(meta)) = self.pending.pop_front() else {
                return Err(RawError::Protocol {
                    side: self.side,
                    what: "reply for a query".into(),
                });
            };
            self.executes -= 1;
            return match reply {
                Reply::Done(rows) => Ok(Some(Outcome::Done { meta, rows })),
                Reply::Error(error) => {
                    // The server skips to the next Sync: the statements
                    // between did not run and get no reply.
                    while matches!(self.pending.front(), Some(Pending::Execute(_))) {
                        self.pending.pop_front();
                        self.executes -= 1;
                    }
                    Ok(Some(Outcome::Failed { meta, error }))
                }
                Reply::Ready | Reply::Row(_) => Err(RawError::Protocol {
                    side: self.side,
                    what: "unexpected reply to a statement".into(),
                }),
            };
        }
    }

    /// Ends the batch with a Sync and waits until every reply is in; the
    /// outcomes in order.
    pub async fn sync(&mut self) -> Result<Vec<Outcome<M>>, RawError> {
        self.sync_message();
        self.write_all().await?;
        let mut out = Vec::new();
        while let Some(o) = self.next().await? {
            out.push(o);
        }
        Ok(out)
    }

    /// Runs a query with text parameters once nothing else is waiting, and
    /// returns its rows as text.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, RawError> {
        self.parse("", sql);
        self.query_statement("", params).await
    }

    /// [`Pipeline::query`] for a query run again and again on this
    /// connection (once per table, say): parsed and planned once as a
    /// named statement, `key` standing for `sql`.
    pub async fn query_prepared(
        &mut self,
        key: &'static str,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, RawError> {
        if let Some(name) = self.queries.get(key).cloned() {
            return self.query_statement(&name, params).await;
        }
        // A fresh name on every attempt: a failed attempt may or may not
        // have left its statement behind.
        self.next_name += 1;
        let name = format!("pgrepl_q{}", self.next_name);
        self.parse(&name, sql);
        let rows = self.query_statement(&name, params).await?;
        self.queries.insert(key, name);
        Ok(rows)
    }

    /// Buffers a Parse of `sql` as statement `name` ("" for the unnamed one).
    fn parse(&mut self, name: &str, sql: &str) {
        message(&mut self.wbuf, b'P', |b| {
            put_cstr(b, name);
            put_cstr(b, sql);
            b.put_i16(0);
        });
    }

    /// Binds and runs statement `name`, then waits for its rows.
    async fn query_statement(
        &mut self,
        name: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, RawError> {
        debug_assert!(self.pending.is_empty(), "queries run between batches");
        message(&mut self.wbuf, b'B', |b| {
            b.put_u8(0);
            put_cstr(b, name);
            b.put_i16(1);
            b.put_i16(0);
            b.put_i16(params.len() as i16);
            for p in params {
                b.put_i32(p.len() as i32);
                b.put_slice(p.as_bytes());
            }
            b.put_i16(0);
        });
        message(&mut self.wbuf, b'E', |b| {
            b.put_u8(0);
            b.put_i32(0);
        });
        self.pending.push_back(Pending::Query);
        self.sync_message();
        self.write_all().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.reply().await? {
                Reply::Row(r) => rows.push(r),
                Reply::Done(_) => {}
                Reply::Error(e) => error = Some(e),
                Reply::Ready => break,
            }
        }
        self.pending.clear();
        self.executes = 0;
        match error {
            Some(error) => Err(RawError::Server {
                side: self.side,
                error,
            }),
            None => Ok(rows),
        }
    }
}

fn parse_row(body: &mut bytes::Bytes) -> Vec<Option<String>> {
    use bytes::Buf;
    if body.len() < 2 {
        return Vec::new();
    }
    let n = body.get_i16().max(0) as usize;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        if body.len() < 4 {
            break;
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
        } else {
            let len = (len as usize).min(body.len());
            row.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
            body.advance(len);
        }
    }
    row
}

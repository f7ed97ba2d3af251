//! The CopyBoth conversation with the walsender, once START_REPLICATION
//! was accepted. Two tasks share the socket:
//!
//! - the reader turns CopyData into events on a channel bounded in bytes
//!   (the applier's pace is the backpressure: when it falls behind, the
//!   reader stops reading and TCP slows the walsender down);
//! - the writer sends standby status updates every second, at once when
//!   the server asks, and a last one on shutdown, whatever the reader or
//!   the applier are doing, so wal_sender_timeout never fires.
//!
//! The flush position reported is only what the applier says is durable
//! on the target; nothing here decides it. On a plain socket both run on
//! threads of their own, reading and writing with blocking calls (see
//! `socket` for why).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::socket::{self, Plain, ReadSide, WriteSide};
use crate::conn::raw::{parse_error, split_frame};
use crate::conn::walsender::{WalSender, WalSenderError};
use crate::conn::{ServerError, Side};
use crate::lsn::Lsn;
use crate::sql::{PublicationName, SlotName};

/// Bytes of undecoded changes the reader may hold ahead of the applier.
const BUDGET_BYTES: usize = 64 << 20;
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Microseconds from the Unix epoch to 2000-01-01, Postgres' epoch.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("source: replication stream lost: {0}")]
    Io(String),
    #[error("source: the walsender reported: {0}")]
    Server(ServerError),
    #[error("source: the walsender ended the stream")]
    Ended,
    #[error("source: unexpected replication message: {0}")]
    Protocol(String),
}

impl StreamError {
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Io(_) | StreamError::Ended => true,
            StreamError::Server(e) => e.code.starts_with("08") || e.code.starts_with("57P"),
            StreamError::Protocol(_) => false,
        }
    }
}

/// Positions shared by the reader, the writer and the applier.
#[derive(Debug, Default)]
pub struct Feedback {
    /// Highest position the source told us about (commits, keepalives).
    pub received: AtomicU64,
    /// Durable on the target: the only position the slot may advance to.
    pub flushed: AtomicU64,
    /// Committed on the target (maybe not yet durable).
    pub applied: AtomicU64,
    /// Set when the server asked for an immediate reply.
    wake: Notify,
}

impl Feedback {
    pub fn new(start: Lsn) -> Arc<Self> {
        let f = Feedback::default();
        f.received.store(start.0, Ordering::SeqCst);
        f.flushed.store(start.0, Ordering::SeqCst);
        f.applied.store(start.0, Ordering::SeqCst);
        Arc::new(f)
    }

    pub fn set_flushed(&self, lsn: Lsn) {
        self.flushed.fetch_max(lsn.0, Ordering::SeqCst);
    }

    pub fn set_applied(&self, lsn: Lsn) {
        self.applied.fetch_max(lsn.0, Ordering::SeqCst);
    }

    pub fn flushed(&self) -> Lsn {
        Lsn(self.flushed.load(Ordering::SeqCst))
    }

    /// Sends a status update now rather than at the next tick.
    pub fn poke(&self) {
        self.wake.notify_one();
    }
}

/// What the reader hands the applier.
#[derive(Debug)]
pub enum Event {
    /// pgoutput messages read in one go; `permit` holds their share of
    /// the byte budget until the applier is done with them.
    Data {
        payloads: Vec<Bytes>,
        _permit: OwnedSemaphorePermit,
    },
    /// The server's position while it had nothing to send.
    Keepalive { end: Lsn },
}

/// Where a loop of the stream runs.
enum Task {
    Runtime(JoinHandle<()>),
    /// A thread of its own; the channel closes when it ends.
    Thread(oneshot::Receiver<()>),
}

impl Task {
    fn start<F>(name: &str, span: &tracing::Span, blocking: bool, work: F) -> std::io::Result<Task>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let work = work.instrument(span.clone());
        if !blocking {
            return Ok(Task::Runtime(crate::progress::scope::spawn(work)));
        }
        let handle = tokio::runtime::Handle::current();
        let (done, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                handle.block_on(work);
                drop(done);
            })?;
        Ok(Task::Thread(ended))
    }

    async fn join(&mut self, limit: Duration) {
        let _ = match self {
            Task::Runtime(h) => tokio::time::timeout(limit, h).await.map(|_| ()),
            Task::Thread(ended) => tokio::time::timeout(limit, ended).await.map(|_| ()),
        };
    }

    fn abort(&self) {
        if let Task::Runtime(h) = self {
            h.abort();
        }
    }
}

/// A running replication stream.
pub struct Receiver {
    pub events: mpsc::Receiver<Result<Event, StreamError>>,
    pub feedback: Arc<Feedback>,
    stop: watch::Sender<bool>,
    reader: Task,
    writer: Task,
    /// Ends a plain socket under the threads.
    closer: Option<Plain>,
    budget: Arc<Semaphore>,
}

impl Receiver {
    /// Starts streaming `slot` from `start` with pgoutput proto v1, or
    /// v2 with `stream_large` (the source streams large transactions
    /// while in progress; 14 and later).
    pub async fn start(
        walsender: WalSender,
        slot: &SlotName,
        publication: &PublicationName,
        start: Lsn,
        stream_large: bool,
        origin_none: bool,
        feedback: Arc<Feedback>,
    ) -> Result<Self, WalSenderError> {
        let mut proto = if stream_large {
            "proto_version '2', streaming 'on'".to_string()
        } else {
            "proto_version '1'".to_string()
        };
        // Changes applied under a replication origin are not sent (16+).
        if origin_none && walsender.server_version() >= 160000 {
            proto.push_str(", origin 'none'");
        }
        // publication_names is a list of identifiers inside a literal.
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({proto}, publication_names '\"{}\"')",
            slot.as_str(),
            publication.as_str()
        );
        let (io, leftover) = walsender.start_replication(&command).await?;
        let lost = |error: std::io::Error| WalSenderError::Io {
            side: Side::Source,
            error,
        };
        let (rd, wr, closer) = socket::split(io).map_err(lost)?;
        let blocking = rd.is_blocking();
        let (tx, events) = mpsc::channel(16 * 1024);
        let (stop, stop_rx) = watch::channel(false);
        let budget = Arc::new(Semaphore::new(BUDGET_BYTES));
        let span = tracing::info_span!("stream", slot = %slot);
        let reader = Task::start(
            "pgrepl-stream-read",
            &span,
            blocking,
            read_loop(rd, leftover, tx, budget.clone(), feedback.clone()),
        )
        .map_err(lost)?;
        let writer = Task::start(
            "pgrepl-stream-status",
            &span,
            blocking,
            write_loop(wr, feedback.clone(), stop_rx),
        )
        .map_err(lost)?;
        Ok(Receiver {
            events,
            feedback,
            stop,
            reader,
            writer,
            closer,
            budget,
        })
    }

    /// Sends a last status update (with the final flushed position) and
    /// ends the stream.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.writer.join(Duration::from_secs(3)).await;
        self.close();
        self.reader.join(Duration::from_secs(1)).await;
    }

    fn close(&self) {
        self.reader.abort();
        self.writer.abort();
        self.budget.close();
        if let Some(c) = &self.closer {
            c.shutdown();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

/// Changes read in one go are handed over together, up to this size.
const HANDOVER_BYTES: usize = 1 << 20;

/// What one CopyData of the stream holds.
enum CopyData {
    Change { body: Bytes },
    Keepalive { end: Lsn, reply: bool },
}

fn copy_data(feedback: &Feedback, mut body: Bytes) -> Result<CopyData, StreamError> {
    match body.first().copied() {
        Some(b'w') => {
            if body.len() < 25 {
                return Err(StreamError::Protocol("short XLogData".into()));
            }
            body.advance(1);
            let _start = body.get_u64();
            let end = body.get_u64();
            let _time = body.get_i64();
            if end != 0 {
                feedback.received.fetch_max(end, Ordering::SeqCst);
            }
            // A Commit carries its end LSN at bytes 10..18.
            if body.first() == Some(&b'C') && body.len() >= 18 {
                let commit_end =
                    u64::from_be_bytes(body[10..18].try_into().expect("8 bytes checked above"));
                feedback.received.fetch_max(commit_end, Ordering::SeqCst);
            }
            Ok(CopyData::Change { body })
        }
        Some(b'k') => {
            if body.len() < 18 {
                return Err(StreamError::Protocol("short keepalive".into()));
            }
            body.advance(1);
            let end = body.get_u64();
            let _time = body.get_i64();
            let reply = body.get_u8() == 1;
            feedback.received.fetch_max(end, Ordering::SeqCst);
            Ok(CopyData::Keepalive {
                end: Lsn(end),
                reply,
            })
        }
        other => Err(StreamError::Protocol(format!(
            "CopyData kind {:?}",
            other.map(char::from)
        ))),
    }
}

async fn read_loop(
    mut rd: ReadSide,
    mut buf: BytesMut,
    tx: mpsc::Sender<Result<Event, StreamError>>,
    budget: Arc<Semaphore>,
    feedback: Arc<Feedback>,
) {
    // Hands the changes gathered so far to the applier; false once it is gone.
    async fn hand_over(
        tx: &mpsc::Sender<Result<Event, StreamError>>,
        budget: &Arc<Semaphore>,
        batch: &mut Vec<Bytes>,
        bytes: &mut usize,
    ) -> Result<bool, StreamError> {
        if batch.is_empty() {
            return Ok(true);
        }
        let cost = (*bytes).clamp(1, BUDGET_BYTES) as u32;
        let permit = budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| StreamError::Protocol("budget closed".into()))?;
        *bytes = 0;
        let payloads = std::mem::take(batch);
        Ok(tx
            .send(Ok(Event::Data {
                payloads,
                _permit: permit,
            }))
            .await
            .is_ok())
    }

    let result: Result<(), StreamError> = async {
        let mut batch: Vec<Bytes> = Vec::new();
        let mut bytes = 0usize;
        loop {
            while let Some(frame) =
                split_frame(&mut buf).map_err(|e| StreamError::Io(e.to_string()))?
            {
                match frame.tag {
                    b'd' => match copy_data(&feedback, frame.body)? {
                        CopyData::Change { body } => {
                            bytes += body.len();
                            batch.push(body);
                            if bytes >= HANDOVER_BYTES
                                && !hand_over(&tx, &budget, &mut batch, &mut bytes).await?
                            {
                                return Ok(());
                            }
                        }
                        CopyData::Keepalive { end, reply } => {
                            if reply {
                                feedback.poke();
                            }
                            if !hand_over(&tx, &budget, &mut batch, &mut bytes).await?
                                || tx.send(Ok(Event::Keepalive { end })).await.is_err()
                            {
                                return Ok(());
                            }
                        }
                    },
                    b'E' => return Err(StreamError::Server(parse_error(frame.body))),
                    b'c' | b'C' | b'Z' => return Err(StreamError::Ended),
                    b'N' | b'S' => {}
                    other => {
                        return Err(StreamError::Protocol(format!(
                            "message {:?}",
                            other as char
                        )))
                    }
                }
            }
            if !hand_over(&tx, &budget, &mut batch, &mut bytes).await? {
                return Ok(());
            }
            match rd.fill(&mut buf).await {
                Ok(0) => return Err(StreamError::Io("server closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(StreamError::Io(e.to_string())),
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

fn status_message(feedback: &Feedback) -> BytesMut {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        - PG_EPOCH_OFFSET_MICROS;
    let flushed = feedback.flushed.load(Ordering::SeqCst);
    let written = feedback.received.load(Ordering::SeqCst).max(flushed);
    let applied = feedback.applied.load(Ordering::SeqCst).max(flushed);
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(written);
    body.put_u64(flushed);
    body.put_u64(applied);
    body.put_i64(now);
    body.put_u8(0);
    let mut msg = BytesMut::with_capacity(40);
    msg.put_u8(b'd');
    msg.put_u32(4 + body.len() as u32);
    msg.put_slice(&body);
    msg
}

async fn write_loop(mut wr: WriteSide, feedback: Arc<Feedback>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(STATUS_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = interval.tick() => false,
            _ = feedback.wake.notified() => false,
            changed = stop.changed() => changed.is_err() || *stop.borrow(),
        };
        let mut msg = status_message(&feedback);
        if stopping {
            // CopyDone, then Terminate: the session ends cleanly.
            msg.put_slice(&[b'c', 0, 0, 0, 4, b'X', 0, 0, 0, 4]);
        }
        if wr.send(&msg).await.is_err() {
            tracing::debug!(side = %Side::Source, "could not send standby status; the reader will report the broken stream");
            return;
        }
        if stopping {
            tracing::debug!(flushed = %feedback.flushed(), "final standby status sent");
            return;
        }
    }
}

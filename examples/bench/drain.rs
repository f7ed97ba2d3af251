//! A subscriber that only reads: what receiving alone costs.
//!
//! It streams a slot through a walsender the way pgrepl's reader does (the
//! same socket code: blocking reads of up to 256 KiB on a thread of their
//! own, the same gather pause after a short read; the same protocol
//! options) and throws every message away, looking only at positions to
//! know when it has the whole backlog (the rule pg_recvlogical's
//! `--endpos` follows) and answering the walsender's keepalives. What it
//! spends per transaction is, nearly all, the kernel handing one
//! walsender's messages to a process on this machine. It is a reference,
//! not an exact floor: it reads an otherwise idle stream at its own pace,
//! and its system time has come out both below and above pgrepl's.

use bytes::BytesMut;
use pgrepl::conn::raw::split_frame;
use pgrepl::conn::walsender::WalSender;
use pgrepl::conn::{ConnConfig, Side};
use pgrepl::stream::socket;
use pgrepl::Lsn;

use crate::cpu::Sample;
use crate::support::Cluster;

/// Streams `slot` (pgoutput proto 1, `publication`) until a message or a
/// keepalive at or past `end`. CPU of the reading thread (user and system)
/// and of the walsender serving it, its whole life, as for pgrepl.
pub async fn run(source: &Cluster, slot: &str, publication: &str, end: Lsn) -> Sample {
    let cfg = ConnConfig::resolve(&source.conninfo(), &pgrepl::conn::config::ProcessEnv)
        .expect("source conninfo");
    let walsender = WalSender::connect(Side::Source, &cfg)
        .await
        .expect("walsender session");
    // pgrepl's options: large transactions streamed while in progress
    // from 14 on (see `apply::session`).
    let proto = if walsender.server_version() >= 140000 {
        "proto_version '2', streaming 'on'"
    } else {
        "proto_version '1'"
    };
    let command = format!(
        "START_REPLICATION SLOT {slot} LOGICAL 0/0 ({proto}, publication_names '{publication}')"
    );
    let (io, leftover) = walsender
        .start_replication(&command)
        .await
        .expect("START_REPLICATION");
    let (mut rd, mut wr, _closer) = socket::split(io).expect("split the socket");
    assert!(rd.is_blocking(), "the drain reads a plain socket");
    let client = source.client().await;
    // Its pid, to read its CPU before the session ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let wal_pid = loop {
        let pids = crate::cpu::walsender(&client, slot).await;
        if !pids.is_empty() {
            break pids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drain's walsender did not show in pg_replication_slots"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let handle = tokio::runtime::Handle::current();
    let (user, system) = tokio::task::spawn_blocking(move || {
        let before = ThreadCpu::now();
        handle.block_on(async {
            let mut buf = leftover;
            let mut seen = Lsn::ZERO;
            loop {
                let scan = scan(&mut buf, end, &mut seen);
                if scan.done {
                    break;
                }
                if scan.reply {
                    wr.send(&status(seen)).await.expect("answer a keepalive");
                }
                let n = rd.fill(&mut buf).await.expect("read the stream");
                assert!(n > 0, "the walsender ended the stream before {end}");
            }
        });
        ThreadCpu::now().since(&before)
    })
    .await
    .expect("drain thread");
    Sample {
        walsender: crate::cpu::total(&wal_pid),
        user,
        system,
        target: 0.0,
    }
}

/// What one pass over the messages read so far found.
struct Scan {
    /// A message at or past the end was read.
    done: bool,
    /// The walsender asked for a status update.
    reply: bool,
}

/// Drops every whole message in `buf`, noting the furthest position in
/// `seen`: done once one is at or past `end` (XLogData by its start, a
/// keepalive by the server's end of WAL).
fn scan(buf: &mut BytesMut, end: Lsn, seen: &mut Lsn) -> Scan {
    let mut reply = false;
    while let Some(frame) = split_frame(buf).expect("a protocol message") {
        assert!(
            frame.tag == b'd',
            "message {:?} in the stream",
            frame.tag as char
        );
        let body = &frame.body;
        let at = match body.first() {
            Some(b'w' | b'k') if body.len() >= 9 => {
                let mut lsn = [0u8; 8];
                lsn.copy_from_slice(&body[1..9]);
                Lsn(u64::from_be_bytes(lsn))
            }
            _ => continue,
        };
        *seen = (*seen).max(at);
        if body[0] == b'k' && body.get(17) == Some(&1) {
            reply = true;
        }
        if at >= end {
            return Scan { done: true, reply };
        }
    }
    Scan { done: false, reply }
}

/// A standby status update: received through `seen`, nothing confirmed
/// (the slot is consumed separately), no reply wanted.
fn status(seen: Lsn) -> Vec<u8> {
    let mut msg = Vec::with_capacity(39);
    msg.push(b'd');
    msg.extend_from_slice(&38u32.to_be_bytes());
    msg.push(b'r');
    msg.extend_from_slice(&seen.0.to_be_bytes());
    msg.extend_from_slice(&0u64.to_be_bytes());
    msg.extend_from_slice(&0u64.to_be_bytes());
    msg.extend_from_slice(&0i64.to_be_bytes());
    msg.push(0);
    msg
}

/// The calling thread's CPU: exact runtime (schedstat) and the
/// tick-sampled user/system times that split it.
struct ThreadCpu {
    runtime: f64,
    user: f64,
    system: f64,
}

impl ThreadCpu {
    fn now() -> Self {
        let runtime_ns: f64 = std::fs::read_to_string("/proc/thread-self/schedstat")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("/proc/thread-self/schedstat (a kernel with schedstats)");
        let (user, system) = crate::cpu::stat_cpu("/proc/thread-self/stat");
        ThreadCpu {
            runtime: runtime_ns / 1e9,
            user,
            system,
        }
    }

    /// (user, system) seconds since `before`.
    fn since(&self, before: &ThreadCpu) -> (f64, f64) {
        let secs = self.runtime - before.runtime;
        let (u, s) = (self.user - before.user, self.system - before.system);
        let user_share = if u + s > 0.0 { u / (u + s) } else { 0.5 };
        (secs * user_share, secs * (1.0 - user_share))
    }
}

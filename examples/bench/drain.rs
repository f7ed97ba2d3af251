//! A subscriber that only reads: the floor under any subscriber's own CPU.
//!
//! It streams a slot through a walsender the way pgrepl's reader does (the
//! same socket code: blocking reads of up to 256 KiB on a thread of their
//! own, the same gather pause after a short read) and throws every message
//! away, looking only at positions to know when it has the whole backlog
//! (the rule pg_recvlogical's `--endpos` follows). What it spends per
//! transaction is what the kernel takes to hand one walsender's messages to
//! a process on this machine: pgrepl's own CPU is that plus decoding and
//! applying, so a ratio target below this floor cannot be met by pgrepl.

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
    let command = format!(
        "START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '1', publication_names '{publication}')"
    );
    let (io, leftover) = walsender
        .start_replication(&command)
        .await
        .expect("START_REPLICATION");
    let (mut rd, _wr, _closer) = socket::split(io).expect("split the socket");
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
            loop {
                if past_end(&mut buf, end) {
                    break;
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

/// Drops every whole message in `buf`; true once one is at or past `end`
/// (XLogData by its start, a keepalive by the server's end of WAL).
fn past_end(buf: &mut BytesMut, end: Lsn) -> bool {
    while let Some(frame) = split_frame(buf).expect("a protocol message") {
        assert!(
            frame.tag == b'd',
            "message {:?} in the stream",
            frame.tag as char
        );
        let at = match frame.body.first() {
            Some(b'w' | b'k') if frame.body.len() >= 9 => {
                let mut lsn = [0u8; 8];
                lsn.copy_from_slice(&frame.body[1..9]);
                Lsn(u64::from_be_bytes(lsn))
            }
            _ => continue,
        };
        if at >= end {
            return true;
        }
    }
    false
}

/// The calling thread's CPU: exact runtime (schedstat, ns) and the
/// tick-sampled user/system counts that split it.
struct ThreadCpu {
    runtime_ns: f64,
    user_ticks: f64,
    system_ticks: f64,
}

impl ThreadCpu {
    fn now() -> Self {
        let read =
            |f: &str| std::fs::read_to_string(format!("/proc/thread-self/{f}")).unwrap_or_default();
        let runtime_ns = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let stat = read("stat");
        let fields: Vec<f64> = stat
            .rfind(')')
            .map(|i| &stat[i + 1..])
            .unwrap_or("")
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        ThreadCpu {
            runtime_ns,
            user_ticks: fields.get(11).copied().unwrap_or(0.0),
            system_ticks: fields.get(12).copied().unwrap_or(0.0),
        }
    }

    /// (user, system) seconds since `before`.
    fn since(&self, before: &ThreadCpu) -> (f64, f64) {
        let secs = (self.runtime_ns - before.runtime_ns) / 1e9;
        let (u, s) = (
            self.user_ticks - before.user_ticks,
            self.system_ticks - before.system_ticks,
        );
        let user_share = if u + s > 0.0 { u / (u + s) } else { 0.5 };
        (secs * user_share, secs * (1.0 - user_share))
    }
}

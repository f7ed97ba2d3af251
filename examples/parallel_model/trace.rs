//! Transaction traces: a load run on the source while slots hold its WAL,
//! its changes decoded with pgoutput and reduced to what the design's
//! coordinator sees of each transaction; and the walsender's time to send
//! the same changes.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use bytes::Bytes;
use pgrepl::stream::pgoutput::{self, Datum, Message, OldRow, Tuple};
use rustc_hash::{FxHashMap, FxHasher};

use crate::sim::{self, Change, Op, Txn};
use crate::support::Cluster;

/// Each timing is taken this many times (one slot each), the median kept.
const TIMINGS: usize = 3;

pub enum Load {
    /// pgbench with these arguments.
    Pgbench(Vec<String>),
    /// 40 transactions of 5000 rows into `bulk`.
    Bulk,
}

/// A load's transactions as the coordinator would see them.
pub struct Trace {
    pub name: String,
    pub what: String,
    pub txns: Vec<Txn>,
    pub msgs: u64,
    /// Seconds: the walsender's CPU sending it to pg_recvlogical (to
    /// /dev/null), the source decoding it alone (elapsed), and this process
    /// decoding and keying it (elapsed).
    pub walsender: f64,
    pub decoding: f64,
    pub keying: f64,
}

fn tool(program: &Path, c: &Cluster, args: &[&str]) -> tokio::process::Command {
    let sock = c.socket_dir().display().to_string();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(["-h", &sock, "-p", &c.port.to_string(), "-U", "postgres"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a client tool against `c` as its superuser.
pub async fn run(program: &Path, c: &Cluster, args: &[&str]) {
    let out = tool(program, c, args)
        .output()
        .await
        .expect("run a client tool");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CPU time of a process so far, in seconds (ns resolution), or `None`
/// once it is gone.
pub fn cpu_of(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let ns: f64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Runs pg_recvlogical and returns the CPU time of the walsender serving
/// it (read every few milliseconds while it lives: the last reading
/// misses at most that much).
async fn walsender_cpu(c: &Cluster, recvlogical: &Path, args: &[&str]) -> f64 {
    let client = c.client().await;
    let mut child = tool(recvlogical, c, args)
        .spawn()
        .expect("run pg_recvlogical");
    let (mut pid, mut cpu) = (None, 0.0);
    loop {
        if let Some(status) = child.try_wait().expect("pg_recvlogical") {
            assert!(status.success(), "pg_recvlogical failed");
            break;
        }
        if pid.is_none() {
            pid = client
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = 'pg_recvlogical'",
                    &[],
                )
                .await
                .expect("the walsender")
                .map(|r| r.get::<_, i32>(0));
        }
        if let Some(now) = pid.and_then(cpu_of) {
            cpu = now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(
        pid.is_some(),
        "pg_recvlogical ended before its walsender was seen"
    );
    cpu
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn capture(
    c: &Cluster,
    tools: (&Path, &Path),
    name: &str,
    what: &str,
    load: &Load,
) -> Trace {
    let (pgbench, recvlogical) = tools;
    let slots: Vec<String> = (0..TIMINGS).map(|i| format!("pm_{i}")).collect();
    for slot in &slots {
        c.exec(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ))
        .await;
    }
    match load {
        Load::Pgbench(args) => {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run(pgbench, c, &a).await;
        }
        Load::Bulk => {
            let client = c.client().await;
            for b in 0..40 {
                let sql = format!(
                    "INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series({}, {}) g",
                    b * 5000 + 1,
                    b * 5000 + 5000
                );
                client.batch_execute(&sql).await.expect("bulk insert");
            }
        }
    }
    let end = c
        .value("SELECT pg_current_wal_lsn()::text")
        .await
        .expect("WAL position");
    // WAL past `end`, for pg_recvlogical's --endpos.
    c.exec("SELECT pg_logical_emit_message(false, 'pm', 'end')")
        .await;
    let peek = format!(
        "pg_logical_slot_peek_binary_changes('{}', '{end}', NULL, 'proto_version', '1', 'publication_names', 'pm')",
        slots[0]
    );
    let client = c.client().await;
    let mut decoding = Vec::new();
    for _ in 0..TIMINGS {
        let t = Instant::now();
        client
            .query_one(&format!("SELECT count(*) FROM {peek}"), &[])
            .await
            .expect("decode");
        decoding.push(t.elapsed().as_secs_f64());
    }
    let payloads: Vec<Bytes> = client
        .query(&format!("SELECT data FROM {peek}"), &[])
        .await
        .expect("read the changes")
        .iter()
        .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0)))
        .collect();
    let mut keying = Vec::new();
    let mut txns = Vec::new();
    for _ in 0..TIMINGS {
        let t = Instant::now();
        txns = transactions(&payloads);
        keying.push(t.elapsed().as_secs_f64());
    }
    let mut walsender = Vec::new();
    for slot in &slots {
        let args = [
            "-d",
            "postgres",
            "--slot",
            slot,
            "--start",
            "--no-loop",
            "--endpos",
            &end,
            "-f",
            "/dev/null",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=pm",
        ];
        walsender.push(walsender_cpu(c, recvlogical, &args).await);
        c.exec(&format!("SELECT pg_drop_replication_slot('{slot}')"))
            .await;
    }
    Trace {
        name: name.into(),
        what: what.into(),
        msgs: payloads.len() as u64,
        txns,
        walsender: median(walsender),
        decoding: median(decoding),
        keying: median(keying),
    }
}

/// The coordinator's work on each message: decoded, each row change keyed
/// by its table and replica identity key (new, then old when it changed).
pub fn transactions(payloads: &[Bytes]) -> Vec<Txn> {
    let mut keys: FxHashMap<u32, Vec<usize>> = FxHashMap::default();
    let mut out = Vec::new();
    let mut cur: Option<Txn> = None;
    for p in payloads {
        let m = pgoutput::decode(p.clone()).expect("a pgoutput message");
        if let Some(t) = &mut cur {
            t.msgs += 1;
        }
        let hash = |rel: u32, row: &Tuple| -> Vec<u64> {
            match keys.get(&rel) {
                Some(cols) if !cols.is_empty() => vec![key_hash(rel, cols, row)],
                _ => Vec::new(),
            }
        };
        let change = |rel, op, keys| vec![Change { rel, op, keys }];
        let changes = match m {
            Message::Begin { .. } => {
                cur = Some(Txn {
                    msgs: 1,
                    ..Default::default()
                });
                continue;
            }
            Message::Commit { .. } => {
                out.push(cur.take().expect("COMMIT after BEGIN"));
                continue;
            }
            Message::Relation(r) => {
                // REPLICA IDENTITY FULL flags every column: no key tells
                // two equal rows apart.
                let cols = r.columns.iter().enumerate().filter(|(_, c)| c.key);
                let key = match r.replica_identity {
                    b'f' => Vec::new(),
                    _ => cols.map(|(i, _)| i).collect(),
                };
                keys.insert(r.oid, key);
                continue;
            }
            Message::Insert { relation, new } => change(relation, Op::Insert, hash(relation, &new)),
            Message::Update { relation, old, new } => {
                let mut k = hash(relation, &new);
                if let Some(OldRow::Key(o)) = &old {
                    k.extend(hash(relation, o));
                }
                change(relation, Op::Update, k)
            }
            Message::Delete {
                relation,
                old: OldRow::Key(o) | OldRow::Full(o),
            } => change(relation, Op::Delete, hash(relation, &o)),
            Message::Truncate { relations, .. } => relations
                .into_iter()
                .map(|rel| Change {
                    rel,
                    op: Op::Truncate,
                    keys: Vec::new(),
                })
                .collect(),
            _ => continue,
        };
        if let Some(t) = &mut cur {
            t.changes.extend(changes);
        }
    }
    out
}

fn key_hash(rel: u32, cols: &[usize], row: &Tuple) -> u64 {
    let mut h = FxHasher::default();
    rel.hash(&mut h);
    for &i in cols {
        match row.get(i) {
            Some(Datum::Text(b) | Datum::Binary(b)) => b[..].hash(&mut h),
            _ => h.write_u8(0xff),
        }
    }
    h.finish() & sim::KEY_MASK
}

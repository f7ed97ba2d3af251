//! The scheduler of the design, simulated: segments of consecutive source
//! transactions, each one target transaction on one of N workers; a row
//! is written only once every earlier segment holding its key committed;
//! commits in source order.

use rustc_hash::{FxHashMap, FxHashSet};

/// Key hashes keep the top bit clear; table tokens set it.
pub const KEY_MASK: u64 = !(1 << 63);
const TABLE: u64 = 1 << 63;
/// Taken shared by every segment and exclusively by a barrier (DDL).
const BARRIER: u64 = u64::MAX;
/// Rows of one set-based statement (the applier's batch size).
const SET_ROWS: usize = 5000;
/// Fewer rows than this go as single statements (as `flush`).
const SET_MIN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

/// One row change, or the TRUNCATE of one table.
#[derive(Clone, Debug)]
pub struct Change {
    pub rel: u32,
    pub op: Op,
    /// Replica identity key hashes (the new one, then the old one when
    /// it changed); empty for a table without one.
    pub keys: Vec<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub msgs: u32,
    pub changes: Vec<Change>,
    /// DDL: applied alone, after everything before it committed.
    pub barrier: bool,
}

/// Seconds.
#[derive(Clone, Debug)]
pub struct Costs {
    pub walsender_msg: f64,
    pub coordinator_msg: f64,
    pub dispatch: f64,
    pub rtt: f64,
    /// Per single-row statement, by `Op` (pipelined).
    pub single: [f64; 4],
    /// Per row of a set-based statement (COPY for inserts), by `Op`.
    pub set_row: [f64; 4],
    pub set_statement: f64,
    /// The commit step holding the origin (one worker), and passing it.
    pub commit: f64,
    pub commit_baton: f64,
    /// pgrepl's CPU per row sent (encoding, replies): counted in CPU
    /// only, it overlaps the server's work.
    pub pgrepl_row: f64,
    /// Factor on the target's per-row and per-statement costs.
    pub target: f64,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            walsender_msg: 2e-6,
            coordinator_msg: 1e-6,
            dispatch: 3e-6,
            rtt: 30e-6,
            single: [10e-6, 10e-6, 10e-6, 2e-3],
            set_row: [2e-6, 4e-6, 4e-6, 2e-3],
            set_statement: 50e-6,
            commit: 60e-6,
            commit_baton: 90e-6,
            pgrepl_row: 1e-6,
            target: 1.0,
        }
    }
}

impl Costs {
    pub fn describe(&self) -> String {
        let us = |s: f64| format!("{:.1} us", s * 1e6);
        format!(
            "the target backend's CPU per single-row statement (pipelined): update {}, insert {}; per set-based update \
             {} a row + {} a statement; per COPY row {}; commit step (BEGIN, ledger upsert, origin xact_setup, COMMIT) \
             {} holding the origin, {} passing it (session setup and reset around it), each with a round trip of {}; \
             pgrepl's own CPU {} a row (assumed)",
            us(self.single[1]),
            us(self.single[0]),
            us(self.set_row[1]),
            us(self.set_statement),
            us(self.set_row[0]),
            us(self.commit),
            us(self.commit_baton),
            us(self.rtt),
            us(self.pgrepl_row),
        )
    }

    /// The server's time for `n` net rows of one operation on one table.
    fn rows(&self, op: Op, n: usize) -> f64 {
        let i = op as usize;
        let t = if n < SET_MIN || op == Op::Truncate {
            n as f64 * self.single[i]
        } else {
            n.div_ceil(SET_ROWS) as f64 * self.set_statement + n as f64 * self.set_row[i]
        };
        t * self.target
    }
}

/// A net row of a segment: its table, what it ends as, its key token
/// (none for a table without a key).
#[derive(Clone, Debug)]
struct Net {
    rel: u32,
    op: Op,
    key: Option<u64>,
}

/// Consecutive source transactions applied as one target transaction.
#[derive(Clone, Debug)]
pub struct Segment {
    #[cfg_attr(not(test), allow(dead_code))]
    pub txns: std::ops::Range<usize>,
    /// Messages and row changes of each of its transactions.
    msgs: Vec<u32>,
    txn_rows: Vec<usize>,
    rows: Vec<Net>,
    /// Lock tokens, exclusive or shared.
    pub tokens: Vec<(u64, bool)>,
}

/// Cuts the trace: at most `group` transactions or `max_rows` rows a
/// segment; a barrier alone.
pub fn segments(txns: &[Txn], group: usize, max_rows: usize) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut rows = 0;
    for (i, t) in txns.iter().enumerate() {
        if i > start && (t.barrier || txns[i - 1].barrier || i - start >= group || rows >= max_rows)
        {
            out.push(segment(txns, start..i));
            start = i;
            rows = 0;
        }
        rows += t.changes.len();
    }
    if start < txns.len() {
        out.push(segment(txns, start..txns.len()));
    }
    out
}

fn segment(txns: &[Txn], range: std::ops::Range<usize>) -> Segment {
    // Per key: its table, and the first and last operation on it.
    let mut keyed: FxHashMap<u64, (u32, Op, Op)> = FxHashMap::default();
    let mut rows = Vec::new();
    let mut tokens: FxHashMap<u64, bool> = FxHashMap::default();
    let mut take = |t: u64, excl: bool| *tokens.entry(t).or_insert(excl) |= excl;
    let barrier = txns[range.clone()].iter().any(|t| t.barrier);
    take(BARRIER, barrier);
    for c in txns[range.clone()].iter().flat_map(|t| &t.changes) {
        let table = TABLE | c.rel as u64;
        if c.keys.is_empty() {
            // No key: inserts commute; anything else holds the table.
            take(table, c.op != Op::Insert);
            rows.push(Net {
                rel: c.rel,
                op: c.op,
                key: None,
            });
            continue;
        }
        take(table, false);
        for (i, &k) in c.keys.iter().enumerate() {
            take(k, true);
            // A changed key: the old one is deleted, the new inserted.
            let op = match (c.op, c.keys.len(), i) {
                (Op::Update, 2, 0) => Op::Insert,
                (Op::Update, 2, _) => Op::Delete,
                (op, _, _) => op,
            };
            keyed
                .entry(k)
                .and_modify(|e| e.2 = op)
                .or_insert((c.rel, op, op));
        }
    }
    for (k, (rel, first, last)) in keyed {
        let op = match (first, last) {
            (Op::Insert, Op::Delete) => continue,
            (Op::Insert, _) => Op::Insert,
            (_, Op::Delete) => Op::Delete,
            _ => Op::Update,
        };
        rows.push(Net {
            rel,
            op,
            key: Some(k),
        });
    }
    Segment {
        msgs: txns[range.clone()].iter().map(|t| t.msgs).collect(),
        txn_rows: txns[range.clone()]
            .iter()
            .map(|t| t.changes.len())
            .collect(),
        txns: range,
        rows,
        tokens: tokens.into_iter().collect(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Rows with free keys at once, the others after the commit they wait for.
    Key,
    /// The whole segment waits for every conflicting earlier commit.
    Segment,
    /// No dependency tracking at all: wrong, for the checker's test.
    #[cfg(test)]
    Unsafe,
}

/// When a segment ran (read by the tests' check).
#[derive(Clone, Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct Timing {
    pub worker: usize,
    pub start: f64,
    /// Tokens written only from `late` on (the others from `start`).
    pub waited: FxHashSet<u64>,
    pub late: f64,
    pub commit: f64,
}

pub struct Run {
    #[cfg_attr(not(test), allow(dead_code))]
    pub segments: Vec<Timing>,
    /// When the last segment committed.
    pub end: f64,
    /// CPU seconds of every process (walsender, coordinator, backends, pgrepl's workers).
    pub cpu: f64,
    /// CPU seconds of the target's backends.
    pub target: f64,
}

/// Runs the segments on `workers` workers; without `walsender`, every
/// transaction is there from the start (the target side alone).
pub fn schedule(segs: &[Segment], c: &Costs, workers: usize, rule: Rule, walsender: bool) -> Run {
    let mut free = vec![0.0f64; workers];
    let mut last_excl: FxHashMap<u64, usize> = FxHashMap::default();
    let mut last_shared: FxHashMap<u64, usize> = FxHashMap::default();
    let mut out: Vec<Timing> = Vec::with_capacity(segs.len());
    let (mut sent, mut decoded, mut cpu, mut target) = (0.0f64, 0.0f64, 0.0, 0.0);
    for (s, seg) in segs.iter().enumerate() {
        // When the coordinator has its first and its last transaction.
        let (mut first, mut last_rows) = (None, 0.0);
        for (&m, &rows) in seg.msgs.iter().zip(&seg.txn_rows) {
            let m = m as f64;
            sent += m * c.walsender_msg;
            decoded = decoded.max(if walsender { sent } else { 0.0 }) + m * c.coordinator_msg;
            first.get_or_insert(decoded + c.dispatch);
            last_rows = rows as f64;
        }
        let first = first.expect("a segment has a transaction");
        decoded += c.dispatch;
        cpu += seg.msgs.iter().map(|&m| m as f64).sum::<f64>()
            * (c.walsender_msg + c.coordinator_msg)
            + c.dispatch;
        let worker = (0..workers)
            .min_by(|&a, &b| free[a].total_cmp(&free[b]))
            .expect("a worker");
        // Dispatched with its first transaction: rows go to the target
        // as they come (the applier's batches fill while it receives).
        let dispatched = first.max(free[worker]);
        // Tokens whose last conflicting holder has not committed yet.
        let mut waited = FxHashSet::default();
        let mut wait_for: Option<usize> = None;
        for &(t, excl) in &seg.tokens {
            let before = if excl {
                last_excl.get(&t).max(last_shared.get(&t))
            } else {
                last_excl.get(&t)
            };
            if let Some(&j) = before.filter(|&&j| out[j].commit > dispatched) {
                waited.insert(t);
                wait_for = wait_for.max(Some(j));
            }
        }
        match rule {
            Rule::Key => {}
            Rule::Segment if wait_for.is_some() => waited.extend(seg.tokens.iter().map(|t| t.0)),
            Rule::Segment => {}
            #[cfg(test)]
            Rule::Unsafe => {
                waited.clear();
                wait_for = None;
            }
        }
        let all = waited.contains(&BARRIER) || (rule == Rule::Segment && wait_for.is_some());
        let mut counts: FxHashMap<(u32, Op), [usize; 2]> = FxHashMap::default();
        for r in &seg.rows {
            let late = all
                || r.key.is_some_and(|k| waited.contains(&k))
                || waited.contains(&(TABLE | r.rel as u64));
            counts.entry((r.rel, r.op)).or_default()[late as usize] += 1;
        }
        let (mut early_cost, mut late_cost) = (0.0, 0.0);
        for (&(_, op), &[early, late]) in &counts {
            early_cost += c.rows(op, early);
            late_cost += c.rows(op, late);
        }
        let start = dispatched;
        // Not done before the last transaction came and its rows were written.
        let tail = early_cost * last_rows / seg.txn_rows.iter().sum::<usize>().max(1) as f64;
        let early_done = (start + early_cost).max(decoded + tail);
        let late = match wait_for {
            Some(j) => early_done.max(out[j].commit),
            None => early_done,
        };
        let ready = late + late_cost + c.rtt;
        let step = if workers == 1 {
            c.commit
        } else {
            c.commit_baton
        };
        let commit = ready.max(out.last().map_or(0.0, |p| p.commit)) + step;
        let backend = early_cost + late_cost + (step - c.rtt).max(0.0);
        target += backend;
        cpu += backend + seg.rows.len() as f64 * c.pgrepl_row;
        free[worker] = commit;
        for &(t, excl) in &seg.tokens {
            if excl {
                &mut last_excl
            } else {
                &mut last_shared
            }
            .insert(t, s);
        }
        out.push(Timing {
            worker,
            start,
            waited,
            late,
            commit,
        });
    }
    let end = out.last().map_or(0.0, |t| t.commit);
    Run {
        segments: out,
        end,
        cpu,
        target,
    }
}

/// Share of transactions with a key that one of the `window` before
/// them also has.
pub fn near_conflicts(txns: &[Txn], window: usize) -> f64 {
    let mut last: FxHashMap<u64, usize> = FxHashMap::default();
    let mut hits = 0;
    for (i, t) in txns.iter().enumerate() {
        let keys = t.changes.iter().flat_map(|c| &c.keys);
        if keys
            .clone()
            .any(|k| last.get(k).is_some_and(|&j| i - j <= window))
        {
            hits += 1;
        }
        for &k in keys {
            last.insert(k, i);
        }
    }
    hits as f64 / txns.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The design's two rules, checked on a run by a check of its own:
    /// the segments cover the transactions in order; commits are in
    /// segment order; a worker runs one segment at a time; and no
    /// segment writes a token before every earlier segment holding it
    /// in a conflicting mode has committed (so two transactions with
    /// the same key never overlap, in either order).
    fn violations(segs: &[Segment], run: &Run) -> Vec<String> {
        let mut v = Vec::new();
        let mut next = 0;
        for (s, seg) in segs.iter().enumerate() {
            if seg.txns.start != next {
                v.push(format!(
                    "segment {s} starts at transaction {}, not {next}",
                    seg.txns.start
                ));
            }
            next = seg.txns.end;
        }
        let t = &run.segments;
        for s in 1..t.len() {
            if t[s].commit <= t[s - 1].commit {
                v.push(format!(
                    "segment {s} committed at {} before segment {}",
                    t[s].commit,
                    s - 1
                ));
            }
            if let Some(p) = (0..s).rev().find(|&p| t[p].worker == t[s].worker) {
                if t[s].start < t[p].commit {
                    v.push(format!(
                        "worker {} started segment {s} before segment {p} committed",
                        t[s].worker
                    ));
                }
            }
        }
        let mut held: FxHashMap<u64, Vec<(usize, bool)>> = FxHashMap::default();
        for (s, seg) in segs.iter().enumerate() {
            for &(tok, excl) in &seg.tokens {
                let writes = if t[s].waited.contains(&tok) {
                    t[s].late
                } else {
                    t[s].start
                };
                for &(j, other) in held.get(&tok).into_iter().flatten() {
                    if (excl || other) && writes < t[j].commit {
                        v.push(format!("segment {s} wrote {tok:x} at {writes} before segment {j} committed at {}", t[j].commit));
                    }
                }
                held.entry(tok).or_default().push((s, excl));
            }
        }
        v
    }

    /// Random transactions over few keys (many conflicts), some without
    /// a key, some TRUNCATEs and DDL barriers.
    fn trace(seed: u64, n: usize) -> Vec<Txn> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let changes = (0..rng.random_range(1..6))
                    .map(|_| {
                        let rel = rng.random_range(1..4u32);
                        match rng.random_range(0..100) {
                            0 => Change {
                                rel,
                                op: Op::Truncate,
                                keys: vec![],
                            },
                            1..=10 => Change {
                                rel: 9,
                                op: Op::Insert,
                                keys: vec![],
                            },
                            11..=13 => Change {
                                rel: 9,
                                op: Op::Delete,
                                keys: vec![],
                            },
                            r => {
                                let op = [Op::Insert, Op::Update, Op::Delete][r % 3];
                                let key = |rng: &mut rand::rngs::StdRng| {
                                    ((rel as u64) << 32) | rng.random_range(0..40u64)
                                };
                                let mut keys = vec![key(&mut rng)];
                                if op == Op::Update && r % 7 == 0 {
                                    keys.push(key(&mut rng));
                                }
                                Change { rel, op, keys }
                            }
                        }
                    })
                    .collect();
                Txn {
                    msgs: 2 + rng.random_range(1..6),
                    changes,
                    barrier: rng.random_range(0..200) == 0,
                }
            })
            .collect()
    }

    #[test]
    fn same_key_never_overlaps_and_commits_keep_source_order() {
        for seed in 0..40 {
            let txns = trace(seed, 400);
            for group in [1, 3, 16] {
                let segs = segments(&txns, group, 50);
                for workers in [1, 2, 5, 16] {
                    for rule in [Rule::Key, Rule::Segment] {
                        let run = schedule(&segs, &Costs::default(), workers, rule, seed % 2 == 0);
                        let v = violations(&segs, &run);
                        assert!(
                            v.is_empty(),
                            "seed {seed}, group {group}, {workers} workers, {rule:?}: {} violations, first {:?}",
                            v.len(),
                            &v[..v.len().min(5)]
                        );
                    }
                }
            }
        }
    }

    /// The check catches a scheduler that ignores keys.
    #[test]
    fn the_check_sees_a_scheduler_without_dependencies() {
        let txns = trace(1, 400);
        let segs = segments(&txns, 2, 50);
        let run = schedule(&segs, &Costs::default(), 8, Rule::Unsafe, false);
        assert!(violations(&segs, &run)
            .iter()
            .any(|v| v.contains("before segment")));
    }

    /// Conflicting transactions gain nothing from more workers; independent ones do.
    #[test]
    fn workers_help_only_independent_transactions() {
        let txn = |k: u64| Txn {
            msgs: 3,
            changes: vec![Change {
                rel: 1,
                op: Op::Update,
                keys: vec![k],
            }],
            barrier: false,
        };
        let c = Costs {
            target: 50.0,
            ..Costs::default()
        };
        let time = |txns: &[Txn], w| schedule(&segments(txns, 1, 10), &c, w, Rule::Key, false).end;
        let hot: Vec<Txn> = (0..200).map(|_| txn(7)).collect();
        let cold: Vec<Txn> = (0..200).map(txn).collect();
        assert!(time(&hot, 8) > 0.95 * time(&hot, 1));
        assert!(time(&cold, 8) < 0.3 * time(&cold, 1));
    }

    /// Today's applier folds a group: one net row per key.
    #[test]
    fn a_segment_folds_rows_per_key() {
        let t = |op, keys: Vec<u64>| Txn {
            msgs: 3,
            changes: vec![Change { rel: 1, op, keys }],
            barrier: false,
        };
        let txns = [
            t(Op::Insert, vec![1]),
            t(Op::Update, vec![1]),
            t(Op::Update, vec![2]),
            t(Op::Delete, vec![2]),
            t(Op::Insert, vec![3]),
            t(Op::Delete, vec![3]),
        ];
        let seg = &segments(&txns, 10, 100)[0];
        let mut ops: Vec<(Option<u64>, Op)> = seg.rows.iter().map(|r| (r.key, r.op)).collect();
        ops.sort_by_key(|r| r.0);
        assert_eq!(ops, [(Some(1), Op::Insert), (Some(2), Op::Delete)]);
    }
}

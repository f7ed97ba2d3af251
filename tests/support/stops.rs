//! A sync stopped and started again while a workload runs, the ways a
//! user or a supervisor stops one: SIGTERM, kill -9, or a run with
//! `--until-caught-up` that ends by itself at its point. The points are
//! drawn from the test's seed: after the workload's Nth transaction, and
//! sometimes at the first moment after it that a large transaction is
//! open on the target on a connection of its own (streamed while in
//! progress), so a stop lands inside one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use super::pgrepl::{Output, Running};
use super::{Cluster, Pair};

/// How one run of the sync ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Term,
    Kill,
    /// Started with `--until-caught-up`: it ends by itself.
    CaughtUp,
}

/// Where in the workload a stop comes, and how the run started there is
/// to end at the next one.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    /// After this many of the round's transactions ran on the source.
    pub after: usize,
    /// Then, when a streamed transaction is open on the target (14+; see
    /// `Syncs::new`), or before 14 a transaction that wrote, if one shows
    /// up.
    pub inside_streamed: bool,
    pub how: Stop,
}

/// `n` stop points for a round of `txns` transactions, in order.
pub fn plan(rng: &mut StdRng, txns: usize, n: usize) -> Vec<Point> {
    let mut points: Vec<Point> = (0..n)
        .map(|_| Point {
            after: rng.random_range(0..txns.max(1)),
            inside_streamed: rng.random_bool(0.5),
            how: match rng.random_range(0..3) {
                0 => Stop::Term,
                1 => Stop::Kill,
                _ => Stop::CaughtUp,
            },
        })
        .collect();
    points.sort_by_key(|p| p.after);
    points
}

/// What the stops did, for the test to check it drove what it meant to.
#[derive(Debug, Default)]
pub struct Tally {
    pub term: usize,
    pub kill: usize,
    pub caught_up: usize,
    /// Stops made while a streamed transaction was open on the target, as
    /// the run's own log tells.
    pub inside_streamed: usize,
    /// Everything the runs that ended by themselves or by SIGTERM printed.
    pub stderr: String,
}

/// The sync, run and stopped.
pub struct Syncs<'a> {
    pair: &'a Pair,
    extra: Vec<String>,
    current: Option<(Running, Stop)>,
    /// When the source streams large transactions while in progress
    /// (14+): the query of the target's applied position (see `new`).
    streamed_position: Option<&'static str>,
    pub tally: Tally,
}

const LIMIT: Duration = Duration::from_secs(300);

/// The position the target applied through, by `query`.
async fn applied(target: &tokio_postgres::Client, query: &str) -> Option<::pgrepl::Lsn> {
    target.query_one(query, &[]).await.ok()?.get(0)
}

/// A pgrepl connection holds a transaction that wrote open on the target
/// (most often a large one's, streamed, which lasts longest).
async fn writing(target: &tokio_postgres::Client) -> bool {
    target
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgrepl'
               AND backend_xid IS NOT NULL",
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0) > 0)
        .unwrap_or(false)
}

impl<'a> Syncs<'a> {
    /// `extra`: arguments every run gets (`-v`, say).
    /// `streamed_position`: on a source that streams large transactions
    /// (14+), the query of the position the target applied through. A stop
    /// meant for inside a streamed transaction then waits for the run's log
    /// to show one open, past the end of the workload until the target has
    /// applied all the source wrote (a round's large transactions come
    /// last, and a run that is behind streams them after the workload is
    /// done). Before 14 it waits for any pgrepl transaction that wrote.
    pub fn new(
        pair: &'a Pair,
        extra: &[&str],
        streamed_position: Option<&'static str>,
    ) -> Syncs<'a> {
        Syncs {
            pair,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            current: None,
            streamed_position,
            tally: Tally::default(),
        }
    }

    /// Starts a run that ends as `how` says.
    pub fn start(&mut self, how: Stop) {
        assert!(self.current.is_none(), "a sync is already running");
        let mut args: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        if how == Stop::CaughtUp {
            args.push("--until-caught-up");
        }
        self.current = Some((self.pair.spawn("sync", &args), how));
    }

    /// The running sync, which must not have ended.
    pub fn running(&mut self) -> &mut Running {
        let (r, _) = self.current.as_mut().expect("a sync is running");
        r.assert_running();
        r
    }

    /// Ends the current run its way (a `--until-caught-up` one is waited
    /// for), checking it exited as it should.
    pub async fn stop(&mut self) {
        let Some((running, how)) = self.current.take() else {
            return;
        };
        if streamed_open(&running.output_so_far()) {
            self.tally.inside_streamed += 1;
        }
        match how {
            Stop::Term => {
                // Its first line: pgrepl listens for signals from its
                // start, but one sent before that ends it as kill -9 does.
                let start = Instant::now();
                while running.output_so_far().trim().is_empty() {
                    assert!(start.elapsed() < LIMIT, "a sync printed nothing");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                running.signal(libc::SIGTERM);
                let out = running.wait(LIMIT).await;
                self.ended(&out, "SIGTERM");
                self.tally.term += 1;
            }
            Stop::CaughtUp => {
                let out = running.wait(LIMIT).await;
                self.ended(&out, "--until-caught-up");
                self.tally.caught_up += 1;
            }
            Stop::Kill => {
                running.kill().await;
                self.tally.kill += 1;
            }
        }
    }

    /// Ends the last run with Ctrl-C and returns what it printed.
    pub async fn finish(&mut self) -> Output {
        let (running, _) = self.current.take().expect("a sync is running");
        running.signal(libc::SIGINT);
        let out = running.wait(LIMIT).await;
        self.ended(&out, "Ctrl-C");
        out
    }

    fn ended(&mut self, out: &Output, how: &str) {
        assert!(out.success(), "a sync ended by {how} failed: {out}");
        self.tally.stderr.push_str(&out.stderr);
    }

    /// Runs the workload's stops: for each point, waits until `done`
    /// transactions reach it (and, if asked, a streamed transaction is
    /// open on the target while the workload still runs), ends the running
    /// sync the way it was started to end, and starts the next one, to end
    /// as the point says. `finished` turns true when the workload is.
    pub async fn drive(
        &mut self,
        points: &[Point],
        done: &Arc<AtomicUsize>,
        finished: &Arc<std::sync::atomic::AtomicBool>,
    ) {
        let target = self.pair.target.client().await;
        for p in points {
            let start = Instant::now();
            while done.load(Ordering::SeqCst) < p.after && !finished.load(Ordering::SeqCst) {
                assert!(
                    start.elapsed() < LIMIT,
                    "the workload did not reach transaction {}",
                    p.after
                );
                self.check_alive();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if p.inside_streamed {
                // Until one shows up or the workload and the sync are done.
                let mut source_end: Option<::pgrepl::Lsn> = None;
                loop {
                    // What `stop` tallies: the run's own log shows a
                    // streamed transaction open (a group transaction that
                    // merely wrote is not one); before 14, a large
                    // transaction applied whole is the nearest thing.
                    let open = match &self.current {
                        Some((r, _)) if self.streamed_position.is_some() => {
                            streamed_open(&r.output_so_far())
                        }
                        _ => writing(&target).await,
                    };
                    if open {
                        break;
                    }
                    let ended = self.current.as_mut().is_some_and(|(r, how)| {
                        *how == Stop::CaughtUp && matches!(r.child.try_wait(), Ok(Some(_)))
                    });
                    if ended {
                        break;
                    }
                    if finished.load(Ordering::SeqCst) {
                        let Some(position) = self.streamed_position else {
                            break;
                        };
                        let end = match source_end {
                            Some(end) => end,
                            None => {
                                let end = self.source_position().await;
                                source_end = Some(end);
                                end
                            }
                        };
                        if applied(&target, position).await.is_some_and(|at| at >= end) {
                            break;
                        }
                    }
                    assert!(
                        start.elapsed() < LIMIT,
                        "waiting for a streamed transaction"
                    );
                    self.check_alive();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            self.stop().await;
            self.start(p.how);
        }
    }

    /// The source's current WAL position.
    async fn source_position(&self) -> ::pgrepl::Lsn {
        self.pair
            .source
            .value("SELECT pg_current_wal_lsn()::text")
            .await
            .expect("the source's position")
            .parse()
            .expect("an LSN")
    }

    /// At the end of a round: a run that ends by itself is waited for,
    /// and a plain one started, to catch up and stay.
    pub async fn settle(&mut self) {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, how)| *how != Stop::Term)
        {
            self.stop().await;
        }
        if self.current.is_none() {
            self.start(Stop::Term);
        }
    }

    /// Fails at once if a run that should still be going has ended.
    fn check_alive(&mut self) {
        if let Some((r, how)) = self.current.as_mut() {
            if *how != Stop::CaughtUp {
                r.assert_running();
            }
        }
    }

    /// The target, for callers waiting on it.
    pub fn target(&self) -> &Cluster {
        &self.pair.target
    }
}

/// Whether a run's `-v` log shows a streamed transaction begun on its own
/// connection and not yet committed or rolled back.
fn streamed_open(log: &str) -> bool {
    let xid = |line: &str| -> Option<String> {
        let at = line.find("xid")?;
        let rest = line[at + 3..].trim_start_matches(|c: char| !c.is_ascii_digit());
        Some(rest.chars().take_while(char::is_ascii_digit).collect())
    };
    let mut open = std::collections::HashSet::new();
    for line in log.lines().map(super::strip_ansi) {
        let line = line.as_str();
        if line.contains("stream_large=") {
            // A session (re)starting: what the one before held open was
            // dropped with its connections, logged or not.
            open.clear();
        } else if line.contains("applying it on a connection of its own") {
            open.extend(xid(line));
        } else if line.contains("streamed transaction committed")
            || line.contains("streamed transaction aborted")
        {
            if let Some(x) = xid(line) {
                open.remove(&x);
            }
        }
    }
    !open.is_empty()
}

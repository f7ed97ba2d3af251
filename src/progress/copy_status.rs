//! The copy's part of `status` while it runs or waits to be resumed: what
//! the target keeps, what remains, the rate of the last minute and the
//! time left at that rate.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use super::{human_bytes, human_duration};
use crate::sql::SyncName;

/// Chunks copied in this window make the rate.
const WINDOW_SECS: f64 = 60.0;
/// No chunk for this long: the copy is not running.
const IDLE_SECS: f64 = 20.0;

#[derive(Clone, Debug, Serialize)]
pub struct CopyProgress {
    pub tables_copied: i64,
    pub tables: i64,
    /// Chunks on the target (of whole and of split tables).
    pub chunks: i64,
    pub rows_copied: i64,
    /// The source's estimate of all the tables' rows (pg_class.reltuples).
    pub rows_estimated: i64,
    pub bytes_per_second: Option<f64>,
    pub rows_per_second: Option<f64>,
    /// At the rate of the last minute; none while nothing is copying.
    pub eta_seconds: Option<f64>,
}

/// Reads the copy's progress (`src`: the source, for the row estimate).
pub async fn read(
    src: &Client,
    tgt: &Client,
    name: &SyncName,
) -> Result<CopyProgress, tokio_postgres::Error> {
    let tables = tgt
        .query_one(
            "SELECT count(*) FILTER (WHERE state IN ('copied', 'streaming')), count(*),
                    coalesce(array_agg(schema_name), '{}'), coalesce(array_agg(table_name), '{}')
             FROM pgrepl.tables WHERE sync_name = $1",
            &[&name.as_str()],
        )
        .await?;
    let chunks = tgt
        .query_one(
            &format!(
                "WITH c AS (
                     SELECT rows, (to_jsonb(c) ->> 'bytes')::int8 AS bytes,
                            (to_jsonb(c) ->> 'copied_at')::timestamptz AS at
                     FROM pgrepl.copied_chunks c WHERE sync_name = $1)
                 SELECT count(*), coalesce(sum(rows), 0)::int8,
                        coalesce(sum(bytes) FILTER (WHERE at > now() - interval '{WINDOW_SECS} seconds'), 0)::int8,
                        coalesce(sum(rows) FILTER (WHERE at > now() - interval '{WINDOW_SECS} seconds'), 0)::int8,
                        extract(epoch FROM max(at) - min(at) FILTER (WHERE at > now() - interval '{WINDOW_SECS} seconds'))::float8,
                        extract(epoch FROM now() - max(at))::float8
                 FROM c"
            ),
            &[&name.as_str()],
        )
        .await?;
    let schemas: Vec<String> = tables.get(2);
    let names: Vec<String> = tables.get(3);
    let estimated: i64 = src
        .query_one(
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::int8
             FROM unnest($1::text[], $2::text[]) AS u(s, n)
             JOIN pg_namespace ns ON ns.nspname = u.s
             JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = u.n",
            &[&schemas, &names],
        )
        .await?
        .get(0);
    let rows_copied: i64 = chunks.get(1);
    // Over the span of the last minute's chunks, while chunks still come.
    let span: Option<f64> = chunks.get(4);
    let idle: Option<f64> = chunks.get(5);
    let copying = idle.is_some_and(|i| i < IDLE_SECS);
    let rate = |n: i64| span.filter(|_| copying).map(|w| n as f64 / w.max(0.1));
    let rows_per_second = rate(chunks.get(3)).filter(|r| *r > 0.0);
    Ok(CopyProgress {
        tables_copied: tables.get(0),
        tables: tables.get(1),
        chunks: chunks.get(0),
        rows_copied,
        rows_estimated: estimated.max(rows_copied),
        bytes_per_second: rate(chunks.get(2)),
        rows_per_second,
        eta_seconds: rows_per_second.map(|r| (estimated - rows_copied).max(0) as f64 / r),
    })
}

impl CopyProgress {
    /// `  copy: 12 of 20 tables copied, 37 chunks kept; ...`.
    pub fn render(&self) -> String {
        let share = if self.rows_estimated > 0 {
            format!(
                " ({:.0}%)",
                100.0 * self.rows_copied as f64 / self.rows_estimated as f64
            )
        } else {
            String::new()
        };
        let pace = match (
            self.bytes_per_second,
            self.rows_per_second,
            self.eta_seconds,
        ) {
            (Some(b), Some(r), Some(eta)) => format!(
                "; {}/s, {r:.0} rows/s over the last minute, about {} left",
                human_bytes(b as u64),
                human_duration(Duration::from_secs_f64(eta.max(0.0)))
            ),
            _ => "; no chunk copied lately (stopped? `pgrepl sync` resumes it)".to_string(),
        };
        format!(
            "  copy: {} of {} tables copied, {} chunk(s) kept on the target; {} of about {} rows{share}{pace}\n",
            self.tables_copied, self.tables, self.chunks, self.rows_copied, self.rows_estimated
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_copy_says_its_pace_and_a_stopped_one_how_to_go_on() {
        let mut p = CopyProgress {
            tables_copied: 3,
            tables: 5,
            chunks: 9,
            rows_copied: 250,
            rows_estimated: 1000,
            bytes_per_second: Some(2048.0),
            rows_per_second: Some(25.0),
            eta_seconds: Some(30.0),
        };
        let line = p.render();
        assert!(
            line.contains("3 of 5 tables copied, 9 chunk(s) kept"),
            "{line}"
        );
        assert!(line.contains("250 of about 1000 rows (25%)"), "{line}");
        assert!(line.contains("2.0 KiB/s, 25 rows/s"), "{line}");
        assert!(line.contains("about 30.0s left"), "{line}");
        p.bytes_per_second = None;
        p.rows_per_second = None;
        p.eta_seconds = None;
        assert!(p.render().contains("`pgrepl sync` resumes it"));
    }
}

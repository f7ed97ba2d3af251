//! The walsender session: a [`RawSession`] opened with
//! `replication=database`, for the replication commands pgrepl needs:
//! IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT with an exported snapshot, and
//! START_REPLICATION, after which `stream::receiver` owns the socket.
//! Its own module so the transport can be swapped: nothing outside it sees
//! frames or sockets before streaming starts.

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use super::config::ConnConfig;
use super::error::Side;
use super::raw::{parse_error, Io, RawError, RawSession};
use crate::lsn::Lsn;
use crate::sql::SlotName;

pub use super::raw::Row;

/// Errors of the walsender session are those of any raw session.
pub type WalSenderError = RawError;

/// What `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT` returns.
#[derive(Clone, Debug)]
pub struct CreatedSlot {
    pub consistent_point: Lsn,
    /// The exported snapshot: valid until the next command on this session.
    pub snapshot: String,
}

/// What IDENTIFY_SYSTEM returns.
#[derive(Clone, Debug)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
}

/// An authenticated walsender session, not yet streaming.
pub struct WalSender {
    session: RawSession,
}

impl WalSender {
    /// Connects and authenticates with `replication=database`.
    pub async fn connect(side: Side, cfg: &ConnConfig) -> Result<Self, WalSenderError> {
        Ok(WalSender {
            session: RawSession::connect(side, cfg, true).await?,
        })
    }

    pub fn server_version(&self) -> u32 {
        self.session.server_version
    }

    /// The server this session reached (one of several, maybe).
    pub fn server(&self) -> &ConnConfig {
        &self.session.server
    }

    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, WalSenderError> {
        self.session.simple_query(sql).await
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo, WalSenderError> {
        let rows = self.session.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| self.session.protocol("IDENTIFY_SYSTEM returned no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemInfo {
            system_id: col(0),
            timeline: col(1).parse().unwrap_or(0),
            xlogpos: col(2)
                .parse()
                .map_err(|_| self.session.protocol("IDENTIFY_SYSTEM: bad xlogpos"))?,
        })
    }

    /// Creates a pgoutput slot and exports a snapshot of the database as of
    /// its consistent point. The snapshot lives until the next command on
    /// this session: import it everywhere first. `failover` (PostgreSQL
    /// 17+, ignored before): standbys with `sync_replication_slots` keep a
    /// copy of the slot, so it survives a promotion. It is set here, at
    /// creation: ALTER_REPLICATION_SLOT would be a second command on this
    /// session, and end the exported snapshot.
    pub async fn create_slot_exporting_snapshot(
        &mut self,
        slot: &SlotName,
        failover: bool,
    ) -> Result<CreatedSlot, WalSenderError> {
        self.create_slot(slot, false, failover).await
    }

    /// The same with a TEMPORARY slot, gone with this session: its exported
    /// snapshot shows the source exactly as of its consistent point, for a
    /// comparison at one LSN (`verify`).
    pub async fn create_temporary_slot_exporting_snapshot(
        &mut self,
        slot: &SlotName,
    ) -> Result<CreatedSlot, WalSenderError> {
        self.create_slot(slot, true, false).await
    }

    /// Whether this server makes failover slots (PostgreSQL 17+).
    pub fn has_failover_slots(&self) -> bool {
        self.session.server_version >= 170000
    }

    async fn create_slot(
        &mut self,
        slot: &SlotName,
        temporary: bool,
        failover: bool,
    ) -> Result<CreatedSlot, WalSenderError> {
        let temp = if temporary { " TEMPORARY" } else { "" };
        let failover = if failover && self.has_failover_slots() {
            "FAILOVER true, "
        } else {
            ""
        };
        // The parenthesised option list is PG 15+; the keyword form works on
        // every version pgrepl supports, but 15+ warns it is deprecated.
        let sql = if self.session.server_version >= 150000 {
            format!(
                "CREATE_REPLICATION_SLOT {}{temp} LOGICAL pgoutput ({failover}SNAPSHOT 'export')",
                slot.as_str()
            )
        } else {
            format!(
                "CREATE_REPLICATION_SLOT {}{temp} LOGICAL pgoutput EXPORT_SNAPSHOT",
                slot.as_str()
            )
        };
        let rows = self.session.simple_query(&sql).await?;
        let row = rows.first().ok_or_else(|| {
            self.session
                .protocol("CREATE_REPLICATION_SLOT returned no row")
        })?;
        let consistent_point = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                self.session
                    .protocol("CREATE_REPLICATION_SLOT: no consistent point")
            })?;
        let snapshot = row.get(2).cloned().flatten().ok_or_else(|| {
            self.session
                .protocol("CREATE_REPLICATION_SLOT: no snapshot name")
        })?;
        Ok(CreatedSlot {
            consistent_point,
            snapshot,
        })
    }

    /// The history file of `timeline` (TIMELINE_HISTORY): the timelines it
    /// descends from and where each ended.
    pub async fn timeline_history(&mut self, timeline: u32) -> Result<String, WalSenderError> {
        let rows = self
            .session
            .simple_query(&format!("TIMELINE_HISTORY {timeline}"))
            .await?;
        rows.first()
            .and_then(|r| r.get(1).cloned().flatten())
            .ok_or_else(|| {
                self.session
                    .protocol("TIMELINE_HISTORY returned no content")
            })
    }

    /// Sends START_REPLICATION and waits for the server to switch to
    /// CopyBoth; returns the socket and any bytes already read past that.
    pub async fn start_replication(
        mut self,
        command: &str,
    ) -> Result<(Io, BytesMut), WalSenderError> {
        frontend::query(command, &mut self.session.wbuf)
            .map_err(|e| self.session.protocol(e.to_string()))?;
        self.session.flush().await?;
        loop {
            let frame = self.session.recv().await?;
            match frame.tag {
                b'W' => return Ok(self.session.into_parts()),
                b'E' => {
                    let error = parse_error(frame.body);
                    return Err(RawError::Server {
                        side: self.session.side(),
                        error,
                    });
                }
                b'N' | b'S' => {}
                other => {
                    return Err(self
                        .session
                        .protocol(format!("message {:?} instead of CopyBoth", other as char)))
                }
            }
        }
    }
}

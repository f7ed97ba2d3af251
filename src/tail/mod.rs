//! `pgrepl tail`: the source's decoded changes as JSON lines on stdout,
//! for debugging a sync or piping into other tools.
//!
//! The rule: tail never moves a slot it did not create. With `--slot` it
//! reads an existing slot and reports no position back (the slot stays
//! where it was) unless `--advance`; with `--temporary` it reads from a
//! temporary slot of its own, gone when it ends. A publication it had to
//! create is dropped when it ends.

pub mod json;

use std::collections::HashMap;
use std::io::Write;

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::conn::error::describe;
use crate::conn::walsender::{WalSender, WalSenderError};
use crate::conn::{ConnectError, Endpoint, Side};
use crate::lsn::Lsn;
use crate::source::selection::Selection;
use crate::sql::{PublicationName, SlotName, SyncName, TableName};
use crate::stream::pgoutput::{self, Message, Relation};
use crate::stream::receiver::{Event, Feedback, Receiver};
use json::{At, Shape};

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Connect(Box<ConnectError>),
    #[error(transparent)]
    WalSender(Box<WalSenderError>),
    #[error("source: {what}: {message}")]
    Query { what: &'static str, message: String },
    #[error("source: {0}")]
    Refused(String),
    #[error("source: the stream broke: {0}")]
    Stream(String),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<ConnectError> for TailError {
    fn from(e: ConnectError) -> Self {
        TailError::Connect(Box::new(e))
    }
}

impl From<WalSenderError> for TailError {
    fn from(e: WalSenderError) -> Self {
        TailError::WalSender(Box::new(e))
    }
}

fn query(what: &'static str) -> impl Fn(tokio_postgres::Error) -> TailError {
    move |e| TailError::Query {
        what,
        message: describe(&e),
    }
}

/// Which slot to read.
#[derive(Clone, Debug)]
pub enum SlotChoice {
    /// A temporary slot of tail's own, from now on.
    Temporary,
    /// An existing slot, from its confirmed position.
    Existing(SlotName),
}

pub struct TailRequest {
    pub source: Endpoint,
    pub name: SyncName,
    pub slot: SlotChoice,
    /// The publication to decode with (default: the sync's if it exists,
    /// else one made for the run).
    pub publication: Option<PublicationName>,
    pub selection: Selection,
    /// Report what was read back to an existing slot (it moves on).
    pub advance: bool,
}

/// What a tail run did.
#[derive(Debug, Default)]
pub struct Tailed {
    pub records: u64,
    pub transactions: u64,
}

/// The publication in use, and whether tail made it (and drops it).
struct Publication {
    name: PublicationName,
    own: bool,
}

async fn publication(src: &Client, req: &TailRequest) -> Result<Publication, TailError> {
    let exists = |name: PublicationName| async move {
        let found: bool = src
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&name.as_str()],
            )
            .await
            .map_err(query("reading publications"))?
            .get(0);
        Ok::<_, TailError>((name, found))
    };
    if let Some(p) = &req.publication {
        let (name, found) = exists(p.clone()).await?;
        if !found {
            return Err(TailError::Refused(format!(
                "publication {name} does not exist: name one that does, or leave --publication out"
            )));
        }
        return Ok(Publication { name, own: false });
    }
    let (name, found) = exists(req.name.publication()).await?;
    if found {
        return Ok(Publication { name, own: false });
    }
    let name = req.name.tail_publication(std::process::id());
    src.batch_execute(&format!("CREATE PUBLICATION {} FOR ALL TABLES", name.quoted()))
        .await
        .map_err(|e| {
            TailError::Refused(format!(
                "creating publication {name} FOR ALL TABLES: {} (it needs a superuser): pass --publication with one that exists",
                describe(&e)
            ))
        })?;
    Ok(Publication { name, own: true })
}

/// Reads changes until `stop` turns true; writes one JSON line per record.
pub async fn run(
    req: &TailRequest,
    out: &mut impl Write,
    mut stop: watch::Receiver<bool>,
) -> Result<Tailed, TailError> {
    let src = req.source.connect().await?;
    // A pattern matching nothing is a mistake (a schema left out, say),
    // not a quiet stream: said before anything is created.
    if !req.selection.is_everything() {
        let all = crate::source::catalog::list_tables(&src)
            .await
            .map_err(query("listing tables"))?;
        crate::source::catalog::SelectedTables::choose(all, &req.selection).map_err(|errors| {
            TailError::Refused(crate::source::catalog::SelectedTables::one_line(&errors))
        })?;
    }
    let publication = publication(&src, req).await?;
    let result = stream(req, &src, &publication.name, out, &mut stop).await;
    if publication.own {
        if let Err(e) = src
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                publication.name.quoted()
            ))
            .await
        {
            tracing::warn!(publication = %publication.name, error = %describe(&e), "could not drop tail's publication: drop it by hand");
        }
    }
    result
}

async fn stream(
    req: &TailRequest,
    src: &Client,
    publication: &PublicationName,
    out: &mut impl Write,
    stop: &mut watch::Receiver<bool>,
) -> Result<Tailed, TailError> {
    let mut walsender = WalSender::connect(Side::Source, &req.source.config).await?;
    let (slot, start, advance) = match &req.slot {
        SlotChoice::Temporary => {
            let slot = req.name.tail_slot(std::process::id());
            let created = walsender
                .create_temporary_slot_exporting_snapshot(&slot)
                .await?;
            (slot, created.consistent_point, true)
        }
        SlotChoice::Existing(slot) => {
            let row = src
                .query_opt(
                    "SELECT plugin::text, confirmed_flush_lsn, active_pid FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'logical'",
                    &[&slot.as_str()],
                )
                .await
                .map_err(query("reading the slot"))?
                .ok_or_else(|| TailError::Refused(format!("no logical slot {slot}: name one from pg_replication_slots, or use --temporary")))?;
            let plugin: String = row.get(0);
            if plugin != "pgoutput" {
                return Err(TailError::Refused(format!(
                    "slot {slot} decodes with {plugin}; tail reads pgoutput slots (use --temporary)"
                )));
            }
            if let Some(pid) = row.get::<_, Option<i32>>(2) {
                return Err(TailError::Refused(format!(
                    "slot {slot} is in use by process {pid} (a running sync?): stop it, or use --temporary"
                )));
            }
            let start: Option<Lsn> = row.get(1);
            (slot.clone(), start.unwrap_or(Lsn::ZERO), req.advance)
        }
    };
    tracing::info!(%slot, %publication, %start, advance, "tailing");
    let feedback = Feedback::new(start);
    let mut receiver = Receiver::start(
        walsender,
        &slot,
        publication,
        start,
        false,
        false,
        feedback.clone(),
    )
    .await?;
    let mut decoder = Decoder {
        relations: HashMap::new(),
        types: HashMap::new(),
        at: None,
        begin: None,
        selection: &req.selection,
        tailed: Tailed::default(),
    };
    let result = loop {
        let event = tokio::select! {
            e = receiver.events.recv() => e,
            _ = stop.changed() => break Ok(()),
        };
        let payloads = match event {
            None => break Err(TailError::Stream("the source ended the stream".into())),
            Some(Err(e)) => break Err(TailError::Stream(e.to_string())),
            Some(Ok(Event::Keepalive { .. })) => continue,
            Some(Ok(Event::Data { payloads, .. })) => payloads,
        };
        let mut done = Ok(());
        for payload in payloads {
            let message = match pgoutput::decode(payload) {
                Ok(m) => m,
                Err(e) => {
                    done = Err(TailError::Stream(e.to_string()));
                    break;
                }
            };
            match decoder.record(src, message).await {
                Ok(records) => {
                    for (record, end) in records {
                        // Null: the end of a transaction nothing of was shown.
                        if !record.is_null() {
                            serde_json::to_writer(&mut *out, &record)
                                .map_err(std::io::Error::from)?;
                            out.write_all(b"\n")?;
                        }
                        if let Some(end) = end {
                            out.flush()?;
                            if advance {
                                feedback.set_flushed(end);
                            }
                        }
                    }
                }
                Err(e) => {
                    done = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = done {
            break Err(e);
        }
    };
    out.flush()?;
    receiver.shutdown().await;
    result.map(|()| decoder.tailed)
}

struct Decoder<'a> {
    relations: HashMap<u32, Relation>,
    types: HashMap<u32, String>,
    at: Option<At>,
    /// The open transaction's `begin`, printed with its first shown change
    /// (a transaction that changes nothing selected prints nothing).
    begin: Option<serde_json::Value>,
    selection: &'a Selection,
    tailed: Tailed,
}

type Record = (serde_json::Value, Option<Lsn>);

impl Decoder<'_> {
    /// The records a message makes (a commit also says where it ends).
    async fn record(&mut self, src: &Client, m: Message) -> Result<Vec<Record>, TailError> {
        let at = self.at.unwrap_or(At {
            lsn: Lsn::ZERO,
            xid: 0,
            commit_ts: json::now_micros(),
        });
        let shown = |r: &Relation| {
            let t = TableName::new(r.namespace.clone(), r.name.clone());
            self.selection.selects(&t) || (r.namespace == "pgrepl" && r.name == "schema_log")
        };
        Ok(match m {
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                let at = At {
                    lsn: final_lsn,
                    xid,
                    commit_ts,
                };
                self.at = Some(at);
                self.begin = Some(json::begin(&at));
                Vec::new()
            }
            Message::Commit { end_lsn, .. } => {
                self.at = None;
                self.tailed.transactions += 1;
                vec![(json::commit(&at, end_lsn), Some(end_lsn))]
            }
            Message::Relation(r) => {
                self.learn_types(src, &r).await?;
                self.relations.insert(r.oid, r);
                Vec::new()
            }
            Message::Insert { relation, new } => match self.relations.get(&relation) {
                Some(r) if r.namespace == "pgrepl" && r.name == "schema_log" => {
                    let shape = Shape {
                        relation: r,
                        types: &self.types,
                    };
                    vec![(json::ddl(&at, &shape, &new), None)]
                }
                Some(r) if shown(r) => {
                    let shape = Shape {
                        relation: r,
                        types: &self.types,
                    };
                    vec![(json::insert(&at, &shape, &new), None)]
                }
                _ => Vec::new(),
            },
            Message::Update { relation, old, new } => match self.relations.get(&relation) {
                Some(r) if shown(r) && r.namespace != "pgrepl" => {
                    let shape = Shape {
                        relation: r,
                        types: &self.types,
                    };
                    vec![(json::update(&at, &shape, old.as_ref(), &new), None)]
                }
                _ => Vec::new(),
            },
            Message::Delete { relation, old } => match self.relations.get(&relation) {
                Some(r) if shown(r) && r.namespace != "pgrepl" => {
                    let shape = Shape {
                        relation: r,
                        types: &self.types,
                    };
                    vec![(json::delete(&at, &shape, &old), None)]
                }
                _ => Vec::new(),
            },
            Message::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                let tables: Vec<String> = relations
                    .iter()
                    .filter_map(|oid| self.relations.get(oid))
                    .filter(|r| shown(r) && r.namespace != "pgrepl")
                    .map(|r| format!("{}.{}", r.namespace, r.name))
                    .collect();
                match tables.is_empty() {
                    true => Vec::new(),
                    false => vec![(json::truncate(&at, tables, cascade, restart_identity), None)],
                }
            }
            Message::Logical {
                transactional,
                lsn,
                prefix,
                content,
            } => vec![(
                json::message(self.at.as_ref(), lsn, &prefix, &content, transactional),
                None,
            )],
            _ => Vec::new(),
        })
        .map(|mut records: Vec<Record>| {
            let shows = records.iter().any(|(r, _)| r["kind"] != "commit");
            if shows {
                if let Some(begin) = self.begin.take() {
                    records.insert(0, (begin, None));
                }
            } else if !records.is_empty() && self.begin.take().is_some() {
                // A commit with nothing shown since its begin: only where
                // it ends (for --advance).
                for (r, _) in records.iter_mut() {
                    *r = serde_json::Value::Null;
                }
            }
            self.tailed.records += records.iter().filter(|(r, _)| !r.is_null()).count() as u64;
            records
        })
    }

    /// Type names for the relation's columns the cache lacks.
    async fn learn_types(&mut self, src: &Client, r: &Relation) -> Result<(), TailError> {
        let missing: Vec<u32> = r
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|o| !self.types.contains_key(o))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for row in src
            .query(
                "SELECT oid, format_type(oid, NULL) FROM pg_type WHERE oid = ANY($1)",
                &[&missing],
            )
            .await
            .map_err(query("reading type names"))?
        {
            self.types.insert(row.get(0), row.get(1));
        }
        Ok(())
    }
}

//! pgoutput, protocol versions 1 and 2: the logical replication messages
//! the source's walsender sends, decoded without copying column values
//! (they stay slices of the received buffer). Version 2 adds the
//! streaming of large transactions while they are in progress: blocks of
//! their changes between Stream Start and Stream Stop, each change
//! carrying the xid of its (sub)transaction, and a Stream Commit or
//! Stream Abort at the end.

use bytes::{Buf, Bytes};

use crate::lsn::Lsn;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("pgoutput message {kind:?} ends early")]
    Truncated { kind: char },
    #[error("unknown pgoutput message type {0:?}")]
    UnknownKind(char),
    #[error("unknown tuple column kind {0:?}")]
    UnknownColumn(char),
    #[error("pgoutput message {kind:?}: expected {expected:?}, found {found:?}")]
    Unexpected {
        kind: char,
        expected: &'static str,
        found: char,
    },
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value the UPDATE did not change: not sent, not to be set.
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

impl Datum {
    /// The value as text, for messages.
    pub fn display(&self) -> String {
        match self {
            Datum::Null => "NULL".into(),
            Datum::Unchanged => "(unchanged)".into(),
            Datum::Text(b) => String::from_utf8_lossy(b).into_owned(),
            Datum::Binary(b) => format!(
                "\\x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        }
    }
}

pub type Tuple = Vec<Datum>;

/// The old row of an UPDATE or DELETE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldRow {
    /// Replica identity key columns only (others NULL): the key changed,
    /// or this is a DELETE on a keyed table.
    Key(Tuple),
    /// Every column (REPLICA IDENTITY FULL).
    Full(Tuple),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Part of the replica identity.
    pub key: bool,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        old: Option<OldRow>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: OldRow,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    Logical {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    /// A block of changes of in-progress transaction `xid` follows.
    StreamStart {
        xid: u32,
        first: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    /// `subxid == xid`: the whole transaction aborted; otherwise one of
    /// its subtransactions.
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

/// Kinds of message that carry the xid of their transaction inside a
/// streamed block.
const XID_INSIDE_STREAM: &[u8] = b"RYIUDTM";

struct Reader {
    buf: Bytes,
    kind: char,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated { kind: self.kind })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }
    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.need(8)?;
        Ok(Lsn(self.buf.get_u64()))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated { kind: self.kind })?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 1);
        Ok(s)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16()?.max(0) as usize;
        let mut cols = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = self.u8()?;
            cols.push(match kind {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' | b'b' => {
                    let len = self.i32()?.max(0) as usize;
                    let data = self.bytes(len)?;
                    if kind == b't' {
                        Datum::Text(data)
                    } else {
                        Datum::Binary(data)
                    }
                }
                other => return Err(DecodeError::UnknownColumn(other as char)),
            });
        }
        Ok(cols)
    }

    fn old_row(&mut self, tag: u8) -> Result<OldRow, DecodeError> {
        let t = self.tuple()?;
        Ok(if tag == b'K' {
            OldRow::Key(t)
        } else {
            OldRow::Full(t)
        })
    }
}

/// Decodes one pgoutput message (the payload of one XLogData) outside a
/// streamed block.
pub fn decode(payload: Bytes) -> Result<Message, DecodeError> {
    decode_in(payload, false).map(|(_, m)| m)
}

/// Decodes one pgoutput message; `in_stream`: between Stream Start and
/// Stream Stop, where changes carry the xid of their (sub)transaction,
/// returned beside the message.
pub fn decode_in(payload: Bytes, in_stream: bool) -> Result<(Option<u32>, Message), DecodeError> {
    let Some(&first) = payload.first() else {
        return Err(DecodeError::Truncated { kind: '?' });
    };
    let kind = first as char;
    let mut r = Reader {
        buf: payload.slice(1..),
        kind,
    };
    let xid = if in_stream && XID_INSIDE_STREAM.contains(&first) {
        Some(r.u32()?)
    } else {
        None
    };
    let message = match first {
        b'B' => Message::Begin {
            final_lsn: r.lsn()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_ts: r.i64()?,
            }
        }
        b'O' => Message::Origin {
            lsn: r.lsn()?,
            name: r.cstr()?,
        },
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?.max(0) as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name: r.cstr()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    relation,
                    new: r.tuple()?,
                },
                found => {
                    return Err(DecodeError::Unexpected {
                        kind,
                        expected: "N",
                        found: found as char,
                    })
                }
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let (old, tag) = match r.u8()? {
                tag @ (b'K' | b'O') => (Some(r.old_row(tag)?), r.u8()?),
                tag => (None, tag),
            };
            if tag != b'N' {
                return Err(DecodeError::Unexpected {
                    kind,
                    expected: "N",
                    found: tag as char,
                });
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                tag @ (b'K' | b'O') => Message::Delete {
                    relation,
                    old: r.old_row(tag)?,
                },
                found => {
                    return Err(DecodeError::Unexpected {
                        kind,
                        expected: "K or O",
                        found: found as char,
                    })
                }
            }
        }
        b'T' => {
            let n = r.u32()? as usize;
            let options = r.u8()?;
            let mut relations = Vec::with_capacity(n.min(65536));
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.cstr()?;
            let len = r.u32()? as usize;
            Message::Logical {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        b'S' => Message::StreamStart {
            xid: r.u32()?,
            first: r.u8()? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => {
            let xid = r.u32()?;
            let _flags = r.u8()?;
            Message::StreamCommit {
                xid,
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_ts: r.i64()?,
            }
        }
        b'A' => Message::StreamAbort {
            xid: r.u32()?,
            subxid: r.u32()?,
        },
        _ => return Err(DecodeError::UnknownKind(kind)),
    };
    Ok((xid, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn tuple(b: &mut BytesMut, cols: &[Option<&str>]) {
        b.put_i16(cols.len() as i16);
        for c in cols {
            match c {
                None => b.put_u8(b'n'),
                Some("\u{0}u") => b.put_u8(b'u'),
                Some(v) => {
                    b.put_u8(b't');
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
            }
        }
    }

    #[test]
    fn decodes_transaction_boundaries() {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(0x16_0000_0010);
        b.put_i64(42);
        b.put_u32(7);
        assert_eq!(
            decode(b.freeze()),
            Ok(Message::Begin {
                final_lsn: Lsn(0x16_0000_0010),
                commit_ts: 42,
                xid: 7
            })
        );
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(10);
        b.put_u64(20);
        b.put_i64(99);
        assert_eq!(
            decode(b.freeze()),
            Ok(Message::Commit {
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                commit_ts: 99
            })
        );
    }

    #[test]
    fn decodes_relations_and_rows() {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(16384);
        b.put_slice(b"public\0we\"ird tbl\0");
        b.put_u8(b'd');
        b.put_i16(2);
        b.put_u8(1);
        b.put_slice(b"id\0");
        b.put_u32(23);
        b.put_i32(-1);
        b.put_u8(0);
        b.put_slice(b"select\0");
        b.put_u32(25);
        b.put_i32(-1);
        let Ok(Message::Relation(r)) = decode(b.freeze()) else {
            panic!("relation")
        };
        assert_eq!(r.name, "we\"ird tbl");
        assert!(r.columns[0].key && !r.columns[1].key);

        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(16384);
        b.put_u8(b'K');
        tuple(&mut b, &[Some("1"), None]);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("2"), Some("\u{0}u")]);
        assert_eq!(
            decode(b.freeze()),
            Ok(Message::Update {
                relation: 16384,
                old: Some(OldRow::Key(vec![
                    Datum::Text(Bytes::from_static(b"1")),
                    Datum::Null
                ])),
                new: vec![Datum::Text(Bytes::from_static(b"2")), Datum::Unchanged],
            })
        );
    }

    #[test]
    fn decodes_truncate_options() {
        let mut b = BytesMut::new();
        b.put_u8(b'T');
        b.put_u32(2);
        b.put_u8(3);
        b.put_u32(1);
        b.put_u32(2);
        assert_eq!(
            decode(b.freeze()),
            Ok(Message::Truncate {
                relations: vec![1, 2],
                cascade: true,
                restart_identity: true
            })
        );
    }

    #[test]
    fn decodes_streamed_blocks_with_their_xids() {
        let mut b = BytesMut::new();
        b.put_u8(b'S');
        b.put_u32(900);
        b.put_u8(1);
        assert_eq!(
            decode(b.freeze()),
            Ok(Message::StreamStart {
                xid: 900,
                first: true
            })
        );
        // Inside a block, a change starts with its subtransaction's xid.
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(901);
        b.put_u32(16384);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("7")]);
        let payload = b.freeze();
        assert_eq!(
            decode_in(payload.clone(), true),
            Ok((
                Some(901),
                Message::Insert {
                    relation: 16384,
                    new: vec![Datum::Text(Bytes::from_static(b"7"))],
                }
            ))
        );
        assert!(decode_in(payload, false).is_err(), "xid read as relation");
        let mut b = BytesMut::new();
        b.put_u8(b'c');
        b.put_u32(900);
        b.put_u8(0);
        b.put_u64(0x10);
        b.put_u64(0x20);
        b.put_i64(5);
        assert_eq!(
            decode(b.freeze()),
            Ok(Message::StreamCommit {
                xid: 900,
                commit_lsn: Lsn(0x10),
                end_lsn: Lsn(0x20),
                commit_ts: 5
            })
        );
        let mut b = BytesMut::new();
        b.put_u8(b'A');
        b.put_u32(900);
        b.put_u32(901);
        assert_eq!(
            decode(b.freeze()),
            Ok(Message::StreamAbort {
                xid: 900,
                subxid: 901
            })
        );
        assert_eq!(decode(Bytes::from_static(b"E")), Ok(Message::StreamStop));
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        for bytes in [
            &b"B\x00\x00"[..],
            b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09ab",
            b"R\x00\x00\x00\x01pub",
            b"Z",
            b"",
        ] {
            assert!(decode(Bytes::copy_from_slice(bytes)).is_err(), "{bytes:?}");
        }
    }
}

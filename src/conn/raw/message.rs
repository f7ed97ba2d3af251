//! Backend messages of the raw sessions: whole messages cut out of what
//! was read (`read_frame`, `split_frame`, CopyData rows straight from the
//! read buffer) and their bodies read (errors and notices, command tags,
//! data rows, NUL-terminated strings, the server version). The walsender
//! stream and the apply pipeline read their messages with these too.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::conn::error::ServerError;

/// One backend message: its tag and body.
#[derive(Debug)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Reads whole backend messages from `io`, keeping partial ones in `buf`.
/// Cancel-safe: a cancelled read leaves the bytes it got in `buf`.
pub async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> io::Result<Frame> {
    loop {
        if let Some(frame) = split_frame(buf)? {
            return Ok(frame);
        }
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
    }
}

/// A complete message at the front of `buf`, if there is one.
pub fn split_frame(buf: &mut BytesMut) -> io::Result<Option<Frame>> {
    let Some(len) = whole_frame(buf)? else {
        return Ok(None);
    };
    let tag = buf[0];
    buf.advance(5);
    let body = buf.split_to(len - 4).freeze();
    Ok(Some(Frame { tag, body }))
}

/// The length field of the message `buf` starts with, once all of it has
/// been read (room is made for the rest otherwise).
fn whole_frame(buf: &mut BytesMut) -> io::Result<Option<usize>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message length below 4",
        ));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    Ok(Some(len))
}

/// Moves one whole CopyData message's payload from `buf` to `out`: false
/// when `buf` does not start with one (another message, or not all of it
/// read yet), which `split_frame` then handles.
pub(super) fn take_copy_data(buf: &mut BytesMut, out: &mut BytesMut) -> io::Result<bool> {
    if buf.first() != Some(&b'd') {
        return Ok(false);
    }
    let Some(len) = whole_frame(buf)? else {
        return Ok(false);
    };
    out.extend_from_slice(&buf[5..len + 1]);
    buf.advance(len + 1);
    Ok(true)
}

/// Reads a NUL-terminated string from `body`.
pub fn take_cstr(body: &mut Bytes) -> Option<String> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Some(s)
}

/// Parses an ErrorResponse / NoticeResponse body.
pub fn parse_error(mut body: Bytes) -> ServerError {
    let mut e = ServerError::default();
    while body.has_remaining() {
        let field = body.get_u8();
        if field == 0 {
            break;
        }
        let Some(value) = take_cstr(&mut body) else {
            break;
        };
        match field {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    e
}

/// A row of a simple query: text values, `None` for NULL.
pub type Row = Vec<Option<String>>;

/// The row count of a CommandComplete tag (`COPY 42`, `UPDATE 1`).
pub fn command_rows(body: &[u8]) -> u64 {
    let tag = body.split(|&b| b == 0).next().unwrap_or_default();
    std::str::from_utf8(tag)
        .ok()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub(super) fn parse_data_row(body: &mut Bytes) -> Option<Row> {
    if body.len() < 2 {
        return None;
    }
    let n = body.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.len() < 4 {
            return None;
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
        } else {
            let len = len as usize;
            if body.len() < len {
                return None;
            }
            row.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
            body.advance(len);
        }
    }
    Some(row)
}

/// `15.4 (Debian ...)` → 150004; `9.6.1` → 90601.
pub fn parse_server_version(v: &str) -> u32 {
    let numeric: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let digits: Vec<u32> = numeric
        .split('.')
        .filter(|s| !s.is_empty())
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    match digits.as_slice() {
        [major, minor, ..] if *major >= 10 => major * 10000 + minor,
        [major] if *major >= 10 => major * 10000,
        [major, minor, patch, ..] => major * 10000 + minor * 100 + patch,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_parse_old_and_new_styles() {
        assert_eq!(parse_server_version("15.4 (Debian 15.4-1)"), 150004);
        assert_eq!(parse_server_version("17.10"), 170010);
        assert_eq!(parse_server_version("18beta1"), 180000);
        assert_eq!(parse_server_version("9.6.24"), 90624);
    }

    #[test]
    fn frames_split_only_when_whole() {
        let mut buf = BytesMut::from(&b"Z\x00\x00\x00\x05I"[..]);
        let f = split_frame(&mut buf).expect("ok").expect("frame");
        assert_eq!(f.tag, b'Z');
        assert_eq!(&f.body[..], b"I");
        assert!(buf.is_empty());
        let mut partial = BytesMut::from(&b"D\x00\x00\x00\x09ab"[..]);
        assert!(split_frame(&mut partial).expect("ok").is_none());
    }

    #[test]
    fn copy_data_moves_whole_rows_only() {
        let mut buf = BytesMut::from(&b"d\x00\x00\x00\x06abd\x00\x00\x00\x0acdC\x00"[..]);
        let mut out = BytesMut::new();
        assert!(take_copy_data(&mut buf, &mut out).expect("ok"));
        assert_eq!(&out[..], b"ab");
        // The second row is cut short: left for the next read.
        assert!(!take_copy_data(&mut buf, &mut out).expect("ok"));
        assert_eq!(&out[..], b"ab");
        assert_eq!(&buf[..], b"d\x00\x00\x00\x0acdC\x00");
        // Another message is not taken.
        let mut other = BytesMut::from(&b"C\x00\x00\x00\x05x"[..]);
        assert!(!take_copy_data(&mut other, &mut out).expect("ok"));
        let mut bad = BytesMut::from(&b"d\x00\x00\x00\x02"[..]);
        assert!(take_copy_data(&mut bad, &mut out).is_err());
    }

    #[test]
    fn error_fields_are_read() {
        let body = Bytes::from_static(
            b"SERROR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0Hcreate it\0\0",
        );
        let e = parse_error(body);
        assert_eq!(e.code, "42P01");
        assert_eq!(e.message, "relation \"x\" does not exist");
        assert_eq!(e.hint.as_deref(), Some("create it"));
    }

    #[test]
    fn command_tags_give_row_counts() {
        assert_eq!(command_rows(b"COPY 42\0"), 42);
        assert_eq!(command_rows(b"INSERT 0 7\0"), 7);
        assert_eq!(command_rows(b"BEGIN\0"), 0);
    }
}

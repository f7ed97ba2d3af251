//! Rows in COPY's text format, for the COPY statements that write
//! insert-only runs and fill stage tables.

use bytes::{BufMut, BytesMut};

use crate::stream::pgoutput::{Datum, Tuple};

/// Below this length a value is scanned for bytes to escape one by one:
/// most values (keys, numbers, timestamps) are short, and memchr's setup
/// costs more there (COPY text here, array literals in `sets`).
pub(super) const SHORT_VALUE: usize = 48;

/// Whether a value holds a byte COPY's text format escapes.
fn needs_copy_escape(v: &[u8]) -> bool {
    if v.len() < SHORT_VALUE {
        return v
            .iter()
            .any(|&b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'));
    }
    memchr::memchr3(b'\\', b'\t', b'\n', v).is_some() || memchr::memchr(b'\r', v).is_some()
}

/// Bytes `copy_text` writes for `rows` if nothing needs escaping: a
/// capacity that spares the buffer its doublings.
pub fn copy_text_size(rows: &[Tuple], columns: &[usize]) -> usize {
    rows.iter()
        .map(|r| {
            columns
                .iter()
                .map(|&i| match r.get(i) {
                    Some(Datum::Text(v)) => v.len() + 1,
                    _ => 3,
                })
                .sum::<usize>()
        })
        .sum()
}

/// Appends rows in COPY text format: tab-separated, `\N` for NULL,
/// backslash, tab, newline and carriage return escaped.
pub fn copy_text(out: &mut BytesMut, row: &Tuple, columns: &[usize]) {
    for (n, &i) in columns.iter().enumerate() {
        if n > 0 {
            out.put_u8(b'\t');
        }
        match row.get(i) {
            Some(Datum::Text(v)) => {
                if !needs_copy_escape(v) {
                    out.put_slice(v);
                } else {
                    for &b in v.iter() {
                        match b {
                            b'\\' => out.put_slice(b"\\\\"),
                            b'\t' => out.put_slice(b"\\t"),
                            b'\n' => out.put_slice(b"\\n"),
                            b'\r' => out.put_slice(b"\\r"),
                            b => out.put_u8(b),
                        }
                    }
                }
            }
            _ => out.put_slice(b"\\N"),
        }
    }
    out.put_u8(b'\n');
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use bytes::Bytes;

    /// A tuple of text values; "NULL" and "U" (unchanged TOAST) stand for
    /// themselves.
    pub(in crate::apply) fn t(vals: &[&str]) -> Tuple {
        vals.iter()
            .map(|v| match *v {
                "NULL" => Datum::Null,
                "U" => Datum::Unchanged,
                v => Datum::Text(Bytes::copy_from_slice(v.as_bytes())),
            })
            .collect()
    }

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut out = BytesMut::new();
        copy_text(&mut out, &t(&["1", "a\tb\\c\nd\re", "NULL"]), &[0, 1, 2]);
        assert_eq!(&out[..], b"1\ta\\tb\\\\c\\nd\\re\t\\N\n");
    }

    #[test]
    fn copy_text_escapes_long_values_too_and_sizes_plain_rows_exactly() {
        // Short values are checked byte by byte, long ones with memchr:
        // every special byte at the start, middle and end of a long value.
        for special in ["\\", "\t", "\n", "\r"] {
            let long = format!(
                "{special}{}{special}{}{special}",
                "x".repeat(40),
                "y".repeat(40)
            );
            let mut out = BytesMut::new();
            copy_text(&mut out, &t(&[&long]), &[0]);
            let escaped = match special {
                "\\" => "\\\\",
                "\t" => "\\t",
                "\n" => "\\n",
                _ => "\\r",
            };
            let want = format!(
                "{escaped}{}{escaped}{}{escaped}\n",
                "x".repeat(40),
                "y".repeat(40)
            );
            assert_eq!(String::from_utf8_lossy(&out), want, "{special:?}");
        }
        let rows = vec![t(&["1", "abc", "NULL"]), t(&["22", &"z".repeat(60), "7"])];
        let mut out = BytesMut::new();
        for r in &rows {
            copy_text(&mut out, r, &[0, 1, 2]);
        }
        assert_eq!(out.len(), copy_text_size(&rows, &[0, 1, 2]));
    }
}

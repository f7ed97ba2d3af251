//! Column values travel to the target as they came from the source: text
//! (or binary) bytes in the protocol's own formats, parsed by the target's
//! input functions. No conversion in pgrepl, so every type works: arrays,
//! enums, domains, composites, extension types.

use bytes::{Bytes, BytesMut};
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

use crate::stream::pgoutput::Datum;

#[derive(Clone, Debug)]
pub enum Param {
    Null,
    Text(Bytes),
    Binary(Bytes),
}

impl Param {
    pub fn from_datum(d: &Datum) -> Param {
        match d {
            Datum::Text(b) => Param::Text(b.clone()),
            Datum::Binary(b) => Param::Binary(b.clone()),
            Datum::Null | Datum::Unchanged => Param::Null,
        }
    }
}

impl ToSql for Param {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Text(b) | Param::Binary(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    /// The server parses the bytes: any type is fine.
    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Param::Binary(_) => Format::Binary,
            _ => Format::Text,
        }
    }

    to_sql_checked!();
}

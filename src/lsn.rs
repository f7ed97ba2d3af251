//! `Lsn`: a position in the source's write-ahead log.
//!
//! Postgres prints LSNs as two hex halves (`16/B374D848`); internally they are
//! one `u64`. Comparing, subtracting (lag in bytes) and storing them as
//! `pg_lsn` all go through this type so no LSN is ever a string.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::types::{FromSql, PgLsn, ToSql};

/// A WAL position. `Lsn::ZERO` means "none yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Bytes from `earlier` to `self`, zero when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hex numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// In JSON (control requests, `--json` reports) an LSN is its usual text.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl From<PgLsn> for Lsn {
    fn from(v: PgLsn) -> Self {
        Lsn(u64::from(v))
    }
}

impl From<Lsn> for PgLsn {
    fn from(v: Lsn) -> Self {
        PgLsn::from(v.0)
    }
}

impl<'a> FromSql<'a> for Lsn {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        PgLsn::from_sql(ty, raw).map(Lsn::from)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <PgLsn as FromSql>::accepts(ty)
    }
}

impl ToSql for Lsn {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        PgLsn::from(*self).to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <PgLsn as ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_form() {
        for s in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let lsn: Lsn = s.parse().expect("valid");
            assert_eq!(lsn.to_string(), s);
        }
        assert_eq!("1/0".parse::<Lsn>().map(|l| l.0).ok(), Some(1 << 32));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "16", "x/1", "1/2/3", "100000000/0"] {
            assert!(s.parse::<Lsn>().is_err(), "{s}");
        }
    }

    #[test]
    fn orders_and_subtracts() {
        let a: Lsn = "0/10".parse().expect("valid");
        let b: Lsn = "1/0".parse().expect("valid");
        assert!(a < b);
        assert_eq!(b.bytes_since(a), (1 << 32) - 0x10);
        assert_eq!(a.bytes_since(b), 0);
    }
}

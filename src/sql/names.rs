//! Typed names: a table is a schema and a name, never a dotted string; the
//! sync's name decides every object pgrepl creates (slot, publication,
//! origin), so those are derived here and nowhere else.

use std::fmt;

use super::quote::{display_ident, push_ident};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("sync name {0:?} is not valid: use 1 to 40 lower-case letters, digits or underscores")]
    InvalidSyncName(String),
    #[error("{kind} name {name:?} is not one pgrepl can use: 1 to 63 lower-case letters, digits or underscores")]
    InvalidName { kind: &'static str, name: String },
}

fn plain_name(kind: &'static str, name: &str) -> Result<String, NameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    match ok {
        true => Ok(name.to_string()),
        false => Err(NameError::InvalidName {
            kind,
            name: name.to_string(),
        }),
    }
}

/// A schema-qualified relation name (table, sequence, index...).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectName {
    pub schema: String,
    pub name: String,
}

/// Tables are the common case; the alias keeps signatures readable.
pub type TableName = ObjectName;

impl ObjectName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."name"`, ready for SQL.
    pub fn quoted(&self) -> String {
        let mut out = String::with_capacity(self.schema.len() + self.name.len() + 5);
        push_ident(&mut out, &self.schema);
        out.push('.');
        push_ident(&mut out, &self.name);
        out
    }

    /// A SQL expression giving the relation's oid, NULL when there is none.
    /// Unlike `to_regclass` or a `::regclass` cast it looks in the catalog
    /// only, so a role without USAGE on the schema gets NULL (or its
    /// privileges, through `has_table_privilege(oid, …)`), not an error.
    pub fn oid_sql(&self) -> String {
        format!(
            "(SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {} AND c.relname = {})",
            super::quote_literal(&self.schema),
            super::quote_literal(&self.name)
        )
    }
}

/// Human form: `public.orders`, `"Sales"."we""ird tbl"`.
impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

/// The name a user gives a sync with `--name`; every object pgrepl creates
/// for it is named `pgrepl_<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SyncName(String);

impl SyncName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        let ok = !name.is_empty()
            && name.len() <= 40
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(NameError::InvalidSyncName(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn slot(&self) -> SlotName {
        SlotName(format!("pgrepl_{}", self.0))
    }

    /// A temporary slot of this sync (`verify`'s snapshot), unique per
    /// process: `pgrepl_NAME_tN`.
    pub fn temporary_slot(&self, n: u32) -> SlotName {
        SlotName(format!("pgrepl_{}_t{n}", self.0))
    }

    /// The temporary slot of a resumed copy: `pgrepl_NAME_rPID_N`, unique
    /// per process and attempt.
    pub fn resume_slot(&self, pid: u32, attempt: u32) -> SlotName {
        SlotName(format!("pgrepl_{}_r{pid}_{attempt}", self.0))
    }

    pub fn publication(&self) -> PublicationName {
        PublicationName(format!("pgrepl_{}", self.0))
    }

    /// `pgrepl tail`'s temporary slot, unique per process.
    pub fn tail_slot(&self, pid: u32) -> SlotName {
        SlotName(format!("pgrepl_{}_tail{pid}", self.0))
    }

    /// The publication `pgrepl tail` creates when no other fits.
    pub fn tail_publication(&self, pid: u32) -> PublicationName {
        PublicationName(format!("pgrepl_{}_tail{pid}", self.0))
    }

    /// A slot that already exists, named by the user (`tail --slot`).
    pub fn existing_slot(name: &str) -> Result<SlotName, NameError> {
        plain_name("slot", name).map(SlotName)
    }

    /// A publication that already exists, named by the user.
    pub fn existing_publication(name: &str) -> Result<PublicationName, NameError> {
        plain_name("publication", name).map(PublicationName)
    }

    pub fn origin(&self) -> OriginName {
        OriginName(format!("pgrepl_{}", self.0))
    }
}

impl Default for SyncName {
    fn default() -> Self {
        Self("pgrepl".to_string())
    }
}

impl fmt::Display for SyncName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SyncName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

macro_rules! derived_name {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// The raw name (lower-case letters, digits, underscores only).
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Double-quoted for SQL.
            pub fn quoted(&self) -> String {
                super::quote::quote_ident(&self.0)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

derived_name!(
    /// A logical replication slot on the source. Slot names allow only
    /// `[a-z0-9_]`, which `SyncName` guarantees, so they need no quoting in
    /// replication commands.
    SlotName
);
derived_name!(
    /// The publication on the source.
    PublicationName
);
derived_name!(
    /// The replication origin on the target.
    OriginName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_names_derive_object_names() {
        let n = SyncName::new("prod_2").expect("valid");
        assert_eq!(n.slot().as_str(), "pgrepl_prod_2");
        assert_eq!(n.publication().quoted(), "\"pgrepl_prod_2\"");
        assert_eq!(n.origin().to_string(), "pgrepl_prod_2");
    }

    #[test]
    fn sync_names_reject_anything_a_slot_cannot_hold() {
        for bad in ["", "Prod", "a-b", "a b", &"x".repeat(41)] {
            assert!(SyncName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_names_quote_for_sql_and_read_well() {
        let t = TableName::new("public", "we\"ird tbl");
        assert_eq!(t.quoted(), r#""public"."we""ird tbl""#);
        assert_eq!(t.to_string(), r#"public."we""ird tbl""#);
    }
}

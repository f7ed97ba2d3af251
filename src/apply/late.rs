//! Tables copied under a later snapshot than the sync's consistent point:
//! the rest of a copy that was interrupted and resumed (see
//! `snapshot::resume`).
//!
//! The rule: such a table already holds every source transaction whose
//! commit record lies before its snapshot's LSN, and none from there on;
//! its changes are applied only from transactions committing at or after
//! that LSN (`final_lsn` of pgoutput's BEGIN is the commit record's). The
//! session that reads such a stretch streams no transaction in progress:
//! the commit must be known before the first change is applied.
//!
//! [`Late`] keeps those tables' snapshot LSNs, by table and by relation id;
//! the applier asks it about each change.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use crate::lsn::Lsn;
use crate::sql::TableName;

#[derive(Debug, Default)]
pub struct Late {
    by_table: HashMap<TableName, Lsn>,
    by_relation: FxHashMap<u32, Lsn>,
}

impl Late {
    pub fn new(by_table: HashMap<TableName, Lsn>) -> Self {
        Late {
            by_table,
            by_relation: FxHashMap::default(),
        }
    }

    /// Where the last such table's snapshot is (ZERO: there is none).
    pub fn until(&self) -> Lsn {
        self.by_table.values().copied().max().unwrap_or(Lsn::ZERO)
    }

    /// A relation was described: from now on its changes are told by its id.
    pub fn describe(&mut self, relation: u32, table: &TableName) {
        match self.by_table.get(table) {
            Some(lsn) => {
                self.by_relation.insert(relation, *lsn);
            }
            None => {
                self.by_relation.remove(&relation);
            }
        }
    }

    /// The change of `relation` in the transaction committing at
    /// `final_lsn` is in the table's copy already. (Only without
    /// transactions streamed in progress, whose commit is not known yet:
    /// `session` turns that streaming off while a table is late.)
    pub fn skips(&self, relation: u32, final_lsn: Lsn) -> bool {
        self.by_relation
            .get(&relation)
            .is_some_and(|lsn| final_lsn < *lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transactions_before_the_tables_snapshot_are_skipped() {
        let t = TableName::new("public", "t");
        let mut late = Late::new(HashMap::from([(t.clone(), Lsn(500))]));
        assert_eq!(late.until(), Lsn(500));
        assert!(!late.skips(7, Lsn(100)), "not described yet: not known");
        late.describe(7, &t);
        late.describe(8, &TableName::new("public", "other"));
        assert!(late.skips(7, Lsn(499)));
        assert!(!late.skips(7, Lsn(500)));
        assert!(!late.skips(7, Lsn(501)));
        assert!(!late.skips(8, Lsn(1)));
        // The same id described as another table (a rename) no longer skips.
        late.describe(7, &TableName::new("public", "u"));
        assert!(!late.skips(7, Lsn(1)));
        assert_eq!(Late::default().until(), Lsn::ZERO);
    }
}

//! Net effects of a group of source transactions, per keyed table: what
//! each key ends up as. Within one target transaction, the intermediate
//! states of a row are invisible to everyone, so only the last one needs
//! writing: an INSERT then three UPDATEs of a row is one INSERT of its last
//! image; an UPDATE then a DELETE is a DELETE. pgbench's hot branch and
//! teller rows collapse from thousands of UPDATEs to a few.
//!
//! A change that cannot be folded (an UPDATE with unchanged TOAST values
//! and no earlier image of its row, a second INSERT of a key) is handed
//! back: the caller writes out the batch first and applies it alone, so
//! order per row is always kept.

use indexmap::map::Entry;
use indexmap::IndexMap;
use rustc_hash::{FxBuildHasher, FxHashMap};

use super::relation::{Identity, TargetRelation};
use crate::lsn::Lsn;
use crate::stream::pgoutput::{Datum, Tuple};

/// A batch is written out once it holds this much.
pub const BATCH_ROWS: usize = 5_000;
pub const BATCH_BYTES: usize = 32 << 20;

/// What a key ends up as after the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Net {
    /// Absent before, present after.
    Insert(Tuple),
    /// Present before and after: the full last image.
    Update(Tuple),
    /// Present before, absent after: the key values.
    Delete(Tuple),
}

#[derive(Debug, Default)]
pub struct TableNet {
    /// By key, in the order the keys first came: the source's order, whose
    /// locality (rows updated in key or page order) the target then keeps
    /// too, instead of visiting its index and heap at random.
    pub changes: IndexMap<Vec<u8>, Net, FxBuildHasher>,
    /// INSERTs into a table without a key (REPLICA IDENTITY FULL), in
    /// order; an UPDATE or DELETE of that table writes them out first.
    pub appends: Vec<Tuple>,
}

/// All keyed tables' net changes of the open group.
#[derive(Debug, Default)]
pub struct Batch {
    pub tables: FxHashMap<u32, TableNet>,
    pub rows: usize,
    pub bytes: usize,
    /// The last source transaction with a change in the batch.
    pub through: Lsn,
}

/// A change that could not be folded; applied alone after a flush.
struct Unbatchable;

fn plain(d: &Datum) -> Option<&[u8]> {
    match d {
        Datum::Text(b) => Some(b),
        _ => None,
    }
}

/// The key of `row` as bytes, if every key column has a text value.
fn key_of(key: &[usize], row: &Tuple) -> Option<Vec<u8>> {
    let mut k = Vec::with_capacity(16);
    for &i in key {
        let v = plain(row.get(i)?)?;
        k.extend_from_slice(&(v.len() as u32).to_be_bytes());
        k.extend_from_slice(v);
    }
    Some(k)
}

fn has_unchanged(row: &Tuple) -> bool {
    row.iter().any(|d| matches!(d, Datum::Unchanged))
}

fn only_text(row: &Tuple) -> bool {
    row.iter().all(|d| !matches!(d, Datum::Binary(_)))
}

/// `new` with its unchanged TOAST columns taken from `base`.
fn merge(base: &Tuple, new: &Tuple) -> Tuple {
    new.iter()
        .zip(base)
        .map(|(n, b)| {
            if matches!(n, Datum::Unchanged) {
                b.clone()
            } else {
                n.clone()
            }
        })
        .collect()
}

fn size(row: &Tuple) -> usize {
    row.iter()
        .map(|d| plain(d).map(<[u8]>::len).unwrap_or(0) + 8)
        .sum()
}

impl TableNet {
    /// An UPDATE that keeps its key: the key's entry becomes the new image
    /// (an earlier INSERT stays one). One lookup: pgbench's hot rows come
    /// through here thousands of times a group. Returns the image's size.
    fn update_in_place(
        &mut self,
        k: Vec<u8>,
        old: Option<Tuple>,
        new: Tuple,
    ) -> Result<usize, (Option<Tuple>, Tuple)> {
        let unchanged = has_unchanged(&new);
        match self.changes.entry(k) {
            // Unchanged TOAST values need an earlier image to take them from.
            Entry::Vacant(_) if unchanged => Err((old, new)),
            Entry::Vacant(v) => {
                let bytes = size(&new);
                v.insert(Net::Update(new));
                Ok(bytes)
            }
            Entry::Occupied(mut e) => {
                let (image, inserted) = match e.get() {
                    Net::Delete(_) => return Err((old, new)),
                    Net::Insert(b) if unchanged => (merge(b, &new), true),
                    Net::Update(b) if unchanged => (merge(b, &new), false),
                    Net::Insert(_) => (new, true),
                    Net::Update(_) => (new, false),
                };
                let bytes = size(&image);
                *e.get_mut() = if inserted {
                    Net::Insert(image)
                } else {
                    Net::Update(image)
                };
                Ok(bytes)
            }
        }
    }

    /// An UPDATE that changes the key: the old key goes, the new one comes.
    fn move_key(
        &mut self,
        old_key: Vec<u8>,
        new_key: Vec<u8>,
        old_row: Tuple,
        new: Tuple,
    ) -> Result<usize, (Option<Tuple>, Tuple)> {
        let changes = &mut self.changes;
        let image = match (changes.get(&old_key), has_unchanged(&new)) {
            (Some(Net::Delete(_)), _) | (None, true) => return Err((Some(old_row), new)),
            (Some(Net::Insert(b)) | Some(Net::Update(b)), true) => merge(b, &new),
            (_, false) => new,
        };
        let bytes = size(&image);
        let arriving = match changes.get(&new_key) {
            None => Net::Insert(image),
            Some(Net::Delete(_)) => Net::Update(image),
            Some(_) => return Err((Some(old_row), image)),
        };
        if let Some(Net::Insert(_)) = changes.get(&old_key) {
            changes.swap_remove(&old_key);
        } else {
            changes.insert(old_key, Net::Delete(old_row));
        }
        changes.insert(new_key, arriving);
        Ok(bytes)
    }

    /// Moves the pending inserts of a keyed table into the key map (the
    /// first UPDATE or DELETE of the table needs to see them).
    /// On a row it cannot index (two INSERTs of one key), that row and the
    /// rest stay pending: nothing is lost, and the flush will say what is
    /// wrong.
    fn index(&mut self, key: &[usize]) -> Result<(), Unbatchable> {
        let mut rest = std::mem::take(&mut self.appends).into_iter();
        while let Some(row) = rest.next() {
            match key_of(key, &row) {
                Some(k) if !self.changes.contains_key(&k) => {
                    self.changes.insert(k, Net::Insert(row));
                }
                _ => {
                    self.appends.push(row);
                    self.appends.extend(rest);
                    return Err(Unbatchable);
                }
            }
        }
        Ok(())
    }
}

impl Batch {
    /// Nothing waits, not even a table entry (see `prune`).
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Drops `relation`'s entry if a change that could not be folded left
    /// it empty: an empty entry must not outlive its relation's mapping.
    fn prune(&mut self, relation: u32) {
        if self
            .tables
            .get(&relation)
            .is_some_and(|t| t.changes.is_empty() && t.appends.is_empty())
        {
            self.tables.remove(&relation);
        }
    }

    /// Whether rows of `rel` can go into a batch at all.
    pub fn accepts(rel: &TargetRelation) -> bool {
        rel.identity == Identity::Key && !rel.key.is_empty()
    }

    fn added(&mut self, bytes: usize, lsn: Lsn) {
        self.rows += 1;
        self.bytes += bytes;
        self.through = self.through.max(lsn);
    }

    /// An INSERT into a keyed table (`key`: its key columns' positions in
    /// the relation's current description). It waits unindexed (a stream
    /// of INSERTs never pays for the key map) until an UPDATE or DELETE of
    /// the same table comes.
    pub fn add_insert(
        &mut self,
        key: &[usize],
        relation: u32,
        new: Tuple,
        lsn: Lsn,
    ) -> Result<(), Tuple> {
        if !only_text(&new) || has_unchanged(&new) {
            return Err(new);
        }
        let bytes = size(&new);
        let table = self.tables.entry(relation).or_default();
        if table.changes.is_empty() {
            table.appends.push(new);
        } else {
            // The table has keyed changes already: fold through the map.
            return self.add_insert_keyed(key, relation, new, lsn, bytes);
        }
        self.added(bytes, lsn);
        Ok(())
    }

    fn add_insert_keyed(
        &mut self,
        key: &[usize],
        relation: u32,
        new: Tuple,
        lsn: Lsn,
        bytes: usize,
    ) -> Result<(), Tuple> {
        let Some(k) = key_of(key, &new) else {
            return Err(new);
        };
        let changes = &mut self.tables.entry(relation).or_default().changes;
        let next = match changes.get(&k) {
            None => Net::Insert(new),
            Some(Net::Delete(_)) => Net::Update(new),
            Some(_) => return Err(new),
        };
        changes.insert(k, next);
        self.added(bytes, lsn);
        Ok(())
    }

    /// An UPDATE of a keyed table; `old` is the old key when it changed.
    pub fn add_update(
        &mut self,
        key: &[usize],
        relation: u32,
        old: Option<Tuple>,
        new: Tuple,
        lsn: Lsn,
    ) -> Result<(), (Option<Tuple>, Tuple)> {
        let result = self.fold_update(key, relation, old, new, lsn);
        if result.is_err() {
            self.prune(relation);
        }
        result
    }

    fn fold_update(
        &mut self,
        key: &[usize],
        relation: u32,
        old: Option<Tuple>,
        new: Tuple,
        lsn: Lsn,
    ) -> Result<(), (Option<Tuple>, Tuple)> {
        if !only_text(&new) {
            return Err((old, new));
        }
        let table = self.tables.entry(relation).or_default();
        if table.index(key).is_err() {
            return Err((old, new));
        }
        let Some(new_key) = key_of(key, &new) else {
            return Err((old, new));
        };
        // The old key, when it differs from the new one.
        let moved_from = match &old {
            None => None,
            Some(k) => match key_of(key, k) {
                Some(ok) if ok == new_key => None,
                Some(ok) => Some(ok),
                None => return Err((old, new)),
            },
        };
        let bytes = match (moved_from, old) {
            (Some(old_key), Some(old_row)) => table.move_key(old_key, new_key, old_row, new)?,
            (_, old) => table.update_in_place(new_key, old, new)?,
        };
        self.added(bytes, lsn);
        Ok(())
    }

    /// A DELETE of a keyed table; `old` holds the key values.
    pub fn add_delete(
        &mut self,
        key: &[usize],
        relation: u32,
        old: Tuple,
        lsn: Lsn,
    ) -> Result<(), Tuple> {
        let result = self.fold_delete(key, relation, old, lsn);
        if result.is_err() {
            self.prune(relation);
        }
        result
    }

    fn fold_delete(
        &mut self,
        key: &[usize],
        relation: u32,
        old: Tuple,
        lsn: Lsn,
    ) -> Result<(), Tuple> {
        let table = self.tables.entry(relation).or_default();
        if table.index(key).is_err() {
            return Err(old);
        }
        let Some(k) = key_of(key, &old) else {
            return Err(old);
        };
        let bytes = size(&old);
        let changes = &mut table.changes;
        match changes.get(&k) {
            None | Some(Net::Update(_)) => {
                changes.insert(k, Net::Delete(old));
            }
            Some(Net::Insert(_)) => {
                changes.swap_remove(&k);
            }
            Some(Net::Delete(_)) => return Err(old),
        }
        self.added(bytes, lsn);
        Ok(())
    }

    /// An INSERT into a table without a key.
    pub fn add_append(&mut self, relation: u32, new: Tuple, lsn: Lsn) -> Result<(), Tuple> {
        if !only_text(&new) || has_unchanged(&new) {
            return Err(new);
        }
        let bytes = size(&new);
        self.tables.entry(relation).or_default().appends.push(new);
        self.added(bytes, lsn);
        Ok(())
    }

    /// Whether `relation` has changes waiting.
    pub fn holds(&self, relation: u32) -> bool {
        self.tables.contains_key(&relation)
    }

    /// Empties the batch, returning its tables.
    pub fn take(&mut self) -> FxHashMap<u32, TableNet> {
        self.rows = 0;
        self.bytes = 0;
        self.through = Lsn::ZERO;
        std::mem::take(&mut self.tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::apply::copy_text::tests::t;

    fn net(b: &Batch, key: &str) -> Option<Net> {
        let k = key_of(&[0], &t(&[key])).expect("key");
        b.tables.get(&1).and_then(|n| n.changes.get(&k)).cloned()
    }

    #[test]
    fn a_row_folds_to_its_last_state() {
        let mut b = Batch::default();
        let lsn = Lsn(1);
        assert!(b.add_insert(&[0], 1, t(&["1", "a"]), lsn).is_ok(), "insert");
        assert_eq!(net(&b, "1"), None, "inserts wait unindexed");
        assert!(
            b.add_update(&[0], 1, None, t(&["1", "b"]), lsn).is_ok(),
            "update"
        );
        assert_eq!(
            net(&b, "1"),
            Some(Net::Insert(t(&["1", "b"]))),
            "insert then update is an insert"
        );
        assert!(
            b.add_delete(&[0], 1, t(&["1", "NULL"]), lsn).is_ok(),
            "delete"
        );
        assert_eq!(net(&b, "1"), None, "insert then delete is nothing");
        assert!(
            b.add_delete(&[0], 1, t(&["2", "NULL"]), lsn).is_ok(),
            "delete"
        );
        assert!(b.add_insert(&[0], 1, t(&["2", "c"]), lsn).is_ok(), "insert");
        assert_eq!(
            net(&b, "2"),
            Some(Net::Update(t(&["2", "c"]))),
            "delete then insert is an update"
        );
        assert!(
            b.add_insert(&[0], 1, t(&["2", "d"]), lsn).is_err(),
            "a second insert of a key is not folded"
        );
    }

    #[test]
    fn unchanged_toast_needs_an_earlier_image() {
        let mut b = Batch::default();
        assert!(b
            .add_update(&[0], 1, None, t(&["1", "U", "x"]), Lsn(1))
            .is_err());
        assert!(
            b.add_update(&[0], 1, None, t(&["1", "big", "x"]), Lsn(1))
                .is_ok(),
            "update"
        );
        assert!(
            b.add_update(&[0], 1, None, t(&["1", "U", "y"]), Lsn(1))
                .is_ok(),
            "update"
        );
        assert_eq!(net(&b, "1"), Some(Net::Update(t(&["1", "big", "y"]))));
    }

    #[test]
    fn an_update_keeping_its_key_folds_onto_every_earlier_state() {
        // Earlier state of key 1, then an UPDATE with (U) or without an
        // unchanged TOAST value: what the key ends up as.
        let cases: [(&str, bool, Option<Net>); 8] = [
            ("none", false, Some(Net::Update(t(&["1", "n", "y"])))),
            ("none", true, None),
            ("insert", false, Some(Net::Insert(t(&["1", "n", "y"])))),
            ("insert", true, Some(Net::Insert(t(&["1", "i", "y"])))),
            ("update", false, Some(Net::Update(t(&["1", "n", "y"])))),
            ("update", true, Some(Net::Update(t(&["1", "u", "y"])))),
            ("delete", false, None),
            ("delete", true, None),
        ];
        for (before, unchanged, want) in cases {
            let mut b = Batch::default();
            b.add_insert(&[0], 1, t(&["9", "z", "z"]), Lsn(1))
                .expect("another key");
            match before {
                "insert" => {
                    b.add_delete(&[0], 1, t(&["8", "NULL", "NULL"]), Lsn(1))
                        .expect("index the table");
                    b.add_insert(&[0], 1, t(&["1", "i", "x"]), Lsn(1))
                        .expect("insert")
                }
                "update" => b
                    .add_update(&[0], 1, None, t(&["1", "u", "x"]), Lsn(1))
                    .expect("update"),
                "delete" => b
                    .add_delete(&[0], 1, t(&["1", "NULL", "NULL"]), Lsn(1))
                    .expect("delete"),
                _ => {}
            }
            let rows = b.rows;
            let value = if unchanged { "U" } else { "n" };
            let folded = b.add_update(&[0], 1, None, t(&["1", value, "y"]), Lsn(2));
            match &want {
                Some(net_after) => {
                    assert!(folded.is_ok(), "{before} {unchanged}");
                    assert_eq!(
                        net(&b, "1").as_ref(),
                        Some(net_after),
                        "{before} {unchanged}"
                    );
                    assert_eq!(b.rows, rows + 1, "{before} {unchanged}");
                    assert_eq!(b.through, Lsn(2));
                }
                None => {
                    let (old, new) = folded.expect_err("handed back");
                    assert!(old.is_none(), "{before} {unchanged}");
                    assert_eq!(new, t(&["1", value, "y"]), "{before} {unchanged}");
                    assert_eq!(b.rows, rows, "{before} {unchanged}: nothing counted");
                }
            }
        }
    }

    #[test]
    fn key_changes_move_the_row() {
        let mut b = Batch::default();
        assert!(
            b.add_update(&[0], 1, Some(t(&["1", "NULL"])), t(&["2", "a"]), Lsn(1))
                .is_ok(),
            "key change"
        );
        assert_eq!(net(&b, "1"), Some(Net::Delete(t(&["1", "NULL"]))));
        assert_eq!(net(&b, "2"), Some(Net::Insert(t(&["2", "a"]))));
        // And back: the old key reappears as an update.
        assert!(
            b.add_update(&[0], 1, Some(t(&["2", "NULL"])), t(&["1", "b"]), Lsn(2))
                .is_ok(),
            "key change back"
        );
        assert_eq!(net(&b, "1"), Some(Net::Update(t(&["1", "b"]))));
        assert_eq!(net(&b, "2"), None);
        assert_eq!(b.through, Lsn(2));
    }

    #[test]
    fn merge_fills_unchanged_columns() {
        assert_eq!(
            merge(&t(&["1", "big", "x"]), &t(&["1", "U", "y"])),
            t(&["1", "big", "y"])
        );
    }
}

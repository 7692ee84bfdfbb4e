//! The connection table: every live connection of one worker, keyed by its 5-tuple.
//!
//! Entries live in a slab (the slab key becomes the connection's mio tokens) with a hash index
//! from the 5-tuple to the key. Each worker owns its table; nothing here is shared or locked.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;

use hashbrown::HashTable;
use slab::Slab;

use crate::config::Protocol;

/// What identifies one client connection or flow: `(protocol, client ip, client port,
/// listener ip, listener port)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// Transport protocol.
    pub protocol: Protocol,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The listener's address and port the client reached.
    pub listener: SocketAddr,
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.protocol, self.client, self.listener)
    }
}

/// An entry that knows its own 5-tuple (the table's index holds only slab keys).
pub(crate) trait Keyed {
    /// The entry's 5-tuple, fixed for its life in the table.
    fn tuple(&self) -> &FiveTuple;
}

/// A slab of entries with a 5-tuple index.
///
/// The index holds slab keys only, hashed by the 5-tuple the entry itself carries (a
/// `hashbrown::HashTable`): a tuple is stored once per connection, not three times (the slab,
/// the index and the entry), which is most of an idle connection's memory. The hash is
/// keyed per table (std's `RandomState`, SipHash-1-3): clients choose their ports, and must not
/// be able to choose colliding ones.
pub(crate) struct ConnTable<T> {
    entries: Slab<T>,
    index: HashTable<usize>,
    hasher: RandomState,
}

impl<T> fmt::Debug for ConnTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnTable")
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl<T> Default for ConnTable<T> {
    fn default() -> Self {
        ConnTable {
            entries: Slab::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

impl<T: Keyed> ConnTable<T> {
    /// Adds an entry (keyed by its own 5-tuple) and returns its slab key.
    ///
    /// # Errors
    /// Gives `value` back when an entry with the same 5-tuple is already in the table.
    pub(crate) fn insert(&mut self, value: T) -> Result<usize, T> {
        let hash = self.hasher.hash_one(value.tuple());
        if self.find_hashed(hash, value.tuple()).is_some() {
            return Err(value);
        }
        let key = self.entries.insert(value);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(hash, key, |&k| {
            entries.get(k).map_or(0, |e| hasher.hash_one(e.tuple()))
        });
        Ok(key)
    }

    /// Removes the entry with `key`, if present (indexed or not).
    pub(crate) fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.entries.try_remove(key)?;
        self.unindex_hashed(key, value.tuple());
        Some(value)
    }

    /// Takes the entry with `key` out of the index, keeping it in the slab under its key: its
    /// 5-tuple is free for a new entry while it finishes (a client that closed cleanly and
    /// reuses its port at once, through the kernel's TIME_WAIT reuse, while Ballast still
    /// delivers what it sent).
    pub(crate) fn unindex(&mut self, key: usize) {
        if let Some(tuple) = self.entries.get(key).map(|e| *e.tuple()) {
            self.unindex_hashed(key, &tuple);
        }
    }

    fn unindex_hashed(&mut self, key: usize, tuple: &FiveTuple) {
        let hash = self.hasher.hash_one(tuple);
        if let Ok(entry) = self.index.find_entry(hash, |&k| k == key) {
            entry.remove();
        }
    }

    /// The key of the entry for `tuple`.
    pub(crate) fn find(&self, tuple: &FiveTuple) -> Option<usize> {
        self.find_hashed(self.hasher.hash_one(tuple), tuple)
    }

    fn find_hashed(&self, hash: u64, tuple: &FiveTuple) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(hash, |&k| {
                entries.get(k).is_some_and(|e| e.tuple() == tuple)
            })
            .copied()
    }
}

impl<T> ConnTable<T> {
    /// The entry with `key`, to read.
    pub(crate) fn get(&self, key: usize) -> Option<&T> {
        self.entries.get(key)
    }

    /// The entry with `key`.
    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key)
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Keys of every entry.
    pub(crate) fn keys(&self) -> Vec<usize> {
        self.entries.iter().map(|(k, _)| k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(port: u16) -> FiveTuple {
        FiveTuple {
            protocol: Protocol::Tcp,
            client: SocketAddr::from(([127, 0, 0, 1], port)),
            listener: SocketAddr::from(([127, 0, 0, 1], 80)),
        }
    }

    #[derive(Debug, PartialEq)]
    struct E(FiveTuple, &'static str);

    impl Keyed for E {
        fn tuple(&self) -> &FiveTuple {
            &self.0
        }
    }

    #[test]
    fn insert_find_remove() {
        let mut t = ConnTable::default();
        let a = t.insert(E(tuple(1), "a")).unwrap();
        let b = t.insert(E(tuple(2), "b")).unwrap();
        assert_eq!(t.insert(E(tuple(1), "dup")), Err(E(tuple(1), "dup")));
        assert_eq!(t.find(&tuple(2)), Some(b));
        assert_eq!(t.remove(a), Some(E(tuple(1), "a")));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.find(&tuple(1)), None);
        assert_eq!(t.len(), 1);
        let c = t.insert(E(tuple(1), "c")).unwrap();
        assert_eq!(t.get(c), Some(&E(tuple(1), "c")));
        // Out of the index, still in the slab: its tuple is free for a new entry.
        t.unindex(c);
        assert_eq!(t.find(&tuple(1)), None);
        let d = t.insert(E(tuple(1), "d")).unwrap();
        assert_eq!(t.find(&tuple(1)), Some(d));
        assert_eq!(t.remove(c), Some(E(tuple(1), "c")));
        assert_eq!(
            t.find(&tuple(1)),
            Some(d),
            "removing the unindexed entry kept the new one"
        );
    }

    /// Slab keys are reused and the index rehashes as it grows and shrinks: after thousands
    /// of inserts and removes in a shuffled order, the index finds exactly the live entries.
    #[test]
    fn the_index_follows_the_slab_through_reuse_and_growth() {
        let mut t = ConnTable::default();
        let mut live = std::collections::HashMap::new();
        let mut x: u64 = 7;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let port = (x >> 33) as u16 % 3000;
            match live.remove(&port) {
                Some(key) => assert!(t.remove(key).is_some()),
                None => {
                    live.insert(port, t.insert(E(tuple(port), "x")).unwrap());
                }
            }
        }
        assert_eq!(t.len(), live.len());
        for port in 0..3000 {
            assert_eq!(
                t.find(&tuple(port)),
                live.get(&port).copied(),
                "port {port}"
            );
        }
    }
}

//! The connection table: every live connection of one worker, keyed by its 5-tuple.
//!
//! Entries live in a slab (the slab key becomes the connection's mio tokens) with a hash index
//! from the 5-tuple to the key. Each worker owns its table; nothing here is shared or locked.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

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

/// A slab of entries with a 5-tuple index.
#[derive(Debug)]
pub(crate) struct ConnTable<T> {
    entries: Slab<(FiveTuple, T)>,
    index: HashMap<FiveTuple, usize>,
}

impl<T> Default for ConnTable<T> {
    fn default() -> Self {
        ConnTable {
            entries: Slab::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> ConnTable<T> {
    /// Adds an entry and returns its key.
    ///
    /// # Errors
    /// Gives `value` back when an entry with the same 5-tuple is already in the table.
    pub(crate) fn insert(&mut self, tuple: FiveTuple, value: T) -> Result<usize, T> {
        if self.index.contains_key(&tuple) {
            return Err(value);
        }
        let key = self.entries.insert((tuple, value));
        self.index.insert(tuple, key);
        Ok(key)
    }

    /// Removes the entry with `key`, if present.
    pub(crate) fn remove(&mut self, key: usize) -> Option<T> {
        let (tuple, value) = self.entries.try_remove(key)?;
        let removed = self.index.remove(&tuple);
        debug_assert_eq!(removed, Some(key), "index and slab disagree");
        Some(value)
    }

    /// The entry with `key`, to read.
    pub(crate) fn get(&self, key: usize) -> Option<&T> {
        self.entries.get(key).map(|(_, v)| v)
    }

    /// The entry with `key`.
    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    /// The key of the entry for `tuple`.
    pub(crate) fn find(&self, tuple: &FiveTuple) -> Option<usize> {
        self.index.get(tuple).copied()
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
        self.entries.iter().map(|(_, (_, v))| v)
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

    #[test]
    fn insert_find_remove() {
        let mut t = ConnTable::default();
        let a = t.insert(tuple(1), "a").unwrap();
        let b = t.insert(tuple(2), "b").unwrap();
        assert_eq!(t.insert(tuple(1), "dup"), Err("dup"));
        assert_eq!(t.find(&tuple(2)), Some(b));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.find(&tuple(1)), None);
        assert_eq!(t.len(), 1);
        let c = t.insert(tuple(1), "c").unwrap();
        assert_eq!(t.get_mut(c), Some(&mut "c"));
    }
}

//! Cancel requests to the server that issued their key. A client cancels a query (psql's
//! Ctrl-C, `pg_cancel_backend` from libpq's `PQcancel`) by opening a *new* connection and
//! sending the process ID and secret key the server gave it in `BackendKeyData`. Behind a
//! balancer that new connection would go to any target, where the key means nothing and the
//! cancel silently does nothing; so each worker records the keys its connections' servers
//! sent ([`CancelKeys::insert`], removed when the connection ends) and a cancel, on whichever
//! worker it lands, goes to the target its key came from ([`CancelKeys::target`]).
//!
//! One table per listener, shared by its workers: shards behind mutexes, each taken once at
//! a PostgreSQL connection's start and end and at a cancel, never per byte. Its size is
//! bounded by the open connections (one key each). The shard is chosen with a keyed hash
//! (SipHash, a random key per table) so a client cannot pile keys into one shard.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::SocketAddr;
use std::sync::Mutex;

/// Shards of a table.
const SHARDS: usize = 16;

/// A backend's cancel key: its process ID and secret key (4 bytes in protocol 3.0, up to
/// 256 in 3.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CancelKey {
    /// The backend's process ID.
    pub pid: u32,
    /// The secret key.
    pub secret: Box<[u8]>,
}

impl CancelKey {
    /// The key `secret` of process `pid`.
    pub(crate) fn new(pid: u32, secret: &[u8]) -> CancelKey {
        CancelKey {
            pid,
            secret: secret.into(),
        }
    }
}

/// Which connection a key belongs to, so only that one removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The target the connection reached: where its cancels go.
    pub target: SocketAddr,
    /// The worker holding the connection.
    pub worker: usize,
    /// The connection's id in that worker.
    pub connection: u64,
}

/// The keys of one listener's open PostgreSQL connections, shared by its workers.
#[derive(Debug)]
pub(crate) struct CancelKeys {
    hasher: std::hash::RandomState,
    shards: [Mutex<HashMap<CancelKey, Owner>>; SHARDS],
}

impl Default for CancelKeys {
    fn default() -> Self {
        CancelKeys {
            hasher: std::hash::RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl CancelKeys {
    fn shard(&self, key: &CancelKey) -> std::sync::MutexGuard<'_, HashMap<CancelKey, Owner>> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        // A panic while holding a shard's lock cannot leave a map half-changed in a way
        // that matters here: take the map as it is.
        let shard = self.shards.get(i).unwrap_or(&self.shards[0]);
        shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `key`, sent by `owner.target` to `owner`'s connection. A key already there
    /// (another server chose the same process ID and secret, as unlikely as that is) is
    /// replaced: the newer connection's cancels work.
    pub(crate) fn insert(&self, key: CancelKey, owner: Owner) {
        self.shard(&key).insert(key, owner);
    }

    /// Forgets `key` if `owner` still holds it (the connection ended).
    pub(crate) fn remove(&self, key: &CancelKey, owner: Owner) {
        let mut shard = self.shard(key);
        if shard.get(key) == Some(&owner) {
            shard.remove(key);
        }
    }

    /// Where a cancel with `key` goes: the target of the open connection whose server sent
    /// it, if any.
    pub(crate) fn target(&self, key: &CancelKey) -> Option<SocketAddr> {
        self.shard(key).get(key).map(|o| o.target)
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_routes_to_its_target_until_its_connection_ends() {
        let keys = CancelKeys::default();
        let (a, b) = (
            "10.0.0.1:5432".parse().unwrap(),
            "10.0.0.2:5432".parse().unwrap(),
        );
        let ka = CancelKey::new(100, &[1, 2, 3, 4]);
        let owner_a = Owner {
            target: a,
            worker: 0,
            connection: 7,
        };
        keys.insert(ka.clone(), owner_a);
        // The same process ID on another server, another key.
        let kb = CancelKey::new(100, &[5, 6, 7, 8]);
        let owner_b = Owner {
            target: b,
            worker: 1,
            connection: 7,
        };
        keys.insert(kb.clone(), owner_b);
        assert_eq!(keys.target(&ka), Some(a));
        assert_eq!(keys.target(&kb), Some(b));
        assert_eq!(
            keys.target(&CancelKey::new(100, &[1, 2, 3, 5])),
            None,
            "a wrong secret"
        );
        // Only the owner removes its key.
        keys.remove(&ka, owner_b);
        assert_eq!(keys.target(&ka), Some(a));
        keys.remove(&ka, owner_a);
        assert_eq!(keys.target(&ka), None);
        assert_eq!(keys.len(), 1);
    }
}

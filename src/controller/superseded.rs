//! The resourceVersions of policies this daemon has itself written over. Until the watch brings the
//! newer object, the cache still holds the old one, and a reconcile started from it would plan from
//! a stale status: its write could only conflict (at 1,000 new policies, 860 such 409s slowed the
//! start by a third). Such a reconcile waits for the watch instead.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::prometheus::engine::Key;

/// Enough for the writes of one pass (finalizer, status) and the pass after.
const KEPT: usize = 4;

#[derive(Debug, Default)]
pub struct Superseded {
    by_policy: Mutex<HashMap<Key, Vec<String>>>,
}

impl Superseded {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<String>>> {
        self.by_policy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write of ours succeeded on top of the object at `written_over`.
    pub fn record(&self, key: &Key, written_over: Option<&str>) {
        let Some(rv) = written_over else { return };
        let mut map = self.map();
        let seen = map.entry(key.clone()).or_default();
        seen.push(rv.to_string());
        let excess = seen.len().saturating_sub(KEPT);
        seen.drain(..excess);
    }

    /// The cached object at `rv` is one we have written over. Any other version means the cache
    /// has caught up (or someone else wrote): the key is forgotten, so an idle fleet keeps nothing.
    pub fn is_stale(&self, key: &Key, rv: Option<&str>) -> bool {
        let mut map = self.map();
        let stale = match (map.get(key), rv) {
            (Some(seen), Some(rv)) => seen.iter().any(|s| s == rv),
            _ => false,
        };
        if !stale {
            map.remove(key);
        }
        stale
    }

    /// A deleted policy.
    pub fn forget(&self, key: &Key) {
        self.map().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_versions_written_over_are_stale_and_catching_up_forgets_them() {
        let s = Superseded::default();
        let key: Key = ("dev".into(), "p".into());
        assert!(!s.is_stale(&key, Some("1")));
        s.record(&key, Some("1")); // finalizer added on top of 1 (→ 2)
        s.record(&key, Some("2")); // status written on top of 2 (→ 3)
        assert!(s.is_stale(&key, Some("1")));
        assert!(s.is_stale(&key, Some("2")));
        assert!(!s.is_stale(&key, Some("3")));
        // Caught up: nothing is kept, and the old versions no longer count.
        assert!(!s.is_stale(&key, Some("2")));
        assert!(s.map().is_empty());
        // Bounded per policy.
        for rv in 0..10 {
            s.record(&key, Some(&rv.to_string()));
        }
        assert_eq!(s.map().get(&key).map(Vec::len), Some(KEPT));
        assert!(!s.is_stale(&key, Some("0")));
    }
}

//! A bounded cache of virtual servers' merged list answers, so a list a caller asked a moment
//! ago is answered again without any callout.
//!
//! - **What is cached:** a merged `tools/list`, `prompts/list`, `resources/list` or
//!   `resources/templates/list` answer (after governance: filtered for the caller, redacted)
//!   whose merged `ttlMs` is above 0, i.e. every backend answered and every answer declared a
//!   positive `ttlMs` (the smallest one bounds the entry). Never `server/discover`, never an
//!   answer with a backend omitted (its ttl is 0).
//! - **Key:** (virtual server, method, the client's cursor, the caller's roles) when every
//!   answering backend declared `cacheScope: "public"`; otherwise the caller's consumer name
//!   is part of the key too, so a `"private"` (or unspecified) answer is never served to
//!   another caller, even one with the same roles.
//! - **Freshness:** an entry expires `ttlMs` after it was stored; a hit answers with the
//!   remaining `ttlMs` (never more than what is left), the request's own id.
//! - **Bounds:** at most [`MAX_ENTRIES`] entries and [`MAX_BYTES`] of items; the oldest entry
//!   goes first; an answer larger than [`MAX_ENTRY_BYTES`] is not stored.
//! - **Invalidation:** the cache belongs to one [`super::Gateway`], i.e. one filter
//!   configuration: a configuration change (registry edit, ECDS push) starts empty. Expired
//!   entries are dropped when met.
//!
//! One cache per configuration object: per worker in the wasm build (one VM each), shared by
//! the workers in the native build (a mutex held only to copy an entry in or out).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::virtual_fanout::MergedList;

/// Most entries kept.
pub const MAX_ENTRIES: usize = 1024;
/// Most item bytes kept in all.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Largest answer stored.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// What a cached answer is looked up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub virtual_server: String,
    pub method: String,
    /// The client's own `params.cursor` (already validated).
    pub cursor: Option<String>,
    /// The caller's roles, sorted and deduplicated.
    pub roles: Vec<String>,
    /// The caller's consumer name, for answers not declared public by every backend.
    pub consumer: Option<String>,
}

#[derive(Debug)]
struct Entry {
    list: MergedList,
    stored_ns: u64,
    expires_ns: u64,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<CacheKey, Entry>,
    /// Insertion order, oldest first (a key may appear after its entry left the map).
    order: VecDeque<CacheKey>,
    bytes: usize,
}

/// The cache. Lock poisoning (a panic elsewhere while held) makes it a permanent miss.
#[derive(Debug, Default)]
pub struct ListCache {
    entries: Mutex<Entries>,
}

impl ListCache {
    /// The fresh answer for the caller of `key` (public entry first, then the caller's own),
    /// with `ttl_ms` set to what is left of its freshness.
    pub fn get(&self, key: &CacheKey, consumer: &str, now_ns: u64) -> Option<MergedList> {
        let mut entries = self.entries.lock().ok()?;
        let own = CacheKey { consumer: Some(consumer.to_string()), ..key.clone() };
        let public = CacheKey { consumer: None, ..key.clone() };
        for candidate in [public, own] {
            let Some(entry) = entries.map.get(&candidate) else { continue };
            if now_ns >= entry.expires_ns || now_ns < entry.stored_ns {
                if let Some(gone) = entries.map.remove(&candidate) {
                    entries.bytes = entries.bytes.saturating_sub(gone.list.size());
                }
                continue;
            }
            let mut list = entry.list.clone();
            list.ttl_ms = (entry.expires_ns - now_ns) / 1_000_000;
            return Some(list);
        }
        None
    }

    /// Stores `list` (answered for `consumer`) under `key` when it may be reused: a positive
    /// ttl and not too large. Public answers are stored without the consumer.
    pub fn put(&self, key: CacheKey, consumer: &str, list: &MergedList, now_ns: u64) {
        if list.ttl_ms == 0 || list.size() > MAX_ENTRY_BYTES {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        let key = CacheKey { consumer: (!list.public).then(|| consumer.to_string()), ..key };
        let expires_ns = now_ns.saturating_add(list.ttl_ms.saturating_mul(1_000_000));
        let size = list.size();
        if let Some(old) = entries.map.remove(&key) {
            entries.bytes = entries.bytes.saturating_sub(old.list.size());
        }
        while entries.map.len() >= MAX_ENTRIES || entries.bytes + size > MAX_BYTES {
            let Some(oldest) = entries.order.pop_front() else { break };
            if let Some(gone) = entries.map.remove(&oldest) {
                entries.bytes = entries.bytes.saturating_sub(gone.list.size());
            }
        }
        entries.bytes += size;
        entries.order.push_back(key.clone());
        entries.map.insert(key, Entry { list: list.clone(), stored_ns: now_ns, expires_ns });
        // Keys of replaced entries linger in `order`; keep it bounded.
        if entries.order.len() > 2 * MAX_ENTRIES {
            let live: Vec<CacheKey> = entries.order.iter().filter(|k| entries.map.contains_key(*k)).cloned().collect();
            entries.order = live.into();
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.map.len()).unwrap_or(0)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cursor: Option<&str>) -> CacheKey {
        CacheKey {
            virtual_server: "work".into(),
            method: "tools/list".into(),
            cursor: cursor.map(str::to_string),
            roles: vec!["reader".into()],
            consumer: None,
        }
    }

    fn list(ttl_ms: u64, public: bool) -> MergedList {
        MergedList { array: "tools", items: br#"{"name":"crm__x"}"#.to_vec(), next_cursor: None, ttl_ms, public }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_fresh_entry_is_served_with_the_remaining_ttl_then_expires() {
        let cache = ListCache::default();
        cache.put(key(None), "alice", &list(1000, true), 10 * MS);
        let hit = cache.get(&key(None), "bob", 410 * MS).unwrap();
        assert_eq!(hit.ttl_ms, 600);
        assert!(cache.get(&key(Some("c")), "bob", 410 * MS).is_none(), "another cursor is another key");
        assert!(cache.get(&key(None), "bob", 1010 * MS).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_private_answer_is_never_served_to_another_caller() {
        let cache = ListCache::default();
        cache.put(key(None), "alice", &list(1000, false), 0);
        assert!(cache.get(&key(None), "bob", MS).is_none());
        assert!(cache.get(&key(None), "alice", MS).is_some());
        let mut admin = key(None);
        admin.roles = vec!["admin".into()];
        cache.put(key(None), "alice", &list(1000, true), 0);
        assert!(cache.get(&admin, "bob", MS).is_none(), "other roles, other key");
    }

    #[test]
    fn nothing_uncacheable_is_stored_and_the_size_is_bounded() {
        let cache = ListCache::default();
        cache.put(key(None), "a", &list(0, true), 0);
        let mut big = list(1000, true);
        big.items = vec![b' '; MAX_ENTRY_BYTES + 1];
        cache.put(key(Some("big")), "a", &big, 0);
        assert!(cache.is_empty());
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(key(Some(&i.to_string())), "a", &list(1000, true), 0);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert!(cache.get(&key(Some("0")), "a", 1).is_none(), "the oldest went first");
        assert!(cache.get(&key(Some(&(MAX_ENTRIES + 9).to_string())), "a", 1).is_some());
    }
}

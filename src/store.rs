//! The object-store seam: what the pipeline needs from R2, and an in-memory backend for host tests.
//!
//! Failure contract, shared by every backend:
//! - `get` returns [`Fetched::Missing`] when the object does not exist, never an error;
//!   [`Fetched::NotModified`] without a body when its etag equals `if_none_match`; and
//!   [`Fetched::TooLarge`] without reading the body when the object exceeds the limit.
//! - `put` with a condition that does not hold returns `Ok(PutOutcome::ConditionFailed)` and
//!   writes nothing.
//! - Any other failure (network, permissions, runtime) is a [`StoreError`]; the caller must
//!   assume nothing was written by a failed `put`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Custom metadata key carrying the database version (epoch milliseconds as a decimal string).
pub const DB_VERSION_KEY: &str = "db-version";

/// The bytes of a fetched object, readable without first copying them into Rust-owned memory.
pub trait Body {
    /// Length of the object in bytes.
    fn len(&self) -> usize;
    /// True for a zero-byte object.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies the whole object into `dst`, whose length is exactly [`Body::len`].
    fn copy_to(&self, dst: &mut [u8]);
}

/// The result of a `get`.
#[derive(Debug)]
pub enum Fetched<B> {
    /// No object exists under the key.
    Missing,
    /// The object still has the entity tag the caller already holds; no body was sent.
    NotModified,
    /// The object is larger than the caller's limit; its body was not read.
    TooLarge {
        /// The object's size.
        size_bytes: u64,
    },
    /// The object, with its body.
    Found(StoredObject<B>),
}

/// An object read from the store.
#[derive(Debug)]
pub struct StoredObject<B> {
    /// The store's entity tag for this exact version of the object.
    pub etag: String,
    /// The object's custom metadata.
    pub metadata: HashMap<String, String>,
    /// The object's bytes.
    pub body: B,
}

/// When a `put` may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Only if the stored object still has this entity tag (no one wrote since we read it).
    IfMatch(String),
    /// Only if no object exists under the key (no one created it since we found it missing).
    IfAbsent,
}

/// The result of a `put` that reached the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The bytes were stored; this is the new entity tag.
    Stored {
        /// Entity tag of the object just written.
        etag: String,
    },
    /// The condition did not hold, so nothing was written.
    ConditionFailed,
}

/// A store operation that failed for a reason other than a missing object or a failed condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// The operation that failed (`get`, `put`, ...).
    pub operation: &'static str,
    /// What the backend reported; for logs only, never sent to clients.
    pub detail: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store {} failed: {}", self.operation, self.detail)
    }
}

impl std::error::Error for StoreError {}

/// The operations the pipeline performs on the object store.
///
/// Futures are not `Send`: the Workers runtime is single-threaded and R2's are not.
#[allow(async_fn_in_trait)]
pub trait ObjectStore {
    /// How this backend hands over an object's bytes.
    type Body: Body;

    /// Fetches an object with its metadata and body, unless it is missing, unchanged since
    /// `if_none_match`, or larger than `max_bytes`; the size is checked before any of the body
    /// is read.
    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<Self::Body>, StoreError>;

    /// Writes `bytes` under `key` with `metadata`, only if `condition` holds.
    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError>;
}

impl Body for Rc<[u8]> {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn copy_to(&self, dst: &mut [u8]) {
        dst.copy_from_slice(self);
    }
}

#[derive(Debug, Clone)]
struct MemoryObject {
    bytes: Rc<[u8]>,
    etag: String,
    metadata: HashMap<String, String>,
}

/// An in-memory [`ObjectStore`] with R2's semantics, for host tests and benchmarks.
///
/// Entity tags are unique per write (a generation counter), so any write after a read makes
/// an `IfMatch` condition fail, as it would in R2 for changed content.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: RefCell<HashMap<String, MemoryObject>>,
    generation: RefCell<u64>,
    gets: RefCell<u64>,
    puts: RefCell<u64>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `bytes` under `key` unconditionally, as an outside writer would; returns the etag.
    pub fn insert(&self, key: &str, bytes: &[u8], metadata: &[(&str, String)]) -> String {
        let mut generation = self.generation.borrow_mut();
        *generation += 1;
        let etag = format!("mem-{generation}");
        let metadata = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        self.objects.borrow_mut().insert(
            key.to_owned(),
            MemoryObject {
                bytes: Rc::from(bytes),
                etag: etag.clone(),
                metadata,
            },
        );
        etag
    }

    /// The stored bytes under `key`, if any.
    #[must_use]
    pub fn bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.objects.borrow().get(key).map(|o| o.bytes.to_vec())
    }

    /// The stored custom metadata under `key`, if any.
    #[must_use]
    pub fn metadata(&self, key: &str) -> Option<HashMap<String, String>> {
        self.objects.borrow().get(key).map(|o| o.metadata.clone())
    }

    /// How many `get` calls reached this store, for tests of read paths.
    #[must_use]
    pub fn get_count(&self) -> u64 {
        *self.gets.borrow()
    }

    /// How many `put` calls reached this store (successful or not), for tests of write paths.
    #[must_use]
    pub fn put_count(&self) -> u64 {
        *self.puts.borrow()
    }
}

impl ObjectStore for MemoryStore {
    type Body = Rc<[u8]>;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<Rc<[u8]>>, StoreError> {
        *self.gets.borrow_mut() += 1;
        let objects = self.objects.borrow();
        let Some(o) = objects.get(key) else {
            return Ok(Fetched::Missing);
        };
        if if_none_match == Some(o.etag.as_str()) {
            return Ok(Fetched::NotModified);
        }
        let size_bytes = o.bytes.len() as u64;
        if size_bytes > max_bytes {
            return Ok(Fetched::TooLarge { size_bytes });
        }
        Ok(Fetched::Found(StoredObject {
            etag: o.etag.clone(),
            metadata: o.metadata.clone(),
            body: Rc::clone(&o.bytes),
        }))
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError> {
        *self.puts.borrow_mut() += 1;
        let current = self.objects.borrow().get(key).map(|o| o.etag.clone());
        let holds = match (condition, current) {
            (PutCondition::IfMatch(expected), Some(actual)) => *expected == actual,
            (PutCondition::IfMatch(_), None) => false,
            (PutCondition::IfAbsent, current) => current.is_none(),
        };
        if !holds {
            return Ok(PutOutcome::ConditionFailed);
        }
        let etag = self.insert(key, bytes, metadata);
        Ok(PutOutcome::Stored { etag })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// The in-memory backend honours the failure contract the pipeline relies on.
    #[test]
    fn memory_store_contract() {
        pollster::block_on(async {
            let store = MemoryStore::new();
            assert!(matches!(
                store.get("a", u64::MAX, None).await.unwrap(),
                Fetched::Missing
            ));

            let created = store
                .put("a", b"one", &[], &PutCondition::IfAbsent)
                .await
                .unwrap();
            let PutOutcome::Stored { etag } = created else {
                panic!("create-only put on a missing key must store")
            };
            assert_eq!(
                store
                    .put("a", b"two", &[], &PutCondition::IfAbsent)
                    .await
                    .unwrap(),
                PutOutcome::ConditionFailed
            );
            assert_eq!(
                store
                    .put("a", b"two", &[], &PutCondition::IfMatch("stale".into()))
                    .await
                    .unwrap(),
                PutOutcome::ConditionFailed
            );
            assert_eq!(store.bytes("a").unwrap(), b"one");
            let updated = store
                .put(
                    "a",
                    b"two",
                    &[("k", "v".into())],
                    &PutCondition::IfMatch(etag),
                )
                .await
                .unwrap();
            assert!(matches!(updated, PutOutcome::Stored { .. }));
            let Fetched::Found(got) = store.get("a", 3, Some("stale-etag")).await.unwrap() else {
                panic!("an object at the limit must be returned")
            };
            assert!(matches!(
                store.get("a", 3, Some(&got.etag)).await.unwrap(),
                Fetched::NotModified
            ));
            assert_eq!(&*got.body, b"two");
            assert_eq!(got.metadata["k"], "v");
            assert!(matches!(
                store.get("a", 2, None).await.unwrap(),
                Fetched::TooLarge { size_bytes: 3 }
            ));
            assert_eq!(store.put_count(), 4);
        });
    }
}

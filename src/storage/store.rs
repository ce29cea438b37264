//! The object-store seam: what the pipeline needs from R2, and an in-memory backend for host tests.
//!
//! Failure contract, shared by every backend:
//! - `get` returns [`Fetched::Missing`] when the object does not exist, never an error;
//!   [`Fetched::NotModified`] without a body when its etag equals `if_none_match`; and
//!   [`Fetched::TooLarge`] without reading the body when the object exceeds the limit.
//! - `put` with a condition that does not hold returns `Ok(PutOutcome::ConditionFailed)` and
//!   writes nothing.
//! - `head` returns `None` when the object does not exist.
//! - Any other failure is a [`StoreError`] whose [`StoreErrorKind`] says whether repeating the
//!   call may help. A failed `put` may or may not have stored its bytes (the request can die
//!   after the store committed); callers that must know read the object back (`head`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub mod contract;

/// The bytes of a fetched object, not yet read: they are copied once, straight into the
/// buffer that will hold the database, as they arrive.
#[allow(async_fn_in_trait)]
pub trait Body {
    /// Length of the object in bytes, known before any of it is read.
    fn len(&self) -> usize;
    /// True for a zero-byte object.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies the whole object into `dst`, whose length is exactly [`Body::len`], chunk by
    /// chunk as it arrives. A body that ends early or runs long is an error.
    async fn read_into(self, dst: &mut [u8]) -> Result<(), StoreError>;

    /// The whole object in a new buffer (for small objects: manifests, deltas).
    async fn into_vec(self) -> Result<Vec<u8>, StoreError>
    where
        Self: Sized,
    {
        let mut bytes = vec![0; self.len()];
        self.read_into(&mut bytes).await?;
        Ok(bytes)
    }
}

/// The result of a `get`.
#[derive(Debug)]
pub enum Fetched<B> {
    /// No object exists under the key.
    Missing,
    /// The object still has the entity tag the caller already holds; no body was sent, only
    /// its custom metadata.
    NotModified {
        /// The object's custom metadata.
        metadata: HashMap<String, String>,
    },
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

/// What `head` returns: an object's version, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// The store's entity tag.
    pub etag: String,
    /// The object's custom metadata.
    pub metadata: HashMap<String, String>,
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

/// Whether a failed operation is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store refused because of the request rate (R2: about one write per second per
    /// key; HTTP 429). Nothing was written.
    RateLimited,
    /// A transient failure (HTTP 5xx, network): repeating may succeed.
    Transient,
    /// Anything else (permissions, bad request, runtime): repeating will not help.
    Permanent,
    /// Not the store's failure: the isolate's memory admission
    /// ([`crate::admission`]) could not free the memory this download needs. Nothing was
    /// read into wasm memory; the request is answered 503 `memory_busy`.
    MemoryBusy {
        /// Bytes the download needed.
        needed_bytes: u64,
        /// Bytes other requests held.
        in_use_bytes: u64,
        /// The admission capacity.
        capacity_bytes: u64,
    },
}

/// A store operation that failed for a reason other than a missing object or a failed condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// The operation that failed (`get`, `put`, ...).
    pub operation: &'static str,
    /// Whether repeating it may help.
    pub kind: StoreErrorKind,
    /// What the backend reported; for logs only, never sent to clients.
    pub detail: String,
    /// Set by the save step when a `put` failed in flight and reading the object back could
    /// not establish whether it was stored.
    pub write_outcome_unknown: bool,
}

impl StoreError {
    /// A failure of `operation` of the given kind.
    #[must_use]
    pub fn new(operation: &'static str, kind: StoreErrorKind, detail: impl Into<String>) -> Self {
        Self {
            operation,
            kind,
            detail: detail.into(),
            write_outcome_unknown: false,
        }
    }

    /// Whether repeating the operation may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::RateLimited | StoreErrorKind::Transient
        )
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "store {} failed ({:?}): {}",
            self.operation, self.kind, self.detail
        )
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

    /// The entity tag and custom metadata of the object under `key`, without its body.
    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StoreError>;

    /// Writes `bytes` under `key` with `metadata`, only if `condition` holds.
    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError>;

    /// Deletes the object under `key`; deleting a missing object succeeds (R2 has no
    /// conditional delete, so callers only delete what nothing can reference any more).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError>;
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Its size.
    pub size: u64,
    /// When it was written, epoch milliseconds.
    pub uploaded_ms: u64,
}

impl Body for Rc<[u8]> {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    async fn read_into(self, dst: &mut [u8]) -> Result<(), StoreError> {
        dst.copy_from_slice(&self);
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct MemoryObject {
    bytes: Rc<[u8]>,
    etag: String,
    metadata: HashMap<String, String>,
    uploaded_ms: u64,
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
    /// What `list` reports as upload times (tests move it to age objects).
    now_ms: RefCell<u64>,
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
                uploaded_ms: *self.now_ms.borrow(),
            },
        );
        etag
    }

    /// Sets the time stamped on objects written from now on.
    pub fn set_now_ms(&self, now_ms: u64) {
        *self.now_ms.borrow_mut() = now_ms;
    }

    /// Every key, sorted.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.objects.borrow().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Removes `key`, as an outside actor would.
    pub fn remove(&self, key: &str) {
        self.objects.borrow_mut().remove(key);
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
            return Ok(Fetched::NotModified {
                metadata: o.metadata.clone(),
            });
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

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StoreError> {
        Ok(self.objects.borrow().get(key).map(|o| ObjectHead {
            etag: o.etag.clone(),
            metadata: o.metadata.clone(),
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

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.objects.borrow_mut().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut listed: Vec<Listed> = self
            .objects
            .borrow()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| Listed {
                key: k.clone(),
                size: o.bytes.len() as u64,
                uploaded_ms: o.uploaded_ms,
            })
            .collect();
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }
}

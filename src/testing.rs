//! Shared test support: a seeded generator, a stepping clock, stores that race or fail on
//! purpose, and helpers that read databases back. Used by the unit tests (host and wasm32),
//! `tests/`, `benches/` and the worker's store self-test; none of it serves real requests.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use rusqlite::Connection;

use crate::clock::Clock;
use crate::sqlite;
use crate::store::{
    Body, Fetched, Listed, MemoryStore, ObjectHead, ObjectStore, PutCondition, PutOutcome,
    StoreError, StoreErrorKind,
};

/// SplitMix64: small, deterministic and good enough for tests and fixtures; a failing case is
/// reproduced from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index in `0..n` (`n` > 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next_u64() >> 24) as u8).collect()
    }
}

/// A test clock: every reading is `step_ms` after the previous one; `sleep` advances it.
/// Step 0 with `advances: false` is a deployed Worker's frozen clock; a large step makes every
/// phase slow.
#[derive(Debug)]
pub struct StepClock {
    now: Cell<f64>,
    step_ms: f64,
    advances: bool,
    slept_ms: Cell<u64>,
}

impl StepClock {
    /// A clock that moves `step_ms` per reading and says it advances during computation.
    #[must_use]
    pub fn stepping(step_ms: f64) -> Self {
        Self {
            now: Cell::new(0.0),
            step_ms,
            advances: true,
            slept_ms: Cell::new(0),
        }
    }

    /// A deployed Worker's clock: it never moves during computation.
    #[must_use]
    pub fn frozen() -> Self {
        Self {
            advances: false,
            ..Self::stepping(0.0)
        }
    }

    /// Every reading 400 ms after the last: every phase is critical.
    #[must_use]
    pub fn slow() -> Self {
        Self::stepping(400.0)
    }

    /// Total time waited in `sleep`.
    #[must_use]
    pub fn slept_ms(&self) -> u64 {
        self.slept_ms.get()
    }
}

impl Clock for StepClock {
    fn now_ms(&self) -> f64 {
        self.now.set(self.now.get() + self.step_ms);
        self.now.get()
    }
    fn epoch_ms(&self) -> u64 {
        1_700_000_000_000 + self.now.get() as u64
    }
    fn resolution_ms(&self) -> f64 {
        1.0
    }
    fn source(&self) -> &'static str {
        "test"
    }
    fn advances_during_cpu(&self) -> Option<bool> {
        Some(self.advances)
    }
    async fn sleep(&self, ms: u32) {
        self.slept_ms.set(self.slept_ms.get() + u64::from(ms));
        self.now.set(self.now.get() + f64::from(ms));
    }
}

/// A store where another writer replaces the database object (`database.sqlite`) right
/// after each of our first `races` reads of it, so every save that follows them meets a
/// changed object.
#[derive(Debug)]
pub struct RacingStore {
    /// The store underneath.
    pub inner: MemoryStore,
    rival: Vec<u8>,
    races_left: Cell<u32>,
}

impl RacingStore {
    /// Races `races` times, each time storing `rival` as the other writer's version.
    #[must_use]
    pub fn new(inner: MemoryStore, rival: Vec<u8>, races: u32) -> Self {
        Self {
            inner,
            rival,
            races_left: Cell::new(races),
        }
    }
}

impl ObjectStore for RacingStore {
    type Body = Rc<[u8]>;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<Rc<[u8]>>, StoreError> {
        let got = self.inner.get(key, max_bytes, if_none_match).await;
        if self.races_left.get() > 0 && key.ends_with("/database.sqlite") {
            self.races_left.set(self.races_left.get() - 1);
            self.inner.insert(key, &self.rival, &[]);
        }
        got
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StoreError> {
        self.inner.head(key).await
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError> {
        self.inner.put(key, bytes, metadata, condition).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.inner.list(prefix).await
    }
}

/// One planned failure of a [`FaultyStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call succeeds.
    None,
    /// The call fails with 429 (rate limited) before touching the object.
    RateLimited,
    /// The call fails with a 5xx before touching the object.
    Unavailable,
    /// A `put` stores its bytes, then the answer is lost (5xx); on other calls, as
    /// `Unavailable`.
    LostAnswer,
    /// The call fails permanently (permissions, bad binding).
    Permanent,
}

/// A [`MemoryStore`] that fails calls as a plan says: the n-th call of each kind takes the
/// n-th planned fault of that kind, and calls past the plan succeed.
#[derive(Debug, Default)]
pub struct FaultyStore {
    /// The store underneath.
    pub inner: MemoryStore,
    gets: RefCell<VecDeque<Fault>>,
    heads: RefCell<VecDeque<Fault>>,
    puts: RefCell<VecDeque<Fault>>,
    deletes: RefCell<VecDeque<Fault>>,
    /// Calls left before the worker "stops": from then on every call fails (and a call that
    /// would change the store changes nothing), as if the isolate died there.
    stop_after: Cell<Option<u32>>,
}

impl FaultyStore {
    /// Adds a plan for `delete`.
    #[must_use]
    pub fn with_deletes(self, deletes: &[Fault]) -> Self {
        *self.deletes.borrow_mut() = deletes.iter().copied().collect();
        self
    }

    /// The worker stops after `calls` more store calls (of any kind): every later call fails
    /// without effect. `None` lifts it (a new worker takes over).
    pub fn stop_after(&self, calls: Option<u32>) {
        self.stop_after.set(calls);
    }

    /// Calls left before the worker stops (`None`: it never does).
    #[must_use]
    pub fn calls_left(&self) -> Option<u32> {
        self.stop_after.get()
    }

    /// Whether the worker has stopped.
    #[must_use]
    pub fn stopped(&self) -> bool {
        self.stop_after.get() == Some(0)
    }

    fn step(&self, operation: &'static str) -> Result<(), StoreError> {
        match self.stop_after.get() {
            Some(0) => Err(StoreError::new(
                operation,
                StoreErrorKind::Permanent,
                "the worker stopped here",
            )),
            Some(n) => {
                self.stop_after.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Wraps `inner` with the given plans for `get`, `head` and `put`.
    #[must_use]
    pub fn new(inner: MemoryStore, gets: &[Fault], heads: &[Fault], puts: &[Fault]) -> Self {
        Self {
            inner,
            gets: RefCell::new(gets.iter().copied().collect()),
            heads: RefCell::new(heads.iter().copied().collect()),
            puts: RefCell::new(puts.iter().copied().collect()),
            deletes: RefCell::default(),
            stop_after: Cell::new(None),
        }
    }
}

impl FaultyStore {
    /// Replaces the plans, for the next request.
    pub fn replan(&self, gets: &[Fault], heads: &[Fault], puts: &[Fault]) {
        *self.gets.borrow_mut() = gets.iter().copied().collect();
        *self.heads.borrow_mut() = heads.iter().copied().collect();
        *self.puts.borrow_mut() = puts.iter().copied().collect();
    }
}

fn planned(plan: &RefCell<VecDeque<Fault>>) -> Fault {
    plan.borrow_mut().pop_front().unwrap_or(Fault::None)
}

fn fault_error(operation: &'static str, fault: Fault) -> StoreError {
    let kind = match fault {
        Fault::RateLimited => StoreErrorKind::RateLimited,
        Fault::Permanent => StoreErrorKind::Permanent,
        _ => StoreErrorKind::Transient,
    };
    StoreError::new(operation, kind, format!("injected {fault:?}"))
}

impl ObjectStore for FaultyStore {
    type Body = Rc<[u8]>;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<Rc<[u8]>>, StoreError> {
        self.step("get")?;
        match planned(&self.gets) {
            Fault::None => self.inner.get(key, max_bytes, if_none_match).await,
            fault => Err(fault_error("get", fault)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StoreError> {
        self.step("head")?;
        match planned(&self.heads) {
            Fault::None => self.inner.head(key).await,
            fault => Err(fault_error("head", fault)),
        }
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError> {
        self.step("put")?;
        match planned(&self.puts) {
            Fault::None => self.inner.put(key, bytes, metadata, condition).await,
            Fault::LostAnswer => {
                self.inner.put(key, bytes, metadata, condition).await?;
                Err(fault_error("put", Fault::LostAnswer))
            }
            fault => Err(fault_error("put", fault)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.step("delete")?;
        match planned(&self.deletes) {
            Fault::None => self.inner.delete(key).await,
            Fault::LostAnswer => {
                self.inner.delete(key).await?;
                Err(fault_error("delete", Fault::LostAnswer))
            }
            fault => Err(fault_error("delete", fault)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.step("list")?;
        self.inner.list(prefix).await
    }
}

/// Opens database bytes with SQLite.
///
/// # Panics
/// If the bytes are not a loadable database.
#[must_use]
pub fn open(bytes: &[u8]) -> Connection {
    sqlite::load(bytes)
        .expect("bytes are a loadable database")
        .conn
}

/// Each table's name and row count, in `sqlite_master` order.
///
/// # Panics
/// If the bytes are not a loadable database.
#[must_use]
pub fn row_counts(bytes: &[u8]) -> Vec<(String, i64)> {
    let conn = open(bytes);
    sqlite::list_tables(&conn)
        .expect("list tables")
        .into_iter()
        .map(|t| {
            let n = conn
                .query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))
                .expect("count rows");
            (t, n)
        })
        .collect()
}

/// Loads database bytes, runs `sql` on them and returns the exported image: what another
/// writer would upload.
///
/// # Panics
/// If the bytes do not load or the SQL fails.
#[must_use]
pub fn apply_sql(bytes: &[u8], sql: &str) -> Vec<u8> {
    let mut conn = open(bytes);
    conn.execute_batch(sql).expect("apply SQL");
    sqlite::export(&mut conn).expect("export").to_vec()
}

/// The [`ObjectStore`] failure contract, checked against any backend: the memory store in
/// unit tests (host and wasm32), local R2 through the worker's self-test route end to end.
/// Uses keys under `prefix`, which must not exist yet.
///
/// # Errors
/// The first way the backend breaks the contract.
pub async fn store_contract<S: ObjectStore>(store: &S, prefix: &str) -> Result<(), String> {
    let key = format!("{prefix}/contract-object");
    let fail = |what: &str| Err(format!("{what} (key {key})"));
    let err = |e: StoreError| format!("unexpected store error: {e}");

    if !matches!(
        store.get(&key, u64::MAX, None).await.map_err(err)?,
        Fetched::Missing
    ) {
        return fail("get of a missing key must be Missing");
    }
    if store.head(&key).await.map_err(err)?.is_some() {
        return fail("head of a missing key must be None");
    }
    let PutOutcome::Stored { etag: first } = store
        .put(&key, b"one", &[], &PutCondition::IfAbsent)
        .await
        .map_err(err)?
    else {
        return fail("create-only put on a missing key must store");
    };
    if store
        .put(&key, b"two", &[], &PutCondition::IfAbsent)
        .await
        .map_err(err)?
        != PutOutcome::ConditionFailed
    {
        return fail("create-only put on an existing key must fail its condition");
    }
    if store
        .put(
            &key,
            b"two",
            &[],
            &PutCondition::IfMatch("stale-etag".into()),
        )
        .await
        .map_err(err)?
        != PutOutcome::ConditionFailed
    {
        return fail("put with a stale etag must fail its condition");
    }
    let Fetched::Found(got) = store.get(&key, u64::MAX, None).await.map_err(err)? else {
        return fail("get of an existing key must find it");
    };
    if got.body.into_vec().await.map_err(err)? != b"one" || got.etag != first {
        return fail("failed conditional puts must leave the object unchanged");
    }
    let PutOutcome::Stored { etag: second } = store
        .put(
            &key,
            b"two",
            &[("k", "v".into())],
            &PutCondition::IfMatch(first.clone()),
        )
        .await
        .map_err(err)?
    else {
        return fail("put matching the current etag must store");
    };
    if second == first {
        return fail("new content must get a new etag");
    }
    let Fetched::Found(got) = store.get(&key, 3, Some(&first)).await.map_err(err)? else {
        return fail("get at exactly the size limit, with an outdated etag, must return the body");
    };
    let (etag, metadata) = (got.etag.clone(), got.metadata.clone());
    if got.body.into_vec().await.map_err(err)? != b"two"
        || etag != second
        || metadata.get("k").map(String::as_str) != Some("v")
    {
        return fail("get must return the latest body, etag and metadata");
    }
    if !matches!(
        store.get(&key, 3, Some(&second)).await.map_err(err)?,
        Fetched::NotModified { .. }
    ) {
        return fail("get with the current etag must be NotModified");
    }
    if !matches!(
        store.get(&key, 2, None).await.map_err(err)?,
        Fetched::TooLarge { size_bytes: 3 }
    ) {
        return fail("get over the size limit must be TooLarge with the object's size");
    }
    match store.head(&key).await.map_err(err)? {
        Some(head)
            if head.etag == second && head.metadata.get("k").map(String::as_str) == Some("v") =>
        {
            Ok(())
        }
        other => Err(format!(
            "head must return the etag and metadata, got {other:?}"
        )),
    }
}

/// A body that counts how often its bytes are copied out.
#[derive(Debug)]
pub struct CountedBody {
    bytes: Rc<[u8]>,
    copies: Rc<Cell<u32>>,
}

impl Body for CountedBody {
    fn len(&self) -> usize {
        self.bytes.len()
    }

    async fn read_into(self, dst: &mut [u8]) -> Result<(), StoreError> {
        self.copies.set(self.copies.get() + 1);
        dst.copy_from_slice(&self.bytes);
        Ok(())
    }
}

/// A [`MemoryStore`] whose bodies count their copies, so a test can tell whether a body was
/// read at all.
#[derive(Debug, Default)]
pub struct CountingStore {
    /// The store underneath.
    pub inner: MemoryStore,
    copies: Rc<Cell<u32>>,
    bodies: Cell<u32>,
    last_put: Cell<Option<(usize, usize)>>,
}

impl CountingStore {
    /// How many times any body's bytes were copied out.
    #[must_use]
    pub fn body_copies(&self) -> u32 {
        self.copies.get()
    }

    /// How many `get`s returned a body.
    #[must_use]
    pub fn bodies_sent(&self) -> u32 {
        self.bodies.get()
    }

    /// Address and length of the bytes the last `put` was handed: a test compares them with
    /// SQLite's own image to prove the worker made no copy of its own.
    #[must_use]
    pub fn last_put(&self) -> Option<(usize, usize)> {
        self.last_put.get()
    }
}

impl ObjectStore for CountingStore {
    type Body = CountedBody;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<CountedBody>, StoreError> {
        Ok(match self.inner.get(key, max_bytes, if_none_match).await? {
            Fetched::Found(o) => {
                self.bodies.set(self.bodies.get() + 1);
                Fetched::Found(crate::store::StoredObject {
                    etag: o.etag,
                    metadata: o.metadata,
                    body: CountedBody {
                        bytes: o.body,
                        copies: Rc::clone(&self.copies),
                    },
                })
            }
            Fetched::Missing => Fetched::Missing,
            Fetched::NotModified { metadata } => Fetched::NotModified { metadata },
            Fetched::TooLarge { size_bytes } => Fetched::TooLarge { size_bytes },
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StoreError> {
        self.inner.head(key).await
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError> {
        self.last_put
            .set(Some((bytes.as_ptr() as usize, bytes.len())));
        self.inner.put(key, bytes, metadata, condition).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.inner.list(prefix).await
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// The in-memory backend honours the failure contract the pipeline relies on (the same
    /// contract body runs against local R2 in the end-to-end suite).
    #[test]
    fn memory_store_contract() {
        let store = MemoryStore::new();
        pollster::block_on(store_contract(&store, "contract")).unwrap();
    }

    /// The seeded generator is deterministic: a seed replays its sequence.
    #[test]
    fn rng_replays() {
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        assert_eq!(a.bytes(32), b.bytes(32));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}

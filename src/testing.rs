//! Shared test support: a seeded generator, a stepping clock, one store whose calls pass
//! through hooks (that count, fail, park or act as another writer), and helpers that read
//! databases back. Compiled for the unit tests (host and wasm32) and, through the `testing` feature, for
//! `tests/`, `benches/` and `examples/`; the worker is built without it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use rusqlite::Connection;
use rusqlite::types::Value;

use crate::clock::Clock;
use crate::exec::{Limits, Statement};
use crate::request::UserId;
use crate::sqlite;
use crate::storage::{
    Body, Fetched, Listed, Manifest, MemoryStore, ObjectHead, ObjectStore, PutCondition,
    PutOutcome, StoreError, StoreErrorKind, StoredObject,
};
use crate::work::Transaction;

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

    /// `n` picks from `from` (not empty), each equally likely: a seeded fault plan.
    pub fn picks<T: Copy>(&mut self, from: &[T], n: usize) -> Vec<T> {
        (0..n).map(|_| from[self.index(from.len())]).collect()
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
    yields: bool,
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
            yields: false,
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

    /// A clock that only moves in `sleep`, which first yields once to the other futures being
    /// polled (as a timer does): concurrent requests driven on one thread see each other wait.
    #[must_use]
    pub fn yielding() -> Self {
        Self {
            yields: true,
            ..Self::stepping(0.0)
        }
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
        if self.yields {
            YieldOnce(false).await;
        }
        self.slept_ms.set(self.slept_ms.get() + u64::from(ms));
        self.now.set(self.now.get() + f64::from(ms));
    }
}

/// Pending once (waking itself), then ready: a turn for the other futures.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// The kinds of store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// `get`.
    Get,
    /// `head`.
    Head,
    /// `put`.
    Put,
    /// `delete`.
    Delete,
    /// `list`.
    List,
}

impl Operation {
    /// Every kind, in this order.
    pub const ALL: [Self; 5] = [Self::Get, Self::Head, Self::Put, Self::Delete, Self::List];

    /// The name a [`StoreError`] carries.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Head => "head",
            Self::Put => "put",
            Self::Delete => "delete",
            Self::List => "list",
        }
    }
}

/// One store call, as a [`Hook`] sees it.
#[derive(Debug, Clone, Copy)]
pub enum Call<'c> {
    /// A `get` of `key`.
    Get {
        /// The key read.
        key: &'c str,
    },
    /// A `head` of `key`.
    Head {
        /// The key read.
        key: &'c str,
    },
    /// A `put` of `bytes` under `key`.
    Put {
        /// The key written.
        key: &'c str,
        /// The bytes handed to the store (the caller's own buffer).
        bytes: &'c [u8],
        /// The custom metadata.
        metadata: &'c [(&'c str, String)],
        /// The put's condition.
        condition: &'c PutCondition,
    },
    /// A `delete` of `key`.
    Delete {
        /// The key deleted.
        key: &'c str,
    },
    /// A `list` of `prefix`.
    List {
        /// The prefix listed.
        prefix: &'c str,
    },
}

impl Call<'_> {
    /// Which kind of call this is.
    #[must_use]
    pub fn operation(&self) -> Operation {
        match self {
            Self::Get { .. } => Operation::Get,
            Self::Head { .. } => Operation::Head,
            Self::Put { .. } => Operation::Put,
            Self::Delete { .. } => Operation::Delete,
            Self::List { .. } => Operation::List,
        }
    }

    /// The key (or, for `list`, the prefix) the call names.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Get { key }
            | Self::Head { key }
            | Self::Put { key, .. }
            | Self::Delete { key } => key,
            Self::List { prefix } => prefix,
        }
    }

    /// A `put`'s metadata value under `name`.
    #[must_use]
    pub fn metadata(&self, name: &str) -> Option<&str> {
        match self {
            Self::Put { metadata, .. } => metadata
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// What a hook decides before a call reaches the store.
#[derive(Debug)]
pub enum Action {
    /// Go on (to the next hook, then the store).
    Proceed,
    /// Fail the call with this error; the store is not touched.
    Fail(StoreError),
    /// Let the call reach the store, then fail it with this error: the store acted but the
    /// answer was lost.
    LoseAnswer(StoreError),
    /// Wait until the gate opens, then go on: lets a test order two racing steps' calls.
    Park(Gate),
}

/// How the store answered a call that reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `get` or `head` found the object.
    Found,
    /// `get` or `head` found nothing.
    Missing,
    /// `get` matched the caller's etag: no body.
    NotModified,
    /// `get` refused an object over the caller's limit.
    TooLarge,
    /// `put` stored its bytes.
    Stored,
    /// `put`'s condition did not hold: nothing was written.
    ConditionFailed,
    /// `delete` or `list` ran.
    Done,
}

/// Code that runs around every call of a [`HookStore`]: it may count, fail, park the call or
/// change the store underneath (another writer acting in between).
pub trait Hook {
    /// Runs before the call reaches the store; the first hook that fails the call ends it.
    fn before(&self, _call: &Call<'_>, _store: &MemoryStore) -> Action {
        Action::Proceed
    }

    /// Runs after the store answered a call that reached it (also when the answer is then
    /// lost), not after a call a hook failed.
    fn after(&self, _call: &Call<'_>, _answer: Answer, _store: &MemoryStore) {}
}

impl<H: Hook + ?Sized> Hook for &H {
    fn before(&self, call: &Call<'_>, store: &MemoryStore) -> Action {
        (**self).before(call, store)
    }
    fn after(&self, call: &Call<'_>, answer: Answer, store: &MemoryStore) {
        (**self).after(call, answer, store);
    }
}

impl<H: Hook + ?Sized> Hook for Rc<H> {
    fn before(&self, call: &Call<'_>, store: &MemoryStore) -> Action {
        (**self).before(call, store)
    }
    fn after(&self, call: &Call<'_>, answer: Answer, store: &MemoryStore) {
        (**self).after(call, answer, store);
    }
}

/// A closure run before every call.
pub struct Before<F>(pub F);

impl<F: Fn(&Call<'_>, &MemoryStore) -> Action> Hook for Before<F> {
    fn before(&self, call: &Call<'_>, store: &MemoryStore) -> Action {
        (self.0)(call, store)
    }
}

/// A closure run after every call that reached the store.
pub struct After<F>(pub F);

impl<F: Fn(&Call<'_>, Answer, &MemoryStore)> Hook for After<F> {
    fn after(&self, call: &Call<'_>, answer: Answer, store: &MemoryStore) {
        (self.0)(call, answer, store);
    }
}

/// A [`MemoryStore`] whose every call passes through hooks, in the order they were added.
/// Its bodies count their copies, so a test can tell whether a body was read at all.
pub struct HookStore<'h> {
    /// The store underneath; hooks see it, tests seed and inspect it.
    pub inner: MemoryStore,
    hooks: Vec<Box<dyn Hook + 'h>>,
    copies: Rc<Cell<u32>>,
    bodies: Cell<u32>,
}

impl std::fmt::Debug for HookStore<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookStore")
            .field("inner", &self.inner)
            .field("hooks", &self.hooks.len())
            .finish_non_exhaustive()
    }
}

impl Default for HookStore<'_> {
    fn default() -> Self {
        Self::new(MemoryStore::new())
    }
}

impl<'h> HookStore<'h> {
    /// `inner` with no hooks yet.
    #[must_use]
    pub fn new(inner: MemoryStore) -> Self {
        Self {
            inner,
            hooks: Vec::new(),
            copies: Rc::default(),
            bodies: Cell::new(0),
        }
    }

    /// Adds `hook` after the ones already there.
    #[must_use]
    pub fn with(mut self, hook: impl Hook + 'h) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

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

    /// Runs the hooks' `before`: `Err` ends the call, `Ok(Some(e))` loses its answer.
    async fn before(&self, call: &Call<'_>) -> Result<Option<StoreError>, StoreError> {
        for hook in &self.hooks {
            match hook.before(call, &self.inner) {
                Action::Proceed => {}
                Action::Fail(e) => return Err(e),
                Action::LoseAnswer(e) => return Ok(Some(e)),
                Action::Park(gate) => gate.wait().await,
            }
        }
        Ok(None)
    }

    fn after<T>(
        &self,
        call: &Call<'_>,
        answer: Answer,
        lost: Option<StoreError>,
        result: T,
    ) -> Result<T, StoreError> {
        for hook in &self.hooks {
            hook.after(call, answer, &self.inner);
        }
        lost.map_or(Ok(result), Err)
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

impl ObjectStore for HookStore<'_> {
    type Body = CountedBody;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<CountedBody>, StoreError> {
        let call = Call::Get { key };
        let lost = self.before(&call).await?;
        let (answer, fetched) = match self.inner.get(key, max_bytes, if_none_match).await? {
            Fetched::Found(o) => {
                self.bodies.set(self.bodies.get() + 1);
                let body = CountedBody {
                    bytes: o.body,
                    copies: Rc::clone(&self.copies),
                };
                let found = StoredObject {
                    etag: o.etag,
                    metadata: o.metadata,
                    body,
                };
                (Answer::Found, Fetched::Found(found))
            }
            Fetched::Missing => (Answer::Missing, Fetched::Missing),
            Fetched::NotModified { metadata } => {
                (Answer::NotModified, Fetched::NotModified { metadata })
            }
            Fetched::TooLarge { size_bytes } => {
                (Answer::TooLarge, Fetched::TooLarge { size_bytes })
            }
        };
        self.after(&call, answer, lost, fetched)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StoreError> {
        let call = Call::Head { key };
        let lost = self.before(&call).await?;
        let head = self.inner.head(key).await?;
        let answer = if head.is_some() {
            Answer::Found
        } else {
            Answer::Missing
        };
        self.after(&call, answer, lost, head)
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError> {
        let call = Call::Put {
            key,
            bytes,
            metadata,
            condition,
        };
        let lost = self.before(&call).await?;
        let outcome = self.inner.put(key, bytes, metadata, condition).await?;
        let answer = match outcome {
            PutOutcome::Stored { .. } => Answer::Stored,
            PutOutcome::ConditionFailed => Answer::ConditionFailed,
        };
        self.after(&call, answer, lost, outcome)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let call = Call::Delete { key };
        let lost = self.before(&call).await?;
        self.inner.delete(key).await?;
        self.after(&call, Answer::Done, lost, ())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let call = Call::List { prefix };
        let lost = self.before(&call).await?;
        let listed = self.inner.list(prefix).await?;
        self.after(&call, Answer::Done, lost, listed)
    }
}

/// A gate a parked call waits at until the test opens it. Clones share one gate.
#[derive(Debug, Clone, Default)]
pub struct Gate(Rc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    open: Cell<bool>,
    waiting: Cell<u32>,
    wakers: RefCell<Vec<Waker>>,
}

impl Gate {
    /// A closed gate.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the gate: every call parked at it (and every later one) goes on.
    pub fn open(&self) {
        self.0.open.set(true);
        for waker in self.0.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// How many calls are parked at the gate now.
    #[must_use]
    pub fn waiting(&self) -> u32 {
        self.0.waiting.get()
    }

    /// Resolves once the gate is open.
    pub async fn wait(&self) {
        let mut parked = false;
        std::future::poll_fn(|cx| {
            if self.0.open.get() {
                if parked {
                    self.0.waiting.set(self.0.waiting.get() - 1);
                }
                return Poll::Ready(());
            }
            if !parked {
                parked = true;
                self.0.waiting.set(self.0.waiting.get() + 1);
            }
            self.0.wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

/// Polls `future` once: a test steps two racing futures by hand, in the order it chooses,
/// while [`Gate`]s hold their store calls.
pub fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Counts each kind of call that reaches the hook (failed ones included, when it comes
/// before the hook that fails them).
#[derive(Debug, Default)]
pub struct Calls {
    counts: [Cell<u64>; 5],
}

impl Calls {
    /// Calls of kind `op` so far.
    #[must_use]
    pub fn count(&self, op: Operation) -> u64 {
        self.counts[op as usize].get()
    }

    /// Every kind's count, in [`Operation::ALL`] order, and starts again from zero.
    pub fn take(&self) -> [u64; 5] {
        Operation::ALL.map(|op| self.counts[op as usize].replace(0))
    }
}

impl Hook for Calls {
    fn before(&self, call: &Call<'_>, _store: &MemoryStore) -> Action {
        let count = &self.counts[call.operation() as usize];
        count.set(count.get() + 1);
        Action::Proceed
    }
}

/// Parks the calls `picks` chooses while it is shut: [`Valve::open`] lets every parked call
/// through, and shutting it again parks the later ones (a commit held in flight, released,
/// then the next one held). Counts the calls it picked, parked or not.
pub struct Valve<F> {
    picks: F,
    shut: RefCell<Option<Gate>>,
    picked: Cell<u32>,
}

impl<F: Fn(&Call<'_>) -> bool> Valve<F> {
    /// An open valve over the calls `picks` chooses.
    pub fn new(picks: F) -> Self {
        Self {
            picks,
            shut: RefCell::new(None),
            picked: Cell::new(0),
        }
    }

    /// Parks the picked calls that come from now on, until [`Valve::open`].
    pub fn shut(&self) {
        self.shut.borrow_mut().get_or_insert_with(Gate::new);
    }

    /// Lets every parked call go on; later ones pass until the valve is shut again.
    pub fn open(&self) {
        if let Some(gate) = self.shut.borrow_mut().take() {
            gate.open();
        }
    }

    /// How many calls it picked so far.
    pub fn picked(&self) -> u32 {
        self.picked.get()
    }
}

impl<F: Fn(&Call<'_>) -> bool> Hook for Valve<F> {
    fn before(&self, call: &Call<'_>, _store: &MemoryStore) -> Action {
        if !(self.picks)(call) {
            return Action::Proceed;
        }
        self.picked.set(self.picked.get() + 1);
        match &*self.shut.borrow() {
            Some(gate) => Action::Park(gate.clone()),
            None => Action::Proceed,
        }
    }
}

/// Runs `then` on the store right after each of the first `times` gets of `key` that find
/// it: another writer acting between a read and the write that follows it.
pub struct AfterReads<F> {
    key: String,
    left: Cell<u32>,
    then: F,
}

impl<F: Fn(&MemoryStore)> AfterReads<F> {
    /// `then` after each of the first `times` reads of `key`.
    pub fn new(key: &str, times: u32, then: F) -> Self {
        Self {
            key: key.to_owned(),
            left: Cell::new(times),
            then,
        }
    }

    /// How many more reads will be followed by `then`.
    pub fn left(&self) -> u32 {
        self.left.get()
    }
}

impl<F: Fn(&MemoryStore)> Hook for AfterReads<F> {
    fn after(&self, call: &Call<'_>, answer: Answer, store: &MemoryStore) {
        if let (Call::Get { key }, Answer::Found) = (call, answer)
            && *key == self.key
            && self.left.get() > 0
        {
            self.left.set(self.left.get() - 1);
            (self.then)(store);
        }
    }
}

/// One planned failure of a [`FaultPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The call succeeds.
    None,
    /// The call fails with 429 (rate limited) before touching the object.
    RateLimited,
    /// The call fails with a 5xx before touching the object.
    Unavailable,
    /// A `put` or `delete` acts, then the answer is lost (5xx); on a read, as `Unavailable`.
    LostAnswer,
    /// The call fails permanently (permissions, bad binding).
    Permanent,
}

/// Fails calls as a plan says: the n-th call of each kind takes the n-th planned fault of that
/// kind, and calls past the plan succeed. It can also stop the worker (every call from some
/// point on fails and changes nothing), and it counts every fault it injected, so a test can
/// tell its plan actually fired.
#[derive(Debug, Default)]
pub struct FaultPlan {
    plans: [RefCell<VecDeque<Fault>>; 5],
    fired: RefCell<BTreeMap<(Operation, Fault), u32>>,
    stop_after: Cell<Option<u32>>,
    stops: Cell<u32>,
}

impl FaultPlan {
    /// A plan that fails nothing yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Plans `faults` for the next calls of kind `op` (builder form of [`FaultPlan::set`]).
    #[must_use]
    pub fn with(self, op: Operation, faults: &[Fault]) -> Self {
        self.set(op, faults);
        self
    }

    /// Replaces the plan for calls of kind `op`.
    pub fn set(&self, op: Operation, faults: &[Fault]) {
        *self.plans[op as usize].borrow_mut() = faults.iter().copied().collect();
    }

    /// Drops every plan that has not fired yet.
    pub fn clear(&self) {
        for op in Operation::ALL {
            self.set(op, &[]);
        }
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

    /// How many calls failed because the worker had stopped.
    #[must_use]
    pub fn stops(&self) -> u32 {
        self.stops.get()
    }

    /// How many times `fault` was injected into calls of kind `op`.
    #[must_use]
    pub fn fired(&self, op: Operation, fault: Fault) -> u32 {
        self.fired.borrow().get(&(op, fault)).copied().unwrap_or(0)
    }

    /// How many faults were injected in all (not counting stops).
    #[must_use]
    pub fn fired_total(&self) -> u32 {
        self.fired.borrow().values().sum()
    }
}

impl Hook for FaultPlan {
    fn before(&self, call: &Call<'_>, _store: &MemoryStore) -> Action {
        let op = call.operation();
        match self.stop_after.get() {
            Some(0) => {
                self.stops.set(self.stops.get() + 1);
                return Action::Fail(StoreError::new(
                    op.as_str(),
                    StoreErrorKind::Permanent,
                    "the worker stopped here",
                ));
            }
            Some(n) => self.stop_after.set(Some(n - 1)),
            None => {}
        }
        let fault = self.plans[op as usize]
            .borrow_mut()
            .pop_front()
            .unwrap_or(Fault::None);
        if fault == Fault::None {
            return Action::Proceed;
        }
        *self.fired.borrow_mut().entry((op, fault)).or_default() += 1;
        let kind = match fault {
            Fault::RateLimited => StoreErrorKind::RateLimited,
            Fault::Permanent => StoreErrorKind::Permanent,
            _ => StoreErrorKind::Transient,
        };
        let error = StoreError::new(op.as_str(), kind, format!("injected {fault:?}"));
        match (fault, op) {
            (Fault::LostAnswer, Operation::Put | Operation::Delete) => Action::LoseAnswer(error),
            _ => Action::Fail(error),
        }
    }
}

/// Faults fired over many seeded runs, so a suite can show its plans reached every kind of
/// call instead of trusting that they did.
#[derive(Debug, Default)]
pub struct FaultTally(BTreeMap<(Operation, Fault), u32>);

impl FaultTally {
    /// Adds what `plan` fired; `run` names the run (a seed) in the panic.
    ///
    /// # Panics
    /// If `plan` fired nothing: the run tested no fault at all.
    pub fn add(&mut self, plan: &FaultPlan, run: &str) {
        assert!(plan.fired_total() > 0, "{run}: no fault fired");
        for (key, n) in plan.fired.borrow().iter() {
            *self.0.entry(*key).or_default() += n;
        }
    }

    /// Checks that each of `faults` fired on each of `operations` at least once.
    ///
    /// # Panics
    /// Naming the first pair that never fired.
    pub fn assert_reached(&self, operations: &[Operation], faults: &[Fault]) {
        for op in operations {
            for fault in faults {
                assert!(
                    self.0.get(&(*op, *fault)).copied().unwrap_or(0) > 0,
                    "{fault:?} never fired on {op:?}: {self:?}"
                );
            }
        }
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

/// User `id` (a valid id; tests name their users).
///
/// # Panics
/// If `id` is not a valid user id.
#[must_use]
pub fn user(id: &str) -> UserId {
    UserId::parse(Some(id)).expect("a valid user id")
}

/// A `/query` transaction of `statements` (SQL and positional arguments), default limits.
#[must_use]
pub fn transaction(statements: &[(&str, Vec<Value>)]) -> Transaction {
    Transaction {
        statements: statements
            .iter()
            .map(|(sql, args)| Statement {
                args: args.clone(),
                ..Statement::new(*sql)
            })
            .collect(),
        limits: Limits::default(),
    }
}

/// One stored object as a test compares it: key, bytes, sorted custom metadata.
pub type Object = (String, Vec<u8>, Vec<(String, String)>);

/// Every object in the store (key order): what "nothing was written" compares.
///
/// # Panics
/// Never for a key the store just listed.
#[must_use]
pub fn snapshot(store: &MemoryStore) -> Vec<Object> {
    store
        .keys()
        .into_iter()
        .map(|key| {
            let mut metadata: Vec<_> = store
                .metadata(&key)
                .expect("a listed key")
                .into_iter()
                .collect();
            metadata.sort();
            let bytes = store.bytes(&key).expect("a listed key");
            (key, bytes, metadata)
        })
        .collect()
}

/// The memory bombs every memory test sends (the host's counted allocations and the real
/// runtime's wasm memory): each is answered within the caps or refused with a 4xx naming the
/// cap, and none may take more than one request's memory budget. The last few are just
/// inside the caps, so they are answered.
#[must_use]
pub fn memory_bombs() -> Vec<String> {
    let million =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000)";
    vec![
        "SELECT zeroblob(100000000)".to_owned(),
        "SELECT length(randomblob(100000000))".to_owned(),
        "SELECT printf('%.*c', 100000000, 'x')".to_owned(),
        "WITH RECURSIVE d(s, n) AS (SELECT 'x', 0 UNION ALL SELECT s || s, n + 1 FROM d \
         WHERE n < 26) SELECT length(s) FROM d"
            .to_owned(),
        format!("{million} SELECT NULL FROM c"),
        format!("{million} SELECT x, x FROM c"),
        format!("{million} SELECT zeroblob(1000000) FROM c"),
        // Text whose JSON escapes are six times longer than it is.
        "SELECT replace(hex(zeroblob(1300000)), '0', char(1))".to_owned(),
        format!("{million} SELECT group_concat(hex(randomblob(8))) FROM c"),
        format!("{million} SELECT x FROM c ORDER BY random()"),
        "CREATE TEMP TABLE parked AS SELECT zeroblob(1000000) AS b FROM \
         (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 40) \
         SELECT x FROM c)"
            .to_owned(),
        // Just inside the caps: answered, and still within the budget.
        "SELECT printf('%.*c', 2500000, 'x')".to_owned(),
        "SELECT randomblob(2500000)".to_owned(),
        "SELECT replace(hex(zeroblob(300000)), '0', char(1))".to_owned(),
        format!("{million} SELECT x, 'abc', NULL FROM c LIMIT 10000"),
    ]
}

/// Whether `key` is one of a user's commit slots (`manifest.json`, `manifest-<i>.json`).
#[must_use]
pub fn is_manifest_key(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with("manifest") && name.ends_with(".json"))
}

/// `user`'s newest manifest as stored: the key of the commit slot holding the highest commit
/// number, and its manifest (what a load takes, whatever the slot count).
///
/// # Panics
/// If a slot holds something that is not a manifest.
#[must_use]
pub fn newest_manifest(store: &MemoryStore, user: &UserId) -> Option<(String, Manifest)> {
    (0..crate::storage::MAX_COMMIT_SLOTS as usize)
        .filter_map(|slot| {
            let key = user.manifest_key(slot);
            let bytes = store.bytes(&key)?;
            let m: Manifest = serde_json::from_slice(&bytes).expect("a manifest");
            Some((key, m))
        })
        .max_by_key(|(_, m)| m.commit)
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// Hooks run in order around each call: a counter sees the calls a fault plan then fails,
    /// a lost answer still changes the store, and a call parked at a gate waits until it opens
    /// while another call goes by.
    #[test]
    fn hooks_count_fail_lose_answers_and_park() {
        let calls = Calls::default();
        let plan = FaultPlan::new()
            .with(Operation::Put, &[Fault::LostAnswer])
            .with(Operation::List, &[Fault::RateLimited]);
        let gate = Gate::new();
        let store = HookStore::default().with(&calls).with(&plan).with(Before(
            |call: &Call<'_>, _: &MemoryStore| match call {
                Call::Head { key: "parked" } => Action::Park(gate.clone()),
                _ => Action::Proceed,
            },
        ));
        let put = pollster::block_on(store.put("k", b"v", &[], &PutCondition::IfAbsent));
        assert_eq!(put.unwrap_err().kind, StoreErrorKind::Transient);
        assert_eq!(
            store.inner.bytes("k").unwrap(),
            b"v",
            "the lost answer's put landed"
        );
        let list = pollster::block_on(store.list(""));
        assert_eq!(list.unwrap_err().kind, StoreErrorKind::RateLimited);
        assert!(pollster::block_on(store.list("")).is_ok(), "past the plan");
        assert_eq!(
            (
                plan.fired(Operation::Put, Fault::LostAnswer),
                plan.fired_total()
            ),
            (1, 2)
        );

        let mut parked = std::pin::pin!(store.head("parked"));
        assert!(poll_once(parked.as_mut()).is_pending());
        assert_eq!(gate.waiting(), 1);
        assert!(pollster::block_on(store.head("k")).unwrap().is_some());
        gate.open();
        assert_eq!(poll_once(parked.as_mut()), Poll::Ready(Ok(None)));
        assert_eq!(gate.waiting(), 0);
        assert_eq!(
            [Operation::Put, Operation::List, Operation::Head].map(|op| calls.count(op)),
            [1, 2, 2]
        );
    }

    /// A shut valve parks the calls it picks and lets the others by; opening it releases them,
    /// and shutting it again parks only the calls that come after.
    #[test]
    fn a_valve_parks_picked_calls_until_opened_and_again_once_shut() {
        let valve = Valve::new(|call: &Call<'_>| call.operation() == Operation::Put);
        let store = HookStore::default().with(&valve);
        let put = |key| store.put(key, b"v", &[], &PutCondition::IfAbsent);
        valve.shut();
        let mut first = std::pin::pin!(put("first"));
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(pollster::block_on(store.head("first")).unwrap().is_none());
        valve.open();
        assert!(matches!(poll_once(first.as_mut()), Poll::Ready(Ok(_))));
        valve.shut();
        let mut second = std::pin::pin!(put("second"));
        assert!(poll_once(second.as_mut()).is_pending());
        assert!(store.inner.bytes("second").is_none());
        valve.open();
        assert!(matches!(poll_once(second.as_mut()), Poll::Ready(Ok(_))));
        assert!(
            pollster::block_on(put("third")).is_ok(),
            "an open valve parks nothing"
        );
        assert_eq!(valve.picked(), 3);
    }

    /// The seeded generator is deterministic: a seed replays its sequence.
    #[test]
    fn rng_replays() {
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        assert_eq!(a.bytes(32), b.bytes(32));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}

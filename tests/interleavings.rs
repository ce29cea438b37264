//! Deterministic interleavings of the incremental layout's racing steps over the store seam.
//!
//! Every store call of every actor parks until a scheduler releases it; the scheduler walks
//! the orders of the calls depth first, re-running the scenario from scratch for each branch:
//! every order with at most [`PREEMPTIONS`] preemptions (releasing another actor's call while
//! the one that ran last still waits; switching after an actor finished is free). An order
//! that reaches a state already explored is not continued: the actors are deterministic, so a
//! state is the stored objects (entity tags named by what was written, not by write order)
//! and the answers each unfinished actor has had. Calls on delta objects run at once: each
//! delta key is written once, before the manifest that lists it, read only after, and deleted
//! only once a committed manifest stopped listing it (so a read racing the delete is the read
//! that restarts a load, which other tests cover). After
//! each order the live database must hold every acknowledged write, and no load may have
//! written (nothing taken for an outside replacement). Host only: the debug build explores
//! thousands of states.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use rusqlite::types::Value;
use workers_sqlite_poc::exec::{Limits, Statement};
use workers_sqlite_poc::migrate::{self, ObjectState};
use workers_sqlite_poc::pipeline::{self, Context, serve};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::sqlite;
use workers_sqlite_poc::storage::moves::fetch_frozen;
use workers_sqlite_poc::storage::{self, Body, CompactionPolicy, Layout};
use workers_sqlite_poc::storage::{
    Fetched, Listed, MemoryStore, ObjectHead, ObjectStore, PutCondition, PutOutcome, StoreError,
};
use workers_sqlite_poc::testing::{self, StepClock, open};
use workers_sqlite_poc::work::Transaction;

const BASE: &str = "a/database.sqlite";
/// The actor that only loads.
const LOADER: usize = 3;

fn user() -> UserId {
    testing::user("a")
}

/// One store call, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    /// Which actor made it, and its how-manieth call this was: the same in every re-run of
    /// the same prefix, since each actor is deterministic.
    actor: usize,
    index: usize,
    /// The key (for `list`, the prefix).
    key: String,
    write: bool,
    list: bool,
}

/// What the actors share: the calls parked now and the one released.
#[derive(Default)]
struct Scheduler {
    parked: RefCell<Vec<Call>>,
    released: RefCell<Option<(usize, usize)>>,
    /// The store's entity tags, named by what was written (key, bytes, metadata, and how
    /// many identical writes came before), so that two orders of the same writes match.
    names: RefCell<HashMap<String, u64>>,
    /// How many times each write was made.
    writes: RefCell<HashMap<u64, u64>>,
    /// Per actor: a digest of every call it made and the answer it got.
    seen: RefCell<Vec<u64>>,
    /// Writes made by the loader, or of conflict records by anyone: none may happen.
    forbidden: RefCell<Vec<String>>,
}

fn digest(value: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn sorted(metadata: &HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut m: Vec<_> = metadata.iter().collect();
    m.sort();
    m
}

impl Scheduler {
    /// Names the entity tag of a write of `bytes` and `metadata` under `key`.
    fn name_write(&self, etag: &str, key: &str, bytes: &[u8], metadata: &[(&str, String)]) {
        let mut meta: Vec<_> = metadata.iter().collect();
        meta.sort();
        let what = digest((key, bytes, meta));
        let mut writes = self.writes.borrow_mut();
        let n = writes.entry(what).or_default();
        *n += 1;
        self.names
            .borrow_mut()
            .insert(etag.to_owned(), digest((what, *n)));
    }

    fn name(&self, etag: &str) -> u64 {
        *self
            .names
            .borrow()
            .get(etag)
            .unwrap_or_else(|| panic!("unnamed entity tag {etag}"))
    }

    /// Records that `actor`'s call got `answer`.
    ///
    /// Kept as a sum, so the order in which an actor's concurrent calls completed does not
    /// count: the layout runs concurrent calls only through joins that collect each answer
    /// in its own slot, so the actor's state depends on which answers it has, not on their
    /// order. Its calls are told apart by their index.
    fn saw(&self, actor: usize, index: usize, call: (&str, &str), answer: u64) {
        let mut seen = self.seen.borrow_mut();
        if seen.len() <= actor {
            seen.resize(actor + 1, 0);
        }
        seen[actor] = seen[actor].wrapping_add(digest((index, call, answer)));
    }

    /// The state: the stored objects by name, and what each unfinished actor has seen (a
    /// finished one counts only by what it came to, in `outcome`).
    fn state(&self, store: &MemoryStore, finished: &[bool], outcome: u64) -> u64 {
        let objects: Vec<(String, u64)> = store
            .keys()
            .into_iter()
            .map(|k| {
                let etag = pollster::block_on(store.head(&k)).unwrap().unwrap().etag;
                let name = self.name(&etag);
                (k, name)
            })
            .collect();
        let mut seen = self.seen.borrow().clone();
        seen.resize(finished.len(), 0);
        for (seen, done) in seen.iter_mut().zip(finished) {
            if *done {
                *seen = 0;
            }
        }
        digest((objects, seen, finished, outcome))
    }
}

/// A future that parks its call until the scheduler releases it.
struct Gate<'a> {
    scheduler: &'a Scheduler,
    /// Runs at once, without a choice.
    open: bool,
    call: Option<Call>,
    id: (usize, usize),
}

impl Future for Gate<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<()> {
        if self.open {
            return Poll::Ready(());
        }
        if let Some(call) = self.call.take() {
            self.scheduler.parked.borrow_mut().push(call);
            return Poll::Pending;
        }
        let mut released = self.scheduler.released.borrow_mut();
        if *released == Some(self.id) {
            *released = None;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// One actor's view of the store: every call waits at a [`Gate`], then runs on the shared
/// in-memory store at once.
struct Parked<'a> {
    inner: &'a MemoryStore,
    scheduler: &'a Scheduler,
    actor: usize,
    calls: Cell<usize>,
    /// Calls that run at once (key, write, list).
    open: Option<fn(&str, bool, bool) -> bool>,
}

impl Parked<'_> {
    fn gate(&self, key: &str, write: bool, list: bool) -> Gate<'_> {
        let index = self.calls.get();
        self.calls.set(index + 1);
        Gate {
            scheduler: self.scheduler,
            id: (self.actor, index),
            open: self.open.is_some_and(|open| open(key, write, list)),
            call: Some(Call {
                actor: self.actor,
                index,
                key: key.to_owned(),
                write,
                list,
            }),
        }
    }
}

impl Parked<'_> {
    /// Waits until the call may run; returns its index among the actor's calls.
    async fn pass(&self, key: &str, write: bool, list: bool) -> usize {
        let gate = self.gate(key, write, list);
        let index = gate.id.1;
        gate.await;
        index
    }
}

impl ObjectStore for Parked<'_> {
    type Body = Rc<[u8]>;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<Self::Body>, StoreError> {
        let index = self.pass(key, false, false).await;
        let got = self.inner.get(key, max_bytes, if_none_match).await;
        let s = self.scheduler;
        let answer = match &got {
            Ok(Fetched::Found(o)) => digest((1, s.name(&o.etag), sorted(&o.metadata))),
            Ok(Fetched::NotModified { metadata }) => digest((2, sorted(metadata))),
            Ok(Fetched::Missing) => 3,
            Ok(Fetched::TooLarge { size_bytes }) => digest((4, size_bytes)),
            Err(_) => 5,
        };
        s.saw(
            self.actor,
            index,
            ("get", key),
            digest((answer, if_none_match.map(|e| s.name(e)))),
        );
        got
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StoreError> {
        let index = self.pass(key, false, false).await;
        let got = self.inner.head(key).await;
        let s = self.scheduler;
        let answer = match &got {
            Ok(Some(h)) => digest((s.name(&h.etag), sorted(&h.metadata))),
            Ok(None) => 1,
            Err(_) => 2,
        };
        s.saw(self.actor, index, ("head", key), answer);
        got
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError> {
        let index = self.pass(key, true, false).await;
        let s = self.scheduler;
        if self.actor == LOADER || key.contains("/conflicts/") {
            s.forbidden
                .borrow_mut()
                .push(format!("actor {} put {key}", self.actor));
        }
        let condition_name = match condition {
            PutCondition::IfMatch(etag) => Some(s.name(etag)),
            PutCondition::IfAbsent => None,
        };
        let out = self.inner.put(key, bytes, metadata, condition).await;
        let answer = match &out {
            Ok(PutOutcome::Stored { etag }) => {
                s.name_write(etag, key, bytes, metadata);
                s.name(etag)
            }
            Ok(PutOutcome::ConditionFailed) => 1,
            Err(_) => 2,
        };
        s.saw(
            self.actor,
            index,
            ("put", key),
            digest((answer, condition_name)),
        );
        out
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let index = self.pass(key, true, false).await;
        let out = self.inner.delete(key).await;
        self.scheduler
            .saw(self.actor, index, ("delete", key), u64::from(out.is_ok()));
        out
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let index = self.pass(prefix, false, true).await;
        let out = self.inner.list(prefix).await;
        let answer = match &out {
            Ok(listed) => digest(
                listed
                    .iter()
                    .map(|l| (&l.key, l.size, l.uploaded_ms))
                    .collect::<Vec<_>>(),
            ),
            Err(_) => 1,
        };
        self.scheduler
            .saw(self.actor, index, ("list", prefix), answer);
        out
    }
}

/// Orders are enumerated up to this many preemptions: releasing another actor's call while
/// the actor that ran last still has one parked. Two keep a debug-build run near 20 s of CPU
/// (three take minutes); the orders that once lost writes need four and are replayed by the
/// scripted tests below.
const PREEMPTIONS: u32 = 2;

/// A point in an order where the scheduler chose: the calls it could release, and which one.
#[derive(Debug, Clone)]
struct Choice {
    enabled: Vec<Call>,
    chosen: usize,
    /// The actor whose call ran last, and the preemptions so far.
    last: Option<usize>,
    preemptions: u32,
}

impl Choice {
    /// Preemptions after releasing `enabled[i]`.
    fn cost(&self, i: usize) -> u32 {
        let actor = self.enabled[i].actor;
        let preempts = self
            .last
            .is_some_and(|last| last != actor && self.enabled.iter().any(|c| c.actor == last));
        self.preemptions + u32::from(preempts)
    }

    /// The first call from `i` on that stays within the bound.
    fn allowed_from(&self, i: usize) -> Option<usize> {
        (i..self.enabled.len()).find(|&j| self.cost(j) <= PREEMPTIONS)
    }
}

type Actor<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// How one run ended.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    /// Every actor finished, in a state not seen before: check it.
    Finished,
    /// It reached a state already explored (with no more preemptions left).
    Known,
}

/// States explored: the fewest preemptions each was reached with.
type Visited = HashMap<u64, u32>;

/// Runs `actors` in the order `choices` starts with, then (from the first state not in
/// `visited`) the first allowed parked call each time, extending `choices`, until every
/// actor is done or a state already explored is reached.
fn run_order(
    scheduler: &Scheduler,
    store: &MemoryStore,
    mut actors: Vec<Option<Actor<'_>>>,
    choices: &mut Vec<Choice>,
    visited: &mut Visited,
    outcome: &dyn Fn() -> u64,
) -> Run {
    let mut cx = TaskContext::from_waker(Waker::noop());
    let (mut depth, mut last, mut preemptions) = (0, None, 0);
    loop {
        // Every actor runs until each one is parked or finished.
        for slot in &mut actors {
            if let Some(actor) = slot
                && actor.as_mut().poll(&mut cx).is_ready()
            {
                *slot = None;
            }
        }
        let enabled = scheduler.parked.borrow().clone();
        if depth >= choices.len() {
            let finished: Vec<bool> = actors.iter().map(Option::is_none).collect();
            let state = digest((scheduler.state(store, &finished, outcome()), last));
            if visited.get(&state).is_some_and(|p| *p <= preemptions) {
                return Run::Known;
            }
            visited.insert(state, preemptions);
            if enabled.is_empty() {
                assert!(finished.iter().all(|f| *f), "an actor waits on nothing");
                return Run::Finished;
            }
            let mut choice = Choice {
                enabled,
                chosen: 0,
                last,
                preemptions,
            };
            choice.chosen = choice
                .allowed_from(0)
                .expect("releasing the last actor's own call is free");
            choices.push(choice);
        } else {
            assert_eq!(
                enabled, choices[depth].enabled,
                "a re-run of the same order parked different calls"
            );
        }
        let choice = &choices[depth];
        let chosen = choice.enabled[choice.chosen].clone();
        preemptions = choice.cost(choice.chosen);
        last = Some(chosen.actor);
        scheduler.parked.borrow_mut().retain(|c| *c != chosen);
        *scheduler.released.borrow_mut() = Some((chosen.actor, chosen.index));
        depth += 1;
    }
}

/// Calls `run` once per branch of the orders, each time with a fresh scheduler; returns how
/// many runs finished in a new state, and how many ran in all.
fn every_order(
    mut run: impl FnMut(&Scheduler, &mut Vec<Choice>, &mut Visited) -> Run,
) -> (usize, usize) {
    let (mut choices, mut visited) = (Vec::<Choice>::new(), Visited::new());
    let (mut finished, mut runs) = (0, 0);
    loop {
        let scheduler = Scheduler::default();
        runs += 1;
        if run(&scheduler, &mut choices, &mut visited) == Run::Finished {
            finished += 1;
        }
        if std::env::var_os("INTERLEAVINGS_PROGRESS").is_some() && runs % 500 == 0 {
            eprintln!("{runs} runs, {finished} finished, {} states", visited.len());
        }
        // Backtrack to the deepest choice with a call left to try.
        loop {
            let Some(last) = choices.last_mut() else {
                return (finished, runs);
            };
            if let Some(next) = last.allowed_from(last.chosen + 1) {
                last.chosen = next;
                break;
            }
            choices.pop();
        }
    }
}

/// How the scheduler picks the next call.
enum Driver<'d> {
    /// Every order, depth first ([`every_order`]).
    Explore(&'d mut Vec<Choice>, &'d mut Visited),
    /// These calls first, in this order (actor, whether it writes, key), then the first
    /// parked call each time.
    Script(&'d [(usize, bool, &'static str)]),
}

/// Runs `actors` releasing the calls `script` names in order, then whatever is parked first;
/// returns the calls in the order released.
fn run_script(
    scheduler: &Scheduler,
    mut actors: Vec<Option<Actor<'_>>>,
    script: &[(usize, bool, &str)],
) -> Vec<Call> {
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut released = vec![];
    loop {
        for slot in &mut actors {
            if let Some(actor) = slot
                && actor.as_mut().poll(&mut cx).is_ready()
            {
                *slot = None;
            }
        }
        let parked = scheduler.parked.borrow().clone();
        let Some(first) = parked.first() else {
            assert!(
                actors.iter().all(Option::is_none),
                "an actor waits on nothing"
            );
            return released;
        };
        let chosen = match script.get(released.len()) {
            Some(&(actor, write, key)) => parked
                .iter()
                .find(|c| c.actor == actor && c.write == write && c.key == key)
                .unwrap_or_else(|| {
                    panic!(
                        "step {}: {actor} {write} {key} is not parked: {parked:?}",
                        released.len()
                    )
                }),
            None => first,
        }
        .clone();
        scheduler.parked.borrow_mut().retain(|c| *c != chosen);
        *scheduler.released.borrow_mut() = Some((chosen.actor, chosen.index));
        released.push(chosen);
    }
}

fn insert(id: i64) -> Transaction {
    Transaction {
        statements: vec![Statement {
            sql: "INSERT INTO hits(id) VALUES (?)".into(),
            args: vec![Value::Integer(id)],
            named_args: vec![],
        }],
        limits: Limits::default(),
    }
}

fn context<'a, S, C>(store: &'a S, clock: &'a C, nonce: u64) -> Context<'a, S, C> {
    slotted(store, clock, nonce, 1)
}

/// [`context`] with `k` commit slots.
fn slotted<'a, S, C>(store: &'a S, clock: &'a C, nonce: u64, k: u32) -> Context<'a, S, C> {
    Context {
        layout: Layout::Incremental,
        nonce,
        compaction: CompactionPolicy {
            max_deltas: 1,
            max_delta_percent: 1000,
            // Nothing is old enough to sweep: the sweep's reads still take part.
            sweep_grace_ms: u64::MAX / 2,
            commit_slots: k,
        },
        ..Context::new(store, clock)
    }
}

/// A stored object: key, bytes, custom metadata.
type Seeded = (String, Vec<u8>, Vec<(String, String)>);

/// A user with a small base and one committed delta (row 1), ready to compact: built once,
/// then copied into a fresh store per order (in write order, so the etags come out the same).
fn seeded(scheduler: &Scheduler) -> MemoryStore {
    thread_local! {
        static SEED: Vec<Seeded> = {
            let store = MemoryStore::new();
            let mut conn = sqlite::create().unwrap();
            conn.execute_batch("CREATE TABLE hits(id INTEGER PRIMARY KEY)").unwrap();
            store.insert(BASE, &sqlite::export(&mut conn).unwrap(), &[]);
            let clock = StepClock::stepping(1.0);
            pollster::block_on(serve(
                &context(&store, &clock, 1),
                &user(),
                SaveMode::Auto,
                &mut insert(1),
            ))
            .unwrap();
            let mut objects: Vec<_> = store
                .keys()
                .into_iter()
                .map(|k| {
                    let etag = pollster::block_on(store.head(&k)).unwrap().unwrap().etag;
                    let generation: u64 = etag.trim_start_matches("mem-").parse().unwrap();
                    let metadata = store.metadata(&k).unwrap().into_iter().collect();
                    (generation, k.clone(), store.bytes(&k).unwrap(), metadata)
                })
                .collect();
            objects.sort();
            objects.into_iter().map(|(_, k, b, m)| (k, b, m)).collect()
        };
    }
    let store = MemoryStore::new();
    SEED.with(|seed| {
        for (key, bytes, metadata) in seed {
            let metadata: Vec<(&str, String)> = metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            let etag = store.insert(key, bytes, &metadata);
            scheduler.name_write(&etag, key, bytes, &metadata);
        }
    });
    store
}

fn hits(image: &[u8]) -> Vec<i64> {
    let conn = open(image);
    let mut stmt = conn.prepare("SELECT id FROM hits ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// What one order came to.
#[derive(Debug, Default, Hash)]
struct Outcome {
    acknowledged: Vec<i64>,
    /// The writer's insert was refused (answered with an error).
    refused: bool,
    /// The second writer's (row 3) was.
    refused_second: bool,
    loader_saw: Option<Vec<i64>>,
    outside_reported: bool,
    /// What a move's import copied, and whether the move completed.
    imported: Option<Vec<i64>>,
    moved: Option<bool>,
}

/// The second actor: a compaction in `waitUntil`, the spec's request (`save=always`, which
/// folds the database in the request), or a move to the Durable Object (its import reads the
/// frozen object through the same store).
#[derive(Debug, Clone, Copy)]
enum Second {
    Compaction,
    SpecRequest,
    Move,
    /// A second writer (row 3), with two commit slots: both writers claim the same commit
    /// numbers, on the same key.
    Writer,
}

/// Runs one order of: compaction A, `second`, a writer of row 2 and a loader, then checks the
/// live database.
fn one_order(second: Second, scheduler: &Scheduler, driver: Driver<'_>) -> Run {
    let store = seeded(scheduler);
    let outcome = RefCell::new(Outcome::default());
    let clocks: Vec<StepClock> = (0..4).map(|_| StepClock::stepping(1.0)).collect();
    let parked: Vec<Parked<'_>> = (0..4)
        .map(|actor| Parked {
            inner: &store,
            scheduler,
            actor,
            calls: Cell::new(0),
            open: Some(|key, _, list| list || key.starts_with("a/deltas/")),
        })
        .collect();
    // The seed is commit 0 of one slot; with two, the commits after it rotate (the first one
    // widens the user, in slot 0).
    let k = if matches!(second, Second::Writer) {
        2
    } else {
        1
    };
    let ctx = |i: usize| slotted(&parked[i], &clocks[i], 10 + i as u64, k);
    let outcome_ref = &outcome;
    let actors: Vec<Option<Actor<'_>>> = vec![
        Some(Box::pin(async move {
            let _ = storage::compact(&ctx(0), &user(), false).await;
        })),
        Some(Box::pin(async move {
            match second {
                Second::Compaction => {
                    let _ = storage::compact(&ctx(1), &user(), false).await;
                }
                Second::Writer => {
                    let got = serve(&ctx(1), &user(), SaveMode::Auto, &mut insert(3)).await;
                    let mut o = outcome_ref.borrow_mut();
                    match got {
                        Ok(_) => o.acknowledged.push(3),
                        Err(_) => o.refused_second = true,
                    }
                }
                Second::SpecRequest => {
                    let got = serve(
                        &ctx(1),
                        &user(),
                        SaveMode::Always,
                        &mut pipeline::ListTables,
                    )
                    .await;
                    if let Ok((report, ())) = got {
                        let storage = report.storage.unwrap();
                        outcome_ref.borrow_mut().outside_reported |=
                            storage.outside_replacement.is_some();
                    }
                }
                Second::Move => {
                    let c = ctx(1);
                    let moved = migrate::to_durable_object(&c, &user(), async || {
                        let (object, _) = fetch_frozen(&c, &user(), |r2| {
                            migrate::check_import(&ObjectState::Empty, r2)
                        })
                        .await?;
                        let mut image = vec![0; object.body.len()];
                        object.body.read_into(&mut image).await.unwrap();
                        outcome_ref.borrow_mut().imported = Some(hits(&image));
                        Ok(serde_json::json!({}))
                    })
                    .await;
                    outcome_ref.borrow_mut().moved = Some(moved.is_ok());
                }
            }
        })),
        Some(Box::pin(async move {
            let got = serve(&ctx(2), &user(), SaveMode::Auto, &mut insert(2)).await;
            let mut o = outcome_ref.borrow_mut();
            match got {
                Ok((report, _)) => {
                    o.acknowledged.push(2);
                    o.outside_reported |= report.storage.unwrap().outside_replacement.is_some();
                }
                Err(_) => o.refused = true,
            }
        })),
        Some(Box::pin(async move {
            if let Ok(mut loaded) = pipeline::load(&ctx(3), &user()).await {
                let mut o = outcome_ref.borrow_mut();
                o.outside_reported |= loaded.outside.is_some();
                o.loader_saw = Some(hits(&sqlite::export(&mut loaded.conn).unwrap()));
            }
        })),
    ];
    let outcome_digest = || digest(&*outcome.borrow());
    let released = match driver {
        Driver::Explore(choices, visited) => {
            if run_order(scheduler, &store, actors, choices, visited, &outcome_digest) == Run::Known
            {
                return Run::Known;
            }
            choices
                .iter()
                .map(|c| c.enabled[c.chosen].clone())
                .collect()
        }
        Driver::Script(script) => run_script(scheduler, actors, script),
    };
    let outcome = outcome.into_inner();
    let forbidden = scheduler.forbidden.borrow().clone();
    let order: Vec<String> = released
        .iter()
        .map(|call| {
            let what = if call.write { "write" } else { "read" };
            format!("{}:{what} {}", ["A", "B", "W", "L"][call.actor], call.key)
        })
        .collect();
    let order = order.join(", ");
    if std::env::var_os("INTERLEAVINGS_ORDERS").is_some() {
        eprintln!("{order}");
    }
    assert!(
        forbidden.is_empty(),
        "order [{order}]: a load wrote, or a conflict record was written: {forbidden:?}"
    );
    // The live database, as a fresh worker loads it; for a user who moved, the copy their
    // Durable Object imported (R2 keeps exactly those bytes).
    let clock = StepClock::stepping(1.0);
    let live_hits = if outcome.moved == Some(true) {
        let imported = outcome.imported.clone().unwrap();
        let base = store.bytes(BASE).unwrap();
        assert_eq!(
            store
                .metadata(BASE)
                .unwrap()
                .get("route")
                .map(String::as_str),
            Some("durable_object"),
            "order [{order}]: the move completed but R2 does not say so"
        );
        assert_eq!(
            hits(&base),
            imported,
            "order [{order}]: R2 kept other bytes"
        );
        imported
    } else {
        // A move that gave up left nothing frozen: the user loads on R2 again.
        let mut live = pollster::block_on(pipeline::load(&context(&store, &clock, 99), &user()))
            .unwrap_or_else(|e| panic!("order [{order}]: the live database does not load: {e}"));
        assert!(
            live.outside.is_none(),
            "order [{order}]: a compaction was taken for an outside replacement"
        );
        hits(&sqlite::export(&mut live.conn).unwrap())
    };
    assert!(
        !outcome.outside_reported,
        "order [{order}]: a compaction was taken for an outside replacement"
    );
    assert!(
        !(outcome.refused && live_hits.contains(&2)),
        "order [{order}]: a refused insert is stored: {live_hits:?}"
    );
    assert!(
        !(outcome.refused_second && live_hits.contains(&3)),
        "order [{order}]: a refused insert is stored: {live_hits:?}"
    );
    assert!(
        store.keys().iter().all(|k| !k.starts_with("a/conflicts/")),
        "order [{order}]: a conflict record was written: {:?}",
        store.keys()
    );
    for id in std::iter::once(1).chain(outcome.acknowledged) {
        assert!(
            live_hits.contains(&id),
            "order [{order}]: acknowledged row {id} is missing from the live database {live_hits:?}"
        );
    }
    if let Some(saw) = outcome.loader_saw {
        assert!(saw.contains(&1), "order [{order}]: the loader saw {saw:?}");
    }
    Run::Finished
}

/// Every order of the scenario with `second` as the second actor; it must reach more than 90
/// final states, each checked by [`one_order`] (a check that the exploration went deep: the
/// move's scenario reaches 96 since a writer that loses to a compaction of its own state
/// commits on top of it instead of running again; the others more than 100).
fn explore(second: Second) {
    let (finished, runs) =
        every_order(|s, choices, visited| one_order(second, s, Driver::Explore(choices, visited)));
    eprintln!("{finished} final states, {runs} runs");
    assert!(finished > 90, "only {finished} final states");
}

/// Two compactions, a writer and a loader, in every order of their store calls: no
/// acknowledged write is ever missing from the live database, and no order leaves a state a
/// loader takes for an outside replacement (among them: compaction B loses its base put to A,
/// reloads before A's manifest commits, the writer commits, then B's base put lands).
#[test]
fn interleavings_of_two_compactions_a_writer_and_a_loader_lose_no_acknowledged_write() {
    explore(Second::Compaction);
}

/// The same with the spec's request (which folds the database in the request) as the second
/// compaction.
#[test]
fn interleavings_of_a_compaction_the_spec_request_a_writer_and_a_loader_lose_no_acknowledged_write()
{
    explore(Second::SpecRequest);
}

/// A move to the Durable Object racing a compaction, a writer and a loader, in every order:
/// every acknowledged write is in the copy the object imported (and in the bytes R2 keeps), a
/// refused one is in neither, and a move that gives up leaves the user loadable on R2, never
/// frozen (a move whose base put said `route=moving` and then lost its manifest put to the
/// writer once left the user refused as `migrating` for good).
#[test]
fn interleavings_of_a_move_a_compaction_a_writer_and_a_loader_lose_nothing_and_never_strand_the_user()
 {
    explore(Second::Move);
}

/// Two writers and a compaction over two commit slots, with a loader, in every order: each
/// commit number has one slot, so the writers that claim the same number race on one key and
/// exactly one wins; a writer whose read of the next slot was stale (the other's commit
/// landed there after the read) only fails its condition and runs again. No acknowledged
/// write is missing, no refused one is stored, and a worker configured with one slot still
/// loads the newest state (the manifests say two).
#[test]
fn interleavings_of_two_writers_claiming_one_commit_number_over_two_slots_lose_nothing() {
    explore(Second::Writer);
}

/// The order that lost an acknowledged write: compaction B loses its base put to A, reloads
/// before A's manifest commits, the writer commits row 2, B's base put lands (covering what
/// A's covers), A's manifest commits, then a loader reads. The loader must take B's base for
/// a compaction of the manifest, not an outside replacement.
#[test]
fn compaction_whose_base_put_lands_after_a_rival_is_not_an_outside_replacement() {
    const M: &str = "a/manifest.json";
    let script = [
        (0, false, M),
        (0, false, BASE),
        (1, false, M),
        (1, false, BASE),
        (0, true, BASE),
        (1, true, BASE),
        (1, false, M),
        (1, false, BASE),
        (2, false, M),
        (2, false, BASE),
        (2, true, M),
        (1, true, BASE),
        (0, true, M),
        (0, false, M),
        (0, true, M),
        (3, false, M),
        (3, false, BASE),
    ];
    let scheduler = Scheduler::default();
    assert_eq!(
        one_order(Second::Compaction, &scheduler, Driver::Script(&script)),
        Run::Finished
    );
}

/// The order where a loader read `database.sqlite` before a compaction replaced it and the
/// manifest after that compaction committed: the stale base matched neither, and the load
/// adopted it as an outside replacement. The load must re-read both and start over.
#[test]
fn load_that_read_the_base_before_a_compaction_replaced_it_starts_over() {
    const M: &str = "a/manifest.json";
    let script = [
        (0, false, M),
        (0, false, BASE),
        (1, false, M),
        (1, false, BASE),
        (2, false, M),
        (2, false, BASE),
        (3, false, BASE),
        (0, true, BASE),
        (1, true, BASE),
        (2, true, M),
        (0, true, M),
        (1, false, M),
        (1, false, BASE),
        (0, false, M),
        (1, true, BASE),
        (0, true, M),
        (3, false, M),
    ];
    let scheduler = Scheduler::default();
    assert_eq!(
        one_order(Second::Compaction, &scheduler, Driver::Script(&script)),
        Run::Finished
    );
}

//! The write queue and group commit over the store seam: many requests of one user in one
//! isolate, driven as concurrent futures on one thread, with the commit's put parked so the
//! tests decide what happens while a commit is in flight. Both layouts.

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};

use rusqlite::types::Value;
use workers_sqlite_poc::error::Error;
use workers_sqlite_poc::exec::StatementResult;
use workers_sqlite_poc::pipeline::{self, Context, Work};
use workers_sqlite_poc::queue::{self, WriteQueues};
use workers_sqlite_poc::report::{CacheStatus, Report};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::storage::Layout;
use workers_sqlite_poc::storage::cache::DbCache;
use workers_sqlite_poc::storage::{MemoryStore, ObjectStore};
use workers_sqlite_poc::testing::{
    self, Action, Before, Call, Fault, FaultPlan, HookStore, Operation, StepClock, Valve,
    row_counts, transaction,
};
use workers_sqlite_poc::work::Transaction;

const LAYOUTS: [Layout; 2] = [Layout::Single, Layout::Incremental];

fn user() -> UserId {
    testing::user("a")
}

/// The commit point of either layout: the manifest, or the one object of the single layout
/// (compactions and upgrades are not run by these tests).
fn is_commit_point(call: &Call<'_>) -> bool {
    matches!(call, Call::Put { key, .. } if testing::is_manifest_key(key) || key.ends_with("database.sqlite"))
}

/// The valve that parks commit-point puts while shut, and counts them.
type CommitValve = Valve<fn(&Call<'_>) -> bool>;

/// The store of these tests: puts of the commit point wait while its valve is shut.
struct Store {
    inner: HookStore<'static>,
    commits: Rc<CommitValve>,
}

impl Store {
    fn new() -> Self {
        let commits: Rc<CommitValve> = Rc::new(Valve::new(is_commit_point));
        Self {
            inner: HookStore::default().with(Rc::clone(&commits)),
            commits,
        }
    }

    /// Parks the commit-point puts from now on.
    fn park(&self) {
        self.commits.shut();
    }

    /// Lets every parked put through (later ones are parked if `park` is called again).
    fn release(&self) {
        self.commits.open();
    }
}

/// Counts wake-ups, so the driver knows when every future is stuck.
#[derive(Default)]
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

type Answer = Result<(Report, Vec<StatementResult>), Error>;

/// Concurrent requests on one thread, polled until none can move.
struct Tasks<'a> {
    futures: Vec<Option<Pin<Box<dyn Future<Output = Answer> + 'a>>>>,
    answers: Vec<Option<Answer>>,
    waker: Arc<CountingWaker>,
}

impl<'a> Tasks<'a> {
    fn new() -> Self {
        Self {
            futures: Vec::new(),
            answers: Vec::new(),
            waker: Arc::default(),
        }
    }

    /// Starts a request and runs everything as far as it goes; returns its index.
    fn spawn(&mut self, f: impl Future<Output = Answer> + 'a) -> usize {
        self.futures.push(Some(Box::pin(f)));
        self.answers.push(None);
        self.settle();
        self.futures.len() - 1
    }

    /// Polls every unfinished future until a whole pass moves nothing.
    fn settle(&mut self) {
        let waker = Waker::from(Arc::clone(&self.waker));
        let mut cx = TaskContext::from_waker(&waker);
        loop {
            let before = self.waker.0.load(std::sync::atomic::Ordering::SeqCst);
            let mut finished = false;
            for (f, answer) in self.futures.iter_mut().zip(self.answers.iter_mut()) {
                if let Some(fut) = f
                    && let Poll::Ready(a) = fut.as_mut().poll(&mut cx)
                {
                    *answer = Some(a);
                    *f = None;
                    finished = true;
                }
            }
            let after = self.waker.0.load(std::sync::atomic::Ordering::SeqCst);
            if !finished && before == after {
                return;
            }
        }
    }

    /// Drops a request's future, as the runtime does with a cancelled request.
    fn cancel(&mut self, i: usize) {
        self.futures[i] = None;
        self.settle();
    }

    fn done(&self, i: usize) -> bool {
        self.answers[i].is_some()
    }

    fn answer(&mut self, i: usize) -> Answer {
        self.answers[i]
            .take()
            .expect("the request has not finished")
    }
}

fn insert(n: i64) -> Transaction {
    transaction(&[("INSERT INTO t(n) VALUES (?)", vec![Value::Integer(n)])])
}

/// One isolate of the worker serving requests on `store`: its clock, version cache and write
/// queues.
struct Isolate<'s, S> {
    store: &'s S,
    layout: Layout,
    clock: StepClock,
    cache: DbCache,
    queues: WriteQueues,
}

impl<'s, S: ObjectStore> Isolate<'s, S> {
    /// An isolate whose version cache holds up to `cache_bytes` (0: none).
    fn new(store: &'s S, layout: Layout, cache_bytes: u64) -> Self {
        Self {
            store,
            layout,
            clock: StepClock::stepping(1.0),
            cache: DbCache::new(cache_bytes),
            queues: WriteQueues::new(),
        }
    }

    /// A request's context: each request of the worker has its own random nonce, which makes
    /// its write ids unique.
    fn ctx(&self) -> Context<'_, S, StepClock> {
        thread_local!(static NONCE: Cell<u64> = const { Cell::new(0) });
        Context {
            cache: Some(&self.cache),
            layout: self.layout,
            nonce: NONCE.with(|n| {
                n.set(n.get() + 1);
                n.get()
            }),
            ..Context::new(self.store, &self.clock)
        }
    }

    /// One request of user `a` running `work` through the isolate's write queue, saved as the
    /// query routes save.
    async fn serve<W: Work + 'static>(&self, work: W) -> Result<(Report, W::Output), Error> {
        let ctx = self.ctx();
        queue::serve(&ctx, &self.queues, &user(), SaveMode::Auto, work).await
    }

    /// `serve` run to its end.
    fn block_on<W: Work + 'static>(&self, work: W) -> Result<(Report, W::Output), Error> {
        pollster::block_on(self.serve(work))
    }
}

/// The table these tests write: `n` is unique.
fn create_table() -> Transaction {
    transaction(&[("CREATE TABLE t(id INTEGER PRIMARY KEY, n UNIQUE)", vec![])])
}

/// A store holding `CREATE TABLE t(id INTEGER PRIMARY KEY, n UNIQUE)`, written in `layout`.
fn store_with_table(layout: Layout) -> Store {
    let store = Store::new();
    Isolate::new(&store.inner, layout, 0)
        .block_on(create_table())
        .unwrap();
    store
}

/// The `n` column, by id, as a fresh load (another isolate) sees it.
fn stored_rows<S: ObjectStore>(store: &S) -> Vec<(i64, i64)> {
    let clock = StepClock::stepping(1.0);
    let ctx = Context::new(store, &clock);
    let loaded = pollster::block_on(pipeline::load(&ctx, &user())).unwrap();
    let mut stmt = loaded
        .conn
        .prepare("SELECT id, n FROM t ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    drop(stmt);
    rows
}

/// The `n` column, sorted.
fn stored_ns<S: ObjectStore>(store: &S) -> Vec<i64> {
    let mut ns: Vec<i64> = stored_rows(store).into_iter().map(|(_, n)| n).collect();
    ns.sort_unstable();
    ns
}

fn rowid(answer: &(Report, Vec<StatementResult>)) -> i64 {
    answer.1[0].last_insert_rowid
}

/// While a commit is in flight, further writes queue; when it lands they run in arrival order
/// on the new version and are committed together with one commit-point put; nobody is
/// acknowledged before the commit holding their write succeeded.
#[test]
fn queued_writes_commit_together_in_order_and_only_then_are_acknowledged() {
    for layout in LAYOUTS {
        let store = store_with_table(layout);
        let isolate = Isolate::new(&store.inner, layout, 64 << 20);
        let queues = &isolate.queues;
        let mut tasks = Tasks::new();
        store.park();
        let first = tasks.spawn(isolate.serve(insert(1)));
        assert!(
            !tasks.done(first),
            "{layout:?}: acknowledged before its commit landed"
        );
        assert!(queues.committing(&user()));
        let queued: Vec<usize> = (2..=6)
            .map(|n| tasks.spawn(isolate.serve(insert(n))))
            .collect();
        assert_eq!(queues.waiting(&user()), 5);
        let puts_before = store.commits.picked();
        // The first commit lands; the group's commit is now the one parked.
        store.release();
        store.park();
        tasks.settle();
        let a = tasks.answer(first).unwrap();
        assert_eq!(rowid(&a), 1);
        assert_eq!(a.0.write_queue.unwrap().group_size, 1);
        assert!(
            queued.iter().all(|&i| !tasks.done(i)),
            "{layout:?}: a queued write was acknowledged before its commit landed"
        );
        assert_eq!(stored_rows(&store.inner), [(1, 1)], "{layout:?}");
        store.release();
        tasks.settle();
        for (position, &i) in queued.iter().enumerate() {
            let a = tasks.answer(i).unwrap();
            assert_eq!(
                rowid(&a),
                2 + position as i64,
                "{layout:?}: run out of order"
            );
            let info = a.0.write_queue.unwrap();
            assert_eq!((info.group_size, info.position), (5, position as u32));
            assert!(a.0.db_info.stored.as_ref().unwrap().saved);
        }
        assert_eq!(
            store.commits.picked() - puts_before,
            1,
            "{layout:?}: the group of five is one commit-point put"
        );
        let expected: Vec<(i64, i64)> = (1..=6).map(|n| (n, n)).collect();
        assert_eq!(stored_rows(&store.inner), expected, "{layout:?}");
        assert!(!queues.committing(&user()) && queues.waiting(&user()) == 0);
    }
}

/// A write whose statements say it writes queues behind a commit in flight without loading
/// anything (a run of its own would be thrown away, and its load would take the cached copy),
/// so the group it joins loads from the cache; a read still runs at once.
#[test]
fn a_write_behind_a_commit_queues_without_a_load_and_its_group_loads_from_the_cache() {
    for layout in LAYOUTS {
        let store = store_with_table(layout);
        let isolate = Isolate::new(&store.inner, layout, 64 << 20);
        isolate.block_on(insert(0)).unwrap();
        let mut tasks = Tasks::new();
        store.park();
        let first = tasks.spawn(isolate.serve(insert(1)));
        let gets = store.inner.inner.get_count();
        let queued: Vec<usize> = (2..=4)
            .map(|n| tasks.spawn(isolate.serve(insert(n))))
            .collect();
        assert_eq!(isolate.queues.waiting(&user()), 3);
        assert_eq!(
            store.inner.inner.get_count(),
            gets,
            "{layout:?}: a queued write loaded"
        );
        let read = tasks.spawn(isolate.serve(transaction(&[("SELECT count(*) FROM t", vec![])])));
        assert!(tasks.done(read), "{layout:?}: a read waited for the commit");
        store.release();
        tasks.settle();
        assert!(tasks.answer(first).is_ok());
        for i in queued {
            let (report, _) = tasks.answer(i).unwrap();
            assert_ne!(
                report.cache.unwrap().status,
                CacheStatus::Miss,
                "{layout:?}: the group loaded from R2"
            );
        }
        assert_eq!(stored_ns(&store.inner), [0, 1, 2, 3, 4], "{layout:?}");
    }
}

/// A request still loading when its user's last queued write finishes holds on to the user's
/// queue: the queue is forgotten only once no request holds it. Forgotten under a loading
/// request, a write arriving next made a second queue, and the two led commits of one user in
/// one isolate at once, losing races to each other for seconds.
#[test]
fn a_request_that_outlives_the_last_writer_shares_its_queue_with_the_next() {
    for layout in LAYOUTS {
        let gate = testing::Gate::new();
        let parked = Cell::new(false);
        let commits: Rc<CommitValve> = Rc::new(Valve::new(is_commit_point));
        let store = HookStore::default().with(Rc::clone(&commits)).with(Before(
            |call: &Call<'_>, _: &MemoryStore| {
                if parked.get() || !matches!(call, Call::Get { .. }) {
                    return Action::Proceed;
                }
                parked.set(true);
                Action::Park(gate.clone())
            },
        ));
        parked.set(true);
        Isolate::new(&store, layout, 0)
            .block_on(create_table())
            .unwrap();
        let isolate = Isolate::new(&store, layout, 0);
        let mut tasks = Tasks::new();
        // A write its statements do not name as one: it loads first, and its load is parked.
        parked.set(false);
        let loading = tasks.spawn(isolate.serve(transaction(&[(
            "WITH x(n) AS (VALUES (1)) INSERT INTO t(n) SELECT n FROM x",
            vec![],
        )])));
        assert_eq!(gate.waiting(), 1, "{layout:?}");
        // Another write comes and goes meanwhile; then one more, whose commit is parked.
        tasks.spawn(isolate.serve(insert(2)));
        commits.shut();
        let third = tasks.spawn(isolate.serve(insert(3)));
        assert!(isolate.queues.committing(&user()), "{layout:?}");
        // The loading write runs: it must queue behind the commit in flight.
        gate.open();
        tasks.settle();
        assert_eq!(
            isolate.queues.waiting(&user()),
            1,
            "{layout:?}: the loading write led a commit of its own beside the queue's"
        );
        commits.open();
        tasks.settle();
        assert!(tasks.answer(loading).is_ok() && tasks.answer(third).is_ok());
        assert_eq!(stored_ns(&store), [1, 2, 3], "{layout:?}");
    }
}

/// Four writes while the first one's commit is parked: the third, `failing`, is answered
/// with `code` and leaves no trace; the others commit in order (1, 2, 3). Returns the last
/// one's answer.
fn a_member_fails<W>(layout: Layout, failing: W, code: &str) -> (Report, Vec<StatementResult>)
where
    W: Work<Output = Vec<StatementResult>> + 'static,
{
    let store = store_with_table(layout);
    let isolate = Isolate::new(&store.inner, layout, 64 << 20);
    let mut tasks = Tasks::new();
    store.park();
    let first = tasks.spawn(isolate.serve(insert(1)));
    let before = tasks.spawn(isolate.serve(insert(2)));
    let failing = tasks.spawn(isolate.serve(failing));
    let after = tasks.spawn(isolate.serve(insert(3)));
    store.release();
    tasks.settle();
    assert!(tasks.answer(first).is_ok());
    assert_eq!(rowid(&tasks.answer(before).unwrap()), 2);
    let err = tasks.answer(failing).unwrap_err();
    assert_eq!(err.code(), code, "{layout:?}: {err:?}");
    let after = tasks.answer(after).unwrap();
    assert_eq!(rowid(&after), 3, "{layout:?}");
    assert_eq!(
        stored_rows(&store.inner),
        [(1, 1), (2, 2), (3, 3)],
        "{layout:?}"
    );
    after
}

/// A request of the group whose statement fails is answered with its own error and leaves no
/// trace; the others commit.
#[test]
fn a_failing_request_rolls_back_alone() {
    for layout in LAYOUTS {
        // Its second statement violates UNIQUE against the first commit, so the whole
        // request rolls back, its first statement included; on its optimistic run (before the
        // first commit) it succeeded, which is what made it a write.
        let failing = transaction(&[
            ("INSERT INTO t(n) VALUES (100)", vec![]),
            ("INSERT INTO t(n) VALUES (1)", vec![]),
        ]);
        let after = a_member_fails(layout, failing, "sql_error");
        assert_eq!(after.0.write_queue.unwrap().group_size, 3);
    }
}

/// A work that commits one row and then fails: the group must not save its row.
struct CommitsThenFails(i64);

impl Work for CommitsThenFails {
    type Output = Vec<StatementResult>;
    fn run(&mut self, conn: &mut rusqlite::Connection) -> Result<Self::Output, Error> {
        conn.execute("INSERT INTO t(n) VALUES (?)", [self.0])?;
        Err(Error::CpuBudgetExceeded {
            statement: 1,
            max_steps: 1,
        })
    }
}

/// A request that fails after committing part of its work is taken out of its group, which
/// runs again without it: its partial change is never stored, and the others are.
#[test]
fn a_request_failing_after_partial_commits_is_taken_out_of_the_group() {
    for layout in LAYOUTS {
        // Its first run (before the first commit) is a plain insert, so it queues as a write;
        // its run in the group commits a row and then fails.
        a_member_fails(
            layout,
            Gate::new(CommitsThenFails(50)),
            "cpu_budget_exceeded",
        );
    }
}

/// Succeeds as a plain insert on its first run (so it queues as a write), then runs `inner`.
struct Gate<W> {
    runs: u32,
    inner: W,
}

impl<W> Gate<W> {
    fn new(inner: W) -> Self {
        Self { runs: 0, inner }
    }
}

impl<W: Work<Output = Vec<StatementResult>>> Work for Gate<W> {
    type Output = Vec<StatementResult>;
    fn run(&mut self, conn: &mut rusqlite::Connection) -> Result<Self::Output, Error> {
        self.runs += 1;
        if self.runs == 1 {
            conn.execute("INSERT INTO t(n) VALUES (-1)", [])?;
            return Ok(vec![]);
        }
        self.inner.run(conn)
    }
}

/// Another isolate commits while the group's commit is in flight: the group loses the race,
/// runs again on the new version, and commits; the rival's write and every member's are kept.
#[test]
fn a_group_that_loses_the_race_runs_again_on_the_new_version() {
    for layout in LAYOUTS {
        let store = store_with_table(layout);
        let isolate = Isolate::new(&store.inner, layout, 64 << 20);
        // The rival isolate loads the same version and its commit reaches the store first.
        let rival = Isolate::new(&store.inner, layout, 0);
        let mut tasks = Tasks::new();
        store.park();
        let rival = tasks.spawn(rival.serve(insert(99)));
        let first = tasks.spawn(isolate.serve(insert(1)));
        let second = tasks.spawn(isolate.serve(insert(2)));
        assert_eq!(isolate.queues.waiting(&user()), 1);
        store.release();
        tasks.settle();
        let rival = tasks.answer(rival).unwrap();
        assert_eq!(rowid(&rival), 1);
        let first = tasks.answer(first).unwrap();
        assert_eq!(
            rowid(&first),
            2,
            "{layout:?}: not run again on the new version"
        );
        assert_eq!(first.0.db_info.stored.as_ref().unwrap().attempts, 2);
        assert_eq!(first.0.write_queue.unwrap().group_runs, 2);
        assert_eq!(rowid(&tasks.answer(second).unwrap()), 3);
        assert_eq!(stored_ns(&store.inner), [1, 2, 99], "{layout:?}");
    }
}

/// Reads are answered while a commit is in flight, from the last committed version.
#[test]
fn reads_never_wait_for_a_commit_in_flight() {
    for layout in LAYOUTS {
        let store = store_with_table(layout);
        let isolate = Isolate::new(&store.inner, layout, 64 << 20);
        let mut tasks = Tasks::new();
        store.park();
        let write = tasks.spawn(isolate.serve(insert(1)));
        let queued = tasks.spawn(isolate.serve(insert(2)));
        let read = tasks.spawn(isolate.serve(transaction(&[("SELECT count(*) FROM t", vec![])])));
        assert!(tasks.done(read), "{layout:?}: a read waited for a write");
        let (report, results) = tasks.answer(read).unwrap();
        assert_eq!(results[0].rows, [[Value::Integer(0)]]);
        assert!(report.write_queue.is_none());
        assert!(!tasks.done(write) && !tasks.done(queued));
        store.release();
        tasks.settle();
        assert!(tasks.answer(write).is_ok() && tasks.answer(queued).is_ok());
    }
}

/// A request cancelled while it leads a commit, or while it waits, never leaves the queue
/// stuck: the rest of its group is led by the next request, and each is acknowledged once
/// committed.
#[test]
fn a_cancelled_request_never_leaves_its_queue_stuck() {
    for layout in LAYOUTS {
        let store = store_with_table(layout);
        let isolate = Isolate::new(&store.inner, layout, 64 << 20);
        let mut tasks = Tasks::new();
        store.park();
        let [first, second, third, fourth] =
            [1, 2, 3, 4].map(|n| tasks.spawn(isolate.serve(insert(n))));
        // The first lands; the second leads the group [2, 3, 4] and is cancelled while its
        // commit is parked; the third is cancelled while it waits.
        store.release();
        store.park();
        tasks.settle();
        assert!(tasks.answer(first).is_ok());
        tasks.cancel(second);
        store.release();
        store.park();
        tasks.settle();
        // The third now leads [3, 4]; it is parked in its commit. Cancel a waiter instead.
        let fifth = tasks.spawn(isolate.serve(insert(5)));
        let sixth = tasks.spawn(isolate.serve(insert(6)));
        tasks.cancel(fifth);
        store.release();
        tasks.settle();
        for i in [third, fourth, sixth] {
            assert!(tasks.answer(i).is_ok(), "{layout:?}");
        }
        // The cancelled leader's commit was parked, so it never landed; the cancelled waiter
        // never ran.
        assert_eq!(stored_ns(&store.inner), [1, 3, 4, 6], "{layout:?}");
        let u = user();
        assert!(!isolate.queues.committing(&u) && isolate.queues.waiting(&u) == 0);
    }
}

/// A group that keeps losing races gives up at the retry deadline with a conflict, its
/// members' writes not stored.
#[test]
fn a_group_losing_every_race_gives_up_at_the_deadline_with_nothing_written() {
    let layout = Layout::Incremental;
    let store: &'static Store = Box::leak(Box::new(store_with_table(layout)));
    let isolate = Isolate::new(&store.inner, layout, 64 << 20);
    let rival: &'static Rival = Box::leak(Box::new(Rival {
        store,
        n: Cell::new(1000),
    }));
    let err = isolate.block_on(RacedInsert(rival, 5)).unwrap_err();
    assert_eq!(err.code(), "conflict");
    let slept_ms = isolate.clock.slept_ms();
    assert!(slept_ms > 0 && slept_ms < u64::from(isolate.ctx().retry.deadline_ms));
    let stored = stored_ns(&store.inner);
    assert!(!stored.contains(&5), "{stored:?}");
    assert!(!stored.is_empty());
}

/// Another isolate that commits a row of its own each time it is asked.
struct Rival {
    store: &'static Store,
    n: Cell<i64>,
}

impl Rival {
    fn commit(&self) {
        self.n.set(self.n.get() + 1);
        Isolate::new(&self.store.inner, Layout::Incremental, 0)
            .block_on(insert(self.n.get()))
            .unwrap();
    }
}

/// An insert during whose every run the rival commits, so its commit always loses.
struct RacedInsert(&'static Rival, i64);

impl Work for RacedInsert {
    type Output = Vec<StatementResult>;
    fn run(&mut self, conn: &mut rusqlite::Connection) -> Result<Self::Output, Error> {
        self.0.commit();
        let mut t = insert(self.1);
        t.run(conn)
    }
}

/// R2 refusing a commit for the rate (429) past a store call's own retries is retried at the
/// request's level, after jittered waits, until the deadline: the write is acknowledged once
/// R2 takes it. One that R2 keeps refusing past the deadline answers 503 with `Retry-After`
/// and nothing written.
#[test]
fn rate_limited_commits_are_retried_until_the_deadline_then_refused_with_nothing_written() {
    let plan = FaultPlan::new();
    let seeded = |puts: &[Fault]| {
        let store = HookStore::new(MemoryStore::new()).with(&plan);
        Isolate::new(&store, Layout::Single, 0)
            .block_on(create_table())
            .unwrap();
        plan.set(Operation::Put, puts);
        store
    };
    // Five 429s outlast one put's four repeats; the request runs again and gets through.
    let store = seeded(&[Fault::RateLimited; 6]);
    let (report, _) = Isolate::new(&store, Layout::Single, 0)
        .block_on(insert(7))
        .unwrap();
    assert_eq!(report.db_info.stored.as_ref().unwrap().attempts, 2);
    assert_eq!(plan.fired(Operation::Put, Fault::RateLimited), 6);
    let stored = store.inner.bytes("a/database.sqlite").unwrap();
    assert_eq!(row_counts(&stored), [("t".to_owned(), 1)]);

    // R2 never takes it: refused at the deadline, nothing written.
    drop(store);
    let store = seeded(&[Fault::RateLimited; 1000]);
    let before = store.inner.bytes("a/database.sqlite").unwrap();
    let isolate = Isolate::new(&store, Layout::Single, 0);
    let err = isolate.block_on(insert(7)).unwrap_err();
    assert_eq!((err.status(), err.code()), (503, "storage_unavailable"));
    assert!(err.retry_after_s().is_some() && err.nothing_written());
    let (slept_ms, deadline_ms) = (
        isolate.clock.slept_ms(),
        u64::from(isolate.ctx().retry.deadline_ms),
    );
    assert!(slept_ms >= deadline_ms / 2);
    assert!(slept_ms < deadline_ms + 5_000);
    assert_eq!(store.inner.bytes("a/database.sqlite").unwrap(), before);
}

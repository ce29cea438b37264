//! The isolate's write queue per user, and group commit.
//!
//! Every request first runs as it always did: load, run the work. One that changed nothing is
//! a read and is answered at once: reads never wait for writes. One that wrote becomes the
//! *leader* if no commit of its user is in flight in this isolate, and saves as before.
//! Otherwise its run is thrown away and the request queues; one whose statements say it writes
//! ([`Work::writes`]) and that finds a commit in flight queues at once, without that run (its
//! load would take the cached copy the next group loads from). When a commit finishes, the
//! first queued request leads the next *group*: every request queued by then, in arrival
//! order, each run on the newest version of the database, one after the other, then saved
//! together in one commit (one delta and one manifest put, or one put of the file). A request
//! whose work fails is answered with its own error and leaves no trace: its work rolled back
//! its own transaction, and a work that failed after committing part of itself is taken out
//! of the group, which then runs again without it. Each request gets its own results, and
//! only after the commit holding its write succeeded. A commit that loses the race to another
//! isolate runs the whole group again on the new version, with jittered backoff, until the
//! retry deadline; then every member gets [`Error::Conflict`] and nothing of theirs is stored.
//!
//! Plain Rust over the pipeline's steps; the runtime keeps one [`WriteQueues`] per isolate.
//! Requests are futures on one thread, so the queue is plain `RefCell`s, and waiting is a
//! future woken by whoever finished the commit.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use rusqlite::Connection;

use crate::admission::{self, Reservation};
use crate::clock::Clock;
use crate::error::Error;
use crate::pipeline::{self, Context, Loaded, Queried, Saved, Work};
use crate::report::{QueueInfo, Report};
use crate::request::{SaveMode, UserId};
use crate::sqlite;
use crate::storage::ObjectStore;

/// Most requests one commit holds; more wait for the next one (bounds a commit's CPU time
/// and the delta it uploads).
pub const MAX_GROUP: usize = 64;

/// Every user's queue in this isolate.
#[derive(Default)]
pub struct WriteQueues {
    users: RefCell<HashMap<String, Rc<UserQueue>>>,
    /// Waiting requests look at their turn on timers of their own, at most this many
    /// milliseconds apart, instead of being woken by the request that finished the commit
    /// (see [`WriteQueues::polling`]).
    poll_max_ms: Option<u32>,
}

impl std::fmt::Debug for WriteQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueues")
            .field("users", &self.users.borrow().len())
            .finish()
    }
}

impl WriteQueues {
    /// No queues yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// No queues yet; a waiting request looks at its turn on its own timers (1 ms, doubling
    /// up to `max_ms`). For the Workers runtime: code resumed by another request's wake-up
    /// runs in that request's I/O context (and fails on its own streams), and a request
    /// awaiting only another request's work is cancelled as hung.
    #[must_use]
    pub fn polling(max_ms: u32) -> Self {
        Self {
            poll_max_ms: Some(max_ms),
            ..Self::default()
        }
    }

    /// Requests of `user` waiting for a commit (not counting the group being committed).
    #[must_use]
    pub fn waiting(&self, user: &UserId) -> usize {
        self.users
            .borrow()
            .get(user.as_str())
            .map_or(0, |q| q.pending.borrow().len())
    }

    /// Whether a commit of `user` is in flight in this isolate.
    #[must_use]
    pub fn committing(&self, user: &UserId) -> bool {
        self.users
            .borrow()
            .get(user.as_str())
            .is_some_and(|q| q.busy.get())
    }

    fn queue(&self, user: &UserId) -> Rc<UserQueue> {
        Rc::clone(
            self.users
                .borrow_mut()
                .entry(user.as_str().to_owned())
                .or_default(),
        )
    }

    /// Runs `step` holding `user`'s commit slot in this isolate: no group commits while it
    /// runs, and writes that arrive meanwhile queue behind it (they then run on the state it
    /// leaves). For a move's freeze, which is a write of its own: without the slot it loses
    /// every race to back-to-back group commits. New writers queue as soon as it asks, so a
    /// steady stream of them cannot starve it; it waits only for the commit in flight.
    pub async fn exclusive<C: Clock, T>(
        &self,
        user: &UserId,
        clock: &C,
        step: impl AsyncFnOnce() -> T,
    ) -> T {
        let queue = self.queue(user);
        queue.reserved.set(queue.reserved.get() + 1);
        let mut ms = 1;
        while queue.busy.get() {
            clock.sleep(ms).await;
            ms = (ms * 2).min(self.poll_max_ms.unwrap_or(16).max(1));
        }
        queue.busy.set(true);
        struct Release<'q>(&'q UserQueue);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.reserved.set(self.0.reserved.get() - 1);
                self.0.hand_over();
            }
        }
        let release = Release(&queue);
        let out = step().await;
        drop(release);
        drop(queue);
        self.tidy(user);
        out
    }

    /// Forgets `user`'s queue once no request holds it (the map stays small). Not before: a
    /// request still loading would go on with a queue that the next request no longer finds,
    /// and the two would lead commits of one user in one isolate at once.
    fn tidy(&self, user: &UserId) {
        let mut users = self.users.borrow_mut();
        if users
            .get(user.as_str())
            .is_some_and(|q| Rc::strong_count(q) == 1)
        {
            users.remove(user.as_str());
        }
    }
}

/// One user's queue.
#[derive(Default)]
struct UserQueue {
    /// A leader holds the user's commit slot.
    busy: Cell<bool>,
    /// Exclusive steps ([`WriteQueues::exclusive`]) waiting for or holding the slot: while
    /// any is, the slot is not handed to queued writers and new writers queue.
    reserved: Cell<u32>,
    /// Requests waiting for the next group, in arrival order.
    pending: RefCell<VecDeque<Rc<dyn Member>>>,
}

impl UserQueue {
    /// A commit is in flight, or an exclusive step holds or waits for the slot: a write
    /// arriving now queues.
    fn taken(&self) -> bool {
        self.busy.get() || self.reserved.get() > 0
    }

    /// The slot passes to the first waiting request, or is freed.
    fn hand_over(&self) {
        if self.reserved.get() > 0 {
            // An exclusive step goes first; it hands over when it is done.
            self.busy.set(false);
            return;
        }
        let next = self.pending.borrow_mut().pop_front();
        match next {
            Some(next) => next.wake(Turn::Lead),
            None => self.busy.set(false),
        }
    }
}

/// Where a queued request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// In the queue.
    Waiting,
    /// Its turn to lead a group.
    Lead,
    /// Its group committed or failed; its answer is in its slot.
    Done,
}

/// How one run of a member's work went.
enum Ran {
    /// The work succeeded; its output is kept in the slot.
    Ok,
    /// The work failed and left the database as it found it.
    Failed,
    /// The work failed after committing part of itself: the image holds changes of a request
    /// that will be refused.
    FailedAfterChanges,
}

/// A queued request, whatever its work's output type.
trait Member {
    /// Runs the work on `conn`, keeping its output (or error) for the answer.
    fn run(&self, conn: &mut Connection, clock: &dyn Fn() -> f64) -> Ran;
    /// The group is over: `report` is its commit's report, or the error that ended it.
    fn conclude(&self, report: Result<&Report, &Error>, info: QueueInfo);
    /// Wakes the request's future with `turn`.
    fn wake(&self, turn: Turn);
    /// When the request joined the queue (the clock's `now_ms`).
    fn queued_at_ms(&self) -> f64;
    /// Where it stands.
    fn turn(&self) -> Turn;
    /// The request asked for `save=always`: its group is saved even if nothing changed.
    fn save_always(&self) -> bool;
}

/// A request's answer: its report and its work's output.
type Answer<W> = Result<(Report, <W as Work>::Output), Error>;

/// What a request's future and the queue share.
struct Slot<W: Work> {
    work: RefCell<W>,
    /// The latest run's result.
    ran: RefCell<Option<Result<W::Output, Error>>>,
    /// The answer, once the group is over.
    answer: RefCell<Option<Answer<W>>>,
    turn: Cell<Turn>,
    waker: RefCell<Option<Waker>>,
    query_ms: Cell<f64>,
    queued_at_ms: f64,
    save_always: bool,
    /// The request's memory reservation: its results are charged to it in every run.
    memory: Option<Rc<Reservation>>,
}

impl<W: Work> Slot<W> {
    /// The slot of a request arriving now with `work`, saved as `mode` says, its results
    /// charged to the request's memory reservation.
    fn of_request<S, C: Clock>(ctx: &Context<'_, S, C>, mode: SaveMode, work: W) -> Rc<Self> {
        Rc::new(Self {
            work: RefCell::new(work),
            ran: RefCell::new(None),
            answer: RefCell::new(None),
            turn: Cell::new(Turn::Waiting),
            waker: RefCell::new(None),
            query_ms: Cell::new(0.0),
            queued_at_ms: ctx.clock.now_ms(),
            save_always: mode == SaveMode::Always,
            memory: ctx.memory.cloned(),
        })
    }
}

impl<W: Work> Member for Slot<W> {
    fn run(&self, conn: &mut Connection, now_ms: &dyn Fn() -> f64) -> Ran {
        let before = sqlite::change_counter(conn).ok();
        let start = now_ms();
        let result = admission::charging(self.memory.as_ref(), || self.work.borrow_mut().run(conn));
        self.query_ms.set(now_ms() - start);
        let ran = match &result {
            Ok(_) => Ran::Ok,
            Err(_) => {
                let changed = !conn.is_autocommit()
                    || before.is_none()
                    || sqlite::change_counter(conn).ok() != before;
                if changed {
                    Ran::FailedAfterChanges
                } else {
                    Ran::Failed
                }
            }
        };
        *self.ran.borrow_mut() = Some(result);
        ran
    }

    fn conclude(&self, report: Result<&Report, &Error>, info: QueueInfo) {
        let ran = self.ran.borrow_mut().take();
        let answer = match (report, ran) {
            (Ok(report), Some(Ok(output))) => {
                let mut report = report.clone();
                report.timing_breakdown.query_ms = crate::delay::round2(self.query_ms.get());
                report.write_queue = Some(info);
                Ok((report, output))
            }
            (Ok(_), Some(Err(e))) => Err(e),
            (Err(e), _) => Err(e.clone()),
            (Ok(_), None) => Err(Error::Internal {
                detail: "a queued request was concluded without having run".into(),
            }),
        };
        *self.answer.borrow_mut() = Some(answer);
        self.wake(Turn::Done);
    }

    fn wake(&self, turn: Turn) {
        self.turn.set(turn);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn queued_at_ms(&self) -> f64 {
        self.queued_at_ms
    }

    fn turn(&self) -> Turn {
        self.turn.get()
    }

    fn save_always(&self) -> bool {
        self.save_always
    }
}

/// Resolves when the slot's turn is no longer [`Turn::Waiting`].
struct Wait<'a, W: Work>(&'a Slot<W>);

impl<W: Work> Future for Wait<'_, W> {
    type Output = Turn;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Turn> {
        match self.0.turn.get() {
            Turn::Waiting => {
                *self.0.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
            turn => Poll::Ready(turn),
        }
    }
}

/// Waits until the slot's turn comes: woken by whoever changed it, or, with `poll_max_ms`,
/// looking on timers of its own (see [`WriteQueues::polling`]).
async fn wait_turn<W: Work, C: Clock>(slot: &Slot<W>, clock: &C, poll_max_ms: Option<u32>) -> Turn {
    let Some(max_ms) = poll_max_ms else {
        return Wait(slot).await;
    };
    let mut ms = 1;
    loop {
        let turn = slot.turn.get();
        if turn != Turn::Waiting {
            return turn;
        }
        clock.sleep(ms).await;
        ms = (ms * 2).min(max_ms);
    }
}

/// Keeps the queue moving if a request's future is dropped while it waits or leads (the
/// runtime cancelled it): its group is handed to the next request, never left stuck.
struct Guard<'q> {
    queue: &'q UserQueue,
    /// The group this request leads, not yet concluded.
    group: Vec<Rc<dyn Member>>,
    /// This request's own slot while it waits.
    waiting: Option<Rc<dyn Member>>,
    /// This request holds the commit slot.
    leading: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(me) = self.waiting.take() {
            self.queue
                .pending
                .borrow_mut()
                .retain(|m| !Rc::ptr_eq(m, &me));
            // Handed the slot but gone before taking it up: pass it on.
            if me.turn() == Turn::Lead {
                self.queue.hand_over();
            }
            return;
        }
        if !self.leading {
            return;
        }
        // The rest of the unfinished group goes back to the front of the queue, in order
        // (this request's own write goes with its future: it was never acknowledged), and
        // the first of them leads it.
        {
            let mut pending = self.queue.pending.borrow_mut();
            for m in self.group.drain(..).skip(1).rev() {
                pending.push_front(m);
            }
        }
        self.queue.hand_over();
    }
}

/// Serves one request's `work` on the R2 route, saved as `mode` says, through `user`'s write
/// queue in `queues` (see the module docs): a write is a request that changed the database or
/// asked for `save=always`; `save=never` never queues. Answers like [`pipeline::serve`], plus
/// the report's `write_queue` for a write.
///
/// # Errors
/// The work's own error; the load's or the save's, for every member of the group; or
/// [`Error::Conflict`] when the group kept losing races until the retry deadline.
pub async fn serve<S: ObjectStore, C: Clock, W: Work + 'static>(
    ctx: &Context<'_, S, C>,
    queues: &WriteQueues,
    user: &UserId,
    mode: SaveMode,
    work: W,
) -> Result<(Report, W::Output), Error> {
    let queue = queues.queue(user);
    let answer = serve_in(ctx, &queue, queues.poll_max_ms, user, mode, work).await;
    drop(queue);
    queues.tidy(user);
    answer
}

async fn serve_in<S: ObjectStore, C: Clock, W: Work + 'static>(
    ctx: &Context<'_, S, C>,
    queue: &UserQueue,
    poll_max_ms: Option<u32>,
    user: &UserId,
    mode: SaveMode,
    mut work: W,
) -> Result<(Report, W::Output), Error> {
    if queue.taken() && mode != SaveMode::Never && (mode == SaveMode::Always || work.writes()) {
        // A write behind a commit in flight: it queues at once. A run of its own now would be
        // thrown away, and its load would take the cached copy the next group loads from.
        return queue_behind(ctx, queue, poll_max_ms, user, mode, work).await;
    }
    let loaded = pipeline::load(ctx, user).await?;
    let mut queried = pipeline::query(ctx, user, loaded, &mut work)?;
    let write = match mode {
        SaveMode::Always => true,
        SaveMode::Auto => queried.changed,
        SaveMode::Never => false,
    };
    if !write {
        // A read: answered now, whatever is queued or committing.
        let size_bytes = sqlite::export(&mut queried.loaded.conn)?.len() as u64;
        let saved = Saved::Skipped { size_bytes };
        return Ok(pipeline::answer(ctx, user, queried, saved, mode, 1));
    }
    if queue.taken() {
        // Its run is thrown away (the copy is never cached): the group runs it again on the
        // version the commit in flight leaves.
        drop(queried);
        return queue_behind(ctx, queue, poll_max_ms, user, mode, work).await;
    }
    let slot = Slot::of_request(ctx, mode, work);
    let first = {
        queue.busy.set(true);
        let Queried {
            loaded,
            output,
            tables,
            changed,
            query_ms,
        } = queried;
        *slot.ran.borrow_mut() = Some(Ok(output));
        slot.query_ms.set(query_ms);
        Executed {
            loaded,
            tables,
            changed,
            query_ms,
        }
    };
    lead(ctx, queue, user, slot, Some(first)).await
}

/// Queues a write behind the commit in flight; when its turn comes it leads the next group
/// (or its group is already over and its answer is in).
async fn queue_behind<S: ObjectStore, C: Clock, W: Work + 'static>(
    ctx: &Context<'_, S, C>,
    queue: &UserQueue,
    poll_max_ms: Option<u32>,
    user: &UserId,
    mode: SaveMode,
    work: W,
) -> Result<(Report, W::Output), Error> {
    let slot = Slot::of_request(ctx, mode, work);
    let me: Rc<dyn Member> = Rc::clone(&slot) as Rc<dyn Member>;
    let mut guard = Guard {
        queue,
        group: Vec::new(),
        waiting: Some(Rc::clone(&me)),
        leading: false,
    };
    queue.pending.borrow_mut().push_back(me);
    let turn = wait_turn(&slot, ctx.clock, poll_max_ms).await;
    guard.waiting = None;
    drop(guard);
    if turn == Turn::Done {
        return take_answer(&slot);
    }
    lead(ctx, queue, user, slot, None).await
}

/// Leads a group holding the user's commit slot: this request (its first run given, or run
/// with the group), then every request queued by now, committed together; answers every
/// member, hands the slot on, and returns this request's answer.
async fn lead<S: ObjectStore, C: Clock, W: Work + 'static>(
    ctx: &Context<'_, S, C>,
    queue: &UserQueue,
    user: &UserId,
    slot: Rc<Slot<W>>,
    first: Option<Executed>,
) -> Result<(Report, W::Output), Error> {
    let me: Rc<dyn Member> = Rc::clone(&slot) as Rc<dyn Member>;
    let mut guard = Guard {
        queue,
        group: Vec::new(),
        waiting: None,
        leading: true,
    };
    guard.group.push(me);
    {
        let mut pending = queue.pending.borrow_mut();
        let more = pending.len().min(MAX_GROUP - 1);
        guard.group.extend(pending.drain(..more));
    }
    let started_ms = ctx.clock.now_ms();
    let (committed, runs) = commit_group(ctx, user, &guard.group, first).await;
    let group = std::mem::take(&mut guard.group);
    guard.leading = false;
    for (position, member) in group.iter().enumerate() {
        let info = QueueInfo {
            group_size: u32::try_from(group.len()).unwrap_or(u32::MAX),
            position: u32::try_from(position).unwrap_or(u32::MAX),
            queued_ms: crate::delay::round2((started_ms - member.queued_at_ms()).max(0.0)),
            group_runs: runs,
        };
        member.conclude(committed.as_ref(), info);
    }
    queue.hand_over();
    drop(guard);
    take_answer(&slot)
}

fn take_answer<W: Work>(slot: &Slot<W>) -> Answer<W> {
    slot.answer.borrow_mut().take().unwrap_or_else(|| {
        Err(Error::Internal {
            detail: "a queued request woke without an answer".into(),
        })
    })
}

/// One run of a group (or the leader's own first run): the image after every member's work.
struct Executed {
    loaded: Loaded,
    tables: Vec<String>,
    changed: bool,
    query_ms: f64,
}

/// Commits `group` as one write: the leader's first run if given, else a run of every member
/// on the newest version; runs again after a lost race (jittered backoff) until the retry
/// deadline. Returns the commit's report (the members' outputs are in their slots) and how
/// many times the group ran.
async fn commit_group<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    group: &[Rc<dyn Member>],
    mut first: Option<Executed>,
) -> (Result<Report, Error>, u32) {
    let start = ctx.clock.now_ms();
    let mode = if group.iter().any(|m| m.save_always()) {
        SaveMode::Always
    } else {
        SaveMode::Auto
    };
    // Members taken out of the group: they failed after committing part of their work.
    let mut out = vec![false; group.len()];
    let mut runs = 0;
    loop {
        runs += 1;
        let attempt = async {
            let executed = match first.take() {
                Some(e) => e,
                None => run_group(ctx, user, group, &mut out).await?,
            };
            let mut queried = Queried {
                loaded: executed.loaded,
                output: (),
                tables: executed.tables,
                changed: executed.changed,
                query_ms: executed.query_ms,
            };
            let saved = pipeline::save(ctx, user, &mut queried, mode).await?;
            Ok::<_, Error>((queried, saved))
        };
        let lost = match attempt.await {
            Ok((_, Saved::Conflict)) => Error::Conflict { attempts: runs },
            // R2 kept refusing for the rate, or failing, with nothing written: as good as a
            // lost race.
            Err(Error::StorageUnavailable(e)) if e.is_retryable() && !e.write_outcome_unknown => {
                Error::StorageUnavailable(e)
            }
            Err(e) => return (Err(e), runs),
            Ok((queried, saved)) => {
                let (report, ()) = pipeline::answer(ctx, user, queried, saved, mode, runs);
                return (Ok(report), runs);
            }
        };
        match ctx.retry.rerun_wait_ms(runs, ctx.clock.now_ms() - start) {
            Some(wait) => ctx.clock.sleep(wait).await,
            None => return (Err(lost), runs),
        }
    }
}

/// Loads the newest version and runs every member still in the group on it, in order. A
/// member that fails after committing part of its work is taken out (`out`) and the group
/// runs again without it, on a fresh load: its changes must not be saved.
async fn run_group<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    group: &[Rc<dyn Member>],
    out: &mut [bool],
) -> Result<Executed, Error> {
    'load: loop {
        let mut loaded = pipeline::load(ctx, user).await?;
        let start = ctx.clock.now_ms();
        let now_ms = || ctx.clock.now_ms();
        for (member, out) in group.iter().zip(out.iter_mut()) {
            if *out {
                continue;
            }
            match member.run(&mut loaded.conn, &now_ms) {
                Ran::Ok | Ran::Failed => {}
                Ran::FailedAfterChanges => {
                    *out = true;
                    continue 'load;
                }
            }
        }
        let query_ms = ctx.clock.now_ms() - start;
        let tables = sqlite::list_tables(&loaded.conn)?;
        let changed = !loaded.conn.is_autocommit()
            || sqlite::change_counter(&mut loaded.conn)
                .map_or(true, |after| after != loaded.change_counter);
        return Ok(Executed {
            loaded,
            tables,
            changed,
            query_ms,
        });
    }
}

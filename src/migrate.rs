//! Moving a user between R2 and their Durable Object, with nothing lost.
//!
//! Where a user is served is recorded on the R2 object itself (`route` metadata), so every
//! request that loads it learns it for free (a cache hit's conditional get carries the
//! metadata too). A move is three conditional writes of the same object:
//!
//! 1. **freeze**: the same bytes with `route=moving`, `If-Match` the version read. From then on
//!    every R2-route request answers 503 `migrating` (retryable), and a writer that loaded the
//!    version before fails its own conditional put, re-runs, and meets the freeze.
//! 2. **copy**: the Durable Object imports exactly that version.
//! 3. **switch**: the same bytes with `route=durable_object`, `If-Match` the frozen version;
//!    if the copy failed, the freeze is lifted instead.
//!
//! Back to R2, the object freezes itself (its queries answer `migrating`), exports one SQLite
//! file, stores it `If-Match` the version that says `durable_object` (which clears `route`),
//! and stops accepting queries. The R2 object is kept while the user lives in the object:
//! it is the state at the move, and the answer says how old it is.

use serde::Serialize;

use crate::clock::Clock;
use std::collections::HashMap;

use crate::context::Context;
use crate::error::Error;
use crate::import::{self, ExportReport, ImportReport, SqlTarget};
use crate::request::UserId;
use crate::storage::keys::Home;
pub use crate::storage::moves::ExportStep;
use crate::storage::moves::{self, fetch_frozen, head_of, publish_export};
use crate::storage::{DB_VERSION_KEY, ObjectHead, ObjectStore, WRITE_ID_KEY};

/// The R2 object left behind by a move to the Durable Object.
#[derive(Debug, Clone, Serialize)]
pub struct KeptObject {
    /// Its entity tag now.
    pub etag: String,
    /// Its `db-version`: when its contents were last written.
    pub db_version: Option<String>,
    /// How long ago that was, in ms: the age of the copy kept in R2.
    pub age_ms: Option<u64>,
    /// Its size.
    pub size_bytes: u64,
}

/// What a move to the Durable Object did.
#[derive(Debug, Clone, Serialize)]
pub struct MovedToDurableObject {
    /// Always `durable_object`.
    pub route: &'static str,
    /// The import's own report (every table verified, what was not copied and why).
    pub import: serde_json::Value,
    /// The R2 object, kept as it was at the move.
    pub r2_object: KeptObject,
}

/// Times a move tries to freeze the object before giving up to its writers.
const FREEZE_ATTEMPTS: u32 = 20;

/// Moves `user` to their Durable Object: freeze, `import` (the object copies the frozen
/// version from R2), switch. A failed import lifts the freeze and is the error.
pub async fn to_durable_object<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    import: impl AsyncFnOnce() -> Result<serde_json::Value, Error>,
) -> Result<MovedToDurableObject, Error> {
    // The freeze races the user's writers; it re-reads and tries again until it wins.
    let mut attempt = 0;
    let (bytes, version, frozen, write_id) = loop {
        attempt += 1;
        match moves::freeze(ctx, user).await {
            Err(Error::Conflict { .. }) if attempt < FREEZE_ATTEMPTS => {
                ctx.clock.sleep(ctx.retry.base_backoff_ms / 5).await;
            }
            Err(Error::Conflict { .. }) => {
                return Err(Error::Conflict { attempts: attempt });
            }
            // Frozen already, by a move that never finished: this one takes it over.
            Err(Error::Migrating) => match moves::resume_frozen(ctx, user).await {
                Err(Error::Conflict { .. }) if attempt < FREEZE_ATTEMPTS => {}
                other => break other?,
            },
            other => break other?,
        }
    };
    let bytes = bytes.bytes();
    match import().await {
        Ok(report) => {
            let etag = moves::set_route(
                ctx,
                user,
                bytes,
                &write_id,
                version.as_deref(),
                Home::DurableObject,
                frozen,
            )
            .await?;
            let age_ms = version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| ctx.clock.epoch_ms().saturating_sub(v));
            Ok(MovedToDurableObject {
                route: "durable_object",
                import: report,
                r2_object: KeptObject {
                    etag,
                    db_version: version,
                    age_ms,
                    size_bytes: bytes.len() as u64,
                },
            })
        }
        Err(e) => {
            // Best effort: if lifting the freeze fails too, the object stays frozen (writes
            // refused, retryable), which loses nothing; a later move or an operator lifts it.
            let _ = moves::set_route(
                ctx,
                user,
                bytes,
                &write_id,
                version.as_deref(),
                Home::R2,
                frozen,
            )
            .await;
            Err(e)
        }
    }
}

/// Where a user's Durable Object stands in the moves, kept in the object's own storage. It
/// serves queries only when `Active`; each step of a move checks it and the route R2 records
/// before doing anything, so no step runs out of order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectState {
    /// Nothing was ever imported here.
    Empty,
    /// An import is copying, or stopped while copying: not serving.
    Importing,
    /// Holds the object frozen by the move whose write id this is; serves once R2 says that
    /// move switched the route (`route=durable_object`, same write id).
    Imported {
        /// The move's write id (its freeze and switch carry it).
        write_id: String,
    },
    /// The user lives here.
    Active,
    /// Writing the database back to R2 as this write id, or stopped while doing so: not
    /// serving.
    Exporting {
        /// The export's write id.
        write_id: String,
    },
    /// Moved back to R2: not serving.
    Exported,
}

impl ObjectState {
    /// Reads the stored form; `legacy_active` is the flag older objects kept instead.
    #[must_use]
    pub fn parse(stored: Option<&str>, legacy_active: Option<bool>) -> Self {
        let (kind, id) = stored.map_or(("", ""), |s| s.split_once(':').unwrap_or((s, "")));
        let write_id = id.to_owned();
        match kind {
            "importing" => Self::Importing,
            "imported" => Self::Imported { write_id },
            "active" => Self::Active,
            "exporting" => Self::Exporting { write_id },
            "exported" => Self::Exported,
            _ => match legacy_active {
                Some(true) => Self::Active,
                Some(false) => Self::Exported,
                None => Self::Empty,
            },
        }
    }

    /// The stored form.
    #[must_use]
    pub fn encode(&self) -> String {
        match self {
            Self::Empty => "empty".into(),
            Self::Importing => "importing".into(),
            Self::Imported { write_id } => format!("imported:{write_id}"),
            Self::Active => "active".into(),
            Self::Exporting { write_id } => format!("exporting:{write_id}"),
            Self::Exported => "exported".into(),
        }
    }
}

fn out_of_order(reason: impl Into<String>) -> Error {
    Error::MoveOutOfOrder {
        reason: reason.into(),
    }
}

/// Whether an import may copy the R2 object whose metadata is `r2` into an object in
/// `state`: only a user frozen for a move (`route=moving`), and never over a live database.
/// Returns the move's write id, which the object keeps until the move switches.
pub fn check_import(state: &ObjectState, r2: &HashMap<String, String>) -> Result<String, Error> {
    match Home::of(r2) {
        Home::Moving => {}
        Home::DurableObject => {
            return Err(out_of_order(
                "the user lives in their Durable Object already; importing again would drop \
                 the writes it holds (move back first: POST /migrate?to=r2)",
            ));
        }
        Home::R2 => {
            return Err(out_of_order(
                "the user lives in R2 and is not frozen for a move; an import is a step of \
                 POST /migrate?to=durable_object, which stops R2 writes first",
            ));
        }
    }
    if matches!(state, ObjectState::Active | ObjectState::Exporting { .. }) {
        return Err(out_of_order(
            "the Durable Object holds this user's live database; importing would drop its \
             writes",
        ));
    }
    Ok(r2.get(WRITE_ID_KEY).cloned().unwrap_or_default())
}

/// Whether an object in `state` serves a query, given the user's R2 object `r2` (looked at
/// only for an `Imported` object, which becomes `Active` once R2 shows its move switched).
/// `Ok(true)`: serve, and store `Active` first.
pub fn check_serving(
    state: &ObjectState,
    user: &UserId,
    r2: Option<&HashMap<String, String>>,
) -> Result<bool, Error> {
    match state {
        ObjectState::Active => Ok(false),
        ObjectState::Empty => Err(Error::UserNotFound {
            user: user.as_str().to_owned(),
            place: "the Durable Object (move it there first: POST /migrate?to=durable_object)",
        }),
        ObjectState::Imported { write_id } => match r2 {
            Some(m)
                if Home::of(m) == Home::DurableObject && m.get(WRITE_ID_KEY) == Some(write_id) =>
            {
                Ok(true)
            }
            Some(m) if Home::of(m) == Home::Moving => Err(Error::Migrating),
            _ => Err(out_of_order(
                "the move that imported into this Durable Object did not complete; the user \
                 lives in R2",
            )),
        },
        // After a move back, a request routed here before it must go to R2: retry.
        ObjectState::Importing | ObjectState::Exporting { .. } | ObjectState::Exported => {
            Err(Error::Migrating)
        }
    }
}

/// What a move back to R2 may do from `state`, given R2's object `r2`: only a user who lives
/// in the object goes back, once; a second move back, a move of a user who never came here
/// and an export while R2 serves the user are refused, writing nothing.
pub fn check_export(
    state: &ObjectState,
    user: &UserId,
    r2: Option<&ObjectHead>,
    new_write_id: &str,
) -> Result<ExportStep, Error> {
    let lives_here = |h: &ObjectHead| Home::of(&h.metadata) == Home::DurableObject;
    let db_version = |h: &ObjectHead| {
        h.metadata
            .get(DB_VERSION_KEY)
            .and_then(|v| v.parse::<u64>().ok())
    };
    let publish = |h: &ObjectHead, write_id: &str| ExportStep::Publish {
        write_id: write_id.to_owned(),
        etag: h.etag.clone(),
        db_version: db_version(h),
    };
    let elsewhere = |h: Option<&ObjectHead>| {
        out_of_order(format!(
            "the user's R2 object says route={}: the user does not live in their Durable \
             Object, so there is nothing to move back",
            h.map_or("(no object)", |h| Home::of(&h.metadata).as_str())
        ))
    };
    match (state, r2) {
        (ObjectState::Empty, _) => Err(Error::UserNotFound {
            user: user.as_str().to_owned(),
            place: "the Durable Object (nothing was ever moved there)",
        }),
        (ObjectState::Exported, _) => Err(out_of_order(
            "the user was moved back to R2 already; nothing was written",
        )),
        (ObjectState::Importing, _) => Err(out_of_order(
            "the Durable Object's import never completed; the user lives in R2",
        )),
        (ObjectState::Active, Some(h)) if lives_here(h) => Ok(publish(h, new_write_id)),
        (ObjectState::Imported { write_id }, Some(h))
            if lives_here(h) && h.metadata.get(WRITE_ID_KEY) == Some(write_id) =>
        {
            Ok(publish(h, new_write_id))
        }
        (ObjectState::Exporting { write_id }, Some(h)) if lives_here(h) => Ok(publish(h, write_id)),
        (ObjectState::Exporting { write_id }, Some(h))
            if h.metadata.get(WRITE_ID_KEY) == Some(write_id) =>
        {
            Ok(ExportStep::AlreadyPublished {
                etag: h.etag.clone(),
                db_version: db_version(h),
            })
        }
        (_, h) => Err(elsewhere(h)),
    }
}

/// A user's Durable Object as the moves see it: where it stands and its SQL. The runtime
/// implements it over the object's storage; host tests over a rusqlite connection.
#[allow(async_fn_in_trait)] // used with concrete types only; no Send bound wanted on wasm
pub trait ObjectHome {
    /// The object's SQL storage.
    type Sql<'a>: SqlTarget
    where
        Self: 'a;
    /// Its state (`Empty` if never set).
    async fn state(&self) -> Result<ObjectState, Error>;
    /// Stores its state; durable before it returns.
    async fn set_state(&self, state: &ObjectState) -> Result<(), Error>;
    /// Its SQL storage.
    fn sql(&self) -> Self::Sql<'_>;
}

/// The import step of a move, inside the object: copies the object R2 holds frozen for a move
/// (refusing any other, and never over a live database), verified by content. The object
/// serves nothing until the move's switch is seen ([`ensure_serving`]); a failed or refused
/// copy leaves it not serving, and the move lifts the freeze.
pub async fn import_here<S: ObjectStore, C: Clock, H: ObjectHome>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    home: &H,
    allow_loss: bool,
) -> Result<ImportReport, Error> {
    let state = home.state().await?;
    let (object, write_id) = fetch_frozen(ctx, user, |r2| check_import(&state, r2)).await?;
    let loaded = crate::sqlite::load_body(object.body).await?;
    // The object stops serving before anything in it changes, and stays so if this stops.
    home.set_state(&ObjectState::Importing).await?;
    let report = import::run(&loaded.conn, &home.sql(), allow_loss)?;
    if !report.verified {
        return Err(Error::Internal {
            detail: format!("import did not verify: {report:?}"),
        });
    }
    home.set_state(&ObjectState::Imported { write_id }).await?;
    Ok(report)
}

/// Whether the object may serve a query now: `Active`, or `Imported` and R2 shows the move
/// switched (then it becomes `Active`); otherwise the error to answer.
pub async fn ensure_serving<S: ObjectStore, C: Clock, H: ObjectHome>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    home: &H,
) -> Result<(), Error> {
    let state = home.state().await?;
    let head = match state {
        ObjectState::Imported { .. } => head_of(ctx, user).await?,
        _ => None,
    };
    if check_serving(&state, user, head.as_ref().map(|h| &h.metadata))? {
        home.set_state(&ObjectState::Active).await?;
    }
    Ok(())
}

/// What a move back stored in R2.
#[derive(Debug)]
pub struct Exported {
    /// The export's own report (each table verified by content).
    pub report: ExportReport,
    /// The R2 object's new entity tag.
    pub etag: String,
    /// Its `db-version`.
    pub db_version: u64,
    /// Its size.
    pub size_bytes: u64,
}

/// The move back, inside the object: only for a user who lives here (R2 says so too), once.
/// The object stops serving, exports one SQLite file verified table by table by content, and
/// stores it `If-Match` R2's object; then it serves no more. Stopped at any step, it loses
/// nothing: before the put it serves again, after an unknown outcome it stays frozen and a
/// repeated move back finishes the job (recognising its own write id).
pub async fn export_here<S: ObjectStore, C: Clock, H: ObjectHome>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    home: &H,
) -> Result<Exported, Error> {
    let state = home.state().await?;
    let head = head_of(ctx, user).await?;
    let write_id = format!("{:016x}-export", ctx.nonce);
    let step = check_export(&state, user, head.as_ref(), &write_id)?;
    let ExportStep::Publish { write_id, .. } = &step else {
        home.set_state(&ObjectState::Exported).await?;
        let report = ExportReport {
            tables: Vec::new(),
            created: Vec::new(),
            counters: Vec::new(),
            verified: true,
        };
        let (etag, db_version) = publish_export(ctx, user, &[], &step).await?;
        return Ok(Exported {
            report,
            etag,
            db_version,
            size_bytes: 0,
        });
    };
    home.set_state(&ObjectState::Exporting {
        write_id: write_id.clone(),
    })
    .await?;
    let mut conn = crate::sqlite::create()?;
    let report = match import::export_into(&home.sql(), &conn) {
        Ok(report) if report.verified => report,
        failed => {
            // Nothing reached R2: the object serves again.
            home.set_state(&state).await?;
            return Err(match failed {
                Ok(report) => Error::Internal {
                    detail: format!("export did not verify: {report:?}"),
                },
                Err(e) => e,
            });
        }
    };
    let image = crate::sqlite::export(&mut conn)?;
    // From here a failure may or may not have stored the image: the object stays frozen.
    let (etag, db_version) = publish_export(ctx, user, &image, &step).await?;
    home.set_state(&ObjectState::Exported).await?;
    Ok(Exported {
        report,
        etag,
        db_version,
        size_bytes: image.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::storage::{MemoryStore, ROUTE_KEY};
    use crate::testing::StepClock;
    use crate::{fixtures, pipeline};

    const KEY: &str = "a/database.sqlite";

    fn user() -> UserId {
        UserId::parse(Some("a")).unwrap()
    }

    /// A move freezes R2 writes while the copy runs, switches the route after it, and keeps
    /// the object; a request to the R2 route is then told where the user lives.
    #[test]
    fn move_freezes_copies_switches() {
        let store = MemoryStore::new();
        let demo = fixtures::demo_database().unwrap();
        store.insert(KEY, &demo, &[(DB_VERSION_KEY, "1700000000000".into())]);
        let clock = StepClock::stepping(1.0);
        let ctx = Context::new(&store, &clock);
        let moved = pollster::block_on(to_durable_object(&ctx, &user(), async || {
            // During the copy the R2 route refuses, retryable.
            let during = pollster::block_on(pipeline::serve(
                &ctx,
                &user(),
                crate::request::SaveMode::Always,
                &mut pipeline::ListTables,
            ))
            .unwrap_err();
            assert_eq!((during.status(), during.code()), (503, "migrating"));
            Ok(serde_json::json!({"success": true}))
        }))
        .unwrap();
        assert_eq!(
            store.bytes(KEY).unwrap(),
            demo,
            "the R2 object is kept as it was"
        );
        assert_eq!(store.metadata(KEY).unwrap()[ROUTE_KEY], "durable_object");
        assert!(moved.r2_object.age_ms.is_some());
        let after = pollster::block_on(pipeline::serve(
            &ctx,
            &user(),
            crate::request::SaveMode::Always,
            &mut pipeline::ListTables,
        ))
        .unwrap_err();
        assert_eq!(after.code(), "served_by_durable_object");
        // Moving again is refused; moving back publishes and clears the route.
        let again = pollster::block_on(to_durable_object(&ctx, &user(), async || {
            Ok(serde_json::json!({}))
        }))
        .unwrap_err();
        assert_eq!(again.code(), "served_by_durable_object");
        let head = pollster::block_on(head_of(&ctx, &user())).unwrap();
        let step = check_export(&ObjectState::Active, &user(), head.as_ref(), "w").unwrap();
        let (_, version) = pollster::block_on(publish_export(&ctx, &user(), &demo, &step)).unwrap();
        assert!(version > 1_700_000_000_000);
        assert!(!store.metadata(KEY).unwrap().contains_key(ROUTE_KEY));
        assert!(
            pollster::block_on(pipeline::serve(
                &ctx,
                &user(),
                crate::request::SaveMode::Auto,
                &mut pipeline::ListTables,
            ))
            .is_ok()
        );
    }

    /// A move whose isolate died after its freeze (nothing switched, nothing lifted) does not
    /// strand the user: the next move takes the freeze over and completes, in both layouts,
    /// with every committed write in the copy.
    #[test]
    fn a_move_takes_over_a_freeze_whose_move_died() {
        for layout in [
            crate::storage::Layout::Single,
            crate::storage::Layout::Incremental,
        ] {
            let store = MemoryStore::new();
            let mut conn = crate::sqlite::create().unwrap();
            conn.execute_batch("CREATE TABLE t(x)").unwrap();
            store.insert(KEY, &crate::sqlite::export(&mut conn).unwrap(), &[]);
            let clock = StepClock::stepping(1.0);
            let ctx = Context {
                layout,
                ..Context::new(&store, &clock)
            };
            let mut insert = crate::work::Transaction {
                statements: vec![crate::exec::Statement {
                    sql: "INSERT INTO t VALUES (1)".into(),
                    args: vec![],
                    named_args: vec![],
                }],
                limits: crate::exec::Limits::default(),
            };
            pollster::block_on(pipeline::serve(
                &ctx,
                &user(),
                crate::request::SaveMode::Auto,
                &mut insert,
            ))
            .unwrap();
            // The first move freezes, then its isolate is gone.
            drop(pollster::block_on(moves::freeze(&ctx, &user())).unwrap());
            assert_eq!(store.metadata(KEY).unwrap()[ROUTE_KEY], "moving");
            let copied = std::cell::Cell::new(0);
            pollster::block_on(to_durable_object(&ctx, &user(), async || {
                let image = store.bytes(KEY).unwrap();
                let conn = crate::testing::open(&image);
                copied.set(
                    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                        .unwrap(),
                );
                Ok(serde_json::json!({"success": true}))
            }))
            .unwrap_or_else(|e| panic!("{layout:?}: {e}"));
            assert_eq!(copied.get(), 1, "{layout:?}");
            assert_eq!(
                store.metadata(KEY).unwrap()[ROUTE_KEY],
                "durable_object",
                "{layout:?}"
            );
        }
    }

    /// A failed copy lifts the freeze: the user stays on R2 with nothing changed.
    #[test]
    fn failed_copy_lifts_the_freeze() {
        let store = MemoryStore::new();
        let demo = fixtures::demo_database().unwrap();
        store.insert(KEY, &demo, &[]);
        let clock = StepClock::stepping(1.0);
        let ctx = Context::new(&store, &clock);
        let err = pollster::block_on(to_durable_object(&ctx, &user(), async || {
            Err(Error::Internal {
                detail: "import failed".into(),
            })
        }))
        .unwrap_err();
        assert_eq!(err.code(), "internal");
        assert_eq!(store.bytes(KEY).unwrap(), demo);
        assert!(!store.metadata(KEY).unwrap().contains_key(ROUTE_KEY));
    }

    /// A context in the single layout: these scenarios read `database.sqlite` back as the
    /// whole database (the moves of incremental users run end to end in `tests/e2e`).
    fn single<'a>(
        store: &'a MemoryStore,
        clock: &'a StepClock,
    ) -> Context<'a, MemoryStore, StepClock> {
        Context {
            layout: crate::storage::Layout::Single,
            ..Context::new(store, clock)
        }
    }

    /// A Durable Object played by a rusqlite connection, its state in a cell.
    struct SimHome {
        state: std::cell::RefCell<ObjectState>,
        db: rusqlite::Connection,
    }

    impl SimHome {
        fn new() -> Self {
            Self {
                state: std::cell::RefCell::new(ObjectState::Empty),
                db: crate::sqlite::create().unwrap(),
            }
        }
        fn now(&self) -> ObjectState {
            self.state.borrow().clone()
        }
        fn set_state_now(&self, state: ObjectState) {
            *self.state.borrow_mut() = state;
        }
        fn count(&self, sql: &str) -> i64 {
            self.db.query_row(sql, [], |r| r.get(0)).unwrap()
        }
    }

    impl ObjectHome for SimHome {
        type Sql<'a> = crate::import::ConnectionTarget<'a>;
        async fn state(&self) -> Result<ObjectState, Error> {
            Ok(self.now())
        }
        async fn set_state(&self, state: &ObjectState) -> Result<(), Error> {
            *self.state.borrow_mut() = state.clone();
            Ok(())
        }
        fn sql(&self) -> Self::Sql<'_> {
            crate::import::ConnectionTarget(&self.db)
        }
    }

    fn write_r2<S: ObjectStore, C: Clock>(ctx: &Context<'_, S, C>, sql: &str) {
        let mut work = crate::work::Transaction {
            statements: vec![crate::exec::Statement::new(sql)],
            limits: crate::exec::Limits::default(),
        };
        pollster::block_on(pipeline::serve(
            ctx,
            &user(),
            crate::request::SaveMode::Auto,
            &mut work,
        ))
        .unwrap();
    }

    fn move_there<S: ObjectStore, C: Clock>(ctx: &Context<'_, S, C>, home: &SimHome) {
        pollster::block_on(to_durable_object(ctx, &user(), async || {
            import_here(ctx, &user(), home, false).await?;
            Ok(serde_json::json!({"success": true}))
        }))
        .unwrap();
    }

    fn code(e: &Error) -> (u16, &'static str) {
        (e.status(), e.code())
    }

    /// An import copies only a user frozen for a move: a live R2 user (a split brain in the
    /// making) and a user who already lives in the object are refused with 409 and nothing
    /// changes on either side.
    #[test]
    fn import_refuses_unless_frozen_for_a_move() {
        let store = MemoryStore::new();
        store.insert(KEY, &fixtures::demo_database().unwrap(), &[]);
        let clock = StepClock::stepping(1.0);
        let ctx = single(&store, &clock);
        let home = SimHome::new();
        let before = store.bytes(KEY).unwrap();
        let err = pollster::block_on(import_here(&ctx, &user(), &home, false)).unwrap_err();
        assert_eq!(code(&err), (409, "move_out_of_order"), "{err}");
        assert_eq!(home.now(), ObjectState::Empty);
        assert_eq!(store.bytes(KEY).unwrap(), before);
        move_there(&ctx, &home);
        pollster::block_on(ensure_serving(&ctx, &user(), &home)).unwrap();
        assert_eq!(home.now(), ObjectState::Active);
        home.db
            .execute_batch("INSERT INTO projects(name, created_at, settings) VALUES ('in the object', 0, '{}')")
            .unwrap();
        let err = pollster::block_on(import_here(&ctx, &user(), &home, false)).unwrap_err();
        assert_eq!(code(&err), (409, "move_out_of_order"), "{err}");
        assert_eq!(
            home.count("SELECT count(*) FROM projects WHERE name = 'in the object'"),
            1,
            "the object's write survives"
        );
        // Frozen again in R2 while the object is live (a move started over it): still refused.
        let mut frozen = store.metadata(KEY).unwrap();
        frozen.insert(ROUTE_KEY.into(), "moving".into());
        let err = check_import(&ObjectState::Active, &frozen).unwrap_err();
        assert_eq!(code(&err), (409, "move_out_of_order"));
    }

    /// Moved there, written there, moved back, written in R2: a second move back is refused
    /// and R2 keeps the write made after the first (it used to be overwritten by the object's
    /// stale copy).
    #[test]
    fn a_second_move_back_writes_nothing() {
        let store = MemoryStore::new();
        store.insert(KEY, &fixtures::demo_database().unwrap(), &[]);
        let clock = StepClock::stepping(1.0);
        let ctx = single(&store, &clock);
        write_r2(&ctx, "CREATE TABLE t(v TEXT)");
        write_r2(&ctx, "INSERT INTO t VALUES ('before')");
        let home = SimHome::new();
        move_there(&ctx, &home);
        pollster::block_on(ensure_serving(&ctx, &user(), &home)).unwrap();
        home.db
            .execute_batch("INSERT INTO t VALUES ('in the object')")
            .unwrap();
        pollster::block_on(export_here(&ctx, &user(), &home)).unwrap();
        assert_eq!(home.now(), ObjectState::Exported);
        write_r2(&ctx, "INSERT INTO t VALUES ('after-back')");
        let stored = store.bytes(KEY).unwrap();
        let err = pollster::block_on(export_here(&ctx, &user(), &home)).unwrap_err();
        assert_eq!(code(&err), (409, "move_out_of_order"), "{err}");
        assert_eq!(store.bytes(KEY).unwrap(), stored, "R2 is byte-identical");
        let conn = crate::testing::open(&stored);
        let rows: Vec<String> = conn
            .prepare("SELECT v FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows, ["before", "in the object", "after-back"]);
        // The exported object serves nothing: a request routed there before retries into R2.
        let err = pollster::block_on(ensure_serving(&ctx, &user(), &home)).unwrap_err();
        assert_eq!(err.code(), "migrating");
    }

    /// A split brain cannot start: an import with nothing frozen is refused, the R2 writes
    /// that follow are served as usual, and an export then is refused too, so both writes
    /// stay (and no outside replacement is ever reported). An object left `Active` while R2
    /// serves the user (a stale state) cannot export over R2 either.
    #[test]
    fn an_export_of_a_user_who_lives_in_r2_is_refused() {
        let store = MemoryStore::new();
        store.insert(KEY, &fixtures::demo_database().unwrap(), &[]);
        let clock = StepClock::stepping(1.0);
        let ctx = single(&store, &clock);
        let home = SimHome::new();
        assert!(pollster::block_on(import_here(&ctx, &user(), &home, false)).is_err());
        write_r2(&ctx, "CREATE TABLE w(v)");
        write_r2(&ctx, "INSERT INTO w VALUES (1)");
        let stored = store.bytes(KEY).unwrap();
        let err = pollster::block_on(export_here(&ctx, &user(), &home)).unwrap_err();
        assert_eq!(code(&err), (404, "user_not_found"), "{err}");
        home.set_state_now(ObjectState::Active);
        let err = pollster::block_on(export_here(&ctx, &user(), &home)).unwrap_err();
        assert_eq!(code(&err), (409, "move_out_of_order"), "{err}");
        assert_eq!(home.now(), ObjectState::Active);
        assert_eq!(store.bytes(KEY).unwrap(), stored, "R2 is byte-identical");
    }

    /// An export whose put landed but whose answer was lost is finished by the next move back
    /// (recognised by its write id), without a second write.
    #[test]
    fn an_interrupted_export_is_finished_not_repeated() {
        let store = MemoryStore::new();
        store.insert(
            KEY,
            &fixtures::demo_database().unwrap(),
            &[(WRITE_ID_KEY, "w-export".into())],
        );
        let clock = StepClock::stepping(1.0);
        let ctx = single(&store, &clock);
        let home = SimHome::new();
        home.set_state_now(ObjectState::Exporting {
            write_id: "w-export".into(),
        });
        let before = pollster::block_on(store.head(KEY)).unwrap();
        pollster::block_on(export_here(&ctx, &user(), &home)).unwrap();
        assert_eq!(home.now(), ObjectState::Exported);
        assert_eq!(
            pollster::block_on(store.head(KEY)).unwrap(),
            before,
            "nothing written again"
        );
    }
}

//! The `UserDb` Durable Object (one SQLite-backed object per user) and the adapter from its
//! SQL storage to the import's [`SqlTarget`]. The import itself, and every decision in it,
//! is in `crate::import`.

use js_sys::Uint8Array;
use rusqlite::types::Value;
use wasm_bindgen::JsValue;
use worker::{
    DurableObject, Env, Method, Request, Response, Result, SqlStorage, SqlStorageValue, State,
    durable_object,
};

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;

use super::http::{ErrorShape, body, error_response, json_response, load_config, user_of};
use super::js_clock::JsClock;
use super::r2::R2Store;
use crate::clock::Clock;
use crate::delay::round2;
use crate::error::Error;
use crate::exec::{
    Backend, D1Result, Failure, Guard, Limits, RowSink, Statement, StatementResult, run_statement,
};
use crate::import::{self, SqlTarget};
use crate::migrate::{self, ObjectHome, ObjectState};
use crate::report::DurableTables;
use crate::request::{UserId, durable_paths};

/// One user's database as a SQLite-backed Durable Object.
#[durable_object]
pub struct UserDb {
    state: State,
    /// The same state as a JS object, for `storage.transactionSync`, which workers-rs does not
    /// wrap.
    js_state: JsValue,
    env: Env,
}

impl DurableObject for UserDb {
    fn new(state: State, env: Env) -> Self {
        let raw = state._inner();
        let js_state = JsValue::from(raw.clone());
        Self {
            state: State::from(raw),
            js_state,
            env,
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let mut req = req;
        let result = async {
            let user = user_of(&req)?;
            match (req.method(), req.path().as_str()) {
                (Method::Post, durable_paths::IMPORT) => {
                    let allow_loss = super::http::flag_param(&req, "allow_loss")?;
                    self.import(&user, allow_loss).await
                }
                (Method::Post, durable_paths::QUERY) => self.query(&user, &mut req).await,
                (Method::Post, durable_paths::EXPORT) => self.export(&user).await,
                (Method::Get, durable_paths::TABLES) => self.tables(&user).await,
                (_, path) => Err(Error::NotFound { path: path.into() }),
            }
        }
        .await;
        result.or_else(|e| error_response(&e, ErrorShape::Plain))
    }
}

/// The Durable Object's SQL storage as an import target.
pub struct DoTarget(SqlStorage);

/// What the statements of one `/query` came to inside the transaction.
type Outcome = std::result::Result<Vec<StatementResult>, Error>;

fn js_internal(e: JsValue) -> Error {
    Error::Internal {
        detail: format!("durable object runtime: {e:?}"),
    }
}

fn from_do(v: SqlStorageValue) -> Value {
    match v {
        SqlStorageValue::Null => Value::Null,
        SqlStorageValue::Boolean(b) => Value::Integer(i64::from(b)),
        SqlStorageValue::Integer(n) => Value::Integer(n),
        SqlStorageValue::Float(f) => Value::Real(f),
        SqlStorageValue::String(s) => Value::Text(s),
        SqlStorageValue::Blob(b) => Value::Blob(b),
    }
}

fn to_js(v: Value) -> JsValue {
    match v {
        Value::Null => JsValue::NULL,
        // Callers pass integers beyond 2^53 as text (the import casts them back in SQL) or
        // refuse them (`param_to_js`), so the f64 is exact.
        #[allow(clippy::cast_precision_loss)]
        Value::Integer(n) => JsValue::from(n as f64),
        Value::Real(f) => JsValue::from(f),
        Value::Text(s) => JsValue::from(s),
        // The SQL API stores ArrayBuffers as BLOBs.
        Value::Blob(b) => Uint8Array::from(b.as_slice()).buffer().into(),
    }
}

impl SqlTarget for DoTarget {
    fn exec(&self, sql: &str) -> std::result::Result<(), String> {
        self.0
            .exec(sql, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn exec_with(&self, sql: &str, params: Vec<Value>) -> std::result::Result<(), String> {
        let values = params.into_iter().map(to_js).collect::<Vec<_>>();
        self.0
            .exec_raw(sql, values)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn query(
        &self,
        sql: &str,
        each: &mut dyn FnMut(Vec<Value>) -> std::result::Result<(), Error>,
    ) -> std::result::Result<(), Error> {
        let failed = |e: worker::Error| Error::Internal {
            detail: format!("durable object sql ({sql}): {e}"),
        };
        let cursor = self.0.exec(sql, None).map_err(failed)?;
        for row in cursor.raw() {
            each(row.map_err(failed)?.into_iter().map(from_do).collect())?;
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.0.database_size() as u64
    }

    fn hosts_module(&self, module: &str) -> bool {
        // Durable Object SQLite answers SQLITE_AUTH for rtree, geopoly, fts3 and fts4.
        module == "fts5"
    }
}

/// A failure of the Durable Object's SQL, for the executor's one mapping: the API gives a
/// message only, which names SQLite's result code (`SQLITE_AUTH` for its refusals: ATTACH,
/// BEGIN, modules it does not host).
fn do_failure(e: &worker::Error) -> Failure {
    let message = e.to_string();
    let named = message
        .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .find(|w| w.starts_with("SQLITE_"));
    let code = match named {
        Some(name) => crate::exec::SQLITE_CODE_NAMES
            .iter()
            .copied()
            .find(|n| *n == name),
        None if message.contains("not authorized") => Some("SQLITE_AUTH"),
        None => Some("SQLITE_ERROR"),
    };
    Failure::Sqlite { code, message }
}

/// A parameter for the Durable Object's SQL API, which passes numbers as JS numbers.
fn param_to_js(index: usize, v: &Value) -> std::result::Result<JsValue, Error> {
    if let Value::Integer(n) = v
        && n.unsigned_abs() > crate::encoding::MAX_SAFE_INTEGER as u64
    {
        return Err(Error::InexactNumber {
            statement: index,
            reason: format!(
                "the integer {n} is beyond ±(2^53 − 1), which the Durable Object SQL API \
                 cannot pass exactly (it binds numbers as doubles); send it as text with \
                 CAST(? AS INTEGER), or use the R2 route"
            ),
        });
    }
    Ok(to_js(v.clone()))
}

/// A result value from the Durable Object's SQL API. A JS number at or beyond 2^53 holding a
/// whole number may be an INTEGER rounded on its way out (9007199254740993 arrives as
/// 9007199254740992): refused rather than answered wrong.
fn exact_result(index: usize, v: SqlStorageValue) -> std::result::Result<Value, Error> {
    #[allow(clippy::cast_precision_loss)]
    let limit = crate::encoding::MAX_SAFE_INTEGER as f64;
    match v {
        SqlStorageValue::Float(f) if f.fract() == 0.0 && f.abs() > limit => {
            Err(Error::InexactNumber {
                statement: index,
                reason: format!(
                    "a result holds the number {f:e}: the Durable Object SQL API returns JS \
                     numbers, so an INTEGER beyond ±(2^53 − 1) would arrive rounded; select \
                     it as text (CAST(x AS TEXT)), or use the R2 route"
                ),
            })
        }
        other => Ok(from_do(other)),
    }
}

/// How many rows the Durable Object may read and write for one request: its cursor has no
/// progress handler, so the VM-step budget is counted in rows as the cursor reports them
/// (`rowsRead`/`rowsWritten`, which count table and temporary rows alike), at
/// [`STEPS_PER_ROW`] steps each.
fn max_rows(limits: &Limits) -> u64 {
    limits.max_steps / STEPS_PER_ROW
}

/// VM steps one row read or written costs, about: measured natively at 4 per row of a table
/// scan and 17 per row of a recursive CTE.
const STEPS_PER_ROW: u64 = 10;

/// The Durable Object's SQL storage as the executor's backend, with the request's row budget.
struct DoBackend {
    sql: SqlStorage,
    max_rows: u64,
    rows_used: u64,
    over_budget: bool,
    /// The object's `last_insert_rowid()` when the request began, and whether it has moved
    /// since: its SQLite connection outlives requests, and a request must not see an earlier
    /// one's rowid (the R2 route opens a fresh connection for each).
    rowid_at_start: Option<i64>,
    rowid_moved: bool,
}

impl DoBackend {
    /// Adds what `cursor` has read and written so far to the request's rows; a failure once
    /// past the budget.
    fn spend(
        &mut self,
        cursor: &worker::SqlCursor,
        counted: &mut u64,
    ) -> std::result::Result<(), Failure> {
        let now = (cursor.rows_read() + cursor.rows_written()) as u64;
        self.rows_used += now.saturating_sub(*counted);
        *counted = now;
        if self.rows_used > self.max_rows {
            self.over_budget = true;
            return Err(Failure::Sqlite {
                code: Some("SQLITE_INTERRUPT"),
                message: "interrupted".into(),
            });
        }
        Ok(())
    }
}

impl Backend for DoBackend {
    fn run(
        &mut self,
        index: usize,
        stmt: &Statement,
        want_rows: bool,
        sink: &mut dyn RowSink,
    ) -> std::result::Result<crate::exec::Columns, Failure> {
        self.over_budget = false;
        if !stmt.named_args.is_empty() {
            return Err(Failure::Request(Error::InvalidRequest {
                reason: format!(
                    "statement {index}: the Durable Object route binds positional parameters only (?); send params as an array"
                ),
            }));
        }
        let params = stmt
            .args
            .iter()
            .map(|v| param_to_js(index, v))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Failure::Request)?;
        let cursor = self
            .sql
            .exec_raw(&stmt.sql, params)
            .map_err(|e| do_failure(&e))?;
        let columns = cursor.column_names();
        let mut counted = 0;
        self.spend(&cursor, &mut counted)?;
        for values in cursor.raw() {
            let values = values.map_err(|e| do_failure(&e))?;
            self.spend(&cursor, &mut counted)?;
            if want_rows {
                sink.row().map_err(Failure::Request)?;
                let values = values
                    .into_iter()
                    .map(|v| exact_result(index, v))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(Failure::Request)?;
                for v in &values {
                    sink.value(v.into()).map_err(Failure::Request)?;
                }
                sink.keep(values);
            }
        }
        self.spend(&cursor, &mut counted)?;
        // The object's cursor does not say what types the columns were declared with.
        let decltypes = vec![None; columns.len()];
        Ok((columns, decltypes))
    }

    fn counters(&mut self) -> std::result::Result<[i64; 3], Error> {
        let failed = |e: worker::Error| Error::Internal {
            detail: format!("durable object counters: {e}"),
        };
        let mut out = [0; 3];
        let rows = self
            .sql
            .exec(
                // As text: a rowid beyond 2^53 would arrive rounded as a JS number.
                "SELECT CAST(total_changes() AS TEXT), CAST(changes() AS TEXT), \
                 CAST(last_insert_rowid() AS TEXT)",
                None,
            )
            .map_err(failed)?;
        for row in rows.raw() {
            for (slot, v) in out.iter_mut().zip(row.map_err(failed)?) {
                if let SqlStorageValue::String(t) = v {
                    *slot = t.parse().unwrap_or(0);
                }
            }
        }
        let start = *self.rowid_at_start.get_or_insert(out[2]);
        self.rowid_moved |= out[2] != start;
        if !self.rowid_moved {
            out[2] = 0;
        }
        Ok(out)
    }

    fn guard(&mut self) -> Guard {
        Guard {
            refusal: None,
            over_budget: std::mem::take(&mut self.over_budget),
            size_cap_bytes: None,
            heap_limited: false,
        }
    }
}

fn user_tables(target: &DoTarget) -> std::result::Result<Vec<String>, Error> {
    let mut names = Vec::new();
    target.query(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid",
        &mut |row| {
            // `sqlite_sequence` belongs to the user's AUTOINCREMENT tables: listed, as the R2
            // route lists it; the object's own tables are not.
            if let Some(Value::Text(name)) = row.into_iter().next()
                && (name == "sqlite_sequence" || !import::is_reserved(&name))
            {
                names.push(name);
            }
            Ok(())
        },
    )?;
    Ok(names)
}

/// Key in the object's own key-value storage holding its [`ObjectState`]; older objects
/// kept a boolean under `active` instead.
const STATE_KEY: &str = "move_state";
const LEGACY_ACTIVE_KEY: &str = "active";

impl ObjectHome for UserDb {
    type Sql<'a> = DoTarget;

    async fn state(&self) -> std::result::Result<ObjectState, Error> {
        let storage = self.state.storage();
        let stored = storage
            .get::<String>(STATE_KEY)
            .await
            .map_err(super::http::internal)?;
        let legacy = match stored {
            Some(_) => None,
            None => storage
                .get::<bool>(LEGACY_ACTIVE_KEY)
                .await
                .map_err(super::http::internal)?,
        };
        Ok(ObjectState::parse(stored.as_deref(), legacy))
    }

    async fn set_state(&self, state: &ObjectState) -> std::result::Result<(), Error> {
        self.state
            .storage()
            .put(STATE_KEY, state.encode())
            .await
            .map_err(super::http::internal)
    }

    fn sql(&self) -> DoTarget {
        DoTarget(self.state.storage().sql())
    }
}

impl UserDb {
    /// A context for the object's R2 calls.
    fn r2_context<'a>(
        &self,
        store: &'a R2Store,
        clock: &'a JsClock,
    ) -> std::result::Result<crate::pipeline::Context<'a, R2Store, JsClock>, Error> {
        let config = load_config(&self.env)?;
        // A database stored over MAX_DB_BYTES (up to the load ceiling) can still move.
        Ok(crate::pipeline::Context {
            max_db_bytes: crate::config::load_max_bytes(config.max_db_bytes),
            max_write_bytes: config.max_db_bytes,
            nonce: super::js_clock::nonce(),
            ..crate::pipeline::Context::new(store, clock)
        })
    }

    /// Refuses unless the user lives here (see [`migrate::ensure_serving`]).
    async fn serving(&self, user: &UserId) -> std::result::Result<(), Error> {
        let (store, clock) = (R2Store::from_env(&self.env)?, JsClock);
        migrate::ensure_serving(&self.r2_context(&store, &clock)?, user, self).await
    }

    /// `POST /export` inside the object: the move back (see [`migrate::export_here`]).
    async fn export(&self, user: &UserId) -> std::result::Result<Response, Error> {
        let clock = JsClock;
        let start = clock.now_ms();
        let store = R2Store::from_env(&self.env)?;
        let done = migrate::export_here(&self.r2_context(&store, &clock)?, user, self).await?;
        json_response(
            &serde_json::json!({
                "success": true,
                "route": "r2",
                "user": user.as_str(),
                "tables": done.report.tables,
                "created": done.report.created,
                "counters": done.report.counters,
                "r2_object": {
                    "etag": done.etag,
                    "db_version": done.db_version.to_string(),
                    "size_bytes": done.size_bytes,
                },
                "timing_breakdown": {"total_ms": round2(clock.now_ms() - start)},
            }),
            200,
        )
    }

    /// `POST /query` inside the object: the `/query` body as one transaction
    /// (`storage.transactionSync`: a statement that fails rolls every one back).
    async fn query(
        &self,
        user: &UserId,
        req: &mut Request,
    ) -> std::result::Result<Response, Error> {
        self.serving(user).await?;
        let config = load_config(&self.env)?;
        let bytes = body(req, config.max_request_bytes).await?;
        let statements = crate::work::parse_query_body(&bytes, config.limits.max_statements)?;
        let clock = JsClock;
        let sql = self.state.storage().sql();
        let outcome: Rc<RefCell<Option<Outcome>>> = Rc::new(RefCell::new(None));
        let start = clock.now_ms();
        {
            let (outcome, sql, limits) = (Rc::clone(&outcome), sql.clone(), config.limits);
            let run = Closure::once(move || -> std::result::Result<JsValue, JsValue> {
                let mut result_bytes = 0;
                let mut backend = DoBackend {
                    sql,
                    max_rows: max_rows(&limits),
                    rows_used: 0,
                    over_budget: false,
                    rowid_at_start: None,
                    rowid_moved: false,
                };
                let result = statements
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        run_statement(
                            &mut backend,
                            &limits,
                            &mut result_bytes,
                            i,
                            s,
                            true,
                            D1Result::default(),
                        )
                    })
                    .collect::<std::result::Result<Vec<_>, _>>();
                let failed = result.is_err();
                *outcome.borrow_mut() = Some(result);
                // Throwing is how transactionSync is told to roll back.
                if failed {
                    Err(JsValue::from_str("rolled back"))
                } else {
                    Ok(JsValue::NULL)
                }
            });
            let storage = Reflect::get(&self.js_state, &"storage".into()).map_err(js_internal)?;
            let transaction: Function = Reflect::get(&storage, &"transactionSync".into())
                .map_err(js_internal)?
                .dyn_into()
                .map_err(js_internal)?;
            // Its own error (the throw above) is already in `outcome`.
            let _ = transaction.call1(&storage, run.as_ref());
        }
        let query_ms = clock.now_ms() - start;
        let results = outcome
            .borrow_mut()
            .take()
            .ok_or_else(|| Error::Internal {
                detail: "transactionSync did not run the statements".into(),
            })??;
        let target = DoTarget(sql);
        json_response(
            &DurableTables {
                tables: user_tables(&target)?,
                query_ms,
                size_bytes: target.size_bytes(),
                results: Some(results),
            },
            200,
        )
    }

    /// `POST /import` inside the object: the copy step of a move (see
    /// [`migrate::import_here`]).
    async fn import(
        &self,
        user: &UserId,
        allow_loss: bool,
    ) -> std::result::Result<Response, Error> {
        let clock = JsClock;
        let start = clock.now_ms();
        let store = R2Store::from_env(&self.env)?;
        let report =
            migrate::import_here(&self.r2_context(&store, &clock)?, user, self, allow_loss).await?;
        json_response(
            &serde_json::json!({
                "success": true,
                "route": crate::report::Backend::DurableObject,
                "user": user.as_str(),
                "tables": report.tables,
                "created": report.created,
                "skipped": report.skipped,
                "dropped": import::describe_losses(&report.skipped),
                "counters": report.counters,
                "timing_breakdown": {"total_ms": round2(clock.now_ms() - start)},
                "do_size_bytes": report.target_size_bytes,
            }),
            200,
        )
    }

    async fn tables(&self, user: &UserId) -> std::result::Result<Response, Error> {
        self.serving(user).await?;
        let clock = JsClock;
        let target = DoTarget(self.state.storage().sql());
        let start = clock.now_ms();
        let tables = user_tables(&target)?;
        let query_ms = clock.now_ms() - start;
        json_response(
            &DurableTables {
                tables,
                query_ms,
                size_bytes: target.size_bytes(),
                results: None,
            },
            200,
        )
    }
}

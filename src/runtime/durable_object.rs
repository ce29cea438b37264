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
use crate::exec::{Limits, Statement, StatementResult};
use crate::import::{self, SqlTarget};
use crate::report::DurableTables;
use crate::request::{UserId, durable_paths};
use crate::sqlite;
use crate::store::ObjectStore;

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
                (Method::Post, durable_paths::IMPORT) => self.import(&user).await,
                (Method::Post, durable_paths::QUERY) => self.query(&mut req).await,
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
struct DoTarget(SqlStorage);

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
        // The import skips tables with integers beyond 2^53 (`exact_integers` is false), so
        // the f64 is exact.
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

    fn exact_integers(&self) -> bool {
        false
    }

    fn hosts_module(&self, module: &str) -> bool {
        // Durable Object SQLite answers SQLITE_AUTH for rtree, geopoly, fts3 and fts4.
        module == "fts5"
    }
}

/// A failure of the Durable Object's SQL on statement `index`: its `SQLITE_AUTH` refusals
/// (ATTACH, BEGIN, modules it does not host) are the guard rails' `statement_not_allowed`; the
/// rest are the statement's own errors, as on the R2 route.
fn statement_error(index: usize, e: &worker::Error) -> Error {
    let message = e.to_string();
    let code = message
        .rsplit(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .find(|w| w.starts_with("SQLITE_"))
        .map(|w| w.to_owned());
    if code.as_deref() == Some("SQLITE_AUTH") || message.contains("not authorized") {
        return Error::StatementNotAllowed {
            statement: index,
            reason: format!("the Durable Object refused it: {message}"),
        };
    }
    let sqlite_code = match code.as_deref() {
        Some("SQLITE_CONSTRAINT") => Some("SQLITE_CONSTRAINT"),
        Some("SQLITE_MISMATCH") => Some("SQLITE_MISMATCH"),
        Some("SQLITE_RANGE") => Some("SQLITE_RANGE"),
        _ => Some("SQLITE_ERROR"),
    };
    Error::SqlError {
        statement: index,
        message,
        sqlite_code,
    }
}

/// A parameter for the Durable Object's SQL API, which passes numbers as JS numbers.
fn param_to_js(index: usize, v: &Value) -> std::result::Result<JsValue, Error> {
    if let Value::Integer(n) = v
        && n.unsigned_abs() > crate::encoding::MAX_SAFE_INTEGER as u64
    {
        return Err(Error::InvalidRequest {
            reason: format!(
                "statement {index}: the integer {n} is beyond 2^53, which the Durable Object SQL API cannot pass exactly; send it as text"
            ),
        });
    }
    Ok(to_js(v.clone()))
}

/// The connection's change counters: (total changes so far, changes by the last statement,
/// last inserted rowid), read in one query.
fn counters(sql: &SqlStorage, index: usize) -> std::result::Result<[i64; 3], Error> {
    let mut out = [0; 3];
    for row in sql
        .exec(
            "SELECT total_changes(), changes(), last_insert_rowid()",
            None,
        )
        .map_err(|e| statement_error(index, &e))?
        .raw()
    {
        if let [
            SqlStorageValue::Integer(t),
            SqlStorageValue::Integer(c),
            SqlStorageValue::Integer(r),
        ] = row.map_err(|e| statement_error(index, &e))?.as_slice()
        {
            out = [*t, *c, *r];
        }
    }
    Ok(out)
}

/// One statement through the Durable Object's SQL API, with the `/query` semantics.
/// `total_changes` is the connection's total before the statement, and after it on return,
/// so a batch reads the counters once per statement.
fn run_statement(
    sql: &SqlStorage,
    index: usize,
    stmt: &Statement,
    limits: &Limits,
    result_bytes: &mut u64,
    total_changes: &mut i64,
) -> std::result::Result<StatementResult, Error> {
    if !stmt.named_args.is_empty() {
        return Err(Error::InvalidRequest {
            reason: format!(
                "statement {index}: the Durable Object route binds positional parameters only (?); send params as an array"
            ),
        });
    }
    let params = stmt
        .args
        .iter()
        .map(|v| param_to_js(index, v))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let cursor = sql
        .exec_raw(&stmt.sql, params)
        .map_err(|e| statement_error(index, &e))?;
    let columns = cursor.column_names();
    let mut rows = Vec::new();
    for row in cursor.raw() {
        let row: Vec<Value> = row
            .map_err(|e| statement_error(index, &e))?
            .into_iter()
            .map(from_do)
            .collect();
        for v in &row {
            crate::exec::charge(result_bytes, limits.max_result_bytes, v)?;
        }
        rows.push(row);
    }
    let [total, changes, last_insert_rowid] = counters(sql, index)?;
    // `changes()` is stale after statements that change nothing (DDL, SELECT).
    let changed = total != *total_changes;
    *total_changes = total;
    Ok(StatementResult {
        decltypes: vec![None; columns.len()],
        columns,
        rows,
        changes: if changed {
            u64::try_from(changes).unwrap_or(0)
        } else {
            0
        },
        last_insert_rowid,
    })
}

fn user_tables(target: &DoTarget) -> std::result::Result<Vec<String>, Error> {
    let mut names = Vec::new();
    target.query(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid",
        &mut |row| {
            if let Some(Value::Text(name)) = row.into_iter().next()
                && !import::is_reserved(&name)
            {
                names.push(name);
            }
            Ok(())
        },
    )?;
    Ok(names)
}

/// Keys in the object's own key-value storage that say whether it serves queries.
const FROZEN_KEY: &str = "frozen";
const ACTIVE_KEY: &str = "active";

impl UserDb {
    async fn flag(&self, key: &str) -> std::result::Result<Option<bool>, Error> {
        self.state
            .storage()
            .get::<bool>(key)
            .await
            .map_err(super::http::internal)
    }

    async fn set_flag(&self, key: &str, value: bool) -> std::result::Result<(), Error> {
        self.state
            .storage()
            .put(key, value)
            .await
            .map_err(super::http::internal)
    }

    /// 404 unless an import ever succeeded here. Judged by the flag the import sets, not by
    /// the tables: a user's database may be empty, and moving it must still work.
    async fn imported(&self, user: &UserId) -> std::result::Result<(), Error> {
        if self.flag(ACTIVE_KEY).await?.is_none() {
            return Err(Error::UserNotFound {
                user: user.as_str().to_owned(),
                place: "the Durable Object (import it first: POST /do/import)",
            });
        }
        Ok(())
    }

    /// Queries are refused (retryable) while an export runs, and after one: R2 serves the user
    /// then, and a request that was routed here before the move must go there instead.
    async fn check_serving(&self) -> std::result::Result<(), Error> {
        if self.flag(FROZEN_KEY).await? == Some(true) || self.flag(ACTIVE_KEY).await? == Some(false)
        {
            return Err(Error::Migrating);
        }
        Ok(())
    }

    /// `POST /export` inside the object: freeze, write one SQLite file to R2 (conditional, with
    /// a newer `db-version`, clearing `route`), and stop serving queries.
    async fn export(&self, user: &UserId) -> std::result::Result<Response, Error> {
        let clock = JsClock;
        let start = clock.now_ms();
        let config = load_config(&self.env)?;
        self.set_flag(FROZEN_KEY, true).await?;
        let result = async {
            let target = DoTarget(self.state.storage().sql());
            self.imported(user).await?;
            let mut conn = sqlite::create()?;
            let report = import::export_into(&target, &conn)?;
            if !report.verified {
                return Err(Error::Internal {
                    detail: format!("export did not verify: {report:?}"),
                });
            }
            let image = sqlite::export(&mut conn)?;
            let store = R2Store::from_env(&self.env)?;
            let ctx = crate::pipeline::Context {
                max_db_bytes: crate::config::load_max_bytes(config.max_db_bytes),
                max_write_bytes: config.max_db_bytes,
                nonce: super::js_clock::nonce(),
                ..crate::pipeline::Context::new(&store, &clock)
            };
            let (etag, version) = crate::migrate::publish_export(&ctx, user, &image).await?;
            Ok((report, etag, version, image.len()))
        }
        .await;
        if result.is_ok() {
            self.set_flag(ACTIVE_KEY, false).await?;
        }
        self.set_flag(FROZEN_KEY, false).await?;
        let (report, etag, version, size) = result?;
        json_response(
            &serde_json::json!({
                "success": true,
                "route": "r2",
                "user": user.as_str(),
                "tables": report.tables,
                "created": report.created,
                "counters": report.counters,
                "r2_object": {"etag": etag, "db_version": version.to_string(), "size_bytes": size},
                "timing_breakdown": {"total_ms": round2(clock.now_ms() - start)},
            }),
            200,
        )
    }

    /// `POST /query` inside the object: the `/query` body as one transaction
    /// (`storage.transactionSync`: a statement that fails rolls every one back).
    async fn query(&self, req: &mut Request) -> std::result::Result<Response, Error> {
        self.check_serving().await?;
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
                let result = counters(&sql, 0).and_then(|[mut total, _, _]| {
                    statements
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            run_statement(&sql, i, s, &limits, &mut result_bytes, &mut total)
                        })
                        .collect::<std::result::Result<Vec<_>, _>>()
                });
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

    async fn import(&self, user: &UserId) -> std::result::Result<Response, Error> {
        let clock = JsClock;
        let config = load_config(&self.env)?;
        let start = clock.now_ms();
        let store = R2Store::from_env(&self.env)?;
        // An incremental user's pending deltas are folded into database.sqlite first, so the
        // import copies the current database (a move has already folded and frozen it).
        // A database stored over MAX_DB_BYTES (up to the load ceiling) can still move.
        let max_load = crate::config::load_max_bytes(config.max_db_bytes);
        let ctx = crate::pipeline::Context {
            max_db_bytes: max_load,
            max_write_bytes: config.max_db_bytes,
            nonce: super::js_clock::nonce(),
            compaction: config.compaction,
            ..crate::pipeline::Context::new(&store, &clock)
        };
        crate::layout::fold_pending(&ctx, user).await?;
        let object = crate::migrate::existing(
            store.get(&user.db_key(), max_load, None).await?,
            user,
            max_load,
        )?;
        let download_ms = clock.now_ms() - start;
        let parse_start = clock.now_ms();
        let loaded = sqlite::load_body(object.body).await?;
        let parse_ms = clock.now_ms() - parse_start;
        let copy_start = clock.now_ms();
        let report = import::run(&loaded.conn, &DoTarget(self.state.storage().sql()))?;
        if report.verified {
            self.set_flag(ACTIVE_KEY, true).await?;
            self.set_flag(FROZEN_KEY, false).await?;
        }
        let copy_ms = clock.now_ms() - copy_start;
        json_response(
            &serde_json::json!({
                "success": report.verified,
                "route": crate::report::Backend::DurableObject,
                "user": user.as_str(),
                "tables": report.tables,
                "created": report.created,
                "skipped": report.skipped,
                "counters": report.counters,
                "timing_breakdown": {
                    "download_ms": round2(download_ms),
                    "parse_ms": round2(parse_ms),
                    "copy_ms": round2(copy_ms),
                    "total_ms": round2(clock.now_ms() - start),
                },
                "do_size_bytes": report.target_size_bytes,
            }),
            if report.verified { 200 } else { 500 },
        )
    }

    async fn tables(&self, user: &UserId) -> std::result::Result<Response, Error> {
        self.imported(user).await?;
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

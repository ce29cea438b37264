//! The Durable Object alternative: one SQLite-backed Durable Object per user, filled from the
//! user's R2 database by `POST /do/import`, and queried in place by `GET /do`.

use js_sys::Uint8Array;
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;
use worker::{
    DurableObject, Env, Method, Request, RequestInit, Response, Result, SqlStorage,
    SqlStorageValue, State, durable_object,
};

use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::import::{self, Skipped};
use crate::report::{PhaseDelay, round2};
use crate::request::UserId;
use crate::sqlite;
use crate::store::{Fetched, ObjectStore, StoreError};
use crate::worker_glue::{
    JsClock, R2Store, error_response, internal, json_response, load_config, user_of,
};

/// Name of the Durable Object binding in wrangler.toml.
const DO_BINDING: &str = "USER_DB";

/// One user's database as a SQLite-backed Durable Object.
#[durable_object]
pub struct UserDb {
    state: State,
    env: Env,
}

impl DurableObject for UserDb {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let result = async {
            let user = user_of(&req)?;
            match (req.method(), req.path().as_str()) {
                (Method::Post, "/import") => self.import(&user).await,
                (Method::Get, "/tables") => self.tables(),
                (_, path) => Err(Error::NotFound { path: path.into() }),
            }
        }
        .await;
        result.or_else(|e| error_response(&e))
    }
}

/// A table's outcome in an import.
#[derive(Debug, Serialize)]
struct TableReport {
    name: String,
    rows_source: i64,
    rows_copied: i64,
    /// Every row read back equals its source row, value by value.
    verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    mismatch: Option<String>,
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

/// Reads the table back from the Durable Object and compares it with the source row by row
/// (both scans follow the same rowid / primary-key order); `None` if every value matches.
fn first_mismatch(
    source: &rusqlite::Connection,
    sql: &SqlStorage,
    table: &import::TablePlan,
) -> std::result::Result<Option<String>, Error> {
    let select = import::select_columns(table);
    let mut stmt = source.prepare(&select).map_err(Error::Sqlite)?;
    let mut rows = stmt.query([]).map_err(Error::Sqlite)?;
    let copied = sql.exec(&select, None).map_err(sql_error("read back"))?;
    for (index, copied_row) in copied.raw().enumerate() {
        let copied_row = copied_row.map_err(sql_error("read back row"))?;
        let Some(row) = rows.next().map_err(Error::Sqlite)? else {
            return Ok(Some(format!("row {index}: extra row in the copy")));
        };
        for (i, value) in copied_row.into_iter().enumerate() {
            let original: Value = row.get(i).map_err(Error::Sqlite)?;
            if !import::same_value(&original, &from_do(value)) {
                return Ok(Some(format!(
                    "row {index}, column {}: value differs",
                    table.columns[i]
                )));
            }
        }
    }
    Ok(None)
}

#[derive(Deserialize)]
struct Count {
    n: i64,
}

#[derive(Deserialize)]
struct Name {
    name: String,
}

/// What `GET /tables` answers inside the Durable Object.
#[derive(Debug, Serialize, Deserialize)]
struct DoTables {
    tables: Vec<String>,
    query_ms: f64,
    size_bytes: u64,
}

fn sql_error(context: &str) -> impl Fn(worker::Error) -> Error + '_ {
    move |e| {
        Error::Storage(StoreError {
            operation: "durable object sql",
            detail: format!("{context}: {e}"),
        })
    }
}

fn to_js(v: Value) -> JsValue {
    match v {
        Value::Null => JsValue::NULL,
        // Range checked by import::unsafe_integer_column (at most 2^53 - 1), so the f64 is exact.
        Value::Integer(n) => JsValue::from(n as f64),
        Value::Real(f) => JsValue::from(f),
        Value::Text(s) => JsValue::from(s),
        // The SQL API stores ArrayBuffers as BLOBs.
        Value::Blob(b) => Uint8Array::from(b.as_slice()).buffer().into(),
    }
}

fn count(sql: &SqlStorage, table: &str) -> std::result::Result<i64, Error> {
    sql.exec(
        &format!("SELECT count(*) AS n FROM {}", import::quote(table)),
        None,
    )
    .and_then(|c| c.one::<Count>())
    .map(|c| c.n)
    .map_err(sql_error("count rows"))
}

fn user_tables(sql: &SqlStorage) -> std::result::Result<Vec<String>, Error> {
    sql.exec(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' ORDER BY rowid",
        None,
    )
    .and_then(|c| c.to_array::<Name>())
    .map(|rows| rows.into_iter().map(|r| r.name).collect())
    .map_err(sql_error("list tables"))
}

impl UserDb {
    async fn import(&self, user: &UserId) -> std::result::Result<Response, Error> {
        let clock = JsClock;
        let config = load_config(&self.env)?;
        let start = clock.now_ms();
        let store = R2Store::from_env(&self.env)?;
        let object = match store.get(&user.db_key(), config.max_db_bytes, None).await? {
            Fetched::Found(object) => object,
            Fetched::Missing | Fetched::NotModified => {
                return Err(Error::NotFound {
                    path: format!("R2 object {}", user.db_key()),
                });
            }
            Fetched::TooLarge { size_bytes } => {
                return Err(Error::TooLarge {
                    size_bytes,
                    max_bytes: config.max_db_bytes,
                });
            }
        };
        let download_ms = clock.now_ms() - start;
        let parse_start = clock.now_ms();
        let loaded = sqlite::load(&object.body)?;
        drop(object);
        let plan = import::plan(&loaded.conn)?;
        let parse_ms = clock.now_ms() - parse_start;

        let copy_start = clock.now_ms();
        let sql = self.state.storage().sql();
        // The Durable Object enforces foreign keys; checking them at the end of the import
        // lets tables be dropped and filled in schema order whatever their references.
        sql.exec("PRAGMA defer_foreign_keys = ON", None)
            .map_err(sql_error("defer foreign keys"))?;
        // Re-importing replaces what an earlier import created.
        for kind in ["trigger", "view"] {
            let names = sql
                .exec(
                    &format!("SELECT name FROM sqlite_master WHERE type = '{kind}'"),
                    None,
                )
                .and_then(|c| c.to_array::<Name>())
                .map_err(sql_error("list old objects"))?;
            for n in names {
                sql.exec(
                    &format!("DROP {kind} IF EXISTS {}", import::quote(&n.name)),
                    None,
                )
                .map_err(sql_error("drop old object"))?;
            }
        }
        // Children (created later) before the parents they reference.
        for name in user_tables(&sql)?.into_iter().rev() {
            if !name.starts_with("sqlite_") {
                sql.exec(
                    &format!("DROP TABLE IF EXISTS {}", import::quote(&name)),
                    None,
                )
                .map_err(sql_error("drop old table"))?;
            }
        }

        let mut skipped: Vec<Skipped> = plan.skipped.clone();
        let mut tables = Vec::new();
        for table in &plan.tables {
            let rows_source: i64 = loaded
                .conn
                .query_row(
                    &format!("SELECT count(*) FROM {}", import::quote(&table.name)),
                    [],
                    |r| r.get(0),
                )
                .map_err(Error::Sqlite)?;
            // Checked before the table is created, so a table that cannot be copied leaves
            // nothing behind.
            if let Some(column) = import::unsafe_integer_column(&loaded.conn, table)? {
                skipped.push(Skipped {
                    name: table.name.clone(),
                    kind: "table".into(),
                    reason: format!(
                        "column {column} holds an integer beyond 2^53, which the Durable Object API cannot pass exactly"
                    ),
                });
                continue;
            }
            if let Err(e) = sql.exec(&table.create_sql, None) {
                skipped.push(Skipped {
                    name: table.name.clone(),
                    kind: "table".into(),
                    reason: format!("the Durable Object refused its CREATE statement: {e}"),
                });
                continue;
            }
            import::for_each_batch(&loaded.conn, table, |batch| {
                let values = batch.values.into_iter().map(to_js).collect::<Vec<_>>();
                sql.exec_raw(&batch.sql, values)
                    .map(|_| ())
                    .map_err(sql_error("insert rows"))
            })?;
            let rows_copied = count(&sql, &table.name)?;
            let mismatch = if rows_copied == rows_source {
                first_mismatch(&loaded.conn, &sql, table)?
            } else {
                Some(format!(
                    "{rows_copied} rows copied, {rows_source} in the source"
                ))
            };
            tables.push(TableReport {
                name: table.name.clone(),
                rows_source,
                rows_copied,
                verified: mismatch.is_none(),
                mismatch,
            });
        }
        let mut created = Vec::new();
        for (kind, name, create) in &plan.others {
            match sql.exec(create, None) {
                Ok(_) => created.push(name.clone()),
                Err(e) => skipped.push(Skipped {
                    name: name.clone(),
                    kind: kind.clone(),
                    reason: format!("the Durable Object refused its CREATE statement: {e}"),
                }),
            }
        }
        let copy_ms = clock.now_ms() - copy_start;
        let all_verified = tables.iter().all(|t| t.verified);
        json_response(
            &serde_json::json!({
                "success": all_verified,
                "user": user.as_str(),
                "tables": tables,
                "created": created,
                "skipped": skipped,
                "timing_breakdown": {
                    "download_ms": round2(download_ms),
                    "parse_ms": round2(parse_ms),
                    "copy_ms": round2(copy_ms),
                    "total_ms": round2(clock.now_ms() - start),
                },
                "do_size_bytes": sql.database_size(),
            }),
            if all_verified { 200 } else { 500 },
        )
    }

    fn tables(&self) -> std::result::Result<Response, Error> {
        let clock = JsClock;
        let sql = self.state.storage().sql();
        let start = clock.now_ms();
        let tables = user_tables(&sql)?;
        let query_ms = clock.now_ms() - start;
        json_response(
            &DoTables {
                tables,
                query_ms,
                size_bytes: sql.database_size() as u64,
            },
            200,
        )
    }
}

fn stub_for(env: &Env, user: &UserId) -> std::result::Result<worker::Stub, Error> {
    let namespace = env.durable_object(DO_BINDING).map_err(internal)?;
    namespace
        .id_from_name(user.as_str())
        .and_then(|id| id.get_stub())
        .map_err(internal)
}

/// `POST /do/import?user=ID`: forwards to the user's Durable Object and returns its report.
pub(crate) async fn handle_import(
    req: &Request,
    env: &Env,
) -> std::result::Result<Response, Error> {
    let user = user_of(req)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post);
    let inner = Request::new_with_init(
        &format!("https://user-db/import?user={}", user.as_str()),
        &init,
    )
    .map_err(internal)?;
    stub_for(env, &user)?
        .fetch_with_request(inner)
        .await
        .map_err(internal)
}

/// `GET /do?user=ID`: the table list from the user's Durable Object, in the R2 route's
/// JSON shape. Fields with no Durable Object counterpart are 0 and listed in `not_applicable`.
pub(crate) async fn handle_tables(
    req: &Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, Error> {
    let user = user_of(req)?;
    let clock = JsClock;
    let start = clock.now_ms();
    let mut response = stub_for(env, &user)?
        .fetch_with_str(&format!("https://user-db/tables?user={}", user.as_str()))
        .await
        .map_err(internal)?;
    let inner: DoTables = response.json().await.map_err(internal)?;
    let round_trip_ms = clock.now_ms() - start;
    let size_bytes = inner.size_bytes;
    json_response(
        &serde_json::json!({
            "success": true,
            "backend": "durable_object",
            "delay_analysis": {
                "load": PhaseDelay::new(round_trip_ms, &config.thresholds),
                "save": PhaseDelay::new(0.0, &config.thresholds),
                "thresholds": config.thresholds,
            },
            "timing_breakdown": {
                "load": {
                    "total_ms": round2(round_trip_ms),
                    "wasm_init_ms": 0.0,
                    "download_ms": round2(round_trip_ms),
                    "parse_ms": 0.0,
                },
                "query_ms": round2(inner.query_ms),
                "save": {"total_ms": 0.0, "serialize_ms": 0.0, "upload_ms": 0.0},
            },
            "not_applicable": [
                "load.wasm_init_ms", "load.parse_ms",
                "save.total_ms", "save.serialize_ms", "save.upload_ms",
            ],
            "db_info": {
                "size_kb": round2(size_bytes as f64 / 1024.0),
                "size_bytes": size_bytes,
                "tables": inner.tables,
            },
        }),
        200,
    )
}

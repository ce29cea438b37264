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

use super::http::{ErrorShape, error_response, json_response, load_config, user_of};
use super::js_clock::JsClock;
use super::r2::R2Store;
use crate::clock::Clock;
use crate::delay::round2;
use crate::error::Error;
use crate::import::{self, SqlTarget};
use crate::report::DurableTables;
use crate::request::{UserId, durable_paths};
use crate::sqlite;
use crate::store::{Fetched, ObjectStore};

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
                (Method::Post, durable_paths::IMPORT) => self.import(&user).await,
                (Method::Get, durable_paths::TABLES) => self.tables(&user),
                (_, path) => Err(Error::NotFound { path: path.into() }),
            }
        }
        .await;
        result.or_else(|e| error_response(&e, ErrorShape::Plain))
    }
}

/// The Durable Object's SQL storage as an import target.
struct DoTarget(SqlStorage);

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

impl UserDb {
    async fn import(&self, user: &UserId) -> std::result::Result<Response, Error> {
        let clock = JsClock;
        let config = load_config(&self.env)?;
        let start = clock.now_ms();
        let store = R2Store::from_env(&self.env)?;
        let object = match store.get(&user.db_key(), config.max_db_bytes, None).await? {
            Fetched::Found(object) => object,
            Fetched::Missing | Fetched::NotModified => {
                return Err(Error::UserNotFound {
                    user: user.as_str().to_owned(),
                    place: "R2",
                });
            }
            Fetched::TooLarge { size_bytes } => {
                return Err(Error::DatabaseTooLarge {
                    size_bytes,
                    max_bytes: config.max_db_bytes,
                });
            }
        };
        let download_ms = clock.now_ms() - start;
        let parse_start = clock.now_ms();
        let loaded = sqlite::load_body(object.body).await?;
        let parse_ms = clock.now_ms() - parse_start;
        let copy_start = clock.now_ms();
        let report = import::run(&loaded.conn, &DoTarget(self.state.storage().sql()))?;
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

    fn tables(&self, user: &UserId) -> std::result::Result<Response, Error> {
        let clock = JsClock;
        let target = DoTarget(self.state.storage().sql());
        let start = clock.now_ms();
        let tables = user_tables(&target)?;
        let query_ms = clock.now_ms() - start;
        if tables.is_empty() {
            return Err(Error::UserNotFound {
                user: user.as_str().to_owned(),
                place: "the Durable Object (import it first: POST /do/import)",
            });
        }
        json_response(
            &DurableTables {
                tables,
                query_ms,
                size_bytes: target.size_bytes(),
            },
            200,
        )
    }
}

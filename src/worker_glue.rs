//! The Workers runtime side of the worker (with `durable_glue`, the only code that imports
//! `worker::`): R2 and JS-clock backends, configuration, the `fetch` entry point, responses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use js_sys::{Date, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use worker::{
    Context as WorkerContext, Env, Request, Response, Result, console_error, console_warn, event,
};

use crate::auth;
use crate::cache::DbCache;
use crate::clock::Clock;
use crate::config::Config;
use crate::durable_glue;
use crate::error::Error;
use crate::pipeline::{self, Context};
use crate::report::MemoryInfo;
use crate::request::{self, Route, SaveMode, UserId};
use crate::store::{
    Body, Fetched, ObjectStore, PutCondition, PutOutcome, StoreError, StoredObject,
};
use crate::trend::{self, Level, Trends};

/// Name of the R2 binding in wrangler.toml.
const BUCKET_BINDING: &str = "USER_DATA";

static SERVED_ONE: AtomicBool = AtomicBool::new(false);
/// 0 = not calibrated, 1 = the clock advances during CPU work, 2 = it is frozen.
static CPU_CLOCK: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// Recent sync times per user in this isolate.
    static TRENDS: Trends = Trends::new();
    /// The isolate's version cache, sized by the first request's config (vars are fixed for
    /// an isolate's lifetime).
    static CACHE: std::cell::OnceCell<&'static DbCache> = const { std::cell::OnceCell::new() };
}

/// The isolate's cache, or `None` when `CACHE_MAX_BYTES` is 0.
fn isolate_cache(max_bytes: u64) -> Option<&'static DbCache> {
    if max_bytes == 0 {
        return None;
    }
    // Leaked once per isolate: it lives exactly as long as the isolate does.
    Some(CACHE.with(|c| *c.get_or_init(|| Box::leak(Box::new(DbCache::new(max_bytes))))))
}

#[wasm_bindgen]
extern "C" {
    /// The runtime's `R2Bucket`, bound directly so bodies cross into wasm with a single copy.
    type JsBucket;
    #[wasm_bindgen(method, catch)]
    fn get(this: &JsBucket, key: &str, options: &JsValue) -> std::result::Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn put(
        this: &JsBucket,
        key: &str,
        value: &Uint8Array,
        options: &JsValue,
    ) -> std::result::Result<Promise, JsValue>;

    /// The runtime's `R2Object` / `R2ObjectBody`.
    type JsObject;
    #[wasm_bindgen(method, getter)]
    fn etag(this: &JsObject) -> String;
    #[wasm_bindgen(method, getter)]
    fn size(this: &JsObject) -> f64;
    #[wasm_bindgen(method, getter)]
    fn body(this: &JsObject) -> JsValue;
    #[wasm_bindgen(method, getter, js_name = customMetadata)]
    fn custom_metadata(this: &JsObject) -> JsValue;
    #[wasm_bindgen(method, catch, js_name = arrayBuffer)]
    fn array_buffer(this: &JsObject) -> std::result::Result<Promise, JsValue>;
}

/// R2 behind the [`ObjectStore`] seam.
pub(crate) struct R2Store {
    bucket: JsBucket,
}

impl R2Store {
    /// The `USER_DATA` binding.
    pub(crate) fn from_env(env: &Env) -> std::result::Result<Self, Error> {
        let bucket = env.bucket(BUCKET_BINDING).map_err(internal)?;
        Ok(Self {
            bucket: JsValue::from(bucket).unchecked_into(),
        })
    }
}

/// An object body still in JS memory; it is copied once, into SQLite's buffer.
pub(crate) struct JsBody(Uint8Array);

impl Body for JsBody {
    fn len(&self) -> usize {
        self.0.length() as usize
    }

    fn copy_to(&self, dst: &mut [u8]) {
        self.0.copy_to(dst);
    }
}

fn store_error(operation: &'static str, e: &JsValue) -> StoreError {
    let detail = e
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    StoreError { operation, detail }
}

fn metadata_map(value: &JsValue) -> HashMap<String, String> {
    if !value.is_object() {
        return HashMap::new();
    }
    Object::entries(value.unchecked_ref())
        .iter()
        .filter_map(|entry| {
            let pair = js_sys::Array::from(&entry);
            Some((pair.get(0).as_string()?, pair.get(1).as_string()?))
        })
        .collect()
}

impl ObjectStore for R2Store {
    type Body = JsBody;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> std::result::Result<Fetched<JsBody>, StoreError> {
        let options = Object::new();
        if let Some(etag) = if_none_match {
            let only_if = Object::new();
            Reflect::set(
                &only_if,
                &"etagDoesNotMatch".into(),
                &JsValue::from_str(etag),
            )
            .and_then(|_| Reflect::set(&options, &"onlyIf".into(), &only_if))
            .map_err(|e| store_error("get", &e))?;
        }
        let promise = self
            .bucket
            .get(key, &options)
            .map_err(|e| store_error("get", &e))?;
        let value = JsFuture::from(promise)
            .await
            .map_err(|e| store_error("get", &e))?;
        if value.is_null() || value.is_undefined() {
            return Ok(Fetched::Missing);
        }
        // A failed `onlyIf` answers with the object's metadata and no body at all.
        if if_none_match.is_some() && !Reflect::has(&value, &"body".into()).unwrap_or(true) {
            return Ok(Fetched::NotModified);
        }
        let object: JsObject = value.unchecked_into();
        // `get` resolves once the metadata has arrived; the body is still an unread stream,
        // so an oversize object is refused here without downloading it.
        // Float-to-int `as` saturates; R2 sizes are whole numbers.
        let size_bytes = object.size() as u64;
        if size_bytes > max_bytes {
            if let Ok(stream) = object.body().dyn_into::<web_sys::ReadableStream>() {
                // Best effort: an unread stream is released with the request anyway.
                let _ = stream.cancel();
            }
            return Ok(Fetched::TooLarge { size_bytes });
        }
        let promise = object
            .array_buffer()
            .map_err(|e| store_error("get body", &e))?;
        let buffer = JsFuture::from(promise)
            .await
            .map_err(|e| store_error("get body", &e))?;
        Ok(Fetched::Found(StoredObject {
            etag: object.etag(),
            metadata: metadata_map(&object.custom_metadata()),
            body: JsBody(Uint8Array::new(&buffer)),
        }))
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> std::result::Result<PutOutcome, StoreError> {
        let fail = |e: JsValue| store_error("put", &e);
        let custom = Object::new();
        for (k, v) in metadata {
            Reflect::set(&custom, &JsValue::from_str(k), &JsValue::from_str(v)).map_err(fail)?;
        }
        let only_if = Object::new();
        match condition {
            PutCondition::IfMatch(etag) => {
                Reflect::set(&only_if, &"etagMatches".into(), &JsValue::from_str(etag))
            }
            // `etagDoesNotMatch: "*"` is If-None-Match: * — store only if no object exists.
            PutCondition::IfAbsent => {
                Reflect::set(&only_if, &"etagDoesNotMatch".into(), &"*".into())
            }
        }
        .map_err(fail)?;
        let options = Object::new();
        Reflect::set(&options, &"customMetadata".into(), &custom).map_err(fail)?;
        Reflect::set(&options, &"onlyIf".into(), &only_if).map_err(fail)?;
        // One copy, out of wasm memory: a view into it could be detached by memory growth
        // while the put is in flight.
        let value =
            Uint8Array::new_with_length(u32::try_from(bytes.len()).map_err(|_| StoreError {
                operation: "put",
                detail: "object larger than 4 GiB".into(),
            })?);
        value.copy_from(bytes);
        let promise = self.bucket.put(key, &value, &options).map_err(fail)?;
        let stored = JsFuture::from(promise).await.map_err(fail)?;
        if stored.is_null() || stored.is_undefined() {
            return Ok(PutOutcome::ConditionFailed);
        }
        let stored: JsObject = stored.unchecked_into();
        Ok(PutOutcome::Stored {
            etag: stored.etag(),
        })
    }
}

/// `Date.now()`: millisecond resolution; frozen between I/O on deployed Workers.
pub(crate) struct JsClock;

impl Clock for JsClock {
    fn now_ms(&self) -> f64 {
        Date::now()
    }

    fn epoch_ms(&self) -> u64 {
        // Float-to-int `as` saturates; Date.now() is a whole, positive number of ms.
        Date::now() as u64
    }

    fn resolution_ms(&self) -> f64 {
        1.0
    }

    fn source(&self) -> &'static str {
        "Date.now"
    }

    fn advances_during_cpu(&self) -> Option<bool> {
        match CPU_CLOCK.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// Finds out once per isolate whether `Date.now()` moves during pure computation.
///
/// Spins through a fixed amount of arithmetic (about 3 ms of CPU) and checks the clock as it
/// goes; locally it stops at the first tick, deployed it spends the whole budget.
fn calibrate_clock() {
    let start = Date::now();
    let mut acc: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..300 {
        for i in 0..10_000u64 {
            acc = std::hint::black_box(acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        if Date::now() != start {
            CPU_CLOCK.store(1, Ordering::Relaxed);
            return;
        }
    }
    CPU_CLOCK.store(2, Ordering::Relaxed);
}

/// The Worker's entry point: every outcome is a JSON response.
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: WorkerContext) -> Result<Response> {
    console_error_panic_hook::set_once();
    if !SERVED_ONE.swap(true, Ordering::Relaxed) {
        calibrate_clock();
    }
    match handle(&req, &env).await {
        Ok(response) => Ok(response),
        Err(error) => error_response(&error),
    }
}

async fn handle(req: &Request, env: &Env) -> std::result::Result<Response, Error> {
    let config = load_config(env)?;
    let authorization = req.headers().get("Authorization").map_err(internal)?;
    auth::authorize(&config, authorization.as_deref())?;
    let method = req.method().to_string();
    match request::route(&method, &req.path())? {
        Route::Sync => handle_sync(req, env, &config).await,
        Route::DoImport => durable_glue::handle_import(req, env).await,
        Route::DoTables => durable_glue::handle_tables(req, env, &config).await,
    }
}

async fn handle_sync(
    req: &Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, Error> {
    let user = user_of(req)?;
    let save = SaveMode::parse(query_param(req, "save")?.as_deref())?;
    let store = R2Store::from_env(env)?;
    let ctx = Context {
        store: &store,
        clock: &JsClock,
        thresholds: config.thresholds,
        max_db_bytes: config.max_db_bytes,
        cache: isolate_cache(config.cache_max_bytes),
    };
    let mut report = pipeline::sync(&ctx, &user, save).await?;
    report.memory = Some(MemoryInfo {
        wasm_memory_bytes: wasm_memory_bytes(),
    });
    report.trend = Some(TRENDS.with(|t| {
        t.record(
            user.as_str(),
            report.sync_ms(),
            &config.thresholds,
            &config.trend,
        )
    }));
    for (level, line) in trend::log_lines(user.as_str(), &report) {
        match level {
            Level::Warning => console_warn!("{line}"),
            Level::Critical => console_error!("{line}"),
        }
    }
    json_response(&report, 200)
}

/// The first value of query parameter `name`, percent-decoded.
pub(crate) fn query_param(req: &Request, name: &str) -> std::result::Result<Option<String>, Error> {
    let url = req.url().map_err(internal)?;
    Ok(url
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned()))
}

/// The validated `user` parameter (absent means the default user).
pub(crate) fn user_of(req: &Request) -> std::result::Result<UserId, Error> {
    UserId::parse(query_param(req, "user")?.as_deref())
}

/// Vars and secrets of this worker (or Durable Object) environment.
pub(crate) fn load_config(env: &Env) -> std::result::Result<Config, Error> {
    Config::from_lookup(|name| {
        env.secret(name)
            .map(|s| s.to_string())
            .or_else(|_| env.var(name).map(|v| v.to_string()))
            .ok()
    })
}

/// Current size of this instance's wasm linear memory.
fn wasm_memory_bytes() -> u64 {
    wasm_bindgen::memory()
        .dyn_into::<js_sys::WebAssembly::Memory>()
        .ok()
        .and_then(|m| m.buffer().dyn_into::<js_sys::ArrayBuffer>().ok())
        .map_or(0, |b| u64::from(b.byte_length()))
}

pub(crate) fn internal(e: worker::Error) -> Error {
    Error::Storage(StoreError {
        operation: "runtime",
        detail: e.to_string(),
    })
}

pub(crate) fn json_response<T: serde::Serialize>(
    body: &T,
    status: u16,
) -> std::result::Result<Response, Error> {
    let mut response = Response::from_json(body)
        .map_err(internal)?
        .with_status(status);
    response
        .headers_mut()
        .set("Cache-Control", "no-store")
        .map_err(internal)?;
    Ok(response)
}

pub(crate) fn error_response(error: &Error) -> Result<Response> {
    if error.is_internal() {
        console_error!(
            "{}",
            serde_json::json!({"level": "error", "code": error.code(), "detail": error.to_string()})
        );
    }
    let mut response = Response::from_json(&error.body())?.with_status(error.status());
    response.headers_mut().set("Cache-Control", "no-store")?;
    match error {
        Error::MethodNotAllowed { allow, .. } => response.headers_mut().set("Allow", allow)?,
        Error::Unauthorized { .. } => response.headers_mut().set("WWW-Authenticate", "Bearer")?,
        _ => {}
    }
    Ok(response)
}

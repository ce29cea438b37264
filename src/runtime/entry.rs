//! The worker's `fetch` entry point: authenticate, route, hand the request to the core, and
//! print what the core decided to log. Every outcome is a JSON response.

use std::cell::OnceCell;
use std::rc::Rc;

use wasm_bindgen::JsCast;
use worker::{
    Context as WorkerContext, Env, Method, Request, RequestInit, Response, Result, event,
};

use super::http::{
    ErrorShape, body, error_response, internal, json_response, load_config, user_of,
};
use super::js_clock::{self, JsClock};
use super::r2::R2Store;
use crate::admission::{self, Admitted, Gate, Reservation};
use crate::alerts::{self, Level};
use crate::auth::{self, Identity};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::hrana;
use crate::pipeline::{self, Context, ListTables};
use crate::queue::{self, WriteQueues};
use crate::report::{DurableTables, MemoryInfo, Report};
use crate::request::{self, Route, SaveMode, UserId, durable_paths};
use crate::storage::FollowUp;
use crate::storage::cache::DbCache;
use crate::stream::{self, Stream, StreamOutput};
use crate::trend::{Recommendation, Trends};
use crate::upload;
use crate::work::{self, Transaction};

/// Name of the Durable Object binding in wrangler.toml.
const DO_BINDING: &str = "USER_DB";

thread_local! {
    /// Recent sync times per user in this isolate.
    static TRENDS: Trends = Trends::new();
    /// Compactions requested by this isolate's requests, not yet handed to `waitUntil`.
    static FOLLOW_UPS: std::cell::RefCell<Vec<(UserId, bool)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// Users whose compaction this isolate is running: a group commit answers every member
    /// with the same follow-up, and one compaction folds what all of them committed (more
    /// would only race for `database.sqlite`'s one write a second and the next commit number).
    static COMPACTING: std::cell::RefCell<Vec<UserId>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// The isolate's version cache, sized by the first request's config (vars are fixed for
    /// an isolate's lifetime).
    static CACHE: OnceCell<&'static DbCache> = const { OnceCell::new() };
    /// The isolate's write queue per user (group commit), leaked once like the cache.
    static QUEUES: &'static WriteQueues = Box::leak(Box::new(WriteQueues::polling(16)));
    /// The isolate's memory admission, sized by the first request's config.
    static GATE: OnceCell<Rc<Gate>> = const { OnceCell::new() };
}

/// Admits a request needing `bytes` now into the isolate's memory (`crate::admission`): waits
/// while other requests hold it, or refuses 503 `memory_busy`.
/// `statements`: the request runs the client's statements, and is admitted with
/// [`admission::RESULT_ALLOWANCE_BYTES`] for their result.
async fn admit(
    config: &Config,
    bytes: u64,
    statements: bool,
) -> std::result::Result<Rc<Reservation>, Error> {
    let gate = GATE.with(|g| {
        Rc::clone(g.get_or_init(|| Rc::new(Gate::new(config.admission_capacity_bytes()))))
    });
    let allowance = if statements {
        admission::RESULT_ALLOWANCE_BYTES.min(config.limits.max_result_bytes)
    } else {
        0
    };
    gate.admit(bytes, allowance, &JsClock, js_clock::nonce())
        .await
}

/// One request admitted into the isolate's memory on the R2 route: its reservation, and the
/// R2 store whose downloads are charged to it first. Every R2 route starts from one.
struct Admission {
    memory: Rc<Reservation>,
    store: Admitted<'static, R2Store, JsClock>,
}

impl Admission {
    /// Admits a request of `bytes` (with a result allowance when it runs `statements`).
    async fn new(
        env: &Env,
        config: &Config,
        bytes: u64,
        statements: bool,
    ) -> std::result::Result<Self, Error> {
        let memory = admit(config, bytes, statements).await?;
        Self::of(env, memory)
    }

    /// The store of a request already admitted as `memory`.
    fn of(env: &Env, memory: Rc<Reservation>) -> std::result::Result<Self, Error> {
        let store = Admitted::new(R2Store::from_env(env)?, Rc::clone(&memory), &JsClock);
        Ok(Self { memory, store })
    }

    /// The pipeline's context for the request.
    fn ctx(&self, config: &Config) -> Context<'_, Admitted<'static, R2Store, JsClock>, JsClock> {
        context(&self.store, config, Some(&self.memory))
    }
}

/// The isolate's cache, or `None` when `CACHE_MAX_BYTES` is 0.
fn isolate_cache(max_bytes: u64) -> Option<&'static DbCache> {
    if max_bytes == 0 {
        return None;
    }
    // Leaked once per isolate: it lives exactly as long as the isolate does.
    Some(CACHE.with(|c| *c.get_or_init(|| Box::leak(Box::new(DbCache::new(max_bytes))))))
}

/// The Worker's entry point.
#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: WorkerContext) -> Result<Response> {
    console_error_panic_hook::set_once();
    js_clock::calibrate_once();
    let shape = if req.path().starts_with("/db/") {
        ErrorShape::Hrana
    } else {
        ErrorShape::Plain
    };
    let result = handle(req, &env).await;
    // Compactions run after the response, off the request's critical path.
    for (user, retire) in FOLLOW_UPS.with(|f| std::mem::take(&mut *f.borrow_mut())) {
        ctx.wait_until(compact_later(env.clone(), user, retire));
    }
    match result {
        Ok(response) => Ok(response),
        Err(error) => error_response(&error, shape),
    }
}

/// Folds a user's deltas into a new base (or retires their manifest), then sweeps orphaned
/// deltas, and logs the outcome.
async fn compact_later(env: Env, user: UserId, retire: bool) {
    let running = COMPACTING.with(|c| {
        let mut c = c.borrow_mut();
        let running = c.contains(&user);
        if !running {
            c.push(user.clone());
        }
        running
    });
    if running {
        // The one in flight folds this commit too, or the next commit asks again.
        return;
    }
    compact_once(env, &user, retire).await;
    COMPACTING.with(|c| c.borrow_mut().retain(|u| *u != user));
}

/// [`compact_later`]'s work, while no other compaction of the user runs in this isolate.
async fn compact_once(env: Env, user: &UserId, retire: bool) {
    let outcome = match load_config(&env) {
        Ok(config) => {
            // A compaction builds a whole new image: it is admitted like a request (a refused
            // one leaves the deltas for the next).
            let memory = match admit(&config, 0, false).await {
                Ok(memory) => memory,
                Err(e) => {
                    worker::console_warn!(
                        "{}",
                        serde_json::json!({"event": "memory_admission", "outcome": "refused", "user": user.as_str(), "what": "compaction", "detail": e.to_string()})
                    );
                    return;
                }
            };
            match Admission::of(&env, memory) {
                Ok(admitted) => {
                    let ctx = admitted.ctx(&config);
                    match crate::storage::compact(&ctx, user, retire).await {
                        Ok(done) => Ok((done, crate::storage::sweep(&ctx, user).await.ok())),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    match outcome {
        Ok((done, swept)) => worker::console_log!(
            "{}",
            serde_json::json!({"event": "compaction", "user": user.as_str(), "result": done, "swept": swept})
        ),
        Err(e) => worker::console_error!(
            "{}",
            serde_json::json!({"event": "compaction_failed", "user": user.as_str(), "error": e})
        ),
    }
}

async fn handle(mut req: Request, env: &Env) -> std::result::Result<Response, Error> {
    // The route first: an unknown path is a 404 without credentials (the libSQL client probes
    // for a protobuf endpoint without sending its token, and must get a 404).
    let method = req.method().to_string();
    let route = request::route(&method, &req.path())?;
    let config = load_config(env)?;
    // A WebSocket's token arrives in its first message (Hrana's hello), checked there.
    if let Route::HranaWebSocket { user } = &route {
        let user = UserId::parse(Some(user))?;
        return super::websocket::upgrade(&req, env, config, user);
    }
    let authorization = req.headers().get("Authorization").map_err(internal)?;
    let identity =
        auth::authenticate(&config, authorization.as_deref(), JsClock.epoch_ms() / 1000)?;
    let user = match &route {
        Route::HranaPipeline { user }
        | Route::HranaCursor { user }
        | Route::HranaV1 { user, .. } => Some(UserId::parse(Some(user))?),
        Route::HranaVersion
        | Route::HranaWebSocket { .. }
        | Route::Replication
        | Route::SelfTest => None,
        _ => Some(user_of(&req)?),
    };
    if let Some(user) = &user {
        identity.may_open(user)?;
    }
    if let (Some(user), true) = (&user, matches!(route, Route::Sync | Route::Query)) {
        auto_migrate(env, &config, user).await;
    }
    match (route, user) {
        (Route::Sync, Some(user)) => handle_sync(&req, env, &config, &user).await,
        (Route::Query, Some(user)) => handle_query(&mut req, env, &config, &user).await,
        (Route::HranaPipeline { .. }, Some(user)) => {
            handle_pipeline(&mut req, env, &config, &user).await
        }
        (Route::HranaCursor { .. }, Some(user)) => {
            handle_cursor(&mut req, env, &config, &user).await
        }
        (Route::HranaV1 { batch, .. }, Some(user)) => {
            handle_v1(&mut req, env, &config, &user, batch).await
        }
        (Route::Replication, _) => Err(Error::ReplicationNotSupported),
        (Route::HranaVersion, _) => json_response(&serde_json::json!({"protocol": "hrana"}), 200),
        (Route::DoImport, Some(user)) => {
            let allow_loss = super::http::flag_param(&req, "allow_loss")?;
            forward_post(env, &user, durable_paths::IMPORT, allow_loss).await
        }
        (Route::DoExport, Some(user)) => {
            forward_post(env, &user, durable_paths::EXPORT, false).await
        }
        (Route::Migrate, Some(user)) => {
            let to = super::http::query_param(&req, "to")?;
            let allow_loss = super::http::flag_param(&req, "allow_loss")?;
            handle_migrate(env, &config, &user, to.as_deref(), allow_loss).await
        }
        (Route::DoTables, Some(user)) => handle_do(env, &config, &user, None).await,
        (Route::Export, Some(user)) => handle_export(&req, env, &config, &user).await,
        (Route::Upload, Some(user)) => handle_upload(&mut req, env, &config, &user).await,
        (Route::DoQuery, Some(user)) => {
            let bytes = body(&mut req, config.max_request_bytes).await?;
            handle_do(env, &config, &user, Some(bytes)).await
        }
        (Route::SelfTest, _) => handle_self_test(env, &config, &identity).await,
        (route @ Route::HranaWebSocket { .. }, _) | (route, None) => Err(Error::Internal {
            detail: format!("route {route:?} reached here (without a user, or upgraded above)"),
        }),
    }
}

/// Runs the compactions `finish` asked for on `user`'s behalf now, in the caller's own
/// request: a WebSocket's jobs finish after its `fetch` returned, so `fetch` cannot hand them
/// to `waitUntil`.
pub(super) fn compact_now(env: &Env, user: &UserId) {
    let mine: Vec<(UserId, bool)> = FOLLOW_UPS.with(|f| {
        let mut all = f.borrow_mut();
        let (mine, rest) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|(u, _)| u == user);
        *all = rest;
        mine
    });
    for (user, retire) in mine {
        wasm_bindgen_futures::spawn_local(compact_later(env.clone(), user, retire));
    }
}

fn context<'a, S>(
    store: &'a S,
    config: &Config,
    memory: Option<&'a Rc<Reservation>>,
) -> Context<'a, S, JsClock> {
    let nonce = js_clock::nonce();
    Context {
        thresholds: config.thresholds,
        max_db_bytes: crate::config::load_max_bytes(config.max_db_bytes),
        max_write_bytes: config.max_db_bytes,
        cache: isolate_cache(config.cache_max_bytes),
        nonce,
        retry: pipeline::RetryPolicy {
            jitter_seed: nonce,
            ..pipeline::RetryPolicy::default()
        },
        layout: config.layout,
        compaction: config.compaction,
        memory,
        ..Context::new(store, &JsClock)
    }
}

/// Adds what only the runtime knows (memory, this isolate's trend) and prints the log lines
/// the delay bands call for.
fn finish(
    mut report: Report,
    user: &UserId,
    config: &Config,
    memory: Option<&Reservation>,
) -> Report {
    if let Some(storage) = &report.storage {
        let retire = match storage.follow_up {
            FollowUp::Compact => Some(false),
            FollowUp::Retire => Some(true),
            FollowUp::None => None,
        };
        if let Some(retire) = retire {
            FOLLOW_UPS.with(|f| f.borrow_mut().push((user.clone(), retire)));
        }
        if let Some(outside) = &storage.outside_replacement {
            worker::console_error!(
                "{}",
                serde_json::json!({"event": "outside_replacement", "user": user.as_str(), "detail": outside})
            );
        }
    }
    let admission = memory.map(Reservation::admission);
    if let Some(a) = admission.filter(|a| a.waited_ms > 0.0) {
        worker::console_warn!(
            "{}",
            serde_json::json!({"event": "memory_admission", "user": user.as_str(), "outcome": "waited", "detail": a})
        );
    }
    report.memory = Some(MemoryInfo {
        wasm_memory_bytes: wasm_memory_bytes(),
        admission,
    });
    report.trend = Some(TRENDS.with(|t| {
        t.record(
            user.as_str(),
            report.sync_ms(),
            &config.thresholds,
            &config.trend,
        )
    }));
    for (level, line) in alerts::log_lines(user.as_str(), &report) {
        match level {
            Level::Warning => worker::console_warn!("{line}"),
            Level::Critical => worker::console_error!("{line}"),
        }
    }
    report
}

/// `GET /?user=ID`: the spec's request.
async fn handle_sync(
    req: &Request,
    env: &Env,
    config: &Config,
    user: &UserId,
) -> std::result::Result<Response, Error> {
    let save = SaveMode::parse(super::http::query_param(req, "save")?.as_deref())?;
    let admitted = Admission::new(env, config, 0, false).await?;
    let queues = QUEUES.with(|q| *q);
    match queue::serve(&admitted.ctx(config), queues, user, save, ListTables).await {
        Ok((report, ())) => {
            json_response(&finish(report, user, config, Some(&admitted.memory)), 200)
        }
        Err(Error::ServedByDurableObject) => handle_do(env, config, user, None).await,
        Err(e) => Err(e),
    }
}

/// Runs a query route's work on the R2 route: parses the body with `parse`, serves it through
/// the user's write queue (saved only if it changed the database, committed together with
/// the writes queued with it) and returns the report with the work's output, and the
/// request's memory reservation, to hold until the answer is written.
///
/// The body (at most `MAX_REQUEST_BYTES`) is read before admission; its parse, the images and
/// the results are admitted (`crate::admission`).
async fn serve_body<W: pipeline::Work + 'static>(
    bytes: &[u8],
    env: &Env,
    config: &Config,
    user: &UserId,
    parse: impl FnOnce(&[u8]) -> std::result::Result<W, Error>,
) -> std::result::Result<(Report, W::Output, Rc<Reservation>), Error> {
    let memory = admit(config, admission::body_bytes(bytes.len() as u64), true).await?;
    let work = parse(bytes)?;
    let (report, output) = serve_admitted(env, config, user, &memory, work).await?;
    Ok((report, output, memory))
}

/// Serves an admitted work through the user's write queue, as every query route does.
async fn serve_admitted<W: pipeline::Work + 'static>(
    env: &Env,
    config: &Config,
    user: &UserId,
    memory: &Rc<Reservation>,
    work: W,
) -> std::result::Result<(Report, W::Output), Error> {
    let admitted = Admission::of(env, Rc::clone(memory))?;
    let queues = QUEUES.with(|q| *q);
    let ctx = admitted.ctx(config);
    let (report, output) = queue::serve(&ctx, queues, user, SaveMode::Auto, work).await?;
    Ok((finish(report, user, config, Some(memory)), output))
}

/// One WebSocket job (a stream request of `message_bytes`), admitted into the isolate's
/// memory and served through the write queue exactly as an HTTP stream call is; the
/// compactions it asks for run at once (see [`compact_now`]).
pub(super) async fn serve_socket_job(
    env: &Env,
    config: &Config,
    user: &UserId,
    message_bytes: usize,
    work: Stream,
) -> std::result::Result<StreamOutput, Error> {
    let memory = admit(config, admission::body_bytes(message_bytes as u64), true).await?;
    let served = serve_admitted(env, config, user, &memory, work).await;
    compact_now(env, user);
    served.map(|(_, output)| output)
}

/// `POST /query?user=ID`: the body's statements as one transaction.
async fn handle_query(
    req: &mut Request,
    env: &Env,
    config: &Config,
    user: &UserId,
) -> std::result::Result<Response, Error> {
    let bytes = body(req, config.max_request_bytes).await?;
    let served = serve_body(&bytes, env, config, user, |bytes| {
        Ok(Transaction {
            statements: work::parse_query_body(bytes, config.limits.max_statements)?,
            limits: config.limits,
        })
    })
    .await;
    match served {
        Ok((mut report, results, _memory)) => {
            report.results = Some(results);
            json_response(&report, 200)
        }
        // The user lives in their Durable Object: the same body runs there.
        Err(Error::ServedByDurableObject) => handle_do(env, config, user, Some(bytes)).await,
        Err(e) => Err(e),
    }
}

fn baton_key(config: &Config) -> Vec<u8> {
    stream::baton_key(config.token_secret.as_deref(), config.auth_token.as_deref())
}

/// Runs one call on a libSQL stream (opening the baton, if any) on the R2 route.
async fn serve_stream(
    bytes: &[u8],
    env: &Env,
    config: &Config,
    user: &UserId,
    baton: Option<&str>,
    call: stream::Call,
) -> std::result::Result<(Report, StreamOutput, Rc<Reservation>), Error> {
    let now_ms = JsClock.epoch_ms();
    let state = baton
        .map(|b| stream::open(b, &baton_key(config), user.as_str(), now_ms))
        .transpose()?;
    serve_body(bytes, env, config, user, |_| {
        Ok(Stream {
            user: user.as_str().to_owned(),
            state,
            call,
            limits: config.limits,
            now_ms,
        })
    })
    .await
}

/// `POST /db/<user>/v2/pipeline` (and `v3`): the libSQL protocol. The delay report rides
/// along as an extra top-level field, which clients ignore.
async fn handle_pipeline(
    req: &mut Request,
    env: &Env,
    config: &Config,
    user: &UserId,
) -> std::result::Result<Response, Error> {
    let (report, out, baton, _memory) = serve_baton_call(req, env, config, user, |bytes| {
        let request = hrana::parse(bytes, config.limits.max_statements)?;
        Ok((request.baton, stream::Call::Pipeline(request.requests)))
    })
    .await?;
    json_response(
        &serde_json::json!({"baton": baton, "base_url": null, "results": out.results, "report": report}),
        200,
    )
}

/// What the pipeline and the cursor share: reads the body, parses it with `parse` into the
/// client's baton and the call, serves the call on the stream, and seals the next baton.
async fn serve_baton_call(
    req: &mut Request,
    env: &Env,
    config: &Config,
    user: &UserId,
    parse: impl FnOnce(&[u8]) -> std::result::Result<(Option<String>, stream::Call), Error>,
) -> std::result::Result<(Report, StreamOutput, Option<String>, Rc<Reservation>), Error> {
    let bytes = body(req, config.max_request_bytes).await?;
    let (baton, call) = parse(&bytes)?;
    let (report, out, memory) =
        serve_stream(&bytes, env, config, user, baton.as_deref(), call).await?;
    let next = out
        .next
        .as_ref()
        .map(|s| stream::seal(s, &baton_key(config)));
    Ok((report, out, next, memory))
}

/// `POST /db/<user>/v3/cursor`: one batch, answered as lines of JSON (the stream's baton,
/// then the entries).
async fn handle_cursor(
    req: &mut Request,
    env: &Env,
    config: &Config,
    user: &UserId,
) -> std::result::Result<Response, Error> {
    let (_, out, baton, _memory) = serve_baton_call(req, env, config, user, |bytes| {
        let request = hrana::parse_cursor(bytes, config.limits.max_statements)?;
        Ok((request.baton, stream::Call::Cursor(request.batch)))
    })
    .await?;
    let mut text = serde_json::json!({"baton": baton, "base_url": null}).to_string();
    for entry in &out.results {
        text.push('\n');
        text.push_str(&entry.to_string());
    }
    text.push('\n');
    let mut response = Response::ok(text).map_err(internal)?;
    let headers = response.headers_mut();
    headers
        .set("Content-Type", "text/plain; charset=utf-8")
        .map_err(internal)?;
    headers.set("Cache-Control", "no-store").map_err(internal)?;
    Ok(response)
}

/// `POST /db/<user>/v1/execute` and `/v1/batch`: Hrana v1 over HTTP, each a fresh stream of
/// one request. A failed statement is a 400 with the protocol's error.
async fn handle_v1(
    req: &mut Request,
    env: &Env,
    config: &Config,
    user: &UserId,
    batch: bool,
) -> std::result::Result<Response, Error> {
    let bytes = body(req, config.max_request_bytes).await?;
    let request = hrana::parse_v1(&bytes, batch, config.limits.max_statements)?;
    let call = stream::Call::Pipeline(vec![request, hrana::StreamRequest::Close]);
    let (_, out, _memory) = serve_stream(&bytes, env, config, user, None, call).await?;
    match out.results.first() {
        Some(r) if r["type"] == "ok" => {
            json_response(&serde_json::json!({"result": r["response"]["result"]}), 200)
        }
        Some(r) => json_response(&r["error"], 400),
        None => Err(Error::Internal {
            detail: "a v1 call returned no result".into(),
        }),
    }
}

fn stub_for(env: &Env, user: &UserId) -> std::result::Result<worker::Stub, Error> {
    let namespace = env.durable_object(DO_BINDING).map_err(internal)?;
    namespace
        .id_from_name(user.as_str())
        .and_then(|id| id.get_stub())
        .map_err(internal)
}

fn durable_url(path: &str, user: &UserId) -> String {
    format!("https://user-db{path}?user={}", user.as_str())
}

/// `POST /do/import` and `POST /do/export`: forwards to the user's Durable Object's `path`
/// (with `allow_loss=true` if set) and returns its answer.
async fn forward_post(
    env: &Env,
    user: &UserId,
    path: &str,
    allow_loss: bool,
) -> std::result::Result<Response, Error> {
    let mut init = RequestInit::new();
    init.with_method(Method::Post);
    let mut url = durable_url(path, user);
    if allow_loss {
        url.push_str("&allow_loss=true");
    }
    let inner = Request::new_with_init(&url, &init).map_err(internal)?;
    stub_for(env, user)?
        .fetch_with_request(inner)
        .await
        .map_err(internal)
}

/// With `AUTO_MIGRATE=true`, moves a user whose trend recommends it before serving them; the
/// request is then served by the Durable Object. A failed move is logged and the user stays.
async fn auto_migrate(env: &Env, config: &Config, user: &UserId) {
    if !config.auto_migrate
        || TRENDS.with(|t| t.recommendation(user.as_str()))
            != Recommendation::MigrateToDurableObject
    {
        return;
    }
    let outcome = handle_migrate(env, config, user, Some("durable_object"), false).await;
    TRENDS.with(|t| t.forget(user.as_str()));
    let line = serde_json::json!({
        "level": "warning",
        "user": user.as_str(),
        "action": "migrate_to_durable_object",
        "message": match &outcome {
            Ok(_) => "AUTO_MIGRATE moved this user to their Durable Object".to_owned(),
            Err(e) => format!("AUTO_MIGRATE could not move this user: {e}"),
        },
    });
    worker::console_warn!("{line}");
}

/// `POST /migrate?user=ID&to=durable_object|r2[&allow_loss=true]`: moves the user (see
/// `crate::migrate`).
async fn handle_migrate(
    env: &Env,
    config: &Config,
    user: &UserId,
    to: Option<&str>,
    allow_loss: bool,
) -> std::result::Result<Response, Error> {
    match to {
        Some("durable_object") => {
            let store = R2Store::from_env(env)?;
            let ctx = context(&store, config, None);
            // The freeze is a write: it takes the user's commit slot in this isolate, so
            // back-to-back group commits of writers cannot win every race against it.
            let queues = QUEUES.with(|q| *q);
            let moved = queues
                .exclusive(user, ctx.clock, async || {
                    crate::migrate::to_durable_object(&ctx, user, async || {
                        let mut response =
                            forward_post(env, user, durable_paths::IMPORT, allow_loss).await?;
                        let status = response.status_code();
                        let json: serde_json::Value = response.json().await.map_err(internal)?;
                        if status == 200 && json["success"] == true {
                            Ok(json)
                        } else {
                            Err(Error::from_object(status, &json))
                        }
                    })
                    .await
                })
                .await?;
            json_response(&serde_json::json!({"success": true, "moved": moved}), 200)
        }
        Some("r2") => forward_post(env, user, durable_paths::EXPORT, false).await,
        other => Err(Error::InvalidParameter {
            name: "to",
            reason: format!("{other:?} is not durable_object or r2"),
        }),
    }
}

/// `PUT /import?user=ID`: the body, a SQLite file, becomes the current database if the
/// stored version is the one `If-Match` names (or none is stored, with `If-None-Match: *`).
async fn handle_upload(
    req: &mut Request,
    env: &Env,
    config: &Config,
    user: &UserId,
) -> std::result::Result<Response, Error> {
    let header = |name: &str| req.headers().get(name).map_err(internal);
    let precondition = upload::Precondition::parse(
        header("If-Match")?.as_deref(),
        header("If-None-Match")?.as_deref(),
    )?;
    let bytes = body(req, config.max_db_bytes)
        .await
        .map_err(upload::body_error)?;
    let admitted = Admission::new(
        env,
        config,
        admission::image_bytes(bytes.len() as u64),
        false,
    )
    .await?;
    let report = upload::replace(&admitted.ctx(config), user, bytes, precondition).await?;
    json_response(&finish(report, user, config, Some(&admitted.memory)), 200)
}

/// `GET /export?user=ID`: the current complete SQLite file, whatever the layout, streamed
/// out of the loaded image (which then goes back to the version cache); 304 without a body
/// when `If-None-Match` names the current `db-version`.
async fn handle_export(
    req: &Request,
    env: &Env,
    config: &Config,
    user: &UserId,
) -> std::result::Result<Response, Error> {
    let if_none_match = req.headers().get("If-None-Match").map_err(internal)?;
    let admitted = Admission::new(env, config, 0, false).await?;
    let loaded = pipeline::load(&admitted.ctx(config), user).await?;
    if matches!(loaded.stored, crate::storage::Stored::New) {
        return Err(Error::UserNotFound {
            user: user.as_str().to_owned(),
            place: "R2",
        });
    }
    let layout = loaded.stored.layout();
    let version = loaded.version;
    // A copy whose adoption of an outside file is still to be committed equals no stored
    // state: it is not cached (an export never writes).
    let cache = isolate_cache(config.cache_max_bytes).filter(|_| loaded.adoption.is_none());
    let stored = loaded.stored;
    if upload::not_modified(if_none_match.as_deref(), version) {
        crate::storage::cache::keep(cache, user, loaded.conn, stored, version);
        let mut response = Response::empty().map_err(internal)?.with_status(304);
        response
            .headers_mut()
            .set("X-Db-Version", &upload::version_token(version))
            .map_err(internal)?;
        return Ok(response);
    }
    let key_user = user.clone();
    // The reservation is held until the image has been streamed out.
    let held = Rc::clone(&admitted.memory);
    let stream = super::r2::stream_image(loaded.conn, move |conn| {
        crate::storage::cache::keep(cache, &key_user, conn, stored, version);
        drop(held);
    })?;
    let mut response =
        Response::from_body(worker::ResponseBody::Stream(stream)).map_err(internal)?;
    let headers = response.headers_mut();
    for (name, value) in [
        ("Content-Type", "application/vnd.sqlite3".to_owned()),
        (
            "Content-Disposition",
            format!("attachment; filename=\"{}.sqlite\"", user.as_str()),
        ),
        ("X-Storage-Layout", layout.as_str().to_owned()),
        ("X-Db-Version", upload::version_token(version)),
    ] {
        headers.set(name, &value).map_err(internal)?;
    }
    Ok(response)
}

/// `GET /do?user=ID` (the table list) and `POST /do/query?user=ID` (the `/query` body, run in
/// the object as one transaction), in the R2 route's report model. Errors from the object (404
/// for a user never imported, a statement's 400) pass through as they are.
async fn handle_do(
    env: &Env,
    config: &Config,
    user: &UserId,
    query: Option<Vec<u8>>,
) -> std::result::Result<Response, Error> {
    let clock = JsClock;
    let start = clock.now_ms();
    let stub = stub_for(env, user)?;
    let mut response = match query {
        None => stub
            .fetch_with_str(&durable_url(durable_paths::TABLES, user))
            .await
            .map_err(internal)?,
        Some(bytes) => {
            let mut init = RequestInit::new();
            init.with_method(Method::Post)
                .with_body(Some(js_sys::Uint8Array::from(bytes.as_slice()).into()));
            let inner = Request::new_with_init(&durable_url(durable_paths::QUERY, user), &init)
                .map_err(internal)?;
            stub.fetch_with_request(inner).await.map_err(internal)?
        }
    };
    if response.status_code() != 200 {
        return Ok(response);
    }
    let inner: DurableTables = response.json().await.map_err(internal)?;
    let round_trip_ms = clock.now_ms() - start;
    let mut report = Report::durable_object(&clock, &config.thresholds, round_trip_ms, inner);
    report.user_warning = alerts::user_warning(&report);
    json_response(&finish(report, user, config, None), 200)
}

/// `POST /__self-test/store`: the object-store contract, run against the real R2 binding.
/// Off unless `SELF_TEST=true`; admin (or anonymous, locally) only.
async fn handle_self_test(
    env: &Env,
    config: &Config,
    identity: &Identity,
) -> std::result::Result<Response, Error> {
    if !config.self_test {
        return Err(Error::NotFound {
            path: "/__self-test/store".into(),
        });
    }
    if let Identity::User(user) = identity {
        return Err(Error::Forbidden {
            reason: format!("the self-test needs the admin token, not user {user}'s"),
        });
    }
    let store = R2Store::from_env(env)?;
    let prefix = format!("__self-test/{:016x}", js_clock::nonce());
    let result = crate::storage::store::contract::check(&store, &prefix).await;
    json_response(
        &serde_json::json!({"success": result.is_ok(), "backend": "r2", "error": result.err()}),
        200,
    )
}

/// Current size of this instance's wasm linear memory.
fn wasm_memory_bytes() -> u64 {
    wasm_bindgen::memory()
        .dyn_into::<js_sys::WebAssembly::Memory>()
        .ok()
        .and_then(|m| m.buffer().dyn_into::<js_sys::ArrayBuffer>().ok())
        .map_or(0, |b| u64::from(b.byte_length()))
}

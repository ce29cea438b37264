//! Hrana over WebSocket (subprotocols `hrana2` and `hrana3`, JSON), as plain Rust: a
//! [`Session`] per socket takes the client's messages in and gives back messages to send,
//! jobs to run and when to close. The runtime only moves them between the socket and the
//! write queue.
//!
//! A job is one request of one stream, run as a [`Stream`] call (the executor, guard rails
//! and transaction replay of Hrana over HTTP) through the user's write queue and commit path,
//! so a WebSocket write is committed and acknowledged exactly like an HTTP one. The session
//! keeps, per stream, what the HTTP baton would carry ([`StreamState`]); a stream's requests
//! run one after another, different streams' side by side (at most [`MAX_IN_FLIGHT`] at a
//! time). So an open transaction has the HTTP streams' isolation: it holds nothing in the
//! database between requests, a commit whose reads another writer changed fails with
//! `transaction_conflict` with nothing of it written, and one left idle for
//! [`STREAM_IDLE_TIMEOUT_MS`] is rolled back and its stream refused.
//!
//! SQL texts stored with `store_sql` belong to the connection (as the protocol says); they
//! are resolved into each statement when its request arrives. Everything the session holds
//! is capped: a message at `MAX_REQUEST_BYTES`, [`MAX_STREAMS`] streams, [`MAX_STORED_SQL`]
//! stored texts, [`MAX_QUEUED`] queued requests, their bytes together with the stored texts
//! and the open transactions' at [`HELD_BUDGET_MESSAGES`] messages' worth, and the entries
//! of open cursors at `MAX_RESULT_BYTES`.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::auth;
use crate::config::Config;
use crate::error::Error;
use crate::hrana::{HranaBatch, HranaStmt, StreamRequest, error_json};
use crate::request::UserId;
use crate::stream::{Call, STREAM_IDLE_TIMEOUT_MS, Stream, StreamOutput, StreamState};

/// The subprotocols served, preferred first, with their Hrana version.
pub const SUBPROTOCOLS: [(&str, u8); 2] = [("hrana3", 3), ("hrana2", 2)];
/// Most streams open at once on one connection.
pub const MAX_STREAMS: usize = 64;
/// Most SQL texts stored at once on one connection.
pub const MAX_STORED_SQL: usize = 256;
/// Most requests waiting for their stream (or a free slot) on one connection.
pub const MAX_QUEUED: usize = 1024;
/// Most jobs of one connection running at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// The bytes one connection may hold in queued requests, stored SQL texts and open
/// transactions, in messages of `MAX_REQUEST_BYTES`.
pub const HELD_BUDGET_MESSAGES: usize = 4;

/// WebSocket close codes the session uses.
pub mod close_code {
    /// The client broke the protocol (a message that is not Hrana, a request before hello).
    pub const PROTOCOL: u16 = 1002;
    /// Binary (protobuf) messages: only JSON is served.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// `hello` was refused (token).
    pub const POLICY: u16 = 1008;
    /// A message over `MAX_REQUEST_BYTES`.
    pub const TOO_BIG: u16 = 1009;
}

/// Picks the subprotocol from the client's `Sec-WebSocket-Protocol` header.
///
/// # Errors
/// [`Error::InvalidRequest`] naming what was offered when none of ours is.
pub fn negotiate(offered: Option<&str>) -> Result<(&'static str, u8), Error> {
    let offered: Vec<&str> = offered
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    SUBPROTOCOLS
        .iter()
        .find(|(name, _)| offered.contains(name))
        .copied()
        .ok_or_else(|| Error::InvalidRequest {
            reason: format!(
                "this server speaks the WebSocket subprotocols hrana3 and hrana2 (JSON); the \
                 client offered {}",
                if offered.is_empty() {
                    "none".to_owned()
                } else {
                    offered.join(", ")
                }
            ),
        })
}

/// One request of the protocol (`request.request`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WsRequest {
    OpenStream {
        stream_id: i32,
    },
    CloseStream {
        stream_id: i32,
    },
    Execute {
        stream_id: i32,
        stmt: HranaStmt,
    },
    Batch {
        stream_id: i32,
        batch: HranaBatch,
    },
    Sequence {
        stream_id: i32,
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    Describe {
        stream_id: i32,
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    StoreSql {
        sql_id: i32,
        sql: String,
    },
    CloseSql {
        sql_id: i32,
    },
    GetAutocommit {
        stream_id: i32,
    },
    OpenCursor {
        stream_id: i32,
        cursor_id: i32,
        batch: HranaBatch,
    },
    CloseCursor {
        cursor_id: i32,
    },
    FetchCursor {
        cursor_id: i32,
        max_count: u32,
    },
}

impl WsRequest {
    /// Requests hrana3 added.
    fn needs_v3(&self) -> Option<&'static str> {
        match self {
            Self::GetAutocommit { .. } => Some("get_autocommit"),
            Self::OpenCursor { .. } => Some("open_cursor"),
            Self::CloseCursor { .. } => Some("close_cursor"),
            Self::FetchCursor { .. } => Some("fetch_cursor"),
            _ => None,
        }
    }
}

/// A client message.
#[derive(Debug, Deserialize)]
struct ClientMsg {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    jwt: Option<String>,
    #[serde(default)]
    request_id: Option<i64>,
    #[serde(default)]
    request: Option<WsRequest>,
}

/// What is read of a message whose request could not be.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    request_id: Option<i64>,
}

/// What the runtime does next.
#[derive(Debug)]
pub enum Out {
    /// Send this message (a JSON text).
    Send(Json),
    /// Run this job through the user's write queue and hand its outcome to
    /// [`Session::complete`].
    Run(Box<Job>),
    /// Close the socket.
    Close {
        /// The WebSocket close code.
        code: u16,
        /// Why, for the client.
        reason: String,
    },
}

/// One stream request to run.
#[derive(Debug)]
pub struct Job {
    /// Names the job in [`Session::complete`].
    pub id: u64,
    /// The call, with the stream's state so far.
    pub work: Stream,
    /// The size of the message that asked for it (for memory admission).
    pub bytes: usize,
}

/// A request waiting for its stream.
#[derive(Debug)]
enum Queued {
    Call {
        request_id: i32,
        call: Call,
        cursor: Option<i32>,
        bytes: usize,
    },
    Autocommit {
        request_id: i32,
    },
    CloseStream {
        request_id: i32,
    },
    Fetch {
        request_id: i32,
        cursor_id: i32,
        max_count: u32,
    },
}

impl Queued {
    fn bytes(&self) -> usize {
        match self {
            Self::Call { bytes, .. } => *bytes,
            _ => 0,
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    state: Option<StreamState>,
    /// Bytes of `state` serialized (what it holds).
    state_bytes: usize,
    busy: bool,
    /// Waiting in the session's ready line for a free job slot.
    waiting: bool,
    expired: bool,
    idle_since_ms: u64,
    queue: VecDeque<Queued>,
}

#[derive(Debug)]
struct Cursor {
    stream_id: i32,
    /// Its batch has not run yet.
    opening: bool,
    entries: VecDeque<Json>,
    bytes: usize,
}

#[derive(Debug)]
struct InFlight {
    stream_id: i32,
    request_id: i32,
    cursor: Option<i32>,
    bytes: usize,
}

/// One WebSocket connection's protocol state.
#[derive(Debug)]
pub struct Session {
    config: Config,
    user: UserId,
    version: u8,
    /// The token of the last accepted hello (`Some(None)`: anonymous); `None` before hello.
    jwt: Option<Option<String>>,
    closed: bool,
    streams: BTreeMap<i32, Slot>,
    sqls: BTreeMap<i32, String>,
    cursors: BTreeMap<i32, Cursor>,
    in_flight: BTreeMap<u64, InFlight>,
    ready: VecDeque<i32>,
    next_job: u64,
}

fn ok(request_id: i32, response: Json) -> Out {
    Out::Send(json!({"type": "response_ok", "request_id": request_id, "response": response}))
}

fn err(request_id: i32, error: &Error) -> Out {
    Out::Send(
        json!({"type": "response_error", "request_id": request_id, "error": error_json(error)}),
    )
}

fn invalid(reason: String) -> Error {
    Error::InvalidRequest { reason }
}

fn json_len(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

impl Session {
    /// A session for `user`'s database, speaking Hrana `version` (2 or 3), under `config`'s
    /// tokens and limits.
    #[must_use]
    pub fn new(config: Config, user: UserId, version: u8) -> Self {
        Self {
            config,
            user,
            version,
            jwt: None,
            closed: false,
            streams: BTreeMap::new(),
            sqls: BTreeMap::new(),
            cursors: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            ready: VecDeque::new(),
            next_job: 0,
        }
    }

    /// Whether the session asked for the socket to close.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn max_message(&self) -> usize {
        usize::try_from(self.config.max_request_bytes).unwrap_or(usize::MAX)
    }

    fn held_budget(&self) -> usize {
        self.max_message().saturating_mul(HELD_BUDGET_MESSAGES)
    }

    /// Bytes held in queued and running requests, stored SQL texts and stream states.
    fn held(&self) -> usize {
        let sqls: usize = self.sqls.values().map(String::len).sum();
        let streams: usize = self
            .streams
            .values()
            .map(|s| s.state_bytes + s.queue.iter().map(Queued::bytes).sum::<usize>())
            .sum();
        let running: usize = self.in_flight.values().map(|f| f.bytes).sum();
        sqls + streams + running
    }

    fn queued(&self) -> usize {
        self.streams.values().map(|s| s.queue.len()).sum()
    }

    fn cursor_bytes(&self) -> usize {
        self.cursors.values().map(|c| c.bytes).sum()
    }

    fn close(&mut self, code: u16, reason: String) -> Vec<Out> {
        self.closed = true;
        vec![Out::Close { code, reason }]
    }

    /// A binary message: only the JSON encoding is served.
    pub fn receive_binary(&mut self) -> Vec<Out> {
        self.close(
            close_code::UNSUPPORTED_DATA,
            "only text (JSON) messages are served; the protobuf encoding is not".into(),
        )
    }

    /// Checks the hello's token as `Authorization: Bearer` is checked over HTTP.
    fn authorize(&self, jwt: Option<&str>, now_ms: u64) -> Result<(), Error> {
        let header = jwt.map(|t| format!("Bearer {t}"));
        let identity = match auth::authenticate(&self.config, header.as_deref(), now_ms / 1000) {
            Err(Error::Unauthorized { .. }) if jwt.is_none() => {
                return Err(Error::Unauthorized {
                    reason: "hello carried no jwt; send the token (AUTH_TOKEN or a per-user \
                             token) as the client's authToken"
                        .into(),
                });
            }
            other => other?,
        };
        identity.may_open(&self.user)
    }

    /// Takes one text message from the client.
    pub fn receive(&mut self, text: &str, now_ms: u64) -> Vec<Out> {
        if self.closed {
            return Vec::new();
        }
        self.expire(now_ms);
        if text.len() > self.max_message() {
            return self.close(
                close_code::TOO_BIG,
                format!(
                    "a message of {} bytes is over MAX_REQUEST_BYTES ({})",
                    text.len(),
                    self.max_message()
                ),
            );
        }
        // Parsed straight from the bytes, as the HTTP bodies are (one deserializer for both).
        let msg: ClientMsg = match serde_json::from_slice(text.as_bytes()) {
            Ok(msg) => msg,
            Err(e) => {
                // A request we cannot read is answered, if its id can be read.
                return match serde_json::from_slice::<Envelope>(text.as_bytes()) {
                    Ok(Envelope {
                        kind: Some(kind),
                        request_id: Some(id),
                    }) if kind == "request" && self.jwt.is_some() => match i32::try_from(id) {
                        Ok(id) => vec![err(id, &invalid(format!("not a Hrana request: {e}")))],
                        Err(_) => self.close(close_code::PROTOCOL, format!("{e}")),
                    },
                    _ => self.close(
                        close_code::PROTOCOL,
                        format!("not a Hrana message (hello or request): {e}"),
                    ),
                };
            }
        };
        match (msg.kind.as_str(), msg.request) {
            ("hello", _) => {
                let jwt = msg.jwt.filter(|t| !t.is_empty());
                match self.authorize(jwt.as_deref(), now_ms) {
                    Ok(()) => {
                        self.jwt = Some(jwt);
                        vec![Out::Send(json!({"type": "hello_ok"}))]
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        let mut out = vec![Out::Send(
                            json!({"type": "hello_error", "error": error_json(&e)}),
                        )];
                        out.extend(self.close(close_code::POLICY, reason));
                        out
                    }
                }
            }
            ("request", request) => {
                let Some(jwt) = self.jwt.clone() else {
                    return self.close(
                        close_code::PROTOCOL,
                        "a request arrived before hello; the first message must be hello".into(),
                    );
                };
                let (Some(request_id), Some(request)) =
                    (msg.request_id.and_then(|i| i32::try_from(i).ok()), request)
                else {
                    return self.close(
                        close_code::PROTOCOL,
                        "a request needs an integer request_id and a request".into(),
                    );
                };
                // A per-user token expires while the socket is open: each request checks it.
                if let Err(e) = self.authorize(jwt.as_deref(), now_ms) {
                    return vec![err(
                        request_id,
                        &Error::Unauthorized {
                            reason: format!("{e}; send hello again with a new token"),
                        },
                    )];
                }
                self.request(request_id, request, text.len(), now_ms)
            }
            (other, _) => self.close(
                close_code::PROTOCOL,
                format!("unknown message type {other:?}; a client sends hello or request"),
            ),
        }
    }

    /// Resolves a statement's stored SQL text.
    fn resolve(&self, sql: &mut Option<String>, sql_id: &mut Option<i32>) -> Result<(), Error> {
        match (sql.as_ref(), sql_id.take()) {
            (Some(_), None) => Ok(()),
            (None, Some(id)) => {
                let text = self.sqls.get(&id).ok_or_else(|| {
                    invalid(format!("sql_id {id} was not stored on this connection"))
                })?;
                *sql = Some(text.clone());
                Ok(())
            }
            _ => Err(invalid(
                "a statement needs exactly one of sql and sql_id".into(),
            )),
        }
    }

    fn resolve_batch(&self, batch: &mut HranaBatch) -> Result<(), Error> {
        for step in &mut batch.steps {
            self.resolve(&mut step.stmt.sql, &mut step.stmt.sql_id)?;
        }
        Ok(())
    }

    fn request(
        &mut self,
        request_id: i32,
        request: WsRequest,
        bytes: usize,
        now_ms: u64,
    ) -> Vec<Out> {
        if self.version < 3
            && let Some(name) = request.needs_v3()
        {
            return vec![err(
                request_id,
                &invalid(format!(
                    "{name} needs the hrana3 subprotocol; this socket speaks hrana2"
                )),
            )];
        }
        let call = |request: StreamRequest| Call::Pipeline(vec![request]);
        let queued = |call: Call| Queued::Call {
            request_id,
            call,
            cursor: None,
            bytes,
        };
        let outcome: Result<Option<(i32, Queued)>, Error> = match request {
            WsRequest::OpenStream { stream_id } => {
                return vec![match self.open_stream(stream_id, now_ms) {
                    Ok(()) => ok(request_id, json!({"type": "open_stream"})),
                    Err(e) => err(request_id, &e),
                }];
            }
            WsRequest::CloseStream { stream_id } => {
                if self.streams.contains_key(&stream_id) {
                    Ok(Some((stream_id, Queued::CloseStream { request_id })))
                } else {
                    return vec![ok(request_id, json!({"type": "close_stream"}))];
                }
            }
            WsRequest::Execute {
                stream_id,
                mut stmt,
            } => self
                .resolve(&mut stmt.sql, &mut stmt.sql_id)
                .map(|()| Some((stream_id, queued(call(StreamRequest::Execute { stmt }))))),
            WsRequest::Batch {
                stream_id,
                mut batch,
            } => self
                .resolve_batch(&mut batch)
                .map(|()| Some((stream_id, queued(call(StreamRequest::Batch { batch }))))),
            WsRequest::Sequence {
                stream_id,
                mut sql,
                mut sql_id,
            } => self.resolve(&mut sql, &mut sql_id).map(|()| {
                Some((
                    stream_id,
                    queued(call(StreamRequest::Sequence { sql, sql_id: None })),
                ))
            }),
            WsRequest::Describe {
                stream_id,
                mut sql,
                mut sql_id,
            } => self.resolve(&mut sql, &mut sql_id).map(|()| {
                Some((
                    stream_id,
                    queued(call(StreamRequest::Describe { sql, sql_id: None })),
                ))
            }),
            WsRequest::StoreSql { sql_id, sql } => self.store_sql(sql_id, sql).map(|()| None),
            WsRequest::CloseSql { sql_id } => {
                self.sqls.remove(&sql_id);
                return vec![ok(request_id, json!({"type": "close_sql"}))];
            }
            WsRequest::GetAutocommit { stream_id } => {
                Ok(Some((stream_id, Queued::Autocommit { request_id })))
            }
            WsRequest::OpenCursor {
                stream_id,
                cursor_id,
                mut batch,
            } => self
                .open_cursor(stream_id, cursor_id, &mut batch)
                .map(|()| {
                    Some((
                        stream_id,
                        Queued::Call {
                            request_id,
                            call: Call::Cursor(batch),
                            cursor: Some(cursor_id),
                            bytes,
                        },
                    ))
                }),
            WsRequest::CloseCursor { cursor_id } => {
                self.cursors.remove(&cursor_id);
                return vec![ok(request_id, json!({"type": "close_cursor"}))];
            }
            WsRequest::FetchCursor {
                cursor_id,
                max_count,
            } => match self.cursors.get(&cursor_id) {
                None => Err(invalid(format!("cursor {cursor_id} is not open"))),
                Some(c) if c.opening => Ok(Some((
                    c.stream_id,
                    Queued::Fetch {
                        request_id,
                        cursor_id,
                        max_count,
                    },
                ))),
                Some(_) => return vec![self.fetch(request_id, cursor_id, max_count)],
            },
        };
        match outcome {
            // Only store_sql is answered without its stream.
            Ok(None) => vec![ok(request_id, json!({"type": "store_sql"}))],
            Ok(Some((stream_id, item))) => self.enqueue(stream_id, item, now_ms),
            Err(e) => vec![err(request_id, &e)],
        }
    }

    fn open_stream(&mut self, stream_id: i32, now_ms: u64) -> Result<(), Error> {
        if self.streams.contains_key(&stream_id) {
            return Err(invalid(format!("stream {stream_id} is already open")));
        }
        if self.streams.len() >= MAX_STREAMS {
            return Err(invalid(format!(
                "{MAX_STREAMS} streams are open on this connection, the most it may have; close \
                 one first"
            )));
        }
        self.streams.insert(
            stream_id,
            Slot {
                idle_since_ms: now_ms,
                ..Slot::default()
            },
        );
        Ok(())
    }

    fn store_sql(&mut self, sql_id: i32, sql: String) -> Result<(), Error> {
        if self.sqls.contains_key(&sql_id) {
            return Err(invalid(format!("sql_id {sql_id} is already stored")));
        }
        if self.sqls.len() >= MAX_STORED_SQL {
            return Err(invalid(format!(
                "{MAX_STORED_SQL} SQL texts are stored on this connection, the most it may \
                 have; close one first (close_sql)"
            )));
        }
        self.check_budget(sql.len())?;
        self.sqls.insert(sql_id, sql);
        Ok(())
    }

    fn check_budget(&self, more: usize) -> Result<(), Error> {
        let held = self.held();
        if held + more > self.held_budget() {
            return Err(invalid(format!(
                "this connection holds {held} bytes of queued requests, stored SQL texts and \
                 open transactions; {more} more would pass its budget of {} bytes \
                 ({HELD_BUDGET_MESSAGES} x MAX_REQUEST_BYTES): wait for answers, close streams \
                 or stored SQL texts",
                self.held_budget()
            )));
        }
        Ok(())
    }

    fn open_cursor(
        &mut self,
        stream_id: i32,
        cursor_id: i32,
        batch: &mut HranaBatch,
    ) -> Result<(), Error> {
        if self.cursors.contains_key(&cursor_id) {
            return Err(invalid(format!("cursor {cursor_id} is already open")));
        }
        if !self.streams.contains_key(&stream_id) {
            return Err(invalid(format!("stream {stream_id} is not open")));
        }
        let held = self.cursor_bytes();
        let max = self.config.limits.max_result_bytes;
        if held as u64 >= max {
            return Err(invalid(format!(
                "the open cursors of this connection hold {held} bytes of entries not yet \
                 fetched, MAX_RESULT_BYTES ({max}) or more: fetch or close them first"
            )));
        }
        self.resolve_batch(batch)?;
        self.cursors.insert(
            cursor_id,
            Cursor {
                stream_id,
                opening: true,
                entries: VecDeque::new(),
                bytes: 0,
            },
        );
        Ok(())
    }

    fn fetch(&mut self, request_id: i32, cursor_id: i32, max_count: u32) -> Out {
        let Some(cursor) = self.cursors.get_mut(&cursor_id) else {
            return err(
                request_id,
                &invalid(format!("cursor {cursor_id} is not open")),
            );
        };
        let take = (max_count as usize).min(cursor.entries.len());
        let entries: Vec<Json> = cursor.entries.drain(..take).collect();
        cursor.bytes = cursor
            .bytes
            .saturating_sub(entries.iter().map(json_len).sum());
        let done = cursor.entries.is_empty();
        ok(
            request_id,
            json!({"type": "fetch_cursor", "entries": entries, "done": done}),
        )
    }

    fn enqueue(&mut self, stream_id: i32, item: Queued, now_ms: u64) -> Vec<Out> {
        let request_id = match &item {
            Queued::Call { request_id, .. }
            | Queued::Autocommit { request_id }
            | Queued::CloseStream { request_id }
            | Queued::Fetch { request_id, .. } => *request_id,
        };
        let refuse = |e: Error, cursor: Option<i32>, me: &mut Self| {
            if let Some(c) = cursor {
                me.cursors.remove(&c);
            }
            vec![err(request_id, &e)]
        };
        let cursor = match &item {
            Queued::Call { cursor, .. } => *cursor,
            _ => None,
        };
        match self.streams.get(&stream_id) {
            None => {
                return refuse(
                    invalid(format!("stream {stream_id} is not open")),
                    cursor,
                    self,
                );
            }
            Some(slot) if slot.expired && !matches!(item, Queued::CloseStream { .. }) => {
                return refuse(
                    invalid(format!(
                        "stream {stream_id} expired (its transaction was unused for more than \
                         {} s): it was rolled back and nothing of it was written; close the \
                         stream and run the transaction again",
                        STREAM_IDLE_TIMEOUT_MS / 1000
                    )),
                    cursor,
                    self,
                );
            }
            Some(_) => {}
        }
        if self.queued() >= MAX_QUEUED {
            return refuse(
                invalid(format!(
                    "{MAX_QUEUED} requests are already waiting on this connection; wait for \
                     their answers"
                )),
                cursor,
                self,
            );
        }
        if let Err(e) = self.check_budget(item.bytes()) {
            return refuse(e, cursor, self);
        }
        let slot = self.streams.get_mut(&stream_id).expect("checked above");
        slot.queue.push_back(item);
        let mut out = Vec::new();
        self.pump(stream_id, now_ms, &mut out);
        out
    }

    /// Runs what the stream's queue has at its head while the stream is not busy.
    fn pump(&mut self, stream_id: i32, now_ms: u64, out: &mut Vec<Out>) {
        loop {
            let Some(slot) = self.streams.get_mut(&stream_id) else {
                return;
            };
            if slot.busy || slot.waiting {
                return;
            }
            let Some(item) = slot.queue.pop_front() else {
                return;
            };
            match item {
                Queued::Autocommit { request_id } => {
                    let autocommit = !slot.state.as_ref().is_some_and(StreamState::in_transaction);
                    out.push(ok(
                        request_id,
                        json!({"type": "get_autocommit", "is_autocommit": autocommit}),
                    ));
                }
                Queued::CloseStream { request_id } => {
                    // Its open transaction, if any, goes with it: nothing of it was stored.
                    self.streams.remove(&stream_id);
                    self.cursors.retain(|_, c| c.stream_id != stream_id);
                    out.push(ok(request_id, json!({"type": "close_stream"})));
                    return;
                }
                Queued::Fetch {
                    request_id,
                    cursor_id,
                    max_count,
                } => out.push(self.fetch(request_id, cursor_id, max_count)),
                Queued::Call {
                    request_id,
                    call,
                    cursor,
                    bytes,
                } => {
                    if self.in_flight.len() >= MAX_IN_FLIGHT {
                        slot.queue.push_front(Queued::Call {
                            request_id,
                            call,
                            cursor,
                            bytes,
                        });
                        slot.waiting = true;
                        self.ready.push_back(stream_id);
                        return;
                    }
                    slot.busy = true;
                    let id = self.next_job;
                    self.next_job += 1;
                    self.in_flight.insert(
                        id,
                        InFlight {
                            stream_id,
                            request_id,
                            cursor,
                            bytes,
                        },
                    );
                    out.push(Out::Run(Box::new(Job {
                        id,
                        work: Stream {
                            user: self.user.as_str().to_owned(),
                            state: slot.state.clone(),
                            call,
                            limits: self.config.limits,
                            now_ms,
                        },
                        bytes,
                    })));
                    return;
                }
            }
        }
    }

    /// Takes the outcome of job `id` (what `queue::serve` answered for it) and answers its
    /// request.
    pub fn complete(
        &mut self,
        id: u64,
        outcome: Result<StreamOutput, Error>,
        now_ms: u64,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(job) = self.in_flight.remove(&id) else {
            return out;
        };
        let budget = self.held_budget();
        let max_state = self.max_message();
        let held_elsewhere = self.held();
        let Some(slot) = self.streams.get_mut(&job.stream_id) else {
            return out;
        };
        slot.busy = false;
        slot.idle_since_ms = now_ms;
        let was_open = slot.state.as_ref().is_some_and(StreamState::in_transaction);
        match outcome {
            Ok(output) => {
                let mut next = output.next;
                let mut answer = None;
                if let Some(state) = &next
                    && state.in_transaction()
                {
                    let bytes = json_len(state);
                    let total = held_elsewhere.saturating_sub(slot.state_bytes) + bytes;
                    if bytes > max_state || total > budget {
                        next = next.map(StreamState::rolled_back);
                        answer = Some(err(
                            job.request_id,
                            &invalid(format!(
                                "the open transaction's requests add up to {bytes} bytes \
                                 (this connection would hold {total}; at most \
                                 MAX_REQUEST_BYTES, {max_state}, per transaction and {budget} \
                                 in all): it was rolled back and nothing of it was written"
                            )),
                        ));
                    }
                }
                slot.state_bytes = next.as_ref().map_or(0, json_len);
                slot.state = next;
                if let Some(answer) = answer {
                    if let Some(c) = job.cursor {
                        self.cursors.remove(&c);
                    }
                    out.push(answer);
                } else if let Some(cursor_id) = job.cursor {
                    if let Some(cursor) = self.cursors.get_mut(&cursor_id)
                        && cursor.opening
                        && cursor.stream_id == job.stream_id
                    {
                        cursor.bytes = output.results.iter().map(json_len).sum();
                        cursor.entries = output.results.into();
                        cursor.opening = false;
                    }
                    out.push(ok(job.request_id, json!({"type": "open_cursor"})));
                } else {
                    let result = output.results.into_iter().next().unwrap_or(Json::Null);
                    out.push(if result["type"] == "ok" {
                        ok(job.request_id, result["response"].clone())
                    } else {
                        Out::Send(json!({
                            "type": "response_error",
                            "request_id": job.request_id,
                            "error": result["error"],
                        }))
                    });
                }
            }
            Err(e) => {
                slot.state = slot.state.take().map(StreamState::rolled_back);
                slot.state_bytes = slot.state.as_ref().map_or(0, json_len);
                if let Some(c) = job.cursor {
                    self.cursors.remove(&c);
                }
                let mut error = error_json(&e);
                if was_open && !matches!(e, Error::TransactionConflict) {
                    let message = format!(
                        "{}; the stream's open transaction was rolled back with it and \
                         nothing of it was written",
                        error["message"].as_str().unwrap_or_default()
                    );
                    error["message"] = Json::String(message);
                }
                out.push(Out::Send(json!({
                    "type": "response_error",
                    "request_id": job.request_id,
                    "error": error,
                })));
            }
        }
        self.pump(job.stream_id, now_ms, &mut out);
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(stream_id) = self.ready.pop_front() else {
                break;
            };
            if let Some(slot) = self.streams.get_mut(&stream_id) {
                slot.waiting = false;
            }
            self.pump(stream_id, now_ms, &mut out);
        }
        out
    }

    /// Rolls back the open transactions of streams unused for [`STREAM_IDLE_TIMEOUT_MS`];
    /// their streams then refuse every request but `close_stream`. Called on every message
    /// and by the runtime's timer.
    pub fn expire(&mut self, now_ms: u64) {
        for slot in self.streams.values_mut() {
            let idle = !slot.busy && !slot.waiting && slot.queue.is_empty();
            if idle
                && slot.state.as_ref().is_some_and(StreamState::in_transaction)
                && now_ms.saturating_sub(slot.idle_since_ms) > STREAM_IDLE_TIMEOUT_MS
            {
                slot.state = None;
                slot.state_bytes = 0;
                slot.expired = true;
            }
        }
    }

    /// Jobs running now.
    #[must_use]
    pub fn running(&self) -> usize {
        self.in_flight.len()
    }
}

//! The WebSocket's plumbing: the upgrade, the socket's events into a `hrana_ws::Session`,
//! its jobs through the user's write queue (as every HTTP write), its answers back out.
//! The protocol itself is `crate::hrana_ws`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_util::StreamExt;
use worker::ws_events::WebsocketEvent;
use worker::{Env, Request, Response, WebSocket, WebSocketPair};

use super::entry;
use super::http::{ErrorShape, error_response, internal};
use super::js_clock::JsClock;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::hrana_ws::{Job, Out, Session};
use crate::request::UserId;
use crate::stream::STREAM_IDLE_TIMEOUT_MS;

/// One open socket.
struct Socket {
    socket: WebSocket,
    env: Env,
    config: Config,
    user: UserId,
    session: RefCell<Session>,
    closed: Cell<bool>,
}

/// `GET /db/<user>/` with `Upgrade: websocket`: accepts the socket with the best subprotocol
/// the client offers (`hrana3`, `hrana2`) and serves it until it closes. The token arrives
/// in the protocol's `hello`; nothing is read before it is checked.
pub(super) fn upgrade(
    req: &Request,
    env: &Env,
    config: Config,
    user: UserId,
) -> Result<Response, Error> {
    let header = |name: &str| req.headers().get(name).map_err(internal);
    if !header("Upgrade")?.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        let error = Error::UpgradeRequired {
            reason: format!(
                "/db/{user}/ serves Hrana over WebSocket (subprotocols hrana3, hrana2): connect \
                 with a ws:// or wss:// URL; over HTTP the endpoints under it are v2/pipeline, \
                 v3/pipeline, v3/cursor, v1/execute and v1/batch",
                user = user.as_str()
            ),
        };
        let mut response = error_response(&error, ErrorShape::Hrana).map_err(internal)?;
        response
            .headers_mut()
            .set("Upgrade", "websocket")
            .map_err(internal)?;
        return Ok(response);
    }
    if config.auth_token.is_none() && config.token_secret.is_none() && !config.allow_anonymous {
        return Err(Error::AuthNotConfigured);
    }
    let (name, version) = crate::hrana_ws::negotiate(header("Sec-WebSocket-Protocol")?.as_deref())?;
    let pair = WebSocketPair::new().map_err(internal)?;
    pair.server.accept().map_err(internal)?;
    let socket = Rc::new(Socket {
        socket: pair.server,
        env: env.clone(),
        session: RefCell::new(Session::new(config.clone(), user.clone(), version)),
        config,
        user,
        closed: Cell::new(false),
    });
    wasm_bindgen_futures::spawn_local(serve(Rc::clone(&socket)));
    wasm_bindgen_futures::spawn_local(tick(socket));
    let mut response = Response::from_websocket(pair.client).map_err(internal)?;
    response
        .headers_mut()
        .set("Sec-WebSocket-Protocol", name)
        .map_err(internal)?;
    Ok(response)
}

/// The socket's events, in order, into the session.
async fn serve(socket: Rc<Socket>) {
    let Ok(mut events) = socket.socket.events() else {
        socket.closed.set(true);
        return;
    };
    while let Some(event) = events.next().await {
        let outs = match event {
            Ok(WebsocketEvent::Message(message)) => {
                let now_ms = JsClock.epoch_ms();
                match message.text() {
                    Some(text) => socket.session.borrow_mut().receive(&text, now_ms),
                    None => socket.session.borrow_mut().receive_binary(),
                }
            }
            Ok(WebsocketEvent::Close(_)) | Err(_) => {
                // Completes the client's closing handshake (without it the client waits for
                // its own close timeout).
                if !socket.closed.get() {
                    let _ = socket
                        .socket
                        .close(Some(1000), Some("closed by the client"));
                }
                break;
            }
        };
        act(&socket, outs);
        if socket.closed.get() {
            break;
        }
    }
    // Open transactions go with the session: nothing of them was stored.
    socket.closed.set(true);
}

/// Releases abandoned transactions while the socket is quiet.
async fn tick(socket: Rc<Socket>) {
    let every_ms = u32::try_from(STREAM_IDLE_TIMEOUT_MS / 6).unwrap_or(10_000);
    while !socket.closed.get() {
        JsClock.sleep(every_ms).await;
        socket.session.borrow_mut().expire(JsClock.epoch_ms());
    }
}

fn act(socket: &Rc<Socket>, outs: Vec<Out>) {
    for out in outs {
        match out {
            Out::Send(message) => {
                if !socket.closed.get() {
                    // A client gone meanwhile: its close event ends the session.
                    let _ = socket.socket.send_with_str(message.to_string());
                }
            }
            Out::Run(job) => wasm_bindgen_futures::spawn_local(run(Rc::clone(socket), *job)),
            Out::Close { code, reason } => {
                // Close reasons are limited to 123 bytes.
                let mut reason = reason;
                while reason.len() > 123 {
                    reason.pop();
                }
                let _ = socket.socket.close(Some(code), Some(reason));
                socket.closed.set(true);
            }
        }
    }
}

/// One job through the user's write queue; its outcome back into the session.
async fn run(socket: Rc<Socket>, job: Job) {
    let outcome = entry::serve_socket_job(
        &socket.env,
        &socket.config,
        &socket.user,
        job.bytes,
        job.work,
    )
    .await;
    let outs = socket
        .session
        .borrow_mut()
        .complete(job.id, outcome, JsClock.epoch_ms());
    act(&socket, outs);
}

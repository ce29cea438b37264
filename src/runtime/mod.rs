//! The Workers runtime side: the only code that names `worker::` or `js_sys`. It adapts the
//! runtime to the core's seams and decides nothing. One file per concept:
//! - `http`: responses, config loading and query parameters, shared by both entry points;
//! - `r2`: the R2 binding behind `ObjectStore`;
//! - `js_clock`: `Date.now()` behind `Clock`, and its once-per-isolate calibration;
//! - `entry`: the `fetch` entry point and its routes;
//! - `websocket`: the WebSocket upgrade and socket plumbing for `crate::hrana_ws`;
//! - `durable_object`: the `UserDb` Durable Object class and its storage adapter.
//!
//! Imports go one way: `entry` and `durable_object` use `http`, `r2` and `js_clock`, never
//! each other; `websocket` is `entry`'s (it runs its jobs with `entry`'s context, queues and
//! report handling).

mod durable_object;
mod entry;
mod http;
mod js_clock;
mod r2;
mod websocket;

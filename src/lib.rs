//! A Cloudflare Worker that keeps each user's SQLite database as one object in R2, loads it into
//! an in-memory SQLite per request, lists its tables, writes it back and reports the delays.
//!
//! Module map (the platform glue is the last one; everything above it is plain Rust):
//! - [`request`]: route table and user-id validation.
//! - [`auth`]: bearer-token access control.
//! - [`config`]: vars and secrets, parsed and checked.
//! - [`pipeline`]: load → query → save → report, over a store and a clock.
//! - [`cache`]: the version cache of open databases, keyed by object and entity tag.
//! - [`sqlite`]: SQLite initialise, load an image, list tables, export.
//! - [`header`]: validation of the 100-byte SQLite header.
//! - [`import`]: planning the copy of a database into a Durable Object (batches, limits).
//! - [`store`]: the object-store seam, and [`store::MemoryStore`] for tests and benches.
//! - [`clock`]: the time source seam.
//! - [`delay`]: the spec's thresholds and status/action classification.
//! - [`report`]: the response JSON.
//! - [`trend`]: per-user recent sync times, recommendations and warning log lines.
//! - [`error`]: the one error type and its HTTP mapping.
//! - [`fixtures`]: deterministic demo and benchmark databases.
//! - `worker_glue` (wasm32 only): R2 and JS-clock backends and the `fetch` entry point.
//! - `durable_glue` (wasm32 only): the per-user SQLite-backed Durable Object and its routes.

pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod delay;
pub mod error;
pub mod fixtures;
pub mod header;
pub mod import;
pub mod pipeline;
pub mod report;
pub mod request;
pub mod sqlite;
pub mod store;
pub mod trend;

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
mod durable_glue;
#[cfg(all(target_family = "wasm", target_os = "unknown"))]
mod worker_glue;

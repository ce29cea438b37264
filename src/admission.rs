//! Memory admission: the isolate's wasm memory stays under its budget however many requests it
//! runs at once.
//!
//! One [`Gate`] per isolate holds a capacity: what the requests' own memory may add up to (the
//! images they load, the results they build, their bodies). The parts every request shares
//! (the version cache's budget, SQLite's heap limit, a fixed headroom) are outside it, so the
//! capacity plus those stays under [`crate::config::ISOLATE_MEMORY_BYTES`]
//! ([`crate::config::Config::admission_capacity_bytes`]).
//!
//! Each request holds a [`Reservation`] that grows as it learns what it needs:
//! - on arrival, its body (three times its length: the bytes, their parse, the answer);
//! - before a download, the object's size with the image's headroom ([`Admitted`], an
//!   [`ObjectStore`] wrapper: the body is still outside wasm memory when the size is known);
//! - while its statements run, its result as the executor counts it ([`charge_result`]).
//!
//! Growing on arrival or before a download waits (polling, as the write queue does) while
//! other requests hold the memory, until [`MAX_WAIT_MS`]; then the request is refused with
//! [`Error::MemoryBusy`] (503, `Retry-After`), nothing written. A result cannot wait in the
//! middle of a statement, so growing it past what is free refuses at once. A request alone in
//! the isolate is always admitted: the capacity is sized for the largest single request.
//! Releasing is dropping the reservation.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::Serialize;

use crate::clock::Clock;
use crate::error::Error;
use crate::storage::store::{
    Fetched, ObjectHead, ObjectStore, PutCondition, PutOutcome, StoreError, StoreErrorKind,
};

/// Longest a request waits for memory other requests hold before it is refused.
pub const MAX_WAIT_MS: f64 = 10_000.0;

/// Waits between looks at the gate while waiting (jittered by the request's nonce).
const POLL_MIN_MS: u32 = 10;
const POLL_SPREAD_MS: u32 = 30;

/// A result is charged in steps of this size, so the gate is not consulted for every value.
const RESULT_STEP_BYTES: u64 = 256 * 1024;

/// What a request that runs statements is admitted with for its result, on arrival (where it
/// can wait): most results never need more, so they are never refused halfway.
pub const RESULT_ALLOWANCE_BYTES: u64 = 2 * RESULT_STEP_BYTES;

/// What the image of a downloaded object of `len` bytes takes in wasm memory: the bytes and
/// room for the pages a write adds (the same headroom as the memory budget's).
#[must_use]
pub fn image_bytes(len: u64) -> u64 {
    len + (len / 32).clamp(64 * 1024, 2 * 1024 * 1024)
}

/// What a request body of `len` bytes takes: the bytes, their parsed form, and the answer.
#[must_use]
pub fn body_bytes(len: u64) -> u64 {
    3 * len
}

/// The isolate's memory admission (see the module docs).
#[derive(Debug)]
pub struct Gate {
    capacity: u64,
    state: RefCell<GateStats>,
}

/// What the gate has seen, for the report and the logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GateStats {
    /// The capacity: what requests' own memory may add up to.
    pub capacity_bytes: u64,
    /// Held now by requests in flight.
    pub reserved_bytes: u64,
    /// The most ever held at once.
    pub peak_reserved_bytes: u64,
    /// Requests in flight holding a reservation.
    pub requests: u32,
    /// Requests that had to wait for memory, since the isolate started.
    pub waited: u64,
    /// Requests refused for memory (503 `memory_busy`), since the isolate started.
    pub refused: u64,
}

impl Gate {
    /// A gate letting requests' own memory add up to `capacity` bytes.
    #[must_use]
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            state: RefCell::new(GateStats {
                capacity_bytes: capacity,
                ..GateStats::default()
            }),
        }
    }

    /// What the gate holds now and has seen.
    #[must_use]
    pub fn stats(&self) -> GateStats {
        *self.state.borrow()
    }

    /// Admits a request needing `bytes` on arrival, plus `result_allowance` bytes its result
    /// may use before it is charged more: waits while others hold the memory, until
    /// [`MAX_WAIT_MS`].
    ///
    /// # Errors
    /// [`Error::MemoryBusy`] when the memory did not come free in time; nothing is held.
    pub async fn admit<C: Clock>(
        self: &Rc<Self>,
        bytes: u64,
        result_allowance: u64,
        clock: &C,
        jitter: u64,
    ) -> Result<Rc<Reservation>, Error> {
        self.state.borrow_mut().requests += 1;
        let reservation = Rc::new(Reservation {
            gate: Rc::clone(self),
            held: Cell::new(0),
            result_charged: Cell::new(0),
            waited_ms: Cell::new(0.0),
            jitter: Cell::new(jitter),
        });
        reservation.grow(bytes + result_allowance, clock).await?;
        reservation.result_charged.set(result_allowance);
        Ok(reservation)
    }

    fn try_take(&self, held: u64, bytes: u64) -> bool {
        let mut s = self.state.borrow_mut();
        // Alone (nobody else holds anything): always admitted, the capacity is sized for the
        // largest single request.
        let alone = s.reserved_bytes == held;
        if !alone && s.reserved_bytes.saturating_add(bytes) > self.capacity {
            return false;
        }
        s.reserved_bytes += bytes;
        s.peak_reserved_bytes = s.peak_reserved_bytes.max(s.reserved_bytes);
        true
    }

    fn busy(&self, bytes: u64) -> Error {
        let mut s = self.state.borrow_mut();
        s.refused += 1;
        Error::MemoryBusy {
            needed_bytes: bytes,
            in_use_bytes: s.reserved_bytes,
            capacity_bytes: self.capacity,
        }
    }
}

/// One request's share of the gate; dropping it gives the memory back.
#[derive(Debug)]
pub struct Reservation {
    gate: Rc<Gate>,
    held: Cell<u64>,
    result_charged: Cell<u64>,
    waited_ms: Cell<f64>,
    jitter: Cell<u64>,
}

/// What a request's reservation came to, for its report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Admission {
    /// Bytes this request held at its end (body, images, result).
    pub reserved_bytes: u64,
    /// Milliseconds it waited for memory other requests held (0: admitted at once).
    pub waited_ms: f64,
    /// The isolate's gate when the report was made.
    pub isolate: GateStats,
}

impl Reservation {
    /// Bytes held.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.held.get()
    }

    /// What the report says about this request's admission.
    #[must_use]
    pub fn admission(&self) -> Admission {
        Admission {
            reserved_bytes: self.held.get(),
            waited_ms: crate::delay::round2(self.waited_ms.get()),
            isolate: self.gate.stats(),
        }
    }

    /// Takes `bytes` more at once, if they are free (or this request is alone).
    #[must_use]
    pub fn try_grow(&self, bytes: u64) -> bool {
        if bytes == 0 {
            return true;
        }
        let ok = self.gate.try_take(self.held.get(), bytes);
        if ok {
            self.held.set(self.held.get() + bytes);
        }
        ok
    }

    /// Takes `bytes` more, waiting while other requests hold the memory, until
    /// [`MAX_WAIT_MS`] of waiting in all.
    ///
    /// # Errors
    /// [`Error::MemoryBusy`] when they did not come free in time.
    pub async fn grow<C: Clock>(&self, bytes: u64, clock: &C) -> Result<(), Error> {
        if self.try_grow(bytes) {
            return Ok(());
        }
        if self.waited_ms.get() == 0.0 {
            self.gate.state.borrow_mut().waited += 1;
        }
        loop {
            if self.waited_ms.get() >= MAX_WAIT_MS {
                return Err(self.gate.busy(bytes));
            }
            let j = self.jitter.get();
            self.jitter
                .set(j.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            let wait =
                POLL_MIN_MS + u32::try_from((j >> 33) % u64::from(POLL_SPREAD_MS)).unwrap_or(0);
            let start = clock.now_ms();
            clock.sleep(wait).await;
            // A clock that does not advance (frozen between I/O) still counts the wait asked.
            let waited = (clock.now_ms() - start).max(f64::from(wait));
            self.waited_ms.set(self.waited_ms.get() + waited);
            if self.try_grow(bytes) {
                return Ok(());
            }
        }
    }

    /// Charges the request's result as it grows to `total` bytes, in steps; refuses at once
    /// when the step is not free (a statement cannot wait halfway).
    fn charge_result(&self, total: u64) -> Result<(), Error> {
        let charged = self.result_charged.get();
        if total <= charged {
            return Ok(());
        }
        let target = total.div_ceil(RESULT_STEP_BYTES) * RESULT_STEP_BYTES;
        let more = target - charged;
        if !self.try_grow(more) {
            return Err(self.gate.busy(more));
        }
        self.result_charged.set(target);
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut s = self.gate.state.borrow_mut();
        s.reserved_bytes = s.reserved_bytes.saturating_sub(self.held.get());
        s.requests = s.requests.saturating_sub(1);
    }
}

thread_local! {
    /// The reservation that results built now are charged to. SQL runs synchronously (no
    /// await inside a statement), so while it is set no other request's code runs.
    static CHARGING: RefCell<Option<Rc<Reservation>>> = const { RefCell::new(None) };
}

/// Runs `f` (statements of one request) with its results charged to `reservation`.
pub fn charging<T>(reservation: Option<&Rc<Reservation>>, f: impl FnOnce() -> T) -> T {
    let previous = CHARGING.with(|c| c.replace(reservation.cloned()));
    struct Restore(Option<Rc<Reservation>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CHARGING.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(previous);
    f()
}

/// Charges the running request's result, now `total` bytes (the executor's count), to its
/// reservation, if [`charging`] set one.
///
/// # Errors
/// [`Error::MemoryBusy`] when the memory is held by other requests.
pub fn charge_result(total: u64) -> Result<(), Error> {
    CHARGING.with(|c| match &*c.borrow() {
        Some(r) => r.charge_result(total),
        None => Ok(()),
    })
}

/// An [`ObjectStore`] whose downloads are charged to a request's reservation before their
/// bytes enter wasm memory: a `get` that found an object waits for its image's memory.
#[derive(Debug)]
pub struct Admitted<'c, S, C> {
    /// The store underneath.
    pub inner: S,
    /// The request's reservation.
    pub reservation: Rc<Reservation>,
    clock: &'c C,
}

impl<'c, S, C> Admitted<'c, S, C> {
    /// Charges `inner`'s downloads to `reservation`, waiting on `clock`.
    pub fn new(inner: S, reservation: Rc<Reservation>, clock: &'c C) -> Self {
        Self {
            inner,
            reservation,
            clock,
        }
    }
}

impl<S: ObjectStore, C: Clock> ObjectStore for Admitted<'_, S, C> {
    type Body = S::Body;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<Self::Body>, StoreError> {
        let fetched = self.inner.get(key, max_bytes, if_none_match).await?;
        if let Fetched::Found(object) = &fetched {
            let len = crate::storage::store::Body::len(&object.body) as u64;
            if let Err(e) = self.reservation.grow(image_bytes(len), self.clock).await {
                let kind = match e {
                    Error::MemoryBusy {
                        needed_bytes,
                        in_use_bytes,
                        capacity_bytes,
                    } => StoreErrorKind::MemoryBusy {
                        needed_bytes,
                        in_use_bytes,
                        capacity_bytes,
                    },
                    _ => StoreErrorKind::Permanent,
                };
                return Err(StoreError::new("get", kind, format!("{key}: {e}")));
            }
        }
        Ok(fetched)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StoreError> {
        self.inner.head(key).await
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError> {
        self.inner.put(key, bytes, metadata, condition).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<crate::storage::store::Listed>, StoreError> {
        self.inner.list(prefix).await
    }
}

//! `Date.now()` behind the `Clock` seam, and the once-per-isolate check of whether it moves
//! during computation (it does locally; deployed, it only moves across I/O).

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use js_sys::Date;

use crate::clock::Clock;

/// 0 = not calibrated, 1 = the clock advances during CPU work, 2 = it is frozen.
static CPU_CLOCK: AtomicU8 = AtomicU8::new(0);

/// `Date.now()`: millisecond resolution; frozen between I/O on deployed Workers.
#[derive(Debug, Clone, Copy)]
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

    async fn sleep(&self, ms: u32) {
        worker::Delay::from(Duration::from_millis(u64::from(ms))).await;
    }
}

/// Finds out once per isolate whether `Date.now()` moves during pure computation.
///
/// Spins through a fixed amount of arithmetic (about 3 ms of CPU) and checks the clock as it
/// goes; locally it stops at the first tick, deployed it spends the whole budget.
pub(crate) fn calibrate_once() {
    if CPU_CLOCK.load(Ordering::Relaxed) != 0 {
        return;
    }
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

/// A random 64-bit value for telling this request's writes apart (not for secrets).
pub(crate) fn nonce() -> u64 {
    let high = (js_sys::Math::random() * f64::from(u32::MAX)) as u64;
    let low = (js_sys::Math::random() * f64::from(u32::MAX)) as u64;
    (high << 32) ^ low ^ (Date::now() as u64)
}

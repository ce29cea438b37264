//! Clocks: a monotonic millisecond reading for spans, and wall time for `db-version`.

/// A source of time for measuring request phases, and of waiting between retries.
#[allow(async_fn_in_trait)]
pub trait Clock {
    /// Milliseconds since an arbitrary origin; only differences are meaningful.
    fn now_ms(&self) -> f64;
    /// Wall-clock milliseconds since the Unix epoch.
    fn epoch_ms(&self) -> u64;
    /// Smallest step the clock can show; a span shorter than this may read 0.
    fn resolution_ms(&self) -> f64;
    /// What the clock reads, for the `clock.source` field.
    fn source(&self) -> &'static str;
    /// Whether the clock advances while the isolate only computes: `Some(false)` in deployed
    /// Workers, which freeze time between I/O; `None` when not yet known.
    fn advances_during_cpu(&self) -> Option<bool>;
    /// Waits `ms` milliseconds (a timer in the Workers runtime; a test clock just advances).
    async fn sleep(&self, ms: u32);
}

/// The host's clocks (`Instant` and `SystemTime`), for tests and benchmarks.
#[cfg(not(all(target_family = "wasm", target_os = "unknown")))]
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: std::time::Instant,
}

#[cfg(not(all(target_family = "wasm", target_os = "unknown")))]
impl SystemClock {
    /// A clock whose origin is now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            origin: std::time::Instant::now(),
        }
    }
}

#[cfg(not(all(target_family = "wasm", target_os = "unknown")))]
impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(all(target_family = "wasm", target_os = "unknown")))]
impl Clock for SystemClock {
    fn now_ms(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1000.0
    }

    fn epoch_ms(&self) -> u64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    fn resolution_ms(&self) -> f64 {
        0.001
    }

    fn source(&self) -> &'static str {
        "std::time::Instant"
    }

    fn advances_during_cpu(&self) -> Option<bool> {
        Some(true)
    }

    async fn sleep(&self, ms: u32) {
        std::thread::sleep(std::time::Duration::from_millis(u64::from(ms)));
    }
}

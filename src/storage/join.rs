//! Running a few futures together on the Workers runtime's single thread: the deltas a load
//! fetches, and a manifest read beside a base read.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use super::manifest::PARALLEL_FETCHES;

/// Runs futures together, at most [`PARALLEL_FETCHES`] at a time (a sliding window: the next
/// starts as soon as one finishes), and returns their outputs in order. A few lines instead
/// of a dependency: the Workers runtime is single-threaded, so plain polling is all it takes.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let n = futures.len();
    let mut slots: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = (0..n).map(|_| None).collect();
    let (mut started, mut running) = (0, 0);
    poll_fn(|cx| {
        loop {
            while running < PARALLEL_FETCHES && started < n {
                started += 1;
                running += 1;
            }
            let mut progressed = false;
            for (slot, result) in slots[..started].iter_mut().zip(&mut out) {
                if let Some(f) = slot
                    && let Poll::Ready(v) = f.as_mut().poll(cx)
                {
                    *result = Some(v);
                    *slot = None;
                    running -= 1;
                    progressed = true;
                }
            }
            if started == n && running == 0 {
                return Poll::Ready(());
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Runs two futures together.
pub(crate) async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut ra, mut rb) = (None, None);
    poll_fn(|cx| {
        if ra.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    (ra.expect("joined"), rb.expect("joined"))
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// A future that is pending on its first poll and ready on a later one, counting how many
    /// are in flight at once.
    struct Hop {
        id: usize,
        started: bool,
        in_flight: Rc<Cell<usize>>,
        peak: Rc<Cell<usize>>,
        polls_left: usize,
    }

    impl Future for Hop {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<usize> {
            if !self.started {
                self.started = true;
                self.in_flight.set(self.in_flight.get() + 1);
                self.peak.set(self.peak.get().max(self.in_flight.get()));
            }
            if self.polls_left == 0 {
                self.in_flight.set(self.in_flight.get() - 1);
                return Poll::Ready(self.id);
            }
            self.polls_left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// At most six run at once, a finished one is replaced at once, and outputs keep order.
    #[test]
    fn join_all_keeps_order_and_the_connection_limit() {
        let (in_flight, peak) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let hops: Vec<Hop> = (0..20)
            .map(|id| Hop {
                id,
                started: false,
                in_flight: Rc::clone(&in_flight),
                peak: Rc::clone(&peak),
                polls_left: 1 + id % 4,
            })
            .collect();
        let out = pollster::block_on(join_all(hops));
        assert_eq!(out, (0..20).collect::<Vec<_>>());
        assert_eq!(peak.get(), PARALLEL_FETCHES);
        assert_eq!(in_flight.get(), 0);
    }
}

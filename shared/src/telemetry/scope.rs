//! A value a request's future sees in a thread-local while it is polled:
//! what [`super::ServerSpan::run`] and [`super::run_untraced`] put in place.
//!
//! `tokio::task_local!` does the same, through a `RefCell` in the
//! thread-local and a scope guard. [`Scoped`] swaps the value into a `Cell`
//! before each poll of the future and takes it back after, with a guard
//! that also puts the thread-local's earlier value back when the poll
//! panics; the future is polled where it is, never moved into a wrapper of
//! its own. That is cheaper than the task-local in an `async` block it
//! replaced, as long as the value is cheap to move: the server span is a
//! boxed record, and the untraced context a small struct of its own
//! ([`super::UntracedContext`]) rather than opentelemetry's `SpanContext`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::LocalKey;

/// A thread-local slot that [`Scoped`] fills while its future is polled.
pub(crate) type Slot<T> = LocalKey<Cell<Option<T>>>;

pin_project_lite::pin_project! {
    /// `fut`, polled with its value in `slot`; the value is there again,
    /// for [`Scoped::take_value`], once `fut` is done.
    pub struct Scoped<T: 'static, F> {
        slot: &'static Slot<T>,
        // Out only while `fut` is polled (it is then in `slot`), or once
        // taken.
        value: Option<T>,
        #[pin]
        fut: F,
    }
}

impl<T: 'static, F> Scoped<T, F> {
    /// `fut`, to be polled with `value` in `slot`.
    pub(crate) fn new(slot: &'static Slot<T>, value: T, fut: F) -> Self {
        Self {
            slot,
            value: Some(value),
            fut,
        }
    }

    /// Takes the value (as `fut` left it), once `fut` is done; `None` if
    /// taken already. Polling again after this panics.
    pub fn take_value(self: Pin<&mut Self>) -> Option<T> {
        self.project().value.take()
    }
}

impl<T: 'static, F: Future> Future for Scoped<T, F> {
    /// `fut`'s, as it is: handing the value back in a tuple with it moved a
    /// request's whole response twice more (about 240 instructions of an
    /// unsampled cache hit, callgrind: 663 over export off, 426 without).
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let value = this.value.take();
        assert!(
            value.is_some(),
            "a scoped future is not polled once its value is taken"
        );
        let _restore = Restore {
            slot: this.slot,
            before: this.slot.replace(value),
            ours: this.value,
        };
        this.fut.poll(cx)
    }
}

/// Puts back into `slot` what was there before a poll (nothing, unless a
/// scoped future is polled inside another's poll, which the services never
/// do), and hands what is there now to `ours`; on drop, so also when the
/// poll panics.
struct Restore<'a, T: 'static> {
    slot: &'static Slot<T>,
    before: Option<T>,
    ours: &'a mut Option<T>,
}

impl<T: 'static> Drop for Restore<'_, T> {
    fn drop(&mut self) {
        if let Ok(value) = self.slot.try_with(|cell| cell.replace(self.before.take())) {
            *self.ours = value;
        }
    }
}

/// Runs `f` on the value in `slot`, if there is one. The value is out of
/// the slot while `f` runs: a nested call sees none.
pub(crate) fn with<T: 'static, R>(
    slot: &'static Slot<T>,
    f: impl FnOnce(&mut T) -> R,
) -> Option<R> {
    let mut value = slot.try_with(Cell::take).ok().flatten()?;
    let out = f(&mut value);
    slot.set(Some(value));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static NUMBER: Cell<Option<u32>> = const { Cell::new(None) };
    }

    fn current() -> Option<u32> {
        with(&NUMBER, |n| *n)
    }

    #[test]
    fn futures_polled_in_turn_each_see_their_own_value() {
        use std::pin::pin;
        let (go_a, wait_a) = tokio::sync::oneshot::channel::<()>();
        let (go_b, wait_b) = tokio::sync::oneshot::channel::<()>();
        // The value seen before and after the future waits.
        let seen = |wait: tokio::sync::oneshot::Receiver<()>| async move {
            let before = current();
            let _ = wait.await;
            (before, current())
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut a = pin!(Scoped::new(&NUMBER, 1, seen(wait_a)));
        let mut b = pin!(Scoped::new(&NUMBER, 2, seen(wait_b)));
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(current(), None, "between polls, none is in place");
        go_b.send(()).unwrap();
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Ready((Some(2), Some(2))));
        assert_eq!(b.as_mut().take_value(), Some(2));
        go_a.send(()).unwrap();
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Ready((Some(1), Some(1))));
        assert_eq!(a.as_mut().take_value(), Some(1));
        assert_eq!(a.as_mut().take_value(), None, "taken once");
        assert_eq!(current(), None);
    }

    #[test]
    fn what_the_future_changes_comes_back() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut f = Box::pin(Scoped::new(&NUMBER, 1, async {
            with(&NUMBER, |n| *n += 41);
        }));
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(f.as_mut().take_value(), Some(42));
    }

    #[test]
    fn a_panicking_poll_leaves_nothing_behind() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut f = Box::pin(Scoped::new(&NUMBER, 7, async {
            panic!("the handler failed")
        }));
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = f.as_mut().poll(&mut cx);
        }));
        assert!(polled.is_err());
        assert_eq!(current(), None, "the thread's next future starts clean");
    }
}

//! The store's synchronous API over the async driver: a small tokio runtime
//! the store owns, on which every call's future runs while the calling
//! thread waits on a channel.
//!
//! The caller may be a plain thread (the worker) or a task of another tokio
//! runtime (a `#[tokio::test]`, the analysts' service): neither `block_on`
//! of the caller's runtime nor a nested runtime is involved, so nothing
//! panics with "cannot start a runtime from within a runtime". The caller's
//! thread is blocked for the call, as with any synchronous store.

use std::future::Future;

use tokio::runtime::{Builder, Runtime};

use crate::ScyllaError;

#[derive(Debug)]
pub struct Bridge {
    // An Option only so that `Drop` can take it for `shutdown_background`.
    rt: Option<Runtime>,
}

impl Bridge {
    /// A runtime of `workers` threads (the driver's connections and the
    /// store's requests; 1–2 are plenty for one worker's store).
    pub fn new(workers: usize) -> std::io::Result<Bridge> {
        let rt = Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("swabstream-scylla")
            .enable_all()
            .build()?;
        Ok(Bridge { rt: Some(rt) })
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("the runtime is only taken when dropped")
    }

    /// Runs `future` on the store's runtime and waits for its output.
    pub fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, ScyllaError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt().spawn(async move {
            let _ = tx.send(future.await);
        });
        // A panic in the future drops `tx` unsent.
        rx.recv().map_err(|_| ScyllaError::Runtime)
    }

    /// Enters the runtime's context, e.g. to drop driver objects whose
    /// `Drop` spawns or aborts tasks.
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.rt().enter()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks end, which tokio refuses
        // (with a panic) inside another runtime; this does not wait.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn answer(after: Duration) -> u32 {
        tokio::time::sleep(after).await;
        42
    }

    #[test]
    fn from_a_plain_thread() {
        let b = Bridge::new(1).unwrap();
        assert_eq!(b.run(answer(Duration::from_millis(5))).unwrap(), 42);
        // Several threads share one bridge's runtime.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| assert_eq!(b.run(answer(Duration::from_millis(2))).unwrap(), 42));
            }
        });
    }

    #[tokio::test]
    async fn from_inside_a_current_thread_runtime_and_dropped_there() {
        let b = Bridge::new(2).unwrap();
        // The future needs a timer, which only the bridge's runtime drives:
        // this thread's runtime is blocked meanwhile.
        assert_eq!(b.run(answer(Duration::from_millis(5))).unwrap(), 42);
        let _guard = b.enter();
        drop(_guard);
        drop(b);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_inside_a_multi_thread_runtime() {
        let b = Bridge::new(1).unwrap();
        assert_eq!(b.run(answer(Duration::from_millis(5))).unwrap(), 42);
        assert_eq!(b.run(async { tokio::spawn(async { 7 }).await.unwrap() }).unwrap(), 7);
    }

    #[test]
    fn a_panicking_future_is_an_error_not_a_hang() {
        let b = Bridge::new(1).unwrap();
        let r: Result<(), _> = b.run(async { panic!("driver bug") });
        assert!(matches!(r, Err(ScyllaError::Runtime)));
        // The runtime survives it.
        assert_eq!(b.run(async { 1 }).unwrap(), 1);
    }
}

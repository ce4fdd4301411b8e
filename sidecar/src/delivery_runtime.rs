//! The runtime that delivery runs on: threads of its own, at a lower CPU priority than the
//! sessions.
//!
//! A client waits for the `250` that ends its DATA; nobody waits for a delivery to start a few
//! milliseconds later, because the message is already durable in the spool. When the pod's CPUs
//! are contended (the application itself, a burst of sessions), the scheduler should run the
//! sessions first. A nice value is a weight, not a gate: delivery still gets its share of a busy
//! CPU (a quarter next to one runnable thread at the default priority, at nice 5) and all of an
//! idle one, so the queue drains under any load and the spool's limits keep the backlog bounded.
//!
//! Not lower than that by default: delivery takes the spool's locks that sessions also take, and a
//! delivery thread preempted while it holds one makes the sessions wait for its next turn. At nice
//! 19 that turned the accept p99 at 10 sessions from 2 into 14 ms (docs/benchmarks.md).

use std::{future::Future, io};
use tokio::{runtime::Runtime, task::JoinHandle};

/// Owns the delivery runtime; dropping it stops every task on it without waiting.
#[derive(Debug)]
pub struct DeliveryRuntime {
    runtime: Option<Runtime>,
}

impl DeliveryRuntime {
    /// Builds a runtime with one worker per CPU, each at `nice` (0 leaves the priority as it is).
    /// A priority that cannot be set is logged once and the runtime runs at the default.
    pub fn build(nice: i32) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("delivery")
            .enable_all()
            .on_thread_start(move || lower_this_thread(nice))
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// [`DeliveryRuntime::build`], or when the threads cannot start (logged), none: then
    /// delivery shares the caller's runtime.
    pub fn start(nice: i32) -> Self {
        Self::build(nice).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot start the delivery threads; delivery shares the sessions' threads");
            Self { runtime: None }
        })
    }

    /// Runs `future` on the delivery threads, or on the caller's runtime when there are none
    /// (they could not start, or the drain has shut them down).
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(rt) => rt.spawn(future),
            None => tokio::spawn(future),
        }
    }

    /// Stops the runtime's tasks (pooled upstream connections, attempts left by an aborted
    /// runner) without blocking the caller, which may be an async task.
    pub fn shutdown(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for DeliveryRuntime {
    fn drop(&mut self) {
        // A runtime dropped inside another runtime's task would panic while blocking.
        self.shutdown();
    }
}

/// Lowers the calling thread's priority to `nice`, never raising it. Linux applies
/// `setpriority(PRIO_PROCESS, tid)` to that one thread (setpriority(2), BUGS), and threads it
/// starts inherit the value.
fn lower_this_thread(nice: i32) {
    let tid = Some(rustix::thread::gettid());
    let now = rustix::process::getpriority_process(tid).unwrap_or(0);
    if nice <= now {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(tid, nice) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(error = %e, nice, "cannot lower the delivery threads' CPU priority; they run at the default");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_thread() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
    }

    #[test]
    fn delivery_threads_run_lower_and_the_caller_keeps_its_priority() {
        let before = this_thread();
        let lower = (before + 5).min(19);
        assert_ne!(lower, before, "run this test below nice 19");
        let rt = DeliveryRuntime::build(lower).expect("runtime");
        let waiter = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let on_delivery = waiter.block_on(rt.spawn(async { this_thread() })).expect("task");
        assert_eq!(on_delivery, lower);
        assert_eq!(this_thread(), before);
        // A nice value below the thread's own is not a request to raise it.
        let higher = DeliveryRuntime::build(before - 1).expect("runtime");
        assert_eq!(
            waiter
                .block_on(higher.spawn(async { this_thread() }))
                .expect("task"),
            before
        );
    }
}

//! Worker threads for connections, each a single-threaded tokio runtime (as nginx's worker
//! processes are): a connection handed to a worker lives on that thread, with no cross-thread
//! wake-ups and no work stealing. The next connection goes to the least-loaded worker.

use anyhow::{Context, Result};
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{error, warn};

/// A connection's work, started on the worker thread (so its sockets register there).
type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A pool of worker threads.
pub struct Workers {
    name: &'static str,
    queues: Vec<mpsc::UnboundedSender<Job>>,
    /// Open connections per worker.
    load: Arc<[AtomicUsize]>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (0: one per CPU) named `NAME-i`; when stopped, each gives its
    /// open connections `drain` to finish, then drops them.
    pub fn start(name: &'static str, count: usize, drain: Duration) -> Result<Self> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let load: Arc<[AtomicUsize]> = (0..count).map(|_| AtomicUsize::new(0)).collect();
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for i in 0..count {
            let (queue, incoming) = mpsc::unbounded_channel();
            queues.push(queue);
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || run(name, incoming, drain))
                .with_context(|| format!("starting {name} worker thread {i}"))?;
            threads.push(thread);
        }
        Ok(Self {
            name,
            queues,
            load,
            threads,
        })
    }

    /// The number of workers.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Whether the pool has no workers (never, once started).
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Runs `job` on the least-loaded worker; it counts as open there until its future ends.
    pub fn spawn<F, Fut>(&self, job: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some((i, _)) = self
            .load
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| n.load(Ordering::Relaxed))
        else {
            return;
        };
        self.load[i].fetch_add(1, Ordering::Relaxed);
        let load = self.load.clone();
        let wrapped: Job = Box::new(move || {
            Box::pin(async move {
                job().await;
                load[i].fetch_sub(1, Ordering::Relaxed);
            })
        });
        if self.queues[i].send(wrapped).is_err() {
            self.load[i].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes no more work and waits until every worker has drained (or dropped, after the
    /// drain time) its connections.
    pub async fn stop(self) {
        drop(self.queues);
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || threads.into_iter().all(|t| t.join().is_ok())).await;
        if !joined.unwrap_or(false) {
            warn!(pool = self.name, "a worker thread ended abnormally");
        }
    }
}

/// One worker: runs the jobs handed to it until the pool stops, then drains.
fn run(name: &'static str, mut incoming: mpsc::UnboundedReceiver<Job>, drain: Duration) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!(pool = name, "a worker could not start its runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                job = incoming.recv() => match job {
                    Some(job) => {
                        running.spawn(job());
                    }
                    None => break,
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        let drained = tokio::time::timeout(drain, async { while running.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                pool = name,
                open = running.len(),
                "connections still open after the drain time: closing them"
            );
            running.abort_all();
        }
    });
}

//! Worker threads for connections, each a single-threaded tokio runtime (as nginx's worker
//! processes are): a connection lives on the thread that accepted it, with no cross-thread
//! wake-ups and no work stealing. Every worker accepts from every listener itself (the
//! listening socket is shared, as nginx's workers share it), so a new connection costs no
//! hand-over between threads; a worker that already has more open connections than another
//! passes the new one to the least-loaded worker, which keeps long-lived connections even.

use anyhow::{Context, Result};
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, warn};

/// Work started on a worker thread (so its sockets register there), given that worker.
type Job = Box<dyn FnOnce(Worker) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What serves one accepted connection, on the worker that runs it.
pub trait Handler: Fn(TcpStream, SocketAddr) -> Self::Serving + Send + Sync + 'static {
    /// The connection's future.
    type Serving: Future<Output = ()> + Send + 'static;
}

impl<F, Fut> Handler for F
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    type Serving = Fut;
}

/// What the workers of a pool share.
struct Shared {
    name: &'static str,
    queues: Vec<mpsc::UnboundedSender<Job>>,
    /// Open connections per worker.
    load: Vec<AtomicUsize>,
    /// Cancelled when the pool stops accepting.
    accepting: CancellationToken,
    /// Cancelled when the pool stops: workers take no more jobs and drain.
    stopping: CancellationToken,
}

impl Shared {
    /// The worker with the fewest open connections.
    fn least_loaded(&self) -> usize {
        self.load
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| n.load(Ordering::Relaxed))
            .map_or(0, |(i, _)| i)
    }

    /// Queues `job` for worker `i`; gives it back when that worker takes no more jobs (the
    /// pool is stopping) or does not exist.
    fn send(&self, i: usize, job: Job) -> Result<(), Job> {
        match self.queues.get(i) {
            Some(queue) => queue.send(job).map_err(|refused| refused.0),
            None => Err(job),
        }
    }
}

/// One worker thread as seen by the work running on it.
#[derive(Clone)]
struct Worker {
    index: usize,
    shared: Arc<Shared>,
    /// Everything running on this worker, waited for when the pool stops.
    tracker: TaskTracker,
    /// Cancelled when the drain time is over: whatever still runs is dropped.
    abort: CancellationToken,
}

/// Counts a connection as open on its worker until dropped.
struct Open(Arc<Shared>, usize);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.load[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    /// Runs `work` on this worker's runtime until it ends or the drain time is over.
    fn run(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(self.abort.clone().run_until_cancelled_owned(work));
    }

    /// Accepts from `listener` until the pool stops accepting, placing each connection.
    async fn accept<H: Handler>(self, listener: std::net::TcpListener, handler: Arc<H>) {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!(
                    pool = self.shared.name,
                    worker = self.index,
                    "cannot watch a listening socket: {e}"
                );
                return;
            }
        };
        let accepting = self.shared.accepting.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.place(stream, peer, &handler),
                    Err(e) => {
                        // Out of descriptors and the like: wait instead of spinning.
                        warn!(pool = self.shared.name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                _ = accepting.cancelled() => break,
            }
        }
    }

    /// Serves a connection this worker accepted here, unless another worker has fewer open
    /// connections: then there.
    fn place<H: Handler>(&self, stream: TcpStream, peer: SocketAddr, handler: &Arc<H>) {
        let shared = &self.shared;
        let least = shared.least_loaded();
        let here = shared.load[self.index].load(Ordering::Relaxed) <= shared.load[least].load(Ordering::Relaxed);
        let target = if here { self.index } else { least };
        shared.load[target].fetch_add(1, Ordering::Relaxed);
        let open = Open(shared.clone(), target);
        if here {
            let serving = handler(stream, peer);
            self.run(async move {
                serving.await;
                drop(open);
            });
            return;
        }
        // Registered with this worker's reactor: re-register it on the other one.
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let handler = handler.clone();
        let job: Job = Box::new(move |_worker| {
            Box::pin(async move {
                if let Ok(stream) = TcpStream::from_std(stream) {
                    handler(stream, peer).await;
                }
                drop(open);
            })
        });
        // The other worker may have stopped taking jobs while this one still accepted (the
        // pool is stopping): the connection is served here rather than dropped.
        if let Err(job) = shared.send(target, job) {
            self.run(job(self.clone()));
        }
    }
}

/// A pool of worker threads.
pub struct Workers {
    shared: Arc<Shared>,
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
        let (queues, incoming): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let shared = Arc::new(Shared {
            name,
            queues,
            load: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            accepting: CancellationToken::new(),
            stopping: CancellationToken::new(),
        });
        let mut threads = Vec::new();
        for (index, incoming) in incoming.into_iter().enumerate() {
            let worker = Worker {
                index,
                shared: shared.clone(),
                tracker: TaskTracker::new(),
                abort: CancellationToken::new(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    crate::privileges::on_thread_start();
                    run(worker, incoming, drain)
                })
                .with_context(|| format!("starting {name} worker thread {index}"))?;
            threads.push(thread);
        }
        Ok(Self { shared, threads })
    }

    /// The number of workers.
    pub fn len(&self) -> usize {
        self.shared.queues.len()
    }

    /// Whether the pool has no workers (never, once started).
    pub fn is_empty(&self) -> bool {
        self.shared.queues.is_empty()
    }

    /// Accepts connections from `listener` on every worker until the pool stops accepting;
    /// `handler` serves each on the worker it is placed on.
    pub fn accept<H: Handler>(&self, listener: &std::net::TcpListener, handler: H) -> Result<()> {
        let handler = Arc::new(handler);
        for i in 0..self.len() {
            let listener = listener
                .try_clone()
                .context("sharing a listening socket with a worker")?;
            let handler = handler.clone();
            self.shared
                .send(
                    i,
                    Box::new(move |worker: Worker| Box::pin(worker.accept(listener, handler))),
                )
                .map_err(|_| anyhow::anyhow!("worker {i} of {} has stopped", self.shared.name))?;
        }
        Ok(())
    }

    /// Stops accepting on every worker (listening sockets close); open connections go on, and
    /// their drain time starts only with [`Workers::stop`].
    pub fn stop_accepting(&self) {
        self.shared.accepting.cancel();
    }

    /// Stops accepting and waits until every worker has drained (or dropped, after the drain
    /// time) its connections.
    pub async fn stop(mut self) {
        self.stop_accepting();
        self.shared.stopping.cancel();
        let threads = std::mem::take(&mut self.threads);
        let joined = tokio::task::spawn_blocking(move || threads.into_iter().all(|t| t.join().is_ok())).await;
        if !joined.unwrap_or(false) {
            warn!("a worker thread ended abnormally");
        }
    }
}

impl Drop for Workers {
    /// A pool dropped without [`Workers::stop`] (a failed start) still ends its threads.
    fn drop(&mut self) {
        self.stop_accepting();
        self.shared.stopping.cancel();
    }
}

/// One worker: runs the jobs handed to it until the pool stops, then drains.
fn run(worker: Worker, mut incoming: mpsc::UnboundedReceiver<Job>, drain: Duration) {
    let name = worker.shared.name;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!(pool = name, "a worker could not start its runtime: {e}");
            return;
        }
    };
    let stopping = worker.shared.stopping.clone();
    runtime.block_on(async move {
        loop {
            tokio::select! {
                job = incoming.recv() => match job {
                    Some(job) => worker.run(job(worker.clone())),
                    None => break,
                },
                _ = stopping.cancelled() => break,
            }
        }
        // Nothing new arrives once the pool stops; jobs already queued still run.
        incoming.close();
        while let Some(job) = incoming.recv().await {
            worker.run(job(worker.clone()));
        }
        worker.tracker.close();
        if tokio::time::timeout(drain, worker.tracker.wait()).await.is_err() {
            warn!(
                pool = name,
                open = worker.shared.load[worker.index].load(Ordering::Relaxed),
                "connections still open after the drain time: closing them"
            );
            worker.abort.cancel();
            worker.tracker.wait().await;
        }
    });
}

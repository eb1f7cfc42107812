//! Database routing: per `[[database]]` cluster a read-write listener that leads to the
//! primary and a read-only listener that leads to fresh replicas. Connections are relayed
//! untouched (authentication, TLS and every command pass through); the router only chooses
//! the server, refuses with a MySQL error packet when none qualifies, and closes connections
//! to a server that went down or stopped being the primary so application pools reconnect.
//! A Galera cluster's writer is one synced member, the same from every edge; with
//! `[database.failover]` the edges also promote, fence and switch over (`failover.rs`).

pub mod dialect;
pub mod failover;
pub mod gtid;
pub mod monitor;
pub mod route;

use crate::{
    admission::{Admission, Caps},
    config::database::{ClusterKind, Database, Role},
    listen, relay,
    workers::Workers,
};
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use failover::FailoverStatus;
use monitor::{Credentials, ServerState};
use serde::{Deserialize, Serialize};
use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{
    io::AsyncWriteExt,
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
    time::{timeout, Instant},
};
use tracing::{debug, info, warn};

/// Relay buffer per direction: large enough that a result set moves in few system calls.
const RELAY_BUFFER: usize = 64 * 1024;

/// Error code of the packet refusing a connection no server can take (ProxySQL uses the same).
const ER_NO_SERVER: u16 = 9001;

/// The routers of every `[[database]]`.
pub struct DatabaseRouter {
    clusters: Vec<Arc<Cluster>>,
    /// Accept loops and the tasks following the monitors.
    tasks: JoinSet<()>,
    /// The monitors, and what stops them.
    monitors: JoinSet<()>,
    stop_monitors: watch::Sender<bool>,
    /// The threads relaying client connections.
    pool: Workers,
}

/// One cluster's live routing state.
struct Cluster {
    config: Database,
    credentials: Arc<ArcSwap<Credentials>>,
    view: watch::Receiver<Vec<ServerState>>,
    /// The primary the router uses now.
    primary: Mutex<Option<usize>>,
    servers: Vec<ServerCounters>,
    /// Bumped to close every connection of one role to one server: `[server][role]`.
    closers: Vec<[watch::Sender<u64>; 2]>,
    /// Connections refused, by role.
    refused: [AtomicU64; 2],
    /// Connections closed by the handshake or idle deadline.
    timed_out: AtomicU64,
    /// Open client connections by client, under the caps.
    admission: Arc<Admission>,
    /// Connections refused for a cap.
    over_limit: AtomicU64,
    /// Bumped whenever the primary changes: held write connections wait on it.
    primary_changes: watch::Sender<u64>,
    /// Automatic failover and switchover, when configured.
    failover: Option<failover::Shared>,
}

/// Per-server connection counters.
#[derive(Default)]
struct ServerCounters {
    active: AtomicU32,
    total: AtomicU64,
    connect_failures: AtomicU64,
    closed_by_router: AtomicU64,
}

/// A cluster's state for `foobar status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseStatus {
    /// The `[[database]]` name.
    pub name: String,
    /// The server read-write connections go to now.
    pub primary: Option<String>,
    /// Per server, in configuration order.
    pub servers: Vec<ServerStatus>,
    /// Read-write connections refused.
    pub refused_read_write: u64,
    /// Read-only connections refused.
    pub refused_read_only: u64,
    /// Connections closed because the client sent no login in time, or nothing moved for the
    /// idle timeout.
    #[serde(default)]
    pub timed_out: u64,
    /// Connections refused over `max_client_connections` or `max_connections_per_client`.
    #[serde(default)]
    pub refused_over_limit: u64,
    /// Automatic failover and switchover, when configured.
    #[serde(default)]
    pub failover: Option<FailoverStatus>,
}

/// One server's state and counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// `address:port`.
    pub address: String,
    /// What the monitor sees.
    pub state: ServerState,
    /// Client connections open to it now.
    pub active: u32,
    /// Client connections relayed to it so far.
    pub total: u64,
    /// Connection attempts that failed or timed out.
    pub connect_failures: u64,
    /// Client connections the router closed (server down, or demoted from primary).
    pub closed_by_router: u64,
}

impl DatabaseRouter {
    /// Reads the monitor credentials, binds every listener and starts the monitors; the
    /// servers need not be reachable yet.
    pub fn start(databases: &[Database]) -> Result<Self> {
        let mut clusters = Vec::new();
        let mut tasks = JoinSet::new();
        let mut monitors = JoinSet::new();
        let (stop_monitors, stopping) = watch::channel(false);
        let drain = databases.iter().map(|d| d.drain_timeout).max().unwrap_or_default();
        let pool = Workers::start("db", 0, drain)?;
        for db in databases {
            let name = &db.name;
            let (credentials, replication) = credentials_of(db)?;
            let (requests_tx, requests) = mpsc::channel(4);
            let servers = &db.servers;
            let (view_tx, view) = watch::channel(vec![ServerState::default(); servers.len()]);
            let cluster = Arc::new(Cluster {
                config: db.clone(),
                credentials: Arc::new(ArcSwap::from_pointee(credentials)),
                view,
                primary: Mutex::new(None),
                servers: servers.iter().map(|_| ServerCounters::default()).collect(),
                closers: servers
                    .iter()
                    .map(|_| [watch::channel(0).0, watch::channel(0).0])
                    .collect(),
                refused: Default::default(),
                timed_out: AtomicU64::new(0),
                admission: Admission::new(Caps {
                    total: db.max_client_connections,
                    per_client: db.max_connections_per_client,
                    ipv6_prefix_len: 64,
                }),
                over_limit: AtomicU64::new(0),
                primary_changes: watch::channel(0).0,
                failover: replication.map(|replication| failover::Shared {
                    status: Mutex::new(FailoverStatus::default()),
                    replication: ArcSwap::from_pointee(replication),
                    requests: requests_tx,
                }),
            });
            for (role, addr) in db.listeners() {
                let cluster = cluster.clone();
                pool.accept(&listen::bind(addr)?, move |client, peer| {
                    serve(client, peer, role, cluster.clone())
                })?;
            }
            monitor::spawn(&mut monitors, db, cluster.credentials.clone(), &view_tx, &stopping);
            tasks.spawn(follow(cluster.clone(), view_tx));
            if let Some(settings) = &db.failover {
                let coordinator = failover::Coordinator::new(cluster.clone(), settings.clone());
                monitors.spawn(coordinator.run(requests, stopping.clone()));
            }
            info!(database = name, listeners = ?db.listeners(), "database routing started");
            clusters.push(cluster);
        }
        Ok(Self {
            clusters,
            tasks,
            monitors,
            stop_monitors,
            pool,
        })
    }

    /// Reads the monitor (and replication) credentials of every cluster again without using
    /// them yet.
    pub fn prepare_credentials(&self, databases: &[Database]) -> Result<Vec<ClusterCredentials>> {
        databases.iter().map(credentials_of).collect()
    }

    /// Makes prepared credentials the ones the next logins use.
    pub fn commit_credentials(&self, credentials: Vec<ClusterCredentials>) {
        for (cluster, (monitor, replication)) in self.clusters.iter().zip(credentials) {
            cluster.credentials.store(Arc::new(monitor));
            if let (Some(shared), Some(replication)) = (&cluster.failover, replication) {
                shared.replication.store(Arc::new(replication));
            }
        }
    }

    /// A planned switchover of `database` to `to` (None: the replica that received the most),
    /// carried out by its failover coordinator; what happened, or why not.
    pub fn switchover(
        &self,
        database: &str,
        to: Option<SocketAddr>,
    ) -> impl Future<Output = Result<String, String>> + Send + 'static {
        let requests = match self.clusters.iter().find(|c| c.config.name == database) {
            None => {
                let names: Vec<&str> = self.clusters.iter().map(|c| c.config.name.as_str()).collect();
                Err(format!("no database {database:?} (databases: {})", names.join(", ")))
            }
            Some(c) => c
                .failover
                .as_ref()
                .map(|f| f.requests.clone())
                .ok_or_else(|| format!("database {database} has no [database.failover]")),
        };
        async move {
            let requests = requests?;
            let (reply, answer) = oneshot::channel();
            requests
                .send((to, reply))
                .await
                .map_err(|_| "the failover coordinator stopped".to_owned())?;
            answer
                .await
                .map_err(|_| "the failover coordinator dropped the switchover".to_owned())?
        }
    }

    /// A function returning every cluster's status, for the control socket.
    pub fn status_source(&self) -> Arc<dyn Fn() -> Vec<DatabaseStatus> + Send + Sync> {
        let clusters = self.clusters.clone();
        Arc::new(move || clusters.iter().map(|c| c.status()).collect())
    }

    /// Stops accepting, lets open connections finish within the longest drain timeout, then
    /// closes the rest.
    pub async fn shutdown(mut self) {
        self.pool.stop_accepting();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // Monitors finish the check in flight and quit their connections cleanly.
        let _ = self.stop_monitors.send(true);
        let limit = self
            .clusters
            .iter()
            .map(|c| c.config.monitor.timeout)
            .max()
            .unwrap_or_default();
        let monitors = &mut self.monitors;
        if timeout(2 * limit + Duration::from_millis(100), async {
            while monitors.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            self.monitors.abort_all();
        }
        self.pool.stop().await;
    }
}

impl Cluster {
    fn status(&self) -> DatabaseStatus {
        let view = self.view.borrow().clone();
        let primary = self.primary.lock().ok().and_then(|p| *p);
        let addresses = &self.config.servers;
        DatabaseStatus {
            name: self.config.name.clone(),
            primary: primary.and_then(|p| addresses.get(p)).map(|a| a.to_string()),
            servers: addresses
                .iter()
                .zip(view)
                .zip(&self.servers)
                .map(|((addr, state), c)| ServerStatus {
                    address: addr.to_string(),
                    state,
                    active: c.active.load(Ordering::Relaxed),
                    total: c.total.load(Ordering::Relaxed),
                    connect_failures: c.connect_failures.load(Ordering::Relaxed),
                    closed_by_router: c.closed_by_router.load(Ordering::Relaxed),
                })
                .collect(),
            refused_read_write: self.refused[0].load(Ordering::Relaxed),
            refused_read_only: self.refused[1].load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            refused_over_limit: self.over_limit.load(Ordering::Relaxed),
            failover: self
                .failover
                .as_ref()
                .and_then(|f| f.status.lock().ok().map(|s| s.clone())),
        }
    }

    fn rules(&self) -> route::Rules {
        route::Rules {
            max_lag_s: self.config.max_lag_s,
            unknown_lag_s: self.config.unknown_lag_s,
            when_no_replica: self.config.when_no_replica,
            max_connections: self.config.max_connections_per_server,
            donors_serve: self.donors_serve(),
        }
    }

    /// `[database.galera] donors_serve`.
    fn donors_serve(&self) -> bool {
        self.config.galera.as_ref().is_some_and(|g| g.donors_serve)
    }

    /// Picks a server for a new connection and takes a place on it (counted until the lease
    /// drops), with a receiver that changes when the router closes that server's connections.
    fn lease(self: &Arc<Self>, role: Role, tried: &[usize]) -> Result<Lease, route::Refusal> {
        let view = self.view.borrow();
        let primary = self.primary.lock().map_err(|_| route::Refusal {
            public: "router state poisoned".into(),
            detail: "router state poisoned".into(),
        })?;
        let active: Vec<u32> = self.servers.iter().map(|s| s.active.load(Ordering::Relaxed)).collect();
        let server = route::pick(
            role,
            &view,
            &self.config.servers,
            *primary,
            &active,
            tried,
            &self.rules(),
        )?;
        // Subscribing under the lock: a close decided after this pick reaches this connection.
        let closed = self.closers[server][role.index()].subscribe();
        self.servers[server].active.fetch_add(1, Ordering::Relaxed);
        self.servers[server].total.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            cluster: self.clone(),
            server,
            closed,
        })
    }

    /// Closes every open connection of `role` to `server`.
    fn close(&self, server: usize, role: Role, why: &str) {
        let Some(closer) = self.closers.get(server).map(|c| &c[role.index()]) else {
            return;
        };
        if closer.receiver_count() > 0 {
            info!(
                database = self.config.name,
                server = %self.config.servers[server],
                ?role,
                open = closer.receiver_count(),
                why,
                "closing client connections"
            );
        }
        closer.send_modify(|generation| *generation += 1);
    }
}

/// A connection's place on a server.
struct Lease {
    cluster: Arc<Cluster>,
    server: usize,
    closed: watch::Receiver<u64>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.cluster.servers[self.server].active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Follows the monitors' view: keeps the primary current, and closes the connections that
/// must not stay (to a server that went down; read-write ones to a demoted primary).
async fn follow(cluster: Arc<Cluster>, view_tx: watch::Sender<Vec<ServerState>>) {
    let mut view = view_tx.subscribe();
    let mut before = view.borrow().clone();
    let mut writable_before = 0;
    loop {
        let now = view.borrow_and_update().clone();
        let name = &cluster.config.name;
        let addresses = &cluster.config.servers;
        let donors_serve = cluster.donors_serve();
        let galera = cluster.config.kind == ClusterKind::Galera;
        for (i, (was, is)) in before.iter().zip(&now).enumerate() {
            if was.serves(donors_serve) && !is.serves(donors_serve) {
                let why = match (&is.galera, is.up) {
                    (Some(g), true) => g.unfit(donors_serve).unwrap_or("unfit"),
                    _ => "server down",
                };
                cluster.close(i, Role::ReadWrite, why);
                cluster.close(i, Role::ReadOnly, why);
            }
        }
        let writable = now.iter().filter(|s| s.up && !s.read_only).count();
        if !galera && writable > 1 && writable != writable_before {
            warn!(
                database = name,
                writable, "more than one server is writable: writes stay with the current primary"
            );
        }
        let changed = match cluster.primary.lock() {
            Ok(mut primary) => {
                let old = *primary;
                *primary = if galera {
                    route::galera_writer(&now, donors_serve)
                } else {
                    route::primary(&now, addresses, old)
                };
                (old != *primary).then_some((old, *primary))
            }
            Err(_) => None,
        };
        if let Some((old, new)) = changed {
            let show = |p: Option<usize>| {
                p.and_then(|i| addresses.get(i))
                    .map_or("none".into(), |a| a.to_string())
            };
            info!(database = name, from = show(old), to = show(new), "primary changed");
            cluster.primary_changes.send_modify(|generation| *generation += 1);
            if let Some(old) = old {
                cluster.close(old, Role::ReadWrite, "no longer the primary");
            }
        }
        before = now;
        writable_before = writable;
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// A cluster's monitor login, and its replication login when it fails over.
pub type ClusterCredentials = (Credentials, Option<Credentials>);

/// The credentials of a cluster, read from their files.
fn credentials_of(db: &Database) -> Result<ClusterCredentials> {
    let context = || format!("database {}", db.name);
    let monitor = Credentials::load(&db.credentials).with_context(context)?;
    let replication = db
        .failover
        .as_ref()
        .map(|f| failover::replication_credentials(&f.replication_credentials))
        .transpose()
        .with_context(context)?;
    Ok((monitor, replication))
}

/// Relays one client connection to the server chosen for it, or refuses it.
async fn serve(mut client: TcpStream, peer: SocketAddr, role: Role, cluster: Arc<Cluster>) {
    let Some(_admitted) = cluster.admission.admit(peer.ip()) else {
        cluster.over_limit.fetch_add(1, Ordering::Relaxed);
        let name = &cluster.config.name;
        debug!(database = name, client = %peer, "refusing a database connection over the connection caps");
        refuse(&mut client, &format!("foobar: database {name}: too many connections")).await;
        return;
    };
    let connect_limit = cluster.config.connect_timeout;
    let hold_until = Instant::now() + cluster.config.hold_writes;
    let holds = role == Role::ReadWrite && !cluster.config.hold_writes.is_zero();
    let mut tried = Vec::new();
    let (mut server, mut lease) = loop {
        // Subscribed before the pick, so a primary appearing after it wakes the hold.
        let mut primary_changed = holds.then(|| cluster.primary_changes.subscribe());
        let lease = match cluster.lease(role, &tried) {
            Ok(lease) => lease,
            Err(_) if tried.is_empty() && Instant::now() < hold_until && primary_changed.is_some() => {
                // No primary yet (a switchover's pause, a failover's promotion): hold the
                // client until one appears or the hold runs out.
                if let Some(changed) = primary_changed.as_mut() {
                    let _ = tokio::time::timeout_at(hold_until, changed.changed()).await;
                }
                continue;
            }
            Err(why) => {
                cluster.refused[role.index()].fetch_add(1, Ordering::Relaxed);
                let name = &cluster.config.name;
                // The client, not yet authenticated, learns why in counts; the log has the
                // servers' addresses and the monitor's errors.
                let message = format!("foobar: database {name} ({}): {}", role.name(), why.public);
                warn!(database = name, client = %peer, reason = why.detail, "refusing a database connection");
                refuse(&mut client, &message).await;
                return;
            }
        };
        let addr = cluster.config.servers[lease.server];
        match timeout(connect_limit, TcpStream::connect(addr)).await {
            Ok(Ok(server)) => break (server, lease),
            Ok(Err(e)) => warn!(server = %addr, "connecting to a database server failed: {e}"),
            Err(_) => warn!(server = %addr, "connecting to a database server timed out"),
        }
        cluster.servers[lease.server]
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        tried.push(lease.server);
    };
    let _ = server.set_nodelay(true);
    let config = &cluster.config;
    let deadlines = relay::Deadlines {
        handshake: Some(config.handshake_timeout),
        idle: config.idle_timeout,
    };
    tokio::select! {
        result = relay::relay(&mut client, &mut server, RELAY_BUFFER, deadlines) => {
            match result {
                Ok(Some(expired)) => {
                    cluster.timed_out.fetch_add(1, Ordering::Relaxed);
                    debug!(client = %peer, ?expired, "database connection closed: its deadline passed");
                }
                Ok(None) => {}
                Err(e) => debug!(client = %peer, "database connection ended: {e}"),
            }
        }
        _ = lease.closed.changed() => {
            cluster.servers[lease.server].closed_by_router.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends the MySQL error packet a server sends instead of its greeting, then closes. Before
/// the handshake the client knows no capabilities, so the packet carries no SQL state.
async fn refuse(client: &mut TcpStream, message: &str) {
    let packet = error_packet(ER_NO_SERVER, message);
    let _ = timeout(Duration::from_secs(1), async {
        let _ = client.write_all(&packet).await;
        let _ = client.shutdown().await;
    })
    .await;
}

/// An ERR packet with sequence number 0: header, 0xff, the code, the message (at most 511
/// bytes, the clients' limit, cut at a character boundary).
fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut end = message.len().min(511);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let text = &message.as_bytes()[..end];
    let length = 3 + text.len();
    let mut packet = Vec::with_capacity(4 + length);
    packet.extend_from_slice(&(length as u32).to_le_bytes()[..3]);
    packet.push(0);
    packet.push(0xff);
    packet.extend_from_slice(&code.to_le_bytes());
    packet.extend_from_slice(text);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_packet_layout() {
        let p = error_packet(9001, "no primary");
        assert_eq!(&p[..4], &[13, 0, 0, 0]);
        assert_eq!(p[4], 0xff);
        assert_eq!(u16::from_le_bytes([p[5], p[6]]), 9001);
        assert_eq!(&p[7..], b"no primary");
        let long = "é".repeat(400);
        let p = error_packet(9001, &long);
        assert!(p.len() - 7 <= 511 && std::str::from_utf8(&p[7..]).is_ok());
    }
}

//! The database tier's configuration (`[[database]]`): MySQL / MariaDB clusters reached through
//! a read-write and a read-only listener, the monitor that finds the primary and the replicas'
//! lag, and automatic failover.

use super::{file, ms, CheckTiming};
use serde::Deserialize;
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

/// One `[[database]]`: a cluster of servers, one primary and replicas (or Galera members).
#[derive(Clone, Debug, PartialEq)]
pub struct Database {
    /// Name, unique; used in logs, status and error messages.
    pub name: String,
    /// A primary with replicas, or a Galera cluster.
    pub kind: ClusterKind,
    /// How Galera members are chosen (only with `kind = "galera"`).
    pub galera: Option<Galera>,
    /// Address both listeners bind, usually a VIP.
    pub address: IpAddr,
    /// Port of the read-write listener (to the primary).
    pub read_write_port: u16,
    /// Port of the read-only listener (to replicas), if there is one.
    pub read_only_port: Option<u16>,
    /// The servers (at least one, each once).
    pub servers: Vec<SocketAddr>,
    /// File with the monitor's `user` and `password`.
    pub credentials: PathBuf,
    /// Replicas lagging more than this many seconds (as the server counts them) get no new
    /// read-only connections.
    pub max_lag_s: u64,
    /// The lag assumed when a replica reports none, seconds.
    pub unknown_lag_s: u64,
    /// What read-only connections get when no replica qualifies.
    pub when_no_replica: NoReplica,
    /// Limit on connecting to a server.
    pub connect_timeout: Duration,
    /// Client connections per server at most (0 = unlimited).
    pub max_connections_per_server: u32,
    /// Client connections open at once over both endpoints, at most.
    pub max_client_connections: usize,
    /// Client connections from one client (an IPv4 address, an IPv6 /64) at most.
    pub max_connections_per_client: usize,
    /// On shutdown, open connections get this long to finish.
    pub drain_timeout: Duration,
    /// A client that sends no login this long after connecting is closed.
    pub handshake_timeout: Duration,
    /// A connection with no byte moving either way for this long is closed (none: never).
    pub idle_timeout: Option<Duration>,
    /// A new read-write connection that finds no primary waits this long for one (zero:
    /// refused at once).
    pub hold_writes: Duration,
    /// How the servers are watched.
    pub monitor: CheckTiming,
    /// Automatic failover and planned switchover; none: a person promotes replicas.
    pub failover: Option<Failover>,
}

/// `[database.failover]`: promote the most advanced replica when the primary is gone, fence a
/// returning old primary, and switch over on request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// The primary must have been down this long before a replica is promoted.
    pub after: Duration,
    /// File with the replication user and password replicas log in with.
    pub replication_credentials: PathBuf,
    /// A returning old primary whose transactions are all in the new primary's history
    /// rejoins as its replica.
    pub rejoin: bool,
    /// How long a replica being promoted may take to apply what it has received.
    pub catch_up_timeout: Duration,
    /// foobar keeps semi-synchronous replication's primary side on the primary alone.
    pub semi_sync: bool,
}

impl Database {
    /// The listeners: read-write first, then read-only when configured.
    pub fn listeners(&self) -> Vec<(Role, SocketAddr)> {
        listeners(self.address, self.read_write_port, self.read_only_port)
    }
}

/// A cluster's listeners on `address`: read-write first, then read-only when there is one.
pub(super) fn listeners(address: IpAddr, read_write_port: u16, read_only_port: Option<u16>) -> Vec<(Role, SocketAddr)> {
    let mut out = vec![(Role::ReadWrite, SocketAddr::new(address, read_write_port))];
    if let Some(port) = read_only_port {
        out.push((Role::ReadOnly, SocketAddr::new(address, port)));
    }
    out
}

/// What kind of cluster a `[[database]]` is.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClusterKind {
    /// A primary (`read_only = 0`) and asynchronous or semi-synchronous replicas.
    #[default]
    Replication,
    /// Galera (MariaDB Galera Cluster): every synced member of the primary component takes
    /// reads; writes go to one of them, the same on every edge.
    Galera,
}

/// `[database.galera]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Galera {
    /// A member that is a state-transfer donor still serves (it is behind while it sends);
    /// a member desynced on purpose (`wsrep_desync`) never does.
    #[serde(default)]
    pub donors_serve: bool,
}

/// Which listener a client came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// To the primary.
    ReadWrite,
    /// To a replica within the lag limit.
    ReadOnly,
}

impl Role {
    /// `read-write` or `read-only`, as in messages and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadWrite => "read-write",
            Role::ReadOnly => "read-only",
        }
    }

    /// 0 or 1, for per-role arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What read-only clients get when no replica qualifies.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NoReplica {
    /// The primary serves reads too.
    #[default]
    Primary,
    /// A MySQL error packet saying why.
    Refuse,
}

/// One section's domain values.
pub(super) fn lower(d: &file::database::Database) -> Database {
    let m = &d.monitor;
    Database {
        name: d.name.get_ref().clone(),
        kind: d.kind,
        galera: d.galera.as_ref().map(|g| g.get_ref().clone()),
        address: *d.address.get_ref(),
        read_write_port: d.read_write_port,
        read_only_port: (d.read_only_port != 0).then_some(d.read_only_port),
        servers: d.servers.get_ref().clone(),
        credentials: d.credentials.get_ref().clone(),
        max_lag_s: d.max_lag_s,
        unknown_lag_s: d.unknown_lag_s,
        when_no_replica: d.when_no_replica,
        connect_timeout: ms(d.connect_timeout_ms),
        max_connections_per_server: d.max_connections_per_server,
        max_client_connections: d.max_client_connections,
        max_connections_per_client: d.max_connections_per_client,
        drain_timeout: ms(d.drain_timeout_ms),
        handshake_timeout: ms(d.handshake_timeout_ms),
        idle_timeout: (d.idle_timeout_ms > 0).then(|| ms(d.idle_timeout_ms)),
        hold_writes: ms(d.hold_writes_ms),
        monitor: file::timing(m.interval_ms, m.timeout_ms, m.rise, m.fall),
        failover: d.failover.as_ref().map(|f| Failover {
            after: ms(f.after_ms),
            replication_credentials: f.replication_credentials.get_ref().clone(),
            rejoin: f.rejoin,
            catch_up_timeout: ms(f.catch_up_timeout_ms),
            semi_sync: f.semi_sync,
        }),
    }
}

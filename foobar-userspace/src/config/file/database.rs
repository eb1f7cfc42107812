//! The `[[database]]` sections as the file has them.

use super::{Config, Range};
use crate::config::database::{ClusterKind, Galera, NoReplica};
use serde::Deserialize;
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};
use toml::Spanned;

/// One `[[database]]`: a cluster of servers, one primary (`read_only = 0`) and replicas.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Name, unique; used in logs, status and error messages.
    pub name: Spanned<String>,
    /// A primary with replicas, or a Galera cluster.
    #[serde(default)]
    pub kind: ClusterKind,
    /// `[database.galera]`: how Galera members are chosen (only with `kind = "galera"`).
    #[serde(default)]
    pub galera: Option<Spanned<Galera>>,
    /// Address both listeners bind, usually a VIP (it need not be local yet: `IP_FREEBIND`).
    pub address: Spanned<IpAddr>,
    /// Port of the read-write listener (to the primary).
    #[serde(default = "default_read_write_port")]
    pub read_write_port: u16,
    /// Port of the read-only listener (to replicas); 0 means none.
    #[serde(default = "default_read_only_port")]
    pub read_only_port: u16,
    /// The servers, `address:port`; which one is primary is found out by the monitor.
    pub servers: Spanned<Vec<SocketAddr>>,
    /// File with the monitor's `user` and `password` (TOML); it must not be readable by group
    /// or others.
    pub credentials: Spanned<PathBuf>,
    /// Replicas lagging more than this many seconds get no new read-only connections.
    #[serde(default = "default_max_lag_s")]
    pub max_lag_s: u64,
    /// The lag assumed when a replica reports none (`Seconds_Behind_Master` is NULL: the
    /// replication threads are stopped or reconnecting).
    #[serde(default = "default_unknown_lag_s")]
    pub unknown_lag_s: u64,
    /// What read-only connections get when no replica qualifies.
    #[serde(default)]
    pub when_no_replica: NoReplica,
    /// Limit on connecting to a server, ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Client connections per server at most (0 = unlimited); a full server is skipped for
    /// reads, and refuses writes with an error.
    #[serde(default = "default_max_connections")]
    pub max_connections_per_server: u32,
    /// Client connections open at once over both endpoints, at most; more are refused with
    /// an error packet.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// Client connections from one client (an IPv4 address, an IPv6 /64) at most.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// On shutdown, open connections get this long to finish, ms; then they are closed.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// A client that sends nothing (its login) this long after connecting is closed, ms; it
    /// holds a server connection meanwhile.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// A connection with no byte moving either way for this long is closed, ms (0: never;
    /// keep it above the applications' pool idle times).
    #[serde(default)]
    pub idle_timeout_ms: u64,
    /// A new read-write connection that finds no primary waits this long for one before it is
    /// refused, ms (0: refused at once). It rides out a switchover's write pause and the
    /// promotion after a failover.
    #[serde(default)]
    pub hold_writes_ms: u64,
    /// How the servers are watched.
    #[serde(default)]
    pub monitor: Monitor,
    /// Automatic failover and planned switchover; absent: a person promotes replicas.
    #[serde(default)]
    pub failover: Option<Failover>,
}

/// `[database.failover]`: promote the most advanced replica when the primary is gone, fence a
/// returning old primary, and switch over on request. One edge acts for the cluster: the one
/// holding a named lock (`GET_LOCK`) on a majority of its servers.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// The primary must have been down this long, as the monitor sees it, before a replica is
    /// promoted, ms; and no replica may still be receiving from it.
    #[serde(default = "default_failover_after_ms")]
    pub after_ms: u64,
    /// File with the replication user and password (TOML, as `credentials`) that replicas
    /// pointed at a new primary log in with; mode 600.
    pub replication_credentials: Spanned<PathBuf>,
    /// A returning old primary whose transactions are all in the new primary's history
    /// rejoins as its replica; otherwise it stays read-only and out of service.
    #[serde(default)]
    pub rejoin: bool,
    /// How long a replica being promoted may take to apply what it has received, ms.
    #[serde(default = "default_catch_up_timeout_ms")]
    pub catch_up_timeout_ms: u64,
    /// The cluster uses MariaDB's semi-synchronous replication: foobar keeps its primary side
    /// (`rpl_semi_sync_master_enabled`) on the primary alone, turning it on on a server it
    /// promotes and off on servers it makes replicas (a replica with it on stalls applying,
    /// waiting for acknowledgements from replicas it does not have).
    #[serde(default)]
    pub semi_sync: bool,
}

/// The longest `hold_writes_ms`.
const MAX_HOLD_WRITES_MS: u64 = 60_000;

fn default_failover_after_ms() -> u64 {
    5000
}

fn default_catch_up_timeout_ms() -> u64 {
    30_000
}

/// `[database.monitor]`: the monitor logs in with the monitor user on a connection it keeps,
/// and asks `SELECT 1, @@global.read_only` and the replication status every interval.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Monitor {
    /// Milliseconds between checks.
    pub interval_ms: u64,
    /// Milliseconds before a check (login included) counts as failed.
    pub timeout_ms: u64,
    /// Consecutive passed checks that make a down server up.
    pub rise: u32,
    /// Consecutive failed checks that make an up server down.
    pub fall: u32,
}

impl Default for Monitor {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            timeout_ms: 1000,
            rise: 2,
            fall: 2,
        }
    }
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

fn default_read_write_port() -> u16 {
    3306
}

fn default_read_only_port() -> u16 {
    3307
}

fn default_max_lag_s() -> u64 {
    10
}

fn default_unknown_lag_s() -> u64 {
    86_400
}

fn default_connect_timeout_ms() -> u64 {
    1000
}

fn default_max_connections() -> u32 {
    1000
}

fn default_max_client_connections() -> usize {
    10_000
}

fn default_max_connections_per_client() -> usize {
    256
}

fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// Checks the `[[database]]` sections against each other, the web listeners and the services.
pub(super) fn validate(c: &Config, report: &mut dyn FnMut(&Range<usize>, String)) {
    let mut names = HashSet::new();
    let mut bound: HashSet<SocketAddr> = c
        .web
        .iter()
        .flat_map(|w| w.listeners.iter().map(|l| *l.address.get_ref()))
        .collect();
    for db in &c.databases {
        let name = db.name.get_ref();
        if !names.insert(name.clone()) {
            report(&db.name.span(), format!("database {name:?} is defined twice"));
        }
        if db.read_write_port == 0 || db.read_write_port == db.read_only_port {
            report(
                &db.name.span(),
                format!("database {name:?}: read_write_port must be set and differ from read_only_port"),
            );
        }
        let read_only = (db.read_only_port != 0).then_some(db.read_only_port);
        for (_, addr) in crate::config::database::listeners(*db.address.get_ref(), db.read_write_port, read_only) {
            if !bound.insert(addr) {
                report(&db.address.span(), format!("{addr} is already a listener"));
            }
            let vip = addr.ip();
            let vip_services: Vec<_> = c.services.iter().filter(|s| *s.vip.get_ref() == vip).collect();
            let published = vip_services
                .iter()
                .any(|s| s.protocol == crate::config::Protocol::Tcp && (s.port == addr.port() || s.port == 0));
            if !vip_services.is_empty() && !published {
                report(
                    &db.address.span(),
                    format!(
                        "{addr} is on a VIP but no TCP [[service]] publishes port {}",
                        addr.port()
                    ),
                );
            }
        }
        let servers = db.servers.get_ref();
        if servers.is_empty() {
            report(
                &db.servers.span(),
                format!("database {name:?} needs at least one server"),
            );
        }
        if servers.iter().collect::<HashSet<_>>().len() != servers.len() {
            report(&db.servers.span(), format!("database {name:?} lists a server twice"));
        }
        if !db.credentials.get_ref().is_absolute() {
            report(&db.credentials.span(), "credentials must be an absolute path".into());
        }
        let galera = db.kind == ClusterKind::Galera;
        if let (Some(g), false) = (&db.galera, galera) {
            report(
                &g.span(),
                format!("database {name:?}: [database.galera] needs kind = \"galera\""),
            );
        }
        if let (Some(_), true) = (&db.failover, galera) {
            report(
                &db.name.span(),
                format!("database {name:?}: a Galera cluster needs no [database.failover] (every synced member can take writes)"),
            );
        }
        if let Some(f) = &db.failover {
            if servers.len() < 3 {
                report(
                    &db.servers.span(),
                    format!(
                        "database {name:?}: [database.failover] needs at least three servers (the acting edge holds a lock on a majority of them; with two, a dead primary leaves no majority)"
                    ),
                );
            }
            if !f.replication_credentials.get_ref().is_absolute() {
                report(
                    &f.replication_credentials.span(),
                    "replication_credentials must be an absolute path".into(),
                );
            }
            if f.after_ms == 0 || f.catch_up_timeout_ms == 0 {
                report(
                    &db.name.span(),
                    format!("database {name:?}: failover after_ms and catch_up_timeout_ms must be positive"),
                );
            }
        }
        if db.hold_writes_ms > MAX_HOLD_WRITES_MS {
            report(
                &db.name.span(),
                format!("database {name:?}: hold_writes_ms is at most {MAX_HOLD_WRITES_MS} (a client held longer is better told)"),
            );
        }
        let m = &db.monitor;
        if !super::timing_is_positive(m.interval_ms, m.timeout_ms, m.rise, m.fall) || db.connect_timeout_ms == 0 {
            report(
                &db.name.span(),
                format!("database {name:?}: monitor interval_ms, timeout_ms, rise, fall and connect_timeout_ms must be positive"),
            );
        }
    }
}

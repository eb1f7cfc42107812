//! The database monitor: one task per server keeps a logged-in connection as the monitor user
//! and asks, every interval, `@@global.read_only` with the GTIDs it holds, and the replication
//! status (a Galera member: its `wsrep_` state). It
//! never probes with a bare handshake: MySQL counts those as aborted connects and ends up
//! blocking the router's host, while each full login resets that count.

use super::gtid::Gtids;
use crate::{
    config::{
        database::{ClusterKind, Database},
        CheckTiming,
    },
    health::{ProbeError, RiseFall},
};
use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use mysql_async::{prelude::Queryable, Conn, OptsBuilder, Row};
use serde::{Deserialize, Serialize};
use std::{
    fmt,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{sync::watch, time::timeout};
use tracing::{info, warn};

/// The monitor logs in anew this often: the login itself is checked, and each successful login
/// from this host resets the server's count of aborted connects from it (clients of the router
/// that give up mid-handshake count against the router's address).
const RELOGIN: Duration = Duration::from_secs(30);

/// The monitor user's login, read from the `credentials` file.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password; never logged.
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Reads a credentials file, refusing one that group or others could read or write.
    pub fn load(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{}: monitor credentials must not be accessible to group or others (mode {mode:03o}); chmod 600 it",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // The parser's message may quote the offending line: keep only its position.
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            anyhow::anyhow!(
                "{}: line {}: expected `user = \"...\"` and `password = \"...\"`",
                path.display(),
                at.unwrap_or(0)
            )
        })
    }
}

/// What the monitor knows about one server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    /// Passing checks (after rise / fall).
    pub up: bool,
    /// `@@global.read_only` at the last passed check.
    pub read_only: bool,
    /// Replication state at the last passed check.
    pub lag: Lag,
    /// Why the last check failed, if it did.
    pub last_error: Option<String>,
    /// What the server is, as its version said at the last login.
    #[serde(default)]
    pub flavor: Option<Flavor>,
    /// What the server holds at the last passed check: MariaDB's `@@gtid_current_pos` (the last
    /// transaction per domain), MySQL's `@@gtid_executed`. Kept while the server is down:
    /// where it stopped.
    #[serde(default)]
    pub gtid_current_pos: Gtids,
    /// Its history at the last passed check: MariaDB's `@@gtid_binlog_state` (the last
    /// transaction per domain and originating server), MySQL's `@@gtid_executed`.
    #[serde(default)]
    pub gtid_binlog_state: Gtids,
    /// Whom it replicates from, at the last passed check (None: nobody).
    #[serde(default)]
    pub replication: Option<Replication>,
    /// Its Galera state at the last passed check (members of `kind = "galera"` clusters).
    #[serde(default)]
    pub galera: Option<GaleraMember>,
}

/// A Galera member's state, from its `wsrep_` status variables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GaleraMember {
    /// `wsrep_cluster_status`: `Primary`, `non-Primary` or `Disconnected`.
    pub cluster_status: String,
    /// `wsrep_local_state`: 1 joining, 2 donor or desynced, 3 joined, 4 synced.
    pub local_state: u8,
    /// `wsrep_ready`: it accepts queries.
    pub ready: bool,
    /// `@@global.wsrep_desync`: desynced on purpose (maintenance, a backup).
    pub desync: bool,
}

impl GaleraMember {
    /// Why it may not serve clients, or None when it may: in the primary component, ready,
    /// and synced (or a donor, when `donors_serve`, unless desynced on purpose).
    pub fn unfit(&self, donors_serve: bool) -> Option<&'static str> {
        if self.cluster_status != "Primary" {
            return Some("not in the primary component");
        }
        if !self.ready {
            return Some("not ready (wsrep_ready = OFF)");
        }
        match self.local_state {
            4 => None,
            2 if self.desync => Some("desynced (wsrep_desync = ON)"),
            2 if donors_serve => None,
            2 => Some("a state transfer donor"),
            1 => Some("joining"),
            3 => Some("joined, not synced yet"),
            _ => Some("in an unknown state"),
        }
    }

    /// Its state for people: `synced`, `donor`, `desynced`, `joining`, `joined`, `non-primary`.
    pub fn state_name(&self) -> &'static str {
        if self.cluster_status != "Primary" {
            return "non-primary";
        }
        match (self.local_state, self.desync) {
            (4, _) => "synced",
            (2, true) => "desynced",
            (2, false) => "donor",
            (1, _) => "joining",
            (3, _) => "joined",
            _ => "unknown",
        }
    }
}

/// A replica's link to its primary, from its replication status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// The primary it replicates from, `Master_Host:Master_Port`.
    pub source: String,
    /// Its receiver is connected to that primary (`Slave_IO_Running` is `Yes`).
    pub receiving: bool,
    /// What it received: MariaDB's `Gtid_IO_Pos`; MySQL's `Retrieved_Gtid_Set` with
    /// `Executed_Gtid_Set`.
    pub received: Gtids,
}

/// Which server a monitor talks to: the SQL of replication differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// MariaDB: per-domain GTID positions, `CHANGE MASTER TO`, `MASTER_GTID_WAIT`.
    MariaDb,
    /// MySQL 8: GTID sets, `CHANGE REPLICATION SOURCE TO`, `WAIT_FOR_EXECUTED_GTID_SET`.
    MySql,
}

impl Replication {
    /// Whether it replicates from `server`.
    pub fn follows(&self, server: SocketAddr) -> bool {
        self.source.parse::<SocketAddr>().is_ok_and(|s| s == server)
    }
}

/// A server's replication lag as its replication status tells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lag {
    /// The server replicates from nobody.
    #[default]
    NotReplica,
    /// `Seconds_Behind_Master`.
    Seconds(u64),
    /// The SQL (applier) thread is stopped: the data gets staler and nobody says how stale.
    Stopped,
    /// The applier runs but the receiver is not connected to the primary (it is down, or the
    /// link is): the replica holds everything it was sent. The lag last measured, if any.
    Disconnected(Option<u64>),
}

impl ServerState {
    /// `down`, `writable` or `read-only` (a Galera member: its state), for people.
    pub fn role(&self) -> &'static str {
        match (self.up, self.read_only, &self.galera) {
            (false, _, _) => "down",
            (true, _, Some(g)) => g.state_name(),
            (true, false, None) => "writable",
            (true, true, None) => "read-only",
        }
    }

    /// Whether it may take client connections: up, and for a Galera member fit to serve.
    pub fn serves(&self, donors_serve: bool) -> bool {
        self.up && self.galera.as_ref().is_none_or(|g| g.unfit(donors_serve).is_none())
    }

    /// The replication state for people (`lag 3 s`, `replication stopped`, ...); None for a
    /// server that replicates from nobody.
    pub fn lag_text(&self) -> Option<String> {
        match self.lag {
            Lag::NotReplica => None,
            Lag::Seconds(l) => Some(format!("lag {l} s")),
            Lag::Stopped => Some("replication stopped".into()),
            Lag::Disconnected(_) => Some("not connected to its primary".into()),
        }
    }

    /// The lag the router compares with the limit. An unknown lag counts as `unknown_lag_s`,
    /// except for a replica cut off from a primary that is down itself: nothing fresher
    /// exists, so its last measured lag counts.
    pub fn effective_lag(&self, unknown_lag_s: u64, primary_up: bool) -> u64 {
        match self.lag {
            Lag::NotReplica => 0,
            Lag::Seconds(s) => s,
            Lag::Stopped => unknown_lag_s,
            Lag::Disconnected(last) if !primary_up => last.unwrap_or(unknown_lag_s),
            Lag::Disconnected(_) => unknown_lag_s,
        }
    }
}

/// One passed check.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reading {
    read_only: bool,
    lag: Lag,
    flavor: Flavor,
    gtid_current_pos: Gtids,
    gtid_binlog_state: Gtids,
    replication: Option<Replication>,
    galera: Option<GaleraMember>,
}

/// Starts one monitor task per server of `db` in `tasks`; they publish into `view` (one entry
/// per server, in configuration order). A task ends when `stop` turns true: after the check in
/// flight, with a clean quit of its connection.
pub fn spawn(
    tasks: &mut tokio::task::JoinSet<()>,
    db: &Database,
    credentials: Arc<ArcSwap<Credentials>>,
    view: &watch::Sender<Vec<ServerState>>,
    stop: &watch::Receiver<bool>,
) {
    for (index, addr) in db.servers.iter().enumerate() {
        let probe = Probe {
            addr: *addr,
            conn: None,
            galera: db.kind == ClusterKind::Galera,
            flavor: Flavor::MariaDb,
            legacy_status: false,
            last_lag_s: None,
        };
        tasks.spawn(watch_server(
            db.name.clone(),
            index,
            probe,
            db.monitor,
            credentials.clone(),
            view.clone(),
            stop.clone(),
        ));
    }
}

async fn watch_server(
    database: String,
    index: usize,
    mut probe: Probe,
    monitor: CheckTiming,
    credentials: Arc<ArcSwap<Credentials>>,
    view: watch::Sender<Vec<ServerState>>,
    mut stop: watch::Receiver<bool>,
) {
    let addr = probe.addr;
    let limit = monitor.timeout;
    let mut ticker = tokio::time::interval(monitor.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first check decides at once; later ones go through rise / fall.
    let mut state = RiseFall::new(monitor.rise, monitor.fall, None);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {
                if let Some((conn, _)) = probe.conn.take() {
                    let _ = timeout(limit, conn.disconnect()).await;
                }
                return;
            }
        }
        let creds = credentials.load_full();
        let result = match timeout(limit, probe.check(&creds)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(limit)),
        };
        if result.is_err() {
            // A half-done exchange leaves the connection in an unknown state: log in anew.
            probe.conn = None;
        }
        if state.observe(result.is_ok()).is_some() {
            match &result {
                Ok(r) => info!(database, server = %addr, read_only = r.read_only, "database server is up"),
                Err(reason) => warn!(database, server = %addr, %reason, "database server is down"),
            }
        }
        let up = state.is_up();
        view.send_if_modified(|servers| {
            let Some(state) = servers.get_mut(index) else {
                return false;
            };
            let mut next = state.clone();
            next.up = up;
            match &result {
                Ok(r) => {
                    next.read_only = r.read_only;
                    next.lag = r.lag;
                    next.last_error = None;
                    next.flavor = Some(r.flavor);
                    next.gtid_current_pos = r.gtid_current_pos.clone();
                    next.gtid_binlog_state = r.gtid_binlog_state.clone();
                    next.replication = r.replication.clone();
                    next.galera = r.galera.clone();
                }
                Err(reason) => next.last_error = Some(reason.to_string()),
            }
            let changed = next != *state;
            *state = next;
            changed
        });
    }
}

/// A server's monitor connection.
struct Probe {
    addr: SocketAddr,
    /// The logged-in connection and when it logged in.
    conn: Option<(Conn, Instant)>,
    /// A Galera member: its `wsrep_` state is read instead of the replication status.
    galera: bool,
    /// What the server is, as its version said at login.
    flavor: Flavor,
    /// The server does not know `SHOW REPLICA STATUS` (MySQL before 8.0.22): use the old name.
    legacy_status: bool,
    /// The lag last measured, for [`Lag::Disconnected`].
    last_lag_s: Option<u64>,
}

impl Probe {
    async fn check(&mut self, creds: &Credentials) -> Result<Reading, ProbeError> {
        let (mut conn, since) = match self.conn.take() {
            Some((conn, since)) if since.elapsed() < RELOGIN => (conn, since),
            stale => {
                if let Some((old, _)) = stale {
                    // A clean quit: the server counts nothing against this host.
                    let _ = old.disconnect().await;
                }
                let mut conn = login(self.addr, creds).await?;
                let version: Option<String> = conn
                    .query_first("SELECT @@version")
                    .await
                    .map_err(|e| ProbeError::Mysql(format!("SELECT @@version: {e}")))?;
                self.flavor = if version.is_some_and(|v| v.contains("MariaDB")) {
                    Flavor::MariaDb
                } else {
                    Flavor::MySql
                };
                (conn, Instant::now())
            }
        };
        let reading = self.ask(&mut conn).await?;
        self.conn = Some((conn, since));
        Ok(reading)
    }

    async fn ask(&mut self, conn: &mut Conn) -> Result<Reading, ProbeError> {
        // One round trip: read_only and what the server holds.
        let flavor = self.flavor;
        let statement = match flavor {
            Flavor::MariaDb => "SELECT @@global.read_only, @@global.gtid_current_pos, @@global.gtid_binlog_state",
            Flavor::MySql => "SELECT @@global.read_only, @@global.gtid_executed, @@global.gtid_executed",
        };
        let row: Option<(i64, String, String)> = conn
            .query_first(statement)
            .await
            .map_err(|e| ProbeError::Mysql(format!("{statement}: {e}")))?;
        let read_only = row.as_ref().is_some_and(|(ro, _, _)| *ro != 0);
        let (_, current, state) = row.unwrap_or_default();
        let (gtid_current_pos, gtid_binlog_state) = (gtids_of(&current)?, gtids_of(&state)?);
        if self.galera {
            return Ok(Reading {
                read_only,
                flavor,
                lag: Lag::NotReplica,
                gtid_current_pos,
                gtid_binlog_state,
                replication: None,
                galera: Some(galera_member(conn).await?),
            });
        }
        let rows: Vec<Row> = loop {
            let statement = if self.legacy_status {
                "SHOW SLAVE STATUS"
            } else {
                "SHOW REPLICA STATUS"
            };
            match conn.query(statement).await {
                Ok(rows) => break rows,
                Err(mysql_async::Error::Server(e)) if e.code == 1064 && !self.legacy_status => {
                    self.legacy_status = true;
                }
                Err(e) => return Err(ProbeError::Mysql(format!("{statement}: {e}"))),
            }
        };
        // Several rows with multi-source replication: the worst one counts, and the default
        // connection (the first row) is the one failover follows.
        let mut lag = Lag::NotReplica;
        let replication = match rows.first() {
            Some(row) => Some(Replication {
                source: source_of(
                    &column(row, &["Master_Host", "Source_Host"]).unwrap_or_default(),
                    &column(row, &["Master_Port", "Source_Port"]).unwrap_or_default(),
                ),
                receiving: column(row, &["Slave_IO_Running", "Replica_IO_Running"]).as_deref() == Some("Yes"),
                received: match flavor {
                    Flavor::MariaDb => gtids_of(&column(row, &["Gtid_IO_Pos"]).unwrap_or_default())?,
                    Flavor::MySql => {
                        let set = |name| gtids_of(&column(row, &[name]).unwrap_or_default());
                        set("Retrieved_Gtid_Set")?.union(&set("Executed_Gtid_Set")?)
                    }
                },
            }),
            None => None,
        };
        for row in &rows {
            let this = match (
                column(row, &["Seconds_Behind_Master", "Seconds_Behind_Source"]).and_then(|v| v.parse().ok()),
                column(row, &["Slave_SQL_Running", "Replica_SQL_Running"]).as_deref() == Some("Yes"),
            ) {
                (Some(seconds), _) => Lag::Seconds(seconds),
                (None, false) => Lag::Stopped,
                (None, true) => Lag::Disconnected(self.last_lag_s),
            };
            lag = worst(lag, this);
        }
        if let Lag::Seconds(seconds) = lag {
            self.last_lag_s = Some(seconds);
        }
        Ok(Reading {
            read_only,
            flavor,
            lag,
            gtid_current_pos,
            gtid_binlog_state,
            replication,
            galera: None,
        })
    }
}

/// A Galera member's state from its status variables.
async fn galera_member(conn: &mut Conn) -> Result<GaleraMember, ProbeError> {
    let rows: Vec<(String, String)> = conn
        .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_status', 'wsrep_local_state', 'wsrep_ready')")
        .await
        .map_err(|e| ProbeError::Mysql(format!("SHOW GLOBAL STATUS (wsrep): {e}")))?;
    let value = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let cluster_status = value("wsrep_cluster_status")
        .ok_or_else(|| ProbeError::Mysql("no wsrep_cluster_status: not a Galera member (wsrep_on = OFF?)".into()))?;
    let desync: Option<i64> = conn
        .query_first("SELECT @@global.wsrep_desync")
        .await
        .map_err(|e| ProbeError::Mysql(format!("SELECT @@global.wsrep_desync: {e}")))?;
    Ok(GaleraMember {
        cluster_status,
        local_state: value("wsrep_local_state").and_then(|v| v.parse().ok()).unwrap_or(0),
        ready: value("wsrep_ready").as_deref() == Some("ON"),
        desync: desync.is_some_and(|d| d != 0),
    })
}

/// `host:port`, with an IPv6 address in brackets.
fn source_of(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A GTID list a server reported; an unreadable one fails the check.
fn gtids_of(text: &str) -> Result<Gtids, ProbeError> {
    text.parse().map_err(|e| ProbeError::Mysql(format!("{e}")))
}

/// Logs in to `addr` as the monitor user.
pub(super) async fn login(addr: SocketAddr, creds: &Credentials) -> Result<Conn, ProbeError> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(creds.user.clone()))
        .pass(Some(creds.password.clone()))
        .prefer_socket(false)
        .stmt_cache_size(0);
    Conn::new(opts)
        .await
        .map_err(|e| ProbeError::Mysql(format!("login: {}", io_cause(&e))))
}

/// A health check through a MySQL endpoint: log in, `SELECT 1`, quit cleanly.
pub async fn login_check(addr: SocketAddr, creds: &Credentials) -> Result<(), ProbeError> {
    let mut conn = login(addr, creds).await?;
    conn.query_drop("SELECT 1")
        .await
        .map_err(|e| ProbeError::Mysql(format!("SELECT 1: {e}")))?;
    conn.disconnect()
        .await
        .map_err(|e| ProbeError::Mysql(format!("quit: {e}")))
}

/// An error's message without mysql_async's repeated "Input/output error:" wrappers.
fn io_cause(e: &mysql_async::Error) -> String {
    let text = e.to_string();
    text.rsplit("Input/output error: ").next().unwrap_or(&text).to_owned()
}

/// A text column of a status row by any of its names (MariaDB and MySQL spell some apart);
/// None when absent or NULL.
fn column(row: &Row, names: &[&str]) -> Option<String> {
    let index = row
        .columns_ref()
        .iter()
        .position(|c| names.contains(&c.name_str().as_ref()))?;
    row.get_opt::<Option<String>, _>(index)?.ok().flatten()
}

/// The staler of two replication channels' lags.
fn worst(a: Lag, b: Lag) -> Lag {
    let rank = |l: &Lag| match l {
        Lag::NotReplica => (0, 0),
        Lag::Seconds(s) => (1, *s),
        Lag::Disconnected(_) => (2, 0),
        Lag::Stopped => (3, 0),
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

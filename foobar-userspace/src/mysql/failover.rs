//! Automatic failover and planned switchover of a replicated cluster (`[database.failover]`):
//! MariaDB, tested; MySQL 8 in its own SQL (`dialect.rs`), not tested here.
//!
//! Every edge runs a coordinator per cluster, but only one acts: the edge holding the named
//! lock `foobar_failover_<name>` (`GET_LOCK`, on a connection of its own to each server) on a
//! majority of the cluster's servers, as MariaDB MaxScale's cooperative monitoring does. No
//! consensus protocol of foobar's own: the servers' lock tables decide, and a dead edge's locks
//! go with its connections (the lock connections set a short `wait_timeout`, so even a
//! vanished host's locks expire).
//!
//! What the acting edge does is decided by [`plan`], a pure function of what the monitor sees:
//! - **fence** a writable server beside the primary (a returning old primary): read-only;
//! - **promote** the replica that received the most (ties: configuration order) once the
//!   primary has been down for `after_ms` *and* no replica still receives from it (a partition
//!   only the monitor sees fails nothing over), after it has applied everything it received;
//!   then point the other replicas at it;
//! - **repoint** a replica still following a server outside the primary's tree;
//! - **rejoin** (opt-in) a fenced old primary as a replica, when every transaction it holds is
//!   in the new primary's binary log history; otherwise it stays out, and the status says why.
//!
//! Each step is an event: logged (and so pushed), kept in the status, counted in the metrics.

use super::{
    gtid::Gtids,
    monitor::{self, Credentials, Flavor, ServerState},
    Cluster,
};
use crate::config::database::Failover;
use anyhow::{anyhow, bail, Context, Result};
use arc_swap::ArcSwap;
use futures_util::future::join_all;
use mysql_async::{prelude::Queryable, Conn};
use serde::{Deserialize, Serialize};
use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::timeout,
};
use tracing::{info, warn};

/// Events kept in the status.
const EVENTS_KEPT: usize = 32;

/// A switchover request: the target (None: the best replica), and where the answer goes.
pub(super) type Request = (Option<SocketAddr>, oneshot::Sender<Result<String, String>>);

/// A cluster's failover state shared by its coordinator, the status and the control socket.
pub(super) struct Shared {
    /// What the status shows.
    pub status: Mutex<FailoverStatus>,
    /// The replication login given to replicas pointed at a new primary.
    pub replication: ArcSwap<Credentials>,
    /// Switchover requests to the coordinator.
    pub requests: mpsc::Sender<Request>,
}

/// The failover side of a cluster's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverStatus {
    /// This edge acts for the cluster: it holds the failover lock on a majority of servers.
    pub acting: bool,
    /// Servers on which this edge holds the lock.
    pub locks_held: usize,
    /// Replicas promoted after the primary failed.
    pub failovers: u64,
    /// Switchovers done.
    pub switchovers: u64,
    /// Servers made read-only because they were writable beside the primary.
    pub fenced: u64,
    /// Replicas pointed at the primary (after a failover, and old primaries rejoining).
    pub repointed: u64,
    /// Steps that failed (each is retried at the next check).
    pub failed_steps: u64,
    /// How long writes paused in the last switchover, ms.
    pub last_write_pause_ms: Option<u64>,
    /// Why the acting edge is not changing anything that looks wrong (waiting for `after_ms`, a
    /// replica still receiving from the primary, errant transactions), if it is not.
    pub waiting: Option<String>,
    /// The latest steps, oldest first.
    pub events: Vec<Event>,
}

impl FailoverStatus {
    /// One line for people: who acts, and the counts (`servers`: the cluster's size).
    pub fn summary(&self, servers: usize) -> String {
        format!(
            "{} (lock on {} of {servers} servers); {} failovers, {} switchovers, {} fenced, {} repointed, {} failed steps{}",
            if self.acting { "this edge acts" } else { "another edge acts" },
            self.locks_held,
            self.failovers,
            self.switchovers,
            self.fenced,
            self.repointed,
            self.failed_steps,
            self.last_write_pause_ms
                .map(|ms| format!("; last switchover paused writes {ms} ms"))
                .unwrap_or_default()
        )
    }
}

/// One step of a failover, switchover, fence or rejoin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub what: String,
}

/// What the acting edge does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Everything is as it should be.
    Nothing,
    /// Something is wrong but the rules say wait or stay out; why.
    Wait(String),
    /// Make this writable server (not the primary) read-only.
    Fence(usize),
    /// Promote `to` in place of the dead `lost`.
    Promote {
        /// The primary that is gone.
        lost: usize,
        /// The replica that received the most.
        to: usize,
    },
    /// Point this replica at the primary (`MASTER_USE_GTID = slave_pos`).
    Repoint(usize),
    /// Make this read-only, replication-less server (an old primary) a replica of the primary
    /// (`MASTER_USE_GTID = current_pos`).
    Rejoin(usize),
}

/// What [`plan`] needs besides the view.
pub struct Rules {
    /// `after_ms`.
    pub after_ms: u64,
    /// `rejoin`.
    pub rejoin: bool,
}

/// The next step, from the monitor's view, the router's primary, and how long each server has
/// been down (ms; None while up).
pub fn plan(
    view: &[ServerState],
    addresses: &[SocketAddr],
    primary: Option<usize>,
    down_ms: &[Option<u64>],
    rules: &Rules,
) -> Plan {
    let name = |i: usize| addresses[i].to_string();
    let follows = |s: &ServerState, j: usize| s.replication.as_ref().is_some_and(|r| r.follows(addresses[j]));
    let servers = view.len().min(addresses.len());
    let Some(p) = primary else {
        return plan_promotion(view, addresses, down_ms, rules);
    };
    if let Some(i) = (0..servers).find(|&i| i != p && view[i].up && !view[i].read_only) {
        return Plan::Fence(i);
    }
    // Servers in the primary's tree: it, and those replicating from it.
    let in_tree = |j: usize| j == p || follows(&view[j], p);
    let history = &view[p].gtid_binlog_state;
    // The first server to act on; failing that, the first reason to wait.
    let mut wait = None;
    for i in (0..servers).filter(|&i| i != p && view[i].up) {
        let s = &view[i];
        let elsewhere = s.replication.as_ref().and_then(|r| {
            let source = r.source.parse::<SocketAddr>().ok()?;
            addresses.iter().position(|a| *a == source)
        });
        let action = match (&s.replication, elsewhere) {
            (Some(_), Some(j)) if !in_tree(j) => Plan::Repoint(i),
            (None, _) if rules.rejoin => Plan::Rejoin(i),
            (None, _) => {
                wait.get_or_insert(format!(
                    "{} is read-only and replicates from nobody (rejoin = false: it stays out)",
                    name(i)
                ));
                continue;
            }
            _ => continue,
        };
        if history.contains_history_of(&s.gtid_current_pos) {
            return action;
        }
        wait.get_or_insert(format!(
            "{} has transactions primary {} never had (errant: {} is not in its history {}): it stays out until a person reconciles it",
            name(i),
            name(p),
            s.gtid_current_pos,
            history
        ));
    }
    wait.map_or(Plan::Nothing, Plan::Wait)
}

/// With no primary: whether to promote a replica, and which.
fn plan_promotion(view: &[ServerState], addresses: &[SocketAddr], down_ms: &[Option<u64>], rules: &Rules) -> Plan {
    let name = |i: usize| addresses[i].to_string();
    let servers = view.len().min(addresses.len());
    let followers = |j: usize| -> Vec<usize> {
        (0..servers)
            .filter(|&i| view[i].up && view[i].replication.as_ref().is_some_and(|r| r.follows(addresses[j])))
            .collect()
    };
    // The lost primary: the server most replicas follow.
    let Some(lost) = (0..servers)
        .filter(|&j| !followers(j).is_empty())
        .max_by_key(|&j| followers(j).len())
    else {
        return Plan::Wait("no primary, and no replica follows a server of this cluster".into());
    };
    if view[lost].up {
        return Plan::Wait(format!(
            "primary {} answers but is read-only: no failover while it is up",
            name(lost)
        ));
    }
    let down = down_ms.get(lost).copied().flatten().unwrap_or(0);
    if down < rules.after_ms {
        return Plan::Wait(format!(
            "primary {} down for {down} ms; failover after {} ms",
            name(lost),
            rules.after_ms
        ));
    }
    let replicas = followers(lost);
    if let Some(&i) = replicas
        .iter()
        .find(|&&i| view[i].replication.as_ref().is_some_and(|r| r.receiving))
    {
        return Plan::Wait(format!(
            "primary {} is down for the monitor, but replica {} still receives from it: no failover",
            name(lost),
            name(i)
        ));
    }
    let received = |i: usize| {
        let r = view[i].replication.as_ref().map(|r| &r.received);
        match r {
            Some(g) if !g.is_empty() => g.progress(),
            _ => view[i].gtid_current_pos.progress(),
        }
    };
    if replicas.iter().all(|&i| view[i].gtid_current_pos.is_empty()) {
        return Plan::Wait(format!(
            "primary {} is down, but no replica reports a GTID position: failover needs replication with GTIDs (MariaDB, or MySQL with gtid_mode = ON)",
            name(lost)
        ));
    }
    let best = replicas
        .into_iter()
        .filter(|&i| view[i].read_only && view[i].lag != monitor::Lag::Stopped)
        .max_by_key(|&i| (received(i), std::cmp::Reverse(i)));
    match best {
        Some(to) => Plan::Promote { lost, to },
        None => Plan::Wait(format!(
            "primary {} is down and no replica can be promoted (each has its SQL thread stopped or is writable)",
            name(lost)
        )),
    }
}

/// Reads a replication credentials file: as the monitor's, and quoted into SQL, so quotes,
/// backslashes and control characters are refused.
pub fn replication_credentials(path: &Path) -> Result<Credentials> {
    let c = Credentials::load(path)?;
    let unsafe_char = |ch: char| ch == '\'' || ch == '\\' || ch.is_control();
    if c.user.contains(unsafe_char) || c.password().contains(unsafe_char) {
        bail!(
            "{}: the replication user and password must not contain quotes, backslashes or control characters",
            path.display()
        );
    }
    Ok(c)
}

/// The coordinator of one cluster: holds the locks, plans, acts, answers switchovers.
pub(super) struct Coordinator {
    cluster: Arc<Cluster>,
    settings: Failover,
    locks: Locks,
    /// Since when each server has been down, as the coordinator saw it.
    down_since: Vec<Option<Instant>>,
}

impl Coordinator {
    /// A coordinator for `cluster`, whose `[database.failover]` is `settings`.
    pub(super) fn new(cluster: Arc<Cluster>, settings: Failover) -> Self {
        let servers = cluster.config.servers.len();
        let name = &cluster.config.name;
        let lock: String = format!("foobar_failover_{name}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .take(64)
            .collect();
        Self {
            cluster,
            settings,
            locks: Locks {
                name: lock,
                conns: (0..servers).map(|_| None).collect(),
                resting: 0,
            },
            down_since: vec![None; servers],
        }
    }

    /// Runs until `stop` turns true: a step every monitor interval, switchovers on request.
    pub(super) async fn run(mut self, mut requests: mpsc::Receiver<Request>, mut stop: watch::Receiver<bool>) {
        let interval = self.cluster.config.monitor.interval;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.step().await,
                Some((to, reply)) = requests.recv() => {
                    let answer = self.switchover(to).await.map_err(|e| format!("{e:#}"));
                    if let Err(why) = &answer {
                        self.event(true, format!("switchover refused or failed: {why}"));
                    }
                    let _ = reply.send(answer);
                }
                _ = stop.changed() => {
                    self.locks.release().await;
                    return;
                }
            }
        }
    }

    fn shared(&self) -> Option<&Shared> {
        self.cluster.failover.as_ref()
    }

    fn addresses(&self) -> &[SocketAddr] {
        &self.cluster.config.servers
    }

    fn limit(&self) -> Duration {
        self.cluster.config.monitor.timeout
    }

    /// One monitor round at most: its interval and its timeout, ms.
    fn round_ms(&self) -> u64 {
        let m = &self.cluster.config.monitor;
        (m.interval + m.timeout).as_millis() as u64
    }

    /// Records a step: the log (and so the push exporter), the status.
    fn event(&self, warning: bool, what: String) {
        let database = &self.cluster.config.name;
        if warning {
            warn!(database, "failover: {what}");
        } else {
            info!(database, "failover: {what}");
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.update(|s| {
            s.events.push(Event { at_ms, what });
            let excess = s.events.len().saturating_sub(EVENTS_KEPT);
            s.events.drain(..excess);
        });
    }

    fn update(&self, f: impl FnOnce(&mut FailoverStatus)) {
        if let Some(mut status) = self.shared().and_then(|s| s.status.lock().ok()) {
            f(&mut status);
        }
    }

    fn acting(&self) -> bool {
        self.shared()
            .and_then(|s| s.status.lock().ok())
            .is_some_and(|s| s.acting)
    }

    /// One round: refresh the locks, and when acting, take the step the plan says.
    async fn step(&mut self) {
        let creds = self.cluster.credentials.load_full();
        let limit = self.limit();
        let idle_s = (self.round_ms().saturating_mul(5)).div_ceil(1000).max(10);
        let held = self
            .locks
            .refresh(&self.cluster.config.servers, &creds, limit, idle_s)
            .await;
        let servers = self.addresses().len();
        let acting = 2 * held > servers;
        if !acting && held > 0 {
            // A minority helps nobody and may keep the other edge from a majority (the locks
            // split 1:1 when a server dies): give them back and sit out one to three rounds,
            // so that the edges do not keep splitting them.
            self.locks.release().await;
            self.locks.resting = 1 + u64::from(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos()),
            ) % 3;
        }
        if acting != self.acting() {
            self.event(
                false,
                if acting {
                    format!("this edge acts for the cluster (it holds the lock on {held} of {servers} servers)")
                } else {
                    format!("this edge no longer acts for the cluster (lock on {held} of {servers} servers)")
                },
            );
        }
        self.update(|s| {
            s.acting = acting;
            s.locks_held = held;
        });
        let view = self.cluster.view.borrow().clone();
        let now = Instant::now();
        for (since, s) in self.down_since.iter_mut().zip(&view) {
            *since = if s.up { None } else { Some(since.unwrap_or(now)) };
        }
        if !acting {
            self.update(|s| s.waiting = None);
            return;
        }
        let primary = self.cluster.primary.lock().ok().and_then(|p| *p);
        let down_ms: Vec<Option<u64>> = self
            .down_since
            .iter()
            .map(|s| s.map(|t| t.elapsed().as_millis() as u64))
            .collect();
        let rules = Rules {
            after_ms: self.settings.after.as_millis() as u64,
            rejoin: self.settings.rejoin,
        };
        let next = plan(&view, self.addresses(), primary, &down_ms, &rules);
        let waiting = match &next {
            Plan::Wait(why) => Some(why.clone()),
            _ => None,
        };
        let before = self
            .shared()
            .and_then(|s| s.status.lock().ok())
            .and_then(|s| s.waiting.clone());
        if waiting != before {
            if let Some(why) = &waiting {
                // "down for N ms" changes every round: only a new kind of wait is an event.
                let kind = |w: &str| w.split(" down for ").next().unwrap_or(w).to_owned();
                if before.as_deref().map(kind) != Some(kind(why)) {
                    self.event(false, why.clone());
                }
            }
            self.update(|s| s.waiting = waiting);
        }
        let done = match next {
            Plan::Nothing | Plan::Wait(_) => return,
            Plan::Fence(i) => self.fence(i).await,
            Plan::Promote { lost, to } => self.promote(lost, to, &view).await,
            Plan::Repoint(i) => self.repoint(i, primary, false).await,
            Plan::Rejoin(i) => self.repoint(i, primary, true).await,
        };
        if let Err(e) = done {
            self.update(|s| s.failed_steps += 1);
            self.event(true, format!("{e:#} (retried at the next check)"));
        }
    }

    /// Logs in to server `i` to act on it.
    async fn admin(&self, i: usize) -> Result<Conn> {
        let addr = self.addresses()[i];
        let creds = self.cluster.credentials.load_full();
        timeout(self.limit(), monitor::login(addr, &creds))
            .await
            .map_err(|_| anyhow!("logging in to {addr} timed out"))?
            .map_err(|e| anyhow!("logging in to {addr}: {e}"))
    }

    async fn fence(&self, i: usize) -> Result<()> {
        let addr = self.addresses()[i];
        let flavor = self.flavor(i);
        let mut conn = self.admin(i).await?;
        run(&mut conn, addr, flavor.fence(), self.limit()).await?;
        self.semi_sync_side(&mut conn, addr, flavor, false).await?;
        let _ = conn.disconnect().await;
        self.update(|s| s.fenced += 1);
        self.event(
            true,
            format!("fenced {addr}: it was writable beside the primary; it is read-only now"),
        );
        self.wait_for_view(|v| v.get(i).is_some_and(|s| s.read_only)).await;
        Ok(())
    }

    async fn promote(&self, lost: usize, to: usize, view: &[ServerState]) -> Result<()> {
        let (old, new) = (self.addresses()[lost], self.addresses()[to]);
        let received = view[to]
            .replication
            .as_ref()
            .map(|r| r.received.clone())
            .unwrap_or_default();
        self.event(
            true,
            format!("primary {old} is down and no replica receives from it: promoting {new} (received {received})"),
        );
        let flavor = self.flavor(to);
        let mut conn = self.admin(to).await?;
        self.catch_up(&mut conn, new, flavor, &received).await?;
        self.make_primary(&mut conn, new, flavor).await?;
        let position: Option<String> = conn
            .query_first(flavor.holds())
            .await
            .with_context(|| format!("{new}: {}", flavor.holds()))?;
        let _ = conn.disconnect().await;
        let position: Gtids = position.unwrap_or_default().parse()?;
        let last_seen = &view[lost].gtid_current_pos;
        let missing = position.missing_from(last_seen);
        self.update(|s| s.failovers += 1);
        self.event(
            missing > 0,
            if missing > 0 {
                format!(
                    "{new} is the primary at {position}; {old} was last seen at {last_seen}: up to {missing} transaction(s) written there may be lost (with semi-synchronous replication none that were acknowledged)"
                )
            } else {
                format!("{new} is the primary at {position}; it has everything {old} was last seen with ({last_seen})")
            },
        );
        for i in (0..view.len()).filter(|&i| i != to && i != lost && view[i].up) {
            if view[i].replication.as_ref().is_some_and(|r| r.follows(old)) {
                if let Err(e) = self.repoint(i, Some(to), false).await {
                    self.update(|s| s.failed_steps += 1);
                    self.event(true, format!("{e:#} (retried at the next check)"));
                }
            }
        }
        self.wait_for_view(|v| v.get(to).is_some_and(|s| s.up && !s.read_only))
            .await;
        Ok(())
    }

    /// Waits until the replica behind `conn` has applied everything up to `received`.
    async fn catch_up(&self, conn: &mut Conn, addr: SocketAddr, flavor: Flavor, received: &Gtids) -> Result<()> {
        if received.is_empty() {
            return Ok(());
        }
        let limit = self.settings.catch_up_timeout;
        let sql = flavor.wait_for(received, limit);
        let waited: Option<i64> = timeout(limit.saturating_add(self.limit()), conn.query_first(sql))
            .await
            .map_err(|_| anyhow!("{addr}: applying what it received ({received}) timed out"))?
            .with_context(|| format!("{addr}: waiting to apply {received}"))?;
        if waited != Some(0) {
            bail!(
                "{addr} did not apply what it received ({received}) within {} ms",
                limit.as_millis()
            );
        }
        Ok(())
    }

    /// Stops the replication of the server behind `conn`, forgets it and makes it writable.
    /// When forgetting fails (a missing privilege), replication starts again so the server
    /// stays a candidate for the next round.
    async fn make_primary(&self, conn: &mut Conn, addr: SocketAddr, flavor: Flavor) -> Result<()> {
        run(conn, addr, flavor.stop_replication(), self.limit()).await?;
        if let Err(e) = run(conn, addr, flavor.forget_replication(), self.limit()).await {
            let _ = run(conn, addr, flavor.start_replication(), self.limit()).await;
            return Err(e);
        }
        self.semi_sync_side(conn, addr, flavor, true).await?;
        run(conn, addr, flavor.unfence(), self.limit()).await
    }

    /// With `semi_sync`, turns the primary side of semi-synchronous replication on (a primary)
    /// or off (a replica) on the server behind `conn`; the replica side stays on everywhere.
    async fn semi_sync_side(&self, conn: &mut Conn, addr: SocketAddr, flavor: Flavor, primary: bool) -> Result<()> {
        if !self.settings.semi_sync {
            return Ok(());
        }
        for sql in flavor.semi_sync(primary) {
            run(conn, addr, &sql, self.limit()).await?;
        }
        Ok(())
    }

    /// What server `i` is, as the monitor last saw it (MariaDB until it has seen).
    fn flavor(&self, i: usize) -> Flavor {
        self.cluster
            .view
            .borrow()
            .get(i)
            .and_then(|s| s.flavor)
            .unwrap_or(Flavor::MariaDb)
    }

    /// Points server `i` at `primary`: a replica from what it applied, an old primary
    /// (`rejoining`) from what it holds.
    async fn repoint(&self, i: usize, primary: Option<usize>, rejoining: bool) -> Result<()> {
        let p = primary.ok_or_else(|| anyhow!("no primary to point replicas at"))?;
        let (addr, source) = (self.addresses()[i], self.addresses()[p]);
        let repl = self
            .shared()
            .map(|s| s.replication.load_full())
            .ok_or_else(|| anyhow!("no replication credentials"))?;
        let flavor = self.flavor(i);
        let mut conn = self.admin(i).await?;
        self.semi_sync_side(&mut conn, addr, flavor, false).await?;
        let change = flavor.change_source(source, &repl, rejoining);
        for sql in [
            flavor.fence(),
            flavor.stop_replication(),
            change.as_str(),
            flavor.start_replication(),
        ] {
            run(&mut conn, addr, sql, self.limit()).await?;
        }
        let _ = conn.disconnect().await;
        self.update(|s| s.repointed += 1);
        let what = if rejoining {
            format!("{addr} rejoined as a replica of {source} (its history is part of the primary's)")
        } else {
            format!("{addr} now replicates from {source}")
        };
        self.event(false, what);
        self.wait_for_view(|v| {
            v.get(i)
                .and_then(|s| s.replication.as_ref())
                .is_some_and(|r| r.follows(source))
        })
        .await;
        Ok(())
    }

    /// Waits (a few monitor rounds at most) until the monitor's view satisfies `done`, so the
    /// next step plans on what the last one did.
    async fn wait_for_view(&self, done: impl Fn(&[ServerState]) -> bool) {
        let rounds = Duration::from_millis(self.round_ms().saturating_mul(4));
        let mut view = self.cluster.view.clone();
        let _ = timeout(rounds, async {
            while !done(&view.borrow_and_update()) {
                if view.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// A planned switchover to `to` (None: the replica that received the most): the primary
    /// goes read-only, the target applies everything the primary wrote, the target is
    /// promoted, the others (the old primary too) replicate from it. What happened, with the
    /// write pause.
    async fn switchover(&self, to: Option<SocketAddr>) -> Result<String> {
        let name = self.cluster.config.name.clone();
        let status = self.shared().and_then(|s| s.status.lock().ok()).map(|s| s.clone());
        let (acting, held) = status.map_or((false, 0), |s| (s.acting, s.locks_held));
        let servers = self.addresses().len();
        if !acting {
            bail!(
                "this edge does not act for database {name}: it holds the failover lock on {held} of {servers} servers; run the switchover on the edge whose status says acting"
            );
        }
        let view = self.cluster.view.borrow().clone();
        let p = self
            .cluster
            .primary
            .lock()
            .ok()
            .and_then(|p| *p)
            .ok_or_else(|| anyhow!("database {name} has no primary to switch over from"))?;
        let old = self.addresses()[p];
        let candidates: Vec<usize> = (0..view.len())
            .filter(|&i| {
                i != p
                    && view[i].up
                    && view[i].read_only
                    && view[i].lag != monitor::Lag::Stopped
                    && view[i].replication.as_ref().is_some_and(|r| r.follows(old))
            })
            .collect();
        let t = match to {
            Some(addr) => {
                let i = self.addresses().iter().position(|a| *a == addr).ok_or_else(|| {
                    let all: Vec<String> = self.addresses().iter().map(|a| a.to_string()).collect();
                    anyhow!(
                        "{addr} is not a server of database {name} (servers: {})",
                        all.join(", ")
                    )
                })?;
                if !candidates.contains(&i) {
                    bail!("{addr} cannot take over: it must be up, read-only and replicating from primary {old} with its SQL thread running");
                }
                i
            }
            None => *candidates
                .iter()
                .max_by_key(|&&i| (view[i].gtid_current_pos.progress(), std::cmp::Reverse(i)))
                .ok_or_else(|| {
                    anyhow!("no replica of {old} can take over (each is down, stopped or not replicating from it)")
                })?,
        };
        let new = self.addresses()[t];
        self.event(false, format!("switchover from {old} to {new}: writes pause"));
        let started = Instant::now();
        let (old_flavor, new_flavor) = (self.flavor(p), self.flavor(t));
        let mut primary = self.admin(p).await?;
        run(&mut primary, old, old_flavor.fence(), self.limit()).await?;
        let mut target = self.admin(t).await?;
        let caught_up = async {
            let written: Option<String> = primary
                .query_first(old_flavor.written())
                .await
                .with_context(|| format!("{old}: {}", old_flavor.written()))?;
            let written: Gtids = written.unwrap_or_default().parse()?;
            self.catch_up(&mut target, new, new_flavor, &written).await?;
            Ok::<_, anyhow::Error>(written)
        }
        .await;
        let written = match caught_up {
            Ok(w) => w,
            Err(e) => {
                // Give the writes back to the old primary.
                let undo = run(&mut primary, old, old_flavor.unfence(), self.limit()).await;
                bail!(
                    "{e:#}; {old} {}",
                    if undo.is_ok() {
                        "takes writes again".to_owned()
                    } else {
                        format!(
                            "stays read-only: {}",
                            undo.err().map(|e| format!("{e:#}")).unwrap_or_default()
                        )
                    }
                );
            }
        };
        self.make_primary(&mut target, new, new_flavor).await?;
        let _ = target.disconnect().await;
        let _ = primary.disconnect().await;
        self.wait_for_view(|v| v.get(t).is_some_and(|s| s.up && !s.read_only))
            .await;
        let pause = started.elapsed().as_millis() as u64;
        self.update(|s| {
            s.switchovers += 1;
            s.last_write_pause_ms = Some(pause);
        });
        self.event(
            false,
            format!(
                "{new} is the primary (it applied everything {old} wrote: {written}); writes paused for {pause} ms"
            ),
        );
        for i in (0..view.len()).filter(|&i| i != t && view[i].up) {
            if let Err(e) = self.repoint(i, Some(t), i == p).await {
                self.update(|s| s.failed_steps += 1);
                self.event(true, format!("{e:#} (retried at the next check)"));
            }
        }
        Ok(format!(
            "database {name}: switched over from {old} to {new}; writes paused for {pause} ms"
        ))
    }
}

/// Runs one statement on `addr` within `limit`.
async fn run(conn: &mut Conn, addr: SocketAddr, sql: &str, limit: Duration) -> Result<()> {
    let verb = verb_of(sql);
    timeout(limit, conn.query_drop(sql))
        .await
        .map_err(|_| anyhow!("{addr}: {verb} timed out"))?
        .map_err(|e| anyhow!("{addr}: {verb}: {e}"))
}

/// What an error about `sql` may quote of it: all of it but a login (a `CHANGE ... TO`
/// statement holds the replication password from its user on).
fn verb_of(sql: &str) -> &str {
    [" MASTER_USER", " SOURCE_USER"]
        .iter()
        .find_map(|login| sql.split_once(login).map(|(verb, _)| verb))
        .unwrap_or(sql)
}

/// The failover lock connections, one per server.
struct Locks {
    /// The lock's name.
    name: String,
    /// A connection per server, holding the lock or trying to.
    conns: Vec<Option<(Conn, bool)>>,
    /// Rounds to sit out after giving a minority of the locks back.
    resting: u64,
}

impl Locks {
    /// Keeps or takes the lock on every server at once; on how many this edge holds it.
    async fn refresh(&mut self, addresses: &[SocketAddr], creds: &Credentials, limit: Duration, idle_s: u64) -> usize {
        if self.resting > 0 {
            self.resting -= 1;
            return 0;
        }
        let name = &self.name;
        let rounds = self.conns.iter_mut().zip(addresses).map(|(slot, addr)| async move {
            let held = timeout(limit, hold(slot, *addr, creds, name, idle_s)).await;
            match held {
                Ok(Ok(held)) => held,
                _ => {
                    // A failed or half-done exchange: a new connection next round (the
                    // server frees the lock with the old one).
                    *slot = None;
                    false
                }
            }
        });
        join_all(rounds).await.into_iter().filter(|h| *h).count()
    }

    /// Gives the locks back (clean quits) so another edge can act at once.
    async fn release(&mut self) {
        let quits = self
            .conns
            .iter_mut()
            .filter_map(Option::take)
            .map(|(conn, _)| conn.disconnect());
        let _ = timeout(Duration::from_secs(1), join_all(quits)).await;
    }
}

/// Keeps or takes the lock on one server; whether this edge holds it.
async fn hold(
    slot: &mut Option<(Conn, bool)>,
    addr: SocketAddr,
    creds: &Credentials,
    name: &str,
    idle_s: u64,
) -> Result<bool> {
    if slot.is_none() {
        let mut conn = monitor::login(addr, creds).await.map_err(|e| anyhow!("{e}"))?;
        // A holder that vanishes without closing frees the lock this long after its last round.
        conn.query_drop(format!("SET SESSION wait_timeout = {idle_s}")).await?;
        *slot = Some((conn, false));
    }
    let Some((conn, held)) = slot.as_mut() else {
        return Ok(false);
    };
    let answer: Option<Option<i64>> = conn
        .query_first(format!(
            "SELECT IF(IS_USED_LOCK('{name}') <=> CONNECTION_ID(), 1, GET_LOCK('{name}', 0))"
        ))
        .await?;
    *held = answer.flatten() == Some(1);
    Ok(*held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::monitor::{Lag, Replication};

    fn addrs() -> Vec<SocketAddr> {
        (1..=3).map(|i| SocketAddr::from(([10, 0, 0, i], 3306))).collect()
    }

    fn primary(gtid: &str) -> ServerState {
        ServerState {
            up: true,
            gtid_current_pos: gtid.parse().unwrap(),
            gtid_binlog_state: gtid.parse().unwrap(),
            ..ServerState::default()
        }
    }

    fn replica(of: u8, receiving: bool, received: &str) -> ServerState {
        ServerState {
            up: true,
            read_only: true,
            lag: if receiving {
                Lag::Seconds(0)
            } else {
                Lag::Disconnected(Some(0))
            },
            gtid_current_pos: received.parse().unwrap(),
            replication: Some(Replication {
                source: format!("10.0.0.{of}:3306"),
                receiving,
                received: received.parse().unwrap(),
            }),
            ..ServerState::default()
        }
    }

    fn rules(rejoin: bool) -> Rules {
        Rules { after_ms: 5000, rejoin }
    }

    #[test]
    fn promotes_the_replica_that_received_the_most_once_every_replica_lost_the_primary() {
        let a = addrs();
        let mut v = vec![
            primary("0-1-10"),
            replica(1, false, "0-1-9"),
            replica(1, false, "0-1-10"),
        ];
        v[0].up = false;
        let down = |ms| vec![Some(ms), None, None];
        assert!(
            matches!(plan(&v, &a, None, &down(1000), &rules(false)), Plan::Wait(w) if w.contains("failover after 5000 ms"))
        );
        assert_eq!(
            plan(&v, &a, None, &down(6000), &rules(false)),
            Plan::Promote { lost: 0, to: 2 }
        );
        v[2].replication.as_mut().unwrap().received = "0-1-9".parse().unwrap();
        assert_eq!(
            plan(&v, &a, None, &down(6000), &rules(false)),
            Plan::Promote { lost: 0, to: 1 },
            "a tie goes to configuration order"
        );
        v[1].lag = Lag::Stopped;
        assert_eq!(
            plan(&v, &a, None, &down(6000), &rules(false)),
            Plan::Promote { lost: 0, to: 2 }
        );
        // Only the monitor lost the primary: a replica still receives from it.
        v[2].replication.as_mut().unwrap().receiving = true;
        assert!(
            matches!(plan(&v, &a, None, &down(60_000), &rules(false)), Plan::Wait(w) if w.contains("still receives"))
        );
        // Without GTIDs (MySQL, or a server that never replicated) nothing is comparable.
        v[2].replication.as_mut().unwrap().receiving = false;
        let mut no_gtids = v.clone();
        for s in &mut no_gtids {
            s.gtid_current_pos = Gtids::default();
        }
        assert!(matches!(plan(&no_gtids, &a, None, &down(6000), &rules(false)), Plan::Wait(w) if w.contains("GTID")));
        v[2].replication.as_mut().unwrap().receiving = true;
        // A primary that answers read-only is no reason to fail over.
        v[0].up = true;
        v[0].read_only = true;
        assert!(matches!(plan(&v, &a, None, &[None; 3], &rules(false)), Plan::Wait(w) if w.contains("read-only")));
    }

    #[test]
    fn fences_repoints_and_rejoins_only_a_history_the_primary_has() {
        let a = addrs();
        // 1 was promoted at 0-1-10 and wrote 0-2-11..; 2 still follows the dead 0; 0 is back.
        let mut new = primary("0-2-12");
        new.gtid_binlog_state = "0-1-10,0-2-12".parse().unwrap();
        let mut v = vec![primary("0-1-10"), new, replica(1, false, "0-1-10")];
        assert_eq!(plan(&v, &a, Some(1), &[None; 3], &rules(false)), Plan::Fence(0));
        v[0].read_only = true;
        assert_eq!(plan(&v, &a, Some(1), &[None; 3], &rules(false)), Plan::Repoint(2));
        v[2] = replica(2, true, "0-2-12");
        assert!(
            matches!(plan(&v, &a, Some(1), &[None; 3], &rules(false)), Plan::Wait(w) if w.contains("rejoin = false"))
        );
        assert_eq!(plan(&v, &a, Some(1), &[None; 3], &rules(true)), Plan::Rejoin(0));
        // It committed 0-1-11 that nobody received: errant, it stays out.
        v[0].gtid_current_pos = "0-1-11".parse().unwrap();
        assert!(matches!(plan(&v, &a, Some(1), &[None; 3], &rules(true)), Plan::Wait(w) if w.contains("errant")));
        v[0] = replica(2, true, "0-2-12");
        assert_eq!(plan(&v, &a, Some(1), &[None; 3], &rules(true)), Plan::Nothing);
    }

    #[test]
    fn errors_never_quote_the_replication_password() {
        let login: Credentials = toml::from_str("user = \"repl\"\npassword = \"hunter2\"").unwrap();
        let source: SocketAddr = "10.0.0.2:3306".parse().unwrap();
        for flavor in [Flavor::MariaDb, Flavor::MySql] {
            let sql = flavor.change_source(source, &login, false);
            let verb = verb_of(&sql);
            assert!(
                sql.contains("hunter2") && !verb.contains("hunter2") && verb.contains("10.0.0.2"),
                "{verb}"
            );
        }
        assert_eq!(verb_of("STOP REPLICA"), "STOP REPLICA");
    }

    #[test]
    fn replication_credentials_refuse_what_sql_quoting_cannot_carry() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fb-repl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("repl.toml");
        for (text, ok) in [
            ("user = \"repl\"\npassword = \"s3cret-x\"\n", true),
            ("user = \"repl\"\npassword = \"it's\"\n", false),
            ("user = \"re\\\\pl\"\npassword = \"x\"\n", false),
        ] {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(replication_credentials(&path).is_ok(), ok, "{text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

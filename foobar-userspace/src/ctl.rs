//! The control socket: `foobar run` answers `status` on a Unix socket with the node's live
//! state as JSON, and `reload` with the outcome of applying the configuration file again;
//! `foobar status` and `foobar reload` ask and print.

use crate::{
    announce::AnnounceStatus,
    config::Config,
    health::{Health, Standing},
    mysql::DatabaseStatus,
    operate::{Answer, Operation, Operations},
    privileges::Privileges,
    reload::Outcome,
    vrrp::instance::Status as VrrpStatus,
    web::stats::WebSummary,
};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, watch},
};
use tracing::warn;

/// The node's live state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Whether the data plane balances VIP traffic now.
    pub forwarding: bool,
    /// The VIPs this node claims now.
    pub claimed: Vec<String>,
    /// One entry per VRRP instance.
    pub vrrp: Vec<VrrpStatus>,
    /// The VIPs' announcements and the BGP sessions, on a node that announces (`[announce]`).
    #[serde(default)]
    pub announce: Option<AnnounceStatus>,
    /// The web tier's counters, when it runs.
    pub web: Option<WebSummary>,
    /// Each database cluster's servers and counters.
    #[serde(default)]
    pub databases: Vec<DatabaseStatus>,
    /// Each L4 service of the VIPs and where its backends stand.
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
    /// The user the daemon runs as and its threads' capabilities.
    #[serde(default)]
    pub privileges: Option<Privileges>,
}

/// One `[[service]]` as status shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// VIP and port (0: every port).
    pub vip: SocketAddr,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Its backends.
    pub backends: Vec<BackendStatus>,
}

/// One backend of a service as status shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    /// Its address.
    pub address: IpAddr,
    /// Its configured weight.
    pub weight: u32,
    /// Active, drained or down.
    pub standing: Standing,
    /// Drained by an operator (`foobar backend drain`), whatever its weight.
    #[serde(default)]
    pub drained_by_operator: bool,
    /// Why its checks put it down, while down.
    #[serde(default)]
    pub down_reason: Option<String>,
}

/// Every service of `c` with its backends' standing under `health`.
pub fn services(c: &Config, health: &Health) -> Vec<ServiceStatus> {
    c.services
        .iter()
        .map(|s| ServiceStatus {
            name: s.name.clone(),
            vip: SocketAddr::new(s.vip, s.port),
            protocol: s.protocol.name().into(),
            backends: s
                .backends
                .iter()
                .map(|b| {
                    let (service, address) = (&s.name, b.address);
                    BackendStatus {
                        address,
                        weight: b.weight,
                        standing: Standing::of(
                            health.is_up(service, address),
                            health.weight(service, address, b.weight),
                        ),
                        drained_by_operator: health.is_drained(service, address),
                        down_reason: health.down_reason(service, address).map(str::to_owned),
                    }
                })
                .collect(),
        })
        .collect()
}

/// Where the daemon's state is read from when a client asks.
pub type Source = Arc<dyn Fn() -> NodeStatus + Send + Sync>;

/// Reload requests to the daemon: each carries where to send the outcome.
pub type Reloads = mpsc::Sender<oneshot::Sender<Outcome>>;

/// How long `foobar reload` waits for the outcome (preparing loads every certificate and
/// builds every Maglev table).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the daemon's requests go: reloads and runtime operations.
#[derive(Clone)]
pub struct Requests {
    /// Reload requests.
    pub reloads: Reloads,
    /// Runtime operations.
    pub operations: Operations,
}

/// Serves `status`, `reload` and `op` requests on `path` until the task is dropped. A stale
/// socket file from a previous run is replaced; the socket is only accessible to root.
pub fn serve(path: &Path, source: Source, requests: Requests) -> Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale control socket {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (source, requests) = (source.clone(), requests.clone());
            tokio::spawn(async move {
                if let Err(e) = answer(stream, source, requests).await {
                    warn!("control socket request failed: {e:#}");
                }
            });
        }
    }))
}

async fn answer(stream: UnixStream, source: Source, requests: Requests) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(256));
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .context("request timed out")??;
    let reply = match line.trim() {
        "status" => serde_json::to_string(&source())?,
        "reload" => {
            let (reply, outcome) = oneshot::channel();
            requests.reloads.send(reply).await.context("the daemon is stopping")?;
            serde_json::to_string(&outcome.await.context("the daemon dropped the reload")?)?
        }
        line if line.starts_with("op ") => {
            let answer: Answer = match serde_json::from_str::<Operation>(&line[3..]) {
                Ok(op) => {
                    let (reply, answer) = oneshot::channel();
                    requests
                        .operations
                        .send((op, reply))
                        .await
                        .context("the daemon is stopping")?;
                    answer.await.context("the daemon dropped the operation")?
                }
                Err(e) => Err(format!("not an operation: {e}")),
            };
            serde_json::to_string(&answer)?
        }
        other => serde_json::to_string(&serde_json::json!({ "error": format!("unknown request {other:?}") }))?,
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    Ok(())
}

/// Sends one request to the daemon listening on `path` and returns its answer.
fn request(path: &Path, request: &str, limit: Duration) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to {} (is foobar run going?)", path.display()))?;
    stream.set_read_timeout(Some(limit))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .with_context(|| format!("waiting for the daemon's answer to {request}"))?;
    if reply.trim().is_empty() {
        bail!("the daemon closed the control socket without an answer");
    }
    Ok(reply)
}

/// Asks the daemon listening on `path` for its status.
pub fn query(path: &Path) -> Result<NodeStatus> {
    let reply = request(path, "status", Duration::from_secs(5))?;
    serde_json::from_str(&reply).context("reading the daemon's status")
}

/// Asks the daemon listening on `path` to carry out `op`; Ok(what it did) or Err(why not).
pub fn operate(path: &Path, op: &Operation) -> Result<Answer> {
    // A switchover waits for a replica to catch up (`catch_up_timeout_ms`).
    let limit = match op {
        Operation::Switchover { .. } => RELOAD_TIMEOUT * 2,
        _ => Duration::from_secs(10),
    };
    let reply = request(path, &format!("op {}", serde_json::to_string(op)?), limit)?;
    serde_json::from_str(&reply).context("reading the daemon's answer")
}

/// Asks the daemon listening on `path` to apply its configuration file again.
pub fn reload(path: &Path) -> Result<Outcome> {
    let reply = request(path, "reload", RELOAD_TIMEOUT)?;
    serde_json::from_str(&reply).context("reading the daemon's reload outcome")
}

/// Prints a status for people.
pub fn print(s: &NodeStatus) {
    let owns = if s.announce.is_some() {
        "announces its VIPs (answers ARP / ND for none)".to_string()
    } else {
        format!("claims [{}]", s.claimed.join(", "))
    };
    println!(
        "node {}: {}; {owns}",
        s.node,
        if s.forwarding { "forwarding" } else { "not forwarding" },
    );
    if let Some(p) = &s.privileges {
        let list = |caps: &[String]| {
            if caps.is_empty() {
                "none".to_string()
            } else {
                caps.join(", ")
            }
        };
        println!(
            "runs as uid {}; capabilities: control thread {}; threads serving clients {}",
            p.uid,
            list(&p.control_thread),
            list(&p.other_threads)
        );
    }
    if let Some(a) = &s.announce {
        print_announcements(a);
    } else if s.vrrp.is_empty() {
        println!("no VRRP instances: this node owns every VIP");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for v in &s.vrrp {
        let ago = now.saturating_sub(v.since_unix_ms) as f64 / 1000.0;
        let master = v.master.map_or("unknown".to_string(), |m| m.to_string());
        println!(
            "vrrp {} (vrid {} on {}): {} since {ago:.1} s ago ({}), priority {}, master {master} (priority {}, {} ms adverts)",
            v.name,
            v.vrid,
            v.interface,
            v.state.name().to_uppercase(),
            v.reason.name(),
            v.priority,
            v.master_priority.map_or("?".to_string(), |p| p.to_string()),
            v.master_interval_ms,
        );
        if !v.faults.is_empty() {
            println!("    faults: {}", v.faults_text());
        }
        let discards: Vec<String> = v
            .discards
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "    adverts sent {}, received {}, transitions {}, answers suppressed {}, notify runs suppressed {}, discarded: {}",
            v.adverts_sent,
            v.adverts_received,
            v.transitions,
            v.answers_suppressed,
            v.notify_suppressed,
            if discards.is_empty() {
                "none".into()
            } else {
                discards.join(", ")
            }
        );
    }
    for svc in &s.services {
        let backends: Vec<String> = svc
            .backends
            .iter()
            .map(|b| {
                // A backend that is down stands out, as a VRRP state does.
                let standing = match b.standing {
                    Standing::Down => b.standing.name().to_uppercase(),
                    _ => b.standing.name().to_owned(),
                };
                let by = if b.drained_by_operator { " by an operator" } else { "" };
                let why = b.down_reason.as_deref().map(|r| format!("; {r}")).unwrap_or_default();
                format!("{} {standing}{by} (weight {}{why})", b.address, b.weight)
            })
            .collect();
        println!(
            "service {} ({} {}): {}",
            svc.name,
            svc.vip,
            svc.protocol,
            backends.join(", ")
        );
    }
    if let Some(w) = &s.web {
        let requests: Vec<String> = w.requests.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let errors: Vec<String> = w.upstream_errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "web: {} open connections; requests {}; TLS handshakes 1.3 {}, 1.2 {}, failed {}; upstream errors {}",
            w.open_connections,
            requests.join(", "),
            w.tls13_handshakes,
            w.tls12_handshakes,
            w.tls_failed_handshakes,
            errors.join(", ")
        );
        for u in &w.upstreams {
            let servers: Vec<String> = u
                .servers
                .iter()
                .map(|s| {
                    // A server out of rotation stands out, as a down backend does.
                    let standing = match (s.up, s.failed_recently, s.drained_by_operator) {
                        (false, _, _) => "DOWN (active check)",
                        (true, true, _) => "DOWN (a connection failed)",
                        (true, false, true) => "drained by an operator",
                        (true, false, false) => "up",
                    };
                    format!("{} {standing}, {} in flight", s.address, s.in_flight)
                })
                .collect();
            println!("    upstream {}: {}", u.name, servers.join("; "));
        }
    }
    for d in &s.databases {
        println!(
            "database {}: primary {}; refused read-write {}, read-only {}; timed out {}",
            d.name,
            d.primary.as_deref().unwrap_or("none"),
            d.refused_read_write,
            d.refused_read_only,
            d.timed_out
        );
        if let Some(f) = &d.failover {
            println!("  failover: {}", f.summary(d.servers.len()));
            if let Some(why) = &f.waiting {
                println!("  failover waits: {why}");
            }
            for e in f.events.iter().rev().take(5).rev() {
                println!("  {} {}", ago(e.at_ms), e.what);
            }
        }
        for server in &d.servers {
            let st = &server.state;
            // A server that is down stands out, as a VRRP state does.
            let role = if st.up {
                st.role().to_owned()
            } else {
                st.role().to_uppercase()
            };
            let lag = st.lag_text().map(|l| format!(", {l}")).unwrap_or_default();
            let error = st.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
            let lag = if st.gtid_current_pos.is_empty() {
                lag
            } else {
                format!("{lag}, gtid {}", st.gtid_current_pos)
            };
            println!(
                "    {} {role}{lag}{error}: {} open, {} total, {} connect failures, {} closed by the router",
                server.address, server.active, server.total, server.connect_failures, server.closed_by_router
            );
        }
    }
}

/// How long ago a time in ms since the Unix epoch was: `3.2 s ago`.
fn ago(unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{:.1} s ago", now.saturating_sub(unix_ms) as f64 / 1000.0)
}

/// Prints the announcements and BGP sessions for people.
fn print_announcements(a: &AnnounceStatus) {
    println!(
        "announcing through kernel table {}{}",
        a.table,
        if a.draining {
            "; DRAINING (foobar undrain ends it)"
        } else {
            ""
        }
    );
    for v in &a.vips {
        let ago = ago(v.since_unix_ms);
        let why: Vec<String> = v.faults.iter().map(ToString::to_string).collect();
        if v.announced {
            println!("    VIP {} announced since {ago}", v.vip);
        } else {
            println!("    VIP {} WITHDRAWN since {ago}: {}", v.vip, why.join("; "));
        }
    }
    if let Some(e) = &a.table_error {
        println!("    writing the table FAILED: {e}");
    }
    for session in &a.sessions {
        let state = if session.established() {
            session.info.clone()
        } else {
            format!("{} ({})", session.state.to_uppercase(), session.info)
        };
        println!("    bgp session {}: {state}", session.name);
    }
    if let Some(e) = &a.sessions_error {
        println!("    bgp sessions unknown: {e}");
    }
}

/// Where each part of the daemon's status lives.
pub struct Parts {
    /// Node name.
    pub node: String,
    /// Forwarding, and the claimed VIPs.
    pub ownership: Arc<Mutex<(bool, Vec<String>)>>,
    /// Each VRRP instance's status.
    pub vrrp: Vec<Arc<Mutex<VrrpStatus>>>,
    /// The announcements, on a node that announces.
    pub announce: Option<Arc<Mutex<AnnounceStatus>>>,
    /// The web tier's counters, when it runs.
    pub web: Option<Arc<dyn Fn() -> WebSummary + Send + Sync>>,
    /// The database clusters.
    pub databases: Arc<dyn Fn() -> Vec<DatabaseStatus> + Send + Sync>,
    /// The running configuration.
    pub config: watch::Receiver<Arc<Config>>,
    /// The health view.
    pub health: watch::Receiver<Health>,
}

/// A status source over shared parts, for the daemon.
pub fn source(parts: Parts) -> Source {
    Arc::new(move || {
        let (forwarding, claimed) = parts.ownership.lock().map(|g| g.clone()).unwrap_or_default();
        NodeStatus {
            node: parts.node.clone(),
            forwarding,
            claimed,
            vrrp: parts
                .vrrp
                .iter()
                .map(|s| s.lock().map(|g| g.clone()).unwrap_or_default())
                .collect(),
            announce: parts
                .announce
                .as_ref()
                .map(|a| a.lock().map(|g| g.clone()).unwrap_or_default()),
            web: parts.web.as_ref().map(|summary| summary()),
            databases: (parts.databases)(),
            services: services(&parts.config.borrow(), &parts.health.borrow()),
            privileges: crate::privileges::current().ok(),
        }
    })
}

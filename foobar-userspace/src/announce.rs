//! VIP ownership by route announcement (`[announce]`), the way to run more than one active
//! edge: every edge forwards, nobody answers ARP / ND for the VIPs, and each VIP the node is fit
//! to serve is a route in a kernel table ([`routes`]) that the host's BGP daemon (BIRD 2 or FRR)
//! learns and announces; the routers spread flows over the edges with ECMP. Every edge builds
//! the same Maglev tables, so a flow that moves to another edge reaches the same backend.
//!
//! A VIP is announced while the program is attached to every data interface, those are up, at
//! least one of the VIP's services has a backend whose checks pass, and the node is not
//! draining ([`crate::track`]). The table is written only when that changes, and read back
//! every [`AUDIT_INTERVAL`] to repair what someone else changed.

pub mod bird;
pub mod frr;
pub mod routes;

use crate::{
    config::{announce::Announce, Config},
    health::Health,
    track::{self, Fault},
};
use anyhow::Result;
use routes::RouteTable;
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// How often the table is read back even when nothing changed.
pub const AUDIT_INTERVAL: Duration = Duration::from_secs(5);
/// How often the BGP daemon is asked for its sessions.
const SESSIONS_INTERVAL: Duration = Duration::from_secs(1);

/// One BGP session.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BgpSession {
    /// The protocol's name in the daemon's configuration.
    pub name: String,
    /// The protocol state (`up`, `start`, `down`, ...).
    pub state: String,
    /// The BGP state and the last error, as the daemon says them (`Established`, `Active
    /// Socket: Connection refused`, ...).
    pub info: String,
}

impl BgpSession {
    /// Whether routes are exchanged on it.
    pub fn established(&self) -> bool {
        self.info.starts_with("Established")
    }
}

/// One VIP's announcement as status shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VipAnnouncement {
    /// The VIP.
    pub vip: IpAddr,
    /// Whether its route is in the table.
    pub announced: bool,
    /// Why it is withdrawn (empty while announced).
    pub faults: Vec<Fault>,
    /// When it was last announced or withdrawn, Unix ms.
    pub since_unix_ms: u64,
}

/// What status shows of the announcements.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AnnounceStatus {
    /// The kernel table the routes are written to.
    pub table: u32,
    /// Whether the node is draining (`foobar drain`, or stopping).
    pub draining: bool,
    /// Every VIP of the configuration.
    pub vips: Vec<VipAnnouncement>,
    /// The BGP sessions the daemon reports (with `bird_socket` or `frr_vty_dir`).
    pub sessions: Vec<BgpSession>,
    /// Why the sessions could not be read, if they could not.
    pub sessions_error: Option<String>,
    /// Why the last write of the table failed, if it did (it is tried again every tick).
    pub table_error: Option<String>,
}

/// The VIPs of `c` with what keeps each from being announced (empty: announce it):
/// `node_faults` for all of them, and for a VIP none of whose services has a backend up, each
/// of its services.
pub fn evaluate(c: &Config, health: &Health, node_faults: &[Fault]) -> BTreeMap<IpAddr, Vec<Fault>> {
    let mut services: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
    for s in &c.services {
        services.entry(s.vip).or_default().push(&s.name);
    }
    services
        .into_iter()
        .map(|(vip, names)| {
            let mut faults = node_faults.to_vec();
            if !names.iter().any(|name| track::service_up(c, health, name)) {
                faults.extend(names.iter().map(|name| Fault::ServiceDown {
                    service: (*name).to_owned(),
                }));
            }
            (vip, faults)
        })
        .collect()
}

/// Keeps the kernel table in step with which VIPs the node is fit to serve.
pub struct Announcer {
    routes: RouteTable,
    status: Arc<Mutex<AnnounceStatus>>,
    /// What the table holds as last written or read (None: unknown, read it).
    written: Option<BTreeSet<IpAddr>>,
    /// When the table is read back next.
    audit_at: Instant,
}

impl Announcer {
    /// Opens the table of `[announce]`; writes nothing until the first [`Announcer::update`].
    pub fn start(a: &Announce) -> Result<Self> {
        let table = a.table;
        Ok(Self {
            routes: RouteTable::open(table)?,
            status: Arc::new(Mutex::new(AnnounceStatus {
                table,
                ..AnnounceStatus::default()
            })),
            written: None,
            audit_at: Instant::now(),
        })
    }

    /// Where status reads the announcements from.
    pub fn status_source(&self) -> Arc<Mutex<AnnounceStatus>> {
        self.status.clone()
    }

    /// Announces the VIPs of `c` that are fit and withdraws the others (see [`evaluate`]).
    pub fn update(&mut self, c: &Config, health: &Health, node_faults: &[Fault]) {
        let verdicts = evaluate(c, health, node_faults);
        let wanted: BTreeSet<IpAddr> = verdicts
            .iter()
            .filter(|(_, faults)| faults.is_empty())
            .map(|(vip, _)| *vip)
            .collect();
        let table_error = self.write(&wanted).err().map(|e| format!("{e:#}"));
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let Ok(mut status) = self.status.lock() else {
            return;
        };
        let before: BTreeMap<IpAddr, (bool, u64)> = status
            .vips
            .iter()
            .map(|v| (v.vip, (v.announced, v.since_unix_ms)))
            .collect();
        let announced = self.written.clone().unwrap_or_default();
        status.vips = verdicts
            .into_iter()
            .map(|(vip, faults)| {
                let now_announced = announced.contains(&vip);
                let since_unix_ms = match before.get(&vip) {
                    Some((was, since)) if *was == now_announced => *since,
                    was => {
                        if now_announced {
                            info!(%vip, table = self.routes.table(), "VIP announced");
                        } else if was.is_some() || !faults.is_empty() {
                            let why: Vec<String> = faults.iter().map(Fault::to_string).collect();
                            warn!(%vip, why = why.join("; "), "VIP withdrawn");
                        }
                        now_ms
                    }
                };
                VipAnnouncement {
                    vip,
                    announced: now_announced,
                    faults,
                    since_unix_ms,
                }
            })
            .collect();
        status.draining = node_faults.contains(&Fault::Draining);
        if table_error != status.table_error {
            if let Some(e) = &table_error {
                error!("writing the announcements failed: {e}");
            }
            status.table_error = table_error;
        }
    }

    /// Makes the table hold exactly `wanted`: written when that differs from what was last
    /// written, read back and repaired every [`AUDIT_INTERVAL`].
    fn write(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<()> {
        let now = Instant::now();
        if self.written.as_ref() == Some(wanted) && now < self.audit_at {
            return Ok(());
        }
        let current = match self.written.take() {
            Some(written) if now < self.audit_at => written,
            _ => {
                self.audit_at = now + AUDIT_INTERVAL;
                self.routes.list()?
            }
        };
        let mut table = current.clone();
        let result = (|| -> Result<()> {
            for vip in current.difference(wanted) {
                self.routes.remove(*vip)?;
                table.remove(vip);
            }
            for vip in wanted.difference(&current) {
                self.routes.add(*vip)?;
                table.insert(*vip);
            }
            Ok(())
        })();
        // On a failure, what was done is known; the next tick reads the table back.
        if result.is_ok() {
            self.written = Some(table);
        } else {
            self.audit_at = now;
        }
        result
    }

    /// Withdraws every VIP (the node stops); how many were announced.
    pub fn withdraw_all(&mut self, c: &Config, health: &Health) -> usize {
        let announced = self.written.as_ref().map_or(0, BTreeSet::len);
        self.update(c, health, &[Fault::Draining]);
        announced
    }
}

/// Removes every announcement from `table` (`foobar detach --config`); how many there were.
pub fn withdraw_table(table: u32) -> Result<usize> {
    let mut routes = RouteTable::open(table)?;
    let vips = routes.list()?;
    for vip in &vips {
        routes.remove(*vip)?;
    }
    Ok(vips.len())
}

/// Reads the BGP sessions from BIRD or FRR every [`SESSIONS_INTERVAL`] into `status`,
/// following the configuration's `bird_socket` / `frr_vty_dir` across reloads. Runs until the
/// runtime stops.
pub fn spawn_session_reader(status: Arc<Mutex<AnnounceStatus>>, config: watch::Receiver<Arc<Config>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SESSIONS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (bird, frr): (Option<PathBuf>, Option<PathBuf>) = match &config.borrow().announce {
                Some(a) => (a.bird_socket.clone(), a.frr_vty_dir.clone()),
                None => (None, None),
            };
            let read = match (bird, frr) {
                (Some(socket), _) => Some(bird::sessions(&socket).await),
                (None, Some(dir)) => Some(frr::sessions(&dir).await),
                (None, None) => None,
            };
            let (sessions, error) = match read {
                None => (Vec::new(), None),
                Some(Ok(sessions)) => (sessions, None),
                Some(Err(e)) => (Vec::new(), Some(format!("{e:#}"))),
            };
            if let Ok(mut status) = status.lock() {
                if error.is_some() && error != status.sessions_error {
                    warn!(
                        "reading the BGP sessions failed: {}",
                        error.as_deref().unwrap_or_default()
                    );
                }
                status.sessions = sessions;
                status.sessions_error = error;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_VIPS: &str = r#"
[node]
name = "edge1"
interfaces = ["eth0"]
tunnel_source_v4 = "10.0.0.1"
tunnel_source_v6 = "2001:db8::1"

[announce]

[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
[[service.backend]]
address = "10.0.0.11"

[[service]]
name = "https"
vip = "192.0.2.10"
port = 443
[[service.backend]]
address = "10.0.0.12"

[[service]]
name = "dns"
vip = "2001:db8::53"
port = 53
protocol = "udp"
[[service.backend]]
address = "2001:db8::11"
"#;

    #[test]
    fn a_vip_is_withdrawn_only_when_every_service_of_it_is_down() {
        let c = crate::config::parse(TWO_VIPS).unwrap();
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::53".parse().unwrap();
        let mut health = Health::default();
        let all_fit = evaluate(&c, &health, &[]);
        assert!(all_fit.values().all(Vec::is_empty), "{all_fit:?}");
        health.set("web", "10.0.0.11".parse().unwrap(), Some("refused".into()));
        assert!(evaluate(&c, &health, &[])[&v4].is_empty(), "https still serves the VIP");
        health.set("https", "10.0.0.12".parse().unwrap(), Some("refused".into()));
        let verdicts = evaluate(&c, &health, &[]);
        assert_eq!(
            verdicts[&v4],
            vec![
                Fault::ServiceDown { service: "web".into() },
                Fault::ServiceDown {
                    service: "https".into()
                }
            ]
        );
        assert!(verdicts[&v6].is_empty());
        // A drained backend still counts: its established flows need the node.
        let mut drained = Health::default();
        drained.set_drained("dns", "2001:db8::11".parse().unwrap(), true);
        assert!(evaluate(&c, &drained, &[])[&v6].is_empty());
        // A node fault withdraws every VIP.
        let node = [Fault::Draining];
        assert!(evaluate(&c, &Health::default(), &node).values().all(|f| f == &node));
    }
}

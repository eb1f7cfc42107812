//! One VRRP instance at work: a task that feeds the [`Election`] with received adverts, its
//! timers and tracked faults, and carries out what it decides: sending adverts, asking the
//! daemon to claim or release the instance's VIPs in the data plane (and waiting until that is
//! done), announcing a takeover with gratuitous ARPs / unsolicited neighbour advertisements,
//! running the notify command, and keeping a [`Status`] for `foobar status`.

use super::{
    election::{Action, Election, Reason, Settings, State},
    gratuitous::{self, FrameSender},
    socket::{self, Received, VrrpSocket},
    Advert, Discard, Ipv4Checksum,
};
use crate::{
    config::{ChecksumConvention, VrrpInstance},
    track::Fault,
};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::{sleep_until, Instant},
};
use tracing::{info, warn};

/// Announcement frames sent at once on takeover, and again after [`ANNOUNCE_REPEAT_AFTER`].
const ANNOUNCE_BURST: usize = 3;
/// When the takeover announcement is repeated (for hosts that missed the first burst).
const ANNOUNCE_REPEAT_AFTER: Duration = Duration::from_secs(1);

/// An instance's configuration, resolved against the interface (source address).
#[derive(Clone, Debug)]
pub struct Spec {
    /// Instance name.
    pub name: String,
    /// Virtual router id.
    pub vrid: u8,
    /// Interface.
    pub interface: String,
    /// Election settings.
    pub settings: Settings,
    /// The VIPs.
    pub vips: Vec<IpAddr>,
    /// Unicast peers (empty: multicast).
    pub peers: Vec<IpAddr>,
    /// IPv4 checksum convention of sent adverts.
    pub checksum: Ipv4Checksum,
    /// Command run on state changes.
    pub notify: Option<PathBuf>,
    /// This node's name (`[node] name`), the notify command's last argument.
    pub node: String,
}

/// A configured time in VRRP's unit (validated: whole centiseconds that fit).
fn centiseconds(time: Duration) -> u16 {
    u16::try_from(time.as_millis() / 10).unwrap_or(u16::MAX)
}

impl Spec {
    /// Resolves a configured instance; the source address defaults to the interface's (waiting
    /// up to 5 s for it: an IPv6 link-local address appears only after the link comes up).
    pub async fn resolve(v: &VrrpInstance, node: &str) -> Result<Self> {
        let interface = v.interface.clone();
        let vips = v.vips.clone();
        let v4 = vips.first().is_none_or(|a| a.is_ipv4());
        let address = match &v.source {
            Some(s) => *s,
            None => {
                let mut attempts = 50;
                loop {
                    match crate::iface::source_address(&interface, v4) {
                        Ok(a) => break a,
                        Err(e) if attempts == 0 => return Err(e),
                        Err(_) => attempts -= 1,
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Ok(Self {
            name: v.name.clone(),
            vrid: v.vrid,
            interface,
            settings: Settings {
                priority: v.priority,
                interval_cs: centiseconds(v.advert_interval),
                max_master_interval_cs: centiseconds(v.max_master_interval),
                preempt: v.preempt,
                preempt_delay_cs: centiseconds(v.preempt_delay),
                address,
            },
            vips,
            peers: v.unicast_peers.clone(),
            checksum: match v.ipv4_checksum {
                ChecksumConvention::PseudoHeader => Ipv4Checksum::PseudoHeader,
                ChecksumConvention::MessageOnly => Ipv4Checksum::MessageOnly,
            },
            notify: v.notify.clone(),
            node: node.to_owned(),
        })
    }
}

/// What `foobar status` shows of one instance.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Instance name.
    pub name: String,
    /// Virtual router id.
    pub vrid: u8,
    /// Interface.
    pub interface: String,
    /// Where the router stands.
    pub state: State,
    /// Our priority.
    pub priority: u8,
    /// Our advert source address.
    pub source: Option<IpAddr>,
    /// The current master as last heard (ourselves while master).
    pub master: Option<IpAddr>,
    /// The master's priority as last heard.
    pub master_priority: Option<u8>,
    /// The master's advertisement interval, ms.
    pub master_interval_ms: u32,
    /// When the state last changed, ms since the Unix epoch.
    pub since_unix_ms: u64,
    /// Why it last changed.
    pub reason: Reason,
    /// Tracked conditions failing now (non-empty: fault).
    pub faults: Vec<Fault>,
    /// State changes since start.
    pub transitions: u64,
    /// Adverts sent.
    pub adverts_sent: u64,
    /// Adverts received and accepted.
    pub adverts_received: u64,
    /// Received packets discarded, by reason.
    pub discards: BTreeMap<String, u64>,
    /// Answers (an advert and gratuitous announcements) to a lower-priority master's adverts
    /// left out: at most one per advertisement interval is sent.
    #[serde(default)]
    pub answers_suppressed: u64,
    /// Notify runs left out: at most [`NOTIFY_BUDGET`] a minute.
    #[serde(default)]
    pub notify_suppressed: u64,
}

impl Status {
    /// The failing tracked conditions as one line (empty when none).
    pub fn faults_text(&self) -> String {
        self.faults.iter().map(Fault::to_string).collect::<Vec<_>>().join("; ")
    }
}

/// A request to the daemon to claim (master) or release an instance's VIPs; `done` is answered
/// once the data plane says so.
#[derive(Debug)]
pub struct Claim {
    /// Index of the instance in the configuration.
    pub instance: usize,
    /// Master (claim) or not (release).
    pub master: bool,
    /// Why: on [`Reason::Shutdown`] the daemon keeps forwarding (the peer takes over).
    pub reason: Reason,
    /// Answered when applied.
    pub done: oneshot::Sender<()>,
}

/// Handles the daemon keeps for one running instance.
pub struct Handle {
    /// The resolved configuration.
    pub spec: Spec,
    /// Live status.
    pub status: Arc<Mutex<Status>>,
    /// Tracked faults (empty: healthy).
    pub faults: watch::Sender<Vec<Fault>>,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<Option<Stop>>,
}

impl Handle {
    /// Opens the instance's sockets and starts its task.
    /// With `resume`, it starts as master: the previous process handed its claim over.
    pub fn start(index: usize, spec: Spec, claims: mpsc::Sender<Claim>, resume: bool) -> Result<Self> {
        let multicast = spec.peers.is_empty();
        let socket = VrrpSocket::open(&spec.interface, spec.settings.address, multicast)
            .with_context(|| format!("vrrp instance {}", spec.name))?;
        let frames = FrameSender::open(&spec.interface)?;
        let (_, mac) = crate::iface::link(&spec.interface)?;
        let link_local = match crate::iface::source_address(&spec.interface, false) {
            Ok(IpAddr::V6(a)) => Some(a),
            _ => None,
        };
        let status = Arc::new(Mutex::new(Status {
            name: spec.name.clone(),
            vrid: spec.vrid,
            interface: spec.interface.clone(),
            state: State::Initialize,
            priority: spec.settings.priority,
            source: Some(spec.settings.address),
            discards: Discard::ALL.iter().map(|d| (d.name().to_string(), 0)).collect(),
            ..Status::default()
        }));
        let (faults, faults_rx) = watch::channel(Vec::new());
        let (stop, stop_rx) = watch::channel(None);
        let runner = Runner {
            index,
            election: Election::new(spec.settings.clone()),
            spec: spec.clone(),
            socket,
            frames,
            mac,
            link_local,
            status: status.clone(),
            claims,
            clock: Instant::now(),
            announce_again: None,
            answers: Pacer::new(1, Duration::from_millis(u64::from(spec.settings.interval_cs) * 10)),
            notifies: Pacer::new(NOTIFY_BUDGET, NOTIFY_WINDOW),
            discard_logs: BTreeMap::new(),
        };
        let task = tokio::spawn(runner.run(resume, faults_rx, stop_rx));
        Ok(Self {
            spec,
            status,
            faults,
            task,
            stop,
        })
    }

    /// Asks the instance to stop: as [`Stop`] says.
    pub fn request_stop(&self, how: Stop) {
        let _ = self.stop.send(Some(how));
    }

    /// Waits until the instance's task has ended.
    pub async fn finished(self) {
        if let Err(e) = self.task.await {
            warn!(instance = self.spec.name, "vrrp task ended abnormally: {e}");
        }
    }
}

/// How an instance stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// For good: a master sends its priority-0 advert and releases its VIPs.
    Release,
    /// For a restart: a master advertises once more and keeps its claim for the next process.
    HandOver,
}

/// Notify runs allowed per [`NOTIFY_WINDOW`]; a flapping instance runs no more.
pub const NOTIFY_BUDGET: u32 = 10;
/// The window of [`NOTIFY_BUDGET`].
const NOTIFY_WINDOW: Duration = Duration::from_secs(60);
/// A discard reason is logged at most once per this long (every discard is counted).
const DISCARD_LOG_EVERY: Duration = Duration::from_secs(10);

/// Allows an event at most `budget` times per `window`.
#[derive(Debug)]
struct Pacer {
    budget: u32,
    window: Duration,
    started: Option<Instant>,
    used: u32,
}

impl Pacer {
    fn new(budget: u32, window: Duration) -> Self {
        Self {
            budget,
            window,
            started: None,
            used: 0,
        }
    }

    /// Whether one more event may happen at `now`.
    fn allow(&mut self, now: Instant) -> bool {
        if self.started.is_none_or(|s| now.duration_since(s) >= self.window) {
            self.started = Some(now);
            self.used = 0;
        }
        self.used += 1;
        self.used <= self.budget
    }
}

struct Runner {
    index: usize,
    spec: Spec,
    election: Election,
    socket: VrrpSocket,
    frames: FrameSender,
    mac: [u8; 6],
    link_local: Option<Ipv6Addr>,
    status: Arc<Mutex<Status>>,
    claims: mpsc::Sender<Claim>,
    clock: Instant,
    /// When the takeover announcement is due again.
    announce_again: Option<Instant>,
    /// Answers to a lower-priority master: one per advertisement interval.
    answers: Pacer,
    /// Notify runs.
    notifies: Pacer,
    /// Discard log lines, by reason.
    discard_logs: BTreeMap<&'static str, Pacer>,
}

impl Runner {
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    async fn run(
        mut self,
        resume: bool,
        mut faults: watch::Receiver<Vec<Fault>>,
        mut stop: watch::Receiver<Option<Stop>>,
    ) {
        let actions = if resume {
            self.election.resume(self.now_ms())
        } else {
            self.election.start(self.now_ms())
        };
        self.apply(actions).await;
        let far = Duration::from_secs(3600);
        loop {
            let due = match self.election.deadline_ms() {
                Some(ms) => self.clock + Duration::from_millis(ms),
                None => Instant::now() + far,
            };
            let announce_due = self.announce_again.unwrap_or_else(|| Instant::now() + far);
            let actions = tokio::select! {
                _ = sleep_until(due) => self.election.on_timer(self.now_ms()),
                _ = sleep_until(announce_due) => {
                    self.announce_again = None;
                    self.announce();
                    Vec::new()
                }
                received = self.socket.recv() => match received {
                    Ok(packet) => self.on_packet(packet),
                    Err(e) => {
                        warn!(instance = self.spec.name, "{e:#}");
                        Vec::new()
                    }
                },
                changed = faults.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = faults.borrow_and_update().clone();
                    if !now.is_empty() {
                        warn!(instance = self.spec.name, faults = ?now, "tracked condition failed");
                    }
                    self.lock_status().faults = now.clone();
                    self.election.set_fault(self.now_ms(), !now.is_empty())
                }
                _ = stop.changed() => break,
            };
            self.apply(actions).await;
        }
        let actions = match *stop.borrow() {
            Some(Stop::HandOver) => self.election.hand_over(),
            _ => self.election.shutdown(),
        };
        self.apply(actions).await;
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks a received packet; an accepted advert goes to the election.
    fn on_packet(&mut self, packet: Received) -> Vec<Action> {
        if packet.src == self.spec.settings.address {
            return Vec::new(); // our own advert, looped back by a bridge or a peer list
        }
        let verdict = Advert::decode(&packet.message, packet.ttl, packet.src, packet.dst).and_then(|(advert, _)| {
            if advert.vrid != self.spec.vrid {
                return Err(Discard::Vrid);
            }
            if !self.spec.peers.is_empty() && !self.spec.peers.contains(&packet.src) {
                return Err(Discard::UnknownPeer);
            }
            let theirs: HashSet<&IpAddr> = advert.addresses.iter().collect();
            let ours: HashSet<&IpAddr> = self.spec.vips.iter().collect();
            if theirs != ours {
                return Err(Discard::AddressMismatch);
            }
            Ok(advert)
        });
        let advert = match verdict {
            Ok(advert) => advert,
            Err(reason) => {
                // Adverts of other routers on a shared link are normal; the rest is worth a look,
                // once in a while (a flood of them is counted, not logged line by line).
                let log = self
                    .discard_logs
                    .entry(reason.name())
                    .or_insert_with(|| Pacer::new(1, DISCARD_LOG_EVERY))
                    .allow(Instant::now());
                if reason != Discard::Vrid && log {
                    warn!(instance = self.spec.name, from = %packet.src, reason = reason.name(), "discarded a VRRP packet (more of this kind within 10 s are counted, not logged)");
                }
                *self.lock_status().discards.entry(reason.name().into()).or_default() += 1;
                return Vec::new();
            }
        };
        let mut actions = self.election.on_advert(self.now_ms(), packet.src, &advert);
        // A master answers another master's adverts (an advert and announcements) at most once
        // per interval: each forged lower-priority advert would otherwise cost a burst.
        let answer = actions.contains(&Action::Announce) && self.election.state() == State::Master;
        let suppressed = answer && !self.answers.allow(Instant::now());
        if suppressed {
            actions.clear();
        }
        let mut status = self.lock_status();
        status.adverts_received += 1;
        status.answers_suppressed += u64::from(suppressed);
        if advert.priority > 0 && self.election.state() == State::Backup {
            status.master = Some(packet.src);
            status.master_priority = Some(advert.priority);
            status.master_interval_ms = advert.interval_cs as u32 * 10;
        }
        actions
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Advertise(priority) => self.advertise(priority),
                Action::BecomeMaster(reason) => {
                    self.claim(true, reason).await;
                    self.announce();
                    self.announce_again = Some(Instant::now() + ANNOUNCE_REPEAT_AFTER);
                    self.transition(State::Master, reason);
                }
                Action::Announce => self.announce(),
                Action::BecomeBackup(reason) => {
                    self.announce_again = None;
                    self.claim(false, reason).await;
                    let state = match self.election.state() {
                        State::Fault => State::Fault,
                        _ if reason == Reason::Shutdown => State::Initialize,
                        _ => State::Backup,
                    };
                    self.transition(state, reason);
                }
            }
        }
    }

    fn advertise(&mut self, priority: u8) {
        let advert = Advert {
            vrid: self.spec.vrid,
            priority,
            interval_cs: self.spec.settings.interval_cs,
            addresses: self.spec.vips.clone(),
        };
        let source = self.socket.source();
        let group = [socket::group_for(source)];
        let targets: &[IpAddr] = if self.spec.peers.is_empty() {
            &group
        } else {
            &self.spec.peers
        };
        let mut sent = 0;
        for dst in targets {
            let message = advert.encode(source, *dst, self.spec.checksum);
            match self.socket.send(&message, *dst) {
                Ok(()) => sent += 1,
                Err(e) => warn!(instance = self.spec.name, "{e:#}"),
            }
        }
        self.lock_status().adverts_sent += sent;
    }

    /// Asks the daemon to claim or release the VIPs and waits until the data plane is set.
    async fn claim(&mut self, master: bool, reason: Reason) {
        let (done, applied) = oneshot::channel();
        let claim = Claim {
            instance: self.index,
            master,
            reason,
            done,
        };
        if self.claims.send(claim).await.is_ok() {
            let _ = applied.await;
        }
    }

    fn announce(&self) {
        for frame in gratuitous::frames(self.mac, self.link_local, &self.spec.vips) {
            for _ in 0..ANNOUNCE_BURST {
                if let Err(e) = self.frames.send(&frame) {
                    warn!(instance = self.spec.name, "{e:#}");
                }
            }
        }
    }

    fn transition(&mut self, state: State, reason: Reason) {
        let since_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        {
            let mut status = self.lock_status();
            status.state = state;
            status.reason = reason;
            status.since_unix_ms = since_unix_ms;
            status.transitions += 1;
            if state == State::Master {
                status.master = Some(self.spec.settings.address);
                status.master_priority = Some(self.spec.settings.priority);
                status.master_interval_ms = self.spec.settings.interval_cs as u32 * 10;
            } else if status.master == Some(self.spec.settings.address) {
                // No longer master: who is, is known again at the next advert heard.
                status.master = None;
                status.master_priority = None;
            }
        }
        info!(
            instance = self.spec.name,
            state = state.name(),
            reason = reason.name(),
            "vrrp state changed"
        );
        if let Some(command) = &self.spec.notify {
            if !self.notifies.allow(Instant::now()) {
                self.lock_status().notify_suppressed += 1;
                warn!(
                    instance = self.spec.name,
                    "notify command not run: more than {NOTIFY_BUDGET} state changes within a minute"
                );
                return;
            }
            let mut cmd = tokio::process::Command::new(command);
            cmd.args([
                self.spec.name.as_str(),
                state.name(),
                reason.name(),
                self.spec.node.as_str(),
            ]);
            let name = self.spec.name.clone();
            tokio::spawn(async move {
                match cmd.status().await {
                    Ok(s) if s.success() => {}
                    Ok(s) => warn!(instance = name, "notify command exited with {s}"),
                    Err(e) => warn!(instance = name, "notify command failed to start: {e}"),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pacer_allows_its_budget_per_window() {
        let start = Instant::now();
        let mut p = Pacer::new(2, Duration::from_secs(1));
        assert!(p.allow(start));
        assert!(p.allow(start + Duration::from_millis(10)));
        assert!(!p.allow(start + Duration::from_millis(20)), "over the budget");
        assert!(p.allow(start + Duration::from_millis(1010)), "a new window");
    }
}

//! The VRRPv3 election of one virtual router (RFC 5798 §6.4, with RFC 9568's preemption
//! delay), without I/O: the caller feeds events with the current time in milliseconds and
//! carries out the returned actions (send an advert, claim or release the VIPs). Time is an
//! argument, so every transition is tested exactly.

use super::Advert;
use std::net::IpAddr;

/// Settings of one virtual router on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Our priority (1..=255; 255 means we own the addresses).
    pub priority: u8,
    /// Our advertisement interval, centiseconds.
    pub interval_cs: u16,
    /// The longest master advertisement interval adopted as a backup, centiseconds.
    pub max_master_interval_cs: u16,
    /// Whether a higher-priority backup takes over from a lower-priority master.
    pub preempt: bool,
    /// After start, how long a higher-priority backup waits before preempting, centiseconds.
    pub preempt_delay_cs: u16,
    /// Our primary address on the link (breaks priority ties: the higher address wins).
    pub address: IpAddr,
}

/// Where the router stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not started, or stopped.
    #[default]
    Initialize,
    /// Listening to a master.
    Backup,
    /// Owning the VIPs and advertising.
    Master,
    /// A tracked condition failed: silent, never master, until it clears.
    Fault,
}

impl State {
    /// Every state, in the order metrics list them.
    pub const ALL: [State; 4] = [State::Initialize, State::Backup, State::Master, State::Fault];

    /// Stable lowercase name, for status, metrics and notify commands (as serialised).
    pub const fn name(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
}

/// Why the state last changed (shown by `foobar status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Started as the address owner (priority 255).
    OwnerStart,
    /// Started, waiting to hear from a master.
    #[default]
    Start,
    /// No advert within Master_Down_Interval.
    MasterDown,
    /// The master announced it is stopping (priority 0).
    MasterStopped,
    /// An advert with a higher priority (or equal priority and higher address) arrived.
    Superseded,
    /// This node stopped.
    Shutdown,
    /// A tracked condition failed (interface down, program detached, tracked service down).
    Fault,
    /// Every tracked condition is fine again.
    FaultCleared,
    /// Started as master: the previous process held the claim and no backup can have taken
    /// over yet (it handed the claim over on a restart, or was restarted at once after dying).
    Resumed,
}

impl Reason {
    /// Stable snake_case name, for status and logs (as serialised).
    pub const fn name(self) -> &'static str {
        match self {
            Reason::OwnerStart => "owner_start",
            Reason::Start => "start",
            Reason::MasterDown => "master_down",
            Reason::MasterStopped => "master_stopped",
            Reason::Superseded => "superseded",
            Reason::Shutdown => "shutdown",
            Reason::Fault => "fault",
            Reason::FaultCleared => "fault_cleared",
            Reason::Resumed => "resumed",
        }
    }
}

#[cfg(test)]
mod names {
    use super::{Reason, State};

    #[test]
    fn serialised_names_are_the_names_shown() {
        for state in State::ALL {
            assert_eq!(
                serde_json::to_string(&state).ok(),
                Some(format!("\"{}\"", state.name()))
            );
        }
        for reason in [Reason::OwnerStart, Reason::MasterDown, Reason::FaultCleared] {
            assert_eq!(
                serde_json::to_string(&reason).ok(),
                Some(format!("\"{}\"", reason.name()))
            );
        }
    }
}

/// What the caller must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send an advert with this priority (0 when stopping).
    Advertise(u8),
    /// Become master: claim the VIPs (forward, answer ARP/ND, send gratuitous ARPs).
    BecomeMaster(Reason),
    /// Become backup: release the VIPs.
    BecomeBackup(Reason),
    /// Announce the VIPs again (gratuitous ARP / unsolicited NA): another master was heard, so
    /// hosts may have followed it.
    Announce,
}

/// One virtual router's election state.
#[derive(Clone, Debug)]
pub struct Election {
    settings: Settings,
    state: State,
    /// The interval the current master advertises (ours while we are master), centiseconds.
    master_interval_cs: u16,
    /// When the advert timer (master) or the master-down timer (backup) fires, ms.
    deadline_ms: u64,
    /// When preemption becomes allowed, ms.
    preempt_after_ms: u64,
}

impl Election {
    /// A router in Initialize.
    pub fn new(settings: Settings) -> Self {
        let master_interval_cs = settings.interval_cs;
        Self {
            settings,
            state: State::Initialize,
            master_interval_cs,
            deadline_ms: 0,
            preempt_after_ms: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The master's advertisement interval as last heard (ours as master), centiseconds.
    pub fn master_interval_cs(&self) -> u16 {
        self.master_interval_cs
    }

    /// When [`Election::on_timer`] is due next, ms (None in Initialize and Fault).
    pub fn deadline_ms(&self) -> Option<u64> {
        matches!(self.state, State::Backup | State::Master).then_some(self.deadline_ms)
    }

    fn skew_ms(&self) -> u64 {
        super::skew_time_cs(self.settings.priority, self.master_interval_cs) as u64 * 10
    }

    fn master_down_ms(&self) -> u64 {
        super::master_down_interval_cs(self.settings.priority, self.master_interval_cs) as u64 * 10
    }

    fn become_master(&mut self, now_ms: u64, reason: Reason) -> Vec<Action> {
        self.state = State::Master;
        self.master_interval_cs = self.settings.interval_cs;
        self.deadline_ms = now_ms + self.settings.interval_cs as u64 * 10;
        vec![Action::Advertise(self.settings.priority), Action::BecomeMaster(reason)]
    }

    fn become_backup(&mut self, now_ms: u64, master_interval_cs: u16, reason: Reason) -> Vec<Action> {
        self.state = State::Backup;
        self.master_interval_cs = master_interval_cs;
        self.deadline_ms = now_ms + self.master_down_ms();
        vec![Action::BecomeBackup(reason)]
    }

    /// Starts the router.
    pub fn start(&mut self, now_ms: u64) -> Vec<Action> {
        self.preempt_after_ms = now_ms + self.settings.preempt_delay_cs as u64 * 10;
        if self.settings.priority == 255 {
            return self.become_master(now_ms, Reason::OwnerStart);
        }
        self.become_backup(now_ms, self.settings.interval_cs, Reason::Start)
    }

    /// Starts the router as the master the previous process was: it handed over on a restart,
    /// within the time a backup waits before taking over.
    pub fn resume(&mut self, now_ms: u64) -> Vec<Action> {
        self.preempt_after_ms = now_ms + self.settings.preempt_delay_cs as u64 * 10;
        self.become_master(now_ms, Reason::Resumed)
    }

    /// Stops the router for a restart: a master advertises once more, so the backups' wait
    /// starts afresh, and keeps its claim for the next process (no priority-0 advert).
    pub fn hand_over(&mut self) -> Vec<Action> {
        let was = self.state;
        self.state = State::Initialize;
        match was {
            State::Master => vec![Action::Advertise(self.settings.priority)],
            _ => Vec::new(),
        }
    }

    /// Stops the router: a master says so with a priority-0 advert, so a backup takes over
    /// after its skew time instead of the whole master-down interval.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let was = self.state;
        self.state = State::Initialize;
        match was {
            State::Master => vec![Action::Advertise(0), Action::BecomeBackup(Reason::Shutdown)],
            _ => Vec::new(),
        }
    }

    /// A tracked condition failed (`true`) or every one is fine again (`false`). A faulty
    /// master steps down with a priority-0 advert so the peer takes over at once; a faulty node
    /// stays silent and never becomes master until the fault clears, then starts as a backup.
    pub fn set_fault(&mut self, now_ms: u64, fault: bool) -> Vec<Action> {
        match (self.state, fault) {
            (State::Initialize, _) | (State::Fault, true) => Vec::new(),
            (State::Fault, false) => self.become_backup(now_ms, self.settings.interval_cs, Reason::FaultCleared),
            (_, false) => Vec::new(),
            (was, true) => {
                self.state = State::Fault;
                let mut actions = Vec::new();
                if was == State::Master {
                    actions.push(Action::Advertise(0));
                }
                actions.push(Action::BecomeBackup(Reason::Fault));
                actions
            }
        }
    }

    /// The advert or master-down timer, when `now_ms` has reached [`Election::deadline_ms`].
    pub fn on_timer(&mut self, now_ms: u64) -> Vec<Action> {
        if now_ms < self.deadline_ms {
            return Vec::new();
        }
        match self.state {
            State::Master => {
                self.deadline_ms = now_ms + self.settings.interval_cs as u64 * 10;
                vec![Action::Advertise(self.settings.priority)]
            }
            State::Backup => self.become_master(now_ms, Reason::MasterDown),
            State::Initialize | State::Fault => Vec::new(),
        }
    }

    /// An advert for this router that passed the message checks, from `from`.
    pub fn on_advert(&mut self, now_ms: u64, from: IpAddr, advert: &Advert) -> Vec<Action> {
        let ours = self.settings.priority;
        match self.state {
            State::Initialize | State::Fault => Vec::new(),
            State::Backup => {
                if advert.priority == 0 {
                    self.deadline_ms = now_ms + self.skew_ms();
                    return vec![];
                }
                let may_preempt = self.settings.preempt && now_ms >= self.preempt_after_ms;
                if !may_preempt || advert.priority >= ours {
                    self.master_interval_cs = advert.interval_cs.min(self.settings.max_master_interval_cs);
                    self.deadline_ms = now_ms + self.master_down_ms();
                }
                Vec::new()
            }
            State::Master => {
                if advert.priority == 0 {
                    self.deadline_ms = now_ms + self.settings.interval_cs as u64 * 10;
                    return vec![Action::Advertise(ours)];
                }
                let superseded = advert.priority > ours || (advert.priority == ours && from > self.settings.address);
                if superseded {
                    // One last advert with our priority first: a winner that has not heard us
                    // (a healed split brain) learns there were two masters and announces the
                    // VIPs again, so hosts that followed us move back at once.
                    let mut actions = vec![Action::Advertise(ours)];
                    let interval_cs = advert.interval_cs.min(self.settings.max_master_interval_cs);
                    actions.extend(self.become_backup(now_ms, interval_cs, Reason::Superseded));
                    return actions;
                }
                // Two masters (a healed split brain, or a peer that just started): the RFC
                // discards the loser's advert; like keepalived, answer it at once so the peer
                // steps down now, and announce the VIPs again, since hosts may have followed
                // the other master's announcements. The regular adverts keep their rhythm (an
                // answer the caller leaves out, when paced, must not delay them).
                vec![Action::Advertise(ours), Action::Announce]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(priority: u8, preempt: bool, delay_cs: u16) -> Settings {
        Settings {
            priority,
            interval_cs: 10,
            max_master_interval_cs: 100,
            preempt,
            preempt_delay_cs: delay_cs,
            address: "10.0.0.1".parse().expect("address"),
        }
    }

    fn advert(priority: u8, interval_cs: u16) -> Advert {
        Advert {
            vrid: 1,
            priority,
            interval_cs,
            addresses: vec!["192.0.2.10".parse().expect("vip")],
        }
    }

    fn peer() -> IpAddr {
        "10.0.0.2".parse().expect("peer")
    }

    #[test]
    fn owner_starts_as_master_others_as_backup() {
        let mut owner = Election::new(settings(255, true, 0));
        assert_eq!(
            owner.start(0),
            vec![Action::Advertise(255), Action::BecomeMaster(Reason::OwnerStart)]
        );
        let mut backup = Election::new(settings(100, true, 0));
        assert_eq!(backup.start(0), vec![Action::BecomeBackup(Reason::Start)]);
        assert_eq!(backup.state(), State::Backup);
    }

    #[test]
    fn backup_takes_over_after_master_down_interval() {
        let mut e = Election::new(settings(100, true, 0));
        e.start(0);
        // 3 x 100 ms + skew ((256 - 100) x 10 / 256 = 6 cs) = 360 ms.
        assert_eq!(e.deadline_ms(), Some(360));
        assert!(e.on_timer(359).is_empty());
        assert_eq!(
            e.on_timer(360),
            vec![Action::Advertise(100), Action::BecomeMaster(Reason::MasterDown)]
        );
        // Then it advertises every interval.
        assert!(e.on_timer(459).is_empty());
        assert_eq!(e.on_timer(460), vec![Action::Advertise(100)]);
    }

    #[test]
    fn adverts_keep_a_backup_down_and_it_adopts_the_masters_interval() {
        let mut e = Election::new(settings(100, true, 0));
        e.start(0);
        e.on_advert(300, peer(), &advert(200, 100));
        assert_eq!(e.master_interval_cs(), 100);
        // 3 x 1 s + (156 x 100 / 256 = 60 cs) after the advert.
        assert_eq!(e.deadline_ms(), Some(300 + 3600));
        assert!(e.on_timer(3899).is_empty());
    }

    #[test]
    fn a_longer_advertised_interval_is_adopted_only_up_to_the_ceiling() {
        // A forged advert claiming 40.95 s would leave the VIP dark for two minutes after the
        // master dies; the backup keeps its ceiling (here 1 s) instead.
        let mut e = Election::new(settings(100, true, 0));
        e.start(0);
        e.on_advert(300, peer(), &advert(200, 4095));
        assert_eq!(e.master_interval_cs(), 100);
        assert_eq!(e.deadline_ms(), Some(300 + 3600));
        // A master superseded by such an advert likewise.
        let mut m = Election::new(settings(100, true, 0));
        m.start(0);
        m.on_timer(400);
        assert_eq!(m.state(), State::Master);
        m.on_advert(500, peer(), &advert(200, 4095));
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.master_interval_cs(), 100);
    }

    #[test]
    fn priority_zero_means_take_over_after_skew() {
        let mut e = Election::new(settings(100, true, 0));
        e.start(0);
        e.on_advert(100, peer(), &advert(200, 10));
        e.on_advert(150, peer(), &advert(0, 10));
        assert_eq!(e.deadline_ms(), Some(150 + 60));
        assert_eq!(e.on_timer(210)[1], Action::BecomeMaster(Reason::MasterDown));
    }

    #[test]
    fn master_yields_to_higher_priority_and_to_higher_address_on_ties() {
        let mut e = Election::new(settings(100, true, 0));
        e.start(0);
        e.on_timer(360);
        assert_eq!(
            e.on_advert(400, peer(), &advert(50, 10)),
            vec![Action::Advertise(100), Action::Announce],
            "a lower-priority master is answered at once and the VIPs announced again"
        );
        assert_eq!(
            e.on_advert(410, peer(), &advert(100, 10)),
            vec![Action::Advertise(100), Action::BecomeBackup(Reason::Superseded)]
        );
        let mut e = Election::new(settings(100, true, 0));
        e.start(0);
        e.on_timer(360);
        let lower: IpAddr = "10.0.0.0".parse().expect("address");
        assert_eq!(
            e.on_advert(400, lower, &advert(100, 10)),
            vec![Action::Advertise(100), Action::Announce],
            "a lower address loses the tie"
        );
        assert_eq!(
            e.on_advert(410, peer(), &advert(150, 10)),
            vec![Action::Advertise(100), Action::BecomeBackup(Reason::Superseded)]
        );
        // A priority-0 advert from a stopping peer is answered at once.
        let mut e = Election::new(settings(100, true, 0));
        e.start(0);
        e.on_timer(360);
        assert_eq!(e.on_advert(400, peer(), &advert(0, 10)), vec![Action::Advertise(100)]);
    }

    #[test]
    fn preemption_on_off_and_delayed() {
        // Preempt on: lower-priority adverts do not hold a higher-priority backup down.
        let mut e = Election::new(settings(200, true, 0));
        e.start(0);
        e.on_advert(100, peer(), &advert(100, 10));
        assert_eq!(
            e.on_timer(e.deadline_ms().expect("deadline"))[1],
            Action::BecomeMaster(Reason::MasterDown)
        );
        assert!(
            e.deadline_ms().expect("deadline") < 100 + 400,
            "it did not wait for the lower master"
        );
        // Preempt off: the lower-priority master keeps the VIPs.
        let mut e = Election::new(settings(200, false, 0));
        e.start(0);
        for t in (0..2000).step_by(100) {
            e.on_advert(t, peer(), &advert(100, 10));
            assert!(e.on_timer(t).is_empty());
        }
        assert_eq!(e.state(), State::Backup);
        // Preempt delay of 1 s: lower-priority adverts hold it down until then.
        let mut e = Election::new(settings(200, true, 100));
        e.start(0);
        for t in (0..1000).step_by(100) {
            e.on_advert(t, peer(), &advert(100, 10));
            assert!(e.on_timer(t).is_empty(), "preempted at {t} ms, before the delay");
        }
        e.on_advert(1000, peer(), &advert(100, 10));
        let due = e.deadline_ms().expect("deadline");
        assert_eq!(e.on_timer(due)[1], Action::BecomeMaster(Reason::MasterDown));
    }

    #[test]
    fn a_fault_steps_down_and_keeps_the_node_silent_until_it_clears() {
        let mut e = Election::new(settings(200, true, 0));
        e.start(0);
        e.on_timer(e.deadline_ms().expect("deadline"));
        assert_eq!(e.state(), State::Master);
        assert_eq!(
            e.set_fault(1000, true),
            vec![Action::Advertise(0), Action::BecomeBackup(Reason::Fault)]
        );
        assert_eq!(e.deadline_ms(), None);
        assert!(e.on_timer(100_000).is_empty(), "a faulty node never takes over");
        assert!(e.on_advert(2000, peer(), &advert(100, 10)).is_empty());
        assert!(e.set_fault(2000, true).is_empty());
        assert_eq!(
            e.set_fault(3000, false),
            vec![Action::BecomeBackup(Reason::FaultCleared)]
        );
        // Back as a backup with the full master-down interval: 3 x 100 ms + 20 ms skew.
        assert_eq!(e.deadline_ms(), Some(3000 + 320));
        assert!(e.set_fault(3000, false).is_empty());
    }

    #[test]
    fn graceful_stop_sends_priority_zero() {
        let mut e = Election::new(settings(100, true, 0));
        e.start(0);
        e.on_timer(360);
        assert_eq!(
            e.shutdown(),
            vec![Action::Advertise(0), Action::BecomeBackup(Reason::Shutdown)]
        );
        assert_eq!(e.state(), State::Initialize);
        assert_eq!(e.deadline_ms(), None);
        let mut backup = Election::new(settings(100, true, 0));
        backup.start(0);
        assert!(backup.shutdown().is_empty());
    }

    #[test]
    fn a_restart_hands_the_claim_over_and_the_next_process_resumes_it() {
        let mut e = Election::new(settings(100, true, 0));
        e.start(0);
        e.on_timer(360);
        // One more advert at the old priority (the backups' wait starts afresh), no release.
        assert_eq!(e.hand_over(), vec![Action::Advertise(100)]);
        assert_eq!((e.state(), e.deadline_ms()), (State::Initialize, None));
        let mut next = Election::new(settings(100, true, 0));
        assert_eq!(
            next.resume(1000),
            vec![Action::Advertise(100), Action::BecomeMaster(Reason::Resumed)]
        );
        assert_eq!((next.state(), next.deadline_ms()), (State::Master, Some(1100)));
        let mut backup = Election::new(settings(100, true, 0));
        backup.start(0);
        assert!(backup.hand_over().is_empty(), "a backup leaves nothing to hand over");
    }
}

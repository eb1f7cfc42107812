//! The configuration file's own tree: what serde decodes, with the place of every value that
//! a problem can be reported at, and the checks that need those places. Nothing outside
//! `config` sees it: [`super::lower`] turns a tree with no problems into the domain values
//! the rest of the program runs on.

pub mod announce;
pub mod database;
pub mod monitoring;
pub mod web;

use super::{CheckKind, ChecksumConvention, Forwarding, Protocol, XdpMode};
use crate::maglev;
use serde::Deserialize;
use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    ops::Range,
    path::PathBuf,
};
use toml::Spanned;

/// The whole file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node.
    pub node: Node,
    /// Data-plane sizing and policy.
    #[serde(default)]
    pub dataplane: Dataplane,
    /// VIP services.
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    /// VRRP instances electing which edge owns the VIPs; none (and no `[announce]`) means this
    /// node always owns them.
    #[serde(default)]
    pub vrrp: Vec<VrrpInstance>,
    /// VIP ownership by route announcement through the host's BGP daemon (every edge active);
    /// excludes `[[vrrp]]`.
    pub announce: Option<Spanned<announce::Announce>>,
    /// The web tier; none means this node serves no HTTP.
    pub web: Option<web::Web>,
    /// Database clusters routed by this node.
    #[serde(default, rename = "database")]
    pub databases: Vec<database::Database>,
    /// Metrics, the status page and the push exporter; none means no management listener.
    pub monitoring: Option<monitoring::Monitoring>,
}

/// The `[node]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Node name, used in logs and metrics.
    pub name: String,
    /// Interfaces the XDP program is attached to.
    pub interfaces: Spanned<Vec<String>>,
    /// How to attach: native (driver) mode, falling back to generic with a warning (`auto`,
    /// the default), or only `native` / only `generic`.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// This node's own addresses: backends with one of them are delivered locally, and
    /// IPIP packets addressed to them are decapsulated.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// The only sources whose IPIP / IPv6-in-IPv6 packets to `addresses` are decapsulated (the
    /// edges, on a backend; the other edges, on an edge that is a backend of its peers); tunnel
    /// packets from anyone else are dropped and counted.
    #[serde(default)]
    pub tunnel_peers: Vec<IpAddr>,
    /// Outer source address of IPv4 tunnels (required when an IPv4 backend is reached by IPIP).
    pub tunnel_source_v4: Option<Spanned<IpAddr>>,
    /// Outer source address of IPv6 tunnels (required when an IPv6 backend is reached by IPIP).
    pub tunnel_source_v6: Option<Spanned<IpAddr>>,
    /// bpffs directory for pinned maps and links; a layout-version subdirectory is added.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Unix socket `foobar status` reads the running state from.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// The user to run as once the program is attached and every socket is open (unset: stay
    /// root). The thread that writes the maps keeps only the capabilities it needs; the
    /// threads that serve clients keep none.
    pub user: Option<Spanned<String>>,
}

/// The `[dataplane]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Dataplane {
    /// Maglev table size M (prime, >= 100 x the largest backend count).
    pub maglev_table_size: Spanned<u32>,
    /// Seed of the Maglev permutations; equal on both edges so they pick the same backends.
    pub maglev_seed: u64,
    /// Connection-table capacity for IPv4 flows.
    pub conntrack_entries: Spanned<u32>,
    /// Connection-table capacity for IPv6 flows.
    pub conntrack_entries_v6: Spanned<u32>,
    /// New connection-table inserts allowed per CPU per second (0 = unlimited).
    pub new_flow_cap: u32,
    /// Capacity of the service table.
    pub max_services: Spanned<u32>,
    /// Capacity of the backend table (all services together).
    pub max_backends: Spanned<u32>,
    /// Capacity of the source-policy table (allow and deny prefixes of all services).
    pub max_source_prefixes: Spanned<u32>,
}

impl Default for Dataplane {
    fn default() -> Self {
        Self {
            maglev_table_size: Spanned::new(0..0, maglev::DEFAULT_TABLE_SIZE),
            maglev_seed: 0,
            conntrack_entries: Spanned::new(0..0, 262_144),
            conntrack_entries_v6: Spanned::new(0..0, 65_536),
            new_flow_cap: 125_000,
            max_services: Spanned::new(0..0, 64),
            max_backends: Spanned::new(0..0, 4096),
            max_source_prefixes: Spanned::new(0..0, 65_536),
        }
    }
}

/// One `[[service]]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name, unique in the file.
    pub name: Spanned<String>,
    /// The VIP.
    pub vip: Spanned<IpAddr>,
    /// Port; 0 means every port of the protocol.
    pub port: u16,
    /// Protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// How packets reach remote backends.
    #[serde(default)]
    pub forwarding: Forwarding,
    /// Health check applied to every backend.
    #[serde(default)]
    pub health: HealthCheck,
    /// Sources (`ADDRESS/LENGTH` prefixes of the VIP's family) whose new flows are let through;
    /// with any, a source no prefix covers is dropped.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Sources whose new flows are dropped; the longest prefix covering a source decides.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Backends.
    #[serde(default, rename = "backend")]
    pub backends: Vec<Backend>,
}

/// One `[[service.backend]]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Backend address.
    pub address: Spanned<IpAddr>,
    /// Relative weight; 0 drains (no new flows, established ones stay).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// Active health check settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// What to check.
    pub kind: CheckKind,
    /// Port to check; defaults to the service port.
    pub port: Option<u16>,
    /// HTTP path.
    pub path: String,
    /// HTTP status that means healthy.
    pub expect_status: u16,
    /// Milliseconds between checks.
    pub interval_ms: u64,
    /// Milliseconds before a check counts as failed.
    pub timeout_ms: u64,
    /// Consecutive successes that make a down backend up.
    pub rise: u32,
    /// Consecutive failures that make an up backend down.
    pub fall: u32,
    /// MySQL checks: the file with the user and password to log in with (as `[[database]]`
    /// credentials).
    pub credentials: Option<PathBuf>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            port: None,
            path: "/".into(),
            expect_status: 200,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
            credentials: None,
        }
    }
}

/// One `[[vrrp]]` instance: a VRRPv3 virtual router on one interface, for one address family.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VrrpInstance {
    /// Name, unique in the file (status, logs, notify).
    pub name: Spanned<String>,
    /// Virtual router id, 1..=255, equal on both edges.
    pub vrid: Spanned<u8>,
    /// Interface the adverts travel on and the VIPs are claimed on.
    pub interface: Spanned<String>,
    /// Priority 1..=255 (255: this node owns the addresses and starts as master).
    pub priority: Spanned<u8>,
    /// Advertisement interval in milliseconds: a multiple of 10 in 10..=40950.
    #[serde(default = "default_advert_interval_ms")]
    pub advert_interval_ms: Spanned<u32>,
    /// The longest advertisement interval a backup adopts from a master, ms (a multiple of 10
    /// in 10..=40950; default: `advert_interval_ms`). A forged advert with a long interval
    /// cannot stretch the takeover past this; raise it for a peer that advertises more slowly.
    pub max_master_interval_ms: Option<Spanned<u32>>,
    /// Whether a higher-priority backup takes over from a lower-priority master.
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// After start, how long before this node may preempt, ms (multiple of 10, <= 655350).
    #[serde(default = "default_preempt_delay_ms")]
    pub preempt_delay_ms: Spanned<u32>,
    /// Peers to send adverts to by unicast; empty means multicast to 224.0.0.18 / ff02::12.
    #[serde(default)]
    pub unicast_peers: Vec<Spanned<IpAddr>>,
    /// Source address of the adverts; defaults to the interface's first address of the family
    /// (the link-local one for IPv6).
    pub source: Option<Spanned<IpAddr>>,
    /// The VIPs this router claims, all of one family; each service VIP belongs to exactly one
    /// instance.
    pub vips: Spanned<Vec<IpAddr>>,
    /// Services whose backends all being down puts this node in fault (it steps down).
    #[serde(default)]
    pub track_services: Vec<Spanned<String>>,
    /// IPv4 advert checksum convention the peer expects.
    #[serde(default)]
    pub ipv4_checksum: ChecksumConvention,
    /// Command run on every state change, with arguments: instance name, new state, reason.
    pub notify: Option<PathBuf>,
}

impl HealthCheck {
    /// The domain value.
    pub(super) fn lower(&self) -> super::HealthCheck {
        super::HealthCheck {
            kind: self.kind,
            port: self.port,
            path: self.path.clone(),
            expect_status: self.expect_status,
            timing: timing(self.interval_ms, self.timeout_ms, self.rise, self.fall),
            credentials: self.credentials.clone(),
        }
    }

    /// Whether its interval, timeout, rise and fall are all positive.
    fn timing_is_positive(&self) -> bool {
        timing_is_positive(self.interval_ms, self.timeout_ms, self.rise, self.fall)
    }
}

/// The one check timing, from a section's `interval_ms`, `timeout_ms`, `rise` and `fall`.
pub(super) fn timing(interval_ms: u64, timeout_ms: u64, rise: u32, fall: u32) -> super::CheckTiming {
    super::CheckTiming {
        interval: super::ms(interval_ms),
        timeout: super::ms(timeout_ms),
        rise,
        fall,
    }
}

/// Whether a section's check timing is usable: every part of it positive.
pub(super) fn timing_is_positive(interval_ms: u64, timeout_ms: u64, rise: u32, fall: u32) -> bool {
    interval_ms > 0 && timeout_ms > 0 && rise > 0 && fall > 0
}

impl VrrpInstance {
    /// The domain value.
    pub(super) fn lower(&self) -> super::VrrpInstance {
        let advert = *self.advert_interval_ms.get_ref();
        super::VrrpInstance {
            name: self.name.get_ref().clone(),
            vrid: *self.vrid.get_ref(),
            interface: self.interface.get_ref().clone(),
            priority: *self.priority.get_ref(),
            advert_interval: super::ms(advert.into()),
            max_master_interval: super::ms(
                self.max_master_interval_ms
                    .as_ref()
                    .map_or(advert, |m| *m.get_ref())
                    .into(),
            ),
            preempt: self.preempt,
            preempt_delay: super::ms((*self.preempt_delay_ms.get_ref()).into()),
            unicast_peers: self.unicast_peers.iter().map(|p| *p.get_ref()).collect(),
            source: self.source.as_ref().map(|s| *s.get_ref()),
            vips: self.vips.get_ref().clone(),
            track_services: self.track_services.iter().map(|t| t.get_ref().clone()).collect(),
            ipv4_checksum: self.ipv4_checksum,
            notify: self.notify.clone(),
        }
    }
}

fn default_advert_interval_ms() -> Spanned<u32> {
    Spanned::new(0..0, 1000)
}

fn default_preempt_delay_ms() -> Spanned<u32> {
    Spanned::new(0..0, 0)
}

fn default_true() -> bool {
    true
}

fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/foobar/control.sock")
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/foobar")
}

fn default_weight() -> u32 {
    100
}

pub(super) fn validate(c: &Config, report: &mut dyn FnMut(&Range<usize>, String)) {
    if c.node.interfaces.get_ref().is_empty() {
        report(&c.node.interfaces.span(), "at least one interface is needed".into());
    }
    let dp = &c.dataplane;
    let m = *dp.maglev_table_size.get_ref();
    if !maglev::is_prime(m) {
        report(
            &dp.maglev_table_size.span(),
            format!("maglev_table_size {m} is not a prime"),
        );
    }
    if *dp.conntrack_entries.get_ref() == 0 {
        report(
            &dp.conntrack_entries.span(),
            "conntrack_entries must be at least 1".into(),
        );
    }
    let max_services = *dp.max_services.get_ref();
    if max_services == 0 || (max_services as u64) * 2 * (m as u64) > u32::MAX as u64 {
        report(
            &dp.max_services.span(),
            format!(
                "max_services {max_services} must be 1.. and max_services x 2 x maglev_table_size must fit in 2^32"
            ),
        );
    }
    if c.services.len() > max_services as usize {
        report(
            &dp.max_services.span(),
            format!(
                "{} services configured but max_services is {max_services}",
                c.services.len()
            ),
        );
    }
    let max_backends = *dp.max_backends.get_ref();
    if max_backends == 0 || max_backends > foobar_common::MAX_BACKENDS {
        report(
            &dp.max_backends.span(),
            format!("max_backends must be 1..={}", foobar_common::MAX_BACKENDS),
        );
    }
    let prefixes: usize = c.services.iter().map(|s| s.allow.len() + s.deny.len()).sum();
    if prefixes > *dp.max_source_prefixes.get_ref() as usize || *dp.max_source_prefixes.get_ref() == 0 {
        report(
            &dp.max_source_prefixes.span(),
            format!(
                "{prefixes} allow / deny prefixes configured but max_source_prefixes is {} (and must be at least 1)",
                dp.max_source_prefixes.get_ref()
            ),
        );
    }
    let backend_total: usize = c.services.iter().map(|s| s.backends.len()).sum();
    if backend_total > *dp.max_backends.get_ref() as usize {
        report(
            &dp.max_backends.span(),
            format!(
                "{backend_total} backends configured but max_backends is {}",
                dp.max_backends.get_ref()
            ),
        );
    }

    let mut names = HashSet::new();
    let mut listeners = HashSet::new();
    for svc in &c.services {
        if !names.insert(svc.name.get_ref().as_str()) {
            report(
                &svc.name.span(),
                format!("service name {:?} is used twice", svc.name.get_ref()),
            );
        }
        let vip = *svc.vip.get_ref();
        if !listeners.insert((vip, svc.port, svc.protocol)) {
            report(
                &svc.vip.span(),
                format!("{vip} port {} {:?} is already a service", svc.port, svc.protocol),
            );
        }
        if svc.backends.len() * 100 > m as usize {
            report(
                &dp.maglev_table_size.span(),
                format!(
                    "service {:?} has {} backends: maglev_table_size must be at least 100 x that",
                    svc.name.get_ref(),
                    svc.backends.len()
                ),
            );
        }
        let mut addresses = BTreeSet::new();
        for b in &svc.backends {
            let addr = *b.address.get_ref();
            if !addresses.insert(addr) {
                report(
                    &b.address.span(),
                    format!("backend {addr} is listed twice in this service"),
                );
            }
            if svc.forwarding == Forwarding::Ipip && !c.node.addresses.contains(&addr) {
                let source = if addr.is_ipv4() {
                    &c.node.tunnel_source_v4
                } else {
                    &c.node.tunnel_source_v6
                };
                if source.is_none() {
                    let which = if addr.is_ipv4() {
                        "tunnel_source_v4"
                    } else {
                        "tunnel_source_v6"
                    };
                    report(
                        &b.address.span(),
                        format!("backend {addr} is reached by IPIP: [node] needs {which}"),
                    );
                }
            }
        }
        let h = &svc.health;
        if h.kind != CheckKind::None && !h.timing_is_positive() {
            report(
                &svc.name.span(),
                format!(
                    "service {:?}: health interval_ms, timeout_ms, rise and fall must be positive",
                    svc.name.get_ref()
                ),
            );
        }
        if h.kind == CheckKind::Mysql && !h.credentials.as_ref().is_some_and(|p| p.is_absolute()) {
            report(
                &svc.name.span(),
                format!(
                    "service {:?}: a mysql health check needs credentials, an absolute path",
                    svc.name.get_ref()
                ),
            );
        }
        if h.kind != CheckKind::None && svc.port == 0 && h.port.is_none() {
            report(
                &svc.name.span(),
                format!(
                    "service {:?} listens on every port: its health check needs a port",
                    svc.name.get_ref()
                ),
            );
        }
    }
    validate_vrrp(c, report);
    if let Some(a) = &c.announce {
        announce::validate(a, !c.vrrp.is_empty(), report);
    }
    if let Some(w) = &c.web {
        web::validate(w, report);
    }
    database::validate(c, report);
    if let Some(m) = &c.monitoring {
        monitoring::validate(m, report);
    }
    for (source, v4) in [(&c.node.tunnel_source_v4, true), (&c.node.tunnel_source_v6, false)] {
        if let Some(s) = source {
            if s.get_ref().is_ipv4() != v4 {
                report(
                    &s.span(),
                    format!("{} is not an IPv{} address", s.get_ref(), if v4 { 4 } else { 6 }),
                );
            }
        }
    }
}

fn validate_vrrp(c: &Config, report: &mut dyn FnMut(&Range<usize>, String)) {
    let mut names = HashSet::new();
    let mut routers = HashSet::new();
    let mut claimed: HashSet<IpAddr> = HashSet::new();
    for v in &c.vrrp {
        let name = v.name.get_ref();
        if !names.insert(name.as_str()) {
            report(&v.name.span(), format!("vrrp instance name {name:?} is used twice"));
        }
        let vips = v.vips.get_ref();
        let v4 = vips.first().is_none_or(|a| a.is_ipv4());
        if *v.vrid.get_ref() == 0 {
            report(&v.vrid.span(), "vrid must be 1..=255".into());
        } else if !routers.insert((v.interface.get_ref().as_str(), *v.vrid.get_ref(), v4)) {
            report(
                &v.vrid.span(),
                format!(
                    "vrid {} is used twice on {} for this family",
                    v.vrid.get_ref(),
                    v.interface.get_ref()
                ),
            );
        }
        if *v.priority.get_ref() == 0 {
            report(
                &v.priority.span(),
                "priority must be 1..=255 (0 is reserved for stepping down)".into(),
            );
        }
        let interval = *v.advert_interval_ms.get_ref();
        if interval % 10 != 0 || !(10..=40950).contains(&interval) {
            report(
                &v.advert_interval_ms.span(),
                format!("advert_interval_ms {interval} must be a multiple of 10 in 10..=40950"),
            );
        }
        if let Some(max) = &v.max_master_interval_ms {
            let ms = *max.get_ref();
            if ms % 10 != 0 || !(10..=40950).contains(&ms) {
                report(
                    &max.span(),
                    format!("max_master_interval_ms {ms} must be a multiple of 10 in 10..=40950"),
                );
            }
        }
        let delay = *v.preempt_delay_ms.get_ref();
        if delay % 10 != 0 || delay > 655_350 {
            report(
                &v.preempt_delay_ms.span(),
                format!("preempt_delay_ms {delay} must be a multiple of 10 up to 655350"),
            );
        }
        if vips.is_empty() || vips.len() > 255 {
            report(&v.vips.span(), "an instance needs 1..=255 VIPs".into());
        }
        for vip in vips {
            if vip.is_ipv4() != v4 {
                report(
                    &v.vips.span(),
                    format!("{vip}: every VIP of an instance has one family"),
                );
            }
            if !claimed.insert(*vip) {
                report(&v.vips.span(), format!("{vip} is claimed by two vrrp instances"));
            }
        }
        for peer in &v.unicast_peers {
            if peer.get_ref().is_ipv4() != v4 {
                report(
                    &peer.span(),
                    format!("unicast peer {} is not of the VIPs' family", peer.get_ref()),
                );
            }
        }
        if let Some(source) = &v.source {
            if source.get_ref().is_ipv4() != v4 {
                report(
                    &source.span(),
                    format!("source {} is not of the VIPs' family", source.get_ref()),
                );
            }
        }
        for tracked in &v.track_services {
            if !c.services.iter().any(|s| s.name.get_ref() == tracked.get_ref()) {
                report(
                    &tracked.span(),
                    format!("tracked service {:?} is not configured", tracked.get_ref()),
                );
            }
        }
    }
    if !c.vrrp.is_empty() {
        for svc in &c.services {
            let vip = svc.vip.get_ref();
            if !claimed.contains(vip) {
                report(
                    &svc.vip.span(),
                    format!("VIP {vip} belongs to no vrrp instance: with VRRP, every VIP needs one"),
                );
            }
        }
    }
}

//! The configuration file: one TOML document, parsed and validated in full before anything
//! uses it. Every problem is reported with file, line, column and reason; a file with any
//! problem is refused as a whole.

pub mod announce;
pub mod database;
pub mod decode;
pub mod files;
pub mod monitoring;
pub mod web;

use crate::maglev;
use serde::Deserialize;
use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};
use toml::Spanned;

/// A validated configuration.
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

/// XDP attach mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native, or generic with a warning where the driver lacks XDP.
    #[default]
    Auto,
    /// Driver mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
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
}

impl Dataplane {
    /// Every setting that sizes a map: changing one takes a restart.
    pub fn sizes(&self) -> [u32; 5] {
        [
            *self.maglev_table_size.get_ref(),
            *self.conntrack_entries.get_ref(),
            *self.conntrack_entries_v6.get_ref(),
            *self.max_services.get_ref(),
            *self.max_backends.get_ref(),
        ]
    }
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
    /// Backends.
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

/// L4 protocol of a service.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as the configuration spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Forwarding mode of a service.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// IPIP / IPv6-in-IPv6 encapsulation, direct server return.
    #[default]
    Ipip,
    /// Destination MAC rewrite, direct server return on the same L2 segment.
    L2dsr,
}

/// One `[[service.backend]]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
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

/// Kind of health check.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// TCP connect.
    #[default]
    Tcp,
    /// HTTP/1.1 GET, healthy on the expected status.
    Http,
    /// HTTP/1.1 GET over TLS (the certificate is not verified), healthy on the expected status.
    Https,
    /// A full MySQL login with `credentials`, `SELECT 1` and a clean quit: never a bare
    /// handshake, which MySQL counts against the checking host (`max_connect_errors`).
    Mysql,
    /// No check: always healthy.
    None,
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

/// How IPv4 advert checksums are computed (received adverts are accepted either way).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChecksumConvention {
    /// Over a pseudo-header and the message, as keepalived does.
    #[default]
    PseudoHeader,
    /// Over the VRRP message only.
    MessageOnly,
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

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub reason: String,
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// Its problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.line == 0 {
                write!(f, "{}: {}", self.path.display(), p.reason)?;
            } else {
                write!(f, "{}:{}:{}: {}", self.path.display(), p.line, p.column, p.reason)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates a configuration file, and checks the files it names (certificates,
/// keys, credentials, document roots): what `foobar check-config`, the start and every reload
/// run, so each reports the same problems at the same places.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, true)
}

/// [`load`], or without looking at the files it names when `files` is false (a configuration
/// written for another host).
pub fn load_with(path: &Path, files: bool) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        problems: vec![Problem {
            line: 0,
            column: 0,
            reason: format!("cannot read the configuration file: {e}"),
        }],
    })?;
    checked(&text, files).map_err(|problems| ConfigError {
        path: path.to_owned(),
        problems,
    })
}

/// Parses and validates configuration text (the files it names are not looked at).
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    checked(text, false)
}

fn checked(text: &str, with_files: bool) -> Result<Config, Vec<Problem>> {
    let decoded = decode::decode(text);
    let mut found = decoded.problems.clone();
    let Some(config) = decoded.config.as_ref() else {
        return Err(found
            .into_iter()
            .map(|(span, reason)| problem(text, &span, reason))
            .collect());
    };
    let mut report = |span: &Range<usize>, reason: String| {
        // Problems of what decoding had to patch are reported already.
        if !decoded.about_patched(span, &reason) {
            found.push((span.clone(), reason))
        }
    };
    validate(config, &mut report);
    if with_files {
        files::check(config, &mut report);
    }
    if found.is_empty() {
        return decoded.config.ok_or_else(Vec::new);
    }
    found.sort_by_key(|(span, _)| span.start);
    Err(found
        .into_iter()
        .map(|(span, reason)| problem(text, &span, reason))
        .collect())
}

fn problem(text: &str, span: &Range<usize>, reason: String) -> Problem {
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Problem { line, column, reason }
}

fn validate(c: &Config, report: &mut dyn FnMut(&Range<usize>, String)) {
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
        if h.kind != CheckKind::None && (h.interval_ms == 0 || h.timeout_ms == 0 || h.rise == 0 || h.fall == 0) {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid file: one service with a remote and a local backend (weight 50).
    pub(crate) const GOOD: &str = r#"
[node]
name = "edge1"
interfaces = ["eth0"]
addresses = ["10.0.0.1"]
tunnel_source_v4 = "10.0.0.1"

[[service]]
name = "web"
vip = "192.0.2.1"
port = 443

[[service.backend]]
address = "10.0.0.2"

[[service.backend]]
address = "10.0.0.1"
weight = 50
"#;

    #[test]
    fn good_file_parses_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.services[0].backends.len(), 2);
        assert_eq!(c.services[0].backends[0].weight, 100);
        assert_eq!(*c.dataplane.maglev_table_size.get_ref(), 65537);
        assert_eq!(c.services[0].forwarding, Forwarding::Ipip);
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(text).expect_err("invalid")
    }

    #[test]
    fn syntax_and_type_errors_point_at_the_line() {
        let bad = GOOD.replace("port = 443", "port = \"https\"");
        let p = problems(&bad);
        assert_eq!((p[0].line, p[0].column), (11, 8), "{p:?}");
        let bad = GOOD.replace("address = \"10.0.0.2\"", "address = \"10.0.0.300\"");
        let p = problems(&bad);
        assert_eq!(p[0].line, 14, "{p:?}");
        assert_eq!(
            p[0].reason, "service[0].backend[0].address = \"10.0.0.300\": expected an IPv4 or IPv6 address",
            "{p:?}"
        );
        let bad = GOOD.replace("weight = 50", "wieght = 50");
        let p = problems(&bad);
        assert_eq!(p[0].line, 18, "{p:?}");
        assert!(p[0].reason.contains("wieght"), "{p:?}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let bad = GOOD.replace("address = \"10.0.0.1\"\nweight", "address = \"10.0.0.2\"\nweight")
            + "\n[dataplane]\nmaglev_table_size = 65536\n";
        let p = problems(&bad);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].line, p[0].column), (17, 11), "{p:?}");
        assert!(p[0].reason.contains("listed twice"));
        assert_eq!(p[1].line, 21, "{p:?}");
        assert!(p[1].reason.contains("not a prime"));
    }

    #[test]
    fn ipip_needs_a_tunnel_source() {
        let bad = GOOD.replace("tunnel_source_v4 = \"10.0.0.1\"\n", "");
        let p = problems(&bad);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, 13, "{p:?}");
        assert!(p[0].reason.contains("tunnel_source_v4"));
    }

    #[test]
    fn announce_takes_a_table_of_its_own_and_excludes_vrrp() {
        let c = parse(&format!("{GOOD}\n[announce]\n")).expect("valid");
        let a = c.announce.as_ref().expect("announce").get_ref();
        assert_eq!(
            (*a.table.get_ref(), a.drain_ms, a.bird_socket.as_ref()),
            (242, 5000, None)
        );
        let p = problems(&format!("{GOOD}\n[announce]\ntable = 254\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, 21, "{p:?}");
        assert!(p[0].reason.contains("254 main"), "{p:?}");
        let p = problems(&format!("{GOOD}{VRRP}\n[announce]\n"));
        assert!(p.iter().any(|p| p.reason.contains("[announce] and [[vrrp]]")), "{p:?}");
    }

    const VRRP: &str = r#"
[[vrrp]]
name = "v4"
vrid = 51
interface = "eth0"
priority = 150
advert_interval_ms = 100
vips = ["192.0.2.1"]
track_services = ["web"]
"#;

    /// A node with one `[[database]]` named `main` (line 7) of `servers` (line 9), then `tail`
    /// (from line 12).
    fn with_database(servers: &str, tail: &str) -> String {
        format!(
            r#"
[node]
name = "a"
interfaces = ["eth0"]

[[database]]
name = "main"
address = "10.0.0.1"
servers = [{servers}]
credentials = "/etc/foobar/monitor.toml"

{tail}"#
        )
    }

    #[test]
    fn failover_needs_three_servers_and_an_absolute_replication_login() {
        let text = with_database(
            r#""10.0.0.11:3306", "10.0.0.12:3306""#,
            "[database.failover]\nreplication_credentials = \"repl.toml\"\nafter_ms = 0\n",
        );
        let text = text.as_str();
        let reasons: Vec<String> = problems(text)
            .into_iter()
            .map(|p| format!("{}: {}", p.line, p.reason))
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[0].starts_with("7: ") && reasons[0].contains("after_ms and catch_up_timeout_ms must be positive"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].starts_with("9: ") && reasons[1].contains("at least three servers"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].starts_with("13: ") && reasons[2].contains("absolute path"),
            "{reasons:?}"
        );
        let fine = text
            .replace("\"10.0.0.12:3306\"]", "\"10.0.0.12:3306\", \"10.0.0.13:3306\"]")
            .replace("\"repl.toml\"", "\"/etc/foobar/repl.toml\"")
            .replace("after_ms = 0", "rejoin = true");
        let c = parse(&fine).unwrap();
        let f = c.databases[0].failover.as_ref().unwrap();
        assert!(f.rejoin && !f.semi_sync && f.after_ms == 5000 && f.catch_up_timeout_ms == 30_000);
    }

    #[test]
    fn writes_are_held_a_minute_at_most() {
        let text = with_database(r#""10.0.0.11:3306""#, "").replace(
            "credentials = \"/etc/foobar/monitor.toml\"",
            "credentials = \"/etc/foobar/monitor.toml\"\nhold_writes_ms = 60001",
        );
        let reasons: Vec<String> = problems(&text).into_iter().map(|p| p.reason).collect();
        assert!(
            reasons.len() == 1 && reasons[0].contains("hold_writes_ms is at most 60000"),
            "{reasons:?}"
        );
        assert!(parse(&text.replace("60001", "60000")).is_ok());
    }

    #[test]
    fn galera_options_need_a_galera_cluster_which_needs_no_failover() {
        let text = with_database(
            r#""10.0.0.11:3306", "10.0.0.12:3306", "10.0.0.13:3306""#,
            "[database.galera]\ndonors_serve = true\n",
        );
        let text = text.as_str();
        let reasons: Vec<String> = problems(text)
            .into_iter()
            .map(|p| format!("{}: {}", p.line, p.reason))
            .collect();
        assert_eq!(
            reasons,
            ["12: database \"main\": [database.galera] needs kind = \"galera\""]
        );
        let galera = text.replace("name = \"main\"", "name = \"main\"\nkind = \"galera\"");
        let c = parse(&galera).unwrap();
        assert_eq!(c.databases[0].kind, database::ClusterKind::Galera);
        let with_failover =
            format!("{galera}\n[database.failover]\nreplication_credentials = \"/etc/foobar/r.toml\"\n");
        let reasons: Vec<String> = problems(&with_failover).into_iter().map(|p| p.reason).collect();
        assert!(
            reasons.len() == 1 && reasons[0].contains("needs no [database.failover]"),
            "{reasons:?}"
        );
    }

    #[test]
    fn vrrp_instances_parse_with_defaults() {
        let c = parse(&format!("{GOOD}{VRRP}")).expect("valid");
        let v = &c.vrrp[0];
        assert!(v.preempt);
        assert_eq!(*v.preempt_delay_ms.get_ref(), 0);
        assert_eq!(v.ipv4_checksum, ChecksumConvention::PseudoHeader);
        assert!(v.unicast_peers.is_empty());
    }

    #[test]
    fn vrrp_problems_point_at_their_lines() {
        let bad = format!("{GOOD}{VRRP}")
            .replace("advert_interval_ms = 100", "advert_interval_ms = 105")
            .replace(
                "track_services = [\"web\"]",
                "track_services = [\"api\"]\nunicast_peers = [\"2001:db8::2\"]",
            )
            .replace("priority = 150", "priority = 0");
        let p = problems(&bad);
        let lines: Vec<(usize, bool)> = p
            .iter()
            .map(|p| {
                (
                    p.line,
                    p.reason.contains("priority")
                        || p.reason.contains("advert_interval_ms")
                        || p.reason.contains("api")
                        || p.reason.contains("family"),
                )
            })
            .collect();
        assert_eq!(lines, vec![(24, true), (25, true), (27, true), (28, true)], "{p:?}");
        // A service VIP outside every instance is refused.
        let orphan = format!("{GOOD}{VRRP}").replace("vips = [\"192.0.2.1\"]", "vips = [\"192.0.2.2\"]");
        let p = problems(&orphan);
        assert!(
            p.iter().any(|p| p.line == 10 && p.reason.contains("no vrrp instance")),
            "{p:?}"
        );
    }

    #[test]
    fn duplicate_listener_is_refused() {
        let bad = format!("{GOOD}\n[[service]]\nname = \"web2\"\nvip = \"192.0.2.1\"\nport = 443\n");
        let p = problems(&bad);
        assert!(
            p.iter().any(|p| p.line == 22 && p.reason.contains("already a service")),
            "{p:?}"
        );
    }
}

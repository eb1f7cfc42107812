//! The configuration: one TOML file, decoded and checked in full before anything uses it, then
//! lowered into the domain values the rest of the program runs on (durations, parsed prefixes
//! and URLs, enums where the file has flags that could contradict each other). Every problem is
//! reported with file, line, column and reason; a file with any problem is refused as a whole.
//! The file's own tree, with the place of every value, stays in [`file`].

pub mod announce;
pub mod database;
mod decode;
mod file;
mod files;
pub mod monitoring;
pub mod web;

use serde::Deserialize;
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// This node.
    pub node: Node,
    /// Data-plane sizing and policy.
    pub dataplane: Dataplane,
    /// VIP services.
    pub services: Vec<Service>,
    /// VRRP instances electing which edge owns the VIPs; none (and no `[announce]`) means this
    /// node always owns them.
    pub vrrp: Vec<VrrpInstance>,
    /// VIP ownership by route announcement through the host's BGP daemon (every edge active);
    /// excludes `[[vrrp]]`.
    pub announce: Option<announce::Announce>,
    /// The web tier; none means this node serves no HTTP.
    pub web: Option<web::Web>,
    /// Database clusters routed by this node.
    pub databases: Vec<database::Database>,
    /// Metrics, the status page and the push exporter; none means no management listener.
    pub monitoring: Option<monitoring::Monitoring>,
}

/// The `[node]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Node name, used in logs and metrics.
    pub name: String,
    /// Interfaces the XDP program is attached to (at least one).
    pub interfaces: Vec<String>,
    /// How to attach.
    pub xdp_mode: XdpMode,
    /// This node's own addresses: backends with one of them are delivered locally, and
    /// IPIP packets addressed to them are decapsulated.
    pub addresses: Vec<IpAddr>,
    /// The only sources whose IPIP / IPv6-in-IPv6 packets to `addresses` are decapsulated.
    pub tunnel_peers: Vec<IpAddr>,
    /// Outer source address of IPv4 tunnels.
    pub tunnel_source_v4: Option<Ipv4Addr>,
    /// Outer source address of IPv6 tunnels.
    pub tunnel_source_v6: Option<Ipv6Addr>,
    /// bpffs directory for pinned maps and links; a layout-version subdirectory is added.
    pub pin_dir: PathBuf,
    /// Unix socket `foobar status` and `foobar reload` talk to.
    pub control_socket: PathBuf,
    /// The unprivileged user to run as once everything privileged is done (none: stay root).
    pub user: Option<String>,
}

/// The `[dataplane]` section: map sizes and the Maglev seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataplane {
    /// Maglev table size M (a prime, at least 100 x the largest backend count).
    pub maglev_table_size: u32,
    /// Seed of the Maglev permutations; equal on every edge so they pick the same backends.
    pub maglev_seed: u64,
    /// Connection-table capacity for IPv4 flows.
    pub conntrack_entries: u32,
    /// Connection-table capacity for IPv6 flows.
    pub conntrack_entries_v6: u32,
    /// New connection-table inserts allowed per CPU per second (0 = unlimited).
    pub new_flow_cap: u32,
    /// Capacity of the service table.
    pub max_services: u32,
    /// Capacity of the backend table (all services together).
    pub max_backends: u32,
    /// Capacity of the source-policy table (every service's prefixes together).
    pub max_source_prefixes: u32,
}

/// One `[[service]]`: a VIP, port and protocol balanced over backends.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Name, unique in the file.
    pub name: String,
    /// The VIP.
    pub vip: IpAddr,
    /// Port; 0 means every port of the protocol.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// How packets reach remote backends.
    pub forwarding: Forwarding,
    /// Health check applied to every backend.
    pub health: HealthCheck,
    /// Sources let through (normalised prefixes of the VIP's family); with any, a source no
    /// prefix covers is dropped.
    pub allow: Vec<web::Prefix>,
    /// Sources dropped; the longest prefix covering a source decides between the lists.
    pub deny: Vec<web::Prefix>,
    /// Backends, each address once.
    pub backends: Vec<Backend>,
}

/// One `[[service.backend]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Backend address.
    pub address: IpAddr,
    /// Relative weight; 0 drains (no new flows, established ones stay).
    pub weight: u32,
}

/// How often a target is probed, how long a probe may take, and how many results in a row
/// change its state: the one timing of service health checks, upstream checks and the
/// database monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CheckTiming {
    /// Between probes.
    pub interval: Duration,
    /// A probe taking longer has failed.
    pub timeout: Duration,
    /// Consecutive passed probes that make a down target up (at least 1).
    pub rise: u32,
    /// Consecutive failed probes that make an up target down (at least 1).
    pub fall: u32,
}

/// An active health check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// What to check.
    pub kind: CheckKind,
    /// Port to check; none: the service's (or the server's) port.
    pub port: Option<u16>,
    /// HTTP path.
    pub path: String,
    /// HTTP status that means healthy.
    pub expect_status: u16,
    /// When to probe and when the state changes.
    pub timing: CheckTiming,
    /// MySQL checks: the file with the user and password to log in with.
    pub credentials: Option<PathBuf>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        file::HealthCheck::default().lower()
    }
}

/// One `[[vrrp]]` instance: a VRRPv3 virtual router on one interface, for one address family.
#[derive(Clone, Debug, PartialEq)]
pub struct VrrpInstance {
    /// Name, unique in the file (status, logs, notify).
    pub name: String,
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Interface the adverts travel on and the VIPs are claimed on.
    pub interface: String,
    /// Priority 1..=255 (255: this node owns the addresses).
    pub priority: u8,
    /// Advertisement interval: whole centiseconds, 10 ms..=40.95 s.
    pub advert_interval: Duration,
    /// The longest advertisement interval a backup adopts from a master (whole centiseconds).
    pub max_master_interval: Duration,
    /// Whether a higher-priority backup takes over from a lower-priority master.
    pub preempt: bool,
    /// After start, how long before this node may preempt (whole centiseconds).
    pub preempt_delay: Duration,
    /// Peers to send adverts to by unicast; empty means multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// Source address of the adverts; none: the interface's first address of the family.
    pub source: Option<IpAddr>,
    /// The VIPs this router claims, all of one family.
    pub vips: Vec<IpAddr>,
    /// Services whose backends all being down puts this node in fault.
    pub track_services: Vec<String>,
    /// IPv4 advert checksum convention the peer expects.
    pub ipv4_checksum: ChecksumConvention,
    /// Command run on every state change.
    pub notify: Option<PathBuf>,
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
    file::validate(config, &mut report);
    if with_files {
        files::check(config, &mut report);
    }
    let lowered = lower(config, &mut report);
    if found.is_empty() {
        return Ok(lowered);
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

/// Turns a file tree with no problems into the domain values; the few values only parsed here
/// (prefixes, URLs) report their problems at their places.
fn lower(f: &file::Config, report: &mut dyn FnMut(&Range<usize>, String)) -> Config {
    let n = &f.node;
    let d = &f.dataplane;
    Config {
        node: Node {
            name: n.name.clone(),
            interfaces: n.interfaces.get_ref().clone(),
            xdp_mode: n.xdp_mode,
            addresses: n.addresses.clone(),
            tunnel_peers: n.tunnel_peers.clone(),
            tunnel_source_v4: n.tunnel_source_v4.as_ref().and_then(|s| match s.get_ref() {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            }),
            tunnel_source_v6: n.tunnel_source_v6.as_ref().and_then(|s| match s.get_ref() {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            }),
            pin_dir: n.pin_dir.clone(),
            control_socket: n.control_socket.clone(),
            user: n.user.as_ref().map(|u| u.get_ref().clone()),
        },
        dataplane: Dataplane {
            maglev_table_size: *d.maglev_table_size.get_ref(),
            maglev_seed: d.maglev_seed,
            conntrack_entries: *d.conntrack_entries.get_ref(),
            conntrack_entries_v6: *d.conntrack_entries_v6.get_ref(),
            new_flow_cap: d.new_flow_cap,
            max_services: *d.max_services.get_ref(),
            max_backends: *d.max_backends.get_ref(),
            max_source_prefixes: *d.max_source_prefixes.get_ref(),
        },
        services: f
            .services
            .iter()
            .map(|s| {
                let (allow, deny) = source_prefixes(s, report);
                Service {
                    name: s.name.get_ref().clone(),
                    vip: *s.vip.get_ref(),
                    port: s.port,
                    protocol: s.protocol,
                    forwarding: s.forwarding,
                    health: s.health.lower(),
                    allow,
                    deny,
                    backends: s
                        .backends
                        .iter()
                        .map(|b| Backend {
                            address: *b.address.get_ref(),
                            weight: b.weight,
                        })
                        .collect(),
                }
            })
            .collect(),
        vrrp: f.vrrp.iter().map(file::VrrpInstance::lower).collect(),
        announce: f.announce.as_ref().map(|a| announce::lower(a.get_ref())),
        web: f.web.as_ref().map(|w| web::lower(w, report)),
        databases: f.databases.iter().map(database::lower).collect(),
        monitoring: f.monitoring.as_ref().map(|m| monitoring::lower(m, report)),
    }
}

/// A service's `allow` and `deny` lists, parsed and normalised; a prefix that does not
/// parse, is not of the VIP's family, or is in both lists is reported at its place.
fn source_prefixes(
    s: &file::Service,
    report: &mut dyn FnMut(&Range<usize>, String),
) -> (Vec<web::Prefix>, Vec<web::Prefix>) {
    let vip = *s.vip.get_ref();
    let mut lists = [Vec::new(), Vec::new()];
    for (list, listed) in lists.iter_mut().zip([&s.allow, &s.deny]) {
        for p in listed {
            match web::Prefix::parse(p.get_ref()) {
                Err(why) => report(&p.span(), why),
                Ok(prefix) if prefix.addr.is_ipv4() != vip.is_ipv4() => {
                    report(&p.span(), format!("{:?} is not of VIP {vip}'s family", p.get_ref()))
                }
                Ok(prefix) => list.push((
                    p,
                    web::Prefix {
                        addr: web::truncate(prefix.addr, prefix.len),
                        len: prefix.len,
                    },
                )),
            }
        }
    }
    let [allow, deny] = lists;
    for (p, prefix) in &allow {
        if deny.iter().any(|(_, d)| d == prefix) {
            report(&p.span(), format!("{:?} is both allowed and denied", p.get_ref()));
        }
    }
    let strip = |list: Vec<(&toml::Spanned<String>, web::Prefix)>| list.into_iter().map(|(_, p)| p).collect();
    (strip(allow), strip(deny))
}

/// Milliseconds from the file as a duration.
fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
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
        assert_eq!(c.dataplane.maglev_table_size, 65537);
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
        let a = c.announce.as_ref().expect("announce");
        assert_eq!(
            (a.table, a.drain, a.bird_socket.as_ref()),
            (242, Duration::from_secs(5), None)
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
        assert!(
            f.rejoin
                && !f.semi_sync
                && f.after == Duration::from_secs(5)
                && f.catch_up_timeout == Duration::from_secs(30)
        );
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
        assert_eq!(
            (v.preempt_delay, v.advert_interval, v.max_master_interval),
            (Duration::ZERO, Duration::from_millis(100), Duration::from_millis(100))
        );
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

    /// `GOOD` with a web tier: a TLS listener (line 22), a plain one that redirects, a plain
    /// one, and `extra` appended.
    fn with_web(extra: &str) -> String {
        format!(
            r#"{GOOD}
[web]
trusted_proxies = ["10.9.0.0/16"]

[[web.listener]]
address = "192.0.2.1:443"
tls = true

[[web.listener]]
address = "192.0.2.1:80"
redirect_to_https = true

[[web.listener]]
address = "127.0.0.1:8080"

[[web.certificate]]
chain = "/etc/foobar/www.crt"
key = "/etc/foobar/www.key"

[[web.site]]
names = ["www.foobar.com"]
root = "/srv/www"
proxy = [{{ prefix = "/api/", upstream = "app" }}]

[[web.upstream]]
name = "app"
servers = ["10.0.1.10:8080"]
health = {{ kind = "http", interval_ms = 500, timeout_ms = 250, rise = 1, fall = 4 }}

[[database]]
name = "main"
address = "10.0.0.1"
servers = ["10.0.0.11:3306"]
credentials = "/etc/foobar/monitor.toml"
idle_timeout_ms = 0
monitor = {{ interval_ms = 700, timeout_ms = 300, rise = 3, fall = 2 }}
{extra}"#
        )
    }

    #[test]
    fn the_program_gets_domain_values() {
        let c = parse(&with_web("")).expect("valid");
        let web = c.web.as_ref().expect("web");
        let kinds: Vec<web::ListenerKind> = web.listeners.iter().map(|l| l.kind).collect();
        assert_eq!(
            kinds,
            [
                web::ListenerKind::Tls,
                web::ListenerKind::RedirectToHttps,
                web::ListenerKind::Plain
            ]
        );
        assert_eq!(
            web.trusted_proxies,
            [web::Prefix {
                addr: "10.9.0.0".parse().unwrap(),
                len: 16
            }]
        );
        let ms = Duration::from_millis;
        // One check timing for service checks, upstream checks and the database monitor.
        assert_eq!(
            c.services[0].health.timing,
            CheckTiming {
                interval: ms(2000),
                timeout: ms(1000),
                rise: 2,
                fall: 3
            }
        );
        assert_eq!(
            web.upstreams[0].health.as_ref().map(|h| h.timing),
            Some(CheckTiming {
                interval: ms(500),
                timeout: ms(250),
                rise: 1,
                fall: 4
            })
        );
        let db = &c.databases[0];
        assert_eq!(
            db.monitor,
            CheckTiming {
                interval: ms(700),
                timeout: ms(300),
                rise: 3,
                fall: 2
            }
        );
        assert_eq!(
            (db.idle_timeout, db.read_only_port, db.hold_writes),
            (None, Some(3307), Duration::ZERO)
        );
        assert_eq!(
            (web.limits.header_read_timeout, web.upstreams[0].connect_timeout),
            (ms(10_000), ms(2000))
        );
        assert_eq!(c.node.tunnel_source_v4, Some(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn values_parsed_for_the_program_are_refused_at_their_place() {
        let text = with_web(
            "\n[monitoring]\nlisten = \"127.0.0.1:9100\"\npush = { url = \"https://collector.example:70000/x\" }\n",
        )
        .replace("\"10.9.0.0/16\"", "\"10.9.0.0/33\"");
        let p = problems(&text);
        let found: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.reason.as_str())).collect();
        assert_eq!(
            found,
            [
                (21, "\"10.9.0.0/33\": the prefix length must be 0..=32"),
                (
                    58,
                    "push url \"https://collector.example:70000/x\": port \"70000\" is not 0..=65535"
                ),
            ],
            "{p:?}"
        );
        let both = with_web("").replace("redirect_to_https = true", "redirect_to_https = true\ntls = true");
        let p = problems(&both);
        assert!(
            p.len() == 1 && p[0].line == 28 && p[0].reason.contains("redirect_to_https applies to plain listeners"),
            "{p:?}"
        );
    }

    #[test]
    fn management_users_need_a_plain_name_and_a_bcrypt_hash() {
        let text = format!(
            "{GOOD}\n[monitoring]\nlisten = \"127.0.0.1:9100\"\n\n[monitoring.basic_auth_users]\nprometheus = \"$2y$10$mHK1pDMGHfxKz3SPbGa7deYVGeXWF5qJIt6qu8bXrY6XoJ8hcU.Vq\"\n\"a:b\" = \"$2y$10$mHK1pDMGHfxKz3SPbGa7deYVGeXWF5qJIt6qu8bXrY6XoJ8hcU.Vq\"\ngrafana = \"hunter2\"\n"
        );
        let p = problems(&text);
        let found: Vec<(usize, bool)> = p
            .iter()
            .map(|p| {
                (
                    p.line,
                    p.reason.contains("cannot be a user name") || p.reason.contains("not a bcrypt hash"),
                )
            })
            .collect();
        assert_eq!(found, [(25, true), (26, true)], "{p:?}");
        let fine = text
            .replace("\"a:b\" = ", "alice = ")
            .replace("grafana = \"hunter2\"\n", "");
        let c = parse(&fine).expect("valid");
        let m = c.monitoring.expect("monitoring");
        assert_eq!(m.basic_auth_users.keys().collect::<Vec<_>>(), ["alice", "prometheus"]);
    }

    #[test]
    fn source_prefixes_are_parsed_normalised_and_of_the_vips_family() {
        let with = |lists: &str| GOOD.replace("port = 443\n", &format!("port = 443\n{lists}"));
        let c = parse(&with("allow = [\"10.9.8.7/8\"]\ndeny = [\"10.1.2.3\"]\n")).expect("valid");
        let s = &c.services[0];
        assert_eq!(
            (s.allow[0].addr.to_string(), s.allow[0].len, s.deny[0].len),
            ("10.0.0.0".to_string(), 8, 32)
        );
        let p = problems(&with(
            "allow = [\"10.0.0.0/8\", \"2001:db8::/32\", \"10.0.0.0/40\"]\ndeny = [\"10.0.0.0/8\"]\n",
        ));
        let reasons: Vec<&str> = p.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{p:?}");
        assert!(reasons[0].contains("both allowed and denied"), "{p:?}");
        assert!(reasons[1].contains("not of VIP 192.0.2.1's family"), "{p:?}");
        assert!(reasons[2].contains("prefix length must be 0..=32"), "{p:?}");
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

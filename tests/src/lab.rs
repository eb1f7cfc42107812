//! The load-balancer lab: a client, one or two edges running `foobar run` (two: electing the
//! VIP's owner with VRRP), and backends (each running foobar to decapsulate IPIP, with the VIP
//! on `lo` and a TCP/HTTP server), all on one bridge. Used by the namespace scenarios and by
//! `cargo xtask run`.
//!
//! ```text
//!  client 10.10.0.100 ──┐
//!  edge1  10.10.0.1   ──┤
//!  edge2  10.10.0.2   ──┤ br0 (namespace "sw")     VIP 192.0.2.10:80, on-link: the owner
//!  b1..bN 10.10.0.11+ ──┤                          answers ARP for it from XDP
//!  db1,db2 10.10.0.31+ ─┤ (with a database: MariaDB primary and replica)
//!  app    10.10.0.41   ──┤ (with the app: the demo app behind the web tier's /api/)
//!  mon    10.10.0.51   ──┘ (with monitoring: a collector the edges push to)
//! ```

use crate::{
    foobar_bin,
    mariadb::{self, MariaDb},
    veth, ChildGuard, EchoClient, EchoServer, Netns, PinDir, Scratch,
};
use anyhow::{Context, Result};
use foobar::ctl::NodeStatus;
use std::path::Path;
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// The VIP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The service port.
pub const PORT: u16 = 80;
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 100);

/// Address of backend `i` (0-based).
pub fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 11 + i as u8)
}

/// Name of backend `i`, which its server answers with.
pub fn backend_name(i: usize) -> String {
    format!("b{}", i + 1)
}

/// How the edge's configuration treats one backend.
#[derive(Clone, Copy, Debug)]
pub struct BackendSetting {
    /// Listed in the configuration at all.
    pub present: bool,
    /// Its weight.
    pub weight: u32,
}

/// VRRP between the edges.
#[derive(Clone, Debug)]
pub struct Vrrp {
    /// Advertisement interval, ms.
    pub interval_ms: u32,
    /// Priority of each edge, in order.
    pub priorities: Vec<u8>,
    /// Preemption.
    pub preempt: bool,
    /// Unicast adverts to the other edge instead of multicast.
    pub unicast: bool,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Number of backends.
    pub backends: usize,
    /// `ipip` or `l2dsr`.
    pub forwarding: &'static str,
    /// Number of edges (1 or 2); with two, `vrrp` must be set.
    pub edges: usize,
    /// VRRP settings, if the edges run it.
    pub vrrp: Option<Vrrp>,
    /// The edges also run the web tier: an HTTPS service on the VIP (port 443) whose backends
    /// are the edges themselves (local delivery on the master, IPIP to the other).
    pub web: bool,
    /// A MariaDB primary and replica behind the edges' database routing: read-write and
    /// read-only services on the VIP (ports [`MYSQL_PORTS`]) whose backends are the edges.
    pub database: bool,
    /// The demo application server ([`crate::demo`]) behind the web tier's `/api/`, using the
    /// database through the VIP (needs `web` and `database`).
    pub app: bool,
    /// A monitoring namespace with a collector the edges push metrics and logs to.
    pub monitoring: bool,
}

/// Advertisement interval of [`LabSpec::pair`], ms.
pub const PAIR_INTERVAL_MS: u32 = 100;
/// Priorities of [`LabSpec::pair`]'s edges.
pub const PAIR_PRIORITIES: [u8; 2] = [150, 100];

impl LabSpec {
    /// Two edges electing with 100 ms adverts (priorities 150 and 100) in front of `backends`
    /// IPIP backends, with or without preemption and the web tier.
    pub fn pair(backends: usize, preempt: bool, web: bool) -> Self {
        Self {
            backends,
            forwarding: "ipip",
            edges: 2,
            vrrp: Some(Vrrp {
                interval_ms: PAIR_INTERVAL_MS,
                priorities: PAIR_PRIORITIES.to_vec(),
                preempt,
                unicast: false,
            }),
            web,
            database: false,
            app: false,
            monitoring: false,
        }
    }

    /// The whole foobar.com stack: two edges with VRRP, the web tier and database routing,
    /// `backends` L4 backends, the demo app, MariaDB primary and replica, and monitoring.
    pub fn foobar_com(backends: usize) -> Self {
        Self {
            database: true,
            app: true,
            monitoring: true,
            ..Self::pair(backends, true, true)
        }
    }

    /// The same lab with a database cluster behind the edges.
    pub fn with_database(mut self) -> Self {
        self.database = true;
        self
    }
}

/// Timeout of the backends' health checks, ms: 150, or `$FOOBAR_LAB_CHECK_TIMEOUT_MS` (the
/// test VM emulates the CPU ten times slower than the host runs it).
pub fn check_timeout_ms() -> u64 {
    std::env::var("FOOBAR_LAB_CHECK_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Port of the edges' management listener (metrics and status page), on every address.
pub const METRICS_PORT: u16 = 9180;

/// The database services' ports on the VIP: read-write, read-only.
pub const MYSQL_PORTS: (u16, u16) = (3306, 3307);

/// The demo app's address and port.
pub const APP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 10, 0, 41), 8080);
/// The collector's address and port.
pub const COLLECTOR: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 10, 0, 51), 9300);

/// Address of database server `i` (0-based; the first is the primary).
pub fn database_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 31 + i as u8)
}

/// Port of the HTTPS service the edges serve themselves.
pub const HTTPS_PORT: u16 = 443;
/// Host name of the lab's web site.
pub const WEB_HOST: &str = "www.foobar.com";

/// Address of edge `i` (0-based).
pub fn edge_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 1 + i as u8)
}

/// The edges' addresses as a TOML list's items: the tunnel peers of backends and of edges.
fn edge_peers(edges: usize) -> String {
    (0..edges)
        .map(|i| format!("\"{}\"", edge_addr(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One edge: its namespace, pins and foobar process. Fields drop in order: process, pins,
/// namespace.
pub struct Edge {
    /// foobar run (None while stopped).
    pub foobar: Option<ChildGuard>,
    /// Pin directory.
    pub pins: PinDir,
    /// Namespace.
    pub ns: Netns,
    /// Name (edge1, edge2).
    pub name: String,
    /// Address on the bridge.
    pub addr: Ipv4Addr,
}

/// A running lab. Fields drop in order: processes, servers, pins, namespaces, files.
pub struct LbLab {
    /// The edges.
    pub edges: Vec<Edge>,
    _backend_foobar: Vec<ChildGuard>,
    /// One server per backend (None while stopped).
    pub servers: Vec<Option<EchoServer>>,
    /// The database servers, primary first (with [`LabSpec::database`]).
    pub databases: Vec<MariaDb>,
    /// The demo app (with [`LabSpec::app`]).
    pub app: Option<crate::app::HttpServer>,
    /// The collector (with [`LabSpec::monitoring`]).
    pub collector: Option<crate::collector::Collector>,
    _other_pins: Vec<PinDir>,
    /// The client namespace.
    pub client: Netns,
    /// Backend namespaces.
    pub backends: Vec<Netns>,
    /// Database server namespaces.
    pub database_ns: Vec<Netns>,
    /// The app's and the collector's namespaces, when present.
    pub service_ns: Vec<Netns>,
    _switch: Netns,
    /// Logs and configuration files.
    pub scratch: Scratch,
    spec: LabSpec,
}

impl LbLab {
    /// One edge without VRRP and `n` backends; `forwarding` is `ipip` or `l2dsr`.
    pub fn start(n: usize, forwarding: &'static str) -> Result<Self> {
        Self::build(LabSpec {
            backends: n,
            forwarding,
            edges: 1,
            vrrp: None,
            web: false,
            database: false,
            app: false,
            monitoring: false,
        })
    }

    /// Builds the topology and starts everything; with VRRP, waits until one edge is master.
    pub fn build(spec: LabSpec) -> Result<Self> {
        // Labs in one process (tests run in parallel) get distinct names.
        static LABS: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("l{}", LABS.fetch_add(1, Ordering::Relaxed));
        let name = |short: &str| format!("{tag}-{short}");
        let scratch = Scratch::new(&name("lab"))?;
        let switch = Netns::new(&name("sw"))?;
        let client = Netns::new(&name("client"))?;
        let mut edges = Vec::new();
        for i in 0..spec.edges {
            let edge_name = format!("edge{}", i + 1);
            edges.push(Edge {
                foobar: None,
                pins: PinDir::new(&name(&edge_name)),
                ns: Netns::new(&name(&edge_name))?,
                name: edge_name,
                addr: edge_addr(i),
            });
        }
        let backends: Vec<Netns> = (0..spec.backends)
            .map(|i| Netns::new(&name(&backend_name(i))))
            .collect::<Result<_>>()?;
        let database_ns: Vec<Netns> = (0..if spec.database { 2 } else { 0 })
            .map(|i| Netns::new(&name(&format!("db{}", i + 1))))
            .collect::<Result<_>>()?;
        let mut hosts: Vec<(&Netns, String, Ipv4Addr)> = vec![(&client, "c".into(), CLIENT)];
        for (i, e) in edges.iter().enumerate() {
            hosts.push((&e.ns, format!("e{}", i + 1), e.addr));
        }
        for (i, ns) in backends.iter().enumerate() {
            hosts.push((ns, backend_name(i), backend_addr(i)));
        }
        for (i, ns) in database_ns.iter().enumerate() {
            hosts.push((ns, format!("db{}", i + 1), database_addr(i)));
        }
        let mut service_ns = Vec::new();
        for (wanted, short, addr) in [(spec.app, "app", APP.0), (spec.monitoring, "mon", COLLECTOR.0)] {
            if wanted {
                service_ns.push((Netns::new(&name(short))?, short, addr));
            }
        }
        for (ns, short, addr) in &service_ns {
            hosts.push((ns, (*short).into(), *addr));
        }
        wire(&switch, &hosts)?;
        let mut other_pins = Vec::new();
        for (i, _) in edges.iter().enumerate() {
            let pins = PinDir::new(&name(&format!("sw{}", i + 1)));
            attach_pass(&switch, &format!("e{}-sw", i + 1), &pins)?;
            other_pins.push(pins);
        }

        let mut backend_foobar = Vec::new();
        let mut servers = Vec::new();
        let n = spec.backends;
        for (i, ns) in backends.iter().enumerate() {
            let pins = PinDir::new(&name(&backend_name(i)));
            let (foobar, server) = start_backend(ns, &scratch, &pins, i, n, spec.edges, None)?;
            backend_foobar.push(foobar);
            other_pins.push(pins);
            servers.push(Some(server));
        }
        if spec.web || spec.database {
            serve_vip_locally(&edges)?;
        }
        if spec.web {
            prepare_web(&scratch, &edges)?;
        }
        let mut databases = Vec::new();
        if spec.database {
            let hosts: Vec<(&Netns, String)> = database_ns
                .iter()
                .enumerate()
                .map(|(i, ns)| (ns, database_addr(i).to_string()))
                .collect();
            databases = mariadb::cluster(&scratch.path, &hosts, false)?;
            mariadb::write_credentials(&scratch.file("monitor.toml"), mariadb::MONITOR_USER.1, 0o600)?;
        }
        let mut app = None;
        let mut collector = None;
        for (ns, short, addr) in &service_ns {
            if *short == "app" {
                // The app reaches the VIP through the edges' XDP, as the client does.
                ns.exec(&["ip", "route", "add", &format!("{VIP}/32"), "dev", "eth0"])?;
                ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
                let vip = |port| SocketAddr::new(IpAddr::V4(VIP), port);
                app = Some(crate::demo::start(
                    ns,
                    SocketAddr::new(IpAddr::V4(*addr), APP.1),
                    vip(MYSQL_PORTS.0),
                    vip(MYSQL_PORTS.1),
                )?);
            } else {
                collector = Some(crate::collector::Collector::start(
                    ns,
                    SocketAddr::new(IpAddr::V4(*addr), COLLECTOR.1),
                    &[],
                    Some(&scratch.file("collector.log")),
                )?);
            }
        }
        let service_ns = service_ns.into_iter().map(|(ns, _, _)| ns).collect();
        let mut lab = Self {
            edges,
            _backend_foobar: backend_foobar,
            servers,
            databases,
            app,
            collector,
            _other_pins: other_pins,
            client,
            backends,
            database_ns,
            service_ns,
            _switch: switch,
            scratch,
            spec,
        };
        let all = vec![
            BackendSetting {
                present: true,
                weight: 100
            };
            n
        ];
        for i in 0..lab.edges.len() {
            lab.write_edge_config(i, &all)?;
            lab.start_edge(i)?;
        }
        if lab.spec.vrrp.is_some() {
            lab.wait_for_master(Duration::from_secs(10))?;
        }
        // An edge that started before its peers marked them down (their listeners were not up
        // yet); every test starts once each edge sees every backend up again.
        crate::wait_until(Duration::from_secs(15), "every edge to see every backend up", || {
            (0..lab.edges.len()).all(|i| {
                lab.status(i).is_ok_and(|s| {
                    s.services.iter().all(|svc| {
                        svc.backends
                            .iter()
                            .all(|b| b.standing != foobar::health::Standing::Down)
                    })
                })
            })
        })
        .with_context(|| {
            format!(
                "{:?}",
                (0..lab.edges.len())
                    .map(|i| lab.status(i).map(|s| s.services))
                    .collect::<Vec<_>>()
            )
        })?;
        Ok(lab)
    }

    /// Path of edge `i`'s configuration file.
    pub fn edge_config(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("edge{}.toml", i + 1))
    }

    /// Opens `n` echo connections to the VIP from the client namespace.
    pub fn connect(&self, n: usize) -> Result<Vec<EchoClient>> {
        let vip = self.vip();
        self.client
            .run(move || (0..n).map(|_| EchoClient::connect(vip)).collect::<Result<Vec<_>>>())?
    }

    /// Path of edge `i`'s control socket.
    pub fn edge_socket(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("edge{}.sock", i + 1))
    }

    /// Writes edge `i`'s configuration with these backend settings.
    pub fn write_edge_config(&self, i: usize, backends: &[BackendSetting]) -> Result<()> {
        let mut text = edge_config_head(
            &self.edges[i],
            &self.edge_socket(i),
            &format!("tunnel_peers = [{}]\n", edge_peers(self.spec.edges)),
            self.spec.forwarding,
        );
        for (b, setting) in backends.iter().enumerate().filter(|(_, s)| s.present) {
            text += &format!(
                "\n[[service.backend]]\naddress = \"{}\"\nweight = {}\n",
                backend_addr(b),
                setting.weight
            );
        }
        if self.spec.web {
            text += &self.edge_web_config(i);
        }
        if self.spec.database {
            text += &self.edge_database_config();
        }
        text += &format!("\n[monitoring]\nlisten = \"0.0.0.0:{METRICS_PORT}\"\n");
        if self.spec.monitoring {
            text += &format!(
                "\n[monitoring.push]\nurl = \"http://{}:{}/receiver/v1/http/foobar-lab\"\ninterval_ms = 5000\ncategory = \"foobar/lab\"\n",
                COLLECTOR.0, COLLECTOR.1
            );
        }
        if let Some(v) = &self.spec.vrrp {
            let peers: Vec<String> = (0..self.edges.len())
                .filter(|j| *j != i && v.unicast)
                .map(|j| format!("\"{}\"", edge_addr(j)))
                .collect();
            text += &format!(
                r#"
[[vrrp]]
name = "vip"
vrid = 51
interface = "eth0"
priority = {priority}
advert_interval_ms = {interval}
preempt = {preempt}
vips = ["{VIP}"]
track_services = ["web"]
unicast_peers = [{peers}]
notify = "{notify}"
"#,
                priority = v.priorities[i],
                interval = v.interval_ms,
                preempt = v.preempt,
                peers = peers.join(", "),
                notify = self.notify_script(i)?.display(),
            );
        }
        std::fs::write(self.edge_config(i), text).context("writing an edge configuration")
    }

    /// Edge `i`'s notify command: appends a timestamp and its arguments to `edgeN.notify`.
    fn notify_script(&self, i: usize) -> Result<PathBuf> {
        let script = self.scratch.file(&format!("edge{}-notify.sh", i + 1));
        notify_script(&script, &self.scratch.file(&format!("edge{}.notify", i + 1)))?;
        Ok(script)
    }

    /// The notify calls edge `i` made so far, one line each: Unix ms, instance, state, reason.
    pub fn notifications(&self, i: usize) -> String {
        std::fs::read_to_string(self.scratch.file(&format!("edge{}.notify", i + 1))).unwrap_or_default()
    }

    /// Edge `i`'s web tier: TLS on the VIP, its own document root, and the HTTPS service with
    /// both edges as backends.
    fn edge_web_config(&self, i: usize) -> String {
        let mut text = format!(
            r#"
[[service]]
name = "https"
vip = "{VIP}"
port = {HTTPS_PORT}
health = {{ kind = "https", interval_ms = 200, timeout_ms = 500, rise = 2, fall = 2 }}
"#
        );
        for j in 0..self.edges.len() {
            text += &format!("\n[[service.backend]]\naddress = \"{}\"\n", edge_addr(j));
        }
        text += &format!(
            r#"
[[web.listener]]
address = "0.0.0.0:{HTTPS_PORT}"
tls = true

[[web.certificate]]
chain = "{dir}/web.crt"
key = "{dir}/web.key"

[[web.site]]
names = ["{WEB_HOST}"]
root = "{dir}/www-edge{n}"
"#,
            dir = self.scratch.path.display(),
            n = i + 1,
        );
        if self.spec.app {
            text += &format!(
                r#"
[[web.site.proxy]]
prefix = "/api/"
upstream = "app"

[[web.upstream]]
name = "app"
servers = ["{}:{}"]
"#,
                APP.0, APP.1
            );
        }
        text
    }

    /// The edges' database routing: read-write and read-only services on the VIP with both
    /// edges as backends (checked by a MySQL login through them), routing to the cluster.
    fn edge_database_config(&self) -> String {
        let credentials = self.scratch.file("monitor.toml");
        let mut text = String::new();
        for (name, port) in [("mysql-rw", MYSQL_PORTS.0), ("mysql-ro", MYSQL_PORTS.1)] {
            text += &format!(
                r#"
[[service]]
name = "{name}"
vip = "{VIP}"
port = {port}
health = {{ kind = "mysql", credentials = "{credentials}", interval_ms = 500, timeout_ms = 2000, rise = 2, fall = 2 }}
"#,
                credentials = credentials.display()
            );
            for j in 0..self.edges.len() {
                text += &format!("\n[[service.backend]]\naddress = \"{}\"\n", edge_addr(j));
            }
        }
        let servers: Vec<String> = self.databases.iter().map(|d| d.addr.clone()).collect();
        // Every address: the VIP for clients, the edge's own for the health checks.
        text + &mariadb::database_section("main", "0.0.0.0", MYSQL_PORTS, &servers, &credentials, "primary")
    }

    /// The web lab's certificate (to trust in clients).
    pub fn web_certificate(&self) -> PathBuf {
        self.scratch.file("web.crt")
    }

    /// Starts `foobar run` on edge `i` (after a stop, it adopts the pinned state).
    pub fn start_edge(&mut self, i: usize) -> Result<()> {
        let log = self.edge_log_path(i);
        let child = crate::start_foobar(&self.edges[i].ns, &self.edge_config(i), &log)?;
        self.edges[i].foobar = Some(child);
        Ok(())
    }

    /// The VIP service address.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(VIP), PORT)
    }

    fn edge_log_path(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("edge{}.log", i + 1))
    }

    /// Edge `i`'s log so far.
    pub fn edge_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.edge_log_path(i)).unwrap_or_default()
    }

    /// Edge `i`'s status from its control socket.
    pub fn status(&self, i: usize) -> Result<NodeStatus> {
        foobar::ctl::query(&self.edge_socket(i))
    }

    /// The VRRP state of edge `i`'s instance ("" when the edge does not answer).
    pub fn vrrp_state(&self, i: usize) -> String {
        self.status(i)
            .ok()
            .and_then(|s| s.vrrp.first().map(|v| v.state.name().to_string()))
            .unwrap_or_default()
    }

    /// Waits until exactly one running edge is master and returns its index.
    pub fn wait_for_master(&self, limit: Duration) -> Result<usize> {
        let mut master = None;
        crate::wait_until(limit, "exactly one VRRP master", || {
            let masters: Vec<usize> = (0..self.edges.len())
                .filter(|i| self.edges[*i].foobar.is_some() && self.vrrp_state(*i) == "master")
                .collect();
            master = masters.first().copied().filter(|_| masters.len() == 1);
            master.is_some()
        })
        .with_context(|| format!("edge1:\n{}\nedge2:\n{}", self.edge_log(0), self.edge_log(1)))?;
        master.context("no master")
    }
}

/// The head of an edge's configuration in either lab: `[node]` (running as `nobody`, with
/// `extra_node` lines added), `[dataplane]` and the VIP's `web` service with `forwarding` and
/// TCP health checks, without its backends; the rest is appended.
pub fn edge_config_head(edge: &Edge, socket: &Path, extra_node: &str, forwarding: &str) -> String {
    format!(
        r#"[node]
name = "{name}"
interfaces = ["eth0"]
addresses = ["{addr}"]
{extra_node}tunnel_source_v4 = "{addr}"
pin_dir = "{pins}"
control_socket = "{socket}"
user = "nobody"

[dataplane]
maglev_table_size = 65537
conntrack_entries = 65536

[[service]]
name = "web"
vip = "{VIP}"
port = {PORT}
forwarding = "{forwarding}"
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = {check_timeout}, rise = 2, fall = 2 }}
"#,
        name = edge.name,
        addr = edge.addr,
        pins = edge.pins.path.display(),
        socket = socket.display(),
        check_timeout = check_timeout_ms(),
    )
}

/// Starts backend `i` of `n` in `ns`: the VIP on `lo` (accepted, never answered for in ARP),
/// foobar decapsulating IPIP from the first `edges` edges (the last backend in generic mode,
/// the others natively) pinned in `pins`, and an echo server on [`PORT`] answering with its
/// name. With `v6` (the scale-out lab), also the IPv6 VIP on `lo`, IPv6-in-IPv6 from the edges'
/// IPv6 addresses, and the server on both families.
pub fn start_backend(
    ns: &Netns,
    scratch: &Scratch,
    pins: &PinDir,
    i: usize,
    n: usize,
    edges: usize,
    v6: Option<&V6Plan>,
) -> Result<(ChildGuard, EchoServer)> {
    ns.exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    for (key, value) in [
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.eth0.rp_filter", "0"),
    ] {
        ns.sysctl(key, value)?;
    }
    let mut addresses = format!("\"{}\"", backend_addr(i));
    let mut peers = edge_peers(edges);
    let mut listen = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    if let Some(plan) = v6 {
        ns.exec(&["ip", "-6", "addr", "add", &format!("{}/128", plan.vip), "dev", "lo"])?;
        addresses += &format!(", \"{}\"", plan.backend(i));
        for e in 0..edges {
            peers += &format!(", \"{}\"", plan.edge(e));
        }
        listen = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    }
    let config = scratch.file(&format!("{}.toml", backend_name(i)));
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"{}\"\ninterfaces = [\"eth0\"]\nxdp_mode = \"{}\"\naddresses = [{addresses}]\ntunnel_peers = [{peers}]\npin_dir = \"{}\"\ncontrol_socket = \"{}\"\n",
            backend_name(i),
            // The last backend decapsulates in generic (skb) mode, the others natively.
            if i + 1 == n { "generic" } else { "native" },
            pins.path.display(),
            scratch.file(&format!("{}.sock", backend_name(i))).display(),
        ),
    )?;
    let foobar = crate::start_foobar(ns, &config, &scratch.file(&format!("{}.log", backend_name(i))))?;
    // An IPv6 listener on any address takes IPv4 too (bindv6only is 0).
    let server = EchoServer::start(ns, SocketAddr::new(listen, PORT), &backend_name(i))?;
    Ok((foobar, server))
}

/// IPv6 in the scale-out lab: the VIP, and the edges' and backends' addresses on the segment.
#[derive(Clone, Copy, Debug)]
pub struct V6Plan {
    /// The IPv6 VIP.
    pub vip: std::net::Ipv6Addr,
}

impl V6Plan {
    /// Edge `i`'s IPv6 address on the segment.
    pub fn edge(&self, i: usize) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1 + i as u16)
    }

    /// Backend `i`'s IPv6 address on the segment.
    pub fn backend(&self, i: usize) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x11 + i as u16)
    }
}

/// Gives each edge the VIP on `lo` (so the kernel takes the VIP traffic XDP delivers locally
/// or decapsulates, without answering ARP for it), a document root saying which edge served,
/// and one certificate for the site.
/// Puts the VIP on the edges' `lo`, so services whose backends are the edges themselves are
/// delivered locally (and decapsulated IPIP packets to the VIP are accepted).
fn serve_vip_locally(edges: &[Edge]) -> Result<()> {
    for edge in edges {
        edge.ns
            .exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        for (key, value) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
        ] {
            edge.ns.sysctl(key, value)?;
        }
    }
    Ok(())
}

/// The edges' document roots and the site's certificate.
fn prepare_web(scratch: &Scratch, edges: &[Edge]) -> Result<()> {
    for (i, _) in edges.iter().enumerate() {
        let root = scratch.file(&format!("www-edge{}", i + 1));
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), format!("served by edge{}\n", i + 1))?;
    }
    crate::weblab::self_signed(&scratch.path, "web", "ec", &[WEB_HOST])?;
    Ok(())
}

/// Puts every host on a bridge in `switch` (its `eth0`, address /24), and prepares the client:
/// the VIP is on the link (the client asks who has it; the owner answers), and the client fills
/// in TCP/UDP checksums itself (veth leaves them to "hardware" that never runs when XDP
/// forwards the frame). The client is the first host.
pub fn wire(switch: &Netns, hosts: &[(&Netns, String, Ipv4Addr)]) -> Result<()> {
    bridge(switch, hosts)?;
    let (client, _, _) = hosts.first().context("no client")?;
    client.exec(&["ip", "route", "add", &format!("{VIP}/32"), "dev", "eth0"])?;
    client.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    Ok(())
}

/// Puts every host on a bridge `br0` in `switch`: its `eth0` (address /24) on port `SHORT-sw`.
pub fn bridge(switch: &Netns, hosts: &[(&Netns, String, Ipv4Addr)]) -> Result<()> {
    switch.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
    switch.exec(&["ip", "link", "set", "br0", "up"])?;
    for (ns, short, addr) in hosts {
        bridge_host(switch, ns, short, *addr)?;
    }
    Ok(())
}

/// Puts one more host on `switch`'s bridge: its `eth0` (address /24) on port `SHORT-sw`.
pub fn bridge_host(switch: &Netns, ns: &Netns, short: &str, addr: Ipv4Addr) -> Result<()> {
    let port = format!("{short}-sw");
    veth(ns, "eth0", switch, &port)?;
    switch.exec(&["ip", "link", "set", &port, "master", "br0"])?;
    ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    Ok(())
}

/// How many of `conns` each backend serves, by name.
pub fn spread(conns: &[EchoClient]) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    for c in conns {
        *by.entry(c.backend.clone()).or_default() += 1;
    }
    by
}

/// One round trip on each of `conns`, failing with the connection and its backend.
pub fn round_trip_all(conns: &mut [EchoClient], what: &str) -> Result<()> {
    for (i, c) in conns.iter_mut().enumerate() {
        c.round_trip(&format!("{what} {i}"))
            .with_context(|| format!("{what}: connection {i} to {}", c.backend))?;
    }
    Ok(())
}

/// A notify command that appends `UNIX_MS ARGS...` to `out` (for foobar and keepalived; `out`
/// is writable by anyone, since foobar runs it as its `[node] user`).
pub fn notify_script(script: &Path, out: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(out, "")?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o666))?;
    std::fs::write(
        script,
        format!("#!/bin/sh\necho \"$(date +%s%3N) $*\" >> {}\n", out.display()),
    )?;
    std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// When (Unix ms) a notify log written by [`notify_script`] first says "master" at or after
/// `since`.
pub fn master_since(notify_log: &str, since: u64) -> Option<u64> {
    notify_log.lines().find_map(|line| {
        let (ms, what) = line.split_once(' ')?;
        let ms: u64 = ms.parse().ok()?;
        (ms >= since && what.to_lowercase().split_whitespace().any(|w| w == "master")).then_some(ms)
    })
}

/// Attaches an empty XDP program to `interface` in `ns` (the switch's port of an edge): frames
/// an edge's XDP program transmits reach the bridge only if the veth peer has XDP.
pub fn attach_pass(ns: &Netns, interface: &str, pins: &PinDir) -> Result<()> {
    let pin_dir = pins.path.display().to_string();
    ns.exec_direct(
        &foobar_bin(),
        &["attach-pass", "--interface", interface, "--pin-dir", &pin_dir],
    )?;
    Ok(())
}

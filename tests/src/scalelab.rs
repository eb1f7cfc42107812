//! The scale-out lab: N edges, every one active, announcing the VIP through BIRD 2 or FRR (as
//! each edge's [`Daemon`] says) to a router running BIRD that spreads the client's flows over
//! them with ECMP (hashing the 5-tuple) and drops an edge that BFD finds dead. The backends
//! answer the client directly (IPIP in, direct return).
//!
//! ```text
//!  client 10.20.0.100 ── router 10.20.0.1 | 10.10.0.254 (BIRD: BGP + BFD to every edge)
//!                                           │ br0 (namespace "sw")
//!  edge1..N 10.10.0.1+  (foobar [announce], BIRD or FRR) ──┤
//!  b1..bM   10.10.0.11+ (foobar decapsulating, echo server, VIP on lo) ──┘
//! ```

use crate::{
    lab::{
        self, attach_pass, backend_addr, backend_name, check_timeout_ms, edge_addr, start_backend, Edge, V6Plan,
        METRICS_PORT, PORT, VIP,
    },
    veth, wait_until, ChildGuard, EchoServer, Netns, PinDir, Scratch,
};
use anyhow::{Context, Result};
use foobar::ctl::NodeStatus;
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// The router's address on the edges' segment.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 254);
/// The router's IPv6 address on the edges' segment.
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0xfe);
/// The IPv6 VIP and addressing: the edges announce both VIPs.
pub const V6: V6Plan = V6Plan {
    vip: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
};
/// The client's IPv6 address.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 0x100);
/// The client's address, on the router's other side.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 100);
/// The kernel table the edges announce through (FRR 8 imports tables 1..=252 only).
pub const TABLE: u32 = 242;

/// The BGP daemon an edge runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    /// BIRD 2: its kernel protocol learns the table.
    Bird,
    /// FRR (zebra, bgpd, bfdd): `ip import-table` and `redistribute table`.
    Frr,
}
/// How long a stopping edge keeps serving after withdrawing, ms.
pub const DRAIN_MS: u64 = 1500;

/// A running scale-out lab. Fields drop in order: processes, servers, pins, namespaces, files.
pub struct ScaleLab {
    /// The edges (their `foobar` runs as `nobody`).
    pub edges: Vec<Edge>,
    /// Each edge's BGP daemon (its processes; empty while stopped).
    pub edge_daemons: Vec<Vec<ChildGuard>>,
    /// Which daemon each edge runs.
    pub daemons: Vec<Daemon>,
    _router_bird: ChildGuard,
    _backend_foobar: Vec<ChildGuard>,
    /// One echo server per backend.
    pub servers: Vec<EchoServer>,
    _other_pins: Vec<PinDir>,
    /// The client namespace.
    pub client: Netns,
    /// The router namespace.
    pub router: Netns,
    /// Backend namespaces.
    pub backends: Vec<Netns>,
    switch: Netns,
    /// The lab's name prefix (after the process's).
    tag: String,
    /// Logs and configuration files.
    pub scratch: Scratch,
}

impl ScaleLab {
    /// Builds one announcing edge per entry of `daemons` (running that BGP daemon) in front of
    /// `backends` backends and waits until the router spreads the VIP over all of them, and the
    /// IPv6 VIP over the BIRD edges (FRR 8 cannot import an IPv6 table).
    pub fn build(daemons: &[Daemon], backends: usize) -> Result<Self> {
        let edges = daemons.len();
        static LABS: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("s{}", LABS.fetch_add(1, Ordering::Relaxed));
        let name = |short: &str| format!("{tag}-{short}");
        let scratch = Scratch::new(&name("scale"))?;
        let switch = Netns::new(&name("sw"))?;
        let router = Netns::new(&name("rt"))?;
        let client = Netns::new(&name("client"))?;
        let edge_list: Vec<Edge> = (0..edges)
            .map(|i| {
                let edge_name = format!("edge{}", i + 1);
                Ok(Edge {
                    foobar: None,
                    pins: PinDir::new(&name(&edge_name)),
                    ns: Netns::new(&name(&edge_name))?,
                    name: edge_name,
                    addr: edge_addr(i),
                })
            })
            .collect::<Result<_>>()?;
        let backend_ns: Vec<Netns> = (0..backends)
            .map(|i| Netns::new(&name(&backend_name(i))))
            .collect::<Result<_>>()?;
        let mut hosts: Vec<(&Netns, String, Ipv4Addr)> = vec![(&router, "r".into(), ROUTER)];
        for (i, e) in edge_list.iter().enumerate() {
            hosts.push((&e.ns, format!("e{}", i + 1), e.addr));
        }
        for (i, ns) in backend_ns.iter().enumerate() {
            hosts.push((ns, backend_name(i), backend_addr(i)));
        }
        lab::bridge(&switch, &hosts)?;
        veth(&client, "eth0", &router, "eth1")?;
        client.exec(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
        client.exec(&["ip", "route", "add", "default", "via", "10.20.0.1"])?;
        // XDP forwards the client's frames as they are: fill in checksums before sending.
        client.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        router.exec(&["ip", "addr", "add", "10.20.0.1/24", "dev", "eth1"])?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        router.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        // IPv6 beside IPv4 (no duplicate address detection: the lab's addresses are unique).
        let v6 = |ns: &Netns, dev: &str, addr: Ipv6Addr| {
            ns.exec(&["ip", "-6", "addr", "add", &format!("{addr}/64"), "dev", dev, "nodad"])
        };
        v6(&router, "eth0", ROUTER6)?;
        v6(&router, "eth1", Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 1))?;
        v6(&client, "eth0", CLIENT6)?;
        client.exec(&["ip", "-6", "route", "add", "default", "via", "fd00:20::1"])?;
        let hosts6 = edge_list
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.ns, V6.edge(i)))
            .chain(backend_ns.iter().enumerate().map(|(i, ns)| (ns, V6.backend(i))));
        for (ns, addr) in hosts6 {
            v6(ns, "eth0", addr)?;
            ns.exec(&["ip", "route", "add", "default", "via", &ROUTER.to_string()])?;
            ns.exec(&["ip", "-6", "route", "add", "default", "via", &ROUTER6.to_string()])?;
        }
        let mut other_pins = Vec::new();
        for i in 0..edges {
            let port = format!("e{}-sw", i + 1);
            let pins = PinDir::new(&name(&format!("sw{}", i + 1)));
            attach_pass(&switch, &port, &pins)?;
            other_pins.push(pins);
            // A frame for an edge whose port went down is not flooded to the other edges (a
            // NIC filters frames for other MACs; veth hands XDP every frame): the crash of an
            // edge black-holes its flows until the router moves them.
            switch.exec(&["bridge", "link", "set", "dev", &port, "flood", "off"])?;
        }
        let mut backend_foobar = Vec::new();
        let mut servers = Vec::new();
        for (i, ns) in backend_ns.iter().enumerate() {
            let pins = PinDir::new(&name(&backend_name(i)));
            let (foobar, server) = start_backend(ns, &scratch, &pins, i, backends, edges, Some(&V6))?;
            backend_foobar.push(foobar);
            other_pins.push(pins);
            servers.push(server);
        }
        let router_conf = scratch.file("router-bird.conf");
        std::fs::write(&router_conf, router_bird_config(edges))?;
        let router_bird = spawn_bird(
            &router,
            &router_conf,
            &scratch.file("router-bird.ctl"),
            &scratch.file("router-bird.log"),
        )?;
        let mut lab = Self {
            edges: edge_list,
            edge_daemons: (0..edges).map(|_| Vec::new()).collect(),
            daemons: daemons.to_vec(),
            _router_bird: router_bird,
            _backend_foobar: backend_foobar,
            servers,
            _other_pins: other_pins,
            client,
            router,
            backends: backend_ns,
            switch,
            tag: tag.clone(),
            scratch,
        };
        for i in 0..edges {
            lab.write_edge_config(i)?;
            lab.start_daemon(i)?;
            lab.start_edge(i)?;
        }
        let all: BTreeSet<Ipv4Addr> = (0..edges).map(edge_addr).collect();
        lab.wait_for_next_hops(&all, Duration::from_secs(30))?;
        let all6: BTreeSet<Ipv6Addr> = (0..edges)
            .filter(|i| daemons[*i] == Daemon::Bird)
            .map(|i| V6.edge(i))
            .collect();
        wait_until(
            Duration::from_secs(30),
            "the router to route the IPv6 VIP to every BIRD edge",
            || lab.next_hops6().is_ok_and(|h| h == all6),
        )
        .with_context(|| format!("the router routes the IPv6 VIP to {:?}", lab.next_hops6()))?;
        Ok(lab)
    }

    /// Path of edge `i`'s foobar configuration.
    pub fn edge_config(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("edge{}.toml", i + 1))
    }

    /// Path of edge `i`'s control socket.
    pub fn edge_socket(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("edge{}.sock", i + 1))
    }

    /// Path of edge `i`'s BIRD control socket.
    pub fn bird_socket(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("edge{}-bird.ctl", i + 1))
    }

    /// Edge `i`'s FRR directory: configuration, vty sockets, pid files (owned by `frr`).
    pub fn frr_dir(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("edge{}-frr", i + 1))
    }

    /// Edge `i`'s foobar log so far.
    pub fn edge_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.scratch.file(&format!("edge{}.log", i + 1))).unwrap_or_default()
    }

    /// Writes edge `i`'s configuration: the VIP's service with every backend, announced.
    fn write_edge_config(&self, i: usize) -> Result<()> {
        let edge = &self.edges[i];
        let source6 = format!("tunnel_source_v6 = \"{}\"\n", V6.edge(i));
        let mut text = lab::edge_config_head(edge, &self.edge_socket(i), &source6, "ipip");
        for b in 0..self.backends.len() {
            text += &format!("\n[[service.backend]]\naddress = \"{}\"\n", backend_addr(b));
        }
        text += &format!(
            "\n[[service]]\nname = \"web6\"\nvip = \"{}\"\nport = {PORT}\nforwarding = \"ipip\"\nhealth = {{ kind = \"tcp\", interval_ms = 200, timeout_ms = {}, rise = 2, fall = 2 }}\n",
            V6.vip,
            check_timeout_ms()
        );
        for b in 0..self.backends.len() {
            text += &format!("\n[[service.backend]]\naddress = \"{}\"\n", V6.backend(b));
        }
        let sessions = match self.daemons[i] {
            Daemon::Bird => format!("bird_socket = \"{}\"", self.bird_socket(i).display()),
            Daemon::Frr => format!("frr_vty_dir = \"{}\"", self.frr_dir(i).display()),
        };
        text += &format!("\n[announce]\ntable = {TABLE}\ndrain_ms = {DRAIN_MS}\n{sessions}\n");
        text += &format!("\n[monitoring]\nlisten = \"{}:{METRICS_PORT}\"\n", edge.addr);
        std::fs::write(self.edge_config(i), text).context("writing an edge configuration")
    }

    /// Starts `foobar run` on edge `i` (after a stop, it adopts the pinned state).
    pub fn start_edge(&mut self, i: usize) -> Result<()> {
        let log = self.scratch.file(&format!("edge{}.log", i + 1));
        let child = crate::start_foobar(&self.edges[i].ns, &self.edge_config(i), &log)?;
        self.edges[i].foobar = Some(child);
        Ok(())
    }

    /// Starts edge `i`'s BGP daemon; its control sockets are opened to the edge's foobar
    /// (which runs as `nobody`), as a deployment adds `foobar` to the `bird` or `frrvty` group.
    pub fn start_daemon(&mut self, i: usize) -> Result<()> {
        let ns = &self.edges[i].ns;
        let processes = match self.daemons[i] {
            Daemon::Bird => {
                let config = self.scratch.file(&format!("edge{}-bird.conf", i + 1));
                std::fs::write(&config, edge_bird_config(i))?;
                let socket = self.bird_socket(i);
                let log = self.scratch.file(&format!("edge{}-bird.log", i + 1));
                let bird = spawn_bird(ns, &config, &socket, &log)?;
                std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
                vec![bird]
            }
            Daemon::Frr => spawn_frr(ns, &self.frr_dir(i), i)?,
        };
        self.edge_daemons[i] = processes;
        Ok(())
    }

    /// Kills edge `i`'s BGP daemon.
    pub fn stop_daemon(&mut self, i: usize) {
        self.edge_daemons[i].clear();
    }

    /// Stops edge `i`'s BGP daemon as its service manager would (SIGTERM, newest process
    /// first; FRR's zebra then removes the routes it installed).
    pub fn stop_daemon_gracefully(&mut self, i: usize) -> Result<()> {
        while let Some(mut process) = self.edge_daemons[i].pop() {
            process.signal(nix::sys::signal::Signal::SIGTERM)?;
            process.wait(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Edge `i`'s status from its control socket.
    pub fn status(&self, i: usize) -> Result<NodeStatus> {
        foobar::ctl::query(&self.edge_socket(i))
    }

    /// The next hops the router forwards the VIP to now.
    pub fn next_hops(&self) -> Result<BTreeSet<Ipv4Addr>> {
        self.next_hops_of(IpAddr::V4(VIP))
    }

    /// The next hops the router forwards the IPv6 VIP to now.
    pub fn next_hops6(&self) -> Result<BTreeSet<Ipv6Addr>> {
        self.next_hops_of(IpAddr::V6(V6.vip))
    }

    fn next_hops_of<A: std::str::FromStr + Ord>(&self, vip: IpAddr) -> Result<BTreeSet<A>> {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let routes = self.router.exec(&["ip", family, "route", "show", &vip.to_string()])?;
        Ok(routes
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect())
    }

    /// Waits until the router forwards the VIP to exactly `hops`.
    pub fn wait_for_next_hops(&self, hops: &BTreeSet<Ipv4Addr>, limit: Duration) -> Result<()> {
        let mut last = BTreeSet::new();
        wait_until(limit, &format!("the router to route the VIP to {hops:?}"), || {
            last = self.next_hops().unwrap_or_default();
            last == *hops
        })
        .with_context(|| {
            format!(
                "the router routes the VIP to {last:?}; router BIRD:\n{}",
                std::fs::read_to_string(self.scratch.file("router-bird.log")).unwrap_or_default()
            )
        })
    }

    /// The VIPs edge `i`'s kernel table holds (what its BIRD announces).
    pub fn table_routes(&self, i: usize) -> Result<String> {
        self.edges[i]
            .ns
            .exec(&["ip", "route", "show", "table", &TABLE.to_string()])
    }

    /// Whether anyone on the edges' segment answers ARP for the VIP: a probe host joins the
    /// bridge for the question (and leaves with its namespace).
    pub fn vip_answers_arp(&self) -> Result<bool> {
        let probe = Netns::new(&format!("{}-probe", self.tag))?;
        lab::bridge_host(&self.switch, &probe, "probe", Ipv4Addr::new(10, 10, 0, 99))?;
        probe.exec(&["ip", "route", "add", &format!("{VIP}/32"), "dev", "eth0"])?;
        // A connection attempt makes the probe ask who has the VIP (its outcome is no matter).
        let vip = self.vip();
        probe
            .run(move || std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(2)).map(drop))?
            .ok();
        let neigh = probe.exec(&["ip", "neigh", "show", &VIP.to_string()])?;
        Ok(neigh.contains("lladdr"))
    }

    /// The VIP service address.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(VIP), PORT)
    }

    /// The IPv6 VIP service address.
    pub fn vip6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(V6.vip), PORT)
    }

    /// New flows edge `i`'s data plane has balanced so far (Maglev picks).
    pub fn new_flows(&self, i: usize) -> Result<u64> {
        let snapshot = foobar::stats::snapshot(&self.edges[i].pins.path)?;
        Ok(snapshot.services.iter().map(|s| s.traffic.new_flows).sum())
    }
}

/// Runs BIRD in the foreground in `ns` and waits for its control socket.
fn spawn_bird(
    ns: &Netns,
    config: &std::path::Path,
    socket: &std::path::Path,
    log: &std::path::Path,
) -> Result<ChildGuard> {
    let _ = std::fs::remove_file(socket);
    let (config, socket_arg) = (config.display().to_string(), socket.display().to_string());
    let bird = ns.spawn_system(&["bird", "-f", "-c", &config, "-s", &socket_arg], log)?;
    wait_until(Duration::from_secs(10), "BIRD's control socket", || socket.exists())
        .with_context(|| bird.log_text())?;
    Ok(bird)
}

/// Runs FRR's zebra, bfdd and bgpd in `ns` for edge `i` with everything in `dir` (each
/// daemon its own configuration file), and waits for their vty sockets.
fn spawn_frr(ns: &Netns, dir: &std::path::Path, i: usize) -> Result<Vec<ChildGuard>> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    crate::sh(&["chown", "frr:frr", &dir.display().to_string()])?;
    let path = |name: &str| dir.join(name).display().to_string();
    let (zserv, vty) = (path("zserv.api"), dir.display().to_string());
    let mut processes = Vec::new();
    for (daemon, config) in edge_frr_configs(i) {
        let file = dir.join(format!("{daemon}.conf"));
        std::fs::write(
            &file,
            format!(
                "frr defaults traditional\nhostname edge{}\nlog stdout informational\n{config}",
                i + 1
            ),
        )?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        let (program, file, pid, control) = (
            format!("/usr/lib/frr/{daemon}"),
            file.display().to_string(),
            path(&format!("{daemon}.pid")),
            path("bfdd.sock"),
        );
        let mut args = vec![
            program.as_str(),
            "-f",
            &file,
            "-z",
            &zserv,
            "-i",
            &pid,
            "--vty_socket",
            &vty,
        ];
        if daemon == "bfdd" {
            args.extend(["--bfdctl", control.as_str()]);
        }
        let log = dir.with_extension(format!("{daemon}.log"));
        processes.push(ns.spawn_system(&args, &log)?);
        let socket = dir.join(format!("{daemon}.vty"));
        wait_until(Duration::from_secs(10), &format!("FRR's {daemon} vty socket"), || {
            socket.exists()
        })
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777))?;
    }
    Ok(processes)
}

/// Edge `i` with FRR, by daemon in start order: zebra imports foobar's table, bgpd announces
/// it to the router (IPv4 only: FRR 8 has no `ipv6 import-table`) (origin IGP, as BIRD's edges do: the router merges only equal routes into
/// one multipath route), with a 100 ms BFD session from bfdd.
fn edge_frr_configs(i: usize) -> [(&'static str, String); 3] {
    let addr = edge_addr(i);
    [
        ("zebra", format!("ip import-table {TABLE}\n")),
        (
            "bfdd",
            "bfd\n profile fast\n  receive-interval 100\n  transmit-interval 100\n".to_string(),
        ),
        (
            "bgpd",
            format!(
                "router bgp 65001
 bgp router-id {addr}
 no bgp ebgp-requires-policy
 timers bgp 1 3
 neighbor {ROUTER} remote-as 65000
 neighbor {ROUTER} bfd profile fast
 neighbor {ROUTER} timers connect 1
 address-family ipv4 unicast
  redistribute table {TABLE} route-map foobar-vips
 exit-address-family
exit
route-map foobar-vips permit 10
 set origin igp
exit
"
            ),
        ),
    ]
}

/// BFD and BGP timers both sides use: a dead peer is noticed within 300 ms, a session comes
/// up within a second or two.
const BFD: &str = "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }";
const BGP_TIMERS: &str = "bfd on; connect delay time 1; connect retry time 1; error wait time 1, 2;";

/// The router: BGP sessions with BFD to each edge (one per family), and every equal route to a
/// VIP in the kernel as one multipath route.
fn router_bird_config(edges: usize) -> String {
    let mut text = format!(
        "router id {ROUTER};
protocol device {{ scan time 1; }}
protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}
protocol kernel {{ merge paths on; ipv6 {{ import none; export all; }}; }}
{BFD}
template bgp edge {{ local {ROUTER} as 65000; {BGP_TIMERS} ipv4 {{ import all; export none; }}; }}
template bgp edge6 {{ local {ROUTER6} as 65000; {BGP_TIMERS} ipv6 {{ import all; export none; }}; }}
"
    );
    for i in 0..edges {
        text += &format!(
            "protocol bgp edge{} from edge {{ neighbor {} as 65001; }}\n",
            i + 1,
            edge_addr(i)
        );
        text += &format!(
            "protocol bgp edge{}_6 from edge6 {{ neighbor {} as 65001; }}\n",
            i + 1,
            V6.edge(i)
        );
    }
    text
}

/// Edge `i`: learns foobar's table and announces it to the router, next hop itself, one
/// session per family.
fn edge_bird_config(i: usize) -> String {
    let (addr, addr6) = (edge_addr(i), V6.edge(i));
    format!(
        "router id {addr};
protocol device {{ scan time 1; }}
protocol kernel foobar {{ kernel table {TABLE}; learn; scan time 5; ipv4 {{ import all; export none; }}; }}
protocol kernel foobar6 {{ kernel table {TABLE}; learn; scan time 5; ipv6 {{ import all; export none; }}; }}
{BFD}
protocol bgp uplink {{ local {addr} as 65001; neighbor {ROUTER} as 65000; {BGP_TIMERS} ipv4 {{ import none; export where proto = \"foobar\"; next hop self; }}; }}
protocol bgp uplink6 {{ local {addr6} as 65001; neighbor {ROUTER6} as 65000; {BGP_TIMERS} ipv6 {{ import none; export where proto = \"foobar6\"; next hop self; }}; }}
"
    )
}

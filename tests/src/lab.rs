//! The load-balancer lab: a client, an edge running `foobar run`, and backends (each running
//! foobar to decapsulate IPIP, with the VIP on `lo` and a TCP/HTTP server), all on one
//! bridge. Used by the namespace scenarios and by `cargo xtask run`.
//!
//! ```text
//!  client 10.10.0.100 ──┐
//!  edge   10.10.0.1   ──┤ br0 (namespace "sw")      VIP 192.0.2.10:80 via the edge
//!  b1..bN 10.10.0.11+ ──┘
//! ```

use crate::{foobar_bin, veth, ChildGuard, EchoServer, Netns, PinDir, Scratch};
use anyhow::{Context, Result};
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
/// The edge's address.
pub const EDGE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
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

/// A running lab. Fields drop in order: processes, servers, pins, namespaces, files.
pub struct LbLab {
    /// The edge's foobar process.
    pub edge_foobar: Option<ChildGuard>,
    _backend_foobar: Vec<ChildGuard>,
    /// One server per backend (None while stopped).
    pub servers: Vec<Option<EchoServer>>,
    /// The edge's pin directory.
    pub edge_pins: PinDir,
    _other_pins: Vec<PinDir>,
    /// The client namespace.
    pub client: Netns,
    /// The edge namespace.
    pub edge: Netns,
    /// Backend namespaces.
    pub backends: Vec<Netns>,
    _switch: Netns,
    /// Logs and configuration files.
    pub scratch: Scratch,
    forwarding: &'static str,
}

impl LbLab {
    /// Builds the topology with `n` backends and starts everything; `forwarding` is `ipip` or
    /// `l2dsr`.
    pub fn start(n: usize, forwarding: &'static str) -> Result<Self> {
        // Labs in one process (tests run in parallel) get distinct names.
        static LABS: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("l{}", LABS.fetch_add(1, Ordering::Relaxed));
        let name = |short: &str| format!("{tag}-{short}");
        let scratch = Scratch::new(&name("lab"))?;
        let switch = Netns::new(&name("sw"))?;
        let client = Netns::new(&name("client"))?;
        let edge = Netns::new(&name("edge"))?;
        let backends: Vec<Netns> = (0..n)
            .map(|i| Netns::new(&name(&backend_name(i))))
            .collect::<Result<_>>()?;
        switch.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        switch.exec(&["ip", "link", "set", "br0", "up"])?;
        let mut hosts: Vec<(&Netns, String, Ipv4Addr)> = vec![(&client, "c".into(), CLIENT), (&edge, "e".into(), EDGE)];
        for (i, ns) in backends.iter().enumerate() {
            hosts.push((ns, backend_name(i), backend_addr(i)));
        }
        for (ns, short, addr) in &hosts {
            let port = format!("{short}-sw");
            veth(ns, "eth0", &switch, &port)?;
            switch.exec(&["ip", "link", "set", &port, "master", "br0"])?;
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        }
        client.exec(&["ip", "route", "add", &format!("{VIP}/32"), "via", &EDGE.to_string()])?;
        // veth leaves TCP/UDP checksums to "hardware" that never runs when XDP forwards the
        // frame: the client must fill them in itself.
        client.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        // Frames the edge's XDP program transmits reach the bridge only if the peer has XDP.
        let switch_pins = PinDir::new(&name("sw"));
        run_foobar_cmd(
            &switch,
            &[
                "attach-pass",
                "--interface",
                "e-sw",
                "--pin-dir",
                &switch_pins.path.display().to_string(),
            ],
        )?;

        let mut other_pins = vec![switch_pins];
        let mut backend_foobar = Vec::new();
        let mut servers = Vec::new();
        for (i, ns) in backends.iter().enumerate() {
            ns.exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            for (key, value) in [
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.eth0.rp_filter", "0"),
            ] {
                ns.sysctl(key, value)?;
            }
            let pins = PinDir::new(&name(&backend_name(i)));
            let config = scratch.file(&format!("{}.toml", backend_name(i)));
            std::fs::write(
                &config,
                format!(
                    "[node]\nname = \"{}\"\ninterfaces = [\"eth0\"]\nxdp_mode = \"{}\"\naddresses = [\"{}\"]\npin_dir = \"{}\"\n",
                    backend_name(i),
                    // The last backend decapsulates in generic (skb) mode, the others natively.
                    if i + 1 == n { "generic" } else { "native" },
                    backend_addr(i),
                    pins.path.display()
                ),
            )?;
            backend_foobar.push(start_foobar(
                ns,
                &config,
                &scratch.file(&format!("{}.log", backend_name(i))),
            )?);
            other_pins.push(pins);
            servers.push(Some(EchoServer::start(
                ns,
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT),
                &backend_name(i),
            )?));
        }
        let edge_pins = PinDir::new(&name("edge"));
        let mut lab = Self {
            edge_foobar: None,
            _backend_foobar: backend_foobar,
            servers,
            edge_pins,
            _other_pins: other_pins,
            client,
            edge,
            backends,
            _switch: switch,
            scratch,
            forwarding,
        };
        let all = vec![
            BackendSetting {
                present: true,
                weight: 100
            };
            n
        ];
        lab.write_edge_config(&all)?;
        lab.start_edge()?;
        Ok(lab)
    }

    /// Path of the edge's configuration file.
    pub fn edge_config(&self) -> PathBuf {
        self.scratch.file("edge.toml")
    }

    /// Writes the edge's configuration with these backend settings.
    pub fn write_edge_config(&self, backends: &[BackendSetting]) -> Result<()> {
        let mut text = format!(
            r#"[node]
name = "edge"
interfaces = ["eth0"]
addresses = ["{EDGE}"]
tunnel_source_v4 = "{EDGE}"
pin_dir = "{pins}"

[dataplane]
maglev_table_size = 65537
conntrack_entries = 65536

[[service]]
name = "web"
vip = "{VIP}"
port = {PORT}
forwarding = "{forwarding}"
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = 150, rise = 2, fall = 2 }}
"#,
            pins = self.edge_pins.path.display(),
            forwarding = self.forwarding,
        );
        for (i, b) in backends.iter().enumerate().filter(|(_, b)| b.present) {
            text += &format!(
                "\n[[service.backend]]\naddress = \"{}\"\nweight = {}\n",
                backend_addr(i),
                b.weight
            );
        }
        std::fs::write(self.edge_config(), text).context("writing the edge configuration")
    }

    /// Starts `foobar run` on the edge (after a stop, it adopts the pinned state).
    pub fn start_edge(&mut self) -> Result<()> {
        let log = self.scratch.file("edge.log");
        self.edge_foobar = Some(start_foobar(&self.edge, &self.edge_config(), &log)?);
        Ok(())
    }

    /// The VIP service address.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(VIP), PORT)
    }

    /// The edge's log so far.
    pub fn edge_log(&self) -> String {
        std::fs::read_to_string(self.scratch.file("edge.log")).unwrap_or_default()
    }
}

fn run_foobar_cmd(ns: &Netns, args: &[&str]) -> Result<String> {
    ns.exec_direct(&foobar_bin(), args)
}

/// Starts `foobar run` and waits until it says it is forwarding.
fn start_foobar(ns: &Netns, config: &std::path::Path, log: &std::path::Path) -> Result<ChildGuard> {
    let config = config.display().to_string();
    let child = ns.spawn(&foobar_bin(), &["run", "--config", &config], log)?;
    crate::wait_until(Duration::from_secs(10), "foobar to forward", || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("foobar is forwarding"))
    })
    .with_context(|| child.log_text())?;
    Ok(child)
}

//! The classic pair foobar replaces, for the failover benchmark: two load balancers running
//! keepalived (VRRPv3, the VIP on the master's interface) and HAProxy in TCP mode (bound to the
//! VIP on both, `ip_nonlocal_bind`), proxying to the same backends, on the lab's bridge and
//! addresses.

use crate::{
    lab::{backend_addr, backend_name, edge_addr, notify_script, wire, CLIENT, PORT, VIP},
    ChildGuard, EchoServer, Netns, Scratch,
};
use anyhow::{Context, Result};
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

/// One load balancer: its processes, then its namespace.
pub struct ClassicLb {
    /// keepalived (None once stopped).
    pub keepalived: Option<ChildGuard>,
    /// HAProxy (None once stopped).
    pub haproxy: Option<ChildGuard>,
    /// Namespace.
    pub ns: Netns,
}

/// A running keepalived + HAProxy pair with backends and a client.
pub struct ClassicLab {
    /// The load balancers; the first has the higher priority.
    pub lbs: Vec<ClassicLb>,
    _servers: Vec<EchoServer>,
    /// The client namespace.
    pub client: Netns,
    _backends: Vec<Netns>,
    _switch: Netns,
    /// Logs and configuration files.
    pub scratch: Scratch,
}

impl ClassicLab {
    /// Builds the pair with `n` backends and VRRP adverts every `interval_ms`, and waits until
    /// the first load balancer is master.
    pub fn start(n: usize, interval_ms: u32) -> Result<Self> {
        let scratch = Scratch::new("classic")?;
        let switch = Netns::new("csw")?;
        let client = Netns::new("cclient")?;
        let lb_ns: Vec<Netns> = (0..2)
            .map(|i| Netns::new(&format!("clb{}", i + 1)))
            .collect::<Result<_>>()?;
        let backends: Vec<Netns> = (0..n)
            .map(|i| Netns::new(&format!("c{}", backend_name(i))))
            .collect::<Result<_>>()?;
        let mut hosts: Vec<(&Netns, String, Ipv4Addr)> = vec![(&client, "c".into(), CLIENT)];
        for (i, ns) in lb_ns.iter().enumerate() {
            hosts.push((ns, format!("lb{}", i + 1), edge_addr(i)));
        }
        for (i, ns) in backends.iter().enumerate() {
            hosts.push((ns, backend_name(i), backend_addr(i)));
        }
        wire(&switch, &hosts)?;
        let servers = backends
            .iter()
            .enumerate()
            .map(|(i, ns)| EchoServer::start(ns, SocketAddr::new(IpAddr::V4(backend_addr(i)), PORT), &backend_name(i)))
            .collect::<Result<Vec<_>>>()?;
        let mut lbs = Vec::new();
        for (i, ns) in lb_ns.into_iter().enumerate() {
            ns.sysctl("net.ipv4.ip_nonlocal_bind", "1")?;
            let haproxy = start_haproxy(&ns, &scratch, i, n)?;
            let keepalived = start_keepalived(&ns, &scratch, i, interval_ms)?;
            lbs.push(ClassicLb {
                keepalived: Some(keepalived),
                haproxy: Some(haproxy),
                ns,
            });
        }
        let lab = Self {
            lbs,
            _servers: servers,
            client,
            _backends: backends,
            _switch: switch,
            scratch,
        };
        crate::wait_until(Duration::from_secs(10), "keepalived on lb1 to be master", || {
            lab.notifications(0).contains("MASTER")
        })
        .with_context(|| std::fs::read_to_string(lab.scratch.file("keepalived1.log")).unwrap_or_default())?;
        Ok(lab)
    }

    /// The VIP service address.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(VIP), PORT)
    }

    /// Load balancer `i`'s keepalived notify log: Unix ms, then keepalived's arguments.
    pub fn notifications(&self, i: usize) -> String {
        std::fs::read_to_string(self.notify_log(i)).unwrap_or_default()
    }

    fn notify_log(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("lb{}.notify", i + 1))
    }
}

fn start_haproxy(ns: &Netns, scratch: &Scratch, i: usize, backends: usize) -> Result<ChildGuard> {
    let mut conf = format!(
        "global\n  maxconn 5000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  \
         timeout server 60s\nfrontend web\n  bind {VIP}:{PORT}\n  default_backend pool\nbackend pool\n  balance roundrobin\n"
    );
    for b in 0..backends {
        conf += &format!("  server {} {}:{PORT}\n", backend_name(b), backend_addr(b));
    }
    let path = scratch.file(&format!("haproxy{}.cfg", i + 1));
    std::fs::write(&path, conf)?;
    let path = path.display().to_string();
    ns.spawn_system(
        &["haproxy", "-db", "-f", &path],
        &scratch.file(&format!("haproxy{}.log", i + 1)),
    )
}

/// Starts keepalived in `ns` with `conf`; its output is appended to `SCRATCH/TAG.log` (so a
/// restarted keepalived keeps one log) and its pid files are `SCRATCH/TAG-*.pid`.
pub fn keepalived(ns: &Netns, conf: &std::path::Path, scratch: &Scratch, tag: &str) -> Result<ChildGuard> {
    if Command::new("keepalived").arg("--version").output().is_err() {
        anyhow::bail!("keepalived is not installed (cargo xtask test installs it)");
    }
    let pid = |what: &str| scratch.file(&format!("{tag}-{what}.pid")).display().to_string();
    let conf = conf.display().to_string();
    ns.spawn_system(
        &[
            "keepalived",
            "-n",
            "-l",
            "-D",
            "-P",
            "-f",
            &conf,
            "-p",
            &pid("main"),
            "-r",
            &pid("vrrp"),
            "-c",
            &pid("check"),
        ],
        &scratch.file(&format!("{tag}.log")),
    )
}

fn start_keepalived(ns: &Netns, scratch: &Scratch, i: usize, interval_ms: u32) -> Result<ChildGuard> {
    let script = scratch.file(&format!("lb{}-notify.sh", i + 1));
    notify_script(&script, &scratch.file(&format!("lb{}.notify", i + 1)))?;
    let priority = if i == 0 { 150 } else { 100 };
    let conf = format!(
        "global_defs {{\n  vrrp_version 3\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  \
         virtual_router_id 51\n  priority {priority}\n  advert_int {}\n  notify \"{}\"\n  \
         virtual_ipaddress {{\n    {VIP}/32\n  }}\n}}\n",
        interval_ms as f64 / 1000.0,
        script.display()
    );
    let path = scratch.file(&format!("keepalived{}.conf", i + 1));
    std::fs::write(&path, conf)?;
    keepalived(ns, &path, scratch, &format!("keepalived{}", i + 1))
}

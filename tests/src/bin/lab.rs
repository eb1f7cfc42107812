//! The foobar.com lab in network namespaces: a client, two edges running the whole appliance
//! (XDP load balancer, VRRP, web tier, database routing, metrics and push), three L4 backends,
//! the demo app, a MariaDB primary and replica, and a monitoring namespace.
//!
//! - `foobar-lab`: brings the lab up, prints how to use it, stays until Ctrl-C or SIGTERM,
//!   then removes everything it made (`cargo xtask run`).
//! - `foobar-lab serve STATE_DIR`: the same, and writes `STATE_DIR/pid`, `STATE_DIR/banner`
//!   and `STATE_DIR/sockets` for `status` (`cargo xtask lab up` runs this detached).
//! - `foobar-lab status STATE_DIR`: the banner and each edge's live status.
//! - `--edges N` first (`cargo xtask run --edges N`): instead, N edges that all forward,
//!   announcing the VIP through BIRD to a router that spreads flows over them with ECMP, in
//!   front of three L4 backends (`foobar_tests::scalelab`).

use anyhow::{bail, Context, Result};
use foobar_tests::lab::{
    backend_addr, backend_name, database_addr, edge_addr, LabSpec, LbLab, APP, CLIENT, COLLECTOR, HTTPS_PORT,
    METRICS_PORT, MYSQL_PORTS, VIP, WEB_HOST,
};
use foobar_tests::scalelab::{self, ScaleLab};
use nix::sys::signal::{SigSet, Signal};
use std::{fmt::Write, path::PathBuf};

const BACKENDS: usize = 3;

/// The lab that runs: the VRRP pair with the whole stack, or announcing edges.
enum Lab {
    Pair(Box<LbLab>),
    Scale(Box<ScaleLab>),
}

impl Lab {
    fn banner(&self) -> Result<String> {
        match self {
            Lab::Pair(lab) => banner(lab),
            Lab::Scale(lab) => scale_banner(lab),
        }
    }

    fn sockets(&self) -> Vec<String> {
        let paths: Vec<PathBuf> = match self {
            Lab::Pair(lab) => (0..lab.edges.len()).map(|i| lab.edge_socket(i)).collect(),
            Lab::Scale(lab) => (0..lab.edges.len()).map(|i| lab.edge_socket(i)).collect(),
        };
        paths.iter().map(|p| p.display().to_string()).collect()
    }
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut edges = None;
    if args.first().map(String::as_str) == Some("--edges") {
        let n: usize = args
            .get(1)
            .and_then(|n| n.parse().ok())
            .filter(|n| (2..=8).contains(n))
            .context("--edges takes a number from 2 to 8")?;
        edges = Some(n);
        args.drain(..2);
    }
    match args.first().map(String::as_str) {
        None => run(None, edges),
        Some("serve") => run(
            Some(PathBuf::from(args.get(1).context("usage: foobar-lab serve STATE_DIR")?)),
            edges,
        ),
        Some("status") => status(&PathBuf::from(
            args.get(1).context("usage: foobar-lab status STATE_DIR")?,
        )),
        Some(other) => bail!("unknown command {other:?}: foobar-lab [--edges N] [serve STATE_DIR | status STATE_DIR]"),
    }
}

fn run(state: Option<PathBuf>, edges: Option<usize>) -> Result<()> {
    // Block the stop signals in every thread so the main thread can wait for them (and undo an
    // inherited "ignore", under which they would be discarded rather than wait).
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: installs SIG_DFL, no handler code runs.
        unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl)? };
    }
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block()?;
    if std::env::var_os("FOOBAR_NS_PREFIX").is_none() {
        std::env::set_var("FOOBAR_NS_PREFIX", "fblab");
    }
    let lab = match edges {
        None => Lab::Pair(Box::new(LbLab::build(LabSpec::foobar_com(BACKENDS))?)),
        Some(n) => Lab::Scale(Box::new(ScaleLab::build(&vec![scalelab::Daemon::Bird; n], BACKENDS)?)),
    };
    let banner = lab.banner()?;
    print!("{banner}");
    if let Some(dir) = &state {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("sockets"), lab.sockets().join("\n"))?;
        std::fs::write(dir.join("banner"), &banner)?;
        std::fs::write(dir.join("pid"), std::process::id().to_string())?;
    }
    if state.is_none() {
        println!("Ctrl-C stops the lab and removes everything it made.");
    }
    stop.wait()?;
    println!("stopping the lab");
    drop(lab);
    if let Some(dir) = &state {
        for file in ["sockets", "banner", "pid"] {
            let _ = std::fs::remove_file(dir.join(file));
        }
    }
    println!("the lab is down: namespaces, links, processes and pins removed");
    Ok(())
}

fn banner(lab: &LbLab) -> Result<String> {
    let mut b = String::new();
    writeln!(
        b,
        "foobar.com lab is up: VIP {VIP} (namespaces {}-*)",
        foobar_tests::prefix()
    )?;
    for (i, edge) in lab.edges.iter().enumerate() {
        writeln!(
            b,
            "  {} {} VRRP {}: XDP load balancer, web tier (HTTPS {HTTPS_PORT}), database routing (read-write {}, read-only {}), metrics",
            edge.name,
            edge.addr,
            lab.vrrp_state(i).to_uppercase(),
            MYSQL_PORTS.0,
            MYSQL_PORTS.1
        )?;
    }
    writeln!(
        b,
        "  client {CLIENT} (namespace {}): the master edge answers ARP for the VIP",
        lab.client.name
    )?;
    for i in 0..BACKENDS {
        writeln!(
            b,
            "  backend {} {} serves http://{VIP}:80 (L4, IPIP, direct return)",
            backend_name(i),
            backend_addr(i)
        )?;
    }
    writeln!(
        b,
        "  app {}:{}: the demo app behind https://{WEB_HOST}/api/, using the database through the VIP",
        APP.0, APP.1
    )?;
    writeln!(
        b,
        "  db1 {} MariaDB primary, db2 {} its GTID replica",
        database_addr(0),
        database_addr(1)
    )?;
    writeln!(
        b,
        "  monitoring {}:{}: receives the edges' metric and log pushes ({})",
        COLLECTOR.0,
        COLLECTOR.1,
        lab.scratch.file("collector.log").display()
    )?;
    writeln!(b)?;
    let client = &lab.client.name;
    let ca = lab.web_certificate().display().to_string();
    writeln!(
        b,
        "the whole stack, client → VIP → edge web tier → app → VIP → database router → MariaDB:"
    )?;
    writeln!(
        b,
        "  ip netns exec {client} curl -s --cacert {ca} --resolve {WEB_HOST}:{HTTPS_PORT}:{VIP} https://{WEB_HOST}/api/visit"
    )?;
    writeln!(b, "static files from the edges, and L4 balancing to the backends:")?;
    writeln!(
        b,
        "  ip netns exec {client} curl -s --cacert {ca} --resolve {WEB_HOST}:{HTTPS_PORT}:{VIP} https://{WEB_HOST}/"
    )?;
    writeln!(b, "  ip netns exec {client} curl -s http://{VIP}/")?;
    writeln!(b, "the database endpoints (user app, password app-secret):")?;
    writeln!(
        b,
        "  ip netns exec {client} mariadb -h {VIP} -P {} -u app -papp-secret -e 'SELECT @@server_id'",
        MYSQL_PORTS.1
    )?;
    writeln!(b, "status page and metrics of each edge (from the client namespace):")?;
    for i in 0..lab.edges.len() {
        writeln!(
            b,
            "  ip netns exec {client} curl -s http://{}:{METRICS_PORT}/metrics   (page: http://{}:{METRICS_PORT}/)",
            edge_addr(i),
            edge_addr(i)
        )?;
    }
    let foobar = foobar_tests::foobar_bin();
    status_commands(&mut b, (0..lab.edges.len()).map(|i| lab.edge_socket(i)))?;
    writeln!(
        b,
        "failover: ip netns exec {} ip link set eth0 down   (the other edge takes over in ~300 ms)",
        lab.edges[0].ns.name
    )?;
    let socket = lab.edge_socket(0).display().to_string();
    writeln!(
        b,
        "runtime operations on edge1 (each edge keeps its own; docs/deployment.md):"
    )?;
    writeln!(
        b,
        "  {} backend drain web {} --socket {socket}   (then: backend enable)",
        foobar.display(),
        foobar_tests::lab::backend_addr(0)
    )?;
    writeln!(
        b,
        "  {} vrrp step-down vip --socket {socket}   (then: vrrp resume)",
        foobar.display()
    )?;
    writeln!(b, "logs and configuration: {}", lab.scratch.path.display())?;
    Ok(b)
}

fn scale_banner(lab: &ScaleLab) -> Result<String> {
    let mut b = String::new();
    writeln!(
        b,
        "scale-out lab is up: VIPs {VIP}:80 and [{}]:80 announced by {} edges (namespaces {}-*)",
        scalelab::V6.vip,
        lab.edges.len(),
        foobar_tests::prefix()
    )?;
    for edge in &lab.edges {
        writeln!(
            b,
            "  {} {}: XDP load balancer announcing the VIPs through BIRD (kernel table {})",
            edge.name,
            edge.addr,
            scalelab::TABLE
        )?;
    }
    writeln!(
        b,
        "  router {} (namespace {}): BGP and BFD with every edge, ECMP over them on the 5-tuple",
        scalelab::ROUTER,
        lab.router.name
    )?;
    writeln!(
        b,
        "  client {} (namespace {}), behind the router",
        scalelab::CLIENT,
        lab.client.name
    )?;
    for i in 0..lab.servers.len() {
        writeln!(
            b,
            "  backend {} {} serves http://{VIP}:80 (IPIP, direct return)",
            backend_name(i),
            backend_addr(i)
        )?;
    }
    writeln!(b)?;
    let (client, router) = (&lab.client.name, &lab.router.name);
    writeln!(b, "a request (each new connection may cross another edge):")?;
    writeln!(b, "  ip netns exec {client} curl -s http://{VIP}/")?;
    writeln!(b, "  ip netns exec {client} curl -s -g http://[{}]/", scalelab::V6.vip)?;
    writeln!(b, "the router's routes to the VIPs, one next hop per announcing edge:")?;
    writeln!(b, "  ip netns exec {router} ip route show {VIP}")?;
    writeln!(b, "  ip netns exec {router} ip -6 route show {}", scalelab::V6.vip)?;
    let foobar = foobar_tests::foobar_bin();
    status_commands(&mut b, (0..lab.edges.len()).map(|i| lab.edge_socket(i)))?;
    let socket = lab.edge_socket(0).display().to_string();
    writeln!(
        b,
        "drain edge1 (its announcement goes, it forwards what still arrives): {} drain --socket {socket}   (then: undrain)",
        foobar.display()
    )?;
    writeln!(
        b,
        "crash edge1 (BFD takes it out in ~300 ms): ip netns exec {} ip link set eth0 down",
        lab.edges[0].ns.name
    )?;
    writeln!(b, "logs and configuration: {}", lab.scratch.path.display())?;
    Ok(b)
}

/// One `foobar status --socket` line per edge socket.
fn status_commands(b: &mut String, sockets: impl Iterator<Item = PathBuf>) -> Result<()> {
    let foobar = foobar_tests::foobar_bin();
    for socket in sockets {
        writeln!(b, "  {} status --socket {}", foobar.display(), socket.display())?;
    }
    Ok(())
}

fn status(dir: &std::path::Path) -> Result<()> {
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .context("the lab is not up (no pid file)")?
        .trim()
        .parse()?;
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        bail!("the lab is not up (process {pid} is gone)");
    }
    print!("{}", std::fs::read_to_string(dir.join("banner"))?);
    println!();
    for socket in std::fs::read_to_string(dir.join("sockets"))?.lines() {
        match foobar::ctl::query(std::path::Path::new(socket)) {
            Ok(s) => foobar::ctl::print(&s),
            Err(e) => println!("{socket}: {e:#}"),
        }
        println!();
    }
    Ok(())
}

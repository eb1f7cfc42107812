//! `cargo xtask run`: the demo lab in network namespaces, in the foreground until Ctrl-C.

use anyhow::Result;
use foobar_tests::lab::{backend_addr, backend_name, LabSpec, LbLab, CLIENT, HTTPS_PORT, VIP, WEB_HOST};
use nix::sys::signal::{SigSet, Signal};

const BACKENDS: usize = 3;

fn main() -> Result<()> {
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
    std::env::set_var("FOOBAR_NS_PREFIX", "fblab");
    let lab = LbLab::build(LabSpec::pair(BACKENDS, true, true))?;
    println!("foobar lab is up: VIP {} (namespace prefix fblab-)", lab.vip());
    for (i, edge) in lab.edges.iter().enumerate() {
        println!(
            "  {} {} VRRP {} (XDP: Maglev + conntrack + IPIP, direct server return)",
            edge.name,
            edge.addr,
            lab.vrrp_state(i).to_uppercase()
        );
    }
    println!("  client {CLIENT} reaches the VIP on the link: the master answers ARP for it");
    for i in 0..BACKENDS {
        println!(
            "  backend {} at {} (VIP on lo, foobar decapsulates)",
            backend_name(i),
            backend_addr(i)
        );
    }
    println!();
    println!("try:   ip netns exec {} curl -s http://{}/", lab.client.name, lab.vip());
    println!(
        "       ip netns exec {} curl -s --cacert {} --resolve {WEB_HOST}:{HTTPS_PORT}:{VIP} https://{WEB_HOST}/",
        lab.client.name,
        lab.web_certificate().display()
    );
    println!("       (HTTPS is served by the edges' own web tier: the master locally, the backup by IPIP)");
    let foobar = foobar_tests::foobar_bin();
    for (i, edge) in lab.edges.iter().enumerate() {
        println!(
            "{}: {} status --socket {}   |   {} stats --pin-dir {}",
            edge.name,
            foobar.display(),
            lab.edge_socket(i).display(),
            foobar.display(),
            edge.pins.path.display()
        );
    }
    println!(
        "failover: kill the master's foobar (pkill -f {}) and watch the other edge take over",
        lab.edge_config(0).display()
    );
    println!("logs:  {}", lab.scratch.path.display());
    println!("Ctrl-C stops the lab and removes everything it made.");
    stop.wait()?;
    println!("stopping the lab");
    drop(lab);
    Ok(())
}

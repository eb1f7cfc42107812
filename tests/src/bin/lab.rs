//! `cargo xtask run`: the demo lab in network namespaces, in the foreground until Ctrl-C.

use anyhow::Result;
use foobar_tests::lab::{backend_addr, backend_name, LbLab, CLIENT, EDGE};
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
    let lab = LbLab::start(BACKENDS, "ipip")?;
    println!("foobar lab is up: VIP {} (namespace prefix fblab-)", lab.vip());
    println!("  client {CLIENT} -> edge {EDGE} (XDP: Maglev + conntrack + IPIP, direct server return)");
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
        "stats: {} stats --pin-dir {}",
        foobar_tests::foobar_bin().display(),
        lab.edge_pins.path.display()
    );
    println!("logs:  {}", lab.scratch.path.display());
    println!("Ctrl-C stops the lab and removes everything it made.");
    stop.wait()?;
    println!("stopping the lab");
    drop(lab);
    Ok(())
}

//! Attaching: the program on the configured interfaces (or swapped into the links a previous
//! run pinned), whether a pinned link is still attached, and the empty program veth peers need.

use super::{
    pins::{ensure_bpffs, link_ifindex, link_pin, open_pin, pin_root},
    Dataplane, BPF_OBJECT,
};
use crate::config::{self, Config};
use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        Xdp, XdpMode,
    },
    EbpfLoader,
};
use foobar_common::names;
use std::path::Path;
use tracing::{info, warn};

impl Dataplane {
    /// Attaches the program to every configured interface, or swaps it into the XDP link a
    /// previous run pinned there (atomically: no packet sees no program).
    pub fn attach(&mut self, c: &Config) -> Result<()> {
        let root = self.root.clone();
        for interface in &c.node.interfaces {
            enable_forwarding(interface)?;
            let pin = link_pin(&root, interface);
            let program = self.program(names::PROGRAM)?;
            if pin.exists() {
                let pinned =
                    PinnedLink::from_pin(&pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
                let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned))?;
                let id = program
                    .attach_to_link(link)
                    .with_context(|| format!("replacing the program on {interface}"))?;
                // The pin keeps the link; this process's handle may go.
                drop(program.take_link(id)?);
                info!(interface, "replaced the XDP program in the pinned link");
                continue;
            }
            let id = match c.node.xdp_mode {
                config::XdpMode::Native => program.attach(interface, XdpMode::Driver),
                config::XdpMode::Generic => program.attach(interface, XdpMode::Skb),
                config::XdpMode::Auto => program.attach(interface, XdpMode::Driver).or_else(|e| {
                    warn!(interface, error = %e, "native XDP unavailable; using generic mode");
                    program.attach(interface, XdpMode::Skb)
                }),
            }
            .with_context(|| format!("attaching XDP to {interface}"))?;
            let link = FdLink::try_from(program.take_link(id)?)?;
            link.pin(&pin)
                .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
            info!(interface, "attached XDP program");
        }
        // Open the links now: after a switch to `[node] user` the pins are out of reach.
        for interface in &c.node.interfaces {
            self.attached(interface)?;
        }
        Ok(())
    }

    /// True while the XDP link pinned for `interface` is attached to it (a detached link, for
    /// example after `bpftool link detach` or a re-created interface, reports no device).
    pub fn attached(&mut self, interface: &str) -> Result<bool> {
        let Ok(ifindex) = crate::iface::index(interface) else {
            return Ok(false);
        };
        let fd = match self.link_fds.entry(interface.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(open_pin(&link_pin(&self.root, interface))?),
        };
        Ok(link_ifindex(fd)? == ifindex)
    }
}

/// bpf_fib_lookup forwards only on interfaces with forwarding enabled.
fn enable_forwarding(interface: &str) -> Result<()> {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        if Path::new(&path).exists() {
            std::fs::write(&path, "1").with_context(|| format!("enabling forwarding: {path}"))?;
        }
    }
    Ok(())
}

/// Attaches the empty `foobar_pass` program to `interface` and pins its link under `pin_dir`.
/// A veth drops frames that an XDP program on its peer transmits into it unless it has an
/// XDP program itself; labs attach this one to such peers (bridge ports included).
pub fn attach_pass(pin_dir: &Path, interface: &str) -> Result<()> {
    ensure_bpffs(pin_dir)?;
    let root = pin_root(pin_dir);
    std::fs::create_dir_all(&root).with_context(|| format!("creating pin directory {}", root.display()))?;
    let pin = root.join(format!("pass_{interface}"));
    if pin.exists() {
        return Ok(());
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&root)
        .load(BPF_OBJECT)
        .context("loading the BPF object")?;
    let program: &mut Xdp = ebpf
        .program_mut(names::PASS_PROGRAM)
        .ok_or_else(|| anyhow!("the BPF object has no program {}", names::PASS_PROGRAM))?
        .try_into()?;
    program.load()?;
    let id = program
        .attach(interface, XdpMode::Driver)
        .or_else(|_| program.attach(interface, XdpMode::Skb))
        .with_context(|| format!("attaching {} to {interface}", names::PASS_PROGRAM))?;
    FdLink::try_from(program.take_link(id)?)?
        .pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

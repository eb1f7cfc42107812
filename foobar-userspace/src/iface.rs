//! Network interfaces as the calling thread's network namespace sees them: index, link address
//! and the address to speak from. (sysfs would show the mount namespace's interfaces instead.)

use anyhow::{bail, Context, Result};
use std::net::IpAddr;

/// The interface's index.
pub fn index(interface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(interface).with_context(|| format!("interface {interface} not found"))
}

/// The interface's index and MAC address.
pub fn link(interface: &str) -> Result<(u32, [u8; 6])> {
    nix::ifaddrs::getifaddrs()
        .context("listing interfaces")?
        .filter(|i| i.interface_name == interface)
        .find_map(|i| {
            let link = i.address?;
            let link = link.as_link_addr()?;
            Some((link.ifindex() as u32, link.addr()?))
        })
        .with_context(|| format!("interface {interface} not found or without a MAC address"))
}

/// The interface's first IPv4 address, or its IPv6 link-local address.
pub fn source_address(interface: &str, v4: bool) -> Result<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().context("listing interface addresses")?;
    for ifa in addrs.filter(|i| i.interface_name == interface) {
        let Some(addr) = ifa.address else { continue };
        if v4 {
            if let Some(sin) = addr.as_sockaddr_in() {
                return Ok(IpAddr::V4(sin.ip()));
            }
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            if sin6.ip().is_unicast_link_local() {
                return Ok(IpAddr::V6(sin6.ip()));
            }
        }
    }
    bail!(
        "interface {interface} has no {} address",
        if v4 { "IPv4" } else { "IPv6 link-local" }
    )
}

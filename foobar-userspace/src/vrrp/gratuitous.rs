//! Telling the link who holds the VIPs now: gratuitous ARP requests and unsolicited neighbour
//! advertisements (override flag set) from the interface's MAC, sent by a new master so hosts
//! and switches update their caches at once instead of when their entries expire.

use anyhow::{Context, Result};
use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
/// Ethernet frames shorter than this are padded (real NICs do it too; veth does not).
const MIN_FRAME: usize = 60;

/// A gratuitous ARP request for `vip` from `mac`: sender and target address both the VIP,
/// broadcast, as keepalived sends it.
pub fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&vip.octets());
    f.resize(MIN_FRAME, 0);
    f
}

/// An unsolicited neighbour advertisement for `vip` from `mac` and link-local `source` to
/// all nodes, override flag set, with the target link-layer address option.
pub fn unsolicited_na(mac: [u8; 6], source: Ipv6Addr, vip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0, 0x20, 0, 0, 0]); // type, code, checksum, flags: override
    icmp.extend_from_slice(&vip.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let mut sum = super::sum_words(0, &source.octets());
    sum = super::sum_words(sum, &all_nodes.octets());
    sum += icmp.len() as u32 + 58;
    sum = super::sum_words(sum, &icmp);
    icmp[2..4].copy_from_slice(&super::fold(sum).to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255
    f.extend_from_slice(&source.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The frames announcing `vips` on an interface with `mac` and IPv6 link-local `source`
/// (IPv6 VIPs are skipped without one).
pub fn frames(mac: [u8; 6], source: Option<Ipv6Addr>, vips: &[IpAddr]) -> Vec<Vec<u8>> {
    vips.iter()
        .filter_map(|vip| match vip {
            IpAddr::V4(a) => Some(gratuitous_arp(mac, *a)),
            IpAddr::V6(a) => source.map(|s| unsolicited_na(mac, s, *a)),
        })
        .collect()
}

/// Sends raw Ethernet frames out of one interface.
pub struct FrameSender {
    fd: OwnedFd,
    ifindex: u32,
}

impl FrameSender {
    /// Opens an AF_PACKET socket for `interface`.
    pub fn open(interface: &str) -> Result<Self> {
        let ifindex = crate::iface::index(interface)?;
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening a packet socket (needs CAP_NET_RAW)");
        }
        // SAFETY: fd is a fresh descriptor this value now owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, ifindex })
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut to: libc::sockaddr_ll = unsafe { zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and the address are live for the call, with the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sending an announcement frame");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_names_the_vip_twice() {
        let f = gratuitous_arp([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[28..32], &[192, 0, 2, 10]);
        assert_eq!(&f[38..42], &[192, 0, 2, 10]);
    }

    #[test]
    fn neighbour_advert_checksums_to_zero() {
        let src: Ipv6Addr = "fe80::1".parse().expect("address");
        let f = unsolicited_na([2, 0, 0, 0, 0, 1], src, "2001:db8::10".parse().expect("vip"));
        let icmp = &f[54..];
        assert_eq!(icmp.len(), 32);
        let mut sum = crate::vrrp::sum_words(0, &f[22..54]);
        sum += icmp.len() as u32 + 58;
        sum = crate::vrrp::sum_words(sum, icmp);
        assert_eq!(crate::vrrp::fold(sum), 0, "a correct checksum sums to 0xffff");
        assert_eq!(icmp[4], 0x20, "override, not solicited");
        assert_eq!(f[21], 255, "hop limit");
    }
}

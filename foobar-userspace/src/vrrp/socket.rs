//! The wire side of one VRRP instance: a raw IP-protocol-112 socket bound to the instance's
//! interface. Adverts leave with TTL / hop limit 255 from the instance's source address (the
//! link-local one for IPv6), to the VRRP group or to each unicast peer; received packets come
//! back with their TTL and addresses so [`super::Advert::decode`] can check them.

use super::IPPROTO_VRRP;
use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::AsRawFd,
};
use tokio::io::unix::AsyncFd;

/// The IPv4 VRRP multicast group.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 VRRP multicast group.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

/// The VRRP group of `addr`'s family.
pub fn group_for(addr: IpAddr) -> IpAddr {
    if addr.is_ipv4() {
        IpAddr::V4(GROUP_V4)
    } else {
        IpAddr::V6(GROUP_V6)
    }
}

/// One received VRRP packet.
#[derive(Debug)]
pub struct Received {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (the group or this node).
    pub dst: IpAddr,
    /// TTL / hop limit as received.
    pub ttl: u8,
    /// The VRRP message, without IP header.
    pub message: Vec<u8>,
}

/// A raw VRRP socket on one interface for one address family.
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    ifindex: u32,
    source: IpAddr,
}

impl VrrpSocket {
    /// Opens the socket on `interface`, sending from `source`; joins the VRRP group unless the
    /// instance only talks to unicast peers.
    pub fn open(interface: &str, source: IpAddr, multicast: bool) -> Result<Self> {
        let ifindex = crate::iface::index(interface)?;
        let domain = if source.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
        let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_VRRP as i32)))
            .context("opening a raw VRRP socket (needs CAP_NET_RAW)")?;
        socket.set_nonblocking(true)?;
        socket
            .bind_device(Some(interface.as_bytes()))
            .with_context(|| format!("binding the VRRP socket to {interface}"))?;
        match source {
            IpAddr::V4(_) => {
                socket.set_ttl(255)?;
                socket.set_multicast_ttl_v4(255)?;
                socket.set_multicast_loop_v4(false)?;
                if multicast {
                    socket
                        .join_multicast_v4_n(&GROUP_V4, &socket2::InterfaceIndexOrAddress::Index(ifindex))
                        .with_context(|| format!("joining {GROUP_V4} on {interface}"))?;
                }
            }
            IpAddr::V6(_) => {
                socket.set_unicast_hops_v6(255).context("setting the hop limit")?;
                socket
                    .set_multicast_hops_v6(255)
                    .context("setting the multicast hop limit")?;
                socket
                    .set_multicast_loop_v6(false)
                    .context("disabling multicast loop")?;
                socket
                    .set_multicast_if_v6(ifindex)
                    .context("choosing the multicast interface")?;
                set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
                set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
                if multicast {
                    socket
                        .join_multicast_v6(&GROUP_V6, ifindex)
                        .with_context(|| format!("joining {GROUP_V6} on {interface}"))?;
                }
            }
        }
        Ok(Self {
            // SAFETY: the socket owns its descriptor for as long as the AsyncFd holds it.
            fd: unsafe { AsyncFd::register(socket) }
                .map_err(|e| anyhow::anyhow!("registering the VRRP socket: {e}"))?,
            ifindex,
            source,
        })
    }

    /// The address adverts are sent from.
    pub fn source(&self) -> IpAddr {
        self.source
    }

    /// Waits for the next packet.
    pub async fn recv(&self) -> Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| receive(fd.get_ref(), self.source.is_ipv6())) {
                Ok(Ok(Some(packet))) => return Ok(packet),
                // A packet too short to carry an IP header: nothing to decode.
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Err(e).context("receiving a VRRP packet"),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends `message` to `dst` from the instance's source address.
    pub fn send(&self, message: &[u8], dst: IpAddr) -> Result<()> {
        send(self.fd.get_ref(), message, self.source, dst, self.ifindex)
            .with_context(|| format!("sending a VRRP advert to {dst}"))
    }
}

fn set_int_option(socket: &Socket, level: i32, name: i32, value: libc::c_int) -> Result<()> {
    // SAFETY: the pointer and length describe a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setting a VRRP socket option");
    }
    Ok(())
}

/// Control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuffer([u8; 128]);

fn receive(socket: &Socket, v6: bool) -> io::Result<Option<Received>> {
    let mut buf = vec![0u8; 2048];
    let mut control = CmsgBuffer([0; 128]);
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = control.0.len();
    // SAFETY: msg points at live buffers of the lengths it states.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    if !v6 {
        // IPv4 raw sockets deliver the IP header.
        if buf.len() < 20 {
            return Ok(None);
        }
        let ihl = (buf[0] & 0x0f) as usize * 4;
        let total = (u16::from_be_bytes([buf[2], buf[3]]) as usize).min(buf.len());
        if ihl < 20 || total < ihl {
            return Ok(None);
        }
        return Ok(Some(Received {
            src: IpAddr::from([buf[12], buf[13], buf[14], buf[15]]),
            dst: IpAddr::from([buf[16], buf[17], buf[18], buf[19]]),
            ttl: buf[8],
            message: buf[ihl..total].to_vec(),
        }));
    }
    // SAFETY: the kernel filled `name` with a sockaddr_in6 for an AF_INET6 socket.
    let src = unsafe { *(&name as *const _ as *const libc::sockaddr_in6) };
    let mut dst = Ipv6Addr::UNSPECIFIED;
    let mut hop_limit = 0u8;
    // SAFETY: iterating the control messages the kernel wrote into `msg`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                    dst = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                }
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    hop_limit = std::ptr::read_unaligned(data as *const libc::c_int).clamp(0, 255) as u8;
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some(Received {
        src: IpAddr::V6(Ipv6Addr::from(src.sin6_addr.s6_addr)),
        dst: IpAddr::V6(dst),
        ttl: hop_limit,
        message: buf,
    }))
}

fn send(socket: &Socket, message: &[u8], source: IpAddr, dst: IpAddr, ifindex: u32) -> io::Result<()> {
    let mut control = CmsgBuffer([0; 128]);
    let target: socket2::SockAddr = match dst {
        IpAddr::V4(a) => SocketAddr::new(IpAddr::V4(a), 0).into(),
        IpAddr::V6(a) => SocketAddrV6::new(a, 0, 0, if is_link_scoped(&a) { ifindex } else { 0 }).into(),
    };
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = target.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = target.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
    // Pick the source address (and interface) per packet: binding a raw socket to an address
    // would also filter what it receives by destination, losing the multicast adverts.
    unsafe {
        let (level, kind, len) = match source {
            IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>()),
            IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>()),
        };
        msg.msg_controllen = libc::CMSG_SPACE(len as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(len as u32) as usize;
        let data = libc::CMSG_DATA(cmsg);
        match source {
            IpAddr::V4(a) => std::ptr::write_unaligned(
                data as *mut libc::in_pktinfo,
                libc::in_pktinfo {
                    ipi_ifindex: ifindex as i32,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            IpAddr::V6(a) => std::ptr::write_unaligned(
                data as *mut libc::in6_pktinfo,
                libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr { s6_addr: a.octets() },
                    ipi6_ifindex: ifindex,
                },
            ),
        }
    }
    // SAFETY: msg describes live buffers.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_link_scoped(a: &Ipv6Addr) -> bool {
    a.is_unicast_link_local() || (a.is_multicast() && a.segments()[0] & 0x000f == 2)
}

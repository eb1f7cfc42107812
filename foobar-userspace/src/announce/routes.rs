//! The kernel routing table foobar announces through: one blackhole route per announced VIP
//! (IPv4 /32, IPv6 /128) with protocol [`PROTOCOL`], written and read over rtnetlink. No rule
//! sends packets through the table; it is only where the BGP daemon learns what to announce
//! (BIRD's `kernel` protocol with `learn`, FRR's `ip import-table`). The routes outlive
//! foobar, so a restart changes nothing the routers see.

use anyhow::{bail, Context, Result};
use std::{
    collections::BTreeSet,
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

/// The route protocol foobar's routes carry (`/etc/iproute2/rt_protos.d/foobar.conf` names
/// it, so `ip route show table 4200` says `proto foobar`); routes of other protocols in the
/// table are left alone.
pub const PROTOCOL: u8 = 250;

const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_TABLE: u16 = 15;
const RTN_BLACKHOLE: u8 = 6;
/// How long the kernel may take to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// An rtnetlink socket for one routing table.
pub struct RouteTable {
    socket: OwnedFd,
    table: u32,
    sequence: u32,
}

impl RouteTable {
    /// Opens an rtnetlink socket for `table`. Writing routes needs CAP_NET_ADMIN in the calling
    /// thread (and in the thread that opened it).
    pub fn open(table: u32) -> Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening an rtnetlink socket");
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: the option value is a timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("setting the rtnetlink receive timeout");
        }
        Ok(Self {
            socket,
            table,
            sequence: 0,
        })
    }

    /// The table's number.
    pub fn table(&self) -> u32 {
        self.table
    }

    /// Adds (or keeps) the route announcing `vip`.
    pub fn add(&mut self, vip: IpAddr) -> Result<()> {
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
        let message = self.route_message(libc::RTM_NEWROUTE, flags as u16, Some(vip));
        self.request(&message)
            .with_context(|| format!("adding the route for {vip} to table {}", self.table))
    }

    /// Removes the route announcing `vip`; one that is not there is no error.
    pub fn remove(&mut self, vip: IpAddr) -> Result<()> {
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
        let message = self.route_message(libc::RTM_DELROUTE, flags as u16, Some(vip));
        match self.request(&message) {
            Err(e) if e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) == Some(libc::ESRCH) => Ok(()),
            other => other.with_context(|| format!("removing the route for {vip} from table {}", self.table)),
        }
    }

    /// The VIPs foobar's routes in the table announce now.
    pub fn list(&mut self) -> Result<BTreeSet<IpAddr>> {
        let mut vips = BTreeSet::new();
        for family in [libc::AF_INET, libc::AF_INET6] {
            let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
            let mut message = self.route_message(libc::RTM_GETROUTE, flags, None);
            message[NLMSG_HDRLEN] = family as u8;
            let sequence = self.sequence;
            self.send(&message)?;
            'dump: loop {
                let datagram = self.receive()?;
                for (kind, payload) in messages(&datagram, sequence)? {
                    match kind {
                        NLMSG_DONE => break 'dump,
                        NLMSG_ERROR => error_of(payload)?,
                        libc::RTM_NEWROUTE => {
                            if let Some(vip) = self.our_route(payload) {
                                vips.insert(vip);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(vips)
    }

    /// The VIP a dumped route announces, when it is one of foobar's routes in this table.
    fn our_route(&self, payload: &[u8]) -> Option<IpAddr> {
        let header = payload.get(..RTMSG_LEN)?;
        let (family, dst_len, table, protocol, kind) = (header[0], header[1], header[4], header[5], header[7]);
        if protocol != PROTOCOL || kind != RTN_BLACKHOLE {
            return None;
        }
        let mut in_table = u32::from(table) == self.table;
        let mut vip = None;
        for (kind, data) in attributes(&payload[RTMSG_LEN..]) {
            match (kind, data.len()) {
                (RTA_TABLE, 4) => in_table = u32::from_ne_bytes(data.try_into().ok()?) == self.table,
                (RTA_DST, 4) if family == libc::AF_INET as u8 && dst_len == 32 => {
                    vip = Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?)));
                }
                (RTA_DST, 16) if family == libc::AF_INET6 as u8 && dst_len == 128 => {
                    vip = Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?)));
                }
                _ => {}
            }
        }
        vip.filter(|_| in_table)
    }

    /// An RTM_*ROUTE request for this table: a blackhole route of [`PROTOCOL`] to `vip` (a
    /// dump request has none).
    fn route_message(&mut self, kind: u16, flags: u16, vip: Option<IpAddr>) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&self.sequence.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        let (family, dst_len) = match vip {
            Some(IpAddr::V4(_)) => (libc::AF_INET as u8, 32),
            Some(IpAddr::V6(_)) => (libc::AF_INET6 as u8, 128),
            None => (libc::AF_UNSPEC as u8, 0),
        };
        let (protocol, kind) = if vip.is_some() {
            (PROTOCOL, RTN_BLACKHOLE)
        } else {
            (0, 0)
        };
        // family, dst_len, src_len, tos, table (RTA_TABLE carries it), protocol, scope
        // (universe), type, flags.
        m.extend_from_slice(&[family, dst_len, 0, 0, 0, protocol, 0, kind]);
        m.extend_from_slice(&0u32.to_ne_bytes());
        if let Some(vip) = vip {
            push_attribute(&mut m, RTA_TABLE, &self.table.to_ne_bytes());
            match vip {
                IpAddr::V4(a) => push_attribute(&mut m, RTA_DST, &a.octets()),
                IpAddr::V6(a) => push_attribute(&mut m, RTA_DST, &a.octets()),
            }
        }
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    /// Sends one request and reads its acknowledgement.
    fn request(&mut self, message: &[u8]) -> Result<()> {
        let sequence = self.sequence;
        self.send(message)?;
        loop {
            let datagram = self.receive()?;
            for (kind, payload) in messages(&datagram, sequence)? {
                if kind == NLMSG_ERROR {
                    return error_of(payload);
                }
            }
        }
    }

    fn send(&self, message: &[u8]) -> Result<()> {
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the buffer and the address are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error()).context("sending to rtnetlink");
        }
        Ok(())
    }

    fn receive(&self) -> Result<Vec<u8>> {
        let mut buffer = vec![0u8; 32 * 1024];
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(self.socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("reading rtnetlink's answer");
        }
        buffer.truncate(n as usize);
        Ok(buffer)
    }
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// The messages in one datagram that answer request `sequence`: (type, payload).
pub(crate) fn messages(datagram: &[u8], sequence: u32) -> Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            bail!("rtnetlink sent a malformed message ({len} bytes of {})", rest.len());
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if seq == sequence {
            out.push((kind, &rest[NLMSG_HDRLEN..len]));
        }
        rest = rest.get(align(len)..).unwrap_or_default();
    }
    Ok(out)
}

/// An NLMSG_ERROR payload: Ok for an acknowledgement, else the kernel's errno.
fn error_of(payload: &[u8]) -> Result<()> {
    let code = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .context("rtnetlink sent a short error message")?;
    if code == 0 {
        return Ok(());
    }
    Err(io::Error::from_raw_os_error(-code).into())
}

/// The route attributes in `data`: (type, value).
pub(crate) fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((u16::from_ne_bytes([data[2], data[3]]), &data[4..len]));
        data = data.get(align(len)..).unwrap_or_default();
    }
    out
}

fn push_attribute(m: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    m.extend_from_slice(&(len as u16).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(value);
    m.resize(align(m.len()), 0);
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_back_as_written() {
        let mut m = Vec::new();
        push_attribute(&mut m, RTA_TABLE, &4200u32.to_ne_bytes());
        push_attribute(&mut m, RTA_DST, &[192, 0, 2, 10]);
        push_attribute(&mut m, 99, &[1, 2, 3]);
        assert_eq!(m.len() % 4, 0);
        let read = attributes(&m);
        assert_eq!(read[0], (RTA_TABLE, &4200u32.to_ne_bytes()[..]));
        assert_eq!(read[1], (RTA_DST, &[192u8, 0, 2, 10][..]));
        assert_eq!(read[2], (99, &[1u8, 2, 3][..]));
        // A truncated attribute ends the list instead of reading past it.
        assert_eq!(attributes(&m[..m.len() - 6]).len(), 2);
    }

    #[test]
    fn malformed_netlink_messages_are_refused() {
        let mut m = vec![0u8; 16];
        m[..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(messages(&m, 0).is_err());
        m[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(messages(&m, 0).is_err());
    }

    /// Writes, lists and removes routes in a table of a fresh network namespace (root only).
    #[test]
    fn routes_are_written_listed_and_removed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for a network namespace");
            return;
        }
        let result = std::thread::spawn(|| -> Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare")?;
            let mut table = RouteTable::open(4200)?;
            let v4: IpAddr = "192.0.2.10".parse()?;
            let v6: IpAddr = "2001:db8::10".parse()?;
            table.add(v4)?;
            table.add(v6)?;
            table.add(v4)?;
            assert_eq!(table.list()?, BTreeSet::from([v4, v6]));
            // Another table's routes are not ours.
            assert!(RouteTable::open(4201)?.list()?.is_empty());
            table.remove(v4)?;
            table.remove(v4)?;
            assert_eq!(table.list()?, BTreeSet::from([v6]));
            Ok(())
        })
        .join();
        result.expect("the namespace thread panicked").expect("routes");
    }
}

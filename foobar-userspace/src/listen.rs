//! Listening sockets of the web tier, the database router and the management listener, and
//! how they outlive a restart. Each socket bound is also handed to the service manager's
//! file-descriptor store (systemd's `FileDescriptorStoreMax=`); after a restart the manager
//! passes them back (`LISTEN_FDS`) and [`bind`] adopts the one for an address instead of
//! binding anew. The socket never closes, so a connection arriving while no foobar runs waits
//! in the kernel's accept queue for the new process: a restart refuses none.

use crate::notify;
use anyhow::{Context, Result};
use std::{
    net::{SocketAddr, TcpListener},
    os::fd::{AsFd, FromRawFd, OwnedFd, RawFd},
    sync::{Mutex, OnceLock},
};
use tracing::{info, warn};

/// The first descriptor the service manager passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Sockets passed by the service manager and not adopted yet, by local address.
static INHERITED: OnceLock<Mutex<Vec<(SocketAddr, OwnedFd)>>> = OnceLock::new();

/// A listening socket on `addr` (which may be an address not, or not yet, on this host: the
/// VIP): the one the service manager kept from the previous run, or a new one.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    if let Some(fd) = take_inherited(addr) {
        let listener = TcpListener::from(fd);
        listener
            .set_nonblocking(true)
            .with_context(|| format!("adopting the listener on {addr}"))?;
        info!(address = %addr, "adopted the listening socket kept across the restart");
        return Ok(listener);
    }
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        socket.set_freebind(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_freebind_ipv6(true)?;
    }
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    socket.listen(4096).with_context(|| format!("listening on {addr}"))?;
    notify::store_fd(socket.as_fd(), &store_name(addr));
    Ok(socket.into())
}

/// Closes the passed sockets no listener adopted (a listener removed from the configuration)
/// and takes them out of the service manager's store.
pub fn release_unadopted() {
    let Ok(mut left) = INHERITED.get_or_init(|| Mutex::new(inherit())).lock() else {
        return;
    };
    for (addr, fd) in left.drain(..) {
        notify::remove_stored_fd(&store_name(addr));
        drop(fd);
        info!(address = %addr, "closed a kept listening socket no listener uses any more");
    }
}

/// The store's name for the listener on `addr` (no colons: names are colon-separated).
fn store_name(addr: SocketAddr) -> String {
    format!("tcp-{addr}").replace(':', "_")
}

/// The inherited listener bound to `addr`, if the manager passed one.
fn take_inherited(addr: SocketAddr) -> Option<OwnedFd> {
    let inherited = INHERITED.get_or_init(|| Mutex::new(inherit()));
    let mut list = inherited.lock().ok()?;
    let i = list.iter().position(|(a, _)| *a == addr)?;
    Some(list.swap_remove(i).1)
}

/// Takes the sockets passed by the service manager (`LISTEN_PID` is this process,
/// `LISTEN_FDS` of them from descriptor 3) and clears the variables so no child sees them.
/// Descriptors that are not listening TCP sockets are closed.
fn inherit() -> Vec<(SocketAddr, OwnedFd)> {
    let ours = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if !ours {
        return Vec::new();
    }
    let mut out = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
        // SAFETY: the service manager passed descriptors LISTEN_FDS_START.. to this process
        // for it to own; nothing else in it uses them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        let socket = socket2::Socket::from(owned);
        match (
            socket.is_listener(),
            socket.local_addr().ok().and_then(|a| a.as_socket()),
        ) {
            (Ok(true), Some(addr)) => out.push((addr, OwnedFd::from(socket))),
            _ => warn!(fd, "closed a passed descriptor that is not a listening TCP socket"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_have_no_colons() {
        assert_eq!(store_name("10.0.0.1:443".parse().unwrap()), "tcp-10.0.0.1_443");
        assert_eq!(store_name("[fd00::1]:443".parse().unwrap()), "tcp-[fd00__1]_443");
    }
}

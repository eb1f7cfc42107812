//! Listening sockets shared by the web tier and the database router.

use anyhow::{Context, Result};
use std::net::SocketAddr;

/// A listening socket that may bind an address not (yet) on this host: the VIP.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
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
    Ok(socket.into())
}

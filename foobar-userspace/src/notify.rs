//! The service manager's readiness protocol (systemd's `sd_notify`): with `Type=notify`, the
//! unit is started once `foobar run` says `READY=1`, which it does only when the program is
//! attached, every listener is bound and privileges are dropped. Reloads and the stop are
//! reported too. Without `NOTIFY_SOCKET` in the environment, nothing is sent.

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use std::{
    io::{self, IoSlice},
    os::fd::{AsRawFd, BorrowedFd},
    os::unix::net::UnixDatagram,
};
use tracing::warn;

/// The daemon is serving.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()));
}

/// A reload has started; [`ready`] ends it.
pub fn reloading() {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

/// The daemon is shutting down.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// Hands `fd` to the manager's file-descriptor store under `name` (kept across restarts
/// where the unit sets `FileDescriptorStoreMax=`).
pub fn store_fd(fd: BorrowedFd<'_>, name: &str) {
    send_with(&format!("FDSTORE=1\nFDNAME={name}"), Some(fd));
}

/// Takes the descriptors stored under `name` out of the manager's store.
pub fn remove_stored_fd(name: &str) {
    send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
}

/// Sends `state` to the socket `NOTIFY_SOCKET` names.
fn send(state: &str) {
    send_with(state, None);
}

/// Sends `state`, with `fd` attached, to the socket `NOTIFY_SOCKET` names (a path, or `@name`
/// in the abstract namespace); a failure is logged, never fatal: the manager then times the
/// start out, or starts the next run without the descriptor.
fn send_with(state: &str, fd: Option<BorrowedFd<'_>>) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> io::Result<()> {
        let datagram = UnixDatagram::unbound()?;
        let name = socket.as_encoded_bytes();
        let addr = match name.strip_prefix(b"@") {
            Some(abstract_name) => UnixAddr::new_abstract(abstract_name)?,
            None => UnixAddr::new(name)?,
        };
        let fds = fd.map(|f| [f.as_raw_fd()]);
        let rights = fds.as_ref().map(|f| ControlMessage::ScmRights(f));
        sendmsg(
            datagram.as_raw_fd(),
            &[IoSlice::new(state.as_bytes())],
            rights.as_slice(),
            MsgFlags::empty(),
            Some(&addr),
        )?;
        Ok(())
    })();
    if let Err(e) = result {
        warn!(socket = %socket.to_string_lossy(), "telling the service manager {state:?} failed: {e}");
    }
}

/// CLOCK_MONOTONIC in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::os::{
        fd::{AsFd, FromRawFd},
        linux::net::SocketAddrExt,
        unix::net::SocketAddr,
    };

    /// One test (the variable is process-wide): readiness, then a stored descriptor.
    #[test]
    fn messages_and_descriptors_reach_an_abstract_socket() {
        let name = format!("foobar-notify-test-{}", std::process::id());
        let receiver = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        ready("serving");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        store_fd(listener.as_fd(), "tcp-test");
        std::env::remove_var("NOTIFY_SOCKET");

        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(got.starts_with("READY=1\nSTATUS=serving\nMAINPID="), "{got}");

        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(receiver.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        let fds: Vec<_> = msg
            .cmsgs()
            .unwrap()
            .filter_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        let text = std::str::from_utf8(msg.iovs().next().unwrap()).unwrap().to_string();
        assert_eq!(text, "FDSTORE=1\nFDNAME=tcp-test");
        assert_eq!(fds.len(), 1, "one descriptor attached");
        // SAFETY: the descriptor just arrived and is owned here.
        let passed = unsafe { std::net::TcpListener::from_raw_fd(fds[0]) };
        assert_eq!(passed.local_addr().unwrap(), listener.local_addr().unwrap());
    }
}

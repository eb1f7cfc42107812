//! A restart refuses no connection. foobar hands its listening sockets to the service
//! manager's descriptor store (`FDSTORE=1`) and adopts them from `LISTEN_FDS` on the next
//! start, as systemd does with `FileDescriptorStoreMax=`; this test plays the manager on the
//! notify socket. wrk keeps HTTPS keep-alive connections busy across a stop and a start: with
//! the stored sockets passed back no request fails (draining connections are told to close
//! with their last response; connections made while no process runs wait in the accept
//! queue). Without them (the probe) the same restart refuses wrk's connections.

use anyhow::{ensure, Context, Result};
use foobar_tests::{foobar_bin, wait_until, weblab::WebLab, weblab::ADDR};
use nix::sys::{
    signal::Signal,
    socket::{recvmsg, ControlMessageOwned, MsgFlags},
};
use std::{
    io::IoSliceMut,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{fs::PermissionsExt, net::UnixDatagram, process::CommandExt},
    },
    time::Duration,
};

/// The service manager's side of the notify socket.
struct Manager {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    /// The descriptor store: name and descriptor, in the order stored.
    stored: Vec<(String, OwnedFd)>,
    /// Whether the current process said READY=1.
    ready: bool,
}

impl Manager {
    fn new(lab: &WebLab) -> Result<Self> {
        let path = lab.scratch.file("notify");
        let socket = UnixDatagram::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            path,
            stored: Vec::new(),
            ready: false,
        })
    }

    /// Reads every message waiting: stores descriptors, notes readiness.
    fn receive(&mut self) -> Result<()> {
        loop {
            let mut buf = [0u8; 512];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 4]);
            // Close-on-exec here: no other child of this test may hold a listener.
            let flags = MsgFlags::MSG_CMSG_CLOEXEC;
            let msg = match recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut space), flags) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(passed) = c {
                    // SAFETY: descriptors that just arrived are owned here.
                    fds.extend(passed.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            let text = String::from_utf8_lossy(msg.iovs().next().context("message")?).into_owned();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_string();
            if text.contains("FDSTORE=1") {
                self.stored.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
            } else if text.contains("FDSTOREREMOVE=1") {
                self.stored.retain(|(n, _)| *n != name);
            }
            if text.starts_with("READY=1") {
                self.ready = true;
            }
        }
    }

    /// Starts foobar as systemd would: the notify socket, and with `pass_store` the stored
    /// descriptors from 3 on with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (the shell
    /// sets its own pid, then becomes foobar).
    fn start(&mut self, lab: &mut WebLab, pass_store: bool) -> Result<()> {
        self.ready = false;
        if !pass_store {
            // A manager without a store holds no listener either.
            self.stored.clear();
        }
        let mut command = lab.ns.command(std::path::Path::new("/bin/sh"))?;
        command
            .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
            .arg(foobar_bin())
            .args(["run", "--config"])
            .arg(lab.config())
            .env("NOTIFY_SOCKET", &self.path);
        if pass_store {
            let fds: Vec<RawFd> = self.stored.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
            let names: Vec<&str> = self.stored.iter().map(|(n, _)| n.as_str()).collect();
            command
                .env("LISTEN_FDS", fds.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            // SAFETY: dup2 is async-signal-safe; the sources are live descriptors above any
            // target the loop overwrites (they were received after 0..=2 and the lab's own).
            unsafe {
                command.pre_exec(move || {
                    for (i, fd) in fds.iter().enumerate() {
                        if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        lab.launch(command)?;
        wait_until(Duration::from_secs(15), "READY=1", || {
            self.receive().is_ok() && self.ready
        })
        .with_context(|| lab.log())
    }
}

/// Stops the running foobar with SIGTERM as systemd does, and waits for it.
fn stop(lab: &mut WebLab) -> Result<()> {
    let mut running = lab.foobar.take().context("foobar runs")?;
    running.signal(Signal::SIGTERM)?;
    ensure!(running.wait(Duration::from_secs(15))?, "foobar did not stop cleanly");
    Ok(())
}

/// wrk's report for HTTPS keep-alive load across a stop and a start of foobar.
fn load_across_a_restart(lab: &mut WebLab, manager: &mut Manager, pass_store: bool) -> Result<String> {
    let wrk = lab.ns.thread({
        let url = format!("https://{ADDR}/");
        move || foobar_tests::sh(&["wrk", "-t1", "-c8", "-d6s", "--timeout", "10s", &url])
    });
    std::thread::sleep(Duration::from_millis(1500));
    stop(lab)?;
    manager.start(lab, pass_store)?;
    wrk.join().map_err(|_| anyhow::anyhow!("wrk thread panicked"))??
}

#[test]
fn a_restart_with_the_stored_listeners_refuses_no_connection() -> Result<()> {
    let mut lab = WebLab::start("restart")?;
    // Run under the manager from the start, so that it holds the listeners.
    stop(&mut lab)?;
    let mut manager = Manager::new(&lab)?;
    manager.start(&mut lab, false)?;
    let names: Vec<&str> = manager.stored.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(
        names.contains(&"tcp-10.99.0.1_443") && names.contains(&"tcp-10.99.0.1_80"),
        "listeners stored: {names:?}"
    );

    let report = load_across_a_restart(&mut lab, &mut manager, true)?;
    ensure!(report.contains("Requests/sec"), "{report}");
    ensure!(
        !report.contains("Socket errors") && !report.contains("Non-2xx"),
        "requests failed across the restart with the stored listeners:\n{report}\n{}",
        lab.log()
    );
    ensure!(
        lab.log()
            .contains("adopted the listening socket kept across the restart"),
        "the new process bound anew:\n{}",
        lab.log()
    );

    // The probe: the same restart, the store not passed back.
    let report = load_across_a_restart(&mut lab, &mut manager, false)?;
    ensure!(
        report.contains("Socket errors: connect"),
        "without the stored listeners the restart should refuse connections:\n{report}"
    );
    Ok(())
}

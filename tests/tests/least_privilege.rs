//! Least privilege and the service manager's readiness protocol, on the web lab with an L4
//! service. Run as root without `[node] user`, the threads serving clients are root with every
//! capability (the probe); restarted with `user = "nobody"` as the package's unit starts it
//! (its capability bounding set, no new privileges, a notify socket), every thread runs as
//! nobody, the
//! threads serving clients hold no capability and the control thread only the kept ones, while
//! HTTPS is still served, `foobar status` says so, and reloads still read root-only keys and
//! write the maps. `READY=1` reaches the notify socket only once the listeners accept; a reload
//! is bracketed by `RELOADING=1` and `READY=1`; a stop says `STOPPING=1`.

use anyhow::{ensure, Context, Result};
use foobar::privileges::{ThreadStatus, KEPT};
use foobar_tests::{foobar_bin, weblab, weblab::WebLab, ChildGuard};
use nix::sys::signal::Signal;
use std::{
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    time::Duration,
};

/// One L4 service whose weight a reload changes (a map write by the control thread).
const EXTRA: &str = r#"
[[service]]
name = "l4"
vip = "10.99.0.100"
port = 8080
forwarding = "l2dsr"
health = { kind = "none" }

[[service.backend]]
address = "10.99.0.6"
weight = 100
"#;

/// nobody's uid on Debian.
const NOBODY: u32 = 65534;

/// The unit's `LimitNOFILE=`, as far as this test process may raise its own hard limit (a
/// container may withhold CAP_SYS_RESOURCE), for prlimit.
fn unit_nofile() -> Result<String> {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let me = ThreadStatus::parse(&std::fs::read_to_string("/proc/thread-self/status")?)?;
    const CAP_SYS_RESOURCE: u64 = 1 << 24;
    let limit = if me.effective & CAP_SYS_RESOURCE != 0 {
        65536
    } else {
        hard.min(65536)
    };
    Ok(format!("--nofile={limit}:{limit}"))
}

/// The package unit's `CapabilityBoundingSet=`, as setpriv takes it (`-all,+bpf,...`).
fn unit_bounding_set() -> Result<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../foobar-userspace/package/foobar.service"
    ))?;
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("the unit sets no CapabilityBoundingSet")?;
    let mut set = "-all".to_string();
    for cap in caps.split_whitespace() {
        set += &format!(",+{}", cap.trim_start_matches("CAP_").to_lowercase());
    }
    Ok(set)
}

/// Each thread of `pid`: its name and what its status says.
fn threads(pid: u32) -> Result<Vec<(String, u32, ThreadStatus)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = entry?.path();
        let tid: u32 = dir.file_name().and_then(|n| n.to_str()).context("task name")?.parse()?;
        let name = std::fs::read_to_string(dir.join("comm"))?.trim().to_string();
        out.push((
            name,
            tid,
            ThreadStatus::parse(&std::fs::read_to_string(dir.join("status"))?)?,
        ));
    }
    Ok(out)
}

/// The next message on the notify socket about the daemon's state (listening sockets handed
/// to the store are skipped: the restart test looks at those).
fn next_message(socket: &UnixDatagram) -> Result<String> {
    let mut buf = [0u8; 512];
    loop {
        let n = socket.recv(&mut buf).context("waiting for a notify message")?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("FDSTORE=1") {
            return Ok(text);
        }
    }
}

#[test]
fn threads_serving_clients_hold_no_privilege_and_readiness_waits_for_the_listeners() -> Result<()> {
    let mut lab = WebLab::start_with("priv", EXTRA)?;
    // A file only root may read, under the document root.
    let private = lab.root().join("root-only.html");
    std::fs::write(&private, "for root's eyes\n")?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))?;
    let code = |lab: &WebLab, path: &str| {
        lab.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{}{path}", weblab::HOST),
        ])
    };
    ensure!(
        code(&lab, "/root-only.html")? == "200",
        "root serves the root-only file (the probe)"
    );
    let pid = lab.foobar.as_ref().and_then(ChildGuard::pid).context("foobar runs")?;
    let root_workers: Vec<_> = threads(pid)?.into_iter().filter(|t| t.0.starts_with("web-")).collect();
    ensure!(!root_workers.is_empty(), "no web worker threads found");
    ensure!(
        root_workers.iter().all(|t| t.2.uid == 0 && t.2.effective != 0),
        "without [node] user the workers should be root with capabilities (the probe): {root_workers:?}"
    );

    // Restart as nobody, as the unit starts it: its descriptor limit, its bounding set, no new
    // privileges, a notify socket.
    let mut old = lab.foobar.take().context("foobar runs")?;
    old.signal(Signal::SIGTERM)?;
    ensure!(old.wait(Duration::from_secs(10))?, "foobar did not stop cleanly");
    let text = std::fs::read_to_string(lab.config())?;
    std::fs::write(
        lab.config(),
        text.replacen("[node]\n", "[node]\nuser = \"nobody\"\n", 1),
    )?;
    let notify_path = lab.scratch.file("notify");
    let notify = UnixDatagram::bind(&notify_path)?;
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777))?;
    notify.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut command = lab.ns.command(std::path::Path::new("/usr/bin/prlimit"))?;
    command
        .arg(unit_nofile()?)
        .args([
            "/usr/bin/setpriv",
            "--inh-caps=-all",
            "--no-new-privs",
            "--bounding-set",
        ])
        .arg(unit_bounding_set()?)
        .arg(foobar_bin())
        .args(["run", "--config"])
        .arg(lab.config())
        .env("NOTIFY_SOCKET", &notify_path);
    lab.launch(command)?;
    let ready = next_message(&notify).with_context(|| lab.log())?;
    // Connect the moment readiness arrives: the listener must already accept.
    let accepted = lab.ns.run(|| {
        std::net::TcpStream::connect_timeout(&"10.99.0.1:443".parse().expect("address"), Duration::from_secs(1))
    })?;
    ensure!(ready.starts_with("READY=1"), "first notify message: {ready:?}");
    ensure!(
        accepted.is_ok(),
        "READY=1 came before the HTTPS listener accepted: {accepted:?}"
    );

    let pid = lab.foobar.as_ref().and_then(ChildGuard::pid).context("foobar runs")?;
    let kept = KEPT.iter().fold(0u64, |set, c| set | 1 << c.bit);
    let all = threads(pid)?;
    ensure!(
        all.iter().filter(|t| t.0.starts_with("web-")).count() > 0,
        "no web workers: {all:?}"
    );
    for (name, tid, status) in &all {
        ensure!(status.uid == NOBODY, "thread {name} ({tid}) runs as uid {}", status.uid);
        let expected = if *tid == pid { kept } else { 0 };
        ensure!(
            status.effective == expected,
            "thread {name} ({tid}) has capabilities {:#x}, expected {expected:#x}",
            status.effective
        );
    }

    // Still serving, as nobody: a static file and a proxied request; the root-only file is
    // refused, and the log says why.
    ensure!(code(&lab, "/")? == "200", "static file not served as nobody");
    ensure!(
        code(&lab, "/api/name")? == "200",
        "proxied request not served as nobody"
    );
    ensure!(
        code(&lab, "/root-only.html")? == "403",
        "the root-only file was served as nobody"
    );
    ensure!(
        lab.log().contains("may not be opened by the user that serves files"),
        "the refusal is not logged:\n{}",
        lab.log()
    );

    let status = foobar::ctl::query(&lab.socket())?;
    let privileges = status.privileges.context("status shows no privileges")?;
    ensure!(privileges.uid == NOBODY, "status: {privileges:?}");
    let kept_names: Vec<String> = {
        let mut v: Vec<(u32, String)> = KEPT.iter().map(|c| (c.bit, c.name.to_string())).collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    };
    ensure!(privileges.control_thread == kept_names, "status: {privileges:?}");
    ensure!(privileges.other_threads.is_empty(), "status: {privileges:?}");
    let printed = lab.ns.exec_direct(
        &foobar_bin(),
        &["status", "--socket", &lab.socket().display().to_string()],
    )?;
    ensure!(
        printed.contains(&format!("runs as uid {NOBODY}")) && printed.contains("threads serving clients none"),
        "foobar status:\n{printed}"
    );

    // A reload re-reads the root-only keys and rewrites a Maglev table.
    for key in ["www-ec.key", "www-rsa.key", "default.key"] {
        let mode = std::fs::metadata(lab.pem(key))?.permissions().mode() & 0o777;
        ensure!(
            mode & 0o077 == 0,
            "{key} is not root-only (mode {mode:o}): the reload would prove nothing"
        );
    }
    let text = std::fs::read_to_string(lab.config())?;
    std::fs::write(lab.config(), text.replacen("weight = 100", "weight = 50", 1))?;
    let (code, out) = lab.reload()?;
    ensure!(
        code == 0 && out.contains("l4"),
        "reload as nobody: exit {code}\n{out}\n{}",
        lab.log()
    );
    let reloading = next_message(&notify)?;
    let after = next_message(&notify)?;
    ensure!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    ensure!(after.starts_with("READY=1"), "{after:?}");

    let mut running = lab.foobar.take().context("foobar runs")?;
    running.signal(Signal::SIGTERM)?;
    ensure!(next_message(&notify)?.starts_with("STOPPING=1"), "no STOPPING=1");
    ensure!(
        running.wait(Duration::from_secs(10))?,
        "foobar as nobody did not stop cleanly"
    );
    Ok(())
}

//! Least privilege. `foobar run` starts as root to load and pin the program, attach it, open
//! the raw VRRP and packet sockets and bind its listeners. Then, with `[node] user` set, the
//! whole process switches to that user and group: every thread loses every capability, except
//! the control thread (the one running the main loop, which writes the data-plane maps and
//! reloads), which keeps [`KEPT`]. The threads that parse TLS, HTTP and MySQL traffic hold
//! none, and a thread started later is emptied before it runs anything.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};
use tracing::{info, warn};

/// A Linux capability by number and name.
#[derive(Clone, Copy, Debug)]
pub struct Capability {
    /// Its number (`CAP_*` in linux/capability.h).
    pub bit: u32,
    /// Its name.
    pub name: &'static str,
    /// Why the control thread keeps it.
    pub why: &'static str,
}

/// What the control thread keeps after the switch. Nothing else is needed: the maps and links
/// are written through descriptors opened before the switch (since Linux 5.19 only creating a
/// map or loading a program asks for CAP_BPF), and the VRRP and packet sockets are open.
pub const KEPT: &[Capability] = &[Capability {
    bit: 2,
    name: "cap_dac_read_search",
    why: "a reload reads certificates, keys and credentials that only root may read",
}];

/// What the control thread also keeps on a node that announces its VIPs (`[announce]`).
pub const ANNOUNCING: Capability = Capability {
    bit: 12,
    name: "cap_net_admin",
    why: "announcing writes and removes the VIPs' routes in the kernel table the BGP daemon exports",
};

/// Every capability name by number, for status (numbers past the table are shown as numbers).
const NAMES: &[&str] = &[
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// Set once the process has switched user: threads started from then on drop everything.
static SWITCHED: AtomicBool = AtomicBool::new(false);

/// Switches the process to `user` (its primary group and the groups /etc/group lists it in,
/// such as `bird` for BIRD's control socket) and leaves the calling thread, which must be the
/// control thread, with only [`KEPT`] and `also`. Not running as root, or without a user,
/// nothing changes.
pub fn switch_to(user: Option<&str>, also: &[Capability]) -> Result<()> {
    let Some(name) = user else {
        return Ok(());
    };
    if !nix::unistd::geteuid().is_root() {
        warn!(user = name, "not started as root: [node] user is not switched to");
        return Ok(());
    }
    let account = nix::unistd::User::from_name(name)
        .with_context(|| format!("looking up [node] user {name}"))?
        .with_context(|| format!("[node] user {name}: no such user (create it: adduser --system --group {name})"))?;
    if account.uid.is_root() {
        bail!("[node] user {name} is root: name an unprivileged user");
    }
    // The control thread keeps its permitted set across the switch; every other thread loses
    // all (glibc makes each thread change its ids).
    prctl(libc::PR_SET_KEEPCAPS, 1).context("keeping capabilities across the user switch")?;
    let name_c = std::ffi::CString::new(name).context("[node] user contains a NUL byte")?;
    nix::unistd::initgroups(&name_c, account.gid).context("setting the user's groups")?;
    nix::unistd::setresgid(account.gid, account.gid, account.gid).context("switching group")?;
    nix::unistd::setresuid(account.uid, account.uid, account.uid)
        .with_context(|| format!("switching to user {name}"))?;
    let kept = KEPT.iter().chain(also).fold(0u64, |set, c| set | 1 << c.bit);
    capset(kept, kept).context("keeping the control thread's capabilities")?;
    prctl(libc::PR_SET_KEEPCAPS, 0).context("clearing keep-capabilities")?;
    // The switch made the process undumpable, which hands /proc/self/fd and the like to root:
    // the process metrics read them (nginx's workers do the same after their setuid).
    prctl(libc::PR_SET_DUMPABLE, 1).context("keeping /proc/self readable")?;
    SWITCHED.store(true, Ordering::SeqCst);
    info!(
        user = name,
        uid = account.uid.as_raw(),
        control_thread = ?KEPT.iter().chain(also).map(|c| c.name).collect::<Vec<_>>(),
        "switched user; the threads that serve clients hold no capabilities"
    );
    Ok(())
}

/// Runs first on every thread the daemon starts: after the switch, the thread gives up the
/// capabilities it inherited (from the control thread).
pub fn on_thread_start() {
    if SWITCHED.load(Ordering::SeqCst) {
        if let Err(e) = capset(0, 0) {
            warn!("dropping a new thread's capabilities failed: {e}");
        }
    }
}

/// The process's user and capabilities as `foobar status` shows them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Privileges {
    /// Effective user id of the control thread.
    pub uid: u32,
    /// The control thread's effective capabilities.
    pub control_thread: Vec<String>,
    /// The union of every other thread's effective capabilities.
    pub other_threads: Vec<String>,
}

/// Reads the process's threads' ids and effective capabilities from /proc.
pub fn current() -> Result<Privileges> {
    let pid = std::process::id();
    let mut out = Privileges::default();
    let mut others = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        let entry = entry?;
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue; // the thread ended
        };
        let thread = ThreadStatus::parse(&status)?;
        if entry.file_name().to_str() == Some(&pid.to_string()) {
            out.uid = thread.uid;
            out.control_thread = names(thread.effective);
        } else {
            others |= thread.effective;
        }
    }
    out.other_threads = names(others);
    Ok(out)
}

/// What /proc/…/status says of one thread.
#[derive(Debug, PartialEq)]
pub struct ThreadStatus {
    /// Effective user id.
    pub uid: u32,
    /// Effective capabilities.
    pub effective: u64,
}

impl ThreadStatus {
    /// Parses the `Uid:` and `CapEff:` lines of a status file.
    pub fn parse(status: &str) -> Result<Self> {
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .with_context(|| format!("no {key} line in a thread's status"))
        };
        let uid = field("Uid:")?
            .split_whitespace()
            .nth(1)
            .context("short Uid: line")?
            .parse()
            .context("Uid: line")?;
        let effective = u64::from_str_radix(field("CapEff:")?, 16).context("CapEff: line")?;
        Ok(Self { uid, effective })
    }
}

/// The names of the capabilities in `set`.
fn names(set: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| set & (1 << bit) != 0)
        .map(|bit| {
            NAMES
                .get(bit as usize)
                .map_or_else(|| format!("cap_{bit}"), |n| n.to_string())
        })
        .collect()
}

fn prctl(option: libc::c_int, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: PR_SET_KEEPCAPS and PR_SET_DUMPABLE take one integer argument; the rest are
    // ignored.
    let rc = unsafe { libc::prctl(option, value, 0, 0, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's effective and permitted sets (inheritable: empty).
fn capset(effective: u64, permitted: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3: two Data words
        pid: 0,               // the calling thread
    };
    let data = [
        Data {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: 0,
        },
        Data {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads one header and two data words, both live for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_status_reads_uid_and_effective_set() {
        let status =
            "Name:\tweb-0\nUid:\t0\t65534\t65534\t65534\nCapInh:\t0000000000000000\nCapEff:\t0000008000001004\n";
        let t = ThreadStatus::parse(status).unwrap();
        assert_eq!(t.uid, 65534);
        assert_eq!(names(t.effective), ["cap_dac_read_search", "cap_net_admin", "cap_bpf"]);
        assert_eq!(names(1 << 50), ["cap_50"]);
        assert!(ThreadStatus::parse("Uid:\t0\t0\t0\t0\n").is_err(), "no CapEff line");
    }

    #[test]
    fn kept_names_match_the_table() {
        for c in KEPT.iter().chain([&ANNOUNCING]) {
            assert_eq!(NAMES[c.bit as usize], c.name);
        }
    }
}

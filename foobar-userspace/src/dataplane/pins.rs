//! Pinning: where the data plane's maps and links live in bpffs so that forwarding outlives
//! the process, sizing the maps for a configuration, adopting or replacing what a previous run
//! pinned, opening pinned objects, and removing them all.

use crate::config::Config;
use anyhow::{Context, Result};
use aya::maps::{MapData, MapInfo};
use foobar_common::{maglev_elements, names, LAYOUT_VERSION};
use std::path::{Path, PathBuf};
use tracing::warn;

/// Directory under `pin_dir` that holds this layout version's pinned maps and links.
pub fn pin_root(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{LAYOUT_VERSION}"))
}

/// Pin path of the XDP link on `interface`.
pub(super) fn link_pin(root: &Path, interface: &str) -> PathBuf {
    root.join(format!("link_{interface}"))
}

/// Sizes of the maps the configuration asks for, by map name.
pub(super) fn map_sizes(c: &Config) -> [(&'static str, u32); 9] {
    let dp = &c.dataplane;
    let services = dp.max_services;
    let backends = dp.max_backends;
    [
        (names::SERVICES, services),
        (names::VIPS, services),
        (names::SERVICE_STATS, services),
        (names::BACKENDS, backends),
        (names::BACKEND_STATS, backends),
        (names::CONNTRACK, dp.conntrack_entries),
        (names::CONNTRACK6, dp.conntrack_entries_v6),
        (names::COUNTERS, foobar_common::Counter::COUNT),
        (names::SOURCES, dp.max_source_prefixes),
    ]
}

/// Size of the MAGLEV map for a configuration.
pub(super) fn maglev_entries(c: &Config) -> u32 {
    2 * c.dataplane.max_services * maglev_elements(c.dataplane.maglev_table_size)
}

/// Opens a pinned BPF object (map, program or link) by path (BPF_OBJ_GET).
pub fn open_pin(pin: &Path) -> Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    /// The BPF_OBJ_GET part of `union bpf_attr`.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// Explicit so the padding is zero: the kernel refuses non-zero bytes past the fields.
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: attr is a valid BPF_OBJ_GET attribute naming a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening pinned object {}", pin.display()));
    }
    // SAFETY: fd is a fresh descriptor owned from here on.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The ifindex an XDP link is attached to, 0 once detached (from the link's fdinfo).
pub(super) fn link_ifindex(link: &std::os::fd::OwnedFd) -> Result<u32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", link.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("ifindex:"))
        .and_then(|v| v.trim().parse().ok())
        .context("the pinned link is not an XDP link")
}

/// Removes a pinned map whose capacity differs from what the configuration asks for, so the
/// loader creates it anew. Its state (e.g. connection-table entries) is lost; Maglev keeps
/// flows on their backends while the backend set is unchanged.
pub(super) fn replace_if_resized(path: &Path, size: u32) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let info = MapInfo::from_pin(path).with_context(|| format!("reading pinned map {}", path.display()))?;
    if info.max_entries() != size {
        warn!(map = %path.display(), was = info.max_entries(), now = size, "map size changed: replacing the pinned map");
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there and the pin directory is under it.
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf"));
    if !mounted && pin_dir.starts_with("/sys/fs/bpf") {
        nix::mount::mount(
            Some("bpf"),
            "/sys/fs/bpf",
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
    }
    Ok(())
}

/// Detaches the program from every pinned link and removes all pinned state under `pin_dir`.
pub fn detach(pin_dir: &Path) -> Result<()> {
    let root = pin_root(pin_dir);
    if !root.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::remove_dir(&root).with_context(|| format!("removing {}", root.display()))?;
    let _ = std::fs::remove_dir(pin_dir);
    Ok(())
}

/// Opens one pinned map of a running (or stopped) data plane.
pub fn open_pinned(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_root(pin_dir).join(name);
    MapData::from_pin(&path).with_context(|| format!("opening {} (is the data plane loaded?)", path.display()))
}

//! Makes sure the BPF toolchain is present: the nightly toolchain with rust-src, and a
//! bpf-linker built against the nightly's own libLLVM (a mismatched LLVM miscompiles or fails
//! to link). Also installs missing OS tools through apt.

use anyhow::{bail, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// bpf-linker release built when missing; its `llvm-22` feature matches nightly 1.97.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Ensures nightly + rust-src and a matching bpf-linker.
pub fn ensure() -> Result<()> {
    if std::env::var_os("FOOBAR_PREBUILT").is_some() {
        return Ok(());
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?);
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let libllvm = nightly_libllvm(&sysroot)?;
    let soname = libllvm
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if bpf_linker_matches(&soname) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {soname} (about 90 s)");
    let prefix = llvm_prefix(&libllvm, &soname)?;
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", BPF_LINKER_LLVM_FEATURE])
        .env("LLVM_PREFIX", &prefix))?;
    if !bpf_linker_matches(&soname) {
        bail!("bpf-linker was built but does not run against {soname}");
    }
    Ok(())
}

/// The nightly's libLLVM shared library (`libLLVM.so.<ver>-rust-<ver>-nightly`).
fn nightly_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

/// True when bpf-linker runs and was linked against this exact libLLVM.
fn bpf_linker_matches(soname: &str) -> bool {
    let Ok(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return false;
    };
    let runs = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let linked = std::fs::read(&path).is_ok_and(|bytes| bytes.windows(soname.len()).any(|w| w == soname.as_bytes()));
    runs && linked
}

/// A directory laid out like an LLVM install (`lib/libLLVM.so`) pointing at the nightly's
/// library, plus a link named like its soname so the built linker finds it without
/// LD_LIBRARY_PATH (its runpath is this `lib`).
fn llvm_prefix(libllvm: &Path, soname: &str) -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let prefix = home.join(".cache/foobar").join(format!("llvm-prefix-{soname}"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", soname] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(prefix)
}

/// Path whose presence shows Debian's python3-prometheus-client is installed (the tests parse
/// metrics with it).
pub const PROMETHEUS_PARSER: &str = "/usr/lib/python3/dist-packages/prometheus_client";
/// The Galera provider the Galera tests load into MariaDB.
pub const GALERA: &str = "/usr/lib/galera/libgalera_smm.so";

/// Installs the Debian packages providing `tools` (commands, or paths) that are missing.
pub fn ensure_os_packages(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t} || test -e {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing
        .iter()
        .map(|t| match *t {
            "ip" => "iproute2",
            "sysctl" => "procps",
            "nft" => "nftables",
            "mariadbd" => "mariadb-server",
            "qemu-system-x86_64" => "qemu-system-x86",
            "busybox" => "busybox-static",
            "bird" => "bird2",
            "vtysh" => "frr",
            "depmod" | "modprobe" => "kmod",
            PROMETHEUS_PARSER => "python3-prometheus-client",
            GALERA => "galera-4",
            other => other,
        })
        .collect();
    eprintln!("xtask: installing {packages:?} for {missing:?}");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

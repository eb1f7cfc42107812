//! `cargo xtask vm`: a test VM on a stock Debian kernel under QEMU (KVM when it works, TCG
//! otherwise). The kernel package comes from the Debian archive by name and is cached; the
//! guest's root is this host's root file system, shared read-only over 9p under a tmpfs
//! overlay (so every tool and every artefact built here is there, and nothing the guest writes
//! reaches the host), booted through a small busybox initramfs that loads the 9p and overlay
//! modules. `vm/guest-init.sh` sets the guest up and runs the command the host wrote into the
//! shared output directory, whose exit status comes back the same way.

use crate::toolchain::run as run_command;
use anyhow::{bail, Context, Result};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

/// Modules the initramfs loads to mount the root (with their dependencies first).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// What to run in the guest.
pub enum Guest {
    /// Run these shell commands; their exit status is the VM's.
    Commands(String),
    /// An interactive shell on the console.
    Shell,
}

/// The kernel package `linux-image-amd64` points at (Debian bookworm's 6.1 LTS today).
pub fn default_kernel_package() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("apt-cache depends linux-image-amd64")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-"))
        })
        .map(str::to_owned)
        .context("linux-image-amd64 names no kernel package (apt-get update?)")
}

/// How QEMU runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when it works here (a short probe boot), TCG otherwise.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Emulation: slower, works everywhere.
    Tcg,
}

/// Boots `package`'s kernel and runs `guest` (with `systemd`, as a service of systemd booted as
/// PID 1); Ok(exit status of the guest's commands).
pub fn run(root: &Path, package: &str, guest: &Guest, memory_mib: u32, accel: Accel, systemd: bool) -> Result<i32> {
    let work = root.join("target/vm");
    let kernel = prepare_kernel(&work, package)?;
    let kvm = match accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => kvm_works(&kernel.image),
    };
    eprintln!(
        "xtask vm: {package} under {}",
        if kvm { "KVM" } else { "TCG emulation" }
    );
    let initrd = build_initrd(&work, &kernel)?;
    let out = work.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let commands = match guest {
        Guest::Commands(c) => c.clone(),
        Guest::Shell => "exec setsid sh -c 'exec bash -i <> /dev/ttyS0 >&0 2>&1'".into(),
    };
    std::fs::write(out.join("cmd"), commands)?;
    let guest_init = root.join("vm/guest-init.sh");
    let append = format!(
        "console=ttyS0 panic=-1 quiet foobar.init={} foobar.root={} foobar.modules={} foobar.systemd={}",
        guest_init.display(),
        root.display(),
        kernel.modules.display(),
        u8::from(systemd)
    );
    let status = Command::new("qemu-system-x86_64")
        .args(["-nographic", "-no-reboot", "-nic", "none", "-cpu", "max", "-smp", "2"])
        .args(["-accel", if kvm { "kvm" } else { "tcg" }])
        .args(["-m", &memory_mib.to_string()])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=vmout,security_model=none",
            out.display()
        ))
        .status()
        .context("starting qemu-system-x86_64")?;
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    let code =
        std::fs::read_to_string(out.join("status")).context("the guest wrote no exit status (it did not finish)")?;
    code.trim().parse().context("the guest's exit status")
}

/// Whether KVM can run this kernel: /dev/kvm can exist and still fail at the first vCPU
/// (nested setups), so the kernel is booted once without a root (it panics, and QEMU exits
/// cleanly with -no-reboot); a crash or a hang means no.
fn kvm_works(image: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let Ok(mut probe) = Command::new("qemu-system-x86_64")
        .args([
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-accel",
            "kvm",
            "-cpu",
            "max",
            "-m",
            "256",
        ])
        .arg("-kernel")
        .arg(image)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match probe.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            _ => {
                let _ = probe.kill();
                let _ = probe.wait();
                return false;
            }
        }
    }
}

/// A kernel unpacked from its Debian package.
struct Kernel {
    /// The vmlinuz.
    image: PathBuf,
    /// Its `lib/modules/VERSION` (with modules.dep).
    modules: PathBuf,
}

/// Downloads (once) and unpacks `package`; runs depmod on its modules.
fn prepare_kernel(work: &Path, package: &str) -> Result<Kernel> {
    let cache = work.join("cache");
    std::fs::create_dir_all(&cache)?;
    let tree = cache.join(package);
    if !tree.join("done").exists() {
        let debs = || -> Result<Vec<PathBuf>> {
            Ok(std::fs::read_dir(&cache)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
                })
                .collect())
        };
        if debs()?.is_empty() {
            eprintln!("xtask vm: downloading {package} from the Debian archive");
            run_command(Command::new("apt-get").args(["download", package]).current_dir(&cache))?;
        }
        let deb = debs()?.into_iter().next().context("apt-get download left no .deb")?;
        let _ = std::fs::remove_dir_all(&tree);
        run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        let version = kernel_version(&tree)?;
        run_command(Command::new("depmod").arg("-b").arg(&tree).arg(&version))?;
        std::fs::write(tree.join("done"), &version)?;
    }
    let version = std::fs::read_to_string(tree.join("done"))?;
    let version = version.trim();
    Ok(Kernel {
        image: tree.join(format!("boot/vmlinuz-{version}")),
        modules: tree.join(format!("lib/modules/{version}")),
    })
}

fn kernel_version(tree: &Path) -> Result<String> {
    std::fs::read_dir(tree.join("lib/modules"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the package holds no lib/modules/VERSION")
}

/// The busybox initramfs that mounts the host's root over 9p under a tmpfs overlay.
fn build_initrd(work: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let dir = work.join("initrd");
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["bin", "modules", "proc", "sys", "dev", "lower", "upper", "newroot"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("busybox (busybox-static)")?;
    let order = module_order(&kernel.modules)?;
    for module in &order {
        let name = Path::new(module).file_name().context("module name")?;
        std::fs::copy(kernel.modules.join(module), dir.join("modules").join(name))?;
    }
    let names: Vec<String> = order
        .iter()
        .filter_map(|m| Path::new(m).file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    std::fs::write(dir.join("modules.load"), names.join("\n") + "\n")?;
    let init = dir.join("init");
    std::fs::copy(work.join("../../vm/initramfs-init.sh"), &init).context("vm/initramfs-init.sh")?;
    let image = work.join("initrd.gz");
    run_command(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > {}",
        dir.display(),
        image.display()
    )))?;
    Ok(image)
}

/// [`BOOT_MODULES`] and their dependencies, each after what it needs (from modules.dep).
fn module_order(modules: &Path) -> Result<Vec<String>> {
    let deps_text = std::fs::read_to_string(modules.join("modules.dep")).context("modules.dep")?;
    let deps: Vec<(String, Vec<String>)> = deps_text
        .lines()
        .filter_map(|l| {
            let (module, needs) = l.split_once(':')?;
            Some((module.to_owned(), needs.split_whitespace().map(str::to_owned).collect()))
        })
        .collect();
    let path_of = |name: &str| {
        deps.iter()
            .map(|(m, _)| m)
            .find(|m| Path::new(m).file_stem().is_some_and(|s| s == name))
            .cloned()
    };
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in BOOT_MODULES {
        let module = path_of(name).with_context(|| format!("module {name} is not in this kernel"))?;
        let needs = deps
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, n)| n.clone())
            .unwrap_or_default();
        // modules.dep lists a module's dependencies with the deepest last.
        for m in needs.iter().rev().chain(std::iter::once(&module)) {
            if seen.insert(m.clone()) {
                order.push(m.clone());
            }
        }
    }
    Ok(order)
}

//! `cargo xtask`: everything a developer or operator runs. Builds make sure the BPF toolchain
//! is there first (nightly rust-src, bpf-linker built against the nightly's own LLVM).

mod benchdoc;
mod fuzz;
mod package;
mod toolchain;
mod vm;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

#[derive(Parser)]
#[command(about = "foobar's build, test, run and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the BPF toolchain if needed and build the XDP program and the `foobar` binary.
    Build {
        /// Optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Run the whole test suite: unit tests, the XDP program under BPF_PROG_TEST_RUN, and the
    /// namespace scenarios (needs root).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Bring up the embedded demo lab in network namespaces and stay in the foreground until
    /// Ctrl-C; with `-- --config FILE`, run foobar on this host with that configuration.
    Run {
        /// Instead of the VRRP pair, N (at least 2) edges that all forward, announcing the VIP
        /// through BIRD to a router that spreads flows over them (ECMP).
        #[arg(long, value_parser = clap::value_parser!(u8).range(2..=8))]
        edges: Option<u8>,
        /// Arguments for `foobar run` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The same lab for scripts: `up` starts it in the background, `status` shows it, `down`
    /// removes everything it made.
    Lab {
        /// up, status or down.
        #[arg(value_enum)]
        action: LabAction,
        /// With up: the scale-out lab with N announcing edges (as `run --edges N`).
        #[arg(long, value_parser = clap::value_parser!(u8).range(2..=8))]
        edges: Option<u8>,
    },
    /// Boot a stock Debian kernel under QEMU and run the data-plane suite inside (or, with
    /// --shell, an interactive shell where `cargo xtask run` works with the host's artefacts).
    Vm {
        /// An interactive shell instead of the suite.
        #[arg(long)]
        shell: bool,
        /// The Debian kernel package (default: what linux-image-amd64 depends on).
        #[arg(long)]
        kernel: Option<String>,
        /// Guest memory, MiB.
        #[arg(long, default_value_t = 4096)]
        memory: u32,
        /// The accelerator: auto (KVM when a probe boot works, else TCG), kvm or tcg.
        #[arg(long, value_enum, default_value = "auto")]
        accel: vm::Accel,
        /// Run this shell command in the guest instead of the suite (the suite is still
        /// built; its binaries are under target/debug/deps).
        #[arg(long)]
        run: Option<String>,
        /// Boot systemd as PID 1 (only sysinit.target's units) and run the commands as its
        /// service, as the package test does.
        #[arg(long)]
        systemd: bool,
    },
    /// Build the Debian package target/package/foobar_VERSION_amd64.deb from a release build
    /// and check it (lintian, systemd-analyze verify, the example configuration).
    Package,
    /// Renders docs/benchmarks.md's result tables from docs/bench/*.json.
    BenchDocs,
    /// Build the fuzz targets (nightly, AddressSanitizer, libFuzzer) and run each for a while:
    /// the parsers of input foobar does not control (request paths and ranges, VRRP adverts,
    /// the BGP daemons' answers, rtnetlink, configuration, control requests).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        target: Option<String>,
    },
    /// Benchmarks; writes target/bench/NAME.json, keeps it as docs/bench/NAME.json and renders
    /// it into docs/benchmarks.md.
    Bench {
        /// Which benchmark: xdp (per-packet cost, map memory), failover (takeover time and
        /// surviving connections against keepalived + HAProxy), web (the web tier against
        /// nginx), mysql (database routing against direct and HAProxy, with sysbench) or pktgen
        /// (packets/s offered by the kernel's pktgen and forwarded by XDP; where the kernel has
        /// the module, e.g. in the test VM).
        name: String,
    },
}

fn main() -> Result<()> {
    let root = workspace_root()?;
    match Cli::parse().command {
        Task::Build { release } => build(&root, release),
        Task::Test { args } => test(&root, &args),
        Task::Run { edges, args } => run(&root, edges, &args),
        Task::Lab { action, edges } => lab(&root, action, edges),
        Task::Vm {
            shell,
            kernel,
            memory,
            accel,
            run,
            systemd,
        } => vm_task(&root, shell, kernel, memory, accel, run, systemd),
        Task::Bench { name } => bench(&root, &name),
        Task::Package => package::package(&root).map(drop),
        Task::BenchDocs => benchdoc::refresh(&root),
        Task::Fuzz { seconds, target } => {
            toolchain::ensure()?;
            fuzz::fuzz(&root, seconds, target.as_deref())
        }
    }
}

/// What `cargo xtask lab` does.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LabAction {
    /// Bring the lab up in the background.
    Up,
    /// Show the lab and each edge's live status.
    Status,
    /// Take the lab down, removing everything it made.
    Down,
}

/// Where a background lab keeps its pid, banner, edge sockets and log.
const LAB_STATE: &str = "/run/foobar-lab";

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask lives inside the workspace")
}

/// Whether this runs in the test VM on the host's artefacts (`FOOBAR_PREBUILT`): nothing is
/// built there (under emulation a build would take an hour), binaries are run as they are.
fn prebuilt() -> bool {
    std::env::var_os("FOOBAR_PREBUILT").is_some()
}

/// Runs `cargo` with `args` in the workspace, failing on a non-zero exit. With prebuilt
/// artefacts, `build` does nothing and `run --bin NAME -- ARGS` runs the built binary.
fn cargo(root: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    if prebuilt() {
        match args.first() {
            Some(&"build") => return Ok(()),
            Some(&"run") => {
                let bin = args
                    .iter()
                    .position(|a| *a == "--bin")
                    .and_then(|i| args.get(i + 1))
                    .context("cargo run without --bin")?;
                let profile = if args.contains(&"--release") {
                    "release"
                } else {
                    "debug"
                };
                let rest = args.iter().position(|a| *a == "--").map_or(&[][..], |i| &args[i + 1..]);
                let status = Command::new(root.join("target").join(profile).join(bin))
                    .args(rest)
                    .envs(envs.iter().copied())
                    .status()
                    .with_context(|| format!("running the prebuilt {bin}"))?;
                if !status.success() {
                    bail!("{bin} failed ({status})");
                }
                return Ok(());
            }
            _ => {}
        }
    }
    let status = Command::new(env!("CARGO"))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("running cargo {args:?}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn build(root: &Path, release: bool) -> Result<()> {
    toolchain::ensure()?;
    let mut args = vec!["build", "--workspace", "--bins"];
    if release {
        args.push("--release");
    }
    cargo(root, &args, &[])
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    toolchain::ensure()?;
    toolchain::ensure_os_packages(&[
        "ip",
        "sysctl",
        "ethtool",
        "curl",
        "openssl",
        "keepalived",
        "bird",
        "vtysh",
        "nft",
        "wrk",
        "mariadbd",
        toolchain::GALERA,
        "rsync",
        "chromium",
        toolchain::PROMETHEUS_PARSER,
    ])?;
    cleanup_leftovers()?;
    cargo(root, &["fmt", "--all", "--", "--check"], &[])?;
    for manifest in ["foobar-ebpf/program/Cargo.toml", "foobar-userspace/fuzz/Cargo.toml"] {
        cargo(root, &["fmt", "--manifest-path", manifest, "--", "--check"], &[])?;
    }
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            // The fuzz targets' entry points too.
            "--features",
            "foobar-userspace/fuzzing",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(root, &["build", "--workspace", "--all-targets"], &[])?;
    let bin = root.join("target/debug/foobar");
    let envs = [("FOOBAR_BIN", bin.display().to_string())];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // nextest runs every test in its own process and ends with one summary line for the whole
    // suite; plain `cargo test` is the fallback where it is not installed, one test at a time
    // (tests of one binary share a process there, and scenario tests change the machine).
    let nextest = Command::new(env!("CARGO"))
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut args = if nextest {
        vec!["nextest", "run", "--workspace", "--no-fail-fast"]
    } else {
        eprintln!("xtask: cargo-nextest is not installed; running the suite with cargo test, one test at a time");
        vec!["test", "--workspace", "--no-fail-fast"]
    };
    args.extend(extra.iter().map(String::as_str));
    if !nextest {
        if !extra.iter().any(|a| a == "--") {
            args.push("--");
        }
        args.push("--test-threads=1");
    }
    cargo(root, &args, &envs)?;
    // The Debian package builds and passes lintian and systemd-analyze verify; every fuzz
    // target runs a little (`cargo xtask fuzz` runs them longer).
    if extra.is_empty() {
        package::package(root)?;
        fuzz::fuzz(root, 10, None)?;
    }
    // Then the data-plane suite again on a stock distribution kernel (docs/vm.md).
    if extra.is_empty() && std::env::var_os("FOOBAR_SKIP_VM").is_none() {
        eprintln!("xtask: the data-plane suite in the test VM (FOOBAR_SKIP_VM=1 skips it)");
        vm_task(root, false, None, 4096, vm::Accel::Auto, None, false)?;
        // And the package under a real systemd there (docs/deployment.md, vm/package-test.sh).
        eprintln!("xtask: the package under systemd in the test VM");
        let package = vm::default_kernel_package()?;
        let guest = vm::Guest::Commands("sh vm/package-test.sh".into());
        let code = vm::run(root, &package, &guest, 4096, vm::Accel::Auto, true)?;
        if code != 0 {
            bail!("the package test in the VM failed (exit {code})");
        }
    }
    Ok(())
}

/// Builds foobar and the lab binary (release) with the packages the lab uses; the lab binary.
fn lab_binary(root: &Path) -> Result<PathBuf> {
    build(root, true)?;
    toolchain::ensure_os_packages(&["ip", "sysctl", "ethtool", "curl", "openssl", "mariadbd", "bird"])?;
    cargo(
        root,
        &["build", "--release", "--package", "foobar-tests", "--bin", "foobar-lab"],
        &[],
    )?;
    Ok(root.join("target/release/foobar-lab"))
}

fn run(root: &Path, edges: Option<u8>, args: &[String]) -> Result<()> {
    if args.is_empty() {
        let lab = lab_binary(root)?;
        let lab_args: Vec<String> = edges.map(|n| vec!["--edges".into(), n.to_string()]).unwrap_or_default();
        // Ctrl-C goes to the whole process group: let the lab take it and clean up while this
        // process waits for it (the lab resets the disposition for itself).
        // SAFETY: installs SIG_IGN, no handler code runs.
        unsafe {
            nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn)?;
        }
        let status = Command::new(lab)
            .args(&lab_args)
            .env("FOOBAR_BIN", root.join("target/release/foobar"))
            .status()
            .context("starting the lab")?;
        if !status.success() {
            bail!("the lab exited with {status}");
        }
        return Ok(());
    }
    if edges.is_some() {
        bail!("--edges brings up the lab; it does not go with arguments for foobar run");
    }
    build(root, true)?;
    let status = Command::new(root.join("target/release/foobar"))
        .arg("run")
        .args(args)
        .status()
        .context("starting foobar")?;
    if !status.success() {
        bail!("foobar exited with {status}");
    }
    Ok(())
}

fn vm_task(
    root: &Path,
    shell: bool,
    kernel: Option<String>,
    memory: u32,
    accel: vm::Accel,
    run: Option<String>,
    systemd: bool,
) -> Result<()> {
    toolchain::ensure_os_packages(&["qemu-system-x86_64", "busybox", "depmod", "dpkg-deb", "ip"])?;
    let package = match kernel {
        Some(k) => k,
        None => vm::default_kernel_package()?,
    };
    // A shell or a command may use the release binaries (foobar, the lab, the benchmarks),
    // as `cargo xtask run|lab|bench` there do; xtask itself is built already (it is running).
    if shell || run.is_some() {
        build(root, true)?;
        cargo(
            root,
            &["build", "--release", "--package", "foobar-tests", "--bins"],
            &[],
        )?;
    }
    let guest = match (shell, run) {
        (true, _) => vm::Guest::Shell,
        (false, Some(command)) => vm::Guest::Commands(command),
        (false, None) => vm::Guest::Commands(suite_commands(root)?),
    };
    let code = vm::run(root, &package, &guest, memory, accel, systemd)?;
    if code != 0 {
        bail!("the guest's commands exited with {code}");
    }
    Ok(())
}

/// The data-plane suite the VM runs: the XDP program under BPF_PROG_TEST_RUN, load balancing
/// through real namespaces, health checks, configuration refusal.
const VM_SUITE: &[&str] = &[
    "xdp_program",
    "load_balancing",
    "health_checks",
    "bad_config_is_refused",
    "least_privilege",
];

/// Builds the suite's test binaries and `foobar` here; the guest's commands that run them.
fn suite_commands(root: &Path) -> Result<String> {
    toolchain::ensure()?;
    cargo(root, &["build", "--package", "foobar-userspace"], &[])?;
    let mut args = vec!["test", "--package", "foobar-tests", "--no-run", "--message-format=json"];
    for t in VM_SUITE {
        args.extend(["--test", t]);
    }
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the VM suite")?;
    if !out.status.success() {
        bail!("building the VM suite failed");
    }
    // Each compiler-artifact line of a test target names its executable.
    let executables: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let rest = l.split("\"executable\":\"").nth(1)?;
            Some(rest.split('"').next()?.to_owned())
        })
        // The package's binaries are built too; test executables live in deps/.
        .filter(|exe| exe.contains("/deps/"))
        .collect();
    if executables.len() != VM_SUITE.len() {
        bail!("expected {} test binaries, cargo built {executables:?}", VM_SUITE.len());
    }
    let foobar = root.join("target/debug/foobar");
    let mut script = String::from("failed=0\n");
    for exe in executables {
        script += &format!(
            "echo \"== {exe}\"; FOOBAR_LAB_CHECK_TIMEOUT_MS=1000 FOOBAR_BIN={} {exe} --test-threads=1 || failed=1\n",
            foobar.display()
        );
    }
    script += "exit $failed\n";
    Ok(script)
}

/// The pid of the background lab, when it runs.
fn lab_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("pid")).ok()?.trim().parse().ok()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    Some(pid)
}

fn lab(root: &Path, action: LabAction, edges: Option<u8>) -> Result<()> {
    use std::os::unix::process::CommandExt;
    if edges.is_some() && !matches!(action, LabAction::Up) {
        bail!("--edges chooses the lab that `lab up` brings up; status and down find it themselves");
    }
    let dir = PathBuf::from(LAB_STATE);
    let log = dir.join("lab.log");
    let tail = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    match action {
        LabAction::Up => {
            if let Some(pid) = lab_pid(&dir) {
                bail!("the lab is already up (process {pid}): cargo xtask lab status");
            }
            let bin = lab_binary(root)?;
            std::fs::create_dir_all(&dir)?;
            let _ = std::fs::remove_file(dir.join("banner"));
            let out = std::fs::File::create(&log)?;
            // Its own process group: a Ctrl-C in this terminal does not reach it.
            let edges: Vec<String> = edges.map(|n| vec!["--edges".into(), n.to_string()]).unwrap_or_default();
            let mut child = Command::new(bin)
                .args(&edges)
                .arg("serve")
                .arg(&dir)
                .env("FOOBAR_BIN", root.join("target/release/foobar"))
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .process_group(0)
                .spawn()
                .context("starting the lab")?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
            while !dir.join("banner").exists() {
                if let Some(status) = child.try_wait()? {
                    bail!("the lab exited with {status}:\n{}", tail(&log));
                }
                if std::time::Instant::now() > deadline {
                    bail!("the lab did not come up within 180 s:\n{}", tail(&log));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            print!("{}", std::fs::read_to_string(dir.join("banner"))?);
            println!(
                "cargo xtask lab status shows it; cargo xtask lab down removes it (log: {})",
                log.display()
            );
            Ok(())
        }
        LabAction::Status => {
            let status = Command::new(root.join("target/release/foobar-lab"))
                .arg("status")
                .arg(&dir)
                .status()
                .context("running foobar-lab status (is the lab built? cargo xtask lab up)")?;
            if !status.success() {
                bail!("the lab is not up");
            }
            Ok(())
        }
        LabAction::Down => {
            let Some(pid) = lab_pid(&dir) else {
                println!("the lab is not up");
                return Ok(());
            };
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while lab_pid(&dir) == Some(pid) {
                if std::time::Instant::now() > deadline {
                    bail!("the lab (process {pid}) did not stop within 60 s:\n{}", tail(&log));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            println!("{}", tail(&log));
            Ok(())
        }
    }
}

fn bench(root: &Path, name: &str) -> Result<()> {
    toolchain::ensure()?;
    match name {
        "xdp" => {}
        "failover" => toolchain::ensure_os_packages(&["ip", "ethtool", "keepalived", "haproxy"])?,
        "web" => toolchain::ensure_os_packages(&["ip", "curl", "openssl", "wrk", "nginx"])?,
        "mysql" => toolchain::ensure_os_packages(&["ip", "ethtool", "mariadbd", "sysbench", "haproxy"])?,
        "db-failover" => toolchain::ensure_os_packages(&["ip", "ethtool", "mariadbd"])?,
        "pktgen" => toolchain::ensure_os_packages(&["ip", "modprobe"])?,
        "scaleout" => toolchain::ensure_os_packages(&["ip", "ethtool", "bird"])?,
        other => {
            bail!("unknown benchmark {other:?} (available: xdp, failover, db-failover, web, mysql, pktgen, scaleout)")
        }
    }
    cargo(root, &["build", "--release", "--package", "foobar-userspace"], &[])?;
    cargo(
        root,
        &[
            "run",
            "--release",
            "--package",
            "foobar-tests",
            "--bin",
            "foobar-bench",
            "--",
            name,
        ],
        &[
            ("FOOBAR_BENCH_OUT", &root.join("target/bench").display().to_string()),
            ("FOOBAR_BIN", &root.join("target/release/foobar").display().to_string()),
        ],
    )?;
    benchdoc::publish(root, name)
}

/// Removes namespaces and pinned objects a killed test run left behind (prefix `fbt`).
fn cleanup_leftovers() -> Result<()> {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("ip netns list")?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        if let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with("fbt")) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    // Database servers of a killed run: their data directories are /tmp/fbt<pid>-...
    let _ = Command::new("pkill")
        .args(["-9", "-f", "^mariadbd --no-defaults --datadir=/tmp/fbt"])
        .status();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("fbt") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

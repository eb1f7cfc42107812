//! `cargo xtask fuzz`: builds the fuzz targets of `foobar-userspace/fuzz` with the nightly
//! toolchain, AddressSanitizer and libFuzzer's sanitizer coverage (what cargo-fuzz passes, so
//! no cargo-fuzz is needed), and runs each from its committed seeds and the corpus it grew on
//! earlier runs (`target/fuzz/corpus/TARGET`). A crash, a failed assertion or a sanitizer report
//! fails the task and names the input that caused it (`target/fuzz/artifacts/TARGET/`).

use anyhow::{bail, Context, Result};
use std::{path::Path, process::Command, time::Instant};

/// The targets, as `foobar-userspace/fuzz/Cargo.toml` names them.
const TARGETS: &[&str] = &[
    "request_path",
    "byte_range",
    "vrrp_advert",
    "bgp_daemon_answers",
    "netlink",
    "configuration",
    "control_request",
    "gtids",
];

/// The host target, named so that build scripts are not instrumented.
const HOST: &str = "x86_64-unknown-linux-gnu";

/// Builds every target, then runs `only` (or each) for `seconds`.
pub fn fuzz(root: &Path, seconds: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?} (targets: {})", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let dir = root.join("foobar-userspace/fuzz");
    let out = root.join("target/fuzz");
    let flags = [
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "-Zsanitizer=address",
        "-Cdebug-assertions",
        "-Coverflow-checks",
        "--cfg=fuzzing",
    ]
    .join(" ");
    let started = Instant::now();
    let status = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--bins",
            "--target",
            HOST,
        ])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .env("RUSTFLAGS", &flags)
        .env("CARGO_TARGET_DIR", &out)
        // The parsers need no XDP object.
        .env("FOOBAR_SKIP_BPF", "1")
        .status()
        .context("running cargo +nightly build for the fuzz targets")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    eprintln!("xtask: fuzz targets built in {:.0?}", started.elapsed());
    for target in targets {
        let corpus = out.join("corpus").join(target);
        let artifacts = out.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let seeds = dir.join("seeds").join(target);
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let run = Command::new(out.join(HOST).join("release").join(target))
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=10")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&corpus)
            .arg(&seeds)
            .output()
            .with_context(|| format!("running the {target} fuzz target"))?;
        let log = String::from_utf8_lossy(&run.stderr);
        if !run.status.success() {
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            bail!(
                "fuzz target {target} found a failure ({}); the input is in {}:\n{}",
                run.status,
                artifacts.display(),
                tail.join("\n")
            );
        }
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map_or("?".into(), |n| n.trim().to_owned());
        eprintln!("xtask: {target}: {runs} inputs in {seconds} s, no failure");
    }
    Ok(())
}

//! Builds the XDP program (foobar-ebpf/program) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker, and hands its path to the crate for `include_bytes!`.
//!
//! Set `FOOBAR_SKIP_BPF=1` to embed an empty object instead (cargo check / clippy / docs on a
//! machine without bpf-linker); such a binary refuses to load the data plane.

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ebpf_dir = manifest_dir.join("../foobar-ebpf");
    let object = out_dir.join("foobar-xdp.o");
    println!("cargo:rerun-if-env-changed=FOOBAR_SKIP_BPF");
    for watched in [
        "program/src",
        "program/Cargo.toml",
        "program/Cargo.lock",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(watched).display());
    }
    if env::var_os("FOOBAR_SKIP_BPF").is_some_and(|v| v != "0") {
        fs::write(&object, b"").expect("write placeholder object");
        return;
    }
    let target_dir = manifest_dir.join("../target/bpf");
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--manifest-path"])
        .arg(ebpf_dir.join("program/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's compiler settings are for the host; keep them away from the BPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().unwrap_or_else(|e| {
        panic!("running `rustup run nightly cargo` failed: {e}; `cargo xtask build` installs the toolchain")
    });
    if !status.success() {
        panic!(
            "building the XDP program failed ({status}). `cargo xtask build` installs the nightly \
             rust-src and bpf-linker it needs; FOOBAR_SKIP_BPF=1 builds without the data plane"
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/foobar-xdp");
    fs::copy(&built, &object).unwrap_or_else(|e| panic!("copy {} failed: {e}", built.display()));
}

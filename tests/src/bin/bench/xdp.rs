//! `cargo xtask bench xdp`: the data plane's cost per packet on each path, against baselines
//! measured the same way in the same run, and its map memory.
//!
//! Per-call mode: one packet per BPF_PROG_TEST_RUN call (repeat > 1 would feed the program its
//! own rewritten output), median of the kernel-measured times, baseline an empty XDP_PASS
//! program. Live-frame mode: frames really are transmitted or passed up; each call runs one
//! batch of fresh frames (the kernel resets recycled frames' pointers but not their bytes, so
//! longer runs would feed an encapsulating program its own output); baseline a trivial
//! swap-MACs-and-XDP_TX program.

use crate::Row;
use anyhow::{bail, Context, Result};
use foobar::{config, dataplane::Dataplane};
use foobar_common::names;
use foobar_tests::{
    packet::{Spec, ACK, SYN},
    testrun::{mac_text, Fixture, Live, XDP_PASS, XDP_TX},
    PinDir,
};
use std::time::Duration;

const CALLS: usize = 20_000;
/// Live-frame calls per program (programs take turns and each reports its median, so a burst
/// of load on this machine hits baseline and subject alike).
const LIVE_FRESH_CALLS: usize = 2_000;
const LIVE_RECYCLED_CALLS: usize = 41;
/// Frames per recycled live-frame call.
const LIVE_RECYCLED_REPEAT: u32 = 100_000;

fn median_ns(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_nanos() as f64
}

/// Median per-call times of the load balancer over `frames` (cycled, checking the verdict)
/// and of the empty program on the same frames, call by call in turn, so that a burst of load
/// on this machine hits baseline and subject alike: (path, baseline).
fn per_call(fx: &mut Fixture, frames: &[Vec<u8>], verdict: u32) -> Result<(f64, f64)> {
    let (mut path, mut baseline) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    for i in 0..CALLS {
        let frame = &frames[i % frames.len()];
        let (got, _, took) = fx.run_program(names::PROGRAM, frame)?;
        if got != verdict {
            bail!("{}: verdict {got}, expected {verdict}", names::PROGRAM);
        }
        path.push(took);
        baseline.push(fx.run_program(names::PASS_PROGRAM, frame)?.2);
    }
    Ok((median_ns(path), median_ns(baseline)))
}

/// Measures every path and the map memory.
pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut fx = Fixture::new("bench")?;
    // The L2 DSR backend (10.20.0.3) has the node's own MAC here, so a recycled live frame the
    // program rewrote is still addressed to the node: frames for other MACs are not balanced.
    let own = mac_text(&fx.node_mac);
    fx.ns.exec(&[
        "ip",
        "neigh",
        "replace",
        "10.20.0.3",
        "lladdr",
        &own,
        "dev",
        "t0",
        "nud",
        "permanent",
    ])?;

    let syns: Vec<Vec<u8>> = (0..CALLS)
        .map(|i| Spec::tcp("198.51.100.7", 1024 + (i % 60000) as u16, "192.0.2.1", 80, SYN).frame())
        .collect();
    let established = vec![Spec::tcp("198.51.100.7", 40000, "192.0.2.1", 80, ACK).frame()];
    let udp = vec![Spec::udp("198.51.100.7", 40000, "192.0.2.2", 53).frame()];
    let non_vip = vec![Spec::tcp("198.51.100.7", 40000, "203.0.113.9", 80, ACK).frame()];
    let inner = Spec::tcp("198.51.100.7", 40000, "192.0.2.9", 443, ACK).ip();
    let decap = vec![Spec::new("10.20.0.9", "10.20.0.1", 4, inner).frame()];
    // Warm the connection table for the established paths.
    fx.run(&established[0])?;
    fx.run(&udp[0])?;

    let paths: [(&str, &[Vec<u8>], u32); 5] = [
        ("vip_tcp_syn_new_flow", &syns, XDP_TX),
        ("vip_tcp_established", &established, XDP_TX),
        ("vip_udp", &udp, XDP_TX),
        ("non_vip", &non_vip, XDP_PASS),
        ("ipip_decap", &decap, XDP_PASS),
    ];
    for (name, frames, verdict) in paths {
        let (value, empty) = per_call(&mut fx, frames, verdict)?;
        rows.push(Row {
            name: format!("{name}_per_call"),
            value,
            unit: "ns/packet",
            baseline: "empty XDP_PASS program, per call, interleaved".into(),
            baseline_value: empty,
        });
    }

    // Live frames, fresh: every frame of every call starts as built (valid for every path).
    // Live frames, recycled: long runs on recycled frames, valid only for paths that leave the
    // headers where they were (MAC rewrites, pass), closer to a driver's steady state.
    let fresh: [(&str, &str, &Vec<u8>, &str); 6] = [
        ("reflect", names::REFLECT_PROGRAM, &established[0], ""),
        ("pass", names::PASS_PROGRAM, &non_vip[0], ""),
        ("vip_tcp_established_ipip", names::PROGRAM, &established[0], "reflect"),
        ("vip_udp_l2dsr", names::PROGRAM, &udp[0], "reflect"),
        ("non_vip", names::PROGRAM, &non_vip[0], "pass"),
        ("ipip_decap", names::PROGRAM, &decap[0], "pass"),
    ];
    let recycled: [(&str, &str, &Vec<u8>, &str); 4] = [
        ("reflect", names::REFLECT_PROGRAM, &established[0], ""),
        ("pass", names::PASS_PROGRAM, &non_vip[0], ""),
        ("vip_udp_l2dsr", names::PROGRAM, &udp[0], "reflect"),
        ("non_vip", names::PROGRAM, &non_vip[0], "pass"),
    ];
    for (mode, paths, calls) in [
        (Live::Fresh, &fresh[..], LIVE_FRESH_CALLS),
        (Live::Recycled(LIVE_RECYCLED_REPEAT), &recycled[..], LIVE_RECYCLED_CALLS),
    ] {
        let mut samples = vec![Vec::with_capacity(calls); paths.len()];
        for _ in 0..calls {
            for (i, (_, program, frame, _)) in paths.iter().enumerate() {
                samples[i].push(fx.run_live(program, frame, mode)?);
            }
        }
        let medians: Vec<f64> = samples.into_iter().map(median_ns).collect();
        let label = match mode {
            Live::Fresh => "live_fresh",
            Live::Recycled(_) => "live_recycled",
        };
        for (i, (name, _, _, which)) in paths.iter().enumerate().skip(2) {
            let (program, baseline_value) = match *which {
                "reflect" => ("swap-MACs + XDP_TX program", medians[0]),
                _ => ("empty XDP_PASS program", medians[1]),
            };
            let baseline = format!("{program}, {label}");
            let ns = medians[i];
            let rate = |ns: f64| if ns > 0.0 { 1e9 / ns } else { 0.0 };
            rows.push(Row {
                name: format!("{name}_{label}"),
                value: ns,
                unit: "ns/packet",
                baseline: baseline.clone(),
                baseline_value,
            });
            rows.push(Row {
                name: format!("{name}_{label}_rate"),
                value: rate(ns),
                unit: "packets/s",
                baseline,
                baseline_value: rate(baseline_value),
            });
        }
    }
    drop(fx);

    for (name, services, backends) in [
        ("default", None, None),
        ("100_vips_x_100_backends", Some(100), Some(10_000)),
    ] {
        let (kernel, entries) = map_memory(name, services, backends)?;
        rows.push(Row {
            name: format!("map_memory_{name}"),
            value: kernel as f64 / (1024.0 * 1024.0),
            unit: "MiB",
            baseline: "the entries' own bytes (keys + values, per CPU where per-CPU)".into(),
            baseline_value: entries as f64 / (1024.0 * 1024.0),
        });
    }

    Ok(rows)
}

/// Kernel memory (memlock) of the data plane's maps for a configuration with the default
/// `[dataplane]` section, or with the given service/backend capacities, and the bytes their
/// entries themselves take.
fn map_memory(name: &str, services: Option<u32>, backends: Option<u32>) -> Result<(u64, u64)> {
    let pins = PinDir::new(&format!("mem-{name}"));
    let mut text = format!(
        "[node]\nname = \"bench\"\ninterfaces = [\"lo\"]\npin_dir = \"{}\"\n[dataplane]\n",
        pins.path.display()
    );
    if let Some(s) = services {
        text += &format!("max_services = {s}\n");
    }
    if let Some(b) = backends {
        text += &format!("max_backends = {b}\n");
    }
    let config = config::parse(&text).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let before = bpf_map_memlock()?;
    let dp = Dataplane::load(&config)?;
    let after = bpf_map_memlock()?;
    drop(dp);
    Ok((after.0 - before.0, after.1 - before.1))
}

/// Over this process's BPF map file descriptors: the sum of `memlock`, and the sum of the
/// entries' bytes (max_entries × (key_size + value_size), values once per CPU in per-CPU maps).
fn bpf_map_memlock() -> Result<(u64, u64)> {
    /// Map types whose values exist once per CPU: PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH.
    const PER_CPU: [u64; 3] = [5, 6, 10];
    let cpus = std::thread::available_parallelism()?.get() as u64;
    let (mut total, mut entries) = (0, 0);
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy()))
            .context("reading fdinfo")?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += field("memlock:");
        let copies = if PER_CPU.contains(&field("map_type:")) { cpus } else { 1 };
        entries += field("max_entries:") * (field("key_size:") + field("value_size:") * copies);
    }
    Ok((total, entries))
}

//! `cargo xtask bench pktgen`: the kernel's packet generator (the pktgen module, where the
//! kernel has it) offers UDP packets to the VIP over a veth pair; foobar's XDP program on the
//! other end balances them to a backend by IPIP and transmits them back out (XDP_TX). Reports
//! packets per second offered (pktgen's own count) and forwarded (the data plane's
//! `transmitted` counter over pktgen's run time).
//!
//! ```text
//!  ns gen: g0 (pktgen, 10.30.0.2) ──veth── ns edge: e0 (foobar XDP, 10.30.0.1)
//!          XDP_PASS to accept            VIP 192.0.2.10:9/udp → backend 10.30.0.3 (IPIP, XDP_TX)
//! ```

use crate::Row;
use anyhow::{bail, Context, Result};
use foobar_tests::{foobar_bin, mac_of, testrun::mac_text, veth, ChildGuard, Netns, PinDir, Scratch};
use std::time::Duration;

/// Packets per run (fewer under emulation: `$FOOBAR_PKTGEN_COUNT`).
fn count() -> u64 {
    std::env::var("FOOBAR_PKTGEN_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000)
}

fn pktgen_write(ns: &Netns, file: &str, command: &str) -> Result<()> {
    ns.exec(&["sh", "-c", &format!("echo '{command}' > /proc/net/pktgen/{file}")])
        .with_context(|| format!("pktgen {file}: {command}"))
        .map(|_| ())
}

/// The `transmitted` counter of the pinned data plane.
fn transmitted(ns: &Netns, pins: &PinDir) -> Result<u64> {
    let out = ns.exec_direct(
        &foobar_bin(),
        &["stats", "--json", "--pin-dir", &pins.path.display().to_string()],
    )?;
    let stats: serde_json::Value = serde_json::from_str(&out)?;
    stats["counters"]
        .as_array()
        .and_then(|c| c.iter().find(|e| e[0] == "transmitted"))
        .and_then(|e| e[1].as_u64())
        .context("no transmitted counter")
}

/// Runs pktgen once and returns (packets sent, microseconds it took).
fn offer(gen: &Netns, e0_mac: &str, packets: u64) -> Result<(u64, u64)> {
    pktgen_write(gen, "kpktgend_0", "rem_device_all")?;
    pktgen_write(gen, "kpktgend_0", "add_device g0")?;
    for command in [
        format!("count {packets}"),
        "pkt_size 64".into(),
        "delay 0".into(),
        "dst 192.0.2.10".into(),
        format!("dst_mac {e0_mac}"),
        "src_min 198.51.100.1".into(),
        "src_max 198.51.100.254".into(),
        "udp_src_min 1024".into(),
        "udp_src_max 65000".into(),
        "udp_dst_min 9".into(),
        "udp_dst_max 9".into(),
        "flag IPSRC_RND".into(),
        "flag UDPSRC_RND".into(),
    ] {
        pktgen_write(gen, "g0", &command)?;
    }
    pktgen_write(gen, "pgctrl", "start")?;
    let result = gen.exec(&["cat", "/proc/net/pktgen/g0"])?;
    // "Result: OK: 1234567(c1234000+d567) usec, 2000000 (64byte,0frags)"
    let line = result
        .lines()
        .find(|l| l.trim_start().starts_with("Result: OK:"))
        .with_context(|| format!("pktgen reported no result:\n{result}"))?;
    let usec: u64 = line
        .split("OK:")
        .nth(1)
        .and_then(|r| r.trim().split('(').next())
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("pktgen result {line}"))?;
    let sent: u64 = line
        .split("usec,")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("pktgen result {line}"))?;
    Ok((sent, usec.max(1)))
}

/// Builds the pair, runs pktgen through foobar, and reports both rates.
pub fn run() -> Result<Vec<Row>> {
    if foobar_tests::sh(&["modprobe", "pktgen"]).is_err() {
        bail!(
            "this kernel has no pktgen module: run the benchmark in the test VM \
             (cargo xtask vm --run 'cargo xtask bench pktgen') or on a host whose kernel has it"
        );
    }
    let scratch = Scratch::new("pktgen")?;
    let gen = Netns::new("pktgen-gen")?;
    let edge = Netns::new("pktgen-edge")?;
    veth(&gen, "g0", &edge, "e0")?;
    gen.exec(&["ip", "addr", "add", "10.30.0.2/24", "dev", "g0"])?;
    edge.exec(&["ip", "addr", "add", "10.30.0.1/24", "dev", "e0"])?;
    let g0_mac = mac_text(&mac_of(&gen, "g0")?);
    let e0_mac = mac_text(&mac_of(&edge, "e0")?);
    // The backend lives behind g0: its frames come back to the generator and are dropped there.
    edge.exec(&[
        "ip",
        "neigh",
        "replace",
        "10.30.0.3",
        "lladdr",
        &g0_mac,
        "dev",
        "e0",
        "nud",
        "permanent",
    ])?;
    let gen_pins = PinDir::new("pktgen-gen");
    gen.exec_direct(
        &foobar_bin(),
        &[
            "attach-pass",
            "--interface",
            "g0",
            "--pin-dir",
            &gen_pins.path.display().to_string(),
        ],
    )?;
    let pins = PinDir::new("pktgen-edge");
    let config = scratch.file("edge.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
name = "pktgen-edge"
interfaces = ["e0"]
xdp_mode = "native"
addresses = ["10.30.0.1"]
tunnel_source_v4 = "10.30.0.1"
pin_dir = "{}"
control_socket = "{}"

[[service]]
name = "udp"
vip = "192.0.2.10"
port = 9
protocol = "udp"
health = {{ kind = "none" }}

[[service.backend]]
address = "10.30.0.3"
"#,
            pins.path.display(),
            scratch.file("edge.sock").display()
        ),
    )?;
    let _foobar: ChildGuard = foobar_tests::start_foobar(&edge, &config, &scratch.file("edge.log"))?;
    std::thread::sleep(Duration::from_millis(200));

    let packets = count();
    let before = transmitted(&edge, &pins)?;
    let (sent, usec) = offer(&gen, &e0_mac, packets)?;
    let forwarded = transmitted(&edge, &pins)? - before;
    let seconds = usec as f64 / 1e6;
    let offered_pps = sent as f64 / seconds;
    let forwarded_pps = forwarded as f64 / seconds;
    println!(
        "pktgen offered {sent} packets in {seconds:.3} s ({offered_pps:.0} pps); foobar forwarded {forwarded} ({forwarded_pps:.0} pps)"
    );
    Ok(vec![Row {
        name: "UDP to the VIP, balanced by IPIP and sent back out (XDP_TX), packets/s".into(),
        value: forwarded_pps,
        unit: "packets/s",
        baseline: "offered by pktgen".into(),
        baseline_value: offered_pps,
    }])
}

//! The XDP program under BPF_PROG_TEST_RUN: a namespace whose FIB knows the backends, the data
//! plane loaded with a small configuration, and one-frame runs. Used by the verdict tests and
//! the `xdp` benchmark.

use crate::{enter, ifindex_of, mac_of, packet::NODE_MAC, Netns, PinDir};
use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, XdpMode};
use foobar::{config, dataplane::Dataplane, health::Health, stats};
use foobar_common::names;
use std::time::Duration;

/// Frames per live-frame batch.
pub const LIVE_BATCH: u32 = 64;

/// How a live-frame run feeds the program.
#[derive(Clone, Copy, Debug)]
pub enum Live {
    /// One batch on a fresh page pool: every frame starts as built. Each call pays for setting
    /// up its frames, so baselines must be measured the same way.
    Fresh,
    /// This many frames on recycled pages: the kernel resets a recycled frame's pointers but
    /// not its bytes, so only programs that leave the headers in place see the frame as built.
    Recycled(u32),
}

/// XDP verdict: drop.
pub const XDP_DROP: u32 = 1;
/// XDP verdict: pass to the kernel.
pub const XDP_PASS: u32 = 2;
/// XDP verdict: transmit back out.
pub const XDP_TX: u32 = 3;

/// MAC the namespace's FIB has for 10.20.0.2.
pub const BACKEND4_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// MAC the namespace's FIB has for 10.20.0.3.
pub const BACKEND4B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// MAC the namespace's FIB has for fd20::2.
pub const BACKEND6_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x06];
/// MAC the namespace's FIB has for fd20::3.
pub const BACKEND6B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];

/// What the fixture's configuration varies in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Variant {
    /// web4 gets a second backend, 10.20.0.3, and web6 one, fd20::3.
    pub extra_backend: bool,
    /// `[dataplane] new_flow_cap` (0 = unlimited).
    pub new_flow_cap: u32,
    /// web4 allows 198.51.100.0/24 but denies 198.51.100.66; web6 denies 2001:db8:bad::/48.
    pub source_policy: bool,
}

/// The configuration: services web4 (192.0.2.1:80, IPIP to 10.20.0.2), dns (192.0.2.2:53/udp,
/// L2 DSR to 10.20.0.3), local (192.0.2.3:443 on this node), anyport (192.0.2.4, every TCP
/// port, IPIP to 10.20.0.2), and for IPv6 web6 (2001:db8::1:80, IPIP to fd20::2), dns6
/// (2001:db8::2:53/udp, L2 DSR to fd20::2) and local6 (2001:db8::3:443 on this node).
pub fn config_text(pin: &str, variant: Variant) -> String {
    let cap = variant.new_flow_cap;
    let (extra, extra6) = if variant.extra_backend {
        (
            "[[service.backend]]\naddress = \"10.20.0.3\"\n",
            "[[service.backend]]\naddress = \"fd20::3\"\n",
        )
    } else {
        ("", "")
    };
    let (policy, policy6) = if variant.source_policy {
        (
            "allow = [\"198.51.100.0/24\"]\ndeny = [\"198.51.100.66\"]\n",
            "deny = [\"2001:db8:bad::/48\"]\n",
        )
    } else {
        ("", "")
    };
    format!(
        r#"
[node]
name = "testrun"
interfaces = ["t0"]
addresses = ["10.20.0.1", "fd20::1"]
tunnel_peers = ["10.20.0.9", "fd20::9"]
tunnel_source_v4 = "10.20.0.1"
tunnel_source_v6 = "fd20::1"
pin_dir = "{pin}"

[dataplane]
maglev_table_size = 1009
conntrack_entries = 1024
conntrack_entries_v6 = 1024
new_flow_cap = {cap}
max_services = 8
max_backends = 64

[[service]]
name = "web4"
vip = "192.0.2.1"
port = 80
health = {{ kind = "none" }}
{policy}[[service.backend]]
address = "10.20.0.2"
{extra}
[[service]]
name = "dns"
vip = "192.0.2.2"
port = 53
protocol = "udp"
forwarding = "l2dsr"
health = {{ kind = "none" }}
[[service.backend]]
address = "10.20.0.3"

[[service]]
name = "web6"
vip = "2001:db8::1"
port = 80
health = {{ kind = "none" }}
{policy6}[[service.backend]]
address = "fd20::2"
{extra6}
[[service]]
name = "local"
vip = "192.0.2.3"
port = 443
health = {{ kind = "none" }}
[[service.backend]]
address = "10.20.0.1"

[[service]]
name = "anyport"
vip = "192.0.2.4"
port = 0
health = {{ kind = "none" }}
[[service.backend]]
address = "10.20.0.2"

[[service]]
name = "dns6"
vip = "2001:db8::2"
port = 53
protocol = "udp"
forwarding = "l2dsr"
health = {{ kind = "none" }}
[[service.backend]]
address = "fd20::2"

[[service]]
name = "local6"
vip = "2001:db8::3"
port = 443
health = {{ kind = "none" }}
[[service.backend]]
address = "fd20::1"
"#
    )
}

/// `02:00:…` notation of a MAC address.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A namespace with veth t0 (10.20.0.1, fd20::1) whose FIB knows the backends' MACs, and the
/// data plane loaded with [`config_text`]. The test thread enters the namespace.
pub struct Fixture {
    /// The loaded data plane.
    pub dp: Dataplane,
    ifindex: u32,
    /// MAC of t0 (the egress interface).
    pub node_mac: [u8; 6],
    /// Where the maps are pinned.
    pub pins: PinDir,
    /// The namespace (the test thread has entered it).
    pub ns: Netns,
}

impl Fixture {
    /// Builds the namespace `name`, loads the data plane and enters the namespace.
    pub fn new(name: &str) -> Result<Self> {
        let ns = Netns::new(name)?;
        ns.exec(&["ip", "link", "add", "t0", "type", "veth", "peer", "name", "t1"])?;
        ns.exec(&["ip", "link", "set", "t0", "address", &mac_text(&NODE_MAC)])?;
        ns.exec(&["ip", "link", "set", "t0", "up"])?;
        ns.exec(&["ip", "link", "set", "t1", "up"])?;
        ns.exec(&["ip", "addr", "add", "10.20.0.1/24", "dev", "t0"])?;
        ns.exec(&["ip", "addr", "add", "fd20::1/64", "dev", "t0", "nodad"])?;
        for (addr, mac) in [
            ("10.20.0.2", BACKEND4_MAC),
            ("10.20.0.3", BACKEND4B_MAC),
            ("fd20::2", BACKEND6_MAC),
            ("fd20::3", BACKEND6B_MAC),
        ] {
            let mac = mac_text(&mac);
            ns.exec(&[
                "ip",
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac,
                "dev",
                "t0",
                "nud",
                "permanent",
            ])?;
        }
        ns.sysctl("net.ipv4.conf.t0.forwarding", "1")?;
        ns.sysctl("net.ipv6.conf.t0.forwarding", "1")?;
        let pins = PinDir::new(name);
        let config = config::parse(&config_text(&pins.path.display().to_string(), Variant::default()))
            .map_err(|p| anyhow::anyhow!("{p:?}"))?;
        enter(&format!("/run/netns/{}", ns.name))?;
        let mut dp = Dataplane::load(&config)?;
        dp.sync(&config, &Health::default())?;
        // No control plane renews a lease here: the claim stands for good.
        dp.renew_claim(None)?;
        // Every BPF_PROG_TEST_RUN of an XDP program adds it to and removes it from the kernel's
        // XDP dispatcher, each change waiting for an RCU grace period (milliseconds), unless the
        // program is attached somewhere already. Attach each to a spare veth for the duration
        // (left down, so no frame ever reaches it).
        for (i, program) in [names::PROGRAM, names::PASS_PROGRAM, names::REFLECT_PROGRAM]
            .into_iter()
            .enumerate()
        {
            let (hold, peer) = (format!("hold{i}"), format!("hold{i}p"));
            ns.exec(&["ip", "link", "add", &hold, "type", "veth", "peer", "name", &peer])?;
            dp.program(program)?
                .attach(&hold, XdpMode::Driver)
                .with_context(|| format!("attaching {program}"))?;
        }
        Ok(Self {
            ifindex: ifindex_of(&ns, "t0")?,
            node_mac: mac_of(&ns, "t0")?,
            dp,
            pins,
            ns,
        })
    }

    /// The xdp_md context of a frame of `len` bytes arriving on t0.
    fn ctx(&self, len: usize) -> Vec<u8> {
        [0u32, len as u32, 0, self.ifindex, 0, 0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect()
    }

    /// Runs one frame through the load balancer: (verdict, output frame).
    pub fn run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (verdict, out, _) = self.run_program(names::PROGRAM, frame)?;
        Ok((verdict, out))
    }

    /// Runs one frame through the named program: (verdict, output frame, kernel-measured time).
    pub fn run_program(&mut self, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>, Duration)> {
        let ctx = self.ctx(frame.len());
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .dp
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration))
    }

    /// Runs `frame` in live-frame mode (frames really are transmitted or passed up) and returns
    /// the kernel's time per packet.
    pub fn run_live(&mut self, program: &str, frame: &[u8], mode: Live) -> Result<Duration> {
        let ctx = self.ctx(frame.len());
        let repeat = match mode {
            Live::Fresh => LIVE_BATCH,
            Live::Recycled(repeat) => repeat,
        };
        let result = self
            .dp
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN (live frames)")?;
        Ok(result.duration)
    }

    /// A global counter's value.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let snap = stats::snapshot(&self.pins.path)?;
        snap.counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .context("no such counter")
    }

    /// Sum of the counters that record a packet's fate (each packet bumps exactly one).
    pub fn total_counted(&self) -> Result<u64> {
        let snap = stats::snapshot(&self.pins.path)?;
        // Hits and misses describe the connection table, not a packet's fate.
        Ok(snap
            .counters
            .iter()
            .filter(|(n, _)| !n.starts_with("conntrack_") && n != "icmp_forwarded")
            .map(|(_, v)| v)
            .sum())
    }

    /// Applies the configuration again, as `variant` says.
    pub fn reconfigure(&mut self, variant: Variant) -> Result<()> {
        let config = config::parse(&config_text(&self.pins.path.display().to_string(), variant))
            .map_err(|p| anyhow::anyhow!("{p:?}"))?;
        self.dp.sync(&config, &Health::default())
    }
}

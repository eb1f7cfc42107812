//! Long-lived TCP transfers through the VIP, checked end to end: each connection sends
//! pseudo-random lines to an [`crate::EchoServer`] and compares every byte that comes back,
//! with a running checksum of each direction, until told to stop.

use crate::{EchoClient, Netns};
use anyhow::{bail, Context, Result};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// What one transfer did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Backend that served it.
    pub backend: String,
    /// Bytes sent (and received back intact).
    pub bytes: u64,
    /// FNV-1a of every byte sent; equal to that of every byte received.
    pub checksum: u64,
    /// Longest wait for one echo.
    pub longest_stall: Duration,
}

/// Running transfers.
pub struct Transfers {
    stop: Arc<AtomicBool>,
    handles: Vec<thread::JoinHandle<Result<Result<Report>>>>,
}

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A deterministic 256-byte printable line for connection `conn`, round `seq`.
fn line(conn: usize, seq: u64) -> String {
    let mut x = (conn as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (0..256)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'!' + (x % 94) as u8) as char
        })
        .collect()
}

impl Transfers {
    /// Opens `count` connections to `addr` from namespace `ns` (all established before this
    /// returns), each then exchanging a line every `pace`.
    pub fn start(ns: &Netns, addr: SocketAddr, count: usize, pace: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(count);
        for conn in 0..count {
            let (stop, connected) = (stop.clone(), connected.clone());
            handles.push(ns.thread(move || -> Result<Report> {
                let mut client = EchoClient::connect(addr)?;
                client.set_read_timeout(Duration::from_secs(15))?;
                connected.fetch_add(1, Ordering::Relaxed);
                let mut report = Report {
                    backend: client.backend.clone(),
                    bytes: 0,
                    checksum: 0xcbf2_9ce4_8422_2325,
                    longest_stall: Duration::ZERO,
                };
                let mut echoed = report.checksum;
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let text = line(conn, seq);
                    let began = Instant::now();
                    let back = client
                        .exchange(&text)
                        .with_context(|| format!("connection {conn} round {seq} to {}", report.backend))?;
                    report.longest_stall = report.longest_stall.max(began.elapsed());
                    report.checksum = fnv1a(report.checksum, text.as_bytes());
                    echoed = fnv1a(echoed, back.as_bytes());
                    if echoed != report.checksum {
                        bail!("connection {conn} round {seq}: the echo differs from what was sent");
                    }
                    report.bytes += text.len() as u64;
                    seq += 1;
                    thread::sleep(pace);
                }
                Ok(report)
            }));
        }
        crate::wait_until(Duration::from_secs(30), "every transfer to connect", || {
            connected.load(Ordering::Relaxed) == count || handles.iter().any(|h| h.is_finished())
        })?;
        if connected.load(Ordering::Relaxed) != count {
            let running = Self { stop, handles };
            running.finish()?;
            bail!("some transfers did not connect");
        }
        Ok(Self { stop, handles })
    }

    /// Stops the transfers after their current line and returns the reports of those that
    /// completed intact and the failures of the others.
    pub fn outcome(self) -> (Vec<Report>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut reports = Vec::new();
        let mut failures = Vec::new();
        for h in self.handles {
            match h.join() {
                Ok(Ok(Ok(r))) => reports.push(r),
                Ok(Ok(Err(e))) | Ok(Err(e)) => failures.push(format!("{e:#}")),
                Err(_) => failures.push("a transfer thread panicked".into()),
            }
        }
        (reports, failures)
    }

    /// Stops the transfers after their current line and returns every report, or the first
    /// failure.
    pub fn finish(self) -> Result<Vec<Report>> {
        let (reports, failures) = self.outcome();
        if !failures.is_empty() {
            bail!(
                "{} of {} transfers failed: {}",
                failures.len(),
                failures.len() + reports.len(),
                failures[0]
            );
        }
        Ok(reports)
    }
}

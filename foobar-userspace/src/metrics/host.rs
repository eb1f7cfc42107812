//! Host and process metrics read from /proc, under node_exporter's and the Prometheus client
//! libraries' names (`node_*`, `process_*`), so existing dashboards work: foobar is the edge's
//! monitoring client.

use super::exposition::{Family, Kind};

/// Kernel clock ticks per second in /proc (USER_HZ, 100 on every Linux architecture foobar
/// runs on).
const TICKS_PER_S: f64 = 100.0;

/// Every host and process family this system has.
pub fn families() -> Vec<Family> {
    let mut out = Vec::new();
    let stat = read("/proc/stat");
    out.push(cpu(&stat));
    if let Some(boot) = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
    {
        out.push(Family::single(
            "node_boot_time_seconds",
            Kind::Gauge,
            "Node boot time, in unixtime.",
            boot,
        ));
        out.extend(process(boot));
    }
    let load: Vec<f64> = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    for (name, value) in ["node_load1", "node_load5", "node_load15"].into_iter().zip(load) {
        out.push(Family::single(name, Kind::Gauge, "Load average.", value));
    }
    out.extend(memory());
    out.extend(network());
    out.extend(disks());
    out
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `node_cpu_seconds_total{cpu, mode}` from the per-CPU lines of /proc/stat.
fn cpu(stat: &str) -> Family {
    const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
    let mut f = Family::new(
        "node_cpu_seconds",
        Kind::Counter,
        "Seconds the CPUs spent in each mode.",
    );
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|c| c.strip_prefix("cpu"))
            .filter(|c| !c.is_empty())
        else {
            continue;
        };
        for (mode, ticks) in MODES.iter().zip(fields) {
            if let Ok(t) = ticks.parse::<f64>() {
                f.sample(&[("cpu", cpu), ("mode", mode)], t / TICKS_PER_S);
            }
        }
    }
    f
}

/// `node_memory_*_bytes` for the fields dashboards use.
fn memory() -> Vec<Family> {
    let info = read("/proc/meminfo");
    [
        "MemTotal",
        "MemFree",
        "MemAvailable",
        "Buffers",
        "Cached",
        "SwapTotal",
        "SwapFree",
    ]
    .iter()
    .filter_map(|field| {
        let kib: f64 = info.lines().find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })?;
        Some(Family::single(
            format!("node_memory_{field}_bytes"),
            Kind::Gauge,
            "Memory information field from /proc/meminfo.",
            kib * 1024.0,
        ))
    })
    .collect()
}

/// `node_network_{receive,transmit}_{bytes,packets,errs,drop}_total{device}` from /proc/net/dev
/// (the interfaces of foobar's network namespace).
fn network() -> Vec<Family> {
    // Column order of /proc/net/dev after the name: 8 receive fields, then 8 transmit fields.
    const COLUMNS: [(usize, &str, &str); 8] = [
        (0, "receive", "bytes"),
        (1, "receive", "packets"),
        (2, "receive", "errs"),
        (3, "receive", "drop"),
        (8, "transmit", "bytes"),
        (9, "transmit", "packets"),
        (10, "transmit", "errs"),
        (11, "transmit", "drop"),
    ];
    let text = read("/proc/net/dev");
    COLUMNS
        .iter()
        .map(|(column, direction, what)| {
            let mut f = Family::new(
                format!("node_network_{direction}_{what}"),
                Kind::Counter,
                "Network device statistic from /proc/net/dev.",
            );
            for line in text.lines().skip(2) {
                let Some((device, values)) = line.split_once(':') else {
                    continue;
                };
                if let Some(v) = values
                    .split_whitespace()
                    .nth(*column)
                    .and_then(|v| v.parse::<f64>().ok())
                {
                    f.sample(&[("device", device.trim())], v);
                }
            }
            f
        })
        .collect()
}

/// `node_disk_*` from /proc/diskstats, whole disks and partitions alike, loop and ram devices
/// left out.
fn disks() -> Vec<Family> {
    let text = read("/proc/diskstats");
    let mut reads = Family::new(
        "node_disk_reads_completed",
        Kind::Counter,
        "Reads completed successfully.",
    );
    let mut writes = Family::new(
        "node_disk_writes_completed",
        Kind::Counter,
        "Writes completed successfully.",
    );
    let mut read_bytes = Family::new("node_disk_read_bytes", Kind::Counter, "Bytes read successfully.");
    let mut written = Family::new("node_disk_written_bytes", Kind::Counter, "Bytes written successfully.");
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(device) = f.get(2).filter(|d| !d.starts_with("loop") && !d.starts_with("ram")) else {
            continue;
        };
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(r), Some(rs), Some(w), Some(ws)) = (field(3), field(5), field(7), field(9)) {
            reads.sample(&[("device", device)], r);
            read_bytes.sample(&[("device", device)], rs * 512.0);
            writes.sample(&[("device", device)], w);
            written.sample(&[("device", device)], ws * 512.0);
        }
    }
    vec![reads, writes, read_bytes, written]
}

/// The standard `process_*` metrics of the client libraries, for foobar itself.
fn process(boot_time: f64) -> Vec<Family> {
    let stat = read("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0);
    let status = read("/proc/self/status");
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64;
    // "Max open files   SOFT   HARD   files"
    let max_fds = read("/proc/self/limits")
        .lines()
        .find_map(|l| {
            l.strip_prefix("Max open files")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    vec![
        Family::single(
            "process_cpu_seconds",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
            (field(14) + field(15)) / TICKS_PER_S,
        ),
        Family::single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            kib("VmRSS:") * 1024.0,
        ),
        Family::single(
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes.",
            kib("VmSize:") * 1024.0,
        ),
        Family::single(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
            open_fds,
        ),
        Family::single(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
            max_fds,
        ),
        Family::single(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
            boot_time + field(22) / TICKS_PER_S,
        ),
    ]
}

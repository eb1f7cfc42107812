//! A bad configuration is refused with file, line, column and reason, by `check-config` and by
//! `run`, and nothing is attached or pinned.

use anyhow::Result;
use foobar_tests::{command_refuses, foobar_bin, foobar_refuses, wait_until, Netns, PinDir, Scratch};
use std::{process::Command, time::Duration};

#[test]
fn check_config_and_run_report_every_problem_with_its_place() -> Result<()> {
    let scratch = Scratch::new("badcfg")?;
    let pins = PinDir::new("badcfg");
    let path = scratch.file("bad.toml");
    std::fs::write(
        &path,
        format!(
            r#"[node]
name = "edge"
interfaces = ["lo"]
pin_dir = "{}"

[dataplane]
maglev_table_size = 1000

[[service]]
name = "web"
vip = "192.0.2.1"
port = 80
forwarding = "ipip"
[[service.backend]]
address = "10.0.0.2"
[[service.backend]]
address = "10.0.0.2"
"#,
            pins.path.display()
        ),
    )?;
    let file = path.display().to_string();
    // In a namespace of its own, under a time limit: a bad file accepted would otherwise
    // attach XDP to the host's loopback and run until killed.
    let ns = Netns::new("badcfg")?;
    for args in [
        vec!["check-config", file.as_str()],
        vec!["run", "--config", file.as_str()],
    ] {
        let stderr = foobar_refuses(&ns, &args, Duration::from_secs(10))?;
        for expected in [
            format!("{file}:7:21: maglev_table_size 1000 is not a prime"),
            format!("{file}:15:11: backend 10.0.0.2 is reached by IPIP: [node] needs tunnel_source_v4"),
            format!("{file}:17:11: backend 10.0.0.2 is listed twice in this service"),
        ] {
            assert!(
                stderr.contains(&expected),
                "{args:?}: missing {expected:?} in:\n{stderr}"
            );
        }
    }
    assert!(!pins.path.exists(), "a refused run must not pin anything");

    std::fs::write(&path, "[node]\nname = \"edge\"\ninterfaces = [\"lo\"\n")?;
    let out = Command::new(foobar_bin()).args(["check-config", &file]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{file}:4:1: invalid array; expected `]`")),
        "syntax error without its place:\n{stderr}"
    );
    Ok(())
}

#[test]
fn wrong_types_unknown_keys_and_semantic_problems_come_in_one_run() -> Result<()> {
    let scratch = Scratch::new("badtypes")?;
    let path = scratch.file("bad.toml");
    std::fs::write(
        &path,
        r#"[node]
name = "edge"
interfaces = ["lo"]

[dataplane]
maglev_table_size = 1000

[[service]]
name = "web"
vip = "192.0.2.1"
port = "https"
forwarding = "l2dsr"
[[service.backend]]
address = "10.0.0.300"
wieght = 5

[[vrrp]]
name = "v"
vrid = 300
interface = "lo"
priority = 100
vips = ["192.0.2.1"]
"#,
    )?;
    let file = path.display().to_string();
    let out = Command::new(foobar_bin()).args(["check-config", &file]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for expected in [
        format!("{file}:6:21: maglev_table_size 1000 is not a prime"),
        format!(
            "{file}:11:8: service[0].port = \"https\": invalid type: string \"https\", expected an integer 0..=65535"
        ),
        format!("{file}:14:11: service[0].backend[0].address = \"10.0.0.300\": expected an IPv4 or IPv6 address"),
        format!("{file}:15:1: service[0].backend[0].wieght = 5: unknown field `wieght`"),
        format!("{file}:19:8: vrrp[0].vrid = 300: invalid value: integer `300`, expected an integer 0..=255"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert_eq!(
        stderr.lines().count(),
        5,
        "placeholders made up problems of their own:\n{stderr}"
    );
    Ok(())
}

#[test]
fn the_descriptor_limit_is_raised_to_fit_the_configuration_or_the_start_is_refused() -> Result<()> {
    let scratch = Scratch::new("fdlimit")?;
    let pins = PinDir::new("fdlimit");
    let ns = Netns::new("fdlimit")?;
    let path = scratch.file("fd.toml");
    std::fs::write(
        &path,
        format!(
            r#"[node]
name = "fd"
interfaces = ["lo"]
pin_dir = "{}"
control_socket = "{}"

[[web.listener]]
address = "127.0.0.1:8080"
redirect_to_https = true

[[web.site]]
names = ["fd.example"]
root = "{}"

[web.limits]
max_connections = 4000
"#,
            pins.path.display(),
            scratch.file("fd.sock").display(),
            scratch.path.display()
        ),
    )?;
    let config = path.display().to_string();
    let foobar = foobar_bin().display().to_string();
    // A service manager's soft limit of 1024 with room above it: raised to 4000 clients + as
    // many upstream connections + 1024 headroom.
    let log = scratch.file("fd.log");
    let child = ns.spawn(
        std::path::Path::new("/usr/bin/prlimit"),
        &["--nofile=1024:16384", "--", &foobar, "run", "--config", &config],
        &log,
    )?;
    wait_until(Duration::from_secs(10), "foobar to run", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("foobar is running"))
    })?;
    let pid = child.pid().map(|p| p.to_string()).unwrap_or_default();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>(),
        ["Max", "open", "files", "9024", "16384", "files"],
        "{limits}"
    );
    drop(child);
    let _ = foobar_tests::sh(&[&foobar, "detach", "--pin-dir", &pins.path.display().to_string()]);
    // Without the right to raise the hard limit (2048, below the 4000 clients + 1024 headroom
    // the configuration needs at least) the start is refused, with the numbers.
    let out = command_refuses(
        &ns,
        std::path::Path::new("/usr/bin/setpriv"),
        &[
            "--bounding-set",
            "-sys_resource",
            "--inh-caps",
            "-sys_resource",
            "/usr/bin/prlimit",
            "--nofile=1024:2048",
            "--",
            &foobar,
            "run",
            "--config",
            &config,
        ],
        Duration::from_secs(10),
    )?;
    assert!(
        out.contains("the descriptor limit is 1024 (hard 2048) and cannot be raised to the 5024"),
        "{out}"
    );
    Ok(())
}

//! The foobar.com lab as `cargo xtask lab up|status|down` runs it: it comes up, a request
//! from the client through the VIP reaches the app and the database and comes back, the edges'
//! pushes reach the monitoring namespace, and when it goes down nothing it made is left:
//! no namespace, link, process, pinned object or scratch directory. The same for the
//! scale-out lab (`cargo xtask run --edges 3`): a request crosses the router, which routes the
//! VIP to all three edges.

use anyhow::{ensure, Context, Result};
use foobar_tests::{sh, wait_until};
use std::{
    process::{Command, Stdio},
    time::Duration,
};

#[test]
fn the_lab_comes_up_serves_the_whole_stack_and_leaves_nothing_behind() -> Result<()> {
    run_lab(&[], "lab", exercise)
}

#[test]
fn the_scale_out_lab_comes_up_routes_through_every_edge_and_leaves_nothing_behind() -> Result<()> {
    run_lab(&["--edges", "3"], "scale", exercise_scale_out)
}

/// Runs `foobar-lab ARGS serve STATE` with its own namespace prefix, lets `exercise` use it
/// (given the prefix, the state directory and the lab binary), stops it, and checks that
/// nothing it made is left.
fn run_lab(args: &[&str], name: &str, exercise: fn(&str, &std::path::Path, &str) -> Result<()>) -> Result<()> {
    let prefix = format!("fbt{}{name}", std::process::id());
    let state = std::env::temp_dir().join(format!("{prefix}-state"));
    let lab_bin = env!("CARGO_BIN_EXE_foobar-lab");
    let log_path = std::env::temp_dir().join(format!("{prefix}.log"));
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(lab_bin)
        .args(args)
        .args(["serve", &state.display().to_string()])
        .env("FOOBAR_NS_PREFIX", &prefix)
        .env("FOOBAR_BIN", foobar_tests::foobar_bin())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let mut lab = foobar_tests::ChildGuard::adopt(child, &log_path);
    let result = exercise(&prefix, &state, lab_bin);
    lab.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(
        lab.wait(Duration::from_secs(60))?,
        "the lab did not stop cleanly:\n{}",
        lab.log_text()
    );
    result.with_context(|| lab.log_text())?;

    let namespaces = sh(&["ip", "netns", "list"])?;
    ensure!(!namespaces.contains(&prefix), "namespaces left: {namespaces}");
    let links = sh(&["ip", "-o", "link"])?;
    ensure!(!links.contains(&prefix), "links left: {links}");
    let pins: Vec<_> = std::fs::read_dir("/sys/fs/bpf")?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    ensure!(pins.is_empty(), "pins left: {pins:?}");
    let processes: Vec<String> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&prefix) && !c.contains("the_lab_comes_up") && !c.contains("the_scale_out_lab"))
        .collect();
    ensure!(processes.is_empty(), "processes left: {processes:?}");
    let scratch: Vec<_> = std::fs::read_dir(std::env::temp_dir())?
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("{prefix}-")) && !name.ends_with("-state")
        })
        .collect();
    ensure!(scratch.is_empty(), "files left: {scratch:?}");
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&log_path);
    Ok(())
}

/// The scale-out lab: the banner's request reaches a backend, the router's route has a next
/// hop per edge, and every edge reports the VIP announced.
fn exercise_scale_out(prefix: &str, state: &std::path::Path, lab_bin: &str) -> Result<()> {
    wait_until(Duration::from_secs(120), "the lab to come up", || {
        state.join("banner").exists()
    })?;
    let banner = std::fs::read_to_string(state.join("banner"))?;
    let command = |needle: &str| -> Result<Vec<String>> {
        let line = banner
            .lines()
            .find(|l| l.contains(needle))
            .with_context(|| format!("no {needle} command in the banner:\n{banner}"))?;
        Ok(line.split_whitespace().map(str::to_owned).collect())
    };
    let curl = command("curl -s http://")?;
    ensure!(curl.contains(&format!("{prefix}-s0-client")), "{curl:?}");
    let args: Vec<&str> = curl.iter().map(String::as_str).collect();
    ensure!(sh(&args)?.contains("hello from b"), "no backend answered");
    let route = command(" ip route show")?;
    let args: Vec<&str> = route.iter().map(String::as_str).collect();
    let hops = sh(&args)?;
    ensure!(hops.matches("nexthop via").count() == 3, "the router's route: {hops}");
    let status = sh(&[lab_bin, "status", &state.display().to_string()])?;
    ensure!(status.matches("VIP 192.0.2.10 announced").count() == 3, "{status}");
    Ok(())
}

fn exercise(prefix: &str, state: &std::path::Path, lab_bin: &str) -> Result<()> {
    wait_until(Duration::from_secs(120), "the lab to come up", || {
        state.join("banner").exists()
    })?;
    let banner = std::fs::read_to_string(state.join("banner"))?;
    let visit = banner
        .lines()
        .find(|l| l.contains("/api/visit"))
        .context("no /api/visit command in the banner")?;
    let args: Vec<&str> = visit.split_whitespace().collect();
    ensure!(args.contains(&format!("{prefix}-l0-client").as_str()), "{visit}");
    let mut last = String::new();
    wait_until(Duration::from_secs(15), "a visit through the whole stack", || {
        last = sh(&args).unwrap_or_else(|e| e.to_string());
        last.contains("\"written_on\":1") && last.contains("\"read_from\":2")
    })
    .with_context(|| format!("last answer: {last}"))?;

    let status = sh(&[lab_bin, "status", &state.display().to_string()])?;
    ensure!(status.contains("vrrp vip (vrid 51 on eth0)"), "{status}");
    ensure!(status.contains("database main: primary 10.10.0.31:3306"), "{status}");
    let collector_log = banner
        .lines()
        .find_map(|l| {
            l.split('(')
                .nth(1)?
                .strip_suffix(')')
                .filter(|p| p.ends_with("collector.log"))
        })
        .context("no collector log in the banner")?
        .to_owned();
    wait_until(Duration::from_secs(15), "the edges' pushes to reach monitoring", || {
        std::fs::read_to_string(&collector_log).is_ok_and(|l| l.contains(" 200 foobar/lab/metrics "))
    })?;
    Ok(())
}

//! Reloads are all or nothing, and what they leave alone keeps running: `foobar reload` against
//! a running node with XDP services, the web tier (certificates, two upstream pools) and a
//! database cluster. Each kind of refusal leaves every subsystem on the running configuration
//! (the same certificate served, the pinned maps unchanged entry for entry, health as it
//! was); a weight change rewrites one Maglev table and keeps the upstream pools (their idle
//! connections and a passively failed server); `check-config` names each file problem at its
//! key.

use anyhow::{ensure, Context, Result};
use foobar::health::Standing;
use foobar_tests::{foobar_bin, maps, mariadb, wait_until, weblab::WebLab};
use std::{net::IpAddr, path::Path, process::Command, sync::atomic::Ordering, time::Duration};

/// Two L4 services (one backend of `l4a` never answers its check), one worker so that idle
/// upstream connections are counted in one place, a database cluster whose monitor
/// credentials are re-read on reload.
fn extra(scratch: &Path) -> String {
    format!(
        r#"
[web]
workers = 1

[dataplane]
maglev_table_size = 1009
max_services = 4
max_backends = 8

[[service]]
name = "l4a"
vip = "10.99.0.100"
port = 8080
forwarding = "l2dsr"
health = {{ kind = "tcp", port = 9001, interval_ms = 200, timeout_ms = 150, rise = 1, fall = 1 }}

[[service.backend]]
address = "10.99.0.1"

[[service.backend]]
address = "10.99.0.5"

[[service]]
name = "l4b"
vip = "10.99.0.101"
port = 8080
forwarding = "l2dsr"
health = {{ kind = "none" }}

[[service.backend]]
address = "10.99.0.6"

[[service.backend]]
address = "10.99.0.7"

[monitoring]
listen = "10.99.0.1:9100"

[[database]]
name = "main"
address = "10.99.0.1"
servers = ["10.99.0.9:3306"]
credentials = "{}/monitor.toml"
"#,
        scratch.display()
    )
}

/// Rewrites the configuration file.
fn edit(lab: &WebLab, change: impl Fn(&str) -> String) -> Result<()> {
    let text = std::fs::read_to_string(lab.config())?;
    let changed = change(&text);
    ensure!(changed != text, "the edit changed nothing");
    Ok(std::fs::write(lab.config(), changed)?)
}

/// The subject of the certificate served to a client without SNI (the default one).
fn default_subject(lab: &WebLab) -> Result<String> {
    let (_, out) = lab.s_client("-noservername")?;
    out.lines()
        .find(|l| l.starts_with("subject="))
        .map(str::to_owned)
        .with_context(|| format!("no certificate subject in\n{out}"))
}

/// Whether the data plane has backend `addr` active.
fn active(lab: &WebLab, addr: &str) -> Result<bool> {
    let addr: IpAddr = addr.parse()?;
    let snapshot = foobar::stats::snapshot(lab.pin_dir())?;
    snapshot
        .backends
        .iter()
        .find(|b| b.address == addr)
        .map(|b| b.active)
        .with_context(|| format!("no backend {addr} in the data plane"))
}

/// Connections the application servers accepted that carried a proxied request.
fn upstream_connections(lab: &WebLab) -> usize {
    lab.apps
        .iter()
        .flatten()
        .map(|a| a.proxied_connections.load(Ordering::Relaxed))
        .sum()
}

/// Sets the weight of l4b's second backend (both of l4b's backends are up, so its Maglev
/// table changes with it).
fn weigh(text: &str, weight: u32) -> String {
    let anchor = "address = \"10.99.0.7\"";
    let rest = text.split_once(anchor).map_or("", |(_, r)| r);
    let current = rest.lines().nth(1).filter(|l| l.starts_with("weight ="));
    match current {
        Some(line) => text.replacen(&format!("{anchor}\n{line}"), &format!("{anchor}\nweight = {weight}"), 1),
        None => text.replacen(anchor, &format!("{anchor}\nweight = {weight}"), 1),
    }
}

/// A refused reload: what it is, the edit to the file, the exit status, what the output names.
type Refusal = (&'static str, Box<dyn Fn(&str) -> String>, i32, &'static str);

#[test]
fn refused_reloads_change_nothing_and_a_weight_change_keeps_pools_and_health() -> Result<()> {
    let scratch = foobar_tests::Scratch::new("reload-creds")?;
    let credentials = scratch.file("monitor.toml");
    mariadb::write_credentials(&credentials, mariadb::MONITOR_USER.1, 0o600)?;
    let lab = WebLab::start_with("reload", &extra(&scratch.path))?;
    wait_until(Duration::from_secs(5), "10.99.0.5 marked down", || {
        active(&lab, "10.99.0.5").is_ok_and(|up| !up)
    })?;
    ensure!(active(&lab, "10.99.0.1")?, "the checked backend that answers is down");
    // Idle upstream connections: one to each app server.
    let names = lab.proxied_names(10)?;
    ensure!(
        names.matches("app1").count() == 5 && names.matches("app2").count() == 5,
        "{names}"
    );
    let pooled = upstream_connections(&lab);
    ensure!(
        pooled == 2,
        "{pooled} upstream connections for 10 requests on one worker"
    );
    let served = default_subject(&lab)?;
    let before = maps::snapshot(lab.pin_dir())?;
    let running = std::fs::read_to_string(lab.config())?;

    // Each kind of refusal, every one of them with a weight change beside it that must not
    // take effect.
    let refusals: [Refusal; 4] = [
        (
            "a certificate that does not load",
            Box::new(|t: &str| weigh(t, 50).replace("default.crt", "missing.crt")),
            1,
            "missing.crt",
        ),
        (
            "more backends than max_backends",
            Box::new(|t: &str| {
                let more: String = (20..27)
                    .map(|i| format!("\n[[service.backend]]\naddress = \"10.99.0.{i}\"\n"))
                    .collect();
                weigh(t, 50).replacen("\n[[database]]", &format!("{more}\n[[database]]"), 1)
            }),
            1,
            "max_backends is 8",
        ),
        (
            "a restart-only change",
            Box::new(|t: &str| {
                weigh(t, 50).replace("max_connections_per_client = 64", "max_connections_per_client = 65")
            }),
            3,
            "[web.limits]",
        ),
        (
            "a credentials file that is gone",
            Box::new(|t: &str| weigh(t, 50)),
            1,
            "monitor.toml",
        ),
    ];
    for (what, change, code, says) in &refusals {
        std::fs::write(lab.config(), &running)?;
        edit(&lab, change)?;
        if what.contains("credentials") {
            std::fs::remove_file(&credentials)?;
        }
        let (status, out) = lab.reload()?;
        ensure!(
            status == *code && out.contains(says),
            "{what}: exit {status}, expected {code} saying {says:?}:\n{out}"
        );
        ensure!(
            maps::snapshot(lab.pin_dir())? == before,
            "{what}: the refused reload changed the pinned maps"
        );
        ensure!(
            default_subject(&lab)? == served,
            "{what}: another certificate is served"
        );
        ensure!(
            active(&lab, "10.99.0.1")? && !active(&lab, "10.99.0.5")?,
            "{what}: backend health changed"
        );
    }
    mariadb::write_credentials(&credentials, mariadb::MONITOR_USER.1, 0o600)?;

    // A weight change alone: applied, only l4b's table is rewritten (the live half flips),
    // 10.99.0.5 of l4a stays down, the upstream pools and their idle connections stay.
    std::fs::write(lab.config(), &running)?;
    let halves = maps::services(lab.pin_dir())?;
    edit(&lab, |t| weigh(t, 50))?;
    let (status, out) = lab.reload()?;
    ensure!(
        status == 0 && out.contains("service l4b: 1 weight(s) changed"),
        "exit {status}:\n{out}"
    );
    let now = maps::services(lab.pin_dir())?;
    let flipped: Vec<bool> = halves
        .iter()
        .zip(&now)
        .map(|((_, was), (_, is))| {
            was.flags & foobar_common::SERVICE_LIVE_HALF != is.flags & foobar_common::SERVICE_LIVE_HALF
        })
        .collect();
    ensure!(halves.len() == 2 && now.len() == 2, "{now:?}");
    let l4b = halves
        .iter()
        .position(|(k, _)| k.addr == foobar_common::addr_from_octets(&[10, 99, 0, 101]));
    ensure!(
        flipped == (0..2).map(|i| Some(i) == l4b).collect::<Vec<_>>(),
        "tables rewritten: {flipped:?} (l4b is entry {l4b:?})"
    );
    ensure!(!active(&lab, "10.99.0.5")?, "the reload forgot that 10.99.0.5 is down");
    lab.proxied_names(10)?;
    ensure!(
        upstream_connections(&lab) == pooled,
        "{} upstream connections after the reload: the pools were rebuilt",
        upstream_connections(&lab)
    );
    // Negative control: a changed upstream does start a new pool, and its first requests
    // open new connections.
    edit(&lab, |t| {
        t.replace("pool_idle_timeout_ms = 5000", "pool_idle_timeout_ms = 6000")
    })?;
    let (status, out) = lab.reload()?;
    ensure!(
        status == 0 && out.contains("upstream app changed"),
        "exit {status}:\n{out}"
    );
    lab.proxied_names(10)?;
    ensure!(
        upstream_connections(&lab) > pooled,
        "a new pool reused the old pool's connections"
    );

    // A server that failed passively sits out its fail_timeout across a reload that leaves
    // its upstream alone: no new connection attempt to it.
    let mut lab = lab;
    if let Some(app2) = lab.apps.get_mut(1).and_then(Option::take) {
        drop(app2);
    }
    let failures = |lab: &WebLab| lab.log().matches("connecting upstream failed").count();
    lab.proxied_names(4)?;
    let failed = failures(&lab);
    ensure!(failed >= 1, "the stopped server was never tried:\n{}", lab.log());
    edit(&lab, |t| weigh(t, 60))?;
    ensure!(lab.reload()?.0 == 0, "the weight change was not applied");
    let names = lab.proxied_names(6)?;
    ensure!(names.matches("app1").count() == 6, "{names}");
    ensure!(
        failures(&lab) == failed,
        "the reload put the failed server back in rotation"
    );
    // Negative control: a rebuilt pool tries it again at once.
    edit(&lab, |t| {
        t.replace("pool_idle_timeout_ms = 6000", "pool_idle_timeout_ms = 7000")
    })?;
    ensure!(lab.reload()?.0 == 0, "the upstream change was not applied");
    lab.proxied_names(6)?;
    ensure!(failures(&lab) > failed, "a new pool did not try the stopped server");

    // Weight 0 drains: status, metrics and the page agree that the backend is up but drained.
    edit(&lab, |t| weigh(t, 0))?;
    ensure!(lab.reload()?.0 == 0, "the drain was not applied");
    let status = foobar::ctl::query(&lab.socket())?;
    let standing = |service: &str, addr: &str| {
        status
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.backends.iter().find(|b| b.address.to_string() == addr))
            .map(|b| b.standing)
    };
    ensure!(
        [
            standing("l4a", "10.99.0.1"),
            standing("l4a", "10.99.0.5"),
            standing("l4b", "10.99.0.6"),
            standing("l4b", "10.99.0.7"),
        ] == [
            Some(Standing::Active),
            Some(Standing::Down),
            Some(Standing::Active),
            Some(Standing::Drained)
        ],
        "{:?}",
        status.services
    );
    let metrics = lab
        .ns
        .exec(&["curl", "-sS", "--max-time", "5", "http://10.99.0.1:9100/metrics"])?;
    for (line, value) in [
        ("foobar_backend_active{service=\"l4b\",backend=\"10.99.0.7\"}", "0"),
        ("foobar_backend_up{service=\"l4b\",backend=\"10.99.0.7\"}", "1"),
        ("foobar_backend_active{service=\"l4a\",backend=\"10.99.0.5\"}", "0"),
        ("foobar_backend_active{service=\"l4b\",backend=\"10.99.0.6\"}", "1"),
    ] {
        ensure!(
            metrics.lines().any(|l| l == format!("{line} {value}")),
            "no `{line} {value}` in\n{metrics}"
        );
    }
    let shown = Command::new(foobar_bin())
        .args(["status", "--socket"])
        .arg(lab.socket())
        .output()?;
    let shown = String::from_utf8_lossy(&shown.stdout);
    ensure!(
        shown.contains(
            "service l4b (10.99.0.101:8080 tcp): 10.99.0.6 active (weight 100), 10.99.0.7 drained (weight 0)"
        ) && shown.contains("10.99.0.5 DOWN (weight 100; no answer within 150 ms)"),
        "{shown}"
    );
    Ok(())
}

#[test]
fn check_config_names_each_file_problem_at_its_key() -> Result<()> {
    let lab = WebLab::start("files")?;
    let config = std::fs::read_to_string(lab.config())?;
    let key_line = |text: &str, needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .context("line")
    };
    // A key readable by others, a key that belongs to another certificate, a missing chain, a
    // missing document root: four problems, each at its own key, in one run.
    let open_key = lab.pem("open.key");
    std::fs::copy(lab.pem("www-ec.key"), &open_key)?;
    std::fs::set_permissions(&open_key, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let bad = config
        .replacen("www-ec.key", "open.key", 1)
        .replacen("www-rsa.key", "www-ec.key", 1)
        .replacen("default.crt", "gone.crt", 1)
        .replacen("/www\"", "/nowhere\"", 1);
    let path = lab.scratch.file("bad.toml");
    std::fs::write(&path, &bad)?;
    let out = Command::new(foobar_bin()).arg("check-config").arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "check-config accepted:\n{bad}");
    let file = path.display();
    for (needle, says) in [
        ("open.key", "others may read or write it (mode 644)"),
        ("www-rsa.crt", "does not match the certificate"),
        ("gone.crt", "reading certificate chain"),
        ("/nowhere", "No such file or directory"),
    ] {
        let line = key_line(&bad, needle)?;
        // The key-mismatch problem sits on the key line, just below its chain.
        let line = if needle == "www-rsa.crt" { line + 1 } else { line };
        ensure!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("{file}:{line}:")) && l.contains(says)),
            "no {says:?} at line {line} in:\n{stderr}"
        );
    }
    // The running daemon refuses the same file on reload, with the same places.
    std::fs::write(lab.config(), &bad)?;
    let (status, out) = lab.reload()?;
    ensure!(
        status == 1 && out.contains("others may read or write it"),
        "exit {status}:\n{out}"
    );
    // A configuration file that cannot be read says so, without a made-up position.
    let out = Command::new(foobar_bin())
        .args(["check-config", "/nonexistent/foobar.toml"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("/nonexistent/foobar.toml: cannot read the configuration file"),
        "{stderr}"
    );
    Ok(())
}

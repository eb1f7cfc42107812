//! Monitoring: both edges of the full lab (VRRP, XDP services, web tier, database routing)
//! expose metrics that the reference parser accepts in both formats, with Prometheus names and
//! bounded labels, values that move with traffic, and a status page that headless Chromium
//! renders with its key elements.

use anyhow::{ensure, Context, Result};
use foobar_tests::{
    lab::{edge_addr, LabSpec, LbLab, HTTPS_PORT, METRICS_PORT, MYSQL_PORTS, VIP, WEB_HOST},
    mariadb::app_query,
    scrape::{self, Sample},
    Netns,
};

/// Label names foobar may use: each takes values from the configuration or a fixed set.
const LABELS: &[&str] = &[
    "version", "vip", "outcome", "reason", "service", "backend", "instance", "state", "site", "route", "class", "kind",
    "database", "server", "role", "cpu", "mode", "device", "le", "upstream",
];

fn metrics_url(edge: usize) -> String {
    format!("http://{}:{METRICS_PORT}/metrics", edge_addr(edge))
}

fn scrape_both(lab: &LbLab) -> Result<Vec<Sample>> {
    let mut all = Vec::new();
    for edge in 0..2 {
        let (_, text) = scrape::fetch(&lab.client, &metrics_url(edge), false)?;
        all.extend(scrape::parse(&text, false)?);
    }
    Ok(all)
}

fn traffic(lab: &LbLab) -> Result<()> {
    let resolve = format!("{WEB_HOST}:{HTTPS_PORT}:{VIP}");
    let ca = lab.web_certificate().display().to_string();
    for _ in 0..6 {
        lab.client.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            &resolve,
            "--cacert",
            &ca,
            &format!("https://{WEB_HOST}/"),
        ])?;
    }
    for _ in 0..4 {
        let (ok, out) = app_query(&lab.client, &VIP.to_string(), MYSQL_PORTS.0, "SELECT 1", &[])?;
        ensure!(ok, "a query through the VIP failed: {out}");
    }
    Ok(())
}

#[test]
fn metrics_parse_in_both_formats_and_move_with_traffic() -> Result<()> {
    let lab = LbLab::build(LabSpec::pair(1, true, true).with_database())?;
    let master = lab.wait_for_master(std::time::Duration::from_secs(5))?;

    for edge in 0..2 {
        let (content_type, text) = scrape::fetch(&lab.client, &metrics_url(edge), true)?;
        ensure!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{content_type}"
        );
        let samples = scrape::parse(&text, true).with_context(|| text.clone())?;
        let (content_type, text) = scrape::fetch(&lab.client, &metrics_url(edge), false)?;
        ensure!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        let plain = scrape::parse(&text, false)?;
        // The same samples (by name and labels; values move between the two scrapes).
        let keys = |v: &[foobar_tests::scrape::Sample]| {
            v.iter()
                .map(|s| (s.name.clone(), s.labels.clone()))
                .collect::<std::collections::BTreeSet<_>>()
        };
        let (open, text) = (keys(&samples), keys(&plain));
        ensure!(
            open == text,
            "the formats differ: only in OpenMetrics {:?}; only in text {:?}",
            open.difference(&text).collect::<Vec<_>>(),
            text.difference(&open).collect::<Vec<_>>()
        );
        for s in &samples {
            ensure!(
                ["foobar_", "node_", "process_"].iter().any(|p| s.name.starts_with(p)),
                "unprefixed metric {}",
                s.name
            );
            ensure!(
                s.kind != "counter" || s.name.ends_with("_total"),
                "counter sample {} lacks _total",
                s.name
            );
            for label in s.labels.keys() {
                ensure!(
                    LABELS.contains(&label.as_str()),
                    "unexpected label {label} on {}",
                    s.name
                );
            }
        }
        let has = |name: &str| samples.iter().any(|s| s.name == name);
        for name in [
            "foobar_build_info",
            "foobar_forwarding",
            "foobar_vip_claimed",
            "foobar_dataplane_packets_total",
            "foobar_backend_up",
            "foobar_service_packets_total",
            "foobar_vrrp_state",
            "foobar_vrrp_adverts_sent_total",
            "foobar_web_requests_total",
            "foobar_web_request_duration_seconds_bucket",
            "foobar_web_tls_handshakes_total",
            "foobar_database_server_up",
            "foobar_database_server_primary",
            "foobar_database_replication_lag_seconds",
            "node_cpu_seconds_total",
            "node_memory_MemAvailable_bytes",
            "node_network_receive_bytes_total",
            "node_load1",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
        ] {
            ensure!(has(name), "edge {edge} does not export {name}");
        }
        let master_state = scrape::sum(&samples, "foobar_vrrp_state", &[("state", "master")]);
        ensure!(
            master_state == f64::from(u8::from(edge == master)),
            "edge {edge}: master state {master_state}"
        );
        let primary = scrape::sum(
            &samples,
            "foobar_database_server_primary",
            &[("server", "10.10.0.31:3306")],
        );
        ensure!(primary == 1.0, "edge {edge} does not see db1 as the primary");
    }

    let before = scrape_both(&lab)?;
    traffic(&lab)?;
    let after = scrape_both(&lab)?;
    let grew =
        |name: &str, labels: &[(&str, &str)]| scrape::sum(&after, name, labels) - scrape::sum(&before, name, labels);
    let static_2xx = grew(
        "foobar_web_requests_total",
        &[("site", WEB_HOST), ("route", "static"), ("class", "2xx")],
    );
    ensure!(static_2xx >= 6.0, "web requests grew by {static_2xx}");
    let https = grew("foobar_service_packets_total", &[("service", "https")]);
    ensure!(https > 0.0, "the master counted no https packets");
    let db = grew(
        "foobar_database_connections_total",
        &[("database", "main"), ("server", "10.10.0.31:3306")],
    );
    ensure!(db >= 4.0, "database connections grew by {db}");
    let handshakes = grew("foobar_web_tls_handshakes_total", &[("version", "1.3")]);
    ensure!(handshakes >= 6.0, "TLS 1.3 handshakes grew by {handshakes}");
    Ok(())
}

/// Runs headless Chromium in `ns` and returns the DOM of `url` after it loaded.
fn chromium_dom(ns: &Netns, url: &str, profile: &std::path::Path) -> Result<String> {
    let profile = format!("--user-data-dir={}", profile.display());
    ns.exec(&[
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        &profile,
        "--dump-dom",
        url,
    ])
}

#[test]
fn the_status_page_renders_in_chromium() -> Result<()> {
    let lab = LbLab::build(LabSpec::pair(1, true, true).with_database())?;
    let master = lab.wait_for_master(std::time::Duration::from_secs(5))?;
    traffic(&lab)?;
    let url = format!("http://{}:{METRICS_PORT}/", edge_addr(master));
    let dom = chromium_dom(&lab.client, &url, &lab.scratch.file("chromium"))?;
    for part in [
        "<section id=\"vrrp\">",
        "<td class=\"master\">MASTER</td>",
        "<section id=\"services\">",
        "https — 192.0.2.10:443",
        "<tr class=\"backend\"><td>10.10.0.1</td><td class=\"active\">active</td>",
        "<section id=\"web\">",
        "<section id=\"databases\">",
        "main — primary 10.10.0.31:3306",
        "<td>10.10.0.32:3306</td><td class=\"up\">read-only</td>",
        "http-equiv=\"refresh\"",
    ] {
        ensure!(dom.contains(part), "{part:?} missing from the rendered page:\n{dom}");
    }
    Ok(())
}

#[test]
fn the_push_exporter_sends_gzip_batches_retries_and_bounds_its_buffer() -> Result<()> {
    use foobar_tests::{
        collector::Collector,
        wait_until,
        weblab::{WebLab, ADDR, HOST},
    };
    use std::time::Duration;
    let extra = format!(
        r#"
[monitoring]
listen = "{ADDR}:9180"

[monitoring.push]
url = "http://{ADDR}:9300/receiver/v1/http/TOKEN"
interval_ms = 300
category = "foobar/edge"
max_buffer_bytes = 262144
timeout_ms = 1000
"#
    );
    let lab = WebLab::start_with("push", &extra)?;
    // The collector refuses the first two requests (429, then 500): they are retried.
    let collector = Collector::start(&lab.ns, format!("{ADDR}:9300").parse()?, &[429, 500], None)?;
    let url = format!("https://{HOST}/index.html");
    for _ in 0..5 {
        lab.curl(&[&url])?;
    }
    let accepted = |kind: &str| {
        collector
            .received()
            .into_iter()
            .filter(|r| r.status == 200 && r.header("x-sumo-category") == Some(&format!("foobar/edge/{kind}")))
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(20), "metrics, access and event batches", || {
        ["metrics", "access", "events"].iter().all(|k| !accepted(k).is_empty())
            && accepted("access").iter().any(|r| r.body.contains("/index.html"))
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {:?}",
            collector
                .received()
                .iter()
                .map(|r| (r.status, r.header("x-sumo-category").map(str::to_owned)))
                .collect::<Vec<_>>()
        )
    })?;
    let all = collector.received();
    ensure!(all.first().map(|r| r.status) == Some(429) && all.get(1).map(|r| r.status) == Some(500));
    for r in &all {
        ensure!(r.path == "/receiver/v1/http/TOKEN", "{}", r.path);
        ensure!(
            r.header("content-encoding") == Some("gzip"),
            "not gzip: {:?}",
            r.headers
        );
        ensure!(r.header("x-sumo-host") == Some("web") && r.header("x-sumo-name") == Some("foobar"));
        ensure!(
            r.body.len() <= 1_000_000 && r.wire_bytes < r.body.len(),
            "batch of {} bytes",
            r.body.len()
        );
    }
    let metrics = &accepted("metrics")[0];
    ensure!(metrics.header("content-type") == Some("application/vnd.sumologic.prometheus"));
    let line = metrics
        .body
        .lines()
        .find(|l| l.starts_with("foobar_web_requests_total{"))
        .ok_or_else(|| anyhow::anyhow!("no web request counter in {}", metrics.body))?;
    let fields: Vec<&str> = line.rsplitn(3, ' ').collect();
    ensure!(
        fields.len() == 3 && fields[0].len() == 13 && fields[1].parse::<f64>().is_ok(),
        "{line}"
    );
    let access = &accepted("access")[0];
    let record: serde_json::Value = serde_json::from_str(access.body.lines().next().unwrap_or(""))?;
    ensure!(
        record["target"] == "foobar::access" && record["status"].is_u64(),
        "{record}"
    );

    // The collector is down: records pile up to the bound, the oldest are dropped and
    // counted, and serving goes on.
    collector.answer_always(Some(503));
    let flood = format!("https://{ADDR}/index.html");
    let report = lab.ns.exec(&["wrk", "-t1", "-c4", "-d2s", &flood])?;
    ensure!(
        !report.contains("Non-2xx") && !report.contains("Socket errors"),
        "{report}"
    );
    // (dropped records, buffered bytes) as the exporter reports them.
    let buffer = || -> Result<(f64, f64)> {
        let (_, text) = foobar_tests::scrape::fetch(&lab.ns, &format!("http://{ADDR}:9180/metrics"), false)?;
        let samples = foobar_tests::scrape::parse(&text, false)?;
        Ok((
            foobar_tests::scrape::sum(&samples, "foobar_push_dropped_records_total", &[]),
            foobar_tests::scrape::sum(&samples, "foobar_push_buffered_bytes", &[]),
        ))
    };
    let mut fullest = 0.0f64;
    wait_until(Duration::from_secs(10), "records to be dropped", || {
        buffer().is_ok_and(|(dropped, buffered)| {
            fullest = fullest.max(buffered);
            dropped > 0.0
        })
    })?;
    // The buffer filled up to its bound (262144 bytes) and never past it, while dropping.
    for _ in 0..5 {
        let (_, buffered) = buffer()?;
        fullest = fullest.max(buffered);
        ensure!(
            buffered <= 262_144.0,
            "{buffered} bytes buffered, over the 262144 bound"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        fullest >= 262_144.0 * 0.75,
        "the buffer never came near its bound ({fullest} bytes): the drops were not the bound's"
    );
    let (_, text) = foobar_tests::scrape::fetch(&lab.ns, &format!("http://{ADDR}:9180/metrics"), false)?;
    let samples = foobar_tests::scrape::parse(&text, false)?;
    ensure!(foobar_tests::scrape::sum(&samples, "foobar_push_retries_total", &[]) >= 2.0);

    // Back up: sending resumes.
    collector.answer_always(None);
    let before = accepted("metrics").len();
    wait_until(Duration::from_secs(30), "sending to resume", || {
        accepted("metrics").len() > before
    })?;
    Ok(())
}

#[test]
fn the_management_listener_caps_connections_per_client() -> Result<()> {
    use std::io::{Read, Write};
    let lab = LbLab::start(1, "ipip")?;
    let target: std::net::SocketAddr = format!("{}:{METRICS_PORT}", edge_addr(0)).parse()?;
    // One client holds 16 idle connections (its cap); the 17th is closed at once, and each
    // held one still answers (the probe: connections under the cap are served).
    let (held_answers, seventeenth) = lab.client.run(move || -> Result<(usize, usize)> {
        let held: Vec<std::net::TcpStream> = (0..16)
            .map(|_| std::net::TcpStream::connect(target))
            .collect::<std::io::Result<_>>()?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut over = std::net::TcpStream::connect(target)?;
        over.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut buf = [0u8; 256];
        let seventeenth = over.read(&mut buf).unwrap_or(usize::MAX);
        let mut answers = 0;
        for mut stream in held {
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            stream.write_all(b"GET /status.json HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            answers += usize::from(reply.starts_with("HTTP/1.1 200"));
        }
        Ok((answers, seventeenth))
    })??;
    ensure!(
        held_answers == 16,
        "only {held_answers} of the 16 connections under the cap were served"
    );
    ensure!(
        seventeenth == 0,
        "the 17th connection was not closed at once (read {seventeenth} bytes)"
    );
    // Another client (the edge itself) scrapes the refusal.
    let (_, text) = scrape::fetch(
        &lab.edges[0].ns,
        &format!("http://127.0.0.1:{METRICS_PORT}/metrics"),
        false,
    )?;
    let refused = scrape::sum(
        &scrape::parse(&text, false)?,
        "foobar_management_refused_connections_total",
        &[],
    );
    ensure!(refused == 1.0, "refusals counted: {refused}");
    Ok(())
}

#[test]
fn the_management_listener_takes_tls_and_basic_auth() -> Result<()> {
    use foobar_tests::{foobar_bin, weblab::self_signed, ChildGuard};
    use std::io::Write;
    let mut lab = LbLab::start(1, "ipip")?;
    let plain = format!("http://{}:{METRICS_PORT}/metrics", edge_addr(0));
    // The probe: without the defence anyone scrapes over plain HTTP.
    let (_, open) = scrape::fetch(&lab.client, &plain, false)?;
    ensure!(open.contains("foobar_build_info"), "plain scrape before: {open}");

    let dir = lab.scratch.path.clone();
    self_signed(&dir, "mgmt", "ec", &["edge1.mgmt.test"])?;
    let mut hasher = std::process::Command::new(foobar_bin())
        .args(["hash-password", "--cost", "4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    hasher.stdin.take().context("stdin")?.write_all(b"scrape s3cret\n")?;
    let hashed = hasher.wait_with_output()?;
    ensure!(hashed.status.success(), "hash-password failed");
    let hash = String::from_utf8(hashed.stdout)?.trim().to_owned();
    ensure!(hash.starts_with("$2b$04$"), "not a bcrypt hash: {hash}");
    let mut text = std::fs::read_to_string(lab.edge_config(0))?;
    text += &format!(
        "\n[monitoring.tls_server_config]\ncert_file = \"{d}/mgmt.crt\"\nkey_file = \"{d}/mgmt.key\"\n\n[monitoring.basic_auth_users]\nprometheus = \"{hash}\"\n",
        d = dir.display()
    );
    std::fs::write(lab.edge_config(0), text)?;
    let mut old: ChildGuard = lab.edges[0].foobar.take().context("edge running")?;
    old.signal(nix::sys::signal::Signal::SIGTERM)?;
    old.wait(std::time::Duration::from_secs(10))?;
    lab.start_edge(0)?;

    let ca = dir.join("mgmt.crt").display().to_string();
    let resolve = format!("edge1.mgmt.test:{METRICS_PORT}:{}", edge_addr(0));
    let url = format!("https://edge1.mgmt.test:{METRICS_PORT}/metrics");
    let curl = |extra: &[&str]| -> Result<(bool, String)> {
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-D",
            "-",
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        lab.client.exec_any(&args)
    };
    foobar_tests::wait_until(
        std::time::Duration::from_secs(10),
        "the TLS management listener",
        || curl(&[]).is_ok_and(|(ok, _)| ok),
    )
    .with_context(|| lab.edge_log(0))?;
    // Plain HTTP no longer gets anything (the head and body of each answer come out together).
    let (plain_ok, plain_out) = lab.client.exec_any(&["curl", "-sS", "--max-time", "5", &plain])?;
    ensure!(
        !plain_ok && !plain_out.contains("foobar_"),
        "plain HTTP still answered: {plain_out}"
    );
    // No credentials, and wrong ones: 401 asking for basic authentication.
    for extra in [
        &[][..],
        &["-u", "prometheus:wrong"][..],
        &["-u", "nobody:scrape s3cret"][..],
    ] {
        let (_, head) = curl(extra)?;
        ensure!(
            head.starts_with("HTTP/1.1 401")
                && head
                    .to_ascii_lowercase()
                    .contains("www-authenticate: basic realm=\"foobar\""),
            "{extra:?}: {head}"
        );
    }
    // The right ones: the metrics, which count what was refused.
    let (ok, answer) = curl(&["-u", "prometheus:scrape s3cret"])?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    ensure!(ok, "an authenticated scrape failed: {body}");
    let samples = scrape::parse(body, false)?;
    let unauthorized = scrape::sum(&samples, "foobar_management_unauthorized_requests_total", &[]);
    // The wait's first try may have come before the listener was up; at least the three above.
    ensure!(unauthorized >= 3.0, "401s counted: {unauthorized}");
    let handshakes = scrape::sum(
        &samples,
        "foobar_management_refused_connections_total",
        &[("reason", "tls_handshake")],
    );
    ensure!(handshakes >= 1.0, "failed handshakes counted: {handshakes}");
    Ok(())
}
